//! burrow-devd: builds a container's /dev as a detached tmpfs and hands it out as an fd.

mod build;
mod dbus;
mod devices;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use burrow_contract::dev;
use burrow_sys::service::{Activity, Service};
use caps::Capability;
use clap::Parser;

/// What devd needs: make a tmpfs and enter user namespaces (SYS_ADMIN), create device nodes
/// (MKNOD) and give them to the container's root (CHOWN).
const CAPABILITIES: &[Capability] = &[
    Capability::CAP_SYS_ADMIN,
    Capability::CAP_MKNOD,
    Capability::CAP_CHOWN,
];

#[derive(Parser, Debug)]
#[command(version, about = "Burrow /dev helper (D-Bus service org.burrow.Dev1)")]
struct Args {
    /// Extra devices (names below /dev, one per line) containers may ask for.
    #[arg(
        long,
        env = "BURROW_DEVD_ALLOWLIST",
        default_value = "/etc/burrow/devd-allowlist"
    )]
    allowlist: PathBuf,
    /// Per-user quotas (max_extra_devices), read at every call.
    #[arg(long, env = "BURROW_QUOTA_FILE", default_value = burrow_sys::quota::DEFAULT_PATH)]
    quota_file: PathBuf,
    /// Exit after this many seconds without calls (0: never); the bus restarts it on demand.
    #[arg(long, env = "BURROW_IDLE_TIMEOUT", default_value_t = 30)]
    idle_timeout: u64,
    #[command(flatten)]
    polkit_grants: burrow_sys::authz::GrantArgs,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    args.polkit_grants.apply();
    burrow_sys::service::start(CAPABILITIES).context("dropping capabilities")?;
    let devices = match std::fs::read_to_string(&args.allowlist) {
        Ok(text) => devices::parse_allowlist(&text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Default::default(),
        Err(e) => return Err(e).with_context(|| format!("reading {}", args.allowlist.display())),
    };
    tracing::info!(allowlist = %args.allowlist.display(), extra = ?devices, "allowlist loaded");
    let activity = Activity::default();
    let service = Service {
        bus_name: dev::BUS_NAME,
        object_path: dev::OBJECT_PATH,
        interface: dbus::Dev {
            allowlist: dbus::Allowlist {
                path: args.allowlist,
                devices,
            },
            host_dev: PathBuf::from("/dev"),
            activity: activity.clone(),
            quotas: burrow_sys::quota::QuotaFile {
                path: args.quota_file,
            },
        },
        activity,
        idle_timeout: Duration::from_secs(args.idle_timeout),
    };
    service.run_blocking(async {})?;
    Ok(())
}
