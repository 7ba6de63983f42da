//! The init (and, from `setup_and_exec` on, the process `exec` starts): joins the container's
//! mount namespace from mountd, runs createContainer hooks, sets up its terminal, hostname,
//! limits and user, waits for `start` on the exec fifo and execs the container's process. It
//! is non-dumpable until exec: the container's root cannot open it through /proc (the lesson
//! of CVE-2019-5736), and it keeps no host fd past exec.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use serde_json::{Map, Value};

use super::channel::ChildChannel;
use super::config::{ContainerHook, DeviceNode, InitConfig, ProcessCaps, Tuning};
use super::message::ToParent;

/// Leaves the session keyring the process inherited from the runtime's caller (a login's, or
/// containerd's, shared by every container it starts) for a new, empty, anonymous one, as runc
/// does. The kernel keeps the session keyring across fork, `unshare(CLONE_NEWUSER)` and exec,
/// and a process possesses its session keyring: key permissions grant a possessor everything,
/// whatever its uid or user namespace, so without this the container's root reads the caller's
/// keys. Called as root of the container's user namespace, so the keyring is charged to the
/// container's range, not to the caller. Anonymous: joining by name could join a keyring
/// someone else made.
pub fn join_fresh_session_keyring() -> std::io::Result<()> {
    // SAFETY: KEYCTL_JOIN_SESSION_KEYRING with a null name reads and writes no memory.
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

/// The init, cloned by the intermediate (non-dumpable from its first instruction on, see
/// [`burrow_sys::fork`]). Never returns.
pub fn init(config: &InitConfig, channel: ChildChannel) -> ! {
    // Before anything runs in the container, createContainer hooks included.
    if let Err(e) = join_fresh_session_keyring() {
        channel.fail("joining a fresh session keyring", e);
    }
    // Opened here, in the runtime's mount namespace, where their paths are meant.
    let create_hook_binaries: Vec<OwnedFd> = config
        .create_container_hooks
        .iter()
        .map(|hook| {
            rustix::fs::open(
                hook.path.as_c_str(),
                rustix::fs::OFlags::PATH | rustix::fs::OFlags::CLOEXEC,
                rustix::fs::Mode::empty(),
            )
            .unwrap_or_else(|e| channel.fail(&format!("createContainer hook {:?}", hook.path), e))
        })
        .collect();
    let mntns = channel
        .wait_for_mount_namespace()
        .unwrap_or_else(|e| channel.fail_with(e));
    if let Err(e) = nix::sched::setns(&mntns, nix::sched::CloneFlags::CLONE_NEWNS) {
        channel.fail("joining the mount namespace", e);
    }
    drop(mntns);
    let state = if config.has_container_hooks() {
        Some(
            channel
                .wait_for_state()
                .unwrap_or_else(|e| channel.fail_with(e)),
        )
    } else {
        None
    };
    let state_text = state.clone().map(|s| Value::Object(s).to_string());
    for (hook, binary) in config
        .create_container_hooks
        .iter()
        .zip(&create_hook_binaries)
    {
        let stdin = state_text.as_deref().unwrap_or_default().as_bytes();
        if let Err(e) = run_hook(config, hook, Some(binary.as_fd()), stdin) {
            channel.fail(&format!("createContainer hook {:?}", hook.path), e);
        }
    }
    drop(create_hook_binaries);
    setup_and_exec(config, channel, state)
}

/// Why a hook run by the init failed.
#[derive(Debug, thiserror::Error)]
pub enum HookError {
    #[error("pipe: {0}")]
    Pipe(#[source] nix::Error),
    #[error(transparent)]
    Fork(#[from] burrow_sys::fork::ForkError),
    #[error("waiting: {0}")]
    Wait(#[source] nix::Error),
    #[error("timed out")]
    TimedOut,
    #[error("ended with {0:?}")]
    Ended(nix::sys::wait::WaitStatus),
}

/// When a hook that starts now must have ended; None for a timeout beyond any clock (the
/// spec's is an i64 of seconds).
pub fn deadline_after(timeout: Duration) -> Option<Instant> {
    Instant::now().checked_add(timeout)
}

/// Runs `hook` with `state` on its stdin and waits for it, within its timeout. `binary` is an
/// O_PATH fd to execute instead of looking the path up here. The hook gets the fds the
/// container's process gets (stdio and `--preserve-fds`), its stdin pipe and its binary.
fn run_hook(
    config: &InitConfig,
    hook: &ContainerHook,
    binary: Option<BorrowedFd<'_>>,
    state: &[u8],
) -> Result<(), HookError> {
    use burrow_sys::fork::{fork_child, Keep, ParentExit};
    use nix::sys::wait::{waitpid, WaitStatus};
    let (stdin_r, stdin_w) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(HookError::Pipe)?;
    let keep = Keep::first(super::passed_on(config))
        .and(stdin_r.as_fd())
        .and_all(binary);
    // SAFETY: the init is single-threaded, so the child is a consistent copy of it (its
    // allocator's locks included); it drops no fd wrapper before its exec. The init kills it
    // at its timeout: no death signal, as before.
    let child = unsafe {
        fork_child(keep, ParentExit::Survive, || {
            exec_hook(hook, binary, stdin_r.as_fd())
        })
    }?;
    drop(stdin_r);
    let mut pipes = burrow_sys::poll::Pipes {
        input: Some((stdin_w, state)),
        ..Default::default()
    };
    let deadline = deadline_after(hook.timeout);
    let exited = burrow_sys::poll::child_exited_by(child.as_raw(), deadline, &mut pipes)
        .map_err(|e| HookError::Wait(nix::Error::from_raw(e.raw_os_error())))?;
    if !exited {
        let _ = nix::sys::signal::kill(child, nix::sys::signal::Signal::SIGKILL);
        let _ = waitpid(child, None);
        return Err(HookError::TimedOut);
    }
    match waitpid(child, None).map_err(HookError::Wait)? {
        WaitStatus::Exited(_, 0) => Ok(()),
        status => Err(HookError::Ended(status)),
    }
}

/// The hook's child: its stdin is the pipe, then exec. Returns only if the exec failed, with
/// the child's exit code.
fn exec_hook(hook: &ContainerHook, binary: Option<BorrowedFd<'_>>, stdin: BorrowedFd<'_>) -> i32 {
    use nix::fcntl::{fcntl, AtFlags, FcntlArg, FdFlag};
    // Fd 0 is stdin by definition.
    if nix::unistd::dup2(stdin.as_raw_fd(), 0).is_err() {
        return 127;
    }
    match binary {
        Some(fd) => {
            // An interpreter of a script finds it as /dev/fd/N: N stays open across exec.
            let _ = fcntl(fd.as_raw_fd(), FcntlArg::F_SETFD(FdFlag::empty()));
            let _ = nix::unistd::execveat(
                Some(fd.as_raw_fd()),
                c"",
                &hook.args,
                &hook.env,
                AtFlags::AT_EMPTY_PATH,
            );
        }
        None => {
            let _ = nix::unistd::execve(&hook.path, &hook.args, &hook.env);
        }
    }
    127
}

/// In the container's namespaces already: terminal, hostname, limits, user, then (after
/// `start`, for the init, and its startContainer hooks, which get `state`) exec. Never returns.
pub fn setup_and_exec(
    config: &InitConfig,
    channel: ChildChannel,
    state: Option<Map<String, Value>>,
) -> ! {
    set_up(config, &channel);
    let _ = channel.tell(&ToParent::Ready);
    // The CLI reads no more: whatever fails from here goes to the container's stderr.
    drop(channel);
    if let Some(fifo) = &config.fifo {
        wait_for_start(fifo.as_fd());
    }
    if !config.start_container_hooks.is_empty() {
        let state = state
            .map(|mut state| {
                state.insert("status".into(), "created".into());
                Value::Object(state).to_string().into_bytes()
            })
            .unwrap_or_default();
        for hook in &config.start_container_hooks {
            if let Err(e) = run_hook(config, hook, None, &state) {
                // `start` has returned already: the container's stderr is the only witness.
                leave(1, &format!("startContainer hook {:?}: {e}", hook.path));
            }
        }
    }
    exec(config)
}

/// Writes `message` to the container's stderr and exits with `code`.
fn leave(code: i32, message: &str) -> ! {
    let _ = std::io::Write::write_all(
        &mut std::io::stderr(),
        format!("burrow: {message}\n").as_bytes(),
    );
    burrow_sys::fork::exit(code)
}

/// The process's own setup, in order: session, terminal, hostname, limits, seccomp and the
/// sysinfo filter (while still root in the namespace: CAP_SYS_ADMIN there allows them without
/// no_new_privs), user, no_new_privs, cwd. A failure is told to the CLI, and the process exits.
fn set_up(config: &InitConfig, channel: &ChildChannel) {
    let _ = nix::unistd::setsid();
    if config.terminal {
        if let Err(e) = console(channel, config.fifo.is_some(), config.console_size) {
            channel.fail("setting up the console", e);
        }
    }
    set_names(config, channel);
    for (resource, soft, hard) in &config.rlimits {
        if let Err(e) = nix::sys::resource::setrlimit(*resource, *soft, *hard) {
            let what = format!("setrlimit({}) to {soft}/{hard}", *resource as i32);
            channel.fail(&what, e);
        }
    }
    for label in &config.exec_labels {
        if let Err(e) = std::fs::write(label.attr, &label.value) {
            channel.fail(&format!("writing {}", label.attr), e);
        }
    }
    apply_tuning(&config.tuning, channel);
    if let Err(e) = seccompiler::apply_filter(&config.seccomp) {
        channel.fail("applying the seccomp filter", e);
    }
    if let Some(program) = &config.sysinfo_filter {
        let listener = crate::sysinfo::install(program)
            .unwrap_or_else(|e| channel.fail("installing the sysinfo filter", e));
        if let Err(e) = channel.tell(&ToParent::SysinfoListener(listener)) {
            channel.fail_with(e);
        }
    }
    for node in &config.device_nodes {
        if let Err(e) = set_up_device_node(node) {
            channel.fail(&format!("setting up {:?}", node.path), e);
        }
    }
    if let Some(sets) = &config.capabilities {
        // Kept across the switch to the process's user, which would clear them all.
        if let Err(e) = keep_capabilities(sets) {
            channel.fail("keeping capabilities for the process's user", e);
        }
    }
    if config.uid != 0 || config.gid != 0 || !config.additional_gids.is_empty() {
        let groups: Vec<nix::unistd::Gid> =
            config.additional_gids.iter().map(|g| (*g).into()).collect();
        let (uid, gid) = (config.uid.into(), config.gid.into());
        let result = nix::unistd::setgroups(&groups)
            .and(nix::unistd::setresgid(gid, gid, gid))
            .and(nix::unistd::setresuid(uid, uid, uid));
        if let Err(e) = result {
            let what = format!("switching to uid {} gid {}", config.uid, config.gid);
            channel.fail(&what, e);
        }
    }
    if let Some(sets) = &config.capabilities {
        if let Err(e) = set_capabilities(sets) {
            channel.fail("setting the process's capabilities", e);
        }
    }
    if let Some(mask) = config.umask {
        nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(mask));
    }
    if config.no_new_privileges {
        let _ = rustix::thread::set_no_new_privs(true);
    }
    if let Err(e) = nix::unistd::chdir(config.cwd.as_c_str()) {
        channel.fail(&format!("chdir to {:?}", config.cwd), e);
    }
}

/// The UTS namespace's host and domain names, where the spec gives them.
fn set_names(config: &InitConfig, channel: &ChildChannel) {
    if let Some(hostname) = &config.hostname {
        if let Err(e) = nix::unistd::sethostname(hostname.to_str().unwrap_or_default()) {
            channel.fail("sethostname", e);
        }
    }
    if let Some(domainname) = &config.domainname {
        if let Err(e) = rustix::system::setdomainname(domainname.as_bytes()) {
            channel.fail("setdomainname (domainname)", e);
        }
    }
}

/// The process's I/O priority, scheduler, personality and memory policy (after its rlimits,
/// which may allow a nice or real-time priority), each failure named by its field.
fn apply_tuning(tuning: &Tuning, channel: &ChildChannel) {
    use super::tuning;
    if let Some(ioprio) = tuning.io_priority {
        if let Err(e) = tuning::set_io_priority(ioprio) {
            channel.fail("process.ioPriority: ioprio_set", e);
        }
    }
    if let Some(attr) = &tuning.scheduler {
        if let Err(e) = tuning::set_scheduler(attr) {
            channel.fail("process.scheduler: sched_setattr", e);
        }
    }
    if let Some(persona) = tuning.personality {
        if let Err(e) = nix::sys::personality::set(persona) {
            channel.fail("linux.personality: personality", e);
        }
    }
    if let Some(policy) = &tuning.memory_policy {
        if let Err(e) = tuning::set_mem_policy(policy) {
            channel.fail("linux.memoryPolicy: set_mempolicy", e);
        }
    }
}

/// The mode (permission bits) and owner the spec gives an extra device's node.
fn set_up_device_node(node: &DeviceNode) -> rustix::io::Result<()> {
    if let Some(mode) = node.mode {
        rustix::fs::chmod(
            node.path.as_c_str(),
            rustix::fs::Mode::from_bits_truncate(mode & 0o7777),
        )?;
    }
    if node.uid.is_some() || node.gid.is_some() {
        let uid = node.uid.map(rustix::fs::Uid::from_raw);
        let gid = node.gid.map(rustix::fs::Gid::from_raw);
        rustix::fs::chown(node.path.as_c_str(), uid, gid)?;
    }
    Ok(())
}

/// Before the user switch: the bounding set narrowed to the spec's, and the permitted set kept
/// through the switch.
fn keep_capabilities(sets: &ProcessCaps) -> Result<(), caps::errors::CapsError> {
    if let Some(bounding) = &sets.bounding {
        for cap in caps::runtime::thread_all_supported().difference(bounding) {
            caps::drop(None, caps::CapSet::Bounding, *cap)?;
        }
    }
    rustix::thread::set_keep_capabilities(true)
        .map_err(|e| caps::errors::CapsError::from(format!("PR_SET_KEEPCAPS: {e}")))
}

/// After the user switch: the spec's permitted, effective and inheritable sets, then its
/// ambient ones (which must be in both permitted and inheritable, as the kernel requires).
fn set_capabilities(sets: &ProcessCaps) -> Result<(), caps::errors::CapsError> {
    caps::set(None, caps::CapSet::Permitted, &sets.permitted)?;
    caps::set(None, caps::CapSet::Effective, &sets.effective)?;
    caps::set(None, caps::CapSet::Inheritable, &sets.inheritable)?;
    for cap in &sets.ambient {
        caps::raise(None, caps::CapSet::Ambient, *cap)?;
    }
    rustix::thread::set_keep_capabilities(false)
        .map_err(|e| caps::errors::CapsError::from(format!("PR_SET_KEEPCAPS: {e}")))
}

/// Execs the process, trying each candidate path of args[0]. Never returns.
fn exec(config: &InitConfig) -> ! {
    // Every fd above the ones passed on is close-on-exec: no fd of the runtime's (the channel,
    // the fifo, a hook's binary) reaches the container.
    if let Err(e) = burrow_sys::fork::close_on_exec_from(super::passed_on(config)) {
        leave(
            127,
            &format!("marking the runtime's fds close-on-exec: {e}"),
        );
    }
    let mut error = nix::errno::Errno::ENOENT;
    for program in &config.program {
        let Err(e) = nix::unistd::execve(program, &config.args, &config.env);
        error = e;
    }
    let arg0 = config.args.first().cloned().unwrap_or_default();
    leave(
        127,
        &format!("exec {arg0:?}: {}", std::io::Error::from(error)),
    )
}

/// Blocks until `burrow start` opens the fifo for reading.
fn wait_for_start(fifo: BorrowedFd<'_>) {
    let path = format!("/proc/self/fd/{}", fifo.as_raw_fd());
    let opened = rustix::fs::open(
        path.as_str(),
        rustix::fs::OFlags::WRONLY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    );
    match opened {
        Ok(fifo) => {
            let _ = rustix::io::write(&fifo, b"0");
        }
        Err(e) => leave(126, &format!("reopening the exec fifo to start: {e}")),
    }
}

/// Why the console could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    #[error("{what}: {source}")]
    System {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Send(#[from] super::channel::ProtocolError),
}

/// Names the system call (or file) an nix or rustix error came from.
fn system<E: Into<std::io::Error>>(what: impl Into<String>) -> impl FnOnce(E) -> ConsoleError {
    let what = what.into();
    move |source| ConsoleError::System {
        what,
        source: source.into(),
    }
}

/// Opens a pty in the container's devpts (of `size`, rows and columns, if given), sends the
/// master to the CLI, makes the slave the controlling terminal and stdio; for the init, also
/// binds it on /dev/console, as runc does.
fn console(
    channel: &ChildChannel,
    is_init: bool,
    size: Option<(u16, u16)>,
) -> Result<(), ConsoleError> {
    use nix::fcntl::OFlag;
    use rustix::fs::{Mode, OFlags};
    let pty = nix::pty::posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC)
        .map_err(system("open /dev/ptmx"))?;
    nix::pty::grantpt(&pty).map_err(system("grantpt"))?;
    nix::pty::unlockpt(&pty).map_err(system("unlockpt"))?;
    let name = nix::pty::ptsname_r(&pty).map_err(system("ptsname"))?;
    let slave = rustix::fs::open(name.as_str(), OFlags::RDWR | OFlags::NOCTTY, Mode::empty())
        .map_err(system(format!("open {name}")))?;
    if let Some((rows, columns)) = size {
        let size = rustix::termios::Winsize {
            ws_row: rows,
            ws_col: columns,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        rustix::termios::tcsetwinsize(&slave, size)
            .map_err(system("TIOCSWINSZ (process.consoleSize)"))?;
    }
    if is_init {
        bind_console(&name)?;
    }
    // nix's PtyMaster gives up no OwnedFd: a duplicate goes, both are closed here.
    let master = pty.as_fd().try_clone_to_owned().map_err(system("dup"))?;
    channel.tell(&ToParent::Console(master))?;
    drop(pty);
    rustix::process::ioctl_tiocsctty(&slave).map_err(system("TIOCSCTTY"))?;
    for stdio in 0..3 {
        // The standard fds are numbers by definition: the slave becomes each of them.
        nix::unistd::dup2(slave.as_raw_fd(), stdio).map_err(system("dup2"))?;
    }
    if slave.as_raw_fd() <= 2 {
        // It is one of the standard fds now: it stays open.
        let _ = std::os::fd::IntoRawFd::into_raw_fd(slave);
    }
    Ok(())
}

/// Binds the pty `name` on /dev/console, made if missing.
fn bind_console(name: &str) -> Result<(), ConsoleError> {
    use rustix::fs::{Mode, OFlags};
    let console = "/dev/console";
    rustix::fs::open(
        console,
        OFlags::CREATE | OFlags::WRONLY | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    )
    .map_err(system(format!("creating {console}")))?;
    nix::mount::mount(
        Some(name),
        console,
        None::<&str>,
        nix::mount::MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(system(format!("binding {name} on {console}")))
}
