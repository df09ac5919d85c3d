//! The weighted canary split, sticky by a key.
//!
//! Every replica of the proxy and the Envoy/Istio Wasm filter must send one key (a room) to one
//! upstream, so the mapping is fixed here, bit for bit. **Never change it.**
//!
//! ## The stable hash
//! [`stable_hash`] is 64-bit **FNV-1a** over the key's bytes (the UTF-8 bytes of the sticky
//! value, exactly as extracted, no normalisation):
//!
//! ```text
//! hash = 0xcbf29ce484222325                 // offset basis
//! for each byte b of the key:
//!     hash = hash XOR b
//!     hash = (hash * 0x100000001b3) mod 2^64  // FNV prime, wrapping multiply
//! ```
//!
//! ## Buckets and weights
//! The key's bucket is `hash % 10000` ([`BUCKETS`]). With the route's weights `w_0..w_n` (in
//! upstream order), `total = Σ w_i` and `cumulative[i] = w_0 + … + w_i`, bucket `b` goes to the
//! **first upstream `i` with `b * total < cumulative[i] * 10000`** (integer arithmetic). Upstream
//! `i` thus gets the buckets `[10000·cumulative[i-1]/total, 10000·cumulative[i]/total)`, a share
//! `w_i / total` of them (to one bucket); an upstream of weight 0 gets none.
//!
//! Moving weight from the first upstream to a later one (90/10 → 80/20) only moves keys *to*
//! the later one: keys already there stay.
//!
//! ## Worked example
//! Key `room-42` (bytes `72 6f 6f 6d 2d 34 32`):
//! - `stable_hash(b"room-42") = 0xb57038d1b56f17b3` (13074012191599826867),
//! - bucket `13074012191599826867 % 10000 = 6867`,
//! - weights `stable: 90, canary: 10`: `6867 * 100 = 686700 < 90 * 10000 = 900000`, so `stable`;
//! - weights `stable: 50, canary: 50`: `686700 ≥ 500000` and `686700 < 1000000`, so `canary`.
//!
//! (The empty key hashes to the offset basis, bucket 6037.)
//!
//! ## Picking
//! [`Splitter::pick`]: a valid override (an upstream name, exact, of weight above 0: a canary
//! switched off cannot be forced) wins;
//! else a non-empty sticky key's bucket; else `random % 10000` as the bucket (the caller's RNG;
//! the modulo bias of a `u32` is below 2·10⁻⁶).

use std::collections::BTreeMap;

use crate::config::Upstream;

/// Number of split buckets a key is hashed into.
pub const BUCKETS: u32 = 10_000;

/// FNV-1a 64-bit offset basis.
pub const FNV_OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
/// FNV-1a 64-bit prime.
pub const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// The stable hash (documented in the module docs; never change it).
pub fn stable_hash(key: &[u8]) -> u64 {
    let mut h = FNV_OFFSET_BASIS;
    for &b in key {
        h ^= u64::from(b);
        h = h.wrapping_mul(FNV_PRIME);
    }
    h
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
    names: Vec<String>,
    weights: Vec<u32>,
    /// `cumulative[i] = weights[0] + … + weights[i]`.
    cumulative: Vec<u64>,
    total: u64,
}

/// Bad weights.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SplitError {
    /// Weights sum to 0 (or there are no upstreams).
    #[error("weights sum to 0")]
    ZeroTotal,
}

/// Why [`Splitter::reweighted`] refused new weights.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReweightError {
    /// A name that is not an upstream of the route.
    #[error("unknown upstream `{0}`")]
    UnknownUpstream(String),
    /// The new weights sum to 0.
    #[error("weights sum to 0")]
    ZeroTotal,
}

impl Splitter {
    /// From `(name, weight)` pairs in upstream order.
    pub fn new<'a>(weights: impl IntoIterator<Item = (&'a str, u32)>) -> Result<Self, SplitError> {
        let (names, weights): (Vec<String>, Vec<u32>) =
            weights.into_iter().map(|(n, w)| (n.to_owned(), w)).unzip();
        Self::build(names, weights)
    }

    /// From a route's upstreams.
    pub fn from_upstreams(upstreams: &[Upstream]) -> Result<Self, SplitError> {
        Self::new(upstreams.iter().map(|u| (u.name.as_str(), u.weight)))
    }

    fn build(names: Vec<String>, weights: Vec<u32>) -> Result<Self, SplitError> {
        let mut total = 0u64;
        let cumulative = weights
            .iter()
            .map(|&w| {
                total += u64::from(w);
                total
            })
            .collect();
        if total == 0 {
            return Err(SplitError::ZeroTotal);
        }
        Ok(Splitter {
            names,
            weights,
            cumulative,
            total,
        })
    }

    /// The same upstreams with new weights (for `PUT /routes/NAME/weights`): each name in
    /// `new` must be an upstream; upstreams not named keep their weight.
    pub fn reweighted(&self, new: &BTreeMap<String, u32>) -> Result<Self, ReweightError> {
        let mut weights = self.weights.clone();
        for (name, &w) in new {
            let i = self
                .index_of(name)
                .ok_or_else(|| ReweightError::UnknownUpstream(name.clone()))?;
            weights[i] = w;
        }
        Self::build(self.names.clone(), weights).map_err(|_| ReweightError::ZeroTotal)
    }

    /// The upstream for a split bucket (a bucket `>= BUCKETS` is first reduced modulo `BUCKETS`).
    pub fn by_bucket(&self, bucket: u32) -> usize {
        let b = u128::from(bucket % BUCKETS) * u128::from(self.total);
        let i = self
            .cumulative
            .partition_point(|&c| u128::from(c) * u128::from(BUCKETS) <= b);
        i.min(self.cumulative.len().saturating_sub(1))
    }

    /// Picks: an override naming a known upstream of weight above 0 wins; else the sticky key's
    /// bucket; else
    /// `random` (any u32 from the caller's RNG) reduced to a bucket. An empty sticky key counts
    /// as none.
    pub fn pick(
        &self,
        override_name: Option<&str>,
        sticky_key: Option<&[u8]>,
        random: u32,
    ) -> Pick {
        if let Some(index) = override_name.and_then(|n| self.index_of(n))
            && self.weights[index] > 0
        {
            return Pick {
                index,
                reason: Reason::Override,
            };
        }
        match sticky_key {
            Some(k) if !k.is_empty() => Pick {
                index: self.by_bucket(bucket_of(k)),
                reason: Reason::Sticky,
            },
            _ => Pick {
                index: self.by_bucket(random % BUCKETS),
                reason: Reason::Random,
            },
        }
    }

    /// The index of the upstream named `name` (exact).
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.names.iter().position(|n| n == name)
    }

    /// The name of upstream `index`.
    pub fn name(&self, index: usize) -> Option<&str> {
        self.names.get(index).map(String::as_str)
    }

    /// Number of upstreams.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// No upstreams (never true for a built splitter).
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// Sum of the weights (more than 0).
    pub fn total(&self) -> u64 {
        self.total
    }

    /// The current weights, in upstream order.
    pub fn weights(&self) -> Vec<(String, u32)> {
        self.names
            .iter()
            .cloned()
            .zip(self.weights.iter().copied())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a_reference_values() {
        // Published FNV-1a 64 test vectors.
        assert_eq!(stable_hash(b""), 0xcbf29ce484222325);
        assert_eq!(stable_hash(b"a"), 0xaf63dc4c8601ec8c);
        assert_eq!(stable_hash(b"foobar"), 0x85944171f73967e8);
    }

    #[test]
    fn worked_example_from_the_docs() {
        assert_eq!(stable_hash(b"room-42"), 0xb57038d1b56f17b3);
        assert_eq!(stable_hash(b"room-42"), 13074012191599826867);
        assert_eq!(bucket_of(b"room-42"), 6867);
        assert_eq!(bucket_of(b""), 6037);
        let s = Splitter::new([("stable", 90), ("canary", 10)]).expect("weights");
        assert_eq!(
            s.pick(None, Some(b"room-42"), 0),
            Pick {
                index: 0,
                reason: Reason::Sticky
            }
        );
        let s = Splitter::new([("stable", 50), ("canary", 50)]).expect("weights");
        assert_eq!(
            s.pick(None, Some(b"room-42"), 0),
            Pick {
                index: 1,
                reason: Reason::Sticky
            }
        );
    }

    #[test]
    fn bucket_boundaries() {
        let s = Splitter::new([("stable", 90), ("canary", 10)]).expect("weights");
        assert_eq!(s.by_bucket(0), 0);
        assert_eq!(s.by_bucket(8999), 0);
        assert_eq!(s.by_bucket(9000), 1);
        assert_eq!(s.by_bucket(9999), 1);
        assert_eq!(s.by_bucket(10_000), 0);
        let s = Splitter::new([("a", 1), ("b", 1), ("c", 1)]).expect("weights");
        let counts = (0..BUCKETS).fold([0; 3], |mut c, b| {
            c[s.by_bucket(b)] += 1;
            c
        });
        assert_eq!(counts, [3334, 3333, 3333]);
    }

    #[test]
    fn zero_weights_get_nothing_not_even_by_override() {
        let s = Splitter::new([("off", 0), ("stable", 1), ("dark", 0)]).expect("weights");
        assert!((0..BUCKETS).all(|b| s.by_bucket(b) == 1));
        assert_eq!(
            s.pick(Some("dark"), Some(b"k"), 5),
            Pick {
                index: 1,
                reason: Reason::Sticky
            }
        );
        assert_eq!(
            s.pick(Some("stable"), Some(b"k"), 5),
            Pick {
                index: 1,
                reason: Reason::Override
            }
        );
        assert_eq!(
            s.pick(Some("nope"), None, 5),
            Pick {
                index: 1,
                reason: Reason::Random
            }
        );
        assert_eq!(
            s.pick(Some("Dark"), Some(b""), 5),
            Pick {
                index: 1,
                reason: Reason::Random
            }
        );
    }

    #[test]
    fn zero_total_is_an_error() {
        assert_eq!(Splitter::new([]), Err(SplitError::ZeroTotal));
        assert_eq!(Splitter::new([("a", 0)]), Err(SplitError::ZeroTotal));
    }

    #[test]
    fn extreme_weights_do_not_overflow() {
        let s = Splitter::new([("a", u32::MAX), ("b", u32::MAX), ("c", 1)]).expect("weights");
        assert_eq!(s.by_bucket(0), 0);
        assert_eq!(s.by_bucket(9999), 1);
    }

    #[test]
    fn random_pick() {
        let s = Splitter::new([("stable", 90), ("canary", 10)]).expect("weights");
        assert_eq!(
            s.pick(None, None, 9_000),
            Pick {
                index: 1,
                reason: Reason::Random
            }
        );
        assert_eq!(
            s.pick(None, None, 19_000),
            Pick {
                index: 1,
                reason: Reason::Random
            }
        );
        assert_eq!(
            s.pick(None, None, 18_999),
            Pick {
                index: 0,
                reason: Reason::Random
            }
        );
    }

    #[test]
    fn reweight() {
        let s = Splitter::new([("stable", 90), ("canary", 10)]).expect("weights");
        let mut w = BTreeMap::new();
        w.insert("canary".to_owned(), 50);
        let r = s.reweighted(&w).expect("reweight");
        assert_eq!(
            r.weights(),
            vec![("stable".to_owned(), 90), ("canary".to_owned(), 50)]
        );
        w.insert("nope".to_owned(), 1);
        assert_eq!(
            s.reweighted(&w),
            Err(ReweightError::UnknownUpstream("nope".into()))
        );
        let mut z = BTreeMap::new();
        z.insert("stable".to_owned(), 0);
        z.insert("canary".to_owned(), 0);
        assert_eq!(s.reweighted(&z), Err(ReweightError::ZeroTotal));
        assert_eq!(s.name(1), Some("canary"));
        assert_eq!(s.total(), 100);
    }
}
