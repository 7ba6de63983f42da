//! mountd (with idmapd and devd) against a real bus, polkitd and kernel: containers built by
//! hand from the helpers, checked from inside. Run as root (`make test`).

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use burrow_tests::{
    assert_error, assert_error_says, built_container as container, busybox_rootfs, fd_count,
    host_mounts, key_values, state_and_parent, test_users, Harness, HarnessOptions, RootsUserns,
    User, SCRATCH_FILESYSTEMS,
};
use serde_json::{json, Value};

/// Prints one `key=ok|denied` line per check, and a few `key=value` facts.
const PROBE: &str = r#"
r() { if "$@" >/dev/null 2>&1; then echo ok; else echo denied; fi; }
w() { test -e "$1" || { echo absent; return; }; if (echo "$2" > "$1") 2>/dev/null; then echo written; else echo denied; fi; }
echo "umount_timer_list=$(r umount /proc/timer_list)"
echo "umount_keys=$(r umount /proc/keys)"
echo "umount_acpi=$(r umount /proc/acpi)"
echo "umount_firmware=$(r umount /sys/firmware)"
echo "umount_proc_sys=$(r umount /proc/sys)"
echo "umount_cover=$(r umount /dev/.burrow-visible)"
echo "umount_lazy_proc=$(r umount -l /proc)"
echo "remount_proc_sys=$(r mount -o remount,rw /proc/sys)"
echo "remount_sys=$(r mount -o remount,rw /sys)"
echo "remount_dev=$(r mount -o remount,suid /dev)"
echo "sysrq=$(w /proc/sys/kernel/sysrq 1)"
echo "sysrq_trigger=$(w /proc/sysrq-trigger h)"
echo "panic_sysctl=$(w /proc/sys/kernel/panic 5)"
echo "drop_caches=$(w /proc/sys/vm/drop_caches 3)"
echo "null_write=$(r sh -c 'echo x > /dev/null')"
echo "mknod=$(r mknod /tmp/n c 1 3)"
echo "nested_proc=$(r unshare -U -r -p -m -f sh -c 'mount -t proc proc /proc')"
echo "timer_list_bytes=$(wc -c < /proc/timer_list)"
echo "keys_bytes=$(wc -c < /proc/keys)"
echo "acpi_entries=$(ls -A /proc/acpi | wc -l)"
echo "firmware_entries=$(ls -A /sys/firmware | wc -l)"
echo "dev=$(ls /dev | tr '\n' ' ')"
echo "uid_map=$(cat /proc/self/uid_map | tr -s ' ')"
echo "busybox_owner=$(stat -c %u:%g /bin/busybox)"
echo "pts=$(r test -e /dev/pts/ptmx)"
echo "touch=$(r touch /written-inside)"
echo "foreign_zombies=$(grep -l 'State:.Z' /proc/[0-9]*/status 2>/dev/null | wc -l)"
"#;

fn workdir(h: &Harness, name: &str) -> PathBuf {
    h.dir.join(name)
}

const EXPECTED_DEV: &str =
    "fd full mqueue null ptmx pts random shm stderr stdin stdout tty urandom zero";

#[test]
fn container_mounts_are_locked_masked_and_id_mapped() {
    let h = Harness::start(HarnessOptions::default());
    let alice = test_users().alice;
    let before = host_mounts();
    for user in [None, Some(alice)] {
        let rootfs = busybox_rootfs(
            &workdir(&h, &format!("rootfs-{}", user.map_or(0, |u| u.uid))),
            user,
        );
        let disk_owner = user.map_or(0, |u| u.uid);
        let v = container(&h, user, &rootfs, PROBE, json!({}));
        assert_eq!(v["ok"], true, "{v}\n{}", h.log());
        assert_eq!(v["exit"], 0, "{v}");
        let kv = key_values(v["output"].as_str().unwrap());
        for denied in [
            "umount_timer_list",
            "umount_keys",
            "umount_acpi",
            "umount_firmware",
            "umount_proc_sys",
            "umount_cover",
            "umount_lazy_proc",
            "remount_proc_sys",
            "remount_sys",
            "remount_dev",
            "mknod",
            "panic_sysctl",
            "drop_caches",
        ] {
            assert_eq!(
                kv[denied], "denied",
                "{denied} was allowed inside the container: {kv:?}"
            );
        }
        // This machine's kernel has no CONFIG_MAGIC_SYSRQ; where it has, the write must fail.
        for sysrq in ["sysrq", "sysrq_trigger"] {
            let expected = if Path::new("/proc/sys/kernel/sysrq").exists() {
                "denied"
            } else {
                "absent"
            };
            assert_eq!(kv[sysrq], expected, "{sysrq}: {kv:?}");
        }
        for allowed in ["null_write", "nested_proc", "pts", "touch"] {
            assert_eq!(
                kv[allowed], "ok",
                "{allowed} failed inside the container: {kv:?}"
            );
        }
        // The masks are there (the host's files are not empty), and stay: umount failed.
        for masked in [
            "timer_list_bytes",
            "keys_bytes",
            "acpi_entries",
            "firmware_entries",
        ] {
            assert_eq!(kv[masked], "0", "{masked}: {kv:?}");
        }
        // No helper worker may be left (orphaned) in the container's pid namespace.
        assert_eq!(kv["foreign_zombies"], "0", "{kv:?}");
        assert_eq!(kv["dev"], EXPECTED_DEV);
        assert_eq!(kv["uid_map"], format!("0 {} 65536", v["base"]));
        // The image's files are the container root's, through the ID-mapped mount...
        assert_eq!(kv["busybox_owner"], "0:0");
        // ...and on disk nothing was chowned; what root wrote inside is stored as root for a
        // root caller, as the caller for anyone else (never as host root).
        assert_eq!(
            std::fs::metadata(rootfs.join("bin/busybox")).unwrap().uid(),
            disk_owner
        );
        assert_eq!(
            std::fs::metadata(rootfs.join("written-inside"))
                .unwrap()
                .uid(),
            disk_owner
        );
    }
    assert_eq!(
        host_mounts(),
        before,
        "a mount leaked into the host namespace"
    );
}

#[test]
fn overlay_rootfs_is_mapped_layer_by_layer() {
    let h = Harness::start(HarnessOptions::default());
    let base = workdir(&h, "ovl");
    let lower = busybox_rootfs(&base.join("lower"), None);
    let (upper, work, merged) = (base.join("upper"), base.join("work"), base.join("merged"));
    for d in [&upper, &work, &merged] {
        std::fs::create_dir_all(d).unwrap();
    }
    let options = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.display(),
        upper.display(),
        work.display()
    );
    let status = std::process::Command::new("mount")
        .args(["-t", "overlay", "overlay", "-o", &options])
        .arg(&merged)
        .status()
        .unwrap();
    assert!(status.success());
    let owners_on_disk = || {
        let mut owners = vec![];
        let mut stack = vec![lower.clone()];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).unwrap().flatten() {
                let meta = entry.path().symlink_metadata().unwrap();
                owners.push((entry.path(), meta.uid(), meta.gid()));
                if meta.is_dir() {
                    stack.push(entry.path());
                }
            }
        }
        owners.sort();
        owners
    };
    let lower_before = owners_on_disk();
    let before = host_mounts();
    let script = "stat -c busybox_owner=%u /bin/busybox; echo hi > /from-inside && echo write=ok; \
                  echo changed > /etc/hostname && rm /bin/ls && echo copy_up=ok";
    let v = container(&h, None, &merged, script, json!({}));
    // IdmapMount of the overlay on its own, as the runtime uses for Docker's rootfs.
    let mapped = idmap_mount(&h, None, &merged, &["--create", "via-idmap-mount"]);
    let after = host_mounts();
    let _ = std::process::Command::new("umount").arg(&merged).status();
    assert_eq!(v["ok"], true, "{v}\n{}", h.log());
    assert_eq!(mapped["inside"]["owners"]["bin"], json!([0, 0]), "{mapped}");
    assert_eq!(mapped["inside"]["create_errno"], Value::Null, "{mapped}");
    assert_eq!(
        std::fs::metadata(upper.join("via-idmap-mount"))
            .unwrap()
            .uid(),
        0
    );
    assert_eq!(after, before, "a mount was left behind");
    assert_eq!(
        owners_on_disk(),
        lower_before,
        "the lower layer was chowned"
    );
    let kv = key_values(v["output"].as_str().unwrap());
    assert_eq!(kv["busybox_owner"], "0");
    assert_eq!(kv["write"], "ok");
    let written = upper.join("from-inside");
    assert_eq!(std::fs::read_to_string(&written).unwrap(), "hi\n");
    assert_eq!(std::fs::metadata(&written).unwrap().uid(), 0);
    assert!(!lower.join("from-inside").exists());
    // Copy-up and whiteouts, which overlayfs does with its mounter's credentials.
    assert_eq!(kv["copy_up"], "ok");
    assert_eq!(
        std::fs::read_to_string(upper.join("etc/hostname")).unwrap(),
        "changed\n"
    );
    assert_eq!(
        std::fs::read_to_string(lower.join("etc/hostname")).unwrap(),
        "burrow-test\n"
    );
    let whiteout = std::fs::symlink_metadata(upper.join("bin/ls")).unwrap();
    use std::os::unix::fs::FileTypeExt;
    assert!(
        whiteout.file_type().is_char_device() && whiteout.rdev() == 0,
        "no whiteout for /bin/ls"
    );
}

#[test]
fn symlinks_in_the_image_cannot_reach_the_host() {
    let h = Harness::start(HarnessOptions::default());
    let rootfs = busybox_rootfs(&workdir(&h, "evil"), None);
    std::os::unix::fs::symlink("/etc", rootfs.join("evil")).unwrap();
    std::os::unix::fs::symlink("../../../../../../etc", rootfs.join("evil-relative")).unwrap();
    let before = host_mounts();
    let plan = json!({"mounts": [
        ["/evil/hostile", "tmpfs", null, []],
        ["/evil-relative/also", "tmpfs", null, []],
    ]});
    let v = container(
        &h,
        None,
        &rootfs,
        "grep -c ' /etc/' /proc/self/mountinfo | sed 's/^/etc_mounts=/'",
        plan,
    );
    assert_eq!(v["ok"], true, "{v}\n{}", h.log());
    assert_eq!(key_values(v["output"].as_str().unwrap())["etc_mounts"], "2");
    // The mount points were made in the image's /etc, not the host's.
    assert!(rootfs.join("etc/hostile").is_dir() && rootfs.join("etc/also").is_dir());
    assert!(!Path::new("/etc/hostile").exists() && !Path::new("/etc/also").exists());
    assert_eq!(host_mounts(), before);
}

#[test]
fn bad_plans_and_fds_are_named_errors_and_leave_nothing() {
    let h = Harness::start(HarnessOptions::default());
    let alice = Some(test_users().alice);
    let rootfs = busybox_rootfs(&workdir(&h, "rootfs"), None);
    let alice_rootfs = busybox_rootfs(&workdir(&h, "alice-rootfs"), alice);
    let before = host_mounts();
    // mountd's fds once it has served one build; every refusal below must leave it there.
    assert_eq!(container(&h, None, &rootfs, "true", json!({}))["exit"], 0);
    let pid = h.helper_pids("burrow-mountd")[0];
    let settled = fd_count(pid);
    let invalid = "org.burrow.Error.InvalidArgument";
    assert_error(
        &container(&h, None, &rootfs, "true", json!({"bogus_key": true})),
        invalid,
    );
    assert_error(
        &container(
            &h,
            None,
            &rootfs,
            "true",
            json!({"mounts": [["/../../etc", "tmpfs", null, []]]}),
        ),
        invalid,
    );
    assert_error(
        &container(
            &h,
            None,
            &rootfs,
            "true",
            json!({"mounts": [["/x", "ext4", null, []]]}),
        ),
        invalid,
    );
    assert_error(
        &container(&h, None, &rootfs, "true", json!({"pidfd_kind": "file"})),
        invalid,
    );
    // Burrow's bus policy lets 64 fds through (the system bus's default is 16): mountd's own
    // limit of 48 answers. Past 64 the bus itself disconnects the sender.
    let fds_of = |n: usize| -> Vec<String> { vec!["/etc/hostname".to_string(); n] };
    let v = container(&h, None, &rootfs, "true", json!({"extra_fds": fds_of(30)}));
    assert_eq!(v["exit"], 0, "{v}");
    let v = container(&h, None, &rootfs, "true", json!({"extra_fds": fds_of(50)}));
    assert_error_says(&v, invalid, "at most 48");
    // Another user's plain process is in the initial user namespace: not a container.
    let mut bobs = std::process::Command::new("setpriv")
        .args([
            "--reuid",
            &test_users().bob.uid.to_string(),
            "--regid",
            &test_users().bob.gid.to_string(),
            "--clear-groups",
            "sleep",
            "60",
        ])
        .spawn()
        .unwrap();
    assert_error(
        &container(
            &h,
            alice,
            &alice_rootfs,
            "true",
            json!({"pidfd_of": bobs.id()}),
        ),
        invalid,
    );
    bobs.kill().unwrap();
    bobs.wait().unwrap();
    // A process in root's user namespace is not alice's to build for.
    let mut foreign = std::process::Command::new("unshare")
        .args([
            "--user",
            "--map-root-user",
            "--pid",
            "--net",
            "--ipc",
            "--cgroup",
            "--fork",
            "sleep",
            "60",
        ])
        .spawn()
        .unwrap();
    let sleeper = burrow_tests::wait_for_child(foreign.id());
    assert_error(
        &container(
            &h,
            alice,
            &alice_rootfs,
            "true",
            json!({"pidfd_of": sleeper}),
        ),
        "org.burrow.Error.NotAuthorized",
    );
    foreign.kill().unwrap();
    foreign.wait().unwrap();
    // alice cannot build on, or bind in, a directory that is not hers.
    assert_error(
        &container(&h, alice, &rootfs, "true", json!({})),
        "org.burrow.Error.NotAuthorized",
    );
    assert_error(
        &container(
            &h,
            alice,
            &alice_rootfs,
            "true",
            json!({"extra_fds": ["/root"], "mounts": [["/mnt", "bind", 2, ["rbind"]]]}),
        ),
        "org.burrow.Error.NotAuthorized",
    );
    // Masking a path that does not exist is fine, as with runc.
    let v = container(
        &h,
        None,
        &rootfs,
        "echo fine",
        json!({"masked_paths": ["/proc/does-not-exist", "/nope/at/all"]}),
    );
    assert_eq!(v["exit"], 0, "{v}");
    assert_eq!(host_mounts(), before, "a refused build left a mount behind");
    // No fd of any request, refused or served, stays in the helper (the same process).
    assert_eq!(h.helper_pids("burrow-mountd"), vec![pid]);
    burrow_tests::wait_for("mountd fds back to baseline", || fd_count(pid) <= settled);
}

fn idmap_mount(h: &Harness, user: Option<User>, dir: &Path, args: &[&str]) -> Value {
    let mut client = h.client(user);
    client
        .args(["idmap-mount", "--dir", &dir.display().to_string()])
        .args(args);
    h.client_lines(client).remove(0)
}

#[test]
fn idmap_mount_for_root_and_for_a_user() {
    let h = Harness::start(HarnessOptions::default());
    let alice = test_users().alice;
    let root_dir = busybox_rootfs(&workdir(&h, "root-dir"), None);
    let alice_dir = busybox_rootfs(&workdir(&h, "alice-dir"), Some(alice));
    let before = host_mounts();

    let v = idmap_mount(&h, None, &root_dir, &["--create", "made-by-root"]);
    assert_eq!(v["inside"]["owners"]["bin"], json!([0, 0]), "{v}");
    assert_eq!(v["inside"]["create_errno"], Value::Null);
    let mountd = h.helper_pids("burrow-mountd")[0];
    let mountd_fds = fd_count(mountd);
    assert_eq!(
        std::fs::metadata(root_dir.join("made-by-root"))
            .unwrap()
            .uid(),
        0
    );

    // alice's own files are her container root's; what it writes is stored as alice.
    let v = idmap_mount(&h, Some(alice), &alice_dir, &["--create", "made-by-alice"]);
    assert_eq!(v["inside"]["owners"]["bin"], json!([0, 0]), "{v}");
    assert_eq!(
        std::fs::metadata(alice_dir.join("made-by-alice"))
            .unwrap()
            .uid(),
        alice.uid
    );
    let v = idmap_mount(
        &h,
        Some(alice),
        &alice_dir,
        &["--read-only", "--create", "nope"],
    );
    assert_eq!(v["inside"]["create_errno"], libc::EROFS);

    for dir in ["/root", "/etc"] {
        assert_error(
            &idmap_mount(&h, Some(alice), Path::new(dir), &[]),
            "org.burrow.Error.NotAuthorized",
        );
    }
    assert_error(
        &idmap_mount(&h, Some(alice), &alice_dir, &["--fd-kind", "file"]),
        "org.burrow.Error.InvalidArgument",
    );
    assert_error(
        &idmap_mount(&h, None, Path::new("/proc"), &[]),
        "org.burrow.Error.NotSupported",
    );
    // A namespace alice mapped herself (`0 <alice> 1`), not a range from idmapd.
    let refused = idmap_mount(&h, Some(alice), &alice_dir, &["--fd-kind", "self-mapped"]);
    assert_error_says(
        &refused,
        "org.burrow.Error.InvalidArgument",
        "not a range from idmapd",
    );
    // Someone else's namespace (root's), handed to alice.
    let dir = alice_dir.display().to_string();
    assert_error(
        &RootsUserns::new().hand_to(
            &h,
            Some(alice),
            &["idmap-mount", "--dir", &dir, "--fd-kind", "inherited"],
        ),
        "org.burrow.Error.NotAuthorized",
    );
    assert_eq!(host_mounts(), before);
    // Every mount handed out, and every refused call's fds, are gone from the helper.
    assert_eq!(h.helper_pids("burrow-mountd"), vec![mountd]);
    burrow_tests::wait_for("mountd's fds back to their count", || {
        fd_count(mountd) <= mountd_fds
    });
}

/// tmpfs, and xfs and btrfs on loop images, mounted for a test in the host's mount namespace
/// (mountd only maps mounts of its own namespace); unmounted when dropped.
struct ScratchFilesystems {
    mounted: Vec<PathBuf>,
}

impl ScratchFilesystems {
    fn new(h: &Harness) -> Self {
        let base = PathBuf::from(format!("{}{SCRATCH_FILESYSTEMS}", h.dir.display()));
        std::fs::create_dir_all(&base).unwrap();
        let mut scratch = ScratchFilesystems { mounted: vec![] };
        let run = |program: &str, args: &[&str]| {
            burrow_tests::run(std::process::Command::new(program).args(args));
        };
        for kind in ["tmpfs", "xfs", "btrfs"] {
            let dir = base.join(kind);
            std::fs::create_dir(&dir).unwrap();
            let target = dir.display().to_string();
            if kind == "tmpfs" {
                run("mount", &["-t", "tmpfs", "tmpfs", &target]);
            } else {
                let image = base.join(format!("{kind}.img")).display().to_string();
                // xfs needs at least 300 MB; the file stays sparse.
                run("truncate", &["-s", "320M", &image]);
                run(&format!("mkfs.{kind}"), &["-q", &image]);
                run("mount", &["-t", kind, "-o", "loop", &image, &target]);
            }
            scratch.mounted.push(dir);
        }
        scratch
    }
}

impl Drop for ScratchFilesystems {
    fn drop(&mut self) {
        for dir in &self.mounted {
            // The loop devices were set up with autoclear: unmounting frees them.
            let _ = std::process::Command::new("umount").arg(dir).status();
        }
    }
}

/// IdmapMount on each filesystem kind a rootfs may live on (ext4 is the test directory's, in
/// `idmap_mount_for_root_and_for_a_user`), for root and for alice.
#[test]
fn idmap_mount_on_tmpfs_xfs_and_btrfs() {
    let h = Harness::start(HarnessOptions::default());
    let alice = test_users().alice;
    let scratch = ScratchFilesystems::new(&h);
    let before = host_mounts();
    for dir in &scratch.mounted {
        let kind = dir.file_name().unwrap().to_string_lossy();
        let root_dir = busybox_rootfs(&dir.join("root-dir"), None);
        let v = idmap_mount(&h, None, &root_dir, &["--create", "made-by-root"]);
        assert_eq!(v["inside"]["owners"]["bin"], json!([0, 0]), "{kind}: {v}");
        assert_eq!(v["inside"]["create_errno"], Value::Null, "{kind}: {v}");
        let stored = std::fs::metadata(root_dir.join("made-by-root")).unwrap();
        assert_eq!((stored.uid(), stored.gid()), (0, 0), "{kind}");

        let alice_dir = busybox_rootfs(&dir.join("alice-dir"), Some(alice));
        let v = idmap_mount(&h, Some(alice), &alice_dir, &["--create", "made-by-alice"]);
        assert_eq!(v["inside"]["owners"]["bin"], json!([0, 0]), "{kind}: {v}");
        assert_eq!(v["inside"]["create_errno"], Value::Null, "{kind}: {v}");
        let stored = std::fs::metadata(alice_dir.join("made-by-alice")).unwrap();
        assert_eq!(stored.uid(), alice.uid, "{kind}");
        // Nothing was chowned: the image's files are still alice's on disk.
        let busybox = std::fs::metadata(alice_dir.join("bin/busybox")).unwrap();
        assert_eq!(busybox.uid(), alice.uid, "{kind}");
    }
    assert_eq!(host_mounts(), before);
}

/// A mountd started by hand on the harness's bus from `binary`, with the command line the bus
/// would use plus `extra`; killed (by its pid) when dropped.
struct ManualMountd(std::process::Child);

impl ManualMountd {
    fn start(h: &Harness, binary: &Path, extra: &[&str]) -> Self {
        let activated = h.helper_command("org.burrow.Mount1");
        let log = std::fs::File::create(h.dir.join("manual-mountd.log")).unwrap();
        let child = h
            .command(binary)
            .args(activated.get_args())
            .args(extra)
            .stderr(log)
            .spawn()
            .unwrap();
        burrow_tests::wait_for("the manual mountd on the bus", || {
            h.name_has_owner("org.burrow.Mount1")
        });
        ManualMountd(child)
    }

    fn pid(&self) -> i32 {
        self.0.id() as i32
    }
}

impl Drop for ManualMountd {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Processes stopped at a worker stage (comm `mw:*`) below `helper`, with their stage.
fn stopped_workers(helper: i32) -> Vec<(i32, String)> {
    let descends = |mut pid: i32| {
        for _ in 0..4 {
            match state_and_parent(pid) {
                Some((_, parent)) if parent == helper => return true,
                Some((_, parent)) => pid = parent,
                None => return false,
            }
        }
        false
    };
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
            let stage = comm.trim().strip_prefix("mw:")?.to_string();
            (state_and_parent(pid)?.0 == 'T' && descends(pid)).then_some((pid, stage))
        })
        .collect()
}

/// The ids of the mounts attached in the host's mount namespace (the test's own).
fn host_mount_ids() -> std::collections::HashSet<u64> {
    burrow_sys::mountinfo::own()
        .unwrap()
        .into_iter()
        .map(|m| m.id)
        .collect()
}

/// What a stopped worker holds: fd 0 its job socket, 1 and 2 /dev/null, and beyond them only
/// namespaces and detached mounts (the job's), never a socket, pipe, pidfd or anything on a
/// mount of the host's. Returns (namespace fds, mount fds) beyond fd 2.
fn worker_fds(pid: i32, host_mounts: &std::collections::HashSet<u64>) -> (usize, usize) {
    let mut fds: Vec<(i32, String)> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
        .map(|e| {
            let fd = e.file_name().to_str().unwrap().parse().unwrap();
            (
                fd,
                std::fs::read_link(e.path()).unwrap().display().to_string(),
            )
        })
        .collect();
    fds.sort();
    assert!(fds[0].0 == 0 && fds[0].1.starts_with("socket:["), "{fds:?}");
    assert_eq!(fds[1], (1, "/dev/null".to_string()), "{fds:?}");
    assert_eq!(fds[2], (2, "/dev/null".to_string()), "{fds:?}");
    let (mut namespaces, mut mounts) = (0, 0);
    for (fd, link) in &fds[3..] {
        let kind = link.split_once(":[").map(|(k, _)| k);
        if matches!(kind, Some("user" | "pid" | "net" | "ipc" | "cgroup")) {
            namespaces += 1;
            continue;
        }
        assert!(
            kind.is_none(),
            "worker {pid} holds fd {fd} -> {link}: {fds:?}"
        );
        let info = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")).unwrap();
        let mnt_id: u64 = key_values(&info.replace(":\t", "="))["mnt_id"]
            .parse()
            .unwrap();
        assert!(
            !host_mounts.contains(&mnt_id),
            "worker {pid} holds fd {fd} -> {link} on a mount of the host's: {fds:?}"
        );
        mounts += 1;
    }
    (namespaces, mounts)
}

/// Runs `client` (a test client call) while `mountd`'s workers stop at each stage: checks each
/// stopped worker (single-threaded, mountd's own binary, and its fds, see [`worker_fds`]) and
/// lets it go on. Returns the client's answer and, sorted, each stop's (stage, namespace fds,
/// mount fds).
fn watch_workers(
    mountd: &ManualMountd,
    mut client: std::process::Command,
) -> (Value, Vec<(String, usize, usize)>) {
    let mut client = client.stdout(std::process::Stdio::piped()).spawn().unwrap();
    let host = host_mount_ids();
    let mountd_exe = std::fs::read_link(format!("/proc/{}/exe", mountd.pid())).unwrap();
    let mut seen = vec![];
    let started = std::time::Instant::now();
    while client.try_wait().unwrap().is_none() {
        assert!(started.elapsed().as_secs() < 60, "the call did not finish");
        for (pid, stage) in stopped_workers(mountd.pid()) {
            let (namespaces, mounts) = worker_fds(pid, &host);
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
            assert_eq!(key_values(&status.replace(":\t", "="))["Threads"], "1");
            let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap();
            assert_eq!(exe, mountd_exe);
            seen.push((stage, namespaces, mounts));
            let pid = nix::unistd::Pid::from_raw(pid);
            nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT).unwrap();
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let out = client.wait_with_output().unwrap();
    seen.sort();
    (burrow_tests::json_lines(&out.stdout).remove(0), seen)
}

fn stops(expected: &[(&str, usize, usize)]) -> Vec<(String, usize, usize)> {
    expected
        .iter()
        .map(|(s, n, m)| (s.to_string(), *n, *m))
        .collect()
}

/// An overlay mounted on the host for a test, unmounted when dropped.
struct Overlay(PathBuf);

impl Overlay {
    fn new(base: &Path) -> Self {
        let lower = busybox_rootfs(&base.join("lower"), None);
        let dirs = ["upper", "work", "merged"].map(|d| base.join(d));
        for d in &dirs {
            std::fs::create_dir_all(d).unwrap();
        }
        let options = format!(
            "lowerdir={},upperdir={},workdir={}",
            lower.display(),
            dirs[0].display(),
            dirs[1].display()
        );
        burrow_tests::run(
            std::process::Command::new("mount")
                .args(["-t", "overlay", "overlay", "-o", &options])
                .arg(&dirs[2]),
        );
        Overlay(dirs[2].clone())
    }
}

impl Drop for Overlay {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

/// Invariant 7 for mountd's workers, looked at while they run: a debug build started with
/// `--test-stop-workers` makes each worker stop itself at each stage (after its exec, once
/// it has its job, in the container's pid namespace), and the test reads its fds there. The
/// helper holds the caller's fds meanwhile (zbus receives them without close-on-exec): none
/// of them, nor the bus socket, may reach a worker.
#[test]
fn workers_hold_only_their_job_socket_and_the_jobs_fds() {
    let h = Harness::start(HarnessOptions::default());
    let binary = burrow_tests::bin("burrow-mountd");
    let mountd = ManualMountd::start(&h, &binary, &["--test-stop-workers"]);
    let rootfs = busybox_rootfs(&workdir(&h, "rootfs"), None);
    let volume = workdir(&h, "volume");
    std::fs::create_dir(&volume).unwrap();
    let plan = json!({"extra_fds": [volume.display().to_string()],
                      "mounts": [["/mnt", "bind", 2, ["rbind"]]]});
    let mut client = h.client(None);
    client.args(["container", "--rootfs", &rootfs.display().to_string()]);
    client.args(["--script", "true", "--plan", &plan.to_string()]);
    let (v, seen) = watch_workers(&mountd, client);
    assert_eq!(v["exit"], 0, "{v}");
    // Right after its exec a worker holds its socket and /dev/null only; with its job, the
    // container's user, pid, net, ipc and cgroup namespaces, its rootfs, /dev and the volume.
    assert_eq!(
        seen,
        stops(&[("job", 5, 3), ("pidns", 5, 3), ("start", 0, 0)])
    );

    // An overlay re-made on ID-mapped layers: the lower layer and upper/work's parent.
    let overlay = Overlay::new(&workdir(&h, "ovl"));
    let mut client = h.client(None);
    client.args(["idmap-mount", "--dir", &overlay.0.display().to_string()]);
    let (v, seen) = watch_workers(&mountd, client);
    assert_eq!(v["inside"]["owners"]["bin"], json!([0, 0]), "{v}");
    assert_eq!(seen, stops(&[("job", 0, 2), ("start", 0, 0)]));
}

/// mountd's children named `mountd-worker` (its spare, once a call has run).
fn worker_children(helper: i32) -> Vec<i32> {
    // Each of its threads (the main one among them) lists the children it forked.
    std::fs::read_dir(format!("/proc/{helper}/task"))
        .unwrap()
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
        .flat_map(|c| {
            c.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<i32>>()
        })
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.trim() == "mountd-worker")
        })
        .collect()
}

/// The spare worker mountd execs ahead of the next call waits as any worker before its job:
/// single-threaded, non-dumpable, its socket and /dev/null only. Killed, it is replaced and
/// the call still builds; it dies with the helper (SIGKILL), leaving nothing behind.
#[test]
fn the_spare_worker_holds_nothing_and_dies_with_mountd() {
    let h = Harness::start(HarnessOptions::default());
    let mountd = ManualMountd::start(&h, &burrow_tests::bin("burrow-mountd"), &[]);
    let rootfs = busybox_rootfs(&workdir(&h, "rootfs"), None);
    assert_eq!(container(&h, None, &rootfs, "true", json!({}))["exit"], 0);
    let mut spare = vec![];
    burrow_tests::wait_for("a spare worker", || {
        spare = worker_children(mountd.pid());
        spare.len() == 1
    });
    let pid = spare[0];
    assert_eq!(worker_fds(pid, &host_mount_ids()), (0, 0));
    let status = key_values(
        &std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap()
            .replace(":\t", "="),
    );
    assert_eq!(status["Threads"], "1");
    assert_eq!(
        std::fs::read_link(format!("/proc/{pid}/exe")).unwrap(),
        std::fs::read_link(format!("/proc/{}/exe", mountd.pid())).unwrap()
    );
    // Waiting for long, it unmaps its code's and libraries' pages (mapped again with its job):
    // most of them go.
    let mapped = burrow_tests::file_pages_kb(pid);
    burrow_tests::wait_for("the spare's file pages unmapped", || {
        burrow_tests::file_pages_kb(pid) < mapped / 2
    });

    // A dead spare: the next call starts its own worker, and a new spare follows.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    burrow_tests::wait_for("the killed spare reaped or a zombie", || {
        state_and_parent(pid).is_none_or(|(state, _)| state == 'Z')
    });
    assert_eq!(container(&h, None, &rootfs, "true", json!({}))["exit"], 0);
    burrow_tests::wait_for("a new spare", || {
        worker_children(mountd.pid())
            .iter()
            .any(|p| *p != pid && state_and_parent(*p).is_some_and(|(s, _)| s != 'Z'))
    });
    let spares: Vec<i32> = worker_children(mountd.pid())
        .into_iter()
        .filter(|p| state_and_parent(*p).is_some_and(|(s, _)| s != 'Z'))
        .collect();
    assert_eq!(spares.len(), 1);
    drop(mountd);
    burrow_tests::wait_for("the spare killed with mountd", || {
        state_and_parent(spares[0]).is_none_or(|(state, _)| state == 'Z')
    });
}

/// A worker is an exec of the very binary the helper runs (/proc/self/exe), not of a path: an
/// upgrade that replaces the file leaves the running helper's workers on its own version.
#[test]
fn workers_run_the_helpers_binary_after_it_was_replaced_on_disk() {
    let h = Harness::start(HarnessOptions::default());
    let old = h.dir.join("burrow-mountd-old");
    std::fs::copy(burrow_tests::bin("burrow-mountd"), &old).unwrap();
    let mountd = ManualMountd::start(&h, &old, &[]);
    std::fs::remove_file(&old).unwrap();
    std::fs::write(&old, "#!/bin/sh\nexit 1\n").unwrap();
    std::fs::set_permissions(&old, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let rootfs = busybox_rootfs(&workdir(&h, "rootfs"), None);
    let v = container(&h, None, &rootfs, "echo built", json!({}));
    assert_eq!(v["exit"], 0, "{v}\n{}", h.log());
    assert!(std::fs::read_link(format!("/proc/{}/exe", mountd.pid()))
        .unwrap()
        .display()
        .to_string()
        .ends_with("(deleted)"));
}

/// A worker's failure is answered with whose it is, errno kept: the kernel's (here, the
/// helper's staging directory is gone) is `Failed`, the caller's (a tmpfs option the kernel
/// refuses) is `InvalidArgument`.
#[test]
fn worker_failures_are_named_for_whose_they_are() {
    let h = Harness::start(HarnessOptions::default());
    let rootfs = busybox_rootfs(&workdir(&h, "rootfs"), None);
    let before = host_mounts();
    assert_eq!(container(&h, None, &rootfs, "true", json!({}))["exit"], 0);
    let staging = h.mountd_staging();
    std::fs::remove_dir(&staging).unwrap();
    let v = container(&h, None, &rootfs, "true", json!({}));
    assert_error_says(
        &v,
        "org.burrow.Error.Failed",
        "ENOENT: No such file or directory",
    );
    assert_error_says(
        &v,
        "org.burrow.Error.Failed",
        &staging.display().to_string(),
    );
    std::fs::create_dir(&staging).unwrap();

    let bad_size = json!({"mounts": [["/scratch", "tmpfs", null, ["size=lots"]]]});
    let v = container(&h, None, &rootfs, "true", bad_size);
    assert_error_says(
        &v,
        "org.burrow.Error.InvalidArgument",
        "tmpfs option size=lots: EINVAL",
    );
    // Neither left a mount behind, and the helper builds again.
    assert_eq!(container(&h, None, &rootfs, "true", json!({}))["exit"], 0);
    assert_eq!(host_mounts(), before);
}
