//! The container's namespaces, taken from a pidfd of its init (never from a PID or a path).

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use crate::nsfs::ns_id;
use crate::userns::{self, UserNs};
use burrow_contract::BurrowError;

// PIDFD_GET_*_NAMESPACE from <linux/pidfd.h> (Linux 6.11).
const PIDFS_IOCTL_MAGIC: u8 = 0xFF;
const PIDFD_GET_CGROUP_NAMESPACE: u64 = nix::request_code_none!(PIDFS_IOCTL_MAGIC, 1);
const PIDFD_GET_IPC_NAMESPACE: u64 = nix::request_code_none!(PIDFS_IOCTL_MAGIC, 2);
const PIDFD_GET_MNT_NAMESPACE: u64 = nix::request_code_none!(PIDFS_IOCTL_MAGIC, 3);
const PIDFD_GET_NET_NAMESPACE: u64 = nix::request_code_none!(PIDFS_IOCTL_MAGIC, 4);
const PIDFD_GET_PID_NAMESPACE: u64 = nix::request_code_none!(PIDFS_IOCTL_MAGIC, 5);
const PIDFD_GET_USER_NAMESPACE: u64 = nix::request_code_none!(PIDFS_IOCTL_MAGIC, 9);

/// The namespaces a container's mounts are made in.
pub struct Namespaces {
    pub pid: OwnedFd,
    pub net: OwnedFd,
    pub ipc: OwnedFd,
    pub cgroup: OwnedFd,
}

fn get(pidfd: BorrowedFd<'_>, request: u64, what: &str) -> Result<OwnedFd, BurrowError> {
    match userns::ioctl_new_fd(pidfd, request) {
        Ok(fd) => Ok(fd),
        Err(nix::errno::Errno::ESRCH) => Err(BurrowError::InvalidArgument(
            "the pidfd's process has exited".into(),
        )),
        Err(
            e @ (nix::errno::Errno::ENOTTY | nix::errno::Errno::EINVAL | nix::errno::Errno::EBADF),
        ) => Err(BurrowError::InvalidArgument(format!(
            "fd is not a pidfd (use pidfd_open(2) on the container's init): {what} namespace: {e}"
        ))),
        Err(e) => Err(BurrowError::Failed(format!(
            "reading the process's {what} namespace: {e}"
        ))),
    }
}

/// The user namespace of the pidfd's process (unchecked: compare it with what you expect).
pub fn user_namespace(pidfd: BorrowedFd<'_>) -> Result<OwnedFd, BurrowError> {
    get(pidfd, PIDFD_GET_USER_NAMESPACE, "user")
}

/// The pid (in this process's pid namespace) of the pidfd's process, from its fdinfo.
pub fn pid_of(pidfd: BorrowedFd<'_>) -> Result<i32, BurrowError> {
    let fdinfo = std::fs::read_to_string(format!(
        "/proc/self/fdinfo/{}",
        std::os::fd::AsRawFd::as_raw_fd(&pidfd)
    ))
    .map_err(|e| BurrowError::Failed(format!("reading the pidfd's fdinfo: {e}")))?;
    match fdinfo
        .lines()
        .find_map(|l| l.strip_prefix("Pid:"))
        .and_then(|p| p.trim().parse::<i32>().ok())
    {
        Some(pid) if pid > 0 => Ok(pid),
        Some(_) => Err(BurrowError::InvalidArgument(
            "the pidfd's process has exited".into(),
        )),
        None => Err(BurrowError::InvalidArgument("fd is not a pidfd".into())),
    }
}

/// The user namespace of the pidfd's process, checked as for any caller's userns, and its
/// pid, net, ipc and cgroup namespaces, each of which must be owned by that user namespace
/// (so they are the container's own, not the host's).
pub fn container_namespaces(
    pidfd: BorrowedFd<'_>,
    caller_uid: u32,
) -> Result<(UserNs, Namespaces), BurrowError> {
    let user = UserNs::from_caller_fd(user_namespace(pidfd)?, caller_uid)?;
    let owned = |request: u64, what: &str| -> Result<OwnedFd, BurrowError> {
        let ns = get(pidfd, request, what)?;
        let owner = userns::owning_userns(ns.as_fd())
            .ok()
            .and_then(|o| ns_id(o.as_fd()).ok());
        if owner != Some(user.id) {
            return Err(BurrowError::InvalidArgument(format!(
                "the process's {what} namespace is not owned by its user namespace; \
                 unshare it after entering the container's user namespace"
            )));
        }
        Ok(ns)
    };
    let namespaces = Namespaces {
        pid: owned(PIDFD_GET_PID_NAMESPACE, "pid")?,
        net: owned(PIDFD_GET_NET_NAMESPACE, "network")?,
        ipc: owned(PIDFD_GET_IPC_NAMESPACE, "ipc")?,
        cgroup: owned(PIDFD_GET_CGROUP_NAMESPACE, "cgroup")?,
    };
    Ok((user, namespaces))
}

/// Why [`own_mount_namespace`] has no fd.
#[derive(Debug, thiserror::Error)]
pub enum OwnNamespaceError {
    #[error("pidfd_open self: {0}")]
    PidfdOpen(#[source] rustix::io::Errno),
    #[error("PIDFD_GET_MNT_NAMESPACE: {0}")]
    Namespace(#[source] nix::errno::Errno),
}

impl OwnNamespaceError {
    /// The errno the kernel answered.
    pub fn errno(&self) -> nix::errno::Errno {
        match self {
            OwnNamespaceError::PidfdOpen(e) => nix::errno::Errno::from_raw(e.raw_os_error()),
            OwnNamespaceError::Namespace(e) => *e,
        }
    }
}

/// The mount namespace of the calling process, through a pidfd of itself (works without /proc,
/// e.g. in a container whose /proc a plan shaped).
pub fn own_mount_namespace() -> Result<OwnedFd, OwnNamespaceError> {
    let me = rustix::process::getpid();
    let pidfd = rustix::process::pidfd_open(me, rustix::process::PidfdFlags::empty())
        .map_err(OwnNamespaceError::PidfdOpen)?;
    userns::ioctl_new_fd(pidfd.as_fd(), PIDFD_GET_MNT_NAMESPACE)
        .map_err(OwnNamespaceError::Namespace)
}
