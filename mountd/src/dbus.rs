//! The `org.burrow.Mount1` interface.

use std::collections::HashMap;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;

use burrow_contract::mount::{self, MountKind};
use burrow_contract::BurrowError;
use burrow_sys::pidfd::container_namespaces;
use burrow_sys::service::{blocking, Activity};
use burrow_sys::userns::UserNs;
use burrow_sys::Caller;
use rustix::mount::MountAttrFlags;
use zbus::message::Header;
use zbus::zvariant::{self, OwnedValue};
use zbus::Connection;

use crate::build::{self, Request};
use crate::idmap::{check_owner, idmapped_clone, mapping_for, set_attributes, Mapping};
use crate::plan::Plan;

pub struct Mount {
    /// An empty directory where workers attach a rootfs in their private mount namespaces.
    pub staging: PathBuf,
    pub activity: Activity,
}

/// An fd received from the bus, made close-on-exec: zbus receives fds without
/// MSG_CMSG_CLOEXEC, and none of a caller's fds may cross an exec (workers also close them
/// before theirs; this keeps them from any other exec the helper might make).
fn received(fd: zvariant::OwnedFd) -> OwnedFd {
    let fd: OwnedFd = fd.into();
    if let Ok(flags) = rustix::io::fcntl_getfd(&fd) {
        let _ = rustix::io::fcntl_setfd(&fd, flags | rustix::io::FdFlags::CLOEXEC);
    }
    fd
}

#[zbus::interface(name = "org.burrow.Mount1")]
impl Mount {
    /// An ID-mapped clone of the directory `dir` (an O_PATH fd the caller opened), mapped
    /// through the user namespace `userns` (owned by the caller, already mapped), as a
    /// detached mount. Overlayfs mounts are re-made on ID-mapped layers. Non-root callers may
    /// only map directories they own, and what the container writes is stored as the caller
    /// (for its root) or as IDs of the container's own range, never as host root.
    async fn idmap_mount(
        &self,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &Connection,
        dir: zvariant::OwnedFd,
        userns: zvariant::OwnedFd,
        read_only: bool,
    ) -> Result<zvariant::OwnedFd, BurrowError> {
        let _call = self.activity.begin();
        let caller = Caller::identify(conn, &header).await?;
        let staging = self.staging.clone();
        let result = async {
            let userns = UserNs::from_caller_fd(received(userns), caller.uid)?;
            let dir = received(dir);
            check_directory(dir.as_fd())?;
            check_owner(dir.as_fd(), caller.uid)?;
            caller.authorize(conn, &header, mount::ACTION_IDMAP).await?;
            let uid = caller.uid;
            blocking(move || {
                let worker = userns.enter()?;
                let owner = worker.root_ids()?;
                let mapping = mapping_for(uid, &userns, &worker)?;
                let mapping = Mapping {
                    userns: mapping.as_fd(),
                    owner,
                    staging: &staging,
                };
                let clone = idmapped_clone(dir.as_fd(), &mapping, false)?;
                if read_only {
                    set_attributes(
                        clone.as_fd(),
                        MountAttrFlags::MOUNT_ATTR_RDONLY,
                        MountAttrFlags::empty(),
                        None,
                        false,
                    )
                    .map_err(|e| BurrowError::Failed(format!("read-only: {e}")))?;
                }
                Ok(clone)
            })
            .await
        }
        .await;
        log_result(&caller, "IdmapMount", &result);
        result.map(Into::into)
    }

    /// The container's whole mount namespace, locked, as an fd to setns(2) into. `init_pidfd`
    /// is a pidfd of the container's init: its user namespace (owned by the caller) and its
    /// pid, network, ipc and cgroup namespaces (owned by that user namespace) are used.
    /// `plan` is the contract's `BuildPlan` as an a{sv} (see docs/api.md): `rootfs` (u, index
    /// into `fds` of an O_PATH directory), `dev` (u, the mount from org.burrow.Dev1),
    /// `rootfs_readonly` (b), `mounts` (a(ssuas): destination, type, source fd index or
    /// 0xffffffff, options; a bind with option `noidmap` is not ID-mapped and must be a
    /// directory owned by the container's root), `masked_paths` (as), `readonly_paths` (as),
    /// `writable_sysctls` (as: subtrees of /proc/sys made writable again, e.g. /proc/sys/net),
    /// `lxcfs` (b: the host's lxcfs files over the container's /proc files).
    /// It arrives as the raw dictionary and is converted in `Plan::parse`, so that a malformed
    /// plan is Burrow's named InvalidArgument, not the bus's InvalidArgs.
    async fn build_root(
        &self,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &Connection,
        init_pidfd: zvariant::OwnedFd,
        plan: HashMap<String, OwnedValue>,
        fds: Vec<zvariant::OwnedFd>,
    ) -> Result<zvariant::OwnedFd, BurrowError> {
        let _call = self.activity.begin();
        let caller = Caller::identify(conn, &header).await?;
        let staging = self.staging.clone();
        let result = async {
            let plan = Plan::parse(plan, fds.len())?;
            let fds: Vec<OwnedFd> = fds.into_iter().map(received).collect();
            let pidfd = received(init_pidfd);
            let (userns, namespaces) = container_namespaces(pidfd.as_fd(), caller.uid)?;
            check_directory(fds[plan.rootfs].as_fd())?;
            for index in
                std::iter::once(plan.rootfs).chain(plan.mounts.iter().filter_map(
                    |m| match m.kind {
                        // A noidmap bind is checked against the container's root once its
                        // maps are read.
                        MountKind::Bind { source } if m.options.idmapped => Some(source as usize),
                        _ => None,
                    },
                ))
            {
                check_owner(fds[index].as_fd(), caller.uid)?;
            }
            caller.authorize(conn, &header, mount::ACTION_BUILD).await?;
            let request = Request {
                caller_uid: caller.uid,
                userns,
                namespaces,
                plan,
                fds,
            };
            blocking(move || build::build(request, staging)).await
        }
        .await;
        log_result(&caller, "BuildRoot", &result);
        result.map(Into::into)
    }
}

fn log_result<T>(caller: &Caller, method: &str, result: &Result<T, BurrowError>) {
    match result {
        Ok(_) => tracing::info!(uid = caller.uid, pid = ?caller.pid, method, "done"),
        Err(e) => {
            tracing::info!(uid = caller.uid, pid = ?caller.pid, method, error = %e.dbus_name(), reason = %e, "refused")
        }
    }
}

fn check_directory(fd: BorrowedFd<'_>) -> Result<(), BurrowError> {
    let st =
        rustix::fs::fstat(fd).map_err(|e| BurrowError::InvalidArgument(format!("fstat: {e}")))?;
    if !rustix::fs::FileType::from_raw_mode(st.st_mode).is_dir() {
        return Err(BurrowError::InvalidArgument(
            "the rootfs / directory fd is not a directory".into(),
        ));
    }
    Ok(())
}
