//! User-namespace fds received from callers: what they are, who owns them, and a way to look
//! inside them without trusting any path or PID the caller could choose.

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use crate::fork::{Parked, Unreaped};
use crate::nsfs::{ns_id, NsHandle};
use burrow_contract::BurrowError;
use burrow_contract::RANGE_SIZE;

// From <linux/nsfs.h>.
const NSIO: u8 = 0xb7;
const NS_GET_USERNS: u64 = nix::request_code_none!(NSIO, 0x1);
const NS_GET_PARENT: u64 = nix::request_code_none!(NSIO, 0x2);
const NS_GET_NSTYPE: u64 = nix::request_code_none!(NSIO, 0x3);
nix::ioctl_read_bad!(
    ns_get_owner_uid,
    nix::request_code_none!(NSIO, 0x4),
    libc::uid_t
);

/// An argument-less ioctl that returns an int (a new fd, or a value), with the unused third
/// argument explicitly 0: some kernels reject garbage there (pidfs answers EINVAL).
pub fn ioctl_no_arg(fd: BorrowedFd<'_>, request: u64) -> nix::Result<i32> {
    // SAFETY: the request takes no argument; 0 is passed for it.
    let ret = unsafe { libc::ioctl(fd.as_raw_fd(), request as _, 0) };
    nix::errno::Errno::result(ret)
}

/// An argument-less ioctl that returns a new fd.
pub fn ioctl_new_fd(fd: BorrowedFd<'_>, request: u64) -> nix::Result<OwnedFd> {
    let raw = ioctl_no_arg(fd, request)?;
    // SAFETY: the ioctl returned a fresh fd owned by no one else.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// The namespace type of an nsfs fd (a `CLONE_NEW*` constant), or `None` if it is no namespace.
pub fn ns_type(fd: BorrowedFd<'_>) -> Option<i32> {
    ioctl_no_arg(fd, NS_GET_NSTYPE).ok()
}

/// The user namespace that owns a non-user namespace (NS_GET_USERNS).
pub fn owning_userns(fd: BorrowedFd<'_>) -> nix::Result<OwnedFd> {
    ioctl_new_fd(fd, NS_GET_USERNS)
}

/// The parent of a user namespace, or `None` once outside what this process may see.
pub fn parent_userns(fd: BorrowedFd<'_>) -> Option<OwnedFd> {
    ioctl_new_fd(fd, NS_GET_PARENT).ok()
}

/// A user namespace received from a caller, checked to be one.
#[derive(Debug)]
pub struct UserNs {
    fd: OwnedFd,
    /// The kernel's id of the namespace (never another's while the machine runs).
    pub id: u64,
    pub owner_uid: u32,
}

impl UserNs {
    /// Accepts `fd` only if it is a user namespace whose parent is the helper's own user
    /// namespace (so host IDs can be mapped into it), and, unless `caller_uid` is root, one the
    /// caller created.
    pub fn from_caller_fd(fd: OwnedFd, caller_uid: u32) -> Result<Self, BurrowError> {
        match ns_type(fd.as_fd()) {
            Some(libc::CLONE_NEWUSER) => {}
            Some(other) => {
                return Err(BurrowError::InvalidArgument(format!(
                    "fd is a namespace of type {other:#x}, not a user namespace \
                     (pass an fd of /proc/PID/ns/user)"
                )))
            }
            None => {
                return Err(BurrowError::InvalidArgument(
                    "fd is not a namespace (pass an fd of /proc/PID/ns/user, opened O_RDONLY)"
                        .into(),
                ))
            }
        }
        let id = ns_id(fd.as_fd())
            .map_err(|e| BurrowError::Failed(format!("NS_GET_ID of the user namespace: {e}")))?;
        let mut owner: libc::uid_t = 0;
        // SAFETY: NS_GET_OWNER_UID writes one uid_t into `owner`, which outlives the call.
        unsafe { ns_get_owner_uid(fd.as_raw_fd(), &mut owner) }
            .map_err(|e| BurrowError::Failed(format!("NS_GET_OWNER_UID: {e}")))?;
        let parent = parent_userns(fd.as_fd()).ok_or_else(|| {
            BurrowError::InvalidArgument(
                "the initial user namespace cannot be given a range".into(),
            )
        })?;
        let own = File::open("/proc/self/ns/user")
            .map_err(|e| BurrowError::Failed(format!("open own userns: {e}")))?;
        let parent_id = ns_id(parent.as_fd()).map_err(|e| BurrowError::Failed(e.to_string()))?;
        let own_id = ns_id(own.as_fd()).map_err(|e| BurrowError::Failed(e.to_string()))?;
        if parent_id != own_id {
            return Err(BurrowError::InvalidArgument(
                "user namespace is nested inside another one; create it directly in the host's \
                 user namespace"
                    .into(),
            ));
        }
        if caller_uid != 0 && owner != caller_uid {
            return Err(BurrowError::NotAuthorized(format!(
                "user namespace is owned by uid {owner}, not by the caller (uid {caller_uid})"
            )));
        }
        Ok(UserNs {
            fd,
            id,
            owner_uid: owner,
        })
    }

    pub fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// The namespace's nsfs handle, through which the kernel later tells whether it still
    /// exists.
    pub fn handle(&self) -> Result<NsHandle, BurrowError> {
        NsHandle::of(self.fd.as_fd()).map_err(|e| {
            BurrowError::Failed(format!("name_to_handle_at of the user namespace: {e}"))
        })
    }

    /// Starts a worker process inside this namespace.
    pub fn enter(&self) -> Result<NsWorker, BurrowError> {
        NsWorker::spawn(self.fd.as_fd())
    }
}

/// A child process of the helper parked inside a user namespace, so the helper can read and
/// write that namespace's `/proc/<pid>/{uid,gid}_map` through a pid that is its own child's,
/// without trusting the caller's pids. Non-dumpable, holding no fd, dying with the helper, and
/// killed when dropped (see [`crate::fork`]).
pub struct NsWorker {
    parked: Parked,
}

impl NsWorker {
    /// Starts a worker in `userns` (which the caller has checked is a user namespace).
    pub fn spawn(userns: BorrowedFd<'_>) -> Result<Self, BurrowError> {
        let join = || {
            use rustix::thread::{move_into_link_name_space, LinkNameSpaceType};
            raw_errno(move_into_link_name_space(
                userns,
                Some(LinkNameSpaceType::User),
            ))
        };
        let keep = [userns.as_raw_fd()];
        // SAFETY: `join` makes one raw system call (rustix's, no errno) on an fd the worker
        // keeps.
        let parked =
            unsafe { Parked::spawn_sharing_memory(&keep, "join the user namespace", join) }?;
        Ok(NsWorker { parked })
    }

    /// `/proc/<worker>/<file>`.
    pub fn proc_path(&self, file: &str) -> std::path::PathBuf {
        self.parked.proc_path(file)
    }

    /// Kills the worker; it is reaped when what this returns is dropped (see
    /// [`Parked::dismiss`]).
    #[must_use = "dropping it at once waits for the worker's exit"]
    pub fn dismiss(self) -> Unreaped {
        self.parked.dismiss()
    }
}

impl NsWorker {
    /// The host uid and gid of the namespace's root, once idmapd has given it a range: devd and
    /// mountd serve only such namespaces, never one its creator mapped itself.
    pub fn root_ids(&self) -> Result<(u32, u32), BurrowError> {
        let (uid_map, gid_map) = self.maps()?;
        Ok((range_base(&uid_map, "uid")?, range_base(&gid_map, "gid")?))
    }
}

/// The first host ID of a map that is one Burrow range (`0 BASE 65536`, BASE aligned).
fn range_base(map: &str, which: &str) -> Result<u32, BurrowError> {
    let extents: Vec<Vec<u32>> = map
        .lines()
        .map(|l| {
            l.split_whitespace()
                .filter_map(|f| f.parse().ok())
                .collect()
        })
        .collect();
    match &extents[..] {
        [] => Err(BurrowError::InvalidArgument(format!(
            "the user namespace maps no {which} 0 yet; allocate its range first \
             (org.burrow.IdMap1.Allocate)"
        ))),
        [extent]
            if extent[..] == [0, extent[1], RANGE_SIZE]
                && extent[1] > 0
                && extent[1] % RANGE_SIZE == 0 =>
        {
            Ok(extent[1])
        }
        _ => Err(BurrowError::InvalidArgument(format!(
            "the user namespace's {which}_map ({}) is not a range from idmapd: it was mapped \
             by its creator; allocate a range with org.burrow.IdMap1.Allocate on a fresh \
             namespace",
            map.split_whitespace().collect::<Vec<_>>().join(" ")
        ))),
    }
}

impl NsWorker {
    /// The namespace's (uid_map, gid_map) texts.
    pub fn maps(&self) -> Result<(String, String), BurrowError> {
        let read = |which: &str| {
            let path = self.proc_path(which);
            std::fs::read_to_string(&path)
                .map_err(|e| BurrowError::Failed(format!("reading {}: {e}", path.display())))
        };
        Ok((read("uid_map")?, read("gid_map")?))
    }
}

/// A new user namespace (a child of the helper's own) with the given maps, held by fd only.
/// Helpers use such namespaces as mount idmappings; no process ever runs in them.
pub fn create_userns(uid_map: &str, gid_map: &str) -> Result<OwnedFd, BurrowError> {
    let create = || {
        // SAFETY: a new user namespace leaves the fd table shared by no one (the worker's
        // own copy).
        raw_errno(unsafe { rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::NEWUSER) })
    };
    // SAFETY: `create` makes one raw system call (rustix's, no errno).
    let worker = unsafe { Parked::spawn_sharing_memory(&[], "unshare(CLONE_NEWUSER)", create) }?;
    for (which, map) in [("uid_map", uid_map), ("gid_map", gid_map)] {
        let path = worker.proc_path(which);
        std::fs::write(&path, map).map_err(|e| {
            BurrowError::Failed(format!("writing {} ({map:?}): {e}", path.display()))
        })?;
    }
    let ns = File::open(worker.proc_path("ns/user"))
        .map_err(|e| BurrowError::Failed(format!("opening the new user namespace: {e}")))?;
    Ok(ns.into())
}

/// A worker's setup result as its report wants it: 0, or the errno.
fn raw_errno(result: rustix::io::Result<()>) -> i32 {
    result.err().map_or(0, |e| e.raw_os_error())
}

/// The outside ID that `inside` maps to in a `uid_map`/`gid_map` text.
pub fn host_id_of(map: &str, inside: u32) -> Option<u32> {
    map.lines().find_map(|line| {
        let mut fields = line.split_whitespace().map(|f| f.parse::<u32>().ok());
        let (start, outside, count) = (fields.next()??, fields.next()??, fields.next()??);
        (inside >= start && inside - start < count).then(|| outside + (inside - start))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_idmapd_ranges_count() {
        assert_eq!(
            range_base("         0     524288      65536\n", "uid").unwrap(),
            524288
        );
        for map in [
            "",
            "0 1000 1\n",
            "0 0 65536\n",
            "0 524289 65536\n",
            "0 524288 65535\n",
            "0 524288 1\n1 600000 65535\n",
            "1 524288 65536\n",
        ] {
            assert!(
                matches!(range_base(map, "uid"), Err(BurrowError::InvalidArgument(_))),
                "{map:?} accepted"
            );
        }
    }

    #[test]
    fn finds_host_ids_in_maps() {
        assert_eq!(
            host_id_of("         0     524288      65536\n", 0),
            Some(524288)
        );
        assert_eq!(
            host_id_of("         0     524288      65536\n", 1000),
            Some(525288)
        );
        assert_eq!(
            host_id_of("         0     524288      65536\n", 65536),
            None
        );
        assert_eq!(host_id_of("1 1000 1\n0 2000 1\n", 0), Some(2000));
        assert_eq!(host_id_of("", 0), None);
    }
}
