//! An overlay re-made on ID-mapped layers, in the worker. overlayfs takes private clones of
//! its layers, which only works for mounts attached in the mounter's namespace: the layers
//! are attached in the worker's private copy of the mount namespace, then the overlay is
//! mounted on them as the container's root.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::fs::{Mode, OFlags};
use rustix::mount::{
    fsconfig_create, fsconfig_set_fd, fsmount, fsopen, move_mount, FsMountFlags, FsOpenFlags,
    MountAttrFlags, MoveMountFlags,
};

use crate::assemble::fresh;
use crate::idmap::NO_DEVICES;
use crate::job::{Fds, JobError, OrFail, OverlayJob};
use crate::worker::private_mount_namespace;

/// The overlay, as a detached mount.
pub fn make(job: &OverlayJob, fds: &Fds) -> Result<OwnedFd, JobError> {
    private_mount_namespace()?;
    attach_layers(job, fds)?;
    let fs = fsopen("overlay", FsOpenFlags::FSOPEN_CLOEXEC).or_failed("fsopen overlay")?;
    for layer in &job.lower {
        fsconfig_set_fd(fs.as_fd(), "lowerdir+", fds.get(*layer)?)
            .or_failed("overlay lowerdir+")?;
    }
    if let Some(upper) = &job.upper {
        let parent = fds.get(upper.parent)?;
        for (key, relative) in [("upperdir", &upper.upper), ("workdir", &upper.work)] {
            let dir = open_dir(parent, relative).or_failed(format!("overlay {key} {relative}"))?;
            fsconfig_set_fd(fs.as_fd(), key, dir.as_fd()).or_failed(format!("overlay {key}"))?;
        }
    }
    mount_as(fs.as_fd(), job.owner)
}

/// Attaches a scratch tmpfs at the staging directory and every layer below it.
fn attach_layers(job: &OverlayJob, fds: &Fds) -> Result<(), JobError> {
    let mode = [("mode".into(), Some("0700".into()))];
    let scratch = fresh("tmpfs", &mode, MountAttrFlags::empty())?;
    move_mount(
        scratch.as_fd(),
        "",
        rustix::fs::CWD,
        &job.staging,
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
    )
    .or_failed(format!(
        "attaching the scratch tmpfs at {}",
        job.staging.display()
    ))?;
    let layers = job
        .lower
        .iter()
        .chain(job.upper.as_ref().map(|u| &u.parent));
    for (i, layer) in layers.enumerate() {
        let name = i.to_string();
        rustix::fs::mkdirat(scratch.as_fd(), name.as_str(), Mode::from_raw_mode(0o700))
            .or_failed("mkdir in the scratch tmpfs")?;
        move_mount(
            fds.get(*layer)?,
            "",
            scratch.as_fd(),
            name.as_str(),
            MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
        )
        .or_failed(format!("attaching layer {i}"))?;
    }
    Ok(())
}

fn open_dir(parent: BorrowedFd<'_>, relative: &str) -> rustix::io::Result<OwnedFd> {
    rustix::fs::openat(
        parent,
        relative,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
}

/// overlayfs records its mounter's credentials and uses them for its own work (copy-up,
/// whiteouts): mount as the container's root (fsuid/fsgid), keeping the file capabilities a
/// setfsuid drops.
fn mount_as(fs: BorrowedFd<'_>, owner: (u32, u32)) -> Result<OwnedFd, JobError> {
    nix::unistd::setfsgid(nix::unistd::Gid::from_raw(owner.1));
    nix::unistd::setfsuid(nix::unistd::Uid::from_raw(owner.0));
    let mut sets = rustix::thread::capabilities(None).or_failed("capget")?;
    sets.effective = sets.permitted;
    rustix::thread::set_capabilities(None, sets).or_failed("capset")?;
    fsconfig_create(fs).or_failed("creating the overlay")?;
    fsmount(fs, FsMountFlags::FSMOUNT_CLOEXEC, NO_DEVICES).or_failed("fsmount overlay")
}
