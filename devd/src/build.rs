//! Making the /dev tmpfs: created by this helper in the initial user namespace (so its device
//! nodes work once a container attaches it), never attached anywhere here, handed out as fd.

use std::os::fd::{AsFd, OwnedFd};

use rustix::fs::{
    chmodat, chownat, mkdirat, mknodat, symlinkat, AtFlags, FileType, Gid, Mode, Uid,
};
use rustix::mount::{
    fsconfig_create, fsconfig_set_string, fsmount, fsopen, FsMountFlags, FsOpenFlags,
    MountAttrFlags,
};

use crate::devices::{Node, DIRECTORIES, LINKS};

#[derive(Debug, thiserror::Error)]
#[error("building /dev: {step}: {source}")]
pub struct BuildError {
    step: String,
    source: rustix::io::Errno,
}

fn step(step: impl Into<String>) -> impl FnOnce(rustix::io::Errno) -> BuildError {
    let step = step.into();
    move |source| BuildError { step, source }
}

/// A detached tmpfs (nosuid, noexec) holding `nodes`, the standard directories and links, all
/// owned by `owner` (host uid, gid: the container's root).
pub fn build_dev(nodes: &[Node], owner: (u32, u32)) -> Result<OwnedFd, BuildError> {
    let fs = fsopen("tmpfs", FsOpenFlags::FSOPEN_CLOEXEC).map_err(step("fsopen tmpfs"))?;
    for (key, value) in [("mode", "0755"), ("size", "65536k"), ("nr_inodes", "4096")] {
        fsconfig_set_string(fs.as_fd(), key, value)
            .map_err(step(format!("tmpfs option {key}={value}")))?;
    }
    fsconfig_create(fs.as_fd()).map_err(step("create tmpfs"))?;
    let mnt = fsmount(
        fs.as_fd(),
        FsMountFlags::FSMOUNT_CLOEXEC,
        MountAttrFlags::MOUNT_ATTR_NOSUID | MountAttrFlags::MOUNT_ATTR_NOEXEC,
    )
    .map_err(step("fsmount"))?;
    let root = mnt.as_fd();
    let (uid, gid) = (Some(Uid::from_raw(owner.0)), Some(Gid::from_raw(owner.1)));
    let chown = |name: &str| {
        chownat(root, name, uid, gid, AtFlags::SYMLINK_NOFOLLOW)
            .map_err(step(format!("chown {name}")))
    };
    // Everything is created first and given away last: once a directory belongs to the
    // container's root, this helper (without CAP_DAC_OVERRIDE) can no longer write into it.
    let mut created: Vec<String> = vec![];
    // Modes are set explicitly afterwards: creation modes are filtered by the umask.
    let chmod = |name: &str, mode: u32| {
        chmodat(root, name, Mode::from_raw_mode(mode), AtFlags::empty())
            .map_err(step(format!("chmod {name}")))
    };

    for (dir, mode) in DIRECTORIES {
        mkdirat(root, dir, Mode::from_raw_mode(mode)).map_err(step(format!("mkdir {dir}")))?;
        chmod(dir, mode)?;
        created.push(dir.to_string());
    }
    for node in nodes {
        if let Some((parent, _)) = node.name.rsplit_once('/') {
            let mut path = String::new();
            for part in parent.split('/') {
                path = if path.is_empty() {
                    part.to_string()
                } else {
                    format!("{path}/{part}")
                };
                match mkdirat(root, path.as_str(), Mode::from_raw_mode(0o755)) {
                    Ok(()) => {
                        chmod(&path, 0o755)?;
                        created.push(path.clone());
                    }
                    Err(rustix::io::Errno::EXIST) => {}
                    Err(e) => return Err(step(format!("mkdir {path}"))(e)),
                }
            }
        }
        let dev = rustix::fs::makedev(node.major, node.minor);
        mknodat(
            root,
            node.name.as_str(),
            FileType::CharacterDevice,
            Mode::from_raw_mode(node.mode),
            dev,
        )
        .map_err(step(format!(
            "mknod {} {}:{}",
            node.name, node.major, node.minor
        )))?;
        chmod(&node.name, node.mode)?;
        created.push(node.name.clone());
    }
    for (link, target) in LINKS {
        symlinkat(target, root, link).map_err(step(format!("symlink {link}")))?;
        created.push(link.to_string());
    }
    // Deepest first, so each directory is still ours while its entries are given away.
    created.sort_by_key(|path| std::cmp::Reverse(path.matches('/').count()));
    for path in &created {
        chown(path)?;
    }
    // The root directory of the mount itself.
    chownat(root, "", uid, gid, AtFlags::EMPTY_PATH).map_err(step("chown /dev"))?;
    Ok(mnt)
}
