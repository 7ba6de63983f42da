//! Images for containerd without a registry: a root filesystem becomes one uncompressed layer
//! in `docker save`'s archive format, which `ctr images import` reads (and unpacks for the
//! snapshotter the CRI plugin uses).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::run;

/// The sandbox ("pause") image the test containerd is configured with.
pub const PAUSE_IMAGE: &str = "burrow.test/pause:1";
/// A busybox image (every applet, `sh` as its command).
pub const BUSYBOX_IMAGE: &str = "burrow.test/busybox:1";

/// What an image runs by default.
pub struct ImageConfig<'a> {
    /// `repository:tag`, the name CRI asks for.
    pub name: &'a str,
    pub entrypoint: &'a [&'a str],
    pub cmd: &'a [&'a str],
}

/// Writes `rootfs` as image `config.name` in `docker save` format to `archive`.
pub fn docker_archive(rootfs: &Path, config: &ImageConfig, archive: &Path) {
    let work = archive.with_extension("parts");
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(&work).unwrap();
    // Numeric owners: the layer says who owns what in the image, not who ran the test.
    run(Command::new("tar")
        .arg("-C")
        .arg(rootfs)
        .args(["--numeric-owner", "--sort=name", "-cf"])
        .arg(work.join("layer.tar"))
        .arg("."));
    // The unpacker checks each layer against the config's diff_ids.
    let digest = run(Command::new("sha256sum").arg(work.join("layer.tar")));
    let digest = String::from_utf8_lossy(&digest.stdout);
    let digest = digest.split_whitespace().next().expect("sha256sum output");
    let image_config = serde_json::json!({
        // Without a platform, import filters the image out as not this host's.
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Entrypoint": config.entrypoint,
            "Cmd": config.cmd,
            "Env": ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"],
            "WorkingDir": "/",
        },
        "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{digest}")]},
    });
    fs::write(work.join("config.json"), image_config.to_string()).unwrap();
    let manifest = serde_json::json!([{
        "Config": "config.json",
        "RepoTags": [config.name],
        "Layers": ["layer.tar"],
    }]);
    fs::write(work.join("manifest.json"), manifest.to_string()).unwrap();
    run(Command::new("tar")
        .arg("-C")
        .arg(&work)
        .arg("-cf")
        .arg(archive)
        .args(["manifest.json", "config.json", "layer.tar"]));
    fs::remove_dir_all(&work).unwrap();
}

/// A pause image's root filesystem: busybox's `sleep` alone. The sandbox container only holds
/// the pod's namespaces; containerd stops it with SIGKILL, so it needs no signal handling.
fn pause_rootfs(dir: &Path) -> PathBuf {
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .map(Path::new)
        .find(|p| p.exists())
        .expect("busybox not found (apt-get install busybox-static)");
    let _ = fs::remove_dir_all(dir);
    for sub in ["bin", "dev", "proc", "sys", "etc"] {
        fs::create_dir_all(dir.join(sub)).unwrap();
    }
    fs::copy(busybox, dir.join("bin/busybox")).unwrap();
    std::os::unix::fs::symlink("busybox", dir.join("bin/sleep")).unwrap();
    dir.to_path_buf()
}

/// Builds the busybox and pause images in `dir`: the archives, to import.
pub fn test_images(dir: &Path) -> Vec<PathBuf> {
    fs::create_dir_all(dir).unwrap();
    let busybox = dir.join("busybox.tar");
    docker_archive(
        &crate::busybox_rootfs(&dir.join("busybox-rootfs"), None),
        &ImageConfig {
            name: BUSYBOX_IMAGE,
            entrypoint: &[],
            cmd: &["sh"],
        },
        &busybox,
    );
    let pause = dir.join("pause.tar");
    docker_archive(
        &pause_rootfs(&dir.join("pause-rootfs")),
        &ImageConfig {
            name: PAUSE_IMAGE,
            entrypoint: &["/bin/sleep"],
            cmd: &["2147483647"],
        },
        &pause,
    );
    for rootfs in ["busybox-rootfs", "pause-rootfs"] {
        fs::remove_dir_all(dir.join(rootfs)).unwrap();
    }
    vec![busybox, pause]
}
