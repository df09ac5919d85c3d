//! Picking an endpoint for a new session at 100 endpoints (issue 13's target: under 1 µs):
//! core's bounded-load consistent hashing ([`Ring::pick`], a binary search on 25,600 points
//! then a short walk), `least_sessions`, and, as the baseline, the naive scan a pool without
//! a ring would do for the same guarantees: rendezvous hashing over every endpoint (one hash
//! per endpoint per pick), the highest healthy one below the load bound.
//!
//! The loads are those of a pool at work: 100 endpoints holding 40 to 60 sessions each, two
//! unhealthy; 1,000 room keys picked in turn.
//!
//! `cargo bench -p sigmesh-benches --bench balance`

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use sigmesh_core::balance::{self, Balance, Load, Ring, capacity, mix};
use sigmesh_core::split::stable_hash;

const ENDPOINTS: usize = 100;
const KEYS: usize = 1000;

fn setup() -> (Vec<String>, Vec<Load>, Vec<String>) {
    let ids: Vec<String> = (0..ENDPOINTS)
        .map(|i| format!("ws://10.0.{}.{}:9001/ws", i / 250, i % 250))
        .collect();
    let loads: Vec<Load> = (0..ENDPOINTS)
        .map(|i| Load {
            healthy: i % 50 != 7,
            sessions: 40 + (i as u64 * 37) % 21,
        })
        .collect();
    let keys = (0..KEYS).map(|k| format!("room-{k}")).collect();
    (ids, loads, keys)
}

/// The baseline: rendezvous hashing with the same load bound, scanning every endpoint.
fn naive(ids: &[u64], loads: &[Load], key: &[u8]) -> Option<usize> {
    let (healthy, live) = loads
        .iter()
        .filter(|l| l.healthy)
        .fold((0, 0), |(n, s), l| (n + 1, s + l.sessions));
    let cap = capacity(live, healthy);
    let k = stable_hash(key);
    (0..loads.len())
        .filter(|&i| loads[i].healthy && loads[i].sessions < cap)
        .max_by_key(|&i| mix(k ^ ids[i]))
}

fn bench(c: &mut Criterion) {
    let (ids, loads, keys) = setup();
    let ring = Ring::new(&ids);
    let hashed: Vec<u64> = ids.iter().map(|i| stable_hash(i.as_bytes())).collect();
    // Both find an endpoint for every key, healthy and below the bound.
    for k in &keys {
        for pick in [
            ring.pick(k.as_bytes(), &loads),
            naive(&hashed, &loads, k.as_bytes()),
        ] {
            let i = pick.expect("an endpoint");
            assert!(loads[i].healthy);
        }
    }
    let mut g = c.benchmark_group("pick_100_endpoints");
    g.throughput(Throughput::Elements(KEYS as u64));
    g.bench_function("ring_room", |b| {
        b.iter(|| {
            for k in &keys {
                black_box(ring.pick(black_box(k.as_bytes()), &loads));
            }
        })
    });
    g.bench_function("least_sessions", |b| {
        b.iter(|| {
            for (r, _) in keys.iter().enumerate() {
                black_box(balance::pick(
                    Balance::LeastSessions,
                    &ring,
                    None,
                    &loads,
                    r as u32,
                ));
            }
        })
    });
    g.bench_function("naive_rendezvous_scan", |b| {
        b.iter(|| {
            for k in &keys {
                black_box(naive(&hashed, &loads, black_box(k.as_bytes())));
            }
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
