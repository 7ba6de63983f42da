//! `exec`'s joiner: joins the container's namespaces (user first) and becomes root there, then
//! clones the new process into the container's pid namespace as a sibling (a child of the
//! CLI). It runs no binary the container can reach and is non-dumpable.

use std::os::fd::{AsFd, OwnedFd};

use burrow_sys::fork::{fork_sibling, ForkError};
use nix::unistd::Pid;

use super::channel::ChildChannel;
use super::config::InitConfig;
use super::message::ToParent;
use super::Cgroup;

/// Forks the joiner, a child of the CLI (which reaps it), keeping the namespaces to join. It
/// starts in `cgroup` (as the intermediate does), so that the process it clones starts there
/// (with the process's `initial` CPU affinity before its v1 moves and its `final` one after).
/// No death signal: the process it clones outlives the CLI with `--detach`.
///
/// # Safety
/// Only while the CLI is single-threaded (the joiner allocates).
pub unsafe fn spawn(
    namespaces: &[(OwnedFd, &str)],
    cgroup: Option<&Cgroup>,
    config: &InitConfig,
    channel: ChildChannel,
) -> Result<Pid, ForkError> {
    let keep = super::keep(config, &channel).and_all(namespaces.iter().map(|(fd, _)| fd.as_fd()));
    let body = || {
        set_affinity(config.affinity_initial.as_ref(), "initial", &channel);
        // Best effort, as before the move by pid: the namespaces contain the process anyway.
        let _ = cgroup.map(Cgroup::enter_v1);
        set_affinity(config.affinity_final.as_ref(), "final", &channel);
        joiner(namespaces, config, channel)
    };
    // SAFETY: the caller guarantees the CLI is single-threaded, so the child may allocate; the
    // joiner drops no fd wrapper but those it opens itself (the cgroup's files).
    unsafe { super::fork_into(keep, cgroup, body) }
}

/// process.execCPUAffinity's `which` CPUs for the joiner, and so for the process it clones.
fn set_affinity(cpus: Option<&nix::sched::CpuSet>, which: &str, channel: &ChildChannel) {
    if let Some(cpus) = cpus {
        if let Err(e) = nix::sched::sched_setaffinity(Pid::from_raw(0), cpus) {
            let what = format!("process.execCPUAffinity.{which}: sched_setaffinity");
            channel.fail(&what, e);
        }
    }
}

/// Joins the namespaces in `namespaces` (user first), becomes root, and clones `config`'s
/// process as a sibling. Never returns.
fn joiner(namespaces: &[(OwnedFd, &str)], config: &InitConfig, channel: ChildChannel) -> ! {
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
    let for_process = channel
        .try_clone()
        .unwrap_or_else(|e| channel.fail("duplicating the channel for the process", e));
    // The process keeps no namespace fd: it is in them.
    let keep = super::keep(config, &for_process);
    // SAFETY: this process is single-threaded (forked from the single-threaded CLI); the
    // process owns `for_process` (kept) and drops no other fd wrapper.
    let process = unsafe {
        fork_sibling(keep, || {
            super::init::setup_and_exec(config, for_process, None)
        })
    };
    match process {
        Ok(pid) => {
            let _ = channel.tell(&ToParent::ProcessPid(pid));
            burrow_sys::fork::exit(0)
        }
        Err(e) => channel.fail("clone", e),
    }
}
