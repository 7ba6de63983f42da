//! Delegated cgroups for other users' containers (`AddControlGroup`), as systemd-nsresourced's
//! AddControlGroupToUserNamespace: a non-root runtime cannot create cgroups, so idmapd makes
//! one per range below the user's own cgroup (which carries the admin's per-user limits),
//! moves the container's first process in, and hands the subtree to the range's root. The
//! cgroup goes when the range is freed.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd};

use burrow_bus::cgroup::{self, DevicePolicy, Limits};
use burrow_bus::contract::idmap::CGROUP_ROOT;
use burrow_bus::quota::Quota;
use burrow_bus::userns::NsId;
use burrow_bus::{pidfd, BurrowError};

use crate::registry::Record;

fn user_path(uid: u32) -> String {
    format!("{CGROUP_ROOT}/user-{uid}")
}

/// The cgroup (below every hierarchy's root) of a range.
fn path_of(record: &Record) -> String {
    format!("{}/range-{}", user_path(record.uid), record.base)
}

/// Removes a range's delegated cgroup once the range is free: its namespace is gone, so its
/// processes are too.
pub fn remove(record: &Record) {
    cgroup::remove(&path_of(record));
}

fn failed(e: cgroup::CgroupError) -> BurrowError {
    BurrowError::Failed(e.to_string())
}

/// Puts the pidfd's process, which must be inside `record`'s user namespace, into the range's
/// delegated cgroup, under `quota`'s per-user limits. Returns the cgroup path.
pub fn grant(
    record: &Record,
    process: BorrowedFd<'_>,
    quota: &Quota,
) -> Result<String, BurrowError> {
    let userns = pidfd::user_namespace(process)?;
    let id = NsId::of(userns.as_fd())
        .map_err(|e| BurrowError::Failed(format!("reading the process's user namespace: {e}")))?;
    if id != record.userns {
        return Err(BurrowError::NotAuthorized(format!(
            "the process is not in the user namespace of range {:?}",
            record.name
        )));
    }
    let pid = pidfd::pid_of(process)?;
    let user_limits = Limits {
        memory: quota.memory_max,
        pids: quota.pids_max,
        ..Limits::default()
    };
    cgroup::make(&user_path(record.uid), &user_limits).map_err(failed)?;
    let path = path_of(record);
    // A leftover of the range's previous holder (idmapd was killed before it removed it): the
    // range is this caller's now, and nothing can still run in the old one's namespace.
    cgroup::remove(&path);
    cgroup::create(
        &path,
        pid,
        (record.base, record.base),
        &Limits::default(),
        &DevicePolicy::standard(),
    )
    .map_err(failed)?;
    // The pid came from the pidfd: while that process still lives, the pid moved was its.
    // (Signal 0 checks existence; EPERM, as idmapd may not signal it, still means alive.)
    // SAFETY: pidfd_send_signal with signal 0 on a borrowed, live fd.
    let alive = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            process.as_raw_fd(),
            0,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    } == 0
        || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH);
    if !alive {
        cgroup::remove(&path);
        return Err(BurrowError::InvalidArgument(
            "the pidfd's process exited while it was being moved".into(),
        ));
    }
    Ok(path)
}
