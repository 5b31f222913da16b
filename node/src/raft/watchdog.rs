//! An election watchdog that bounds how long a follower waits for a silent leader.
//!
//! openraft 0.9 makes a candidate whose vote was refused by a node with a longer log wait
//! `2 × election_timeout_max` longer before each later campaign (`seen_greater_log`), and
//! clears that only when the node campaigns again, not when it next follows a leader. Once
//! both followers of a three-node cluster carry it, losing the leader costs
//! `3 × election_timeout_max` plus the timeout instead of `election_timeout_max` plus the
//! timeout (10.5–12 s instead of 4.5–6 s at arkd's defaults), and a leader paused for less
//! than that is never replaced (docs/drills.md, the `pause` drill). The watchdog triggers the
//! campaign itself once a follower has heard nothing from a leader (no AppendEntries
//! accepted, no vote granted) for `2 × election_timeout_max` plus a random share of the
//! minimum timeout: later than openraft's own rule for a follower without the flag, so it
//! only acts when that rule would wait longer.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openraft::ServerState;
use rand::Rng;
use tokio::sync::watch;

use super::{ArkRaft, NodeId};

/// When this node last heard from a leader or granted a vote.
#[derive(Clone)]
pub struct LeaderContact(Arc<Mutex<Instant>>);

impl Default for LeaderContact {
    fn default() -> Self {
        Self(Arc::new(Mutex::new(Instant::now())))
    }
}

impl LeaderContact {
    /// Records contact now.
    pub fn touch(&self) {
        if let Ok(mut t) = self.0.lock() {
            *t = Instant::now();
        }
    }

    /// Time since the last contact.
    pub fn elapsed(&self) -> Duration {
        self.0.lock().map(|t| t.elapsed()).unwrap_or_default()
    }
}

/// How long a follower may go without contact before the watchdog campaigns for it.
pub fn patience(election_min_ms: u64, election_max_ms: u64, rng: &mut impl Rng) -> Duration {
    Duration::from_millis(2 * election_max_ms + rng.gen_range(0..=election_min_ms))
}

/// Watches until `stop` turns true.
pub async fn run(
    raft: ArkRaft,
    id: NodeId,
    contact: LeaderContact,
    election_min_ms: u64,
    election_max_ms: u64,
    mut stop: watch::Receiver<bool>,
) {
    let tick = Duration::from_millis((election_min_ms / 5).max(20));
    let mut wait = patience(election_min_ms, election_max_ms, &mut rand::thread_rng());
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = tokio::time::sleep(tick) => {}
        }
        if *stop.borrow() {
            return;
        }
        if contact.elapsed() < wait {
            continue;
        }
        let voter_follower = {
            let m = raft.metrics().borrow().clone();
            m.state == ServerState::Follower && m.membership_config.membership().voter_ids().any(|v| v == id)
        };
        if voter_follower {
            tracing::info!(
                silent_for = ?contact.elapsed(),
                "no leader heard for longer than an election should take; campaigning"
            );
            metrics::counter!("ark_raft_watchdog_elections_total").increment(1);
            if raft.trigger().elect().await.is_err() {
                return;
            }
        }
        // Whatever happened, give the cluster another full period before acting again.
        contact.touch();
        wait = patience(election_min_ms, election_max_ms, &mut rand::thread_rng());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn patience_is_beyond_openraft_s_own_rule_and_below_the_sticky_one() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        for _ in 0..1000 {
            let p = patience(1500, 3000, &mut rng);
            // openraft without the flag: lease (max) + timeout (min..max) <= 6 s.
            assert!(p >= Duration::from_millis(6000), "{p:?}");
            // openraft with the flag: lease + timeout + 2 x max >= 10.5 s.
            assert!(p <= Duration::from_millis(7500), "{p:?}");
        }
    }

    #[test]
    fn contact_measures_from_the_last_touch() {
        let c = LeaderContact::default();
        std::thread::sleep(Duration::from_millis(20));
        assert!(c.elapsed() >= Duration::from_millis(20));
        c.touch();
        assert!(c.elapsed() < Duration::from_millis(20));
    }
}
