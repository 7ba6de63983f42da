//! The IDs no range may overlap: the account databases, as NSS lists them (nsswitch.conf's
//! `passwd` and `group` sources: /etc files, but also extrausers, LDAP through nslcd, SSSD,
//! systemd's userdb), and the subordinate-ID files. A range overlapping one of them would give
//! a container's users the files of that account. Sources that do not enumerate (SSSD without
//! `enumerate = true`) cannot be listed; docs/operations.md says to give idmapd a pool outside
//! their ID ranges.

use std::fs;
use std::ops::RangeInclusive;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::pool;

/// How long a listing serves later allocations while no file it read has changed: NSS sources
/// that are not files (LDAP, SSSD, systemd's dynamic users) cannot be watched. nscd and SSSD
/// cache accounts for minutes; glibc reads nsswitch.conf's sources anew at every listing.
const LISTING_LIFETIME: Duration = Duration::from_secs(5);

/// Where glibc reads which NSS sources list accounts.
const NSSWITCH_CONF: &str = "/etc/nsswitch.conf";

/// The files and databases whose IDs no range may overlap, and the last listing of them.
#[derive(Debug)]
pub struct Exclusions {
    subid_files: Vec<PathBuf>,
    id_db_files: Vec<PathBuf>,
    last: Mutex<Option<Listing>>,
}

/// One listing of the excluded IDs: when it was made, and the state of the files it read.
#[derive(Debug)]
struct Listing {
    at: Instant,
    files: Vec<Option<FileStamp>>,
    ranges: Vec<RangeInclusive<u32>>,
}

/// What tells that a file changed: a rename over it (useradd, vipw) gives a new inode, an edit
/// in place a new mtime, ctime or size.
#[derive(Debug, PartialEq, Eq)]
struct FileStamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl FileStamp {
    fn of(path: &Path) -> Option<Self> {
        let m = fs::metadata(path).ok()?;
        Some(FileStamp {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
        })
    }
}

impl Exclusions {
    /// Subordinate-ID files (`name:start:count`) and account files (`passwd`, `group`), read
    /// directly as well as through NSS, so that an explicitly named database counts even where
    /// nsswitch.conf does not list it.
    pub fn new(subid_files: Vec<PathBuf>, id_db_files: Vec<PathBuf>) -> Self {
        Exclusions {
            subid_files,
            id_db_files,
            last: Mutex::new(None),
        }
    }

    /// The excluded IDs now: the last listing if it is younger than [`LISTING_LIFETIME`] and
    /// no file it read (nor nsswitch.conf) changed since, else a new listing. Admins add users
    /// and subordinate ranges at any time, so every allocation asks (before it takes the
    /// allocator's lock).
    pub fn ranges(&self) -> Vec<RangeInclusive<u32>> {
        let files = self.stamps();
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        match last.as_ref() {
            Some(listing) if listing.serves(&files, Instant::now()) => listing.ranges.clone(),
            _ => {
                let at = Instant::now();
                let ranges = self.list();
                *last = Some(Listing {
                    at,
                    files,
                    ranges: ranges.clone(),
                });
                ranges
            }
        }
    }

    /// The stamps of every file a listing reads, in a fixed order.
    fn stamps(&self) -> Vec<Option<FileStamp>> {
        let files = self.subid_files.iter().chain(&self.id_db_files);
        files
            .map(|p| p.as_path())
            .chain([Path::new(NSSWITCH_CONF)])
            .map(FileStamp::of)
            .collect()
    }

    fn list(&self) -> Vec<RangeInclusive<u32>> {
        let read = |p: &PathBuf| fs::read_to_string(p).unwrap_or_default();
        let sub = self
            .subid_files
            .iter()
            .flat_map(|p| pool::parse_subid(&read(p)));
        let ids = self
            .id_db_files
            .iter()
            .flat_map(|p| pool::parse_id_db(&read(p)));
        sub.chain(ids).chain(nss_ids()).collect()
    }
}

impl Listing {
    /// Whether this listing still stands for the accounts at `now`, the files being `files`.
    fn serves(&self, files: &[Option<FileStamp>], now: Instant) -> bool {
        now.duration_since(self.at) < LISTING_LIFETIME && self.files == files
    }
}

/// glibc keeps one enumeration position per database for the whole process: two enumerations
/// at once (two Allocates) would each see part of the entries.
static ENUMERATING: Mutex<()> = Mutex::new(());

/// Every uid NSS enumerates, then every gid, as one-ID intervals.
fn nss_ids() -> Vec<RangeInclusive<u32>> {
    let _one_at_a_time = ENUMERATING.lock().unwrap_or_else(|p| p.into_inner());
    let mut ids = enumerate_users();
    ids.extend(enumerate_groups());
    ids.into_iter().map(|id| id..=id).collect()
}

/// Calls `next` (a getpwent_r/getgrent_r) until the database ends, growing the buffer on
/// ERANGE; `take` reads the id from a filled entry.
fn enumerate<E>(
    mut next: impl FnMut(&mut E, &mut [u8], &mut *mut E) -> libc::c_int,
    take: impl Fn(&E) -> u32,
) -> Vec<u32> {
    let mut ids = vec![];
    let mut buffer = vec![0u8; 16 * 1024];
    // SAFETY: a zeroed passwd/group struct is a valid output buffer (plain integers and null
    // pointers), filled in by the call before it is read.
    let mut entry: E = unsafe { std::mem::zeroed() };
    loop {
        let mut result: *mut E = std::ptr::null_mut();
        match next(&mut entry, &mut buffer, &mut result) {
            0 if !result.is_null() => ids.push(take(&entry)),
            libc::ERANGE if buffer.len() < 1 << 20 => buffer.resize(buffer.len() * 2, 0),
            _ => return ids,
        }
    }
}

fn enumerate_users() -> Vec<u32> {
    // SAFETY: setpwent/endpwent reset and close glibc's enumeration state; only this thread
    // (holding ENUMERATING) enumerates in idmapd.
    unsafe { libc::setpwent() };
    let ids = enumerate(
        |entry: &mut libc::passwd, buffer, result| {
            // SAFETY: the buffers are valid for their lengths during the call.
            unsafe { libc::getpwent_r(entry, buffer.as_mut_ptr().cast(), buffer.len(), result) }
        },
        |entry| entry.pw_uid,
    );
    // SAFETY: as above.
    unsafe { libc::endpwent() };
    ids
}

fn enumerate_groups() -> Vec<u32> {
    // SAFETY: as in `enumerate_users`, for the group database.
    unsafe { libc::setgrent() };
    let ids = enumerate(
        |entry: &mut libc::group, buffer, result| {
            // SAFETY: the buffers are valid for their lengths during the call.
            unsafe { libc::getgrent_r(entry, buffer.as_mut_ptr().cast(), buffer.len(), result) }
        },
        |entry| entry.gr_gid,
    );
    // SAFETY: as above.
    unsafe { libc::endgrent() };
    ids
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listing_serves_until_a_file_changes_or_it_ages() {
        let dir = std::env::temp_dir().join(format!("burrow-accounts-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let subuid = dir.join("subuid");
        fs::write(&subuid, "a:700000:10\n").unwrap();
        let exclusions = Exclusions::new(vec![subuid.clone()], vec![]);
        assert!(exclusions.ranges().contains(&(700000..=700009)));
        let listed = |e: &Exclusions| e.last.lock().unwrap().as_ref().unwrap().at;
        let first = listed(&exclusions);
        exclusions.ranges();
        assert_eq!(
            listed(&exclusions),
            first,
            "unchanged files: the listing serves"
        );
        // As useradd does: a new file renamed over the old one.
        fs::write(dir.join("new"), "a:700000:10\nb:800000:10\n").unwrap();
        fs::rename(dir.join("new"), &subuid).unwrap();
        assert!(exclusions.ranges().contains(&(800000..=800009)));
        let last = exclusions.last.lock().unwrap();
        let listing = last.as_ref().unwrap();
        assert!(listing.serves(&exclusions.stamps(), listing.at));
        assert!(!listing.serves(&exclusions.stamps(), listing.at + LISTING_LIFETIME));
        drop(last);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn lists_the_accounts_nss_knows() {
        let ids = nss_ids();
        // root (uid 0 and gid 0) is in every account database.
        assert!(
            ids.iter().filter(|r| *r.start() == 0).count() >= 2,
            "{ids:?}"
        );
    }
}
