//! Per-container state under `--root`: `<root>/<id>/state.json` (written atomically) and the
//! `exec.fifo` that holds the container's init between create and start.

use std::fs;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{CliError, Result, UnsafeDir};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    pub id: String,
    pub bundle: PathBuf,
    /// The rootfs as the host sees it (for PATH lookups of `exec`).
    pub rootfs: PathBuf,
    /// Host pid of the container's init.
    pub pid: i32,
    /// Its start time (field 22 of /proc/PID/stat), so a recycled pid is never mistaken for it.
    pub pid_start: u64,
    pub created: String,
    /// Host uid and gid of the container's root.
    pub root_ids: (u32, u32),
    /// cgroup path below each hierarchy, if the container has one.
    pub cgroup: Option<String>,
    /// The systemd scope holding that cgroup (the systemd cgroup driver), stopped on delete.
    #[serde(default)]
    pub scope: Option<String>,
    pub annotations: std::collections::HashMap<String, String>,
    /// The init is systemd: `kill` turns SIGTERM into SIGRTMIN+3, its clean-shutdown signal.
    #[serde(default)]
    pub systemd: bool,
    /// The host directory behind the container's /var/lib/docker, removed with it unless
    /// `kept`.
    #[serde(default)]
    pub docker_data: Option<PathBuf>,
    /// Its range and docker data outlive it, until its anchor goes (see `keep`): delete
    /// parks the range (idmapd's Keep) and leaves the docker data.
    #[serde(default)]
    pub kept: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Created,
    Running,
    Paused,
    Stopped,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Created => "created",
            Status::Running => "running",
            Status::Paused => "paused",
            Status::Stopped => "stopped",
        }
    }
}

/// Validates a container id (the same rules as the helpers' names: it is the range's name).
pub fn check_id(id: &str) -> Result<()> {
    burrow_contract::validate_name(id).map_err(|_| CliError::BadId(id.to_string()))
}

pub struct Store {
    pub root: PathBuf,
}

impl Store {
    /// The state root `root`, made (mode 0700) if missing. It must be the caller's alone: a
    /// directory of the caller's that group and others cannot write, below directories that
    /// only root or the caller can change (or sticky ones, like /tmp). Whoever could change it
    /// could plant state the runtime trusts: a pid it signals, a directory it deletes.
    pub fn new(root: &Path) -> Result<Self> {
        let refuse = |problem| CliError::StateRoot {
            path: root.display().to_string(),
            problem,
        };
        // Nothing is made below a directory someone else could change.
        check_way_to(root).map_err(refuse)?;
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(root)
            .map_err(CliError::io(format!(
                "creating state root {}",
                root.display()
            )))?;
        check_state_root(root).map_err(refuse)?;
        Ok(Store {
            root: root.to_path_buf(),
        })
    }

    pub fn dir(&self, id: &str) -> PathBuf {
        self.root.join(id)
    }

    pub fn load(&self, id: &str) -> Result<Record> {
        check_id(id)?;
        let path = self.dir(id).join("state.json");
        let text = fs::read(&path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => CliError::NotFound(id.to_string()),
            // Someone else's container (another user's state root): not "missing".
            _ => CliError::io(format!("reading {}", path.display()))(e),
        })?;
        serde_json::from_slice(&text).map_err(|source| CliError::CorruptState {
            id: id.to_string(),
            source,
        })
    }

    /// Replaces the record atomically but flushes nothing to disk: a container does not
    /// outlive the boot, and callers keep state on tmpfs (`/run`), as runc does.
    pub fn save(&self, record: &Record) -> Result<()> {
        let json = serde_json::to_vec_pretty(record).expect("records serialize");
        burrow_sys::state::replace(&self.dir(&record.id).join("state.json"), &json).map_err(
            |source| CliError::SaveState {
                id: record.id.clone(),
                source,
            },
        )
    }

    pub fn list(&self) -> Vec<Record> {
        let Ok(entries) = fs::read_dir(&self.root) else {
            return vec![];
        };
        let mut records: Vec<Record> = entries
            .flatten()
            .filter_map(|e| self.load(&e.file_name().to_string_lossy()).ok())
            .collect();
        records.sort_by(|a, b| a.id.cmp(&b.id));
        records
    }

    pub fn remove(&self, id: &str) -> Result<()> {
        match fs::remove_dir_all(self.dir(id)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(CliError::io(format!("removing state of {id}"))(e)),
        }
    }
}

/// Start time of `pid` (clock ticks since boot), if it runs.
pub fn start_time(pid: i32) -> Option<u64> {
    parse_start_time(&fs::read(format!("/proc/{pid}/stat")).ok()?)
}

/// The start time in a /proc/PID/stat line (field 22), None for a zombie or a dead process.
/// A container's init must not pass for gone by its name, which it chooses
/// ([`burrow_sys::proc_stat`]): `kill` would refuse to signal it.
pub fn parse_start_time(stat: &[u8]) -> Option<u64> {
    use burrow_sys::proc_stat::field;
    if matches!(field(stat, 3), Some("Z" | "X")) {
        return None;
    }
    field(stat, 22)?.parse().ok()
}

impl Record {
    pub fn init_alive(&self) -> bool {
        self.pid > 0 && start_time(self.pid) == Some(self.pid_start)
    }

    pub fn status(&self, store: &Store) -> Status {
        if !self.init_alive() {
            return Status::Stopped;
        }
        if store.dir(&self.id).join("exec.fifo").exists() {
            return Status::Created;
        }
        if self
            .cgroup
            .as_deref()
            .is_some_and(burrow_sys::cgroup::is_frozen)
        {
            return Status::Paused;
        }
        Status::Running
    }

    /// The OCI state JSON, as `state` prints it (a stopped container's pid is 0, as runc's).
    pub fn oci_state(&self, store: &Store) -> serde_json::Value {
        let status = self.status(store);
        self.state_json(
            status.as_str(),
            Some(if status == Status::Stopped {
                0
            } else {
                self.pid
            }),
        )
    }

    /// The state a hook of `phase` gets on stdin: that phase's status (and the init's pid but
    /// after it stopped), whatever the process has done since (a short-lived one may have
    /// exited before poststart runs).
    pub fn hook_state(&self, phase: HookPhase) -> serde_json::Value {
        let status = match phase {
            HookPhase::Create => "creating",
            HookPhase::Poststart => "running",
            HookPhase::Poststop => "stopped",
        };
        // The spec requires a pid while created or running; runc leaves it out once stopped.
        let pid = (phase != HookPhase::Poststop).then_some(self.pid);
        self.state_json(status, pid)
    }

    fn state_json(&self, status: &str, pid: Option<i32>) -> serde_json::Value {
        let mut state = serde_json::json!({
            "ociVersion": "1.0.2",
            "id": self.id,
            "status": status,
            "bundle": self.bundle,
            "rootfs": self.rootfs,
            "created": self.created,
            "owner": "",
        });
        if let Some(pid) = pid {
            state["pid"] = pid.into();
        }
        if !self.annotations.is_empty() {
            state["annotations"] = serde_json::json!(self.annotations);
        }
        state
    }
}

/// The hooks' phases the CLI runs or hands a state to, by the state they are given: prestart,
/// createRuntime and createContainer (`creating`), poststart (`running`), poststop
/// (`stopped`). The init gives its startContainer hooks the `creating` state it got, as
/// `created`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HookPhase {
    Create,
    Poststart,
    Poststop,
}

/// Where containers' persistent data (an inner Docker's /var/lib/docker) lives on the host:
/// /var/lib/burrow for root, the XDG data directory for other users (never a shared place such
/// as /tmp, where another user could prepare the path).
pub fn data_root() -> Result<PathBuf> {
    let uid = nix::unistd::geteuid();
    if uid.is_root() {
        return Ok(PathBuf::from("/var/lib/burrow"));
    }
    let home = || {
        std::env::var_os("HOME").map(PathBuf::from).or_else(|| {
            nix::unistd::User::from_uid(uid)
                .ok()
                .flatten()
                .map(|user| user.dir)
        })
    };
    std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| home().map(|h| h.join(".local/share")))
        .map(|dir| dir.join("burrow"))
        .ok_or(CliError::NoDataDirectory { uid: uid.as_raw() })
}

/// Checks the directories on the way to `root` as given, where they exist: every directory
/// holding a component of it, symlinks on the way (`/var/run` -> `/run`) resolved.
fn check_way_to(root: &Path) -> std::result::Result<(), UnsafeDir> {
    let caller = nix::unistd::geteuid().as_raw();
    let mut dirs = vec![];
    for prefix in std::path::absolute(root)?.ancestors().skip(1) {
        match fs::canonicalize(prefix) {
            Ok(real) => dirs.extend(real.ancestors().map(Path::to_path_buf)),
            // Made by the caller below.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
    }
    dirs.sort();
    dirs.dedup();
    dirs.iter().try_for_each(|dir| check_ancestor(dir, caller))
}

/// Checks a state root that exists (see [`Store::new`]): the directory itself, and the
/// directories on the way to where it really is (whoever can rename an entry in any of them
/// can swap the state root for a directory of theirs).
fn check_state_root(root: &Path) -> std::result::Result<(), UnsafeDir> {
    let caller = nix::unistd::geteuid().as_raw();
    let meta = fs::metadata(root)?;
    if !meta.is_dir() {
        return Err(UnsafeDir::NotADirectory);
    }
    if meta.uid() != caller {
        return Err(UnsafeDir::Owner {
            owner: meta.uid(),
            caller,
        });
    }
    if meta.mode() & 0o022 != 0 {
        return Err(UnsafeDir::Writable {
            mode: meta.mode() & 0o7777,
        });
    }
    fs::canonicalize(root)?
        .ancestors()
        .skip(1)
        .try_for_each(|dir| check_ancestor(dir, caller))
}

/// A directory above a state root: root's or the caller's, and writable by nobody else unless
/// sticky (in /tmp others may add entries but not rename or remove the caller's).
fn check_ancestor(dir: &Path, caller: u32) -> std::result::Result<(), UnsafeDir> {
    let meta = fs::metadata(dir)?;
    let mode = meta.mode() & 0o7777;
    let owner_ok = meta.uid() == 0 || meta.uid() == caller;
    let others_may_rename = mode & 0o022 != 0 && mode & 0o1000 == 0;
    if owner_ok && !others_may_rename {
        return Ok(());
    }
    Err(UnsafeDir::Ancestor {
        dir: dir.display().to_string(),
        owner: meta.uid(),
        mode,
    })
}

/// The fallback state root of a user without `XDG_RUNTIME_DIR`, `/tmp/burrow-UID`, whose name
/// anyone can predict: made here exclusively (mode 0700), or, if it is there already, taken only
/// if it is a directory (not a symlink) of the caller's that nobody else may enter. A directory
/// or link another user prepared there is refused, never used.
pub fn claim_tmp_root(path: &Path) -> Result<()> {
    let refuse = |problem| CliError::StateRoot {
        path: path.display().to_string(),
        problem,
    };
    match fs::DirBuilder::new().mode(0o700).create(path) {
        Ok(()) => return Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(refuse(UnsafeDir::Io(e))),
    }
    let meta = fs::symlink_metadata(path).map_err(|e| refuse(UnsafeDir::Io(e)))?;
    let caller = nix::unistd::geteuid().as_raw();
    let mode = meta.mode() & 0o7777;
    let problem = if meta.file_type().is_symlink() {
        UnsafeDir::Symlink
    } else if !meta.is_dir() {
        UnsafeDir::NotADirectory
    } else if meta.uid() != caller {
        UnsafeDir::Owner {
            owner: meta.uid(),
            caller,
        }
    } else if mode & 0o077 != 0 {
        UnsafeDir::Open { mode }
    } else {
        return Ok(());
    };
    Err(refuse(problem))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("burrow-state-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn a_prepared_tmp_root_is_refused() {
        let dir = scratch("claim");
        let fresh = dir.join("fresh");
        claim_tmp_root(&fresh).unwrap();
        assert_eq!(fs::metadata(&fresh).unwrap().mode() & 0o777, 0o700);
        // Ours, as we made it: taken again.
        claim_tmp_root(&fresh).unwrap();
        let link = dir.join("link");
        std::os::unix::fs::symlink(&fresh, &link).unwrap();
        let open = dir.join("open");
        fs::create_dir(&open).unwrap();
        fs::set_permissions(&open, fs::Permissions::from_mode(0o755)).unwrap();
        let file = dir.join("file");
        fs::write(&file, "").unwrap();
        for (path, expected) in [
            (link, "symbolic link"),
            (open, "enter"),
            (file, "not a directory"),
        ] {
            let e = claim_tmp_root(&path).unwrap_err().to_string();
            assert!(
                e.contains("unsafe state directory") && e.contains(expected),
                "{e}"
            );
        }
        let _ = fs::remove_dir_all(dir);
    }

    #[test]
    fn a_state_root_others_may_write_is_refused() {
        let dir = scratch("root");
        Store::new(&dir.join("a/b")).unwrap();
        let shared = dir.join("shared");
        fs::create_dir(&shared).unwrap();
        fs::set_permissions(&shared, fs::Permissions::from_mode(0o777)).unwrap();
        let e = Store::new(&shared).err().unwrap().to_string();
        assert!(e.contains("may write"), "{e}");
        let e = Store::new(&shared.join("below")).err().unwrap().to_string();
        assert!(e.contains("lies below"), "{e}");
        let _ = fs::remove_dir_all(dir);
    }
}
