//! Whether a container's /proc tells its own limits: where the host runs lxcfs, mountd binds
//! lxcfs's /proc files and CPU directory over the container's (mountd checks the mount again
//! itself). Without lxcfs, /proc shows the host's values and nothing fails.

use std::collections::HashMap;

use burrow_sys::lxcfs::{mounted, CPU_DIR, LXCFS_DIR, PROC_FILES};

/// The annotation that opts one container out: `org.burrow.lxcfs=false`.
pub const ANNOTATION: &str = "org.burrow.lxcfs";

/// Whether to ask mountd for lxcfs: it is mounted on the host and the spec does not opt out.
pub fn wanted(annotations: Option<&HashMap<String, String>>) -> bool {
    let opted_out = annotations
        .and_then(|a| a.get(ANNOTATION))
        .is_some_and(|v| v == "false");
    let on = !opted_out && mounted();
    crate::log::debug(match (on, opted_out) {
        (true, _) => format!("lxcfs: on, /proc files and /{CPU_DIR} from {LXCFS_DIR}"),
        (false, true) => format!("lxcfs: off, the spec says {ANNOTATION}=false"),
        (false, false) => format!("lxcfs: off, not mounted at {LXCFS_DIR}; /proc is the host's"),
    });
    on
}

/// What `burrow features` says of lxcfs on this host.
pub fn feature() -> String {
    if mounted() {
        format!(
            "on: /proc/{{{}}} and /{CPU_DIR} come from lxcfs at {LXCFS_DIR}; {ANNOTATION}=false \
             opts a container out",
            PROC_FILES.join(",")
        )
    } else {
        format!("off: lxcfs is not mounted at {LXCFS_DIR}; /proc shows the host's values")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_annotation_opts_out_whatever_the_host_runs() {
        let off = HashMap::from([(ANNOTATION.to_string(), "false".to_string())]);
        assert!(!wanted(Some(&off)));
        let on = HashMap::from([(ANNOTATION.to_string(), "true".to_string())]);
        assert_eq!(wanted(Some(&on)), mounted());
        assert_eq!(wanted(None), mounted());
    }
}
