//! `exec`'s joiner: joins the container's namespaces (user first) and becomes root there, then
//! clones the new process into the container's pid namespace as a sibling (a child of the
//! CLI). It runs no binary the container can reach and is non-dumpable.

use std::os::fd::OwnedFd;

use super::channel::ChildChannel;
use super::config::InitConfig;
use super::message::ToParent;

/// Joins the namespaces in `namespaces` (user first), becomes root, and clones `config`'s
/// process as a sibling. Never returns.
pub fn joiner(namespaces: &[(OwnedFd, &str)], config: &InitConfig, channel: ChildChannel) -> ! {
    super::not_dumpable(&channel);
    for (fd, what) in namespaces {
        if let Err(e) = nix::sched::setns(fd, nix::sched::CloneFlags::empty()) {
            channel.fail(&format!("joining the container's {what} namespace"), e);
        }
        if *what == "user" {
            let _ = nix::unistd::setresgid(0.into(), 0.into(), 0.into());
            let _ = nix::unistd::setresuid(0.into(), 0.into(), 0.into());
            let _ = nix::unistd::setgroups(&[]);
        }
    }
    // The process it clones inherits this keyring, never the caller's (see the init's).
    if let Err(e) = super::init::join_fresh_session_keyring() {
        channel.fail("joining a fresh session keyring", e);
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
        0 => super::init::setup_and_exec(config, channel, None),
        pid if pid > 0 => {
            let pid = nix::unistd::Pid::from_raw(pid as i32);
            let _ = channel.tell(&ToParent::ProcessPid(pid));
            super::exit_child(0)
        }
        _ => channel.fail("clone", std::io::Error::last_os_error()),
    }
}
