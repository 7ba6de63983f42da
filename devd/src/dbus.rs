//! The `org.burrow.Dev1` interface.

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;

use burrow_contract::dev;
use burrow_contract::BurrowError;
use burrow_sys::service::Activity;
use burrow_sys::userns::UserNs;
use burrow_sys::Caller;
use zbus::message::Header;
use zbus::zvariant::{OwnedFd, OwnedValue};
use zbus::Connection;

use crate::build::build_dev;
use crate::devices::{self, DeviceError};

/// Where the admin's allowlist is and what it held at start-up.
pub struct Allowlist {
    pub path: PathBuf,
    pub devices: BTreeSet<String>,
}

pub struct Dev {
    pub allowlist: Allowlist,
    pub host_dev: PathBuf,
    pub activity: Activity,
    /// Per-user quotas (max_extra_devices), read at every call.
    pub quotas: burrow_sys::quota::QuotaFile,
}

impl From<DeviceError> for BurrowError {
    fn from(e: DeviceError) -> Self {
        match e {
            DeviceError::NotAllowed(..) | DeviceError::Forbidden(..) => {
                BurrowError::NotAuthorized(e.to_string())
            }
            DeviceError::BadName(_) | DeviceError::NotCharDevice(_) | DeviceError::Host(..) => {
                BurrowError::InvalidArgument(e.to_string())
            }
        }
    }
}

/// The options `Create` understands.
struct CreateOptions {
    extra: Vec<String>,
}

impl CreateOptions {
    fn parse(options: HashMap<String, OwnedValue>) -> Result<Self, BurrowError> {
        let mut extra = vec![];
        for (key, value) in options {
            match key.as_str() {
                "extra" => {
                    extra = Vec::<String>::try_from(value).map_err(|_| {
                        BurrowError::InvalidArgument(
                            "option \"extra\" must be an array of strings (as)".into(),
                        )
                    })?
                }
                other => {
                    return Err(BurrowError::InvalidArgument(format!(
                        "unknown option {other:?} (known: \"extra\")"
                    )))
                }
            }
        }
        Ok(CreateOptions { extra })
    }
}

#[zbus::interface(name = "org.burrow.Dev1")]
impl Dev {
    /// Builds a container's /dev for the user namespace `userns` (an fd of /proc/PID/ns/user,
    /// owned by the caller, already mapped) and returns it as a detached mount: a tmpfs with
    /// null, zero, full, random, urandom, tty, the directories pts, shm, mqueue and the links
    /// ptmx, fd, stdin, stdout, stderr, all owned by the namespace's root. `options`:
    /// `extra` (as): devices from the admin's allowlist, e.g. ["fuse", "net/tun"].
    async fn create(
        &self,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &Connection,
        userns: OwnedFd,
        options: HashMap<String, OwnedValue>,
    ) -> Result<OwnedFd, BurrowError> {
        let _call = self.activity.begin();
        let caller = Caller::identify(conn, &header).await?;
        let result = self
            .create_for(conn, &header, &caller, userns, options)
            .await;
        match &result {
            Ok(_) => tracing::info!(uid = caller.uid, pid = ?caller.pid, "created /dev"),
            Err(e) => {
                tracing::info!(uid = caller.uid, pid = ?caller.pid, error = %e.dbus_name(), reason = %e, "create refused")
            }
        }
        result
    }

    /// The devices the admin allows as extras.
    #[zbus(property(emits_changed_signal = "const"))]
    fn allowed_extra(&self) -> Vec<String> {
        self.allowlist.devices.iter().cloned().collect()
    }
}

impl Dev {
    async fn create_for(
        &self,
        conn: &Connection,
        header: &Header<'_>,
        caller: &Caller,
        userns: OwnedFd,
        options: HashMap<String, OwnedValue>,
    ) -> Result<OwnedFd, BurrowError> {
        let options = CreateOptions::parse(options)?;
        let userns = UserNs::from_caller_fd(userns.into(), caller.uid)?;
        let mut nodes = devices::standard_nodes();
        for name in &options.extra {
            nodes.push(devices::extra_node(
                name,
                &self.allowlist.devices,
                &self.allowlist.path,
                &self.host_dev,
            )?);
        }
        caller.authorize(conn, header, dev::ACTION_CREATE).await?;
        if !options.extra.is_empty() {
            caller.authorize(conn, header, dev::ACTION_EXTRA).await?;
            let quota = self.quotas.for_uid(caller.uid)?;
            if let Some(limit) = quota.max_extra_devices {
                if options.extra.len() > limit {
                    return Err(BurrowError::Exhausted(format!(
                        "{} extra devices asked for, uid {}'s quota is {limit} per /dev",
                        options.extra.len(),
                        caller.uid
                    )));
                }
            }
        }
        let mount = tokio::task::spawn_blocking(move || {
            let owner = userns.enter()?.root_ids()?;
            build_dev(&nodes, owner).map_err(|e| BurrowError::Failed(e.to_string()))
        })
        .await
        .map_err(|e| BurrowError::Failed(format!("worker task failed: {e}")))??;
        Ok(mount.into())
    }
}
