//! A node's read counts per object, reported to the leader with its telemetry so that the
//! leader can pre-stage the cluster's hot set on its likely successor (`risk`).
//!
//! Owns the decayed, bounded counters. Must not touch: what the leader does with them.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

/// Hot objects `(namespace, key, decayed reads)`, most read first.
pub type HotList = Vec<(String, String, f64)>;

/// Objects kept in a node's read counter; beyond this the least read are forgotten.
const HOT_TRACKED_MAX: usize = 4096;
/// Hot objects a node reports to the leader per telemetry interval.
pub const HOT_REPORTED_MAX: usize = 32;
/// Half-life of read counts.
const HOT_HALF_LIFE: Duration = Duration::from_secs(600);

/// A node's read counts per object (`namespace`, `key`), exponentially decayed, bounded.
#[derive(Default)]
pub struct HotReads {
    counts: Mutex<HashMap<(String, String), (f64, std::time::Instant)>>,
}

fn decayed(count: f64, since: std::time::Instant, now: std::time::Instant) -> f64 {
    let dt = now.saturating_duration_since(since).as_secs_f64();
    count * 0.5f64.powf(dt / HOT_HALF_LIFE.as_secs_f64())
}

impl HotReads {
    /// Counts one read of `ns/key`.
    pub fn record(&self, ns: &str, key: &str) {
        self.record_at(ns, key, std::time::Instant::now());
    }

    fn record_at(&self, ns: &str, key: &str, now: std::time::Instant) {
        let Ok(mut c) = self.counts.lock() else { return };
        if c.len() >= HOT_TRACKED_MAX && !c.contains_key(&(ns.to_string(), key.to_string())) {
            // Forget the least read tenth.
            let mut v: Vec<((String, String), f64)> =
                c.iter().map(|(k, (n, t))| (k.clone(), decayed(*n, *t, now))).collect();
            v.sort_by(|a, b| a.1.partial_cmp(&b.1).unwrap_or(std::cmp::Ordering::Equal));
            for (k, _) in v.into_iter().take(HOT_TRACKED_MAX / 10) {
                c.remove(&k);
            }
        }
        let e = c.entry((ns.to_string(), key.to_string())).or_insert((0.0, now));
        *e = (decayed(e.0, e.1, now) + 1.0, now);
    }

    /// The `n` most read objects, most read first: `(namespace, key, decayed reads)`.
    pub fn top(&self, n: usize) -> HotList {
        self.top_at(n, std::time::Instant::now())
    }

    fn top_at(&self, n: usize, now: std::time::Instant) -> HotList {
        let Ok(c) = self.counts.lock() else { return Vec::new() };
        let mut v: Vec<(String, String, f64)> = c
            .iter()
            .map(|((ns, k), (cnt, t))| (ns.clone(), k.clone(), decayed(*cnt, *t, now)))
            .collect();
        v.sort_by(|a, b| {
            b.2.partial_cmp(&a.2)
                .unwrap_or(std::cmp::Ordering::Equal)
                .then(a.1.cmp(&b.1))
        });
        v.truncate(n);
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hot_reads_decay_rank_and_stay_bounded() {
        let h = HotReads::default();
        let t0 = std::time::Instant::now();
        for _ in 0..3 {
            h.record_at("ns", "a", t0);
        }
        h.record_at("ns", "b", t0);
        let top = h.top_at(10, t0);
        assert_eq!(top[0].1, "a");
        assert!((top[0].2 - 3.0).abs() < 1e-9);
        // One half-life later a's 3 reads count 1.5; two fresh reads of b (0.5 + 2) win.
        let t1 = t0 + HOT_HALF_LIFE;
        h.record_at("ns", "b", t1);
        h.record_at("ns", "b", t1);
        let top = h.top_at(1, t1);
        assert_eq!((top[0].1.as_str(), top.len()), ("b", 1));
        assert!((top[0].2 - 2.5).abs() < 1e-9);
        for i in 0..HOT_TRACKED_MAX + 10 {
            h.record_at("ns", &format!("k{i}"), t1);
        }
        assert!(h.counts.lock().unwrap_or_else(|e| e.into_inner()).len() <= HOT_TRACKED_MAX);
    }
}
