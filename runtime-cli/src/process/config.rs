//! What the forked processes need, prepared before the fork (from the spec, or `exec`'s
//! process), so that they only make system calls.

use std::ffi::CString;
use std::os::fd::OwnedFd;

/// Everything the init (or exec's process) needs, prepared before the fork.
pub struct InitConfig {
    pub args: Vec<CString>,
    pub env: Vec<CString>,
    /// Candidate paths for args[0] (PATH lookup is done before the fork).
    pub program: Vec<CString>,
    pub cwd: CString,
    pub hostname: Option<CString>,
    /// The spec's domainname, set beside the hostname in the container's UTS namespace.
    pub domainname: Option<CString>,
    /// Each limit with its soft and hard values.
    pub rlimits: Vec<(nix::sys::resource::Resource, u64, u64)>,
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
    pub no_new_privileges: bool,
    /// process.user.umask, set before exec (else the one inherited).
    pub umask: Option<u32>,
    /// The LSM labels the process gets at exec (AppArmor's profile, SELinux's label).
    pub exec_labels: Vec<ExecLabel>,
    /// The extra device nodes devd added, with the mode and owner the spec gives them (set by
    /// the init, the container's root, which owns them; empty for `exec`).
    pub device_nodes: Vec<DeviceNode>,
    /// The spec's capability sets for a process user other than root (root keeps every
    /// capability of its user namespace: Burrow's decision).
    pub capabilities: Option<ProcessCaps>,
    pub terminal: bool,
    /// process.consoleSize as (rows, columns), set on the pty when there is one.
    pub console_size: Option<(u16, u16)>,
    /// What the intermediate writes to its /proc/self/timens_offsets (linux.timeOffsets), after
    /// it unshares the time namespace and before the init enters it.
    pub time_offsets: Option<String>,
    /// How the process is run: set just before exec.
    pub tuning: Tuning,
    /// process.execCPUAffinity (exec's processes only, as the spec says): `initial` before exec's
    /// joiner moves into the container's cgroup, `final` after.
    pub affinity_initial: Option<nix::sched::CpuSet>,
    pub affinity_final: Option<nix::sched::CpuSet>,
    /// O_PATH fd of the exec fifo, reopened for writing through /proc/self/fd: the init waits
    /// on it for `start` (an exec'd process does not wait).
    pub fifo: Option<OwnedFd>,
    /// Extra fds (3..3+N) passed on to the process (`--preserve-fds`).
    pub preserve_fds: u32,
    pub unshare_flags: libc::c_int,
    /// The system-container seccomp filter, applied just before the user switch and exec.
    pub seccomp: seccompiler::BpfProgram,
    /// The sysinfo filter ([`crate::sysinfo`]), installed right after `seccomp`; its listener
    /// goes to the CLI. None: sysinfo is the host's.
    pub sysinfo_filter: Option<Vec<seccompiler::sock_filter>>,
    /// OCI hooks run inside the container by the init: createContainer ones (binaries of the
    /// runtime's mount namespace, opened before the init joins the container's mounts) once
    /// the mounts are in place, startContainer ones (found inside) after `start`, just before
    /// the process.
    pub create_container_hooks: Vec<ContainerHook>,
    pub start_container_hooks: Vec<ContainerHook>,
}

impl InitConfig {
    /// Whether the init runs hooks of its own, and so waits for the container's state.
    pub fn has_container_hooks(&self) -> bool {
        !self.create_container_hooks.is_empty() || !self.start_container_hooks.is_empty()
    }
}

/// The process's I/O priority, scheduler, personality and memory policy, as their system calls
/// take them ([`super::tuning`]); None leaves what the process inherits.
#[derive(Default)]
pub struct Tuning {
    pub io_priority: Option<u32>,
    pub scheduler: Option<super::tuning::SchedAttr>,
    pub personality: Option<nix::sys::personality::Persona>,
    pub memory_policy: Option<super::tuning::MemPolicy>,
}

/// A device node in the container's /dev and what the spec sets of it.
pub struct DeviceNode {
    pub path: std::ffi::CString,
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
}

/// A non-root process's capability sets, as the spec gives them (a set it leaves out is empty;
/// an absent bounding set leaves the bounding set alone).
pub struct ProcessCaps {
    pub bounding: Option<caps::CapsHashSet>,
    pub effective: caps::CapsHashSet,
    pub permitted: caps::CapsHashSet,
    pub inheritable: caps::CapsHashSet,
    pub ambient: caps::CapsHashSet,
}

/// A label for the process's exec: `value` written to the LSM's `attr` file of the thread.
pub struct ExecLabel {
    pub attr: &'static str,
    pub value: Vec<u8>,
}

/// An OCI hook, prepared before the fork.
pub struct ContainerHook {
    pub path: CString,
    pub args: Vec<CString>,
    pub env: Vec<CString>,
    pub timeout: std::time::Duration,
}
