//! `burrow` as an OCI runtime under test: the calls a shim makes, on busybox bundles.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::{bin, busybox_rootfs, write_spec, Harness};
/// `burrow` driven the way containerd's shim drives runc: its own state root, a JSON log file.
pub struct Runtime<'a> {
    pub h: &'a Harness,
    pub root: PathBuf,
    pub log: PathBuf,
}

impl<'a> Runtime<'a> {
    /// State in the harness's directory, log in `log.json` there.
    pub fn new(h: &'a Harness) -> Self {
        Runtime {
            h,
            root: h.dir.join("burrow-root"),
            log: h.dir.join("log.json"),
        }
    }

    /// `burrow --root ROOT --log LOG --log-format json` on the harness's bus.
    pub fn cmd(&self) -> Command {
        let mut cmd = self.h.command(bin("burrow"));
        cmd.args([
            "--root",
            &self.root.display().to_string(),
            "--log",
            &self.log.display().to_string(),
            "--log-format",
            "json",
        ]);
        cmd
    }

    /// `burrow ARGS`, stdin empty.
    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd().args(args).stdin(Stdio::null()).output().unwrap()
    }

    /// `burrow create` with the container's stdio on a file.
    pub fn create(&self, bundle: &Path, id: &str) -> (Output, PathBuf, PathBuf) {
        self.create_with(&[], bundle, id)
    }

    /// `burrow GLOBAL_FLAGS create ...`.
    pub fn create_with(
        &self,
        global: &[&str],
        bundle: &Path,
        id: &str,
    ) -> (Output, PathBuf, PathBuf) {
        let out_file = bundle.join(format!("{id}.out"));
        let pid_file = bundle.join(format!("{id}.pid"));
        let stdout = fs::File::create(&out_file).unwrap();
        let out = self
            .cmd()
            .args(global)
            .args([
                "create",
                "--bundle",
                &bundle.display().to_string(),
                "--pid-file",
                &pid_file.display().to_string(),
                id,
            ])
            .stdin(Stdio::null())
            .stdout(stdout.try_clone().unwrap())
            .stderr(stdout)
            .output()
            .unwrap();
        (out, out_file, pid_file)
    }

    /// `burrow update --resources -` with `resources` on stdin; whether it succeeded.
    pub fn update(&self, id: &str, resources: &str) -> bool {
        let mut child = self
            .cmd()
            .args(["update", "--resources", "-", id])
            .stdin(Stdio::piped())
            .spawn()
            .unwrap();
        std::io::Write::write_all(&mut child.stdin.take().unwrap(), resources.as_bytes()).unwrap();
        child.wait().unwrap().success()
    }

    /// `burrow state ID`, which must succeed.
    pub fn state(&self, id: &str) -> Value {
        let out = self.run(&["state", id]);
        assert!(out.status.success(), "state {id}: {}", self.last_error());
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// The message of the log's last line, an error (empty if there is none).
    pub fn last_error(&self) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let line = text.lines().last().unwrap_or("").to_string();
        if line.is_empty() {
            return line;
        }
        let v: Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("log line is not JSON ({e}): {line}"));
        assert_eq!(v["level"], "error");
        assert!(
            v["time"].as_str().is_some_and(|t| t.ends_with('Z')),
            "{line}"
        );
        v["msg"].as_str().unwrap().to_string()
    }

    /// create, start, wait until stopped, delete: what the container wrote.
    pub fn output_of_run(&self, bundle: &Path, id: &str) -> String {
        let (out, out_file, _) = self.create(bundle, id);
        assert!(out.status.success(), "create {id}: {}", self.last_error());
        let start = self.run(&["start", id]);
        assert!(start.status.success(), "start {id}: {}", self.last_error());
        crate::wait_for(&format!("{id} stopped"), || {
            self.state(id)["status"] == "stopped"
        });
        let delete = self.run(&["delete", id]);
        assert!(
            delete.status.success(),
            "delete {id}: {}",
            self.last_error()
        );
        fs::read_to_string(out_file).unwrap()
    }

    /// What is left in the state root.
    pub fn leftovers(&self) -> Vec<String> {
        fs::read_dir(&self.root)
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// A busybox bundle in the harness's directory, running `args`, its spec changed by `edit`.
pub fn bundle(h: &Harness, name: &str, args: &[&str], edit: impl FnOnce(&mut Value)) -> PathBuf {
    let dir = h.dir.join(name);
    fs::create_dir_all(&dir).unwrap();
    busybox_rootfs(&dir.join("rootfs"), None);
    write_spec(&dir, args, edit);
    dir
}

/// What `file` holds once it contains `needle` (at most 20 s).
pub fn wait_output(file: &Path, needle: &str) -> String {
    let start = Instant::now();
    loop {
        let text = fs::read_to_string(file).unwrap_or_default();
        if text.contains(needle) {
            return text;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "timed out waiting for {needle:?} in {text:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
