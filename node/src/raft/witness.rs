//! The two loops that make a node's configured role true in the cluster: every node
//! announces its role (`Command::SetRole`) when the replicated table says otherwise, and a
//! witness that finds itself leader hands leadership over to the most up-to-date data voter.
//!
//! Owns when those happen. Must not touch: the role table itself (`roles.rs`), what a
//! witness refuses (`api::witness`, `replicate::serve`).

use std::time::Duration;

use tokio::sync::watch;

use super::front::Front;
use super::{Command, Op};
use crate::config::NodeRole;

/// How long one hand-over attempt of a leading witness may take.
const HAND_OVER_DEADLINE: Duration = Duration::from_secs(5);
/// Wait between two failed hand-over attempts.
const HAND_OVER_RETRY: Duration = Duration::from_millis(200);

/// On a witness: whenever it finds itself leader (it won an election because it alone held
/// the newest entries, or no data voter could campaign), hands the leadership to the most
/// up-to-date data voter at once (`raft::handover`, witnesses excluded), retrying until it
/// no longer leads. Ends when `stop` turns true.
pub async fn hand_over_when_leading(front: std::sync::Arc<Front>, mut stop: watch::Receiver<bool>) {
    let me = front.members().id();
    let mut rx = front.raft().metrics();
    loop {
        let leading = rx.borrow_and_update().current_leader == Some(me);
        if leading {
            let witnesses: Vec<super::NodeId> = front.members().roles().witnesses().into_iter().collect();
            tracing::info!("this witness leads: handing the leadership to a data voter");
            match front.transfer_leader(None, &witnesses, HAND_OVER_DEADLINE).await {
                Ok(h) => {
                    metrics::counter!("ark_witness_handovers_total", "result" => "ok").increment(1);
                    tracing::info!(leader = h.leader, took = ?h.took, "witness handed the leadership over");
                }
                Err(e) => {
                    metrics::counter!("ark_witness_handovers_total", "result" => "error").increment(1);
                    tracing::warn!(error = %e, "witness could not hand the leadership over yet; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(HAND_OVER_RETRY) => {}
                        _ = stop.wait_for(|s| *s) => return,
                    }
                }
            }
            continue;
        }
        tokio::select! {
            c = rx.changed() => if c.is_err() { return },
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// Describes this file's metrics to the recorder; called once at start-up by `server`.
pub(crate) fn describe_metrics() {
    metrics::describe_counter!(
        "ark_witness_handovers_total",
        "Leadership hand-overs a witness attempted after winning an election, by result (ok, error)."
    );
}

/// How often a node compares its configured role with the replicated one.
const ANNOUNCE_EVERY: Duration = Duration::from_secs(1);

/// Proposes `Command::SetRole` for this node whenever the applied roles disagree with
/// `role` and a leader is known; a data node that the table never named proposes nothing.
/// Ends when `stop` turns true.
pub async fn announce_role(
    front: std::sync::Arc<Front>,
    role: NodeRole,
    deadline: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let me = front.members().id();
    let mut announced = false;
    loop {
        let member = front.members().get(me).is_some();
        let known = front.members().roles().role(me);
        if member && known != role && front.members().leader().is_some() {
            let op = Op {
                request_id: Vec::new(),
                command: Command::SetRole { node: me, role },
            };
            match front.propose(op, deadline).await {
                Ok(_) => tracing::info!(role = role.as_str(), "role recorded in the cluster"),
                Err(e) => {
                    tracing::warn!(error = %e, role = role.as_str(), "cannot record this node's role yet; retrying")
                }
            }
        } else if member && known == role && !announced {
            announced = true;
            tracing::info!(role = role.as_str(), "the cluster knows this node's role");
        }
        tokio::select! {
            _ = tokio::time::sleep(ANNOUNCE_EVERY) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}
