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

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
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
        } => match run(scenario, duration, seed, out, mode.into()) {
            Ok(true) => ExitCode::SUCCESS,
            Ok(false) => ExitCode::from(1),
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::from(1)
            }
        },
    }
}

fn run(
    scenario: String,
    duration: u64,
    seed: u64,
    out: PathBuf,
    mode: ark_chaos::drill::ModeChoice,
) -> anyhow::Result<bool> {
    use anyhow::Context;
    std::fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
    let rt = tokio::runtime::Runtime::new()?;
    let spec = ark_chaos::drill::DrillSpec {
        scenario,
        duration: Duration::from_secs(duration),
        seed,
        mode,
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
