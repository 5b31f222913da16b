//! The membership view: who is in the cluster (voters and learners, with their sites and
//! peer addresses), which of them are witnesses (`raft::roles`), and who leads, as this
//! node's Raft and state machine see it now.
//!
//! Owns reading the membership out of Raft's metrics. Must not touch: changing membership
//! (the `Cluster` gRPC service does that through Raft), the network.

use std::collections::BTreeSet;

use super::roles::RoleView;
use super::{ArkRaft, NodeId};

/// A cluster member as the layers above consensus see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// Node id.
    pub id: NodeId,
    /// Site.
    pub site: String,
    /// QUIC peer address.
    pub addr: String,
}

/// This node's view of the membership; cheap to clone.
#[derive(Clone)]
pub struct Members {
    id: NodeId,
    raft: ArkRaft,
    roles: RoleView,
}

impl Members {
    /// The view of node `id` over its Raft and the applied roles.
    pub fn new(id: NodeId, raft: ArkRaft, roles: RoleView) -> Self {
        Self { id, raft, roles }
    }

    /// Members that may hold chunks and serve data: every member but the witnesses. What
    /// placement, the repair queue, scrub and pre-staging choose from.
    pub fn data_peers(&self) -> Vec<Peer> {
        let witnesses = self.roles.witnesses();
        self.all().into_iter().filter(|p| !witnesses.contains(&p.id)).collect()
    }

    /// Whether the cluster knows `id` as a witness.
    pub fn is_witness(&self, id: NodeId) -> bool {
        self.roles.is_witness(id)
    }

    /// The applied roles.
    pub fn roles(&self) -> &RoleView {
        &self.roles
    }

    /// This node.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// Current members (voters and learners) with their sites and peer addresses.
    pub fn all(&self) -> Vec<Peer> {
        let m = self.raft.metrics().borrow().membership_config.clone();
        m.nodes()
            .map(|(id, n)| Peer {
                id: *id,
                site: n.site.clone(),
                addr: n.peer_addr.clone(),
            })
            .collect()
    }

    /// Member `id`, if it is one.
    pub fn get(&self, id: NodeId) -> Option<Peer> {
        self.all().into_iter().find(|p| p.id == id)
    }

    /// Current voters.
    pub fn voter_ids(&self) -> Vec<NodeId> {
        self.raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .voter_ids()
            .collect()
    }

    /// The leader this node knows of.
    pub fn leader(&self) -> Option<NodeId> {
        self.raft.metrics().borrow().current_leader
    }

    /// The index of the last log entry this node's state machine applied (`None` before
    /// the first). Every change to the replicated tables moves it.
    pub fn applied_index(&self) -> Option<u64> {
        self.raft.metrics().borrow().last_applied.map(|l| l.index)
    }

    /// Whether this node is the leader now.
    pub fn is_leader(&self) -> bool {
        self.leader() == Some(self.id)
    }

    /// Sites of the given nodes (see [`sites_of`]).
    pub fn sites_of(&self, nodes: &[NodeId]) -> BTreeSet<String> {
        sites_of(&self.all(), nodes)
    }
}

/// Sites of `nodes` among `members`; a node that is not a member counts as a site of its
/// own, so an unknown holder never makes a copy count for a known site.
pub fn sites_of(members: &[Peer], nodes: &[NodeId]) -> BTreeSet<String> {
    nodes
        .iter()
        .map(|n| {
            members
                .iter()
                .find(|m| m.id == *n)
                .map(|m| m.site.clone())
                .unwrap_or_else(|| format!("?node-{n}"))
        })
        .collect()
}
