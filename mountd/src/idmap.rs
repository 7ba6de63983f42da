//! ID-mapped clones of directories the caller opened, including overlayfs (whose layers are
//! mapped one by one, since this kernel cannot map an overlay mount itself).

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::Path;

use burrow_contract::BurrowError;
use burrow_sys::userns::{NsWorker, UserNs};
use rustix::fs::{statx, AtFlags, Mode, OFlags, StatxFlags};
use rustix::mount::{open_tree, MountAttrFlags, OpenTreeFlags};

use crate::job::{Fds, Job, OverlayJob, UpperLayer};

const OVERLAYFS_SUPER_MAGIC: i64 = 0x794c7630;

/// `struct mount_attr` of mount_setattr(2).
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// mount_setattr(2) on the mount `fd` (and, with `recursive`, every mount below it).
pub fn set_attributes(
    fd: BorrowedFd<'_>,
    set: MountAttrFlags,
    clear: MountAttrFlags,
    userns: Option<BorrowedFd<'_>>,
    recursive: bool,
) -> rustix::io::Result<()> {
    let attr = MountAttr {
        attr_set: u64::from(set.bits()),
        attr_clr: u64::from(clear.bits()),
        propagation: 0,
        userns_fd: userns.map_or(0, |fd| fd.as_raw_fd() as u64),
    };
    let flags = libc::AT_EMPTY_PATH as libc::c_uint
        | if recursive {
            libc::AT_RECURSIVE as libc::c_uint
        } else {
            0
        };
    // SAFETY: `attr` is a valid mount_attr of the size passed, the path is an empty C string,
    // and `fd` is a live fd borrowed for the call.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            fd.as_raw_fd(),
            c"".as_ptr(),
            flags,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if ret == 0 {
        Ok(())
    } else {
        Err(rustix::io::Errno::from_raw_os_error(
            nix::errno::Errno::last_raw(),
        ))
    }
}

/// A mount idmapping for non-root callers: the container's own host range maps to itself
/// on disk, except the container's root, which is stored on disk as the caller. So the
/// container's root owns the caller's files, and nothing the container writes is ever owned on
/// disk by an ID outside what the caller already controls (never host root: no setuid-root
/// file can appear in the caller's directories).
pub fn caller_disk_map(container_map: &str, caller_id: u32) -> Result<String, BurrowError> {
    let root_host = burrow_sys::userns::host_id_of(container_map, 0).ok_or_else(|| {
        BurrowError::InvalidArgument(
            "the user namespace maps no root yet; allocate its range first".into(),
        )
    })?;
    let mut lines = vec![format!("{caller_id} {root_host} 1")];
    for line in container_map.lines() {
        let fields: Vec<u32> = line
            .split_whitespace()
            .filter_map(|f| f.parse().ok())
            .collect();
        let [_, outside, count] = fields[..] else {
            continue;
        };
        let end = outside + count; // exclusive
        let mut push = |from: u32, to: u32| {
            if to > from {
                lines.push(format!("{from} {from} {}", to - from));
            }
        };
        if (outside..end).contains(&root_host) {
            push(outside, root_host);
            push(root_host + 1, end);
        } else {
            push(outside, end);
        }
    }
    if lines.iter().skip(1).any(|l| {
        let start: u32 = l
            .split(' ')
            .next()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let count: u32 = l
            .rsplit(' ')
            .next()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        (start..start + count).contains(&caller_id)
    }) {
        return Err(BurrowError::InvalidArgument(
            "the container's range contains the caller's own ID".into(),
        ));
    }
    if lines.len() > 340 {
        return Err(BurrowError::InvalidArgument(
            "the container's ID map has too many extents".into(),
        ));
    }
    Ok(lines.join("\n") + "\n")
}

/// The user namespace whose mapping an ID-mapped mount of `caller`'s gets: the container's own
/// for root (on-disk root is the container's root, as Docker expects), a derived one for
/// everyone else (see [`caller_disk_map`]).
pub fn mapping_for(
    caller_uid: u32,
    userns: &UserNs,
    worker: &NsWorker,
) -> Result<OwnedFd, BurrowError> {
    if caller_uid == 0 {
        return userns
            .as_fd()
            .try_clone_to_owned()
            .map_err(|e| BurrowError::Failed(format!("dup userns: {e}")));
    }
    let gid = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(caller_uid))
        .ok()
        .flatten()
        .ok_or_else(|| BurrowError::NotAuthorized(format!("uid {caller_uid} has no account")))?
        .gid
        .as_raw();
    let (uid_map, gid_map) = worker.maps()?;
    burrow_sys::userns::create_userns(
        &caller_disk_map(&uid_map, caller_uid)?,
        &caller_disk_map(&gid_map, gid)?,
    )
}

/// Non-root callers may only map what they own.
pub fn check_owner(fd: BorrowedFd<'_>, caller_uid: u32) -> Result<(), BurrowError> {
    if caller_uid == 0 {
        return Ok(());
    }
    let st = rustix::fs::fstat(fd)
        .map_err(|e| BurrowError::InvalidArgument(format!("fstat of the passed fd: {e}")))?;
    if st.st_uid != caller_uid {
        return Err(BurrowError::NotAuthorized(format!(
            "the passed directory is owned by uid {}, not by the caller (uid {caller_uid}); only your own directories can be mapped",
            st.st_uid
        )));
    }
    Ok(())
}

/// How to ID-map a caller's directories for one container.
pub struct Mapping<'a> {
    /// The user namespace whose map becomes the mount's idmapping.
    pub userns: BorrowedFd<'a>,
    /// Host uid and gid of the container's root: an overlay is mounted as them, so that what
    /// overlayfs itself creates (work directories, whiteouts) is the container root's on disk.
    pub owner: (u32, u32),
    /// An empty directory of the helper's, where overlays are assembled in a worker's private
    /// mount namespace.
    pub staging: &'a Path,
}

/// Every mount of a caller's directory (an image, a layer, a bind source) is nodev: a device
/// node in it, which an image unpacked as root can carry for any host device, never opens.
/// Only devd's /dev carries working nodes.
pub const NO_DEVICES: MountAttrFlags = MountAttrFlags::MOUNT_ATTR_NODEV;

/// A detached copy of the mount at `source` (with the mounts below it, if `recursive`).
pub fn clone_tree(source: BorrowedFd<'_>, recursive: bool) -> rustix::io::Result<OwnedFd> {
    let mut flags = OpenTreeFlags::OPEN_TREE_CLONE
        | OpenTreeFlags::OPEN_TREE_CLOEXEC
        | OpenTreeFlags::AT_EMPTY_PATH;
    if recursive {
        flags |= OpenTreeFlags::AT_RECURSIVE;
    }
    open_tree(source, "", flags)
}

/// A detached, nodev, ID-mapped clone of the directory (or file) `source`.
pub fn idmapped_clone(
    source: BorrowedFd<'_>,
    mapping: &Mapping<'_>,
    recursive: bool,
) -> Result<OwnedFd, BurrowError> {
    let fs_type = rustix::fs::fstatfs(source)
        .map_err(|e| BurrowError::InvalidArgument(format!("fstatfs: {e}")))?
        .f_type;
    if fs_type as i64 == OVERLAYFS_SUPER_MAGIC {
        return overlay_on_mapped_layers(source, mapping);
    }
    let tree = clone_tree(source, recursive)
        .map_err(|e| BurrowError::InvalidArgument(format!("cloning the passed mount: {e}")))?;
    let attrs = MountAttrFlags::MOUNT_ATTR_IDMAP | NO_DEVICES;
    set_attributes(tree.as_fd(), attrs, MountAttrFlags::empty(), Some(mapping.userns), recursive)
        .map_err(|e| {
            BurrowError::NotSupported(format!(
                "the filesystem (magic {fs_type:#x}) cannot be ID-mapped: {e}; Burrow never falls back to chown"
            ))
        })?;
    Ok(tree)
}

/// The layers of the overlay mounted at `merged`, from this process's mountinfo.
fn overlay_layers(merged: BorrowedFd<'_>) -> Result<(Vec<String>, String, String), BurrowError> {
    let mnt_id = statx(merged, "", AtFlags::EMPTY_PATH, StatxFlags::MNT_ID)
        .map_err(|e| BurrowError::Failed(format!("statx: {e}")))?
        .stx_mnt_id;
    let mount = burrow_sys::mountinfo::own()
        .map_err(|e| BurrowError::Failed(format!("mountinfo: {e}")))?
        .into_iter()
        .find(|m| m.id == mnt_id)
        .ok_or_else(|| {
            BurrowError::InvalidArgument(
                "the overlay is not mounted in the helper's mount namespace".into(),
            )
        })?;
    if mount.root != "/" {
        return Err(BurrowError::InvalidArgument(
            "pass the root of the overlay mount, not a directory inside it".into(),
        ));
    }
    let (mut lower, mut upper, mut work) = (vec![], String::new(), String::new());
    for option in &mount.super_options {
        if let Some(v) = option.strip_prefix("lowerdir=") {
            lower.extend(v.split(':').map(String::from));
        } else if let Some(v) = option.strip_prefix("lowerdir+=") {
            lower.push(v.to_string());
        } else if let Some(v) = option.strip_prefix("upperdir=") {
            upper = v.to_string();
        } else if let Some(v) = option.strip_prefix("workdir=") {
            work = v.to_string();
        }
    }
    let super_options = mount.super_options.join(",");
    if lower.is_empty()
        || lower
            .iter()
            .chain([&upper, &work])
            .any(|p| !p.is_empty() && !p.starts_with('/'))
    {
        return Err(BurrowError::NotSupported(format!(
            "overlay layers must be absolute paths to be re-mounted ID-mapped (got {super_options:?})"
        )));
    }
    Ok((lower, upper, work))
}

fn overlay_on_mapped_layers(
    merged: BorrowedFd<'_>,
    mapping: &Mapping<'_>,
) -> Result<OwnedFd, BurrowError> {
    let (lower, upper, work) = overlay_layers(merged)?;
    let map_dir = |path: &str| -> Result<OwnedFd, BurrowError> {
        let dir = rustix::fs::open(
            path,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| BurrowError::Failed(format!("opening overlay layer {path}: {e}")))?;
        idmapped_clone(dir.as_fd(), mapping, false)
    };
    let lower: Vec<OwnedFd> = lower.iter().map(|l| map_dir(l)).collect::<Result<_, _>>()?;
    // upperdir and workdir must sit on one mount: map their common parent once.
    let upper_work = if upper.is_empty() {
        None
    } else {
        let (parent, upper_rel, work_rel) = common_parent(&upper, &work).ok_or_else(|| {
            BurrowError::NotSupported(format!(
                "overlay upperdir {upper} and workdir {work} share no parent directory"
            ))
        })?;
        Some((map_dir(&parent)?, upper_rel, work_rel))
    };
    let mut fds = Fds::default();
    let job = OverlayJob {
        lower: lower.into_iter().map(|fd| fds.carry(fd)).collect(),
        upper: upper_work.map(|(parent, upper, work)| UpperLayer {
            parent: fds.carry(parent),
            upper,
            work,
        }),
        owner: mapping.owner,
        staging: mapping.staging.to_path_buf(),
    };
    Ok(crate::spawn::run(&Job::Overlay(job), fds)?)
}

/// The deepest directory holding both `a` and `b`, and their paths relative to it.
fn common_parent(a: &str, b: &str) -> Option<(String, String, String)> {
    let (pa, pb): (Vec<&str>, Vec<&str>) = (a.split('/').collect(), b.split('/').collect());
    let common = pa.iter().zip(&pb).take_while(|(x, y)| x == y).count();
    if common < 2 || common >= pa.len() || common >= pb.len() {
        return None;
    }
    Some((
        pa[..common].join("/"),
        pa[common..].join("/"),
        pb[common..].join("/"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caller_disk_map_keeps_root_off_disk() {
        let map = caller_disk_map("         0     524288      65536\n", 1001).unwrap();
        assert_eq!(map, "1001 524288 1\n524289 524289 65535\n");
        // A self-mapped namespace ("0 1001 1") maps the caller to itself.
        assert_eq!(
            caller_disk_map("0 1001 1\n", 1001).unwrap(),
            "1001 1001 1\n"
        );
        assert!(caller_disk_map("", 1001).is_err());
        assert!(caller_disk_map("0 1000 100\n", 1001).is_err());
    }

    #[test]
    fn finds_the_common_parent_of_upper_and_work() {
        assert_eq!(
            common_parent(
                "/var/lib/docker/overlay2/abc/diff",
                "/var/lib/docker/overlay2/abc/work"
            ),
            Some((
                "/var/lib/docker/overlay2/abc".into(),
                "diff".into(),
                "work".into()
            ))
        );
        assert_eq!(common_parent("/a/u", "/b/w"), None);
    }
}
