//! `burrow features`: what this build, on this host, supports, as the runtime spec's
//! features.md document (oci-spec's `Features`), so callers such as containerd and Docker read
//! it with the spec's own keys. A list that is `None` means "unknown" to the spec, so every list
//! Burrow knows is given, even when empty.

use std::collections::HashMap;

use oci_spec::runtime::{
    Apparmor, Arch, Cgroup, Features, IDMap, IntelRdt, LinuxFeature, LinuxNamespaceType,
    LinuxSeccompAction, MemoryPolicy, MountExtensions, NetDevices, Seccomp, Selinux,
};

/// The newest spec whose fields Burrow reads. oci-spec 0.10's `VERSION` still says 1.1.0, but its
/// types carry 1.2's (idmapped mounts, `mountExtensions`), which Burrow implements, and some of
/// 1.3's: `memoryPolicy` it applies, `netDevices` and `intelRdt` it refuses by name.
const OCI_VERSION_MAX: &str = "1.2.0";

/// Every hook kind the runtime runs (`container::hooks_of` and the init's container hooks).
pub const HOOKS: [&str; 6] = [
    "prestart",
    "createRuntime",
    "createContainer",
    "startContainer",
    "poststart",
    "poststop",
];

/// The flag options mountd's `plan::parse_options` accepts (it refuses any other; `key=value`
/// filesystem data such as `mode=` or `size=` is not a mount option in the spec's sense).
const MOUNT_OPTIONS: [&str; 27] = [
    "atime",
    "bind",
    "defaults",
    "dev",
    "exec",
    "noatime",
    "nodev",
    "nodiratime",
    "noexec",
    "noidmap",
    "norelatime",
    "nostrictatime",
    "nosuid",
    "private",
    "rbind",
    "relatime",
    "ro",
    "rprivate",
    "rshared",
    "rslave",
    "runbindable",
    "rw",
    "shared",
    "slave",
    "strictatime",
    "suid",
    "unbindable",
];

/// Burrow's design decisions a caller should know, as implementation-specific annotations.
const ANNOTATIONS: [(&str, &str); 4] = [
    ("org.burrow.system-container", "true"),
    (
        "org.burrow.user-namespace",
        "always a new user namespace with an exclusive ID range from burrow-idmapd; \
         the spec's uidMappings and gidMappings are replaced",
    ),
    (
        "org.burrow.seccomp",
        "Burrow's own system-container profile; the spec's linux.seccomp is not used",
    ),
    (
        "org.burrow.capabilities",
        "root in the container keeps every capability of its own user namespace",
    ),
];

/// The features document of this build on this host.
pub fn features() -> Features {
    let mut features = Features::default();
    features.set_oci_version_min("1.0.0".into());
    features.set_oci_version_max(OCI_VERSION_MAX.into());
    features.set_hooks(Some(strings(&HOOKS)));
    features.set_mount_options(Some(strings(&MOUNT_OPTIONS)));
    features.set_linux(Some(linux()));
    let mut annotations: HashMap<_, _> = ANNOTATIONS
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    annotations.insert(crate::lxcfs::ANNOTATION.into(), crate::lxcfs::feature());
    annotations.insert(crate::sysinfo::ANNOTATION.into(), crate::sysinfo::feature());
    features.set_annotations(Some(annotations));
    features
}

/// The document as `burrow features` prints it: fields the spec leaves unknown (`None`, which
/// oci-spec serializes as null) are left out, as runc's omitempty does.
pub fn to_json(features: &Features) -> serde_json::Value {
    let mut value = serde_json::to_value(features).expect("Features serializes to JSON");
    drop_nulls(&mut value);
    value
}

fn drop_nulls(value: &mut serde_json::Value) {
    if let serde_json::Value::Object(map) = value {
        map.retain(|_, v| !v.is_null());
        map.values_mut().for_each(drop_nulls);
    }
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

fn linux() -> LinuxFeature {
    let mut linux = LinuxFeature::default();
    // Every kind is made: time only when the spec asks, the others always.
    linux.set_namespaces(Some(vec![
        LinuxNamespaceType::Cgroup,
        LinuxNamespaceType::Ipc,
        LinuxNamespaceType::Mount,
        LinuxNamespaceType::Network,
        LinuxNamespaceType::Pid,
        LinuxNamespaceType::User,
        LinuxNamespaceType::Uts,
        LinuxNamespaceType::Time,
    ]));
    linux.set_capabilities(Some(capabilities()));
    linux.set_cgroup(Some(supported_cgroup()));
    linux.set_seccomp(Some(seccomp()));
    // No LSM profile is applied: the user namespace and seccomp are the confinement.
    let mut apparmor = Apparmor::default();
    apparmor.set_enabled(Some(false));
    linux.set_apparmor(Some(apparmor));
    let mut selinux = Selinux::default();
    selinux.set_enabled(Some(false));
    linux.set_selinux(Some(selinux));
    // Bind mounts are idmapped into the container's range unless `noidmap` is given.
    let mut idmap = IDMap::default();
    idmap.set_enabled(Some(true));
    let mut extensions = MountExtensions::default();
    extensions.set_idmap(Some(idmap));
    linux.set_mount_extensions(Some(extensions));
    linux.set_memory_policy(Some(memory_policy()));
    // Refused by name (`spec::REFUSALS`): Burrow manages no resctrl groups and moves no host
    // interface into a container.
    let mut intel_rdt = IntelRdt::default();
    intel_rdt.set_enabled(Some(false));
    linux.set_intel_rdt(Some(intel_rdt));
    let mut net_devices = NetDevices::default();
    net_devices.set_enabled(Some(false));
    linux.set_net_devices(Some(net_devices));
    linux
}

/// linux.memoryPolicy: every mode and flag of set_mempolicy(2) that the spec names
/// (`process::tuning::mem_policy`); the kernel judges their combination.
fn memory_policy() -> MemoryPolicy {
    let mut policy = MemoryPolicy::default();
    policy.set_modes(Some(strings(&[
        "MPOL_DEFAULT",
        "MPOL_BIND",
        "MPOL_INTERLEAVE",
        "MPOL_WEIGHTED_INTERLEAVE",
        "MPOL_PREFERRED",
        "MPOL_PREFERRED_MANY",
        "MPOL_LOCAL",
    ])));
    policy.set_flags(Some(strings(&[
        "MPOL_F_NUMA_BALANCING",
        "MPOL_F_RELATIVE_NODES",
        "MPOL_F_STATIC_NODES",
    ])));
    policy
}

/// The capabilities this kernel knows, in the kernel's order: root in the container holds all of
/// them within its user namespace.
fn capabilities() -> Vec<String> {
    let mut known: Vec<_> = caps::runtime::thread_all_supported().into_iter().collect();
    known.sort_by_key(|c| c.index());
    known.iter().map(|c| c.to_string()).collect()
}

/// What this build supports, as the spec defines these fields (unrelated to what the host
/// uses): cgroup v1, v2 (and hybrid hosts), and systemd scopes with `--systemd-cgroup` where
/// PID 1 is systemd; no user-scoped systemd cgroups.
fn supported_cgroup() -> Cgroup {
    let mut cgroup = Cgroup::default();
    cgroup.set_v1(Some(true));
    cgroup.set_v2(Some(true));
    cgroup.set_systemd(Some(true));
    cgroup.set_systemd_user(Some(false));
    cgroup
}

/// What Burrow's own profile (`seccomp.rs`) uses: allow by default, EPERM for the denied calls,
/// a killed process for a call of another architecture; no argument comparisons.
fn seccomp() -> Seccomp {
    let mut seccomp = Seccomp::default();
    seccomp.set_enabled(Some(true));
    seccomp.set_actions(Some(vec![
        LinuxSeccompAction::ScmpActAllow,
        LinuxSeccompAction::ScmpActErrno,
        LinuxSeccompAction::ScmpActKillProcess,
    ]));
    seccomp.set_operators(Some(vec![]));
    seccomp.set_archs(Some(host_arch().into_iter().collect()));
    seccomp
}

/// The architecture the profile is built for (seccompiler's targets).
fn host_arch() -> Option<Arch> {
    match std::env::consts::ARCH {
        "x86_64" => Some(Arch::ScmpArchX86_64),
        "aarch64" => Some(Arch::ScmpArchAarch64),
        "riscv64" => Some(Arch::ScmpArchRiscv64),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(value: &serde_json::Value) -> Vec<&str> {
        let mut keys: Vec<&str> = value
            .as_object()
            .expect("an object")
            .keys()
            .map(String::as_str)
            .collect();
        keys.sort();
        keys
    }

    #[test]
    fn serializes_with_the_spec_keys_only() {
        let json = to_json(&features());
        assert_eq!(
            keys(&json),
            [
                "annotations",
                "hooks",
                "linux",
                "mountOptions",
                "ociVersionMax",
                "ociVersionMin"
            ]
        );
        assert_eq!(
            keys(&json["linux"]),
            [
                "apparmor",
                "capabilities",
                "cgroup",
                "intelRdt",
                "memoryPolicy",
                "mountExtensions",
                "namespaces",
                "netDevices",
                "seccomp",
                "selinux"
            ]
        );
        assert_eq!(
            keys(&json["linux"]["cgroup"]),
            ["systemd", "systemdUser", "v1", "v2"]
        );
        assert_eq!(
            keys(&json["linux"]["seccomp"]),
            ["actions", "archs", "enabled", "operators"]
        );
        assert_eq!(json["linux"]["mountExtensions"]["idmap"]["enabled"], true);
        // The document reads back as the spec's type: nothing Burrow-specific in it.
        let back: Features = serde_json::from_value(json).unwrap();
        assert_eq!(back, features());
    }

    #[test]
    fn values_are_burrows() {
        let json = to_json(&features());
        assert_eq!(json["ociVersionMin"], "1.0.0");
        assert_eq!(json["ociVersionMax"], OCI_VERSION_MAX);
        assert_eq!(json["hooks"].as_array().unwrap().len(), 6);
        let options = json["mountOptions"].as_array().unwrap();
        for option in ["rbind", "ro", "noidmap", "rprivate"] {
            assert!(options.contains(&option.into()), "{option}");
        }
        assert!(!options.contains(&"tmpcopyup".into()));
        let namespaces = json["linux"]["namespaces"].as_array().unwrap();
        assert!(namespaces.contains(&"user".into()) && namespaces.contains(&"time".into()));
        let capabilities = json["linux"]["capabilities"].as_array().unwrap();
        assert_eq!(capabilities[0], "CAP_CHOWN");
        assert!(capabilities.contains(&"CAP_SYS_ADMIN".into()));
        assert_eq!(json["linux"]["seccomp"]["enabled"], true);
        assert!(json["linux"]["seccomp"]["actions"]
            .as_array()
            .unwrap()
            .contains(&"SCMP_ACT_ERRNO".into()));
        assert_eq!(json["linux"]["apparmor"]["enabled"], false);
        assert_eq!(json["linux"]["intelRdt"]["enabled"], false);
        assert_eq!(json["linux"]["netDevices"]["enabled"], false);
        assert_eq!(
            json["linux"]["memoryPolicy"]["modes"]
                .as_array()
                .unwrap()
                .len(),
            7
        );
        assert_eq!(json["linux"]["cgroup"]["systemdUser"], false);
        assert_eq!(json["linux"]["cgroup"]["systemd"], true);
        assert_eq!(json["annotations"]["org.burrow.system-container"], "true");
        let lxcfs = json["annotations"]["org.burrow.lxcfs"].as_str().unwrap();
        assert!(
            lxcfs.starts_with("on: ") || lxcfs.starts_with("off: "),
            "{lxcfs}"
        );
    }
}
