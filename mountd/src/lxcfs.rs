//! The host's lxcfs in the container: its /proc files bound over the container's own and its
//! CPU directory over /sys/devices/system/cpu, read-only, then locked with the rest of the tree.
//!
//! Each lookup below lxcfs's root is a FUSE request the lxcfs daemon answers, and lxcfs lets
//! the kernel keep an entry for half a second only: after a pause, `proc/slabinfo`'s lookup
//! alone took 4-5 ms here (lxcfs reads the whole file to size it), on the way of every
//! BuildRoot. So the helper looks lxcfs's files up once per lxcfs mount and holds them, each by
//! an `O_PATH` fd inside a private clone of lxcfs's root (a detached mount: the helper never
//! keeps `/var/lib/lxcfs` busy when lxcfs unmounts it). A build clones the held files, which
//! asks lxcfs nothing, locks them down and hands them to the worker, which binds them.
//!
//! The held files belong to the mount at `/var/lib/lxcfs` (its unique mount ID, never reused):
//! another mount there (lxcfs restarted) is looked up afresh, once mountinfo says it is the
//! host's lxcfs mounted by root. Opening lxcfs's root and asking its mount ID are no FUSE
//! requests (a path walk into a mount root, a statx that does not sync). The lookups run on a
//! thread of their own, waited for 10 s: a hung lxcfs fails the builds that ask for it and
//! holds that one thread, never the helper.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use burrow_sys::lxcfs::{is_hosts_lxcfs, CPU_DIR, LXCFS_DIR, PROC_FILES};
use rustix::fs::{statx, AtFlags, Mode, OFlags, StatxFlags};
use rustix::io::Errno;
use rustix::mount::{open_tree, MountAttrFlags, OpenTreeFlags};
use serde::{Deserialize, Serialize};

use crate::assemble::attach;
use crate::idmap::set_attributes;
use crate::job::{Fds, JobError, OrFail, Slot};
use crate::target::{resolve, Create};

/// How long a build waits for lxcfs to answer the lookups.
const ANSWER_WITHIN: Duration = Duration::from_secs(10);

/// Read-only, and nothing in them runs or is a device.
const LOCKED_DOWN: MountAttrFlags = MountAttrFlags::MOUNT_ATTR_RDONLY
    .union(MountAttrFlags::MOUNT_ATTR_NOSUID)
    .union(MountAttrFlags::MOUNT_ATTR_NODEV)
    .union(MountAttrFlags::MOUNT_ATTR_NOEXEC);

/// A clone of the mount at an fd (no path: no lookup lxcfs would answer).
const CLONE_OF_FD: OpenTreeFlags = OpenTreeFlags::OPEN_TREE_CLONE
    .union(OpenTreeFlags::OPEN_TREE_CLOEXEC)
    .union(OpenTreeFlags::AT_EMPTY_PATH);

/// One lxcfs file for the worker: its path (relative to the container's root and to lxcfs's),
/// the filesystem it belongs over, and its locked-down clone among the job's fds.
#[derive(Debug, Serialize, Deserialize)]
pub struct Source {
    path: String,
    magic: libc::c_long,
    mount: Slot,
}

/// lxcfs's files, looked up in one lxcfs mount.
struct Held {
    /// The unique ID of the mount at /var/lib/lxcfs they were looked up in.
    mount: u64,
    /// The private clone of lxcfs's root the files are in. Held open: closing it dissolves the
    /// detached tree, and the kernel clones nothing from an unmounted mount.
    _root: OwnedFd,
    files: Vec<(String, libc::c_long, OwnedFd)>,
}

/// The held files, and the mount a thread is looking them up in, if one is.
struct Lookups {
    held: Option<Arc<Held>>,
    running: Option<u64>,
}

static LOOKUPS: Mutex<Lookups> = Mutex::new(Lookups {
    held: None,
    running: None,
});
static LOOKED_UP: Condvar = Condvar::new();

/// lxcfs's files for one build (each lxcfs has, an older one lacks some): clones of the held
/// files, locked down, carried in `fds`.
pub fn sources(fds: &mut Fds) -> Result<Vec<Source>, JobError> {
    let (root, mount) = current_mount()?;
    let held = held_in(root, mount)?;
    held.files
        .iter()
        .map(|(path, magic, file)| {
            Ok(Source {
                path: path.clone(),
                magic: *magic,
                mount: fds.carry(clone_locked_down(file.as_fd(), path)?),
            })
        })
        .collect()
}

/// lxcfs's mount root at [`LXCFS_DIR`] and its unique mount ID (Linux 6.8; before, the ID
/// mountinfo lists, which a later mount may get again).
fn current_mount() -> Result<(OwnedFd, u64), JobError> {
    let root = rustix::fs::open(
        LXCFS_DIR,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .or_failed(format!("opening {LXCFS_DIR}"))?;
    let unique = StatxFlags::from_bits_retain(libc::STATX_MNT_ID_UNIQUE);
    let mount = match mount_id(root.as_fd(), unique)? {
        Some(id) => id,
        None => mount_id(root.as_fd(), StatxFlags::MNT_ID)?.unwrap_or_default(),
    };
    Ok((root, mount))
}

/// The mount ID `which` of `fd`'s mount, if the kernel knows that kind of ID.
fn mount_id(fd: BorrowedFd<'_>, which: StatxFlags) -> Result<Option<u64>, JobError> {
    let flags = AtFlags::EMPTY_PATH | AtFlags::STATX_DONT_SYNC;
    let st = statx(fd, "", flags, which).or_failed(format!("statx {LXCFS_DIR}"))?;
    Ok((st.stx_mask & which.bits() != 0).then_some(st.stx_mnt_id))
}

/// The files held for `mount` (`root` is its root), looked up now if they are not: by this
/// call on a thread of its own, or by another call already, within [`ANSWER_WITHIN`].
fn held_in(root: OwnedFd, mount: u64) -> Result<Arc<Held>, JobError> {
    let deadline = Instant::now() + ANSWER_WITHIN;
    let mut lookups = LOOKUPS.lock().unwrap_or_else(PoisonError::into_inner);
    loop {
        if let Some(held) = lookups.held.as_ref().filter(|h| h.mount == mount) {
            return Ok(held.clone());
        }
        if lookups.running != Some(mount) {
            break;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let (guard, waited) = LOOKED_UP
            .wait_timeout(lookups, left)
            .unwrap_or_else(PoisonError::into_inner);
        lookups = guard;
        if waited.timed_out() {
            return Err(no_answer());
        }
    }
    lookups.running = Some(mount);
    drop(lookups);
    look_up_on_a_thread(root, mount, deadline)
}

/// Looks lxcfs's files up on a thread, which keeps them for the next builds; their answer, if
/// it comes before `deadline`.
fn look_up_on_a_thread(
    root: OwnedFd,
    mount: u64,
    deadline: Instant,
) -> Result<Arc<Held>, JobError> {
    let (answer, answered) = std::sync::mpsc::channel();
    let thread = std::thread::Builder::new()
        .name("lxcfs-lookups".into())
        .spawn(move || {
            let found = look_up(root, mount).map(Arc::new);
            let mut lookups = LOOKUPS.lock().unwrap_or_else(PoisonError::into_inner);
            // Unless a lookup in another mount (lxcfs restarted) began meanwhile.
            if lookups.running == Some(mount) {
                lookups.running = None;
                if let Ok(held) = &found {
                    lookups.held = Some(held.clone());
                }
            }
            LOOKED_UP.notify_all();
            let _ = answer.send(found);
        });
    if let Err(e) = thread {
        LOOKUPS
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .running = None;
        return Err(JobError::Broken(format!(
            "a thread for lxcfs's lookups: {e}"
        )));
    }
    let left = deadline.saturating_duration_since(Instant::now());
    answered.recv_timeout(left).map_err(|_| no_answer())?
}

/// Why a build got no lxcfs files in time.
fn no_answer() -> JobError {
    JobError::Unavailable(format!(
        "lxcfs at {LXCFS_DIR} did not answer within {} s",
        ANSWER_WITHIN.as_secs()
    ))
}

/// lxcfs's files in the mount `root` (unique ID `mount`), once mountinfo says that mount is
/// lxcfs mounted by root for every user.
fn look_up(root: OwnedFd, mount: u64) -> Result<Held, JobError> {
    let listed = mount_id(root.as_fd(), StatxFlags::MNT_ID)?.unwrap_or_default();
    let mounts = burrow_sys::mountinfo::own()
        .map_err(|e| JobError::Broken(format!("reading the helper's mountinfo: {e}")))?;
    if !mounts.iter().any(|m| m.id == listed && is_hosts_lxcfs(m)) {
        return Err(JobError::Unavailable(format!(
            "the plan asks for lxcfs, but {LXCFS_DIR} is not lxcfs mounted by root with \
             allow_other (is lxcfs running?)"
        )));
    }
    let private = open_tree(&root, "", CLONE_OF_FD).or_failed(format!("cloning {LXCFS_DIR}"))?;
    let proc_files = PROC_FILES
        .iter()
        .map(|name| (format!("proc/{name}"), libc::PROC_SUPER_MAGIC));
    let mut files = vec![];
    for (path, magic) in proc_files.chain([(CPU_DIR.to_string(), libc::SYSFS_MAGIC)]) {
        let opened = rustix::fs::openat(
            &private,
            &path,
            OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        );
        match opened {
            Ok(file) => files.push((path, magic, file)),
            Err(Errno::NOENT) => {}
            Err(e) => return Err(e).or_failed(format!("lxcfs's {path}")),
        }
    }
    Ok(Held {
        mount,
        _root: private,
        files,
    })
}

/// A clone of the held lxcfs file `file` (lxcfs's `path`), made read-only.
fn clone_locked_down(file: BorrowedFd<'_>, path: &str) -> Result<OwnedFd, JobError> {
    let source = open_tree(file, "", CLONE_OF_FD).or_failed(format!("cloning lxcfs's {path}"))?;
    set_attributes(
        source.as_fd(),
        LOCKED_DOWN,
        MountAttrFlags::empty(),
        None,
        false,
    )
    .or_failed(format!("making lxcfs's {path} read-only"))?;
    Ok(source)
}

/// In the worker, after the plan's mounts, before the masks (which still cover what they
/// name): each lxcfs file over its twin where the container has one in its proc (or sysfs)
/// mount.
pub fn bind(root: BorrowedFd<'_>, sources: &[Source], fds: &Fds) -> Result<(), JobError> {
    for source in sources {
        bind_over(root, &source.path, source.magic, fds.get(source.mount)?)?;
    }
    Ok(())
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
