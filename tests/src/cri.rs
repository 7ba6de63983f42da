//! A containerd of the test's own with its CRI plugin: what kubelet talks to on a node.
//!
//! [`Containerd::start`] writes a config (own root, state, sockets, CNI directories, a bridge
//! and subnet of its own, runtime handlers `runc` and `burrow`), starts containerd, imports
//! the test images into CRI's `k8s.io` namespace and waits until CRI answers. Dropping it
//! removes every pod, stops containerd and its shims, and removes what they leave on the host:
//! mounts below its directory (snapshots, shm, the pods' network namespaces), the CNI bridge
//! and the pods' cgroup parent.

mod client;
mod image;

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub use client::{container_config, pod_config, set_kubelet_namespaces, Cri, ExecOutput};
pub use image::{docker_archive, test_images, ImageConfig, BUSYBOX_IMAGE, PAUSE_IMAGE};
pub use k8s_cri::v1 as api;

use crate::{wait_for, Harness};

/// The CNI plugins the network configuration uses, from Debian's containernetworking-plugins.
const CNI_PLUGINS: [&str; 3] = ["bridge", "host-local", "loopback"];
const CNI_PLUGIN_DIR: &str = "/usr/lib/cni";

/// The CNI network's name (host-local keeps its addresses in a directory of that name).
const NETWORK: &str = "burrow-cri";

/// containerd's namespace for CRI (kubelet's images and pods live there).
pub const K8S_NAMESPACE: &str = "k8s.io";

pub struct Containerd {
    pub dir: PathBuf,
    /// The CRI (and containerd) gRPC socket.
    pub socket: PathBuf,
    /// The Linux bridge the CNI configuration makes; removed on drop.
    pub bridge: String,
    /// The pods' IPv4 subnet (CIDR).
    pub subnet: String,
    /// The cgroup parent (cgroupfs driver) of every pod [`Containerd::pod_config`] makes.
    pub cgroup_parent: String,
    containerd: Child,
}

/// The n-th containerd of this process: a bridge name (at most 15 bytes) and a /24 of its own,
/// in 10.213.0.0/16, which neither Docker's default pools (172.17-31, 192.168) nor this host's
/// routes use; parallel tests in one process get different ones.
fn network_of(n: u32) -> (String, String) {
    (
        format!("bcri{}n{}", std::process::id() % 100_000, n % 100),
        format!("10.213.{}.0/24", n % 256),
    )
}

impl Containerd {
    /// Starts containerd with runtime handlers `runc` and `burrow` (the workspace's `burrow`
    /// on `h`'s bus), imports [`BUSYBOX_IMAGE`] and [`PAUSE_IMAGE`] (the sandbox image), and
    /// waits until CRI answers and knows both images.
    pub fn start(h: &Harness) -> Containerd {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let dir = h.dir.join(format!("cri{n}"));
        fs::create_dir_all(&dir).unwrap();
        let (bridge, subnet) = network_of(n);
        remove_stale_bridges(&subnet);
        let wrapper = crate::burrow_wrapper(h, &dir);
        write_cni_config(&dir, &bridge, &subnet);
        let socket = dir.join("containerd.sock");
        fs::write(
            dir.join("config.toml"),
            config_toml(&dir, &socket, &wrapper),
        )
        .unwrap();
        let log = fs::File::create(dir.join("containerd.log")).unwrap();
        let containerd = Command::new("containerd")
            .arg("--config")
            .arg(dir.join("config.toml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            // Its own group: a test's Ctrl-C must not skip the drop's orderly teardown.
            .process_group(0)
            .spawn()
            .expect("start containerd (apt-get install containerd)");
        let containerd = Containerd {
            cgroup_parent: format!("/burrow-cri-{}-{n}", std::process::id()),
            dir,
            socket,
            bridge,
            subnet,
            containerd,
        };
        wait_for("containerd's CRI", || {
            Cri::connect(&containerd.socket).is_ok_and(|mut c| c.version().is_ok())
        });
        for archive in image::test_images(&containerd.dir.join("images")) {
            containerd.import(&archive);
        }
        let mut cri = containerd.client();
        // CRI learns of imported images from containerd's events, a moment later.
        for name in [BUSYBOX_IMAGE, PAUSE_IMAGE] {
            wait_for("CRI to see the imported image", || {
                cri.image_status(name).is_ok_and(|i| i.is_some())
            });
        }
        containerd
    }

    /// A CRI client of this containerd.
    pub fn client(&self) -> Cri {
        Cri::connect(&self.socket).unwrap_or_else(|e| panic!("CRI connect: {e}"))
    }

    /// `ctr ARGS` against this containerd, in CRI's namespace.
    pub fn ctr(&self, args: &[&str]) -> Output {
        Command::new("ctr")
            .arg("--address")
            .arg(&self.socket)
            .args(["--namespace", K8S_NAMESPACE])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run ctr")
    }

    /// Imports an image archive (`docker save` or OCI format) into CRI's namespace, unpacked
    /// for the snapshotter CRI uses.
    pub fn import(&self, archive: &Path) {
        let archive = archive.display().to_string();
        let out = self.ctr(&["images", "import", "--snapshotter", "overlayfs", &archive]);
        assert!(
            out.status.success(),
            "ctr images import {archive}: {}",
            crate::all_output(&out)
        );
    }

    /// A pod configuration `name` under this containerd's cgroup parent, logging below its
    /// directory.
    pub fn pod_config(&self, name: &str) -> api::PodSandboxConfig {
        let logs = self.dir.join("logs").join(name);
        fs::create_dir_all(&logs).unwrap();
        pod_config(name, &self.cgroup_parent, &logs)
    }

    /// The directory of the runtime handler's state (the shim's `Root` option: the runtime's
    /// `--root`).
    pub fn runtime_root(&self, handler: &str) -> PathBuf {
        self.dir.join(format!("runtime-{handler}"))
    }

    /// Where CRI bind-mounts the pods' network namespaces (`netns_mounts_under_state_dir`).
    pub fn netns_dir(&self) -> PathBuf {
        self.dir.join("state/io.containerd.grpc.v1.cri/netns")
    }

    /// The pod addresses host-local has handed out and not yet released (it records each in a
    /// file named after the address).
    pub fn addresses_in_use(&self) -> Vec<String> {
        let Ok(entries) = fs::read_dir(self.dir.join("ipam").join(NETWORK)) else {
            return vec![];
        };
        entries
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|name| name.parse::<std::net::IpAddr>().is_ok())
            .collect()
    }

    /// The pids of this containerd's shims (their command line names its socket).
    pub fn shim_pids(&self) -> Vec<i32> {
        let own = self.containerd.id() as i32;
        pids_with_arg(&self.socket.display().to_string())
            .into_iter()
            .filter(|pid| *pid != own)
            .collect()
    }

    /// The cgroup directories below the pods' cgroup parent, in every hierarchy (the pods'
    /// containers' cgroups).
    pub fn pod_cgroups(&self) -> Vec<PathBuf> {
        cgroup_roots()
            .into_iter()
            .map(|root| root.join(self.cgroup_parent.trim_start_matches('/')))
            .filter_map(|parent| fs::read_dir(parent).ok())
            .flat_map(|entries| entries.flatten())
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .map(|e| e.path())
            .collect()
    }

    /// The last lines of containerd's log, for failure messages.
    pub fn log_tail(&self) -> String {
        let text = fs::read_to_string(self.dir.join("containerd.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// Mount points below this containerd's directory (a removed pod leaves none).
    pub fn mounts(&self) -> Vec<String> {
        let prefix = format!("{}/", self.dir.display());
        burrow_sys::mountinfo::own()
            .unwrap_or_default()
            .into_iter()
            .map(|m| m.mount_point)
            .filter(|p| p.starts_with(&prefix))
            .collect()
    }
}

/// Deletes test bridges (`bcri*`) left with an address in `subnet` by a run that could not
/// clean up (killed): a second route to the subnet would take the pods' traffic from the host.
/// Tests run under a machine-wide lock and each process's containerds use different subnets, so
/// such a bridge is never a live one.
fn remove_stale_bridges(subnet: &str) {
    let gateway = format!("inet {}1/", subnet.trim_end_matches("0/24"));
    let out = Command::new("ip")
        .args(["-o", "-4", "address", "show"])
        .output()
        .expect("run ip (apt-get install iproute2)");
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let mut fields = line.split_whitespace();
        let device = fields.nth(1).unwrap_or_default();
        if device.starts_with("bcri") && line.contains(&gateway) {
            let _ = Command::new("ip").args(["link", "delete", device]).status();
        }
    }
}

/// The CNI plugin directory (links to Debian's plugins) and one network: a bridge with
/// host-local addresses (recorded below `dir`, not in /var/lib/cni), then loopback.
fn write_cni_config(dir: &Path, bridge: &str, subnet: &str) {
    let bin_dir = dir.join("cni-bin");
    let conf_dir = dir.join("cni-conf");
    fs::create_dir_all(&bin_dir).unwrap();
    fs::create_dir_all(&conf_dir).unwrap();
    for plugin in CNI_PLUGINS {
        let source = Path::new(CNI_PLUGIN_DIR).join(plugin);
        assert!(
            source.exists(),
            "{} missing (apt-get install containernetworking-plugins)",
            source.display()
        );
        std::os::unix::fs::symlink(&source, bin_dir.join(plugin)).unwrap();
    }
    let conflist = serde_json::json!({
        "cniVersion": "1.0.0",
        "name": NETWORK,
        "plugins": [
            {
                "type": "bridge",
                "bridge": bridge,
                "isGateway": true,
                "ipMasq": false,
                "hairpinMode": true,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": subnet}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": dir.join("ipam"),
                },
            },
            {"type": "loopback"},
        ],
    });
    fs::write(
        conf_dir.join("10-burrow-cri.conflist"),
        conflist.to_string(),
    )
    .unwrap();
}

/// containerd's configuration (version 2, containerd 1.6): everything below `dir`.
fn config_toml(dir: &Path, socket: &Path, burrow: &Path) -> String {
    let d = dir.display();
    let cri = r#"plugins."io.containerd.grpc.v1.cri""#;
    let runtimes = format!("{cri}.containerd.runtimes");
    format!(
        r#"version = 2
root = "{d}/root"
state = "{d}/state"

[grpc]
  address = "{socket}"

[ttrpc]
  address = "{socket}.ttrpc"

[plugins."io.containerd.internal.v1.opt"]
  path = "{d}/opt"

[{cri}]
  sandbox_image = "{PAUSE_IMAGE}"
  # This host's bounding set lacks CAP_SYS_RESOURCE: the sandbox's oom_score_adj of -998
  # would fail for any runtime.
  restrict_oom_score_adj = true
  # The pods' network namespaces below the state directory, not in /var/run/netns.
  netns_mounts_under_state_dir = true
  # A random port: parallel containerds must not fight over the default 10010.
  stream_server_port = "0"

[{cri}.cni]
  bin_dir = "{d}/cni-bin"
  conf_dir = "{d}/cni-conf"

[{cri}.containerd]
  snapshotter = "overlayfs"
  default_runtime_name = "runc"

[{runtimes}.runc]
  runtime_type = "io.containerd.runc.v2"

[{runtimes}.runc.options]
  Root = "{d}/runtime-runc"

[{runtimes}.burrow]
  runtime_type = "io.containerd.runc.v2"

[{runtimes}.burrow.options]
  BinaryName = "{burrow}"
  Root = "{d}/runtime-burrow"
"#,
        socket = socket.display(),
        burrow = burrow.display(),
    )
}

impl Drop for Containerd {
    fn drop(&mut self) {
        self.remove_pods();
        self.stop_daemon();
        self.kill_shims();
        self.remove_cgroups();
        let mut points = self.mounts();
        points.sort_by_key(|p| std::cmp::Reverse(p.len()));
        for point in points {
            let _ = nix::mount::umount2(point.as_str(), nix::mount::MntFlags::MNT_DETACH);
        }
        let _ = Command::new("ip")
            .args(["link", "delete", &self.bridge])
            .stderr(Stdio::null())
            .status();
    }
}

impl Containerd {
    /// Stops and removes every pod as kubelet would (which also ends their shims).
    fn remove_pods(&self) {
        let Ok(mut cri) = Cri::connect(&self.socket) else {
            return;
        };
        for pod in cri.list_pod_sandboxes().unwrap_or_default() {
            let _ = cri.stop_pod_sandbox(&pod.id);
            let _ = cri.remove_pod_sandbox(&pod.id);
        }
    }

    /// SIGTERM, then SIGKILL after 10 s.
    fn stop_daemon(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.containerd.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline && self.containerd.try_wait().ok().flatten().is_none() {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = nix::sys::signal::killpg(pid, nix::sys::signal::Signal::SIGKILL);
        let _ = self.containerd.wait();
    }

    /// Shims outlive containerd by design: SIGKILL those of this containerd (whose command
    /// line names its socket) that pod removal did not end.
    fn kill_shims(&self) {
        for pid in self.shim_pids() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }

    /// Kills what still runs below the pods' cgroup parent and removes it, in every hierarchy.
    fn remove_cgroups(&self) {
        for root in cgroup_roots() {
            let parent = root.join(self.cgroup_parent.trim_start_matches('/'));
            if parent.exists() {
                kill_and_remove_cgroup(&parent);
            }
        }
    }
}

/// Kills every process in cgroup `dir` and its descendants, then removes them (deepest first).
fn kill_and_remove_cgroup(dir: &Path) {
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                kill_and_remove_cgroup(&entry.path());
            }
        }
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let procs = fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
        for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        if fs::remove_dir(dir).is_ok() || !dir.exists() || Instant::now() > deadline {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Processes with `arg` among their command-line arguments.
fn pids_with_arg(arg: &str) -> Vec<i32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return vec![];
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            cmdline.split(|b| *b == 0).any(|a| a == arg.as_bytes())
        })
        .collect()
}

/// The mount points of every cgroup hierarchy (v1 controllers, named ones and cgroup2).
fn cgroup_roots() -> Vec<PathBuf> {
    burrow_sys::mountinfo::own()
        .unwrap_or_default()
        .into_iter()
        .filter(|m| m.fs_type == "cgroup" || m.fs_type == "cgroup2")
        .map(|m| PathBuf::from(m.mount_point))
        .collect()
}
