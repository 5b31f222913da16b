//! The node's wall clock, the one place that reads it for anything replicated.
//!
//! Nothing that decides correctness may depend on this clock being right (see
//! `raft::log_clock` for how proposals are stamped). Drills shift it with the fault layer's
//! `clock_offset_ms` (`net::fault`) to prove that: a jump forward or back of one node's
//! clock, without touching the host's.
//!
//! Owns the offset. Must not touch anything else.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Milliseconds added to the host's clock (drills only; 0 otherwise).
static OFFSET_MS: AtomicI64 = AtomicI64::new(0);

/// Milliseconds since the Unix epoch, as this node's (possibly shifted) clock says.
pub fn wall_ms() -> u64 {
    let host = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_millis() as i64;
    host.saturating_add(OFFSET_MS.load(Ordering::Relaxed)).max(0) as u64
}

/// Shifts this node's clock by `ms` from the host's (a drill's clock jump).
pub fn set_offset_ms(ms: i64) {
    let old = OFFSET_MS.swap(ms, Ordering::Relaxed);
    if old != ms {
        tracing::warn!(
            offset_ms = ms,
            "this node's wall clock is shifted from the host's (fault injection)"
        );
    }
}
