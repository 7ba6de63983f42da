//! Capability dropping. Capabilities are per thread, so this must run before any thread is
//! spawned (before the async runtime starts); every later thread inherits the reduced sets.

use caps::{CapSet, Capability, CapsHashSet};

#[derive(Debug, thiserror::Error)]
pub enum PrivilegeError {
    #[error("helpers must start as root (uid 0), running as uid {0}")]
    NotRoot(u32),
    #[error("capability {cap} is needed but not held (check the unit's CapabilityBoundingSet)")]
    Missing { cap: Capability },
    #[error("cannot change capability set {set:?}: {source}")]
    Caps {
        set: CapSet,
        source: caps::errors::CapsError,
    },
}

/// Keeps exactly `keep` in the permitted and effective sets, empties the inheritable and
/// ambient sets and removes every other capability from the bounding set, so neither this
/// process nor anything it forks can regain them.
pub fn retain_only(keep: &[Capability]) -> Result<(), PrivilegeError> {
    let uid = nix::unistd::geteuid().as_raw();
    if uid != 0 {
        return Err(PrivilegeError::NotRoot(uid));
    }
    let keep: CapsHashSet = keep.iter().copied().collect();
    let permitted = caps::read(None, CapSet::Permitted).map_err(|source| PrivilegeError::Caps {
        set: CapSet::Permitted,
        source,
    })?;
    if let Some(cap) = keep.iter().find(|c| !permitted.contains(c)) {
        return Err(PrivilegeError::Missing { cap: *cap });
    }
    // Bounding-set changes need CAP_SETPCAP, so they come first.
    for cap in caps::all().difference(&keep) {
        caps::drop(None, CapSet::Bounding, *cap).map_err(|source| PrivilegeError::Caps {
            set: CapSet::Bounding,
            source,
        })?;
    }
    caps::clear(None, CapSet::Ambient).map_err(|source| PrivilegeError::Caps {
        set: CapSet::Ambient,
        source,
    })?;
    caps::clear(None, CapSet::Inheritable).map_err(|source| PrivilegeError::Caps {
        set: CapSet::Inheritable,
        source,
    })?;
    caps::set(None, CapSet::Effective, &keep).map_err(|source| PrivilegeError::Caps {
        set: CapSet::Effective,
        source,
    })?;
    caps::set(None, CapSet::Permitted, &keep).map_err(|source| PrivilegeError::Caps {
        set: CapSet::Permitted,
        source,
    })?;
    Ok(())
}
