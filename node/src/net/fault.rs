//! A user-space fault layer under quinn, for drills and tests: drop, delay, jitter and
//! lose the peer transport's UDP datagrams per peer address.
//!
//! `tc netem` is not available on our test kernels and network namespaces need root, so the
//! faults are injected where every peer datagram passes anyway: a wrapper around the
//! endpoint's UDP socket. It is only installed when the config names a control file
//! (`[faults] control_file`); `arkd` then re-reads that file every 100 ms, so a drill changes
//! the network by rewriting it. Format (TOML), rules matched by the peer's `ip:port` or `*`:
//!
//! ```toml
//! [[rule]]
//! peer = "127.0.0.1:7102"
//! drop = "both"        # "in", "out" or "both": a partition (asymmetric with in/out)
//! [[rule]]
//! peer = "*"
//! delay_ms = 40        # one-way delay added to every sent datagram
//! jitter_ms = 10       # uniform extra delay (reorders datagrams)
//! loss = 0.02          # probability that a sent datagram is dropped
//! ```
//!
//! A top-level `clock_offset_ms = 420000` shifts the node's wall clock (not the host's) by
//! that much, forward or (negative) back: a clock jump.
//!
//! An empty or missing file means no faults.

use std::fmt;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};
use rand::Rng;
use serde::Deserialize;

/// Which direction a rule drops.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Drop {
    /// Datagrams from the peer.
    In,
    /// Datagrams to the peer.
    Out,
    /// Both: the peer is cut off.
    Both,
}

/// One fault rule.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// `ip:port` of the peer's QUIC endpoint, or `*` for every peer.
    pub peer: String,
    /// Drop datagrams in this direction.
    #[serde(default)]
    pub drop: Option<Drop>,
    /// Added one-way delay of sent datagrams.
    #[serde(default)]
    pub delay_ms: u64,
    /// Uniform random extra delay.
    #[serde(default)]
    pub jitter_ms: u64,
    /// Probability of losing a sent datagram.
    #[serde(default)]
    pub loss: f64,
}

/// The control file's content.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Rules {
    /// Rules, first match wins per property.
    #[serde(default)]
    pub rule: Vec<Rule>,
    /// Shift of this node's wall clock from the host's, in ms (a clock jump; see
    /// [`crate::clock`]).
    #[serde(default)]
    pub clock_offset_ms: i64,
}

impl Rules {
    fn matching(&self, addr: &SocketAddr) -> impl Iterator<Item = &Rule> {
        let a = addr.to_string();
        self.rule.iter().filter(move |r| r.peer == "*" || r.peer == a)
    }

    fn drops_in(&self, from: &SocketAddr) -> bool {
        self.matching(from)
            .any(|r| matches!(r.drop, Some(Drop::In) | Some(Drop::Both)))
    }

    fn drops_out(&self, to: &SocketAddr) -> bool {
        self.matching(to)
            .any(|r| matches!(r.drop, Some(Drop::Out) | Some(Drop::Both)))
    }

    /// (delay, jitter, loss) for datagrams to `to`: the largest of each over the matches.
    fn shaping(&self, to: &SocketAddr) -> (u64, u64, f64) {
        self.matching(to).fold((0, 0, 0.0), |(d, j, l), r| {
            (d.max(r.delay_ms), j.max(r.jitter_ms), l.max(r.loss))
        })
    }
}

/// Shared, reloadable rules.
#[derive(Clone, Default)]
pub struct FaultTable {
    rules: Arc<RwLock<Rules>>,
}

impl FaultTable {
    fn get(&self) -> Rules {
        self.rules.read().map(|r| r.clone()).unwrap_or_default()
    }

    /// Replaces the rules.
    pub fn set(&self, rules: Rules) {
        crate::clock::set_offset_ms(rules.clock_offset_ms);
        if let Ok(mut r) = self.rules.write() {
            *r = rules;
        }
    }

    /// Re-reads `path` every 100 ms until the process ends (a missing file = no faults).
    pub fn watch(self, path: PathBuf) {
        tokio::spawn(async move {
            // Compared by content: two rewrites within the file system's timestamp
            // resolution with the same length must not be missed.
            let mut seen: Option<String> = None;
            loop {
                let text = std::fs::read_to_string(&path).ok();
                if text != seen {
                    seen = text.clone();
                    let rules = match text {
                        Some(text) => match toml::from_str::<Rules>(&text) {
                            Ok(r) => r,
                            Err(e) => {
                                tracing::warn!(file = %path.display(), error = %e, "fault rules not understood; keeping the old ones");
                                tokio::time::sleep(Duration::from_millis(100)).await;
                                continue;
                            }
                        },
                        None => Rules::default(),
                    };
                    tracing::warn!(rules = rules.rule.len(), "fault injection rules loaded");
                    self.set(rules);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
    }
}

/// The endpoint's UDP socket with faults applied.
pub struct FaultySocket {
    inner: Arc<dyn AsyncUdpSocket>,
    table: FaultTable,
}

impl fmt::Debug for FaultySocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FaultySocket").finish_non_exhaustive()
    }
}

impl FaultySocket {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn AsyncUdpSocket>, table: FaultTable) -> Self {
        Self { inner, table }
    }
}

impl AsyncUdpSocket for FaultySocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        self.inner.clone().create_io_poller()
    }

    fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        let rules = self.table.get();
        if rules.rule.is_empty() {
            return self.inner.try_send(transmit);
        }
        if rules.drops_out(&transmit.destination) {
            metrics::counter!("ark_fault_datagrams_dropped_total", "dir" => "out").increment(1);
            return Ok(());
        }
        let (delay, jitter, loss) = rules.shaping(&transmit.destination);
        let mut rng = rand::thread_rng();
        if loss > 0.0 && rng.gen_bool(loss.clamp(0.0, 1.0)) {
            metrics::counter!("ark_fault_datagrams_dropped_total", "dir" => "loss").increment(1);
            return Ok(());
        }
        if delay == 0 && jitter == 0 {
            return self.inner.try_send(transmit);
        }
        let wait = Duration::from_millis(delay + if jitter > 0 { rng.gen_range(0..=jitter) } else { 0 });
        let inner = self.inner.clone();
        let (destination, ecn, contents, segment_size, src_ip) = (
            transmit.destination,
            transmit.ecn,
            transmit.contents.to_vec(),
            transmit.segment_size,
            transmit.src_ip,
        );
        tokio::spawn(async move {
            tokio::time::sleep(wait).await;
            // A full socket buffer loses the datagram, as a congested link would.
            let _ = inner.try_send(&Transmit {
                destination,
                ecn,
                contents: &contents,
                segment_size,
                src_ip,
            });
        });
        Ok(())
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        loop {
            let n = match self.inner.poll_recv(cx, bufs, meta) {
                Poll::Ready(Ok(n)) => n,
                other => return other,
            };
            let rules = self.table.get();
            if rules.rule.is_empty() {
                return Poll::Ready(Ok(n));
            }
            // Keep the datagrams that pass, moved to the front.
            let mut kept = 0;
            for i in 0..n {
                if rules.drops_in(&meta[i].addr) {
                    metrics::counter!("ark_fault_datagrams_dropped_total", "dir" => "in").increment(1);
                    continue;
                }
                if kept != i {
                    let len = meta[i].len;
                    let (head, tail) = bufs.split_at_mut(i);
                    head[kept][..len].copy_from_slice(&tail[0][..len]);
                    meta[kept] = meta[i];
                }
                kept += 1;
            }
            if kept > 0 {
                return Poll::Ready(Ok(kept));
            }
            // Everything was dropped: poll again so the waker is registered.
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        self.inner.max_transmit_segments()
    }

    fn max_receive_segments(&self) -> usize {
        self.inner.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }
}

/// Describes this module's metrics (HELP text and unit) to the recorder; called once at start-up by
/// `server` (through `metrics::install`).
pub(crate) fn describe_metrics() {
    use metrics::describe_counter;
    describe_counter!(
        "ark_fault_datagrams_dropped_total",
        "Peer UDP datagrams dropped by the configured fault rules, by dir (out, in, loss); drills only."
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_parse_and_match() {
        let r: Rules = toml::from_str(
            r#"
            [[rule]]
            peer = "127.0.0.1:7102"
            drop = "out"
            [[rule]]
            peer = "*"
            delay_ms = 40
            loss = 0.5
            "#,
        )
        .unwrap();
        let a: SocketAddr = "127.0.0.1:7102".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:7103".parse().unwrap();
        assert!(r.drops_out(&a) && !r.drops_in(&a));
        assert!(!r.drops_out(&b));
        assert_eq!(r.shaping(&b), (40, 0, 0.5));
        assert!(toml::from_str::<Rules>("[[rule]]\npeer='*'\ndorp='in'").is_err());
    }
}
