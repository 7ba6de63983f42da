//! One datagram with at most one fd (SCM_RIGHTS) over a Unix socket: the transport of the
//! process protocol, and of runc's console-socket protocol (the pty master to containerd).

use std::io::{IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{BorrowedFd, OwnedFd};

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};

/// The longest message received: room for the container's state (with its annotations), the
/// largest message of the protocol.
pub const MAX_MESSAGE: usize = 256 * 1024;

/// Why a message could not be received whole.
#[derive(Debug, thiserror::Error)]
pub enum ReceiveError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("a message longer than the receiver takes came (it was refused whole)")]
    TooLong,
    /// More fds than one: the kernel closed those that did not fit, the rest are closed here.
    #[error("a message came with more than one fd")]
    TooManyFds,
}

/// What came: the message's bytes (empty at end of file: the protocol has no empty message)
/// and its fd, if one came with it (close-on-exec, owned by the receiver).
pub struct Received {
    pub bytes: Vec<u8>,
    pub fd: Option<OwnedFd>,
}

/// Sends `bytes` with `fd` as SCM_RIGHTS. A peer that is gone gives EPIPE, not SIGPIPE.
pub fn send(sock: BorrowedFd<'_>, bytes: &[u8], fd: Option<BorrowedFd<'_>>) -> std::io::Result<()> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    let fds;
    if let Some(fd) = fd {
        fds = [fd];
        // The buffer has room for exactly this one fd.
        let pushed = control.push(SendAncillaryMessage::ScmRights(&fds));
        debug_assert!(pushed);
    }
    rustix::net::sendmsg(
        sock,
        &[IoSlice::new(bytes)],
        &mut control,
        SendFlags::NOSIGNAL,
    )?;
    Ok(())
}

/// Receives one message. Each fd that came is owned before any error is returned, so none
/// leaks into the process (and, past an exec, into a container).
pub fn recv(sock: BorrowedFd<'_>) -> Result<Received, ReceiveError> {
    recv_at_most(sock, MAX_MESSAGE)
}

/// [`recv`] of a message of at most `max` bytes.
pub fn recv_at_most(sock: BorrowedFd<'_>, max: usize) -> Result<Received, ReceiveError> {
    // Its length first (MSG_PEEK | MSG_TRUNC: the datagram stays, its fd too): a buffer of
    // `max` zeroed bytes for each message cost the CLI and its children about 0.3 ms a run.
    // A longer one is received into `max` bytes, and the kernel says it was cut (TooLong).
    // A stream socket (the console socket's protocol) and the end of file say 0: `max` then.
    let (_, length) = rustix::net::recv(sock, &mut [0u8; 0], RecvFlags::PEEK | RecvFlags::TRUNC)
        .map_err(std::io::Error::from)?;
    let mut bytes = vec![0u8; if length == 0 { max } else { length.min(max) }];
    // Room for two fds: a second one is then seen (and refused) rather than silently dropped.
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(2))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let msg = rustix::net::recvmsg(
        sock,
        &mut [IoSliceMut::new(&mut bytes)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC,
    )
    .map_err(std::io::Error::from)?;
    let mut fds: Vec<OwnedFd> = vec![];
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(received) = message {
            fds.extend(received);
        }
    }
    if msg.flags.contains(ReturnFlags::TRUNC) {
        return Err(ReceiveError::TooLong);
    }
    if msg.flags.contains(ReturnFlags::CTRUNC) || fds.len() > 1 {
        return Err(ReceiveError::TooManyFds);
    }
    bytes.truncate(msg.bytes);
    Ok(Received {
        bytes,
        fd: fds.pop(),
    })
}
