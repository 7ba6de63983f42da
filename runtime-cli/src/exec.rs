//! `burrow exec`: a new process in a running container. A forked child joins the container's
//! user namespace (and becomes root there), its mount, uts, ipc, network and cgroup namespaces,
//! then clones the process into the pid namespace as a child of the CLI; the process sets up
//! its terminal and user like the init and execs. Nothing here runs a binary the container can
//! reach before the final exec, and the joining processes are non-dumpable.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::Path;

use crate::error::{CliError, Result};
use crate::init::{self, InitConfig};
use crate::state::{Status, Store};

pub struct ExecOptions<'a> {
    pub id: &'a str,
    pub process: oci_spec::runtime::Process,
    pub detach: bool,
    pub pid_file: Option<&'a Path>,
    pub console_socket: Option<&'a Path>,
    pub preserve_fds: i32,
}

/// Joins the namespaces in `namespaces` (user first), becomes root, and clones `config`'s
/// process as a sibling. Never returns.
fn joiner(namespaces: &[(OwnedFd, &str)], config: &InitConfig, sock: RawFd) -> ! {
    // SAFETY: prctl on the calling process.
    unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0) };
    for (fd, what) in namespaces {
        if let Err(e) = nix::sched::setns(fd, nix::sched::CloneFlags::empty()) {
            let _ = init::send(
                sock,
                format!("error: joining the container's {what} namespace: {e}").as_bytes(),
                None,
            );
            // SAFETY: leaving a forked child.
            unsafe { libc::_exit(1) };
        }
        if *what == "user" {
            let _ = nix::unistd::setresgid(0.into(), 0.into(), 0.into());
            let _ = nix::unistd::setresuid(0.into(), 0.into(), 0.into());
            let _ = nix::unistd::setgroups(&[]);
        }
    }
    // The process it clones inherits this keyring, never the caller's (see the init's).
    if let Err(e) = init::join_fresh_session_keyring() {
        let _ = init::send(
            sock,
            format!("error: joining a fresh session keyring: {e}").as_bytes(),
            None,
        );
        // SAFETY: leaving a forked child.
        unsafe { libc::_exit(1) };
    }
    // SAFETY: a single-threaded process clones itself; CLONE_PARENT makes the child the CLI's.
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
        0 => init::setup_and_exec(config, sock, &[]),
        pid if pid > 0 => {
            let _ = init::send(sock, format!("pid {pid}").as_bytes(), None);
            // SAFETY: leaving a forked child.
            unsafe { libc::_exit(0) }
        }
        _ => {
            let _ = init::send(
                sock,
                format!("error: clone: {}", std::io::Error::last_os_error()).as_bytes(),
                None,
            );
            // SAFETY: leaving a forked child.
            unsafe { libc::_exit(1) }
        }
    }
}

/// Starts the process; returns its exit code (0 at once with --detach).
pub fn exec(store: &Store, options: &ExecOptions<'_>) -> Result<i32> {
    let record = store.load(options.id)?;
    let status = record.status(store);
    if status != Status::Running && status != Status::Created {
        return Err(CliError::WrongState {
            id: options.id.into(),
            status: status.as_str().into(),
            need: "exec needs a running container".into(),
        });
    }
    let config = crate::container::process_config(
        &options.process,
        &record.rootfs,
        None,
        options.preserve_fds,
    )?;
    let mut namespaces = vec![];
    for what in ["user", "mnt", "uts", "ipc", "net", "cgroup", "pid"] {
        let file = std::fs::File::open(format!("/proc/{}/ns/{what}", record.pid)).map_err(
            CliError::io(format!("opening the container's {what} namespace")),
        )?;
        namespaces.push((OwnedFd::from(file), what));
    }
    if !record.init_alive() {
        return Err(CliError::WrongState {
            id: options.id.into(),
            status: "stopped".into(),
            need: "exec needs a running container".into(),
        });
    }
    let (ours, theirs) = init::channel()?;
    // SAFETY: this command starts no thread before forking.
    let joiner_pid =
        match unsafe { nix::unistd::fork() }.map_err(|e| CliError::Setup(format!("fork: {e}")))? {
            nix::unistd::ForkResult::Child => {
                drop(ours);
                if let Some(cgroup) = &record.cgroup {
                    burrow_bus::cgroup::join(cgroup, std::process::id() as i32);
                }
                joiner(&namespaces, &config, theirs.as_raw_fd())
            }
            nix::unistd::ForkResult::Parent { child } => child,
        };
    drop(theirs);
    drop(namespaces);
    let sock = ours.as_raw_fd();
    let mut pid = None;
    let result = (|| -> Result<i32> {
        pid = crate::container::until_ready(sock, "exec", options.console_socket, true)?;
        let pid = pid.ok_or_else(|| CliError::Setup("exec: no pid".into()))?;
        if let Some(pid_file) = options.pid_file {
            crate::container::write_pid_file(pid_file, pid)?;
        }
        if options.detach {
            return Ok(0);
        }
        Ok(
            match nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None) {
                Ok(nix::sys::wait::WaitStatus::Exited(_, code)) => code,
                Ok(nix::sys::wait::WaitStatus::Signaled(_, signal, _)) => 128 + signal as i32,
                _ => 255,
            },
        )
    })();
    let _ = nix::sys::wait::waitpid(joiner_pid, None);
    if result.is_err() {
        if let Some(pid) = pid {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
    result
}
