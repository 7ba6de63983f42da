//! What mountd asks of a worker, and what comes back: typed messages (sent by [`crate::wire`]).
//! A job names its fds by [`Slot`]; the fds themselves travel beside it with SCM_RIGHTS.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;

use burrow_contract::BurrowError;
use rustix::mount::MountAttrFlags;
use serde::{Deserialize, Serialize};

/// The index of one fd among those sent with a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Slot(usize);

/// The fds that go with a message, each named in it by its [`Slot`].
#[derive(Debug, Default)]
pub struct Fds(Vec<OwnedFd>);

impl Fds {
    /// Adds `fd` to the message; the message names it by the returned slot.
    pub fn carry(&mut self, fd: OwnedFd) -> Slot {
        self.0.push(fd);
        Slot(self.0.len() - 1)
    }

    /// The fd a message named `slot`.
    pub fn get(&self, slot: Slot) -> Result<BorrowedFd<'_>, JobError> {
        self.0
            .get(slot.0)
            .map(AsFd::as_fd)
            .ok_or_else(|| JobError::Broken(format!("the job names fd {}, which it lacks", slot.0)))
    }

    /// Takes the fd a message named `slot` out of the set.
    pub fn take(self, slot: Slot) -> Option<OwnedFd> {
        self.0.into_iter().nth(slot.0)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// The fds' numbers, for a forked worker that keeps exactly these.
    pub fn raw(&self) -> Vec<std::os::fd::RawFd> {
        self.0.iter().map(std::os::fd::AsRawFd::as_raw_fd).collect()
    }

    pub fn as_slice(&self) -> &[OwnedFd] {
        &self.0
    }
}

impl From<Vec<OwnedFd>> for Fds {
    fn from(fds: Vec<OwnedFd>) -> Self {
        Fds(fds)
    }
}

/// A worker's one job.
#[derive(Debug, Serialize, Deserialize)]
pub enum Job {
    /// BuildRoot: the container's locked mount namespace.
    Build(BuildJob),
    /// An overlay re-made on ID-mapped layers (overlayfs itself cannot be ID-mapped).
    Overlay(OverlayJob),
}

/// The answer: the slot of the one fd sent with it, or what went wrong.
pub type Reply = Result<Slot, JobError>;

/// Everything the workers need to assemble a container's mount namespace.
#[derive(Debug, Serialize, Deserialize)]
pub struct BuildJob {
    /// The container's user namespace, and the namespaces owned by it that the workers join.
    pub user: Slot,
    pub pid: Slot,
    pub net: Slot,
    pub ipc: Slot,
    pub cgroup: Slot,
    /// Host uid and gid of the container's root.
    pub root_ids: (u32, u32),
    /// The ID-mapped rootfs, a detached mount.
    pub rootfs: Slot,
    /// Made read-only once everything is mounted on it.
    pub rootfs_read_only: bool,
    /// devd's /dev, a detached mount.
    pub dev: Slot,
    /// How many of `mounts` are made before /dev (the spec's order).
    pub dev_at: usize,
    pub mounts: Vec<Prepared>,
    pub masked: Vec<String>,
    pub readonly: Vec<String>,
    pub writable_sysctls: Vec<String>,
    /// The host's lxcfs files, to go over the container's /proc files and CPU directory.
    pub lxcfs: Vec<crate::lxcfs::Source>,
    pub cgroups: CgroupLayout,
    /// An empty directory of the helper's where the rootfs is attached in a private copy.
    pub staging: PathBuf,
}

/// One mount of the container, ready to be made.
#[derive(Debug, Serialize, Deserialize)]
pub enum Prepared {
    /// A detached mount the helper made already (an ID-mapped bind source).
    Attach {
        destination: String,
        mount: Slot,
        is_file: bool,
        #[serde(with = "attrs")]
        attrs: MountAttrFlags,
        /// An `rbind`: the flags go on every mount of the tree (a read-only rbind is read-only
        /// all the way down).
        recursive: bool,
    },
    /// A new filesystem instance, made inside the container's namespaces.
    Fresh {
        destination: String,
        fstype: FsType,
        /// The plan's data options (`size`, `mode`, ...), uid/gid already host IDs.
        data: Vec<(String, Option<String>)>,
        #[serde(with = "attrs")]
        attrs: MountAttrFlags,
    },
    /// The container's cgroup hierarchies.
    Cgroup {
        destination: String,
        #[serde(with = "attrs")]
        attrs: MountAttrFlags,
    },
}

/// The filesystems a plan may ask for by type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FsType {
    Proc,
    Sysfs,
    Tmpfs,
    Devpts,
    Mqueue,
}

impl FsType {
    pub fn name(self) -> &'static str {
        match self {
            FsType::Proc => "proc",
            FsType::Sysfs => "sysfs",
            FsType::Tmpfs => "tmpfs",
            FsType::Devpts => "devpts",
            FsType::Mqueue => "mqueue",
        }
    }
}

/// The host's cgroup layout, which a container's view mirrors.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum CgroupLayout {
    /// cgroup2 only, at /sys/fs/cgroup.
    Unified,
    /// v1 hierarchies (directory name, mount options) on a tmpfs, maybe with cgroup2 at
    /// `unified`, and the usual links (`cpu -> cpu,cpuacct`).
    Legacy {
        hierarchies: Vec<(String, Vec<String>)>,
        unified: Option<String>,
        links: Vec<(String, String)>,
    },
}

/// MOUNT_ATTR_* flags on the wire, as their bits.
mod attrs {
    use rustix::mount::MountAttrFlags;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(flags: &MountAttrFlags, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u32(flags.bits())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<MountAttrFlags, D::Error> {
        let bits = u32::deserialize(d)?;
        MountAttrFlags::from_bits(bits)
            .ok_or_else(|| serde::de::Error::custom(format!("unknown mount flags {bits:#x}")))
    }
}

/// An overlay to mount on layers that are ID-mapped already (detached mounts).
#[derive(Debug, Serialize, Deserialize)]
pub struct OverlayJob {
    pub lower: Vec<Slot>,
    pub upper: Option<UpperLayer>,
    /// Host uid and gid of the container's root, as whom the overlay is mounted.
    pub owner: (u32, u32),
    /// An empty directory of the helper's where the layers are attached in a private copy.
    pub staging: PathBuf,
}

/// The ID-mapped common parent of an overlay's upperdir and workdir, and their paths in it.
#[derive(Debug, Serialize, Deserialize)]
pub struct UpperLayer {
    pub parent: Slot,
    pub upper: String,
    pub work: String,
}

/// An errno as the kernel gave it, shown as `ENOENT: No such file or directory`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Errno(pub i32);

impl std::fmt::Display for Errno {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        nix::errno::Errno::from_raw(self.0).fmt(f)
    }
}

impl From<rustix::io::Errno> for Errno {
    fn from(e: rustix::io::Errno) -> Self {
        Errno(e.raw_os_error())
    }
}

impl From<nix::errno::Errno> for Errno {
    fn from(e: nix::errno::Errno) -> Self {
        Errno(e as i32)
    }
}

/// What went wrong in a worker, typed so that the helper answers with the right D-Bus error.
#[derive(Debug, Clone, PartialEq, thiserror::Error, Serialize, Deserialize)]
pub enum JobError {
    /// A system call failed through no fault of the caller's (org.burrow.Error.Failed).
    #[error("{context}: {errno}")]
    Kernel { context: String, errno: Errno },
    /// The kernel refused what the caller's image or plan asked for (InvalidArgument).
    #[error("{context}: {errno}")]
    Refused { context: String, errno: Errno },
    /// The caller's image or plan is not what it must be (InvalidArgument).
    #[error("{0}")]
    Invalid(String),
    /// The worker broke down: it panicked, or lost its child (org.burrow.Error.Failed).
    #[error("{0}")]
    Broken(String),
    /// What the host must provide is not there, such as lxcfs (org.burrow.Error.Failed).
    #[error("{0}")]
    Unavailable(String),
}

impl From<JobError> for BurrowError {
    fn from(e: JobError) -> Self {
        match e {
            JobError::Kernel { .. } | JobError::Broken(_) | JobError::Unavailable(_) => {
                BurrowError::Failed(format!("mount worker: {e}"))
            }
            JobError::Refused { .. } | JobError::Invalid(_) => {
                BurrowError::InvalidArgument(format!("mount worker: {e}"))
            }
        }
    }
}

/// Errnos that say the system itself failed, whatever the caller asked for.
const SYSTEM_ERRNOS: [i32; 7] = [
    libc::ENOMEM,
    libc::EIO,
    libc::EMFILE,
    libc::ENFILE,
    libc::EINTR,
    libc::EAGAIN,
    libc::ENOSYS,
];

/// Turns a failed system call into a [`JobError`] that says whose the failure is.
pub trait OrFail<T> {
    /// The kernel or the helper failed: org.burrow.Error.Failed.
    fn or_failed(self, context: impl Into<String>) -> Result<T, JobError>;
    /// The call acted on what the caller chose (its image, its plan): InvalidArgument, unless
    /// the errno says the system itself failed (out of memory or fds, I/O error).
    fn or_refused(self, context: impl Into<String>) -> Result<T, JobError>;
}

impl<T, E: Into<Errno>> OrFail<T> for Result<T, E> {
    fn or_failed(self, context: impl Into<String>) -> Result<T, JobError> {
        self.map_err(|e| JobError::Kernel {
            context: context.into(),
            errno: e.into(),
        })
    }

    fn or_refused(self, context: impl Into<String>) -> Result<T, JobError> {
        self.map_err(|e| {
            let (context, errno) = (context.into(), e.into());
            if SYSTEM_ERRNOS.contains(&errno.0) {
                JobError::Kernel { context, errno }
            } else {
                JobError::Refused { context, errno }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_keep_their_errno_and_blame() {
        let e = Err::<(), _>(rustix::io::Errno::NOENT)
            .or_failed("attaching the rootfs")
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "attaching the rootfs: ENOENT: No such file or directory"
        );
        assert!(matches!(BurrowError::from(e), BurrowError::Failed(m) if m.contains("ENOENT")));
        let e = Err::<(), _>(nix::errno::Errno::EINVAL)
            .or_refused("tmpfs option size=x")
            .unwrap_err();
        assert!(
            matches!(BurrowError::from(e), BurrowError::InvalidArgument(m) if m.contains("EINVAL"))
        );
        // Out of memory is never the caller's fault.
        let e = Err::<(), _>(rustix::io::Errno::NOMEM)
            .or_refused("resolving /x")
            .unwrap_err();
        assert!(matches!(e, JobError::Kernel { .. }));
    }

    #[test]
    fn errors_survive_the_wire_format() {
        let e = JobError::Refused {
            context: "mounting /x".into(),
            errno: Errno(libc::ENOTDIR),
        };
        let reply: Reply = Err(e.clone());
        let text = serde_json::to_string(&reply).unwrap();
        assert_eq!(serde_json::from_str::<Reply>(&text).unwrap(), Err(e));
    }
}
