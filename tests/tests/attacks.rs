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
