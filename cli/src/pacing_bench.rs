//! `ark bench pacing`: does deferring repair into forecast load troughs spare the
//! foreground, and what does it cost in time to policy?
//!
//! One run: a fresh 3-site playground (one real `arkd` per site, loopback) whose telemetry
//! interval is shortened to `step_ms`, so that the leader's load forecaster
//! (`risk.load_window` + `risk.load_horizon` at their defaults) trains within a minute or
//! two. A replayed load trace (`timestamp,value` CSV, NAB layout) drives foreground object
//! writes: one trace step per telemetry interval, scaled so that the trace's 99th
//! percentile is `peak_mib_per_s` (higher steps are clipped there: one NAB trace has a
//! single step 75× its p99). Bulk data is written first; then the trace runs until the
//! leader has a load forecaster for both nodes that will survive (the warm-up); then a
//! follower is killed (SIGKILL) and removed from the cluster (`ark members remove`, as an
//! operator replacing it would), and the repair queue rebuilds its copies on the survivors
//! while the trace keeps running. Each seed (the trace's starting step and the object
//! bytes) runs twice with the same repair budget (`objects.repair_mib_per_s`): with
//! `risk.pace_into_troughs` on (non-urgent batches wait while a forecast trough is ahead)
//! and off (a constant rate).
//!
//! Owns the experiment and its pure helpers (trace scaling, the write schedule). Must not
//! touch: the node's pacing itself (`replicate::queue`, `replicate::plan`).

use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use ark_client::objects::{PutOptions, PutSource};
use ark_client::{ArkClient, DurabilityMode, NamespacePolicy};
use ark_playground::playground::{self, Layout, Playground};
use nix::sys::signal::Signal;
use rand::{RngCore, SeedableRng};
use serde::Serialize;

use crate::bench::{metric_sum, metrics_text, percentile, sum_samples};

/// Namespace of the bulk data written before the warm-up.
const DATA_NS: &str = "data";
/// Namespace the trace-driven foreground writes into.
const FG_NS: &str = "fg";
/// Foreground puts in flight at most; a later put waits, and its latency counts from the
/// time the trace scheduled it (no coordinated omission).
const FG_IN_FLIGHT_MAX: usize = 32;
/// Foreground records kept at most (a run of a few minutes writes a few thousand).
const FG_RECORDS_MAX: usize = 1_000_000;
/// Bulk writers in flight.
const BULK_WRITERS: usize = 4;
/// How often the leader's repair backlog is read.
const POLL_EVERY: Duration = Duration::from_millis(200);
/// The playground's telemetry interval, replaced by `step_ms`.
const PLAYGROUND_INTERVAL_LINE: &str = "\ninterval_ms = 1000\n";
/// Foreground latencies of the first seconds of the warm-up (connections, first
/// elections of placement) are left out of the baseline.
const BASELINE_SKIP: Duration = Duration::from_secs(10);

/// Experiment settings.
#[derive(Debug, Clone)]
pub struct Params {
    /// The load trace (`timestamp,value` CSV).
    pub trace: PathBuf,
    /// Seeds: the trace's starting step and the bytes written; each runs both modes.
    pub seeds: Vec<u64>,
    /// Telemetry interval and trace step, ms.
    pub step_ms: u64,
    /// Foreground write rate at the trace's 99th percentile, MiB/s.
    pub peak_mib_per_s: f64,
    /// Repair budget (`objects.repair_mib_per_s`), the same in both modes.
    pub repair_mib_per_s: u64,
    /// Bulk data written before the warm-up, MiB.
    pub data_mib: u64,
    /// Bytes per foreground object (bulk objects are four times larger).
    pub object_bytes: usize,
    /// Longest warm-up: the kill comes then even without forecasters (reported).
    pub warmup_max_s: u64,
    /// Longest wait for the repair after the kill.
    pub repair_max_s: u64,
    /// Working directory (one playground per run).
    pub dir: PathBuf,
}

/// Foreground write latencies over one period.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Latencies {
    /// Acknowledged puts scheduled in the period.
    pub writes: usize,
    /// Failed puts scheduled in the period.
    pub errors: usize,
    /// Median, ms.
    pub p50_ms: f64,
    /// 99th percentile, ms.
    pub p99_ms: f64,
    /// Slowest, ms.
    pub max_ms: f64,
}

/// One run's figures.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    /// Seed.
    pub seed: u64,
    /// `risk.pace_into_troughs`.
    pub pace_into_troughs: bool,
    /// The trace step the foreground started at.
    pub trace_start_step: usize,
    /// The leader (never the killed node).
    pub leader: u64,
    /// The killed follower.
    pub killed: u64,
    /// Seconds of trace-driven writes before the kill.
    pub warmup_s: f64,
    /// Whether the leader had a load forecaster (a forecast) for every survivor at the kill.
    pub forecasters_for_survivors: bool,
    /// Survivors the leader forecast at the kill.
    pub forecast_nodes: Vec<u64>,
    /// Bytes acknowledged before the kill (bulk and foreground).
    pub bytes_written_before_kill: u64,
    /// Foreground writes scheduled during the warm-up (after its first seconds): no repair.
    pub baseline: Latencies,
    /// Foreground writes scheduled from the kill until every object met policy (or the
    /// repair wait ran out).
    pub during_repair: Latencies,
    /// Seconds from the kill until the leader had no object below policy (none: not within
    /// `repair_max_s`).
    pub policy_met_after_s: Option<f64>,
    /// Whether `verify` on the survivors found every object at policy afterwards.
    pub verified_at_policy: bool,
    /// Chunk bytes the survivors fetched from each other after the kill
    /// (`ark_replication_bytes_fetched_total`; nothing else reads during the run).
    pub bytes_repaired: u64,
    /// Repair batches the leader deferred into forecast troughs
    /// (`ark_repair_deferred_batches_total`).
    pub deferred_batches: u64,
    /// Foreground p50 (ms) of the writes scheduled in each 5 s after the kill.
    pub repair_p50_ms_by_5s: Vec<f64>,
    /// Leader status polls during the repair that showed a survivor's load and forecast.
    pub forecast_polls: usize,
    /// Of those, the polls where some survivor had a trough ahead by the default rule
    /// (load above `trough_floor_bytes_per_s`, forecast low below `1 - trough_gain` of it).
    pub trough_ahead_polls: usize,
    /// Mean over those polls and survivors of the load the leader saw, MiB/s.
    pub survivor_load_mib_per_s: f64,
    /// Mean over the same of the forecast low, MiB/s.
    pub survivor_forecast_min_mib_per_s: f64,
}

/// `risk.trough_gain` and `risk.trough_floor_bytes_per_s` at their defaults, which the
/// experiment keeps: only to report how often the leader's forecast showed a trough.
const TROUGH_GAIN: f64 = 0.3;
/// See [`TROUGH_GAIN`].
const TROUGH_FLOOR_BYTES_PER_S: f64 = 1_048_576.0;

/// Reads a `timestamp,value` CSV (header line first): the values in file order.
pub fn parse_trace(text: &str) -> anyhow::Result<Vec<f64>> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate().skip(1) {
        if line.trim().is_empty() {
            continue;
        }
        let v = line
            .rsplit(',')
            .next()
            .and_then(|v| v.trim().parse::<f64>().ok())
            .filter(|v| v.is_finite() && *v >= 0.0)
            .with_context(|| format!("line {}: expected `timestamp,value` with a value >= 0", i + 1))?;
        out.push(v);
    }
    if out.len() < 2 {
        bail!("the trace has fewer than two values");
    }
    Ok(out)
}

/// The trace as write rates: scaled so that its 99th percentile is `peak` (bytes per
/// second), steps above it clipped to `peak`.
pub fn scale_trace(values: &[f64], peak: f64) -> anyhow::Result<Vec<f64>> {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let idx = ((sorted.len() as f64 - 1.0) * 0.99).round() as usize;
    let p99 = sorted
        .get(idx.min(sorted.len().saturating_sub(1)))
        .copied()
        .unwrap_or(0.0);
    if p99 <= 0.0 {
        bail!("the trace's 99th percentile is 0: nothing to scale");
    }
    Ok(values.iter().map(|v| (v / p99 * peak).min(peak)).collect())
}

/// Whole objects of `object_bytes` written in each step of `step_s` seconds at `rates`
/// (bytes per second); what does not fill an object carries over to the next step, so the
/// bytes written never fall behind the trace by more than one object.
pub fn objects_per_step(rates: &[f64], step_s: f64, object_bytes: usize) -> Vec<u32> {
    let size = object_bytes.max(1) as f64;
    let mut carry = 0.0;
    rates
        .iter()
        .map(|r| {
            carry += r * step_s;
            let n = (carry / size).floor();
            carry -= n * size;
            n as u32
        })
        .collect()
}

/// Latencies of the records scheduled in `[from, to)` (ms since the foreground started).
fn latencies(records: &[Record], from_ms: u64, to_ms: u64) -> Latencies {
    let mut ok: Vec<u32> = Vec::new();
    let mut errors = 0;
    for r in records.iter().filter(|r| r.at_ms >= from_ms && r.at_ms < to_ms) {
        if r.ok {
            ok.push(r.latency_us);
        } else {
            errors += 1;
        }
    }
    ok.sort_unstable();
    Latencies {
        writes: ok.len(),
        errors,
        p50_ms: percentile(&ok, 0.5),
        p99_ms: percentile(&ok, 0.99),
        max_ms: ok.last().map_or(0.0, |m| f64::from(*m) / 1000.0),
    }
}

/// One foreground put.
#[derive(Debug, Clone, Copy)]
struct Record {
    /// When the trace scheduled it, ms since the foreground started.
    at_ms: u64,
    /// From the scheduled time to the answer.
    latency_us: u32,
    ok: bool,
}

/// Runs every seed in both modes; `say` narrates.
pub async fn run(p: &Params, say: &dyn Fn(&str)) -> anyhow::Result<Vec<RunReport>> {
    std::fs::create_dir_all(&p.dir).with_context(|| format!("creating {}", p.dir.display()))?;
    let text = std::fs::read_to_string(&p.trace).with_context(|| format!("reading {}", p.trace.display()))?;
    let rates = scale_trace(&parse_trace(&text)?, p.peak_mib_per_s * 1048576.0)?;
    let mean = rates.iter().sum::<f64>() / rates.len() as f64;
    say(&format!(
        "{} trace steps of {} ms; foreground p99 step {:.1} MiB/s, mean {:.2} MiB/s; repair budget {} MiB/s",
        rates.len(),
        p.step_ms,
        p.peak_mib_per_s,
        mean / 1048576.0,
        p.repair_mib_per_s
    ));
    let mut reports = Vec::new();
    for &seed in &p.seeds {
        // Alternate which mode runs first, so that a machine getting busier over the
        // experiment does not favour one mode.
        let modes = if seed % 2 == 0 { [true, false] } else { [false, true] };
        for pace in modes {
            say(&format!(
                "seed {seed}, {}: warm-up, kill, repair ...",
                if pace { "trough pacing" } else { "constant rate" }
            ));
            let r = run_one(p, seed, pace, &rates).await?;
            say(&format!(
                "  killed node {} after {:.0} s of trace (forecasts for {:?}); foreground p50/p99 {:.1}/{:.1} ms before, {:.1}/{:.1} ms during repair ({} writes, {} errors); policy met after {}; {:.1} MiB repaired; {} batches deferred; trough ahead in {}/{} polls (survivors' load {:.2} MiB/s, forecast low {:.2} MiB/s on average)",
                r.killed,
                r.warmup_s,
                r.forecast_nodes,
                r.baseline.p50_ms,
                r.baseline.p99_ms,
                r.during_repair.p50_ms,
                r.during_repair.p99_ms,
                r.during_repair.writes,
                r.during_repair.errors,
                r.policy_met_after_s.map_or("never".to_string(), |t| format!("{t:.1} s")),
                r.bytes_repaired as f64 / 1048576.0,
                r.deferred_batches,
                r.trough_ahead_polls,
                r.forecast_polls,
                r.survivor_load_mib_per_s,
                r.survivor_forecast_min_mib_per_s
            ));
            reports.push(r);
        }
    }
    Ok(reports)
}

async fn run_one(p: &Params, seed: u64, pace: bool, rates: &[f64]) -> anyhow::Result<RunReport> {
    let dir = p
        .dir
        .join(format!("pacing-{seed}-{}", if pace { "pace" } else { "constant" }));
    if dir.exists() {
        let _ = playground::down(&dir, Duration::from_secs(5));
        std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    let layout = Layout {
        sites: 3,
        nodes_per_site: 1,
        settings: vec![
            (0, "risk".to_string(), format!("pace_into_troughs = {pace}")),
            (
                0,
                "objects".to_string(),
                format!("repair_mib_per_s = {}", p.repair_mib_per_s),
            ),
        ],
        ..Layout::default()
    };
    let (_, mut children) = playground::up(&dir, &layout).await?;
    let result = async {
        let pg = restart_with_interval(&dir, &mut children, p.step_ms).await?;
        drive(p, seed, pace, rates, &dir, &pg).await
    }
    .await;
    let _ = playground::down(&dir, Duration::from_secs(5));
    for c in &mut children {
        let _ = c.wait();
    }
    result
}

/// The playground writes a 1 s telemetry interval and a setting cannot repeat a key, so
/// the nodes are stopped, their `[telemetry] interval_ms` set to `step_ms`, and started
/// again (same data, same cluster).
async fn restart_with_interval(dir: &Path, children: &mut Vec<Child>, step_ms: u64) -> anyhow::Result<Playground> {
    let pg = Playground::load(dir)?;
    for n in &pg.nodes {
        playground::signal_node(n, Signal::SIGTERM)?;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    for c in children.iter_mut() {
        while c.try_wait()?.is_none() {
            if Instant::now() > deadline {
                // Did not stop in time: it is restarted from the same data all the same.
                let _ = c.kill();
                c.wait().context("waiting for a killed node")?;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    children.clear();
    for n in &pg.nodes {
        let text = std::fs::read_to_string(&n.config)?;
        if !text.contains(PLAYGROUND_INTERVAL_LINE) {
            bail!(
                "{} has no `interval_ms = 1000` line to replace; the playground's config changed",
                n.config.display()
            );
        }
        let text = text.replacen(PLAYGROUND_INTERVAL_LINE, &format!("\ninterval_ms = {step_ms}\n"), 1);
        std::fs::write(&n.config, text)?;
    }
    for n in &pg.nodes {
        let (_, child) = playground::start_node(dir, n.id)?;
        children.push(child);
    }
    let pg = Playground::load(dir)?;
    playground::wait_ready(dir, &pg, Duration::from_secs(30)).await?;
    Ok(pg)
}

/// Writes `total` bytes of seeded random objects of `size` through `clients` in turn,
/// [`BULK_WRITERS`] at a time; returns the bytes acknowledged.
async fn bulk_write(clients: &[ArkClient], seed: u64, total: u64, size: usize) -> anyhow::Result<u64> {
    let count = total.div_ceil(size.max(1) as u64);
    let mut tasks = Vec::new();
    for w in 0..BULK_WRITERS as u64 {
        let c = clients[(w as usize) % clients.len()].clone();
        tasks.push(tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed.wrapping_mul(1_000_003).wrapping_add(w));
            let mut done = 0u64;
            for i in (w..count).step_by(BULK_WRITERS) {
                let mut buf = vec![0u8; size];
                rng.fill_bytes(&mut buf);
                let src = PutSource::Reader {
                    reader: Box::new(std::io::Cursor::new(buf)),
                    size: Some(size as u64),
                };
                c.put_object(DATA_NS, &format!("bulk-{i:06}"), src, &PutOptions::default())
                    .await
                    .with_context(|| format!("writing {DATA_NS}/bulk-{i:06}"))?;
                done += size as u64;
            }
            anyhow::Ok(done)
        }));
    }
    let mut sum = 0;
    for t in tasks {
        sum += t.await??;
    }
    Ok(sum)
}

/// The trace-driven foreground: from `start_step` on (wrapping), each step's objects are
/// spread evenly over the step and put through `clients` in turn until `stop`.
#[allow(clippy::too_many_arguments)]
fn foreground(
    clients: Vec<ArkClient>,
    counts: Vec<u32>,
    start_step: usize,
    step: Duration,
    size: usize,
    seed: u64,
    stop: Arc<AtomicBool>,
    records: Arc<Mutex<Vec<Record>>>,
    written: Arc<std::sync::atomic::AtomicU64>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let slots = Arc::new(tokio::sync::Semaphore::new(FG_IN_FLIGHT_MAX));
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed.wrapping_mul(7_919).wrapping_add(1));
        let t0 = tokio::time::Instant::now();
        let mut put = 0u64;
        let mut i = 0usize;
        while !stop.load(Ordering::Relaxed) {
            let n = counts[(start_step + i) % counts.len()];
            let step_start = t0 + step * i as u32;
            for k in 0..n {
                let at = step_start + step * k / n;
                tokio::time::sleep_until(at).await;
                let Ok(permit) = slots.clone().acquire_owned().await else {
                    return;
                };
                let mut buf = vec![0u8; size];
                rng.fill_bytes(&mut buf);
                let c = clients[(put as usize) % clients.len()].clone();
                let key = format!("fg-{put:07}");
                put += 1;
                let (records, written) = (records.clone(), written.clone());
                let at_ms = at.duration_since(t0).as_millis() as u64;
                tokio::spawn(async move {
                    let src = PutSource::Reader {
                        reader: Box::new(std::io::Cursor::new(buf)),
                        size: Some(size as u64),
                    };
                    let ok = c.put_object(FG_NS, &key, src, &PutOptions::default()).await.is_ok();
                    let latency_us = u32::try_from(at.elapsed().as_micros()).unwrap_or(u32::MAX);
                    if ok {
                        written.fetch_add(size as u64, Ordering::Relaxed);
                    }
                    if let Ok(mut r) = records.lock() {
                        if r.len() < FG_RECORDS_MAX {
                            r.push(Record { at_ms, latency_us, ok });
                        }
                    }
                    drop(permit);
                });
            }
            i += 1;
            tokio::time::sleep_until(t0 + step * i as u32).await;
        }
        // Wait for the puts still in flight.
        let _ = slots.acquire_many(FG_IN_FLIGHT_MAX as u32).await;
    })
}

/// Survivors the leader currently forecasts (its status shows a forecast low for them).
async fn forecast_nodes(leader: &ArkClient, survivors: &[u64]) -> Vec<u64> {
    match leader.status().await {
        Ok(s) => s
            .nodes
            .iter()
            .filter(|n| survivors.contains(&n.id) && n.load_forecast_min.is_some())
            .map(|n| n.id)
            .collect(),
        Err(_) => Vec::new(),
    }
}

async fn drive(
    p: &Params,
    seed: u64,
    pace: bool,
    rates: &[f64],
    dir: &Path,
    pg: &Playground,
) -> anyhow::Result<RunReport> {
    let client = ArkClient::new(&Playground::client_config(dir)?)?;
    let leader = client.status().await?.leader_id.context("no leader")?;
    // The highest-id follower dies; the others survive.
    let killed = pg
        .nodes
        .iter()
        .map(|n| n.id)
        .filter(|&n| n != leader)
        .max()
        .context("no follower to kill")?;
    let survivors: Vec<u64> = pg.nodes.iter().map(|n| n.id).filter(|&n| n != killed).collect();
    let leader_node = pg.node(leader).context("leader missing")?.clone();
    let via = |keep: &dyn Fn(u64) -> bool| -> Vec<ArkClient> {
        pg.nodes
            .iter()
            .filter(|n| keep(n.id))
            .map(|n| {
                client
                    .with_endpoints(vec![n.client_addr.clone()])
                    .with_op_timeout(Duration::from_secs(30))
            })
            .collect()
    };
    let all = via(&|_| true);
    let at_leader = client.with_endpoints(vec![leader_node.client_addr.clone()]);
    for ns in [DATA_NS, FG_NS] {
        client
            .create_namespace(ns, NamespacePolicy::replicated(2, 2, DurabilityMode::Sync))
            .await?;
    }
    let bulk = bulk_write(&all, seed, p.data_mib * 1048576, p.object_bytes * 4).await?;

    // Warm-up: the trace, through the nodes that will survive (so that the kill fails no
    // put by itself), until the leader forecasts both of them.
    let step = Duration::from_millis(p.step_ms);
    let counts = objects_per_step(rates, step.as_secs_f64(), p.object_bytes);
    let start_step = (seed as usize).wrapping_mul(613) % counts.len();
    let stop = Arc::new(AtomicBool::new(false));
    let records: Arc<Mutex<Vec<Record>>> = Arc::default();
    let written = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let started = Instant::now();
    let fg = foreground(
        via(&|n| n != killed),
        counts,
        start_step,
        step,
        p.object_bytes,
        seed,
        stop.clone(),
        records.clone(),
        written.clone(),
    );
    let warmup_until = started + Duration::from_secs(p.warmup_max_s);
    let mut forecast = Vec::new();
    while Instant::now() < warmup_until {
        forecast = forecast_nodes(&at_leader, &survivors).await;
        if forecast.len() == survivors.len() && started.elapsed() >= BASELINE_SKIP * 2 {
            break;
        }
        tokio::time::sleep(step).await;
    }
    let survivor_metrics: Vec<String> = survivors
        .iter()
        .filter_map(|n| pg.node(*n).map(|n| n.metrics_addr.clone()))
        .collect();
    let fetched = |addrs: &[String]| -> f64 {
        addrs
            .iter()
            .map(|a| metric_sum(a, "ark_replication_bytes_fetched_total"))
            .sum()
    };
    let fetched_before = fetched(&survivor_metrics);
    let deferred_before = metric_sum(&leader_node.metrics_addr, "ark_repair_deferred_batches_total");
    let bytes_before_kill = bulk + written.load(Ordering::Relaxed);

    playground::signal_node(pg.node(killed).context("node missing")?, Signal::SIGKILL)?;
    let killed_at = Instant::now();
    // The operator removes the dead node, as when it is replaced: while it is a member,
    // every sync upload probes it and waits out one RPC timeout (`DataPlane::live_peers`),
    // which would hide what the repair does to the foreground.
    at_leader
        .with_op_timeout(Duration::from_secs(30))
        .remove(killed)
        .await
        .with_context(|| format!("removing the killed node {killed} from the cluster"))?;
    let warmup_s = killed_at.duration_since(started).as_secs_f64();

    // Repair: until the leader has seen objects below policy and then none.
    let repair_until = killed_at + Duration::from_secs(p.repair_max_s);
    let mut seen_behind = false;
    let mut policy_met_after_s = None;
    let (mut forecast_polls, mut trough_ahead_polls) = (0, 0);
    let (mut load_sum, mut min_sum, mut load_n) = (0.0, 0.0, 0usize);
    while Instant::now() < repair_until {
        tokio::time::sleep(POLL_EVERY).await;
        if let Ok(st) = at_leader.status().await {
            let seen: Vec<(f64, f64)> = st
                .nodes
                .iter()
                .filter(|n| survivors.contains(&n.id))
                .filter_map(|n| Some((n.load_bytes_per_second?, n.load_forecast_min?)))
                .collect();
            if !seen.is_empty() {
                forecast_polls += 1;
                if seen
                    .iter()
                    .any(|(now, min)| *now > TROUGH_FLOOR_BYTES_PER_S && *min < (1.0 - TROUGH_GAIN) * now)
                {
                    trough_ahead_polls += 1;
                }
                for (now, min) in &seen {
                    load_sum += now;
                    min_sum += min;
                    load_n += 1;
                }
            }
        }
        let behind = metrics_text(&leader_node.metrics_addr)
            .ok()
            .and_then(|t| sum_samples(&t, "ark_namespace_behind_objects"));
        match behind {
            Some(b) if b > 0.0 => seen_behind = true,
            Some(_) if seen_behind => {
                policy_met_after_s = Some(killed_at.elapsed().as_secs_f64());
                break;
            }
            _ => {}
        }
    }
    let repair_end = Instant::now();
    stop.store(true, Ordering::Relaxed);
    fg.await.context("the foreground writer failed")?;
    let deferred_batches = metric_sum(&leader_node.metrics_addr, "ark_repair_deferred_batches_total") - deferred_before;
    let bytes_repaired = (fetched(&survivor_metrics) - fetched_before).max(0.0) as u64;
    let verified_at_policy = client
        .with_endpoints(pg.client_addrs(|n| n.id != killed))
        .with_op_timeout(Duration::from_secs(120))
        .verify(None)
        .await
        .map(|r| r.all_at_policy)
        .unwrap_or(false);
    let records = records.lock().map(|r| r.clone()).unwrap_or_default();
    let ms = |t: Instant| t.saturating_duration_since(started).as_millis() as u64;
    Ok(RunReport {
        seed,
        pace_into_troughs: pace,
        trace_start_step: start_step,
        leader,
        killed,
        warmup_s,
        forecasters_for_survivors: forecast.len() == survivors.len(),
        forecast_nodes: forecast,
        bytes_written_before_kill: bytes_before_kill,
        baseline: latencies(&records, BASELINE_SKIP.as_millis() as u64, ms(killed_at)),
        during_repair: latencies(&records, ms(killed_at), ms(repair_end)),
        policy_met_after_s,
        verified_at_policy,
        bytes_repaired,
        deferred_batches: deferred_batches.max(0.0) as u64,
        repair_p50_ms_by_5s: (ms(killed_at)..ms(repair_end))
            .step_by(5000)
            .map(|from| latencies(&records, from, (from + 5000).min(ms(repair_end))).p50_ms)
            .collect(),
        forecast_polls,
        trough_ahead_polls,
        survivor_load_mib_per_s: load_sum / load_n.max(1) as f64 / 1048576.0,
        survivor_forecast_min_mib_per_s: min_sum / load_n.max(1) as f64 / 1048576.0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trace_is_read_in_order_and_bad_lines_are_refused() {
        let t = "timestamp,value\n2014-04-10 00:04:00,251643.0\n2014-04-10 00:09:00,3203510\n\n";
        assert_eq!(parse_trace(t).unwrap(), vec![251643.0, 3203510.0]);
        assert!(parse_trace("timestamp,value\n2014-04-10 00:04:00,x\n1,2\n").is_err());
        assert!(parse_trace("timestamp,value\n1,-3\n1,2\n").is_err());
        assert!(parse_trace("timestamp,value\n1,2\n").is_err(), "one value is no trace");
    }

    #[test]
    fn trace_is_scaled_to_its_p99_and_an_outlier_is_clipped() {
        // 200 steps: 1 most of the time, 4 every tenth step, one outlier of 1000.
        let mut v: Vec<f64> = (0..200).map(|i| if i % 10 == 0 { 4.0 } else { 1.0 }).collect();
        v[5] = 1000.0;
        let r = scale_trace(&v, 8.0).unwrap();
        assert_eq!(r[0], 8.0, "the p99 (4) maps to the peak");
        assert_eq!(r[1], 2.0, "the rest keeps its proportion");
        assert_eq!(r[5], 8.0, "the outlier is clipped to the peak, not allowed to dwarf it");
        assert!(r.iter().all(|x| *x <= 8.0));
        assert!(scale_trace(&[0.0, 0.0], 8.0).is_err());
    }

    #[test]
    fn schedule_keeps_the_bytes_of_the_trace_within_one_object() {
        let rates = [100.0, 250.0, 0.0, 1000.0, 30.0, 30.0, 30.0];
        let counts = objects_per_step(&rates, 0.5, 100);
        // Step bytes 50, 125, 0, 500, 15, 15, 15: carried remainders make whole objects.
        assert_eq!(counts, vec![0, 1, 0, 5, 0, 1, 0]);
        let wanted: f64 = rates.iter().map(|r| r * 0.5).sum();
        let got = f64::from(counts.iter().sum::<u32>()) * 100.0;
        assert!(wanted - got >= 0.0 && wanted - got < 100.0, "{wanted} vs {got}");
    }

    #[test]
    fn latencies_count_only_their_period() {
        let r = |at_ms, ms: u32, ok| Record {
            at_ms,
            latency_us: ms * 1000,
            ok,
        };
        let recs = [
            r(0, 500, true),
            r(100, 10, true),
            r(150, 20, false),
            r(200, 30, true),
            r(300, 1, true),
        ];
        let l = latencies(&recs, 100, 300);
        assert_eq!((l.writes, l.errors), (2, 1));
        assert_eq!(l.max_ms, 30.0);
        assert_eq!(l.p50_ms, 30.0);
    }
}
