//! Typed messages with fds over a SOCK_SEQPACKET socket (mountd and its workers). A message is
//! JSON (serde) plus the fds it names by slot, passed with SCM_RIGHTS. One message may take
//! several packets: a packet holds at most `DATA_PER_PACKET` bytes and `FDS_PER_PACKET` fds
//! (the kernel's SCM_MAX_FD is 253), and the first one says how much is coming.

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::sys::socket::{self, ControlMessage, ControlMessageOwned, MsgFlags};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::job::Fds;

const DATA_PER_PACKET: usize = 32 * 1024;
const FDS_PER_PACKET: usize = 250;
/// Far above any real message: a BuildRoot plan is bounded by the plan's own limits.
const MAX_DATA: usize = 16 << 20;
const MAX_FDS: usize = 4096;
/// Every packet starts with a tag byte, so that one carrying only fds is not empty.
/// The first packet's tag, followed by the lengths (below) and the first data.
const FIRST: u8 = b'M';
/// The tag of every later packet, followed by more data.
const MORE: u8 = b'+';
/// The first packet's data length and fd count, u32 little endian each.
const LENGTHS: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("encoding a message: {0}")]
    Encode(#[source] serde_json::Error),
    #[error("decoding a message: {0}")]
    Decode(#[source] serde_json::Error),
    #[error("sending a message: {0}")]
    Send(#[source] nix::errno::Errno),
    #[error("receiving a message: {0}")]
    Receive(#[source] nix::errno::Errno),
    #[error("the peer closed the socket before a whole message came")]
    Closed,
    #[error("malformed message: {0}")]
    Malformed(&'static str),
}

/// Sends `message` with `fds`, which it names by slot.
pub fn send<T: Serialize>(sock: BorrowedFd<'_>, message: &T, fds: &Fds) -> Result<(), WireError> {
    let data = serde_json::to_vec(message).map_err(WireError::Encode)?;
    let raw: Vec<RawFd> = fds.as_slice().iter().map(AsRawFd::as_raw_fd).collect();
    if data.len() > MAX_DATA || raw.len() > MAX_FDS {
        return Err(WireError::Malformed("message too large"));
    }
    let (mut data_chunks, mut fd_chunks) =
        (data.chunks(DATA_PER_PACKET), raw.chunks(FDS_PER_PACKET));
    let mut first = true;
    loop {
        let (chunk, fds) = (data_chunks.next(), fd_chunks.next());
        if chunk.is_none() && fds.is_none() && !first {
            return Ok(());
        }
        let mut head = vec![if first { FIRST } else { MORE }];
        if first {
            head.extend((data.len() as u32).to_le_bytes());
            head.extend((raw.len() as u32).to_le_bytes());
        }
        let iov = [IoSlice::new(&head), IoSlice::new(chunk.unwrap_or_default())];
        let fds = fds.unwrap_or_default();
        let rights = [ControlMessage::ScmRights(fds)];
        let cmsgs: &[ControlMessage] = if fds.is_empty() { &[] } else { &rights };
        // MSG_NOSIGNAL: a worker that died must be an error here, not a SIGPIPE.
        socket::sendmsg::<()>(sock.as_raw_fd(), &iov, cmsgs, MsgFlags::MSG_NOSIGNAL, None)
            .map_err(WireError::Send)?;
        first = false;
    }
}

/// Receives one message and the fds sent with it (close-on-exec).
pub fn receive<T: DeserializeOwned>(sock: BorrowedFd<'_>) -> Result<(T, Fds), WireError> {
    let (mut data, mut fds) = (Vec::new(), Vec::new());
    let mut expected: Option<(usize, usize)> = None;
    while expected.is_none_or(|(d, f)| data.len() < d || fds.len() < f) {
        let tag = packet(sock, &mut data, &mut fds)?;
        match (tag, expected) {
            (FIRST, None) if data.len() >= LENGTHS => {
                let lengths: Vec<u8> = data.drain(..LENGTHS).collect();
                let number = |bytes: &[u8]| {
                    u32::from_le_bytes(bytes.try_into().unwrap_or_default()) as usize
                };
                expected = Some((number(&lengths[..4]), number(&lengths[4..])));
            }
            (MORE, Some(_)) => {}
            _ => return Err(WireError::Malformed("unexpected packet")),
        }
        if expected
            .is_some_and(|(d, f)| d > MAX_DATA || f > MAX_FDS || data.len() > d || fds.len() > f)
        {
            return Err(WireError::Malformed("more than announced"));
        }
    }
    let message = serde_json::from_slice(&data).map_err(WireError::Decode)?;
    Ok((message, fds.into()))
}

/// Receives one packet: appends its data (without the tag) and fds; returns the tag.
fn packet(
    sock: BorrowedFd<'_>,
    data: &mut Vec<u8>,
    fds: &mut Vec<OwnedFd>,
) -> Result<u8, WireError> {
    let mut buf = vec![0u8; 1 + LENGTHS + DATA_PER_PACKET];
    let mut cmsg = nix::cmsg_space!([RawFd; FDS_PER_PACKET]);
    let mut iov = [IoSliceMut::new(&mut buf)];
    let msg = socket::recvmsg::<()>(
        sock.as_raw_fd(),
        &mut iov,
        Some(&mut cmsg),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .map_err(WireError::Receive)?;
    let (bytes, flags) = (msg.bytes, msg.flags);
    for c in msg.cmsgs().map_err(WireError::Receive)? {
        if let ControlMessageOwned::ScmRights(received) = c {
            // SAFETY: each fd was just received with SCM_RIGHTS and is owned by nothing else.
            fds.extend(
                received
                    .into_iter()
                    .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
            );
        }
    }
    if flags.intersects(MsgFlags::MSG_TRUNC | MsgFlags::MSG_CTRUNC) {
        return Err(WireError::Malformed("packet truncated"));
    }
    if bytes == 0 {
        return Err(WireError::Closed);
    }
    data.extend_from_slice(&buf[1..bytes]);
    Ok(buf[0])
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    fn pair() -> (OwnedFd, OwnedFd) {
        socket::socketpair(
            socket::AddressFamily::Unix,
            socket::SockType::SeqPacket,
            None,
            socket::SockFlag::SOCK_CLOEXEC,
        )
        .unwrap()
    }

    #[test]
    fn large_messages_with_many_fds_arrive_whole() {
        let (a, b) = pair();
        let message: Vec<String> = (0..200)
            .map(|i| format!("/path/{i}/{}", "x".repeat(400)))
            .collect();
        let mut fds = Fds::default();
        let null = std::fs::File::open("/dev/null").unwrap();
        for _ in 0..300 {
            fds.carry(null.as_fd().try_clone_to_owned().unwrap());
        }
        // The socket buffer holds less than the whole message: send from another thread.
        let sender = std::thread::spawn(move || send(a.as_fd(), &message, &fds).map(|()| message));
        let (got, received): (Vec<String>, Fds) = receive(b.as_fd()).unwrap();
        assert_eq!(got, sender.join().unwrap().unwrap());
        assert_eq!(received.len(), 300);
        let flags = rustix::io::fcntl_getfd(&received.as_slice()[299]).unwrap();
        assert!(flags.contains(rustix::io::FdFlags::CLOEXEC));
    }

    #[test]
    fn a_closed_peer_is_an_error() {
        let (a, b) = pair();
        drop(a);
        assert!(matches!(receive::<u32>(b.as_fd()), Err(WireError::Closed)));
    }
}
