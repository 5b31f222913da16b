//! The `ark` command line: clap definitions and dispatch. Exit codes: 0 success, 1 failure,
//! 2 usage error. Human output by default, JSON with `--json` where offered.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use ark_proto::v1::NodeSpec;
use clap::{Args, Parser, Subcommand};

use crate::bench;
use crate::certs;
use crate::client::ArkClient;
use crate::config::ClientConfig;
use crate::demo;
use crate::objects_cli::{self, ObjectCmd};
use crate::playground::{self, Layout};

/// Ark: keeps critical data alive through the loss of a data centre.
#[derive(Debug, Parser)]
#[command(name = "ark", version)]
pub struct Cli {
    /// Client config (endpoints and TLS files), e.g. the `client.toml` a playground writes.
    #[arg(long, global = true, env = "ARK_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Talk to this node only (`host:port`), overriding the config's endpoint list.
    #[arg(long, global = true, value_name = "HOST:PORT")]
    endpoint: Option<String>,
    /// Give up on one operation after this many milliseconds, retries included. Object
    /// transfers, restores, verify and scrub have no overall limit unless this is given (they
    /// still fail when a transfer stalls).
    #[arg(long, global = true, value_name = "MS")]
    timeout_ms: Option<u64>,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Show the cluster: leader, term and every node with its site, role and health.
    Status {
        /// Print JSON: {leader_id, term, nodes: [{id, site, role, client_addr, healthy,
        /// failure_risk, at_risk}], queue: {ordering, chunks, head}} (risk and queue from the
        /// leader only).
        #[arg(long)]
        json: bool,
    },
    /// Show the telemetry the leader holds: per node, the latest value of each series
    /// (link round trips and throughput, RPCs in flight, timeouts, errors, log fsync
    /// latency, free space, CPU, SMART) and how many points its window holds.
    Telemetry {
        /// Print JSON: {leader_id, interval_ms, window_points, nodes: [{node_id,
        /// last_report_age_ms, series: [{name, latest, latest_unix_ms, points}]}]}.
        #[arg(long)]
        json: bool,
    },
    /// Small linearizable key/value records.
    #[command(subcommand)]
    Kv(KvCmd),
    /// Cluster membership.
    #[command(subcommand)]
    Members(MembersCmd),
    /// Create the cluster CA and node or client certificates.
    #[command(subcommand)]
    Certs(CertsCmd),
    /// A local multi-site cluster of real arkd processes on loopback.
    #[command(subcommand)]
    Playground(PlaygroundCmd),
    /// Guided tour: start a playground, lose the leader's site, measure failover, verify data.
    Demo {
        /// Number of sites (one node each).
        #[arg(long, default_value_t = 3)]
        sites: u32,
        /// Print the report as JSON at the end.
        #[arg(long)]
        json: bool,
    },
    /// Load generators.
    #[command(subcommand)]
    Bench(BenchCmd),
    /// Failover drills against a deployed cluster, faults as shell commands from a drill
    /// config: runs `ark-chaos drill ARGS...` (installed next to `ark`, or on PATH). See
    /// `ark drill --help` and docs/drills.md.
    #[command(disable_help_flag = true)]
    Drill {
        /// Passed to `ark-chaos drill`, e.g. `--config drill.toml --out DIR [--dry-run]`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<std::ffi::OsString>,
    },
    #[command(flatten)]
    Objects(ObjectCmd),
}

#[derive(Debug, Subcommand)]
enum KvCmd {
    /// Write a value.
    Put {
        /// Key (non-empty, at most 1024 bytes).
        key: String,
        /// Value (at most 64 KiB).
        value: String,
    },
    /// Read a value (linearizable unless --stale).
    Get {
        /// Key.
        key: String,
        /// Read this node's replica without confirming leadership.
        #[arg(long)]
        stale: bool,
    },
    /// Delete a key.
    Del {
        /// Key.
        key: String,
    },
    /// List keys with a prefix.
    Ls {
        /// Prefix (empty: all keys).
        #[arg(default_value = "")]
        prefix: String,
        /// Also print values.
        #[arg(long)]
        values: bool,
        /// At most this many keys.
        #[arg(long, default_value_t = 10_000)]
        limit: u32,
        /// Read this node's replica without confirming leadership.
        #[arg(long)]
        stale: bool,
    },
}

#[derive(Debug, Subcommand)]
enum MembersCmd {
    /// List members with role and health.
    Ls {
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Add a running node as a learner (it catches up from the log or a snapshot).
    Add {
        /// Its node id.
        id: u64,
        /// Its site.
        #[arg(long)]
        site: String,
        /// Its QUIC peer address.
        #[arg(long)]
        peer_addr: String,
        /// Its gRPC client address.
        #[arg(long)]
        client_addr: String,
        /// Answer only once it has caught up.
        #[arg(long)]
        wait: bool,
    },
    /// Make a learner a voter.
    Promote {
        /// Node id.
        id: u64,
    },
    /// Remove a node from the cluster.
    Remove {
        /// Node id.
        id: u64,
    },
}

#[derive(Debug, Subcommand)]
enum CertsCmd {
    /// Create a cluster CA (ca.pem, ca.key) in DIR.
    Ca {
        /// Output folder.
        #[arg(long)]
        dir: PathBuf,
    },
    /// Issue node-<ID>.pem/.key signed by the CA in --ca-dir.
    Node {
        /// Node id.
        id: u64,
        /// Folder with ca.pem and ca.key.
        #[arg(long)]
        ca_dir: PathBuf,
        /// Output folder (default: the CA folder).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Extra DNS names or IP addresses for the certificate (repeatable).
        #[arg(long = "name")]
        names: Vec<String>,
    },
    /// Issue NAME.pem/.key for a client.
    Client {
        /// Client name.
        name: String,
        /// Folder with ca.pem and ca.key.
        #[arg(long)]
        ca_dir: PathBuf,
        /// Output folder (default: the CA folder).
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
enum PlaygroundCmd {
    /// Start a playground and leave it running.
    Up(UpArgs),
    /// Stop every node of a playground.
    Down {
        /// The playground folder.
        #[arg(long)]
        dir: PathBuf,
    },
    /// Restart one stopped node of a playground.
    Start {
        /// The playground folder.
        #[arg(long)]
        dir: PathBuf,
        /// Node id.
        #[arg(long)]
        node: u64,
    },
    /// Start one more node (not yet a member; add it with `ark members add`).
    AddNode {
        /// The playground folder.
        #[arg(long)]
        dir: PathBuf,
        /// Its site.
        #[arg(long)]
        site: String,
        /// Snapshot after this many applied entries.
        #[arg(long, default_value_t = 20_000)]
        snapshot_every: u64,
        /// Print the new node as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Args)]
struct UpArgs {
    /// Folder for configs, certificates, data and logs (must not hold a playground).
    #[arg(long)]
    dir: PathBuf,
    /// Number of sites.
    #[arg(long, default_value_t = 3)]
    sites: u32,
    /// Nodes in each site.
    #[arg(long, default_value_t = 1)]
    nodes_per_site: u32,
    /// Snapshot and compact the log after this many applied entries.
    #[arg(long, default_value_t = 20_000)]
    snapshot_every: u64,
}

#[derive(Debug, Subcommand)]
enum BenchCmd {
    /// Closed-loop small writes; prints throughput and p50/p99/p999 latency.
    Kv {
        /// Concurrent clients.
        #[arg(long, default_value_t = 64)]
        clients: usize,
        /// Connections the clients share.
        #[arg(long, default_value_t = 8)]
        conns: usize,
        /// Bytes per value.
        #[arg(long, default_value_t = 1024)]
        value_bytes: usize,
        /// Seconds to run.
        #[arg(long, default_value_t = 10)]
        duration: u64,
        /// Keys per client, overwritten round-robin.
        #[arg(long, default_value_t = 1000)]
        keys_per_client: usize,
        /// Load etcd instead of Ark: its gRPC endpoint, e.g. http://127.0.0.1:2379. With
        /// https://, the CA, certificate and key of --config are used (server name localhost).
        #[arg(long, value_name = "URL")]
        etcd: Option<String>,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// The risk-aware replication experiment: on fresh 3-site playgrounds, node 2 replays a
    /// failing drive's SMART record while objects are written to an async namespace, then
    /// dies; reports the acknowledged bytes lost and below policy with the repair queue in
    /// `fifo` and in `expected-loss` order, per seed.
    Risk {
        /// Backblaze-layout CSV (entity,date,failure,smart_*_raw...), plain or gzip.
        #[arg(long, value_name = "FILE")]
        backblaze: PathBuf,
        /// The failing drive node 2 replays.
        #[arg(long, default_value = "6XW00YE0")]
        entity: String,
        /// Seeds (comma-separated); each runs both orderings.
        #[arg(long, value_delimiter = ',', default_values_t = vec![0u64, 1, 2])]
        seeds: Vec<u64>,
        /// Milliseconds per replayed day.
        #[arg(long, default_value_t = 2000)]
        day_ms: u64,
        /// Repair queue budget, MiB/s.
        #[arg(long, default_value_t = 3)]
        repair_mib_per_s: u64,
        /// Write rate over both writers, MiB/s.
        #[arg(long, default_value_t = 4.0)]
        write_mib_per_s: f64,
        /// Bytes per object.
        #[arg(long, default_value_t = 512 * 1024)]
        object_bytes: usize,
        /// Working directory (default: a temp dir, removed afterwards).
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// The pre-staging experiment: on fresh 3-site x 2-node playgrounds with a delay between
    /// sites, hot objects are read through the leader, then the leader's site is killed;
    /// reports the first read of each hot object through the successor the leader chose,
    /// with `risk.prestage` off and on, per seed.
    Prestage {
        /// Seeds (comma-separated); each runs with pre-staging off and on.
        #[arg(long, value_delimiter = ',', default_values_t = vec![0u64, 1, 2])]
        seeds: Vec<u64>,
        /// Hot objects.
        #[arg(long, default_value_t = 12)]
        objects: usize,
        /// Bytes per hot object.
        #[arg(long, default_value_t = 2 * 1024 * 1024)]
        object_bytes: usize,
        /// One-way delay between sites, ms.
        #[arg(long, default_value_t = 20)]
        wan_delay_ms: u64,
        /// Working directory (default: a temp dir, removed afterwards).
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
}

/// Entry point of the `ark` binary.
pub fn main() -> ExitCode {
    // `ark drill ...` is `ark-chaos drill ...`: every argument after `drill` is the drill's
    // (its `--config` is the drill config, not ark's client config), so it is not parsed here.
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if args.get(1).is_some_and(|a| a == "drill") {
        return crate::drill::exec(&args[2..]);
    }
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("ARK_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(dispatch(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn client(cli: &Cli) -> anyhow::Result<ArkClient> {
    let path = cli
        .config
        .as_ref()
        .context("no client config: pass --config FILE (a playground writes DIR/client.toml) or set ARK_CONFIG")?;
    let mut cfg = ClientConfig::load(path)?;
    if let Some(ep) = &cli.endpoint {
        cfg.endpoints = vec![ep.clone()];
    }
    if let Some(t) = cli.timeout_ms {
        cfg.op_timeout_ms = t;
    }
    Ok(ArkClient::new(&cfg)?)
}

async fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    match &cli.command {
        Cmd::Drill { .. } => {
            // Reached only with global options before `drill` (`ark --config F drill`).
            bail!("ark's options do not apply to `ark drill`: write `ark drill --config DRILL.toml ...` (the drill config names the client config)");
        }
        Cmd::Objects(cmd) => {
            let c = client(&cli)?.with_object_timeout(cli.timeout_ms.map(Duration::from_millis));
            return objects_cli::run(&c, cmd).await;
        }
        Cmd::Status { json } => {
            let c = client(&cli)?;
            let s = match &cli.endpoint {
                Some(ep) => c.status_of(ep).await?,
                None => c.status().await?,
            };
            if *json {
                let nodes: Vec<_> = s
                    .nodes
                    .iter()
                    .map(|n| {
                        serde_json::json!({
                            "id": n.id, "site": n.site, "role": n.role, "client_addr": n.client_addr,
                            "peer_addr": n.peer_addr, "healthy": n.healthy, "matched_index": n.matched_index,
                            "failure_risk": n.failure_risk, "risk_days": n.risk_days, "at_risk": n.at_risk,
                            "load_bytes_per_second": n.load_bytes_per_second,
                            "load_forecast_min": n.load_forecast_min, "load_trough_in": n.load_trough_in,
                        })
                    })
                    .collect();
                let head: Vec<_> = s
                    .queue_head
                    .iter()
                    .map(|q| {
                        serde_json::json!({
                            "object": q.object, "chunk": q.chunk, "bytes": q.bytes, "holders": q.holders,
                            "loss_probability": q.loss_probability, "score": q.score,
                        })
                    })
                    .collect();
                let v = serde_json::json!({
                    "leader_id": s.leader_id, "term": s.term, "answered_by": s.node_id, "state": s.state,
                    "last_log_index": s.last_log_index, "applied_index": s.applied_index, "nodes": nodes,
                    "queue": {"ordering": s.queue_ordering, "chunks": s.queue_chunks, "head": head},
                    "risk_model": s.risk_model,
                    "prestage": {"node": (s.prestage_node != 0).then_some(s.prestage_node), "objects": s.prestage_objects},
                });
                outln!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                match s.leader_id {
                    Some(l) => outln!("leader: node {l}   term: {}   (answered by node {})", s.term, s.node_id),
                    None => outln!("leader: none (election in progress)   term: {}", s.term),
                }
                outln!(
                    "{:<5} {:<10} {:<8} {:<22} {:<8} {:<9} FAILURE RISK",
                    "ID",
                    "SITE",
                    "ROLE",
                    "CLIENT",
                    "HEALTHY",
                    "MATCHED"
                );
                let leader_answered = s.state == "leader";
                for n in &s.nodes {
                    let star = if Some(n.id) == s.leader_id { "*" } else { "" };
                    let risk = match n.failure_risk {
                        Some(p) => format!(
                            "{:.3} ({} days){}",
                            p,
                            n.risk_days,
                            if n.at_risk { " AT RISK" } else { "" }
                        ),
                        None if leader_answered => "- (no SMART data or no forecaster)".to_string(),
                        None => "- (only the leader knows)".to_string(),
                    };
                    outln!(
                        "{:<5} {:<10} {:<8} {:<22} {:<8} {:<9} {}",
                        format!("{}{star}", n.id),
                        n.site,
                        n.role,
                        n.client_addr,
                        if n.healthy { "yes" } else { "no" },
                        n.matched_index,
                        risk
                    );
                }
                if leader_answered {
                    if s.prestage_node != 0 {
                        outln!(
                            "hot set: {} objects pre-staged on node {} (the follower most likely to take over)",
                            s.prestage_objects,
                            s.prestage_node
                        );
                    }
                    outln!(
                        "repair queue ({}): {} chunks; failure forecaster: {}",
                        s.queue_ordering,
                        s.queue_chunks,
                        if s.risk_model.is_empty() {
                            "none"
                        } else {
                            s.risk_model.as_str()
                        }
                    );
                    for n in &s.nodes {
                        if let (Some(now), Some(min)) = (n.load_bytes_per_second, n.load_forecast_min) {
                            outln!(
                                "  node {} peer traffic {:.0} B/s, forecast low {:.0} B/s in {} intervals",
                                n.id,
                                now,
                                min,
                                n.load_trough_in
                            );
                        }
                    }
                    for q in &s.queue_head {
                        outln!(
                            "  {:<40} chunk {}  {} B  holders {:?}  P(loss) {:.3}  score {:.3}",
                            q.object,
                            &q.chunk[..q.chunk.len().min(12)],
                            q.bytes,
                            q.holders,
                            q.loss_probability,
                            q.score
                        );
                    }
                }
            }
        }
        Cmd::Telemetry { json } => {
            let t = client(&cli)?.telemetry().await?;
            if *json {
                let nodes: Vec<_> = t
                    .nodes
                    .iter()
                    .map(|n| {
                        let series: Vec<_> = n
                            .series
                            .iter()
                            .map(|s| {
                                serde_json::json!({
                                    "name": s.name, "latest": s.latest,
                                    "latest_unix_ms": s.latest_unix_ms, "points": s.points,
                                })
                            })
                            .collect();
                        serde_json::json!({
                            "node_id": n.node_id, "last_report_age_ms": n.last_report_age_ms, "series": series,
                        })
                    })
                    .collect();
                let v = serde_json::json!({
                    "leader_id": t.leader_id, "interval_ms": t.interval_ms,
                    "window_points": t.window_points, "nodes": nodes,
                });
                outln!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                outln!(
                    "leader: node {}   interval: {} ms   window: {} points per series",
                    t.leader_id,
                    t.interval_ms,
                    t.window_points
                );
                for n in &t.nodes {
                    outln!(
                        "\nnode {}   last report {:.1} s ago",
                        n.node_id,
                        n.last_report_age_ms as f64 / 1000.0
                    );
                    outln!("  {:<36} {:>18} {:>8}", "SERIES", "LATEST", "POINTS");
                    for s in &n.series {
                        outln!("  {:<36} {:>18} {:>8}", s.name, format_value(s.latest), s.points);
                    }
                }
            }
        }
        Cmd::Kv(k) => {
            let c = client(&cli)?;
            match k {
                KvCmd::Put { key, value } => {
                    let rev = c.put(key, value.as_bytes()).await?;
                    outln!("OK revision {rev}");
                }
                KvCmd::Get { key, stale } => match c.get(key, *stale).await? {
                    Some(v) => outln!("{}", String::from_utf8_lossy(&v.value)),
                    None => {
                        eprintln!("key {key:?} not found");
                        return Ok(ExitCode::from(1));
                    }
                },
                KvCmd::Del { key } => {
                    let existed = c.delete(key).await?;
                    outln!(
                        "{}",
                        if existed {
                            "deleted"
                        } else {
                            "not found (nothing deleted)"
                        }
                    );
                }
                KvCmd::Ls {
                    prefix,
                    values,
                    limit,
                    stale,
                } => {
                    let (items, truncated) = c.list(prefix, *limit, *stale).await?;
                    for (k, v) in &items {
                        if *values {
                            outln!("{k}\t{}", String::from_utf8_lossy(&v.value));
                        } else {
                            outln!("{k}");
                        }
                    }
                    if truncated {
                        eprintln!("(more keys match; raise --limit)");
                    }
                }
            }
        }
        Cmd::Members(m) => {
            let c = client(&cli)?;
            let show = |r: ark_proto::v1::MembershipResponse| {
                outln!(
                    "OK at revision {}: voters {:?}, learners {:?}",
                    r.revision,
                    r.voters,
                    r.learners
                );
            };
            match m {
                MembersCmd::Ls { json } => {
                    let s = c.status().await?;
                    if *json {
                        let nodes: Vec<_> = s
                            .nodes
                            .iter()
                            .map(|n| {
                                serde_json::json!({"id": n.id, "site": n.site, "role": n.role,
                                "client_addr": n.client_addr, "peer_addr": n.peer_addr, "healthy": n.healthy})
                            })
                            .collect();
                        outln!("{}", serde_json::to_string_pretty(&nodes)?);
                    } else {
                        for n in &s.nodes {
                            outln!(
                                "{}\t{}\t{}\tpeer {}\tclient {}\t{}",
                                n.id,
                                n.site,
                                n.role,
                                n.peer_addr,
                                n.client_addr,
                                if n.healthy { "healthy" } else { "unhealthy" }
                            );
                        }
                    }
                }
                MembersCmd::Add {
                    id,
                    site,
                    peer_addr,
                    client_addr,
                    wait,
                } => show(
                    c.add_learner(
                        NodeSpec {
                            id: *id,
                            site: site.clone(),
                            peer_addr: peer_addr.clone(),
                            client_addr: client_addr.clone(),
                        },
                        *wait,
                    )
                    .await?,
                ),
                MembersCmd::Promote { id } => show(c.promote(*id).await?),
                MembersCmd::Remove { id } => show(c.remove(*id).await?),
            }
        }
        Cmd::Certs(c) => match c {
            CertsCmd::Ca { dir } => {
                let p = certs::create_ca(dir)?;
                outln!("created {} and {}", p.display(), dir.join("ca.key").display());
            }
            CertsCmd::Node { id, ca_dir, out, names } => {
                let (c, k) = certs::create_node(ca_dir, out.as_ref().unwrap_or(ca_dir), *id, names)?;
                outln!("created {} and {}", c.display(), k.display());
            }
            CertsCmd::Client { name, ca_dir, out } => {
                let (c, k) = certs::create_client(ca_dir, out.as_ref().unwrap_or(ca_dir), name)?;
                outln!("created {} and {}", c.display(), k.display());
            }
        },
        Cmd::Playground(p) => match p {
            PlaygroundCmd::Up(a) => {
                let layout = Layout {
                    sites: a.sites,
                    nodes_per_site: a.nodes_per_site,
                    snapshot_logs_since_last: a.snapshot_every,
                    ..Layout::default()
                };
                let (pg, _children) = playground::up(&a.dir, &layout).await?;
                for n in &pg.nodes {
                    outln!(
                        "node {} ({}) pid {} client {} peer {}",
                        n.id,
                        n.site,
                        n.pid,
                        n.client_addr,
                        n.peer_addr
                    );
                }
                outln!(
                    "playground is up. Try: ark --config {} status",
                    a.dir.join("client.toml").display()
                );
            }
            PlaygroundCmd::Down { dir } => {
                for s in playground::down(dir, Duration::from_secs(10))? {
                    outln!("node {} (pid {}): {}", s.id, s.pid, s.outcome);
                }
            }
            PlaygroundCmd::Start { dir, node } => {
                let (n, _child) = playground::start_node(dir, *node)?;
                outln!("node {} restarted, pid {}", n.id, n.pid);
            }
            PlaygroundCmd::AddNode {
                dir,
                site,
                snapshot_every,
                json,
            } => {
                let (n, _child) = playground::add_node(dir, site, *snapshot_every)?;
                if *json {
                    outln!("{}", serde_json::to_string(&n)?);
                } else {
                    outln!(
                        "node {} started (pid {}); add it with: ark --config {} members add {} --site {} --peer-addr {} --client-addr {}",
                        n.id,
                        n.pid,
                        dir.join("client.toml").display(),
                        n.id,
                        n.site,
                        n.peer_addr,
                        n.client_addr
                    );
                }
            }
        },
        Cmd::Demo { sites, json } => {
            if *sites < 3 {
                bail!("the demo needs at least 3 sites so that a majority survives the loss of one");
            }
            let say = |s: &str| eprintln!("{s}");
            let r = demo::run(*sites, &say).await?;
            if *json {
                outln!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                outln!(
                    "failover: site {} lost (leader node {}), node {} took over; writes succeeded again after {} ms; {} acknowledged writes, {} lost",
                    r.lost_site, r.old_leader, r.new_leader, r.failover_ms, r.acknowledged_writes, r.lost_writes
                );
            }
            if r.lost_writes > 0 {
                return Ok(ExitCode::from(1));
            }
        }
        Cmd::Bench(BenchCmd::Risk {
            backblaze,
            entity,
            seeds,
            day_ms,
            repair_mib_per_s,
            write_mib_per_s,
            object_bytes,
            dir,
            json,
        }) => {
            let tmp = tempfile::Builder::new().prefix("ark-bench-risk-").tempdir()?;
            let dir = dir.clone().unwrap_or_else(|| tmp.path().to_path_buf());
            let params = crate::risk_bench::Params {
                backblaze: backblaze.clone(),
                entity: entity.clone(),
                seeds: seeds.clone(),
                day_ms: *day_ms,
                repair_mib_per_s: *repair_mib_per_s,
                write_mib_per_s: *write_mib_per_s,
                object_bytes: *object_bytes,
                dir,
            };
            let quiet = *json;
            let say = move |l: &str| {
                if !quiet {
                    outln!("{l}");
                }
            };
            let reports = crate::risk_bench::run(&params, &say).await?;
            if *json {
                outln!("{}", serde_json::to_string_pretty(&reports)?);
            }
        }
        Cmd::Bench(BenchCmd::Prestage {
            seeds,
            objects,
            object_bytes,
            wan_delay_ms,
            dir,
            json,
        }) => {
            let tmp = tempfile::Builder::new().prefix("ark-bench-prestage-").tempdir()?;
            let params = crate::risk_bench::PrestageParams {
                seeds: seeds.clone(),
                objects: *objects,
                object_bytes: *object_bytes,
                wan_delay_ms: *wan_delay_ms,
                dir: dir.clone().unwrap_or_else(|| tmp.path().to_path_buf()),
            };
            let quiet = *json;
            let say = move |l: &str| {
                if !quiet {
                    outln!("{l}");
                }
            };
            let reports = crate::risk_bench::run_prestage(&params, &say).await?;
            if *json {
                outln!("{}", serde_json::to_string_pretty(&reports)?);
            }
        }
        Cmd::Bench(BenchCmd::Kv {
            clients,
            conns,
            value_bytes,
            duration,
            keys_per_client,
            etcd,
            json,
        }) => {
            let target = match etcd {
                Some(url) => {
                    let tls = if url.starts_with("https://") {
                        let path = cli
                            .config
                            .as_ref()
                            .context("an https etcd URL needs --config for its TLS files")?;
                        let cfg = ClientConfig::load(path)?;
                        let read =
                            |p: &std::path::Path| std::fs::read(p).with_context(|| format!("reading {}", p.display()));
                        Some(
                            tonic::transport::ClientTlsConfig::new()
                                .ca_certificate(tonic::transport::Certificate::from_pem(read(&cfg.ca)?))
                                .identity(tonic::transport::Identity::from_pem(read(&cfg.cert)?, read(&cfg.key)?))
                                .domain_name("localhost"),
                        )
                    } else {
                        None
                    };
                    bench::Target::Etcd { url: url.clone(), tls }
                }
                None => bench::Target::Ark(client(&cli)?),
            };
            let r = bench::run(
                target,
                &bench::Params {
                    clients: *clients,
                    conns: *conns,
                    value_bytes: *value_bytes,
                    duration: Duration::from_secs(*duration),
                    keys_per_client: *keys_per_client,
                },
            )
            .await?;
            if *json {
                outln!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                outln!(
                    "{}: {} clients, {} conns, {} B values, {:.1} s: {} ok, {} errors, {:.0} ops/s, latency ms p50 {:.2} p99 {:.2} p999 {:.2} max {:.2}",
                    r.target,
                    r.clients,
                    r.conns,
                    r.value_bytes,
                    r.duration_s,
                    r.ops,
                    r.errors,
                    r.throughput_ops_per_s,
                    r.latency_ms.p50,
                    r.latency_ms.p99,
                    r.latency_ms.p999,
                    r.latency_ms.max
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A telemetry value for a terminal: integers as such, small and large numbers readably.
fn format_value(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{v:.0}")
    } else if v.abs() >= 1000.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.6}")
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn the_command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn object_commands_parse_and_bad_input_is_a_usage_error() {
        let ok = |args: &[&str]| {
            Cli::try_parse_from(std::iter::once("ark").chain(args.iter().copied()))
                .unwrap_or_else(|e| panic!("{args:?}: {e}"))
        };
        let usage = |args: &[&str]| {
            let e = Cli::try_parse_from(std::iter::once("ark").chain(args.iter().copied()))
                .err()
                .unwrap_or_else(|| panic!("{args:?} must be refused"));
            assert!(e.use_stderr(), "{args:?}: a usage error (exit 2)");
        };
        ok(&["put", "ns/a/b.bin", "-"]);
        ok(&["get", "ns/k", "-o", "out", "--version", "3", "--stale"]);
        ok(&[
            "ns",
            "create",
            "m",
            "--copies",
            "3",
            "--mode",
            "async",
            "--max-lag",
            "5m",
            "--compress",
        ]);
        ok(&["ns", "set", "m", "--compress=false"]);
        ok(&["ns", "set", "m", "--compress", "--priority", "2"]);
        ok(&["restore", "ns", "--to", "/tmp/r", "--at", "2026-11-25T10:00:00Z"]);
        ok(&["restore", "ns", "--to", "/tmp/r", "--at", "1795600800000"]);
        ok(&["verify"]);
        ok(&["verify", "ns", "--json"]);
        ok(&["scrub", "--wait", "--json"]);
        ok(&[
            "--timeout-ms",
            "5000",
            "ls",
            "ns",
            "--prefix",
            "a/",
            "--all-versions",
            "--json",
        ]);
        usage(&["put", "nokey", "f"]);
        usage(&["put", "/k", "f"]);
        usage(&["get", "ns/", "-o", "f"]);
        usage(&["rm", "ns"]);
        usage(&["ns", "create", "m", "--max-lag", "60"]);
        usage(&["ns", "create", "m", "--mode", "eventually"]);
        usage(&["restore", "ns", "--to", "d", "--at", "yesterday"]);
        usage(&["restore", "ns", "--to", "d", "--at", "1", "--version", "2"]);
        usage(&["restore", "ns", "--to", "d", "--parallel", "0"]);
        usage(&["get", "ns/k", "--version", "0"]);
        usage(&["ns", "set", "m"]);
    }
}
