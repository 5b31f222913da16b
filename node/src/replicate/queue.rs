//! The leader's repair loop: every `objects.repair_interval_ms` it takes a snapshot of the
//! object tables, the membership, who answered recently and the forecasts, asks the planner
//! ([`super::plan`]) what to repair in which order, and executes the plan: per-target pull
//! batches, paced to `objects.repair_mib_per_s` (one budget across passes), non-urgent ones
//! deferred into forecast troughs; the target pulls the chunks from a live holder (verifying
//! them) and the leader records the new holder through consensus. It also exports each
//! namespace's lag (age of its oldest object below policy, 0 when none is) as
//! `ark_namespace_lag_seconds` and `ark_namespace_behind_objects`, and keeps the queue's head
//! for `ark status`.
//!
//! Owns executing the plan and pacing. Must not touch: the order itself (the planner's).

use std::collections::{BTreeSet, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use tokio::sync::{oneshot, watch};

use super::plan::{self, Batch, ChunkUse, Deferrals, ObjectUse, RiskView, Snapshot};
use super::{DataPlane, Peer};
use crate::chunks::ChunkId;
use crate::raft::{Command, NodeId, Op};

/// With `objects.repair_mib_per_s`, the bytes of one pass: this long at that rate.
const PASS_BUDGET: Duration = Duration::from_secs(1);

/// After a pass that found nothing to repair, the next scan waits at least this many times
/// as long as that pass's scan took: with writes arriving all the time and nothing to
/// repair, scanning takes about a quarter of a core at most (one scan per four scan durations,
/// counted from the start of the last), whatever the namespace's size.
const QUIET_SCAN_SPACING: u32 = 4;

/// Runs the queue until `stop` turns true. Does nothing on followers.
///
/// A pass reads every object and chunk record, so its cost grows with the cluster's
/// contents. When a pass finds nothing below policy, the queue does not scan again until
/// what the plan depends on changes ([`Inputs`]: a newly applied entry, the membership,
/// who answers, who is at risk), and then not before [`QUIET_SCAN_SPACING`] times that
/// scan's duration has passed. A pass that finds work is followed by the next one after
/// `objects.repair_interval_ms`, as before.
pub async fn run(dp: Arc<DataPlane>, mut stop: watch::Receiver<bool>) {
    let every = Duration::from_millis(dp.cfg.repair_interval_ms.max(100));
    // One budget across passes: a new pass does not get a fresh allowance.
    let pacer = Pacer::new(dp.cfg.repair_mib_per_s.saturating_mul(1024 * 1024));
    let mut scanner: Option<Scanner> = None;
    // The inputs of the last pass, when it found nothing, and the earliest next scan.
    let mut quiet: Option<(Inputs, Instant)> = None;
    // A node that just took over scans within a tenth of a second, not an interval later:
    // namespace queries wait for its first report (`super::lag`).
    let mut leading = false;
    loop {
        let pause = if leading {
            every
        } else {
            every.min(Duration::from_millis(100))
        };
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let led = std::mem::replace(&mut leading, dp.members.is_leader());
        if !leading {
            if led {
                // Only the leader measures lag; a former leader's figures would go stale.
                dp.publish_lag(None);
                if let Ok(mut h) = dp.queue_head.lock() {
                    *h = Default::default();
                }
                quiet = None;
            }
            continue;
        }
        let risk = dp.risk.view();
        let inputs = Inputs::now(&dp, &risk);
        if let Some((last, not_before)) = &quiet {
            if *last == inputs || Instant::now() < *not_before {
                continue;
            }
        }
        if scanner.is_none() {
            match Scanner::start(dp.clone()) {
                Ok(s) => scanner = Some(s),
                Err(e) => {
                    tracing::error!(error = %e, "the repair queue could not start its scan thread");
                    continue;
                }
            }
        }
        let Some(scanner) = &scanner else { continue };
        let started = Instant::now();
        quiet = match pass(&dp, scanner, &pacer, &inputs, risk).await {
            Ok(Found::Nothing { scan }) => {
                metrics::counter!("ark_repair_scans_total", "found" => "nothing").increment(1);
                Some((inputs, started + every.max(scan * QUIET_SCAN_SPACING)))
            }
            Ok(Found::Work) => {
                metrics::counter!("ark_repair_scans_total", "found" => "work").increment(1);
                None
            }
            Err(e) => {
                tracing::warn!(error = %e, "replication pass failed");
                None
            }
        };
    }
}

/// What a pass's plan depends on besides the time, read before the pass. A pass that found
/// nothing to repair would find nothing again while all of this stays the same: the object
/// tables change only by applying log entries, and which chunks are below policy depends
/// only on them, the members' sites, who answers and who is at risk.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Inputs {
    /// The state machine's last applied log index.
    applied: Option<u64>,
    /// Data members with their sites.
    members: Vec<Peer>,
    /// Data members that answered recently.
    alive: BTreeSet<NodeId>,
    /// Members the forecasts put at risk (they count for no safe copy).
    at_risk: BTreeSet<NodeId>,
}

impl Inputs {
    fn now(dp: &DataPlane, risk: &RiskView) -> Self {
        // Applied index first: an entry applied while the rest is read makes the next
        // pass scan again, never the reverse.
        let applied = dp.members.applied_index();
        let members = dp.members.data_peers();
        let alive = members.iter().map(|m| m.id).filter(|n| dp.recently_alive(*n)).collect();
        let at_risk = members.iter().map(|m| m.id).filter(|n| risk.at_risk(*n)).collect();
        Self {
            applied,
            members,
            alive,
            at_risk,
        }
    }
}

/// What a pass found.
enum Found {
    /// Nothing below policy and no chunk lost; reading and planning took `scan`.
    Nothing { scan: Duration },
    /// Something to repair (or lost).
    Work,
}

/// Reads the state one pass plans from. Blocking (it reads every record): on the scan thread.
fn snapshot(dp: &DataPlane, inputs: &Inputs) -> Result<Snapshot, String> {
    let mut s = Snapshot {
        now_ms: crate::clock::wall_ms(),
        ..Snapshot::default()
    };
    for (ns, rec) in dp.reader.namespaces().map_err(|e| e.to_string())? {
        for o in dp.reader.list(&ns, "", true).map_err(|e| e.to_string())? {
            if o.record.deleted {
                continue;
            }
            s.objects.push(ObjectUse {
                ns: ns.clone(),
                key: o.key,
                created_ms: o.record.created_ms,
                chunks: o.record.chunks.iter().map(|c| c.id).collect(),
            });
        }
        s.namespaces.insert(ns, rec.policy);
    }
    s.chunks = dp
        .reader
        .chunks()
        .map_err(|e| e.to_string())?
        .into_iter()
        .map(|(id, r)| ChunkUse {
            id,
            len: r.len,
            since_ms: r.since_ms,
            holders: r.holders,
        })
        .collect();
    s.members = inputs.members.clone();
    s.alive = inputs.alive.iter().copied().collect();
    Ok(s)
}

/// The thread that reads the records and plans, off the runtime that serves requests and
/// Raft. One long-lived thread rather than the blocking pool: the memory a scan allocates
/// and frees is then reused by the next scan, instead of staying in the allocator arena of
/// whichever pool thread ran it (on the leader of a 50,000-object namespace the pool's
/// threads kept about 300 MiB that way).
struct Scanner {
    jobs: std::sync::mpsc::Sender<ScanJob>,
}

/// What to scan with, and where the plan goes.
type ScanJob = (Inputs, RiskView, u64, oneshot::Sender<Result<plan::Plan, String>>);

impl Scanner {
    /// Starts the thread; it ends when the scanner is dropped.
    fn start(dp: Arc<DataPlane>) -> std::io::Result<Self> {
        let (jobs, rx) = std::sync::mpsc::channel::<ScanJob>();
        std::thread::Builder::new()
            .name("ark-repair-scan".into())
            .spawn(move || {
                for (inputs, risk, budget, reply) in rx {
                    let run = std::panic::AssertUnwindSafe(|| {
                        snapshot(&dp, &inputs).map(|snap| plan::plan(&snap, &risk, budget))
                    });
                    let result =
                        std::panic::catch_unwind(run).unwrap_or_else(|_| Err("the repair scan panicked".into()));
                    let _ = reply.send(result);
                }
            })?;
        Ok(Self { jobs })
    }

    /// Reads the records and plans one pass with `risk` and a batch budget of `budget` bytes.
    async fn scan(&self, inputs: Inputs, risk: RiskView, budget: u64) -> Result<plan::Plan, String> {
        let (reply, plan) = oneshot::channel();
        let stopped = || "the repair scan thread stopped".to_string();
        self.jobs.send((inputs, risk, budget, reply)).map_err(|_| stopped())?;
        plan.await.map_err(|_| stopped())?
    }
}

/// One pass: measure, then repair what is below policy.
async fn pass(
    dp: &DataPlane,
    scanner: &Scanner,
    pacer: &Pacer,
    inputs: &Inputs,
    risk: RiskView,
) -> Result<Found, String> {
    let rate = dp.cfg.repair_mib_per_s.saturating_mul(1024 * 1024);
    let budget = if rate > 0 {
        (rate as f64 * PASS_BUDGET.as_secs_f64()) as u64
    } else {
        u64::MAX
    };
    let started = Instant::now();
    let p = scanner.scan(inputs.clone(), risk.clone(), budget).await?;
    let scan = started.elapsed();
    metrics::histogram!("ark_repair_scan_seconds").record(scan.as_secs_f64());
    metrics::gauge!("ark_chunks_without_live_copy").set(p.lost as f64);
    for (ns, (behind, lag_ms)) in &p.lag.by_ns {
        metrics::gauge!("ark_namespace_lag_seconds", "namespace" => ns.clone()).set(*lag_ms as f64 / 1000.0);
        metrics::gauge!("ark_namespace_behind_objects", "namespace" => ns.clone()).set(*behind as f64);
    }
    dp.publish_lag(Some(p.lag.clone()));
    metrics::gauge!("ark_replication_queue_chunks").set(p.queued as f64);
    metrics::gauge!("ark_replication_queue_head_loss_probability")
        .set(p.head.first().map_or(0.0, |e| e.loss_probability));
    if let Ok(mut h) = dp.queue_head.lock() {
        *h = (p.head.clone(), p.queued as u64);
    }
    // Batches are cut from queued chunks only: none queued, none to run.
    if p.queued == 0 && p.lost == 0 {
        return Ok(Found::Nothing { scan });
    }
    let mut batches = p.batches;
    if batches.is_empty() {
        return Ok(Found::Work);
    }
    let before = batches.len();
    let now = std::time::Instant::now();
    batches.retain(|b| !pacer.defer(b.target.id, b.trough_ahead, risk.deferral_max, now));
    let deferred = before - batches.len();
    if deferred > 0 {
        metrics::counter!("ark_repair_deferred_batches_total").increment(deferred as u64);
    }
    if batches.is_empty() {
        return Ok(Found::Work);
    }
    if rate > 0 {
        batches = plan::within_budget(batches, budget);
    }
    let failed: Mutex<HashSet<NodeId>> = Default::default();
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
    Ok(Found::Work)
}

/// Spaces transfers so that they average at most `rate` bytes per second (0: no limit).
/// Slots are handed out in call order, so batches start in queue order.
pub struct Pacer {
    rate: u64,
    next: Mutex<tokio::time::Instant>,
    /// Per target: since when its batches have been waiting for a forecast trough.
    deferrals: Mutex<Deferrals>,
}

impl Pacer {
    /// A pacer of `rate` bytes per second (0: no limit).
    pub fn new(rate: u64) -> Self {
        Self {
            rate,
            next: Mutex::new(tokio::time::Instant::now()),
            deferrals: Mutex::default(),
        }
    }

    /// Whether a batch for `target` waits this pass (see [`Deferrals::defer`]).
    fn defer(&self, target: NodeId, trough_ahead: bool, max: Duration, now: std::time::Instant) -> bool {
        self.deferrals
            .lock()
            .is_ok_and(|mut d| d.defer(target, trough_ahead, max, now))
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
    let ids: Vec<ChunkId> = b.jobs.iter().map(|j| j.id).collect();
    let mut src_ids: Vec<NodeId> = b.jobs.iter().flat_map(|j| j.sources.iter().copied()).collect();
    src_ids.sort_unstable();
    src_ids.dedup();
    let mut sources: Vec<Peer> = dp
        .members
        .all()
        .into_iter()
        .filter(|m| src_ids.contains(&m.id))
        .collect();
    sources.sort_by_key(|s| (s.site != target.site, s.id));
    let compress = b.jobs.iter().any(|j| j.compress);
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
            if let Err(e) = dp.front.propose(op, Duration::from_secs(10)).await {
                tracing::warn!(target = target.id, error = %e, "recording new holder failed");
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

/// Describes this module's metrics (HELP text and unit) to the recorder; called once at start-up by
/// `server` (through `metrics::install`).
pub(crate) fn describe_metrics() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
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
    describe_histogram!(
        "ark_repair_scan_seconds",
        Unit::Seconds,
        "Time one repair pass took to read the object and chunk records and plan (leader only)."
    );
    describe_counter!(
        "ark_repair_scans_total",
        "Repair passes that read the records, by whether they found anything below policy (leader only)."
    );
    describe_counter!(
        "ark_replication_repaired_chunks_total",
        "Chunk copies added by the leader's repair queue."
    );
}
