//! Containers whose state outlives the runtime's container. Docker (and Podman) run a new
//! runtime container at each `docker start`, with the same id and the same files, and delete
//! it at each stop; `docker rm` after a stop tells the runtime nothing. Such a container keeps
//! its ID range (idmapd's Keep: released, it is parked for its name) and its /var/lib/docker
//! for as long as its *anchor* lives: the directory its files follow, which goes when the
//! container is removed (Docker's image layer directory, a sandbox's directory). `burrow gc`,
//! also run at each create, frees what a removed container left: its docker data, then its
//! range.
//!
//! What a kept container has is in its slot, `data_root()/<range name>/`: `anchor.json` (which
//! container, which anchor) and `docker/`. The slot is locked (flock) while create sets it up
//! and while gc looks at it, so gc never takes what a create is about to use.

use std::fs::File;
use std::os::fd::OwnedFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use burrow_contract::proxy::IdMap1Proxy;
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use crate::error::{error_name, CliError, Result};
use crate::spec::Bundle;

/// Names a container's anchor explicitly (`burrow sandbox` sets it to the sandbox's directory).
pub const ANCHOR_ANNOTATION: &str = "org.burrow.anchor";

const ANCHOR_FILE: &str = "anchor.json";

/// How long create waits for a parked range's old namespace to finish exiting (the kernel
/// frees a user namespace shortly after its last process is reaped).
const UNPARK_PATIENCE: Duration = Duration::from_secs(10);

/// The directory a kept container's state follows: its path and, so that a new directory at
/// the same path is not taken for it, its device and inode numbers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Anchor {
    path: PathBuf,
    dev: u64,
    ino: u64,
}

impl Anchor {
    /// The directory at `path` (never through a symlink), if there is one.
    fn at(path: &Path) -> Option<Anchor> {
        let meta = std::fs::symlink_metadata(path)
            .ok()
            .filter(|m| m.is_dir())?;
        Some(Anchor {
            path: path.to_path_buf(),
            dev: meta.dev(),
            ino: meta.ino(),
        })
    }

    /// Whether the very directory is still there.
    fn exists(&self) -> bool {
        Anchor::at(&self.path).as_ref() == Some(self)
    }

    /// The bundle's anchor: the annotation's directory, else the overlay layer of a Docker or
    /// Podman rootfs; none for a rootfs inside the bundle (containerd's, CRI's: the bundle
    /// goes at delete, and Kubernetes restarts a container under a new id).
    pub fn of(bundle: &Bundle) -> Option<Anchor> {
        let annotated = bundle
            .spec
            .annotations()
            .as_ref()
            .and_then(|a| a.get(ANCHOR_ANNOTATION))
            .map(PathBuf::from);
        Anchor::at(&annotated.or_else(|| overlay_layer(&bundle.rootfs, &bundle.dir))?)
    }
}

/// `<layer>/merged`, outside the bundle: Docker's and Podman's rootfs. The `merged` mount point
/// goes at each stop, its layer directory only when the container is removed.
fn overlay_layer(rootfs: &Path, bundle_dir: &Path) -> Option<PathBuf> {
    let layered = !rootfs.starts_with(bundle_dir) && rootfs.file_name()? == "merged";
    layered.then(|| rootfs.parent().map(Path::to_path_buf))?
}

/// `anchor.json`: the container a slot is kept for.
#[derive(Debug, Serialize, Deserialize)]
struct Kept {
    id: String,
    /// Its state root, as [`state_root`] names it.
    root: PathBuf,
    anchor: Anchor,
}

/// The state root `store` as gc compares it: canonical, as callers spell one root in several
/// ways (a symlink such as /var/run, a trailing slash).
pub fn state_root(store: &crate::state::Store) -> PathBuf {
    store
        .root
        .canonicalize()
        .unwrap_or_else(|_| store.root.clone())
}

/// A container's slot, locked.
struct Slot {
    dir: PathBuf,
    _lock: Flock<File>,
}

/// How [`Slot::lock`] takes a slot.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Take {
    /// Made if missing, waiting for another create: a create that keeps its range or has
    /// docker data.
    Make,
    /// Only if it is there, waiting for another create: a create that needs no slot but must
    /// clear one left under its name.
    IfThere,
    /// Only if it is there and nobody holds it (gc, `sandbox rm`).
    IfFree,
}

impl Slot {
    /// Locks the slot of range `name` as `take` says; None if it takes none.
    fn lock(name: &str, take: Take) -> Result<Option<Slot>> {
        let dir = crate::state::data_root()?.join(name);
        loop {
            let Some(locked) = Slot::lock_once(&dir, take)? else {
                return Ok(None);
            };
            // The directory may have been removed (gc, another create's unkept slot) while
            // this waited for its lock: then the lock is on nothing anyone else will see.
            let still_there = std::fs::symlink_metadata(&dir).is_ok_and(|at_path| {
                locked
                    .metadata()
                    .is_ok_and(|held| (held.dev(), held.ino()) == (at_path.dev(), at_path.ino()))
            });
            if still_there {
                return Ok(Some(Slot { dir, _lock: locked }));
            }
        }
    }

    /// One attempt of [`Slot::lock`]: the directory at `dir`, locked.
    fn lock_once(dir: &Path, take: Take) -> Result<Option<Flock<File>>> {
        if take == Take::Make {
            std::fs::create_dir_all(dir)
                .map_err(CliError::io(format!("creating {}", dir.display())))?;
            // The container's root must reach its docker directory below.
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o711))
                .map_err(CliError::io(format!("chmod {}", dir.display())))?;
        }
        let file = match File::open(dir) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && take != Take::Make => {
                return Ok(None)
            }
            Err(e) => return Err(CliError::io(format!("opening {}", dir.display()))(e)),
        };
        let how = if take == Take::IfFree {
            FlockArg::LockExclusiveNonblock
        } else {
            FlockArg::LockExclusive
        };
        match Flock::lock(file, how) {
            Ok(lock) => Ok(Some(lock)),
            Err((_, nix::errno::Errno::EWOULDBLOCK)) if take == Take::IfFree => Ok(None),
            Err((_, e)) => Err(CliError::io(format!("locking {}", dir.display()))(e)),
        }
    }

    fn docker_data(&self) -> PathBuf {
        self.dir.join("docker")
    }

    fn kept(&self) -> Option<Kept> {
        let text = std::fs::read(self.dir.join(ANCHOR_FILE)).ok()?;
        serde_json::from_slice(&text).ok()
    }

    fn record(&self, kept: &Kept) -> Result<()> {
        let json = serde_json::to_vec_pretty(kept).expect("anchors serialize");
        burrow_sys::state::write_atomic(&self.dir.join(ANCHOR_FILE), &json).map_err(|source| {
            CliError::SaveState {
                id: kept.id.clone(),
                source,
            }
        })
    }

    /// Removes the docker data.
    fn remove_docker_data(&self) -> Result<()> {
        crate::container::remove_tree(&self.docker_data())
    }

    /// Removes the record of range `name`, then the slot if nothing else is in it.
    fn remove_record(&self, name: &str) -> Result<()> {
        burrow_sys::state::remove_durably(&self.dir.join(ANCHOR_FILE)).map_err(|source| {
            CliError::SaveState {
                id: name.into(),
                source,
            }
        })?;
        let _ = std::fs::remove_dir(&self.dir);
        Ok(())
    }
}

/// What create decided for a container's slot, which stays locked until create has made the
/// container's range and docker data. Dropped, it lets the slot go; an unkept container's slot
/// goes too if it holds nothing (no docker data), also when create failed before that.
pub struct Keeping {
    /// None for a container with neither anchor nor docker data, when no slot was left under
    /// its name: it needs none, and making one (ext4's mkdir and rmdir) cost each create
    /// about 0.3 ms.
    slot: Option<Slot>,
    anchor: Option<Anchor>,
    /// The slot was kept for this very anchor: its docker data is this container's.
    same_anchor: bool,
    /// Its range is kept (see [`Keeping::keep`]).
    kept: bool,
}

impl Drop for Keeping {
    fn drop(&mut self) {
        if let Some(slot) = self.slot.as_ref().filter(|_| !self.kept) {
            let _ = std::fs::remove_dir(&slot.dir);
        }
    }
}

impl Keeping {
    /// Locks the slot of range `name` and frees what it holds for another anchor (a removed
    /// container's leftovers under the same name), before the range is allocated.
    pub fn prepare(
        rt: &tokio::runtime::Runtime,
        conn: &zbus::Connection,
        name: &str,
        bundle: &Bundle,
    ) -> Result<Keeping> {
        let anchor = Anchor::of(bundle);
        let take = if anchor.is_some() || bundle.wants_docker_data {
            Take::Make
        } else {
            Take::IfThere
        };
        let slot = Slot::lock(name, take)?;
        let previous = slot.as_ref().and_then(Slot::kept);
        let same_anchor = previous.as_ref().map(|p| &p.anchor) == anchor.as_ref();
        if let Some(slot) = slot.as_ref().filter(|_| previous.is_some() && !same_anchor) {
            discard_slot(rt, conn, name, slot)?;
        }
        Ok(Keeping {
            slot,
            anchor,
            same_anchor: previous.is_some() && same_anchor,
            kept: false,
        })
    }

    /// Keeps the range `name` (just allocated or taken back) if the container has an anchor,
    /// and records the anchor; whether it is kept. A caller polkit does not let keep ranges
    /// (or an idmapd without Keep) gets today's life: everything freed at delete.
    pub fn keep(
        &mut self,
        rt: &tokio::runtime::Runtime,
        conn: &zbus::Connection,
        store: &crate::state::Store,
        id: &str,
        name: &str,
    ) -> Result<bool> {
        let (Some(anchor), Some(slot)) = (&self.anchor, &self.slot) else {
            return Ok(false);
        };
        let kept = rt.block_on(async { IdMap1Proxy::new(conn).await?.keep(name).await });
        match kept {
            Ok(()) => {}
            Err(e) if refused(&e) => {
                crate::log::debug(format!("idmapd: not kept ({e}); freed at delete"));
                return Ok(false);
            }
            Err(e) => return Err(CliError::helper("idmapd")(e)),
        }
        slot.record(&Kept {
            id: id.into(),
            root: state_root(store),
            anchor: anchor.clone(),
        })?;
        self.kept = true;
        Ok(true)
    }

    /// The host directory behind the container's /var/lib/docker (a container with docker
    /// data has a slot).
    pub fn docker_data(&self) -> PathBuf {
        self.slot
            .as_ref()
            .expect("a container with docker data has a slot")
            .docker_data()
    }

    /// Whether a kept container finds its docker data as it left it: kept for this anchor,
    /// and owned as the container's root needs it (else it is made afresh).
    pub fn reuses_docker_data(&self, root_uid: u32) -> bool {
        let owner = if nix::unistd::geteuid().is_root() {
            root_uid
        } else {
            nix::unistd::geteuid().as_raw()
        };
        self.kept
            && self.same_anchor
            && std::fs::symlink_metadata(self.docker_data()).is_ok_and(|m| m.uid() == owner)
    }
}

/// Whether idmapd refused to keep (polkit, or no such method): not an error for create.
fn refused(e: &zbus::Error) -> bool {
    matches!(e, zbus::Error::MethodError(name, _, _)
        if ["org.burrow.Error.NotAuthorized", "org.freedesktop.DBus.Error.UnknownMethod"]
            .contains(&name.as_str()))
}

/// idmapd's Allocate of range `name` for the user namespace `userns`.
pub async fn allocate_call(
    conn: zbus::Connection,
    name: String,
    userns: OwnedFd,
) -> zbus::Result<(u32, u32, u32)> {
    IdMap1Proxy::new(&conn)
        .await?
        .allocate(&name, userns.into())
        .await
}

/// The range `name` for `userns`, from idmapd's `first` answer to [`allocate_call`], asking
/// again (for up to [`UNPARK_PATIENCE`]) while idmapd says `Busy`: the name's parked range
/// still has its old namespace, which is exiting.
pub fn allocated(
    rt: &tokio::runtime::Runtime,
    conn: &zbus::Connection,
    name: &str,
    userns: &OwnedFd,
    first: zbus::Result<(u32, u32, u32)>,
) -> Result<(u32, u32, u32)> {
    let deadline = Instant::now() + UNPARK_PATIENCE;
    let mut answer = first;
    loop {
        match answer {
            Err(e)
                if error_name(&e) == Some("org.burrow.Error.Busy") && Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(50));
                let fd = userns
                    .try_clone()
                    .map_err(CliError::io("duplicating the user namespace's fd"))?;
                answer = rt.block_on(allocate_call(conn.clone(), name.into(), fd));
            }
            other => return other.map_err(CliError::helper("idmapd")),
        }
    }
}

/// Frees what the slot holds: its docker data (first: should it fail, the range stays
/// parked, so the files keep their owner's IDs), its parked range, its record.
fn discard_slot(
    rt: &tokio::runtime::Runtime,
    conn: &zbus::Connection,
    name: &str,
    slot: &Slot,
) -> Result<()> {
    slot.remove_docker_data()?;
    let forgotten = rt.block_on(async { IdMap1Proxy::new(conn).await?.forget(name).await });
    match forgotten {
        Err(e) if error_name(&e) != Some("org.burrow.Error.NotFound") => {
            return Err(CliError::helper("idmapd")(e))
        }
        _ => {}
    }
    slot.remove_record(name)
}

/// Frees the slot of range `name` whatever its anchor (`sandbox rm`): its container must be
/// deleted already.
pub fn discard(rt: &tokio::runtime::Runtime, conn: &zbus::Connection, name: &str) -> Result<()> {
    match Slot::lock(name, Take::IfFree) {
        Ok(Some(slot)) if slot.kept().is_some() => discard_slot(rt, conn, name, &slot),
        _ => Ok(()),
    }
}

/// A container whose leftovers gc freed.
pub struct Collected {
    pub id: String,
    pub name: String,
    pub anchor: PathBuf,
}

/// Frees the slots whose anchors are gone (their containers were removed), of the state root
/// `root` (see [`state_root`]; every root's if None), except those being created (locked)
/// and those whose range is held (a container runs on them). Returns what was freed and what
/// could not be.
pub fn collect(
    rt: &tokio::runtime::Runtime,
    conn: &zbus::Connection,
    root: Option<&Path>,
) -> Result<(Vec<Collected>, Vec<CliError>)> {
    let data_root = crate::state::data_root()?;
    let (mut collected, mut failed) = (vec![], vec![]);
    let Ok(entries) = std::fs::read_dir(&data_root) else {
        return Ok((collected, failed));
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if burrow_contract::validate_name(&name).is_err()
            || !entry.path().join(ANCHOR_FILE).exists()
        {
            continue;
        }
        match collect_slot(rt, conn, &name, root) {
            Ok(Some(kept)) => collected.push(Collected {
                id: kept.id,
                name,
                anchor: kept.anchor.path,
            }),
            Ok(None) => {}
            Err(e) => failed.push(e),
        }
    }
    Ok((collected, failed))
}

/// Frees slot `name` (if it is of state root `root`) if its anchor is gone and no container
/// holds its range.
fn collect_slot(
    rt: &tokio::runtime::Runtime,
    conn: &zbus::Connection,
    name: &str,
    root: Option<&Path>,
) -> Result<Option<Kept>> {
    let Some(slot) = Slot::lock(name, Take::IfFree)? else {
        return Ok(None);
    };
    let ours = |k: &Kept| root.is_none_or(|root| k.root == root);
    let Some(kept) = slot.kept().filter(|k| ours(k) && !k.anchor.exists()) else {
        return Ok(None);
    };
    let held = rt.block_on(async { IdMap1Proxy::new(conn).await?.get(name).await });
    match held {
        Ok(_) => return Ok(None),
        Err(e) if error_name(&e) == Some("org.burrow.Error.NotFound") => {}
        Err(e) => return Err(CliError::helper("idmapd")(e)),
    }
    discard_slot(rt, conn, name, &slot)?;
    Ok(Some(kept))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_overlay_rootfs_outside_the_bundle_has_a_layer_anchor() {
        let layer =
            |rootfs: &str, bundle: &str| overlay_layer(Path::new(rootfs), Path::new(bundle));
        assert_eq!(
            layer(
                "/var/lib/docker/overlay2/abc/merged",
                "/run/containerd/x/moby/id"
            ),
            Some(PathBuf::from("/var/lib/docker/overlay2/abc"))
        );
        assert_eq!(layer("/b/rootfs", "/b"), None, "containerd's, CRI's");
        assert_eq!(layer("/b/merged", "/b"), None, "inside the bundle");
        assert_eq!(layer("/images/rootfs", "/b"), None, "not an overlay layer");
    }

    /// A new directory at the anchor's path is not the anchor: the container was removed.
    #[test]
    fn an_anchor_is_its_very_directory() {
        let dir = std::env::temp_dir().join(format!("burrow-anchor-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).unwrap();
        let anchor = Anchor::at(&dir).unwrap();
        assert!(anchor.exists());
        // Held open, the old inode cannot be reused by the new directory.
        let _old = File::open(&dir).unwrap();
        std::fs::remove_dir(&dir).unwrap();
        assert!(!anchor.exists());
        std::fs::create_dir(&dir).unwrap();
        assert!(
            !anchor.exists(),
            "a new directory at the path passed for the anchor"
        );
        std::fs::remove_dir(&dir).unwrap();
        assert!(
            Anchor::at(Path::new("/etc/hostname")).is_none(),
            "a file is no anchor"
        );
    }
}
