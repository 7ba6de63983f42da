//! The sysinfo supervisor: answers the sysinfo(2) calls of one process tree (a container's
//! init, or an exec'd process) through the seccomp listener on its stdin, until the tree is
//! gone. It runs as the CLI's user, outside the container: for root with nothing but
//! CAP_SYS_PTRACE and CAP_DAC_OVERRIDE (to write the answer through /proc/PID/mem).
//!
//! The answer is written into the caller's memory, the one thing a supervisor must get right:
//! root's supervisor opens /proc/PID/mem first and only then checks that the notification is
//! still pending (SECCOMP_IOCTL_NOTIF_ID_VALID), so the fd is the caller's even if the pid is
//! reused later (seccomp_unotify(2)). Another user's supervisor cannot open that file (its
//! owner is the container's uid) and writes with process_vm_writev, checked the same way just
//! before: its only possible mistake is a process of its own user's containers.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use nix::errno::Errno;

use super::answer::{answer, started_from_stat, Readings};
use burrow_sys::cgroup::usage;
use burrow_sys::fork::{fork_child, Keep, ParentExit};

/// Why the supervisor could not start or serve.
#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    #[error("starting the sysinfo supervisor: {0}")]
    Spawn(#[source] std::io::Error),
    #[error("asking the kernel for the size of seccomp's notifications: {0}")]
    NotificationSizes(#[source] Errno),
    #[error(
        "the CLI has more than one thread: forking the sysinfo supervisor beside another \
         thread is not sound"
    )]
    Threads,
    #[error("dropping the sysinfo supervisor's privileges: {0}")]
    Privileges(#[from] burrow_sys::privileges::PrivilegeError),
    #[error("waiting for sysinfo calls: {0}")]
    Poll(#[source] Errno),
    #[error("receiving a sysinfo call: {0}")]
    Receive(#[source] Errno),
}

/// Starts the supervisor for `listener` (the init's or an exec'd process's), detached: it
/// outlives the CLI. `container_init` is the container's init, whose start is the container's.
///
/// It is a fork of this CLI, not an exec of it: loading the CLI's binary again (a 7 MB
/// program, linked and relocated at each exec) cost a `run` about 1 ms of its two CPUs.
/// It shows as `burrow sysinfo-supervisor --container-init PID` all the same ([`set_title`]).
///
/// `mount_namespace`, the container's, is held as the supervisor's stdout (never written)
/// until the supervisor ends, after the init is reaped: the namespace's teardown (unmounting
/// its tree waits for an RCU grace period, 1-2 ms here) then comes in the supervisor's exit,
/// rather than in the init's, where it delays the exit its waiter (`run`, a shim) sees.
///
/// Only while the CLI is single-threaded (the supervisor allocates), which it checks.
pub fn spawn(
    listener: OwnedFd,
    container_init: i32,
    mount_namespace: Option<OwnedFd>,
) -> Result<(), SupervisorError> {
    let null = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
        .map(OwnedFd::from)
        .map_err(SupervisorError::Spawn)?;
    let stdout = match mount_namespace {
        Some(namespace) => namespace,
        None => null.try_clone().map_err(SupervisorError::Spawn)?,
    };
    // Nothing of the CLI's but these (and its log) stays open in it: a caller's pipe held
    // open would keep its reader waiting for the container's whole life.
    let keep = Keep::nothing()
        .and(listener.as_fd())
        .and(stdout.as_fd())
        .and(null.as_fd())
        .and_all(crate::log::file());
    let title = format!("burrow\0sysinfo-supervisor\0--container-init\0{container_init}\0");
    // Checked, not assumed: a library's thread behind the CLI's back (zbus connected on one)
    // would make the child's allocations unsound. One thread cannot start another meanwhile.
    if !burrow_sys::fork::single_threaded() {
        return Err(SupervisorError::Threads);
    }
    // SAFETY: this process is single-threaded (checked above), so the child may allocate; it
    // drops no fd wrapper but the three it keeps (and the log's, kept).
    let child = unsafe {
        fork_child(keep, ParentExit::Survive, move || {
            supervise(container_init, [listener, stdout, null], &title)
        })
    }
    .map_err(|e| SupervisorError::Spawn(std::io::Error::from(e.errno())))?;
    // Also here, so that no signal to the caller's group reaches it before it did it itself.
    let _ = nix::unistd::setpgid(child, child);
    Ok(())
}

/// The forked supervisor: its own process group (a signal to the caller's group, a terminal's
/// ^C, is not for it), no signal blocked that its caller blocked, `stdio` as its stdin, stdout
/// and stderr, its title; then [`run`].
fn supervise(container_init: i32, stdio: [OwnedFd; 3], title: &str) -> i32 {
    let _ = nix::unistd::setpgid(nix::unistd::Pid::from_raw(0), nix::unistd::Pid::from_raw(0));
    let _ = nix::sys::signal::sigprocmask(
        nix::sys::signal::SigmaskHow::SIG_SETMASK,
        Some(&nix::sys::signal::SigSet::empty()),
        None,
    );
    if let Err(e) = onto_stdio(stdio) {
        crate::log::warn(format!("sysinfo supervisor's stdio: {e}"));
        return 1;
    }
    set_title(title);
    match run(container_init) {
        Ok(()) => 0,
        Err(e) => {
            crate::log::warn(format!("sysinfo supervisor of init {container_init}: {e}"));
            1
        }
    }
}

/// Makes `fds` this process's fds 0, 1 and 2, and closes them where they were.
fn onto_stdio(fds: [OwnedFd; 3]) -> Result<(), Errno> {
    // Copied above stdio first, the originals closed: one of them could itself be 0, 1 or 2
    // (Rust's runtime opens /dev/null on any of them the CLI started without, so not today).
    let mut copies = Vec::with_capacity(3);
    for fd in fds {
        copies.push(nix::fcntl::fcntl(
            fd.as_raw_fd(),
            nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(3),
        )?);
    }
    for (target, copy) in copies.into_iter().enumerate() {
        // SAFETY: `copy` is the fd F_DUPFD_CLOEXEC just made, owned by nothing else.
        let copy = unsafe { OwnedFd::from_raw_fd(copy) };
        nix::unistd::dup2(copy.as_raw_fd(), target as i32)?;
    }
    Ok(())
}

/// Shows this process as `title` (its arguments, each ending in a NUL) in `ps` and
/// `/proc/PID/cmdline`, as many of its arguments as fit in those it was started with, and as
/// `burrow-sysinfo` in `comm` (`top`, `pgrep`). Without CAP_SYS_RESOURCE the kernel's
/// argument area cannot be moved (PR_SET_MM), so the title is written over it in place, as
/// LXC's monitor and systemd's `rename_process` do.
fn set_title(title: &str) {
    let _ = nix::sys::prctl::set_name(c"burrow-sysinfo");
    let Some((start, end)) = argument_area() else {
        return;
    };
    let length = end - start;
    // Whole arguments only: a pid cut short would name another process.
    let written = title
        .match_indices('\0')
        .map(|(at, _)| at + 1)
        .take_while(|&size| size <= length)
        .last()
        .unwrap_or(0);
    // SAFETY: [start, end) is this process's argument area, which the kernel placed on its
    // stack at exec, writable; this single-threaded child reads its arguments no more.
    unsafe {
        std::ptr::copy_nonoverlapping(title.as_ptr(), start as *mut u8, written);
        std::ptr::write_bytes((start + written) as *mut u8, 0, length - written);
    }
}

/// The start and end of this process's argument area (`/proc/self/stat`'s fields 48 and 49).
fn argument_area() -> Option<(usize, usize)> {
    let stat = std::fs::read("/proc/self/stat").ok()?;
    let address = |number| burrow_sys::proc_stat::field(&stat, number)?.parse().ok();
    let (start, end): (usize, usize) = (address(48)?, address(49)?);
    (start < end).then_some((start, end))
}

/// The supervisor's life: its privileges narrowed, then each call answered until the listener
/// hangs up.
fn run(container_init: i32) -> Result<(), SupervisorError> {
    // SAFETY: fd 0 is the listener [`supervise`] made stdin, owned by nothing else here.
    let listener = unsafe { OwnedFd::from_raw_fd(0) };
    let writer = if nix::unistd::geteuid().is_root() {
        use caps::Capability::{CAP_DAC_OVERRIDE, CAP_SYS_PTRACE};
        burrow_sys::privileges::retain_only(&[CAP_SYS_PTRACE, CAP_DAC_OVERRIDE])?;
        Writer::ProcMem
    } else {
        Writer::VmWrite
    };
    let _ = rustix::thread::set_no_new_privs(true);
    let started = std::fs::read_to_string(format!("/proc/{container_init}/stat"))
        .ok()
        .and_then(|stat| started_from_stat(&stat, ticks_per_second()));
    let mut buffer = NotificationBuffer::new()?;
    while wait_for_call(listener.as_fd())? {
        let Some(call) = buffer.receive(listener.as_fd())? else {
            continue;
        };
        let answered = serve(listener.as_fd(), &call, writer, started);
        if let Err(e) = answered {
            crate::log::debug(format!("sysinfo call of pid {}: {e}", call.pid));
        }
        respond(listener.as_fd(), call.id, answered);
    }
    Ok(())
}

fn ticks_per_second() -> u64 {
    // SAFETY: sysconf reads a constant.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(ticks).unwrap_or(100)
}

/// How the answer reaches the caller's memory.
#[derive(Clone, Copy)]
enum Writer {
    ProcMem,
    VmWrite,
}

/// Waits until a call is pending (true) or every process under the filter is gone (false).
fn wait_for_call(listener: BorrowedFd<'_>) -> Result<bool, SupervisorError> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    loop {
        let mut fds = [PollFd::new(listener, PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => {
                let events = fds[0].revents().unwrap_or(PollFlags::empty());
                return Ok(events.contains(PollFlags::POLLIN));
            }
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(SupervisorError::Poll(e)),
        }
    }
}

/// A zeroed buffer of the kernel's `struct seccomp_notif` size (SECCOMP_GET_NOTIF_SIZES: a
/// newer kernel's may be larger than libc's), which the kernel requires zeroed at each
/// receive.
struct NotificationBuffer(Vec<u64>);

impl NotificationBuffer {
    fn new() -> Result<Self, SupervisorError> {
        // SAFETY: all-zero is a valid seccomp_notif_sizes.
        let mut sizes: libc::seccomp_notif_sizes = unsafe { std::mem::zeroed() };
        // SAFETY: SECCOMP_GET_NOTIF_SIZES writes one seccomp_notif_sizes into `sizes`.
        let got = unsafe {
            libc::syscall(
                libc::SYS_seccomp,
                libc::SECCOMP_GET_NOTIF_SIZES,
                0,
                &mut sizes as *mut libc::seccomp_notif_sizes,
            )
        };
        Errno::result(got).map_err(SupervisorError::NotificationSizes)?;
        let bytes = usize::from(sizes.seccomp_notif).max(size_of::<libc::seccomp_notif>());
        Ok(NotificationBuffer(vec![0; bytes.div_ceil(8)]))
    }

    /// The next call, or None when its caller went away meanwhile.
    fn receive(
        &mut self,
        listener: BorrowedFd<'_>,
    ) -> Result<Option<libc::seccomp_notif>, SupervisorError> {
        loop {
            self.0.fill(0);
            // SAFETY: the buffer holds at least the kernel's seccomp_notif, zeroed, and is
            // 8-byte aligned as the struct is.
            let got = unsafe {
                libc::ioctl(
                    listener.as_raw_fd(),
                    libc::SECCOMP_IOCTL_NOTIF_RECV,
                    self.0.as_mut_ptr(),
                )
            };
            match Errno::result(got) {
                // SAFETY: the kernel filled a seccomp_notif at the buffer's start; any bit
                // pattern of its integers is a valid value.
                Ok(_) => return Ok(Some(unsafe { *(self.0.as_ptr().cast()) })),
                Err(Errno::EINTR) => continue,
                Err(Errno::ENOENT) => return Ok(None),
                Err(e) => return Err(SupervisorError::Receive(e)),
            }
        }
    }
}

/// Whether notification `id` still waits for its answer (its caller is alive and in the call).
fn notification_pending(listener: BorrowedFd<'_>, id: u64) -> Result<(), Errno> {
    // SAFETY: SECCOMP_IOCTL_NOTIF_ID_VALID reads one u64.
    let got = unsafe {
        libc::ioctl(
            listener.as_raw_fd(),
            libc::SECCOMP_IOCTL_NOTIF_ID_VALID,
            &id as *const u64,
        )
    };
    Errno::result(got).map(drop)
}

/// Answers one call: writes the answer into the caller's buffer, or says why not (the errno
/// the caller gets).
fn serve(
    listener: BorrowedFd<'_>,
    call: &libc::seccomp_notif,
    writer: Writer,
    started: Option<u64>,
) -> Result<(), Errno> {
    if call.data.nr != libc::SYS_sysinfo as i32 {
        return Err(Errno::ENOSYS);
    }
    let figures = answer(&readings(call.pid, started));
    // SAFETY: sysinfo is plain integers: its bytes are what the caller's buffer gets.
    let bytes = unsafe {
        std::slice::from_raw_parts(
            (&figures as *const libc::sysinfo).cast::<u8>(),
            size_of::<libc::sysinfo>(),
        )
    };
    match writer {
        Writer::ProcMem => write_through_proc_mem(listener, call, bytes),
        Writer::VmWrite => write_with_process_vm(listener, call, bytes),
    }
}

/// What the answer to `pid` is made of, read now.
fn readings(pid: u32, started: Option<u64>) -> Readings {
    // SAFETY: all-zero is a valid sysinfo, and sysinfo(2) fills it.
    let mut host: libc::sysinfo = unsafe { std::mem::zeroed() };
    // SAFETY: `host` is a sysinfo the call writes.
    unsafe { libc::sysinfo(&mut host) };
    Readings {
        host,
        memory: usage::memory_of_process(pid),
        tasks: usage::tasks_of_process(pid),
        started,
    }
}

fn write_through_proc_mem(
    listener: BorrowedFd<'_>,
    call: &libc::seccomp_notif,
    bytes: &[u8],
) -> Result<(), Errno> {
    use rustix::fs::{Mode, OFlags};
    let mem = rustix::fs::open(
        format!("/proc/{}/mem", call.pid).as_str(),
        OFlags::WRONLY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| Errno::from_raw(e.raw_os_error()))?;
    // Only now: the fd opened is the caller's if the call is still pending.
    notification_pending(listener, call.id)?;
    // An address the caller cannot write (null, unmapped, the kernel's: EIO, or EINVAL past
    // the offsets a file has) is the kernel's EFAULT.
    let written = rustix::io::pwrite(&mem, bytes, call.data.args[0]).map_err(|_| Errno::EFAULT)?;
    if written == bytes.len() {
        Ok(())
    } else {
        Err(Errno::EFAULT)
    }
}

fn write_with_process_vm(
    listener: BorrowedFd<'_>,
    call: &libc::seccomp_notif,
    bytes: &[u8],
) -> Result<(), Errno> {
    use nix::sys::uio::{process_vm_writev, RemoteIoVec};
    notification_pending(listener, call.id)?;
    let remote = [RemoteIoVec {
        base: call.data.args[0] as usize,
        len: bytes.len(),
    }];
    let pid = nix::unistd::Pid::from_raw(call.pid as i32);
    match process_vm_writev(pid, &[std::io::IoSlice::new(bytes)], &remote)? {
        n if n == bytes.len() => Ok(()),
        _ => Err(Errno::EFAULT),
    }
}

/// Answers call `id`: success (0) or the call fails with `-errno`. A caller gone meanwhile is
/// no error.
fn respond(listener: BorrowedFd<'_>, id: u64, answered: Result<(), Errno>) {
    // SAFETY: all-zero is a valid seccomp_notif_resp.
    let mut response: libc::seccomp_notif_resp = unsafe { std::mem::zeroed() };
    response.id = id;
    if let Err(errno) = answered {
        response.error = -(errno as i32);
    }
    // SAFETY: SECCOMP_IOCTL_NOTIF_SEND reads one seccomp_notif_resp.
    let sent = unsafe {
        libc::ioctl(
            listener.as_raw_fd(),
            libc::SECCOMP_IOCTL_NOTIF_SEND,
            &mut response as *mut libc::seccomp_notif_resp,
        )
    };
    if let Err(e) = Errno::result(sent).map(drop) {
        if e != Errno::ENOENT {
            crate::log::warn(format!("answering a sysinfo call: {e}"));
        }
    }
}
