//! Sandboxes for unprivileged users: `burrow` run as burrow-alice (group burrow, not root, no
//! docker group, no sudo) against the harness's real bus and polkitd, with the admin's quota
//! file. Uses the cached Debian image (tests/fixtures/debian-rootfs.sh system).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use burrow_tests::{
    assert_error, busybox_rootfs, debian_system_rootfs, json_lines, shared_bin, test_users,
    Harness, HarnessOptions, User,
};
use serde_json::Value;

struct Home {
    dir: PathBuf,
    user: User,
}

impl Home {
    /// A home and runtime directory of `user`'s own under `parent`.
    fn new(parent: &Path, user: User) -> Home {
        let dir = parent.join(user.name);
        std::fs::create_dir_all(dir.join("run")).unwrap();
        for d in [&dir, &dir.join("run")] {
            std::os::unix::fs::chown(d, Some(user.uid), Some(user.gid)).unwrap();
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o700)).unwrap();
        }
        Home { dir, user }
    }

    fn burrow(&self, h: &Harness, args: &[&str]) -> Command {
        let mut cmd = h.as_user(shared_bin("burrow"), Some(self.user));
        cmd.env("HOME", &self.dir)
            .env("XDG_RUNTIME_DIR", self.dir.join("run"))
            .env_remove("XDG_DATA_HOME")
            .current_dir(&self.dir)
            .args(args)
            .stdin(Stdio::null());
        cmd
    }

    fn run(&self, h: &Harness, args: &[&str]) -> Output {
        self.burrow(h, args).output().unwrap()
    }

    fn ok(&self, h: &Harness, args: &[&str]) -> String {
        let out = self.run(h, args);
        assert!(
            out.status.success(),
            "burrow {args:?} as {}: {}{}",
            self.user.name,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

/// Runs a `burrow run -d`-like command whose container keeps the stdio it inherits: stdout
/// goes nowhere, stderr to a file (a pipe would stay open as long as the container runs).
fn detached(mut cmd: Command, scratch: &Path) -> (bool, String) {
    let err_path = scratch.join("detached.err");
    let err = std::fs::File::create(&err_path).unwrap();
    let status = cmd.stdout(Stdio::null()).stderr(err).status().unwrap();
    (
        status.success(),
        std::fs::read_to_string(&err_path).unwrap_or_default(),
    )
}

fn list(h: &Harness) -> Vec<Value> {
    let out = h.client(None).arg("list").output().unwrap();
    json_lines(&out.stdout)[0]["entries"]
        .as_array()
        .cloned()
        .unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A busybox bundle in `home` that sleeps, owned by its user.
fn sleeper_bundle(home: &Home, name: &str) -> PathBuf {
    let bundle = home.dir.join(name);
    busybox_rootfs(&bundle.join("rootfs"), Some(home.user));
    let mut spec = default_spec_via_file(&bundle);
    spec["process"]["terminal"] = false.into();
    spec["process"]["args"] = serde_json::json!(["sleep", "1000"]);
    std::fs::write(bundle.join("config.json"), spec.to_string()).unwrap();
    std::os::unix::fs::chown(&bundle, Some(home.user.uid), Some(home.user.gid)).unwrap();
    bundle
}

fn default_spec_via_file(bundle: &Path) -> Value {
    let _ = std::fs::remove_file(bundle.join("config.json"));
    assert!(Command::new(shared_bin("burrow"))
        .args(["spec", "--bundle"])
        .arg(bundle)
        .status()
        .unwrap()
        .success());
    serde_json::from_str(&std::fs::read_to_string(bundle.join("config.json")).unwrap()).unwrap()
}

/// Removes what the test made even when it fails half-way: a container left running would
/// keep a range the next run's (fresh) idmapd hands out again.
struct Cleanup<'a> {
    h: &'a Harness,
    alice: &'a Home,
    root_state: PathBuf,
}

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        let _ = self
            .alice
            .burrow(self.h, &["sandbox", "rm", "sb1"])
            .output();
        let _ = self
            .alice
            .burrow(self.h, &["delete", "--force", "shared-name"])
            .output();
        let _ = self
            .h
            .command(shared_bin("burrow"))
            .arg("--root")
            .arg(&self.root_state)
            .args(["delete", "--force", "shared-name"])
            .output();
        let _ = std::fs::remove_dir_all(self.root_state.parent().unwrap());
    }
}

#[test]
fn unprivileged_users_get_isolated_sandboxes() {
    let rootfs = debian_system_rootfs();
    let work = PathBuf::from(format!("/tmp/burrow-sandbox-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).unwrap();
    std::fs::set_permissions(&work, std::fs::Permissions::from_mode(0o755)).unwrap();
    let quotas = work.join("quotas.conf");
    std::fs::write(
        &quotas,
        "[default]\nmax_ranges = 8\nmax_extra_devices = 0\n\
         [user burrow-alice]\nmax_ranges = 2\npids_max = 4000\nmemory_max = 4G\n",
    )
    .unwrap();
    let quota_args = vec!["--quota-file".to_string(), quotas.display().to_string()];
    let h = Harness::start(HarnessOptions {
        idmapd_args: quota_args.clone(),
        devd_args: quota_args,
        ..Default::default()
    });
    let users = test_users();
    let alice = Home::new(&work, users.alice);
    let bob = Home::new(&work, users.bob);
    let root_state = work.join("root-state");
    let _cleanup = Cleanup {
        h: &h,
        alice: &alice,
        root_state: root_state.clone(),
    };

    // The image as a tarball alice can read (the admin's copy has root-only files).
    let image = work.join("debian.tar");
    assert!(Command::new("tar")
        .arg("-C")
        .arg(&rootfs)
        .arg("-cf")
        .arg(&image)
        .arg(".")
        .status()
        .unwrap()
        .success());
    std::fs::set_permissions(&image, std::fs::Permissions::from_mode(0o644)).unwrap();

    // alice's sandbox boots systemd, runs dockerd (overlay2) and an inner container, and its
    // sshd is reachable from the host through pasta. pasta needs /dev/net/tun usable by users,
    // as udev leaves it on Debian (0666); this VM has no udev.
    std::fs::set_permissions("/dev/net/tun", std::fs::Permissions::from_mode(0o666)).unwrap();
    let ssh_port = (20000 + std::process::id() % 10000).to_string();
    alice.ok(
        &h,
        &[
            "sandbox",
            "create",
            "sb1",
            "--image",
            &image.display().to_string(),
            "--ssh-port",
            &ssh_port,
        ],
    );
    // `sandbox shell sb1 -- COMMAND` as alice: (stdout, success).
    let in_sb1 = |command: &str| -> (String, bool) {
        let mut args = vec!["sandbox", "shell", "sb1", "--"];
        args.extend(command.split(' '));
        let out = alice.run(&h, &args);
        let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
        (text, out.status.success())
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    let state = loop {
        let (state, _) = in_sb1("systemctl is-system-running");
        if !matches!(state.as_str(), "" | "initializing" | "starting") || Instant::now() > deadline
        {
            break state;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let (failed, _) = in_sb1("systemctl --failed --no-legend");
    assert_eq!(state, "running", "failed units: {failed}");
    assert!(alice
        .ok(&h, &["sandbox", "list"])
        .contains("sb1                  running"));
    assert_eq!(
        in_sb1("docker info -f {{.Driver}}"),
        ("overlay2".into(), true)
    );
    let bb = busybox_rootfs(&work.join("bb"), None);
    let bb_tar = work.join("bb.tar");
    assert!(Command::new("tar")
        .arg("-C")
        .arg(&bb)
        .arg("-cf")
        .arg(&bb_tar)
        .arg(".")
        .status()
        .unwrap()
        .success());
    let import = alice
        .burrow(
            &h,
            &[
                "sandbox", "shell", "sb1", "--", "docker", "import", "-", "bb",
            ],
        )
        .stdin(std::fs::File::open(&bb_tar).unwrap())
        .output()
        .unwrap();
    assert!(import.status.success(), "{}", stderr(&import));
    assert_eq!(
        in_sb1("docker run --rm bb echo inner-ok"),
        ("inner-ok".into(), true)
    );
    // On a terminal (script(1) gives it one), `sandbox shell` gives the command a pty of its
    // own and returns its exit code.
    let on_tty = h
        .as_user("script", Some(alice.user))
        .env("HOME", &alice.dir)
        .env("XDG_RUNTIME_DIR", alice.dir.join("run"))
        .current_dir(&alice.dir)
        .arg("-qec")
        .arg(format!(
            "{} sandbox shell sb1 -- sh -c 'tty; exit 7'",
            shared_bin("burrow").display()
        ))
        .arg("/dev/null")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(on_tty.status.code(), Some(7), "{}", stderr(&on_tty));
    assert!(
        String::from_utf8_lossy(&on_tty.stdout).contains("/dev/pts/"),
        "{}",
        String::from_utf8_lossy(&on_tty.stdout)
    );
    assert_eq!(in_sb1("tty"), ("not a tty".into(), false));
    assert!(alice
        .ok(&h, &["sandbox", "list"])
        .contains(&format!("127.0.0.1:{ssh_port}")));
    // Over ssh, with a key of hers: the sandbox's root, its systemd and its Docker.
    let key = alice.dir.join("id_ed25519");
    let keygen = h
        .as_user("ssh-keygen", Some(alice.user))
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&key)
        .env("HOME", &alice.dir)
        .output()
        .unwrap();
    assert!(keygen.status.success(), "{}", stderr(&keygen));
    let authorize = alice
        .burrow(
            &h,
            &[
                "sandbox",
                "shell",
                "sb1",
                "--",
                "sh",
                "-c",
                "mkdir -p -m 700 /root/.ssh && cat > /root/.ssh/authorized_keys",
            ],
        )
        .stdin(std::fs::File::open(key.with_extension("pub")).unwrap())
        .output()
        .unwrap();
    assert!(authorize.status.success(), "{}", stderr(&authorize));
    let ssh = h
        .as_user("ssh", Some(alice.user))
        .env("HOME", &alice.dir)
        .args(["-p", &ssh_port, "-i"])
        .arg(&key)
        .args([
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "LogLevel=ERROR",
            "root@127.0.0.1",
            "id -u; systemctl is-system-running; docker info -f '{{.Driver}}'",
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&ssh.stdout).trim(),
        "0\nrunning\noverlay2",
        "{}",
        stderr(&ssh)
    );

    // Her sandbox's range is exclusive, far from host ID 0, and her init's cgroup is the one
    // idmapd delegated, under her per-user limits.
    let entries = list(&h);
    let mine: Vec<&Value> = entries
        .iter()
        .filter(|e| {
            e["uid"] == alice.user.uid && e["name"].as_str().unwrap().ends_with("-sandbox-sb1")
        })
        .collect();
    assert_eq!(mine.len(), 1, "{entries:?}");
    let base = mine[0]["base"].as_u64().unwrap();
    assert!(base >= 65536);
    for other in entries.iter().filter(|e| e["base"].as_u64() != Some(base)) {
        assert!(
            other["base"].as_u64().unwrap().abs_diff(base) >= 65536,
            "{other}"
        );
    }
    let state: Value = serde_json::from_str(&alice.ok(&h, &["state", "sandbox-sb1"])).unwrap();
    let pid = state["pid"].as_i64().unwrap();
    let uid_map = std::fs::read_to_string(format!("/proc/{pid}/uid_map")).unwrap();
    assert_eq!(
        uid_map.split_whitespace().collect::<Vec<_>>(),
        ["0", &base.to_string(), "65536"]
    );
    let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let user_cgroup = format!("/burrow-users/user-{}", alice.user.uid);
    assert!(
        cgroup.contains(&format!("{user_cgroup}/range-{base}")),
        "{cgroup}"
    );
    assert_eq!(
        std::fs::read_to_string(format!("/sys/fs/cgroup/pids{user_cgroup}/pids.max"))
            .unwrap()
            .trim(),
        "4000"
    );

    // bob is not in group burrow: the first helper refuses, nothing is made.
    let before = h.ranges_in_use();
    let bob_bundle = sleeper_bundle(&bob, "bundle");
    let (ok, err) = detached(
        bob.burrow(
            &h,
            &["run", "-d", "-b", &bob_bundle.display().to_string(), "b1"],
        ),
        &work,
    );
    assert!(!ok);
    assert!(
        err.contains("idmapd: org.burrow.Error.NotAuthorized"),
        "{err}"
    );
    assert_eq!(h.ranges_in_use(), before);
    assert_eq!(bob.ok(&h, &["list", "-q"]), "");

    // A container of root's: alice can neither signal, exec into nor delete it, and taking
    // its id for a container of hers changes nothing of root's.
    let root_bundle = sleeper_bundle(
        &Home {
            dir: work.join("root"),
            user: User {
                name: "root",
                uid: 0,
                gid: 0,
                groups: &[0],
            },
        },
        "bundle",
    );
    let mut root_run = h.command(shared_bin("burrow"));
    root_run
        .arg("--root")
        .arg(&root_state)
        .args(["run", "-d", "-b"])
        .arg(&root_bundle)
        .arg("shared-name")
        .stdin(Stdio::null());
    let (ok, err) = detached(root_run, &work);
    assert!(ok, "{err}");
    let root_state_arg = root_state.display().to_string();
    let root_record = || -> Value {
        let out = h
            .command(shared_bin("burrow"))
            .args(["--root", &root_state_arg, "state", "shared-name"])
            .output()
            .unwrap();
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let root_pid = root_record()["pid"].as_i64().unwrap();
    for attempt in [
        vec!["--root", &root_state_arg, "kill", "shared-name", "KILL"],
        vec!["--root", &root_state_arg, "exec", "shared-name", "true"],
        vec![
            "--root",
            &root_state_arg,
            "delete",
            "--force",
            "shared-name",
        ],
    ] {
        let out = alice.run(&h, &attempt);
        assert!(!out.status.success(), "{attempt:?} succeeded");
        assert!(
            !stderr(&out).is_empty(),
            "{attempt:?} failed without a message"
        );
    }
    assert_eq!(root_record()["status"], "running");
    assert_eq!(root_record()["pid"].as_i64().unwrap(), root_pid);

    // Quota: alice holds at most 2 ranges (the sandbox and one more); others are unaffected.
    let alice_bundle = sleeper_bundle(&alice, "bundle");
    let alice_bundle = alice_bundle.display().to_string();
    let (ok, err) = detached(
        alice.burrow(&h, &["run", "-d", "-b", &alice_bundle, "shared-name"]),
        &work,
    );
    assert!(ok, "{err}");
    assert_eq!(root_record()["pid"].as_i64().unwrap(), root_pid);
    let before = h.ranges_in_use();
    let (ok, err) = detached(
        alice.burrow(&h, &["run", "-d", "-b", &alice_bundle, "third"]),
        &work,
    );
    assert!(!ok && err.contains("org.burrow.Error.Exhausted"), "{err}");
    assert_eq!(h.ranges_in_use(), before);
    assert_eq!(alice.ok(&h, &["list", "-q"]).lines().count(), 2);
    let root_alloc = h
        .client(None)
        .args(["allocate", "--name", "root-more"])
        .output()
        .unwrap();
    assert_eq!(json_lines(&root_alloc.stdout)[0]["ok"], true);

    // idmapd delegates a cgroup only for a process inside the caller's own range.
    let mine = list(&h)
        .into_iter()
        .find(|e| {
            e["uid"] == alice.user.uid && e["name"].as_str().unwrap().ends_with("-shared-name")
        })
        .unwrap();
    let name = mine["name"].as_str().unwrap().to_string();
    let out = h
        .client(Some(alice.user))
        .args([
            "add-cgroup",
            "--name",
            &name,
            "--pid",
            &root_pid.to_string(),
        ])
        .output()
        .unwrap();
    assert_error(
        &json_lines(&out.stdout)[0],
        "org.burrow.Error.NotAuthorized",
    );
    let out = h
        .client(Some(alice.user))
        .args([
            "add-cgroup",
            "--name",
            "not-hers",
            "--pid",
            &pid.to_string(),
        ])
        .output()
        .unwrap();
    assert_error(&json_lines(&out.stdout)[0], "org.burrow.Error.NotFound");

    // stop and start keep the sandbox's range, hence the owner of a non-root user's file.
    let in_sandbox =
        |script: &str| alice.ok(&h, &["sandbox", "shell", "sb1", "--", "sh", "-c", script]);
    in_sandbox("touch /kept && chown 1000:1000 /kept");
    alice.ok(&h, &["sandbox", "stop", "sb1"]);
    assert!(alice.ok(&h, &["sandbox", "list"]).contains("stopped"));
    assert_eq!(
        h.range_state("sandbox-sb1").as_deref(),
        Some("parked"),
        "the stopped sandbox's range is not parked"
    );
    alice.ok(&h, &["sandbox", "start", "sb1"]);
    let state: Value = serde_json::from_str(&alice.ok(&h, &["state", "sandbox-sb1"])).unwrap();
    let restarted = std::fs::read_to_string(format!("/proc/{}/uid_map", state["pid"])).unwrap();
    assert_eq!(restarted, uid_map, "sandbox start gave another range");
    assert_eq!(in_sandbox("stat -c %u:%g /kept"), "1000:1000");

    // Removing the sandbox shuts systemd down and leaves nothing of it: files, range, cgroup.
    alice.ok(&h, &["delete", "--force", "shared-name"]);
    let pasta = std::fs::read_to_string(
        alice
            .dir
            .join(".local/share/burrow/sandboxes/sb1/pasta.pid"),
    )
    .unwrap();
    alice.ok(&h, &["sandbox", "rm", "sb1"]);
    burrow_tests::wait_for("pasta gone", || {
        !Path::new(&format!("/proc/{}", pasta.trim())).exists()
    });
    assert_eq!(alice.ok(&h, &["sandbox", "list"]).lines().count(), 1);
    assert!(!alice.dir.join(".local/share/burrow/sandboxes/sb1").exists());
    burrow_tests::wait_for("alice's ranges and cgroups gone", || {
        list(&h).iter().all(|e| e["uid"] != alice.user.uid)
            && h.persisted_records()
                .iter()
                .all(|r| r["uid"] != alice.user.uid)
            && !Path::new(&format!("/sys/fs/cgroup/pids{user_cgroup}/range-{base}")).exists()
    });
    let out = h
        .command(shared_bin("burrow"))
        .args([
            "--root",
            &root_state_arg,
            "delete",
            "--force",
            "shared-name",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
}
