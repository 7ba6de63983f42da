//! Burrow's D-Bus contract and the scaffolding its root helpers share.
//!
//! Everything that both a helper and its clients must agree on lives here: bus names, object
//! paths, polkit action ids, error names, typed proxies. The helpers also share the service
//! skeleton: caller identification, authorization, capability dropping, idle exit, atomic
//! state files and user-namespace fd checks.

pub mod authz;
#[cfg(feature = "cgroup")]
pub mod cgroup;
pub mod contract;
pub mod error;
pub mod fork;
pub mod mountinfo;
pub mod nsfs;
pub mod pidfd;
pub mod privileges;
pub mod proxy;
pub mod quota;
pub mod service;
pub mod state;
pub mod userns;

pub use authz::Caller;
pub use error::BurrowError;
