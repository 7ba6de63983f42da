//! The allocation policy: which range a caller gets, when a range comes back, and the
//! start-up reconciliation. All of it runs under one lock, on a blocking thread; none of it
//! waits on anything a container controls (liveness is one nsfs lookup per record).

use std::fs;
use std::io::Write;
use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use burrow_contract::BurrowError;
use burrow_contract::RANGE_SIZE;
use burrow_sys::fork::Unreaped;
use burrow_sys::userns::{NsWorker, UserNs};

use crate::cgroups::Gone;
use crate::liveness::Kernel;
use crate::pool::Pool;
use crate::registry::{Namespace, Record, RecordState, Registry, RegistryError};

mod park;

/// Most names one range may be held under at once. A pod of many containers stays far below;
/// the cap keeps one record (a file rewritten at each Join and Release) small.
pub const MAX_HOLDERS: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum AllocError {
    #[error("name {name:?} is already allocated for uid {uid} (range {base}); release it first")]
    Duplicate { uid: u32, name: String, base: u32 },
    #[error(
        "uid {uid} already has {limit} ranges, the per-user limit ({draining} of them released \
         but still used by a namespace that lives on)"
    )]
    Quota {
        uid: u32,
        limit: usize,
        draining: usize,
    },
    #[error(
        "no free range of {RANGE_SIZE} IDs left in the pool {start}..={end} ({in_use} in use)"
    )]
    PoolExhausted { start: u32, end: u32, in_use: usize },
    #[error("user namespace already has an ID map ({which}: {content:?}); pass a fresh one")]
    AlreadyMapped {
        which: &'static str,
        content: String,
    },
    #[error("no range named {name:?} for uid {uid}")]
    NotFound { uid: u32, name: String },
    #[error(
        "the user namespace is not the one mapped onto range {name:?} (base {base}); pass an fd \
         of /proc/PID/ns/user of a process of the container that holds {name:?}"
    )]
    ForeignNamespace { name: String, base: u32 },
    #[error(
        "range {name:?} (base {base}) was recorded by an older idmapd, without its namespace's \
         id, so no namespace can be shown to be its: it cannot be joined"
    )]
    UnknownNamespace { name: String, base: u32 },
    #[error(
        "range {name:?} (base {base}) already has {MAX_HOLDERS} holders, the most it may have"
    )]
    TooManyHolders { name: String, base: u32 },
    #[error(
        "range {name:?} (base {base}) is parked, but a process of its container's user \
         namespace still lives (hidden or exiting); try again once it is gone"
    )]
    StillInUse { name: String, base: u32 },
    #[error("range {name:?} (base {base}) is held by a running container; release it first")]
    StillHeld { name: String, base: u32 },
    #[error(
        "range {name:?} (base {base}) is shared by several names (a pod) or held under another \
         name: only a range held by the name it was allocated under can be kept"
    )]
    Shared { name: String, base: u32 },
    #[error("writing {path}: {source}")]
    WriteMap {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("reading {path}: {source}")]
    ReadMap {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Kernel(BurrowError),
}

impl From<AllocError> for BurrowError {
    fn from(e: AllocError) -> Self {
        let msg = e.to_string();
        match e {
            AllocError::Duplicate { .. } => BurrowError::AlreadyExists(msg),
            AllocError::Quota { .. }
            | AllocError::PoolExhausted { .. }
            | AllocError::TooManyHolders { .. } => BurrowError::Exhausted(msg),
            AllocError::ForeignNamespace { .. } | AllocError::UnknownNamespace { .. } => {
                BurrowError::NotAuthorized(msg)
            }
            AllocError::StillInUse { .. } | AllocError::StillHeld { .. } => BurrowError::Busy(msg),
            AllocError::AlreadyMapped { .. } | AllocError::Shared { .. } => {
                BurrowError::InvalidArgument(msg)
            }
            AllocError::NotFound { .. } => BurrowError::NotFound(msg),
            AllocError::WriteMap { .. } | AllocError::ReadMap { .. } | AllocError::Registry(_) => {
                BurrowError::Failed(msg)
            }
            AllocError::Kernel(e) => e,
        }
    }
}

pub struct Allocator {
    pub pool: Pool,
    pub max_per_user: usize,
    registry: Registry,
    kernel: Kernel,
    /// Holders and ranges that went since [`Allocator::take_gone`] last ran: their cgroups
    /// are removed after the lock is released.
    gone: Vec<Gone>,
}

impl Allocator {
    /// Loads the registry and frees every range whose user namespace is gone (all of them
    /// after a reboot).
    pub fn open(pool: Pool, max_per_user: usize, registry: Registry, kernel: Kernel) -> Self {
        let mut allocator = Allocator {
            pool,
            max_per_user,
            registry,
            kernel,
            gone: vec![],
        };
        allocator.reclaim(|_| true);
        allocator
    }

    pub fn in_use(&self) -> usize {
        self.registry.len()
    }

    pub fn records(&self) -> impl Iterator<Item = &Record> {
        self.registry
            .records()
            .filter(|r| r.state == RecordState::Held)
    }

    pub fn get(&self, uid: u32, name: &str) -> Result<&Record, AllocError> {
        self.registry
            .held(uid, name)
            .ok_or_else(|| AllocError::NotFound {
                uid,
                name: name.to_string(),
            })
    }

    /// Kills `worker`, whose call is done, without waiting for its exit: it is reaped before
    /// any namespace's liveness is next judged (see [`Kernel::dismiss`]).
    pub fn dismiss(&mut self, worker: NsWorker) {
        self.kernel.dismiss(worker);
    }

    /// The dismissed workers (see [`Self::dismiss`]), for the caller to reap outside the
    /// allocator's lock.
    pub fn take_dismissed(&mut self) -> Vec<Unreaped> {
        self.kernel.take_dismissed()
    }

    /// The holders and ranges that went, whose cgroups are to be removed.
    pub fn take_gone(&mut self) -> Vec<Gone> {
        std::mem::take(&mut self.gone)
    }

    pub fn has_draining(&self) -> bool {
        self.registry
            .records()
            .any(|r| r.state == RecordState::Draining)
    }

    /// The bases of the released ranges still draining.
    pub fn draining(&self) -> Vec<u32> {
        self.registry
            .records()
            .filter(|r| r.state == RecordState::Draining)
            .map(|r| r.base)
            .collect()
    }

    /// Frees the range at `base` if it still drains and its namespace is gone; whether it did.
    pub fn reclaim_drained(&mut self, base: u32) -> bool {
        self.reclaim(|r| r.base == base && r.state == RecordState::Draining) > 0
    }

    /// Frees the `candidate` ranges whose namespaces the kernel says are gone; returns how
    /// many. A held one is freed too: its container ended without a Release; but a kept one
    /// is parked instead, and a parked one stays (only Forget frees it).
    fn reclaim(&mut self, candidate: impl Fn(&Record) -> bool) -> usize {
        let gone: Vec<Record> = self
            .registry
            .records()
            .filter(|r| r.state != RecordState::Parked && candidate(r))
            .filter(|r| !self.kernel.may_exist(r))
            .cloned()
            .collect();
        let mut freed = 0;
        for record in gone {
            if record.kept {
                self.park_ended(record);
                continue;
            }
            match self.registry.remove(record.base) {
                Ok(_) => {
                    freed += 1;
                    tracing::info!(uid = record.uid, name = %record.name, base = record.base,
                        state = ?record.state, "reclaimed the range of a namespace that is gone");
                    self.gone.push(Gone::Range(record));
                }
                Err(e) => tracing::error!(base = record.base, error = %e, "cannot reclaim range"),
            }
        }
        freed
    }

    /// Refuses `uid` a new range if it has `max_ranges` already, counting the ones it released
    /// whose namespaces still live: releasing a range does not make room while it is in use.
    fn check_quota(&mut self, uid: u32, max_ranges: usize) -> Result<(), AllocError> {
        if self.registry.count_of(uid).0 >= max_ranges {
            self.reclaim(|r| r.uid == uid);
        }
        let (count, draining) = self.registry.count_of(uid);
        if count >= max_ranges {
            return Err(AllocError::Quota {
                uid,
                limit: max_ranges,
                draining,
            });
        }
        Ok(())
    }

    /// Gives `uid` a fresh range under `name`, overlapping none of `excluded` (the
    /// [`Exclusions`]), and maps `userns` onto it through `worker` (a process already inside
    /// `userns`). The record is stored before the maps are written.
    pub fn allocate(
        &mut self,
        uid: u32,
        name: &str,
        userns: &UserNs,
        worker: &NsWorker,
        max_ranges: usize,
        excluded: &[RangeInclusive<u32>],
    ) -> Result<Record, AllocError> {
        let namespace = Namespace {
            id: userns.id,
            handle: userns.handle().map_err(AllocError::Kernel)?,
            boot_id: self.kernel.boot_id.clone(),
        };
        if let Some(existing) = self.registry.held(uid, name) {
            return Err(AllocError::Duplicate {
                uid,
                name: name.into(),
                base: existing.base,
            });
        }
        if let Some(parked) = self.registry.parked(uid, name).cloned() {
            return self.unpark(parked, namespace, worker);
        }
        self.check_quota(uid, max_ranges)?;
        let base = match self.pick(excluded) {
            Some(base) => base,
            None if self.reclaim(|_| true) > 0 => {
                self.pick(excluded).ok_or_else(|| self.exhausted())?
            }
            None => return Err(self.exhausted()),
        };
        let record = Record {
            uid,
            name: name.into(),
            holders: vec![name.into()],
            base,
            size: RANGE_SIZE,
            namespace: Some(namespace),
            state: RecordState::Held,
            created: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            kept: false,
        };
        self.registry.store(record.clone())?;
        if let Err(e) = write_maps(worker, base) {
            // A half-written map (uid done, gid failed) still uses the range: keep it reserved
            // until the namespace dies rather than risk handing it out twice.
            let untouched =
                matches!(&e, AllocError::WriteMap { path, .. } if path.ends_with("uid_map"));
            if untouched {
                self.registry.remove(base)?;
            } else {
                self.registry.drain(base)?;
            }
            return Err(e);
        }
        Ok(record)
    }

    fn pick(&self, excluded: &[RangeInclusive<u32>]) -> Option<u32> {
        let mut taken = self.registry.taken();
        taken.extend_from_slice(excluded);
        self.pool.pick(&taken)
    }

    fn exhausted(&self) -> AllocError {
        AllocError::PoolExhausted {
            start: self.pool.start,
            end: self.pool.end,
            in_use: self.registry.len(),
        }
    }

    /// The range `uid` holds as `existing`, if `userns_id` is the id of the very user namespace
    /// mapped onto it (in this boot: ids are unique only until the machine restarts). Changes
    /// nothing: Join asks this before polkit, then joins under the lock.
    pub fn joinable(
        &self,
        uid: u32,
        existing: &str,
        userns_id: u64,
    ) -> Result<&Record, AllocError> {
        let record = self.get(uid, existing)?;
        let (name, base) = (existing.to_string(), record.base);
        match &record.namespace {
            None => Err(AllocError::UnknownNamespace { name, base }),
            Some(ns) if ns.id == userns_id && ns.boot_id == self.kernel.boot_id => Ok(record),
            Some(_) => Err(AllocError::ForeignNamespace { name, base }),
        }
    }

    /// Adds `name` as a holder of the range `uid` holds as `existing`, whose namespace
    /// `userns_id` must be (see [`Self::joinable`]). No new range, so no quota charge; the range
    /// now stays until every holder released it.
    pub fn join(
        &mut self,
        uid: u32,
        existing: &str,
        name: &str,
        userns_id: u64,
    ) -> Result<Record, AllocError> {
        let mut record = self.joinable(uid, existing, userns_id)?.clone();
        if let Some(taken) = self.registry.held(uid, name) {
            return Err(AllocError::Duplicate {
                uid,
                name: name.into(),
                base: taken.base,
            });
        }
        if record.holders.len() >= MAX_HOLDERS {
            return Err(AllocError::TooManyHolders {
                name: existing.into(),
                base: record.base,
            });
        }
        record.holders.push(name.into());
        self.registry.store(record.clone())?;
        Ok(record)
    }

    /// Drops `uid`'s name. While other names hold the range, only that name goes (with its
    /// cgroup). Once the last one goes, the range is free at once if its namespace is gone;
    /// otherwise it drains until the kernel says the namespace is gone, so it is never shared
    /// by two live namespaces. A kept range is parked instead (see [`Self::keep`]).
    pub fn release(&mut self, uid: u32, name: &str) -> Result<Record, AllocError> {
        let record = self.get(uid, name)?.clone();
        if record.holders.len() > 1 {
            return self.release_holder(record, name);
        }
        if record.kept {
            return self.park(record);
        }
        self.free(&record, name, "released")?;
        Ok(record)
    }

    /// Frees `record`'s range, which no name holds any more (`name` held it last; `how` says
    /// how it went): at once if its namespace is gone, else it drains until the kernel says it
    /// is, so that two live namespaces never share it.
    fn free(&mut self, record: &Record, name: &str, how: &str) -> Result<(), AllocError> {
        let (uid, base) = (record.uid, record.base);
        if self.kernel.may_exist(record) {
            self.registry.drain(base)?;
            tracing::info!(
                uid,
                name,
                base,
                "{how}; the range drains until its namespace is gone"
            );
        } else {
            self.registry.remove(base)?;
            tracing::info!(uid, name, base, "{how}");
            self.gone.push(Gone::Range(record.clone()));
        }
        Ok(())
    }

    /// Drops one of several holders of `record`: the range stays held by the others.
    fn release_holder(&mut self, mut record: Record, name: &str) -> Result<Record, AllocError> {
        record.holders.retain(|holder| holder != name);
        self.registry.store(record.clone())?;
        // After the durable change: a cgroup left by a crash in between goes with the range.
        self.gone
            .push(Gone::Holder(record.clone(), name.to_string()));
        tracing::info!(
            uid = record.uid,
            name,
            base = record.base,
            holders = record.holders.len(),
            "released one holder; the range stays with the others"
        );
        Ok(record)
    }
}

/// Refuses a namespace that already has maps (they are write-once, and a caller who mapped it
/// must not get a range on top).
pub fn check_unmapped(worker: &NsWorker) -> Result<(), AllocError> {
    for which in ["uid_map", "gid_map"] {
        let path = worker.proc_path(which);
        let content =
            fs::read_to_string(&path).map_err(|source| AllocError::ReadMap { path, source })?;
        if !content.trim().is_empty() {
            return Err(AllocError::AlreadyMapped {
                which,
                content: content.trim().to_string(),
            });
        }
    }
    Ok(())
}

/// Maps the namespace `worker` is in onto the range at `base`, uids then gids.
fn write_maps(worker: &NsWorker, base: u32) -> Result<(), AllocError> {
    let line = format!("0 {base} {RANGE_SIZE}\n");
    for which in ["uid_map", "gid_map"] {
        let path = worker.proc_path(which);
        fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .and_then(|mut f| f.write_all(line.as_bytes()))
            .map_err(|source| AllocError::WriteMap { path, source })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;
    use std::path::Path;

    use burrow_sys::nsfs::{ns_id, NsHandle};

    use super::*;

    /// A uid no test user has.
    const UID: u32 = 4_242_424;
    const BASE: u32 = 1 << 30;
    const NEXT_BASE: u32 = BASE + RANGE_SIZE;

    fn this_boot() -> String {
        burrow_sys::nsfs::boot_id().unwrap()
    }

    /// The test's own user namespace: alive for as long as the test runs.
    fn live_namespace() -> Namespace {
        let own = fs::File::open("/proc/self/ns/user").unwrap();
        Namespace {
            id: ns_id(own.as_fd()).unwrap(),
            handle: NsHandle::of(own.as_fd()).unwrap(),
            boot_id: this_boot(),
        }
    }

    /// A namespace of an earlier boot: gone, whatever its id.
    fn gone_namespace() -> Namespace {
        Namespace {
            boot_id: "an-earlier-boot".into(),
            ..live_namespace()
        }
    }

    fn held(base: u32, holders: &[&str], namespace: Option<Namespace>) -> Record {
        Record {
            uid: UID,
            name: holders[0].into(),
            holders: holders.iter().map(|h| h.to_string()).collect(),
            base,
            size: RANGE_SIZE,
            namespace,
            state: RecordState::Held,
            created: 0,
            kept: false,
        }
    }

    fn scratch_dir(test: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("burrow-alloc-{test}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    /// An allocator on the records under `dir`, as idmapd opens one at start (reclaiming the
    /// ranges of namespaces that are gone).
    fn open(dir: &Path) -> Allocator {
        let kernel = Kernel::new(this_boot());
        let pool = Pool::new(BASE, BASE + 4 * RANGE_SIZE - 1).unwrap();
        let registry = Registry::load(dir, &this_boot()).unwrap();
        Allocator::open(pool, 8, registry, kernel)
    }

    fn open_with(dir: &Path, records: Vec<Record>) -> Allocator {
        let mut allocator = open(dir);
        for record in records {
            allocator.registry.store(record).unwrap();
        }
        allocator
    }

    fn holders_of(allocator: &Allocator, name: &str) -> Vec<String> {
        allocator.get(UID, name).unwrap().holders.clone()
    }

    /// The records' files with their contents (not the boot mark, written once at load).
    fn state_files(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
        let mut files: Vec<_> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|ext| ext == "json"))
            .map(|p| (p.clone(), fs::read(p).unwrap()))
            .collect();
        files.sort();
        files
    }

    #[test]
    fn joined_range_stays_until_its_last_holder_releases_it() {
        let dir = scratch_dir("join");
        let ns = live_namespace();
        let mut allocator = open_with(&dir, vec![held(BASE, &["pause"], Some(ns.clone()))]);
        let joined = allocator.join(UID, "pause", "app", ns.id).unwrap();
        assert_eq!(
            (joined.base, joined.holders.clone()),
            (BASE, vec!["pause".into(), "app".into()])
        );
        let mut allocator = open(&dir);
        assert_eq!(allocator.get(UID, "app").unwrap().base, BASE);
        allocator.join(UID, "app", "sidecar", ns.id).unwrap();

        allocator.release(UID, "pause").unwrap();
        let mut allocator = open(&dir);
        assert!(matches!(
            allocator.get(UID, "pause"),
            Err(AllocError::NotFound { .. })
        ));
        assert_eq!(holders_of(&allocator, "sidecar"), ["app", "sidecar"]);
        allocator.release(UID, "app").unwrap();
        let mut allocator = open(&dir);
        assert_eq!(holders_of(&allocator, "sidecar"), ["sidecar"]);

        // The last holder goes while the namespace lives: the range drains, under no name.
        allocator.release(UID, "sidecar").unwrap();
        let allocator = open(&dir);
        assert!(allocator.get(UID, "sidecar").is_err());
        let drained = allocator.registry.records().next().unwrap();
        assert_eq!(
            (drained.state, drained.holders.len()),
            (RecordState::Draining, 0)
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    /// One step of a pod's life: a container joins as `name` through `existing`, or `name`
    /// is released.
    #[derive(Debug, Clone)]
    enum Step {
        Join { existing: usize, name: usize },
        Release { name: usize },
    }

    fn name(i: usize) -> String {
        format!("n{i}")
    }

    fn step() -> impl proptest::strategy::Strategy<Value = Step> {
        use proptest::prelude::*;
        prop_oneof![
            (0..6usize, 0..6usize).prop_map(|(existing, name)| Step::Join { existing, name }),
            (0..6usize).prop_map(|name| Step::Release { name }),
        ]
    }

    /// What `step` must do to a range held by `holders` (empty: drained): the holders after it,
    /// or None where it must be refused.
    fn expected(holders: &[String], step: &Step) -> Option<Vec<String>> {
        match step {
            Step::Join {
                existing,
                name: new,
            } => {
                let ok = holders.contains(&name(*existing)) && !holders.contains(&name(*new));
                ok.then(|| [holders, &[name(*new)]].concat())
            }
            Step::Release { name: gone } => holders.contains(&name(*gone)).then(|| {
                holders
                    .iter()
                    .filter(|h| **h != name(*gone))
                    .cloned()
                    .collect()
            }),
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(32))]
        /// Any sequence of Joins and Releases keeps exactly the holders it should, in order, and
        /// a reload (idmapd restarted after any step) finds the same.
        #[test]
        fn any_joins_and_releases_keep_the_holders_durably(
            steps in proptest::collection::vec(step(), 1..16)
        ) {
            let dir = scratch_dir("steps");
            let ns = live_namespace();
            let mut allocator = open_with(&dir, vec![held(BASE, &["n0"], Some(ns.clone()))]);
            let mut holders = vec![name(0)];
            for step in &steps {
                let want = expected(&holders, step);
                let done = match step {
                    Step::Join { existing, name: new } => allocator
                        .join(UID, &name(*existing), &name(*new), ns.id)
                        .map(|_| ()),
                    Step::Release { name: gone } => allocator.release(UID, &name(*gone)).map(|_| ()),
                };
                proptest::prop_assert_eq!(done.is_ok(), want.is_some(), "{:?}", step);
                holders = want.unwrap_or(holders);
                allocator = open(&dir);
                let record = allocator.registry.records().next().unwrap();
                proptest::prop_assert_eq!(&record.holders, &holders);
                let state = if holders.is_empty() { RecordState::Draining } else { RecordState::Held };
                proptest::prop_assert_eq!(record.state, state);
            }
            fs::remove_dir_all(&dir).unwrap();
        }
    }

    #[test]
    fn join_refuses_other_namespaces_legacy_records_and_taken_names() {
        let dir = scratch_dir("refuse");
        let ns = live_namespace();
        let mut allocator = open_with(
            &dir,
            vec![
                held(BASE, &["pause", "app"], Some(ns.clone())),
                held(NEXT_BASE, &["legacy"], None),
            ],
        );
        let before = state_files(&dir);
        let refusal = |allocator: &mut Allocator, existing: &str, name: &str, id: u64| {
            allocator.join(UID, existing, name, id).unwrap_err()
        };
        assert!(matches!(
            refusal(&mut allocator, "pause", "x", ns.id + 1),
            AllocError::ForeignNamespace { .. }
        ));
        assert!(matches!(
            refusal(&mut allocator, "legacy", "x", ns.id),
            AllocError::UnknownNamespace { .. }
        ));
        for taken in ["pause", "app", "legacy"] {
            assert!(matches!(
                refusal(&mut allocator, "pause", taken, ns.id),
                AllocError::Duplicate { .. }
            ));
        }
        assert!(matches!(
            allocator.join(UID + 1, "pause", "x", ns.id).unwrap_err(),
            AllocError::NotFound { .. }
        ));
        assert!(matches!(
            refusal(&mut allocator, "nope", "x", ns.id),
            AllocError::NotFound { .. }
        ));
        assert_eq!(
            state_files(&dir),
            before,
            "a refused join changed the state"
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_namespace_of_another_boot_is_not_the_ranges_even_with_its_id() {
        let dir = scratch_dir("boot");
        let mut allocator = open(&dir);
        let stale = gone_namespace();
        // Stored after the start-up reclaim, which would have freed it.
        allocator
            .registry
            .store(held(BASE, &["pause"], Some(stale.clone())))
            .unwrap();
        assert!(matches!(
            allocator.join(UID, "pause", "app", stale.id).unwrap_err(),
            AllocError::ForeignNamespace { .. }
        ));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn holders_are_capped_per_range() {
        let dir = scratch_dir("cap");
        let ns = live_namespace();
        let names: Vec<String> = (0..MAX_HOLDERS).map(|i| format!("c{i}")).collect();
        let full: Vec<&str> = names.iter().map(String::as_str).collect();
        let mut allocator = open_with(&dir, vec![held(BASE, &full, Some(ns.clone()))]);
        let error = allocator.join(UID, "c0", "one-more", ns.id).unwrap_err();
        assert!(
            matches!(error, AllocError::TooManyHolders { .. }),
            "{error}"
        );
        assert!(matches!(
            BurrowError::from(error),
            BurrowError::Exhausted(_)
        ));
        allocator.release(UID, "c7").unwrap();
        allocator.join(UID, "c0", "one-more", ns.id).unwrap();
        assert_eq!(
            open(&dir).get(UID, "one-more").unwrap().holders.len(),
            MAX_HOLDERS
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_gone_namespace_frees_its_range_whatever_holders_remain() {
        let dir = scratch_dir("gone");
        let gone = held(BASE, &["pause", "app", "sidecar"], Some(gone_namespace()));
        // Reclaimed at start, with all its holders.
        let mut registry = Registry::load(&dir, &this_boot()).unwrap();
        registry.store(gone.clone()).unwrap();
        let allocator = open(&dir);
        assert_eq!(allocator.in_use(), 0);
        assert!(state_files(&dir).is_empty());
        // Released holder by holder: the range is freed, not drained, when the last goes.
        let mut allocator = open_with(&dir, vec![gone]);
        for name in ["app", "pause"] {
            allocator.release(UID, name).unwrap();
            assert_eq!(allocator.in_use(), 1, "{name}");
        }
        allocator.release(UID, "sidecar").unwrap();
        assert_eq!(allocator.in_use(), 0);
        assert!(state_files(&dir).is_empty());
        fs::remove_dir_all(&dir).unwrap();
    }

    fn state_of(allocator: &Allocator, base: u32) -> Option<(RecordState, bool)> {
        allocator
            .registry
            .records()
            .find(|r| r.base == base)
            .map(|r| (r.state, r.kept))
    }

    /// A kept range is parked at its Release even while its namespace lives, stays parked
    /// across restarts (none of which frees it, though its namespace is gone), is never
    /// picked for another allocation, and goes only when forgotten.
    #[test]
    fn a_kept_range_is_parked_at_release_and_freed_only_by_forget() {
        let dir = scratch_dir("park");
        let mut allocator = open_with(&dir, vec![held(BASE, &["ctr"], Some(live_namespace()))]);
        assert!(matches!(
            allocator.forget(UID, "ctr").unwrap_err(),
            AllocError::StillHeld { .. }
        ));
        allocator.keep(UID, "ctr").unwrap();
        allocator.release(UID, "ctr").unwrap();
        assert_eq!(
            state_of(&allocator, BASE),
            Some((RecordState::Parked, true))
        );
        assert!(
            allocator.get(UID, "ctr").is_err(),
            "a parked range is held by no name"
        );
        let mut allocator = open(&dir);
        let mut parked = allocator.registry.parked(UID, "ctr").unwrap().clone();
        parked.namespace = Some(gone_namespace());
        allocator.registry.store(parked).unwrap();
        let mut allocator = open(&dir);
        assert_eq!(allocator.reclaim(|_| true), 0);
        assert_eq!(
            state_of(&allocator, BASE),
            Some((RecordState::Parked, true))
        );
        assert_eq!(
            allocator.pick(&[]),
            Some(NEXT_BASE),
            "a parked range was picked"
        );
        assert_eq!(
            allocator.registry.count_of(UID).0,
            1,
            "a parked range must count against the quota"
        );
        assert!(matches!(
            allocator.forget(UID + 1, "ctr").unwrap_err(),
            AllocError::NotFound { .. }
        ));
        allocator.forget(UID, "ctr").unwrap();
        assert_eq!(allocator.in_use(), 0);
        assert!(state_files(&dir).is_empty());
        fs::remove_dir_all(&dir).unwrap();
    }

    /// A kept range whose namespace ended without a Release (a crash, a reboot) is parked at
    /// the next start; forgotten while its namespace lives, it drains.
    #[test]
    fn a_kept_range_whose_namespace_ended_is_parked_and_a_forgotten_live_one_drains() {
        let dir = scratch_dir("park-ended");
        let mut allocator = open_with(
            &dir,
            vec![
                held(BASE, &["crashed"], Some(gone_namespace())),
                held(NEXT_BASE, &["live"], Some(live_namespace())),
            ],
        );
        allocator.keep(UID, "crashed").unwrap();
        allocator.keep(UID, "live").unwrap();
        let mut allocator = open(&dir);
        assert_eq!(
            state_of(&allocator, BASE),
            Some((RecordState::Parked, true))
        );
        allocator.release(UID, "live").unwrap();
        allocator.forget(UID, "live").unwrap();
        assert_eq!(
            state_of(&allocator, NEXT_BASE),
            Some((RecordState::Draining, false))
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    /// Only a range held by the one name it was allocated under can be kept.
    #[test]
    fn a_shared_range_cannot_be_kept() {
        let dir = scratch_dir("keep-shared");
        let ns = live_namespace();
        let mut allocator = open_with(&dir, vec![held(BASE, &["pause", "app"], Some(ns))]);
        for name in ["pause", "app"] {
            assert!(matches!(
                allocator.keep(UID, name).unwrap_err(),
                AllocError::Shared { .. }
            ));
        }
        assert!(matches!(
            allocator.keep(UID + 1, "pause").unwrap_err(),
            AllocError::NotFound { .. }
        ));
        fs::remove_dir_all(&dir).unwrap();
    }
}
