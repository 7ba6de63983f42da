//! Pods without an orchestrator (issue 11, item 1): containers that name another container's
//! namespaces by path join its user namespace and share its range; a pod network namespace
//! made outside Burrow (as containerd makes one for CNI) is adopted by root; everything else a
//! path can name is refused with its reason and leaves nothing behind.

use std::fs;
use std::os::fd::AsFd;
use std::path::Path;
use std::process::Command;

use burrow_tests::{
    all_output, busybox_rootfs, run, test_users, wait_for, Burrow, Detached, Harness,
    HarnessOptions,
};
use serde_json::{json, Value};

/// A: loopback up (a new network namespace has it down), an HTTP server on port 8080.
const SERVER: &str = "ip link set lo up && mkdir -p /www && echo served-by-a > /www/index.html && \
    httpd -p 8080 -h /www && echo serving && exec sleep 1000";

/// A spec edit: the namespaces `kinds` are `pid`'s (/proc/PID/ns/KIND).
fn join_namespaces_of(pid: i32, kinds: &[&str]) -> impl FnOnce(&mut Value) {
    let kinds: Vec<String> = kinds.iter().map(|k| k.to_string()).collect();
    move |config| {
        let paths: Vec<(String, String)> = kinds
            .iter()
            .map(|kind| (oci_kind(kind).to_string(), format!("/proc/{pid}/ns/{kind}")))
            .collect();
        name_paths(config, &paths);
    }
}

/// The OCI type of a /proc/PID/ns name.
fn oci_kind(proc_name: &str) -> &str {
    match proc_name {
        "net" => "network",
        "mnt" => "mount",
        other => other,
    }
}

/// Sets `path` on the spec's namespace of each OCI type given (adding it if missing).
fn name_paths(config: &mut Value, paths: &[(String, String)]) {
    let namespaces = config["linux"]["namespaces"].as_array_mut().unwrap();
    for (kind, path) in paths {
        match namespaces.iter_mut().find(|n| n["type"] == json!(kind)) {
            Some(ns) => ns["path"] = json!(path),
            None => namespaces.push(json!({"type": kind, "path": path})),
        }
    }
}

/// A busybox bundle `name` of `caller`'s running `args`, then `edit`ed.
fn bundle(
    caller: &Burrow,
    name: &str,
    args: &[&str],
    edit: impl FnOnce(&mut Value),
) -> std::path::PathBuf {
    caller.edited_bundle(name, args, |rootfs| busybox_rootfs(rootfs, None), edit)
}

/// `text`'s words, one space apart (uid_map pads its columns).
fn squeeze(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn uid_map(pid: i32) -> String {
    squeeze(&fs::read_to_string(format!("/proc/{pid}/uid_map")).unwrap())
}

fn ns_id(path: &str) -> u64 {
    let file = fs::File::open(path).unwrap();
    burrow_sys::nsfs::ns_id(file.as_fd()).unwrap()
}

/// The id of the user namespace that owns the namespace at `path` (no fd of it kept open: an
/// open one would keep the namespace).
fn owner_id(path: &str) -> u64 {
    let ns = fs::File::open(path).unwrap();
    let owner = burrow_sys::nsfs::owner(ns.as_fd()).unwrap();
    burrow_sys::nsfs::ns_id(owner.as_fd()).unwrap()
}

/// Runs `args` in a new container of `caller` that joins `pod`'s namespaces `kinds`; returns
/// its output, which must end well.
fn run_in_pod(caller: &Burrow, pod: &Detached, name: &str, kinds: &[&str], script: &str) -> String {
    let b = bundle(
        caller,
        name,
        &["sh", "-c", script],
        join_namespaces_of(pod.pid, kinds),
    );
    let (out, status) = caller.run_bundle(&b, name);
    assert!(status.success(), "{name}: {out}");
    out
}

#[test]
fn containers_of_one_caller_share_the_pods_user_namespace_and_range() {
    let h = Harness::start(HarnessOptions::default());
    let alice = test_users().alice;
    for (caller, label) in [
        (Burrow::new(&h, None, "root"), "root"),
        (Burrow::new(&h, Some(alice), "alice"), "alice"),
    ] {
        let a = bundle(&caller, "a", &["sh", "-c", SERVER], |_| {});
        let a = caller.start_detached(&a, "a");
        wait_for("A serving", || {
            caller
                .output_of(&caller.home.join("a"), "a")
                .contains("serving")
        });
        let script = "cat /proc/self/uid_map; readlink /proc/self/ns/net; \
            wget -q -O - http://127.0.0.1:8080/index.html";
        let out = run_in_pod(&caller, &a, "b", &["net", "ipc", "uts"], script);
        assert!(
            out.contains("served-by-a"),
            "{label}: B reaches A on 127.0.0.1: {out}"
        );
        assert_eq!(
            out.lines().next().map(squeeze),
            Some(uid_map(a.pid)),
            "{label}: one range: {out}"
        );
        let a_net = fs::read_link(format!("/proc/{}/ns/net", a.pid)).unwrap();
        assert!(
            out.contains(&a_net.display().to_string()),
            "{label}: one net namespace: {out}"
        );
        // B's run is over and deleted: A's range is held, by A alone.
        assert_eq!(h.ranges_in_use(), 1, "{label}");

        // D shares A's pid namespace (and dies with A's init, as the kernel wants).
        let d = bundle(
            &caller,
            "d",
            &["sleep", "1000"],
            join_namespaces_of(a.pid, &["pid"]),
        );
        let d = caller.start_detached(&d, "d");
        assert_eq!(uid_map(d.pid), uid_map(a.pid), "{label}");
        assert_eq!(
            ns_id(&format!("/proc/{}/ns/pid", d.pid)),
            ns_id(&format!("/proc/{}/ns/pid", a.pid)),
            "{label}: --pid container:A"
        );
        drop(d);
        // C outlives A: the range stays until C goes too.
        let c = bundle(
            &caller,
            "c",
            &["sleep", "1000"],
            join_namespaces_of(a.pid, &["net", "ipc", "uts"]),
        );
        let c = caller.start_detached(&c, "c");
        assert_eq!(uid_map(c.pid), uid_map(a.pid), "{label}");
        let map = uid_map(c.pid);
        drop(a);
        assert_eq!(h.ranges_in_use(), 1, "{label}: C still holds the range");
        assert_eq!(uid_map(c.pid), map);
        drop(c);
        wait_for("the pod's range freed", || h.ranges_in_use() == 0);
    }
}

/// A child process, killed when dropped (a failed assertion must not leave it behind).
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// What a refused join leaves: nothing (no container, no range).
fn assert_refused(caller: &Burrow, name: &str, edit: impl FnOnce(&mut Value), says: &str) {
    let b = bundle(caller, name, &["true"], edit);
    let (out, status) = caller.run_bundle(&b, name);
    assert!(!status.success(), "{name} ran: {out}");
    assert!(out.contains(says), "{name}: expected {says:?} in {out:?}");
    let list = all_output(&caller.output(&["list"]));
    assert!(!list.contains(name), "{name} left: {list}");
}

#[test]
fn foreign_namespaces_are_refused_with_their_reason() {
    let h = Harness::start(HarnessOptions::default());
    let users = test_users();
    let root = Burrow::new(&h, None, "root");
    let alice = Burrow::new(&h, Some(users.alice), "alice");
    let carol = Burrow::new(&h, Some(users.carol), "carol");
    let roots = bundle(&root, "roots", &["sleep", "1000"], |_| {});
    let roots = root.start_detached(&roots, "roots");
    let carols = bundle(&carol, "carols", &["sleep", "1000"], |_| {});
    let carols = carol.start_detached(&carols, "carols");
    // A user namespace (and a network namespace it owns) that idmapd never mapped.
    // Alice's, so that both callers may open it.
    let foreign = Killed(
        h.as_user("unshare", Some(users.alice))
            .args(["--user", "--net", "sleep", "1000"])
            .spawn()
            .unwrap(),
    );
    let foreign_pid = foreign.0.id() as i32;
    wait_for("the foreign namespace", || {
        fs::read_link(format!("/proc/{foreign_pid}/ns/user")).ok()
            != fs::read_link("/proc/self/ns/user").ok()
    });
    let pod_netns = PodNetwork::new("burrow-refused", 1);
    // A FIFO, whose plain open would wait for a writer forever.
    let fifo = std::env::temp_dir().join(format!("burrow-ns-fifo-{}", std::process::id()));
    let _ = fs::remove_file(&fifo);
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
    let in_run = |kind: &'static str, path: String| {
        move |config: &mut Value| name_paths(config, &[(kind.to_string(), path)])
    };

    for caller in [&root, &alice] {
        assert_refused(
            caller,
            "host-net",
            in_run("network", "/proc/self/ns/net".into()),
            "the host's net namespace",
        );
        assert_refused(
            caller,
            "host-user",
            in_run("user", "/proc/self/ns/user".into()),
            "the host's user namespace",
        );
        assert_refused(
            caller,
            "foreign-user",
            join_namespaces_of(foreign_pid, &["user"]),
            "none of this runtime's containers'",
        );
        assert_refused(
            caller,
            "foreign-net",
            join_namespaces_of(foreign_pid, &["net"]),
            "none of this runtime's containers'",
        );
        assert_refused(
            caller,
            "not-a-ns",
            in_run("network", "/etc/hostname".into()),
            "is not a net namespace",
        );
        assert_refused(
            caller,
            "fifo",
            in_run("network", fifo.display().to_string()),
            "is not a net namespace",
        );
        assert_refused(
            caller,
            "mount",
            join_namespaces_of(roots.pid, &["mnt"]),
            "mount namespace",
        );
    }
    // Another user's containers: the kernel does not even let the caller open their namespaces.
    assert_refused(
        &alice,
        "roots-net",
        join_namespaces_of(roots.pid, &["net"]),
        "cannot open the net namespace",
    );
    assert_refused(
        &alice,
        "carols-net",
        join_namespaces_of(carols.pid, &["net"]),
        "cannot open the net namespace",
    );
    assert_refused(
        &alice,
        "carols-user",
        join_namespaces_of(carols.pid, &["user"]),
        "cannot open the user namespace",
    );
    // A pod network namespace is adopted for root only.
    assert_refused(
        &alice,
        "pod-net",
        in_run("network", pod_netns.path()),
        "only root may give a container a pod network namespace",
    );
    // Root's own store does not hold carol's container: its namespaces are not a pod of root's.
    assert_refused(
        &root,
        "carol-from-root",
        join_namespaces_of(carols.pid, &["net"]),
        "none of this runtime's containers'",
    );

    drop((foreign, roots, carols));
    let _ = fs::remove_file(&fifo);
    wait_for("ranges freed", || h.ranges_in_use() == 0);
}

/// A network namespace made and configured the way containerd and CNI's bridge plugin do: a
/// named namespace (`ip netns`) with `eth0`, one end of a veth pair whose other end is on the
/// host, an address and a default route. Removed when dropped.
struct PodNetwork {
    name: String,
    host_end: String,
    host_ip: String,
    pod_ip: String,
}

impl PodNetwork {
    /// In subnet 10.214.`subnet`.0/24: one per test (tests run in parallel on one host), apart
    /// from the CRI harness's 10.213.0.0/16.
    fn new(name: &str, subnet: u8) -> Self {
        let host_ip = format!("10.214.{subnet}.1");
        let pod_ip = format!("10.214.{subnet}.2");
        let host_end = format!("{}-h", &name[..name.len().min(12)]);
        let ip = |args: &[&str]| run(Command::new("ip").args(args));
        let _ = Command::new("ip").args(["netns", "delete", name]).output();
        ip(&["netns", "add", name]);
        ip(&[
            "link", "add", &host_end, "type", "veth", "peer", "name", "eth0", "netns", name,
        ]);
        ip(&["addr", "add", &format!("{host_ip}/24"), "dev", &host_end]);
        ip(&["link", "set", &host_end, "up"]);
        for args in [
            vec!["addr", "add", &format!("{pod_ip}/24"), "dev", "eth0"],
            vec!["link", "set", "eth0", "up"],
            vec!["link", "set", "lo", "up"],
            vec!["route", "add", "default", "via", &host_ip],
        ] {
            ip(&[&["-n", name], &args[..]].concat());
        }
        PodNetwork {
            name: name.to_string(),
            host_end,
            host_ip,
            pod_ip,
        }
    }

    fn path(&self) -> String {
        format!("/var/run/netns/{}", self.name)
    }

    /// The interfaces left in the pod namespace.
    fn links(&self) -> String {
        String::from_utf8_lossy(
            &run(Command::new("ip").args(["-n", &self.name, "-o", "link"])).stdout,
        )
        .into_owned()
    }

    fn host_end_exists(&self) -> bool {
        Path::new("/sys/class/net").join(&self.host_end).exists()
    }
}

impl Drop for PodNetwork {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "delete", &self.host_end])
            .status();
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.name])
            .status();
    }
}

#[test]
fn root_adopts_a_pod_network_namespace_and_its_root_owns_the_network() {
    let h = Harness::start(HarnessOptions::default());
    let root = Burrow::new(&h, None, "root");
    let pod_net = PodNetwork::new("burrow-adopt", 2);
    let a = bundle(&root, "a", &["sh", "-c", SERVER], |config| {
        name_paths(config, &[("network".into(), pod_net.path())])
    });
    let a = root.start_detached(&a, "a");
    wait_for("A serving", || {
        root.output_of(&root.home.join("a"), "a")
            .contains("serving")
    });

    // The container's network namespace is its own user namespace's, not the pod one.
    assert_eq!(
        owner_id(&format!("/proc/{}/ns/net", a.pid)),
        ns_id(&format!("/proc/{}/ns/user", a.pid)),
        "the container's root has CAP_NET_ADMIN over its network"
    );
    assert!(
        !pod_net.links().contains("eth0"),
        "eth0 moved out: {}",
        pod_net.links()
    );
    // CNI's address and routes came along: the pod IP answers from the host.
    let address = format!("{}:8080", pod_net.pod_ip).parse().unwrap();
    let page = burrow_tests::http_get(address, "/index.html");
    assert!(
        page.starts_with("HTTP/1.") && page.contains("served-by-a"),
        "{page}"
    );
    // Inside: the address, the default route, and a root that may change its network.
    let inside = run_in_pod(
        &root,
        &a,
        "probe",
        &["net"],
        "ip -o addr show eth0; ip route; ip addr add 10.9.9.9/32 dev lo && echo net-admin=yes",
    );
    assert!(
        inside.contains(&format!("{}/24", pod_net.pod_ip)),
        "{inside}"
    );
    assert!(
        inside.contains(&format!("default via {}", pod_net.host_ip)),
        "{inside}"
    );
    assert!(inside.contains("net-admin=yes"), "{inside}");

    drop(a);
    wait_for("the veth gone with the container's namespace", || {
        !pod_net.host_end_exists()
    });
    wait_for("the range freed", || h.ranges_in_use() == 0);
}
