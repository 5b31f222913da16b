//! Node configuration: the TOML file `arkd` reads, its defaults and its validation.
//!
//! Owns parsing and checking only; it never opens sockets or files other than the config
//! file itself. Unknown keys are rejected so that a typo is an error, not a silent default.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Largest value a KV record may hold (it is stored in the Raft log itself).
pub const KV_VALUE_BYTES_MAX: usize = 64 * 1024;
/// Largest key, in bytes of UTF-8.
pub const KV_KEY_BYTES_MAX: usize = 1024;

/// Everything one `arkd` process needs to know.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// Unique, non-zero id of this node in the cluster. Never reuse an id.
    pub node_id: u64,
    /// Name of the site (data centre) this node runs in; placement spreads across sites.
    pub site: String,
    /// What this node does: `data` (default) stores chunks and serves clients; `witness`
    /// only votes and keeps the Raft log (see [`NodeRole`]).
    #[serde(default)]
    pub role: NodeRole,
    /// Directory for the Raft log, state machine and snapshots. Created if missing.
    pub data_dir: PathBuf,
    /// Addresses this node listens on.
    pub listen: ListenConfig,
    /// Addresses other nodes and clients use to reach this node, when they differ from
    /// `listen` (NAT, 0.0.0.0 binds). Defaults to the listen addresses.
    #[serde(default)]
    pub advertise: Option<AdvertiseConfig>,
    /// Mutual TLS material shared by the peer (QUIC) and client (gRPC) planes.
    pub tls: TlsConfig,
    /// Raft timing and log compaction.
    #[serde(default)]
    pub raft: RaftConfig,
    /// Object storage: replication, scrub and garbage collection.
    #[serde(default)]
    pub objects: ObjectsConfig,
    /// The foyer cache of hot chunks held by other nodes.
    #[serde(default)]
    pub cache: CacheConfig,
    /// Telemetry sampling and the leader's windows of samples.
    #[serde(default)]
    pub telemetry: TelemetryConfig,
    /// Risk-aware replication: node failure forecasts and the repair queue's order.
    #[serde(default)]
    pub risk: RiskConfig,
    /// Limits on what clients may ask of this node: sizes, counts, rates and deadlines.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// Fault injection for drills and tests (never in production): see `net::fault`.
    #[serde(default)]
    pub faults: Option<FaultsConfig>,
    /// Encryption at rest: where this node reads the cluster's key-encryption key (KEK).
    /// Without it the node can neither create nor read encrypted namespaces.
    #[serde(default)]
    pub encryption: Option<EncryptionConfig>,
    /// Cluster bootstrap: which nodes form the initial voting membership.
    #[serde(default)]
    pub bootstrap: BootstrapConfig,
}

/// What a node does in the cluster. Replicated through the log as `Command::SetRole`
/// (postcard encodes the variant's index: append new roles at the end, never reorder).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeRole {
    /// Stores chunks, serves KV and object calls, may lead.
    #[default]
    Data,
    /// Votes and keeps the Raft log and the (metadata-only) state machine, so that it can
    /// decide elections between two data sites; holds no chunk, serves no client data and
    /// hands leadership to a data node as soon as it wins an election.
    Witness,
}

impl NodeRole {
    /// `"data"` or `"witness"`, as written in the config.
    pub fn as_str(self) -> &'static str {
        match self {
            NodeRole::Data => "data",
            NodeRole::Witness => "witness",
        }
    }
}

/// Most previous KEKs a node keeps for unwrapping keys not yet rewrapped.
pub const PREVIOUS_KEKS_MAX: usize = 16;

/// Where the cluster's key-encryption key (KEK) comes from. The KEK wraps every encrypted
/// namespace's data keys; it never enters the Raft log or a snapshot. Every node of a
/// cluster needs the same current KEK (a node with another one cannot open the data keys
/// and refuses to read encrypted namespaces, with an error naming both KEK ids).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EncryptionConfig {
    /// File holding the KEK: 32 random bytes, raw or as 64 hex digits
    /// (`head -c 32 /dev/urandom | xxd -p -c 64`). Keep it mode 0600, outside the data dir.
    #[serde(default)]
    pub kek_file: Option<PathBuf>,
    /// Or: the name of an environment variable holding the KEK as 64 hex digits.
    #[serde(default)]
    pub kek_env: Option<String>,
    /// KEKs used before the current one, still accepted for unwrapping until
    /// `ark ns rekey` has rewrapped every namespace under the current one.
    #[serde(default)]
    pub previous_kek_files: Vec<PathBuf>,
}

/// Listen addresses.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ListenConfig {
    /// UDP address of the QUIC peer transport (Raft and, later, chunk transfer).
    pub peer: SocketAddr,
    /// TCP address of the gRPC client API (TLS).
    pub client: SocketAddr,
    /// TCP address of the plain-HTTP Prometheus `/metrics` endpoint; omit to disable.
    #[serde(default)]
    pub metrics: Option<SocketAddr>,
}

/// Advertised addresses.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AdvertiseConfig {
    /// `host:port` peers dial for QUIC.
    pub peer: String,
    /// `host:port` clients dial for gRPC.
    pub client: String,
}

/// TLS material, PEM files. Relative paths are resolved against the config file's folder.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// The cluster CA certificate. Peers and clients must present a certificate it signed.
    pub ca: PathBuf,
    /// This node's certificate (signed by the CA, SANs `ark-node` and `node-<id>`).
    pub cert: PathBuf,
    /// This node's private key.
    pub key: PathBuf,
    /// Whether the client API accepts node certificates as client certificates. Off: a
    /// node's certificate is good for the peer plane only, and clients use certificates
    /// made with `ark certs client NAME`.
    #[serde(default)]
    pub allow_node_clients: bool,
    /// More CA certificates (PEM) trusted on the client API only, e.g. an external CA that
    /// issues client certificates: unlike `ca`, they are never trusted for node
    /// certificates on the peer plane.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_ca: Option<PathBuf>,
}

/// Raft timing. Defaults suit WAN round trips of up to ~100 ms between sites.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RaftConfig {
    /// Leader heartbeat period.
    pub heartbeat_interval_ms: u64,
    /// A follower that hears nothing for a random time in [min, max] starts an election.
    pub election_timeout_min_ms: u64,
    /// Upper bound of the election timeout.
    pub election_timeout_max_ms: u64,
    /// Build a snapshot (and compact the log) after this many applied entries.
    pub snapshot_logs_since_last: u64,
    /// Log entries kept after a snapshot so that slightly lagging followers need no snapshot.
    pub logs_kept_after_snapshot: u64,
    /// Deadline for one peer RPC other than snapshot install.
    pub rpc_timeout_ms: u64,
    /// Log entries of client writes the leader keeps in flight; writes that arrive meanwhile
    /// are folded into the next entry. Fewer means larger entries (less work per write),
    /// more means less waiting under light load.
    pub proposals_in_flight: usize,
    /// Upper bound of the log entries one AppendEntries carries, in encoded bytes (at least
    /// one entry is always sent). openraft gives every AppendEntries one heartbeat interval
    /// as its deadline, and a new leader's first one starts halfway through the log: on a
    /// slow or lossy link a batch of a thousand entries never arrives in time and the leader
    /// cannot replicate at all. A follower catching up then needs more round trips instead.
    pub append_entries_max_bytes: u64,
}

impl Default for RaftConfig {
    fn default() -> Self {
        Self {
            heartbeat_interval_ms: 250,
            election_timeout_min_ms: 1500,
            election_timeout_max_ms: 3000,
            snapshot_logs_since_last: 20_000,
            logs_kept_after_snapshot: 5_000,
            rpc_timeout_ms: 2_000,
            proposals_in_flight: 2,
            append_entries_max_bytes: 64 * 1024,
        }
    }
}

/// Object storage: chunk replication, the repair queue, scrub and garbage collection.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ObjectsConfig {
    /// A holder that has not answered the leader for this long no longer counts as a copy,
    /// and the repair queue re-replicates its chunks elsewhere.
    pub holder_lost_after_ms: u64,
    /// How often the leader's replication queue looks for chunks below their policy.
    pub repair_interval_ms: u64,
    /// Chunks pushed in parallel per put and per repair (QUIC streams).
    pub streams: usize,
    /// Seconds between two background scrub passes (0 = only on demand, `ark scrub`).
    pub scrub_interval_s: u64,
    /// Scrub re-hashes at most this many MiB per second.
    pub scrub_mib_per_s: u64,
    /// A local chunk file that no object refers to is removed once it is this old (an
    /// upload in progress has not committed its manifest yet).
    pub gc_grace_s: u64,
    /// The repair queue moves at most this many MiB per second (0 = no limit), so that
    /// re-replication leaves room for client traffic on the links.
    pub repair_mib_per_s: u64,
}

impl Default for ObjectsConfig {
    fn default() -> Self {
        Self {
            holder_lost_after_ms: 30_000,
            repair_interval_ms: 2_000,
            streams: 8,
            scrub_interval_s: 24 * 3600,
            scrub_mib_per_s: 64,
            gc_grace_s: 3600,
            repair_mib_per_s: 0,
        }
    }
}

/// The chunk cache: memory, then disk under `<data_dir>/cache/`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    /// In-memory tier, MiB.
    pub memory_mib: u64,
    /// On-disk tier, MiB (at least 16).
    pub disk_mib: u64,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            memory_mib: 64,
            disk_mib: 256,
        }
    }
}

/// Largest accepted `telemetry.window_points`: with ~100 series per node this keeps the
/// leader's windows at tens of MiB per node at most.
pub const TELEMETRY_WINDOW_POINTS_MAX: u32 = 100_000;

/// Telemetry: what every node samples and how much of it the leader keeps.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// Every node samples its links, disk and CPU this often and reports to the leader.
    pub interval_ms: u64,
    /// Points the leader keeps per (node, series); older points are dropped.
    pub window_points: u32,
    /// Drills and experiments only: instead of asking `smartctl`, report the SMART raw
    /// values of this recorded daily history (`date,smart_5_raw,...`, as written by
    /// `arkd forecast extract-history`), one day per `smart_replay_day_ms`, holding the
    /// last day once the history is played.
    pub smart_replay: Option<PathBuf>,
    /// How long each replayed day lasts.
    pub smart_replay_day_ms: u64,
}

/// How the leader's repair queue orders its work.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum QueueOrdering {
    /// By expected loss: the chance that every live holder of a chunk fails within the
    /// forecast horizon, times the namespace's weight, plus ageing; nodes at risk neither
    /// count as safe copies nor receive new ones.
    ExpectedLoss,
    /// Risk-blind: namespace priority, then oldest first (the baseline for experiments).
    Fifo,
}

/// Risk-aware replication on the leader.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RiskConfig {
    /// Order of the repair queue.
    pub ordering: QueueOrdering,
    /// The object holding the failure forecaster's weights (`NAMESPACE/KEY`, written by
    /// `arkd forecast fit-failure` and `ark put`); the leader reloads it when it changes.
    pub model_object: String,
    /// The object holding a global load forecaster (`NAMESPACE/KEY`, written by `arkd forecast
    /// fit-load` and `ark put`). When it exists the leader forecasts every node's load with
    /// it, choosing per node between it, a copy fine-tuned on the node's own window and the
    /// naive baselines; without it the leader trains a per-node forecaster.
    pub load_model_object: String,
    /// A node whose failure probability is at least this is "at risk".
    pub at_risk_probability: f64,
    /// Length of one model day in milliseconds: the forecaster reads one row of SMART
    /// values per day. Drills replaying a history faster shorten it to match.
    pub day_ms: u64,
    /// Ageing: every this many seconds a chunk waits adds as much to its score as a certain
    /// loss in a weight-1 namespace, so nothing starves.
    pub ageing_s: u64,
    /// Pre-stage the cluster's most read objects in the chunk cache of the follower most
    /// likely to take over.
    pub prestage: bool,
    /// Defer repair batches that protect no endangered chunk while the load forecast of
    /// their source or target shows a trough ahead (at most one horizon). Off by default:
    /// in `ark bench pacing` it made repair take half as long again with no foreground
    /// latency gain beyond run-to-run noise (docs/forecasting.md).
    pub pace_into_troughs: bool,
    /// Load forecaster: past telemetry intervals it sees.
    pub load_window: usize,
    /// Load forecaster: intervals it forecasts.
    pub load_horizon: usize,
    /// The leader retrains each node's load forecaster this often, seconds.
    pub load_retrain_s: u64,
    /// A trough counts when the forecast minimum is below (1 - this) x the current load.
    pub trough_gain: f64,
    /// Loads under this many bytes per second are never worth waiting out.
    pub trough_floor_bytes_per_s: f64,
}

impl Default for RiskConfig {
    fn default() -> Self {
        Self {
            ordering: QueueOrdering::ExpectedLoss,
            model_object: "_ark/failure-model".into(),
            load_model_object: "_ark/load-model".into(),
            at_risk_probability: 0.9,
            day_ms: 86_400_000,
            ageing_s: 3600,
            prestage: true,
            pace_into_troughs: false,
            load_window: 36,
            load_horizon: 12,
            load_retrain_s: 3600,
            trough_gain: 0.3,
            trough_floor_bytes_per_s: 1_048_576.0,
        }
    }
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            interval_ms: 10_000,
            // One day at the default interval.
            window_points: 8_640,
            smart_replay: None,
            smart_replay_day_ms: 86_400_000,
        }
    }
}

/// Limits on the client API, enforced by `api` (see docs/security.md, "Limits"). Counts
/// and rates are per node: a client spread over every node gets each node's allowance.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Largest object an upload may store, in bytes: refused from the header when the
    /// announced size is larger, or as soon as the streamed bytes pass it.
    pub object_bytes_max: u64,
    /// Namespaces the cluster may hold. Checked by the node that receives the create and
    /// again when the create is applied, with this node's value carried in the command, so
    /// two concurrent creates cannot both pass; set it alike on every node.
    pub namespaces_max: u32,
    /// Most entries one page of a KV `List` or an `ListObjects` answers with; the answer
    /// carries a cursor for the next page.
    pub list_page_max: u32,
    /// Uploads one client identity may have in progress on this node at once.
    pub uploads_per_identity_max: u32,
    /// Requests per second one client identity may send to this node (a token bucket
    /// refilled at this rate); 0 = no rate limit.
    pub requests_per_second_per_identity: u32,
    /// The token bucket's size: requests one identity may send at once after a quiet
    /// period; 0 = one second's worth of `requests_per_second_per_identity`.
    pub requests_burst_per_identity: u32,
    /// Deadline of every RPC except uploads, downloads' bodies and the admin calls below.
    pub rpc_timeout_ms: u64,
    /// Uploads and downloads: longest wait for the client's next message (upload) or for
    /// the client to take the next one (download). A transfer of any size lives as long as
    /// it keeps moving.
    pub stream_idle_timeout_ms: u64,
    /// Deadline of the calls whose work grows with the data: `Verify`, `Scrub` and
    /// `AddLearner` (which may wait for the learner to catch up).
    pub admin_rpc_timeout_ms: u64,
}

/// Largest accepted `limits.list_page_max`: a page is one gRPC message.
pub const LIST_PAGE_MAX_MAX: u32 = 10_000;

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            object_bytes_max: 1 << 40,
            namespaces_max: 1000,
            list_page_max: 1000,
            uploads_per_identity_max: 16,
            requests_per_second_per_identity: 0,
            requests_burst_per_identity: 0,
            rpc_timeout_ms: 30_000,
            stream_idle_timeout_ms: 60_000,
            admin_rpc_timeout_ms: 2 * 3600 * 1000,
        }
    }
}

impl LimitsConfig {
    /// The problem with these values, if any.
    fn problem(&self) -> Option<String> {
        let l = self;
        if l.object_bytes_max == 0 {
            return Some("limits.object_bytes_max must be > 0".into());
        }
        if !(1..=1_000_000).contains(&l.namespaces_max) {
            return Some(format!(
                "limits.namespaces_max ({}) must be between 1 and 1000000",
                l.namespaces_max
            ));
        }
        if !(1..=LIST_PAGE_MAX_MAX).contains(&l.list_page_max) {
            return Some(format!(
                "limits.list_page_max ({}) must be between 1 and {LIST_PAGE_MAX_MAX}",
                l.list_page_max
            ));
        }
        if !(1..=100_000).contains(&l.uploads_per_identity_max) {
            return Some(format!(
                "limits.uploads_per_identity_max ({}) must be between 1 and 100000",
                l.uploads_per_identity_max
            ));
        }
        if l.requests_per_second_per_identity == 0 && l.requests_burst_per_identity != 0 {
            return Some("limits.requests_burst_per_identity needs limits.requests_per_second_per_identity > 0".into());
        }
        for (key, v) in [
            ("limits.rpc_timeout_ms", l.rpc_timeout_ms),
            ("limits.stream_idle_timeout_ms", l.stream_idle_timeout_ms),
            ("limits.admin_rpc_timeout_ms", l.admin_rpc_timeout_ms),
        ] {
            if !(100..=7 * 24 * 3600 * 1000).contains(&v) {
                return Some(format!("{key} ({v}) must be between 100 and 604800000 (a week)"));
            }
        }
        if l.admin_rpc_timeout_ms < l.rpc_timeout_ms {
            return Some("limits.admin_rpc_timeout_ms must be at least limits.rpc_timeout_ms".into());
        }
        None
    }
}

/// Fault injection on the peer transport, for drills and tests.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FaultsConfig {
    /// TOML file of fault rules, re-read every 100 ms (missing or empty = no faults).
    pub control_file: PathBuf,
}

/// Bootstrap of a brand-new cluster.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BootstrapConfig {
    /// Set on exactly one node of a new cluster: on first start, with an empty log, it
    /// initialises the cluster with itself and `peers` as voters. Ignored once initialised.
    #[serde(default)]
    pub initialize: bool,
    /// The other initial voters. Nodes added later join through `ark members add`.
    #[serde(default)]
    pub peers: Vec<PeerConfig>,
}

/// One other node of the initial cluster.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PeerConfig {
    /// Its node id.
    pub id: u64,
    /// Its site.
    pub site: String,
    /// Its QUIC peer address (`host:port`).
    pub peer_addr: String,
    /// Its gRPC client address (`host:port`).
    pub client_addr: String,
}

/// A config that cannot be used, with what to change.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The TOML is malformed or has unknown or mistyped keys.
    #[error("config file {path} is invalid: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's explanation, with line and column.
        message: String,
    },
    /// The values parse but do not make sense together.
    #[error("config is invalid: {0}")]
    Invalid(String),
}

impl NodeConfig {
    /// Reads, parses and validates a config file; relative TLS and data paths are made
    /// relative to the file's folder.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let mut cfg = Self::parse(&text).map_err(|e| match e {
            ConfigError::Parse { message, .. } => ConfigError::Parse {
                path: path.to_path_buf(),
                message,
            },
            other => other,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        for p in [&mut cfg.data_dir, &mut cfg.tls.ca, &mut cfg.tls.cert, &mut cfg.tls.key] {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        if let Some(p) = &mut cfg.tls.client_ca {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        if let Some(f) = &mut cfg.faults {
            if f.control_file.is_relative() {
                f.control_file = base.join(&f.control_file);
            }
        }
        if let Some(enc) = &mut cfg.encryption {
            for p in enc.kek_file.iter_mut().chain(enc.previous_kek_files.iter_mut()) {
                if p.is_relative() {
                    *p = base.join(&*p);
                }
            }
        }
        Ok(cfg)
    }

    /// Parses and validates TOML text.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let cfg: NodeConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: PathBuf::from("<text>"),
            message: e.to_string(),
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks values that types alone cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if self.node_id == 0 {
            return bad("node_id must be a positive integer (0 is reserved)".into());
        }
        if self.site.trim().is_empty() {
            return bad("site must not be empty".into());
        }
        let r = &self.raft;
        if r.heartbeat_interval_ms == 0 {
            return bad("raft.heartbeat_interval_ms must be > 0".into());
        }
        if r.election_timeout_min_ms <= r.heartbeat_interval_ms * 2 {
            return bad(format!(
                "raft.election_timeout_min_ms ({}) must exceed twice raft.heartbeat_interval_ms ({})",
                r.election_timeout_min_ms, r.heartbeat_interval_ms
            ));
        }
        if r.election_timeout_max_ms <= r.election_timeout_min_ms {
            return bad("raft.election_timeout_max_ms must be greater than raft.election_timeout_min_ms".into());
        }
        if !(1..=64).contains(&r.proposals_in_flight) {
            return bad("raft.proposals_in_flight must be between 1 and 64".into());
        }
        if !(1024..=64 * 1024 * 1024).contains(&r.append_entries_max_bytes) {
            return bad("raft.append_entries_max_bytes must be between 1024 and 67108864".into());
        }
        if r.rpc_timeout_ms == 0 {
            return bad("raft.rpc_timeout_ms must be > 0".into());
        }
        let t = &self.telemetry;
        if !(100..=3_600_000).contains(&t.interval_ms) {
            return bad(format!(
                "telemetry.interval_ms ({}) must be between 100 and 3600000",
                t.interval_ms
            ));
        }
        if !(1..=TELEMETRY_WINDOW_POINTS_MAX).contains(&t.window_points) {
            return bad(format!(
                "telemetry.window_points ({}) must be between 1 and {TELEMETRY_WINDOW_POINTS_MAX}",
                t.window_points
            ));
        }
        if t.smart_replay_day_ms == 0 {
            return bad("telemetry.smart_replay_day_ms must be > 0".into());
        }
        let k = &self.risk;
        if !(k.at_risk_probability > 0.0 && k.at_risk_probability <= 1.0) {
            return bad(format!(
                "risk.at_risk_probability ({}) must be in (0, 1]",
                k.at_risk_probability
            ));
        }
        if k.day_ms == 0 || k.ageing_s == 0 || k.load_retrain_s == 0 {
            return bad("risk.day_ms, risk.ageing_s and risk.load_retrain_s must be > 0".into());
        }
        if !(2..=1000).contains(&k.load_window) || !(1..=100).contains(&k.load_horizon) {
            return bad("risk.load_window must be 2..=1000 and risk.load_horizon 1..=100".into());
        }
        let gain_ok = k.trough_gain > 0.0 && k.trough_gain < 1.0;
        let floor_ok = k.trough_floor_bytes_per_s.is_finite() && k.trough_floor_bytes_per_s >= 0.0;
        if !gain_ok || !floor_ok {
            return bad("risk.trough_gain must be in (0, 1) and risk.trough_floor_bytes_per_s >= 0".into());
        }
        for (name, object) in [
            ("model_object", &k.model_object),
            ("load_model_object", &k.load_model_object),
        ] {
            match object.split_once('/') {
                Some((ns, key)) if !ns.is_empty() && !key.is_empty() => {}
                _ => return bad(format!("risk.{name} ({object:?}) must be NAMESPACE/KEY")),
            }
        }
        if let Some(problem) = self.limits.problem() {
            return bad(problem);
        }
        if let Some(enc) = &self.encryption {
            match (&enc.kek_file, &enc.kek_env) {
                (Some(_), None) => {}
                (None, Some(v)) if !v.is_empty() => {}
                _ => return bad("encryption: set exactly one of kek_file and kek_env".into()),
            }
            if enc.previous_kek_files.len() > PREVIOUS_KEKS_MAX {
                return bad(format!(
                    "encryption.previous_kek_files: at most {PREVIOUS_KEKS_MAX} files"
                ));
            }
        }
        let mut ids = std::collections::BTreeSet::from([self.node_id]);
        for p in &self.bootstrap.peers {
            if !ids.insert(p.id) || p.id == 0 {
                return bad(format!("bootstrap.peers: node id {} is zero or repeated", p.id));
            }
        }
        Ok(())
    }

    /// The peer address other nodes should dial.
    pub fn advertised_peer_addr(&self) -> String {
        self.advertise
            .as_ref()
            .map(|a| a.peer.clone())
            .unwrap_or_else(|| self.listen.peer.to_string())
    }

    /// The client address clients should dial.
    pub fn advertised_client_addr(&self) -> String {
        self.advertise
            .as_ref()
            .map(|a| a.client.clone())
            .unwrap_or_else(|| self.listen.client.to_string())
    }

    /// A documented sample, printed by `arkd --print-sample-config`.
    pub fn sample() -> &'static str {
        SAMPLE
    }
}

const SAMPLE: &str = r#"# arkd configuration. Every key is listed; unknown keys are rejected.

# Unique, non-zero id of this node. Never reuse an id, even after removing a node.
node_id = 1
# Site (data centre) this node runs in.
site = "site-a"
# "data" (default): stores chunks and serves clients. "witness": a voter that keeps only
# the Raft log and metadata, for the third place of a two-site deployment; it holds no
# chunks, refuses KV and object calls (naming the leader) and never stays leader.
role = "data"
# Raft log, state machine and snapshots live here (created if missing).
data_dir = "/var/lib/ark"

[listen]
# UDP address of the QUIC peer transport (mutual TLS).
peer = "127.0.0.1:7101"
# TCP address of the gRPC client API (TLS, client certificates required).
client = "127.0.0.1:7201"
# Plain-HTTP Prometheus endpoint (/metrics). Omit to disable.
metrics = "127.0.0.1:7301"

# Optional: addresses others dial, when they differ from the listen addresses.
# [advertise]
# peer = "ark-1.example.net:7101"
# client = "ark-1.example.net:7201"

[tls]
# PEM files; relative paths are relative to this file. Create them with `ark certs`.
# arkd reads them again on SIGHUP (`systemctl reload arkd`) and when they change.
# client_ca = "certs/clients-ca.pem"   # more CAs for client certificates only (not peers)
ca = "certs/ca.pem"
cert = "certs/node-1.pem"
key = "certs/node-1.key"
# Accept node certificates on the client API too (off: clients need `ark certs client`).
allow_node_clients = false

[raft]
# A follower that has heard no leader for election_timeout_max (the leader's lease) plus a
# random share of half the minimum asks the others for a pre-vote and campaigns with a
# majority: a lost leader is replaced after about max to max + min/2 (3-3.75 s here). Size
# them to the slowest link between sites: heartbeat a few round trips, max well above a
# heartbeat (docs/drills.md, "Measured recovery times").
heartbeat_interval_ms = 250
election_timeout_min_ms = 1500
election_timeout_max_ms = 3000
# Snapshot and compact the log after this many applied entries.
snapshot_logs_since_last = 20000
# Entries kept after a snapshot, so that briefly lagging followers need no snapshot.
logs_kept_after_snapshot = 5000
# Deadline of one peer RPC (snapshot chunks get 5x).
rpc_timeout_ms = 2000
# Log entries of client writes in flight; writes arriving meanwhile share the next entry.
proposals_in_flight = 2
# Encoded bytes of log entries per AppendEntries (at least one entry is sent): small enough
# to cross the slowest inter-site link within one heartbeat interval.
append_entries_max_bytes = 65536

[objects]
# A chunk holder silent for this long stops counting as a copy; its chunks are re-replicated.
holder_lost_after_ms = 30000
# How often the leader looks for chunks below their namespace's policy.
repair_interval_ms = 2000
# Chunks transferred in parallel (QUIC streams) per put or repair.
streams = 8
# Seconds between background scrub passes (0 = only `ark scrub`), and their rate limit.
scrub_interval_s = 86400
scrub_mib_per_s = 64
# Unreferenced chunk files older than this are deleted (uploads in progress are younger).
gc_grace_s = 3600
# Bandwidth budget of the repair queue, MiB/s (0 = unlimited).
repair_mib_per_s = 0

[cache]
# Hot chunks held by other nodes, cached here after a read: memory tier, then disk tier
# under <data_dir>/cache/.
memory_mib = 64
disk_mib = 256

[telemetry]
# Every node samples its peer links (round trip, throughput, RPCs in flight, timeouts,
# errors), log fsync latency, free space, CPU load and SMART attributes (when `smartctl`
# is installed) this often, and sends the sample to the leader.
interval_ms = 10000
# Points the leader keeps per node and series (8640 = one day at 10 s), at most 100000.
window_points = 8640

[risk]
# Repair queue order: "expected-loss" (chunks whose holders are likely to fail first; nodes
# at risk get no new copies and do not count as safe ones) or "fifo" (priority, then age).
ordering = "expected-loss"
# Weights of the failure forecaster (arkd forecast fit-failure, then ark put); without it
# no node has a failure probability and the queue falls back to priority and age.
model_object = "_ark/failure-model"
# A global load forecaster (arkd forecast fit-load --train DIR, then ark put); when present
# it forecasts every node's load (chosen per node against its fine-tuned copy and naive
# baselines on the node's own window) instead of a forecaster trained per node.
load_model_object = "_ark/load-model"
# Failure probability (within the model's horizon) from which a node is at risk.
at_risk_probability = 0.9
# One day of the model's daily SMART rows, ms.
day_ms = 86400000
# A chunk waiting this many seconds counts as much as a certain loss (no starvation).
ageing_s = 3600
# Warm the follower most likely to take over (another site than the leader's, not at risk)
# with the most read objects, in its chunk cache.
prestage = true
# The leader learns each node's peer traffic (net_bytes_per_second) with a load forecaster
# (window and horizon in telemetry intervals, retrained every load_retrain_s) and defers
# repairs that protect no endangered chunk while a trough below (1 - trough_gain) x the
# current load is forecast within the horizon, for loads above trough_floor_bytes_per_s.
# Off by default: it delayed repair without a measurable foreground gain (ark bench pacing).
pace_into_troughs = false
load_window = 36
load_horizon = 12
load_retrain_s = 3600
trough_gain = 0.3
trough_floor_bytes_per_s = 1048576.0

[limits]
# What one client may ask of this node (docs/security.md, "Limits"). Counts and rates are
# per node and per client identity (its certificate).
# Largest object, bytes (1 TiB); refused from the announced size or once the bytes pass it.
object_bytes_max = 1099511627776
# Namespaces in the cluster; checked again when the create is applied. Set alike everywhere.
namespaces_max = 1000
# Entries per page of a KV list or an object listing; the answer has a cursor to go on.
list_page_max = 1000
# Uploads one identity may have in progress on this node.
uploads_per_identity_max = 16
# Requests per second per identity (token bucket; 0 = unlimited) and the bucket's size
# (0 = one second's worth).
requests_per_second_per_identity = 0
requests_burst_per_identity = 0
# Deadline of every call but transfers and the admin calls.
rpc_timeout_ms = 30000
# Transfers: longest wait for the next message either way (the total is not bounded).
stream_idle_timeout_ms = 60000
# Deadline of Verify, Scrub and AddLearner.
admin_rpc_timeout_ms = 7200000

# Encryption at rest (optional section): the cluster's key-encryption key, which wraps the
# data keys of namespaces created with `ark ns create --encrypt`. 32 random bytes, raw or
# as 64 hex digits; the same on every node. Or `kek_env = "ARK_KEK"` instead of kek_file.
# [encryption]
# kek_file = "/etc/ark/kek"
# previous_kek_files = ["/etc/ark/kek.old"]

[bootstrap]
# true on exactly one node of a brand-new cluster; ignored once the cluster exists.
initialize = true

[[bootstrap.peers]]
id = 2
site = "site-b"
peer_addr = "127.0.0.1:7102"
client_addr = "127.0.0.1:7202"

[[bootstrap.peers]]
id = 3
site = "site-c"
peer_addr = "127.0.0.1:7103"
client_addr = "127.0.0.1:7203"
"#;

#[cfg(test)]
#[path = "config_props.rs"]
mod config_props;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sample_config_parses() {
        let cfg = NodeConfig::parse(NodeConfig::sample()).unwrap();
        assert_eq!(cfg.node_id, 1);
        assert_eq!(cfg.bootstrap.peers.len(), 2);
    }

    #[test]
    fn role_defaults_to_data_and_rejects_unknown_roles() {
        let cfg = NodeConfig::parse(NodeConfig::sample()).unwrap();
        assert_eq!(cfg.role, NodeRole::Data);
        let without = NodeConfig::sample().replace("role = \"data\"\n", "");
        assert!(!without.contains("role = "));
        assert_eq!(NodeConfig::parse(&without).unwrap().role, NodeRole::Data);
        let w = NodeConfig::sample().replace("role = \"data\"", "role = \"witness\"");
        assert_eq!(NodeConfig::parse(&w).unwrap().role, NodeRole::Witness);
        let err = NodeConfig::parse(&NodeConfig::sample().replace("role = \"data\"", "role = \"arbiter\""))
            .unwrap_err()
            .to_string();
        assert!(err.contains("arbiter") && err.contains("witness"), "{err}");
    }

    #[test]
    fn unknown_key_is_rejected_with_its_name() {
        let text = NodeConfig::sample().replace("site = \"site-a\"", "site = \"a\"\nsiet = 1");
        let err = NodeConfig::parse(&text).unwrap_err().to_string();
        assert!(err.contains("siet"), "{err}");
    }

    #[test]
    fn bad_timeouts_are_rejected() {
        let text = NodeConfig::sample().replace("election_timeout_min_ms = 1500", "election_timeout_min_ms = 100");
        let err = NodeConfig::parse(&text).unwrap_err().to_string();
        assert!(err.contains("election_timeout_min_ms"), "{err}");
    }

    #[test]
    fn telemetry_defaults_and_bounds() {
        let cfg = NodeConfig::parse(NodeConfig::sample()).unwrap();
        assert_eq!(cfg.telemetry, TelemetryConfig::default());
        // A key left out takes its default.
        let without = NodeConfig::sample().replace("interval_ms = 10000\n", "");
        assert!(!without.contains("interval_ms = 10000"));
        let cfg = NodeConfig::parse(&without).unwrap();
        assert_eq!(cfg.telemetry.interval_ms, 10_000);
        for (from, to, key) in [
            ("interval_ms = 10000", "interval_ms = 10", "telemetry.interval_ms"),
            ("window_points = 8640", "window_points = 0", "telemetry.window_points"),
            (
                "window_points = 8640",
                "window_points = 100001",
                "telemetry.window_points",
            ),
        ] {
            let err = NodeConfig::parse(&NodeConfig::sample().replace(from, to))
                .unwrap_err()
                .to_string();
            assert!(err.contains(key), "{err}");
        }
    }

    #[test]
    fn limits_defaults_and_bounds() {
        let cfg = NodeConfig::parse(NodeConfig::sample()).unwrap();
        assert_eq!(cfg.limits, LimitsConfig::default());
        for (from, to, key) in [
            (
                "object_bytes_max = 1099511627776",
                "object_bytes_max = 0",
                "limits.object_bytes_max",
            ),
            ("namespaces_max = 1000", "namespaces_max = 0", "limits.namespaces_max"),
            ("list_page_max = 1000", "list_page_max = 10001", "limits.list_page_max"),
            (
                "uploads_per_identity_max = 16",
                "uploads_per_identity_max = 0",
                "limits.uploads_per_identity_max",
            ),
            (
                "requests_burst_per_identity = 0",
                "requests_burst_per_identity = 5",
                "limits.requests_burst_per_identity",
            ),
            ("rpc_timeout_ms = 30000", "rpc_timeout_ms = 10", "limits.rpc_timeout_ms"),
            (
                "admin_rpc_timeout_ms = 7200000",
                "admin_rpc_timeout_ms = 1000",
                "limits.admin_rpc_timeout_ms",
            ),
        ] {
            let text = NodeConfig::sample().replace(from, to);
            assert_ne!(text, NodeConfig::sample(), "{from} is in the sample");
            let err = NodeConfig::parse(&text).unwrap_err().to_string();
            assert!(err.contains(key), "{err}");
        }
    }

    #[test]
    fn repeated_peer_id_is_rejected() {
        let text = NodeConfig::sample().replace("id = 3", "id = 2");
        assert!(NodeConfig::parse(&text).is_err());
    }

    #[test]
    fn encryption_needs_exactly_one_kek_source() {
        let text =
            |section: &str| NodeConfig::sample().replace("\n[bootstrap]\n", &format!("\n{section}\n[bootstrap]\n"));
        let ok = NodeConfig::parse(&text("[encryption]\nkek_file = \"/k\"")).unwrap();
        assert_eq!(ok.encryption.unwrap().kek_file, Some(PathBuf::from("/k")));
        assert!(NodeConfig::parse(&text("[encryption]\nkek_env = \"ARK_KEK\"")).is_ok());
        for bad in [
            "[encryption]",
            "[encryption]\nkek_file = \"/k\"\nkek_env = \"ARK_KEK\"",
            "[encryption]\nkek_env = \"\"",
            "[encryption]\nkek_fil = \"/k\"",
        ] {
            assert!(NodeConfig::parse(&text(bad)).is_err(), "{bad}");
        }
        assert!(NodeConfig::parse(NodeConfig::sample()).unwrap().encryption.is_none());
    }
}
