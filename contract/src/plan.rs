//! BuildRoot's plan: one typed value that the runtime sends and mountd receives, and its one
//! conversion to and from the `a{sv}` dictionary on the wire (docs/api.md lists the keys).
//!
//! The conversion checks only the plan's shape: its keys, their types, the mounts' types and
//! source fds. What the plan asks for (paths, options, fd indices against the fds passed with
//! it) is mountd's to check.

use std::collections::HashMap;

use serde::ser::{Serialize, SerializeMap, Serializer};
use zbus::zvariant::{self, as_value, OwnedValue, Signature, Type};

use crate::BurrowError;

/// Marks a mount without a source fd on the wire. In the typed plan only a bind has a source,
/// so this spelling exists only here.
pub const NO_FD: u32 = u32::MAX;

const ROOTFS: &str = "rootfs";
const ROOTFS_READONLY: &str = "rootfs_readonly";
const DEV: &str = "dev";
const DEV_AT: &str = "dev_at";
const MOUNTS: &str = "mounts";
const MASKED_PATHS: &str = "masked_paths";
const READONLY_PATHS: &str = "readonly_paths";
const WRITABLE_SYSCTLS: &str = "writable_sysctls";
const LXCFS: &str = "lxcfs";

/// The plan's keys, in the order they are sent.
pub const KEYS: [&str; 9] = [
    ROOTFS,
    ROOTFS_READONLY,
    DEV,
    DEV_AT,
    MOUNTS,
    MASKED_PATHS,
    READONLY_PATHS,
    WRITABLE_SYSCTLS,
    LXCFS,
];

/// One mount as the wire carries it: destination, type, source fd index or [`NO_FD`], options.
pub type WireMount = (String, String, u32, Vec<String>);

/// The container's mount namespace as BuildRoot is asked for it. `rootfs`, `dev` and a bind's
/// source are indices into the fds sent with the plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildPlan {
    /// The rootfs directory (an O_PATH fd), ID-mapped into the container.
    pub rootfs: u32,
    pub rootfs_readonly: bool,
    /// The /dev mount org.burrow.Dev1 made for the container's user namespace.
    pub dev: u32,
    /// How many of `mounts` are made before /dev, which goes at its place in the spec's list
    /// (0, first, where the spec lists none; absent on the wire: 0).
    pub dev_at: u32,
    /// The OCI mounts, in the order they are made.
    pub mounts: Vec<PlanMount>,
    pub masked_paths: Vec<String>,
    pub readonly_paths: Vec<String>,
    /// Subtrees of /proc/sys made writable again under a read-only /proc/sys.
    pub writable_sysctls: Vec<String>,
    /// The host's lxcfs files bound over the container's /proc files and CPU directory
    /// (absent on the wire: false). mountd checks that lxcfs really is mounted.
    pub lxcfs: bool,
}

/// One OCI mount of the plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanMount {
    /// An absolute path inside the container.
    pub destination: String,
    pub kind: MountKind,
    /// The OCI options as the spec has them (`ro`, `rbind`, `noidmap`, `size=...`).
    pub options: Vec<String>,
}

/// What a mount attaches. Only a bind has a source fd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MountKind {
    /// `source` is never [`NO_FD`], which the wire reads as "no source" (mountd takes at most
    /// `MAX_FDS` fds anyway).
    Bind {
        source: u32,
    },
    Proc,
    Sysfs,
    Tmpfs,
    Devpts,
    Mqueue,
    /// The host's cgroupfs layout: cgroup v1 hierarchies and the unified mount, or cgroup2.
    Cgroup,
}

/// Why a plan's shape is wrong. On the bus every one is `InvalidArgument`.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("unknown plan key {key:?} (known: {})", KEYS.join(", "))]
    UnknownKey { key: String },
    #[error("plan key {key:?} must be {expected}")]
    WrongType {
        key: &'static str,
        expected: &'static str,
        #[source]
        source: zvariant::Error,
    },
    #[error("plan has no \"rootfs\" fd")]
    NoRootfs,
    #[error("plan has no \"dev\" fd (a mount from org.burrow.Dev1)")]
    NoDev,
    #[error("mount {destination:?}: {problem}")]
    Mount {
        destination: String,
        #[source]
        problem: MountKindError,
    },
}

/// Why a mount's type and source fd do not make a [`MountKind`].
#[derive(Debug, thiserror::Error)]
pub enum MountKindError {
    #[error("unsupported type {0:?}")]
    Unsupported(String),
    #[error("a bind mount needs a source fd")]
    NoSource,
    #[error("a {0} mount takes no source fd")]
    UnexpectedSource(&'static str),
}

impl From<PlanError> for BurrowError {
    fn from(e: PlanError) -> Self {
        BurrowError::InvalidArgument(e.to_string())
    }
}

impl MountKind {
    /// The kind of a mount of type `typ` (as OCI spells it: `none` and an empty type are binds,
    /// `cgroup2` is the host's cgroupfs like `cgroup`) with a source fd or none.
    pub fn new(typ: &str, source: Option<u32>) -> Result<MountKind, MountKindError> {
        let kind = match typ {
            "bind" | "none" | "" => {
                let source = source.ok_or(MountKindError::NoSource)?;
                return Ok(MountKind::Bind { source });
            }
            "proc" => MountKind::Proc,
            "sysfs" => MountKind::Sysfs,
            "tmpfs" => MountKind::Tmpfs,
            "devpts" => MountKind::Devpts,
            "mqueue" => MountKind::Mqueue,
            "cgroup" | "cgroup2" => MountKind::Cgroup,
            other => return Err(MountKindError::Unsupported(other.to_string())),
        };
        match source {
            Some(_) => Err(MountKindError::UnexpectedSource(kind.type_name())),
            None => Ok(kind),
        }
    }

    /// The type the wire carries for this kind.
    pub fn type_name(self) -> &'static str {
        match self {
            MountKind::Bind { .. } => "bind",
            MountKind::Proc => "proc",
            MountKind::Sysfs => "sysfs",
            MountKind::Tmpfs => "tmpfs",
            MountKind::Devpts => "devpts",
            MountKind::Mqueue => "mqueue",
            MountKind::Cgroup => "cgroup",
        }
    }

    pub fn source(self) -> Option<u32> {
        match self {
            MountKind::Bind { source } => Some(source),
            _ => None,
        }
    }
}

impl PlanMount {
    /// A mount of type `typ`; fails if the type is unknown or it does not take `source`.
    pub fn new(
        destination: String,
        typ: &str,
        source: Option<u32>,
        options: Vec<String>,
    ) -> Result<PlanMount, PlanError> {
        match MountKind::new(typ, source) {
            Ok(kind) => Ok(PlanMount {
                destination,
                kind,
                options,
            }),
            Err(problem) => Err(PlanError::Mount {
                destination,
                problem,
            }),
        }
    }
}

impl TryFrom<WireMount> for PlanMount {
    type Error = PlanError;

    fn try_from((destination, typ, source, options): WireMount) -> Result<Self, PlanError> {
        let source = (source != NO_FD).then_some(source);
        PlanMount::new(destination, &typ, source, options)
    }
}

impl Type for PlanMount {
    const SIGNATURE: &'static Signature = WireMount::SIGNATURE;
}

impl Serialize for PlanMount {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let source = self.kind.source().unwrap_or(NO_FD);
        let typ = self.kind.type_name();
        (&self.destination, typ, source, &self.options).serialize(serializer)
    }
}

impl BuildPlan {
    /// A plan of the rootfs and /dev alone.
    pub fn new(rootfs: u32, dev: u32) -> BuildPlan {
        BuildPlan {
            rootfs,
            rootfs_readonly: false,
            dev,
            dev_at: 0,
            mounts: vec![],
            masked_paths: vec![],
            readonly_paths: vec![],
            writable_sysctls: vec![],
            lxcfs: false,
        }
    }
}

/// The plan is a dictionary on the wire, so that a key can be added without breaking the
/// other side's signature.
impl Type for BuildPlan {
    const SIGNATURE: &'static Signature = <HashMap<String, OwnedValue>>::SIGNATURE;
}

/// Every key is sent, in the order of [`KEYS`].
impl Serialize for BuildPlan {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(KEYS.len()))?;
        map.serialize_entry(ROOTFS, &as_value::Serialize(&self.rootfs))?;
        map.serialize_entry(ROOTFS_READONLY, &as_value::Serialize(&self.rootfs_readonly))?;
        map.serialize_entry(DEV, &as_value::Serialize(&self.dev))?;
        map.serialize_entry(DEV_AT, &as_value::Serialize(&self.dev_at))?;
        map.serialize_entry(MOUNTS, &as_value::Serialize(&self.mounts))?;
        map.serialize_entry(MASKED_PATHS, &as_value::Serialize(&self.masked_paths))?;
        map.serialize_entry(READONLY_PATHS, &as_value::Serialize(&self.readonly_paths))?;
        map.serialize_entry(
            WRITABLE_SYSCTLS,
            &as_value::Serialize(&self.writable_sysctls),
        )?;
        map.serialize_entry(LXCFS, &as_value::Serialize(&self.lxcfs))?;
        map.end()
    }
}

fn take<T>(key: &'static str, value: OwnedValue, expected: &'static str) -> Result<T, PlanError>
where
    T: TryFrom<OwnedValue, Error = zvariant::Error>,
{
    T::try_from(value).map_err(|source| PlanError::WrongType {
        key,
        expected,
        source,
    })
}

/// The plan as a helper receives it. It takes the raw dictionary, not a `BuildPlan` argument,
/// because a plan that failed to deserialize there would be the bus's generic `InvalidArgs`,
/// not Burrow's named `InvalidArgument`. Absent lists are empty, an absent `rootfs_readonly`
/// is false, and so is an absent `lxcfs`; every key must be known.
impl TryFrom<HashMap<String, OwnedValue>> for BuildPlan {
    type Error = PlanError;

    fn try_from(wire: HashMap<String, OwnedValue>) -> Result<Self, PlanError> {
        let (mut rootfs, mut dev) = (None, None);
        let mut plan = BuildPlan::new(0, 0);
        for (key, value) in wire {
            match key.as_str() {
                ROOTFS => rootfs = Some(take(ROOTFS, value, "an fd index (u)")?),
                DEV => dev = Some(take(DEV, value, "an fd index (u)")?),
                DEV_AT => plan.dev_at = take(DEV_AT, value, "a count of mounts (u)")?,
                ROOTFS_READONLY => {
                    plan.rootfs_readonly = take(ROOTFS_READONLY, value, "a boolean (b)")?
                }
                MOUNTS => {
                    let wire: Vec<WireMount> = take(MOUNTS, value, "an array of (ssuas)")?;
                    plan.mounts = wire
                        .into_iter()
                        .map(PlanMount::try_from)
                        .collect::<Result<_, _>>()?;
                }
                MASKED_PATHS => plan.masked_paths = take(MASKED_PATHS, value, STRINGS)?,
                READONLY_PATHS => plan.readonly_paths = take(READONLY_PATHS, value, STRINGS)?,
                WRITABLE_SYSCTLS => plan.writable_sysctls = take(WRITABLE_SYSCTLS, value, STRINGS)?,
                LXCFS => plan.lxcfs = take(LXCFS, value, "a boolean (b)")?,
                _ => return Err(PlanError::UnknownKey { key }),
            }
        }
        plan.rootfs = rootfs.ok_or(PlanError::NoRootfs)?;
        plan.dev = dev.ok_or(PlanError::NoDev)?;
        Ok(plan)
    }
}

const STRINGS: &str = "an array of strings (as)";

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use zbus::zvariant::serialized::Context;
    use zbus::zvariant::{to_bytes, Value, LE};

    /// The plan as the bus carries it to a helper: encoded, decoded as a dictionary, converted.
    fn over_the_wire(plan: &BuildPlan) -> Result<BuildPlan, PlanError> {
        let bytes = to_bytes(Context::new_dbus(LE, 0), plan).unwrap();
        let (wire, _): (HashMap<String, OwnedValue>, _) = bytes.deserialize().unwrap();
        BuildPlan::try_from(wire)
    }

    fn owned<'a>(v: impl Into<Value<'a>>) -> OwnedValue {
        v.into().try_to_owned().unwrap()
    }

    #[test]
    fn every_key_is_sent_and_the_signature_is_a_dictionary() {
        assert_eq!(BuildPlan::SIGNATURE.to_string(), "a{sv}");
        assert_eq!(PlanMount::SIGNATURE.to_string(), "(ssuas)");
        let bytes = to_bytes(Context::new_dbus(LE, 0), &BuildPlan::new(0, 1)).unwrap();
        let (wire, _): (HashMap<String, OwnedValue>, _) = bytes.deserialize().unwrap();
        let mut keys: Vec<&str> = wire.keys().map(String::as_str).collect();
        keys.sort();
        let mut known = KEYS.to_vec();
        known.sort();
        assert_eq!(keys, known);
    }

    #[test]
    fn the_wire_spells_kinds_and_missing_sources() {
        let wire = |typ: &str, source: u32| -> Result<MountKind, PlanError> {
            PlanMount::try_from(("/x".to_string(), typ.to_string(), source, vec![])).map(|m| m.kind)
        };
        assert_eq!(wire("bind", 3).unwrap(), MountKind::Bind { source: 3 });
        assert_eq!(wire("none", 3).unwrap(), MountKind::Bind { source: 3 });
        assert_eq!(wire("", 0).unwrap(), MountKind::Bind { source: 0 });
        assert_eq!(wire("cgroup2", NO_FD).unwrap(), MountKind::Cgroup);
        assert_eq!(wire("tmpfs", NO_FD).unwrap(), MountKind::Tmpfs);
        for (typ, source) in [("bind", NO_FD), ("proc", 0), ("ext4", NO_FD), ("BIND", 1)] {
            assert!(wire(typ, source).is_err(), "{typ} {source}");
        }
    }

    #[test]
    fn shape_errors_are_named_invalid_argument() {
        let base = || {
            HashMap::from([
                ("rootfs".to_string(), owned(0u32)),
                ("dev".to_string(), owned(1u32)),
            ])
        };
        let with = |key: &str, value: OwnedValue| {
            let mut wire = base();
            wire.insert(key.to_string(), value);
            BuildPlan::try_from(wire)
        };
        let unknown = with("surprise", owned(1u32)).unwrap_err();
        assert!(unknown.to_string().contains(&KEYS.join(", ")), "{unknown}");
        let refusals = [
            unknown,
            with("rootfs", owned("x")).unwrap_err(),
            with("mounts", owned(vec!["/x".to_string()])).unwrap_err(),
            BuildPlan::try_from(HashMap::from([("dev".to_string(), owned(1u32))])).unwrap_err(),
            BuildPlan::try_from(HashMap::from([("rootfs".to_string(), owned(0u32))])).unwrap_err(),
        ];
        for e in refusals {
            let shown = e.to_string();
            assert!(
                matches!(BurrowError::from(e), BurrowError::InvalidArgument(m) if m == shown),
                "{shown}"
            );
        }
        assert_eq!(BuildPlan::try_from(base()).unwrap(), BuildPlan::new(0, 1));
    }

    fn any_kind() -> impl Strategy<Value = MountKind> {
        prop_oneof![
            (0..NO_FD).prop_map(|source| MountKind::Bind { source }),
            Just(MountKind::Proc),
            Just(MountKind::Sysfs),
            Just(MountKind::Tmpfs),
            Just(MountKind::Devpts),
            Just(MountKind::Mqueue),
            Just(MountKind::Cgroup),
        ]
    }

    fn any_plan() -> impl Strategy<Value = BuildPlan> {
        let text = || prop::collection::vec("\\PC{0,12}", 0..4);
        let mount =
            ("\\PC{0,16}", any_kind(), text()).prop_map(|(destination, kind, options)| PlanMount {
                destination,
                kind,
                options,
            });
        (
            (any::<u32>(), any::<bool>(), any::<u32>(), any::<u32>()),
            prop::collection::vec(mount, 0..6),
            (text(), text(), text()),
            any::<bool>(),
        )
            .prop_map(
                |((rootfs, rootfs_readonly, dev, dev_at), mounts, lists, lxcfs)| {
                    let (masked_paths, readonly_paths, writable_sysctls) = lists;
                    BuildPlan {
                        rootfs,
                        rootfs_readonly,
                        dev,
                        dev_at,
                        mounts,
                        masked_paths,
                        readonly_paths,
                        writable_sysctls,
                        lxcfs,
                    }
                },
            )
    }

    proptest! {
        /// Any typed plan (a bind's source is never the wire's marker) is the same plan once it
        /// has crossed the bus: the two directions of the conversion agree.
        #[test]
        fn any_plan_survives_the_wire(plan in any_plan()) {
            prop_assert_eq!(over_the_wire(&plan).unwrap(), plan);
        }
    }
}
