//! Mount targets resolved inside the container's rootfs: every lookup is RESOLVE_IN_ROOT, so
//! an absolute symlink in an image resolves inside the image, and `..` cannot climb out. A
//! symlink can never make the helper mount over a host path.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::fs::{mkdirat, openat2, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

use crate::job::{JobError, OrFail};

/// What to create when the target is missing.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Create {
    Nothing,
    Directory,
    File,
}

fn open_in_root(root: BorrowedFd<'_>, path: &str) -> Result<OwnedFd, Errno> {
    openat2(
        root,
        path,
        OFlags::PATH | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
    )
}

/// An O_PATH fd of `path` (absolute, normalized, inside the container) below `root`, creating
/// missing components as directories (the last one as `create` says). `Ok(None)` if it is
/// missing and `create` is `Nothing`. What the image holds decides most failures (a file where
/// a directory must be, a symlink loop, a read-only rootfs), so they are the caller's.
pub fn resolve(
    root: BorrowedFd<'_>,
    path: &str,
    create: Create,
) -> Result<Option<OwnedFd>, JobError> {
    let relative = path.trim_start_matches('/');
    if relative.is_empty() {
        return rustix::io::dup(root).map(Some).or_failed("dup root");
    }
    match open_in_root(root, relative) {
        Ok(fd) => return Ok(Some(fd)),
        Err(Errno::NOENT) if create == Create::Nothing => return Ok(None),
        Err(Errno::NOENT) => {}
        Err(e) => return Err(e).or_refused(format!("resolving {path}")),
    }
    let parts: Vec<&str> = relative.split('/').collect();
    let mut current = rustix::io::dup(root).or_failed("dup root")?;
    let mut walked = String::new();
    for (i, part) in parts.iter().enumerate() {
        walked = format!("{walked}/{part}");
        let last = i + 1 == parts.len();
        match open_in_root(root, &walked) {
            Ok(fd) => {
                current = fd;
                continue;
            }
            Err(Errno::NOENT) => {}
            Err(e) => return Err(e).or_refused(format!("resolving {walked}")),
        }
        let created = if last && create == Create::File {
            openat2(
                current.as_fd(),
                *part,
                OFlags::CREATE | OFlags::EXCL | OFlags::WRONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
                Mode::from_raw_mode(0o644),
                ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS,
            )
            .map(drop)
        } else {
            mkdirat(current.as_fd(), *part, Mode::from_raw_mode(0o755))
        };
        match created {
            Ok(()) | Err(Errno::EXIST) => {}
            Err(e) => return Err(e).or_refused(format!("creating mount point {walked}")),
        }
        current = open_in_root(root, &walked).or_refused(format!("opening created {walked}"))?;
    }
    Ok(Some(current))
}
