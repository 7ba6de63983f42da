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
