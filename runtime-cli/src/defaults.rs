//! What a container gets where its spec says nothing: one source for `burrow spec`, the bundle
//! loader, `exec` and the PATH lookup.

/// The search path of a process whose environment has none (runc's, Docker's).
pub const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// runc's default masked paths, used when the spec names none.
pub const MASKED_PATHS: [&str; 11] = [
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// runc's default read-only paths, used when the spec names none.
pub const READONLY_PATHS: [&str; 5] = [
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// A mount every system container gets, unless its spec has one at that destination.
pub struct StandardMount {
    pub destination: &'static str,
    pub typ: &'static str,
    pub options: &'static [&'static str],
}

pub const MOUNTS: [StandardMount; 6] = [
    StandardMount {
        destination: "/proc",
        typ: "proc",
        options: &["nosuid", "noexec", "nodev"],
    },
    StandardMount {
        destination: "/sys",
        typ: "sysfs",
        options: &["nosuid", "noexec", "nodev", "ro"],
    },
    StandardMount {
        destination: "/dev/pts",
        typ: "devpts",
        options: &[
            "nosuid",
            "noexec",
            "newinstance",
            "ptmxmode=0666",
            "mode=0620",
            "gid=5",
        ],
    },
    StandardMount {
        destination: "/dev/mqueue",
        typ: "mqueue",
        options: &["nosuid", "noexec", "nodev"],
    },
    StandardMount {
        destination: "/dev/shm",
        typ: "tmpfs",
        options: &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
    },
    // Writable: the container's root owns its own subtree of the cgroups (never a limit
    // file), which systemd and Docker inside need.
    StandardMount {
        destination: "/sys/fs/cgroup",
        typ: "cgroup",
        options: &["nosuid", "noexec", "nodev"],
    },
];

/// The spec `burrow spec` writes.
pub fn spec() -> serde_json::Value {
    let mounts: Vec<serde_json::Value> = MOUNTS
        .iter()
        .map(|m| {
            serde_json::json!({"destination": m.destination, "type": m.typ, "source": m.typ,
                "options": m.options})
        })
        .collect();
    serde_json::json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": true,
            "user": {"uid": 0, "gid": 0},
            "args": ["sh"],
            "env": [format!("PATH={PATH}"), "TERM=xterm"],
            "cwd": "/",
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": true
        },
        "root": {"path": "rootfs", "readonly": false},
        "hostname": "burrow",
        "mounts": mounts,
        "linux": {
            "namespaces": [{"type": "pid"}, {"type": "network"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}, {"type": "cgroup"}],
            "maskedPaths": MASKED_PATHS,
            "readonlyPaths": READONLY_PATHS
        }
    })
}
