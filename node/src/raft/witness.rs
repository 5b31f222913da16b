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
