//! Per-peer link counters for telemetry: RPCs in flight, timeouts and errors, and the
//! connection each peer was last called on (for its round trip and byte counters).
//!
//! Owns only counting. It is kept apart from the pool's dialling and reconnect logic so that
//! either can change without the other; [`super::PeerPool::call`] is its only writer. It
//! never opens, closes or chooses connections.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// Counters of one peer link.
#[derive(Default)]
struct Link {
    inflight: u64,
    /// Most calls in flight at once since the last snapshot.
    inflight_peak: u64,
    timeouts_total: u64,
    errors_total: u64,
    /// The connection the latest call used; dropped from here when the next call uses
    /// another one.
    conn: Option<quinn::Connection>,
}

/// What a link looked like at one instant.
#[derive(Debug, Clone, PartialEq)]
pub struct LinkSnapshot {
    /// The peer's node id.
    pub peer: u64,
    /// Calls started and not yet finished.
    pub inflight: u64,
    /// Most calls in flight at once since the previous snapshot.
    pub inflight_peak: u64,
    /// Calls that hit their deadline, since the process started.
    pub timeouts_total: u64,
    /// Calls that failed otherwise (unreachable, broken stream), since the process started.
    pub errors_total: u64,
    /// The connection's identity (byte counters restart with a new connection), its
    /// smoothed round trip and UDP bytes sent and received; `None` while no open connection
    /// was used.
    pub conn: Option<ConnSnapshot>,
}

/// Counters of one QUIC connection.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ConnSnapshot {
    /// `quinn::Connection::stable_id`.
    pub id: usize,
    /// Smoothed round trip.
    pub rtt: Duration,
    /// UDP payload bytes sent on the connection so far.
    pub tx_bytes: u64,
    /// UDP payload bytes received so far.
    pub rx_bytes: u64,
    /// Largest UDP payload the connection sends now (path MTU discovery's current result).
    pub mtu: u16,
}

/// The counters of every link this node called, shared by clones of the pool. Bounded by
/// the number of peers ever called (cluster members).
#[derive(Default, Clone)]
pub struct LinkStats {
    links: Arc<Mutex<HashMap<u64, Link>>>,
}

/// Counts a call as in flight until dropped.
pub(crate) struct InflightGuard {
    stats: LinkStats,
    peer: u64,
}

impl Drop for InflightGuard {
    fn drop(&mut self) {
        if let Some(mut m) = self.stats.lock() {
            if let Some(l) = m.get_mut(&self.peer) {
                l.inflight = l.inflight.saturating_sub(1);
            }
        }
    }
}

/// How a call ended, as the counters see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CallOutcome {
    /// Answered.
    Ok,
    /// No answer within its deadline.
    Timeout,
    /// Any other failure.
    Error,
}

impl LinkStats {
    fn lock(&self) -> Option<MutexGuard<'_, HashMap<u64, Link>>> {
        // A poisoned lock only loses telemetry, never a call.
        self.links.lock().ok()
    }

    /// A call to `peer` starts; it counts as in flight until the guard is dropped.
    pub(crate) fn start(&self, peer: u64) -> InflightGuard {
        if let Some(mut m) = self.lock() {
            let l = m.entry(peer).or_default();
            l.inflight += 1;
            l.inflight_peak = l.inflight_peak.max(l.inflight);
        }
        InflightGuard {
            stats: self.clone(),
            peer,
        }
    }

    /// A call to `peer` ended with `outcome`, on `conn` if it got that far.
    pub(crate) fn finish(&self, peer: u64, outcome: CallOutcome, conn: Option<&quinn::Connection>) {
        let Some(mut m) = self.lock() else { return };
        let l = m.entry(peer).or_default();
        match outcome {
            CallOutcome::Ok => {}
            CallOutcome::Timeout => l.timeouts_total += 1,
            CallOutcome::Error => l.errors_total += 1,
        }
        if let Some(c) = conn {
            if l.conn.as_ref().map(|o| o.stable_id()) != Some(c.stable_id()) {
                l.conn = Some(c.clone());
            }
        }
    }

    /// Every link's counters now, by peer id; the in-flight peaks start afresh (the
    /// telemetry sampler is the only caller).
    pub fn snapshot(&self) -> Vec<LinkSnapshot> {
        let Some(mut m) = self.lock() else { return Vec::new() };
        let mut out: Vec<LinkSnapshot> = m
            .iter_mut()
            .map(|(peer, l)| LinkSnapshot {
                peer: *peer,
                inflight: l.inflight,
                inflight_peak: std::mem::replace(&mut l.inflight_peak, l.inflight).max(l.inflight),
                timeouts_total: l.timeouts_total,
                errors_total: l.errors_total,
                conn: l.conn.as_ref().filter(|c| c.close_reason().is_none()).map(|c| {
                    let s = c.stats();
                    ConnSnapshot {
                        id: c.stable_id(),
                        rtt: s.path.rtt,
                        tx_bytes: s.udp_tx.bytes,
                        rx_bytes: s.udp_rx.bytes,
                        mtu: s.path.current_mtu,
                    }
                }),
            })
            .collect();
        out.sort_by_key(|l| l.peer);
        out
    }

    /// Forgets links to peers not in `keep` (removed members), so the map stays bounded.
    pub fn retain(&self, keep: impl Fn(u64) -> bool) {
        if let Some(mut m) = self.lock() {
            m.retain(|peer, l| keep(*peer) || l.inflight > 0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inflight_counts_until_the_guard_drops_and_failures_are_classified() {
        let s = LinkStats::default();
        let a = s.start(2);
        let b = s.start(2);
        assert_eq!((s.snapshot()[0].inflight, s.snapshot()[0].inflight_peak), (2, 2));
        drop(a);
        let c = s.start(2);
        drop(c);
        let snap = s.snapshot();
        assert_eq!(
            (snap[0].inflight, snap[0].inflight_peak),
            (1, 2),
            "peak since the last snapshot"
        );
        assert_eq!(s.snapshot()[0].inflight_peak, 1, "a snapshot restarts the peak");
        s.finish(2, CallOutcome::Timeout, None);
        s.finish(2, CallOutcome::Error, None);
        s.finish(2, CallOutcome::Ok, None);
        drop(b);
        let snap = s.snapshot();
        assert_eq!(snap.len(), 1);
        assert_eq!(
            (snap[0].inflight, snap[0].timeouts_total, snap[0].errors_total),
            (0, 1, 1)
        );
        assert!(snap[0].conn.is_none());
        s.retain(|p| p != 2);
        assert!(s.snapshot().is_empty());
    }
}
