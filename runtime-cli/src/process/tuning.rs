//! How a container's process is run, beyond its user and limits: the spec's
//! `process.ioPriority`, `process.scheduler`, `process.execCPUAffinity`, `linux.personality`
//! and `linux.memoryPolicy`. Each is turned into what its system call takes before the fork
//! (so a malformed value fails `create` or `exec` with its field's name, and the forked process
//! only makes system calls), and applied by the process itself just before exec, so that the
//! kernel's answer (EPERM for a real-time class inside a user namespace, ...) fails it by name.

use nix::sched::CpuSet;
use oci_spec::runtime::{
    IOPriorityClass, LinuxMemoryPolicy, LinuxPersonality, LinuxPersonalityDomain,
    LinuxSchedulerFlag, LinuxSchedulerPolicy, MemoryPolicyFlagType, MemoryPolicyModeType,
    Scheduler,
};

/// Why a field of this module cannot be turned into its system call's arguments.
#[derive(Debug, thiserror::Error)]
pub enum TuningError {
    #[error("process.ioPriority: level {0} is not 0-7")]
    IoPriorityLevel(i64),
    #[error("process.scheduler: {policy} is a policy Linux does not have")]
    NoSuchPolicy { policy: &'static str },
    #[error(
        "process.scheduler.flags: {flag} needs a utilization clamp value, which the spec cannot \
         give"
    )]
    UtilClamp { flag: &'static str },
    #[error("{field} {value:?}: {why}")]
    BadList {
        field: &'static str,
        value: String,
        why: String,
    },
}

/// I/O priority classes (linux/ioprio.h) and the shift of the class above the level.
const IOPRIO_CLASS_RT: u32 = 1;
const IOPRIO_CLASS_BE: u32 = 2;
const IOPRIO_CLASS_IDLE: u32 = 3;
const IOPRIO_CLASS_SHIFT: u32 = 13;
const IOPRIO_WHO_PROCESS: libc::c_int = 1;

/// `process.ioPriority` as ioprio_set(2) takes it: class and level in one value.
pub fn io_priority(class: IOPriorityClass, level: i64) -> Result<u32, TuningError> {
    let class = match class {
        IOPriorityClass::IoprioClassRt => IOPRIO_CLASS_RT,
        IOPriorityClass::IoprioClassBe => IOPRIO_CLASS_BE,
        IOPriorityClass::IoprioClassIdle => IOPRIO_CLASS_IDLE,
    };
    let level = u32::try_from(level)
        .ok()
        .filter(|l| *l < 8)
        .ok_or(TuningError::IoPriorityLevel(level))?;
    Ok(class << IOPRIO_CLASS_SHIFT | level)
}

/// Sets the calling process's I/O priority (`ioprio`, from [`io_priority`]).
pub fn set_io_priority(ioprio: u32) -> std::io::Result<()> {
    // SAFETY: ioprio_set takes three integers and reads no memory; libc has no wrapper.
    let done = unsafe {
        libc::syscall(
            libc::SYS_ioprio_set,
            IOPRIO_WHO_PROCESS,
            0,
            ioprio as libc::c_int,
        )
    };
    if done == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// The kernel's `struct sched_attr` (SCHED_ATTR_SIZE_VER0: without utilization clamps).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SchedAttr {
    size: u32,
    policy: u32,
    flags: u64,
    nice: i32,
    priority: u32,
    runtime: u64,
    deadline: u64,
    period: u64,
}

/// `process.scheduler` as sched_setattr(2) takes it. Its values are the kernel's to judge
/// (ranges depend on the policy and the caller's privilege); a policy or flag that cannot be
/// expressed is refused here.
pub fn sched_attr(scheduler: &Scheduler) -> Result<SchedAttr, TuningError> {
    let policy = match scheduler.policy() {
        LinuxSchedulerPolicy::SchedOther => libc::SCHED_OTHER,
        LinuxSchedulerPolicy::SchedFifo => libc::SCHED_FIFO,
        LinuxSchedulerPolicy::SchedRr => libc::SCHED_RR,
        LinuxSchedulerPolicy::SchedBatch => libc::SCHED_BATCH,
        LinuxSchedulerPolicy::SchedIdle => libc::SCHED_IDLE,
        LinuxSchedulerPolicy::SchedDeadline => 6,
        LinuxSchedulerPolicy::SchedIso => {
            return Err(TuningError::NoSuchPolicy {
                policy: "SCHED_ISO",
            })
        }
    };
    let mut flags = 0;
    for flag in scheduler.flags().iter().flatten() {
        flags |= match flag {
            LinuxSchedulerFlag::SchedResetOnFork => 0x01,
            LinuxSchedulerFlag::SchedFlagReclaim => 0x02,
            LinuxSchedulerFlag::SchedFlagDLOverrun => 0x04,
            LinuxSchedulerFlag::SchedFlagKeepPolicy => 0x08,
            LinuxSchedulerFlag::SchedFlagKeepParams => 0x10,
            LinuxSchedulerFlag::SchedFlagUtilClampMin => {
                return Err(TuningError::UtilClamp {
                    flag: "SCHED_FLAG_UTIL_CLAMP_MIN",
                })
            }
            LinuxSchedulerFlag::SchedFlagUtilClampMax => {
                return Err(TuningError::UtilClamp {
                    flag: "SCHED_FLAG_UTIL_CLAMP_MAX",
                })
            }
        };
    }
    Ok(SchedAttr {
        size: std::mem::size_of::<SchedAttr>() as u32,
        policy: policy as u32,
        flags,
        nice: scheduler.nice().unwrap_or(0),
        priority: scheduler.priority().unwrap_or(0) as u32,
        runtime: scheduler.runtime().unwrap_or(0),
        deadline: scheduler.deadline().unwrap_or(0),
        period: scheduler.period().unwrap_or(0),
    })
}

/// Sets the calling process's scheduling policy and attributes.
pub fn set_scheduler(attr: &SchedAttr) -> std::io::Result<()> {
    // SAFETY: `attr` is a complete sched_attr of the size it declares and outlives the call,
    // which only reads it; libc has no wrapper for sched_setattr.
    let done = unsafe { libc::syscall(libc::SYS_sched_setattr, 0, attr as *const SchedAttr, 0u32) };
    if done == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// The scheduler flags whose spec names oci-spec 0.10 does not parse (its serde names are
/// derived from its variant names), with the names it parses instead.
const OCI_SPEC_FLAG_NAMES: [(&str, &str); 2] = [
    ("SCHED_FLAG_RESET_ON_FORK", "SCHED_RESET_ON_FORK"),
    ("SCHED_FLAG_DL_OVERRUN", "SCHED_FLAG_D_L_OVERRUN"),
];

/// Rewrites `process.scheduler.flags` of a process's JSON from the spec's names to oci-spec's,
/// before it is parsed, so that a spec-conforming config.json is read as it means.
pub fn spec_flag_names_for_oci_spec(process: &mut serde_json::Value) {
    let Some(flags) = process
        .pointer_mut("/scheduler/flags")
        .and_then(serde_json::Value::as_array_mut)
    else {
        return;
    };
    for flag in flags {
        if let Some((_, theirs)) = OCI_SPEC_FLAG_NAMES
            .iter()
            .find(|(spec, _)| flag.as_str() == Some(*spec))
        {
            *flag = (*theirs).into();
        }
    }
}

/// personality(2)'s execution domains (linux/personality.h).
const PER_LINUX: libc::c_int = 0x0000;
const PER_LINUX32: libc::c_int = 0x0008;

/// `linux.personality` as personality(2) takes it. Flags are refused before this (the spec
/// defines none).
pub fn persona(personality: &LinuxPersonality) -> nix::sys::personality::Persona {
    let domain = match personality.domain() {
        LinuxPersonalityDomain::PerLinux => PER_LINUX,
        LinuxPersonalityDomain::PerLinux32 => PER_LINUX32,
    };
    // Persona names only the flags: a domain is kept as its bits.
    nix::sys::personality::Persona::from_bits_retain(domain)
}

/// A memory policy as set_mempolicy(2) takes it: mode with its flags, and the node mask.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemPolicy {
    mode: libc::c_int,
    nodes: Vec<libc::c_ulong>,
}

/// The most NUMA nodes (and CPUs) a list may name: the kernel's usual maximum.
const MAX_LISTED: u32 = 1024;

/// `linux.memoryPolicy` as set_mempolicy(2) takes it.
pub fn mem_policy(policy: &LinuxMemoryPolicy) -> Result<MemPolicy, TuningError> {
    // linux/mempolicy.h
    let mut mode = match policy.mode() {
        MemoryPolicyModeType::MpolDefault => 0,
        MemoryPolicyModeType::MpolPreferred => 1,
        MemoryPolicyModeType::MpolBind => 2,
        MemoryPolicyModeType::MpolInterleave => 3,
        MemoryPolicyModeType::MpolLocal => 4,
        MemoryPolicyModeType::MpolPreferredMany => 5,
        MemoryPolicyModeType::MpolWeightedInterleave => 6,
    };
    for flag in policy.flags().iter().flatten() {
        mode |= match flag {
            MemoryPolicyFlagType::MpolFNumaBalancing => 1 << 13,
            MemoryPolicyFlagType::MpolFRelativeNodes => 1 << 14,
            MemoryPolicyFlagType::MpolFStaticNodes => 1 << 15,
        };
    }
    let listed = match policy.nodes().as_deref().filter(|n| !n.is_empty()) {
        Some(nodes) => parse_list("linux.memoryPolicy.nodes", nodes)?,
        None => vec![],
    };
    let bits = libc::c_ulong::BITS;
    let mut nodes = vec![];
    for node in listed {
        let word = (node / bits) as usize;
        if nodes.len() <= word {
            nodes.resize(word + 1, 0);
        }
        nodes[word] |= 1 << (node % bits);
    }
    Ok(MemPolicy { mode, nodes })
}

/// Sets the calling process's memory policy.
pub fn set_mem_policy(policy: &MemPolicy) -> std::io::Result<()> {
    let (mask, maxnode) = if policy.nodes.is_empty() {
        (std::ptr::null(), 0)
    } else {
        // The kernel reads maxnode - 1 bits.
        let bits = policy.nodes.len() as libc::c_ulong * libc::c_ulong::from(libc::c_ulong::BITS);
        (policy.nodes.as_ptr(), bits + 1)
    };
    // SAFETY: `mask` is null or points to `nodes`, whose words hold the maxnode - 1 bits the
    // kernel reads, and outlives the call; libc has no wrapper for set_mempolicy.
    let done = unsafe { libc::syscall(libc::SYS_set_mempolicy, policy.mode, mask, maxnode) };
    if done == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// A list of CPUs for `field` (`process.execCPUAffinity.initial`, `.final`) as
/// sched_setaffinity(2) takes it.
pub fn cpu_set(field: &'static str, list: &str) -> Result<CpuSet, TuningError> {
    let mut set = CpuSet::new();
    for cpu in parse_list(field, list)? {
        set.set(cpu as usize).map_err(|e| TuningError::BadList {
            field,
            value: list.into(),
            why: format!("CPU {cpu}: {e}"),
        })?;
    }
    Ok(set)
}

/// The numbers a list such as `0-3,7` names (the kernel's list format, as the spec uses it
/// for CPUs and NUMA nodes), each below [`MAX_LISTED`].
pub fn parse_list(field: &'static str, list: &str) -> Result<Vec<u32>, TuningError> {
    let bad = |why: String| TuningError::BadList {
        field,
        value: list.into(),
        why,
    };
    let number = |s: &str| {
        s.trim()
            .parse::<u32>()
            .ok()
            .filter(|n| *n < MAX_LISTED)
            .ok_or_else(|| bad(format!("{s:?} is not a number below {MAX_LISTED}")))
    };
    let mut numbers = vec![];
    for part in list.split(',') {
        let (first, last) = match part.split_once('-') {
            Some((first, last)) => (number(first)?, number(last)?),
            None => (number(part)?, number(part)?),
        };
        if first > last {
            return Err(bad(format!("the range {part:?} is reversed")));
        }
        numbers.extend(first..=last);
    }
    Ok(numbers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_are_parsed_as_the_kernel_writes_them() {
        assert_eq!(parse_list("f", "0-3,7").unwrap(), [0, 1, 2, 3, 7]);
        assert_eq!(parse_list("f", "5").unwrap(), [5]);
        for bad in ["", "3-1", "a", "1,,2", "1024", "-1"] {
            let error = parse_list("f", bad).unwrap_err().to_string();
            assert!(error.starts_with(&format!("f {bad:?}: ")), "{error}");
        }
        let set = cpu_set("process.execCPUAffinity.final", "1,3").unwrap();
        assert!(set.is_set(1).unwrap() && set.is_set(3).unwrap() && !set.is_set(2).unwrap());
    }

    #[test]
    fn io_priority_is_class_and_level() {
        assert_eq!(
            io_priority(IOPriorityClass::IoprioClassBe, 4).unwrap(),
            2 << 13 | 4
        );
        assert_eq!(
            io_priority(IOPriorityClass::IoprioClassIdle, 0).unwrap(),
            3 << 13
        );
        for level in [-1, 8] {
            assert_eq!(
                io_priority(IOPriorityClass::IoprioClassRt, level)
                    .unwrap_err()
                    .to_string(),
                format!("process.ioPriority: level {level} is not 0-7")
            );
        }
    }

    #[test]
    fn scheduler_fields_become_sched_attr() {
        let mut process = serde_json::json!({"scheduler": {
            "policy": "SCHED_DEADLINE", "runtime": 1000, "deadline": 2000, "period": 3000,
            "flags": ["SCHED_FLAG_RESET_ON_FORK", "SCHED_FLAG_RECLAIM", "SCHED_FLAG_DL_OVERRUN"]
        }});
        spec_flag_names_for_oci_spec(&mut process);
        let scheduler: Scheduler = serde_json::from_value(process["scheduler"].take()).unwrap();
        let attr = sched_attr(&scheduler).unwrap();
        assert_eq!((attr.size, attr.policy, attr.flags), (48, 6, 0x07));
        assert_eq!(
            (attr.runtime, attr.deadline, attr.period),
            (1000, 2000, 3000)
        );
        let batch: Scheduler =
            serde_json::from_value(serde_json::json!({"policy": "SCHED_BATCH", "nice": 5}))
                .unwrap();
        assert_eq!(sched_attr(&batch).unwrap().nice, 5);
        for (policy, flag) in [
            ("SCHED_ISO", None),
            ("SCHED_OTHER", Some("SCHED_FLAG_UTIL_CLAMP_MIN")),
        ] {
            let scheduler: Scheduler = serde_json::from_value(
                serde_json::json!({"policy": policy, "flags": flag.into_iter().collect::<Vec<_>>()}),
            )
            .unwrap();
            assert!(sched_attr(&scheduler).is_err(), "{policy} {flag:?}");
        }
    }

    #[test]
    fn memory_policy_is_mode_flags_and_mask() {
        let policy: LinuxMemoryPolicy = serde_json::from_value(serde_json::json!({
            "mode": "MPOL_BIND", "nodes": "0,65", "flags": ["MPOL_F_STATIC_NODES"]
        }))
        .unwrap();
        assert_eq!(
            mem_policy(&policy).unwrap(),
            MemPolicy {
                mode: 2 | 1 << 15,
                nodes: vec![1, 2]
            }
        );
        let local: LinuxMemoryPolicy =
            serde_json::from_value(serde_json::json!({"mode": "MPOL_LOCAL"})).unwrap();
        assert_eq!(
            mem_policy(&local).unwrap().nodes,
            Vec::<libc::c_ulong>::new()
        );
    }

    #[test]
    fn personality_domains() {
        let linux32: LinuxPersonality =
            serde_json::from_value(serde_json::json!({"domain": "LINUX32"})).unwrap();
        assert_eq!(persona(&linux32).bits(), 8);
        assert_eq!(persona(&LinuxPersonality::default()).bits(), 0);
    }
}
