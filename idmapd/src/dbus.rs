//! The `org.burrow.IdMap1` interface: identify the caller, check the objects, ask polkit, then
//! hand the work to the allocator on a blocking thread.

use std::sync::{Arc, Mutex, MutexGuard};

use burrow_contract::proxy::RangeEntry;
use burrow_contract::BurrowError;
use burrow_contract::{idmap, validate_name};
use burrow_sys::quota::QuotaFile;
use burrow_sys::service::{blocking, Activity};
use burrow_sys::userns::{NsWorker, UserNs};
use burrow_sys::Caller;
use tokio::sync::{oneshot, Notify, OwnedSemaphorePermit, Semaphore};
use zbus::message::Header;
use zbus::object_server::SignalEmitter;
use zbus::zvariant::OwnedFd;
use zbus::Connection;

use crate::accounts::Exclusions;
use crate::allocator::{self, AllocError, Allocator};
use crate::cgroups::{Cgroups, Grant, Leftover};
use crate::registry::Record;

pub struct IdMap {
    allocator: Arc<Mutex<Allocator>>,
    exclusions: Arc<Exclusions>,
    cgroups: Arc<Cgroups>,
    activity: Activity,
    quotas: QuotaFile,
    /// Wakes the draining watch when a release leaves a range draining.
    drained: Arc<Notify>,
    /// Allocates whose worker may enter the namespace while polkit decides (see
    /// [`OVERLAPPED_ALLOCATES`]).
    overlapping: Arc<Semaphore>,
}

/// How many Allocates may each hold a blocking thread (and a worker) while polkit decides.
/// Beyond that, a call waits for polkit before it forks or takes a thread: a flood of calls
/// that polkitd answers slowly (or refuses) cannot park every blocking thread, which every
/// other call's work needs.
const OVERLAPPED_ALLOCATES: usize = 16;

impl IdMap {
    pub fn new(
        allocator: Allocator,
        exclusions: Exclusions,
        cgroups: Cgroups,
        activity: Activity,
        quotas: QuotaFile,
    ) -> Self {
        IdMap {
            allocator: Arc::new(Mutex::new(allocator)),
            exclusions: Arc::new(exclusions),
            cgroups: Arc::new(cgroups),
            activity,
            quotas,
            drained: Arc::new(Notify::new()),
            overlapping: Arc::new(Semaphore::new(OVERLAPPED_ALLOCATES)),
        }
    }

    /// Frees drained ranges soon after their namespaces exit, rather than at the next start,
    /// and removes the cgroups of ranges freed at start. Looks every `idle`, and `draining`
    /// after a range starts draining and then as long as any drains: a namespace usually goes
    /// within milliseconds of its release (the kernel frees it from a work queue), and its
    /// range is then free sooner, and freed in smaller batches, whose files the registry
    /// recycles rather than deletes.
    pub fn watch_draining(
        &self,
        idle: std::time::Duration,
        draining: std::time::Duration,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        let (allocator, cgroups) = (Arc::clone(&self.allocator), Arc::clone(&self.cgroups));
        let (activity, drained) = (self.activity.clone(), Arc::clone(&self.drained));
        async move {
            loop {
                let pause = if lock(&allocator).has_draining() {
                    draining
                } else {
                    idle
                };
                if tokio::time::timeout(pause, drained.notified())
                    .await
                    .is_ok()
                {
                    tokio::time::sleep(draining).await;
                }
                let mut freed = 0;
                if lock(&allocator).has_draining() {
                    let allocator = Arc::clone(&allocator);
                    freed = tokio::task::spawn_blocking(move || reclaim_drained(&allocator))
                        .await
                        .unwrap_or_default();
                }
                let gone = lock(&allocator).take_gone();
                // Work done counts as a call: the helper trims its memory after the last of
                // it (see burrow_sys::service), not between a call and its ranges' draining.
                let _work = (freed > 0 || !gone.is_empty()).then(|| activity.begin());
                cgroups.remove_gone(gone).await;
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, Allocator> {
        lock(&self.allocator)
    }

    /// Runs `work` on the allocator from a blocking thread (it forks, writes state and asks
    /// the kernel), then, with the lock released, removes the cgroups of the holders and ranges
    /// that went (found on the same thread: one hand-over less on the reply's path).
    async fn with_allocator<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut Allocator) -> Result<T, BurrowError> + Send + 'static,
    ) -> Result<T, BurrowError> {
        let (allocator, cgroups) = (Arc::clone(&self.allocator), Arc::clone(&self.cgroups));
        let (result, leftovers) =
            blocking(move || Ok(under_lock(&allocator, &cgroups, work))).await?;
        self.cgroups.remove(leftovers).await;
        result
    }
}

/// Runs `work` under the allocator's lock, then, with the lock released, finds the cgroups of
/// the holders and ranges that went (it reads the hierarchies: for a blocking thread), for
/// [`Cgroups::remove`].
fn under_lock<T>(
    allocator: &Mutex<Allocator>,
    cgroups: &Cgroups,
    work: impl FnOnce(&mut Allocator) -> T,
) -> (T, Vec<Leftover>) {
    let (result, gone) = {
        let mut allocator = lock(allocator);
        (work(&mut allocator), allocator.take_gone())
    };
    (result, cgroups.leftovers_of(&gone))
}

/// Allocate's work off the executor, given polkit's answer when it comes.
struct AllocateStep {
    uid: u32,
    name: String,
    userns: UserNs,
    allocator: Arc<Mutex<Allocator>>,
    exclusions: Arc<Exclusions>,
    cgroups: Arc<Cgroups>,
    quotas: QuotaFile,
}

/// A running [`AllocateStep`].
struct StepTask {
    answered: oneshot::Receiver<AllocateOutcome>,
    handle: tokio::task::JoinHandle<()>,
}

impl StepTask {
    /// The step's outcome; if it ended without one, why (its panic).
    async fn outcome(self) -> Result<AllocateOutcome, BurrowError> {
        match self.answered.await {
            Ok(outcome) => Ok(outcome),
            Err(_) => Err(BurrowError::Failed(match self.handle.await {
                Err(e) => format!("the allocation task failed: {e}"),
                Ok(()) => "the allocation task ended without an answer".into(),
            })),
        }
    }
}

impl AllocateStep {
    /// Starts the step on a blocking thread, holding `permit` (if any) until it ends.
    fn spawn(
        self,
        decision: oneshot::Receiver<Result<(), BurrowError>>,
        permit: Option<OwnedSemaphorePermit>,
    ) -> StepTask {
        let (answer, answered) = oneshot::channel();
        let handle = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            self.run(decision, answer);
        });
        StepTask { answered, handle }
    }

    /// [`Self::decide`], whose outcome goes to `answer` at once; then this thread reaps the
    /// workers dismissed so far (this call's among them), off the reply's path and outside the
    /// allocator's lock, so that none waits as a zombie for the next call (see
    /// [`Allocator::dismiss`]) and no other thread need be woken for it.
    fn run(
        self,
        decision: oneshot::Receiver<Result<(), BurrowError>>,
        answer: oneshot::Sender<AllocateOutcome>,
    ) {
        let allocator = Arc::clone(&self.allocator);
        let _ = answer.send(self.decide(decision));
        let dismissed = lock(&allocator).take_dismissed();
        drop(dismissed);
    }

    /// Enters the namespace and lists the accounts, then, if `decision` authorizes the call,
    /// takes a range under the allocator's lock: the range and the cgroups left by what went.
    /// A refusal is answered before any other error (the caller learns nothing of the
    /// namespace), and its worker is dismissed, not waited for.
    fn decide(self, decision: oneshot::Receiver<Result<(), BurrowError>>) -> AllocateOutcome {
        let entered = self.userns.enter().and_then(|worker| {
            allocator::check_unmapped(&worker)?;
            Ok((worker, self.exclusions.ranges()))
        });
        let authorized = decision.blocking_recv().unwrap_or_else(|_| {
            Err(BurrowError::Failed(
                "the call ended before polkit answered".into(),
            ))
        });
        let (worker, excluded) = match (authorized, entered) {
            (Ok(()), Ok(entered)) => entered,
            (Err(e), Ok((worker, _))) => return self.refuse_after_entry(worker, e),
            (Err(e), Err(_)) | (Ok(()), Err(e)) => return (Err(e), vec![]),
        };
        let quota = match self.quotas.for_uid(self.uid) {
            Ok(quota) => quota,
            Err(e) => return self.refuse_after_entry(worker, e.into()),
        };
        let (record, leftovers) = under_lock(&self.allocator, &self.cgroups, |allocator| {
            let max_ranges = quota.max_ranges.unwrap_or(allocator.max_per_user);
            let record = allocator.allocate(
                self.uid,
                &self.name,
                &self.userns,
                &worker,
                max_ranges,
                &excluded,
            );
            allocator.dismiss(worker);
            record
        });
        let range = record.map(|r| (r.base, r.base, r.size)).map_err(Into::into);
        (range, leftovers)
    }

    /// A call refused with `error` once its worker entered the namespace: the worker is
    /// dismissed, not waited for.
    fn refuse_after_entry(self, worker: NsWorker, error: BurrowError) -> AllocateOutcome {
        lock(&self.allocator).dismiss(worker);
        (Err(error), vec![])
    }
}

/// Allocate's answer, and the cgroups left by what went meanwhile (removed after the lock).
type AllocateOutcome = (Result<(u32, u32, u32), BurrowError>, Vec<Leftover>);

/// What a call changed, as the bus hears of it.
enum Change {
    /// A new name: `Allocated`, and `InUse` if the range is new (not a Join's).
    Allocated {
        uid: u32,
        name: String,
        base: u32,
        size: u32,
        new_range: bool,
    },
    /// `Released`, and `InUse` (the range may be free, or draining).
    Released { uid: u32, name: String, base: u32 },
    /// A parked range freed or draining: `InUse`.
    Forgotten,
}

impl Change {
    /// `name` of `uid`'s, given the range Allocate or Join returned; `new_range` for Allocate.
    fn allocated(uid: u32, name: String, range: (u32, u32, u32), new_range: bool) -> Self {
        let (base, _, size) = range;
        Change::Allocated {
            uid,
            name,
            base,
            size,
            new_range,
        }
    }
}

/// Signals `change` once the reply is on its way: the caller waits for its answer, not for
/// the bus to route each signal to its listeners first. A signal that cannot be sent is
/// logged; the call's work is done either way.
fn announce(emitter: &SignalEmitter<'_>, change: Change) {
    let emitter = emitter.to_owned();
    tokio::spawn(async move {
        if let Err(e) = signal(&emitter, change).await {
            tracing::warn!(error = %e, "cannot signal a change");
        }
    });
}

async fn signal(emitter: &SignalEmitter<'static>, change: Change) -> zbus::Result<()> {
    let in_use_changed = match change {
        Change::Allocated {
            uid,
            name,
            base,
            size,
            new_range,
        } => {
            IdMap::allocated(emitter, uid, &name, base, size).await?;
            new_range
        }
        Change::Released { uid, name, base } => {
            IdMap::released(emitter, uid, &name, base).await?;
            true
        }
        Change::Forgotten => true,
    };
    if in_use_changed {
        let server = emitter.connection().object_server();
        let idmap = server.interface::<_, IdMap>(emitter.path()).await?;
        idmap.get().await.in_use_changed(emitter).await?;
    }
    Ok(())
}

/// Frees the drained ranges whose namespaces are gone, taking the allocator's lock for one
/// range at a time: a call waits for one range's removal at most, not for a whole batch's
/// (a few milliseconds for a hundred ranges); how many it freed.
fn reclaim_drained(allocator: &Mutex<Allocator>) -> usize {
    let bases = lock(allocator).draining();
    bases
        .into_iter()
        .filter(|base| lock(allocator).reclaim_drained(*base))
        .count()
}

// A panic while holding the lock cannot leave the registry half-updated (every change is one
// atomic file operation followed by an in-memory insert/remove), so the data stays usable.
fn lock(allocator: &Mutex<Allocator>) -> MutexGuard<'_, Allocator> {
    allocator
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[zbus::interface(name = "org.burrow.IdMap1")]
impl IdMap {
    /// Allocates an exclusive range of 65536 host IDs under `name` and maps the user namespace
    /// `userns` (an fd of /proc/PID/ns/user, owned by the caller, with empty maps) onto it as
    /// `0 <base> 65536` for both uids and gids. The range is recorded before the reply.
    async fn allocate(
        &self,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &Connection,
        #[zbus(signal_emitter)] emitter: SignalEmitter<'_>,
        name: String,
        userns: OwnedFd,
    ) -> Result<(u32, u32, u32), BurrowError> {
        let _call = self.activity.begin();
        let caller = Caller::identify(conn, &header).await?;
        let result = self
            .allocate_for(conn, &header, &caller, name.clone(), userns)
            .await;
        match &result {
            Ok(record) => {
                tracing::info!(uid = caller.uid, pid = ?caller.pid, name, base = record.0, "allocated");
                announce(&emitter, Change::allocated(caller.uid, name, *record, true));
            }
            Err(e) => {
                tracing::info!(uid = caller.uid, pid = ?caller.pid, name = %name.escape_debug(),
                error = %e.dbus_name(), reason = %e, "allocate refused")
            }
        }
        result
    }

    /// Holds the caller's range `existing` under `name` too, for another container that joins
    /// the user namespace `userns` (an fd of /proc/PID/ns/user), which must be the very
    /// namespace mapped onto that range. No new range: the range stays until every name
    /// holding it is released. Announced with `Allocated`, as every new name is.
    async fn join(
        &self,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &Connection,
        #[zbus(signal_emitter)] emitter: SignalEmitter<'_>,
        existing: String,
        name: String,
        userns: OwnedFd,
    ) -> Result<(u32, u32, u32), BurrowError> {
        let _call = self.activity.begin();
        let caller = Caller::identify(conn, &header).await?;
        let result = self
            .join_for(
                conn,
                &header,
                &caller,
                existing.clone(),
                name.clone(),
                userns,
            )
            .await;
        match &result {
            Ok(range) => {
                tracing::info!(uid = caller.uid, pid = ?caller.pid, existing, name,
                    base = range.0, "joined");
                announce(&emitter, Change::allocated(caller.uid, name, *range, false));
            }
            Err(e) => {
                tracing::info!(uid = caller.uid, pid = ?caller.pid,
                existing = %existing.escape_debug(), name = %name.escape_debug(),
                error = %e.dbus_name(), reason = %e, "join refused")
            }
        }
        result
    }

    /// Gives back the caller's range `name` (one of its names, if it has several).
    async fn release(
        &self,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &Connection,
        #[zbus(signal_emitter)] emitter: SignalEmitter<'_>,
        name: String,
    ) -> Result<(), BurrowError> {
        let _call = self.activity.begin();
        let (uid, record) = self
            .on_own_name(&header, conn, &name, Allocator::release)
            .await?;
        let base = record.base;
        announce(&emitter, Change::Released { uid, name, base });
        Ok(())
    }

    /// Keeps the caller's range `name` (held by that name alone, the one it was allocated
    /// under): its Release, or the end of its namespace, parks it for `name` instead of
    /// freeing it, until Forget. Allocate of `name` by the caller takes it back, once the
    /// namespace it had is gone.
    async fn keep(
        &self,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &Connection,
        name: String,
    ) -> Result<(), BurrowError> {
        let _call = self.activity.begin();
        let caller = Caller::identify(conn, &header).await?;
        let result = async {
            validate_name(&name)?;
            self.lock().get(caller.uid, &name)?;
            caller.authorize(conn, &header, idmap::ACTION_KEEP).await?;
            let (uid, kept_name) = (caller.uid, name.clone());
            self.with_allocator(move |a| Ok(a.keep(uid, &kept_name)?))
                .await
        }
        .await;
        match &result {
            Ok(record) => {
                tracing::info!(uid = caller.uid, pid = ?caller.pid, name, base = record.base, "kept")
            }
            Err(e) => {
                tracing::info!(uid = caller.uid, pid = ?caller.pid, name = %name.escape_debug(),
                error = %e.dbus_name(), reason = %e, "keep refused")
            }
        }
        result.map(|_| ())
    }

    /// Frees the caller's range parked for `name` (at once if its namespace is gone, else
    /// once it is). A range still held is refused (`Busy`): release it first.
    async fn forget(
        &self,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &Connection,
        #[zbus(signal_emitter)] emitter: SignalEmitter<'_>,
        name: String,
    ) -> Result<(), BurrowError> {
        let _call = self.activity.begin();
        let (uid, record) = self
            .on_own_name(&header, conn, &name, Allocator::forget)
            .await?;
        tracing::info!(uid, name, base = record.base, "forgot");
        announce(&emitter, Change::Forgotten);
        Ok(())
    }

    /// The caller's range held as `name`: (uid_base, gid_base, size).
    async fn get(
        &self,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &Connection,
        name: String,
    ) -> Result<(u32, u32, u32), BurrowError> {
        let _call = self.activity.begin();
        let caller = Caller::identify(conn, &header).await?;
        validate_name(&name)?;
        let allocator = self.lock();
        let record = allocator.get(caller.uid, &name)?;
        Ok((record.base, record.base, record.size))
    }

    /// The caller's ranges (root: everyone's) as (uid, name, uid_base, gid_base, size), once
    /// per name a range is held under.
    async fn list(
        &self,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<Vec<RangeEntry>, BurrowError> {
        let _call = self.activity.begin();
        let caller = Caller::identify(conn, &header).await?;
        let allocator = self.lock();
        Ok(allocator
            .records()
            .filter(|r| caller.is_root() || r.uid == caller.uid)
            .flat_map(|r| {
                r.holders
                    .iter()
                    .map(|holder| (r.uid, holder.clone(), r.base, r.base, r.size))
            })
            .collect())
    }

    /// Moves `process` (a pidfd of a process inside the user namespace of the caller's range
    /// held as `name`) into a new cgroup of that name's, delegated to that range's root, below
    /// the caller's per-user cgroup with the admin's limits. Returns the cgroup's path below
    /// each hierarchy's root. For non-root runtimes, which cannot create cgroups; removed when
    /// `name` is released or the range is freed.
    async fn add_control_group(
        &self,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &Connection,
        name: String,
        process: OwnedFd,
    ) -> Result<String, BurrowError> {
        let _call = self.activity.begin();
        let caller = Caller::identify(conn, &header).await?;
        let result = async {
            validate_name(&name)?;
            let record = self.lock().get(caller.uid, &name)?.clone();
            caller
                .authorize(conn, &header, idmap::ACTION_CGROUP)
                .await?;
            let quota = self.quotas.for_uid(caller.uid)?;
            self.cgroups
                .grant(Grant {
                    record,
                    holder: name.clone(),
                    process: process.into(),
                    quota,
                })
                .await
        }
        .await;
        match &result {
            Ok(path) => {
                tracing::info!(uid = caller.uid, pid = ?caller.pid, name, path, "cgroup delegated")
            }
            Err(e) => {
                tracing::info!(uid = caller.uid, pid = ?caller.pid, name = %name.escape_debug(),
                error = %e.dbus_name(), reason = %e, "cgroup refused")
            }
        }
        result
    }

    #[zbus(property(emits_changed_signal = "const"))]
    fn pool_start(&self) -> u32 {
        self.lock().pool.start
    }

    #[zbus(property(emits_changed_signal = "const"))]
    fn pool_end(&self) -> u32 {
        self.lock().pool.end
    }

    #[zbus(property(emits_changed_signal = "const"))]
    fn range_size(&self) -> u32 {
        burrow_contract::RANGE_SIZE
    }

    /// Ranges not available for allocation: held ones, released ones still draining, parked
    /// ones.
    #[zbus(property)]
    fn in_use(&self) -> u32 {
        self.lock().in_use() as u32
    }

    #[zbus(property(emits_changed_signal = "const"))]
    fn max_per_user(&self) -> u32 {
        self.lock().max_per_user as u32
    }

    #[zbus(signal)]
    async fn allocated(
        emitter: &SignalEmitter<'_>,
        uid: u32,
        name: &str,
        base: u32,
        size: u32,
    ) -> zbus::Result<()>;

    #[zbus(signal)]
    async fn released(
        emitter: &SignalEmitter<'_>,
        uid: u32,
        name: &str,
        base: u32,
    ) -> zbus::Result<()>;
}

impl IdMap {
    /// Identifies the caller and runs `op` on its name `name` under the allocator's lock:
    /// (the caller's uid, the record `op` returns).
    async fn on_own_name(
        &self,
        header: &Header<'_>,
        conn: &Connection,
        name: &str,
        op: fn(&mut Allocator, u32, &str) -> Result<Record, AllocError>,
    ) -> Result<(u32, Record), BurrowError> {
        let caller = Caller::identify(conn, header).await?;
        validate_name(name)?;
        let (uid, name) = (caller.uid, name.to_string());
        let record = self.with_allocator(move |a| Ok(op(a, uid, &name)?)).await?;
        if self.lock().has_draining() {
            self.drained.notify_one();
        }
        Ok((uid, record))
    }

    /// Allocate's work. One blocking task ([`AllocateStep`]) enters the namespace and lists
    /// the accounts while polkit decides, then takes polkit's answer and the range: one
    /// hand-over between threads each way, where a task per step took three, each a wake-up
    /// on another CPU on a small machine.
    async fn allocate_for(
        &self,
        conn: &Connection,
        header: &Header<'_>,
        caller: &Caller,
        name: String,
        userns: OwnedFd,
    ) -> Result<(u32, u32, u32), BurrowError> {
        validate_name(&name)?;
        let userns = UserNs::from_caller_fd(userns.into(), caller.uid)?;
        let step = AllocateStep {
            uid: caller.uid,
            name,
            userns,
            allocator: Arc::clone(&self.allocator),
            exclusions: Arc::clone(&self.exclusions),
            cgroups: Arc::clone(&self.cgroups),
            quotas: self.quotas.clone(),
        };
        let (decided, decision) = oneshot::channel();
        let authorize = caller.authorize(conn, header, idmap::ACTION_ALLOCATE);
        let task = match Arc::clone(&self.overlapping).try_acquire_owned() {
            // The worker enters the namespace while polkit decides; the task then takes the
            // answer, and the range.
            Ok(permit) => {
                let task = step.spawn(decision, Some(permit));
                // Gone only if the task ended early, which its outcome reports.
                let _ = decided.send(authorize.await);
                task
            }
            Err(_) => {
                authorize.await?;
                let _ = decided.send(Ok(()));
                step.spawn(decision, None)
            }
        };
        let (result, leftovers) = task.outcome().await?;
        self.cgroups.remove(leftovers).await;
        result
    }

    /// Join's checks, in the order every method makes them: the names, then that the caller
    /// holds `existing` (else `NotFound`, as Get), then that `userns` is that range's very
    /// namespace (else `NotAuthorized`), then polkit. The allocator checks `existing` and the
    /// namespace again under its lock, where a concurrent Release may have dropped the range.
    async fn join_for(
        &self,
        conn: &Connection,
        header: &Header<'_>,
        caller: &Caller,
        existing: String,
        name: String,
        userns: OwnedFd,
    ) -> Result<(u32, u32, u32), BurrowError> {
        validate_name(&existing)?;
        validate_name(&name)?;
        let uid = caller.uid;
        self.lock().get(uid, &existing)?;
        let userns = UserNs::from_caller_fd(userns.into(), uid)?;
        self.lock().joinable(uid, &existing, userns.id)?;
        caller.authorize(conn, header, idmap::ACTION_JOIN).await?;
        self.with_allocator(move |allocator| {
            let record = allocator.join(uid, &existing, &name, userns.id)?;
            Ok((record.base, record.base, record.size))
        })
        .await
    }
}
