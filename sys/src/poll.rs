//! Waiting a bounded time for an fd to have something to read.

use std::os::fd::BorrowedFd;
use std::time::Duration;

use rustix::event::{PollFd, PollFlags, Timespec};

/// Whether `fd` becomes readable within `patience`: a pidfd once its process has exited, a
/// pipe or socket once data or a hangup is there.
pub fn readable_within(fd: BorrowedFd<'_>, patience: Duration) -> rustix::io::Result<bool> {
    let timeout = Timespec::try_from(patience).map_err(|_| rustix::io::Errno::INVAL)?;
    let mut ready = [PollFd::new(&fd, PollFlags::IN)];
    Ok(rustix::event::poll(&mut ready, Some(&timeout))? > 0)
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
}
