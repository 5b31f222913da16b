//! Network faults for drills: which peer links are cut, in which direction, and how every
//! link is degraded, rendered as each node's rules, and applied in one of two ways
//! ([`NetFaults`]):
//!
//! - loopback mode: arkd drops, delays and loses its peer (QUIC/UDP) datagrams in a user-space
//!   layer under quinn (`node/src/net/fault.rs`), driven by `<node dir>/faults.toml`, which it
//!   re-reads every 100 ms ([`FaultFiles`]);
//! - netns mode (every node in its own network namespace, [`crate::netns`]): cut links are
//!   nftables drops of peer UDP in each node's namespace ([`Nftables`]); WAN delay and loss
//!   still go through `faults.toml`, as `tc netem` is not available everywhere.
//!
//! In both, client (gRPC, TCP) traffic is not affected: a cut-off node still answers clients.
//!
//! Owns: the model of a network state ([`NetState`]) and its per-node rules, which are pure
//! and unit-tested; and the appliers, which install them atomically and heal every node on
//! demand and on drop. Must not touch processes, the workload or the checkers.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use ark_playground::playground::Playground;

use crate::report::Mode;

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

    /// Only the blocked links (what nftables enforces in netns mode).
    pub fn blocks_only(&self) -> Self {
        Self {
            blocked: self.blocked.clone(),
            shaping: None,
        }
    }

    /// Only the shaping of every link (what arkd's fault layer enforces in netns mode).
    pub fn shaping_only(&self) -> Self {
        Self {
            blocked: BTreeSet::new(),
            shaping: self.shaping,
        }
    }

    /// The nftables ruleset of `node`'s namespace: table `inet arkchaos`, dropping UDP that
    /// comes in from the peers it must not hear and goes out to the peers it must not reach.
    /// `ips` maps node ids to their addresses. Empty text when no blocked link touches `node`
    /// (the table is then deleted). Shaping is not rendered here: it stays in `faults.toml`.
    pub fn nft_rules_for(&self, node: NodeId, ips: &BTreeMap<NodeId, IpAddr>) -> anyhow::Result<String> {
        let ip_of = |peer: &NodeId| {
            ips.get(peer)
                .copied()
                .with_context(|| format!("no address for node {peer}"))
        };
        let from: Vec<IpAddr> = self
            .blocked
            .iter()
            .filter(|(_, to)| *to == node)
            .map(|(from, _)| ip_of(from))
            .collect::<anyhow::Result<_>>()?;
        let to: Vec<IpAddr> = self
            .blocked
            .iter()
            .filter(|(from, _)| *from == node)
            .map(|(_, to)| ip_of(to))
            .collect::<anyhow::Result<_>>()?;
        if from.is_empty() && to.is_empty() {
            return Ok(String::new());
        }
        let mut text = format!("table inet {NFT_TABLE} {{\n");
        for (chain, dir, addrs) in [("input", "saddr", &from), ("output", "daddr", &to)] {
            let _ = writeln!(
                text,
                "\tchain {chain} {{\n\t\ttype filter hook {chain} priority filter; policy accept;"
            );
            for (family, of_family) in [("ip", false), ("ip6", true)] {
                let set: Vec<String> = addrs
                    .iter()
                    .filter(|a| a.is_ipv6() == of_family)
                    .map(ToString::to_string)
                    .collect();
                if !set.is_empty() {
                    let _ = writeln!(
                        text,
                        "\t\tmeta l4proto udp {family} {dir} {{ {} }} drop",
                        set.join(", ")
                    );
                }
            }
            text.push_str("\t}\n");
        }
        text.push_str("}\n");
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

/// The nftables table drills own in each node's namespace (and nothing else).
pub const NFT_TABLE: &str = "arkchaos";

/// One `nft -f -` batch that replaces the drill's table with `rules` atomically: declaring the
/// table first makes the delete succeed whether or not it existed; empty `rules` leave no
/// table.
pub fn nft_batch(rules: &str) -> String {
    format!("table inet {NFT_TABLE}\ndelete table inet {NFT_TABLE}\n{rules}")
}

/// The nftables rules of every node of a playground in netns mode, each in the node's own
/// namespace. A batch is applied atomically by the kernel, so a fault is in force when
/// [`Nftables::apply`] returns. Dropping it deletes every table, so a failed drill leaves no
/// partition behind (deleting the namespaces would too).
#[derive(Debug)]
pub struct Nftables {
    nodes: BTreeMap<NodeId, NftNode>,
}

#[derive(Debug)]
struct NftNode {
    netns: String,
    ip: IpAddr,
    /// The ruleset in force (empty: no table).
    text: String,
}

/// How long `nft` may take to load one namespace's batch.
const NFT_TIMEOUT: Duration = Duration::from_secs(5);

impl Nftables {
    /// The namespaces of every node in the playground at `dir`; fails for a node without one.
    pub fn new(dir: &Path) -> anyhow::Result<Self> {
        let pg = Playground::load(dir)?;
        let mut nodes = BTreeMap::new();
        for n in &pg.nodes {
            let netns = n
                .netns
                .clone()
                .with_context(|| format!("node {} runs in no network namespace", n.id))?;
            let ip = n
                .peer_addr
                .parse::<SocketAddr>()
                .with_context(|| format!("peer address {:?} of node {}", n.peer_addr, n.id))?
                .ip();
            nodes.insert(
                n.id,
                NftNode {
                    netns,
                    ip,
                    text: String::new(),
                },
            );
        }
        Ok(Self { nodes })
    }

    /// Makes the blocked links look like `state` (its shaping is ignored): replaces the table
    /// of every node whose rules change. Returns the nodes that changed.
    pub async fn apply(&mut self, state: &NetState) -> anyhow::Result<Vec<NodeId>> {
        let ips: BTreeMap<NodeId, IpAddr> = self.nodes.iter().map(|(id, n)| (*id, n.ip)).collect();
        let mut changed = Vec::new();
        for (id, n) in &mut self.nodes {
            let text = state.nft_rules_for(*id, &ips)?;
            if text == n.text {
                continue;
            }
            nft_load(&n.netns, &nft_batch(&text))
                .await
                .with_context(|| format!("loading the nftables rules of node {id}"))?;
            n.text = text;
            changed.push(*id);
        }
        Ok(changed)
    }

    /// Deletes the table in every namespace that has one.
    pub async fn heal(&mut self) -> anyhow::Result<()> {
        self.apply(&NetState::healthy()).await.map(|_| ())
    }
}

/// Runs `nft -f -` with `batch` in namespace `netns`, within [`NFT_TIMEOUT`].
async fn nft_load(netns: &str, batch: &str) -> anyhow::Result<()> {
    use tokio::io::AsyncWriteExt;
    let mut child = tokio::process::Command::new("ip")
        .args(["netns", "exec", netns, "nft", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("cannot run `ip netns exec ... nft` (are iproute2 and nftables installed?)")?;
    let mut stdin = child.stdin.take().context("nft has no stdin")?;
    stdin.write_all(batch.as_bytes()).await.context("writing to nft")?;
    drop(stdin);
    let out = tokio::time::timeout(NFT_TIMEOUT, child.wait_with_output())
        .await
        .with_context(|| format!("nft in {netns} did not finish within {NFT_TIMEOUT:?}"))??;
    if !out.status.success() {
        bail!("nft in {netns} failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

impl Drop for Nftables {
    fn drop(&mut self) {
        for n in self.nodes.values_mut().filter(|n| !n.text.is_empty()) {
            // Best effort, blocking: the drill is ending; `heal` is the checked path.
            let _ = std::process::Command::new("ip")
                .args(["netns", "exec", &n.netns, "nft", "delete", "table", "inet", NFT_TABLE])
                .output();
            n.text.clear();
        }
    }
}

/// The fault applier of a run: the same `apply`/`heal` in both modes.
#[derive(Debug)]
pub enum NetFaults {
    /// Everything through arkd's user-space fault layer.
    Loopback {
        /// Every node's `faults.toml`.
        files: FaultFiles,
        /// Why loopback mode (for the report).
        why: String,
    },
    /// Cut links through nftables in each node's namespace; shaping through `faults.toml`.
    Netns {
        /// The nodes' nftables tables.
        nft: Nftables,
        /// Every node's `faults.toml`, for WAN shaping only.
        shaping: FaultFiles,
        /// The run's subnet and name prefix (for the report).
        net: String,
    },
}

impl NetFaults {
    /// The applier of the playground in `dir`: loopback (`why` says why that mode), or netns
    /// with `net` describing the run's namespaces.
    pub fn new(dir: &Path, netns: Result<String, String>) -> anyhow::Result<Self> {
        let files = FaultFiles::new(dir)?;
        Ok(match netns {
            Ok(net) => Self::Netns {
                nft: Nftables::new(dir)?,
                shaping: files,
                net,
            },
            Err(why) => Self::Loopback { files, why },
        })
    }

    /// Makes the network look like `state`, in force on return; returns the nodes whose rules
    /// changed.
    pub async fn apply(&mut self, state: &NetState) -> anyhow::Result<Vec<NodeId>> {
        match self {
            Self::Loopback { files, .. } => files.apply(state).await,
            Self::Netns { nft, shaping, .. } => {
                let mut changed = nft.apply(&state.blocks_only()).await?;
                changed.extend(shaping.apply(&state.shaping_only()).await?);
                changed.sort_unstable();
                changed.dedup();
                Ok(changed)
            }
        }
    }

    /// Removes every fault on every node.
    pub async fn heal(&mut self) -> anyhow::Result<()> {
        self.apply(&NetState::healthy()).await.map(|_| ())
    }

    /// The report's mode.
    pub fn mode(&self) -> Mode {
        match self {
            Self::Loopback { .. } => Mode::Loopback,
            Self::Netns { .. } => Mode::Netns,
        }
    }

    /// First words of the report's fault note: the mode and why.
    pub fn mode_note(&self) -> String {
        match self {
            Self::Loopback { why, .. } => format!("loopback mode ({why})"),
            Self::Netns { net, .. } => format!("netns mode: every node in its own network namespace ({net})"),
        }
    }

    /// How network faults were injected, for the report.
    pub fn injection_note(&self) -> &'static str {
        match self {
            Self::Loopback { .. } => {
                "network faults injected by arkd's user-space fault layer under quinn (each node's faults.toml \
                 drops, delays and loses its peer QUIC/UDP datagrams, re-read every 100 ms), not by nftables; \
                 client gRPC traffic is not affected"
            }
            Self::Netns { .. } => {
                "partitions and one-way drops are nftables drops of peer UDP in each node's network namespace \
                 (table inet arkchaos: input drops from the peers it must not hear, output to those it must not \
                 reach); WAN delay and loss, if any, through arkd's user-space fault layer under quinn \
                 (faults.toml; tc netem is not used); client gRPC traffic is not affected"
            }
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

    fn ips() -> BTreeMap<NodeId, IpAddr> {
        (1..=5).map(|i| (i, IpAddr::from([10, 150, 1, 9 + i as u8]))).collect()
    }

    #[test]
    fn nft_cut_drops_both_ways_only_peer_udp() {
        let mut s = NetState::healthy();
        s.isolate(&[1], &[1, 2, 3]);
        assert_eq!(
            s.nft_rules_for(1, &ips()).unwrap(),
            "table inet arkchaos {\n\
             \tchain input {\n\t\ttype filter hook input priority filter; policy accept;\n\
             \t\tmeta l4proto udp ip saddr { 10.150.1.11, 10.150.1.12 } drop\n\t}\n\
             \tchain output {\n\t\ttype filter hook output priority filter; policy accept;\n\
             \t\tmeta l4proto udp ip daddr { 10.150.1.11, 10.150.1.12 } drop\n\t}\n\
             }\n"
        );
        let r2 = s.nft_rules_for(2, &ips()).unwrap();
        assert!(
            r2.contains("saddr { 10.150.1.10 }") && r2.contains("daddr { 10.150.1.10 }"),
            "{r2}"
        );
        // Nothing but UDP is dropped: the harness's gRPC (TCP) still reaches a cut-off node.
        assert!(r2
            .lines()
            .filter(|l| l.contains("drop"))
            .all(|l| l.contains("meta l4proto udp")));
    }

    #[test]
    fn nft_one_way_drop_is_input_at_the_receiver_and_output_at_the_sender() {
        let mut s = NetState::healthy();
        s.block(2, 1); // node 1 does not receive from node 2
        let r1 = s.nft_rules_for(1, &ips()).unwrap();
        assert!(r1.contains("ip saddr { 10.150.1.11 } drop"), "{r1}");
        assert!(!r1.contains("daddr"), "{r1}");
        let r2 = s.nft_rules_for(2, &ips()).unwrap();
        assert!(r2.contains("ip daddr { 10.150.1.10 } drop"), "{r2}");
        assert!(!r2.contains("saddr"), "{r2}");
        assert_eq!(s.nft_rules_for(3, &ips()).unwrap(), "");
    }

    #[test]
    fn nft_ignores_shaping_and_healthy_means_no_table() {
        let wan = NetState::wan(Shaping {
            delay_ms: 30,
            jitter_ms: 10,
            loss: 0.01,
        });
        assert_eq!(wan.nft_rules_for(1, &ips()).unwrap(), "");
        assert_eq!(NetState::healthy().nft_rules_for(1, &ips()).unwrap(), "");
        assert_eq!(
            nft_batch(""),
            "table inet arkchaos\ndelete table inet arkchaos\n",
            "healing deletes the table whether or not it exists"
        );
        let mut both = wan.clone();
        both.cut(1, 2);
        assert_eq!(both.blocks_only().shaping, None);
        assert!(both.shaping_only().blocked.is_empty() && both.shaping_only().shaping.is_some());
        let mut s = NetState::healthy();
        s.cut(1, 9);
        assert!(s.nft_rules_for(1, &ips()).is_err());
    }

    #[test]
    fn nft_v6_peers_get_ip6_rules() {
        let mut s = NetState::healthy();
        s.cut(1, 2);
        let mut ips = ips();
        ips.insert(2, "fd00::2".parse().unwrap());
        let r1 = s.nft_rules_for(1, &ips).unwrap();
        assert!(r1.contains("meta l4proto udp ip6 saddr { fd00::2 } drop"), "{r1}");
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
