//! `ark members`: cluster membership (list, add a learner, promote, remove) and the
//! leadership hand-over.

use std::process::ExitCode;

use ark_client::ArkClient;
use ark_client::NodeSpec;
use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub enum MembersCmd {
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
    /// Hand the leadership over to another voter before a planned restart or maintenance
    /// of the leader's node or site; writes are held meanwhile, not failed.
    TransferLeader {
        /// The voter to hand over to (default: the most caught-up voter).
        node: Option<u64>,
    },
}

/// Runs one membership command.
pub async fn run(c: &ArkClient, m: &MembersCmd) -> anyhow::Result<ExitCode> {
    let show = |r: ark_client::Membership| {
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
                &ark_client::AddLearnerOptions { wait_caught_up: *wait },
            )
            .await?,
        ),
        MembersCmd::Promote { id } => show(c.promote(*id).await?),
        MembersCmd::Remove { id } => show(c.remove(*id).await?),
        MembersCmd::TransferLeader { node } => {
            let t = c.transfer_leader(*node).await?;
            if t.took_ms == 0 && Some(t.leader) == *node {
                outln!("node {} already leads (term {})", t.leader, t.term);
            } else {
                outln!(
                    "node {} leads now (term {}); writes were held for {} ms",
                    t.leader,
                    t.term,
                    t.took_ms
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
