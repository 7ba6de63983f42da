//! What a container's /dev holds: the fixed standard set, and extra devices an admin allows.

use std::collections::BTreeSet;
use std::path::Path;

/// A character device node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// Path below /dev, e.g. `null` or `net/tun`.
    pub name: String,
    pub major: u32,
    pub minor: u32,
    pub mode: u32,
}

/// The nodes every container gets, with the modes a normal host gives them.
pub fn standard_nodes() -> Vec<Node> {
    burrow_contract::dev::STANDARD_NODES
        .into_iter()
        .map(|(name, major, minor)| Node {
            name: name.into(),
            major,
            minor,
            mode: 0o666,
        })
        .collect()
}

/// Directories the container's mounts go on (devpts, shm, mqueue), with their usual modes.
pub const DIRECTORIES: [(&str, u32); 3] = [("pts", 0o755), ("shm", 0o1777), ("mqueue", 0o1777)];

/// The usual links.
pub const LINKS: [(&str, &str); 5] = [
    ("ptmx", "pts/ptmx"),
    ("fd", "/proc/self/fd"),
    ("stdin", "/proc/self/fd/0"),
    ("stdout", "/proc/self/fd/1"),
    ("stderr", "/proc/self/fd/2"),
];

/// Character devices no allowlist can grant: raw memory and I/O ports, the kernel log.
const NEVER: [(u32, u32, &str); 4] = [
    (1, 1, "mem"),
    (1, 2, "kmem"),
    (1, 4, "port"),
    (1, 11, "kmsg"),
];

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum DeviceError {
    #[error(
        "device name {0:?} is malformed (use a path below /dev such as \"fuse\" or \"net/tun\")"
    )]
    BadName(String),
    #[error("device {0:?} is not in the admin's allowlist ({1})")]
    NotAllowed(String, String),
    #[error("/dev/{0} on the host is not a character device")]
    NotCharDevice(String),
    #[error("/dev/{0} is {1} ({2}:{3}), which is never given to a container")]
    Forbidden(String, &'static str, u32, u32),
    #[error("/dev/{0} on the host: {1}")]
    Host(String, String),
}

/// A name below /dev: lowercase letters, digits, `-`, `_`, separated by single `/`.
pub fn validate_device_name(name: &str) -> Result<(), DeviceError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.split('/').all(|part| {
            !part.is_empty()
                && part
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        });
    if ok {
        Ok(())
    } else {
        Err(DeviceError::BadName(name.to_string()))
    }
}

/// The admin's allowlist: one device name per line, `#` starts a comment. Malformed lines
/// are ignored with a warning; a missing file allows nothing.
pub fn parse_allowlist(text: &str) -> BTreeSet<String> {
    text.lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter(|l| !l.is_empty())
        .filter(|l| match validate_device_name(l) {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(line = l, error = %e, "ignoring allowlist entry");
                false
            }
        })
        .map(String::from)
        .collect()
}

/// Resolves a requested extra device against the allowlist and the host's /dev.
pub fn extra_node(
    name: &str,
    allowlist: &BTreeSet<String>,
    allowlist_path: &Path,
    host_dev: &Path,
) -> Result<Node, DeviceError> {
    validate_device_name(name)?;
    if !allowlist.contains(name) {
        return Err(DeviceError::NotAllowed(
            name.into(),
            allowlist_path.display().to_string(),
        ));
    }
    // By name too, so the answer does not depend on whether this host has the node.
    if let Some((major, minor, what)) = NEVER.iter().find(|(_, _, never)| *never == name) {
        return Err(DeviceError::Forbidden(name.into(), what, *major, *minor));
    }
    let st = rustix::fs::lstat(host_dev.join(name))
        .map_err(|e| DeviceError::Host(name.into(), e.to_string()))?;
    if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::CharacterDevice {
        return Err(DeviceError::NotCharDevice(name.into()));
    }
    let (major, minor) = (rustix::fs::major(st.st_rdev), rustix::fs::minor(st.st_rdev));
    if let Some((_, _, what)) = NEVER
        .iter()
        .find(|(ma, mi, _)| (*ma, *mi) == (major, minor))
    {
        return Err(DeviceError::Forbidden(name.into(), what, major, minor));
    }
    Ok(Node {
        name: name.into(),
        major,
        minor,
        mode: st.st_mode & 0o777,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_names() {
        for ok in ["fuse", "net/tun", "kvm", "dri/card0", "vhost-net"] {
            validate_device_name(ok).unwrap();
        }
        for bad in [
            "",
            "../etc",
            "/dev/fuse",
            "net//tun",
            "Fuse",
            "a/../b",
            "sda\0",
            "x/",
        ] {
            assert!(validate_device_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn allowlist_ignores_comments_and_junk() {
        let list = parse_allowlist("# extra devices\nfuse\n  net/tun  # tun\n../etc/shadow\n\n");
        assert_eq!(list.into_iter().collect::<Vec<_>>(), ["fuse", "net/tun"]);
    }

    #[test]
    fn host_devices_are_checked() {
        let dir = std::env::temp_dir().join(format!("devd-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("plain"), b"").unwrap();
        let allow: BTreeSet<String> = [
            "plain".to_string(),
            "null".to_string(),
            "missing".to_string(),
        ]
        .into();
        let list = Path::new("/etc/burrow/devd-allowlist");
        assert_eq!(
            extra_node("plain", &allow, list, &dir),
            Err(DeviceError::NotCharDevice("plain".into()))
        );
        assert!(matches!(
            extra_node("missing", &allow, list, &dir),
            Err(DeviceError::Host(..))
        ));
        assert!(matches!(
            extra_node("zero", &allow, list, Path::new("/dev")),
            Err(DeviceError::NotAllowed(..))
        ));
        let null = extra_node("null", &allow, list, Path::new("/dev")).unwrap();
        assert_eq!((null.major, null.minor), (1, 3));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
