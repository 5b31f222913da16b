//! The elector: Ark's own election timer, with a pre-vote, in front of openraft's.
//!
//! Why: openraft 0.9 lets a follower campaign only after `leader_lease + election_timeout`
//! without a leader (both about `election_timeout_max`), and once a campaign of that node
//! was refused by a node with a longer log it adds `2 × election_timeout_max` to every
//! later wait, until it next campaigns (`seen_greater_log`; the flag is not cleared when a
//! leader is seen). A follower that once lost such an election therefore waits three times
//! as long as the others for ever after: the `pause` drill's 5 s stalls and the 10–12 s
//! failovers at arkd's default timing (docs/drills.md). An earlier watchdog that simply
//! called `trigger().elect()` after `2 × election_timeout_max` of silence was reverted:
//! a node that had not heard the leader while the others had (a node just restarted, whose
//! leader's replication stream was still backing off) bumped its term, and the leader,
//! answered with that higher term on its next AppendEntries, stepped down; repeated, that
//! kept a cluster without a leader for seconds.
//!
//! So the elector asks first (a pre-vote, as in the Raft thesis, §9.6): once this voter has
//! heard no leader for [`patience`] (the lease, after which the others would grant a vote,
//! plus a random share of the minimum timeout so that two followers rarely ask at once), it
//! asks every other voter whether it would vote for it, without changing anyone's term. A
//! voter says yes only if it has not heard a leader for a lease either, is not the leader
//! and is not recovering a damaged log, and the asker's log is at least as long as its own.
//! With a majority of yes (its own included) the elector calls `trigger().elect()`; without
//! it nothing changes anywhere. openraft's own election timer is off (`enable_elect: false`,
//! in `server`): every campaign but the leadership hand-over's goes through a pre-vote, so
//! `seen_greater_log` never delays one, and a node that alone lost its leader never disturbs
//! the others. A candidate whose campaign failed (a split vote) asks again after another
//! [`patience`].
//!
//! Owns the pre-vote and when to campaign. Must not touch: gRPC, chunks.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ark_proto::v1::{peer_request, peer_response, PeerRequest, PreVote, RaftCodec};
use rand::Rng;
use tokio::sync::watch;

use openraft::storage::RaftLogStorage;

use super::members::Members;
use super::recovery::Recovery;
use super::store::LogStore;
use super::{ArkRaft, NodeId};
use crate::net::PeerPool;

/// When this node last heard from a leader (an AppendEntries it accepted) or granted a
/// vote; shared by the peer service, which touches it, and the elector, which reads it.
#[derive(Clone)]
pub struct Contact {
    origin: Instant,
    /// Milliseconds after `origin`.
    at_ms: Arc<AtomicU64>,
}

impl Default for Contact {
    fn default() -> Self {
        Self {
            origin: Instant::now(),
            at_ms: Arc::new(AtomicU64::new(0)),
        }
    }
}

impl Contact {
    /// Records contact now.
    pub fn touch(&self) {
        self.at_ms
            .fetch_max(self.origin.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// Time since the last contact (since start-up when there was none).
    pub fn elapsed(&self) -> Duration {
        let now = self.origin.elapsed().as_millis() as u64;
        Duration::from_millis(now.saturating_sub(self.at_ms.load(Ordering::Relaxed)))
    }
}

/// Election timing, from the node's `[raft]` config.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// How often the elector looks.
    pub tick: Duration,
    /// `election_timeout_min`.
    pub min: Duration,
    /// `election_timeout_max`: openraft's leader lease.
    pub max: Duration,
    /// Bound of each pre-vote request.
    pub rpc_timeout: Duration,
}

/// How long a voter waits without a leader before it asks for a pre-vote: the lease (after
/// which the other voters would grant a vote) plus a random share of half the minimum
/// timeout, so that two followers rarely ask at the same moment. (Shorter than openraft's
/// own wait, `lease + election_timeout`, which is off.)
pub fn patience(t: &Timing, rng: &mut impl Rng) -> Duration {
    let spread = (t.min.as_millis() as u64 / 2).max(1);
    t.max + Duration::from_millis(rng.gen_range(0..spread))
}

/// A log position: (term, index) of the last entry.
pub type LogPos = (u64, u64);

/// Whether a voter grants a pre-vote; `Err` says why not.
pub fn grant(
    is_leader: bool,
    damaged: bool,
    silent_for: Duration,
    lease: Duration,
    mine: LogPos,
    theirs: LogPos,
) -> Result<(), String> {
    if is_leader {
        return Err("this node leads".into());
    }
    if damaged {
        return Err("this node is recovering a damaged raft log and abstains".into());
    }
    if silent_for < lease {
        return Err(format!("this node heard a leader {} ms ago", silent_for.as_millis()));
    }
    if theirs < mine {
        return Err(format!("this node's log is longer: {mine:?} against {theirs:?}"));
    }
    Ok(())
}

/// Reads this node's last log id from its log store (openraft's metrics carry only the
/// index; the real vote compares term and index).
#[derive(Clone)]
pub struct LastLog(LogStore);

impl LastLog {
    /// Over a clone of the node's log store.
    pub fn new(store: LogStore) -> Self {
        Self(store)
    }

    /// (term, index) of the last entry; (0, 0) for an empty log or when it cannot be read.
    pub async fn pos(&self) -> LogPos {
        let mut s = self.0.clone();
        match s.get_log_state().await {
            Ok(st) => st.last_log_id.map(|l| (l.leader_id.term, l.index)).unwrap_or((0, 0)),
            Err(e) => {
                tracing::warn!(error = %e, "pre-vote: cannot read the last log id");
                (0, 0)
            }
        }
    }
}

/// What the peer service needs to answer pre-votes.
#[derive(Clone)]
pub struct PreVoter {
    /// Touched by the peer service on leader contact.
    pub contact: Contact,
    /// This node's log.
    pub last_log: LastLog,
    /// The voters' lease (`election_timeout_max`).
    pub lease: Duration,
}

/// The serving side, in the peer service: a candidate's pre-vote request.
pub async fn serve_pre_vote(
    raft: &ArkRaft,
    pv: &PreVoter,
    recovery: &Recovery,
    from: NodeId,
    req: &PreVote,
) -> peer_response::Body {
    let m = raft.metrics().borrow().clone();
    let is_leader = m.state == openraft::ServerState::Leader;
    let mine = pv.last_log.pos().await;
    let (contact, lease) = (&pv.contact, pv.lease);
    match grant(
        is_leader,
        recovery.damaged(),
        contact.elapsed(),
        lease,
        mine,
        (req.last_log_term, req.last_log_index),
    ) {
        Ok(()) => {
            tracing::info!(from, "pre-vote granted");
            peer_response::Body::Ok(Vec::new())
        }
        Err(why) => peer_response::Body::Failure(why),
    }
}

/// Runs until `stop` turns true.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    raft: ArkRaft,
    members: Members,
    pool: PeerPool,
    pv: PreVoter,
    recovery: Arc<Recovery>,
    timing: Timing,
    fenced: Arc<watch::Sender<Option<String>>>,
    mut stop: watch::Receiver<bool>,
) {
    let contact = pv.contact.clone();
    let me = members.id();
    // How long this silence must last before the first ask, drawn anew after each campaign.
    let mut wait = patience(&timing, &mut rand::thread_rng());
    // No ask before this, whatever the silence (after a lost pre-vote, a short pause; after
    // a campaign or while leading, a full patience). The contact itself is touched only by
    // a leader's messages and granted votes: a node's own asks must not make it look, to the
    // others' pre-votes, as if it had heard a leader.
    let mut not_before = Instant::now() + wait;
    // Pre-votes lost in a row: the first is retried soon, the next ones after a patience
    // (a node that alone cannot hear a living leader asks at that pace, not faster).
    let mut lost_in_a_row = 0u32;
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = tokio::time::sleep(timing.tick) => {}
        }
        if *stop.borrow() {
            return;
        }
        let m = raft.metrics().borrow().clone();
        if m.state == openraft::ServerState::Leader {
            not_before = Instant::now() + wait;
            continue;
        }
        if contact.elapsed() < timing.tick * 2 {
            lost_in_a_row = 0;
        }
        if contact.elapsed() < wait || Instant::now() < not_before || recovery.damaged() {
            continue;
        }
        let voters: Vec<NodeId> = m.membership_config.membership().voter_ids().collect();
        if !voters.contains(&me) {
            not_before = Instant::now() + wait;
            continue;
        }
        let (term, index) = pv.last_log.pos().await;
        let asked = voters.iter().filter(|v| **v != me).filter_map(|v| members.get(*v));
        let req = PeerRequest {
            from: me,
            raft_codec: RaftCodec::Unspecified as i32,
            body: Some(peer_request::Body::PreVote(PreVote {
                term: m.current_term,
                last_log_term: term,
                last_log_index: index,
            })),
        };
        // Answers as they come: a dead voter's request runs into its timeout, and waiting
        // for it would add that to every failover. Stop at a majority of yes.
        let mut pending: futures::stream::FuturesUnordered<_> = asked
            .map(|p| {
                let (pool, req) = (pool.clone(), req.clone());
                async move { (p.id, pool.call(p.id, &p.addr, &req, timing.rpc_timeout).await) }
            })
            .collect();
        let mut granted = 1;
        let mut refusals = Vec::new();
        while granted * 2 <= voters.len() {
            let Some((id, a)) = futures::StreamExt::next(&mut pending).await else {
                break;
            };
            match a.map(|r| r.body) {
                Ok(Some(peer_response::Body::Ok(_))) => granted += 1,
                Ok(Some(peer_response::Body::Failure(why))) => {
                    // A recovered cluster that left this node out (see `force_new`): stop.
                    if why.starts_with(super::force_new::FENCED_MARKER) {
                        fenced.send_if_modified(|f| f.is_none() && f.replace(why.clone()).is_none());
                        return;
                    }
                    refusals.push(format!("node {id}: {why}"))
                }
                Ok(_) => refusals.push(format!("node {id}: unexpected answer")),
                Err(e) => refusals.push(format!("node {id}: {e}")),
            }
        }
        drop(pending);
        if granted * 2 <= voters.len() {
            tracing::info!(
                granted,
                voters = voters.len(),
                ?refusals,
                "pre-vote lost: not campaigning"
            );
            metrics::counter!("ark_raft_prevotes_total", "outcome" => "lost").increment(1);
            lost_in_a_row += 1;
            // The first time, ask again soon: the others may have heard their last heartbeat
            // a little after this node did.
            not_before = Instant::now()
                + if lost_in_a_row == 1 {
                    retry_pause(&timing, &mut rand::thread_rng())
                } else {
                    patience(&timing, &mut rand::thread_rng())
                };
            continue;
        }
        lost_in_a_row = 0;
        wait = patience(&timing, &mut rand::thread_rng());
        // If this campaign does not make a leader (two followers that won their pre-votes at
        // the same moment split the vote), ask again after a random half to whole minimum
        // timeout, not a whole patience: the two then rarely collide twice.
        not_before = Instant::now() + after_campaign(&timing, &mut rand::thread_rng());
        // A leader may have appeared while the answers came in.
        if contact.elapsed() < timing.tick * 2 {
            continue;
        }
        tracing::info!(granted, voters = voters.len(), "pre-vote won: campaigning");
        metrics::counter!("ark_raft_prevotes_total", "outcome" => "won").increment(1);
        if raft.trigger().elect().await.is_err() {
            return;
        }
    }
}

/// The pause after a campaign before asking again, should it not have made a leader: half
/// to all of the minimum timeout.
pub fn after_campaign(t: &Timing, rng: &mut impl Rng) -> Duration {
    let half = (t.min.as_millis() as u64 / 2).max(1);
    Duration::from_millis(half + rng.gen_range(0..=half))
}

/// The pause after a lost pre-vote: a quarter to a half of the minimum timeout.
pub fn retry_pause(t: &Timing, rng: &mut impl Rng) -> Duration {
    let quarter = (t.min.as_millis() as u64 / 4).max(1);
    Duration::from_millis(quarter + rng.gen_range(0..quarter))
}

/// Describes this module's metrics (HELP text and unit) to the recorder; called once at
/// start-up by `server` (through `metrics::install`).
pub(crate) fn describe_metrics() {
    use metrics::describe_counter;
    describe_counter!(
        "ark_raft_prevotes_total",
        "Pre-votes this node asked for after hearing no leader, by outcome (won: it campaigned; lost: it did not)."
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn timing() -> Timing {
        Timing {
            tick: Duration::from_millis(50),
            min: Duration::from_millis(1500),
            max: Duration::from_millis(3000),
            rpc_timeout: Duration::from_millis(2000),
        }
    }

    #[test]
    fn patience_starts_after_the_lease_and_ends_before_openraft_s_own_timer() {
        let t = timing();
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let (mut lo, mut hi) = (Duration::MAX, Duration::ZERO);
        for _ in 0..2000 {
            let p = patience(&t, &mut rng);
            lo = lo.min(p);
            hi = hi.max(p);
            // Not before the voters' leases expire: they would refuse the vote.
            assert!(p >= t.max, "{p:?}");
            // Before openraft's own timer (lease + a timeout of at least min).
            assert!(p < t.max + t.min, "{p:?}");
        }
        // Spread out, so that two followers rarely ask at the same moment.
        assert!(hi - lo > Duration::from_millis(500), "{lo:?}..{hi:?}");
    }

    #[test]
    fn a_pre_vote_is_granted_only_without_a_leader_and_to_a_log_at_least_as_long() {
        let lease = Duration::from_millis(1000);
        let long = Duration::from_millis(1500);
        let short = Duration::from_millis(200);
        assert!(grant(false, false, long, lease, (3, 10), (3, 10)).is_ok());
        assert!(
            grant(false, false, long, lease, (3, 10), (4, 2)).is_ok(),
            "a later term wins"
        );
        assert!(
            grant(false, false, long, lease, (3, 10), (3, 9)).is_err(),
            "shorter log"
        );
        assert!(
            grant(false, false, long, lease, (4, 1), (3, 99)).is_err(),
            "older last term"
        );
        assert!(
            grant(false, false, short, lease, (3, 10), (3, 10)).is_err(),
            "heard a leader"
        );
        assert!(grant(true, false, long, lease, (3, 10), (3, 10)).is_err(), "leads");
        assert!(
            grant(false, true, long, lease, (3, 10), (3, 10)).is_err(),
            "damaged log"
        );
    }

    #[test]
    fn contact_measures_from_the_last_touch() {
        let c = Contact::default();
        std::thread::sleep(Duration::from_millis(30));
        assert!(c.elapsed() >= Duration::from_millis(25));
        c.touch();
        assert!(c.elapsed() < Duration::from_millis(25));
    }
}
