//! Config loading and validation: the contract's example, defaults, every error kind, lines and
//! paths, the Wasm filter's variant, and the JSON round trip.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::net::SocketAddr;
use std::time::Duration;

mod common;

use common::{errors, has, one_error};
use sigmesh_core::config::{
    Cidr, ConfigError, ConfigErrors, LimitKey, OnExceed, OtlpProtocol, Sticky, load, load_filter,
};

/// The example of `shared/design/contract.md`, verbatim.
const CONTRACT_EXAMPLE: &str = r#"listen: 0.0.0.0:8080            # HTTP and WebSocket traffic
admin: 127.0.0.1:9901           # admin API and /metrics
shutdown:
  drain_timeout: 30s            # on SIGTERM: stop accepting, close sessions with 1001, wait at most this
routes:                         # first match wins
  - name: signaling             # unique; appears in metrics, traces and /sessions
    match:
      path_prefix: /ws          # or `path:` for an exact path
      host: signal.example.com  # optional: exact, or a leading wildcard `*.example.com`
      headers: { x-tenant: blue }   # optional exact matches
    websocket:                  # present: sigmesh terminates the WebSocket and relays message by message
      max_message_bytes: 65536  # larger message: close 1009
      idle_timeout: 120s        # no message either way for this long: close 1001
      allowed_origins: [https://app.example.com]   # absent or empty: any origin
      signaling:                # JSON pointers into text messages; all optional
        type: /type             # offer | answer | candidate | join | leave | ...
        room: /room
        peer: /from
    limits:                     # token buckets; each optional
      connections: { rate: 20, per: 1s, burst: 40, key: client_ip }  # key: client_ip | route | header:NAME
      messages:    { rate: 50, per: 1s, burst: 100, on_exceed: drop }  # per connection; drop | close (1008)
      rooms:       { rate: 200, per: 1s, burst: 400 }                  # per room, needs signaling.room
    split:
      sticky: query:room        # query:NAME | header:NAME | cookie:NAME | message:/json/pointer | none
      override_header: x-sigmesh-upstream   # a request naming an upstream goes there, whatever the weights
    upstreams:
      - { name: stable, url: ws://127.0.0.1:9001/ws, weight: 90 }
      - { name: canary, url: ws://127.0.0.1:9002/ws, weight: 10 }
  - name: legacy-http           # a route without `websocket:` forwards plain HTTP
    match: { path_prefix: / }
    upstreams:
      - { name: legacy, url: http://127.0.0.1:9100 }
turn:
  secret: change-me             # TURN REST API shared secret (coturn `use-auth-secret`)
  ttl: 1h
  uris: [turn:turn.example.com:3478?transport=udp]
  credentials_path: /turn-credentials   # served on `listen`, GET ?user=ID
  relay:                        # optional: sigmesh on the path to a TURN server, tracking allocations
    listen: 0.0.0.0:3478        # UDP and TCP
    upstream: 127.0.0.1:3479
    deny_peers: [10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16]   # absent: every non-global range is denied
tracing:
  otlp_endpoint: http://127.0.0.1:4317
  protocol: grpc                # grpc | http
  service_name: sigmesh
  sample_ratio: 1.0
"#;

const MINIMAL: &str =
    "routes:\n  - name: r\n    upstreams:\n      - { name: a, url: http://127.0.0.1:9000 }\n";

/// A websocket route `r` with `extra` route keys (indented four spaces) before the upstreams.
fn ws_route(extra: &str) -> String {
    format!(
        "routes:\n  - name: r\n    websocket: {{}}\n{extra}    upstreams:\n      - {{ name: a, url: ws://h:1/ws }}\n"
    )
}

fn plain_route(extra: &str) -> String {
    format!("routes:\n  - name: r\n{extra}    upstreams:\n      - {{ name: a, url: http://h:1 }}\n")
}

// === the contract's example ===

#[test]
fn contract_example_loads() {
    let c = load(CONTRACT_EXAMPLE).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.listen, "0.0.0.0:8080".parse::<SocketAddr>().unwrap());
    assert_eq!(c.admin, Some("127.0.0.1:9901".parse().unwrap()));
    assert_eq!(c.shutdown.drain_timeout, Duration::from_secs(30));
    assert_eq!(c.routes.len(), 2);

    let r = &c.routes[0];
    assert_eq!(r.name, "signaling");
    assert_eq!(r.matcher.path_prefix.as_deref(), Some("/ws"));
    assert_eq!(r.matcher.host.as_deref(), Some("signal.example.com"));
    assert_eq!(
        r.matcher.headers.get("x-tenant").map(String::as_str),
        Some("blue")
    );
    let ws = r.websocket.as_ref().unwrap();
    assert_eq!(ws.max_message_bytes, 65536);
    assert_eq!(ws.idle_timeout, Duration::from_secs(120));
    assert_eq!(
        ws.allowed_origins,
        vec!["https://app.example.com".to_owned()]
    );
    assert_eq!(ws.signaling.kind.as_deref(), Some("/type"));
    assert_eq!(ws.signaling.room.as_deref(), Some("/room"));
    assert_eq!(ws.signaling.peer.as_deref(), Some("/from"));
    let conn = r.limits.connections.as_ref().unwrap();
    assert_eq!(
        (conn.rate.rate, conn.rate.per, conn.rate.burst),
        (20, Duration::from_secs(1), 40)
    );
    assert_eq!(conn.key, LimitKey::ClientIp);
    let msg = r.limits.messages.as_ref().unwrap();
    assert_eq!(
        (msg.rate.rate, msg.rate.burst, msg.on_exceed),
        (50, 100, OnExceed::Drop)
    );
    let rooms = r.limits.rooms.unwrap();
    assert_eq!((rooms.rate.rate, rooms.rate.burst), (200, 400));
    assert_eq!(r.split.sticky, Sticky::Query("room".into()));
    assert_eq!(r.override_header(), "x-sigmesh-upstream");
    assert_eq!(r.upstreams.len(), 2);
    assert_eq!(r.upstreams[0].name, "stable");
    assert_eq!(
        r.upstreams[0].url.as_deref(),
        Some("ws://127.0.0.1:9001/ws")
    );
    assert_eq!((r.upstreams[0].weight, r.upstreams[1].weight), (90, 10));

    let legacy = c.route("legacy-http").unwrap();
    assert!(legacy.websocket.is_none());
    assert_eq!(legacy.upstreams[0].weight, 1);
    assert_eq!(
        legacy.upstreams[0].url.as_deref(),
        Some("http://127.0.0.1:9100")
    );

    let t = c.turn.as_ref().unwrap();
    assert_eq!(t.secret, "change-me");
    assert_eq!(t.ttl, Duration::from_secs(3600));
    assert_eq!(
        t.uris,
        vec!["turn:turn.example.com:3478?transport=udp".to_owned()]
    );
    assert_eq!(t.credentials_path, "/turn-credentials");
    let relay = t.relay.as_ref().unwrap();
    assert_eq!(relay.listen, "0.0.0.0:3478".parse::<SocketAddr>().unwrap());
    assert_eq!(
        relay.upstream,
        "127.0.0.1:3479".parse::<SocketAddr>().unwrap()
    );
    let deny: Vec<String> = relay
        .deny_peers
        .as_ref()
        .unwrap()
        .iter()
        .map(Cidr::to_string)
        .collect();
    assert_eq!(deny, ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"]);

    let tr = c.tracing.as_ref().unwrap();
    assert_eq!(tr.otlp_endpoint, "http://127.0.0.1:4317");
    assert_eq!(tr.protocol, OtlpProtocol::Grpc);
    assert_eq!(tr.service_name, "sigmesh");
    assert_eq!(tr.sample_ratio, 1.0);
}

#[test]
fn round_trip_through_json() {
    for text in [CONTRACT_EXAMPLE, MINIMAL] {
        let c = load(text).unwrap();
        let json = serde_json::to_string_pretty(&c).unwrap();
        let again = load(&json).unwrap_or_else(|e| panic!("{e}\n{json}"));
        assert_eq!(c, again, "{json}");
    }
}

#[test]
fn round_trip_of_every_variant() {
    let text = r#"
listen: "[::]:8080"
routes:
  - name: a
    match: { path: /exact, host: "*.example.com" }
    websocket: { idle_timeout: 1500ms, max_message_bytes: 1 }
    limits:
      connections: { rate: 1, per: 250ms, key: "header:X-Api-Key" }
      messages: { rate: 3, on_exceed: close }
    split: { sticky: "message:/session/id", override_header: X-Pick }
    upstreams: [{ name: x, url: "wss://h:443/p?q=1", weight: 0 }, { name: y, url: ws://h/ }]
  - name: b
    limits: { connections: { rate: 5, key: route } }
    split: { sticky: "cookie:sid" }
    upstreams: [{ name: x, url: "https://[::1]:8443/" }]
  - name: c
    split: { sticky: "header:X-Room" }
    upstreams: [{ name: x, url: http://h }]
turn:
  secret: s
  ttl: 90m
  relay: { listen: "[::]:3478", upstream: 10.0.0.1:3479, deny_peers: [10.1.2.3/8, "fe80::1/10", 1.2.3.4] }
tracing: { otlp_endpoint: "https://otel:4318", protocol: http, sample_ratio: 0.25 }
"#;
    let c = load(text).unwrap_or_else(|e| panic!("{e}"));
    let json = serde_json::to_string(&c).unwrap();
    assert_eq!(load(&json).unwrap_or_else(|e| panic!("{e}\n{json}")), c);
    let deny = c
        .turn
        .as_ref()
        .unwrap()
        .relay
        .as_ref()
        .unwrap()
        .deny_peers
        .clone()
        .unwrap();
    let deny: Vec<String> = deny.iter().map(Cidr::to_string).collect();
    assert_eq!(
        deny,
        ["10.0.0.0/8", "fe80::/10", "1.2.3.4/32"],
        "host bits cleared"
    );
    assert_eq!(
        c.routes[0].limits.connections.as_ref().unwrap().key,
        LimitKey::Header("x-api-key".into())
    );
    assert_eq!(
        c.routes[0].split.sticky,
        Sticky::Message("/session/id".into())
    );
    assert_eq!(c.routes[0].override_header(), "x-pick");
    assert_eq!(c.routes[1].split.sticky, Sticky::Cookie("sid".into()));
    assert_eq!(c.routes[2].split.sticky, Sticky::Header("x-room".into()));
    assert_eq!(
        c.routes[0].websocket.as_ref().unwrap().idle_timeout,
        Duration::from_millis(1500)
    );
    assert_eq!(c.tracing.as_ref().unwrap().protocol, OtlpProtocol::Http);
}

#[test]
fn redacted_config_hides_the_secret() {
    let c = load(CONTRACT_EXAMPLE).unwrap();
    let json = serde_json::to_string(&c.redacted()).unwrap();
    assert!(!json.contains("change-me"));
    assert!(json.contains("[redacted]"));
}

// === defaults ===

#[test]
fn defaults() {
    let c = load(MINIMAL).unwrap();
    assert_eq!(c.listen, "0.0.0.0:8080".parse::<SocketAddr>().unwrap());
    assert_eq!(c.admin, None);
    assert_eq!(c.shutdown.drain_timeout, Duration::from_secs(30));
    assert!(c.turn.is_none() && c.tracing.is_none());
    let r = &c.routes[0];
    assert!(r.websocket.is_none());
    assert_eq!(r.matcher, Default::default());
    assert_eq!(r.limits, Default::default());
    assert_eq!(r.split.sticky, Sticky::None);
    assert_eq!(r.split.override_header, None);
    assert_eq!(r.upstreams[0].weight, 1);

    let c = load(&ws_route(
        "    limits:\n      connections: { rate: 7 }\n      messages: { rate: 9 }\n",
    ))
    .unwrap();
    let r = &c.routes[0];
    let ws = r.websocket.as_ref().unwrap();
    assert_eq!(
        (ws.max_message_bytes, ws.idle_timeout),
        (65536, Duration::from_secs(120))
    );
    assert!(ws.allowed_origins.is_empty());
    let conn = r.limits.connections.as_ref().unwrap();
    assert_eq!(
        (conn.rate.rate, conn.rate.per, conn.rate.burst, &conn.key),
        (7, Duration::from_secs(1), 7, &LimitKey::ClientIp)
    );
    let msg = r.limits.messages.as_ref().unwrap();
    assert_eq!((msg.rate.burst, msg.on_exceed), (9, OnExceed::Drop));

    let c = load(&format!(
        "{MINIMAL}turn: {{ secret: s }}\ntracing: {{ otlp_endpoint: http://c:4317 }}\n"
    ))
    .unwrap();
    let t = c.turn.unwrap();
    assert_eq!(
        (t.ttl, t.credentials_path.as_str(), t.uris.len()),
        (Duration::from_secs(3600), "/turn-credentials", 0)
    );
    assert!(t.relay.is_none());
    let tr = c.tracing.unwrap();
    assert_eq!(
        (tr.protocol, tr.service_name.as_str(), tr.sample_ratio),
        (OtlpProtocol::Grpc, "sigmesh", 1.0)
    );
}

#[test]
fn an_empty_websocket_key_enables_websocket_with_defaults() {
    let c =
        load("routes:\n  - name: r\n    websocket:\n    upstreams: [{ name: a, url: ws://h }]\n")
            .unwrap();
    assert_eq!(c.routes[0].websocket, Some(Default::default()));
}

#[test]
fn json_input() {
    let json = r#"{"listen": "127.0.0.1:1", "routes": [{"name": "r", "websocket": {"max_message_bytes": 10},
        "upstreams": [{"name": "a", "url": "ws://h:1", "weight": 3}]}]}"#;
    let c = load(json).unwrap();
    assert_eq!(c.routes[0].upstreams[0].weight, 3);
    assert_eq!(
        c.routes[0].websocket.as_ref().unwrap().max_message_bytes,
        10
    );
    // JSON errors carry lines too.
    let json = "{\n  \"routes\": [\n    {\"name\": \"r\", \"upstreams\": [{\"name\": \"a\", \"url\": \"ws://h\", \"weight\": -1}]}\n  ]\n}";
    one_error(json, "routes[0].upstreams[0].weight", 3, "negative");
}

#[test]
fn anchors_and_merge_keys() {
    let text = "x-defaults: &d\n  websocket: { idle_timeout: 5s }\n";
    // Unknown top-level key (anchors need a home) is still an error...
    has(
        &errors(&format!("{text}{MINIMAL}")),
        "x-defaults",
        1,
        "unknown key",
    );
    // ...but anchors and merges inside known keys work.
    let text = "routes:\n  - &base\n    name: a\n    websocket: { idle_timeout: 5s }\n    upstreams: [{ name: u, url: ws://h }]\n  - <<: *base\n    name: b\n";
    let c = load(text).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.routes[1].name, "b");
    assert_eq!(
        c.routes[1].websocket.as_ref().unwrap().idle_timeout,
        Duration::from_secs(5)
    );
    assert_eq!(c.routes[1].upstreams, c.routes[0].upstreams);
}

// === errors: syntax and structure ===

#[test]
fn yaml_syntax_error_has_a_line() {
    let errs = errors("routes:\n  - name: r\n    upstreams: [ { name: a\n  bad: : :\n");
    assert_eq!(errs.len(), 1);
    assert!(errs[0].message.contains("YAML syntax error"), "{}", errs[0]);
    assert!(errs[0].line.is_some_and(|l| l >= 3), "{}", errs[0]);

    let errs = errors("listen: 0.0.0.0:8080\n  admin: x\n");
    assert!(
        errs[0].message.contains("YAML syntax error") && errs[0].line == Some(2),
        "{}",
        errs[0]
    );

    let errs = errors("routes: [\n");
    assert!(errs[0].message.contains("YAML syntax error"));
}

#[test]
fn display_format() {
    let e = ConfigError {
        path: "routes[1].upstreams[0].weight".into(),
        line: Some(7),
        message: "bad".into(),
    };
    assert_eq!(e.to_string(), "line 7: routes[1].upstreams[0].weight: bad");
    let errs = errors(&ws_route("    limits: { messages: { rate: 0 } }\n"));
    assert_eq!(
        errs[0].to_string(),
        "line 4: routes[0].limits.messages.rate: `rate` must be at least 1, found 0"
    );
}

#[test]
fn not_a_mapping_and_empty_documents() {
    has(&errors("- a\n- b\n"), "", 1, "must be a mapping");
    has(&errors(""), "routes", 1, "at least one route");
    has(
        &errors("# only a comment\n"),
        "routes",
        1,
        "at least one route",
    );
    has(&errors("routes: []\n"), "routes", 1, "at least one route");
    has(&errors("routes: {}\n"), "routes", 1, "must be a list");
    one_error(
        &format!("{MINIMAL}---\n{MINIMAL}"),
        "",
        5,
        "one YAML document",
    );
}

#[test]
fn duplicate_keys() {
    one_error(
        "listen: 0.0.0.0:1\nlisten: 0.0.0.0:2\nroutes: [{name: r, upstreams: [{name: a, url: http://h}]}]\n",
        "listen",
        2,
        "duplicate key `listen` (first given on line 1)",
    );
}

#[test]
fn unknown_keys_at_every_level() {
    let text = r#"listne: 0.0.0.0:8080
shutdown: { drain: 1s }
routes:
  - name: r
    matches: {}
    match: { prefix: /x, hots: a }
    websocket:
      idle: 1s
      signaling: { rooms: /r }
    limits:
      connection: { rate: 1 }
      messages: { rate: 1, onexceed: drop }
    split: { stiky: none }
    upstreams:
      - { name: a, url: ws://h, wieght: 1 }
turn: { secret: s, relay: { listen: 0.0.0.0:1, upstream: 0.0.0.0:2, deny: [] }, foo: 1 }
tracing: { otlp_endpoint: http://h, sample: 1 }
"#;
    let errs = errors(text);
    has(&errs, "listne", 1, "did you mean `listen`?");
    has(
        &errs,
        "listne",
        1,
        "allowed here: listen, admin, admin_auth, admin_hosts, limits, trust_forwarded_from, shutdown, routes, turn, tracing, tls",
    );
    has(&errs, "shutdown.drain", 2, "unknown key `drain`");
    has(&errs, "routes[0].matches", 5, "did you mean `match`?");
    has(&errs, "routes[0].match.prefix", 6, "path_prefix");
    has(&errs, "routes[0].match.hots", 6, "did you mean `host`?");
    has(
        &errs,
        "routes[0].websocket.idle",
        8,
        "allowed here: max_message_bytes, idle_timeout, allowed_origins, signaling",
    );
    has(
        &errs,
        "routes[0].websocket.signaling.rooms",
        9,
        "did you mean `room`?",
    );
    has(
        &errs,
        "routes[0].limits.connection",
        11,
        "did you mean `connections`?",
    );
    has(
        &errs,
        "routes[0].limits.messages.onexceed",
        12,
        "did you mean `on_exceed`?",
    );
    has(&errs, "routes[0].split.stiky", 13, "did you mean `sticky`?");
    has(
        &errs,
        "routes[0].upstreams[0].wieght",
        15,
        "did you mean `weight`?",
    );
    has(&errs, "turn.relay.deny", 16, "unknown key");
    has(&errs, "turn.foo", 16, "unknown key");
    has(&errs, "tracing.sample", 17, "unknown key");
    assert_eq!(errs.len(), 14, "{}", ConfigErrors(errs.clone()));
}

#[test]
fn every_error_is_reported_at_once_in_document_order() {
    let text = r#"listen: nowhere
admin: 8080
routes:
  - name: a
    match: { path: ws, path_prefix: /x }
    websocket: { max_message_bytes: 0, idle_timeout: soon }
    upstreams:
      - { name: u, url: http://h, weight: -5 }
      - { name: u, url: ws://h }
  - name: a
    upstreams: []
"#;
    let errs = errors(text);
    has(&errs, "listen", 1, "IP:PORT");
    has(&errs, "admin", 2, "0.0.0.0:8080");
    has(&errs, "routes[0].match.path", 5, "must start with `/`");
    has(&errs, "routes[0].match", 5, "not both");
    has(
        &errs,
        "routes[0].websocket.max_message_bytes",
        6,
        "at least 1",
    );
    has(&errs, "routes[0].websocket.idle_timeout", 6, "bad duration");
    has(&errs, "routes[0].upstreams[0].url", 8, "ws://");
    has(&errs, "routes[0].upstreams[0].weight", 8, "negative");
    has(
        &errs,
        "routes[0].upstreams[1].name",
        9,
        "duplicate upstream name `u`",
    );
    has(&errs, "routes[1].name", 10, "duplicate route name `a`");
    has(&errs, "routes[1].upstreams", 11, "no upstreams");
    assert_eq!(errs.len(), 11, "{}", ConfigErrors(errs.clone()));
    let lines: Vec<usize> = errs.iter().map(|e| e.line.unwrap()).collect();
    assert!(lines.windows(2).all(|w| w[0] <= w[1]), "{lines:?}");
}

#[test]
fn type_errors_do_not_stop_the_rest() {
    let text = "routes:\n  - name: r\n    websocket: { max_message_bytes: big }\n    upstreams:\n      - { name: a, url: ws://h, weight: \"90\" }\n      - [a]\n";
    let errs = errors(text);
    has(
        &errs,
        "routes[0].websocket.max_message_bytes",
        3,
        "expected a whole number, found `big`",
    );
    has(&errs, "routes[0].upstreams[0].weight", 5, "without quotes");
    has(&errs, "routes[0].upstreams[1]", 6, "must be a mapping");
    assert_eq!(errs.len(), 3);
}

// === errors: one kind each ===

#[test]
fn bad_durations() {
    let errs = errors(&format!("shutdown: {{ drain_timeout: 30 }}\n{MINIMAL}"));
    assert_eq!(errs.len(), 1);
    has(&errs, "shutdown.drain_timeout", 1, "needs a unit: `30s`");
    one_error(
        &format!("shutdown: {{ drain_timeout: 3 parsecs }}\n{MINIMAL}"),
        "shutdown.drain_timeout",
        1,
        "bad duration",
    );
    one_error(
        &format!("shutdown: {{ drain_timeout: [1s] }}\n{MINIMAL}"),
        "shutdown.drain_timeout",
        1,
        "expected a duration",
    );
    one_error(
        &ws_route("    limits: { messages: { rate: 1, per: 0s } }\n"),
        "routes[0].limits.messages.per",
        4,
        "more than 0",
    );
    one_error(
        &format!("{MINIMAL}turn: {{ secret: s, ttl: 0s }}\n"),
        "turn.ttl",
        5,
        "more than 0",
    );
    one_error(
        &ws_route("    websocket: {}\n").replace(
            "    websocket: {}\n    websocket: {}\n",
            "    websocket: { idle_timeout: 0s }\n",
        ),
        "routes[0].websocket.idle_timeout",
        3,
        "more than 0",
    );
    // Zero drain is allowed: stop at once.
    assert_eq!(
        load(&format!("shutdown: {{ drain_timeout: 0s }}\n{MINIMAL}"))
            .unwrap()
            .shutdown
            .drain_timeout,
        Duration::ZERO
    );
}

#[test]
fn weights() {
    one_error(
        &plain_route("").replace("url: http://h:1 }", "url: http://h:1, weight: -1 }"),
        "routes[0].upstreams[0].weight",
        4,
        "negative",
    );
    let text = "routes:\n  - name: r\n    upstreams:\n      - { name: a, url: http://h, weight: 0 }\n      - { name: b, url: http://h, weight: 0 }\n";
    one_error(text, "routes[0].upstreams", 4, "sum to 0");
    one_error(
        &text.replace(
            "weight: 0 }\n      - { name: b",
            "weight: 1.5 }\n      - { name: b",
        ),
        "routes[0].upstreams[0].weight",
        4,
        "whole number",
    );
    one_error(
        &text.replace(
            "weight: 0 }\n      - { name: b",
            "weight: 99999999999 }\n      - { name: b",
        ),
        "routes[0].upstreams[0].weight",
        4,
        "too large",
    );
    let c = load(&text.replace(
        "weight: 0 }\n      - { name: b",
        "weight: 1 }\n      - { name: b",
    ))
    .unwrap();
    assert_eq!(
        (
            c.routes[0].upstreams[0].weight,
            c.routes[0].upstreams[1].weight
        ),
        (1, 0)
    );
}

#[test]
fn route_names() {
    one_error(
        "routes:\n  - upstreams: [{ name: a, url: http://h }]\n",
        "routes[0].name",
        2,
        "missing route `name`",
    );
    one_error(
        "routes:\n  - name: \"\"\n    upstreams: [{ name: a, url: http://h }]\n",
        "routes[0].name",
        2,
        "must not be empty",
    );
    one_error(
        "routes:\n  - name:\n    upstreams: [{ name: a, url: http://h }]\n",
        "routes[0].name",
        2,
        "missing route `name`",
    );
    one_error(
        "routes:\n  - name: a b\n    upstreams: [{ name: a, url: http://h }]\n",
        "routes[0].name",
        2,
        "only letters",
    );
    let dup = "routes:\n  - name: a\n    upstreams: [{ name: a, url: http://h }]\n  - name: a\n    upstreams: [{ name: a, url: http://h }]\n";
    one_error(
        dup,
        "routes[1].name",
        4,
        "duplicate route name `a` (also the name of routes[0])",
    );
}

#[test]
fn upstream_names_and_presence() {
    one_error(
        "routes:\n  - name: r\n",
        "routes[0].upstreams",
        2,
        "missing `upstreams`",
    );
    one_error(
        "routes:\n  - name: r\n    upstreams: []\n",
        "routes[0].upstreams",
        3,
        "no upstreams",
    );
    one_error(
        "routes:\n  - name: r\n    upstreams:\n      - { url: http://h }\n",
        "routes[0].upstreams[0].name",
        4,
        "missing upstream `name`",
    );
    one_error(
        "routes:\n  - name: r\n    upstreams:\n      - { name: a, url: http://h }\n      - { name: a, url: http://h }\n",
        "routes[0].upstreams[1].name",
        5,
        "duplicate upstream name `a`",
    );
    one_error(
        "routes:\n  - name: r\n    upstreams:\n      - { name: a }\n",
        "routes[0].upstreams[0].url",
        4,
        "missing upstream `url`",
    );
}

#[test]
fn upstream_urls() {
    let bad = |url: &str, ws: bool| {
        let text = if ws { ws_route("") } else { plain_route("") };
        let quoted = format!("\"{url}\"");
        let text = if ws {
            text.replace("ws://h:1/ws", &quoted)
        } else {
            text.replace("http://h:1", &quoted)
        };
        errors(&text)
            .into_iter()
            .find(|e| e.path == "routes[0].upstreams[0].url")
            .unwrap_or_else(|| panic!("{url}"))
            .message
    };
    assert!(bad("http://h:1", true).contains("ws:// or wss://"));
    assert!(bad("ftp://h", false).contains("http://, https://, ws:// or wss://"));
    assert!(bad("ws://", true).contains("no host"));
    assert!(bad("ws://:80/x", true).contains("no host"));
    assert!(bad("ws://h:99999", true).contains("not a port"));
    assert!(bad("ws://h:0", true).contains("not a port"));
    assert!(bad("127.0.0.1:9000", true).contains("not a URL"));
    assert!(bad("ws://h/a b", true).contains("spaces"));
    assert!(bad("ws://h/#frag", true).contains("fragment"));
    assert!(bad("ws://[::1/x", true).contains("unclosed"));
    for good in [
        "ws://h",
        "wss://h:443/p?x=1",
        "ws://[::1]:9/x",
        "ws://user:pw@h/",
        "WS://H",
    ] {
        assert!(
            load(&ws_route("").replace("ws://h:1/ws", &format!("\"{good}\""))).is_ok(),
            "{good}"
        );
    }
    for good in ["http://h", "https://h:8443/api", "ws://h", "wss://h"] {
        assert!(
            load(&plain_route("").replace("http://h:1", &format!("\"{good}\""))).is_ok(),
            "{good}"
        );
    }
}

#[test]
fn socket_addresses() {
    one_error(
        &format!("listen: localhost:8080\n{MINIMAL}"),
        "listen",
        1,
        "write `127.0.0.1:8080`",
    );
    one_error(
        &format!("admin: 9901\n{MINIMAL}"),
        "admin",
        1,
        "`0.0.0.0:9901`",
    );
    one_error(
        &format!("listen: \"::1:80\"\n{MINIMAL}"),
        "listen",
        1,
        "IP:PORT",
    );
    let relay = |listen: &str, upstream: &str| {
        format!(
            "{MINIMAL}turn:\n  secret: s\n  relay:\n    listen: {listen}\n    upstream: {upstream}\n"
        )
    };
    one_error(
        &relay("0.0.0.0", "127.0.0.1:3479"),
        "turn.relay.listen",
        8,
        "not a socket address",
    );
    one_error(
        &relay("0.0.0.0:3478", "turn.example.com:3478"),
        "turn.relay.upstream",
        9,
        "not a socket address",
    );
    one_error(
        &format!("{MINIMAL}turn:\n  secret: s\n  relay: {{ listen: 0.0.0.0:1 }}\n"),
        "turn.relay.upstream",
        7,
        "missing `upstream`",
    );
    assert!(load(&relay("\"[::]:3478\"", "127.0.0.1:3479")).is_ok());
}

#[test]
fn cidrs() {
    let text = |peers: &str| {
        format!(
            "{MINIMAL}turn:\n  secret: s\n  relay:\n    listen: 0.0.0.0:1\n    upstream: 127.0.0.1:2\n    deny_peers:\n{peers}"
        )
    };
    let errs = errors(&text(
        "      - 10.0.0.0/33\n      - 300.0.0.0/8\n      - fd00::/129\n      - 10.0.0.0/x\n      - 10.0.0.0/8\n",
    ));
    has(&errs, "turn.relay.deny_peers[0]", 11, "at most 32");
    has(&errs, "turn.relay.deny_peers[1]", 12, "not an IP address");
    has(&errs, "turn.relay.deny_peers[2]", 13, "at most 128");
    has(&errs, "turn.relay.deny_peers[3]", 14, "not a prefix length");
    assert_eq!(errs.len(), 4);
    let c = load(&text(
        "      - 192.168.1.77/16\n      - 0.0.0.0/0\n      - \"2001:db8::1/32\"\n",
    ))
    .unwrap();
    let d = c.turn.unwrap().relay.unwrap().deny_peers.unwrap();
    let d: Vec<String> = d.iter().map(Cidr::to_string).collect();
    assert_eq!(d, ["192.168.0.0/16", "0.0.0.0/0", "2001:db8::/32"]);
    // An explicitly empty list denies nothing; absent means the default ranges.
    let c = load(&text("      []\n").replace("deny_peers:\n      []", "deny_peers: []")).unwrap();
    assert_eq!(c.turn.unwrap().relay.unwrap().deny_peers, Some(vec![]));
}

#[test]
fn match_rules() {
    one_error(
        &plain_route("    match: { path: /a, path_prefix: /b }\n"),
        "routes[0].match",
        3,
        "not both",
    );
    one_error(
        &plain_route("    match: { path_prefix: ws }\n"),
        "routes[0].match.path_prefix",
        3,
        "must start with `/`",
    );
    one_error(
        &plain_route("    match: { path: /a?b=1 }\n"),
        "routes[0].match.path",
        3,
        "query",
    );
    one_error(
        &plain_route("    match: { host: \"a.*.com\" }\n"),
        "routes[0].match.host",
        3,
        "leading `*.`",
    );
    one_error(
        &plain_route("    match: { host: \"*example.com\" }\n"),
        "routes[0].match.host",
        3,
        "leading `*.`",
    );
    one_error(
        &plain_route("    match: { host: \"*\" }\n"),
        "routes[0].match.host",
        3,
        "leading `*.`",
    );
    one_error(
        &plain_route("    match: { host: \"a.com:443\" }\n"),
        "routes[0].match.host",
        3,
        "port",
    );
    one_error(
        &plain_route("    match: { headers: { \"bad header\": x } }\n"),
        "routes[0].match.headers.bad header",
        3,
        "not a valid HTTP header name",
    );
    one_error(
        &plain_route("    match: { headers: { X-A: 1, x-a: 2 } }\n"),
        "routes[0].match.headers.x-a",
        3,
        "twice",
    );
    one_error(
        &plain_route("    match: { headers: [x] }\n"),
        "routes[0].match.headers",
        3,
        "mapping",
    );
    let c = load(&plain_route(
        "    match: { host: \"*.Example.COM\", headers: { X-Tenant: Blue } }\n",
    ))
    .unwrap();
    assert_eq!(c.routes[0].matcher.host.as_deref(), Some("*.example.com"));
    assert_eq!(
        c.routes[0]
            .matcher
            .headers
            .get("x-tenant")
            .map(String::as_str),
        Some("Blue")
    );
}

#[test]
fn sticky_forms() {
    let sticky = |s: &str| ws_route(&format!("    split: {{ sticky: \"{s}\" }}\n"));
    one_error(
        &sticky("room"),
        "routes[0].split.sticky",
        4,
        "expected `query:NAME`",
    );
    one_error(
        &sticky("path:x"),
        "routes[0].split.sticky",
        4,
        "expected `query:NAME`",
    );
    one_error(
        &sticky("query:"),
        "routes[0].split.sticky",
        4,
        "a name is needed",
    );
    one_error(
        &sticky("header:a b"),
        "routes[0].split.sticky",
        4,
        "header name",
    );
    one_error(
        &sticky("cookie:a;b"),
        "routes[0].split.sticky",
        4,
        "cookie name",
    );
    one_error(
        &sticky("message:room"),
        "routes[0].split.sticky",
        4,
        "must start with `/`",
    );
    one_error(&sticky("message:/a~2"), "routes[0].split.sticky", 4, "~0");
    one_error(
        &plain_route("    split: { sticky: \"message:/room\" }\n"),
        "routes[0].split.sticky",
        3,
        "no `websocket:` section",
    );
    one_error(
        &ws_route("    split: { override_header: \"x y\" }\n"),
        "routes[0].split.override_header",
        4,
        "header name",
    );
    assert_eq!(
        load(&sticky("none")).unwrap().routes[0].split.sticky,
        Sticky::None
    );
    assert_eq!(
        load(&sticky("query:Room")).unwrap().routes[0].split.sticky,
        Sticky::Query("Room".into())
    );
}

#[test]
fn limit_keys_and_actions() {
    let lim = |s: &str| ws_route(&format!("    limits: {s}\n"));
    one_error(
        &lim("{ connections: { rate: 1, key: ip } }"),
        "routes[0].limits.connections.key",
        4,
        "`client_ip`, `route` or `header:NAME`",
    );
    one_error(
        &lim("{ connections: { rate: 1, key: \"header:\" } }"),
        "routes[0].limits.connections.key",
        4,
        "empty header name",
    );
    one_error(
        &lim("{ messages: { rate: 1, on_exceed: block } }"),
        "routes[0].limits.messages.on_exceed",
        4,
        "`drop` or `close`",
    );
    one_error(
        &lim("{ connections: { rate: 0 } }"),
        "routes[0].limits.connections.rate",
        4,
        "at least 1",
    );
    one_error(
        &lim("{ connections: { rate: 1, burst: 0 } }"),
        "routes[0].limits.connections.burst",
        4,
        "at least 1",
    );
    one_error(
        &lim("{ connections: { burst: 3 } }"),
        "routes[0].limits.connections.rate",
        4,
        "missing `rate`",
    );
    one_error(
        &lim("{ connections: { rate: 1, per: 0ms } }"),
        "routes[0].limits.connections.per",
        4,
        "more than 0",
    );
    one_error(
        &lim("{ connections: { rate: -1 } }"),
        "routes[0].limits.connections.rate",
        4,
        "at least 1",
    );
    one_error(
        &lim("{ connections: 5 }"),
        "routes[0].limits.connections",
        4,
        "must be a mapping",
    );
    let c = load(&lim("{ connections: { rate: 1, key: \"header:X-Key\" }, messages: { rate: 2, on_exceed: close } }")).unwrap();
    assert_eq!(
        c.routes[0].limits.connections.as_ref().unwrap().key,
        LimitKey::Header("x-key".into())
    );
    assert_eq!(
        c.routes[0].limits.messages.as_ref().unwrap().on_exceed,
        OnExceed::Close
    );
}

#[test]
fn websocket_only_keys_on_plain_routes() {
    one_error(
        &plain_route("    limits: { messages: { rate: 1 } }\n"),
        "routes[0].limits.messages",
        3,
        "add a `websocket:` section",
    );
    one_error(
        &plain_route("    limits: { rooms: { rate: 1 } }\n"),
        "routes[0].limits.rooms",
        3,
        "add a `websocket:` section",
    );
    // Connection limits are fine on plain routes.
    assert!(load(&plain_route("    limits: { connections: { rate: 1 } }\n")).is_ok());
}

#[test]
fn room_limits_need_a_room() {
    one_error(
        &ws_route("    limits: { rooms: { rate: 1 } }\n"),
        "routes[0].limits.rooms",
        4,
        "websocket.signaling.room",
    );
    one_error(
        &ws_route("    limits: { rooms: { rate: 1 } }\n    split: { sticky: \"message:/room\" }\n"),
        "routes[0].limits.rooms",
        4,
        "room limits need to know the room",
    );
    for ok in ["query:room", "header:x-room", "cookie:room"] {
        assert!(
            load(&ws_route(&format!(
                "    limits: {{ rooms: {{ rate: 1 }} }}\n    split: {{ sticky: \"{ok}\" }}\n"
            )))
            .is_ok()
        );
    }
    let text = "routes:\n  - name: r\n    websocket: { signaling: { room: /room } }\n    limits: { rooms: { rate: 1 } }\n    upstreams: [{ name: a, url: ws://h }]\n";
    assert!(load(text).is_ok());
}

#[test]
fn websocket_section() {
    let ws = |s: &str| {
        format!(
            "routes:\n  - name: r\n    websocket: {s}\n    upstreams: [{{ name: a, url: ws://h }}]\n"
        )
    };
    one_error(
        &ws("{ max_message_bytes: 0 }"),
        "routes[0].websocket.max_message_bytes",
        3,
        "at least 1",
    );
    one_error(
        &ws("{ max_message_bytes: -3 }"),
        "routes[0].websocket.max_message_bytes",
        3,
        "at least 1",
    );
    one_error(
        &ws("{ allowed_origins: [\"https://a.com/\"] }"),
        "routes[0].websocket.allowed_origins[0]",
        3,
        "write `https://a.com`",
    );
    one_error(
        &ws("{ allowed_origins: [\"*\"] }"),
        "routes[0].websocket.allowed_origins[0]",
        3,
        "leave `allowed_origins` out",
    );
    one_error(
        &ws("{ allowed_origins: [app.com] }"),
        "routes[0].websocket.allowed_origins[0]",
        3,
        "not a URL",
    );
    one_error(
        &ws("{ allowed_origins: https://a.com }"),
        "routes[0].websocket.allowed_origins",
        3,
        "expected a list",
    );
    one_error(
        &ws("{ signaling: { room: room } }"),
        "routes[0].websocket.signaling.room",
        3,
        "must start with `/`",
    );
    one_error(&ws("[]"), "routes[0].websocket", 3, "must be a mapping");
    let c = load(&ws(
        "{ allowed_origins: [\"null\", \"http://localhost:3000\"] }",
    ))
    .unwrap();
    assert_eq!(
        c.routes[0]
            .websocket
            .as_ref()
            .unwrap()
            .allowed_origins
            .len(),
        2
    );
}

#[test]
fn turn_section() {
    one_error(
        &format!("{MINIMAL}turn: {{ ttl: 1h }}\n"),
        "turn.secret",
        5,
        "missing `secret`",
    );
    one_error(
        &format!("{MINIMAL}turn: {{ secret: \"\" }}\n"),
        "turn.secret",
        5,
        "must not be empty",
    );
    one_error(
        &format!("{MINIMAL}turn:\n"),
        "turn.secret",
        5,
        "missing `secret`",
    );
    one_error(
        &format!("{MINIMAL}turn: {{ secret: s, uris: [\"http://x\"] }}\n"),
        "turn.uris[0]",
        5,
        "not a TURN/STUN URI",
    );
    one_error(
        &format!("{MINIMAL}turn: {{ secret: s, uris: [\"turn://x\"] }}\n"),
        "turn.uris[0]",
        5,
        "no `//`",
    );
    one_error(
        &format!("{MINIMAL}turn: {{ secret: s, credentials_path: creds }}\n"),
        "turn.credentials_path",
        5,
        "starting with `/`",
    );
    let c = load(&format!("{MINIMAL}turn: {{ secret: 1234, uris: [\"stun:s.example.com\", \"turns:t.example.com:5349?transport=tcp\"] }}\n")).unwrap();
    assert_eq!(c.turn.as_ref().unwrap().secret, "1234");
    assert_eq!(c.turn.unwrap().uris.len(), 2);
}

#[test]
fn tracing_section() {
    let tr = |s: &str| format!("{MINIMAL}tracing: {{ otlp_endpoint: \"http://c:4317\", {s} }}\n");
    one_error(
        &tr("protocol: thrift"),
        "tracing.protocol",
        5,
        "`grpc` or `http`",
    );
    one_error(
        &tr("sample_ratio: 1.5"),
        "tracing.sample_ratio",
        5,
        "0.0 to 1.0",
    );
    one_error(
        &tr("sample_ratio: -0.1"),
        "tracing.sample_ratio",
        5,
        "0.0 to 1.0",
    );
    one_error(
        &tr("sample_ratio: .nan"),
        "tracing.sample_ratio",
        5,
        "0.0 to 1.0",
    );
    one_error(
        &tr("sample_ratio: half"),
        "tracing.sample_ratio",
        5,
        "expected a number",
    );
    one_error(
        &tr("service_name: \"\""),
        "tracing.service_name",
        5,
        "must not be empty",
    );
    one_error(
        &format!("{MINIMAL}tracing: {{ otlp_endpoint: \"grpc://c:4317\" }}\n"),
        "tracing.otlp_endpoint",
        5,
        "http:// or https://",
    );
    one_error(
        &format!("{MINIMAL}tracing: {{ protocol: http }}\n"),
        "tracing.otlp_endpoint",
        5,
        "missing `otlp_endpoint`",
    );
    assert_eq!(
        load(&tr("sample_ratio: 0"))
            .unwrap()
            .tracing
            .unwrap()
            .sample_ratio,
        0.0
    );
}

// === the Wasm filter ===

#[test]
fn filter_config() {
    let json = r#"{"routes": [{"name": "signaling", "match": {"path_prefix": "/ws"}, "websocket": {},
      "split": {"sticky": "query:room"},
      "upstreams": [{"name": "stable", "weight": 90}, {"name": "canary", "weight": 10}]}],
      "turn": {"secret": "s", "ttl": "10m", "uris": ["turn:t:3478"]}}"#;
    let c = load_filter(json).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.routes[0].upstreams[0].url, None);
    assert_eq!(c.routes[0].upstreams[1].weight, 10);
    assert_eq!(c.listen, "0.0.0.0:8080".parse::<SocketAddr>().unwrap());
    assert_eq!(c.turn.unwrap().ttl, Duration::from_secs(600));

    let bad = "listen: 0.0.0.0:1\nadmin: 0.0.0.0:2\ntracing: {}\nroutes:\n  - name: r\n    upstreams:\n      - { name: a, url: ws://h }\nturn: { secret: s, relay: {} }\n";
    let Err(ConfigErrors(errs)) = load_filter(bad) else {
        panic!()
    };
    has(&errs, "listen", 1, "Wasm filter");
    has(&errs, "admin", 2, "Wasm filter");
    has(&errs, "tracing", 3, "Wasm filter");
    has(
        &errs,
        "routes[0].upstreams[0].url",
        7,
        "not used by the Wasm filter",
    );
    has(&errs, "turn.relay", 8, "not available in the Wasm filter");
    assert_eq!(errs.len(), 5, "{}", ConfigErrors(errs.clone()));

    // Same semantic checks as the proxy.
    let Err(ConfigErrors(errs)) =
        load_filter("routes:\n  - name: r\n    upstreams: [{ name: a, weight: 0 }]\n")
    else {
        panic!()
    };
    has(&errs, "routes[0].upstreams", 3, "sum to 0");
    // And the proxy refuses a filter config: upstreams need a url.
    has(
        &errors("routes:\n  - name: r\n    upstreams: [{ name: a }]\n"),
        "routes[0].upstreams[0].url",
        3,
        "missing",
    );
}

// === robustness ===

#[test]
fn hostile_documents_are_refused_not_crashed() {
    let deep = format!("routes: {}{}", "[".repeat(10_000), "]".repeat(10_000));
    let e = &errors(&deep)[0];
    assert!(
        e.message.contains("nesting deeper") || e.message.contains("recursion limit"),
        "{e}"
    );
    let deep = format!(
        "routes:{}",
        (0..100)
            .map(|i| format!("\n{}- ", " ".repeat(2 * i)))
            .collect::<String>()
    );
    let e = &errors(&deep)[0];
    assert!(
        e.message.contains("nesting deeper") || e.message.contains("recursion limit"),
        "{e}"
    );
    let mut laughs = String::from("a: &a [x, x, x, x, x, x, x, x, x, x]\n");
    for i in 0..9 {
        let (prev, next) = ((b'a' + i) as char, (b'b' + i) as char);
        laughs.push_str(&format!("{next}: &{next} [*{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}]\n"));
    }
    let e = &errors(&laughs)[0];
    assert!(e.message.contains("more than 200000 nodes"), "{e}");
    assert!(
        errors("routes: *nope\n")[0]
            .message
            .contains("YAML syntax error")
            || errors("routes: *nope\n")[0]
                .message
                .contains("unknown anchor")
    );
    let _ = errors("\u{feff}\u{0}\u{7f}");
    let _ = errors("? [a, b]\n: c\n");
    let _ = errors("!!binary x: y\n");
}

#[test]
fn duration_strings_are_exact() {
    use sigmesh_core::config::duration_str::{format, parse};
    assert_eq!(parse("1h30m"), Ok(Duration::from_secs(5400)));
    assert_eq!(parse("1.5s"), Ok(Duration::from_millis(1500)));
    assert_eq!(parse(".25s"), Ok(Duration::from_millis(250)));
    assert_eq!(parse("0.3s"), Ok(Duration::from_millis(300)));
    assert_eq!(parse("0"), Ok(Duration::ZERO));
    assert_eq!(parse("1500us"), Ok(Duration::from_micros(1500)));
    assert!(parse("1.2.3s").is_err());
    assert!(parse("99999999999999999999999999999999999999999h").is_err());
    assert!(parse("10").is_err());
    for d in [
        "2m",
        "90s",
        "1500ms",
        "1h",
        "7ns",
        "0s",
        "288231170400000036ns",
    ] {
        assert_eq!(format(parse(d).unwrap()), d);
    }
}

#[test]
fn redacted_config_hides_url_userinfo_and_max_message_bytes_is_bounded() {
    let text = r#"
listen: 127.0.0.1:0
routes:
  - name: a
    match: { path_prefix: /ws }
    websocket: {}
    upstreams: [{ name: s, url: "ws://bob:hunter2@10.0.0.1:9/ws" }]
tracing: { otlp_endpoint: "http://u:p@otel:4318", protocol: http }
"#;
    let c = load(text).unwrap();
    let json = serde_json::to_string(&c.redacted()).unwrap();
    assert!(
        !json.contains("hunter2") && !json.contains("u:p@"),
        "{json}"
    );
    assert!(json.contains("ws://[redacted]@10.0.0.1:9/ws"), "{json}");
    let big = text.replace(
        "websocket: {}",
        "websocket: { max_message_bytes: 1000000000 }",
    );
    let e = load(&big).unwrap_err();
    assert!(e.to_string().contains("at most 16777216"), "{e}");
}

#[test]
fn the_edge_keys_round_trip_through_json() {
    let text = r#"
listen: 127.0.0.1:0
limits: { max_sessions: 10, max_sessions_per_ip: 2 }
trust_forwarded_from: [10.0.0.0/8]
admin_hosts: [admin.internal]
routes:
  - name: a
    match: { path_prefix: /ws }
    websocket: {}
    limits: { sessions: { max: 3, key: "header:x-user" } }
    split: { sticky: "query:room", override_from: ["192.0.2.0/24"] }
    upstreams: [{ name: s, url: "ws://h:1/ws" }]
tracing: { otlp_endpoint: "http://otel:4318", protocol: http, parent_sampling: ignore }
tls:
  certificates: [{ cert: /tls/a.pem, key: /tls/a.key }, { cert: /tls/b.pem, key: /tls/b.key }]
  alpn: [http/1.1]
  min_version: "1.3"
  client_ca: /tls/clients.pem
turn:
  secret: s
  credentials_auth: { request: "http://app:9100/auth", user_header: X-User, timeout: 750ms }
  relay: { listen: "127.0.0.1:0", upstream: "127.0.0.1:1", deny_peers: [10.0.0.0/8], allow_peers: [127.0.0.1], quota: { allocations_per_user: 10 } }
"#;
    let c = load(text).unwrap();
    let turn = c.turn.as_ref().unwrap();
    let auth = turn.credentials_auth.as_ref().unwrap();
    assert_eq!(auth.user_header, "x-user");
    assert_eq!(auth.timeout, std::time::Duration::from_millis(750));
    assert_eq!(
        turn.relay.as_ref().unwrap().quota.allocations_per_user,
        Some(10)
    );
    let json = serde_json::to_string(&c).unwrap();
    assert_eq!(load(&json).unwrap(), c, "{json}");
}

#[test]
fn credentials_auth_and_the_relay_quota_are_checked() {
    let errors = |text: &str| match load(text) {
        Ok(_) => panic!("accepted:\n{text}"),
        Err(ConfigErrors(e)) => e
            .iter()
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
            .join("\n"),
    };
    let base = "listen: 127.0.0.1:0\nroutes:\n  - { name: r, upstreams: [{ name: a, url: \"ws://h:1\" }] }\nturn:\n  secret: s\n";
    let e = errors(&format!(
        "{base}  credentials_auth: {{ user_header: x-user }}\n"
    ));
    assert!(e.contains("missing `request`"), "{e}");
    let e = errors(&format!(
        "{base}  credentials_auth: {{ request: \"https://app/auth\" }}\n"
    ));
    assert!(e.contains("the scheme must be http://"), "{e}");
    let e = errors(&format!(
        "{base}  credentials_auth: {{ request: \"http://app/auth\", user_header: \"x user\", timeout: 0s }}\n"
    ));
    assert!(e.contains("not a valid HTTP header name"), "{e}");
    assert!(e.contains("`timeout` must be more than 0"), "{e}");
    let e = errors(&format!(
        "{base}  relay: {{ listen: \"127.0.0.1:0\", upstream: \"127.0.0.1:1\", quota: {{ allocations_per_user: 0, per_ip: 3 }} }}\n"
    ));
    assert!(e.contains("at least 1"), "{e}");
    assert!(e.contains("per_ip"), "{e}");
    // The filter has no HTTP client of its own: Envoy's ext_authz does it there.
    let Err(ConfigErrors(e)) = load_filter(
        "routes:\n  - { name: r, upstreams: [{ name: a }] }\nturn:\n  secret: s\n  credentials_auth: { request: \"http://app/auth\" }\n",
    ) else {
        panic!("the filter accepted credentials_auth")
    };
    assert!(e[0].to_string().contains("ext_authz"), "{}", e[0]);
}

#[test]
fn tls_is_checked() {
    let errors = |tls: &str| match load(&format!(
        "listen: 127.0.0.1:0\nroutes:\n  - {{ name: r, upstreams: [{{ name: a, url: \"ws://h:1\" }}] }}\ntls: {tls}\n"
    )) {
        Ok(c) => panic!("accepted: {:?}", c.tls),
        Err(ConfigErrors(e)) => e
            .iter()
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
            .join("\n"),
    };
    let ok = load("listen: 127.0.0.1:0\nroutes:\n  - { name: r, upstreams: [{ name: a, url: \"ws://h:1\" }] }\ntls: { certificates: [{ cert: c.pem, key: k.pem }] }\n").unwrap();
    let tls = ok.tls.unwrap();
    assert_eq!(
        tls.alpn,
        vec![
            sigmesh_core::config::Alpn::H2,
            sigmesh_core::config::Alpn::Http11
        ]
    );
    assert_eq!(tls.min_version, sigmesh_core::config::TlsVersion::V1_2);
    assert!(errors("{}").contains("missing `certificates`"));
    assert!(errors("{ certificates: [] }").contains("at least one certificate"));
    assert!(errors("{ certificates: [{ cert: c.pem }] }").contains("missing `key`"));
    assert!(
        errors("{ certificates: [{ cert: c, key: k }], alpn: [spdy/3] }")
            .contains("`spdy/3` is not a protocol")
    );
    assert!(
        errors("{ certificates: [{ cert: c, key: k }], min_version: \"1.1\" }")
            .contains("use \"1.2\" or \"1.3\"")
    );
    let Err(ConfigErrors(e)) = load_filter(
        "routes:\n  - { name: r, upstreams: [{ name: a }] }\ntls: { certificates: [{ cert: c, key: k }] }\n",
    ) else {
        panic!("the filter accepted tls")
    };
    assert!(
        e[0].to_string().contains("Envoy terminates TLS"),
        "{}",
        e[0]
    );
}
