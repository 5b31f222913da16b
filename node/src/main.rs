//! `arkd`: one Ark node. Parses flags and config, installs logging and a panic hook, and
//! calls [`ark_node::run`] with a shutdown future bound to SIGINT/SIGTERM.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser};

/// Set at build time (`ARK_BUILD_TAG=... cargo build`) to tell builds of one version apart:
/// shown by `--version` and in the `ark_build_info` metric. Read here, in the binary, so
/// that changing it relinks only `arkd`.
const BUILD_TAG: Option<&str> = option_env!("ARK_BUILD_TAG");

/// `--version`: the crate version, plus the build tag when there is one.
fn version() -> &'static str {
    static V: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    V.get_or_init(|| match BUILD_TAG {
        Some(t) if !t.is_empty() => format!("{} (build {t})", env!("CARGO_PKG_VERSION")),
        _ => env!("CARGO_PKG_VERSION").to_owned(),
    })
}

/// Ark node daemon.
#[derive(Debug, Parser)]
#[command(
    name = "arkd",
    version,
    about = "Ark node: consensus, storage, replication, client API",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    /// Path of the node's TOML config file (required to run a node).
    #[arg(long, short = 'c', value_name = "FILE")]
    config: Option<PathBuf>,
    /// Validate the config file and exit (0 when valid, 1 with the reason otherwise).
    #[arg(long)]
    check_config: bool,
    /// Print a documented sample config and exit.
    #[arg(long)]
    print_sample_config: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Offline evaluation of the forecasters on trace files (JSON with --json).
    #[command(subcommand)]
    Forecast(ark_forecast::ForecastCmd),
    /// The Raft log's damage record of a stopped node: a node whose log was found corrupt
    /// abstains from elections until a leader gave it back every committed entry.
    #[command(subcommand)]
    LogDamage(LogDamageCmd),
    /// After the loss of a majority: inspect a stopped node's data, or make it the only voter
    /// of a new cluster that keeps its data (see docs/operations.md, "Losing a majority").
    Recover(RecoverArgs),
    /// Metadata snapshots saved with `ark snapshot save`.
    #[command(subcommand)]
    Snapshot(SnapshotCmd),
}

#[derive(Debug, clap::Subcommand)]
enum SnapshotCmd {
    /// Create a new one-node cluster from a snapshot file: checks the file first (a damaged
    /// or truncated file is refused and nothing is written), refuses a data dir that is not
    /// empty, and seeds it with the snapshot's state, its log starting after the snapshot's
    /// index, and this node (id, site, addresses from the config) as the only voter. Then
    /// start it with `arkd -c CONFIG` and add nodes as usual. Object bytes are not in a
    /// snapshot: see docs/operations.md, "Metadata snapshots".
    Restore {
        /// The snapshot file.
        file: PathBuf,
        /// The config of the node that will run on the restored data dir.
        #[arg(long, short = 'c', value_name = "FILE")]
        config: PathBuf,
        /// Where to create the node's data (default: the config's `data_dir`). When it
        /// differs, point `data_dir` at it before starting the node.
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,
    },
}

fn snapshot(cmd: SnapshotCmd) -> Result<(), String> {
    let SnapshotCmd::Restore { file, config, data_dir } = cmd;
    let cfg = ark_node::NodeConfig::load(&config).map_err(|e| e.to_string())?;
    // Every check of the file before anything is created.
    let (info, body) = ark_client::snapshot::read(&file).map_err(|e| e.to_string())?;
    let dir = data_dir.unwrap_or_else(|| cfg.data_dir.clone());
    let at = openraft::LogId::new(
        openraft::CommittedLeaderId::new(info.term, info.index_leader_id),
        info.index,
    );
    let target = ark_node::raft::backup::RestoreTarget {
        node_id: cfg.node_id,
        node: ark_node::raft::ArkNode {
            site: cfg.site.clone(),
            peer_addr: cfg.advertised_peer_addr(),
            client_addr: cfg.advertised_client_addr(),
        },
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    let s = rt
        .block_on(ark_node::raft::backup::restore(&dir, at, body, &target))
        .map_err(|e| e.to_string())?;
    println!(
        "restored {} into {}: index {}, term {}, sha256 {}",
        file.display(),
        dir.display(),
        info.index,
        info.term,
        info.body_sha256_hex()
    );
    println!(
        "  {} keys, {} namespaces, {} object versions, {} chunk records, {} request ids",
        s.keys, s.namespaces, s.objects, s.chunks, s.sessions
    );
    println!(
        "  a new cluster of one voter: node {} (site {}, peer {}, client {})",
        cfg.node_id, target.node.site, target.node.peer_addr, target.node.client_addr
    );
    println!("  taken from cluster {} by node {}", info.cluster_id, info.taken_by);
    if dir != cfg.data_dir {
        println!(
            "  note: {} names data_dir = {}; set it to {} before starting the node",
            config.display(),
            cfg.data_dir.display(),
            dir.display()
        );
    }
    println!(
        "  next: arkd -c {}; object bytes come back only where chunk files are present (check with `ark verify`)",
        config.display()
    );
    Ok(())
}

#[derive(Debug, clap::Subcommand)]
enum LogDamageCmd {
    /// Print the record (exit 0 also when there is none).
    Show {
        /// The node's config file.
        #[arg(long, short = 'c', value_name = "FILE")]
        config: PathBuf,
    },
    /// Forget the record, so that the node votes and campaigns again at its next start.
    /// Only for when every node that could give the entries back is lost: entries this
    /// node acknowledged and lost may then be lost for good.
    Clear {
        /// The node's config file.
        #[arg(long, short = 'c', value_name = "FILE")]
        config: PathBuf,
        /// Required: says that you accept losing the entries the record names.
        #[arg(long)]
        accept_data_loss: bool,
    },
}

fn log_damage(cmd: LogDamageCmd) -> Result<(), String> {
    let (config, clear) = match cmd {
        LogDamageCmd::Show { config } => (config, false),
        LogDamageCmd::Clear {
            config,
            accept_data_loss,
        } => {
            if !accept_data_loss {
                return Err(
                    "clearing the record may lose acknowledged entries; add --accept-data-loss if every \
                            node that could give them back is lost"
                        .into(),
                );
            }
            (config, true)
        }
    };
    let cfg = ark_node::NodeConfig::load(&config).map_err(|e| e.to_string())?;
    // redb refuses a second opener: this fails while the node runs.
    let db = ark_node::raft::store::open_database(&cfg.data_dir)
        .map_err(|e| format!("{e} (is the node still running? stop it first)"))?;
    match ark_node::raft::recovery::read_damage(&db)? {
        None => println!("no damage recorded in {}", cfg.data_dir.display()),
        Some(d) => {
            println!("first entry lost: {}\n{}", d.first_lost, d.detail);
            if clear {
                ark_node::raft::recovery::clear_damage(&db)?;
                println!("record cleared: the node votes and campaigns again at its next start");
            }
        }
    }
    Ok(())
}

// --- `arkd recover` (majority loss) ---

#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("what").required(true).args(["inspect", "force_new_cluster"])))]
struct RecoverArgs {
    /// The stopped node's config file.
    #[arg(long, short = 'c', value_name = "FILE", required_unless_present = "disk")]
    config: Option<PathBuf>,
    /// With --inspect, instead of a config: a node's data dir mounted elsewhere (a lost
    /// node's disk), as `ID=DIR`.
    #[arg(long, value_name = "ID=DIR", conflicts_with_all = ["config", "force_new_cluster"])]
    disk: Option<String>,
    /// Print what the node holds (last log entry, applied index, membership, damage record,
    /// earlier recoveries, copies it lacks) and change nothing. Also for the lost nodes' disks.
    #[arg(long)]
    inspect: bool,
    /// Append a membership of this node alone after its log, so that at its next start it
    /// elects itself and serves; its log, state and chunks are kept. Refused unless the node
    /// is a voter with an undamaged log and no compared node holds a later log.
    #[arg(long)]
    force_new_cluster: bool,
    /// Another stopped node's data to compare with: its config file, or `ID=DIR` (node id
    /// and data dir). Give every other voter whose disk is readable.
    #[arg(long, value_name = "CONFIG|ID=DIR", requires = "force_new_cluster")]
    compare_with: Vec<String>,
    /// Recover even though the checks refuse (entries only other nodes hold are then lost).
    #[arg(long, requires = "force_new_cluster")]
    force: bool,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

/// The node id and data dir of a `--compare-with` (or `--disk`) argument.
fn compare_target(arg: &str) -> Result<(Option<u64>, PathBuf), String> {
    if let Some((id, dir)) = arg.split_once('=') {
        let id: u64 = id
            .parse()
            .map_err(|_| format!("--compare-with {arg}: expected CONFIG or ID=DIR with a numeric node id"))?;
        return Ok((Some(id), PathBuf::from(dir)));
    }
    let path = PathBuf::from(arg);
    if path.is_dir() {
        return Err(format!(
            "--compare-with {arg} is a directory: give it as ID=DIR (the node id it belonged to), or its config file"
        ));
    }
    let cfg = ark_node::NodeConfig::load(&path).map_err(|e| format!("--compare-with {arg}: {e}"))?;
    Ok((Some(cfg.node_id), cfg.data_dir))
}

/// An inspection as text or JSON.
fn render(i: &ark_node::raft::force_new::Inspection, json: bool) -> Result<String, String> {
    if json {
        serde_json::to_string_pretty(i).map_err(|e| e.to_string())
    } else {
        Ok(i.describe())
    }
}

fn recover(args: RecoverArgs) -> Result<(), String> {
    use ark_node::raft::force_new::{check, Disk};
    if let Some(d) = &args.disk {
        let (id, dir) = compare_target(d)?;
        let me = Disk::open(&dir, id)
            .and_then(|mut d| d.inspect())
            .map_err(|e| e.to_string())?;
        println!("{}", render(&me, args.json)?);
        return Ok(());
    }
    let Some(config) = &args.config else {
        return Err("--config FILE is required".into());
    };
    let cfg = ark_node::NodeConfig::load(config).map_err(|e| e.to_string())?;
    let mut disk = Disk::open(&cfg.data_dir, Some(cfg.node_id)).map_err(|e| e.to_string())?;
    let me = disk.inspect().map_err(|e| e.to_string())?;
    if args.inspect {
        println!("{}", render(&me, args.json)?);
        return Ok(());
    }
    let mut others = Vec::new();
    for arg in &args.compare_with {
        let (id, dir) = compare_target(arg)?;
        if dir == cfg.data_dir {
            return Err(format!("--compare-with {arg} is this node's own data dir"));
        }
        let o = Disk::open(&dir, id)
            .and_then(|mut d| d.inspect())
            .map_err(|e| format!("inspecting {}: {e}", dir.display()))?;
        others.push(o);
    }
    let verdict = check(&me, &others);
    if !args.json {
        for l in &verdict.may_lose {
            println!("may be lost: {l}");
        }
    }
    if !verdict.refusals.is_empty() && !args.force {
        return Err(format!(
            "refusing to make node {} the only voter (nothing was changed):\n  {}\n(add --force to do it anyway and \
             lose what only the other nodes hold)",
            cfg.node_id,
            verdict.refusals.join("\n  ")
        ));
    }
    for r in &verdict.refusals {
        eprintln!("warning: overridden by --force: {r}");
    }
    let compared = others
        .iter()
        .map(|o| {
            format!(
                "node {} ({}): last entry {:?}",
                o.node_id.map_or("?".to_string(), |n| n.to_string()),
                o.data_dir.display(),
                o.last_log_id.map(|l| l.index)
            )
        })
        .collect();
    let fallback = ark_node::raft::ArkNode {
        site: cfg.site.clone(),
        peer_addr: cfg.advertised_peer_addr(),
        client_addr: cfg.advertised_client_addr(),
    };
    let rec = disk
        .force_new_cluster(&me, fallback, !verdict.refusals.is_empty(), compared)
        .map_err(|e| e.to_string())?;
    if args.json {
        let out = serde_json::json!({ "recovery": rec, "may_lose": verdict.may_lose, "overridden": verdict.refusals });
        println!("{}", serde_json::to_string_pretty(&out).map_err(|e| e.to_string())?);
    } else {
        println!(
            "node {} is now the only voter (membership entry {}, voters before {:?}); start it normally, then add \
             new nodes (ark members add, promote). Wipe the lost nodes' data dirs: never start them with their old data.",
            cfg.node_id, rec.new_entry.index, rec.previous_voters
        );
    }
    Ok(())
}

fn main() -> ExitCode {
    let parsed = Cli::command()
        .version(version())
        .try_get_matches()
        .and_then(|m| Cli::from_arg_matches(&m));
    let cli = match parsed {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    // Forecasting math (candle) must never take the cores that heartbeats need.
    ark_forecast::cap_compute_threads(1);
    match cli.command {
        Some(Command::Forecast(cmd)) => {
            return match cmd.run() {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::from(1)
                }
            };
        }
        Some(Command::LogDamage(cmd)) => {
            return match log_damage(cmd) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::from(1)
                }
            };
        }
        Some(Command::Recover(args)) => {
            return match recover(args) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::from(1)
                }
            };
        }
        Some(Command::Snapshot(cmd)) => {
            return match snapshot(cmd) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::from(1)
                }
            };
        }
        None => {}
    }
    if cli.print_sample_config {
        print!("{}", ark_node::config::NodeConfig::sample());
        return ExitCode::SUCCESS;
    }
    let Some(path) = cli.config else {
        eprintln!("error: --config FILE is required (or --print-sample-config, or a subcommand); see arkd --help");
        return ExitCode::from(2);
    };
    let cfg = match ark_node::NodeConfig::load(&path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
    };
    if cli.check_config {
        println!(
            "config {} is valid (node {}, site {})",
            path.display(),
            cfg.node_id,
            cfg.site
        );
        return ExitCode::SUCCESS;
    }

    tracing_subscriber::fmt()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=warn")),
        )
        .init();
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        tracing::error!(%info, "panic: aborting so that no half-applied state is served");
        default_hook(info);
        std::process::abort();
    }));

    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    ark_node::metrics::set_build_tag(BUILD_TAG.unwrap_or(""));
    let result = rt.block_on(ark_node::run(cfg, shutdown_signal()));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("arkd failed: {e:#}");
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGTERM; only SIGINT stops the node");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
        _ = term.recv() => tracing::info!("SIGTERM received"),
    }
}
