//! `cluster:` and `scope: global` in the config: defaults, what each key refuses, `global`
//! without a cluster, what the Wasm filter says instead, what core leaves for the fleet's store
//! in a verdict, and how it judges the store's answer.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{Buckets, errors, has, one_error};
use sigmesh_core::compiled::{Capabilities, Compiled};
use sigmesh_core::config::{ConfigErrors, OnClusterError, Scope, load, load_filter};
use sigmesh_core::request::{Admission, RequestFacts, Uncounted, Verdict, decide};
use sigmesh_core::route::Headers;

const LIMITS: &str = "routes:\n  - name: sig\n    websocket: { signaling: { room: /room } }\n    split: { sticky: query:room }\n    limits:\n      connections: { rate: 20, per: 1s, burst: 40, key: client_ip, scope: global }\n      rooms: { rate: 200, per: 1s, burst: 400, scope: global }\n      sessions: { max: 8, key: room, scope: global }\n    upstreams:\n      - { name: v1, url: ws://127.0.0.1:9001/ws }\n";

#[test]
fn the_contracts_fleet_config_loads_with_defaults() {
    let c = load(&format!(
        "cluster:\n  redis: redis://127.0.0.1:6379/0\n{LIMITS}"
    ))
    .unwrap();
    let cl = c.cluster.as_ref().unwrap();
    assert_eq!(cl.timeout, Duration::from_millis(50));
    assert_eq!(cl.on_error, OnClusterError::Allow);
    assert_eq!(cl.lease, Duration::from_secs(15));
    assert_eq!(cl.key_prefix, "sigmesh:");
    let l = &c.routes[0].limits;
    assert_eq!(l.connections.as_ref().unwrap().scope, Scope::Global);
    assert_eq!(l.rooms.unwrap().scope, Scope::Global);
    assert_eq!(l.sessions.as_ref().unwrap().scope, Scope::Global);
    // `on_error: allow` is said in `sigmesh check`.
    let compiled = Compiled::new(c, Capabilities::PROXY).unwrap();
    assert!(
        compiled
            .warnings()
            .iter()
            .any(|w| w.contains("cluster.on_error: allow"))
    );
    // The password of the URL is not shown in `/config`.
    let c = load(&format!(
        "cluster: {{ redis: \"redis://u:secret@10.0.0.5:6379/0\", timeout: 20ms, on_error: deny, lease: 5s, key_prefix: \"fleet-a:\" }}\n{LIMITS}"
    ))
    .unwrap();
    let cl = c.cluster.as_ref().unwrap();
    assert_eq!(
        (cl.timeout, cl.on_error, cl.lease),
        (
            Duration::from_millis(20),
            OnClusterError::Deny,
            Duration::from_secs(5)
        )
    );
    assert!(
        !serde_json::to_string(&c.redacted())
            .unwrap()
            .contains("secret")
    );
}

#[test]
fn global_scope_needs_a_cluster() {
    let errs = errors(LIMITS);
    assert_eq!(errs.len(), 3, "{}", ConfigErrors(errs.clone()));
    has(
        &errs,
        "routes[0].limits.connections.scope",
        6,
        "needs `cluster.redis`",
    );
    has(
        &errs,
        "routes[0].limits.rooms.scope",
        7,
        "needs `cluster.redis`",
    );
    has(
        &errs,
        "routes[0].limits.sessions.scope",
        8,
        "needs `cluster.redis`",
    );
}

#[test]
fn cluster_keys_are_checked() {
    let with = |cluster: &str| format!("cluster: {cluster}\n{LIMITS}");
    one_error(
        &with("{ timeout: 50ms }"),
        "cluster.redis",
        1,
        "missing `redis`",
    );
    one_error(
        &with("{ redis: http://127.0.0.1:6379 }"),
        "cluster.redis",
        1,
        "redis://",
    );
    one_error(
        &with("{ redis: \"unix://relative.sock\" }"),
        "cluster.redis",
        1,
        "absolute path",
    );
    one_error(
        &with("{ redis: redis://h:6379, timeout: 30s }"),
        "cluster.timeout",
        1,
        "at most",
    );
    one_error(
        &with("{ redis: redis://h:6379, timeout: 0s }"),
        "cluster.timeout",
        1,
        "more than 0",
    );
    one_error(
        &with("{ redis: redis://h:6379, on_error: maybe }"),
        "cluster.on_error",
        1,
        "`allow`",
    );
    one_error(
        &with("{ redis: redis://h:6379, lease: 500ms }"),
        "cluster.lease",
        1,
        "at least 1s",
    );
    one_error(
        &with("{ redis: redis://h:6379, tiemout: 5ms }"),
        "cluster.tiemout",
        1,
        "timeout",
    );
    one_error(
        &with("{ redis: redis://h:6379, key_prefix: \"a b\" }"),
        "cluster.key_prefix",
        1,
        "spaces",
    );
    assert!(load(&with("{ redis: \"redis+unix:///run/redis.sock\" }")).is_ok());
    assert!(load(&with("{ redis: \"rediss://cache.internal:6380/1\" }")).is_ok());
    let bad_scope = format!(
        "cluster: {{ redis: redis://h:6379 }}\n{}",
        LIMITS.replacen("scope: global", "scope: fleet", 1)
    );
    one_error(
        &bad_scope,
        "routes[0].limits.connections.scope",
        7,
        "`local` or `global`",
    );
    // A global bucket must stay exact in the script's doubles.
    let huge = format!(
        "cluster: {{ redis: redis://h:6379 }}\n{}",
        LIMITS.replace(
            "rate: 200, per: 1s, burst: 400",
            "rate: 1, per: 24h, burst: 4000000000"
        )
    );
    one_error(&huge, "routes[0].limits.rooms.burst", 8, "2^53");
}

#[test]
fn the_wasm_filter_points_at_envoys_global_rate_limit_service() {
    let text = "routes:\n  - name: sig\n    limits:\n      connections: { rate: 20, per: 1s, burst: 40, scope: global }\n    upstreams:\n      - { name: v1, weight: 1 }\n";
    let Err(ConfigErrors(errs)) = load_filter(text) else {
        panic!("loaded")
    };
    has(
        &errs,
        "routes[0].limits.connections.scope",
        4,
        "global rate limit service",
    );
    let Err(ConfigErrors(errs)) = load_filter(&format!(
        "cluster: {{ redis: redis://h:6379 }}\n{}",
        text.replace(", scope: global", "")
    )) else {
        panic!("loaded")
    };
    has(&errs, "cluster", 1, "istio/ratelimit.yaml");
    // Local scope stays the filter's own (shared data).
    assert!(load_filter(&text.replace("scope: global", "scope: local")).is_ok());
}

struct H(Vec<(&'static str, &'static str)>);

impl Headers for H {
    fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| *v)
    }
    fn any_value(&self, name: &str, f: &mut dyn FnMut(&str) -> bool) -> bool {
        self.0
            .iter()
            .any(|(k, v)| k.eq_ignore_ascii_case(name) && f(v))
    }
}

#[test]
fn a_verdict_leaves_the_global_checks_to_the_store_and_core_judges_its_answer() {
    let c = Compiled::new(
        load(&format!("cluster: {{ redis: redis://h:6379 }}\n{LIMITS}")).unwrap(),
        Capabilities::PROXY,
    )
    .unwrap();
    let headers = H(vec![
        ("upgrade", "websocket"),
        ("connection", "Upgrade"),
        ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ("sec-websocket-version", "13"),
    ]);
    let facts = RequestFacts {
        method: "GET",
        protocol: None,
        host: Some("x"),
        path: "/ws",
        query: Some("room=r1"),
        headers: &headers,
        client_ip: "10.1.2.3",
        now: Duration::ZERO,
        unix_secs: 0,
        random: 0,
        draining: false,
    };
    let buckets = Buckets::default();
    // Many times over: no local bucket is taken for a global one.
    for _ in 0..100 {
        let Verdict::Upgrade(u) = decide(&c, &facts, &buckets, &c, &Uncounted) else {
            panic!("not an upgrade")
        };
        let g = &u.global;
        assert_eq!(g.bucket.as_ref().unwrap().key, "10.1.2.3");
        assert_eq!(g.bucket.as_ref().unwrap().rate.burst, 40);
        assert_eq!(g.place.as_ref().unwrap().key, "r1");
        assert_eq!(g.place.as_ref().unwrap().max, 8);
        assert!(u.leases.is_empty());
        assert_eq!(g.judge(0, Admission::Admitted, OnClusterError::Deny), None);
        let limited = g
            .judge(
                0,
                Admission::Limited {
                    retry_after: Duration::from_millis(1500),
                },
                OnClusterError::Allow,
            )
            .unwrap();
        assert_eq!(limited.status, 429);
        assert!(limited.headers.contains(&("retry-after", "2".into())));
        assert!(
            limited
                .headers
                .contains(&("x-ratelimit-limit", "40".into()))
        );
        assert_eq!(
            g.judge(0, Admission::Full, OnClusterError::Allow)
                .unwrap()
                .status,
            429
        );
        assert_eq!(g.judge(0, Admission::Failed, OnClusterError::Allow), None);
        assert_eq!(
            g.judge(0, Admission::Failed, OnClusterError::Deny)
                .unwrap()
                .status,
            503
        );
    }
}
