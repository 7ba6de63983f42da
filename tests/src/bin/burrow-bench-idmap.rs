//! idmapd benchmark (not a test): Allocate and Release latency over a real bus, for root and
//! for a polkit-checked user (beside polkitd's own answer and a bare bus round trip),
//! throughput with 32 concurrent clients, and the helper's idle RSS.
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

/// The p50 and p99, in ms, of `field` (µs) over `lines`.
fn p50_p99_ms(lines: &[serde_json::Value], field: &str) -> (f64, f64) {
    let mut us: Vec<u64> = lines.iter().map(|l| l[field].as_u64().unwrap()).collect();
    us.sort_unstable();
    let ms = |us: u64| us as f64 / 1000.0;
    (ms(percentile(&us, 0.5)), ms(percentile(&us, 0.99)))
}

fn latency_row(label: &str, lines: &[serde_json::Value]) {
    let (alloc_p50, alloc_p99) = p50_p99_ms(lines, "alloc_us");
    let (release_p50, release_p99) = p50_p99_ms(lines, "release_us");
    println!(
        "| {label} | {} | {alloc_p50:.2} | {alloc_p99:.2} | {release_p50:.2} | {release_p99:.2} |",
        lines.len(),
    );
}

/// A baseline row: `client_args`' output lines, each timed in `field` (µs), in Allocate's
/// p50 and p99 columns.
fn baseline_row(h: &Harness, user: User, label: &str, client_args: &[&str], field: &str) {
    let out = h.client(Some(user)).args(client_args).output().unwrap();
    let lines = json_lines(&out.stdout);
    assert!(
        out.status.success()
            && lines
                .iter()
                .all(|l| l["ok"] == true && l["authorized"] != false),
        "{label}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (p50, p99) = p50_p99_ms(&lines, field);
    println!("| {label} | {} | {p50:.2} | {p99:.2} | | |", lines.len());
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
    // What the rows above are made of: polkitd's own answer (Allocate's action, the same
    // user), and a bare round trip through the bus to idmapd.
    baseline_row(
        &h,
        alice,
        "polkitd alone: CheckAuthorization of that user, from its client",
        &["polkit-checks", "--count", "500"],
        "check_us",
    );
    baseline_row(
        &h,
        alice,
        "the bus alone: Peer.Ping of idmapd, from that client",
        &["pings", "--count", "500"],
        "ping_us",
    );

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
