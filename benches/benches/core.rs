//! Micro-benchmarks of `sigmesh-core`'s hot paths, each against a naive baseline in the same group.
//!
//! `cargo bench -p sigmesh-benches --bench core` (about a minute and a half).

use std::hint::black_box;
use std::sync::Mutex;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use sigmesh_benches::naive;
use sigmesh_core::bucket::{KeyedBuckets, TokenBucket};
use sigmesh_core::config::{Limits, Match, Rate, Route, Signaling, Split, Upstream};
use sigmesh_core::route::{RequestHead, RouteTable};
use sigmesh_core::signal::{Signal, pointer_value};
use sigmesh_core::split::Splitter;

/// A small linear congruential generator: cheap, deterministic key choice.
struct Lcg(u64);

impl Lcg {
    #[inline]
    fn next(&mut self, n: usize) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 33) % n as u64) as usize
    }
}

const RATE: Rate = Rate {
    rate: 1_000,
    per: Duration::from_secs(1),
    burst: 100,
};

fn bucket(c: &mut Criterion) {
    let mut g = c.benchmark_group("bucket_decision");
    // 137 µs between decisions at 1000/s: a mix of allowed and limited decisions.
    const STEP: u64 = 137_000;
    g.bench_function("core", |b| {
        let mut bucket = TokenBucket::new(&RATE, Duration::ZERO);
        let mut now = 0u64;
        b.iter(|| {
            now += STEP;
            black_box(bucket.try_take(black_box(&RATE), Duration::from_nanos(now)))
        })
    });
    g.bench_function("core_in_mutex", |b| {
        let bucket = Mutex::new(TokenBucket::new(&RATE, Duration::ZERO));
        let mut now = 0u64;
        b.iter(|| {
            now += STEP;
            let mut guard = bucket.lock().unwrap_or_else(|e| e.into_inner());
            black_box(guard.try_take(black_box(&RATE), Duration::from_nanos(now)))
        })
    });
    g.bench_function("naive_float_mutex", |b| {
        let bucket = Mutex::new(naive::FloatBucket::new(100.0));
        let mut now = 0u64;
        b.iter(|| {
            now += STEP;
            let mut guard = bucket.lock().unwrap_or_else(|e| e.into_inner());
            black_box(guard.try_take(black_box(1000.0), 100.0, Duration::from_nanos(now)))
        })
    });
    g.finish();
}

fn keyed(c: &mut Criterion) {
    let keys: Vec<String> = (0..100_000u32)
        .map(|i| format!("10.{}.{}.{}", i >> 16, (i >> 8) & 255, i & 255))
        .collect();
    let mut g = c.benchmark_group("keyed_decision_100k_keys");
    g.bench_function("core", |b| {
        let mut set = KeyedBuckets::<String>::new(RATE, 262_144);
        for k in &keys {
            let _ = set.try_take(k.as_str(), Duration::ZERO);
        }
        let mut rng = Lcg(1);
        let mut now = 0u64;
        b.iter(|| {
            now += 1_000;
            let k = &keys[rng.next(keys.len())];
            black_box(set.try_take(k.as_str(), Duration::from_nanos(now)))
        })
    });
    g.bench_function("naive_hashmap_instant", |b| {
        let mut set = naive::NaiveKeyed::default();
        for k in &keys {
            let _ = set.try_take(k, 1000.0, 100.0);
        }
        let mut rng = Lcg(1);
        b.iter(|| {
            let k = &keys[rng.next(keys.len())];
            black_box(set.try_take(k, 1000.0, 100.0))
        })
    });
    g.finish();

    // A flood: every decision a key not seen for a long time (1M distinct keys, cycled).
    let flood: Vec<String> = (0..1_000_000u32).map(|i| format!("flood-{i}")).collect();
    let mut g = c.benchmark_group("keyed_decision_flood_1m_keys");
    g.bench_function("core_max_100k", |b| {
        let mut set = KeyedBuckets::<String>::new(RATE, 100_000);
        let mut i = 0usize;
        b.iter(|| {
            i = (i + 1) % flood.len();
            black_box(set.try_take(flood[i].as_str(), Duration::ZERO))
        });
        assert!(set.len() <= 100_000);
    });
    g.bench_function("naive_unbounded", |b| {
        let mut set = naive::NaiveKeyed::default();
        let mut i = 0usize;
        b.iter(|| {
            i = (i + 1) % flood.len();
            black_box(set.try_take(&flood[i], 1000.0, 100.0))
        })
    });
    g.finish();
}

fn routes() -> Vec<Route> {
    (0..100)
        .map(|i| {
            let mut headers = std::collections::BTreeMap::new();
            if i % 3 == 0 {
                headers.insert("x-tenant".to_owned(), format!("tenant-{i}"));
            }
            let host = if i % 2 == 0 {
                format!("svc{i}.example.com")
            } else {
                format!("*.zone{i}.example.com")
            };
            Route {
                name: format!("route-{i}"),
                matcher: Match {
                    path: None,
                    path_prefix: Some(format!("/api/v{i}/")),
                    host: Some(host),
                    headers,
                },
                websocket: None,
                limits: Limits::default(),
                split: Split::default(),
                affinity: Default::default(),
                rollout: None,
                upstreams: vec![Upstream {
                    name: "u".into(),
                    url: None,
                    weight: 1,
                    tls: None,
                    pool: Default::default(),
                }],
            }
        })
        .collect()
}

fn route(c: &mut Criterion) {
    let routes = routes();
    let table = RouteTable::new(&routes);
    let headers: [(&str, &str); 6] = [
        ("User-Agent", "Mozilla/5.0 (X11; Linux x86_64)"),
        ("Accept", "*/*"),
        ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ("Sec-WebSocket-Version", "13"),
        ("Upgrade", "websocket"),
        ("X-Tenant", "tenant-99"),
    ];
    // The last route matches: a full scan.
    let (host, path) = ("EU.Zone99.Example.com:8443", "/api/v99/ws");
    let req = RequestHead {
        host: Some(host),
        path,
        headers: &headers,
    };
    assert_eq!(table.find(&req), Some(99));
    assert_eq!(
        naive::find_route(&routes, Some(host), path, &headers),
        Some(99)
    );

    let mut g = c.benchmark_group("route_match_100_routes");
    g.bench_function("core", |b| {
        b.iter(|| black_box(table.find(black_box(&req))))
    });
    g.bench_function("naive_allocating", |b| {
        b.iter(|| {
            black_box(naive::find_route(
                black_box(&routes),
                Some(host),
                path,
                &headers,
            ))
        })
    });
    g.finish();
}

fn split(c: &mut Criterion) {
    let weights = vec![("stable".to_owned(), 90), ("canary".to_owned(), 10)];
    let splitter = Splitter::new(weights.iter().map(|(n, w)| (n.as_str(), *w))).expect("weights");
    let keys: Vec<String> = (0..1024).map(|i| format!("room-{i:05}")).collect();
    let mut g = c.benchmark_group("split_decision");
    g.bench_function("core_fnv1a", |b| {
        let mut i = 0usize;
        b.iter(|| {
            i = (i + 1) & 1023;
            black_box(splitter.pick(None, Some(keys[i].as_bytes()), 0))
        })
    });
    g.bench_function("naive_siphash_resum", |b| {
        let mut i = 0usize;
        b.iter(|| {
            i = (i + 1) & 1023;
            black_box(naive::split(&weights, &keys[i]))
        })
    });
    g.finish();
}

/// A ~200-byte trickled ICE candidate.
const CANDIDATE: &str = r#"{"type":"candidate","room":"room-42","from":"peer-alice-7f3a","to":"peer-bob-19c2","candidate":{"candidate":"candidate:842163049 1 udp 1677729535 203.0.113.7 54321 typ srflx","sdpMid":"0","sdpMLineIndex":0}}"#;

fn offer() -> String {
    let mut sdp =
        String::from("v=0\r\no=- 4611731400430051336 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n");
    for i in 0..40 {
        sdp.push_str(&format!(
            "a=rtpmap:{} opus/48000/2\r\na=fmtp:{} minptime=10;useinbandfec=1\r\n",
            96 + i,
            96 + i
        ));
    }
    serde_json::json!({"type": "offer", "room": "room-42", "from": "peer-alice-7f3a", "sdp": sdp})
        .to_string()
}

fn signal(c: &mut Criterion) {
    let cfg = Signaling {
        kind: Some("/type".into()),
        room: Some("/room".into()),
        peer: Some("/from".into()),
    };
    let offer = offer();
    assert!(
        (180..=230).contains(&CANDIDATE.len()),
        "{}",
        CANDIDATE.len()
    );
    assert_eq!(
        pointer_value(CANDIDATE, "/room"),
        naive::pointer_value(CANDIDATE, "/room")
    );

    let mut g = c.benchmark_group("pointer_value_200b");
    g.bench_function("core", |b| {
        b.iter(|| black_box(pointer_value(black_box(CANDIDATE), "/room")))
    });
    g.bench_function("naive_value_parse", |b| {
        b.iter(|| black_box(naive::pointer_value(black_box(CANDIDATE), "/room")))
    });
    g.finish();

    let mut g = c.benchmark_group("signal_read_3_pointers_200b");
    g.bench_function("core", |b| {
        b.iter(|| black_box(Signal::read(black_box(CANDIDATE), &cfg)))
    });
    g.bench_function("naive_value_parse", |b| {
        b.iter(|| {
            black_box(naive::signal(
                black_box(CANDIDATE),
                ["/type", "/room", "/from"],
            ))
        })
    });
    g.finish();

    let mut g = c.benchmark_group(format!("signal_read_3_pointers_offer_{}b", offer.len()));
    g.bench_function("core", |b| {
        b.iter(|| black_box(Signal::read(black_box(&offer), &cfg)))
    });
    g.bench_function("naive_value_parse", |b| {
        b.iter(|| {
            black_box(naive::signal(
                black_box(&offer),
                ["/type", "/room", "/from"],
            ))
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(500))
        .sample_size(30);
    targets = bucket, keyed, route, split, signal
}
criterion_main!(benches);
