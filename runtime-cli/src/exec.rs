//! `burrow exec`: a new process in a running container. A forked child joins the container's
//! user namespace (and becomes root there), its mount, uts, ipc, network and cgroup namespaces,
//! then clones the process into the pid namespace as a child of the CLI; the process sets up
//! its terminal and user like the init and execs. Nothing here runs a binary the container can
//! reach before the final exec, and the joining processes are non-dumpable.

use std::os::fd::OwnedFd;
use std::path::Path;

use crate::error::{CliError, Result};
use crate::process;
use crate::state::{Status, Store};

pub struct ExecOptions<'a> {
    pub id: &'a str,
    pub process: oci_spec::runtime::Process,
    pub detach: bool,
    pub pid_file: Option<&'a Path>,
    pub console_socket: Option<&'a Path>,
    pub preserve_fds: i32,
}

/// The container's namespaces exec's process enters, user first (which makes the joiner root
/// for the others) and pid last (entered by the clone): its time namespace only if it has
/// one of its own, as joining the host's would need the host's CAP_SYS_ADMIN.
fn namespaces_to_join(pid: i32) -> Vec<&'static str> {
    use std::os::unix::fs::MetadataExt;
    let inode = |path: &str| std::fs::metadata(path).map(|m| m.ino()).ok();
    let own_time = inode(&format!("/proc/{pid}/ns/time"))
        .is_some_and(|theirs| inode("/proc/self/ns/time") != Some(theirs));
    let mut kinds = vec!["user", "mnt", "uts", "ipc", "net", "cgroup"];
    if own_time {
        kinds.push("time");
    }
    kinds.push("pid");
    kinds
}

/// The container's cgroup, which the exec'd process starts in: only for root, as a tenant's
/// container cgroup is delegated to the container's root, not to the tenant.
fn joined_cgroup(record: &crate::state::Record) -> Result<Option<process::Cgroup>> {
    match &record.cgroup {
        Some(path) if nix::unistd::geteuid().is_root() => Ok(Some(crate::container::cgroup_entry(
            burrow_sys::cgroup::entry(path),
        )?)),
        _ => Ok(None),
    }
}

/// Starts the process; returns its exit code (0 at once with --detach).
pub fn exec(store: &Store, options: &ExecOptions<'_>) -> Result<i32> {
    let record = store.load(options.id)?;
    let status = record.status(store);
    if status != Status::Running && status != Status::Created {
        return Err(CliError::WrongState {
            id: options.id.into(),
            status: status.as_str().into(),
            need: "exec needs a running container".into(),
        });
    }
    crate::spec::check_process_refusals(&options.process)?;
    let mut config =
        crate::container::process_config(&options.process, &record.rootfs, options.preserve_fds)?;
    // The container's personality and memory policy are every one of its processes'.
    let spec = crate::spec::read_config(&record.bundle)?;
    crate::container::linux_tuning(&spec, &mut config.tuning)?;
    config.sysinfo_filter = crate::sysinfo::filter_for(Some(&record.annotations));
    crate::container::set_inherited_oom_score_adj(&options.process)?;
    let mut namespaces = vec![];
    for what in namespaces_to_join(record.pid) {
        let file = std::fs::File::open(format!("/proc/{}/ns/{what}", record.pid)).map_err(
            CliError::io(format!("opening the container's {what} namespace")),
        )?;
        namespaces.push((OwnedFd::from(file), what));
    }
    if !record.init_alive() {
        return Err(CliError::WrongState {
            id: options.id.into(),
            status: "stopped".into(),
            need: "exec needs a running container".into(),
        });
    }
    let cgroup = joined_cgroup(&record)?;
    let (channel, theirs) = process::pair()?;
    // SAFETY: this command starts no thread before forking, so this process is
    // single-threaded.
    let joiner_pid =
        unsafe { process::joiner::spawn(&namespaces, cgroup.as_ref(), &config, theirs) }
            .map_err(CliError::fork("joiner"))?;
    drop(namespaces);
    // Killed if exec fails once it runs (its console or pid file could not be handed over).
    let mut started = None;
    let result = (|| -> Result<i32> {
        let (new, ready) = channel.wait_for_process("exec")?;
        let pid = *started.insert(new.as_raw());
        crate::container::forward_console(ready.console, options.console_socket)?;
        if let Some(listener) = ready.sysinfo {
            crate::sysinfo::spawn(listener, record.pid, None)?;
        }
        if let Some(pid_file) = options.pid_file {
            crate::container::write_pid_file(pid_file, pid)?;
        }
        if options.detach {
            return Ok(0);
        }
        Ok(
            match nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None) {
                Ok(nix::sys::wait::WaitStatus::Exited(_, code)) => code,
                Ok(nix::sys::wait::WaitStatus::Signaled(_, signal, _)) => 128 + signal as i32,
                _ => 255,
            },
        )
    })();
    let _ = nix::sys::wait::waitpid(joiner_pid, None);
    if result.is_err() {
        if let Some(pid) = started {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
    result
}
