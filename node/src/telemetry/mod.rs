//! Telemetry: every node samples its own health once per `telemetry.interval_ms` and sends
//! the sample to the leader, which keeps bounded windows per (node, series) for the
//! forecaster and for operators (`ark telemetry`).
//!
//! Owns the sampler (peer links from [`crate::net::LinkStats`], log fsync latency from
//! [`LatencyStats`] filled by the log writer, free space by `statvfs` of the data dir, CPU
//! from `/proc`, SMART attributes through `smartctl --json` when it is installed), the
//! `telemetry` peer message in both directions, the leader's [`windows::Windows`] and the
//! metrics of all of these. It only reads: it never changes connections, Raft state or
//! files. Pure parts live in [`parse`] and [`windows`].
//!
//! Series names (one point per interval each): `link_rtt_seconds:P`,
//! `link_tx_bytes_per_second:P`, `link_rx_bytes_per_second:P` (peer frame bytes on every
//! connection to and from P, both lanes, dialled and accepted), `link_inflight_rpcs:P` (at
//! the sample) and `link_inflight_peak_rpcs:P` (most at once in the interval),
//! `link_timeouts:P`, `link_errors:P` (in the interval) for every peer P this node calls
//! or is called by;
//! `fsync_count`, `fsync_max_seconds`, `fsync_mean_seconds` (the latter two when the log
//! was written in the interval); `disk_free_bytes`, `disk_total_bytes`; `cpu_load1`,
//! `cpu_busy_ratio`; `smart_raw:ID` (ATA) or `smart_raw:nvme_KEY` (NVMe health log).

pub mod hot;
pub mod parse;
pub mod windows;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ark_proto::v1::{
    peer_request, peer_response, HotObject, NodeTelemetry, PeerRequest, RaftCodec, TelemetryAck, TelemetryReport,
    TelemetryResponse, TelemetrySample, TelemetrySeries,
};
use tokio::sync::watch;

use crate::config::TelemetryConfig;
pub use crate::latency::{LatencyStats, LatencySummary};
use crate::net::PeerPool;
use crate::raft::{ArkRaft, NodeId};
use hot::{HotList, HotReads, HOT_REPORTED_MAX};
use parse::CpuTimes;
use windows::Windows;

/// `smartctl` is asked at most this often (SMART attributes change slowly and the query
/// can wake a sleeping disk); between two runs the last answer is reported again.
const SMART_REFRESH: Duration = Duration::from_secs(60);
/// Deadline of one `smartctl` run.
const SMART_TIMEOUT: Duration = Duration::from_secs(5);

/// Per peer link, in one sample.
#[derive(Debug, Clone, Default, PartialEq)]
struct LinkSample {
    peer: u64,
    rtt: Option<Duration>,
    tx_bytes_per_second: Option<f64>,
    rx_bytes_per_second: Option<f64>,
    inflight: u64,
    inflight_peak: u64,
    timeouts: u64,
    errors: u64,
    timeouts_total: u64,
    errors_total: u64,
    /// Frame bytes exchanged with the peer so far, every connection and lane.
    tx_bytes_total: u64,
    rx_bytes_total: u64,
}

/// One interval's sample of this node.
#[derive(Debug, Clone, Default, PartialEq)]
struct Sample {
    links: Vec<LinkSample>,
    fsync: Option<LatencySummary>,
    disk_free_bytes: Option<u64>,
    disk_total_bytes: Option<u64>,
    cpu_load1: Option<f64>,
    cpu_busy_ratio: Option<f64>,
    smart: Vec<(String, f64)>,
}

impl Sample {
    /// The series this sample contributes, one point each.
    fn series(&self) -> Vec<(String, f64)> {
        let mut out = Vec::new();
        for l in &self.links {
            let p = l.peer;
            if let Some(r) = l.rtt {
                out.push((format!("link_rtt_seconds:{p}"), r.as_secs_f64()));
            }
            if let Some(r) = l.tx_bytes_per_second {
                out.push((format!("link_tx_bytes_per_second:{p}"), r));
            }
            if let Some(r) = l.rx_bytes_per_second {
                out.push((format!("link_rx_bytes_per_second:{p}"), r));
            }
            out.push((format!("link_inflight_rpcs:{p}"), l.inflight as f64));
            out.push((format!("link_inflight_peak_rpcs:{p}"), l.inflight_peak as f64));
            out.push((format!("link_timeouts:{p}"), l.timeouts as f64));
            out.push((format!("link_errors:{p}"), l.errors as f64));
        }
        // The node's whole peer traffic, the series the leader's load forecaster learns.
        let rates: Vec<f64> = self
            .links
            .iter()
            .flat_map(|l| [l.tx_bytes_per_second, l.rx_bytes_per_second])
            .flatten()
            .collect();
        if !rates.is_empty() {
            out.push(("net_bytes_per_second".into(), rates.iter().sum()));
        }
        if let Some(f) = &self.fsync {
            out.push(("fsync_count".into(), f.count as f64));
            if f.count > 0 {
                out.push(("fsync_max_seconds".into(), f.max.as_secs_f64()));
                out.push(("fsync_mean_seconds".into(), f.mean.as_secs_f64()));
            }
        }
        let opt = [
            ("disk_free_bytes", self.disk_free_bytes.map(|v| v as f64)),
            ("disk_total_bytes", self.disk_total_bytes.map(|v| v as f64)),
            ("cpu_load1", self.cpu_load1),
            ("cpu_busy_ratio", self.cpu_busy_ratio),
        ];
        out.extend(opt.into_iter().filter_map(|(k, v)| Some((k.to_string(), v?))));
        for (k, v) in &self.smart {
            out.push((format!("smart_raw:{k}"), *v));
        }
        // The leader refuses oversize reports; a node never sends one.
        out.truncate(windows::REPORT_SERIES_MAX);
        out
    }

    /// This node's own gauges.
    fn export(&self) {
        for l in &self.links {
            let peer = l.peer.to_string();
            if let Some(r) = l.rtt {
                metrics::gauge!("ark_link_rtt_seconds", "peer" => peer.clone()).set(r.as_secs_f64());
            }
            if let Some(r) = l.tx_bytes_per_second {
                metrics::gauge!("ark_link_bytes_per_second", "peer" => peer.clone(), "direction" => "tx").set(r);
            }
            if let Some(r) = l.rx_bytes_per_second {
                metrics::gauge!("ark_link_bytes_per_second", "peer" => peer.clone(), "direction" => "rx").set(r);
            }
            metrics::gauge!("ark_link_inflight_rpcs", "peer" => peer.clone()).set(l.inflight as f64);
            metrics::gauge!("ark_link_inflight_peak_rpcs", "peer" => peer.clone()).set(l.inflight_peak as f64);
            metrics::counter!("ark_link_rpc_timeouts_total", "peer" => peer.clone()).absolute(l.timeouts_total);
            metrics::counter!("ark_link_rpc_errors_total", "peer" => peer.clone()).absolute(l.errors_total);
            metrics::counter!("ark_link_bytes_total", "peer" => peer.clone(), "direction" => "tx")
                .absolute(l.tx_bytes_total);
            metrics::counter!("ark_link_bytes_total", "peer" => peer, "direction" => "rx").absolute(l.rx_bytes_total);
        }
        // An interval without log writes leaves the last measured latency in place.
        if let Some(f) = self.fsync.filter(|f| f.count > 0) {
            metrics::gauge!("ark_log_fsync_max_seconds").set(f.max.as_secs_f64());
            metrics::gauge!("ark_log_fsync_mean_seconds").set(f.mean.as_secs_f64());
        }
        if let Some(v) = self.disk_free_bytes {
            metrics::gauge!("ark_disk_free_bytes").set(v as f64);
        }
        if let Some(v) = self.disk_total_bytes {
            metrics::gauge!("ark_disk_total_bytes").set(v as f64);
        }
        if let Some(v) = self.cpu_load1 {
            metrics::gauge!("ark_cpu_load1").set(v);
        }
        if let Some(v) = self.cpu_busy_ratio {
            metrics::gauge!("ark_cpu_busy_ratio").set(v);
        }
        for (k, v) in &self.smart {
            metrics::gauge!("ark_smart_attribute_raw", "id" => k.clone()).set(*v);
        }
    }
}

/// What the sampler remembers between two samples, to turn counters into rates.
#[derive(Default)]
struct SamplerState {
    last_at: Option<Instant>,
    cpu: Option<CpuTimes>,
    links: HashMap<u64, LinkMemory>,
    smart: SmartState,
}

/// A link's counters at the previous sample.
#[derive(Clone, Copy)]
struct LinkMemory {
    /// Frame bytes sent to and received from the peer on all its connections.
    tx_bytes_total: u64,
    rx_bytes_total: u64,
    timeouts_total: u64,
    errors_total: u64,
}

#[derive(Default)]
struct SmartState {
    next_run: Option<Instant>,
    attrs: Vec<(String, f64)>,
    /// Said once why there are no SMART series.
    explained: bool,
}

/// A recorded daily SMART history played back as this node's SMART attributes.
struct SmartReplay {
    days: Vec<Vec<(String, f64)>>,
    day: Duration,
    started: Instant,
}

impl SmartReplay {
    fn load(path: &Path, day: Duration) -> anyhow::Result<Self> {
        let rows = ark_forecast::history::read_history(path)
            .map_err(|e| anyhow::anyhow!("telemetry.smart_replay {}: {e}", path.display()))?;
        let days: Vec<Vec<(String, f64)>> = rows
            .into_iter()
            .map(|(_, vals)| {
                vals.into_iter()
                    .filter_map(|(col, v)| Some((smart_id_of_column(&col)?, f64::from(v))))
                    .collect()
            })
            .collect();
        if days.iter().all(|d| d.is_empty()) {
            anyhow::bail!(
                "telemetry.smart_replay {}: no smart_<ID>_raw column with values",
                path.display()
            );
        }
        tracing::info!(path = %path.display(), days = days.len(), day_ms = day.as_millis() as u64,
            "replaying a recorded SMART history instead of smartctl");
        Ok(Self {
            days,
            day,
            started: Instant::now(),
        })
    }

    /// The day the replay has reached (the last one once played through).
    fn today(&self, now: Instant) -> Vec<(String, f64)> {
        let i = (now.saturating_duration_since(self.started).as_millis() / self.day.as_millis().max(1)) as usize;
        self.days[i.min(self.days.len() - 1)].clone()
    }
}

/// `smart_5_raw` → `5`, the attribute id `smartctl` readings carry (series `smart_raw:5`);
/// other columns none.
fn smart_id_of_column(col: &str) -> Option<String> {
    let id = col.strip_prefix("smart_")?.strip_suffix("_raw")?;
    (!id.is_empty() && id.bytes().all(|b| b.is_ascii_digit())).then(|| id.to_string())
}

/// The node's telemetry: the sampler loop, the report handler and the leader's windows.
pub struct Telemetry {
    id: NodeId,
    cfg: TelemetryConfig,
    rpc_timeout: Duration,
    pool: PeerPool,
    raft: ArkRaft,
    fsync: LatencyStats,
    data_dir: PathBuf,
    windows: Mutex<Windows>,
    /// `[telemetry] smart_replay`: recorded SMART days replayed instead of `smartctl`.
    replay: Option<SmartReplay>,
    /// This node's read counts, reported with every sample.
    hot: Arc<HotReads>,
    /// On the leader: each node's latest hot objects.
    hot_reports: Mutex<BTreeMap<NodeId, HotList>>,
    /// Nodes whose window gauges the leader exported, to zero them when they go.
    exported: Mutex<BTreeSet<NodeId>>,
}

impl Telemetry {
    /// Telemetry of node `id`. Fails when `cfg.smart_replay` names a history that cannot be
    /// read.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: NodeId,
        cfg: TelemetryConfig,
        rpc_timeout: Duration,
        pool: PeerPool,
        raft: ArkRaft,
        fsync: LatencyStats,
        data_dir: PathBuf,
        hot: Arc<HotReads>,
    ) -> anyhow::Result<Self> {
        let windows = Mutex::new(Windows::new(cfg.window_points as usize));
        let replay = match &cfg.smart_replay {
            Some(path) => Some(SmartReplay::load(path, Duration::from_millis(cfg.smart_replay_day_ms))?),
            None => None,
        };
        Ok(Self {
            id,
            cfg,
            rpc_timeout,
            pool,
            raft,
            fsync,
            data_dir,
            windows,
            replay,
            hot,
            hot_reports: Mutex::default(),
            exported: Mutex::default(),
        })
    }

    fn interval(&self) -> Duration {
        Duration::from_millis(self.cfg.interval_ms)
    }

    /// Samples every interval and delivers the sample until `stop` turns true.
    pub async fn run(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(self.interval());
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut state = SamplerState::default();
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            // Shutdown does not wait for a slow smartctl or an unanswered report.
            let work = async {
                let sample = self.sample(&mut state).await;
                sample.export();
                self.deliver(sample.series()).await;
                self.housekeeping();
            };
            tokio::select! {
                () = work => {}
                _ = stop.wait_for(|s| *s) => return,
            }
        }
    }

    async fn sample(&self, st: &mut SamplerState) -> Sample {
        let now = Instant::now();
        let elapsed = st.last_at.map(|t| now.saturating_duration_since(t));
        st.last_at = Some(now);
        let mut links = Vec::new();
        for l in self.pool.link_stats().snapshot() {
            let prev = st.links.get(&l.peer).copied();
            // Per-peer counters over every connection: a connection opening or closing
            // between two samples changes nothing here, so no interval's rate is lost.
            let rate = |prev: Option<u64>, now: u64| parse::rate_per_second(prev, now, elapsed?);
            links.push(LinkSample {
                peer: l.peer,
                rtt: l.conn.map(|c| c.rtt).filter(|r| !r.is_zero()),
                tx_bytes_per_second: rate(prev.map(|p| p.tx_bytes_total), l.tx_bytes_total),
                rx_bytes_per_second: rate(prev.map(|p| p.rx_bytes_total), l.rx_bytes_total),
                inflight: l.inflight,
                inflight_peak: l.inflight_peak,
                timeouts: parse::counter_delta(prev.map(|p| p.timeouts_total), l.timeouts_total),
                errors: parse::counter_delta(prev.map(|p| p.errors_total), l.errors_total),
                timeouts_total: l.timeouts_total,
                errors_total: l.errors_total,
                tx_bytes_total: l.tx_bytes_total,
                rx_bytes_total: l.rx_bytes_total,
            });
            st.links.insert(
                l.peer,
                LinkMemory {
                    tx_bytes_total: l.tx_bytes_total,
                    rx_bytes_total: l.rx_bytes_total,
                    timeouts_total: l.timeouts_total,
                    errors_total: l.errors_total,
                },
            );
        }
        let data_dir = self.data_dir.clone();
        let local = tokio::task::spawn_blocking(move || local_readings(&data_dir))
            .await
            .unwrap_or_default();
        let cpu_busy_ratio = match (st.cpu, local.cpu) {
            (Some(p), Some(n)) => parse::busy_ratio(p, n),
            _ => None,
        };
        if local.cpu.is_some() {
            st.cpu = local.cpu;
        }
        self.refresh_smart(&mut st.smart, now).await;
        Sample {
            links,
            fsync: Some(self.fsync.take()),
            disk_free_bytes: local.disk.map(|d| d.0),
            disk_total_bytes: local.disk.map(|d| d.1),
            cpu_load1: local.load1,
            cpu_busy_ratio,
            smart: st.smart.attrs.clone(),
        }
    }

    async fn refresh_smart(&self, s: &mut SmartState, now: Instant) {
        if let Some(r) = &self.replay {
            s.attrs = r.today(now);
            return;
        }
        if s.next_run.is_some_and(|t| now < t) {
            return;
        }
        s.next_run = Some(now + SMART_REFRESH.max(self.interval()));
        match read_smart(&self.data_dir).await {
            Ok(a) => {
                if a.is_empty() && !s.explained {
                    tracing::debug!("smartctl reports no SMART attributes for the data dir's disk");
                    s.explained = true;
                }
                s.attrs = a;
            }
            Err(why) => {
                if !s.explained {
                    tracing::debug!(%why, "no SMART telemetry");
                    s.explained = true;
                }
                s.attrs.clear();
            }
        }
    }

    /// The leader records its own sample; any other node sends it to the leader it knows.
    async fn deliver(&self, series: Vec<(String, f64)>) {
        let m = self.raft.metrics().borrow().clone();
        let now_ms = crate::clock::wall_ms();
        let Some(leader) = m.current_leader else { return };
        let hot = self.hot.top(HOT_REPORTED_MAX);
        if leader == self.id {
            if let Ok(mut w) = self.windows.lock() {
                w.record(self.id, now_ms, series, Instant::now());
            }
            if let Ok(mut h) = self.hot_reports.lock() {
                h.insert(self.id, hot);
            }
            return;
        }
        let Some(addr) = m
            .membership_config
            .nodes()
            .find(|(id, _)| **id == leader)
            .map(|(_, n)| n.peer_addr.clone())
        else {
            return;
        };
        let req = PeerRequest {
            from: self.id,
            raft_codec: RaftCodec::Unspecified as i32,
            body: Some(peer_request::Body::Telemetry(TelemetryReport {
                node_id: self.id,
                sampled_at_unix_ms: now_ms,
                samples: series
                    .into_iter()
                    .map(|(series, value)| TelemetrySample { series, value })
                    .collect(),
                hot: hot
                    .into_iter()
                    .map(|(namespace, key, reads)| HotObject { namespace, key, reads })
                    .collect(),
            })),
        };
        // Never longer than an interval, so samples do not pile up behind a slow leader.
        let timeout = self.rpc_timeout.min(self.interval());
        let result = match self.pool.call(leader, &addr, &req, timeout).await {
            Ok(r) => match r.body {
                Some(peer_response::Body::TelemetryAck(_)) => "ok",
                Some(peer_response::Body::Failure(why)) => {
                    tracing::debug!(leader, %why, "leader refused the telemetry report");
                    "refused"
                }
                _ => "refused",
            },
            Err(e) => {
                tracing::debug!(leader, error = %e, "telemetry report not delivered");
                "error"
            }
        };
        metrics::counter!("ark_telemetry_reports_sent_total", "result" => result).increment(1);
    }

    /// On the leader: forget removed members and export the windows' gauges. Elsewhere:
    /// drop whatever was held as leader.
    fn housekeeping(&self) {
        let m = self.raft.metrics().borrow().clone();
        let members: BTreeSet<NodeId> = m.membership_config.nodes().map(|(id, _)| *id).collect();
        self.pool.link_stats().retain(|p| members.contains(&p));
        let is_leader = m.current_leader == Some(self.id);
        if let Ok(mut h) = self.hot_reports.lock() {
            h.retain(|n, _| is_leader && members.contains(n));
        }
        let Ok(mut w) = self.windows.lock() else { return };
        if is_leader {
            w.retain_nodes(|n| members.contains(&n));
        } else {
            w.retain_nodes(|_| false);
        }
        let summary = w.summary(Instant::now());
        drop(w);
        let Ok(mut exported) = self.exported.lock() else { return };
        let now: BTreeSet<NodeId> = summary.iter().map(|s| s.node).collect();
        for gone in exported.difference(&now) {
            metrics::gauge!("ark_telemetry_window_points", "node" => gone.to_string()).set(0.0);
        }
        for s in &summary {
            let node = s.node.to_string();
            metrics::gauge!("ark_telemetry_window_points", "node" => node.clone()).set(s.points as f64);
            metrics::gauge!("ark_telemetry_report_age_seconds", "node" => node).set(s.age.as_secs_f64());
        }
        *exported = now;
    }

    /// On the leader: `node`'s SMART raw values per model day of `day_ms` (see
    /// [`Windows::smart_daily`]); empty elsewhere or without SMART series.
    pub fn smart_daily(&self, node: NodeId, day_ms: u64) -> std::collections::BTreeMap<i64, Vec<(String, f32)>> {
        self.windows
            .lock()
            .map(|w| w.smart_daily(node, day_ms))
            .unwrap_or_default()
    }

    /// On the leader: the points of `node`'s series `name`, oldest first.
    pub fn series_points(&self, node: NodeId, name: &str) -> Vec<(u64, f64)> {
        self.windows
            .lock()
            .ok()
            .and_then(|w| w.series(node, name).map(|s| s.points().copied().collect()))
            .unwrap_or_default()
    }

    /// On the leader: every node's latest hot objects `(namespace, key, decayed reads)`.
    pub fn hot_reports(&self) -> Vec<HotList> {
        self.hot_reports
            .lock()
            .map(|h| h.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Handles a report from node `from`: stored on the leader, refused elsewhere.
    pub fn handle_report(&self, from: NodeId, report: TelemetryReport) -> peer_response::Body {
        let m = self.raft.metrics().borrow().clone();
        let refuse = |why: String, reason: &'static str| {
            metrics::counter!("ark_telemetry_reports_received_total", "result" => reason).increment(1);
            peer_response::Body::Failure(why)
        };
        if m.current_leader != Some(self.id) {
            return refuse(
                format!("node {} is not the leader; telemetry goes to the leader", self.id),
                "not_leader",
            );
        }
        if !m.membership_config.nodes().any(|(id, _)| *id == from) {
            return refuse(format!("node {from} is not a member of the cluster"), "not_member");
        }
        if let Err(e) = windows::validate(&report, from) {
            return refuse(e.to_string(), "invalid");
        }
        if let Ok(mut h) = self.hot_reports.lock() {
            h.insert(
                from,
                report.hot.into_iter().map(|o| (o.namespace, o.key, o.reads)).collect(),
            );
        }
        let stored = match self.windows.lock() {
            Ok(mut w) => w.record(
                from,
                report.sampled_at_unix_ms,
                report.samples.into_iter().map(|s| (s.series, s.value)),
                Instant::now(),
            ),
            Err(_) => return refuse("telemetry windows unavailable".into(), "internal"),
        };
        metrics::counter!("ark_telemetry_reports_received_total", "result" => "ok").increment(1);
        peer_response::Body::TelemetryAck(TelemetryAck {
            points_stored: stored as u32,
        })
    }

    /// What the leader holds, for the client API; `None` when this node is not the leader.
    pub fn snapshot(&self) -> Option<TelemetryResponse> {
        if self.raft.metrics().borrow().current_leader != Some(self.id) {
            return None;
        }
        let w = self.windows.lock().ok()?;
        let nodes = w
            .summary(Instant::now())
            .into_iter()
            .map(|s| NodeTelemetry {
                node_id: s.node,
                last_report_age_ms: s.age.as_millis() as u64,
                series: s
                    .series
                    .into_iter()
                    .map(|(name, (at, v), points)| TelemetrySeries {
                        name,
                        latest: v,
                        latest_unix_ms: at,
                        points: points as u32,
                    })
                    .collect(),
            })
            .collect();
        Some(TelemetryResponse {
            leader_id: self.id,
            interval_ms: self.cfg.interval_ms,
            window_points: w.window_points() as u32,
            nodes,
        })
    }
}

/// Readings of this host taken in one blocking call.
#[derive(Debug, Default)]
struct LocalReadings {
    /// Free (available to this user) and total bytes of the data dir's filesystem.
    disk: Option<(u64, u64)>,
    load1: Option<f64>,
    cpu: Option<CpuTimes>,
}

fn local_readings(data_dir: &Path) -> LocalReadings {
    let disk = match nix::sys::statvfs::statvfs(data_dir) {
        // c_ulong and fsblkcnt_t are u64 here but narrower on other targets.
        #[allow(clippy::unnecessary_cast)]
        Ok(s) => {
            let frag = s.fragment_size() as u64;
            Some((
                (s.blocks_available() as u64).saturating_mul(frag),
                (s.blocks() as u64).saturating_mul(frag),
            ))
        }
        Err(e) => {
            tracing::debug!(error = %e, dir = %data_dir.display(), "statvfs of the data dir failed");
            None
        }
    };
    LocalReadings {
        disk,
        load1: std::fs::read_to_string("/proc/loadavg")
            .ok()
            .and_then(|t| parse::parse_loadavg(&t)),
        cpu: std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|t| parse::parse_proc_stat(&t)),
    }
}

/// The whole block device holding `dir` (`/dev/sda` for a dir on `/dev/sda1`), from
/// `/sys/dev/block/MAJOR:MINOR`.
fn block_device_of(dir: &Path) -> Result<PathBuf, String> {
    use std::os::unix::fs::MetadataExt;
    let dev = std::fs::metadata(dir)
        .map_err(|e| format!("stat {}: {e}", dir.display()))?
        .dev();
    let (major, minor) = parse::dev_major_minor(dev);
    if major == 0 {
        return Err(format!(
            "{} is on a virtual filesystem (device 0:{minor})",
            dir.display()
        ));
    }
    let sys = std::fs::canonicalize(format!("/sys/dev/block/{major}:{minor}"))
        .map_err(|e| format!("no block device {major}:{minor} in /sys: {e}"))?;
    let disk = if sys.join("partition").exists() {
        sys.parent().map(Path::to_path_buf).unwrap_or(sys)
    } else {
        sys
    };
    let name = disk
        .file_name()
        .ok_or_else(|| format!("cannot name block device {major}:{minor}"))?;
    Ok(Path::new("/dev").join(name))
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
}

/// SMART attributes of the data dir's disk, or why there are none.
async fn read_smart(data_dir: &Path) -> Result<Vec<(String, f64)>, String> {
    if !on_path("smartctl") {
        return Err("smartctl is not on PATH".into());
    }
    let dir = data_dir.to_path_buf();
    let device = tokio::task::spawn_blocking(move || block_device_of(&dir))
        .await
        .map_err(|e| e.to_string())??;
    let run = tokio::process::Command::new("smartctl")
        .arg("--json")
        .arg("-A")
        .arg(&device)
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(SMART_TIMEOUT, run)
        .await
        .map_err(|_| format!("smartctl {} took longer than {SMART_TIMEOUT:?}", device.display()))?
        .map_err(|e| format!("cannot run smartctl: {e}"))?;
    // smartctl's exit status is a bit mask that is non-zero also for a healthy answer with
    // warnings: the JSON decides.
    parse::parse_smartctl(&String::from_utf8_lossy(&out.stdout))
}

impl crate::replicate::serve::ReportInbox for Telemetry {
    fn handle_report(&self, from: NodeId, report: TelemetryReport) -> peer_response::Body {
        Telemetry::handle_report(self, from, report)
    }
}

/// Describes this module's metrics (HELP text and unit) to the recorder; called once at start-up by
/// `server` (through `metrics::install`).
pub(crate) fn describe_metrics() {
    use metrics::{describe_counter, describe_gauge, Unit};
    describe_gauge!(
        "ark_link_rtt_seconds",
        Unit::Seconds,
        "Round-trip time of the QUIC connection the latest call to the peer used, by peer (latest sample)."
    );
    describe_gauge!(
        "ark_link_bytes_per_second",
        "Peer frame bytes per second exchanged with the peer over the last interval, on every connection (both lanes, dialled and accepted), by peer and direction (tx, rx)."
    );
    describe_counter!(
        "ark_link_bytes_total",
        Unit::Bytes,
        "Peer frame bytes exchanged with the peer on every connection (both lanes, dialled and accepted), by peer and direction (tx, rx)."
    );
    describe_gauge!(
        "ark_link_inflight_rpcs",
        "RPCs to the peer in flight when sampled, by peer."
    );
    describe_gauge!(
        "ark_link_inflight_peak_rpcs",
        "Most RPCs to the peer in flight at once during the last interval, by peer."
    );
    describe_counter!(
        "ark_link_rpc_timeouts_total",
        "RPCs to the peer that timed out, by peer."
    );
    describe_counter!(
        "ark_link_rpc_errors_total",
        "RPCs to the peer that failed other than by timeout, by peer."
    );
    describe_gauge!(
        "ark_log_fsync_max_seconds",
        Unit::Seconds,
        "Longest Raft log group commit in the last interval with log writes."
    );
    describe_gauge!(
        "ark_log_fsync_mean_seconds",
        Unit::Seconds,
        "Mean Raft log group commit in the last interval with log writes."
    );
    describe_gauge!(
        "ark_disk_free_bytes",
        Unit::Bytes,
        "Free space of the filesystem holding the data dir."
    );
    describe_gauge!(
        "ark_disk_total_bytes",
        Unit::Bytes,
        "Size of the filesystem holding the data dir."
    );
    describe_gauge!("ark_cpu_load1", "One-minute load average of the host.");
    describe_gauge!(
        "ark_cpu_busy_ratio",
        "Share of CPU time busy over the last interval (0..1)."
    );
    describe_gauge!(
        "ark_smart_attribute_raw",
        "Raw value of a SMART attribute of the data dir's drive, by id (ATA id or nvme_KEY)."
    );
    describe_counter!(
        "ark_telemetry_reports_sent_total",
        "Telemetry reports sent to the leader, by result (ok, refused, error)."
    );
    describe_gauge!(
        "ark_telemetry_window_points",
        "Points the leader holds over all series of the node, by node (0 once it left)."
    );
    describe_gauge!(
        "ark_telemetry_report_age_seconds",
        Unit::Seconds,
        "Time since the leader last stored a report from the node, by node."
    );
    describe_counter!(
        "ark_telemetry_reports_received_total",
        "Telemetry reports received, by result (ok, not_leader, not_member, invalid, internal)."
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replayed_history_plays_one_day_per_step_then_holds_the_last() {
        assert_eq!(smart_id_of_column("smart_187_raw").as_deref(), Some("187"));
        assert_eq!(smart_id_of_column("smart_5_normalized"), None);
        assert_eq!(smart_id_of_column("capacity_bytes"), None);
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("h.csv");
        std::fs::write(
            &p,
            "date,smart_5_raw,smart_9_raw,model_x\n2013-04-10,0,100,1\n2013-04-11,8,124,2\n",
        )
        .expect("write");
        let r = SmartReplay::load(&p, Duration::from_secs(10)).expect("load");
        let day = |s: u64| r.today(r.started + Duration::from_secs(s));
        assert_eq!(day(0), vec![("5".into(), 0.0), ("9".into(), 100.0)]);
        assert_eq!(day(10), vec![("5".into(), 8.0), ("9".into(), 124.0)]);
        assert_eq!(day(1000), day(10));
        std::fs::write(&p, "date,model_x\n2013-04-10,1\n").expect("write");
        let err = SmartReplay::load(&p, Duration::from_secs(1))
            .err()
            .expect("refused")
            .to_string();
        assert!(err.contains("smart_replay"), "{err}");
    }

    #[test]
    fn latency_stats_summarise_and_restart() {
        let s = LatencyStats::default();
        assert_eq!(s.take().count, 0);
        s.record(Duration::from_millis(2));
        s.record(Duration::from_millis(4));
        let t = s.take();
        assert_eq!(
            t,
            LatencySummary {
                count: 2,
                mean: Duration::from_millis(3),
                max: Duration::from_millis(4)
            }
        );
        assert_eq!(s.take().count, 0);
    }

    #[test]
    fn a_sample_names_its_series_and_skips_what_it_lacks() {
        let s = Sample {
            links: vec![LinkSample {
                peer: 2,
                rtt: Some(Duration::from_millis(1)),
                inflight: 3,
                ..LinkSample::default()
            }],
            fsync: Some(LatencySummary {
                count: 0,
                mean: Duration::ZERO,
                max: Duration::ZERO,
            }),
            disk_free_bytes: Some(10),
            smart: vec![("5".into(), 8.0)],
            ..Sample::default()
        };
        let names: Vec<String> = s.series().into_iter().map(|(k, _)| k).collect();
        assert_eq!(
            names,
            [
                "link_rtt_seconds:2",
                "link_inflight_rpcs:2",
                "link_inflight_peak_rpcs:2",
                "link_timeouts:2",
                "link_errors:2",
                "fsync_count",
                "disk_free_bytes",
                "smart_raw:5"
            ]
        );
        let report = TelemetryReport {
            node_id: 1,
            sampled_at_unix_ms: 0,
            samples: s
                .series()
                .into_iter()
                .map(|(series, value)| TelemetrySample { series, value })
                .collect(),
            hot: Vec::new(),
        };
        assert_eq!(windows::validate(&report, 1), Ok(()), "a node's own report passes");
    }
}
