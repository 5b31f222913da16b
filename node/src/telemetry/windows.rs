//! The leader's bounded windows of telemetry: one ring buffer of `window_points` points per
//! (node, series), at most [`SERIES_PER_NODE_MAX`] series per node, and the validation that
//! keeps an oversize or malformed report out. Pure data structure: time is passed in.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use ark_proto::v1::TelemetryReport;

/// Most series one report may carry.
pub const REPORT_SERIES_MAX: usize = 256;
/// Longest series name, bytes.
pub const SERIES_NAME_BYTES_MAX: usize = 96;
/// Most series kept per node; a new series beyond it replaces the one updated least recently.
pub const SERIES_PER_NODE_MAX: usize = 256;

/// Why a report was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ReportError {
    /// More series than [`REPORT_SERIES_MAX`].
    #[error("telemetry report has {got} series, more than the limit of {max}")]
    TooManySeries {
        /// Series in the report.
        got: usize,
        /// The limit.
        max: usize,
    },
    /// A series name is empty or longer than [`SERIES_NAME_BYTES_MAX`].
    #[error("telemetry series name of {len} bytes is empty or longer than {max}")]
    BadName {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A value is NaN or infinite.
    #[error("telemetry series {0:?} has a value that is not a finite number")]
    NotFinite(String),
    /// The hot-object list breaks a limit.
    #[error(
        "telemetry report's hot objects break a limit (at most 32; names 128/1024 bytes; finite, non-negative reads)"
    )]
    BadHot,
    /// The same series twice in one report.
    #[error("telemetry series {0:?} appears twice in one report")]
    Duplicate(String),
    /// The report names another node than the one that sent it.
    #[error("telemetry report for node {claimed} arrived from node {from}")]
    WrongSender {
        /// `node_id` in the report.
        claimed: u64,
        /// The sender.
        from: u64,
    },
}

/// Checks a report that arrived from node `from` against every limit.
pub fn validate(report: &TelemetryReport, from: u64) -> Result<(), ReportError> {
    if report.node_id != from {
        return Err(ReportError::WrongSender {
            claimed: report.node_id,
            from,
        });
    }
    if report.hot.len() > super::hot::HOT_REPORTED_MAX
        || report
            .hot
            .iter()
            .any(|h| h.namespace.len() > 128 || h.key.len() > 1024 || !h.reads.is_finite() || h.reads < 0.0)
    {
        return Err(ReportError::BadHot);
    }
    if report.samples.len() > REPORT_SERIES_MAX {
        return Err(ReportError::TooManySeries {
            got: report.samples.len(),
            max: REPORT_SERIES_MAX,
        });
    }
    let mut seen = std::collections::HashSet::with_capacity(report.samples.len());
    for s in &report.samples {
        if s.series.is_empty() || s.series.len() > SERIES_NAME_BYTES_MAX {
            return Err(ReportError::BadName {
                len: s.series.len(),
                max: SERIES_NAME_BYTES_MAX,
            });
        }
        if !s.value.is_finite() {
            return Err(ReportError::NotFinite(s.series.clone()));
        }
        if !seen.insert(s.series.as_str()) {
            return Err(ReportError::Duplicate(s.series.clone()));
        }
    }
    Ok(())
}

/// One series' most recent points, oldest first, never more than its capacity.
#[derive(Debug, Clone)]
pub struct Window {
    points: VecDeque<(u64, f64)>,
    cap: usize,
}

impl Window {
    /// An empty window of `cap` points (at least 1).
    pub fn new(cap: usize) -> Self {
        let cap = cap.max(1);
        Self {
            points: VecDeque::with_capacity(cap.min(1024)),
            cap,
        }
    }

    /// Appends a point (`unix_ms`, `value`), dropping the oldest when full.
    pub fn push(&mut self, unix_ms: u64, value: f64) {
        if self.points.len() == self.cap {
            self.points.pop_front();
        }
        self.points.push_back((unix_ms, value));
        assert!(self.points.len() <= self.cap, "telemetry window over its capacity");
    }

    /// Points held.
    pub fn len(&self) -> usize {
        self.points.len()
    }

    /// Whether it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.points.is_empty()
    }

    /// The newest point.
    pub fn latest(&self) -> Option<(u64, f64)> {
        self.points.back().copied()
    }

    /// All points, oldest first.
    pub fn points(&self) -> impl Iterator<Item = &(u64, f64)> {
        self.points.iter()
    }
}

struct NodeWindows {
    last_report: Instant,
    series: BTreeMap<String, Window>,
}

/// What the leader holds for one node.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeSummary {
    /// The node.
    pub node: u64,
    /// Time since its last report arrived.
    pub age: Duration,
    /// Per series: name, newest (unix ms, value), points held.
    pub series: Vec<(String, (u64, f64), usize)>,
    /// Points held over all its series.
    pub points: usize,
}

/// Every node's windows. Memory is bounded by nodes × [`SERIES_PER_NODE_MAX`] ×
/// `window_points` × 16 bytes.
pub struct Windows {
    window_points: usize,
    nodes: BTreeMap<u64, NodeWindows>,
}

impl Windows {
    /// No data yet; every series will hold at most `window_points` points.
    pub fn new(window_points: usize) -> Self {
        Self {
            window_points: window_points.max(1),
            nodes: BTreeMap::new(),
        }
    }

    /// The capacity of each series.
    pub fn window_points(&self) -> usize {
        self.window_points
    }

    /// Appends one point per sample for `node`, taken at `unix_ms` and received at `now`.
    /// Returns the points stored.
    pub fn record(
        &mut self,
        node: u64,
        unix_ms: u64,
        samples: impl IntoIterator<Item = (String, f64)>,
        now: Instant,
    ) -> usize {
        let cap = self.window_points;
        let nw = self.nodes.entry(node).or_insert_with(|| NodeWindows {
            last_report: now,
            series: BTreeMap::new(),
        });
        nw.last_report = now;
        let mut stored = 0;
        for (name, value) in samples {
            if !nw.series.contains_key(&name) && nw.series.len() >= SERIES_PER_NODE_MAX {
                // Series come and go (a removed peer's link, a replaced disk): the one
                // updated least recently makes room.
                let stalest = nw
                    .series
                    .iter()
                    .min_by_key(|(_, w)| w.latest().map_or(0, |p| p.0))
                    .map(|(k, _)| k.clone());
                if let Some(k) = stalest {
                    nw.series.remove(&k);
                }
            }
            nw.series
                .entry(name)
                .or_insert_with(|| Window::new(cap))
                .push(unix_ms, value);
            stored += 1;
        }
        assert!(
            nw.series.len() <= SERIES_PER_NODE_MAX,
            "telemetry series over the limit"
        );
        stored
    }

    /// Drops every node for which `keep` is false (removed members); returns their ids.
    pub fn retain_nodes(&mut self, keep: impl Fn(u64) -> bool) -> Vec<u64> {
        let gone: Vec<u64> = self.nodes.keys().copied().filter(|n| !keep(*n)).collect();
        for n in &gone {
            self.nodes.remove(n);
        }
        gone
    }

    /// Nodes with data.
    pub fn nodes(&self) -> Vec<u64> {
        self.nodes.keys().copied().collect()
    }

    /// The node's SMART raw values per model day (`unix_ms / day_ms`): for each day in the
    /// windows, the last value of each `smart_raw:ID` series that day, named as the failure
    /// forecaster's columns (`smart_ID_raw`). Series of other shapes (`smart_raw:nvme_...`)
    /// have no column in the forecaster and are left out.
    pub fn smart_daily(&self, node: u64, day_ms: u64) -> BTreeMap<i64, Vec<(String, f32)>> {
        let mut days: BTreeMap<i64, BTreeMap<String, f32>> = BTreeMap::new();
        let Some(nw) = self.nodes.get(&node) else {
            return BTreeMap::new();
        };
        for (name, w) in &nw.series {
            let Some(id) = name
                .strip_prefix("smart_raw:")
                .filter(|id| id.bytes().all(|b| b.is_ascii_digit()))
            else {
                continue;
            };
            let column = format!("smart_{id}_raw");
            // Points are in time order, so the last one of a day wins.
            for &(t, v) in w.points() {
                days.entry((t / day_ms.max(1)) as i64)
                    .or_default()
                    .insert(column.clone(), v as f32);
            }
        }
        days.into_iter().map(|(d, m)| (d, m.into_iter().collect())).collect()
    }

    /// One series of one node.
    pub fn series(&self, node: u64, name: &str) -> Option<&Window> {
        self.nodes.get(&node)?.series.get(name)
    }

    /// Per node: age of the last report, the newest point and length of each series.
    pub fn summary(&self, now: Instant) -> Vec<NodeSummary> {
        self.nodes
            .iter()
            .map(|(node, nw)| {
                let series: Vec<(String, (u64, f64), usize)> = nw
                    .series
                    .iter()
                    .filter_map(|(k, w)| Some((k.clone(), w.latest()?, w.len())))
                    .collect();
                NodeSummary {
                    node: *node,
                    age: now.saturating_duration_since(nw.last_report),
                    points: series.iter().map(|s| s.2).sum(),
                    series,
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use ark_proto::v1::TelemetrySample;

    use super::*;

    fn report(node: u64, samples: &[(&str, f64)]) -> TelemetryReport {
        TelemetryReport {
            node_id: node,
            sampled_at_unix_ms: 1,
            samples: samples
                .iter()
                .map(|(s, v)| TelemetrySample {
                    series: s.to_string(),
                    value: *v,
                })
                .collect(),
            hot: Vec::new(),
        }
    }

    #[test]
    fn smart_series_become_one_row_per_day_with_the_days_last_value() {
        let mut w = Windows::new(100);
        let now = Instant::now();
        for (t, s5, s197) in [
            (1_000u64, 0.0, 1.0),
            (1_900, 2.0, 1.0),
            (2_100, 5.0, 3.0),
            (3_500, 9.0, 3.0),
        ] {
            w.record(
                4,
                t,
                vec![
                    ("smart_raw:5".to_string(), s5),
                    ("smart_raw:197".to_string(), s197),
                    ("smart_raw:nvme_media_errors".to_string(), 1.0),
                    ("disk_free_bytes".to_string(), 1e9),
                ],
                now,
            );
        }
        let d = w.smart_daily(4, 1_000);
        let col = |n: &str, v: f32| (n.to_string(), v);
        assert_eq!(d.keys().copied().collect::<Vec<_>>(), vec![1, 2, 3]);
        assert_eq!(d[&1], vec![col("smart_197_raw", 1.0), col("smart_5_raw", 2.0)]);
        assert_eq!(d[&2], vec![col("smart_197_raw", 3.0), col("smart_5_raw", 5.0)]);
        assert_eq!(d[&3], vec![col("smart_197_raw", 3.0), col("smart_5_raw", 9.0)]);
        assert!(w.smart_daily(5, 1_000).is_empty());
    }

    #[test]
    fn a_window_keeps_the_newest_points_and_never_more() {
        let mut w = Window::new(3);
        for t in 0..10u64 {
            w.push(t, t as f64);
            assert!(w.len() <= 3);
        }
        assert_eq!(
            w.points().copied().collect::<Vec<_>>(),
            vec![(7, 7.0), (8, 8.0), (9, 9.0)]
        );
        assert_eq!(w.latest(), Some((9, 9.0)));
        assert_eq!(Window::new(0).cap, 1, "a zero capacity still keeps the latest point");
    }

    #[test]
    fn windows_are_per_node_and_series_and_bounded() {
        let now = Instant::now();
        let mut ws = Windows::new(4);
        for t in 0..6u64 {
            ws.record(1, t, [("cpu_load1".to_string(), t as f64)], now);
            ws.record(2, t, [("cpu_load1".to_string(), 10.0 + t as f64)], now);
        }
        assert_eq!(ws.series(1, "cpu_load1").map(Window::len), Some(4));
        assert_eq!(ws.series(2, "cpu_load1").and_then(Window::latest), Some((5, 15.0)));
        let later = now + Duration::from_secs(3);
        ws.record(2, 6, [("disk_free_bytes".to_string(), 1.0)], later);
        let sum = ws.summary(later);
        assert_eq!(sum.len(), 2);
        assert_eq!((sum[0].node, sum[0].age, sum[0].points), (1, Duration::from_secs(3), 4));
        assert_eq!((sum[1].node, sum[1].age, sum[1].points), (2, Duration::ZERO, 5));
        assert_eq!(ws.retain_nodes(|n| n != 1), vec![1]);
        assert_eq!(ws.nodes(), vec![2]);
    }

    #[test]
    fn series_per_node_are_capped_by_dropping_the_stalest() {
        let now = Instant::now();
        let mut ws = Windows::new(2);
        for i in 0..SERIES_PER_NODE_MAX as u64 {
            ws.record(1, 100 + i, [(format!("s{i}"), 1.0)], now);
        }
        ws.record(1, 1000, [("new".to_string(), 1.0)], now);
        assert_eq!(ws.summary(now)[0].series.len(), SERIES_PER_NODE_MAX);
        assert!(ws.series(1, "s0").is_none(), "the stalest series made room");
        assert!(ws.series(1, "new").is_some());
    }

    #[test]
    fn validation_rejects_oversize_and_malformed_reports() {
        assert_eq!(validate(&report(3, &[("a", 1.0), ("b", 2.0)]), 3), Ok(()));
        let many: Vec<(String, f64)> = (0..=REPORT_SERIES_MAX).map(|i| (format!("s{i}"), 1.0)).collect();
        let many: Vec<(&str, f64)> = many.iter().map(|(s, v)| (s.as_str(), *v)).collect();
        let e = validate(&report(3, &many), 3).unwrap_err();
        assert_eq!(
            e,
            ReportError::TooManySeries {
                got: REPORT_SERIES_MAX + 1,
                max: REPORT_SERIES_MAX
            }
        );
        assert!(e.to_string().contains("more than the limit"), "{e}");
        let long = "x".repeat(SERIES_NAME_BYTES_MAX + 1);
        assert!(matches!(
            validate(&report(3, &[(long.as_str(), 1.0)]), 3),
            Err(ReportError::BadName { .. })
        ));
        assert!(matches!(
            validate(&report(3, &[("", 1.0)]), 3),
            Err(ReportError::BadName { .. })
        ));
        assert!(matches!(
            validate(&report(3, &[("a", f64::NAN)]), 3),
            Err(ReportError::NotFinite(_))
        ));
        assert!(matches!(
            validate(&report(3, &[("a", 1.0), ("a", 2.0)]), 3),
            Err(ReportError::Duplicate(_))
        ));
        assert!(matches!(
            validate(&report(3, &[("a", 1.0)]), 4),
            Err(ReportError::WrongSender { claimed: 3, from: 4 })
        ));
        let hot = |ns: &str, key: &str, reads: f64| ark_proto::v1::HotObject {
            namespace: ns.into(),
            key: key.into(),
            reads,
        };
        let mut r = report(3, &[("a", 1.0)]);
        r.hot = vec![hot("ns", "k", 2.5)];
        assert_eq!(validate(&r, 3), Ok(()));
        for bad in [
            vec![hot("ns", "k", f64::NAN)],
            vec![hot("ns", "k", -1.0)],
            vec![hot("ns", &"k".repeat(1025), 1.0)],
            (0..33).map(|i| hot("ns", &format!("k{i}"), 1.0)).collect(),
        ] {
            r.hot = bad;
            assert_eq!(validate(&r, 3), Err(ReportError::BadHot));
        }
    }
}
