//! Both ways of core's session object (frame reader, limiter, reading) on arbitrary bytes in
//! arbitrary chunks: no panic, and what is held stays under the bound.
#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use sigmesh_core::bucket::BucketVerdict;
use sigmesh_core::config::{Rate, load};
use sigmesh_core::request::{Bucket, BucketStore};
use sigmesh_core::session::{Session, SessionEnv, SessionOptions};

struct Allow;
impl BucketStore for Allow {
    fn take(&self, _: Bucket, _: &str, _: &Rate, _: Duration) -> BucketVerdict {
        BucketVerdict::Allow { remaining: 1 }
    }
}

const CONFIG: &str = r#"
routes:
  - name: r
    match: { path_prefix: / }
    websocket: { max_message_bytes: 4096, signaling: { type: /type, room: /room, peer: /from } }
    limits:
      messages: { rate: 5, per: 1s, burst: 5 }
      rooms: { rate: 5, per: 1s, burst: 5 }
    upstreams: [{ name: u, url: "ws://127.0.0.1:1/" }]
"#;

/// Loaded once: each input is one session on it.
static ROUTE: std::sync::LazyLock<sigmesh_core::config::Route> = std::sync::LazyLock::new(|| {
    load(CONFIG).expect("the fuzz config").routes.remove(0)
});

fuzz_target!(|data: &[u8]| {
    let route = &*ROUTE;
    // The first byte's top bit: a compressed session read through (inflate, bounded).
    let compressed = data.first().is_some_and(|b| b & 0x80 != 0);
    let mut s = Session::new(
        route,
        SessionOptions {
            deflate: compressed,
            inflate: compressed,
            ..SessionOptions::default()
        },
    );
    // The first byte's low bits pick the chunk size; then alternate ways.
    let step = usize::from(data.first().copied().unwrap_or(1) & 0x7f).max(1);
    for (i, chunk) in data.chunks(step).enumerate() {
        let env = SessionEnv {
            route,
            route_index: 0,
            buckets: &Allow,
            now: Duration::from_millis(i as u64),
        };
        let _ = if i % 2 == 0 {
            s.client_bytes(chunk, &env, &mut ()).forward
        } else {
            s.upstream_bytes(chunk, &env, &mut ()).forward
        };
    }
});
