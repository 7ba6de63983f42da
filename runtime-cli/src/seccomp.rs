//! The system-container seccomp profile. Capabilities already count only inside the
//! container's user namespace, so the kernel refuses most host-wide operations by itself; this
//! filter is defence in depth against the calls that reach the host kernel as a whole (modules,
//! kexec, raw I/O ports, swap, process accounting) or the host's files by handle. Everything a
//! system container needs — mount, umount2, unshare, setns, keyctl, bpf attach in its own
//! cgroups, reboot of its own pid namespace — stays allowed. A denied call fails with EPERM.

use std::collections::BTreeMap;

use seccompiler::{BpfProgram, SeccompAction, SeccompFilter, TargetArch};

use crate::error::{CliError, Result};

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
pub fn system_container_filter() -> Result<BpfProgram> {
    let rules = DENIED
        .iter()
        .map(|(_, nr)| (*nr, vec![]))
        .collect::<BTreeMap<_, _>>();
    let arch = TargetArch::try_from(std::env::consts::ARCH)
        .map_err(|e| CliError::Setup(format!("seccomp: {e}")))?;
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        arch,
    )
    .map_err(|e| CliError::Setup(format!("seccomp filter: {e}")))?;
    filter
        .try_into()
        .map_err(|e: seccompiler::BackendError| CliError::Setup(format!("seccomp filter: {e}")))
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
}
