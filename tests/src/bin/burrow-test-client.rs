//! A bus client for Burrow's tests, run as root or as a test user. It creates the user
//! namespaces it passes (as a real runtime would), calls the helpers and prints one JSON line
//! per result, with error names, so tests can assert on exactly what the helper said.

use std::fs::File;
use std::io::{BufRead, Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::time::Instant;

use burrow_bus::proxy::IdMap1Proxy;
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
    /// Allocate COUNT ranges, keeping every namespace alive, until stdin closes. Bus errors
    /// (the helper being killed) are reported and the burst goes on.
    Burst {
        #[arg(long)]
        prefix: String,
        #[arg(long)]
        count: usize,
    },
    Release {
        #[arg(long)]
        name: String,
    },
    Get {
        #[arg(long)]
        name: String,
    },
    List,
    /// The pool and usage properties.
    Props,
    /// Print the next COUNT Allocated/Released signals (after a `subscribed` line).
    WatchSignals {
        #[arg(long)]
        count: usize,
    },
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
        File::open(format!("/proc/{}/ns/{kind}", self.pid)).unwrap().into()
    }

    fn map(&self, which: &str) -> String {
        std::fs::read_to_string(format!("/proc/{}/{which}", self.pid)).unwrap_or_default().trim().to_string()
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

async fn allocate(proxy: &IdMap1Proxy<'_>, name: &str, fd: OwnedFd, holder: Option<&Holder>) -> Value {
    let mut result = match proxy.allocate(name, fd.into()).await {
        Ok((uid_base, gid_base, size)) => {
            json!({"ok": true, "base": uid_base, "gid_base": gid_base, "size": size})
        }
        Err(e) => error_json(&e),
    };
    if let Some(h) = holder {
        result["uid_map"] = h.map("uid_map").into();
        result["gid_map"] = h.map("gid_map").into();
    }
    result["op"] = "allocate".into();
    result["name"] = name.into();
    result
}

async fn connect() -> zbus::Connection {
    zbus::Connection::system().await.expect("connect to the system bus")
}

fn wait_for_stdin_eof() {
    let stdin = std::io::stdin();
    for _ in stdin.lock().lines() {}
}

fn main() {
    let args = Args::parse();
    // Take the inherited fd before anything else can be opened as fd 3.
    let mut inherited = matches!(args.command, Cmd::Allocate { fd_kind: FdKind::Inherited, .. })
        // SAFETY: the test passes fd 3 to the client on purpose; nothing else owns it yet.
        .then(|| unsafe { OwnedFd::from_raw_fd(3) });
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
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
            Cmd::Release { name } => {
                let mut result = match proxy.release(&unescape(&name)).await {
                    Ok(()) => json!({"ok": true}),
                    Err(e) => error_json(&e),
                };
                result["op"] = "release".into();
                print(result);
            }
            Cmd::Get { name } => {
                let mut result = match proxy.get(&unescape(&name)).await {
                    Ok((base, gid_base, size)) => json!({"ok": true, "base": base, "gid_base": gid_base, "size": size}),
                    Err(e) => error_json(&e),
                };
                result["op"] = "get".into();
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
