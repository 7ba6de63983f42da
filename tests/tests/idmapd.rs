//! idmapd against a real dbus-daemon, polkitd and kernel: run as root (`make test`).

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::process::{Output, Stdio};

use burrow_tests::{
    assert_error, json_lines, test_users, wait_for, Harness, HarnessOptions, RootsUserns, User,
};
use serde_json::Value;

const RANGE: u64 = 65536;

fn harness() -> Harness {
    Harness::start(HarnessOptions::default())
}

fn client(h: &Harness, user: Option<User>, args: &[&str]) -> Vec<Value> {
    let out = h.client(user).args(args).output().expect("run test client");
    check(&out, h);
    json_lines(&out.stdout)
}

fn check(out: &Output, h: &Harness) {
    assert!(
        out.status.success(),
        "client failed: {}\n--- bus log ---\n{}",
        String::from_utf8_lossy(&out.stderr),
        h.log()
    );
}

fn one(h: &Harness, user: Option<User>, args: &[&str]) -> Value {
    let mut lines = client(h, user, args);
    assert_eq!(lines.len(), 1, "{lines:?}");
    lines.remove(0)
}

fn base_of(v: &Value) -> u64 {
    assert_eq!(v["ok"], true, "call failed: {v}");
    v["base"].as_u64().unwrap()
}

fn alice() -> Option<User> {
    Some(test_users().alice)
}

fn bob() -> Option<User> {
    Some(test_users().bob)
}

/// Kills idmapd (without Release) until a start-up reconciliation finds every range dead. One
/// restart does it unless another process happens to be inside a namespace at that moment.
/// Its killed workers are waited for first: a zombie keeps its credentials, and with them its
/// user namespace, until its new parent reaps it (this VM's PID 1 takes its time).
fn restart_until_reclaimed(h: &Harness) {
    for _ in 0..5 {
        h.kill_idmapd();
        wait_for("the killed workers reaped", || h.zombies_of_bus() == 0);
        if h.ranges_in_use() == 0 {
            assert!(h.persisted_records().is_empty());
            return;
        }
    }
    panic!(
        "dead namespaces not reclaimed at start-up: {:?}\n{}",
        h.persisted_records(),
        h.log()
    );
}

/// Released ranges drain until no process is in (or holds) their namespace any more; a process
/// briefly entering it (another helper's worker, `nsenter`) delays that by a moment.
fn wait_all_free(h: &Harness) {
    wait_for("all ranges free", || h.ranges_in_use() == 0);
    assert!(h.persisted_records().is_empty());
}

#[test]
fn two_allocations_are_disjoint_and_mapped() {
    let h = harness();
    for user in [None, alice()] {
        let mut a = h
            .client(user)
            .args(["allocate", "--name", "one", "--hold"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let first: Value = serde_json::from_str(
            &BufReader::new(a.stdout.take().unwrap())
                .lines()
                .next()
                .unwrap()
                .unwrap(),
        )
        .unwrap();
        let second = one(&h, user, &["allocate", "--name", "two"]);
        let (b1, b2) = (base_of(&first), base_of(&second));
        assert!(b1 + RANGE <= b2 || b2 + RANGE <= b1, "overlap: {b1} {b2}");
        for (v, b) in [(&first, b1), (&second, b2)] {
            assert!(b > 0 && b % RANGE == 0);
            let map: Vec<&str> = v["uid_map"].as_str().unwrap().split_whitespace().collect();
            assert_eq!(map, ["0", &b.to_string(), "65536"]);
            let gmap: Vec<&str> = v["gid_map"].as_str().unwrap().split_whitespace().collect();
            assert_eq!(gmap, ["0", &b.to_string(), "65536"]);
        }
        drop(a.stdin.take());
        a.wait().unwrap();
        for name in ["one", "two"] {
            assert_eq!(one(&h, user, &["release", "--name", name])["ok"], true);
        }
    }
    wait_all_free(&h);
}

/// Spawns `args` as a long-running client and returns it with a line reader on its stdout.
struct Running {
    child: std::process::Child,
    lines: std::io::Lines<BufReader<std::process::ChildStdout>>,
}

fn spawn(h: &Harness, user: Option<User>, args: &[&str]) -> Running {
    let mut child = h
        .client(user)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = BufReader::new(child.stdout.take().unwrap()).lines();
    Running { child, lines }
}

impl Running {
    fn next_json(&mut self) -> Value {
        let line = self.lines.next().expect("client ended early").unwrap();
        serde_json::from_str(&line).unwrap()
    }

    /// Closes stdin (the client drops what it holds) and waits.
    fn finish(mut self) -> Vec<Value> {
        drop(self.child.stdin.take());
        let rest: Vec<Value> = self
            .lines
            .by_ref()
            .map(|l| serde_json::from_str(&l.unwrap()).unwrap())
            .collect();
        assert!(self.child.wait().unwrap().success());
        rest
    }
}

#[test]
fn concurrent_clients_never_share_a_range() {
    let h = harness();
    let clients: Vec<_> = (0..32)
        .map(|i| {
            let user = if i % 2 == 0 { None } else { alice() };
            let prefix = format!("c{i}");
            h.client(user)
                .args(["cycles", "--prefix", &prefix, "--count", "200"])
                .stdout(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut holds: BTreeMap<u64, Vec<(u128, u128)>> = BTreeMap::new();
    let mut total = 0;
    for child in clients {
        let out = child.wait_with_output().unwrap();
        check(&out, &h);
        for v in json_lines(&out.stdout) {
            let base = base_of(&v);
            let map: Vec<&str> = v["uid_map"].as_str().unwrap().split_whitespace().collect();
            assert_eq!(map, ["0", &base.to_string(), "65536"], "{v}");
            assert_eq!(v["release"]["ok"], true, "{v}");
            let t = |k: &str| v[k].as_str().unwrap().parse::<u128>().unwrap();
            holds
                .entry(base)
                .or_default()
                .push((t("t_acquired"), t("t_released")));
            total += 1;
        }
    }
    assert_eq!(total, 32 * 200);
    // While one client held a range (between getting it and giving it back), nobody else did.
    for (base, mut spans) in holds {
        spans.sort();
        for pair in spans.windows(2) {
            assert!(
                pair[0].1 <= pair[1].0,
                "range {base} held twice at once: {pair:?}"
            );
        }
    }
    wait_all_free(&h);
}

#[test]
fn kill_9_in_a_burst_loses_nothing_and_gives_nothing_twice() {
    let h = harness();
    let users = [None, alice(), None, alice(), None, alice()];
    let mut bursts: Vec<Running> = users
        .iter()
        .enumerate()
        .map(|(i, user)| {
            spawn(
                &h,
                *user,
                &["burst", "--prefix", &format!("b{i}"), "--count", "40"],
            )
        })
        .collect();
    // Let the burst get going, then kill the helper twice while calls are in flight.
    wait_for("first allocations", || h.persisted_records().len() >= 20);
    h.kill_idmapd();
    wait_for("allocations after restart", || {
        h.persisted_records().len() >= 60
    });
    h.kill_idmapd();

    let mut acknowledged: BTreeSet<(u32, String, u64)> = BTreeSet::new();
    let mut interrupted = 0;
    for (burst, user) in bursts.iter_mut().zip(users) {
        let uid = user.map_or(0, |u| u.uid);
        loop {
            let v = burst.next_json();
            if v["op"] == "burst-done" {
                break;
            }
            if v["ok"] == true {
                acknowledged.insert((uid, v["name"].as_str().unwrap().to_string(), base_of(&v)));
            } else {
                interrupted += 1;
                assert_eq!(v["retry"], true, "unexpected failure: {v}");
            }
        }
    }
    eprintln!(
        "{} acknowledged, {interrupted} interrupted by kill -9",
        acknowledged.len()
    );
    assert!(
        acknowledged.len() >= 200,
        "too few allocations went through: {}",
        acknowledged.len()
    );

    // Every acknowledged range is still recorded, under its owner and name.
    let listed = one(&h, None, &["list"]);
    let entries: BTreeSet<(u32, String, u64)> = listed["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["uid"].as_u64().unwrap() as u32,
                e["name"].as_str().unwrap().to_string(),
                e["base"].as_u64().unwrap(),
            )
        })
        .collect();
    for ack in &acknowledged {
        assert!(
            entries.contains(ack),
            "acknowledged {ack:?} lost after kill -9"
        );
    }
    // No range was given twice: all recorded ranges are distinct, and a new one is fresh.
    let bases: BTreeSet<u64> = h
        .persisted_records()
        .iter()
        .map(|r| r["base"].as_u64().unwrap())
        .collect();
    assert_eq!(bases.len(), h.persisted_records().len());
    let fresh = base_of(&one(&h, None, &["allocate", "--name", "after-crash"]));
    assert!(!bases.contains(&fresh));

    // The holders exit: their namespaces die, and a restarted helper reclaims every range.
    for burst in bursts {
        burst.finish();
    }
    restart_until_reclaimed(&h);
}

#[test]
fn bad_input_is_named_and_changes_nothing() {
    let h = harness();
    let kept = spawn(&h, alice(), &["allocate", "--name", "kept", "--hold"]);
    let mut kept = kept;
    let kept_base = base_of(&kept.next_json());
    let before = h.persisted_records();
    assert_eq!(before.len(), 1);
    let idmapd = h.idmapd_pids()[0];
    let fds_before = burrow_tests::fd_count(idmapd);

    // Not a user namespace.
    assert_error(
        &one(
            &h,
            alice(),
            &["allocate", "--name", "f", "--fd-kind", "file"],
        ),
        "org.burrow.Error.InvalidArgument",
    );
    assert_error(
        &one(
            &h,
            alice(),
            &["allocate", "--name", "n", "--fd-kind", "net-ns"],
        ),
        "org.burrow.Error.InvalidArgument",
    );
    // Already mapped: by the caller itself, or by an earlier Allocate.
    assert_error(
        &one(
            &h,
            alice(),
            &["allocate", "--name", "m", "--fd-kind", "self-mapped"],
        ),
        "org.burrow.Error.InvalidArgument",
    );
    let twice = client(
        &h,
        alice(),
        &["allocate", "--name", "first", "--again-as", "second"],
    );
    base_of(&twice[0]);
    assert_error(&twice[1], "org.burrow.Error.InvalidArgument");
    assert_eq!(
        one(&h, alice(), &["release", "--name", "first"])["ok"],
        true
    );
    // The kernel frees a namespace a moment after its last process exits: until then the range
    // drains.
    wait_for("the released range freed", || {
        h.persisted_records().len() == before.len()
    });
    // Bad names.
    let long = "x".repeat(300);
    for name in ["", long.as_str(), "../x", "a/b", ".hidden"] {
        assert_error(
            &one(&h, alice(), &["allocate", "--name", name]),
            "org.burrow.Error.InvalidArgument",
        );
    }
    // D-Bus strings cannot carry NUL: the call never reaches the helper.
    let nul = one(&h, alice(), &["allocate", "--name", "a\\0b"]);
    assert_eq!(nul["ok"], false, "{nul}");
    // Duplicate name.
    assert_error(
        &one(&h, alice(), &["allocate", "--name", "kept"]),
        "org.burrow.Error.AlreadyExists",
    );
    // Someone else's user namespace (root's), handed to alice as fd 3.
    assert_error(
        &RootsUserns::new().hand_to(
            &h,
            alice(),
            &["allocate", "--name", "stolen", "--fd-kind", "inherited"],
        ),
        "org.burrow.Error.NotAuthorized",
    );
    // Not in group burrow: polkit says no.
    assert_error(
        &one(&h, bob(), &["allocate", "--name", "bob"]),
        "org.burrow.Error.NotAuthorized",
    );
    // Unknown names.
    assert_error(
        &one(&h, alice(), &["get", "--name", "nope"]),
        "org.burrow.Error.NotFound",
    );
    assert_error(
        &one(&h, alice(), &["release", "--name", "nope"]),
        "org.burrow.Error.NotFound",
    );
    // Names are per caller: bob cannot see or release alice's.
    assert_error(
        &one(&h, bob(), &["release", "--name", "kept"]),
        "org.burrow.Error.NotFound",
    );
    assert_eq!(
        one(&h, bob(), &["list"])["entries"]
            .as_array()
            .unwrap()
            .len(),
        0
    );

    assert_eq!(
        h.persisted_records(),
        before,
        "a refused call changed the state"
    );
    assert_eq!(
        base_of(&one(&h, alice(), &["get", "--name", "kept"])),
        kept_base
    );
    // No refused call left an fd (a namespace, say) in the same idmapd.
    assert_eq!(h.idmapd_pids(), vec![idmapd]);
    wait_for("idmapd's fds back to their count", || {
        burrow_tests::fd_count(idmapd) <= fds_before
    });
    kept.finish();
}

#[test]
fn pool_and_quota_exhaustion() {
    let small = Harness::start(HarnessOptions {
        idmapd_args: [
            "--pool-start",
            &burrow_tests::pool_window(13).to_string(),
            "--pool-end",
            &(burrow_tests::pool_window(13) + 3 * 65536 - 1).to_string(),
            "--max-per-user",
            "2",
        ]
        .map(String::from)
        .to_vec(),
        ..Default::default()
    });
    let mut held = vec![];
    for name in ["a1", "a2"] {
        let mut r = spawn(&small, alice(), &["allocate", "--name", name, "--hold"]);
        base_of(&r.next_json());
        held.push(r);
    }
    assert_error(
        &one(&small, alice(), &["allocate", "--name", "a3"]),
        "org.burrow.Error.Exhausted",
    );
    // The quota is alice's alone: root still gets the last range, then the pool is empty.
    let mut r = spawn(&small, None, &["allocate", "--name", "r1", "--hold"]);
    base_of(&r.next_json());
    held.push(r);
    assert_error(
        &one(&small, None, &["allocate", "--name", "r2"]),
        "org.burrow.Error.Exhausted",
    );
    assert_eq!(small.persisted_records().len(), 3);
    // Namespaces gone without Release: the helper reclaims them rather than report exhaustion.
    for r in held {
        r.finish();
    }
    // Tests run in parallel, and another harness's idmapd scanning the host holds an fd of
    // every user namespace it finds until its scan ends: for that moment ours are still alive.
    wait_for("dead namespaces' ranges reclaimed", || {
        one(&small, None, &["allocate", "--name", "r2"])["ok"] == true
    });
}

#[test]
fn ranges_avoid_subordinate_ids_and_accounts() {
    let dir = std::env::temp_dir().join(format!("burrow-excl-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // Ranges of the pool, in order: subuid covers the first, a passwd entry sits in the
    // second, subgid reaches into the third, a group sits in the fourth. The fifth is free.
    std::fs::write(dir.join("subuid"), "someone:524288:65536\n").unwrap();
    std::fs::write(dir.join("passwd"), "far:x:600000:600000::/:/bin/false\n").unwrap();
    std::fs::write(dir.join("subgid"), "other:655000:1000\n").unwrap();
    std::fs::write(dir.join("group"), "farg:x:786000:\n").unwrap();
    let p = |f: &str| dir.join(f).display().to_string();
    let h = Harness::start(HarnessOptions {
        idmapd_args: vec![
            "--pool-start".into(),
            "524288".into(),
            "--pool-end".into(),
            (burrow_tests::pool_window(1) - 1).to_string(),
            "--subid-file".into(),
            p("subuid"),
            "--subid-file".into(),
            p("subgid"),
            "--id-db-file".into(),
            p("passwd"),
            "--id-db-file".into(),
            p("group"),
        ],
        ..Default::default()
    });
    // The pool's properties are the configured bounds.
    let props = one(&h, None, &["props"]);
    assert_eq!(props["pool_start"], 524288, "{props}");
    assert_eq!(
        props["pool_end"].as_u64(),
        Some(u64::from(burrow_tests::pool_window(1) - 1)),
        "{props}"
    );
    assert_eq!(props["range_size"], 65536, "{props}");
    let mut a = spawn(&h, None, &["allocate", "--name", "a", "--hold"]);
    assert_eq!(base_of(&a.next_json()), 524288 + 4 * 65536);
    let mut b = spawn(&h, None, &["allocate", "--name", "b", "--hold"]);
    assert_eq!(base_of(&b.next_json()), 524288 + 5 * 65536);
    // An account added right after an allocation counts for the next one: idmapd lists the
    // accounts anew when a file it read changed (useradd renames a new file over the old).
    std::fs::write(
        dir.join("passwd.new"),
        "far:x:600000:600000::/:/bin/false\nnew:x:917504:917504::/:/bin/false\n",
    )
    .unwrap();
    std::fs::rename(dir.join("passwd.new"), dir.join("passwd")).unwrap();
    let c = base_of(&one(&h, None, &["allocate", "--name", "c"]));
    assert_eq!(
        c,
        524288 + 7 * 65536,
        "the new account's range (the seventh) is skipped"
    );
    a.finish();
    b.finish();
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn pool_that_includes_root_is_refused_at_start() {
    let out = std::process::Command::new(burrow_tests::bin("burrow-idmapd"))
        .args(["--pool-start", "0", "--state-dir", "/tmp/burrow-never-used"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("host ID 0"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn bus_activation_and_idle_exit() {
    let h = Harness::start(HarnessOptions {
        idle_timeout_s: 1,
        ..Default::default()
    });
    assert!(
        !h.name_has_owner("org.burrow.IdMap1"),
        "helper running before any call"
    );
    assert_eq!(h.ranges_in_use(), 0);
    assert!(
        h.idmapd_pids().len() == 1,
        "the call did not activate the helper"
    );
    wait_for("idle exit", || h.idmapd_pids().is_empty());
    assert!(!h.name_has_owner("org.burrow.IdMap1"));
    let base = base_of(&one(&h, alice(), &["allocate", "--name", "again"]));
    assert!(base >= 524288);
}

/// A helper idle for a second unmaps its clean file pages (its code, its libraries'): most of
/// its file-backed resident memory goes, and the next call maps what it needs again.
#[test]
fn an_idle_helper_unmaps_its_code_and_serves_again() {
    let h = harness();
    assert!(base_of(&one(&h, alice(), &["allocate", "--name", "trim"])) > 0);
    let pid = h.idmapd_pids()[0];
    let mapped = burrow_tests::file_pages_kb(pid);
    wait_for("idmapd's file pages unmapped", || {
        burrow_tests::file_pages_kb(pid) < mapped / 2
    });
    assert_eq!(one(&h, alice(), &["release", "--name", "trim"])["ok"], true);
    assert_eq!(h.idmapd_pids(), vec![pid]);
}

#[test]
fn a_second_instance_is_refused() {
    let h = harness();
    assert_eq!(h.ranges_in_use(), 0);
    let out = h
        .command(burrow_tests::bin("burrow-idmapd"))
        .args(["--state-dir", &h.idmap_state_dir().display().to_string()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("another instance"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn release_while_alive_drains_and_frees_when_the_namespace_dies() {
    let h = harness();
    let mut held = spawn(&h, alice(), &["allocate", "--name", "live", "--hold"]);
    let base = base_of(&held.next_json());
    assert_eq!(one(&h, alice(), &["release", "--name", "live"])["ok"], true);
    // The name is free, the range is not: its namespace still runs with those IDs.
    assert_error(
        &one(&h, alice(), &["get", "--name", "live"]),
        "org.burrow.Error.NotFound",
    );
    assert_eq!(h.ranges_in_use(), 1);
    let mut other = spawn(&h, alice(), &["allocate", "--name", "live", "--hold"]);
    let other_base = base_of(&other.next_json());
    assert_ne!(other_base, base);
    held.finish();
    other.finish();
    assert_eq!(one(&h, alice(), &["release", "--name", "live"])["ok"], true);
    // A restart reclaims the drained range, and it is handed out again.
    restart_until_reclaimed(&h);
    assert_eq!(
        base_of(&one(&h, alice(), &["allocate", "--name", "reuse"])),
        base.min(other_base)
    );
}

#[test]
fn signals_announce_allocations() {
    let h = harness();
    let mut watcher = spawn(&h, bob(), &["watch-signals", "--count", "2"]);
    assert_eq!(watcher.next_json()["op"], "subscribed");
    let base = base_of(&one(&h, alice(), &["allocate", "--name", "sig"]));
    assert_eq!(one(&h, alice(), &["release", "--name", "sig"])["ok"], true);
    let uid = test_users().alice.uid;
    let allocated = watcher.next_json();
    assert_eq!(
        allocated,
        serde_json::json!({"signal": "Allocated", "uid": uid, "name": "sig", "base": base, "size": 65536})
    );
    let released = watcher.next_json();
    assert_eq!(
        released,
        serde_json::json!({"signal": "Released", "uid": uid, "name": "sig", "base": base})
    );
    watcher.finish();
}

/// A range `user` allocated under `name`, held by a process in its user namespace until the
/// returned client finishes: (client, base, that process's pid).
fn hold(h: &Harness, user: Option<User>, name: &str) -> (Running, u64, i64) {
    let mut held = spawn(h, user, &["allocate", "--name", name, "--hold"]);
    let allocated = held.next_json();
    let base = base_of(&allocated);
    let pid = allocated["holder_pid"].as_i64().unwrap();
    (held, base, pid)
}

/// `Join(existing, name, …)` as `user`, with the namespace that `how` (client arguments)
/// picks.
fn join(h: &Harness, user: Option<User>, existing: &str, name: &str, how: &[&str]) -> Value {
    let mut args = vec!["join", "--existing", existing, "--name", name];
    args.extend(how);
    one(h, user, &args)
}

/// (name, base) of every range `user` lists.
fn listed(h: &Harness, user: Option<User>) -> BTreeSet<(String, u64)> {
    one(h, user, &["list"])["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let name = e["name"].as_str().unwrap().to_string();
            (name, e["base"].as_u64().unwrap())
        })
        .collect()
}

/// A second container joins the first one's user namespace (a pod), for root and for a
/// tenant: it gets the same range under its own name; the range outlives the first holder's
/// Release and a kill -9 of idmapd, and goes only with the last holder.
#[test]
fn joined_range_is_shared_until_its_last_holder_releases_it() {
    let h = harness();
    for (user, stranger) in [(None, alice()), (alice(), Some(test_users().carol))] {
        let (held, base, pid) = hold(&h, user, "pod");
        let userns_of = ["--userns-of", &pid.to_string()].map(String::from);
        let userns_of: Vec<&str> = userns_of.iter().map(String::as_str).collect();
        assert_eq!(base_of(&join(&h, user, "pod", "app", &userns_of)), base);
        assert_eq!(base_of(&one(&h, user, &["get", "--name", "app"])), base);
        let both = BTreeSet::from([("pod".to_string(), base), ("app".to_string(), base)]);
        assert_eq!(listed(&h, user), both);
        assert_eq!(h.ranges_in_use(), 1, "a join took no new range");
        refusals_change_nothing(&h, user, stranger, &userns_of);

        // idmapd killed between Join and Release: both holders are still there.
        h.kill_idmapd();
        assert_eq!(listed(&h, user), both);

        // The first holder goes: the range stays the second's, and is no one else's.
        assert_eq!(one(&h, user, &["release", "--name", "pod"])["ok"], true);
        assert_error(
            &one(&h, user, &["get", "--name", "pod"]),
            "org.burrow.Error.NotFound",
        );
        assert_eq!(base_of(&one(&h, user, &["get", "--name", "app"])), base);
        let other = base_of(&one(&h, user, &["allocate", "--name", "other"]));
        assert_ne!(other, base);
        assert_eq!(one(&h, user, &["release", "--name", "other"])["ok"], true);

        // The last holder goes while the namespace lives: the range drains, then is freed.
        assert_eq!(one(&h, user, &["release", "--name", "app"])["ok"], true);
        assert!(listed(&h, user).is_empty());
        held.finish();
        wait_all_free(&h);
    }
}

/// What Join refuses (`user` holds `pod`, whose namespace `userns_of` names), each refusal
/// leaving the state as it was.
fn refusals_change_nothing(
    h: &Harness,
    user: Option<User>,
    stranger: Option<User>,
    userns_of: &[&str],
) {
    let before = h.persisted_records();
    for taken in ["pod", "app"] {
        assert_error(
            &join(h, user, "pod", taken, userns_of),
            "org.burrow.Error.AlreadyExists",
        );
        assert_error(
            &one(h, user, &["allocate", "--name", taken]),
            "org.burrow.Error.AlreadyExists",
        );
    }
    // Another namespace, even the caller's own: not the range's.
    for kind in ["fresh", "self-mapped"] {
        assert_error(
            &join(h, user, "pod", "x", &["--fd-kind", kind]),
            "org.burrow.Error.NotAuthorized",
        );
    }
    assert_error(
        &join(h, user, "pod", "x", &["--fd-kind", "file"]),
        "org.burrow.Error.InvalidArgument",
    );
    assert_error(
        &join(h, user, "nope", "x", userns_of),
        "org.burrow.Error.NotFound",
    );
    assert_error(
        &join(h, user, "pod", "../x", userns_of),
        "org.burrow.Error.InvalidArgument",
    );
    // Names are per caller: someone else's `pod` is not found.
    assert_error(
        &join(h, stranger, "pod", "x", &["--fd-kind", "fresh"]),
        "org.burrow.Error.NotFound",
    );
    assert_eq!(
        h.persisted_records(),
        before,
        "a refused join changed the state"
    );
}

/// The cgroup directories below `user`'s cgroup in the pids hierarchy that belong to `base`.
fn range_cgroups(uid: u32, base: u64) -> BTreeSet<String> {
    let user = format!("/sys/fs/cgroup/pids/burrow-users/user-{uid}");
    let range = format!("range-{base}");
    std::fs::read_dir(user)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| *n == range || n.starts_with(&format!("{range}-")))
                .collect()
        })
        .unwrap_or_default()
}

/// Each holder of a shared range gets its own delegated cgroup (`range-BASE` for the first
/// name, `range-BASE-NAME` for the others); a holder's goes at its Release, the rest when the
/// range is freed.
#[test]
fn each_holder_of_a_range_gets_its_own_cgroup() {
    let h = harness();
    let uid = test_users().alice.uid;
    let (held, base, pid) = hold(&h, alice(), "pod");
    let pid_arg = pid.to_string();
    let userns_of = ["--userns-of", pid_arg.as_str()];
    for name in ["app", "sidecar"] {
        assert_eq!(base_of(&join(&h, alice(), "pod", name, &userns_of)), base);
    }
    let add = |name: &str| {
        let v = one(
            &h,
            alice(),
            &["add-cgroup", "--name", name, "--pid", &pid_arg],
        );
        assert_eq!(v["ok"], true, "{name}: {v}");
        v["path"].as_str().unwrap().to_string()
    };
    let user_cgroup = format!("/burrow-users/user-{uid}");
    // The process moves from one holder's cgroup to the next, leaving each one empty.
    assert_eq!(add("app"), format!("{user_cgroup}/range-{base}-app"));
    assert_eq!(
        add("sidecar"),
        format!("{user_cgroup}/range-{base}-sidecar")
    );
    assert_eq!(add("pod"), format!("{user_cgroup}/range-{base}"));
    let in_cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    assert!(
        in_cgroup.contains(&format!("{user_cgroup}/range-{base}\n")),
        "{in_cgroup}"
    );
    let all: BTreeSet<String> = ["", "-app", "-sidecar"]
        .iter()
        .map(|holder| format!("range-{base}{holder}"))
        .collect();
    assert_eq!(range_cgroups(uid, base), all);

    for (name, left) in [
        ("app", vec![String::new(), "-sidecar".into()]),
        ("sidecar", vec![String::new()]),
    ] {
        assert_eq!(one(&h, alice(), &["release", "--name", name])["ok"], true);
        let left: BTreeSet<String> = left.iter().map(|l| format!("range-{base}{l}")).collect();
        assert_eq!(range_cgroups(uid, base), left, "after releasing {name}");
    }
    // The last holder goes while its process still runs: the range drains, and its cgroups go
    // once the namespace is gone.
    assert_eq!(one(&h, alice(), &["release", "--name", "pod"])["ok"], true);
    assert_eq!(range_cgroups(uid, base).len(), 1);
    held.finish();
    wait_all_free(&h);
    wait_for("the range's cgroups removed", || {
        range_cgroups(uid, base).is_empty()
    });
}

/// Many Allocates waiting for polkit at once, more than may hold a worker meanwhile (the rest
/// wait for polkit first): every call of a member of group `burrow` gets a range, every call of
/// a user polkit refuses is refused, and nothing is left held.
#[test]
fn a_crowd_of_allocates_waiting_for_polkit_is_answered_each_as_alone() {
    let h = Harness::start(HarnessOptions {
        idmapd_args: vec!["--polkit-grant-seconds".into(), "0".into()],
        ..Default::default()
    });
    let (clients, per_client) = (24, 4);
    let children: Vec<_> = (0..clients)
        .map(|i| {
            let refused = i % 3 == 0;
            let user = if refused { bob() } else { alice() };
            let child = h
                .client(user)
                .args(["cycles", "--prefix", &format!("crowd{i}")])
                .args(["--count", &per_client.to_string()])
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            (refused, child)
        })
        .collect();
    let mut allocated = 0;
    for (refused, child) in children {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", h.log());
        for line in json_lines(&out.stdout) {
            if refused {
                assert_eq!(line["error"], "org.burrow.Error.NotAuthorized", "{line}");
            } else {
                assert_eq!(line["ok"], true, "{line}");
                allocated += 1;
            }
        }
    }
    assert_eq!(allocated, (clients - clients / 3) * per_client);
    wait_all_free(&h);
}

/// Ranges of one user that drain at about the same time lose every cgroup. The drain watch
/// frees them in one batch or a few, listing the user's cgroup once per batch (the listing's
/// sharing is unit-tested in idmapd's cgroups.rs).
#[test]
fn ranges_drained_together_lose_all_their_cgroups() {
    let h = harness();
    let uid = test_users().alice.uid;
    let held: Vec<_> = ["pod-a", "pod-b", "pod-c"]
        .into_iter()
        .map(|name| {
            let (held, base, pid) = hold(&h, alice(), name);
            let v = one(
                &h,
                alice(),
                &["add-cgroup", "--name", name, "--pid", &pid.to_string()],
            );
            assert_eq!(v["ok"], true, "{name}: {v}");
            assert_eq!(range_cgroups(uid, base).len(), 1, "{name}'s cgroup");
            assert_eq!(one(&h, alice(), &["release", "--name", name])["ok"], true);
            (held, base)
        })
        .collect();
    let bases: Vec<u64> = held.iter().map(|(_, base)| *base).collect();
    // Their processes end one after another: the three ranges drain and are freed together,
    // or nearly.
    for (held, _) in held {
        held.finish();
    }
    wait_all_free(&h);
    for base in bases {
        wait_for(&format!("range {base}'s cgroups removed"), || {
            range_cgroups(uid, base).is_empty()
        });
    }
}

/// Every name a range is held under is announced: Join with `Allocated`, each Release with
/// `Released`.
#[test]
fn signals_announce_each_holder() {
    let h = harness();
    let mut watcher = spawn(&h, bob(), &["watch-signals", "--count", "4"]);
    assert_eq!(watcher.next_json()["op"], "subscribed");
    let (held, base, pid) = hold(&h, alice(), "pod");
    let pid = pid.to_string();
    assert_eq!(
        base_of(&join(&h, alice(), "pod", "app", &["--userns-of", &pid])),
        base
    );
    for name in ["app", "pod"] {
        assert_eq!(one(&h, alice(), &["release", "--name", name])["ok"], true);
    }
    let uid = test_users().alice.uid;
    let allocated = |name| serde_json::json!({"signal": "Allocated", "uid": uid, "name": name, "base": base, "size": 65536});
    let released =
        |name| serde_json::json!({"signal": "Released", "uid": uid, "name": name, "base": base});
    for expected in [
        allocated("pod"),
        allocated("app"),
        released("app"),
        released("pod"),
    ] {
        assert_eq!(watcher.next_json(), expected);
    }
    watcher.finish();
    held.finish();
}

/// A range recorded by an idmapd before nsfs handles (an inode number, no namespace id, no
/// holders) is still held by its name, but no namespace can be shown to be its own: Join
/// refuses it by name, and nothing changes.
#[test]
fn a_range_recorded_without_its_namespace_id_cannot_be_joined() {
    let h = harness();
    let (held, base, pid) = hold(&h, alice(), "pod");
    let legacy_base = base + 8 * RANGE;
    let legacy = serde_json::json!({
        "uid": test_users().alice.uid, "name": "legacy", "base": legacy_base, "size": 65536,
        "userns": 4026532000u64, "state": "held", "created": 0,
    });
    let record = h.idmap_state_dir().join(format!("{legacy_base}.json"));
    std::fs::write(&record, legacy.to_string()).unwrap();
    h.kill_idmapd();
    assert_eq!(
        base_of(&one(&h, alice(), &["get", "--name", "legacy"])),
        legacy_base
    );
    let before = h.persisted_records();
    let pid = pid.to_string();
    let refused = join(&h, alice(), "legacy", "app", &["--userns-of", &pid]);
    burrow_tests::assert_error_says(&refused, "org.burrow.Error.NotAuthorized", "older idmapd");
    let foreign = join(&h, alice(), "pod", "app", &["--fd-kind", "fresh"]);
    burrow_tests::assert_error_says(&foreign, "org.burrow.Error.NotAuthorized", "not the one");
    assert_eq!(h.persisted_records(), before);
    std::fs::remove_file(&record).unwrap();
    h.kill_idmapd();
    assert_eq!(one(&h, alice(), &["release", "--name", "pod"])["ok"], true);
    held.finish();
    wait_all_free(&h);
}
