//! The `org.burrow.Mount1` interface.

use std::collections::HashMap;
use std::ffi::CString;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use burrow_bus::contract::mount;
use burrow_bus::service::{blocking, Activity};
use burrow_bus::userns::{NsWorker, UserNs};
use burrow_bus::{BurrowError, Caller};
use rustix::mount::MountAttrFlags;
use zbus::message::Header;
use zbus::zvariant::{self, OwnedValue};
use zbus::Connection;

use crate::build::{self, CgroupLayout, Job, Prepared};
use crate::idmap::{
    caller_disk_map, check_owner, clone_tree, idmapped_clone, set_attributes, Mapping, NO_DEVICES,
};
use crate::plan::{translate_ids, Kind, MountEntry, Plan};
use burrow_bus::pidfd::container_namespaces;

const TMPFS_MAGIC: i64 = 0x01021994;

pub struct Mount {
    pub staging: CString,
    pub activity: Activity,
}

/// The user namespace whose mapping an ID-mapped mount of `caller`'s gets: the container's own
/// for root (on-disk root is the container's root, as Docker expects), a derived one for
/// everyone else (see [`caller_disk_map`]).
fn mapping_for(
    caller_uid: u32,
    userns: &UserNs,
    worker: &NsWorker,
) -> Result<OwnedFd, BurrowError> {
    if caller_uid == 0 {
        return userns
            .as_fd()
            .try_clone_to_owned()
            .map_err(|e| BurrowError::Failed(format!("dup userns: {e}")));
    }
    let gid = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(caller_uid))
        .ok()
        .flatten()
        .ok_or_else(|| BurrowError::NotAuthorized(format!("uid {caller_uid} has no account")))?
        .gid
        .as_raw();
    let (uid_map, gid_map) = worker.maps()?;
    burrow_bus::userns::create_userns(
        &caller_disk_map(&uid_map, caller_uid)?,
        &caller_disk_map(&gid_map, gid)?,
    )
}

fn flags_of(options: &crate::plan::Options) -> MountAttrFlags {
    let mut attrs = MountAttrFlags::empty();
    for (on, flag) in [
        (options.read_only, MountAttrFlags::MOUNT_ATTR_RDONLY),
        (options.nosuid, MountAttrFlags::MOUNT_ATTR_NOSUID),
        (options.nodev, MountAttrFlags::MOUNT_ATTR_NODEV),
        (options.noexec, MountAttrFlags::MOUNT_ATTR_NOEXEC),
    ] {
        if on {
            attrs |= flag;
        }
    }
    attrs
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
            let userns = UserNs::from_caller_fd(userns.into(), caller.uid)?;
            let dir: OwnedFd = dir.into();
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
    /// `plan` (a{sv}): `rootfs` (u, index into `fds` of an O_PATH directory), `dev` (u, the
    /// mount from org.burrow.Dev1), `rootfs_readonly` (b), `mounts` (a(ssuas): destination,
    /// type, source fd index or 0xffffffff, options; a bind with option `noidmap` is not
    /// ID-mapped and must be a directory owned by the container's root), `masked_paths` (as),
    /// `readonly_paths` (as), `writable_sysctls` (as: subtrees of /proc/sys made writable
    /// again, e.g. /proc/sys/net).
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
            let fds: Vec<OwnedFd> = fds.into_iter().map(Into::into).collect();
            let pidfd: OwnedFd = init_pidfd.into();
            let (userns, namespaces) = container_namespaces(pidfd.as_fd(), caller.uid)?;
            check_directory(fds[plan.rootfs].as_fd())?;
            for index in
                std::iter::once(plan.rootfs).chain(plan.mounts.iter().filter_map(
                    |m| match m.kind {
                        // Checked against the container's root once its maps are read.
                        Kind::Bind {
                            idmapped: false, ..
                        } => None,
                        Kind::Bind { source, .. } => Some(source),
                        _ => None,
                    },
                ))
            {
                check_owner(fds[index].as_fd(), caller.uid)?;
            }
            caller.authorize(conn, &header, mount::ACTION_BUILD).await?;
            let uid = caller.uid;
            blocking(move || prepare_and_build(uid, userns, namespaces, plan, fds, staging)).await
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

/// A `noidmap` bind: the container sees the directory's on-disk IDs through its own map, so it
/// must already belong to the container's root (e.g. a per-container /var/lib/docker that the
/// runtime made in the container's range).
fn unmapped_clone(
    source: BorrowedFd<'_>,
    destination: &str,
    root_ids: (u32, u32),
    recursive: bool,
) -> Result<OwnedFd, BurrowError> {
    let st = rustix::fs::fstat(source).map_err(|e| {
        BurrowError::InvalidArgument(format!("fstat of {destination}'s source: {e}"))
    })?;
    if !rustix::fs::FileType::from_raw_mode(st.st_mode).is_dir() || st.st_uid != root_ids.0 {
        return Err(BurrowError::NotAuthorized(format!(
            "noidmap bind {destination}: the source must be a directory owned by the container's \
             root (host uid {}), not uid {}",
            root_ids.0, st.st_uid
        )));
    }
    let clone = clone_tree(source, recursive).map_err(|e| {
        BurrowError::InvalidArgument(format!("cloning {destination}'s source: {e}"))
    })?;
    set_attributes(
        clone.as_fd(),
        NO_DEVICES,
        MountAttrFlags::empty(),
        None,
        recursive,
    )
    .map_err(|e| BurrowError::Failed(format!("nodev on {destination}: {e}")))?;
    Ok(clone)
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

fn prepare_and_build(
    caller_uid: u32,
    userns: UserNs,
    namespaces: burrow_bus::pidfd::Namespaces,
    plan: Plan,
    fds: Vec<OwnedFd>,
    staging: CString,
) -> Result<OwnedFd, BurrowError> {
    let worker = userns.enter()?;
    let root_ids = worker.root_ids()?;
    let (uid_map, gid_map) = worker.maps()?;
    drop(worker);
    let dev_fs = rustix::fs::fstatfs(fds[plan.dev].as_fd())
        .map_err(|e| BurrowError::InvalidArgument(format!("dev fd: {e}")))?;
    let dev_owner = rustix::fs::fstat(fds[plan.dev].as_fd())
        .map_err(|e| BurrowError::InvalidArgument(format!("dev fd: {e}")))?
        .st_uid;
    if dev_fs.f_type as i64 != TMPFS_MAGIC || dev_owner != root_ids.0 {
        return Err(BurrowError::InvalidArgument(
            "the dev fd must be the /dev mount org.burrow.Dev1 made for this user namespace".into(),
        ));
    }
    let worker = userns.enter()?;
    let mapping = mapping_for(caller_uid, &userns, &worker)?;
    drop(worker);
    let mapping = Mapping {
        userns: mapping.as_fd(),
        owner: root_ids,
        staging: &staging,
    };
    let rootfs = idmapped_clone(fds[plan.rootfs].as_fd(), &mapping, false)?;
    if plan.rootfs_read_only {
        set_attributes(
            rootfs.as_fd(),
            MountAttrFlags::MOUNT_ATTR_RDONLY,
            MountAttrFlags::empty(),
            None,
            false,
        )
        .map_err(|e| BurrowError::Failed(format!("read-only rootfs: {e}")))?;
    }
    let mut mounts = vec![];
    for MountEntry {
        destination,
        kind,
        options,
    } in plan.mounts
    {
        let attrs = flags_of(&options);
        let data = translate_ids(&options.data, &uid_map, &gid_map)?;
        let fresh = |fstype: &'static str,
                     mut data: Vec<(String, Option<String>)>,
                     attrs: MountAttrFlags| {
            if fstype == "tmpfs" {
                for (key, id) in [("uid", root_ids.0), ("gid", root_ids.1)] {
                    if !data.iter().any(|(k, _)| k == key) {
                        data.push((key.to_string(), Some(id.to_string())));
                    }
                }
            }
            Prepared::Fresh {
                destination: destination.clone(),
                fstype,
                data,
                attrs,
            }
        };
        mounts.push(match kind {
            Kind::Bind {
                source,
                recursive,
                idmapped,
            } => {
                let is_file = rustix::fs::fstat(fds[source].as_fd())
                    .is_ok_and(|st| !rustix::fs::FileType::from_raw_mode(st.st_mode).is_dir());
                let mount = if idmapped {
                    idmapped_clone(fds[source].as_fd(), &mapping, recursive)?
                } else {
                    unmapped_clone(fds[source].as_fd(), &destination, root_ids, recursive)?
                };
                Prepared::Attach {
                    destination,
                    mount,
                    is_file,
                    attrs,
                    recursive,
                }
            }
            Kind::Proc => fresh("proc", data, attrs),
            Kind::Sysfs => fresh("sysfs", data, attrs | MountAttrFlags::MOUNT_ATTR_RDONLY),
            Kind::Tmpfs => fresh("tmpfs", data, attrs),
            Kind::Devpts => fresh("devpts", data, attrs),
            Kind::Mqueue => fresh("mqueue", data, attrs),
            Kind::Cgroup => Prepared::Cgroup { destination, attrs },
        });
    }
    let dev = fds[plan.dev]
        .try_clone()
        .map_err(|e| BurrowError::Failed(format!("dup dev fd: {e}")))?;
    let job = Job {
        user: userns
            .as_fd()
            .try_clone_to_owned()
            .map_err(|e| BurrowError::Failed(e.to_string()))?,
        namespaces,
        root_ids,
        rootfs,
        dev,
        mounts,
        masked: plan.masked_paths,
        readonly: plan.readonly_paths,
        writable_sysctls: plan.writable_sysctls,
        cgroups: CgroupLayout::of_host()?,
        staging,
    };
    build::build(job)
}
