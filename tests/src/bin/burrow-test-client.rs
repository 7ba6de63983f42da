//! A bus client for Burrow's tests, run as root or as a test user. It creates the user
//! namespaces it passes (as a real runtime would), calls the helpers and prints one JSON line
//! per result, with error names, so tests can assert on exactly what the helper said.

use std::fs::File;
use std::io::{BufRead, Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::time::Instant;

use burrow_contract::proxy::IdMap1Proxy;
use clap::{Parser, Subcommand, ValueEnum};
use serde_json::{json, Value};

#[derive(Parser)]
struct Args {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Clone, Copy, ValueEnum, PartialEq)]
enum FdKind {
    /// A new, unmapped user namespace created by this client.
    Fresh,
    /// A user namespace this client created and mapped itself (`0 <uid> 1`).
    SelfMapped,
    /// A regular file (/etc/hostname).
    File,
    /// The network namespace of a fresh user namespace's process.
    NetNs,
    /// Whatever fd 3 the client inherited.
    Inherited,
}

#[derive(Subcommand)]
enum Cmd {
    /// Allocate one range; with --hold keep the namespace until stdin closes.
    Allocate {
        #[arg(long)]
        name: String,
        #[arg(long, value_enum, default_value = "fresh")]
        fd_kind: FdKind,
        #[arg(long)]
        hold: bool,
        /// Then allocate again with the same namespace under this name.
        #[arg(long)]
        again_as: Option<String>,
    },
    /// COUNT cycles of: new namespace, allocate, check its maps, drop it, release.
    Cycles {
        #[arg(long)]
        prefix: String,
        #[arg(long)]
        count: usize,
    },
    /// COUNT times, ping idmapd (org.freedesktop.DBus.Peer.Ping, answered by its bus library
    /// alone): the round trip through the bus that every call pays, and its tail here.
    Pings {
        #[arg(long)]
        count: usize,
    },
    /// COUNT times, ask polkitd itself whether this client may allocate a range (Allocate's
    /// action, this connection as the subject, as idmapd asks): what a helper's call waits
    /// for when polkit is asked.
    PolkitChecks {
        #[arg(long)]
        count: usize,
    },
    /// Allocate COUNT ranges, keeping every namespace alive, until stdin closes. Bus errors
    /// (the helper being killed) are reported and the burst goes on.
    Burst {
        #[arg(long)]
        prefix: String,
        #[arg(long)]
        count: usize,
    },
    /// Join the range held as EXISTING under NAME, with the user namespace of process PID
    /// (--userns-of) or one of --fd-kind.
    Join {
        #[arg(long)]
        existing: String,
        #[arg(long)]
        name: String,
        #[arg(long, value_enum, default_value = "fresh")]
        fd_kind: FdKind,
        #[arg(long)]
        userns_of: Option<i32>,
    },
    Release {
        #[arg(long)]
        name: String,
    },
    /// Keep range NAME: its Release parks it for NAME.
    Keep {
        #[arg(long)]
        name: String,
    },
    /// Free the range parked for NAME.
    Forget {
        #[arg(long)]
        name: String,
    },
    Get {
        #[arg(long)]
        name: String,
    },
    List,
    /// AddControlGroup for range NAME with a pidfd of PID.
    AddCgroup {
        #[arg(long)]
        name: String,
        #[arg(long)]
        pid: i32,
    },
    /// The pool and usage properties.
    Props,
    /// Get a /dev from devd for a user namespace (allocated through idmapd unless --unmapped),
    /// then look at it from inside that namespace (see inspect-dev).
    DevCreate {
        #[arg(long, value_enum, default_value = "fresh")]
        fd_kind: FdKind,
        /// Skip the idmapd allocation (the namespace stays unmapped).
        #[arg(long)]
        unmapped: bool,
        #[arg(long)]
        extra: Vec<String>,
        /// Add an option devd does not know.
        #[arg(long)]
        bogus_option: bool,
    },
    /// Assemble a container by hand from the helpers (idmapd, devd, mountd BuildRoot), run
    /// SCRIPT in it with /bin/sh, report its output and exit status.
    Container {
        #[arg(long)]
        rootfs: String,
        #[arg(long)]
        script: String,
        /// Extra plan entries as JSON: {"mounts": [[dest, type, fd_or_null, [opts]]...],
        /// "masked_paths": [...], "readonly_paths": [...], "extra_fds": ["/path", ...],
        /// "bogus_key": true, "pidfd_of": PID, "lxcfs": true}
        #[arg(long, default_value = "{}")]
        plan: String,
    },
    /// IdmapMount of DIR for a fresh, allocated user namespace; reports the owner of DIR's
    /// entries as seen through the mount from inside, and creates FILE (if given) through it.
    IdmapMount {
        #[arg(long)]
        dir: String,
        #[arg(long)]
        read_only: bool,
        #[arg(long)]
        create: Option<String>,
        #[arg(long, value_enum, default_value = "fresh")]
        fd_kind: FdKind,
    },
    /// Internal: joins the user namespace on fd 3 as its root, attaches the mount on fd 4 in a
    /// new mount namespace and reports what it sees.
    InspectDev,
    /// Makes system calls a seccomp profile may deny, with harmless arguments, and prints
    /// each one's errno (0: it succeeded), as the kernel answered here.
    Syscalls,
    /// Internal: like inspect-dev, for an ID-mapped directory: owners inside, and creates
    /// FILE through it.
    InspectMount {
        #[arg(long)]
        create: Option<String>,
    },
    /// Print the next COUNT Allocated/Released signals (after a `subscribed` line).
    WatchSignals {
        #[arg(long)]
        count: usize,
    },
    /// Kernel keyrings: plant keys of a known payload, or try to reach someone else's.
    Keys {
        #[command(subcommand)]
        command: KeysCmd,
    },
    /// Makes the denied system calls (and getpid) through their x32 numbers and prints each
    /// one's errno.
    X32Syscalls,
}

#[derive(Subcommand)]
enum KeysCmd {
    /// Adds a `user` key `burrow-secret-LABEL` to the session keyring and a keyring
    /// `burrow-ring-LABEL`, holding key `burrow-secret-LABEL-u`, to the user keyring, each with
    /// payload `burrow-secret-payload-LABEL`; prints their ids as JSON (also to --write), then
    /// execs COMMAND, if any, with that session keyring.
    Plant {
        #[arg(long)]
        label: String,
        /// First join (or create) the session keyring of this name, as a login's pam_keyinit;
        /// the same user's next `--join NAME` joins it again.
        #[arg(long)]
        join: Option<String>,
        #[arg(long)]
        write: Option<std::path::PathBuf>,
        #[arg(last = true)]
        command: Vec<String>,
    },
    /// Reports this process's own keyrings, then tries every way to reach the keys each TARGET
    /// (a JSON file `plant` wrote) names: by id, by search, by link, by joining its session
    /// keyring's name.
    Probe { targets: Vec<std::path::PathBuf> },
}

/// A child process parked in a new user namespace, killed on drop.
struct Holder {
    pid: nix::unistd::Pid,
}

impl Holder {
    fn new(self_map: bool) -> Holder {
        let uid = nix::unistd::getuid().as_raw();
        let map_line = format!("0 {uid} 1\n");
        let (ready_r, ready_w) = nix::unistd::pipe().unwrap();
        let (hold_r, hold_w) = nix::unistd::pipe().unwrap();
        // SAFETY: the client is single-threaded (current-thread runtime not yet started when
        // holders are made from `main`'s synchronous parts, and zbus spawns no threads on it);
        // the child only makes raw syscalls.
        match unsafe { nix::unistd::fork() }.unwrap() {
            nix::unistd::ForkResult::Child => unsafe {
                use std::os::fd::AsRawFd;
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                let mut status = 0u8;
                if libc::unshare(libc::CLONE_NEWUSER) != 0 {
                    status = 1;
                } else if self_map {
                    let deny = c"/proc/self/setgroups";
                    let fd = libc::open(deny.as_ptr(), libc::O_WRONLY);
                    libc::write(fd, b"deny".as_ptr().cast(), 4);
                    libc::close(fd);
                    let fd = libc::open(c"/proc/self/uid_map".as_ptr(), libc::O_WRONLY);
                    if libc::write(fd, map_line.as_ptr().cast(), map_line.len()) < 0 {
                        status = 2;
                    }
                    libc::close(fd);
                }
                libc::write(ready_w.as_raw_fd(), (&status as *const u8).cast(), 1);
                let mut buf = 0u8;
                libc::read(hold_r.as_raw_fd(), (&mut buf as *mut u8).cast(), 1);
                libc::_exit(0);
            },
            nix::unistd::ForkResult::Parent { child } => {
                drop(ready_w);
                drop(hold_r);
                std::mem::forget(hold_w); // closed by exit or kill
                let mut status = [0u8];
                File::from(ready_r).read_exact(&mut status).unwrap();
                assert_eq!(status[0], 0, "child could not set up its user namespace");
                Holder { pid: child }
            }
        }
    }

    fn ns(&self, kind: &str) -> OwnedFd {
        File::open(format!("/proc/{}/ns/{kind}", self.pid))
            .unwrap()
            .into()
    }

    fn map(&self, which: &str) -> String {
        std::fs::read_to_string(format!("/proc/{}/{which}", self.pid))
            .unwrap_or_default()
            .trim()
            .to_string()
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(self.pid, nix::sys::signal::Signal::SIGKILL);
        let _ = nix::sys::wait::waitpid(self.pid, None);
    }
}

fn error_json(e: &zbus::Error) -> Value {
    match e {
        zbus::Error::MethodError(name, message, _) => {
            json!({"ok": false, "error": name.as_str(), "message": message.clone().unwrap_or_default()})
        }
        other => json!({"ok": false, "error": "client", "message": other.to_string()}),
    }
}

fn print(value: Value) {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{value}").unwrap();
    out.flush().unwrap();
}

fn now_ns() -> u128 {
    let ts = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).unwrap();
    ts.tv_sec() as u128 * 1_000_000_000 + ts.tv_nsec() as u128
}

/// Turns the two characters `\0` into a NUL byte, so tests can send names argv cannot carry.
fn unescape(name: &str) -> String {
    name.replace("\\0", "\0")
}

async fn allocate(
    proxy: &IdMap1Proxy<'_>,
    name: &str,
    fd: OwnedFd,
    holder: Option<&Holder>,
) -> Value {
    let mut result = match proxy.allocate(name, fd.into()).await {
        Ok((uid_base, gid_base, size)) => {
            json!({"ok": true, "base": uid_base, "gid_base": gid_base, "size": size})
        }
        Err(e) => error_json(&e),
    };
    if let Some(h) = holder {
        result["holder_pid"] = h.pid.as_raw().into();
        result["uid_map"] = h.map("uid_map").into();
        result["gid_map"] = h.map("gid_map").into();
    }
    result["op"] = "allocate".into();
    result["name"] = name.into();
    result
}

/// The JSON line of a call `op` that answers nothing.
fn unit_result(op: &str, result: zbus::Result<()>) -> Value {
    let mut value = match result {
        Ok(()) => json!({"ok": true}),
        Err(e) => error_json(&e),
    };
    value["op"] = op.into();
    value
}

async fn connect() -> zbus::Connection {
    zbus::Connection::system()
        .await
        .expect("connect to the system bus")
}

fn syscalls() -> Value {
    let errno = |result: libc::c_long| {
        if result < 0 {
            std::io::Error::last_os_error().raw_os_error().unwrap_or(-1)
        } else {
            0
        }
    };
    let nowhere = c"/nonexistent-burrow-probe";
    // SAFETY: each call gets null pointers, invalid fds or a path that does not exist, which the
    // kernel rejects or treats as a no-op (Q_SYNC, iopl to the current level, unshare of nothing).
    unsafe {
        json!({
            "kexec_load": errno(libc::syscall(libc::SYS_kexec_load, 0, 0, 0, 0)),
            "kexec_file_load": errno(libc::syscall(libc::SYS_kexec_file_load, -1, -1, 0, 0, 0)),
            "init_module": errno(libc::syscall(libc::SYS_init_module, 0, 0, c"".as_ptr())),
            "finit_module": errno(libc::syscall(libc::SYS_finit_module, -1, c"".as_ptr(), 0)),
            "delete_module": errno(libc::syscall(libc::SYS_delete_module, c"burrow-none".as_ptr(), 0)),
            "open_by_handle_at": errno(libc::syscall(libc::SYS_open_by_handle_at, 9999, 0, 0)),
            "iopl": errno(libc::syscall(libc::SYS_iopl, 0)),
            "ioperm": errno(libc::syscall(libc::SYS_ioperm, 0, 0, 0)),
            "swapon": errno(libc::syscall(libc::SYS_swapon, nowhere.as_ptr(), 0)),
            "swapoff": errno(libc::syscall(libc::SYS_swapoff, nowhere.as_ptr())),
            "acct": errno(libc::syscall(libc::SYS_acct, nowhere.as_ptr())),
            "uselib": errno(libc::syscall(libc::SYS_uselib, nowhere.as_ptr())),
            "lookup_dcookie": errno(libc::syscall(libc::SYS_lookup_dcookie, 0, 0, 0)),
            // QCMD(Q_SYNC, USRQUOTA) on no device: sync every filesystem's quotas.
            "quotactl": errno(libc::syscall(libc::SYS_quotactl, 0x800001 << 8, 0, 0, 0)),
            "unshare": errno(libc::syscall(libc::SYS_unshare, 0)),
            "setns": errno(libc::syscall(libc::SYS_setns, -1, 0)),
            "keyctl": errno(libc::syscall(libc::SYS_keyctl, 0 /* KEYCTL_GET_KEYRING_ID */, -3 /* session */, 0)),
            "mount": errno(libc::syscall(libc::SYS_mount, 0, nowhere.as_ptr(), 0, 0, 0)),
            "umount2": errno(libc::syscall(libc::SYS_umount2, nowhere.as_ptr(), 0)),
        })
    }
}

/// The calls the system-container profile denies, made through their x32 numbers
/// (`__X32_SYSCALL_BIT | nr`; kexec_load also through its x32-only number, 528), and getpid,
/// which the profile allows for x86_64: errno 0 means the call ran, ENOSYS that the kernel has
/// no x32 ABI, EPERM that a filter answered.
fn x32_syscalls() -> Value {
    const X32: libc::c_long = 0x4000_0000;
    let calls = [
        ("kexec_load", libc::SYS_kexec_load),
        ("kexec_load_x32", 528),
        ("kexec_file_load", libc::SYS_kexec_file_load),
        ("init_module", libc::SYS_init_module),
        ("finit_module", libc::SYS_finit_module),
        ("delete_module", libc::SYS_delete_module),
        ("open_by_handle_at", libc::SYS_open_by_handle_at),
        ("iopl", libc::SYS_iopl),
        ("ioperm", libc::SYS_ioperm),
        ("swapon", libc::SYS_swapon),
        ("swapoff", libc::SYS_swapoff),
        ("acct", libc::SYS_acct),
        ("uselib", libc::SYS_uselib),
        ("lookup_dcookie", libc::SYS_lookup_dcookie),
        ("quotactl", libc::SYS_quotactl),
        ("getpid", libc::SYS_getpid),
    ];
    let mut out = serde_json::Map::new();
    for (name, nr) in calls {
        // SAFETY: every argument is zero: null pointers and fd 0 with no length, which the
        // kernel rejects, or (getpid) ignores.
        let result = unsafe { libc::syscall(X32 | nr, 0, 0, 0, 0, 0) };
        let errno = if result < 0 {
            std::io::Error::last_os_error().raw_os_error().unwrap_or(-1)
        } else {
            0
        };
        out.insert(name.to_string(), json!(errno));
    }
    Value::Object(out)
}

/// Prints one line per Peer.Ping of idmapd: its latency.
async fn pings(conn: &zbus::Connection, count: usize) {
    let peer = zbus::fdo::PeerProxy::builder(conn)
        .destination(burrow_contract::idmap::BUS_NAME)
        .unwrap()
        .path(burrow_contract::idmap::OBJECT_PATH)
        .unwrap()
        .build()
        .await
        .unwrap();
    for _ in 0..count {
        let started = Instant::now();
        let answer = peer.ping().await;
        let ping_us = started.elapsed().as_micros() as u64;
        print(match answer {
            Ok(()) => json!({"ok": true, "ping_us": ping_us}),
            Err(e) => json!({"ok": false, "error": e.to_string()}),
        });
    }
}

/// Prints one line per CheckAuthorization: its latency and polkitd's answer.
async fn polkit_checks(conn: &zbus::Connection, count: usize) {
    use zbus_polkit::policykit1::{AuthorityProxy, Subject};
    let authority = AuthorityProxy::new(conn).await.unwrap();
    let own_name = conn
        .unique_name()
        .expect("a bus connection has a unique name");
    let subject = Subject {
        subject_kind: "system-bus-name".into(),
        subject_details: [(
            "name".to_string(),
            zbus::zvariant::Value::from(own_name.as_str())
                .try_into()
                .unwrap(),
        )]
        .into(),
    };
    for _ in 0..count {
        let started = Instant::now();
        let answer = authority
            .check_authorization(
                &subject,
                burrow_contract::idmap::ACTION_ALLOCATE,
                &std::collections::HashMap::new(),
                Default::default(),
                "",
            )
            .await;
        let check_us = started.elapsed().as_micros() as u64;
        print(match answer {
            Ok(result) => {
                json!({"ok": true, "authorized": result.is_authorized, "check_us": check_us})
            }
            Err(e) => json!({"ok": false, "error": e.to_string()}),
        });
    }
}

fn wait_for_stdin_eof() {
    let stdin = std::io::stdin();
    for _ in stdin.lock().lines() {}
}

fn main() {
    let args = Args::parse();
    // Before any thread exists: setns(CLONE_NEWUSER) needs a single-threaded process.
    match &args.command {
        Cmd::InspectDev => return print(inspect_dev::run()),
        Cmd::Syscalls => return print(syscalls()),
        Cmd::InspectMount { create } => return print(inspect_dev::run_mount(create.as_deref())),
        Cmd::X32Syscalls => return print(x32_syscalls()),
        Cmd::Keys {
            command:
                KeysCmd::Plant {
                    label,
                    join,
                    write,
                    command,
                },
        } => return keys::plant(label, join.as_deref(), write.as_deref(), command),
        Cmd::Keys {
            command: KeysCmd::Probe { targets },
        } => return print(keys::probe(targets)),
        _ => {}
    }
    // Take the inherited fd before anything else can be opened as fd 3.
    let mut inherited = matches!(
        args.command,
        Cmd::Allocate {
            fd_kind: FdKind::Inherited,
            ..
        } | Cmd::DevCreate {
            fd_kind: FdKind::Inherited,
            ..
        } | Cmd::IdmapMount {
            fd_kind: FdKind::Inherited,
            ..
        } | Cmd::Join {
            fd_kind: FdKind::Inherited,
            ..
        }
    )
    // SAFETY: the test passes fd 3 to the client on purpose; nothing else owns it yet.
    .then(|| unsafe { OwnedFd::from_raw_fd(3) });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let conn = connect().await;
        let proxy = IdMap1Proxy::new(&conn).await.unwrap();
        match args.command {
            Cmd::Allocate { name, fd_kind, hold, again_as } => {
                let holder = matches!(fd_kind, FdKind::Fresh | FdKind::SelfMapped | FdKind::NetNs)
                    .then(|| Holder::new(fd_kind == FdKind::SelfMapped));
                let mut fd = |holder: &Option<Holder>| -> OwnedFd {
                    match fd_kind {
                        FdKind::Fresh | FdKind::SelfMapped => holder.as_ref().unwrap().ns("user"),
                        FdKind::NetNs => holder.as_ref().unwrap().ns("net"),
                        FdKind::File => File::open("/etc/hostname").unwrap().into(),
                        FdKind::Inherited => inherited.take().expect("fd 3 used once"),
                    }
                };
                print(allocate(&proxy, &unescape(&name), fd(&holder), holder.as_ref()).await);
                if let Some(again) = again_as {
                    print(allocate(&proxy, &again, fd(&holder), holder.as_ref()).await);
                }
                if hold {
                    wait_for_stdin_eof();
                }
            }
            Cmd::Cycles { prefix, count } => {
                for i in 0..count {
                    let name = format!("{prefix}-{i}");
                    let holder = Holder::new(false);
                    let started = Instant::now();
                    let mut result = allocate(&proxy, &name, holder.ns("user"), Some(&holder)).await;
                    result["alloc_us"] = (started.elapsed().as_micros() as u64).into();
                    result["t_acquired"] = now_ns().to_string().into();
                    drop(holder);
                    result["t_released"] = now_ns().to_string().into();
                    let started = Instant::now();
                    result["release"] = match proxy.release(&name).await {
                        Ok(()) => json!({"ok": true}),
                        Err(e) => error_json(&e),
                    };
                    result["release_us"] = (started.elapsed().as_micros() as u64).into();
                    print(result);
                }
            }
            Cmd::PolkitChecks { count } => polkit_checks(&conn, count).await,
            Cmd::Pings { count } => pings(&conn, count).await,
            Cmd::Burst { prefix, count } => {
                let mut holders = vec![];
                for i in 0..count {
                    let name = format!("{prefix}-{i}");
                    let holder = Holder::new(false);
                    let mut result = allocate(&proxy, &name, holder.ns("user"), Some(&holder)).await;
                    if result["ok"] == true {
                        holders.push(holder);
                    } else if result["error"] == "client" || result["error"] == "org.freedesktop.DBus.Error.NoReply" {
                        result["retry"] = true.into();
                    }
                    print(result);
                }
                print(json!({"op": "burst-done"}));
                wait_for_stdin_eof();
                drop(holders);
            }
            Cmd::Join { existing, name, fd_kind, userns_of } => {
                let holder = matches!(fd_kind, FdKind::Fresh | FdKind::SelfMapped)
                    .then(|| Holder::new(fd_kind == FdKind::SelfMapped));
                let fd: OwnedFd = match (userns_of, fd_kind) {
                    (Some(pid), _) => File::open(format!("/proc/{pid}/ns/user")).unwrap().into(),
                    (None, FdKind::Fresh | FdKind::SelfMapped) => holder.as_ref().unwrap().ns("user"),
                    (None, FdKind::NetNs) => Holder::new(false).ns("net"),
                    (None, FdKind::File) => File::open("/etc/hostname").unwrap().into(),
                    (None, FdKind::Inherited) => inherited.take().expect("fd 3"),
                };
                let mut result = match proxy.join(&existing, &name, fd.into()).await {
                    Ok((base, gid_base, size)) => json!({"ok": true, "base": base, "gid_base": gid_base, "size": size}),
                    Err(e) => error_json(&e),
                };
                result["op"] = "join".into();
                result["name"] = name.into();
                print(result);
            }
            Cmd::Release { name } => {
                print(unit_result("release", proxy.release(&unescape(&name)).await))
            }
            Cmd::Keep { name } => print(unit_result("keep", proxy.keep(&name).await)),
            Cmd::Forget { name } => print(unit_result("forget", proxy.forget(&name).await)),
            Cmd::Get { name } => {
                let mut result = match proxy.get(&unescape(&name)).await {
                    Ok((base, gid_base, size)) => json!({"ok": true, "base": base, "gid_base": gid_base, "size": size}),
                    Err(e) => error_json(&e),
                };
                result["op"] = "get".into();
                print(result);
            }
            Cmd::AddCgroup { name, pid } => {
                let pidfd = rustix::process::pidfd_open(
                    rustix::process::Pid::from_raw(pid).expect("a pid"),
                    rustix::process::PidfdFlags::empty(),
                )
                .expect("pidfd_open");
                let mut result = match proxy.add_control_group(&name, pidfd.into()).await {
                    Ok(path) => json!({"ok": true, "path": path}),
                    Err(e) => error_json(&e),
                };
                result["op"] = "add-cgroup".into();
                print(result);
            }
            Cmd::List => {
                let result = match proxy.list().await {
                    Ok(entries) => json!({"ok": true, "entries": entries.iter().map(|(uid, name, base, gid_base, size)| {
                        json!({"uid": uid, "name": name, "base": base, "gid_base": gid_base, "size": size})
                    }).collect::<Vec<_>>()}),
                    Err(e) => error_json(&e),
                };
                print(result);
            }
            Cmd::WatchSignals { count } => {
                use futures_util::StreamExt;
                let allocated = proxy.receive_allocated().await.unwrap().map(|s| {
                    let a = s.args().unwrap();
                    json!({"signal": "Allocated", "uid": a.uid, "name": a.name, "base": a.base, "size": a.size})
                });
                let released = proxy.receive_released().await.unwrap().map(|s| {
                    let a = s.args().unwrap();
                    json!({"signal": "Released", "uid": a.uid, "name": a.name, "base": a.base})
                });
                print(json!({"op": "subscribed"}));
                let mut both = futures_util::stream::select(allocated, released);
                for _ in 0..count {
                    print(both.next().await.expect("signal stream ended"));
                }
            }
            Cmd::InspectDev
            | Cmd::InspectMount { .. }
            | Cmd::Syscalls
            | Cmd::X32Syscalls
            | Cmd::Keys { .. } => unreachable!("handled before the runtime starts"),
            Cmd::Container { rootfs, script, plan } => {
                let plan: Value = serde_json::from_str(&plan).expect("--plan is JSON");
                print(container::run(&conn, &proxy, &rootfs, &script, &plan).await);
            }
            Cmd::IdmapMount { dir, read_only, create, fd_kind } => {
                let self_mapped = fd_kind == FdKind::SelfMapped;
                let holder = Holder::new(self_mapped);
                let name = format!("idm-{}", std::process::id());
                if !self_mapped {
                    let allocated = allocate(&proxy, &name, holder.ns("user"), Some(&holder)).await;
                    assert_eq!(allocated["ok"], true, "idmapd: {allocated}");
                }
                let userns = match fd_kind {
                    FdKind::Inherited => inherited.take().expect("fd 3"),
                    FdKind::File => File::open("/etc/hostname").unwrap().into(),
                    _ => holder.ns("user"),
                };
                let dir_fd: OwnedFd = rustix::fs::open(dir.as_str(), rustix::fs::OFlags::PATH | rustix::fs::OFlags::CLOEXEC, rustix::fs::Mode::empty()).unwrap();
                let mountd = burrow_contract::proxy::Mount1Proxy::new(&conn).await.unwrap();
                let started = Instant::now();
                let mut result = match mountd.idmap_mount(dir_fd.into(), userns.into(), read_only).await {
                    Ok(mount) => {
                        let idmap_us = started.elapsed().as_micros() as u64;
                        let report = inspect_dev::spawn_with("inspect-mount", holder.ns("user"), mount.into(), create.as_deref());
                        json!({"ok": true, "inside": report, "idmap_us": idmap_us})
                    }
                    Err(e) => error_json(&e),
                };
                result["op"] = "idmap-mount".into();
                drop(holder);
                if !self_mapped {
                    proxy.release(&name).await.unwrap();
                }
                print(result);
            }
            Cmd::DevCreate { fd_kind, unmapped, extra, bogus_option } => {
                let holder = Holder::new(fd_kind == FdKind::SelfMapped);
                let name = format!("dev-{}", std::process::id());
                if !unmapped {
                    let allocated = allocate(&proxy, &name, holder.ns("user"), Some(&holder)).await;
                    assert_eq!(allocated["ok"], true, "idmapd: {allocated}");
                }
                let fd: OwnedFd = match fd_kind {
                    FdKind::File => File::open("/etc/hostname").unwrap().into(),
                    FdKind::Inherited => inherited.take().expect("fd 3"),
                    FdKind::NetNs => holder.ns("net"),
                    FdKind::Fresh | FdKind::SelfMapped => holder.ns("user"),
                };
                let dev = burrow_contract::proxy::Dev1Proxy::new(&conn).await.unwrap();
                let mut options = std::collections::HashMap::new();
                if !extra.is_empty() {
                    options.insert("extra", zbus::zvariant::Value::from(extra.clone()));
                }
                if bogus_option {
                    options.insert("bogus", zbus::zvariant::Value::from("x"));
                }
                let mut result = match dev.create(fd.into(), options).await {
                    Ok(mount) => {
                        let out = inspect_dev::spawn(holder.ns("user"), mount.into());
                        json!({"ok": true, "inside": out})
                    }
                    Err(e) => error_json(&e),
                };
                result["op"] = "dev-create".into();
                drop(holder);
                if !unmapped {
                    proxy.release(&name).await.unwrap();
                }
                print(result);
            }
            Cmd::Props => {
                print(json!({
                    "pool_start": proxy.pool_start().await.unwrap(),
                    "pool_end": proxy.pool_end().await.unwrap(),
                    "range_size": proxy.range_size().await.unwrap(),
                    "in_use": proxy.in_use().await.unwrap(),
                }));
            }
        }
    });
}

mod inspect_dev {
    use std::os::fd::{AsRawFd, OwnedFd};
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    use std::os::unix::process::CommandExt;
    use std::process::Command;

    use serde_json::{json, Value};

    /// Runs `inspect-dev` in a new process with the two fds as 3 and 4; returns its report.
    pub fn spawn(userns: OwnedFd, mount: OwnedFd) -> Value {
        spawn_with("inspect-dev", userns, mount, None)
    }

    pub fn spawn_with(
        command: &str,
        userns: OwnedFd,
        mount: OwnedFd,
        create: Option<&str>,
    ) -> Value {
        let (ns, mnt) = (userns.as_raw_fd(), mount.as_raw_fd());
        let mut cmd = Command::new(std::env::current_exe().unwrap());
        cmd.arg(command);
        if let Some(create) = create {
            cmd.args(["--create", create]);
        }
        // SAFETY: only dup2/fcntl between fork and exec; fds 3 and 4 are set up from copies
        // above 10 so neither dup2 clobbers the other's source.
        unsafe {
            cmd.pre_exec(move || {
                let a = libc::fcntl(ns, libc::F_DUPFD, 10);
                let b = libc::fcntl(mnt, libc::F_DUPFD, 10);
                if a < 0 || b < 0 || libc::dup2(a, 3) < 0 || libc::dup2(b, 4) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "inspect-dev: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        drop((userns, mount));
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// Null for success, the errno for a failed call, and the error's text for a failure
    /// without one (never mistaken for success).
    fn errno_of(r: std::io::Result<()>) -> Value {
        match r {
            Ok(()) => Value::Null,
            Err(e) => e
                .raw_os_error()
                .map_or_else(|| json!(e.to_string()), |n| json!(n)),
        }
    }

    /// Joins the namespace, attaches fd 4 on /mnt, reports owners and creates `create`.
    pub fn run_mount(create: Option<&str>) -> Value {
        enter_and_attach();
        let mut owners = serde_json::Map::new();
        for entry in std::fs::read_dir("/mnt").unwrap().flatten() {
            let meta = std::fs::symlink_metadata(entry.path()).unwrap();
            owners.insert(
                entry.file_name().to_string_lossy().into_owned(),
                json!([meta.uid(), meta.gid()]),
            );
        }
        let created = create.map(|name| {
            errno_of(std::fs::write(
                std::path::Path::new("/mnt").join(name),
                b"written inside",
            ))
        });
        json!({"owners": owners, "create_errno": created})
    }

    pub fn run() -> Value {
        enter_and_attach();
        inspect()
    }

    fn enter_and_attach() {
        // SAFETY: single-threaded process (called before any runtime or thread starts).
        unsafe {
            assert_eq!(
                libc::setns(3, libc::CLONE_NEWUSER),
                0,
                "setns user: {}",
                std::io::Error::last_os_error()
            );
            assert_eq!(libc::setresgid(0, 0, 0), 0, "setgid 0 in the namespace");
            assert_eq!(libc::setresuid(0, 0, 0), 0, "setuid 0 in the namespace");
            assert_eq!(libc::unshare(libc::CLONE_NEWNS), 0, "unshare mnt");
            let root = c"/";
            assert_eq!(
                libc::mount(
                    std::ptr::null(),
                    root.as_ptr(),
                    std::ptr::null(),
                    libc::MS_REC | libc::MS_PRIVATE,
                    std::ptr::null()
                ),
                0
            );
            let target = c"/mnt";
            let empty = c"";
            let moved = libc::syscall(
                libc::SYS_move_mount,
                4,
                empty.as_ptr(),
                libc::AT_FDCWD,
                target.as_ptr(),
                0x4, /* MOVE_MOUNT_F_EMPTY_PATH */
            );
            assert_eq!(moved, 0, "move_mount: {}", std::io::Error::last_os_error());
        }
    }

    fn inspect() -> Value {
        let dev = std::path::Path::new("/mnt");
        let mut entries = vec![];
        let mut walk = vec![dev.to_path_buf()];
        while let Some(dir) = walk.pop() {
            for entry in std::fs::read_dir(&dir).unwrap().flatten() {
                let path = entry.path();
                let meta = std::fs::symlink_metadata(&path).unwrap();
                let name = path.strip_prefix(dev).unwrap().display().to_string();
                let kind = if meta.file_type().is_char_device() {
                    "chr"
                } else if meta.is_dir() {
                    "dir"
                } else if meta.file_type().is_symlink() {
                    "lnk"
                } else {
                    "other"
                };
                let rdev = meta.rdev();
                let mut e = json!({"name": name, "kind": kind, "mode": format!("{:o}", meta.mode() & 0o7777),
                    "uid": meta.uid(), "gid": meta.gid(),
                    "rdev": format!("{}:{}", libc::major(rdev), libc::minor(rdev))});
                if kind == "lnk" {
                    e["target"] = std::fs::read_link(&path)
                        .unwrap()
                        .display()
                        .to_string()
                        .into();
                }
                if kind == "dir" && !["pts", "shm", "mqueue"].contains(&name.as_str()) {
                    walk.push(path);
                }
                entries.push(e);
            }
        }
        entries.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
        let null_write = errno_of(
            std::fs::OpenOptions::new()
                .write(true)
                .open("/mnt/null")
                .and_then(|mut f| {
                    use std::io::Write;
                    f.write_all(b"discard me")
                }),
        );
        let mut zero = [1u8; 16];
        let zero_read = errno_of(std::fs::File::open("/mnt/zero").and_then(|mut f| {
            use std::io::Read;
            f.read_exact(&mut zero)
        }));
        let mknod = errno_of(
            nix::sys::stat::mknod(
                "/mnt/newnull",
                nix::sys::stat::SFlag::S_IFCHR,
                nix::sys::stat::Mode::from_bits_truncate(0o666),
                nix::sys::stat::makedev(1, 3),
            )
            .map_err(std::io::Error::from),
        );
        let vfs = nix::sys::statvfs::statvfs("/mnt").unwrap();
        let flags = vfs.flags();
        json!({
            "entries": entries,
            "null_write_errno": null_write,
            "zero_read_errno": zero_read,
            "zero_is_zero": zero == [0u8; 16],
            "mknod_errno": mknod,
            "nosuid": flags.contains(nix::sys::statvfs::FsFlags::ST_NOSUID),
            "noexec": flags.contains(nix::sys::statvfs::FsFlags::ST_NOEXEC),
            "uid_inside": nix::unistd::getuid().as_raw(),
        })
    }
}

mod container {
    use std::ffi::CString;
    use std::io::Read;
    use std::os::fd::{AsRawFd, OwnedFd, RawFd};

    use std::collections::HashMap;

    use burrow_contract::mount::NO_FD;
    use burrow_contract::proxy::{Dev1Proxy, IdMap1Proxy};
    use nix::sys::socket::{self, ControlMessage, MsgFlags};
    use serde_json::{json, Value};
    use zbus::zvariant::Value as ZValue;

    /// BuildRoot with a hand-made plan dictionary, as a hostile caller would send it: the tests
    /// send plans the contract's typed `BuildPlan` cannot express (unknown keys, unsupported
    /// types, a bind without a source fd). The runtime's tests send the typed plan.
    #[zbus::proxy(
        interface = "org.burrow.Mount1",
        default_service = "org.burrow.Mount1",
        default_path = "/org/burrow/Mount1"
    )]
    trait RawMount1 {
        fn build_root(
            &self,
            init_pidfd: zbus::zvariant::OwnedFd,
            plan: HashMap<&str, ZValue<'_>>,
            fds: Vec<zbus::zvariant::OwnedFd>,
        ) -> zbus::Result<zbus::zvariant::OwnedFd>;
    }

    /// runc's defaults.
    pub const MASKED: [&str; 11] = [
        "/proc/acpi",
        "/proc/asound",
        "/proc/kcore",
        "/proc/keys",
        "/proc/latency_stats",
        "/proc/timer_list",
        "/proc/timer_stats",
        "/proc/sched_debug",
        "/proc/scsi",
        "/sys/firmware",
        "/sys/devices/virtual/powercap",
    ];
    pub const READONLY: [&str; 5] = [
        "/proc/bus",
        "/proc/fs",
        "/proc/irq",
        "/proc/sys",
        "/proc/sysrq-trigger",
    ];

    fn read_byte(fd: RawFd) -> u8 {
        let mut b = 0u8;
        // SAFETY: reading one byte into a local.
        unsafe { libc::read(fd, (&mut b as *mut u8).cast(), 1) };
        b
    }

    fn write_bytes(fd: RawFd, bytes: &[u8]) {
        // SAFETY: writing from a valid slice.
        unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) };
    }

    /// The container's init (P2) and its parent (P1), forked like a runtime does it: P1
    /// creates the user namespace and waits for its maps, becomes root in it, unshares the
    /// rest and forks P2, the pid 1. P2 waits for its mount namespace on `sock`, joins it and
    /// execs /bin/sh -c SCRIPT with its output on `out`.
    struct Init {
        p1: nix::unistd::Pid,
        /// P1 reports P2's pid here.
        up: OwnedFd,
        /// Tells P1 the maps are written.
        go: OwnedFd,
        userns: OwnedFd,
    }

    fn start(script: &str, sock: RawFd, out: RawFd) -> Init {
        let argv: Vec<CString> = ["/bin/sh", "-c", script]
            .iter()
            .map(|a| CString::new(*a).unwrap())
            .collect();
        let argv_ptrs: Vec<*const libc::c_char> = argv
            .iter()
            .map(|a| a.as_ptr())
            .chain([std::ptr::null()])
            .collect();
        let envp: Vec<CString> = ["PATH=/bin:/sbin:/usr/bin:/usr/sbin", "HOME=/root"]
            .iter()
            .map(|a| CString::new(*a).unwrap())
            .collect();
        let envp_ptrs: Vec<*const libc::c_char> = envp
            .iter()
            .map(|a| a.as_ptr())
            .chain([std::ptr::null()])
            .collect();
        let (up_r, up_w_owned) = nix::unistd::pipe().unwrap();
        let (down_r_owned, down_w) = nix::unistd::pipe().unwrap();
        let (up_w, down_r_fd) = (up_w_owned.as_raw_fd(), down_r_owned.as_raw_fd());
        // SAFETY: the children only make raw syscalls with data prepared above.
        match unsafe { nix::unistd::fork() }.unwrap() {
            nix::unistd::ForkResult::Child => unsafe {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                // Keep the client's stdout (the test's pipe) out of the container.
                let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
                for fd in 0..3 {
                    libc::dup2(null, fd);
                }
                if libc::unshare(libc::CLONE_NEWUSER) != 0 {
                    libc::_exit(101);
                }
                write_bytes(up_w, b"u");
                read_byte(down_r_fd); // maps written
                if libc::setresgid(0, 0, 0) != 0 || libc::setresuid(0, 0, 0) != 0 {
                    libc::_exit(102);
                }
                // Credential changes clear the parent-death signal.
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                let flags = libc::CLONE_NEWPID
                    | libc::CLONE_NEWNET
                    | libc::CLONE_NEWIPC
                    | libc::CLONE_NEWUTS
                    | libc::CLONE_NEWCGROUP;
                if libc::unshare(flags) != 0 {
                    libc::_exit(103);
                }
                let p2 = libc::fork();
                if p2 == 0 {
                    // P2: pid 1 of the container.
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                    let mut byte = 0u8;
                    let mut iov = libc::iovec {
                        iov_base: (&mut byte as *mut u8).cast(),
                        iov_len: 1,
                    };
                    let mut cbuf = [0u8; 64];
                    let mut msg: libc::msghdr = std::mem::zeroed();
                    msg.msg_iov = &mut iov;
                    msg.msg_iovlen = 1;
                    msg.msg_control = cbuf.as_mut_ptr().cast();
                    msg.msg_controllen = cbuf.len();
                    if libc::recvmsg(sock, &mut msg, 0) <= 0 {
                        libc::_exit(104);
                    }
                    let cmsg = libc::CMSG_FIRSTHDR(&msg);
                    if cmsg.is_null() {
                        libc::_exit(105);
                    }
                    let mntns = *(libc::CMSG_DATA(cmsg) as *const i32);
                    if libc::setns(mntns, libc::CLONE_NEWNS) != 0 {
                        libc::_exit(106);
                    }
                    libc::close(mntns);
                    libc::chdir(c"/".as_ptr());
                    libc::dup2(out, 1);
                    libc::dup2(out, 2);
                    libc::execve(argv_ptrs[0], argv_ptrs.as_ptr(), envp_ptrs.as_ptr());
                    libc::_exit(107);
                }
                let pid_bytes = p2.to_ne_bytes();
                write_bytes(up_w, &pid_bytes);
                let mut status = 0;
                libc::waitpid(p2, &mut status, 0);
                libc::_exit(if libc::WIFEXITED(status) {
                    libc::WEXITSTATUS(status)
                } else {
                    128 + libc::WTERMSIG(status)
                });
            },
            nix::unistd::ForkResult::Parent { child } => {
                drop((up_w_owned, down_r_owned));
                assert_eq!(
                    read_byte(up_r.as_raw_fd()),
                    b'u',
                    "P1 failed to unshare its user namespace"
                );
                let userns: OwnedFd = std::fs::File::open(format!("/proc/{child}/ns/user"))
                    .unwrap()
                    .into();
                Init {
                    p1: child,
                    up: up_r,
                    go: down_w,
                    userns,
                }
            }
        }
    }

    fn fd_arg(plan: &Value, key: &str) -> Vec<String> {
        plan[key]
            .as_array()
            .map(|a| a.iter().map(|v| v.as_str().unwrap().to_string()).collect())
            .unwrap_or_default()
    }

    pub async fn run(
        conn: &zbus::Connection,
        idmap: &IdMap1Proxy<'_>,
        rootfs: &str,
        script: &str,
        plan: &Value,
    ) -> Value {
        let (ours, theirs) = socket::socketpair(
            socket::AddressFamily::Unix,
            socket::SockType::SeqPacket,
            None,
            socket::SockFlag::empty(),
        )
        .unwrap();
        let (out_r, out_w) = nix::unistd::pipe().unwrap();
        let init = start(script, theirs.as_raw_fd(), out_w.as_raw_fd());
        drop(theirs);
        drop(out_w);
        let name = format!("ctr-{}", std::process::id());
        let result = async {
            let (base, _, _) = idmap
                .allocate(&name, init.userns.try_clone().unwrap().into())
                .await?;
            write_bytes(init.go.as_raw_fd(), b"g");
            let mut pid = [0u8; 4];
            nix::unistd::read(init.up.as_raw_fd(), &mut pid).unwrap();
            let p2 = i32::from_ne_bytes(pid);
            let pidfd_target = plan["pidfd_of"].as_i64().map_or(p2, |p| p as i32);
            let pidfd: OwnedFd = match plan["pidfd_kind"].as_str() {
                Some("file") => std::fs::File::open("/etc/hostname").unwrap().into(),
                _ => rustix::process::pidfd_open(
                    rustix::process::Pid::from_raw(pidfd_target).unwrap(),
                    rustix::process::PidfdFlags::empty(),
                )
                .unwrap(),
            };
            let dev = Dev1Proxy::new(conn)
                .await?
                .create(init.userns.try_clone().unwrap().into(), Default::default())
                .await?;
            let open_path = |path: &str| -> OwnedFd {
                rustix::fs::open(
                    path,
                    rustix::fs::OFlags::PATH | rustix::fs::OFlags::CLOEXEC,
                    rustix::fs::Mode::empty(),
                )
                .unwrap()
            };
            let mut fds: Vec<zbus::zvariant::OwnedFd> = vec![open_path(rootfs).into(), dev];
            for extra in fd_arg(plan, "extra_fds") {
                fds.push(open_path(&extra).into());
            }
            let none = NO_FD;
            let mut mounts: Vec<(String, String, u32, Vec<String>)> = vec![
                (
                    "/proc".into(),
                    "proc".into(),
                    none,
                    vec!["nosuid".into(), "noexec".into(), "nodev".into()],
                ),
                (
                    "/sys".into(),
                    "sysfs".into(),
                    none,
                    vec![
                        "nosuid".into(),
                        "noexec".into(),
                        "nodev".into(),
                        "ro".into(),
                    ],
                ),
                (
                    "/dev/pts".into(),
                    "devpts".into(),
                    none,
                    [
                        "nosuid",
                        "noexec",
                        "newinstance",
                        "ptmxmode=0666",
                        "mode=0620",
                        "gid=5",
                    ]
                    .map(String::from)
                    .to_vec(),
                ),
                (
                    "/dev/mqueue".into(),
                    "mqueue".into(),
                    none,
                    vec!["nosuid".into(), "noexec".into(), "nodev".into()],
                ),
                (
                    "/dev/shm".into(),
                    "tmpfs".into(),
                    none,
                    ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]
                        .map(String::from)
                        .to_vec(),
                ),
                (
                    "/run".into(),
                    "tmpfs".into(),
                    none,
                    ["nosuid", "nodev", "mode=755"].map(String::from).to_vec(),
                ),
                (
                    "/tmp".into(),
                    "tmpfs".into(),
                    none,
                    ["nosuid", "nodev", "mode=1777"].map(String::from).to_vec(),
                ),
                (
                    "/sys/fs/cgroup".into(),
                    "cgroup".into(),
                    none,
                    vec!["nosuid".into(), "noexec".into(), "nodev".into()],
                ),
            ];
            for m in plan["mounts"].as_array().cloned().unwrap_or_default() {
                let opts = m[3]
                    .as_array()
                    .map(|a| a.iter().map(|o| o.as_str().unwrap().to_string()).collect())
                    .unwrap_or_default();
                mounts.push((
                    m[0].as_str().unwrap().into(),
                    m[1].as_str().unwrap().into(),
                    m[2].as_u64().map_or(none, |v| v as u32),
                    opts,
                ));
            }
            let masked: Vec<String> = MASKED
                .iter()
                .map(|s| s.to_string())
                .chain(fd_arg(plan, "masked_paths"))
                .collect();
            let readonly: Vec<String> = READONLY
                .iter()
                .map(|s| s.to_string())
                .chain(fd_arg(plan, "readonly_paths"))
                .collect();
            let mut wire = HashMap::new();
            wire.insert("rootfs", ZValue::from(0u32));
            wire.insert("dev", ZValue::from(1u32));
            wire.insert("mounts", ZValue::from(mounts));
            wire.insert("masked_paths", ZValue::from(masked));
            wire.insert("readonly_paths", ZValue::from(readonly));
            if plan["bogus_key"] == true {
                wire.insert("bogus", ZValue::from(true));
            }
            if plan["lxcfs"] == true {
                wire.insert("lxcfs", ZValue::from(true));
            }
            let mountd = RawMount1Proxy::new(conn).await?;
            let started = std::time::Instant::now();
            let mntns = mountd.build_root(pidfd.into(), wire, fds).await?;
            let build_us = started.elapsed().as_micros() as u64;
            let mntns: OwnedFd = mntns.into();
            socket::sendmsg::<()>(
                ours.as_raw_fd(),
                &[std::io::IoSlice::new(b"m")],
                &[ControlMessage::ScmRights(&[mntns.as_raw_fd()])],
                MsgFlags::empty(),
                None,
            )
            .unwrap();
            Ok::<(u32, u64), zbus::Error>((base, build_us))
        }
        .await;
        let value = match result {
            Ok((base, build_us)) => {
                let mut output = String::new();
                std::fs::File::from(out_r)
                    .read_to_string(&mut output)
                    .unwrap();
                let status = nix::sys::wait::waitpid(init.p1, None).unwrap();
                let code = match status {
                    nix::sys::wait::WaitStatus::Exited(_, c) => c,
                    other => panic!("container P1: {other:?}"),
                };
                json!({"ok": true, "base": base, "exit": code, "output": output, "build_us": build_us})
            }
            Err(e) => {
                let _ = nix::sys::signal::kill(init.p1, nix::sys::signal::Signal::SIGKILL);
                let _ = nix::sys::wait::waitpid(init.p1, None);
                super::error_json(&e)
            }
        };
        drop(init.userns);
        let _ = idmap.release(&name).await;
        value
    }
}

/// Kernel keyrings through raw keyctl(2) and add_key(2) (busybox has no keyctl applet).
mod keys {
    use std::ffi::{CStr, CString};
    use std::path::{Path, PathBuf};

    use serde_json::{json, Value};

    const SESSION: i32 = libc::KEY_SPEC_SESSION_KEYRING;
    const USER: i32 = libc::KEY_SPEC_USER_KEYRING;
    const USER_SESSION: i32 = libc::KEY_SPEC_USER_SESSION_KEYRING;

    fn errno() -> i32 {
        std::io::Error::last_os_error().raw_os_error().unwrap_or(-1)
    }

    fn keyctl(cmd: u32, a: libc::c_long, b: libc::c_long, c: libc::c_long) -> Result<i64, i32> {
        // SAFETY: the callers pass integers, or pointers to NUL-terminated strings and
        // buffers that outlive the call, as each command expects.
        let r = unsafe { libc::syscall(libc::SYS_keyctl, cmd as libc::c_long, a, b, c, 0) };
        if r < 0 {
            Err(errno())
        } else {
            Ok(r)
        }
    }

    fn add_key(kind: &CStr, description: &str, payload: &[u8], ring: i32) -> Result<i32, i32> {
        let description = CString::new(description).unwrap();
        // SAFETY: NUL-terminated strings and a payload of the given length, live for the call.
        let r = unsafe {
            libc::syscall(
                libc::SYS_add_key,
                kind.as_ptr(),
                description.as_ptr(),
                payload.as_ptr(),
                payload.len(),
                ring,
            )
        };
        if r < 0 {
            Err(errno())
        } else {
            Ok(r as i32)
        }
    }

    fn keyring_id(ring: i32) -> Result<i64, i32> {
        keyctl(libc::KEYCTL_GET_KEYRING_ID, ring.into(), 0, 0)
    }

    /// A key's payload (a keyring's: its keys' ids), or the errno.
    fn read(serial: i64) -> Result<Vec<u8>, i32> {
        let mut buf = vec![0u8; 4096];
        let n = keyctl(
            libc::KEYCTL_READ,
            serial as libc::c_long,
            buf.as_mut_ptr() as libc::c_long,
            buf.len() as libc::c_long,
        )?;
        buf.truncate((n as usize).min(4096));
        Ok(buf)
    }

    /// `type;uid;gid;perm;description`, or the errno.
    fn describe(serial: i64) -> Result<String, i32> {
        let mut buf = vec![0u8; 512];
        let n = keyctl(
            libc::KEYCTL_DESCRIBE,
            serial as libc::c_long,
            buf.as_mut_ptr() as libc::c_long,
            buf.len() as libc::c_long,
        )?;
        buf.truncate((n as usize).saturating_sub(1).min(512));
        Ok(String::from_utf8_lossy(&buf).into_owned())
    }

    fn search(ring: i32, kind: &CStr, description: &str) -> Result<i64, i32> {
        let description = CString::new(description).unwrap();
        keyctl(
            libc::KEYCTL_SEARCH,
            ring.into(),
            kind.as_ptr() as libc::c_long,
            description.as_ptr() as libc::c_long,
        )
    }

    fn join(name: &str) -> Result<i64, i32> {
        let name = CString::new(name).unwrap();
        keyctl(
            libc::KEYCTL_JOIN_SESSION_KEYRING,
            name.as_ptr() as libc::c_long,
            0,
            0,
        )
    }

    fn result<T: Into<Value>>(r: Result<T, i32>) -> Value {
        match r {
            Ok(v) => v.into(),
            Err(errno) => json!({ "errno": errno }),
        }
    }

    pub fn payload(label: &str) -> String {
        format!("burrow-secret-payload-{label}")
    }

    /// See `KeysCmd::Plant`. Runs COMMAND (exec) or exits.
    pub fn plant(label: &str, join_name: Option<&str>, write: Option<&Path>, command: &[String]) {
        if let Some(name) = join_name {
            join(name).expect("joining the session keyring");
            // Searchable by its owner, so the next `--join NAME` of the same user joins this
            // one (as `keyctl session NAME` does): processes started apart share it, as the
            // containers containerd starts share its keyring.
            keyctl(libc::KEYCTL_SETPERM, SESSION.into(), 0x3f1b_0000, 0)
                .expect("letting the owner search the session keyring");
        }
        // As pam_keyinit does for a login: the user keyring is linked into the session's, so
        // the session possesses (and may add to) what is linked there.
        keyctl(libc::KEYCTL_LINK, USER.into(), SESSION.into(), 0)
            .expect("linking the user keyring into the session keyring");
        // A keyring linked into the user keyring outlives this process: drop an earlier run's.
        while let Ok(stale) = search(USER, c"keyring", &format!("burrow-ring-{label}")) {
            keyctl(libc::KEYCTL_UNLINK, stale as libc::c_long, USER.into(), 0)
                .expect("unlinking an earlier run's keyring");
        }
        let secret = payload(label);
        let session_key = add_key(
            c"user",
            &format!("burrow-secret-{label}"),
            secret.as_bytes(),
            SESSION,
        )
        .expect("adding a key to the session keyring");
        let user_ring = add_key(c"keyring", &format!("burrow-ring-{label}"), &[], USER)
            .expect("adding a keyring to the user keyring");
        let user_key = add_key(
            c"user",
            &format!("burrow-secret-{label}-u"),
            secret.as_bytes(),
            user_ring,
        )
        .expect("adding a key to that keyring");
        let planted = json!({
            "label": label,
            "join": join_name,
            "session": keyring_id(SESSION).expect("session keyring"),
            "session_key": session_key,
            "user_ring": user_ring,
            "user_key": user_key,
        });
        if let Some(path) = write {
            std::fs::write(path, planted.to_string()).expect("writing the planted keys");
        }
        super::print(planted);
        if let Some((program, args)) = command.split_first() {
            use std::os::unix::process::CommandExt;
            let e = std::process::Command::new(program).args(args).exec();
            panic!("exec {program}: {e}");
        }
    }

    /// This process's own keyrings: ids, the session keyring's description and key count.
    fn own() -> Value {
        json!({
            "session": result(keyring_id(SESSION)),
            "session_desc": result(describe(SESSION.into())),
            "session_keys": result(read(SESSION.into()).map(|ids| ids.len() / 4)),
            "user": result(keyring_id(USER)),
            "user_session": result(keyring_id(USER_SESSION)),
        })
    }

    /// Every way this process tries to reach the keys `planted` names, without joining.
    fn reach(planted: &Value) -> Value {
        let label = planted["label"].as_str().unwrap();
        let mut by_id = serde_json::Map::new();
        for what in ["session", "session_key", "user_ring", "user_key"] {
            let serial = planted[what].as_i64().unwrap();
            let read = read(serial).map(|b| String::from_utf8_lossy(&b).into_owned());
            let link = keyctl(libc::KEYCTL_LINK, serial as libc::c_long, SESSION.into(), 0);
            by_id.insert(
                what.into(),
                json!({"describe": result(describe(serial)), "read": result(read), "link": result(link)}),
            );
        }
        let mut searched = serde_json::Map::new();
        for (ring_name, ring) in [
            ("session", SESSION),
            ("user", USER),
            ("user_session", USER_SESSION),
        ] {
            for (kind, description) in [
                (c"user", format!("burrow-secret-{label}")),
                (c"user", format!("burrow-secret-{label}-u")),
                (c"keyring", format!("burrow-ring-{label}")),
            ] {
                let found = search(ring, kind, &description);
                searched.insert(format!("{description}@{ring_name}"), result(found));
            }
        }
        json!({"by_id": by_id, "search": searched})
    }

    /// See `KeysCmd::Probe`.
    pub fn probe(targets: &[PathBuf]) -> Value {
        let planted: Vec<Value> = targets
            .iter()
            .map(|t| serde_json::from_slice(&std::fs::read(t).expect("target file")).unwrap())
            .collect();
        let own = own();
        let mut reached = serde_json::Map::new();
        for target in &planted {
            reached.insert(target["label"].as_str().unwrap().into(), reach(target));
        }
        // Last, as it changes this process's session keyring: join each target's by name.
        let mut joined = serde_json::Map::new();
        for target in planted.iter().filter(|t| t["join"].is_string()) {
            let id = join(target["join"].as_str().unwrap());
            let read = read(target["session_key"].as_i64().unwrap())
                .map(|b| String::from_utf8_lossy(&b).into_owned());
            joined.insert(
                target["label"].as_str().unwrap().into(),
                json!({"session": result(id), "read_after": result(read)}),
            );
        }
        json!({"probe": "keys", "own": own, "targets": reached, "joined": joined})
    }
}
