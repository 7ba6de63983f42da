//! The D-Bus errors every helper returns. Each carries a message a person can act on.

/// Errors on the wire, named `org.burrow.Error.<Variant>`.
#[derive(Debug, zbus::DBusError)]
#[zbus(prefix = "org.burrow.Error")]
pub enum BurrowError {
    /// A bus-level failure (not one of ours).
    #[zbus(error)]
    ZBus(zbus::Error),
    /// The caller is not allowed to do this (polkit said no, or the object is not theirs).
    NotAuthorized(String),
    /// An argument is malformed or names the wrong kind of object.
    InvalidArgument(String),
    /// The named object does not exist (for this caller).
    NotFound(String),
    /// A pool or quota is used up.
    Exhausted(String),
    /// The name is already taken by this caller.
    AlreadyExists(String),
    /// The object is in use; try again later.
    Busy(String),
    /// The kernel or filesystem cannot do what was asked (e.g. ID-map this filesystem).
    NotSupported(String),
    /// The helper failed for a reason of its own (I/O, kernel); details in the message and log.
    Failed(String),
}

impl BurrowError {
    /// The error's D-Bus name, for logs and tests.
    pub fn dbus_name(&self) -> String {
        use zbus::DBusError;
        self.name().to_string()
    }
}
