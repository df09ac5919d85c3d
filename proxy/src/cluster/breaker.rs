//! The circuit breaker in front of Redis: after [`FAILURES`] failures in a row it opens, and
//! every decision takes `cluster.on_error` at once, with no call and no wait, until the open
//! time has passed; then one call (half-open) is let through: a success closes the breaker, a
//! failure opens it again for twice as long (up to [`MAX_OPEN`]).
//!
//! So a dead or slow Redis costs each decision at most `cluster.timeout`, and only the first
//! [`FAILURES`] decisions (and one per open period) pay it.

use std::sync::Mutex;
use std::time::Duration;

/// Failures in a row that open the breaker.
pub const FAILURES: u32 = 3;
/// The first open period.
pub const MIN_OPEN: Duration = Duration::from_millis(500);
/// The longest open period.
pub const MAX_OPEN: Duration = Duration::from_secs(10);

#[derive(Debug, Default)]
struct State {
    failures: u32,
    /// Open until this `now` (the proxy's monotonic clock).
    open_until: Option<Duration>,
    /// The next open period.
    backoff: Duration,
    /// A half-open trial call is out.
    trial: bool,
}

/// See the module docs.
#[derive(Debug, Default)]
pub struct Breaker {
    state: Mutex<State>,
}

/// Whether a call may go to Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    /// Closed: call.
    Call,
    /// Half-open: this is the one trial call.
    Trial,
    /// Open: do not call.
    Open,
}

impl Breaker {
    /// Whether to call Redis at `now`.
    pub fn gate(&self, now: Duration) -> Gate {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        match s.open_until {
            None => Gate::Call,
            Some(until) if now < until || s.trial => Gate::Open,
            Some(_) => {
                s.trial = true;
                Gate::Trial
            }
        }
    }

    /// A call answered.
    pub fn success(&self) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        *s = State::default();
    }

    /// A call failed or timed out at `now`.
    pub fn failure(&self, now: Duration) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.failures = s.failures.saturating_add(1);
        if s.trial || s.failures >= FAILURES {
            let open = if s.trial {
                (s.backoff * 2).min(MAX_OPEN)
            } else {
                MIN_OPEN
            };
            s.backoff = open;
            s.open_until = Some(now + open);
            s.trial = false;
        }
    }

    /// Whether [`Breaker::gate`] at `now` would let a call through (without taking the trial).
    pub fn may_call(&self, now: Duration) -> bool {
        let s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.open_until.is_none_or(|until| now >= until && !s.trial)
    }

    /// Whether the breaker is closed (Redis answered last).
    pub fn is_closed(&self) -> bool {
        let s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.open_until.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn opens_after_failures_in_a_row_then_tries_once_and_backs_off() {
        let b = Breaker::default();
        for _ in 0..FAILURES - 1 {
            assert_eq!(b.gate(MS), Gate::Call);
            b.failure(MS);
        }
        assert_eq!(b.gate(MS), Gate::Call);
        b.failure(MS);
        assert_eq!(b.gate(MS * 2), Gate::Open);
        assert!(!b.is_closed());
        // After the open period: one trial, others still wait.
        let t = MS + MIN_OPEN;
        assert_eq!(b.gate(t), Gate::Trial);
        assert_eq!(b.gate(t), Gate::Open);
        b.failure(t);
        assert_eq!(b.gate(t + MIN_OPEN), Gate::Open, "open twice as long");
        assert_eq!(b.gate(t + MIN_OPEN * 2), Gate::Trial);
        b.success();
        assert!(b.is_closed());
        assert_eq!(b.gate(t + MIN_OPEN * 2), Gate::Call);
    }

    #[test]
    fn a_success_resets_the_count() {
        let b = Breaker::default();
        for _ in 0..10 {
            b.failure(MS);
            b.success();
        }
        assert_eq!(b.gate(MS), Gate::Call);
    }
}
