//! The BuildRoot plan, checked before anything is mounted: the contract's [`BuildPlan`] (its
//! shape checked by its conversion from the wire), then what it asks for checked here.

use std::collections::HashMap;

use rustix::mount::MountAttrFlags;
use zbus::zvariant::OwnedValue;

use burrow_contract::mount::{BuildPlan, MountKind, PlanMount, MAX_FDS};
use burrow_contract::BurrowError;

/// Most mounts, masked and read-only paths one plan may hold, each.
pub const MAX_ENTRIES: usize = 256;

/// Mount flags (MOUNT_ATTR_*), how a bind is cloned and filesystem data options of one mount.
#[derive(Debug, Clone, PartialEq)]
pub struct Options {
    pub read_only: bool,
    pub nosuid: bool,
    pub nodev: bool,
    pub noexec: bool,
    /// `rbind`: a bind takes its source's submounts along.
    pub recursive: bool,
    /// A bind's source is ID-mapped into the container unless `noidmap` says otherwise: such a
    /// bind is mounted as it is and must already belong to the container's root.
    pub idmapped: bool,
    /// The access-time mode the spec asks for (`noatime`, `strictatime`, `relatime`), if any.
    pub atime: Option<MountAttrFlags>,
    pub nodiratime: bool,
    /// The device name a fresh filesystem shows (not a bind's source, which is an fd).
    pub source: Option<String>,
    /// `key=value` or bare-word options for the filesystem (tmpfs size, devpts mode...).
    pub data: Vec<(String, Option<String>)>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            read_only: false,
            nosuid: false,
            nodev: false,
            noexec: false,
            recursive: false,
            idmapped: true,
            atime: None,
            nodiratime: false,
            source: None,
            data: vec![],
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct MountEntry {
    /// Absolute path inside the container, normalized (no `.`/`..`, no double slashes).
    pub destination: String,
    /// A bind's source indexes the fds passed with the plan (checked).
    pub kind: MountKind,
    pub options: Options,
}

/// A plan mountd builds: every fd index names a passed fd, every path is normalized, every
/// option understood.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub rootfs: usize,
    pub rootfs_read_only: bool,
    pub dev: usize,
    /// How many of `mounts` are made before /dev.
    pub dev_at: usize,
    pub mounts: Vec<MountEntry>,
    pub masked_paths: Vec<String>,
    pub readonly_paths: Vec<String>,
    /// Sysctl subtrees made writable again under a read-only /proc/sys (see `SYSCTL_ROOT`).
    pub writable_sysctls: Vec<String>,
    /// The host's lxcfs files go over the container's /proc files and CPU directory.
    pub lxcfs: bool,
}

/// Only sysctls can be made writable again: the kernel checks every sysctl write against the
/// namespace that owns it (net.* against the network namespace's owner), so a container's root
/// can change its own namespaces' values and is refused (EACCES) for the host's.
pub const SYSCTL_ROOT: &str = "/proc/sys";

fn invalid(msg: impl Into<String>) -> BurrowError {
    BurrowError::InvalidArgument(msg.into())
}

/// An absolute container path without `..`: `..` could only climb to the root anyway (targets
/// are resolved inside the rootfs), but a plan that says it is almost certainly confused.
pub fn normalize_path(path: &str) -> Result<String, BurrowError> {
    if !path.starts_with('/') {
        return Err(invalid(format!("path {path:?} must be absolute")));
    }
    if path.contains('\0') || path.len() > 4096 {
        return Err(invalid(format!(
            "path {:?} is malformed",
            path.escape_debug().to_string()
        )));
    }
    let mut parts = vec![];
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => return Err(invalid(format!("path {path:?} must not contain '..'"))),
            other => parts.push(other),
        }
    }
    Ok(format!("/{}", parts.join("/")))
}

fn parse_options(destination: &str, raw: &[String]) -> Result<Options, BurrowError> {
    let mut options = Options::default();
    for option in raw {
        match option.as_str() {
            "ro" => options.read_only = true,
            "rw" => options.read_only = false,
            "nosuid" => options.nosuid = true,
            "nodev" => options.nodev = true,
            "noexec" => options.noexec = true,
            "suid" | "dev" | "exec" | "defaults" | "bind" => {}
            "rbind" => options.recursive = true,
            "noidmap" => options.idmapped = false,
            // Propagation: every mount of the container is private to it anyway.
            "private" | "rprivate" | "slave" | "rslave" | "shared" | "rshared" | "unbindable"
            | "runbindable" => {}
            // As mount(8): the last access-time mode wins; `atime`, `norelatime` and
            // `nostrictatime` mean the kernel's default, relatime.
            "relatime" | "norelatime" | "nostrictatime" | "atime" => {
                options.atime = Some(MountAttrFlags::MOUNT_ATTR_RELATIME)
            }
            "noatime" => options.atime = Some(MountAttrFlags::MOUNT_ATTR_NOATIME),
            "strictatime" => options.atime = Some(MountAttrFlags::MOUNT_ATTR_STRICTATIME),
            "nodiratime" => options.nodiratime = true,
            // The name a fresh filesystem shows as its device (the spec's `source` of a tmpfs
            // or proc mount), which the kernel takes for any filesystem.
            other if other.starts_with("source=") => {
                options.source = Some(other["source=".len()..].to_string())
            }
            "diratime" => options.nodiratime = false,
            other => {
                let (key, value) = match other.split_once('=') {
                    Some((k, v)) => (k, Some(v.to_string())),
                    None => (other, None),
                };
                const DATA_KEYS: [&str; 9] = [
                    "mode",
                    "size",
                    "nr_inodes",
                    "uid",
                    "gid",
                    "newinstance",
                    "ptmxmode",
                    "hidepid",
                    "subset",
                ];
                if !DATA_KEYS.contains(&key) {
                    return Err(invalid(format!(
                        "mount {destination}: unsupported option {other:?}"
                    )));
                }
                options.data.push((key.to_string(), value));
            }
        }
    }
    Ok(options)
}

fn fd_index(key: &str, index: u32, fds: usize) -> Result<usize, BurrowError> {
    let index = index as usize;
    if index >= fds {
        return Err(invalid(format!(
            "plan key {key:?} names fd {index}, but only {fds} fds were passed"
        )));
    }
    Ok(index)
}

fn paths(key: &str, list: Vec<String>) -> Result<Vec<String>, BurrowError> {
    if list.len() > MAX_ENTRIES {
        return Err(invalid(format!(
            "plan key {key:?} has more than {MAX_ENTRIES} entries"
        )));
    }
    list.iter().map(|p| normalize_path(p)).collect()
}

fn sysctls(list: Vec<String>) -> Result<Vec<String>, BurrowError> {
    let list = paths("writable_sysctls", list)?;
    if let Some(outside) = list.iter().find(|p| {
        p.strip_prefix(SYSCTL_ROOT)
            .is_none_or(|rest| !rest.starts_with('/'))
    }) {
        return Err(invalid(format!(
            "writable_sysctls: {outside:?} is not below {SYSCTL_ROOT}/"
        )));
    }
    Ok(list)
}

impl Plan {
    /// Checks a plan from the wire against the number of fds passed with it. Every key must be
    /// known.
    pub fn parse(raw: HashMap<String, OwnedValue>, fds: usize) -> Result<Plan, BurrowError> {
        if fds > MAX_FDS {
            return Err(invalid(format!(
                "{fds} fds passed, at most {MAX_FDS} allowed"
            )));
        }
        Plan::check(BuildPlan::try_from(raw)?, fds)
    }

    /// Checks what a well-formed plan asks for.
    fn check(plan: BuildPlan, fds: usize) -> Result<Plan, BurrowError> {
        let rootfs = fd_index("rootfs", plan.rootfs, fds)?;
        let dev = fd_index("dev", plan.dev, fds)?;
        if rootfs == dev {
            return Err(invalid("\"rootfs\" and \"dev\" name the same fd"));
        }
        if plan.mounts.len() > MAX_ENTRIES {
            return Err(invalid(format!("more than {MAX_ENTRIES} mounts")));
        }
        let dev_at = plan.dev_at as usize;
        if dev_at > plan.mounts.len() {
            return Err(invalid(format!(
                "\"dev_at\" is {dev_at}, past the plan's {} mounts",
                plan.mounts.len()
            )));
        }
        Ok(Plan {
            rootfs,
            rootfs_read_only: plan.rootfs_readonly,
            dev,
            dev_at,
            mounts: plan
                .mounts
                .into_iter()
                .map(|m| Self::mount(m, fds))
                .collect::<Result<_, _>>()?,
            masked_paths: paths("masked_paths", plan.masked_paths)?,
            readonly_paths: paths("readonly_paths", plan.readonly_paths)?,
            writable_sysctls: sysctls(plan.writable_sysctls)?,
            lxcfs: plan.lxcfs,
        })
    }

    fn mount(mount: PlanMount, fds: usize) -> Result<MountEntry, BurrowError> {
        let PlanMount {
            destination,
            kind,
            options,
        } = mount;
        let destination = normalize_path(&destination)?;
        if destination == "/" || destination == "/dev" {
            return Err(invalid(format!(
                "mount on {destination} is not allowed (the rootfs and /dev come from \"rootfs\" and \"dev\")"
            )));
        }
        let options = parse_options(&destination, &options)?;
        if let MountKind::Bind { source } = kind {
            fd_index("mounts", source, fds)?;
            if options.source.is_some() {
                return Err(invalid(format!(
                    "mount {destination}: a bind's source is its fd, not a source= option"
                )));
            }
        } else if !options.idmapped {
            return Err(invalid(format!(
                "mount {destination}: noidmap is an option of bind mounts"
            )));
        }
        if !matches!(kind, MountKind::Tmpfs | MountKind::Devpts | MountKind::Proc)
            && !options.data.is_empty()
        {
            return Err(invalid(format!(
                "mount {destination}: data options are only for tmpfs, devpts and proc"
            )));
        }
        Ok(MountEntry {
            destination,
            kind,
            options,
        })
    }
}

/// Turns container IDs in `uid=`/`gid=` data options into host IDs through `map`.
pub fn translate_ids(
    data: &[(String, Option<String>)],
    uid_map: &str,
    gid_map: &str,
) -> Result<Vec<(String, Option<String>)>, BurrowError> {
    data.iter()
        .map(|(key, value)| {
            let map = match key.as_str() {
                "uid" => uid_map,
                "gid" => gid_map,
                _ => return Ok((key.clone(), value.clone())),
            };
            let inside: u32 = value
                .as_deref()
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| invalid(format!("option {key} needs a numeric value")))?;
            let host = burrow_sys::userns::host_id_of(map, inside).ok_or_else(|| {
                invalid(format!(
                    "option {key}={inside}: not mapped in the container"
                ))
            })?;
            Ok((key.clone(), Some(host.to_string())))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use burrow_contract::mount::{WireMount, NO_FD};
    use zbus::zvariant::Value;

    fn owned<'a>(v: impl Into<Value<'a>>) -> OwnedValue {
        v.into().try_to_owned().unwrap()
    }

    fn base_plan() -> HashMap<String, OwnedValue> {
        HashMap::from([
            ("rootfs".to_string(), owned(0u32)),
            ("dev".to_string(), owned(1u32)),
        ])
    }

    #[test]
    fn normalizes_paths() {
        assert_eq!(
            normalize_path("/proc//sys/./kernel/").unwrap(),
            "/proc/sys/kernel"
        );
        assert_eq!(normalize_path("/").unwrap(), "/");
        for bad in ["proc", "../../etc", "/a/../../etc", "/x\0y", ""] {
            assert!(normalize_path(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn parses_a_docker_like_plan() {
        let mut raw = base_plan();
        let mounts: Vec<WireMount> = vec![
            (
                "/proc".into(),
                "proc".into(),
                NO_FD,
                vec!["nosuid".into(), "noexec".into(), "nodev".into()],
            ),
            (
                "/dev/pts".into(),
                "devpts".into(),
                NO_FD,
                [
                    "nosuid",
                    "noexec",
                    "newinstance",
                    "ptmxmode=0666",
                    "mode=0620",
                    "gid=5",
                ]
                .map(String::from)
                .to_vec(),
            ),
            ("/sys".into(), "sysfs".into(), NO_FD, vec!["ro".into()]),
            (
                "/etc/hosts".into(),
                "bind".into(),
                2,
                vec!["rbind".into(), "rprivate".into()],
            ),
        ];
        raw.insert("mounts".into(), owned(mounts));
        raw.insert(
            "masked_paths".into(),
            owned(vec!["/proc/kcore".to_string()]),
        );
        let plan = Plan::parse(raw, 3).unwrap();
        assert_eq!(plan.mounts.len(), 4);
        assert_eq!(plan.mounts[3].kind, MountKind::Bind { source: 2 });
        assert!(plan.mounts[3].options.recursive && plan.mounts[3].options.idmapped);
        assert!(plan.mounts[2].options.read_only);
        assert_eq!(
            plan.mounts[1].options.data[1],
            ("ptmxmode".to_string(), Some("0666".to_string()))
        );
        assert_eq!(plan.masked_paths, ["/proc/kcore"]);
    }

    /// The last access-time mode wins, as with mount(8); `source=` names a fresh filesystem's
    /// device and is no data option.
    #[test]
    fn access_time_modes_and_source_are_options_of_their_own() {
        let raw = |list: &[&str]| list.iter().map(|o| o.to_string()).collect::<Vec<_>>();
        let options = parse_options(
            "/data",
            &raw(&["noatime", "strictatime", "nodiratime", "source=tmpfs"]),
        )
        .unwrap();
        assert_eq!(options.atime, Some(MountAttrFlags::MOUNT_ATTR_STRICTATIME));
        assert!(options.nodiratime);
        assert_eq!(options.source.as_deref(), Some("tmpfs"));
        assert!(options.data.is_empty());
        let options = parse_options("/data", &raw(&["noatime", "atime"])).unwrap();
        assert_eq!(options.atime, Some(MountAttrFlags::MOUNT_ATTR_RELATIME));
        assert_eq!(parse_options("/data", &raw(&["ro"])).unwrap().atime, None);
    }

    #[test]
    fn noidmap_is_for_binds_only() {
        let mut raw = base_plan();
        let bind: WireMount = (
            "/var/lib/docker".into(),
            "bind".into(),
            2,
            vec!["rbind".into(), "noidmap".into()],
        );
        raw.insert("mounts".into(), owned(vec![bind]));
        let plan = Plan::parse(raw, 3).unwrap();
        assert_eq!(plan.mounts[0].kind, MountKind::Bind { source: 2 });
        assert!(plan.mounts[0].options.recursive && !plan.mounts[0].options.idmapped);
        let mut raw = base_plan();
        let tmpfs: WireMount = ("/run".into(), "tmpfs".into(), NO_FD, vec!["noidmap".into()]);
        raw.insert("mounts".into(), owned(vec![tmpfs]));
        assert!(Plan::parse(raw, 3).is_err());
    }

    #[test]
    fn only_sysctls_can_be_made_writable() {
        let with = |paths: &[&str]| {
            let mut raw = base_plan();
            let paths: Vec<String> = paths.iter().map(|p| p.to_string()).collect();
            raw.insert("writable_sysctls".into(), owned(paths));
            Plan::parse(raw, 2)
        };
        assert_eq!(
            with(&["/proc/sys/net"]).unwrap().writable_sysctls,
            ["/proc/sys/net"]
        );
        for bad in [
            "/proc/sys",
            "/proc/sysrq-trigger",
            "/proc",
            "/sys/kernel",
            "/etc",
        ] {
            assert!(with(&[bad]).is_err(), "{bad}");
        }
    }

    #[test]
    fn rejects_bad_plans() {
        let with = |key: &str, value: OwnedValue| {
            let mut raw = base_plan();
            raw.insert(key.to_string(), value);
            raw
        };
        let mount = |m: WireMount| owned(vec![m]);
        let cases: Vec<(HashMap<String, OwnedValue>, usize)> = vec![
            (with("surprise", owned(1u32)), 2),
            (with("rootfs", owned(7u32)), 2),
            (with("rootfs", owned("x")), 2),
            (with("masked_paths", owned(vec!["relative".to_string()])), 2),
            (
                with("mounts", mount(("/x".into(), "bind".into(), NO_FD, vec![]))),
                2,
            ),
            (
                with("mounts", mount(("/x".into(), "ext4".into(), NO_FD, vec![]))),
                2,
            ),
            (
                with(
                    "mounts",
                    mount(("/x".into(), "tmpfs".into(), NO_FD, vec!["exotic=1".into()])),
                ),
                2,
            ),
            (
                with(
                    "mounts",
                    mount(("/../../etc".into(), "tmpfs".into(), NO_FD, vec![])),
                ),
                2,
            ),
            (
                with(
                    "mounts",
                    mount(("/dev".into(), "tmpfs".into(), NO_FD, vec![])),
                ),
                2,
            ),
            (base_plan(), MAX_FDS + 1),
            (HashMap::from([("rootfs".to_string(), owned(0u32))]), 2),
        ];
        for (raw, fds) in cases {
            let shown = format!("{raw:?}");
            assert!(
                matches!(Plan::parse(raw, fds), Err(BurrowError::InvalidArgument(_))),
                "{shown}"
            );
        }
    }

    #[test]
    fn translates_ids_through_maps() {
        let data = vec![
            ("gid".to_string(), Some("5".to_string())),
            ("mode".to_string(), Some("0620".to_string())),
        ];
        let out = translate_ids(&data, "0 524288 65536", "0 524288 65536").unwrap();
        assert_eq!(out[0].1.as_deref(), Some("524293"));
        assert_eq!(out[1].1.as_deref(), Some("0620"));
        assert!(translate_ids(
            &[("uid".into(), Some("70000".into()))],
            "0 524288 65536",
            ""
        )
        .is_err());
    }

    /// Values of every type a hostile caller can put in the `a{sv}`.
    fn any_value() -> impl proptest::strategy::Strategy<Value = OwnedValue> {
        use proptest::prelude::*;
        let path = "(/|[a-z.]{0,4}|\\.\\.|/proc/sys/[a-z]{0,6}|\\PC{0,12})(/[a-z.]{0,6}){0,4}";
        let option = "(ro|rw|rbind|bind|noidmap|nodev|nosuid|size=[0-9a-z]{0,6}|uid=[0-9]{0,7}|gid=-?[0-9]{0,3}|mode=[0-7]{0,5}|[a-z=]{0,8})";
        let kind = "(bind|none|proc|sysfs|tmpfs|devpts|mqueue|cgroup|cgroup2|ext4|)";
        let fd = prop_oneof![0u32..6, Just(NO_FD), any::<u32>()];
        let mount = (path, kind, fd, prop::collection::vec(option, 0..5));
        prop_oneof![
            any::<u32>().prop_map(owned),
            any::<bool>().prop_map(owned),
            "\\PC{0,20}".prop_map(owned),
            prop::collection::vec(path, 0..6).prop_map(owned),
            prop::collection::vec(mount, 0..6).prop_map(owned),
            prop::collection::vec(any::<u32>(), 0..3).prop_map(owned),
        ]
    }

    proptest::proptest! {
        /// Fuzzing BuildRoot's plan: whatever a caller sends is a valid plan or a named
        /// InvalidArgument, never a panic; a valid plan names only fds that were passed, mounts
        /// only on normalized paths below `/` other than `/` and `/dev`, and makes only sysctls
        /// writable.
        #[test]
        fn any_plan_is_valid_or_refused_by_name(
            entries in proptest::collection::vec(
                ("(rootfs|dev|rootfs_readonly|mounts|masked_paths|readonly_paths|writable_sysctls|lxcfs|[a-z_]{1,8})", any_value()),
                0..9,
            ),
            fds in 0usize..8,
        ) {
            let raw: HashMap<String, OwnedValue> = entries.into_iter().collect();
            check_plan(raw, fds)?;
        }

        /// The same, for plans that get past the fd keys: hostile mounts and path lists.
        #[test]
        fn any_mounts_and_paths_are_valid_or_refused_by_name(
            entries in proptest::collection::vec(
                ("(mounts|masked_paths|readonly_paths|writable_sysctls)", any_value()),
                0..5,
            ),
            fds in 2usize..8,
        ) {
            let mut raw = base_plan();
            raw.extend(entries);
            check_plan(raw, fds)?;
        }
    }

    /// A plan as the bus carries it from the runtime to mountd: encoded, decoded as the raw
    /// dictionary BuildRoot receives.
    fn over_the_wire(plan: &BuildPlan) -> HashMap<String, OwnedValue> {
        use zbus::zvariant::{serialized::Context, to_bytes, LE};
        let bytes = to_bytes(Context::new_dbus(LE, 0), plan).unwrap();
        bytes.deserialize().unwrap().0
    }

    /// A mount mountd accepts, binding only from the first `fds` fds.
    fn valid_mount(fds: u32) -> impl proptest::strategy::Strategy<Value = PlanMount> {
        use proptest::prelude::*;
        let kind = prop_oneof![
            (0..fds).prop_map(|source| MountKind::Bind { source }),
            Just(MountKind::Proc),
            Just(MountKind::Sysfs),
            Just(MountKind::Tmpfs),
            Just(MountKind::Devpts),
            Just(MountKind::Mqueue),
            Just(MountKind::Cgroup),
        ];
        let flags = prop::collection::vec("(ro|rw|nosuid|nodev|noexec|rprivate|relatime)", 0..4);
        let extra = prop::collection::vec("(rbind|noidmap|mode=0755|size=1m|gid=5)", 0..3);
        ("(/[a-z]{1,6}){1,4}", kind, flags, extra)
            .prop_filter("mounts on /dev are refused", |(d, ..)| d != "/dev")
            .prop_map(|(destination, kind, mut options, extra)| {
                // Each extra option is kept only where mountd takes it.
                options.extend(extra.into_iter().filter(|o| match kind {
                    MountKind::Bind { .. } => o == "rbind" || o == "noidmap",
                    MountKind::Tmpfs | MountKind::Devpts | MountKind::Proc => o.contains('='),
                    _ => false,
                }));
                PlanMount {
                    destination,
                    kind,
                    options,
                }
            })
    }

    /// Any plan mountd accepts: distinct rootfs and dev among `fds`, normalized paths, sysctls
    /// below /proc/sys.
    fn valid_plan() -> impl proptest::strategy::Strategy<Value = (BuildPlan, usize)> {
        use proptest::prelude::*;
        (2..=MAX_FDS as u32).prop_flat_map(|fds| {
            let paths = || prop::collection::vec("(/[a-z]{1,6}){1,3}", 0..4);
            let sysctls = prop::collection::vec("/proc/sys(/[a-z]{1,6}){1,3}", 0..3);
            (
                (0..fds, 1..fds, any::<bool>()),
                prop::collection::vec(valid_mount(fds), 0..6),
                (paths(), paths(), sysctls),
                any::<bool>(),
            )
                .prop_map(
                    move |((rootfs, step, rootfs_readonly), mounts, lists, lxcfs)| {
                        let plan = BuildPlan {
                            rootfs,
                            rootfs_readonly,
                            dev: (rootfs + step) % fds,
                            dev_at: (step % (mounts.len() as u32 + 1)),
                            mounts,
                            masked_paths: lists.0,
                            readonly_paths: lists.1,
                            writable_sysctls: lists.2,
                            lxcfs,
                        };
                        (plan, fds as usize)
                    },
                )
        })
    }

    proptest::proptest! {
        /// Any valid typed plan the runtime sends is, once it has crossed the bus, the same
        /// typed plan in mountd, and mountd accepts it as it was sent.
        #[test]
        fn any_valid_plan_survives_the_wire((plan, fds) in valid_plan()) {
            let checked = Plan::parse(over_the_wire(&plan), fds);
            proptest::prop_assert!(checked.is_ok(), "{checked:?}");
            let checked = checked.unwrap();
            let received = BuildPlan::try_from(over_the_wire(&plan)).unwrap();
            proptest::prop_assert_eq!(&received, &plan);
            proptest::prop_assert_eq!(checked.rootfs, plan.rootfs as usize);
            proptest::prop_assert_eq!(checked.dev, plan.dev as usize);
            proptest::prop_assert_eq!(checked.dev_at, plan.dev_at as usize);
            proptest::prop_assert_eq!(checked.rootfs_read_only, plan.rootfs_readonly);
            let kinds: Vec<_> = plan.mounts.iter().map(|m| (m.destination.clone(), m.kind)).collect();
            let checked_kinds: Vec<_> =
                checked.mounts.iter().map(|m| (m.destination.clone(), m.kind)).collect();
            proptest::prop_assert_eq!(checked_kinds, kinds);
            proptest::prop_assert_eq!(checked.masked_paths, plan.masked_paths);
            proptest::prop_assert_eq!(checked.readonly_paths, plan.readonly_paths);
            proptest::prop_assert_eq!(checked.writable_sysctls, plan.writable_sysctls);
            proptest::prop_assert_eq!(checked.lxcfs, plan.lxcfs);
        }
    }

    /// The properties of a parsed plan, or of its refusal.
    fn check_plan(
        raw: HashMap<String, OwnedValue>,
        fds: usize,
    ) -> Result<(), proptest::test_runner::TestCaseError> {
        use proptest::{prop_assert, prop_assert_eq};
        let copy: HashMap<String, OwnedValue> = raw
            .iter()
            .map(|(k, v)| (k.clone(), v.try_clone().unwrap()))
            .collect();
        let plan = match Plan::parse(raw, fds) {
            Ok(plan) => plan,
            Err(e) => {
                prop_assert!(matches!(e, BurrowError::InvalidArgument(_)), "{e:?}");
                return Ok(());
            }
        };
        prop_assert!(plan.rootfs < fds && plan.dev < fds && plan.rootfs != plan.dev);
        for mount in &plan.mounts {
            let destination = &mount.destination;
            prop_assert!(destination.starts_with('/') && !destination.contains("//"));
            prop_assert!(destination != "/" && destination != "/dev");
            prop_assert!(!destination.split('/').any(|p| p == ".." || p == "."));
            if let MountKind::Bind { source } = mount.kind {
                prop_assert!((source as usize) < fds);
            }
        }
        for sysctl in &plan.writable_sysctls {
            prop_assert!(sysctl.starts_with("/proc/sys/"));
        }
        // What mountd accepted is a typed plan that crosses the wire unchanged.
        let typed = BuildPlan::try_from(copy).unwrap();
        prop_assert_eq!(BuildPlan::try_from(over_the_wire(&typed)).unwrap(), typed);
        Ok(())
    }
}
