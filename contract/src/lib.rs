//! Burrow's D-Bus contract: what the helpers and their clients agree on. Bus names, object
//! paths, polkit actions, the errors on the wire, typed proxies, and the typed values they
//! exchange (the BuildRoot plan). Nothing here acts on the system.

pub mod error;
mod plan;
pub mod proxy;

pub use error::BurrowError;

/// Number of IDs each container gets in its user namespace, and the alignment of every range.
pub const RANGE_SIZE: u32 = 65536;

pub mod idmap {
    pub const BUS_NAME: &str = "org.burrow.IdMap1";
    pub const OBJECT_PATH: &str = "/org/burrow/IdMap1";
    /// polkit action a non-root caller needs to allocate an ID range.
    pub const ACTION_ALLOCATE: &str = "org.burrow.idmap.allocate";
    /// polkit action a non-root caller needs to hold a range it holds already under one more
    /// name, for another container in the same user namespace (a pod).
    pub const ACTION_JOIN: &str = "org.burrow.idmap.join";
    /// polkit action a non-root caller needs to keep a range it holds reserved for its name
    /// after its container stops (parked instead of freed), until it forgets it.
    pub const ACTION_KEEP: &str = "org.burrow.idmap.keep";
    /// polkit action a non-root caller needs to get a delegated cgroup for a range's namespace.
    pub const ACTION_CGROUP: &str = "org.burrow.idmap.cgroup";
    /// Where idmapd puts non-root users' containers, in every cgroup hierarchy: the admin's
    /// per-user limits on `user-UID`, one delegated cgroup per range below it.
    pub const CGROUP_ROOT: &str = "/burrow-users";
}

pub mod dev {
    pub const BUS_NAME: &str = "org.burrow.Dev1";
    pub const OBJECT_PATH: &str = "/org/burrow/Dev1";
    pub const ACTION_CREATE: &str = "org.burrow.dev.create";
    pub const ACTION_EXTRA: &str = "org.burrow.dev.extra";
    /// The character devices devd puts in every container's /dev, as (name below /dev, major,
    /// minor). A container's device policy allows exactly these, its pseudo-terminals and the
    /// extras it was granted.
    pub const STANDARD_NODES: [(&str, u32, u32); 6] = [
        ("null", 1, 3),
        ("zero", 1, 5),
        ("full", 1, 7),
        ("random", 1, 8),
        ("urandom", 1, 9),
        ("tty", 5, 0),
    ];
    /// The pseudo-terminal multiplexer of the container's own devpts (`/dev/ptmx` links to
    /// `pts/ptmx`).
    pub const PTMX: (u32, u32) = (5, 2);
    /// The Unix98 pseudo-terminal slave majors (any minor): the container's `/dev/pts/N`, and
    /// `/dev/console`, which is one of them bound over.
    pub const PTY_SLAVE_MAJORS: std::ops::RangeInclusive<u32> = 136..=143;
}

pub mod mount {
    pub const BUS_NAME: &str = "org.burrow.Mount1";
    pub const OBJECT_PATH: &str = "/org/burrow/Mount1";
    pub const ACTION_IDMAP: &str = "org.burrow.mount.idmap";
    pub const ACTION_BUILD: &str = "org.burrow.mount.build";
    /// Most fds in BuildRoot's `fds`: below the 64 fds per message that Burrow's bus policy
    /// allows (the system bus's default is 16), so that mountd answers, not the bus.
    pub const MAX_FDS: usize = 48;

    pub use super::plan::{
        BuildPlan, MountKind, MountKindError, PlanError, PlanMount, WireMount, KEYS, NO_FD,
    };
}

/// Longest object name (container id) a helper accepts, in bytes.
pub const MAX_NAME_LEN: usize = 128;

/// Checks a caller-chosen object name: 1..=128 bytes of `[A-Za-z0-9_.+-]`, not starting with
/// `.` or `-`. Names end up in file names and logs, so anything path-like or invisible is out.
pub fn validate_name(name: &str) -> Result<(), crate::BurrowError> {
    let invalid = |why: &str| {
        Err(crate::BurrowError::InvalidArgument(format!(
            "invalid name {:?}: {why}",
            name.escape_debug().to_string()
        )))
    };
    if name.is_empty() {
        return invalid("must not be empty");
    }
    if name.len() > MAX_NAME_LEN {
        return invalid(&format!("longer than {MAX_NAME_LEN} bytes"));
    }
    if name.starts_with(['.', '-']) {
        return invalid("must not start with '.' or '-'");
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '+' | '-')))
    {
        return invalid(&format!(
            "character {:?} not allowed (use letters, digits, '_', '.', '+', '-')",
            bad
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_container_ids() {
        validate_name("a").unwrap();
        validate_name(&"f".repeat(64)).unwrap();
        validate_name("my-ctr_1.2+x").unwrap();
        validate_name(&"x".repeat(MAX_NAME_LEN)).unwrap();
    }

    #[test]
    fn rejects_bad_names() {
        for bad in [
            "", "../x", "a/b", ".", "..", ".hidden", "-flag", "a\0b", "sp ace", "é",
        ] {
            assert!(validate_name(bad).is_err(), "{bad:?} accepted");
        }
        assert!(validate_name(&"x".repeat(300)).is_err());
        assert!(validate_name(&"x".repeat(MAX_NAME_LEN + 1)).is_err());
    }
}
