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
    #[error("bundle {bundle}: {reason}")]
    Bundle { bundle: String, reason: String },
    #[error("refused: {0}")]
    Refused(String),
    #[error("container {id} is {status}, {need}")]
    WrongState {
        id: String,
        status: String,
        need: String,
    },
    #[error("invalid signal {0:?}")]
    BadSignal(String),
    #[error("{helper}: {message}")]
    Helper {
        helper: &'static str,
        message: String,
    },
    #[error("{0}")]
    Setup(String),
    #[error(transparent)]
    Cgroup(#[from] burrow_bus::cgroup::CgroupError),
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
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
}

impl CliError {
    pub fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> CliError {
        let what = what.into();
        move |source| CliError::Io { what, source }
    }

    pub fn helper(helper: &'static str) -> impl FnOnce(zbus::Error) -> CliError {
        move |e| {
            let message = match &e {
                zbus::Error::MethodError(name, msg, _) => {
                    format!("{}: {}", name.as_str(), msg.clone().unwrap_or_default())
                }
                other => other.to_string(),
            };
            CliError::Helper { helper, message }
        }
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
