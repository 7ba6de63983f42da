//! The OCI bundle, checked, and turned into a system container: a user namespace with an
//! exclusive range, every namespace of its own, Burrow's /dev, the standard system mounts.

use std::path::{Path, PathBuf};

use burrow_sys::cgroup::Limits;
use oci_spec::runtime::{
    Linux, LinuxDeviceType, LinuxNamespaceType, LinuxResources, Process, Spec,
};

use crate::defaults::{MASKED_PATHS, READONLY_PATHS};
use crate::error::{CliError, Result};
use crate::image::Image;

/// One mount for mountd's plan, with its host source for binds.
#[derive(Debug, Clone)]
pub struct PlannedMount {
    pub destination: String,
    pub typ: String,
    pub source: Option<PathBuf>,
    pub options: Vec<String>,
}

pub struct Bundle {
    pub dir: PathBuf,
    pub spec: Spec,
    pub rootfs: PathBuf,
    pub mounts: Vec<PlannedMount>,
    /// How many of `mounts` come before /dev in the spec's order (devd's /dev takes its place).
    pub dev_at: usize,
    pub masked: Vec<String>,
    pub readonly: Vec<String>,
    /// Sysctl subtrees writable again under a read-only /proc/sys: the namespaced net.* ones.
    pub writable_sysctls: Vec<String>,
    /// The init is systemd (see `runs_systemd`).
    pub systemd: bool,
    /// The spec's `linux.devices`, which devd adds to the container's /dev from its allowlist
    /// and the device policy allows.
    pub extra_devices: Vec<ExtraDevice>,
    /// The image has dockerd and the spec mounts nothing at /var/lib/docker: the container gets
    /// a host directory there, since overlay2 cannot use the overlay rootfs as its upper layer.
    pub wants_docker_data: bool,
}

/// Where an inner dockerd keeps its images and layers.
pub const DOCKER_DATA: &str = "/var/lib/docker";

fn bundle_error(dir: &Path, reason: impl Into<String>) -> CliError {
    CliError::Bundle {
        bundle: dir.display().to_string(),
        reason: reason.into(),
    }
}

/// For `map_err` of a failure to read the bundle `dir`: `what` failed.
fn bundle_file<'a, E: Into<std::io::Error>>(
    dir: &'a Path,
    what: &'static str,
) -> impl FnOnce(E) -> CliError + 'a {
    move |source| CliError::BundleFile {
        bundle: dir.display().to_string(),
        what,
        source: source.into(),
    }
}

/// Mounts every system container gets, unless the spec has its own at that destination.
fn standard_mounts() -> Vec<PlannedMount> {
    crate::defaults::MOUNTS
        .iter()
        .map(|m| PlannedMount {
            destination: m.destination.into(),
            typ: m.typ.into(),
            source: None,
            options: m.options.iter().map(|s| s.to_string()).collect(),
        })
        .collect()
}

impl Bundle {
    pub fn load(dir: &Path) -> Result<Bundle> {
        let dir = dir
            .canonicalize()
            .map_err(bundle_file(dir, "cannot open"))?;
        let spec = read_config(&dir)?;
        let rootfs = rootfs_of(&dir, &spec)?;
        let process = spec
            .process()
            .as_ref()
            .ok_or_else(|| bundle_error(&dir, "config.json has no process"))?;
        if process.args().as_ref().is_none_or(|a| a.is_empty()) {
            return Err(bundle_error(&dir, "process.args is empty"));
        }
        check_isolation(&spec)?;
        check_refusals(&spec)?;
        check_rootfs_propagation(&dir, &spec)?;
        check_tenant_limits(&spec)?;
        let extra_devices = extra_devices(&dir, &spec)?;
        let (mut mounts, mut dev_at) = planned_mounts(&dir, &spec)?;
        let mut spec = spec;
        let image = Image::open(&rootfs)?;
        let systemd = runs_systemd(&image, &spec);
        if systemd {
            dev_at += prepare_for_systemd(&mut spec, &mut mounts);
        }
        let wants_docker_data = !mounts.iter().any(|m| m.destination == DOCKER_DATA)
            && ["/usr/bin/dockerd", "/usr/sbin/dockerd"]
                .iter()
                .any(|p| image.regular_file(p).is_some());
        let linux = spec.linux().as_ref();
        let masked = paths_or(linux.and_then(|l| l.masked_paths().clone()), &MASKED_PATHS);
        let readonly = paths_or(
            linux.and_then(|l| l.readonly_paths().clone()),
            &READONLY_PATHS,
        );
        let writable_sysctls = if readonly.iter().any(|p| p == "/proc/sys") {
            vec!["/proc/sys/net".to_string()]
        } else {
            vec![]
        };
        Ok(Bundle {
            dir,
            spec,
            rootfs,
            mounts,
            dev_at,
            masked,
            readonly,
            writable_sysctls,
            systemd,
            wants_docker_data,
            extra_devices,
        })
    }
}

/// A device of `linux.devices`: its name below /dev (devd's allowlist names), numbers, and
/// the mode and owner (the container's IDs) its node gets inside, where the spec sets them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtraDevice {
    pub name: String,
    pub major: u32,
    pub minor: u32,
    pub file_mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
}

/// The spec's `linux.devices` (Docker's `--device`), each a character device that is the
/// host's node of that path: devd copies the host's node, so other numbers would give the
/// container a device other than the one named. Only root's containers get extras: a tenant's
/// cgroup, which idmapd makes, allows devd's standard set alone.
fn extra_devices(dir: &Path, spec: &Spec) -> Result<Vec<ExtraDevice>> {
    let devices = spec
        .linux()
        .as_ref()
        .and_then(|l| l.devices().clone())
        .unwrap_or_default();
    if !devices.is_empty() && !nix::unistd::geteuid().is_root() {
        return Err(CliError::Refused(
            "linux.devices: extra devices are given to root's containers only".into(),
        ));
    }
    devices
        .iter()
        .map(|device| {
            let path = device.path().to_string_lossy();
            let refuse = |why: String| bundle_error(dir, format!("linux.devices {path}: {why}"));
            let name = normalize_destination(&path)
                .and_then(|p| p.strip_prefix("/dev/").map(String::from))
                .ok_or_else(|| refuse("not a path below /dev".into()))?;
            let kind = match device.typ() {
                LinuxDeviceType::C | LinuxDeviceType::U => None,
                LinuxDeviceType::B => Some("a block device"),
                LinuxDeviceType::P => Some("a FIFO"),
                LinuxDeviceType::A => Some("of type \"a\" (all)"),
            };
            if let Some(kind) = kind {
                return Err(refuse(format!(
                    "{kind}: a container gets character devices only"
                )));
            }
            let (major, minor) = (device.major() as u32, device.minor() as u32);
            let host = rustix::fs::stat(Path::new("/dev").join(&name))
                .map_err(|e| refuse(format!("no such node on the host: {e}")))?;
            if rustix::fs::FileType::from_raw_mode(host.st_mode)
                != rustix::fs::FileType::CharacterDevice
            {
                return Err(refuse(
                    "the host's node of that path is not a character device".into(),
                ));
            }
            let host_numbers = (
                rustix::fs::major(host.st_rdev),
                rustix::fs::minor(host.st_rdev),
            );
            if host_numbers != (major, minor) {
                return Err(refuse(format!(
                    "{major}:{minor} is not the host's node of that path ({}:{})",
                    host_numbers.0, host_numbers.1
                )));
            }
            Ok(ExtraDevice {
                name,
                major,
                minor,
                file_mode: device.file_mode(),
                uid: device.uid(),
                gid: device.gid(),
            })
        })
        .collect()
}

/// The bundle's config.json. Whoever wrote the bundle may have put a FIFO there (which would
/// block the open) or a link to a device (which would never end): only a regular file is
/// read, and the open does not wait.
pub fn read_config(dir: &Path) -> Result<Spec> {
    use rustix::fs::{FileType, Mode, OFlags};
    let path = dir.join("config.json");
    let file = match rustix::fs::open(
        &path,
        OFlags::RDONLY | OFlags::NONBLOCK | OFlags::CLOEXEC,
        Mode::empty(),
    ) {
        Ok(fd) => std::fs::File::from(fd),
        Err(rustix::io::Errno::NOENT) => return Err(bundle_error(dir, "config.json is missing")),
        Err(e) => return Err(bundle_file(dir, "cannot open config.json")(e)),
    };
    let stat = rustix::fs::fstat(&file).map_err(bundle_file(dir, "cannot stat config.json"))?;
    if FileType::from_raw_mode(stat.st_mode) != FileType::RegularFile {
        return Err(bundle_error(dir, "config.json is not a regular file"));
    }
    let text =
        std::io::read_to_string(file).map_err(bundle_file(dir, "cannot read config.json"))?;
    let invalid = |source| CliError::BundleConfig {
        bundle: dir.display().to_string(),
        source,
    };
    let mut value: serde_json::Value = serde_json::from_str(&text).map_err(invalid)?;
    if let Some(process) = value.get_mut("process") {
        crate::process::tuning::spec_flag_names_for_oci_spec(process);
    }
    serde_json::from_value(value).map_err(invalid)
}

/// The rootfs the spec names: relative to the bundle, or absolute; a directory.
fn rootfs_of(dir: &Path, spec: &Spec) -> Result<PathBuf> {
    let root = spec
        .root()
        .as_ref()
        .ok_or_else(|| bundle_error(dir, "config.json has no root"))?;
    let rootfs = if root.path().is_absolute() {
        root.path().clone()
    } else {
        dir.join(root.path())
    };
    if !rootfs.is_dir() {
        return Err(bundle_error(
            dir,
            format!(
                "rootfs {} does not exist or is not a directory",
                rootfs.display()
            ),
        ));
    }
    Ok(rootfs)
}

/// A mount destination as mountd takes it (mountd's `plan::normalize_path`): absolute,
/// without NUL or `..`, at most 4096 bytes, with empty and `.` components dropped. Checked
/// here so that a destination is compared (with /dev, with the standard mounts) as mountd will
/// mount it: `/dev/` and `//dev` are `/dev`. None for one mountd refuses.
pub fn normalize_destination(path: &str) -> Option<String> {
    if !path.starts_with('/') || path.contains('\0') || path.len() > 4096 {
        return None;
    }
    let mut parts = vec![];
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => return None,
            other => parts.push(other),
        }
    }
    Some(format!("/{}", parts.join("/")))
}

/// The spec's mounts for mountd (without /dev, which comes from devd, and how many come
/// before it), then the standard ones it lacks; every cgroup mount writable.
fn planned_mounts(dir: &Path, spec: &Spec) -> Result<(Vec<PlannedMount>, usize)> {
    let mut mounts = vec![];
    let mut dev_at = None;
    for mount in spec.mounts().as_deref().unwrap_or_default() {
        let raw = mount.destination().to_string_lossy();
        let destination = normalize_destination(&raw).ok_or_else(|| {
            bundle_error(
                dir,
                format!("mount destination {raw:?} is not an absolute path without \"..\""),
            )
        })?;
        // The container's /dev comes from devd, its root from root.path.
        match destination.as_str() {
            "/dev" => {
                dev_at.get_or_insert(mounts.len());
                continue;
            }
            "/" => {
                return Err(bundle_error(
                    dir,
                    "a mount on / is not allowed (see root.path)",
                ))
            }
            _ => {}
        }
        let mut options = mount.options().clone().unwrap_or_default();
        let is_bind = options.iter().any(|o| o == "bind" || o == "rbind");
        let typ = if is_bind {
            "bind".to_string()
        } else {
            mount.typ().clone().unwrap_or_else(|| "bind".into())
        };
        let source = if typ == "bind" {
            let source = mount.source().clone().ok_or_else(|| {
                bundle_error(dir, format!("bind mount {destination} has no source"))
            })?;
            Some(if source.is_absolute() {
                source
            } else {
                dir.join(source)
            })
        } else {
            // A fresh filesystem's source is only the name it shows as its device; mountd
            // passes it to the kernel as the `source` parameter.
            if let Some(name) = mount.source() {
                options.push(format!("source={}", name.display()));
            }
            None
        };
        mounts.push(PlannedMount {
            destination,
            typ,
            source,
            options,
        });
    }
    for standard in standard_mounts() {
        if !mounts.iter().any(|m| m.destination == standard.destination) {
            mounts.push(standard);
        }
    }
    // The container's cgroups are delegated to its root, which owns only its own subtree
    // (never the limit files): a writable cgroupfs is what lets systemd and Docker inside
    // manage sub-cgroups, as on a host.
    for cgroup in mounts.iter_mut().filter(|m| m.typ.starts_with("cgroup")) {
        cgroup.options.retain(|o| o != "ro");
    }
    Ok((mounts, dev_at.unwrap_or(0)))
}

/// The limits of the spec's (or `burrow update`'s) resources that Burrow applies.
/// CPU shares are 2..=262144 (the kernel's MIN_SHARES and MAX_SHARES, to which cgroup v1
/// clamps what it is given); 0 means unchanged.
const CPU_SHARES: std::ops::RangeInclusive<u64> = 2..=262_144;

pub fn limits_of(resources: &LinuxResources) -> Limits {
    let cpu = resources.cpu().as_ref();
    Limits {
        memory: resources.memory().as_ref().and_then(|m| m.limit()),
        pids: resources.pids().as_ref().map(|p| p.limit()),
        // Clamped here as v1 does, so that the conversion to a cgroup2 weight stays in range
        // (and cannot overflow).
        cpu_shares: cpu.and_then(|c| c.shares()).map(|s| match s {
            0 => 0,
            s => s.clamp(*CPU_SHARES.start(), *CPU_SHARES.end()),
        }),
        cpu_quota: cpu.and_then(|c| c.quota()),
        cpu_period: cpu.and_then(|c| c.period()),
    }
}

/// `burrow update`'s resources (LinuxResources JSON, from a file or stdin).
pub fn parse_resources(text: &str) -> Result<LinuxResources> {
    serde_json::from_str(text).map_err(|source| CliError::Json {
        what: "resources JSON".into(),
        source,
    })
}

/// Does the spec start systemd? args[0], looked up in PATH and with symlinks followed inside
/// the image (`/sbin/init` is a link to `/lib/systemd/systemd` on Debian), is a regular file
/// named `systemd`.
fn runs_systemd(image: &Image, spec: &Spec) -> bool {
    let Some(process) = spec.process() else {
        return false;
    };
    let Some(program) = process.args().as_ref().and_then(|a| a.first()) else {
        return false;
    };
    let env = process.env().clone().unwrap_or_default();
    program_candidates(program, &env).iter().any(|candidate| {
        image
            .regular_file(candidate)
            .is_some_and(|file| file.name == "systemd")
    })
}

/// Where the container finds `program`: itself if it has a slash, else each directory of the
/// environment's PATH (or the usual default) joined with it, in order.
pub fn program_candidates(program: &str, env: &[String]) -> Vec<String> {
    if program.contains('/') {
        return vec![program.to_string()];
    }
    env.iter()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or(crate::defaults::PATH)
        .split(':')
        .map(|dir| format!("{}/{program}", dir.trim_end_matches('/')))
        .collect()
}

/// What systemd as PID 1 expects of a container: tmpfs on /run and /run/lock (before any
/// mount the spec puts below them) and `container=` in its environment. Returns how many
/// mounts it put first.
fn prepare_for_systemd(spec: &mut Spec, mounts: &mut Vec<PlannedMount>) -> usize {
    let mut added = 0;
    let tmpfs = |destination: &str, options: &[&str]| PlannedMount {
        destination: destination.into(),
        typ: "tmpfs".into(),
        source: None,
        options: options.iter().map(|s| s.to_string()).collect(),
    };
    for (index, wanted) in [
        tmpfs("/run", &["nosuid", "nodev", "mode=755", "size=20%"]),
        tmpfs("/run/lock", &["nosuid", "nodev", "noexec", "size=5m"]),
    ]
    .into_iter()
    .enumerate()
    {
        if !mounts.iter().any(|m| m.destination == wanted.destination) {
            mounts.insert(index, wanted);
            added += 1;
        }
    }
    if let Some(mut process) = spec.process().clone() {
        let mut env = process.env().clone().unwrap_or_default();
        if !env.iter().any(|e| e.starts_with("container=")) {
            env.push("container=burrow".into());
        }
        process.set_env(Some(env));
        spec.set_process(Some(process));
    }
    added
}

/// A field Burrow does not apply, when `set` finds it in the spec (or process), and why.
struct Refusal<T> {
    field: &'static str,
    set: fn(&T) -> bool,
    why: &'static str,
}

/// The Linux section's `field`, where set.
fn linux_has(spec: &Spec, field: impl Fn(&Linux) -> bool) -> bool {
    spec.linux().as_ref().is_some_and(field)
}

/// The clocks a time namespace has offsets for (time_namespaces(7)).
const TIME_NAMESPACE_CLOCKS: [&str; 2] = ["monotonic", "boottime"];

/// Whether the spec asks for a time namespace of the container's own (listed, without a path).
fn new_time_namespace(spec: &Spec) -> bool {
    linux_has(spec, |l| {
        l.namespaces()
            .iter()
            .flatten()
            .any(|n| n.typ() == LinuxNamespaceType::Time && n.path().is_none())
    })
}

/// Every field of config.json that Burrow refuses rather than drops, with its reason (fields
/// it replaces by its own decision, such as the ID mappings and seccomp, are documented in
/// the README instead). Checked at create, before anything is made.
const REFUSALS: &[Refusal<Spec>] = &[
    Refusal {
        field: "linux.netDevices",
        set: |s| {
            linux_has(s, |l| {
                l.net_devices().as_ref().is_some_and(|d| !d.is_empty())
            })
        },
        why: "moving host network interfaces into a container is not supported (its network is \
              its own, or its pod's)",
    },
    Refusal {
        field: "linux.intelRdt",
        set: |s| linux_has(s, |l| l.intel_rdt().is_some()),
        why: "Burrow does not manage resctrl (Intel RDT) groups",
    },
    Refusal {
        field: "linux.mountLabel",
        set: |s| {
            linux_has(s, |l| {
                l.mount_label().as_ref().is_some_and(|m| !m.is_empty())
            })
        },
        why: "Burrow applies no SELinux mount labels",
    },
    Refusal {
        field: "linux.personality.flags",
        set: |s| {
            linux_has(s, |l| {
                l.personality()
                    .as_ref()
                    .is_some_and(|p| p.flags().as_ref().is_some_and(|f| !f.is_empty()))
            })
        },
        why: "the runtime spec defines no personality flags (only the domain LINUX or LINUX32)",
    },
    Refusal {
        field: "linux.timeOffsets",
        set: |s| {
            linux_has(s, |l| {
                l.time_offsets()
                    .iter()
                    .flatten()
                    .any(|(clock, _)| !TIME_NAMESPACE_CLOCKS.contains(&clock.as_str()))
            })
        },
        why: "a time namespace has offsets for the clocks monotonic and boottime only",
    },
    Refusal {
        field: "linux.timeOffsets",
        set: |s| {
            linux_has(s, |l| {
                l.time_offsets().as_ref().is_some_and(|o| !o.is_empty())
            }) && !new_time_namespace(s)
        },
        why: "offsets need a new time namespace (linux.namespaces lists \"time\" without a \
              path): the runtime's, or a joined one, has its offsets already",
    },
    Refusal {
        field: "linux.timeOffsets",
        set: |s| {
            linux_has(s, |l| {
                l.time_offsets()
                    .iter()
                    .flatten()
                    .any(|(_, o)| o.nanosecs().is_some_and(|n| n >= 1_000_000_000))
            })
        },
        why: "nanosecs must be below one second",
    },
    Refusal {
        field: "linux.timeOffsets",
        set: |s| {
            linux_has(s, |l| {
                l.time_offsets().as_ref().is_some_and(|o| !o.is_empty())
            }) && !nix::unistd::geteuid().is_root()
        },
        why: "only a root runtime can write a time namespace's offsets (the file is the host \
              root's while the container's processes are non-dumpable)",
    },
    Refusal {
        field: "mounts[].uidMappings",
        set: |s| {
            s.mounts().iter().flatten().any(|m| {
                m.uid_mappings().as_ref().is_some_and(|u| !u.is_empty())
                    || m.gid_mappings().as_ref().is_some_and(|g| !g.is_empty())
            })
        },
        why: "a bind mount is ID-mapped into the container's own range by Burrow (\"noidmap\" \
              opts out); mappings of the spec's own are not applied",
    },
    Refusal {
        field: "solaris",
        set: |s| s.solaris().is_some(),
        why: "Burrow runs Linux containers",
    },
    Refusal {
        field: "windows",
        set: |s| s.windows().is_some(),
        why: "Burrow runs Linux containers",
    },
    Refusal {
        field: "vm",
        set: |s| s.vm().is_some(),
        why: "Burrow runs containers, not virtual machines",
    },
    Refusal {
        field: "zos",
        set: |s| s.zos().is_some(),
        why: "Burrow runs Linux containers",
    },
];

/// The process fields Burrow refuses, at create (the spec's process) and at exec (`--process`).
const PROCESS_REFUSALS: &[Refusal<Process>] = &[Refusal {
    field: "process.commandLine",
    set: |p| p.command_line().as_ref().is_some_and(|c| !c.is_empty()),
    why: "a Windows field: a Linux process is given by process.args",
}];

/// The first entry of `table` whose field `value` sets, as its error.
fn refused<T>(table: &[Refusal<T>], value: &T) -> Result<()> {
    match table.iter().find(|r| (r.set)(value)) {
        Some(r) => Err(CliError::Unsupported {
            field: r.field,
            why: r.why,
        }),
        None => Ok(()),
    }
}

/// Refuses what `REFUSALS` and `PROCESS_REFUSALS` list.
fn check_refusals(spec: &Spec) -> Result<()> {
    refused(REFUSALS, spec)?;
    spec.process()
        .as_ref()
        .map_or(Ok(()), check_process_refusals)
}

/// Refuses what `PROCESS_REFUSALS` lists (also for exec's process).
pub fn check_process_refusals(process: &Process) -> Result<()> {
    refused(PROCESS_REFUSALS, process)
}

/// A non-root runtime's container is under the admin's per-user limits (idmapd's cgroup, whose
/// limit files are never delegated): limits of its own cannot be applied, so they are refused
/// rather than dropped.
fn check_tenant_limits(spec: &Spec) -> Result<()> {
    let resources = spec.linux().as_ref().and_then(|l| l.resources().as_ref());
    if nix::unistd::geteuid().is_root()
        || !resources.is_some_and(burrow_sys::cgroup::resources::sets_a_limit)
    {
        return Ok(());
    }
    Err(CliError::Refused(
        "linux.resources: a non-root runtime's container has the limits the admin set for its \
         user (the quota file), not limits of its own"
            .into(),
    ))
}

/// The container's mounts are a locked copy in a namespace of its own user namespace, where
/// its rootfs is private: `linux.rootfsPropagation` may ask for that and nothing else (a
/// shared or slave rootfs would need a peer group with the host's mounts).
fn check_rootfs_propagation(dir: &Path, spec: &Spec) -> Result<()> {
    let propagation = spec
        .linux()
        .as_ref()
        .and_then(|l| l.rootfs_propagation().clone());
    match propagation.as_deref() {
        None | Some("") | Some("private") | Some("rprivate") => Ok(()),
        Some(other) => Err(bundle_error(
            dir,
            format!(
                "linux.rootfsPropagation {other:?}: a Burrow container's rootfs is always private"
            ),
        )),
    }
}

/// A system container has all namespaces of its own, or its pod's ([`crate::namespaces`]
/// checks those named by path), and no privilege beyond them.
fn check_isolation(spec: &Spec) -> Result<()> {
    let namespaces = spec
        .linux()
        .as_ref()
        .and_then(|l| l.namespaces().clone())
        .unwrap_or_default();
    let has = |t: LinuxNamespaceType| namespaces.iter().any(|n| n.typ() == t);
    for (typ, flag, what) in [
        (LinuxNamespaceType::Pid, "--pid=host", "pid"),
        (LinuxNamespaceType::Network, "--net=host", "network"),
        (LinuxNamespaceType::Ipc, "--ipc=host", "ipc"),
        (LinuxNamespaceType::Mount, "--mount=host", "mount"),
    ] {
        if !has(typ) {
            return Err(CliError::Refused(format!(
                "the host's {what} namespace ({flag}) cannot be shared with a Burrow system container"
            )));
        }
    }
    let devices = spec
        .linux()
        .as_ref()
        .and_then(|l| l.resources().as_ref())
        .and_then(|r| r.devices().clone())
        .unwrap_or_default();
    if devices
        .iter()
        .any(|d| d.allow() && d.typ().is_none() && d.major().is_none() && d.minor().is_none())
    {
        return Err(CliError::Refused(
            "--privileged is not supported: a Burrow system container runs systemd and Docker without it \
             (it has full capabilities inside its own user namespace)"
                .into(),
        ));
    }
    check_sysctls(spec)
}

/// Whether `key` names a sysctl of the container's own network, ipc or uts namespace.
pub fn is_namespaced_sysctl(key: &str) -> bool {
    key.starts_with("net.")
        || key.starts_with("kernel.shm")
        || key.starts_with("kernel.msg")
        || key.starts_with("kernel.sem")
        || key.starts_with("fs.mqueue.")
        || key == "kernel.hostname"
        || key == "kernel.domainname"
}

/// The spec's sysctls are written from the host side into the container's namespaces: a
/// host-wide one is refused.
fn check_sysctls(spec: &Spec) -> Result<()> {
    let sysctls = spec.linux().as_ref().and_then(|l| l.sysctl().as_ref());
    match sysctls
        .into_iter()
        .flatten()
        .find(|(key, _)| !is_namespaced_sysctl(key))
    {
        Some((key, _)) => Err(CliError::Refused(format!(
            "sysctl {key} is not namespaced and cannot be set for a container"
        ))),
        None => Ok(()),
    }
}

/// The file of sysctl `key` (dots for slashes, as sysctl(8) and runc write them): below
/// /proc/sys, with no `..` (every dot became a slash).
pub fn sysctl_file(key: &str) -> String {
    format!("/proc/sys/{}", key.replace('.', "/"))
}

/// The spec's paths, or runc's defaults when it names none.
fn paths_or(paths: Option<Vec<String>>, defaults: &[&str]) -> Vec<String> {
    paths
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| defaults.iter().map(|s| s.to_string()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal spec with `extra` merged into its top level (and `linux` into its Linux
    /// section, which lists a time namespace).
    fn spec_with(extra: serde_json::Value, linux: serde_json::Value) -> Spec {
        let mut spec = serde_json::json!({
            "ociVersion": "1.2.0",
            "process": {"args": ["sh"], "cwd": "/", "user": {"uid": 0, "gid": 0}},
            "linux": {"namespaces": [{"type": "user"}, {"type": "time"}]},
        });
        for (key, value) in extra.as_object().unwrap() {
            spec[key] = value.clone();
        }
        for (key, value) in linux.as_object().unwrap() {
            spec["linux"][key] = value.clone();
        }
        serde_json::from_value(spec).unwrap()
    }

    fn refusal(spec: &Spec) -> Option<(&'static str, &'static str)> {
        match check_refusals(spec) {
            Ok(()) => None,
            Err(CliError::Unsupported { field, why }) => Some((field, why)),
            Err(other) => panic!("{other}"),
        }
    }

    #[test]
    fn each_refused_field_is_named_with_its_reason() {
        let none = serde_json::json!({});
        for (extra, linux, field) in [
            (
                none.clone(),
                serde_json::json!({"netDevices": {"eth1": {}}}),
                "linux.netDevices",
            ),
            (
                none.clone(),
                serde_json::json!({"intelRdt": {"closID": "a"}}),
                "linux.intelRdt",
            ),
            (
                none.clone(),
                serde_json::json!({"mountLabel": "x"}),
                "linux.mountLabel",
            ),
            (
                none.clone(),
                serde_json::json!({"personality": {"domain": "LINUX", "flags": ["ADDR_NO_RANDOMIZE"]}}),
                "linux.personality.flags",
            ),
            (
                none.clone(),
                serde_json::json!({"timeOffsets": {"realtime": {"secs": 1}}}),
                "linux.timeOffsets",
            ),
            (
                none.clone(),
                serde_json::json!({"timeOffsets": {"boottime": {"nanosecs": 1_000_000_000u32}}}),
                "linux.timeOffsets",
            ),
            (
                serde_json::json!({"mounts": [{"destination": "/a", "source": "/b", "options": ["bind", "idmap"],
                    "uidMappings": [{"containerID": 0, "hostID": 1, "size": 1}],
                    "gidMappings": [{"containerID": 0, "hostID": 1, "size": 1}]}]}),
                none.clone(),
                "mounts[].uidMappings",
            ),
            (serde_json::json!({"solaris": {}}), none.clone(), "solaris"),
            (
                serde_json::json!({"windows": {"layerFolders": []}}),
                none.clone(),
                "windows",
            ),
            (
                serde_json::json!({"vm": {"kernel": {"path": "/k"}}}),
                none.clone(),
                "vm",
            ),
            (serde_json::json!({"zos": {}}), none.clone(), "zos"),
            (
                serde_json::json!({"process": {"args": ["sh"], "cwd": "/", "user": {"uid": 0, "gid": 0},
                    "commandLine": "sh"}}),
                none.clone(),
                "process.commandLine",
            ),
        ] {
            let spec = spec_with(extra, linux);
            let (refused, why) = refusal(&spec).unwrap_or_else(|| panic!("{field} accepted"));
            assert_eq!(refused, field);
            assert!(!why.is_empty());
        }
    }

    #[test]
    fn applied_fields_are_not_refused() {
        let spec = spec_with(
            serde_json::json!({"domainname": "example.org"}),
            serde_json::json!({
                "personality": {"domain": "LINUX32"},
                "timeOffsets": {"monotonic": {"secs": 10}, "boottime": {"secs": -5, "nanosecs": 7}},
                "memoryPolicy": {"mode": "MPOL_LOCAL"},
                "mountLabel": "",
            }),
        );
        assert_eq!(refusal(&spec), None);
    }

    #[test]
    fn time_offsets_need_a_new_time_namespace() {
        let offsets = serde_json::json!({"monotonic": {"secs": 1}});
        let without = spec_with(
            serde_json::json!({}),
            serde_json::json!({"namespaces": [{"type": "user"}], "timeOffsets": offsets}),
        );
        let joined = spec_with(
            serde_json::json!({}),
            serde_json::json!({"namespaces": [{"type": "time", "path": "/proc/1/ns/time"}],
                "timeOffsets": offsets}),
        );
        for spec in [without, joined] {
            let (field, why) = refusal(&spec).unwrap();
            assert_eq!(field, "linux.timeOffsets");
            assert!(why.contains("new time namespace"), "{why}");
        }
    }

    #[test]
    fn programs_are_looked_up_in_path() {
        let env = vec!["PATH=/a/:/b".to_string()];
        assert_eq!(program_candidates("init", &env), ["/a/init", "/b/init"]);
        assert_eq!(program_candidates("/sbin/init", &env), ["/sbin/init"]);
        assert_eq!(program_candidates("x/y", &[]), ["x/y"]);
        assert_eq!(program_candidates("sh", &[]).len(), 6);
    }
}
