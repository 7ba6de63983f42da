//! The intermediate: creates the container's user namespace, waits for idmapd to map it and
//! for its cgroup, becomes root in it, unshares the other namespaces and clones the init as a
//! sibling (a child of the CLI, so that a subreaper such as containerd's shim adopts it).

use burrow_sys::fork::{fork_child, fork_sibling, ForkError, ParentExit};
use nix::unistd::Pid;

use super::channel::ChildChannel;
use super::config::InitConfig;
use super::message::ToParent;

/// Forks the intermediate, a child of the CLI (which reaps it once it has cloned the init). No
/// death signal, as the init it clones must outlive the CLI: if the CLI goes first, its end of
/// the channel closes and the intermediate leaves at its next step.
///
/// # Safety
/// Only while the CLI is single-threaded (the intermediate allocates).
pub unsafe fn spawn(config: &InitConfig, channel: ChildChannel) -> Result<Pid, ForkError> {
    let keep = super::keep(config, &channel);
    // SAFETY: the caller guarantees the CLI is single-threaded, so the child may allocate; the
    // intermediate drops no fd wrapper but the user namespace's, which it opens itself.
    unsafe { fork_child(keep, ParentExit::Survive, || intermediate(config, channel)) }
}

/// The intermediate process. Never returns.
fn intermediate(config: &InitConfig, channel: ChildChannel) -> ! {
    if let Err(e) = nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWUSER) {
        channel.fail("unshare(CLONE_NEWUSER)", e);
    }
    match std::fs::File::open("/proc/self/ns/user") {
        Ok(userns) => {
            let _ = channel.tell(&ToParent::UserNamespace(userns.into()));
        }
        Err(e) => channel.fail("opening the new user namespace", e),
    }
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
    // Retained as they are: nix may not name CLONE_NEWTIME.
    let flags = nix::sched::CloneFlags::from_bits_retain(config.unshare_flags);
    if let Err(e) = nix::sched::unshare(flags) {
        channel.fail("unsharing the container's namespaces", e);
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
