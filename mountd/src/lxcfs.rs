//! The host's lxcfs in the container: its /proc files bound over the container's own and its
//! CPU directory over /sys/devices/system/cpu, read-only, then locked with the rest of the tree.
//!
//! The worker does it in its private copy of the host's mount namespace, from which alone the
//! kernel lets it clone lxcfs's files. It opens lxcfs's mount root, which no FUSE request
//! answers (a path walk into a mount root, a statx that does not sync), and checks in its
//! mountinfo that this is the host's lxcfs mounted by root. The lookups below that root are
//! answered by the lxcfs daemon, so they run under an alarm: a hung lxcfs kills the worker and
//! fails that one build instead of hanging it.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::Duration;

use burrow_sys::lxcfs::{is_hosts_lxcfs, CPU_DIR, LXCFS_DIR, PROC_FILES};
use rustix::fs::{statx, AtFlags, Mode, OFlags, StatxFlags};
use rustix::io::Errno;
use rustix::mount::{open_tree, MountAttrFlags, OpenTreeFlags};

use crate::assemble::attach;
use crate::idmap::set_attributes;
use crate::job::{JobError, OrFail};
use crate::target::{resolve, Create};

/// How long the worker waits for lxcfs to answer its lookups, all of them together.
const ANSWER_WITHIN: Duration = Duration::from_secs(10);

/// Read-only, and nothing in them runs or is a device.
const LOCKED_DOWN: MountAttrFlags = MountAttrFlags::MOUNT_ATTR_RDONLY
    .union(MountAttrFlags::MOUNT_ATTR_NOSUID)
    .union(MountAttrFlags::MOUNT_ATTR_NODEV)
    .union(MountAttrFlags::MOUNT_ATTR_NOEXEC);

/// After the plan's mounts, before the masks (which still cover what they name): each lxcfs
/// file over its twin where the container has one in its proc (or sysfs) mount.
pub fn bind(root: BorrowedFd<'_>) -> Result<(), JobError> {
    let lxcfs = open()?;
    nix::unistd::alarm::set(ANSWER_WITHIN.as_secs() as u32);
    let bound = bind_all(root, lxcfs.as_fd());
    nix::unistd::alarm::cancel();
    bound
}

/// Why a build failed whose worker the alarm ended.
pub fn no_answer() -> JobError {
    JobError::Unavailable(format!(
        "lxcfs at {LXCFS_DIR} did not answer within {} s",
        ANSWER_WITHIN.as_secs()
    ))
}

/// lxcfs's mount root at [`LXCFS_DIR`], once mountinfo says that mount is lxcfs mounted by
/// root for every user.
fn open() -> Result<OwnedFd, JobError> {
    let lxcfs = rustix::fs::open(
        LXCFS_DIR,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .or_failed(format!("opening {LXCFS_DIR}"))?;
    let flags = AtFlags::EMPTY_PATH | AtFlags::STATX_DONT_SYNC;
    let mount_id = statx(&lxcfs, "", flags, StatxFlags::MNT_ID)
        .or_failed(format!("statx {LXCFS_DIR}"))?
        .stx_mnt_id;
    let mounts = burrow_sys::mountinfo::own()
        .map_err(|e| JobError::Broken(format!("reading the worker's mountinfo: {e}")))?;
    if !mounts.iter().any(|m| m.id == mount_id && is_hosts_lxcfs(m)) {
        return Err(JobError::Unavailable(format!(
            "the plan asks for lxcfs, but {LXCFS_DIR} is not lxcfs mounted by root with \
             allow_other (is lxcfs running?)"
        )));
    }
    Ok(lxcfs)
}

fn bind_all(root: BorrowedFd<'_>, lxcfs: BorrowedFd<'_>) -> Result<(), JobError> {
    for name in PROC_FILES {
        let source = format!("proc/{name}");
        bind_over(root, lxcfs, &source, libc::PROC_SUPER_MAGIC)?;
    }
    bind_over(root, lxcfs, CPU_DIR, libc::SYSFS_MAGIC)
}

/// Binds lxcfs's `path` over the container's `/path` if that is in a filesystem of `magic`
/// (the spec's proc or sysfs mount, not whatever else the image or a bind put there) and
/// lxcfs has it (an older lxcfs lacks some).
fn bind_over(
    root: BorrowedFd<'_>,
    lxcfs: BorrowedFd<'_>,
    path: &str,
    magic: libc::c_long,
) -> Result<(), JobError> {
    let shown = format!("/{path}");
    let Some(target) = resolve(root, &shown, Create::Nothing)? else {
        return Ok(());
    };
    let in_place = rustix::fs::fstatfs(target.as_fd()).is_ok_and(|st| st.f_type == magic);
    if !in_place {
        return Ok(());
    }
    let flags = OpenTreeFlags::OPEN_TREE_CLONE | OpenTreeFlags::OPEN_TREE_CLOEXEC;
    let source = match open_tree(lxcfs, path, flags) {
        Ok(fd) => fd,
        Err(Errno::NOENT) => return Ok(()),
        Err(e) => return Err(e).or_failed(format!("lxcfs's {path}")),
    };
    set_attributes(
        source.as_fd(),
        LOCKED_DOWN,
        MountAttrFlags::empty(),
        None,
        false,
    )
    .or_failed(format!("making lxcfs's {path} read-only"))?;
    attach(source.as_fd(), target.as_fd(), &shown)
}
