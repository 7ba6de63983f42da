//! Pods through containerd's CRI, with the calls kubelet makes (issue 11, item 2), against a
//! containerd of the test's own (`burrow_tests::cri`). Run as root (`make test`).
//!
//! `runc_pod_through_cri` is the baseline that proves the harness: the whole pod life cycle
//! with runtime handler `runc`. `burrow_pods_through_cri` runs the same pod with handler
//! `burrow`, and a second one, with Burrow's own assertions (one range per pod, `uid_map`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use burrow_tests::cri::{
    api, container_config, set_kubelet_namespaces, Containerd, Cri, BUSYBOX_IMAGE,
};
use burrow_tests::{cgroup_dirs, wait_for, Harness, HarnessOptions};

const MIB: i64 = 1 << 20;
/// Container A's HTTP server (busybox httpd) inside the pod.
const PORT: u16 = 8080;
const PAGE: &str = "served-by-a";

/// A: an HTTP server on the pod's port, then a shell that ends on SIGTERM (as PID 1 of its pid
/// namespace it would otherwise ignore StopContainer's signal).
const SERVER: &str =
    "mkdir -p /www && echo served-by-a > /www/index.html && httpd -p 8080 -h /www \
    && trap 'exit 0' TERM && sleep 3600 & wait";
/// B: idle until SIGTERM.
const IDLE: &str = "trap 'exit 0' TERM; sleep 3600 & wait";

/// A pod that runs: its ids and what it holds on the host, to check it is all gone after.
struct Pod {
    id: String,
    handler: String,
    ip: String,
    server: String,
    client: String,
    /// Host pids of the sandbox (pause) and both containers.
    pids: Vec<i32>,
    /// Their cgroup directories, in every hierarchy.
    cgroups: Vec<PathBuf>,
    /// The pod's network namespace (CRI's bind mount of it).
    netns: PathBuf,
}

fn start() -> (Harness, Containerd) {
    let h = Harness::start(HarnessOptions::default());
    let containerd = Containerd::start(&h);
    (h, containerd)
}

#[test]
fn runc_pod_through_cri() {
    let (_h, containerd) = start();
    let mut cri = containerd.client();
    let version = cri.version().unwrap();
    assert_eq!(version.runtime_name, "containerd", "{version:?}");
    assert_eq!(version.runtime_api_version, "v1", "{version:?}");
    let image = cri.image_status(BUSYBOX_IMAGE).unwrap().expect("busybox");
    assert!(
        image.repo_tags.iter().any(|t| t == BUSYBOX_IMAGE),
        "{image:?}"
    );
    pod_life_cycle(&containerd, &mut cri, "runc");
}

/// Pods on Burrow: each pod one user namespace and one range (the sandbox's, which its
/// containers join), a second pod a disjoint one; the pod network namespace CNI configured is
/// adopted (its pod IP answers from the host), and removing the pods leaves nothing, ranges
/// included.
#[test]
fn burrow_pods_through_cri() {
    let (h, containerd) = start();
    let mut cri = containerd.client();
    let pod = start_pod(&containerd, &mut cri, "burrow", "web-burrow");
    // The other with one pid namespace for the whole pod (`shareProcessNamespace: true`).
    let other = start_pod_with(
        &containerd,
        &mut cri,
        "burrow",
        "other-burrow",
        api::NamespaceMode::Pod,
    );
    let (base, other_base) = (one_range(&pod), one_range(&other));
    assert!(
        base.abs_diff(other_base) >= 65536,
        "ranges overlap: {base} and {other_base}"
    );
    assert_eq!(h.ranges_in_use(), 2, "one range per pod");
    remove_pod(&mut cri, &other);
    check_running_pod(&containerd, &mut cri, &pod);
    remove_pod(&mut cri, &pod);
    assert_nothing_left(&containerd, Some(&other));
    assert_nothing_left(&containerd, Some(&pod));
    wait_for("the pods' ranges freed", || h.ranges_in_use() == 0);
}

/// The image a system-container pod runs: the cached Debian rootfs with systemd and
/// docker.io, as an image archive (cached next to the rootfs: building it reads 0.5 GB).
const SYSTEM_IMAGE: &str = "burrow.test/debian-system:1";

fn system_image_archive() -> PathBuf {
    let rootfs = burrow_tests::debian_system_rootfs();
    let archive = rootfs.with_extension("image.tar");
    if !archive.exists() {
        let partial = rootfs.with_extension("image.tar.partial");
        burrow_tests::cri::docker_archive(
            &rootfs,
            &burrow_tests::cri::ImageConfig {
                name: SYSTEM_IMAGE,
                entrypoint: &["/sbin/init"],
                cmd: &[],
            },
            &partial,
        );
        std::fs::rename(&partial, &archive).unwrap();
    }
    archive
}

/// ExecSync of `script` in container `id`, which must succeed: its stdout.
fn exec_ok(cri: &mut Cri, id: &str, script: &str) -> String {
    let out = cri.exec_sync(id, &["sh", "-c", script], 120).unwrap();
    assert_eq!(out.exit_code, 0, "{script}: {out:?}");
    out.stdout.trim().to_string()
}

/// A pod running the Debian image's systemd, as a Kubernetes pod of a system container would:
/// systemd reaches `running`; an inner dockerd runs containers with bridge networking (so the
/// pod's root has CAP_NET_ADMIN over the pod network); an inner `--privileged` container still
/// cannot write `kernel.*`; removing the pod leaves nothing.
#[test]
fn a_system_container_pod_runs_systemd_and_docker() {
    let archive = system_image_archive();
    let (h, containerd) = start();
    containerd.import(&archive);
    let mut cri = containerd.client();
    let bb = burrow_tests::busybox_rootfs(&h.dir.join("bb"), None);
    let tarball = h.dir.join("bb.tar");
    burrow_tests::run(
        std::process::Command::new("tar")
            .arg("-C")
            .arg(&bb)
            .arg("-cf")
            .arg(&tarball)
            .arg("."),
    );

    let mut sandbox_config = containerd.pod_config("system");
    set_kubelet_namespaces(&mut sandbox_config, None, api::NamespaceMode::Container);
    let pod = cri
        .run_pod_sandbox(&sandbox_config, "burrow")
        .unwrap_or_else(|e| panic!("RunPodSandbox: {e:?}\n{}", containerd.log_tail()));
    let mut config = container_config("sys", SYSTEM_IMAGE, &["/sbin/init"], None);
    set_kubelet_namespaces(
        &mut sandbox_config,
        Some(&mut config),
        api::NamespaceMode::Container,
    );
    config.mounts.push(api::Mount {
        container_path: "/bb.tar".into(),
        host_path: tarball.display().to_string(),
        readonly: true,
        ..Default::default()
    });
    let sys = cri
        .create_container(&pod, &config, &sandbox_config)
        .unwrap_or_else(|e| panic!("CreateContainer: {e:?}\n{}", containerd.log_tail()));
    cri.start_container(&sys).unwrap();

    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let state = cri.exec_sync(&sys, &["systemctl", "is-system-running"], 10);
        let state = state
            .map(|o| o.stdout.trim().to_string())
            .unwrap_or_default();
        if state == "running" {
            break;
        }
        let failed = cri.exec_sync(&sys, &["systemctl", "--failed", "--no-legend"], 10);
        assert!(
            Instant::now() < deadline && state != "degraded",
            "systemd is {state}: {failed:?}\n{}",
            std::fs::read_to_string(containerd.dir.join("logs/system/sys.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    exec_ok(&mut cri, &sys, "docker import /bb.tar bb >/dev/null");
    assert_eq!(
        exec_ok(&mut cri, &sys, "docker run --rm bb echo inner-ok"),
        "inner-ok"
    );
    exec_ok(
        &mut cri,
        &sys,
        "docker run -d --name web bb sh -c 'echo served > /index.html; exec httpd -f -p 8080 -h /'",
    );
    let ip = exec_ok(
        &mut cri,
        &sys,
        "docker inspect -f '{{.NetworkSettings.IPAddress}}' web",
    );
    let page = exec_ok(&mut cri, &sys, &format!(
        "for i in $(seq 50); do docker run --rm bb wget -q -O- http://{ip}:8080/index.html && break; sleep 0.2; done"
    ));
    assert_eq!(
        page, "served",
        "an inner container reaches another over the inner bridge"
    );
    let sysrq = exec_ok(
        &mut cri,
        &sys,
        "docker run --rm --privileged bb sh -c \
        '(echo 0 > /proc/sys/kernel/sysrq) 2>/dev/null && echo written || echo denied'",
    );
    assert_eq!(
        sysrq, "denied",
        "an inner --privileged container wrote kernel.sysrq"
    );

    cri.stop_pod_sandbox(&pod).unwrap();
    cri.remove_pod_sandbox(&pod).unwrap();
    assert_nothing_left(&containerd, None);
    wait_for("the pod's range freed", || h.ranges_in_use() == 0);
}

/// What the runtime refuses, through CRI, with the reason kubelet would show: a sandbox with
/// `hostNetwork`, `hostPID` or `hostIPC`, and a privileged container (its privileged sandbox,
/// a pause process in the pod's own user namespace, is accepted). Nothing is left of any.
#[test]
fn host_namespaces_and_privileged_containers_are_refused_through_cri() {
    let (h, containerd) = start();
    let mut cri = containerd.client();
    let sandbox = |name: &str, network, pid, ipc, privileged| {
        let mut config = containerd.pod_config(name);
        if let Some(linux) = config.linux.as_mut() {
            linux.security_context = Some(api::LinuxSandboxSecurityContext {
                namespace_options: Some(api::NamespaceOption {
                    network: network as i32,
                    pid: pid as i32,
                    ipc: ipc as i32,
                    ..Default::default()
                }),
                privileged,
                ..Default::default()
            });
        }
        config
    };
    use api::NamespaceMode::{Container, Node, Pod};
    for (name, config, reason) in [
        (
            "host-network",
            sandbox("host-network", Node, Container, Pod, false),
            "--net=host",
        ),
        (
            "host-pid",
            sandbox("host-pid", Pod, Node, Pod, false),
            "--pid=host",
        ),
        (
            "host-ipc",
            sandbox("host-ipc", Pod, Container, Node, false),
            "--ipc=host",
        ),
    ] {
        let refusal = cri
            .run_pod_sandbox(&config, "burrow")
            .expect_err(&format!("{name} was accepted"));
        assert!(refusal.message().contains(reason), "{name}: {refusal:?}");
    }

    let config = sandbox("privileged", Pod, Container, Pod, true);
    let pod = cri.run_pod_sandbox(&config, "burrow").unwrap();
    let mut privileged = container_config("root", BUSYBOX_IMAGE, &["sleep", "60"], None);
    if let Some(linux) = privileged.linux.as_mut() {
        linux.security_context = Some(api::LinuxContainerSecurityContext {
            privileged: true,
            ..Default::default()
        });
    }
    let refusal = cri
        .create_container(&pod, &privileged, &config)
        .and_then(|id| cri.start_container(&id))
        .expect_err("a privileged container was accepted");
    assert!(
        refusal.message().contains("--privileged is not supported"),
        "{refusal:?}"
    );
    cri.stop_pod_sandbox(&pod).unwrap();
    cri.remove_pod_sandbox(&pod).unwrap();
    assert_nothing_left(&containerd, None);
    wait_for("no range left", || h.ranges_in_use() == 0);
}

/// The range all of the pod's processes (sandbox, A, B) share: one `uid_map`, `0 BASE 65536`
/// with BASE far from the host's own IDs. Returns BASE.
fn one_range(pod: &Pod) -> u64 {
    let maps: Vec<String> = pod
        .pids
        .iter()
        .map(|pid| {
            let map = std::fs::read_to_string(format!("/proc/{pid}/uid_map")).unwrap();
            map.split_whitespace().collect::<Vec<_>>().join(" ")
        })
        .collect();
    assert!(
        maps.iter().all(|m| *m == maps[0]),
        "one range per pod: {maps:?}"
    );
    let fields: Vec<u64> = maps[0].split(' ').map(|f| f.parse().unwrap()).collect();
    assert_eq!((fields[0], fields[2]), (0, 65536), "{maps:?}");
    assert!(
        fields[1] >= 1 << 20,
        "a range far from the host's IDs: {maps:?}"
    );
    fields[1]
}

/// Runs the two-container pod with `handler`, checks what kubelet relies on, removes it and
/// checks that nothing is left.
fn pod_life_cycle(containerd: &Containerd, cri: &mut Cri, handler: &str) {
    let pod = start_pod(containerd, cri, handler, &format!("web-{handler}"));
    check_running_pod(containerd, cri, &pod);
    remove_pod(cri, &pod);
    assert_nothing_left(containerd, Some(&pod));
}

/// What kubelet relies on in a running pod (the only one running).
fn check_running_pod(containerd: &Containerd, cri: &mut Cri, pod: &Pod) {
    assert_pod_holds(containerd, pod);
    check_network(cri, pod);
    check_exec_and_stats(cri, pod);
    check_memory_update(cri, pod);
    let containers = cri.list_containers(Some(&pod.id)).unwrap();
    assert_eq!(containers.len(), 2, "{containers:?}");
}

/// RunPodSandbox, then containers A (server, 128 MiB limit) and B (client): created, started,
/// running.
fn start_pod(containerd: &Containerd, cri: &mut Cri, handler: &str, pod_name: &str) -> Pod {
    start_pod_with(
        containerd,
        cri,
        handler,
        pod_name,
        api::NamespaceMode::Container,
    )
}

/// [`start_pod`] with the pid namespace mode `pid`.
fn start_pod_with(
    containerd: &Containerd,
    cri: &mut Cri,
    handler: &str,
    pod_name: &str,
    pid: api::NamespaceMode,
) -> Pod {
    let mut sandbox_config = containerd.pod_config(pod_name);
    set_kubelet_namespaces(&mut sandbox_config, None, pid);
    let id = cri
        .run_pod_sandbox(&sandbox_config, handler)
        .unwrap_or_else(|e| panic!("RunPodSandbox: {e:?}\n{}", containerd.log_tail()));
    let (status, info) = cri.pod_sandbox_status(&id).unwrap();
    assert_eq!(status.state, api::PodSandboxState::SandboxReady as i32);
    assert_eq!(status.runtime_handler, handler);
    let ip = status.network.expect("pod network").ip;
    let prefix = containerd.subnet.trim_end_matches("0/24");
    assert!(
        ip.starts_with(prefix),
        "pod IP {ip} outside {}",
        containerd.subnet
    );
    let netns = namespace_path(&info, "network").expect("the pod's netns path");
    let mut pids = vec![info["pid"].as_i64().expect("sandbox pid") as i32];
    let mut ids = vec![];
    for (name, script, limit) in [("a", SERVER, Some(128 * MIB)), ("b", IDLE, None)] {
        let mut config = container_config(name, BUSYBOX_IMAGE, &["sh", "-c", script], limit);
        set_kubelet_namespaces(&mut sandbox_config, Some(&mut config), pid);
        let container = cri
            .create_container(&id, &config, &sandbox_config)
            .unwrap_or_else(|e| panic!("CreateContainer {name}: {e:?}"));
        cri.start_container(&container)
            .unwrap_or_else(|e| panic!("StartContainer {name}: {e:?}"));
        let (status, info) = cri.container_status(&container).unwrap();
        assert_eq!(status.state, api::ContainerState::ContainerRunning as i32);
        pids.push(info["pid"].as_i64().expect("container pid") as i32);
        ids.push(container);
    }
    let cgroups = pids
        .iter()
        .flat_map(|pid| cgroup_dirs(*pid).into_iter().map(|(_, dir)| dir))
        .filter(|dir| dir.to_string_lossy().contains(&containerd.cgroup_parent))
        .collect::<Vec<_>>();
    assert!(
        !cgroups.is_empty(),
        "no cgroup below {}",
        containerd.cgroup_parent
    );
    let client = ids.pop().unwrap();
    let server = ids.pop().unwrap();
    Pod {
        id,
        handler: handler.to_string(),
        ip,
        server,
        client,
        pids,
        cgroups,
        netns,
    }
}

/// The path of the namespace of `kind` in the runtime spec of a verbose status's `info`.
fn namespace_path(info: &serde_json::Value, kind: &str) -> Option<PathBuf> {
    info["runtimeSpec"]["linux"]["namespaces"]
        .as_array()?
        .iter()
        .find(|ns| ns["type"] == kind)?["path"]
        .as_str()
        .map(PathBuf::from)
}

/// B reaches A on 127.0.0.1 (one network namespace per pod), and the host reaches A at the
/// pod IP that PodSandboxStatus reported.
fn check_network(cri: &mut Cri, pod: &Pod) {
    let url = format!("http://127.0.0.1:{PORT}/index.html");
    // httpd daemonizes in the background of A's start: poll until it listens.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = cri.exec_sync(&pod.client, &["wget", "-q", "-O-", &url], 10);
        if out.as_ref().is_ok_and(|o| o.stdout.trim() == PAGE) {
            break;
        }
        assert!(Instant::now() < deadline, "B cannot reach A: {out:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let address: SocketAddr = format!("{}:{PORT}", pod.ip).parse().unwrap();
    let answer = burrow_tests::http_get(address, "/index.html");
    assert!(
        answer.starts_with("HTTP/1.") && answer.contains(PAGE),
        "{answer}"
    );
}

/// ExecSync returns stdout, stderr and the exit code apart; ContainerStats reports memory and
/// CPU use.
fn check_exec_and_stats(cri: &mut Cri, pod: &Pod) {
    let out = cri
        .exec_sync(
            &pod.server,
            &["sh", "-c", "echo out; echo err >&2; exit 3"],
            10,
        )
        .unwrap();
    assert_eq!(
        (out.stdout.as_str(), out.stderr.as_str(), out.exit_code),
        ("out\n", "err\n", 3)
    );
    let stats = cri.container_stats(&pod.server).unwrap();
    assert_eq!(stats.attributes.as_ref().unwrap().id, pod.server);
    let memory = stats.memory.expect("memory stats");
    let working_set = memory.working_set_bytes.expect("working set").value;
    assert!(working_set > 0, "{memory:?}");
    let cpu = stats.cpu.expect("cpu stats");
    let used = cpu.usage_core_nano_seconds.expect("cpu usage").value;
    assert!(used > 0, "{cpu:?}");
}

/// UpdateContainerResources changes A's memory limit, as its memory cgroup shows.
fn check_memory_update(cri: &mut Cri, pod: &Pod) {
    let (_, info) = cri.container_status(&pod.server).unwrap();
    let pid = info["pid"].as_i64().unwrap() as i32;
    let limit_file = memory_limit_file(pid);
    let limit = || {
        std::fs::read_to_string(&limit_file)
            .unwrap()
            .trim()
            .to_string()
    };
    assert_eq!(limit(), (128 * MIB).to_string());
    let resources = api::LinuxContainerResources {
        memory_limit_in_bytes: 96 * MIB,
        ..Default::default()
    };
    cri.update_container_resources(&pod.server, &resources)
        .unwrap();
    assert_eq!(limit(), (96 * MIB).to_string());
}

/// The file holding the memory limit of `pid`'s cgroup (v1 `memory`, or cgroup2).
fn memory_limit_file(pid: i32) -> PathBuf {
    let dirs = cgroup_dirs(pid);
    if let Some((_, dir)) = dirs
        .iter()
        .find(|(name, _)| name.split(',').any(|c| c == "memory"))
    {
        return dir.join("memory.limit_in_bytes");
    }
    let (_, dir) = dirs.iter().find(|(name, _)| name == "unified").unwrap();
    dir.join("memory.max")
}

/// As kubelet deletes a pod: B stopped (it ends on SIGTERM: exit 0) and removed, then the
/// sandbox stopped (with A) and removed.
fn remove_pod(cri: &mut Cri, pod: &Pod) {
    cri.stop_container(&pod.client, 10).unwrap();
    let (status, _) = cri.container_status(&pod.client).unwrap();
    assert_eq!(status.state, api::ContainerState::ContainerExited as i32);
    assert_eq!(status.exit_code, 0, "{status:?}");
    cri.remove_container(&pod.client).unwrap();
    let left = cri.list_containers(Some(&pod.id)).unwrap();
    assert_eq!(left.len(), 1, "{left:?}");
    cri.stop_pod_sandbox(&pod.id).unwrap();
    let (status, _) = cri.pod_sandbox_status(&pod.id).unwrap();
    assert_eq!(status.state, api::PodSandboxState::SandboxNotready as i32);
    cri.remove_pod_sandbox(&pod.id).unwrap();
    assert!(cri.list_containers(Some(&pod.id)).unwrap().is_empty());
    assert!(!cri
        .list_pod_sandboxes()
        .unwrap()
        .iter()
        .any(|p| p.id == pod.id));
}

/// What a running pod holds on the host, which [`assert_nothing_left`] then finds gone (so
/// that check is not vacuous).
fn assert_pod_holds(containerd: &Containerd, pod: &Pod) {
    assert!(pod.netns.exists(), "{}", pod.netns.display());
    assert_eq!(containerd.addresses_in_use(), vec![pod.ip.clone()]);
    assert!(!containerd.mounts().is_empty());
    assert!(!containerd.shim_pids().is_empty());
    assert!(!containerd.pod_cgroups().is_empty());
    assert!(pod.cgroups.iter().all(|dir| dir.exists()));
    let state = containerd.runtime_root(&pod.handler).join("k8s.io");
    assert_eq!(
        std::fs::read_dir(state).unwrap().count(),
        3,
        "sandbox, A, B"
    );
}

/// Nothing of the pod (or of a refused one) on the host: no process, cgroup, mount, network
/// namespace, address, or runtime state.
fn assert_nothing_left(containerd: &Containerd, pod: Option<&Pod>) {
    if let Some(pod) = pod {
        for pid in &pod.pids {
            wait_for("the pod's processes to go", || {
                !PathBuf::from(format!("/proc/{pid}")).exists()
            });
        }
        for dir in &pod.cgroups {
            assert!(!dir.exists(), "cgroup {} left", dir.display());
        }
        assert!(!pod.netns.exists(), "netns {} left", pod.netns.display());
    }
    wait_for("the shims to exit", || containerd.shim_pids().is_empty());
    assert_eq!(containerd.mounts(), Vec::<String>::new(), "mounts left");
    assert_eq!(
        containerd.pod_cgroups(),
        Vec::<PathBuf>::new(),
        "cgroups left"
    );
    assert_eq!(containerd.addresses_in_use(), Vec::<String>::new());
    let entries = |dir: PathBuf| -> Vec<String> {
        std::fs::read_dir(dir)
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    };
    assert_eq!(entries(containerd.netns_dir()), Vec::<String>::new());
    for handler in ["runc", "burrow"] {
        let state = containerd.runtime_root(handler).join("k8s.io");
        assert_eq!(entries(state), Vec::<String>::new(), "{handler} state left");
    }
}
