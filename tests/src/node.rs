//! A disposable node that boots systemd, as real nodes do: the cached Debian node image
//! (`debian_node_rootfs`: the system image with polkitd) run by a test [`Docker`] with runc,
//! in the setup that works on this machine (`--privileged` fails here: the bounding set lacks
//! CAP_SYS_RESOURCE). Its systemd activates Burrow's helpers as their units over its own system
//! bus. Used by
//! `systemd_node.rs` (the helpers under their units) and `node_installer.rs` (scripts/burrow-node).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::{debian_node_rootfs, Docker};

/// Burrow's helper units.
pub const UNITS: [&str; 3] = ["burrow-idmapd", "burrow-devd", "burrow-mountd"];

/// A command's stdout, trimmed.
pub fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// `make install-files` of the debug build into a fresh DESTDIR: what `make install` installs.
pub fn install_files(destdir: &Path) {
    crate::run(
        Command::new("make")
            .arg("-C")
            .arg(crate::workspace_root())
            .args(["install-files", "PROFILE=dev"])
            .arg(format!("DESTDIR={}", destdir.display())),
    );
}

/// Every directory of the host's cgroup hierarchies.
fn all_cgroup_dirs() -> BTreeSet<PathBuf> {
    let mut found = BTreeSet::new();
    let mut stack = vec![PathBuf::from("/sys/fs/cgroup")];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).into_iter().flatten().flatten() {
            // Symlinks (cpu -> cpu,cpuacct) are not directories by file_type.
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(entry.path());
                found.insert(entry.path());
            }
        }
    }
    found
}

/// A node container `name` of `docker`, created from the Debian node image but not started
/// (so files can be copied in first: [`Node::copy_tree`], [`Node::copy`]). Dropping it stops
/// its systemd cleanly and removes the container, the image and the cgroups it made.
pub struct Node<'a> {
    docker: &'a Docker,
    pub name: String,
    cgroups_before: BTreeSet<PathBuf>,
    /// The host pid of the started node's init, which [`Node::exec`] enters.
    init_pid: OnceLock<i32>,
}

impl<'a> Node<'a> {
    /// Imports the image (as `name`) and creates the node, with `extra` options for `docker
    /// create` (volumes).
    pub fn create(docker: &'a Docker, name: &str, extra: &[&str]) -> Node<'a> {
        docker.import(&debian_node_rootfs(), name);
        let node = Node {
            docker,
            name: name.to_string(),
            cgroups_before: all_cgroup_dirs(),
            init_pid: OnceLock::new(),
        };
        // The reported setup, without a network, which nothing here needs.
        let mut args = vec![
            "create",
            "--name",
            name,
            "--runtime",
            "runc",
            "--cap-add",
            "ALL",
            "--cap-drop",
            "SYS_RESOURCE",
            "--security-opt",
            "seccomp=unconfined",
            "--security-opt",
            "apparmor=unconfined",
            "--device-cgroup-rule",
            "a *:* rwm",
            "--cgroupns=private",
            "-v",
            "/sys/fs/cgroup:/sys/fs/cgroup:rw",
            "--tmpfs",
            "/run",
            "--tmpfs",
            "/run/lock",
            "--tmpfs",
            "/tmp",
            "--network",
            "none",
        ];
        args.extend_from_slice(extra);
        args.extend([name, "/sbin/init"]);
        docker.ok(&args);
        node
    }

    /// Copies `tree` (laid out like `/`, e.g. a DESTDIR) into the node. Per top-level
    /// directory: the image's /lib is a symlink to usr/lib, which a copy of the whole tree at
    /// / would refuse to replace.
    pub fn copy_tree(&self, tree: &Path) {
        for entry in fs::read_dir(tree).unwrap().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            self.copy(
                &format!("{}/.", entry.path().display()),
                &format!("/{name}/"),
            );
        }
    }

    /// `docker cp SOURCE NODE:TARGET`.
    pub fn copy(&self, source: &str, target: &str) {
        self.docker
            .ok(&["cp", source, &format!("{}:{target}", self.name)]);
    }

    /// Starts the node and waits until its systemd has booted: its final state.
    pub fn start(&self) -> String {
        self.docker.ok(&["start", &self.name]);
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let state = text(&self.exec("systemctl is-system-running"));
            if !matches!(state.as_str(), "initializing" | "starting" | "")
                || Instant::now() > deadline
            {
                return state;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Starts the node, which must reach `running`.
    pub fn boot(&self) {
        let state = self.start();
        let failed = text(&self.exec("systemctl --failed --no-legend --plain"));
        assert_eq!(state, "running", "failed units: {failed}");
    }

    /// `sh -c script` in the node: in all its namespaces, as root with a clean environment.
    /// Entered with nsenter rather than `docker exec`: the node's systemd takes the hierarchies'
    /// roots as its own (see `Drop`), moves the node's processes into its units and may remove
    /// the runtime's cgroups of the node in a hierarchy it manages, where `docker exec` would
    /// put the new process.
    pub fn exec(&self, script: &str) -> Output {
        let pid = *self.init_pid.get_or_init(|| self.pid());
        Command::new("nsenter")
            .args([
                "-t",
                &pid.to_string(),
                "-m",
                "-u",
                "-i",
                "-n",
                "-p",
                "-C",
                "-r",
                "-w",
            ])
            .args([
                "env",
                "-i",
                "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                "HOME=/root",
            ])
            .args(["sh", "-c", script])
            .stdin(std::process::Stdio::null())
            .output()
            .expect("running nsenter")
    }

    /// `sh -c script` in the node, which must succeed: its stdout, trimmed.
    pub fn exec_ok(&self, script: &str) -> String {
        let out = self.exec(script);
        assert!(
            out.status.success(),
            "in the node: {script}: {}",
            crate::all_output(&out)
        );
        text(&out)
    }

    /// The host pid of the node's init (its files are at /proc/PID/root).
    pub fn pid(&self) -> i32 {
        text(
            &self
                .docker
                .run(&["inspect", "-f", "{{.State.Pid}}", &self.name]),
        )
        .parse()
        .expect("the node runs")
    }

    /// `systemctl show` of the unit's state, main pid and restarts, as a map.
    pub fn unit_properties(&self, unit: &str) -> BTreeMap<String, String> {
        crate::key_values(&self.exec_ok(&format!(
            "systemctl show -p LoadState,ActiveState,SubState,MainPID,NRestarts,Result {unit}"
        )))
    }

    /// The ranges idmapd holds, as `busctl` prints them (`a(usuuu) N ...`).
    pub fn ranges(&self) -> String {
        self.exec_ok("busctl call org.burrow.IdMap1 /org/burrow/IdMap1 org.burrow.IdMap1 List")
    }

    /// Each helper ran as its unit (active, its MainPID the only process of that binary but
    /// mountd's spare worker, its child; in the unit's cgroup, never restarted), with exactly
    /// its capabilities and a clean journal.
    pub fn assert_helpers_ran_as_units(&self) {
        for unit in UNITS {
            let props = self.unit_properties(&format!("{unit}.service"));
            let journal = self.exec_ok(&format!(
                "journalctl -b -q --no-pager -o cat -u {unit}.service"
            ));
            assert_eq!(
                props["ActiveState"], "active",
                "{unit}: {props:?}\n{journal}"
            );
            assert_eq!(props["NRestarts"], "0", "{unit} restarted:\n{journal}");
            let main_pid = &props["MainPID"];
            assert_ne!(main_pid, "0", "{unit} has no main process");
            // Beside the unit's process, only mountd's spare worker (its child, named so).
            let others = self.exec_ok(&format!(
                "for p in $(pidof {unit}); do if [ $p != {main_pid} ]; then \
                 if ! {{ grep -q '^mountd-worker$' /proc/$p/comm && \
                 [ \"$(cut -d' ' -f4 /proc/$p/stat)\" = {main_pid} ]; }}; then echo $p; fi; \
                 fi; done"
            ));
            assert_eq!(others, "", "{unit}: processes beside the unit's");
            let status = self.exec_ok(&format!(
                "readlink /proc/{main_pid}/exe; grep -E '^Cap(Eff|Prm|Bnd|Inh|Amb)' \
                 /proc/{main_pid}/status; cat /proc/{main_pid}/cgroup"
            ));
            assert!(
                status.starts_with(&format!("/usr/local/libexec/burrow/{unit}\n")),
                "{status}"
            );
            assert!(status.contains(&format!("/{unit}.service")), "{status}");
            let caps = expected_caps(unit);
            for set in ["CapEff", "CapPrm", "CapBnd"] {
                assert!(
                    status.contains(&format!("{set}:\t{caps}")),
                    "{unit} {set}, expected {caps}:\n{status}"
                );
            }
            for set in ["CapInh", "CapAmb"] {
                assert!(
                    status.contains(&format!("{set}:\t0000000000000000")),
                    "{unit} {set}:\n{status}"
                );
            }
            // idmapd made the users' root, burrow.slice, while it could.
            assert!(
                !journal.contains("no cgroups for non-root containers")
                    && !journal.contains("ERROR"),
                "{unit}:\n{journal}"
            );
        }
    }

    /// No helper runs yet: the units start only when the bus activates them.
    pub fn assert_helpers_inactive(&self) {
        for unit in UNITS {
            assert_eq!(
                self.unit_properties(&format!("{unit}.service"))["ActiveState"],
                "inactive",
                "{unit} runs before any call"
            );
        }
    }
}

/// The capability sets a helper keeps (as helpers.rs lists them), as in /proc/PID/status.
fn expected_caps(unit: &str) -> &'static str {
    match unit {
        "burrow-idmapd" => "0000000080a800c5",
        "burrow-devd" => "0000000008200001",
        _ => "00000000082c00df",
    }
}

impl Drop for Node<'_> {
    /// Stops the node's systemd cleanly and removes the cgroups it made. With the host's
    /// /sys/fs/cgroup mounted into a private cgroup namespace, the node's systemd sees the
    /// hierarchies' roots as its own and makes init.scope, system.slice, ... there: everything
    /// that was not there before the node started is removed (once empty).
    fn drop(&mut self) {
        // SIGRTMIN+3 is systemd's clean shutdown; it takes the units' cgroups with it.
        let _ = self
            .docker
            .run(&["kill", "--signal", "SIGRTMIN+3", &self.name]);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline
            && text(
                &self
                    .docker
                    .run(&["inspect", "-f", "{{.State.Running}}", &self.name]),
            ) == "true"
        {
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.docker.run(&["rm", "-f", &self.name]);
        let _ = self.docker.run(&["rmi", "-f", &self.name]);
        let mut new: Vec<PathBuf> = all_cgroup_dirs()
            .difference(&self.cgroups_before)
            .cloned()
            .collect();
        // Children before their parents.
        new.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
        for dir in new {
            let _ = fs::remove_dir(&dir);
        }
    }
}

/// `0 BASE 65536` with BASE in idmapd's default pool: an exclusive range, never host ID 0.
pub fn assert_exclusive_range(uid_map: &str) {
    let map: Vec<u64> = uid_map
        .split_whitespace()
        .map(|n| n.parse().unwrap())
        .collect();
    assert!(
        map.len() == 3
            && map[0] == 0
            && (0x7000_0000..0x7FFE_0000).contains(&map[1])
            && map[2] == 65536,
        "uid_map: {uid_map:?}"
    );
}
