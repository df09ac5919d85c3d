//! Unit tests of `bucket`.
use super::*;

fn rate(rate: u32, per: Duration, burst: u32) -> Rate {
    Rate { rate, per, burst }
}

const S: Duration = Duration::from_secs(1);
const MS: Duration = Duration::from_millis(1);

fn allowed(v: BucketVerdict) -> bool {
    v.is_allowed()
}

#[test]
fn burst_then_limited_with_exact_retry() {
    let r = rate(10, S, 3);
    let mut b = TokenBucket::new(&r, Duration::ZERO);
    assert_eq!(
        b.try_take(&r, Duration::ZERO),
        BucketVerdict::Allow { remaining: 2 }
    );
    assert_eq!(
        b.try_take(&r, Duration::ZERO),
        BucketVerdict::Allow { remaining: 1 }
    );
    assert_eq!(
        b.try_take(&r, Duration::ZERO),
        BucketVerdict::Allow { remaining: 0 }
    );
    assert_eq!(
        b.try_take(&r, Duration::ZERO),
        BucketVerdict::Limited {
            retry_after: 100 * MS
        }
    );
    assert_eq!(
        b.try_take(&r, 30 * MS),
        BucketVerdict::Limited {
            retry_after: 70 * MS
        }
    );
    assert_eq!(
        b.try_take(&r, 100 * MS),
        BucketVerdict::Allow { remaining: 0 }
    );
    assert_eq!(b.time_to_full(&r, 100 * MS), 300 * MS);
    assert_eq!(b.time_to_full(&r, 400 * MS), Duration::ZERO);
    assert_eq!(b.remaining(&r, 250 * MS), 1);
}

#[test]
fn retry_after_rounds_up_to_the_nanosecond() {
    // 3 tokens per second: one token every 333_333_333.33 ns.
    let r = rate(3, S, 1);
    let mut b = TokenBucket::new(&r, Duration::ZERO);
    assert!(allowed(b.try_take(&r, Duration::ZERO)));
    assert_eq!(
        b.try_take(&r, Duration::ZERO),
        BucketVerdict::Limited {
            retry_after: Duration::from_nanos(333_333_334)
        }
    );
    assert!(!allowed(b.try_take(&r, Duration::from_nanos(333_333_333))));
    assert!(allowed(b.try_take(&r, Duration::from_nanos(333_333_334))));
}

#[test]
fn no_drift_over_many_small_steps() {
    // 7 tokens per 3 s looked at every nanosecond-ish step: exactly 7 * 300 tokens in 300 periods.
    // Burst 2, one token taken up front: the cap is never reached, nothing is lost to it.
    let r = rate(7, 3 * S, 2);
    let mut b = TokenBucket::new(&r, Duration::ZERO);
    assert!(allowed(b.try_take(&r, Duration::ZERO)));
    let mut granted = 0u64;
    let mut t = Duration::ZERO;
    let step = Duration::from_nanos(1_234_567);
    let end = 300 * 3 * S;
    while t < end {
        t += step;
        if allowed(b.try_take(&r, t)) {
            granted += 1;
        }
    }
    // The token left up front plus every whole token accrued: 1 + floor(7 * t_last / 3s).
    let expected = 1 + (7 * t.as_nanos() / (3 * S).as_nanos()) as u64;
    assert_eq!(granted, expected);
}

#[test]
fn time_going_backwards_refills_nothing() {
    let r = rate(1, S, 2);
    let mut b = TokenBucket::new(&r, 100 * S);
    assert!(allowed(b.try_take(&r, 100 * S)));
    assert!(allowed(b.try_take(&r, 100 * S)));
    assert!(!allowed(b.try_take(&r, 50 * S)));
    assert!(!allowed(b.try_take(&r, Duration::ZERO)));
    // Refill counts from the latest time seen.
    assert!(allowed(b.try_take(&r, 101 * S)));
    assert!(!allowed(b.try_take(&r, 101 * S)));
}

#[test]
fn huge_gaps_and_extreme_rates_do_not_panic() {
    for r in [
        rate(u32::MAX, Duration::MAX, u32::MAX),
        rate(1, Duration::MAX, 1),
        rate(u32::MAX, Duration::from_nanos(1), u32::MAX),
        rate(0, S, 1),
        rate(1, Duration::ZERO, 1),
        rate(1, S, 0),
    ] {
        let mut b = TokenBucket::new(&r, Duration::ZERO);
        for now in [
            Duration::ZERO,
            Duration::MAX,
            S,
            Duration::MAX,
            Duration::ZERO,
        ] {
            let _ = b.try_take(&r, now);
            let _ = b.time_to_full(&r, now);
            let _ = b.remaining(&r, now);
        }
    }
    let r = rate(0, S, 1);
    let mut b = TokenBucket::new(&r, Duration::ZERO);
    assert!(allowed(b.try_take(&r, Duration::ZERO)));
    assert_eq!(
        b.try_take(&r, S),
        BucketVerdict::Limited {
            retry_after: Duration::MAX
        }
    );
    let r = rate(1, S, 0);
    let mut b = TokenBucket::new(&r, Duration::ZERO);
    assert_eq!(
        b.try_take(&r, S),
        BucketVerdict::Limited {
            retry_after: Duration::MAX
        }
    );
}

#[test]
fn keyed_buckets_are_independent() {
    let mut k = KeyedBuckets::<String>::new(rate(1, S, 1), 100);
    assert!(allowed(k.try_take("a", Duration::ZERO)));
    assert!(!allowed(k.try_take("a", Duration::ZERO)));
    assert!(allowed(k.try_take("b", Duration::ZERO)));
    assert_eq!(k.len(), 2);
    assert_eq!(k.remaining("a", Duration::ZERO), 0);
    assert_eq!(k.remaining("zzz", Duration::ZERO), 1);
    assert_eq!(k.time_to_full("a", Duration::ZERO), S);
    assert_eq!(k.time_to_full("zzz", Duration::ZERO), Duration::ZERO);
}

#[test]
fn keyed_generations_rotate_and_promote() {
    let r = rate(1, 3600 * S, 5);
    let mut k = KeyedBuckets::<u32>::with_seed(r, 4, 7);
    let t = Duration::ZERO;
    k.try_take(&1, t);
    k.try_take(&2, t); // current {1,2}
    k.try_take(&3, t); // rotate: previous {1,2}, current {3}
    assert_eq!(k.len(), 3);
    k.try_take(&1, t); // promote 1: current {3,1}, previous {2}
    assert_eq!(k.remaining(&1, t), 3);
    k.try_take(&4, t); // rotate: previous {3,1}, current {4}; 2 is dropped
    assert!(k.get(&2).is_none());
    assert_eq!(k.remaining(&1, t), 3);
    assert!(k.len() <= 4);
}

#[test]
fn keyed_max_keys_one() {
    let mut k = KeyedBuckets::<u32>::with_seed(rate(1, S, 1), 1, 0);
    for i in 0..10 {
        k.try_take(&i, Duration::ZERO);
        assert_eq!(k.len(), 1);
    }
    let mut k = KeyedBuckets::<u32>::with_seed(rate(1, S, 1), 0, 0);
    k.try_take(&1, Duration::ZERO);
    k.try_take(&2, Duration::ZERO);
    assert_eq!(k.len(), 1);
}

#[test]
fn token_bucket_is_small() {
    assert!(std::mem::size_of::<TokenBucket>() <= 32);
}

#[test]
fn a_stored_fraction_over_a_shorter_period_never_underflows() {
    let long = Rate {
        rate: 1,
        per: Duration::from_secs(3600),
        burst: 1,
    };
    let short = Rate {
        rate: 1,
        per: Duration::from_millis(1),
        burst: 1,
    };
    let now = Duration::from_secs(10);
    let mut b = TokenBucket::new(&long, now);
    assert!(b.try_take(&long, now).is_allowed());
    // Half an hour of credit under the long period, then read under the 1 ms one, at the
    // same instant (no refill): frac > per.
    let mut b = TokenBucket::from_bytes(&b.to_bytes()).unwrap_or(b);
    let t = now + Duration::from_secs(1800);
    let _ = b.try_take(&long, t);
    let v = b.try_take(&short, t);
    assert!(matches!(
        v,
        BucketVerdict::Limited { .. } | BucketVerdict::Allow { .. }
    ));
    // Arbitrary bytes (shared data is writable by every VM) never panic either.
    for fill in [0u8, 0x7f, 0xff] {
        let bytes = [fill; TokenBucket::ENCODED_LEN];
        if let Some(mut b) = TokenBucket::from_bytes(&bytes) {
            let _ = b.try_take(&short, Duration::ZERO);
            let _ = b.time_to_full(&short, Duration::ZERO);
        }
    }
}

/// The global bucket (µs, the Redis script's twin) gives the local bucket's answers for times
/// and periods in whole microseconds: same grants, same retry-after, over random sequences of
/// shapes, gaps and takes.
#[test]
fn global_bucket_is_the_local_bucket_in_microseconds() {
    use super::global::{GlobalBucket, fits};
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
    let mut next = move |m: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % m
    };
    for _ in 0..300 {
        let r = rate(
            1 + next(50) as u32,
            Duration::from_micros(1 + next(3_000_000)),
            1 + next(40) as u32,
        );
        assert!(fits(&r));
        let mut local = TokenBucket::new(&r, Duration::ZERO);
        let mut global = GlobalBucket::new(&r, 0);
        let mut now = 0u64;
        for _ in 0..200 {
            now += match next(4) {
                0 => 0,
                1 => next(1_000),
                2 => next(200_000),
                _ => next(10_000_000),
            };
            let l = local.try_take(&r, Duration::from_micros(now));
            let g = global.take(&r, 1, now);
            match l {
                BucketVerdict::Allow { remaining } => {
                    assert_eq!((g.granted, g.remaining), (1, u64::from(remaining)), "{r:?}");
                }
                BucketVerdict::Limited { retry_after } => {
                    assert_eq!(g.granted, 0, "{r:?}");
                    // Local rounds up to the ns, global to the µs.
                    assert!(
                        g.retry_after >= retry_after
                            && g.retry_after - retry_after < Duration::from_micros(1),
                        "{r:?}: {:?} vs {retry_after:?}",
                        g.retry_after
                    );
                }
            }
        }
    }
}

#[test]
fn global_bucket_grants_a_batch_up_to_what_it_holds() {
    use super::global::GlobalBucket;
    let r = rate(10, S, 20);
    let mut b = GlobalBucket::new(&r, 0);
    assert_eq!(b.take(&r, 8, 0).granted, 8);
    assert_eq!(b.take(&r, 8, 0).granted, 8);
    let t = b.take(&r, 8, 0);
    assert_eq!((t.granted, t.remaining), (4, 0));
    let t = b.take(&r, 8, 0);
    assert_eq!(t.granted, 0);
    assert_eq!(t.retry_after, Duration::from_millis(100));
    assert_eq!(t.reset, Duration::from_secs(2));
    // 250 ms later: 2 whole tokens and half of one.
    let t = b.take(&r, 8, 250_000);
    assert_eq!((t.granted, t.remaining), (2, 0));
}

#[test]
fn global_buckets_that_do_not_fit_doubles_are_refused() {
    use super::global::fits;
    assert!(fits(&rate(u32::MAX, S, u32::MAX)));
    assert!(!fits(&rate(1, Duration::from_secs(3600), u32::MAX)));
}
