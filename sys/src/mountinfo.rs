//! `/proc/PID/mountinfo`, parsed once for everyone (proc(5)): helpers read the layout of the
//! host's cgroups and the layers of a caller's overlay from it. A container can make mount
//! points with any name, so a line's fields are taken as the kernel escapes them and unescaped
//! here, never split on what an escaped name contains.

use std::path::Path;

/// One mount, with its paths and options unescaped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub id: u64,
    pub parent_id: u64,
    /// The directory of the filesystem that is the mount's root (`/` for a whole filesystem).
    pub root: String,
    pub mount_point: String,
    pub mount_options: String,
    pub fs_type: String,
    pub source: String,
    /// The filesystem's own options (an overlay's layers, a cgroup's controllers), split at
    /// the commas the kernel writes and then unescaped (a comma inside a value is escaped).
    pub super_options: Vec<String>,
}

impl Mount {
    /// The value of the filesystem option `key=VALUE`, if set.
    pub fn super_option(&self, key: &str) -> Option<&str> {
        self.super_options
            .iter()
            .find_map(|o| o.strip_prefix(key)?.strip_prefix('='))
    }
}

/// The mounts of `text` (a mountinfo file); lines that are not well formed are skipped.
pub fn parse(text: &str) -> Vec<Mount> {
    text.lines().filter_map(parse_line).collect()
}

/// The mounts the calling process sees.
pub fn own() -> std::io::Result<Vec<Mount>> {
    read(Path::new("/proc/self/mountinfo"))
}

pub fn read(path: &Path) -> std::io::Result<Vec<Mount>> {
    Ok(parse(&std::fs::read_to_string(path)?))
}

fn parse_line(line: &str) -> Option<Mount> {
    let (fields, tail) = line.split_once(" - ")?;
    let mut fields = fields.split(' ');
    let id = fields.next()?.parse().ok()?;
    let parent_id = fields.next()?.parse().ok()?;
    let _device = fields.next()?;
    let root = unescape(fields.next()?);
    let mount_point = unescape(fields.next()?);
    let mount_options = fields.next()?.to_string();
    let mut tail = tail.split(' ');
    Some(Mount {
        id,
        parent_id,
        root,
        mount_point,
        mount_options,
        fs_type: unescape(tail.next()?),
        source: unescape(tail.next()?),
        super_options: tail.next()?.split(',').map(unescape).collect(),
    })
}

/// The kernel writes space, tab, newline and backslash in mountinfo fields as `\NNN` octal.
pub fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|digits| bytes[i] == b'\\' && digits.iter().all(|b| (b'0'..=b'7').contains(b)));
        match octal {
            Some(d) => {
                let value = u32::from(d[0] - b'0') * 64
                    + u32::from(d[1] - b'0') * 8
                    + u32::from(d[2] - b'0');
                // `\400` and above are no byte: keep the text as it is.
                match u8::try_from(value) {
                    Ok(byte) => {
                        out.push(byte);
                        i += 4;
                    }
                    Err(_) => {
                        out.push(bytes[i]);
                        i += 1;
                    }
                }
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const OVERLAY: &str = "1262 1172 0:112 / /var/lib/docker/overlay2/x/merged rw,relatime \
        shared:613 - overlay overlay rw,lowerdir=/l1:/l2,upperdir=/u/diff,workdir=/u/work";

    #[test]
    fn parses_the_kernels_lines() {
        let mounts = parse(&format!(
            "{OVERLAY}\n36 25 0:31 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid - cgroup cgroup rw,cpu,cpuacct\n\
             garbage line\n"
        ));
        assert_eq!(mounts.len(), 2);
        assert_eq!(mounts[0].id, 1262);
        assert_eq!(mounts[0].fs_type, "overlay");
        assert_eq!(mounts[0].super_option("upperdir"), Some("/u/diff"));
        assert_eq!(mounts[0].super_option("lowerdir"), Some("/l1:/l2"));
        assert_eq!(mounts[1].super_options, ["rw", "cpu", "cpuacct"]);
        assert_eq!(mounts[1].mount_point, "/sys/fs/cgroup/cpu,cpuacct");
        assert_eq!(mounts[1].parent_id, 25);
    }

    #[test]
    fn a_comma_inside_an_option_value_stays_in_it() {
        let line = r"9 1 0:7 / /m rw - overlay overlay rw,lowerdir=/a\054b:/c,upperdir=/u";
        let mount = &parse(line)[0];
        assert_eq!(mount.super_option("lowerdir"), Some("/a,b:/c"));
        assert_eq!(mount.super_option("upperdir"), Some("/u"));
    }

    #[test]
    fn unescapes_octal() {
        assert_eq!(unescape(r"/run/a\040b"), "/run/a b");
        assert_eq!(unescape(r"/x\134y"), r"/x\y");
        assert_eq!(unescape(r"/new\012line"), "/new\nline");
        assert_eq!(unescape("/plain"), "/plain");
        assert_eq!(unescape(r"\777\0"), r"\777\0");
    }

    /// How the kernel escapes a mount point (fs/proc_namespace.c, mangle()).
    fn escape(path: &str) -> String {
        path.chars()
            .map(|c| match c {
                ' ' | '\t' | '\n' | '\\' => format!("\\{:03o}", c as u32),
                c => c.to_string(),
            })
            .collect()
    }

    proptest! {
        /// Fuzzing: any text parses without panicking, and every mount found came from a line
        /// of it.
        #[test]
        fn never_panics_on_any_text(text in "\\PC*( - \\PC*)?(\n\\PC*)*") {
            let lines = text.lines().count();
            prop_assert!(parse(&text).len() <= lines);
        }

        /// A mount point of any name a container can choose comes back as it was.
        #[test]
        fn any_mount_point_round_trips(name in "/[^\\x00]{0,64}") {
            let line = format!("7 1 0:5 / {} rw - tmpfs none rw", escape(&name));
            let mounts = parse(&line);
            prop_assert_eq!(mounts.len(), 1);
            prop_assert_eq!(&mounts[0].mount_point, &name);
        }
    }
}
