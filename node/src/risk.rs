//! Risk on the leader: which nodes are likely to fail, and the repair queue's head.
//!
//! Every telemetry interval the leader (1) makes sure it holds the failure forecaster whose
//! weights are stored as the object `risk.model_object` (a new leader loads them at once, so
//! it starts warm; a new version is picked up within an interval), (2) turns each node's
//! SMART series from the telemetry windows into one row per model day (`risk.day_ms`),
//! keeping the last 31 days itself while it leads (the windows hold one day at the
//! defaults; a new leader starts from what its windows hold), and
//! (3) asks the forecaster for the probability that the node fails within the model's
//! horizon. The repair queue ([`crate::replicate::queue`]) reads these probabilities to order
//! its work and to keep new copies off nodes at risk, and writes back the head of its queue;
//! `ark status` shows both, and `ark_node_failure_risk{node}` exports them.
//!
//! The leader also pre-stages the cluster's hot set: every node reports its most read
//! objects with its telemetry ([`crate::telemetry::hot::HotReads`]); the leader sums them and asks the follower most
//! likely to take over ([`successor`]: a live voter not at risk, lowest failure probability)
//! to read the chunks of the hottest objects that it does not hold into its chunk cache, so
//! that after a failover it serves them without a remote fetch.
//!
//! A node without SMART series (no `smartctl`, a virtual disk) has no probability: the queue
//! treats it as no evidence (0), never as at risk. Everything here is held only while this
//! node leads; a follower answers with nothing.
//!
//! Owns: loading and validating the weights, daily rows, scoring. Must not touch: chunk
//! transfer (the queue's), the windows themselves (telemetry's).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ark_forecast::history::DayRow;
use ark_forecast::{FailureForecaster, GlobalLoadModel, LoadConfig, LoadForecaster, SeriesForecaster};
use tokio::sync::watch;

use crate::config::{QueueOrdering, RiskConfig};
use crate::raft::NodeId;
use crate::replicate::plan::{RiskSource, RiskView, Trough};
use crate::replicate::DataPlane;
use crate::telemetry::hot::HotList;
use crate::telemetry::Telemetry;

/// Largest model blob the leader loads (weights of a small MLP ensemble are a few KiB).
const MODEL_BYTES_MAX: u64 = 16 * 1024 * 1024;

/// Daily rows handed to the forecaster: its sequence features look back `history_days` (20
/// by default), which `fit` refuses above this bound, so every model sees its full history.
const HISTORY_DAYS: usize = ark_forecast::failure::HISTORY_DAYS_MAX as usize;

/// One version of a weights object: `(namespace, key, version)`.
type ObjectVersion = (String, String, u64);

/// How the leader forecasts one node's load.
enum NodeLoad {
    /// A forecaster trained on this node's window alone (no global model stored).
    PerNode(LoadForecaster),
    /// The global model, its copy fine-tuned on this node's window, or the naive method
    /// that beat both there.
    Global(Box<SeriesForecaster>),
}

impl NodeLoad {
    /// The forecast of the next steps after `values` (one per telemetry interval, the first
    /// at `start_s`, the last at `last_s`) that troughs are judged on: with the global model
    /// its 90th percentile, so that a trough counts only when the load is likely (9 in 10)
    /// to fall that low; a per-node forecaster has only its median.
    fn forecast(&self, values: &[f64], start_s: i64, last_s: i64) -> ark_forecast::Result<Vec<f64>> {
        let fc = match self {
            NodeLoad::PerNode(m) => m.forecast(values, last_s)?,
            NodeLoad::Global(m) => m.forecast(values, start_s)?.p90,
        };
        // Traffic is never negative; a model extrapolating a fall below zero means "idle".
        Ok(fc.into_iter().map(|v| v.max(0.0)).collect())
    }

    fn name(&self) -> String {
        match self {
            NodeLoad::PerNode(m) => m.variant_name(),
            NodeLoad::Global(m) => m.method().name(),
        }
    }
}

/// A node's failure forecast.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NodeRisk {
    /// Probability of failure within the horizon.
    pub probability: f64,
    /// Days of history it was judged on.
    pub days: usize,
}

#[derive(Default)]
struct State {
    /// `(namespace, key, version)` of the loaded weights and the forecaster.
    model: Option<(ObjectVersion, Arc<FailureForecaster>)>,
    /// Versions that failed to load, not retried.
    bad_model: Option<ObjectVersion>,
    risks: BTreeMap<NodeId, NodeRisk>,
    /// Where and what the hot set was last pre-staged.
    prestaged: Option<(NodeId, Vec<(String, String)>)>,
    /// Intervals since the last pre-stage request.
    since_prestage: u32,
    /// Each node's daily SMART rows, the last [`HISTORY_DAYS`].
    daily: BTreeMap<NodeId, BTreeMap<i64, Vec<(String, f32)>>>,
    /// Each node's load forecaster and when it was trained or chosen.
    load_models: BTreeMap<NodeId, (Arc<NodeLoad>, std::time::Instant)>,
    /// The stored global load forecaster, `(namespace, key, version)` and the model.
    global: Option<(ObjectVersion, Arc<GlobalLoadModel>)>,
    /// A version of it that failed to load, not retried.
    bad_global: Option<ObjectVersion>,
    /// Each node's latest load forecast.
    troughs: BTreeMap<NodeId, Trough>,
    /// When a node's load training last failed (not retried for a while).
    load_failed: BTreeMap<NodeId, std::time::Instant>,
    /// The stored version of each node's load forecaster this leader wrote or tried.
    load_versions: BTreeMap<NodeId, u64>,
}

/// The leader's risk view, shared by the risk loop, the repair queue and `Cluster.Status`.
pub struct Risk {
    cfg: RiskConfig,
    /// The telemetry interval: one step of the load forecast.
    step: Duration,
    state: Mutex<State>,
}

impl Risk {
    /// An empty view under `cfg`; `step` is the telemetry interval.
    pub fn new(cfg: RiskConfig, step: Duration) -> Self {
        Self {
            cfg,
            step,
            state: Mutex::default(),
        }
    }

    /// The longest a repair batch waits for a forecast trough: one horizon.
    pub fn deferral_max(&self) -> Duration {
        self.step * self.cfg.load_horizon as u32
    }

    /// The configuration.
    pub fn config(&self) -> &RiskConfig {
        &self.cfg
    }

    /// Latest forecast per node (leader only; empty elsewhere).
    pub fn risks(&self) -> BTreeMap<NodeId, NodeRisk> {
        self.state.lock().map(|s| s.risks.clone()).unwrap_or_default()
    }

    /// Failure probability of `node`: 0 when unknown (no evidence is not risk).
    pub fn probability(&self, node: NodeId) -> f64 {
        self.state
            .lock()
            .ok()
            .and_then(|s| s.risks.get(&node).map(|r| r.probability))
            .unwrap_or(0.0)
    }

    /// Whether the queue should treat `node` as about to fail.
    pub fn at_risk(&self, node: NodeId) -> bool {
        self.cfg.ordering == QueueOrdering::ExpectedLoss && self.probability(node) >= self.cfg.at_risk_probability
    }

    /// The loaded weights' object and version, if any.
    pub fn model(&self) -> Option<String> {
        let s = self.state.lock().ok()?;
        s.model.as_ref().map(|((ns, key, v), _)| format!("{ns}/{key}@{v}"))
    }

    /// Latest load forecast per node (leader only).
    pub fn troughs(&self) -> BTreeMap<NodeId, Trough> {
        self.state.lock().map(|s| s.troughs.clone()).unwrap_or_default()
    }

    /// The node the hot set was last pre-staged on, and how many objects.
    pub fn prestaged(&self) -> Option<(NodeId, usize)> {
        let s = self.state.lock().ok()?;
        s.prestaged.as_ref().map(|(n, o)| (*n, o.len()))
    }

    fn clear(&self) {
        if let Ok(mut s) = self.state.lock() {
            // Weights stay: they are the same cluster object whoever leads.
            s.risks.clear();
            s.prestaged = None;
            s.daily.clear();
            s.troughs.clear();
        }
    }
}

impl RiskSource for Risk {
    fn view(&self) -> RiskView {
        RiskView {
            ordering: self.cfg.ordering,
            ageing_s: self.cfg.ageing_s as f64,
            probability: self.risks().into_iter().map(|(n, r)| (n, r.probability)).collect(),
            at_risk_probability: self.cfg.at_risk_probability,
            troughs: self.troughs(),
            pace_into_troughs: self.cfg.pace_into_troughs,
            trough_gain: self.cfg.trough_gain,
            trough_floor_bytes_per_s: self.cfg.trough_floor_bytes_per_s,
            deferral_max: self.deferral_max(),
        }
    }
}

/// Scores every interval while this node leads, until `stop` turns true.
pub async fn run(
    risk: Arc<Risk>,
    dp: Arc<DataPlane>,
    telemetry: Arc<Telemetry>,
    every: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let mut exported: Vec<NodeId> = Vec::new();
    let prestaging = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let training = Arc::new(std::sync::atomic::AtomicBool::new(false));
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        if !dp.members.is_leader() {
            risk.clear();
            continue;
        }
        refresh_model(&risk, &dp).await;
        let model = risk
            .state
            .lock()
            .ok()
            .and_then(|s| s.model.as_ref().map(|m| m.1.clone()));
        let members: Vec<NodeId> = dp.members.all().iter().map(|m| m.id).collect();
        // Daily rows outlive the telemetry windows (one day at the defaults): the leader
        // keeps the last HISTORY_DAYS of each node's rows while it leads.
        let days: Vec<(NodeId, Vec<DayRow>)> = {
            let Ok(mut s) = risk.state.lock() else { continue };
            s.daily.retain(|n, _| members.contains(n));
            members
                .iter()
                .map(|&n| {
                    let acc = s.daily.entry(n).or_default();
                    merge_days(acc, telemetry.smart_daily(n, risk.cfg.day_ms), HISTORY_DAYS);
                    (n, acc.iter().map(|(d, r)| (*d, r.clone())).collect())
                })
                .collect()
        };
        let mut risks = BTreeMap::new();
        if let Some(model) = model {
            let histories: Vec<(NodeId, Vec<DayRow>)> = days.into_iter().filter(|(_, h)| !h.is_empty()).collect();
            let scored = tokio::task::spawn_blocking(move || {
                histories
                    .into_iter()
                    .filter_map(|(n, h)| match model.predict_history(&h) {
                        Ok(Some(p)) => Some((
                            n,
                            NodeRisk {
                                probability: p,
                                days: h.len(),
                            },
                        )),
                        Ok(None) => None,
                        Err(e) => {
                            tracing::warn!(node = n, error = %e, "failure forecast failed");
                            None
                        }
                    })
                    .collect::<Vec<_>>()
            })
            .await
            .unwrap_or_default();
            risks.extend(scored);
        }
        for n in &exported {
            if !risks.contains_key(n) {
                metrics::gauge!("ark_node_failure_risk", "node" => n.to_string()).set(0.0);
            }
        }
        for (n, r) in &risks {
            metrics::gauge!("ark_node_failure_risk", "node" => n.to_string()).set(r.probability);
        }
        exported = risks.keys().copied().collect();
        if let Ok(mut s) = risk.state.lock() {
            s.risks = risks;
        }
        refresh_global_load_model(&risk, &dp).await;
        load_stored_load_models(&risk, &dp, &members).await;
        forecast_load(&risk, &dp, &telemetry, &members, every, &training);
        if risk.cfg.prestage && !prestaging.load(std::sync::atomic::Ordering::Relaxed) {
            prestage(&risk, &dp, &telemetry, &prestaging);
        }
    }
}

/// A node whose load training failed is retried after this long at the earliest.
const LOAD_RETRY_AFTER: Duration = Duration::from_secs(60);

/// The series the load forecaster learns: a node's whole peer traffic.
const LOAD_SERIES: &str = "net_bytes_per_second";

/// Forecasts every node's load with its forecaster, and trains (in the background, one node
/// at a time, one thread) the forecaster of a node that has none or an old one once its
/// window holds enough points.
fn forecast_load(
    risk: &Arc<Risk>,
    dp: &Arc<DataPlane>,
    telemetry: &Telemetry,
    members: &[NodeId],
    every: Duration,
    training: &Arc<std::sync::atomic::AtomicBool>,
) {
    let cfg = &risk.cfg;
    let step_s = (every.as_secs_f64().round() as i64).max(1);
    let series: Vec<(NodeId, Vec<(u64, f64)>)> = members
        .iter()
        .map(|&n| (n, telemetry.series_points(n, LOAD_SERIES)))
        .collect();
    let (models, failed) = risk
        .state
        .lock()
        .map(|s| (s.load_models.clone(), s.load_failed.clone()))
        .unwrap_or_default();
    let mut troughs = BTreeMap::new();
    for (n, pts) in &series {
        let (Some((model, _)), Some(&(last_ms, now))) = (models.get(n), pts.last()) else {
            continue;
        };
        let values: Vec<f64> = pts.iter().map(|p| p.1).collect();
        let start_s = (pts[0].0 / 1000) as i64;
        match model.forecast(&values, start_s, (last_ms / 1000) as i64) {
            Ok(fc) if !fc.is_empty() => {
                let (i, min) =
                    fc.iter()
                        .copied()
                        .enumerate()
                        .fold((0, f64::INFINITY), |a, (i, v)| if v < a.1 { (i, v) } else { a });
                metrics::gauge!("ark_node_load_forecast_min_bytes_per_second", "node" => n.to_string()).set(min);
                troughs.insert(*n, Trough { now, min, steps: i + 1 });
            }
            Ok(_) => {}
            Err(e) => tracing::debug!(node = n, error = %e, "load forecast failed"),
        }
    }
    if let Ok(mut s) = risk.state.lock() {
        s.troughs = troughs;
        s.load_models.retain(|n, _| members.contains(n));
    }
    if training.load(std::sync::atomic::Ordering::Relaxed) {
        return;
    }
    let global = risk
        .state
        .lock()
        .ok()
        .and_then(|s| s.global.as_ref().map(|g| g.1.clone()));
    let config = LoadConfig {
        horizon: cfg.load_horizon,
        window: cfg.load_window,
        ..LoadConfig::default()
    };
    let needed = match &global {
        // The choice needs a validation slice (30%) after the model's context.
        Some(g) => 2 * (g.config().context + g.horizon() + 20),
        None => 2 * (cfg.load_window + cfg.load_horizon + 20),
    };
    let retrain = Duration::from_secs(cfg.load_retrain_s);
    let due = series.into_iter().find(|(n, pts)| {
        pts.len() >= needed
            && models.get(n).is_none_or(|(_, at)| at.elapsed() >= retrain)
            && failed
                .get(n)
                .is_none_or(|at| at.elapsed() >= retrain.min(LOAD_RETRY_AFTER))
    });
    let Some((node, pts)) = due else { return };
    training.store(true, std::sync::atomic::Ordering::Relaxed);
    let (risk, training, dp) = (risk.clone(), training.clone(), dp.clone());
    let start_s = (pts[0].0 / 1000) as i64;
    let values: Vec<f64> = pts.iter().map(|p| p.1).collect();
    tokio::spawn(async move {
        let fit = ark_forecast::spawn_training(move || match global {
            // Choosing fine-tunes a copy on this window: training, so on its own thread too.
            Some(g) => g
                .select(&values, None, start_s, step_s, GLOBAL_SELECTION_FRACTION)
                .map(|m| (NodeLoad::Global(Box::new(m)), None)),
            None => LoadForecaster::fit(&values, start_s, step_s, &config)
                .map(|(m, r)| (NodeLoad::PerNode(m), Some(r.epochs))),
        });
        let outcome = match fit {
            Ok(handle) => tokio::task::spawn_blocking(move || handle.join())
                .await
                .map_err(|e| e.to_string())
                .and_then(|j| j.map_err(|_| "training thread panicked".to_string()))
                .and_then(|r| r.map_err(|e| e.to_string())),
            Err(e) => Err(e.to_string()),
        };
        match outcome {
            Ok((model, epochs)) => {
                tracing::info!(node, method = %model.name(), ?epochs, "load forecaster ready");
                metrics::counter!("ark_risk_load_trainings_total", "result" => "ok").increment(1);
                // Only a per-node forecaster is worth storing: the global one already is.
                let blob = match &model {
                    NodeLoad::PerNode(m) => Some(m.to_bytes()),
                    NodeLoad::Global(_) => None,
                };
                if let Ok(mut s) = risk.state.lock() {
                    s.load_models.insert(node, (Arc::new(model), std::time::Instant::now()));
                }
                if let Some(blob) = blob {
                    store_load_model(&risk, &dp, node, blob).await;
                }
            }
            Err(why) => {
                tracing::warn!(node, %why, "load forecaster training failed");
                metrics::counter!("ark_risk_load_trainings_total", "result" => "error").increment(1);
                if let Ok(mut s) = risk.state.lock() {
                    s.load_failed.insert(node, std::time::Instant::now());
                }
            }
        }
        training.store(false, std::sync::atomic::Ordering::Relaxed);
    });
}

/// Share of a node's window (its most recent end) on which the global model, its tuned copy
/// and the baselines are compared.
const GLOBAL_SELECTION_FRACTION: f64 = 0.3;

/// Where node `n`'s load forecaster is kept: beside the failure forecaster.
fn load_model_key(risk: &Risk, n: NodeId) -> Option<(String, String)> {
    let (ns, _) = risk.cfg.model_object.split_once('/')?;
    Some((ns.to_string(), format!("load-node-{n}")))
}

/// Stores a freshly trained load forecaster as a cluster object, so that the next leader
/// starts with it; without the namespace (no forecaster stored yet) it stays in memory.
async fn store_load_model(risk: &Risk, dp: &Arc<DataPlane>, node: NodeId, blob: ark_forecast::Result<Vec<u8>>) {
    let Some((ns, key)) = load_model_key(risk, node) else {
        return;
    };
    let blob = match blob {
        Ok(b) => b,
        Err(e) => {
            tracing::warn!(node, error = %e, "cannot encode the load forecaster");
            return;
        }
    };
    if !dp.reader.namespace(&ns).is_ok_and(|n| n.is_some()) {
        tracing::debug!(namespace = %ns, "no namespace for the load forecaster's weights; kept in memory");
        return;
    }
    match dp.put_small_object(&ns, &key, bytes::Bytes::from(blob)).await {
        Ok(version) => {
            tracing::info!(node, object = %format!("{ns}/{key}"), version, "load forecaster stored");
            if let Ok(mut s) = risk.state.lock() {
                s.load_versions.insert(node, version);
            }
        }
        Err(why) => tracing::warn!(node, %why, "cannot store the load forecaster"),
    }
}

/// A leader without a node's load forecaster loads the stored one (once per version),
/// unless a global load forecaster is stored: that one serves every node.
async fn load_stored_load_models(risk: &Risk, dp: &DataPlane, members: &[NodeId]) {
    if risk.state.lock().map(|s| s.global.is_some()).unwrap_or(true) {
        return;
    }
    for &n in members {
        let Some((ns, key)) = load_model_key(risk, n) else {
            return;
        };
        let Ok(Some(entry)) = dp.reader.get(&ns, &key, 0) else {
            continue;
        };
        if entry.record.deleted {
            continue;
        }
        let known = risk
            .state
            .lock()
            .map(|s| s.load_models.contains_key(&n) || s.load_versions.get(&n) == Some(&entry.version))
            .unwrap_or(true);
        if known {
            continue;
        }
        let loaded = match dp.read_small_object(&entry, MODEL_BYTES_MAX).await {
            Ok(b) => tokio::task::spawn_blocking(move || LoadForecaster::from_bytes(&b).map_err(|e| e.to_string()))
                .await
                .map_err(|e| e.to_string())
                .and_then(|r| r),
            Err(e) => Err(e),
        };
        let Ok(mut s) = risk.state.lock() else { return };
        s.load_versions.insert(n, entry.version);
        match loaded {
            Ok(m) => {
                tracing::info!(
                    node = n,
                    version = entry.version,
                    "load forecaster loaded from the cluster"
                );
                metrics::counter!("ark_risk_load_models_loaded_total", "result" => "ok").increment(1);
                s.load_models
                    .insert(n, (Arc::new(NodeLoad::PerNode(m)), std::time::Instant::now()));
            }
            Err(why) => {
                tracing::warn!(node = n, %why, "cannot load the stored load forecaster");
                metrics::counter!("ark_risk_load_models_loaded_total", "result" => "error").increment(1);
            }
        }
    }
}

/// Hot objects pre-staged on the likely successor.
const PRESTAGE_OBJECTS: usize = 16;
/// The same hot set is re-sent this often (intervals), to cover chunks evicted since.
const PRESTAGE_REFRESH_INTERVALS: u32 = 30;

/// Sends the cluster's hot set to the follower most likely to take over, when either
/// changed or every [`PRESTAGE_REFRESH_INTERVALS`]; the request runs in the background
/// (`busy` is set meanwhile).
fn prestage(risk: &Arc<Risk>, dp: &Arc<DataPlane>, telemetry: &Telemetry, busy: &Arc<std::sync::atomic::AtomicBool>) {
    let hot = merge_hot(&telemetry.hot_reports(), PRESTAGE_OBJECTS);
    let members = dp.members.all();
    let site_of = |n: NodeId| members.iter().find(|m| m.id == n).map(|m| m.site.clone());
    let my_site = site_of(dp.id);
    let Some(target) = successor(
        dp.id,
        // A witness holds no chunks: never the successor to warm.
        &dp.members
            .voter_ids()
            .into_iter()
            .filter(|n| !dp.members.is_witness(*n))
            .collect::<Vec<_>>(),
        |n| site_of(n) == my_site,
        |n| dp.recently_alive(n),
        |n| risk.probability(n) >= risk.cfg.at_risk_probability,
        |n| risk.probability(n),
    ) else {
        return;
    };
    let Some(peer) = members.into_iter().find(|m| m.id == target) else {
        return;
    };
    {
        let Ok(mut s) = risk.state.lock() else { return };
        s.since_prestage += 1;
        let same = s.prestaged.as_ref().is_some_and(|(n, o)| *n == target && *o == hot);
        if hot.is_empty() || (same && s.since_prestage < PRESTAGE_REFRESH_INTERVALS) {
            return;
        }
        s.since_prestage = 0;
        s.prestaged = Some((target, hot.clone()));
    }
    busy.store(true, std::sync::atomic::Ordering::Relaxed);
    let (dp, busy) = (dp.clone(), busy.clone());
    tokio::spawn(async move {
        match dp.prestage_on(&peer, hot).await {
            Ok(a) => tracing::debug!(
                node = peer.id,
                fetched = a.fetched,
                cached = a.cached,
                local = a.local,
                failed = a.failed,
                "hot set pre-staged"
            ),
            Err(e) => tracing::warn!(node = peer.id, error = %e, "pre-staging the hot set failed"),
        }
        busy.store(false, std::sync::atomic::Ordering::Relaxed);
    });
}

/// Adds `fresh` rows to `acc` (a day present in both takes the fresh row, which saw more
/// of that day) and keeps the newest `keep` days.
fn merge_days(acc: &mut BTreeMap<i64, Vec<(String, f32)>>, fresh: BTreeMap<i64, Vec<(String, f32)>>, keep: usize) {
    acc.extend(fresh);
    while acc.len() > keep {
        acc.pop_first();
    }
}

/// What became of a weights object since the leader last looked.
enum Refreshed<T> {
    /// Same version as loaded (or as the one that failed): nothing to do.
    Unchanged,
    /// The object is gone.
    Removed,
    /// A new version, decoded.
    Loaded(ObjectVersion, T),
    /// A new version that cannot be read or decoded.
    Failed(ObjectVersion, String),
}

/// Reads and decodes `object` (`NAMESPACE/KEY`) when its version differs from `loaded` and
/// from `bad` (a version that failed is not retried).
async fn refresh<T: Send + 'static>(
    dp: &DataPlane,
    object: &str,
    loaded: Option<ObjectVersion>,
    bad: Option<ObjectVersion>,
    decode: fn(&[u8]) -> ark_forecast::Result<T>,
) -> Refreshed<T> {
    let Some((ns, key)) = object.split_once('/') else {
        return Refreshed::Unchanged;
    };
    let entry = match dp.reader.get(ns, key, 0) {
        Ok(Some(e)) if !e.record.deleted => e,
        Ok(_) => return Refreshed::Removed,
        Err(e) => {
            tracing::warn!(%object, error = %e, "cannot look up a forecaster object");
            return Refreshed::Unchanged;
        }
    };
    let want = (ns.to_string(), key.to_string(), entry.version);
    if loaded.as_ref() == Some(&want) || bad.as_ref() == Some(&want) {
        return Refreshed::Unchanged;
    }
    let decoded = match dp.read_small_object(&entry, MODEL_BYTES_MAX).await {
        Ok(bytes) => tokio::task::spawn_blocking(move || decode(&bytes).map_err(|e| e.to_string()))
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r),
        Err(e) => Err(e),
    };
    match decoded {
        Ok(m) => Refreshed::Loaded(want, m),
        Err(why) => Refreshed::Failed(want, why),
    }
}

/// Loads the failure forecaster's weights object when it is new or changed. Failures are
/// logged once per version and the previous weights stay in use.
async fn refresh_model(risk: &Risk, dp: &DataPlane) {
    let (loaded, bad) = match risk.state.lock() {
        Ok(s) => (s.model.as_ref().map(|m| m.0.clone()), s.bad_model.clone()),
        Err(_) => return,
    };
    let object = &risk.cfg.model_object;
    let refreshed = refresh(dp, object, loaded, bad, FailureForecaster::from_bytes).await;
    let Ok(mut s) = risk.state.lock() else { return };
    match refreshed {
        Refreshed::Unchanged => {}
        Refreshed::Removed => {
            if s.model.take().is_some() {
                tracing::info!(%object, "failure forecaster removed");
            }
        }
        Refreshed::Loaded(want, m) => {
            tracing::info!(%object, version = want.2, columns = m.columns().len(), "failure forecaster loaded");
            metrics::counter!("ark_risk_model_loads_total", "result" => "ok").increment(1);
            s.model = Some((want, Arc::new(m)));
            s.bad_model = None;
        }
        Refreshed::Failed(want, why) => {
            tracing::warn!(%object, version = want.2, %why, "cannot load the failure forecaster; keeping the previous one");
            metrics::counter!("ark_risk_model_loads_total", "result" => "error").increment(1);
            s.bad_model = Some(want);
        }
    }
}

/// Loads the global load forecaster when it is new or changed; every node's choice made
/// with another version (or with none) is dropped, so each is chosen again with this one.
async fn refresh_global_load_model(risk: &Risk, dp: &DataPlane) {
    let (loaded, bad) = match risk.state.lock() {
        Ok(s) => (s.global.as_ref().map(|m| m.0.clone()), s.bad_global.clone()),
        Err(_) => return,
    };
    let object = &risk.cfg.load_model_object;
    let refreshed = refresh(dp, object, loaded, bad, GlobalLoadModel::from_bytes).await;
    let Ok(mut s) = risk.state.lock() else { return };
    match refreshed {
        Refreshed::Unchanged => {}
        Refreshed::Removed => {
            if s.global.take().is_some() {
                tracing::info!(%object, "global load forecaster removed; back to one per node");
                s.load_models.clear();
            }
        }
        Refreshed::Loaded(want, m) => {
            tracing::info!(%object, version = want.2, horizon = m.horizon(), "global load forecaster loaded");
            metrics::counter!("ark_risk_global_load_model_loads_total", "result" => "ok").increment(1);
            s.global = Some((want, Arc::new(m)));
            s.bad_global = None;
            s.load_models.clear();
        }
        Refreshed::Failed(want, why) => {
            tracing::warn!(%object, version = want.2, %why, "cannot load the global load forecaster; keeping the previous one");
            metrics::counter!("ark_risk_global_load_model_loads_total", "result" => "error").increment(1);
            s.bad_global = Some(want);
        }
    }
}

/// The cluster's hot set from every node's report: reads summed per object, most read
/// first, at most `n`.
pub fn merge_hot(reports: &[HotList], n: usize) -> Vec<(String, String)> {
    let mut sum: HashMap<(String, String), f64> = HashMap::new();
    for r in reports {
        for (ns, key, reads) in r {
            *sum.entry((ns.clone(), key.clone())).or_default() += reads;
        }
    }
    let mut v: Vec<((String, String), f64)> = sum.into_iter().collect();
    v.sort_by(|a, b| {
        b.1.partial_cmp(&a.1)
            .unwrap_or(std::cmp::Ordering::Equal)
            .then(a.0.cmp(&b.0))
    });
    v.into_iter().take(n).map(|(k, _)| k).collect()
}

/// The follower most likely to take over: a live voter other than the leader, not at risk,
/// preferably in another site than the leader's (the loss of the leader's site is what
/// failover is for), with the lowest failure probability, then the lowest id. `None` when
/// there is none.
pub fn successor(
    leader: NodeId,
    voters: &[NodeId],
    same_site_as_leader: impl Fn(NodeId) -> bool,
    alive: impl Fn(NodeId) -> bool,
    at_risk: impl Fn(NodeId) -> bool,
    probability: impl Fn(NodeId) -> f64,
) -> Option<NodeId> {
    voters
        .iter()
        .copied()
        .filter(|&n| n != leader && alive(n) && !at_risk(n))
        .min_by(|&a, &b| {
            same_site_as_leader(a)
                .cmp(&same_site_as_leader(b))
                .then(
                    probability(a)
                        .partial_cmp(&probability(b))
                        .unwrap_or(std::cmp::Ordering::Equal),
                )
                .then(a.cmp(&b))
        })
}

/// Describes this module's metrics (HELP text and unit) to the recorder; called once at start-up by
/// `server` (through `metrics::install`).
pub(crate) fn describe_metrics() {
    use metrics::{describe_counter, describe_gauge};
    describe_gauge!(
        "ark_node_failure_risk",
        "Forecast probability that the node's drive fails, by node (leader only; 0 without evidence)."
    );
    describe_gauge!(
        "ark_node_load_forecast_min_bytes_per_second",
        "Lowest forecast peer traffic of the node over the load horizon, by node (leader only)."
    );
    describe_counter!(
        "ark_risk_load_trainings_total",
        "Load forecasters made ready on the leader (a per-node training, or the choice and fine-tuning of the global model for one node), by result (ok, error)."
    );
    describe_counter!(
        "ark_risk_load_models_loaded_total",
        "Stored load forecasters loaded by a new leader, by result (ok, error)."
    );
    describe_counter!(
        "ark_risk_model_loads_total",
        "Failure forecaster loads from the cluster object risk.model_object, by result (ok, error)."
    );
    describe_counter!(
        "ark_risk_global_load_model_loads_total",
        "Global load forecaster loads from the cluster object risk.load_model_object, by result (ok, error)."
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hot_set_sums_nodes_and_successor_avoids_risk() {
        let r1 = vec![("n".to_string(), "x".to_string(), 2.0), ("n".into(), "y".into(), 1.0)];
        let r2 = vec![("n".to_string(), "y".to_string(), 5.0)];
        assert_eq!(merge_hot(&[r1, r2], 1), vec![("n".to_string(), "y".to_string())]);
        let p = |n: NodeId| [0.0, 0.1, 0.95, 0.2][n as usize];
        let apart = |_| false;
        // Leader 1; node 2 is at risk; node 3 remains.
        assert_eq!(successor(1, &[1, 2, 3], apart, |_| true, |n| p(n) >= 0.9, p), Some(3));
        assert_eq!(successor(1, &[1, 2, 3], apart, |n| n != 3, |n| p(n) >= 0.9, p), None);
        // Lowest probability wins among the eligible.
        assert_eq!(successor(2, &[1, 2, 3], apart, |_| true, |_| false, p), Some(1));
        // Another site than the leader's comes first, even at a higher probability.
        assert_eq!(successor(2, &[1, 2, 3], |n| n == 1, |_| true, |_| false, p), Some(3));
    }

    #[test]
    fn daily_rows_outlive_the_window_and_stay_bounded() {
        let row = |v: f32| vec![("smart_5_raw".to_string(), v)];
        let mut acc = BTreeMap::new();
        // The window held days 0..3, later only days 2..5: days 0 and 1 are kept.
        merge_days(&mut acc, (0..3).map(|d| (d, row(d as f32))).collect(), 31);
        merge_days(&mut acc, (2..5).map(|d| (d, row(10.0 + d as f32))).collect(), 31);
        assert_eq!(acc.keys().copied().collect::<Vec<_>>(), vec![0, 1, 2, 3, 4]);
        assert_eq!(acc[&1], row(1.0));
        assert_eq!(acc[&2], row(12.0), "a day seen again takes the fresher row");
        merge_days(&mut acc, (5..40).map(|d| (d, row(d as f32))).collect(), 31);
        assert_eq!(acc.len(), 31);
        assert_eq!(acc.keys().next(), Some(&9));
    }
}
