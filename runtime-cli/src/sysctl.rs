//! The spec's namespaced sysctls, written from the host side into the container's network, ipc
//! and uts namespaces (the container's /proc/sys is read-only), by a forked writer that joins
//! them: the CLI's own namespaces stay the host's. The kernel lets only the global root write
//! a uts sysctl, and only the ipc namespace's own root an ipc or mqueue one: the writer writes
//! the others as the host's root, then joins the container's user namespace as its root for
//! those.

use std::ffi::CString;
use std::io::Read;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use burrow_sys::fork::{fork_child, Keep, ParentExit};
use nix::errno::Errno;
use nix::sys::wait::WaitStatus;
use oci_spec::runtime::Spec;

use crate::error::{CliError, Result};

/// The namespaces the writer joins, in this order; the user namespace last, for the sysctls
/// only the ipc namespace's root may write.
const NAMESPACES: [&str; 4] = ["net", "ipc", "uts", "user"];
const USER: usize = 3;

/// Why the sysctls were not all written.
#[derive(Debug, thiserror::Error)]
pub enum SysctlError {
    #[error("sysctl {key:?} contains a NUL byte")]
    NulByte {
        key: String,
        #[source]
        source: std::ffi::NulError,
    },
    #[error("setting sysctls: joining the container's {namespace} namespace: {source}")]
    Join {
        namespace: &'static str,
        #[source]
        source: Errno,
    },
    #[error("setting sysctl {key}: {source}")]
    Write {
        key: String,
        #[source]
        source: Errno,
    },
    #[error("setting ipc sysctls: becoming the container's root: {0}")]
    BecomeRoot(#[source] Errno),
    /// The writer ended without saying what failed (killed, say).
    #[error("setting sysctls {keys:?}: the writer ended ({status:?}) without a report")]
    Ended {
        keys: Vec<String>,
        status: WaitStatus,
    },
}

/// What the writer reports when a step fails: the step, the index of its namespace or key,
/// the errno. Plain integers, written with one system call.
const JOIN: i32 = 1;
const WRITE: i32 = 2;
const BECOME_ROOT: i32 = 3;
const REPORT_LEN: usize = 12;

/// Writes the spec's sysctls into the namespaces of the container's init `pid`. Every key is
/// namespaced (`Bundle::load` refuses the others).
pub fn write(spec: &Spec, pid: i32) -> Result<()> {
    let sysctls = spec
        .linux()
        .as_ref()
        .and_then(|l| l.sysctl().clone())
        .unwrap_or_default();
    if sysctls.is_empty() {
        return Ok(());
    }
    let namespaces: Vec<OwnedFd> = NAMESPACES
        .iter()
        .map(|n| {
            std::fs::File::open(format!("/proc/{pid}/ns/{n}"))
                .map(Into::into)
                .map_err(CliError::io(format!(
                    "opening the container's {n} namespace"
                )))
        })
        .collect::<Result<_>>()?;
    // Prepared here: the writer only makes system calls. The ipc namespace's root's last.
    let mut sysctls: Vec<(String, String)> = sysctls.into_iter().collect();
    sysctls.sort_by_key(|(key, _)| is_ipc_sysctl(key));
    let files: Vec<(String, CString, Vec<u8>)> = sysctls
        .into_iter()
        .map(|(key, value)| {
            let path = CString::new(crate::spec::sysctl_file(&key)).map_err(|source| {
                SysctlError::NulByte {
                    key: key.clone(),
                    source,
                }
            })?;
            Ok((key, path, value.into_bytes()))
        })
        .collect::<Result<_>>()?;
    let (report_r, report_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(CliError::io("making the sysctl writer's pipe"))?;
    let keep = Keep::nothing()
        .and_all(namespaces.iter().map(AsFd::as_fd))
        .and(report_w.as_fd());
    let writer = || write_in_namespaces(&namespaces, &files, report_w.as_fd());
    // SAFETY: the writer makes only raw system calls on memory prepared above, so it is sound
    // even if the bus's runtime started a thread by now; it drops no fd wrapper but the one it
    // opens itself. No death signal, as before: it ends by itself.
    let child = unsafe { fork_child(keep, ParentExit::Survive, writer) }
        .map_err(CliError::fork("sysctl writer"))?;
    drop(report_w);
    outcome(child, report_r, &files)
}

/// What the writer `child` reports on `report` (nothing if it wrote everything), once it ended.
fn outcome(
    child: nix::unistd::Pid,
    report: OwnedFd,
    files: &[(String, CString, Vec<u8>)],
) -> Result<()> {
    let mut bytes = vec![];
    let read = std::fs::File::from(report).read_to_end(&mut bytes);
    let status = nix::sys::wait::waitpid(child, None)
        .map_err(CliError::io("waiting for the sysctl writer"))?;
    read.map_err(CliError::io("reading the sysctl writer's report"))?;
    let ended = || SysctlError::Ended {
        keys: files.iter().map(|(key, _, _)| key.clone()).collect(),
        status,
    };
    match <[u8; REPORT_LEN]>::try_from(&bytes[..]) {
        Ok(report) => Err(failure(&report, files).unwrap_or_else(ended).into()),
        Err(_) if bytes.is_empty() && status == WaitStatus::Exited(child, 0) => Ok(()),
        Err(_) => Err(ended().into()),
    }
}

/// Whether only the ipc namespace's root may write sysctl `key` (the kernel's ipc and mqueue
/// sysctl permissions).
fn is_ipc_sysctl(key: &str) -> bool {
    ["kernel.shm", "kernel.msg", "kernel.sem", "fs.mqueue."]
        .iter()
        .any(|prefix| key.starts_with(prefix))
}

/// The writer: joins the net, ipc and uts namespaces, writes each file, becoming the
/// container's root before the first ipc one; at the first failure, reports it on `report`
/// and leaves with 1.
fn write_in_namespaces(
    namespaces: &[OwnedFd],
    files: &[(String, CString, Vec<u8>)],
    report: BorrowedFd<'_>,
) -> i32 {
    let tell = |step: i32, index: usize, errno: i32| {
        let mut bytes = [0u8; REPORT_LEN];
        bytes[..4].copy_from_slice(&step.to_ne_bytes());
        bytes[4..8].copy_from_slice(&(index as i32).to_ne_bytes());
        bytes[8..].copy_from_slice(&errno.to_ne_bytes());
        let _ = rustix::io::write(report, &bytes);
        1
    };
    for (index, ns) in namespaces[..USER].iter().enumerate() {
        if let Err(e) = nix::sched::setns(ns, nix::sched::CloneFlags::empty()) {
            return tell(JOIN, index, e as i32);
        }
    }
    let mut container_root = false;
    for (index, (key, path, value)) in files.iter().enumerate() {
        if !container_root && is_ipc_sysctl(key) {
            if let Err(e) = nix::sched::setns(&namespaces[USER], nix::sched::CloneFlags::empty()) {
                return tell(JOIN, USER, e as i32);
            }
            let root = nix::unistd::setresgid(0.into(), 0.into(), 0.into())
                .and(nix::unistd::setresuid(0.into(), 0.into(), 0.into()));
            if let Err(e) = root {
                return tell(BECOME_ROOT, 0, e as i32);
            }
            container_root = true;
        }
        if let Err(e) = crate::process::write_file(path, value) {
            return tell(WRITE, index, e.raw_os_error());
        }
    }
    0
}

/// The failure a writer's report names; None for a report that names no step of its.
fn failure(report: &[u8; REPORT_LEN], files: &[(String, CString, Vec<u8>)]) -> Option<SysctlError> {
    let field = |at: usize| i32::from_ne_bytes(report[at..at + 4].try_into().expect("4 bytes"));
    let index = usize::try_from(field(4)).ok()?;
    let source = Errno::from_raw(field(8));
    match field(0) {
        JOIN => Some(SysctlError::Join {
            namespace: NAMESPACES.get(index)?,
            source,
        }),
        WRITE => Some(SysctlError::Write {
            key: files.get(index)?.0.clone(),
            source,
        }),
        BECOME_ROOT => Some(SysctlError::BecomeRoot(source)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(step: i32, index: i32, errno: i32) -> [u8; REPORT_LEN] {
        let mut bytes = [0u8; REPORT_LEN];
        for (at, field) in [step, index, errno].into_iter().enumerate() {
            bytes[at * 4..at * 4 + 4].copy_from_slice(&field.to_ne_bytes());
        }
        bytes
    }

    /// A writer's report names the namespace or the key and keeps the errno; one that names
    /// nothing of this write is no failure of it (the caller says the writer just ended).
    #[test]
    fn a_report_names_the_step_and_keeps_the_errno() {
        let files = vec![(
            "net.ipv4.ip_forward".to_string(),
            CString::new("/proc/sys/net/ipv4/ip_forward").unwrap(),
            b"1".to_vec(),
        )];
        let join = failure(&report(JOIN, 1, libc::EPERM), &files).unwrap();
        assert!(
            matches!(
                join,
                SysctlError::Join {
                    namespace: "ipc",
                    source: Errno::EPERM
                }
            ),
            "{join}"
        );
        let write = failure(&report(WRITE, 0, libc::EACCES), &files).unwrap();
        assert_eq!(
            write.to_string(),
            "setting sysctl net.ipv4.ip_forward: EACCES: Permission denied"
        );
        for bad in [
            report(WRITE, 1, 1),
            report(JOIN, 4, 1),
            report(JOIN, -1, 1),
            report(7, 0, 1),
        ] {
            assert!(failure(&bad, &files).is_none());
        }
    }
}
