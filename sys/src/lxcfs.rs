//! lxcfs, the host's FUSE filesystem that answers /proc/meminfo, /proc/uptime and the like by
//! the reading process's cgroup and pid namespace (LXC's and Incus's). Where it runs, mountd
//! binds its files over the container's own. Whether it runs is read from mountinfo only: a
//! stat of a FUSE path would wait on the FUSE daemon.

use crate::mountinfo::Mount;

/// Where the host mounts lxcfs (Debian's unit: `lxcfs /var/lib/lxcfs`). A host fact, never a
/// caller's input.
pub const LXCFS_DIR: &str = "/var/lib/lxcfs";

/// The /proc files lxcfs answers, each bound over the container's own (relative to /proc and
/// to lxcfs's `proc/`).
pub const PROC_FILES: [&str; 8] = [
    "meminfo",
    "cpuinfo",
    "stat",
    "uptime",
    "loadavg",
    "diskstats",
    "swaps",
    "slabinfo",
];

/// The CPU directory lxcfs answers (its `online` file by the reader's cpuset), relative to the
/// container's root and to lxcfs's mount.
pub const CPU_DIR: &str = "sys/devices/system/cpu";

/// Whether `mount` is lxcfs as the host runs it: the whole filesystem at [`LXCFS_DIR`], mounted
/// by root (`user_id=0`) and open to every user (`allow_other`, without which the kernel refuses
/// the container's processes).
pub fn is_hosts_lxcfs(mount: &Mount) -> bool {
    mount.mount_point == LXCFS_DIR
        && mount.fs_type == "fuse.lxcfs"
        && mount.root == "/"
        && mount.super_option("user_id") == Some("0")
        && mount.super_options.iter().any(|o| o == "allow_other")
}

/// Whether lxcfs is mounted at [`LXCFS_DIR`] in the calling process's mount namespace (the
/// topmost mount there decides). A dead lxcfs whose mount was left behind still counts: its
/// files answer ENOTCONN (docs/operations.md).
pub fn mounted() -> bool {
    crate::mountinfo::own().is_ok_and(|mounts| {
        mounts
            .iter()
            .rev()
            .find(|m| m.mount_point == LXCFS_DIR)
            .is_some_and(is_hosts_lxcfs)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mountinfo::parse;

    #[test]
    fn only_roots_lxcfs_open_to_all_counts() {
        let line = |tail: &str| parse(&format!("46 27 0:42 / {LXCFS_DIR} rw,nosuid - {tail}"));
        let ok = line("fuse.lxcfs lxcfs rw,user_id=0,group_id=0,allow_other");
        assert!(is_hosts_lxcfs(&ok[0]));
        for tail in [
            "fuse.lxcfs lxcfs rw,user_id=1000,group_id=0,allow_other",
            "fuse.lxcfs lxcfs rw,user_id=0,group_id=0",
            "fuse.other x rw,user_id=0,group_id=0,allow_other",
            "tmpfs tmpfs rw",
        ] {
            assert!(!is_hosts_lxcfs(&line(tail)[0]), "{tail}");
        }
        let elsewhere = parse("46 27 0:42 / /mnt rw - fuse.lxcfs lxcfs rw,user_id=0,allow_other");
        assert!(!is_hosts_lxcfs(&elsewhere[0]));
    }
}
