//! The drills against a deployed cluster (`ark-chaos drill`, `ark drill`): the same workload
//! and verdict as the playground drills, with the faults injected by the operator's own shell
//! commands (ssh and systemctl, nftables) named in a small TOML config.
//!
//! Owns: the drill config (its parsing and strict validation), placeholder expansion in the
//! commands, the seeded choice of each fault's victims, running the commands (with a timeout
//! each, logged with their exit status), and healing every injected fault, also when a
//! command fails or the operator presses Ctrl-C. Must not touch: the cluster other than
//! through those commands and the SDK; the playground ([`crate::drill`] owns its faults).
//!
//! The pure half (config, validation, [`expand`], [`Planner`], [`steps`]) does no I/O and is
//! tested here; the I/O half ([`dry_run`], [`run`]) is tested against a playground in
//! `tests/deployed.rs`.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use ark_client::{ArkClient, ClientConfig};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Deserialize;

use crate::report::{Mode, Report, RunInfo};
use crate::workload::{ns_since, Timeline, Workload, WorkloadShape, KEYS, KEY_PREFIX, OP_TIMEOUT};

/// KV clients of a deployed drill.
const KV_WORKERS: usize = 6;
/// Object clients of a deployed drill.
const OBJECT_WORKERS: usize = 1;
/// Healthy time before the first fault, so the report's "before" phase is not empty.
const FIRST_FAULT_AFTER: Duration = Duration::from_secs(2);
/// Healthy time kept at the end of the run after the last heal, for the recovery to show.
const TAIL_MIN: Duration = Duration::from_secs(2);
/// Faults `--dry-run` prints.
const DRY_RUN_FAULTS: usize = 3;
/// Bytes of a failed command's stderr kept in the fault log.
const STDERR_TAIL_BYTES: usize = 400;
/// Commands named one by one in the report's notes; the rest are counted (all are in
/// `faults.log`).
const NOTED_COMMANDS_MAX: usize = 200;
/// How long the drill waits for a leader before a fault, before it gives up.
const LEADER_WAIT_MAX: Duration = Duration::from_secs(60);

/// A drill config that is wrong, or does not match the cluster: nothing was run. The CLI
/// exits 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

fn invalid(msg: impl Into<String>) -> ConfigError {
    ConfigError(msg.into())
}

/// The drill config (TOML). Unknown keys are rejected.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DrillConfig {
    /// The client config (endpoints, mTLS files) as for the `ark` CLI; a relative path is
    /// resolved against the drill config's folder.
    pub client_config: PathBuf,
    /// One of [`SCENARIOS`].
    pub scenario: String,
    /// Seconds of workload (default 300).
    #[serde(default = "default_duration_s")]
    pub duration_s: u64,
    /// Seeds the choice of victims, the gaps and the workload (default 1).
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// Seconds a fault lasts before its heal command runs (default 5).
    #[serde(default = "default_hold_s")]
    pub hold_s: f64,
    /// Healthy pause between faults, seconds `[min, max]`, seeded uniform (default `[3, 5]`).
    #[serde(default = "default_gap_s")]
    pub gap_s: [f64; 2],
    /// Deadline of one command, seconds (default 30); past it the command's process group is
    /// killed and the drill stops as if it had failed.
    #[serde(default = "default_command_timeout_s")]
    pub command_timeout_s: f64,
    /// The fault and heal commands.
    pub actions: Actions,
    /// Every member of the cluster, with the values of its placeholders.
    pub nodes: Vec<NodeEntry>,
}

fn default_duration_s() -> u64 {
    300
}
fn default_seed() -> u64 {
    1
}
fn default_hold_s() -> f64 {
    5.0
}
fn default_gap_s() -> [f64; 2] {
    [3.0, 5.0]
}
fn default_command_timeout_s() -> f64 {
    30.0
}

/// Shell commands (`sh -c`), with placeholders filled per node. A scenario needs only some.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Actions {
    /// Kill the node's arkd at once (kill -9): `leader-kill`, `random-kill`, `site-kill`.
    pub kill: Option<String>,
    /// Start the node's arkd: after `kill` and `stop`.
    pub start: Option<String>,
    /// Stop the node's arkd in order (SIGTERM): `rolling-restart`.
    pub stop: Option<String>,
    /// Freeze the node's arkd (SIGSTOP): `pause`.
    pub pause: Option<String>,
    /// Thaw it (SIGCONT): after `pause`.
    pub resume: Option<String>,
    /// Cut the node's peer traffic with `{peers}`: `site-partition`.
    pub isolate: Option<String>,
    /// Undo `isolate`.
    pub heal: Option<String>,
}

impl Actions {
    fn get(&self, name: &str) -> Option<&str> {
        match name {
            "kill" => self.kill.as_deref(),
            "start" => self.start.as_deref(),
            "stop" => self.stop.as_deref(),
            "pause" => self.pause.as_deref(),
            "resume" => self.resume.as_deref(),
            "isolate" => self.isolate.as_deref(),
            "heal" => self.heal.as_deref(),
            _ => None,
        }
    }
}

/// Every action name, in the config's order.
const ACTIONS: &[&str] = &["kill", "start", "stop", "pause", "resume", "isolate", "heal"];

/// One `[[nodes]]` entry: its id and any extra string keys, which become placeholders.
#[derive(Debug, Clone, Deserialize)]
pub struct NodeEntry {
    /// The node id, as in `ark status`.
    pub id: u64,
    /// Extra keys (`host = "ark-a1.example"` gives `{host}`).
    #[serde(flatten)]
    pub vars: BTreeMap<String, toml::Value>,
}

/// Placeholders the drill fills from the cluster's status; a node entry may not redefine them.
const BUILT_IN: &[&str] = &["id", "site", "peers", "peer_ips"];

/// The scenarios of a deployed drill.
pub const SCENARIOS: &[(&str, &str)] = &[
    ("leader-kill", "`kill` of the current leader, `start` after hold_s; repeated after gap_s"),
    ("random-kill", "`kill` of a random member (seeded), `start` after hold_s"),
    ("site-kill", "`kill` of every member of the leader's site, `start` after hold_s"),
    ("pause", "`pause` of the current leader, `resume` after hold_s"),
    (
        "site-partition",
        "`isolate` of every member of a site (the leader's in 2 rounds of 3) from the other sites' {peers}, `heal` after hold_s",
    ),
    (
        "rolling-restart",
        "`stop` of each member in turn (followers first, the leader last), `start` after hold_s",
    ),
];

/// A scenario: which members each fault hits, and the action pair it uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    /// The leader, `kill` / `start`.
    LeaderKill,
    /// A random member, `kill` / `start`.
    RandomKill,
    /// The leader's site, `kill` / `start`.
    SiteKill,
    /// The leader, `pause` / `resume`.
    Pause,
    /// A site (usually the leader's), `isolate` / `heal`.
    SitePartition,
    /// Each member in turn, `stop` / `start`.
    RollingRestart,
}

impl Scenario {
    /// The scenario called `name`.
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "leader-kill" => Self::LeaderKill,
            "random-kill" => Self::RandomKill,
            "site-kill" => Self::SiteKill,
            "pause" => Self::Pause,
            "site-partition" => Self::SitePartition,
            "rolling-restart" => Self::RollingRestart,
            _ => return None,
        })
    }

    /// The action that injects the fault and the one that heals it.
    pub fn actions(self) -> (&'static str, &'static str) {
        match self {
            Self::LeaderKill | Self::RandomKill | Self::SiteKill => ("kill", "start"),
            Self::Pause => ("pause", "resume"),
            Self::SitePartition => ("isolate", "heal"),
            Self::RollingRestart => ("stop", "start"),
        }
    }
}

/// One piece of a command template.
#[derive(Debug, PartialEq, Eq)]
enum Piece<'a> {
    Text(&'a str),
    Var(&'a str),
}

/// Splits a template into text and `{name}` placeholders; `{{` and `}}` are literal braces
/// (as in Rust's `format!`), any other brace is an error.
fn parse_template(template: &str) -> Result<Vec<Piece<'_>>, String> {
    let mut out = Vec::new();
    let bytes = template.as_bytes();
    let (mut i, mut text_start) = (0usize, 0usize);
    while i < bytes.len() {
        match bytes[i] {
            b'{' | b'}' if bytes.get(i + 1) == Some(&bytes[i]) => {
                out.push(Piece::Text(&template[text_start..=i]));
                i += 2;
                text_start = i;
            }
            b'{' => {
                out.push(Piece::Text(&template[text_start..i]));
                let rest = &template[i + 1..];
                let end = rest
                    .find('}')
                    .ok_or_else(|| format!("unclosed '{{' at byte {i} (write {{{{ for a literal brace)"))?;
                let name = &rest[..end];
                if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                    return Err(format!(
                        "'{{{name}}}' at byte {i} is not a placeholder (write {{{{ and }}}} for literal braces)"
                    ));
                }
                out.push(Piece::Var(name));
                i += end + 2;
                text_start = i;
            }
            b'}' => return Err(format!("lone '}}' at byte {i} (write }}}} for a literal brace)")),
            _ => i += 1,
        }
    }
    out.push(Piece::Text(&template[text_start..]));
    out.retain(|p| *p != Piece::Text(""));
    Ok(out)
}

/// Fills the placeholders of `template` from `vars`. Values go in verbatim (no shell
/// quoting): the built-in ones are checked to be plain addresses and names.
pub fn expand(template: &str, vars: &BTreeMap<String, String>) -> Result<String, String> {
    let mut out = String::with_capacity(template.len());
    for piece in parse_template(template)? {
        match piece {
            Piece::Text(t) => out.push_str(t),
            Piece::Var(name) => out.push_str(
                vars.get(name)
                    .ok_or_else(|| format!("unknown placeholder {{{name}}}"))?,
            ),
        }
    }
    Ok(out)
}

/// A member of the cluster as its status names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Node id.
    pub id: u64,
    /// Its site.
    pub site: String,
    /// Its QUIC peer address (`host:port`).
    pub peer_addr: String,
}

/// What the status says about the cluster right now.
#[derive(Debug, Clone)]
pub struct ClusterView {
    /// Every member.
    pub members: Vec<Member>,
    /// The leader, as the leader itself answers.
    pub leader: u64,
    /// Its term.
    pub term: u64,
}

impl ClusterView {
    fn member(&self, id: u64) -> Option<&Member> {
        self.members.iter().find(|m| m.id == id)
    }
}

/// A value from the cluster's status goes into shell commands verbatim: it must be a plain
/// name or address.
fn check_plain(what: &str, v: &str) -> anyhow::Result<()> {
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_alphanumeric() || b"._:-[]%".contains(&b)) {
        bail!("the cluster's status names {what} {v:?}, which the drill will not put into a shell command");
    }
    Ok(())
}

/// One command of the drill, for one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// The node it acts on.
    pub node: u64,
    /// Its action (`kill`, `start`, ...).
    pub action: &'static str,
    /// The expanded command.
    pub command: String,
}

impl DrillConfig {
    /// Parses a config; `base` resolves a relative `client_config`.
    pub fn parse(text: &str, base: &Path) -> Result<Self, ConfigError> {
        let mut cfg: DrillConfig = toml::from_str(text).map_err(|e| invalid(format!("invalid drill config: {e}")))?;
        if cfg.client_config.is_relative() {
            cfg.client_config = base.join(&cfg.client_config);
        }
        Ok(cfg)
    }

    /// Reads and parses `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|e| invalid(format!("cannot read {}: {e}", path.display())))?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::parse(&text, base).map_err(|e| invalid(format!("{}: {e}", path.display())))
    }

    /// Checks everything that does not need the cluster: the scenario, its actions, the
    /// timings, the node entries and every placeholder of every action for every node.
    pub fn validate(&self) -> Result<Scenario, ConfigError> {
        let scenario = Scenario::parse(&self.scenario).ok_or_else(|| {
            let names: Vec<&str> = SCENARIOS.iter().map(|(n, _)| *n).collect();
            invalid(format!(
                "unknown scenario {:?}; one of: {}",
                self.scenario,
                names.join(", ")
            ))
        })?;
        let secs_ok = |s: f64| s.is_finite() && (0.0..=86_400.0).contains(&s);
        if !secs_ok(self.hold_s) || self.hold_s == 0.0 {
            return Err(invalid(format!(
                "hold_s = {} must be a number of seconds above 0",
                self.hold_s
            )));
        }
        let [gap_min, gap_max] = self.gap_s;
        if !secs_ok(gap_min) || !secs_ok(gap_max) || gap_min > gap_max {
            return Err(invalid(format!(
                "gap_s = [{gap_min}, {gap_max}] must be [min, max] seconds, min <= max"
            )));
        }
        // Room for one fault at least: the healthy start, the hold, the healthy tail; a run
        // without a fault would only fail for want of a recovery to measure.
        let one_fault_s = (FIRST_FAULT_AFTER + TAIL_MIN).as_secs_f64() + self.hold_s;
        if (self.duration_s as f64) <= one_fault_s {
            return Err(invalid(format!(
                "duration_s = {} leaves no room for a fault: it must exceed {one_fault_s} s ({} s healthy start + hold_s + {} s healthy tail)",
                self.duration_s,
                FIRST_FAULT_AFTER.as_secs(),
                TAIL_MIN.as_secs()
            )));
        }
        if !secs_ok(self.command_timeout_s) || self.command_timeout_s == 0.0 {
            return Err(invalid(format!(
                "command_timeout_s = {} must be a number of seconds above 0",
                self.command_timeout_s
            )));
        }
        let (inject, heal) = scenario.actions();
        for a in [inject, heal] {
            if self.actions.get(a).is_none_or(|c| c.trim().is_empty()) {
                return Err(invalid(format!(
                    "scenario {} needs the action `{a}` in [actions] (both `{inject}` and `{heal}`)",
                    self.scenario
                )));
            }
        }
        if self.nodes.is_empty() {
            return Err(invalid("no [[nodes]]: list every member of the cluster"));
        }
        let mut seen = BTreeSet::new();
        for n in &self.nodes {
            if !seen.insert(n.id) {
                return Err(invalid(format!("node {} is listed twice in [[nodes]]", n.id)));
            }
            for (k, v) in &n.vars {
                if BUILT_IN.contains(&k.as_str()) {
                    return Err(invalid(format!(
                        "node {}: key `{k}` is filled from the cluster's status and cannot be set",
                        n.id
                    )));
                }
                if k.is_empty() || !k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                    return Err(invalid(format!(
                        "node {}: key `{k}` is not a placeholder name (a-z, 0-9, _)",
                        n.id
                    )));
                }
                if !v.is_str() {
                    return Err(invalid(format!("node {}: `{k}` must be a string, not {v}", n.id)));
                }
            }
        }
        // Every action given, needed or not, must expand for every node.
        for a in ACTIONS {
            let Some(template) = self.actions.get(a) else {
                continue;
            };
            let pieces = parse_template(template).map_err(|e| invalid(format!("action `{a}`: {e}")))?;
            for n in &self.nodes {
                for p in &pieces {
                    if let Piece::Var(name) = p {
                        if !BUILT_IN.contains(name) && !n.vars.contains_key(*name) {
                            return Err(invalid(format!(
                                "action `{a}`: unknown placeholder {{{name}}} for node {} (built in: {}; or an extra key of its [[nodes]] entry)",
                                n.id,
                                BUILT_IN.iter().map(|b| format!("{{{b}}}")).collect::<Vec<_>>().join(" ")
                            )));
                        }
                    }
                }
            }
        }
        Ok(scenario)
    }

    /// Checks the node entries against the cluster's members: every entry is a member, and
    /// every member has an entry (a fault may hit any of them).
    pub fn validate_members(&self, members: &[Member]) -> Result<(), ConfigError> {
        let ids: BTreeSet<u64> = members.iter().map(|m| m.id).collect();
        for n in &self.nodes {
            if !ids.contains(&n.id) {
                return Err(invalid(format!(
                    "[[nodes]] id {} is not a member of the cluster (members: {ids:?})",
                    n.id
                )));
            }
        }
        for m in members {
            if !self.nodes.iter().any(|n| n.id == m.id) {
                return Err(invalid(format!(
                    "member {} (site {}) has no [[nodes]] entry; the drill may pick any member, so list them all",
                    m.id, m.site
                )));
            }
        }
        Ok(())
    }

    fn command_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.command_timeout_s)
    }

    fn hold(&self) -> Duration {
        Duration::from_secs_f64(self.hold_s)
    }
}

/// The commands of `action` for each of `victims`. `{peers}` of a victim are the peer
/// addresses of every member outside the victims' group (the ones it is cut from).
pub fn steps(
    cfg: &DrillConfig,
    view: &ClusterView,
    victims: &[u64],
    action: &'static str,
) -> anyhow::Result<Vec<Step>> {
    let template = cfg
        .actions
        .get(action)
        .with_context(|| format!("no action `{action}`"))?;
    let others: Vec<&Member> = view.members.iter().filter(|m| !victims.contains(&m.id)).collect();
    for m in &others {
        check_plain("a peer address", &m.peer_addr)?;
    }
    let peers: Vec<&str> = others.iter().map(|m| m.peer_addr.as_str()).collect();
    let peer_ips: Vec<&str> = peers
        .iter()
        .map(|a| {
            a.rsplit_once(':')
                .map_or(*a, |(h, _)| h)
                .trim_start_matches('[')
                .trim_end_matches(']')
        })
        .collect();
    let mut out = Vec::new();
    for v in victims {
        let member = view.member(*v).with_context(|| format!("node {v} is not a member"))?;
        let entry = cfg
            .nodes
            .iter()
            .find(|n| n.id == *v)
            .with_context(|| format!("node {v} has no [[nodes]] entry"))?;
        check_plain("a site", &member.site)?;
        let mut vars: BTreeMap<String, String> = entry
            .vars
            .iter()
            .filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_owned())))
            .collect();
        vars.insert("id".into(), v.to_string());
        vars.insert("site".into(), member.site.clone());
        vars.insert("peers".into(), peers.join(" "));
        vars.insert("peer_ips".into(), peer_ips.join(" "));
        let command = expand(template, &vars).map_err(|e| anyhow::anyhow!("action `{action}`, node {v}: {e}"))?;
        out.push(Step {
            node: *v,
            action,
            command,
        });
    }
    Ok(out)
}

/// The seeded choice of each fault's victims and of the gaps between faults.
#[derive(Debug)]
pub struct Planner {
    scenario: Scenario,
    rng: StdRng,
    gap_s: [f64; 2],
    round: usize,
}

impl Planner {
    /// A planner for `cfg`'s scenario and seed.
    pub fn new(scenario: Scenario, cfg: &DrillConfig) -> Self {
        Self {
            scenario,
            rng: StdRng::seed_from_u64(cfg.seed),
            gap_s: cfg.gap_s,
            round: 0,
        }
    }

    /// The victims of the next fault, and a line saying why them.
    pub fn next(&mut self, view: &ClusterView) -> (Vec<u64>, String) {
        let round = self.round;
        self.round += 1;
        let leader = view.leader;
        let leader_site = view.member(leader).map(|m| m.site.clone()).unwrap_or_default();
        let site_of =
            |site: &str| -> Vec<u64> { view.members.iter().filter(|m| m.site == site).map(|m| m.id).collect() };
        match self.scenario {
            Scenario::LeaderKill | Scenario::Pause => (vec![leader], format!("the leader, node {leader}")),
            Scenario::RandomKill => {
                let m = &view.members[self.rng.gen_range(0..view.members.len())];
                (vec![m.id], format!("node {} at random (leader {leader})", m.id))
            }
            Scenario::SiteKill => (
                site_of(&leader_site),
                format!("the leader's site {leader_site} (leader {leader})"),
            ),
            Scenario::SitePartition => {
                let sites: BTreeSet<&str> = view.members.iter().map(|m| m.site.as_str()).collect();
                let others: Vec<&str> = sites.into_iter().filter(|s| *s != leader_site).collect();
                if round % 3 == 2 && !others.is_empty() {
                    let site = others[self.rng.gen_range(0..others.len())].to_owned();
                    (site_of(&site), format!("site {site} (leader {leader} elsewhere)"))
                } else {
                    (
                        site_of(&leader_site),
                        format!("the leader's site {leader_site} (leader {leader})"),
                    )
                }
            }
            Scenario::RollingRestart => {
                let mut order: Vec<u64> = view.members.iter().map(|m| m.id).filter(|id| *id != leader).collect();
                order.sort_unstable();
                order.push(leader);
                let v = order[round % order.len()];
                (vec![v], format!("node {v} in turn (leader {leader})"))
            }
        }
    }

    /// The healthy pause after a fault.
    pub fn gap(&mut self) -> Duration {
        let [lo, hi] = self.gap_s;
        let s = if hi > lo { self.rng.gen_range(lo..=hi) } else { lo };
        Duration::from_secs_f64(s)
    }
}

/// The cluster as the leader answers; `None` while no leader answers. Asks the SDK (which
/// follows leader hints) and every endpoint of the client config at once and keeps the
/// answer of the node that says it leads in the highest term: an old leader cut off by the
/// last fault may still believe it leads, in an older term.
async fn view(client: &ArkClient, endpoints: &[String]) -> Option<ClusterView> {
    let mut asks = tokio::task::JoinSet::new();
    {
        let client = client.clone();
        asks.spawn(async move { client.status().await.ok() });
    }
    for ep in endpoints {
        let (client, ep) = (client.clone(), ep.clone());
        asks.spawn(async move { client.status_of(&ep).await.ok() });
    }
    let mut best: Option<ark_client::ClusterStatus> = None;
    while let Some(answer) = asks.join_next().await {
        if let Ok(Some(st)) = answer {
            let leads = st.leader_id == Some(st.node_id);
            if leads && best.as_ref().is_none_or(|b| st.term > b.term) {
                best = Some(st);
            }
        }
    }
    let st = best?;
    Some(ClusterView {
        members: st
            .nodes
            .iter()
            .map(|n| Member {
                id: n.id,
                site: n.site.clone(),
                peer_addr: n.peer_addr.clone(),
            })
            .collect(),
        leader: st.node_id,
        term: st.term,
    })
}

/// Waits (bounded) until a leader answers.
async fn wait_view(client: &ArkClient, endpoints: &[String], max: Duration) -> anyhow::Result<ClusterView> {
    let deadline = Instant::now() + max;
    loop {
        if let Some(v) = view(client, endpoints).await {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            bail!("no leader answered within {max:?} (is the cluster up, and the client config right?)");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Deletes the workload's keys, left by an earlier drill on this cluster: the checker starts
/// from every key absent, so a value from a past run would read as a write from nowhere.
async fn clear_keys(client: &ArkClient) -> anyhow::Result<()> {
    for k in 0..KEYS {
        let key = format!("{KEY_PREFIX}{k}");
        client
            .delete(&key)
            .await
            .with_context(|| format!("deleting {key} (left by an earlier drill) before the run"))?;
    }
    Ok(())
}

/// A loaded and validated drill, ready to run.
#[derive(Debug)]
pub struct Drill {
    /// The config, with the command line's overrides.
    pub cfg: DrillConfig,
    /// Its scenario.
    pub scenario: Scenario,
    client_cfg: ClientConfig,
}

impl Drill {
    /// Loads `path`, applies the overrides and validates everything that needs no cluster.
    pub fn load(path: &Path, seed: Option<u64>, duration_s: Option<u64>) -> Result<Self, ConfigError> {
        let mut cfg = DrillConfig::load(path)?;
        if let Some(s) = seed {
            cfg.seed = s;
        }
        if let Some(d) = duration_s {
            cfg.duration_s = d;
        }
        let scenario = cfg
            .validate()
            .map_err(|e| invalid(format!("{}: {e}", path.display())))?;
        let client_cfg = ClientConfig::load(&cfg.client_config)
            .map_err(|e| invalid(format!("client_config {}: {e}", cfg.client_config.display())))?;
        Ok(Self {
            cfg,
            scenario,
            client_cfg,
        })
    }

    fn client(&self) -> anyhow::Result<ArkClient> {
        Ok(ArkClient::new(&self.client_cfg)
            .context("making the client from client_config")?
            .with_op_timeout(OP_TIMEOUT))
    }

    /// Validates the config against the cluster and says what the first faults would run,
    /// assuming the leader stays where it is now. Runs no command and writes nothing.
    pub async fn dry_run(&self) -> anyhow::Result<String> {
        let client = self.client()?;
        let view = wait_view(&client, &self.client_cfg.endpoints, Duration::from_secs(10)).await?;
        self.cfg.validate_members(&view.members)?;
        let (inject, heal) = self.scenario.actions();
        let mut planner = Planner::new(self.scenario, &self.cfg);
        let mut s = String::new();
        let _ = writeln!(
            s,
            "dry run: scenario {} (seed {}), {} s of workload, faults held {} s, gaps {:?} s; leader now node {} (term {}); members {:?}",
            self.cfg.scenario,
            self.cfg.seed,
            self.cfg.duration_s,
            self.cfg.hold_s,
            self.cfg.gap_s,
            view.leader,
            view.term,
            view.members.iter().map(|m| (m.id, m.site.as_str())).collect::<Vec<_>>()
        );
        let _ = writeln!(
            s,
            "the first {DRY_RUN_FAULTS} faults, if the leader stayed node {} (each fault picks its victims from the status at that time):",
            view.leader
        );
        for i in 1..=DRY_RUN_FAULTS {
            let (victims, why) = planner.next(&view);
            let _ = writeln!(s, "fault {i}: {why}");
            for step in steps(&self.cfg, &view, &victims, inject)? {
                let _ = writeln!(s, "  {inject:<8} node {}: {}", step.node, step.command);
            }
            let _ = writeln!(s, "  (hold {} s)", self.cfg.hold_s);
            for step in steps(&self.cfg, &view, &victims, heal)? {
                let _ = writeln!(s, "  {heal:<8} node {}: {}", step.node, step.command);
            }
            let _ = writeln!(s, "  (gap {:.1} s)", planner.gap().as_secs_f64());
        }
        let _ = writeln!(s, "nothing was run.");
        Ok(s)
    }

    /// Runs the drill: namespace, the workload's keys cleared, workload, the seeded faults
    /// through the commands, heal, final reads and verdict. Every command is appended to `out/faults.log` as it runs and
    /// named in the report's notes; the history goes to `out/history.json`. Any fault
    /// injected is healed before this returns, whether the drill passes, fails or is
    /// interrupted with Ctrl-C.
    pub async fn run(&self, out: &Path) -> anyhow::Result<Report> {
        let cfg = &self.cfg;
        let client = self.client()?;
        let view = wait_view(&client, &self.client_cfg.endpoints, Duration::from_secs(30)).await?;
        cfg.validate_members(&view.members)?;
        let copies = u32::try_from(view.members.len().min(3)).unwrap_or(3);
        crate::objects::create_namespace(&client, copies).await?;
        clear_keys(&client).await?;
        let log_path = out.join("faults.log");
        let runner = Runner::new(&log_path, cfg.command_timeout())?;
        let pending: RefCell<Vec<Step>> = RefCell::new(Vec::new());
        let workload = Workload::start(
            &client,
            &self.client_cfg.endpoints,
            WorkloadShape {
                kv_workers: KV_WORKERS,
                object_workers: OBJECT_WORKERS,
                seed: cfg.seed,
            },
        );
        let t0 = workload.t0();
        runner.t0.set(Some(t0));
        let duration = Duration::from_secs(cfg.duration_s);
        let body = async {
            let tl = self.schedule(&client, t0, &runner, &pending).await?;
            tokio::time::sleep(duration.saturating_sub(t0.elapsed())).await;
            anyhow::Ok(tl)
        };
        let outcome = tokio::select! {
            r = body => r,
            _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted (Ctrl-C)")),
        };
        let timeline = match outcome {
            Ok(t) => t,
            Err(e) => {
                let healed = runner.heal_all(&pending).await;
                workload.abort().await;
                return Err(e.context(format!(
                    "drill stopped; {healed}; every command is in {}",
                    log_path.display()
                )));
            }
        };
        let run = RunInfo {
            scenario: cfg.scenario.clone(),
            seed: cfg.seed,
            mode: Mode::Deployed,
        };
        let history_out = out.join("history.json");
        let finished = tokio::select! {
            r = workload.finish(run, &timeline, &history_out) => r,
            _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted (Ctrl-C) during the final reads")),
        };
        let mut report = finished?;
        report.notes.push(format!(
            "deployed cluster: {} faults ({} / {}) at {:?} ms, each held {} s",
            timeline.starts.len(),
            self.scenario.actions().0,
            self.scenario.actions().1,
            timeline.starts.iter().map(|k| k / 1_000_000).collect::<Vec<_>>(),
            cfg.hold_s
        ));
        if !timeline.events.is_empty() {
            report.notes.push(format!("faults: {}", timeline.events.join("; ")));
        }
        let log = runner.log.borrow();
        for line in log.iter().take(NOTED_COMMANDS_MAX) {
            report.notes.push(format!("fault log: {line}"));
        }
        if log.len() > NOTED_COMMANDS_MAX {
            report.notes.push(format!(
                "fault log: ... and {} more commands in {}",
                log.len() - NOTED_COMMANDS_MAX,
                log_path.display()
            ));
        }
        Ok(report)
    }

    /// The faults, one after the other until the run's end is near. Each fault's heal steps
    /// are registered in `pending` before its first command runs, so that whatever stops
    /// this future (a failed command, Ctrl-C) leaves [`Runner::heal_all`] the list.
    async fn schedule(
        &self,
        client: &ArkClient,
        t0: Instant,
        runner: &Runner,
        pending: &RefCell<Vec<Step>>,
    ) -> anyhow::Result<Timeline> {
        let cfg = &self.cfg;
        let (inject, heal) = self.scenario.actions();
        let duration = Duration::from_secs(cfg.duration_s);
        let hold = cfg.hold();
        let mut planner = Planner::new(self.scenario, cfg);
        let mut tl = Timeline::default();
        tokio::time::sleep(FIRST_FAULT_AFTER).await;
        while t0.elapsed() + hold + TAIL_MIN < duration {
            let view = wait_view(client, &self.client_cfg.endpoints, LEADER_WAIT_MAX)
                .await
                .context("waiting for a leader before the next fault")?;
            cfg.validate_members(&view.members)?;
            let (victims, why) = planner.next(&view);
            let ins = steps(cfg, &view, &victims, inject)?;
            let outs = steps(cfg, &view, &victims, heal)?;
            pending.borrow_mut().extend(outs.iter().cloned());
            // One victim after the other: for a site, the first is down a command's time
            // (an ssh round trip) before the last.
            for s in &ins {
                runner.run(s).await?;
            }
            // The fault is in force once its commands have returned: writes acknowledged
            // before then are not a recovery.
            let start = ns_since(t0);
            tl.starts.push(start);
            tokio::time::sleep(hold).await;
            let mut failed = None;
            for s in &outs {
                if let Err(e) = runner.run(s).await {
                    failed.get_or_insert(e);
                } else {
                    pending.borrow_mut().retain(|p| p != s);
                }
            }
            if let Some(e) = failed {
                return Err(e.context("healing a fault"));
            }
            let end = ns_since(t0);
            tl.last_heal = Some(end);
            tl.events.push(format!(
                "{}-{} ms: {inject} of {why}, nodes {victims:?}",
                start / 1_000_000,
                end / 1_000_000
            ));
            tokio::time::sleep(planner.gap()).await;
        }
        Ok(tl)
    }
}

/// Runs the commands: `sh -c` in a process group of its own (so that a timeout kills ssh
/// too, and a Ctrl-C at the terminal does not kill a heal half-way), with a deadline, each
/// logged with its exit status to the log file and kept for the report.
#[derive(Debug)]
struct Runner {
    timeout: Duration,
    file: RefCell<std::fs::File>,
    log: RefCell<Vec<String>>,
    t0: std::cell::Cell<Option<Instant>>,
}

impl Runner {
    fn new(log_path: &Path, timeout: Duration) -> anyhow::Result<Self> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log_path)
            .with_context(|| format!("opening {}", log_path.display()))?;
        Ok(Self {
            timeout,
            file: RefCell::new(file),
            log: RefCell::new(Vec::new()),
            t0: std::cell::Cell::new(None),
        })
    }

    fn record(&self, line: String) {
        // The log file is for post-mortems; the report keeps the same lines.
        let _ = writeln!(self.file.borrow_mut(), "{line}");
        self.log.borrow_mut().push(line);
    }

    /// Runs one step; an error when it cannot start, exits non-zero or times out.
    async fn run(&self, step: &Step) -> anyhow::Result<()> {
        let at = self.t0.get().map_or(0, ns_since) / 1_000_000;
        let began = Instant::now();
        let outcome = run_command(&step.command, self.timeout).await;
        let took = began.elapsed().as_secs_f64();
        let (status, result) = match outcome {
            Ok((0, _)) => ("exit 0".to_owned(), Ok(())),
            Ok((code, stderr)) => (
                format!("exit {code}, stderr: {stderr:?}"),
                Err(anyhow::anyhow!(
                    "`{}` ({} of node {}) exited with {code}: {stderr}",
                    step.command,
                    step.action,
                    step.node
                )),
            ),
            Err(e) => (
                format!("{e:#}"),
                Err(e.context(format!("`{}` ({} of node {})", step.command, step.action, step.node))),
            ),
        };
        self.record(format!(
            "{at} ms: {} node {}: `{}` -> {status} ({took:.2} s)",
            step.action, step.node, step.command
        ));
        result
    }

    /// Runs every pending heal step, whatever fails; says how it went.
    async fn heal_all(&self, pending: &RefCell<Vec<Step>>) -> String {
        let steps: Vec<Step> = pending.borrow_mut().drain(..).collect();
        if steps.is_empty() {
            return "no fault was in force".to_owned();
        }
        let mut failed = Vec::new();
        for s in &steps {
            if self.run(s).await.is_err() {
                failed.push(format!("{} of node {}", s.action, s.node));
            }
        }
        if failed.is_empty() {
            format!("healed the {} faults in force", steps.len())
        } else {
            format!(
                "WARNING: could not heal {} (run it by hand; the cluster may still be degraded)",
                failed.join(", ")
            )
        }
    }
}

/// `sh -c command` with a deadline: its exit code and the tail of its stderr.
async fn run_command(command: &str, timeout: Duration) -> anyhow::Result<(i32, String)> {
    let child = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(command)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .context("cannot run sh")?;
    let pid = child.id();
    match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Ok(out) => {
            let out = out.context("waiting for the command")?;
            let stderr = String::from_utf8_lossy(&out.stderr);
            let tail_from = stderr.len().saturating_sub(STDERR_TAIL_BYTES);
            let tail_from = (tail_from..stderr.len())
                .find(|i| stderr.is_char_boundary(*i))
                .unwrap_or(stderr.len());
            // Killed by a signal: 128 + the signal, as a shell says.
            let code = out.status.code().unwrap_or_else(|| {
                use std::os::unix::process::ExitStatusExt;
                128 + out.status.signal().unwrap_or(0)
            });
            Ok((code, stderr[tail_from..].trim().to_owned()))
        }
        Err(_) => {
            if let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()) {
                // The whole group: sh and what it started (ssh).
                let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
            }
            bail!("timed out after {timeout:?} (its process group was killed)")
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const GOOD: &str = r#"
client_config = "client.toml"
scenario = "leader-kill"
duration_s = 20
hold_s = 1.5
gap_s = [3, 5]
[actions]
kill  = "ssh {host} sudo systemctl kill -s KILL arkd"
start = "ssh {host} sudo systemctl start arkd"
isolate = "ssh {host} sudo ark-drill-isolate {peer_ips} # {peers}"
heal = "ssh {host} sudo nft delete table inet arkdrill"
[[nodes]]
id = 1
host = "a1"
[[nodes]]
id = 2
host = "b1"
[[nodes]]
id = 3
host = "c1"
"#;

    fn cfg(text: &str) -> DrillConfig {
        DrillConfig::parse(text, Path::new("/etc/ark")).unwrap()
    }

    fn err(text: &str) -> String {
        match DrillConfig::parse(text, Path::new("/etc/ark")) {
            Err(e) => e.0,
            Ok(c) => c.validate().unwrap_err().0,
        }
    }

    fn view(leader: u64) -> ClusterView {
        let m = |id: u64, site: &str| Member {
            id,
            site: site.into(),
            peer_addr: format!("10.0.0.{id}:7000"),
        };
        ClusterView {
            members: vec![m(1, "a"), m(2, "b"), m(3, "c")],
            leader,
            term: 7,
        }
    }

    #[test]
    fn a_good_config_validates_and_resolves_the_client_config() {
        let c = cfg(GOOD);
        assert_eq!(c.validate().unwrap(), Scenario::LeaderKill);
        assert_eq!(c.client_config, Path::new("/etc/ark/client.toml"));
        assert_eq!(c.seed, 1);
        assert_eq!(c.hold_s, 1.5);
        assert_eq!(c.gap_s, [3.0, 5.0]);
        c.validate_members(&view(1).members).unwrap();
    }

    #[test]
    fn placeholders_expand_and_braces_escape() {
        let vars: BTreeMap<String, String> = [("host", "a1"), ("id", "1")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        assert_eq!(expand("ssh {host} kill {id}", &vars).unwrap(), "ssh a1 kill 1");
        assert_eq!(expand("awk '{{ print }}' {id}", &vars).unwrap(), "awk '{ print }' 1");
        assert!(expand("ssh {nope}", &vars)
            .unwrap_err()
            .contains("unknown placeholder {nope}"));
        assert!(expand("x ${HOME:-/}", &vars).unwrap_err().contains("not a placeholder"));
        assert!(expand("x {host", &vars).unwrap_err().contains("unclosed"));
        assert!(expand("x }", &vars).unwrap_err().contains("lone"));
    }

    #[test]
    fn steps_fill_status_values_and_peers_outside_the_group() {
        let c = cfg(GOOD);
        let s = steps(&c, &view(2), &[2], "isolate").unwrap();
        assert_eq!(
            s,
            vec![Step {
                node: 2,
                action: "isolate",
                command: "ssh b1 sudo ark-drill-isolate 10.0.0.1 10.0.0.3 # 10.0.0.1:7000 10.0.0.3:7000".into(),
            }]
        );
        let kill = steps(&c, &view(2), &[1, 3], "kill").unwrap();
        assert_eq!(kill[1].command, "ssh c1 sudo systemctl kill -s KILL arkd");
    }

    #[test]
    fn unknown_scenario_missing_action_and_unknown_placeholder_are_refused() {
        assert!(err(&GOOD.replace("leader-kill", "meteor")).contains("unknown scenario \"meteor\""));
        let e = err(&GOOD.replace("scenario = \"leader-kill\"", "scenario = \"pause\""));
        assert!(e.contains("needs the action `pause`"), "{e}");
        let e = err(&GOOD.replace("{host} sudo systemctl start", "{hots} sudo systemctl start"));
        assert!(e.contains("unknown placeholder {hots} for node 1"), "{e}");
        // A key only some nodes have is unknown for the others.
        let e = err(&GOOD.replace("host = \"c1\"", "hostname = \"c1\""));
        assert!(e.contains("unknown placeholder {host} for node 3"), "{e}");
        assert!(err(&GOOD.replace("[actions]", "[actions]\nreboot = \"x\"")).contains("unknown field `reboot`"));
        assert!(err(&GOOD.replace("duration_s = 20", "duraton_s = 20")).contains("unknown field"));
        assert!(err(&GOOD.replace("host = \"a1\"", "site = \"x\"\nhost = \"a1\"")).contains("cannot be set"));
        assert!(err(&GOOD.replace("host = \"a1\"", "host = 1")).contains("must be a string"));
        assert!(err(&GOOD.replace("id = 2", "id = 1")).contains("listed twice"));
        assert!(err(&GOOD.replace("gap_s = [3, 5]", "gap_s = [5, 3]")).contains("min <= max"));
        assert!(err(&GOOD.replace("duration_s = 20", "duration_s = 5")).contains("no room for a fault"));
    }

    #[test]
    fn node_ids_must_match_the_membership() {
        let c = cfg(&GOOD.replace("id = 3", "id = 9"));
        c.validate().unwrap();
        let e = c.validate_members(&view(1).members).unwrap_err().0;
        assert!(e.contains("id 9 is not a member"), "{e}");
        let c = cfg(GOOD);
        let mut v = view(1);
        v.members.push(Member {
            id: 4,
            site: "d".into(),
            peer_addr: "x:1".into(),
        });
        assert!(c
            .validate_members(&v.members)
            .unwrap_err()
            .0
            .contains("member 4 (site d) has no [[nodes]]"));
    }

    #[test]
    fn status_values_with_shell_characters_are_refused() {
        let c = cfg(GOOD);
        let mut v = view(1);
        v.members[2].peer_addr = "$(reboot):7000".into();
        assert!(steps(&c, &v, &[1], "isolate").is_err());
    }

    #[test]
    fn planner_picks_victims_by_scenario() {
        let c = cfg(GOOD);
        let mut p = Planner::new(Scenario::LeaderKill, &c);
        assert_eq!(p.next(&view(3)).0, vec![3]);
        let mut p = Planner::new(Scenario::RollingRestart, &c);
        let order: Vec<u64> = (0..4).map(|_| p.next(&view(2)).0[0]).collect();
        assert_eq!(order, vec![1, 3, 2, 1]);
        let mut p = Planner::new(Scenario::SitePartition, &c);
        assert_eq!(p.next(&view(2)).0, vec![2]);
        assert_eq!(p.next(&view(2)).0, vec![2]);
        assert_ne!(p.next(&view(2)).0, vec![2]);
        for _ in 0..20 {
            let g = p.gap().as_secs_f64();
            assert!((3.0..=5.0).contains(&g), "{g}");
        }
        // Seeded: the same seed gives the same random victims.
        let picks = |seed: u64| {
            let mut c = cfg(GOOD);
            c.seed = seed;
            let mut p = Planner::new(Scenario::RandomKill, &c);
            (0..8).map(|_| p.next(&view(1)).0[0]).collect::<Vec<_>>()
        };
        assert_eq!(picks(5), picks(5));
    }

    #[tokio::test]
    async fn a_failing_or_slow_command_is_an_error_and_is_logged() {
        let dir = tempfile::tempdir().unwrap();
        let r = Runner::new(&dir.path().join("faults.log"), Duration::from_millis(300)).unwrap();
        let step = |c: &str| Step {
            node: 1,
            action: "kill",
            command: c.into(),
        };
        r.run(&step("true")).await.unwrap();
        let e = r.run(&step("echo nope >&2; exit 3")).await.unwrap_err();
        assert!(format!("{e:#}").contains("exited with 3: nope"), "{e:#}");
        let e = r.run(&step("sleep 5")).await.unwrap_err();
        assert!(format!("{e:#}").contains("timed out"), "{e:#}");
        let log = std::fs::read_to_string(dir.path().join("faults.log")).unwrap();
        assert_eq!(log.lines().count(), 3, "{log}");
        assert!(log.contains("`true` -> exit 0"), "{log}");
        assert!(log.contains("exit 3, stderr: \"nope\""), "{log}");
    }
}
