//! Per-container state under `--root`: `<root>/<id>/state.json` (written atomically) and the
//! `exec.fifo` that holds the container's init between create and start.

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{CliError, Result};

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
    pub annotations: std::collections::HashMap<String, String>,
    /// The init is systemd: `kill` turns SIGTERM into SIGRTMIN+3, its clean-shutdown signal.
    #[serde(default)]
    pub systemd: bool,
    /// The host directory behind the container's /var/lib/docker, removed with it.
    #[serde(default)]
    pub docker_data: Option<PathBuf>,
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
    burrow_bus::contract::validate_name(id).map_err(|_| CliError::BadId(id.to_string()))
}

pub struct Store {
    pub root: PathBuf,
}

impl Store {
    pub fn new(root: &Path) -> Result<Self> {
        fs::create_dir_all(root).map_err(CliError::io(format!(
            "creating state root {}",
            root.display()
        )))?;
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
        serde_json::from_slice(&text)
            .map_err(|e| CliError::Setup(format!("corrupt state of {id}: {e}")))
    }

    pub fn save(&self, record: &Record) -> Result<()> {
        let json = serde_json::to_vec_pretty(record).expect("records serialize");
        burrow_bus::state::write_atomic(&self.dir(&record.id).join("state.json"), &json)
            .map_err(|e| CliError::Setup(e.to_string()))
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
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_comm = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    if fields.first() == Some(&"Z") || fields.first() == Some(&"X") {
        return None;
    }
    fields.get(19)?.parse().ok()
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
            .is_some_and(burrow_bus::cgroup::is_frozen)
        {
            return Status::Paused;
        }
        Status::Running
    }

    /// The OCI state JSON.
    pub fn oci_state(&self, store: &Store) -> serde_json::Value {
        let status = self.status(store);
        let mut state = serde_json::json!({
            "ociVersion": "1.0.2",
            "id": self.id,
            "status": status.as_str(),
            "pid": if status == Status::Stopped { 0 } else { self.pid },
            "bundle": self.bundle,
            "rootfs": self.rootfs,
            "created": self.created,
            "owner": "",
        });
        if !self.annotations.is_empty() {
            state["annotations"] = serde_json::json!(self.annotations);
        }
        state
    }
}

/// Where containers' persistent data (an inner Docker's /var/lib/docker) lives on the host:
/// /var/lib/burrow for root, the XDG data directory for other users.
pub fn data_root() -> PathBuf {
    if nix::unistd::geteuid().is_root() {
        return PathBuf::from("/var/lib/burrow");
    }
    std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .unwrap_or_else(|| PathBuf::from("/tmp"))
        .join("burrow")
}
