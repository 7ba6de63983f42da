//! The host's lxcfs in the container: its /proc files bound over the container's own and its
//! CPU directory over /sys/devices/system/cpu, read-only, then locked with the rest of the tree.
//!
//! The worker does it in its private copy of the host's mount namespace, from which alone the
//! kernel lets it clone lxcfs's files. It opens lxcfs's mount root, which no FUSE request
//! answers (a path walk into a mount root, a statx that does not sync), and checks in its
//! mountinfo that this is the host's lxcfs mounted by root. The lookups below that root are
//! answered by the lxcfs daemon, so a child of the worker makes them beside the plan's mounts,
//! under an alarm: a hung lxcfs kills the worker and fails that one build instead of hanging
//! it.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::time::Duration;

use burrow_sys::lxcfs::{is_hosts_lxcfs, CPU_DIR, LXCFS_DIR, PROC_FILES};
use rustix::fs::{statx, AtFlags, Mode, OFlags, StatxFlags};
use rustix::io::Errno;
use rustix::mount::{open_tree, MountAttrFlags, OpenTreeFlags};

use crate::assemble::attach;
use crate::idmap::set_attributes;
use crate::job::{Fds, JobError, OrFail, Slot};
use crate::target::{resolve, Create};
use crate::wire;
use burrow_sys::fork::{fork_worker, Parent};

/// How long the worker waits for lxcfs to answer its lookups, all of them together.
const ANSWER_WITHIN: Duration = Duration::from_secs(10);

/// Read-only, and nothing in them runs or is a device.
const LOCKED_DOWN: MountAttrFlags = MountAttrFlags::MOUNT_ATTR_RDONLY
    .union(MountAttrFlags::MOUNT_ATTR_NOSUID)
    .union(MountAttrFlags::MOUNT_ATTR_NODEV)
    .union(MountAttrFlags::MOUNT_ATTR_NOEXEC);

/// lxcfs's files, cloned from the worker's copy of the host's mounts and locked down: each
/// with its path (relative to the container's root and to lxcfs's), the filesystem it belongs
/// over, and its mount among `mounts`.
pub struct Sources {
    files: Cloned,
    mounts: Fds,
}

/// What the cloning child finds: see [`Sources`].
type Cloned = Vec<(String, libc::c_long, Slot)>;

/// Clones lxcfs's files while `meanwhile` runs (the plan's mounts): each lookup below lxcfs's
/// root is a FUSE request the lxcfs daemon answers (about 1 ms for all of them, most of it
/// slabinfo's), so a child of the worker makes them and sends the mounts back. A thread would
/// share the worker's filesystem context, which must be its own again when it joins the user
/// namespace, and a joined thread may not have left yet. Both run under the alarm: a hung
/// lxcfs kills the worker and fails that one build instead of hanging it.
pub fn cloned_during<T>(
    meanwhile: impl FnOnce() -> Result<T, JobError>,
) -> Result<(T, Sources), JobError> {
    use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
    let (ours, theirs) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .or_failed("socketpair for the lxcfs cloner")?;
    nix::unistd::alarm::set(ANSWER_WITHIN.as_secs() as u32);
    let cloner = start_cloner(theirs)?;
    let done = meanwhile();
    let received = wire::receive::<Result<Cloned, JobError>>(ours.as_fd());
    let _ = nix::sys::wait::waitpid(cloner, None);
    nix::unistd::alarm::cancel();
    let done = done?;
    let (files, mounts) =
        received.map_err(|e| JobError::Broken(format!("the lxcfs cloner's answer: {e}")))?;
    Ok((
        done,
        Sources {
            files: files?,
            mounts,
        },
    ))
}

/// Forks the child that clones lxcfs's files and sends them on `socket`.
fn start_cloner(socket: OwnedFd) -> Result<nix::unistd::Pid, JobError> {
    let raw = socket.as_raw_fd();
    let send = move || {
        // SAFETY: `raw` is the socket this child keeps, open until it exits.
        let socket = unsafe { BorrowedFd::borrow_raw(raw) };
        let mut mounts = Fds::default();
        let files = clone_all(&mut mounts);
        let _ = wire::send(socket, &files, &mounts);
    };
    // SAFETY: the worker is single-threaded (a fresh exec, forked once): the child may
    // allocate and call anything.
    let cloner = unsafe { fork_worker(&[raw], Parent::ThisProcess, send) };
    drop(socket);
    cloner.or_failed("fork of the lxcfs cloner")
}

/// After the plan's mounts, before the masks (which still cover what they name): each lxcfs
/// file over its twin where the container has one in its proc (or sysfs) mount.
pub fn bind(root: BorrowedFd<'_>, sources: Sources) -> Result<(), JobError> {
    for (path, magic, slot) in &sources.files {
        bind_over(root, path, *magic, sources.mounts.get(*slot)?)?;
    }
    Ok(())
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

/// Every lxcfs file lxcfs has (an older lxcfs lacks some), cloned read-only into `mounts`.
fn clone_all(mounts: &mut Fds) -> Result<Cloned, JobError> {
    let lxcfs = open()?;
    let proc_files = PROC_FILES
        .iter()
        .map(|name| (format!("proc/{name}"), libc::PROC_SUPER_MAGIC));
    let mut files = vec![];
    for (path, magic) in proc_files.chain([(CPU_DIR.to_string(), libc::SYSFS_MAGIC)]) {
        if let Some(source) = clone_locked_down(lxcfs.as_fd(), &path)? {
            files.push((path, magic, mounts.carry(source)));
        }
    }
    Ok(files)
}

/// lxcfs's `path`, cloned and made read-only, or None if lxcfs has no such file.
fn clone_locked_down(lxcfs: BorrowedFd<'_>, path: &str) -> Result<Option<OwnedFd>, JobError> {
    let flags = OpenTreeFlags::OPEN_TREE_CLONE | OpenTreeFlags::OPEN_TREE_CLOEXEC;
    let source = match open_tree(lxcfs, path, flags) {
        Ok(fd) => fd,
        Err(Errno::NOENT) => return Ok(None),
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
    Ok(Some(source))
}

/// Binds `source` (lxcfs's `path`) over the container's `/path` if that is in a filesystem of
/// `magic` (the spec's proc or sysfs mount, not whatever else the image or a bind put there).
fn bind_over(
    root: BorrowedFd<'_>,
    path: &str,
    magic: libc::c_long,
    source: BorrowedFd<'_>,
) -> Result<(), JobError> {
    let shown = format!("/{path}");
    let Some(target) = resolve(root, &shown, Create::Nothing)? else {
        return Ok(());
    };
    let in_place = rustix::fs::fstatfs(target.as_fd()).is_ok_and(|st| st.f_type == magic);
    if !in_place {
        return Ok(());
    }
    attach(source, target.as_fd(), &shown)
}
