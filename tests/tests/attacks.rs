//! The attack suite. Each test performs one attack the way an attacker would (a hostile image,
//! the container's root, a tenant in group `burrow`) and asserts that it fails and changes
//! nothing. docs/security.md lists every attack and the test that performs it.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use burrow_tests::{
    bin, busybox_rootfs, install_with_libraries, shared_bin, test_users, wait_for, Burrow, Docker,
    Harness, HarnessOptions, LoopDevice, User,
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
    let output = burrow_tests::all_output(&out);
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
    let text = burrow_tests::all_output(&out);
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
/// A hostile spec's `linux.devices` cannot name a host device by other numbers, a block
/// device as a character one, or a path outside /dev; a tenant gets no extra device at all.
/// Each is refused before any helper is asked, and nothing is left.
#[test]
fn a_spec_cannot_reach_a_host_device_through_linux_devices() {
    let h = Harness::start(HarnessOptions::default());
    let root = Burrow::new(&h, None, "spec-devices-root");
    let alice = Burrow::new(&h, Some(test_users().alice), "spec-devices-alice");
    let disk = LoopDevice::new(&h.dir);
    let (major, minor) = (disk.major, disk.minor);
    let disk_path = disk.device.display().to_string();
    let device = |path: &str, typ: &str, major: u32, minor: u32| serde_json::json!([{"path": path, "type": typ, "major": major, "minor": minor}]);
    let cases = [
        // /dev/null's path with the disk's numbers: devd would copy the host's node.
        (
            &root,
            device("/dev/null", "c", major, minor),
            "is not the host's node",
        ),
        // The disk itself, called a character device.
        (
            &root,
            device(&disk_path, "c", major, minor),
            "not a character device",
        ),
        (
            &root,
            device(&disk_path, "b", major, minor),
            "a block device",
        ),
        (
            &root,
            device("/dev/../etc/shadow", "c", 1, 3),
            "not a path below /dev",
        ),
        (
            &alice,
            device("/dev/null", "c", 1, 3),
            "given to root's containers only",
        ),
    ];
    for (i, (caller, devices, says)) in cases.into_iter().enumerate() {
        let id = format!("spec-device-{i}");
        let bundle = caller.edited_bundle(
            &id,
            &["true"],
            |rootfs| busybox_rootfs(rootfs, None),
            |config| config["linux"]["devices"] = devices.clone(),
        );
        let (output, status) = caller.run_bundle(&bundle, &id);
        assert!(!status.success(), "{devices} was accepted: {output}");
        assert!(
            output.contains(says),
            "{devices}: expected {says:?} in {output}"
        );
        let list = burrow_tests::all_output(&caller.output(&["list"]));
        assert!(!list.contains(&id), "{id} left: {list}");
    }
    wait_for("no range left", || h.ranges_in_use() == 0);
}

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
        let expected = burrow_tests::devd_devices_list(136..=143);
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

/// A parked range (a kept container's, between `docker stop` and `docker start`) goes to no
/// one but its owner under its name, and to them only once its old namespace is provably gone
/// (issue 14, item 3): while a hidden reference keeps that namespace alive, another tenant
/// asking for the same name gets another range, cannot forget it, the owner's other names get
/// other ranges, and the owner's own name is refused (`Busy`); after the namespace went, the
/// name gets its very range back.
#[test]
fn a_parked_range_goes_to_no_other_name_and_back_only_once_its_namespace_is_gone() {
    let h = Harness::start(HarnessOptions::default());
    let (alice, carol) = (Some(test_users().alice), Some(test_users().carol));
    let client = |user, args: &[&str]| client_answer(&h, user, args, None);
    let mut attack = h.as_user(burrow_tests::shared_bin("burrow-attack"), alice);
    attack.args([
        "keep-alive",
        "--name",
        "kept",
        "--trick",
        "fd-in-flight",
        "--keep",
    ]);
    let mut attacker = Lines::spawn(attack);
    assert_eq!(attacker.until("release")["ok"], true);
    let base = attacker.until("parked")["base"].as_u64().unwrap();
    let parked = h.persisted_records();
    assert_eq!(parked.len(), 1);
    assert_eq!(parked[0]["state"], "parked", "{parked:?}");

    let forgotten = client(carol, &["forget", "--name", "kept"]);
    burrow_tests::assert_error(&forgotten, "org.burrow.Error.NotFound");
    assert_eq!(
        h.persisted_records(),
        parked,
        "another tenant's Forget changed it"
    );
    let same_name = client(carol, &["allocate", "--name", "kept"]);
    let other_name = client(alice, &["allocate", "--name", "other"]);
    for (who, got) in [
        ("carol as kept", &same_name),
        ("alice as other", &other_name),
    ] {
        assert_eq!(got["ok"], true, "{who}: {got}");
        assert_ne!(
            got["base"].as_u64(),
            Some(base),
            "{who}: the parked range handed out"
        );
    }
    let too_soon = client(alice, &["allocate", "--name", "kept"]);
    burrow_tests::assert_error_says(&too_soon, "org.burrow.Error.Busy", "still lives");

    attacker.say();
    attacker.until("recovered");
    attacker.finish();
    // The kernel frees a namespace shortly after its last reference goes.
    let mut back = serde_json::Value::Null;
    wait_for("the old namespace gone", || {
        back = client(alice, &["allocate", "--name", "kept"]);
        back["error"] != "org.burrow.Error.Busy"
    });
    assert_eq!(back["ok"], true, "{back}");
    assert_eq!(back["base"].as_u64(), Some(base), "not its own range back");

    for (user, name) in [(carol, "kept"), (alice, "other"), (alice, "kept")] {
        assert_eq!(client(user, &["release", "--name", name])["ok"], true);
    }
    assert_eq!(h.ranges_in_use(), 1, "the kept range is parked again");
    assert_eq!(client(alice, &["forget", "--name", "kept"])["ok"], true);
    wait_for("every range free", || h.ranges_in_use() == 0);
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

/// The test client's one answer to `args` as `user`, with `fd3` (an object `user` could not
/// open itself, handed over as if the attacker had got it somehow) as its fd 3.
fn client_answer(
    h: &Harness,
    user: Option<User>,
    args: &[&str],
    fd3: Option<&fs::File>,
) -> serde_json::Value {
    let mut cmd = h.client(user);
    cmd.args(args);
    if let Some(file) = fd3 {
        burrow_tests::pass_as_fd3(&mut cmd, file);
    }
    burrow_tests::json_lines(&cmd.output().unwrap().stdout).remove(0)
}

/// A range `user` allocated under `name`, held by a process in its namespace until the
/// returned client finishes: (client, that process's pid).
fn hold_range(h: &Harness, user: Option<User>, name: &str) -> (Lines, i64) {
    let mut cmd = h.client(user);
    cmd.args(["allocate", "--name", name, "--hold"]);
    let mut holder = Lines::spawn(cmd);
    let allocated = holder.until("allocate");
    assert_eq!(allocated["ok"], true, "{allocated}");
    (holder, allocated["holder_pid"].as_i64().unwrap())
}

/// A tenant cannot join another user's range (item 2): guessing its name finds nothing, even
/// with the victim's very namespace in hand (names are per uid), and that namespace joins no
/// range of hers either (it is not her namespace). Nothing changes.
#[test]
fn a_tenant_cannot_join_another_users_range() {
    let h = Harness::start(HarnessOptions::default());
    let (alice, carol) = (Some(test_users().alice), Some(test_users().carol));
    let (root_holder, root_pid) = hold_range(&h, None, "victim");
    let (carol_holder, carol_pid) = hold_range(&h, carol, "victim-carol");
    let (alice_holder, _) = hold_range(&h, alice, "mine");
    let before = h.persisted_records();
    for (victim, pid) in [("victim", root_pid), ("victim-carol", carol_pid)] {
        let victims_ns = fs::File::open(format!("/proc/{pid}/ns/user")).unwrap();
        let join = |existing: &str, how: &[&str], fd3| {
            let mut args = vec!["join", "--existing", existing, "--name", "in"];
            args.extend(how);
            client_answer(&h, alice, &args, fd3)
        };
        let guessed = join(victim, &["--fd-kind", "fresh"], None);
        burrow_tests::assert_error(&guessed, "org.burrow.Error.NotFound");
        let inherited = ["--fd-kind", "inherited"];
        let with_theirs = join(victim, &inherited, Some(&victims_ns));
        burrow_tests::assert_error(&with_theirs, "org.burrow.Error.NotFound");
        let into_mine = join("mine", &inherited, Some(&victims_ns));
        burrow_tests::assert_error_says(
            &into_mine,
            "org.burrow.Error.NotAuthorized",
            "not by the caller",
        );
    }
    assert_eq!(
        h.persisted_records(),
        before,
        "a refused join changed the state"
    );
    let names = |user| client_answer(&h, user, &["list"], None)["entries"].clone();
    assert_eq!(names(alice).as_array().unwrap().len(), 1);
    assert_eq!(names(carol).as_array().unwrap().len(), 1);
    for holder in [root_holder, carol_holder, alice_holder] {
        holder.finish();
    }
    for (user, name) in [(None, "victim"), (carol, "victim-carol"), (alice, "mine")] {
        let released = client_answer(&h, user, &["release", "--name", name], None);
        assert_eq!(released["ok"], true, "{released}");
    }
    wait_for("every range free", || h.ranges_in_use() == 0);
}

/// A tenant cannot pass off a namespace of her own making as her range's (item 2): Join knows
/// the range's namespace by its kernel id, so a fresh namespace, one she mapped herself, root's
/// and the host's are all refused; the name she tried holds nothing afterwards, so it gets no
/// cgroup.
#[test]
fn a_tenant_cannot_join_with_a_namespace_pretending_to_be_the_ranges() {
    let h = Harness::start(HarnessOptions::default());
    let alice = Some(test_users().alice);
    let (holder, pid) = hold_range(&h, alice, "pod");
    let before = h.persisted_records();
    let host = fs::File::open("/proc/self/ns/user").unwrap();
    let not_the_ranges = "org.burrow.Error.NotAuthorized";
    let fake = |kind| {
        [
            "join",
            "--existing",
            "pod",
            "--name",
            "fake",
            "--fd-kind",
            kind,
        ]
    };
    for (kind, fd3, error) in [
        ("fresh", None, not_the_ranges),
        ("self-mapped", None, not_the_ranges),
        // The host's own namespace is no container's.
        ("inherited", Some(&host), "org.burrow.Error.InvalidArgument"),
    ] {
        let refused = client_answer(&h, alice, &fake(kind), fd3);
        burrow_tests::assert_error(&refused, error);
    }
    let roots = burrow_tests::RootsUserns::new().hand_to(&h, alice, &fake("inherited"));
    burrow_tests::assert_error(&roots, not_the_ranges);
    assert_eq!(
        h.persisted_records(),
        before,
        "a refused join changed the state"
    );
    let pid = pid.to_string();
    let cgroup = ["add-cgroup", "--name", "fake", "--pid", &pid];
    let refused = client_answer(&h, alice, &cgroup, None);
    burrow_tests::assert_error(&refused, "org.burrow.Error.NotFound");
    holder.finish();
    let released = client_answer(&h, alice, &["release", "--name", "pod"], None);
    assert_eq!(released["ok"], true, "{released}");
    wait_for("the range free", || h.ranges_in_use() == 0);
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

/// `sh -c script` in a busybox container `name`, run by root and by a tenant, each to its
/// successful end: (who, output) of each.
fn run_as_root_and_tenant(h: &Harness, name: &str, script: &str) -> Vec<(&'static str, String)> {
    [None, Some(test_users().alice)]
        .into_iter()
        .map(|user| {
            let who = user.map_or("root", |u| u.name);
            let caller = Burrow::new(h, user, &format!("{name}-{who}"));
            let bundle = caller.bundle(name, &["sh", "-c", script], |r| busybox_rootfs(r, user));
            let (output, status) = caller.run_bundle(&bundle, name);
            assert!(status.success(), "{who}: {output}");
            (who, output)
        })
        .collect()
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
    for (who, output) in run_as_root_and_tenant(&h, "proc", FRESH_PROC) {
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

/// What the container's root tries against the covers on the mount points of debugfs and
/// tracefs in its sysfs (which systemd would otherwise fail to mount): unmount or detach them,
/// remount them writable, write through them, mount the kernel's filesystems there or over them,
/// also in a mount namespace of its own and below a fresh sysfs of its own.
const KERNEL_FS_COVERS: &str = "for d in debug tracing; do \
    grep -q \" /sys/kernel/$d ro,.* - tmpfs \" /proc/self/mountinfo && echo $d=covered; \
    umount /sys/kernel/$d 2>/dev/null && echo $d=unmounted; \
    umount -l /sys/kernel/$d 2>/dev/null && echo $d=detached; \
    mount -o remount,rw /sys/kernel/$d 2>/dev/null && echo $d=writable; \
    touch /sys/kernel/$d/x 2>/dev/null && echo $d=written; \
    test -z \"$(ls -A /sys/kernel/$d)\" && echo $d=empty; \
    done; \
    mount -t debugfs none /sys/kernel/debug 2>/dev/null && echo debugfs=mounted; \
    mount -t tracefs none /sys/kernel/tracing 2>/dev/null && echo tracefs=mounted; \
    mkdir -p /tmp/s && unshare -m sh -c '\
    umount /sys/kernel/debug 2>/dev/null && echo unshared=unmounted; \
    mount -t sysfs sysfs /tmp/s && echo sysfs=mounted; \
    mount -t debugfs none /tmp/s/kernel/debug 2>/dev/null && echo fresh-debugfs=mounted; \
    mount -t tracefs none /tmp/s/kernel/tracing 2>/dev/null && echo fresh-tracefs=mounted; \
    true'";

/// The covers on the kernel-only mount points are locked like the masks (issue 14): the
/// container's root, or a tenant's, cannot remove them, write through them or put debugfs or
/// tracefs in their place, neither there nor below a sysfs of its own.
#[test]
fn the_covers_over_debugfs_and_tracefs_mount_points_hold() {
    let h = Harness::start(HarnessOptions::default());
    for (who, output) in run_as_root_and_tenant(&h, "kernelfs", KERNEL_FS_COVERS) {
        for held in [
            "debug=covered",
            "debug=empty",
            "tracing=covered",
            "tracing=empty",
            "sysfs=mounted",
        ] {
            assert!(output.contains(held), "{who}: no {held:?} in {output}");
        }
        for broken in [
            "unmounted",
            "detached",
            "writable",
            "written",
            "debugfs=mounted",
            "tracefs=mounted",
        ] {
            assert!(!output.contains(broken), "{who}: {broken:?} in {output}");
        }
    }
}

/// What the container's root writes through an ID-mapped volume (item 9): for a tenant it
/// lands on disk as the tenant (a setuid file is setuid to the tenant, who gains nothing); for
/// a root caller, as host root, as Docker without user namespaces does. docs/security.md says so:
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

/// A busybox rootfs with the test client at /probe (for keyctl and raw system calls, which
/// busybox has no applet for).
fn rootfs_with_probe(rootfs: &Path) {
    busybox_rootfs(rootfs, None);
    install_with_libraries(&bin("burrow-test-client"), rootfs, "/probe");
}

/// The JSON lines of a command's stdout: the caller's `keys plant` line, then the container's.
fn lines_of(out: &std::process::Output) -> Vec<serde_json::Value> {
    burrow_tests::json_lines(&out.stdout)
}

/// What `keys probe` printed must show a fresh session keyring of the container's own (empty,
/// owned by its root, not any planted one), and no planted key reached by id, search, link or
/// by joining the caller's session keyring by name.
fn assert_keys_unreachable(probe: &serde_json::Value, planted: &[&serde_json::Value], who: &str) {
    let text = probe.to_string();
    assert_eq!(probe["probe"], "keys", "{who}: no probe report: {text}");
    assert!(
        !text.contains("burrow-secret-payload"),
        "{who}: a planted payload was read: {text}"
    );
    let own = &probe["own"];
    let session = own["session"]
        .as_i64()
        .unwrap_or_else(|| panic!("{who}: {own}"));
    assert_eq!(
        own["session_keys"], 0,
        "{who}: the session keyring is not fresh: {own}"
    );
    let description = own["session_desc"].as_str().unwrap_or_default();
    assert!(
        description.starts_with("keyring;0;0;") && description.ends_with(";_ses"),
        "{who}: the session keyring is not the container's own: {own}"
    );
    for target in planted {
        let label = target["label"].as_str().unwrap();
        assert_ne!(
            session,
            target["session"].as_i64().unwrap(),
            "{who}: the container shares {label}'s session keyring"
        );
        let reached = &probe["targets"][label];
        for (what, attempt) in reached["by_id"].as_object().unwrap() {
            for (how, answer) in attempt.as_object().unwrap() {
                assert!(
                    answer["errno"].is_i64(),
                    "{who}: {how} of {label}'s {what} succeeded: {answer}"
                );
            }
        }
        for (search, answer) in reached["search"].as_object().unwrap() {
            assert!(answer["errno"].is_i64(), "{who}: found {search}: {answer}");
        }
        if let Some(joined) = probe["joined"].get(label) {
            assert_ne!(
                joined["session"], target["session"],
                "{who}: joined {label}'s session keyring by name"
            );
            assert!(joined["read_after"]["errno"].is_i64(), "{who}: {joined}");
        }
    }
}

/// Invariant 10: a container never shares a kernel keyring with its caller or another
/// container. The caller (root, then a tenant) joins a login-like session keyring with its
/// user keyring linked in and plants keys of a known payload in both; from that session it
/// starts a first container, which plants keys of its own inside, and then `burrow run
/// --no-new-keyring` (the flag is ignored) of a probe, as containerd starts every container
/// from one session. The probe, as the container's root, must find a fresh, empty session
/// keyring and reach none of those keys, by id, search, link or name; nor may a process that
/// `burrow exec` starts in the first container reach the keys its caller planted.
#[test]
fn no_container_reaches_the_callers_or_another_containers_keys() {
    let h = Harness::start(HarnessOptions::default());
    let client = shared_bin("burrow-test-client");
    let client = client.to_str().unwrap();
    for user in [None, Some(test_users().alice)] {
        let who = user.map_or("root", |u| u.name);
        let caller = Burrow::new(&h, user, &format!("keys-{who}"));
        let other = caller.bundle(
            "other",
            &[
                "sh",
                "-c",
                "/probe keys plant --label other --write /other.json && exec sleep 1000",
            ],
            rootfs_with_probe,
        );
        let target = caller.bundle(
            "target",
            &["/probe", "keys", "probe", "/caller.json", "/other.json"],
            rootfs_with_probe,
        );
        // `burrow ARGS` from the caller's session keyring, once it planted keys of LABEL.
        let session = format!("burrow-session-{who}-{}", std::process::id());
        let planted = |label: &str, write: &Path, args: &[&str]| {
            let write = write.display().to_string();
            let wrapper = [
                client, "keys", "plant", "--label", label, "--join", &session, "--write", &write,
                "--",
            ];
            caller.command_through(&wrapper, args)
        };
        let other_arg = other.display().to_string();
        let log = fs::File::create(other.join("other.out")).unwrap();
        let started = planted(
            "caller",
            &target.join("rootfs/caller.json"),
            &["run", "--detach", "--bundle", &other_arg, "other"],
        )
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .status()
        .unwrap();
        let _other = burrow_tests::Detached::adopt(&caller, "other");
        assert!(started.success(), "{}", caller.output_of(&other, "other"));
        let other_json = other.join("rootfs/other.json");
        // Complete: the container writes the file while the test may already see it.
        wait_for("the other container's keys", || {
            fs::read(&other_json)
                .ok()
                .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
                .is_some()
        });
        fs::copy(&other_json, target.join("rootfs/other.json")).unwrap();

        let target_arg = target.display().to_string();
        let run = ["run", "--no-new-keyring", "--bundle", &target_arg, "target"];
        let out = planted("caller", &target.join("rootfs/caller.json"), &run)
            .output()
            .unwrap();
        let lines = lines_of(&out);
        assert!(
            out.status.success() && lines.len() == 2,
            "{who}: {lines:?} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let other_planted: serde_json::Value =
            serde_json::from_slice(&fs::read(&other_json).unwrap()).unwrap();
        assert_keys_unreachable(&lines[1], &[&lines[0], &other_planted], who);

        let exec = [
            "exec",
            "other",
            "/probe",
            "keys",
            "probe",
            "/caller-exec.json",
        ];
        let out = planted("caller-exec", &other.join("rootfs/caller-exec.json"), &exec)
            .output()
            .unwrap();
        let lines = lines_of(&out);
        assert!(
            out.status.success() && lines.len() == 2,
            "{who} exec: {lines:?} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_keys_unreachable(&lines[1], &[&lines[0]], &format!("{who} exec"));
    }
}

/// Seccomp's x32 hole: a call the profile denies, made through its x32 number
/// (`__X32_SYSCALL_BIT | nr`, or kexec_load's x32-only 528), is denied as well: the profile
/// denies the x32 ABI outright. Inside a container (root's and a tenant's) every such call is
/// EPERM; the same probe in a plain user namespace of the host shows the kernel's own answer
/// (ENOSYS on a kernel built without x32, as this one; the call itself with it), so EPERM can
/// only be the filter's.
#[test]
fn denied_calls_are_denied_through_the_x32_abi_too() {
    let h = Harness::start(HarnessOptions::default());
    let control = Command::new("unshare")
        .args(["--user", "--map-root-user"])
        .arg(bin("burrow-test-client"))
        .arg("x32-syscalls")
        .output()
        .unwrap();
    let unfiltered: serde_json::Value = serde_json::from_slice(&control.stdout).unwrap();
    assert_ne!(
        unfiltered["getpid"],
        libc::EPERM,
        "the kernel alone refuses x32 getpid with EPERM: {unfiltered}"
    );
    eprintln!("x32 calls without the filter: {unfiltered}");
    for user in [None, Some(test_users().alice)] {
        let who = user.map_or("root", |u| u.name);
        let caller = Burrow::new(&h, user, &format!("x32-{who}"));
        let bundle = caller.bundle("x32", &["/probe", "x32-syscalls"], rootfs_with_probe);
        let (output, status) = caller.run_bundle(&bundle, "x32");
        assert!(status.success(), "{who}: {output}");
        let inside = burrow_tests::json_lines(output.as_bytes()).remove(0);
        let calls = inside.as_object().unwrap();
        assert!(calls.len() >= 16, "{who}: {inside}");
        for (call, errno) in calls {
            assert_eq!(*errno, libc::EPERM, "{who}: x32 {call} inside: {inside}");
        }
    }
}

/// A user without XDG_RUNTIME_DIR keeps state in `/tmp/burrow-UID`, a name anyone can predict.
/// Bob prepares it for alice, as a directory of his and as a symlink to one: alice's `burrow
/// run` refuses with a named error, writes nothing there and allocates nothing. A `--root` of
/// bob's, or below one, is refused alike. Once the path is free, her run makes it her own.
#[test]
fn a_state_directory_another_user_prepared_is_refused() {
    let h = Harness::start(HarnessOptions::default());
    let users = test_users();
    let (alice, bob) = (users.alice, users.bob);
    let predictable = std::path::PathBuf::from(format!("/tmp/burrow-{}", alice.uid));
    let clear = || {
        let _ = fs::remove_file(&predictable);
        let _ = fs::remove_dir_all(&predictable);
    };
    clear();
    let bobs = std::path::PathBuf::from(format!("/tmp/burrow-bobs-{}", std::process::id()));
    let _ = fs::remove_dir_all(&bobs);
    let as_bob = |args: &[&str]| {
        let out = h
            .as_user(args[0], Some(bob))
            .args(&args[1..])
            .output()
            .unwrap();
        assert!(out.status.success(), "bob: {args:?}: {out:?}");
    };
    as_bob(&["mkdir", "-m", "0777", &bobs.display().to_string()]);
    let caller = Burrow::new(&h, Some(alice), "tmp-root");
    let bundle = caller.bundle("t", &["echo", "state-ok"], |rootfs| {
        busybox_rootfs(rootfs, None);
    });
    let bundle_arg = bundle.display().to_string();
    let run = |root: Option<&Path>| {
        let mut args = vec![];
        let root_arg = root.map(|r| r.display().to_string());
        if let Some(root) = &root_arg {
            args.extend(["--root", root.as_str()]);
        }
        args.extend(["run", "--bundle", &bundle_arg, "t"]);
        let out = caller
            .command(&args)
            .env_remove("XDG_RUNTIME_DIR")
            .output()
            .unwrap();
        (out.status.success(), burrow_tests::all_output(&out))
    };
    let expect_refusal = |root: Option<&Path>, shown: &Path, why: &str| {
        let (ok, text) = run(root);
        assert!(!ok, "alice used a directory bob prepared: {text}");
        assert!(
            text.contains(&format!("unsafe state directory {}", shown.display()))
                && text.contains(why),
            "{text}"
        );
        assert_eq!(
            fs::read_dir(&bobs).unwrap().count(),
            0,
            "state in bob's dir"
        );
        assert!(h.persisted_records().is_empty(), "a range was allocated");
    };
    as_bob(&["mkdir", "-m", "0777", &predictable.display().to_string()]);
    expect_refusal(None, &predictable, &format!("belongs to uid {}", bob.uid));
    assert_eq!(fs::read_dir(&predictable).unwrap().count(), 0);
    clear();
    as_bob(&[
        "ln",
        "-s",
        &bobs.display().to_string(),
        &predictable.display().to_string(),
    ]);
    expect_refusal(None, &predictable, "symbolic link");
    clear();
    expect_refusal(Some(&bobs), &bobs, &format!("belongs to uid {}", bob.uid));
    let below = bobs.join("alice");
    expect_refusal(Some(&below), &below, "lies below");

    let (ok, text) = run(None);
    assert!(ok && text.contains("state-ok"), "{text}");
    let meta = fs::symlink_metadata(&predictable).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert!(meta.is_dir() && meta.uid() == alice.uid && meta.mode() & 0o777 == 0o700);
    clear();
    let _ = fs::remove_dir_all(&bobs);
}

/// Files of root's that a tenant's symlinks point at: each holds "victim" until written.
fn victims(dir: &Path, names: &[&str]) -> Vec<std::path::PathBuf> {
    names
        .iter()
        .map(|name| {
            let path = dir.join(format!("victim-{name}"));
            fs::write(&path, "victim").unwrap();
            fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
            path
        })
        .collect()
}

fn assert_untouched(victims: &[std::path::PathBuf]) {
    for victim in victims {
        assert_eq!(
            fs::read_to_string(victim).unwrap(),
            "victim",
            "{} was written",
            victim.display()
        );
    }
}

/// Root runs a bundle whose directory a tenant can write, and she plants symlinks to root's
/// files where root will write: at `--log`, at the pid file, where burrow once put its temporary
/// pid file and where runc puts its own, and at an `exec --pid-file`. `--log` at a symlink is
/// refused with a named error before anything is made; a pid file's symlink is replaced by the
/// pid file, not followed; no victim changes and no temporary file is left behind.
#[test]
fn pid_files_and_the_log_never_write_through_a_planted_symlink() {
    let h = Harness::start(HarnessOptions::default());
    let alice = test_users().alice;
    let root = Burrow::new(&h, None, "planted");
    // Her bundle lies in root's home, which she may enter.
    fs::set_permissions(&root.home, fs::Permissions::from_mode(0o755)).unwrap();
    let bundle = root.bundle("pidlog", &["sleep", "1000"], |rootfs| {
        busybox_rootfs(rootfs, None);
    });
    std::os::unix::fs::chown(&bundle, Some(alice.uid), Some(alice.gid)).unwrap();
    let victims = victims(&h.dir, &["log", "pid", "tmp", "dot", "exec"]);
    let at = |name: &str| bundle.join(name).display().to_string();
    for (victim, link) in
        victims
            .iter()
            .zip(["log.json", "pid", "pid.burrow-tmp", ".pid", "exec.pid"])
    {
        let out = h
            .as_user("ln", Some(alice))
            .arg("-s")
            .arg(victim)
            .arg(bundle.join(link))
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
    }
    let create = |log: &str| {
        let output = bundle.join("create.out");
        let file = fs::File::create(&output).unwrap();
        let status = root
            .command(&[
                "--log",
                log,
                "--log-format",
                "json",
                "--debug",
                "create",
                "--bundle",
                &at(""),
                "--pid-file",
                &at("pid"),
                "pidlog",
            ])
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .status()
            .unwrap();
        (status.success(), fs::read_to_string(output).unwrap())
    };
    let (ok, text) = create(&at("log.json"));
    assert!(!ok, "create logged through a symlink: {text}");
    assert!(
        text.contains(&format!("--log {}: it is a symbolic link", at("log.json"))),
        "{text}"
    );
    assert_untouched(&victims);
    assert!(
        !root.output(&["state", "pidlog"]).status.success(),
        "a container was made"
    );
    assert!(h.persisted_records().is_empty(), "a range was allocated");

    let (ok, text) = create(&at("log"));
    assert!(ok, "{text}");
    let _deleted = burrow_tests::Detached::adopt(&root, "pidlog");
    assert_untouched(&victims);
    let state: serde_json::Value =
        serde_json::from_slice(&root.output(&["state", "pidlog"]).stdout).unwrap();
    let pid_file = bundle.join("pid");
    assert!(fs::symlink_metadata(&pid_file).unwrap().is_file());
    assert_eq!(
        fs::read_to_string(&pid_file).unwrap(),
        state["pid"].to_string()
    );
    assert!(root.output(&["start", "pidlog"]).status.success());
    let exec = root
        .command(&[
            "exec",
            "--detach",
            "--pid-file",
            &at("exec.pid"),
            "pidlog",
            "true",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(exec.success());
    assert_untouched(&victims);
    assert!(fs::symlink_metadata(bundle.join("exec.pid"))
        .unwrap()
        .is_file());
    let mut left: Vec<String> = fs::read_dir(&bundle)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    let expected = [
        ".pid",
        "config.json",
        "create.out",
        "exec.pid",
        "log",
        "log.json",
        "pid",
        "pid.burrow-tmp",
        "rootfs",
    ];
    assert_eq!(left, expected, "files left in the bundle");
}

/// An image whose probed paths lead out of it: `/sbin/init -> /evil/systemd` with `/evil` an
/// absolute link to a host directory holding a `systemd`, `/usr/bin/dockerd` an absolute link
/// to a host file, `/usr/local/bin` a link to that host directory (which has an `init`), and
/// FIFOs at `/bin/init` and `/usr/sbin/dockerd`. `create` of `init` (PATH
/// /usr/local/bin:/sbin:/bin) finishes, does not take it for systemd (no tmpfs on /run, no
/// SIGTERM rewriting) nor for an image with dockerd (no host directory), and finds no `init`
/// in it: what exists only on the host is not the image's.
#[test]
fn image_symlinks_and_fifos_never_lead_the_runtime_to_host_paths() {
    let h = Harness::start(HarnessOptions::default());
    let host_only = h.dir.join("host-only");
    fs::create_dir_all(&host_only).unwrap();
    for name in ["systemd", "dockerd", "init"] {
        fs::write(host_only.join(name), "#!/bin/sh\n").unwrap();
        fs::set_permissions(host_only.join(name), fs::Permissions::from_mode(0o755)).unwrap();
    }
    let root = Burrow::new(&h, None, "image-links");
    let bundle = root.bundle("links", &["init"], |rootfs| {
        busybox_rootfs(rootfs, None);
        use std::os::unix::fs::symlink;
        for dir in ["sbin", "usr/bin", "usr/sbin", "usr/local"] {
            fs::create_dir_all(rootfs.join(dir)).unwrap();
        }
        symlink(&host_only, rootfs.join("evil")).unwrap();
        symlink("/evil/systemd", rootfs.join("sbin/init")).unwrap();
        symlink(host_only.join("dockerd"), rootfs.join("usr/bin/dockerd")).unwrap();
        symlink(&host_only, rootfs.join("usr/local/bin")).unwrap();
        fs::remove_file(rootfs.join("bin/init")).unwrap();
        for fifo in ["bin/init", "usr/sbin/dockerd"] {
            nix::unistd::mkfifo(&rootfs.join(fifo), nix::sys::stat::Mode::S_IRWXU).unwrap();
        }
    });
    let config = bundle.join("config.json");
    let mut spec: serde_json::Value = serde_json::from_slice(&fs::read(&config).unwrap()).unwrap();
    spec["process"]["env"] = serde_json::json!(["PATH=/usr/local/bin:/sbin:/bin"]);
    fs::write(&config, spec.to_string()).unwrap();
    let log = bundle.join("debug.log").display().to_string();
    let output = fs::File::create(bundle.join("create.out")).unwrap();
    let status = root
        .command_through(
            &["timeout", "60"],
            &[
                "--debug",
                "--log",
                &log,
                "create",
                "--bundle",
                &bundle.display().to_string(),
                "links",
            ],
        )
        .stdout(output.try_clone().unwrap())
        .stderr(output)
        .status()
        .unwrap();
    let log = fs::read_to_string(&log).unwrap_or_default();
    assert!(status.success(), "create ({status}): {log}");
    let _deleted = burrow_tests::Detached::adopt(&root, "links");
    let record: serde_json::Value =
        serde_json::from_slice(&fs::read(root.state_root().join("links/state.json")).unwrap())
            .unwrap();
    assert_eq!(record["systemd"], false, "taken for systemd: {record}");
    assert_eq!(record["docker_data"], serde_json::Value::Null, "{record}");
    assert!(
        log.contains(r#""init" is looked up as ["init"]"#),
        "init found where the image has none: {log}"
    );
    let pid = record["pid"].as_i64().unwrap();
    let mounts = fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
    assert!(
        !mounts.lines().any(|l| l.split(' ').nth(4) == Some("/run")),
        "a tmpfs on /run, as for systemd: {mounts}"
    );
}

/// The container's init names itself (its comm: up to 15 bytes, any but NUL, parentheses and
/// spaces included), and the runtime reads that name in /proc/PID/stat, where it tells the init
/// from a recycled pid by its start time. A name that is no UTF-8, or that mimics the fields
/// after it (a zombie's state), must not make the runtime take the init for gone: `state`
/// would say stopped, and `kill` (`docker stop`, `docker kill`) would refuse to signal it.
#[test]
fn an_init_that_renames_itself_is_still_seen_and_signalled() {
    let h = Harness::start(HarnessOptions::default());
    let root = Burrow::new(&h, None, "renamed");
    for (id, name) in [("not-utf8", r"\377\376"), ("zombie-like", r"\377) Z 1 1 1")] {
        let script = format!("printf '{name}' > /proc/self/comm; while :; do sleep 1; done");
        let bundle = root.bundle(id, &["sh", "-c", &script], |rootfs| {
            busybox_rootfs(rootfs, None);
        });
        let _container = root.start_detached(&bundle, id);
        // From the record: `state` may already report the renamed init (pid 0 if "stopped").
        let record: serde_json::Value = serde_json::from_slice(
            &fs::read(root.state_root().join(id).join("state.json")).unwrap(),
        )
        .unwrap();
        let pid = record["pid"].as_i64().unwrap();
        let comm = format!("/proc/{pid}/comm");
        wait_for("the init renamed itself", || {
            fs::read(&comm).is_ok_and(|c| c.first() == Some(&0xff))
        });
        let state: serde_json::Value =
            serde_json::from_slice(&root.output(&["state", id]).stdout).unwrap();
        assert_eq!(state["status"], "running", "{id}: {state}");
        assert_eq!(state["pid"], pid, "{id}: {state}");
        let out = root.output(&["kill", id, "KILL"]);
        assert!(out.status.success(), "{id}: {out:?}");
        // Gone, or a zombie nobody reaped yet (by the kernel's account, not by its name).
        let status = format!("/proc/{pid}/status");
        wait_for("the init killed", || {
            fs::read(&status).map_or(true, |s| {
                String::from_utf8_lossy(&s)
                    .lines()
                    .any(|l| l.starts_with("State:\tZ") || l.starts_with("State:\tX"))
            })
        });
    }
}

/// What the container's root tries against lxcfs's files (issue 14 item 1): unmount them (to
/// read the host's /proc/meminfo below), also from a mount namespace of its own, make them
/// writable, write them. Each is refused: the binds are locked like the masks. The same spec
/// with `org.burrow.lxcfs=false` shows the host's memory, so the probe tells the two apart.
const UNCOVER_MEMINFO: &str = "umount /proc/meminfo 2>/dev/null && echo umount=done || echo umount=refused; \
    umount -l /proc/meminfo 2>/dev/null && echo detach=done || echo detach=refused; \
    unshare -m sh -c 'umount /proc/meminfo 2>/dev/null && echo nested=done || echo nested=refused'; \
    mount -o remount,bind,rw /proc/meminfo 2>/dev/null && echo remount=done || echo remount=refused; \
    (echo 1 > /proc/meminfo) 2>/dev/null && echo write=done || echo write=refused; \
    umount /sys/devices/system/cpu 2>/dev/null && echo cpu=done || echo cpu=refused; \
    awk '/^MemTotal:/ {print \"memtotal=\" $2}' /proc/meminfo";

#[test]
fn lxcfs_files_cannot_be_unmounted_or_written() {
    let h = Harness::start(HarnessOptions::default());
    assert!(burrow_sys::lxcfs::mounted(), "the harness starts lxcfs");
    let caller = Burrow::new(&h, None, "lxcfs");
    let run = |name: &str, lxcfs: &str| {
        let bundle = caller.edited_bundle(
            name,
            &["sh", "-c", UNCOVER_MEMINFO],
            |r| busybox_rootfs(r, None),
            |spec| {
                spec["linux"]["resources"]["memory"]["limit"] = (256u64 << 20).into();
                spec["annotations"]["org.burrow.lxcfs"] = lxcfs.into();
            },
        );
        let (output, status) = caller.run_bundle(&bundle, name);
        assert!(status.success(), "{name}: {output}");
        output
    };
    let limited = |text: &str| text.lines().any(|l| l.trim() == "memtotal=262144");
    let output = run("lxcfs-on", "true");
    for refused in [
        "umount=refused",
        "detach=refused",
        "nested=refused",
        "remount=refused",
        "write=refused",
        "cpu=refused",
    ] {
        assert!(output.contains(refused), "no {refused:?} in {output}");
    }
    assert!(limited(&output), "{output}");
    let host = run("lxcfs-off", "false");
    assert!(host.contains("memtotal=") && !limited(&host), "{host}");
}

/// What a container process does to the sysinfo supervisor (issue 14 item 1): hands it a null
/// pointer, a kernel address and an unmapped one (each answered as the kernel would, EFAULT,
/// and nothing else written), floods it from eight threads (every call answered), then finds
/// it cannot reach it: the supervisor is in no namespace of the container's, holds no fd but
/// its listener, its log and /dev/null, and for root keeps only CAP_SYS_PTRACE and
/// CAP_DAC_OVERRIDE (a tenant's runs as the tenant). Killed, it leaves the container's sysinfo
/// failing with ENOSYS rather than hanging; an exec'd process's supervisor ends with the
/// container.
#[test]
fn the_sysinfo_supervisor_survives_hostile_calls_and_holds_nothing() {
    let h = Harness::start(HarnessOptions::default());
    let probe = burrow_tests::c_probe("sysinfo", &h.dir);
    let script = "/probe hostile; while [ ! -e /go ]; do sleep 0.05; done; \
        /probe | sed s/plain/second/; echo probe-end; exec sleep 1000";
    for user in [None, Some(test_users().alice)] {
        let who = user.map_or("root", |u| u.name);
        let caller = Burrow::new(&h, user, &format!("sysinfo-{who}"));
        let bundle = caller.edited_bundle(
            "sysinfo",
            &["sh", "-c", script],
            |rootfs| {
                busybox_rootfs(rootfs, None);
                install_with_libraries(&probe, rootfs, "/probe");
            },
            |spec| {
                // A tenant's containers get the limits the admin set for the tenant.
                if user.is_none() {
                    spec["linux"]["resources"]["memory"]["limit"] = (256u64 << 20).into();
                }
            },
        );
        let container = caller.start_detached(&bundle, "sysinfo");
        wait_for("the hostile calls", || {
            caller.output_of(&bundle, "sysinfo").contains("after=")
        });
        let output = caller.output_of(&bundle, "sysinfo");
        let line = |key: &str| {
            output
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{key}=")))
                .unwrap_or_else(|| panic!("{who}: no {key}= in {output}"))
                .to_string()
        };
        if user.is_none() {
            assert_eq!(line("plain"), "256", "{who}: {output}");
        }
        assert!(line("plain").parse::<u64>().is_ok(), "{who}: {output}");
        for bad in ["null", "kernel", "unmapped"] {
            assert_eq!(line(bad), "Bad address", "{who}: {bad}: {output}");
        }
        assert_eq!(line("threads"), "1600/1600", "{who}: {output}");
        assert_eq!(line("after"), line("plain"), "{who}: {output}");

        let supervisor = sysinfo_supervisor_of(container.pid)
            .unwrap_or_else(|| panic!("{who}: no supervisor for init {}", container.pid));
        supervisor_holds_nothing(supervisor, container.pid, user, who);
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(supervisor),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        fs::write(bundle.join("rootfs/go"), "").unwrap();
        wait_for("the call without a supervisor", || {
            caller.output_of(&bundle, "sysinfo").contains("probe-end")
        });
        let output = caller.output_of(&bundle, "sysinfo");
        assert!(
            output.contains("second=Function not implemented"),
            "{who}: {output}"
        );
        // An exec'd process gets a supervisor of its own, which ends with the container.
        let init = container.pid;
        // Its stdio not the test's pipes, which the detached process would keep open.
        let exec = caller
            .command(&["exec", "--detach", "sysinfo", "sleep", "1000"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(exec.success(), "{who}: exec {exec}");
        wait_for("the exec's supervisor", || {
            sysinfo_supervisor_of(init).is_some()
        });
        drop(container);
        wait_for("no supervisor left", || {
            sysinfo_supervisor_of(init).is_none()
        });
    }
}

/// The pid of the sysinfo supervisor started for the container whose init is `init`.
fn sysinfo_supervisor_of(init: i32) -> Option<i32> {
    let wanted = format!("sysinfo-supervisor\0--container-init\0{init}\0");
    fs::read_dir("/proc")
        .ok()?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .find(|pid| {
            fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&wanted))
        })
}

/// The supervisor shares no namespace but the host's, holds only its listener, /dev/null, the
/// CLI's log and (as its stdout, so that its exit tears the namespace down) the container's
/// mount namespace, and runs with the least it needs.
fn supervisor_holds_nothing(supervisor: i32, init: i32, user: Option<User>, who: &str) {
    let link = |pid: i32, ns: &str| fs::read_link(format!("/proc/{pid}/ns/{ns}")).unwrap();
    for ns in ["pid", "mnt", "user", "net", "ipc"] {
        assert_ne!(
            link(supervisor, ns),
            link(init, ns),
            "{who}: the {ns} namespace"
        );
    }
    let containers_mounts = link(init, "mnt").display().to_string();
    for fd in fs::read_dir(format!("/proc/{supervisor}/fd"))
        .unwrap()
        .flatten()
    {
        let target = fs::read_link(fd.path()).unwrap().display().to_string();
        let mount_namespace = fd.file_name() == "1" && target == containers_mounts;
        assert!(
            target == "anon_inode:seccomp notify"
                || target == "/dev/null"
                || target.ends_with(".log")
                || mount_namespace,
            "{who}: the supervisor holds {target}"
        );
    }
    // Root's supervisor holds it, so that its exit (not the init's) tears it down; a
    // tenant's, a process of the tenant's own, holds none of the container's fds.
    let stdout = fs::read_link(format!("/proc/{supervisor}/fd/1")).unwrap();
    let held = stdout.display().to_string() == containers_mounts;
    assert_eq!(
        held,
        user.is_none(),
        "{who}: the supervisor's stdout is {stdout:?}"
    );
    let status = fs::read_to_string(format!("/proc/{supervisor}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}:")))
            .unwrap()
            .trim()
            .to_string()
    };
    assert_eq!(field("NoNewPrivs"), "1", "{who}");
    match user {
        // CAP_DAC_OVERRIDE (1) and CAP_SYS_PTRACE (19).
        None => {
            assert_eq!(field("CapEff"), "0000000000080002", "{who}");
            assert_eq!(field("CapBnd"), "0000000000080002", "{who}");
        }
        Some(user) => {
            assert!(
                field("Uid").starts_with(&format!("{}\t", user.uid)),
                "{who}"
            );
            assert_eq!(field("CapEff"), "0000000000000000", "{who}");
        }
    }
}
