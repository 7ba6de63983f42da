//! idmapd benchmark (not a test): Allocate and Release latency over a real bus, for root and
//! for a polkit-checked user (and polkitd's own answer to that user), throughput with 32 concurrent clients, and the helper's idle RSS.
//! Run as root with `make bench` (release binaries).

use std::process::Stdio;
use std::time::Instant;

use burrow_tests::{json_lines, memory_kib, percentile, test_users, Harness, HarnessOptions, User};

fn cycles(h: &Harness, user: Option<User>, prefix: &str, count: usize) -> Vec<serde_json::Value> {
    let out = h
        .client(user)
        .args(["cycles", "--prefix", prefix, "--count", &count.to_string()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines = json_lines(&out.stdout);
    assert!(
        lines
            .iter()
            .all(|l| l["ok"] == true && l["release"]["ok"] == true),
        "a cycle failed"
    );
    lines
}

fn latency_row(label: &str, lines: &[serde_json::Value]) {
    let mut alloc: Vec<u64> = lines
        .iter()
        .map(|l| l["alloc_us"].as_u64().unwrap())
        .collect();
    let mut release: Vec<u64> = lines
        .iter()
        .map(|l| l["release_us"].as_u64().unwrap())
        .collect();
    alloc.sort_unstable();
    release.sort_unstable();
    let ms = |us: u64| us as f64 / 1000.0;
    println!(
        "| {label} | {} | {:.2} | {:.2} | {:.2} | {:.2} |",
        lines.len(),
        ms(percentile(&alloc, 0.5)),
        ms(percentile(&alloc, 0.99)),
        ms(percentile(&release, 0.5)),
        ms(percentile(&release, 0.99)),
    );
}

/// polkitd alone: the same user's client asks it `count` times about Allocate's action, as
/// idmapd does, so that the row above can be read against what polkitd itself takes.
fn polkit_row(h: &Harness, user: User, count: usize) {
    let out = h
        .client(Some(user))
        .args(["polkit-checks", "--count", &count.to_string()])
        .output()
        .unwrap();
    let lines = json_lines(&out.stdout);
    assert!(
        out.status.success() && lines.iter().all(|l| l["authorized"] == true),
        "a polkit check failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut checks: Vec<u64> = lines
        .iter()
        .map(|l| l["check_us"].as_u64().unwrap())
        .collect();
    checks.sort_unstable();
    let ms = |us: u64| us as f64 / 1000.0;
    println!(
        "| polkitd alone: CheckAuthorization of that user, from its client | {count} | {:.2} | {:.2} | | |",
        ms(percentile(&checks, 0.5)),
        ms(percentile(&checks, 0.99)),
    );
}

fn main() {
    let h = Harness::start(HarnessOptions::default());
    let alice = test_users().alice;
    // Warm up: activation, page cache, polkit's rule compilation.
    cycles(&h, None, "warm", 20);
    cycles(&h, Some(alice), "warm", 20);

    println!(
        "| caller | cycles | Allocate p50 ms | Allocate p99 ms | Release p50 ms | Release p99 ms |"
    );
    println!("|---|---|---|---|---|---|");
    latency_row("root (no polkit)", &cycles(&h, None, "root", 500));
    latency_row(
        "user in group burrow (polkit's grant remembered)",
        &cycles(&h, Some(alice), "alice", 500),
    );
    // The same user with nothing remembered: polkitd is asked at every call.
    let asking = Harness::start(HarnessOptions {
        idmapd_args: vec!["--polkit-grant-seconds".into(), "0".into()],
        ..Default::default()
    });
    cycles(&asking, Some(alice), "warm", 20);
    latency_row(
        "user in group burrow (polkit asked every call)",
        &cycles(&asking, Some(alice), "asked", 500),
    );
    drop(asking);
    polkit_row(&h, alice, 500);

    let (clients, per_client) = (32, 50);
    let start = Instant::now();
    let children: Vec<_> = (0..clients)
        .map(|i| {
            let user = if i % 2 == 0 { None } else { Some(alice) };
            h.client(user)
                .args([
                    "cycles",
                    "--prefix",
                    &format!("t{i}"),
                    "--count",
                    &per_client.to_string(),
                ])
                .stdout(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success());
    }
    let elapsed = start.elapsed().as_secs_f64();
    let total = clients * per_client;
    println!();
    println!(
        "throughput: {clients} clients x {per_client} Allocate+Release cycles (half root, half polkit): \
         {total} cycles in {elapsed:.2} s = {:.0} cycles/s",
        total as f64 / elapsed
    );
    // Idle: no call for a few seconds (the helpers give memory back once idle).
    std::thread::sleep(std::time::Duration::from_secs(3));
    let (rss, pss) = memory_kib(h.idmapd_pids()[0]);
    println!("idmapd after the run, idle 3 s: RSS {rss} KiB, PSS {pss} KiB");
}
