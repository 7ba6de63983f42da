//! Pod start benchmark (not a test): RunPodSandbox + CreateContainer + StartContainer through
//! containerd's CRI (kubelet's calls up to a running container: "Ready" but for kubelet's own
//! probes), with runtime handler `burrow` and `runc`, alternated in one run on one containerd
//! of the harness's. Each pod is removed after its measurement (not timed). Run as root with
//! `make bench-pods` (release binaries).

use std::time::{Duration, Instant};

use burrow_tests::cri::{
    api, container_config, set_kubelet_namespaces, Containerd, Cri, BUSYBOX_IMAGE,
};
use burrow_tests::{percentile, Harness, HarnessOptions};

const RUNS: usize = 20;
const IDLE: &str = "trap 'exit 0' TERM; sleep 3600 & wait";

/// One pod started (timed) and removed (not timed): the start's wall time.
fn pod_start(containerd: &Containerd, cri: &mut Cri, handler: &str, n: usize) -> Duration {
    let mut sandbox = containerd.pod_config(&format!("bench-{handler}-{n}"));
    let mut config = container_config("app", BUSYBOX_IMAGE, &["sh", "-c", IDLE], None);
    set_kubelet_namespaces(
        &mut sandbox,
        Some(&mut config),
        api::NamespaceMode::Container,
    );
    let started = Instant::now();
    let pod = cri
        .run_pod_sandbox(&sandbox, handler)
        .expect("RunPodSandbox");
    let container = cri
        .create_container(&pod, &config, &sandbox)
        .expect("CreateContainer");
    cri.start_container(&container).expect("StartContainer");
    let elapsed = started.elapsed();
    cri.stop_pod_sandbox(&pod).expect("StopPodSandbox");
    cri.remove_pod_sandbox(&pod).expect("RemovePodSandbox");
    elapsed
}

fn main() {
    let h = Harness::start(HarnessOptions::default());
    let containerd = Containerd::start(&h);
    let mut cri = containerd.client();
    let handlers = ["runc", "burrow"];
    // Warm-up: images unpacked, helpers started, page cache.
    for handler in handlers {
        pod_start(&containerd, &mut cri, handler, 0);
    }
    let mut times: Vec<Vec<u64>> = vec![vec![]; handlers.len()];
    for n in 1..=RUNS {
        for (i, handler) in handlers.iter().enumerate() {
            let elapsed = pod_start(&containerd, &mut cri, handler, n);
            times[i].push(elapsed.as_micros() as u64);
        }
    }
    let ms = |us: u64| us as f64 / 1000.0;
    let medians: Vec<u64> = times
        .iter_mut()
        .map(|t| {
            t.sort_unstable();
            percentile(t, 0.5)
        })
        .collect();
    println!("pod start (RunPodSandbox + CreateContainer + StartContainer), {RUNS} runs each, alternated");
    println!("| handler | p50 | p90 | min | vs runc |");
    println!("|---|---|---|---|---|");
    for (i, handler) in handlers.iter().enumerate() {
        println!(
            "| {handler} | {:.1} ms | {:.1} ms | {:.1} ms | {:.2}x |",
            ms(medians[i]),
            ms(percentile(&times[i], 0.9)),
            ms(times[i][0]),
            medians[i] as f64 / medians[0] as f64
        );
    }
}
