//! Properties all three helpers share: they drop every capability they do not need at start
//! (DESIGN invariant 5), are bus-activated, and show their interface to `busctl introspect`.

use burrow_tests::{Harness, HarnessOptions};

fn mask(bits: &[u32]) -> u64 {
    bits.iter().fold(0, |m, b| m | 1 << b)
}

// Capability numbers from <linux/capability.h>.
const CHOWN: u32 = 0;
const DAC_OVERRIDE: u32 = 1;
const DAC_READ_SEARCH: u32 = 2;
const FOWNER: u32 = 3;
const FSETID: u32 = 4;
const SETGID: u32 = 6;
const SETUID: u32 = 7;
const SYS_CHROOT: u32 = 18;
const SYS_PTRACE: u32 = 19;
const SYS_NICE: u32 = 23;
const SYS_ADMIN: u32 = 21;
const MKNOD: u32 = 27;
const SETFCAP: u32 = 31;

fn capabilities(pid: i32) -> std::collections::BTreeMap<String, u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .filter(|l| l.starts_with("Cap"))
        .map(|l| {
            let (k, v) = l.split_once(':').unwrap();
            (k.to_string(), u64::from_str_radix(v.trim(), 16).unwrap())
        })
        .collect()
}

#[test]
fn helpers_keep_only_the_capabilities_they_need() {
    let h = Harness::start(HarnessOptions::default());
    let expected = [
        (
            "org.burrow.IdMap1",
            "/org/burrow/IdMap1",
            "burrow-idmapd",
            mask(&[
                SYS_ADMIN,
                SETUID,
                SETGID,
                SETFCAP,
                SYS_PTRACE,
                DAC_READ_SEARCH,
                CHOWN,
                SYS_NICE,
            ]),
        ),
        (
            "org.burrow.Dev1",
            "/org/burrow/Dev1",
            "burrow-devd",
            mask(&[SYS_ADMIN, MKNOD, CHOWN]),
        ),
        (
            "org.burrow.Mount1",
            "/org/burrow/Mount1",
            "burrow-mountd",
            mask(&[
                SYS_ADMIN,
                SYS_CHROOT,
                SYS_PTRACE,
                SETUID,
                SETGID,
                DAC_OVERRIDE,
                DAC_READ_SEARCH,
                CHOWN,
                FOWNER,
                FSETID,
                MKNOD,
            ]),
        ),
    ];
    for (name, path, binary, caps) in expected {
        assert!(!h.name_has_owner(name), "{name} running before any call");
        let out = h.busctl(&["introspect", name, path]);
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains(&format!("{name} ")),
            "{name} interface missing:\n{text}"
        );
        let pids = h.helper_pids(binary);
        assert_eq!(pids.len(), 1, "{binary} not activated by the call");
        let got = capabilities(pids[0]);
        for set in ["CapEff", "CapPrm", "CapBnd"] {
            assert_eq!(
                got[set], caps,
                "{binary} {set} is {:#x}, expected {caps:#x}",
                got[set]
            );
        }
        assert_eq!(got["CapInh"], 0, "{binary} keeps inheritable capabilities");
        assert_eq!(got["CapAmb"], 0, "{binary} keeps ambient capabilities");
    }
}

/// Each helper tells its service manager (`Type=notify`) when it owns its bus name and when it
/// is shutting down, and exits cleanly on SIGTERM.
#[test]
fn helpers_notify_ready_and_stopping() {
    let h = Harness::start(HarnessOptions::default());
    for bus_name in ["org.burrow.IdMap1", "org.burrow.Dev1", "org.burrow.Mount1"] {
        let socket_path = h.dir.join(format!("notify-{bus_name}"));
        let socket = std::os::unix::net::UnixDatagram::bind(&socket_path).unwrap();
        socket
            .set_read_timeout(Some(std::time::Duration::from_secs(30)))
            .unwrap();
        let mut helper = h
            .helper_command(bus_name)
            .env("NOTIFY_SOCKET", &socket_path)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let mut message = [0u8; 256];
        let n = socket.recv(&mut message).expect("no READY=1");
        assert_eq!(
            String::from_utf8_lossy(&message[..n]).trim(),
            "READY=1",
            "{bus_name}"
        );
        assert!(
            h.name_has_owner(bus_name),
            "{bus_name} was ready before owning its name"
        );
        // SAFETY: kill(2) on our own child, which has not been reaped yet.
        assert_eq!(unsafe { libc::kill(helper.id() as i32, libc::SIGTERM) }, 0);
        let n = socket.recv(&mut message).expect("no STOPPING=1");
        assert_eq!(
            String::from_utf8_lossy(&message[..n]).trim(),
            "STOPPING=1",
            "{bus_name}"
        );
        assert!(helper.wait().unwrap().success(), "{bus_name} exit status");
        assert!(!h.name_has_owner(bus_name), "{bus_name} still owned");
    }
}

fn make(args: &[&str]) {
    burrow_tests::run(
        std::process::Command::new("make")
            .arg("-C")
            .arg(burrow_tests::workspace_root())
            .args(args),
    );
}

fn files_below(dir: &std::path::Path) -> Vec<String> {
    let mut files = vec![];
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap().flatten() {
            if entry.file_type().unwrap().is_dir() {
                stack.push(entry.path());
            } else {
                let relative = entry.path().strip_prefix(dir).unwrap().to_owned();
                files.push(relative.display().to_string());
            }
        }
    }
    files.sort();
    files
}

/// `make install` (its file-copying part, on the debug build) into a DESTDIR puts everything
/// where the system's services look for it, and `make uninstall` takes all of it away again;
/// installed under a real prefix, the units pass `systemd-analyze verify`.
#[test]
fn make_install_uninstall_and_verified_units() {
    use std::os::unix::fs::PermissionsExt;
    let base = std::path::PathBuf::from(format!("/tmp/burrow-install-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    let staged = base.join("destdir");
    let destdir = format!("DESTDIR={}", staged.display());
    make(&["install-files", "PROFILE=dev", &destdir]);
    let mut expected = vec![
        "etc/polkit-1/rules.d/50-burrow.rules".to_string(),
        "lib/systemd/system/burrow-gc.service".into(),
        "usr/local/bin/burrow".into(),
        "usr/share/dbus-1/system.d/org.burrow.conf".into(),
        "usr/share/polkit-1/actions/org.burrow.policy".into(),
    ];
    for (helper, bus_name) in [("idmapd", "IdMap1"), ("devd", "Dev1"), ("mountd", "Mount1")] {
        expected.push(format!("lib/systemd/system/burrow-{helper}.service"));
        expected.push(format!("usr/local/libexec/burrow/burrow-{helper}"));
        expected.push(format!(
            "usr/share/dbus-1/system-services/org.burrow.{bus_name}.service"
        ));
        let activation = std::fs::read_to_string(staged.join(format!(
            "usr/share/dbus-1/system-services/org.burrow.{bus_name}.service"
        )))
        .unwrap();
        assert!(
            activation.contains(&format!("Exec=/usr/local/libexec/burrow/burrow-{helper}\n"))
                && activation.contains(&format!("SystemdService=burrow-{helper}.service")),
            "{activation}"
        );
        let unit = std::fs::read_to_string(
            staged.join(format!("lib/systemd/system/burrow-{helper}.service")),
        )
        .unwrap();
        assert!(
            unit.contains(&format!(
                "ExecStart=/usr/local/libexec/burrow/burrow-{helper}"
            )),
            "{unit}"
        );
        let mode =
            std::fs::metadata(staged.join(format!("usr/local/libexec/burrow/burrow-{helper}")))
                .unwrap()
                .permissions()
                .mode();
        assert_eq!(mode & 0o7777, 0o755);
    }
    // Completions and one man page per command, generated by the built `burrow`.
    expected.extend([
        "usr/local/share/bash-completion/completions/burrow".to_string(),
        "usr/local/share/zsh/site-functions/_burrow".into(),
        "usr/local/share/fish/vendor_completions.d/burrow.fish".into(),
    ]);
    let installed = files_below(&staged);
    let man_pages: Vec<&String> = installed
        .iter()
        .filter(|f| f.starts_with("usr/local/share/man/man1/"))
        .collect();
    for command in [
        "burrow",
        "burrow-create",
        "burrow-exec",
        "burrow-sandbox-create",
    ] {
        let page = format!("usr/local/share/man/man1/{command}.1");
        assert!(man_pages.contains(&&page), "{page} missing: {man_pages:?}");
    }
    expected.extend(man_pages.into_iter().cloned());
    expected.sort();
    assert_eq!(installed, expected);
    make(&["uninstall", &destdir]);
    assert_eq!(files_below(&staged), Vec::<String>::new());

    let prefix = base.join("prefix");
    let p = prefix.display();
    make(&[
        "install-files",
        "PROFILE=dev",
        &format!("PREFIX={p}"),
        &format!("SYSTEMD_UNIT_DIR={p}/units"),
        &format!("DBUS_SYSTEM_CONF_DIR={p}/dbus"),
        &format!("DBUS_SYSTEM_SERVICES_DIR={p}/dbus-services"),
        &format!("POLKIT_ACTIONS_DIR={p}/polkit"),
        &format!("POLKIT_RULES_DIR={p}/rules"),
    ]);
    let gc_unit = std::fs::read_to_string(prefix.join("units/burrow-gc.service")).unwrap();
    assert!(
        gc_unit.contains(&format!("ExecStart={p}/bin/burrow gc --all\n")),
        "{gc_unit}"
    );
    let out = std::process::Command::new("systemd-analyze")
        .arg("verify")
        .args(
            ["idmapd", "devd", "mountd", "gc"]
                .map(|h| prefix.join(format!("units/burrow-{h}.service"))),
        )
        .output()
        .unwrap();
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "systemd-analyze verify: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::remove_dir_all(&base).unwrap();
}

/// The bus policy: only root may own the helpers' names, so nobody can stand in for a helper
/// and answer its callers.
#[test]
fn only_root_may_own_the_helpers_names() {
    let h = Harness::start(HarnessOptions::default());
    let alice = burrow_tests::test_users().alice;
    for bus_name in ["org.burrow.IdMap1", "org.burrow.Dev1", "org.burrow.Mount1"] {
        let request_name = |user| {
            h.as_user("busctl", user)
                .args([
                    "--system",
                    "call",
                    "org.freedesktop.DBus",
                    "/org/freedesktop/DBus",
                    "org.freedesktop.DBus",
                    "RequestName",
                    "su",
                    bus_name,
                    "4",
                ])
                .output()
                .unwrap()
        };
        let out = request_name(Some(alice));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && stderr.contains("Access denied"),
            "alice could own {bus_name}: {stderr}"
        );
        // Root may (1: DBUS_REQUEST_NAME_REPLY_PRIMARY_OWNER; the name goes with busctl).
        let out = request_name(None);
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "u 1",
            "{out:?}"
        );
    }
}

/// After the system bus restarts (issue item 10), the helpers the old bus activated leave at
/// once (they never would by idle time here), and the first calls on the new bus reach fresh
/// helpers: idmapd gets its state lock, waiting for the old instance if it must.
#[test]
fn helpers_leave_with_a_restarted_bus() {
    let mut h = Harness::start(HarnessOptions::default());
    let client = |h: &Harness, args: &[&str]| {
        let out = h.client(None).args(args).output().unwrap();
        let lines = burrow_tests::json_lines(&out.stdout);
        assert!(
            out.status.success() && lines.iter().all(|l| l["ok"] == true),
            "{args:?}: {lines:?} {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            h.log()
        );
    };
    // idmapd (allocate, list), devd and mountd (a /dev for the allocated namespace).
    client(&h, &["allocate", "--name", "before-restart"]);
    client(&h, &["dev-create"]);
    burrow_tests::run(h.command("busctl").args([
        "--system",
        "introspect",
        "org.burrow.Mount1",
        "/org/burrow/Mount1",
    ]));
    let old_bus = h.bus_pid();
    let binaries = ["burrow-idmapd", "burrow-devd", "burrow-mountd"];
    for binary in binaries {
        assert_eq!(h.helper_pids(binary).len(), 1, "{binary} not running");
    }

    let restarted = std::time::Instant::now();
    h.restart_bus();
    // The first call on the new bus activates a new idmapd at once, while the old one may
    // still hold the lock.
    client(&h, &["list"]);
    client(&h, &["dev-create"]);
    let first_calls = restarted.elapsed();
    burrow_tests::wait_for("the old bus's helpers to exit", || {
        binaries
            .iter()
            .all(|b| h.helper_pids_of_bus(b, old_bus).is_empty())
    });
    let gone = restarted.elapsed();
    assert!(
        gone < std::time::Duration::from_secs(3),
        "the old helpers took {gone:?} to leave"
    );
    eprintln!("first calls on the new bus took {first_calls:?}, old helpers gone after {gone:?}");
    assert!(
        h.log()
            .contains("the bus closed the connection (it exited or restarted), exiting"),
        "{}",
        h.log()
    );
    for binary in ["burrow-idmapd", "burrow-devd"] {
        assert_eq!(h.helper_pids(binary).len(), 1, "{binary} on the new bus");
    }
}

/// A starting idmapd waits (bounded) for the state lock held by another instance, and says so.
#[test]
fn idmapd_waits_for_the_state_lock() {
    let h = Harness::start(HarnessOptions::default());
    std::fs::create_dir_all(h.idmap_state_dir()).unwrap();
    let lock = h.idmap_state_dir().with_extension("lock");
    let mut holder = std::process::Command::new("flock")
        .arg(&lock)
        .args(["sleep", "2"])
        .spawn()
        .unwrap();
    burrow_tests::wait_for("flock holding the lock", || {
        std::process::Command::new("flock")
            .arg("--nonblock")
            .arg(&lock)
            .arg("true")
            .status()
            .is_ok_and(|s| !s.success())
    });
    let started = std::time::Instant::now();
    let out = h.client(None).arg("list").output().unwrap();
    let waited = started.elapsed();
    let _ = holder.wait();
    assert!(
        out.status.success() && burrow_tests::json_lines(&out.stdout)[0]["ok"] == true,
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        h.log()
    );
    assert!(
        waited >= std::time::Duration::from_millis(1000),
        "answered in {waited:?} while the lock was held"
    );
    assert!(
        h.log()
            .contains("another instance holds the state lock, waiting for it to exit"),
        "{}",
        h.log()
    );
}
