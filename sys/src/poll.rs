//! Waiting a bounded time for an fd to have something to read, or for a process to exit.

use std::os::fd::{AsFd, BorrowedFd};
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::io::Errno;

/// Whether `fd` becomes readable within `patience`: a pidfd once its process has exited, a
/// pipe or socket once data or a hangup is there.
pub fn readable_within(fd: BorrowedFd<'_>, patience: Duration) -> rustix::io::Result<bool> {
    let timeout = Timespec::try_from(patience).map_err(|_| rustix::io::Errno::INVAL)?;
    let mut ready = [PollFd::new(&fd, PollFlags::IN)];
    Ok(rustix::event::poll(&mut ready, Some(&timeout))? > 0)
}

/// How much of a process's output [`exited_by`] keeps; the rest is read and dropped.
pub const KEPT_OUTPUT: usize = 64 * 1024;

/// A pipe a process writes to, and what of it has been read so far (at most [`KEPT_OUTPUT`]).
pub struct Output<'a> {
    pub pipe: BorrowedFd<'a>,
    pub kept: Vec<u8>,
}

/// Whether the process of `pidfd` exits before `deadline` (None: as long as it takes), woken by
/// its exit rather than checking at intervals. Meanwhile `output` is read as it comes, so a
/// process that writes more than a pipe holds never blocks on it.
fn exited_by(
    pidfd: BorrowedFd<'_>,
    deadline: Option<Instant>,
    mut output: Option<&mut Output<'_>>,
) -> rustix::io::Result<bool> {
    loop {
        let patience = match deadline {
            None => None,
            Some(d) => match d.checked_duration_since(Instant::now()) {
                Some(left) if !left.is_zero() => Some(left),
                _ => return Ok(false),
            },
        };
        let (exited, readable) = poll_exit_and_output(pidfd, output.as_deref(), patience)?;
        if readable {
            let open = output.as_deref_mut().is_some_and(read_some);
            if !open {
                output = None;
            }
        }
        if exited {
            if let Some(output) = output {
                drain_ready(output);
            }
            return Ok(true);
        }
    }
}

/// [`exited_by`] for `child`, a child of this process not reaped yet (so its pid is still its
/// own).
pub fn child_exited_by(
    child: i32,
    deadline: Option<Instant>,
    output: Option<&mut Output<'_>>,
) -> rustix::io::Result<bool> {
    let pid = rustix::process::Pid::from_raw(child).ok_or(Errno::SRCH)?;
    let pidfd = rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty())?;
    exited_by(pidfd.as_fd(), deadline, output)
}

/// One wait for the process's exit or output (retried after a signal): whether it exited,
/// whether the output can be read without blocking.
fn poll_exit_and_output(
    pidfd: BorrowedFd<'_>,
    output: Option<&Output<'_>>,
    patience: Option<Duration>,
) -> rustix::io::Result<(bool, bool)> {
    let timeout = patience
        .map(|p| Timespec::try_from(p).map_err(|_| Errno::INVAL))
        .transpose()?;
    let mut fds = vec![PollFd::new(&pidfd, PollFlags::IN)];
    if let Some(output) = output {
        fds.push(PollFd::new(&output.pipe, PollFlags::IN));
    }
    match rustix::event::poll(&mut fds, timeout.as_ref()) {
        Err(Errno::INTR) => Ok((false, false)),
        Err(e) => Err(e),
        Ok(_) => Ok((
            !fds[0].revents().is_empty(),
            fds.get(1).is_some_and(|f| !f.revents().is_empty()),
        )),
    }
}

/// Reads what the pipe holds now (it was found readable, so this does not block); false once
/// the pipe is closed or broken.
fn read_some(output: &mut Output<'_>) -> bool {
    let mut buf = [0u8; 16 * 1024];
    match rustix::io::read(output.pipe, &mut buf) {
        Ok(0) => false,
        Ok(n) => {
            let room = KEPT_OUTPUT.saturating_sub(output.kept.len());
            output.kept.extend_from_slice(&buf[..n.min(room)]);
            true
        }
        Err(Errno::INTR | Errno::AGAIN) => true,
        Err(_) => false,
    }
}

/// After the exit: what is already in the pipe (a pipe's worth at most), without waiting for
/// writers the process may have left behind.
fn drain_ready(output: &mut Output<'_>) {
    for _ in 0..16 {
        if readable_within(output.pipe, Duration::ZERO) != Ok(true) || !read_some(output) {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn a_pipe_is_readable_once_written_and_not_before() {
        let (read, write) = nix::unistd::pipe().unwrap();
        let patience = Duration::from_millis(10);
        assert_eq!(readable_within(read.as_fd(), patience), Ok(false));
        nix::unistd::write(&write, b"x").unwrap();
        assert_eq!(readable_within(read.as_fd(), patience), Ok(true));
    }

    fn spawn(script: &str) -> std::process::Child {
        std::process::Command::new("/bin/sh")
            .args(["-c", script])
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    }

    /// A process that writes more than a pipe holds is read while it runs, and waited for to
    /// its exit; the first [`KEPT_OUTPUT`] bytes are kept.
    #[test]
    fn a_process_writing_more_than_a_pipe_holds_still_exits() {
        let mut child = spawn("head -c 300000 /dev/zero >&2; echo end >&2");
        let stderr = child.stderr.take().unwrap();
        let mut output = Output {
            pipe: stderr.as_fd(),
            kept: vec![],
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        assert_eq!(
            child_exited_by(child.id() as i32, Some(deadline), Some(&mut output)),
            Ok(true)
        );
        assert_eq!(output.kept.len(), KEPT_OUTPUT);
        assert!(child.wait().unwrap().success());
    }

    #[test]
    fn a_process_still_running_at_the_deadline_has_not_exited() {
        let mut child = spawn("sleep 30");
        let deadline = Instant::now() + Duration::from_millis(50);
        assert_eq!(
            child_exited_by(child.id() as i32, Some(deadline), None),
            Ok(false)
        );
        child.kill().unwrap();
        child.wait().unwrap();
    }

    #[test]
    fn what_a_process_wrote_before_its_exit_is_kept() {
        let mut child = spawn("echo bad hook >&2; exit 3");
        let stderr = child.stderr.take().unwrap();
        let mut output = Output {
            pipe: stderr.as_fd(),
            kept: vec![],
        };
        assert_eq!(
            child_exited_by(child.id() as i32, None, Some(&mut output)),
            Ok(true)
        );
        assert_eq!(output.kept, b"bad hook\n");
        assert_eq!(child.wait().unwrap().code(), Some(3));
    }
}
