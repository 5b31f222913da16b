//! `ark auth` (who am I, grant, revoke, list, lock down) and `ark audit tail`.

use std::process::ExitCode;
use std::time::Duration;

use ark_client::{ArkClient, Grant};
use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub enum AuthCmd {
    /// Who the cluster thinks you are (your certificate's name) and your grants.
    Whoami {
        /// JSON output: {identity, admin, grants: [{permission, target}]}.
        #[arg(long)]
        json: bool,
    },
    /// Give IDENTITY a permission on a target. Permissions: `admin` (membership, namespace
    /// create/set/delete, grants, scrub, telemetry, audit, the `_ark` model namespace; target
    /// `*`), `read`/`write` on `NAMESPACE[/KEY_PREFIX]` (the namespace may end in `*`:
    /// `datasets/*`, `team-a-*`, `data/train/*`), `kv-read`/`kv-write` on a KV key prefix
    /// (`jobs/*`, `*` for every key).
    Grant {
        /// The identity (the name its client certificate was made with).
        identity: String,
        /// admin, read, write, kv-read or kv-write.
        permission: String,
        /// The target (default `*`).
        #[arg(default_value = "*")]
        target: String,
    },
    /// Take a grant away (same arguments as grant).
    Revoke {
        /// The identity.
        identity: String,
        /// admin, read, write, kv-read or kv-write.
        permission: String,
        /// The target (default `*`).
        #[arg(default_value = "*")]
        target: String,
    },
    /// Every identity's grants, and whether the cluster is locked down.
    Ls {
        /// JSON output: {locked, bootstrap_admin, identities: {NAME: [{permission, target}]}}.
        #[arg(long)]
        json: bool,
    },
    /// Only identities with an explicit admin grant stay admins: `root` (the first client
    /// certificate made with the cluster) loses its implicit right. Grant admin to a named
    /// identity first.
    Lockdown,
}

#[derive(Debug, Subcommand)]
pub enum AuditCmd {
    /// Print the newest lines of a node's audit log (JSON lines: time, node, identity, peer,
    /// rpc, target, outcome, detail). Each node keeps the log of the calls it served.
    Tail {
        /// The node to read (its id); default: every node, one after the other.
        #[arg(long)]
        node: Option<u64>,
        /// Lines per node.
        #[arg(short = 'n', long, default_value_t = 20)]
        lines: u32,
        /// Keep printing new lines (polls every second) until interrupted.
        #[arg(short, long)]
        follow: bool,
    },
}

fn grant_json(g: &Grant) -> serde_json::Value {
    serde_json::json!({"permission": g.permission, "target": g.target})
}

/// Runs one `ark auth` command.
pub async fn run(c: &ArkClient, cmd: &AuthCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        AuthCmd::Whoami { json } => {
            let w = c.who_am_i().await?;
            if *json {
                let grants: Vec<_> = w.grants.iter().map(grant_json).collect();
                outln!(
                    "{}",
                    serde_json::to_string_pretty(
                        &serde_json::json!({"identity": w.identity, "admin": w.admin, "grants": grants})
                    )?
                );
            } else {
                outln!("{}{}", w.identity, if w.admin { " (admin)" } else { "" });
                for g in &w.grants {
                    outln!("  {}\t{}", g.permission, g.target);
                }
            }
        }
        AuthCmd::Grant {
            identity,
            permission,
            target,
        } => {
            let g = Grant {
                permission: permission.clone(),
                target: target.clone(),
            };
            c.grant(identity, g).await?;
            outln!("granted {permission} on {target} to {identity}");
        }
        AuthCmd::Revoke {
            identity,
            permission,
            target,
        } => {
            let g = Grant {
                permission: permission.clone(),
                target: target.clone(),
            };
            c.revoke(identity, g).await?;
            outln!("revoked {permission} on {target} from {identity}");
        }
        AuthCmd::Ls { json } => {
            let g = c.list_grants().await?;
            if *json {
                let ids: serde_json::Map<String, serde_json::Value> = g
                    .identities
                    .iter()
                    .map(|(id, gs)| (id.clone(), gs.iter().map(grant_json).collect()))
                    .collect();
                outln!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({
                        "locked": g.locked, "bootstrap_admin": g.bootstrap_admin, "identities": ids}))?
                );
            } else {
                if g.locked {
                    outln!("locked down: only identities granted admin are admins");
                } else {
                    outln!("not locked down: {} is an admin without a grant", g.bootstrap_admin);
                }
                for (id, gs) in &g.identities {
                    for gr in gs {
                        outln!("{id}\t{}\t{}", gr.permission, gr.target);
                    }
                }
            }
        }
        AuthCmd::Lockdown => {
            c.lockdown().await?;
            outln!("locked down: only identities granted admin are admins now");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs one `ark audit` command.
pub async fn run_audit(c: &ArkClient, cmd: &AuditCmd) -> anyhow::Result<ExitCode> {
    let AuditCmd::Tail { node, lines, follow } = cmd;
    let status = c.status().await?;
    let nodes: Vec<_> = status
        .nodes
        .iter()
        .filter(|n| node.is_none_or(|id| id == n.id))
        .map(|n| (n.id, n.client_addr.clone()))
        .collect();
    if nodes.is_empty() {
        anyhow::bail!("node {} is not a member of the cluster", node.unwrap_or_default());
    }
    let mut seen: std::collections::HashMap<u64, Vec<String>> = Default::default();
    let mut failed = false;
    loop {
        for (id, addr) in &nodes {
            let t = match c.audit_tail(addr, *lines).await {
                Ok(t) => t,
                Err(e) if nodes.len() > 1 => {
                    eprintln!("node {id} ({addr}): {e}");
                    failed = true;
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            let before = seen.entry(*id).or_default();
            // Lines already printed are the tail of what was seen: print only what follows.
            let start = (0..=t.lines.len())
                .rev()
                .find(|&k| k == 0 || before.ends_with(&t.lines[..k]))
                .unwrap_or(0);
            for l in &t.lines[start..] {
                outln!("{l}");
            }
            *before = t.lines;
        }
        if !*follow {
            // Every node that could not be read is named above; the exit code says so too.
            return Ok(if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS });
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
