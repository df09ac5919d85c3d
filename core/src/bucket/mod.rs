//! Token buckets with lazy refill from a caller-supplied clock, and bounded keyed sets of them.
//!
//! ## Arithmetic
//! A bucket keeps whole tokens and, below one token, a fraction as an integer in units of
//! `1 / per_ns` token, where `per_ns` is the refill period in nanoseconds: one token is
//! `per_ns` units, and every elapsed nanosecond adds `rate` units. Refill is therefore exact (no
//! floating point, no rounding drift however often the bucket is looked at; a division only
//! when at least a whole token has accrued), and [`BucketVerdict::Limited::retry_after`] is the exact
//! time, rounded up to the nanosecond, until the next whole token. Intermediate values are
//! `u128`, so huge gaps (`now` jumping by centuries) cannot overflow; `now` saturates at
//! 2^64 ns (584 years).
//!
//! Time is the caller's `now`, a [`Duration`] from any fixed monotonic origin. A `now` earlier
//! than one already seen refills nothing (the bucket keeps the latest `now` it saw), so a clock
//! that steps back can never hand out extra tokens.
//!
//! ## Keyed sets
//! [`KeyedBuckets`] holds one bucket per key (client IP, header value, room) in **two
//! generations**, `current` and `previous`, each holding at most `max_keys / 2` keys:
//! - a key is looked up in `current`, then in `previous` (and then promoted into `current`);
//!   an unknown key gets a full bucket in `current`;
//! - when `current` is full, `previous` is dropped and `current` becomes `previous`.
//!
//! Every decision costs O(1) amortized (dropping a generation of `n` keys happens once every
//! `n` insertions), and the set never holds more than `max_keys` buckets, whatever a flood of
//! distinct keys does. The map allocations are reused across generations.
//!
//! **Precision lost:** a bucket that has refilled to full is the same as an absent one, so
//! dropping it loses nothing. A bucket that is *partly used* when its generation is dropped
//! starts full again the next time its key is seen: a key can get up to one extra `burst` of
//! tokens, but only after at least `max_keys / 2` other distinct keys have been seen since its
//! last use. A key used at least once per generation is never reset.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::collections::hash_map::{DefaultHasher, RandomState};
use std::hash::{BuildHasher, Hash, Hasher};
use std::time::Duration;

use crate::config::Rate;

pub mod global;

/// A bucket's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BucketVerdict {
    /// A token was taken.
    Allow {
        /// Whole tokens left.
        remaining: u32,
    },
    /// The bucket is empty.
    Limited {
        /// When the next token will be there.
        retry_after: Duration,
    },
}

impl BucketVerdict {
    /// `true` for [`BucketVerdict::Allow`].
    pub fn is_allowed(&self) -> bool {
        matches!(self, BucketVerdict::Allow { .. })
    }
}

/// A rate in the integer units buckets compute with.
#[derive(Debug, Clone, Copy)]
struct Shape {
    /// Units added per nanosecond (`rate.rate`).
    rate: u128,
    /// Units per token (`rate.per` in ns, at least 1).
    per: u128,
    /// Bucket size in tokens.
    burst: u32,
}

impl Shape {
    #[inline]
    fn of(rate: &Rate) -> Shape {
        let per = rate.per.as_nanos().max(1);
        Shape {
            rate: u128::from(rate.rate),
            per,
            burst: rate.burst,
        }
    }

    /// Time (rounded up to the nanosecond) until `units` more units have been added.
    #[inline]
    fn time_for(&self, units: u128) -> Duration {
        if units == 0 {
            return Duration::ZERO;
        }
        if self.rate == 0 {
            return Duration::MAX;
        }
        nanos(div_ceil(units, self.rate))
    }
}

/// `a / b` with a fast path for values that fit in 64 bits.
#[inline]
fn div(a: u128, b: u128) -> u128 {
    match (u64::try_from(a), u64::try_from(b)) {
        (Ok(a), Ok(b)) => u128::from(a / b),
        _ => a / b,
    }
}

#[inline]
fn div_ceil(a: u128, b: u128) -> u128 {
    let q = div(a, b);
    if q * b < a { q + 1 } else { q }
}

/// A `Duration` of `ns` nanoseconds, saturating at `Duration::MAX`.
#[inline]
fn nanos(ns: u128) -> Duration {
    const NS: u128 = 1_000_000_000;
    match u64::try_from(ns) {
        Ok(ns) => Duration::from_nanos(ns),
        Err(_) => match u64::try_from(ns / NS) {
            Ok(secs) => Duration::new(secs, (ns % NS) as u32),
            Err(_) => Duration::MAX,
        },
    }
}

// === impl TokenBucket ===

/// One token bucket. Holds no `Rate`, so a set of them stays small; pass the rate in.
///
/// Pass the same `Rate` to every call on one bucket; a different rate applies from that call on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenBucket {
    /// Credit short of a whole token, in units of `1 / per_ns` token: always `< per_ns`, and 0
    /// when the bucket is full (see the module docs).
    frac: u128,
    /// The latest `now` seen, in nanoseconds (saturating after 584 years).
    last: u64,
    /// Whole tokens.
    whole: u32,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(rate: &Rate, now: Duration) -> Self {
        TokenBucket {
            frac: 0,
            last: ns64(now),
            whole: rate.burst,
        }
    }

    /// Takes one token if there is one. No allocation.
    pub fn try_take(&mut self, rate: &Rate, now: Duration) -> BucketVerdict {
        let s = Shape::of(rate);
        self.refill(&s, now);
        if self.whole > 0 {
            self.whole -= 1;
            BucketVerdict::Allow {
                remaining: self.whole,
            }
        } else if s.burst == 0 {
            // There will never be a token.
            BucketVerdict::Limited {
                retry_after: Duration::MAX,
            }
        } else {
            BucketVerdict::Limited {
                // `frac` may exceed a shorter `per` (a filter slot outlives a rate change; bytes
                // from shared data): never underflow.
                retry_after: s.time_for(s.per.saturating_sub(self.frac).max(1)),
            }
        }
    }

    /// Time until the bucket is full again (for `x-ratelimit-reset`).
    pub fn time_to_full(&self, rate: &Rate, now: Duration) -> Duration {
        let s = Shape::of(rate);
        let b = self.at(&s, now);
        let missing = u128::from(s.burst.saturating_sub(b.whole));
        s.time_for(missing.saturating_mul(s.per).saturating_sub(b.frac))
    }

    /// Whole tokens in the bucket at `now`, without taking one (for `x-ratelimit-remaining`).
    pub fn remaining(&self, rate: &Rate, now: Duration) -> u32 {
        self.at(&Shape::of(rate), now).whole
    }

    /// Whether the bucket has refilled to full at `now` (a full bucket is the same as a new one).
    pub fn is_full(&self, rate: &Rate, now: Duration) -> bool {
        self.at(&Shape::of(rate), now).whole >= rate.burst
    }

    /// The bucket's state as [`TokenBucket::ENCODED_LEN`] bytes, for a store shared between
    /// processes or VMs (the Wasm filter keeps connection and room buckets in Envoy's shared
    /// data, updated by compare-and-swap). Little-endian `frac` (16), `last` (8), `whole` (4).
    pub fn to_bytes(&self) -> [u8; Self::ENCODED_LEN] {
        let mut b = [0u8; Self::ENCODED_LEN];
        b[..16].copy_from_slice(&self.frac.to_le_bytes());
        b[16..24].copy_from_slice(&self.last.to_le_bytes());
        b[24..].copy_from_slice(&self.whole.to_le_bytes());
        b
    }

    /// A bucket from [`TokenBucket::to_bytes`]; `None` for any other length.
    pub fn from_bytes(b: &[u8]) -> Option<Self> {
        let b: &[u8; Self::ENCODED_LEN] = b.try_into().ok()?;
        let mut frac = [0u8; 16];
        frac.copy_from_slice(&b[..16]);
        let mut last = [0u8; 8];
        last.copy_from_slice(&b[16..24]);
        let mut whole = [0u8; 4];
        whole.copy_from_slice(&b[24..]);
        Some(TokenBucket {
            frac: u128::from_le_bytes(frac),
            last: u64::from_le_bytes(last),
            whole: u32::from_le_bytes(whole),
        })
    }

    /// Length of [`TokenBucket::to_bytes`].
    pub const ENCODED_LEN: usize = 28;

    /// The bucket as it is at `now`, without changing `self`.
    #[inline]
    fn at(&self, s: &Shape, now: Duration) -> TokenBucket {
        let mut b = *self;
        b.refill(s, now);
        b
    }

    /// Adds what accrued since `last`. Divides only when a whole token or more has accrued.
    #[inline]
    fn refill(&mut self, s: &Shape, now: Duration) {
        let now = ns64(now);
        if now <= self.last {
            return;
        }
        let elapsed = now - self.last;
        self.last = now;
        if self.whole >= s.burst {
            self.whole = s.burst;
            self.frac = 0;
            return;
        }
        // At most 2^64 * 2^32 + 2^94: no overflow.
        let credit = self.frac.min(s.per - 1) + u128::from(elapsed) * s.rate;
        if credit < s.per {
            self.frac = credit;
            return;
        }
        let tokens = div(credit, s.per);
        let whole = u128::from(self.whole) + tokens;
        if whole >= u128::from(s.burst) {
            self.whole = s.burst;
            self.frac = 0;
        } else {
            // whole < burst <= u32::MAX
            self.whole = whole as u32;
            self.frac = credit - tokens * s.per;
        }
    }
}

/// Nanoseconds in `d`, saturating at `u64::MAX` (584 years).
#[inline]
fn ns64(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

// === impl KeyedBuckets ===

/// How [`KeyedBuckets`] hashes keys: std's randomly keyed SipHash, or SipHash primed with a
/// caller-supplied seed.
#[derive(Debug, Clone)]
enum KeyHasher {
    Random(RandomState),
    Seeded(u64),
}

impl BuildHasher for KeyHasher {
    type Hasher = DefaultHasher;

    #[inline]
    fn build_hasher(&self) -> DefaultHasher {
        match self {
            KeyHasher::Random(r) => r.build_hasher(),
            KeyHasher::Seeded(seed) => {
                let mut h = DefaultHasher::new();
                h.write_u64(*seed);
                h
            }
        }
    }
}

/// Buckets by key (client IP, header value, room) with bounded memory.
///
/// Two generations of at most `max_keys / 2` keys each; see the module docs for the scheme and
/// the precision it gives up.
pub struct KeyedBuckets<K> {
    rate: Rate,
    max_keys: usize,
    /// Keys per generation.
    gen_cap: usize,
    current: HashMap<K, TokenBucket, KeyHasher>,
    previous: HashMap<K, TokenBucket, KeyHasher>,
}

impl<K> std::fmt::Debug for KeyedBuckets<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyedBuckets")
            .field("rate", &self.rate)
            .field("max_keys", &self.max_keys)
            .field("current", &self.current.len())
            .field("previous", &self.previous.len())
            .finish()
    }
}

impl<K: std::hash::Hash + Eq + Clone> KeyedBuckets<K> {
    /// A set that never holds more than `max_keys` buckets (a `max_keys` of 0 counts as 1).
    ///
    /// Keys are hashed with std's randomly keyed SipHash (`RandomState`), so clients cannot
    /// choose colliding keys. On `wasm32-wasip1` that reads the host's `random_get` once; use
    /// [`KeyedBuckets::with_seed`] for a set that needs nothing from the host.
    pub fn new(rate: Rate, max_keys: usize) -> Self {
        Self::with_hasher(rate, max_keys, KeyHasher::Random(RandomState::new()))
    }

    /// Like [`KeyedBuckets::new`], with SipHash primed by `seed` (pass a random seed from the
    /// caller's RNG to stay resistant to chosen-collision floods).
    pub fn with_seed(rate: Rate, max_keys: usize, seed: u64) -> Self {
        Self::with_hasher(rate, max_keys, KeyHasher::Seeded(seed))
    }

    fn with_hasher(rate: Rate, max_keys: usize, hasher: KeyHasher) -> Self {
        let max_keys = max_keys.max(1);
        KeyedBuckets {
            rate,
            max_keys,
            gen_cap: (max_keys / 2).max(1),
            current: HashMap::with_hasher(hasher.clone()),
            previous: HashMap::with_hasher(hasher),
        }
    }

    /// Takes a token from `key`'s bucket, creating it full if new.
    ///
    /// No allocation for a key already held, except the owned key when it moves generation;
    /// a new key is converted with `ToOwned`.
    pub fn try_take<Q>(&mut self, key: &Q, now: Duration) -> BucketVerdict
    where
        K: std::borrow::Borrow<Q>,
        Q: std::hash::Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        if let Some(b) = self.current.get_mut(key) {
            return b.try_take(&self.rate, now);
        }
        if let Some((k, mut b)) = self.previous.remove_entry(key) {
            let v = b.try_take(&self.rate, now);
            self.insert_current(k, b);
            return v;
        }
        let mut b = TokenBucket::new(&self.rate, now);
        let v = b.try_take(&self.rate, now);
        self.insert_current(key.to_owned(), b);
        v
    }

    /// Time until `key`'s bucket is full again (zero for a key not held), without taking.
    pub fn time_to_full<Q>(&self, key: &Q, now: Duration) -> Duration
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.get(key)
            .map_or(Duration::ZERO, |b| b.time_to_full(&self.rate, now))
    }

    /// Whole tokens in `key`'s bucket at `now` (`burst` for a key not held), without taking.
    pub fn remaining<Q>(&self, key: &Q, now: Duration) -> u32
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.get(key)
            .map_or(self.rate.burst, |b| b.remaining(&self.rate, now))
    }

    /// `key`'s bucket, if held.
    pub fn get<Q>(&self, key: &Q) -> Option<&TokenBucket>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.current.get(key).or_else(|| self.previous.get(key))
    }

    /// The rate.
    pub fn rate(&self) -> &Rate {
        &self.rate
    }

    /// The most buckets this set holds.
    pub fn max_keys(&self) -> usize {
        self.max_keys
    }

    /// Buckets held now.
    pub fn len(&self) -> usize {
        self.current.len() + self.previous.len()
    }

    /// No bucket held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Forgets every bucket.
    pub fn clear(&mut self) {
        self.current.clear();
        self.previous.clear();
    }

    fn insert_current(&mut self, key: K, bucket: TokenBucket) {
        if self.current.len() >= self.gen_cap {
            // Rotate: drop `previous`, `current` becomes `previous`; keep both allocations.
            std::mem::swap(&mut self.current, &mut self.previous);
            self.current.clear();
        }
        if self.current.len() + self.previous.len() >= self.max_keys {
            // Only for max_keys == 1, where one generation is all there is.
            self.previous.clear();
        }
        self.current.insert(key, bucket);
    }
}

#[cfg(test)]
mod tests;
