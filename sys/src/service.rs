//! The skeleton every helper runs in: logging, the bus connection, sd-notify, clean shutdown
//! and exit after an idle period (the bus re-activates the helper on the next call).

use std::future::Future;
use std::io::IsTerminal;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::signal::unix::{signal, SignalKind};
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use zbus::object_server::Interface;

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("cannot connect to the system bus (DBUS_SYSTEM_BUS_ADDRESS or /run/dbus/system_bus_socket): {0}")]
    Connect(#[source] Box<zbus::Error>),
    #[error(
        "cannot own bus name {name} (check the bus policy, or another instance owns it): {source}"
    )]
    OwnName {
        name: &'static str,
        source: Box<zbus::Error>,
    },
    #[error("signal handler: {0}")]
    Signal(#[source] std::io::Error),
    #[error("starting the async runtime: {0}")]
    Runtime(#[source] std::io::Error),
}

/// How long a thread of blocking work (forks, mounts, state writes) outlives its last job:
/// long enough to serve a burst of calls on the same threads, short enough that an idle
/// helper keeps none (each holds its stack).
const BLOCKING_THREAD_KEEP_ALIVE: Duration = Duration::from_secs(1);

/// How long a helper goes without calls before it gives its free heap back to the kernel and
/// unmaps its clean file pages.
const TRIM_AFTER: Duration = Duration::from_secs(1);

/// First thing a helper's `main` does: log to stderr, keep the heap to one malloc arena and
/// drop to `capabilities`, while the process still has one thread.
pub fn start(capabilities: &[caps::Capability]) -> Result<(), crate::privileges::PrivilegeError> {
    init_logging("info");
    one_malloc_arena();
    crate::privileges::retain_only(capabilities)
}

/// glibc gives threads that allocate at the same time arenas of their own (up to 8 per core),
/// each keeping the memory freed into it; a helper's few threads gain nothing from them but
/// resident memory.
fn one_malloc_arena() {
    // SAFETY: mallopt only sets a parameter of the allocator; called while the process has
    // one thread, before any arena but the main one exists.
    unsafe { libc::mallopt(libc::M_ARENA_MAX, 1) };
}

/// Returns the heap's free pages to the kernel: glibc keeps them for reuse otherwise, and a
/// helper idles far longer than it serves.
fn give_back_free_heap() {
    // SAFETY: malloc_trim takes the allocator's own locks and only releases free memory.
    unsafe { libc::malloc_trim(0) };
}

/// Drops the page-table entries of the helper's clean file pages (its code and its libraries'),
/// which are most of an idle helper's resident memory: the pages stay in the page cache,
/// shared, and the next call maps them back with minor faults. Only mappings the process
/// cannot write and never wrote are touched (see [`clean_file_mappings`]), so no content is
/// lost. Helpers do it when idle; mountd's spare worker when its job is long in coming.
pub fn unmap_clean_file_pages() {
    let Ok(smaps) = std::fs::read_to_string("/proc/self/smaps") else {
        return;
    };
    for (start, end) in clean_file_mappings(&smaps) {
        // SAFETY: [start, end) is one whole mapping of this process, of a file, private, not
        // writable and without an anonymous (copied-on-write) page: MADV_DONTNEED only unmaps
        // page-cache pages, which fault back in with the same contents.
        unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED) };
    }
}

/// The address ranges of `smaps`' (proc(5)) private, read-only file mappings that hold no
/// anonymous page. A page written before the mapping became read-only (relocated RELRO data)
/// is anonymous and rules its mapping out: dropping it would bring back the file's bytes.
fn clean_file_mappings(smaps: &str) -> Vec<(usize, usize)> {
    let mut clean = vec![];
    let mut candidate = None;
    for line in smaps.lines() {
        let mut fields = line.split_whitespace();
        let first = fields.next().unwrap_or_default();
        if let Some((start, end)) = first.split_once('-') {
            let perms = fields.next().unwrap_or_default();
            let path = fields.nth(3).unwrap_or_default();
            let read_only_private =
                perms.len() == 4 && !perms.contains('w') && perms.ends_with('p');
            candidate = match (
                usize::from_str_radix(start, 16),
                usize::from_str_radix(end, 16),
            ) {
                (Ok(start), Ok(end)) if read_only_private && path.starts_with('/') => {
                    Some((start, end))
                }
                _ => None,
            };
        } else if first == "Anonymous:" {
            let anonymous = fields.next().and_then(|kb| kb.parse::<u64>().ok());
            if let (Some(range), Some(0)) = (candidate.take(), anonymous) {
                clean.push(range);
            }
        }
    }
    clean
}

/// Runs blocking helper work (forks, fsyncs, /proc scans) off the async executor.
pub async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, burrow_contract::BurrowError> + Send + 'static,
) -> Result<T, burrow_contract::BurrowError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| burrow_contract::BurrowError::Failed(format!("worker task failed: {e}")))?
}

/// Sends logs to stderr (the journal when run by systemd); `RUST_LOG` (`level` or
/// `target=level,...`) overrides the level. `Targets` rather than `EnvFilter`: the helpers need
/// no span or regex filters, and the regex engine alone was about a tenth of a helper's code,
/// all of it resident.
pub fn init_logging(default_level: &str) {
    let from_env = std::env::var("RUST_LOG").ok();
    let default = || default_level.parse::<Targets>().unwrap_or_default();
    let (filter, rejected) = match from_env.as_deref().map(str::parse::<Targets>) {
        Some(Ok(targets)) => (targets, None),
        Some(Err(e)) => (default(), Some(e)),
        None => (default(), None),
    };
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_target(false)
                .with_ansi(std::io::stderr().is_terminal())
                .with_writer(std::io::stderr),
        )
        .with(filter)
        .init();
    if let Some(e) = rejected {
        tracing::warn!(rust_log = from_env.as_deref(), error = %e, "RUST_LOG not understood; using {default_level}");
    }
}

/// Counts calls in flight and remembers when the last one ended, to decide when to exit.
#[derive(Clone)]
pub struct Activity {
    in_flight: Arc<AtomicUsize>,
    last: Arc<Mutex<Instant>>,
}

/// Held for the duration of one method call.
pub struct CallGuard(Activity);

impl Default for Activity {
    fn default() -> Self {
        Activity {
            in_flight: Arc::new(AtomicUsize::new(0)),
            last: Arc::new(Mutex::new(Instant::now())),
        }
    }
}

impl Activity {
    pub fn begin(&self) -> CallGuard {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        CallGuard(self.clone())
    }

    /// When the last call ended, unless one is in flight.
    fn idle_since(&self) -> Option<Instant> {
        if self.in_flight.load(Ordering::SeqCst) > 0 {
            return None;
        }
        Some(*self.last.lock().unwrap_or_else(|p| p.into_inner()))
    }

    fn idle_for(&self) -> Option<Duration> {
        self.idle_since().map(|since| since.elapsed())
    }
}

impl Drop for CallGuard {
    fn drop(&mut self) {
        *self.0.last.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// What a helper serves, and for how long it may sit idle (zero: forever).
pub struct Service<I> {
    pub bus_name: &'static str,
    pub object_path: &'static str,
    pub interface: I,
    pub activity: Activity,
    pub idle_timeout: Duration,
}

impl<I: Interface> Service<I> {
    /// Runs the service on a fresh runtime, with `background` (e.g. a periodic cleanup)
    /// spawned beside it, until it exits. One thread runs every call's async part (each waits
    /// on the bus or polkit far more than it computes); blocking work runs on threads of its
    /// own ([`blocking`]) that go once idle.
    pub fn run_blocking(
        self,
        background: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServiceError> {
        tokio::runtime::Builder::new_current_thread()
            .thread_keep_alive(BLOCKING_THREAD_KEEP_ALIVE)
            .enable_all()
            .build()
            .map_err(ServiceError::Runtime)?
            .block_on(async {
                tokio::spawn(background);
                self.run().await
            })
    }

    /// Serves until SIGTERM/SIGINT, until idle for `idle_timeout`, or until the bus closes
    /// the connection (a restarted bus activates a new instance; this one must not linger,
    /// holding its state lock). On the way out the name is released first, so a call racing
    /// with the exit either still reaches this instance or activates a new one.
    pub async fn run(self) -> Result<(), ServiceError> {
        let Service {
            bus_name,
            object_path,
            interface,
            activity,
            idle_timeout,
        } = self;
        let conn = connect(bus_name, object_path, interface).await?;
        tracing::info!(bus_name, idle_timeout_s = idle_timeout.as_secs(), "ready");
        let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
        let why = wait_for_exit(&conn, &activity, idle_timeout).await?;
        let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
        if why != Exit::BusClosed {
            if let Err(e) = conn.release_name(bus_name).await {
                tracing::warn!(error = %e, "releasing bus name");
            }
            // Serve calls that were already routed to us before the name went away.
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // Calls in flight finish their work (state is written before replies), also when no
        // reply can reach the caller any more.
        while activity.idle_for().is_none() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }
}

/// Connects to the system bus, serves `interface` at `object_path` and owns `bus_name`.
async fn connect<I: Interface>(
    bus_name: &'static str,
    object_path: &'static str,
    interface: I,
) -> Result<zbus::Connection, ServiceError> {
    let conn = zbus::connection::Builder::system()
        .map_err(|e| ServiceError::Connect(Box::new(e)))?
        .serve_at(object_path, interface)
        .map_err(|e| ServiceError::Connect(Box::new(e)))?
        .build()
        .await
        .map_err(|e| ServiceError::Connect(Box::new(e)))?;
    conn.request_name_with_flags(bus_name, zbus::fdo::RequestNameFlags::DoNotQueue.into())
        .await
        .map_err(|source| ServiceError::OwnName {
            name: bus_name,
            source: Box::new(source),
        })?;
    Ok(conn)
}

/// Why a helper stops serving.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Exit {
    Signal,
    Idle,
    BusClosed,
}

/// Waits for a signal, for `idle_timeout` without calls (zero: never), or for the bus to close
/// the connection (the bus exited or restarted).
async fn wait_for_exit(
    conn: &zbus::Connection,
    activity: &Activity,
    idle_timeout: Duration,
) -> Result<Exit, ServiceError> {
    let mut term = signal(SignalKind::terminate()).map_err(ServiceError::Signal)?;
    let mut int = signal(SignalKind::interrupt()).map_err(ServiceError::Signal)?;
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let closed = conn.closed();
    tokio::pin!(closed);
    let mut trimmed_after = None;
    loop {
        tokio::select! {
            _ = term.recv() => { tracing::info!("SIGTERM, exiting"); return Ok(Exit::Signal); }
            _ = int.recv() => { tracing::info!("SIGINT, exiting"); return Ok(Exit::Signal); }
            _ = &mut closed => {
                tracing::warn!("the bus closed the connection (it exited or restarted), exiting");
                return Ok(Exit::BusClosed);
            }
            _ = tick.tick() => {
                let idle_since = activity.idle_since();
                if !idle_timeout.is_zero()
                    && idle_since.is_some_and(|since| since.elapsed() >= idle_timeout)
                {
                    tracing::info!("idle, exiting until the next call activates me");
                    return Ok(Exit::Idle);
                }
                // Once per idle period, after the calls that grew the heap.
                if idle_since.is_some_and(|since| since.elapsed() >= TRIM_AFTER)
                    && trimmed_after != idle_since
                {
                    give_back_free_heap();
                    unmap_clean_file_pages();
                    trimmed_after = idle_since;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMAPS: &str = "\
5600000000-5600001000 r--p 00000000 fe:01 12 /usr/libexec/burrow-idmapd
Size:                  4 kB
Anonymous:             0 kB
VmFlags: rd mr mw me
5600001000-5600003000 r-xp 00001000 fe:01 12 /usr/libexec/burrow-idmapd
Anonymous:             0 kB
5600003000-5600004000 r--p 00003000 fe:01 12 /usr/libexec/burrow-idmapd
Anonymous:             4 kB
5600004000-5600005000 rw-p 00004000 fe:01 12 /usr/libexec/burrow-idmapd
Anonymous:             0 kB
5600005000-5600006000 r--s 00000000 fe:01 13 /run/shared
Anonymous:             0 kB
5600006000-5600007000 r--p 00000000 00:00 0
Anonymous:             0 kB
7ffd00000000-7ffd00002000 r-xp 00000000 00:00 0 [vdso]
Anonymous:             0 kB
5600008000-5600009000 r-xp 00000000 fe:01 14 /usr/lib/libc.so.6 (deleted)
Anonymous:             0 kB
";

    #[test]
    fn only_private_read_only_file_mappings_without_anonymous_pages_are_clean() {
        assert_eq!(
            clean_file_mappings(SMAPS),
            vec![
                (0x5600000000, 0x5600001000),
                (0x5600001000, 0x5600003000),
                (0x5600008000, 0x5600009000),
            ]
        );
    }

    /// The test process itself (its code, libraries and relocated data) goes on working after
    /// its clean file pages were unmapped.
    #[test]
    fn a_process_runs_on_after_its_clean_file_pages_are_unmapped() {
        let before = std::fs::read_to_string("/proc/self/smaps").unwrap();
        assert!(!clean_file_mappings(&before).is_empty());
        unmap_clean_file_pages();
        let text = format!("{:?}", std::collections::BTreeMap::from([(1, "one")]));
        assert_eq!(text, "{1: \"one\"}");
        let spawned = std::thread::spawn(|| std::env::args().count())
            .join()
            .unwrap();
        assert!(spawned >= 1);
    }
}
