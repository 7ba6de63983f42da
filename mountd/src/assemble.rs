//! BuildRoot in the worker: the container's mount tree, assembled and locked.
//!
//! Worker W joins the container's network, ipc, cgroup and pid namespaces and forks W2, which
//! is a member of the container's pid namespace (a proc mount shows the pid namespace of its
//! mounter). W2 makes a private copy of the host mount namespace, assembles the tree on the
//! rootfs, pivots into it, joins the container's user namespace and unshares once more: the
//! copy is owned by the container's user namespace, so every mount in it is locked. W2 answers
//! with that namespace as an fd and exits; W reaps it. W is a fresh exec and single-threaded,
//! so forking W2 is safe; W2 inherits only what W holds: the job socket and the job's fds.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::fs::{Mode, OFlags};
use rustix::mount::{
    fsconfig_create, fsconfig_set_flag, fsconfig_set_string, fsmount, fsopen, move_mount,
    FsMountFlags, FsOpenFlags, MountAttrFlags, MoveMountFlags,
};

use crate::idmap::{clone_tree, set_attributes};
use crate::job::{BuildJob, CgroupLayout, Fds, FsType, JobError, OrFail, Prepared};
use crate::target::{resolve, Create};
use crate::worker::{private_mount_namespace, reply, stage};
use burrow_sys::fork::{fork_worker, Parent};

/// Where, in the container's /dev, the fully visible proc and sysfs live under their cover.
pub const VISIBLE_DIR: &str = "/dev/.burrow-visible";

const BASIC: MountAttrFlags = MountAttrFlags::MOUNT_ATTR_NOSUID
    .union(MountAttrFlags::MOUNT_ATTR_NODEV)
    .union(MountAttrFlags::MOUNT_ATTR_NOEXEC);

/// W's part: joins the namespaces, forks W2 and waits for it. W2 answers the helper.
pub fn build(job: &BuildJob, fds: &Fds) {
    if let Err(e) = join_namespaces(job, fds) {
        return reply(Err(e));
    }
    // W2 keeps the job's fds and stdio: fd 0 is the job socket it answers on.
    let mut keep = fds.raw();
    keep.extend([0, 1, 2]);
    // SAFETY: the worker is a fresh exec that starts no thread: forking it is safe, and the
    // child may allocate and call anything. W is outside W2's pid namespace (it joined the
    // container's, which applies to its children only).
    let forked = unsafe {
        fork_worker(&keep, Parent::OutsidePidNamespace, || {
            stage("mw:pidns");
            reply(assemble(job, fds));
        })
    };
    match forked {
        Ok(child) => {
            match nix::sys::wait::waitpid(child, None) {
                Ok(nix::sys::wait::WaitStatus::Exited(_, 0)) => {}
                // W2 answers before it exits 0; it ended otherwise, maybe without an answer.
                // If it did answer, the helper has read that first and ignores this.
                status => reply(Err(JobError::Broken(format!(
                    "the worker in the container's pid namespace ended: {status:?}"
                )))),
            }
        }
        Err(e) => reply(Err(e).or_failed("fork into the pid namespace")),
    }
}

fn join_namespaces(job: &BuildJob, fds: &Fds) -> Result<(), JobError> {
    for (slot, what) in [
        (job.net, "network"),
        (job.ipc, "ipc"),
        (job.cgroup, "cgroup"),
        (job.pid, "pid"),
    ] {
        nix::sched::setns(fds.get(slot)?, nix::sched::CloneFlags::empty())
            .or_failed(format!("joining the {what} namespace"))?;
    }
    Ok(())
}

/// W2's work, in a private copy of the host's mount namespace; returns the locked copy.
fn assemble(job: &BuildJob, fds: &Fds) -> Result<OwnedFd, JobError> {
    private_mount_namespace()?;
    // Attached as the helper: the staging directory's parents may be open to root only.
    let root = attach_rootfs(job, fds)?;
    // Mount points are created as the container's root, so they belong to it. Everything from
    // here on is resolved below the rootfs's fd.
    let (uid, gid) = job.root_ids;
    nix::unistd::setfsgid(nix::unistd::Gid::from_raw(gid));
    nix::unistd::setfsuid(nix::unistd::Uid::from_raw(uid));
    let root = root.as_fd();
    plan_mounts(root, job, fds)?;
    crate::lxcfs::bind(root, &job.lxcfs, fds)?;
    mask(root, &job.masked)?;
    make_read_only(root, &job.readonly)?;
    reopen_sysctls(root, &job.writable_sysctls)?;
    visible_proc_and_sysfs(root)?;
    if job.rootfs_read_only {
        // The rootfs's own mount only: what is mounted on it keeps its options.
        set_attributes(
            root,
            MountAttrFlags::MOUNT_ATTR_RDONLY,
            MountAttrFlags::empty(),
            None,
            false,
        )
        .or_failed("making the rootfs read-only")?;
    }
    lock(root, fds.get(job.user)?)
}

/// The spec's mounts in its order, devd's /dev at its place among them.
fn plan_mounts(root: BorrowedFd<'_>, job: &BuildJob, fds: &Fds) -> Result<(), JobError> {
    let (before_dev, after_dev) = job.mounts.split_at(job.dev_at.min(job.mounts.len()));
    for mount in before_dev {
        mount_one(root, mount, job, fds)?;
    }
    attach(
        fds.get(job.dev)?,
        target(root, "/dev", Create::Directory)?.as_fd(),
        "/dev",
    )?;
    for mount in after_dev {
        mount_one(root, mount, job, fds)?;
    }
    Ok(())
}

/// Attaches the rootfs at the helper's staging directory (in W2's private copy) and opens it.
fn attach_rootfs(job: &BuildJob, fds: &Fds) -> Result<OwnedFd, JobError> {
    move_mount(
        fds.get(job.rootfs)?,
        "",
        rustix::fs::CWD,
        &job.staging,
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
    )
    .or_failed(format!("attaching the rootfs at {}", job.staging.display()))?;
    rustix::fs::open(
        &job.staging,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .or_failed("opening the rootfs")
}

fn mount_one(
    root: BorrowedFd<'_>,
    mount: &Prepared,
    job: &BuildJob,
    fds: &Fds,
) -> Result<(), JobError> {
    match mount {
        Prepared::Attach {
            destination,
            mount,
            is_file,
            attrs,
            recursive,
        } => {
            let mount = fds.get(*mount)?;
            set_attributes(mount, *attrs, atime_cleared(*attrs), None, *recursive)
                .or_refused(format!("setting flags of {destination}"))?;
            let create = if *is_file {
                Create::File
            } else {
                Create::Directory
            };
            attach(
                mount,
                target(root, destination, create)?.as_fd(),
                destination,
            )
        }
        Prepared::Fresh {
            destination,
            fstype,
            data,
            attrs,
        } => {
            let fs = fresh(fstype.name(), data, *attrs)?;
            let at = target(root, destination, Create::Directory)?;
            attach(fs.as_fd(), at.as_fd(), destination)?;
            if *fstype == FsType::Sysfs {
                cover_kernel_only_mount_points(root, destination)?;
            }
            Ok(())
        }
        Prepared::Cgroup { destination, attrs } => {
            mount_cgroups(root, destination, *attrs, &job.cgroups, job.root_ids)
        }
    }
}

/// What a bind's flags must clear for `attrs` to set its access-time mode: the whole field, as
/// mount_setattr(2) wants, when `attrs` names a mode other than relatime (which is 0, the
/// default: a bind keeps its source's mode unless the spec asks for another).
fn atime_cleared(attrs: MountAttrFlags) -> MountAttrFlags {
    if attrs.intersects(MountAttrFlags::MOUNT_ATTR__ATIME) {
        MountAttrFlags::MOUNT_ATTR__ATIME
    } else {
        MountAttrFlags::empty()
    }
}

/// A new, detached instance of `fstype` with the data options `data`. The options are the
/// caller's (or constants of mountd's that never fail): a refusal is the caller's.
pub fn fresh(
    fstype: &str,
    data: &[(String, Option<String>)],
    attrs: MountAttrFlags,
) -> Result<OwnedFd, JobError> {
    let fs = fsopen(fstype, FsOpenFlags::FSOPEN_CLOEXEC).or_failed(format!("fsopen {fstype}"))?;
    for (key, value) in data {
        let shown = match value {
            Some(v) => format!("{fstype} option {key}={v}"),
            None => format!("{fstype} option {key}"),
        };
        match value {
            Some(v) => fsconfig_set_string(fs.as_fd(), key.as_str(), v.as_str()),
            None => fsconfig_set_flag(fs.as_fd(), key.as_str()),
        }
        .or_refused(shown)?;
    }
    fsconfig_create(fs.as_fd()).or_refused(format!("creating {fstype}"))?;
    fsmount(fs.as_fd(), FsMountFlags::FSMOUNT_CLOEXEC, attrs).or_failed(format!("fsmount {fstype}"))
}

/// Binds the mount at `target` over itself (with the mounts below it, if `recursive`), its
/// flags `set` and `clear`ed: read-only paths, and sysctls writable again below them.
fn rebind(
    target: BorrowedFd<'_>,
    path: &str,
    set: MountAttrFlags,
    clear: MountAttrFlags,
    recursive: bool,
) -> Result<(), JobError> {
    let clone = clone_tree(target, recursive).or_refused(format!("cloning {path}"))?;
    set_attributes(clone.as_fd(), set, clear, None, recursive)
        .or_failed(format!("setting the flags of {path}"))?;
    attach(clone.as_fd(), target, path)
}

/// Mounts `mount` on `target`, a place in the caller's image.
pub fn attach(mount: BorrowedFd<'_>, target: BorrowedFd<'_>, what: &str) -> Result<(), JobError> {
    move_mount(
        mount,
        "",
        target,
        "",
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH | MoveMountFlags::MOVE_MOUNT_T_EMPTY_PATH,
    )
    .or_refused(format!("mounting {what}"))
}

fn target(root: BorrowedFd<'_>, path: &str, create: Create) -> Result<OwnedFd, JobError> {
    resolve(root, path, create)?.ok_or_else(|| JobError::Invalid(format!("{path} does not exist")))
}

/// Files get /dev/null bound over them, directories a read-only empty tmpfs.
fn mask(root: BorrowedFd<'_>, paths: &[String]) -> Result<(), JobError> {
    for path in paths {
        let Some(t) = resolve(root, path, Create::Nothing)? else {
            continue;
        };
        let is_dir = rustix::fs::fstat(t.as_fd())
            .is_ok_and(|st| rustix::fs::FileType::from_raw_mode(st.st_mode).is_dir());
        let cover = if is_dir {
            empty_tmpfs("0555")?
        } else {
            let null = target(root, "/dev/null", Create::Nothing)?;
            clone_tree(null.as_fd(), false).or_failed("cloning /dev/null")?
        };
        attach(cover.as_fd(), t.as_fd(), path)?;
    }
    Ok(())
}

/// Where, below a sysfs, the kernel's filesystems go that no user namespace may mount
/// (debugfs, tracefs, configfs).
const KERNEL_ONLY_MOUNT_POINTS: [&str; 3] = ["kernel/debug", "kernel/tracing", "kernel/config"];

/// Covers the mount points of kernel-only filesystems in the sysfs just mounted at `sysfs`
/// like masked directories: a stock systemd mounts them at boot unless something is mounted
/// there already, and fails (`degraded`) in a user namespace. The cover, locked, hides an empty
/// directory: the container's sysfs has nothing of the host's below these mount points. Made
/// with the sysfs, so that a mount the spec lists later at one of them goes on top.
fn cover_kernel_only_mount_points(root: BorrowedFd<'_>, sysfs: &str) -> Result<(), JobError> {
    let points = KERNEL_ONLY_MOUNT_POINTS.map(|point| format!("{sysfs}/{point}"));
    mask(root, &points)
}

fn empty_tmpfs(mode: &str) -> Result<OwnedFd, JobError> {
    let data = [
        ("size".into(), Some("4k".into())),
        ("mode".into(), Some(mode.into())),
    ];
    fresh("tmpfs", &data, BASIC | MountAttrFlags::MOUNT_ATTR_RDONLY)
}

fn make_read_only(root: BorrowedFd<'_>, paths: &[String]) -> Result<(), JobError> {
    for path in paths {
        if let Some(t) = resolve(root, path, Create::Nothing)? {
            let read_only = BASIC | MountAttrFlags::MOUNT_ATTR_RDONLY;
            rebind(t.as_fd(), path, read_only, MountAttrFlags::empty(), true)?;
        }
    }
    Ok(())
}

fn reopen_sysctls(root: BorrowedFd<'_>, paths: &[String]) -> Result<(), JobError> {
    for path in paths {
        let Some(t) = resolve(root, path, Create::Nothing)? else {
            continue;
        };
        // A rootfs could put anything at /proc/sys/...: reopen only what really is procfs.
        let is_proc =
            rustix::fs::fstatfs(t.as_fd()).is_ok_and(|st| st.f_type == libc::PROC_SUPER_MAGIC);
        if !is_proc {
            return Err(JobError::Invalid(format!(
                "{path} is not in a proc filesystem"
            )));
        }
        let writable = MountAttrFlags::MOUNT_ATTR_RDONLY;
        rebind(t.as_fd(), path, BASIC, writable, false)?;
    }
    Ok(())
}

/// A fully visible proc and sysfs, which the kernel requires before it lets the container
/// mount new ones (nested containers), under a read-only cover that hides them.
fn visible_proc_and_sysfs(root: BorrowedFd<'_>) -> Result<(), JobError> {
    let visible = target(root, VISIBLE_DIR, Create::Directory)?;
    for (dir, fstype) in [("proc", "proc"), ("sys", "sysfs")] {
        let fs = fresh(fstype, &[], BASIC)?;
        let at = target(root, &format!("{VISIBLE_DIR}/{dir}"), Create::Directory)?;
        attach(fs.as_fd(), at.as_fd(), fstype)?;
    }
    attach(empty_tmpfs("0000")?.as_fd(), visible.as_fd(), VISIBLE_DIR)
}

/// Pivots into the tree, joins the container's user namespace and copies the mount namespace
/// once more: the copy belongs to the container's user namespace, so every mount is locked.
fn lock(root: BorrowedFd<'_>, user: BorrowedFd<'_>) -> Result<OwnedFd, JobError> {
    use nix::sched::CloneFlags;
    rustix::process::fchdir(root).or_failed("chdir rootfs")?;
    rustix::process::pivot_root(".", ".").or_failed("pivot_root")?;
    nix::mount::umount2(".", nix::mount::MntFlags::MNT_DETACH)
        .or_failed("detaching the old root")?;
    nix::unistd::chdir("/").or_failed("chdir /")?;
    nix::sched::setns(user, CloneFlags::CLONE_NEWUSER).or_failed("joining the user namespace")?;
    nix::sched::unshare(CloneFlags::CLONE_NEWNS).or_failed("unshare the locked copy")?;
    burrow_sys::pidfd::own_mount_namespace()
        .map_err(|e| e.errno())
        .or_failed("the locked copy's mount namespace (pidfd of itself)")
}

fn mount_cgroups(
    root: BorrowedFd<'_>,
    destination: &str,
    attrs: MountAttrFlags,
    layout: &CgroupLayout,
    owner: (u32, u32),
) -> Result<(), JobError> {
    let attrs = attrs | BASIC;
    let at = |path: &str| target(root, path, Create::Directory);
    let CgroupLayout::Legacy {
        hierarchies,
        unified,
        links,
    } = layout
    else {
        let fs = fresh("cgroup2", &[], attrs)?;
        return attach(fs.as_fd(), at(destination)?.as_fd(), destination);
    };
    let data = [
        ("mode".to_string(), Some("0755".to_string())),
        ("uid".to_string(), Some(owner.0.to_string())),
        ("gid".to_string(), Some(owner.1.to_string())),
    ];
    let tmpfs = fresh("tmpfs", &data, BASIC)?;
    attach(tmpfs.as_fd(), at(destination)?.as_fd(), destination)?;
    for (name, options) in hierarchies {
        let path = format!("{destination}/{name}");
        attach(
            v1_hierarchy(name, options, attrs)?.as_fd(),
            at(&path)?.as_fd(),
            &path,
        )?;
    }
    if let Some(name) = unified {
        let path = format!("{destination}/{name}");
        attach(
            fresh("cgroup2", &[], attrs)?.as_fd(),
            at(&path)?.as_fd(),
            &path,
        )?;
    }
    let dir = target(root, destination, Create::Nothing)?;
    for (name, link_target) in links {
        rustix::fs::symlinkat(link_target.as_str(), dir.as_fd(), name.as_str())
            .or_refused(format!("cgroup link {destination}/{name}"))?;
    }
    let read_only = MountAttrFlags::MOUNT_ATTR_RDONLY;
    set_attributes(
        tmpfs.as_fd(),
        read_only,
        MountAttrFlags::empty(),
        None,
        false,
    )
    .or_failed(format!("making {destination} read-only"))
}

/// One v1 hierarchy as the host mounts it (its options are the host's, not the caller's).
fn v1_hierarchy(
    name: &str,
    options: &[String],
    attrs: MountAttrFlags,
) -> Result<OwnedFd, JobError> {
    let fs = fsopen("cgroup", FsOpenFlags::FSOPEN_CLOEXEC).or_failed("fsopen cgroup")?;
    for option in options {
        match option.split_once('=') {
            Some((k, v)) => fsconfig_set_string(fs.as_fd(), k, v),
            None => fsconfig_set_flag(fs.as_fd(), option.as_str()),
        }
        .or_failed(format!("cgroup {name} option {option}"))?;
    }
    fsconfig_create(fs.as_fd()).or_failed(format!("cgroup {name}"))?;
    fsmount(fs.as_fd(), FsMountFlags::FSMOUNT_CLOEXEC, attrs)
        .or_failed(format!("fsmount cgroup {name}"))
}
