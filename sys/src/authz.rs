//! Who is calling, and may they? Identity comes from the bus daemon, never from the message.

use std::collections::HashMap;

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

impl Caller {
    /// Asks the bus who sent `header`'s message.
    pub async fn identify(
        conn: &zbus::Connection,
        header: &Header<'_>,
    ) -> Result<Self, BurrowError> {
        let sender = header
            .sender()
            .ok_or_else(|| BurrowError::NotAuthorized("message has no sender".into()))?;
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

    /// Root is always allowed; anyone else needs polkit to grant `action` for their bus name.
    /// Never interactive: helpers have no agent to ask, the admin grants by rule.
    pub async fn authorize(
        &self,
        conn: &zbus::Connection,
        header: &Header<'_>,
        action: &str,
    ) -> Result<(), BurrowError> {
        if self.is_root() {
            return Ok(());
        }
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
