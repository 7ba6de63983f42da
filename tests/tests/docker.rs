//! `docker run --runtime=burrow` against a dockerd (and its containerd and shim) started by the
//! test, with the helpers on the harness's private bus. One test, one dockerd: dockerds share
//! the host's bridge and iptables. Run as root (`make test`).

use std::path::Path;

use burrow_tests::{busybox_rootfs, wait_for, Docker, Harness, HarnessOptions};

fn base_of(uid_map: &str) -> u64 {
    let fields: Vec<u64> = uid_map
        .split_whitespace()
        .map(|f| f.parse().unwrap())
        .collect();
    assert_eq!((fields[0], fields[2]), (0, 65536), "{uid_map}");
    assert!(fields[1] > 0);
    fields[1]
}

/// One test dockerd at a time: two would claim the same bridge and containerd namespace.
static ONE_DOCKERD: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_dockerd() -> std::sync::MutexGuard<'static, ()> {
    ONE_DOCKERD.lock().unwrap_or_else(|e| e.into_inner())
}

#[test]
fn docker_runs_system_containers() {
    let _one = one_dockerd();
    let h = Harness::start(HarnessOptions::default());
    let docker = Docker::start(&h);
    docker.import(&busybox_rootfs(&h.dir.join("bb"), None), "bb");
    let run = |args: &[&str]| {
        let mut all = vec!["run", "--runtime=burrow"];
        all.extend_from_slice(args);
        docker.run(&all)
    };

    // User namespace with an exclusive range, full capabilities inside, masks that hold.
    let probe = "cat /proc/self/uid_map; grep CapEff /proc/self/status; \
        (echo 5 > /proc/sys/kernel/panic) 2>/dev/null && echo panic=written || echo panic=denied; \
        test -e /proc/sysrq-trigger && { (echo h > /proc/sysrq-trigger) 2>/dev/null && echo trigger=written || echo trigger=denied; }; \
        echo dev=$(ls /dev | tr '\\n' ' ')";
    let out = run(&["--rm", "bb", "sh", "-c", probe]);
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        docker.log_tail()
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    base_of(text.lines().next().unwrap());
    let last_cap: u32 = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(
        text.contains(&format!("CapEff:\t{:016x}", (1u64 << (last_cap + 1)) - 1)),
        "{text}"
    );
    assert!(
        text.contains("panic=denied") && !text.contains("trigger=written"),
        "{text}"
    );
    assert!(
        text.contains(
            "dev=fd full mqueue null ptmx pts random shm stderr stdin stdout tty urandom zero"
        ),
        "{text}"
    );

    // A terminal: the pty master goes to containerd's console socket.
    let out = run(&[
        "--rm",
        "-t",
        "bb",
        "sh",
        "-c",
        "tty; test -c /dev/console && echo console=ok; ls /dev | tr '\\n' ' '",
    ]);
    let text = String::from_utf8_lossy(&out.stdout).replace('\r', "");
    assert!(text.starts_with("/dev/pts/0\n"), "{text}");
    assert!(text.contains("console=ok"), "{text}");
    assert!(
        text.contains(
            "console fd full mqueue null ptmx pts random shm stderr stdin stdout tty urandom zero"
        ),
        "{text}"
    );
    // Interactive: stdin reaches the container, without and with a terminal (`-it` needs one
    // on the client side too: script(1) provides it).
    let interactive = |docker_args: &str, input: &str| -> String {
        let command = format!("docker {docker_args} sh -c 'read line; echo got:$line'");
        let mut child = docker_shell(&docker, &command);
        std::io::Write::write_all(&mut child.stdin.take().unwrap(), input.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        String::from_utf8_lossy(&out.stdout).replace('\r', "")
    };
    let text = interactive("run -i --rm --runtime=burrow bb", "plain\n");
    assert_eq!(text.trim(), "got:plain", "{text}");
    let text = interactive("run -it --rm --runtime=burrow bb", "on-a-tty\n");
    assert!(text.contains("got:on-a-tty"), "{text}");
    // --rm leaves no mount on the host.
    let before = burrow_tests::host_mounts();
    assert!(run(&["--rm", "bb", "true"]).status.success());
    assert_eq!(
        burrow_tests::host_mounts(),
        before,
        "docker run --rm left a mount"
    );
    // Exit codes propagate.
    assert_eq!(
        run(&["--rm", "bb", "sh", "-c", "exit 3"]).status.code(),
        Some(3)
    );

    // Two at once: disjoint ranges; exec, exec -t, exit codes of exec, top, logs, pause.
    let stoppable = "trap 'exit 0' TERM; echo started; while true; do sleep 0.1; done";
    for name in ["one", "two"] {
        docker.ok(&[
            "run",
            "-d",
            "--runtime=burrow",
            "--name",
            name,
            "bb",
            "sh",
            "-c",
            stoppable,
        ]);
    }
    let bases: Vec<u64> = ["one", "two"]
        .iter()
        .map(|n| base_of(&docker.ok(&["exec", n, "cat", "/proc/self/uid_map"])))
        .collect();
    assert!(
        bases[0] + 65536 <= bases[1] || bases[1] + 65536 <= bases[0],
        "{bases:?}"
    );
    assert_eq!(
        docker
            .run(&["exec", "one", "sh", "-c", "exit 4"])
            .status
            .code(),
        Some(4)
    );
    assert_eq!(
        docker.ok(&["exec", "-t", "one", "tty"]).trim(),
        "/dev/pts/0"
    );
    let text = interactive("exec -i one", "into-exec\n");
    assert_eq!(text.trim(), "got:into-exec", "{text}");
    let text = interactive("exec -it one", "into-exec-tty\n");
    assert!(text.contains("got:into-exec-tty"), "{text}");
    assert!(
        docker.ok(&["top", "one"]).contains("sleep")
            || docker.ok(&["top", "one"]).contains("sh -c")
    );
    wait_for("logs", || docker.ok(&["logs", "one"]).contains("started"));
    docker.ok(&["pause", "one"]);
    assert_eq!(
        docker
            .ok(&["inspect", "-f", "{{.State.Status}}", "one"])
            .trim(),
        "paused"
    );
    docker.ok(&["unpause", "one"]);
    // update: the new memory limit lands in the container's cgroup.
    docker.ok(&["update", "--memory", "64m", "--memory-swap", "128m", "one"]);
    // Wherever the container's init is in the memory hierarchy (Docker's cgroup parent).
    let pid = docker
        .ok(&["inspect", "-f", "{{.State.Pid}}", "one"])
        .trim()
        .to_string();
    let membership = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let memory_cgroup = membership
        .lines()
        .find_map(|l| l.split_once(":memory:").map(|(_, path)| path.to_string()))
        .expect("no memory cgroup");
    assert!(memory_cgroup.starts_with("/docker/"), "{memory_cgroup}");
    let limit = Path::new("/sys/fs/cgroup/memory")
        .join(memory_cgroup.trim_start_matches('/'))
        .join("memory.limit_in_bytes");
    assert_eq!(std::fs::read_to_string(&limit).unwrap().trim(), "67108864");
    // stop delivers SIGTERM (the trap exits 0; a SIGKILL after the timeout would give 137).
    docker.ok(&["stop", "one"]);
    assert_eq!(
        docker
            .ok(&["inspect", "-f", "{{.State.ExitCode}}", "one"])
            .trim(),
        "0"
    );
    docker.ok(&["restart", "one"]);
    assert_eq!(
        docker
            .ok(&["inspect", "-f", "{{.State.Status}}", "one"])
            .trim(),
        "running"
    );
    docker.ok(&["kill", "one"]);
    wait_for("killed", || {
        docker
            .ok(&["inspect", "-f", "{{.State.Status}}", "one"])
            .trim()
            == "exited"
    });
    assert_eq!(
        docker
            .ok(&["inspect", "-f", "{{.State.ExitCode}}", "one"])
            .trim(),
        "137"
    );
    docker.ok(&["rm", "-f", "one", "two"]);

    // Bridge networking: the container reaches its gateway.
    let out = run(&[
        "--rm",
        "bb",
        "sh",
        "-c",
        "ping -c1 -W3 $(ip route | awk '/default/ {print $3}')",
    ]);
    assert!(
        out.status.success(),
        "ping gateway: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // A volume works both ways, owned by root on the host when root wrote it inside.
    let vol = h.dir.join("vol");
    std::fs::create_dir_all(&vol).unwrap();
    std::fs::write(vol.join("from-host"), "host\n").unwrap();
    let out = run(&[
        "--rm",
        "-v",
        &format!("{}:/data", vol.display()),
        "bb",
        "sh",
        "-c",
        "cat /data/from-host; echo inside > /data/from-inside",
    ]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "host\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(vol.join("from-inside")).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (0, 0));

    // Refused outright, with the reason shown to the user.
    for (flag, reason) in [
        ("--privileged", "--privileged is not supported"),
        ("--net=host", "--net=host"),
    ] {
        let out = run(&["--rm", flag, "bb", "true"]);
        assert!(!out.status.success(), "{flag} was accepted");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(reason),
            "{flag}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // containerd directly: ctr run --runc-binary, through the same runc v2 shim.
    let tar = h.dir.join("bb.tar");
    docker.ok(&["save", "bb", "-o", &tar.display().to_string()]);
    let out = docker.ctr(&["images", "import", &tar.display().to_string()]);
    assert!(
        out.status.success(),
        "ctr import: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let wrapper = docker.runtime_wrapper().display().to_string();
    let ctr_run = |id: &str, script: &str| {
        docker.ctr(&[
            "run",
            "--rm",
            "--runc-binary",
            &wrapper,
            "docker.io/library/bb:latest",
            id,
            "sh",
            "-c",
            script,
        ])
    };
    let out = ctr_run(
        "ctr-probe",
        "cat /proc/self/uid_map; grep CapEff /proc/self/status; \
         (echo 5 > /proc/sys/kernel/panic) 2>/dev/null && echo panic=written || echo panic=denied; \
         echo dev=$(ls /dev | tr '\\n' ' ')",
    );
    assert!(
        out.status.success(),
        "ctr run: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    base_of(text.lines().next().unwrap());
    assert!(
        text.contains(
            "dev=fd full mqueue null ptmx pts random shm stderr stdin stdout tty urandom zero"
        ),
        "{text}"
    );
    assert!(
        text.contains(&format!("CapEff:\t{:016x}", (1u64 << (last_cap + 1)) - 1))
            && text.contains("panic=denied"),
        "{text}"
    );
    assert_eq!(ctr_run("ctr-exit", "exit 3").status.code(), Some(3));
    // A terminal through containerd's console handling (script(1) gives ctr one).
    let tty_run = format!(
        "ctr -a {} -n burrow-ctr run --rm -t --runc-binary {wrapper} \
         docker.io/library/bb:latest ctr-tty sh -c 'tty; test -c /dev/console && echo console=ok'",
        docker.dir.join("x/containerd/containerd.sock").display()
    );
    let out = std::process::Command::new("script")
        .args(["-qec", &tty_run, "/dev/null"])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).replace('\r', "");
    assert!(
        text.contains("/dev/pts/0") && text.contains("console=ok"),
        "{text}"
    );
    // A long-running task through the shim: exec, pause/resume, kill.
    let ctr_ok = |args: &[&str]| -> String {
        let out = docker.ctr(args);
        assert!(
            out.status.success(),
            "ctr {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    ctr_ok(&[
        "run",
        "-d",
        "--runc-binary",
        &wrapper,
        "docker.io/library/bb:latest",
        "ctr-long",
        "sleep",
        "1000",
    ]);
    let exec_map = ctr_ok(&[
        "task",
        "exec",
        "--exec-id",
        "e1",
        "ctr-long",
        "cat",
        "/proc/self/uid_map",
    ]);
    let long_base = base_of(exec_map.trim());
    // A second task beside it: its own range, and a bind mount both ways.
    let shared = docker.dir.join("ctr-shared");
    std::fs::create_dir_all(&shared).unwrap();
    std::fs::write(shared.join("from-host"), "host-said\n").unwrap();
    let out = docker.ctr(&[
        "run",
        "--rm",
        "--runc-binary",
        &wrapper,
        "--mount",
        &format!(
            "type=bind,src={},dst=/data,options=rbind:rw",
            shared.display()
        ),
        "docker.io/library/bb:latest",
        "ctr-bind",
        "sh",
        "-c",
        "cat /proc/self/uid_map; cat /data/from-host; echo ctr-said > /data/from-ctr",
    ]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{text}");
    let bind_base = base_of(text.lines().next().unwrap());
    assert!(
        bind_base + 65536 <= long_base || long_base + 65536 <= bind_base,
        "ranges overlap: {bind_base} {long_base}"
    );
    assert!(text.contains("host-said"), "{text}");
    let written = shared.join("from-ctr");
    assert_eq!(std::fs::read_to_string(&written).unwrap(), "ctr-said\n");
    let meta = std::fs::metadata(&written).unwrap();
    assert_eq!(
        (meta.uid(), meta.gid()),
        (0, 0),
        "stored as the container's root"
    );
    let status = |id: &str| -> String {
        ctr_ok(&["task", "ls"])
            .lines()
            .find(|l| l.starts_with(id))
            .unwrap_or_default()
            .to_string()
    };
    ctr_ok(&["task", "pause", "ctr-long"]);
    assert!(
        status("ctr-long").contains("PAUSED"),
        "{}",
        status("ctr-long")
    );
    ctr_ok(&["task", "resume", "ctr-long"]);
    assert!(
        status("ctr-long").contains("RUNNING"),
        "{}",
        status("ctr-long")
    );
    ctr_ok(&["task", "kill", "-s", "SIGKILL", "ctr-long"]);
    wait_for("ctr task stopped", || {
        status("ctr-long").contains("STOPPED")
    });
    ctr_ok(&["task", "rm", "ctr-long"]);
    ctr_ok(&["container", "rm", "ctr-long"]);

    container_modes_share_the_first_containers_range(&docker);
    stop_and_start_keep_the_range_and_files_until_rm(&h, &docker);

    // A non-root process user (`--user`) starts, with Docker's capability sets as runc gives
    // them (its default bounding set), where root keeps its namespace's full set.
    let out = run(&[
        "--rm",
        "--user",
        "1000:1000",
        "bb",
        "sh",
        "-c",
        "id -u; grep CapBnd /proc/self/status",
    ]);
    assert!(out.status.success(), "{}", burrow_tests::all_output(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "1000\nCapBnd:\t00000000a80425fb\n"
    );

    // --rm and rm leave no state, no cgroup and no range behind (once gc has run: Docker
    // removes a stopped container without telling the runtime).
    docker.gc();
    wait_for("runtime state gone", || {
        std::fs::read_dir(docker.runtime_root())
            .map(|d| d.count() == 0)
            .unwrap_or(true)
    });
    for hierarchy in [
        "memory", "pids", "cpu", "freezer", "devices", "systemd", "unified",
    ] {
        let dir = Path::new("/sys/fs/cgroup")
            .join(hierarchy)
            .join(memory_cgroup.trim_start_matches('/'));
        assert!(!dir.exists(), "cgroup {} left behind", dir.display());
    }
    wait_for("ranges released", || h.ranges_in_use() == 0);
}

/// The slots (`/var/lib/burrow/<range name>` with an `anchor.json`) of ranges whose names end
/// with `suffix`.
fn kept_slots(suffix: &str) -> Vec<String> {
    burrow_tests::data_slots(suffix)
        .into_iter()
        .filter(|n| {
            Path::new("/var/lib/burrow")
                .join(n)
                .join("anchor.json")
                .exists()
        })
        .collect()
}

/// `docker stop` / `docker start` and `docker restart` keep the container's range (a file of
/// a non-root user inside stays that user's) until `docker rm`; then gc frees the range and
/// the slot, also when idmapd was not running when Docker removed the container; and so does
/// the next create, for a container removed without any gc.
fn stop_and_start_keep_the_range_and_files_until_rm(h: &Harness, docker: &burrow_tests::Docker) {
    let script = "test -e /owned || { touch /owned; chown 1000:1000 /owned; }; \
        trap 'exit 0' TERM; while true; do sleep 0.1; done";
    let id = docker.ok(&[
        "run",
        "-d",
        "--runtime=burrow",
        "--name",
        "keeper",
        "bb",
        "sh",
        "-c",
        script,
    ]);
    let id = id.trim();
    let view = || {
        docker.ok(&[
            "exec",
            "keeper",
            "sh",
            "-c",
            "cat /proc/self/uid_map; stat -c %u:%g /owned",
        ])
    };
    let first = view();
    base_of(first.lines().next().unwrap());
    assert!(first.ends_with("1000:1000\n"), "{first}");
    assert_eq!(kept_slots(id).len(), 1, "no slot kept for {id}");
    // gc never frees a running container's slot: not at a create beside it, nor when its
    // anchor looks gone (its record made to name a directory that does not exist).
    docker.ok(&["run", "--rm", "--runtime=burrow", "bb", "true"]);
    let kept_name = kept_slots(id)[0].clone();
    let slot = Path::new("/var/lib/burrow").join(&kept_name);
    let record = std::fs::read_to_string(slot.join("anchor.json")).unwrap();
    let mut lost: serde_json::Value = serde_json::from_str(&record).unwrap();
    lost["anchor"]["path"] = "/nonexistent-burrow-anchor".into();
    std::fs::write(slot.join("anchor.json"), lost.to_string()).unwrap();
    let freed = docker.gc();
    std::fs::write(slot.join("anchor.json"), &record).unwrap();
    assert!(!freed.contains(id), "gc freed a running container: {freed}");
    assert_eq!(kept_slots(id).len(), 1);
    assert_eq!(view(), first);
    let in_use = h.ranges_in_use();
    docker.ok(&["stop", "keeper"]);
    // By name: the `--rm` container's range above may still be draining and leave the count.
    assert_eq!(
        h.range_state(&kept_name).as_deref(),
        Some("parked"),
        "the stopped container's range is not parked"
    );
    docker.ok(&["start", "keeper"]);
    assert_eq!(
        view(),
        first,
        "docker start changed the range or the file's owner"
    );
    docker.ok(&["restart", "keeper"]);
    assert_eq!(
        view(),
        first,
        "docker restart changed the range or the file's owner"
    );

    docker.ok(&["stop", "keeper"]);
    h.kill_idmapd();
    docker.ok(&["rm", "keeper"]);
    assert_eq!(
        kept_slots(id).len(),
        1,
        "docker rm told the runtime something"
    );
    let freed = docker.gc();
    let slot = Path::new("/var/lib/burrow").join(kept_slots(id).concat());
    let record = std::fs::read_to_string(slot.join("anchor.json")).unwrap_or_default();
    assert!(
        freed.contains(id),
        "gc freed nothing: {freed}; {} holds {record}; runtime root {} exists: {}",
        slot.display(),
        docker.runtime_root().display(),
        docker.runtime_root().exists()
    );
    assert_eq!(kept_slots(id), Vec::<String>::new());
    // Its range, by name: other containers of this test (a `--rm` one) may be freed by the
    // same gc, so the count alone says nothing.
    wait_for("the removed container's range freed", || {
        !h.persisted_records()
            .iter()
            .any(|r| r.to_string().contains(&kept_name))
    });
    assert!(h.ranges_in_use() < in_use);

    let gone = docker.ok(&["run", "-d", "--runtime=burrow", "bb", "true"]);
    let gone = gone.trim();
    wait_for("the container exited", || {
        docker
            .ok(&["inspect", "-f", "{{.State.Running}}", gone])
            .trim()
            == "false"
    });
    docker.ok(&["rm", gone]);
    assert_eq!(kept_slots(gone).len(), 1);
    docker.ok(&["run", "--rm", "--runtime=burrow", "bb", "true"]);
    assert_eq!(
        kept_slots(gone),
        Vec::<String>::new(),
        "create did not collect"
    );
}

/// `--network`, `--ipc` and `--pid container:A`: B joins A's user namespace and range, then
/// those namespaces; it reaches A's server on 127.0.0.1, sees A's processes and A's IPC. (A's
/// httpd serves each connection from a child of its own, which may still be exiting, or wait
/// to be reaped, right after B's request: B counts A's httpd processes until that child is
/// gone, for up to 5 s, and there must then be exactly one.)
fn container_modes_share_the_first_containers_range(docker: &burrow_tests::Docker) {
    let server = "mkdir -p /www && echo served-by-a > /www/index.html && httpd -p 8080 -h /www \
        && exec sleep 1000";
    let a = docker.ok(&[
        "run",
        "-d",
        "--runtime=burrow",
        "--ipc",
        "shareable",
        "--name",
        "pod-a",
        "bb",
        "sh",
        "-c",
        server,
    ]);
    let in_a = |script: &str| docker.ok(&["exec", "pod-a", "sh", "-c", script]);
    let a_view =
        in_a("cat /proc/self/uid_map; readlink /proc/self/ns/ipc; readlink /proc/self/ns/net");
    let probe = "cat /proc/self/uid_map; readlink /proc/self/ns/ipc; readlink /proc/self/ns/net; \
        for i in $(seq 50); do wget -q -O- http://127.0.0.1:8080/index.html && break; sleep 0.1; done; \
        for i in $(seq 50); do n=$(ps -o comm | grep -c httpd); [ $n = 1 ] && break; sleep 0.1; done; \
        echo $n";
    let b = docker.ok(&[
        "run",
        "--rm",
        "--runtime=burrow",
        "--network",
        "container:pod-a",
        "--ipc",
        "container:pod-a",
        "--pid",
        "container:pod-a",
        "bb",
        "sh",
        "-c",
        probe,
    ]);
    let lines: Vec<&str> = b.lines().collect();
    let a_lines: Vec<&str> = a_view.lines().map(str::trim).collect();
    let b_lines: Vec<&str> = lines[..3].iter().map(|l| l.trim()).collect();
    assert_eq!(b_lines, a_lines, "one range, one ipc and net namespace");
    assert_eq!(
        lines[3..],
        ["served-by-a", "1"],
        "A's server, reached and seen: {b}"
    );
    docker.ok(&["rm", "-f", a.trim()]);
}

/// `command` (a docker command line for `docker`'s daemon) in a shell, under script(1) when it
/// asks for a terminal, with stdin and stdout piped.
fn docker_shell(docker: &burrow_tests::Docker, command: &str) -> std::process::Child {
    let mut cmd = if command.contains(" -it ") {
        let mut cmd = std::process::Command::new("script");
        cmd.args(["-qec", command, "/dev/null"]);
        cmd
    } else {
        let mut cmd = std::process::Command::new("sh");
        cmd.args(["-c", command]);
        cmd
    };
    cmd.env("DOCKER_HOST", docker.host())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

/// `docker run --device`: a character device of devd's allowlist is in the container's /dev
/// and its cgroup lets the container open it; one off the allowlist, a block device and a node
/// that is not the host's are refused, each with its reason, and leave no container running.
#[test]
fn docker_devices_come_from_devds_allowlist() {
    let _one = one_dockerd();
    let allowlist =
        std::env::temp_dir().join(format!("burrow-docker-allow-{}", std::process::id()));
    std::fs::write(&allowlist, "fuse\n").unwrap();
    let h = Harness::start(HarnessOptions {
        devd_args: vec!["--allowlist".into(), allowlist.display().to_string()],
        ..Default::default()
    });
    let docker = Docker::start(&h);
    docker.import(&busybox_rootfs(&h.dir.join("bb"), None), "bb");
    let run = |device: &str, script: &str| {
        docker.run(&[
            "run",
            "--rm",
            "--runtime=burrow",
            "--device",
            device,
            "bb",
            "sh",
            "-c",
            script,
        ])
    };

    let out = run(
        "/dev/fuse",
        "ls -l /dev/fuse; exec 3<>/dev/fuse && echo opened; exec 4<>/dev/null && echo null",
    );
    let text = burrow_tests::all_output(&out);
    assert!(out.status.success(), "{text}\n{}", docker.log_tail());
    assert!(text.starts_with("crw") && text.contains("10,"), "{text}");
    assert!(text.contains("opened\nnull"), "{text}");

    for (device, says) in [
        ("/dev/net/tun", "not in the admin's allowlist"),
        ("/dev/vda", "a block device"),
        ("/dev/loop0", "a block device"),
    ] {
        if !std::path::Path::new(device).exists() {
            continue;
        }
        let out = run(device, "true");
        let text = burrow_tests::all_output(&out);
        assert!(!out.status.success(), "{device} was given: {text}");
        assert!(text.contains(says), "{device}: expected {says:?} in {text}");
    }
    let ps = docker.run(&["ps", "-aq"]);
    assert_eq!(
        String::from_utf8_lossy(&ps.stdout).trim(),
        "",
        "containers left"
    );
    let _ = std::fs::remove_file(&allowlist);
}

/// Docker's resource flags reach the container's cgroup (read from inside, where the cgroup
/// namespace shows the container's own), and `docker update` changes them.
#[test]
fn docker_resource_flags_and_update_reach_the_cgroup() {
    let _one = one_dockerd();
    let h = Harness::start(HarnessOptions::default());
    let docker = Docker::start(&h);
    docker.import(&busybox_rootfs(&h.dir.join("bb"), None), "bb");
    let out = docker.run(&[
        "run",
        "-d",
        "--runtime=burrow",
        "--name",
        "limited",
        "--cpuset-cpus",
        "0",
        "--memory",
        "64m",
        "--memory-swap",
        "128m",
        "--memory-reservation",
        "32m",
        "--device-read-bps",
        "/dev/vda:1mb",
        "bb",
        "sleep",
        "1000",
    ]);
    assert!(
        out.status.success(),
        "{}\n{}",
        burrow_tests::all_output(&out),
        docker.log_tail()
    );
    let read = || {
        let out = docker.run(&[
            "exec",
            "limited",
            "sh",
            "-c",
            "cd /sys/fs/cgroup; cat cpuset/cpuset.cpus memory/memory.limit_in_bytes \
             memory/memory.memsw.limit_in_bytes memory/memory.soft_limit_in_bytes \
             blkio/blkio.throttle.read_bps_device",
        ]);
        assert!(out.status.success(), "{}", burrow_tests::all_output(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(
        read(),
        format!(
            "0\n{}\n{}\n{}\n254:0 1048576\n",
            64 << 20,
            128 << 20,
            32 << 20
        )
    );
    let out = docker.run(&[
        "update",
        "--cpuset-cpus",
        "1",
        "--memory-reservation",
        "16m",
        "limited",
    ]);
    assert!(out.status.success(), "{}", burrow_tests::all_output(&out));
    assert_eq!(
        read(),
        format!(
            "1\n{}\n{}\n{}\n254:0 1048576\n",
            64 << 20,
            128 << 20,
            16 << 20
        )
    );
    docker.ok(&["rm", "-f", "limited"]);
}

/// Issue 14, item 1: with lxcfs on the host (the harness starts it), the container's /proc
/// tells its own limits: meminfo its memory limit, `nproc`, the CPU list and cpuinfo its
/// cpuset, uptime its own start. (busybox's `free` asks sysinfo(2), which lxcfs cannot answer,
/// so it still shows the host's memory; procps's `free` reads /proc/meminfo: system.rs.)
#[test]
fn docker_proc_tells_the_containers_limits() {
    let _one = one_dockerd();
    let h = Harness::start(HarnessOptions::default());
    let docker = Docker::start(&h);
    docker.import(&busybox_rootfs(&h.dir.join("bb"), None), "bb");
    // busybox's free and uptime ask sysinfo(2), answered by the supervisor, not lxcfs.
    let probe = "awk '/^MemTotal:/ {print $2 / 1024}' /proc/meminfo; nproc; cat /sys/devices/system/cpu/online; \
        grep -c ^processor /proc/cpuinfo; cut -d. -f1 /proc/uptime; \
        free -m | awk '/^Mem:/ {print $2}'; uptime | grep -c 'up 0 min'";
    let out = docker.run(&[
        "run",
        "--rm",
        "--runtime=burrow",
        "-m",
        "256m",
        "--cpuset-cpus",
        "0",
        "bb",
        "sh",
        "-c",
        probe,
    ]);
    assert!(
        out.status.success(),
        "{}\n{}",
        burrow_tests::all_output(&out),
        docker.log_tail()
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[..4], ["256", "1", "0", "1"], "{text}");
    let uptime: u64 = lines[4].parse().unwrap();
    assert!(uptime < 10, "the container's uptime is {uptime} s: {text}");
    assert_eq!(lines[5..], ["256", "1"], "busybox free and uptime: {text}");
    sysinfo_in_exec_and_nested_processes(&docker);
}

/// `docker exec`'s processes, and a process in a user and pid namespace of its own inside the
/// container, get the container's sysinfo too.
fn sysinfo_in_exec_and_nested_processes(docker: &Docker) {
    let id = docker.ok(&[
        "run",
        "-d",
        "--runtime=burrow",
        "-m",
        "128m",
        "bb",
        "sleep",
        "1000",
    ]);
    let id = id.trim();
    let free = "free -m | awk '/^Mem:/ {print $2}'";
    let exec = |script: &str| docker.ok(&["exec", id, "sh", "-c", script]);
    assert_eq!(exec(free).trim(), "128", "docker exec's free");
    // Its /proc stays the container's: a fresh procfs would show the host's /proc/meminfo,
    // which busybox's free reads beside sysinfo.
    let nested = "unshare -U -r -p -f free -m | awk '/^Mem:/ {print $2}'";
    assert_eq!(exec(nested).trim(), "128", "a nested namespace's free");
    docker.ok(&["rm", "-f", id]);
}
