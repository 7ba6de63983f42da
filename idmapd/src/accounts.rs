//! The IDs the host's account databases use, as NSS lists them (nsswitch.conf's `passwd` and
//! `group` sources: /etc files, but also extrausers, LDAP through nslcd, SSSD, systemd's
//! userdb). A range overlapping one of them would give a container's users the files of that
//! account. Sources that do not enumerate (SSSD without `enumerate = true`) cannot be listed;
//! docs/operations.md says to give idmapd a pool outside their ID ranges.

use std::ops::RangeInclusive;
use std::sync::Mutex;

/// glibc keeps one enumeration position per database for the whole process: two enumerations
/// at once (two Allocates) would each see part of the entries.
static ENUMERATING: Mutex<()> = Mutex::new(());

/// Every uid NSS enumerates, then every gid, as one-ID intervals.
pub fn nss_ids() -> Vec<RangeInclusive<u32>> {
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
    #[test]
    fn lists_the_accounts_nss_knows() {
        let ids = super::nss_ids();
        // root (uid 0 and gid 0) is in every account database.
        assert!(
            ids.iter().filter(|r| *r.start() == 0).count() >= 2,
            "{ids:?}"
        );
    }
}
