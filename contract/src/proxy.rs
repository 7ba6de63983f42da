//! Typed client proxies for the helpers.

use zbus::zvariant::OwnedFd;

/// One holder of an allocated range, as `List` returns it: (uid, name, uid_base, gid_base,
/// size); a range held under several names is listed once per name.
pub type RangeEntry = (u32, String, u32, u32, u32);

#[zbus::proxy(
    interface = "org.burrow.IdMap1",
    default_service = "org.burrow.IdMap1",
    default_path = "/org/burrow/IdMap1"
)]
pub trait IdMap1 {
    fn allocate(&self, name: &str, userns: OwnedFd) -> zbus::Result<(u32, u32, u32)>;
    /// Holds the range held as `existing` under `name` too; `userns` is its user namespace.
    fn join(&self, existing: &str, name: &str, userns: OwnedFd) -> zbus::Result<(u32, u32, u32)>;
    fn release(&self, name: &str) -> zbus::Result<()>;
    /// Keeps the range held as `name`: its Release parks it for `name` instead of freeing it.
    fn keep(&self, name: &str) -> zbus::Result<()>;
    /// Frees the range parked for `name`.
    fn forget(&self, name: &str) -> zbus::Result<()>;
    fn get(&self, name: &str) -> zbus::Result<(u32, u32, u32)>;
    fn list(&self) -> zbus::Result<Vec<RangeEntry>>;
    fn add_control_group(&self, name: &str, process: OwnedFd) -> zbus::Result<String>;
    #[zbus(property)]
    fn pool_start(&self) -> zbus::Result<u32>;
    #[zbus(property)]
    fn pool_end(&self) -> zbus::Result<u32>;
    #[zbus(property)]
    fn range_size(&self) -> zbus::Result<u32>;
    #[zbus(property)]
    fn in_use(&self) -> zbus::Result<u32>;
    #[zbus(property)]
    fn max_per_user(&self) -> zbus::Result<u32>;
    #[zbus(signal)]
    fn allocated(&self, uid: u32, name: &str, base: u32, size: u32) -> zbus::Result<()>;
    #[zbus(signal)]
    fn released(&self, uid: u32, name: &str, base: u32) -> zbus::Result<()>;
}

#[zbus::proxy(
    interface = "org.burrow.Dev1",
    default_service = "org.burrow.Dev1",
    default_path = "/org/burrow/Dev1"
)]
pub trait Dev1 {
    fn create(
        &self,
        userns: OwnedFd,
        options: std::collections::HashMap<&str, zbus::zvariant::Value<'_>>,
    ) -> zbus::Result<OwnedFd>;
    #[zbus(property)]
    fn allowed_extra(&self) -> zbus::Result<Vec<String>>;
}

#[zbus::proxy(
    interface = "org.burrow.Mount1",
    default_service = "org.burrow.Mount1",
    default_path = "/org/burrow/Mount1"
)]
pub trait Mount1 {
    fn idmap_mount(&self, dir: OwnedFd, userns: OwnedFd, read_only: bool) -> zbus::Result<OwnedFd>;
    fn build_root(
        &self,
        init_pidfd: OwnedFd,
        plan: &crate::mount::BuildPlan,
        fds: Vec<OwnedFd>,
    ) -> zbus::Result<OwnedFd>;
}
