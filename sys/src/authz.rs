//! Who is calling, and may they? Identity comes from the bus daemon, never from the message.

mod grants;

pub use grants::GrantArgs;

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use zbus::fdo::DBusProxy;
use zbus::message::Header;
use zbus::names::BusName;
use zbus::proxy::CacheProperties;
use zbus_polkit::policykit1::{AuthorityProxy, Subject};

use burrow_contract::BurrowError;

/// The peer of a method call, as dbus-daemon knows it (GetConnectionCredentials).
#[derive(Debug, Clone)]
pub struct Caller {
    pub bus_name: String,
    pub uid: u32,
    pub pid: Option<u32>,
}

/// How many callers [`Caller::identify`] remembers.
const RECENT_CALLERS: usize = 32;

/// Callers identified lately, each with its bus's GUID (a restarted bus hands out the same
/// unique names again). On one bus, a unique name never names a second connection, and a
/// connection's credentials are fixed when it connects: a client's later calls (a container's
/// Release after its Allocate) need not ask the bus again.
static RECENT: Mutex<VecDeque<(String, Caller)>> = Mutex::new(VecDeque::new());

impl Caller {
    /// Who sent `header`'s message: asked of the bus, unless the same connection called lately.
    pub async fn identify(
        conn: &zbus::Connection,
        header: &Header<'_>,
    ) -> Result<Self, BurrowError> {
        let sender = header
            .sender()
            .ok_or_else(|| BurrowError::NotAuthorized("message has no sender".into()))?;
        let bus = conn.server_guid().to_string();
        if let Some(known) = recent(&bus, sender.as_str()) {
            return Ok(known);
        }
        let caller = Self::ask_bus(conn, sender).await?;
        remember(bus, &caller);
        Ok(caller)
    }

    /// GetConnectionCredentials of `sender`.
    async fn ask_bus(
        conn: &zbus::Connection,
        sender: &zbus::names::UniqueName<'_>,
    ) -> Result<Self, BurrowError> {
        let creds = DBusProxy::builder(conn)
            .cache_properties(CacheProperties::No)
            .build()
            .await?
            .get_connection_credentials(BusName::Unique(sender.clone()))
            .await
            .map_err(|e| {
                BurrowError::NotAuthorized(format!("cannot identify caller {sender}: {e}"))
            })?;
        let uid = creds.unix_user_id().ok_or_else(|| {
            BurrowError::NotAuthorized(format!("bus reports no uid for caller {sender}"))
        })?;
        Ok(Caller {
            bus_name: sender.to_string(),
            uid,
            pid: creds.process_id(),
        })
    }

    pub fn is_root(&self) -> bool {
        self.uid == 0
    }

    /// Root is always allowed; anyone else needs polkit to grant `action` for their bus name
    /// (or to have granted it to the same uid lately, see [`grants`]). Never interactive:
    /// helpers have no agent to ask, the admin grants by rule.
    pub async fn authorize(
        &self,
        conn: &zbus::Connection,
        header: &Header<'_>,
        action: &str,
    ) -> Result<(), BurrowError> {
        if self.is_root() {
            return Ok(());
        }
        let bus = conn.server_guid().as_str();
        if grants::granted(bus, self.uid, action) {
            tracing::debug!(action, uid = self.uid, "polkit's grant remembered");
            return Ok(());
        }
        let generation = grants::before_asking(conn).await;
        let subject = Subject::new_for_message_header(header).map_err(|e| {
            BurrowError::NotAuthorized(format!("no polkit subject for caller: {e}"))
        })?;
        let authority = AuthorityProxy::builder(conn)
            .cache_properties(CacheProperties::No)
            .build()
            .await?;
        let result = authority
            .check_authorization(&subject, action, &HashMap::new(), Default::default(), "")
            .await
            .map_err(|e| {
                tracing::error!(action, caller = %self.bus_name, error = %e, "polkit check failed");
                BurrowError::NotAuthorized(format!(
                    "could not ask polkit about {action} (is polkitd running?): {e}"
                ))
            })?;
        if result.is_authorized {
            tracing::debug!(action, uid = self.uid, "polkit granted");
            if let Some(generation) = generation {
                grants::remember(generation, self.uid, action);
            }
            Ok(())
        } else {
            tracing::info!(action, uid = self.uid, caller = %self.bus_name, "polkit denied");
            Err(BurrowError::NotAuthorized(format!(
                "uid {} is not authorized for {action}; an admin can grant it with a polkit rule \
                 (e.g. by adding the user to group 'burrow')",
                self.uid
            )))
        }
    }
}

/// The caller `sender` on bus `bus`, if identified lately.
fn recent(bus: &str, sender: &str) -> Option<Caller> {
    let recent = RECENT.lock().unwrap_or_else(|p| p.into_inner());
    recent
        .iter()
        .find(|(b, c)| b == bus && c.bus_name == sender)
        .map(|(_, c)| c.clone())
}

/// Remembers `caller` of bus `bus`, forgetting the oldest beyond [`RECENT_CALLERS`].
fn remember(bus: String, caller: &Caller) {
    let mut recent = RECENT.lock().unwrap_or_else(|p| p.into_inner());
    if recent.len() == RECENT_CALLERS {
        recent.pop_front();
    }
    recent.push_back((bus, caller.clone()));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller(name: &str, uid: u32) -> Caller {
        Caller {
            bus_name: name.into(),
            uid,
            pid: Some(uid + 1),
        }
    }

    #[test]
    fn a_remembered_caller_counts_on_its_own_bus_and_the_oldest_goes_first() {
        remember("bus-a".into(), &caller(":1.7", 1000));
        assert_eq!(recent("bus-a", ":1.7").map(|c| c.uid), Some(1000));
        // A restarted bus gives ":1.7" to someone else.
        assert!(recent("bus-b", ":1.7").is_none());
        for n in 0..RECENT_CALLERS {
            remember("bus-a".into(), &caller(&format!(":2.{n}"), 2000));
        }
        assert!(recent("bus-a", ":1.7").is_none(), "the oldest is forgotten");
        assert!(recent("bus-a", ":2.0").is_some());
        assert_eq!(RECENT.lock().unwrap().len(), RECENT_CALLERS);
    }
}
