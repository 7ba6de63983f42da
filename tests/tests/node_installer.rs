//! The node installer, `scripts/burrow-node` (issue 11, item 3), on a disposable node that boots
//! systemd (`burrow_tests::node`, as `systemd_node.rs`), with the node's own containerd (the
//! Debian image has it: docker.io depends on it) under systemd and a containerd config of the
//! node's own. Each test installs from what `make install-files` lays out, as an admin would
//! from a build: `burrow-node install --from DIR`.
//!
//! `install_keeps_containerds_config_is_idempotent_and_uninstalls` is the installer's contract;
//! `pod_with_handler_burrow_on_an_installed_node` is a pod made by CRI calls through the
//! installed handler, which needs Burrow's pod support (issue 11, item 1).

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use burrow_tests::cri::{
    api, container_config, pod_config, set_kubelet_namespaces, test_images, Cri, BUSYBOX_IMAGE,
    PAUSE_IMAGE,
};
use burrow_tests::node::{assert_exclusive_range, install_files, text, Node, UNITS};
use burrow_tests::{workspace_root, Docker, Harness, HarnessOptions};

/// Where the test puts the installer and the files to install in the node.
const SCRIPT: &str = "/root/burrow-node";
const FILES: &str = "/root/burrow-files";
const CONFIG: &str = "/etc/containerd/config.toml";
/// A copy of [`NODE_CONFIG`] in the node, to compare with after uninstall.
const ORIGINAL: &str = "/root/config.toml.orig";

/// The node's containerd config before Burrow, with settings of its own that install must
/// keep (containerd 1.6 would drop them for a naive drop-in: it takes an imported CRI section
/// whole) and that this node needs: the sandbox image is the test's (no registry here), and
/// no pod may get a negative oom_score_adj (the node lacks CAP_SYS_RESOURCE).
const NODE_CONFIG: &str = r#"version = 2

[plugins]
  [plugins."io.containerd.grpc.v1.cri"]
    sandbox_image = "burrow.test/pause:1"
    restrict_oom_score_adj = true
    [plugins."io.containerd.grpc.v1.cri".cni]
      bin_dir = "/usr/lib/cni"
      conf_dir = "/etc/cni/net.d"
  [plugins."io.containerd.internal.v1.opt"]
    path = "/var/lib/containerd/opt"
"#;

/// The node's pod network: a bridge inside the node's own network namespace.
const CNI_CONFLIST: &str = r#"{
  "cniVersion": "1.0.0",
  "name": "node-pods",
  "plugins": [
    {"type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": false,
     "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.214.0.0/24"}]]}},
    {"type": "loopback"}
  ]
}"#;
const CNI_PLUGINS: [&str; 3] = ["bridge", "host-local", "loopback"];

/// The runtime handler's table in `containerd config dump`.
const BURROW_HANDLER: &str = r#"[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.burrow]"#;

/// One node at a time: a node's cleanup removes every cgroup that appeared while it ran.
static ONE_NODE: Mutex<()> = Mutex::new(());

/// What every test's node gets: a harness (for the test dockerd), the files to install, and
/// the node's own files, laid out like `/`.
struct Fixture {
    // Fields drop in this order: dockerd stops before the harness removes its directory.
    docker: Docker,
    h: Harness,
}

impl Fixture {
    fn new() -> Fixture {
        let h = Harness::start(HarnessOptions::default());
        let docker = Docker::start(&h);
        install_files(&h.dir.join("burrow-files"));
        let root = h.dir.join("node-root");
        for dir in [
            "etc/containerd",
            "etc/cni/net.d",
            "usr/lib/cni",
            "root/images",
        ] {
            fs::create_dir_all(root.join(dir)).unwrap();
        }
        fs::write(root.join("etc/containerd/config.toml"), NODE_CONFIG).unwrap();
        fs::write(root.join("root/config.toml.orig"), NODE_CONFIG).unwrap();
        fs::write(root.join("etc/cni/net.d/10-pods.conflist"), CNI_CONFLIST).unwrap();
        // The image has no CNI plugins (containernetworking-plugins): the host's.
        for plugin in CNI_PLUGINS {
            fs::copy(
                Path::new("/usr/lib/cni").join(plugin),
                root.join("usr/lib/cni").join(plugin),
            )
            .unwrap_or_else(|e| panic!("/usr/lib/cni/{plugin} (containernetworking-plugins): {e}"));
        }
        // The node has no network: CRI's images are imported.
        for archive in test_images(&h.dir.join("images")) {
            fs::rename(
                &archive,
                root.join("root/images").join(archive.file_name().unwrap()),
            )
            .unwrap();
        }
        Fixture { docker, h }
    }

    /// A booted node `name` with the fixture's files, containerd running and the images
    /// imported for CRI. containerd's root is a host directory: its overlayfs snapshotter
    /// cannot have its upper layers on the node's overlay rootfs.
    fn node(&self, name: &str) -> Node<'_> {
        let root = self.h.dir.join(name).join("containerd");
        fs::create_dir_all(&root).unwrap();
        let volume = format!("{}:/var/lib/containerd", root.display());
        let node = Node::create(&self.docker, name, &["-v", &volume]);
        node.copy_tree(&self.h.dir.join("node-root"));
        node.copy(
            &format!("{}/.", self.h.dir.join("burrow-files").display()),
            FILES,
        );
        node.copy(
            &workspace_root()
                .join("scripts/burrow-node")
                .display()
                .to_string(),
            SCRIPT,
        );
        node.boot();
        assert_eq!(
            node.unit_properties("containerd.service")["ActiveState"],
            "active"
        );
        node.exec_ok(
            "for image in /root/images/*.tar; do \
             ctr -n k8s.io images import --snapshotter overlayfs $image >/dev/null; done",
        );
        node
    }
}

/// `burrow-node install --from FILES`, which must succeed: what it said.
fn install(node: &Node) -> String {
    node.exec_ok(&format!("{SCRIPT} install --from {FILES}"))
}

fn containerd_pid(node: &Node) -> String {
    let props = node.unit_properties("containerd.service");
    assert_eq!(props["ActiveState"], "active", "containerd: {props:?}");
    props["MainPID"].clone()
}

/// What install may touch on the node: every file below the places it writes (path, inode,
/// change time, mode, checksum), the group, and containerd's main process.
fn fingerprint(node: &Node) -> String {
    node.exec_ok(
        "{ find /etc/containerd /etc/burrow /usr/local /lib/systemd/system /usr/share/dbus-1 \
         /usr/share/polkit-1 /etc/polkit-1 /var/lib/burrow-node -type f 2>/dev/null || true; } \
         | sort | while read -r f; do echo \"$(stat -c '%n %i %z %a' \"$f\") $(sha256sum <\"$f\")\"; done; \
         getent group burrow || true; systemctl show -p MainPID containerd.service",
    )
}

/// containerd's own view of its merged config: the node's settings are all there, and the
/// handler `burrow` (with the installed runtime) is there iff `with_burrow`.
fn assert_merged_config(node: &Node, with_burrow: bool) {
    let dump = node.exec_ok("containerd config dump");
    for setting in [
        r#"sandbox_image = "burrow.test/pause:1""#,
        "restrict_oom_score_adj = true",
        r#"path = "/var/lib/containerd/opt""#,
        r#"[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]"#,
    ] {
        assert!(dump.contains(setting), "{setting} lost:\n{dump}");
    }
    assert_eq!(dump.contains(BURROW_HANDLER), with_burrow, "{dump}");
    if with_burrow {
        let handler = &dump[dump.find(BURROW_HANDLER).unwrap()..];
        assert!(
            handler.contains(r#"BinaryName = "/usr/local/bin/burrow""#)
                && handler.contains(r#"runtime_type = "io.containerd.runc.v2""#),
            "{handler}"
        );
    }
}

/// The paths install laid out (as `make install-files` did in the fixture).
fn installed_paths(fixture: &Fixture) -> Vec<String> {
    let tree = fixture.h.dir.join("burrow-files");
    let mut found = vec![];
    let mut stack = vec![tree.clone()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).unwrap().flatten() {
            if entry.file_type().unwrap().is_dir() {
                stack.push(entry.path());
            } else {
                let path = entry.path();
                found.push(format!("/{}", path.strip_prefix(&tree).unwrap().display()));
            }
        }
    }
    found
}

#[test]
fn install_keeps_containerds_config_is_idempotent_and_uninstalls() {
    let _one = ONE_NODE.lock().unwrap_or_else(|e| e.into_inner());
    let started = Instant::now();
    let fixture = Fixture::new();
    let node = fixture.node("burrow-installer-node");
    eprintln!("node up in {:?}", started.elapsed());
    assert!(node.exec("getent group burrow").status.code() == Some(2));
    let before = fingerprint(&node);
    assert_merged_config(&node, false);

    let dry = node.exec_ok(&format!("{SCRIPT} install --from {FILES} --dry-run"));
    assert!(dry.contains("would: import"), "{dry}");
    assert_eq!(
        fingerprint(&node),
        before,
        "--dry-run changed the node:\n{dry}"
    );

    let first = install(&node);
    eprintln!("install:\n{first}");
    assert!(first.contains("restart containerd"), "{first}");
    assert_ne!(containerd_pid(&node), "0");
    assert_ne!(
        fingerprint(&node).lines().last(),
        before.lines().last(),
        "containerd was not restarted"
    );
    assert_merged_config(&node, true);
    // The admin's file keeps every byte and gains one import line.
    node.exec_ok(&format!(
        "sed '1a imports = [\"/etc/containerd/conf.d/*.toml\"]  # added by burrow-node' \
         {ORIGINAL} | cmp - {CONFIG}"
    ));
    node.exec_ok(&format!(
        "cmp {ORIGINAL} {CONFIG}.burrow-node-backup && test -f /etc/burrow/runtimeclass.yaml \
         && grep -qx 'handler: burrow' /etc/burrow/runtimeclass.yaml && getent group burrow"
    ));

    let installed = fingerprint(&node);
    let second = install(&node);
    assert_eq!(
        fingerprint(&node),
        installed,
        "a second install changed the node:\n{second}"
    );
    assert!(
        !second.contains("restart") && !second.contains("install: "),
        "{second}"
    );

    // The helpers start when used, each as its unit, activated by the node's bus: a container
    // through the node's containerd and the installed runtime.
    node.assert_helpers_inactive();
    let uid_map = node.exec_ok(
        "ctr -n k8s.io run --rm --runc-binary /usr/local/bin/burrow burrow.test/busybox:1 \
         installer-check cat /proc/self/uid_map",
    );
    assert_exclusive_range(&uid_map);
    node.assert_helpers_ran_as_units();
    assert_eq!(node.ranges(), "a(usuuu) 0", "the container left its range");

    let used = fingerprint(&node);
    let dry = node.exec_ok(&format!("{SCRIPT} uninstall --dry-run"));
    assert!(dry.contains("would: restore"), "{dry}");
    assert_eq!(
        fingerprint(&node),
        used,
        "--dry-run changed the node:\n{dry}"
    );
    let out = node.exec_ok(&format!("{SCRIPT} uninstall"));
    eprintln!("uninstall:\n{out}");
    node.exec_ok(&format!("cmp {ORIGINAL} {CONFIG}"));
    assert_merged_config(&node, false);
    assert_nothing_installed(&node, &fixture);
    // Burrow's state stays unless --purge.
    node.exec_ok("test -d /var/lib/burrow");
    let purge = node.exec_ok(&format!("{SCRIPT} uninstall --purge"));
    assert!(purge.contains("nothing installed"), "{purge}");
    node.exec_ok("! test -e /var/lib/burrow");

    admin_edits_after_install(&node);
    assert_nothing_installed(&node, &fixture);
    drop(node);
    eprintln!("done in {:?}", started.elapsed());
}

/// A CRI setting the admin adds to config.toml after install.
const ADMIN_EDIT: &str = r#"
[plugins."io.containerd.grpc.v1.cri".registry]
  config_path = "/etc/containerd/certs.d"
"#;

/// The admin changes a CRI setting in config.toml after install: the drop-in shadows it until
/// install runs again, which carries it over and restarts containerd. Uninstall then removes
/// only Burrow's import and keeps the change.
fn admin_edits_after_install(node: &Node) {
    install(node);
    node.exec_ok(&format!("cat >> {CONFIG} <<'EOF'{ADMIN_EDIT}EOF"));
    let setting = r#"config_path = "/etc/containerd/certs.d""#;
    assert!(!node.exec_ok("containerd config dump").contains(setting));
    let rerun = install(node);
    assert!(
        rerun.contains("write the runtime handler burrow")
            && rerun.contains("restart containerd")
            && !rerun.contains("install: "),
        "{rerun}"
    );
    assert!(node.exec_ok("containerd config dump").contains(setting));
    assert_merged_config(node, true);
    let out = node.exec_ok(&format!("{SCRIPT} uninstall"));
    assert!(out.contains("remove the import"), "{out}");
    node.exec_ok(&format!(
        "{{ cat {ORIGINAL}; cat <<'EOF'{ADMIN_EDIT}EOF\n}} | cmp - {CONFIG}"
    ));
    assert!(node.exec_ok("containerd config dump").contains(setting));
    assert_merged_config(node, false);
}

/// No file, directory, record, backup or group of Burrow's on the node; containerd runs; the
/// helper units are gone.
fn assert_nothing_installed(node: &Node, fixture: &Fixture) {
    containerd_pid(node);
    let left: Vec<String> = installed_paths(fixture)
        .into_iter()
        .chain(
            [
                "/etc/containerd/conf.d",
                "/etc/containerd/config.toml.burrow-node-backup",
                "/etc/burrow",
                "/usr/local/libexec/burrow",
                "/var/lib/burrow-node",
            ]
            .map(String::from),
        )
        .filter(|path| node.exec(&format!("test -e {path}")).status.success())
        .collect();
    assert!(left.is_empty(), "uninstall left {left:?}");
    assert!(!node.exec("getent group burrow").status.success());
    for unit in UNITS {
        assert_eq!(
            node.unit_properties(&format!("{unit}.service"))["LoadState"],
            "not-found"
        );
    }
}

/// A pod through CRI with runtime handler `burrow`, as kubelet makes one for a pod of
/// RuntimeClass `burrow`, on a node set up by the installer alone: the sandbox and a container
/// run, in one exclusive range, through the helpers as their units.
#[test]
fn pod_with_handler_burrow_on_an_installed_node() {
    let _one = ONE_NODE.lock().unwrap_or_else(|e| e.into_inner());
    let fixture = Fixture::new();
    let node = fixture.node("burrow-installer-pod-node");
    install(&node);
    pod_through_cri(&node, "/burrow-node-pods", |_, _| {});
    node.exec_ok(&format!("{SCRIPT} uninstall"));
}

/// The same pod on a node whose containerd uses the systemd cgroup driver (`SystemdCgroup =
/// true` for runc, which the installer gives `burrow` too), as kubelet's nodes do: cgroup
/// parents are slices, and each container's cgroup is a transient scope that systemd made,
/// delegated.
#[test]
fn pod_with_the_systemd_cgroup_driver_on_an_installed_node() {
    let _one = ONE_NODE.lock().unwrap_or_else(|e| e.into_inner());
    let fixture = Fixture::new();
    let node = fixture.node("burrow-installer-systemd-pod-node");
    node.exec_ok(&format!(
        "printf '%s\\n' '[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runc]' \
           '  runtime_type = \"io.containerd.runc.v2\"' \
           '[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runc.options]' \
           '  SystemdCgroup = true' >> {CONFIG} && systemctl restart containerd"
    ));
    install(&node);
    assert!(
        node.exec_ok("containerd config dump")
            .matches("SystemdCgroup = true")
            .count()
            >= 2,
        "runc's and burrow's handlers use the systemd driver"
    );
    pod_through_cri(&node, "burrownode.slice", |cri, container| {
        let (_, info) = cri.container_status(container).unwrap();
        let pid = info["pid"].as_i64().expect("the container's pid");
        let scope = format!("cri-containerd-{container}.scope");
        let cgroup = node.exec_ok(&format!("cat /proc/{pid}/cgroup"));
        assert!(
            cgroup
                .lines()
                .all(|l| l.ends_with(&format!("/burrownode.slice/{scope}"))),
            "{cgroup}"
        );
        let props = text(&node.exec(&format!("systemctl show -p ActiveState,Delegate {scope}")));
        assert!(
            props.contains("ActiveState=active") && props.contains("Delegate=yes"),
            "{scope}: {props}"
        );
    });
    node.exec_ok(&format!("{SCRIPT} uninstall"));
}

/// A one-container pod of handler `burrow` below `cgroup_parent`, through the node's CRI from
/// the host, with kubelet's default namespaces: its container's `uid_map` is an exclusive
/// range, the helpers ran as their units, `check` passes while it runs, and the removed pod
/// leaves no range.
fn pod_through_cri(node: &Node, cgroup_parent: &str, check: impl Fn(&mut Cri, &str)) {
    // The node's CRI socket, from the host.
    let socket = PathBuf::from(format!(
        "/proc/{}/root/run/containerd/containerd.sock",
        node.pid()
    ));
    let mut cri = Cri::connect(&socket).unwrap_or_else(|e| panic!("CRI in the node: {e}"));
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cri.image_status(PAUSE_IMAGE).is_ok_and(|i| i.is_some()) {
        assert!(
            Instant::now() < deadline,
            "CRI does not see the pause image"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let logs = Path::new("/var/log/pods/web");
    node.exec_ok(&format!("mkdir -p {}", logs.display()));
    let mut config = pod_config("web", cgroup_parent, logs);
    let idle = "trap 'exit 0' TERM; sleep 3600 & wait";
    let mut idle_config = container_config("idle", BUSYBOX_IMAGE, &["sh", "-c", idle], None);
    set_kubelet_namespaces(
        &mut config,
        Some(&mut idle_config),
        api::NamespaceMode::Container,
    );
    let pod = step(
        node,
        "RunPodSandbox",
        cri.run_pod_sandbox(&config, "burrow"),
    );
    let container = step(
        node,
        "CreateContainer",
        cri.create_container(&pod, &idle_config, &config),
    );
    step(node, "StartContainer", cri.start_container(&container));
    let out = step(
        node,
        "ExecSync",
        cri.exec_sync(&container, &["cat", "/proc/self/uid_map"], 10),
    );
    assert_exclusive_range(&out.stdout);
    node.assert_helpers_ran_as_units();
    check(&mut cri, &container);
    step(node, "StopContainer", cri.stop_container(&container, 10));
    step(node, "RemoveContainer", cri.remove_container(&container));
    step(node, "StopPodSandbox", cri.stop_pod_sandbox(&pod));
    step(node, "RemovePodSandbox", cri.remove_pod_sandbox(&pod));
    assert_eq!(node.ranges(), "a(usuuu) 0", "the pod left its range");
}

/// A CRI call's answer, which must be a success; a failure shows containerd's journal.
fn step<T, E: std::fmt::Debug>(node: &Node, call: &str, answer: Result<T, E>) -> T {
    answer.unwrap_or_else(|e| {
        panic!(
            "{call} with handler burrow: {e:?}\ncontainerd's journal:\n{}",
            text(&node.exec("journalctl -q --no-pager -o cat -u containerd -n 30"))
        )
    })
}

/// Configs the installer cannot edit safely are refused (exit 3, with what to do) before it
/// changes anything: checked with `--dry-run` on copies (no node needed).
#[test]
fn refuses_containerd_configs_it_cannot_edit() {
    let dir = std::env::temp_dir().join(format!("burrow-node-refusals-{}", std::process::id()));
    let files = dir.join("files");
    install_files(&files);
    for (name, config, says) in [
        ("v1", "[plugins]\n", "has config version 1"),
        ("v3", "version = 3\n", "has config version 3"),
        (
            "multi-line",
            "version = 2\nimports = [\n  \"/etc/other.toml\",\n]\n",
            "spans several lines",
        ),
        (
            "own-burrow",
            "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.burrow]\n  \
             runtime_type = \"io.containerd.runc.v2\"\n",
            "already defines runtime handler burrow",
        ),
    ] {
        let config_dir = dir.join(name);
        fs::create_dir_all(&config_dir).unwrap();
        let path = config_dir.join("config.toml");
        fs::write(&path, config).unwrap();
        let out = std::process::Command::new(workspace_root().join("scripts/burrow-node"))
            .args(["install", "--dry-run", "--from"])
            .arg(&files)
            .env("BURROW_NODE_CONTAINERD_CONFIG", &path)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(3), "{name}: {stderr}");
        assert!(stderr.contains(says), "{name}: {stderr}");
        assert_eq!(fs::read_to_string(&path).unwrap(), config, "{name}");
        let entries: Vec<_> = fs::read_dir(&config_dir).unwrap().flatten().collect();
        assert_eq!(entries.len(), 1, "{name}: {entries:?}");
    }
    fs::remove_dir_all(&dir).unwrap();
}
