//! devd against a real bus, polkitd and kernel: run as root (`make test`).

use std::collections::BTreeMap;

use burrow_tests::{
    assert_error, assert_error_says, fd_count, test_users, wait_for, Harness, HarnessOptions,
    RootsUserns, User,
};
use serde_json::Value;

fn dev_create(h: &Harness, user: Option<User>, args: &[&str]) -> Value {
    let mut client = h.client(user);
    client.arg("dev-create").args(args);
    let mut lines = h.client_lines(client);
    assert_eq!(lines.len(), 1);
    lines.remove(0)
}

fn harness_with_allowlist() -> (Harness, std::path::PathBuf) {
    let list = std::env::temp_dir().join(format!(
        "burrow-devd-allow-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    // fuse and net/tun are fine; kmsg and mem are never allowed; loop0 is a block device.
    std::fs::write(&list, "# test allowlist\nfuse\nnet/tun\nkmsg\nmem\nloop0\n").unwrap();
    let quotas = list.with_extension("quotas");
    std::fs::write(&quotas, "[user burrow-carol]\nmax_extra_devices = 1\n").unwrap();
    let h = Harness::start(HarnessOptions {
        devd_args: vec![
            "--allowlist".into(),
            list.display().to_string(),
            "--quota-file".into(),
            quotas.display().to_string(),
        ],
        ..Default::default()
    });
    (h, list)
}

/// name -> (kind, mode, uid, gid, rdev) as seen from inside the container's user namespace.
fn entries(v: &Value) -> BTreeMap<String, (String, String, u64, u64, String)> {
    assert_eq!(v["ok"], true, "{v}");
    v["inside"]["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let s = |k: &str| e[k].as_str().unwrap().to_string();
            (
                s("name"),
                (
                    s("kind"),
                    s("mode"),
                    e["uid"].as_u64().unwrap(),
                    e["gid"].as_u64().unwrap(),
                    s("rdev"),
                ),
            )
        })
        .collect()
}

fn expected_standard() -> BTreeMap<String, (String, String, u64, u64, String)> {
    let chr = |rdev: &str| ("chr".to_string(), "666".to_string(), 0, 0, rdev.to_string());
    let dir = |mode: &str| ("dir".to_string(), mode.to_string(), 0, 0, "0:0".to_string());
    let lnk = || {
        (
            "lnk".to_string(),
            "777".to_string(),
            0,
            0,
            "0:0".to_string(),
        )
    };
    [
        ("null", chr("1:3")),
        ("zero", chr("1:5")),
        ("full", chr("1:7")),
        ("random", chr("1:8")),
        ("urandom", chr("1:9")),
        ("tty", chr("5:0")),
        ("pts", dir("755")),
        ("shm", dir("1777")),
        ("mqueue", dir("1777")),
        ("ptmx", lnk()),
        ("fd", lnk()),
        ("stdin", lnk()),
        ("stdout", lnk()),
        ("stderr", lnk()),
    ]
    .into_iter()
    .map(|(n, e)| (n.to_string(), e))
    .collect()
}

#[test]
fn standard_dev_for_root_and_for_a_user() {
    let h = Harness::start(HarnessOptions::default());
    let mounts_before = burrow_tests::host_mounts();
    for user in [None, Some(test_users().alice)] {
        let v = dev_create(&h, user, &[]);
        assert_eq!(entries(&v), expected_standard(), "{v}");
        let inside = &v["inside"];
        let links: BTreeMap<&str, &str> = inside["entries"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["kind"] == "lnk")
            .map(|e| (e["name"].as_str().unwrap(), e["target"].as_str().unwrap()))
            .collect();
        assert_eq!(links["ptmx"], "pts/ptmx");
        assert_eq!(links["fd"], "/proc/self/fd");
        assert_eq!(links["stderr"], "/proc/self/fd/2");
        assert_eq!(
            inside["null_write_errno"],
            Value::Null,
            "writing /dev/null failed: {inside}"
        );
        assert_eq!(inside["zero_read_errno"], Value::Null);
        assert_eq!(inside["zero_is_zero"], true);
        assert_eq!(
            inside["mknod_errno"],
            libc::EPERM,
            "container root could mknod: {inside}"
        );
        assert_eq!(inside["nosuid"], true);
        assert_eq!(inside["noexec"], true);
    }
    assert_eq!(
        burrow_tests::host_mounts(),
        mounts_before,
        "devd left a mount in the host namespace"
    );
}

#[test]
fn extra_devices_only_from_the_allowlist_and_with_their_own_action() {
    let (h, list) = harness_with_allowlist();
    let alice = Some(test_users().alice);
    // Root: allowed extras appear beside the standard set, as on the host.
    let v = dev_create(&h, None, &["--extra", "fuse", "--extra", "net/tun"]);
    let got = entries(&v);
    assert_eq!(got["fuse"].0, "chr");
    assert_eq!(got["fuse"].4, "10:229");
    assert_eq!(got["net/tun"].4, "10:200");
    assert_eq!(got["net"].0, "dir");
    assert_eq!(got.len(), expected_standard().len() + 3);
    // alice is in group burrow, but the example rule keeps org.burrow.dev.extra for admins.
    assert_error(
        &dev_create(&h, alice, &["--extra", "fuse"]),
        "org.burrow.Error.NotAuthorized",
    );
    // carol has a rule of her own for that action, and a quota of one extra device.
    let carol = Some(test_users().carol);
    let got = entries(&dev_create(&h, carol, &["--extra", "fuse"]));
    assert_eq!(got["fuse"].4, "10:229");
    assert_eq!(
        (got["fuse"].2, got["fuse"].3),
        (0, 0),
        "fuse not owned by her root"
    );
    assert_error_says(
        &dev_create(&h, carol, &["--extra", "fuse", "--extra", "net/tun"]),
        "org.burrow.Error.Exhausted",
        "quota is 1",
    );
    // Not listed, never allowed, not a character device, malformed.
    assert_error(
        &dev_create(&h, None, &["--extra", "kvm"]),
        "org.burrow.Error.NotAuthorized",
    );
    // Listed by the admin, yet never given: the kernel log and raw memory.
    for never in ["kmsg", "mem"] {
        let refused = dev_create(&h, None, &["--extra", never]);
        assert_error_says(&refused, "org.burrow.Error.NotAuthorized", "never given");
    }
    assert_error(
        &dev_create(&h, None, &["--extra", "tty1"]),
        "org.burrow.Error.NotAuthorized",
    );
    assert_error(
        &dev_create(&h, None, &["--extra", "loop0"]),
        "org.burrow.Error.InvalidArgument",
    );
    assert_error(
        &dev_create(&h, None, &["--extra", "../fuse"]),
        "org.burrow.Error.InvalidArgument",
    );
    std::fs::remove_file(&list).unwrap();
    std::fs::remove_file(list.with_extension("quotas")).unwrap();
}

#[test]
fn bad_input_is_named() {
    let h = Harness::start(HarnessOptions::default());
    let alice = Some(test_users().alice);
    assert_error(
        &dev_create(&h, alice, &["--fd-kind", "file"]),
        "org.burrow.Error.InvalidArgument",
    );
    assert_error(
        &dev_create(&h, alice, &["--fd-kind", "net-ns"]),
        "org.burrow.Error.InvalidArgument",
    );
    assert_error(
        &dev_create(&h, alice, &["--unmapped"]),
        "org.burrow.Error.InvalidArgument",
    );
    assert_error(
        &dev_create(&h, alice, &["--bogus-option"]),
        "org.burrow.Error.InvalidArgument",
    );
    assert_error(
        &dev_create(&h, Some(test_users().bob), &["--unmapped"]),
        "org.burrow.Error.NotAuthorized",
    );
    // A namespace its creator mapped itself (`0 <alice> 1`), for her and for root: devd serves
    // only ranges from idmapd.
    for user in [alice, None] {
        let refused = dev_create(&h, user, &["--fd-kind", "self-mapped", "--unmapped"]);
        assert_error_says(
            &refused,
            "org.burrow.Error.InvalidArgument",
            "not a range from idmapd",
        );
    }
    // Someone else's namespace (root's), handed to alice.
    assert_error(
        &RootsUserns::new().hand_to(&h, alice, &["dev-create", "--fd-kind", "inherited"]),
        "org.burrow.Error.NotAuthorized",
    );
}

#[test]
fn no_fds_or_mounts_left_in_the_helper() {
    let h = Harness::start(HarnessOptions::default());
    dev_create(&h, None, &[]);
    let pid = h.helper_pids("burrow-devd")[0];
    let before = fd_count(pid);
    let mounts_before = burrow_tests::host_mounts();
    for _ in 0..10 {
        dev_create(&h, None, &[]);
    }
    wait_for("devd fd count back to its baseline", || {
        fd_count(pid) <= before
    });
    // devd runs in the host's mount namespace: a mount it left attached would be there.
    assert_eq!(burrow_tests::host_mounts(), mounts_before);
}
