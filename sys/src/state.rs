//! Durable state: atomic file replacement and a single-instance lock.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::fcntl::{Flock, FlockArg};

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("another instance holds the lock {0} (is the helper already running?)")]
    Locked(PathBuf),
}

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> StateError + 'a {
    move |source| StateError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// Makes `path` hold exactly `contents`, or leaves its old contents: write a temporary file
/// beside it, fsync it, rename it over `path`, fsync the directory.
pub fn write_atomic(path: &Path, contents: &[u8]) -> Result<(), StateError> {
    let (tmp, file) = write_temporary(path, contents)?;
    file.sync_all().map_err(io("fsync", &tmp))?;
    fs::rename(&tmp, path).map_err(io("rename", path))?;
    sync_dir(parent(path))
}

/// Makes `path` hold exactly `contents`, or leaves its old contents, for every process while
/// the machine runs: a temporary file beside it, renamed over it, nothing flushed to disk. A
/// writer killed at any point (kill -9 too) leaves the old file or the new one, as the kernel
/// holds both; a power loss may leave the old one, the new one, or an empty or torn one. Only
/// for state whose meaning ends with the boot, whose reader tells a file torn in an earlier
/// boot from one corrupt in this one (idmapd's registry marks the boot it writes in).
///
/// An existing file is not renamed over but exchanged with the new one, which is then removed:
/// ext4 (`auto_da_alloc`, its default) writes a file renamed over another out at once, for a
/// durability this function does not promise, and that took 0.15 ms more a call on this
/// machine kind (docs/benchmarks.md). A writer killed in between leaves the new file in place
/// and the old one under the temporary name, which nothing reads and the next write replaces.
pub fn replace(path: &Path, contents: &[u8]) -> Result<(), StateError> {
    let (tmp, _file) = write_temporary(path, contents)?;
    if put_in_place(&tmp, path)? {
        // The new contents are in place: an old version left beside them changes nothing.
        let _ = remove(&tmp);
    }
    Ok(())
}

/// Moves the file `new` to `path`, exchanging the two if `path` exists; whether it did (then
/// `new` names the old file).
fn put_in_place(new: &Path, path: &Path) -> Result<bool, StateError> {
    use rustix::fs::{renameat_with, RenameFlags, CWD};
    match renameat_with(CWD, new, CWD, path, RenameFlags::EXCHANGE) {
        Ok(()) => Ok(true),
        // No file to exchange with (a new one), or no exchange here (a file system or kernel
        // without it, a sandbox that refuses the call): a rename, which reports real errors.
        Err(_) => {
            fs::rename(new, path).map_err(io("rename", path))?;
            Ok(false)
        }
    }
}

/// N of a spare's name, `.spare-N` (see [`Recycler`]).
fn spare_number(name: &str) -> Option<u64> {
    name.strip_prefix(".spare-")?.parse().ok()
}

/// The files of one directory, replaced as [`replace`] does and removed, through spare files
/// that keep the inodes of earlier versions: a new version is written into a spare and
/// exchanged with the file, whose old inode becomes the next spare, and a removed file becomes
/// a spare too. A file system pays for every inode made and deleted; ext4 without a journal
/// (this machine kind's) more the more were deleted in the last half minute, as each new one
/// skips those (docs/design.md): with a new inode per write, a registry that changes hundreds
/// of times a second slowed each write to about a millisecond.
///
/// Spares are named `.spare-N`, hold old versions or nothing, and mean nothing: the
/// directory's next writer adopts them ([`Recycler::adopt`]), and its reader skips them.
pub struct Recycler {
    dir: PathBuf,
    spares: Vec<PathBuf>,
    next_spare: u64,
}

/// How many spares a [`Recycler`] keeps: enough for a burst of removals to feed as many new
/// files later; past that, removed files are deleted.
const MAX_SPARES: usize = 256;

impl Recycler {
    /// A recycler of `dir`'s files, with no spare yet.
    pub fn new(dir: &Path) -> Self {
        Recycler {
            dir: dir.to_path_buf(),
            spares: vec![],
            next_spare: 0,
        }
    }

    /// Whether the file named `name` is a spare (of this or an earlier recycler).
    pub fn is_spare(name: &str) -> bool {
        spare_number(name).is_some()
    }

    /// Whether `path`, an entry of this directory, is a spare's (see [`Self::is_spare`]), left
    /// by an earlier recycler: if so, it takes it as one of its own, or deletes it if it has
    /// enough. An entry of that name that is no regular file is left alone, and never written
    /// through. A reader of the directory skips the entries this says are spares'.
    pub fn adopt(&mut self, path: &Path) -> Result<bool, StateError> {
        let Some(number) = path.file_name().and_then(|n| spare_number(n.to_str()?)) else {
            return Ok(false);
        };
        // New spares are named above every one there.
        self.next_spare = self.next_spare.max(number);
        let regular = fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_file());
        if regular && self.spares.len() < MAX_SPARES {
            self.spares.push(path.to_path_buf());
        } else if regular {
            remove(path)?;
        }
        Ok(true)
    }

    /// As [`replace`], through a spare. The spare is overwritten, then cut to the new length,
    /// not emptied first: ext4 frees the blocks of a file cut to nothing (a discard the device
    /// waits for, with `-o discard`) and writes out at its close a file that was emptied and
    /// written again (`auto_da_alloc`), neither of which a record of a few hundred bytes needs.
    pub fn replace(&mut self, path: &Path, contents: &[u8]) -> Result<(), StateError> {
        let spare = self.spares.pop().unwrap_or_else(|| self.new_spare());
        OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&spare)
            .and_then(|mut file| {
                file.write_all(contents)?;
                file.set_len(contents.len() as u64)
            })
            .map_err(io("write", &spare))?;
        if put_in_place(&spare, path)? {
            self.spares.push(spare);
        }
        Ok(())
    }

    /// As [`remove`]: the file becomes a spare, or goes if there are enough (or if the spare's
    /// name is taken, or the file system cannot rename without replacing).
    pub fn remove(&mut self, path: &Path) -> Result<bool, StateError> {
        use rustix::fs::{renameat_with, RenameFlags, CWD};
        if self.spares.len() >= MAX_SPARES {
            return remove(path);
        }
        let spare = self.new_spare();
        match renameat_with(CWD, path, CWD, &spare, RenameFlags::NOREPLACE) {
            Ok(()) => {
                self.spares.push(spare);
                Ok(true)
            }
            Err(rustix::io::Errno::NOENT) => Ok(false),
            Err(_) => remove(path),
        }
    }

    fn new_spare(&mut self) -> PathBuf {
        self.next_spare = self.next_spare.saturating_add(1);
        self.dir.join(format!(".spare-{}", self.next_spare))
    }
}

/// Removes `path` durably (the directory entry is fsynced). A missing file is fine.
pub fn remove_durably(path: &Path) -> Result<(), StateError> {
    if remove(path)? {
        sync_dir(parent(path))?;
    }
    Ok(())
}

/// Removes `path`, flushing nothing (see [`replace`]); whether it was there.
pub fn remove(path: &Path) -> Result<bool, StateError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io("remove", path)(e)),
    }
}

fn parent(path: &Path) -> &Path {
    path.parent().unwrap_or(Path::new("."))
}

/// Writes `contents` to `.NAME.tmp` beside `path` (mode 0600); returns its path and file.
fn write_temporary(path: &Path, contents: &[u8]) -> Result<(PathBuf, File), StateError> {
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    let tmp = parent(path).join(format!(".{file_name}.tmp"));
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io("create", &tmp))?;
    file.write_all(contents).map_err(io("write", &tmp))?;
    Ok((tmp, file))
}

fn sync_dir(dir: &Path) -> Result<(), StateError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io("fsync", dir))
}

/// Creates `dir` (and parents) with mode 0700 if missing.
pub fn ensure_private_dir(dir: &Path) -> Result<(), StateError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io("create", dir))
}

/// An exclusive advisory lock held for the life of the helper, so a second instance (a manual
/// start beside a bus-activated one) cannot corrupt the state. Released by the kernel on exit,
/// also on kill -9.
pub struct InstanceLock {
    _lock: Flock<File>,
}

impl InstanceLock {
    pub fn acquire(path: &Path) -> Result<Self, StateError> {
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_CLOEXEC)
            .open(path)
            .map_err(io("open", path))?;
        let lock = Flock::lock(file, FlockArg::LockExclusiveNonblock)
            .map_err(|_| StateError::Locked(path.to_path_buf()))?;
        Ok(InstanceLock { _lock: lock })
    }

    /// [`acquire`](Self::acquire), waiting up to `patience` for another instance to let go:
    /// after the bus restarts, the new bus may activate a helper while the old bus's instance
    /// is still on its way out.
    pub fn acquire_waiting(path: &Path, patience: Duration) -> Result<Self, StateError> {
        let started = Instant::now();
        let mut waiting = false;
        loop {
            match Self::acquire(path) {
                Err(StateError::Locked(_)) if started.elapsed() < patience => {
                    if !waiting {
                        tracing::warn!(lock = %path.display(), patience_s = patience.as_secs(),
                            "another instance holds the state lock, waiting for it to exit");
                        waiting = true;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                Ok(lock) => {
                    if waiting {
                        tracing::info!(
                            waited_ms = started.elapsed().as_millis() as u64,
                            "got the state lock"
                        );
                    }
                    return Ok(lock);
                }
                Err(e) => return Err(e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `write` twice in a fresh directory leaves exactly the file, with the second contents;
    /// the directory's path is returned with it.
    /// A new private directory for test `name`.
    fn scratch_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("burrow-{name}-test-{}", std::process::id()));
        ensure_private_dir(&dir).unwrap();
        dir
    }

    fn written_twice(
        name: &str,
        write: fn(&Path, &[u8]) -> Result<(), StateError>,
    ) -> (PathBuf, PathBuf) {
        let dir = scratch_dir(name);
        let target = dir.join("r.json");
        write(&target, b"one").unwrap();
        write(&target, b"two").unwrap();
        assert_eq!(fs::read(&target).unwrap(), b"two");
        let names: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("r.json")]);
        (dir, target)
    }

    #[test]
    fn atomic_write_replaces_and_leaves_no_temp() {
        let (dir, target) = written_twice("state", write_atomic);
        remove_durably(&target).unwrap();
        remove_durably(&target).unwrap();
        fs::remove_dir(&dir).unwrap();
    }

    #[test]
    fn replace_swaps_whole_files_and_remove_tells_whether_one_was_there() {
        let (dir, target) = written_twice("replace", replace);
        assert!(remove(&target).unwrap());
        assert!(!remove(&target).unwrap());
        fs::remove_dir(&dir).unwrap();
    }

    #[test]
    fn a_recycler_reuses_the_inodes_of_old_versions_and_removed_files() {
        use std::os::unix::fs::MetadataExt;
        let dir = scratch_dir("recycle");
        let (a, b) = (dir.join("a.json"), dir.join("b.json"));
        let inode = |path: &Path| fs::metadata(path).unwrap().ino();
        let names = || {
            let mut names: Vec<String> = fs::read_dir(&dir)
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect();
            names.sort();
            names
        };
        let mut files = Recycler::new(&dir);
        files.replace(&a, b"one").unwrap();
        let first = inode(&a);
        files.replace(&a, b"two").unwrap();
        assert_eq!(fs::read(&a).unwrap(), b"two");
        assert_eq!(
            names(),
            [".spare-2", "a.json"],
            "the old version is the spare"
        );
        files.replace(&a, b"three").unwrap();
        assert_eq!(fs::read(&a).unwrap(), b"three");
        assert_eq!(
            inode(&a),
            first,
            "two versions alternate between two inodes"
        );
        assert!(files.remove(&a).unwrap());
        assert!(!files.remove(&a).unwrap());
        let spares = names();
        assert!(spares.iter().all(|n| Recycler::is_spare(n)), "{spares:?}");
        assert_eq!(spares.len(), 2);

        // A later recycler adopts the spares: no new inode for the next two files.
        let mut later = Recycler::new(&dir);
        let spare_inodes: Vec<u64> = spares.iter().map(|n| inode(&dir.join(n))).collect();
        for name in &spares {
            assert!(later.adopt(&dir.join(name)).unwrap());
        }
        later.replace(&a, b"four").unwrap();
        later.replace(&b, b"five").unwrap();
        assert_eq!(names(), ["a.json", "b.json"]);
        let mut now = vec![inode(&a), inode(&b)];
        now.sort_unstable();
        let mut before = spare_inodes;
        before.sort_unstable();
        assert_eq!(now, before);
        assert!(!Recycler::is_spare("a.json") && !Recycler::is_spare(".spare-x"));
        fs::remove_dir_all(&dir).unwrap();
    }

    /// A spare's name that is no regular file is never written through, and new spares are
    /// named above it.
    #[test]
    fn a_recycler_adopts_only_regular_files() {
        let dir = scratch_dir("adopt");
        let (odd, target) = (dir.join(".spare-7"), dir.join("a.json"));
        fs::create_dir(&odd).unwrap();
        std::os::unix::fs::symlink(&target, dir.join(".spare-3")).unwrap();
        let mut files = Recycler::new(&dir);
        assert!(files.adopt(&odd).unwrap());
        assert!(files.adopt(&dir.join(".spare-3")).unwrap());
        assert!(
            !files.adopt(&target).unwrap(),
            "a record's name is no spare's"
        );
        files.replace(&target, b"one").unwrap();
        files.replace(&target, b"two").unwrap();
        assert_eq!(fs::read(&target).unwrap(), b"two");
        assert!(
            odd.is_dir()
                && fs::symlink_metadata(dir.join(".spare-3"))
                    .unwrap()
                    .is_symlink()
        );
        assert!(
            dir.join(".spare-9").exists(),
            "the old version, named above .spare-7"
        );
        assert!(files.remove(&target).unwrap());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn second_lock_is_refused() {
        let path = std::env::temp_dir().join(format!("burrow-lock-test-{}", std::process::id()));
        let first = InstanceLock::acquire(&path).unwrap();
        assert!(matches!(
            InstanceLock::acquire(&path),
            Err(StateError::Locked(_))
        ));
        drop(first);
        InstanceLock::acquire(&path).unwrap();
        fs::remove_file(&path).unwrap();
    }

    #[test]
    fn waiting_for_the_lock_is_bounded() {
        let path = std::env::temp_dir().join(format!("burrow-wait-test-{}", std::process::id()));
        let first = InstanceLock::acquire(&path).unwrap();
        let started = Instant::now();
        assert!(matches!(
            InstanceLock::acquire_waiting(&path, Duration::from_millis(300)),
            Err(StateError::Locked(_))
        ));
        assert!(started.elapsed() >= Duration::from_millis(300));
        let holder = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            drop(first);
        });
        InstanceLock::acquire_waiting(&path, Duration::from_secs(10)).unwrap();
        holder.join().unwrap();
        fs::remove_file(&path).unwrap();
    }
}
