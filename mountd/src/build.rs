//! BuildRoot in the helper: everything that can be prepared in the helper's own process (the
//! ID-mapped clones of the rootfs and bind sources, the mount options, the host's cgroup
//! layout), then one job for a worker, which assembles the tree (see [`crate::assemble`]).

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;

use burrow_contract::mount::MountKind;
use burrow_contract::BurrowError;
use burrow_sys::pidfd::Namespaces;
use burrow_sys::userns::UserNs;
use rustix::mount::MountAttrFlags;

use crate::idmap::{clone_tree, idmapped_clone, mapping_for, set_attributes, Mapping, NO_DEVICES};
use crate::job::{BuildJob, CgroupLayout, Fds, FsType, Job, Prepared};
use crate::plan::{translate_ids, MountEntry, Options, Plan};

const TMPFS_MAGIC: i64 = 0x01021994;

/// What the caller sent with BuildRoot, checked already.
pub struct Request {
    pub caller_uid: u32,
    pub userns: UserNs,
    pub namespaces: Namespaces,
    pub plan: Plan,
    pub fds: Vec<OwnedFd>,
}

/// What every mount of one build is prepared with.
struct Context<'a> {
    fds: &'a [OwnedFd],
    mapping: Mapping<'a>,
    root_ids: (u32, u32),
    uid_map: String,
    gid_map: String,
}

/// Prepares the build and runs it in a worker; returns the container's mount namespace.
pub fn build(request: Request, staging: PathBuf) -> Result<OwnedFd, BurrowError> {
    let Request {
        caller_uid,
        userns,
        namespaces,
        plan,
        fds,
    } = request;
    let worker = userns.enter()?;
    let root_ids = worker.root_ids()?;
    let (uid_map, gid_map) = worker.maps()?;
    check_dev(fds[plan.dev].as_fd(), root_ids)?;
    let mapping = mapping_for(caller_uid, &userns, &worker)?;
    // Killed now, reaped when the build is done, by which time it has long exited: the build
    // does not wait for its exit.
    let _worker = worker.dismiss();
    let cx = Context {
        fds: &fds,
        mapping: Mapping {
            userns: mapping.as_fd(),
            owner: root_ids,
            staging: &staging,
        },
        root_ids,
        uid_map,
        gid_map,
    };
    let mut carried = Fds::default();
    let rootfs = rootfs_mount(&cx, &plan)?;
    let mounts = plan
        .mounts
        .into_iter()
        .map(|entry| prepare(&cx, entry, &mut carried))
        .collect::<Result<Vec<_>, _>>()?;
    let dup = |fd: BorrowedFd<'_>, what: &str| {
        fd.try_clone_to_owned()
            .map_err(|e| BurrowError::Failed(format!("dup {what} fd: {e}")))
    };
    let job = BuildJob {
        user: carried.carry(dup(userns.as_fd(), "userns")?),
        pid: carried.carry(namespaces.pid),
        net: carried.carry(namespaces.net),
        ipc: carried.carry(namespaces.ipc),
        cgroup: carried.carry(namespaces.cgroup),
        root_ids,
        rootfs: carried.carry(rootfs),
        rootfs_read_only: plan.rootfs_read_only,
        dev: carried.carry(dup(fds[plan.dev].as_fd(), "dev")?),
        dev_at: plan.dev_at,
        mounts,
        masked: plan.masked_paths,
        readonly: plan.readonly_paths,
        writable_sysctls: plan.writable_sysctls,
        lxcfs: if plan.lxcfs {
            crate::lxcfs::sources(&mut carried)?
        } else {
            vec![]
        },
        cgroups: host_cgroup_layout()?,
        staging: staging.clone(),
    };
    drop(fds);
    Ok(crate::spawn::run(&Job::Build(job), carried)?)
}

/// The dev fd must be devd's /dev for this namespace: a tmpfs owned by its root.
fn check_dev(dev: BorrowedFd<'_>, root_ids: (u32, u32)) -> Result<(), BurrowError> {
    let invalid = |e: rustix::io::Errno| BurrowError::InvalidArgument(format!("dev fd: {e}"));
    let dev_fs = rustix::fs::fstatfs(dev).map_err(invalid)?;
    let dev_owner = rustix::fs::fstat(dev).map_err(invalid)?.st_uid;
    if dev_fs.f_type as i64 != TMPFS_MAGIC || dev_owner != root_ids.0 {
        return Err(BurrowError::InvalidArgument(
            "the dev fd must be the /dev mount org.burrow.Dev1 made for this user namespace".into(),
        ));
    }
    Ok(())
}

/// The ID-mapped rootfs; a read-only one is made read-only last, in the worker, once its
/// mount points exist (as runc does: a read-only image still gets /etc/resolv.conf bound).
fn rootfs_mount(cx: &Context<'_>, plan: &Plan) -> Result<OwnedFd, BurrowError> {
    idmapped_clone(cx.fds[plan.rootfs].as_fd(), &cx.mapping, false)
}

fn flags_of(options: &Options) -> MountAttrFlags {
    let mut attrs = MountAttrFlags::empty();
    for (on, flag) in [
        (options.read_only, MountAttrFlags::MOUNT_ATTR_RDONLY),
        (options.nosuid, MountAttrFlags::MOUNT_ATTR_NOSUID),
        (options.nodev, MountAttrFlags::MOUNT_ATTR_NODEV),
        (options.noexec, MountAttrFlags::MOUNT_ATTR_NOEXEC),
        (options.nodiratime, MountAttrFlags::MOUNT_ATTR_NODIRATIME),
    ] {
        if on {
            attrs |= flag;
        }
    }
    attrs | options.atime.unwrap_or(MountAttrFlags::empty())
}

/// One mount of the plan, ready for the worker; a bind's clone goes into `carried`.
fn prepare(
    cx: &Context<'_>,
    entry: MountEntry,
    carried: &mut Fds,
) -> Result<Prepared, BurrowError> {
    let MountEntry {
        destination,
        kind,
        options,
    } = entry;
    let attrs = flags_of(&options);
    let mut data = translate_ids(&options.data, &cx.uid_map, &cx.gid_map)?;
    if let Some(name) = &options.source {
        data.insert(0, ("source".to_string(), Some(name.clone())));
    }
    let fstype = match kind {
        MountKind::Bind { source } => {
            let recursive = options.recursive;
            let source = cx.fds[source as usize].as_fd();
            let is_file = rustix::fs::fstat(source)
                .is_ok_and(|st| !rustix::fs::FileType::from_raw_mode(st.st_mode).is_dir());
            let mount = if options.idmapped {
                idmapped_clone(source, &cx.mapping, recursive)?
            } else {
                unmapped_clone(source, &destination, cx.root_ids, recursive)?
            };
            return Ok(Prepared::Attach {
                destination,
                mount: carried.carry(mount),
                is_file,
                attrs,
                recursive,
            });
        }
        MountKind::Cgroup => return Ok(Prepared::Cgroup { destination, attrs }),
        MountKind::Proc => FsType::Proc,
        MountKind::Sysfs => FsType::Sysfs,
        MountKind::Tmpfs => FsType::Tmpfs,
        MountKind::Devpts => FsType::Devpts,
        MountKind::Mqueue => FsType::Mqueue,
    };
    if fstype == FsType::Tmpfs {
        // A tmpfs belongs to the container's root unless the plan says otherwise.
        for (key, id) in [("uid", cx.root_ids.0), ("gid", cx.root_ids.1)] {
            if !data.iter().any(|(k, _)| k == key) {
                data.push((key.to_string(), Some(id.to_string())));
            }
        }
    }
    let attrs = match fstype {
        FsType::Sysfs => attrs | MountAttrFlags::MOUNT_ATTR_RDONLY,
        _ => attrs,
    };
    Ok(Prepared::Fresh {
        destination,
        fstype,
        data,
        attrs,
    })
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

/// The cgroup layout under /sys/fs/cgroup, from the helper's mountinfo.
fn host_cgroup_layout() -> Result<CgroupLayout, BurrowError> {
    let mounts =
        burrow_sys::mountinfo::own().map_err(|e| BurrowError::Failed(format!("mountinfo: {e}")))?;
    let (mut hierarchies, mut unified) = (vec![], None);
    for mount in mounts {
        if mount.mount_point == "/sys/fs/cgroup" && mount.fs_type == "cgroup2" {
            return Ok(CgroupLayout::Unified);
        }
        let Some(name) = mount.mount_point.strip_prefix("/sys/fs/cgroup/") else {
            continue;
        };
        match mount.fs_type.as_str() {
            "cgroup" => {
                let options = mount
                    .super_options
                    .iter()
                    .filter(|o| *o != "rw" && *o != "ro")
                    .cloned()
                    .collect();
                hierarchies.push((name.to_string(), options));
            }
            "cgroup2" => unified = Some(name.to_string()),
            _ => {}
        }
    }
    Ok(CgroupLayout::Legacy {
        hierarchies,
        unified,
        links: cgroup_links(),
    })
}

/// The symlinks in /sys/fs/cgroup (`cpu -> cpu,cpuacct`).
fn cgroup_links() -> Vec<(String, String)> {
    let Ok(dir) = std::fs::read_dir("/sys/fs/cgroup") else {
        return vec![];
    };
    dir.flatten()
        .filter_map(|e| {
            let target = std::fs::read_link(e.path()).ok()?;
            Some((
                e.file_name().to_string_lossy().into_owned(),
                target.to_string_lossy().into_owned(),
            ))
        })
        .collect()
}
