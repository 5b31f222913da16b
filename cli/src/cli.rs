//! The `ark` command line: the top-level clap definition and dispatch to one file per
//! command group under `cmd/`. Exit codes: 0 success, 1 failure,
//! 2 usage error. Human output by default, JSON with `--json` where offered.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};

use ark_client::{ArkClient, ClientConfig};

use crate::cmd;
use crate::cmd::auth::{AuditCmd, AuthCmd};
use crate::cmd::bench::BenchCmd;
use crate::cmd::certs::CertsCmd;
use crate::cmd::kv::KvCmd;
use crate::cmd::members::MembersCmd;
use crate::cmd::objects::ObjectCmd;
use crate::cmd::playground::PlaygroundCmd;
use crate::cmd::snapshot::SnapshotCmd;

/// Ark: keeps critical data alive through the loss of a data centre.
#[derive(Debug, Parser)]
#[command(name = "ark", version)]
pub struct Cli {
    /// Client config (endpoints and TLS files), e.g. the `client.toml` a playground writes.
    #[arg(long, global = true, env = "ARK_CONFIG", value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,
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
    /// Who may do what: identities (client certificate names) and their grants.
    #[command(subcommand)]
    Auth(AuthCmd),
    /// The audit log of admin actions and denied calls, kept by each node.
    #[command(subcommand)]
    Audit(AuditCmd),
    /// Metadata snapshots (KV, namespaces, manifests, chunk locations, grants): save one
    /// from the cluster, check a file. Restore with `arkd snapshot restore`.
    #[command(subcommand)]
    Snapshot(SnapshotCmd),
    /// Certificates: the cluster CA, node and client certificates, CSRs, expiry checks.
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

/// Entry point of the `ark` binary.
pub fn main() -> ExitCode {
    // `ark drill ...` is `ark-chaos drill ...`: every argument after `drill` is the drill's
    // (its `--config` is the drill config, not ark's client config), so it is not parsed here.
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if args.get(1).is_some_and(|a| a == "drill") {
        return cmd::drill::exec(&args[2..]);
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

/// The SDK client the global options describe.
pub(crate) fn client(cli: &Cli) -> anyhow::Result<ArkClient> {
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
            cmd::objects::run(&c, cmd).await
        }
        Cmd::Status { json } => cmd::status::run(&client(&cli)?, cli.endpoint.as_deref(), json).await,
        Cmd::Telemetry { json } => cmd::telemetry::run(&client(&cli)?, json).await,
        Cmd::Kv(k) => cmd::kv::run(&client(&cli)?, k).await,
        Cmd::Members(m) => cmd::members::run(&client(&cli)?, m).await,
        Cmd::Auth(a) => cmd::auth::run(&client(&cli)?, a).await,
        Cmd::Audit(a) => cmd::auth::run_audit(&client(&cli)?, a).await,
        Cmd::Snapshot(s) => cmd::snapshot::run(s, || client(&cli)).await,
        Cmd::Certs(c) => cmd::certs::run(c),
        Cmd::Playground(p) => cmd::playground::run(p).await,
        Cmd::Demo { sites, json } => cmd::demo::run(sites, json).await,
        Cmd::Bench(b) => cmd::bench::run(&cli, b).await,
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
