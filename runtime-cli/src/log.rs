//! Error reporting the way containerd and dockerd read it: with `--log-format json`, one line
//! `{"level":"error","msg":"...","time":"..."}` per message in the `--log` file. During create
//! and exec, fds 0-2 belong to the container, so nothing goes to stderr then.

use std::io::Write;

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

/// Something went wrong that does not fail the command (a poststart hook), as a `warning` line.
pub fn warn(msg: impl AsRef<str>) {
    if let Some(logger) = LOGGER.get() {
        logger.log("warning", msg.as_ref());
    }
}

impl Logger {
    pub fn new(path: Option<&str>, format: &str, stderr_allowed: bool, debug: bool) -> Self {
        let file = path.and_then(|p| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .ok()
        });
        Logger {
            file,
            json: format == "json",
            stderr_allowed,
            debug,
        }
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
