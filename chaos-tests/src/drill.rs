//! Running a drill against real `arkd` processes: a playground (every node in its own
//! network namespace, or all on loopback), the recorded workload of [`crate::workload`], a
//! seeded fault schedule, and the report.
//!
//! Owns the playground's faults (processes, network, chunk files, full disks, power cuts and
//! failed fsyncs on [`crate::lazyfs_fuse`] mounts). It judges nothing itself:
//! [`crate::workload`] records and hands the history to the checkers. Process faults are
//! signals; network faults go through [`crate::netfault::NetFaults`]: in netns mode
//! ([`crate::netns`]) partitions and one-way drops are nftables drops in each node's
//! namespace, in loopback mode they and (in both modes) WAN links go through arkd's
//! user-space fault layer under quinn. The report says which mode ran and, when netns mode
//! was wanted but not possible, why.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use ark_client::ArkClient;
use ark_playground::playground::{self, Layout, Playground, PlaygroundNode};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::netfault::{NetFaults, NetState, NodeId, Shaping};
use crate::netns::{self, Netns};
use crate::plan::{self, Member, PartitionKind};
use crate::report::{Report, RunInfo};
use crate::workload::{ns_since, Timeline, Workload, WorkloadShape, OP_TIMEOUT};

/// Scenarios this build can run.
pub const SCENARIOS: &[(&str, &str)] = &[
    (
        "leader-kill",
        "kill -9 of the current leader every 3-5 s, restarted 1.5 s later, under concurrent KV reads and writes",
    ),
    (
        "random-kill",
        "kill -9 of a random node (seeded) every 3-5 s, restarted 1.5 s later",
    ),
    (
        "pause",
        "SIGSTOP of the current leader for 3 s, then SIGCONT (a process pause: GC, VM stall), every 3-5 s",
    ),
    (
        "rolling-restart",
        "SIGTERM and restart of every node in turn, leader last, as in an upgrade",
    ),
    (
        "membership",
        "membership changes under load: a new node is added as a learner and promoted, then a voter it replaced is removed and stopped, in turn",
    ),
    (
        "site-partition",
        "3 sites x 2 nodes: one whole site (the leader's in 2 rounds of 3) cut off from the others for 2.5-4 s, healed, every 2-3 s",
    ),
    (
        "minority-partition",
        "5 sites x 1 node: 2 nodes cut off from the other 3 (both ways; every other round with the leader) for 2.5-4 s, healed, repeated",
    ),
    (
        "asymmetric-partition",
        "one-way drops in turn: leader cannot hear a follower, a follower cannot hear the leader, a bridge (A<->C cut, B reaches both)",
    ),
    (
        "wan",
        "every peer link 30+-10 ms one way with 1-2% loss for the whole run (heartbeat 250 ms, election 1-2 s); kill -9 of the leader in the middle, restarted 6 s later",
    ),
    (
        "site-kill",
        "3 sites x 2 nodes: kill -9 of every node of the leader's site at once, restarted 2 s later, every 3-5 s",
    ),
    (
        "site-kill-witness",
        "2 sites x 1 node and a witness voter in a third site: kill -9 of the leader's data site (never the witness alone), restarted 2 s later, every 3-5 s; the witness must end with no chunk file",
    ),
    (
        "disk-full",
        "one node's data dir on a tmpfs (root needed) shrunk to what it holds (full: ENOSPC) for 4 s, then grown back, every 3-5 s; the node is started again if it stopped",
    ),
    (
        "power-loss-node",
        "every data dir on the power-loss filesystem (FUSE, root needed); power cut of one node (leader and a follower in turn) every 3-5 s: kill -9 and every write it had not fsynced dropped, restarted 1.5 s later",
    ),
    (
        "power-loss-site",
        "3 sites x 2 nodes on the power-loss filesystem; power cut of every node of the leader's site at once, restarted 2 s later, every 3-5 s",
    ),
    (
        "power-loss-all",
        "every node on the power-loss filesystem; power cut of all nodes at once under write load, restarted 2 s later, every 3-5 s",
    ),
    (
        "fsync-eio",
        "every node on the power-loss filesystem; every fsync of the leader and one follower (a majority) fails with EIO for 3 s, the unsynced pages lost as on Linux; no write may be acknowledged meanwhile; then their power is cut and they are restarted",
    ),
    (
        "majority-loss",
        "3 sites x 1 node: kill -9 of two sites (the leader's and one more) under load; the third stopped; every data dir inspected with `arkd recover --inspect`, the most advanced node recovered with `arkd recover --force-new-cluster --compare-with` the others (a less advanced one must be refused) and started; the two others' data dirs moved away (wiped) and new nodes added in their sites; every object back at its policy and a clean scrub at the end",
    ),
    (
        "chunk-corruption",
        "one byte flipped in 3 chunk files of a random node every 3-5 s (a failing disk), a scrub 1-2 s later, under object puts and gets through every node",
    ),
];

/// What one fault does to its victim.
#[derive(Debug, Clone, Copy)]
enum Fault {
    /// kill -9, then start again after a while.
    Kill,
    /// SIGSTOP, then SIGCONT after a while.
    Pause,
    /// SIGTERM (ordered shutdown), then start again.
    Restart,
    /// Add a node (learner, then voter), or remove one and stop it.
    Membership,
    /// kill -9 of every node of the leader's site at once, then start them again.
    SiteKill,
    /// A network partition through the fault layer, then heal.
    Partition,
    /// Bytes flipped in a random node's chunk files, then a scrub.
    Corrupt,
    /// One node's disk full, then freed.
    DiskFull,
    /// kill -9 of the victims and everything they had not synced dropped, then start again.
    PowerCut,
    /// Every sync of a majority fails with EIO for a while, then their power is cut.
    FsyncEio,
    /// Two sites of three killed for good; the most advanced node recovered alone, then new
    /// nodes added.
    MajorityLoss,
}

/// The playground a scenario runs on.
fn layout_for(scenario: &str) -> Layout {
    match scenario {
        "site-partition" | "site-kill" | "power-loss-site" => Layout {
            sites: 3,
            nodes_per_site: 2,
            ..Layout::default()
        },
        "minority-partition" => Layout {
            sites: 5,
            nodes_per_site: 1,
            ..Layout::default()
        },
        // The minimal two-site deployment: losing either data site leaves the other and the
        // witness, 2 of 3 voters.
        "site-kill-witness" => Layout {
            sites: 2,
            nodes_per_site: 1,
            witness: true,
            ..Layout::default()
        },
        _ => Layout::default(),
    }
}

/// The partition rounds of a network scenario, `None` for the others.
fn partition_kind(scenario: &str) -> Option<PartitionKind> {
    match scenario {
        "site-partition" => Some(PartitionKind::Site),
        "minority-partition" => Some(PartitionKind::Minority),
        "asymmetric-partition" => Some(PartitionKind::Asymmetric),
        _ => None,
    }
}

/// Links of the `wan` scenario: one-way delay and jitter, and a loss rate drawn from the
/// seed in `[WAN_LOSS_MIN, WAN_LOSS_MAX]`.
const WAN_DELAY_MS: u64 = 30;
const WAN_JITTER_MS: u64 = 10;
const WAN_LOSS_MIN: f64 = 0.01;
const WAN_LOSS_MAX: f64 = 0.02;
/// Raft timing of the `wan` drill. The playground's loopback timing does not fit a WAN:
/// openraft 0.9 gives each AppendEntries the heartbeat interval (100 ms there) as its deadline,
/// below a 60-80 ms round trip plus one loss recovery, and replication collapses
/// (docs/drills.md, findings). 250 ms is arkd's default heartbeat; the election timeout is
/// two thirds of arkd's default (1.5-3 s), so that a failover (leader lease = the maximum,
/// plus one timeout: 3-4 s) fits a 20 s run with room under the drills' 10 s RTO bound.
const WAN_RAFT_TIMING: &[(&str, u64)] = &[
    ("heartbeat_interval_ms", 250),
    ("election_timeout_min_ms", 1000),
    ("election_timeout_max_ms", 2000),
    ("rpc_timeout_ms", 2000),
];
/// How long a partition round holds, and the healthy gap after it (ms, seeded uniform).
const PARTITION_HOLD_MS: std::ops::Range<u64> = 2500..4000;
const PARTITION_GAP_MS: std::ops::Range<u64> = 2000..3000;

/// Concurrent workload clients.
const WORKERS: usize = 6;
/// Workload clients of the `wan` drill: at 60-80 ms round trips a closed-loop client completes
/// only about six operations a second, so more of them keep the history as dense as on
/// loopback (the leader folds concurrent writes into one entry).
const WAN_WORKERS: usize = 16;
/// Parameters of one run.
#[derive(Debug, Clone)]
pub struct DrillSpec {
    /// Scenario name (see [`SCENARIOS`]).
    pub scenario: String,
    /// How long the workload runs.
    pub duration: Duration,
    /// Seeds the fault schedule and the workload's choices.
    pub seed: u64,
    /// Where the nodes run.
    pub mode: ModeChoice,
    /// The links between nodes: as they are, or the `wan` scenario's WAN links and timing
    /// under any scenario (`--links wan`), to measure failover on slow, lossy links.
    pub links: Links,
}

/// The links between a drill's nodes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Links {
    /// Loopback or namespace links as they are, the playground's timing.
    #[default]
    Local,
    /// Every peer link 30 ± 10 ms one way with 1-2 % loss, and the WAN raft timing.
    Wan,
}

impl DrillSpec {
    /// Whether this run has WAN links.
    fn wan(&self) -> bool {
        self.scenario == "wan" || self.links == Links::Wan
    }
}

/// Which mode a run asks for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ModeChoice {
    /// Network namespaces when this host can make them, else loopback (the report says why).
    #[default]
    Auto,
    /// Network namespaces, or fail.
    Netns,
    /// Loopback processes.
    Loopback,
}

/// The namespaces of a run in netns mode, or why it runs on loopback.
fn choose_mode(choice: ModeChoice) -> anyhow::Result<Result<Arc<Netns>, String>> {
    let make = || -> anyhow::Result<Arc<Netns>> {
        netns::probe()?;
        Ok(Arc::new(Netns::create()?))
    };
    Ok(match choice {
        ModeChoice::Loopback => Err("asked for with --mode loopback".to_owned()),
        ModeChoice::Netns => Ok(make().context("--mode netns: cannot make network namespaces")?),
        ModeChoice::Auto => make().map_err(|e| format!("network namespaces unavailable: {e:#}")),
    })
}

/// Runs one drill in `dir` (a fresh folder for the playground) and returns its report.
/// The recorded history (with the final reads) is written to `history_out` for post-mortems.
/// Every node's network is healed before the playground goes down, whatever the outcome.
pub async fn run(spec: &DrillSpec, dir: &Path, history_out: &Path) -> anyhow::Result<Report> {
    if !SCENARIOS.iter().any(|(n, _)| *n == spec.scenario) {
        bail!("unknown scenario {:?}; `ark-chaos list` names them", spec.scenario);
    }
    // Dropped last (after the processes are gone): deletes every namespace of the run.
    let netns = choose_mode(spec.mode)?;
    let registered = netns.as_ref().ok().map(|n| netns::register(dir, n.clone()));
    let placer = netns.as_ref().ok().map(|n| &**n as &dyn playground::NodePlacer);
    let (_pg, mut children) = match playground::up_placed(dir, &layout_for(&spec.scenario), placer).await {
        Ok(up) => up,
        Err(e) => {
            // `up` leaves the nodes it started running when they never become ready.
            if dir.join("playground.json").exists() {
                let _ = playground::down(dir, Duration::from_secs(5));
            }
            return Err(e.context("starting the playground"));
        }
    };
    let net = netns.as_ref().map(|n| format!("{}, names {}*", n.subnet(), n.prefix()));
    let mut disks = Disks::new();
    let result = match NetFaults::new(dir, net.map_err(Clone::clone)) {
        Ok(mut faults) => {
            let report = tokio::select! {
                r = drive(spec, dir, history_out, &mut faults, &mut disks) => r,
                _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted (Ctrl-C); the drill cleaned up after itself")),
            };
            let healed = faults.heal().await.context("healing the network after the drill");
            report.and_then(|r| healed.map(|()| r))
        }
        Err(e) => Err(e.context("finding the nodes' fault control files")),
    };
    let _ = playground::down(dir, Duration::from_secs(5));
    for c in &mut children {
        let _ = c.kill();
        let _ = c.wait();
    }
    // `disk-full` leaves a tmpfs under the dir, the power-loss scenarios a FUSE mount per
    // node; the nodes are down now.
    let unmounted = crate::diskfull::unmount_all(dir).context("unmounting the drill's tmpfs");
    let result = result.and_then(|r| unmounted.map(|()| r));
    let mut lazy_unmounted = Ok(());
    for (id, m) in disks.drain(..) {
        let unmounted = match std::sync::Arc::try_unwrap(m) {
            Ok(m) => m.unmount(),
            // Still shared (a task that waited for writes in flight): dropped with it.
            Err(_) => Ok(()),
        };
        if let Err(e) = unmounted {
            lazy_unmounted = Err(e.context(format!("unmounting node {id}'s power-loss filesystem")));
        }
    }
    let swept = crate::lazyfs_fuse::unmount_all(dir).context("detaching leftover power-loss mounts");
    let result = result.and_then(|r| lazy_unmounted.and(swept).map(|()| r));
    drop(registered);
    let torn_down = match &netns {
        Ok(n) => n.teardown(),
        Err(_) => Ok(()),
    };
    result.and_then(|r| torn_down.map(|()| r))
}

/// Rewrites the `[raft]` timing of every node's config and restarts every node with it
/// (`Layout` has no knob for it): all stop, then all start, then a leader must be elected.
async fn retime(dir: &Path, timing: &[(&str, u64)]) -> anyhow::Result<()> {
    use nix::sys::signal::Signal;
    let pg = Playground::load(dir)?;
    for n in &pg.nodes {
        let text = std::fs::read_to_string(&n.config).with_context(|| format!("reading {}", n.config.display()))?;
        let mut out = String::with_capacity(text.len());
        let mut replaced = 0usize;
        for line in text.lines() {
            let key = line.split('=').next().map(str::trim).unwrap_or_default();
            match timing.iter().find(|(k, _)| *k == key) {
                Some((k, v)) => {
                    out.push_str(&format!("{k} = {v}\n"));
                    replaced += 1;
                }
                None => {
                    out.push_str(line);
                    out.push('\n');
                }
            }
        }
        if replaced != timing.len() {
            bail!(
                "{} sets {replaced} of the {} raft timing keys the drill rewrites; has the playground's config changed?",
                n.config.display(),
                timing.len()
            );
        }
        std::fs::write(&n.config, out).with_context(|| format!("writing {}", n.config.display()))?;
    }
    for n in &pg.nodes {
        playground::signal_node(n, Signal::SIGTERM)?;
    }
    for n in &pg.nodes {
        wait_exit(n, Duration::from_secs(10)).await?;
    }
    for n in &pg.nodes {
        let (_, child) = playground::start_node(dir, n.id)?;
        drop(child);
    }
    playground::wait_ready(dir, &Playground::load(dir)?, Duration::from_secs(30)).await
}

/// The leader as the nodes themselves say: of the nodes that answer that they lead, the one
/// in the highest term (an old leader cut off from the others may still believe it leads, in
/// an older term). `None` while no node leads.
async fn find_leader(client: &ArkClient, pg: &Playground) -> Option<NodeId> {
    let mut asks = tokio::task::JoinSet::new();
    for n in &pg.nodes {
        let (client, addr) = (client.clone(), n.client_addr.clone());
        asks.spawn(async move { client.status_of(&addr).await.ok() });
    }
    let mut best: Option<(u64, NodeId)> = None;
    while let Some(answer) = asks.join_next().await {
        if let Ok(Some(st)) = answer {
            if st.state == "leader" && best.is_none_or(|(term, _)| st.term > term) {
                best = Some((st.term, st.node_id));
            }
        }
    }
    best.map(|(_, id)| id)
}

/// Partition rounds: find the leader, plan the round, cut, hold, heal, wait; until the run
/// ends. Every round is healed before the next one and before this returns.
async fn partition_schedule(
    kind: PartitionKind,
    spec: &DrillSpec,
    dir: &Path,
    client: &ArkClient,
    t0: Instant,
    faults: &mut NetFaults,
) -> anyhow::Result<Timeline> {
    let mut rng = StdRng::seed_from_u64(spec.seed);
    // Shifts the cycle of round shapes (every kind's cycle divides 6).
    let offset = rng.gen_range(0..6usize);
    let hold_max = Duration::from_millis(PARTITION_HOLD_MS.end);
    let mut tl = Timeline::default();
    let mut round = 0usize;
    tokio::time::sleep(Duration::from_secs(2)).await;
    while t0.elapsed() + hold_max + Duration::from_secs(2) < spec.duration {
        let pg = Playground::load(dir)?;
        let Some(leader) = find_leader(client, &pg).await else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        let members: Vec<Member> = pg
            .nodes
            .iter()
            .map(|n| Member {
                id: n.id,
                site: n.site.clone(),
            })
            .collect();
        let r = plan::plan_round(kind, &members, leader, round, offset, &mut rng);
        let hold = Duration::from_millis(rng.gen_range(PARTITION_HOLD_MS));
        // The fault starts when every node concerned has loaded its rules (within ~100 ms
        // of the write): writes that slip through before that are not a recovery.
        let written = ns_since(t0);
        faults.apply(&r.state).await.context("cutting the network")?;
        let start = ns_since(t0);
        tl.starts.push(start);
        tokio::time::sleep(hold).await;
        faults.heal().await.context("healing the network")?;
        let end = ns_since(t0);
        tl.last_heal = Some(end);
        tl.events.push(format!(
            "{}-{} ms (rules written at {} ms): {} [{}]",
            start / 1_000_000,
            end / 1_000_000,
            written / 1_000_000,
            r.what,
            r.state.describe()
        ));
        round += 1;
        tokio::time::sleep(Duration::from_millis(rng.gen_range(PARTITION_GAP_MS))).await;
    }
    Ok(tl)
}

/// How a process-fault schedule runs.
#[derive(Debug, Clone, Copy)]
struct ProcessPlan {
    fault: Fault,
    /// From the fault to the heal (restart, SIGCONT).
    heal_after: Duration,
    /// From the start of the workload to the first fault.
    start_after: Duration,
    /// Most faults in the run.
    faults_max: usize,
}

impl ProcessPlan {
    fn for_scenario(spec: &DrillSpec) -> Self {
        let (fault, heal_after) = match spec.scenario.as_str() {
            "pause" => (Fault::Pause, Duration::from_secs(3)),
            "rolling-restart" => (Fault::Restart, Duration::from_millis(500)),
            "membership" => (Fault::Membership, Duration::ZERO),
            "chunk-corruption" => (Fault::Corrupt, Duration::ZERO),
            "disk-full" => (Fault::DiskFull, DISK_FULL_HOLD),
            "site-kill" | "site-kill-witness" => (Fault::SiteKill, Duration::from_secs(2)),
            "power-loss-node" => (Fault::PowerCut, Duration::from_millis(1500)),
            "power-loss-site" | "power-loss-all" => (Fault::PowerCut, Duration::from_secs(2)),
            "fsync-eio" => (Fault::FsyncEio, EIO_HOLD),
            "majority-loss" => (Fault::MajorityLoss, Duration::ZERO),
            // Down for longer than a follower waits before it may campaign with the WAN timing
            // (leader lease 2 s + election timeout 1-2 s): a leader back after 1.5 s would
            // resume its term, and the RTO would measure a restart, not a failover.
            "wan" => (Fault::Kill, Duration::from_secs(6)),
            _ => (Fault::Kill, Duration::from_millis(1500)),
        };
        // On WAN links a killed node stays down for longer than a follower waits before it
        // campaigns (lease 2 s + up to 0.5 s), for the same reason as in `wan`.
        let heal_after = match fault {
            Fault::Kill | Fault::SiteKill if spec.wan() => heal_after.max(Duration::from_secs(6)),
            _ => heal_after,
        };
        let (start_after, faults_max) = match spec.scenario.as_str() {
            // One leader kill in the middle of a run on WAN links.
            "wan" => ((spec.duration / 2).max(Duration::from_secs(2)), 1),
            // One loss of a majority, once objects and keys have been written.
            "majority-loss" => (Duration::from_secs(4), 1),
            _ => (Duration::from_secs(2), usize::MAX),
        };
        Self {
            fault,
            heal_after,
            start_after,
            faults_max,
        }
    }
}

/// Process faults (seeded): pick the victims, inject, heal, wait 3-5 s, repeat.
async fn process_schedule(
    plan: ProcessPlan,
    spec: &DrillSpec,
    dir: &Path,
    client: &ArkClient,
    t0: Instant,
    disks: &Disks,
) -> anyhow::Result<Timeline> {
    let ProcessPlan { fault, heal_after, .. } = plan;
    let mut rng = StdRng::seed_from_u64(spec.seed);
    let mut tl = Timeline::default();
    let mut rolled = 0usize;
    let mut power = crate::report::PowerFaults::default();
    tokio::time::sleep(plan.start_after).await;
    while t0.elapsed() + heal_after + Duration::from_secs(2) < spec.duration && tl.starts.len() < plan.faults_max {
        let st = client.status().await.context("status before a fault")?;
        let Some(leader) = st.leader_id.filter(|l| *l == st.node_id) else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        if let Fault::Membership = fault {
            tl.starts.push(ns_since(t0));
            change_membership(client, dir, &st, leader).await?;
            tl.last_heal = Some(ns_since(t0));
            tokio::time::sleep(Duration::from_millis(rng.gen_range(3000..5000))).await;
            continue;
        }
        if let Fault::DiskFull | Fault::Corrupt | Fault::MajorityLoss = fault {
            // One-shot rounds: the fault and its repair in one step, then a pause.
            let start = ns_since(t0);
            tl.starts.push(start);
            let event = match fault {
                Fault::DiskFull => fill_then_free(dir, disk_full_victim(dir, spec)?).await?,
                Fault::MajorityLoss => lose_majority_and_recover(client, dir, leader, &mut rng).await?,
                _ => corrupt_then_scrub(client, dir, &mut rng).await?,
            };
            let end = ns_since(t0);
            tl.last_heal = Some(end);
            tl.events
                .push(format!("{}-{} ms: {event}", start / 1_000_000, end / 1_000_000));
            tokio::time::sleep(Duration::from_millis(rng.gen_range(3000..5000))).await;
            continue;
        }
        let pg = Playground::load(dir)?;
        let victims: Vec<PlaygroundNode> = match spec.scenario.as_str() {
            "random-kill" => vec![pg.nodes[rng.gen_range(0..pg.nodes.len())].clone()],
            "rolling-restart" => {
                // Followers first, the leader last, then round again.
                let mut order: Vec<u64> = pg.nodes.iter().map(|n| n.id).filter(|id| *id != leader).collect();
                order.push(leader);
                let v = order[rolled % order.len()];
                rolled += 1;
                vec![pg.node(v).cloned().context("victim not in playground.json")?]
            }
            "site-kill" | "power-loss-site" | "site-kill-witness" => {
                let leader_node = pg.node(leader).context("leader not in playground.json")?;
                // A witness leading (it is handing over) is no data site: one of the data
                // sites goes instead, so every round loses data nodes, never the witness alone.
                let site = if leader_node.witness {
                    let data: Vec<&PlaygroundNode> = pg.nodes.iter().filter(|n| !n.witness).collect();
                    data[rng.gen_range(0..data.len())].site.clone()
                } else {
                    leader_node.site.clone()
                };
                pg.nodes.iter().filter(|n| n.site == site).cloned().collect()
            }
            "power-loss-node" => {
                // The leader and a follower in turn: a leader's unsynced tail and a
                // follower's acknowledged appends are both at stake.
                rolled += 1;
                if rolled % 2 == 1 {
                    vec![pg.node(leader).cloned().context("victim not in playground.json")?]
                } else {
                    let followers: Vec<&PlaygroundNode> = pg.nodes.iter().filter(|n| n.id != leader).collect();
                    vec![followers[rng.gen_range(0..followers.len())].clone()]
                }
            }
            "power-loss-all" => pg.nodes.clone(),
            "fsync-eio" => {
                // The leader and one follower: a majority, so no write can become durable on
                // a majority while the fault lasts.
                let followers: Vec<&PlaygroundNode> = pg.nodes.iter().filter(|n| n.id != leader).collect();
                let leader_node = pg.node(leader).cloned().context("leader not in playground.json")?;
                vec![leader_node, followers[rng.gen_range(0..followers.len())].clone()]
            }
            _ => vec![pg.node(leader).cloned().context("victim not in playground.json")?],
        };
        if let Fault::PowerCut | Fault::FsyncEio = fault {
            let start = ns_since(t0);
            tl.starts.push(start);
            let ids: Vec<u64> = victims.iter().map(|n| n.id).collect();
            let event = if let Fault::FsyncEio = fault {
                let (event, window) = fsync_eio(client, dir, disks, &victims, t0, &mut power).await?;
                tl.no_durable_majority.push(window);
                event
            } else {
                let cuts = power_cut(disks, &victims, &mut power).await?;
                tokio::time::sleep(heal_after).await;
                format!("power cut: {cuts}")
            };
            for node in &victims {
                let (_, child) = playground::start_node(dir, node.id)?;
                drop(child);
            }
            let end = ns_since(t0);
            tl.last_heal = Some(end);
            tl.events.push(format!(
                "{}-{} ms: nodes {ids:?} (leader {leader}): {event}; restarted",
                start / 1_000_000,
                end / 1_000_000,
            ));
            tokio::time::sleep(Duration::from_millis(rng.gen_range(3000..5000))).await;
            continue;
        }
        let start = ns_since(t0);
        tl.starts.push(start);
        use nix::sys::signal::Signal;
        // A planned restart of the leader moves its leadership first, as an operator does
        // (`ark members transfer-leader`); arkd would also hand over on SIGTERM by itself.
        let mut handed_over = String::new();
        if matches!(fault, Fault::Restart) && victims.iter().any(|n| n.id == leader) {
            handed_over = match client.transfer_leader(None).await {
                Ok(t) => format!("; leadership handed to node {} in {} ms first", t.leader, t.took_ms),
                Err(e) => format!("; hand-over failed ({e}), restarted anyway"),
            };
        }
        // All victims at once (a site loses power), then wait for each.
        for node in &victims {
            match fault {
                Fault::Kill | Fault::SiteKill => {
                    playground::signal_node(node, Signal::SIGKILL)?;
                }
                Fault::Pause => {
                    playground::signal_node(node, Signal::SIGSTOP)?;
                }
                Fault::Restart => {
                    playground::signal_node(node, Signal::SIGTERM)?;
                }
                Fault::Membership
                | Fault::Partition
                | Fault::Corrupt
                | Fault::DiskFull
                | Fault::PowerCut
                | Fault::FsyncEio
                | Fault::MajorityLoss => {
                    unreachable!("not a signal fault")
                }
            }
        }
        if let Fault::Restart = fault {
            for node in &victims {
                wait_exit(node, Duration::from_secs(10)).await?;
            }
        }
        tokio::time::sleep(heal_after).await;
        for node in &victims {
            match fault {
                Fault::Pause => {
                    playground::signal_node(node, Signal::SIGCONT)?;
                }
                Fault::Membership
                | Fault::Partition
                | Fault::Corrupt
                | Fault::DiskFull
                | Fault::PowerCut
                | Fault::FsyncEio
                | Fault::MajorityLoss => {
                    unreachable!("not a signal fault")
                }
                Fault::Kill | Fault::SiteKill | Fault::Restart => {
                    let deadline = Instant::now() + Duration::from_secs(10);
                    while playground::process_alive(node.pid) && Instant::now() < deadline {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    let (_, child) = playground::start_node(dir, node.id)?;
                    drop(child);
                }
            }
        }
        let end = ns_since(t0);
        tl.last_heal = Some(end);
        tl.events.push(format!(
            "{}-{} ms: {fault:?} of nodes {:?} (leader {leader}){handed_over}",
            start / 1_000_000,
            end / 1_000_000,
            victims.iter().map(|n| n.id).collect::<Vec<_>>()
        ));
        tokio::time::sleep(Duration::from_millis(rng.gen_range(3000..5000))).await;
    }
    if !disks.is_empty() {
        tl.power = Some(power);
    }
    Ok(tl)
}

/// Each node's power-loss filesystem, by node id (power-loss and fsync-eio scenarios only).
type Disks = Vec<(u64, std::sync::Arc<crate::lazyfs_fuse::Mounted>)>;

/// Whether a scenario runs every node on the power-loss filesystem.
fn on_lazyfs(scenario: &str) -> bool {
    scenario.starts_with("power-loss-") || scenario == "fsync-eio"
}

/// Longest wait for a victim's writes in flight before its power is cut regardless.
const POWER_CUT_WAIT_MAX: Duration = Duration::from_secs(2);

/// How long every sync of the `fsync-eio` victims fails at least.
const EIO_HOLD: Duration = Duration::from_secs(3);
/// ... and at most: the fault stays armed past [`EIO_HOLD`] until every victim has had a
/// sync fail. A victim that has nothing to sync (a follower whose leader stopped at its own
/// first failed sync, before sending anything) meets the fault only once an election has
/// given it entries, which can take longer than [`EIO_HOLD`] on a loaded machine.
const EIO_HOLD_MAX: Duration = Duration::from_secs(15);

/// Stops every node, moves each data dir onto its own power-loss filesystem
/// ([`crate::lazyfs_fuse`], the current content durable) and starts the nodes again.
async fn disks_on_lazyfs(dir: &Path, disks: &mut Disks) -> anyhow::Result<()> {
    use nix::sys::signal::Signal;
    if !crate::lazyfs_fuse::can_mount() {
        bail!(
            "the power-loss drills mount a FUSE filesystem and need root (run them as root or pick another scenario)"
        );
    }
    let pg = Playground::load(dir)?;
    for n in &pg.nodes {
        playground::signal_node(n, Signal::SIGTERM)?;
    }
    for n in &pg.nodes {
        wait_exit(n, Duration::from_secs(10)).await?;
    }
    for n in &pg.nodes {
        let m = crate::lazyfs_fuse::Mounted::take_over(&n.data_dir)
            .with_context(|| format!("putting node {}'s data dir on the power-loss filesystem", n.id))?;
        disks.push((n.id, std::sync::Arc::new(m)));
    }
    for n in &pg.nodes {
        let (_, child) = playground::start_node(dir, n.id)?;
        drop(child);
    }
    playground::wait_ready(dir, &Playground::load(dir)?, Duration::from_secs(30)).await
}

fn disk_of(disks: &Disks, id: u64) -> anyhow::Result<&std::sync::Arc<crate::lazyfs_fuse::Mounted>> {
    disks
        .iter()
        .find(|(n, _)| *n == id)
        .map(|(_, m)| m)
        .with_context(|| format!("node {id} has no power-loss filesystem"))
}

/// The power of `victims` goes off: their filesystems freeze (every request fails from now
/// on, so nothing a dying node still sends lands after the cut), the processes are killed,
/// and each filesystem drops what was not synced. Answers a line for the fault log.
async fn power_cut(
    disks: &Disks,
    victims: &[PlaygroundNode],
    power: &mut crate::report::PowerFaults,
) -> anyhow::Result<String> {
    use nix::sys::signal::Signal;
    // The victims' power fails at once, at the first moment at which each has writes in
    // flight (within `POWER_CUT_WAIT_MAX`; under load a few ms).
    let held: Vec<_> = victims
        .iter()
        .map(|n| disk_of(disks, n.id).map(std::sync::Arc::clone))
        .collect::<anyhow::Result<_>>()?;
    tokio::task::spawn_blocking(move || {
        let refs: Vec<&crate::lazyfs_fuse::Mounted> = held.iter().map(|d| &**d).collect();
        crate::lazyfs_fuse::Mounted::freeze_all_when_dirty(&refs, POWER_CUT_WAIT_MAX)
    })
    .await
    .context("waiting for writes in flight")?;
    for node in victims {
        playground::signal_node(node, Signal::SIGKILL)?;
    }
    for node in victims {
        wait_exit(node, Duration::from_secs(10)).await?;
    }
    let mut parts = Vec::new();
    for node in victims {
        let cut = disk_of(disks, node.id)?.cut();
        power.cuts += 1;
        power.bytes_dropped += cut.bytes_dropped;
        power.entries_reverted += cut.entries_reverted;
        if cut.bytes_dropped == 0 && cut.entries_reverted == 0 {
            power.cuts_without_drop += 1;
        }
        parts.push(format!(
            "node {} dropped {} unsynced bytes in {} files and {} directory entries",
            node.id, cut.bytes_dropped, cut.files_reverted, cut.entries_reverted
        ));
    }
    Ok(parts.join(", "))
}

/// One round of `fsync-eio`: every sync of `victims` (a majority) fails with EIO for
/// [`EIO_HOLD`], or longer until each victim has had a sync fail ([`EIO_HOLD_MAX`]); which of them stopped by themselves is noted; then the fault is cleared and
/// their power cut (what the failed syncs lost is gone for good). Answers a line for the fault
/// log and the window (ns since `t0`) in which no write may be acknowledged.
async fn fsync_eio(
    client: &ArkClient,
    dir: &Path,
    disks: &Disks,
    victims: &[PlaygroundNode],
    t0: Instant,
    power: &mut crate::report::PowerFaults,
) -> anyhow::Result<(String, (u64, u64))> {
    let before: Vec<u64> = victims
        .iter()
        .map(|n| disk_of(disks, n.id).map(|d| d.stats().syncs_failed))
        .collect::<anyhow::Result<_>>()?;
    for node in victims {
        disk_of(disks, node.id)?.set_fail_sync(true);
    }
    // From here no victim can sync: a write invoked from now on cannot reach a majority's disks.
    let armed = ns_since(t0);
    let started = Instant::now();
    let (min_deadline, max_deadline) = (started + EIO_HOLD, started + EIO_HOLD_MAX);
    let stop_probes = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let probes = tokio::spawn(probe_writes(client.clone(), max_deadline, stop_probes.clone(), armed));
    let mut stopped_at: Vec<Option<u64>> = vec![None; victims.len()];
    loop {
        let now = Instant::now();
        let mut all_hit = true;
        for (i, node) in victims.iter().enumerate() {
            all_hit &= disk_of(disks, node.id)?.stats().syncs_failed > before[i];
        }
        if now >= max_deadline || (now >= min_deadline && all_hit) {
            break;
        }
        let pg = Playground::load(dir)?;
        for (i, node) in victims.iter().enumerate() {
            let pid = pg.node(node.id).map_or(node.pid, |n| n.pid);
            if stopped_at[i].is_none() && !playground::process_alive(pid) {
                stopped_at[i] = Some(ns_since(t0) - armed);
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Every probe ends before the fault is cleared: stop starting new ones, wait for the last.
    stop_probes.store(true, std::sync::atomic::Ordering::SeqCst);
    let (sent, acked) = probes.await.context("probe writes")?;
    let held = started.elapsed();
    let cleared = ns_since(t0);
    for node in victims {
        disk_of(disks, node.id)?.set_fail_sync(false);
    }
    power.eio_probes_sent += sent;
    power.eio_probes_acked += acked;
    let mut parts = Vec::new();
    for (i, node) in victims.iter().enumerate() {
        let failed = disk_of(disks, node.id)?.stats().syncs_failed - before[i];
        power.syncs_failed += failed;
        let fate = match stopped_at[i] {
            Some(ns) => {
                power.eio_nodes_stopped += 1;
                format!(
                    "stopped by itself {} ms after the first failure could occur",
                    ns / 1_000_000
                )
            }
            None => {
                power.eio_nodes_kept_running += 1;
                "kept running".to_owned()
            }
        };
        parts.push(format!("node {} answered {failed} syncs with EIO and {fate}", node.id));
    }
    let cuts = power_cut(disks, victims, power).await?;
    Ok((
        format!(
            "every sync failed with EIO for {} ms: {}; {acked} of {sent} probe writes acknowledged meanwhile; then power cut: {cuts}",
            held.as_millis(),
            parts.join(", ")
        ),
        (armed, cleared),
    ))
}

/// Timeout of each probe write of `fsync-eio`: it ends inside the EIO window.
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);

/// Writes to keys of their own (not the workload's) while no majority can sync, until
/// `deadline`, each started after the fault was armed and ended before it is cleared: none
/// may be acknowledged. The workload's clients may all be waiting on writes sent before the
/// fault (their timeout is longer than the window), so the drill asks itself. Answers
/// (sent, acknowledged).
async fn probe_writes(
    client: ArkClient,
    deadline: Instant,
    stop: Arc<std::sync::atomic::AtomicBool>,
    tag: u64,
) -> (u64, u64) {
    let client = client.with_op_timeout(PROBE_TIMEOUT);
    let (mut sent, mut acked) = (0u64, 0u64);
    while !stop.load(std::sync::atomic::Ordering::SeqCst)
        && Instant::now() + PROBE_TIMEOUT + Duration::from_millis(100) < deadline
    {
        let key = format!("eio-probe-{tag}-{sent}");
        sent += 1;
        let started = Instant::now();
        if client.put(&key, b"must not be acknowledged").await.is_ok() {
            acked += 1;
        }
        tokio::time::sleep(Duration::from_millis(100).saturating_sub(started.elapsed())).await;
    }
    (sent, acked)
}

/// How long the disk of `disk-full` stays full.
const DISK_FULL_HOLD: Duration = Duration::from_secs(4);

/// The node whose disk `disk-full` fills (seeded).
fn disk_full_victim(dir: &Path, spec: &DrillSpec) -> anyhow::Result<PlaygroundNode> {
    let pg = Playground::load(dir)?;
    let i = usize::try_from(spec.seed % pg.nodes.len() as u64).unwrap_or(0);
    Ok(pg.nodes[i].clone())
}

/// Stops `node`, puts its data dir on a tmpfs ([`crate::diskfull`]) and starts it again.
async fn disk_on_tmpfs(dir: &Path, node: &PlaygroundNode) -> anyhow::Result<()> {
    use nix::sys::signal::Signal;
    playground::signal_node(node, Signal::SIGTERM)?;
    wait_exit(node, Duration::from_secs(10)).await?;
    crate::diskfull::move_to_tmpfs(&node.data_dir)?;
    let (_, child) = playground::start_node(dir, node.id)?;
    drop(child);
    playground::wait_ready(dir, &Playground::load(dir)?, Duration::from_secs(30)).await
}

/// Waits until `node`'s process has exited, at most `within`.
async fn wait_exit(node: &PlaygroundNode, within: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    while playground::process_alive(node.pid) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if playground::process_alive(node.pid) {
        bail!("node {} did not stop within {within:?}", node.id);
    }
    Ok(())
}

/// One round of `disk-full`: the victim's disk full for [`DISK_FULL_HOLD`], then freed; a
/// node that stopped meanwhile (arkd exits when its Raft log cannot be written) is started
/// again, as its supervisor would.
async fn fill_then_free(dir: &Path, victim: PlaygroundNode) -> anyhow::Result<String> {
    let size = crate::diskfull::fill(&victim.data_dir)?;
    tokio::time::sleep(DISK_FULL_HOLD).await;
    crate::diskfull::free(&victim.data_dir)?;
    let victim = Playground::load(dir)?.node(victim.id).cloned().context("victim gone")?;
    if playground::process_alive(victim.pid) {
        return Ok(format!(
            "disk of node {} full at {size} bytes; the node kept running",
            victim.id
        ));
    }
    let (_, child) = playground::start_node(dir, victim.id)?;
    drop(child);
    Ok(format!(
        "disk of node {} full at {size} bytes; the node stopped and was started again after the disk was freed",
        victim.id
    ))
}

/// Chunk files corrupted per round of `chunk-corruption`.
const CORRUPT_FILES: usize = 3;

/// One round of `chunk-corruption`: flip a byte in [`CORRUPT_FILES`] chunk files of a random
/// node, let the workload read through the corrupt copies for 1-2 s, then scrub every node
/// (which must find and repair what the reads did not). One node per round and a scrub
/// between rounds: every chunk keeps a good copy, as with one failing disk at a time.
async fn corrupt_then_scrub(client: &ArkClient, dir: &Path, rng: &mut StdRng) -> anyhow::Result<String> {
    let pg = Playground::load(dir)?;
    let victim = &pg.nodes[rng.gen_range(0..pg.nodes.len())];
    let hit = crate::objects::corrupt_chunks(&victim.data_dir, CORRUPT_FILES, rng)
        .with_context(|| format!("corrupting chunks of node {}", victim.id))?;
    tokio::time::sleep(Duration::from_millis(rng.gen_range(1000..2000))).await;
    let scrub = client
        .with_object_timeout(Some(Duration::from_secs(60)))
        .scrub(&ark_client::ScrubOptions { wait: true })
        .await
        .context("scrub after corrupting chunks")?;
    let (corrupt, repaired) = scrub_totals(&scrub);
    // The chunk ids (file names without `.zst`), so that a test can match each flipped copy
    // with the node's own report of it, whichever path found it.
    let ids: Vec<String> = hit
        .iter()
        .filter_map(|p| p.file_name()?.to_str()?.split('.').next().map(str::to_string))
        .collect();
    Ok(format!(
        "flipped a byte in {} chunk files of node {} [{}]; scrub found {corrupt} corrupt, repaired {repaired}",
        hit.len(),
        victim.id,
        ids.join(" ")
    ))
}

/// Corrupt copies found and copies repaired by a scrub, over every node.
fn scrub_totals(scrub: &ark_client::ScrubReport) -> (u64, u64) {
    scrub
        .nodes
        .iter()
        .fold((0, 0), |(c, r), n| (c + n.corrupt, r + n.repaired))
}

/// The end of `chunk-corruption`: one more scrub on every node (a round may have been cut
/// short before its own), then `verify` of every object. Answers a note for the report and
/// how many objects are still below their policy, which must be none: every flipped byte
/// was found, by a read or a scrub, and its copy replaced from a healthy replica.
async fn final_repair_check(client: &ArkClient) -> anyhow::Result<(String, u64)> {
    let long = client.with_object_timeout(Some(Duration::from_secs(120)));
    let scrub = long
        .scrub(&ark_client::ScrubOptions { wait: true })
        .await
        .context("final scrub")?;
    let (corrupt, repaired) = scrub_totals(&scrub);
    let verify = long
        .verify(Some(crate::objects::NAMESPACE))
        .await
        .context("final verify")?;
    let below: Vec<String> = verify
        .objects
        .iter()
        .filter(|o| !o.at_policy)
        .map(|o| {
            let key = if o.object.key.is_empty() {
                "?"
            } else {
                o.object.key.as_str()
            };
            format!("{key}: {}", o.problems.join(", "))
        })
        .collect();
    let note = format!(
        "final scrub found {corrupt} corrupt, repaired {repaired}; verify: {} objects, {} below policy{}",
        verify.objects.len(),
        below.len(),
        if below.is_empty() {
            String::new()
        } else {
            format!(" ({})", below.iter().take(5).cloned().collect::<Vec<_>>().join("; "))
        }
    );
    Ok((note, below.len() as u64))
}

/// How long a new learner may take to catch up (snapshot included) before the drill fails.
const LEARNER_CATCH_UP_MAX: Duration = Duration::from_secs(60);

/// Starts a new node in `site` and adds it: learner, caught up (snapshot included), voter.
/// Answers its id.
async fn add_voter(client: &ArkClient, dir: &Path, site: &str) -> anyhow::Result<u64> {
    let netns = netns::placer_for(dir);
    let placer = netns.as_ref().map(|n| &**n as &dyn playground::NodePlacer);
    let (node, child) = playground::add_node_placed(dir, site, 20_000, placer)?;
    drop(child);
    let spec = ark_client::NodeSpec {
        id: node.id,
        site: node.site.clone(),
        peer_addr: node.peer_addr.clone(),
        client_addr: node.client_addr.clone(),
    };
    // Not `wait_caught_up`: a learner that needs a snapshot (the state grows with every
    // write of a long run) can take longer than one RPC may; poll its progress instead.
    client
        .add_learner(spec, &ark_client::AddLearnerOptions::default())
        .await
        .context("adding a learner")?;
    let target = client
        .status()
        .await
        .context("status after adding a learner")?
        .applied_index;
    let deadline = Instant::now() + LEARNER_CATCH_UP_MAX;
    loop {
        match client.status_of(&node.client_addr).await {
            Ok(s) if s.applied_index >= target => break,
            _ if Instant::now() >= deadline => bail!(
                "learner {} did not apply index {target} within {LEARNER_CATCH_UP_MAX:?}",
                node.id
            ),
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    client.promote(node.id).await.context("promoting the learner")?;
    Ok(node.id)
}

/// One membership step: with three voters, start a node and add it (learner, caught up,
/// then voter); with more, remove the newest added voter that does not lead and stop it.
/// The original three stay, so the clients' endpoint list stays valid.
async fn change_membership(
    client: &ArkClient,
    dir: &Path,
    st: &ark_client::ClusterStatus,
    leader: u64,
) -> anyhow::Result<()> {
    let voters: Vec<u64> = st.nodes.iter().filter(|n| n.role == "voter").map(|n| n.id).collect();
    if voters.len() <= 3 {
        add_voter(client, dir, "site-d").await?;
    } else if let Some(victim) = voters.iter().copied().filter(|id| *id > 3 && *id != leader).max() {
        client.remove(victim).await.context("removing a voter")?;
        let pg = Playground::load(dir)?;
        if let Some(n) = pg.node(victim) {
            playground::signal_node(n, nix::sys::signal::Signal::SIGTERM)?;
        }
    }
    Ok(())
}

/// Regular files under `dir`, at any depth (0 when it does not exist).
fn count_files(dir: &Path) -> anyhow::Result<u64> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(anyhow::anyhow!("listing {}: {e}", dir.display())),
    };
    let mut n = 0;
    for entry in entries {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            n += count_files(&entry.path())?;
        } else {
            n += 1;
        }
    }
    Ok(n)
}

// --- majority-loss: recovery of the last site standing (`arkd recover`) ---

/// Longest wait for the recovered node to lead, and for the repair queue to bring every
/// object back to its policy after the new nodes joined.
const RECOVERED_LEADER_MAX: Duration = Duration::from_secs(30);
const POLICY_RESTORED_MAX: Duration = Duration::from_secs(120);
/// Longest wait for a lost node started on its old data to stop by itself.
const OLD_NODE_STOP_MAX: Duration = Duration::from_secs(20);

/// A node's last log id as `arkd recover --inspect --json` prints it, in openraft's order
/// (term, leader, index).
fn last_log_of(inspection: &serde_json::Value) -> Option<(u64, u64, u64)> {
    let l = inspection.get("last_log_id")?;
    let lid = l.get("leader_id")?;
    Some((
        lid.get("term")?.as_u64()?,
        lid.get("node_id")?.as_u64()?,
        l.get("index")?.as_u64()?,
    ))
}

/// Runs `arkd recover ARGS` on a stopped node, as the operator would: (success, stdout, stderr).
fn arkd_recover(args: &[&std::ffi::OsStr]) -> anyhow::Result<(bool, String, String)> {
    let arkd = playground::find_arkd()?;
    let o = std::process::Command::new(&arkd)
        .arg("recover")
        .args(args)
        .output()
        .with_context(|| format!("running {} recover", arkd.display()))?;
    Ok((
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    ))
}

/// `arkd recover --inspect --json` of a stopped node.
fn inspect_node(node: &PlaygroundNode) -> anyhow::Result<serde_json::Value> {
    let (ok, out, err) = arkd_recover(&[
        "--inspect".as_ref(),
        "--json".as_ref(),
        "-c".as_ref(),
        node.config.as_os_str(),
    ])?;
    if !ok {
        bail!("arkd recover --inspect of node {} failed: {err}", node.id);
    }
    serde_json::from_str(&out).with_context(|| format!("arkd recover --inspect of node {} printed {out}", node.id))
}

/// `arkd recover --force-new-cluster` of `node`, compared with `others`.
fn force_new_cluster(node: &PlaygroundNode, others: &[&PlaygroundNode]) -> anyhow::Result<(bool, String, String)> {
    let mut args: Vec<&std::ffi::OsStr> = vec!["--force-new-cluster".as_ref(), "-c".as_ref(), node.config.as_os_str()];
    for o in others {
        args.push("--compare-with".as_ref());
        args.push(o.config.as_os_str());
    }
    arkd_recover(&args)
}

/// The fault and the operator's recovery of `majority-loss`: two sites (the leader's and a
/// seeded other) killed, the third stopped; every data dir inspected; a less advanced node's
/// recovery must be refused and change nothing; the most advanced node is recovered, started
/// and must lead; one of the others started on its old data must stop by itself; the other
/// two data dirs are moved away and new nodes in those sites added as voters. Answers a line
/// for the fault log.
async fn lose_majority_and_recover(
    client: &ArkClient,
    dir: &Path,
    leader: u64,
    rng: &mut StdRng,
) -> anyhow::Result<String> {
    use nix::sys::signal::Signal;
    let pg = Playground::load(dir)?;
    if pg.nodes.len() != 3 {
        bail!("majority-loss runs on 3 sites x 1 node, not {} nodes", pg.nodes.len());
    }
    let others: Vec<&PlaygroundNode> = pg.nodes.iter().filter(|n| n.id != leader).collect();
    let survivor = others[rng.gen_range(0..others.len())].clone();
    let lost: Vec<&PlaygroundNode> = pg.nodes.iter().filter(|n| n.id != survivor.id).collect();
    for n in &lost {
        playground::signal_node(n, Signal::SIGKILL)?;
    }
    for n in &lost {
        wait_exit(n, Duration::from_secs(10)).await?;
    }
    let mut log = vec![format!(
        "kill -9 of nodes {:?} (sites {:?}, leader {leader})",
        lost.iter().map(|n| n.id).collect::<Vec<_>>(),
        lost.iter().map(|n| n.site.as_str()).collect::<Vec<_>>()
    )];
    // The survivor cannot serve alone; the operator stops it (SIGTERM, then SIGKILL).
    playground::signal_node(&survivor, Signal::SIGTERM)?;
    if wait_exit(&survivor, Duration::from_secs(10)).await.is_err() {
        playground::signal_node(&survivor, Signal::SIGKILL)?;
        wait_exit(&survivor, Duration::from_secs(10)).await?;
    }
    // Every data dir is readable (the lost sites lost power, not their disks).
    let mut seen = Vec::new();
    for n in &pg.nodes {
        let i = inspect_node(n)?;
        let last = last_log_of(&i).with_context(|| format!("node {} holds no log: {i}", n.id))?;
        seen.push((n, last));
    }
    log.push(format!(
        "last log (term, leader, index): {}",
        seen.iter()
            .map(|(n, l)| format!("node {} {l:?}", n.id))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    let best_last = seen.iter().map(|(_, l)| *l).max().context("no node")?;
    // The survivor when it is as advanced as any, else the most advanced one.
    let best = seen
        .iter()
        .filter(|(_, l)| *l == best_last)
        .map(|(n, _)| *n)
        .min_by_key(|n| n.id != survivor.id)
        .context("no node")?;
    let compare = |me: &PlaygroundNode| pg.nodes.iter().filter(|o| o.id != me.id).collect::<Vec<_>>();
    for (n, last) in seen.iter().filter(|(_, l)| *l < best_last) {
        let (ok, _, err) = force_new_cluster(n, &compare(n))?;
        if ok {
            bail!(
                "arkd recover made node {} the only voter although node {} holds a later log",
                n.id,
                best.id
            );
        }
        if last_log_of(&inspect_node(n)?) != Some(*last) {
            bail!("a refused arkd recover changed node {}'s log", n.id);
        }
        log.push(format!(
            "recover of node {} refused as it must ({}), nothing changed",
            n.id,
            err.lines()
                .find(|l| l.contains("holds a later log"))
                .unwrap_or("no reason given")
                .trim()
        ));
    }
    if seen.iter().all(|(_, l)| *l == best_last) {
        log.push("every node's log ends at the same entry: no refusal to check".to_owned());
    }
    let (ok, out, err) = force_new_cluster(best, &compare(best))?;
    if !ok {
        bail!(
            "arkd recover of the most advanced node {} failed: {err}\n{out}",
            best.id
        );
    }
    log.push(format!("node {} recovered", best.id));
    let (_, child) = playground::start_node(dir, best.id)?;
    drop(child);
    let deadline = Instant::now() + RECOVERED_LEADER_MAX;
    loop {
        match client.status_of(&best.client_addr).await {
            Ok(s) if s.state == "leader" => break,
            _ if Instant::now() >= deadline => {
                bail!(
                    "recovered node {} did not lead within {RECOVERED_LEADER_MAX:?}",
                    best.id
                )
            }
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    log.push(format!("node {} leads alone", best.id));
    // An operator who forgets the runbook's warning and starts a lost node on its old data:
    // the recovered node tells it to stop, and it must stop by itself.
    let stale = pg.nodes.iter().find(|n| n.id != best.id).context("no other node")?;
    let (stale_now, child) = playground::start_node(dir, stale.id)?;
    drop(child);
    let deadline = Instant::now() + OLD_NODE_STOP_MAX;
    while playground::process_alive(stale_now.pid) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if playground::process_alive(stale_now.pid) {
        playground::signal_node(&stale_now, Signal::SIGKILL)?;
        bail!(
            "node {} started on its old data after the recovery was still running after {OLD_NODE_STOP_MAX:?}",
            stale.id
        );
    }
    let node_log = stale.config.with_file_name("arkd.log");
    let said = std::fs::read_to_string(&node_log).with_context(|| format!("reading {}", node_log.display()))?;
    if !said.contains("left out when node") {
        bail!(
            "node {} started on its old data stopped without saying it was left out",
            stale.id
        );
    }
    log.push(format!(
        "node {} started on its old data stopped by itself: left out by the recovery",
        stale.id
    ));
    // The two others never start again with their old data: their data dirs are moved out of
    // the way (kept for a post-mortem; an operator wipes them), and new nodes (new ids) take
    // their places in their sites.
    for n in pg.nodes.iter().filter(|n| n.id != best.id) {
        let aside = n.data_dir.with_extension("lost");
        std::fs::rename(&n.data_dir, &aside)
            .with_context(|| format!("moving {} out of the way", n.data_dir.display()))?;
    }
    let mut added = Vec::new();
    for n in pg.nodes.iter().filter(|n| n.id != best.id) {
        added.push(add_voter(client, dir, &n.site).await?);
    }
    log.push(format!(
        "data dirs of the others moved away; new voters {added:?} added in their sites"
    ));
    Ok(log.join("; "))
}

/// The end of `majority-loss`: waits until `verify` finds every object at its policy again
/// (the repair queue copies the recovered node's chunks to the new nodes), at most
/// [`POLICY_RESTORED_MAX`], then the scrub and verify of [`final_repair_check`].
async fn policy_restored(client: &ArkClient) -> anyhow::Result<(String, u64)> {
    let long = client.with_object_timeout(Some(Duration::from_secs(120)));
    let started = Instant::now();
    loop {
        let v = long
            .verify(Some(crate::objects::NAMESPACE))
            .await
            .context("verify after the recovery")?;
        if v.objects.iter().all(|o| o.at_policy) || started.elapsed() >= POLICY_RESTORED_MAX {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let waited = started.elapsed();
    let (note, below) = final_repair_check(client).await?;
    Ok((
        format!("policy restored {} ms after the run; {note}", waited.as_millis()),
        below,
    ))
}

async fn drive(
    spec: &DrillSpec,
    dir: &Path,
    history_out: &Path,
    faults: &mut NetFaults,
    disks: &mut Disks,
) -> anyhow::Result<Report> {
    let client = ArkClient::new(&Playground::client_config(dir)?)?.with_op_timeout(OP_TIMEOUT);
    // WAN links for the whole run, installed before the first operation.
    let wan = if spec.wan() {
        retime(dir, WAN_RAFT_TIMING).await.context("setting WAN raft timing")?;
        let mut rng = StdRng::seed_from_u64(spec.seed);
        let shaping = Shaping {
            delay_ms: WAN_DELAY_MS,
            jitter_ms: WAN_JITTER_MS,
            // Whole tenths of a percent, so the report reads plainly.
            loss: (rng.gen_range(WAN_LOSS_MIN..=WAN_LOSS_MAX) * 1000.0).round() / 1000.0,
        };
        let state = NetState::wan(shaping);
        faults.apply(&state).await.context("installing the WAN links")?;
        Some(state)
    } else {
        None
    };
    if spec.scenario == "disk-full" {
        let victim = disk_full_victim(dir, spec)?;
        disk_on_tmpfs(dir, &victim)
            .await
            .with_context(|| format!("putting node {}'s data dir on a tmpfs", victim.id))?;
    }
    if on_lazyfs(&spec.scenario) {
        disks_on_lazyfs(dir, disks).await?;
    }
    let pg = Playground::load(dir)?;
    // Copies go to data nodes only (a witness holds none).
    let data_nodes = pg.nodes.iter().filter(|n| !n.witness).count();
    let copies = u32::try_from(data_nodes.min(3)).unwrap_or(3);
    crate::objects::create_namespace(&client, copies).await?;
    // A witness serves no data: the workload uses the data nodes only.
    let endpoints = pg.client_addrs(|n| !n.witness);
    let workload = Workload::start(
        &client,
        &endpoints,
        WorkloadShape {
            kv_workers: if wan.is_some() { WAN_WORKERS } else { WORKERS },
            object_workers: if spec.scenario == "chunk-corruption" { 2 } else { 1 },
            seed: spec.seed,
        },
    );
    let t0 = workload.t0();
    let (fault, timeline) = match partition_kind(&spec.scenario) {
        Some(kind) => (
            Fault::Partition,
            partition_schedule(kind, spec, dir, &client, t0, faults).await,
        ),
        None => {
            let plan = ProcessPlan::for_scenario(spec);
            (plan.fault, process_schedule(plan, spec, dir, &client, t0, disks).await)
        }
    };
    let timeline = match timeline {
        Ok(t) => t,
        Err(e) => {
            workload.abort().await;
            return Err(e);
        }
    };
    tokio::time::sleep(spec.duration.saturating_sub(t0.elapsed())).await;
    let run = RunInfo {
        scenario: spec.scenario.clone(),
        seed: spec.seed,
        mode: faults.mode(),
    };
    let mut report = workload.finish(run, &timeline, history_out).await?;
    let kills = &timeline.starts;
    report.notes.push(format!(
        "{}; {} faults ({:?}) at {:?} ms",
        faults.mode_note(),
        kills.len(),
        fault,
        kills.iter().map(|k| k / 1_000_000).collect::<Vec<_>>()
    ));
    if let Some(w) = &wan {
        report.notes.push(format!("WAN for the whole run: {}", w.describe()));
    }
    if wan.is_some() || matches!(fault, Fault::Partition) {
        report.notes.push(faults.injection_note().to_owned());
    }
    if !timeline.events.is_empty() {
        report.notes.push(format!("fault log: {}", timeline.events.join("; ")));
    }
    if pg.nodes.iter().any(|n| n.witness) {
        let mut files = 0u64;
        for w in pg.nodes.iter().filter(|n| n.witness) {
            files += count_files(&w.data_dir.join("chunks"))
                .with_context(|| format!("counting chunk files of witness node {}", w.id))?;
        }
        report.witness_chunk_files = Some(files);
        report
            .notes
            .push(format!("witness data dirs: {files} chunk files (must be 0)"));
    }
    if spec.scenario == "majority-loss" {
        let (note, unrepaired) = policy_restored(&client).await?;
        report.notes.push(note);
        if let Some(o) = report.objects.as_mut() {
            o.unrepaired = Some(unrepaired);
        }
    }
    if spec.scenario == "chunk-corruption" {
        let (note, unrepaired) = final_repair_check(&client).await?;
        report.notes.push(note);
        if let Some(o) = report.objects.as_mut() {
            o.unrepaired = Some(unrepaired);
        }
    }
    Ok(report)
}
