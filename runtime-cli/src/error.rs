//! Errors of the runtime CLI, each with a message a person (or containerd, which shows the
//! last `msg` of the log) can act on.

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("container {0:?} does not exist")]
    NotFound(String),
    #[error("container {0:?} already exists")]
    Exists(String),
    #[error("sandbox {0:?} does not exist (see `burrow sandbox list`)")]
    NoSandbox(String),
    #[error("sandbox {name:?} already exists in {dir}")]
    SandboxExists { name: String, dir: String },
    #[error("invalid container id {0:?}: use 1-128 characters of [A-Za-z0-9_.+-], not starting with '.' or '-'")]
    BadId(String),
    /// What the bundle holds is refused (the reason says what and why).
    #[error("bundle {bundle}: {reason}")]
    Bundle { bundle: String, reason: String },
    /// The rootfs or a bind mount's source could not be opened.
    #[error("bundle {bundle}: cannot open {}: {source}", path.display())]
    MountSource {
        bundle: String,
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The bundle's config.json could not be read.
    #[error("bundle {bundle}: {what}: {source}")]
    BundleFile {
        bundle: String,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("bundle {bundle}: config.json is invalid: {source}")]
    BundleConfig {
        bundle: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("refused: {0}")]
    Refused(String),
    /// A field of config.json (or of exec's process) that Burrow does not apply, and why
    /// (`spec::REFUSALS`): never silently dropped.
    #[error("refused: {field}: {why}")]
    Unsupported {
        field: &'static str,
        why: &'static str,
    },
    /// A namespace the spec names by path is refused.
    #[error("refused: {0}")]
    Join(#[from] crate::namespaces::JoinError),
    #[error(transparent)]
    Network(#[from] crate::network::NetworkError),
    #[error("container {id} is {status}, {need}")]
    WrongState {
        id: String,
        status: String,
        need: String,
    },
    #[error("invalid signal {0:?}")]
    BadSignal(String),
    /// A helper (or the bus) failed; a D-Bus error keeps its name (`org.burrow.Error.*`) and
    /// message, which people and tests read.
    #[error("{helper}: {}", bus_message(.source))]
    Helper {
        helper: &'static str,
        /// Boxed: zbus's error holds the whole reply message.
        #[source]
        source: Box<zbus::Error>,
    },
    #[error(
        "the system bus address {0} is no unix socket: Burrow's helpers know their callers by \
         the socket's credentials"
    )]
    SystemBusNotUnix(String),
    /// The spec's (or exec's) process cannot be run as it is.
    #[error(transparent)]
    ProcessSpec(#[from] crate::container::ProcessError),
    #[error(transparent)]
    Seccomp(#[from] crate::seccomp::SeccompError),
    #[error(transparent)]
    Sysinfo(#[from] crate::sysinfo::SupervisorError),
    /// A hook the runtime runs on the host failed.
    #[error("{phase} hook {} {failure}", .path.display())]
    Hook {
        phase: &'static str,
        path: std::path::PathBuf,
        #[source]
        failure: crate::container::HookFailure,
    },
    #[error(transparent)]
    Sysctl(#[from] crate::sysctl::SysctlError),
    #[error(transparent)]
    Sandbox(#[from] crate::sandbox::SandboxError),
    #[error("forking the {child}: {source}")]
    Fork {
        child: &'static str,
        #[source]
        source: burrow_sys::fork::ForkError,
    },
    #[error("the container's init died during create")]
    InitDiedDuringCreate,
    #[error("container {id}'s init exited before start")]
    InitExitedBeforeStart { id: String },
    #[error("container {id}'s init did not take the start signal")]
    StartSignalNotTaken { id: String },
    #[error("process.terminal is set but no --console-socket was given")]
    NoConsoleSocket,
    #[error("container {0} has no cgroup")]
    NoCgroup(String),
    #[error("corrupt state of {id}: {source}")]
    CorruptState {
        id: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("saving the state of {id}: {source}")]
    SaveState {
        id: String,
        #[source]
        source: burrow_sys::state::StateError,
    },
    #[error("no data directory: set XDG_DATA_HOME or HOME (uid {uid} has no home)")]
    NoDataDirectory { uid: u32 },
    #[error("{} already exists", .0.display())]
    SpecExists(std::path::PathBuf),
    /// `exec CMD...`'s process could not be made.
    #[error("exec: {0}")]
    ExecProcess(#[source] oci_spec::OciSpecError),
    #[error(transparent)]
    Cgroup(#[from] burrow_sys::cgroup::CgroupError),
    #[error(transparent)]
    Resources(#[from] burrow_sys::cgroup::resources::ResourceError),
    /// Between the CLI and the processes it forks for a container.
    #[error(transparent)]
    Process(#[from] crate::process::ProtocolError),
    #[error(
        "unsafe state directory {path}: {problem} (set XDG_RUNTIME_DIR or --root to a directory \
         only you can change)"
    )]
    StateRoot {
        path: String,
        #[source]
        problem: UnsafeDir,
    },
    #[error("pid file {path}: {source}")]
    PidFile {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("--log {path}: {problem}")]
    LogFile {
        path: String,
        #[source]
        problem: UnsafeLog,
    },
    #[error("invalid {what}: {source}")]
    Json {
        what: String,
        #[source]
        source: serde_json::Error,
    },
    /// A system call or file operation; `what` says which and on what.
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

/// The D-Bus error name of a helper's refusal (`org.burrow.Error.NotFound`, ...), if it is one.
pub fn error_name(e: &zbus::Error) -> Option<&str> {
    match e {
        zbus::Error::MethodError(name, _, _) => Some(name.as_str()),
        _ => None,
    }
}

/// A bus error as the user reads it: a D-Bus error's name and message, else zbus's own text.
fn bus_message(error: &zbus::Error) -> String {
    match error {
        zbus::Error::MethodError(name, message, _) => {
            format!(
                "{}: {}",
                name.as_str(),
                message.as_deref().unwrap_or_default()
            )
        }
        other => other.to_string(),
    }
}

impl CliError {
    /// Names the failed operation `what` (a system call, a file): for `map_err` of an
    /// `std::io`, nix or rustix error.
    pub fn io<E: Into<std::io::Error>>(what: impl Into<String>) -> impl FnOnce(E) -> CliError {
        let what = what.into();
        move |source| CliError::Io {
            what,
            source: source.into(),
        }
    }

    pub fn helper(helper: &'static str) -> impl FnOnce(zbus::Error) -> CliError {
        move |source| CliError::Helper {
            helper,
            source: Box::new(source),
        }
    }

    /// For `map_err` of a fork of the runtime's `child`.
    pub fn fork(child: &'static str) -> impl FnOnce(burrow_sys::fork::ForkError) -> CliError {
        move |source| CliError::Fork { child, source }
    }
}

pub type Result<T> = std::result::Result<T, CliError>;

/// Why a state directory is not the caller's alone: someone else could plant or change the
/// state the runtime trusts (a pid it signals, a directory it deletes).
#[derive(Debug, thiserror::Error)]
pub enum UnsafeDir {
    #[error("it is a symbolic link")]
    Symlink,
    #[error("it is not a directory")]
    NotADirectory,
    #[error("it belongs to uid {owner}, not to you (uid {caller})")]
    Owner { owner: u32, caller: u32 },
    #[error("group or others may write it (mode {mode:04o})")]
    Writable { mode: u32 },
    #[error("group or others may enter it (mode {mode:04o})")]
    Open { mode: u32 },
    #[error(
        "it lies below {dir}, which uid {owner} (neither root nor you) owns or anyone may \
         change (mode {mode:04o})"
    )]
    Ancestor { dir: String, owner: u32, mode: u32 },
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Why `--log` was not opened.
#[derive(Debug, thiserror::Error)]
pub enum UnsafeLog {
    #[error("it is a symbolic link, which the runtime never follows there")]
    Symlink,
    #[error("it has {links} hard links: another name of it may be someone else's file")]
    HardLinked { links: u64 },
    #[error("it is a FIFO nobody reads")]
    UnreadFifo,
    #[error("cannot open it: {0}")]
    Io(#[from] std::io::Error),
}
