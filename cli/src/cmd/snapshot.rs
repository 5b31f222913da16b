//! `ark snapshot save FILE` and `ark snapshot inspect FILE`: metadata snapshots (the
//! cluster's KV, namespaces, manifests, chunk locations and grants) saved from the leader
//! and checked offline. Restore is `arkd snapshot restore`. Printing only: the file and its
//! checks are the SDK's (`ark_client::snapshot`).

use std::path::PathBuf;
use std::process::ExitCode;

use ark_client::{ArkClient, SnapshotInfo};
use clap::Subcommand;

/// `ark snapshot ...`
#[derive(Debug, Subcommand)]
pub enum SnapshotCmd {
    /// Save a consistent snapshot of the cluster's metadata into FILE (admin only). It
    /// holds every write acknowledged before the command started; object bytes are not in
    /// it. Written to FILE.tmp, fsynced, checked, then renamed.
    Save {
        /// Where to write it.
        file: PathBuf,
        /// Print the header as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Check a snapshot file offline (layout, both SHA-256 checksums, length) and print its
    /// header. Exit 1 if it is damaged.
    Inspect {
        /// The file.
        file: PathBuf,
        /// Print the header as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Runs a snapshot command; `client` is called only by commands that talk to the cluster.
pub async fn run(cmd: &SnapshotCmd, client: impl FnOnce() -> anyhow::Result<ArkClient>) -> anyhow::Result<ExitCode> {
    match cmd {
        SnapshotCmd::Save { file, json } => {
            let info = client()?.save_snapshot(file).await?;
            print(&info, file, "saved", *json)?;
        }
        SnapshotCmd::Inspect { file, json } => {
            let info = ark_client::snapshot::inspect(file)?;
            print(&info, file, "good", *json)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print(i: &SnapshotInfo, file: &std::path::Path, what: &str, json: bool) -> anyhow::Result<()> {
    if json {
        let nodes: Vec<_> = i
            .nodes
            .iter()
            .map(|n| serde_json::json!({"id": n.id, "site": n.site, "peer_addr": n.peer_addr, "client_addr": n.client_addr}))
            .collect();
        let v = serde_json::json!({
            "file": file.display().to_string(), "cluster_id": i.cluster_id, "index": i.index, "term": i.term,
            "voters": i.voters, "nodes": nodes, "taken_by": i.taken_by, "taken_at_ms": i.taken_at_ms,
            "ark_version": i.ark_version, "body_bytes": i.body_bytes, "body_sha256": i.body_sha256_hex(),
        });
        outln!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    outln!("{what}: {}", file.display());
    outln!("  index {}   term {}", i.index, i.term);
    outln!("  size {} bytes   sha256 {}", i.body_bytes, i.body_sha256_hex());
    outln!("  cluster {}", i.cluster_id);
    outln!(
        "  taken by node {} at {} ms since the epoch (arkd {})",
        i.taken_by,
        i.taken_at_ms,
        i.ark_version
    );
    let voters: Vec<String> = i.voters.iter().map(u64::to_string).collect();
    outln!("  voters {}", voters.join(", "));
    for n in &i.nodes {
        outln!(
            "  node {} site {} peer {} client {}",
            n.id,
            n.site,
            n.peer_addr,
            n.client_addr
        );
    }
    Ok(())
}
