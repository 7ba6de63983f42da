//! Whether a range's user namespace still exists, as the kernel says through the namespace's
//! nsfs handle (`burrow_sys::nsfs`). The kernel counts every reference, including those no
//! scan of /proc can see (an fd in flight in a socket queue, a socket of a network namespace
//! the user namespace owns, a bind mount under another mount), and asking walks no path a
//! container controls, so it can neither block nor be misled. When the kernel cannot answer,
//! the namespace counts as alive: a range may be kept longer than needed, never handed out
//! twice.

use crate::registry::{Namespace, Record};

/// The current boot, against which recorded namespaces are judged.
pub struct Kernel {
    pub boot_id: String,
}

impl Kernel {
    /// Whether the namespace mapped onto `record`'s range may still exist.
    pub fn may_exist(&self, record: &Record) -> bool {
        match &record.namespace {
            None => true,
            Some(ns) => self.namespace_may_exist(ns, record),
        }
    }

    fn namespace_may_exist(&self, ns: &Namespace, record: &Record) -> bool {
        if ns.boot_id != self.boot_id {
            return false;
        }
        match ns.handle.exists() {
            Ok(exists) => exists,
            Err(e) => {
                tracing::warn!(uid = record.uid, name = %record.name, base = record.base,
                    ns = ns.id, error = %e, "cannot ask the kernel about the namespace; keeping its range");
                true
            }
        }
    }
}
