//! Per-peer link counters for telemetry: RPCs in flight, timeouts and errors, the bytes of
//! every peer frame sent and received, and the connection each peer was last called on (for
//! its round trip).
//!
//! Owns only counting. It is kept apart from the pool's dialling and reconnect logic so that
//! either can change without the other; [`super::PeerPool::call`] (calls this node makes)
//! and the endpoint's stream server (calls peers make to this node) are its only writers.
//! It never opens, closes or chooses connections.
//!
//! Bytes are counted per peer, not per connection: a peer has a control and a bulk
//! connection dialled by each side, and connections come and go, so a counter tied to one
//! connection misses most of the traffic (chunks travel on the bulk lane while heartbeats
//! keep the control lane the latest one used) and restarts whenever a connection does.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// Bytes of peer frames (length prefix included) exchanged with one peer, on every
/// connection in both directions, since this entry was created. Monotonic; shared by the
/// calls and streams that add to it, so adding needs no lock.
#[derive(Default, Debug)]
pub(crate) struct LinkBytes {
    tx: AtomicU64,
    rx: AtomicU64,
}

impl LinkBytes {
    /// `n` bytes were handed to a connection to the peer.
    pub(crate) fn sent(&self, n: usize) {
        self.tx.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// `n` bytes were read from a connection to the peer.
    pub(crate) fn received(&self, n: usize) {
        self.rx.fetch_add(n as u64, Ordering::Relaxed);
    }
}

/// Counters of one peer link.
#[derive(Default)]
struct Link {
    inflight: u64,
    /// Most calls in flight at once since the last snapshot.
    inflight_peak: u64,
    timeouts_total: u64,
    errors_total: u64,
    /// Frame bytes both ways, on every connection to or from the peer.
    bytes: Arc<LinkBytes>,
    /// The connection the latest call used (for its round trip only); dropped from here
    /// when the next call uses another one.
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
    /// Bytes of peer frames sent to the peer on any connection (dialled or accepted, control
    /// or bulk lane) since the link's entry was created. Monotonic while the entry lives; it
    /// restarts from 0 only if the peer was forgotten ([`LinkStats::retain`]).
    pub tx_bytes_total: u64,
    /// Bytes of peer frames received from the peer, counted like `tx_bytes_total`.
    pub rx_bytes_total: u64,
    /// The round trip of the connection the latest call used; `None` while no open
    /// connection was used.
    pub conn: Option<ConnSnapshot>,
}

/// Path figures of one QUIC connection.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ConnSnapshot {
    /// `quinn::Connection::stable_id`.
    pub id: usize,
    /// Smoothed round trip.
    pub rtt: Duration,
    /// Largest UDP payload the connection sends now (path MTU discovery's current result).
    pub mtu: u16,
}

/// The counters of every link this node called, shared by clones of the pool. Bounded by
/// the number of peers ever called (cluster members).
#[derive(Default, Clone)]
pub struct LinkStats {
    links: Arc<Mutex<HashMap<u64, Link>>>,
}

/// Counts a call as in flight until dropped, and counts the bytes it moves.
pub(crate) struct InflightGuard {
    stats: LinkStats,
    peer: u64,
    /// The link's byte counters (a detached pair if the lock was poisoned: telemetry only).
    bytes: Arc<LinkBytes>,
}

impl InflightGuard {
    /// The call's link's byte counters.
    pub(crate) fn bytes(&self) -> &LinkBytes {
        &self.bytes
    }
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
        let mut bytes = None;
        if let Some(mut m) = self.lock() {
            let l = m.entry(peer).or_default();
            l.inflight += 1;
            l.inflight_peak = l.inflight_peak.max(l.inflight);
            bytes = Some(l.bytes.clone());
        }
        InflightGuard {
            stats: self.clone(),
            peer,
            bytes: bytes.unwrap_or_default(),
        }
    }

    /// The byte counters of the link to `peer`, for traffic this node did not start (a
    /// stream the peer opened). Creating the entry here is bounded like every other: the
    /// caller has checked that `peer` is the node the connection's certificate names, and
    /// [`LinkStats::retain`] forgets non-members.
    pub(crate) fn bytes(&self, peer: u64) -> Arc<LinkBytes> {
        match self.lock() {
            Some(mut m) => m.entry(peer).or_default().bytes.clone(),
            None => Arc::default(),
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
                tx_bytes_total: l.bytes.tx.load(Ordering::Relaxed),
                rx_bytes_total: l.bytes.rx.load(Ordering::Relaxed),
                conn: l.conn.as_ref().filter(|c| c.close_reason().is_none()).map(|c| {
                    let s = c.stats();
                    ConnSnapshot {
                        id: c.stable_id(),
                        rtt: s.path.rtt,
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

    #[test]
    fn calls_and_served_streams_add_to_one_monotonic_pair_per_peer() {
        let s = LinkStats::default();
        let call = s.start(3);
        call.bytes().sent(100);
        call.bytes().received(10);
        // A stream peer 3 opened here, on another connection: the same link.
        let served = s.bytes(3);
        served.received(1000);
        served.sent(1);
        drop(call);
        s.finish(3, CallOutcome::Ok, None);
        let snap = s.snapshot();
        assert_eq!(snap.len(), 1, "one entry per peer");
        assert_eq!((snap[0].tx_bytes_total, snap[0].rx_bytes_total), (101, 1010));
        // Another call later, as on a new connection: the totals go on from where they were.
        s.start(3).bytes().sent(5);
        assert_eq!(s.snapshot()[0].tx_bytes_total, 106);
        // A forgotten peer's entry goes, whoever still holds its counters.
        s.retain(|p| p != 3);
        served.sent(7);
        assert!(s.snapshot().is_empty());
    }
}
