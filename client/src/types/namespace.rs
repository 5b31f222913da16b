//! Namespaces and their replication policy.

/// When a put is acknowledged.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum DurabilityMode {
    /// Not set: the cluster's default (in a request), or a mode this SDK does not know (in
    /// an answer).
    #[default]
    Unspecified,
    /// After durable copies exist in `min_sites` sites.
    Sync,
    /// After the local copy; the others follow and the namespace's lag is reported.
    Async,
}

/// How a namespace's objects are kept. Zero fields take the cluster's defaults.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NamespacePolicy {
    /// Copies of every chunk (default 3).
    pub copies: u32,
    /// Sites that must hold a copy (default 2).
    pub min_sites: u32,
    /// When a put is acknowledged.
    pub mode: DurabilityMode,
    /// Async only: the lag above which the namespace is reported behind its policy.
    pub max_lag_ms: u64,
    /// Higher is replicated first.
    pub priority: u32,
    /// Versions of each key kept, tombstones included (default 1).
    pub versions_kept: u32,
    /// Store chunks zstd-compressed when that makes them smaller.
    pub compress: bool,
}

impl NamespacePolicy {
    /// `copies` copies of every chunk in at least `min_sites` sites, acknowledged as `mode`
    /// says, one version of each key kept; the cluster's defaults for the rest.
    pub fn replicated(copies: u32, min_sites: u32, mode: DurabilityMode) -> Self {
        Self {
            copies,
            min_sites,
            mode,
            versions_kept: 1,
            ..Self::default()
        }
    }
}

/// A namespace with its policy and replication state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NamespaceInfo {
    /// Its name.
    pub name: String,
    /// Its policy.
    pub policy: NamespacePolicy,
    /// Live objects (latest version not a tombstone).
    pub objects: u64,
    /// Bytes of those objects.
    pub bytes: u64,
    /// Objects whose chunks do not yet meet the policy, as the leader's latest repair pass
    /// found them (at most `objects.repair_interval_ms` and one scan old).
    pub behind: u64,
    /// How long the oldest of those has waited (aged since that pass).
    pub lag_ms: u64,
    /// Chunks are sealed under a data key of the namespace's own (set at creation only).
    pub encrypted: bool,
    /// Encrypted namespaces: data key generations (new chunks use the last one).
    pub key_generations: u32,
    /// Encrypted namespaces: ids of the key-encryption keys wrapping its data keys.
    pub kek_ids: Vec<String>,
}

/// What [`crate::ArkClient::rekey_namespace`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RekeyReport {
    /// The namespace afterwards.
    pub namespace: NamespaceInfo,
    /// Data key generations rewrapped under the answering node's current KEK.
    pub rewrapped: u32,
    /// That KEK's id.
    pub kek_id: String,
}
