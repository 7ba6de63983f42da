//! The systemd cgroup driver (issue 11, item 5) on a node that boots systemd: `burrow
//! --systemd-cgroup` as root makes the container's cgroup a transient scope through systemd's
//! D-Bus API (delegated, with the spec's limits and Burrow's device policy as unit properties),
//! which holds across `systemctl daemon-reload`, as does a limit `burrow update` sets, and
//! `burrow delete` stops it. A tenant's container gets its cgroup through systemd too: idmapd
//! starts a delegated scope in the tenant's slice, which carries the admin's per-user limits.

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

/// After `burrow delete`: no unit, and no cgroup of that path in any hierarchy. Root's runtime
/// removes them before `delete` returns; idmapd removes a tenant's once the range's namespace
/// is gone, which it checks every 2 s: allowed 10.
fn assert_scope_gone(node: &Node, slice_path: &str, scope: &str) {
    let props = scope_properties(node, scope);
    assert_eq!(props["LoadState"], "not-found", "{props:?}");
    let dir = format!("{slice_path}/{scope}");
    let left = || {
        node.exec_ok(&format!(
            "for d in /sys/fs/cgroup/*{dir} /sys/fs/cgroup{dir}; do test -e $d && echo $d; done; \
             true"
        ))
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !left().is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert_eq!(left(), "", "{scope}: cgroups left behind");
}

/// The tenant, in group `burrow`, with a per-user memory and pids quota.
const TENANT: &str = "sdtenant";
const TENANT_MEMORY: u64 = 512 << 20;
const TENANT_PIDS: u64 = 777;

/// `burrow ARGS` as the tenant, with its own state directory.
fn as_tenant(args: &str) -> String {
    format!("runuser -u {TENANT} -- env XDG_RUNTIME_DIR=/run/{TENANT} burrow {args}")
}

/// A tenant's container (no `--systemd-cgroup`: a non-root runtime makes no cgroup at all)
/// lands in the scope idmapd started for its range in the tenant's slice: delegated to the
/// range's root, with Burrow's device policy, under the per-user limits, with no other process
/// in it; `burrow delete` leaves no unit and no cgroup.
fn tenant_container_gets_a_scope_in_its_slice(node: &Node) {
    node.exec_ok(&format!(
        "(getent group burrow || groupadd --system burrow) && useradd -m -G burrow {TENANT} && chown -R {TENANT}: /bundles/tenant && install -d -o {TENANT} -m 0700 /run/{TENANT} && \
         printf '[default]\\nmemory_max = {TENANT_MEMORY}\\npids_max = {TENANT_PIDS}\\n' \
         > /etc/burrow/quotas.conf"
    ));
    let uid = node.exec_ok(&format!("id -u {TENANT}"));
    node.exec_ok(&format!(
        "{} >/dev/null 2>/run/tenant.err </dev/null || {{ cat /run/tenant.err >&2; exit 1; }}",
        as_tenant("run -d --bundle /bundles/tenant tenant")
    ));
    let state: serde_json::Value =
        serde_json::from_str(&node.exec_ok(&as_tenant("state tenant"))).unwrap();
    let pid = state["pid"].to_string();
    let base = node.exec_ok(&format!("awk '{{print $2}}' /proc/{pid}/uid_map"));
    let slice = format!("burrow-users-{uid}.slice");
    let slice_path = format!("/burrow.slice/burrow-users.slice/{slice}");
    let scope = format!("burrow-range-{base}.scope");

    let props = scope_properties(node, &scope);
    assert_eq!(props["ActiveState"], "active", "{props:?}");
    assert_eq!(props["Delegate"], "yes", "{props:?}");
    assert_eq!(props["DevicePolicy"], "strict", "{props:?}");
    let cgroup = format!("{slice_path}/{scope}");
    assert_eq!(props["ControlGroup"], cgroup, "{props:?}");
    let init_cgroups = node.exec_ok(&format!("cat /proc/{pid}/cgroup"));
    for line in init_cgroups.lines() {
        assert!(line.ends_with(&cgroup), "{line} in {init_cgroups}");
    }
    // Only the container: idmapd's placeholder, which the scope started around, is gone.
    let in_scope = node.exec_ok(&format!(
        "for p in $(cat /sys/fs/cgroup/pids{cgroup}/cgroup.procs); do cat /proc/$p/comm; done"
    ));
    assert_eq!(in_scope, "sleep", "processes in the scope");
    let limits = node.exec_ok(&format!("systemctl show -p MemoryMax,TasksMax {slice}"));
    assert_eq!(
        limits,
        format!("MemoryMax={TENANT_MEMORY}\nTasksMax={TENANT_PIDS}")
    );
    let owner = node.exec_ok(&format!("stat -c %u /sys/fs/cgroup/pids{cgroup}"));
    assert_eq!(owner, base, "the scope is delegated to the range's root");

    node.exec_ok(&as_tenant("delete --force tenant"));
    assert_scope_gone(node, &slice_path, &scope);
}

#[test]
fn systemd_cgroup_driver_makes_delegated_scopes_for_root_and_tenants_on_a_systemd_node() {
    let h = Harness::start(HarnessOptions::default());
    let docker = Docker::start(&h);
    let destdir = h.dir.join("destdir");
    install_files(&destdir);
    let bundles = h.dir.join("bundles");
    bundle(&bundles.join("sdtest"), "sdtest", &["sleep", "1000"]);
    bundle(&bundles.join("sdshort"), "sdshort", &["true"]);
    busybox_rootfs(&bundles.join("tenant/rootfs"), None);
    burrow_tests::write_spec(&bundles.join("tenant"), &["sleep", "1000"], |_| {});
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
         >/dev/null 2>/run/sdtest.err </dev/null || { cat /run/sdtest.err >&2; exit 1; }",
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
    assert_scope_gone(&node, "/system.slice", SCOPE);
    // A container that ends by itself: systemd stops its scope once empty, before `delete`.
    node.exec_ok("burrow --systemd-cgroup run --bundle /bundles/sdshort sdshort");
    assert_scope_gone(&node, "/system.slice", "burrow-sdshort.scope");
    tenant_container_gets_a_scope_in_its_slice(&node);
    drop(node);
}
