//! A compressed session read through against an uncompressed one, per message: 2 KiB
//! signaling messages (JSON with a real candidate, and SDP-like text that compresses as SDP
//! does, about 2:1), through core's session object as the proxy runs it. `plain` reads the
//! uncompressed frames; `deflate` reads the same messages compressed with no context takeover
//! (permessage-deflate, RSV1), each inflated in the per-thread decompressor before reading.
//! Both must see the same message types and candidates (checked before measuring).
//!
//! `cargo bench -p sigmesh-benches --bench deflate`

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use flate2::{Compress, Compression, FlushCompress};
use sigmesh_benches::fixtures;
use sigmesh_core::config::Route;
use sigmesh_core::frame::frame;
use sigmesh_core::session::{Event, Observer, Session, SessionEnv, SessionOptions};

const SIZE: usize = 2048;
const MESSAGES: usize = 512;
const CHUNK: usize = 16 * 1024;

/// A payload with permessage-deflate and no context takeover: compressed on its own, the
/// trailing `00 00 ff ff` removed.
fn compress(text: &[u8]) -> Vec<u8> {
    let mut c = Compress::new(Compression::default(), false);
    let mut out = Vec::with_capacity(text.len() + 64);
    loop {
        let before = c.total_in();
        let at = before as usize;
        let r = c.compress_vec(&text[at..], &mut out, FlushCompress::Sync);
        assert!(r.is_ok(), "compress");
        if c.total_in() as usize == text.len() && out.len() < out.capacity() {
            break;
        }
        out.reserve(1024);
    }
    assert!(out.ends_with(&[0, 0, 0xff, 0xff]));
    out.truncate(out.len() - 4);
    out
}

/// The same messages as masked frames: plain, and compressed (RSV1 set).
fn streams() -> (Vec<u8>, Vec<u8>, usize) {
    let (mut plain, mut deflated) = (Vec::new(), Vec::new());
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut compressed_bytes = 0;
    for i in 0..MESSAGES {
        let mut text = format!(
            r#"{{"type":"candidate","room":"r{}","from":"p{}","candidate":"candidate:{i} 1 udp 2122260223 192.0.2.{} {} typ host generation 0","sdp":""#,
            i % 50,
            i % 100,
            i % 250,
            50000 + i
        );
        // SDP-like lines: a fixed vocabulary with random fingerprints and ports.
        while text.len() < SIZE - 2 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            text.push_str(&format!(
                "a=fingerprint:sha-256 {x:016X} m=audio {} ",
                x % 65536
            ));
        }
        text.truncate(SIZE - 2);
        text.push_str("\"}");
        let mask = Some((i as u32).to_le_bytes());
        plain.extend(frame(1, true, text.as_bytes(), mask));
        let z = compress(text.as_bytes());
        compressed_bytes += z.len();
        let mut f = frame(1, true, &z, mask);
        f[0] |= 0x40; // RSV1: compressed
        deflated.extend(f);
    }
    (plain, deflated, compressed_bytes)
}

/// Messages by type, and candidates.
#[derive(Default, PartialEq, Eq, Debug)]
struct Seen {
    candidate_messages: u64,
    candidates: u64,
    other: u64,
}

impl Observer for Seen {
    fn event(&mut self, e: Event<'_>) {
        match e {
            Event::Message { kind, .. } if kind.as_str() == "candidate" => {
                self.candidate_messages += 1
            }
            Event::Message { .. } => self.other += 1,
            Event::Candidates { count, .. } => self.candidates += u64::from(count),
            _ => {}
        }
    }
}

fn run(bytes: &[u8], route: &Route, compressed: bool, out: &mut Vec<u8>) -> Seen {
    out.clear();
    let mut s = Session::new(
        route,
        SessionOptions {
            deflate: compressed,
            inflate: compressed,
            ..SessionOptions::default()
        },
    );
    let mut seen = Seen::default();
    for chunk in bytes.chunks(CHUNK) {
        let env = SessionEnv {
            route,
            route_index: 0,
            buckets: &fixtures::NoBuckets,
            now: Duration::ZERO,
        };
        let pushed = s.client_bytes(chunk, &env, &mut seen);
        out.extend_from_slice(pushed.forward.bytes(chunk));
    }
    seen
}

fn deflate(c: &mut Criterion) {
    let route = fixtures::suite_route();
    let (plain, deflated, zbytes) = streams();
    let mut out = Vec::with_capacity(plain.len());
    let a = run(&plain, &route, false, &mut out);
    assert_eq!(out, plain, "plain: forwarded as it came");
    let b = run(&deflated, &route, true, &mut out);
    assert_eq!(out, deflated, "deflate: forwarded as it came");
    assert_eq!(a, b, "both read the same messages");
    assert_eq!(a.candidate_messages, MESSAGES as u64);
    assert_eq!(a.candidates, MESSAGES as u64);
    eprintln!(
        "{MESSAGES} messages of {SIZE} B; compressed: {zbytes} B ({:.2}:1)",
        (MESSAGES * SIZE) as f64 / zbytes as f64
    );
    let mut g = c.benchmark_group(format!("session_{SIZE}b_messages"));
    g.throughput(Throughput::Elements(MESSAGES as u64));
    g.bench_function("plain", |b| {
        b.iter(|| black_box(run(black_box(&plain), &route, false, &mut out)))
    });
    g.bench_function("deflate", |b| {
        b.iter(|| black_box(run(black_box(&deflated), &route, true, &mut out)))
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1))
        .sample_size(20);
    targets = deflate
}
criterion_main!(benches);
