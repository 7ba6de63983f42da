//! The spec's whole `linux.resources` on a container's cgroup (v1 and v2), through cgroups-rs's
//! OCI-aware `FsManager`, as runc's cgroupfs driver applies it; what the host cannot honour is
//! refused by name rather than dropped. The device rules are left out: a container's device
//! policy is Burrow's own (devd's set and the extras devd added), never the spec's.
//!
//! Zero or empty values are unset (`burrow update` and runc's update treat a zero as
//! unchanged), and kernel memory limits are ignored as runc ignores them (the kernel no longer
//! enforces them separately).

use std::path::Path;

use cgroups_rs::fs::hierarchies::is_cgroup2_unified_mode;
use cgroups_rs::manager::{FsManager, Manager};
use oci_spec::runtime::{LinuxBlockIo, LinuxCpu, LinuxMemory, LinuxResources};

#[derive(Debug, thiserror::Error)]
pub enum ResourceError {
    #[error("linux.resources.{field}: {why}")]
    Unsupported { field: &'static str, why: String },
    #[error("linux.resources.{field}: writing {}: {source}", .file.display())]
    Write {
        field: &'static str,
        file: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("applying linux.resources to cgroup {path}: {source}")]
    Apply {
        path: String,
        source: Box<cgroups_rs::manager::Error>,
    },
}

/// Applies `resources` (but its device rules) to the existing cgroup `path`.
pub fn apply(path: &str, resources: &LinuxResources) -> Result<(), ResourceError> {
    // Before the fields cgroups-rs would drop are taken out of what it is given.
    check_memory(*resources.memory())?;
    let wanted = without_unset(resources);
    // Nothing set (a spec's devices alone, or Docker's zeros): cgroups-rs's manager would only
    // read /proc/self/cgroup and mountinfo again.
    if wanted == LinuxResources::default() {
        return Ok(());
    }
    // Where the hierarchies are mounted.
    let root = super::hierarchy().root();
    check_host_honours(&root, path, &wanted)?;
    let failed = |source| ResourceError::Apply {
        path: path.to_string(),
        source: Box::new(source),
    };
    let mut manager = FsManager::new(path.trim_start_matches('/')).map_err(failed)?;
    manager.set(&wanted).map_err(failed)?;
    // After cgroups-rs's writes: a burst must not exceed the quota it has just set.
    for (field, file, value) in files_cgroups_rs_skips(&root, path, &wanted) {
        std::fs::write(&file, value).map_err(|source| ResourceError::Write {
            field,
            file,
            source,
        })?;
    }
    Ok(())
}

/// The cpu controller's files for what cgroups-rs's manager leaves out (`cpu.idle`,
/// `cpu.burst`), with their values: the cgroup's files in the hierarchy of `root`.
fn files_cgroups_rs_skips(
    root: &Path,
    path: &str,
    wanted: &LinuxResources,
) -> Vec<(&'static str, std::path::PathBuf, String)> {
    let Some(cpu) = wanted.cpu() else {
        return vec![];
    };
    let v2 = is_cgroup2_unified_mode();
    let dir = if v2 {
        root.to_path_buf()
    } else {
        root.join("cpu")
    }
    .join(path.trim_start_matches('/'));
    let burst_file = if v2 {
        "cpu.max.burst"
    } else {
        "cpu.cfs_burst_us"
    };
    let mut files = vec![];
    if let Some(idle) = cpu.idle() {
        files.push(("cpu.idle", dir.join("cpu.idle"), idle.to_string()));
    }
    if let Some(burst) = cpu.burst() {
        files.push(("cpu.burst", dir.join(burst_file), burst.to_string()));
    }
    files
}

/// Whether `resources` sets any limit (device rules aside; zeros and empties set nothing).
pub fn sets_a_limit(resources: &LinuxResources) -> bool {
    let wanted = without_unset(resources);
    let network = wanted.network().as_ref();
    wanted
        .cpu()
        .as_ref()
        .is_some_and(|c| *c != LinuxCpu::default())
        || wanted.memory().is_some_and(|m| m != LinuxMemory::default())
        || wanted.pids().is_some()
        || wanted
            .block_io()
            .as_ref()
            .is_some_and(|b| *b != LinuxBlockIo::default())
        || wanted.hugepage_limits().is_some()
        || network.is_some_and(|n| {
            n.class_id().is_some() || n.priorities().as_ref().is_some_and(|p| !p.is_empty())
        })
        || wanted.rdma().as_ref().is_some_and(|r| !r.is_empty())
        || wanted.unified().as_ref().is_some_and(|u| !u.is_empty())
}

/// `resources` without its device rules and with every zero or empty value unset.
fn without_unset(resources: &LinuxResources) -> LinuxResources {
    let mut wanted = resources.clone();
    wanted.set_devices(None);
    // A section left with nothing set is no section.
    wanted.set_cpu(nonzero(resources.cpu().as_ref().map(cpu_set)));
    wanted.set_memory(nonzero(resources.memory().as_ref().map(memory_set)));
    wanted.set_pids((*resources.pids()).filter(|p| p.limit() != 0));
    wanted.set_block_io(nonzero(resources.block_io().as_ref().map(block_io_set)));
    // kubelet sends a zero limit for every huge page size the kernel has.
    let hugepages: Vec<_> = resources
        .hugepage_limits()
        .iter()
        .flatten()
        .filter(|l| l.limit() != 0)
        .cloned()
        .collect();
    wanted.set_hugepage_limits((!hugepages.is_empty()).then_some(hugepages));
    wanted
}

fn nonzero<T: Default + PartialEq>(value: Option<T>) -> Option<T> {
    value.filter(|v| *v != T::default())
}

fn cpu_set(cpu: &LinuxCpu) -> LinuxCpu {
    let mut set = cpu.clone();
    set.set_shares(nonzero(cpu.shares()));
    set.set_quota(nonzero(cpu.quota()));
    set.set_period(nonzero(cpu.period()));
    set.set_realtime_runtime(nonzero(cpu.realtime_runtime()));
    set.set_realtime_period(nonzero(cpu.realtime_period()));
    set.set_idle(nonzero(cpu.idle()));
    set.set_burst(nonzero(cpu.burst()));
    set.set_cpus(cpu.cpus().clone().filter(|c| !c.is_empty()));
    set.set_mems(cpu.mems().clone().filter(|m| !m.is_empty()));
    set
}

fn memory_set(memory: &LinuxMemory) -> LinuxMemory {
    let mut set = *memory;
    set.set_limit(nonzero(memory.limit()));
    set.set_swap(nonzero(memory.swap()));
    set.set_reservation(nonzero(memory.reservation()));
    set.set_kernel(None);
    set.set_kernel_tcp(None);
    // Memory cgroups are always hierarchical (a `false` is refused); a limit below the usage is
    // always refused (by the v1 kernel, by cgroups-rs on v2): what these two ask is done.
    set.set_use_hierarchy(None);
    set.set_check_before_update(None);
    // An enabled OOM killer is the default.
    set.set_disable_oom_killer(memory.disable_oom_killer().filter(|d| *d));
    set
}

fn block_io_set(block_io: &LinuxBlockIo) -> LinuxBlockIo {
    let mut set = block_io.clone();
    set.set_weight(nonzero(block_io.weight()));
    set.set_leaf_weight(nonzero(block_io.leaf_weight()));
    set
}

/// The controllers each part of the resources needs, by their v1 names (cgroup2's have the
/// same names but blkio, which is `io` there).
fn needed_controllers(wanted: &LinuxResources) -> Vec<(&'static str, &'static str)> {
    let mut needed = vec![];
    if let Some(cpu) = wanted.cpu() {
        if cpu.cpus().is_some() || cpu.mems().is_some() {
            needed.push(("cpu.cpus", "cpuset"));
        }
        if cpu.shares().is_some()
            || cpu.quota().is_some()
            || cpu.period().is_some()
            || cpu.idle().is_some()
            || cpu.burst().is_some()
            || cpu.realtime_runtime().is_some()
            || cpu.realtime_period().is_some()
        {
            needed.push(("cpu", "cpu"));
        }
    }
    let network = wanted.network().as_ref();
    for (field, controller, set) in [
        ("memory", "memory", wanted.memory().is_some()),
        ("pids", "pids", wanted.pids().is_some()),
        ("blockIO", "blkio", wanted.block_io().is_some()),
        (
            "hugepageLimits",
            "hugetlb",
            wanted
                .hugepage_limits()
                .as_ref()
                .is_some_and(|l| !l.is_empty()),
        ),
        (
            "network.classID",
            "net_cls",
            network.is_some_and(|n| n.class_id().is_some()),
        ),
        (
            "network.priorities",
            "net_prio",
            network.is_some_and(|n| n.priorities().as_ref().is_some_and(|p| !p.is_empty())),
        ),
    ] {
        if set {
            needed.push((field, controller));
        }
    }
    needed
}

/// Whether this host has `controller` (a v1 hierarchy of it below `root`, or cgroup2's `root`
/// lists it).
fn host_has(root: &Path, controller: &str) -> bool {
    if is_cgroup2_unified_mode() {
        let v2_name = if controller == "blkio" {
            "io"
        } else {
            controller
        };
        return std::fs::read_to_string(root.join("cgroup.controllers"))
            .is_ok_and(|c| c.split_whitespace().any(|c| c == v2_name));
    }
    root.join(controller).join("cgroup.procs").exists()
}

/// Refuses what this host has no controller or file for, before anything is written.
fn check_host_honours(
    root: &Path,
    path: &str,
    wanted: &LinuxResources,
) -> Result<(), ResourceError> {
    let unsupported = |field, why: &str| {
        Err(ResourceError::Unsupported {
            field,
            why: why.to_string(),
        })
    };
    if let Some((field, controller)) = needed_controllers(wanted)
        .into_iter()
        .find(|(_, controller)| !host_has(root, controller))
    {
        return unsupported(field, &format!("this host has no {controller} controller"));
    }
    if wanted.rdma().as_ref().is_some_and(|r| !r.is_empty()) {
        return unsupported("rdma", "rdma limits are not applied by Burrow");
    }
    if wanted.unified().as_ref().is_some_and(|u| !u.is_empty()) {
        return unsupported("unified", "raw cgroup2 files are not written by Burrow");
    }
    let v1_file = |controller: &str, file: &str| {
        root.join(controller)
            .join(path.trim_start_matches('/'))
            .join(file)
    };
    let block_io = wanted.block_io().as_ref();
    // Leaf weights are checked by name below.
    let weighted = block_io.is_some_and(|b| b.weight().is_some() || b.weight_device().is_some());
    if weighted && !is_cgroup2_unified_mode() && !v1_file("blkio", "blkio.weight").exists() {
        return unsupported(
            "blockIO.weight",
            "this host's blkio controller has no proportional weight (blkio.weight: no CFQ)",
        );
    }
    check_cgroups_rs_skips(root, path, wanted)?;
    let swap = wanted.memory().as_ref().and_then(|m| m.swap()).is_some();
    if swap
        && !is_cgroup2_unified_mode()
        && !v1_file("memory", "memory.memsw.limit_in_bytes").exists()
    {
        return unsupported(
            "memory.swap",
            "this host does not account swap (swapaccount=1)",
        );
    }
    if let Some(limits) = wanted.hugepage_limits().as_ref().filter(|l| !l.is_empty()) {
        let supported = supported_hugepage_sizes();
        if let Some(limit) = limits.iter().find(|l| !supported.contains(l.page_size())) {
            return unsupported(
                "hugepageLimits",
                &format!("this host has no {} huge pages", limit.page_size()),
            );
        }
    }
    Ok(())
}

/// What cgroups-rs applies on v1 only, or not at all, and the host's kernel must have a file
/// for: refused by name where it would be dropped or fail without one.
fn check_cgroups_rs_skips(
    root: &Path,
    path: &str,
    wanted: &LinuxResources,
) -> Result<(), ResourceError> {
    for (field, file, _) in files_cgroups_rs_skips(root, path, wanted) {
        if !file.exists() {
            return Err(ResourceError::Unsupported {
                field,
                why: format!("this host's kernel has no {}", file.display()),
            });
        }
    }
    let v1_file = |controller: &str, file: &str| {
        root.join(controller)
            .join(path.trim_start_matches('/'))
            .join(file)
    };
    let v2 = is_cgroup2_unified_mode();
    let cpu = wanted.cpu().as_ref();
    let realtime =
        cpu.is_some_and(|c| c.realtime_runtime().is_some() || c.realtime_period().is_some());
    if realtime && (v2 || !v1_file("cpu", "cpu.rt_runtime_us").exists()) {
        return Err(ResourceError::Unsupported {
            field: "cpu.realtimeRuntime",
            why: "this host's cpu controller has no real-time group scheduling (cpu.rt_runtime_us)"
                .into(),
        });
    }
    let block_io = wanted.block_io().as_ref();
    let leaf = block_io.is_some_and(|b| {
        b.leaf_weight().is_some()
            || b.weight_device()
                .iter()
                .flatten()
                .any(|d| d.leaf_weight().is_some())
    });
    if leaf && (v2 || !v1_file("blkio", "blkio.leaf_weight").exists()) {
        return Err(ResourceError::Unsupported {
            field: "blockIO.leafWeight",
            why:
                "leaf weights are CFQ's (blkio.leaf_weight), which this host's kernel does not have"
                    .into(),
        });
    }
    Ok(())
}

/// The memory fields cgroups-rs drops or cannot apply on this host's hierarchy.
fn check_memory(memory: Option<LinuxMemory>) -> Result<(), ResourceError> {
    let Some(memory) = memory else {
        return Ok(());
    };
    let refuse = |field, why: &str| {
        Err(ResourceError::Unsupported {
            field,
            why: why.to_string(),
        })
    };
    let v2 = is_cgroup2_unified_mode();
    if memory.use_hierarchy() == Some(false) {
        return refuse(
            "memory.useHierarchy",
            "the kernel's memory cgroups are always hierarchical",
        );
    }
    if memory.disable_oom_killer() == Some(true) && v2 {
        return refuse(
            "memory.disableOOMKiller",
            "cgroup v2 has no switch for the OOM killer",
        );
    }
    match memory.swappiness() {
        Some(_) if v2 => refuse(
            "memory.swappiness",
            "cgroup v2 has no per-cgroup swappiness",
        ),
        Some(s) if s > 100 => refuse("memory.swappiness", &format!("{s} is not 0-100")),
        _ => Ok(()),
    }
}

/// The huge page sizes the kernel has, as the spec names them (`2MB`, `1GB`).
fn supported_hugepage_sizes() -> Vec<String> {
    std::fs::read_dir(Path::new("/sys/kernel/mm/hugepages"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let kb: u64 = e
                .file_name()
                .to_str()?
                .strip_prefix("hugepages-")?
                .strip_suffix("kB")?
                .parse()
                .ok()?;
            Some(match kb {
                kb if kb >= 1 << 20 => format!("{}GB", kb >> 20),
                kb if kb >= 1 << 10 => format!("{}MB", kb >> 10),
                kb => format!("{kb}KB"),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::{LinuxCpuBuilder, LinuxMemoryBuilder};

    /// Docker's zeros and a spec's device rules set nothing: no manager is asked.
    #[test]
    fn zeros_and_device_rules_alone_set_nothing() {
        let resources: LinuxResources = serde_json::from_value(serde_json::json!({
            "devices": [{"allow": false, "access": "rwm"}],
            "memory": {"limit": 0, "reservation": 0, "swap": 0},
            "cpu": {"shares": 0, "quota": 0, "period": 0},
            "pids": {"limit": 0},
            "blockIO": {"weight": 0}
        }))
        .unwrap();
        assert_eq!(without_unset(&resources), LinuxResources::default());
        let limited: LinuxResources =
            serde_json::from_value(serde_json::json!({"pids": {"limit": 64}})).unwrap();
        assert_ne!(without_unset(&limited), LinuxResources::default());
    }

    #[test]
    fn memory_fields_cgroups_rs_would_drop_are_refused_by_name() {
        let memory = |json| serde_json::from_value::<LinuxMemory>(json).unwrap();
        let field_of = |json| match check_memory(Some(memory(json))) {
            Err(ResourceError::Unsupported { field, .. }) => Some(field),
            Err(other) => panic!("{other}"),
            Ok(()) => None,
        };
        assert_eq!(
            field_of(serde_json::json!({"useHierarchy": false})),
            Some("memory.useHierarchy")
        );
        assert_eq!(
            field_of(serde_json::json!({"swappiness": 101})),
            Some("memory.swappiness")
        );
        let done_anyway = serde_json::json!({"useHierarchy": true, "checkBeforeUpdate": true});
        assert_eq!(field_of(done_anyway.clone()), None);
        // Neither is left for cgroups-rs, which would ignore them.
        let wanted = memory_set(&memory(done_anyway));
        assert_eq!(wanted, LinuxMemory::default());
    }

    #[test]
    fn cpu_idle_and_burst_are_kept_when_set() {
        let cpu: LinuxCpu =
            serde_json::from_value(serde_json::json!({"idle": 1, "burst": 0})).unwrap();
        let set = cpu_set(&cpu);
        assert_eq!((set.idle(), set.burst()), (Some(1), None));
    }

    #[test]
    fn zeros_and_empties_are_unset_and_devices_left_out() {
        let resources: LinuxResources = serde_json::from_value(serde_json::json!({
            "devices": [{"allow": true, "access": "rwm"}],
            "cpu": {"shares": 0, "quota": 50000, "cpus": "", "mems": "0"},
            "memory": {"limit": 0, "reservation": 1048576, "kernel": 4096},
            "pids": {"limit": 0},
            "blockIO": {"weight": 0},
            "hugepageLimits": [{"pageSize": "2MB", "limit": 0}]
        }))
        .unwrap();
        let wanted = without_unset(&resources);
        assert_eq!(wanted.devices(), &None);
        assert_eq!(
            wanted.cpu().clone().unwrap(),
            LinuxCpuBuilder::default()
                .quota(50000)
                .mems("0")
                .build()
                .unwrap()
        );
        assert_eq!(
            wanted.memory().unwrap(),
            LinuxMemoryBuilder::default()
                .reservation(1048576)
                .build()
                .unwrap()
        );
        assert_eq!(wanted.pids(), &None);
        assert_eq!(wanted.block_io(), &None);
        assert_eq!(wanted.hugepage_limits(), &None);
        assert!(sets_a_limit(&resources));
        let nothing: LinuxResources = serde_json::from_value(serde_json::json!({
            "devices": [{"allow": false, "access": "rwm"}],
            "cpu": {"shares": 0, "cpus": ""}, "memory": {"limit": 0}, "pids": {"limit": 0},
        }))
        .unwrap();
        assert!(!sets_a_limit(&nothing));
    }
}
