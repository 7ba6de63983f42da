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
pub fn replace(path: &Path, contents: &[u8]) -> Result<(), StateError> {
    let (tmp, _file) = write_temporary(path, contents)?;
    fs::rename(&tmp, path).map_err(io("rename", path))
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
    fn written_twice(
        name: &str,
        write: fn(&Path, &[u8]) -> Result<(), StateError>,
    ) -> (PathBuf, PathBuf) {
        let dir = std::env::temp_dir().join(format!("burrow-{name}-test-{}", std::process::id()));
        ensure_private_dir(&dir).unwrap();
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
