//! The host's lxcfs under mountd (docs/runtime.md): restarted and stopped by the test, so in a
//! binary of its own: the other suites compare the host's mounts before and after, and use
//! lxcfs's files. Run as root (`make test`).

use std::path::Path;

use burrow_tests::{
    assert_error_says, built_container as container, busybox_rootfs, Harness, HarnessOptions,
};
use serde_json::json;

/// lxcfs's files are looked up once per lxcfs mount and held by mountd (docs/runtime.md): a
/// build after lxcfs was restarted gets the new lxcfs's files, not the dead one's; mountd's hold
/// never keeps lxcfs's mount busy (it unmounts without `-l`); and a hung lxcfs, not looked up
/// yet, fails the builds that ask for it within 10 s while mountd goes on serving the others.
#[test]
fn lxcfs_files_follow_lxcfs_and_a_hung_lxcfs_fails_only_its_builds() {
    let h = Harness::start(HarnessOptions::default());
    let rootfs = busybox_rootfs(&h.dir.join("rootfs"), None);
    let with_lxcfs = || {
        container(
            &h,
            None,
            &rootfs,
            "cat /proc/uptime",
            json!({"lxcfs": true}),
        )
    };
    let v = with_lxcfs();
    assert_eq!(v["exit"], 0, "{v}");
    // The container's uptime, lxcfs's: not the host's.
    let uptime: f64 = v["output"]
        .as_str()
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(uptime < 60.0, "{v}");

    let lxcfs = Lxcfs::restarted();
    let v = with_lxcfs();
    assert_eq!(v["exit"], 0, "files of the stopped lxcfs: {v}");

    drop(lxcfs);
    let lxcfs = Lxcfs::restarted();
    lxcfs.signal(nix::sys::signal::Signal::SIGSTOP);
    let asked = std::time::Instant::now();
    let v = with_lxcfs();
    assert_error_says(&v, "org.burrow.Error.Failed", "did not answer within 10 s");
    assert!(
        asked.elapsed() < std::time::Duration::from_secs(20),
        "{:?}",
        asked.elapsed()
    );
    assert_eq!(container(&h, None, &rootfs, "true", json!({}))["exit"], 0);
    lxcfs.signal(nix::sys::signal::Signal::SIGCONT);
    burrow_tests::wait_for("builds with lxcfs again", || with_lxcfs()["exit"] == 0);
}

/// The host's lxcfs, restarted by a test: stopped (it unmounts its mount itself, which must
/// not be busy), then started again by scripts/start-lxcfs. Dropped, it is let run again if it
/// was stopped, so that the suites after this test find a working lxcfs.
struct Lxcfs(i32);

impl Lxcfs {
    fn restarted() -> Self {
        let old = Self::pid();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(old),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        burrow_tests::wait_for("lxcfs gone", || {
            !Path::new(&format!("/proc/{old}")).exists()
                || std::fs::read_to_string(format!("/proc/{old}/stat"))
                    .is_ok_and(|s| s.contains(") Z "))
        });
        if burrow_sys::lxcfs::mounted() {
            let umount = std::process::Command::new("umount")
                .arg(burrow_sys::lxcfs::LXCFS_DIR)
                .output()
                .unwrap();
            assert!(umount.status.success(), "{umount:?}");
        }
        burrow_tests::run(&mut std::process::Command::new(
            burrow_tests::workspace_root().join("scripts/start-lxcfs"),
        ));
        let new = Self::pid();
        assert_ne!(new, old);
        Lxcfs(new)
    }

    /// The lxcfs serving /var/lib/lxcfs.
    fn pid() -> i32 {
        std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
            .find(|pid| {
                std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                    c.split(|b| *b == 0).next() == Some(b"lxcfs")
                        && c.windows(14).any(|w| w == b"/var/lib/lxcfs")
                })
            })
            .expect("the harness runs lxcfs")
    }

    fn signal(&self, signal: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.0), signal).unwrap();
    }
}

impl Drop for Lxcfs {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.0),
            nix::sys::signal::Signal::SIGCONT,
        );
    }
}
