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

/// Each member's site as a small number, so that counting the sites of a chunk's holders
/// allocates nothing (the repair planner does it for every chunk).
/// Counts as [`sites_of`] does: a node that is not a member is a site of its own.
pub struct SiteIndex(std::collections::HashMap<NodeId, u64>);

impl SiteIndex {
    /// The index of `members`' sites.
    pub fn new(members: &[Peer]) -> Self {
        let mut names: std::collections::HashMap<&str, u64> = std::collections::HashMap::new();
        let mut of = std::collections::HashMap::new();
        for m in members {
            let next = names.len() as u64;
            of.insert(m.id, *names.entry(m.site.as_str()).or_insert(next));
        }
        Self(of)
    }

    /// Distinct sites among `nodes`.
    pub fn count(&self, nodes: &[NodeId]) -> usize {
        let mut seen: Vec<u64> = Vec::with_capacity(nodes.len());
        for n in nodes {
            let site = self.0.get(n).copied().unwrap_or(u64::MAX - *n);
            if !seen.contains(&site) {
                seen.push(site);
            }
        }
        seen.len()
    }
}

/// Six members in three sites (a: 1, 2; b: 3, 4; c: 5, 6), for tests here and above.
#[cfg(test)]
pub(crate) fn six_in_three_sites() -> Vec<Peer> {
    (1..=6)
        .map(|n| Peer {
            id: n,
            site: ["a", "b", "c"][((n - 1) / 2) as usize].to_string(),
            addr: String::new(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_site_index_counts_sites_as_sites_of_does() {
        let members = six_in_three_sites();
        let index = SiteIndex::new(&members);
        // Members, repeated members, and nodes that are not members (a site each).
        for nodes in [
            vec![],
            vec![1],
            vec![1, 2],
            vec![1, 3, 5],
            vec![2, 2, 4],
            vec![7],
            vec![7, 8, 1],
            vec![7, 7],
        ] {
            assert_eq!(index.count(&nodes), sites_of(&members, &nodes).len(), "{nodes:?}");
        }
    }
}
