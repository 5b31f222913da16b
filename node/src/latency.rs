//! Durations of an operation accumulated between two samples: the log writer records its
//! group commits here, telemetry takes the summary once per interval. It lives at the
//! bottom of the node so that the writer (consensus) and the reader (telemetry) both
//! depend on it, not on each other.
//!
//! Owns the counters. Must not touch anything else.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Durations of an operation (the log writer's commit and fsync), accumulated between two
/// samples. Lock-free: the writer thread only does three atomic updates per commit.
#[derive(Default, Clone)]
pub struct LatencyStats {
    inner: Arc<LatencyInner>,
}

#[derive(Default)]
struct LatencyInner {
    count: AtomicU64,
    sum_ns: AtomicU64,
    max_ns: AtomicU64,
}

/// Count, mean and maximum of the durations recorded in one interval.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LatencySummary {
    /// Operations.
    pub count: u64,
    /// Mean duration.
    pub mean: Duration,
    /// Longest duration.
    pub max: Duration,
}

impl LatencyStats {
    /// Records one duration.
    pub fn record(&self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.inner.count.fetch_add(1, Ordering::Relaxed);
        self.inner.sum_ns.fetch_add(ns, Ordering::Relaxed);
        self.inner.max_ns.fetch_max(ns, Ordering::Relaxed);
    }

    /// What was recorded since the last call, and starts afresh. (A record racing with
    /// this call may land half in this interval and half in the next; telemetry tolerates
    /// that.)
    pub fn take(&self) -> LatencySummary {
        let count = self.inner.count.swap(0, Ordering::Relaxed);
        let sum = self.inner.sum_ns.swap(0, Ordering::Relaxed);
        let max = self.inner.max_ns.swap(0, Ordering::Relaxed);
        LatencySummary {
            count,
            mean: Duration::from_nanos(sum.checked_div(count).unwrap_or(0)),
            max: Duration::from_nanos(max),
        }
    }
}
