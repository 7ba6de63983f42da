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
//!  |  state JSON (only if it runs hooks) ----------------------------------> createContainer hooks
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
