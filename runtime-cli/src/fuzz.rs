//! Property tests of every parser of input a caller controls (security invariant 6: bad input
//! gets a named error, never a panic): `config.json` through `Bundle::load` and on to the
//! init's configuration, `exec --process`, `update --resources`, signal names, the global
//! flags, and /proc/PID/stat, whose command name a container's init chooses. The wire
//! messages between the CLI and its children have their own in `process/tests.rs`.
//!
//! Case counts are bounded so that `make test` stays fast (each property takes a second or
//! two in a debug build); `PROPTEST_CASES=N` sets them all for a longer run.

use std::path::{Path, PathBuf};

use oci_spec::runtime::LinuxNamespaceType;
use proptest::prelude::*;
use serde_json::{json, Map, Value};

use crate::error::CliError;
use crate::spec::{normalize_destination, Bundle};

/// Text a hostile caller would try: empty, NUL, `..`, control characters, any Unicode.
fn hostile_text() -> BoxedStrategy<String> {
    prop_oneof![
        Just(String::new()),
        Just("\0".to_string()),
        Just("a\0b".to_string()),
        Just("..".to_string()),
        Just("\n".to_string()),
        "\\PC{0,24}",
        ".{0,12}",
        "[a-z0-9._/-]{0,16}",
    ]
    .boxed()
}

/// Text as a field usually holds, and once in a while hostile text.
fn text() -> BoxedStrategy<String> {
    prop_oneof![6 => "[a-zA-Z0-9 ./=_:-]{0,16}", 1 => hostile_text()].boxed()
}

/// Paths: the ones that matter to Burrow (/dev in every spelling, /, the standard mounts,
/// host namespaces, the bundle's own), relative and `..` ones, and any text.
fn hostile_path() -> BoxedStrategy<String> {
    prop_oneof![
        2 => prop::sample::select(vec![
            "/dev", "/dev/", "//dev", "/./dev", "/dev/.", "/dev/pts/..", "/x/../dev", "dev",
            "/", "", ".", "/proc", "/proc/", "/sys", "/sys/fs/cgroup", "/var/lib/docker",
            "/var/lib/docker/", "/run", "/run/lock", "/tmp", "../etc", "/etc/passwd",
            "/proc/self/ns/net", "/proc/self/ns/user", "/proc/1/ns/pid", "/run/netns/x",
            "rootfs", "/a\0b", "/dev/pts", "/dev/shm", "/dev/mqueue", "/dev/null",
        ])
        .prop_map(String::from),
        2 => "(/[a-z.]{0,6}){1,5}/?",
        1 => hostile_text(),
    ]
    .boxed()
}

/// Numbers of every JSON kind and size, and things that are not numbers.
fn hostile_number() -> BoxedStrategy<Value> {
    prop_oneof![
        prop::sample::select(vec![
            json!(0),
            json!(-1),
            json!(i64::MIN),
            json!(i64::MAX),
            json!(u64::MAX),
            json!(1e308),
            json!(-0.5),
            json!(9_007_199_254_740_993u64),
            json!("12"),
            Value::Null,
        ]),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
    ]
    .boxed()
}

/// A value of the field's type, its extremes included, and once in a while anything: a spec
/// with a value of the wrong type fails to parse as a whole, and most specs should load and
/// get further.
fn rarely_wrong(valid: BoxedStrategy<Value>) -> BoxedStrategy<Value> {
    prop_oneof![30 => valid, 1 => hostile_number()].boxed()
}

fn u32_number() -> BoxedStrategy<Value> {
    rarely_wrong(
        prop_oneof![Just(0), Just(u32::MAX), any::<u32>()]
            .prop_map(Value::from)
            .boxed(),
    )
}

fn u64_number() -> BoxedStrategy<Value> {
    rarely_wrong(
        prop_oneof![Just(0), Just(u64::MAX), any::<u64>()]
            .prop_map(Value::from)
            .boxed(),
    )
}

fn i64_number() -> BoxedStrategy<Value> {
    rarely_wrong(
        prop_oneof![
            Just(0),
            Just(-1),
            Just(i64::MIN),
            Just(i64::MAX),
            any::<i64>()
        ]
        .prop_map(Value::from)
        .boxed(),
    )
}

/// One of `names` (a field's known values), and once in a while any text.
fn mostly(names: Vec<&'static str>) -> BoxedStrategy<String> {
    prop_oneof![
        30 => prop::sample::select(names).prop_map(String::from),
        1 => hostile_text(),
    ]
    .boxed()
}

/// Fields a spec does not define, to be ignored.
fn unknown_fields() -> impl Strategy<Value = Map<String, Value>> {
    prop::collection::btree_map("x[A-Za-z]{0,6}", hostile_text().prop_map(Value::from), 0..2)
        .prop_map(|m| m.into_iter().collect())
}

/// `base` with `fields` added where `Some`, and `extra`.
fn object(fields: Vec<(&str, Option<Value>)>, extra: Map<String, Value>) -> Value {
    let mut map: Map<String, Value> = extra;
    for (key, value) in fields {
        if let Some(value) = value {
            map.insert(key.to_string(), value);
        }
    }
    Value::Object(map)
}

fn rlimit() -> BoxedStrategy<Value> {
    let names = mostly(vec![
        "RLIMIT_NOFILE",
        "RLIMIT_NPROC",
        "RLIMIT_CORE",
        "RLIMIT_MEMLOCK",
        "RLIMIT_STACK",
        "RLIMIT_AS",
        "RLIMIT_CPU",
        "RLIMIT_DATA",
        "RLIMIT_FSIZE",
        "RLIMIT_LOCKS",
        "RLIMIT_MSGQUEUE",
        "RLIMIT_NICE",
        "RLIMIT_RTPRIO",
        "RLIMIT_RTTIME",
        "RLIMIT_SIGPENDING",
    ]);
    (names, u64_number(), u64_number())
        .prop_map(|(typ, hard, soft)| json!({"type": typ, "hard": hard, "soft": soft}))
        .boxed()
}

/// An OCI process: args, env (PATH included), cwd, user, terminal, rlimits, and so on.
fn process() -> BoxedStrategy<Value> {
    let env_entry = prop_oneof![
        hostile_path().prop_map(|p| format!("PATH={p}:/bin")),
        Just("container=other".to_string()),
        hostile_text(),
    ];
    (
        prop::option::weighted(
            0.97,
            prop_oneof![
                9 => prop::collection::vec(text(), 1..4),
                1 => Just(vec![]),
            ],
        ),
        prop::option::of(prop::collection::vec(env_entry, 0..4)),
        prop::option::weighted(0.97, hostile_path()),
        (
            u32_number(),
            u32_number(),
            prop::collection::vec(u32_number(), 0..3),
        ),
        prop::option::of(any::<bool>()),
        prop::option::of(prop::collection::vec(rlimit(), 0..3)),
        prop::option::of(any::<bool>()),
        unknown_fields(),
    )
        .prop_map(
            |(args, env, cwd, (uid, gid, groups), terminal, rlimits, nnp, extra)| {
                object(
                    vec![
                        ("args", args.map(Value::from)),
                        ("env", env.map(Value::from)),
                        ("cwd", cwd.map(Value::from)),
                        (
                            "user",
                            Some(json!({"uid": uid, "gid": gid, "additionalGids": groups})),
                        ),
                        ("terminal", terminal.map(Value::from)),
                        ("rlimits", rlimits.map(Value::from)),
                        ("noNewPrivileges", nnp.map(Value::from)),
                    ],
                    extra,
                )
            },
        )
        .boxed()
}

fn mount() -> BoxedStrategy<Value> {
    let types = prop_oneof![
        4 => prop::sample::select(vec![
            "bind", "rbind", "proc", "sysfs", "tmpfs", "devpts", "mqueue", "cgroup", "cgroup2",
            "overlay", "none", "ext4",
        ])
        .prop_map(String::from),
        1 => hostile_text(),
    ];
    let option = prop_oneof![
        4 => prop::sample::select(vec![
            "bind", "rbind", "ro", "rw", "nosuid", "nodev", "dev", "suid", "exec", "noexec",
            "private", "rshared", "noidmap", "mode=0755", "size=1k",
        ])
        .prop_map(String::from),
        1 => hostile_text(),
    ];
    let destination = prop_oneof![3 => "(/[a-z]{1,6}){1,4}", 1 => hostile_path()];
    (
        destination,
        prop::option::of(types),
        prop::option::of(hostile_path()),
        prop::option::of(prop::collection::vec(option, 0..4)),
    )
        .prop_map(|(destination, typ, source, options)| {
            object(
                vec![
                    ("destination", Some(destination.into())),
                    ("type", typ.map(Value::from)),
                    ("source", source.map(Value::from)),
                    ("options", options.map(Value::from)),
                ],
                Map::new(),
            )
        })
        .boxed()
}

/// Namespaces: mostly the four a system container must have, plus any kind, with and
/// without a path.
fn namespaces() -> BoxedStrategy<Value> {
    let kind = mostly(vec![
        "pid", "network", "ipc", "uts", "mount", "cgroup", "user", "time",
    ]);
    let extra = prop::collection::vec((kind, prop::option::weighted(0.1, hostile_path())), 0..4);
    (prop::bool::weighted(0.9), extra)
        .prop_map(|(required, extra)| {
            let mut list: Vec<Value> = vec![];
            if required {
                list.extend(["pid", "network", "ipc", "mount"].map(|t| json!({"type": t})));
            }
            for (typ, path) in extra {
                list.push(object(
                    vec![("type", Some(typ.into())), ("path", path.map(Value::from))],
                    Map::new(),
                ));
            }
            Value::from(list)
        })
        .boxed()
}

fn resources() -> BoxedStrategy<Value> {
    let device = (
        any::<bool>(),
        prop::option::of(mostly(vec!["a", "b", "c", "u", "p"])),
        prop::option::of(i64_number()),
        prop::option::of(i64_number()),
    )
        .prop_map(|(allow, typ, major, minor)| {
            object(
                vec![
                    ("allow", Some(allow.into())),
                    ("type", typ.map(Value::from)),
                    ("major", major),
                    ("minor", minor),
                    ("access", Some("rwm".into())),
                ],
                Map::new(),
            )
        });
    (
        prop::option::of(prop::collection::vec(device, 0..3)),
        prop::option::of(i64_number()),
        prop::option::of(i64_number()),
        prop::option::of((u64_number(), i64_number(), u64_number())),
        unknown_fields(),
    )
        .prop_map(|(devices, memory, pids, cpu, extra)| {
            object(
                vec![
                    ("devices", devices.map(Value::from)),
                    ("memory", memory.map(|limit| json!({"limit": limit}))),
                    ("pids", pids.map(|limit| json!({"limit": limit}))),
                    (
                        "cpu",
                        cpu.map(|(shares, quota, period)| {
                            json!({"shares": shares, "quota": quota, "period": period})
                        }),
                    ),
                ],
                extra,
            )
        })
        .boxed()
}

fn linux() -> BoxedStrategy<Value> {
    let sysctl_key = prop_oneof![
        1 => prop::sample::select(vec![
            "net.ipv4.ip_forward",
            "kernel.shmmax",
            "fs.mqueue.msg_max",
            "kernel.hostname",
            "kernel.panic",
            "vm.drop_caches",
            "net.x/../../../../etc/passwd",
            "net..",
            "net./",
        ])
        .prop_map(String::from),
        4 => r"net\.[a-z0-9./]{0,12}",
        1 => hostile_text(),
    ];
    (
        prop::option::weighted(0.97, namespaces()),
        prop::option::of(prop::collection::btree_map(
            sysctl_key,
            hostile_text(),
            0..3,
        )),
        prop::option::of(resources()),
        prop::option::of(hostile_path()),
        prop::option::of(prop::collection::vec(hostile_path(), 0..3)),
        prop::option::of(prop::collection::vec(hostile_path(), 0..3)),
        prop::option::of((u32_number(), u32_number(), u32_number())),
        unknown_fields(),
    )
        .prop_map(
            |(namespaces, sysctl, resources, cgroups_path, masked, readonly, map, extra)| {
                object(
                    vec![
                        ("namespaces", namespaces),
                        ("sysctl", sysctl.map(|m| json!(m))),
                        ("resources", resources),
                        ("cgroupsPath", cgroups_path.map(Value::from)),
                        ("maskedPaths", masked.map(Value::from)),
                        ("readonlyPaths", readonly.map(Value::from)),
                        (
                            "uidMappings",
                            map.map(
                                |(c, h, s)| json!([{"containerID": c, "hostID": h, "size": s}]),
                            ),
                        ),
                    ],
                    extra,
                )
            },
        )
        .boxed()
}

fn hooks() -> BoxedStrategy<Value> {
    let hook = (
        hostile_path(),
        prop::option::of(prop::collection::vec(hostile_text(), 0..3)),
        prop::option::of(prop::collection::vec(hostile_text(), 0..2)),
        prop::option::of(i64_number()),
    )
        .prop_map(|(path, args, env, timeout)| {
            object(
                vec![
                    ("path", Some(path.into())),
                    ("args", args.map(Value::from)),
                    ("env", env.map(Value::from)),
                    ("timeout", timeout),
                ],
                Map::new(),
            )
        });
    let phase = prop::sample::select(
        crate::features::HOOKS
            .into_iter()
            .chain(["bogus"])
            .collect::<Vec<_>>(),
    );
    prop::collection::btree_map(phase, prop::collection::vec(hook, 0..2), 0..3)
        .prop_map(|m| json!(m))
        .boxed()
}

/// A mostly valid OCI spec with hostile values; any section may be missing.
fn spec() -> BoxedStrategy<Value> {
    (
        prop::option::weighted(
            0.97,
            (
                prop_oneof![9 => Just("rootfs".to_string()), 1 => hostile_path()],
                prop::option::of(any::<bool>()),
            ),
        ),
        prop::option::weighted(0.97, process()),
        prop::option::of(text()),
        prop::option::of(prop::collection::vec(mount(), 0..5)),
        prop::option::weighted(0.97, linux()),
        prop::option::of(hooks()),
        prop::option::of(prop::collection::btree_map(
            hostile_text(),
            hostile_text(),
            0..3,
        )),
        unknown_fields(),
    )
        .prop_map(
            |(root, process, hostname, mounts, linux, hooks, annotations, extra)| {
                object(
                    vec![
                        ("ociVersion", Some("1.0.2".into())),
                        (
                            "root",
                            root.map(
                                |(path, readonly)| json!({"path": path, "readonly": readonly}),
                            ),
                        ),
                        ("process", process),
                        ("hostname", hostname.map(Value::from)),
                        ("mounts", mounts.map(Value::from)),
                        ("linux", linux),
                        ("hooks", hooks),
                        ("annotations", annotations.map(|m| json!(m))),
                    ],
                    extra,
                )
            },
        )
        .boxed()
}

/// Any text near a spec: a spec's JSON with characters deleted, inserted or replaced.
fn mangled_spec() -> BoxedStrategy<String> {
    let edit = (any::<prop::sample::Index>(), 0..3u8, any::<char>());
    (spec(), prop::collection::vec(edit, 1..4))
        .prop_map(|(spec, edits)| {
            let mut chars: Vec<char> = spec.to_string().chars().collect();
            for (at, how, c) in edits {
                let i = at.index(chars.len() + 1);
                match how {
                    0 if i < chars.len() => {
                        chars.remove(i);
                    }
                    1 => chars.insert(i, c),
                    _ if i < chars.len() => chars[i] = c,
                    _ => {}
                }
            }
            chars.into_iter().collect()
        })
        .boxed()
}

/// A bundle directory with a real rootfs: a shell, systemd behind /sbin/init, dockerd.
fn scratch_bundle(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("burrow-fuzz-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let rootfs = dir.join("rootfs");
    for sub in ["bin", "sbin", "lib/systemd", "usr/bin"] {
        std::fs::create_dir_all(rootfs.join(sub)).unwrap();
    }
    for file in ["bin/sh", "lib/systemd/systemd", "usr/bin/dockerd"] {
        std::fs::write(rootfs.join(file), "").unwrap();
    }
    std::os::unix::fs::symlink("/lib/systemd/systemd", rootfs.join("sbin/init")).unwrap();
    dir
}

/// What a loaded bundle must be: no /dev from the spec, every destination as mountd takes
/// it, binds with a source, the four namespaces a system container needs (and of the ones it
/// names by path, none joined without a container of the caller's to join: see
/// [`check_joins`]), only namespaced sysctls.
/// Namespace paths in a spec, checked against a caller with no container: nothing to join, so
/// every path is refused, but a pod network namespace a root caller may adopt.
fn check_joins(bundle: &Bundle) -> Result<(), TestCaseError> {
    static EMPTY: std::sync::OnceLock<crate::state::Store> = std::sync::OnceLock::new();
    let store = EMPTY.get_or_init(|| {
        let root = std::env::temp_dir().join(format!("burrow-fuzz-store-{}", std::process::id()));
        crate::state::Store::new(&root).expect("an empty state root")
    });
    if let Ok(joins) = crate::namespaces::plan(&bundle.spec, store) {
        prop_assert!(joins.pod.is_none() && joins.enter.is_empty());
    }
    Ok(())
}

fn check_loaded(bundle: &Bundle) -> Result<(), TestCaseError> {
    for m in &bundle.mounts {
        prop_assert_ne!(m.destination.as_str(), "/dev");
        prop_assert_ne!(m.destination.as_str(), "/");
        prop_assert_eq!(
            normalize_destination(&m.destination),
            Some(m.destination.clone())
        );
        prop_assert_eq!(m.typ == "bind", m.source.is_some(), "{:?}", m);
    }
    let namespaces = bundle
        .spec
        .linux()
        .as_ref()
        .and_then(|l| l.namespaces().clone())
        .unwrap_or_default();
    check_joins(bundle)?;
    for typ in [
        LinuxNamespaceType::Pid,
        LinuxNamespaceType::Network,
        LinuxNamespaceType::Ipc,
        LinuxNamespaceType::Mount,
    ] {
        prop_assert!(namespaces.iter().any(|n| n.typ() == typ));
    }
    let sysctls = bundle
        .spec
        .linux()
        .as_ref()
        .and_then(|l| l.sysctl().clone());
    for key in sysctls.unwrap_or_default().keys() {
        prop_assert!(crate::spec::is_namespaced_sysctl(key));
        let file = crate::spec::sysctl_file(key);
        prop_assert!(file.starts_with("/proc/sys/"));
        prop_assert!(!Path::new(&file).components().any(|c| c.as_os_str() == ".."));
    }
    Ok(())
}

/// What create derives from a loaded bundle, without a fork: the init's configuration, the
/// runtime's hooks and their deadlines, the cgroup and its limits. Named errors only.
fn derive(bundle: &Bundle) -> Result<(), TestCaseError> {
    match crate::container::init_config(&bundle.spec, &bundle.rootfs, 0) {
        Ok(config) => prop_assert!(!config.args.is_empty() && !config.program.is_empty()),
        Err(CliError::ProcessSpec(_)) => {}
        Err(e) => prop_assert!(false, "init_config: unexpected error {e}"),
    }
    for phase in ["prestart", "createRuntime", "poststart", "poststop"] {
        for hook in crate::container::hooks_of(&bundle.spec, phase) {
            let _ = crate::process::init::deadline_after(crate::container::hook_timeout(&hook));
        }
    }
    let linux = bundle.spec.linux().as_ref();
    let cgroup =
        burrow_sys::cgroup::path_for(linux.and_then(|l| l.cgroups_path().as_deref()), "fuzz");
    prop_assert!(cgroup.starts_with('/'));
    if let Some(resources) = linux.and_then(|l| l.resources().as_ref()) {
        let limits = crate::spec::limits_of(resources);
        prop_assert!(limits
            .cpu_shares
            .is_none_or(|s| s == 0 || (2..=262_144).contains(&s)));
    }
    Ok(())
}

/// `config.json` holding `text` in `dir`: loads (and then has what a loaded bundle must) or
/// is the bundle error or a refusal.
fn load_or_refuse(dir: &Path, text: &str) -> Result<(), TestCaseError> {
    std::fs::write(dir.join("config.json"), text).unwrap();
    match Bundle::load(dir) {
        Ok(bundle) => {
            check_loaded(&bundle)?;
            derive(&bundle)
        }
        Err(CliError::Bundle { reason, .. }) => {
            prop_assert!(!reason.is_empty());
            Ok(())
        }
        // Text that is no spec: serde's error is kept as the cause.
        Err(CliError::BundleConfig { .. }) => Ok(()),
        Err(CliError::Refused(_)) => Ok(()),
        Err(e) => Err(TestCaseError::fail(format!("unexpected error: {e}"))),
    }
}

/// `n` cases, or `PROPTEST_CASES` when set.
pub fn cases(n: u32) -> ProptestConfig {
    let n = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(n);
    ProptestConfig::with_cases(n)
}

proptest! {
    #![proptest_config(cases(512))]

    /// A structured, mostly valid spec with hostile values loads or is a named error.
    #[test]
    fn any_spec_loads_or_is_refused_by_name(spec in spec()) {
        let dir = scratch_bundle("spec");
        load_or_refuse(&dir, &spec.to_string())?;
        let _ = std::fs::remove_dir_all(dir);
    }

    /// So does any text, and any text near a spec.
    #[test]
    fn any_config_text_loads_or_is_refused_by_name(
        text in prop_oneof!["\\PC{0,200}", mangled_spec()],
    ) {
        let dir = scratch_bundle("text");
        load_or_refuse(&dir, &text)?;
        let _ = std::fs::remove_dir_all(dir);
    }

    /// `exec --process`: any text, or a process with hostile values, is a process (whose
    /// configuration is made or refused by name) or the JSON error.
    #[test]
    fn any_exec_process_is_taken_or_refused_by_name(
        text in prop_oneof![process().prop_map(|p| p.to_string()), "\\PC{0,120}"],
        preserve_fds in prop_oneof![Just(0), any::<i32>()],
    ) {
        let rootfs = scratch_bundle("exec").join("rootfs");
        match crate::parse_process(&text, Path::new("p.json")) {
            Ok(process) => match crate::container::process_config(&process, &rootfs, preserve_fds) {
                Ok(config) => prop_assert_eq!(i64::from(config.preserve_fds), i64::from(preserve_fds)),
                Err(CliError::ProcessSpec(_)) => {}
                Err(e) => prop_assert!(false, "unexpected error {e}"),
            },
            Err(e) => prop_assert!(e.to_string().starts_with("invalid process JSON p.json: ")),
        }
        let _ = std::fs::remove_dir_all(rootfs.parent().unwrap());
    }

}

proptest! {
    #![proptest_config(cases(1024))]

    /// `update --resources`: any text, or resources with hostile numbers, are limits or the
    /// JSON error; CPU shares stay where the kernel takes them.
    #[test]
    fn any_resources_are_limits_or_refused_by_name(
        text in prop_oneof![resources().prop_map(|r| r.to_string()), "\\PC{0,80}"],
    ) {
        match crate::spec::parse_resources(&text) {
            Ok(resources) => {
                let limits = crate::spec::limits_of(&resources);
                prop_assert!(limits.cpu_shares.is_none_or(|s| s == 0 || (2..=262_144).contains(&s)));
            }
            Err(e) => prop_assert!(e.to_string().starts_with("invalid resources JSON: ")),
        }
    }

    /// `kill`'s signal: a number of 1..=64, or the named error.
    #[test]
    fn any_signal_is_a_number_or_refused_by_name(
        name in prop_oneof![
            "\\PC{0,12}",
            "-?[0-9]{1,12}",
            "(SIG|sig)?(TERM|KILL|HUP|RTMIN|INT|NOPE)([+-][0-9])?",
        ],
    ) {
        match crate::container::signal_number(&name) {
            Ok(n) => prop_assert!((1..=64).contains(&n)),
            Err(CliError::BadSignal(bad)) => prop_assert_eq!(bad, name),
            Err(e) => prop_assert!(false, "unexpected error {e}"),
        }
    }

    /// The global flags Docker and containerd may put first: whatever they are, the program
    /// name and everything from the subcommand on are kept as they came.
    #[test]
    fn unknown_global_flags_never_eat_the_command(
        args in prop::collection::vec(
            prop_oneof![
                prop::sample::select(vec![
                    "--root", "--log=/l", "--log", "--log-format", "--rootless", "--rootless=true",
                    "--debug", "--systemd-cgroup", "--criu", "-x", "--", "-", "kill", "state",
                ])
                .prop_map(String::from),
                "\\PC{0,8}",
            ],
            0..8,
        ),
    ) {
        let out = crate::tolerate_unknown_globals(args.clone());
        prop_assert_eq!(out.first(), args.first());
        // Nothing invented, nothing reordered: a subsequence of what came.
        let mut rest = args.iter();
        for kept in &out {
            prop_assert!(rest.any(|a| a == kept), "{:?} from {:?}", out, args);
        }
        // A command line that starts with its subcommand is left alone.
        if args
            .get(1)
            .is_some_and(|a| crate::SUBCOMMANDS.contains(&a.as_str()) || !a.starts_with('-'))
        {
            prop_assert_eq!(&out, &args);
        }
    }

    /// The start time in /proc/PID/stat, whatever name the process gave itself.
    #[test]
    fn any_command_name_leaves_the_start_time_readable(
        comm in prop::collection::vec(1..=255u8, 0..=15),
        state in prop::sample::select(vec!['R', 'S', 'D', 'Z', 'X', 't']),
        start in any::<u64>(),
    ) {
        let mut stat = b"4242 (".to_vec();
        stat.extend(&comm);
        stat.extend(
            format!(
                ") {state} 1 4242 4242 0 -1 4194560 100 0 0 0 0 0 0 0 20 0 1 0 {start} 2322432 \
                 380 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0\n"
            )
            .as_bytes(),
        );
        let expected = (!matches!(state, 'Z' | 'X')).then_some(start);
        prop_assert_eq!(crate::state::parse_start_time(&stat), expected);
    }

    /// Program look-up candidates for any name and PATH: the name itself, or below a
    /// directory of PATH.
    #[test]
    fn program_candidates_stay_the_program(program in "\\PC{0,12}", path in "\\PC{0,40}") {
        let env = vec![format!("PATH={path}")];
        let below = format!("/{program}");
        for candidate in crate::spec::program_candidates(&program, &env) {
            prop_assert!(candidate == program || candidate.ends_with(&below));
        }
    }
}

/// `/dev/` and `//dev` are mountd's `/dev`, and so are skipped like `/dev` (mountd refused
/// them, after the range was taken, and a loaded bundle had a /dev mount from the spec); `..`
/// and relative destinations are refused at load, by name, before anything is made.
#[test]
fn dev_in_any_spelling_is_skipped_and_bad_destinations_are_refused_at_load() {
    let dir = scratch_bundle("dev");
    let base = |destination: &str| {
        json!({
            "ociVersion": "1.0.2",
            "root": {"path": "rootfs"},
            "process": {"args": ["sh"], "cwd": "/", "user": {"uid": 0, "gid": 0}},
            "mounts": [{"destination": destination, "type": "tmpfs", "source": "tmpfs"}],
            "linux": {"namespaces": [{"type": "pid"}, {"type": "network"}, {"type": "ipc"},
                                     {"type": "mount"}]}
        })
        .to_string()
    };
    for dev in ["/dev", "/dev/", "//dev", "/./dev", "/dev/."] {
        std::fs::write(dir.join("config.json"), base(dev)).unwrap();
        let bundle = Bundle::load(&dir).unwrap();
        assert!(
            bundle.mounts.iter().all(|m| m.destination != "/dev"),
            "{dev}"
        );
    }
    std::fs::write(dir.join("config.json"), base("/proc/")).unwrap();
    let bundle = Bundle::load(&dir).unwrap();
    assert_eq!(
        bundle
            .mounts
            .iter()
            .filter(|m| m.destination == "/proc")
            .count(),
        1
    );
    for bad in ["dev", "/dev/pts/..", "/x/../dev", "", "/a\u{0}b", "/", "//"] {
        std::fs::write(dir.join("config.json"), base(bad)).unwrap();
        let e = Bundle::load(&dir).err().unwrap();
        assert!(matches!(e, CliError::Bundle { .. }), "{bad:?}: {e}");
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// A FIFO at config.json blocked `create` for good, a link to a device made it read forever.
#[test]
fn a_config_json_that_is_no_regular_file_is_refused_without_blocking() {
    let dir = scratch_bundle("fifo");
    nix::unistd::mkfifo(&dir.join("config.json"), nix::sys::stat::Mode::S_IRWXU).unwrap();
    let e = Bundle::load(&dir).err().unwrap();
    assert!(
        e.to_string().contains("config.json is not a regular file"),
        "{e}"
    );
    std::fs::remove_file(dir.join("config.json")).unwrap();
    std::os::unix::fs::symlink("/dev/zero", dir.join("config.json")).unwrap();
    let e = Bundle::load(&dir).err().unwrap();
    assert!(
        e.to_string().contains("config.json is not a regular file"),
        "{e}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// A host-wide sysctl is refused when the bundle loads (it was refused only once the range and
/// the init existed).
#[test]
fn a_host_wide_sysctl_is_refused_at_load() {
    let dir = scratch_bundle("sysctl");
    let mut spec: Value = serde_json::from_str(&crate::defaults::spec().to_string()).unwrap();
    spec["linux"]["sysctl"] = json!({"kernel.panic": "5"});
    std::fs::write(dir.join("config.json"), spec.to_string()).unwrap();
    let e = Bundle::load(&dir).err().unwrap();
    assert!(
        matches!(&e, CliError::Refused(m) if m.contains("sysctl kernel.panic is not namespaced")),
        "{e}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// The init's name is any bytes but NUL, not always UTF-8; read as text, the line was
/// unreadable and the running init taken for gone (`attacks.rs` performs it).
#[test]
fn an_init_named_in_no_utf8_is_alive() {
    let stat = b"7 (\xff\xfe) Z 1) S 1 7 7 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 539206 0 0\n";
    assert_eq!(crate::state::parse_start_time(stat), Some(539206));
}

/// An empty argv (execve with no arguments) no longer panics.
#[test]
fn an_empty_argv_is_no_panic() {
    assert!(crate::tolerate_unknown_globals(vec![]).is_empty());
}
