//! The `burrow` runtime CLI against the real helpers, bus, polkitd and kernel, driven the way
//! containerd's shim drives runc: create (pid file, log file in JSON), state, start, kill,
//! delete, run. Run as root (`make test`). Docker and containerd themselves are not exercised
//! yet (see README).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use burrow_tests::{
    bin, busybox_rootfs, install_with_libraries, wait_for, Harness, HarnessOptions,
};
use serde_json::{json, Value};

struct Runtime<'a> {
    h: &'a Harness,
    root: PathBuf,
    log: PathBuf,
}

/// The cgroup v2 test turns this host into a cgroup v2 host for a while, which the other tests
/// of this file must not see: they hold this shared, it exclusively. (Test files run one after
/// another.)
static HOST_CGROUPS: RwLock<()> = RwLock::new(());

fn hybrid_host() -> RwLockReadGuard<'static, ()> {
    HOST_CGROUPS.read().unwrap_or_else(|e| e.into_inner())
}

/// The host's /sys/fs/cgroup overmounted with the cgroup2 hierarchy alone (on this hybrid host,
/// the one at /sys/fs/cgroup/unified), until dropped.
struct Cgroup2Host {
    _exclusive: RwLockWriteGuard<'static, ()>,
    /// The root's controllers for its children before the test (the runtime enables more,
    /// as runc does on a v2 host); restored afterwards.
    enabled_before: String,
}

const ROOT_SUBTREE_CONTROL: &str = "/sys/fs/cgroup/cgroup.subtree_control";

impl Cgroup2Host {
    fn new() -> Self {
        let exclusive = HOST_CGROUPS.write().unwrap_or_else(|e| e.into_inner());
        let status = Command::new("mount")
            .args(["-t", "cgroup2", "cgroup2", "/sys/fs/cgroup"])
            .status()
            .unwrap();
        assert!(status.success(), "mounting cgroup2 on /sys/fs/cgroup");
        Cgroup2Host {
            _exclusive: exclusive,
            enabled_before: fs::read_to_string(ROOT_SUBTREE_CONTROL).unwrap(),
        }
    }
}

impl Drop for Cgroup2Host {
    fn drop(&mut self) {
        let enabled = fs::read_to_string(ROOT_SUBTREE_CONTROL).unwrap_or_default();
        for controller in enabled.split_whitespace() {
            if !self
                .enabled_before
                .split_whitespace()
                .any(|c| c == controller)
            {
                let _ = fs::write(ROOT_SUBTREE_CONTROL, format!("-{controller}"));
            }
        }
        let status = Command::new("umount").arg("/sys/fs/cgroup").status();
        assert!(
            status.is_ok_and(|s| s.success()),
            "restoring /sys/fs/cgroup"
        );
    }
}

impl<'a> Runtime<'a> {
    fn new(h: &'a Harness) -> Self {
        Runtime {
            h,
            root: h.dir.join("burrow-root"),
            log: h.dir.join("log.json"),
        }
    }

    fn cmd(&self) -> Command {
        let mut cmd = self.h.command(bin("burrow"));
        cmd.args([
            "--root",
            &self.root.display().to_string(),
            "--log",
            &self.log.display().to_string(),
            "--log-format",
            "json",
        ]);
        cmd
    }

    fn run(&self, args: &[&str]) -> Output {
        self.cmd().args(args).stdin(Stdio::null()).output().unwrap()
    }

    /// `burrow create` with the container's stdio on a file.
    fn create(&self, bundle: &Path, id: &str) -> (Output, PathBuf, PathBuf) {
        self.create_with(&[], bundle, id)
    }

    /// `burrow GLOBAL_FLAGS create ...`.
    fn create_with(&self, global: &[&str], bundle: &Path, id: &str) -> (Output, PathBuf, PathBuf) {
        let out_file = bundle.join(format!("{id}.out"));
        let pid_file = bundle.join(format!("{id}.pid"));
        let stdout = fs::File::create(&out_file).unwrap();
        let out = self
            .cmd()
            .args(global)
            .args([
                "create",
                "--bundle",
                &bundle.display().to_string(),
                "--pid-file",
                &pid_file.display().to_string(),
                id,
            ])
            .stdin(Stdio::null())
            .stdout(stdout.try_clone().unwrap())
            .stderr(stdout)
            .output()
            .unwrap();
        (out, out_file, pid_file)
    }

    /// `burrow update --resources -` with `resources` on stdin; whether it succeeded.
    fn update(&self, id: &str, resources: &str) -> bool {
        let mut child = self
            .cmd()
            .args(["update", "--resources", "-", id])
            .stdin(Stdio::piped())
            .spawn()
            .unwrap();
        std::io::Write::write_all(&mut child.stdin.take().unwrap(), resources.as_bytes()).unwrap();
        child.wait().unwrap().success()
    }

    fn state(&self, id: &str) -> Value {
        let out = self.run(&["state", id]);
        assert!(out.status.success(), "state {id}: {}", self.last_error());
        serde_json::from_slice(&out.stdout).unwrap()
    }

    fn last_error(&self) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let line = text.lines().last().unwrap_or("").to_string();
        if line.is_empty() {
            return line;
        }
        let v: Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("log line is not JSON ({e}): {line}"));
        assert_eq!(v["level"], "error");
        assert!(
            v["time"].as_str().is_some_and(|t| t.ends_with('Z')),
            "{line}"
        );
        v["msg"].as_str().unwrap().to_string()
    }

    fn leftovers(&self) -> Vec<String> {
        fs::read_dir(&self.root)
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }
}

fn bundle(h: &Harness, name: &str, args: &[&str], edit: impl FnOnce(&mut Value)) -> PathBuf {
    let dir = h.dir.join(name);
    fs::create_dir_all(&dir).unwrap();
    busybox_rootfs(&dir.join("rootfs"), None);
    burrow_tests::write_spec(&dir, args, edit);
    dir
}

fn wait_output(file: &Path, needle: &str) -> String {
    let start = Instant::now();
    loop {
        let text = fs::read_to_string(file).unwrap_or_default();
        if text.contains(needle) {
            return text;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "timed out waiting for {needle:?} in {text:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The first host ID of process `pid`'s user namespace (its uid_map's `0 BASE 65536`).
fn range_base(pid: &str) -> u32 {
    fs::read_to_string(format!("/proc/{}/uid_map", pid.trim()))
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap()
}

fn cgroup_exists(path: &str) -> bool {
    [
        "/sys/fs/cgroup/pids",
        "/sys/fs/cgroup/memory",
        "/sys/fs/cgroup/unified",
        "/sys/fs/cgroup",
    ]
    .iter()
    .any(|h| {
        Path::new(h).join(path.trim_start_matches('/')).exists()
            && Path::new(h).join("cgroup.procs").exists()
    })
}

const PROBE: &str = "cat /proc/self/uid_map; grep CapEff /proc/self/status; \
    w() { test -e $1 || { echo $3=absent; return; }; (echo $2 > $1) 2>/dev/null && echo $3=written || echo $3=denied; }; \
    w /proc/sys/kernel/sysrq 1 sysrq; w /proc/sysrq-trigger h trigger; w /proc/sys/kernel/panic 5 panic; \
    grep -E '^Seccomp:' /proc/self/status; unshare -U -r -m true && echo nested_userns=ok; \
    echo dev=$(ls /dev | tr '\\n' ' '); echo probe-done; exec sleep 1000";

#[test]
fn lifecycle_of_a_system_container() {
    let _hybrid = hybrid_host();
    let h = Harness::start(HarnessOptions::default());
    let rt = Runtime::new(&h);
    let b = bundle(&h, "life", &["sh", "-c", PROBE], |c| {
        c["linux"]["cgroupsPath"] = json!("/burrow-test/life");
    });
    let (out, out_file, pid_file) = rt.create(&b, "life");
    assert!(out.status.success(), "create: {}", rt.last_error());
    assert!(
        out.stdout.is_empty() && out.stderr.is_empty(),
        "create printed something"
    );
    let pid_text = fs::read_to_string(&pid_file).unwrap();
    assert!(
        !pid_text.ends_with('\n') && pid_text.parse::<i32>().is_ok(),
        "pid file {pid_text:?}"
    );
    let state = rt.state("life");
    assert_eq!(state["status"], "created");
    assert_eq!(state["pid"].as_i64().unwrap().to_string(), pid_text);
    assert_eq!(state["id"], "life");
    assert!(cgroup_exists("/burrow-test/life"), "no cgroup");

    assert!(
        rt.run(&["start", "life"]).status.success(),
        "start: {}",
        rt.last_error()
    );
    assert_eq!(rt.state("life")["status"], "running");
    let text = wait_output(&out_file, "probe-done");
    let map: Vec<u64> = text
        .lines()
        .next()
        .unwrap()
        .split_whitespace()
        .map(|f| f.parse().unwrap())
        .collect();
    assert_eq!(map[0], 0);
    assert!(map[1] > 0 && map[1].is_multiple_of(65536));
    assert_eq!(map[2], 65536);
    let last_cap: u32 = fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let full = format!("{:016x}", (1u64 << (last_cap + 1)) - 1);
    assert!(
        text.contains(&format!("CapEff:\t{full}")),
        "root's CapEff is not the full set {full}: {text}"
    );
    assert!(text.contains("panic=denied"), "{text}");
    // The system-container seccomp filter is on, and leaves namespaces and mounts usable.
    assert!(text.contains("Seccomp:\t2"), "no seccomp filter: {text}");
    assert!(text.contains("nested_userns=ok"), "{text}");
    // This machine's kernel has no CONFIG_MAGIC_SYSRQ; where it has, the writes must fail.
    let sysrq = if Path::new("/proc/sys/kernel/sysrq").exists() {
        "denied"
    } else {
        "absent"
    };
    assert!(
        text.contains(&format!("sysrq={sysrq}")) && text.contains(&format!("trigger={sysrq}")),
        "{text}"
    );
    assert!(
        text.contains(
            "dev=fd full mqueue null ptmx pts random shm stderr stdin stdout tty urandom zero"
        ),
        "{text}"
    );

    // Every namespace is the container's own.
    for ns in ["user", "mnt", "pid", "net", "ipc", "uts", "cgroup"] {
        let host = fs::read_link(format!("/proc/self/ns/{ns}")).unwrap();
        let inside = fs::read_link(format!("/proc/{pid_text}/ns/{ns}")).unwrap();
        assert_ne!(
            host, inside,
            "the container shares the host's {ns} namespace"
        );
    }

    let ps = rt.run(&["ps", "--format", "json", "life"]);
    let pids: Vec<i64> = serde_json::from_slice(&ps.stdout).unwrap();
    assert!(pids.contains(&pid_text.parse().unwrap()), "ps {pids:?}");

    // update: limits land in the container's cgroup.
    assert!(
        rt.update(
            "life",
            r#"{"memory": {"limit": 67108864}, "pids": {"limit": 99}}"#
        ),
        "update: {}",
        rt.last_error()
    );
    let limit = |file: &str| fs::read_to_string(file).unwrap().trim().to_string();
    assert_eq!(
        limit("/sys/fs/cgroup/memory/burrow-test/life/memory.limit_in_bytes"),
        "67108864"
    );
    assert_eq!(limit("/sys/fs/cgroup/pids/burrow-test/life/pids.max"), "99");
    // Delegated in every hierarchy of this hybrid host (v1 controllers, systemd's named one,
    // cgroup2): the directory and membership files are the container root's, limits are not.
    let base = map[1] as u32;
    let owner = |path: &str| {
        use std::os::unix::fs::MetadataExt;
        fs::metadata(format!("/sys/fs/cgroup/{path}"))
            .unwrap()
            .uid()
    };
    for hierarchy in ["pids", "memory", "cpu", "freezer", "systemd", "unified"] {
        assert_eq!(
            owner(&format!("{hierarchy}/burrow-test/life")),
            base,
            "{hierarchy}"
        );
        assert_eq!(
            owner(&format!("{hierarchy}/burrow-test/life/cgroup.procs")),
            base,
            "{hierarchy}"
        );
    }
    assert_eq!(
        owner("unified/burrow-test/life/cgroup.subtree_control"),
        base
    );
    for limit_file in [
        "pids/burrow-test/life/pids.max",
        "memory/burrow-test/life/memory.limit_in_bytes",
        "freezer/burrow-test/life/freezer.state",
    ] {
        assert_eq!(owner(limit_file), 0, "{limit_file} was delegated");
    }
    assert!(
        rt.run(&["pause", "life"]).status.success(),
        "pause: {}",
        rt.last_error()
    );
    assert_eq!(rt.state("life")["status"], "paused");
    assert!(
        rt.run(&["resume", "life"]).status.success(),
        "resume: {}",
        rt.last_error()
    );
    assert_eq!(rt.state("life")["status"], "running");
    // A running container is only deleted with --force.
    assert!(!rt.run(&["delete", "life"]).status.success());
    assert!(
        rt.last_error().contains("is running"),
        "{}",
        rt.last_error()
    );

    // kill --all reaches a process exec'd beside the init too.
    // (Its stdio goes nowhere: the detached process would hold a pipe open.)
    let exec = rt
        .cmd()
        .args(["exec", "--detach", "life", "sleep", "1001"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(exec.success(), "exec: {}", rt.last_error());
    let ps = rt.run(&["ps", "--format", "json", "life"]);
    let pids: Vec<i32> = serde_json::from_slice(&ps.stdout).unwrap();
    assert_eq!(pids.len(), 2, "{pids:?}");
    assert!(
        rt.run(&["kill", "--all", "life", "KILL"]).status.success(),
        "kill: {}",
        rt.last_error()
    );
    wait_for("stopped", || rt.state("life")["status"] == "stopped");
    wait_for("every process gone", || {
        pids.iter()
            .all(|p| !Path::new(&format!("/proc/{p}")).exists())
    });
    assert!(
        rt.run(&["delete", "life"]).status.success(),
        "delete: {}",
        rt.last_error()
    );
    assert!(
        rt.leftovers().is_empty(),
        "state left: {:?}",
        rt.leftovers()
    );
    assert!(!cgroup_exists("/burrow-test/life"), "cgroup left");
    wait_for("range released", || h.ranges_in_use() == 0);
}

/// `delete --force` when dropped, so that a failed check leaves no container running.
struct ForceDelete<'a>(&'a Runtime<'a>, &'a str);

impl Drop for ForceDelete<'_> {
    fn drop(&mut self) {
        let _ = self.0.run(&["delete", "--force", self.1]);
    }
}

/// The cgroup v2 code paths of the runtime and mountd, on this hybrid host made to look like a
/// v2 host. Its cgroup2 hierarchy has only the hugetlb controller (the others are bound to v1),
/// so memory and pids limits cannot be set on it.
#[test]
fn cgroup_v2_host() {
    let _v2 = Cgroup2Host::new();
    let h = Harness::start(HarnessOptions::default());
    let rt = Runtime::new(&h);
    let b = bundle(&h, "v2", &["sleep", "1000"], |c| {
        c["linux"]["cgroupsPath"] = json!("/burrow-v2/v2")
    });
    let (out, _, pid_file) = rt.create(&b, "v2");
    let _removed_even_on_failure = ForceDelete(&rt, "v2");
    assert!(out.status.success(), "create: {}", rt.last_error());
    let pid = fs::read_to_string(&pid_file).unwrap();
    let membership = fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    assert!(
        membership.lines().any(|l| l == "0::/burrow-v2/v2"),
        "{membership}"
    );
    // mountd gives the container the host's layout: cgroup2 alone, rooted at its cgroup (which
    // the host sees by its full path).
    let mounts = fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
    assert!(
        mounts.lines().any(|l| l.contains(" /sys/fs/cgroup ")
            && l.contains(" - cgroup2 ")
            && l.split(' ').nth(3) == Some("/burrow-v2/v2")),
        "{mounts}"
    );
    let dir = Path::new("/sys/fs/cgroup/burrow-v2/v2");
    let base = range_base(&pid);
    let owner = |file: &str| {
        use std::os::unix::fs::MetadataExt;
        fs::metadata(dir.join(file)).unwrap().uid()
    };
    // Delegated as on a v2 host: the directory and the files that manage the subtree.
    for file in [
        "",
        "cgroup.procs",
        "cgroup.subtree_control",
        "cgroup.threads",
    ] {
        assert_eq!(owner(file), base, "{file:?} not delegated");
    }
    for file in ["cgroup.freeze", "cgroup.max.depth", "cgroup.type"] {
        assert_eq!(owner(file), 0, "{file} must stay root's");
    }
    // The device policy is a BPF program on a v2 host: a host root process moved into the
    // container's cgroup opens devd's kind of node, not a host block device.
    let disk = burrow_tests::LoopDevice::new(&h.dir);
    for (device, allowed) in [
        ("/dev/null", true),
        (&*disk.device.to_string_lossy(), false),
    ] {
        let script = format!(
            "echo $$ > {}/cgroup.procs && exec 3<{device}",
            dir.display()
        );
        let out = Command::new("sh").args(["-c", &script]).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.success(), allowed, "{device}: {err}");
        assert!(
            allowed || err.contains("Operation not permitted"),
            "{device}: {err}"
        );
    }

    // The parent got the controllers enabled for its children, as runc does.
    let enabled = fs::read_to_string("/sys/fs/cgroup/burrow-v2/cgroup.subtree_control").unwrap();
    assert!(enabled.contains("hugetlb"), "{enabled:?}");

    assert!(
        rt.run(&["start", "v2"]).status.success(),
        "{}",
        rt.last_error()
    );
    let ps = rt.run(&["ps", "--format", "json", "v2"]);
    let pids: Vec<i64> = serde_json::from_slice(&ps.stdout).unwrap();
    assert_eq!(pids, vec![pid.parse::<i64>().unwrap()]);

    assert!(
        rt.run(&["pause", "v2"]).status.success(),
        "{}",
        rt.last_error()
    );
    assert_eq!(rt.state("v2")["status"], "paused");
    let events = fs::read_to_string(dir.join("cgroup.events")).unwrap();
    assert!(events.contains("frozen 1"), "{events}");
    assert!(
        rt.run(&["resume", "v2"]).status.success(),
        "{}",
        rt.last_error()
    );
    assert_eq!(rt.state("v2")["status"], "running");
    assert!(fs::read_to_string(dir.join("cgroup.events"))
        .unwrap()
        .contains("frozen 0"));

    // A limit whose controller the host lacks is a named error, not silently dropped.
    assert!(!rt.update("v2", r#"{"memory": {"limit": 67108864}}"#));
    assert!(
        rt.last_error().contains("no memory controller"),
        "{}",
        rt.last_error()
    );

    assert!(
        rt.run(&["delete", "--force", "v2"]).status.success(),
        "{}",
        rt.last_error()
    );
    assert!(!dir.exists(), "cgroup left");
    assert!(rt.leftovers().is_empty(), "{:?}", rt.leftovers());
    let _ = fs::remove_dir("/sys/fs/cgroup/burrow-v2");
    wait_for("range released", || h.ranges_in_use() == 0);
}

/// `--preserve-fds N`: fds 3..3+N reach the container's process as they are; no other fd of
/// the runtime's does (each process the runtime forks keeps only what it passes on).
#[test]
fn preserved_fds_reach_the_process_and_no_other_fd_does() {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let _hybrid = hybrid_host();
    let h = Harness::start(HarnessOptions::default());
    let rt = Runtime::new(&h);
    let b = bundle(
        &h,
        "preserve",
        &["sh", "-c", "echo via-fd3 >&3; ls /proc/1/fd; true"],
        |c| c["process"]["terminal"] = json!(false),
    );
    let (out_file, fd3_file) = (b.join("out"), b.join("fd3"));
    let fd3 = fs::File::create(&fd3_file).unwrap();
    let raw = fd3.as_raw_fd();
    let mut cmd = rt.cmd();
    cmd.args(["run", "--preserve-fds", "1", "--bundle"])
        .arg(&b)
        .arg("preserve")
        .stdin(Stdio::null())
        .stdout(fs::File::create(&out_file).unwrap());
    // SAFETY: raw system calls on an fd open in the forked child, before its exec.
    unsafe {
        cmd.pre_exec(move || {
            // dup2 of an fd onto itself would leave it close-on-exec.
            let done = match raw {
                3 => libc::fcntl(3, libc::F_SETFD, 0),
                _ => libc::dup2(raw, 3),
            };
            match done {
                -1 => Err(std::io::Error::last_os_error()),
                _ => Ok(()),
            }
        })
    };
    let status = cmd.status().unwrap();
    assert!(status.success(), "{}", rt.last_error());
    assert_eq!(
        fs::read_to_string(&fd3_file).unwrap(),
        "via-fd3\n",
        "{}",
        fs::read_to_string(&out_file).unwrap()
    );
    let fds: Vec<String> = fs::read_to_string(&out_file)
        .unwrap()
        .split_whitespace()
        .map(String::from)
        .collect();
    assert_eq!(fds, ["0", "1", "2", "3"], "the process's fds");
    assert!(rt.leftovers().is_empty());
    wait_for("range released", || h.ranges_in_use() == 0);
}

#[test]
fn run_propagates_the_exit_code_and_cleans_up() {
    let _hybrid = hybrid_host();
    let h = Harness::start(HarnessOptions::default());
    let rt = Runtime::new(&h);
    let b = bundle(&h, "exit", &["sh", "-c", "exit 3"], |_| {});
    let out = rt.run(&["run", "--bundle", &b.display().to_string(), "exit3"]);
    assert_eq!(out.status.code(), Some(3), "{}", rt.last_error());
    assert!(rt.leftovers().is_empty());
    wait_for("range released", || h.ranges_in_use() == 0);
    // Without --debug the log holds no debug lines; with it, the helpers' answers.
    assert!(!fs::read_to_string(&rt.log)
        .unwrap_or_default()
        .contains("\"debug\""));
    let out = rt
        .cmd()
        .args([
            "--debug",
            "run",
            "--bundle",
            &b.display().to_string(),
            "exit3-debug",
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    let debug: Vec<Value> = fs::read_to_string(&rt.log)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|v: &Value| v["level"] == "debug")
        .collect();
    let said = |needle: &str| {
        debug
            .iter()
            .any(|v| v["msg"].as_str().unwrap().contains(needle))
    };
    assert!(
        said("idmapd: range") && said("mountd the mount namespace") && said("cgroup"),
        "{debug:?}"
    );
}

/// Mounts are made in the spec's order, devd's /dev at its place among them (Docker lists it
/// second). The container's namespace is a copy (its mounts are locked so), which the kernel
/// lists depth first: /proc/self/mountinfo inside has the spec's mounts in the depth-first
/// order of the spec's list (each mount's children in their listed order), which is the
/// spec's own order whenever the spec lists a mount's children right after it.
#[test]
fn mounts_are_made_in_the_specs_order() {
    let _hybrid = hybrid_host();
    let h = Harness::start(HarnessOptions::default());
    let rt = Runtime::new(&h);
    let tmpfs = |destination: &str| {
        json!({"destination": destination, "type": "tmpfs", "source": "tmpfs",
               "options": ["nosuid", "nodev"]})
    };
    // Docker's order.
    let mounts = json!([
        {"destination": "/proc", "type": "proc", "source": "proc"},
        tmpfs("/dev"),
        {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
         "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
        {"destination": "/sys", "type": "sysfs", "source": "sysfs",
         "options": ["nosuid", "noexec", "nodev", "ro"]},
        {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
         "options": ["ro", "nosuid", "noexec", "nodev"]},
        {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
         "options": ["nosuid", "noexec", "nodev"]},
        tmpfs("/dev/shm"),
        tmpfs("/tmp"),
    ]);
    let listed: Vec<String> = mounts
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["destination"].as_str().unwrap().to_string())
        .collect();
    let b = bundle(&h, "mount-order", &["cat", "/proc/self/mountinfo"], |c| {
        c["mounts"] = mounts;
        // What it is; any other propagation is refused (below).
        c["linux"]["rootfsPropagation"] = json!("rprivate");
    });
    let (out, out_file, _) = rt.create(&b, "mount-order");
    assert!(out.status.success(), "create: {}", rt.last_error());
    assert!(rt.run(&["start", "mount-order"]).status.success());
    wait_for("the container ran", || {
        rt.state("mount-order")["status"] == "stopped"
    });
    let mountinfo = fs::read_to_string(out_file).unwrap();
    let mut seen: Vec<String> = vec![];
    for point in mountinfo.lines().filter_map(|l| l.split(' ').nth(4)) {
        if listed.iter().any(|l| l == point) && !seen.iter().any(|s| s == point) {
            seen.push(point.to_string());
        }
    }
    assert_eq!(seen, depth_first(&listed), "{mountinfo}");
    let root = mountinfo.lines().find(|l| l.split(' ').nth(4) == Some("/"));
    assert!(
        root.is_some_and(|l| !l.contains("shared:") && !l.contains("master:")),
        "the rootfs is not private: {root:?}"
    );
    assert!(rt.run(&["delete", "mount-order"]).status.success());
    let slave = bundle(&h, "rslave", &["true"], |c| {
        c["linux"]["rootfsPropagation"] = json!("rslave");
    });
    let (out, _, _) = rt.create(&slave, "rslave");
    assert_eq!(out.status.code(), Some(1), "an rslave rootfs was accepted");
    assert!(
        rt.last_error().contains(
            "linux.rootfsPropagation \"rslave\": a Burrow container's rootfs is always private"
        ),
        "{}",
        rt.last_error()
    );
    wait_for("range released", || h.ranges_in_use() == 0);
}

/// The spec's whole `linux.resources` lands in the container's cgroup files, `burrow update`
/// changes them (zeros unchanged), and what the host cannot honour is refused by name before
/// anything runs.
#[test]
fn linux_resources_are_applied_or_refused_by_name() {
    let _hybrid = hybrid_host();
    let h = Harness::start(HarnessOptions::default());
    let rt = Runtime::new(&h);
    let cgroup = "/burrow-test/resources";
    let b = bundle(&h, "resources", &["sleep", "1000"], |c| {
        c["linux"]["cgroupsPath"] = json!(cgroup);
        c["linux"]["resources"] = json!({
            "cpu": {"cpus": "0", "mems": "0", "shares": 512},
            "memory": {"limit": 64 << 20, "swap": 128 << 20, "reservation": 32 << 20,
                       "swappiness": 10},
            "pids": {"limit": 99},
            "blockIO": {"throttleReadBpsDevice": [{"major": 254, "minor": 0, "rate": 1048576}]},
        });
    });
    let (out, _, _) = rt.create(&b, "resources");
    assert!(out.status.success(), "create: {}", rt.last_error());
    let files = [
        ("cpuset", "cpuset.cpus"),
        ("cpu", "cpu.shares"),
        ("memory", "memory.limit_in_bytes"),
        ("memory", "memory.memsw.limit_in_bytes"),
        ("memory", "memory.soft_limit_in_bytes"),
        ("memory", "memory.swappiness"),
        ("pids", "pids.max"),
        ("blkio", "blkio.throttle.read_bps_device"),
    ];
    let read = || -> Vec<String> {
        files
            .iter()
            .map(|(controller, file)| {
                let path = format!("/sys/fs/cgroup/{controller}{cgroup}/{file}");
                fs::read_to_string(&path)
                    .unwrap_or_else(|e| panic!("{path}: {e}"))
                    .trim()
                    .to_string()
            })
            .collect()
    };
    let mib = |n: u64| (n << 20).to_string();
    assert_eq!(
        read(),
        [
            "0",
            "512",
            &mib(64),
            &mib(128),
            &mib(32),
            "10",
            "99",
            "254:0 1048576"
        ]
    );
    // Zeros leave a value alone, as runc's update.
    let update = json!({"cpu": {"cpus": "1", "shares": 0}, "memory": {"reservation": 16 << 20},
                        "pids": {"limit": 0}});
    assert!(
        rt.update("resources", &update.to_string()),
        "{}",
        rt.last_error()
    );
    assert_eq!(
        read(),
        [
            "1",
            "512",
            &mib(64),
            &mib(128),
            &mib(16),
            "10",
            "99",
            "254:0 1048576"
        ]
    );
    assert!(rt.run(&["delete", "--force", "resources"]).status.success());

    let mut refusals = vec![
        (
            json!({"rdma": {"mlx5_0": {"hcaHandles": 3}}}),
            "linux.resources.rdma",
        ),
        (
            json!({"unified": {"memory.high": "1G"}}),
            "linux.resources.unified",
        ),
    ];
    // What this host lacks: CFQ's proportional weight, a net_cls and a hugetlb hierarchy.
    if !Path::new("/sys/fs/cgroup/blkio/blkio.weight").exists() {
        refusals.push((
            json!({"blockIO": {"weight": 300}}),
            "linux.resources.blockIO.weight",
        ));
    }
    if !Path::new("/sys/fs/cgroup/net_cls/cgroup.procs").exists() {
        refusals.push((
            json!({"network": {"classID": 1048577}}),
            "linux.resources.network.classID: this host has no net_cls controller",
        ));
    }
    if !Path::new("/sys/fs/cgroup/hugetlb/cgroup.procs").exists() {
        refusals.push((
            json!({"hugepageLimits": [{"pageSize": "2MB", "limit": 1 << 21}]}),
            "linux.resources.hugepageLimits: this host has no hugetlb controller",
        ));
    }
    for (i, (resources, says)) in refusals.into_iter().enumerate() {
        let id = format!("refused-resources-{i}");
        let b = bundle(&h, &id, &["true"], |c| {
            c["linux"]["resources"] = resources.clone();
        });
        let (out, _, _) = rt.create(&b, &id);
        assert_eq!(out.status.code(), Some(1), "{resources} was accepted");
        assert!(
            rt.last_error().contains(says),
            "{resources}: {}",
            rt.last_error()
        );
    }
    assert!(rt.leftovers().is_empty(), "{:?}", rt.leftovers());
    // A tenant's container has the admin's per-user limits, never its spec's.
    let alice = burrow_tests::Burrow::new(&h, Some(burrow_tests::test_users().alice), "alice");
    let limited = alice.edited_bundle(
        "limited",
        &["true"],
        |rootfs| busybox_rootfs(rootfs, None),
        |c| c["linux"]["resources"] = json!({"memory": {"limit": 64 << 20}}),
    );
    let (output, status) = alice.run_bundle(&limited, "limited");
    assert!(!status.success(), "a tenant's limit was accepted: {output}");
    assert!(
        output.contains("linux.resources: a non-root runtime's container has the limits"),
        "{output}"
    );
    wait_for("ranges released", || h.ranges_in_use() == 0);
}

/// What a container's process sees of its spec's fields, printed from inside.
const FIELD_PROBE: &str = "hostname; umask; cat /proc/self/oom_score_adj; id -u; id -g; id -G; \
    grep -E '^NoNewPrivs' /proc/self/status; ulimit -n; pwd; echo \"FOO=$FOO\"";

/// A change to a config.json, applied to Burrow's and runc's alike.
type SpecEdit = Box<dyn Fn(&mut Value)>;

/// A non-root process's capability sets, printed from inside.
const CAPS_PROBE: &str = "grep -E '^Cap(Inh|Prm|Eff|Bnd|Amb)' /proc/self/status";

/// `runc run` of the same rootfs with runc's own spec and the same `edit` (runc is the
/// reference for what the fields mean; Burrow's spec differs only in the namespaces and
/// mounts a system container has): the process's output.
fn runc_output(h: &Harness, name: &str, script: &str, edit: &dyn Fn(&mut Value)) -> String {
    let dir = h.dir.join(format!("runc-{name}"));
    fs::create_dir_all(&dir).unwrap();
    busybox_rootfs(&dir.join("rootfs"), None);
    burrow_tests::run(Command::new("runc").args(["spec", "--bundle"]).arg(&dir));
    let path = dir.join("config.json");
    let mut config: Value = serde_json::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
    config["process"]["terminal"] = json!(false);
    config["process"]["args"] = json!(["sh", "-c", script]);
    config["root"]["readonly"] = json!(false);
    edit(&mut config);
    fs::write(&path, config.to_string()).unwrap();
    let out = Command::new("runc")
        .arg("--root")
        .arg(h.dir.join("runc-root"))
        .args(["run", "--bundle"])
        .arg(&dir)
        .arg(format!("runc-{name}"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "runc {name}: {}",
        burrow_tests::all_output(&out)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Field by field, a process's view of its spec under Burrow is runc's on the same rootfs:
/// hostname (empty and set), umask, oomScoreAdj, user with additional groups, noNewPrivileges,
/// rlimits, cwd and env, and a non-root user's five capability sets. (Where Burrow decides
/// otherwise, the README's table says so: root's capabilities, the ID mappings, seccomp.)
#[test]
fn process_fields_are_as_runcs_on_the_same_rootfs() {
    let _hybrid = hybrid_host();
    let h = Harness::start(HarnessOptions::default());
    let rt = Runtime::new(&h);
    let bind = json!(["CAP_NET_BIND_SERVICE", "CAP_KILL"]);
    let host = String::from_utf8(Command::new("hostname").output().unwrap().stdout).unwrap();
    // What runc shows, known beforehand: the comparison compares something.
    let shows: [(&str, &str); 4] = [
        ("empty-hostname", host.as_str()),
        ("hostname", "conformance\n"),
        (
            "process",
            "conformance\n0027\n300\n1000\n1000\n1000 10 20\nNoNewPrivs:\t1\n256\n/tmp\nFOO=bar\n",
        ),
        (
            "user-caps",
            "CapEff:\t0000000000000420\nCapBnd:\t0000000000000421\n",
        ),
    ];
    let cases: Vec<(&str, &str, SpecEdit)> = vec![
        (
            "empty-hostname",
            FIELD_PROBE,
            Box::new(|c| c["hostname"] = json!("")),
        ),
        (
            "hostname",
            FIELD_PROBE,
            Box::new(|c| c["hostname"] = json!("conformance")),
        ),
        (
            "process",
            FIELD_PROBE,
            Box::new(|c| {
                c["hostname"] = json!("conformance");
                c["process"]["user"] =
                    json!({"uid": 1000, "gid": 1000, "additionalGids": [10, 20], "umask": 0o027});
                c["process"]["oomScoreAdj"] = json!(300);
                c["process"]["noNewPrivileges"] = json!(true);
                c["process"]["rlimits"] =
                    json!([{"type": "RLIMIT_NOFILE", "hard": 512, "soft": 256}]);
                c["process"]["cwd"] = json!("/tmp");
                c["process"]["env"] = json!(["PATH=/bin", "FOO=bar"]);
            }),
        ),
        (
            "user-caps",
            CAPS_PROBE,
            Box::new(move |c| {
                c["process"]["user"] = json!({"uid": 1000, "gid": 1000});
                c["process"]["capabilities"] = json!({
                    "bounding": ["CAP_NET_BIND_SERVICE", "CAP_KILL", "CAP_CHOWN"],
                    "effective": bind, "permitted": bind, "inheritable": bind, "ambient": bind,
                });
            }),
        ),
    ];
    for (name, script, edit) in cases {
        let expected = runc_output(&h, name, script, edit.as_ref());
        let (_, known) = shows.iter().find(|(case, _)| *case == name).unwrap();
        assert!(expected.contains(known), "runc {name}: {expected:?}");
        let b = bundle(&h, name, &["sh", "-c", script], |c| edit(c));
        let out = rt.run(&["run", "--bundle", &b.display().to_string(), name]);
        assert!(out.status.success(), "{name}: {}", rt.last_error());
        assert_eq!(String::from_utf8_lossy(&out.stdout), expected, "{name}");
    }
    wait_for("ranges released", || h.ranges_in_use() == 0);
}

/// A `linux.devices` entry on devd's allowlist: its node is in the container's /dev with the
/// spec's mode and owner (the container's IDs), and the container's cgroup lets it be opened.
#[test]
fn an_allowlisted_device_gets_the_specs_mode_and_owner() {
    let _hybrid = hybrid_host();
    let allowlist = std::env::temp_dir().join(format!("burrow-rt-allow-{}", std::process::id()));
    fs::write(&allowlist, "fuse\n").unwrap();
    let h = Harness::start(HarnessOptions {
        devd_args: vec!["--allowlist".into(), allowlist.display().to_string()],
        ..Default::default()
    });
    let rt = Runtime::new(&h);
    let script = "ls -ln /dev/fuse; exec 3<>/dev/fuse && echo opened";
    let b = bundle(&h, "fuse", &["sh", "-c", script], |c| {
        c["linux"]["devices"] = json!([{"path": "/dev/fuse", "type": "c", "major": 10,
            "minor": 229, "fileMode": 0o640, "uid": 1000, "gid": 1001}]);
    });
    let (out, out_file, _) = rt.create(&b, "fuse");
    assert!(out.status.success(), "create: {}", rt.last_error());
    assert!(rt.run(&["start", "fuse"]).status.success());
    wait_for("the container ran", || {
        rt.state("fuse")["status"] == "stopped"
    });
    let text = fs::read_to_string(out_file).unwrap();
    let fields: Vec<&str> = text.split_whitespace().collect();
    assert_eq!(
        fields[..6],
        ["crw-r-----", "1", "1000", "1001", "10,", "229"],
        "{text}"
    );
    assert!(text.ends_with("opened\n"), "{text}");
    assert!(rt.run(&["delete", "fuse"]).status.success());
    let _ = fs::remove_file(&allowlist);
    wait_for("range released", || h.ranges_in_use() == 0);
}

/// The process's umask, oomScoreAdj and (for a non-root user) capabilities are applied; an
/// AppArmor profile or SELinux label the host cannot apply, and a capability the kernel does
/// not know, fail `create` with their reason and leave nothing.
#[test]
fn process_fields_are_applied_or_refused_by_name() {
    let _hybrid = hybrid_host();
    let h = Harness::start(HarnessOptions::default());
    let rt = Runtime::new(&h);
    let script = "umask; cat /proc/self/oom_score_adj";
    let b = bundle(&h, "process-fields", &["sh", "-c", script], |c| {
        c["process"]["user"]["umask"] = json!(0o077);
        c["process"]["oomScoreAdj"] = json!(500);
    });
    let (out, out_file, _) = rt.create(&b, "process-fields");
    assert!(out.status.success(), "create: {}", rt.last_error());
    assert!(rt.run(&["start", "process-fields"]).status.success());
    wait_for("the container ran", || {
        rt.state("process-fields")["status"] == "stopped"
    });
    assert_eq!(fs::read_to_string(out_file).unwrap(), "0077\n500\n");
    assert!(rt.run(&["delete", "process-fields"]).status.success());

    // A non-root process user gets the spec's capability sets (as runc gives Docker's
    // `--user 1000 --cap-add`), where root keeps its namespace's full set.
    let b = bundle(
        &h,
        "user-caps",
        &["grep", "^Cap", "/proc/self/status"],
        |c| {
            c["process"]["user"] = json!({"uid": 1000, "gid": 1000});
            let bind = json!(["CAP_NET_BIND_SERVICE"]);
            c["process"]["capabilities"] = json!({
                "bounding": ["CAP_NET_BIND_SERVICE", "CAP_CHOWN"],
                "effective": bind, "permitted": bind, "inheritable": bind, "ambient": bind,
            });
        },
    );
    let (out, out_file, _) = rt.create(&b, "user-caps");
    assert!(out.status.success(), "create: {}", rt.last_error());
    assert!(
        rt.run(&["start", "user-caps"]).status.success(),
        "{}: {}",
        rt.last_error(),
        fs::read_to_string(&out_file).unwrap_or_default()
    );
    wait_for("the container ran", || {
        rt.state("user-caps")["status"] == "stopped"
    });
    let bind = "0000000000000400";
    assert_eq!(
        fs::read_to_string(out_file).unwrap(),
        format!(
            "CapInh:\t{bind}\nCapPrm:\t{bind}\nCapEff:\t{bind}\n\
             CapBnd:\t0000000000000401\nCapAmb:\t{bind}\n"
        )
    );
    assert!(rt.run(&["delete", "user-caps"]).status.success());

    let mut refusals = vec![(
        json!({"capabilities": {"bounding": ["CAP_BOGUS"]}}),
        "CAP_BOGUS",
    )];
    if !Path::new("/sys/module/apparmor/parameters/enabled").exists() {
        refusals.push((
            json!({"apparmorProfile": "docker-default"}),
            "process.apparmorProfile is \"docker-default\", but this host has no AppArmor",
        ));
    }
    if !Path::new("/sys/fs/selinux/enforce").exists() {
        refusals.push((
            json!({"selinuxLabel": "system_u:system_r:container_t:s0"}),
            "but this host has no SELinux",
        ));
    }
    for (i, (fields, says)) in refusals.into_iter().enumerate() {
        let id = format!("refused-field-{i}");
        let b = bundle(&h, &id, &["true"], |c| {
            for (key, value) in fields.as_object().unwrap() {
                c["process"][key] = value.clone();
            }
        });
        let (out, _, _) = rt.create(&b, &id);
        assert_eq!(out.status.code(), Some(1), "{fields} was accepted");
        assert!(
            rt.last_error().contains(says),
            "{fields}: {}",
            rt.last_error()
        );
    }
    assert!(rt.leftovers().is_empty(), "{:?}", rt.leftovers());
    wait_for("ranges released", || h.ranges_in_use() == 0);
}

/// `paths` (absolute, in mount order) as a tree walked depth first, each one's children in
/// their order in `paths`.
fn depth_first(paths: &[String]) -> Vec<String> {
    let is_below = |child: &str, parent: &str| {
        child.starts_with(parent) && child[parent.len()..].starts_with('/')
    };
    // A path's parent in the tree: the last listed path it is below.
    let parent_of = |path: &str| {
        paths
            .iter()
            .filter(|p| is_below(path, p))
            .max_by_key(|p| p.len())
            .cloned()
    };
    fn walk(
        node: Option<String>,
        paths: &[String],
        parent_of: &dyn Fn(&str) -> Option<String>,
        out: &mut Vec<String>,
    ) {
        for child in paths.iter().filter(|p| parent_of(p) == node) {
            out.push(child.clone());
            walk(Some(child.clone()), paths, parent_of, out);
        }
    }
    let mut out = vec![];
    walk(None, paths, &parent_of, &mut out);
    out
}

/// The lifecycle as the spec and runc have it: `start` only of a created container, `delete`
/// without `--force` refused for a running one (which keeps running) but not for a created one
/// (runc deletes that, and containerd's shim relies on it); `exec` takes everything after the
/// id as the command's; an empty hostname leaves the host's, as runc does.
#[test]
fn lifecycle_exec_and_hostname_follow_the_spec_and_runc() {
    let _hybrid = hybrid_host();
    let h = Harness::start(HarnessOptions::default());
    let rt = Runtime::new(&h);
    let b = bundle(&h, "spec-life", &["sleep", "1000"], |c| {
        c["hostname"] = json!("");
    });
    let (out, _, _) = rt.create(&b, "spec-life");
    assert!(out.status.success(), "create: {}", rt.last_error());
    assert!(rt.run(&["start", "spec-life"]).status.success());
    let refused = |args: &[&str], says: &str| {
        let out = rt.run(args);
        assert_eq!(out.status.code(), Some(1), "{args:?} succeeded");
        assert!(
            rt.last_error().contains(says),
            "{args:?}: {}",
            rt.last_error()
        );
        assert_eq!(rt.state("spec-life")["status"], "running", "after {args:?}");
    };
    refused(
        &["start", "spec-life"],
        "only a created container can be started",
    );
    refused(&["delete", "spec-life"], "stop it first or use --force");

    let exec = rt.run(&["exec", "spec-life", "sh", "-c", "echo hi; hostname"]);
    assert!(exec.status.success(), "exec: {}", rt.last_error());
    let host = String::from_utf8(Command::new("hostname").output().unwrap().stdout).unwrap();
    assert_eq!(
        String::from_utf8_lossy(&exec.stdout),
        format!("hi\n{host}"),
        "the command's own -c, then the host's name in the container's UTS namespace"
    );

    assert!(rt.run(&["kill", "spec-life", "KILL"]).status.success());
    wait_for("the container stopped", || {
        rt.state("spec-life")["status"] == "stopped"
    });
    let out = rt.run(&["start", "spec-life"]);
    assert_eq!(out.status.code(), Some(1), "a stopped container started");
    assert!(rt.run(&["delete", "spec-life"]).status.success());
    assert!(rt.leftovers().is_empty(), "{:?}", rt.leftovers());
    wait_for("range released", || h.ranges_in_use() == 0);
}

#[test]
fn two_containers_have_disjoint_ranges_and_created_ones_can_be_deleted() {
    let _hybrid = hybrid_host();
    let h = Harness::start(HarnessOptions::default());
    let rt = Runtime::new(&h);
    let b = bundle(&h, "two", &["sleep", "1000"], |_| {});
    // b's cgroup in systemd's notation, as dockerd and containerd pass it with
    // --systemd-cgroup; burrow makes the scope's directory (cgroupfs, no systemd involved).
    let systemd_style = bundle(&h, "two-systemd", &["sleep", "1000"], |c| {
        c["linux"]["cgroupsPath"] = json!("burrow-test.slice:burrow:b")
    });
    let mut bases = vec![];
    for (id, global, b) in [
        ("a", vec![], &b),
        ("b", vec!["--systemd-cgroup"], &systemd_style),
    ] {
        let (out, _, pid_file) = rt.create_with(&global, b, id);
        assert!(out.status.success(), "create {id}: {}", rt.last_error());
        let pid = fs::read_to_string(pid_file).unwrap();
        bases.push(u64::from(range_base(&pid)));
    }
    assert!(
        bases[0] + 65536 <= bases[1] || bases[1] + 65536 <= bases[0],
        "overlap {bases:?}"
    );
    assert!(cgroup_exists("/burrow/a"));
    assert!(cgroup_exists("/burrow-test.slice/burrow-b.scope"));
    // Created, never started: delete works without --force.
    for id in ["a", "b"] {
        assert!(
            rt.run(&["delete", id]).status.success(),
            "delete {id}: {}",
            rt.last_error()
        );
    }
    assert!(rt.leftovers().is_empty());
    assert!(
        !cgroup_exists("/burrow-test.slice/burrow-b.scope"),
        "cgroup left"
    );
    wait_for("ranges released", || h.ranges_in_use() == 0);
}

/// The state a hook wrote to `file`, which must be container `id`'s.
fn read_state(file: &Path, id: &str) -> Value {
    wait_for(&format!("{}", file.display()), || file.exists());
    let state: Value = serde_json::from_str(&fs::read_to_string(file).unwrap()).unwrap();
    assert_eq!(state["id"], id, "{state}");
    state
}

/// Every OCI hook phase gets the state on stdin, in the right place: the runtime's hooks on the
/// host, createContainer (a host binary) and startContainer (one of the image) inside the
/// container. A failed poststart hook is only a warning; a failed createContainer hook fails
/// create and leaves nothing.
#[test]
fn hooks_get_the_state_on_stdin() {
    let _hybrid = hybrid_host();
    let h = Harness::start(HarnessOptions::default());
    let rt = Runtime::new(&h);
    let host_hook = |name: &str| {
        let file = h.dir.join(format!("{name}.json"));
        json!({"path": "/bin/sh", "args": ["sh", "-c", format!("cat > {}", file.display())]})
    };
    let inside_hook = |path: &str, name: &str| {
        json!({"path": path, "args": ["busybox", "sh", "-c",
            format!("cat > /{name}.json; readlink /proc/self/ns/mnt > /{name}.mnt")]})
    };
    let b = bundle(&h, "hooks", &["sleep", "1000"], |c| {
        c["hooks"] = json!({
            "prestart": [host_hook("prestart")],
            "createRuntime": [host_hook("create-runtime")],
            // The host's busybox (static), run in the container's mount namespace.
            "createContainer": [inside_hook("/bin/busybox", "create-container")],
            // Found in the image.
            "startContainer": [inside_hook("/bin/busybox", "start-container")],
            "poststart": [host_hook("poststart"), {"path": "/bin/false"}],
            "poststop": [host_hook("poststop")],
        });
    });
    let (out, _, pid_file) = rt.create(&b, "hooked");
    assert!(out.status.success(), "create: {}", rt.last_error());
    let pid = fs::read_to_string(pid_file).unwrap();
    let rootfs = b.join("rootfs");
    let read = |file: PathBuf| read_state(&file, "hooked");
    for (file, status) in [
        (h.dir.join("prestart.json"), "creating"),
        (h.dir.join("create-runtime.json"), "creating"),
        (rootfs.join("create-container.json"), "creating"),
    ] {
        let state = read(file);
        assert_eq!(state["status"], status, "{state}");
        assert_eq!(state["pid"].as_i64().unwrap().to_string(), pid);
    }
    assert!(!rootfs.join("start-container.json").exists());
    assert!(
        rt.run(&["start", "hooked"]).status.success(),
        "{}",
        rt.last_error()
    );
    // As the spec defines each phase's state: the host's pid of the init while it may run.
    for (file, status) in [
        (rootfs.join("start-container.json"), "created"),
        (h.dir.join("poststart.json"), "running"),
    ] {
        let state = read(file);
        assert_eq!(state["status"], status, "{state}");
        assert_eq!(state["pid"].as_i64().unwrap().to_string(), pid);
    }
    let warning = fs::read_to_string(&rt.log).unwrap();
    assert!(
        warning.lines().any(|l| l.contains("\"level\":\"warning\"")
            && l.contains("poststart hook /bin/false")),
        "{warning}"
    );
    // Both container hooks ran in the container's mount namespace.
    let container_mnt = fs::read_link(format!("/proc/{pid}/ns/mnt")).unwrap();
    for name in ["create-container", "start-container"] {
        let seen = fs::read_to_string(rootfs.join(format!("{name}.mnt"))).unwrap();
        assert_eq!(seen.trim(), container_mnt.to_string_lossy(), "{name}");
    }
    assert!(rt.run(&["delete", "--force", "hooked"]).status.success());
    let poststop = read(h.dir.join("poststop.json"));
    assert_eq!(poststop["status"], "stopped");
    assert!(
        poststop.get("pid").is_none(),
        "a stopped state has no pid: {poststop}"
    );

    // A process that exits at once: poststart still sees it started (running, its pid), not
    // whatever it is doing by the time the hook runs.
    fs::remove_file(h.dir.join("poststart.json")).unwrap();
    let short = bundle(&h, "short-hooked", &["true"], |c| {
        c["hooks"] = json!({"poststart": [host_hook("poststart")]});
    });
    let (out, _, pid_file) = rt.create(&short, "short");
    assert!(out.status.success(), "create: {}", rt.last_error());
    let pid = fs::read_to_string(pid_file).unwrap();
    assert!(rt.run(&["start", "short"]).status.success());
    let poststart = read_state(&h.dir.join("poststart.json"), "short");
    assert_eq!(poststart["status"], "running", "{poststart}");
    assert_eq!(poststart["pid"].as_i64().unwrap().to_string(), pid);
    assert!(rt.run(&["delete", "--force", "short"]).status.success());

    let failing = bundle(&h, "failing-hook", &["sleep", "1000"], |c| {
        c["hooks"] = json!({"createContainer": [{"path": "/bin/false"}]});
    });
    let (out, _, _) = rt.create(&failing, "failing");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        rt.last_error()
            .contains("createContainer hook \"/bin/false\""),
        "{}",
        rt.last_error()
    );
    assert!(rt.leftovers().is_empty(), "{:?}", rt.leftovers());
    wait_for("range released", || h.ranges_in_use() == 0);
}

#[test]
fn bad_input_fails_with_a_named_message_and_leaves_nothing() {
    let _hybrid = hybrid_host();
    let h = Harness::start(HarnessOptions::default());
    let rt = Runtime::new(&h);
    // With a namespaced sysctl: the runtime's writer sets it in the container's namespaces.
    let ok = bundle(&h, "ok", &["sleep", "1000"], |c| {
        c["linux"]["sysctl"] = json!({"net.ipv4.ip_forward": "1"})
    });
    let cases: Vec<(PathBuf, &str)> = vec![
        (
            // Namespaced by its name, but no such file: the writer names the key and the errno.
            bundle(&h, "nosysctl", &["true"], |c| {
                c["linux"]["sysctl"] = json!({"net.burrow.missing": "1"})
            }),
            "setting sysctl net.burrow.missing: ENOENT",
        ),
        (
            bundle(&h, "privileged", &["true"], |c| {
                c["linux"]["resources"] = json!({"devices": [{"allow": true, "access": "rwm"}]})
            }),
            "--privileged is not supported",
        ),
        (
            bundle(&h, "hostnet", &["true"], |c| {
                c["linux"]["namespaces"] =
                    json!([{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}]);
            }),
            "--net=host",
        ),
        (
            bundle(&h, "hostpid", &["true"], |c| {
                c["linux"]["namespaces"] = json!([{"type": "network"}, {"type": "ipc"},
                    {"type": "uts"}, {"type": "mount"}]);
            }),
            "--pid=host",
        ),
        (
            bundle(&h, "hostipc", &["true"], |c| {
                c["linux"]["namespaces"] = json!([{"type": "network"}, {"type": "pid"},
                    {"type": "uts"}, {"type": "mount"}]);
            }),
            "--ipc=host",
        ),
        (
            bundle(&h, "hostuserns", &["true"], |c| {
                c["linux"]["namespaces"]
                    .as_array_mut()
                    .unwrap()
                    .push(json!({"type": "user", "path": "/proc/self/ns/user"}));
            }),
            "--userns=host) cannot be shared",
        ),
        (
            bundle(&h, "norootfs", &["true"], |c| {
                c["root"]["path"] = json!("missing")
            }),
            "does not exist",
        ),
        (
            bundle(&h, "noargs", &["true"], |c| {
                c["process"]["args"] = json!([])
            }),
            "process.args is empty",
        ),
        (
            bundle(&h, "manybinds", &["true"], |c| {
                let binds = (0..47).map(|i| {
                    json!({"destination": format!("/mnt/b{i}"), "type": "bind",
                           "source": "/etc/hostname", "options": ["rbind", "ro"]})
                });
                c["mounts"].as_array_mut().unwrap().extend(binds);
            }),
            "47 bind mounts: a container can have at most 46",
        ),
    ];
    for (dir, message) in cases {
        let (out, _, _) = rt.create(&dir, "bad");
        assert_eq!(out.status.code(), Some(1), "{} was accepted", dir.display());
        assert!(
            rt.last_error().contains(message),
            "{}: {}",
            dir.display(),
            rt.last_error()
        );
    }
    let malformed = h.dir.join("malformed");
    fs::create_dir_all(malformed.join("rootfs")).unwrap();
    fs::write(malformed.join("config.json"), "{not json").unwrap();
    assert_eq!(rt.create(&malformed, "bad").0.status.code(), Some(1));
    assert!(
        rt.last_error().contains("config.json is invalid"),
        "{}",
        rt.last_error()
    );
    fs::remove_file(malformed.join("config.json")).unwrap();
    assert_eq!(rt.create(&malformed, "bad").0.status.code(), Some(1));
    assert!(
        rt.last_error().contains("config.json is missing"),
        "{}",
        rt.last_error()
    );
    assert!(
        rt.leftovers().is_empty(),
        "a failed create left {:?}",
        rt.leftovers()
    );
    wait_for("no range left", || h.ranges_in_use() == 0);

    assert!(
        rt.create(&ok, "dup").0.status.success(),
        "{}",
        rt.last_error()
    );
    assert_eq!(rt.create(&ok, "dup").0.status.code(), Some(1));
    assert!(
        rt.last_error().contains("already exists"),
        "{}",
        rt.last_error()
    );
    assert_eq!(rt.run(&["kill", "dup", "SIGNOPE"]).status.code(), Some(1));
    assert!(
        rt.last_error().contains("invalid signal"),
        "{}",
        rt.last_error()
    );
    for args in [
        &["state", "ghost"][..],
        &["start", "ghost"],
        &["kill", "ghost", "9"],
        &["delete", "ghost"],
    ] {
        assert_eq!(rt.run(args).status.code(), Some(1), "{args:?}");
        assert!(
            rt.last_error().contains("does not exist"),
            "{args:?}: {}",
            rt.last_error()
        );
    }
    assert_eq!(rt.run(&["state", "../x"]).status.code(), Some(1));
    assert!(
        rt.last_error().contains("invalid container id"),
        "{}",
        rt.last_error()
    );
    // Unknown global flags (as Docker may prepend) are tolerated.
    let out = rt
        .cmd()
        .args(["--some-new-flag", "state", "dup"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", rt.last_error());
    assert!(rt.run(&["delete", "dup"]).status.success());
    assert!(rt.leftovers().is_empty());
    wait_for("no range left", || h.ranges_in_use() == 0);

    // `features`, as containerd reads it.
    let features: Value = serde_json::from_slice(&rt.run(&["features"]).stdout).unwrap();
    let mut hooks: Vec<&str> = features["hooks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h.as_str().unwrap())
        .collect();
    hooks.sort();
    assert_eq!(
        hooks.join(" "),
        "createContainer createRuntime poststart poststop prestart startContainer",
        "{features}"
    );
    assert_eq!(
        features["linux"]["mountExtensions"]["idmap"]["enabled"],
        true
    );
    assert_eq!(features["linux"]["cgroup"]["v1"], true);
    assert_eq!(features["linux"]["cgroup"]["v2"], true);
    assert!(
        features["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .contains(&json!("user")),
        "{features}"
    );
}

/// The system-container seccomp profile, from the kernel's answers: each denied call gets
/// EPERM inside, where the same probe in a plain user namespace of the host (same
/// capabilities, no filter) gets the kernel's own answer; the calls a system container needs
/// answer inside as they do there.
#[test]
fn seccomp_denies_host_wide_calls_and_allows_what_system_containers_need() {
    let _hybrid = hybrid_host();
    let h = Harness::start(HarnessOptions::default());
    let rt = Runtime::new(&h);
    let b = bundle(&h, "seccomp", &["/probe", "syscalls"], |_| {});
    let probe = bin("burrow-test-client");
    install_with_libraries(&probe, &b.join("rootfs"), "/probe");
    let (out, out_file, _) = rt.create(&b, "seccomp");
    assert!(out.status.success(), "create: {}", rt.last_error());
    let _removed_even_on_failure = ForceDelete(&rt, "seccomp");
    assert!(
        rt.run(&["start", "seccomp"]).status.success(),
        "{}",
        rt.last_error()
    );
    let inside: Value = serde_json::from_str(wait_output(&out_file, "}").trim()).unwrap();
    let control = Command::new("unshare")
        .args(["--user", "--map-root-user"])
        .arg(&probe)
        .arg("syscalls")
        .output()
        .unwrap();
    let unfiltered: Value = serde_json::from_slice(&control.stdout).unwrap();

    let denied = [
        "kexec_load",
        "kexec_file_load",
        "init_module",
        "finit_module",
        "delete_module",
        "open_by_handle_at",
        "iopl",
        "ioperm",
        "swapon",
        "swapoff",
        "acct",
        "uselib",
        "lookup_dcookie",
        "quotactl",
    ];
    let mut told_apart = vec![];
    for call in denied {
        assert_eq!(inside[call], libc::EPERM, "{call} inside: {inside}");
        if unfiltered[call] != libc::EPERM {
            told_apart.push(call);
        }
    }
    // Only the filter can explain EPERM where the kernel itself answers otherwise (EFAULT,
    // ENOSYS, 0 ...). open_by_handle_at with no handle, Q_SYNC and lookup_dcookie (gone from
    // the kernel) do on any kernel; this one also lacks kexec and modules, and the capability
    // checks that answer EPERM on its own come after the filter anyway.
    for call in ["open_by_handle_at", "quotactl", "lookup_dcookie"] {
        assert!(
            told_apart.contains(&call),
            "{call} is EPERM without the filter too: {unfiltered}"
        );
    }
    eprintln!("denied calls told apart from the kernel's own answer: {told_apart:?}");
    for call in ["unshare", "setns", "keyctl", "mount", "umount2"] {
        assert_eq!(
            inside[call], unfiltered[call],
            "{call}: {inside} vs {unfiltered}"
        );
        assert_ne!(inside[call], libc::EPERM, "{call} denied inside");
    }
}

/// `root.readonly` with a bind mount on a path the image lacks (as CRI binds /etc/resolv.conf
/// into a pause image): the mount point is made, then the rootfs is read-only, and its root
/// cannot make it writable again; the bind itself stays writable.
#[test]
fn a_read_only_rootfs_still_gets_its_mount_points() {
    let _hybrid = hybrid_host();
    let h = Harness::start(HarnessOptions::default());
    let source = h.dir.join("resolv.conf");
    fs::write(&source, "nameserver 192.0.2.53\n").unwrap();
    let script = "cat /etc/resolv.conf; touch /new 2>/dev/null && echo root=writable || echo root=read-only; \
        mount -o remount,rw / 2>/dev/null && touch /new && echo remount=writable || echo remount=refused";
    let b = bundle(&h, "ro", &["sh", "-c", script], |c| {
        c["root"]["readonly"] = json!(true);
        c["mounts"].as_array_mut().unwrap().push(json!({
            "destination": "/etc/resolv.conf", "type": "bind",
            "source": source, "options": ["rbind", "rw"]
        }));
    });
    let out = Command::new(bin("burrow"))
        .env("DBUS_SYSTEM_BUS_ADDRESS", &h.address)
        .args(["--root", &h.dir.join("ro-state").display().to_string()])
        .args(["run", "--bundle", &b.display().to_string(), "ro"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = burrow_tests::all_output(&out);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("nameserver 192.0.2.53"), "{text}");
    assert!(
        text.contains("root=read-only") && text.contains("remount=refused"),
        "{text}"
    );
}
