//! Leadership hand-over: the leader moves its leadership to another voter without a lost
//! or failed write (a rolling restart, a site's planned maintenance, a witness that found
//! itself leading).
//!
//! openraft 0.9 has no transfer-leader call, so Ark does it with what 0.9 offers:
//! 1. the leader holds its proposer ([`Proposer::hold`]): entries in flight finish, new
//!    writes wait in its queue;
//! 2. it waits until the target has matched its whole log;
//! 3. it asks the target to campaign (peer request `Campaign`); the target calls
//!    `trigger().elect()` with a term above the leader's;
//! 4. the old leader grants that vote (its log is not longer, and its own lease, which
//!    runs from when it became leader, has expired: a leader elected less than
//!    `election_timeout_max` ago waits that long first) and steps down; with the target's
//!    own vote that is a majority of a three-voter cluster. In a larger one the other voters still hold the old leader's lease
//!    and refuse the first round; the target's next campaign, one election timeout later,
//!    finds their leases expired (the old leader sends no heartbeat once it has stepped
//!    down) and it is the only candidate whose timer is that short;
//! 5. the hold ends: writes that waited get "not leader" with the new leader's address from
//!    the old one, which the SDK and the front door follow with the same request id.
//!
//! If the target does not lead within the deadline the hold ends anyway and the caller gets
//! an error naming who leads now (the old leader may still lead: then nothing changed).
//!
//! Owns the hand-over protocol on both sides. Must not touch: gRPC, chunks.

use std::time::{Duration, Instant};

use ark_proto::v1::{peer_request, peer_response, Campaign, PeerRequest, RaftCodec};

use super::error::ConsensusError;
use super::front::Front;
use super::NodeId;

/// What a finished hand-over reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandedOver {
    /// The node that leads now.
    pub leader: NodeId,
    /// Its term.
    pub term: u64,
    /// How long writes were held.
    pub took: Duration,
}

/// How often the leader looks at its replication progress and at who leads.
const POLL: Duration = Duration::from_millis(5);

/// Added to the lease before the target is asked to campaign (clock granularity).
const LEASE_MARGIN: Duration = Duration::from_millis(20);

/// Picks the voter to hand over to: `wanted` if it is another voter, else the voter (not
/// this node, not in `exclude`) whose matched index is highest (ties: the lowest id).
pub fn pick_target(
    me: NodeId,
    voters: &[NodeId],
    matched: &[(NodeId, u64)],
    wanted: Option<NodeId>,
    exclude: &[NodeId],
) -> Result<NodeId, ConsensusError> {
    if let Some(t) = wanted {
        if t == me {
            return Err(ConsensusError::Refused(format!("node {t} already leads")));
        }
        if !voters.contains(&t) {
            return Err(ConsensusError::Refused(format!(
                "node {t} is not a voter; leadership can only go to a voter ({voters:?})"
            )));
        }
        return Ok(t);
    }
    voters
        .iter()
        .copied()
        .filter(|v| *v != me && !exclude.contains(v))
        .map(|v| {
            let m = matched.iter().find(|(id, _)| *id == v).map(|(_, m)| *m).unwrap_or(0);
            (std::cmp::Reverse(m), v)
        })
        .min()
        .map(|(_, v)| v)
        .ok_or_else(|| ConsensusError::Refused("there is no other voter to hand the leadership to".into()))
}

impl Front {
    /// On the leader: hands the leadership over to `to` (or the best voter, see
    /// [`pick_target`], never one in `exclude`), within `deadline`.
    pub async fn transfer_leader(
        &self,
        to: Option<NodeId>,
        exclude: &[NodeId],
        deadline: Duration,
    ) -> Result<HandedOver, ConsensusError> {
        let started = Instant::now();
        let until = tokio::time::Instant::now() + deadline;
        let me = self.members().id();
        let m = self.raft().metrics().borrow().clone();
        if m.current_leader != Some(me) {
            return Err(ConsensusError::not_leader_seen_in(&m));
        }
        let voters: Vec<NodeId> = m.membership_config.membership().voter_ids().collect();
        let matched: Vec<(NodeId, u64)> = m
            .replication
            .as_ref()
            .map(|r| r.iter().map(|(id, l)| (*id, l.map(|l| l.index).unwrap_or(0))).collect())
            .unwrap_or_default();
        let target = pick_target(me, &voters, &matched, to, exclude)?;
        let peer = self
            .members()
            .get(target)
            .ok_or_else(|| ConsensusError::Refused(format!("node {target} is not in the membership")))?;
        tracing::info!(target, "handing the leadership over: holding new writes");

        let hold = tokio::time::timeout_at(until, self.proposer().hold())
            .await
            .map_err(|_| ConsensusError::Unavailable("entries in flight did not finish before the deadline".into()))?;
        let result = self.hand_over_held(me, target, &peer, until).await;
        drop(hold);
        match result {
            Ok((leader, term)) => {
                let took = started.elapsed();
                tracing::info!(leader, term, ?took, "leadership handed over");
                metrics::counter!("ark_raft_leader_transfers_total", "outcome" => "done").increment(1);
                Ok(HandedOver { leader, term, took })
            }
            Err(e) => {
                tracing::warn!(target, error = %e, "leadership hand-over failed");
                metrics::counter!("ark_raft_leader_transfers_total", "outcome" => "failed").increment(1);
                Err(e)
            }
        }
    }

    /// Steps 2–4 with new writes held: the target catches up, campaigns, leads.
    async fn hand_over_held(
        &self,
        me: NodeId,
        target: NodeId,
        peer: &super::members::Peer,
        until: tokio::time::Instant,
    ) -> Result<(NodeId, u64), ConsensusError> {
        let mut rx = self.raft().metrics();
        // The target holds every entry of the leader's log.
        let last = loop {
            let m = rx.borrow_and_update().clone();
            if m.current_leader != Some(me) {
                return Err(ConsensusError::Unavailable(format!(
                    "this node stopped leading before the hand-over (leader now: {:?})",
                    m.current_leader
                )));
            }
            let last = m.last_log_index.unwrap_or(0);
            let matched = m
                .replication
                .as_ref()
                .and_then(|r| r.get(&target).copied().flatten())
                .map(|l| l.index)
                .unwrap_or(0);
            if matched >= last {
                break last;
            }
            if tokio::time::Instant::now() >= until {
                return Err(ConsensusError::Unavailable(format!(
                    "node {target} did not catch up before the deadline (it has {matched} of {last})"
                )));
            }
            let _ = tokio::time::timeout(POLL, rx.changed()).await;
        };
        // This node grants the target's vote only once its own lease has run out: it counts
        // from when it became leader, so a leader elected less than a lease ago waits for it.
        let lease = Duration::from_millis(self.raft().config().election_timeout_max) + LEASE_MARGIN;
        loop {
            let since = self
                .raft()
                .with_raft_state(|st| st.vote_last_modified())
                .await
                .map_err(|e| ConsensusError::Unavailable(format!("raft stopped: {e}")))?;
            let Some(ends) = since.map(|t| t + lease) else { break };
            if ends <= tokio::time::Instant::now() {
                break;
            }
            if ends >= until {
                return Err(ConsensusError::Unavailable(
                    "this node became leader too recently for a hand-over before the deadline".into(),
                ));
            }
            tokio::time::sleep_until(ends).await;
        }
        let req = PeerRequest {
            from: me,
            raft_codec: RaftCodec::Unspecified as i32,
            body: Some(peer_request::Body::Campaign(Campaign { last_log_index: last })),
        };
        let left = until.saturating_duration_since(tokio::time::Instant::now());
        match self.pool().call(target, &peer.addr, &req, left).await {
            Ok(r) => match r.body {
                Some(peer_response::Body::Ok(_)) => {}
                Some(peer_response::Body::Failure(msg)) => {
                    return Err(ConsensusError::Refused(format!(
                        "node {target} would not campaign: {msg}"
                    )))
                }
                _ => {
                    return Err(ConsensusError::Internal(format!(
                        "node {target} sent an unexpected answer"
                    )))
                }
            },
            Err(e) => {
                return Err(ConsensusError::Unavailable(format!(
                    "asking node {target} to campaign: {e}"
                )))
            }
        }
        // The target leads (seen from here: it sends its first AppendEntries to this node).
        loop {
            let m = rx.borrow_and_update().clone();
            if m.current_leader == Some(target) {
                return Ok((target, m.current_term));
            }
            if tokio::time::Instant::now() >= until {
                return Err(ConsensusError::Unavailable(format!(
                    "node {target} campaigned but did not lead before the deadline (leader now: {:?})",
                    m.current_leader
                )));
            }
            let _ = tokio::time::timeout(POLL, rx.changed()).await;
        }
    }

    /// On the target: the leader's request to campaign now.
    pub async fn serve_campaign(&self, from: NodeId, req: &Campaign) -> peer_response::Body {
        let me = self.members().id();
        let m = self.raft().metrics().borrow().clone();
        if !m.membership_config.membership().voter_ids().any(|v| v == me) {
            return peer_response::Body::Failure(format!("node {me} is not a voter"));
        }
        if m.current_leader != Some(from) {
            return peer_response::Body::Failure(format!(
                "node {from} asked, but this node follows {:?}",
                m.current_leader
            ));
        }
        let have = m.last_log_index.unwrap_or(0);
        if have < req.last_log_index {
            return peer_response::Body::Failure(format!(
                "this node's log ends at {have}, the leader's at {}",
                req.last_log_index
            ));
        }
        tracing::info!(from, term = m.current_term, "the leader hands over: campaigning");
        match self.raft().trigger().elect().await {
            Ok(()) => peer_response::Body::Ok(Vec::new()),
            Err(e) => peer_response::Body::Failure(format!("cannot campaign: {e}")),
        }
    }
}

/// Describes this module's metrics (HELP text and unit) to the recorder; called once at
/// start-up by `server` (through `metrics::install`).
pub(crate) fn describe_metrics() {
    metrics::describe_counter!(
        "ark_raft_leader_transfers_total",
        "Leadership hand-overs this node started as leader, by outcome (done, failed)."
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_named_voter_is_taken_and_anything_else_refused() {
        let voters = [1, 2, 3];
        assert_eq!(pick_target(1, &voters, &[], Some(3), &[]).unwrap(), 3);
        assert!(pick_target(1, &voters, &[], Some(1), &[]).is_err(), "itself");
        assert!(
            pick_target(1, &voters, &[], Some(4), &[]).is_err(),
            "a learner or stranger"
        );
    }

    #[test]
    fn without_a_name_the_most_caught_up_voter_wins_then_the_lowest_id() {
        let voters = [1, 2, 3, 4];
        let matched = [(2, 90), (3, 100), (4, 100), (5, 200)];
        assert_eq!(pick_target(1, &voters, &matched, None, &[]).unwrap(), 3);
        assert_eq!(pick_target(1, &voters, &matched, None, &[3]).unwrap(), 4);
        assert_eq!(pick_target(1, &voters, &matched, None, &[3, 4]).unwrap(), 2);
        assert!(pick_target(1, &[1], &[], None, &[]).is_err(), "no other voter");
    }
}
