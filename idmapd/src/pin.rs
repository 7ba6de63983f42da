//! Moving a caller's process into a cgroup by its pidfd, never by a pid number that could be
//! another process's by the time it is written (the caller can let its process die at any
//! moment, and pids are reused).
//!
//! A forked worker ptrace-seizes the pid: a traced process's pid is not freed before its tracer
//! lets go, even after it exits. It then checks that the pidfd's process still lives, which
//! proves the seized process is the pidfd's, writes the pid into each `cgroup.procs` and exits,
//! which detaches it. A process someone else traces cannot be seized, and is refused.

use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::path::PathBuf;

use burrow_contract::BurrowError;
use burrow_sys::fork::{fork_worker, last_errno, Parent};
use burrow_sys::pidfd;

/// The step at which the worker stopped, reported with an errno.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Done = 0,
    Seize = 1,
    Alive = 2,
    Write = 3,
}

/// Moves the pidfd's process into every cgroup whose `cgroup.procs` is in `procs_files`.
pub fn move_into(process: BorrowedFd<'_>, procs_files: &[PathBuf]) -> Result<(), BurrowError> {
    let pid = pidfd::pid_of(process)?;
    let files: Vec<File> = procs_files
        .iter()
        .map(|path| {
            std::fs::OpenOptions::new()
                .write(true)
                .open(path)
                .map_err(|e| BurrowError::Failed(format!("opening {}: {e}", path.display())))
        })
        .collect::<Result<_, _>>()?;
    let text = pid.to_string();
    let (report_r, report_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| BurrowError::Failed(format!("pipe: {e}")))?;
    let fds: Vec<i32> = files.iter().map(AsRawFd::as_raw_fd).collect();
    let (pidfd, report) = (process.as_raw_fd(), report_w.as_raw_fd());
    let mut keep = fds.clone();
    keep.extend([pidfd, report]);
    // SAFETY: `pin_and_write` makes only raw system calls (ptrace, pidfd_send_signal, write,
    // _exit) on fds and a buffer prepared before the fork: async-signal-safe, so forking this
    // multi-threaded process is sound.
    let worker = unsafe {
        fork_worker(&keep, Parent::ThisProcess, || {
            pin_and_write(pid, pidfd, &fds, &text, report)
        })
    }
    .map_err(|e| BurrowError::Failed(format!("fork: {e}")))?;
    drop(report_w);
    let mut answer_bytes = [0u8; 8];
    let read = File::from(report_r).read_exact(&mut answer_bytes);
    let _ = nix::sys::wait::waitpid(worker, None);
    read.map_err(|e| BurrowError::Failed(format!("the cgroup worker died: {e}")))?;
    answer(&answer_bytes, pid)
}

fn answer(report: &[u8; 8], pid: i32) -> Result<(), BurrowError> {
    let step = u32::from_ne_bytes(report[..4].try_into().expect("4 bytes"));
    let errno =
        nix::errno::Errno::from_raw(i32::from_ne_bytes(report[4..].try_into().expect("4 bytes")));
    match step {
        s if s == Step::Done as u32 => Ok(()),
        s if s == Step::Seize as u32 && errno == nix::errno::Errno::EPERM => {
            Err(BurrowError::InvalidArgument(format!(
                "process {pid} cannot be held while it is moved (is it being traced?)"
            )))
        }
        s if s == Step::Seize as u32 || s == Step::Alive as u32 => {
            Err(BurrowError::InvalidArgument(
                "the pidfd's process exited while it was being moved".into(),
            ))
        }
        _ => Err(BurrowError::Failed(format!(
            "moving process {pid} into its cgroup: {errno}"
        ))),
    }
}

/// The worker: seize `pid`, check that the pidfd's process lives, write `text` (the pid) into
/// each of `procs`, report the last step and errno on `report`. Raw system calls only.
fn pin_and_write(pid: i32, pidfd: i32, procs: &[i32], text: &str, report: i32) {
    let done = |step: Step, errno: i32| {
        let mut bytes = [0u8; 8];
        bytes[..4].copy_from_slice(&(step as u32).to_ne_bytes());
        bytes[4..].copy_from_slice(&errno.to_ne_bytes());
        // SAFETY: `report` is open and `bytes` is valid for its length.
        unsafe { libc::write(report, bytes.as_ptr().cast(), bytes.len()) };
    };
    // SAFETY: ptrace(2) on a pid number; the seized process is only held, never stopped.
    if unsafe { libc::ptrace(libc::PTRACE_SEIZE, pid, 0, 0) } != 0 {
        return done(Step::Seize, last_errno());
    }
    // SAFETY: signal 0 through a live pidfd only checks that its process exists.
    let signalled = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd,
            0,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if signalled != 0 && last_errno() == libc::ESRCH {
        return done(Step::Alive, libc::ESRCH);
    }
    for fd in procs {
        // SAFETY: `fd` is an open cgroup.procs file and `text` is valid for its length.
        if unsafe { libc::write(*fd, text.as_ptr().cast(), text.len()) } < 0 {
            return done(Step::Write, last_errno());
        }
    }
    done(Step::Done, 0)
}
