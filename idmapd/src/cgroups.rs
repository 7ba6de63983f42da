//! Delegated cgroups for other users' containers (`AddControlGroup`), as systemd-nsresourced's
//! AddControlGroupToUserNamespace: a non-root runtime cannot create cgroups, so idmapd makes
//! one per range below the user's own cgroup (which carries the admin's per-user limits),
//! moves the container's first process in, and hands the subtree to the range's root. The
//! cgroup goes when the range is freed.

use std::os::fd::{AsFd, BorrowedFd};

use burrow_contract::idmap::CGROUP_ROOT;
use burrow_contract::BurrowError;
use burrow_sys::cgroup::{self, DevicePolicy, Limits};
use burrow_sys::nsfs::ns_id;
use burrow_sys::pidfd;
use burrow_sys::quota::Quota;

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
    check_member(record, process)?;
    let user_limits = Limits {
        memory: quota.memory_max,
        pids: quota.pids_max,
        ..Limits::default()
    };
    cgroup::make(&user_path(record.uid), &user_limits).map_err(failed)?;
    let path = path_of(record);
    // A leftover of the range's previous holder (idmapd was killed before it removed it) is
    // removed first: that namespace is gone, and with it its processes.
    let cgroup =
        cgroup::create(&path, &Limits::default(), &DevicePolicy::standard()).map_err(failed)?;
    let moved = crate::pin::move_into(process, &cgroup.procs_files())
        .and_then(|()| cgroup.delegate((record.base, record.base)).map_err(failed));
    if let Err(e) = moved {
        cgroup::remove(&path);
        return Err(e);
    }
    Ok(path)
}

/// Refuses a process outside the namespace that idmapd mapped onto `record`'s range: the
/// kernel's namespace id is that namespace's alone (an inode number is not: it is reused as
/// soon as a namespace goes), and only that namespace maps the range.
fn check_member(record: &Record, process: BorrowedFd<'_>) -> Result<(), BurrowError> {
    let userns = pidfd::user_namespace(process)?;
    let id = ns_id(userns.as_fd())
        .map_err(|e| BurrowError::Failed(format!("reading the process's user namespace: {e}")))?;
    if record.namespace.as_ref().map(|ns| ns.id) != Some(id) {
        return Err(BurrowError::NotAuthorized(format!(
            "the process is not in the user namespace of range {:?}",
            record.name
        )));
    }
    Ok(())
}
