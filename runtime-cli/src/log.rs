//! Error reporting the way containerd and dockerd read it: with `--log-format json`, one line
//! `{"level":"error","msg":"...","time":"..."}` per message in the `--log` file. During create
//! and exec, fds 0-2 belong to the container, so nothing goes to stderr then.

use std::io::Write;
use std::os::fd::{AsFd, BorrowedFd};

use crate::error::{CliError, UnsafeLog};

pub struct Logger {
    file: Option<std::fs::File>,
    json: bool,
    stderr_allowed: bool,
    debug: bool,
}

/// The process's logger, for `debug` from anywhere in the CLI.
static LOGGER: std::sync::OnceLock<Logger> = std::sync::OnceLock::new();

/// Installs the logger `debug` writes through; returns it.
pub fn install(logger: Logger) -> &'static Logger {
    LOGGER.get_or_init(|| logger)
}

/// With `--debug`: a step of the container's life (helper answers, cgroup, pids), as a
/// `debug` line in `--log` (or on stderr when that is free).
pub fn debug(msg: impl AsRef<str>) {
    if let Some(logger) = LOGGER.get().filter(|l| l.debug) {
        logger.log("debug", msg.as_ref());
    }
}

/// The open `--log` file, if any, for a process of the CLI's own that forks off and logs on
/// (the sysinfo supervisor).
pub fn file() -> Option<BorrowedFd<'static>> {
    LOGGER.get()?.file.as_ref().map(|file| file.as_fd())
}

/// Something went wrong that does not fail the command (a poststart hook), as a `warning` line.
pub fn warn(msg: impl AsRef<str>) {
    if let Some(logger) = LOGGER.get() {
        logger.log("warning", msg.as_ref());
    }
}

impl Logger {
    /// A logger writing to `path` (see [`open_log`]), or to stderr when there is none.
    pub fn new(
        path: Option<&str>,
        format: &str,
        stderr_allowed: bool,
        debug: bool,
    ) -> Result<Self, CliError> {
        let file = path
            .map(|p| {
                open_log(p).map_err(|problem| CliError::LogFile {
                    path: p.to_string(),
                    problem,
                })
            })
            .transpose()?;
        Ok(Logger {
            file,
            json: format == "json",
            stderr_allowed,
            debug,
        })
    }

    pub fn log(&self, level: &str, msg: &str) {
        let line = if self.json {
            let time = humantime_now();
            format!(
                "{}\n",
                serde_json::json!({"level": level, "msg": msg, "time": time})
            )
        } else {
            format!("{level}: {msg}\n")
        };
        match &self.file {
            Some(file) => {
                let _ = (&*file).write_all(line.as_bytes());
            }
            None if self.stderr_allowed => {
                let _ = std::io::stderr().write_all(format!("burrow: {msg}\n").as_bytes());
            }
            None => {}
        }
    }

    pub fn error(&self, msg: &str) {
        self.log("error", msg);
        if self.file.is_some() && self.stderr_allowed {
            let _ = std::io::stderr().write_all(format!("burrow: {msg}\n").as_bytes());
        }
    }
}

/// Opens `--log` for appending, made (mode 0600) if missing. The runtime may run as root on a
/// path in a directory someone else can write (a bundle's), so it never follows a symlink at
/// the last component (O_NOFOLLOW), refuses a regular file with other hard links (another name
/// of someone else's file, if the host allows such links) and never blocks on a FIFO without a
/// reader (O_NONBLOCK for the open).
fn open_log(path: &str) -> Result<std::fs::File, UnsafeLog> {
    use rustix::fs::{FileType, Mode, OFlags};
    let fd = rustix::fs::open(
        path,
        OFlags::WRONLY
            | OFlags::CREATE
            | OFlags::APPEND
            | OFlags::NOFOLLOW
            | OFlags::NONBLOCK
            | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    )
    .map_err(|e| match e {
        rustix::io::Errno::LOOP
            if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink()) =>
        {
            UnsafeLog::Symlink
        }
        rustix::io::Errno::NXIO => UnsafeLog::UnreadFifo,
        e => UnsafeLog::Io(e.into()),
    })?;
    let stat = rustix::fs::fstat(&fd).map_err(std::io::Error::from)?;
    if FileType::from_raw_mode(stat.st_mode) == FileType::RegularFile && stat.st_nlink > 1 {
        return Err(UnsafeLog::HardLinked {
            links: stat.st_nlink,
        });
    }
    // Once open, writes wait like any log's (a FIFO's reader sets the pace).
    let flags = rustix::fs::fcntl_getfl(&fd).map_err(std::io::Error::from)?;
    rustix::fs::fcntl_setfl(&fd, flags - OFlags::NONBLOCK).map_err(std::io::Error::from)?;
    Ok(fd.into())
}

/// RFC 3339 UTC time, without pulling in a date crate.
pub fn now() -> String {
    humantime_now()
}

fn humantime_now() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = now.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86400), secs.rem_euclid(86400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719468;
    let era = z.div_euclid(146097);
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + if month <= 2 { 1 } else { 0 };
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:09}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        now.subsec_nanos()
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn time_looks_like_rfc3339() {
        let t = super::humantime_now();
        assert_eq!(t.len(), 30, "{t}");
        assert!(t.starts_with("20") && t.ends_with('Z') && t.as_bytes()[10] == b'T');
    }
}

#[cfg(test)]
mod open_tests {
    #[test]
    fn a_symlink_at_the_log_path_is_refused_and_its_target_kept() {
        let dir = std::env::temp_dir().join(format!("burrow-log-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let victim = dir.join("victim");
        std::fs::write(&victim, "victim").unwrap();
        let log = dir.join("log.json");
        std::os::unix::fs::symlink(&victim, &log).unwrap();
        let e = super::open_log(log.to_str().unwrap()).unwrap_err();
        assert!(matches!(e, crate::error::UnsafeLog::Symlink), "{e}");
        let linked = dir.join("linked");
        std::fs::hard_link(&victim, &linked).unwrap();
        let e = super::open_log(linked.to_str().unwrap()).unwrap_err();
        assert!(
            matches!(e, crate::error::UnsafeLog::HardLinked { links: 2 }),
            "{e}"
        );
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "victim");
        let _ = std::fs::remove_dir_all(dir);
    }
}
