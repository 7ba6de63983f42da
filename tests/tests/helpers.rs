//! Properties all three helpers share: they drop every capability they do not need at start
//! (DESIGN invariant 5), are bus-activated, and show their interface to `busctl introspect`.

use burrow_tests::{Harness, HarnessOptions};

fn mask(bits: &[u32]) -> u64 {
    bits.iter().fold(0, |m, b| m | 1 << b)
}

// Capability numbers from <linux/capability.h>.
const CHOWN: u32 = 0;
const DAC_OVERRIDE: u32 = 1;
const DAC_READ_SEARCH: u32 = 2;
const FOWNER: u32 = 3;
const FSETID: u32 = 4;
const SETGID: u32 = 6;
const SETUID: u32 = 7;
const SYS_CHROOT: u32 = 18;
const SYS_PTRACE: u32 = 19;
const SYS_NICE: u32 = 23;
const SYS_ADMIN: u32 = 21;
const MKNOD: u32 = 27;
const SETFCAP: u32 = 31;

fn capabilities(pid: i32) -> std::collections::BTreeMap<String, u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .filter(|l| l.starts_with("Cap"))
        .map(|l| {
            let (k, v) = l.split_once(':').unwrap();
            (k.to_string(), u64::from_str_radix(v.trim(), 16).unwrap())
        })
        .collect()
}

#[test]
fn helpers_keep_only_the_capabilities_they_need() {
    let h = Harness::start(HarnessOptions::default());
    let expected = [
        (
            "org.burrow.IdMap1",
            "/org/burrow/IdMap1",
            "burrow-idmapd",
            mask(&[
                SYS_ADMIN,
                SETUID,
                SETGID,
                SETFCAP,
                SYS_PTRACE,
                DAC_READ_SEARCH,
                CHOWN,
                SYS_NICE,
            ]),
        ),
        (
            "org.burrow.Dev1",
            "/org/burrow/Dev1",
            "burrow-devd",
            mask(&[SYS_ADMIN, MKNOD, CHOWN]),
        ),
        (
            "org.burrow.Mount1",
            "/org/burrow/Mount1",
            "burrow-mountd",
            mask(&[
                SYS_ADMIN,
                SYS_CHROOT,
                SYS_PTRACE,
                SETUID,
                SETGID,
                DAC_OVERRIDE,
                DAC_READ_SEARCH,
                CHOWN,
                FOWNER,
                FSETID,
                MKNOD,
            ]),
        ),
    ];
    for (name, path, binary, caps) in expected {
        assert!(!h.name_has_owner(name), "{name} running before any call");
        let out = h.busctl(&["introspect", name, path]);
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains(&format!("{name} ")),
            "{name} interface missing:\n{text}"
        );
        let pids = h.helper_pids(binary);
        assert_eq!(pids.len(), 1, "{binary} not activated by the call");
        let got = capabilities(pids[0]);
        for set in ["CapEff", "CapPrm", "CapBnd"] {
            assert_eq!(
                got[set], caps,
                "{binary} {set} is {:#x}, expected {caps:#x}",
                got[set]
            );
        }
        assert_eq!(got["CapInh"], 0, "{binary} keeps inheritable capabilities");
        assert_eq!(got["CapAmb"], 0, "{binary} keeps ambient capabilities");
    }
}
