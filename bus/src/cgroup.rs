//! cgroups for containers, on v1, hybrid (v1 + cgroup2 at `unified`, this machine) and v2:
//! one directory per hierarchy, the container's limits written into it, and the subtree handed
//! to the container's root (directory and membership files, never the limit files) so that
//! systemd and Docker inside can manage their own sub-cgroups. Used by the runtime as root and
//! by idmapd for other users' containers.

use std::fs;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("no freezer cgroup on this host")]
    NoFreezer,
    #[error("cgroup {path} did not {action}")]
    FreezeTimeout { path: String, action: &'static str },
}

type Result<T> = std::result::Result<T, CgroupError>;

fn io(what: String) -> impl FnOnce(std::io::Error) -> CgroupError {
    move |source| CgroupError::Io { what, source }
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

/// The mount points of every cgroup hierarchy (v1 and cgroup2).
pub fn hierarchies() -> Vec<PathBuf> {
    let Ok(mountinfo) = fs::read_to_string("/proc/self/mountinfo") else {
        return vec![];
    };
    mountinfo
        .lines()
        .filter_map(|line| {
            let (fields, tail) = line.split_once(" - ")?;
            let fstype = tail.split(' ').next()?;
            let mount_point = fields.split(' ').nth(4)?;
            (fstype == "cgroup" || fstype == "cgroup2").then(|| PathBuf::from(mount_point))
        })
        .collect()
}

/// The cgroup path for a container: `cgroupsPath` from the spec, in systemd's
/// `slice:prefix:name` form when asked for (as cgroupfs directories), or `/burrow/<id>`.
pub fn path_for(cgroups_path: Option<&Path>, systemd: bool, id: &str) -> String {
    let Some(path) = cgroups_path.map(|p| p.to_string_lossy().into_owned()) else {
        return format!("/burrow/{id}");
    };
    let parts: Vec<&str> = path.split(':').collect();
    if systemd || (parts.len() == 3 && !path.starts_with('/')) {
        if let [slice, prefix, name] = parts[..] {
            let slice = if slice.is_empty() {
                "system.slice"
            } else {
                slice
            };
            let unit = if prefix.is_empty() {
                format!("{name}.scope")
            } else {
                format!("{prefix}-{name}.scope")
            };
            return format!("/{slice}/{unit}");
        }
    }
    if path.starts_with('/') {
        path
    } else {
        format!("/{path}")
    }
}

fn write(path: &Path, value: &str) -> Result<()> {
    fs::write(path, value).map_err(io(format!("writing {value:?} to {}", path.display())))
}

/// v1 cpuset cgroups start empty and refuse tasks until cpus and mems are set: copy them down.
fn fill_cpuset(hierarchy: &Path, path: &str) -> Result<()> {
    let mut dir = hierarchy.to_path_buf();
    for part in path.split('/').filter(|p| !p.is_empty()) {
        let parent = dir.clone();
        dir.push(part);
        for file in ["cpuset.cpus", "cpuset.mems"] {
            let current = fs::read_to_string(dir.join(file)).unwrap_or_default();
            if current.trim().is_empty() {
                let inherited = fs::read_to_string(parent.join(file)).unwrap_or_default();
                write(&dir.join(file), inherited.trim())?;
            }
        }
    }
    Ok(())
}

fn apply_limits(dir: &Path, unified: bool, limits: &Limits) -> Result<()> {
    let set = |file: &str, value: String| -> Result<()> {
        let path = dir.join(file);
        if path.exists() {
            write(&path, &value)
        } else {
            Ok(())
        }
    };
    if let Some(limit) = limits.memory.filter(|l| *l > 0) {
        let file = if unified {
            "memory.max"
        } else {
            "memory.limit_in_bytes"
        };
        set(file, limit.to_string())?;
    }
    if let Some(limit) = limits.pids.filter(|l| *l > 0) {
        set("pids.max", limit.to_string())?;
    }
    if let Some(shares) = limits.cpu_shares.filter(|s| *s > 0) {
        if unified {
            // runc's conversion from shares (2..262144) to weight (1..10000).
            let weight = 1 + ((shares.saturating_sub(2)) * 9999) / 262142;
            set("cpu.weight", weight.to_string())?;
        } else {
            set("cpu.shares", shares.to_string())?;
        }
    }
    let period = limits.cpu_period.filter(|p| *p > 0);
    if let Some(quota) = limits.cpu_quota.filter(|q| *q != 0) {
        if unified {
            set("cpu.max", format!("{quota} {}", period.unwrap_or(100000)))?;
        } else {
            if let Some(period) = period {
                set("cpu.cfs_period_us", period.to_string())?;
            }
            set("cpu.cfs_quota_us", quota.to_string())?;
        }
    }
    Ok(())
}

/// Creates `path` in every hierarchy with `limits` (parents that do not exist yet get none).
pub fn make(path: &str, limits: &Limits) -> Result<()> {
    for hierarchy in hierarchies() {
        make_in(&hierarchy, path, limits)?;
    }
    Ok(())
}

/// `path` in one hierarchy, with `limits`; its directory.
fn make_in(hierarchy: &Path, path: &str, limits: &Limits) -> Result<PathBuf> {
    let dir = join_path(hierarchy, path);
    fs::create_dir_all(&dir).map_err(io(format!("creating cgroup {}", dir.display())))?;
    if hierarchy.ends_with("cpuset") || hierarchy.to_string_lossy().contains("cpuset,") {
        fill_cpuset(hierarchy, path)?;
    }
    apply_limits(&dir, is_cgroup2(hierarchy), limits)?;
    Ok(dir)
}

/// Creates `path` in every hierarchy, applies `limits`, moves `pid` in and delegates the
/// subtree to `owner` (host uid, gid of the container's root).
pub fn create(path: &str, pid: i32, owner: (u32, u32), limits: &Limits) -> Result<()> {
    for hierarchy in hierarchies() {
        let dir = make_in(&hierarchy, path, limits)?;
        write(&dir.join("cgroup.procs"), &pid.to_string())?;
        delegate(&dir, is_cgroup2(&hierarchy), owner)?;
    }
    Ok(())
}

/// Moves `pid` into the container's cgroup in every hierarchy (for `exec`); best effort, as
/// the process is contained by the namespaces anyway.
pub fn join(path: &str, pid: i32) {
    for hierarchy in hierarchies() {
        let _ = fs::write(
            join_path(&hierarchy, path).join("cgroup.procs"),
            pid.to_string(),
        );
    }
}

/// Updates the limits of an existing cgroup (`burrow update`).
pub fn update(path: &str, limits: &Limits) -> Result<()> {
    for hierarchy in hierarchies() {
        apply_limits(&join_path(&hierarchy, path), is_cgroup2(&hierarchy), limits)?;
    }
    Ok(())
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
        let path = if file.is_empty() {
            dir.to_path_buf()
        } else {
            dir.join(file)
        };
        if path.exists() {
            std::os::unix::fs::chown(&path, Some(uid), Some(gid))
                .map_err(io(format!("delegating {}", path.display())))?;
        }
    }
    Ok(())
}

fn is_cgroup2(hierarchy: &Path) -> bool {
    hierarchy.join("cgroup.controllers").exists()
}

fn join_path(hierarchy: &Path, path: &str) -> PathBuf {
    hierarchy.join(path.trim_start_matches('/'))
}

/// Every process in the container's cgroup (and its sub-cgroups).
pub fn pids(path: &str) -> Vec<i32> {
    let Some(hierarchy) = hierarchies()
        .into_iter()
        .find(|h| h.ends_with("pids") || h.ends_with("memory") || is_cgroup2(h))
    else {
        return vec![];
    };
    let mut pids = vec![];
    let mut stack = vec![join_path(&hierarchy, path)];
    while let Some(dir) = stack.pop() {
        if let Ok(text) = fs::read_to_string(dir.join("cgroup.procs")) {
            pids.extend(text.lines().filter_map(|l| l.parse::<i32>().ok()));
        }
        if let Ok(entries) = fs::read_dir(&dir) {
            stack.extend(
                entries
                    .flatten()
                    .filter(|e| e.path().is_dir())
                    .map(|e| e.path()),
            );
        }
    }
    pids.sort_unstable();
    pids.dedup();
    pids
}

fn freezer_file(path: &str) -> Option<(PathBuf, &'static str, &'static str)> {
    for hierarchy in hierarchies() {
        if hierarchy.ends_with("freezer") {
            return Some((
                join_path(&hierarchy, path).join("freezer.state"),
                "FROZEN",
                "THAWED",
            ));
        }
    }
    hierarchies()
        .into_iter()
        .find(|h| is_cgroup2(h) && join_path(h, path).join("cgroup.freeze").exists())
        .map(|h| (join_path(&h, path).join("cgroup.freeze"), "1", "0"))
}

pub fn is_frozen(path: &str) -> bool {
    freezer_file(path)
        .and_then(|(file, frozen, _)| Some(fs::read_to_string(file).ok()?.trim() == frozen))
        .unwrap_or(false)
}

pub fn freeze(path: &str, frozen: bool) -> Result<()> {
    let (file, on, off) = freezer_file(path).ok_or(CgroupError::NoFreezer)?;
    write(&file, if frozen { on } else { off })?;
    for _ in 0..100 {
        if is_frozen(path) == frozen {
            return Ok(());
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    Err(CgroupError::FreezeTimeout {
        path: path.to_string(),
        action: if frozen { "freeze" } else { "thaw" },
    })
}

/// Removes the container's cgroup (with any sub-cgroups its root made) from every hierarchy.
pub fn remove(path: &str) {
    for hierarchy in hierarchies() {
        let top = join_path(&hierarchy, path);
        let mut dirs = vec![];
        let mut stack = vec![top.clone()];
        while let Some(dir) = stack.pop() {
            if let Ok(entries) = fs::read_dir(&dir) {
                stack.extend(
                    entries
                        .flatten()
                        .filter(|e| e.path().is_dir())
                        .map(|e| e.path()),
                );
            }
            dirs.push(dir);
        }
        // A delegated subtree belongs to the container's root: take it back (CAP_CHOWN) so
        // that removing it needs no CAP_DAC_OVERRIDE, and a cgroup that cannot go yet (a
        // process still in it) is root's again.
        for dir in &dirs {
            for file in DELEGATED {
                let _ = std::os::unix::fs::chown(dir.join(file), Some(0), Some(0));
            }
        }
        for dir in dirs.iter().rev() {
            for _ in 0..50 {
                match fs::remove_dir(dir) {
                    Ok(()) => break,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                    Err(_) => std::thread::sleep(std::time::Duration::from_millis(10)),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup_paths() {
        assert_eq!(path_for(None, false, "abc"), "/burrow/abc");
        assert_eq!(
            path_for(Some(Path::new("/docker/abc")), false, "abc"),
            "/docker/abc"
        );
        assert_eq!(
            path_for(Some(Path::new("docker/abc")), false, "abc"),
            "/docker/abc"
        );
        assert_eq!(
            path_for(Some(Path::new("system.slice:docker:abc")), true, "abc"),
            "/system.slice/docker-abc.scope"
        );
        assert_eq!(
            path_for(Some(Path::new(":burrow:abc")), true, "abc"),
            "/system.slice/burrow-abc.scope"
        );
    }
}
