//! The attack suite. Each test performs one attack the way an attacker would (a hostile image,
//! the container's root, a tenant in group `burrow`) and asserts that it fails and changes
//! nothing. README's security section lists every attack and the test that performs it.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use burrow_tests::{
    busybox_rootfs, test_users, Burrow, Docker, Harness, HarnessOptions, LoopDevice, User,
};

/// Device nodes a hostile image ships: a host block device (the loop device), raw memory and
/// the kernel log.
fn hostile_rootfs(dir: &Path, owner: Option<User>, disk: &LoopDevice) {
    busybox_rootfs(dir, None);
    use nix::sys::stat::{makedev, mknod, Mode, SFlag};
    let any = Mode::from_bits_truncate(0o666);
    for (name, kind, major, minor) in [
        ("disk", SFlag::S_IFBLK, disk.major, disk.minor),
        ("mem", SFlag::S_IFCHR, 1, 1),
        ("kmsg", SFlag::S_IFCHR, 1, 11),
    ] {
        let device = makedev(u64::from(major), u64::from(minor));
        mknod(&dir.join(name), kind, any, device).unwrap();
        fs::set_permissions(dir.join(name), fs::Permissions::from_mode(0o666)).unwrap();
    }
    if let Some(user) = owner {
        burrow_tests::run(
            Command::new("chown")
                .args(["-R", "-h", &format!("{}:{}", user.uid, user.gid)])
                .arg(dir),
        );
    }
}

/// What the container's root tries with the image's nodes: read each, write the disk at
/// offset 512, and make a node of its own.
const DEVICE_PROBE: &str = "for n in disk mem kmsg; do \
      if head -c 16 /$n >/dev/null 2>/tmp/err; then echo $n=read; else echo \"$n=denied: $(cat /tmp/err)\"; fi; \
    done; \
    if echo pwned | dd of=/disk bs=1 seek=512 conv=notrunc 2>/tmp/err; then echo disk_write=written; \
    else echo \"disk_write=denied: $(cat /tmp/err)\"; fi; \
    if mknod /tmp/null c 1 3 2>/dev/null; then echo mknod=made; else echo mknod=denied; fi; \
    echo probe-done";

fn assert_devices_unreachable(output: &str, disk: &LoopDevice, who: &str) {
    assert!(output.contains("probe-done"), "{who}: {output}");
    for denied in [
        "disk=denied",
        "mem=denied",
        "kmsg=denied",
        "disk_write=denied",
        "mknod=denied",
    ] {
        assert!(output.contains(denied), "{who}: no {denied:?} in {output}");
    }
    assert!(
        disk.untouched(),
        "{who}: the host's block device was written"
    );
}

/// A hostile image's device nodes reach no host device, through `burrow run` as root and as a
/// tenant, and through `docker run` of an image imported with them.
#[test]
fn device_nodes_in_an_image_reach_no_host_device() {
    let h = Harness::start(HarnessOptions::default());
    let disk = LoopDevice::new(&h.dir);
    let alice = test_users().alice;
    for user in [None, Some(alice)] {
        let caller = Burrow::new(
            &h,
            user,
            &format!("dev-{}", user.map_or("root", |u| u.name)),
        );
        let bundle = caller.bundle("hostile", &["sh", "-c", DEVICE_PROBE], |rootfs| {
            hostile_rootfs(rootfs, user, &disk)
        });
        let (output, status) = caller.run_bundle(&bundle, "hostile");
        assert!(status.success(), "{output}");
        assert_devices_unreachable(&output, &disk, user.map_or("root", |u| u.name));
    }

    let docker = Docker::start(&h);
    let image = h.dir.join("hostile-image");
    hostile_rootfs(&image, None, &disk);
    docker.import(&image, "hostile");
    let out = docker.run(&[
        "run",
        "--rm",
        "--runtime=burrow",
        "hostile",
        "sh",
        "-c",
        DEVICE_PROBE,
    ]);
    let output = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{output}\n{}", docker.log_tail());
    // The image really carries the node: Docker unpacked it as root.
    assert!(
        docker
            .ok(&[
                "run",
                "--rm",
                "--runtime=burrow",
                "hostile",
                "ls",
                "-l",
                "/disk"
            ])
            .starts_with('b'),
        "the imported image has no block device node"
    );
    assert_devices_unreachable(&output, &disk, "docker run");
}

/// What a process of the container's cgroup may open, seen by a host root process moved into
/// the cgroup of one hierarchy only (so each mechanism is tested on its own): nothing of the
/// host's devices but devd's kind of nodes.
fn open_from_cgroup(dir: &Path, device: &str) -> (bool, String) {
    let script = format!(
        "echo $$ > {}/cgroup.procs && exec 3<{device} && echo opened",
        dir.display()
    );
    let out = Command::new("sh").args(["-c", &script]).output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success() && text.trim() == "opened", text)
}

/// What the container's root tries against its cgroup: allow every device at the top of its
/// view, and in a sub-cgroup of its own.
const WIDEN_PROBE: &str = "d=/sys/fs/cgroup/devices; \
    (echo 'a *:* rwm' > $d/devices.allow) 2>/dev/null && echo top=widened || echo top=denied; \
    mkdir -p $d/sub; (echo 'b *:* rwm' > $d/sub/devices.allow) 2>/dev/null && echo sub=widened || echo sub=denied; \
    echo widen-done; exec sleep 1000";

/// The second wall: a container's cgroup denies every device but devd's set, on v1 (the
/// devices controller) and on cgroup2 (a device BPF program), for root's containers and for a
/// tenant's (whose cgroup idmapd makes); the container's root cannot widen it.
#[test]
fn the_device_cgroup_denies_all_but_devds_nodes() {
    let h = Harness::start(HarnessOptions::default());
    let disk = LoopDevice::new(&h.dir);
    let disk_path = disk.device.display().to_string();
    // Outside the container's cgroup, host root reads both.
    for device in [disk_path.as_str(), "/dev/kmsg"] {
        assert!(
            fs::File::open(device).is_ok(),
            "{device} cannot be opened on the host"
        );
    }
    for user in [None, Some(test_users().alice)] {
        let who = user.map_or("root", |u| u.name);
        let caller = Burrow::new(&h, user, &format!("cg-{who}"));
        let bundle = caller.bundle("widen", &["sh", "-c", WIDEN_PROBE], |rootfs| {
            busybox_rootfs(rootfs, user);
        });
        let container = caller.start_detached(&bundle, "widen");
        burrow_tests::wait_for("the widening probe", || {
            caller.output_of(&bundle, "widen").contains("widen-done")
        });
        let output = caller.output_of(&bundle, "widen");
        assert!(
            output.contains("top=denied") && output.contains("sub=denied"),
            "{who}: {output}"
        );
        let dirs = burrow_tests::cgroup_dirs(container.pid);
        for hierarchy in ["devices", "unified"] {
            let (_, dir) = dirs
                .iter()
                .find(|(name, _)| name == hierarchy)
                .unwrap_or_else(|| panic!("{who}: no {hierarchy} cgroup in {dirs:?}"));
            for denied in [disk_path.as_str(), "/dev/kmsg"] {
                let (opened, text) = open_from_cgroup(dir, denied);
                assert!(
                    !opened,
                    "{who}: {denied} opened from {}: {text}",
                    dir.display()
                );
                assert!(
                    text.contains("Operation not permitted"),
                    "{who}: {denied}: {text}"
                );
            }
            for allowed in ["/dev/zero", "/dev/urandom", "/dev/null", "/dev/ptmx"] {
                let (opened, text) = open_from_cgroup(dir, allowed);
                assert!(
                    opened,
                    "{who}: {allowed} refused in {}: {text}",
                    dir.display()
                );
            }
        }
        let (_, devices) = dirs.iter().find(|(name, _)| name == "devices").unwrap();
        let mut list: Vec<String> = fs::read_to_string(devices.join("devices.list"))
            .unwrap()
            .lines()
            .map(String::from)
            .collect();
        list.sort();
        let mut expected: Vec<String> = ["1:3", "1:5", "1:7", "1:8", "1:9", "5:0", "5:2"]
            .iter()
            .map(|d| format!("c {d} rw"))
            .chain((136..=143).map(|major| format!("c {major}:* rw")))
            .collect();
        expected.sort();
        assert_eq!(list, expected, "{who}: devices.list");
        caller.delete("widen");
    }
    assert!(disk.untouched());
}

/// Runs `cmd` to its end, or kills it after `seconds` and fails: for attacks whose symptom is
/// a hang.
fn finishes_within(mut cmd: Command, seconds: u64, what: &str) -> std::process::Output {
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(seconds);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("{what} did not finish in {seconds} s");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

/// What a container's root does to wedge or redirect a helper that walks its mounts: an nsfs
/// bind hidden under a FIFO bound over it, and one under a tmpfs holding an absolute symlink
/// where the nsfs file was.
const WEDGE: &str =
    "touch /w && mount --bind /proc/self/ns/net /w && mkfifo /fifo && mount --bind /fifo /w \
    && mkdir -p /d && touch /d/ns && mount --bind /proc/self/ns/user /d/ns && mount -t tmpfs t /d \
    && ln -s /etc/shadow /d/ns && echo wedged; exec sleep 1000";

/// A container cannot stall idmapd for the host (item 2): with a FIFO stacked over an nsfs
/// bind and a symlink over another, other containers are still made and deleted, for root and
/// for a tenant, and deleting the wedging container works.
#[test]
fn a_container_cannot_stall_idmapd() {
    let h = Harness::start(HarnessOptions::default());
    let root = Burrow::new(&h, None, "wedge-root");
    let wedge = root.bundle("wedge", &["sh", "-c", WEDGE], |r| {
        busybox_rootfs(r, None);
    });
    let wedging = root.start_detached(&wedge, "wedge");
    burrow_tests::wait_for("the wedge", || {
        root.output_of(&wedge, "wedge").contains("wedged")
    });
    for user in [None, Some(test_users().alice)] {
        let who = user.map_or("root", |u| u.name);
        let caller = Burrow::new(&h, user, &format!("after-wedge-{who}"));
        let bundle = caller.bundle("true", &["true"], |r| busybox_rootfs(r, user));
        for round in 0..3 {
            let run = caller.command(&["run", "--bundle", &bundle.display().to_string(), "t"]);
            let out = finishes_within(run, 30, &format!("{who}'s burrow run (round {round})"));
            assert!(
                out.status.success(),
                "{who}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    let delete = root.command(&["delete", "--force", &wedging.id]);
    let out = finishes_within(delete, 30, "deleting the wedging container");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    burrow_tests::wait_for("every range free", || h.ranges_in_use() == 0);
}

/// A child printing JSON lines, read one at a time; its stdin stays open until [`Self::finish`].
struct Lines {
    child: std::process::Child,
    out: std::io::Lines<std::io::BufReader<std::process::ChildStdout>>,
}

impl Lines {
    fn spawn(mut cmd: Command) -> Lines {
        let mut child = cmd
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let out = std::io::BufRead::lines(std::io::BufReader::new(child.stdout.take().unwrap()));
        Lines { child, out }
    }

    /// The next JSON line whose `op` is `op`.
    fn until(&mut self, op: &str) -> serde_json::Value {
        for line in self.out.by_ref() {
            let v: serde_json::Value = serde_json::from_str(&line.unwrap()).unwrap();
            if v["op"] == op || v["ok"] == false {
                return v;
            }
        }
        panic!("no {op} line");
    }

    fn say(&mut self) {
        std::io::Write::write_all(self.child.stdin.as_mut().unwrap(), b"go\n").unwrap();
    }

    fn finish(mut self) {
        drop(self.child.stdin.take());
        assert!(self.child.wait().unwrap().success());
    }
}

/// A range released while its user namespace lives on through something no /proc scan sees
/// (its fd in flight in a socket queue; a socket of a network namespace it owns) goes to no
/// other caller, for root's ranges and for a tenant's (item 3). The namespace really lived:
/// its holder recovers it afterwards, still mapping the range.
#[test]
fn a_released_range_is_not_reused_while_a_hidden_reference_keeps_its_namespace() {
    let h = Harness::start(HarnessOptions::default());
    let carol = test_users().carol;
    for user in [None, Some(test_users().alice)] {
        for trick in ["fd-in-flight", "netns-socket"] {
            let who = format!("{} with {trick}", user.map_or("root", |u| u.name));
            let mut attack = h.as_user(burrow_tests::shared_bin("burrow-attack"), user);
            attack.args(["keep-alive", "--name", "kept", "--trick", trick]);
            let mut attacker = Lines::spawn(attack);
            assert_eq!(attacker.until("release")["ok"], true, "{who}");
            let base = attacker.until("parked")["base"].as_u64().unwrap();
            assert_eq!(h.ranges_in_use(), 1, "{who}: the released range must drain");
            let other = burrow_tests::json_lines(
                &h.client(Some(carol))
                    .args(["allocate", "--name", "victim"])
                    .output()
                    .unwrap()
                    .stdout,
            )
            .remove(0);
            assert_eq!(other["ok"], true, "{who}: {other}");
            assert_ne!(
                other["base"].as_u64(),
                Some(base),
                "{who}: range handed out twice"
            );
            let released = h
                .client(Some(carol))
                .args(["release", "--name", "victim"])
                .output();
            assert!(released.unwrap().status.success());
            attacker.say();
            let recovered = attacker.until("recovered");
            assert_eq!(
                recovered["uid_map"]
                    .as_str()
                    .unwrap()
                    .split_whitespace()
                    .collect::<Vec<_>>(),
                ["0", &base.to_string(), "65536"],
                "{who}: {recovered}"
            );
            attacker.finish();
            burrow_tests::wait_for("the kept range freed", || h.ranges_in_use() == 0);
        }
    }
}

/// Releasing a range whose namespace still runs makes no room under the per-user quota (item
/// 5): with max_ranges = 2, a tenant who released both of her live ranges gets no third.
#[test]
fn released_but_live_ranges_count_against_the_quota() {
    let quotas = std::env::temp_dir().join(format!("burrow-quota-{}", std::process::id()));
    fs::write(&quotas, "[user burrow-alice]\nmax_ranges = 2\n").unwrap();
    let args = vec!["--quota-file".to_string(), quotas.display().to_string()];
    let h = Harness::start(HarnessOptions {
        idmapd_args: args,
        ..Default::default()
    });
    let alice = Some(test_users().alice);
    let client = |args: &[&str]| {
        let out = h.client(alice).args(args).output().unwrap();
        burrow_tests::json_lines(&out.stdout).remove(0)
    };
    let mut holders = vec![];
    for name in ["q1", "q2"] {
        let mut cmd = h.client(alice);
        cmd.args(["allocate", "--name", name, "--hold"]);
        let mut holder = Lines::spawn(cmd);
        assert_eq!(holder.until("allocate")["ok"], true);
        assert_eq!(client(&["release", "--name", name])["ok"], true);
        holders.push(holder);
    }
    assert_eq!(h.ranges_in_use(), 2);
    let third = client(&["allocate", "--name", "q3"]);
    burrow_tests::assert_error_says(&third, "org.burrow.Error.Exhausted", "2 of them released");
    assert_eq!(h.ranges_in_use(), 2, "a refused call changed something");
    for holder in holders {
        holder.finish();
    }
    burrow_tests::wait_for("drained ranges freed", || h.ranges_in_use() == 0);
    assert_eq!(client(&["allocate", "--name", "q3"])["ok"], true);
    assert_eq!(client(&["release", "--name", "q3"])["ok"], true);
    fs::remove_file(&quotas).unwrap();
}

/// AddControlGroup trusts no inode number (item 7): once a range's namespace is gone, a new
/// namespace that got the same inode number is not the range's, and its process is refused.
#[test]
fn add_control_group_refuses_a_namespace_that_reuses_an_inode_number() {
    let h = Harness::start(HarnessOptions::default());
    let mut attack = h.as_user(
        burrow_tests::shared_bin("burrow-attack"),
        Some(test_users().alice),
    );
    attack.args(["inode-reuse", "--name", "reused"]);
    let out = attack.output().unwrap();
    let result = burrow_tests::json_lines(&out.stdout).remove(0);
    assert_ne!(
        result["error"], "no reuse",
        "the kernel never reused the inode: {result}"
    );
    burrow_tests::assert_error_says(
        &result,
        "org.burrow.Error.NotAuthorized",
        "not in the user namespace",
    );
}

/// A read-only `rbind` is read-only all the way down (item 8): a filesystem mounted below the
/// bind's source is not a writable way out of it.
#[test]
fn a_read_only_rbind_is_read_only_below_too() {
    let h = Harness::start(HarnessOptions::default());
    let caller = Burrow::new(&h, None, "rbind");
    let source = h.dir.join(format!(
        "{}rbind-source",
        burrow_tests::SCRATCH_FILESYSTEMS.trim_start_matches('/')
    ));
    let below = source.join("below");
    fs::create_dir_all(&below).unwrap();
    burrow_tests::run(
        Command::new("mount")
            .args(["-t", "tmpfs", "below"])
            .arg(&below),
    );
    let probe = "for d in /data /data/below; do \
        if touch $d/written 2>/dev/null; then echo $d=written; else echo $d=refused; fi; done";
    let bundle = caller.bundle("rbind", &["sh", "-c", probe], |r| {
        busybox_rootfs(r, None);
    });
    let config_path = bundle.join("config.json");
    let mut config: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&config_path).unwrap()).unwrap();
    config["mounts"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({
            "destination": "/data", "type": "bind", "source": source, "options": ["rbind", "ro"]
        }));
    fs::write(&config_path, config.to_string()).unwrap();
    let (output, status) = caller.run_bundle(&bundle, "rbind");
    let _ = Command::new("umount").arg(&below).status();
    assert!(status.success(), "{output}");
    assert!(
        output.contains("/data=refused") && output.contains("/data/below=refused"),
        "{output}"
    );
    assert!(!below.join("written").exists() && !source.join("written").exists());
}

/// What the container's root can do with a proc of its own (item 9): the kernel lets it mount
/// one, unmasked, because the container holds a fully visible proc under a cover. The masks
/// are an information barrier only: every host-wide write through the new proc is still
/// refused, as the kernel checks those against the host's user namespace.
const FRESH_PROC: &str = "mkdir -p /tmp/p && unshare -m sh -c '\
    mount -t proc proc /tmp/p && echo mounted; \
    (echo 5 > /tmp/p/sys/kernel/panic) 2>/dev/null && echo panic=written || echo panic=refused; \
    (echo 1 > /tmp/p/sys/vm/drop_caches) 2>/dev/null && echo drop_caches=written || echo drop_caches=refused; \
    if test -e /tmp/p/sysrq-trigger; then (echo h > /tmp/p/sysrq-trigger) 2>/dev/null && echo trigger=written || echo trigger=refused; fi; \
    head -c 1 /tmp/p/kcore >/dev/null 2>&1 && echo kcore=read || echo kcore=refused'";

#[test]
fn a_fresh_proc_inside_is_no_way_to_host_wide_writes() {
    let h = Harness::start(HarnessOptions::default());
    let panic_before = fs::read_to_string("/proc/sys/kernel/panic").unwrap();
    for user in [None, Some(test_users().alice)] {
        let who = user.map_or("root", |u| u.name);
        let caller = Burrow::new(&h, user, &format!("proc-{who}"));
        let bundle = caller.bundle("proc", &["sh", "-c", FRESH_PROC], |r| {
            busybox_rootfs(r, user)
        });
        let (output, status) = caller.run_bundle(&bundle, "proc");
        assert!(status.success(), "{who}: {output}");
        assert!(
            output.contains("mounted"),
            "{who}: a nested proc must mount: {output}"
        );
        for refused in ["panic=refused", "drop_caches=refused", "kcore=refused"] {
            assert!(
                output.contains(refused),
                "{who}: no {refused:?} in {output}"
            );
        }
        assert!(!output.contains("trigger=written"), "{who}: {output}");
    }
    assert_eq!(
        fs::read_to_string("/proc/sys/kernel/panic").unwrap(),
        panic_before
    );
}

/// What the container's root writes through an ID-mapped volume (item 9): for a tenant it
/// lands on disk as the tenant (a setuid file is setuid to the tenant, who gains nothing); for
/// a root caller, as host root, as Docker without user namespaces does. The README says so:
/// a volume is the admin's trust decision.
#[test]
fn what_container_root_writes_through_a_volume_lands_as_documented() {
    use std::os::unix::fs::MetadataExt;
    let h = Harness::start(HarnessOptions::default());
    for user in [None, Some(test_users().alice)] {
        let who = user.map_or("root", |u| u.name);
        let caller = Burrow::new(&h, user, &format!("vol-{who}"));
        let volume = caller.home.join("volume");
        fs::create_dir_all(&volume).unwrap();
        if let Some(u) = user {
            std::os::unix::fs::chown(&volume, Some(u.uid), Some(u.gid)).unwrap();
        }
        let script = "cp /bin/busybox /vol/suid && chmod 4755 /vol/suid && echo made";
        let bundle = caller.bundle("vol", &["sh", "-c", script], |r| busybox_rootfs(r, user));
        let config_path = bundle.join("config.json");
        let mut config: serde_json::Value =
            serde_json::from_str(&fs::read_to_string(&config_path).unwrap()).unwrap();
        config["mounts"]
            .as_array_mut()
            .unwrap()
            .push(serde_json::json!({
                "destination": "/vol", "type": "bind", "source": volume, "options": ["rbind"]
            }));
        fs::write(&config_path, config.to_string()).unwrap();
        if let Some(u) = user {
            std::os::unix::fs::chown(&config_path, Some(u.uid), Some(u.gid)).unwrap();
        }
        let (output, status) = caller.run_bundle(&bundle, "vol");
        assert!(
            status.success() && output.contains("made"),
            "{who}: {output}"
        );
        let made = fs::metadata(volume.join("suid")).unwrap();
        assert_eq!(
            made.uid(),
            user.map_or(0, |u| u.uid),
            "{who}: owner on disk"
        );
        assert_eq!(
            made.mode() & 0o4000,
            0o4000,
            "{who}: the setuid bit is kept"
        );
    }
}

/// Accounts NSS knows are never in a range (item 6), also where idmapd reads no account file
/// itself: a user with a uid in the first range of the pool pushes the allocation past it.
#[test]
fn ranges_avoid_accounts_that_nss_lists() {
    let start = burrow_tests::pool_window(0);
    let name = "burrow-nss-probe";
    let _ = Command::new("userdel")
        .arg(name)
        .stderr(std::process::Stdio::null())
        .status();
    burrow_tests::run(Command::new("useradd").args([
        "--no-create-home",
        "--no-log-init",
        "--uid",
        &(start + 100).to_string(),
        name,
    ]));
    let h = Harness::start(HarnessOptions {
        idmapd_args: [
            "--pool-start",
            &start.to_string(),
            "--pool-end",
            &(start + 3 * 65536 - 1).to_string(),
            "--id-db-file",
            "/dev/null",
        ]
        .map(String::from)
        .to_vec(),
        ..Default::default()
    });
    let out = h
        .client(None)
        .args(["allocate", "--name", "nss"])
        .output()
        .unwrap();
    let _ = Command::new("userdel").arg(name).status();
    let allocated = burrow_tests::json_lines(&out.stdout).remove(0);
    assert_eq!(
        allocated["base"].as_u64(),
        Some(u64::from(start) + 65536),
        "{allocated}"
    );
}
