//! `ark status`: the cluster as the leader (or, with `--endpoint`, one node) sees it:
//! members, health, failure risk, the repair queue's head and the pre-staged hot set.
//! Printing only; must not retry or pick nodes (the SDK does).

use std::process::ExitCode;

use ark_client::ArkClient;

/// Prints the status of the cluster (`endpoint`: as that node sees it), as JSON with `json`.
pub async fn run(c: &ArkClient, endpoint: Option<&str>, json: &bool) -> anyhow::Result<ExitCode> {
    let s = match endpoint {
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
                    "witness": n.witness,
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
            "prestage": {"node": s.prestage_node, "objects": s.prestage_objects},
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
                // A witness votes (or learns) like any member but holds no data.
                if n.witness { "witness" } else { n.role.as_str() },
                n.client_addr,
                if n.healthy { "yes" } else { "no" },
                n.matched_index,
                risk
            );
        }
        if leader_answered {
            if let Some(node) = s.prestage_node {
                outln!(
                    "hot set: {} objects pre-staged on node {node} (the follower most likely to take over)",
                    s.prestage_objects,
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
    Ok(ExitCode::SUCCESS)
}
