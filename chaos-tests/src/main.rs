//! `ark-chaos`: lists and runs failover drills; writes `DIR/report.json` and exits non-zero
//! on any violation.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

/// Failover drills against real arkd processes.
#[derive(Debug, Parser)]
#[command(name = "ark-chaos", version)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Name the scenarios.
    List,
    /// Run one scenario.
    Run {
        /// Scenario name.
        #[arg(long)]
        scenario: String,
        /// Seconds of workload.
        #[arg(long, default_value_t = 30)]
        duration: u64,
        /// Seed of the fault schedule and workload.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Folder for report.json (and the playground's logs, kept for post-mortems).
        #[arg(long)]
        out: PathBuf,
        /// Where the nodes run: `netns` (each in its own network namespace, partitions with
        /// nftables; needs root, iproute2 and nftables), `loopback`, or `auto` (netns when this
        /// host can make a namespace, else loopback; the report says which and why).
        #[arg(long, value_enum, default_value_t = ModeArg::Auto)]
        mode: ModeArg,
        /// Peer links: `local` (as they are) or `wan` (every link 30 ± 10 ms one way with
        /// 1-2 % loss, and the WAN raft timing of the `wan` scenario), for any scenario.
        #[arg(long, value_enum, default_value_t = LinksArg::Local)]
        links: LinksArg,
    },
    /// Run a drill against a deployed cluster, with the faults given as shell commands in
    /// a drill config (see docs/drills.md, "Drills against a deployed cluster"). Exit 0: the
    /// drill passed; 1: it found a violation or a command failed (every fault healed first);
    /// 2: the config is wrong (nothing was run).
    Drill {
        /// The drill config (TOML).
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// Folder for report.json, history.json and faults.log (every command run).
        #[arg(long, value_name = "DIR", required_unless_present = "dry_run")]
        out: Option<PathBuf>,
        /// Validate the config against the cluster and print the commands of the first
        /// faults, without running any.
        #[arg(long)]
        dry_run: bool,
        /// Seed, instead of the config's.
        #[arg(long)]
        seed: Option<u64>,
        /// Seconds of workload, instead of the config's `duration_s`.
        #[arg(long, value_name = "S")]
        duration: Option<u64>,
    },
}

/// `--mode`.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum ModeArg {
    Auto,
    Netns,
    Loopback,
}

impl From<ModeArg> for ark_chaos::drill::ModeChoice {
    fn from(m: ModeArg) -> Self {
        match m {
            ModeArg::Auto => Self::Auto,
            ModeArg::Netns => Self::Netns,
            ModeArg::Loopback => Self::Loopback,
        }
    }
}

/// `--links`.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum LinksArg {
    Local,
    Wan,
}

impl From<LinksArg> for ark_chaos::drill::Links {
    fn from(l: LinksArg) -> Self {
        match l {
            LinksArg::Local => Self::Local,
            LinksArg::Wan => Self::Wan,
        }
    }
}

fn main() -> ExitCode {
    // Usage errors exit 2 and --help 0 (clap's own exit codes); nothing runs before this.
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::List => {
            for (name, what) in ark_chaos::drill::SCENARIOS {
                println!("{name:<16} {what}");
            }
            ExitCode::SUCCESS
        }
        Cmd::Run {
            scenario,
            duration,
            seed,
            out,
            mode,
            links,
        } => match run(scenario, duration, seed, out, mode.into(), links.into()) {
            Ok(true) => ExitCode::SUCCESS,
            Ok(false) => ExitCode::from(1),
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::from(1)
            }
        },
        Cmd::Drill {
            config,
            out,
            dry_run,
            seed,
            duration,
        } => match drill(&config, out, dry_run, seed, duration) {
            Ok(true) => ExitCode::SUCCESS,
            Ok(false) => ExitCode::from(1),
            Err(e) => {
                eprintln!("error: {e:#}");
                let wrong_config = e.downcast_ref::<ark_chaos::deployed::ConfigError>().is_some();
                ExitCode::from(if wrong_config { 2 } else { 1 })
            }
        },
    }
}

/// `ark-chaos drill`: true when the drill passed (or the dry run validated).
fn drill(
    config: &std::path::Path,
    out: Option<PathBuf>,
    dry_run: bool,
    seed: Option<u64>,
    duration: Option<u64>,
) -> anyhow::Result<bool> {
    use anyhow::Context;
    let drill = ark_chaos::deployed::Drill::load(config, seed, duration)?;
    let rt = tokio::runtime::Runtime::new()?;
    if dry_run {
        print!("{}", rt.block_on(drill.dry_run())?);
        return Ok(true);
    }
    let out = out.context("--out DIR is needed unless --dry-run")?;
    std::fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
    let report = rt.block_on(drill.run(&out))?;
    std::fs::write(out.join("report.json"), serde_json::to_vec_pretty(&report)?)?;
    print!("{}", report.summary());
    Ok(report.violations().is_empty())
}

fn run(
    scenario: String,
    duration: u64,
    seed: u64,
    out: PathBuf,
    mode: ark_chaos::drill::ModeChoice,
    links: ark_chaos::drill::Links,
) -> anyhow::Result<bool> {
    use anyhow::Context;
    std::fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
    let rt = tokio::runtime::Runtime::new()?;
    let spec = ark_chaos::drill::DrillSpec {
        scenario,
        duration: Duration::from_secs(duration),
        seed,
        mode,
        links,
    };
    let report = rt.block_on(ark_chaos::drill::run(
        &spec,
        &out.join("cluster"),
        &out.join("history.json"),
    ))?;
    std::fs::write(out.join("report.json"), serde_json::to_vec_pretty(&report)?)?;
    print!("{}", report.summary());
    Ok(report.violations().is_empty())
}
