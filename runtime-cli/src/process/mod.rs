//! The processes the CLI forks for a container, and the protocol it speaks with them over a
//! SOCK_SEQPACKET socket pair ([`channel`]; messages in [`message`], the transport in
//! [`scm`]).
//!
//! `create`, in order (CLI on the left):
//!
//! ```text
//! CLI                                   intermediate                   init
//!  |  fork ------------------------------> unshare(CLONE_NEWUSER)
//!  |  <------------------ userns + fd ---- (for idmapd)
//!  |  idmapd maps it, cgroup
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
//! allocate.

pub mod channel;
pub mod config;
pub mod init;
pub mod intermediate;
pub mod joiner;
pub mod message;
pub mod scm;
#[cfg(test)]
mod tests;

pub use channel::{pair, ParentChannel, ProtocolError};
pub use config::{ContainerHook, InitConfig};

/// Ends a forked child with `code`.
pub fn exit_child(code: i32) -> ! {
    // SAFETY: _exit(2) ends the process at once, without running the atexit handlers or
    // flushing the stdio buffers the child copied from the CLI, which are the CLI's to run.
    unsafe { libc::_exit(code) }
}

/// Makes this process non-dumpable, so that the container's root cannot open it through
/// /proc while it holds the runtime's fds (the lesson of CVE-2019-5736); exec of the
/// container's process makes it dumpable again. A process that cannot be made so leaves.
pub fn not_dumpable(channel: &channel::ChildChannel) {
    if let Err(e) =
        rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::NotDumpable)
    {
        channel.fail("prctl(PR_SET_DUMPABLE)", e);
    }
}
