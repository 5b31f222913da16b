//! The front door of consensus on any node: a write proposed here goes to the local
//! proposer on the leader and is forwarded to the leader over the peer transport from a
//! follower; a linearizable read is fenced on the leader and, on a follower, waits for a
//! read index from the leader. Also the leader's side of both (a follower's forwarded write,
//! a read-index request).
//!
//! Owns forwarding and read indexes. Must not touch: gRPC (errors are [`ConsensusError`]s),
//! chunks.

use std::sync::Arc;
use std::time::Duration;

use ark_proto::v1::{peer_request, peer_response, PeerRequest, RaftCodec, ReadIndex};

use super::codec::{decode, encode};
use super::error::ConsensusError;
use super::fence::ReadFence;
use super::members::{Members, Peer};
use super::proposer::Proposer;
use super::{ArkRaft, Op, OpResult};
use crate::net::PeerPool;

/// Writes and linearizable reads from anywhere in the node.
pub struct Front {
    members: Members,
    raft: ArkRaft,
    proposer: Proposer,
    fence: Arc<ReadFence>,
    pool: PeerPool,
    rpc_timeout: Duration,
}

impl Front {
    /// The front door of this node's Raft; `rpc_timeout` bounds each call to the leader.
    pub fn new(
        members: Members,
        raft: ArkRaft,
        proposer: Proposer,
        fence: Arc<ReadFence>,
        pool: PeerPool,
        rpc_timeout: Duration,
    ) -> Self {
        Self {
            members,
            raft,
            proposer,
            fence,
            pool,
            rpc_timeout,
        }
    }

    /// The membership view.
    pub fn members(&self) -> &Members {
        &self.members
    }

    /// The local proposer (meaningful on the leader; elsewhere it answers "not leader").
    pub fn proposer(&self) -> &Proposer {
        &self.proposer
    }

    /// This node's Raft.
    pub(crate) fn raft(&self) -> &ArkRaft {
        &self.raft
    }

    /// The peer connection pool.
    pub(crate) fn pool(&self) -> &PeerPool {
        &self.pool
    }

    /// The local read fence (meaningful on the leader).
    pub fn fence(&self) -> &ReadFence {
        &self.fence
    }

    async fn call_leader(&self, leader: &Peer, body: peer_request::Body, timeout: Duration) -> Result<Vec<u8>, String> {
        let req = PeerRequest {
            from: self.members.id(),
            raft_codec: RaftCodec::Unspecified as i32,
            body: Some(body),
        };
        match self.pool.call(leader.id, &leader.addr, &req, timeout).await {
            Ok(r) => match r.body {
                Some(peer_response::Body::Ok(b)) => Ok(b),
                Some(peer_response::Body::Failure(msg)) => Err(msg),
                _ => Err("the leader sent an unexpected answer".into()),
            },
            Err(e) => Err(e.to_string()),
        }
    }

    /// Proposes one state machine write: on the leader directly, otherwise forwarded to it.
    /// Retries (with the same request id, so at most once) until `deadline`.
    pub async fn propose(&self, op: Op, deadline: Duration) -> Result<OpResult, ConsensusError> {
        let until = tokio::time::Instant::now() + deadline;
        let mut last = ConsensusError::Unavailable("no leader known".into());
        let forwarded = encode(&op).map_err(|e| ConsensusError::Internal(e.to_string()))?;
        loop {
            match self.members.leader() {
                Some(l) if l == self.members.id() => match self.proposer.propose(op.clone()).await {
                    Ok(r) => return Ok(r),
                    Err(e) if e.is_retryable() => last = e,
                    Err(e) => return Err(e),
                },
                Some(l) => match self.members.get(l) {
                    Some(p) => {
                        let body = peer_request::Body::ForwardWrite(forwarded.clone());
                        match self.call_leader(&p, body, self.rpc_timeout * 5).await {
                            Ok(b) => {
                                return decode::<OpResult>(&b).map_err(|e| ConsensusError::Internal(e.to_string()))
                            }
                            Err(e) => last = ConsensusError::Unavailable(format!("forwarding to leader {l}: {e}")),
                        }
                    }
                    None => last = ConsensusError::Unavailable(format!("leader {l} not in membership")),
                },
                None => {}
            }
            if tokio::time::Instant::now() >= until {
                return Err(last);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Makes the next local metadata read linearizable, on any node: the leader fences and
    /// confirms its leadership; a follower asks the leader for a read index and waits until
    /// it has applied that far.
    pub async fn linearize(&self) -> Result<(), ConsensusError> {
        match self.members.leader() {
            Some(l) if l == self.members.id() => self.fence.linearize().await.map(|_| ()),
            Some(l) => {
                let p = self
                    .members
                    .get(l)
                    .ok_or_else(|| ConsensusError::Unavailable(format!("leader {l} not in membership")))?;
                let idx = match self
                    .call_leader(&p, peer_request::Body::ReadIndex(ReadIndex {}), self.rpc_timeout * 2)
                    .await
                {
                    Ok(b) => decode::<u64>(&b).map_err(|e| ConsensusError::Internal(e.to_string()))?,
                    Err(e) => {
                        return Err(ConsensusError::Unavailable(format!(
                            "asking leader {l} for a read index: {e}"
                        )))
                    }
                };
                self.raft
                    .wait(Some(self.rpc_timeout * 5))
                    .applied_index_at_least(Some(idx), "read index")
                    .await
                    .map_err(|e| {
                        ConsensusError::Unavailable(format!("this node has not caught up with the leader: {e}"))
                    })?;
                Ok(())
            }
            None => Err(ConsensusError::Unavailable(
                "no leader is known right now (election in progress)".into(),
            )),
        }
    }

    /// The leader's answer to a follower's forwarded write (`op`, encoded).
    pub async fn serve_forwarded_write(&self, op: &[u8]) -> peer_response::Body {
        match decode::<Op>(op) {
            Err(e) => peer_response::Body::Failure(format!("malformed forwarded write: {e}")),
            Ok(op) => match self.proposer.propose(op).await {
                Ok(r) => match encode(&r) {
                    Ok(b) => peer_response::Body::Ok(b),
                    Err(e) => peer_response::Body::Failure(e.to_string()),
                },
                Err(e) => peer_response::Body::Failure(e.to_string()),
            },
        }
    }

    /// The leader's answer to a follower's read-index request.
    pub async fn serve_read_index(&self) -> peer_response::Body {
        match self.fence.linearize().await {
            Ok(idx) => match encode(&idx) {
                Ok(b) => peer_response::Body::Ok(b),
                Err(e) => peer_response::Body::Failure(e.to_string()),
            },
            Err(e) => peer_response::Body::Failure(e.to_string()),
        }
    }
}
