//! Test harness shared by Burrow's black-box tests and benchmarks.
//!
//! A [`Harness`] starts a private system bus (dbus-daemon with a `system`-type config that
//! includes Burrow's shipped bus policy and an activation directory pointing at the freshly
//! built helpers) and a real polkitd on it, and tears both down (with any helper they
//! activated) when dropped. It needs root: it installs the shipped polkit action file and
//! example rule, and creates two unprivileged users: [`ALICE`] in group `burrow` and [`BOB`]
//! in no Burrow group. `make test-clean` removes them again.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub mod cri;
pub mod node;
pub mod runtime;

pub const ALICE: &str = "burrow-alice";
pub const BOB: &str = "burrow-bob";
/// In group `burrow` and, by a test-only polkit rule, also granted extra devices.
pub const CAROL: &str = "burrow-carol";
/// The test-only polkit rule for [`CAROL`] (removed by `make test-clean`).
const CAROL_RULE: (&str, &str) = (
    "/etc/polkit-1/rules.d/60-burrow-test-carol.rules",
    "// Burrow's tests: burrow-carol may ask devd for extra devices.\n\
     polkit.addRule(function(action, subject) {\n\
     \x20   if (action.id == \"org.burrow.dev.extra\" && subject.user == \"burrow-carol\") {\n\
     \x20       return polkit.Result.YES;\n\
     \x20   }\n\
     });\n",
);
pub const GROUP: &str = "burrow";

/// The workspace root (where dbus-policy/ lives).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// Directory of the workspace's built binaries (`BURROW_BIN_DIR` overrides).
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("BURROW_BIN_DIR") {
        return dir.into();
    }
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().expect("exe dir");
    // Test executables live in target/<profile>/deps, binaries one level up.
    if dir.ends_with("deps") {
        dir.parent().unwrap().to_path_buf()
    } else {
        dir.to_path_buf()
    }
}

/// A built binary of the workspace; `cargo build --workspace` must have run.
pub fn bin(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.exists(),
        "{} not built; run `cargo build --workspace --bins` first",
        path.display()
    );
    path
}

/// Runs `cmd`, which must succeed (its stderr is the failure message).
pub fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A local user for tests.
#[derive(Debug, Clone, Copy)]
pub struct User {
    pub name: &'static str,
    pub uid: u32,
    pub gid: u32,
    pub groups: &'static [u32],
}

pub struct TestUsers {
    pub alice: User,
    pub bob: User,
    pub carol: User,
}

/// Creates the test users and group once per process (idempotent across runs).
pub fn test_users() -> &'static TestUsers {
    static USERS: OnceLock<TestUsers> = OnceLock::new();
    USERS.get_or_init(|| {
        let exists = |db: &str, key: &str| {
            Command::new("getent")
                .args([db, key])
                .output()
                .is_ok_and(|o| o.status.success())
        };
        if !exists("group", GROUP) {
            run(Command::new("groupadd").args(["--system", GROUP]));
        }
        if !exists("passwd", ALICE) {
            run(Command::new("useradd").args(["--create-home", "--groups", GROUP, ALICE]));
        }
        if !exists("passwd", BOB) {
            run(Command::new("useradd").args(["--create-home", BOB]));
        }
        if !exists("passwd", CAROL) {
            run(Command::new("useradd").args(["--create-home", "--groups", GROUP, CAROL]));
        }
        let lookup = |name: &str| {
            let user = nix::unistd::User::from_name(name)
                .unwrap()
                .expect("user exists");
            (user.uid.as_raw(), user.gid.as_raw())
        };
        let burrow_gid = nix::unistd::Group::from_name(GROUP)
            .unwrap()
            .expect("group")
            .gid
            .as_raw();
        let (alice_uid, alice_gid) = lookup(ALICE);
        let (bob_uid, bob_gid) = lookup(BOB);
        let (carol_uid, carol_gid) = lookup(CAROL);
        let alice_groups: &'static [u32] =
            Box::leak(vec![alice_gid, burrow_gid].into_boxed_slice());
        let bob_groups: &'static [u32] = Box::leak(vec![bob_gid].into_boxed_slice());
        let carol_groups: &'static [u32] =
            Box::leak(vec![carol_gid, burrow_gid].into_boxed_slice());
        TestUsers {
            alice: User {
                name: ALICE,
                uid: alice_uid,
                gid: alice_gid,
                groups: alice_groups,
            },
            bob: User {
                name: BOB,
                uid: bob_uid,
                gid: bob_gid,
                groups: bob_groups,
            },
            carol: User {
                name: CAROL,
                uid: carol_uid,
                gid: carol_gid,
                groups: carol_groups,
            },
        }
    })
}

/// Starts lxcfs where it does not run yet, as `make run` and the node installer do: the
/// containers' /proc then tells their own limits (docs/runtime.md).
fn start_lxcfs() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        run(&mut Command::new(
            workspace_root().join("scripts/start-lxcfs"),
        ));
    });
}

/// Puts the shipped polkit action file and example rule where polkitd reads them.
fn install_polkit_files() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        let policy = workspace_root().join("dbus-policy");
        for (src, dst) in [
            (
                "org.burrow.policy",
                "/usr/share/polkit-1/actions/org.burrow.policy",
            ),
            ("50-burrow.rules", "/etc/polkit-1/rules.d/50-burrow.rules"),
        ] {
            let content = fs::read(policy.join(src)).expect("read shipped polkit file");
            if fs::read(dst).ok().as_deref() != Some(&content[..]) {
                fs::create_dir_all(Path::new(dst).parent().unwrap()).unwrap();
                fs::write(dst, content).unwrap();
            }
        }
        let (rule, content) = CAROL_RULE;
        if fs::read_to_string(rule).ok().as_deref() != Some(content) {
            fs::write(rule, content).unwrap();
        }
    });
}

/// Copies a binary to a world-executable place, so the test users can run it whatever the
/// permissions of the checkout.
pub fn shared_bin(name: &str) -> PathBuf {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _serialized = LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let dir = Path::new("/tmp/burrow-test-bin");
    fs::create_dir_all(dir).unwrap();
    fs::set_permissions(dir, fs::Permissions::from_mode(0o755)).unwrap();
    let src = bin(name);
    let dst = dir.join(format!("{name}-{}", std::process::id()));
    if !dst.exists() {
        // A hard link where possible: a copy is written through an fd that a parallel test's
        // fork may still hold when the copy is exec'd (ETXTBSY).
        let tmp = dst.with_extension("tmp");
        let _ = fs::remove_file(&tmp);
        if fs::hard_link(&src, &tmp).is_err() {
            fs::copy(&src, &tmp).unwrap();
        }
        fs::set_permissions(&tmp, fs::Permissions::from_mode(0o755)).unwrap();
        fs::rename(&tmp, &dst).unwrap();
    }
    dst
}

/// How the harness runs the helpers when the bus activates them.
#[derive(Debug, Clone, Default)]
pub struct HarnessOptions {
    /// Idle timeout of every helper (0: never exit).
    pub idle_timeout_s: u64,
    pub idmapd_args: Vec<String>,
    pub devd_args: Vec<String>,
}

/// The helpers: bus name, binary, state directory argument.
const HELPERS: [(&str, &str); 3] = [
    ("org.burrow.IdMap1", "burrow-idmapd"),
    ("org.burrow.Dev1", "burrow-devd"),
    ("org.burrow.Mount1", "burrow-mountd"),
];

/// mountd's staging directory below a harness's directory.
const MOUNTD_STAGING: &str = "run-burrow/mountd-staging";

/// Ranges per harness pool window.
const WINDOW: u32 = 2048 * 65536;

/// The pool of the `n`-th harness of this process: windows 1..=12 of 2048 ranges each, so
/// harnesses running in parallel never hand out the same range. (In production one idmapd
/// owns the pool; parallel test idmapds sharing one would let two live namespaces map the same
/// range, which idmapd's liveness check rightly treats as "in use".) Window 0 (from 524288)
/// and 13 are left to tests that set their own pool.
fn default_pool(n: u32) -> (u32, u32) {
    let start = 524288 + (1 + n % 12) * WINDOW;
    (start, start + (WINDOW - 1))
}

/// The first ID of pool window `w` (see `default_pool`), for tests that set their own pool.
pub fn pool_window(w: u32) -> u32 {
    524288 + w * WINDOW
}

/// A private system bus with polkitd and Burrow's helpers activatable on it.
pub struct Harness {
    pub dir: PathBuf,
    pub address: String,
    dbus: Child,
    polkitd: Child,
    /// Process groups of buses [`Harness::restart_bus`] replaced.
    old_buses: Vec<i32>,
}

/// A `dbus-daemon` on `dir`'s bus.conf, in a process group of its own that the helpers it
/// activates share; their logs go to dir/dbus.log.
fn start_dbus(dir: &Path, address: &str) -> Child {
    let socket = dir.join("system_bus_socket");
    let dbus_log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("dbus.log"))
        .unwrap();
    let dbus = Command::new("dbus-daemon")
        .arg(format!("--config-file={}", dir.join("bus.conf").display()))
        .arg("--nofork")
        .env("DBUS_SYSTEM_BUS_ADDRESS", address)
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
        )
        .stdout(Stdio::null())
        .stderr(dbus_log)
        .process_group(0)
        .spawn()
        .expect("start dbus-daemon (apt-get install dbus-daemon)");
    wait_for("bus socket", || socket.exists());
    dbus
}

fn start_polkitd(dir: &Path, address: &str) -> Child {
    let polkit_log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("polkitd.log"))
        .unwrap();
    Command::new("/usr/lib/polkit-1/polkitd")
        .arg("--no-debug")
        .env("DBUS_SYSTEM_BUS_ADDRESS", address)
        .stdout(Stdio::null())
        .stderr(polkit_log)
        .process_group(0)
        .spawn()
        .expect("start polkitd (apt-get install polkitd)")
}

impl Harness {
    pub fn start(options: HarnessOptions) -> Harness {
        assert!(
            nix::unistd::geteuid().is_root(),
            "the Burrow test harness must run as root"
        );
        test_users();
        install_polkit_files();
        start_lxcfs();
        static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let dir = PathBuf::from(format!("/tmp/burrow-harness-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        for sub in ["services", "policy", "state"] {
            fs::create_dir_all(dir.join(sub)).unwrap();
        }
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        fs::copy(
            workspace_root().join("dbus-policy/org.burrow.conf"),
            dir.join("policy/org.burrow.conf"),
        )
        .unwrap();

        for (bus_name, binary) in HELPERS {
            let mut exec = vec![
                bin(binary).display().to_string(),
                "--idle-timeout".into(),
                options.idle_timeout_s.to_string(),
            ];
            match binary {
                "burrow-idmapd" => {
                    exec.extend([
                        "--state-dir".into(),
                        dir.join("state/idmap").display().to_string(),
                    ]);
                    if !options.idmapd_args.iter().any(|a| a == "--pool-start") {
                        let (start, end) = default_pool(n);
                        exec.extend([
                            "--pool-start".into(),
                            start.to_string(),
                            "--pool-end".into(),
                            end.to_string(),
                        ]);
                    }
                    exec.extend(options.idmapd_args.iter().cloned());
                }
                "burrow-devd" => exec.extend(options.devd_args.iter().cloned()),
                // As in production (/run/burrow/mountd-staging), the staging directory's
                // parent is made by mountd and open to root only.
                _ => exec.extend([
                    "--staging-dir".into(),
                    dir.join(MOUNTD_STAGING).display().to_string(),
                ]),
            }
            fs::write(
                dir.join(format!("services/{bus_name}.service")),
                format!(
                    "[D-BUS Service]\nName={bus_name}\nExec={}\nUser=root\n",
                    exec.join(" ")
                ),
            )
            .unwrap();
        }

        let socket = dir.join("system_bus_socket");
        fs::write(dir.join("bus.conf"), bus_config(&socket, &dir)).unwrap();
        let address = format!("unix:path={}", socket.display());
        let dbus = start_dbus(&dir, &address);
        let polkitd = start_polkitd(&dir, &address);
        let harness = Harness {
            dir,
            address,
            dbus,
            polkitd,
            old_buses: vec![],
        };
        wait_for("polkitd on the bus", || {
            harness.name_has_owner("org.freedesktop.PolicyKit1")
        });
        harness
    }

    /// Restarts the system bus as an admin would: the bus exits (SIGTERM), and a new one starts
    /// on the same socket with the same configuration, with a new polkitd on it. Helpers the
    /// old bus activated are left alone: they must leave by themselves.
    pub fn restart_bus(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.dbus.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = self.dbus.wait();
        let _ = self.polkitd.kill();
        let _ = self.polkitd.wait();
        // The old bus's process group, with whatever helpers still linger in it.
        self.old_buses.push(self.dbus.id() as i32);
        let _ = fs::remove_file(self.dir.join("system_bus_socket"));
        self.dbus = start_dbus(&self.dir, &self.address);
        self.polkitd = start_polkitd(&self.dir, &self.address);
        wait_for("polkitd on the new bus", || {
            self.name_has_owner("org.freedesktop.PolicyKit1")
        });
    }

    /// Replaces polkitd on the same bus, as a package upgrade would; returns once the new one
    /// owns its name.
    pub fn restart_polkitd(&mut self) {
        let old = self.name_owner("org.freedesktop.PolicyKit1");
        let _ = self.polkitd.kill();
        let _ = self.polkitd.wait();
        self.polkitd = start_polkitd(&self.dir, &self.address);
        wait_for("the new polkitd on the bus", || {
            let owner = self.name_owner("org.freedesktop.PolicyKit1");
            owner.is_some() && owner != old
        });
    }

    /// The unique name that owns `name` on the bus, if any.
    pub fn name_owner(&self, name: &str) -> Option<String> {
        let out = self.busctl(&[
            "call",
            "org.freedesktop.DBus",
            "/org/freedesktop/DBus",
            "org.freedesktop.DBus",
            "GetNameOwner",
            "s",
            name,
        ]);
        let reply = String::from_utf8_lossy(&out.stdout);
        // `s ":1.7"`
        let owner = reply.trim().strip_prefix("s ")?.trim_matches('"');
        (out.status.success() && !owner.is_empty()).then(|| owner.to_string())
    }

    /// PIDs of the processes running `binary` in the process group of `bus` (a bus's pid).
    pub fn helper_pids_of_bus(&self, binary: &str, bus: i32) -> Vec<i32> {
        let needle = bin(binary).display().to_string();
        pids_in_group(bus, |pid| {
            // A zombie has an empty command line: it is gone but for its exit status.
            let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            cmdline.starts_with(needle.as_bytes())
        })
    }

    /// How many zombies are left in the running bus's process group: killed helpers' workers
    /// not reaped yet by their new parent.
    pub fn zombies_of_bus(&self) -> usize {
        pids_in_group(self.bus_pid(), |pid| {
            state_and_parent(pid).is_some_and(|(state, _)| state == 'Z')
        })
        .len()
    }

    /// The pid of the running bus (its helpers share it as their process group).
    pub fn bus_pid(&self) -> i32 {
        self.dbus.id() as i32
    }

    /// The helper owning `bus_name`, started by hand with the command line the bus would
    /// activate it with.
    pub fn helper_command(&self, bus_name: &str) -> Command {
        let service =
            fs::read_to_string(self.dir.join(format!("services/{bus_name}.service"))).unwrap();
        let exec = service
            .lines()
            .find_map(|l| l.strip_prefix("Exec="))
            .expect("Exec= line");
        let mut argv = exec.split(' ');
        let mut cmd = self.command(argv.next().unwrap());
        cmd.args(argv);
        cmd
    }

    /// A command with this bus as its system bus.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new(program);
        cmd.env("DBUS_SYSTEM_BUS_ADDRESS", &self.address);
        cmd
    }

    /// The test client, run as `user` (None: root).
    pub fn client(&self, user: Option<User>) -> Command {
        self.as_user(shared_bin("burrow-test-client"), user)
    }

    /// What `client` (from [`Harness::client`], with its arguments) printed, one JSON value per
    /// line; it must succeed (its stderr and the helpers' log otherwise).
    pub fn client_lines(&self, mut client: Command) -> Vec<serde_json::Value> {
        let out = client.output().unwrap();
        assert!(
            out.status.success(),
            "client: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        json_lines(&out.stdout)
    }

    /// `program` (on this bus) as `user` with exactly its groups (None: root).
    pub fn as_user(&self, program: impl AsRef<std::ffi::OsStr>, user: Option<User>) -> Command {
        let mut cmd = self.command(program);
        if let Some(user) = user {
            cmd.env("HOME", "/").current_dir("/");
            let groups: Vec<libc::gid_t> = user.groups.to_vec();
            // SAFETY: only raw syscalls between fork and exec.
            unsafe {
                cmd.pre_exec(move || {
                    if libc::setgroups(groups.len(), groups.as_ptr()) != 0
                        || libc::setgid(user.gid) != 0
                        || libc::setuid(user.uid) != 0
                    {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        cmd
    }

    /// `busctl --system ARGS` against this bus.
    pub fn busctl(&self, args: &[&str]) -> Output {
        self.command("busctl")
            .arg("--system")
            .args(args)
            .output()
            .expect("run busctl")
    }

    pub fn name_has_owner(&self, name: &str) -> bool {
        self.name_owner(name).is_some()
    }

    /// PIDs of the idmapd processes this harness's bus activated.
    pub fn idmapd_pids(&self) -> Vec<i32> {
        self.helper_pids("burrow-idmapd")
    }

    /// PIDs of the processes running `binary` that this harness's bus activated (they share
    /// the bus's process group, also once re-parented to init).
    pub fn helper_pids(&self, binary: &str) -> Vec<i32> {
        self.helper_pids_of_bus(binary, self.bus_pid())
    }

    /// SIGKILLs the running idmapd and waits until that process is gone (a call may already
    /// have activated a new one).
    pub fn kill_idmapd(&self) {
        let killed = self.idmapd_pids();
        for pid in &killed {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(*pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        wait_for("killed idmapd gone", || {
            !self.idmapd_pids().iter().any(|p| killed.contains(p))
        });
    }

    /// mountd's staging directory (made by mountd, with its parent, open to root only).
    pub fn mountd_staging(&self) -> PathBuf {
        self.dir.join(MOUNTD_STAGING)
    }

    pub fn idmap_state_dir(&self) -> PathBuf {
        self.dir.join("state/idmap")
    }

    /// The JSON records idmapd has persisted.
    pub fn persisted_records(&self) -> Vec<serde_json::Value> {
        let Ok(entries) = fs::read_dir(self.idmap_state_dir()) else {
            return vec![];
        };
        entries
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
            .map(|e| serde_json::from_slice(&fs::read(e.path()).unwrap()).unwrap())
            .collect()
    }

    /// The state (`held`, `draining`, `parked`) of the range whose name ends with `suffix`
    /// (a container's id), as idmapd persisted it; None when it has no record.
    pub fn range_state(&self, suffix: &str) -> Option<String> {
        self.persisted_records()
            .into_iter()
            .find(|r| r["name"].as_str().is_some_and(|n| n.ends_with(suffix)))
            .and_then(|r| r["state"].as_str().map(str::to_string))
    }

    /// How many ranges idmapd has out (held and draining), from its `InUse` property.
    pub fn ranges_in_use(&self) -> u64 {
        let out = self.client(None).arg("props").output().unwrap();
        json_lines(&out.stdout)[0]["in_use"].as_u64().unwrap()
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("dbus.log")).unwrap_or_default()
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        // The bus and every helper it activated share one process group (one per bus started).
        for bus in self
            .old_buses
            .iter()
            .copied()
            .chain([self.dbus.id() as i32])
        {
            let group = nix::unistd::Pid::from_raw(bus);
            let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
        }
        for child in [&mut self.polkitd, &mut self.dbus] {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::env::var_os("BURROW_KEEP_HARNESS").is_none() {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

fn bus_config(socket: &Path, dir: &Path) -> String {
    format!(
        r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path={socket}</listen>
  <auth>EXTERNAL</auth>
  <servicedir>{dir}/services</servicedir>
  <policy context="default">
    <allow user="*"/>
    <deny own="*"/>
    <deny send_type="method_call"/>
    <allow send_type="signal"/>
    <allow send_requested_reply="true" send_type="method_return"/>
    <allow send_requested_reply="true" send_type="error"/>
    <allow receive_type="method_call"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
    <allow receive_type="signal"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Introspectable"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Properties"/>
    <deny send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus" send_member="UpdateActivationEnvironment"/>
  </policy>
  <includedir>/usr/share/dbus-1/system.d</includedir>
  <includedir>{dir}/policy</includedir>
  <limit name="max_completed_connections">4096</limit>
  <limit name="max_connections_per_user">4096</limit>
  <limit name="max_pending_service_starts">4096</limit>
  <limit name="max_replies_per_connection">4096</limit>
</busconfig>
"#,
        socket = socket.display(),
        dir = dir.display()
    )
}

/// Polls `check` every 20 ms for up to 20 s.
/// A user namespace of root's (held by a `sleep` in it), to hand to a user's client as fd 3:
/// someone else's namespace, which every helper must refuse.
pub struct RootsUserns {
    holder: Child,
    file: fs::File,
}

impl RootsUserns {
    pub fn new() -> Self {
        let holder = Command::new("unshare")
            .args(["--user", "sleep", "120"])
            .spawn()
            .unwrap();
        let own = fs::read_link("/proc/self/ns/user").unwrap();
        wait_for("root's userns", || {
            fs::read_link(format!("/proc/{}/ns/user", holder.id())).is_ok_and(|l| l != own)
        });
        let file = fs::File::open(format!("/proc/{}/ns/user", holder.id())).unwrap();
        RootsUserns { holder, file }
    }

    /// The test client's answer to `args` (which use `--fd-kind inherited`), run as `user`
    /// with this namespace as its fd 3.
    pub fn hand_to(&self, h: &Harness, user: Option<User>, args: &[&str]) -> serde_json::Value {
        let mut cmd = h.client(user);
        cmd.args(args);
        self.pass_as_fd3(&mut cmd);
        h.client_lines(cmd).remove(0)
    }

    /// Makes `cmd` inherit the namespace as its fd 3.
    fn pass_as_fd3(&self, cmd: &mut Command) {
        pass_as_fd3(cmd, &self.file);
    }
}

/// Makes `cmd` inherit `file` as its fd 3 (for the test client's `--fd-kind inherited`): an
/// object the caller could not open itself, handed over as if it had got it somehow.
pub fn pass_as_fd3(cmd: &mut Command, file: &fs::File) {
    use std::os::fd::AsRawFd;
    let raw = file.as_raw_fd();
    // SAFETY: dup2 and fcntl between fork and exec, on an fd that outlives the spawn.
    unsafe {
        cmd.pre_exec(move || {
            // dup2 onto itself would keep close-on-exec, so clear the flag explicitly.
            if libc::dup2(raw, 3) < 0 || libc::fcntl(3, libc::F_SETFD, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

impl Default for RootsUserns {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for RootsUserns {
    fn drop(&mut self) {
        let _ = self.holder.kill();
        let _ = self.holder.wait();
    }
}

/// A container the test client builds by hand from the helpers (BuildRoot with `plan`'s extra
/// entries, see `burrow-test-client container --help`), running `script` in `rootfs`; the
/// client's JSON line (`ok`, `exit`, `output`, or the error).
pub fn built_container(
    h: &Harness,
    user: Option<User>,
    rootfs: &Path,
    script: &str,
    plan: serde_json::Value,
) -> serde_json::Value {
    let mut client = h.client(user);
    client.args([
        "container",
        "--rootfs",
        &rootfs.display().to_string(),
        "--script",
        script,
        "--plan",
        &plan.to_string(),
    ]);
    let mut lines = h.client_lines(client);
    assert_eq!(lines.len(), 1, "{lines:?}");
    lines.remove(0)
}

/// The slots in root's data directory (`/var/lib/burrow/<range name>`) of ranges whose names
/// end with `suffix` (a container id, which the state root's hash precedes).
pub fn data_slots(suffix: &str) -> Vec<String> {
    let mut slots: Vec<String> = std::fs::read_dir("/var/lib/burrow")
        .map(|dir| {
            dir.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(suffix))
                .collect()
        })
        .unwrap_or_default();
    slots.sort();
    slots
}

pub fn wait_for(what: &str, mut check: impl FnMut() -> bool) {
    let start = Instant::now();
    while !check() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `/proc/PID/stat`'s state and parent pid.
pub fn state_and_parent(pid: i32) -> Option<(char, i32)> {
    use burrow_sys::proc_stat::field;
    let stat = fs::read(format!("/proc/{pid}/stat")).ok()?;
    let state = field(&stat, 3)?.chars().next()?;
    Some((state, field(&stat, 4)?.parse().ok()?))
}

/// The processes of process group `group` that `wanted` accepts.
fn pids_in_group(group: i32, wanted: impl Fn(i32) -> bool) -> Vec<i32> {
    fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            wanted(*pid)
                && nix::unistd::getpgid(Some(nix::unistd::Pid::from_raw(*pid)))
                    .is_ok_and(|g| g.as_raw() == group)
        })
        .collect()
}

/// One JSON line the test client printed.
pub fn json_lines(out: &[u8]) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(out)
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad client output {l:?}: {e}")))
        .collect()
}

/// The Debian bookworm rootfs with systemd and docker.io, a stock image (nothing masked;
/// `tests/fixtures/debian-rootfs.sh system`), built once per machine under /var/cache/burrow; the first build takes minutes.
pub fn debian_system_rootfs() -> PathBuf {
    debian_rootfs("system")
}

/// The system flavour's packages on Debian 13, trixie (`tests/fixtures/debian-rootfs.sh
/// system-trixie`): systemd 257, which wants a cgroup2-only view of its cgroups.
pub fn debian_trixie_system_rootfs() -> PathBuf {
    debian_rootfs("system-trixie")
}

/// The system rootfs with polkitd (and logind) added, for the disposable systemd node
/// ([`node::Node`]), where users in group `burrow` run containers too.
pub fn debian_node_rootfs() -> PathBuf {
    debian_rootfs("node")
}

/// `tests/fixtures/debian-rootfs.sh FLAVOUR`: the cached tree, built once per machine.
fn debian_rootfs(flavour: &str) -> PathBuf {
    // One build at a time: the node's is a copy of the system tree, which it may build first.
    static BUILD: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = BUILD.lock().unwrap_or_else(|e| e.into_inner());
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/debian-rootfs.sh");
    let out = Command::new("bash")
        .arg(script)
        .arg(flavour)
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "building the Debian {flavour} rootfs failed"
    );
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

/// A minimal root filesystem: busybox-static and its applet links, plus the usual empty
/// directories, owned by `owner` (root if None). Needs `busybox-static` on the host.
pub fn busybox_rootfs(dir: &Path, owner: Option<User>) -> PathBuf {
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .map(Path::new)
        .find(|p| p.exists())
        .expect("busybox not found (apt-get install busybox-static)");
    let _ = fs::remove_dir_all(dir);
    for sub in ["bin", "etc", "root", "proc", "sys", "dev", "tmp", "run"] {
        fs::create_dir_all(dir.join(sub)).unwrap();
    }
    fs::copy(busybox, dir.join("bin/busybox")).unwrap();
    // The host's copy: exec'ing the fresh one can fail with ETXTBSY while a parallel test's
    // fork still holds the fd it was written through.
    let out = Command::new(busybox).arg("--list").output().unwrap();
    for applet in String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|a| *a != "busybox")
    {
        let _ = std::os::unix::fs::symlink("busybox", dir.join("bin").join(applet));
    }
    fs::write(dir.join("etc/hostname"), "burrow-test\n").unwrap();
    if let Some(user) = owner {
        run(Command::new("chown")
            .args(["-R", "-h", &format!("{}:{}", user.uid, user.gid)])
            .arg(dir));
    }
    fs::set_permissions(dir, fs::Permissions::from_mode(0o755)).unwrap();
    dir.to_path_buf()
}

/// The directory name below which tests mount filesystems of their own in the host's mount
/// namespace (left out of [`host_mounts`], as tests run in parallel).
pub const SCRATCH_FILESYSTEMS: &str = "/scratch-filesystems/";

/// The host's mount table, to check that nothing leaked into it (without the overlays and
/// scratch filesystems that tests mount on purpose, possibly in parallel).
pub fn host_mounts() -> Vec<burrow_sys::mountinfo::Mount> {
    burrow_sys::mountinfo::own()
        .unwrap()
        .into_iter()
        .filter(|m| {
            !m.mount_point.ends_with("/ovl/merged") && !m.mount_point.contains(SCRATCH_FILESYSTEMS)
        })
        .collect()
}

/// The file-backed resident memory of process `pid` (`RssFile` of /proc/PID/status), in KiB.
pub fn file_pages_kb(pid: i32) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    key_values(&status.replace(":\t", "="))["RssFile"]
        .trim_end_matches(" kB")
        .trim()
        .parse()
        .unwrap()
}

/// `key=value` lines of a container script's output.
pub fn key_values(output: &str) -> std::collections::BTreeMap<String, String> {
    output
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.trim().to_string()))
        .collect()
}

/// The pid of the first child of `parent` (e.g. the process `unshare --fork` started).
pub fn wait_for_child(parent: u32) -> u32 {
    let mut child = None;
    wait_for("child process", || {
        child = fs::read_to_string(format!("/proc/{parent}/task/{parent}/children"))
            .ok()
            .and_then(|c| c.split_whitespace().next().and_then(|p| p.parse().ok()));
        child.is_some()
    });
    // Let it finish exec'ing into its namespaces.
    std::thread::sleep(Duration::from_millis(100));
    child.unwrap()
}

/// A dockerd of the test's own (own data-root, exec-root, socket and containerd namespace),
/// with `burrow` registered as runtime `burrow` through a wrapper that points it at the
/// harness's bus. Needs docker.io (dockerd, containerd, runc) installed.
pub struct Docker {
    pub dir: PathBuf,
    socket: String,
    dockerd: Child,
}

impl Docker {
    pub fn start(h: &Harness) -> Docker {
        let dir = h.dir.join("d");
        fs::create_dir_all(&dir).unwrap();
        let wrapper = burrow_wrapper(h, &dir);
        let socket = dir.join("docker.sock");
        let config = serde_json::json!({
            "data-root": dir.join("data"),
            "exec-root": dir.join("x"),
            "pidfile": dir.join("docker.pid"),
            "hosts": [format!("unix://{}", socket.display())],
            "runtimes": {"burrow": {"path": wrapper}},
            "storage-driver": "overlay2",
            "containerd-namespace": format!("burrow-test-{}", std::process::id()),
            "containerd-plugins-namespace": format!("burrow-test-plugins-{}", std::process::id()),
        });
        fs::write(dir.join("daemon.json"), config.to_string()).unwrap();
        let log = fs::File::create(dir.join("dockerd.log")).unwrap();
        let dockerd = Command::new("dockerd")
            .arg("--config-file")
            .arg(dir.join("daemon.json"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .process_group(0)
            .spawn()
            .expect("start dockerd (apt-get install docker.io)");
        let docker = Docker {
            dir,
            socket: format!("unix://{}", socket.display()),
            dockerd,
        };
        wait_for("dockerd", || docker.run(&["version"]).status.success());
        docker
    }

    pub fn command(&self) -> Command {
        let mut cmd = Command::new("docker");
        cmd.env("DOCKER_HOST", &self.socket);
        cmd
    }

    /// The daemon's address, for `DOCKER_HOST`.
    pub fn host(&self) -> &str {
        &self.socket
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.command()
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// Output of a docker command that must succeed.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "docker {args:?}: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log_tail()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Imports `rootfs` as image `name`.
    pub fn import(&self, rootfs: &Path, name: &str) {
        let mut tar = Command::new("tar")
            .arg("-C")
            .arg(rootfs)
            .args(["-c", "."])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let out = self
            .command()
            .args(["import", "-", name])
            .stdin(tar.stdout.take().unwrap())
            .output()
            .unwrap();
        assert!(tar.wait().unwrap().success(), "tar of {}", rootfs.display());
        assert!(
            out.status.success(),
            "docker import: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn log_tail(&self) -> String {
        let text = fs::read_to_string(self.dir.join("dockerd.log")).unwrap_or_default();
        text.lines()
            .rev()
            .take(15)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The wrapper that runs `burrow` against the harness's bus (the runtime's path).
    pub fn runtime_wrapper(&self) -> PathBuf {
        self.dir.join("burrow-runtime")
    }

    /// `ctr` against the containerd that dockerd started, in namespace `burrow-ctr`.
    pub fn ctr(&self, args: &[&str]) -> Output {
        Command::new("ctr")
            .arg("-a")
            .arg(self.dir.join("x/containerd/containerd.sock"))
            .args(["-n", "burrow-ctr"])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// Where the shim keeps burrow's state (`--root`): Docker 20.10's runc shim puts every
    /// runtime's below `runtime-runc`, in a directory named after the containerd namespace.
    pub fn runtime_root(&self) -> PathBuf {
        self.dir
            .join("x/runtime-runc")
            .join(format!("burrow-test-{}", std::process::id()))
    }

    /// `burrow gc` of this dockerd's containers: frees what removed ones kept (each
    /// create does it too). Its stdout, one line per container freed.
    pub fn gc(&self) -> String {
        let out = Command::new(self.runtime_wrapper())
            .arg("--root")
            .arg(self.runtime_root())
            .arg("gc")
            .output()
            .unwrap();
        assert!(out.status.success(), "burrow gc: {}", all_output(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Docker {
    fn drop(&mut self) {
        let ids = self.run(&["ps", "-aq"]);
        for id in String::from_utf8_lossy(&ids.stdout).split_whitespace() {
            let _ = self.run(&["rm", "-f", id]);
        }
        // What the removed containers kept (their slots in /var/lib/burrow, their ranges).
        let _ = Command::new(self.runtime_wrapper())
            .arg("--root")
            .arg(self.runtime_root())
            .arg("gc")
            .output();
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.dockerd.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline && self.dockerd.try_wait().ok().flatten().is_none() {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(self.dockerd.id() as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
        let _ = self.dockerd.wait();
        // dockerd leaves mounts below its roots (e.g. exec-root/netns/default): detach them all.
        let prefix = format!("{}/", self.dir.display());
        let mut points: Vec<String> = burrow_sys::mountinfo::own()
            .unwrap_or_default()
            .into_iter()
            .map(|m| m.mount_point)
            .filter(|p| p.starts_with(&prefix))
            .collect();
        points.sort_by_key(|p| std::cmp::Reverse(p.len()));
        for point in points {
            let _ = nix::mount::umount2(point.as_str(), nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

/// Asserts that a client result is the named D-Bus error, with a message for a person.
/// [`assert_error`], and the message says `fragment`.
pub fn assert_error_says(v: &serde_json::Value, name: &str, fragment: &str) {
    assert_error(v, name);
    assert!(
        v["message"].as_str().unwrap().contains(fragment),
        "expected {fragment:?} in {v}"
    );
}

/// How many fds process `pid` holds open.
pub fn fd_count(pid: i32) -> usize {
    fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count()
}

pub fn assert_error(v: &serde_json::Value, name: &str) {
    assert_eq!(v["ok"], false, "expected {name}, got success: {v}");
    assert_eq!(v["error"], name, "{v}");
    assert!(
        !v["message"].as_str().unwrap_or("").is_empty(),
        "error without message: {v}"
    );
}

/// `burrow` on a harness's bus, run as root or as a test user the way that caller would: with a
/// state root of its own (root) or an `XDG_RUNTIME_DIR` and home of the user's (a user).
pub struct Burrow<'a> {
    pub h: &'a Harness,
    pub user: Option<User>,
    /// The caller's home: state, bundles and the user's runtime directory live below it.
    pub home: PathBuf,
}

impl<'a> Burrow<'a> {
    /// A caller with a fresh home `name` below the harness's directory, owned by `user`.
    pub fn new(h: &'a Harness, user: Option<User>, name: &str) -> Self {
        let home = h.dir.join(name);
        fs::create_dir_all(home.join("run")).unwrap();
        for dir in [home.clone(), home.join("run")] {
            if let Some(user) = user {
                std::os::unix::fs::chown(&dir, Some(user.uid), Some(user.gid)).unwrap();
            }
            fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).unwrap();
        }
        Burrow { h, user, home }
    }

    /// `burrow ARGS` as this caller (stdin empty).
    pub fn command(&self, args: &[&str]) -> Command {
        self.command_through(&[], args)
    }

    pub fn output(&self, args: &[&str]) -> Output {
        self.command(args).output().unwrap()
    }

    /// A bundle `name` in this caller's home around `rootfs` (made by `make_rootfs` in the
    /// bundle's `rootfs` and then given to the caller), running `args`.
    pub fn bundle<T>(
        &self,
        name: &str,
        args: &[&str],
        make_rootfs: impl FnOnce(&Path) -> T,
    ) -> PathBuf {
        self.edited_bundle(name, args, make_rootfs, |_| {})
    }

    /// [`Self::bundle`] with its config.json changed by `edit` first.
    pub fn edited_bundle<T>(
        &self,
        name: &str,
        args: &[&str],
        make_rootfs: impl FnOnce(&Path) -> T,
        edit: impl FnOnce(&mut serde_json::Value),
    ) -> PathBuf {
        let dir = self.home.join(name);
        fs::create_dir_all(&dir).unwrap();
        make_rootfs(&dir.join("rootfs"));
        write_spec(&dir, args, edit);
        if let Some(user) = self.user {
            run(Command::new("chown")
                .args(["-R", "-h", &format!("{}:{}", user.uid, user.gid)])
                .arg(&dir));
        }
        dir
    }

    /// `burrow run` of `bundle` as container `id`: its output (stdout and stderr together, as
    /// the container wrote them) and exit status.
    pub fn run_bundle(&self, bundle: &Path, id: &str) -> (String, std::process::ExitStatus) {
        let out = self
            .command(&["run", "--bundle", &bundle.display().to_string(), id])
            .output()
            .unwrap();
        (all_output(&out), out.status)
    }
}

/// A loop device over a 1 MiB file of a known pattern: a host block device that a hostile image
/// can name with a device node of its own. Detached when dropped.
pub struct LoopDevice {
    pub backing: PathBuf,
    pub device: PathBuf,
    pub major: u32,
    pub minor: u32,
}

impl LoopDevice {
    pub const PATTERN: u8 = 0x5a;

    pub fn new(dir: &Path) -> Self {
        let backing = dir.join("disk.img");
        fs::write(&backing, vec![Self::PATTERN; 1 << 20]).unwrap();
        let out = run(Command::new("losetup")
            .args(["--find", "--show"])
            .arg(&backing));
        let device = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        let rdev = std::os::unix::fs::MetadataExt::rdev(&fs::metadata(&device).unwrap());
        LoopDevice {
            backing,
            device,
            major: nix::sys::stat::major(rdev) as u32,
            minor: nix::sys::stat::minor(rdev) as u32,
        }
    }

    /// Whether every byte of the backing file still holds the pattern.
    pub fn untouched(&self) -> bool {
        let _ = Command::new("blockdev")
            .arg("--flushbufs")
            .arg(&self.device)
            .status();
        fs::read(&self.backing)
            .unwrap()
            .iter()
            .all(|b| *b == Self::PATTERN)
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.device).status();
    }
}

/// Copies `binary` and the shared libraries it needs (as `ldd` lists them) into `rootfs`, at
/// the same paths; returns its path inside.
pub fn install_with_libraries(binary: &Path, rootfs: &Path, inside: &str) -> String {
    let ldd = Command::new("ldd").arg(binary).output().unwrap();
    for line in String::from_utf8_lossy(&ldd.stdout).lines() {
        let library = match line.split_once("=>") {
            Some((_, right)) => right.split_whitespace().next(),
            None => line
                .split_whitespace()
                .next()
                .filter(|p| p.starts_with('/')),
        };
        let Some(library) = library.filter(|l| l.starts_with('/')) else {
            continue;
        };
        let target = rootfs.join(library.trim_start_matches('/'));
        fs::create_dir_all(target.parent().unwrap()).unwrap();
        fs::copy(library, &target).unwrap();
    }
    fs::copy(binary, rootfs.join(inside.trim_start_matches('/'))).unwrap();
    inside.to_string()
}

/// Compiles the C probe `tests/probes/NAME.c` with the host's cc (Debian's gcc) into `dir`;
/// returns the binary (install it into a rootfs with [`install_with_libraries`]).
pub fn c_probe(name: &str, dir: &Path) -> PathBuf {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("probes/{name}.c"));
    let binary = dir.join(name);
    run(Command::new("cc")
        .args(["-O2", "-Wall", "-pthread", "-o"])
        .arg(&binary)
        .arg(&source));
    binary
}

/// A running container of a test, deleted (forcibly) when dropped, also when the test fails.
pub struct Detached<'b, 'a> {
    caller: &'b Burrow<'a>,
    pub id: String,
    /// The init's host pid.
    pub pid: i32,
}

impl Drop for Detached<'_, '_> {
    fn drop(&mut self) {
        let _ = self.caller.output(&["delete", "--force", &self.id]);
    }
}

impl<'a> Burrow<'a> {
    /// `burrow run --detach` of `bundle` as `id`, the container's output going to `ID.out` in
    /// the bundle; the container is deleted when the returned guard goes.
    pub fn start_detached(&self, bundle: &Path, id: &str) -> Detached<'_, 'a> {
        let log = fs::File::create(bundle.join(format!("{id}.out"))).unwrap();
        if let Some(user) = self.user {
            std::os::unix::fs::chown(bundle.join(format!("{id}.out")), Some(user.uid), None)
                .unwrap();
        }
        let out = self
            .command(&[
                "run",
                "--detach",
                "--bundle",
                &bundle.display().to_string(),
                id,
            ])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "run --detach {id}: {}",
            self.output_of(bundle, id)
        );
        let state = self.output(&["state", id]);
        assert!(state.status.success(), "state {id}");
        let state: serde_json::Value = serde_json::from_slice(&state.stdout).unwrap();
        Detached {
            caller: self,
            id: id.to_string(),
            pid: state["pid"].as_i64().unwrap() as i32,
        }
    }

    /// What container `id` of `bundle` (started by [`Self::start_detached`]) wrote so far.
    pub fn output_of(&self, bundle: &Path, id: &str) -> String {
        fs::read_to_string(bundle.join(format!("{id}.out"))).unwrap_or_default()
    }

    /// `burrow delete --force ID`, which must succeed.
    pub fn delete(&self, id: &str) {
        let out = self.output(&["delete", "--force", id]);
        assert!(
            out.status.success(),
            "delete {id}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// The cgroup directories of process `pid`: (hierarchy name, directory), where the hierarchy is
/// `devices`, `pids`... for v1 and `unified` for cgroup2.
pub fn cgroup_dirs(pid: i32) -> Vec<(String, PathBuf)> {
    let unified = if Path::new("/sys/fs/cgroup/unified/cgroup.procs").exists() {
        "/sys/fs/cgroup/unified"
    } else {
        "/sys/fs/cgroup"
    };
    fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .unwrap()
        .lines()
        .filter_map(|line| {
            let mut fields = line.splitn(3, ':');
            let (_, controllers, path) = (fields.next()?, fields.next()?, fields.next()?);
            let (name, root) = match controllers {
                "" => ("unified".to_string(), unified.to_string()),
                c => {
                    let name = c.trim_start_matches("name=").to_string();
                    let root = format!("/sys/fs/cgroup/{name}");
                    (name, root)
                }
            };
            Some((name, Path::new(&root).join(path.trim_start_matches('/'))))
        })
        .collect()
}

impl Burrow<'_> {
    /// `burrow ARGS` as this caller (as [`Self::command`]: same user, environment and state
    /// root), started through `wrapper`: `wrapper[0] wrapper[1..] BURROW ARGS`, run as the
    /// caller too (a program that prepares the caller's process, e.g. its keyrings, then execs).
    pub fn command_through(&self, wrapper: &[&str], args: &[&str]) -> Command {
        let burrow = shared_bin("burrow");
        let mut cmd = match wrapper.split_first() {
            Some((program, wrapper_args)) => {
                let mut cmd = self.h.as_user(program, self.user);
                cmd.args(wrapper_args).arg(&burrow);
                cmd
            }
            None => self.h.as_user(&burrow, self.user),
        };
        match self.user {
            Some(_) => {
                cmd.env("HOME", &self.home)
                    .env("XDG_RUNTIME_DIR", self.home.join("run"))
                    .env_remove("XDG_DATA_HOME")
                    .current_dir(&self.home);
            }
            None => {
                cmd.arg("--root").arg(self.home.join("state"));
            }
        }
        cmd.args(args).stdin(Stdio::null());
        cmd
    }

    /// The directory holding this caller's containers' state.
    pub fn state_root(&self) -> PathBuf {
        match self.user {
            Some(_) => self.home.join("run/burrow"),
            None => self.home.join("state"),
        }
    }
}

impl<'b, 'a> Detached<'b, 'a> {
    /// Deletes (forcibly) container `id` of `caller`, made some other way, when dropped.
    pub fn adopt(caller: &'b Burrow<'a>, id: &str) -> Self {
        Detached {
            caller,
            id: id.to_string(),
            pid: 0,
        }
    }
}

/// `burrow spec` in `bundle`, with the process running `args` without a terminal, then `edit`.
pub fn write_spec(bundle: &Path, args: &[&str], edit: impl FnOnce(&mut serde_json::Value)) {
    let out = Command::new(bin("burrow"))
        .args(["spec", "--bundle", &bundle.display().to_string()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let path = bundle.join("config.json");
    let mut config: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
    config["process"]["terminal"] = serde_json::json!(false);
    config["process"]["args"] = serde_json::json!(args);
    edit(&mut config);
    fs::write(&path, config.to_string()).unwrap();
}

/// A command's stdout and stderr, in that order, as one text.
pub fn all_output(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A wrapper in `dir` that runs the workspace's `burrow` on `h`'s bus: dockerd and containerd's
/// shim run a runtime with their own environment, not the test's bus.
pub fn burrow_wrapper(h: &Harness, dir: &Path) -> PathBuf {
    let wrapper = dir.join("burrow-runtime");
    fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nexport DBUS_SYSTEM_BUS_ADDRESS='{}'\nexec '{}' \"$@\"\n",
            h.address,
            bin("burrow").display()
        ),
    )
    .unwrap();
    fs::set_permissions(&wrapper, fs::Permissions::from_mode(0o755)).unwrap();
    wrapper
}

/// `GET path` over HTTP/1.0 from `address` (a server in a container, reached from the host):
/// the whole answer, headers included.
pub fn http_get(address: std::net::SocketAddr, path: &str) -> String {
    use std::io::{Read, Write};
    let timeout = std::time::Duration::from_secs(5);
    let mut stream = std::net::TcpStream::connect_timeout(&address, timeout)
        .unwrap_or_else(|e| panic!("connect to {address}: {e}"));
    stream.set_read_timeout(Some(timeout)).unwrap();
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes())
        .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    answer
}

/// A process's resident memory in KiB: (VmRSS from /proc/PID/status, Pss from
/// /proc/PID/smaps_rollup), for the helpers' idle-memory benchmarks.
pub fn memory_kib(pid: i32) -> (u64, u64) {
    let field = |file: &str, name: &str| {
        let text = fs::read_to_string(format!("/proc/{pid}/{file}")).unwrap();
        let line = text.lines().find(|l| l.starts_with(name)).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    };
    (field("status", "VmRSS:"), field("smaps_rollup", "Pss:"))
}

/// The value at fraction `p` (0.5: the median) of `sorted`, which must not be empty.
pub fn percentile(sorted: &[u64], p: f64) -> u64 {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

/// A v1 `devices.list` holding exactly devd's nodes (null, zero, full, random, urandom, tty,
/// ptmx) and every pty of the majors `ptys`, sorted.
pub fn devd_devices_list(ptys: std::ops::RangeInclusive<u32>) -> Vec<String> {
    let mut list: Vec<String> = ["1:3", "1:5", "1:7", "1:8", "1:9", "5:0", "5:2"]
        .iter()
        .map(|d| format!("c {d} rw"))
        .chain(ptys.map(|major| format!("c {major}:* rw")))
        .collect();
    list.sort();
    list
}
