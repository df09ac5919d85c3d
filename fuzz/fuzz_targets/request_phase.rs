//! The request phase on arbitrary request facts: method, path, query and headers from the
//! input, against a config with every check on.
#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use sigmesh_core::bucket::{BucketVerdict, TokenBucket};
use sigmesh_core::compiled::{Capabilities, Compiled};
use sigmesh_core::config::{Rate, load};
use sigmesh_core::request::{Bucket, BucketStore, RequestFacts, Uncounted, Verdict, decide};

struct One(std::cell::RefCell<Option<TokenBucket>>);
impl BucketStore for One {
    fn take(&self, _: Bucket, _: &str, rate: &Rate, now: Duration) -> BucketVerdict {
        let mut b = self.0.borrow_mut();
        b.get_or_insert_with(|| TokenBucket::new(rate, now)).try_take(rate, now)
    }
}

const CONFIG: &str = r#"
listen: 127.0.0.1:0
limits: { max_sessions: 10 }
routes:
  - name: sig
    match: { path_prefix: /ws, headers: { x-t: a } }
    websocket: { allowed_origins: [https://ok] }
    limits: { connections: { rate: 1, per: 1s, burst: 3, key: "header:x-k" }, sessions: { max: 2, key: room } }
    split: { sticky: "query:room", override_from: [10.0.0.0/8] }
    upstreams: [{ name: a, url: "ws://h:1/", weight: 1 }, { name: b, url: "ws://h:2/", weight: 0 }]
  - name: first
    match: { path_prefix: /f }
    websocket: {}
    split: { sticky: "message:/room" }
    upstreams: [{ name: a, url: "ws://h:1/" }]
  - name: web
    match: { path_prefix: / }
    upstreams: [{ name: w, url: "http://h:3" }]
turn: { secret: s, uris: [turn:t], credentials_path: /creds }
"#;

/// Compiled once: each input is one request against it.
static COMPILED: std::sync::LazyLock<Compiled> = std::sync::LazyLock::new(|| {
    Compiled::new(load(CONFIG).expect("the fuzz config"), Capabilities::PROXY)
        .expect("the fuzz config compiles")
});

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let c = &*COMPILED;
    // Lines: method, path?query, client ip, then `name: value` headers.
    let mut lines = text.split('\n');
    let method = lines.next().unwrap_or("GET");
    let target = lines.next().unwrap_or("/");
    let client_ip = lines.next().unwrap_or("10.0.0.1");
    let headers: Vec<(&str, &str)> = lines.filter_map(|l| l.split_once(':')).collect();
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target, None),
    };
    let facts = RequestFacts {
        method,
        protocol: None,
        host: None,
        path,
        query,
        headers: &headers,
        client_ip,
        now: Duration::from_secs(1),
        unix_secs: 1,
        random: data.len() as u32,
        draining: false,
    };
    if let Verdict::AwaitFirstMessage(mut w) = decide(c, &facts, &One(Default::default()), c, &Uncounted) {
        let _ = w.pick(c, c, Some(text), 7);
    }
});
