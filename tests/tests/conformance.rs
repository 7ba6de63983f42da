//! OCI runtime spec conformance: every field of config.json is applied as the spec says (and
//! as runc applies it, on the same rootfs, where runc is the reference) or refused with a
//! named error. One bundle per field, checked from inside the container (its mountinfo,
//! `/proc/self/status`, `oom_score_adj`, ...) and from the runtime's output and the host's
//! cgroup files. Docker's resource and device flags on top of these are in `docker.rs`; the
//! refusals that guard the host (devices, host namespaces, masks) in `attacks.rs`. Run as
//! root (`make test`).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use burrow_tests::runtime::{bundle, Runtime};
use burrow_tests::{
    bin, busybox_rootfs, install_with_libraries, wait_for, Harness, HarnessOptions,
};
use serde_json::{json, Value};

/// A change to a config.json, applied to Burrow's and runc's alike.
type SpecEdit = Box<dyn Fn(&mut Value)>;

/// What a field's probe must print under Burrow.
enum Reference {
    /// What runc prints for the same bundle, which must contain this (so the comparison
    /// compares something).
    Runc(String),
    /// Exactly this: runc 1.1 (Debian 12's) does not know the field, the spec is the reference.
    Spec(String),
}

/// One field of config.json, alone in its bundle: the shell probe that shows it from inside,
/// and what the probe must print.
struct Field {
    name: &'static str,
    probe: &'static str,
    edit: SpecEdit,
    reference: Reference,
}

fn field(
    name: &'static str,
    probe: &'static str,
    edit: impl Fn(&mut Value) + 'static,
    reference: Reference,
) -> Field {
    Field {
        name,
        probe,
        edit: Box::new(edit),
        reference,
    }
}

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

/// A container id (and directory name) for a field's name.
fn id_of(name: &str) -> String {
    name.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect()
}

/// The fields a process sees, one bundle each, as Burrow applies them.
fn process_fields() -> Vec<Field> {
    use Reference::*;
    let caps = json!(["CAP_NET_BIND_SERVICE", "CAP_KILL"]);
    vec![
        field(
            "hostname",
            "hostname",
            |c| c["hostname"] = json!("conformance"),
            Runc("conformance\n".into()),
        ),
        // Empty: the host's name stays, as runc leaves it.
        field(
            "hostname (empty)",
            "hostname",
            |c| c["hostname"] = json!(""),
            Runc(host_name()),
        ),
        field(
            "process.args",
            "",
            |c| c["process"]["args"] = json!(["echo", "one  two", "three"]),
            Runc("one  two three\n".into()),
        ),
        field(
            "process.env",
            "echo \"$FOO|$PATH\"",
            |c| c["process"]["env"] = json!(["PATH=/bin", "FOO=bar baz"]),
            Runc("bar baz|/bin\n".into()),
        ),
        field(
            "process.cwd",
            "pwd",
            |c| c["process"]["cwd"] = json!("/tmp"),
            Runc("/tmp\n".into()),
        ),
        field(
            "process.user.uid, gid",
            "id -u; id -g",
            |c| c["process"]["user"] = json!({"uid": 1000, "gid": 1001}),
            Runc("1000\n1001\n".into()),
        ),
        field(
            "process.user.additionalGids",
            "id -G",
            |c| c["process"]["user"] = json!({"uid": 0, "gid": 0, "additionalGids": [10, 20]}),
            Runc("0 10 20\n".into()),
        ),
        field(
            "process.user.umask",
            "umask",
            |c| c["process"]["user"]["umask"] = json!(0o027),
            Runc("0027\n".into()),
        ),
        field(
            "process.oomScoreAdj",
            "cat /proc/self/oom_score_adj",
            |c| c["process"]["oomScoreAdj"] = json!(300),
            Runc("300\n".into()),
        ),
        field(
            "process.noNewPrivileges",
            "grep NoNewPrivs /proc/self/status",
            |c| c["process"]["noNewPrivileges"] = json!(true),
            Runc("NoNewPrivs:\t1\n".into()),
        ),
        field(
            "process.rlimits",
            "ulimit -Sn; ulimit -Hn",
            |c| {
                c["process"]["rlimits"] =
                    json!([{"type": "RLIMIT_NOFILE", "hard": 512, "soft": 256}])
            },
            Runc("256\n512\n".into()),
        ),
        field(
            "process.capabilities (non-root user)",
            "grep -E '^Cap(Inh|Prm|Eff|Bnd|Amb)' /proc/self/status",
            move |c| {
                c["process"]["user"] = json!({"uid": 1000, "gid": 1000});
                c["process"]["capabilities"] = json!({
                    "bounding": ["CAP_NET_BIND_SERVICE", "CAP_KILL", "CAP_CHOWN"],
                    "effective": caps, "permitted": caps, "inheritable": caps, "ambient": caps,
                });
            },
            Runc("CapEff:\t0000000000000420\nCapBnd:\t0000000000000421\n".into()),
        ),
    ]
}

/// The fields of the container around the process, one bundle each.
fn container_fields() -> Vec<Field> {
    use Reference::*;
    let writable = |path: &'static str| -> &'static str {
        match path {
            "/" => "touch /probe 2>/dev/null && echo writable || echo read-only",
            _ => "touch /tmp/probe 2>/dev/null && echo writable || echo read-only",
        }
    };
    vec![
        field(
            "root.readonly",
            writable("/"),
            |c| c["root"]["readonly"] = json!(true),
            Runc("read-only\n".into()),
        ),
        field(
            "linux.readonlyPaths",
            writable("/tmp"),
            |c| c["linux"]["readonlyPaths"] = json!(["/tmp"]),
            Runc("read-only\n".into()),
        ),
        // Exactly as given: only /etc/hostname is masked, not /proc/timer_list (masked by default).
        field(
            "linux.maskedPaths",
            "wc -c < /etc/hostname; stat -c %F /proc/timer_list",
            |c| c["linux"]["maskedPaths"] = json!(["/etc/hostname"]),
            Runc("0\nregular empty file\n".into()),
        ),
        field(
            "linux.sysctl",
            "cat /proc/sys/net/ipv4/ip_forward /proc/sys/kernel/shmmni",
            |c| c["linux"]["sysctl"] = json!({"net.ipv4.ip_forward": "1", "kernel.shmmni": "1000"}),
            Runc("1\n1000\n".into()),
        ),
        field(
            "mounts (tmpfs with options)",
            // The tmpfs belongs to the container's root, which the kernel shows as its host ID
            // (Burrow's user namespace, in the README's table): without uid= and gid=.
            "grep ' /data ' /proc/self/mounts | sed -E 's/,(uid|gid)=[0-9]+//g'",
            |c| {
                c["mounts"]
                    .as_array_mut()
                    .unwrap()
                    .push(json!({"destination": "/data",
                "type": "tmpfs", "source": "tmpfs",
                "options": ["nosuid", "noexec", "nodev", "noatime", "size=1m", "mode=700"]}))
            },
            Runc(
                "tmpfs /data tmpfs rw,nosuid,nodev,noexec,noatime,size=1024k,mode=700 0 0\n".into(),
            ),
        ),
        field(
            "mounts (read-only bind)",
            "cat /data/hostname; touch /data/x 2>/dev/null || echo read-only",
            |c| {
                c["mounts"]
                    .as_array_mut()
                    .unwrap()
                    .push(json!({"destination": "/data",
                "type": "bind", "source": "/etc", "options": ["rbind", "ro"]}))
            },
            Runc("read-only\n".into()),
        ),
    ]
}

/// Fields runc 1.1 (Debian 12's) does not know, or knows only as newer runcs do: what the spec
/// says they do, shown from inside.
fn newer_fields() -> Vec<Field> {
    use Reference::*;
    vec![
        field(
            "domainname",
            "cat /proc/sys/kernel/domainname",
            |c| c["domainname"] = json!("example.org"),
            // runc 1.1 leaves it "(none)".
            Spec("example.org\n".into()),
        ),
        field(
            "linux.personality",
            "uname -m; cat /proc/self/personality",
            |c| c["linux"]["personality"] = json!({"domain": "LINUX32"}),
            Spec("i686\n00000008\n".into()),
        ),
        field(
            "process.ioPriority",
            "ionice",
            |c| c["process"]["ioPriority"] = json!({"class": "IOPRIO_CLASS_BE", "priority": 6}),
            Spec("best-effort: prio 6\n".into()),
        ),
        // SCHED_BATCH is policy 3; nice 5 is priority 125.
        field(
            "process.scheduler",
            "awk '/^(policy|prio) / {print $1, $3}' /proc/self/sched",
            |c| c["process"]["scheduler"] = json!({"policy": "SCHED_BATCH", "nice": 5}),
            Spec("policy 3\nprio 125\n".into()),
        ),
        field(
            "linux.timeOffsets",
            "awk '{print $1, $2, $3}' /proc/self/timens_offsets",
            |c| {
                c["linux"]["namespaces"]
                    .as_array_mut()
                    .unwrap()
                    .push(json!({"type": "time"}));
                c["linux"]["timeOffsets"] = json!({
                    "monotonic": {"secs": 1000, "nanosecs": 0},
                    "boottime": {"secs": 86400, "nanosecs": 5},
                });
            },
            Spec("monotonic 1000 0\nboottime 86400 5\n".into()),
        ),
        field(
            "linux.memoryPolicy",
            "grep -m1 -o ' bind:0 ' /proc/self/numa_maps",
            |c| c["linux"]["memoryPolicy"] = json!({"mode": "MPOL_BIND", "nodes": "0"}),
            Spec(" bind:0 \n".into()),
        ),
    ]
}

fn host_name() -> String {
    String::from_utf8(Command::new("hostname").output().unwrap().stdout).unwrap()
}

/// Field by field, one bundle each, the container's process shows what the field asks for, as
/// runc shows it on the same rootfs (or as the spec says, for fields runc 1.1 does not know).
/// Where Burrow decides otherwise (root's capabilities, the ID mappings, seccomp), the
/// README's table says so and the field is not here.
#[test]
fn each_field_is_applied_as_runc_applies_it() {
    let h = Harness::start(HarnessOptions::default());
    let rt = Runtime::new(&h);
    let mut wrong = vec![];
    let fields = process_fields()
        .into_iter()
        .chain(container_fields())
        .chain(newer_fields());
    for f in fields {
        let id = id_of(f.name);
        let b = bundle(&h, &id, &["sh", "-c", f.probe], |c| (f.edit)(c));
        let burrow = rt.output_of_run(&b, &id);
        let expected = match &f.reference {
            Reference::Runc(known) => {
                let runc = runc_output(&h, &id, f.probe, f.edit.as_ref());
                assert!(runc.contains(known.as_str()), "runc, {}: {runc:?}", f.name);
                runc
            }
            Reference::Spec(exactly) => exactly.clone(),
        };
        if burrow != expected {
            wrong.push(format!("{}: {burrow:?}, expected {expected:?}", f.name));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    wait_for("ranges released", || h.ranges_in_use() == 0);
}

/// A field Burrow cannot honour on this host, or never honours, alone in its bundle: `create`
/// fails with a message that names the field and why, and leaves nothing behind.
#[test]
fn each_field_burrow_cannot_honour_is_refused_by_name() {
    let h = Harness::start(HarnessOptions::default());
    let rt = Runtime::new(&h);
    let mut refusals: Vec<(&str, SpecEdit, &str)> = vec![
        (
            "process.capabilities (unknown name)",
            Box::new(|c| c["process"]["capabilities"]["bounding"] = json!(["CAP_BOGUS"])),
            "CAP_BOGUS",
        ),
        (
            "linux.rootfsPropagation",
            Box::new(|c| c["linux"]["rootfsPropagation"] = json!("rslave")),
            "linux.rootfsPropagation \"rslave\": a Burrow container's rootfs is always private",
        ),
        (
            "linux.netDevices",
            Box::new(|c| c["linux"]["netDevices"] = json!({"eth1": {"name": "eth1"}})),
            "refused: linux.netDevices: moving host network interfaces",
        ),
        (
            "linux.intelRdt",
            Box::new(|c| c["linux"]["intelRdt"] = json!({"closID": "burrow"})),
            "refused: linux.intelRdt:",
        ),
        (
            "linux.mountLabel",
            Box::new(|c| c["linux"]["mountLabel"] = json!("system_u:object_r:container_file_t:s0")),
            "refused: linux.mountLabel:",
        ),
        (
            "linux.personality.flags",
            Box::new(|c| {
                c["linux"]["personality"] =
                    json!({"domain": "LINUX", "flags": ["ADDR_NO_RANDOMIZE"]})
            }),
            "refused: linux.personality.flags:",
        ),
        (
            "linux.timeOffsets (no time namespace)",
            Box::new(|c| c["linux"]["timeOffsets"] = json!({"boottime": {"secs": 1}})),
            "refused: linux.timeOffsets: offsets need a new time namespace",
        ),
        (
            "mounts[].uidMappings",
            Box::new(|c| {
                c["mounts"]
                    .as_array_mut()
                    .unwrap()
                    .push(json!({"destination": "/data",
                    "type": "bind", "source": "/etc", "options": ["rbind"],
                    "uidMappings": [{"containerID": 0, "hostID": 1000, "size": 1}],
                    "gidMappings": [{"containerID": 0, "hostID": 1000, "size": 1}]}))
            }),
            "refused: mounts[].uidMappings:",
        ),
        (
            "mounts[].options (unknown)",
            Box::new(|c| {
                c["mounts"]
                    .as_array_mut()
                    .unwrap()
                    .push(json!({"destination": "/data",
                    "type": "bind", "source": "/etc", "options": ["rbind", "rro"]}))
            }),
            "mount /data: unsupported option \"rro\"",
        ),
        (
            "process.commandLine",
            Box::new(|c| c["process"]["commandLine"] = json!("cmd.exe /c true")),
            "refused: process.commandLine:",
        ),
        (
            "windows",
            Box::new(|c| c["windows"] = json!({"layerFolders": []})),
            "refused: windows: Burrow runs Linux containers",
        ),
        (
            "vm",
            Box::new(|c| c["vm"] = json!({"kernel": {"path": "/vmlinuz"}})),
            "refused: vm:",
        ),
        (
            "linux.resources.memory.useHierarchy",
            Box::new(|c| c["linux"]["resources"] = json!({"memory": {"useHierarchy": false}})),
            "linux.resources.memory.useHierarchy",
        ),
        (
            "linux.resources.blockIO.leafWeight",
            Box::new(|c| c["linux"]["resources"] = json!({"blockIO": {"leafWeight": 500}})),
            "linux.resources.blockIO.leafWeight",
        ),
    ];
    if !Path::new("/sys/module/apparmor/parameters/enabled").exists() {
        refusals.push((
            "process.apparmorProfile",
            Box::new(|c| c["process"]["apparmorProfile"] = json!("docker-default")),
            "process.apparmorProfile is \"docker-default\", but this host has no AppArmor",
        ));
    }
    if !Path::new("/sys/fs/selinux/enforce").exists() {
        refusals.push((
            "process.selinuxLabel",
            Box::new(|c| c["process"]["selinuxLabel"] = json!("system_u:system_r:container_t:s0")),
            "but this host has no SELinux",
        ));
    }
    let mut wrong = vec![];
    for (name, edit, says) in refusals {
        let id = id_of(name);
        let b = bundle(&h, &id, &["true"], |c| edit(c));
        let (out, _, _) = rt.create(&b, &id);
        let error = rt.last_error();
        if out.status.code() != Some(1) || !error.contains(says) {
            wrong.push(format!("{name}: {:?}, {error:?}", out.status.code()));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    assert!(rt.leftovers().is_empty(), "{:?}", rt.leftovers());
    wait_for("ranges released", || h.ranges_in_use() == 0);
}

/// A harness whose devd has `fuse` on its allowlist, and that list's file, named after the
/// test (tests run in parallel), which the caller removes.
fn harness_allowing_fuse(test: &str) -> (Harness, PathBuf) {
    let allowlist =
        std::env::temp_dir().join(format!("burrow-{test}-allow-{}", std::process::id()));
    fs::write(&allowlist, "fuse\n").unwrap();
    let h = Harness::start(HarnessOptions {
        devd_args: vec!["--allowlist".into(), allowlist.display().to_string()],
        ..Default::default()
    });
    (h, allowlist)
}

/// Podman's way of using /dev/fuse (`docker run --device /dev/fuse` for a system container):
/// fuse-overlayfs mounts an overlay inside the container, whose root writes through it into
/// the upper directory, and unmounts it.
#[test]
fn fuse_overlayfs_mounts_inside_a_system_container() {
    let (h, allowlist) = harness_allowing_fuse("fuse-overlayfs");
    let rt = Runtime::new(&h);
    let script = "mkdir -p /o/lower /o/upper /o/work /o/merged && echo lower > /o/lower/file && \
        fuse-overlayfs -o lowerdir=/o/lower,upperdir=/o/upper,workdir=/o/work /o/merged && \
        grep -c ' /o/merged fuse.fuse-overlayfs ' /proc/self/mounts && cat /o/merged/file && \
        echo written > /o/merged/new && cat /o/upper/new && umount /o/merged && echo unmounted";
    let b = bundle(&h, "fuse-overlayfs", &["sh", "-c", script], |c| {
        c["linux"]["devices"] = json!([{"path": "/dev/fuse", "type": "c", "major": 10,
            "minor": 229, "fileMode": 0o666, "uid": 0, "gid": 0}]);
    });
    install_with_libraries(
        Path::new("/usr/bin/fuse-overlayfs"),
        &b.join("rootfs"),
        "/bin/fuse-overlayfs",
    );
    let output = rt.output_of_run(&b, "fuse-overlayfs");
    // After fuse-overlayfs's warnings (it ignores mount options it does not know).
    assert!(
        output.ends_with("\n1\nlower\nwritten\nunmounted\n")
            || output == "1\nlower\nwritten\nunmounted\n",
        "{output}"
    );
    let _ = fs::remove_file(&allowlist);
    wait_for("range released", || h.ranges_in_use() == 0);
}

/// Mounts are made in the spec's order, devd's /dev at its place among them (Docker lists it
/// second). The container's namespace is a copy (its mounts are locked so), which the kernel
/// lists depth first: /proc/self/mountinfo inside has the spec's mounts in the depth-first
/// order of the spec's list (each mount's children in their listed order), which is the
/// spec's own order whenever the spec lists a mount's children right after it.
#[test]
fn mounts_are_made_in_the_specs_order() {
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
        // Earlier runs' harnesses (other state roots) may have left theirs.
        let slots = burrow_tests::data_slots(&format!("-{id}"));
        let (out, _, _) = rt.create(&b, &id);
        assert_eq!(out.status.code(), Some(1), "{resources} was accepted");
        assert!(
            rt.last_error().contains(says),
            "{resources}: {}",
            rt.last_error()
        );
        assert_eq!(
            burrow_tests::data_slots(&format!("-{id}")),
            slots,
            "the refused create left its slot"
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

/// A `linux.devices` entry on devd's allowlist: its node is in the container's /dev with the
/// spec's mode and owner (the container's IDs), and the container's cgroup lets it be opened.
#[test]
fn an_allowlisted_device_gets_the_specs_mode_and_owner() {
    let (h, allowlist) = harness_allowing_fuse("allowlisted-device");
    let rt = Runtime::new(&h);
    let script = "ls -ln /dev/fuse; exec 3<>/dev/fuse && echo opened";
    let b = bundle(&h, "fuse", &["sh", "-c", script], |c| {
        c["linux"]["devices"] = json!([{"path": "/dev/fuse", "type": "c", "major": 10,
            "minor": 229, "fileMode": 0o640, "uid": 1000, "gid": 1001}]);
    });
    let (out, out_file, _) = rt.create(&b, "fuse");
    assert!(out.status.success(), "create: {}", rt.last_error());
    assert!(
        rt.run(&["start", "fuse"]).status.success(),
        "start: {}",
        rt.last_error()
    );
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

/// The state a hook wrote to `file`, which must be container `id`'s.
fn read_state(file: &Path, id: &str) -> Value {
    wait_for(&format!("{}", file.display()), || file.exists());
    let state: Value = serde_json::from_str(&fs::read_to_string(file).unwrap()).unwrap();
    assert_eq!(state["id"], id, "{state}");
    state
}

/// `state` of a created container with annotations, as runc prints it for the same bundle:
/// the same keys, and the same values but for the pid, the creation time, the paths and the
/// spec version.
#[test]
fn state_is_printed_as_runc_prints_it() {
    let h = Harness::start(HarnessOptions::default());
    let rt = Runtime::new(&h);
    let annotate = |c: &mut Value| {
        c["annotations"] =
            json!({"org.example.key": "value", "io.kubernetes.cri.container-type": "container"})
    };
    let runc_dir = h.dir.join("runc-state");
    fs::create_dir_all(&runc_dir).unwrap();
    busybox_rootfs(&runc_dir.join("rootfs"), None);
    burrow_tests::run(
        Command::new("runc")
            .args(["spec", "--bundle"])
            .arg(&runc_dir),
    );
    let config = runc_dir.join("config.json");
    let mut spec: Value = serde_json::from_str(&fs::read_to_string(&config).unwrap()).unwrap();
    spec["process"]["terminal"] = json!(false);
    annotate(&mut spec);
    fs::write(&config, spec.to_string()).unwrap();
    // The container's stdio is a file: it outlives `runc create`.
    let stdio = fs::File::create(runc_dir.join("stdio")).unwrap();
    let runc = |args: &[&str]| {
        let mut cmd = Command::new("runc");
        cmd.arg("--root").arg(h.dir.join("runc-root")).args(args);
        if args[0] == "create" {
            cmd.stdout(stdio.try_clone().unwrap())
                .stderr(stdio.try_clone().unwrap());
        }
        let out = cmd.stdin(Stdio::null()).output().unwrap();
        assert!(
            out.status.success(),
            "runc {args:?}: {}",
            burrow_tests::all_output(&out)
        );
        out.stdout
    };
    runc(&[
        "create",
        "--bundle",
        &runc_dir.display().to_string(),
        "state",
    ]);
    let expected: Value = serde_json::from_slice(&runc(&["state", "state"])).unwrap();
    runc(&["delete", "--force", "state"]);

    let b = bundle(&h, "state", &["sleep", "1000"], annotate);
    let (out, _, _) = rt.create(&b, "state");
    assert!(out.status.success(), "create: {}", rt.last_error());
    let state = rt.state("state");
    assert!(rt.run(&["delete", "--force", "state"]).status.success());
    let keys = |v: &Value| -> Vec<String> { v.as_object().unwrap().keys().cloned().collect() };
    assert_eq!(keys(&state), keys(&expected), "{state}\n{expected}");
    // ociVersion is each runtime's own version of the spec (runc 1.1's: 1.0.2-dev).
    assert!(
        state["ociVersion"]
            .as_str()
            .is_some_and(|v| v.starts_with("1.")),
        "{state}"
    );
    for key in ["id", "status", "annotations", "owner"] {
        assert_eq!(state[key], expected[key], "{key}: {state}\n{expected}");
    }
    assert_eq!(state["bundle"], b.display().to_string());
    assert!(state["pid"].as_i64().is_some_and(|p| p > 0), "{state}");
    wait_for("range released", || h.ranges_in_use() == 0);
}

/// `exec --process` applies the process's own fields, as the spec says of an exec'd process:
/// `execCPUAffinity` (its final CPUs, once in the container's cgroup), the scheduler, the user
/// and the environment; and it joins the container's time namespace.
#[test]
fn exec_applies_the_process_fields() {
    let h = Harness::start(HarnessOptions::default());
    let rt = Runtime::new(&h);
    let b = bundle(&h, "exec-fields", &["sleep", "1000"], |c| {
        c["linux"]["namespaces"]
            .as_array_mut()
            .unwrap()
            .push(json!({"type": "time"}));
        c["linux"]["timeOffsets"] = json!({"boottime": {"secs": 86400, "nanosecs": 0}});
    });
    let (out, _, _) = rt.create(&b, "exec-fields");
    assert!(out.status.success(), "create: {}", rt.last_error());
    assert!(rt.run(&["start", "exec-fields"]).status.success());
    let process = b.join("process.json");
    let probe = "grep Cpus_allowed_list /proc/self/status; \
        awk '/^policy / {print $1, $3}' /proc/self/sched; id -u; echo $FOO; \
        awk '/boottime/ {print $2}' /proc/self/timens_offsets";
    fs::write(
        &process,
        json!({
            "args": ["sh", "-c", probe], "cwd": "/", "env": ["PATH=/bin", "FOO=exec"],
            "user": {"uid": 1000, "gid": 1000},
            "execCPUAffinity": {"final": "0"},
            "scheduler": {"policy": "SCHED_IDLE"},
        })
        .to_string(),
    )
    .unwrap();
    let exec = rt.run(&[
        "exec",
        "--process",
        &process.display().to_string(),
        "exec-fields",
    ]);
    assert!(exec.status.success(), "exec: {}", rt.last_error());
    assert_eq!(
        String::from_utf8_lossy(&exec.stdout),
        "Cpus_allowed_list:\t0\npolicy 5\n1000\nexec\n86400\n"
    );
    assert!(rt
        .run(&["delete", "--force", "exec-fields"])
        .status
        .success());
    wait_for("range released", || h.ranges_in_use() == 0);
}

/// `process.consoleSize` with a terminal: the pty's master, received on `--console-socket` as
/// containerd's shim receives it, reads what `stty size` printed on the slave.
#[test]
fn console_size_is_the_terminals() {
    let h = Harness::start(HarnessOptions::default());
    let rt = Runtime::new(&h);
    let socket_path = h.dir.join("console.sock");
    let listener = std::os::unix::net::UnixListener::bind(&socket_path).unwrap();
    let b = bundle(&h, "console", &["stty", "size"], |c| {
        c["process"]["terminal"] = json!(true);
        c["process"]["consoleSize"] = json!({"height": 40, "width": 100});
    });
    let created = std::thread::scope(|scope| {
        let create = scope.spawn(|| {
            rt.run(&[
                "create",
                "--bundle",
                &b.display().to_string(),
                "--console-socket",
                &socket_path.display().to_string(),
                "console",
            ])
        });
        let (stream, _) = listener.accept().unwrap();
        let master = receive_fd(&stream);
        (create.join().unwrap(), master)
    });
    let (out, master) = created;
    assert!(out.status.success(), "create: {}", rt.last_error());
    assert!(rt.run(&["start", "console"]).status.success());
    let mut text = String::new();
    let mut master = fs::File::from(master);
    let _ = std::io::Read::read_to_string(&mut master, &mut text);
    assert_eq!(text.trim(), "40 100");
    // It holds the container's devpts, and so its user namespace and range.
    drop(master);
    wait_for("stopped", || rt.state("console")["status"] == "stopped");
    assert!(rt.run(&["delete", "console"]).status.success());
    wait_for("range released", || h.ranges_in_use() == 0);
}

/// The one fd a runtime sends on its console socket.
fn receive_fd(stream: &std::os::unix::net::UnixStream) -> std::os::fd::OwnedFd {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    use std::os::fd::{AsRawFd, FromRawFd};
    let mut buf = [0u8; 4096];
    let mut iov = [std::io::IoSliceMut::new(&mut buf)];
    let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
    let msg = recvmsg::<()>(
        stream.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::empty(),
    )
    .unwrap();
    for cmsg in msg.cmsgs().unwrap() {
        if let ControlMessageOwned::ScmRights(fds) = cmsg {
            // SAFETY: the fd just arrived by SCM_RIGHTS: this process owns it alone.
            return unsafe { std::os::fd::OwnedFd::from_raw_fd(fds[0]) };
        }
    }
    panic!("no fd on the console socket");
}

/// The hook phases whose state both runtimes pass on the host side, each hook writing its
/// stdin to `PHASE.json` in `dir`.
const HOST_HOOKS: [&str; 4] = ["prestart", "createRuntime", "poststart", "poststop"];

fn state_writing_hooks(dir: &Path) -> Value {
    let hooks: serde_json::Map<String, Value> = HOST_HOOKS
        .iter()
        .map(|phase| {
            let file = dir.join(format!("{phase}.json"));
            let hook = json!([{"path": "/bin/sh",
                "args": ["sh", "-c", format!("cat > {}", file.display())]}]);
            (phase.to_string(), hook)
        })
        .collect();
    Value::Object(hooks)
}

/// Each host-side phase's status, and whether its state has a pid, as `PHASE status pid|-`.
fn hook_states(dir: &Path) -> Vec<String> {
    HOST_HOOKS
        .iter()
        .map(|phase| {
            let file = dir.join(format!("{phase}.json"));
            let state: Value = serde_json::from_str(&fs::read_to_string(&file).unwrap())
                .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            let pid = if state["pid"].as_i64().is_some_and(|p| p > 0) {
                "pid"
            } else {
                "-"
            };
            format!("{phase} {} {pid}", state["status"].as_str().unwrap_or("?"))
        })
        .collect()
}

/// The state each host-side hook gets on stdin is runc's for the same bundle, but for
/// poststart, where runc 1.1 says `created` and the spec's lifecycle says the process runs
/// (Burrow: `running`, README's table).
#[test]
fn hook_states_are_runcs_and_the_specs() {
    let h = Harness::start(HarnessOptions::default());
    let rt = Runtime::new(&h);
    let runc_dir = h.dir.join("runc-hook-states");
    fs::create_dir_all(&runc_dir).unwrap();
    let hooks = state_writing_hooks(&runc_dir);
    runc_output(&h, "hook-states", "true", &move |c| {
        c["hooks"] = hooks.clone()
    });
    let mut expected = hook_states(&runc_dir);
    assert_eq!(
        expected[2], "poststart created pid",
        "runc changed: {expected:?}"
    );
    expected[2] = "poststart running pid".into();

    let burrow_dir = h.dir.join("burrow-hook-states");
    fs::create_dir_all(&burrow_dir).unwrap();
    let b = bundle(&h, "hook-states", &["true"], |c| {
        c["hooks"] = state_writing_hooks(&burrow_dir)
    });
    rt.output_of_run(&b, "hook-states");
    assert_eq!(hook_states(&burrow_dir), expected);
    wait_for("range released", || h.ranges_in_use() == 0);
}

/// Every OCI hook phase gets the state on stdin, in the right place: the runtime's hooks on the
/// host, createContainer (a host binary) and startContainer (one of the image) inside the
/// container. A failed poststart hook is only a warning; a failed createContainer hook fails
/// create and leaves nothing.
#[test]
fn hooks_get_the_state_on_stdin() {
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

/// A hook is waited for until it exits, however much it writes to stderr (more than a pipe
/// holds: it would block if nobody read it), and killed at its timeout even if it never reads a
/// state larger than a pipe holds: that create fails, naming the hook, and leaves nothing. A
/// failed hook's stderr is in the error.
#[test]
fn hooks_run_to_their_end_or_their_timeout() {
    let h = Harness::start(HarnessOptions::default());
    let rt = Runtime::new(&h);
    let loud = json!({"path": "/bin/sh", "args": ["sh", "-c", "head -c 300000 /dev/zero >&2"],
        "timeout": 60});
    let b = bundle(&h, "loud", &["true"], |c| {
        c["hooks"] = json!({"createRuntime": [loud.clone()], "poststop": [loud.clone()]});
    });
    let (out, _, _) = rt.create(&b, "loud");
    assert!(out.status.success(), "create: {}", rt.last_error());
    assert!(rt.run(&["delete", "--force", "loud"]).status.success());

    let slow_on_host = json!({"path": "/bin/sh", "args": ["sh", "-c", "sleep 60"], "timeout": 1});
    let slow_inside = json!({"path": "/bin/busybox", "args": ["busybox", "sh", "-c", "sleep 60"],
        "timeout": 1});
    let refusing =
        json!({"path": "/bin/sh", "args": ["sh", "-c", "echo refused by hook >&2; exit 3"]});
    for (phase, hook, expected) in [
        ("createRuntime", slow_on_host, "timed out"),
        ("createContainer", slow_inside, "timed out"),
        ("prestart", refusing, "refused by hook"),
    ] {
        let b = bundle(&h, &format!("hook-{phase}"), &["true"], |c| {
            c["hooks"] = json!({ phase: [hook.clone()] });
            c["annotations"] = json!({"org.burrow.test.padding": "x".repeat(300_000)});
        });
        let (out, _, _) = rt.create(&b, "hook-fails");
        assert_eq!(out.status.code(), Some(1), "{phase}");
        let error = rt.last_error();
        assert!(
            error.contains(&format!("{phase} hook")) && error.contains(expected),
            "{phase}: {error}"
        );
        assert!(rt.leftovers().is_empty(), "{phase}: {:?}", rt.leftovers());
    }
    wait_for("range released", || h.ranges_in_use() == 0);
}

/// `root.readonly` with a bind mount on a path the image lacks (as CRI binds /etc/resolv.conf
/// into a pause image): the mount point is made, then the rootfs is read-only, and its root
/// cannot make it writable again; the bind itself stays writable.
#[test]
fn a_read_only_rootfs_still_gets_its_mount_points() {
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
