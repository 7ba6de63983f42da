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
use burrow_sys::userns::{NsWorker, UserNs};

use crate::liveness::Kernel;
use crate::pool::{self, Pool};
use crate::registry::{Namespace, Record, RecordState, Registry, RegistryError};

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
            AllocError::Quota { .. } | AllocError::PoolExhausted { .. } => {
                BurrowError::Exhausted(msg)
            }
            AllocError::AlreadyMapped { .. } => BurrowError::InvalidArgument(msg),
            AllocError::NotFound { .. } => BurrowError::NotFound(msg),
            AllocError::WriteMap { .. } | AllocError::ReadMap { .. } | AllocError::Registry(_) => {
                BurrowError::Failed(msg)
            }
            AllocError::Kernel(e) => e,
        }
    }
}

/// Files whose IDs no range may overlap.
#[derive(Debug, Clone)]
pub struct Exclusions {
    pub subid_files: Vec<PathBuf>,
    pub id_db_files: Vec<PathBuf>,
}

impl Exclusions {
    /// Read at every allocation: admins add users and subordinate ranges at any time. The
    /// account files are read directly as well as through NSS, so that an explicitly named
    /// database counts even where nsswitch.conf does not list it.
    fn ranges(&self) -> Vec<RangeInclusive<u32>> {
        let read = |p: &PathBuf| fs::read_to_string(p).unwrap_or_default();
        let sub = self
            .subid_files
            .iter()
            .flat_map(|p| pool::parse_subid(&read(p)));
        let ids = self
            .id_db_files
            .iter()
            .flat_map(|p| pool::parse_id_db(&read(p)));
        sub.chain(ids).chain(crate::accounts::nss_ids()).collect()
    }
}

pub struct Allocator {
    pub pool: Pool,
    pub max_per_user: usize,
    exclusions: Exclusions,
    registry: Registry,
    kernel: Kernel,
}

impl Allocator {
    /// Loads the registry and frees every range whose user namespace is gone (all of them
    /// after a reboot).
    pub fn open(
        pool: Pool,
        max_per_user: usize,
        exclusions: Exclusions,
        registry: Registry,
        kernel: Kernel,
    ) -> Self {
        let mut allocator = Allocator {
            pool,
            max_per_user,
            exclusions,
            registry,
            kernel,
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

    pub fn has_draining(&self) -> bool {
        self.registry
            .records()
            .any(|r| r.state == RecordState::Draining)
    }

    /// Frees the released ranges whose namespaces are gone.
    pub fn reclaim_draining(&mut self) -> usize {
        self.reclaim(|r| r.state == RecordState::Draining)
    }

    /// Frees the `candidate` ranges whose namespaces the kernel says are gone; returns how
    /// many. A held one is freed too: its container ended without a Release.
    fn reclaim(&mut self, candidate: impl Fn(&Record) -> bool) -> usize {
        let gone: Vec<Record> = self
            .registry
            .records()
            .filter(|r| candidate(r) && !self.kernel.may_exist(r))
            .cloned()
            .collect();
        let mut freed = 0;
        for record in gone {
            match self.registry.remove(record.base) {
                Ok(_) => {
                    freed += 1;
                    crate::cgroups::remove(&record);
                    tracing::info!(uid = record.uid, name = %record.name, base = record.base,
                        state = ?record.state, "reclaimed the range of a namespace that is gone");
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

    /// Gives `uid` a fresh range under `name` and maps `userns` onto it through `worker`
    /// (a process already inside `userns`). The record is durable before the maps are written.
    pub fn allocate(
        &mut self,
        uid: u32,
        name: &str,
        userns: &UserNs,
        worker: &NsWorker,
        max_ranges: usize,
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
        self.check_quota(uid, max_ranges)?;
        let base = match self.pick() {
            Some(base) => base,
            None if self.reclaim(|_| true) > 0 => self.pick().ok_or_else(|| self.exhausted())?,
            None => return Err(self.exhausted()),
        };
        let record = Record {
            uid,
            name: name.into(),
            base,
            size: RANGE_SIZE,
            namespace: Some(namespace),
            state: RecordState::Held,
            created: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        };
        self.registry.insert(record.clone())?;
        if let Err(e) = write_maps(worker, base) {
            // A half-written map (uid done, gid failed) still uses the range: keep it reserved
            // until the namespace dies rather than risk handing it out twice.
            let untouched =
                matches!(&e, AllocError::WriteMap { path, .. } if path.ends_with("uid_map"));
            if untouched {
                self.registry.remove(base)?;
            } else {
                self.registry.set_state(base, RecordState::Draining)?;
            }
            return Err(e);
        }
        Ok(record)
    }

    fn pick(&self) -> Option<u32> {
        let mut taken = self.registry.taken();
        taken.extend(self.exclusions.ranges());
        self.pool.pick(&taken)
    }

    fn exhausted(&self) -> AllocError {
        AllocError::PoolExhausted {
            start: self.pool.start,
            end: self.pool.end,
            in_use: self.registry.len(),
        }
    }

    /// Drops `uid`'s name. The range is free at once if its namespace is gone; otherwise it
    /// drains until the kernel says the namespace is gone, so it is never shared by two live
    /// namespaces.
    pub fn release(&mut self, uid: u32, name: &str) -> Result<Record, AllocError> {
        let record = self.get(uid, name)?.clone();
        if self.kernel.may_exist(&record) {
            self.registry
                .set_state(record.base, RecordState::Draining)?;
            tracing::info!(
                uid,
                name,
                base = record.base,
                "released; the range drains until its namespace is gone"
            );
        } else {
            self.registry.remove(record.base)?;
            crate::cgroups::remove(&record);
            tracing::info!(uid, name, base = record.base, "released");
        }
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
