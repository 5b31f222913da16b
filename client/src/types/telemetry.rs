//! What the leader holds of every node's telemetry.

/// The leader's telemetry windows (`ArkClient::telemetry`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClusterTelemetry {
    /// The leader that answered.
    pub leader_id: u64,
    /// Sampling interval of every node.
    pub interval_ms: u64,
    /// Points the leader keeps per node and series.
    pub window_points: u32,
    /// Per node.
    pub nodes: Vec<NodeTelemetry>,
}

/// One node's series.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NodeTelemetry {
    /// Node id.
    pub node_id: u64,
    /// Age of its latest report.
    pub last_report_age_ms: u64,
    /// Its series.
    pub series: Vec<TelemetrySeries>,
}

/// One series of one node.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TelemetrySeries {
    /// Series name, e.g. `link_rtt_seconds:2`.
    pub name: String,
    /// Latest value.
    pub latest: f64,
    /// When it was sampled (ms since the Unix epoch).
    pub latest_unix_ms: u64,
    /// Points the window holds.
    pub points: u32,
}
