//! The bucket of `scope: global` limits: core's integer token bucket ([`super::TokenBucket`])
//! in microseconds, as the Redis script [`ADMIT_LUA`] computes it.
//!
//! Redis runs Lua 5.1, whose numbers are doubles: integers are exact below 2^53. The script
//! keeps every intermediate value below that by computing in microseconds (Redis `TIME`) and
//! by capping the elapsed time at the time to full before multiplying, which holds when
//! `burst × per + 2 × rate` is below 2^53 µs ([`fits`]; the config refuses a global bucket
//! that does not). Within that, [`GlobalBucket`] here and the script give the same answers,
//! and both give the answers of [`super::TokenBucket`] for times and periods in whole
//! microseconds (the units scale by 1,000; `core/src/bucket/tests.rs` and the proxy's Redis
//! test check both twins).
//!
//! A take asks for `n` tokens and gets `min(n, whole tokens)`: a connection bucket asks for
//! one, a room bucket's replica leases a batch (the proxy's `cluster::rooms`).

use std::time::Duration;

use crate::config::Rate;

/// The script: takes tokens from global buckets, then places in global session counts, in one
/// atomic step (see the file for its keys and arguments).
pub const ADMIT_LUA: &str = include_str!("admit.lua");

/// Largest integer a double holds exactly.
const EXACT: u128 = 1 << 53;

/// Whether `rate` is exact in [`ADMIT_LUA`]'s arithmetic.
pub fn fits(rate: &Rate) -> bool {
    let per = per_us(rate);
    u128::from(rate.burst) * per + 2 * u128::from(rate.rate) < EXACT
}

/// `rate.per` in whole microseconds, at least 1.
pub fn per_us(rate: &Rate) -> u128 {
    rate.per.as_micros().max(1)
}

/// A global bucket's state, as the script keeps it in a Redis hash (`w`, `f`, `l`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GlobalBucket {
    /// Whole tokens.
    pub whole: u64,
    /// Credit short of a token, in `1 / per_us` tokens (`< per_us`).
    pub frac: u64,
    /// The latest time seen, µs.
    pub last: u64,
}

/// What one take gave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Taken {
    /// Tokens taken (at most the `n` asked).
    pub granted: u64,
    /// Whole tokens left.
    pub remaining: u64,
    /// With nothing granted: time until the next whole token.
    pub retry_after: Duration,
    /// Time until the bucket is full again.
    pub reset: Duration,
}

impl GlobalBucket {
    /// A full bucket at `now_us`.
    pub fn new(rate: &Rate, now_us: u64) -> Self {
        GlobalBucket {
            whole: u64::from(rate.burst),
            frac: 0,
            last: now_us,
        }
    }

    /// Takes up to `n` tokens at `now_us` (the script's steps, in the same order).
    pub fn take(&mut self, rate: &Rate, n: u64, now_us: u64) -> Taken {
        let per = per_us(rate);
        let r = u128::from(rate.rate);
        let burst = u64::from(rate.burst);
        if now_us > self.last {
            let elapsed = u128::from(now_us - self.last);
            self.last = now_us;
            if self.whole >= burst {
                self.whole = burst;
                self.frac = 0;
            } else {
                let need = u128::from(burst - self.whole) * per - u128::from(self.frac);
                if elapsed >= need.div_ceil(r) {
                    self.whole = burst;
                    self.frac = 0;
                } else {
                    let credit = u128::from(self.frac) + elapsed * r;
                    let tokens = credit / per;
                    self.whole += tokens as u64;
                    self.frac = (credit - tokens * per) as u64;
                }
            }
        }
        let granted = n.min(self.whole);
        self.whole -= granted;
        let retry_after = if granted == 0 && n > 0 {
            micros((per - u128::from(self.frac)).div_ceil(r))
        } else {
            Duration::ZERO
        };
        let missing = u128::from(burst - self.whole) * per - u128::from(self.frac);
        Taken {
            granted,
            remaining: self.whole,
            retry_after,
            reset: micros(missing.div_ceil(r)),
        }
    }
}

fn micros(us: u128) -> Duration {
    Duration::from_micros(u64::try_from(us).unwrap_or(u64::MAX))
}
