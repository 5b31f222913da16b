//! Folds concurrent client writes into shared log entries.
//!
//! openraft 0.9's core appends one entry at a time and waits for its fsync before the next,
//! so one entry per client write caps throughput at one fsync per write. The proposer keeps
//! at most `raft.proposals_in_flight` entries in flight; writes that arrive meanwhile queue up and go
//! out together in the next entry (up to [`OPS_PER_ENTRY_MAX`] ops or [`ENTRY_BYTES_MAX`]).
//! Under light load an entry carries one write and nothing waits; under heavy load entries
//! grow. Each write keeps its own request id and gets its own answer.

use std::sync::Arc;

use super::error::ConsensusError;
use super::log_clock::LogClock;
use super::{ArkRaft, Op, OpResult, Request, OPS_PER_ENTRY_MAX};
use openraft::error::{ClientWriteError, RaftError};
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};

/// Payload bytes folded into one entry at most (a single larger write still goes alone).
pub const ENTRY_BYTES_MAX: usize = 1024 * 1024;
/// Writes waiting for an entry at most; beyond it callers wait to enqueue (backpressure).
const QUEUE_MAX: usize = 16 * 1024;

struct Pending {
    op: Op,
    reply: oneshot::Sender<Result<OpResult, ConsensusError>>,
}

/// Handle for submitting writes.
#[derive(Clone)]
pub struct Proposer {
    tx: mpsc::Sender<Pending>,
    /// One permit per entry in flight (see [`Proposer::hold`]).
    slots: Arc<Semaphore>,
    in_flight: u32,
}

/// New entries wait while this lives (see [`Proposer::hold`]).
pub struct Hold(#[allow(dead_code)] OwnedSemaphorePermit);

fn op_bytes(op: &Op) -> usize {
    op.request_id.len()
        + match &op.command {
            super::Command::Put { key, value } => key.len() + value.len(),
            super::Command::Delete { key } => key.len(),
            super::Command::ObjPut { ns, key, manifest } => ns.len() + key.len() + manifest.chunks.len() * 36,
            super::Command::ChunkHolders { add, remove, .. } => (add.len() + remove.len()) * 32,
            super::Command::NsCreateEncrypted { keys, .. } | super::Command::NsRekey { keys, .. } => {
                64 + keys.generations.len() * 96
            }
            _ => 64,
        }
}

impl Proposer {
    /// Starts the proposer task for `raft`. It ends when every handle is dropped.
    /// Entries are stamped by `clock`.
    pub fn start(raft: ArkRaft, in_flight: usize, clock: Arc<LogClock>) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE_MAX);
        let in_flight = in_flight.clamp(1, Semaphore::MAX_PERMITS.min(u32::MAX as usize)) as u32;
        let slots = Arc::new(Semaphore::new(in_flight as usize));
        tokio::spawn(run(raft, rx, slots.clone(), clock));
        Self { tx, slots, in_flight }
    }

    /// Waits until every entry in flight has been answered, then holds every new one back
    /// until the returned [`Hold`] is dropped: writes that arrive meanwhile wait in the
    /// queue (and go out together afterwards). Used by the leadership hand-over so that the
    /// target can catch up with a log that does not grow.
    pub async fn hold(&self) -> Hold {
        match self.slots.clone().acquire_many_owned(self.in_flight).await {
            Ok(p) => Hold(p),
            // The semaphore is never closed while a handle exists.
            Err(_) => unreachable!("the proposer's slots are never closed"),
        }
    }

    /// Proposes one write and waits for its answer.
    pub async fn propose(&self, op: Op) -> Result<OpResult, ConsensusError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Pending { op, reply })
            .await
            .map_err(|_| ConsensusError::Unavailable("node is shutting down".into()))?;
        rx.await.map_err(|_| {
            ConsensusError::Unavailable("node is shutting down; the write may or may not have been applied".into())
        })?
    }
}

async fn run(raft: ArkRaft, mut rx: mpsc::Receiver<Pending>, slots: Arc<Semaphore>, clock: Arc<LogClock>) {
    let mut carry: Option<Pending> = None;
    loop {
        let first = match carry.take() {
            Some(p) => p,
            None => match rx.recv().await {
                Some(p) => p,
                None => return,
            },
        };
        // Wait for a free slot first: whatever arrives meanwhile joins this entry.
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let mut bytes = op_bytes(&first.op);
        let mut batch = vec![first];
        while batch.len() < OPS_PER_ENTRY_MAX {
            match rx.try_recv() {
                Ok(p) => {
                    let b = op_bytes(&p.op);
                    if bytes + b > ENTRY_BYTES_MAX {
                        carry = Some(p);
                        break;
                    }
                    bytes += b;
                    batch.push(p);
                }
                Err(_) => break,
            }
        }
        metrics::histogram!("ark_raft_entry_ops").record(batch.len() as f64);
        let raft = raft.clone();
        let proposed_at_ms = clock.now_ms();
        tokio::spawn(async move {
            let (ops, replies): (Vec<Op>, Vec<_>) = batch.into_iter().map(|p| (p.op, p.reply)).unzip();
            let started = std::time::Instant::now();
            let res = raft.client_write(Request { proposed_at_ms, ops }).await;
            drop(permit);
            metrics::histogram!("ark_raft_entry_commit_seconds").record(started.elapsed().as_secs_f64());
            match res {
                Ok(r) => {
                    debug_assert_eq!(r.data.results.len(), replies.len());
                    let mut results = r.data.results.into_iter();
                    for reply in replies {
                        let answer = results
                            .next()
                            .ok_or_else(|| ConsensusError::Internal("state machine returned too few results".into()));
                        let _ = reply.send(answer);
                    }
                }
                Err(e) => {
                    let st = match e {
                        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => ConsensusError::not_leader(&f),
                        RaftError::APIError(e) => ConsensusError::Refused(e.to_string()),
                        RaftError::Fatal(e) => ConsensusError::Unavailable(format!("node cannot serve writes: {e}")),
                    };
                    for reply in replies {
                        let _ = reply.send(Err(st.clone()));
                    }
                }
            }
        });
    }
}

/// Describes this module's metrics (HELP text and unit) to the recorder; called once at start-up by
/// `server` (through `metrics::install`).
pub(crate) fn describe_metrics() {
    use metrics::{describe_histogram, Unit};
    describe_histogram!(
        "ark_raft_entry_ops",
        Unit::Count,
        "Client writes folded into one Raft log entry (1 up to OPS_PER_ENTRY_MAX)."
    );
    describe_histogram!(
        "ark_raft_entry_commit_seconds",
        Unit::Seconds,
        "Time from proposing a log entry to its commit and apply."
    );
}
