//! The time stamped on proposals (`Request::proposed_at_ms`): the log's own clock, which no
//! node's wall clock can move far.
//!
//! Every replica expires request ids (exactly-once) by the entries' stamps, so a stamp must
//! not jump: a new leader whose wall clock runs minutes ahead would otherwise expire every
//! recorded id at once and apply a retried write twice. So the leader does not stamp its
//! wall clock. It continues the log's time: from the newest stamp applied (the previous
//! leader's, when it takes over), advanced by its own monotonic clock, and it moves toward
//! its wall clock only at a bounded rate ([`SLEW`]): a wall clock ahead is followed at most
//! 25% faster than real time, one behind not at all (the log's time never goes back).
//! Hence: a retry sent within `SESSION_RETENTION_MS / 1.25` (4 minutes) of real time after
//! its first attempt is recognised whatever any leader's clock says. Time without a leader
//! is not counted, which only makes ids live longer.
//!
//! Owns the stamp. Must not touch the entries (the state machine reads the stamps and
//! publishes the newest through [`LogClock::floor`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// How much faster than real time the log's clock may run to catch up with a wall clock
/// that is ahead of it.
pub const SLEW: f64 = 0.25;

/// The leader-side stamp source.
#[derive(Debug)]
pub struct LogClock {
    /// Newest stamp the local state machine applied.
    floor: Arc<AtomicU64>,
    /// Last stamp given, in microseconds (so that proposals microseconds apart still
    /// advance it), and when (monotonic).
    last: Mutex<Option<(u64, Instant)>>,
    wall_ms: fn() -> u64,
}

impl LogClock {
    /// A clock continuing from the stamps the state machine applied (`floor`).
    pub fn new(floor: Arc<AtomicU64>) -> Self {
        Self {
            floor,
            last: Mutex::new(None),
            wall_ms: crate::clock::wall_ms,
        }
    }

    /// The stamp for a proposal made now.
    pub fn now_ms(&self) -> u64 {
        let floor = self.floor.load(Ordering::Acquire);
        let now = Instant::now();
        let wall = (self.wall_ms)();
        let Ok(mut last) = self.last.lock() else {
            // Poisoned only by a panic elsewhere, which aborts the process.
            return floor;
        };
        let t = next_stamp(*last, floor.saturating_mul(1000), wall.saturating_mul(1000), now);
        *last = Some((t, now));
        t / 1000
    }
}

/// The next stamp, all in one unit (the clock uses microseconds): after `last` (stamp,
/// when), at least `floor`, moving toward `wall` at most `1 + SLEW` times as fast as real
/// time. The first stamp of a cluster (nothing applied, nothing stamped) is the wall clock.
fn next_stamp(last: Option<(u64, Instant)>, floor: u64, wall: u64, now: Instant) -> u64 {
    match last {
        None if floor == 0 => wall,
        None => floor,
        Some((t, at)) => {
            let real = now.saturating_duration_since(at).as_micros() as u64;
            let fastest = t.saturating_add(real + (real as f64 * SLEW) as u64);
            let steady = t.saturating_add(real);
            wall.clamp(steady, fastest).max(floor)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// A minute in the clock's unit (microseconds).
    const MIN: u64 = 60_000_000;
    const SEC: u64 = 1_000_000;

    #[test]
    fn a_wall_clock_minutes_ahead_moves_the_log_only_at_the_slew_rate() {
        let t0 = Instant::now();
        let start = 1_000 * MIN;
        // Took over from a leader whose last stamp was `start`; this node's clock is 7 min ahead.
        let first = next_stamp(None, start, start + 7 * MIN, t0);
        assert_eq!(first, start);
        let one_min_later = next_stamp(Some((first, t0)), start, start + 8 * MIN, t0 + Duration::from_secs(60));
        assert_eq!(one_min_later, start + MIN + MIN / 4);
        // Four real minutes later the log has moved at most five: a retry is still known.
        let mut t = first;
        let mut at = t0;
        for s in 1..=240u64 {
            let now = t0 + Duration::from_secs(s);
            t = next_stamp(Some((t, at)), start, start + 7 * MIN + s * SEC, now);
            at = now;
        }
        assert!(t <= start + 5 * MIN, "{}", t - start);
    }

    #[test]
    fn a_wall_clock_behind_or_jumping_back_never_moves_the_log_back() {
        let t0 = Instant::now();
        let start = 1_000 * MIN;
        let t = next_stamp(Some((start, t0)), start, start - 10 * MIN, t0 + Duration::from_secs(1));
        assert_eq!(t, start + SEC);
        // Another leader's newer stamps were applied meanwhile: never below them.
        let t = next_stamp(Some((start, t0)), start + 5 * MIN, start, t0 + Duration::from_secs(1));
        assert_eq!(t, start + 5 * MIN);
        // A right clock is followed exactly.
        let t = next_stamp(Some((start, t0)), 0, start + 2 * SEC, t0 + Duration::from_secs(2));
        assert_eq!(t, start + 2 * SEC);
    }

    #[test]
    fn proposals_microseconds_apart_still_advance_the_clock() {
        let t0 = Instant::now();
        let mut t = 1_000 * MIN;
        for i in 1..=2_000u64 {
            t = next_stamp(
                Some((t, t0 + Duration::from_micros(i - 1) * 500)),
                0,
                0,
                t0 + Duration::from_micros(i) * 500,
            );
        }
        assert_eq!(t, 1_000 * MIN + SEC);
    }

    #[test]
    fn the_first_stamp_of_a_cluster_is_the_wall_clock() {
        assert_eq!(next_stamp(None, 0, 12_345, Instant::now()), 12_345);
    }
}
