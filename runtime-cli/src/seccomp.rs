//! The system-container seccomp profile. Capabilities already count only inside the
//! container's user namespace, so the kernel refuses most host-wide operations by itself; this
//! filter is defence in depth against the calls that reach the host kernel as a whole (modules,
//! kexec, raw I/O ports, swap, process accounting) or the host's files by handle. Everything a
//! system container needs — mount, umount2, unshare, setns, keyctl, bpf attach in its own
//! cgroups, reboot of its own pid namespace — stays allowed. A denied call fails with EPERM.
//!
//! On x86_64 the filter also denies the whole **x32 ABI** with EPERM. An x32 call enters the
//! kernel with the x86_64 audit architecture and `__X32_SYSCALL_BIT` set in its number, often a
//! different number than the 64-bit call's (`kexec_load` is 528), so a list of 64-bit numbers
//! never matches it. No distribution ships an x32 userland and most kernels lack the ABI or
//! disable it at boot (this one is built without it), so no system container needs it; denying
//! the ABI outright is simpler and safer than listing each call's x32 numbers. The i386 ABI is
//! no way around the list either: seccompiler's architecture check kills a process that makes
//! a call of any other architecture.

use std::collections::BTreeMap;

use seccompiler::{sock_filter, BpfProgram, SeccompAction, SeccompFilter, TargetArch};

/// Why the filter could not be built.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("seccomp: {0}")]
    Architecture(#[source] seccompiler::BackendError),
    #[error("seccomp filter: {0}")]
    Filter(#[source] seccompiler::BackendError),
    #[error(
        "seccomp filter: seccompiler's program does not start with its architecture check; \
         the x32 ABI cannot be denied"
    )]
    Layout,
}

/// Denied system calls.
pub const DENIED: [(&str, libc::c_long); 14] = [
    ("kexec_load", libc::SYS_kexec_load),
    ("kexec_file_load", libc::SYS_kexec_file_load),
    ("init_module", libc::SYS_init_module),
    ("finit_module", libc::SYS_finit_module),
    ("delete_module", libc::SYS_delete_module),
    ("open_by_handle_at", libc::SYS_open_by_handle_at),
    ("iopl", libc::SYS_iopl),
    ("ioperm", libc::SYS_ioperm),
    ("swapon", libc::SYS_swapon),
    ("swapoff", libc::SYS_swapoff),
    ("acct", libc::SYS_acct),
    ("uselib", libc::SYS_uselib),
    ("lookup_dcookie", libc::SYS_lookup_dcookie),
    ("quotactl", libc::SYS_quotactl),
];

/// The compiled filter, built before any fork (it allocates).
pub fn system_container_filter() -> Result<BpfProgram, SeccompError> {
    let rules = DENIED
        .iter()
        .map(|(_, nr)| (*nr, vec![]))
        .collect::<BTreeMap<_, _>>();
    let arch = TargetArch::try_from(std::env::consts::ARCH).map_err(SeccompError::Architecture)?;
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        arch,
    )
    .map_err(SeccompError::Filter)?;
    let program = BpfProgram::try_from(filter).map_err(SeccompError::Filter)?;
    if cfg!(target_arch = "x86_64") {
        deny_x32(program)
    } else {
        Ok(program)
    }
}

/// `__X32_SYSCALL_BIT`: set in the number of every x32 system call.
const X32_SYSCALL_BIT: u32 = 0x4000_0000;
/// `AUDIT_ARCH_X86_64`, the architecture x32 calls are made with as well.
const AUDIT_ARCH_X86_64: u32 = 62 | 0x8000_0000 | 0x4000_0000;
/// Offsets of `nr` and `arch` in `struct seccomp_data`.
const SECCOMP_DATA_NR: u32 = 0;
const SECCOMP_DATA_ARCH: u32 = 4;

/// One classic-BPF instruction (also for the sysinfo filter, `crate::sysinfo`).
pub fn insn(code: u32, jt: u8, jf: u8, k: u32) -> sock_filter {
    sock_filter {
        code: code as u16,
        jt,
        jf,
        k,
    }
}

/// Puts an "x32: EPERM" test right after seccompiler's architecture check, the first three
/// instructions (load arch; equal to x86_64: skip one; kill). seccompiler's jumps are relative
/// and none crosses that point, so the rest of the program is unchanged. The prefix is checked,
/// so a seccompiler that lays its program out otherwise fails here instead of filtering wrong.
fn deny_x32(mut program: BpfProgram) -> Result<BpfProgram, SeccompError> {
    use libc::{BPF_ABS, BPF_JEQ, BPF_JMP, BPF_JSET, BPF_K, BPF_LD, BPF_RET, BPF_W};
    let arch_check = [
        insn(BPF_LD | BPF_W | BPF_ABS, 0, 0, SECCOMP_DATA_ARCH),
        insn(BPF_JMP | BPF_JEQ | BPF_K, 1, 0, AUDIT_ARCH_X86_64),
        insn(BPF_RET | BPF_K, 0, 0, libc::SECCOMP_RET_KILL_PROCESS),
    ];
    if program.get(..arch_check.len()) != Some(&arch_check[..]) {
        return Err(SeccompError::Layout);
    }
    let x32_guard = [
        insn(BPF_LD | BPF_W | BPF_ABS, 0, 0, SECCOMP_DATA_NR),
        insn(BPF_JMP | BPF_JSET | BPF_K, 0, 1, X32_SYSCALL_BIT),
        insn(
            BPF_RET | BPF_K,
            0,
            0,
            libc::SECCOMP_RET_ERRNO | libc::EPERM as u32,
        ),
    ];
    program.splice(arch_check.len()..arch_check.len(), x32_guard);
    Ok(program)
}

#[cfg(test)]
mod tests {
    #[test]
    fn filter_compiles_and_lists_each_call_once() {
        let program = super::system_container_filter().unwrap();
        assert!(program.len() > super::DENIED.len());
        let mut numbers: Vec<_> = super::DENIED.iter().map(|(_, n)| *n).collect();
        numbers.sort_unstable();
        numbers.dedup();
        assert_eq!(numbers.len(), super::DENIED.len());
    }

    /// The x32 test sits between the architecture check and seccompiler's own program, and
    /// answers EPERM for any number with the x32 bit.
    #[test]
    #[cfg(target_arch = "x86_64")]
    fn x32_guard_follows_the_architecture_check() {
        let program = super::system_container_filter().unwrap();
        assert_eq!(program[3].k, super::SECCOMP_DATA_NR);
        assert_eq!(program[4].k, super::X32_SYSCALL_BIT);
        assert_eq!(program[5].k, libc::SECCOMP_RET_ERRNO | libc::EPERM as u32);
        // seccompiler's own program goes on with its load of the number.
        assert_eq!(program[6].k, super::SECCOMP_DATA_NR);
    }
}
