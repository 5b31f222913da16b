//! The leader's telemetry windows.

use ark_proto::v1 as pb;

use crate::types::{ClusterTelemetry, NodeTelemetry, TelemetrySeries};

impl From<pb::TelemetryResponse> for ClusterTelemetry {
    fn from(t: pb::TelemetryResponse) -> Self {
        Self {
            leader_id: t.leader_id,
            interval_ms: t.interval_ms,
            window_points: t.window_points,
            nodes: t.nodes.into_iter().map(NodeTelemetry::from).collect(),
        }
    }
}

impl From<pb::NodeTelemetry> for NodeTelemetry {
    fn from(n: pb::NodeTelemetry) -> Self {
        Self {
            node_id: n.node_id,
            last_report_age_ms: n.last_report_age_ms,
            series: n.series.into_iter().map(TelemetrySeries::from).collect(),
        }
    }
}

impl From<pb::TelemetrySeries> for TelemetrySeries {
    fn from(s: pb::TelemetrySeries) -> Self {
        Self {
            name: s.name,
            latest: s.latest,
            latest_unix_ms: s.latest_unix_ms,
            points: s.points,
        }
    }
}
