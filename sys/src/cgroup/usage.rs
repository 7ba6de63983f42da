//! What a process's cgroups allow it and what it uses: the figures a container's sysinfo(2)
//! answer is made of (the runtime's sysinfo supervisor), read the way lxcfs reads them for
//! /proc/meminfo, on v1 and on cgroup2.

use std::collections::HashMap;

use cgroups_rs::fs::cgroup::get_cgroups_relative_paths_by_pid;
use cgroups_rs::fs::memory::MemController;
use cgroups_rs::fs::pid::PidController;
use cgroups_rs::fs::MaxValue;

use super::handle;

/// A memory cgroup's limit and use, in bytes, its ancestors' limits included. A limit the
/// kernel calls unlimited is a number above any machine's memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MemoryFigures {
    pub limit: u64,
    /// Everything charged, page cache included.
    pub usage: u64,
    /// Page cache (reclaimable), part of `usage`.
    pub cache: u64,
    /// Shared memory (tmpfs, shm), part of `usage`.
    pub shmem: u64,
    /// Swap the cgroup may use beyond `limit`, and uses; None where swap is not accounted.
    pub swap: Option<(u64, u64)>,
}

/// The cgroups `pid` is in, by controller (cgroup2's key is the empty name), as the host's
/// root cgroup sees them.
fn cgroups_of(pid: u32) -> Option<HashMap<String, String>> {
    get_cgroups_relative_paths_by_pid(pid).ok()
}

/// The path of `controller`'s cgroup of `pid`: its v1 hierarchy's, else cgroup2's.
fn path_of(pid: u32, controller: &str) -> Option<String> {
    let mut paths = cgroups_of(pid)?;
    paths.remove(controller).or_else(|| paths.remove(""))
}

/// The memory figures of `pid`'s memory cgroup.
pub fn memory_of_process(pid: u32) -> Option<MemoryFigures> {
    let path = path_of(pid, "memory")?;
    let cgroup = handle(&path);
    let memory = cgroup.controller_of::<MemController>()?;
    if cgroup.v2() {
        Some(memory_v2(&path, memory))
    } else {
        Some(memory_v1(memory))
    }
}

/// v1 states the limits the hierarchy imposes (`hierarchical_*` in memory.stat).
fn memory_v1(memory: &MemController) -> MemoryFigures {
    let own = memory.memory_stat();
    let limit = own.stat.hierarchical_memory_limit as u64;
    let swap_limit = own.stat.hierarchical_memsw_limit as u64;
    // Without swap accounting there is no memsw file: its usage reads as 0.
    let with_swap = memory.memswap().usage_in_bytes;
    MemoryFigures {
        limit,
        usage: own.usage_in_bytes,
        cache: own.stat.total_cache,
        shmem: own.stat.total_shmem,
        swap: (with_swap > 0).then(|| {
            (
                swap_limit.saturating_sub(limit),
                with_swap.saturating_sub(own.usage_in_bytes),
            )
        }),
    }
}

/// cgroup2 states each cgroup's own limits: the tightest of its ancestors' is the one.
fn memory_v2(path: &str, memory: &MemController) -> MemoryFigures {
    let own = memory.memory_stat();
    let swap = memory.memswap();
    let (limit, swap_limit) = ancestors(path)
        .filter_map(|dir| {
            let cgroup = handle(&dir);
            let memory = cgroup.controller_of::<MemController>()?;
            // Only the limits: memory.max, not the whole memory_stat of each ancestor.
            let max = match memory.get_mem().ok().and_then(|m| m.max) {
                Some(MaxValue::Value(bytes)) => as_limit(bytes),
                _ => u64::MAX,
            };
            Some((max, as_limit(memory.memswap().limit_in_bytes)))
        })
        .fold((u64::MAX, u64::MAX), |(m, s), (mine, swap)| {
            (m.min(mine), s.min(swap))
        });
    let stat = |key: &str| own.stat.raw.get(key).copied().unwrap_or(0);
    MemoryFigures {
        limit,
        usage: own.usage_in_bytes,
        cache: stat("file"),
        shmem: stat("shmem"),
        swap: Some((swap_limit, swap.usage_in_bytes)),
    }
}

/// cgroups-rs reads "max" as -1 (and a missing file as 0, the root's).
fn as_limit(value: i64) -> u64 {
    if value <= 0 {
        u64::MAX
    } else {
        value as u64
    }
}

/// `path` and each cgroup above it, up to (not including) the root.
fn ancestors(path: &str) -> impl Iterator<Item = String> + '_ {
    let path = path.trim_end_matches('/');
    std::iter::successors(Some(path), |p| p.rsplit_once('/').map(|(up, _)| up))
        .filter(|p| !p.is_empty())
        .map(str::to_string)
}

/// How many tasks `pid`'s pids cgroup holds, its sub-cgroups' included.
pub fn tasks_of_process(pid: u32) -> Option<u64> {
    let path = path_of(pid, "pids")?;
    handle(&path)
        .controller_of::<PidController>()?
        .get_pid_current()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ancestors_go_up_to_the_root() {
        let all: Vec<String> = ancestors("/a/b/c/").collect();
        assert_eq!(all, ["/a/b/c", "/a/b", "/a"]);
        assert_eq!(ancestors("/").count(), 0);
    }

    #[test]
    fn a_limit_read_as_max_or_missing_is_none() {
        assert_eq!(as_limit(-1), u64::MAX);
        assert_eq!(as_limit(0), u64::MAX);
        assert_eq!(as_limit(256 << 20), 256 << 20);
    }

    #[test]
    fn this_process_has_figures() {
        let me = std::process::id();
        let memory = memory_of_process(me).expect("a memory cgroup");
        assert!(
            memory.usage > 0 && memory.limit >= memory.usage,
            "{memory:?}"
        );
        // The root pids cgroup has no count: only a cgroup below it answers.
        assert!(tasks_of_process(me).is_none_or(|tasks| tasks >= 1));
    }
}
