//! System workloads inside a Burrow container, without --privileged: systemd boots as PID 1
//! and a dockerd inside (overlay2, bridge networking, iptables) runs inner containers. Uses
//! the cached Debian image (tests/fixtures/debian-rootfs.sh system) and a dockerd of the
//! test's own. One dockerd at a time: dockerds share the host's bridge and iptables, so the
//! tests take turns ([`start_with_image`]).

use std::path::Path;
use std::process::Output;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use burrow_tests::{
    busybox_rootfs, debian_system_rootfs, debian_trixie_system_rootfs, json_lines, Docker, Harness,
    HarnessOptions,
};

fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// `sh -c script` inside `container`.
fn exec(docker: &Docker, container: &str, script: &str) -> Output {
    docker.run(&["exec", container, "sh", "-c", script])
}

fn exec_ok(docker: &Docker, container: &str, script: &str) -> String {
    let out = exec(docker, container, script);
    assert!(
        out.status.success(),
        "in {container}: {script}: {}{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        docker.log_tail()
    );
    text(&out)
}

/// Waits until systemd in `container` has finished booting; its final state.
fn boot_state(docker: &Docker, container: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let state = text(&exec(docker, container, "systemctl is-system-running"));
        if !matches!(state.as_str(), "initializing" | "starting" | "") || Instant::now() > deadline
        {
            return state;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A harness and a dockerd of the test's own with `rootfs` imported as `image`, and the
/// [`busybox_volume`]; the guard keeps other tests' dockerds away until the test ends (it is
/// the first element, so it is dropped last, after the dockerd).
fn start_with_image(
    rootfs: &Path,
    image: &str,
) -> (MutexGuard<'static, ()>, Harness, Docker, String) {
    static ONE_DOCKERD: Mutex<()> = Mutex::new(());
    let turn = ONE_DOCKERD.lock().unwrap_or_else(|e| e.into_inner());
    let h = Harness::start(HarnessOptions::default());
    let docker = Docker::start(&h);
    docker.import(rootfs, image);
    let volume = busybox_volume(&h);
    (turn, h, docker, volume)
}

/// The inner image, busybox, as a tarball the system containers import themselves: the
/// `docker run -v` argument that puts it at /bb.tar.
fn busybox_volume(h: &Harness) -> String {
    let bb = busybox_rootfs(&h.dir.join("bb"), None);
    let tarball = h.dir.join("bb.tar");
    assert!(std::process::Command::new("tar")
        .arg("-C")
        .arg(&bb)
        .arg("-cf")
        .arg(&tarball)
        .arg(".")
        .status()
        .unwrap()
        .success());
    format!("{}:/bb.tar:ro", tarball.display())
}

/// systemd in `container` reaches "running": no unit failed, and the units of debugfs and
/// tracefs are active, not masked (they find Burrow's covers mounted).
fn assert_boots_to_running(docker: &Docker, container: &str) {
    let state = boot_state(docker, container);
    let failed = text(&exec(
        docker,
        container,
        "systemctl --failed --no-legend --plain; journalctl -b -p warning --no-pager | tail -n 30",
    ));
    assert_eq!(state, "running", "{container}: failed units: {failed}");
    assert_eq!(
        exec_ok(
            docker,
            container,
            "systemctl is-active sys-kernel-debug.mount sys-kernel-tracing.mount"
        ),
        "active\nactive",
        "{container}"
    );
}

fn inspect(docker: &Docker, container: &str, format: &str) -> String {
    docker
        .ok(&["inspect", "-f", format, container])
        .trim()
        .to_string()
}

/// The host IDs of a process's user namespace, as "0 BASE SIZE".
fn host_uid_map(pid: &str) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/uid_map"))
        .unwrap()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

fn ranges_named(h: &Harness, id: &str) -> usize {
    let out = h.client(None).arg("list").output().unwrap();
    json_lines(&out.stdout)
        .iter()
        .flat_map(|l| l["entries"].as_array().cloned().unwrap_or_default())
        .filter(|r| r["name"].as_str().is_some_and(|n| n.ends_with(id)))
        .count()
}

#[test]
fn systemd_and_docker_run_inside_without_privilege() {
    let (_turn, h, docker, volume) = start_with_image(&debian_system_rootfs(), "burrow-system");

    let started = Instant::now();
    // sys-b has a memory limit, which its /proc tells (lxcfs).
    for (name, memory) in [("sys-a", "0"), ("sys-b", "1g")] {
        docker.ok(&[
            "run",
            "-d",
            "--runtime=burrow",
            "--name",
            name,
            "-m",
            memory,
            "-v",
            &volume,
            "burrow-system",
            "/sbin/init",
        ]);
    }

    // The stock image's systemd boots as PID 1 and reaches "running" (no unit failed).
    for name in ["sys-a", "sys-b"] {
        assert_boots_to_running(&docker, name);
    }
    eprintln!("both booted to running in {:?}", started.elapsed());
    assert_eq!(
        exec_ok(
            &docker,
            "sys-a",
            "tr '\\0' '\\n' < /proc/1/environ | grep ^container=; systemd-detect-virt"
        ),
        "container=burrow\ncontainer-other"
    );
    exec_ok(&docker, "sys-a", "systemctl restart systemd-journald");
    assert_eq!(
        exec_ok(&docker, "sys-a", "systemctl is-active systemd-journald"),
        "active"
    );

    // Namespaced sysctls are the container's to set; the host's are not.
    exec_ok(
        &docker,
        "sys-a",
        "echo 0 > /proc/sys/net/ipv4/ip_forward && echo 1 > /proc/sys/net/ipv4/ip_forward",
    );
    let refused = exec(
        &docker,
        "sys-a",
        "echo 0 > /proc/sys/kernel/panic || echo 3 > /proc/sys/vm/drop_caches",
    );
    assert!(!refused.status.success(), "a host sysctl was written");

    // dockerd inside: overlay2 on the container's own /var/lib/docker, an inner container.
    for name in ["sys-a", "sys-b"] {
        assert_eq!(
            exec_ok(&docker, name, "docker info -f '{{.Driver}}'"),
            "overlay2",
            "{name}"
        );
        exec_ok(&docker, name, "docker import /bb.tar bb >/dev/null");
    }
    // The limited container's /proc/meminfo is lxcfs's: its dockerd and free see 1 GiB.
    assert_eq!(
        exec_ok(
            &docker,
            "sys-b",
            "docker info -f '{{.MemTotal}}'; free -b | awk '/^Mem:/ {print $2}'"
        ),
        format!("{0}\n{0}", 1u64 << 30)
    );
    // And its uptime (systemd-analyze's clock) is its own, counted from its init's start.
    let uptime: f64 = exec_ok(&docker, "sys-b", "cut -d' ' -f1 /proc/uptime")
        .parse()
        .unwrap();
    assert!(uptime <= started.elapsed().as_secs_f64() + 1.0, "{uptime}");
    assert!(exec_ok(&docker, "sys-b", "systemd-analyze").starts_with("Startup finished in"));
    let started = Instant::now();
    assert_eq!(
        exec_ok(&docker, "sys-a", "docker run --rm bb echo inner-ok"),
        "inner-ok"
    );
    eprintln!("inner docker run --rm: {:?}", started.elapsed());

    // Two layers: the inner container lives in the outer container's range (its root is the
    // outer range's first ID, not host root) and in namespaces of its own below the outer's.
    let outer_pid = inspect(&docker, "sys-a", "{{.State.Pid}}");
    let outer_map = host_uid_map(&outer_pid);
    let inner_map = exec_ok(
        &docker,
        "sys-a",
        "docker run --rm bb cat /proc/self/uid_map | tr -s ' ' | sed 's/^ //'",
    );
    assert_eq!(inner_map, outer_map);
    assert!(!outer_map.starts_with("0 0 "), "{outer_map}");
    let inner_pid_ns = exec_ok(
        &docker,
        "sys-a",
        "docker run --rm bb sh -c 'for n in pid net mnt; do readlink /proc/self/ns/$n; done'",
    );
    let outer_pid_ns = exec_ok(
        &docker,
        "sys-a",
        "for n in pid net mnt; do readlink /proc/1/ns/$n; done",
    );
    for (inner, outer) in inner_pid_ns.lines().zip(outer_pid_ns.lines()) {
        assert_ne!(
            inner, outer,
            "the inner container shares the outer's {outer}"
        );
    }

    // Bridge networking inside: an inner container reaches another over the inner docker0.
    exec_ok(
        &docker,
        "sys-a",
        "docker run -d --name web bb sh -c 'echo served > /index.html; exec httpd -f -p 8080 -h /'",
    );
    let ip = exec_ok(
        &docker,
        "sys-a",
        "docker inspect -f '{{.NetworkSettings.IPAddress}}' web",
    );
    assert_eq!(
        exec_ok(
            &docker,
            "sys-a",
            // The server may still be starting: a few tries, one inner container.
            &format!(
                "docker run --rm bb sh -c 'for i in $(seq 50); do \
                 wget -q -O - http://{ip}:8080/index.html && exit; sleep 0.1; done; exit 1'"
            ),
        ),
        "served"
    );
    assert!(exec_ok(&docker, "sys-a", "iptables -t nat -S").contains("DOCKER"));

    // An inner --privileged container is still confined by the outer user namespace.
    let probe = exec_ok(
        &docker,
        "sys-a",
        "docker run --rm --privileged bb sh -c '\
            (echo 0 > /proc/sys/kernel/panic) 2>/dev/null && echo panic=written || echo panic=denied; \
            test -e /proc/sys/kernel/sysrq && { (echo 1 > /proc/sys/kernel/sysrq) 2>/dev/null && echo sysrq=written || echo sysrq=denied; }; \
            true'",
    );
    assert!(
        probe.contains("panic=denied") && !probe.contains("sysrq=written"),
        "{probe}"
    );
    let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap();
    let reboot = exec(
        &docker,
        "sys-a",
        "docker run --rm --privileged bb reboot -f",
    );
    // reboot(2) in a pid namespace only ends that namespace's init (by SIGHUP).
    assert_eq!(reboot.status.code(), Some(129), "{}", text(&reboot));
    assert_eq!(
        std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap(),
        boot_id
    );
    assert_eq!(
        exec_ok(&docker, "sys-a", "systemctl is-system-running"),
        "running"
    );

    // The two system containers, each with its own dockerd, do not see each other.
    assert_eq!(
        exec_ok(&docker, "sys-b", "docker ps -a --format '{{.Names}}'"),
        ""
    );
    assert_eq!(
        exec_ok(&docker, "sys-a", "docker ps --format '{{.Names}}'"),
        "web"
    );
    assert!(!exec_ok(&docker, "sys-b", "ps -e -o args").contains("httpd"));
    let map_b = host_uid_map(&inspect(&docker, "sys-b", "{{.State.Pid}}"));
    let base = |map: &str| -> u64 { map.split(' ').nth(1).unwrap().parse().unwrap() };
    assert!(
        base(&outer_map).abs_diff(base(&map_b)) >= 65536,
        "{outer_map} / {map_b}"
    );

    // The container's range and its /var/lib/docker directory on the host, in that range.
    let id = inspect(&docker, "sys-a", "{{.Id}}");
    assert_eq!(ranges_named(&h, &id), 1);
    let data = std::fs::read_dir("/var/lib/burrow")
        .unwrap()
        .flatten()
        .map(|e| e.path().join("docker"))
        .find(|p| p.parent().unwrap().to_string_lossy().ends_with(&id))
        .expect("the container's data directory under /var/lib/burrow");
    let owner = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(&data).unwrap());
    assert_eq!(owner as u64, base(&outer_map), "{}", data.display());
    assert!(
        std::fs::read_dir(data.join("overlay2")).unwrap().count() > 1,
        "the inner dockerd's layers are not in {}",
        data.display()
    );

    // (An inner container running at shutdown delays it by the inner dockerd's own stop timeout.)
    exec_ok(&docker, "sys-a", "docker rm -f web");
    // docker stop: SIGTERM becomes SIGRTMIN+3 and systemd halts cleanly (a halt ends a pid
    // namespace's init by SIGINT: 130; the 10 s timeout's SIGKILL would give 137).
    let started = Instant::now();
    docker.ok(&["stop", "sys-a"]);
    eprintln!("docker stop of systemd: {:?}", started.elapsed());
    assert_eq!(inspect(&docker, "sys-a", "{{.State.ExitCode}}"), "130");

    // Kept across stop and start (docs/runtime.md): the range, and the inner Docker's
    // images in the container's /var/lib/docker.
    assert!(data.exists(), "{} went at docker stop", data.display());
    docker.ok(&["start", "sys-a"]);
    assert_eq!(boot_state(&docker, "sys-a"), "running");
    let restarted_map = host_uid_map(&inspect(&docker, "sys-a", "{{.State.Pid}}"));
    assert_eq!(restarted_map, outer_map, "docker start gave another range");
    assert_eq!(
        exec_ok(&docker, "sys-a", "docker run --rm bb echo image-kept"),
        "image-kept",
        "the inner image went at docker stop"
    );
    docker.ok(&["stop", "sys-a"]);

    // Removing the container (Docker tells the runtime nothing) and gc remove the directory
    // and free the range.
    let in_use = h.ranges_in_use();
    docker.ok(&["rm", "sys-a"]);
    assert!(docker.gc().contains(&id), "gc did not free {id}");
    assert!(!data.exists(), "{} is left behind", data.display());
    assert_eq!(ranges_named(&h, &id), 0);
    // Forgotten, the range drains while the stopped container's namespace finishes exiting.
    burrow_tests::wait_for("the removed container's range freed", || {
        h.ranges_in_use() == in_use - 1
    });
    // The other one is untouched.
    assert_eq!(
        exec_ok(&docker, "sys-b", "docker run --rm bb echo still-ok"),
        "still-ok"
    );
}

/// A stock Debian 13 image (systemd 257) boots to "running" too, on this host's hybrid cgroup
/// view (systemd 257 runs on it, tainted `cgroupsv1`), and its dockerd runs a container.
#[test]
fn stock_debian_13_systemd_boots_to_running() {
    let (_turn, _h, docker, volume) =
        start_with_image(&debian_trixie_system_rootfs(), "burrow-trixie");
    docker.ok(&[
        "run",
        "-d",
        "--runtime=burrow",
        "--name",
        "trixie",
        "-v",
        &volume,
        "burrow-trixie",
        "/sbin/init",
    ]);
    assert_boots_to_running(&docker, "trixie");
    assert!(exec_ok(&docker, "trixie", "systemctl --version").starts_with("systemd 257"));
    exec_ok(&docker, "trixie", "docker import /bb.tar bb >/dev/null");
    assert_eq!(
        exec_ok(&docker, "trixie", "docker run --rm bb echo inner-ok"),
        "inner-ok"
    );
}
