//! burrow: an OCI runtime with runc's command line that runs every container as a system
//! container — its own user namespace with an exclusive ID range, all namespaces, a minimal
//! /dev and locked masks — by asking Burrow's root helpers over the system bus for each
//! privileged step.

mod container;
mod defaults;
mod error;
mod exec;
mod features;
#[cfg(test)]
mod fuzz;
mod image;
mod keep;
mod log;
mod lxcfs;
mod namespaces;
mod network;
mod process;
mod sandbox;
mod seccomp;
mod spec;
mod state;
mod sysctl;
mod sysinfo;

use std::path::{Path, PathBuf};

use burrow_sys::cgroup;
use clap::{CommandFactory, Parser, Subcommand};

use crate::error::{CliError, Result};
use crate::state::{Status, Store};

#[derive(Parser, Debug)]
#[command(
    name = "burrow",
    version,
    about = "OCI runtime for system containers (runc-compatible command line)"
)]
struct Cli {
    /// Directory for container state (default /run/burrow, or $XDG_RUNTIME_DIR/burrow for
    /// non-root, else /tmp/burrow-UID). It must be the caller's and writable by nobody else.
    #[arg(long, global = true)]
    root: Option<PathBuf>,
    /// Log file (errors go there; with --log-format json as JSON lines).
    #[arg(long, global = true)]
    log: Option<String>,
    /// Log format: text or json.
    #[arg(long, global = true, default_value = "text")]
    log_format: String,
    /// More logging.
    #[arg(long, global = true)]
    debug: bool,
    /// cgroupsPath is systemd's slice:prefix:name (made as cgroupfs directories).
    #[arg(long, global = true)]
    systemd_cgroup: bool,
    /// Accepted for runc compatibility (burrow decides by the caller's uid).
    #[arg(long, global = true, num_args = 0..=1, default_missing_value = "true")]
    rootless: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Create a container from a bundle; it waits for `start`.
    Create(CreateArgs),
    /// Start a created container.
    Start { id: String },
    /// Create and start a container, wait for it, delete it, exit with its status.
    Run {
        #[arg(long, short)]
        detach: bool,
        #[command(flatten)]
        create: CreateArgs,
    },
    /// Run a new process in a running container.
    Exec(ExecArgs),
    /// The container's OCI state as JSON.
    State { id: String },
    /// List containers.
    List {
        #[arg(long, short, default_value = "table")]
        format: String,
        #[arg(long, short)]
        quiet: bool,
    },
    /// Send a signal (name or number; default SIGTERM) to the container's init, or with --all to
    /// every process in it.
    Kill {
        #[arg(long, short)]
        all: bool,
        id: String,
        signal: Option<String>,
    },
    /// Delete a container (a running one only with --force) and give back its ID range. A
    /// container whose files outlive it (Docker's, a sandbox's) keeps its range and
    /// /var/lib/docker for its next create under the same id, until its files go (see `gc`).
    Delete {
        #[arg(long, short)]
        force: bool,
        id: String,
    },
    /// Processes in the container.
    Ps {
        #[arg(long, short, default_value = "table")]
        format: String,
        id: String,
    },
    /// Freeze every process in the container.
    Pause { id: String },
    /// Thaw a paused container.
    Resume { id: String },
    /// Change the container's resource limits (`--resources FILE`, `-` for stdin; zeros mean
    /// unchanged).
    Update {
        #[arg(long, short)]
        resources: Option<String>,
        id: String,
    },
    /// Free what removed containers left: the ID range and /var/lib/docker kept for a
    /// container whose files are gone (`docker rm`, a removed sandbox directory). Prints one
    /// line per container freed; exit status 1 if something could not be freed (each reason
    /// on stderr). Every create does the same for its state root; run it at boot too
    /// (burrow-gc.service runs `burrow gc --all`).
    Gc {
        /// Of every state root, not only of --root's.
        #[arg(long)]
        all: bool,
    },
    /// What this runtime supports on this host, as the runtime spec's features JSON.
    Features,
    /// Print a completion script for SHELL (bash, zsh, fish, ...) to stdout.
    Completion { shell: clap_complete::Shell },
    /// Write burrow.1 and a page per subcommand into DIR (for `make install`).
    #[command(hide = true)]
    Man {
        #[arg(long)]
        dir: PathBuf,
    },
    /// Sandboxes: systemd (and Docker, if the image has it) in a system container of your own,
    /// without root.
    Sandbox {
        #[command(subcommand)]
        command: SandboxCommand,
    },
    /// Write a config.json for a system container.
    Spec {
        #[arg(long, short, default_value = ".")]
        bundle: PathBuf,
    },
}

#[derive(Subcommand, Debug)]
enum SandboxCommand {
    /// Unpack a root filesystem with systemd and boot it as sandbox NAME.
    Create {
        name: String,
        /// The root filesystem: a directory or a tarball.
        #[arg(long)]
        image: PathBuf,
        /// Connect the sandbox through pasta (user-mode networking) and forward the host's
        /// 127.0.0.1:PORT to its sshd.
        #[arg(long, value_name = "PORT")]
        ssh_port: Option<u16>,
    },
    /// Your sandboxes and their state.
    List,
    /// Run a command (default: a login shell) in sandbox NAME.
    Shell {
        name: String,
        #[arg(last = true)]
        command: Vec<String>,
    },
    /// Shut sandbox NAME down; its files, ID range and /var/lib/docker stay for `start`.
    Stop { name: String },
    /// Boot the stopped sandbox NAME again, as it was.
    Start { name: String },
    /// Shut sandbox NAME down and delete it with its files.
    Rm { name: String },
}

/// What `exec` takes.
#[derive(clap::Args, Debug)]
struct ExecArgs {
    /// process.json (OCI Process); without it, the command after the id.
    #[arg(long, short)]
    process: Option<PathBuf>,
    #[arg(long, short)]
    detach: bool,
    #[arg(long)]
    pid_file: Option<PathBuf>,
    #[arg(long)]
    console_socket: Option<PathBuf>,
    #[arg(long, short)]
    tty: bool,
    #[arg(long)]
    cwd: Option<String>,
    #[arg(long, short)]
    env: Vec<String>,
    #[arg(long, default_value_t = 0)]
    preserve_fds: i32,
    id: String,
    /// The command and its arguments: everything after the id is the command's (as runc
    /// takes it: `burrow exec ID sh -c 'echo hi'`).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    command: Vec<String>,
}

/// What `create` and `run` take.
#[derive(clap::Args, Debug)]
struct CreateArgs {
    #[arg(long, short, default_value = ".")]
    bundle: PathBuf,
    #[arg(long)]
    pid_file: Option<PathBuf>,
    #[arg(long)]
    console_socket: Option<PathBuf>,
    /// Accepted for runc compatibility (burrow always pivots into the rootfs).
    #[arg(long)]
    no_pivot: bool,
    /// Accepted for runc compatibility and ignored: every container process joins a fresh
    /// session keyring, since a container never shares a keyring with its caller.
    #[arg(long)]
    no_new_keyring: bool,
    #[arg(long, default_value_t = 0)]
    preserve_fds: i32,
    id: String,
}

impl CreateArgs {
    fn options(&self, systemd_cgroup: bool) -> container::CreateOptions<'_> {
        if self.no_new_keyring {
            // runc's flag keeps the caller's session keyring in the container: exactly what
            // invariant 10 forbids.
            log::debug("--no-new-keyring ignored: the container gets a fresh session keyring");
        }
        container::CreateOptions {
            id: &self.id,
            bundle: &self.bundle,
            pid_file: self.pid_file.as_deref(),
            console_socket: self.console_socket.as_deref(),
            preserve_fds: self.preserve_fds,
            systemd_cgroup,
        }
    }
}

const SUBCOMMANDS: [&str; 19] = [
    "create",
    "start",
    "run",
    "state",
    "list",
    "kill",
    "delete",
    "ps",
    "pause",
    "resume",
    "update",
    "gc",
    "features",
    "spec",
    "help",
    "exec",
    "sandbox",
    "completion",
    "man",
];
const GLOBAL_WITH_VALUE: [&str; 4] = ["--root", "--log", "--log-format", "--rootless"];
const GLOBAL_SWITCHES: [&str; 4] = ["--debug", "--systemd-cgroup", "--help", "--version"];

/// Drops global flags burrow does not know (Docker and containerd may prepend some, such as
/// `--criu`), keeping everything from the subcommand on.
fn tolerate_unknown_globals(args: Vec<String>) -> Vec<String> {
    let mut iter = args.into_iter();
    // argv may be empty (execve with no arguments): clap then names the program itself.
    let mut out: Vec<String> = iter.next().into_iter().collect();
    let mut iter = iter.peekable();
    while let Some(arg) = iter.next() {
        if SUBCOMMANDS.contains(&arg.as_str()) || !arg.starts_with('-') {
            out.push(arg);
            out.extend(iter);
            break;
        }
        let name = arg.split('=').next().unwrap_or("").to_string();
        if GLOBAL_WITH_VALUE.contains(&name.as_str()) {
            let takes_next = !arg.contains('=') && name != "--rootless";
            out.push(arg);
            if takes_next {
                if let Some(value) = iter.next() {
                    out.push(value);
                }
            }
        } else if GLOBAL_SWITCHES.contains(&name.as_str())
            || ["-h", "-v", "-V"].contains(&name.as_str())
        {
            out.push(arg);
        }
    }
    out
}

/// /run/burrow for root; for another user `$XDG_RUNTIME_DIR/burrow`, or without it
/// `/tmp/burrow-UID`, claimed exclusively (see `state::claim_tmp_root`).
fn default_root() -> Result<PathBuf> {
    let uid = nix::unistd::geteuid();
    if uid.is_root() {
        return Ok(PathBuf::from("/run/burrow"));
    }
    if let Some(dir) = std::env::var_os("XDG_RUNTIME_DIR") {
        return Ok(Path::new(&dir).join("burrow"));
    }
    let path = PathBuf::from(format!("/tmp/burrow-{uid}"));
    state::claim_tmp_root(&path)?;
    Ok(path)
}

fn main() {
    let args = tolerate_unknown_globals(std::env::args().collect());
    let cli = Cli::parse_from(args);
    // fds 0-2 belong to the container during create and run: with a log file (containerd,
    // Docker), errors go there only; a person running `burrow run` sees them on stderr.
    let quiet_stderr = cli.log.is_some()
        && matches!(
            cli.command,
            Command::Create(_) | Command::Run { .. } | Command::Exec(_)
        );
    let logger = match log::Logger::new(
        cli.log.as_deref(),
        &cli.log_format,
        !quiet_stderr,
        cli.debug,
    ) {
        Ok(logger) => log::install(logger),
        Err(e) => {
            // No log to write to: stderr is all there is (runc does the same).
            eprintln!("burrow: {e}");
            std::process::exit(1);
        }
    };
    match run(&cli) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            logger.error(&e.to_string());
            std::process::exit(1);
        }
    }
}

fn run(cli: &Cli) -> Result<i32> {
    let store = || match &cli.root {
        Some(root) => Store::new(root),
        None => Store::new(&default_root()?),
    };
    match &cli.command {
        Command::Create(args) => container::create(&store()?, &args.options(cli.systemd_cgroup))?,
        Command::Start { id } => container::start(&store()?, id)?,
        Command::Run { detach, create } => {
            return run_container(&store()?, create, *detach, cli.systemd_cgroup)
        }
        Command::Exec(args) => return exec_command(&store()?, args),
        Command::State { id } => {
            let store = store()?;
            let record = store.load(id)?;
            println!(
                "{}",
                serde_json::to_string_pretty(&record.oci_state(&store)).unwrap()
            );
        }
        Command::List { format, quiet } => list(&store()?, format, *quiet),
        Command::Kill { all, id, signal } => {
            container::kill(&store()?, id, signal.as_deref().unwrap_or("SIGTERM"), *all)?
        }
        Command::Delete { force, id } => container::delete(&store()?, id, *force)?,
        Command::Ps { format, id } => ps(&store()?, id, format)?,
        Command::Pause { id } => pause(&store()?, id, true)?,
        Command::Resume { id } => pause(&store()?, id, false)?,
        Command::Update { resources, id } => update(&store()?, id, resources.as_deref())?,
        Command::Sandbox { command } => return sandbox_command(&store()?, command),
        Command::Gc { all } => return gc((!all).then(store).transpose()?.as_ref()),
        Command::Features => {
            let features = features::to_json(&features::features());
            println!("{}", serde_json::to_string_pretty(&features).unwrap());
        }
        Command::Completion { shell } => write_completion(*shell)?,
        Command::Man { dir } => write_man_pages(dir)?,
        Command::Spec { bundle, .. } => write_spec(bundle)?,
    }
    Ok(0)
}

/// `run`: create, start, and (unless detached) wait for the init, delete, its exit code.
fn run_container(store: &Store, create: &CreateArgs, detach: bool, systemd: bool) -> Result<i32> {
    let id = &create.id;
    let rt = container::async_runtime()?;
    let mut created = container::create_on(&rt, store, &create.options(systemd))?;
    container::start(store, id)?;
    created.start_supervisor(&rt, store, id)?;
    let conn = created.conn;
    if detach {
        return Ok(0);
    }
    let pid = store.load(id)?.pid;
    // A container that is done within a second is deleted on create's bus connection; one
    // that runs longer does not hold a connection meanwhile (the bus limits them per user).
    let conn = conn.filter(|_| container::exits_within(pid, std::time::Duration::from_secs(1)));
    let code = match nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None) {
        Ok(nix::sys::wait::WaitStatus::Exited(_, code)) => code,
        Ok(nix::sys::wait::WaitStatus::Signaled(_, signal, _)) => 128 + signal as i32,
        _ => 255,
    };
    container::delete_on(&rt, conn, store, id, true)?;
    Ok(code)
}

/// `exec --process P.json`'s process (an OCI Process; `path` names it in errors).
fn parse_process(text: &str, path: &Path) -> Result<oci_spec::runtime::Process> {
    let invalid = |source| CliError::Json {
        what: format!("process JSON {}", path.display()),
        source,
    };
    let mut value: serde_json::Value = serde_json::from_str(text).map_err(invalid)?;
    process::tuning::spec_flag_names_for_oci_spec(&mut value);
    serde_json::from_value(value).map_err(invalid)
}

fn exec_command(store: &Store, args: &ExecArgs) -> Result<i32> {
    let ExecArgs {
        process,
        detach,
        pid_file,
        console_socket,
        tty,
        cwd,
        env,
        preserve_fds,
        id,
        command,
    } = args;
    let process = match process {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(CliError::io(format!("reading {}", path.display())))?;
            parse_process(&text, path)?
        }
        None => {
            let mut env_all = vec![format!("PATH={}", defaults::PATH)];
            env_all.extend(env.iter().cloned());
            oci_spec::runtime::ProcessBuilder::default()
                .args(command.clone())
                .env(env_all)
                .cwd(cwd.clone().unwrap_or_else(|| "/".into()))
                .terminal(*tty)
                .build()
                .map_err(CliError::ExecProcess)?
        }
    };
    let options = exec::ExecOptions {
        id,
        process,
        detach: *detach,
        pid_file: pid_file.as_deref(),
        console_socket: console_socket.as_deref(),
        preserve_fds: *preserve_fds,
    };
    exec::exec(store, &options)
}

fn list(store: &Store, format: &str, quiet: bool) {
    let records = store.list();
    if quiet {
        records.iter().for_each(|r| println!("{}", r.id));
    } else if format == "json" {
        let states: Vec<_> = records.iter().map(|r| r.oci_state(store)).collect();
        println!("{}", serde_json::to_string(&states).unwrap());
    } else {
        println!(
            "{:<20} {:<8} {:<10} {:<40} CREATED",
            "ID", "PID", "STATUS", "BUNDLE"
        );
        for r in &records {
            let status = r.status(store);
            let pid = if status == Status::Stopped { 0 } else { r.pid };
            println!(
                "{:<20} {:<8} {:<10} {:<40} {}",
                r.id,
                pid,
                status.as_str(),
                r.bundle.display(),
                r.created
            );
        }
    }
}

fn ps(store: &Store, id: &str, format: &str) -> Result<()> {
    let record = store.load(id)?;
    let pids = record
        .cgroup
        .as_deref()
        .map(cgroup::pids)
        .unwrap_or_default();
    if format == "json" {
        println!("{}", serde_json::to_string(&pids).unwrap());
    } else {
        println!("PID");
        pids.iter().for_each(|p| println!("{p}"));
    }
    Ok(())
}

/// `pause` (freeze) a running container, or `resume` (thaw) a paused one.
fn pause(store: &Store, id: &str, freeze: bool) -> Result<()> {
    let record = store.load(id)?;
    let status = record.status(store);
    let need = if freeze {
        Status::Running
    } else {
        Status::Paused
    };
    if status != need {
        return Err(CliError::WrongState {
            id: id.to_string(),
            status: status.as_str().into(),
            need: format!("it must be {}", need.as_str()),
        });
    }
    let cgroup = record
        .cgroup
        .as_deref()
        .ok_or_else(|| CliError::NoCgroup(id.to_string()))?;
    cgroup::freeze(cgroup, freeze)?;
    Ok(())
}

/// `update --resources FILE` (`-` or none: stdin).
fn update(store: &Store, id: &str, resources: Option<&str>) -> Result<()> {
    let record = store.load(id)?;
    let text = match resources {
        None | Some("-") => std::io::read_to_string(std::io::stdin())
            .map_err(CliError::io("reading resources from stdin"))?,
        Some(path) => {
            std::fs::read_to_string(path).map_err(CliError::io(format!("reading {path}")))?
        }
    };
    let resources = spec::parse_resources(&text)?;
    let cgroup = record
        .cgroup
        .as_deref()
        .ok_or_else(|| CliError::NoCgroup(id.to_string()))?;
    let limits = spec::limits_of(&resources);
    if let Some(unit) = &record.scope {
        let rt = container::async_runtime()?;
        let conn = container::system_bus(&rt)?;
        rt.block_on(cgroup::systemd::set_limits(&conn, unit, &limits))?;
    }
    cgroup::resources::apply(cgroup, &resources)?;
    Ok(())
}

fn sandbox_command(store: &Store, command: &SandboxCommand) -> Result<i32> {
    match command {
        SandboxCommand::Create {
            name,
            image,
            ssh_port,
        } => sandbox::create(store, name, image, *ssh_port)?,
        SandboxCommand::List => sandbox::list(store)?,
        SandboxCommand::Shell { name, command } => return sandbox::shell(store, name, command),
        SandboxCommand::Stop { name } => sandbox::stop(store, name)?,
        SandboxCommand::Start { name } => sandbox::start(store, name)?,
        SandboxCommand::Rm { name } => sandbox::remove(store, name)?,
    }
    Ok(0)
}

/// `gc`: see [`Command::Gc`]; of `store`'s containers, or everyone's.
fn gc(store: Option<&Store>) -> Result<i32> {
    let rt = container::async_runtime()?;
    let conn = container::system_bus(&rt)?;
    let root = store.map(keep::state_root);
    let (collected, failed) = keep::collect(&rt, &conn, root.as_deref())?;
    for gone in collected {
        println!(
            "freed {} (range {}): {} is gone",
            gone.id,
            gone.name,
            gone.anchor.display()
        );
    }
    for e in &failed {
        eprintln!("burrow gc: {e}");
    }
    Ok(i32::from(!failed.is_empty()))
}

/// `spec`: a config.json for a system container, never over an existing one.
fn write_spec(bundle: &Path) -> Result<()> {
    let path = bundle.join("config.json");
    if path.exists() {
        return Err(CliError::SpecExists(path));
    }
    std::fs::write(
        &path,
        serde_json::to_string_pretty(&defaults::spec()).unwrap(),
    )
    .map_err(CliError::io(format!("writing {}", path.display())))
}

/// `completion SHELL`. The script is built in memory first: clap_complete panics on a failed
/// write (a closed pipe), and a script cut short should be an error, not a panic.
fn write_completion(shell: clap_complete::Shell) -> Result<()> {
    use std::io::Write;
    let mut script = vec![];
    clap_complete::generate(shell, &mut Cli::command(), "burrow", &mut script);
    std::io::stdout()
        .write_all(&script)
        .map_err(CliError::io("writing the completion script"))
}

/// `man --dir DIR`: the pages come from the very definition the binary parses, so they never
/// drift from it; hidden subcommands (this one) get no page.
fn write_man_pages(dir: &Path) -> Result<()> {
    let what = || format!("writing man pages to {}", dir.display());
    std::fs::create_dir_all(dir).map_err(CliError::io(what()))?;
    clap_mangen::generate_to(Cli::command(), dir).map_err(CliError::io(what()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(args: &[&str]) -> Vec<String> {
        args.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn unknown_global_flags_are_dropped() {
        assert_eq!(
            tolerate_unknown_globals(v(&[
                "burrow",
                "--root",
                "/r",
                "--criu",
                "--log=/l",
                "--systemd-cgroup",
                "kill",
                "--all",
                "x",
                "9"
            ])),
            v(&[
                "burrow",
                "--root",
                "/r",
                "--log=/l",
                "--systemd-cgroup",
                "kill",
                "--all",
                "x",
                "9"
            ])
        );
        assert_eq!(
            tolerate_unknown_globals(v(&["burrow", "state", "x"])),
            v(&["burrow", "state", "x"])
        );
    }

    #[test]
    fn everything_after_execs_id_is_the_command() {
        let exec = |args: &[&str]| match Cli::try_parse_from(args).unwrap().command {
            Command::Exec(exec) => (exec.id, exec.tty, exec.command),
            other => panic!("{other:?}"),
        };
        assert_eq!(
            exec(&["burrow", "exec", "c1", "sh", "-c", "echo hi"]),
            ("c1".into(), false, v(&["sh", "-c", "echo hi"]))
        );
        assert_eq!(
            exec(&["burrow", "exec", "--tty", "c1", "ls", "--tty", "-l"]),
            ("c1".into(), true, v(&["ls", "--tty", "-l"]))
        );
    }

    #[test]
    fn every_subcommand_is_known_to_the_global_flag_filter() {
        let mut names: Vec<String> = Cli::command()
            .get_subcommands()
            .map(|c| c.get_name().to_string())
            .chain(["help".to_string()])
            .collect();
        names.sort();
        let mut listed: Vec<String> = SUBCOMMANDS.iter().map(|s| s.to_string()).collect();
        listed.sort();
        assert_eq!(names, listed);
    }

    #[test]
    fn bash_completion_knows_the_subcommands_and_flags() {
        let mut script = vec![];
        clap_complete::generate(
            clap_complete::Shell::Bash,
            &mut Cli::command(),
            "burrow",
            &mut script,
        );
        let script = String::from_utf8(script).unwrap();
        assert!(script.contains("exec"));
        assert!(script.contains("--systemd-cgroup"));
    }

    #[test]
    fn main_man_page_names_the_subcommands() {
        let mut page = vec![];
        clap_mangen::Man::new(Cli::command())
            .render(&mut page)
            .unwrap();
        let page = String::from_utf8(page).unwrap();
        assert!(page.contains(".TH burrow 1"));
        for sub in ["burrow\\-create", "burrow\\-exec", "burrow\\-completion"] {
            assert!(page.contains(sub), "{sub} in {page}");
        }
        assert!(!page.contains("burrow\\-man"));
    }

    #[test]
    fn signals_by_name_and_number() {
        assert_eq!(
            container::parse_signal("KILL").unwrap(),
            nix::sys::signal::Signal::SIGKILL
        );
        assert_eq!(
            container::parse_signal("SIGTERM").unwrap(),
            nix::sys::signal::Signal::SIGTERM
        );
        assert_eq!(
            container::parse_signal("9").unwrap(),
            nix::sys::signal::Signal::SIGKILL
        );
        assert!(container::parse_signal("SIGNOPE").is_err());
    }
}
