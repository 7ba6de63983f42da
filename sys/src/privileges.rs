//! Capability dropping. Capabilities are per thread, so this must run before any thread is
//! spawned (before the async runtime starts); every later thread inherits the reduced sets.

use caps::{CapSet, Capability, CapsHashSet};

#[derive(Debug, thiserror::Error)]
pub enum PrivilegeError {
    #[error("helpers must start as root (uid 0), running as uid {0}")]
    NotRoot(u32),
    #[error("capability {cap} is needed but not held (check the unit's CapabilityBoundingSet)")]
    Missing { cap: Capability },
    #[error(
        "capability {cap} is in the bounding set, and dropping it needs CAP_SETPCAP, which is \
         not held (the unit's CapabilityBoundingSet should list exactly what the helper keeps, \
         or also CAP_SETPCAP)"
    )]
    CannotDropBounding { cap: Capability },
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
    drop_from_bounding(&keep)?;
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

/// Removes from the bounding set whatever it holds beyond `keep`. Only what is still there is
/// dropped: a systemd unit whose `CapabilityBoundingSet` is already `keep` leaves nothing to
/// drop, and so needs no CAP_SETPCAP (which every drop needs in the effective set, so this
/// runs before the effective set shrinks).
fn drop_from_bounding(keep: &CapsHashSet) -> Result<(), PrivilegeError> {
    let bounding = caps::read(None, CapSet::Bounding).map_err(|source| PrivilegeError::Caps {
        set: CapSet::Bounding,
        source,
    })?;
    let mut extra: Vec<Capability> = bounding.difference(keep).copied().collect();
    extra.sort_by_key(|c| c.index());
    if let Some(cap) = extra.first() {
        let effective =
            caps::read(None, CapSet::Effective).map_err(|source| PrivilegeError::Caps {
                set: CapSet::Effective,
                source,
            })?;
        if !effective.contains(&Capability::CAP_SETPCAP) {
            return Err(PrivilegeError::CannotDropBounding { cap: *cap });
        }
    }
    for cap in extra {
        caps::drop(None, CapSet::Bounding, cap).map_err(|source| PrivilegeError::Caps {
            set: CapSet::Bounding,
            source,
        })?;
    }
    Ok(())
}
