//! The systemd cgroup driver (issue 11, item 5) on a node that boots systemd: `burrow
//! --systemd-cgroup` as root makes the container's cgroup a transient scope through systemd's
//! D-Bus API (delegated, with the spec's limits and Burrow's device policy as unit properties),
//! which holds across `systemctl daemon-reload`, as does a limit `burrow update` sets, and
//! `burrow delete` stops it.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use burrow_tests::node::{install_files, text, Node};
use burrow_tests::{busybox_rootfs, Docker, Harness, HarnessOptions};
use serde_json::json;

const NODE: &str = "burrow-systemd-cgroup-node";
const SCOPE: &str = "burrow-sdtest.scope";
const MEMORY_LIMIT: u64 = 64 << 20;
const UPDATED_MEMORY_LIMIT: u64 = 128 << 20;

/// A busybox bundle running `args` in the scope `burrow-NAME.scope` of system.slice (systemd's
/// form of cgroupsPath), with a memory limit.
fn bundle(dir: &Path, name: &str, args: &[&str]) {
    busybox_rootfs(&dir.join("rootfs"), None);
    burrow_tests::write_spec(dir, args, |config| {
        config["linux"]["cgroupsPath"] = json!(format!("system.slice:burrow:{name}"));
        config["linux"]["resources"]["memory"] = json!({ "limit": MEMORY_LIMIT });
    });
}

/// The scope's state as `systemctl show` prints it.
fn scope_properties(node: &Node, scope: &str) -> BTreeMap<String, String> {
    node.exec_ok(&format!(
        "systemctl show -p LoadState,ActiveState,Delegate,ControlGroup,DevicePolicy,\
         DeviceAllow,MemoryMax {scope}"
    ))
    .lines()
    .filter_map(|l| l.split_once('='))
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// The scope as systemd holds it, the init's cgroup, the memory limit and the device policy in
/// the cgroup's files, and what a process in the cgroup can open.
fn assert_scope_holds_the_container(node: &Node, pid: &str, memory_limit: u64) {
    let props = scope_properties(node, SCOPE);
    assert_eq!(props["ActiveState"], "active", "{props:?}");
    assert_eq!(props["Delegate"], "yes", "{props:?}");
    assert_eq!(props["DevicePolicy"], "strict", "{props:?}");
    assert_eq!(props["MemoryMax"], memory_limit.to_string(), "{props:?}");
    let cgroup = &props["ControlGroup"];
    assert_eq!(cgroup, "/system.slice/burrow-sdtest.scope", "{props:?}");
    let init_cgroups = node.exec_ok(&format!("cat /proc/{pid}/cgroup"));
    for line in init_cgroups.lines() {
        assert!(line.ends_with(cgroup.as_str()), "{line} in {init_cgroups}");
    }
    let limit = node.exec_ok(&format!(
        "cat /sys/fs/cgroup/memory{cgroup}/memory.limit_in_bytes 2>/dev/null \
         || cat /sys/fs/cgroup{cgroup}/memory.max"
    ));
    assert_eq!(limit, memory_limit.to_string());
    let v1_devices = format!("/sys/fs/cgroup/devices{cgroup}/devices.list");
    if node.exec(&format!("test -e {v1_devices}")).status.success() {
        let mut list: Vec<String> = node
            .exec_ok(&format!("cat {v1_devices}"))
            .lines()
            .map(String::from)
            .collect();
        list.sort();
        let expected = burrow_tests::devd_devices_list(136..=136);
        // Burrow's policy as systemd can state it (`char-pts` is major 136 alone), so that it
        // is the same after systemd re-applies its own.
        assert_eq!(list, expected, "devices.list");
    }
    // Into the scope's cgroup in every hierarchy, as the container's processes are.
    let join = "for d in /sys/fs/cgroup/*/system.slice/burrow-sdtest.scope \
                /sys/fs/cgroup/system.slice/burrow-sdtest.scope; do \
                test -e $d/cgroup.procs && echo $$ > $d/cgroup.procs; done";
    for (device, allowed) in [("/dev/kmsg", false), ("/dev/null", true)] {
        let out = node.exec(&format!("{join}; exec 3<{device} && echo opened"));
        let opened = out.status.success() && text(&out) == "opened";
        assert_eq!(
            opened,
            allowed,
            "{device} from the scope: {}{}",
            text(&out),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// After `burrow delete`: no unit, and no cgroup of that path in any hierarchy.
fn assert_scope_gone(node: &Node, scope: &str) {
    let props = scope_properties(node, scope);
    assert_eq!(props["LoadState"], "not-found", "{props:?}");
    let left = node.exec_ok(&format!(
        "for d in /sys/fs/cgroup/*/system.slice/{scope} /sys/fs/cgroup/system.slice/{scope}; \
         do test -e $d && echo $d; done; true"
    ));
    assert_eq!(left, "", "{scope}: cgroups left behind");
}

#[test]
fn systemd_cgroup_driver_makes_a_delegated_scope_on_a_systemd_node() {
    let h = Harness::start(HarnessOptions::default());
    let docker = Docker::start(&h);
    let destdir = h.dir.join("destdir");
    install_files(&destdir);
    let bundles = h.dir.join("bundles");
    bundle(&bundles.join("sdtest"), "sdtest", &["sleep", "1000"]);
    bundle(&bundles.join("sdshort"), "sdshort", &["true"]);
    let more_memory = json!({ "memory": { "limit": UPDATED_MEMORY_LIMIT } });
    fs::write(bundles.join("more-memory.json"), more_memory.to_string()).unwrap();
    let volume = format!("{}:/bundles", bundles.display());
    let node = Node::create(&docker, NODE, &["-v", &volume]);
    node.copy_tree(&destdir);
    node.boot();
    // A device node outside devd's set, which the node itself may open.
    node.exec_ok("test -e /dev/kmsg || mknod /dev/kmsg c 1 11; exec 3</dev/kmsg");

    node.exec_ok(
        "burrow --systemd-cgroup run -d --bundle /bundles/sdtest sdtest \
         >/dev/null 2>&1 </dev/null",
    );
    let state: serde_json::Value =
        serde_json::from_str(&node.exec_ok("burrow state sdtest")).unwrap();
    let pid = state["pid"].to_string();
    assert_scope_holds_the_container(&node, &pid, MEMORY_LIMIT);
    // systemd re-applies every unit's cgroup settings: the scope's are the container's own.
    node.exec_ok("systemctl daemon-reload");
    assert_scope_holds_the_container(&node, &pid, MEMORY_LIMIT);
    node.exec_ok("burrow update --resources /bundles/more-memory.json sdtest");
    node.exec_ok("systemctl daemon-reload");
    assert_scope_holds_the_container(&node, &pid, UPDATED_MEMORY_LIMIT);

    node.exec_ok("burrow delete --force sdtest");
    assert_scope_gone(&node, SCOPE);
    // A container that ends by itself: systemd stops its scope once empty, before `delete`.
    node.exec_ok("burrow --systemd-cgroup run --bundle /bundles/sdshort sdshort");
    assert_scope_gone(&node, "burrow-sdshort.scope");
    drop(node);
}
