//! Object versions and the reports about them.

use ark_proto::v1 as pb;

use crate::types::{DeletedObject, NodeScrub, ObjectInfo, ObjectReport, ScrubReport, VerifyReport};

impl From<pb::ObjectInfo> for ObjectInfo {
    fn from(o: pb::ObjectInfo) -> Self {
        Self {
            namespace: o.namespace,
            key: o.key,
            version: o.version,
            size: o.size,
            sha256: o.sha256,
            chunks: o.chunks,
            created_ms: o.created_ms,
            deleted: o.deleted,
        }
    }
}

impl From<pb::DeleteObjectResponse> for DeletedObject {
    fn from(d: pb::DeleteObjectResponse) -> Self {
        Self {
            existed: d.existed,
            version: d.version,
        }
    }
}

impl From<pb::ObjectReport> for ObjectReport {
    fn from(r: pb::ObjectReport) -> Self {
        Self {
            object: r.object.map(ObjectInfo::from).unwrap_or_default(),
            at_policy: r.at_policy,
            copies: r.copies,
            sites: r.sites,
            bad_copies: r.bad_copies,
            problems: r.problems,
        }
    }
}

impl From<pb::VerifyResponse> for VerifyReport {
    fn from(v: pb::VerifyResponse) -> Self {
        Self {
            objects: v.objects.into_iter().map(ObjectReport::from).collect(),
            all_at_policy: v.all_at_policy,
        }
    }
}

impl From<pb::NodeScrub> for NodeScrub {
    fn from(n: pb::NodeScrub) -> Self {
        Self {
            node_id: n.node_id,
            chunks_checked: n.chunks_checked,
            bytes_checked: n.bytes_checked,
            corrupt: n.corrupt,
            missing: n.missing,
            repaired: n.repaired,
            error: n.error,
        }
    }
}

impl From<pb::ScrubResponse> for ScrubReport {
    fn from(s: pb::ScrubResponse) -> Self {
        Self {
            nodes: s.nodes.into_iter().map(NodeScrub::from).collect(),
        }
    }
}
