//! `ark.v1.Cluster`: status as this node sees it, membership changes (learner add,
//! promote, remove), which the leader commits through Raft, the leadership hand-over, and
//! the leader's telemetry.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use ark_proto::v1::cluster_server::Cluster;
use ark_proto::v1::{
    AddLearnerRequest, MembershipResponse, NodeStatus, PromoteRequest, QueueEntry, RemoveRequest, SaveSnapshotRequest,
    StatusRequest, StatusResponse, TelemetryRequest, TelemetryResponse, TransferLeaderRequest, TransferLeaderResponse,
};
use openraft::error::{ClientWriteError, RaftError};
use openraft::raft::ClientWriteResponse;
use openraft::{ChangeMembers, ServerState};
use tonic::{Request, Response, Status};

use super::auth::Authz;
use super::limits::Limits;
use super::snapshot::{SnapshotSaver, SnapshotStream};
use crate::config::{LimitsConfig, QueueOrdering};
use crate::net::PeerPool;
use crate::raft::auth::Need;
use crate::raft::error::ConsensusError;
use crate::raft::{ArkNode, ArkRaft, NodeId, TypeConfig};
use crate::replicate::DataPlane;
use crate::risk::Risk;
use crate::telemetry::Telemetry;

/// The Cluster service.
pub struct ClusterService {
    authz: Authz,
    raft: ArkRaft,
    pool: PeerPool,
    node_id: NodeId,
    /// A peer that answered within this window counts as healthy.
    healthy_within: Duration,
    telemetry: Arc<Telemetry>,
    risk: Arc<Risk>,
    dp: Arc<DataPlane>,
    limits: Arc<Limits>,
    /// Metadata snapshots (`SaveSnapshot`); absent in services built without them.
    snapshots: Option<SnapshotSaver>,
}

impl ClusterService {
    /// A service over the node's Raft, peer pool and telemetry.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        authz: Authz,
        raft: ArkRaft,
        pool: PeerPool,
        node_id: NodeId,
        healthy_within: Duration,
        telemetry: Arc<Telemetry>,
        risk: Arc<Risk>,
        dp: Arc<DataPlane>,
    ) -> Self {
        Self {
            authz,
            raft,
            pool,
            node_id,
            healthy_within,
            telemetry,
            risk,
            dp,
            limits: Arc::new(Limits::new(LimitsConfig::default())),
            snapshots: None,
        }
    }

    /// Serves `SaveSnapshot` from `saver`.
    pub fn with_snapshots(mut self, saver: SnapshotSaver) -> Self {
        self.snapshots = Some(saver);
        self
    }

    /// The node's `[limits]` instead of the defaults.
    pub fn with_limits(mut self, limits: Arc<Limits>) -> Self {
        self.limits = limits;
        self
    }
}

fn map_write_err(e: RaftError<NodeId, ClientWriteError<NodeId, ArkNode>>) -> Status {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => ConsensusError::not_leader(&f).into(),
        RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => {
            Status::failed_precondition(format!("membership change refused: {e}"))
        }
        RaftError::Fatal(e) => Status::unavailable(format!("node cannot serve: {e}")),
    }
}

fn membership_response(r: ClientWriteResponse<TypeConfig>) -> MembershipResponse {
    let (voters, learners) = match &r.membership {
        Some(m) => {
            let voters: BTreeSet<NodeId> = m.voter_ids().collect();
            let learners = m.learner_ids().filter(|id| !voters.contains(id)).collect();
            (voters.into_iter().collect(), learners)
        }
        None => (Vec::new(), Vec::new()),
    };
    MembershipResponse {
        revision: r.log_id.index,
        voters,
        learners,
    }
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn status(&self, request: Request<StatusRequest>) -> Result<Response<StatusResponse>, Status> {
        // Membership and health, no data: any identity that holds some grant may look (an
        // identity with none can do nothing at all).
        let who = self.authz.identify(&request, "Cluster/Status")?;
        let auth = self.authz.state();
        if !auth.is_admin(&who.identity) && !auth.grants.contains_key(&who.identity) {
            self.authz.check(&who, "Cluster/Status", Need::Admin)?;
        }
        let m = self.raft.metrics().borrow().clone();
        let membership = m.membership_config.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let is_leader = m.state == ServerState::Leader;
        let troughs = if is_leader {
            self.risk.troughs()
        } else {
            Default::default()
        };
        let risks = if is_leader {
            self.risk.risks()
        } else {
            Default::default()
        };
        let nodes = membership
            .nodes()
            .map(|(id, node)| {
                let healthy = if *id == self.node_id {
                    true
                } else if is_leader {
                    self.pool.since_last_ok(*id).is_some_and(|d| d <= self.healthy_within)
                } else {
                    m.current_leader == Some(*id)
                };
                let matched_index = m
                    .replication
                    .as_ref()
                    .and_then(|r| r.get(id).cloned().flatten())
                    .map(|l| l.index)
                    .unwrap_or(0);
                NodeStatus {
                    id: *id,
                    site: node.site.clone(),
                    role: if voters.contains(id) { "voter" } else { "learner" }.to_string(),
                    client_addr: node.client_addr.clone(),
                    peer_addr: node.peer_addr.clone(),
                    healthy,
                    matched_index,
                    failure_risk: risks.get(id).map(|r| r.probability),
                    risk_days: risks.get(id).map_or(0, |r| r.days as u32),
                    at_risk: is_leader && self.risk.at_risk(*id),
                    load_bytes_per_second: troughs.get(id).map(|t| t.now),
                    load_forecast_min: troughs.get(id).map(|t| t.min),
                    load_trough_in: troughs.get(id).map_or(0, |t| t.steps as u32),
                    witness: self.dp.members.is_witness(*id),
                }
            })
            .collect();
        let state = match m.state {
            ServerState::Leader => "leader",
            ServerState::Follower => "follower",
            ServerState::Candidate => "candidate",
            ServerState::Learner => "learner",
            ServerState::Shutdown => "shutdown",
        };
        let (prestage_node, prestage_objects) = match self.risk.prestaged() {
            Some((n, o)) if is_leader => (n, o as u32),
            _ => (0, 0),
        };
        let (queue_head, queue_chunks, queue_ordering, risk_model) = if is_leader {
            let (head, chunks) = self.dp.queue_head();
            let ordering = match self.risk.config().ordering {
                QueueOrdering::ExpectedLoss => "expected-loss",
                QueueOrdering::Fifo => "fifo",
            };
            let head = head
                .into_iter()
                .map(|e| QueueEntry {
                    object: e.object,
                    chunk: e.chunk,
                    bytes: e.bytes,
                    holders: e.holders,
                    loss_probability: e.loss_probability,
                    score: e.score,
                })
                .collect();
            (
                head,
                chunks,
                ordering.to_string(),
                self.risk.model().unwrap_or_default(),
            )
        } else {
            (Vec::new(), 0, String::new(), String::new())
        };
        Ok(Response::new(StatusResponse {
            node_id: self.node_id,
            leader_id: m.current_leader,
            term: m.current_term,
            last_log_index: m.last_log_index.unwrap_or(0),
            applied_index: m.last_applied.map(|l| l.index).unwrap_or(0),
            nodes,
            state: state.to_string(),
            queue_head,
            queue_chunks,
            queue_ordering,
            risk_model,
            prestage_node,
            prestage_objects,
        }))
    }

    async fn telemetry(&self, request: Request<TelemetryRequest>) -> Result<Response<TelemetryResponse>, Status> {
        self.authz.require(&request, "Cluster/Telemetry", Need::Admin)?;
        match self.telemetry.snapshot() {
            Some(t) => Ok(Response::new(t)),
            None => {
                // Only the leader holds the windows: point the client at it.
                let m = self.raft.metrics().borrow().clone();
                Err(ConsensusError::not_leader_seen_in(&m).into())
            }
        }
    }

    async fn add_learner(&self, request: Request<AddLearnerRequest>) -> Result<Response<MembershipResponse>, Status> {
        let target = format!("node {}", request.get_ref().node.as_ref().map_or(0, |n| n.id));
        let call = self.authz.admin(&request, "Cluster/AddLearner", target)?;
        call.done(self.add_learner_now(request).await)
    }

    async fn promote(&self, request: Request<PromoteRequest>) -> Result<Response<MembershipResponse>, Status> {
        let call = self
            .authz
            .admin(&request, "Cluster/Promote", format!("node {}", request.get_ref().id))?;
        call.done(self.promote_now(request).await)
    }

    async fn remove(&self, request: Request<RemoveRequest>) -> Result<Response<MembershipResponse>, Status> {
        let call = self
            .authz
            .admin(&request, "Cluster/Remove", format!("node {}", request.get_ref().id))?;
        call.done(self.remove_now(request).await)
    }

    async fn transfer_leader(
        &self,
        request: Request<TransferLeaderRequest>,
    ) -> Result<Response<TransferLeaderResponse>, Status> {
        let to = request.get_ref().to;
        let target = if to == 0 {
            "the best voter".to_string()
        } else {
            format!("node {to}")
        };
        let call = self.authz.admin(&request, "Cluster/TransferLeader", target)?;
        let m = self.raft.metrics().borrow().clone();
        if to == self.node_id && m.current_leader == Some(self.node_id) {
            return call.done(Ok(Response::new(TransferLeaderResponse {
                leader: self.node_id,
                term: m.current_term,
                took_ms: 0,
            })));
        }
        if to != 0 && self.dp.members.is_witness(to) {
            return call.done(Err(Status::failed_precondition(format!(
                "node {to} is a witness: it holds no data and cannot lead; name a data voter, or 0 for the most caught-up one"
            ))));
        }
        let deadline = self.hand_over_deadline();
        // Never to a witness (it would hand the leadership on at once).
        let witnesses: Vec<u64> = self.dp.members.roles().witnesses().into_iter().collect();
        let res = self
            .dp
            .front
            .transfer_leader((to != 0).then_some(to), &witnesses, deadline)
            .await
            .map(|h| {
                Response::new(TransferLeaderResponse {
                    leader: h.leader,
                    term: h.term,
                    took_ms: h.took.as_millis() as u64,
                })
            })
            .map_err(Status::from);
        call.done(res)
    }

    type SaveSnapshotStream = SnapshotStream;

    async fn save_snapshot(
        &self,
        request: Request<SaveSnapshotRequest>,
    ) -> Result<Response<Self::SaveSnapshotStream>, Status> {
        let call = self
            .authz
            .admin(&request, "Cluster/SaveSnapshot", "metadata snapshot")?;
        let res = match &self.snapshots {
            Some(s) => s.save(request).await,
            None => Err(Status::unimplemented("this node does not serve metadata snapshots")),
        };
        call.done(res)
    }
}

/// The membership changes, once admitted.
impl ClusterService {
    /// How long a hand-over may hold writes: the target's catch-up and up to two of its
    /// campaigns (a larger cluster's voters refuse the first one while the old leader's
    /// lease lasts).
    fn hand_over_deadline(&self) -> Duration {
        let max = self.raft.config().election_timeout_max;
        Duration::from_millis(3 * max).max(Duration::from_secs(2))
    }

    async fn add_learner_now(
        &self,
        request: Request<AddLearnerRequest>,
    ) -> Result<Response<MembershipResponse>, Status> {
        let r = request.into_inner();
        let spec = r
            .node
            .ok_or_else(|| Status::invalid_argument("node is required (id, site, peer_addr, client_addr)"))?;
        if spec.id == 0 {
            return Err(Status::invalid_argument("node id must be a positive integer"));
        }
        if spec.site.is_empty() || spec.peer_addr.is_empty() || spec.client_addr.is_empty() {
            return Err(Status::invalid_argument(
                "site, peer_addr and client_addr are all required",
            ));
        }
        let node = ArkNode {
            site: spec.site,
            peer_addr: spec.peer_addr,
            client_addr: spec.client_addr,
        };
        let res = self
            .raft
            .add_learner(spec.id, node, r.wait_caught_up)
            .await
            .map_err(map_write_err)?;
        metrics::counter!("ark_membership_changes_total", "op" => "add_learner").increment(1);
        Ok(Response::new(membership_response(res)))
    }

    async fn promote_now(&self, request: Request<PromoteRequest>) -> Result<Response<MembershipResponse>, Status> {
        let id = request.into_inner().id;
        let res = self
            .raft
            .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false)
            .await
            .map_err(map_write_err)?;
        metrics::counter!("ark_membership_changes_total", "op" => "promote").increment(1);
        Ok(Response::new(membership_response(res)))
    }

    async fn remove_now(&self, request: Request<RemoveRequest>) -> Result<Response<MembershipResponse>, Status> {
        let id = request.into_inner().id;
        let m = self.raft.metrics().borrow().clone();
        let membership = m.membership_config.membership();
        let is_voter = membership.voter_ids().any(|v| v == id);
        let known = membership.nodes().any(|(n, _)| *n == id);
        if !known {
            return Err(Status::not_found(format!("node {id} is not a member of the cluster")));
        }
        let change: ChangeMembers<NodeId, ArkNode> = if is_voter {
            ChangeMembers::RemoveVoters(BTreeSet::from([id]))
        } else {
            ChangeMembers::RemoveNodes(BTreeSet::from([id]))
        };
        let res = self
            .raft
            .change_membership(change, false)
            .await
            .map_err(map_write_err)?;
        metrics::counter!("ark_membership_changes_total", "op" => "remove").increment(1);
        Ok(Response::new(membership_response(res)))
    }
}

/// Describes this module's metrics (HELP text and unit) to the recorder; called once at start-up by
/// `server` (through `metrics::install`).
pub(crate) fn describe_metrics() {
    use metrics::describe_counter;
    describe_counter!(
        "ark_membership_changes_total",
        "Membership changes committed through this node, by op (add_learner, promote, remove)."
    );
}
