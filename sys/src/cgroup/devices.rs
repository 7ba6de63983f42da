//! The container's device policy: every device denied but the character devices its /dev holds.
//!
//! A root-owned image layer unpacked by Docker or containerd can hold any device node, and a
//! bind source can too. `nodev` on those mounts is the first wall; this is the second, which
//! holds even for a node the container reaches some other way: a device opens only if the
//! container's cgroup allows it. On v1 that is the `devices` controller (`a` denied, then each
//! allowed; a child cgroup can never allow more than its parent, and the files stay host root's).
//! On cgroup2 (a v2 host, and a hybrid host's unified hierarchy, which the kernel consults as
//! well) it is a `BPF_CGROUP_DEVICE` program attached with `BPF_F_ALLOW_MULTI`: the programs of
//! every ancestor must all allow an access, and loading or detaching one needs capabilities in
//! the host's user namespace, which the container's root never has.

use std::os::fd::AsFd;
use std::path::Path;

use cgroups_rs::fs::devices::{DevicePermissions, DeviceType, DevicesController};

use super::bpf;
use super::{controller, io, CgroupError, Hierarchies};
use burrow_contract::dev;

/// Character devices a container may read and write: `minor` None is any minor of `major`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CharDevice {
    pub major: u32,
    pub minor: Option<u32>,
}

/// What a container's processes may open; everything else (every block device) is denied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevicePolicy {
    allowed: Vec<CharDevice>,
}

impl DevicePolicy {
    /// devd's standard set: null, zero, full, random, urandom, tty, the container's own ptmx
    /// and its pseudo-terminals.
    pub fn standard() -> Self {
        let nodes = dev::STANDARD_NODES
            .iter()
            .map(|(_, major, minor)| (*major, *minor))
            .chain([dev::PTMX])
            .map(|(major, minor)| CharDevice {
                major,
                minor: Some(minor),
            });
        let ptys = dev::PTY_SLAVE_MAJORS.map(|major| CharDevice { major, minor: None });
        DevicePolicy {
            allowed: nodes.chain(ptys).collect(),
        }
    }

    /// Also allows an extra device devd created for the container.
    pub fn with(mut self, major: u32, minor: u32) -> Self {
        self.allowed.push(CharDevice {
            major,
            minor: Some(minor),
        });
        self
    }

    /// Keeps only the devices `keep` accepts: a narrower policy.
    pub fn only(mut self, keep: impl Fn(&CharDevice) -> bool) -> Self {
        self.allowed.retain(keep);
        self
    }

    pub fn allowed(&self) -> &[CharDevice] {
        &self.allowed
    }
}

/// Puts `policy` on the cgroup in every hierarchy that can carry one. A host where none can
/// (neither a `devices` controller nor cgroup2) gets no container: the policy is not optional.
pub(super) fn restrict(
    hierarchies: &Hierarchies,
    path: &str,
    policy: &DevicePolicy,
) -> Result<(), CgroupError> {
    let mut applied = false;
    if let Some(devices) = hierarchies.cgroup.controller_of::<DevicesController>() {
        restrict_v1(devices, path, policy)?;
        applied = true;
    }
    for (dir, unified) in hierarchies.directories() {
        if unified {
            attach_program(&dir, policy)?;
            applied = true;
        }
    }
    if applied {
        Ok(())
    } else {
        Err(CgroupError::NoDevicePolicy {
            path: path.to_string(),
        })
    }
}

fn restrict_v1(
    devices: &DevicesController,
    path: &str,
    policy: &DevicePolicy,
) -> Result<(), CgroupError> {
    let all = DevicePermissions::all();
    devices
        .deny_device(DeviceType::All, -1, -1, &all)
        .map_err(controller(format!("denying all devices to cgroup {path}")))?;
    let read_write = [DevicePermissions::Read, DevicePermissions::Write];
    for device in policy.allowed() {
        let minor = device.minor.map_or(-1, i64::from);
        devices
            .allow_device(
                DeviceType::Char,
                i64::from(device.major),
                minor,
                &read_write,
            )
            .map_err(controller(format!(
                "allowing device c {}:{minor} to cgroup {path}",
                device.major
            )))?;
    }
    Ok(())
}

fn attach_program(dir: &Path, policy: &DevicePolicy) -> Result<(), CgroupError> {
    let cgroup = std::fs::File::open(dir).map_err(io(format!("opening {}", dir.display())))?;
    let program = bpf::DeviceProgram::load(policy).map_err(|source| CgroupError::Bpf {
        what: "loading the device program".into(),
        source,
    })?;
    program
        .attach(cgroup.as_fd())
        .map_err(|source| CgroupError::Bpf {
            what: format!("attaching the device program to {}", dir.display()),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standard_policy_is_devds_set_and_ptys() {
        let policy = DevicePolicy::standard();
        let exact: Vec<(u32, u32)> = policy
            .allowed()
            .iter()
            .filter_map(|d| Some((d.major, d.minor?)))
            .collect();
        assert_eq!(
            exact,
            [(1, 3), (1, 5), (1, 7), (1, 8), (1, 9), (5, 0), (5, 2)]
        );
        let any_minor: Vec<u32> = policy
            .allowed()
            .iter()
            .filter(|d| d.minor.is_none())
            .map(|d| d.major)
            .collect();
        assert_eq!(any_minor, (136..=143).collect::<Vec<_>>());
        assert!(policy.with(10, 229).allowed().contains(&CharDevice {
            major: 10,
            minor: Some(229)
        }));
    }
}
