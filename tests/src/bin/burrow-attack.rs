//! Attacks on idmapd that need a program of their own: run as root or as a tenant against a
//! harness's bus, each prints one JSON line per step so the attack suite can assert on what the
//! helper answered and on what the attacker could do afterwards.

use std::fs::File;
use std::io::{BufRead, Read};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;

use burrow_contract::proxy::IdMap1Proxy;
use clap::{Parser, Subcommand, ValueEnum};
use nix::sys::socket::{self, ControlMessage, ControlMessageOwned, MsgFlags};
use serde_json::{json, Value};

#[derive(Parser)]
struct Args {
    #[command(subcommand)]
    command: Attack,
}

#[derive(Clone, Copy, ValueEnum, PartialEq)]
enum Trick {
    /// The namespace's fd, parked in an AF_UNIX socket's queue (SCM_RIGHTS).
    FdInFlight,
    /// A socket of a network namespace the user namespace owns (SIOCGSKNS + NS_GET_USERNS
    /// recover the user namespace from it).
    NetnsSocket,
}

#[derive(Subcommand)]
enum Attack {
    /// Allocate NAME, keep its user namespace alive by TRICK alone (no process in it, no fd of
    /// it in any process), Release it, print `parked`; after a line on stdin, recover the
    /// namespace and print its uid_map; exit at stdin's end. With --keep, Keep it first, so
    /// that the Release parks it.
    KeepAlive {
        #[arg(long)]
        name: String,
        #[arg(long, value_enum)]
        trick: Trick,
        #[arg(long)]
        keep: bool,
    },
    /// Allocate NAME, end its namespace, make new ones until one gets the dead one's inode
    /// number, and ask AddControlGroup for NAME with a process of that new namespace.
    InodeReuse {
        #[arg(long)]
        name: String,
    },
}

fn print(value: Value) {
    println!("{value}");
}

fn error_json(e: &zbus::Error) -> Value {
    match e {
        zbus::Error::MethodError(name, message, _) => {
            json!({"ok": false, "error": name.as_str(), "message": message.clone().unwrap_or_default()})
        }
        other => json!({"ok": false, "error": "client", "message": other.to_string()}),
    }
}

/// A child parked in a new user namespace until killed.
struct Holder {
    pid: nix::unistd::Pid,
}

impl Holder {
    fn new() -> Holder {
        let (ready_r, ready_w) = nix::unistd::pipe().unwrap();
        // SAFETY: this program is single-threaded (a current-thread runtime spawns none); the
        // child only makes raw syscalls.
        match unsafe { nix::unistd::fork() }.unwrap() {
            nix::unistd::ForkResult::Child => unsafe {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                let status: u8 = if libc::unshare(libc::CLONE_NEWUSER) == 0 {
                    0
                } else {
                    1
                };
                libc::write(ready_w.as_raw_fd(), (&status as *const u8).cast(), 1);
                loop {
                    libc::pause();
                }
            },
            nix::unistd::ForkResult::Parent { child } => {
                drop(ready_w);
                let mut status = [0u8];
                File::from(ready_r).read_exact(&mut status).unwrap();
                assert_eq!(status[0], 0, "unshare(CLONE_NEWUSER) failed");
                Holder { pid: child }
            }
        }
    }

    fn userns(&self) -> OwnedFd {
        File::open(format!("/proc/{}/ns/user", self.pid))
            .unwrap()
            .into()
    }

    fn end(self) {
        let _ = nix::sys::signal::kill(self.pid, nix::sys::signal::Signal::SIGKILL);
        let _ = nix::sys::wait::waitpid(self.pid, None);
    }
}

/// Runs `body` in a forked child that joined `userns` as its root, and waits for it.
fn in_namespace(userns: BorrowedFd<'_>, body: impl FnOnce()) {
    // SAFETY: single-threaded program; the child joins the namespace and leaves with _exit.
    match unsafe { nix::unistd::fork() }.unwrap() {
        nix::unistd::ForkResult::Child => {
            if nix::sched::setns(userns, nix::sched::CloneFlags::CLONE_NEWUSER).is_ok() {
                body();
            }
            // SAFETY: leaving the forked child.
            unsafe { libc::_exit(0) }
        }
        nix::unistd::ForkResult::Parent { child } => {
            let _ = nix::sys::wait::waitpid(child, None);
        }
    }
}

fn send_fd(sock: BorrowedFd<'_>, fd: BorrowedFd<'_>) {
    let fds = [fd.as_raw_fd()];
    socket::sendmsg::<()>(
        sock.as_raw_fd(),
        &[std::io::IoSlice::new(b"x")],
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::empty(),
        None,
    )
    .unwrap();
}

fn receive_fd(sock: BorrowedFd<'_>) -> OwnedFd {
    let mut buf = [0u8; 8];
    let mut iov = [std::io::IoSliceMut::new(&mut buf)];
    let mut cmsg = nix::cmsg_space!([std::os::fd::RawFd; 1]);
    let msg = socket::recvmsg::<()>(
        sock.as_raw_fd(),
        &mut iov,
        Some(&mut cmsg),
        MsgFlags::empty(),
    )
    .unwrap();
    let fd = msg
        .cmsgs()
        .unwrap()
        .find_map(|c| match c {
            ControlMessageOwned::ScmRights(fds) => fds.first().copied(),
            _ => None,
        })
        .expect("an fd");
    // SAFETY: received with SCM_RIGHTS, owned by nobody else.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// What keeps the namespace alive once nothing else does, and how to get it back.
enum Parked {
    /// The receiving end of a socket pair whose queue holds the namespace's fd (the sending
    /// end is closed).
    InFlight(std::os::unix::net::UnixDatagram),
    /// A socket of a network namespace the user namespace owns.
    Socket(OwnedFd),
}

impl Parked {
    fn new(trick: Trick, userns: OwnedFd) -> Parked {
        match trick {
            Trick::FdInFlight => {
                let (a, b) = std::os::unix::net::UnixDatagram::pair().unwrap();
                send_fd(a.as_fd(), userns.as_fd());
                Parked::InFlight(b)
            }
            Trick::NetnsSocket => {
                let (ours, theirs) = std::os::unix::net::UnixDatagram::pair().unwrap();
                in_namespace(userns.as_fd(), || {
                    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
                    // SAFETY: a plain socket(2) call.
                    let sock = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0) };
                    // SAFETY: socket(2) returned a new fd (checked by the send failing if not).
                    let sock = unsafe { OwnedFd::from_raw_fd(sock) };
                    send_fd(theirs.as_fd(), sock.as_fd());
                });
                Parked::Socket(receive_fd(ours.as_fd()))
            }
        }
    }

    /// The user namespace, recovered as its holder would.
    fn recover(&self) -> OwnedFd {
        match self {
            Parked::InFlight(queue) => receive_fd(queue.as_fd()),
            Parked::Socket(sock) => {
                const SIOCGSKNS: libc::c_ulong = 0x894C;
                // SAFETY: SIOCGSKNS takes no argument and returns a new fd of the socket's
                // network namespace.
                let netns = unsafe { libc::ioctl(sock.as_raw_fd(), SIOCGSKNS, 0) };
                assert!(netns >= 0, "SIOCGSKNS: {}", std::io::Error::last_os_error());
                // SAFETY: a fresh fd from the ioctl.
                let netns = unsafe { OwnedFd::from_raw_fd(netns) };
                burrow_sys::userns::owning_userns(netns.as_fd()).unwrap()
            }
        }
    }
}

/// The uid_map of `userns`, read by a process that joined it.
fn uid_map_inside(userns: BorrowedFd<'_>) -> String {
    let (ours, theirs) = std::os::unix::net::UnixDatagram::pair().unwrap();
    in_namespace(userns, || {
        let map = std::fs::read_to_string("/proc/self/uid_map").unwrap_or_default();
        let _ = theirs.send(map.trim().as_bytes());
    });
    drop(theirs);
    let mut buf = [0u8; 256];
    let n = ours.recv(&mut buf).unwrap_or(0);
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

fn wait_for_line() {
    let mut line = String::new();
    let _ = std::io::stdin().lock().read_line(&mut line);
}

async fn keep_alive(proxy: &IdMap1Proxy<'_>, name: &str, trick: Trick, keep: bool) {
    let holder = Holder::new();
    let base = match proxy.allocate(name, holder.userns().into()).await {
        Ok((base, _, _)) => base,
        Err(e) => return print(error_json(&e)),
    };
    print(json!({"op": "allocate", "ok": true, "base": base}));
    if keep {
        if let Err(e) = proxy.keep(name).await {
            return print(error_json(&e));
        }
    }
    let parked = Parked::new(trick, holder.userns());
    holder.end();
    let released = match proxy.release(name).await {
        Ok(()) => json!({"op": "release", "ok": true}),
        Err(e) => error_json(&e),
    };
    print(released);
    print(json!({"op": "parked", "base": base}));
    wait_for_line();
    let userns = parked.recover();
    print(json!({"op": "recovered", "uid_map": uid_map_inside(userns.as_fd())}));
    wait_for_line();
}

async fn inode_reuse(proxy: &IdMap1Proxy<'_>, name: &str) {
    let holder = Holder::new();
    let userns = holder.userns();
    let inode = File::open(format!("/proc/{}/ns/user", holder.pid))
        .unwrap()
        .metadata()
        .unwrap()
        .ino();
    if let Err(e) = proxy.allocate(name, userns.into()).await {
        return print(error_json(&e));
    }
    holder.end();
    // The kernel hands out the lowest free nsfs inode number: a new namespace soon gets the
    // dead one's.
    let mut reused = None;
    for _ in 0..2000 {
        let candidate = Holder::new();
        let ino = std::fs::metadata(format!("/proc/{}/ns/user", candidate.pid))
            .unwrap()
            .ino();
        if ino == inode {
            reused = Some(candidate);
            break;
        }
        candidate.end();
    }
    let Some(impostor) = reused else {
        return print(json!({"op": "inode-reuse", "ok": false, "error": "no reuse"}));
    };
    let pidfd = rustix::process::pidfd_open(
        rustix::process::Pid::from_raw(impostor.pid.as_raw()).unwrap(),
        rustix::process::PidfdFlags::empty(),
    )
    .unwrap();
    let mut result = match proxy.add_control_group(name, pidfd.into()).await {
        Ok(path) => json!({"ok": true, "path": path}),
        Err(e) => error_json(&e),
    };
    result["op"] = "add-cgroup".into();
    result["inode"] = inode.into();
    result["impostor"] = impostor.pid.as_raw().into();
    print(result);
    impostor.end();
}

fn main() {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let conn = zbus::Connection::system().await.expect("system bus");
        let proxy = IdMap1Proxy::new(&conn).await.unwrap();
        match args.command {
            Attack::KeepAlive { name, trick, keep } => keep_alive(&proxy, &name, trick, keep).await,
            Attack::InodeReuse { name } => inode_reuse(&proxy, &name).await,
        }
    });
}
