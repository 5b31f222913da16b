//! Each namespace's lag behind its policy, as only the leader measures it: the repair loop
//! ([`super::queue`]) publishes what each pass found as a [`LagReport`] (defined beside the
//! planner that measures it, so that `mod.rs` holds one without importing this file), and a
//! namespace query (`ListNamespaces`, a namespace write's answer) reads the latest one, on
//! the leader directly and from a follower over the peer plane (`NsLag`).
//!
//! Owns how the report is published and fetched. Must not touch: how lag is measured (the
//! planner's), the gRPC answer (the API's).

use std::sync::Arc;
use std::time::Duration;

use super::plan::LagReport;
use super::DataPlane;
use crate::clock::wall_ms;
use crate::raft::codec::{decode, encode};
use ark_proto::v1::{peer_request, peer_response, NsLag};

/// How long a query on a leader that took over moments ago waits for its first pass.
const FIRST_PASS_WAIT: Duration = Duration::from_millis(1500);

impl DataPlane {
    /// Publishes a pass's report (`None`: this node stopped leading, its figures go stale).
    pub(super) fn publish_lag(&self, report: Option<LagReport>) {
        self.lag.send_replace(report.map(Arc::new));
    }

    /// This leader's latest report, waiting up to [`FIRST_PASS_WAIT`] for the first pass
    /// after it took over.
    async fn local_lag(&self) -> Result<Arc<LagReport>, String> {
        if !self.members.is_leader() {
            return Err(format!("node {} is not the leader", self.id));
        }
        let mut rx = self.lag.subscribe();
        let report = match tokio::time::timeout(FIRST_PASS_WAIT, rx.wait_for(Option::is_some)).await {
            Ok(Ok(r)) => r.clone(),
            Ok(Err(_)) => return Err("the repair loop has stopped".into()),
            Err(_) => None,
        };
        report.ok_or_else(|| {
            format!(
                "leader {} has not finished a repair pass since it took over; try again shortly",
                self.id
            )
        })
    }

    /// The leader's latest report: its own on the leader, asked of it from a follower.
    pub async fn leader_lag(&self) -> Result<Arc<LagReport>, String> {
        match self.members.leader() {
            Some(l) if l == self.id => self.local_lag().await,
            Some(l) => {
                let p = self
                    .members
                    .get(l)
                    .ok_or_else(|| format!("leader {l} is not in the membership"))?;
                match self
                    .call(
                        &p,
                        peer_request::Body::NsLag(NsLag {}),
                        FIRST_PASS_WAIT + self.rpc_timeout,
                    )
                    .await
                {
                    // Aged by the leader as it answered: stamped with this node's clock.
                    Ok(peer_response::Body::Ok(b)) => match decode::<LagReport>(&b) {
                        Ok(r) => Ok(Arc::new(LagReport {
                            scanned_ms: wall_ms(),
                            ..r
                        })),
                        Err(e) => Err(format!("leader {l} sent a malformed lag report: {e}")),
                    },
                    Ok(_) => Err(format!("leader {l} sent an unexpected answer to a lag query")),
                    Err(e) => Err(format!("asking leader {l} for its namespace lag: {e}")),
                }
            }
            None => Err("no leader is known right now (election in progress)".into()),
        }
    }

    /// The peer plane's side of [`Self::leader_lag`].
    pub(super) async fn serve_ns_lag(&self) -> peer_response::Body {
        match self.local_lag().await {
            Ok(r) => match encode(&r.aged(wall_ms())) {
                Ok(b) => peer_response::Body::Ok(b),
                Err(e) => peer_response::Body::Failure(e.to_string()),
            },
            Err(e) => peer_response::Body::Failure(e),
        }
    }
}
