//! Looking into a container's image from the host. The image is the container's (a hostile one
//! may hold `/sbin/init -> /etc/shadow`, `/usr/bin -> /root`, or a FIFO where the runtime looks),
//! so the runtime never resolves its paths on the host: every look-up is one `openat2` from an
//! `O_PATH` fd of the rootfs with `RESOLVE_IN_ROOT` (absolute symlinks and `..` stay inside, as
//! they do for the container) and `RESOLVE_NO_MAGICLINKS`, opening `O_PATH` only, which never
//! blocks on a FIFO nor reads anything.

use std::ffi::OsString;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;

use rustix::fs::{FileType, Mode, OFlags, ResolveFlags};

use crate::error::{CliError, Result};

/// A rootfs, held open.
pub struct Image {
    root: OwnedFd,
}

/// A regular file found in an image.
pub struct ImageFile {
    /// Its own name, after every symlink on the way (`systemd` for `/sbin/init` on Debian).
    pub name: OsString,
}

impl Image {
    pub fn open(rootfs: &Path) -> Result<Image> {
        let root = rustix::fs::open(
            rootfs,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| CliError::Io {
            what: format!("opening the rootfs {}", rootfs.display()),
            source: e.into(),
        })?;
        Ok(Image { root })
    }

    /// The regular file `path` (absolute or not, as the container would see it) names in the
    /// image, symlinks followed inside it; None if there is none (missing, a directory, a FIFO,
    /// a device, or a link leading out of the image to something that exists only on the host).
    pub fn regular_file(&self, path: &str) -> Option<ImageFile> {
        let fd = self.resolve(path)?;
        let stat = rustix::fs::fstat(&fd).ok()?;
        if FileType::from_raw_mode(stat.st_mode) != FileType::RegularFile {
            return None;
        }
        // The kernel's name for the fd: the path it really reached, whose last component is
        // the file's own name.
        let real = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).ok()?;
        Some(ImageFile {
            name: real.file_name()?.to_os_string(),
        })
    }

    fn resolve(&self, path: &str) -> Option<OwnedFd> {
        // EAGAIN: a rename raced with the look-up (RESOLVE_IN_ROOT checks for that); try again.
        for _ in 0..8 {
            match rustix::fs::openat2(
                &self.root,
                path,
                OFlags::PATH | OFlags::CLOEXEC,
                Mode::empty(),
                ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
            ) {
                Ok(fd) => return Some(fd),
                Err(rustix::io::Errno::AGAIN) => continue,
                Err(_) => return None,
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A scratch rootfs beside a "host" directory holding what only the host has.
    fn scratch(name: &str) -> (std::path::PathBuf, std::path::PathBuf) {
        let base = std::env::temp_dir().join(format!("burrow-image-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let (rootfs, host) = (base.join("rootfs"), base.join("host"));
        for dir in [
            rootfs.join("lib/systemd"),
            rootfs.join("sbin"),
            host.clone(),
        ] {
            std::fs::create_dir_all(dir).unwrap();
        }
        std::fs::write(host.join("systemd"), "host").unwrap();
        (rootfs, host)
    }

    #[test]
    fn links_resolve_inside_the_image_only() {
        use std::os::unix::fs::symlink;
        let (rootfs, host) = scratch("links");
        std::fs::write(rootfs.join("lib/systemd/systemd"), "image").unwrap();
        symlink("/lib/systemd/systemd", rootfs.join("sbin/init")).unwrap();
        symlink("../../../../../lib/systemd/systemd", rootfs.join("sbin/up")).unwrap();
        // Out of the image: an absolute link to the host directory, and a file behind it.
        symlink(&host, rootfs.join("evil")).unwrap();
        symlink("/evil/systemd", rootfs.join("sbin/evil-init")).unwrap();
        symlink(host.join("systemd"), rootfs.join("sbin/host-init")).unwrap();
        nix::unistd::mkfifo(&rootfs.join("sbin/fifo"), nix::sys::stat::Mode::S_IRWXU).unwrap();
        let image = Image::open(&rootfs).unwrap();
        for found in ["/sbin/init", "sbin/init", "/sbin/up"] {
            assert_eq!(
                image.regular_file(found).unwrap().name,
                "systemd",
                "{found}"
            );
        }
        for missing in [
            "/sbin/evil-init",
            "/sbin/host-init",
            "/evil/systemd",
            "/sbin/fifo",
            "/sbin",
            "/nothing",
        ] {
            assert!(image.regular_file(missing).is_none(), "{missing} found");
        }
        let _ = std::fs::remove_dir_all(rootfs.parent().unwrap());
    }
}
