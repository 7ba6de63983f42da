//! cgroups for containers, on v1, hybrid (v1 + cgroup2 at `unified`, this machine) and v2:
//! one cgroup per container with its limits, and the subtree handed to the container's root
//! (directory and membership files, never the limit files) so that systemd and Docker inside
//! can manage their own sub-cgroups. Used by the runtime as root and by idmapd for other users'
//! containers.
//!
//! cgroups-rs does the controllers (creation, cpuset inheritance, limits, membership, freezer,
//! removal) in whichever mode the host runs. What it does not cover is done here: handing the
//! subtree to the container's root, and the cgroup2 mount of a hybrid host, which has no
//! controllers of interest but is where systemd inside tracks its units. The device policy
//! (`devices`) is Burrow's too: cgroups-rs writes v1 device rules but has no cgroup2 program.

use std::fs;
use std::os::unix::fs::chown;
use std::path::{Path, PathBuf};

use cgroups_rs::fs::freezer::FreezerController;
use cgroups_rs::fs::hierarchies::{self, is_cgroup2_unified_mode};
use cgroups_rs::fs::memory::MemController;
use cgroups_rs::fs::pid::PidController;
use cgroups_rs::fs::{Cgroup, Controller, MaxValue};
use cgroups_rs::FreezerState;

mod bpf;
mod devices;
pub mod resources;
pub mod systemd;
pub mod usage;

pub use bpf::BpfError;
pub use devices::{CharDevice, DevicePolicy};

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("{what}: {source}")]
    Controller {
        what: String,
        source: cgroups_rs::fs::error::Error,
    },
    #[error("cannot set {limit} on cgroup {path}: this host has no {controller} controller")]
    NoController {
        limit: &'static str,
        controller: &'static str,
        path: String,
    },
    #[error(
        "cannot restrict devices for cgroup {path}: this host has neither a devices controller \
         nor cgroup2"
    )]
    NoDevicePolicy { path: String },
    #[error("{what}: {source}")]
    Bpf { what: String, source: BpfError },
    #[error("cgroup {path} already holds processes: it belongs to another container")]
    InUse { path: String },
    #[error("no freezer cgroup on this host")]
    NoFreezer,
    #[error("cgroup {path} did not {action}")]
    FreezeTimeout { path: String, action: &'static str },
    #[error("systemd: {what}: {source}")]
    Systemd {
        what: String,
        source: Box<zbus::Error>,
    },
    #[error("systemd: {action} unit {unit}: the job ended {result}")]
    JobFailed {
        unit: String,
        action: &'static str,
        result: String,
    },
}

type Result<T> = std::result::Result<T, CgroupError>;

fn io(what: String) -> impl FnOnce(std::io::Error) -> CgroupError {
    move |source| CgroupError::Io { what, source }
}

fn controller(what: String) -> impl FnOnce(cgroups_rs::fs::error::Error) -> CgroupError {
    move |source| CgroupError::Controller { what, source }
}

/// Resource limits, in the units of the OCI spec (bytes, pids, CFS shares and microseconds);
/// zero or None leaves a limit alone.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Limits {
    pub memory: Option<i64>,
    pub pids: Option<i64>,
    pub cpu_shares: Option<u64>,
    pub cpu_quota: Option<i64>,
    pub cpu_period: Option<u64>,
}

/// The cgroup path for a container: `cgroupsPath` from the spec, in systemd's
/// `slice:prefix:name` form as the scope's cgroupfs directories (where no systemd makes it),
/// or `/burrow/<id>`.
pub fn path_for(cgroups_path: Option<&Path>, id: &str) -> String {
    let Some(cgroups_path) = cgroups_path else {
        return format!("/burrow/{id}");
    };
    if let Some(scope) = systemd::ScopeUnit::parse(cgroups_path) {
        return format!("/{}/{}", scope.slice, scope.unit);
    }
    let path = cgroups_path.to_string_lossy();
    if path.starts_with('/') {
        path.into_owned()
    } else {
        format!("/{path}")
    }
}

/// Where the host's cgroup hierarchies are mounted, read once per process: they are set up
/// at boot, and each read of mountinfo (cgroups-rs's and this module's) cost about a tenth of
/// a millisecond, a dozen times in one create.
struct Layout {
    /// cgroups-rs's v1 hierarchies (their mounts), or None on a cgroup2-only host.
    v1: Option<hierarchies::V1>,
    /// The cgroup2 mount of a hybrid host (`/sys/fs/cgroup/unified`).
    hybrid_unified: Option<PathBuf>,
}

fn layout() -> &'static Layout {
    static LAYOUT: std::sync::OnceLock<Layout> = std::sync::OnceLock::new();
    LAYOUT.get_or_init(|| {
        if is_cgroup2_unified_mode() {
            return Layout {
                v1: None,
                hybrid_unified: None,
            };
        }
        let hybrid_unified = crate::mountinfo::own().ok().and_then(|mounts| {
            mounts
                .into_iter()
                .find(|m| m.fs_type == "cgroup2")
                .map(|m| PathBuf::from(m.mount_point))
        });
        Layout {
            v1: Some(hierarchies::V1::new()),
            hybrid_unified,
        }
    })
}

/// The host's hierarchies as cgroups-rs takes them (v1 controllers, or cgroup2).
fn hierarchy() -> Box<dyn cgroups_rs::fs::Hierarchy> {
    match &layout().v1 {
        Some(v1) => Box::new(v1.clone()),
        None => Box::new(hierarchies::V2::new()),
    }
}

/// cgroups-rs's handle on `path` in the host's hierarchies (v1 controllers, or cgroup2).
fn handle(path: &str) -> Cgroup {
    Cgroup::load(hierarchy(), path.trim_start_matches('/'))
}

/// A cgroup in every hierarchy: cgroups-rs's handle (v1 controllers, or cgroup2), and the
/// cgroup's directory in a hybrid host's cgroup2 mount, which cgroups-rs leaves out.
struct Hierarchies {
    cgroup: Cgroup,
    hybrid_unified: Option<PathBuf>,
}

impl Hierarchies {
    fn of(path: &str) -> Self {
        Hierarchies {
            cgroup: handle(path),
            hybrid_unified: layout()
                .hybrid_unified
                .as_ref()
                .map(|m| m.join(path.trim_start_matches('/'))),
        }
    }

    fn entry(&self) -> Entry {
        let (v2, v1): (Vec<_>, Vec<_>) = self
            .directories()
            .into_iter()
            .partition(|(_, unified)| *unified);
        Entry {
            cgroup2_dir: v2.into_iter().map(|(dir, _)| dir).next(),
            v1_tasks_files: v1.into_iter().map(|(dir, _)| dir.join("tasks")).collect(),
        }
    }

    /// Every directory of the cgroup, one per hierarchy, with whether it is cgroup2.
    fn directories(&self) -> Vec<(PathBuf, bool)> {
        let mut dirs: Vec<(PathBuf, bool)> = self
            .cgroup
            .subsystems()
            .iter()
            .map(|s| (s.to_controller().path().to_path_buf(), self.cgroup.v2()))
            .chain(self.hybrid_unified.clone().map(|dir| (dir, true)))
            .collect();
        dirs.sort();
        dirs.dedup();
        dirs
    }
}

/// The per-user limits idmapd sets on a user's cgroup: memory and pids (a container's own
/// limits are the spec's resources, [`resources::apply`]; a scope's, systemd's properties).
fn apply_user_limits(cgroup: &Cgroup, path: &str, limits: &Limits) -> Result<()> {
    let missing = |limit, controller| CgroupError::NoController {
        limit,
        controller,
        path: path.to_string(),
    };
    let setting = |what: &str| controller(format!("setting {what} of cgroup {path}"));
    if let Some(limit) = limits.memory.filter(|l| *l > 0) {
        cgroup
            .controller_of::<MemController>()
            .ok_or_else(|| missing("a memory limit", "memory"))?
            .set_limit(limit)
            .map_err(setting("the memory limit"))?;
    }
    if let Some(limit) = limits.pids.filter(|l| *l > 0) {
        cgroup
            .controller_of::<PidController>()
            .ok_or_else(|| missing("a pids limit", "pids"))?
            .set_pid_max(MaxValue::Value(limit))
            .map_err(setting("the pids limit"))?;
    }
    Ok(())
}

/// Creates `path` in every hierarchy with a user's memory and pids `limits` (parents that do
/// not exist yet get none).
pub fn make(path: &str, limits: &Limits) -> Result<()> {
    let hierarchies = make_in_every_hierarchy(path)?;
    apply_user_limits(&hierarchies.cgroup, path, limits)
}

fn make_in_every_hierarchy(path: &str) -> Result<Hierarchies> {
    let hierarchies = Hierarchies::of(path);
    // Made here first, so that a failure names the hierarchy's directory (cgroups-rs's error
    // does not); cgroups-rs then sets up what its controllers need (v1 cpuset's cpus, mems).
    for (dir, _) in hierarchies.directories() {
        fs::create_dir_all(&dir).map_err(io(format!("creating cgroup {}", dir.display())))?;
    }
    hierarchies
        .cgroup
        .create()
        .map_err(controller(format!("creating cgroup {path}")))?;
    Ok(hierarchies)
}

/// A container's cgroup, made in every hierarchy; its device policy goes on with
/// [`NewCgroup::restrict`] (its limits are the spec's resources, [`resources::apply`]). A
/// process goes in with [`NewCgroup::add`] (or through [`NewCgroup::procs_files`]), then the
/// subtree is handed to the container's root with [`NewCgroup::delegate`].
pub struct NewCgroup {
    path: String,
    hierarchies: Hierarchies,
}

/// Creates `path` in every hierarchy, without a device policy yet: the caller puts one on
/// with [`NewCgroup::restrict`] before anything it does not trust runs in it.
pub fn create(path: &str) -> Result<NewCgroup> {
    remove_if_stale(path)?;
    Ok(NewCgroup {
        path: path.to_string(),
        hierarchies: make_in_every_hierarchy(path)?,
    })
}

/// Takes on `path`, which systemd has just made as a scope holding the container's first
/// process: the hierarchies systemd leaves out (v1 `freezer`, `cpuset`, ...) and the device
/// policy, as for a cgroup of Burrow's own.
pub fn adopt(path: &str, devices: &DevicePolicy) -> Result<NewCgroup> {
    let cgroup = NewCgroup {
        path: path.to_string(),
        hierarchies: make_in_every_hierarchy(path)?,
    };
    cgroup.restrict(devices)?;
    Ok(cgroup)
}

impl NewCgroup {
    /// Puts the device policy `devices` on the cgroup in every hierarchy that can carry one.
    pub fn restrict(&self, devices: &DevicePolicy) -> Result<()> {
        devices::restrict(&self.hierarchies, &self.path, devices)
    }

    pub fn path(&self) -> &str {
        &self.path
    }

    /// The `cgroup.procs` file of every hierarchy: a process is in the container's cgroup once
    /// its pid is written to each.
    pub fn procs_files(&self) -> Vec<PathBuf> {
        self.hierarchies
            .directories()
            .into_iter()
            .map(|(dir, _)| dir.join("cgroup.procs"))
            .collect()
    }

    /// How a process enters the cgroup without waiting for the threadgroup lock.
    pub fn entry(&self) -> Entry {
        self.hierarchies.entry()
    }

    /// Hands the subtree to `owner` (host uid, gid of the container's root): the directory and
    /// the files that manage processes and sub-cgroups, never a limit.
    pub fn delegate(&self, owner: (u32, u32)) -> Result<()> {
        for (dir, unified) in self.hierarchies.directories() {
            delegate(&dir, unified, owner)?;
        }
        Ok(())
    }

    /// Moves `pid` in. The pid must be one that cannot be reused meanwhile (a child of the
    /// caller that it has not reaped).
    pub fn add(&self, pid: i32) -> Result<()> {
        for procs in self.procs_files() {
            fs::write(&procs, pid.to_string()).map_err(io(format!(
                "moving process {pid} into {} (cgroup {})",
                procs.display(),
                self.path
            )))?;
        }
        Ok(())
    }
}

/// Removes a cgroup left behind by a container that is gone (no process remains in it): its
/// sub-cgroups would keep a new device policy from applying (the kernel refuses to change the
/// default of a cgroup with children), and its delegation belongs to a range given back. A
/// cgroup that still holds processes is someone's: refused.
fn remove_if_stale(path: &str) -> Result<()> {
    let exists = Hierarchies::of(path)
        .directories()
        .iter()
        .any(|(dir, _)| dir.exists());
    if !exists {
        return Ok(());
    }
    if !pids(path).is_empty() {
        return Err(CgroupError::InUse {
            path: path.to_string(),
        });
    }
    remove(path);
    Ok(())
}

/// How a process enters the existing cgroup `path` (for `exec`).
pub fn entry(path: &str) -> Entry {
    Hierarchies::of(path).entry()
}

/// How a single-threaded process enters a cgroup without the cgroup threadgroup lock, and so
/// without its RCU grace period (15-20 ms after an idle second) that a `cgroup.procs` write of
/// its pid waits for: it starts in the cgroup2 directory (clone3's `CLONE_INTO_CGROUP`) and
/// writes `0` into each v1 hierarchy's `tasks` file, which moves only the writer.
pub struct Entry {
    /// The cgroup's directory in the cgroup2 hierarchy (a hybrid host's unified mount, or a
    /// v2 host's only one).
    pub cgroup2_dir: Option<PathBuf>,
    /// The `tasks` file of every v1 hierarchy.
    pub v1_tasks_files: Vec<PathBuf>,
}

/// What a delegated cgroup's owner gets: the directory (to make sub-cgroups) and the files that
/// move processes and enable controllers below it, never a limit.
const DELEGATED: [&str; 7] = [
    "",
    "cgroup.procs",
    "tasks",
    "cgroup.clone_children",
    "notify_on_release",
    "cgroup.subtree_control",
    "cgroup.threads",
];

fn delegate(dir: &Path, unified: bool, (uid, gid): (u32, u32)) -> Result<()> {
    let v2_only = ["cgroup.subtree_control", "cgroup.threads"];
    for file in DELEGATED
        .into_iter()
        .filter(|f| unified || !v2_only.contains(f))
    {
        let path = dir.join(file);
        match chown(&path, Some(uid), Some(gid)) {
            // A file this hierarchy does not have (cgroup2's `tasks`, ...).
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            done => done.map_err(io(format!("delegating {}", path.display())))?,
        }
    }
    Ok(())
}

/// `dir` and every cgroup below it, parents first.
fn subtree(dir: &Path) -> Vec<PathBuf> {
    let mut dirs = vec![];
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        if let Ok(entries) = fs::read_dir(&dir) {
            stack.extend(
                entries
                    .flatten()
                    // The entry's type from the directory listing: no stat per file.
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.path()),
            );
        }
        dirs.push(dir);
    }
    dirs
}

/// The names of the cgroups directly below `path`, in any hierarchy (a crash can leave one in
/// some hierarchies only).
pub fn children(path: &str) -> std::collections::BTreeSet<String> {
    Hierarchies::of(path)
        .directories()
        .iter()
        .filter_map(|(dir, _)| fs::read_dir(dir).ok())
        .flat_map(|entries| entries.flatten())
        // The entry's type from the directory listing: no stat per file.
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

/// Every process in the container's cgroup and the sub-cgroups its root made.
pub fn pids(path: &str) -> Vec<i32> {
    let hierarchies = Hierarchies::of(path);
    // Every process is in each hierarchy: one is enough.
    let Some(top) = hierarchies
        .cgroup
        .controller_of::<PidController>()
        .map(|c| c.path().to_path_buf())
        .or_else(|| hierarchies.directories().into_iter().next().map(|d| d.0))
    else {
        return vec![];
    };
    let mut pids: Vec<i32> = subtree(&top)
        .iter()
        .filter_map(|dir| fs::read_to_string(dir.join("cgroup.procs")).ok())
        .flat_map(|text| {
            text.lines()
                .filter_map(|l| l.parse::<i32>().ok())
                .collect::<Vec<_>>()
        })
        .collect();
    pids.sort_unstable();
    pids.dedup();
    pids
}

/// Whether the cgroup is frozen in effect. On cgroup2 that is `cgroup.events`' `frozen`, which
/// follows `cgroup.freeze` (what cgroups-rs reads) only once every process has stopped.
fn freezer_state(cgroup: &Cgroup) -> Option<FreezerState> {
    let freezer = cgroup.controller_of::<FreezerController>()?;
    if !cgroup.v2() {
        return freezer.state().ok();
    }
    let events = fs::read_to_string(freezer.path().join("cgroup.events")).ok()?;
    match events
        .lines()
        .find_map(|l| l.strip_prefix("frozen "))?
        .trim()
    {
        "1" => Some(FreezerState::Frozen),
        _ => Some(FreezerState::Thawed),
    }
}

pub fn is_frozen(path: &str) -> bool {
    matches!(freezer_state(&handle(path)), Some(FreezerState::Frozen))
}

pub fn freeze(path: &str, frozen: bool) -> Result<()> {
    let cgroup = handle(path);
    let freezer = cgroup
        .controller_of::<FreezerController>()
        .filter(|f| f.path().exists())
        .ok_or(CgroupError::NoFreezer)?;
    let action = if frozen { "freeze" } else { "thaw" };
    if frozen {
        freezer.freeze()
    } else {
        freezer.thaw()
    }
    .map_err(controller(format!("asking cgroup {path} to {action}")))?;
    for _ in 0..100 {
        let state = freezer_state(&cgroup);
        if matches!(
            (frozen, state),
            (true, Some(FreezerState::Frozen)) | (false, Some(FreezerState::Thawed))
        ) {
            return Ok(());
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    Err(CgroupError::FreezeTimeout {
        path: path.to_string(),
        action,
    })
}

/// Removes the container's cgroup (with any sub-cgroups its root made) from every hierarchy.
pub fn remove(path: &str) {
    let hierarchies = Hierarchies::of(path);
    // Most containers leave no sub-cgroup and no process: then each directory goes at once,
    // with nothing to walk or take back.
    let gone = |dir: &PathBuf| match fs::remove_dir(dir) {
        Ok(()) => true,
        Err(e) => e.kind() == std::io::ErrorKind::NotFound,
    };
    let directories = hierarchies.directories();
    if directories.iter().all(|(dir, _)| gone(dir)) {
        return;
    }
    // A delegated subtree belongs to the container's root: take it back (CAP_CHOWN) so that
    // removing it needs no CAP_DAC_OVERRIDE, and a cgroup that cannot go yet (a process still
    // in it) is root's again.
    for dir in directories.iter().flat_map(|(dir, _)| subtree(dir)) {
        for file in DELEGATED {
            let _ = chown(dir.join(file), Some(0), Some(0));
        }
    }
    if let Err(e) = hierarchies.cgroup.delete() {
        tracing::debug!("removing cgroup {path}: {e}");
    }
    if let Some(unified) = &hierarchies.hybrid_unified {
        for dir in subtree(unified).iter().rev() {
            let _ = fs::remove_dir(dir);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup_paths() {
        assert_eq!(path_for(None, "abc"), "/burrow/abc");
        assert_eq!(
            path_for(Some(Path::new("/docker/abc")), "abc"),
            "/docker/abc"
        );
        assert_eq!(
            path_for(Some(Path::new("docker/abc")), "abc"),
            "/docker/abc"
        );
        assert_eq!(
            path_for(Some(Path::new("system.slice:docker:abc")), "abc"),
            "/system.slice/docker-abc.scope"
        );
        assert_eq!(
            path_for(Some(Path::new(":burrow:abc")), "abc"),
            "/system.slice/burrow-abc.scope"
        );
    }
}
