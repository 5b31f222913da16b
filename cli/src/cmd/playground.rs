//! `ark playground`: a local multi-site cluster of real arkd processes (up, down, start,
//! add-node), run by `ark_playground::playground`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use ark_playground::playground::{self, Layout};
use clap::{Args, Subcommand};

#[derive(Debug, Subcommand)]
pub enum PlaygroundCmd {
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
pub struct UpArgs {
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
    /// Add a witness voter in a site of its own ("witness"): it votes and keeps the Raft log
    /// but holds no data. `--sites 2 --witness` is a two-site deployment that fails over
    /// by itself when either site is lost.
    #[arg(long)]
    witness: bool,
    /// An extra config line for every node, `SECTION.KEY=VALUE` with VALUE in TOML
    /// (e.g. `risk.load_retrain_s=60`, `risk.ordering="fifo"`); repeatable. arkd checks it at
    /// start-up like any config line.
    #[arg(long = "set", value_name = "SECTION.KEY=VALUE", value_parser = parse_setting)]
    set: Vec<(String, String)>,
}

/// Splits `SECTION.KEY=VALUE` into the section and the `KEY = VALUE` line.
fn parse_setting(raw: &str) -> Result<(String, String), String> {
    let (path, value) = raw.split_once('=').ok_or("expected SECTION.KEY=VALUE")?;
    let (section, key) = path.trim().split_once('.').ok_or("expected SECTION.KEY=VALUE")?;
    let ok = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !ok(section) || !ok(key) || value.trim().is_empty() || value.contains('\n') {
        return Err(format!("expected SECTION.KEY=VALUE on one line, got {raw:?}"));
    }
    Ok((section.to_string(), format!("{key} = {}", value.trim())))
}

/// Runs one playground command.
pub async fn run(p: &PlaygroundCmd) -> anyhow::Result<ExitCode> {
    match p {
        PlaygroundCmd::Up(a) => {
            let layout = Layout {
                sites: a.sites,
                nodes_per_site: a.nodes_per_site,
                snapshot_logs_since_last: a.snapshot_every,
                witness: a.witness,
                settings: a.set.iter().map(|(s, l)| (0, s.clone(), l.clone())).collect(),
                ..Layout::default()
            };
            let (pg, _children) = playground::up(&a.dir, &layout).await?;
            for n in &pg.nodes {
                outln!(
                    "node {} ({}) pid {} client {} peer {}{}",
                    n.id,
                    n.site,
                    n.pid,
                    n.client_addr,
                    n.peer_addr,
                    if n.witness { "  witness: holds no data" } else { "" }
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
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::parse_setting;

    #[test]
    fn settings_split_into_section_and_line_and_refuse_junk() {
        assert_eq!(
            parse_setting("risk.load_retrain_s=60"),
            Ok(("risk".into(), "load_retrain_s = 60".into()))
        );
        assert_eq!(
            parse_setting("risk.ordering=\"fifo\""),
            Ok(("risk".into(), "ordering = \"fifo\"".into()))
        );
        for bad in [
            "risk",
            "risk=1",
            ".k=1",
            "risk.=1",
            "risk.k=",
            "a b.k=1",
            "risk.k=1\n[x]",
        ] {
            assert!(parse_setting(bad).is_err(), "{bad:?} accepted");
        }
    }
}
