//! The messages of the process protocol and their encoding, in one place. A message is one
//! SOCK_SEQPACKET datagram: a short ASCII tag, then for some a space and a payload, and at
//! most one fd as SCM_RIGHTS. Which messages carry an fd is part of each message: one that
//! must carry an fd and came without it, or came with one it must not carry, is a
//! [`DecodeError`] (and the stray fd is closed with it).

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use nix::unistd::Pid;

/// Who sends a kind of message; named in the error when its end of the channel closes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    /// The CLI's children: the intermediate, the init, exec's joiner and its process.
    Process,
    /// The CLI.
    Runtime,
}

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Peer::Process => "the container process died",
            Peer::Runtime => "the runtime went away",
        })
    }
}

/// What the processes the CLI forks tell it.
#[derive(Debug)]
pub enum ToParent {
    /// The intermediate's new user namespace, for idmapd to map (`userns` + fd). An fd, since
    /// a non-root CLI cannot open a non-dumpable child's /proc/PID/ns.
    UserNamespace(OwnedFd),
    /// The intermediate cloned the init: its host pid (`init N`).
    InitPid(Pid),
    /// exec's joiner cloned the new process: its host pid (`pid N`).
    ProcessPid(Pid),
    /// The process's pty master, for `--console-socket` (`console` + fd).
    Console(OwnedFd),
    /// The seccomp listener of the process's sysinfo filter, for its supervisor (`sysinfo` +
    /// fd).
    SysinfoListener(OwnedFd),
    /// The process is set up: the init now waits for `start`, an exec'd process execs
    /// (`ready`).
    Ready,
    /// A step failed and the sender exits; the text says which step and why (`error: TEXT`).
    Failed(String),
}

/// What the CLI tells them.
#[derive(Debug)]
pub enum ToChild {
    /// The intermediate's user namespace is mapped and it is in the container's cgroup: it may
    /// go on (`go`).
    Go,
    /// The container's mount namespace from mountd, for the init to join (`mntns` + fd).
    MountNamespace(OwnedFd),
    /// The container's OCI state, for the init's createContainer and startContainer hooks
    /// (`state` + a memfd holding its JSON: its annotations may be larger than a datagram).
    State(serde_json::Map<String, serde_json::Value>),
}

/// A message on the wire: its bytes and the fd that goes with it.
pub struct Encoded<'a> {
    pub bytes: Vec<u8>,
    pub fd: Option<SentFd<'a>>,
}

/// The fd a message carries: one of the message's own, or one made to carry its payload.
pub enum SentFd<'a> {
    Its(BorrowedFd<'a>),
    Made(OwnedFd),
}

impl AsFd for SentFd<'_> {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            SentFd::Its(fd) => *fd,
            SentFd::Made(fd) => fd.as_fd(),
        }
    }
}

/// Why a datagram is no message of the protocol.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("unknown message {0:?}")]
    Unknown(String),
    #[error("message {0:?} must carry an fd and came without one")]
    MissingFd(&'static str),
    #[error("message {0:?} came with an fd it must not carry")]
    StrayFd(&'static str),
    #[error("message {tag:?} carries {text:?}, not a pid")]
    BadPid { tag: &'static str, text: String },
    #[error("message \"state\" carries no JSON object: {0}")]
    BadState(#[source] serde_json::Error),
    #[error("message \"state\": reading its memfd: {0}")]
    UnreadableState(#[source] std::io::Error),
}

/// One direction's messages.
pub trait Message: Sized {
    /// Who sends them.
    const SENDER: Peer;
    /// The tag that starts the message on the wire.
    fn tag(&self) -> &'static str;
    /// Fails only where a payload goes in a memfd that could not be made.
    fn encode(&self) -> std::io::Result<Encoded<'_>>;
    /// The message `bytes` (and `fd`) encode. `fd` is the receiver's from here on: dropped
    /// (closed) with any error.
    fn decode(bytes: &[u8], fd: Option<OwnedFd>) -> Result<Self, DecodeError>;
    /// Its tag, payload included where short, for an "unexpected message" error.
    fn describe(&self) -> String;
}

/// The tag (up to the first space) and the payload after it, if there is a space.
fn split(bytes: &[u8]) -> (&[u8], Option<&[u8]>) {
    match bytes.iter().position(|b| *b == b' ') {
        Some(space) => (&bytes[..space], Some(&bytes[space + 1..])),
        None => (bytes, None),
    }
}

/// The start of an unknown message, as text for an error.
fn preview(bytes: &[u8]) -> String {
    const SHOWN: usize = 64;
    let mut text = String::from_utf8_lossy(&bytes[..bytes.len().min(SHOWN)]).into_owned();
    if bytes.len() > SHOWN {
        text.push('…');
    }
    text
}

/// A memfd holding `state`'s JSON, read from its start.
fn state_memfd(state: &serde_json::Map<String, serde_json::Value>) -> std::io::Result<OwnedFd> {
    use std::io::{Seek, Write};
    let fd = rustix::fs::memfd_create("burrow-state", rustix::fs::MemfdFlags::CLOEXEC)?;
    let mut file = std::fs::File::from(fd);
    serde_json::to_writer(&mut file, state)?;
    file.flush()?;
    file.rewind()?;
    Ok(file.into())
}

/// The state JSON object in the memfd `fd`.
fn read_state(fd: OwnedFd) -> Result<serde_json::Map<String, serde_json::Value>, DecodeError> {
    let reader = std::io::BufReader::new(std::fs::File::from(fd));
    serde_json::from_reader(reader).map_err(|e| match e.io_error_kind() {
        Some(_) => DecodeError::UnreadableState(e.into()),
        None => DecodeError::BadState(e),
    })
}

fn with_fd(tag: &'static str, fd: Option<OwnedFd>) -> Result<OwnedFd, DecodeError> {
    fd.ok_or(DecodeError::MissingFd(tag))
}

fn without_fd(tag: &'static str, fd: Option<OwnedFd>) -> Result<(), DecodeError> {
    match fd {
        Some(_) => Err(DecodeError::StrayFd(tag)),
        None => Ok(()),
    }
}

/// A host pid in decimal: digits only, positive.
fn pid(tag: &'static str, text: &[u8]) -> Result<Pid, DecodeError> {
    let bad = || DecodeError::BadPid {
        tag,
        text: preview(text),
    };
    if text.is_empty() || !text.iter().all(u8::is_ascii_digit) {
        return Err(bad());
    }
    let pid: i32 = std::str::from_utf8(text)
        .ok()
        .and_then(|t| t.parse().ok())
        .ok_or_else(bad)?;
    if pid <= 0 {
        return Err(bad());
    }
    Ok(Pid::from_raw(pid))
}

impl Message for ToParent {
    const SENDER: Peer = Peer::Process;

    fn tag(&self) -> &'static str {
        match self {
            ToParent::UserNamespace(_) => "userns",
            ToParent::InitPid(_) => "init",
            ToParent::ProcessPid(_) => "pid",
            ToParent::Console(_) => "console",
            ToParent::SysinfoListener(_) => "sysinfo",
            ToParent::Ready => "ready",
            ToParent::Failed(_) => "error:",
        }
    }

    fn encode(&self) -> std::io::Result<Encoded<'_>> {
        let (payload, fd) = match self {
            ToParent::UserNamespace(fd) | ToParent::Console(fd) | ToParent::SysinfoListener(fd) => {
                (None, Some(SentFd::Its(fd.as_fd())))
            }
            ToParent::InitPid(pid) | ToParent::ProcessPid(pid) => (Some(pid.to_string()), None),
            ToParent::Ready => (None, None),
            ToParent::Failed(text) => (Some(text.clone()), None),
        };
        Ok(Encoded {
            bytes: join(self.tag(), payload.as_deref()),
            fd,
        })
    }

    fn decode(bytes: &[u8], fd: Option<OwnedFd>) -> Result<Self, DecodeError> {
        Ok(match split(bytes) {
            (b"userns", None) => ToParent::UserNamespace(with_fd("userns", fd)?),
            (b"console", None) => ToParent::Console(with_fd("console", fd)?),
            (b"sysinfo", None) => ToParent::SysinfoListener(with_fd("sysinfo", fd)?),
            (b"init", Some(text)) => {
                without_fd("init", fd)?;
                ToParent::InitPid(pid("init", text)?)
            }
            (b"pid", Some(text)) => {
                without_fd("pid", fd)?;
                ToParent::ProcessPid(pid("pid", text)?)
            }
            (b"ready", None) => {
                without_fd("ready", fd)?;
                ToParent::Ready
            }
            (b"error:", Some(text)) => {
                without_fd("error:", fd)?;
                ToParent::Failed(String::from_utf8_lossy(text).into_owned())
            }
            _ => return Err(DecodeError::Unknown(preview(bytes))),
        })
    }

    fn describe(&self) -> String {
        match self {
            ToParent::InitPid(pid) | ToParent::ProcessPid(pid) => {
                format!("\"{} {pid}\"", self.tag())
            }
            ToParent::Failed(text) => format!("\"error: {}\"", preview(text.as_bytes())),
            _ => format!("{:?}", self.tag()),
        }
    }
}

impl Message for ToChild {
    const SENDER: Peer = Peer::Runtime;

    fn tag(&self) -> &'static str {
        match self {
            ToChild::Go => "go",
            ToChild::MountNamespace(_) => "mntns",
            ToChild::State(_) => "state",
        }
    }

    fn encode(&self) -> std::io::Result<Encoded<'_>> {
        let fd = match self {
            ToChild::Go => None,
            ToChild::MountNamespace(fd) => Some(SentFd::Its(fd.as_fd())),
            ToChild::State(state) => Some(SentFd::Made(state_memfd(state)?)),
        };
        Ok(Encoded {
            bytes: self.tag().as_bytes().to_vec(),
            fd,
        })
    }

    fn decode(bytes: &[u8], fd: Option<OwnedFd>) -> Result<Self, DecodeError> {
        Ok(match split(bytes) {
            (b"go", None) => {
                without_fd("go", fd)?;
                ToChild::Go
            }
            (b"mntns", None) => ToChild::MountNamespace(with_fd("mntns", fd)?),
            (b"state", None) => ToChild::State(read_state(with_fd("state", fd)?)?),
            _ => return Err(DecodeError::Unknown(preview(bytes))),
        })
    }

    fn describe(&self) -> String {
        format!("{:?}", self.tag())
    }
}

/// `tag` alone, or `tag payload`.
fn join(tag: &str, payload: Option<&str>) -> Vec<u8> {
    match payload {
        Some(payload) => format!("{tag} {payload}").into_bytes(),
        None => tag.as_bytes().to_vec(),
    }
}
