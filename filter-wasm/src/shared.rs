//! Token buckets shared by every worker thread (every Wasm VM) of an Envoy, in proxy-wasm
//! shared data, updated by compare-and-swap.
//!
//! ## Layout
//! A bucket family (the connection buckets of a route, the room buckets of a route, the default
//! credential buckets) has a fixed number of **slots** (`filter.bucket_slots`), each one shared
//! data entry `sigmesh/<family>/<route>/<slot>` holding a core [`TokenBucket`] as bytes
//! ([`TokenBucket::to_bytes`]). A key (client IP, header value, room) goes to slot
//! `stable_hash(seed ‖ key) % slots`. Memory is bounded whatever the keys; two keys that meet in
//! one slot share its bucket, so a collision can only make a limit stricter, never looser (with
//! 1024 slots and 50 keys active in one refill period, a given key shares with probability ~5%).
//! The seed keeps clients from choosing colliding keys: it is random per Envoy, made by the
//! first VM configured and shared with the others through shared data ([`shared_seed`]), so
//! every VM of one Envoy puts a key in the same slot and nobody outside can compute which.
//!
//! ## Updates
//! [`take`] reads the slot with its CAS token, takes a token with core's arithmetic, and writes
//! back only if nobody wrote in between; on a CAS mismatch it starts again (at most
//! [`MAX_ATTEMPTS`] times; after that it lets the request through and says so, rather than
//! failing closed on contention).
//!
//! Envoy ignores the CAS token when the key does not exist yet, so two VMs could both create a
//! slot and one write would be lost. [`prepare`] therefore creates every slot (with a marker
//! that reads as a full bucket) when a VM is configured, before any traffic: from then on every
//! write is a real compare-and-swap.

use std::time::Duration;

use sigmesh_core::bucket::{BucketVerdict, TokenBucket};
use sigmesh_core::compiled::Compiled;
use sigmesh_core::config::Rate;
use sigmesh_core::request::{Bucket, BucketStore};
use sigmesh_core::split::stable_hash;

/// CAS attempts before [`take`] gives up and allows.
pub const MAX_ATTEMPTS: u32 = 64;

/// What a slot holds before its first use: read as a full bucket.
pub const MARKER: &[u8] = b"-";

/// A shared key-value store with compare-and-swap (proxy-wasm shared data).
pub trait Store {
    /// The value and its CAS token; `(None, None)` for a key that does not exist.
    fn get(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>);
    /// Writes `value` if `cas` still matches (`None`: unconditionally).
    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), SetError>;
}

/// Why a write failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetError {
    /// Someone wrote since the read.
    CasMismatch,
    /// Anything else.
    Failed,
}

/// A bucket family: its key prefix and slot count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Family {
    prefix: String,
    slots: u32,
    seed: u64,
}

/// The outcome of [`take`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Taken {
    /// Core's verdict.
    pub verdict: BucketVerdict,
    /// CAS attempts that failed before the write went through.
    pub retries: u32,
    /// The store could not be updated: the verdict is an allow by default.
    pub gave_up: bool,
}

impl Family {
    /// `kind` (`conn`, `room`, `cred`) of `route` (any name), with `slots` slots (at least 1).
    pub fn new(kind: &str, route: &str, slots: u32, seed: u64) -> Self {
        Family {
            prefix: format!("sigmesh/{kind}/{route}/"),
            slots: slots.max(1),
            seed,
        }
    }

    /// The slot of `key`.
    pub fn slot(&self, key: &str) -> u32 {
        let mut buf = Vec::with_capacity(8 + key.len());
        buf.extend_from_slice(&self.seed.to_le_bytes());
        buf.extend_from_slice(key.as_bytes());
        (stable_hash(&buf) % u64::from(self.slots)) as u32
    }

    /// The shared data key of slot `slot`.
    pub fn slot_key(&self, slot: u32) -> String {
        format!("{}{slot}", self.prefix)
    }

    /// Number of slots.
    pub fn slots(&self) -> u32 {
        self.slots
    }
}

/// Creates every slot of `family` that does not exist yet (see the module docs).
pub fn prepare(store: &dyn Store, family: &Family) {
    for slot in 0..family.slots {
        let k = family.slot_key(slot);
        if let (None, None) = store.get(&k) {
            let _ = store.set(&k, MARKER, None);
        }
    }
}

/// Takes a token from `key`'s bucket in `family` at `now` (time since the Unix epoch: the
/// same clock in every VM).
pub fn take(store: &dyn Store, family: &Family, key: &str, rate: &Rate, now: Duration) -> Taken {
    let k = family.slot_key(family.slot(key));
    let mut retries = 0;
    while retries < MAX_ATTEMPTS {
        let (value, cas) = store.get(&k);
        let mut bucket = value
            .as_deref()
            .and_then(TokenBucket::from_bytes)
            .unwrap_or_else(|| TokenBucket::new(rate, now));
        let verdict = bucket.try_take(rate, now);
        match store.set(&k, &bucket.to_bytes(), cas) {
            Ok(()) => {
                return Taken {
                    verdict,
                    retries,
                    gave_up: false,
                };
            }
            Err(SetError::CasMismatch) => retries += 1,
            Err(SetError::Failed) => break,
        }
    }
    Taken {
        verdict: BucketVerdict::Allow { remaining: 0 },
        retries,
        gave_up: true,
    }
}

/// Core's [`BucketStore`] over a [`Store`]: each bucket set is a [`Family`] of slots.
pub struct SharedBuckets<'a> {
    /// The host's shared data.
    pub store: &'a dyn Store,
    /// The routes (their names key the families).
    pub compiled: &'a Compiled,
    /// `filter.bucket_slots`.
    pub slots: u32,
    /// Seed of the key → slot hash.
    pub seed: u64,
}

impl SharedBuckets<'_> {
    /// The family of `bucket`.
    pub fn family(&self, bucket: Bucket) -> Family {
        let name = |route: usize| {
            self.compiled
                .routes
                .get(route)
                .map_or("", |r| r.route.name.as_str())
        };
        match bucket {
            Bucket::Connections { route } => {
                Family::new("conn", name(route), self.slots, self.seed)
            }
            Bucket::Rooms { route } => Family::new("room", name(route), self.slots, self.seed),
            Bucket::Credentials => Family::new("cred", "", self.slots, self.seed),
        }
    }
}

impl BucketStore for SharedBuckets<'_> {
    fn take(&self, bucket: Bucket, key: &str, rate: &Rate, now: Duration) -> BucketVerdict {
        take(self.store, &self.family(bucket), key, rate, now).verdict
    }
}

/// The shared data key of the slot hash's seed (8 bytes, little-endian).
pub const SEED_KEY: &str = "sigmesh/seed";

/// The seed every VM of this Envoy uses: the one in shared data, or `fresh` (random) when this
/// VM is the first. The key is created with [`MARKER`] first (a write on a missing key ignores
/// the CAS token), then the seed goes in by a real compare-and-swap, so of two VMs racing
/// exactly one writes it and the other reads it. `None` when the store cannot be used.
pub fn shared_seed(store: &dyn Store, fresh: u64) -> Option<u64> {
    for _ in 0..MAX_ATTEMPTS {
        match store.get(SEED_KEY) {
            (Some(v), _) if v.len() == 8 => {
                let mut b = [0u8; 8];
                b.copy_from_slice(&v);
                return Some(u64::from_le_bytes(b));
            }
            (Some(_), Some(cas)) => match store.set(SEED_KEY, &fresh.to_le_bytes(), Some(cas)) {
                Ok(()) => return Some(fresh),
                Err(SetError::CasMismatch) => continue,
                Err(SetError::Failed) => return None,
            },
            _ => {
                if store.set(SEED_KEY, MARKER, None).is_err() {
                    return None;
                }
            }
        }
    }
    None
}

/// The seed in shared data, if one is there (a VM checks it again at its first request: in
/// the one interleaving where two first VMs both wrote, the second write is the one kept).
pub fn stored_seed(store: &dyn Store) -> Option<u64> {
    match store.get(SEED_KEY) {
        (Some(v), _) if v.len() == 8 => {
            let mut b = [0u8; 8];
            b.copy_from_slice(&v);
            Some(u64::from_le_bytes(b))
        }
        _ => None,
    }
}

/// An in-memory [`Store`] with Envoy's semantics (a CAS of `None`, or on a missing key, always
/// writes), for tests and for hosts without shared data.
#[derive(Debug, Default)]
pub struct MemStore {
    map: std::cell::RefCell<std::collections::HashMap<String, (Vec<u8>, u32)>>,
    next: std::cell::Cell<u32>,
}

impl Store for MemStore {
    fn get(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>) {
        match self.map.borrow().get(key) {
            Some((v, c)) => (Some(v.clone()), Some(*c)),
            None => (None, None),
        }
    }

    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), SetError> {
        let mut m = self.map.borrow_mut();
        if let (Some(cas), Some((_, cur))) = (cas, m.get(key))
            && cas != *cur
        {
            return Err(SetError::CasMismatch);
        }
        let c = self.next.get().wrapping_add(1);
        self.next.set(c);
        m.insert(key.to_owned(), (value.to_vec(), c));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::{Cell, RefCell};
    use std::collections::HashMap;

    /// Envoy's semantics, plus writes by "another VM" injected before the next sets.
    #[derive(Default)]
    struct Mem {
        map: RefCell<HashMap<String, (Vec<u8>, u32)>>,
        next: Cell<u32>,
        /// Writes by "another VM" injected before the next `n` sets.
        interfere: Cell<u32>,
    }

    impl Store for Mem {
        fn get(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>) {
            match self.map.borrow().get(key) {
                Some((v, c)) => (Some(v.clone()), Some(*c)),
                None => (None, None),
            }
        }
        fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), SetError> {
            if self.interfere.get() > 0 {
                self.interfere.set(self.interfere.get() - 1);
                let c = self.next.get() + 1;
                self.next.set(c);
                if let Some(e) = self.map.borrow_mut().get_mut(key) {
                    e.1 = c;
                }
            }
            let mut m = self.map.borrow_mut();
            if let (Some(cas), Some((_, cur))) = (cas, m.get(key))
                && cas != *cur
            {
                return Err(SetError::CasMismatch);
            }
            let c = self.next.get() + 1;
            self.next.set(c);
            m.insert(key.to_owned(), (value.to_vec(), c));
            Ok(())
        }
    }

    fn rate(burst: u32) -> Rate {
        Rate {
            rate: 1,
            per: Duration::from_secs(3600),
            burst,
        }
    }

    #[test]
    fn burst_then_limited_across_calls() {
        let m = Mem::default();
        let f = Family::new("conn", "r", 16, 7);
        prepare(&m, &f);
        assert_eq!(m.map.borrow().len(), 16);
        let t = Duration::from_secs(1_000);
        for _ in 0..3 {
            assert!(take(&m, &f, "1.2.3.4", &rate(3), t).verdict.is_allowed());
        }
        let last = take(&m, &f, "1.2.3.4", &rate(3), t);
        assert!(matches!(last.verdict, BucketVerdict::Limited { .. }));
    }

    #[test]
    fn cas_mismatch_is_retried_and_no_token_is_lost() {
        let m = Mem::default();
        let f = Family::new("conn", "r", 4, 1);
        prepare(&m, &f);
        m.interfere.set(5);
        let t = take(&m, &f, "k", &rate(2), Duration::from_secs(5));
        assert!(t.verdict.is_allowed());
        assert_eq!(t.retries, 5);
        assert!(!t.gave_up);
        assert!(
            take(&m, &f, "k", &rate(2), Duration::from_secs(5))
                .verdict
                .is_allowed()
        );
        assert!(
            !take(&m, &f, "k", &rate(2), Duration::from_secs(5))
                .verdict
                .is_allowed()
        );
    }

    #[test]
    fn endless_contention_gives_up_open() {
        let m = Mem::default();
        let f = Family::new("conn", "r", 4, 1);
        prepare(&m, &f);
        m.interfere.set(u32::MAX);
        let t = take(&m, &f, "k", &rate(1), Duration::ZERO);
        assert!(t.gave_up);
        assert!(t.verdict.is_allowed());
    }

    #[test]
    fn the_seed_is_made_once_and_shared() {
        let store = MemStore::default();
        let first = shared_seed(&store, 0x1234_5678_9abc_def0).expect("a seed");
        assert_eq!(first, 0x1234_5678_9abc_def0);
        // Every later VM reads it, whatever its own random number.
        assert_eq!(shared_seed(&store, 42), Some(first));
        assert_eq!(stored_seed(&store), Some(first));
        // A VM that finds the marker (another VM is between its two writes) CASes its own in;
        // if another write lands in between, it reads the winner's.
        let store = Mem::default();
        store.set(SEED_KEY, MARKER, None).expect("marker");
        store.interfere.set(1);
        let got = shared_seed(&store, 7).expect("a seed");
        assert_eq!(Some(got), stored_seed(&store));
    }

    #[test]
    fn slots_are_bounded_and_seeded() {
        let f = Family::new("room", "r", 8, 1);
        assert!((0..1000).all(|i| f.slot(&i.to_string()) < 8));
        let g = Family::new("room", "r", 8, 2);
        assert!((0..100).any(|i| f.slot(&i.to_string()) != g.slot(&i.to_string())));
        assert_eq!(f.slot_key(3), "sigmesh/room/r/3");
    }
}
