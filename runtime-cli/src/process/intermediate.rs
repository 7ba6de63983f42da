//! The intermediate: creates the container's user namespace (or joins the pod's), waits for
//! idmapd to map it (or record one more user of its range) and for its cgroup, becomes root in
//! it, joins the namespaces the spec names, unshares the others and clones the init as a
//! sibling (a child of the CLI, so that a subreaper such as containerd's shim adopts it).

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use burrow_sys::fork::{fork_sibling, ForkError};
use nix::sched::CloneFlags;
use nix::unistd::Pid;

use super::channel::ChildChannel;
use super::config::InitConfig;
use super::message::ToParent;
use super::Cgroup;

/// Namespaces the container joins rather than makes (all of one pod's).
pub struct Join<'a> {
    /// The pod's user namespace: none for a container of its own.
    pub userns: Option<BorrowedFd<'a>>,
    /// Entered after the user namespace: fd and CLONE_NEW* flag.
    pub enter: Vec<(BorrowedFd<'a>, libc::c_int)>,
}

/// Forks the intermediate, a child of the CLI (which reaps it once it has cloned the init). No
/// death signal, as the init it clones must outlive the CLI: if the CLI goes first, its end of
/// the channel closes and the intermediate leaves at its next step.
///
/// # Safety
/// Only while the CLI is single-threaded (the intermediate allocates).
pub unsafe fn spawn(
    config: &InitConfig,
    join: &Join<'_>,
    cgroup: Option<&Cgroup>,
    channel: ChildChannel,
) -> Result<Pid, ForkError> {
    let keep = super::keep(config, &channel)
        .and_all(join.userns)
        .and_all(join.enter.iter().map(|(fd, _)| *fd));
    let body = || intermediate(config, join, cgroup, channel);
    // SAFETY: the caller guarantees the CLI is single-threaded, so the child may allocate; the
    // intermediate drops no fd wrapper but the user namespace's, which it opens itself.
    unsafe { super::fork_into(keep, cgroup, body) }
}

/// This process's timens_offsets, opened for writing while it is still the caller's host uid:
/// its /proc files are host root's (it is non-dumpable), so only a root caller can open it,
/// and only before it becomes the container's root (`spec::REFUSALS` refuses offsets for
/// other callers). The kernel checks CAP_SYS_TIME in the time namespace's user namespace
/// against the opener's credentials, which have every capability of the new user namespace.
fn open_time_offsets(channel: &ChildChannel) -> OwnedFd {
    use rustix::fs::{Mode, OFlags};
    rustix::fs::open(
        "/proc/self/timens_offsets",
        OFlags::WRONLY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .unwrap_or_else(|e| channel.fail("linux.timeOffsets: opening /proc/self/timens_offsets", e))
}

/// The intermediate process. Never returns.
fn intermediate(
    config: &InitConfig,
    join: &Join<'_>,
    cgroup: Option<&Cgroup>,
    channel: ChildChannel,
) -> ! {
    if let Some(Err((tasks, e))) = cgroup.map(Cgroup::enter_v1) {
        channel.fail(&format!("entering the cgroup through {tasks:?}"), e);
    }
    let entered = match join.userns {
        Some(pod) => nix::sched::setns(pod, CloneFlags::CLONE_NEWUSER),
        None => nix::sched::unshare(CloneFlags::CLONE_NEWUSER),
    };
    if let Err(e) = entered {
        channel.fail("entering the container's user namespace", e);
    }
    match std::fs::File::open("/proc/self/ns/user") {
        Ok(userns) => {
            let _ = channel.tell(&ToParent::UserNamespace(userns.into()));
        }
        Err(e) => channel.fail("opening the new user namespace", e),
    }
    let offsets_file = config
        .time_offsets
        .as_ref()
        .map(|_| open_time_offsets(&channel));
    if let Err(e) = channel.wait_for_go() {
        channel.fail_with(e);
    }
    // Also shed the caller's supplementary groups: host groups (unmapped inside, but still
    // checked on host files) must not follow a user into the container.
    if let Err(e) = nix::unistd::setresgid(0.into(), 0.into(), 0.into())
        .and(nix::unistd::setresuid(0.into(), 0.into(), 0.into()))
        .and(nix::unistd::setgroups(&[]))
    {
        channel.fail("becoming root in the user namespace", e);
    }
    for (ns, flag) in &join.enter {
        if let Err(e) = nix::sched::setns(ns.as_fd(), CloneFlags::from_bits_retain(*flag)) {
            channel.fail("joining the pod's namespaces", e);
        }
    }
    // Retained as they are: nix may not name CLONE_NEWTIME.
    let flags = CloneFlags::from_bits_retain(config.unshare_flags);
    if let Err(e) = nix::sched::unshare(flags) {
        channel.fail("unsharing the container's namespaces", e);
    }
    // The offsets of a new time namespace can be written only until a process enters it: the
    // init, cloned next, is the first. One write: the kernel takes every clock's line at once.
    if let (Some(file), Some(offsets)) = (offsets_file, &config.time_offsets) {
        if let Err(e) = rustix::io::write(&file, offsets.as_bytes()) {
            channel.fail("linux.timeOffsets: writing /proc/self/timens_offsets", e);
        }
    }
    let for_init = channel
        .try_clone()
        .unwrap_or_else(|e| channel.fail("duplicating the channel for the init", e));
    let keep = super::keep(config, &for_init);
    // SAFETY: this process is single-threaded (forked from the single-threaded CLI); the init
    // owns `for_init` and `config` (kept) and drops no other fd wrapper.
    let init = unsafe { fork_sibling(keep, || super::init::init(config, for_init)) };
    match init {
        Ok(pid) => {
            let _ = channel.tell(&ToParent::InitPid(pid));
            burrow_sys::fork::exit(0)
        }
        Err(e) => channel.fail("clone of the init", e),
    }
}
