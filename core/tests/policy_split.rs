//! Property tests of the canary split.

use proptest::prelude::*;
use sigmesh_core::split::{BUCKETS, Pick, Reason, Splitter, bucket_of, stable_hash};

/// The documented reference: FNV-1a 64 written from the spec, then the cumulative-weight rule.
fn reference_pick(weights: &[u32], key: &[u8]) -> usize {
    let mut h: u64 = 0xcbf29ce484222325;
    for &b in key {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x100000001b3);
    }
    let b = h % 10_000;
    let total: u64 = weights.iter().map(|&w| u64::from(w)).sum();
    let mut cum = 0u64;
    for (i, &w) in weights.iter().enumerate() {
        cum += u64::from(w);
        if b * total < cum * 10_000 {
            return i;
        }
    }
    unreachable!("total > 0")
}

fn splitter(weights: &[u32]) -> Splitter {
    let names: Vec<String> = (0..weights.len()).map(|i| format!("u{i}")).collect();
    Splitter::new(
        names
            .iter()
            .map(String::as_str)
            .zip(weights.iter().copied()),
    )
    .expect("weights sum > 0")
}

fn weights_strategy() -> impl Strategy<Value = Vec<u32>> {
    prop::collection::vec(0u32..1_000, 1..6).prop_filter("total > 0", |w| w.iter().any(|&x| x > 0))
}

fn shares(s: &Splitter, n: usize, keys: impl Iterator<Item = String>) -> Vec<f64> {
    let mut counts = vec![0usize; s.len()];
    let mut total = 0;
    for k in keys {
        counts[s.pick(None, Some(k.as_bytes()), 0).index] += 1;
        total += 1;
    }
    assert!(total >= n);
    counts
        .iter()
        .map(|&c| c as f64 * 100.0 / total as f64)
        .collect()
}

fn within(shares: &[f64], weights: &[u32], pp: f64) -> Result<(), TestCaseError> {
    let total: u32 = weights.iter().sum();
    for (s, &w) in shares.iter().zip(weights) {
        let want = f64::from(w) * 100.0 / f64::from(total);
        prop_assert!(
            (s - want).abs() <= pp,
            "share {s:.2}% for weight {w}/{total} ({want:.2}%)"
        );
    }
    Ok(())
}

proptest! {
    /// The same key goes to the same upstream, on any replica (a splitter built anew), and as the
    /// spec's reference computes it.
    #[test]
    fn same_key_same_upstream(weights in weights_strategy(), key in any::<Vec<u8>>().prop_filter("non-empty", |k| !k.is_empty()), random in any::<u32>()) {
        let a = splitter(&weights);
        let b = splitter(&weights);
        let p = a.pick(None, Some(&key), random);
        prop_assert_eq!(p.reason, Reason::Sticky);
        prop_assert_eq!(p, a.pick(None, Some(&key), random.wrapping_add(1)));
        prop_assert_eq!(p, b.pick(None, Some(&key), 0));
        prop_assert_eq!(p.index, reference_pick(&weights, &key));
        prop_assert!(weights[p.index] > 0);
        prop_assert!(bucket_of(&key) < BUCKETS);
        prop_assert_eq!(u64::from(bucket_of(&key)), stable_hash(&key) % 10_000);
    }

    /// Exactly `weight_i / total` of the 10,000 buckets (to one bucket) go to upstream `i`.
    #[test]
    fn buckets_are_shared_by_weight(weights in weights_strategy()) {
        let s = splitter(&weights);
        let mut counts = vec![0i64; weights.len()];
        for b in 0..BUCKETS {
            counts[s.by_bucket(b)] += 1;
        }
        let total: u32 = weights.iter().sum();
        for (c, &w) in counts.iter().zip(&weights) {
            let exact = i64::from(w) * 10_000 / i64::from(total);
            prop_assert!((c - exact).abs() <= 1, "{c} buckets for weight {w}/{total}");
        }
    }

    /// Moving weight from stable to canary only moves keys to canary.
    #[test]
    fn raising_canary_only_moves_keys_to_canary(
        old in 1u32..100, raise in 0u32..100, total in 100u32..101,
        keys in prop::collection::vec("[a-z0-9-]{1,16}", 1..200),
    ) {
        let old_canary = old.min(total);
        let new_canary = (old_canary + raise).min(total);
        let before = splitter(&[total - old_canary, old_canary]);
        let after = splitter(&[total - new_canary, new_canary]);
        for k in keys {
            if before.pick(None, Some(k.as_bytes()), 0).index == 1 {
                prop_assert_eq!(after.pick(None, Some(k.as_bytes()), 0).index, 1, "key {} left canary", k);
            }
        }
    }

    /// An override naming an upstream of weight above 0 wins; one of weight 0, or an unknown
    /// name, is ignored.
    #[test]
    fn overrides(weights in weights_strategy(), idx in any::<prop::sample::Index>(), key in "[a-z]{0,8}", random in any::<u32>()) {
        let s = splitter(&weights);
        let i = idx.index(weights.len());
        let forced = s.pick(Some(&format!("u{i}")), Some(key.as_bytes()), random);
        if weights[i] > 0 {
            prop_assert_eq!(forced, Pick { index: i, reason: Reason::Override });
        } else {
            prop_assert_eq!(forced, s.pick(None, Some(key.as_bytes()), random));
        }
        let ignored = s.pick(Some("no-such-upstream"), Some(key.as_bytes()), random);
        let plain = s.pick(None, Some(key.as_bytes()), random);
        prop_assert_eq!(ignored, plain);
        if key.is_empty() {
            prop_assert_eq!(plain, Pick { index: s.by_bucket(random % BUCKETS), reason: Reason::Random });
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Over 10,000 distinct keys (sequential ids under a random prefix) the split is within ±2
    /// percentage points of the weights.
    #[test]
    fn split_tracks_weights_sequential_keys(prefix in "[a-z]{0,6}", which in 0usize..4) {
        let weights: &[u32] = [&[80, 20][..], &[90, 10], &[33, 33, 34], &[50, 50]][which];
        let s = splitter(weights);
        let got = shares(&s, 10_000, (0..10_000).map(|i| format!("{prefix}room-{i}")));
        within(&got, weights, 2.0)?;
    }

    /// The same with 10,000 random keys (UUID-like and short alphanumeric, from a generated
    /// seed), and random weights.
    #[test]
    fn split_tracks_weights_random_keys(seed in any::<u64>(), weights in prop::collection::vec(1u32..100, 2..5)) {
        let s = splitter(&weights);
        let mut rng = seed | 1;
        let mut next = move || {
            // xorshift64*
            rng ^= rng >> 12;
            rng ^= rng << 25;
            rng ^= rng >> 27;
            rng.wrapping_mul(0x2545_f491_4f6c_dd1d)
        };
        let mut keys = std::collections::HashSet::new();
        while keys.len() < 10_000 {
            let a = next();
            let k = if a % 2 == 0 {
                format!("{:08x}-{:04x}-{:04x}", a >> 32, (a >> 16) & 0xffff, next() & 0xffff)
            } else {
                let len = 1 + (a >> 8) % 12;
                (0..len).map(|i| char::from(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"[((a >> (i * 5)) % 62) as usize])).collect()
            };
            keys.insert(k);
        }
        let got = shares(&s, 10_000, keys.into_iter());
        within(&got, &weights, 2.0)?;
    }
}
