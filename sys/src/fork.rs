//! Forking: the one way Burrow's processes start a child (systemd's `safe_fork_full` is the
//! model). The helpers' workers, the runtime's intermediate, the container's init, exec's
//! joiner and process, the sysctl writer, the init's hook runners and the sysinfo supervisor
//! all start here.
//!
//! # The contract
//!
//! Every child started by [`fork_child`] or [`fork_sibling`], before its body runs:
//!
//! - **has a death signal only if asked.** With [`ParentExit::Die`] it gets SIGKILL when the
//!   thread that forked it exits (`PR_SET_PDEATHSIG`), and leaves at once (exit code 1) if its
//!   parent went before the signal was set ([`Parent`] says how it tells). With
//!   [`ParentExit::Survive`] it has none: a child that must outlive its parent (the runtime's
//!   children outlive the CLI's `create`) never gets one. A death signal is never inherited:
//!   the kernel clears it in the child of any fork.
//! - **is non-dumpable** (`PR_SET_DUMPABLE` 0): once it enters a container's namespaces, the
//!   container's root can neither ptrace it nor open its `/proc` files (the lesson of
//!   CVE-2019-5736). An exec makes the new program as dumpable as the kernel decides for it.
//! - **holds only the fds of its [`Keep`]**: every other fd is closed (`close_range`), so a
//!   child never carries a host fd it was not given into a container. Kept fds keep their
//!   close-on-exec flags.
//! - **is this process's child** ([`fork_child`], `fork(2)`), or **its parent's**
//!   ([`fork_sibling`], `clone(CLONE_PARENT)`): a sibling is reaped by this process's parent (or
//!   the subreaper that adopts it, such as containerd's shim), never by this process.
//!
//! A prologue step that fails (none can with the arguments given) ends the child with
//! [`PROLOGUE_FAILED`] before its body runs. When the body returns, the child leaves with
//! `_exit` and the code the body returned ([`BODY_PANICKED`] if it panicked): it never runs the
//! parent's destructors, atexit handlers or stdio flushes ([`exit`] is the same way out from
//! deeper down).
//!
//! The prologue makes raw system calls only, on memory prepared before the fork, so it is sound
//! in the child of a multi-threaded process. There the body may do no more (no allocation, no
//! lock: another thread may have held one at the fork); each function's `# Safety` says so.
//! The body must also not drop an fd wrapper (`OwnedFd`, `File`) of an fd it did not keep: that
//! number may belong to something else by then.
//!
//! # Who starts what
//!
//! | child | started by | on parent exit | keeps |
//! |---|---|---|---|
//! | a helper's worker (idmapd's cgroup pin and scope placeholder, mountd's worker in the container's pid namespace) | [`fork_worker`] | dies | the job's fds |
//! | a helper's worker in a user namespace ([`Parked::spawn_sharing_memory`]: `NsWorker`, the helpers' throwaway idmapping namespaces) | `clone(CLONE_VM)` | dies | the namespace's fd |
//! | the runtime's intermediate | [`fork_child`] | survives | stdio and `--preserve-fds`, its channel, the exec fifo |
//! | the container's init (cloned by the intermediate) | [`fork_sibling`] | survives | the same (its own end of the channel) |
//! | exec's joiner | [`fork_child`] | survives | stdio and `--preserve-fds`, its channel, the namespaces it joins |
//! | exec's process (cloned by the joiner) | [`fork_sibling`] | survives | stdio and `--preserve-fds`, its own end of the channel |
//! | the runtime's sysctl writer | [`fork_child`] | survives | the namespaces it joins, its report pipe |
//! | a hook the init runs | [`fork_child`] | survives | stdio and `--preserve-fds`, its stdin pipe, its binary |
//! | the runtime's sysinfo supervisor | [`fork_child`] | survives | its seccomp listener, the container's mount namespace (root's) or `/dev/null`, `/dev/null`, the CLI's log |
//!
//! Before a container's process execs, [`close_on_exec_from`] marks every fd past stdio and
//! `--preserve-fds` close-on-exec.

use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};

use nix::errno::Errno;
use nix::unistd::Pid;

use burrow_contract::BurrowError;

/// The exit code of a child whose prologue failed (it ran nothing of its body).
pub const PROLOGUE_FAILED: i32 = 125;

/// The exit code of a child whose body panicked (Rust's own for a panic).
pub const BODY_PANICKED: i32 = 101;

/// How the child tells that its parent already went before it set its death signal.
#[derive(Debug, Clone, Copy)]
pub enum Parent {
    /// The parent is this process, in the child's pid namespace.
    ThisProcess,
    /// The parent is outside the child's pid namespace (the child was forked into a pid
    /// namespace the parent joined): the child sees it as pid 0 while it lives.
    OutsidePidNamespace,
}

/// What happens to the child when its parent exits.
#[derive(Debug, Clone, Copy)]
pub enum ParentExit {
    /// It lives on (no death signal).
    Survive,
    /// It is killed (SIGKILL).
    Die(Parent),
}

/// The fds a child keeps: every fd below a bound, and a list. Built before the fork (it
/// allocates); the child's prologue only reads it.
#[derive(Debug, Clone, Default)]
pub struct Keep {
    below: u32,
    fds: Vec<RawFd>,
}

impl Keep {
    /// No fd at all.
    pub fn nothing() -> Self {
        Keep::default()
    }

    /// fds `0..n`: 3 for stdio, `3 + N` for stdio and `--preserve-fds N`.
    pub fn first(n: u32) -> Self {
        Keep {
            below: n,
            fds: vec![],
        }
    }

    /// Also `fd` (open now: it is borrowed).
    pub fn and(mut self, fd: BorrowedFd<'_>) -> Self {
        self.fds.push(fd.as_raw_fd());
        self
    }

    /// Also every fd of `fds`.
    pub fn and_all<'a>(mut self, fds: impl IntoIterator<Item = BorrowedFd<'a>>) -> Self {
        self.fds.extend(fds.into_iter().map(|fd| fd.as_raw_fd()));
        self
    }

    /// Sorted and without duplicates, as [`close_all_except`] walks it.
    fn sorted(mut self) -> Self {
        self.fds.sort_unstable();
        self.fds.dedup();
        self
    }
}

/// Why no child was started.
#[derive(Debug, thiserror::Error)]
pub enum ForkError {
    #[error("fork: {0}")]
    Fork(#[source] Errno),
    #[error("clone(CLONE_PARENT): {0}")]
    CloneParent(#[source] Errno),
    #[error("clone3(CLONE_INTO_CGROUP): {0}")]
    CloneIntoCgroup(#[source] Errno),
}

impl ForkError {
    /// The system call's errno.
    pub fn errno(&self) -> Errno {
        match self {
            ForkError::Fork(e) | ForkError::CloneParent(e) | ForkError::CloneIntoCgroup(e) => *e,
        }
    }
}

/// Forks a child of this process that keeps `keep`, is set up as the [module's
/// contract](self) says, runs `body` and leaves with the code `body` returns. Returns the
/// child's pid to the parent.
///
/// # Safety
/// If this process has other threads, `body` must make only async-signal-safe calls (raw
/// system calls on memory prepared before the fork): another thread may have held a lock of
/// the allocator or of any library at the moment of the fork. `body` must not drop a wrapper
/// of an fd outside `keep`.
pub unsafe fn fork_child(
    keep: Keep,
    on_parent_exit: ParentExit,
    body: impl FnOnce() -> i32,
) -> Result<Pid, ForkError> {
    let keep = keep.sorted();
    let parent = expected_parent(on_parent_exit);
    // SAFETY: the caller guarantees that `body` is fit for a child of this process (see
    // above); the prologue makes raw system calls on `keep` and `parent`, made before.
    match unsafe { nix::unistd::fork() }.map_err(ForkError::Fork)? {
        nix::unistd::ForkResult::Parent { child } => Ok(child),
        nix::unistd::ForkResult::Child => run_child(&keep, parent, body),
    }
}

/// Like [`fork_child`], but the child starts in the cgroup2 cgroup of the directory fd
/// `cgroup` (clone3's `CLONE_INTO_CGROUP`): no migration, so none of the cgroup threadgroup
/// lock's RCU grace period a later move would wait for (15-20 ms after an idle second).
///
/// # Safety
/// Only in a single-threaded process: the raw `clone3` bypasses libc's fork, whose handlers
/// make the allocator usable in the child (nobody else can hold its lock in a process of one
/// thread). `body` must not drop a wrapper of an fd outside `keep`.
pub unsafe fn fork_child_in_cgroup(
    keep: Keep,
    on_parent_exit: ParentExit,
    cgroup: BorrowedFd<'_>,
    body: impl FnOnce() -> i32,
) -> Result<Pid, ForkError> {
    let keep = keep.sorted();
    let parent = expected_parent(on_parent_exit);
    let mut args = CloneArgs {
        flags: CLONE_INTO_CGROUP,
        exit_signal: libc::SIGCHLD as u64,
        cgroup: cgroup.as_raw_fd() as u64,
        ..CloneArgs::default()
    };
    // SAFETY: the caller guarantees this process is single-threaded, so the child is a
    // consistent copy of it; `args` is a valid clone_args of the size passed, with no stack
    // (the child runs on its copy of this stack, as after fork) and no pointers.
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &mut args as *mut CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    match pid {
        0 => run_child(&keep, parent, body),
        pid if pid > 0 => Ok(Pid::from_raw(pid as i32)),
        _ => Err(ForkError::CloneIntoCgroup(Errno::last())),
    }
}

/// The parent pid a child with a death signal checks it still has (0: one outside its pid
/// namespace); None for a child without one.
fn expected_parent(on_parent_exit: ParentExit) -> Option<i32> {
    match on_parent_exit {
        ParentExit::Survive => None,
        ParentExit::Die(Parent::ThisProcess) => Some(nix::unistd::getpid().as_raw()),
        ParentExit::Die(Parent::OutsidePidNamespace) => Some(0),
    }
}

/// clone3(2)'s `CLONE_INTO_CGROUP` (linux/sched.h; Linux 5.7).
const CLONE_INTO_CGROUP: u64 = 0x200000000;

/// clone3(2)'s `struct clone_args`, up to `cgroup` (CLONE_ARGS_SIZE_VER2).
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

/// Like [`fork_child`], but the child is this process's parent's (`CLONE_PARENT`), and never
/// has a death signal: it is meant to outlive this process (the container's init is the CLI's
/// child, cloned by the intermediate, which exits at once). Returns the child's pid.
///
/// # Safety
/// Only in a single-threaded process: the raw `clone` bypasses libc's fork, whose handlers
/// make the allocator usable in the child (nobody else can hold its lock in a process of one
/// thread). `body` must not drop a wrapper of an fd outside `keep`.
pub unsafe fn fork_sibling(keep: Keep, body: impl FnOnce() -> i32) -> Result<Pid, ForkError> {
    let keep = keep.sorted();
    // SAFETY: the caller guarantees this process is single-threaded, so the child is a
    // consistent copy of it; without CLONE_VM it shares no memory with this process, and with
    // no stack argument it runs on its copy of this stack, as after fork.
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone,
            libc::CLONE_PARENT | libc::SIGCHLD,
            0,
            0,
            0,
            0,
        )
    };
    match pid {
        0 => run_child(&keep, None, body),
        pid if pid > 0 => Ok(Pid::from_raw(pid as i32)),
        _ => Err(ForkError::CloneParent(Errno::last())),
    }
}

/// In the new child: the prologue (death signal if `parent` is the pid it expects for its
/// parent, non-dumpable, fds), then `body`, then `_exit`.
fn run_child(keep: &Keep, parent: Option<i32>, body: impl FnOnce() -> i32) -> ! {
    use rustix::process::{set_dumpable_behavior, set_parent_process_death_signal};
    if let Some(expected) = parent {
        if set_parent_process_death_signal(Some(rustix::process::Signal::KILL)).is_err() {
            exit(PROLOGUE_FAILED);
        }
        // The parent may have gone before the signal was set: nothing would kill this child.
        if rustix::process::getppid().map_or(0, |p| p.as_raw_nonzero().get()) != expected {
            exit(1);
        }
    }
    if set_dumpable_behavior(rustix::process::DumpableBehavior::NotDumpable).is_err() {
        exit(PROLOGUE_FAILED);
    }
    if close_all_except(keep).is_err() {
        exit(PROLOGUE_FAILED);
    }
    // A panic must end the child here: unwound further, it would run the parent's code and
    // destructors (its runtime, fds the prologue closed) in the child.
    exit(std::panic::catch_unwind(std::panic::AssertUnwindSafe(body)).unwrap_or(BODY_PANICKED))
}

/// Closes every fd but those `keep` holds (its list sorted ascending), with close_range(2).
fn close_all_except(keep: &Keep) -> Result<(), Errno> {
    let mut from = keep.below;
    for &fd in &keep.fds {
        let Ok(fd) = u32::try_from(fd) else { continue };
        if fd < from {
            continue;
        }
        if fd > from {
            close_range(from, fd - 1, 0)?;
        }
        from = fd + 1;
    }
    close_range(from, u32::MAX, 0)
}

/// close_range(2).
fn close_range(first: u32, last: u32, flags: libc::c_int) -> Result<(), Errno> {
    // SAFETY: closing (or marking) fds never touches memory. In a fresh child, the fds closed
    // are those its [`Keep`] leaves out, whose wrappers the body must not drop (the contract);
    // `close_on_exec_from` only sets a flag.
    let done = unsafe { libc::syscall(libc::SYS_close_range, first, last, flags) };
    Errno::result(done).map(drop)
}

/// Marks every fd from `first` on close-on-exec, so that an exec passes on only the fds
/// below it (stdio and `--preserve-fds`): the last step before a container's process execs.
pub fn close_on_exec_from(first: u32) -> Result<(), Errno> {
    close_range(first, u32::MAX, libc::CLOSE_RANGE_CLOEXEC as libc::c_int)
}

/// Whether this process has a single thread (`num_threads`, field 20 of `/proc/self/stat`),
/// as a caller of [`fork_child`] whose child allocates must be: checked, so that a library
/// starting a thread behind the caller's back is caught.
pub fn single_threaded() -> bool {
    std::fs::read("/proc/self/stat")
        .is_ok_and(|stat| crate::proc_stat::field(&stat, 20) == Some("1"))
}

/// Leaves a forked child at once with `code`.
pub fn exit(code: i32) -> ! {
    // SAFETY: _exit(2) is sound anywhere: it ends the process without running the atexit
    // handlers, destructors or stdio flushes the child copied from its parent, which are the
    // parent's to run.
    unsafe { libc::_exit(code) }
}

/// Forks a helper's worker that keeps only `keep` of this process's fds, dies with its parent
/// and runs `body`; the child then leaves with `_exit(0)`, unless `body` left first. Returns
/// the child's pid to the parent.
///
/// # Safety
/// As [`fork_child`]: in a multi-threaded process, `body` may only make async-signal-safe
/// calls.
pub unsafe fn fork_worker(keep: &[RawFd], parent: Parent, body: impl FnOnce()) -> nix::Result<Pid> {
    let keep = Keep {
        below: 0,
        fds: keep.to_vec(),
    };
    let body = || {
        body();
        0
    };
    // SAFETY: the caller guarantees what fork_child asks of `body`.
    unsafe { fork_child(keep, ParentExit::Die(parent), body) }.map_err(|e| e.errno())
}

/// A child parked after a setup step (joining or creating a namespace), so that the helper
/// can act on `/proc/<pid>/...` through a pid that is its own child's (not reaped before it
/// is done, so never recycled). Killed and reaped when dropped.
pub struct Parked {
    pid: Pid,
    /// The worker until it is killed: taken by [`Parked::dismiss`] or the drop.
    child: Option<Unreaped>,
    /// The write end of the worker's lifeline (see [`ParkingPipes`]), held until the worker
    /// goes.
    _lifeline: OwnedFd,
}

/// A child not reaped yet, so its pid is still its own: reaped when dropped, waiting for it to
/// exit. A parked worker is one until it is killed; [`Parked::dismiss`] hands it over.
pub struct Unreaped {
    pid: Pid,
    /// The stack of a worker that shares this process's memory: freed only once the worker is
    /// reaped.
    stack: Option<Box<[u8]>>,
}

impl Unreaped {
    fn kill(&self) {
        let _ = nix::sys::signal::kill(self.pid, nix::sys::signal::Signal::SIGKILL);
    }
}

impl Drop for Unreaped {
    fn drop(&mut self) {
        if nix::sys::wait::waitpid(self.pid, None).is_err() {
            // Not known to be gone: a worker sharing this process's memory may still run on
            // its stack, which must then never be reused.
            std::mem::forget(self.stack.take());
        }
    }
}

impl Parked {
    /// Forks a worker keeping `keep`, runs `setup` in it (raw system calls: 0 on success or
    /// an errno) and parks it there. `what` names the step in errors.
    ///
    /// # Safety
    /// As [`fork_worker`]: `setup` may only make async-signal-safe calls.
    pub unsafe fn spawn(
        keep: &[RawFd],
        what: &str,
        setup: impl FnOnce() -> i32,
    ) -> Result<Self, BurrowError> {
        let pipes = ParkingPipes::new()?;
        let kept = pipes.kept(keep);
        let (report, hangup) = pipes.workers_ends();
        let body = move || {
            park_after(setup(), report, hangup);
        };
        // SAFETY: the caller guarantees `setup` is async-signal-safe; the rest of `body` is.
        let pid = unsafe { fork_worker(&kept, Parent::ThisProcess, body) }
            .map_err(|e| BurrowError::Failed(format!("fork: {e}")))?;
        pipes.parked(pid, None, what)
    }

    /// Like [`Parked::spawn`], but the worker shares this process's memory (`clone(CLONE_VM)`,
    /// as posix_spawn's child does): no copy of the page tables, and none of libc's fork
    /// handlers, which wait for allocator locks that other threads hold.
    ///
    /// The worker runs on a stack of its own but with the calling thread's thread-local
    /// storage. It shares the process's dumpable flag (a property of the memory): this process
    /// is made non-dumpable first, so the worker is, as every child of this module. All signals
    /// but SIGKILL and SIGSTOP are blocked in it, so no handler of this process runs there. It
    /// only borrows `setup` (this call returns once the worker has reported), so it frees
    /// nothing of this process's memory.
    ///
    /// # Safety
    /// `setup` may only make raw system calls that set no `errno` (rustix's), and must not
    /// touch thread-local storage or allocate: it runs beside this process's threads, in its
    /// memory.
    pub unsafe fn spawn_sharing_memory(
        keep: &[RawFd],
        what: &str,
        setup: impl Fn() -> i32,
    ) -> Result<Self, BurrowError> {
        use rustix::process::{set_dumpable_behavior, DumpableBehavior};
        set_dumpable_behavior(DumpableBehavior::NotDumpable)
            .map_err(|e| BurrowError::Failed(format!("PR_SET_DUMPABLE: {e}")))?;
        let pipes = ParkingPipes::new()?;
        let (report, hangup) = pipes.workers_ends();
        let keep = Keep {
            below: 0,
            fds: pipes.kept(keep),
        }
        .sorted();
        let parent = nix::unistd::getpid().as_raw();
        let run = || {
            shared_child_prologue(&keep, parent);
            park_after(setup(), report, hangup)
        };
        let mut stack = vec![0u8; SHARED_CHILD_STACK].into_boxed_slice();
        // SAFETY: the child uses `run` (and what it borrows) only until it reports, which
        // `when_ready` waits for before they go; `stack` is kept in the Parked until the child
        // is reaped.
        let pid = unsafe { clone_sharing_memory(&run, &mut stack) }
            .map_err(|e| BurrowError::Failed(format!("clone(CLONE_VM): {e}")))?;
        pipes.parked(pid, Some(stack), what)
    }

    /// Waits for the worker's report of its setup and for the report's end (the worker
    /// closed the pipe, so it holds only what it keeps): itself, parked, or its errno as an
    /// error.
    fn when_ready(self, ready_r: OwnedFd, what: &str) -> Result<Self, BurrowError> {
        let parked = self;
        let mut status = vec![];
        File::from(ready_r)
            .read_to_end(&mut status)
            .map_err(|e| BurrowError::Failed(format!("reading the worker's report: {e}")))?;
        let Ok(status) = <[u8; 4]>::try_from(status) else {
            return Err(BurrowError::Failed(format!(
                "the worker died before {what}"
            )));
        };
        match i32::from_ne_bytes(status) {
            0 => Ok(parked),
            errno => Err(BurrowError::Failed(format!(
                "the worker could not {what}: {}",
                nix::errno::Errno::from_raw(errno)
            ))),
        }
    }

    /// The worker's pid: its own until the worker is dropped (it is never reaped before).
    pub fn pid(&self) -> i32 {
        self.pid.as_raw()
    }

    /// `/proc/<worker>/<file>`.
    pub fn proc_path(&self, file: &str) -> std::path::PathBuf {
        format!("/proc/{}/{file}", self.pid).into()
    }

    /// Kills the worker without waiting for it to exit, which takes a while when it is the
    /// last process of a namespace: the caller reaps it later, by dropping what this returns.
    /// Until then it holds what a zombie holds (its namespaces among them).
    #[must_use = "dropping it at once waits for the worker's exit"]
    pub fn dismiss(mut self) -> Unreaped {
        let child = self
            .child
            .take()
            .expect("only dismiss and drop take the child");
        child.kill();
        child
    }
}

impl Drop for Parked {
    fn drop(&mut self) {
        if let Some(child) = self.child.take() {
            child.kill();
        }
    }
}

/// A parked worker's two pipes, close-on-exec and closed in every other child by its prologue.
/// The report: the worker writes the errno of its setup (0: done) and closes it. The lifeline:
/// this process alone holds its write end, so that end is gone exactly when this process is,
/// however it went, and the worker, which keeps the read end, then leaves. Its death signal is
/// not enough: the kernel clears that when the worker's credentials change, as when it joins
/// a user namespace another user owns (docs/design.md), and a worker parked in a tenant's
/// namespace would then outlive a killed idmapd, keeping the namespace, and so its range,
/// alive.
struct ParkingPipes {
    report_r: OwnedFd,
    report_w: OwnedFd,
    hangup_r: OwnedFd,
    lifeline_w: OwnedFd,
}

impl ParkingPipes {
    fn new() -> Result<Self, BurrowError> {
        let pipe = || {
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
                .map_err(|e| BurrowError::Failed(format!("pipe: {e}")))
        };
        let ((report_r, report_w), (hangup_r, lifeline_w)) = (pipe()?, pipe()?);
        Ok(ParkingPipes {
            report_r,
            report_w,
            hangup_r,
            lifeline_w,
        })
    }

    /// The worker's ends, as its body uses them (raw fds): (report, hangup).
    fn workers_ends(&self) -> (RawFd, RawFd) {
        (self.report_w.as_raw_fd(), self.hangup_r.as_raw_fd())
    }

    /// The fds the worker keeps: `keep` and its ends.
    fn kept(&self, keep: &[RawFd]) -> Vec<RawFd> {
        let (report, hangup) = self.workers_ends();
        keep.iter().copied().chain([report, hangup]).collect()
    }

    /// Once worker `pid` runs (on `stack`, if it shares this process's memory): this process's
    /// copies of the worker's ends closed, and the worker parked, or its failure.
    fn parked(self, pid: Pid, stack: Option<Box<[u8]>>, what: &str) -> Result<Parked, BurrowError> {
        drop((self.report_w, self.hangup_r));
        Parked {
            pid,
            child: Some(Unreaped { pid, stack }),
            _lifeline: self.lifeline_w,
        }
        .when_ready(self.report_r, what)
    }
}

/// In a parked worker after its setup: reports `errno` (0: done) on `report`, then leaves if
/// the setup failed, else closes `report` and waits to be killed, or for its lifeline's end
/// (its parent gone). Raw system calls only.
fn park_after(errno: i32, report: RawFd, hangup: RawFd) -> ! {
    // SAFETY: `report` is the worker's own fd (kept) until it closes it below.
    let fd = unsafe { BorrowedFd::borrow_raw(report) };
    let _ = rustix::io::write(fd, &errno.to_ne_bytes());
    if errno != 0 {
        exit(1);
    }
    // SAFETY: as above; nothing uses the fd after this.
    unsafe { rustix::io::close(report) };
    // SAFETY: `hangup` is the worker's own fd (kept), never closed.
    let hangup = unsafe { BorrowedFd::borrow_raw(hangup) };
    let mut byte = [0u8];
    // Nothing is ever written: only end of file (or an error) ends the wait.
    while let Ok(1) | Err(rustix::io::Errno::INTR) = rustix::io::read(hangup, &mut byte) {}
    exit(0)
}

/// The stack of a worker that shares this process's memory: its setup makes a few system
/// calls.
const SHARED_CHILD_STACK: usize = 64 * 1024;

/// The start of a worker that shares this process's memory: runs the `F` that `arg` points
/// to, then leaves with the code it returned.
extern "C" fn shared_child_entry<F: Fn() -> i32>(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is the `&F` passed to clone by `clone_sharing_memory`, alive until the
    // worker reports (its owner waits for that); it is only read.
    let run = unsafe { &*arg.cast::<F>().cast_const() };
    exit(run())
}

/// clone(CLONE_VM) of a child that runs `run` on `stack`, with all signals but SIGKILL and
/// SIGSTOP blocked (the calling thread's mask is restored after).
///
/// # Safety
/// `run` and `stack` must outlive the child's use of them.
unsafe fn clone_sharing_memory<F: Fn() -> i32>(run: &F, stack: &mut [u8]) -> nix::Result<Pid> {
    use nix::sys::signal::{pthread_sigmask, SigSet, SigmaskHow};
    let mut saved = SigSet::empty();
    pthread_sigmask(
        SigmaskHow::SIG_SETMASK,
        Some(&SigSet::all()),
        Some(&mut saved),
    )?;
    // The stack grows down from its end, which the ABI wants 16-byte aligned.
    let top = (stack.as_mut_ptr() as usize + stack.len()) & !15;
    // SAFETY: glibc's clone wrapper switches the child to `top`, inside `stack`, and calls the
    // entry with `run`; the caller keeps both alive for as long as the child uses them.
    // Without CLONE_SETTLS or CLONE_FILES the child has this thread's TLS pointer but a copy
    // of the fd table; the entry touches neither TLS nor errno (rustix's raw calls).
    let pid = unsafe {
        libc::clone(
            shared_child_entry::<F>,
            top as *mut libc::c_void,
            libc::CLONE_VM | libc::SIGCHLD,
            (run as *const F).cast_mut().cast(),
        )
    };
    let cloned = nix::errno::Errno::result(pid).map(Pid::from_raw);
    pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&saved), None)?;
    cloned
}

/// The prologue of a worker that shares this process's memory, in raw system calls: death
/// signal (it leaves if `parent` went first) and only `keep`'s fds. Only a failed close_range
/// sets errno (in the calling thread's storage, which the worker shares), and the worker then
/// leaves at once. Its dumpable flag is this process's, cleared before the clone.
fn shared_child_prologue(keep: &Keep, parent: i32) {
    use rustix::process::{getppid, set_parent_process_death_signal, Signal};
    if set_parent_process_death_signal(Some(Signal::KILL)).is_err() {
        exit(PROLOGUE_FAILED);
    }
    if getppid().map_or(0, |p| p.as_raw_nonzero().get()) != parent {
        exit(1);
    }
    if close_all_except(keep).is_err() {
        exit(PROLOGUE_FAILED);
    }
}

/// The errno of the last failed system call, for a child's report.
pub fn last_errno() -> i32 {
    Errno::last_raw()
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::wait::{waitpid, WaitStatus};
    use std::os::fd::{AsFd, OwnedFd};

    const RAN: i32 = 1;
    const DUMPABLE: i32 = 2;
    const LOST_KEPT: i32 = 4;
    const HELD_OTHER: i32 = 8;
    const DEATH_SIGNAL: i32 = 16;

    /// Whether `fd` is open, asked of the kernel by number (a wrapper would claim it is).
    fn is_open(fd: RawFd) -> bool {
        // SAFETY: F_GETFD reads a flag of any fd number, open or not, and touches no memory.
        unsafe { libc::fcntl(fd, libc::F_GETFD) >= 0 }
    }

    /// What a child sees of itself, as exit-code bits; raw system calls only, as a child of
    /// the (multi-threaded) test process must.
    fn probe(kept: RawFd, other: RawFd) -> i32 {
        let mut code = RAN;
        if rustix::process::dumpable_behavior()
            != Ok(rustix::process::DumpableBehavior::NotDumpable)
        {
            code |= DUMPABLE;
        }
        if !is_open(kept) {
            code |= LOST_KEPT;
        }
        if is_open(other) {
            code |= HELD_OTHER;
        }
        if rustix::process::parent_process_death_signal() == Ok(Some(rustix::process::Signal::KILL))
        {
            code |= DEATH_SIGNAL;
        }
        code
    }

    fn exit_code(pid: Pid) -> i32 {
        match waitpid(pid, None).unwrap() {
            WaitStatus::Exited(_, code) => code,
            other => panic!("the child ended with {other:?}"),
        }
    }

    /// Two open fds, the lower first.
    fn two_fds() -> (OwnedFd, OwnedFd) {
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap()
    }

    #[test]
    fn a_child_keeps_its_fds_only_is_not_dumpable_and_has_no_death_signal_unless_asked() {
        let (low, high) = two_fds();
        let (low_raw, high_raw) = (low.as_fd().as_raw_fd(), high.as_fd().as_raw_fd());
        let keep = Keep::nothing().and(high.as_fd());
        // SAFETY: the body makes raw system calls only.
        let child = unsafe { fork_child(keep, ParentExit::Survive, || probe(high_raw, low_raw)) };
        assert_eq!(exit_code(child.unwrap()), RAN);
        // Every fd below a bound: the lower one, not the higher.
        let keep = Keep::first(low_raw as u32 + 1);
        // SAFETY: as above.
        let child = unsafe {
            fork_child(keep, ParentExit::Die(Parent::ThisProcess), || {
                probe(low_raw, high_raw)
            })
        };
        assert_eq!(exit_code(child.unwrap()), RAN | DEATH_SIGNAL);
    }

    #[test]
    fn a_body_that_panics_ends_its_child_there() {
        // SAFETY: the body's panic allocates, which glibc's fork handlers make sound here.
        let child = unsafe { fork_child(Keep::nothing(), ParentExit::Survive, || panic!("body")) };
        assert_eq!(exit_code(child.unwrap()), BODY_PANICKED);
    }

    #[test]
    fn a_process_with_another_thread_is_not_single_threaded() {
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let other = std::thread::spawn(move || stopped.recv());
        assert!(!single_threaded());
        drop(stop);
        let _ = other.join();
    }

    #[test]
    fn a_sibling_is_this_processs_parents_child() {
        let (report_r, report_w) = two_fds();
        let (kept, other) = two_fds();
        let (kept_raw, other_raw) = (kept.as_fd().as_raw_fd(), other.as_fd().as_raw_fd());
        // Built here: the middle child, of a multi-threaded process, may not allocate.
        let for_sibling = Keep::nothing().and(kept.as_fd());
        let for_middle = Keep::nothing().and(report_w.as_fd()).and(kept.as_fd());
        let report = report_w.as_fd();
        let middle = move || {
            // SAFETY: the middle child is single-threaded; the sibling's body makes raw
            // system calls only.
            match unsafe { fork_sibling(for_sibling, || probe(kept_raw, other_raw)) } {
                Ok(pid) => {
                    let _ = rustix::io::write(report, &pid.as_raw().to_ne_bytes());
                    0
                }
                Err(_) => 1,
            }
        };
        // SAFETY: the body makes raw system calls only (fork_sibling's Keep is built).
        let middle = unsafe { fork_child(for_middle, ParentExit::Survive, middle) }.unwrap();
        drop(report_w);
        assert_eq!(exit_code(middle), 0);
        let mut pid = [0u8; 4];
        File::from(report_r).read_exact(&mut pid).unwrap();
        // This process reaps it: it is this process's child, not the middle one's.
        assert_eq!(exit_code(Pid::from_raw(i32::from_ne_bytes(pid))), RAN);
    }

    /// The fds a process holds, as /proc lists them.
    fn fds_of(pid: i32) -> Vec<RawFd> {
        let mut fds: Vec<RawFd> = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_str().unwrap().parse().unwrap())
            .collect();
        fds.sort_unstable();
        fds
    }

    /// A field of /proc/PID/status.
    fn status_field(pid: i32, field: &str) -> String {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let line = status.lines().find(|l| l.starts_with(field)).unwrap();
        line[field.len()..].trim().to_string()
    }

    #[test]
    fn a_worker_sharing_memory_parks_with_its_fds_only_and_goes_when_dropped() {
        let (kept, other) = two_fds();
        let keep = [kept.as_fd().as_raw_fd()];
        // SAFETY: the setup makes no call at all.
        let parked = unsafe { Parked::spawn_sharing_memory(&keep, "wait", || 0) }.unwrap();
        let pid = parked.pid();
        let fds = fds_of(pid);
        assert_eq!(
            fds.len(),
            2,
            "the kept fd and its lifeline's read end; the report pipe is closed, {other:?} \
             never held: {fds:?}"
        );
        assert!(fds.contains(&keep[0]), "{fds:?}");
        let others: Vec<_> = fds.iter().filter(|fd| **fd != keep[0]).collect();
        assert!(
            std::fs::read_link(format!("/proc/{pid}/fd/{}", others[0]))
                .unwrap()
                .to_string_lossy()
                .starts_with("pipe:"),
            "the lifeline's read end"
        );
        assert_eq!(status_field(pid, "PPid:"), std::process::id().to_string());
        // Every standard signal blocked but SIGKILL and SIGSTOP, which cannot be.
        let blocked = u64::from_str_radix(&status_field(pid, "SigBlk:"), 16).unwrap();
        let unblocked: Vec<u64> = (1..=31).filter(|n| blocked & (1 << (n - 1)) == 0).collect();
        assert_eq!(unblocked, [libc::SIGKILL as u64, libc::SIGSTOP as u64]);
        assert_eq!(
            rustix::process::dumpable_behavior(),
            Ok(rustix::process::DumpableBehavior::NotDumpable),
            "the worker shares this process's dumpable flag, cleared first"
        );
        drop(parked);
        assert_eq!(
            nix::sys::signal::kill(Pid::from_raw(pid), None),
            Err(Errno::ESRCH),
            "killed and reaped"
        );
    }

    /// A dismissed worker is killed at once but left unreaped, so its pid stays its own, until
    /// what `dismiss` returned is dropped.
    #[test]
    fn a_dismissed_worker_is_killed_at_once_and_reaped_only_when_dropped() {
        for sharing_memory in [true, false] {
            // SAFETY: the setup makes no call at all.
            let parked = unsafe {
                if sharing_memory {
                    Parked::spawn_sharing_memory(&[], "wait", || 0)
                } else {
                    Parked::spawn(&[], "wait", || 0)
                }
            }
            .unwrap();
            let pid = parked.pid();
            let unreaped = parked.dismiss();
            let state = || {
                let stat = std::fs::read(format!("/proc/{pid}/stat")).ok()?;
                crate::proc_stat::field(&stat, 3).map(str::to_string)
            };
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
            while state().as_deref() != Some("Z") {
                assert!(
                    std::time::Instant::now() < deadline,
                    "the dismissed worker is still not a zombie: {:?}",
                    state()
                );
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            drop(unreaped);
            assert_eq!(state(), None, "reaped once dropped");
        }
    }

    /// The worker leaves by itself once its lifeline's write end is gone, as when this process
    /// dies, even with no death signal: the kernel clears that when the worker joins a user
    /// namespace another user owns, which the setup does here in the way it can.
    #[test]
    fn a_parked_worker_leaves_when_its_lifeline_ends_even_without_a_death_signal() {
        for sharing_memory in [true, false] {
            let clear_death_signal = || match rustix::process::set_parent_process_death_signal(None)
            {
                Ok(()) => 0,
                Err(e) => e.raw_os_error(),
            };
            // SAFETY: the setup makes one raw system call (rustix's, no errno).
            let parked = unsafe {
                if sharing_memory {
                    Parked::spawn_sharing_memory(&[], "clear the death signal", clear_death_signal)
                } else {
                    Parked::spawn(&[], "clear the death signal", clear_death_signal)
                }
            }
            .unwrap();
            let pid = Pid::from_raw(parked.pid());
            std::thread::sleep(std::time::Duration::from_millis(50));
            assert_eq!(
                waitpid(pid, Some(nix::sys::wait::WaitPidFlag::WNOHANG)),
                Ok(WaitStatus::StillAlive),
                "parked while its lifeline holds"
            );
            // As if this process had died: its end of the lifeline closes; the worker is not
            // killed, and its stack (if any) is never freed.
            let parked = std::mem::ManuallyDrop::new(parked);
            // SAFETY: the field is read once and the rest of `parked` is never dropped.
            drop(unsafe { std::ptr::read(&parked._lifeline) });
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
            loop {
                match waitpid(pid, Some(nix::sys::wait::WaitPidFlag::WNOHANG)) {
                    Ok(WaitStatus::Exited(_, 0)) => break,
                    Ok(WaitStatus::StillAlive) if std::time::Instant::now() < deadline => {
                        std::thread::sleep(std::time::Duration::from_millis(10));
                    }
                    other => panic!("the worker did not leave by itself: {other:?}"),
                }
            }
        }
    }

    #[test]
    fn a_worker_sharing_memory_reports_its_failed_setup() {
        // SAFETY: the setup makes no call at all.
        let failed = unsafe { Parked::spawn_sharing_memory(&[], "fail", || libc::EPERM) };
        let error = failed
            .err()
            .expect("a failed setup is an error")
            .to_string();
        assert!(error.contains("could not fail: EPERM"), "{error}");
    }
}
