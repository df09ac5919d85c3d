//! sigmesh benchmarks.
//!
//! `benches/core.rs` measures `sigmesh-core`'s hot paths, each against a naive baseline in the
//! same criterion group (run: `cargo bench -p sigmesh-benches --bench core`). The baselines live
//! here, in [`naive`], so they can be read and tested next to what they stand in for: each is
//! what a straightforward first implementation would look like.

pub mod fixtures {
    //! What the session benches share: the suite's route, and buckets that never run dry.

    use std::time::Duration;

    use sigmesh_core::bucket::BucketVerdict;
    use sigmesh_core::config::{Rate, Route};
    use sigmesh_core::request::{Bucket, BucketStore};

    /// The route of `benches/run.sh`'s sigmesh: signaling pointers, a message bucket that
    /// never runs dry, no room bucket.
    pub fn suite_route() -> Route {
        let text = r#"
listen: 127.0.0.1:0
routes:
  - name: bench
    match: { path_prefix: /ws }
    websocket:
      max_message_bytes: 65536
      signaling: { type: /type, room: /room, peer: /from }
    limits:
      messages: { rate: 1000000000, per: 1s, burst: 1000000000 }
    upstreams: [{ name: echo, url: ws://127.0.0.1:1/ws }]
"#;
        match sigmesh_core::config::load(text) {
            Ok(mut c) => c.routes.remove(0),
            Err(e) => panic!("bench route: {e}"),
        }
    }

    /// No room buckets on the suite's route.
    pub struct NoBuckets;

    impl BucketStore for NoBuckets {
        fn take(&self, _: Bucket, _: &str, _: &Rate, _: Duration) -> BucketVerdict {
            BucketVerdict::Allow { remaining: 0 }
        }
    }
}

pub mod naive {
    //! Straightforward implementations that the core is measured against.

    use std::collections::HashMap;
    use std::collections::hash_map::DefaultHasher;
    use std::hash::{Hash, Hasher};
    use std::time::{Duration, Instant};

    use sigmesh_core::config::Route;

    /// A float token bucket: `f64` tokens, refilled from `f64` seconds.
    #[derive(Debug, Clone, Copy)]
    pub struct FloatBucket {
        tokens: f64,
        last: f64,
    }

    impl FloatBucket {
        /// A full bucket.
        pub fn new(burst: f64) -> Self {
            FloatBucket {
                tokens: burst,
                last: 0.0,
            }
        }

        /// Takes a token; `Err(retry_after_secs)` when empty.
        pub fn try_take(
            &mut self,
            rate_per_sec: f64,
            burst: f64,
            now: Duration,
        ) -> Result<u32, f64> {
            let now = now.as_secs_f64();
            self.tokens = (self.tokens + (now - self.last) * rate_per_sec).min(burst);
            self.last = now;
            if self.tokens >= 1.0 {
                self.tokens -= 1.0;
                Ok(self.tokens as u32)
            } else {
                Err((1.0 - self.tokens) / rate_per_sec)
            }
        }
    }

    /// Keyed float buckets in a `HashMap<String, (f64, Instant)>` that never evicts, reading the
    /// clock on every decision.
    #[derive(Debug, Default)]
    pub struct NaiveKeyed {
        map: HashMap<String, (f64, Instant)>,
    }

    impl NaiveKeyed {
        /// Takes a token from `key`'s bucket.
        pub fn try_take(&mut self, key: &str, rate_per_sec: f64, burst: f64) -> bool {
            let now = Instant::now();
            let e = self.map.entry(key.to_owned()).or_insert((burst, now));
            e.0 = (e.0 + now.duration_since(e.1).as_secs_f64() * rate_per_sec).min(burst);
            e.1 = now;
            if e.0 >= 1.0 {
                e.0 -= 1.0;
                true
            } else {
                false
            }
        }

        /// Keys held.
        pub fn len(&self) -> usize {
            self.map.len()
        }

        /// No keys held.
        pub fn is_empty(&self) -> bool {
            self.map.is_empty()
        }
    }

    /// Route matching as a first version would write it: lower-case the host into a new
    /// `String`, strip the port by allocating, lower-case header names per comparison.
    pub fn find_route(
        routes: &[Route],
        host: Option<&str>,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Option<usize> {
        let host = host.map(|h| {
            let h = h.to_lowercase();
            let h = match h.rfind(':') {
                Some(i) => h[..i].to_string(),
                None => h,
            };
            h.trim_end_matches('.').to_string()
        });
        let path = path.split('?').next().unwrap_or("").to_string();
        for (i, r) in routes.iter().enumerate() {
            let m = &r.matcher;
            if let Some(p) = &m.path
                && *p != path
            {
                continue;
            }
            if let Some(p) = &m.path_prefix
                && !path.starts_with(p.as_str())
            {
                continue;
            }
            if let Some(want) = &m.host {
                let want = want.to_lowercase();
                let Some(h) = &host else { continue };
                let ok = match want.strip_prefix("*.") {
                    Some(suffix) => h.ends_with(&format!(".{suffix}")),
                    None => *h == want,
                };
                if !ok {
                    continue;
                }
            }
            let headers_ok = m.headers.iter().all(|(n, v)| {
                headers
                    .iter()
                    .any(|(hn, hv)| hn.to_lowercase() == n.to_lowercase() && hv == v)
            });
            if headers_ok {
                return Some(i);
            }
        }
        None
    }

    /// A split with std's `DefaultHasher` and a linear scan that re-sums the weights per call.
    pub fn split(weights: &[(String, u32)], key: &str) -> usize {
        let mut h = DefaultHasher::new();
        key.hash(&mut h);
        let bucket = h.finish() % 10_000;
        let total: u64 = weights.iter().map(|(_, w)| u64::from(*w)).sum();
        let mut acc = 0u64;
        for (i, (_, w)) in weights.iter().enumerate() {
            acc += u64::from(*w);
            if bucket * total < acc * 10_000 {
                return i;
            }
        }
        weights.len() - 1
    }

    /// A JSON pointer read through a full `serde_json::Value` parse.
    pub fn pointer_value(text: &str, pointer: &str) -> Option<String> {
        let v: serde_json::Value = serde_json::from_str(text).ok()?;
        match v.pointer(pointer)? {
            serde_json::Value::String(s) => Some(s.clone()),
            serde_json::Value::Number(n) => Some(n.to_string()),
            serde_json::Value::Bool(b) => Some(b.to_string()),
            _ => None,
        }
    }

    /// Three pointers read from one full `Value` parse.
    pub fn signal(text: &str, pointers: [&str; 3]) -> [Option<String>; 3] {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(text) else {
            return [None, None, None];
        };
        pointers.map(|p| match v.pointer(p) {
            Some(serde_json::Value::String(s)) => Some(s.clone()),
            Some(serde_json::Value::Number(n)) => Some(n.to_string()),
            Some(serde_json::Value::Bool(b)) => Some(b.to_string()),
            _ => None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::naive;

    #[test]
    fn naive_pointer_agrees_with_core() {
        let t = r#"{"type":"offer","room":"r","n":1}"#;
        for p in ["/type", "/room", "/n", "/x"] {
            assert_eq!(
                naive::pointer_value(t, p),
                sigmesh_core::signal::pointer_value(t, p)
            );
        }
    }
}
