//! The processes the CLI forks for a container, and the protocol it speaks with them over a
//! SOCK_SEQPACKET socket pair ([`channel`]; messages in [`message`], the transport in
//! [`scm`]).
//!
//! `create`, in order (CLI on the left):
//!
//! ```text
//! CLI                                   intermediate                   init
//!  |  cgroup made (root's cgroupfs)
//!  |  fork (into its cgroup2) -----------> enters its v1 cgroups, unshare(CLONE_NEWUSER)
//!  |  <------------------ userns + fd ---- (for idmapd)
//!  |  idmapd maps it, cgroup delegated
//!  |  go ---------------------------------> root in it, unshare the rest,
//!  |                                       clone(CLONE_PARENT) ------------> (waits)
//!  |  <----------------------- init N ---- exits
//!  |  devd, mountd
//!  |  mntns + fd ----------------------------------------------------------> setns
//!  |  state + memfd of its JSON (only if it runs hooks) --------------------> createContainer hooks
//!  |  <--------------------------------------------------- console + fd ---- (if a terminal)
//!  |  <---------------------------------------------------------- ready ---- waits for `start`
//! ```
//!
//! `exec`: the joiner joins the container's namespaces and clones the process, then sends
//! `pid N`, racing with the process's own `console` and `ready`. Any child may instead send
//! `error: TEXT` and exit. The children are forked from the single-threaded CLI, so they may
//! allocate. Every one of them starts through [`burrow_sys::fork`]: non-dumpable, holding only
//! the fds of [`keep`], and without a death signal: the init and exec's process outlive the
//! CLI, the intermediate leaves when the CLI's end of the channel closes, and the joiner and
//! the init's hook runners end by themselves.

pub mod channel;
pub mod config;
pub mod init;
pub mod intermediate;
pub mod joiner;
pub mod message;
pub mod scm;
#[cfg(test)]
mod tests;
pub mod tuning;

use std::os::fd::AsFd;

use burrow_sys::fork::Keep;

pub use channel::{pair, ChildChannel, ParentChannel, ProtocolError};
pub use config::{ContainerHook, DeviceNode, ExecLabel, InitConfig, ProcessCaps, Tuning};

/// How many fds a container's process gets from the runtime's caller: stdio and
/// `--preserve-fds` (fds `0..N`). Every process the CLI forks for a container keeps them, to pass
/// them on; the container's process gets no other.
pub fn passed_on(config: &InitConfig) -> u32 {
    3u32.saturating_add(config.preserve_fds)
}

/// What a process the CLI forks for a container keeps of the fds it had (the rest are closed
/// as it starts, see [`burrow_sys::fork`]): those it passes on, its end of the channel and the
/// exec fifo (the init's).
pub fn keep(config: &InitConfig, channel: &ChildChannel) -> Keep {
    Keep::first(passed_on(config))
        .and(channel.as_fd())
        .and_all(config.fifo.as_ref().map(AsFd::as_fd))
}

/// A container's cgroup as a forked child enters it (see [`burrow_sys::cgroup::Entry`]): it
/// starts in the cgroup2 directory and moves itself into the v1 hierarchies, while still the
/// host's root. Neither waits for the cgroup threadgroup lock's RCU grace period, as moving
/// it by pid would.
pub struct Cgroup {
    /// The cgroup2 directory, opened `O_PATH`, for clone3's `CLONE_INTO_CGROUP`.
    pub cgroup2: Option<std::os::fd::OwnedFd>,
    /// Each v1 hierarchy's `tasks` file, for a `0`.
    pub v1_tasks: Vec<std::ffi::CString>,
}

impl Cgroup {
    /// Moves this single-threaded process into each v1 hierarchy; on failure, the `tasks` file
    /// that refused it.
    fn enter_v1(&self) -> Result<(), (&std::ffi::CStr, rustix::io::Errno)> {
        for tasks in &self.v1_tasks {
            write_file(tasks, b"0").map_err(|e| (tasks.as_c_str(), e))?;
        }
        Ok(())
    }
}

/// Forks a child that starts in `cgroup`'s cgroup2 directory if it has one.
///
/// # Safety
/// Only while the CLI is single-threaded; `body` must not drop a wrapper of an fd outside
/// `keep`.
unsafe fn fork_into(
    keep: Keep,
    cgroup: Option<&Cgroup>,
    body: impl FnOnce() -> i32,
) -> Result<nix::unistd::Pid, burrow_sys::fork::ForkError> {
    use burrow_sys::fork::{fork_child, fork_child_in_cgroup, ParentExit};
    debug_assert!(burrow_sys::fork::single_threaded());
    // SAFETY: as the caller guarantees.
    unsafe {
        match cgroup.and_then(|c| c.cgroup2.as_ref()) {
            Some(cgroup2) => fork_child_in_cgroup(keep, ParentExit::Survive, cgroup2.as_fd(), body),
            None => fork_child(keep, ParentExit::Survive, body),
        }
    }
}

/// Writes `value` to the existing file `path` (a /proc or cgroup file), without allocating:
/// for forked children that make only system calls.
pub fn write_file(path: &std::ffi::CStr, value: &[u8]) -> rustix::io::Result<()> {
    use rustix::fs::{Mode, OFlags};
    let file = rustix::fs::open(path, OFlags::WRONLY | OFlags::CLOEXEC, Mode::empty())?;
    let mut rest = value;
    while !rest.is_empty() {
        match rustix::io::write(&file, rest)? {
            0 => return Err(rustix::io::Errno::IO),
            written => rest = &rest[written..],
        }
    }
    Ok(())
}
