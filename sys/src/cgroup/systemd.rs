//! The systemd cgroup driver (`--systemd-cgroup` on a host whose PID 1 is systemd): the
//! container's cgroup is a transient scope that systemd makes, as runc's systemd driver does,
//! rather than a directory written into systemd's tree behind its back (which systemd would
//! neither account for nor leave alone).
//!
//! The scope carries everything systemd re-applies on its own (on `systemctl daemon-reload`,
//! or when a sibling changes): the spec's limits as unit properties, and `DevicePolicy=strict`
//! with `DeviceAllow=` for exactly the nodes of Burrow's device policy, so that systemd never
//! widens the device cgroup to its defaults. Burrow's own policy goes on top as on any host
//! (v1 `devices` rules, the same; a cgroup2 program attached beside systemd's, which systemd
//! never detaches), and the delegation too.
//!
//! The D-Bus calls are written here, not taken from cgroups-rs's `SystemdManager`: that one
//! sets no device properties, does not wait for systemd's job, and opens its own blocking
//! connection, where the runtime has its async one to the system bus already.

use std::path::Path;
use std::time::Duration;

use futures_util::StreamExt;
use zbus::zvariant::{OwnedObjectPath, Value};

use super::{CgroupError, CharDevice, DevicePolicy, Limits};

#[zbus::proxy(
    interface = "org.freedesktop.systemd1.Manager",
    default_service = "org.freedesktop.systemd1",
    default_path = "/org/freedesktop/systemd1"
)]
trait Manager {
    fn subscribe(&self) -> zbus::Result<()>;
    fn start_transient_unit(
        &self,
        name: &str,
        mode: &str,
        properties: &[(&str, Value<'_>)],
        aux: &[(&str, &[(&str, Value<'_>)])],
    ) -> zbus::Result<OwnedObjectPath>;
    fn stop_unit(&self, name: &str, mode: &str) -> zbus::Result<OwnedObjectPath>;
    fn set_unit_properties(
        &self,
        name: &str,
        runtime: bool,
        properties: &[(&str, Value<'_>)],
    ) -> zbus::Result<()>;
    fn reset_failed_unit(&self, name: &str) -> zbus::Result<()>;
    fn get_unit(&self, name: &str) -> zbus::Result<OwnedObjectPath>;
    #[zbus(signal)]
    fn job_removed(
        &self,
        id: u32,
        job: zbus::zvariant::ObjectPath<'_>,
        unit: &str,
        result: &str,
    ) -> zbus::Result<()>;
}

#[zbus::proxy(
    interface = "org.freedesktop.systemd1.Scope",
    default_service = "org.freedesktop.systemd1"
)]
trait Scope {
    #[zbus(property)]
    fn control_group(&self) -> zbus::Result<String>;
}

/// How long systemd may take to start or stop a scope (it is immediate unless systemd is busy).
const JOB_TIMEOUT: Duration = Duration::from_secs(30);

/// Whether this host's PID 1 is systemd (what `sd_booted()` checks).
pub fn host_runs_systemd() -> bool {
    Path::new("/run/systemd/system").exists()
}

/// A transient scope in a slice, named from a `slice:prefix:name` cgroupsPath as runc names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScopeUnit {
    pub slice: String,
    pub unit: String,
}

impl ScopeUnit {
    /// The scope for `slice:prefix:name` (an empty slice is `system.slice`); None for any
    /// other form of path.
    pub fn parse(cgroups_path: &Path) -> Option<ScopeUnit> {
        let path = cgroups_path.to_str()?;
        let [slice, prefix, name] = path.split(':').collect::<Vec<_>>()[..] else {
            return None;
        };
        if name.is_empty() || path.starts_with('/') {
            return None;
        }
        let slice = if slice.is_empty() {
            "system.slice"
        } else {
            slice
        };
        let unit = if prefix.is_empty() {
            format!("{name}.scope")
        } else {
            format!("{prefix}-{name}.scope")
        };
        Some(ScopeUnit {
            slice: slice.to_string(),
            unit,
        })
    }
}

fn bus(what: String) -> impl FnOnce(zbus::Error) -> CgroupError {
    move |source| CgroupError::Systemd {
        what,
        source: Box::new(source),
    }
}

/// Starts `scope` with `pid` in it and returns its cgroup path (systemd's `ControlGroup`, the
/// same below every hierarchy). `pid` must not be reusable meanwhile (an unreaped child).
pub async fn start_scope(
    conn: &zbus::Connection,
    scope: &ScopeUnit,
    pid: i32,
    limits: &Limits,
    devices: &DevicePolicy,
) -> Result<String, CgroupError> {
    let unit = &scope.unit;
    let manager = ManagerProxy::new(conn)
        .await
        .map_err(bus("reaching systemd".into()))?;
    // A scope left failed by an earlier container of this name would block the new one.
    let _ = manager.reset_failed_unit(unit).await;
    let properties = scope_properties(scope, pid, limits, devices);
    run_job(&manager, unit, "starting", async {
        manager
            .start_transient_unit(unit, "replace", &properties, &[])
            .await
    })
    .await?;
    let path = manager
        .get_unit(unit)
        .await
        .map_err(bus(format!("finding unit {unit}")))?;
    ScopeProxy::builder(conn)
        .path(path)
        .map_err(bus(format!("addressing unit {unit}")))?
        .build()
        .await
        .map_err(bus(format!("addressing unit {unit}")))?
        .control_group()
        .await
        .map_err(bus(format!("reading the cgroup of unit {unit}")))
}

/// Stops `unit` (its processes are gone already, or systemd kills them) and waits until
/// systemd has removed its cgroup. A unit that is gone already is fine.
pub async fn stop_scope(conn: &zbus::Connection, unit: &str) -> Result<(), CgroupError> {
    let manager = ManagerProxy::new(conn)
        .await
        .map_err(bus("reaching systemd".into()))?;
    let stopped = run_job(&manager, unit, "stopping", async {
        manager.stop_unit(unit, "replace").await
    })
    .await;
    match stopped {
        Err(CgroupError::Systemd { source, .. }) if is_no_such_unit(&source) => Ok(()),
        other => {
            let _ = manager.reset_failed_unit(unit).await;
            other
        }
    }
}

/// systemd's answer for a unit it does not have loaded (a scope goes once its last process
/// has, unless it failed).
fn is_no_such_unit(error: &zbus::Error) -> bool {
    matches!(error, zbus::Error::MethodError(name, _, _)
        if name.as_str() == "org.freedesktop.systemd1.NoSuchUnit")
}

/// Sets `limits` on the running scope `unit` (`burrow update`), for as long as it runs: systemd
/// writes them, and re-applies these rather than those the scope was started with.
pub async fn set_limits(
    conn: &zbus::Connection,
    unit: &str,
    limits: &Limits,
) -> Result<(), CgroupError> {
    let what = || format!("setting the limits of unit {unit}");
    let properties = limit_properties(limits);
    if properties.is_empty() {
        return Ok(());
    }
    ManagerProxy::new(conn)
        .await
        .map_err(bus(what()))?
        .set_unit_properties(unit, true, &properties)
        .await
        .map_err(bus(what()))
}

/// Runs the call that queues a job for `unit` and waits for the job's end, which must be
/// `done`: systemd answers the call as soon as the job is queued.
async fn run_job(
    manager: &ManagerProxy<'_>,
    unit: &str,
    action: &'static str,
    call: impl std::future::Future<Output = zbus::Result<OwnedObjectPath>>,
) -> Result<(), CgroupError> {
    let what = || format!("{action} unit {unit}");
    // Subscribed before the call, so that the job's end cannot be missed. A connection that
    // runs several jobs (a helper's) is subscribed after its first.
    match manager.subscribe().await {
        Err(zbus::Error::MethodError(name, _, _))
            if name.as_str() == "org.freedesktop.systemd1.AlreadySubscribed" => {}
        subscribed => subscribed.map_err(bus(what()))?,
    }
    let mut ends = manager.receive_job_removed().await.map_err(bus(what()))?;
    let job = call.await.map_err(bus(what()))?;
    let result = tokio::time::timeout(JOB_TIMEOUT, async {
        while let Some(end) = ends.next().await {
            let args = end.args().map_err(bus(what()))?;
            if args.job().as_str() == job.as_str() {
                return Ok(args.result().to_string());
            }
        }
        Ok("lost (the bus closed)".to_string())
    })
    .await
    .unwrap_or_else(|_| Ok("unfinished (timed out)".to_string()))?;
    if result == "done" {
        Ok(())
    } else {
        Err(CgroupError::JobFailed {
            unit: unit.to_string(),
            action,
            result,
        })
    }
}

/// The scope's properties: runc's (delegated, no default dependencies, in its slice, with the
/// pid), accounting for the controllers the limits use, the limits, and the device policy.
fn scope_properties<'a>(
    scope: &'a ScopeUnit,
    pid: i32,
    limits: &Limits,
    devices: &DevicePolicy,
) -> Vec<(&'static str, Value<'a>)> {
    let pid = u32::try_from(pid).expect("a process id is positive");
    let mut properties: Vec<(&'static str, Value<'a>)> = vec![
        ("Description", Value::from("burrow container")),
        ("Slice", Value::from(scope.slice.as_str())),
        ("Delegate", Value::from(true)),
        ("DefaultDependencies", Value::from(false)),
        ("PIDs", Value::from(vec![pid])),
        ("MemoryAccounting", Value::from(true)),
        ("TasksAccounting", Value::from(true)),
        ("CPUAccounting", Value::from(true)),
        ("DevicePolicy", Value::from("strict")),
        ("DeviceAllow", Value::from(device_allow(devices))),
    ];
    // On v1, systemd removes a unit's cgroup (and its slices') from every hierarchy it
    // supports but the unit does not use, blkio included: accounted, it is made and kept.
    if !cgroups_rs::fs::hierarchies::is_cgroup2_unified_mode() {
        properties.push(("BlockIOAccounting", Value::from(true)));
    }
    properties.extend(limit_properties(limits));
    properties
}

/// The spec's limits as systemd's properties, so that systemd re-applies them rather than its
/// defaults (MemoryMax= and CPUWeight= are written as their v1 equivalents on v1). As for
/// cgroupfs, a limit that is zero, negative or absent is left alone.
fn limit_properties(limits: &Limits) -> Vec<(&'static str, Value<'static>)> {
    let positive =
        |limit: Option<i64>| limit.and_then(|l| u64::try_from(l).ok()).filter(|l| *l > 0);
    let mut properties = vec![];
    if let Some(memory) = positive(limits.memory) {
        properties.push(("MemoryMax", Value::from(memory)));
    }
    if let Some(pids) = positive(limits.pids) {
        properties.push(("TasksMax", Value::from(pids)));
    }
    if let Some(shares) = limits.cpu_shares.filter(|s| *s > 0) {
        if cgroups_rs::fs::hierarchies::is_cgroup2_unified_mode() {
            properties.push(("CPUWeight", Value::from(cpu_weight(shares))));
        } else {
            properties.push(("CPUShares", Value::from(shares)));
        }
    }
    let period = limits.cpu_period.filter(|p| *p > 0);
    if let Some(quota) = positive(limits.cpu_quota) {
        // systemd takes the quota per second of time, runc's conversion.
        let per_second = quota * 1_000_000 / period.unwrap_or(100_000);
        properties.push(("CPUQuotaPerSecUSec", Value::from(per_second)));
    }
    if let Some(period) = period {
        properties.push(("CPUQuotaPeriodUSec", Value::from(period)));
    }
    properties
}

/// cgroup2 has weights: runc's conversion from shares (2..262144, what v1 clamps to) to weight
/// (1..10000).
fn cpu_weight(shares: u64) -> u64 {
    1 + (shares.clamp(2, 262144) - 2) * 9999 / 262142
}

/// `policy` as systemd can state it, which is what the scope gets from Burrow too, so that the
/// cgroup's policy is the same before and after systemd re-applies its own: a whole major only
/// if /proc/devices names it. The pty majors 137-143 are not named (major 136 alone carries
/// the 2^20 pseudo-terminals the kernel allows at most), so they are left out.
pub fn as_systemd_states_it(policy: DevicePolicy) -> DevicePolicy {
    let proc_devices = std::fs::read_to_string("/proc/devices").unwrap_or_default();
    policy.only(|device| !device_names(device, &proc_devices).is_empty())
}

/// `DeviceAllow=` for `policy`, read and write: a node by number as `/dev/char/MAJOR:MINOR`
/// (which systemd parses rather than looks up), a whole major by its name in /proc/devices
/// (`char-pts`, for the pseudo-terminals).
fn device_allow(policy: &DevicePolicy) -> Vec<(String, String)> {
    let proc_devices = std::fs::read_to_string("/proc/devices").unwrap_or_default();
    let mut entries: Vec<String> = policy
        .allowed()
        .iter()
        .flat_map(|device| device_names(device, &proc_devices))
        .collect();
    entries.dedup();
    entries.into_iter().map(|e| (e, "rw".to_string())).collect()
}

fn device_names(device: &CharDevice, proc_devices: &str) -> Vec<String> {
    if let Some(minor) = device.minor {
        return vec![format!("/dev/char/{}:{minor}", device.major)];
    }
    proc_devices
        .lines()
        .skip_while(|l| !l.starts_with("Character devices:"))
        .take_while(|l| !l.starts_with("Block devices:"))
        .filter_map(|l| l.trim().split_once(' '))
        .filter(|(major, _)| major.parse() == Ok(device.major))
        .map(|(_, name)| format!("char-{name}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_are_named_as_runc_names_them() {
        let scope = |p: &str| ScopeUnit::parse(Path::new(p));
        assert_eq!(
            scope("system.slice:burrow:abc"),
            Some(ScopeUnit {
                slice: "system.slice".into(),
                unit: "burrow-abc.scope".into()
            })
        );
        assert_eq!(
            scope(":cri-containerd:abc").map(|s| (s.slice, s.unit)),
            Some(("system.slice".into(), "cri-containerd-abc.scope".into()))
        );
        assert_eq!(scope("/docker/abc"), None);
        assert_eq!(scope("abc"), None);
    }

    #[test]
    fn limits_become_properties_and_unset_ones_none() {
        let limits = Limits {
            memory: Some(64 << 20),
            pids: Some(0),
            cpu_quota: Some(50_000),
            cpu_period: Some(200_000),
            ..Limits::default()
        };
        let names: Vec<(&str, String)> = limit_properties(&limits)
            .into_iter()
            .map(|(name, value)| (name, value.to_string()))
            .collect();
        assert_eq!(
            names,
            [
                ("MemoryMax", "uint64 67108864".to_string()),
                ("CPUQuotaPerSecUSec", "uint64 250000".to_string()),
                ("CPUQuotaPeriodUSec", "uint64 200000".to_string()),
            ]
        );
        assert!(limit_properties(&Limits {
            memory: Some(-1),
            ..Limits::default()
        })
        .is_empty());
    }

    #[test]
    fn device_allow_names_the_standard_nodes_and_the_pty_major() {
        // As the kernel lists the pty majors: 136 alone, 137-143 never named.
        let proc_devices = "Character devices:\n  1 mem\n136 pts\n\nBlock devices:\n  8 sd\n";
        let names: Vec<String> = DevicePolicy::standard()
            .allowed()
            .iter()
            .flat_map(|d| device_names(d, proc_devices))
            .collect();
        assert_eq!(
            names,
            [
                "/dev/char/1:3",
                "/dev/char/1:5",
                "/dev/char/1:7",
                "/dev/char/1:8",
                "/dev/char/1:9",
                "/dev/char/5:0",
                "/dev/char/5:2",
                "char-pts",
            ]
        );
    }
}
