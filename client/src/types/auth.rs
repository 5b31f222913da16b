//! Who may do what, as the cluster answers it: grants, identities and audit lines.

/// One grant: a permission on a target (see `ark auth grant --help` for the target forms).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Grant {
    /// `admin`, `read`, `write`, `kv-read` or `kv-write`.
    pub permission: String,
    /// `NAMESPACE[/KEY_PREFIX]` (namespace may end in `*`), a KV key prefix, or `*`.
    pub target: String,
}

/// The caller as the cluster sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WhoAmI {
    /// The identity its certificate names.
    pub identity: String,
    /// Whether it is an admin (explicitly, or as the bootstrap identity).
    pub admin: bool,
    /// Its explicit grants.
    pub grants: Vec<Grant>,
}

/// Every identity's grants.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Grants {
    /// Identity and its grants, by identity.
    pub identities: Vec<(String, Vec<Grant>)>,
    /// Locked down: the bootstrap identity is no longer implicitly an admin.
    pub locked: bool,
    /// The bootstrap identity (`root`).
    pub bootstrap_admin: String,
}

/// The newest lines of one node's audit log.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AuditTail {
    /// The node whose log it is.
    pub node_id: u64,
    /// JSON lines, oldest first.
    pub lines: Vec<String>,
}
