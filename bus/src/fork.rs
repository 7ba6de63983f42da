//! Forking a worker: the one way Burrow's processes start a child that does not exec at once
//! (systemd's `safe_fork_full` is the model).
//!
//! The child dies with its parent (`PR_SET_PDEATHSIG`, and leaves at once if the parent went
//! before that was set), is non-dumpable (so once it enters a container's namespaces, the
//! container's root can neither ptrace it nor open its /proc files), and holds only the fds it
//! is given. The prologue makes raw system calls only: in a multi-threaded parent, the child
//! may do nothing else (no allocation, no lock), and neither may the body it then runs.

use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, RawFd};

use nix::unistd::Pid;

use crate::BurrowError;

/// How the child tells that its parent already went before it set its death signal.
#[derive(Debug, Clone, Copy)]
pub enum Parent {
    /// The parent is this process, in the child's pid namespace.
    ThisProcess,
    /// The parent is outside the child's pid namespace (the child was forked into a pid
    /// namespace the parent joined): the child sees it as pid 0 while it lives.
    OutsidePidNamespace,
}

/// Forks a worker that keeps only `keep` of this process's fds and runs `body`; the child then
/// leaves with `_exit(0)` (never running the parent's destructors), unless `body` left first.
/// Returns the child's pid to the parent.
///
/// # Safety
/// If this process has other threads, `body` must make only async-signal-safe calls (raw
/// system calls on memory prepared before the fork): another thread may have held a lock of
/// the allocator or of any library at the moment of the fork.
pub unsafe fn fork_worker(keep: &[RawFd], parent: Parent, body: impl FnOnce()) -> nix::Result<Pid> {
    let mut keep = keep.to_vec();
    keep.sort_unstable();
    let expected = match parent {
        Parent::ThisProcess => nix::unistd::getpid().as_raw(),
        Parent::OutsidePidNamespace => 0,
    };
    // SAFETY: the caller guarantees `body` is fit for a child of this process; the prologue
    // below makes raw system calls on the integers and the vector prepared above.
    match unsafe { nix::unistd::fork() }? {
        nix::unistd::ForkResult::Parent { child } => Ok(child),
        nix::unistd::ForkResult::Child => {
            // SAFETY: raw system calls with integer arguments, in the new child.
            unsafe {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                if libc::getppid() != expected {
                    libc::_exit(1);
                }
                libc::prctl(libc::PR_SET_DUMPABLE, 0);
                close_all_except(&keep);
            }
            body();
            // SAFETY: leaves the child without running anything of the parent's.
            unsafe { libc::_exit(0) }
        }
    }
}

/// Closes every fd but `keep` (sorted ascending), with close_range(2).
///
/// # Safety
/// Only for a freshly forked child that owns no Rust fd wrapper it still uses.
unsafe fn close_all_except(keep: &[RawFd]) {
    let mut from: u32 = 0;
    for &fd in keep {
        let fd = fd as u32;
        if fd > from {
            // SAFETY: closes fds the child does not use.
            unsafe { libc::syscall(libc::SYS_close_range, from, fd - 1, 0) };
        }
        from = fd + 1;
    }
    // SAFETY: as above.
    unsafe { libc::syscall(libc::SYS_close_range, from, u32::MAX, 0) };
}

/// A child parked after a setup step (joining or creating a namespace), so that the helper
/// can act on `/proc/<pid>/...` through a pid that is its own child's (not reaped before it
/// is done, so never recycled). Killed and reaped when dropped.
pub struct Parked {
    pid: Pid,
}

impl Parked {
    /// Forks a worker keeping `keep`, runs `setup` in it (raw system calls: 0 on success or
    /// an errno) and parks it there. `what` names the step in errors.
    ///
    /// # Safety
    /// As [`fork_worker`]: `setup` may only make async-signal-safe calls.
    pub unsafe fn spawn(
        keep: &[RawFd],
        what: &str,
        setup: impl FnOnce() -> i32,
    ) -> Result<Self, BurrowError> {
        let (ready_r, ready_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
            .map_err(|e| BurrowError::Failed(format!("pipe: {e}")))?;
        let report = ready_w.as_raw_fd();
        let mut kept = keep.to_vec();
        kept.push(report);
        let body = move || {
            let errno = setup();
            let bytes = errno.to_ne_bytes();
            // SAFETY: `report` is open in the child and `bytes` is valid for its length; the
            // child then waits to be killed, or leaves without running any destructor.
            unsafe {
                libc::write(report, bytes.as_ptr().cast(), bytes.len());
                if errno != 0 {
                    libc::_exit(1);
                }
                libc::close(report);
                loop {
                    libc::pause();
                }
            }
        };
        // SAFETY: the caller guarantees `setup` is async-signal-safe; the rest of `body` is.
        let pid = unsafe { fork_worker(&kept, Parent::ThisProcess, body) }
            .map_err(|e| BurrowError::Failed(format!("fork: {e}")))?;
        drop(ready_w);
        let parked = Parked { pid };
        let mut status = [0u8; 4];
        File::from(ready_r)
            .read_exact(&mut status)
            .map_err(|e| BurrowError::Failed(format!("the worker died before {what}: {e}")))?;
        match i32::from_ne_bytes(status) {
            0 => Ok(parked),
            errno => Err(BurrowError::Failed(format!(
                "the worker could not {what}: {}",
                nix::errno::Errno::from_raw(errno)
            ))),
        }
    }

    /// `/proc/<worker>/<file>`.
    pub fn proc_path(&self, file: &str) -> std::path::PathBuf {
        format!("/proc/{}/{file}", self.pid).into()
    }
}

impl Drop for Parked {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(self.pid, nix::sys::signal::Signal::SIGKILL);
        let _ = nix::sys::wait::waitpid(self.pid, None);
    }
}

/// The errno of the last failed system call, for a child's report.
pub fn last_errno() -> i32 {
    // SAFETY: reads this thread's errno.
    unsafe { *libc::__errno_location() }
}
