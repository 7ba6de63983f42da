//! Per-user quotas the admin sets for all helpers in one file (default
//! /etc/burrow/quotas.conf), read at every call so that edits apply at once:
//!
//! ```text
//! [default]            # everyone but root
//! max_ranges = 8       # idmapd: ranges held at once
//! max_extra_devices = 2  # devd: extra devices in one /dev
//! memory_max = 8G      # idmapd: memory of all the user's containers together
//! pids_max = 8192      # idmapd: processes of all the user's containers together
//! [user burrow-alice]  # a user's own section (name or uid) overrides [default]
//! max_ranges = 2
//! ```

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use burrow_contract::BurrowError;

/// The file the helpers read unless told otherwise.
pub const DEFAULT_PATH: &str = "/etc/burrow/quotas.conf";

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Quota {
    pub max_ranges: Option<usize>,
    pub max_extra_devices: Option<usize>,
    pub memory_max: Option<i64>,
    pub pids_max: Option<i64>,
}

impl Quota {
    /// `self` with the values `over` sets replacing ours.
    fn overridden_by(self, over: &Quota) -> Quota {
        Quota {
            max_ranges: over.max_ranges.or(self.max_ranges),
            max_extra_devices: over.max_extra_devices.or(self.max_extra_devices),
            memory_max: over.memory_max.or(self.memory_max),
            pids_max: over.pids_max.or(self.pids_max),
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("quota file {path}: line {line}: {reason}")]
pub struct QuotaError {
    path: String,
    line: usize,
    reason: String,
}

impl From<QuotaError> for BurrowError {
    fn from(e: QuotaError) -> Self {
        // A broken quota file fails closed: no call proceeds on limits nobody meant.
        BurrowError::Failed(e.to_string())
    }
}

/// Bytes from `512M`, `8G`, `1024` (suffixes K, M, G, T: powers of 1024).
fn parse_size(value: &str) -> Option<i64> {
    let value = value.trim();
    let (digits, shift) = match value.chars().last()?.to_ascii_uppercase() {
        'K' => (&value[..value.len() - 1], 10),
        'M' => (&value[..value.len() - 1], 20),
        'G' => (&value[..value.len() - 1], 30),
        'T' => (&value[..value.len() - 1], 40),
        _ => (value, 0),
    };
    digits.trim().parse::<i64>().ok()?.checked_mul(1 << shift)
}

/// Sections by their header (`default`, `user NAME`), each with its quota.
pub fn parse(text: &str, path: &Path) -> Result<HashMap<String, Quota>, QuotaError> {
    let mut sections: HashMap<String, Quota> = HashMap::new();
    let mut current: Option<String> = None;
    for (index, raw) in text.lines().enumerate() {
        let error = |reason: String| QuotaError {
            path: path.display().to_string(),
            line: index + 1,
            reason,
        };
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        if let Some(header) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            let header = header.split_whitespace().collect::<Vec<_>>().join(" ");
            if header != "default" && !header.starts_with("user ") {
                return Err(error(format!(
                    "unknown section [{header}] (known: [default], [user NAME])"
                )));
            }
            sections.entry(header.clone()).or_default();
            current = Some(header);
            continue;
        }
        let section = current
            .as_ref()
            .ok_or_else(|| error("a setting before any [section]".into()))?;
        let (key, value) = line
            .split_once('=')
            .map(|(k, v)| (k.trim(), v.trim()))
            .ok_or_else(|| error(format!("expected KEY = VALUE, got {line:?}")))?;
        let quota = sections.get_mut(section).expect("inserted at its header");
        let count = || {
            value
                .parse::<usize>()
                .map_err(|_| error(format!("{key} must be a count, got {value:?}")))
        };
        let size = || {
            parse_size(value).filter(|v| *v > 0).ok_or_else(|| {
                error(format!(
                    "{key} must be a size like 512M or 8G, got {value:?}"
                ))
            })
        };
        match key {
            "max_ranges" => quota.max_ranges = Some(count()?),
            "max_extra_devices" => quota.max_extra_devices = Some(count()?),
            "memory_max" => quota.memory_max = Some(size()?),
            "pids_max" => {
                let pids = i64::try_from(count()?)
                    .map_err(|_| error(format!("{key} is too large: {value:?}")))?;
                quota.pids_max = Some(pids);
            }
            other => {
                return Err(error(format!(
                    "unknown key {other:?} (known: max_ranges, max_extra_devices, memory_max, pids_max)"
                )))
            }
        }
    }
    Ok(sections)
}

/// The quota file of a helper.
#[derive(Debug, Clone)]
pub struct QuotaFile {
    pub path: PathBuf,
}

impl QuotaFile {
    /// `uid`'s quota: its `[user …]` section over `[default]` (which root is exempt from). No
    /// file means no limits.
    pub fn for_uid(&self, uid: u32) -> Result<Quota, QuotaError> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Quota::default()),
            Err(e) => {
                return Err(QuotaError {
                    path: self.path.display().to_string(),
                    line: 0,
                    reason: e.to_string(),
                })
            }
        };
        let sections = parse(&text, &self.path)?;
        let name = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
            .ok()
            .flatten()
            .map(|u| u.name);
        let base = if uid == 0 {
            Quota::default()
        } else {
            sections.get("default").cloned().unwrap_or_default()
        };
        let own = name
            .and_then(|n| sections.get(&format!("user {n}")))
            .or_else(|| sections.get(&format!("user {uid}")));
        Ok(match own {
            Some(own) => base.overridden_by(own),
            None => base,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sections_and_sizes() {
        let text = "# quotas\n[default]\nmax_ranges = 8\nmemory_max = 2G # all of them\n\n[user  alice]\nmax_ranges=2\npids_max = 100\n";
        let sections = parse(text, Path::new("q")).unwrap();
        assert_eq!(
            sections["default"],
            Quota {
                max_ranges: Some(8),
                memory_max: Some(2 << 30),
                ..Default::default()
            }
        );
        let alice = sections["default"]
            .clone()
            .overridden_by(&sections["user alice"]);
        assert_eq!(
            alice,
            Quota {
                max_ranges: Some(2),
                max_extra_devices: None,
                memory_max: Some(2 << 30),
                pids_max: Some(100),
            }
        );
        assert_eq!(parse_size("512M"), Some(512 << 20));
        assert_eq!(parse_size("1024"), Some(1024));
    }

    #[test]
    fn refuses_what_it_does_not_understand() {
        for bad in [
            "max_ranges = 1",
            "[group x]\n",
            "[default]\nmax_ranges = many",
            "[default]\nmemory_max = -1",
            "[default]\nswap = 1",
            "[default]\nmax_ranges",
        ] {
            let err = parse(bad, Path::new("q")).unwrap_err().to_string();
            assert!(err.starts_with("quota file q: line "), "{bad}: {err}");
        }
    }

    proptest::proptest! {
        /// Fuzzing: any file text either parses or is a named error with its line; never a
        /// panic, never a negative limit.
        #[test]
        fn any_text_is_parsed_or_refused_by_line(
            text in "(\\[[a-z ]{0,12}\\]|[a-z_]{0,18} ?= ?[0-9A-Za-z-]{0,24}|#.*|\\PC{0,40})(\n(\\[[a-z ]{0,12}\\]|[a-z_]{0,18} ?= ?[0-9A-Za-z-]{0,24}|#.*|\\PC{0,40})){0,12}"
        ) {
            match parse(&text, Path::new("q")) {
                Ok(sections) => {
                    for quota in sections.values() {
                        proptest::prop_assert!(quota.memory_max.is_none_or(|m| m > 0));
                        proptest::prop_assert!(quota.pids_max.is_none_or(|p| p >= 0));
                    }
                }
                Err(e) => proptest::prop_assert!(e.to_string().starts_with("quota file q: line ")),
            }
        }
    }
}
