//! Token buckets with lazy refill from a caller-supplied clock, and bounded keyed sets of them.

use std::time::Duration;

use crate::config::Rate;

/// A bucket's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
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

/// One token bucket. Holds no `Rate`, so a set of them stays small; pass the rate in.
#[derive(Debug, Clone, Copy)]
pub struct TokenBucket {
    _todo: (),
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(rate: &Rate, now: Duration) -> Self {
        let _ = (rate, now);
        todo!()
    }

    /// Takes one token if there is one. No allocation.
    pub fn try_take(&mut self, rate: &Rate, now: Duration) -> Verdict {
        let _ = (rate, now);
        todo!()
    }

    /// Time until the bucket is full again (for `x-ratelimit-reset`).
    pub fn time_to_full(&self, rate: &Rate, now: Duration) -> Duration {
        let _ = (rate, now);
        todo!()
    }
}

/// Buckets by key (client IP, header value, room) with bounded memory.
pub struct KeyedBuckets<K> {
    _todo: std::marker::PhantomData<K>,
}

impl<K: std::hash::Hash + Eq + Clone> KeyedBuckets<K> {
    /// A set that never holds more than `max_keys` buckets.
    pub fn new(rate: Rate, max_keys: usize) -> Self {
        let _ = (rate, max_keys);
        todo!()
    }

    /// Takes a token from `key`'s bucket, creating it full if new.
    pub fn try_take<Q>(&mut self, key: &Q, now: Duration) -> Verdict
    where
        K: std::borrow::Borrow<Q>,
        Q: std::hash::Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        let _ = (key, now);
        todo!()
    }

    /// The rate.
    pub fn rate(&self) -> &Rate {
        todo!()
    }

    /// Buckets held now.
    pub fn len(&self) -> usize {
        todo!()
    }

    /// No bucket held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
