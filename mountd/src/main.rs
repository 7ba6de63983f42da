//! burrow-mountd: ID-mapped mounts and a container's locked, masked mount namespace, as fds.

mod assemble;
mod build;
mod dbus;
mod idmap;
mod job;
mod lxcfs;
mod overlay;
mod plan;
mod spawn;
mod target;
mod wire;
mod worker;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use burrow_contract::mount;
use burrow_sys::service::{Activity, Service};
use caps::Capability;
use clap::Parser;

/// What mountd needs: make mounts and enter namespaces (SYS_ADMIN, SYS_CHROOT), read a
/// container init's namespaces through its pidfd (SYS_PTRACE), write ID maps of mapping-only
/// user namespaces and act as the container's root on its files (SETUID, SETGID), reach
/// layer directories such as Docker's (DAC_OVERRIDE, DAC_READ_SEARCH), and be an overlay's
/// mounter, whose credentials overlayfs uses to copy files up and make whiteouts (CHOWN,
/// FOWNER, FSETID, MKNOD).
const CAPABILITIES: &[Capability] = &[
    Capability::CAP_SYS_ADMIN,
    Capability::CAP_SYS_CHROOT,
    Capability::CAP_SYS_PTRACE,
    Capability::CAP_SETUID,
    Capability::CAP_SETGID,
    Capability::CAP_DAC_OVERRIDE,
    Capability::CAP_DAC_READ_SEARCH,
    Capability::CAP_CHOWN,
    Capability::CAP_FOWNER,
    Capability::CAP_FSETID,
    Capability::CAP_MKNOD,
];

#[derive(Parser, Debug)]
#[command(
    version,
    about = "Burrow mount helper (D-Bus service org.burrow.Mount1)"
)]
struct Args {
    /// An empty directory where workers attach a rootfs in their private mount namespaces.
    #[arg(
        long,
        env = "BURROW_MOUNTD_STAGING",
        default_value = "/run/burrow/mountd-staging"
    )]
    staging_dir: PathBuf,
    /// Exit after this many seconds without calls (0: never); the bus restarts it on demand.
    #[arg(long, env = "BURROW_IDLE_TIMEOUT", default_value_t = 30)]
    idle_timeout: u64,
    #[command(flatten)]
    polkit_grants: burrow_sys::authz::GrantArgs,
    /// Tests only: workers stop themselves (SIGSTOP) at each stage for a test to inspect.
    #[cfg(debug_assertions)]
    #[arg(long, hide = true)]
    test_stop_workers: bool,
}

fn main() -> anyhow::Result<()> {
    let argv: Vec<String> = std::env::args().collect();
    // Worker mode: the helper exec'd its own binary for one job (see spawn.rs). It never
    // parses the helper's options, logs, or touches the bus.
    if argv.get(1).map(String::as_str) == Some(spawn::WORKER_MODE) {
        worker::main(&argv[2..]);
    }
    let args = Args::parse();
    args.polkit_grants.apply();
    burrow_sys::service::start(CAPABILITIES).context("dropping capabilities")?;
    burrow_sys::state::ensure_private_dir(&args.staging_dir)?;
    // The worker gets the path in a typed (JSON) message.
    anyhow::ensure!(
        args.staging_dir.to_str().is_some(),
        "the staging directory's path must be UTF-8"
    );
    #[cfg(debug_assertions)]
    if args.test_stop_workers {
        spawn::stop_workers_for_tests();
    }
    let activity = Activity::default();
    let service = Service {
        bus_name: mount::BUS_NAME,
        object_path: mount::OBJECT_PATH,
        interface: dbus::Mount {
            staging: args.staging_dir,
            activity: activity.clone(),
        },
        activity,
        idle_timeout: Duration::from_secs(args.idle_timeout),
    };
    service.run_blocking(async {})?;
    Ok(())
}
