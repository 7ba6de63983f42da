//! The persistent record of every range handed out: one small JSON file per range, named by
//! its base, replaced atomically before the caller hears about the range.
//!
//! Records are not flushed to disk. What they protect (a range from being handed out while a
//! namespace uses it) ends with the boot: every namespace is gone after a restart, so a record
//! an earlier boot wrote only has to be recognised as such, never to be exact. A killed idmapd
//! (kill -9 too) loses nothing, since the kernel holds every completed write; a power loss may
//! leave a record that was renamed into place empty or torn. The directory's boot mark, written
//! durably at the first start of each boot before any record, tells such a record (written in
//! the boot the mark names, which has ended) from one corrupt in this boot, which is refused.
//!
//! Kept records (a range its owner keeps across its container's stops, see
//! [`Record::kept`]) are the exception: what they protect (the owner's files, stored as the
//! range's IDs) outlives the boot, so they are written and removed durably.
//!
//! The other records are written and removed through spare files that reuse the inodes of
//! old versions and removed records (`burrow_sys::state::Recycler`): the spares (`.spare-N`)
//! hold no record, whatever they contain.

use std::collections::BTreeMap;
use std::fs;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};

use burrow_sys::nsfs::NsHandle;
use burrow_sys::state::{self, Recycler, StateError};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordState {
    /// Owned by its uid under the names in `holders`.
    Held,
    /// Released by its last holder while its user namespace was still alive: every name is
    /// free, the range is not, until the namespace is gone.
    Draining,
    /// Kept for its uid under `name` after its container stopped (see [`Record::kept`]): no
    /// name holds it, no other name or uid ever gets it, and `name` gets it back only once
    /// the namespace recorded last is gone. Freed only by Forget.
    Parked,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub uid: u32,
    /// The name the range was allocated under. Its holder's delegated cgroup is `range-BASE`,
    /// as it was before ranges had several holders.
    pub name: String,
    /// The names the range is held under now: Allocate's, then one per Join, in that order; a
    /// name leaves at its Release. Several containers that share one user namespace (a pod)
    /// share its range, which is free only once the last of them let go. Empty while draining.
    /// Records of older idmapds have no such field: see [`Record::with_legacy_holders`].
    #[serde(default)]
    pub holders: Vec<String>,
    pub base: u32,
    pub size: u32,
    /// The user namespace mapped onto the range, as the kernel identifies it: its id (for
    /// comparing with a namespace a caller shows later) and its nsfs handle (through which the
    /// kernel says whether it still exists). None in records of older idmapds (which kept an
    /// inode number in `userns`): their namespaces count as alive until an admin removes the
    /// record (docs/operations.md).
    #[serde(default)]
    pub namespace: Option<Namespace>,
    pub state: RecordState,
    /// Seconds since the epoch, for people reading the state directory.
    pub created: u64,
    /// Its owner asked (Keep) that the range outlive its container: released, or found with
    /// its namespace gone (a crash, a reboot), it is parked rather than freed. Such a record
    /// is written durably, as it must outlive the boot.
    #[serde(default)]
    pub kept: bool,
}

/// A user namespace as the kernel knows it, during one boot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Namespace {
    pub id: u64,
    pub handle: NsHandle,
    /// /proc/sys/kernel/random/boot_id when it was recorded: ids and handles mean nothing
    /// after a reboot, when every namespace of the record's boot is gone.
    pub boot_id: String,
}

impl Record {
    pub fn ids(&self) -> RangeInclusive<u32> {
        self.base..=self.base + (self.size - 1)
    }

    /// A record of an idmapd before Join had only its `name` as holder. A held record of
    /// this idmapd always has at least one holder, so a held record without any is such an
    /// older one.
    fn with_legacy_holders(mut self) -> Self {
        if self.state == RecordState::Held && self.holders.is_empty() {
            self.holders = vec![self.name.clone()];
        }
        self
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error("reading state directory {path}: {source}")]
    ReadDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("corrupt record {path}: {reason}; move it away only once no namespace uses its range")]
    Corrupt { path: PathBuf, reason: String },
}

/// The file in the state directory that names the boot the records were last written in.
const BOOT_MARK: &str = "boot_id";

pub struct Registry {
    dir: PathBuf,
    by_base: BTreeMap<u32, Record>,
    /// Writes and removes the records of this boot, reusing their files' inodes.
    files: Recycler,
}

impl Registry {
    /// Loads every record under `dir`, creating it if needed, in the boot `boot_id`. Leftover
    /// temporary files are writes that never completed, hence never acknowledged: they are
    /// removed; so are records a power loss tore in an earlier boot. Then the directory is
    /// marked as written in this boot, durably, before any record is.
    pub fn load(dir: &Path, boot_id: &str) -> Result<Self, RegistryError> {
        state::ensure_private_dir(dir)?;
        let mark = dir.join(BOOT_MARK);
        let marked = fs::read_to_string(&mark).ok();
        let earlier_boot = marked.as_deref().is_some_and(|m| m.trim() != boot_id);
        let read_err = |source| RegistryError::ReadDir {
            path: dir.to_path_buf(),
            source,
        };
        let mut by_base = BTreeMap::new();
        let mut files = Recycler::new(dir);
        for entry in fs::read_dir(dir).map_err(read_err)? {
            let path = entry.map_err(read_err)?.path();
            if files.adopt(&path)? {
                continue;
            }
            match load_record(&path) {
                Ok(Some(record)) => {
                    by_base.insert(record.base, record);
                }
                Ok(None) => {}
                Err(RegistryError::Corrupt { reason, .. }) if earlier_boot => {
                    tracing::warn!(path = %path.display(), reason,
                        "removing a record torn when an earlier boot ended");
                    state::remove_durably(&path)?;
                }
                Err(e) => return Err(e),
            }
        }
        if marked.as_deref().map(str::trim) != Some(boot_id) {
            state::write_atomic(&mark, boot_id.as_bytes())?;
        }
        Ok(Registry {
            dir: dir.to_path_buf(),
            by_base,
            files,
        })
    }

    fn path_of(&self, base: u32) -> PathBuf {
        self.dir.join(format!("{base}.json"))
    }

    /// Writes `record`'s file: durably if it is kept (it outlives the boot), else for this
    /// boot only (see the module's comment).
    fn persist(&mut self, record: &Record) -> Result<(), RegistryError> {
        let json = serde_json::to_vec_pretty(record).expect("records always serialize");
        let path = self.path_of(record.base);
        if record.kept {
            state::write_atomic(&path, &json)?;
        } else {
            self.files.replace(&path, &json)?;
        }
        Ok(())
    }

    pub fn records(&self) -> impl Iterator<Item = &Record> {
        self.by_base.values()
    }

    pub fn len(&self) -> usize {
        self.by_base.len()
    }

    /// The held range of `uid` that one of its holders calls `name`: names are unique per uid
    /// across every holder of every held range.
    pub fn held(&self, uid: u32, name: &str) -> Option<&Record> {
        self.records().find(|r| {
            r.state == RecordState::Held && r.uid == uid && r.holders.iter().any(|h| h == name)
        })
    }

    /// The range parked for `uid` under `name`.
    pub fn parked(&self, uid: u32, name: &str) -> Option<&Record> {
        self.records()
            .find(|r| r.state == RecordState::Parked && r.uid == uid && r.name == name)
    }

    /// How many ranges `uid` has: held ones and released ones still draining, which its
    /// namespaces still use.
    pub fn count_of(&self, uid: u32) -> (usize, usize) {
        self.records()
            .filter(|r| r.uid == uid)
            .fold((0, 0), |(all, draining), r| {
                (
                    all + 1,
                    draining + usize::from(r.state == RecordState::Draining),
                )
            })
    }

    pub fn taken(&self) -> Vec<RangeInclusive<u32>> {
        self.records().map(Record::ids).collect()
    }

    /// Records `record`, a new one or a new version of one (one atomic file replacement); only
    /// then is it in the registry.
    pub fn store(&mut self, record: Record) -> Result<(), RegistryError> {
        self.persist(&record)?;
        self.by_base.insert(record.base, record);
        Ok(())
    }

    /// Marks the range draining: no name holds it any more, its namespace may still use it.
    pub fn drain(&mut self, base: u32) -> Result<(), RegistryError> {
        let Some(record) = self.by_base.get(&base) else {
            return Ok(());
        };
        let drained = Record {
            state: RecordState::Draining,
            holders: vec![],
            kept: false,
            ..record.clone()
        };
        self.store(drained)
    }

    /// Forgets the range (its file goes first, durably if it was kept); it may be handed out
    /// again afterwards.
    pub fn remove(&mut self, base: u32) -> Result<Option<Record>, RegistryError> {
        let path = self.path_of(base);
        if self.by_base.get(&base).is_some_and(|r| r.kept) {
            state::remove_durably(&path)?;
        } else {
            self.files.remove(&path)?;
        }
        Ok(self.by_base.remove(&base))
    }
}

/// The record in the file at `path`; None for the boot mark and files that are no record (a
/// temporary file of an unfinished write is removed: the record's own file holds the version
/// before or after it, and a version that was not in place was never acknowledged).
fn load_record(path: &Path) -> Result<Option<Record>, RegistryError> {
    let file_name = path
        .file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned();
    if file_name.starts_with('.') && file_name.ends_with(".tmp") {
        tracing::warn!(path = %path.display(), "removing unfinished write");
        state::remove_durably(path)?;
        return Ok(None);
    }
    if file_name == BOOT_MARK {
        return Ok(None);
    }
    let Some(base) = file_name
        .strip_suffix(".json")
        .and_then(|b| b.parse::<u32>().ok())
    else {
        tracing::warn!(path = %path.display(), "ignoring unexpected file in state directory");
        return Ok(None);
    };
    let corrupt = |reason: String| RegistryError::Corrupt {
        path: path.to_path_buf(),
        reason,
    };
    let text = fs::read(path).map_err(|e| corrupt(e.to_string()))?;
    let record = serde_json::from_slice::<Record>(&text)
        .map_err(|e| corrupt(e.to_string()))?
        .with_legacy_holders();
    if record.base != base {
        return Err(corrupt(format!(
            "holds base {} but is named {base}",
            record.base
        )));
    }
    Ok(Some(record))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The boot the tests run in, as far as the registry knows.
    const BOOT: &str = "this-boot";

    fn record(base: u32, name: &str) -> Record {
        Record {
            uid: 1000,
            name: name.into(),
            holders: vec![name.into()],
            base,
            size: 65536,
            namespace: Some(Namespace {
                id: 4098,
                handle: NsHandle {
                    handle_type: 241,
                    bytes: vec![2, 16, 0, 0, 0, 0, 0, 0, 0, 0, 0, 16, 253, 255, 255, 239],
                },
                boot_id: "b".into(),
            }),
            state: RecordState::Held,
            created: 0,
            kept: false,
        }
    }

    #[test]
    fn survives_reload_and_cleans_temp_files() {
        let dir = std::env::temp_dir().join(format!("burrow-registry-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let mut reg = Registry::load(&dir, BOOT).unwrap();
        reg.store(record(524288, "a")).unwrap();
        reg.store(record(589824, "b")).unwrap();
        reg.drain(589824).unwrap();
        fs::write(dir.join(".655360.json.tmp"), b"{partial").unwrap();
        let reg = Registry::load(&dir, BOOT).unwrap();
        assert_eq!(reg.len(), 2);
        assert_eq!(reg.held(1000, "a").unwrap().base, 524288);
        assert!(reg.held(1000, "b").is_none());
        assert!(!dir.join(".655360.json.tmp").exists());
        let mut reg = reg;
        reg.remove(524288).unwrap();
        // The old version of b and the removed a are spares, which hold no record, and which
        // the next load adopts: its next write takes one rather than a new file.
        let spares = || {
            fs::read_dir(&dir)
                .unwrap()
                .filter(|e| Recycler::is_spare(e.as_ref().unwrap().file_name().to_str().unwrap()))
                .count()
        };
        assert_eq!(spares(), 2);
        let mut reg = Registry::load(&dir, BOOT).unwrap();
        assert_eq!(reg.len(), 1);
        assert_eq!(spares(), 2);
        reg.store(record(655360, "c")).unwrap();
        assert_eq!(spares(), 1);
        assert_eq!(Registry::load(&dir, BOOT).unwrap().len(), 2);
        fs::write(dir.join("1.json"), b"not json").unwrap();
        assert!(matches!(
            Registry::load(&dir, BOOT),
            Err(RegistryError::Corrupt { .. })
        ));
        fs::remove_dir_all(&dir).unwrap();
    }

    fn scratch_dir(test: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("burrow-{test}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn every_holder_name_finds_the_range_after_a_reload() {
        let dir = scratch_dir("registry-holders");
        let mut reg = Registry::load(&dir, BOOT).unwrap();
        let mut pod = record(524288, "pause");
        pod.holders
            .extend(["app".to_string(), "sidecar".to_string()]);
        reg.store(pod).unwrap();
        let reg = Registry::load(&dir, BOOT).unwrap();
        for name in ["pause", "app", "sidecar"] {
            assert_eq!(reg.held(1000, name).unwrap().base, 524288, "{name}");
        }
        assert!(reg.held(1001, "app").is_none(), "names are per uid");
        let mut reg = reg;
        reg.drain(524288).unwrap();
        let reg = Registry::load(&dir, BOOT).unwrap();
        let drained = reg.records().next().unwrap();
        assert_eq!(drained.state, RecordState::Draining);
        assert!(drained.holders.is_empty(), "{drained:?}");
        assert!(reg.held(1000, "pause").is_none());
        fs::remove_dir_all(&dir).unwrap();
    }

    /// Records of an idmapd before Join have no `holders`: a held one is held by its name
    /// alone, a draining one by nobody.
    #[test]
    fn a_record_without_holders_is_held_by_its_name() {
        let dir = scratch_dir("registry-legacy");
        fs::create_dir_all(&dir).unwrap();
        let legacy = |base: u32, name: &str, state: &str| {
            let mut json = serde_json::to_value(record(base, name)).unwrap();
            json.as_object_mut().unwrap().remove("holders");
            json["state"] = state.into();
            fs::write(dir.join(format!("{base}.json")), json.to_string()).unwrap();
        };
        legacy(524288, "old", "held");
        legacy(589824, "gone", "draining");
        let reg = Registry::load(&dir, BOOT).unwrap();
        let old = reg.held(1000, "old").unwrap();
        assert_eq!(old.holders, ["old"]);
        assert!(reg.held(1000, "gone").is_none());
        let drained = reg.records().find(|r| r.base == 589824).unwrap();
        assert!(drained.holders.is_empty());
        fs::remove_dir_all(&dir).unwrap();
    }

    /// A power loss can leave a record that was renamed into place empty or torn: in a later
    /// boot it is removed (its namespace went with the boot), in the boot that wrote it, or in
    /// a directory no boot marked (an older idmapd's), it is corruption and refused.
    #[test]
    fn a_record_torn_in_an_earlier_boot_is_removed_but_not_one_of_this_boot() {
        let dir = scratch_dir("registry-torn");
        let mut reg = Registry::load(&dir, "boot-1").unwrap();
        reg.store(record(524288, "kept")).unwrap();
        let torn = dir.join("589824.json");
        let tear = || fs::write(&torn, br#"{"uid": 1000, "na"#).unwrap();
        tear();
        assert!(matches!(
            Registry::load(&dir, "boot-1"),
            Err(RegistryError::Corrupt { .. })
        ));
        let reg = Registry::load(&dir, "boot-2").unwrap();
        assert!(!torn.exists());
        assert_eq!(reg.records().map(|r| r.base).collect::<Vec<_>>(), [524288]);
        assert_eq!(fs::read_to_string(dir.join(BOOT_MARK)).unwrap(), "boot-2");
        tear();
        assert!(matches!(
            Registry::load(&dir, "boot-2"),
            Err(RegistryError::Corrupt { .. })
        ));
        fs::remove_file(dir.join(BOOT_MARK)).unwrap();
        assert!(matches!(
            Registry::load(&dir, "boot-3"),
            Err(RegistryError::Corrupt { .. })
        ));
        assert!(torn.exists());
        fs::remove_dir_all(&dir).unwrap();
    }
}
