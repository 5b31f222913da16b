//! Cluster state: status, members and membership changes.

/// The cluster as one node sees it (`ArkClient::status`: the leader when reachable).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClusterStatus {
    /// The node that answered.
    pub node_id: u64,
    /// The leader it knows of, if any.
    pub leader_id: Option<u64>,
    /// Its current Raft term.
    pub term: u64,
    /// Its last log index.
    pub last_log_index: u64,
    /// Its last applied index.
    pub applied_index: u64,
    /// Every member, with health and (from the leader) risk.
    pub nodes: Vec<NodeStatus>,
    /// Its Raft state: `leader`, `follower`, `candidate` or `learner`.
    pub state: String,
    /// The first chunks of the leader's repair queue (empty from a follower).
    pub queue_head: Vec<QueueEntry>,
    /// Chunks in the repair queue.
    pub queue_chunks: u64,
    /// The queue's order: `expected-loss` or `fifo`.
    pub queue_ordering: String,
    /// The failure forecaster in use (`NAMESPACE/KEY@version`), empty when none.
    pub risk_model: String,
    /// The follower the leader pre-stages the hot set on, if any.
    pub prestage_node: Option<u64>,
    /// Objects in that hot set.
    pub prestage_objects: u32,
}

/// One member as the answering node sees it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NodeStatus {
    /// Node id.
    pub id: u64,
    /// Its site.
    pub site: String,
    /// `voter` or `learner`.
    pub role: String,
    /// Its gRPC address.
    pub client_addr: String,
    /// Its QUIC peer address.
    pub peer_addr: String,
    /// Whether it answers the leader.
    pub healthy: bool,
    /// The last log index known to be replicated to it.
    pub matched_index: u64,
    /// Its probability of failure over the forecaster's horizon (leader only; `None` with
    /// no SMART data or no forecaster).
    pub failure_risk: Option<f64>,
    /// Days of history that probability was judged on.
    pub risk_days: u32,
    /// Whether the failure probability reaches the at-risk threshold.
    pub at_risk: bool,
    /// Its peer traffic now (leader only).
    pub load_bytes_per_second: Option<f64>,
    /// The lowest traffic its load forecast shows ahead (leader only).
    pub load_forecast_min: Option<f64>,
    /// In how many telemetry intervals that low comes.
    pub load_trough_in: u32,
    /// A witness voter: keeps the Raft log, holds no data, refuses KV and object calls.
    pub witness: bool,
}

/// One chunk at the head of the repair queue.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct QueueEntry {
    /// `namespace/key` of an object that refers to it.
    pub object: String,
    /// Chunk id (hex).
    pub chunk: String,
    /// Its size.
    pub bytes: u64,
    /// Nodes holding a copy.
    pub holders: Vec<u64>,
    /// Probability that every copy is lost.
    pub loss_probability: f64,
    /// The queue's score (higher goes first).
    pub score: f64,
}

/// A node to add to the cluster.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeSpec {
    /// Its node id (positive).
    pub id: u64,
    /// Its site.
    pub site: String,
    /// Its QUIC peer address.
    pub peer_addr: String,
    /// Its gRPC client address.
    pub client_addr: String,
}

/// The outcome of a leadership hand-over.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LeaderTransfer {
    /// The node that leads now.
    pub leader: u64,
    /// Its term.
    pub term: u64,
    /// How long the old leader held new writes (0 when the named node already led).
    pub took_ms: u64,
}

/// The membership after a change.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Membership {
    /// Log index of the change.
    pub revision: u64,
    /// Voting members.
    pub voters: Vec<u64>,
    /// Non-voting members.
    pub learners: Vec<u64>,
}
