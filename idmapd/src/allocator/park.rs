//! Kept ranges: a range its owner keeps across its container's stops (Docker's `docker stop`
//! / `docker start` run a new runtime container each time, with the same files). Keep marks a
//! held range; its Release parks it under the name it was allocated under; Allocate of that
//! name by that uid takes it back, once the namespace recorded last is gone; Forget frees it.
//!
//! The security argument is the one for freeing (docs/security.md): a parked range belongs to
//! one (uid, name) and is skipped by every pick, so no other name or uid gets it; and its
//! own name gets it back only when the kernel says its previous namespace is gone, so two live
//! namespaces never share it.

use burrow_sys::userns::NsWorker;

use super::{write_maps, AllocError, Allocator};
use crate::cgroups::Gone;
use crate::registry::{Namespace, Record, RecordState};

impl Allocator {
    /// Marks the range `uid` holds as `name` kept: from now on it is parked, not freed, when
    /// released or when its namespace ends. Only a range held by the one name it was
    /// allocated under can be kept (a pod's shared range cannot). Idempotent.
    pub fn keep(&mut self, uid: u32, name: &str) -> Result<Record, AllocError> {
        let record = self.get(uid, name)?.clone();
        if record.name != name || record.holders.len() != 1 {
            return Err(AllocError::Shared {
                name: name.into(),
                base: record.base,
            });
        }
        if record.kept {
            return Ok(record);
        }
        let kept = Record {
            kept: true,
            ..record
        };
        self.registry.store(kept.clone())?;
        tracing::info!(
            uid,
            name,
            base = kept.base,
            "kept: parked, not freed, at release"
        );
        Ok(kept)
    }

    /// Parks the kept `record` at its last holder's Release. Its namespace may live on: it is
    /// checked when the name takes the range back.
    pub(super) fn park(&mut self, record: Record) -> Result<Record, AllocError> {
        let parked = parked_state(record);
        self.registry.store(parked.clone())?;
        tracing::info!(uid = parked.uid, name = %parked.name, base = parked.base, "parked");
        self.gone.push(Gone::Range(parked.clone()));
        Ok(parked)
    }

    /// Parks the kept `record` whose namespace ended without a Release (a crash, a reboot).
    pub(super) fn park_ended(&mut self, record: Record) {
        let (uid, base) = (record.uid, record.base);
        match self.park(record) {
            Ok(parked) => tracing::info!(uid, name = %parked.name, base,
                "parked the kept range of a namespace that is gone"),
            Err(e) => tracing::error!(uid, base, error = %e, "cannot park kept range"),
        }
    }

    /// Gives the `parked` range back to its name, mapping the namespace `worker` is in (whose
    /// identity is `namespace`) onto it, once the namespace it had before is gone.
    pub(super) fn unpark(
        &mut self,
        parked: Record,
        namespace: Namespace,
        worker: &NsWorker,
    ) -> Result<Record, AllocError> {
        if self.kernel.may_exist(&parked) {
            return Err(AllocError::StillInUse {
                name: parked.name,
                base: parked.base,
            });
        }
        let held = Record {
            state: RecordState::Held,
            holders: vec![parked.name.clone()],
            namespace: Some(namespace),
            ..parked
        };
        self.registry.store(held.clone())?;
        if let Err(e) = write_maps(worker, held.base) {
            // The new namespace may map the range already (uids written, gids not): parked
            // with it, the range waits for its end too.
            self.registry.store(parked_state(held))?;
            return Err(e);
        }
        tracing::info!(uid = held.uid, name = %held.name, base = held.base, "unparked");
        Ok(held)
    }

    /// Frees the range parked for `uid` as `name`: at once if its namespace is gone, else it
    /// drains until it is, as any released range. A held one is refused (its container runs).
    pub fn forget(&mut self, uid: u32, name: &str) -> Result<Record, AllocError> {
        let Some(record) = self.registry.parked(uid, name).cloned() else {
            return Err(match self.registry.held(uid, name) {
                Some(held) => AllocError::StillHeld {
                    name: name.into(),
                    base: held.base,
                },
                None => AllocError::NotFound {
                    uid,
                    name: name.into(),
                },
            });
        };
        self.free(&record, name, "forgotten")?;
        Ok(record)
    }
}

/// `record` parked: no name holds it.
fn parked_state(record: Record) -> Record {
    Record {
        state: RecordState::Parked,
        holders: vec![],
        ..record
    }
}
