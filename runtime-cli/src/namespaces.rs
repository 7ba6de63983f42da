//! The namespaces a spec names by path: which ones a new container may join, and how.
//!
//! A path may name:
//! - a namespace of another of this caller's Burrow containers (`/proc/PID/ns/net` from
//!   Docker's `--network container:A`, or a pod's app containers joining its sandbox): the new
//!   container joins that container's user namespace and shares its range (idmapd's `Join`),
//!   then the namespaces named;
//! - a network namespace made outside Burrow and owned by the host's user namespace, but not
//!   the host's own (the pod network namespace containerd made and CNI configured): for a root
//!   caller, the container still gets a network namespace of its own, owned by its own user
//!   namespace (so its root has `CAP_NET_ADMIN` there and an inner dockerd can make bridges),
//!   and CNI's interfaces move into it with their addresses and routes ([`crate::network`]).
//!
//! Everything else is refused with its reason: the host's own namespaces, a namespace the
//! caller cannot open (another user's container's), one whose user namespace is not one of
//! this runtime's containers' (idmapd did not map it), and namespaces of two containers.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use burrow_sys::nsfs::ns_id;
use oci_spec::runtime::{LinuxNamespaceType, Spec};

use crate::state::{Record, Store};

/// Why a spec's namespace path is refused.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error("cannot open the {kind} namespace {}: {source}", path.display())]
    Open {
        kind: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} is not a {kind} namespace", path.display())]
    WrongKind { kind: &'static str, path: PathBuf },
    #[error(
        "the host's {kind} namespace ({}, {}) cannot be shared with a Burrow system container",
        path.display(),
        host_flag(kind)
    )]
    Host { kind: &'static str, path: PathBuf },
    #[error(
        "the {kind} namespace {} is owned by the host's user namespace: only root may give a \
         container a pod network namespace (CNI's), and no other kind",
        path.display()
    )]
    HostOwned { kind: &'static str, path: PathBuf },
    #[error(
        "the {kind} namespace {} belongs to a user namespace that is none of this runtime's \
         containers' (idmapd did not map it for this caller)",
        path.display()
    )]
    Foreign { kind: &'static str, path: PathBuf },
    #[error("the namespaces named belong to two containers, {0} and {1}")]
    TwoContainers(String, String),
    #[error("joining another container's mount namespace ({}) is not supported", .0.display())]
    Mount(PathBuf),
    #[error("reading the namespace {}: {source}", path.display())]
    Inspect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// How Docker's users ask for the host's namespace of `kind`.
fn host_flag(kind: &str) -> &'static str {
    match kind {
        "net" => "--net=host",
        "pid" => "--pid=host",
        "ipc" => "--ipc=host",
        "uts" => "--uts=host",
        "user" => "--userns=host",
        "cgroup" => "--cgroupns=host",
        _ => "the host's",
    }
}

/// The Burrow container whose user namespace (and range) a new one joins.
pub struct Pod {
    /// Its id in this runtime's store; its range is idmapd's under `range_name(store, id)`.
    pub id: String,
    pub userns: OwnedFd,
}

/// What a spec's namespace paths ask for, checked and opened.
#[derive(Default)]
pub struct Joins {
    pub pod: Option<Pod>,
    /// Namespaces the intermediate enters after the user namespace: fd and CLONE_NEW* flag.
    pub enter: Vec<(OwnedFd, libc::c_int)>,
    /// A pod network namespace whose interfaces move into the container's own.
    pub adopt_network: Option<OwnedFd>,
}

impl Joins {
    /// The CLONE_NEW* flags of the namespaces the container joins rather than makes.
    pub fn joined_flags(&self) -> libc::c_int {
        self.enter.iter().fold(0, |flags, (_, flag)| flags | flag)
    }
}

/// The `/proc/self/ns` name and CLONE_NEW* flag of a namespace kind.
fn describe(kind: LinuxNamespaceType) -> (&'static str, libc::c_int) {
    match kind {
        LinuxNamespaceType::Network => ("net", libc::CLONE_NEWNET),
        LinuxNamespaceType::Pid => ("pid", libc::CLONE_NEWPID),
        LinuxNamespaceType::Ipc => ("ipc", libc::CLONE_NEWIPC),
        LinuxNamespaceType::Uts => ("uts", libc::CLONE_NEWUTS),
        LinuxNamespaceType::User => ("user", libc::CLONE_NEWUSER),
        LinuxNamespaceType::Cgroup => ("cgroup", libc::CLONE_NEWCGROUP),
        LinuxNamespaceType::Time => ("time", libc::CLONE_NEWTIME),
        LinuxNamespaceType::Mount => ("mnt", libc::CLONE_NEWNS),
    }
}

/// Checks and opens every namespace `spec` names by path.
pub fn plan(spec: &Spec, store: &Store) -> Result<Joins, JoinError> {
    let namespaces = spec
        .linux()
        .as_ref()
        .and_then(|l| l.namespaces().clone())
        .unwrap_or_default();
    let named: Vec<(LinuxNamespaceType, &Path)> = namespaces
        .iter()
        .filter_map(|ns| Some((ns.typ(), ns.path().as_deref()?)))
        .collect();
    let mut joins = Joins::default();
    if named.is_empty() {
        return Ok(joins);
    }
    // Looked up once, and only if a path is no namespace of the host's user namespace.
    let containers = std::cell::OnceCell::new();
    let host_userns = host_userns_id()?;
    for (typ, path) in named {
        let (kind, flag) = describe(typ);
        if flag == libc::CLONE_NEWNS {
            return Err(JoinError::Mount(path.to_path_buf()));
        }
        let fd = open_namespace(path, kind, flag)?;
        let known = || {
            containers
                .get_or_init(|| container_userns_ids(store))
                .as_slice()
        };
        match classify(fd.as_fd(), path, kind, host_userns, known)? {
            Owner::Container(pod) => join_pod(&mut joins, pod)?,
            Owner::Host if flag == libc::CLONE_NEWNET && nix::unistd::geteuid().is_root() => {
                joins.adopt_network = Some(fd);
                continue;
            }
            Owner::Host => {
                return Err(JoinError::HostOwned {
                    kind,
                    path: path.to_path_buf(),
                })
            }
        }
        if flag != libc::CLONE_NEWUSER {
            joins.enter.push((fd, flag));
        }
    }
    Ok(joins)
}

/// Opens `path` and checks that it is a namespace of `kind`, and not the runtime's own.
fn open_namespace(
    path: &Path,
    kind: &'static str,
    flag: libc::c_int,
) -> Result<OwnedFd, JoinError> {
    // Non-blocking: a spec may name a FIFO, whose open would wait for a writer.
    let open = |p: &Path| {
        rustix::fs::open(
            p,
            rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::CLOEXEC | rustix::fs::OFlags::NONBLOCK,
            rustix::fs::Mode::empty(),
        )
        .map_err(std::io::Error::from)
    };
    let fd = open(path).map_err(|source| JoinError::Open {
        kind,
        path: path.to_path_buf(),
        source,
    })?;
    match burrow_sys::nsfs::kind(fd.as_fd()) {
        Ok(found) if found == flag => {}
        _ => {
            return Err(JoinError::WrongKind {
                kind,
                path: path.to_path_buf(),
            })
        }
    }
    // The runtime runs in the host's namespaces (containerd's, dockerd's).
    let own = open(&Path::new("/proc/self/ns").join(kind)).and_then(|own| ns_id(own.as_fd()));
    if own.ok() == Some(ns_id(fd.as_fd()).map_err(inspect(path))?) {
        return Err(JoinError::Host {
            kind,
            path: path.to_path_buf(),
        });
    }
    Ok(fd)
}

/// The id of the runtime's own user namespace (the host's).
fn host_userns_id() -> Result<u64, JoinError> {
    let path = Path::new("/proc/self/ns/user");
    std::fs::File::open(path)
        .and_then(|own| ns_id(own.as_fd()))
        .map_err(inspect(path))
}

fn inspect(path: &Path) -> impl Fn(std::io::Error) -> JoinError + '_ {
    move |source| JoinError::Inspect {
        path: path.to_path_buf(),
        source,
    }
}

enum Owner {
    Container(Pod),
    /// Owned by the runtime's own user namespace (the host's).
    Host,
}

/// Whose the namespace `ns` is: the host's user namespace's (`host_userns`), or one of the
/// caller's containers' (`containers`: their ids with their user namespaces' ids).
fn classify<'a>(
    ns: BorrowedFd<'_>,
    path: &Path,
    kind: &'static str,
    host_userns: u64,
    containers: impl FnOnce() -> &'a [(String, u64)],
) -> Result<Owner, JoinError> {
    let userns = if kind == "user" {
        ns.try_clone_to_owned().map_err(inspect(path))?
    } else {
        burrow_sys::nsfs::owner(ns).map_err(inspect(path))?
    };
    let userns_id = ns_id(userns.as_fd()).map_err(inspect(path))?;
    if userns_id == host_userns {
        return Ok(Owner::Host);
    }
    containers()
        .iter()
        .find(|(_, id)| *id == userns_id)
        .map(|(container, _)| {
            Owner::Container(Pod {
                id: container.clone(),
                userns,
            })
        })
        .ok_or_else(|| JoinError::Foreign {
            kind,
            path: path.to_path_buf(),
        })
}

/// The store's running containers, each with the id of its init's user namespace.
fn container_userns_ids(store: &Store) -> Vec<(String, u64)> {
    store
        .list()
        .into_iter()
        .filter_map(|record| Some((record.id.clone(), container_userns_id(&record)?)))
        .collect()
}

/// The id of the user namespace of `record`'s init, if it still runs.
fn container_userns_id(record: &Record) -> Option<u64> {
    let pid = rustix::process::Pid::from_raw(record.pid)?;
    let pidfd = rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()).ok()?;
    // Checked after the pidfd is open: the pid is still the init's, not a recycled one.
    if !record.init_alive() {
        return None;
    }
    let userns = burrow_sys::pidfd::user_namespace(pidfd.as_fd()).ok()?;
    ns_id(userns.as_fd()).ok()
}

/// Every namespace named must be the same container's.
fn join_pod(joins: &mut Joins, pod: Pod) -> Result<(), JoinError> {
    match &joins.pod {
        Some(known) if known.id != pod.id => {
            Err(JoinError::TwoContainers(known.id.clone(), pod.id))
        }
        Some(_) => Ok(()),
        None => {
            joins.pod = Some(pod);
            Ok(())
        }
    }
}
