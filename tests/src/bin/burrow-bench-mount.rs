//! mountd benchmark (not a test): ID-mapping a Debian rootfs versus copying and chown-shifting
//! it, and BuildRoot latency. Run as root with `make bench` (release binaries); builds the
//! Debian rootfs once with tests/fixtures/debian-rootfs.sh (cached under /var/cache/burrow).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use burrow_tests::{json_lines, memory_kib, percentile, workspace_root, Harness, HarnessOptions};

/// lchown every entry below `dir` by `shift`, as a runtime without ID-mapped mounts must.
fn chown_shift(dir: &Path, shift: u32) -> usize {
    use std::os::unix::fs::MetadataExt;
    let mut count = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(path) = stack.pop() {
        let meta = std::fs::symlink_metadata(&path).unwrap();
        std::os::unix::fs::lchown(&path, Some(meta.uid() + shift), Some(meta.gid() + shift))
            .unwrap();
        count += 1;
        if meta.is_dir() {
            stack.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
        }
    }
    count
}

fn client_json(h: &Harness, args: &[&str]) -> serde_json::Value {
    let out = h.client(None).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    json_lines(&out.stdout).remove(0)
}

fn main() {
    let script = workspace_root().join("tests/fixtures/debian-rootfs.sh");
    let out = Command::new(&script).arg("minbase").output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rootfs = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim().to_string());
    let h = Harness::start(HarnessOptions::default());
    let copy = h.dir.join("shifted-copy");

    let started = Instant::now();
    let status = Command::new("cp")
        .args(["-a", "--reflink=never"])
        .arg(&rootfs)
        .arg(&copy)
        .status()
        .unwrap();
    assert!(status.success());
    let copy_s = started.elapsed().as_secs_f64();
    let started = Instant::now();
    let files = chown_shift(&copy, 524288);
    let chown_s = started.elapsed().as_secs_f64();
    let size = Command::new("du")
        .args(["-sm"])
        .arg(&rootfs)
        .output()
        .unwrap();
    let size_mb = String::from_utf8_lossy(&size.stdout)
        .split_whitespace()
        .next()
        .unwrap_or("?")
        .to_string();
    std::fs::remove_dir_all(&copy).unwrap();

    let dir = rootfs.display().to_string();
    client_json(&h, &["idmap-mount", "--dir", &dir]); // warm up
    let mut idmap: Vec<u64> = (0..20)
        .map(|_| {
            client_json(&h, &["idmap-mount", "--dir", &dir])["idmap_us"]
                .as_u64()
                .unwrap()
        })
        .collect();
    idmap.sort_unstable();
    let idmap_s = percentile(&idmap, 0.5) as f64 / 1e6;
    let shift_s = copy_s + chown_s;
    println!("Debian bookworm minbase rootfs: {files} files, {size_mb} MB");
    println!();
    println!("| method | wall time | ratio |");
    println!("|---|---|---|");
    println!("| copy (cp -a) + chown-shift every file | {shift_s:.2} s (copy {copy_s:.2} s + chown {chown_s:.2} s) | {:.0}x |", shift_s / idmap_s);
    println!(
        "| IdmapMount over the bus (p50 of 20) | {:.2} ms | 1x |",
        idmap_s * 1000.0
    );

    client_json(&h, &["container", "--rootfs", &dir, "--script", "true"]);
    let mut build: Vec<u64> = (0..50)
        .map(|_| {
            let v = client_json(&h, &["container", "--rootfs", &dir, "--script", "true"]);
            assert_eq!(v["exit"], 0, "{v}");
            v["build_us"].as_u64().unwrap()
        })
        .collect();
    build.sort_unstable();
    println!();
    println!(
        "BuildRoot (Debian rootfs, 8 mounts, 11 masked and 5 read-only paths, cgroup v1 hybrid), 50 runs: p50 {:.1} ms, p99 {:.1} ms",
        percentile(&build, 0.5) as f64 / 1000.0,
        percentile(&build, 0.99) as f64 / 1000.0
    );
    idle_memory(&h);
}

/// Each helper's memory once it has served the runs above (each run called all three) and
/// has been idle for a few seconds.
fn idle_memory(h: &Harness) {
    std::thread::sleep(std::time::Duration::from_secs(3));
    println!();
    println!("| helper, idle 3 s after serving | RSS KiB | PSS KiB |");
    println!("|---|---|---|");
    for helper in ["burrow-idmapd", "burrow-devd", "burrow-mountd"] {
        for pid in h.helper_pids(helper) {
            let (rss, pss) = memory_kib(pid);
            println!("| {helper} | {rss} | {pss} |");
        }
    }
}
