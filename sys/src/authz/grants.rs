//! polkit's grants, remembered for a few seconds per user and action.
//!
//! A non-root `burrow run` asks polkit up to four times (Allocate, a cgroup, `/dev`, the mount
//! namespace), and polkitd takes about 4 ms each. A grant is remembered for the same uid and
//! action, on the same bus, for [`GrantArgs::polkit_grant_seconds`], and forgotten at once
//! when polkitd says its rules or actions changed (`Changed`) or polkitd itself is replaced.
//! Refusals are never remembered: a grant an admin adds counts at the next call. What this
//! trades (docs/security.md): a grant taken away by a change polkit does not announce (a user
//! removed from group `burrow`) still counts for up to that many seconds, and rules that tell
//! one user's processes apart (by pid, session or seat) see one question per user and action
//! in that time.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use zbus::fdo::DBusProxy;
use zbus::proxy::CacheProperties;
use zbus_polkit::policykit1::AuthorityProxy;

/// The helpers' option for remembered grants (flattened into each helper's arguments).
#[derive(Debug, Clone, clap::Args)]
pub struct GrantArgs {
    /// Seconds a polkit grant counts for the same user's later calls of the same action
    /// (0: ask polkit every time). Forgotten at once when polkit's rules change.
    #[arg(long, env = "BURROW_POLKIT_GRANT_SECONDS", default_value_t = 5)]
    pub polkit_grant_seconds: u64,
}

impl GrantArgs {
    /// Makes this process remember grants for the configured time.
    pub fn apply(&self) {
        lock().ttl = Duration::from_secs(self.polkit_grant_seconds);
    }
}

/// Most grants remembered at once; the oldest goes first.
const MAX_GRANTS: usize = 64;

/// What grants count, and since when polkit's answers are known to be current.
struct Grants {
    /// How long a grant counts (zero: none is remembered).
    ttl: Duration,
    /// The GUID of the bus whose polkitd is watched: every grant is one of that bus's callers'
    /// (all are forgotten when the watch ends).
    watched_bus: Option<String>,
    /// Bumped whenever everything is forgotten: an answer asked for before the bump (and so
    /// perhaps under the old rules) is not remembered after it.
    generation: u64,
    granted: Vec<Grant>,
}

struct Grant {
    uid: u32,
    action: String,
    at: Instant,
}

static GRANTS: Mutex<Grants> = Mutex::new(Grants {
    ttl: Duration::from_secs(5),
    watched_bus: None,
    generation: 0,
    granted: Vec::new(),
});

/// Whether watching polkitd has been set up (or failed) in this process.
static WATCH: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();

fn lock() -> std::sync::MutexGuard<'static, Grants> {
    GRANTS.lock().unwrap_or_else(|p| p.into_inner())
}

/// Whether polkit granted `action` to `uid` on `bus` lately, under its current rules.
pub(super) fn granted(bus: &str, uid: u32, action: &str) -> bool {
    let grants = lock();
    let ttl = grants.ttl;
    grants.watched_bus.as_deref() == Some(bus)
        && grants
            .granted
            .iter()
            .any(|g| g.uid == uid && g.action == action && g.at.elapsed() < ttl)
}

/// Before asking polkit: the generation its answer belongs to, if it may be remembered.
/// Watches polkitd on `conn`'s bus first (once), so no change goes unnoticed.
pub(super) async fn before_asking(conn: &zbus::Connection) -> Option<u64> {
    if lock().ttl.is_zero() {
        return None;
    }
    WATCH.get_or_init(|| watch_polkitd(conn.clone())).await;
    let grants = lock();
    (grants.watched_bus.as_deref() == Some(conn.server_guid().as_str()))
        .then_some(grants.generation)
}

/// Remembers polkit's grant on the watched bus, unless everything was forgotten since it was
/// asked for (as it is when the watch ends).
pub(super) fn remember(generation: u64, uid: u32, action: &str) {
    let mut grants = lock();
    if grants.generation != generation {
        return;
    }
    grants
        .granted
        .retain(|g| !(g.uid == uid && g.action == action));
    if grants.granted.len() == MAX_GRANTS {
        grants.granted.remove(0);
    }
    grants.granted.push(Grant {
        uid,
        action: action.to_string(),
        at: Instant::now(),
    });
}

/// Forgets every grant; answers already on their way are not remembered either.
fn forget_all(why: &str) {
    let mut grants = lock();
    grants.granted.clear();
    grants.generation += 1;
    tracing::debug!(why, "polkit grants forgotten");
}

/// Subscribes to polkit's `Changed` and to its bus name's owner, then forgets every grant at
/// each. Grants are remembered only once both subscriptions stand, and never again once the
/// signals stop (the connection closed).
async fn watch_polkitd(conn: zbus::Connection) {
    let subscribed = async {
        let authority = AuthorityProxy::builder(&conn)
            .cache_properties(CacheProperties::No)
            .build()
            .await?;
        let changed = authority.receive_changed().await?;
        let owners = DBusProxy::new(&conn)
            .await?
            .receive_name_owner_changed_with_args(&[(0, "org.freedesktop.PolicyKit1")])
            .await?;
        Ok::<_, zbus::Error>((changed, owners))
    };
    let (mut changed, mut owners) = match subscribed.await {
        Ok(streams) => streams,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch polkitd: every call asks polkit");
            return;
        }
    };
    lock().watched_bus = Some(conn.server_guid().to_string());
    tokio::spawn(async move {
        loop {
            let change = tokio::select! {
                c = changed.next() => c.map(|_| "polkit's rules or actions changed"),
                o = owners.next() => o.map(|_| "polkitd was replaced"),
            };
            let Some(why) = change else { break };
            forget_all(why);
        }
        lock().watched_bus = None;
        forget_all("no longer watching polkitd");
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The unit tests share the process-wide grants: one test runs them in turn.
    #[test]
    fn grants_count_per_bus_user_and_action_until_too_old_or_forgotten() {
        lock().ttl = Duration::from_secs(2);
        lock().watched_bus = Some("bus-a".into());
        let generation = lock().generation;
        remember(generation, 1000, "org.burrow.idmap.allocate");
        assert!(granted("bus-a", 1000, "org.burrow.idmap.allocate"));
        assert!(!granted("bus-b", 1000, "org.burrow.idmap.allocate"));
        assert!(!granted("bus-a", 1001, "org.burrow.idmap.allocate"));
        assert!(!granted("bus-a", 1000, "org.burrow.dev.create"));

        std::thread::sleep(Duration::from_millis(2100));
        assert!(
            !granted("bus-a", 1000, "org.burrow.idmap.allocate"),
            "too old"
        );

        remember(generation, 1000, "org.burrow.idmap.allocate");
        forget_all("test");
        assert!(!granted("bus-a", 1000, "org.burrow.idmap.allocate"));
        // Asked before the change: its answer may follow the old rules.
        remember(generation, 1000, "org.burrow.idmap.allocate");
        assert!(!granted("bus-a", 1000, "org.burrow.idmap.allocate"));

        let generation = lock().generation;
        for uid in 0..MAX_GRANTS as u32 + 1 {
            remember(generation, uid, "a");
        }
        assert!(!granted("bus-a", 0, "a"), "the oldest is forgotten");
        assert!(granted("bus-a", MAX_GRANTS as u32, "a"));
        assert_eq!(lock().granted.len(), MAX_GRANTS);
    }
}
