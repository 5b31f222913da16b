//! The repair queue's planner: from a snapshot of the object tables, the membership, who
//! answered recently and the forecasts, what is below policy, in which order it is
//! repaired, where the new copies go and how the work is cut into batches. A pure function
//! (no I/O, no clock of its own): [`super::queue`] takes the snapshot, runs [`plan`] and
//! executes the batches.
//!
//! A chunk needs work when its safe holders (answered recently, and not at risk) are fewer
//! than `copies` or span fewer than `min_sites` sites. Under [`QueueOrdering::ExpectedLoss`]
//! each chunk is scored by the probability that all its live holders fail within the
//! forecast horizon, times its namespace's weight (1 + priority), plus its age in units of
//! `ageing_s` (so nothing starves, and without forecasts this is oldest first); each new
//! copy is a job carrying only the loss that would remain if the earlier new holders failed
//! too, so with a tight budget every endangered chunk gets one safe copy before any gets its
//! second. Under [`QueueOrdering::Fifo`]: priority, then age. Jobs are cut into per-target
//! batches in job order and run in the order of their best job; a batch that protects no
//! endangered chunk may wait while its target's or source's load is forecast to drop soon
//! ([`Deferrals`], at most one horizon); with a bandwidth budget a pass keeps about one
//! second's worth.
//!
//! Owns the order and the batches. Must not touch: sockets, disks, the clock, Raft.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::{Duration, Instant};

use super::placement;
use crate::chunks::ChunkId;
use crate::config::QueueOrdering;
use crate::raft::members::{Peer, SiteIndex};
use crate::raft::objects::NsPolicy;
use crate::raft::NodeId;

/// Chunks asked of one target in one pull.
pub const PULL_BATCH: usize = 16;
/// Chunks scheduled per target per pass (the rest waits for the next pass).
pub const PER_TARGET_PER_PASS: usize = 512;
/// A batch holding a chunk at least this likely to be lost is never deferred.
pub const URGENT_LOSS: f64 = 0.5;
/// Chunks shown at the head of the queue in `ark status`.
pub const QUEUE_HEAD: usize = 8;

/// The forecasts as the queue sees them, published by the leader's risk loop.
pub trait RiskSource: Send + Sync {
    /// The current view (empty on a follower or without forecasts).
    fn view(&self) -> RiskView;
}

/// A node's latest load forecast (peer traffic, bytes per second).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Trough {
    /// The load now.
    pub now: f64,
    /// The lowest forecast within the horizon.
    pub min: f64,
    /// Intervals until that minimum (1 = the next one).
    pub steps: usize,
}

/// Whether work touching a node with forecast `t` is better done later: its load is worth
/// avoiding (above `floor`) and the forecast falls below `(1 - gain)` of it within the horizon.
pub fn trough_ahead(t: Option<&Trough>, gain: f64, floor: f64) -> bool {
    t.is_some_and(|t| t.now > floor && t.min < (1.0 - gain) * t.now)
}

/// Everything the planner needs to know of the forecasts.
#[derive(Debug, Clone)]
pub struct RiskView {
    /// Which order the queue uses.
    pub ordering: QueueOrdering,
    /// Age (seconds) worth one unit of expected loss.
    pub ageing_s: f64,
    /// Failure probability per node within the horizon (absent: 0, no evidence).
    pub probability: HashMap<NodeId, f64>,
    /// A node at least this likely to fail is at risk (expected-loss ordering only).
    pub at_risk_probability: f64,
    /// Latest load forecast per node.
    pub troughs: BTreeMap<NodeId, Trough>,
    /// Whether non-urgent batches wait for forecast troughs.
    pub pace_into_troughs: bool,
    /// A trough counts when the load falls by this share.
    pub trough_gain: f64,
    /// Loads below this are not worth avoiding.
    pub trough_floor_bytes_per_s: f64,
    /// The longest a batch waits for a trough (one forecast horizon).
    pub deferral_max: Duration,
}

impl RiskView {
    /// No forecasts: oldest first under `ordering`.
    pub fn blind(ordering: QueueOrdering, ageing_s: f64) -> Self {
        Self {
            ordering,
            ageing_s,
            probability: HashMap::new(),
            at_risk_probability: 1.0,
            troughs: BTreeMap::new(),
            pace_into_troughs: false,
            trough_gain: 0.0,
            trough_floor_bytes_per_s: 0.0,
            deferral_max: Duration::ZERO,
        }
    }

    /// Failure probability of `n`: 0 when unknown.
    pub fn probability(&self, n: NodeId) -> f64 {
        self.probability.get(&n).copied().unwrap_or(0.0)
    }

    /// Whether the queue treats `n` as about to fail.
    pub fn at_risk(&self, n: NodeId) -> bool {
        self.ordering == QueueOrdering::ExpectedLoss && self.probability(n) >= self.at_risk_probability
    }
}

/// Expected-loss score of a chunk: `weight × Π p(holder)` plus its age in units of
/// `ageing_s`. With no forecast (every p = 0) this is pure age, i.e. FIFO.
pub fn expected_loss_score(holder_probs: &[f64], weight: f64, age_s: f64, ageing_s: f64) -> (f64, f64) {
    let loss = if holder_probs.is_empty() {
        0.0
    } else {
        holder_probs.iter().map(|p| p.clamp(0.0, 1.0)).product()
    };
    (loss, weight * loss + age_s.max(0.0) / ageing_s.max(1.0))
}

/// Weight of a namespace in the expected loss: 1 + its priority.
pub fn namespace_weight(priority: u32) -> f64 {
    1.0 + f64::from(priority)
}

/// One live object version as the planner sees it.
#[derive(Debug, Clone)]
pub struct ObjectUse {
    /// Namespace.
    pub ns: String,
    /// Key.
    pub key: String,
    /// When the version was committed.
    pub created_ms: u64,
    /// Its distinct chunks.
    pub chunks: Vec<ChunkId>,
}

/// One chunk as the planner sees it.
#[derive(Debug, Clone)]
pub struct ChunkUse {
    /// Id.
    pub id: ChunkId,
    /// Uncompressed length.
    pub len: u32,
    /// When it was first committed.
    pub since_ms: u64,
    /// Recorded holders.
    pub holders: Vec<NodeId>,
}

/// The state one pass plans from.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Wall-clock time of the snapshot (ms since the epoch), for ages and lag.
    pub now_ms: u64,
    /// Every namespace's policy.
    pub namespaces: BTreeMap<String, NsPolicy>,
    /// Live (not deleted) object versions.
    pub objects: Vec<ObjectUse>,
    /// Chunk records.
    pub chunks: Vec<ChunkUse>,
    /// Members with their sites.
    pub members: Vec<Peer>,
    /// Members that answered recently.
    pub alive: HashSet<NodeId>,
}

impl Snapshot {
    fn sites_of(&self, nodes: &[NodeId]) -> BTreeSet<String> {
        crate::raft::members::sites_of(&self.members, nodes)
    }
}

/// One entry at the head of the repair queue, as `ark status` shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueEntry {
    /// An object that uses the chunk (`namespace/key`).
    pub object: String,
    /// The chunk, hex.
    pub chunk: String,
    /// Its bytes.
    pub bytes: u64,
    /// Its live holders.
    pub holders: Vec<NodeId>,
    /// Probability that every live holder fails within the horizon.
    pub loss_probability: f64,
    /// The queue's score (expected loss times weight, plus ageing; or age for FIFO).
    pub score: f64,
}

/// One chunk for one target.
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    /// Chunk id.
    pub id: ChunkId,
    /// Its length.
    pub len: u32,
    /// Its live holders (the sources).
    pub sources: Vec<NodeId>,
    /// Whether its namespace stores compressed.
    pub compress: bool,
}

/// Up to [`PULL_BATCH`] chunks one target pulls, ranked by its best chunk's queue position.
#[derive(Debug, Clone)]
pub struct Batch {
    /// Position of its first job in the queue.
    pub rank: usize,
    /// Who pulls.
    pub target: Peer,
    /// What it pulls.
    pub jobs: Vec<Job>,
    /// The highest loss probability among its chunks.
    pub loss: f64,
    /// Whether it would rather wait for a forecast trough this pass.
    pub trough_ahead: bool,
}

impl Batch {
    /// Bytes it moves.
    pub fn bytes(&self) -> u64 {
        self.jobs.iter().map(|j| u64::from(j.len)).sum()
    }
}

/// What one repair pass found, per namespace.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LagReport {
    /// When the pass read the tables (ms since the epoch, the leader's clock).
    pub scanned_ms: u64,
    /// Per namespace: objects below policy, and how old (ms) the oldest of them was then.
    pub by_ns: BTreeMap<String, (u64, u64)>,
}

impl LagReport {
    /// `ns`'s objects below policy and its lag (ms) at `now_ms`: the oldest object behind
    /// has aged since the pass. (0, 0) for a namespace the pass did not see, which held no
    /// object then.
    pub fn at(&self, ns: &str, now_ms: u64) -> (u64, u64) {
        match self.by_ns.get(ns) {
            Some(&(behind, lag)) if behind > 0 => (behind, lag.saturating_add(now_ms.saturating_sub(self.scanned_ms))),
            _ => (0, 0),
        }
    }

    /// The same figures as of `now_ms`, stamped with it (what the leader sends, so that a
    /// follower whose clock differs from the leader's does not skew them).
    pub fn aged(&self, now_ms: u64) -> LagReport {
        LagReport {
            scanned_ms: now_ms,
            by_ns: self.by_ns.keys().map(|ns| (ns.clone(), self.at(ns, now_ms))).collect(),
        }
    }
}

/// What one pass found and what it will do.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    /// Per namespace: objects below policy, and the age (ms) of the oldest of them, as of
    /// the snapshot's time.
    pub lag: LagReport,
    /// Chunks no live node holds.
    pub lost: u64,
    /// Chunks below their (safe) policy.
    pub queued: usize,
    /// The first [`QUEUE_HEAD`] of them, in queue order.
    pub head: Vec<QueueEntry>,
    /// Batches in the order they should run (before deferral and budget).
    pub batches: Vec<Batch>,
}

#[derive(Clone, Copy)]
struct Need {
    copies: u32,
    min_sites: u32,
    priority: u32,
    compress: bool,
}

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

/// Plans one pass. `batch_bytes_max` closes a batch early once it holds that many bytes
/// (the pass budget; `u64::MAX` without one).
pub fn plan(s: &Snapshot, risk: &RiskView, batch_bytes_max: u64) -> Plan {
    let mut need: HashMap<ChunkId, Need> = HashMap::new();
    // An object using each chunk (its index in `s.objects`), for `ark status`.
    let mut users: HashMap<ChunkId, usize> = HashMap::new();
    for (i, o) in s.objects.iter().enumerate() {
        let Some(p) = s.namespaces.get(&o.ns) else { continue };
        for id in &o.chunks {
            let n = need.entry(*id).or_insert(Need {
                copies: 0,
                min_sites: 0,
                priority: 0,
                compress: p.compress,
            });
            n.copies = n.copies.max(p.copies);
            n.min_sites = n.min_sites.max(p.min_sites);
            n.priority = n.priority.max(p.priority);
            users.entry(*id).or_insert(i);
        }
    }
    let alive: Vec<Peer> = s.members.iter().filter(|m| s.alive.contains(&m.id)).cloned().collect();
    // Nodes at risk neither count as safe copies nor receive new ones (expected-loss only).
    let candidates: Vec<Peer> = alive.iter().filter(|p| !risk.at_risk(p.id)).cloned().collect();

    let sites = SiteIndex::new(&s.members);
    let mut below: HashSet<ChunkId> = HashSet::new();
    let mut work: Vec<Work> = Vec::new();
    let mut lost = 0u64;
    for c in &s.chunks {
        let Some(n) = need.get(&c.id).copied() else { continue };
        let live: Vec<NodeId> = c.holders.iter().copied().filter(|h| s.alive.contains(h)).collect();
        if live.len() < n.copies as usize || sites.count(&live) < n.min_sites as usize {
            below.insert(c.id);
        }
        let safe: Vec<NodeId> = live.iter().copied().filter(|h| !risk.at_risk(*h)).collect();
        if safe.len() >= n.copies as usize && sites.count(&safe) >= n.min_sites as usize {
            continue;
        }
        if live.is_empty() {
            lost += 1;
            continue;
        }
        let age_s = s.now_ms.saturating_sub(c.since_ms) as f64 / 1000.0;
        let holder_probs: Vec<f64> = live.iter().map(|h| risk.probability(*h)).collect();
        let (loss, score) = expected_loss_score(&holder_probs, namespace_weight(n.priority), age_s, risk.ageing_s);
        work.push(Work {
            id: c.id,
            len: c.len,
            since_ms: c.since_ms,
            holders: c.holders.clone(),
            live,
            safe,
            need: n,
            loss,
            score,
        });
    }

    // Lag per namespace, measured before this pass repairs anything: objects below policy
    // and the creation time of the oldest of them.
    let mut behind: HashMap<&str, (u64, u64)> = HashMap::new();
    if !below.is_empty() {
        for o in &s.objects {
            if o.chunks.iter().any(|i| below.contains(i)) {
                let b = behind.entry(o.ns.as_str()).or_insert((0, u64::MAX));
                b.0 += 1;
                b.1 = b.1.min(o.created_ms);
            }
        }
    }
    let lag = LagReport {
        scanned_ms: s.now_ms,
        by_ns: s
            .namespaces
            .keys()
            .map(|ns| {
                let (n, oldest) = behind.get(ns.as_str()).copied().unwrap_or((0, s.now_ms));
                (ns.clone(), (n, s.now_ms.saturating_sub(oldest)))
            })
            .collect(),
    };

    order(&mut work, risk.ordering);
    let head = work
        .iter()
        .take(QUEUE_HEAD)
        .map(|w| QueueEntry {
            object: users
                .get(&w.id)
                .map(|i| format!("{}/{}", s.objects[*i].ns, s.objects[*i].key))
                .unwrap_or_default(),
            chunk: crate::chunks::to_hex(&w.id),
            bytes: u64::from(w.len),
            holders: w.live.clone(),
            loss_probability: w.loss,
            score: w.score,
        })
        .collect();

    // One job per new copy (see the module doc for how a further copy is scored).
    let mut copies: Vec<(f64, usize, Peer)> = Vec::new();
    for (i, w) in work.iter().enumerate() {
        let safe_sites = s.sites_of(&w.safe);
        let short_sites = (w.need.min_sites as usize).saturating_sub(safe_sites.len());
        let want = (w.need.copies as usize)
            .saturating_sub(w.safe.len())
            .max(short_sites)
            .max(1);
        let mut remaining = w.loss;
        let weight = namespace_weight(w.need.priority);
        let age = w.score - weight * w.loss;
        for t in placement::choose(&safe_sites, &w.holders, &candidates, want, placement::chunk_salt(&w.id)) {
            let score = weight * remaining + age;
            remaining *= risk.probability(t.id);
            copies.push((score, i, t));
        }
    }
    if risk.ordering == QueueOrdering::ExpectedLoss {
        // Stable: ties keep the chunk order (oldest first).
        copies.sort_by(|a, b| b.0.partial_cmp(&a.0).unwrap_or(std::cmp::Ordering::Equal));
    }
    // Batches per target, cut in job order, then run in the order of their best job.
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
            trough_ahead: false,
        });
        b.loss = b.loss.max(w.loss);
        b.jobs.push(Job {
            id: w.id,
            len: w.len,
            sources: w.live.clone(),
            compress: w.need.compress,
        });
        if b.jobs.len() == PULL_BATCH || b.bytes() >= batch_bytes_max {
            batches.extend(open.remove(&id));
        }
    }
    batches.extend(open.into_values());
    batches.sort_by_key(|b| b.rank);
    // A batch that protects no endangered chunk would wait while its target's or first
    // source's load is forecast to drop soon.
    if risk.ordering == QueueOrdering::ExpectedLoss && risk.pace_into_troughs {
        let busy = |n: NodeId| trough_ahead(risk.troughs.get(&n), risk.trough_gain, risk.trough_floor_bytes_per_s);
        for b in &mut batches {
            let source = b.jobs.first().and_then(|j| j.sources.first().copied());
            b.trough_ahead = b.loss < URGENT_LOSS && (busy(b.target.id) || source.is_some_and(busy));
        }
    }
    Plan {
        lag,
        lost,
        queued: work.len(),
        head,
        batches,
    }
}

/// The batches that fit one pass's `budget` bytes, in order: every batch that starts
/// before the budget is spent (the last may overrun it), and always at least one.
pub fn within_budget(mut batches: Vec<Batch>, budget: u64) -> Vec<Batch> {
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
    batches
}

/// Which targets' batches have been waiting for a forecast trough, and since when: a batch
/// waits at most `max` in a row; the clock restarts only once no trough is forecast.
#[derive(Debug, Default)]
pub struct Deferrals {
    waiting: HashMap<NodeId, Instant>,
}

impl Deferrals {
    /// Whether a batch for `target` waits this pass, at `now`.
    pub fn defer(&mut self, target: NodeId, trough_ahead: bool, max: Duration, now: Instant) -> bool {
        if !trough_ahead {
            self.waiting.remove(&target);
            return false;
        }
        now.saturating_duration_since(*self.waiting.entry(target).or_insert(now)) < max
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u32 = 1 << 20;

    fn id(n: u8) -> ChunkId {
        [n; 32]
    }

    /// Six nodes in three sites (a: 1, 2; b: 3, 4; c: 5, 6), all alive, one namespace
    /// ("ns": 2 copies in 2 sites) and the given chunks, each used by an object of its own.
    fn snapshot(chunks: &[(u8, u64, &[NodeId])]) -> Snapshot {
        let members = crate::raft::members::six_in_three_sites();
        let policy = NsPolicy {
            copies: 2,
            min_sites: 2,
            ..NsPolicy::default()
        };
        Snapshot {
            now_ms: 4 * 3_600_000,
            namespaces: [("ns".to_string(), policy)].into(),
            objects: chunks
                .iter()
                .map(|(c, since, _)| ObjectUse {
                    ns: "ns".into(),
                    key: format!("k{c}"),
                    created_ms: *since,
                    chunks: vec![id(*c)],
                })
                .collect(),
            chunks: chunks
                .iter()
                .map(|(c, since, holders)| ChunkUse {
                    id: id(*c),
                    len: MIB,
                    since_ms: *since,
                    holders: holders.to_vec(),
                })
                .collect(),
            alive: members.iter().map(|m| m.id).collect(),
            members,
        }
    }

    fn risk(ordering: QueueOrdering, probs: &[(NodeId, f64)]) -> RiskView {
        RiskView {
            probability: probs.iter().copied().collect(),
            at_risk_probability: 0.9,
            ..RiskView::blind(ordering, 3600.0)
        }
    }

    fn head_chunks(p: &Plan) -> Vec<String> {
        p.head.iter().map(|e| e.chunk[..2].to_string()).collect()
    }

    fn first_jobs(p: &Plan) -> Vec<ChunkId> {
        p.batches.iter().map(|b| b.jobs[0].id).collect()
    }

    #[test]
    fn expected_loss_puts_the_endangered_chunk_first_and_fifo_the_oldest() {
        // Chunk 1: 1000 s old, one copy on a healthy node. Chunk 2: 100 s old, one copy on a
        // node forecast to fail.
        let now = snapshot(&[]).now_ms;
        let s = snapshot(&[(1, now - 1_000_000, &[1]), (2, now - 100_000, &[3])]);
        let r = risk(QueueOrdering::ExpectedLoss, &[(3, 0.95)]);
        let p = plan(&s, &r, u64::MAX);
        assert_eq!(
            head_chunks(&p),
            ["02", "01"],
            "expected loss: the endangered chunk first"
        );
        assert_eq!(p.batches[0].jobs[0].id, id(2), "and its copy is pulled first");
        assert!((p.head[0].loss_probability - 0.95).abs() < 1e-12);

        let r = risk(QueueOrdering::Fifo, &[(3, 0.95)]);
        let p = plan(&s, &r, u64::MAX);
        assert_eq!(
            head_chunks(&p),
            ["01", "02"],
            "fifo: the oldest first, whatever the forecast"
        );
        assert_eq!(p.batches[0].jobs[0].id, id(1));
    }

    #[test]
    fn fifo_orders_by_priority_then_age() {
        let mut s = snapshot(&[(1, 0, &[1]), (2, 1000, &[3])]);
        let urgent = NsPolicy {
            copies: 2,
            min_sites: 2,
            priority: 5,
            ..NsPolicy::default()
        };
        s.namespaces.insert("hi".into(), urgent);
        s.objects[1].ns = "hi".into();
        let p = plan(&s, &RiskView::blind(QueueOrdering::Fifo, 3600.0), u64::MAX);
        assert_eq!(
            head_chunks(&p),
            ["02", "01"],
            "the higher priority first although newer"
        );
    }

    #[test]
    fn ageing_lets_an_old_chunk_overtake_a_risky_one() {
        // Chunk 1 waited 4 hours (4 ageing units); chunk 2 is fresh on a node at 0.95.
        let s = snapshot(&[(1, 0, &[1]), (2, 4 * 3_600_000, &[3])]);
        let p = plan(&s, &risk(QueueOrdering::ExpectedLoss, &[(3, 0.95)]), u64::MAX);
        assert_eq!(head_chunks(&p), ["01", "02"], "nothing starves");
        // Without forecasts expected loss is oldest first.
        let s = snapshot(&[(1, 2_000_000, &[1]), (2, 1_000_000, &[3])]);
        let p = plan(&s, &RiskView::blind(QueueOrdering::ExpectedLoss, 3600.0), u64::MAX);
        assert_eq!(head_chunks(&p), ["02", "01"]);
    }

    #[test]
    fn every_endangered_chunk_gets_one_safe_copy_before_any_gets_a_second() {
        // Both chunks live only on node 3 (at risk) in a 3-copy namespace: each needs three
        // new copies. With a budget of one chunk per batch the batches run in job order.
        let mut s = snapshot(&[(1, 0, &[3]), (2, 0, &[3])]);
        if let Some(p) = s.namespaces.get_mut("ns") {
            p.copies = 3;
        }
        let p = plan(&s, &risk(QueueOrdering::ExpectedLoss, &[(3, 0.95)]), u64::from(MIB));
        let jobs = first_jobs(&p);
        assert_eq!(jobs.len(), 6, "three new copies each");
        let first: BTreeSet<ChunkId> = jobs[..2].iter().copied().collect();
        assert_eq!(first, [id(1), id(2)].into(), "first copies of both chunks come first");
        // FIFO (node 3 counts as a copy) does not interleave: chunk 1 gets both its new
        // copies first.
        let p = plan(&s, &risk(QueueOrdering::Fifo, &[(3, 0.95)]), u64::from(MIB));
        assert_eq!(first_jobs(&p)[..2], [id(1), id(1)]);
    }

    #[test]
    fn nodes_at_risk_neither_count_as_safe_nor_receive_copies() {
        // Two copies in two sites, but node 3 is at risk: below its safe policy.
        let s = snapshot(&[(1, 0, &[1, 3])]);
        let r = risk(QueueOrdering::ExpectedLoss, &[(3, 0.95), (5, 0.97)]);
        let p = plan(&s, &r, u64::MAX);
        assert_eq!(p.queued, 1);
        assert_eq!(p.lag.by_ns["ns"].0, 0, "on live holders it is within policy, so no lag");
        for b in &p.batches {
            assert!(
                !r.at_risk(b.target.id),
                "a new copy went to node {} at risk",
                b.target.id
            );
            assert_ne!(
                b.target.site, "a",
                "the new copy goes to another site than the safe one"
            );
        }
        assert!(!p.batches.is_empty());
        // Under FIFO forecasts are ignored: two copies in two sites suffice.
        let p = plan(&s, &risk(QueueOrdering::Fifo, &[(3, 0.95)]), u64::MAX);
        assert_eq!(p.queued, 0);
    }

    #[test]
    fn lag_lost_chunks_and_batches_per_target() {
        let mut s = snapshot(&[(1, 1_000, &[1]), (2, 2_000, &[2]), (3, 3_000, &[4])]);
        s.alive.remove(&4);
        let p = plan(&s, &RiskView::blind(QueueOrdering::ExpectedLoss, 3600.0), u64::MAX);
        assert_eq!(p.lost, 1, "chunk 3's only holder is down");
        assert_eq!(
            p.lag.by_ns["ns"],
            (3, s.now_ms - 1_000),
            "three objects behind, the oldest's age"
        );
        let mut jobs: Vec<ChunkId> = p.batches.iter().flat_map(|b| b.jobs.iter().map(|j| j.id)).collect();
        jobs.sort();
        assert_eq!(
            jobs,
            [id(1), id(2)],
            "one new copy each in another site; nothing for the lost one"
        );
        for b in &p.batches {
            assert!(b.jobs.len() <= PULL_BATCH);
            assert_ne!(b.target.id, 4, "no copy to a node that did not answer");
        }
    }

    #[test]
    fn the_budget_keeps_the_batches_that_start_within_it_and_at_least_one() {
        let s = snapshot(&[(1, 0, &[1]), (2, 1, &[2]), (3, 2, &[3])]);
        let p = plan(
            &s,
            &RiskView::blind(QueueOrdering::ExpectedLoss, 3600.0),
            u64::from(MIB),
        );
        assert_eq!(p.batches.len(), 3, "a 1 MiB budget closes a batch after each chunk");
        let kept = within_budget(p.batches.clone(), u64::from(MIB) + 1);
        assert_eq!(kept.len(), 2, "the second starts before the budget is spent");
        assert_eq!(kept[0].jobs[0].id, id(1), "in queue order");
        assert_eq!(within_budget(p.batches.clone(), 0).len(), 1, "always at least one");
        assert_eq!(within_budget(p.batches, u64::MAX).len(), 3);
    }

    #[test]
    fn only_non_urgent_batches_wait_for_a_trough_and_never_longer_than_the_limit() {
        let s = snapshot(&[(1, 0, &[1]), (2, 0, &[3])]);
        let mut r = risk(QueueOrdering::ExpectedLoss, &[(3, 0.6)]);
        r.pace_into_troughs = true;
        r.trough_gain = 0.3;
        r.trough_floor_bytes_per_s = 1e6;
        // Every node's load is forecast to halve soon.
        r.troughs = (1..=6)
            .map(|n| {
                (
                    n,
                    Trough {
                        now: 10e6,
                        min: 5e6,
                        steps: 2,
                    },
                )
            })
            .collect();
        let p = plan(&s, &r, u64::from(MIB));
        for b in &p.batches {
            let urgent = b.jobs.iter().any(|j| j.id == id(2));
            assert_eq!(b.trough_ahead, !urgent, "chunk 2 (loss 0.6) is urgent and never waits");
        }
        r.pace_into_troughs = false;
        assert!(plan(&s, &r, u64::MAX).batches.iter().all(|b| !b.trough_ahead));

        let mut d = Deferrals::default();
        let (t0, max) = (Instant::now(), Duration::from_secs(60));
        assert!(!d.defer(7, false, max, t0), "no trough: run");
        assert!(d.defer(7, true, max, t0), "trough ahead: wait");
        assert!(d.defer(7, true, max, t0 + Duration::from_secs(59)));
        assert!(
            !d.defer(7, true, max, t0 + max),
            "waited the limit: run although the trough is still ahead"
        );
        assert!(!d.defer(7, true, max, t0 + max * 2), "and keep running while it is");
        assert!(!d.defer(7, false, max, t0 + max * 2));
        assert!(
            d.defer(7, true, max, t0 + max * 2),
            "a new trough may be waited for again"
        );
        assert!(d.defer(8, true, max, t0 + max * 3), "targets wait independently");
    }

    #[test]
    fn expected_loss_multiplies_holders_and_ages() {
        // One holder at 0.9: 0.9 × weight 2 + 60 s / 600 s.
        let (loss, score) = expected_loss_score(&[0.9], 2.0, 60.0, 600.0);
        assert!((loss - 0.9).abs() < 1e-12);
        assert!((score - 1.9).abs() < 1e-12);
        // Two holders: both must fail.
        let (loss, _) = expected_loss_score(&[0.9, 0.1], 1.0, 0.0, 600.0);
        assert!((loss - 0.09).abs() < 1e-12);
        // No forecast: age alone, so older first.
        let (_, old) = expected_loss_score(&[0.0], 1.0, 100.0, 600.0);
        let (_, new) = expected_loss_score(&[0.0], 1.0, 10.0, 600.0);
        assert!(old > new);
        // A chunk on a failing node outranks one an hour older on a healthy node.
        let (_, risky) = expected_loss_score(&[0.95], 1.0, 0.0, 3600.0);
        let (_, aged) = expected_loss_score(&[0.01], 1.0, 3000.0, 3600.0);
        assert!(risky > aged);
        // ...but waiting long enough wins eventually: nothing starves.
        let (_, starved) = expected_loss_score(&[0.0], 1.0, 4.0 * 3600.0, 3600.0);
        assert!(starved > risky);
        assert_eq!(namespace_weight(0), 1.0);
    }

    #[test]
    fn a_trough_counts_only_when_deep_enough_and_the_load_matters() {
        let t = |now, min| Trough { now, min, steps: 2 };
        assert!(trough_ahead(Some(&t(10e6, 5e6)), 0.3, 1e6));
        assert!(
            !trough_ahead(Some(&t(10e6, 8e6)), 0.3, 1e6),
            "20% lower is not worth waiting"
        );
        assert!(
            !trough_ahead(Some(&t(0.5e6, 0.1e6)), 0.3, 1e6),
            "an idle link is never waited out"
        );
        assert!(!trough_ahead(None, 0.3, 1e6), "no forecast, no waiting");
    }

    /// "late": 3 objects behind, the oldest 2 s old at the pass; "fine": none behind.
    fn two_namespaces_scanned_at_10s() -> LagReport {
        LagReport {
            scanned_ms: 10_000,
            by_ns: [("late".to_string(), (3, 2_000)), ("fine".to_string(), (0, 0))]
                .into_iter()
                .collect(),
        }
    }

    #[test]
    fn a_report_aged_for_a_follower_keeps_its_figures_as_of_then() {
        let r = two_namespaces_scanned_at_10s();
        let sent = r.aged(10_700);
        assert_eq!(sent.scanned_ms, 10_700);
        assert_eq!(sent.at("late", 10_700), (3, 2_700));
        assert_eq!(sent.at("fine", 10_700), (0, 0));
    }

    #[test]
    fn a_namespace_behind_ages_from_the_pass_and_one_at_policy_has_no_lag() {
        let r = two_namespaces_scanned_at_10s();
        assert_eq!(r.at("late", 10_500), (3, 2_500));
        assert_eq!(r.at("late", 9_000), (3, 2_000), "a clock step back does not shrink it");
        assert_eq!(r.at("fine", 99_000), (0, 0));
        assert_eq!(r.at("new", 99_000), (0, 0));
    }
}
