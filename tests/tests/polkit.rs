//! The helpers remember polkit's grants for a few seconds (sys/src/authz/grants.rs), against a
//! real polkitd: a binary of its own, because it adds a polkit rule every polkitd on the
//! machine reads.

use std::fs;
use std::time::{Duration, Instant};

use burrow_tests::{assert_error, json_lines, test_users, Harness, HarnessOptions};
use serde_json::Value;

/// While this file exists, polkit grants burrow-bob Allocate: a change polkit never hears of,
/// as when an admin removes a user from group `burrow`.
const FLAG: &str = "/run/burrow-test-polkit-flag";

/// The test's rule (removed by `make test-clean` too, should the test be killed).
const RULE: &str = "/etc/polkit-1/rules.d/40-burrow-test-grants.rules";

/// Removes the rule and the flag, however the test ends.
struct Rule;

impl Rule {
    fn install() -> Self {
        fs::write(
            RULE,
            format!(
                "// Burrow's tests: burrow-bob may allocate while {FLAG} exists.\n\
                 polkit.addRule(function(action, subject) {{\n\
                 \x20   if (action.id == \"org.burrow.idmap.allocate\" && subject.user == \"burrow-bob\") {{\n\
                 \x20       try {{\n\
                 \x20           polkit.spawn([\"/usr/bin/test\", \"-e\", \"{FLAG}\"]);\n\
                 \x20           return polkit.Result.YES;\n\
                 \x20       }} catch (error) {{\n\
                 \x20           return polkit.Result.NO;\n\
                 \x20       }}\n\
                 \x20   }}\n\
                 }});\n"
            ),
        )
        .expect("write the test's polkit rule");
        Rule
    }
}

impl Drop for Rule {
    fn drop(&mut self) {
        let _ = fs::remove_file(RULE);
        let _ = fs::remove_file(FLAG);
    }
}

fn set_flag(on: bool) {
    if on {
        fs::write(FLAG, "").unwrap();
    } else {
        fs::remove_file(FLAG).unwrap();
    }
}

/// Allocate as burrow-bob under a fresh name (the client's namespace, and so the range, goes
/// when it exits): whether it was granted.
fn bob_allocates(h: &Harness) -> bool {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    let name = format!("grant{}", N.fetch_add(1, Ordering::Relaxed));
    let out = h
        .client(Some(test_users().bob))
        .args(["allocate", "--name", &name])
        .output()
        .unwrap();
    let lines = json_lines(&out.stdout);
    let answer: &Value = &lines[0];
    if answer["ok"] == true {
        return true;
    }
    assert_error(answer, "org.burrow.Error.NotAuthorized");
    false
}

/// Asks every 50 ms until burrow-bob is refused: how long after `since` that was.
fn refused_after(h: &Harness, since: Instant, limit: Duration) -> Duration {
    while bob_allocates(h) {
        assert!(since.elapsed() < limit, "still granted after {limit:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    since.elapsed()
}

#[test]
fn grants_are_remembered_for_a_while_and_forgotten_when_polkit_changes() {
    const REMEMBERED: Duration = Duration::from_secs(10);
    // A grant forgotten at a change is refused well before it is REMEMBERED old.
    const SOON: Duration = Duration::from_secs(7);
    let _rule = Rule::install();
    let mut h = Harness::start(HarnessOptions {
        idmapd_args: vec![
            "--polkit-grant-seconds".into(),
            REMEMBERED.as_secs().to_string(),
        ],
        ..Default::default()
    });

    // A refusal is never remembered: the grant counts at the next call.
    assert!(!bob_allocates(&h));
    set_flag(true);
    // Taken before the call: the helper remembers the grant later than this.
    let granted = Instant::now();
    assert!(bob_allocates(&h), "granted once polkit says yes");

    // polkit would refuse now, but the grant is remembered until it is REMEMBERED old.
    set_flag(false);
    assert!(bob_allocates(&h), "the grant is remembered");
    let refused = refused_after(&h, granted, REMEMBERED + Duration::from_secs(3));
    assert!(
        refused >= REMEMBERED,
        "refused {refused:?} after the grant, before it was {REMEMBERED:?} old"
    );

    // A change of polkit's rules forgets every grant at once.
    set_flag(true);
    let granted = Instant::now();
    assert!(bob_allocates(&h));
    set_flag(false);
    assert!(bob_allocates(&h), "the grant is remembered");
    // The same rule, written again: polkitd reloads its rules and says `Changed`.
    fs::write(RULE, fs::read(RULE).unwrap()).unwrap();
    let refused = refused_after(&h, granted, REMEMBERED);
    assert!(
        refused < SOON,
        "refused only {refused:?} after the grant, though polkit's rules changed"
    );

    // So does a new polkitd.
    set_flag(true);
    let granted = Instant::now();
    assert!(bob_allocates(&h));
    set_flag(false);
    h.restart_polkitd();
    let refused = refused_after(&h, granted, REMEMBERED);
    assert!(
        refused < SOON,
        "refused only {refused:?} after the grant, though polkitd was replaced"
    );
}
