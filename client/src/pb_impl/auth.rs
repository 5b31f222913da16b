//! `ark.v1` auth messages to and from the SDK's [`crate::types::auth`] types.

use ark_proto::v1 as pb;

use crate::types::auth::{AuditTail, Grant, Grants, WhoAmI};

impl From<pb::GrantSpec> for Grant {
    fn from(g: pb::GrantSpec) -> Self {
        Self {
            permission: g.permission,
            target: g.target,
        }
    }
}

impl From<Grant> for pb::GrantSpec {
    fn from(g: Grant) -> Self {
        Self {
            permission: g.permission,
            target: g.target,
        }
    }
}

impl From<pb::WhoAmIResponse> for WhoAmI {
    fn from(r: pb::WhoAmIResponse) -> Self {
        Self {
            identity: r.identity,
            admin: r.admin,
            grants: r.grants.into_iter().map(Grant::from).collect(),
        }
    }
}

impl From<pb::ListGrantsResponse> for Grants {
    fn from(r: pb::ListGrantsResponse) -> Self {
        Self {
            identities: r
                .identities
                .into_iter()
                .map(|i| (i.identity, i.grants.into_iter().map(Grant::from).collect()))
                .collect(),
            locked: r.locked,
            bootstrap_admin: r.bootstrap_admin,
        }
    }
}

impl From<pb::AuditTailResponse> for AuditTail {
    fn from(r: pb::AuditTailResponse) -> Self {
        Self {
            node_id: r.node_id,
            lines: r.lines,
        }
    }
}
