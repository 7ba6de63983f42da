//! The `burrow` runtime CLI against the real helpers, bus, polkitd and kernel, driven the way
//! containerd's shim drives runc: create (pid file, log file in JSON), state, start, kill,
//! delete, run. Run as root (`make test`). The OCI spec's fields one by one are in
//! `conformance.rs`; Docker and containerd in `docker.rs` and `kubernetes.rs`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use burrow_tests::runtime::{bundle, wait_output, Runtime};
use burrow_tests::{bin, install_with_libraries, wait_for, Harness, HarnessOptions};
use serde_json::{json, Value};

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

/// `pid` is in the cgroup `path` of every hierarchy, v1 and v2.
fn assert_in_every_hierarchy(pid: &str, path: &str) {
    let membership = fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    assert!(
        membership.lines().count() > 1
            && membership.lines().all(|l| l.ends_with(&format!(":{path}"))),
        "{pid}: {membership}"
    );
}

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
    // The init is in the container's cgroup in every hierarchy (its intermediate started in
    // the cgroup2 one and moved itself into the v1 ones).
    assert_in_every_hierarchy(&pid_text, "/burrow-test/life");

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
    // The exec'd process too (its joiner started in the cgroup2 one and moved itself).
    for pid in &pids {
        assert_in_every_hierarchy(&pid.to_string(), "/burrow-test/life");
    }
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
    // A container that runs past a second: `run` gave create's bus connection back meanwhile
    // and deletes on a new one.
    let long = bundle(&h, "long", &["sh", "-c", "sleep 2; exit 4"], |_| {});
    let out = rt.run(&["run", "--bundle", &long.display().to_string(), "long"]);
    assert_eq!(out.status.code(), Some(4), "{}", rt.last_error());
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

/// The CLI talks to the helpers only over a unix socket, whose credentials name the caller: a
/// system bus address of another transport is refused by name, before anything is done.
#[test]
fn a_system_bus_that_is_no_unix_socket_is_refused() {
    let root = std::env::temp_dir().join(format!("burrow-tcp-bus-{}", std::process::id()));
    let out = Command::new(bin("burrow"))
        .arg("--root")
        .arg(&root)
        .arg("gc")
        .env("DBUS_SYSTEM_BUS_ADDRESS", "tcp:host=127.0.0.1,port=9")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("the system bus address tcp:host=127.0.0.1,port=9 is no unix socket"),
        "{stderr}"
    );
    let _ = fs::remove_dir_all(&root);
}
