//! The intermediate: creates the container's user namespace, waits for idmapd to map it and
//! for its cgroup, becomes root in it, unshares the other namespaces and clones the init as a
//! sibling (a child of the CLI, so that a subreaper such as containerd's shim adopts it).

use super::channel::ChildChannel;
use super::config::InitConfig;
use super::message::ToParent;

/// The intermediate process. Never returns.
pub fn intermediate(config: &InitConfig, channel: ChildChannel) -> ! {
    super::not_dumpable(&channel);
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
    // SAFETY: this process is single-threaded (forked from the single-threaded CLI), so the
    // child gets a consistent copy of its memory; CLONE_PARENT without CLONE_VM shares nothing
    // but the parent.
    let child = unsafe {
        libc::syscall(
            libc::SYS_clone,
            libc::CLONE_PARENT | libc::SIGCHLD,
            0,
            0,
            0,
            0,
        )
    };
    match child {
        0 => super::init::init(config, channel),
        pid if pid > 0 => {
            let pid = nix::unistd::Pid::from_raw(pid as i32);
            let _ = channel.tell(&ToParent::InitPid(pid));
            super::exit_child(0)
        }
        _ => channel.fail("clone of the init", std::io::Error::last_os_error()),
    }
}
