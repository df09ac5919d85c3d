//! Property tests of the token buckets.

use std::time::Duration;

use proptest::prelude::*;
use sigmesh_core::bucket::{BucketVerdict, KeyedBuckets, TokenBucket};
use sigmesh_core::config::Rate;

fn rate_strategy() -> impl Strategy<Value = Rate> {
    (1u32..50, 1u64..5_000, 1u32..50).prop_map(|(rate, per_ms, burst)| Rate {
        rate,
        per: Duration::from_millis(per_ms),
        burst,
    })
}

proptest! {
    /// In any window `[a, b]`, at most `burst + rate * (b - a) / per` tokens are granted.
    #[test]
    fn never_more_than_burst_plus_refill(
        r in rate_strategy(),
        steps in prop::collection::vec((0u64..3_000_000_000, 0u8..6), 1..80),
    ) {
        let mut b = TokenBucket::new(&r, Duration::ZERO);
        let mut now = 0u64;
        let mut grants: Vec<u64> = Vec::new();
        let mut times = Vec::new();
        for (advance, takes) in steps {
            now += advance % (2 * r.per.as_nanos() as u64).max(1);
            times.push(now);
            for _ in 0..takes {
                if b.try_take(&r, Duration::from_nanos(now)).is_allowed() {
                    grants.push(now);
                }
            }
        }
        let per = r.per.as_nanos();
        for (i, &a) in times.iter().enumerate() {
            for &z in &times[i..] {
                let n = grants.iter().filter(|&&t| t >= a && t <= z).count() as u128;
                let bound = u128::from(r.burst) * per + u128::from(r.rate) * u128::from(z - a);
                prop_assert!(n * per <= bound, "{n} tokens in [{a}, {z}] for {r:?}");
            }
        }
    }

    /// A clock going backwards never grants more than the latest time seen allows.
    #[test]
    fn backwards_time_gives_nothing_extra(
        r in rate_strategy(),
        times in prop::collection::vec(0u64..20_000_000_000, 1..100),
    ) {
        let mut b = TokenBucket::new(&r, Duration::ZERO);
        let mut granted = 0u128;
        let mut latest = 0u64;
        for t in times {
            latest = latest.max(t);
            if b.try_take(&r, Duration::from_nanos(t)).is_allowed() {
                granted += 1;
            }
            let per = r.per.as_nanos();
            prop_assert!(granted * per <= u128::from(r.burst) * per + u128::from(r.rate) * u128::from(latest));
        }
    }

    /// `retry_after` is exact: one nanosecond earlier is still limited, at it a token is there.
    #[test]
    fn retry_after_is_exact(r in rate_strategy(), start in 0u64..1_000_000_000_000, extra in 0u32..5) {
        let mut b = TokenBucket::new(&r, Duration::from_nanos(start));
        let now = Duration::from_nanos(start);
        for _ in 0..r.burst {
            prop_assert!(b.try_take(&r, now).is_allowed());
        }
        for _ in 0..extra {
            let _ = b.try_take(&r, now);
        }
        let BucketVerdict::Limited { retry_after } = b.try_take(&r, now) else {
            return Err(TestCaseError::fail("bucket should be empty"));
        };
        prop_assert!(retry_after > Duration::ZERO && retry_after <= r.per);
        let mut early = b;
        prop_assert!(!early.try_take(&r, now + retry_after - Duration::from_nanos(1)).is_allowed());
        prop_assert!(b.try_take(&r, now + retry_after).is_allowed());
    }

    /// `time_to_full` and `remaining` agree with what taking gives.
    #[test]
    fn time_to_full_refills_to_burst(r in rate_strategy(), used in 0u32..50, at in 0u64..10_000_000_000) {
        let mut b = TokenBucket::new(&r, Duration::ZERO);
        for _ in 0..used.min(r.burst) {
            let _ = b.try_take(&r, Duration::ZERO);
        }
        let now = Duration::from_nanos(at);
        let full_at = now + b.time_to_full(&r, now);
        prop_assert_eq!(b.remaining(&r, full_at), r.burst);
        prop_assert!(b.is_full(&r, full_at));
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 8, ..ProptestConfig::default() })]

    /// A flood of 100,000 distinct keys never holds more than `max_keys` buckets.
    #[test]
    fn keyed_len_is_bounded(max_keys in 1usize..3_000, seed in any::<u64>()) {
        let r = Rate { rate: 1, per: Duration::from_secs(1), burst: 3 };
        let mut k = KeyedBuckets::<String>::with_seed(r, max_keys, seed);
        for i in 0..100_000u32 {
            let _ = k.try_take(format!("k{i}").as_str(), Duration::from_millis(u64::from(i)));
            prop_assert!(k.len() <= max_keys);
        }
        prop_assert!(!k.is_empty());
    }
}

proptest! {
    /// A key used again before `max_keys / 2` other distinct keys have arrived keeps its bucket.
    #[test]
    fn a_key_in_use_is_never_reset(
        max_keys in 4usize..400,
        rounds in prop::collection::vec((0.0f64..1.0, 0u32..3), 1..12),
        seed in any::<u64>(),
    ) {
        let r = Rate { rate: 1, per: Duration::from_secs(3600), burst: 1_000 };
        let mut k = KeyedBuckets::<String>::with_seed(r, max_keys, seed);
        let now = Duration::ZERO;
        let mut fresh = 0u64;
        prop_assert!(k.try_take("hot", now).is_allowed());
        let mut expected = r.burst - 1;
        for (fraction, repeats) in rounds {
            // Fewer than max_keys / 2 distinct others, some of them seen more than once.
            let others = ((max_keys / 2) as f64 * fraction) as usize;
            let others = others.min(max_keys / 2 - 1);
            let names: Vec<String> = (0..others).map(|_| { fresh += 1; format!("o{fresh}") }).collect();
            for _ in 0..=repeats {
                for n in &names {
                    let _ = k.try_take(n.as_str(), now);
                }
            }
            prop_assert_eq!(k.try_take("hot", now), BucketVerdict::Allow { remaining: expected - 1 });
            expected -= 1;
            prop_assert!(k.len() <= max_keys);
        }
    }

    /// The keyed set decides like one bucket per key while it holds every key.
    #[test]
    fn keyed_matches_independent_buckets(
        r in rate_strategy(),
        ops in prop::collection::vec((0u8..8, 0u64..500_000_000), 1..200),
    ) {
        let mut k = KeyedBuckets::<u8>::new(r, 16);
        let mut buckets: [Option<TokenBucket>; 8] = [None; 8];
        let mut now = 0u64;
        for (key, advance) in ops {
            now += advance;
            let t = Duration::from_nanos(now);
            let b = buckets[key as usize].get_or_insert_with(|| TokenBucket::new(&r, t));
            prop_assert_eq!(k.try_take(&key, t), b.try_take(&r, t));
        }
    }
}
