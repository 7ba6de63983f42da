//! The socket pair between the CLI and the processes it forks for a container, typed by
//! direction, with one `wait_for_*` per step of the assembly. Each wait takes what that step
//! may bring and nothing else: anything else is [`ProtocolError::Unexpected`], naming what was
//! expected and what came; a child's `error:` is [`ProtocolError::Failed`] with its text.

use std::marker::PhantomData;
use std::os::fd::{AsFd, OwnedFd};

use nix::unistd::Pid;

use super::message::{DecodeError, Message, Peer, ToChild, ToParent};
use super::scm::{self, ReceiveError};

/// What went wrong between the CLI and its children. `step` says what the receiver was doing.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    #[error("making the socket pair to the container's processes: {0}")]
    Pair(#[source] std::io::Error),
    #[error("{step}: sending {message:?}: {source}")]
    Send {
        step: &'static str,
        message: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{step}: {source}")]
    Receive {
        step: &'static str,
        #[source]
        source: ReceiveError,
    },
    /// The other end closed: every process holding it is gone.
    #[error("{step}: {peer}")]
    Closed { step: &'static str, peer: Peer },
    #[error("{step}: {source}")]
    Malformed {
        step: &'static str,
        #[source]
        source: DecodeError,
    },
    /// A well-formed message that does not belong to this step.
    #[error("{step}: expected {expected}, got {got}")]
    Unexpected {
        step: &'static str,
        expected: &'static str,
        got: String,
    },
    /// A child's own account of the step it failed at (it has exited).
    #[error("{0}")]
    Failed(String),
}

/// One end of the socket pair: receives `In`, sends `Out`.
pub struct Channel<In, Out> {
    sock: OwnedFd,
    direction: PhantomData<fn(Out) -> In>,
}

/// The CLI's end.
pub type ParentChannel = Channel<ToParent, ToChild>;
/// The end of the processes the CLI forks (inherited from the intermediate by the init, from
/// exec's joiner by its process).
pub type ChildChannel = Channel<ToChild, ToParent>;

/// A new socket pair (close-on-exec on both ends).
pub fn pair() -> Result<(ParentChannel, ChildChannel), ProtocolError> {
    use rustix::net::{AddressFamily, SocketFlags, SocketType};
    let (parent, child) = rustix::net::socketpair(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )
    .map_err(|e| ProtocolError::Pair(e.into()))?;
    Ok((Channel::new(parent), Channel::new(child)))
}

impl<In: Message, Out: Message> Channel<In, Out> {
    fn new(sock: OwnedFd) -> Self {
        Channel {
            sock,
            direction: PhantomData,
        }
    }

    pub fn send(&self, step: &'static str, message: &Out) -> Result<(), ProtocolError> {
        let sent = message.encode().and_then(|encoded| {
            let fd = encoded.fd.as_ref().map(AsFd::as_fd);
            scm::send(self.sock.as_fd(), &encoded.bytes, fd)
        });
        sent.map_err(|source| ProtocolError::Send {
            step,
            message: message.tag(),
            source,
        })
    }

    /// The next message. The peer's `error:` comes back as [`ProtocolError::Failed`].
    pub fn recv(&self, step: &'static str) -> Result<In, ProtocolError> {
        let received = scm::recv(self.sock.as_fd())
            .map_err(|source| ProtocolError::Receive { step, source })?;
        if received.bytes.is_empty() && received.fd.is_none() {
            return Err(ProtocolError::Closed {
                step,
                peer: In::SENDER,
            });
        }
        In::decode(&received.bytes, received.fd)
            .map_err(|source| ProtocolError::Malformed { step, source })
    }
}

impl<In, Out> AsFd for Channel<In, Out> {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.sock.as_fd()
    }
}

#[cfg(test)]
impl<In, Out> Channel<In, Out> {
    /// The socket, for tests that send what no typed end would.
    pub fn into_socket(self) -> OwnedFd {
        self.sock
    }
}

fn unexpected(step: &'static str, expected: &'static str, got: &impl Message) -> ProtocolError {
    ProtocolError::Unexpected {
        step,
        expected,
        got: got.describe(),
    }
}

/// What the new process sent before `ready`.
#[derive(Debug, Default)]
pub struct Ready {
    /// Its pty master, if it has a terminal (for `--console-socket`).
    pub console: Option<OwnedFd>,
    /// Its sysinfo filter's listener, if it has one (for the supervisor).
    pub sysinfo: Option<OwnedFd>,
}

impl Ready {
    /// Keeps the fd `message` carries, if it is one sent before `ready` and not yet received.
    fn keep(&mut self, message: ToParent) -> Result<(), ToParent> {
        match message {
            ToParent::Console(fd) if self.console.is_none() => self.console = Some(fd),
            ToParent::SysinfoListener(fd) if self.sysinfo.is_none() => self.sysinfo = Some(fd),
            other => return Err(other),
        }
        Ok(())
    }
}

/// What exec's process and joiner send, in the words of an "unexpected message" error.
const EXEC_MESSAGES: &str = "\"pid PID\", \"console\", \"sysinfo\" or \"ready\", each once";

impl ParentChannel {
    /// The peer's `error:` as an error, every other message as it came.
    fn next(&self, step: &'static str) -> Result<ToParent, ProtocolError> {
        match self.recv(step)? {
            ToParent::Failed(text) => Err(ProtocolError::Failed(text)),
            message => Ok(message),
        }
    }

    /// The intermediate's new user namespace.
    pub fn wait_for_userns(&self) -> Result<OwnedFd, ProtocolError> {
        const STEP: &str = "creating the user namespace";
        match self.next(STEP)? {
            ToParent::UserNamespace(fd) => Ok(fd),
            other => Err(unexpected(STEP, "\"userns\" with its fd", &other)),
        }
    }

    /// Lets the intermediate go on, mapped and in its cgroup.
    pub fn go(&self) -> Result<(), ProtocolError> {
        self.send("signalling the intermediate", &ToChild::Go)
    }

    /// The init's host pid, from the intermediate.
    pub fn wait_for_init(&self) -> Result<Pid, ProtocolError> {
        const STEP: &str = "creating the init";
        match self.next(STEP)? {
            ToParent::InitPid(pid) => Ok(pid),
            other => Err(unexpected(STEP, "\"init PID\"", &other)),
        }
    }

    pub fn send_mount_namespace(&self, mntns: OwnedFd) -> Result<(), ProtocolError> {
        self.send(
            "handing the mount namespace to the init",
            &ToChild::MountNamespace(mntns),
        )
    }

    pub fn send_state(
        &self,
        state: serde_json::Map<String, serde_json::Value>,
    ) -> Result<(), ProtocolError> {
        self.send("handing the state to the init", &ToChild::State(state))
    }

    /// Waits until the init is set up: its console (if it has a terminal), its sysinfo
    /// listener (if it has one), then `ready`.
    pub fn wait_for_ready(&self, step: &'static str) -> Result<Ready, ProtocolError> {
        let mut ready = Ready::default();
        loop {
            match self.next(step)? {
                ToParent::Ready => return Ok(ready),
                message => ready.keep(message).map_err(|other| {
                    unexpected(step, "\"console\", \"sysinfo\" or \"ready\"", &other)
                })?,
            }
        }
    }

    /// Waits until exec's process is set up: its pid (from the joiner, which races with the
    /// process's own messages), its console (if it has a terminal) and `ready`.
    pub fn wait_for_process(&self, step: &'static str) -> Result<(Pid, Ready), ProtocolError> {
        let mut ready = Ready::default();
        let (mut pid, mut set_up) = (None, false);
        loop {
            match self.next(step)? {
                ToParent::ProcessPid(new) if pid.is_none() => pid = Some(new),
                ToParent::Ready if !set_up => set_up = true,
                message if !set_up => ready
                    .keep(message)
                    .map_err(|other| unexpected(step, EXEC_MESSAGES, &other))?,
                other => return Err(unexpected(step, EXEC_MESSAGES, &other)),
            }
            if let (Some(pid), true) = (pid, set_up) {
                return Ok((pid, ready));
            }
        }
    }
}

impl ChildChannel {
    /// Sends `message`; the error is the caller's to report or ignore (a child that cannot
    /// tell the CLI anything exits, and the CLI sees its end close).
    pub fn tell(&self, message: &ToParent) -> Result<(), ProtocolError> {
        self.send("telling the runtime", message)
    }

    /// Tells the CLI which step failed and why, and leaves (a forked child never returns).
    pub fn fail(&self, what: &str, error: impl std::fmt::Display) -> ! {
        let _ = self.tell(&ToParent::Failed(format!("{what}: {error}")));
        burrow_sys::fork::exit(1)
    }

    /// Tells the CLI of a protocol error (which names its step) and leaves.
    pub fn fail_with(&self, error: ProtocolError) -> ! {
        let _ = self.tell(&ToParent::Failed(error.to_string()));
        burrow_sys::fork::exit(1)
    }

    /// Another end on the same socket (close-on-exec), for a child cloned from this process
    /// that owns its own end while this process goes on with this one.
    pub fn try_clone(&self) -> std::io::Result<Self> {
        Ok(Channel::new(self.sock.try_clone()?))
    }

    /// The intermediate waits until its user namespace is mapped and it is in its cgroup.
    pub fn wait_for_go(&self) -> Result<(), ProtocolError> {
        const STEP: &str = "waiting for the ID map";
        match self.recv(STEP)? {
            ToChild::Go => Ok(()),
            other => Err(unexpected(STEP, "\"go\"", &other)),
        }
    }

    /// The init waits for the container's mount namespace.
    pub fn wait_for_mount_namespace(&self) -> Result<OwnedFd, ProtocolError> {
        const STEP: &str = "waiting for the mount namespace";
        match self.recv(STEP)? {
            ToChild::MountNamespace(fd) => Ok(fd),
            other => Err(unexpected(STEP, "\"mntns\" with its fd", &other)),
        }
    }

    /// The init waits for the container's state (sent only when it runs hooks).
    pub fn wait_for_state(
        &self,
    ) -> Result<serde_json::Map<String, serde_json::Value>, ProtocolError> {
        const STEP: &str = "waiting for the container's state";
        match self.recv(STEP)? {
            ToChild::State(state) => Ok(state),
            other => Err(unexpected(STEP, "\"state\" with its memfd", &other)),
        }
    }
}
