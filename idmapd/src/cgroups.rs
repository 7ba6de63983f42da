//! Delegated cgroups for other users' containers (`AddControlGroup`), as systemd-nsresourced's
//! AddControlGroupToUserNamespace: a non-root runtime cannot create cgroups, so idmapd makes
//! one per holder of a range below the user's own (which carries the admin's per-user limits),
//! moves the container's first process in, and hands the subtree to the range's root. A
//! holder's cgroup goes when that holder releases the range, and all of the range's when the
//! range is freed.
//!
//! Where they are depends on the host ([`Placement`]): on a host run by systemd, each is a
//! transient scope with `Delegate=yes` in the user's slice `burrow-users-UID.slice`, which
//! systemd makes and accounts for (idmapd never writes into systemd's tree behind its back);
//! elsewhere, idmapd's own tree `/burrow-users/user-UID` at every hierarchy's root.

use std::collections::{BTreeMap, BTreeSet};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use burrow_contract::idmap::CGROUP_ROOT;
use burrow_contract::BurrowError;
use burrow_sys::cgroup::systemd::{self, ScopeUnit};
use burrow_sys::cgroup::{self, DevicePolicy, Limits};
use burrow_sys::fork::Parked;
use burrow_sys::nsfs::ns_id;
use burrow_sys::pidfd;
use burrow_sys::quota::Quota;
use burrow_sys::service::blocking;
use tokio::sync::OnceCell;

use crate::registry::Record;

/// Where users' containers' cgroups are made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// idmapd's own tree, `/burrow-users`, at the root of every hierarchy.
    Cgroupfs,
    /// systemd's scopes, in per-user slices.
    Systemd,
}

impl Placement {
    pub fn of_host() -> Placement {
        if systemd::host_runs_systemd() {
            Placement::Systemd
        } else {
            Placement::Cgroupfs
        }
    }

    /// The cgroup below every hierarchy's root that all users' cgroups are in. idmapd makes it
    /// at start, the one time it may write at a hierarchy's root: under systemd, for the v1
    /// hierarchies systemd leaves out (it makes the slice's directories in those it manages,
    /// and takes over one that is there already).
    pub fn users_root(self) -> &'static str {
        match self {
            Placement::Cgroupfs => CGROUP_ROOT,
            Placement::Systemd => "/burrow.slice",
        }
    }
}

/// A holder of a range, or a whole range, that went: its cgroups are to be removed (after the
/// allocator's lock is released, as removing may wait for systemd).
#[derive(Debug, Clone)]
pub enum Gone {
    Holder(Record, String),
    Range(Record),
}

/// AddControlGroup's request: the pidfd's process, which must be inside `record`'s user
/// namespace, goes into the cgroup of the range's `holder`, under `quota`'s per-user limits.
pub struct Grant {
    pub record: Record,
    pub holder: String,
    pub process: OwnedFd,
    pub quota: Quota,
}

/// A cgroup to remove: its path below every hierarchy's root, and the scope systemd holds it
/// as (stopped first).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leftover {
    path: String,
    unit: Option<String>,
}

/// The users' containers' cgroups of this host, and the connection to systemd that scopes are
/// made through (opened at the first need).
pub struct Cgroups {
    placement: Placement,
    systemd: OnceCell<zbus::Connection>,
}

fn failed(e: impl std::fmt::Display) -> BurrowError {
    BurrowError::Failed(e.to_string())
}

/// The user's cgroup, which carries the admin's per-user limits: a directory of idmapd's tree,
/// or a slice.
fn user_cgroup(placement: Placement, uid: u32) -> String {
    let root = placement.users_root();
    match placement {
        Placement::Cgroupfs => format!("{root}/user-{uid}"),
        // As systemd lays out a slice whose name has dashes: one level per dash.
        Placement::Systemd => format!("{root}/burrow-users.slice/{}", user_slice(uid)),
    }
}

fn user_slice(uid: u32) -> String {
    format!("burrow-users-{uid}.slice")
}

/// The name of the cgroup of the range's first holder; every other holder's starts with it
/// and `-`.
fn range_cgroup(placement: Placement, record: &Record) -> String {
    match placement {
        Placement::Cgroupfs => format!("range-{}", record.base),
        Placement::Systemd => format!("burrow-range-{}", record.base),
    }
}

/// The name of `holder`'s cgroup below the user's: `range-BASE` for the name the range was
/// allocated under (as before ranges had several holders), `range-BASE-NAME` for each other
/// one; as a scope, `burrow-range-BASE[-NAME].scope`, with the one character a name may have
/// that a unit name may not (`+`) escaped as systemd escapes it. Names are safe path
/// components (`validate_name`: no `/`, not `.` or `..`), and no name starts with `-` nor a
/// base with one, so no two holders or ranges share a cgroup.
fn holder_cgroup(placement: Placement, record: &Record, holder: &str) -> String {
    let range = range_cgroup(placement, record);
    let name = if holder == record.name {
        range
    } else {
        format!("{range}-{holder}")
    };
    match placement {
        Placement::Cgroupfs => name,
        Placement::Systemd => format!("{}.scope", name.replace('+', "\\x2b")),
    }
}

impl Cgroups {
    pub fn new(placement: Placement) -> Self {
        Cgroups {
            placement,
            systemd: OnceCell::new(),
        }
    }

    async fn systemd(&self) -> Result<&zbus::Connection, BurrowError> {
        self.systemd
            .get_or_try_init(zbus::Connection::system)
            .await
            .map_err(|e| BurrowError::Failed(format!("connecting to systemd: {e}")))
    }

    /// Puts the request's process into the delegated cgroup of the range's holder, under the
    /// per-user limits. Returns the cgroup path.
    pub async fn grant(&self, request: Grant) -> Result<String, BurrowError> {
        match self.placement {
            Placement::Cgroupfs => blocking(move || grant_in_tree(&request)).await,
            Placement::Systemd => self.grant_scope(request).await,
        }
    }

    /// The systemd placement: systemd takes only plain pids for a scope's first process, and a
    /// pid of the caller's could be another process's by the time systemd reads it. So the
    /// scope starts around a placeholder child of idmapd's own (unreaped, so its pid is its
    /// own); the caller's process then moves in by its pidfd as in idmapd's own tree, and the
    /// placeholder goes before the subtree is handed over (the container's root could freeze
    /// it, and idmapd would wait to reap it).
    async fn grant_scope(&self, request: Grant) -> Result<String, BurrowError> {
        let Grant {
            record,
            holder,
            process,
            quota,
        } = request;
        let conn = self.systemd().await?;
        let scope = ScopeUnit {
            slice: user_slice(record.uid),
            unit: holder_cgroup(self.placement, &record, &holder),
        };
        let (record, process, placeholder) = blocking(move || {
            check_member(&record, &holder, process.as_fd())?;
            // SAFETY: the setup makes no call at all; the placeholder only waits to be killed.
            let placeholder = unsafe { Parked::spawn(&[], "wait", || 0) }?;
            Ok((record, process, placeholder))
        })
        .await?;
        let devices = systemd::as_systemd_states_it(DevicePolicy::standard());
        let path = systemd::start_scope(
            conn,
            &scope,
            placeholder.pid(),
            &Limits::default(),
            &devices,
        )
        .await
        .map_err(failed)?;
        let granted = async {
            systemd::set_limits(conn, &scope.slice, &user_limits(&quota))
                .await
                .map_err(failed)?;
            let path = path.clone();
            blocking(move || {
                let cgroup = cgroup::adopt(&path, &devices).map_err(failed)?;
                crate::pin::move_into(process.as_fd(), &cgroup.procs_files())?;
                drop(placeholder);
                cgroup
                    .delegate((record.base, record.base))
                    .map_err(failed)?;
                Ok(path)
            })
            .await
        }
        .await;
        if granted.is_err() {
            self.remove(vec![Leftover {
                path,
                unit: Some(scope.unit),
            }])
            .await;
        }
        granted
    }

    /// Removes the cgroups of what went: each scope is stopped (systemd removes the cgroups
    /// it manages), then every directory left in any hierarchy (those systemd does not manage,
    /// and idmapd's own tree) is removed.
    pub async fn remove_gone(&self, gone: Vec<Gone>) {
        if gone.is_empty() {
            return;
        }
        let placement = self.placement;
        let leftovers = blocking(move || Ok(leftovers_of_all(placement, &gone)))
            .await
            .unwrap_or_default();
        self.remove(leftovers).await;
    }

    /// The cgroups of what went (it reads the hierarchies: call it off the executor, as from
    /// the allocator's thread), for [`Self::remove`].
    pub fn leftovers_of(&self, gone: &[Gone]) -> Vec<Leftover> {
        leftovers_of_all(self.placement, gone)
    }

    /// Removes `leftovers`: each scope is stopped, then its directories in every hierarchy go.
    pub async fn remove(&self, leftovers: Vec<Leftover>) {
        for leftover in leftovers {
            if let Some(unit) = &leftover.unit {
                let stopped = match self.systemd().await {
                    Ok(conn) => systemd::stop_scope(conn, unit).await.map_err(failed),
                    Err(e) => Err(e),
                };
                if let Err(e) = stopped {
                    tracing::warn!(unit, error = %e, "cannot stop the scope of a user's container");
                }
            }
            let path = leftover.path;
            let _ = blocking(move || {
                cgroup::remove(&path);
                Ok(())
            })
            .await;
        }
    }
}

/// The cgroups of a batch of what went. Each user's cgroup is listed once for the batch: a
/// drain frees dozens of one user's ranges at a time, and each listing opens the directory in
/// every hierarchy (ten on a v1 host), work that took a CPU for milliseconds.
fn leftovers_of_all(placement: Placement, gone: &[Gone]) -> Vec<Leftover> {
    let mut listed = BTreeMap::new();
    gone.iter()
        .flat_map(|gone| leftovers_of(placement, gone, &mut listed))
        .collect()
}

/// The cgroups of what went: a holder's own; for a range, those of its holders and any a crash
/// left of earlier holders (its namespace is gone, so its processes are too), found in the
/// user's cgroup, whose listing `listed` keeps by uid.
fn leftovers_of(
    placement: Placement,
    gone: &Gone,
    listed: &mut BTreeMap<u32, BTreeSet<String>>,
) -> Vec<Leftover> {
    let leftover = |record: &Record, name: String| {
        let user = user_cgroup(placement, record.uid);
        Leftover {
            path: format!("{user}/{name}"),
            unit: (placement == Placement::Systemd).then_some(name),
        }
    };
    match gone {
        Gone::Holder(record, holder) => {
            vec![leftover(record, holder_cgroup(placement, record, holder))]
        }
        Gone::Range(record) => {
            let range = range_cgroup(placement, record);
            let first = holder_cgroup(placement, record, &record.name);
            let holder_prefix = format!("{range}-");
            listed
                .entry(record.uid)
                .or_insert_with(|| cgroup::children(&user_cgroup(placement, record.uid)))
                .iter()
                .filter(|child| **child == first || child.starts_with(&holder_prefix))
                .map(|child| leftover(record, child.clone()))
                .collect()
        }
    }
}

fn user_limits(quota: &Quota) -> Limits {
    Limits {
        memory: quota.memory_max,
        pids: quota.pids_max,
        ..Limits::default()
    }
}

/// The placement in idmapd's own tree: the user's directory with the per-user limits, then the
/// holder's below it, made, entered and delegated here.
fn grant_in_tree(request: &Grant) -> Result<String, BurrowError> {
    let (record, holder) = (&request.record, &request.holder);
    check_member(record, holder, request.process.as_fd())?;
    let user = user_cgroup(Placement::Cgroupfs, record.uid);
    cgroup::make(&user, &user_limits(&request.quota)).map_err(failed)?;
    let path = format!(
        "{user}/{}",
        holder_cgroup(Placement::Cgroupfs, record, holder)
    );
    // A leftover at this path (of the range's previous owner, or of a holder of the same name
    // whose release idmapd did not finish) is removed first if no process is left in it: its
    // container is gone. One still holding processes is refused.
    let cgroup = cgroup::create(&path).map_err(failed)?;
    let moved = cgroup
        .restrict(&DevicePolicy::standard())
        .map_err(failed)
        .and_then(|()| crate::pin::move_into(request.process.as_fd(), &cgroup.procs_files()))
        .and_then(|()| cgroup.delegate((record.base, record.base)).map_err(failed));
    if let Err(e) = moved {
        cgroup::remove(&path);
        return Err(e);
    }
    Ok(path)
}

/// Refuses a process outside the namespace that idmapd mapped onto `record`'s range: the
/// kernel's namespace id is that namespace's alone (an inode number is not: it is reused as
/// soon as a namespace goes), and only that namespace maps the range.
fn check_member(record: &Record, holder: &str, process: BorrowedFd<'_>) -> Result<(), BurrowError> {
    let userns = pidfd::user_namespace(process)?;
    let id = ns_id(userns.as_fd())
        .map_err(|e| BurrowError::Failed(format!("reading the process's user namespace: {e}")))?;
    if record.namespace.as_ref().map(|ns| ns.id) != Some(id) {
        return Err(BurrowError::NotAuthorized(format!(
            "the process is not in the user namespace of range {holder:?}"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(name: &str) -> Record {
        Record {
            uid: 1000,
            name: name.into(),
            holders: vec![name.into()],
            base: 0x7001_0000,
            size: burrow_contract::RANGE_SIZE,
            namespace: None,
            state: crate::registry::RecordState::Held,
            created: 0,
            kept: false,
        }
    }

    /// Ranges of one batch share their user's listing, and each takes only its own holders'
    /// cgroups from it, even where one base's digits begin another's.
    #[test]
    fn a_batch_shares_its_users_listing_and_takes_each_ranges_own() {
        let range = |base: u32| Record {
            base,
            ..record("pod")
        };
        let listing = [
            "range-65536",
            "range-65536-app",
            "range-655360",
            "range-655360-web",
            "range-131072",
        ];
        let mut listed = BTreeMap::from([(1000, listing.map(String::from).into())]);
        let gone = [Gone::Range(range(65536)), Gone::Range(range(655360))];
        let paths: Vec<Vec<String>> = gone
            .iter()
            .map(|gone| {
                leftovers_of(Placement::Cgroupfs, gone, &mut listed)
                    .into_iter()
                    .map(|l| l.path)
                    .collect()
            })
            .collect();
        let user = "/burrow-users/user-1000";
        assert_eq!(
            paths,
            [
                vec![
                    format!("{user}/range-65536"),
                    format!("{user}/range-65536-app")
                ],
                vec![
                    format!("{user}/range-655360"),
                    format!("{user}/range-655360-web")
                ],
            ]
        );
    }

    #[test]
    fn holders_cgroups_are_named_per_placement() {
        let record = record("pod");
        let path = |placement, holder: &str| {
            let leftovers =
                leftovers_of_all(placement, &[Gone::Holder(record.clone(), holder.into())]);
            (leftovers[0].path.clone(), leftovers[0].unit.clone())
        };
        assert_eq!(
            path(Placement::Cgroupfs, "pod"),
            ("/burrow-users/user-1000/range-1879113728".into(), None)
        );
        assert_eq!(
            path(Placement::Cgroupfs, "a+b"),
            ("/burrow-users/user-1000/range-1879113728-a+b".into(), None)
        );
        let slice = "/burrow.slice/burrow-users.slice/burrow-users-1000.slice";
        assert_eq!(
            path(Placement::Systemd, "pod"),
            (
                format!("{slice}/burrow-range-1879113728.scope"),
                Some("burrow-range-1879113728.scope".into())
            )
        );
        assert_eq!(
            path(Placement::Systemd, "a+b"),
            (
                format!("{slice}/burrow-range-1879113728-a\\x2bb.scope"),
                Some("burrow-range-1879113728-a\\x2bb.scope".into())
            )
        );
    }
}
