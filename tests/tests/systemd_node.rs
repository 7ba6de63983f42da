//! The helpers under their own hardened systemd units (issue item 12): a node that boots
//! systemd (the cached Debian image, run by runc with the options below) gets exactly what
//! `make install` installs; its systemd then activates each helper as its unit over D-Bus, and
//! a real container is made through them as root. Checks each unit's state, capabilities and
//! journal, and reports `systemd-analyze security` for the three units as they ran.

use std::path::{Path, PathBuf};
use std::time::Instant;

use burrow_tests::node::{assert_exclusive_range, install_files, text, Node, UNITS};
use burrow_tests::{bin, busybox_rootfs, Docker, Harness, HarnessOptions};

const NODE: &str = "burrow-systemd-node";

/// A busybox bundle whose process runs `args`.
fn bundle(dir: &Path, args: &[&str]) -> PathBuf {
    busybox_rootfs(&dir.join("rootfs"), None);
    burrow_tests::write_spec(dir, args, |_| {});
    dir.to_path_buf()
}

/// A container made through the units: `burrow run` prints its uid map (an exclusive range,
/// never host ID 0) and exits 0; a detached one holds a range that `burrow delete` releases.
fn run_containers(node: &Node) {
    let out = node.exec("burrow run --bundle /bundles/uid-map sd-uid-map");
    let stdout = text(&out);
    assert!(
        out.status.success(),
        "burrow run: {:?}: {stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    // The default pool, between systemd's container and foreign UID ranges.
    assert_exclusive_range(&stdout);
    assert_eq!(node.ranges(), "a(usuuu) 0", "burrow run left its range");

    node.exec_ok("burrow run -d --bundle /bundles/sleeper sd-sleeper >/dev/null 2>&1 </dev/null");
    let held = node.ranges();
    assert!(
        held.starts_with("a(usuuu) 1 0 \"")
            && held.contains("sd-sleeper")
            && held.ends_with(" 65536"),
        "{held}"
    );
    assert!(node
        .exec_ok("burrow state sd-sleeper")
        .contains("\"running\""));
    node.exec_ok("burrow delete --force sd-sleeper");
    assert_eq!(
        node.ranges(),
        "a(usuuu) 0",
        "delete did not release the range"
    );
}

/// The admin allows `fuse` as an extra device (before devd first starts: it reads its
/// allowlist then), and the node has the host node devd copies it from.
fn allow_fuse(node: &Node) {
    node.exec_ok(
        "test -e /dev/fuse || mknod -m 666 /dev/fuse c 10 229; \
         mkdir -p /etc/burrow && echo fuse > /etc/burrow/devd-allowlist",
    );
}

/// devd under its unit makes an allowed extra device node (its DevicePolicy must let it
/// mknod one): the test client asks for a /dev with fuse and looks at it from inside.
fn extra_device(node: &Node) {
    node.copy(
        &bin("burrow-test-client").display().to_string(),
        "/root/burrow-test-client",
    );
    let out = node.exec_ok("/root/burrow-test-client dev-create --extra fuse");
    let answer: serde_json::Value = serde_json::from_str(&out).unwrap();
    let fuse = answer["inside"]["entries"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|e| e["name"] == "fuse");
    assert!(
        answer["ok"] == true && fuse.is_some_and(|e| e["kind"] == "chr" && e["rdev"] == "10:229"),
        "{answer}"
    );
}

/// `systemd-analyze security` of each unit, online in the node: the exposure numbers.
fn exposure(node: &Node) -> Vec<(&'static str, f64)> {
    UNITS
        .iter()
        .map(|unit| {
            let report = node.exec_ok(&format!(
                "systemd-analyze security --no-pager {unit}.service | tail -n 1"
            ));
            let number = report
                .rsplit_once(": ")
                .and_then(|(_, level)| level.split_whitespace().next())
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("{unit}: {report}"));
            (*unit, number)
        })
        .collect()
}

#[test]
fn helpers_run_under_their_units_on_a_systemd_node() {
    let started = Instant::now();
    let h = Harness::start(HarnessOptions::default());
    let docker = Docker::start(&h);
    let destdir = h.dir.join("destdir");
    install_files(&destdir);
    let bundles = h.dir.join("bundles");
    bundle(&bundles.join("uid-map"), &["cat", "/proc/self/uid_map"]);
    bundle(&bundles.join("sleeper"), &["sleep", "1000"]);

    // The bundles are a bind mount: the node's /tmp is noexec, and a bundle on its overlay
    // rootfs would name layers of the outer dockerd that mountd cannot reach from inside.
    let volume = format!("{}:/bundles", bundles.display());
    let node = Node::create(&docker, NODE, &["-v", &volume]);
    eprintln!("image imported, files laid out in {:?}", started.elapsed());
    node.copy_tree(&destdir);
    let state = node.start();
    let failed = text(&node.exec("systemctl --failed --no-legend --plain"));
    eprintln!(
        "node booted in {:?}: {state} (failed units: {failed:?})",
        started.elapsed()
    );
    assert_eq!(state, "running", "failed units: {failed}");
    node.assert_helpers_inactive();

    allow_fuse(&node);
    run_containers(&node);
    extra_device(&node);
    node.assert_helpers_ran_as_units();
    let exposure = exposure(&node);
    eprintln!("systemd-analyze security exposure: {exposure:?}");
    // The units' hardening as measured when they were made to work (lower is better).
    for ((unit, got), limit) in exposure.iter().zip([2.8, 2.1, 5.0]) {
        assert!(*got <= limit, "{unit}: exposure {got}, was {limit}");
    }
    drop(node);
    eprintln!("done in {:?}", started.elapsed());
}
