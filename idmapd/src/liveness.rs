//! Which ranges are still in use? A user namespace lives while anything references it: a
//! process in it, an fd or bind mount of it, a child user namespace, or another namespace it
//! owns (e.g. a network namespace kept by `ip netns`). The scan follows all of those from every
//! process on the host and keeps one fd per user namespace it found.
//!
//! Namespace inode numbers are reused as soon as a namespace dies, so a matching inode alone
//! proves nothing: a range counts as in use only if the namespace with that inode really maps
//! it. When in doubt (the map cannot be read), the range counts as in use: a range may be kept
//! longer than needed, never handed out twice.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;

use burrow_bus::userns::{self, NsId, NsWorker};

/// How we can look at a live user namespace.
struct Witness {
    fd: OwnedFd,
    /// A process that was a direct member when scanned (its map is readable without forking).
    member: Option<u32>,
    /// The process through which the scan found it, for logs.
    found_via: u32,
}

#[derive(Default)]
pub struct LiveNamespaces {
    users: HashMap<NsId, Witness>,
    /// Links like `net:[4026532008]` already followed, to open each namespace once.
    seen_links: HashSet<String>,
    seen_mount_ns: HashSet<String>,
    /// The process being scanned.
    scanning: u32,
}

impl LiveNamespaces {
    /// Scans every process but this helper and its own workers: the helper holds callers'
    /// namespace fds only while serving a request (and its bus library may keep a received
    /// message, fds included, queued a little longer), which is no use of the range.
    pub fn scan() -> Self {
        let mut live = LiveNamespaces::default();
        let Ok(procs) = fs::read_dir("/proc") else {
            return live;
        };
        let me = std::process::id();
        let workers = own_children();
        for pid in procs.flatten().map(|e| e.file_name()) {
            let Some(pid) = pid.to_str().and_then(|p| p.parse::<u32>().ok()) else {
                continue;
            };
            let proc_dir = Path::new("/proc").join(pid.to_string());
            if pid == me || workers.contains(&pid) {
                continue;
            }
            live.scanning = pid;
            live.follow_member(pid, &proc_dir);
            live.follow_links_in(&proc_dir.join("ns"));
            live.follow_links_in(&proc_dir.join("fd"));
            live.follow_nsfs_mounts(&proc_dir);
        }
        live
    }

    /// A process that keeps the namespace `id` alive, as "PID (COMM)", for logs.
    pub fn holder(&self, id: &NsId) -> Option<String> {
        let pid = self.users.get(id)?.found_via;
        let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        Some(format!("{pid} ({})", comm.trim()))
    }

    /// Does the live namespace `id` map `base..base+size` (as `0 base size`)?
    pub fn maps_range(&self, id: &NsId, base: u32, size: u32) -> bool {
        let Some(witness) = self.users.get(id) else {
            return false;
        };
        let expected = format!("0 {base} {size}");
        if let Some(pid) = witness.member {
            if let Ok(map) = fs::read_to_string(format!("/proc/{pid}/uid_map")) {
                // The pid may have exited and been reused since the scan: trust the map only if
                // the process is still in the namespace.
                if member_of(pid) == Some(*id) {
                    return first_line_is(&map, &expected);
                }
            }
        }
        match NsWorker::spawn(witness.fd.as_fd()) {
            Ok(worker) => match fs::read_to_string(worker.proc_path("uid_map")) {
                Ok(map) => first_line_is(&map, &expected),
                Err(_) => true,
            },
            Err(e) => {
                tracing::warn!(ns = id.ino, error = %e, "cannot enter namespace to read its map; keeping its range");
                true
            }
        }
    }

    fn follow_member(&mut self, pid: u32, proc_dir: &Path) {
        let Ok(file) = File::open(proc_dir.join("ns/user")) else {
            return;
        };
        let Ok(id) = NsId::of(file.as_fd()) else {
            return;
        };
        match self.users.get_mut(&id) {
            Some(witness) => {
                witness.member.get_or_insert(pid);
            }
            None => {
                self.follow_user_ancestry(file.as_fd());
                if let Some(witness) = self.users.get_mut(&id) {
                    witness.member = Some(pid);
                }
            }
        }
    }

    fn follow_links_in(&mut self, dir: &Path) {
        let Ok(entries) = fs::read_dir(dir) else {
            return;
        };
        for path in entries.flatten().map(|e| e.path()) {
            let Ok(target) = fs::read_link(&path) else {
                continue;
            };
            let target = target.to_string_lossy().into_owned();
            if is_ns_link(&target) && self.seen_links.insert(target) {
                self.follow_path(&path);
            }
        }
    }

    /// Namespaces bind-mounted somewhere (nsfs mounts), once per mount namespace.
    fn follow_nsfs_mounts(&mut self, proc_dir: &Path) {
        let Ok(mnt_ns) = fs::read_link(proc_dir.join("ns/mnt")) else {
            return;
        };
        if !self
            .seen_mount_ns
            .insert(mnt_ns.to_string_lossy().into_owned())
        {
            return;
        }
        let Ok(mountinfo) = fs::read_to_string(proc_dir.join("mountinfo")) else {
            return;
        };
        for line in mountinfo.lines() {
            let Some((fields, tail)) = line.split_once(" - ") else {
                continue;
            };
            if tail.split(' ').next() != Some("nsfs") {
                continue;
            }
            let Some(mount_point) = fields.split(' ').nth(4) else {
                continue;
            };
            let mount_point = unescape_mountinfo(mount_point);
            self.follow_path(
                &proc_dir
                    .join("root")
                    .join(mount_point.trim_start_matches('/')),
            );
        }
    }

    fn follow_path(&mut self, path: &Path) {
        if let Ok(file) = File::open(path) {
            self.follow_ns(file.as_fd());
        }
    }

    fn follow_ns(&mut self, ns: BorrowedFd<'_>) {
        match userns::ns_type(ns) {
            Some(libc::CLONE_NEWUSER) => self.follow_user_ancestry(ns),
            Some(_) => {
                if let Ok(owner) = userns::owning_userns(ns) {
                    self.follow_user_ancestry(owner.as_fd());
                }
            }
            None => {}
        }
    }

    fn follow_user_ancestry(&mut self, ns: BorrowedFd<'_>) {
        let Ok(mut current) = ns.try_clone_to_owned() else {
            return;
        };
        loop {
            let Ok(id) = NsId::of(current.as_fd()) else {
                return;
            };
            if self.users.contains_key(&id) {
                return;
            }
            let parent = userns::parent_userns(current.as_fd());
            self.users.insert(
                id,
                Witness {
                    fd: current,
                    member: None,
                    found_via: self.scanning,
                },
            );
            match parent {
                Some(parent) => current = parent,
                None => return,
            }
        }
    }
}

/// Children of any thread of this process (the helper's namespace workers).
fn own_children() -> HashSet<u32> {
    let Ok(tasks) = fs::read_dir("/proc/self/task") else {
        return HashSet::new();
    };
    tasks
        .flatten()
        .filter_map(|task| fs::read_to_string(task.path().join("children")).ok())
        .flat_map(|list| {
            list.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect()
}

fn member_of(pid: u32) -> Option<NsId> {
    let file = File::open(format!("/proc/{pid}/ns/user")).ok()?;
    NsId::of(file.as_fd()).ok()
}

fn first_line_is(map: &str, expected: &str) -> bool {
    let first: Vec<&str> = map
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    first == expected.split(' ').collect::<Vec<_>>()
}

fn is_ns_link(target: &str) -> bool {
    const KINDS: [&str; 8] = [
        "user:[", "net:[", "mnt:[", "pid:[", "ipc:[", "uts:[", "cgroup:[", "time:[",
    ];
    KINDS.iter().any(|k| target.starts_with(k))
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape_mountinfo(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            out.push(
                (bytes[i + 1] - b'0') * 64 + (bytes[i + 2] - b'0') * 8 + (bytes[i + 3] - b'0'),
            );
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unescapes_mountinfo_octal() {
        assert_eq!(unescape_mountinfo(r"/run/a\040b"), "/run/a b");
        assert_eq!(unescape_mountinfo(r"/x\134y"), r"/x\y");
        assert_eq!(unescape_mountinfo("/plain"), "/plain");
    }

    #[test]
    fn compares_map_lines_ignoring_padding() {
        assert!(first_line_is(
            "         0     524288      65536\n",
            "0 524288 65536"
        ));
        assert!(!first_line_is(
            "         0     524288      65535\n",
            "0 524288 65536"
        ));
        assert!(!first_line_is("", "0 524288 65536"));
    }

    #[test]
    fn host_user_namespace_is_found_and_maps_the_host() {
        let own = File::open("/proc/self/ns/user").unwrap();
        let id = NsId::of(own.as_fd()).unwrap();
        let live = LiveNamespaces::scan();
        // Found through other processes (pid 1 at least), not through this one.
        assert!(live.users.contains_key(&id));
        assert!(live.maps_range(&id, 0, 4294967295));
        assert!(!live.maps_range(&id, 524288, 65536));
    }
}
