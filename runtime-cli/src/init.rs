//! The two processes the CLI forks for a container. The intermediate creates the user
//! namespace, waits for idmapd to map it and for its cgroup, becomes root in it, unshares the
//! other namespaces and clones the init as a sibling (a child of the CLI, so a subreaper such as
//! containerd's shim adopts it). The init waits for its mount namespace from mountd, sets up
//! its terminal, hostname, limits and user, waits for `start` on the exec fifo and execs the
//! container's process. Both are non-dumpable until exec: the container's root cannot open
//! them through /proc (the lesson of CVE-2019-5736), and the init keeps no host fd past exec.

use std::ffi::CString;
use std::io::IoSlice;
use std::os::fd::{AsRawFd, RawFd};

use nix::sys::socket::{self, ControlMessage, ControlMessageOwned, MsgFlags};

/// Everything the init needs, prepared before the fork.
pub struct InitConfig {
    pub args: Vec<CString>,
    pub env: Vec<CString>,
    /// Candidate paths for args[0] (PATH lookup is done before the fork).
    pub program: Vec<CString>,
    pub cwd: CString,
    pub hostname: Option<CString>,
    pub rlimits: Vec<(libc::__rlimit_resource_t, u64, u64)>,
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
    pub no_new_privileges: bool,
    pub terminal: bool,
    /// O_PATH fd of the exec fifo, reopened for writing through /proc/self/fd: the init waits
    /// on it for `start` (an exec'd process does not wait).
    pub fifo: Option<RawFd>,
    /// Extra fds (3..3+N) passed on to the process (`--preserve-fds`).
    pub preserve_fds: i32,
    pub unshare_flags: libc::c_int,
    /// The system-container seccomp filter, applied just before the user switch and exec.
    pub seccomp: seccompiler::BpfProgram,
    /// OCI hooks run inside the container by the init: createContainer ones (binaries of the
    /// runtime's mount namespace, opened before the init joins the container's mounts) once
    /// the mounts are in place, startContainer ones (found inside) after `start`, just before
    /// the process.
    pub create_container_hooks: Vec<ContainerHook>,
    pub start_container_hooks: Vec<ContainerHook>,
}

impl InitConfig {
    /// Whether the init runs hooks of its own, and so waits for the container's state.
    pub fn has_container_hooks(&self) -> bool {
        !self.create_container_hooks.is_empty() || !self.start_container_hooks.is_empty()
    }
}

/// An OCI hook, prepared before the fork.
pub struct ContainerHook {
    pub path: CString,
    pub args: Vec<CString>,
    pub env: Vec<CString>,
    pub timeout: std::time::Duration,
}

/// The socket pair between the CLI and the processes it forks for a container.
pub fn channel() -> crate::error::Result<(std::os::fd::OwnedFd, std::os::fd::OwnedFd)> {
    socket::socketpair(
        socket::AddressFamily::Unix,
        socket::SockType::SeqPacket,
        None,
        socket::SockFlag::SOCK_CLOEXEC,
    )
    .map_err(|e| crate::error::CliError::Setup(format!("socketpair: {e}")))
}

pub fn send(sock: RawFd, data: &[u8], fd: Option<RawFd>) -> nix::Result<()> {
    let fds;
    let cmsgs: Vec<ControlMessage> = match fd {
        Some(fd) => {
            fds = [fd];
            vec![ControlMessage::ScmRights(&fds)]
        }
        None => vec![],
    };
    socket::sendmsg::<()>(sock, &[IoSlice::new(data)], &cmsgs, MsgFlags::empty(), None).map(drop)
}

/// Receives one message (and an fd, if one came with it).
pub fn recv(sock: RawFd) -> nix::Result<(Vec<u8>, Option<RawFd>)> {
    // Room for the container's state (with its annotations), which the init's hooks get.
    let mut buf = vec![0u8; 256 * 1024];
    let mut cmsg = nix::cmsg_space!([RawFd; 1]);
    let mut iov = [std::io::IoSliceMut::new(&mut buf)];
    let msg = socket::recvmsg::<()>(sock, &mut iov, Some(&mut cmsg), MsgFlags::MSG_CMSG_CLOEXEC)?;
    let fd = msg.cmsgs()?.find_map(|c| match c {
        ControlMessageOwned::ScmRights(fds) => fds.first().copied(),
        _ => None,
    });
    let len = msg.bytes;
    buf.truncate(len);
    Ok((buf, fd))
}

fn fail(sock: RawFd, what: &str, e: impl std::fmt::Display) -> ! {
    let _ = send(sock, format!("error: {what}: {e}").as_bytes(), None);
    // SAFETY: leaving a forked child.
    unsafe { libc::_exit(1) }
}

/// The intermediate process. Never returns.
pub fn intermediate(config: &InitConfig, sock: RawFd) -> ! {
    // SAFETY: prctl on the calling process.
    unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0) };
    if let Err(e) = nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWUSER) {
        fail(sock, "unshare(CLONE_NEWUSER)", e);
    }
    // Sent as an fd: a non-dumpable process's /proc/PID/ns cannot be opened by a non-root
    // parent.
    match std::fs::File::open("/proc/self/ns/user") {
        Ok(userns) => {
            let _ = send(
                sock,
                b"userns",
                Some(std::os::fd::AsRawFd::as_raw_fd(&userns)),
            );
        }
        Err(e) => fail(sock, "opening the new user namespace", e),
    }
    match recv(sock) {
        Ok((msg, _)) if msg == b"go" => {}
        Ok((msg, _)) => fail(
            sock,
            "waiting for the ID map",
            String::from_utf8_lossy(&msg),
        ),
        Err(e) => fail(sock, "waiting for the ID map", e),
    }
    // Also shed the caller's supplementary groups: host groups (unmapped inside, but still
    // checked on host files) must not follow a user into the container.
    if let Err(e) = nix::unistd::setresgid(0.into(), 0.into(), 0.into())
        .and(nix::unistd::setresuid(0.into(), 0.into(), 0.into()))
        .and(nix::unistd::setgroups(&[]))
    {
        fail(sock, "becoming root in the user namespace", e);
    }
    // SAFETY: unshare with flags prepared from the spec.
    if unsafe { libc::unshare(config.unshare_flags) } != 0 {
        fail(
            sock,
            "unsharing the container's namespaces",
            std::io::Error::last_os_error(),
        );
    }
    // SAFETY: a single-threaded process clones itself; CLONE_PARENT makes the child a sibling.
    let child = unsafe {
        libc::syscall(
            libc::SYS_clone,
            libc::CLONE_PARENT | libc::SIGCHLD,
            0,
            0,
            0,
            0,
        )
    };
    match child {
        0 => init(config, sock),
        pid if pid > 0 => {
            let _ = send(sock, format!("init {pid}").as_bytes(), None);
            // SAFETY: leaving a forked child.
            unsafe { libc::_exit(0) }
        }
        _ => fail(sock, "clone of the init", std::io::Error::last_os_error()),
    }
}

/// Leaves the session keyring the process inherited from the runtime's caller (a login's, or
/// containerd's, shared by every container it starts) for a new, empty, anonymous one, as runc
/// does. The kernel keeps the session keyring across fork, `unshare(CLONE_NEWUSER)` and exec,
/// and a process possesses its session keyring: key permissions grant a possessor everything,
/// whatever its uid or user namespace, so without this the container's root reads the caller's
/// keys. Called as root of the container's user namespace, so the keyring is charged to the
/// container's range, not to the caller. Anonymous: joining by name could join a keyring
/// someone else made.
pub fn join_fresh_session_keyring() -> std::io::Result<()> {
    // SAFETY: keyctl with an integer command and a null name (no memory is read or written).
    let serial = unsafe {
        libc::syscall(
            libc::SYS_keyctl,
            libc::KEYCTL_JOIN_SESSION_KEYRING,
            std::ptr::null::<libc::c_char>(),
        )
    };
    if serial >= 0 {
        return Ok(());
    }
    match std::io::Error::last_os_error() {
        // A kernel without keyrings (CONFIG_KEYS=n) has none to share.
        e if e.raw_os_error() == Some(libc::ENOSYS) => Ok(()),
        e => Err(e),
    }
}

fn init(config: &InitConfig, sock: RawFd) -> ! {
    // SAFETY: prctl on the calling process.
    unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0) };
    // Before anything runs in the container, createContainer hooks included.
    if let Err(e) = join_fresh_session_keyring() {
        fail(sock, "joining a fresh session keyring", e);
    }
    let create_hook_binaries: Vec<std::os::fd::OwnedFd> = config
        .create_container_hooks
        .iter()
        .map(|hook| {
            nix::fcntl::open(
                hook.path.as_c_str(),
                nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_CLOEXEC,
                nix::sys::stat::Mode::empty(),
            )
            // SAFETY: a fresh fd from open(2), owned from here on.
            .map(|fd| unsafe { std::os::fd::FromRawFd::from_raw_fd(fd) })
            .unwrap_or_else(|e| fail(sock, &format!("createContainer hook {:?}", hook.path), e))
        })
        .collect();
    let mntns = match recv(sock) {
        Ok((msg, Some(fd))) if msg == b"mntns" => fd,
        Ok((msg, _)) => fail(
            sock,
            "waiting for the mount namespace",
            String::from_utf8_lossy(&msg),
        ),
        Err(e) => fail(sock, "waiting for the mount namespace", e),
    };
    // SAFETY: setns on an fd received from the CLI.
    if unsafe { libc::setns(mntns, libc::CLONE_NEWNS) } != 0 {
        fail(
            sock,
            "joining the mount namespace",
            std::io::Error::last_os_error(),
        );
    }
    let _ = nix::unistd::close(mntns);
    let state = if config.has_container_hooks() {
        match recv(sock) {
            Ok((msg, None)) if msg.starts_with(b"state ") => msg[6..].to_vec(),
            Ok((msg, _)) => fail(
                sock,
                "waiting for the container's state",
                String::from_utf8_lossy(&msg),
            ),
            Err(e) => fail(sock, "waiting for the container's state", e),
        }
    } else {
        vec![]
    };
    for (hook, binary) in config
        .create_container_hooks
        .iter()
        .zip(&create_hook_binaries)
    {
        if let Err(e) = run_hook(hook, Some(binary.as_raw_fd()), &state) {
            fail(sock, &format!("createContainer hook {:?}", hook.path), e);
        }
    }
    drop(create_hook_binaries);
    setup_and_exec(config, sock, &state)
}

/// The NULL-terminated pointer array execve(2) takes; `strings` must outlive it.
fn null_terminated(strings: &[CString]) -> Vec<*const libc::c_char> {
    strings
        .iter()
        .map(|s| s.as_ptr())
        .chain([std::ptr::null()])
        .collect()
}

/// Runs `hook` with `state` on its stdin and waits for it, within its timeout. `binary` is an
/// O_PATH fd to execute instead of looking the path up here.
fn run_hook(hook: &ContainerHook, binary: Option<RawFd>, state: &[u8]) -> Result<(), String> {
    let (stdin_r, stdin_w) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"))?;
    let argv = null_terminated(&hook.args);
    let envp = null_terminated(&hook.env);
    // SAFETY: the init is single-threaded; the child only makes raw syscalls before exec.
    match unsafe { nix::unistd::fork() }.map_err(|e| format!("fork: {e}"))? {
        nix::unistd::ForkResult::Child => {
            // SAFETY: raw syscalls on fds and vectors prepared before the fork; never returns.
            unsafe {
                libc::dup2(stdin_r.as_raw_fd(), 0);
                match binary {
                    Some(fd) => {
                        // An interpreter of a script finds it as /dev/fd/N: keep N open.
                        libc::fcntl(fd, libc::F_SETFD, 0);
                        libc::syscall(
                            libc::SYS_execveat,
                            fd,
                            c"".as_ptr(),
                            argv.as_ptr(),
                            envp.as_ptr(),
                            libc::AT_EMPTY_PATH,
                        );
                    }
                    None => {
                        libc::execve(hook.path.as_ptr(), argv.as_ptr(), envp.as_ptr());
                    }
                }
                libc::_exit(127)
            }
        }
        nix::unistd::ForkResult::Parent { child } => {
            drop(stdin_r);
            let _ = std::io::Write::write_all(&mut std::fs::File::from(stdin_w), state);
            let deadline = std::time::Instant::now() + hook.timeout;
            loop {
                use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
                match waitpid(child, Some(WaitPidFlag::WNOHANG)) {
                    Ok(WaitStatus::Exited(_, 0)) => return Ok(()),
                    Ok(WaitStatus::StillAlive) if std::time::Instant::now() < deadline => {
                        std::thread::sleep(std::time::Duration::from_millis(5));
                    }
                    Ok(WaitStatus::StillAlive) => {
                        let _ = nix::sys::signal::kill(child, nix::sys::signal::Signal::SIGKILL);
                        let _ = waitpid(child, None);
                        return Err("timed out".into());
                    }
                    Ok(status) => return Err(format!("ended with {status:?}")),
                    Err(e) => return Err(format!("waiting: {e}")),
                }
            }
        }
    }
}

/// In the container's namespaces already: terminal, hostname, limits, user, then (after
/// `start`, for the init, and its startContainer hooks, which get `state`) exec. Never returns.
pub fn setup_and_exec(config: &InitConfig, sock: RawFd, state: &[u8]) -> ! {
    let _ = nix::unistd::setsid();
    if config.terminal {
        if let Err(e) = console(sock, config.fifo.is_some()) {
            fail(sock, "setting up the console", e);
        }
    }
    if let Some(hostname) = &config.hostname {
        if let Err(e) = nix::unistd::sethostname(hostname.to_str().unwrap_or_default()) {
            fail(sock, "sethostname", e);
        }
    }
    for (resource, soft, hard) in &config.rlimits {
        let limit = libc::rlimit {
            rlim_cur: *soft,
            rlim_max: *hard,
        };
        // SAFETY: setrlimit with a valid struct.
        if unsafe { libc::setrlimit(*resource, &limit) } != 0 {
            fail(
                sock,
                &format!("setrlimit({resource}) to {soft}/{hard}"),
                std::io::Error::last_os_error(),
            );
        }
    }
    // Applied while still root in the namespace (CAP_SYS_ADMIN there allows it without
    // no_new_privs), before the switch to the process's user.
    if let Err(e) = seccompiler::apply_filter(&config.seccomp) {
        fail(sock, "applying the seccomp filter", e);
    }
    if config.uid != 0 || config.gid != 0 || !config.additional_gids.is_empty() {
        let groups: Vec<nix::unistd::Gid> =
            config.additional_gids.iter().map(|g| (*g).into()).collect();
        let result = nix::unistd::setgroups(&groups)
            .and(nix::unistd::setresgid(
                config.gid.into(),
                config.gid.into(),
                config.gid.into(),
            ))
            .and(nix::unistd::setresuid(
                config.uid.into(),
                config.uid.into(),
                config.uid.into(),
            ));
        if let Err(e) = result {
            fail(
                sock,
                &format!("switching to uid {} gid {}", config.uid, config.gid),
                e,
            );
        }
    }
    if config.no_new_privileges {
        // SAFETY: prctl on the calling process.
        unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
    }
    if let Err(e) = nix::unistd::chdir(config.cwd.as_c_str()) {
        fail(sock, &format!("chdir to {:?}", config.cwd), e);
    }
    let _ = send(sock, b"ready", None);
    let _ = nix::unistd::close(sock);
    if let Some(fifo) = config.fifo {
        wait_for_start(fifo);
    }
    if !config.start_container_hooks.is_empty() {
        let state = serde_json::from_slice::<serde_json::Value>(state)
            .map(|mut state| {
                state["status"] = "created".into();
                state.to_string().into_bytes()
            })
            .unwrap_or_default();
        for hook in &config.start_container_hooks {
            if let Err(e) = run_hook(hook, None, &state) {
                // `start` has returned already: the container's stderr is the only witness.
                let message = format!("burrow: startContainer hook {:?}: {e}\n", hook.path);
                // SAFETY: writing to the container's stderr, then leaving.
                unsafe {
                    libc::write(2, message.as_ptr().cast(), message.len());
                    libc::_exit(1)
                }
            }
        }
    }
    // SAFETY: closing (on exec) every fd above the ones passed on.
    unsafe {
        // No fd of the runtime survives exec.
        libc::syscall(
            libc::SYS_close_range,
            3 + config.preserve_fds as u32,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        );
    }
    let argv = null_terminated(&config.args);
    let envp = null_terminated(&config.env);
    for program in &config.program {
        // SAFETY: NUL-terminated argument vectors built above.
        unsafe { libc::execve(program.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
    }
    let message = format!(
        "burrow: exec {:?}: {}\n",
        config.args[0],
        std::io::Error::last_os_error()
    );
    // SAFETY: writing to the container's stderr, then leaving.
    unsafe {
        libc::write(2, message.as_ptr().cast(), message.len());
        libc::_exit(127)
    }
}

/// Blocks until `burrow start` opens the fifo for reading.
fn wait_for_start(fifo: RawFd) {
    let path = CString::new(format!("/proc/self/fd/{fifo}")).unwrap();
    // SAFETY: open of a path we built; the result is checked.
    let w = unsafe { libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC) };
    if w < 0 {
        // SAFETY: leaving the process.
        unsafe { libc::_exit(126) };
    }
    // SAFETY: writing one byte from a static buffer, closing our fds.
    unsafe {
        libc::write(w, b"0".as_ptr().cast(), 1);
        libc::close(w);
        libc::close(fifo);
    }
}

/// Opens a pty in the container's devpts, sends the master to the CLI, makes the slave the
/// controlling terminal and stdio; for the init, also binds it on /dev/console, as runc does.
fn console(sock: RawFd, is_init: bool) -> Result<(), String> {
    use nix::fcntl::OFlag;
    let master = nix::pty::posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC)
        .map_err(|e| format!("open /dev/ptmx: {e}"))?;
    nix::pty::grantpt(&master).map_err(|e| format!("grantpt: {e}"))?;
    nix::pty::unlockpt(&master).map_err(|e| format!("unlockpt: {e}"))?;
    let name = nix::pty::ptsname_r(&master).map_err(|e| format!("ptsname: {e}"))?;
    let slave = nix::fcntl::open(
        name.as_str(),
        OFlag::O_RDWR | OFlag::O_NOCTTY,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(|e| format!("open {name}: {e}"))?;
    if is_init {
        let console = "/dev/console";
        nix::fcntl::open(
            console,
            OFlag::O_CREAT | OFlag::O_WRONLY | OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::from_bits_truncate(0o600),
        )
        .and_then(nix::unistd::close)
        .map_err(|e| format!("creating {console}: {e}"))?;
        nix::mount::mount(
            Some(name.as_str()),
            console,
            None::<&str>,
            nix::mount::MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(|e| format!("binding {name} on {console}: {e}"))?;
    }
    send(sock, b"console", Some(master.as_raw_fd()))
        .map_err(|e| format!("sending the console: {e}"))?;
    drop(master);
    // SAFETY: ioctl on the slave we opened.
    if unsafe { libc::ioctl(slave, libc::TIOCSCTTY, 0) } != 0 {
        return Err(format!("TIOCSCTTY: {}", std::io::Error::last_os_error()));
    }
    for fd in 0..3 {
        nix::unistd::dup2(slave, fd).map_err(|e| format!("dup2: {e}"))?;
    }
    if slave > 2 {
        let _ = nix::unistd::close(slave);
    }
    Ok(())
}
