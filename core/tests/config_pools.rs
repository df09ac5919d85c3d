//! Upstream pools in the config: `endpoints`, `dns`, `balance`, `health_check`; what the proxy
//! compiles from them, and what the Wasm filter refuses (with the Envoy way to say it).
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{errors, has, one_error};
use sigmesh_core::balance::Balance;
use sigmesh_core::compiled::{Capabilities, Compiled};
use sigmesh_core::config::{ConfigErrors, HealthCheck, load, load_filter};

fn route(up: &str, sticky: &str) -> String {
    format!(
        "routes:\n  - name: r\n    websocket: {{}}\n    split: {{ sticky: {sticky} }}\n    upstreams:\n{up}"
    )
}

#[test]
fn endpoints_dns_balance_and_health_checks_load_and_compile() {
    let text = route(
        "      - name: v1\n        endpoints: [ws://10.0.0.1:9001/ws, ws://10.0.0.2:9001/ws]\n        health_check: { path: /ready, interval: 2s, timeout: 500ms, unhealthy: 3, healthy: 1 }\n      - name: v2\n        dns: ws://signal-v2.default.svc.cluster.local:9001/ws\n        balance: random\n        health_check: {}\n      - { name: v3, url: ws://10.0.0.9:9001/ws }\n",
        "query:room",
    );
    let c = load(&text).unwrap();
    let ups = &c.routes[0].upstreams;
    assert_eq!(ups[0].pool.endpoints.len(), 2);
    assert_eq!(
        ups[0].pool.health_check,
        Some(HealthCheck {
            path: "/ready".into(),
            interval: Duration::from_secs(2),
            timeout: Duration::from_millis(500),
            unhealthy: 3,
            healthy: 1,
        })
    );
    assert_eq!(ups[1].pool.health_check, Some(HealthCheck::default()));
    assert_eq!(ups[1].pool.balance, Some(Balance::Random));
    let compiled = Compiled::new(c.clone(), Capabilities::PROXY).unwrap();
    let r = &compiled.routes[0];
    assert_eq!(r.endpoints[0].len(), 2);
    assert_eq!(r.endpoints[0][1].authority, "10.0.0.2:9001");
    assert!(r.endpoints[1].is_empty());
    assert_eq!(
        r.dns[1].as_ref().unwrap().authority,
        "signal-v2.default.svc.cluster.local:9001"
    );
    assert_eq!(r.endpoints[2].len(), 1);
    // Sticky by a room source: `room` unless set; random where set.
    assert_eq!(r.balance, [Balance::Room, Balance::Random, Balance::Room]);
    // Round trip: the keys come back as written.
    let json = serde_json::to_value(&c).unwrap();
    assert_eq!(json["routes"][0]["upstreams"][1]["balance"], "random");
    assert_eq!(
        json["routes"][0]["upstreams"][0]["health_check"]["interval"],
        "2s"
    );
    assert!(json["routes"][0]["upstreams"][2].get("endpoints").is_none());
    // Without stickiness the default is the fewest sessions.
    let plain = route("      - { name: v3, url: ws://10.0.0.9:9001/ws }\n", "none");
    let c = Compiled::new(load(&plain).unwrap(), Capabilities::PROXY).unwrap();
    assert_eq!(c.routes[0].balance, [Balance::LeastSessions]);
}

#[test]
fn pool_mistakes_are_reported_with_paths() {
    // Two ways to name the endpoints.
    one_error(
        &route(
            "      - name: v1\n        url: ws://a:1/ws\n        endpoints: [ws://b:1/ws]\n",
            "none",
        ),
        "routes[0].upstreams[0].endpoints",
        8,
        "one of `url`, `endpoints` and `dns`",
    );
    // None at all.
    one_error(
        &route("      - name: v1\n", "none"),
        "routes[0].upstreams[0].url",
        6,
        "`endpoints:`",
    );
    // Mixed schemes, a duplicate, an empty list, a bad balance, a bad check.
    let errs = errors(&route(
        "      - name: v1\n        endpoints: [ws://a:1/ws, wss://b:1/ws, ws://a:1/ws]\n        balance: round_robin\n        health_check: { path: healthz, interval: 1s, timeout: 2s, unhealthy: 0 }\n      - name: v2\n        endpoints: []\n",
        "none",
    ));
    has(
        &errs,
        "routes[0].upstreams[0].endpoints[1]",
        7,
        "one scheme",
    );
    has(
        &errs,
        "routes[0].upstreams[0].endpoints[2]",
        7,
        "listed twice",
    );
    has(
        &errs,
        "routes[0].upstreams[0].balance",
        8,
        "`least_sessions`",
    );
    has(
        &errs,
        "routes[0].upstreams[0].health_check.path",
        9,
        "starting with `/`",
    );
    has(
        &errs,
        "routes[0].upstreams[0].health_check.timeout",
        9,
        "longer than `interval`",
    );
    has(
        &errs,
        "routes[0].upstreams[0].health_check.unhealthy",
        9,
        "at least 1",
    );
    has(&errs, "routes[0].upstreams[1].endpoints", 11, "empty");
    // Plain endpoints cannot have `tls`.
    one_error(
        &route(
            "      - name: v1\n        endpoints: [ws://a:1/ws]\n        tls: { ca: /x.pem }\n",
            "none",
        ),
        "routes[0].upstreams[0].tls",
        8,
        "this one is plain",
    );
}

#[test]
fn the_filter_refuses_pools_and_says_what_envoy_does() {
    let json = r#"{"routes": [{"name": "r", "websocket": {}, "upstreams": [
        {"name": "v1", "endpoints": ["ws://a:1/ws"], "balance": "room",
         "health_check": {}, "dns": "ws://b:1/ws"}]}]}"#;
    let Err(ConfigErrors(errs)) = load_filter(json) else {
        panic!("the filter must refuse pools");
    };
    for (key, needle) in [
        ("endpoints", "cluster holds the endpoints"),
        ("dns", "STRICT_DNS"),
        ("balance", "consistentHash"),
        ("health_check", "outlierDetection"),
    ] {
        assert!(
            errs.iter()
                .any(|e| e.path == format!("routes[0].upstreams[0].{key}")
                    && e.message.contains(needle)),
            "{key}: {}",
            ConfigErrors(errs.clone())
        );
    }
}

#[test]
fn drains_reconnect_and_affinity_keys() {
    let text = "shutdown: { drain_timeout: 30s, spread: 20s, close_code: 1012 }\nroutes:\n  - name: r\n    websocket:\n      on_upstream_failure: reconnect\n      reconnect: { replay: none, attempts: 2 }\n    affinity: engine_io\n    upstreams: [{ name: a, url: ws://h:1/ws }]\n";
    let c = load(text).unwrap();
    assert_eq!(c.shutdown.close_code, 1012);
    assert_eq!(c.shutdown.spread, Duration::from_secs(20));
    let ws = c.routes[0].websocket.as_ref().unwrap();
    assert_eq!(
        ws.on_upstream_failure,
        sigmesh_core::config::OnUpstreamFailure::Reconnect
    );
    assert_eq!(ws.reconnect.attempts, 2);
    assert_eq!(ws.reconnect.replay, sigmesh_core::config::Replay::None);
    assert_eq!(
        c.routes[0].affinity,
        sigmesh_core::config::Affinity::EngineIo
    );
    let json = serde_json::to_value(&c).unwrap();
    assert_eq!(json["routes"][0]["affinity"], "engine_io");
    assert_eq!(json["shutdown"]["spread"], "20s");
    // Mistakes.
    one_error(
        "shutdown: { close_code: 1000 }\nroutes:\n  - { name: r, upstreams: [{ name: a, url: http://h:1 }] }\n",
        "shutdown.close_code",
        1,
        "1001 (going away) or 1012",
    );
    one_error(
        "shutdown: { drain_timeout: 5s, spread: 10s }\nroutes:\n  - { name: r, upstreams: [{ name: a, url: http://h:1 }] }\n",
        "shutdown.spread",
        1,
        "longer than `drain_timeout`",
    );
    one_error(
        "routes:\n  - name: r\n    websocket: { reconnect: { attempts: 2 } }\n    upstreams: [{ name: a, url: ws://h:1/ws }]\n",
        "routes[0].websocket.reconnect",
        3,
        "on_upstream_failure: reconnect",
    );
    one_error(
        "routes:\n  - name: r\n    affinity: sticky\n    upstreams: [{ name: a, url: ws://h:1/ws }]\n",
        "routes[0].affinity",
        3,
        "`engine_io` or `none`",
    );
    // The filter refuses the proxy's own.
    let json = r#"{"routes": [{"name": "r", "affinity": "engine_io",
        "websocket": {"on_upstream_failure": "reconnect"}, "upstreams": [{"name": "a"}]}]}"#;
    let Err(ConfigErrors(errs)) = load_filter(json) else {
        panic!("refused");
    };
    assert!(
        errs.iter()
            .any(|e| e.path == "routes[0].affinity" && e.message.contains("httpCookie"))
    );
    assert!(
        errs.iter()
            .any(|e| e.path == "routes[0].websocket.on_upstream_failure")
    );
}
