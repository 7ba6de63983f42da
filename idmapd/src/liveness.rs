//! Whether a range's user namespace still exists, as the kernel says through the namespace's
//! nsfs handle (`burrow_sys::nsfs`). The kernel counts every reference, including those no
//! scan of /proc can see (an fd in flight in a socket queue, a socket of a network namespace
//! the user namespace owns, a bind mount under another mount), and asking walks no path a
//! container controls, so it can neither block nor be misled. When the kernel cannot answer,
//! the namespace counts as alive: a range may be kept longer than needed, never handed out
//! twice.

use burrow_sys::fork::Unreaped;
use burrow_sys::userns::NsWorker;

use crate::registry::{Namespace, Record};

/// The current boot, against which recorded namespaces are judged, and idmapd's own workers
/// that may still hold namespaces.
pub struct Kernel {
    pub boot_id: String,
    /// Workers that mapped a namespace, killed once their call was done and reaped only
    /// before the kernel is next asked: the reply did not wait for their exit, but a zombie
    /// still holds its namespace, and must not make a range look used.
    dismissed: Vec<Unreaped>,
}

impl Kernel {
    pub fn new(boot_id: String) -> Self {
        Kernel {
            boot_id,
            dismissed: vec![],
        }
    }

    /// Kills `worker`, to be reaped later (see [`Self::reap_dismissed`]).
    pub fn dismiss(&mut self, worker: NsWorker) {
        self.dismissed.push(worker.dismiss());
    }

    /// Reaps the dismissed workers, waiting for those not gone yet (they were killed, so
    /// only their exit is left).
    pub fn reap_dismissed(&mut self) {
        self.dismissed.clear();
    }

    /// The dismissed workers, to be reaped by the caller (dropped) without holding whatever
    /// guards this: until then, a namespace one of them is in counts as alive.
    pub fn take_dismissed(&mut self) -> Vec<Unreaped> {
        std::mem::take(&mut self.dismissed)
    }

    /// Whether the namespace mapped onto `record`'s range may still exist.
    pub fn may_exist(&mut self, record: &Record) -> bool {
        self.reap_dismissed();
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
