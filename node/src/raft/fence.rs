//! The read fence: what makes a read on the leader linearizable, shared by the KV and object
//! services and by followers that ask the leader for a read index. Concurrent reads share
//! one leadership confirmation ([`Rounds`]), as etcd's read loop does.

use std::future::Future;
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

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
    /// Reads waiting for the next leadership confirmation.
    rounds: Rounds,
}

impl ReadFence {
    /// A fence over `raft`.
    pub fn new(raft: ArkRaft, clock: std::sync::Arc<LogClock>) -> Self {
        Self {
            raft,
            clock,
            fenced_term: std::sync::atomic::AtomicU64::new(0),
            fencing: tokio::sync::Mutex::new(()),
            rounds: Rounds::default(),
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
    /// committed before it is applied too. Then openraft confirms leadership with a quorum,
    /// in a round that starts after this call and answers every read waiting for it.
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
        let raft = self.raft.clone();
        self.rounds.join(move || confirm(raft.clone())).await
    }
}

/// One leadership confirmation: openraft asks every voter (its `ensure_linearizable`) and
/// returns the read index once this node has applied it.
async fn confirm(raft: ArkRaft) -> Confirmed {
    match raft.ensure_linearizable().await {
        Ok(read) => Ok(read.map(|l| l.index).unwrap_or(0)),
        Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f))) => Err(ConsensusError::not_leader(&f)),
        Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(q))) => Err(ConsensusError::Unavailable(format!(
            "leader cannot reach a quorum to confirm it is still leader: {q}"
        ))),
        Err(RaftError::Fatal(e)) => Err(ConsensusError::Unavailable(format!("node cannot serve reads: {e}"))),
    }
}

/// A confirmation's answer: the read index, or why there is none.
type Confirmed = Result<u64, ConsensusError>;

/// Reads waiting for a leadership confirmation, answered together.
///
/// openraft 0.9 sends a heartbeat to every voter for each `ensure_linearizable` call, each
/// timed out after one heartbeat interval: a burst of reads was a burst of heartbeats, and
/// under load some missed their interval and the read failed ("cannot reach a quorum") on a
/// healthy cluster. Here one round runs at a time; the reads that arrive while it runs wait
/// for the next one, which starts after all of them arrived and so answers all of them (a
/// round that started before a read arrived may predate a write acknowledged before the
/// read: it never answers that read). The queue holds one sender per read in flight.
#[derive(Default)]
struct Rounds {
    waiting: Arc<Mutex<Waiting>>,
}

#[derive(Default)]
struct Waiting {
    readers: Vec<oneshot::Sender<Confirmed>>,
    /// Whether a task is running rounds; it stops when no reader is left.
    running: bool,
}

impl Rounds {
    /// Waits for the answer of the next round that starts after this call; starts the task
    /// that runs rounds with `confirm` if none runs. A caller that goes away leaves the round
    /// unharmed.
    async fn join<F, Fut>(&self, confirm: F) -> Confirmed
    where
        F: Fn() -> Fut + Send + 'static,
        Fut: Future<Output = Confirmed> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let start = {
            let mut w = lock(&self.waiting);
            w.readers.push(tx);
            !std::mem::replace(&mut w.running, true)
        };
        if start {
            tokio::spawn(run_rounds(self.waiting.clone(), confirm));
        }
        rx.await
            .unwrap_or_else(|_| Err(ConsensusError::Internal("the read confirmation task stopped".into())))
    }
}

/// Runs rounds until no reader waits: each takes every reader waiting when it starts.
async fn run_rounds<F, Fut>(waiting: Arc<Mutex<Waiting>>, confirm: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Confirmed>,
{
    let _stopped = Stopped(waiting.clone());
    loop {
        let readers = {
            let mut w = lock(&waiting);
            if w.readers.is_empty() {
                w.running = false;
                return;
            }
            std::mem::take(&mut w.readers)
        };
        let answer = confirm().await;
        metrics::counter!("ark_read_confirmations_total").increment(1);
        metrics::counter!("ark_read_confirmed_reads_total").increment(readers.len() as u64);
        for r in readers {
            let _ = r.send(answer.clone());
        }
    }
}

/// If the round task panics, the readers waiting get an error (their senders are dropped)
/// and the next read starts a new task.
struct Stopped(Arc<Mutex<Waiting>>);

impl Drop for Stopped {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let mut w = lock(&self.0);
            w.readers.clear();
            w.running = false;
        }
    }
}

fn lock(m: &Mutex<Waiting>) -> std::sync::MutexGuard<'_, Waiting> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Describes this file's metrics (HELP text and unit) to the recorder; called once at
/// start-up by `server` (through `metrics::install`).
pub(crate) fn describe_metrics() {
    use metrics::describe_counter;
    describe_counter!(
        "ark_read_confirmations_total",
        "Leadership confirmations for linearizable reads (one heartbeat round to the voters each)."
    );
    describe_counter!(
        "ark_read_confirmed_reads_total",
        "Linearizable reads answered by those confirmations; divided by ark_read_confirmations_total, the reads per round."
    );
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::Duration;

    use super::*;

    /// A confirmation that takes `ms` and answers with its round's number (1, 2, ...).
    fn slow_rounds(
        started: &Arc<AtomicU64>,
        ms: u64,
    ) -> impl Fn() -> std::pin::Pin<Box<dyn Future<Output = Confirmed> + Send>> {
        let started = started.clone();
        move || {
            let n = started.fetch_add(1, Ordering::SeqCst) + 1;
            Box::pin(async move {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                Ok(n)
            })
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_burst_of_reads_shares_rounds_and_none_is_answered_by_a_round_older_than_itself() {
        let rounds = Arc::new(Rounds::default());
        let started = Arc::new(AtomicU64::new(0));
        let mut reads = Vec::new();
        for i in 0..400u64 {
            let (rounds, started) = (rounds.clone(), started.clone());
            reads.push(tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(i % 40)).await;
                let before = started.load(Ordering::SeqCst);
                let round = rounds.join(slow_rounds(&started, 5)).await.unwrap();
                (before, round)
            }));
        }
        for r in reads {
            let (before, round) = r.await.unwrap();
            assert!(
                round > before,
                "a read that saw {before} rounds started was answered by round {round}"
            );
        }
        let n = started.load(Ordering::SeqCst);
        assert!(n <= 40, "{n} rounds for 400 reads over 40 ms");
        assert!(!lock(&rounds.waiting).running, "the round task stops when nobody waits");
    }

    #[tokio::test]
    async fn a_failed_round_fails_its_readers_and_the_next_round_runs() {
        let rounds = Rounds::default();
        let err = rounds
            .join(|| async { Err(ConsensusError::Unavailable("no quorum".into())) })
            .await
            .unwrap_err();
        assert_eq!(err, ConsensusError::Unavailable("no quorum".into()));
        assert_eq!(rounds.join(|| async { Ok(7) }).await, Ok(7));
    }

    #[tokio::test]
    async fn a_panicking_round_fails_its_readers_and_does_not_wedge_the_next() {
        let rounds = Rounds::default();
        let err = rounds.join(|| async { panic!("round failed") }).await.unwrap_err();
        assert!(matches!(err, ConsensusError::Internal(_)), "{err:?}");
        let next = tokio::time::timeout(Duration::from_secs(5), rounds.join(|| async { Ok(3) }));
        assert_eq!(next.await.expect("the next read is not wedged"), Ok(3));
    }
}
