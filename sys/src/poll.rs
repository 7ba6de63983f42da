//! Waiting a bounded time for an fd to have something to read, or for a process to exit.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
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

/// How much of a child's output [`child_exited_by`] keeps; the rest is read and dropped.
pub const KEPT_OUTPUT: usize = 64 * 1024;

/// The pipes to a child that [`child_exited_by`] serves while it waits, so the child never
/// blocks on them and neither does the wait.
#[derive(Default)]
pub struct Pipes<'a> {
    /// The write end of the child's stdin and what is left to write to it; closed (None) once
    /// all is written or the child closed its end.
    pub input: Option<(OwnedFd, &'a [u8])>,
    /// The read end of the child's output; None once the child closed its end.
    pub output: Option<BorrowedFd<'a>>,
    /// What the output carried, its first [`KEPT_OUTPUT`] bytes.
    pub kept: Vec<u8>,
}

/// Whether `child`, a child of this process not reaped yet (so its pid is still its own),
/// exits before `deadline` (None: as long as it takes), woken by its exit rather than checking
/// at intervals. Meanwhile `pipes` are served as they become ready.
pub fn child_exited_by(
    child: i32,
    deadline: Option<Instant>,
    pipes: &mut Pipes<'_>,
) -> rustix::io::Result<bool> {
    let pid = rustix::process::Pid::from_raw(child).ok_or(Errno::SRCH)?;
    let pidfd = rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty())?;
    if let Some((input, _)) = &pipes.input {
        // Ours alone (the child reads through its own open file), so a write never waits.
        let flags = rustix::fs::fcntl_getfl(input)?;
        rustix::fs::fcntl_setfl(input, flags | rustix::fs::OFlags::NONBLOCK)?;
    }
    loop {
        let patience = match deadline {
            None => None,
            Some(d) => match d.checked_duration_since(Instant::now()) {
                Some(left) if !left.is_zero() => Some(left),
                _ => return Ok(false),
            },
        };
        let ready = wait_for_any(pidfd.as_fd(), pipes, patience)?;
        if ready.writable {
            write_some(&mut pipes.input);
        }
        if ready.readable && !read_some(pipes) {
            pipes.output = None;
        }
        if ready.exited {
            pipes.input = None;
            drain_ready(pipes);
            return Ok(true);
        }
    }
}

/// What one wait found ready.
struct Ready {
    exited: bool,
    writable: bool,
    readable: bool,
}

/// One wait for the child's exit or a pipe's readiness, up to `patience` (a signal ends it
/// early, with nothing ready).
fn wait_for_any(
    pidfd: BorrowedFd<'_>,
    pipes: &Pipes<'_>,
    patience: Option<Duration>,
) -> rustix::io::Result<Ready> {
    let timeout = patience
        .map(|p| Timespec::try_from(p).map_err(|_| Errno::INVAL))
        .transpose()?;
    let mut fds = vec![PollFd::new(&pidfd, PollFlags::IN)];
    let input = pipes.input.as_ref().map(|(fd, _)| fd.as_fd());
    let input_at = watch(&mut fds, input, PollFlags::OUT);
    let output_at = watch(&mut fds, pipes.output, PollFlags::IN);
    let nothing = Ready {
        exited: false,
        writable: false,
        readable: false,
    };
    match rustix::event::poll(&mut fds, timeout.as_ref()) {
        Err(Errno::INTR) => Ok(nothing),
        Err(e) => Err(e),
        Ok(_) => {
            let ready = |at: Option<usize>| at.is_some_and(|i| !fds[i].revents().is_empty());
            Ok(Ready {
                exited: ready(Some(0)),
                writable: ready(input_at),
                readable: ready(output_at),
            })
        }
    }
}

/// Adds `fd` (if any) to `fds`, for `flags`; where it is.
fn watch<'a>(
    fds: &mut Vec<PollFd<'a>>,
    fd: Option<BorrowedFd<'a>>,
    flags: PollFlags,
) -> Option<usize> {
    fd.map(|fd| {
        fds.push(PollFd::from_borrowed_fd(fd, flags));
        fds.len() - 1
    })
}

/// Writes what the pipe takes now of what is left; closes it once all is written, or once the
/// child closed its end.
fn write_some(input: &mut Option<(OwnedFd, &[u8])>) {
    let Some((pipe, left)) = input else { return };
    match rustix::io::write(&*pipe, left) {
        Ok(n) if n < left.len() => *left = &left[n..],
        Err(Errno::INTR | Errno::AGAIN) => {}
        Ok(_) | Err(_) => *input = None,
    }
}

/// Reads what the output holds now (it was found readable, so this does not block); false
/// once the pipe is closed or broken.
fn read_some(pipes: &mut Pipes<'_>) -> bool {
    let Some(output) = pipes.output else {
        return false;
    };
    let mut buf = [0u8; 16 * 1024];
    match rustix::io::read(output, &mut buf) {
        Ok(0) => false,
        Ok(n) => {
            let room = KEPT_OUTPUT.saturating_sub(pipes.kept.len());
            pipes.kept.extend_from_slice(&buf[..n.min(room)]);
            true
        }
        Err(Errno::INTR | Errno::AGAIN) => true,
        Err(_) => false,
    }
}

/// After the exit: what is already in the output (a pipe's worth at most), without waiting for
/// writers the child may have left behind.
fn drain_ready(pipes: &mut Pipes<'_>) {
    for _ in 0..16 {
        let Some(output) = pipes.output else { return };
        if readable_within(output, Duration::ZERO) != Ok(true) || !read_some(pipes) {
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
            .stdin(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    }

    /// A child that writes more than a pipe holds is read while it runs, and one that reads
    /// more than a pipe holds is written to while it runs: it is waited for to its exit, and
    /// the first [`KEPT_OUTPUT`] bytes of its output are kept.
    #[test]
    fn a_child_moving_more_than_a_pipe_holds_still_exits() {
        let mut child = spawn("wc -c; head -c 300000 /dev/zero >&2; echo end >&2");
        let stderr = child.stderr.take().unwrap();
        let input = vec![b'x'; 300_000];
        let mut pipes = Pipes {
            input: Some((child.stdin.take().unwrap().into(), &input)),
            output: Some(stderr.as_fd()),
            kept: vec![],
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        assert_eq!(
            child_exited_by(child.id() as i32, Some(deadline), &mut pipes),
            Ok(true)
        );
        assert_eq!(pipes.kept.len(), KEPT_OUTPUT);
        assert!(child.wait().unwrap().success());
    }

    /// The child's stdin is closed once written, so a child reading to its end finishes.
    #[test]
    fn a_child_sees_the_end_of_its_input() {
        let mut child = spawn("cat >&2; exit 3");
        let stderr = child.stderr.take().unwrap();
        let mut pipes = Pipes {
            input: Some((child.stdin.take().unwrap().into(), b"the state\n")),
            output: Some(stderr.as_fd()),
            kept: vec![],
        };
        assert_eq!(
            child_exited_by(child.id() as i32, None, &mut pipes),
            Ok(true)
        );
        assert_eq!(pipes.kept, b"the state\n");
        assert_eq!(child.wait().unwrap().code(), Some(3));
    }

    /// A child that never reads its input does not hold the wait past its deadline.
    #[test]
    fn a_child_still_running_at_the_deadline_has_not_exited() {
        let mut child = spawn("sleep 30");
        let input = vec![b'x'; 300_000];
        let mut pipes = Pipes {
            input: Some((child.stdin.take().unwrap().into(), &input)),
            ..Pipes::default()
        };
        let deadline = Instant::now() + Duration::from_millis(50);
        assert_eq!(
            child_exited_by(child.id() as i32, Some(deadline), &mut pipes),
            Ok(false)
        );
        child.kill().unwrap();
        child.wait().unwrap();
    }
}
