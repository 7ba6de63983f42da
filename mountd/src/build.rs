//! Building a container's mount namespace in a forked worker.
//!
//! The helper prepares everything it can in its own process (ID-mapped clones, options); then
//! worker W joins the container's network, ipc, cgroup and pid namespaces and forks W2, which
//! is a member of the container's pid namespace (a proc mount shows the pid namespace of its
//! mounter). W2 makes a private copy of the host mount namespace, assembles the tree on the
//! rootfs, pivots into it, joins the container's user namespace and unshares once more: the
//! copy is owned by the container's user namespace, so every mount in it is locked. W2 sends
//! that namespace back as an fd and exits. Both workers are non-dumpable, die with the helper,
//! and hold only the fds of this job.

use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};

use burrow_bus::BurrowError;
use rustix::fs::{Mode, OFlags};
use rustix::mount::{
    fsconfig_create, fsconfig_set_flag, fsconfig_set_string, fsmount, fsopen, move_mount,
    FsMountFlags, FsOpenFlags, MountAttrFlags, MoveMountFlags,
};

use crate::idmap::{clone_tree, set_attributes};
use crate::target::{resolve, Create};
use crate::worker::reply;
use burrow_bus::pidfd::{self, Namespaces};

/// Where, in the container's /dev, the fully visible proc and sysfs live under their cover.
pub const VISIBLE_DIR: &str = "/dev/.burrow-visible";

/// One mount of the container, ready to be made.
pub enum Prepared {
    /// A detached mount the helper made already (an ID-mapped bind source).
    Attach {
        destination: String,
        mount: OwnedFd,
        is_file: bool,
        attrs: MountAttrFlags,
        /// An `rbind`: the flags go on every mount of the tree (a read-only rbind is read-only
        /// all the way down).
        recursive: bool,
    },
    /// A new filesystem instance, made inside the container's namespaces.
    Fresh {
        destination: String,
        fstype: &'static str,
        data: Vec<(String, Option<String>)>,
        attrs: MountAttrFlags,
    },
    /// The container's cgroup hierarchies.
    Cgroup {
        destination: String,
        attrs: MountAttrFlags,
    },
}

/// The host's cgroup layout, which a container's view mirrors.
#[derive(Debug, Clone)]
pub enum CgroupLayout {
    /// cgroup2 only, at /sys/fs/cgroup.
    Unified,
    /// v1 hierarchies (directory name, mount options) on a tmpfs, maybe with cgroup2 at
    /// `unified`, and the usual links (`cpu -> cpu,cpuacct`).
    Legacy {
        hierarchies: Vec<(String, Vec<String>)>,
        unified: Option<String>,
        links: Vec<(String, String)>,
    },
}

impl CgroupLayout {
    /// Reads the layout under /sys/fs/cgroup from the helper's mountinfo.
    pub fn of_host() -> Result<Self, BurrowError> {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")
            .map_err(|e| BurrowError::Failed(format!("mountinfo: {e}")))?;
        let (mut hierarchies, mut unified) = (vec![], None);
        for line in mountinfo.lines() {
            let Some((fields, tail)) = line.split_once(" - ") else {
                continue;
            };
            let mount_point = fields.split(' ').nth(4).unwrap_or("");
            let mut tail = tail.split(' ');
            let (fstype, super_options) = (tail.next().unwrap_or(""), tail.nth(1).unwrap_or(""));
            if mount_point == "/sys/fs/cgroup" && fstype == "cgroup2" {
                return Ok(CgroupLayout::Unified);
            }
            let Some(name) = mount_point.strip_prefix("/sys/fs/cgroup/") else {
                continue;
            };
            match fstype {
                "cgroup" => {
                    let options = super_options
                        .split(',')
                        .filter(|o| *o != "rw" && *o != "ro")
                        .map(String::from)
                        .collect();
                    hierarchies.push((name.to_string(), options));
                }
                "cgroup2" => unified = Some(name.to_string()),
                _ => {}
            }
        }
        let links = std::fs::read_dir("/sys/fs/cgroup")
            .map(|dir| {
                dir.flatten()
                    .filter_map(|e| {
                        let target = std::fs::read_link(e.path()).ok()?;
                        Some((
                            e.file_name().to_string_lossy().into_owned(),
                            target.to_string_lossy().into_owned(),
                        ))
                    })
                    .collect()
            })
            .unwrap_or_default();
        Ok(CgroupLayout::Legacy {
            hierarchies,
            unified,
            links,
        })
    }
}

pub struct Job {
    pub user: OwnedFd,
    pub namespaces: Namespaces,
    /// Host uid and gid of the container's root.
    pub root_ids: (u32, u32),
    pub rootfs: OwnedFd,
    pub dev: OwnedFd,
    pub mounts: Vec<Prepared>,
    pub masked: Vec<String>,
    pub readonly: Vec<String>,
    pub writable_sysctls: Vec<String>,
    pub cgroups: CgroupLayout,
    /// An empty directory of the helper's where W2 attaches the rootfs in its private copy.
    pub staging: CString,
}

impl Job {
    fn fds(&self) -> Vec<RawFd> {
        let ns = &self.namespaces;
        let mut fds: Vec<RawFd> = [
            &self.user,
            &ns.pid,
            &ns.net,
            &ns.ipc,
            &ns.cgroup,
            &self.rootfs,
            &self.dev,
        ]
        .iter()
        .map(|fd| fd.as_raw_fd())
        .collect();
        fds.extend(self.mounts.iter().filter_map(|m| match m {
            Prepared::Attach { mount, .. } => Some(mount.as_raw_fd()),
            _ => None,
        }));
        fds
    }
}

/// Runs the job in workers; returns the container's mount namespace.
pub fn build(job: Job) -> Result<OwnedFd, BurrowError> {
    // SAFETY: `outer_worker` is written for a freshly forked child.
    crate::worker::run(&job.fds(), |sock| unsafe { outer_worker(&job, sock) })
}

/// # Safety
/// Only in the freshly forked worker of [`build`].
unsafe fn outer_worker(job: &Job, sock: RawFd) {
    let ns = &job.namespaces;
    let joined = [
        (&ns.net, "network"),
        (&ns.ipc, "ipc"),
        (&ns.cgroup, "cgroup"),
        (&ns.pid, "pid"),
    ]
    .into_iter()
    .try_for_each(|(fd, what)| {
        nix::sched::setns(fd.as_fd(), nix::sched::CloneFlags::empty())
            .map_err(|e| format!("joining the {what} namespace: {e}"))
    });
    if let Err(e) = joined {
        return reply(sock, Err(e));
    }
    // SAFETY: still a single-threaded forked child.
    match unsafe { nix::unistd::fork() } {
        Ok(nix::unistd::ForkResult::Child) => {
            // SAFETY: as above.
            unsafe {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                libc::prctl(libc::PR_SET_DUMPABLE, 0);
            }
            reply(sock, assemble(job));
            // SAFETY: leaving the forked child.
            unsafe { libc::_exit(0) }
        }
        Ok(nix::unistd::ForkResult::Parent { child }) => {
            let _ = nix::sys::wait::waitpid(child, None);
        }
        Err(e) => reply(sock, Err(format!("fork into the pid namespace: {e}"))),
    }
}

pub(crate) fn fresh(
    fstype: &str,
    data: &[(String, Option<String>)],
    attrs: MountAttrFlags,
) -> Result<OwnedFd, String> {
    let fs =
        fsopen(fstype, FsOpenFlags::FSOPEN_CLOEXEC).map_err(|e| format!("fsopen {fstype}: {e}"))?;
    for (key, value) in data {
        match value {
            Some(v) => fsconfig_set_string(fs.as_fd(), key.as_str(), v.as_str()),
            None => fsconfig_set_flag(fs.as_fd(), key.as_str()),
        }
        .map_err(|e| {
            format!(
                "{fstype} option {key}{}: {e}",
                value
                    .as_deref()
                    .map(|v| format!("={v}"))
                    .unwrap_or_default()
            )
        })?;
    }
    fsconfig_create(fs.as_fd()).map_err(|e| format!("creating {fstype}: {e}"))?;
    fsmount(fs.as_fd(), FsMountFlags::FSMOUNT_CLOEXEC, attrs)
        .map_err(|e| format!("fsmount {fstype}: {e}"))
}

/// Binds the mount at `target` over itself (with the mounts below it, if `recursive`), its
/// flags `set` and `clear`ed: read-only paths, and sysctls writable again below them.
fn rebind(
    target: BorrowedFd<'_>,
    path: &str,
    set: MountAttrFlags,
    clear: MountAttrFlags,
    recursive: bool,
) -> Result<(), String> {
    let clone = clone_tree(target, recursive).map_err(|e| format!("cloning {path}: {e}"))?;
    set_attributes(clone.as_fd(), set, clear, None, recursive)
        .map_err(|e| format!("setting the flags of {path}: {e}"))?;
    attach(clone.as_fd(), target, path)
}

fn attach(mount: BorrowedFd<'_>, target: BorrowedFd<'_>, what: &str) -> Result<(), String> {
    move_mount(
        mount,
        "",
        target,
        "",
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH | MoveMountFlags::MOVE_MOUNT_T_EMPTY_PATH,
    )
    .map_err(|e| format!("mounting {what}: {e}"))
}

fn target(root: BorrowedFd<'_>, path: &str, create: Create) -> Result<OwnedFd, String> {
    resolve(root, path, create)?.ok_or_else(|| format!("{path} does not exist"))
}

const BASIC: MountAttrFlags = MountAttrFlags::MOUNT_ATTR_NOSUID
    .union(MountAttrFlags::MOUNT_ATTR_NODEV)
    .union(MountAttrFlags::MOUNT_ATTR_NOEXEC);

/// W2's work, in a private copy of the host's mount namespace.
fn assemble(job: &Job) -> Result<OwnedFd, String> {
    use nix::sched::{unshare, CloneFlags};
    crate::worker::private_mount_namespace()?;
    // Mount points are created as the container's root, so they belong to it.
    let (uid, gid) = job.root_ids;
    nix::unistd::setfsgid(nix::unistd::Gid::from_raw(gid));
    nix::unistd::setfsuid(nix::unistd::Uid::from_raw(uid));

    move_mount(
        job.rootfs.as_fd(),
        "",
        rustix::fs::CWD,
        job.staging.as_c_str(),
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
    )
    .map_err(|e| format!("attaching the rootfs: {e}"))?;
    let root = rustix::fs::open(
        job.staging.as_c_str(),
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| format!("opening the rootfs: {e}"))?;
    let root = root.as_fd();
    attach(
        job.dev.as_fd(),
        target(root, "/dev", Create::Directory)?.as_fd(),
        "/dev",
    )?;

    for mount in &job.mounts {
        match mount {
            Prepared::Attach {
                destination,
                mount,
                is_file,
                attrs,
                recursive,
            } => {
                set_attributes(
                    mount.as_fd(),
                    *attrs,
                    MountAttrFlags::empty(),
                    None,
                    *recursive,
                )
                .map_err(|e| format!("setting flags of {destination}: {e}"))?;
                let create = if *is_file {
                    Create::File
                } else {
                    Create::Directory
                };
                attach(
                    mount.as_fd(),
                    target(root, destination, create)?.as_fd(),
                    destination,
                )?;
            }
            Prepared::Fresh {
                destination,
                fstype,
                data,
                attrs,
            } => {
                let fs = fresh(fstype, data, *attrs)?;
                attach(
                    fs.as_fd(),
                    target(root, destination, Create::Directory)?.as_fd(),
                    destination,
                )?;
            }
            Prepared::Cgroup { destination, attrs } => {
                mount_cgroups(root, destination, *attrs, &job.cgroups, job.root_ids)?
            }
        }
    }

    for path in &job.masked {
        let Some(t) = resolve(root, path, Create::Nothing)? else {
            continue;
        };
        let is_dir = rustix::fs::fstat(t.as_fd())
            .is_ok_and(|st| rustix::fs::FileType::from_raw_mode(st.st_mode).is_dir());
        let cover = if is_dir {
            fresh(
                "tmpfs",
                &[
                    ("size".into(), Some("4k".into())),
                    ("mode".into(), Some("0555".into())),
                ],
                BASIC | MountAttrFlags::MOUNT_ATTR_RDONLY,
            )?
        } else {
            let null = target(root, "/dev/null", Create::Nothing)?;
            clone_tree(null.as_fd(), false).map_err(|e| format!("cloning /dev/null: {e}"))?
        };
        attach(cover.as_fd(), t.as_fd(), path)?;
    }
    for path in &job.readonly {
        if let Some(t) = resolve(root, path, Create::Nothing)? {
            let read_only = BASIC | MountAttrFlags::MOUNT_ATTR_RDONLY;
            rebind(t.as_fd(), path, read_only, MountAttrFlags::empty(), true)?;
        }
    }
    for path in &job.writable_sysctls {
        let Some(t) = resolve(root, path, Create::Nothing)? else {
            continue;
        };
        // A rootfs could put anything at /proc/sys/...: reopen only what really is procfs.
        let is_proc =
            rustix::fs::fstatfs(t.as_fd()).is_ok_and(|st| st.f_type == libc::PROC_SUPER_MAGIC);
        if !is_proc {
            return Err(format!("{path} is not in a proc filesystem"));
        }
        rebind(
            t.as_fd(),
            path,
            BASIC,
            MountAttrFlags::MOUNT_ATTR_RDONLY,
            false,
        )?;
    }

    // A fully visible proc and sysfs, which the kernel requires before it lets the container
    // mount new ones (nested containers), under a read-only cover that hides them.
    let visible = target(root, VISIBLE_DIR, Create::Directory)?;
    for (dir, fstype) in [("proc", "proc"), ("sys", "sysfs")] {
        let fs = fresh(fstype, &[], BASIC)?;
        attach(
            fs.as_fd(),
            target(root, &format!("{VISIBLE_DIR}/{dir}"), Create::Directory)?.as_fd(),
            fstype,
        )?;
    }
    let cover = fresh(
        "tmpfs",
        &[
            ("size".into(), Some("4k".into())),
            ("mode".into(), Some("0000".into())),
        ],
        BASIC | MountAttrFlags::MOUNT_ATTR_RDONLY,
    )?;
    attach(cover.as_fd(), visible.as_fd(), VISIBLE_DIR)?;

    rustix::process::fchdir(root).map_err(|e| format!("chdir rootfs: {e}"))?;
    rustix::process::pivot_root(".", ".").map_err(|e| format!("pivot_root: {e}"))?;
    nix::mount::umount2(".", nix::mount::MntFlags::MNT_DETACH)
        .map_err(|e| format!("detaching the old root: {e}"))?;
    nix::unistd::chdir("/").map_err(|e| format!("chdir /: {e}"))?;
    nix::sched::setns(job.user.as_fd(), CloneFlags::CLONE_NEWUSER)
        .map_err(|e| format!("joining the user namespace: {e}"))?;
    // The copy made now belongs to the container's user namespace: every mount is locked.
    unshare(CloneFlags::CLONE_NEWNS).map_err(|e| format!("unshare the locked copy: {e}"))?;
    pidfd::own_mount_namespace()
}

fn mount_cgroups(
    root: BorrowedFd<'_>,
    destination: &str,
    attrs: MountAttrFlags,
    layout: &CgroupLayout,
    owner: (u32, u32),
) -> Result<(), String> {
    let attrs = attrs | BASIC;
    match layout {
        CgroupLayout::Unified => {
            let fs = fresh("cgroup2", &[], attrs)?;
            attach(
                fs.as_fd(),
                target(root, destination, Create::Directory)?.as_fd(),
                destination,
            )
        }
        CgroupLayout::Legacy {
            hierarchies,
            unified,
            links,
        } => {
            let data = [
                ("mode".to_string(), Some("0755".to_string())),
                ("uid".to_string(), Some(owner.0.to_string())),
                ("gid".to_string(), Some(owner.1.to_string())),
            ];
            let tmpfs = fresh("tmpfs", &data, BASIC)?;
            attach(
                tmpfs.as_fd(),
                target(root, destination, Create::Directory)?.as_fd(),
                destination,
            )?;
            for (name, options) in hierarchies {
                let fs = rustix::mount::fsopen("cgroup", FsOpenFlags::FSOPEN_CLOEXEC)
                    .map_err(|e| format!("fsopen cgroup: {e}"))?;
                for option in options {
                    match option.split_once('=') {
                        Some((k, v)) => fsconfig_set_string(fs.as_fd(), k, v),
                        None => fsconfig_set_flag(fs.as_fd(), option.as_str()),
                    }
                    .map_err(|e| format!("cgroup option {option}: {e}"))?;
                }
                fsconfig_create(fs.as_fd()).map_err(|e| format!("cgroup {name}: {e}"))?;
                let mnt = fsmount(fs.as_fd(), FsMountFlags::FSMOUNT_CLOEXEC, attrs)
                    .map_err(|e| format!("fsmount cgroup {name}: {e}"))?;
                let path = format!("{destination}/{name}");
                attach(
                    mnt.as_fd(),
                    target(root, &path, Create::Directory)?.as_fd(),
                    &path,
                )?;
            }
            if let Some(name) = unified {
                let fs = fresh("cgroup2", &[], attrs)?;
                let path = format!("{destination}/{name}");
                attach(
                    fs.as_fd(),
                    target(root, &path, Create::Directory)?.as_fd(),
                    &path,
                )?;
            }
            let dir = target(root, destination, Create::Nothing)?;
            for (name, link_target) in links {
                rustix::fs::symlinkat(link_target.as_str(), dir.as_fd(), name.as_str())
                    .map_err(|e| format!("cgroup link {name}: {e}"))?;
            }
            set_attributes(
                tmpfs.as_fd(),
                MountAttrFlags::MOUNT_ATTR_RDONLY,
                MountAttrFlags::empty(),
                None,
                false,
            )
            .map_err(|e| format!("making {destination} read-only: {e}"))
        }
    }
}
