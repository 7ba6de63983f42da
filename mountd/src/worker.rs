//! The worker process: mountd's own binary exec'd in worker mode by [`crate::spawn`]. It is
//! single-threaded, holds only its job socket (stdin) and /dev/null (stdout, stderr), reads
//! one [`Job`] with its fds, does it, answers with one fd or a typed error, and exits. It makes
//! itself non-dumpable before it reads the job, dies with the helper (PR_SET_PDEATHSIG, set
//! before exec), and never execs anything.

use std::os::fd::{BorrowedFd, OwnedFd};

use crate::job::{Fds, Job, JobError, OrFail, Reply};
use crate::wire;

/// The job socket: the worker's stdin, open for its whole life.
fn job_socket() -> BorrowedFd<'static> {
    // SAFETY: fd 0 is the job socket the helper gave the worker; nothing in the worker closes
    // it, so it stays valid until the process exits.
    unsafe { BorrowedFd::borrow_raw(0) }
}

/// Entry point of worker mode (`burrow-mountd worker`); never returns.
pub fn main(args: &[String]) -> ! {
    // SAFETY: prctl with integer arguments. Until here the process was in the host's
    // namespaces only, where no container can reach it.
    if unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0) } != 0 {
        std::process::exit(2);
    }
    set_name(c"mountd-worker");
    test_stops(args);
    std::panic::set_hook(Box::new(|info| {
        // The worker has no stderr: a panic is answered, so the helper logs it.
        let reply: Reply = Err(JobError::Broken(format!("worker panicked: {info}")));
        let _ = wire::send(job_socket(), &reply, &Fds::default());
    }));
    stage("mw:start");
    // A failed wait counts as a job there: the worker goes on to read it.
    if !burrow_sys::poll::readable_within(job_socket(), SPARE_PATIENCE).unwrap_or(true) {
        // A spare waiting for the next call (see spawn.rs): most of its resident memory is
        // mountd's code and libc, mapped again at the job.
        burrow_sys::service::unmap_clean_file_pages();
    }
    let Ok((job, fds)) = wire::receive::<Job>(job_socket()) else {
        // The helper gave up on this worker, or sent garbage: nothing to answer.
        std::process::exit(2);
    };
    stage("mw:job");
    match job {
        Job::Overlay(job) => reply(crate::overlay::make(&job, &fds)),
        Job::Build(job) => crate::assemble::build(&job, &fds),
    }
    std::process::exit(0)
}

/// How long a worker waits for its job before it unmaps what it can map again.
const SPARE_PATIENCE: std::time::Duration = std::time::Duration::from_secs(1);

/// Sends the worker's answer to the helper.
pub fn reply(result: Result<OwnedFd, JobError>) {
    let mut fds = Fds::default();
    let reply: Reply = result.map(|fd| fds.carry(fd));
    // Nobody to tell if this fails: the helper reads a closed socket as "no answer".
    let _ = wire::send(job_socket(), &reply, &fds);
}

fn set_name(name: &std::ffi::CStr) {
    // SAFETY: PR_SET_NAME reads a NUL-terminated string that outlives the call.
    unsafe { libc::prctl(libc::PR_SET_NAME, name.as_ptr()) };
}

/// Gives the calling worker a private copy of its mount namespace, so nothing it mounts
/// propagates anywhere.
pub fn private_mount_namespace() -> Result<(), JobError> {
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS)
        .or_failed("unshare mount namespace")?;
    nix::mount::mount(
        None::<&str>,
        "/",
        None::<&str>,
        nix::mount::MsFlags::MS_REC | nix::mount::MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .or_failed("making the copy private")
}

#[cfg(debug_assertions)]
static STOPS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn test_stops(args: &[String]) {
    #[cfg(debug_assertions)]
    if args.iter().any(|a| a == crate::spawn::TEST_STOPS) {
        STOPS.store(true, std::sync::atomic::Ordering::Relaxed);
    }
    let _ = args;
}

/// A point where a test may look at the worker (debug builds started with the test option):
/// the worker names itself after the stage and stops until the test sends SIGCONT.
pub fn stage(name: &'static str) {
    #[cfg(debug_assertions)]
    if STOPS.load(std::sync::atomic::Ordering::Relaxed) {
        let name = std::ffi::CString::new(name).unwrap_or_default();
        set_name(&name);
        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGSTOP);
        set_name(c"mountd-worker");
    }
    let _ = name;
}
