//! sysinfo(2) that tells the container's limits. lxcfs makes /proc/meminfo and /proc/uptime the
//! container's, but a program that asks the kernel directly (busybox's `free` and `uptime`,
//! glibc's `get_phys_pages`, which JVMs and build tools size themselves by) gets the host's. So
//! every container process carries a second seccomp filter that hands each `sysinfo` call to a
//! supervisor (seccomp user notification, as Incus's `security.syscalls.intercept.sysinfo`):
//! a small process of the runtime's, outside the container, that answers from the caller's
//! cgroups and the container's start time.
//!
//! - The init (and each exec'd process) installs the filter just before its exec and sends the
//!   listener fd to the CLI, which forks the supervisor with it as stdin.
//! - The supervisor ends when every process under that filter is gone (the listener hangs up).
//! - Without a supervisor (killed), the container's `sysinfo` fails with ENOSYS; nothing else
//!   changes. `org.burrow.sysinfo=false` opts a container out.
//!
//! seccompiler (the system profile's compiler) has no user-notification action, and libseccomp
//! would link a C library into the CLI for three ioctls: the six-instruction filter and the
//! ioctls are written here, on libc's definitions.

mod answer;
mod supervisor;

use std::collections::HashMap;
use std::os::fd::{FromRawFd, OwnedFd};

use seccompiler::sock_filter;

use crate::seccomp::insn;

pub use supervisor::{spawn, SupervisorError};

/// The annotation that opts one container out: `org.burrow.sysinfo=false`.
pub const ANNOTATION: &str = "org.burrow.sysinfo";

/// The sysinfo filter for a process of the container whose spec has `annotations`, unless
/// they opt out.
pub fn filter_for(annotations: Option<&HashMap<String, String>>) -> Option<Vec<sock_filter>> {
    wanted(annotations).then(filter)
}

/// Whether the container's processes get the sysinfo filter.
fn wanted(annotations: Option<&HashMap<String, String>>) -> bool {
    let opted_out = annotations
        .and_then(|a| a.get(ANNOTATION))
        .is_some_and(|v| v == "false");
    crate::log::debug(if opted_out {
        format!("sysinfo: the host's, the spec says {ANNOTATION}=false")
    } else {
        "sysinfo: answered from the container's cgroups by a supervisor".to_string()
    });
    !opted_out
}

/// What `burrow features` says of it.
pub fn feature() -> String {
    format!(
        "on: sysinfo(2) answers from the caller's memory and pids cgroups and the container's \
         start time (a seccomp-notify supervisor per process tree); {ANNOTATION}=false opts a \
         container out"
    )
}

/// The filter: the native architecture's `sysinfo` goes to the listener, everything else is
/// allowed (the system profile, installed first, already kills other architectures' calls and
/// denies x32's).
fn filter() -> Vec<sock_filter> {
    use libc::{BPF_ABS, BPF_JEQ, BPF_JMP, BPF_K, BPF_LD, BPF_RET, BPF_W};
    // Offsets of `nr` and `arch` in `struct seccomp_data`.
    const NR: u32 = 0;
    const ARCH: u32 = 4;
    vec![
        insn(BPF_LD | BPF_W | BPF_ABS, 0, 0, ARCH),
        insn(BPF_JMP | BPF_JEQ | BPF_K, 0, 3, native_audit_arch()),
        insn(BPF_LD | BPF_W | BPF_ABS, 0, 0, NR),
        insn(BPF_JMP | BPF_JEQ | BPF_K, 0, 1, libc::SYS_sysinfo as u32),
        insn(BPF_RET | BPF_K, 0, 0, libc::SECCOMP_RET_USER_NOTIF),
        insn(BPF_RET | BPF_K, 0, 0, libc::SECCOMP_RET_ALLOW),
    ]
}

/// `AUDIT_ARCH_*` of the architecture the runtime is built for.
fn native_audit_arch() -> u32 {
    const AUDIT_ARCH_64BIT: u32 = 0x8000_0000;
    const AUDIT_ARCH_LE: u32 = 0x4000_0000;
    if cfg!(target_arch = "x86_64") {
        62 | AUDIT_ARCH_64BIT | AUDIT_ARCH_LE
    } else if cfg!(target_arch = "aarch64") {
        183 | AUDIT_ARCH_64BIT | AUDIT_ARCH_LE
    } else {
        // An architecture not listed: no call matches, the filter allows everything.
        0
    }
}

/// Installs `program` on the calling thread with a new listener and returns the listener.
/// Needs CAP_SYS_ADMIN in the caller's user namespace (or no_new_privs).
pub fn install(program: &[sock_filter]) -> std::io::Result<OwnedFd> {
    let prog = libc::sock_fprog {
        len: program.len() as u16,
        filter: program.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: `prog` points at `program`, alive for the call; seccomp copies the program in.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            libc::SECCOMP_FILTER_FLAG_NEW_LISTENER,
            &prog as *const libc::sock_fprog,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: seccomp returned a new fd (close-on-exec), owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_annotation_opts_out() {
        let off = HashMap::from([(ANNOTATION.to_string(), "false".to_string())]);
        assert!(!wanted(Some(&off)));
        assert!(wanted(None));
    }

    #[test]
    fn the_filter_jumps_stay_inside_it() {
        let program = filter();
        for (at, insn) in program.iter().enumerate() {
            if insn.code as u32 & 0x07 == libc::BPF_JMP {
                let far = at + 1 + insn.jt.max(insn.jf) as usize;
                assert!(far < program.len(), "instruction {at} jumps out");
            }
        }
        assert_ne!(
            native_audit_arch(),
            0,
            "this architecture has no audit arch here"
        );
    }
}
