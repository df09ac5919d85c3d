//! The weighted canary split, sticky by a key.

/// Number of split buckets a key is hashed into.
pub const BUCKETS: u32 = 10_000;

/// The stable hash (documented in the module docs; never change it).
pub fn stable_hash(key: &[u8]) -> u64 {
    let _ = key;
    todo!()
}

/// The split bucket of a key, `0..BUCKETS`.
pub fn bucket_of(key: &[u8]) -> u32 {
    (stable_hash(key) % u64::from(BUCKETS)) as u32
}

/// Why an upstream was picked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// The override header named it.
    Override,
    /// The sticky key's bucket.
    Sticky,
    /// No key: a random bucket.
    Random,
}

/// A pick: index into the route's upstreams and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pick {
    /// Index into the route's upstream list.
    pub index: usize,
    /// Why.
    pub reason: Reason,
}

/// Cumulative weights of a route's upstreams.
#[derive(Debug, Clone, PartialEq)]
pub struct Splitter {
    _todo: (),
}

/// Bad weights.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SplitError {
    /// Weights sum to 0 (or there are no upstreams).
    #[error("weights sum to 0")]
    ZeroTotal,
}

impl Splitter {
    /// From `(name, weight)` pairs in upstream order.
    pub fn new<'a>(weights: impl IntoIterator<Item = (&'a str, u32)>) -> Result<Self, SplitError> {
        let _ = weights.into_iter();
        todo!()
    }

    /// The upstream for a split bucket.
    pub fn by_bucket(&self, bucket: u32) -> usize {
        let _ = bucket;
        todo!()
    }

    /// Picks: an override naming a known upstream wins; else the sticky key's bucket; else
    /// `random` (any u32 from the caller's RNG) reduced to a bucket.
    pub fn pick(&self, override_name: Option<&str>, sticky_key: Option<&[u8]>, random: u32) -> Pick {
        let _ = (override_name, sticky_key, random);
        todo!()
    }

    /// The current weights, in upstream order.
    pub fn weights(&self) -> Vec<(String, u32)> {
        todo!()
    }
}
