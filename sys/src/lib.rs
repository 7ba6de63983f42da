//! What Burrow's processes share on the host, beside the contract (`burrow-contract`): the
//! helpers' service skeleton (caller identification, polkit, capability dropping, idle exit,
//! atomic state files, quotas) and the code that faces the kernel (user-namespace fds, nsfs
//! handles, pidfds, cgroups and the device policy, forking workers, mountinfo, /proc/PID/stat, lxcfs, bounded
//! waits on fds).

pub mod authz;
#[cfg(feature = "cgroup")]
pub mod cgroup;
pub mod fork;
pub mod lxcfs;
pub mod mountinfo;
pub mod nsfs;
pub mod pidfd;
pub mod poll;
pub mod privileges;
pub mod proc_stat;
pub mod quota;
pub mod service;
pub mod state;
pub mod userns;

pub use authz::Caller;
