//! `ark playground`: a local multi-site cluster of real `arkd` processes on loopback, like
//! `tiup playground` or `cockroach demo`. Each node gets its own data dir, config, log file
//! and certificate under the playground dir; `playground.json` records what was started so
//! that `down` (or a test) can find every process again.
//!
//! By default every node listens on its own loopback ports. A caller that passes a
//! [`NodePlacer`] (the chaos harness's network-namespace mode) gets each node started with
//! `ip netns exec <namespace> arkd ...`, listening on its namespace's own address; the
//! placer owns the namespaces, this module only records which one each node is in.

use std::net::{IpAddr, SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use crate::certs;
use ark_client::ArkClient;
use ark_client::ClientConfig;

/// One node as recorded in `playground.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PlaygroundNode {
    /// Node id.
    pub id: u64,
    /// Site name.
    pub site: String,
    /// Process id of its `arkd`.
    pub pid: u32,
    /// gRPC address.
    pub client_addr: String,
    /// QUIC address.
    pub peer_addr: String,
    /// Prometheus address.
    pub metrics_addr: String,
    /// Data directory.
    pub data_dir: PathBuf,
    /// Its config file.
    pub config: PathBuf,
    /// The network namespace its `arkd` runs in (`ip netns exec`); `None`: the harness's own
    /// namespace, on loopback.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<String>,
    /// A witness voter (`role = "witness"`): holds no data, not in `client.toml`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub witness: bool,
}

/// Where a node placed by a [`NodePlacer`] runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeNet {
    /// Name of its network namespace (as `ip netns list` shows it).
    pub netns: String,
    /// Its address in that namespace, reachable from the caller's namespace.
    pub ip: IpAddr,
}

/// Gives each new node a network namespace and an address of its own (created before the
/// node starts). Without one, nodes share the caller's loopback.
pub trait NodePlacer: Send + Sync {
    /// Makes (or finds) the namespace of node `id` in `site`.
    fn place(&self, id: u64, site: &str) -> anyhow::Result<NodeNet>;
}

/// Ports of a node in its own namespace: it has the address to itself, so fixed ports.
const NETNS_PEER_PORT: u16 = 7000;
const NETNS_CLIENT_PORT: u16 = 7001;
const NETNS_METRICS_PORT: u16 = 7002;

/// The three listen addresses of a node in a namespace.
fn netns_addrs(ip: IpAddr) -> (SocketAddr, SocketAddr, SocketAddr) {
    (
        SocketAddr::new(ip, NETNS_PEER_PORT),
        SocketAddr::new(ip, NETNS_CLIENT_PORT),
        SocketAddr::new(ip, NETNS_METRICS_PORT),
    )
}

/// `playground.json`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Playground {
    /// Every node started, in id order.
    pub nodes: Vec<PlaygroundNode>,
}

/// How to lay out a new playground.
#[derive(Debug, Clone)]
pub struct Layout {
    /// Number of sites.
    pub sites: u32,
    /// Nodes in each site.
    pub nodes_per_site: u32,
    /// Snapshot after this many applied entries (small values exercise snapshots).
    pub snapshot_logs_since_last: u64,
    /// How long to wait for a leader.
    pub ready_timeout: Duration,
    /// Telemetry points the leader keeps per node and series (sampled every second).
    pub telemetry_window_points: u32,
    /// Extra config lines: `(node id, section, line)`, e.g. `(2, "risk", "ordering =
    /// \"fifo\"")`; node id 0 means every node. The line goes into that `[section]` of
    /// the node's `arkd.toml`, which is added when the playground does not write it.
    pub settings: Vec<(u64, String, String)>,
    /// Adds a witness voter (the last node id) in a site of its own, [`WITNESS_SITE`]: with
    /// `sites: 2, nodes_per_site: 1` the minimal two-site deployment that fails over by itself.
    pub witness: bool,
}

/// The site of a playground's witness voter.
pub const WITNESS_SITE: &str = "witness";

/// A playground keeps 10 minutes of telemetry at its 1 s interval.
pub const TELEMETRY_WINDOW_POINTS: u32 = 600;

impl Default for Layout {
    fn default() -> Self {
        Self {
            sites: 3,
            nodes_per_site: 1,
            snapshot_logs_since_last: 20_000,
            ready_timeout: Duration::from_secs(30),
            telemetry_window_points: TELEMETRY_WINDOW_POINTS,
            settings: Vec::new(),
            witness: false,
        }
    }
}

impl Layout {
    /// Makes node `id` replay the daily SMART history in `history` (`[telemetry]
    /// smart_replay`, a file `ark_forecast::history::write_history` wrote) instead of asking
    /// `smartctl`; the path is written as given, so pass an absolute one.
    pub fn replay_smart(&mut self, id: u64, history: &Path) {
        self.settings.push((
            id,
            "telemetry".to_string(),
            format!("smart_replay = {:?}", history.display().to_string()),
        ));
    }
}

/// `text` (a TOML document) with `line` added to its `[section]`, appended as a new table
/// when there is none.
fn add_setting(text: &str, section: &str, line: &str) -> String {
    let header = format!("[{section}]\n");
    match text
        .find(&header)
        .filter(|&i| i == 0 || text.as_bytes()[i - 1] == b'\n')
    {
        Some(i) => {
            let at = i + header.len();
            format!("{}{line}\n{}", &text[..at], &text[at..])
        }
        None => format!("{text}\n{header}{line}\n"),
    }
}

/// Site name of the `i`-th site (0-based): site-a, site-b, ...
pub fn site_name(i: u32) -> String {
    let letter = (b'a' + (i % 26) as u8) as char;
    if i < 26 {
        format!("site-{letter}")
    } else {
        format!("site-{letter}{}", i / 26)
    }
}

/// Finds the `arkd` binary: `$ARKD_BIN`, next to this executable, or on `PATH`.
pub fn find_arkd() -> anyhow::Result<PathBuf> {
    find_binary("arkd", "ARKD_BIN")
}

/// Finds the binary `name` of this workspace: `$env_var` when set, else beside this
/// executable or one folder up (a test's executable sits in `target/<profile>/deps`), else
/// on `PATH`.
pub fn find_binary(name: &str, env_var: &str) -> anyhow::Result<PathBuf> {
    if let Ok(p) = std::env::var(env_var) {
        return Ok(PathBuf::from(p));
    }
    if let Ok(me) = std::env::current_exe() {
        for dir in me.ancestors().skip(1).take(2) {
            let cand = dir.join(name);
            if cand.is_file() {
                return Ok(cand);
            }
        }
    }
    if let Some(paths) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&paths) {
            let cand = dir.join(name);
            if cand.is_file() {
                return Ok(cand);
            }
        }
    }
    bail!("cannot find the {name} binary: build it (cargo build) or set {env_var}")
}

/// Loopback ports picked by binding port 0. The sockets stay open until the ports are
/// written into configs, so that no two picks of one playground get the same port.
#[derive(Default)]
struct PortPicker {
    held_tcp: Vec<TcpListener>,
    held_udp: Vec<UdpSocket>,
}

impl PortPicker {
    fn tcp(&mut self) -> anyhow::Result<SocketAddr> {
        let l = TcpListener::bind("127.0.0.1:0")?;
        let a = l.local_addr()?;
        self.held_tcp.push(l);
        Ok(a)
    }

    fn udp(&mut self) -> anyhow::Result<SocketAddr> {
        let s = UdpSocket::bind("127.0.0.1:0")?;
        let a = s.local_addr()?;
        self.held_udp.push(s);
        Ok(a)
    }
}

impl Playground {
    /// Reads `DIR/playground.json`.
    pub fn load(dir: &Path) -> anyhow::Result<Self> {
        let p = dir.join("playground.json");
        let text = std::fs::read_to_string(&p).with_context(|| {
            format!(
                "cannot read {} (is there a playground in {}?)",
                p.display(),
                dir.display()
            )
        })?;
        serde_json::from_str(&text).with_context(|| format!("{} is malformed", p.display()))
    }

    /// Writes `DIR/playground.json` atomically.
    pub fn save(&self, dir: &Path) -> anyhow::Result<()> {
        let tmp = dir.join("playground.json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(self)?)?;
        std::fs::rename(&tmp, dir.join("playground.json"))?;
        Ok(())
    }

    /// The client config written for this playground.
    pub fn client_config(dir: &Path) -> anyhow::Result<ClientConfig> {
        Ok(ClientConfig::load(&dir.join("client.toml"))?)
    }

    /// A node by id.
    pub fn node(&self, id: u64) -> Option<&PlaygroundNode> {
        self.nodes.iter().find(|n| n.id == id)
    }

    /// The gRPC addresses of the nodes `keep` selects (e.g. the survivors of a lost site),
    /// in the recorded order: an endpoint list for `ArkClient::with_endpoints`.
    pub fn client_addrs(&self, keep: impl Fn(&PlaygroundNode) -> bool) -> Vec<String> {
        self.nodes
            .iter()
            .filter(|n| keep(n))
            .map(|n| n.client_addr.clone())
            .collect()
    }
}

struct NodeSpec<'a> {
    id: u64,
    site: String,
    peer: SocketAddr,
    client: SocketAddr,
    metrics: SocketAddr,
    initialize: bool,
    peers: &'a [(u64, String, SocketAddr, SocketAddr)],
    snapshot_logs_since_last: u64,
    netns: Option<String>,
    telemetry_window_points: u32,
    settings: Vec<(String, String)>,
    witness: bool,
}

/// The playground's key-encryption key file, shared by its nodes (`[encryption] kek_file`),
/// so that `ark ns create NAME --encrypt` works on a playground.
pub const KEK_FILE: &str = "kek";

/// Writes a new random KEK (32 bytes from the system's random source, as 64 hex digits,
/// mode 0600) to `path`, replacing any there. Nodes read it when they start.
pub fn write_kek(path: &Path) -> anyhow::Result<()> {
    use std::io::Read;
    let mut key = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut key))
        .context("reading 32 random bytes for the playground's KEK")?;
    let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
    certs::write_private(path, &format!("{hex}\n"))
}

fn write_node_config(dir: &Path, spec: &NodeSpec<'_>) -> anyhow::Result<PlaygroundNode> {
    let node_dir = dir.join(format!("node-{}", spec.id));
    std::fs::create_dir_all(&node_dir)?;
    // A playground made before encryption at rest has none yet; its nodes get one now
    // (no namespace of it can be encrypted, so no key is lost).
    if !dir.join(KEK_FILE).exists() {
        write_kek(&dir.join(KEK_FILE))?;
    }
    let mut peers = String::new();
    for (id, site, peer, client) in spec.peers.iter().filter(|p| p.0 != spec.id) {
        peers.push_str(&format!(
            "\n[[bootstrap.peers]]\nid = {id}\nsite = \"{site}\"\npeer_addr = \"{peer}\"\nclient_addr = \"{client}\"\n"
        ));
    }
    // Loopback round trips are tiny: short timeouts make failover fast in the playground.
    let text = format!(
        r#"# Written by `ark playground`.
node_id = {id}
site = "{site}"
role = "{role}"
data_dir = "data"

[listen]
peer = "{peer}"
client = "{client}"
metrics = "{metrics}"

[tls]
ca = "../certs/ca.pem"
cert = "../certs/node-{id}.pem"
key = "../certs/node-{id}.key"

[raft]
# Loopback timing: a leader lost is replaced after about 0.6-0.75 s (the elector's
# lease plus a random share of half the minimum; docs/drills.md, measured recovery times).
heartbeat_interval_ms = 50
election_timeout_min_ms = 300
election_timeout_max_ms = 600
snapshot_logs_since_last = {snap}
logs_kept_after_snapshot = {keep}
rpc_timeout_ms = 1000

[objects]
# Short so that a killed playground node's chunks are re-replicated within seconds.
holder_lost_after_ms = 3000
repair_interval_ms = 500

[cache]
memory_mib = 32
disk_mib = 64

# Sample every second so that `ark telemetry` and demos show data at once.
[telemetry]
interval_ms = 1000
window_points = {window}

# Drills cut, slow or degrade this node's peer traffic by writing this file (see
# arkd's net::fault); it does not exist unless a drill creates it.
[faults]
control_file = "faults.toml"

# The playground's key-encryption key, for namespaces created with --encrypt.
[encryption]
kek_file = "../{kek}"

[bootstrap]
initialize = {init}
{peers}"#,
        id = spec.id,
        site = spec.site,
        peer = spec.peer,
        client = spec.client,
        metrics = spec.metrics,
        snap = spec.snapshot_logs_since_last,
        keep = (spec.snapshot_logs_since_last / 4).max(10),
        init = spec.initialize,
        window = spec.telemetry_window_points,
        kek = KEK_FILE,
        role = if spec.witness { "witness" } else { "data" },
    );
    let text = spec
        .settings
        .iter()
        .fold(text, |t, (section, line)| add_setting(&t, section, line));
    let config = node_dir.join("arkd.toml");
    std::fs::write(&config, text)?;
    Ok(PlaygroundNode {
        id: spec.id,
        site: spec.site.clone(),
        pid: 0,
        client_addr: spec.client.to_string(),
        peer_addr: spec.peer.to_string(),
        metrics_addr: spec.metrics.to_string(),
        data_dir: node_dir.join("data"),
        config,
        netns: spec.netns.clone(),
        witness: spec.witness,
    })
}

/// Starts the `arkd` of one node in the background, logging to `node-<id>/arkd.log`; in its
/// network namespace when it has one. `ip netns exec` execs arkd in place (execvp), so the
/// child's pid is arkd's and signals reach it directly.
pub fn spawn_node(arkd: &Path, node: &PlaygroundNode) -> anyhow::Result<Child> {
    use std::os::unix::process::CommandExt;
    let dir = node.config.parent().unwrap_or(Path::new("."));
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("arkd.log"))
        .context("opening node log")?;
    let mut cmd = match &node.netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns.as_str()]).arg(arkd);
            c
        }
        None => Command::new(arkd),
    };
    let child = cmd
        .arg("--config")
        .arg(&node.config)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        // Own process group: a Ctrl-C in the terminal that ran `ark playground up` does not
        // reach the nodes.
        .process_group(0)
        .spawn()
        .with_context(|| match &node.netns {
            Some(ns) => format!(
                "cannot start {} in network namespace {ns} (ip netns exec)",
                arkd.display()
            ),
            None => format!("cannot start {}", arkd.display()),
        })?;
    Ok(child)
}

/// Creates and starts a playground in `dir`; returns it with the child handles (dropping
/// them leaves the processes running).
pub async fn up(dir: &Path, layout: &Layout) -> anyhow::Result<(Playground, Vec<Child>)> {
    up_placed(dir, layout, None).await
}

/// [`up`], with every node in the namespace `placer` gives it when there is one.
pub async fn up_placed(
    dir: &Path,
    layout: &Layout,
    placer: Option<&dyn NodePlacer>,
) -> anyhow::Result<(Playground, Vec<Child>)> {
    if layout.sites == 0 || layout.nodes_per_site == 0 {
        bail!("--sites and --nodes-per-site must be at least 1");
    }
    if dir.join("playground.json").exists() {
        bail!(
            "{} already holds a playground; run `ark playground down --dir {}` first or pick another dir",
            dir.display(),
            dir.display()
        );
    }
    let arkd = find_arkd()?;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let certs_dir = dir.join("certs");
    certs::create_ca(&certs_dir)?;
    // The playground's `client.pem` is the bootstrap admin, `root` (see docs/security.md).
    let (cert, key) = certs::create_client(&certs_dir, &certs_dir, "root")?;
    for (from, to) in [(cert, "client.pem"), (key, "client.key")] {
        let to = certs_dir.join(to);
        std::fs::rename(&from, &to).with_context(|| format!("renaming {} to {}", from.display(), to.display()))?;
    }

    let data_nodes = layout.sites * layout.nodes_per_site;
    let count = data_nodes + u32::from(layout.witness);
    let mut ports = PortPicker::default();
    let mut addrs = Vec::new();
    // Per node: its namespace and metrics address (listen addresses are in `addrs`).
    let mut places = Vec::new();
    for i in 0..count {
        let id = u64::from(i) + 1;
        let site = if i < data_nodes {
            site_name(i / layout.nodes_per_site)
        } else {
            WITNESS_SITE.to_string()
        };
        certs::create_node(&certs_dir, &certs_dir, id, &[])?;
        match placer {
            Some(p) => {
                let net = p.place(id, &site)?;
                let (peer, client, metrics) = netns_addrs(net.ip);
                addrs.push((id, site, peer, client));
                places.push((Some(net.netns), metrics));
            }
            None => {
                addrs.push((id, site, ports.udp()?, ports.tcp()?));
                places.push((None, ports.tcp()?));
            }
        }
    }
    let mut nodes = Vec::new();
    for ((id, site, peer, client), (netns, metrics)) in addrs.iter().zip(places) {
        nodes.push(write_node_config(
            dir,
            &NodeSpec {
                id: *id,
                site: site.clone(),
                peer: *peer,
                client: *client,
                metrics,
                initialize: *id == 1,
                peers: &addrs,
                snapshot_logs_since_last: layout.snapshot_logs_since_last,
                netns,
                telemetry_window_points: layout.telemetry_window_points,
                witness: layout.witness && u64::from(data_nodes) < *id,
                settings: layout
                    .settings
                    .iter()
                    .filter(|(n, _, _)| *n == 0 || n == id)
                    .map(|(_, s, l)| (s.clone(), l.clone()))
                    .collect(),
            },
        )?);
    }
    // Release the ports only now, right before the nodes bind them.
    drop(ports);
    let mut pg = Playground::default();
    let mut children = Vec::new();
    let started: anyhow::Result<()> = async {
        for node in nodes {
            let child = spawn_node(&arkd, &node)?;
            pg.nodes.push(PlaygroundNode {
                pid: child.id(),
                ..node
            });
            children.push(child);
        }
        write_client_config(dir, &pg)?;
        pg.save(dir)?;
        wait_ready(dir, &pg, layout.ready_timeout).await
    }
    .await;
    if let Err(e) = started {
        // Nothing half-started stays behind: stop every node this call spawned.
        for c in &mut children {
            let _ = c.kill();
            let _ = c.wait();
        }
        return Err(e);
    }
    Ok((pg, children))
}

fn write_client_config(dir: &Path, pg: &Playground) -> anyhow::Result<()> {
    // A witness serves no data: clients are given the data nodes only.
    let endpoints: Vec<String> = pg
        .nodes
        .iter()
        .filter(|n| !n.witness)
        .map(|n| format!("\"{}\"", n.client_addr))
        .collect();
    let text = format!(
        "# Written by `ark playground`. Loopback answers in milliseconds: give up on a silent node\n# (e.g. a paused leader) after 1 s and try the next, reusing the request id.\nendpoints = [{}]\nca = \"certs/ca.pem\"\ncert = \"certs/client.pem\"\nkey = \"certs/client.key\"\nrpc_timeout_ms = 1000\n",
        endpoints.join(", ")
    );
    std::fs::write(dir.join("client.toml"), text)?;
    Ok(())
}

/// Waits until a leader is elected and it hears from every voter, and the cluster knows
/// every witness as one.
pub async fn wait_ready(dir: &Path, pg: &Playground, timeout: Duration) -> anyhow::Result<()> {
    let client = ArkClient::new(&Playground::client_config(dir)?)?.with_op_timeout(Duration::from_secs(2));
    let deadline = Instant::now() + timeout;
    let mut last = String::from("no answer yet");
    while Instant::now() < deadline {
        // A node that died on start-up would never join: report its log at once.
        for n in &pg.nodes {
            if !process_alive(n.pid) {
                let log = std::fs::read_to_string(n.config.with_file_name("arkd.log")).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(10).collect();
                bail!(
                    "node {} (pid {}) exited during start-up; last log lines:\n{}",
                    n.id,
                    n.pid,
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
        }
        match client.status().await {
            Ok(s)
                if s.leader_id.is_some()
                    && s.nodes.len() >= pg.nodes.len()
                    && s.nodes.iter().all(|n| n.healthy)
                    && pg
                        .nodes
                        .iter()
                        .filter(|n| n.witness)
                        .all(|w| s.nodes.iter().any(|n| n.id == w.id && n.witness)) =>
            {
                return Ok(())
            }
            Ok(s) => last = format!("leader {:?}, {} nodes known", s.leader_id, s.nodes.len()),
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("no healthy leader within {timeout:?}: {last}")
}

/// Whether a process exists (and is not a zombie).
pub fn process_alive(pid: u32) -> bool {
    if pid == 0 {
        return false;
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // Field 3 is the state; Z is a zombie, X dead.
        Ok(s) => !s
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z') || rest.starts_with('X')),
        Err(_) => false,
    }
}

fn is_arkd(pid: u32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| String::from_utf8_lossy(&c).contains("arkd"))
        .unwrap_or(false)
}

/// Sends `sig` to a node's process if it is still an `arkd`.
pub fn signal_node(node: &PlaygroundNode, sig: Signal) -> anyhow::Result<bool> {
    if !process_alive(node.pid) || !is_arkd(node.pid) {
        return Ok(false);
    }
    let pid = i32::try_from(node.pid).context("pid out of range")?;
    kill(Pid::from_raw(pid), sig).with_context(|| format!("cannot signal node {} (pid {})", node.id, node.pid))?;
    Ok(true)
}

/// Restarts a stopped node from its config and records its new pid.
pub fn start_node(dir: &Path, id: u64) -> anyhow::Result<(PlaygroundNode, Child)> {
    let mut pg = Playground::load(dir)?;
    let arkd = find_arkd()?;
    let node = pg
        .nodes
        .iter_mut()
        .find(|n| n.id == id)
        .with_context(|| format!("no node {id} in this playground"))?;
    if process_alive(node.pid) && is_arkd(node.pid) {
        bail!("node {id} is already running (pid {})", node.pid);
    }
    let child = spawn_node(&arkd, node)?;
    node.pid = child.id();
    let out = node.clone();
    pg.save(dir)?;
    Ok((out, child))
}

/// Creates and starts one more node (not yet a member: add it with `ark members add`).
pub fn add_node(dir: &Path, site: &str, snapshot_logs_since_last: u64) -> anyhow::Result<(PlaygroundNode, Child)> {
    add_node_placed(dir, site, snapshot_logs_since_last, None)
}

/// [`add_node`], in the namespace `placer` gives it. A playground whose nodes run in
/// namespaces needs one: a loopback node could not reach them.
pub fn add_node_placed(
    dir: &Path,
    site: &str,
    snapshot_logs_since_last: u64,
    placer: Option<&dyn NodePlacer>,
) -> anyhow::Result<(PlaygroundNode, Child)> {
    let mut pg = Playground::load(dir)?;
    if placer.is_none() && pg.nodes.iter().any(|n| n.netns.is_some()) {
        bail!(
            "the playground in {} runs its nodes in network namespaces (the chaos harness made it); a loopback node could not reach them",
            dir.display()
        );
    }
    let arkd = find_arkd()?;
    let id = pg.nodes.iter().map(|n| n.id).max().unwrap_or(0) + 1;
    let certs_dir = dir.join("certs");
    certs::create_node(&certs_dir, &certs_dir, id, &[])?;
    let mut ports = PortPicker::default();
    let (peer, client, metrics, netns) = match placer {
        Some(p) => {
            let net = p.place(id, site)?;
            let (peer, client, metrics) = netns_addrs(net.ip);
            (peer, client, metrics, Some(net.netns))
        }
        None => (ports.udp()?, ports.tcp()?, ports.tcp()?, None),
    };
    let node = write_node_config(
        dir,
        &NodeSpec {
            id,
            site: site.to_string(),
            peer,
            client,
            metrics,
            initialize: false,
            peers: &[],
            snapshot_logs_since_last,
            netns,
            telemetry_window_points: TELEMETRY_WINDOW_POINTS,
            settings: Vec::new(),
            witness: false,
        },
    )?;
    // The node binds these ports itself: release them first, or a node that gets to its
    // bind before this function returns finds them taken and exits (seen under load).
    drop(ports);
    let child = spawn_node(&arkd, &node)?;
    let node = PlaygroundNode {
        pid: child.id(),
        ..node
    };
    pg.nodes.push(node.clone());
    pg.save(dir)?;
    Ok((node, child))
}

/// What `down` did to one node.
#[derive(Debug, Clone, Serialize)]
pub struct Stopped {
    /// Node id.
    pub id: u64,
    /// Its pid.
    pub pid: u32,
    /// "stopped", "killed" (did not stop within the grace period) or "not running".
    pub outcome: &'static str,
}

/// Longest wait for a SIGKILLed node to be gone (a zombie counts as gone: its files are closed).
const KILLED_EXIT_WAIT_MAX: Duration = Duration::from_secs(5);

/// Stops every node of the playground in `dir` (SIGTERM, then SIGKILL after `grace`).
pub fn down(dir: &Path, grace: Duration) -> anyhow::Result<Vec<Stopped>> {
    let pg = Playground::load(dir)?;
    let mut report = Vec::new();
    let mut waiting = Vec::new();
    for n in &pg.nodes {
        if signal_node(n, Signal::SIGTERM)? {
            waiting.push(n.clone());
        } else {
            report.push(Stopped {
                id: n.id,
                pid: n.pid,
                outcome: "not running",
            });
        }
    }
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline && waiting.iter().any(|n| process_alive(n.pid)) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut killed = Vec::new();
    for n in waiting {
        let outcome = if process_alive(n.pid) {
            signal_node(&n, Signal::SIGKILL)?;
            killed.push(n.pid);
            "killed"
        } else {
            "stopped"
        };
        report.push(Stopped {
            id: n.id,
            pid: n.pid,
            outcome,
        });
    }
    // A killed process still closes its files on the way out; whoever unmounts or removes
    // its data dir next must find it gone. SIGKILL cannot be refused: the wait is short.
    let deadline = Instant::now() + KILLED_EXIT_WAIT_MAX;
    while Instant::now() < deadline && killed.iter().any(|p| process_alive(*p)) {
        std::thread::sleep(Duration::from_millis(20));
    }
    report.sort_by_key(|s| s.id);
    // Keep the data and logs for inspection, but mark the playground as down so `up` can
    // reuse the dir after the operator removes it.
    std::fs::rename(dir.join("playground.json"), dir.join("playground.down.json")).ok();
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_land_in_their_section_or_a_new_one() {
        let t = "a = 1\n[objects]\nx = 1\n\n[telemetry]\ny = 2\n";
        let t = add_setting(t, "telemetry", "z = 3");
        assert_eq!(t, "a = 1\n[objects]\nx = 1\n\n[telemetry]\nz = 3\ny = 2\n");
        let t = add_setting(&t, "risk", "ordering = \"fifo\"");
        assert!(t.ends_with("\n[risk]\nordering = \"fifo\"\n"), "{t}");
        // A header must start a line: `[risk]` inside a value does not count.
        let t = add_setting("k = \"[risk]\n\"\n", "risk", "a = 1");
        assert!(t.ends_with("\n[risk]\na = 1\n"), "{t}");
    }

    #[test]
    fn a_playground_json_from_before_namespaces_still_loads() {
        let old = r#"{"nodes":[{"id":1,"site":"site-a","pid":42,"client_addr":"127.0.0.1:1",
            "peer_addr":"127.0.0.1:2","metrics_addr":"127.0.0.1:3","data_dir":"/d","config":"/c"}]}"#;
        let pg: Playground = serde_json::from_str(old).unwrap();
        assert_eq!(pg.nodes[0].netns, None);
        // And a loopback node is written without the field, as before.
        assert!(!serde_json::to_string(&pg).unwrap().contains("netns"));
    }

    #[test]
    fn a_placed_node_listens_on_its_namespace_address() {
        let dir = tempfile::tempdir().unwrap();
        let ip: IpAddr = "10.150.2.11".parse().unwrap();
        let (peer, client, metrics) = netns_addrs(ip);
        let node = write_node_config(
            dir.path(),
            &NodeSpec {
                id: 4,
                site: "site-b".into(),
                peer,
                client,
                metrics,
                initialize: false,
                peers: &[],
                snapshot_logs_since_last: 100,
                netns: Some("ark1230n4".into()),
                telemetry_window_points: TELEMETRY_WINDOW_POINTS,
                settings: vec![
                    ("objects".into(), "repair_mib_per_s = 4".into()),
                    ("risk".into(), "ordering = \"fifo\"".into()),
                ],
                witness: false,
            },
        )
        .unwrap();
        assert_eq!(node.netns.as_deref(), Some("ark1230n4"));
        assert_eq!(node.client_addr, "10.150.2.11:7001");
        let text = std::fs::read_to_string(&node.config).unwrap();
        for line in [
            "peer = \"10.150.2.11:7000\"",
            "client = \"10.150.2.11:7001\"",
            "metrics = \"10.150.2.11:7002\"",
        ] {
            assert!(text.contains(line), "{line} not in\n{text}");
        }
        assert!(!text.contains("127.0.0.1"));
        let json = serde_json::to_string(&node).unwrap();
        assert!(json.contains("\"netns\":\"ark1230n4\""), "{json}");
    }
}
