//! Namespaces as the kernel identifies them: a 64-bit id that no other namespace gets while the
//! machine runs (inode numbers are reused at once), and an nsfs file handle through which the
//! kernel says whether the namespace still exists.
//!
//! The handle answers for every reference the kernel holds, which no scan of `/proc` can see:
//! an fd in flight in a socket queue, a socket of a network namespace the user namespace owns,
//! a bind mount hidden under another mount. Asking never walks a path, so nothing a container
//! controls (FIFOs, symlinks, stacked mounts) can block or redirect it.

use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use serde::{Deserialize, Serialize};

// From <linux/fcntl.h> (Linux 6.18): the nsfs root for open_by_handle_at(2).
const FD_NSFS_ROOT: libc::c_int = -10003;
/// MAX_HANDLE_SZ of <linux/exportfs.h>.
const MAX_HANDLE_SIZE: usize = 128;
// NS_GET_ID of <linux/nsfs.h>: _IOR(0xb7, 0xd, __u64).
nix::ioctl_read!(ns_get_id, 0xb7, 0xd, u64);

/// The namespace's id (NS_GET_ID): unique among all namespaces since boot.
pub fn ns_id(ns: BorrowedFd<'_>) -> std::io::Result<u64> {
    let mut id = 0u64;
    // SAFETY: NS_GET_ID writes one u64 into `id`, which outlives the call.
    unsafe { ns_get_id(ns.as_raw_fd(), &mut id) }?;
    Ok(id)
}

// NS_GET_USERNS and NS_GET_NSTYPE of <linux/nsfs.h>: _IO(0xb7, 0x1) and _IO(0xb7, 0x3).
nix::ioctl_none!(ns_get_userns, 0xb7, 0x1);
nix::ioctl_none!(ns_get_nstype, 0xb7, 0x3);

/// The user namespace that owns the namespace `ns` (NS_GET_USERNS): a new fd. EPERM if it is
/// outside the caller's own user namespace and its descendants.
pub fn owner(ns: BorrowedFd<'_>) -> std::io::Result<OwnedFd> {
    // SAFETY: NS_GET_USERNS takes no argument and returns a new fd or -1.
    let fd = unsafe { ns_get_userns(ns.as_raw_fd()) }?;
    // SAFETY: the kernel just opened `fd` for this process; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The kind of the namespace `ns` as its CLONE_NEW* flag (NS_GET_NSTYPE); fails for a file
/// that is not a namespace.
pub fn kind(ns: BorrowedFd<'_>) -> std::io::Result<libc::c_int> {
    // SAFETY: NS_GET_NSTYPE takes no argument and returns the flag or -1.
    Ok(unsafe { ns_get_nstype(ns.as_raw_fd()) }?)
}

/// `struct file_handle` with room for the largest handle.
#[repr(C)]
struct RawHandle {
    handle_bytes: u32,
    handle_type: libc::c_int,
    f_handle: [u8; MAX_HANDLE_SIZE],
}

/// An nsfs file handle of one namespace, kept in a range's record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NsHandle {
    pub handle_type: i32,
    pub bytes: Vec<u8>,
}

impl NsHandle {
    /// The handle of the namespace `ns` (an nsfs fd).
    pub fn of(ns: BorrowedFd<'_>) -> std::io::Result<Self> {
        let mut raw = RawHandle {
            handle_bytes: MAX_HANDLE_SIZE as u32,
            handle_type: 0,
            f_handle: [0; MAX_HANDLE_SIZE],
        };
        let mut mount_id: libc::c_int = 0;
        // SAFETY: `raw` is a file_handle with `handle_bytes` bytes of room after its header,
        // the path is an empty C string (AT_EMPTY_PATH: the fd itself), `mount_id` is live.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_name_to_handle_at,
                ns.as_raw_fd(),
                c"".as_ptr(),
                &mut raw as *mut RawHandle,
                &mut mount_id as *mut libc::c_int,
                libc::AT_EMPTY_PATH,
            )
        };
        if ret != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let len = (raw.handle_bytes as usize).min(MAX_HANDLE_SIZE);
        Ok(NsHandle {
            handle_type: raw.handle_type,
            bytes: raw.f_handle[..len].to_vec(),
        })
    }

    /// Whether the namespace still exists: `Ok(false)` once the kernel has freed it (ESTALE),
    /// which is final. Any other failure is an error, never "gone".
    pub fn exists(&self) -> std::io::Result<bool> {
        match self.open() {
            Ok(_) => Ok(true),
            Err(e) if e.raw_os_error() == Some(libc::ESTALE) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// An fd of the namespace, if it still exists (needs CAP_SYS_ADMIN over it).
    pub fn open(&self) -> std::io::Result<OwnedFd> {
        if self.bytes.len() > MAX_HANDLE_SIZE {
            return Err(std::io::Error::from_raw_os_error(libc::EINVAL));
        }
        let mut raw = RawHandle {
            handle_bytes: self.bytes.len() as u32,
            handle_type: self.handle_type,
            f_handle: [0; MAX_HANDLE_SIZE],
        };
        raw.f_handle[..self.bytes.len()].copy_from_slice(&self.bytes);
        // SAFETY: `raw` is a file_handle whose `handle_bytes` bytes follow its header.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_open_by_handle_at,
                FD_NSFS_ROOT,
                &mut raw as *mut RawHandle,
                libc::O_RDONLY | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: open_by_handle_at returned a new fd that nothing else owns.
        Ok(unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) })
    }
}

/// This boot's id: kernel namespace ids and handles mean nothing across a reboot.
pub fn boot_id() -> std::io::Result<String> {
    Ok(std::fs::read_to_string("/proc/sys/kernel/random/boot_id")?
        .trim()
        .to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    /// A user namespace held only by a child process, which is killed to end it.
    fn child_userns() -> (nix::unistd::Pid, std::fs::File) {
        let (r, w) = nix::unistd::pipe().unwrap();
        // SAFETY: the child only makes raw syscalls (unshare, write, pause).
        match unsafe { nix::unistd::fork() }.unwrap() {
            nix::unistd::ForkResult::Child => unsafe {
                libc::unshare(libc::CLONE_NEWUSER);
                libc::write(w.as_raw_fd(), b"x".as_ptr().cast(), 1);
                loop {
                    libc::pause();
                }
            },
            nix::unistd::ForkResult::Parent { child } => {
                drop(w);
                nix::unistd::read(r.as_raw_fd(), &mut [0u8]).unwrap();
                let ns = std::fs::File::open(format!("/proc/{child}/ns/user")).unwrap();
                (child, ns)
            }
        }
    }

    #[test]
    fn a_namespace_exists_exactly_while_referenced() {
        if !nix::unistd::geteuid().is_root() {
            return;
        }
        let (child, ns) = child_userns();
        let handle = NsHandle::of(ns.as_fd()).unwrap();
        let id = ns_id(ns.as_fd()).unwrap();
        assert!(handle.exists().unwrap());
        let reopened = handle.open().unwrap();
        assert_eq!(ns_id(reopened.as_fd()).unwrap(), id);
        drop(reopened);
        nix::sys::signal::kill(child, nix::sys::signal::Signal::SIGKILL).unwrap();
        nix::sys::wait::waitpid(child, None).unwrap();
        // The fd alone keeps it.
        assert!(handle.exists().unwrap());
        drop(ns);
        // The kernel frees a user namespace from a work queue, a moment after the last put.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while handle.exists().unwrap() {
            assert!(std::time::Instant::now() < deadline, "namespace never went");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let own = std::fs::File::open("/proc/self/ns/user").unwrap();
        assert_ne!(ns_id(own.as_fd()).unwrap(), id);
    }
}
