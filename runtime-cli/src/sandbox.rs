//! `burrow sandbox`: a system container per name, made from a root filesystem (a directory or
//! a tarball) with systemd as its init, for "a Docker sandbox per user" without root. The
//! sandbox's files live under the user's data directory (`sandboxes/NAME`), its container is
//! `sandbox-NAME` in the usual state root.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::error::{CliError, Result};
use crate::state::{Status, Store};

/// Why a sandbox was not made or entered.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// A program the sandbox runs (tar, burrow itself) failed; its stderr says why.
    #[error("{what} failed: {stderr}")]
    Program {
        what: String,
        status: std::process::ExitStatus,
        stderr: String,
    },
    #[error("reading {} failed (is every file readable by you?)", .image.display())]
    UnreadableImage {
        image: PathBuf,
        status: std::process::ExitStatus,
    },
    #[error("image {} does not exist (give a root filesystem directory or tarball)", .0.display())]
    NoImage(PathBuf),
    #[error("{} has no /sbin/init: a sandbox needs an image with systemd", .0.display())]
    NoInit(PathBuf),
    #[error("creating the sandbox's container failed: {log}")]
    Create {
        status: std::process::ExitStatus,
        log: String,
    },
    #[error("running pasta for the sandbox's network: {0} (apt-get install passt)")]
    NoPasta(#[source] std::io::Error),
    #[error(
        "pasta could not connect the sandbox ({reason}); /dev/net/tun must be usable by you \
         (mode 0666)"
    )]
    Pasta {
        status: std::process::ExitStatus,
        reason: String,
    },
    /// `exec -t` sent no pty master on the console socket.
    #[error("exec -t sent no terminal")]
    NoTerminal(#[source] Option<crate::process::scm::ReceiveError>),
}

fn container_id(name: &str) -> String {
    format!("sandbox-{name}")
}

fn sandbox_dir(name: &str) -> Result<PathBuf> {
    Ok(crate::state::data_root()?.join("sandboxes").join(name))
}

/// This binary, pointed at the same state root.
fn burrow(store: &Store) -> Command {
    let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("burrow"));
    let mut cmd = Command::new(exe);
    cmd.arg("--root").arg(&store.root);
    cmd
}

/// Runs `cmd` (whose stdin the caller sets) and fails with its stderr.
fn run_quietly(mut cmd: Command, what: &str) -> Result<()> {
    let out = cmd.output().map_err(CliError::io(what.to_string()))?;
    if !out.status.success() {
        return Err(SandboxError::Program {
            what: what.to_string(),
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        }
        .into());
    }
    Ok(())
}

/// Unpacks `image` (a directory or a tarball) into `rootfs`, keeping modes; as another user
/// than root every file becomes that user's, which the container sees as its root's.
fn unpack(image: &Path, rootfs: &Path) -> Result<()> {
    let mut extract = Command::new("tar");
    extract
        .arg("-C")
        .arg(rootfs)
        .args(["-xpf", "-", "--exclude=./dev/*"]);
    if !nix::unistd::geteuid().is_root() {
        extract.arg("--no-same-owner");
    }
    let source: Stdio = if image.is_dir() {
        let mut pack = Command::new("tar")
            .arg("-C")
            .arg(image)
            .args(["-cf", "-", "."])
            .stdout(Stdio::piped())
            .spawn()
            .map_err(CliError::io("running tar"))?;
        let stdout = pack.stdout.take().expect("piped");
        extract.stdin(stdout);
        let result = run_quietly(extract, "unpacking the image");
        let packed = pack.wait().map_err(CliError::io("running tar"))?;
        result?;
        if !packed.success() {
            return Err(SandboxError::UnreadableImage {
                image: image.to_path_buf(),
                status: packed,
            }
            .into());
        }
        return Ok(());
    } else {
        std::fs::File::open(image)
            .map_err(CliError::io(format!("opening {}", image.display())))?
            .into()
    };
    extract.stdin(source);
    run_quietly(extract, "unpacking the image")
}

/// A bundle that boots systemd: the system-container defaults, systemd as init, no
/// no_new_privileges (sudo, su and setuid helpers work inside), a generous open-files limit.
fn write_config(dir: &Path, name: &str) -> Result<()> {
    let mut spec = crate::defaults::spec();
    spec["process"]["terminal"] = false.into();
    spec["process"]["args"] = serde_json::json!(["/sbin/init"]);
    spec["process"]["noNewPrivileges"] = false.into();
    spec["process"]["rlimits"] =
        serde_json::json!([{"type": "RLIMIT_NOFILE", "hard": 1048576, "soft": 1048576}]);
    spec["hostname"] = name.into();
    // Its range and /var/lib/docker outlive its container (`sandbox stop`), as long as `dir`.
    spec["annotations"] = serde_json::json!({ crate::keep::ANCHOR_ANNOTATION: dir });
    let path = dir.join("config.json");
    std::fs::write(&path, serde_json::to_string_pretty(&spec).unwrap())
        .map_err(CliError::io(format!("writing {}", path.display())))
}

/// Gives the sandbox a network through pasta (user-mode networking, as rootless Podman): a
/// default route out, and the host's 127.0.0.1:`port` forwarded to the sandbox's sshd.
fn connect_network(store: &Store, name: &str, dir: &Path, port: u16) -> Result<()> {
    let pid = store.load(&container_id(name))?.pid;
    let log = std::fs::File::create(dir.join("pasta.log")).map_err(CliError::io("pasta.log"))?;
    let status = Command::new("pasta")
        .args([
            "--config-net",
            "-q",
            "-u",
            "none",
            "-T",
            "none",
            "-U",
            "none",
            "-t",
        ])
        .arg(format!("127.0.0.1/{port}:22"))
        .arg("-P")
        .arg(dir.join("pasta.pid"))
        .arg(pid.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .status()
        .map_err(SandboxError::NoPasta)?;
    if !status.success() {
        let log = std::fs::read_to_string(dir.join("pasta.log")).unwrap_or_default();
        let reason = log
            .lines()
            .rfind(|l| !l.contains("syslog"))
            .unwrap_or("")
            .to_string();
        return Err(SandboxError::Pasta { status, reason }.into());
    }
    std::fs::write(dir.join("ssh-port"), port.to_string()).map_err(CliError::io("ssh-port"))
}

fn stop_network(dir: &Path) {
    let pid = std::fs::read_to_string(dir.join("pasta.pid"))
        .ok()
        .and_then(|p| p.trim().parse::<i32>().ok());
    if let Some(pid) = pid {
        let pid = nix::unistd::Pid::from_raw(pid);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        // Until it let go of its port, which `sandbox start` forwards again.
        let deadline = Instant::now() + Duration::from_secs(2);
        while nix::sys::signal::kill(pid, None).is_ok() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

pub fn create(store: &Store, name: &str, image: &Path, ssh_port: Option<u16>) -> Result<()> {
    crate::state::check_id(name)?;
    let dir = sandbox_dir(name)?;
    if dir.exists() {
        return Err(CliError::SandboxExists {
            name: name.into(),
            dir: dir.display().to_string(),
        });
    }
    if !image.exists() {
        return Err(SandboxError::NoImage(image.to_path_buf()).into());
    }
    let rootfs = dir.join("rootfs");
    std::fs::create_dir_all(&rootfs)
        .map_err(CliError::io(format!("creating {}", rootfs.display())))?;
    let result = (|| {
        eprintln!(
            "burrow: unpacking {} into {}",
            image.display(),
            rootfs.display()
        );
        let started = Instant::now();
        unpack(image, &rootfs)?;
        for sub in ["dev", "proc", "sys", "run"] {
            std::fs::create_dir_all(rootfs.join(sub))
                .map_err(CliError::io(format!("creating {sub} in the rootfs")))?;
        }
        let unpacked = crate::image::Image::open(&rootfs)?;
        if unpacked.regular_file("/sbin/init").is_none() {
            return Err(SandboxError::NoInit(image.to_path_buf()).into());
        }
        write_config(&dir, name)?;
        eprintln!(
            "burrow: unpacked in {:.1?}; starting systemd",
            started.elapsed()
        );
        boot(store, name, &dir, ssh_port)
    })();
    if result.is_err() {
        stop_network(&dir);
        let _ = crate::container::delete(store, &container_id(name), true);
        let _ = discard_kept(store, name);
        let _ = std::fs::remove_dir_all(&dir);
    }
    result
}

/// Creates and starts the sandbox's container from its directory `dir`, and connects it if
/// `ssh_port` is given.
fn boot(store: &Store, name: &str, dir: &Path, ssh_port: Option<u16>) -> Result<()> {
    let console = std::fs::File::create(dir.join("console.log"))
        .map_err(CliError::io("creating console.log"))?;
    let status = burrow(store)
        .arg("create")
        .arg("--bundle")
        .arg(dir)
        .arg(container_id(name))
        .stdin(Stdio::null())
        .stdout(console.try_clone().map_err(CliError::io("console.log"))?)
        .stderr(console)
        .status()
        .map_err(CliError::io("running burrow create"))?;
    if !status.success() {
        let log = std::fs::read_to_string(dir.join("console.log")).unwrap_or_default();
        return Err(SandboxError::Create {
            status,
            log: log.trim().to_string(),
        }
        .into());
    }
    crate::container::start(store, &container_id(name))?;
    match ssh_port {
        Some(port) => connect_network(store, name, dir, port),
        None => Ok(()),
    }
}

pub fn list(store: &Store) -> Result<()> {
    println!(
        "{:<20} {:<10} {:<8} {:<16} DIRECTORY",
        "NAME", "STATUS", "PID", "SSH"
    );
    let Ok(entries) = std::fs::read_dir(crate::state::data_root()?.join("sandboxes")) else {
        return Ok(());
    };
    let mut names: Vec<String> = entries
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    for name in names {
        let dir = sandbox_dir(&name)?;
        let (status, pid) = match store.load(&container_id(&name)) {
            Ok(record) => (record.status(store).as_str(), record.pid.to_string()),
            Err(_) => ("stopped", "-".into()),
        };
        let ssh = std::fs::read_to_string(dir.join("ssh-port"))
            .map(|port| format!("127.0.0.1:{}", port.trim()))
            .unwrap_or_else(|_| "-".into());
        println!(
            "{name:<20} {status:<10} {pid:<8} {ssh:<16} {}",
            dir.display()
        );
    }
    Ok(())
}

/// Runs `command` (a login shell if empty) in the sandbox and returns its exit code: on a
/// terminal of its own when stdin is one, else with this process's stdio.
pub fn shell(store: &Store, name: &str, command: &[String]) -> Result<i32> {
    store.load(&container_id(name)).map_err(|e| match e {
        CliError::NotFound(_) => CliError::NoSandbox(name.into()),
        other => other,
    })?;
    let mut cmd = burrow(store);
    cmd.arg("exec");
    let terminal = nix::unistd::isatty(0).unwrap_or(false);
    let socket_path = store
        .root
        .join(format!(".console-{}.sock", std::process::id()));
    let listener = if terminal {
        let _ = std::fs::remove_file(&socket_path);
        let listener = std::os::unix::net::UnixListener::bind(&socket_path)
            .map_err(CliError::io("creating the console socket"))?;
        cmd.arg("-t").arg("--console-socket").arg(&socket_path);
        Some(listener)
    } else {
        None
    };
    cmd.arg(container_id(name)).arg("--");
    if command.is_empty() {
        cmd.args(["/bin/bash", "-l"]);
    } else {
        cmd.args(command);
    }
    let Some(listener) = listener else {
        let status = cmd.status().map_err(CliError::io("running burrow exec"))?;
        return Ok(status.code().unwrap_or(255));
    };
    let result = shell_on_terminal(cmd, &listener);
    let _ = std::fs::remove_file(&socket_path);
    result
}

/// `exec -t` sends the pty master to our console socket; this terminal, raw, is joined to it
/// until the process ends.
fn shell_on_terminal(mut cmd: Command, listener: &std::os::unix::net::UnixListener) -> Result<i32> {
    use nix::sys::termios;
    use std::os::fd::{AsFd, AsRawFd};
    let mut child = cmd
        .stdin(Stdio::null())
        .spawn()
        .map_err(CliError::io("running burrow exec"))?;
    listener
        .set_nonblocking(true)
        .map_err(CliError::io("console socket"))?;
    let stream = loop {
        match listener.accept() {
            Ok((stream, _)) => break stream,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if let Some(status) = child.try_wait().map_err(CliError::io("burrow exec"))? {
                    return Ok(status.code().unwrap_or(255));
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => return Err(CliError::io("console socket")(e)),
        }
    };
    let master = match crate::process::scm::recv(stream.as_fd()) {
        Ok(crate::process::scm::Received { fd: Some(fd), .. }) => fd,
        Ok(_) => return Err(SandboxError::NoTerminal(None).into()),
        Err(e) => return Err(SandboxError::NoTerminal(Some(e)).into()),
    };
    let stdin = std::io::stdin();
    let saved =
        termios::tcgetattr(stdin.as_fd()).map_err(CliError::io("reading the terminal's mode"))?;
    let mut raw = saved.clone();
    termios::cfmakeraw(&mut raw);
    let _ = termios::tcsetattr(stdin.as_fd(), termios::SetArg::TCSANOW, &raw);
    // SAFETY: both ioctls take a pointer to `size`, a winsize that outlives the calls.
    unsafe {
        let mut size: libc::winsize = std::mem::zeroed();
        if libc::ioctl(0, libc::TIOCGWINSZ, &mut size) == 0 {
            libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &size);
        }
    }
    let to_terminal = master.try_clone().map_err(CliError::io("pty"))?;
    let mut from_terminal = std::fs::File::from(master);
    // Output until the pty closes (EIO once the process is gone); input until then too.
    let output = std::thread::spawn(move || {
        let _ = std::io::copy(
            &mut std::fs::File::from(to_terminal),
            &mut std::io::stdout(),
        );
    });
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut std::io::stdin(), &mut from_terminal);
    });
    let status = child.wait().map_err(CliError::io("burrow exec"));
    let _ = output.join();
    let _ = termios::tcsetattr(stdin.as_fd(), termios::SetArg::TCSANOW, &saved);
    Ok(status?.code().unwrap_or(255))
}

/// The directory of an existing sandbox.
fn existing_dir(store: &Store, name: &str) -> Result<PathBuf> {
    let dir = sandbox_dir(name)?;
    if !dir.exists() && store.load(&container_id(name)).is_err() {
        return Err(CliError::NoSandbox(name.into()));
    }
    Ok(dir)
}

/// Shuts the running sandbox down cleanly (SIGTERM is systemd's SIGRTMIN+3), for up to 10 s,
/// then deletes its container (killing what is left). Its range and docker data stay if they
/// are kept (see `keep`).
fn shut_down(store: &Store, name: &str, dir: &Path) -> Result<()> {
    let id = container_id(name);
    if let Some(record) = store
        .load(&id)
        .ok()
        .filter(|r| r.status(store) == Status::Running)
    {
        crate::container::kill(store, &id, "SIGTERM", false)?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while record.init_alive() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    stop_network(dir);
    if store.load(&id).is_ok() {
        crate::container::delete(store, &id, true)?;
    }
    Ok(())
}

pub fn stop(store: &Store, name: &str) -> Result<()> {
    let dir = existing_dir(store, name)?;
    shut_down(store, name, &dir)
}

/// Boots a stopped sandbox again, reconnected as it was (its ssh port).
pub fn start(store: &Store, name: &str) -> Result<()> {
    let dir = existing_dir(store, name)?;
    let id = container_id(name);
    if let Ok(record) = store.load(&id) {
        let status = record.status(store);
        if status != Status::Stopped {
            return Err(CliError::WrongState {
                id,
                status: status.as_str().into(),
                need: format!("stop it first (burrow sandbox stop {name})"),
            });
        }
        crate::container::delete(store, &id, true)?;
    }
    let ssh_port = std::fs::read_to_string(dir.join("ssh-port"))
        .ok()
        .and_then(|p| p.trim().parse().ok());
    boot(store, name, &dir, ssh_port)
}

pub fn remove(store: &Store, name: &str) -> Result<()> {
    let dir = existing_dir(store, name)?;
    let id = container_id(name);
    let running = |store: &Store| {
        store
            .load(&id)
            .is_ok_and(|r| r.status(store) == Status::Running)
    };
    let own_files = nix::unistd::geteuid().is_root();
    if !own_files && !running(store) && dir.join("config.json").exists() {
        // Its files are stored as its range's IDs: only it can hand them back to this user.
        let _ = start(store, name);
    }
    if !own_files && running(store) {
        // Files the container made as its other users are stored as IDs of its range, which
        // this user could not delete afterwards: hand them to the container's root (this
        // user on disk) while the range is still its own.
        let mut chown = burrow(store);
        chown.stdin(Stdio::null());
        chown.args(["exec", &id, "sh", "-c"]).arg(
            "chown -R -h 0:0 --one-file-system / ; \
             test -d /var/lib/docker && chown -R -h 0:0 --one-file-system /var/lib/docker; true",
        );
        let _ = run_quietly(chown, "handing the sandbox's files back");
    }
    shut_down(store, name, &dir)?;
    discard_kept(store, name)?;
    std::fs::remove_dir_all(&dir).map_err(CliError::io(format!(
        "removing {} (files the sandbox made while stopped may belong to its old range)",
        dir.display()
    )))
}

/// Frees the range and docker data the deleted sandbox's container kept.
fn discard_kept(store: &Store, name: &str) -> Result<()> {
    let rt = crate::container::async_runtime()?;
    let conn = crate::container::system_bus(&rt)?;
    let range = crate::container::range_name(store, &container_id(name));
    crate::keep::discard(&rt, &conn, &range)
}
