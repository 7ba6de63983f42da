//! Delegated cgroups for other users' containers (`AddControlGroup`), as systemd-nsresourced's
//! AddControlGroupToUserNamespace: a non-root runtime cannot create cgroups, so idmapd makes
//! one per holder of a range below the user's own cgroup (which carries the admin's per-user
//! limits), moves the container's first process in, and hands the subtree to the range's root.
//! A holder's cgroup goes when that holder releases the range, and all of the range's when the
//! range is freed.

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

/// The name of the cgroup of the range's first holder; every other holder's starts with it
/// and `-`.
fn range_cgroup(record: &Record) -> String {
    format!("range-{}", record.base)
}

/// The cgroup (below every hierarchy's root) of the container that holds `record`'s range as
/// `holder`: `range-BASE` for the name the range was allocated under (as before ranges had
/// several holders), `range-BASE-NAME` for each other one. Names are safe path components
/// (`validate_name`: no `/`, not `.` or `..`), and no name starts with `-` nor a base with
/// one, so no two holders or ranges share a path.
fn path_of(record: &Record, holder: &str) -> String {
    let range = range_cgroup(record);
    if holder == record.name {
        format!("{}/{range}", user_path(record.uid))
    } else {
        format!("{}/{range}-{holder}", user_path(record.uid))
    }
}

/// Removes the cgroup of a holder that released the range; its container is deleted.
pub fn remove_holder(record: &Record, holder: &str) {
    cgroup::remove(&path_of(record, holder));
}

/// Removes every cgroup of a range once the range is free (its namespace is gone, so its
/// processes are too): those of its holders now, and any a crash left of earlier holders.
pub fn remove_range(record: &Record) {
    let user = user_path(record.uid);
    let range = range_cgroup(record);
    let holder_prefix = format!("{range}-");
    for child in cgroup::children(&user) {
        if child == range || child.starts_with(&holder_prefix) {
            cgroup::remove(&format!("{user}/{child}"));
        }
    }
}

fn failed(e: cgroup::CgroupError) -> BurrowError {
    BurrowError::Failed(e.to_string())
}

/// Puts the pidfd's process, which must be inside `record`'s user namespace, into the
/// delegated cgroup of the range's `holder`, under `quota`'s per-user limits. Returns the
/// cgroup path.
pub fn grant(
    record: &Record,
    holder: &str,
    process: BorrowedFd<'_>,
    quota: &Quota,
) -> Result<String, BurrowError> {
    check_member(record, holder, process)?;
    let user_limits = Limits {
        memory: quota.memory_max,
        pids: quota.pids_max,
        ..Limits::default()
    };
    cgroup::make(&user_path(record.uid), &user_limits).map_err(failed)?;
    let path = path_of(record, holder);
    // A leftover at this path (of the range's previous owner, or of a holder of the same name
    // whose release idmapd did not finish) is removed first if no process is left in it: its
    // container is gone. One still holding processes is refused.
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
fn check_member(record: &Record, holder: &str, process: BorrowedFd<'_>) -> Result<(), BurrowError> {
    let userns = pidfd::user_namespace(process)?;
    let id = ns_id(userns.as_fd())
        .map_err(|e| BurrowError::Failed(format!("reading the process's user namespace: {e}")))?;
    if record.namespace.as_ref().map(|ns| ns.id) != Some(id) {
        return Err(BurrowError::NotAuthorized(format!(
            "the process is not in the user namespace of range {holder:?}"
        )));
    }
    Ok(())
}
