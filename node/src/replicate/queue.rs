//! The leader's replication queue: brings every chunk back to its namespace's policy after a
//! node or site is lost (or after an async put), ahead of forecast failures, and measures
//! each namespace's lag.
//!
//! Every `objects.repair_interval_ms` the leader walks the object tables. A chunk needs work
//! when its safe holders (answered recently, and not at risk per [`crate::risk`]) are fewer
//! than `copies` or span fewer than `min_sites` sites. Work is ordered by `risk.ordering`:
//! `expected-loss` ranks a chunk by the probability that all its live holders fail within
//! the forecast horizon, times its namespace's weight (1 + priority), plus its age in units
//! of `risk.ageing_s` (so nothing starves, and without forecasts this is oldest first);
//! `fifo` by priority, then age. For each chunk [`super::placement::choose`] picks new
//! holders among live nodes not at risk; the work is cut into per-target batches run in
//! queue order, paced to `objects.repair_mib_per_s`; the target pulls the chunks from a live
//! holder (verifying them), and the leader records the new holder through Raft. A
//! namespace's lag is the age of its oldest object that is below policy (0 when none is),
//! exported as `ark_namespace_lag_seconds` and `ark_namespace_behind_objects`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::watch;

use super::{placement, DataPlane, Peer};
use crate::chunks::ChunkId;
use crate::config::QueueOrdering;
use crate::raft::{Command, NodeId, Op};
use crate::risk::QueueEntry;

/// Chunks asked of one target in one pull.
const PULL_BATCH: usize = 16;
/// Chunks scheduled per target per pass (the rest waits for the next pass).
const PER_TARGET_PER_PASS: usize = 512;

/// Runs the queue until `stop` turns true. Does nothing on followers.
pub async fn run(dp: Arc<DataPlane>, mut stop: watch::Receiver<bool>) {
    let every = Duration::from_millis(dp.cfg.repair_interval_ms.max(100));
    // One budget across passes: a new pass does not get a fresh allowance.
    let pacer = Pacer::new(dp.cfg.repair_mib_per_s.saturating_mul(1024 * 1024));
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        if !dp.is_leader() {
            // Only the leader measures lag; a former leader's figures would go stale.
            if let Ok(mut l) = dp.lag.lock() {
                l.clear();
            }
            continue;
        }
        if let Err(e) = pass(&dp, &pacer).await {
            tracing::warn!(error = %e, "replication pass failed");
        }
    }
}

/// One chunk for one target: id, length, live holders (sources), compress.
type Job = (ChunkId, u32, Vec<NodeId>, bool);

#[derive(Clone, Copy)]
struct Need {
    copies: u32,
    min_sites: u32,
    priority: u32,
    compress: bool,
}

/// One pass: measure, then repair what is below policy.
pub async fn pass(dp: &DataPlane, pacer: &Pacer) -> Result<(), String> {
    let now = crate::api::now_ms();
    let namespaces = dp.reader.namespaces().map_err(|e| e.to_string())?;
    let mut need: HashMap<ChunkId, Need> = HashMap::new();
    // Per namespace: (created_ms, distinct chunks) of every live version.
    let mut objects: BTreeMap<String, Vec<(u64, Vec<ChunkId>)>> = BTreeMap::new();
    // An object using each chunk, for `ark status`.
    let mut users: HashMap<ChunkId, String> = HashMap::new();
    for (ns, rec) in &namespaces {
        let p = &rec.policy;
        let list = dp.reader.list(ns, "", true).map_err(|e| e.to_string())?;
        let entry = objects.entry(ns.clone()).or_default();
        for o in list.into_iter().filter(|o| !o.record.deleted) {
            let ids: Vec<ChunkId> = o.record.chunks.iter().map(|c| c.id).collect();
            for id in &ids {
                let n = need.entry(*id).or_insert(Need {
                    copies: 0,
                    min_sites: 0,
                    priority: 0,
                    compress: p.compress,
                });
                n.copies = n.copies.max(p.copies);
                n.min_sites = n.min_sites.max(p.min_sites);
                n.priority = n.priority.max(p.priority);
            }
            for id in &ids {
                users.entry(*id).or_insert_with(|| format!("{ns}/{}", o.key));
            }
            entry.push((o.record.created_ms, ids));
        }
    }
    let members = dp.members();
    let alive: Vec<Peer> = members.iter().filter(|m| dp.recently_alive(m.id)).cloned().collect();
    let alive_ids: HashSet<NodeId> = alive.iter().map(|p| p.id).collect();
    let risk = &dp.risk;
    let ordering = risk.config().ordering;
    let probs = crate::risk::probabilities(&risk.risks());
    let prob = |n: &NodeId| probs.get(n).copied().unwrap_or(0.0);
    // Nodes at risk neither count as safe copies nor receive new ones (expected-loss only).
    let candidates: Vec<Peer> = alive.iter().filter(|p| !risk.at_risk(p.id)).cloned().collect();

    let mut below: HashSet<ChunkId> = HashSet::new();
    let mut work: Vec<Work> = Vec::new();
    let mut lost = 0u64;
    for (id, rec) in dp.reader.chunks().map_err(|e| e.to_string())? {
        let Some(n) = need.get(&id).copied() else {
            continue;
        };
        let live: Vec<NodeId> = rec.holders.iter().copied().filter(|h| alive_ids.contains(h)).collect();
        if live.len() < n.copies as usize || dp.sites_of(&live).len() < n.min_sites as usize {
            below.insert(id);
        }
        let safe: Vec<NodeId> = live.iter().copied().filter(|h| !risk.at_risk(*h)).collect();
        if safe.len() >= n.copies as usize && dp.sites_of(&safe).len() >= n.min_sites as usize {
            continue;
        }
        if live.is_empty() {
            lost += 1;
            continue;
        }
        let age_s = now.saturating_sub(rec.since_ms) as f64 / 1000.0;
        let holder_probs: Vec<f64> = live.iter().map(prob).collect();
        let (loss, score) = crate::risk::expected_loss_score(
            &holder_probs,
            crate::risk::namespace_weight(n.priority),
            age_s,
            risk.config().ageing_s as f64,
        );
        work.push(Work {
            id,
            len: rec.len,
            since_ms: rec.since_ms,
            holders: rec.holders.clone(),
            live,
            safe,
            need: n,
            loss,
            score,
        });
    }
    metrics::gauge!("ark_chunks_without_live_copy").set(lost as f64);

    // Lag per namespace, measured before this pass repairs anything.
    let mut lag_map = HashMap::new();
    for (ns, objs) in &objects {
        let behind: Vec<u64> = objs
            .iter()
            .filter(|(_, ids)| ids.iter().any(|i| below.contains(i)))
            .map(|(t, _)| *t)
            .collect();
        let lag_ms = behind.iter().min().map(|t| now.saturating_sub(*t)).unwrap_or(0);
        metrics::gauge!("ark_namespace_lag_seconds", "namespace" => ns.clone()).set(lag_ms as f64 / 1000.0);
        metrics::gauge!("ark_namespace_behind_objects", "namespace" => ns.clone()).set(behind.len() as f64);
        lag_map.insert(ns.clone(), (behind.len() as u64, lag_ms));
    }
    if let Ok(mut l) = dp.lag.lock() {
        *l = lag_map;
    }
    metrics::gauge!("ark_replication_queue_chunks").set(work.len() as f64);
    order(&mut work, ordering);
    risk.set_queue_head(
        work.iter()
            .take(QUEUE_HEAD)
            .map(|w| QueueEntry {
                object: users.get(&w.id).cloned().unwrap_or_default(),
                chunk: crate::chunks::to_hex(&w.id),
                bytes: u64::from(w.len),
                holders: w.live.clone(),
                loss_probability: w.loss,
                score: w.score,
            })
            .collect(),
        work.len() as u64,
    );
    metrics::gauge!("ark_replication_queue_head_loss_probability").set(work.first().map_or(0.0, |w| w.loss));
    if work.is_empty() {
        return Ok(());
    }

    // One job per new copy. Under expected loss a chunk's first new copy carries its score
    // and each further copy only what would still be lost if the earlier new holders failed
    // too, so with a tight budget every endangered chunk gets one safe copy before any gets
    // its second.
    let mut copies: Vec<(f64, usize, Peer)> = Vec::new();
    for (i, w) in work.iter().enumerate() {
        let safe_sites = dp.sites_of(&w.safe);
        let short_sites = (w.need.min_sites as usize).saturating_sub(safe_sites.len());
        let want = (w.need.copies as usize)
            .saturating_sub(w.safe.len())
            .max(short_sites)
            .max(1);
        let mut remaining = w.loss;
        let age = w.score - crate::risk::namespace_weight(w.need.priority) * w.loss;
        for t in placement::choose(&safe_sites, &w.holders, &candidates, want, placement::chunk_salt(&w.id)) {
            let score = crate::risk::namespace_weight(w.need.priority) * remaining + age;
            remaining *= prob(&t.id);
            copies.push((score, i, t));
        }
    }
    if ordering == QueueOrdering::ExpectedLoss {
        // Stable: ties keep the chunk order (oldest first).
        copies.sort_by(|a, b| b.0.partial_cmp(&a.0).unwrap_or(std::cmp::Ordering::Equal));
    }
    // Batches per target, cut in job order, then run in the order of their best job. With a
    // bandwidth budget, a batch (and a pass) moves about PASS_BUDGET's worth and the next
    // pass re-orders with fresh forecasts and new writes, so urgent work never waits
    // behind a long backlog.
    let rate = dp.cfg.repair_mib_per_s.saturating_mul(1024 * 1024);
    let budget = if rate > 0 {
        (rate as f64 * PASS_BUDGET.as_secs_f64()) as u64
    } else {
        u64::MAX
    };
    let mut open: BTreeMap<NodeId, Batch> = BTreeMap::new();
    let mut batches: Vec<Batch> = Vec::new();
    let mut per_target: HashMap<NodeId, usize> = HashMap::new();
    for (rank, (_, i, t)) in copies.into_iter().enumerate() {
        let w = &work[i];
        let n = per_target.entry(t.id).or_default();
        if *n >= PER_TARGET_PER_PASS {
            continue;
        }
        *n += 1;
        let id = t.id;
        let b = open.entry(id).or_insert_with(|| Batch {
            rank,
            target: t,
            jobs: Vec::new(),
            loss: 0.0,
        });
        b.loss = b.loss.max(w.loss);
        b.jobs.push((w.id, w.len, w.live.clone(), w.need.compress));
        if b.jobs.len() == PULL_BATCH || b.bytes() >= budget {
            batches.extend(open.remove(&id));
        }
    }
    batches.extend(open.into_values());
    batches.sort_by_key(|b| b.rank);
    // Pacing into troughs: a batch that protects no endangered chunk waits while its target's
    // or source's load is forecast to drop soon, for at most one forecast horizon.
    if ordering == QueueOrdering::ExpectedLoss && risk.config().pace_into_troughs {
        let troughs = risk.troughs();
        let (gain, floor) = (risk.config().trough_gain, risk.config().trough_floor_bytes_per_s);
        let busy = |n: NodeId| crate::risk::trough_ahead(troughs.get(&n), gain, floor);
        let before = batches.len();
        batches.retain(|b| {
            let source = b.jobs.first().and_then(|j| j.2.first().copied());
            let wait = b.loss < URGENT_LOSS && (busy(b.target.id) || source.is_some_and(busy));
            !pacer.defer(b.target.id, wait, risk.deferral_max())
        });
        let deferred = before - batches.len();
        if deferred > 0 {
            metrics::counter!("ark_repair_deferred_batches_total").increment(deferred as u64);
        }
    }
    if rate > 0 {
        let mut total = 0u64;
        let keep = batches
            .iter()
            .take_while(|b| {
                let fits = total < budget;
                total += b.bytes();
                fits
            })
            .count();
        batches.truncate(keep.max(1));
    }
    let failed: std::sync::Mutex<HashSet<NodeId>> = Default::default();
    let targets: HashSet<NodeId> = batches.iter().map(|b| b.target.id).collect();
    let concurrency = targets.len().clamp(1, 8);
    let runs = batches.into_iter().map(|b| {
        let failed = &failed;
        async move {
            pacer.wait(b.bytes()).await;
            if failed.lock().is_ok_and(|f| f.contains(&b.target.id)) {
                return 0;
            }
            match run_batch(dp, &b).await {
                Ok(n) => n,
                Err(()) => {
                    if let Ok(mut f) = failed.lock() {
                        f.insert(b.target.id);
                    }
                    0
                }
            }
        }
    });
    let added: usize = futures::stream::iter(runs)
        .buffer_unordered(concurrency)
        .collect::<Vec<usize>>()
        .await
        .into_iter()
        .sum();
    metrics::counter!("ark_replication_repaired_chunks_total").increment(added as u64);
    Ok(())
}

/// A batch holding a chunk at least this likely to be lost is never deferred.
const URGENT_LOSS: f64 = 0.5;

/// Chunks shown at the head of the queue in `ark status`.
const QUEUE_HEAD: usize = 8;
/// With `objects.repair_mib_per_s`, the bytes of one pass: this long at that rate.
const PASS_BUDGET: Duration = Duration::from_secs(1);

/// One chunk below its (safe) policy.
struct Work {
    id: ChunkId,
    len: u32,
    since_ms: u64,
    holders: Vec<NodeId>,
    live: Vec<NodeId>,
    safe: Vec<NodeId>,
    need: Need,
    loss: f64,
    score: f64,
}

/// Expected loss: highest score first; FIFO: highest priority, then oldest. Ties: oldest.
fn order(work: &mut [Work], ordering: QueueOrdering) {
    match ordering {
        QueueOrdering::ExpectedLoss => work.sort_by(|a, b| {
            b.score
                .partial_cmp(&a.score)
                .unwrap_or(std::cmp::Ordering::Equal)
                .then(a.since_ms.cmp(&b.since_ms))
        }),
        QueueOrdering::Fifo => {
            work.sort_by(|a, b| b.need.priority.cmp(&a.need.priority).then(a.since_ms.cmp(&b.since_ms)))
        }
    }
}

/// Up to [`PULL_BATCH`] chunks one target pulls, ranked by its best chunk's queue position.
struct Batch {
    rank: usize,
    target: Peer,
    jobs: Vec<Job>,
    /// The highest loss probability among its chunks.
    loss: f64,
}

impl Batch {
    fn bytes(&self) -> u64 {
        self.jobs.iter().map(|j| u64::from(j.1)).sum()
    }
}

/// Spaces transfers so that they average at most `rate` bytes per second (0: no limit).
/// Slots are handed out in call order, so batches start in queue order.
pub struct Pacer {
    rate: u64,
    next: std::sync::Mutex<tokio::time::Instant>,
    /// Per target: since when its batches have been waiting for a forecast trough.
    waiting: std::sync::Mutex<HashMap<NodeId, std::time::Instant>>,
}

impl Pacer {
    /// A pacer of `rate` bytes per second (0: no limit).
    pub fn new(rate: u64) -> Self {
        Self {
            rate,
            next: std::sync::Mutex::new(tokio::time::Instant::now()),
            waiting: std::sync::Mutex::default(),
        }
    }

    /// Whether a batch for `target` waits this pass: when `wait` (a trough is forecast), for
    /// at most `max` in a row; the clock restarts only once no trough is forecast.
    fn defer(&self, target: NodeId, wait: bool, max: Duration) -> bool {
        let Ok(mut w) = self.waiting.lock() else { return false };
        if !wait {
            w.remove(&target);
            return false;
        }
        w.entry(target).or_insert_with(std::time::Instant::now).elapsed() < max
    }

    async fn wait(&self, bytes: u64) {
        if self.rate == 0 {
            return;
        }
        let slot = {
            let Ok(mut next) = self.next.lock() else { return };
            let slot = (*next).max(tokio::time::Instant::now());
            *next = slot + Duration::from_secs_f64(bytes as f64 / self.rate as f64);
            slot
        };
        tokio::time::sleep_until(slot).await;
    }
}

/// The target pulls the batch from live holders; the leader records the new holder.
/// `Err` when the target should get no more work this pass.
async fn run_batch(dp: &DataPlane, b: &Batch) -> Result<usize, ()> {
    let target = &b.target;
    let ids: Vec<ChunkId> = b.jobs.iter().map(|j| j.0).collect();
    let mut src_ids: Vec<NodeId> = b.jobs.iter().flat_map(|j| j.2.iter().copied()).collect();
    src_ids.sort_unstable();
    src_ids.dedup();
    let mut sources: Vec<Peer> = dp.members().into_iter().filter(|m| src_ids.contains(&m.id)).collect();
    sources.sort_by_key(|s| (s.site != target.site, s.id));
    let compress = b.jobs.iter().any(|j| j.3);
    match dp.pull_to(target, &ids, &sources, compress, b.bytes()).await {
        Ok(held) if !held.is_empty() => {
            let n = held.len();
            let op = Op {
                request_id: Vec::new(),
                command: Command::ChunkHolders {
                    node: target.id,
                    add: held,
                    remove: Vec::new(),
                },
            };
            if let Err(st) = dp.propose(op, Duration::from_secs(10)).await {
                tracing::warn!(target = target.id, error = %st.message(), "recording new holder failed");
                return Err(());
            }
            Ok(n)
        }
        Ok(_) => Ok(0),
        Err(e) => {
            tracing::warn!(target = target.id, error = %e, "re-replication pull failed");
            Err(())
        }
    }
}

/// Describes this module's metrics (HELP text and unit) to the recorder; called once by
/// [`crate::metrics::install`].
pub(crate) fn describe_metrics() {
    use metrics::{describe_counter, describe_gauge, Unit};
    describe_gauge!(
        "ark_chunks_without_live_copy",
        "Chunks none of whose holders is a live member (leader only; last repair pass)."
    );
    describe_gauge!(
        "ark_namespace_lag_seconds",
        Unit::Seconds,
        "Age of the oldest object in the namespace not yet at its full copy count (leader only)."
    );
    describe_gauge!(
        "ark_namespace_behind_objects",
        "Objects in the namespace not yet at their full copy count (leader only)."
    );
    describe_gauge!(
        "ark_replication_queue_chunks",
        "Chunks in the leader's re-replication queue."
    );
    describe_gauge!(
        "ark_replication_queue_head_loss_probability",
        "Probability of loss of the chunk at the head of the repair queue (0 when empty)."
    );
    describe_counter!(
        "ark_repair_deferred_batches_total",
        "Repair batches deferred into a forecast load trough."
    );
    describe_counter!(
        "ark_replication_repaired_chunks_total",
        "Chunk copies added by the leader's repair queue."
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_target_waits_for_a_trough_at_most_the_limit_then_runs_until_it_passes() {
        let p = Pacer::new(0);
        let max = Duration::from_millis(50);
        assert!(!p.defer(7, false, max), "no trough: run");
        assert!(p.defer(7, true, max), "trough ahead: wait");
        std::thread::sleep(Duration::from_millis(60));
        assert!(
            !p.defer(7, true, max),
            "waited the limit: run although the trough is still ahead"
        );
        assert!(!p.defer(7, true, max), "and keep running while it is");
        assert!(!p.defer(7, false, max));
        assert!(p.defer(7, true, max), "a new trough may be waited for again");
        assert!(p.defer(8, true, max), "targets wait independently");
    }
}
