//! create, start, kill, delete: the container's life, with each privileged step asked of a
//! helper over the bus.

use std::collections::HashMap;
use std::ffi::CString;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use burrow_contract::mount::{BuildPlan, PlanMount};
use burrow_contract::proxy::{Dev1Proxy, IdMap1Proxy, Mount1Proxy};
use oci_spec::runtime::{Hook, LinuxNamespaceType, Spec};

use crate::error::{CliError, Result};
use crate::keep::Keeping;
use crate::process::{self, ContainerHook, ExecLabel, InitConfig, ParentChannel, ProcessCaps};
use crate::spec::{Bundle, PlannedMount};
use crate::state::{start_time, HookPhase, Record, Status, Store};

pub struct CreateOptions<'a> {
    pub id: &'a str,
    pub bundle: &'a Path,
    pub pid_file: Option<&'a Path>,
    pub console_socket: Option<&'a Path>,
    pub preserve_fds: i32,
    pub systemd_cgroup: bool,
}

/// The range's name at idmapd: the container id, qualified by the state root, so that two
/// runtimes (two `--root`s) can use the same container id.
pub fn range_name(store: &Store, id: &str) -> String {
    let hash = store
        .root
        .to_string_lossy()
        .bytes()
        .fold(0xcbf29ce484222325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100000001b3)
        });
    format!("{:08x}-{id}", hash as u32)
}

/// Why the spec's (or exec's) process cannot be run as it is.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("config.json has no process")]
    Missing,
    #[error("process.args is empty")]
    NoArgs,
    /// A negative count would wrap to a huge one, or to one that closes stderr on exec.
    #[error("--preserve-fds {0}: must not be negative")]
    NegativePreserveFds(i32),
    #[error("unknown rlimit {0:?}")]
    UnknownRlimit(String),
    #[error("process.capabilities: this kernel has no {0}")]
    UnknownCapability(String),
    /// runc's rule: a label the host cannot apply is an error, never silently dropped.
    #[error("process.{field} is {value:?}, but this host has no {lsm}")]
    NoSuchLsm {
        field: &'static str,
        value: String,
        lsm: &'static str,
    },
    #[error(transparent)]
    Tuning(#[from] crate::process::tuning::TuningError),
    #[error("process.consoleSize {height}x{width}: a terminal has at most 65535 rows and columns")]
    ConsoleSize { height: u64, width: u64 },
    #[error("{what} contains a NUL byte")]
    NulByte {
        what: &'static str,
        #[source]
        source: std::ffi::NulError,
    },
}

fn cstring(s: &str, what: &'static str) -> std::result::Result<CString, ProcessError> {
    CString::new(s).map_err(|source| ProcessError::NulByte { what, source })
}

/// The init's configuration from a loaded bundle's spec (its exec fifo is the caller's to add).
pub fn init_config(spec: &Spec, rootfs: &Path, preserve_fds: i32) -> Result<InitConfig> {
    let process = spec.process().as_ref().ok_or(ProcessError::Missing)?;
    let mut config = process_config(process, rootfs, preserve_fds)?;
    // An empty name is none, as for runc: the new UTS namespace keeps the host's hostname and
    // its own domain name, "(none)".
    let uts_name = |name: &Option<String>, what| {
        name.as_deref()
            .filter(|n| !n.is_empty())
            .map(|n| cstring(n, what))
            .transpose()
    };
    config.hostname = uts_name(spec.hostname(), "hostname")?;
    config.domainname = uts_name(spec.domainname(), "domainname")?;
    linux_tuning(spec, &mut config.tuning)?;
    // execCPUAffinity is not for the init: the spec keeps it to exec's processes.
    (config.affinity_initial, config.affinity_final) = (None, None);
    config.time_offsets = time_offsets(spec);
    let namespaces = spec
        .linux()
        .as_ref()
        .and_then(|l| l.namespaces().clone())
        .unwrap_or_default();
    if namespaces
        .iter()
        .any(|n| n.typ() == LinuxNamespaceType::Time)
    {
        config.unshare_flags |= libc::CLONE_NEWTIME;
    }
    config.sysinfo_filter = crate::sysinfo::filter_for(spec.annotations().as_ref());
    config.create_container_hooks = container_hooks(spec, "createContainer")?;
    config.start_container_hooks = container_hooks(spec, "startContainer")?;
    Ok(config)
}

/// The container's `linux.personality` and `linux.memoryPolicy`, which every process of the
/// container (the init and exec's) gets.
pub fn linux_tuning(spec: &Spec, tuning: &mut process::Tuning) -> Result<()> {
    let linux = spec.linux().as_ref();
    tuning.personality = linux
        .and_then(|l| l.personality().as_ref())
        .map(process::tuning::persona);
    tuning.memory_policy = linux
        .and_then(|l| l.memory_policy().as_ref())
        .map(process::tuning::mem_policy)
        .transpose()
        .map_err(ProcessError::from)?;
    Ok(())
}

/// `linux.timeOffsets` as /proc/PID/timens_offsets takes them, one clock a line (the clock
/// names and the time namespace itself are checked by `spec::check_refusals`).
fn time_offsets(spec: &Spec) -> Option<String> {
    let offsets = spec.linux().as_ref()?.time_offsets().as_ref()?;
    let mut clocks: Vec<_> = offsets.iter().collect();
    clocks.sort_by_key(|(clock, _)| clock.as_str());
    let text: String = clocks
        .iter()
        .map(|(clock, offset)| {
            format!(
                "{clock} {} {}\n",
                offset.secs().unwrap_or(0),
                offset.nanosecs().unwrap_or(0)
            )
        })
        .collect();
    (!text.is_empty()).then_some(text)
}

/// The spec's hooks of `phase`, which the init runs inside the container.
fn container_hooks(spec: &Spec, phase: &str) -> Result<Vec<ContainerHook>> {
    hooks_of(spec, phase)
        .iter()
        .map(|hook| {
            let path = hook.path().to_string_lossy();
            Ok(ContainerHook {
                path: cstring(&path, "a hook path")?,
                args: match hook.args() {
                    Some(args) if !args.is_empty() => args
                        .iter()
                        .map(|a| cstring(a, "a hook argument"))
                        .collect::<std::result::Result<_, ProcessError>>()?,
                    _ => vec![cstring(&path, "a hook path")?],
                },
                env: hook
                    .env()
                    .iter()
                    .flatten()
                    .map(|e| cstring(e, "a hook's environment"))
                    .collect::<std::result::Result<_, ProcessError>>()?,
                timeout: hook_timeout(hook),
            })
        })
        .collect()
}

pub(crate) fn hook_timeout(hook: &Hook) -> Duration {
    Duration::from_secs(hook.timeout().map_or(120, |t| t.max(1) as u64))
}

/// What a process of the container (the init, or one `exec` starts) needs, prepared before any
/// fork. `rootfs` is where args[0] is looked up in PATH.
pub fn process_config(
    process: &oci_spec::runtime::Process,
    rootfs: &Path,
    preserve_fds: i32,
) -> Result<InitConfig> {
    let args: Vec<String> = process.args().clone().unwrap_or_default();
    if args.is_empty() {
        return Err(ProcessError::NoArgs.into());
    }
    let preserve_fds =
        u32::try_from(preserve_fds).map_err(|_| ProcessError::NegativePreserveFds(preserve_fds))?;
    let env: Vec<String> = process.env().clone().unwrap_or_default();
    let (affinity_initial, affinity_final) = affinities(process)?;
    let program: Vec<String> = if args[0].contains('/') {
        vec![args[0].clone()]
    } else {
        // Looked up now, inside the image, so the init only execs.
        let image = crate::image::Image::open(rootfs)?;
        crate::spec::program_candidates(&args[0], &env)
            .into_iter()
            .filter(|candidate| image.regular_file(candidate).is_some())
            .chain([args[0].clone()])
            .collect()
    };
    crate::log::debug(format!("{:?} is looked up as {program:?}", args[0]));
    let user = process.user();
    let unshare_flags = libc::CLONE_NEWPID
        | libc::CLONE_NEWNET
        | libc::CLONE_NEWIPC
        | libc::CLONE_NEWUTS
        | libc::CLONE_NEWCGROUP;
    Ok(InitConfig {
        args: args
            .iter()
            .map(|a| cstring(a, "an argument"))
            .collect::<std::result::Result<_, ProcessError>>()?,
        env: env
            .iter()
            .map(|e| cstring(e, "an environment variable"))
            .collect::<std::result::Result<_, ProcessError>>()?,
        program: program
            .iter()
            .map(|p| cstring(p, "the program path"))
            .collect::<std::result::Result<_, ProcessError>>()?,
        cwd: cstring(&process.cwd().to_string_lossy(), "cwd")?,
        hostname: None,
        domainname: None,
        rlimits: rlimits(process.rlimits().as_deref().unwrap_or_default())?,
        uid: user.uid(),
        gid: user.gid(),
        additional_gids: user.additional_gids().clone().unwrap_or_default(),
        no_new_privileges: process.no_new_privileges().unwrap_or(false),
        umask: user.umask(),
        exec_labels: exec_labels(process)?,
        device_nodes: vec![],
        capabilities: if user.uid() == 0 {
            None
        } else {
            Some(process_caps(process)?)
        },
        terminal: process.terminal().unwrap_or(false),
        console_size: console_size(process)?,
        time_offsets: None,
        tuning: process_tuning(process)?,
        affinity_initial,
        affinity_final,
        fifo: None,
        preserve_fds,
        unshare_flags,
        seccomp: crate::seccomp::system_container_filter()?,
        sysinfo_filter: None,
        create_container_hooks: vec![],
        start_container_hooks: vec![],
    })
}

/// process.consoleSize as the pty takes it (rows, columns); only with a terminal, as runc.
fn console_size(
    process: &oci_spec::runtime::Process,
) -> std::result::Result<Option<(u16, u16)>, ProcessError> {
    let Some(size) = process
        .console_size()
        .filter(|_| process.terminal() == Some(true))
    else {
        return Ok(None);
    };
    let (height, width) = (size.height(), size.width());
    match (u16::try_from(height), u16::try_from(width)) {
        (Ok(rows), Ok(columns)) => Ok(Some((rows, columns))),
        _ => Err(ProcessError::ConsoleSize { height, width }),
    }
}

/// The process's own ioPriority and scheduler (the container's personality and memory policy
/// are added by [`linux_tuning`]).
fn process_tuning(
    process: &oci_spec::runtime::Process,
) -> std::result::Result<process::Tuning, ProcessError> {
    use process::tuning;
    Ok(process::Tuning {
        io_priority: process
            .io_priority()
            .as_ref()
            .map(|p| tuning::io_priority(p.class(), p.priority()))
            .transpose()?,
        scheduler: process
            .scheduler()
            .as_ref()
            .map(tuning::sched_attr)
            .transpose()?,
        ..Default::default()
    })
}

/// process.execCPUAffinity's `initial` and `final` CPUs; an empty list leaves the affinity as
/// the kernel makes it (the spec's words for `final`).
type Affinities = (Option<nix::sched::CpuSet>, Option<nix::sched::CpuSet>);

fn affinities(
    process: &oci_spec::runtime::Process,
) -> std::result::Result<Affinities, ProcessError> {
    let Some(affinity) = process.exec_cpu_affinity() else {
        return Ok((None, None));
    };
    let cpus = |list: &Option<String>, field| {
        list.as_deref()
            .filter(|l| !l.is_empty())
            .map(|l| process::tuning::cpu_set(field, l))
            .transpose()
    };
    Ok((
        cpus(affinity.initial(), "process.execCPUAffinity.initial")?,
        cpus(
            affinity.cpu_affinity_final(),
            "process.execCPUAffinity.final",
        )?,
    ))
}

/// process.oomScoreAdj, set on this process so that every process it starts inherits it: the
/// container's processes are non-dumpable from their first instruction, so none can open its
/// own /proc file, and a tenant cannot open theirs. The kernel lets a process lower its score
/// only as far as its privileged minimum, as runc's processes in a user namespace.
pub fn set_inherited_oom_score_adj(process: &oci_spec::runtime::Process) -> Result<()> {
    let Some(adj) = process.oom_score_adj() else {
        return Ok(());
    };
    std::fs::write("/proc/self/oom_score_adj", adj.to_string())
        .map_err(CliError::io(format!("setting process.oomScoreAdj {adj}")))
}

/// The extra devices' nodes as the init sets them up.
fn device_nodes(devices: &[crate::spec::ExtraDevice]) -> Result<Vec<process::DeviceNode>> {
    devices
        .iter()
        .map(|d| {
            Ok(process::DeviceNode {
                path: cstring(&format!("/dev/{}", d.name), "a device path")?,
                mode: d.file_mode,
                uid: d.uid,
                gid: d.gid,
            })
        })
        .collect()
}

/// The spec's capability sets, as the kernel names them.
fn process_caps(
    process: &oci_spec::runtime::Process,
) -> std::result::Result<ProcessCaps, ProcessError> {
    let spec = process.capabilities().clone().unwrap_or_default();
    let known = caps::runtime::thread_all_supported();
    let set = |set: &Option<oci_spec::runtime::Capabilities>| {
        set.iter()
            .flatten()
            .map(|cap| {
                let name = format!("CAP_{cap}");
                name.parse::<caps::Capability>()
                    .ok()
                    .filter(|c| known.contains(c))
                    .ok_or(ProcessError::UnknownCapability(name))
            })
            .collect::<std::result::Result<caps::CapsHashSet, _>>()
    };
    Ok(ProcessCaps {
        bounding: spec
            .bounding()
            .as_ref()
            .map(|_| set(spec.bounding()))
            .transpose()?,
        effective: set(spec.effective())?,
        permitted: set(spec.permitted())?,
        inheritable: set(spec.inheritable())?,
        ambient: set(spec.ambient())?,
    })
}

/// The process's AppArmor profile and SELinux label, each written for its exec where the host
/// has that LSM (as runc does), else an error.
fn exec_labels(
    process: &oci_spec::runtime::Process,
) -> std::result::Result<Vec<ExecLabel>, ProcessError> {
    let mut labels = vec![];
    if let Some(profile) = process
        .apparmor_profile()
        .as_deref()
        .filter(|p| !p.is_empty())
    {
        let enabled = std::fs::read_to_string("/sys/module/apparmor/parameters/enabled")
            .is_ok_and(|e| e.trim() == "Y");
        if !enabled {
            return Err(ProcessError::NoSuchLsm {
                field: "apparmorProfile",
                value: profile.into(),
                lsm: "AppArmor",
            });
        }
        let attr = if Path::new("/proc/thread-self/attr/apparmor/exec").exists() {
            "/proc/thread-self/attr/apparmor/exec"
        } else {
            "/proc/thread-self/attr/exec"
        };
        labels.push(ExecLabel {
            attr,
            value: format!("exec {profile}").into_bytes(),
        });
    }
    if let Some(label) = process.selinux_label().as_deref().filter(|l| !l.is_empty()) {
        if !Path::new("/sys/fs/selinux/enforce").exists() {
            return Err(ProcessError::NoSuchLsm {
                field: "selinuxLabel",
                value: label.into(),
                lsm: "SELinux",
            });
        }
        labels.push(ExecLabel {
            attr: "/proc/thread-self/attr/exec",
            value: label.as_bytes().to_vec(),
        });
    }
    Ok(labels)
}

/// The spec's rlimits, with RLIMIT_NOFILE held to the caller's hard limit (raising a hard limit
/// fails inside a user namespace).
fn rlimits(
    limits: &[oci_spec::runtime::PosixRlimit],
) -> Result<Vec<(nix::sys::resource::Resource, u64, u64)>> {
    use nix::sys::resource::{getrlimit, Resource};
    let mut out = vec![];
    for limit in limits {
        let name = serde_json::to_value(limit.typ())
            .ok()
            .and_then(|v| v.as_str().map(String::from))
            .unwrap_or_default();
        let resource = match name.as_str() {
            "RLIMIT_NOFILE" => Resource::RLIMIT_NOFILE,
            "RLIMIT_NPROC" => Resource::RLIMIT_NPROC,
            "RLIMIT_CORE" => Resource::RLIMIT_CORE,
            "RLIMIT_MEMLOCK" => Resource::RLIMIT_MEMLOCK,
            "RLIMIT_STACK" => Resource::RLIMIT_STACK,
            "RLIMIT_AS" => Resource::RLIMIT_AS,
            "RLIMIT_CPU" => Resource::RLIMIT_CPU,
            "RLIMIT_DATA" => Resource::RLIMIT_DATA,
            "RLIMIT_FSIZE" => Resource::RLIMIT_FSIZE,
            "RLIMIT_LOCKS" => Resource::RLIMIT_LOCKS,
            "RLIMIT_MSGQUEUE" => Resource::RLIMIT_MSGQUEUE,
            "RLIMIT_NICE" => Resource::RLIMIT_NICE,
            "RLIMIT_RTPRIO" => Resource::RLIMIT_RTPRIO,
            "RLIMIT_RTTIME" => Resource::RLIMIT_RTTIME,
            "RLIMIT_SIGPENDING" => Resource::RLIMIT_SIGPENDING,
            other => return Err(ProcessError::UnknownRlimit(other.to_string()).into()),
        };
        let (mut soft, mut hard) = (limit.soft(), limit.hard());
        if let Ok((_, current_hard)) = getrlimit(resource) {
            hard = hard.min(current_hard);
            soft = soft.min(hard);
        }
        out.push((resource, soft, hard));
    }
    Ok(out)
}

/// The pid file containerd and Docker read: decimal, no newline, replaced atomically. Whoever
/// can write its directory (a bundle's) may have planted symlinks there, so nothing is opened
/// by a name that could already exist: the pid goes to a new file of a random name made in the
/// directory's fd with O_CREAT|O_EXCL|O_NOFOLLOW, which is then renamed over the path. Like
/// runc, that replaces whatever is at the path; a symlink there is replaced, never followed.
pub fn write_pid_file(path: &Path, pid: i32) -> Result<()> {
    use rustix::fs::{Mode, OFlags};
    let failed = |source: std::io::Error| CliError::PidFile {
        path: path.display().to_string(),
        source,
    };
    let name = path
        .file_name()
        .ok_or_else(|| failed(std::io::ErrorKind::InvalidInput.into()))?;
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let dir = rustix::fs::open(
        parent,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| failed(e.into()))?;
    // Names someone planted in advance only make O_EXCL fail: try others.
    for _ in 0..16 {
        let tmp = format!(".{}.{:016x}", name.to_string_lossy(), random_u64());
        let file = match rustix::fs::openat(
            &dir,
            tmp.as_str(),
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o644),
        ) {
            Ok(fd) => std::fs::File::from(fd),
            Err(rustix::io::Errno::EXIST) => continue,
            Err(e) => return Err(failed(e.into())),
        };
        let written =
            std::io::Write::write_all(&mut &file, pid.to_string().as_bytes()).and_then(|()| {
                rustix::fs::renameat(&dir, tmp.as_str(), &dir, name).map_err(Into::into)
            });
        if let Err(e) = written {
            let _ = rustix::fs::unlinkat(&dir, tmp.as_str(), rustix::fs::AtFlags::empty());
            return Err(failed(e));
        }
        return Ok(());
    }
    Err(failed(std::io::Error::new(
        std::io::ErrorKind::AlreadyExists,
        "no free temporary name beside it",
    )))
}

/// 64 random bits from the kernel (for names others must not guess).
fn random_u64() -> u64 {
    let mut bytes = [0u8; 8];
    // SAFETY: the pointer and length are those of `bytes`, which outlives the call.
    let got = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
    if got != bytes.len() as isize {
        // Never short for 8 bytes once the pool is up; the clock is a fallback, and O_EXCL,
        // not the name, is what keeps the write safe.
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        return now.as_nanos() as u64 ^ u64::from(std::process::id());
    }
    u64::from_ne_bytes(bytes)
}

/// Why a hook the runtime runs on the host failed.
#[derive(Debug, thiserror::Error)]
pub enum HookFailure {
    #[error("could not be started: {0}")]
    Spawn(#[source] std::io::Error),
    #[error("could not be waited for: {0}")]
    Wait(#[source] std::io::Error),
    #[error("failed ({status}): {stderr}")]
    Failed {
        status: std::process::ExitStatus,
        stderr: String,
    },
    #[error("timed out")]
    TimedOut,
}

/// Runs `hooks` with the container's state on stdin, each within its timeout.
pub fn run_hooks(hooks: &[Hook], state: &serde_json::Value, phase: &'static str) -> Result<()> {
    for hook in hooks {
        let began = Instant::now();
        run_hook(hook, state).map_err(|failure| CliError::Hook {
            phase,
            path: hook.path().clone(),
            failure,
        })?;
        crate::log::debug(format!(
            "{phase} hook {:?} ran for {:.1} ms",
            hook.path(),
            began.elapsed().as_secs_f64() * 1000.0
        ));
    }
    Ok(())
}

/// Runs one hook with `state` on its stdin, within its timeout.
fn run_hook(hook: &Hook, state: &serde_json::Value) -> std::result::Result<(), HookFailure> {
    let mut cmd = std::process::Command::new(hook.path());
    if let Some(args) = hook.args() {
        if let Some((first, rest)) = args.split_first() {
            cmd.arg0(first).args(rest);
        }
    }
    if let Some(env) = hook.env() {
        cmd.env_clear();
        for e in env {
            if let Some((k, v)) = e.split_once('=') {
                cmd.env(k, v);
            }
        }
    }
    cmd.stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().map_err(HookFailure::Spawn)?;
    let state = state.to_string();
    let stdin = child.stdin.take().expect("stdin is piped");
    let stderr = child.stderr.take().expect("stderr is piped");
    let mut pipes = burrow_sys::poll::Pipes {
        input: Some((stdin.into(), state.as_bytes())),
        output: Some(stderr.as_fd()),
        kept: vec![],
    };
    let deadline = process::init::deadline_after(hook_timeout(hook));
    let exited = burrow_sys::poll::child_exited_by(child.id() as i32, deadline, &mut pipes)
        .map_err(|e| HookFailure::Wait(e.into()))?;
    if !exited {
        let _ = child.kill();
        let _ = child.wait();
        return Err(HookFailure::TimedOut);
    }
    let status = child.wait().map_err(HookFailure::Wait)?;
    if status.success() {
        return Ok(());
    }
    Err(HookFailure::Failed {
        status,
        stderr: String::from_utf8_lossy(&pipes.kept).trim().to_string(),
    })
}

use std::os::unix::process::CommandExt;

pub fn hooks_of(spec: &Spec, phase: &str) -> Vec<Hook> {
    let Some(hooks) = spec.hooks().as_ref() else {
        return vec![];
    };
    let list = match phase {
        "createRuntime" => hooks.create_runtime(),
        "createContainer" => hooks.create_container(),
        "startContainer" => hooks.start_container(),
        "prestart" => hooks.prestart(),
        "poststart" => hooks.poststart(),
        "poststop" => hooks.poststop(),
        _ => &None,
    };
    list.clone().unwrap_or_default()
}

/// What create leaves behind if it fails half-way, undone in reverse.
struct Undo<'a> {
    store: &'a Store,
    id: String,
    init_pid: Option<i32>,
    range: Option<String>,
    cgroup: Option<String>,
    scope: Option<String>,
    docker_data: Option<PathBuf>,
    /// The range and docker data outlive the container (`keep`): not removed.
    kept: bool,
    armed: bool,
}

impl Undo<'_> {
    fn run(&mut self, rt: &tokio::runtime::Runtime, conn: Option<&zbus::Connection>) {
        if !self.armed {
            return;
        }
        if let Some(pid) = self.init_pid {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
            let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None);
        }
        // A scope is only recorded once the bus connection exists.
        if let (Some(unit), Some(conn)) = (&self.scope, conn) {
            let _ = stop_scope(rt, conn, unit);
        }
        let docker_data = self.docker_data.as_deref().filter(|_| !self.kept);
        let _ = remove_host_side(self.cgroup.as_deref(), docker_data);
        if let (Some(name), Some(conn)) = (&self.range, conn) {
            let _ = rt.block_on(async { IdMap1Proxy::new(conn).await?.release(name).await });
        }
        let _ = self.store.remove(&self.id);
    }
}

pub fn create(store: &Store, options: &CreateOptions<'_>) -> Result<()> {
    let rt = async_runtime()?;
    let mut created = create_on(&rt, store, options)?;
    created.start_supervisor(&rt, store, options.id)
}

/// What [`create_on`] leaves to its caller.
pub struct Created {
    /// The bus connection create made, for `run`'s delete.
    pub conn: Option<zbus::Connection>,
    /// The container's sysinfo supervisor, to start: `create` starts it at once, `run` once
    /// the container is started, so that its fork and exec are not on the way to the
    /// container's first instruction (a sysinfo call meanwhile waits for it).
    supervisor: Option<PendingSupervisor>,
}

impl Created {
    /// Starts the sysinfo supervisor; if that fails, container `id` is deleted, as a create
    /// that fails leaves nothing.
    pub fn start_supervisor(
        &mut self,
        rt: &tokio::runtime::Runtime,
        store: &Store,
        id: &str,
    ) -> Result<()> {
        let Some(supervisor) = self.supervisor.take() else {
            return Ok(());
        };
        let started = supervisor.start();
        if started.is_err() {
            let _ = delete_on(rt, self.conn.clone(), store, id, true);
        }
        started
    }
}

/// The sysinfo supervisor of a container's init (see [`crate::sysinfo`]), not started yet.
struct PendingSupervisor {
    listener: OwnedFd,
    init: i32,
    mount_namespace: Option<OwnedFd>,
}

impl PendingSupervisor {
    fn start(self) -> Result<()> {
        Ok(crate::sysinfo::spawn(
            self.listener,
            self.init,
            self.mount_namespace,
        )?)
    }
}

/// `create` on the caller's runtime `rt`, which must be current-thread and have spawned no
/// thread yet (create forks).
pub fn create_on(
    rt: &tokio::runtime::Runtime,
    store: &Store,
    options: &CreateOptions<'_>,
) -> Result<Created> {
    crate::state::check_id(options.id)?;
    let bundle = Bundle::load(options.bundle)?;
    let dir = store.dir(options.id);
    std::fs::create_dir(&dir).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            CliError::Exists(options.id.to_string())
        } else {
            CliError::io(format!("creating {}", dir.display()))(e)
        }
    })?;
    // The init, as the container's root, must reach the fifo through this directory.
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o711))
        .map_err(CliError::io("chmod state dir"))?;
    let mut undo = Undo {
        store,
        id: options.id.to_string(),
        init_pid: None,
        range: None,
        cgroup: None,
        scope: None,
        docker_data: None,
        kept: false,
        armed: true,
    };
    let creation = Creation {
        store,
        options,
        bundle: &bundle,
        rt,
    };
    let mut conn = None;
    let result = create_steps(&creation, &mut conn, &mut undo);
    if result.is_err() {
        undo.run(rt, conn.as_ref());
    }
    result.map(|supervisor| Created { conn, supervisor })
}

/// What every step of `create` reads.
struct Creation<'a> {
    store: &'a Store,
    options: &'a CreateOptions<'a>,
    bundle: &'a Bundle,
    rt: &'a tokio::runtime::Runtime,
}

/// The init, cloned and reported by the intermediate, with what was made for it.
struct Spawned {
    pid: i32,
    /// Host uid and gid of the container's root.
    root_ids: (u32, u32),
    conn: zbus::Connection,
    /// devd's call for the container's /dev, sent once the range was there.
    dev: DevCall,
}

/// devd's answer to come: the /dev it made (an fd of its mount).
type DevCall = tokio::task::JoinHandle<zbus::Result<zbus::zvariant::OwnedFd>>;

fn create_steps(
    c: &Creation<'_>,
    conn_slot: &mut Option<zbus::Connection>,
    undo: &mut Undo<'_>,
) -> Result<Option<PendingSupervisor>> {
    let fifo_path = c.store.dir(c.options.id).join("exec.fifo");
    let joins = crate::namespaces::plan(&c.bundle.spec, c.store)?;
    let mut config = init_config(&c.bundle.spec, &c.bundle.rootfs, c.options.preserve_fds)?;
    config.unshare_flags &= !joins.joined_flags();
    config.fifo = Some(make_exec_fifo(&fifo_path)?);
    config.device_nodes = device_nodes(&c.bundle.extra_devices)?;
    if let Some(process) = c.bundle.spec.process() {
        set_inherited_oom_score_adj(process)?;
    }
    let (channel, theirs) = process::pair()?;
    let join = process::intermediate::Join {
        userns: joins.pod.as_ref().map(|pod| pod.userns.as_fd()),
        enter: joins
            .enter
            .iter()
            .map(|(fd, flag)| (fd.as_fd(), *flag))
            .collect(),
    };

    let cgroup = plan_cgroup(c, undo)?;
    let cgroup_entry = match &cgroup {
        CgroupPlan::Made(made) => Some(cgroup_entry(made.entry())?),
        _ => None,
    };
    // Forked while this process has one thread: the children need no async-signal-safety.
    // SAFETY: the runtime `rt` is current-thread and has spawned no thread yet, so this
    // process is single-threaded.
    let intermediate =
        unsafe { process::intermediate::spawn(&config, &join, cgroup_entry.as_ref(), theirs) }
            .map_err(CliError::fork("intermediate"))?;
    drop(cgroup_entry);
    let pod = joins.pod.as_ref().map(|pod| pod.id.as_str());
    let spawned = spawn_init(
        c,
        &channel,
        Started {
            intermediate,
            cgroup,
        },
        pod,
        &fifo_path,
        conn_slot,
        undo,
    );
    if spawned.is_err() {
        // It may still wait for "go".
        let _ = nix::sys::signal::kill(intermediate, nix::sys::signal::Signal::SIGKILL);
    }
    let _ = nix::sys::wait::waitpid(intermediate, None);
    let mut spawned = spawned?;
    if let Some(pod_network) = &joins.adopt_network {
        crate::network::adopt(c.rt, pod_network.as_fd(), spawned.pid)?;
    }
    let mntns = build_mount_namespace(c, &mut spawned, undo.docker_data.as_deref())?;
    finish(c, &channel, &config, mntns, &spawned, undo)
}

/// The fifo the init waits on for `start`, held by an O_PATH fd (opening it for writing
/// would block until `start` reads).
fn make_exec_fifo(path: &Path) -> Result<OwnedFd> {
    nix::unistd::mkfifo(path, nix::sys::stat::Mode::from_bits_truncate(0o600))
        .map_err(CliError::io("mkfifo"))?;
    rustix::fs::open(
        path,
        rustix::fs::OFlags::PATH | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .map_err(CliError::io("opening the exec fifo"))
}

/// The intermediate, forked, and how it gets into the container's cgroup.
struct Started {
    intermediate: nix::unistd::Pid,
    cgroup: CgroupPlan,
}

/// How the container's cgroup is made and the intermediate (so the init it clones) put in it.
enum CgroupPlan {
    /// Root's cgroupfs cgroup, made before the intermediate, which starts in it (see
    /// [`process::intermediate::Cgroup`]); delegated once idmapd has given the range.
    Made(burrow_sys::cgroup::NewCgroup),
    /// Root's systemd scope, started around the intermediate.
    Scope(burrow_sys::cgroup::systemd::ScopeUnit),
    /// A tenant's, made and delegated by idmapd under the admin's limits for the user.
    ByIdmapd,
}

fn plan_cgroup(c: &Creation<'_>, undo: &mut Undo<'_>) -> Result<CgroupPlan> {
    if !nix::unistd::geteuid().is_root() {
        return Ok(CgroupPlan::ByIdmapd);
    }
    if let Some(scope) = systemd_scope(c) {
        return Ok(CgroupPlan::Scope(scope));
    }
    let linux = c.bundle.spec.linux().as_ref();
    let path = burrow_sys::cgroup::path_for(
        linux.and_then(|l| l.cgroups_path().as_deref()),
        c.options.id,
    );
    undo.cgroup = Some(path.clone());
    // Its device policy and limits go on while idmapd allocates (see `restrict_cgroup`).
    Ok(CgroupPlan::Made(burrow_sys::cgroup::create(&path)?))
}

/// Root's cgroup's device policy and the spec's limits, put on while only the intermediate
/// (this program) is in it, before the init is cloned.
fn restrict_cgroup(c: &Creation<'_>, cgroup: &CgroupPlan) -> Result<()> {
    if let CgroupPlan::Made(cgroup) = cgroup {
        cgroup.restrict(&device_policy(c.bundle))?;
        apply_resources(c, cgroup.path())?;
    }
    Ok(())
}

/// What a forked child needs to enter a cgroup: its cgroup2 directory, opened here, and its v1
/// `tasks` files.
pub(crate) fn cgroup_entry(entry: burrow_sys::cgroup::Entry) -> Result<process::Cgroup> {
    let cgroup2 = entry
        .cgroup2_dir
        .map(|dir| {
            rustix::fs::open(
                &dir,
                rustix::fs::OFlags::PATH
                    | rustix::fs::OFlags::DIRECTORY
                    | rustix::fs::OFlags::CLOEXEC,
                rustix::fs::Mode::empty(),
            )
            .map_err(CliError::io(format!("opening cgroup {}", dir.display())))
        })
        .transpose()?;
    let v1_tasks = entry
        .v1_tasks_files
        .into_iter()
        .map(|file| cstring(&file.display().to_string(), "a cgroup path"))
        .collect::<std::result::Result<_, _>>()?;
    Ok(process::Cgroup { cgroup2, v1_tasks })
}

/// Whether the CLI's child `pid` (not reaped) exits within `patience`.
pub fn exits_within(pid: i32, patience: Duration) -> bool {
    let Ok(pidfd) = pidfd_of(pid) else {
        return false;
    };
    burrow_sys::poll::readable_within(pidfd.as_fd(), patience).unwrap_or(false)
}

/// A pidfd of the CLI's child `pid` (not reaped, so the pid is its own).
fn pidfd_of(pid: i32) -> Result<OwnedFd> {
    let what = || format!("pidfd_open of {pid}");
    let pid = rustix::process::Pid::from_raw(pid)
        .ok_or_else(|| CliError::io(what())(rustix::io::Errno::SRCH))?;
    rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty())
        .map_err(CliError::io(what()))
}

/// Until the init exists: the intermediate's user namespace mapped by idmapd (the cgroup's
/// policy put on meanwhile), devd asked for /dev, the exec fifo and /var/lib/docker handed to
/// the container's root, the intermediate in its cgroup, `go`, the cgroup delegated while the
/// init is cloned, and the init's pid.
fn spawn_init(
    c: &Creation<'_>,
    channel: &ParentChannel,
    started: Started,
    pod: Option<&str>,
    fifo_path: &Path,
    conn_slot: &mut Option<zbus::Connection>,
    undo: &mut Undo<'_>,
) -> Result<Spawned> {
    // While the intermediate makes its user namespace: the bus, the slot, gc.
    let conn = system_bus(c.rt)?;
    *conn_slot = Some(conn.clone());
    let name = range_name(c.store, c.options.id);
    let mut keeping = Keeping::prepare(c.rt, &conn, &name, c.bundle)?;
    collect_removed(c.rt, &conn, c.store);
    let userns = channel.wait_for_userns()?;
    let (base, gid_base) = map_range(c, &conn, &userns, &name, pod, &started.cgroup, undo)?;
    undo.kept = pod.is_none() && keeping.keep(c.rt, &conn, c.store, c.options.id, &name)?;
    crate::log::debug(format!(
        "idmapd: range {name} at host ID {base}{}",
        pod.map(|p| format!(", shared with {p}"))
            .unwrap_or_default()
    ));
    let dev = ask_devd(c, &conn, userns);
    let root_ids = (base, gid_base);
    hand_over_fifo(fifo_path, root_ids)?;
    if c.bundle.wants_docker_data {
        let data = keeping.docker_data();
        undo.docker_data = Some(data.clone());
        if !keeping.reuses_docker_data(root_ids.0) {
            make_docker_data(&data, root_ids)?;
        }
    }
    drop(keeping);
    let to_delegate = match started.cgroup {
        CgroupPlan::Made(cgroup) => Some(cgroup),
        CgroupPlan::Scope(scope) => {
            let cgroup = start_scope(c, &conn, &scope, started.intermediate, undo)?;
            // Also into the hierarchies systemd leaves out (v1 freezer, cpuset, ...). The
            // intermediate is this process's child, not yet reaped: its pid is its own.
            cgroup.add(started.intermediate.as_raw())?;
            Some(cgroup)
        }
        CgroupPlan::ByIdmapd => {
            idmapd_cgroup(c, &conn, &name, started.intermediate, undo)?;
            None
        }
    };
    channel.go()?;
    // While the intermediate makes the namespaces and clones the init, which runs nothing of
    // the container's before `start`. The init's pid is read even if this fails, for undo.
    let delegated = to_delegate.map_or(Ok(()), |cgroup| delegate(&cgroup, root_ids, undo));
    let pid = channel.wait_for_init()?.as_raw();
    undo.init_pid = Some(pid);
    delegated?;
    Ok(Spawned {
        pid,
        root_ids,
        conn,
        dev,
    })
}

/// Maps `userns` onto the range `name` (for a pod's member, the pod's range under one more
/// name, freed when its last user releases it), putting root's cgroup policy on meanwhile;
/// the host uid and gid of the namespace's root. idmapd's answer is awaited (and the range
/// left to undo) even if the cgroup step fails.
fn map_range(
    c: &Creation<'_>,
    conn: &zbus::Connection,
    userns: &OwnedFd,
    name: &str,
    pod: Option<&str>,
    cgroup: &CgroupPlan,
    undo: &mut Undo<'_>,
) -> Result<(u32, u32)> {
    let for_idmapd = userns
        .try_clone()
        .map_err(CliError::io("duplicating the user namespace's fd"))?;
    let call = match pod {
        Some(pod) => {
            let (conn, existing, name) = (conn.clone(), range_name(c.store, pod), name.to_string());
            send_now(c.rt, async move {
                let idmapd = IdMap1Proxy::new(&conn).await?;
                idmapd.join(&existing, &name, for_idmapd.into()).await
            })
        }
        // The name's parked range, if it has one.
        None => send_now(
            c.rt,
            crate::keep::allocate_call(conn.clone(), name.to_string(), for_idmapd),
        ),
    };
    let restricted = restrict_cgroup(c, cgroup);
    let (base, gid_base, _) = match pod {
        Some(_) => answer(c.rt, call).map_err(CliError::helper("idmapd"))?,
        None => crate::keep::allocated(c.rt, conn, name, userns, answer(c.rt, call))?,
    };
    undo.range = Some(name.to_string());
    restricted.map(|()| (base, gid_base))
}

/// Puts `call` on the bus now, to be answered while this process does other work: one turn
/// of this current-thread runtime runs the task up to its wait for the answer.
fn send_now<T: Send + 'static>(
    rt: &tokio::runtime::Runtime,
    call: impl std::future::Future<Output = zbus::Result<T>> + Send + 'static,
) -> tokio::task::JoinHandle<zbus::Result<T>> {
    let pending = rt.spawn(call);
    rt.block_on(tokio::task::yield_now());
    pending
}

/// The answer to a call [`send_now`] sent.
fn answer<T>(
    rt: &tokio::runtime::Runtime,
    pending: impl std::future::Future<
        Output = std::result::Result<zbus::Result<T>, tokio::task::JoinError>,
    >,
) -> zbus::Result<T> {
    rt.block_on(pending)
        .unwrap_or_else(|lost| Err(zbus::Error::Failure(format!("the call was lost: {lost}"))))
}

/// Sends devd the call for the container's /dev (it needs only the mapped user namespace), so
/// that devd makes it while this process delegates the cgroup and the init is cloned; its
/// answer is read by [`build_mount_namespace`].
fn ask_devd(c: &Creation<'_>, conn: &zbus::Connection, userns: OwnedFd) -> DevCall {
    let extra: Vec<String> = c
        .bundle
        .extra_devices
        .iter()
        .map(|d| d.name.clone())
        .collect();
    let conn = conn.clone();
    send_now(c.rt, async move {
        let options: HashMap<&str, zbus::zvariant::Value<'_>> = if extra.is_empty() {
            HashMap::new()
        } else {
            HashMap::from([("extra", extra.into())])
        };
        Dev1Proxy::new(&conn)
            .await?
            .create(userns.into(), options)
            .await
    })
}

/// Frees what removed containers of `store` left (`burrow gc`), as each create does: a
/// failure here is gc's to report, never create's.
fn collect_removed(rt: &tokio::runtime::Runtime, conn: &zbus::Connection, store: &Store) {
    match crate::keep::collect(rt, conn, Some(&crate::keep::state_root(store))) {
        Ok((collected, failed)) => {
            for gone in collected {
                crate::log::debug(format!("gc: freed removed container {}", gone.id));
            }
            for e in failed {
                crate::log::debug(format!("gc: {e}"));
            }
        }
        Err(e) => crate::log::debug(format!("gc: {e}")),
    }
}

/// Lets the init reopen the exec fifo through its fd once it is the process's user: the
/// container's root, or any user of the container (0622, as runc makes it). Nobody else can
/// reach the fifo inside the caller's private state directory.
fn hand_over_fifo(fifo_path: &Path, (uid, gid): (u32, u32)) -> Result<()> {
    if nix::unistd::geteuid().is_root() {
        std::os::unix::fs::chown(fifo_path, Some(uid), Some(gid))
            .map_err(CliError::io("chown exec fifo"))?;
    }
    std::fs::set_permissions(fifo_path, std::fs::Permissions::from_mode(0o622))
        .map_err(CliError::io("chmod exec fifo"))
}

/// A tenant's intermediate (and so the init it clones) into the cgroup idmapd makes and
/// delegates (and removes with the range), under the limits the admin set for this user.
fn idmapd_cgroup(
    c: &Creation<'_>,
    conn: &zbus::Connection,
    name: &str,
    intermediate: nix::unistd::Pid,
    undo: &mut Undo<'_>,
) -> Result<()> {
    let process = pidfd_of(intermediate.as_raw())?;
    let cgroup =
        c.rt.block_on(async {
            IdMap1Proxy::new(conn)
                .await?
                .add_control_group(name, process.into())
                .await
        })
        .map_err(CliError::helper("idmapd"))?;
    crate::log::debug(format!("idmapd: delegated cgroup {cgroup}"));
    undo.cgroup = Some(cgroup);
    Ok(())
}

/// Hands root's container cgroup to the container's root.
fn delegate(
    cgroup: &burrow_sys::cgroup::NewCgroup,
    root_ids: (u32, u32),
    undo: &Undo<'_>,
) -> Result<()> {
    cgroup.delegate(root_ids)?;
    crate::log::debug(format!(
        "cgroup {}, delegated to host uid {}",
        undo.cgroup.as_deref().unwrap_or_default(),
        root_ids.0
    ));
    Ok(())
}

/// devd's standard set and the extras it added for the spec's linux.devices.
fn device_policy(bundle: &Bundle) -> burrow_sys::cgroup::DevicePolicy {
    bundle
        .extra_devices
        .iter()
        .fold(burrow_sys::cgroup::DevicePolicy::standard(), |policy, d| {
            policy.with(d.major, d.minor)
        })
}

/// The spec's whole resources, as runc's cgroupfs driver applies them (under a scope too:
/// systemd manages only some of them).
fn apply_resources(c: &Creation<'_>, path: &str) -> Result<()> {
    let linux = c.bundle.spec.linux().as_ref();
    if let Some(resources) = linux.and_then(|l| l.resources().as_ref()) {
        burrow_sys::cgroup::resources::apply(path, resources)?;
    }
    Ok(())
}

/// Root's container cgroup as a systemd scope holding the intermediate, with the spec's
/// limits as its properties and the device policy.
fn start_scope(
    c: &Creation<'_>,
    conn: &zbus::Connection,
    scope: &burrow_sys::cgroup::systemd::ScopeUnit,
    intermediate: nix::unistd::Pid,
    undo: &mut Undo<'_>,
) -> Result<burrow_sys::cgroup::NewCgroup> {
    let limits = c
        .bundle
        .spec
        .linux()
        .as_ref()
        .and_then(|l| l.resources().as_ref())
        .map(crate::spec::limits_of)
        .unwrap_or_default();
    let devices = burrow_sys::cgroup::systemd::as_systemd_states_it(device_policy(c.bundle));
    let path = c.rt.block_on(burrow_sys::cgroup::systemd::start_scope(
        conn,
        scope,
        intermediate.as_raw(),
        &limits,
        &devices,
    ))?;
    // Only once started: a scope of that name that was there before is not ours.
    undo.scope = Some(scope.unit.clone());
    crate::log::debug(format!("systemd: scope {} at {path}", scope.unit));
    undo.cgroup = Some(path.clone());
    let adopted = burrow_sys::cgroup::adopt(&path, &devices)?;
    apply_resources(c, &path)?;
    Ok(adopted)
}

/// The systemd scope to make the container's cgroup as: with `--systemd-cgroup`, a
/// `slice:prefix:name` cgroupsPath, on a host run by systemd. Elsewhere the path is only
/// translated, and the cgroup written directly.
fn systemd_scope(c: &Creation<'_>) -> Option<burrow_sys::cgroup::systemd::ScopeUnit> {
    let path = c.bundle.spec.linux().as_ref()?.cgroups_path().as_deref()?;
    let wanted = c.options.systemd_cgroup && burrow_sys::cgroup::systemd::host_runs_systemd();
    wanted
        .then(|| burrow_sys::cgroup::systemd::ScopeUnit::parse(path))
        .flatten()
}

/// The fds mountd gets (the rootfs first, then each bind's source, opened O_PATH here: mountd
/// never resolves a caller's path) and the mounts that refer to them.
fn plan_mounts(
    bundle: &Bundle,
    docker_data: Option<&Path>,
) -> Result<(Vec<OwnedFd>, Vec<PlanMount>)> {
    let open_path = |path: &Path| -> Result<OwnedFd> {
        rustix::fs::open(
            path,
            rustix::fs::OFlags::PATH | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )
        .map_err(|e| CliError::MountSource {
            bundle: bundle.dir.display().to_string(),
            path: path.to_path_buf(),
            source: e.into(),
        })
    };
    let mut fds: Vec<OwnedFd> = vec![open_path(&bundle.rootfs)?];
    let mut mounts: Vec<PlanMount> = vec![];
    let docker_data = docker_data.map(|dir| PlannedMount {
        destination: crate::spec::DOCKER_DATA.into(),
        typ: "bind".into(),
        source: Some(dir.to_path_buf()),
        // Root made the directory in the container's range: mounted as it is, like Sysbox.
        // Another user's directory is theirs on disk, and mountd maps it to the container root.
        options: ["rbind", "nosuid", "nodev"]
            .into_iter()
            .chain(nix::unistd::geteuid().is_root().then_some("noidmap"))
            .map(String::from)
            .collect(),
    });
    for m in bundle.mounts.iter().chain(docker_data.as_ref()) {
        let source = match &m.source {
            Some(path) => {
                fds.push(open_path(path)?);
                Some((fds.len() - 1) as u32)
            }
            None => None,
        };
        // The typed plan has no spelling for a type mountd does not mount: such a mount is
        // the bundle's fault, named before any helper is asked.
        let mount = PlanMount::new(m.destination.clone(), &m.typ, source, m.options.clone());
        mounts.push(mount.map_err(|e| CliError::Bundle {
            bundle: bundle.dir.display().to_string(),
            reason: e.to_string(),
        })?);
    }
    // One more for devd's /dev.
    if fds.len() + 1 > burrow_contract::mount::MAX_FDS {
        return Err(CliError::Bundle {
            bundle: bundle.dir.display().to_string(),
            reason: format!(
                "{} bind mounts: a container can have at most {}",
                fds.len() - 1,
                burrow_contract::mount::MAX_FDS - 2
            ),
        });
    }
    Ok((fds, mounts))
}

/// /dev from devd (asked by [`ask_devd`]), then the container's whole mount namespace from
/// mountd.
fn build_mount_namespace(
    c: &Creation<'_>,
    spawned: &mut Spawned,
    docker_data: Option<&Path>,
) -> Result<OwnedFd> {
    let bundle = c.bundle;
    let pidfd = pidfd_of(spawned.pid)?;
    let (fds, mounts) = plan_mounts(bundle, docker_data)?;
    let readonly_root = bundle
        .spec
        .root()
        .as_ref()
        .and_then(|r| r.readonly())
        .unwrap_or(false);
    let conn = &spawned.conn;
    let dev = answer(c.rt, &mut spawned.dev).map_err(CliError::helper("devd"))?;
    let mntns =
        c.rt.block_on(async {
            let dev_index = fds.len() as u32;
            let mut wire: Vec<zbus::zvariant::OwnedFd> = fds.into_iter().map(Into::into).collect();
            wire.push(dev);
            let plan = BuildPlan {
                rootfs: 0,
                rootfs_readonly: readonly_root,
                dev: dev_index,
                dev_at: bundle.dev_at as u32,
                mounts,
                masked_paths: bundle.masked.clone(),
                readonly_paths: bundle.readonly.clone(),
                writable_sysctls: bundle.writable_sysctls.clone(),
                lxcfs: crate::lxcfs::wanted(bundle.spec.annotations().as_ref()),
            };
            Mount1Proxy::new(conn)
                .await?
                .build_root(pidfd.into(), &plan, wire)
                .await
        })
        .map_err(CliError::helper("mountd"))?;
    crate::log::debug(format!(
        "devd made /dev, mountd the mount namespace ({} mounts) for init {}",
        bundle.mounts.len(),
        spawned.pid
    ));
    Ok(mntns.into())
}

/// From the mount namespace on: the init joins it; sysctls; the runtime's create hooks, then
/// the container's (the init runs them once it has the state, in the OCI order); the console;
/// the state record and the pid file; the sysinfo supervisor to start.
fn finish(
    c: &Creation<'_>,
    channel: &ParentChannel,
    config: &InitConfig,
    mntns: OwnedFd,
    spawned: &Spawned,
    undo: &mut Undo<'_>,
) -> Result<Option<PendingSupervisor>> {
    let (bundle, pid) = (c.bundle, spawned.pid);
    // For root's sysinfo supervisor (see below). A tenant's supervisor is the tenant's own
    // process, which the tenant may kill: it gets none of the container's fds.
    let held_mntns = nix::unistd::geteuid()
        .is_root()
        .then(|| mntns.try_clone())
        .transpose()
        .map_err(CliError::io("duplicating the mount namespace's fd"))?;
    channel.send_mount_namespace(mntns)?;
    crate::sysctl::write(&bundle.spec, pid)?;
    let record = Record {
        id: c.options.id.to_string(),
        bundle: bundle.dir.clone(),
        rootfs: bundle.rootfs.clone(),
        pid,
        pid_start: start_time(pid).ok_or(CliError::InitDiedDuringCreate)?,
        created: crate::log::now(),
        root_ids: spawned.root_ids,
        cgroup: undo.cgroup.clone(),
        scope: undo.scope.clone(),
        annotations: bundle.spec.annotations().clone().unwrap_or_default(),
        systemd: bundle.systemd,
        docker_data: undo.docker_data.clone(),
        kept: undo.kept,
    };
    let state = record.hook_state(HookPhase::Create);
    run_hooks(&hooks_of(&bundle.spec, "prestart"), &state, "prestart")?;
    run_hooks(
        &hooks_of(&bundle.spec, "createRuntime"),
        &state,
        "createRuntime",
    )?;
    if config.has_container_hooks() {
        channel.send_state(state.as_object().cloned().unwrap_or_default())?;
    }
    let ready = channel.wait_for_ready("setting up the container")?;
    forward_console(ready.console, c.options.console_socket)?;
    c.store.save(&record)?;
    if let Some(pid_file) = c.options.pid_file {
        write_pid_file(pid_file, pid)?;
    }
    undo.armed = false;
    Ok(ready.sysinfo.map(|listener| PendingSupervisor {
        listener,
        init: pid,
        // The namespace mountd built, which the init joined: its teardown is the supervisor's.
        mount_namespace: held_mntns,
    }))
}

/// Sends a new process's pty master, if it has one, to `--console-socket`.
pub fn forward_console(console: Option<OwnedFd>, socket: Option<&Path>) -> Result<()> {
    let Some(master) = console else {
        return Ok(());
    };
    let socket = socket.ok_or(CliError::NoConsoleSocket)?;
    send_console(socket, master.as_fd())
}

/// The host directory for the container's /var/lib/docker: owned by the container's root, in
/// a parent only the runtime's user can enter.
fn make_docker_data(dir: &Path, root_ids: (u32, u32)) -> Result<()> {
    // A leftover of a container that was never deleted must not be handed to a new one.
    remove_docker_data(dir)?;
    let parent = dir.parent().expect("data dir has a parent");
    std::fs::create_dir_all(parent)
        .map_err(CliError::io(format!("creating {}", parent.display())))?;
    std::fs::set_permissions(parent, std::fs::Permissions::from_mode(0o711))
        .map_err(CliError::io(format!("chmod {}", parent.display())))?;
    std::fs::create_dir(dir).map_err(CliError::io(format!("creating {}", dir.display())))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o710))
        .map_err(CliError::io(format!("chmod {}", dir.display())))?;
    if nix::unistd::geteuid().is_root() {
        std::os::unix::fs::chown(dir, Some(root_ids.0), Some(root_ids.1))
            .map_err(CliError::io(format!("chown {}", dir.display())))?;
    }
    Ok(())
}

/// The current-thread async runtime the CLI drives the bus with.
pub fn async_runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(CliError::io("starting the async runtime"))
}

/// A connection to the system bus (the helpers', and systemd's).
pub fn system_bus(rt: &tokio::runtime::Runtime) -> Result<zbus::Connection> {
    let socket = system_bus_socket()?;
    let _runtime = rt.enter();
    let socket = tokio::net::UnixStream::from_std(socket)
        .map_err(CliError::io("registering the system bus socket"))?;
    rt.block_on(zbus::connection::Builder::unix_stream(socket).build())
        .map_err(CliError::helper("system bus"))
}

/// The system bus's socket (`DBUS_SYSTEM_BUS_ADDRESS`, else /var/run/dbus/system_bus_socket),
/// connected here: zbus would connect it on a thread of the runtime's blocking pool, and the
/// CLI must stay single-threaded, as it forks after it (the sysctl writer, the sysinfo
/// supervisor). Only a unix socket will do: the helpers know their callers by its credentials.
fn system_bus_socket() -> Result<std::os::unix::net::UnixStream> {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::{SocketAddr, UnixStream};
    use zbus::address::transport::{Transport, UnixSocket};
    let address = zbus::Address::system().map_err(CliError::helper("system bus address"))?;
    let what = || format!("connecting to the system bus at {address}");
    let socket_address = match address.transport() {
        Transport::Unix(unix) => match unix.path() {
            UnixSocket::File(path) => SocketAddr::from_pathname(path),
            UnixSocket::Abstract(name) => SocketAddr::from_abstract_name(name.as_encoded_bytes()),
            _ => return Err(CliError::SystemBusNotUnix(address.to_string())),
        },
        _ => return Err(CliError::SystemBusNotUnix(address.to_string())),
    }
    .map_err(CliError::io(what()))?;
    let socket = UnixStream::connect_addr(&socket_address).map_err(CliError::io(what()))?;
    socket.set_nonblocking(true).map_err(CliError::io(what()))?;
    Ok(socket)
}

/// Stops the container's systemd scope `unit`; systemd removes the cgroups it made, and what
/// it did not make (v1 freezer, ...) is left to [`remove_host_side`].
fn stop_scope(rt: &tokio::runtime::Runtime, conn: &zbus::Connection, unit: &str) -> Result<()> {
    Ok(rt.block_on(burrow_sys::cgroup::systemd::stop_scope(conn, unit))?)
}

/// idmapd's Release of a range, on the bus (see [`send_now`]) while the caller goes on.
struct PendingRelease {
    name: String,
    call: Option<tokio::task::JoinHandle<zbus::Result<()>>>,
}

/// Sends idmapd the Release of range `name` on `bus`, if the caller has a connection.
fn send_release(
    rt: &tokio::runtime::Runtime,
    bus: Option<&zbus::Connection>,
    name: &str,
) -> PendingRelease {
    let call = bus.map(|conn| {
        let (conn, name) = (conn.clone(), name.to_string());
        send_now(rt, async move {
            IdMap1Proxy::new(&conn).await?.release(&name).await
        })
    });
    PendingRelease {
        name: name.to_string(),
        call,
    }
}

/// idmapd's answer to a Release; sent again on a new connection if there was none, or if the
/// bus has closed it since. A name idmapd does not know is released already.
fn released(rt: &tokio::runtime::Runtime, pending: PendingRelease) -> Result<()> {
    let released = match pending.call.map(|call| answer(rt, call)) {
        // idmapd answered (an error of its own included).
        Some(answer @ (Ok(()) | Err(zbus::Error::MethodError(..)))) => answer,
        _ => {
            let conn = system_bus(rt)?;
            rt.block_on(async { IdMap1Proxy::new(&conn).await?.release(&pending.name).await })
        }
    };
    match released {
        Ok(()) => Ok(()),
        Err(e) if crate::error::error_name(&e) == Some("org.burrow.Error.NotFound") => Ok(()),
        Err(e) => Err(CliError::helper("idmapd")(e)),
    }
}

/// What a container had on the host besides its range (and its systemd scope, stopped first):
/// its cgroup (when the runtime made it; other users' cgroups are idmapd's, removed with the
/// range) and its /var/lib/docker.
fn remove_host_side(cgroup: Option<&str>, docker_data: Option<&Path>) -> Result<()> {
    if let Some(cgroup) = cgroup.filter(|_| nix::unistd::geteuid().is_root()) {
        burrow_sys::cgroup::remove(cgroup);
    }
    docker_data.map_or(Ok(()), remove_docker_data)
}

/// Removes a container's /var/lib/docker directory and its per-container parent. The tree was
/// written by the container; std's remove_dir_all never follows its symlinks.
fn remove_docker_data(dir: &Path) -> Result<()> {
    remove_tree(dir)?;
    if let Some(parent) = dir.parent() {
        let _ = std::fs::remove_dir(parent);
    }
    Ok(())
}

/// Removes the tree `dir`, if there is one. It may hold what a container wrote: std's
/// remove_dir_all never follows its symlinks.
pub(crate) fn remove_tree(dir: &Path) -> Result<()> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(CliError::io(format!("removing {}", dir.display()))(e))
        }
        _ => Ok(()),
    }
}

/// Sends the pty master to the console socket, as runc does.
pub fn send_console(socket: &Path, master: std::os::fd::BorrowedFd<'_>) -> Result<()> {
    let stream = std::os::unix::net::UnixStream::connect(socket).map_err(CliError::io(format!(
        "connecting to console socket {}",
        socket.display()
    )))?;
    process::scm::send(stream.as_fd(), b"/dev/ptmx", Some(master))
        .map_err(CliError::io("sending the console"))
}

pub fn start(store: &Store, id: &str) -> Result<()> {
    let record = store.load(id)?;
    let status = record.status(store);
    if status != Status::Created {
        return Err(CliError::WrongState {
            id: id.into(),
            status: status.as_str().into(),
            need: "only a created container can be started".into(),
        });
    }
    let fifo_path = store.dir(id).join("exec.fifo");
    use rustix::fs::{Mode, OFlags};
    let fifo = rustix::fs::open(
        &fifo_path,
        OFlags::RDONLY | OFlags::NONBLOCK | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(CliError::io("opening the exec fifo"))?;
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut byte = [0u8; 1];
    loop {
        match rustix::io::read(&fifo, &mut byte) {
            Ok(1) => break,
            _ if !record.init_alive() => {
                return Err(CliError::InitExitedBeforeStart { id: id.into() });
            }
            _ if Instant::now() > deadline => {
                return Err(CliError::StartSignalNotTaken { id: id.into() });
            }
            // The writer went without its byte: only an init on its way out does that.
            Ok(0) => std::thread::sleep(Duration::from_millis(2)),
            // The init has yet to write: woken by its byte, or to look at it again.
            _ => {
                let _ = burrow_sys::poll::readable_within(fifo.as_fd(), Duration::from_millis(100));
            }
        }
    }
    drop(fifo);
    let _ = std::fs::remove_file(&fifo_path);
    // The hooks only: the rootfs is not looked at again.
    let spec = crate::spec::read_config(&record.bundle).ok();
    if let Some(spec) = spec {
        // The process runs already: a failed poststart hook is only reported (OCI).
        if let Err(e) = run_hooks(
            &hooks_of(&spec, "poststart"),
            &record.hook_state(HookPhase::Poststart),
            "poststart",
        ) {
            crate::log::warn(e.to_string());
        }
    }
    Ok(())
}

pub fn parse_signal(name: &str) -> Result<nix::sys::signal::Signal> {
    use std::str::FromStr;
    let bad = || CliError::BadSignal(name.to_string());
    if let Ok(n) = name.parse::<i32>() {
        return nix::sys::signal::Signal::try_from(n).map_err(|_| bad());
    }
    let upper = name.to_ascii_uppercase();
    let full = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    nix::sys::signal::Signal::from_str(&full).map_err(|_| bad())
}

/// Sends a raw signal number (also real-time ones such as 37, SIGRTMIN+3, systemd's stop signal).
pub(crate) fn signal_number(name: &str) -> Result<i32> {
    if let Ok(n) = name.parse::<i32>() {
        if (1..=64).contains(&n) {
            return Ok(n);
        }
        return Err(CliError::BadSignal(name.to_string()));
    }
    Ok(parse_signal(name)? as i32)
}

pub fn kill(store: &Store, id: &str, signal: &str, all: bool) -> Result<()> {
    let signo = signal_number(signal)?;
    let record = store.load(id)?;
    // `--all` signals whatever is left in the cgroup, as runc does: containerd's shim kills
    // the rest of a container that shares its pod's pid namespace once its init has exited.
    if record.status(store) == Status::Stopped && !all {
        // runc's words, which the shim reads as "already finished".
        return Err(CliError::WrongState {
            id: id.into(),
            status: "stopped".into(),
            need: "container not running: it cannot be signalled".into(),
        });
    }
    let signo = if record.systemd && signo == libc::SIGTERM {
        // `docker stop` sends SIGTERM, which systemd ignores; SIGRTMIN+3 makes it shut down.
        libc::SIGRTMIN() + 3
    } else {
        signo
    };
    let targets = match (&record.cgroup, all) {
        (Some(cgroup), true) => burrow_sys::cgroup::pids(cgroup),
        _ => vec![record.pid],
    };
    crate::log::debug(format!("signal {signo} to {targets:?}"));
    for pid in targets {
        // SAFETY: kill(2) takes no pointer; signo is 1..=64 (signal_number), which nix's
        // Signal cannot hold for the real-time ones.
        unsafe { libc::kill(pid, signo) };
    }
    Ok(())
}

pub fn delete(store: &Store, id: &str, force: bool) -> Result<()> {
    delete_on(&async_runtime()?, None, store, id, force)
}

/// `delete` on the caller's runtime `rt`, with its bus connection `conn` if it has one (`run`'s,
/// from create: a new connection costs about a millisecond).
pub fn delete_on(
    rt: &tokio::runtime::Runtime,
    conn: Option<zbus::Connection>,
    store: &Store,
    id: &str,
    force: bool,
) -> Result<()> {
    let record = match store.load(id) {
        Ok(record) => record,
        Err(CliError::NotFound(_)) if force => return Ok(()),
        Err(e) => return Err(e),
    };
    let status = record.status(store);
    if (status == Status::Running || status == Status::Paused) && !force {
        return Err(CliError::WrongState {
            id: id.into(),
            status: status.as_str().into(),
            need: "stop it first or use --force".into(),
        });
    }
    if let Some(cgroup) = &record.cgroup {
        if status == Status::Paused {
            let _ = burrow_sys::cgroup::freeze(cgroup, false);
        }
        for pid in burrow_sys::cgroup::pids(cgroup) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
    if record.init_alive() {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(record.pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    // Until the killed processes are gone from the cgroup too: one still exiting keeps it.
    let busy = || {
        record.init_alive()
            || record
                .cgroup
                .as_deref()
                .is_some_and(|cgroup| !burrow_sys::cgroup::pids(cgroup).is_empty())
    };
    while busy() && Instant::now() < deadline {
        let _ = nix::sys::wait::waitpid(
            nix::unistd::Pid::from_raw(record.pid),
            Some(nix::sys::wait::WaitPidFlag::WNOHANG),
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    // One connection for the scope and idmapd.
    let bus = match (conn, &record.scope) {
        (Some(conn), _) => Some(conn),
        (None, Some(_)) => Some(system_bus(rt)?),
        // A bus that cannot be reached now is tried again for the Release, which reports it.
        (None, None) => system_bus(rt).ok(),
    };
    if let (Some(unit), Some(bus)) = (&record.scope, &bus) {
        stop_scope(rt, bus, unit)?;
    }
    // idmapd answers while the host side goes: each takes about a millisecond. A kept
    // container's range is parked by its Release, its docker data stays.
    let release = send_release(rt, bus.as_ref(), &range_name(store, id));
    let docker_data = record.docker_data.as_deref().filter(|_| !record.kept);
    let removed = remove_host_side(record.cgroup.as_deref(), docker_data);
    released(rt, release)?;
    removed?;
    if let Ok(spec) = crate::spec::read_config(&record.bundle) {
        let state = record.hook_state(HookPhase::Poststop);
        let _ = run_hooks(&hooks_of(&spec, "poststop"), &state, "poststop");
    }
    store.remove(id)
}

#[cfg(test)]
mod tests {
    /// A hook's timeout is any i64 of seconds: one beyond the clock used to panic (Instant +
    /// Duration overflows) in the middle of create, leaving its range and cgroup behind.
    #[test]
    fn a_hook_timeout_beyond_the_clock_never_times_out() {
        for timeout in [i64::MAX, i64::MIN, 0] {
            let hook: oci_spec::runtime::Hook = serde_json::from_value(
                serde_json::json!({"path": "/bin/true", "timeout": timeout}),
            )
            .unwrap();
            super::run_hooks(&[hook], &serde_json::json!({}), "prestart").unwrap();
        }
    }

    /// A symlink at the pid file's path is replaced, not followed; names planted where an
    /// earlier version put its temporary file (and runc puts its own) are left alone.
    #[test]
    fn the_pid_file_replaces_a_symlink_and_writes_through_none() {
        let dir = std::env::temp_dir().join(format!("burrow-pidfile-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let victim = dir.join("victim");
        std::fs::write(&victim, "victim").unwrap();
        let pid_file = dir.join("pid");
        for planted in ["pid", "pid.burrow-tmp", ".pid"] {
            std::os::unix::fs::symlink(&victim, dir.join(planted)).unwrap();
        }
        super::write_pid_file(&pid_file, 4242).unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "victim");
        let meta = std::fs::symlink_metadata(&pid_file).unwrap();
        assert!(meta.file_type().is_file());
        assert_eq!(std::fs::read_to_string(&pid_file).unwrap(), "4242");
        // Nothing but what was there and the pid file.
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 4);
        let _ = std::fs::remove_dir_all(dir);
    }
}
