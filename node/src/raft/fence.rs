//! The read fence: what makes a read on the leader linearizable, shared by the KV and object
//! services and by followers that ask the leader for a read index.

use super::error::ConsensusError;
use super::log_clock::LogClock;
use super::ArkRaft;
use openraft::error::{CheckIsLeaderError, RaftError};

/// Fences reads on this node's Raft; one per process.
pub struct ReadFence {
    raft: ArkRaft,
    /// Stamps the fence entries (see `raft::log_clock`).
    clock: std::sync::Arc<LogClock>,
    /// Leader term (of this process) in which a fence entry has been committed.
    fenced_term: std::sync::atomic::AtomicU64,
    /// Serialises fencing, so that concurrent first reads commit one fence entry, not many.
    fencing: tokio::sync::Mutex<()>,
}

impl ReadFence {
    /// A fence over `raft`.
    pub fn new(raft: ArkRaft, clock: std::sync::Arc<LogClock>) -> Self {
        Self {
            raft,
            clock,
            fenced_term: std::sync::atomic::AtomicU64::new(0),
            fencing: tokio::sync::Mutex::new(()),
        }
    }

    /// Makes the next local read linearizable; returns the read index (the log index every
    /// linearizable read must have applied).
    ///
    /// openraft 0.9 restores a leader at start-up in its old term without re-learning the
    /// commit index, and its read index is then only what this process has applied: a leader
    /// restarted after SIGTERM served a read that missed a write it had acknowledged before
    /// the restart (found by the rolling-restart drill). So before its first read in a term,
    /// this process commits an empty entry of its own; once that is applied, every entry
    /// committed before it is applied too. Then openraft confirms leadership with a quorum.
    pub async fn linearize(&self) -> Result<u64, ConsensusError> {
        use std::sync::atomic::Ordering;
        let term = self.raft.metrics().borrow().current_term;
        // Fast path: already fenced in this term (every read after the first).
        if self.fenced_term.load(Ordering::Acquire) != term {
            let _guard = self.fencing.lock().await;
            if self.fenced_term.load(Ordering::Acquire) != term {
                let r = self
                    .raft
                    .client_write(super::Request {
                        proposed_at_ms: self.clock.now_ms(),
                        ops: Vec::new(),
                    })
                    .await;
                match r {
                    Ok(r) => self.fenced_term.store(r.log_id.leader_id.term, Ordering::Release),
                    Err(RaftError::APIError(openraft::error::ClientWriteError::ForwardToLeader(f))) => {
                        return Err(ConsensusError::not_leader(&f))
                    }
                    Err(e) => return Err(ConsensusError::Unavailable(format!("cannot fix the read point: {e}"))),
                }
            }
        }
        match self.raft.ensure_linearizable().await {
            Ok(read) => Ok(read.map(|l| l.index).unwrap_or(0)),
            Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f))) => Err(ConsensusError::not_leader(&f)),
            Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(q))) => Err(ConsensusError::Unavailable(
                format!("leader cannot reach a quorum to confirm it is still leader: {q}"),
            )),
            Err(RaftError::Fatal(e)) => Err(ConsensusError::Unavailable(format!("node cannot serve reads: {e}"))),
        }
    }
}
