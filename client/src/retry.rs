//! The SDK's one retry policy: how long an operation may keep trying, how many attempts it
//! may make and how long it waits between them (exponential backoff with jitter, so that
//! many clients that lost the same leader do not come back in step).
//!
//! Owns the budget and the waits; must not decide which node to try next or which errors
//! are worth a retry (the callers and [`crate::error`] do). Every retrying call of the SDK
//! (leader calls, any-node reads, object transfers and reports) runs through `Attempts`.

use std::time::{Duration, Instant};

use rand::Rng;

use crate::error::ClientError;

/// How the wait before the next attempt is drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Jitter {
    /// No randomness: base, 2 × base, 4 × base, ... up to the maximum.
    None,
    /// "Full jitter": uniformly between zero and the exponential step (base × 2^n, capped).
    Full,
    /// "Decorrelated jitter": uniformly between base and three times the previous wait,
    /// capped; never shorter than base.
    Decorrelated,
}

/// Limits and waits of one retrying operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Overall time limit of the operation, retries and waits included; `None`: only
    /// `attempts_max` ends it.
    pub deadline: Option<Duration>,
    /// Most attempts, whatever the deadline (at least 1).
    pub attempts_max: u32,
    /// First wait, and the shortest with [`Jitter::Decorrelated`].
    pub backoff_base: Duration,
    /// Longest wait.
    pub backoff_max: Duration,
    /// How waits are drawn.
    pub jitter: Jitter,
}

impl RetryPolicy {
    /// Leader calls and small reads: many quick attempts within `deadline` (a leader change
    /// takes a few election timeouts).
    pub fn calls(deadline: Duration) -> Self {
        Self {
            deadline: Some(deadline),
            attempts_max: 1_000,
            backoff_base: Duration::from_millis(20),
            backoff_max: Duration::from_millis(100),
            jitter: Jitter::Decorrelated,
        }
    }

    /// Object transfers and long reports: few attempts (each may move gigabytes), longer
    /// waits, and an overall limit only when the caller sets one.
    pub fn transfers(deadline: Option<Duration>) -> Self {
        Self {
            deadline,
            attempts_max: 8,
            backoff_base: Duration::from_millis(100),
            backoff_max: Duration::from_secs(2),
            jitter: Jitter::Decorrelated,
        }
    }

    /// The wait after attempt number `attempt` (1-based) when the previous wait was `prev`,
    /// drawn with `rng`. Always within `0..=backoff_max`.
    pub fn delay(&self, attempt: u32, prev: Duration, rng: &mut impl Rng) -> Duration {
        let base = self.backoff_base.min(self.backoff_max);
        let step = base
            .saturating_mul(1u32.checked_shl(attempt.saturating_sub(1)).unwrap_or(u32::MAX))
            .min(self.backoff_max);
        match self.jitter {
            Jitter::None => step,
            Jitter::Full => rng.gen_range(Duration::ZERO..=step),
            Jitter::Decorrelated => {
                let hi = prev.saturating_mul(3).clamp(base, self.backoff_max);
                rng.gen_range(base..=hi)
            }
        }
    }
}

/// The running budget of one operation under a [`RetryPolicy`].
#[derive(Debug)]
pub(crate) struct Attempts {
    policy: RetryPolicy,
    started: Instant,
    deadline: Option<Instant>,
    made: u32,
    prev_wait: Duration,
}

impl Attempts {
    /// Starts the clock of one operation.
    pub(crate) fn start(policy: &RetryPolicy) -> Self {
        let started = Instant::now();
        Self {
            deadline: policy.deadline.map(|d| started + d),
            policy: policy.clone(),
            started,
            made: 0,
            prev_wait: Duration::ZERO,
        }
    }

    /// Counts one more attempt.
    pub(crate) fn attempt(&mut self) {
        self.made += 1;
    }

    /// Attempts made so far.
    pub(crate) fn made(&self) -> u32 {
        self.made
    }

    /// When the operation must end, if it has a deadline.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// When the operation started.
    pub(crate) fn started(&self) -> Instant {
        self.started
    }

    /// Whether the budget is spent: the deadline passed or the attempts ran out.
    pub(crate) fn exhausted(&self) -> bool {
        self.made >= self.policy.attempts_max.max(1) || self.deadline.is_some_and(|d| Instant::now() >= d)
    }

    /// Waits before the next attempt (never past the deadline).
    pub(crate) async fn wait(&mut self) {
        let mut wait = self.policy.delay(self.made, self.prev_wait, &mut rand::thread_rng());
        self.prev_wait = wait;
        if let Some(d) = self.deadline {
            wait = wait.min(d.saturating_duration_since(Instant::now()));
        }
        tokio::time::sleep(wait).await;
    }

    /// The error of an operation that ran out of budget; `last` says what failed last.
    pub(crate) fn give_up(&self, last: String) -> ClientError {
        ClientError::Unavailable {
            attempts: self.made,
            elapsed_ms: self.started.elapsed().as_millis() as u64,
            last,
        }
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;

    fn policy(jitter: Jitter) -> RetryPolicy {
        RetryPolicy {
            deadline: None,
            attempts_max: 5,
            backoff_base: Duration::from_millis(10),
            backoff_max: Duration::from_millis(200),
            jitter,
        }
    }

    #[test]
    fn without_jitter_waits_double_up_to_the_maximum() {
        let p = policy(Jitter::None);
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let waits: Vec<u64> = (1..=7)
            .map(|n| p.delay(n, Duration::ZERO, &mut rng).as_millis() as u64)
            .collect();
        assert_eq!(waits, [10, 20, 40, 80, 160, 200, 200]);
        assert_eq!(p.delay(200, Duration::ZERO, &mut rng), Duration::from_millis(200));
    }

    #[test]
    fn full_jitter_spreads_waits_below_the_exponential_step() {
        let p = policy(Jitter::Full);
        let mut rng = rand::rngs::StdRng::seed_from_u64(2);
        let waits: Vec<Duration> = (0..200).map(|_| p.delay(3, Duration::ZERO, &mut rng)).collect();
        assert!(waits.iter().all(|w| *w <= Duration::from_millis(40)), "{waits:?}");
        let distinct: std::collections::BTreeSet<_> = waits.iter().collect();
        assert!(distinct.len() > 50, "waits must differ between clients: {distinct:?}");
        assert!(waits.iter().any(|w| *w < Duration::from_millis(20)));
    }

    #[test]
    fn decorrelated_jitter_stays_between_base_and_maximum_and_spreads() {
        let p = policy(Jitter::Decorrelated);
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let mut prev = Duration::ZERO;
        let mut waits = Vec::new();
        for n in 1..=300 {
            prev = p.delay(n, prev, &mut rng);
            waits.push(prev);
        }
        assert!(
            waits
                .iter()
                .all(|w| (Duration::from_millis(10)..=Duration::from_millis(200)).contains(w)),
            "{waits:?}"
        );
        let distinct: std::collections::BTreeSet<_> = waits.iter().collect();
        assert!(distinct.len() > 100, "{distinct:?}");
        assert!(
            waits.iter().any(|w| *w > Duration::from_millis(100)),
            "waits grow: {waits:?}"
        );
    }

    #[test]
    fn the_budget_ends_at_the_attempt_cap_or_the_deadline() {
        let mut a = Attempts::start(&policy(Jitter::None));
        for _ in 0..4 {
            a.attempt();
            assert!(!a.exhausted());
        }
        a.attempt();
        assert!(a.exhausted(), "5 attempts of 5");
        let e = a.give_up("n1: down".into());
        assert!(
            matches!(&e, ClientError::Unavailable { attempts: 5, last, .. } if last == "n1: down"),
            "{e}"
        );

        let mut p = policy(Jitter::None);
        p.deadline = Some(Duration::ZERO);
        p.attempts_max = 1_000;
        let mut a = Attempts::start(&p);
        a.attempt();
        assert!(a.exhausted(), "a spent deadline ends the operation");
    }

    #[tokio::test]
    async fn a_wait_never_runs_past_the_deadline() {
        let mut p = policy(Jitter::None);
        p.backoff_base = Duration::from_secs(60);
        p.backoff_max = Duration::from_secs(60);
        p.deadline = Some(Duration::from_millis(200));
        let mut a = Attempts::start(&p);
        a.attempt();
        let before = Instant::now();
        a.wait().await;
        // 60 s drawn, cut to what is left of the 200 ms (generous slack for a busy machine).
        assert!(before.elapsed() < Duration::from_secs(10), "{:?}", before.elapsed());
    }
}
