//! Forked workers that do namespace work the helper's own (multi-threaded, host-namespace)
//! process must not, and hand back one fd over a socket pair.

use std::io::IoSlice;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use burrow_bus::BurrowError;
use nix::sys::socket::{self, ControlMessage, ControlMessageOwned, MsgFlags};

/// Forks a worker that keeps only the fds in `keep` (and its end of the socket), is
/// non-dumpable and dies with the helper, and runs `body`, which answers with [`reply`].
/// Returns the fd the worker sent, or its error.
pub fn run(keep: &[RawFd], body: impl FnOnce(RawFd)) -> Result<OwnedFd, BurrowError> {
    let (ours, theirs) = socket::socketpair(
        socket::AddressFamily::Unix,
        socket::SockType::SeqPacket,
        None,
        socket::SockFlag::SOCK_CLOEXEC,
    )
    .map_err(|e| BurrowError::Failed(format!("socketpair: {e}")))?;
    let mut keep = keep.to_vec();
    keep.push(theirs.as_raw_fd());
    keep.sort_unstable();
    // SAFETY: the worker only uses memory prepared before the fork, raw syscalls and the
    // allocator (glibc's malloc is safe after fork); it never returns into the helper.
    match unsafe { nix::unistd::fork() } {
        Ok(nix::unistd::ForkResult::Child) => {
            // SAFETY: raw syscalls in the freshly forked child, which then leaves with _exit.
            unsafe {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                libc::prctl(libc::PR_SET_DUMPABLE, 0);
                burrow_bus::userns::close_all_except(&keep);
            }
            body(theirs.as_raw_fd());
            // SAFETY: leaving the forked child without running the helper's destructors.
            unsafe { libc::_exit(0) }
        }
        Ok(nix::unistd::ForkResult::Parent { child }) => {
            drop(theirs);
            let result = receive(ours.as_fd());
            // After an answer the worker only reaps its own child and exits: let it, so that a
            // process it left in a container's pid namespace is never orphaned there (the
            // container's init would wait for it when it exits). Without one, kill it.
            if result.is_err() {
                let _ = nix::sys::signal::kill(child, nix::sys::signal::Signal::SIGKILL);
            }
            let _ = nix::sys::wait::waitpid(child, None);
            result
        }
        Err(e) => Err(BurrowError::Failed(format!("fork: {e}"))),
    }
}

fn receive(sock: BorrowedFd<'_>) -> Result<OwnedFd, BurrowError> {
    let mut buf = vec![0u8; 4096];
    let mut cmsg = nix::cmsg_space!([RawFd; 1]);
    let mut iov = [std::io::IoSliceMut::new(&mut buf)];
    let msg = socket::recvmsg::<()>(
        sock.as_raw_fd(),
        &mut iov,
        Some(&mut cmsg),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .map_err(|e| BurrowError::Failed(format!("waiting for the mount worker: {e}")))?;
    let fd = msg
        .cmsgs()
        .ok()
        .into_iter()
        .flatten()
        .find_map(|c| match c {
            ControlMessageOwned::ScmRights(fds) => fds.first().copied(),
            _ => None,
        });
    let len = msg.bytes;
    let text = String::from_utf8_lossy(&buf[..len]).into_owned();
    match fd {
        // SAFETY: received with SCM_RIGHTS, owned by nobody else.
        Some(fd) if text == "ok" => Ok(unsafe { OwnedFd::from_raw_fd(fd) }),
        _ if text.is_empty() => Err(BurrowError::Failed(
            "the mount worker died without an answer".into(),
        )),
        _ => Err(BurrowError::InvalidArgument(format!(
            "mount worker: {text}"
        ))),
    }
}

/// A worker's answer: an fd, or what went wrong.
pub fn reply(sock: RawFd, result: Result<OwnedFd, String>) {
    let _ = match &result {
        Ok(fd) => {
            let fds = [fd.as_raw_fd()];
            socket::sendmsg::<()>(
                sock,
                &[IoSlice::new(b"ok")],
                &[ControlMessage::ScmRights(&fds)],
                MsgFlags::empty(),
                None,
            )
        }
        Err(text) => socket::sendmsg::<()>(
            sock,
            &[IoSlice::new(text.as_bytes())],
            &[],
            MsgFlags::empty(),
            None,
        ),
    };
}

/// Gives the calling worker a private copy of its mount namespace, so nothing it mounts
/// propagates anywhere.
pub fn private_mount_namespace() -> Result<(), String> {
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS)
        .map_err(|e| format!("unshare mount namespace: {e}"))?;
    nix::mount::mount(
        None::<&str>,
        "/",
        None::<&str>,
        nix::mount::MsFlags::MS_REC | nix::mount::MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(|e| format!("making the copy private: {e}"))
}
