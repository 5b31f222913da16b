//! Claims on local chunk files, which garbage collection respects.
//!
//! An upload, a chunk pushed by a peer, a pull, or a peer's "do you have it?" may be about
//! to commit a manifest referring to a chunk that no object refers to yet. Each claims the
//! chunk first; garbage collection deletes an unreferenced chunk only under the same lock,
//! and only if no claim on it is younger than the grace period. Claims are timed with the
//! monotonic clock, so a wall-clock jump cannot age them; a file's modification time (wall
//! clock) is only a second condition, and nothing is collected during the first grace
//! period after start (a claim made before a restart is not remembered).
//!
//! Owns the claims and the collection rule. Must not touch object metadata (the caller
//! decides that a chunk is unreferenced) or peers.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::chunks::ChunkId;

/// Most claims kept; past it the oldest half is dropped after expired ones (a claim
/// outliving its grace period protects nothing).
const CLAIMS_MAX: usize = 1 << 20;

/// Whether an unreferenced chunk may be collected now.
pub fn may_collect(
    claimed_at: Option<Instant>,
    up_since: Instant,
    file_age: Option<Duration>,
    grace: Duration,
    now: Instant,
) -> bool {
    let claim_expired = claimed_at.is_none_or(|at| now.saturating_duration_since(at) >= grace);
    let up_long_enough = now.saturating_duration_since(up_since) >= grace;
    // A modification time in the future (the clock went back) reads as no age at all.
    let file_old = file_age.is_some_and(|age| age >= grace);
    claim_expired && up_long_enough && file_old
}

/// The claims of one node.
#[derive(Debug)]
pub struct ChunkClaims {
    claims: Mutex<HashMap<ChunkId, Instant>>,
    up_since: Instant,
    grace: Duration,
}

impl ChunkClaims {
    /// No claims yet; collection allowed `grace` after now.
    pub fn new(grace: Duration) -> Self {
        Self {
            claims: Mutex::new(HashMap::new()),
            up_since: Instant::now(),
            grace,
        }
    }

    /// Protects `id` from collection for the grace period from now.
    pub fn claim(&self, id: &ChunkId) {
        let now = Instant::now();
        let Ok(mut c) = self.claims.lock() else { return };
        if c.len() >= CLAIMS_MAX {
            let grace = self.grace;
            c.retain(|_, at| now.saturating_duration_since(*at) < grace);
            if c.len() >= CLAIMS_MAX {
                let mut ages: Vec<Instant> = c.values().copied().collect();
                ages.sort_unstable();
                let cut = ages[ages.len() / 2];
                c.retain(|_, at| *at > cut);
            }
        }
        c.insert(*id, now);
    }

    /// Runs `remove` for the unreferenced chunk `id` if the rule allows it now, under the
    /// claims lock (so no claim can slip in between the check and the removal); returns
    /// what `remove` returned, or false.
    pub fn collect(&self, id: &ChunkId, file_age: Option<Duration>, remove: impl FnOnce() -> bool) -> bool {
        let Ok(mut c) = self.claims.lock() else { return false };
        let now = Instant::now();
        if !may_collect(c.get(id).copied(), self.up_since, file_age, self.grace, now) {
            return false;
        }
        c.remove(id);
        remove()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const G: Duration = Duration::from_secs(60);

    #[test]
    fn a_claim_protects_whatever_the_files_time_says() {
        let start = Instant::now();
        let now = start + 10 * G;
        let old_file = Some(Duration::from_secs(3600));
        assert!(may_collect(None, start, old_file, G, now));
        // Claimed just now: the file looks an hour old (the wall clock jumped), it stays.
        assert!(!may_collect(Some(now), start, old_file, G, now));
        assert!(!may_collect(Some(now - G / 2), start, old_file, G, now));
        assert!(may_collect(Some(now - G), start, old_file, G, now));
    }

    #[test]
    fn a_young_or_future_file_and_a_fresh_start_protect_too() {
        let start = Instant::now();
        let now = start + 10 * G;
        assert!(!may_collect(None, start, Some(G / 2), G, now));
        assert!(!may_collect(None, start, None, G, now), "mtime in the future");
        assert!(!may_collect(None, now - G / 2, Some(10 * G), G, now), "just started");
    }

    #[test]
    fn collect_runs_the_removal_only_when_allowed() {
        let claims = ChunkClaims::new(Duration::ZERO);
        let id = [7u8; 32];
        let mut removed = false;
        assert!(claims.collect(&id, Some(Duration::from_secs(1)), || {
            removed = true;
            true
        }));
        assert!(removed);
        // Up for long enough, old file: only the claim stands between it and removal.
        let Some(long_ago) = Instant::now().checked_sub(2 * G) else {
            panic!("the monotonic clock starts less than two minutes before this test");
        };
        let claims = ChunkClaims {
            up_since: long_ago,
            ..ChunkClaims::new(G)
        };
        claims.claim(&id);
        assert!(!claims.collect(&id, Some(10 * G), || panic!("a claimed chunk was removed")));
        let unclaimed = [8u8; 32];
        assert!(claims.collect(&unclaimed, Some(10 * G), || true));
    }
}
