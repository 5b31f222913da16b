//! Network faults for drills: which peer links are cut, in which direction, and how every
//! link is degraded, rendered as the `faults.toml` control file of each node's fault layer.
//!
//! arkd drops, delays and loses its peer (QUIC/UDP) datagrams in a user-space layer under
//! quinn (`node/src/net/fault.rs`), driven by `<node dir>/faults.toml`, which it re-reads
//! every 100 ms. That is where drills inject partitions and WAN links: nftables and `tc netem`
//! need root and network namespaces. Client (gRPC) traffic is not affected.
//!
//! Owns: the model of a network state ([`NetState`]) and its per-node rules, which are pure
//! and unit-tested; and [`FaultFiles`], which writes them atomically and heals every node on
//! demand and on drop. Must not touch processes, the workload or the checkers.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use ark_client::playground::Playground;

/// A node id of the playground.
pub type NodeId = u64;

/// Degradation of every peer link (a WAN): applied by each node to the datagrams it sends.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Shaping {
    /// One-way delay added to every datagram.
    pub delay_ms: u64,
    /// Uniform random extra delay (reorders datagrams).
    pub jitter_ms: u64,
    /// Probability that a datagram is lost, in `[0, 1]`.
    pub loss: f64,
}

/// What the network between the nodes looks like: directed links that drop everything, and an
/// optional degradation of all links. The default is a healthy network.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NetState {
    /// `(from, to)`: datagrams sent by `from` to `to` are dropped.
    blocked: BTreeSet<(NodeId, NodeId)>,
    /// Applied to every link that is not blocked.
    shaping: Option<Shaping>,
}

impl NetState {
    /// A healthy network.
    pub fn healthy() -> Self {
        Self::default()
    }

    /// Every link degraded by `shaping`.
    pub fn wan(shaping: Shaping) -> Self {
        Self {
            blocked: BTreeSet::new(),
            shaping: Some(shaping),
        }
    }

    /// Drops datagrams from `from` to `to` (one direction only).
    pub fn block(&mut self, from: NodeId, to: NodeId) -> &mut Self {
        if from != to {
            self.blocked.insert((from, to));
        }
        self
    }

    /// Cuts the link between `a` and `b` in both directions.
    pub fn cut(&mut self, a: NodeId, b: NodeId) -> &mut Self {
        self.block(a, b).block(b, a)
    }

    /// Cuts every link between `group` and the other nodes of `all`, both directions; links
    /// inside `group` and inside the rest stay up (a partition into two sides).
    pub fn isolate(&mut self, group: &[NodeId], all: &[NodeId]) -> &mut Self {
        for a in group {
            for b in all.iter().filter(|b| !group.contains(b)) {
                self.cut(*a, *b);
            }
        }
        self
    }

    /// Whether datagrams from `from` to `to` are dropped.
    pub fn is_blocked(&self, from: NodeId, to: NodeId) -> bool {
        self.blocked.contains(&(from, to))
    }

    /// Whether no link is cut or degraded.
    pub fn is_healthy(&self) -> bool {
        self.blocked.is_empty() && self.shaping.is_none()
    }

    /// The control file of `node`: a rule per peer it must not send to ("out"), not receive
    /// from ("in"), or both; then the shaping for every peer. Both ends of a blocked link get
    /// a rule, so each file says on its own what its node suffers. `peer_addrs` maps node ids
    /// to their peer (QUIC) `ip:port`; empty text for a healthy network.
    pub fn rules_for(&self, node: NodeId, peer_addrs: &BTreeMap<NodeId, String>) -> anyhow::Result<String> {
        let mut text = String::new();
        let peers: BTreeSet<NodeId> = self
            .blocked
            .iter()
            .filter_map(|(from, to)| match (*from == node, *to == node) {
                (true, _) => Some(*to),
                (_, true) => Some(*from),
                _ => None,
            })
            .collect();
        for peer in peers {
            let dir = match (self.is_blocked(node, peer), self.is_blocked(peer, node)) {
                (true, true) => "both",
                (true, false) => "out",
                (false, true) => "in",
                (false, false) => continue,
            };
            let addr = peer_addrs
                .get(&peer)
                .with_context(|| format!("no peer address for node {peer}"))?;
            let _ = write!(text, "[[rule]]\npeer = \"{addr}\"\ndrop = \"{dir}\"\n");
        }
        if let Some(s) = self.shaping {
            anyhow::ensure!((0.0..=1.0).contains(&s.loss), "loss {} is not a probability", s.loss);
            let _ = write!(
                text,
                "[[rule]]\npeer = \"*\"\ndelay_ms = {}\njitter_ms = {}\nloss = {:?}\n",
                s.delay_ms, s.jitter_ms, s.loss
            );
        }
        Ok(text)
    }

    /// One line for the report: the blocked links, grouped as `a<->b` or `a->b`.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        for (from, to) in &self.blocked {
            if self.is_blocked(*to, *from) {
                if from < to {
                    parts.push(format!("{from}<->{to}"));
                }
            } else {
                parts.push(format!("{from}->{to}"));
            }
        }
        if let Some(s) = self.shaping {
            parts.push(format!(
                "all links {}±{} ms, loss {}%",
                s.delay_ms,
                s.jitter_ms,
                s.loss * 100.0
            ));
        }
        if parts.is_empty() {
            "healthy".to_owned()
        } else {
            parts.join(" ")
        }
    }
}

/// The `faults.toml` of every node of a playground. Writes are atomic (a temporary file, then
/// a rename), so arkd never reads half a file. Dropping it heals every node, so a drill that
/// fails or panics does not leave a partition behind; call [`FaultFiles::heal`] to see errors.
#[derive(Debug)]
pub struct FaultFiles {
    nodes: BTreeMap<NodeId, ControlFile>,
}

/// One node's control file and what the drill knows about it.
#[derive(Debug)]
struct ControlFile {
    peer_addr: String,
    path: PathBuf,
    /// The node's log, where arkd says when it loaded new rules.
    log: PathBuf,
    /// What the file holds now (empty: no faults, or never written).
    text: String,
}

/// Name of the control file in a node's dir (the playground's `[faults] control_file`).
pub const CONTROL_FILE: &str = "faults.toml";
/// What arkd logs each time it loads a changed control file (`node/src/net/fault.rs`).
const LOADED_LOG_LINE: &str = "fault injection rules loaded";
/// How long a node may take to load changed rules: it re-reads the file every 100 ms.
const LOAD_TIMEOUT: Duration = Duration::from_secs(3);

impl FaultFiles {
    /// The control files of every node in the playground at `dir`.
    pub fn new(dir: &Path) -> anyhow::Result<Self> {
        let pg = Playground::load(dir)?;
        let mut nodes = BTreeMap::new();
        for n in &pg.nodes {
            let node_dir = n
                .data_dir
                .parent()
                .with_context(|| format!("data dir of node {} has no parent", n.id))?;
            nodes.insert(
                n.id,
                ControlFile {
                    peer_addr: n.peer_addr.clone(),
                    path: node_dir.join(CONTROL_FILE),
                    log: node_dir.join("arkd.log"),
                    text: String::new(),
                },
            );
        }
        Ok(Self { nodes })
    }

    /// Makes the network look like `state`: rewrites the control file of every node whose
    /// rules change, and waits until each of those nodes has logged that it loaded them, so
    /// that the fault is in force on return (arkd re-reads the file every 100 ms). Returns the
    /// nodes that changed.
    pub async fn apply(&mut self, state: &NetState) -> anyhow::Result<Vec<NodeId>> {
        let addrs: BTreeMap<NodeId, String> = self.nodes.iter().map(|(id, f)| (*id, f.peer_addr.clone())).collect();
        let mut changed = Vec::new();
        for (id, f) in &mut self.nodes {
            let text = state.rules_for(*id, &addrs)?;
            if text == f.text {
                continue;
            }
            let log_len = std::fs::metadata(&f.log).map(|m| m.len()).unwrap_or(0);
            write_atomic(&f.path, &text)?;
            f.text = text;
            changed.push((*id, log_len));
        }
        let deadline = Instant::now() + LOAD_TIMEOUT;
        for (id, log_len) in &changed {
            let log = &self.nodes[id].log;
            while !logged_since(log, *log_len, LOADED_LOG_LINE) {
                if Instant::now() >= deadline {
                    bail!(
                        "node {id} did not load its new fault rules within {LOAD_TIMEOUT:?} (no {LOADED_LOG_LINE:?} in {})",
                        log.display()
                    );
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        Ok(changed.into_iter().map(|(id, _)| id).collect())
    }

    /// Removes every fault: an empty control file on every node, loaded by every node.
    pub async fn heal(&mut self) -> anyhow::Result<()> {
        self.apply(&NetState::healthy()).await.map(|_| ())
    }
}

impl Drop for FaultFiles {
    fn drop(&mut self) {
        for f in self.nodes.values_mut().filter(|f| !f.text.is_empty()) {
            // Best effort: the drill is ending anyway; `heal` is the checked path.
            let _ = write_atomic(&f.path, "");
            f.text.clear();
        }
    }
}

/// Whether `needle` occurs in the file at `path` after its first `offset` bytes.
fn logged_since(path: &Path, offset: u64, needle: &str) -> bool {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut file) = std::fs::File::open(path) else {
        return false;
    };
    let mut tail = Vec::new();
    if file.seek(SeekFrom::Start(offset)).is_err() || file.read_to_end(&mut tail).is_err() {
        return false;
    }
    String::from_utf8_lossy(&tail).contains(needle)
}

fn write_atomic(path: &Path, text: &str) -> anyhow::Result<()> {
    let tmp = path.with_extension("toml.tmp");
    std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("replacing {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs() -> BTreeMap<NodeId, String> {
        (1..=5).map(|i| (i, format!("127.0.0.1:710{i}"))).collect()
    }

    #[test]
    fn healthy_network_has_empty_files() {
        let s = NetState::healthy();
        assert!(s.is_healthy());
        assert_eq!(s.rules_for(1, &addrs()).unwrap(), "");
        assert_eq!(s.describe(), "healthy");
    }

    #[test]
    fn isolation_cuts_both_directions_on_both_sides_only_across_the_cut() {
        let mut s = NetState::healthy();
        s.isolate(&[1, 2], &[1, 2, 3, 4, 5]);
        for a in [1, 2] {
            for b in [3, 4, 5] {
                assert!(s.is_blocked(a, b) && s.is_blocked(b, a));
            }
        }
        assert!(!s.is_blocked(1, 2) && !s.is_blocked(3, 4));
        let r1 = s.rules_for(1, &addrs()).unwrap();
        assert_eq!(
            r1,
            "[[rule]]\npeer = \"127.0.0.1:7103\"\ndrop = \"both\"\n\
             [[rule]]\npeer = \"127.0.0.1:7104\"\ndrop = \"both\"\n\
             [[rule]]\npeer = \"127.0.0.1:7105\"\ndrop = \"both\"\n"
        );
        let r3 = s.rules_for(3, &addrs()).unwrap();
        assert!(r3.contains("7101") && r3.contains("7102") && !r3.contains("7104"));
        assert_eq!(s.describe(), "1<->3 1<->4 1<->5 2<->3 2<->4 2<->5");
    }

    #[test]
    fn one_way_block_is_out_at_the_sender_and_in_at_the_receiver() {
        let mut s = NetState::healthy();
        s.block(2, 1);
        assert_eq!(
            s.rules_for(2, &addrs()).unwrap(),
            "[[rule]]\npeer = \"127.0.0.1:7101\"\ndrop = \"out\"\n"
        );
        assert_eq!(
            s.rules_for(1, &addrs()).unwrap(),
            "[[rule]]\npeer = \"127.0.0.1:7102\"\ndrop = \"in\"\n"
        );
        assert_eq!(s.rules_for(3, &addrs()).unwrap(), "");
        assert_eq!(s.describe(), "2->1");
    }

    #[test]
    fn a_bridge_leaves_the_middle_node_connected() {
        let mut s = NetState::healthy();
        s.cut(1, 3);
        assert_eq!(s.rules_for(2, &addrs()).unwrap(), "");
        assert_eq!(s.describe(), "1<->3");
    }

    #[test]
    fn wan_shapes_every_link() {
        let s = NetState::wan(Shaping {
            delay_ms: 30,
            jitter_ms: 10,
            loss: 0.015,
        });
        assert!(!s.is_healthy());
        assert_eq!(
            s.rules_for(4, &addrs()).unwrap(),
            "[[rule]]\npeer = \"*\"\ndelay_ms = 30\njitter_ms = 10\nloss = 0.015\n"
        );
        let bad = NetState::wan(Shaping {
            delay_ms: 0,
            jitter_ms: 0,
            loss: 1.5,
        });
        assert!(bad.rules_for(1, &addrs()).is_err());
    }

    #[test]
    fn unknown_peer_is_an_error() {
        let mut s = NetState::healthy();
        s.cut(1, 9);
        assert!(s.rules_for(1, &addrs()).is_err());
    }

    /// Stands in for arkd: logs a load line whenever a control file changes.
    fn fake_node(path: PathBuf, log: PathBuf, stop: std::sync::Arc<std::sync::atomic::AtomicBool>) {
        std::thread::spawn(move || {
            let mut seen = String::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let now = std::fs::read_to_string(&path).unwrap_or_default();
                if now != seen {
                    seen = now;
                    let mut l = std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(&log)
                        .unwrap();
                    std::io::Write::write_all(&mut l, format!("{LOADED_LOG_LINE} rules=?\n").as_bytes()).unwrap();
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        });
    }

    #[tokio::test]
    async fn files_are_written_confirmed_and_healed_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut nodes = BTreeMap::new();
        for i in 1..=3u64 {
            let node_dir = dir.path().join(format!("node-{i}"));
            std::fs::create_dir_all(&node_dir).unwrap();
            let (path, log) = (node_dir.join(CONTROL_FILE), node_dir.join("arkd.log"));
            fake_node(path.clone(), log.clone(), stop.clone());
            nodes.insert(
                i,
                ControlFile {
                    peer_addr: format!("127.0.0.1:710{i}"),
                    path,
                    log,
                    text: String::new(),
                },
            );
        }
        let path = |i: u64| dir.path().join(format!("node-{i}")).join(CONTROL_FILE);
        {
            let mut f = FaultFiles { nodes };
            let mut s = NetState::healthy();
            s.cut(1, 2);
            assert_eq!(f.apply(&s).await.unwrap(), vec![1, 2]);
            assert!(std::fs::read_to_string(path(1)).unwrap().contains("7102"));
            assert!(std::fs::read_to_string(path(2)).unwrap().contains("7101"));
            assert!(!path(3).exists());
            // Unchanged rules are not rewritten (and not waited for).
            assert_eq!(f.apply(&s).await.unwrap(), Vec::<NodeId>::new());
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for i in 1..=2 {
            assert_eq!(std::fs::read_to_string(path(i)).unwrap(), "");
        }
    }

    #[tokio::test]
    async fn a_node_that_never_loads_its_rules_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let node_dir = dir.path().join("node-1");
        std::fs::create_dir_all(&node_dir).unwrap();
        let mut nodes = BTreeMap::new();
        for i in 1..=2u64 {
            nodes.insert(
                i,
                ControlFile {
                    peer_addr: format!("127.0.0.1:710{i}"),
                    path: node_dir.join(format!("faults-{i}.toml")),
                    log: node_dir.join("arkd.log"),
                    text: String::new(),
                },
            );
        }
        let mut f = FaultFiles { nodes };
        let mut s = NetState::healthy();
        s.block(1, 2);
        let e = f.apply(&s).await.unwrap_err();
        assert!(e.to_string().contains("did not load"), "{e}");
    }
}
