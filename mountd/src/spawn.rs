//! Starting a worker from the helper: a fresh exec of mountd's own binary in worker mode
//! (`/proc/self/exe worker`), single-threaded from its first instruction, so that it may
//! allocate, call libraries and fork as it likes, which a child forked from the helper's
//! multi-threaded process may not (another thread could hold the allocator's lock).
//!
//! `/proc/self/exe` is the very file the helper runs, even once an upgrade has replaced or
//! removed it on disk: a worker always speaks its helper's protocol, and the new binary takes
//! over when the helper next starts. No PATH, no install path, nothing a container can reach.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
#[cfg(debug_assertions)]
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Mutex, OnceLock, PoisonError};

use burrow_contract::BurrowError;
use nix::sys::socket;

use crate::job::{Fds, Job, JobError, Reply};
use crate::wire::{self, WireError};

/// argv[1] of a worker.
pub const WORKER_MODE: &str = "worker";
/// argv[2] of a worker that stops itself at each stage for a test (debug builds only).
#[cfg(debug_assertions)]
pub const TEST_STOPS: &str = "--test-stop-at-stages";

#[cfg(debug_assertions)]
static STOP_WORKERS: AtomicBool = AtomicBool::new(false);

/// Makes every worker stop itself (SIGSTOP) at each stage, for a test to look at it.
#[cfg(debug_assertions)]
pub fn stop_workers_for_tests() {
    STOP_WORKERS.store(true, Ordering::Relaxed);
}

#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("socketpair: {0}")]
    Socket(#[source] nix::errno::Errno),
    #[error("starting a worker (/proc/self/exe): {0}")]
    Exec(#[source] std::io::Error),
    #[error("sending the job: {0}")]
    Send(#[source] WireError),
    #[error("the worker ended without an answer ({status}): {source}")]
    NoAnswer {
        status: String,
        #[source]
        source: WireError,
    },
    #[error("the worker answered with {0} fds, not one")]
    BadAnswer(usize),
    #[error(transparent)]
    Job(#[from] JobError),
}

impl From<SpawnError> for BurrowError {
    fn from(e: SpawnError) -> Self {
        match e {
            SpawnError::Job(e) => e.into(),
            other => BurrowError::Failed(format!("mount worker: {other}")),
        }
    }
}

/// A worker exec'd, waiting for its job on the helper's end of its socket.
struct Worker {
    child: Child,
    sock: OwnedFd,
}

impl Worker {
    /// Execs a new worker.
    fn start() -> Result<Worker, SpawnError> {
        let (sock, theirs) = socket::socketpair(
            socket::AddressFamily::Unix,
            socket::SockType::SeqPacket,
            None,
            socket::SockFlag::SOCK_CLOEXEC,
        )
        .map_err(SpawnError::Socket)?;
        let child = exec(theirs)?;
        Ok(Worker { child, sock })
    }

    fn send(&self, job: &Job, fds: &Fds) -> Result<(), SpawnError> {
        wire::send(self.sock.as_fd(), job, fds).map_err(SpawnError::Send)
    }

    fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `job` in a worker, with `fds` (the ones it names); returns the fd it answers with.
pub fn run(job: &Job, fds: Fds) -> Result<OwnedFd, SpawnError> {
    let mut worker = match spare::take() {
        Some(spare) => match spare.send(job, &fds) {
            Ok(()) => spare,
            // A spare that died meanwhile (killed, out of memory): a new worker instead.
            Err(_) => {
                spare.kill();
                started_with(job, &fds)?
            }
        },
        None => started_with(job, &fds)?,
    };
    // The worker has its copies now; the helper keeps none while it waits.
    drop(fds);
    spare::refill();
    let answer = receive(worker.sock.as_fd(), &mut worker.child);
    // After an answer the worker only reaps its own child and exits: let it, so that a process
    // it left in a container's pid namespace is never orphaned there (the container's init
    // would have to reap it). Without an answer, it is killed (its child dies with it). Either
    // way it is reaped off the reply's path.
    if answer.is_err() {
        let _ = worker.child.kill();
    }
    spare::reap(worker.child);
    answer
}

/// A new worker, given `job`.
fn started_with(job: &Job, fds: &Fds) -> Result<Worker, SpawnError> {
    let worker = Worker::start()?;
    match worker.send(job, fds) {
        Ok(()) => Ok(worker),
        Err(e) => {
            worker.kill();
            Err(e)
        }
    }
}

/// One worker exec'd ahead of its job, so that a call does not wait for the exec (about 1.5
/// ms of a BuildRoot). It waits like any worker that has not got its job yet: single-threaded,
/// non-dumpable, holding its socket and /dev/null only. One long-lived thread execs it:
/// PR_SET_PDEATHSIG fires when the *thread* that forked the worker ends, and a blocking-pool
/// thread ends after a second idle, which would kill the spare with it. The same thread reaps
/// the workers that answered, whose exit a call need not wait for.
mod spare {
    use super::*;

    static SPARE: Mutex<Option<Worker>> = Mutex::new(None);
    static CHORES: OnceLock<Sender<Chore>> = OnceLock::new();

    /// What the spare's thread does.
    enum Chore {
        /// A new spare, if there is none.
        Refill,
        /// Wait for this worker to exit.
        Reap(Child),
    }

    pub(super) fn take() -> Option<Worker> {
        SPARE.lock().unwrap_or_else(PoisonError::into_inner).take()
    }

    /// Asks the spare's thread for a new spare if there is none.
    pub(super) fn refill() {
        // A test watches every worker's stages: a spare would stop at its first one.
        #[cfg(debug_assertions)]
        if STOP_WORKERS.load(Ordering::Relaxed) {
            return;
        }
        let _ = chores().send(Chore::Refill);
    }

    /// Has the spare's thread reap `worker`, or reaps it here if there is no such thread.
    pub(super) fn reap(worker: Child) {
        if let Err(std::sync::mpsc::SendError(Chore::Reap(mut worker))) =
            chores().send(Chore::Reap(worker))
        {
            let _ = worker.wait();
        }
    }

    /// The spare's thread, started on first use.
    fn chores() -> &'static Sender<Chore> {
        CHORES.get_or_init(|| {
            let (chores, asked) = std::sync::mpsc::channel::<Chore>();
            let thread = std::thread::Builder::new()
                .name("mountd-spare".into())
                .spawn(move || {
                    asked.iter().for_each(|chore| match chore {
                        Chore::Refill => fill(),
                        Chore::Reap(mut worker) => {
                            let _ = worker.wait();
                        }
                    })
                });
            if let Err(e) = thread {
                tracing::warn!("no thread for spare workers, each call execs its own: {e}");
            }
            chores
        })
    }

    fn fill() {
        let empty = SPARE
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_none();
        if !empty {
            return;
        }
        // Exec'd without the lock held: a call meanwhile starts its own worker.
        match Worker::start() {
            Ok(worker) => *SPARE.lock().unwrap_or_else(PoisonError::into_inner) = Some(worker),
            Err(e) => tracing::warn!("starting a spare worker: {e}"),
        }
    }
}

/// Execs the worker with `sock` as its stdin, /dev/null as stdout and stderr, and nothing else.
fn exec(sock: OwnedFd) -> Result<Child, SpawnError> {
    let mut command = Command::new("/proc/self/exe");
    command
        .arg0("burrow-mountd")
        .arg(WORKER_MODE)
        .env_clear()
        .current_dir("/")
        .stdin(Stdio::from(sock))
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    #[cfg(debug_assertions)]
    if STOP_WORKERS.load(Ordering::Relaxed) {
        command.arg(TEST_STOPS);
    }
    let helper = std::process::id();
    // SAFETY: the closure runs between fork and exec in a child of a multi-threaded process,
    // so it makes only raw, async-signal-safe system calls (prctl, getppid, close_range) and
    // neither allocates nor takes a lock.
    unsafe {
        command.pre_exec(move || {
            // Die with the helper (kept across exec; the worker's own child sets it again).
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::getppid() as u32 != helper {
                return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
            }
            // Whatever fd another thread opened without O_CLOEXEC (zbus receives callers' fds
            // without MSG_CMSG_CLOEXEC) stays out of the worker: only 0-2 cross the exec.
            let (first, last) = (3 as libc::c_uint, libc::c_uint::MAX);
            let flags = libc::CLOSE_RANGE_CLOEXEC;
            if libc::syscall(libc::SYS_close_range, first, last, flags) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    // The command holds the parent's copy of the worker's end of the socket: it is dropped
    // when this returns, so the worker's death reads as the end of the socket.
    command.spawn().map_err(SpawnError::Exec)
}

/// The worker's answer: exactly one fd, or its typed error.
fn receive(sock: BorrowedFd<'_>, child: &mut Child) -> Result<OwnedFd, SpawnError> {
    let (reply, fds): (Reply, Fds) = match wire::receive(sock) {
        Ok(answer) => answer,
        Err(source) => {
            // A worker never closes its socket: once it reads as closed, the worker is gone
            // or going, and its status says why. After any other error it is stopped first.
            if !matches!(source, WireError::Closed) {
                let _ = child.kill();
            }
            let status = child
                .wait()
                .map_or_else(|e| format!("wait: {e}"), |s| s.to_string());
            return Err(SpawnError::NoAnswer { status, source });
        }
    };
    let slot = reply?;
    let count = fds.len();
    match fds.take(slot) {
        Some(fd) if count == 1 => Ok(fd),
        _ => Err(SpawnError::BadAnswer(count)),
    }
}
