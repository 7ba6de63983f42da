//! burrow-idmapd: hands out exclusive 65536-ID ranges and maps user namespaces onto them.

mod accounts;
mod allocator;
mod cgroups;
mod dbus;
mod liveness;
mod pin;
mod pool;
mod registry;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use burrow_contract::idmap;
use burrow_sys::service::{Activity, Service};
use burrow_sys::state::InstanceLock;
use caps::Capability;
use clap::Parser;

/// What idmapd needs: join user namespaces (SYS_ADMIN), write their ID maps including uid 0
/// (SETUID, SETGID, SETFCAP), see every process's namespaces to tell which are alive
/// (SYS_PTRACE, DAC_READ_SEARCH), and hand delegated cgroups to ranges (CHOWN; SYS_NICE
/// because the cpuset controller lets a process be moved only by one whose capabilities are a
/// superset of its own, and a process in a fresh user namespace has all of them there).
const CAPABILITIES: &[Capability] = &[
    Capability::CAP_CHOWN,
    Capability::CAP_SYS_NICE,
    Capability::CAP_SYS_ADMIN,
    Capability::CAP_SETUID,
    Capability::CAP_SETGID,
    Capability::CAP_SETFCAP,
    Capability::CAP_SYS_PTRACE,
    Capability::CAP_DAC_READ_SEARCH,
];

/// How long a starting idmapd waits for another instance to release the state lock: well
/// within the bus's activation timeout (25 s).
const LOCK_PATIENCE: Duration = Duration::from_secs(10);

#[derive(Parser, Debug)]
#[command(
    version,
    about = "Burrow ID-range helper (D-Bus service org.burrow.IdMap1)"
)]
struct Args {
    /// Directory holding one record per allocated range.
    #[arg(
        long,
        env = "BURROW_IDMAP_STATE_DIR",
        default_value = "/var/lib/burrow/idmap"
    )]
    state_dir: PathBuf,
    /// First host ID of the pool ranges are taken from. The default pool, 0x70000000 up to
    /// systemd's foreign UID range (0x7FFE0000), is the part of the signed 32-bit IDs that
    /// systemd documents as unused: below it are its container ranges (524288..=1879048191,
    /// used by systemd-nspawn --private-users=pick and nsresourced), above it IDs many programs
    /// mishandle.
    #[arg(long, env = "BURROW_IDMAP_POOL_START", default_value_t = 0x7000_0000)]
    pool_start: u32,
    /// Last host ID of the pool (inclusive).
    #[arg(long, env = "BURROW_IDMAP_POOL_END", default_value_t = 0x7FFD_FFFF)]
    pool_end: u32,
    /// Per-user quotas (max_ranges, memory_max, pids_max), read at every call.
    #[arg(long, env = "BURROW_QUOTA_FILE", default_value = burrow_sys::quota::DEFAULT_PATH)]
    quota_file: PathBuf,
    /// Most ranges one uid may hold at once, unless the quota file says otherwise.
    #[arg(long, env = "BURROW_IDMAP_MAX_PER_USER", default_value_t = 256)]
    max_per_user: usize,
    /// Exit after this many seconds without calls (0: never); the bus restarts it on demand.
    #[arg(long, env = "BURROW_IDLE_TIMEOUT", default_value_t = 30)]
    idle_timeout: u64,
    #[command(flatten)]
    polkit_grants: burrow_sys::authz::GrantArgs,
    /// Subordinate-ID files whose ranges are never handed out.
    #[arg(long, default_values = ["/etc/subuid", "/etc/subgid"])]
    subid_file: Vec<PathBuf>,
    /// Account databases whose IDs are never handed out.
    #[arg(long, default_values = ["/etc/passwd", "/etc/group"])]
    id_db_file: Vec<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    args.polkit_grants.apply();
    let placement = cgroups::Placement::of_host();
    // cgroup hierarchy roots are mode 0555: the users' root below them is made while idmapd
    // still has CAP_DAC_OVERRIDE, which it then drops. Whatever the unit's umask, others may
    // traverse it to their delegated cgroups (and read which processes are in them).
    let umask = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o022));
    if let Err(e) = burrow_sys::cgroup::make(placement.users_root(), &Default::default()) {
        eprintln!("burrow-idmapd: no cgroups for non-root containers: {e}");
    }
    nix::sys::stat::umask(umask);
    burrow_sys::service::start(CAPABILITIES).context("dropping capabilities")?;
    let pool = pool::Pool::new(args.pool_start, args.pool_end).context("invalid pool")?;
    burrow_sys::state::ensure_private_dir(&args.state_dir)?;
    // A restarted bus can activate idmapd while the old bus's instance is still exiting.
    let _lock =
        InstanceLock::acquire_waiting(&args.state_dir.with_extension("lock"), LOCK_PATIENCE)?;
    let boot_id = burrow_sys::nsfs::boot_id().context("reading this boot's id")?;
    let registry = registry::Registry::load(&args.state_dir, &boot_id)?;
    let exclusions = accounts::Exclusions::new(args.subid_file, args.id_db_file);
    let kernel = liveness::Kernel::new(boot_id);
    let allocator = allocator::Allocator::open(pool, args.max_per_user, registry, kernel);
    tracing::info!(pool_start = pool.start, pool_end = pool.end, capacity = pool.capacity(),
        in_use = allocator.in_use(), state_dir = %args.state_dir.display(), cgroups = ?placement,
        "registry loaded");

    let activity = Activity::default();
    let quotas = burrow_sys::quota::QuotaFile {
        path: args.quota_file,
    };
    let interface = dbus::IdMap::new(
        allocator,
        exclusions,
        cgroups::Cgroups::new(placement),
        activity.clone(),
        quotas,
    );
    let drain_watch = interface.watch_draining(Duration::from_secs(2), Duration::from_millis(250));
    let service = Service {
        bus_name: idmap::BUS_NAME,
        object_path: idmap::OBJECT_PATH,
        interface,
        activity,
        idle_timeout: Duration::from_secs(args.idle_timeout),
    };
    service.run_blocking(drain_watch)?;
    Ok(())
}
