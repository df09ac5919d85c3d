//! Traces, checked at a real OTLP receiver: span names, parent/child links, attributes,
//! events, the upstream's `traceparent`, sampling, and a collector that is down or hangs.
#![allow(clippy::unwrap_used)]

mod common;
mod otlp;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use futures_util::SinkExt;
use otlp::{Collector, Received, Val};
use sigmesh::app::Proxy;
use sigmesh::state::Shared;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT: &str = "00f067aa0ba902b7";

fn signaling_route(upstream: &str, tracing: &str) -> String {
    routes_and_tracing(upstream, "", tracing)
}

fn routes_and_tracing(upstream: &str, extra_routes: &str, tracing: &str) -> String {
    format!(
        r#"
routes:
  - name: signaling
    match: {{ path_prefix: /ws }}
    websocket:
      signaling: {{ type: /type, room: /room, peer: /from }}
    split: {{ sticky: query:room }}
    upstreams:
      - {{ name: stable, url: "ws://{upstream}/ws" }}
{extra_routes}  - name: web
    match: {{ path_prefix: / }}
    upstreams:
      - {{ name: page, url: "http://{upstream}" }}
tracing:
{tracing}
"#
    )
}

fn tracing_block(endpoint: &str, protocol: &str, ratio: f64) -> String {
    format!(
        "  otlp_endpoint: {endpoint}\n  protocol: {protocol}\n  service_name: sigmesh-test\n  sample_ratio: {ratio}\n"
    )
}

/// Drains the proxy (sessions end, spans flush) and returns its shared state for metrics.
async fn drain(p: Proxy) -> Arc<Shared> {
    let shared = p.shared.clone();
    within(p.drain()).await;
    shared
}

fn one<'a>(spans: &'a [Received], pred: impl Fn(&Received) -> bool, what: &str) -> &'a Received {
    let found: Vec<_> = spans.iter().filter(|s| pred(s)).collect();
    assert_eq!(found.len(), 1, "{what}: {found:#?}");
    found[0]
}

fn s(v: Option<Val>) -> String {
    v.expect("attribute").s().to_owned()
}

fn i(v: Option<Val>) -> i64 {
    v.expect("attribute").i()
}

async fn recv_type(c: &mut Client, kind: &str) -> serde_json::Value {
    loop {
        let v = recv_json(c).await;
        if v["type"] == kind {
            return v;
        }
    }
}

/// A call between two peers through sigmesh, exported over gRPC: the session spans are
/// children of the client's traceparent, the upstream saw the handshake span's context, the
/// setup span covers offer to answer, every message is an event.
#[tokio::test]
async fn call_trace_over_grpc() {
    let collector = Collector::start().await;
    let up = signaling("stable").await;
    let p = proxy(
        &signaling_route(
            &up.local_addr.to_string(),
            &tracing_block(&collector.grpc_url(), "grpc", 1.0),
        ),
        &[],
    )
    .await;
    let traceparent = format!("00-{TRACE}-{PARENT}-01");
    let (mut alice, resp) = connect(
        p.listen,
        "/ws?room=r1",
        &[
            ("traceparent", &traceparent),
            ("tracestate", "vendor=abc"),
            ("baggage", "tenant=blue"),
        ],
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), 101);
    let mut bob = ws(p.listen, "/ws?room=r1").await;
    send(&mut alice, r#"{"type":"join","room":"r1","from":"alice"}"#).await;
    recv_type(&mut alice, "welcome").await;
    send(&mut bob, r#"{"type":"join","room":"r1","from":"bob"}"#).await;
    recv_type(&mut bob, "welcome").await;
    let seen = whoami(&mut alice).await;
    let upstream_traceparent = seen["headers"]["traceparent"].as_str().unwrap().to_owned();
    assert_eq!(seen["headers"]["tracestate"], "vendor=abc");
    assert_eq!(seen["headers"]["baggage"], "tenant=blue");
    let offer = r#"{"type":"offer","room":"r1","from":"alice","to":"bob","sdp":"v=0"}"#;
    send(&mut alice, offer).await;
    recv_type(&mut bob, "offer").await;
    send(
        &mut bob,
        r#"{"type":"answer","room":"r1","from":"bob","to":"alice","sdp":"v=0"}"#,
    )
    .await;
    recv_type(&mut alice, "answer").await;
    within(alice.send(Message::Close(Some(CloseFrame {
        code: 1000.into(),
        reason: "bye".into(),
    }))))
    .await
    .unwrap();
    // The close went upstream: the session's close is alice's, whatever follows.
    eventually(|| async { sessions(&p).await.len() == 1 }).await;
    drain(p).await;

    let spans = collector.spans();
    assert!(
        spans
            .iter()
            .all(|s| s.transport == "grpc" && s.scope == "sigmesh")
    );
    let session = one(
        &spans,
        |s| s.name() == "ws.session" && s.trace_id() == TRACE,
        "alice's session span",
    );
    assert_eq!(
        session.parent_span_id(),
        PARENT,
        "child of the client's span"
    );
    assert_eq!(session.span.kind, 2, "SPAN_KIND_SERVER");
    assert_eq!(s(session.resource_attr("service.name")), "sigmesh-test");
    assert_eq!(s(session.attr("server.address")), "127.0.0.1");
    assert_eq!(s(session.attr("client.address")), "127.0.0.1");
    assert_eq!(s(session.attr("url.path")), "/ws");
    assert_eq!(s(session.attr("network.protocol.name")), "websocket");
    assert_eq!(i(session.attr("http.response.status_code")), 101);
    assert_eq!(s(session.attr("sigmesh.route")), "signaling");
    assert_eq!(s(session.attr("sigmesh.upstream")), "stable");
    assert_eq!(
        session.attr("sigmesh.split.sticky_key_present"),
        Some(Val::B(true))
    );
    assert_eq!(s(session.attr("sigmesh.room")), "r1");
    assert_eq!(s(session.attr("sigmesh.peer")), "alice");
    assert_eq!(i(session.attr("websocket.close.code")), 1000);
    assert_eq!(s(session.attr("websocket.close.reason")), "bye");
    assert_eq!(s(session.attr("sigmesh.close.initiator")), "client");
    assert_eq!(i(session.attr("sigmesh.messages.in")), 3); // join, whoami, offer
    assert!(i(session.attr("sigmesh.messages.out")) >= 3); // welcome, whoami, answer
    assert!(i(session.attr("sigmesh.bytes.in")) > offer.len() as i64);
    for t in ["host", "srflx", "prflx", "relay", "udp", "tcp"] {
        assert!(
            session.attr(&format!("sigmesh.ice.{t}")).is_some(),
            "ice.{t}"
        );
    }
    assert!(i(session.attr("sigmesh.setup_ms")) >= 0);

    // The upstream handshake: a client span under the session, whose context the upstream got.
    let hs = one(
        &spans,
        |s| s.name() == "ws.upstream_handshake" && s.trace_id() == TRACE,
        "alice's handshake span",
    );
    assert_eq!(hs.parent_span_id(), session.span_id());
    assert_eq!(hs.span.kind, 3, "SPAN_KIND_CLIENT");
    assert_eq!(i(hs.attr("http.response.status_code")), 101);
    assert_eq!(s(hs.attr("sigmesh.upstream")), "stable");
    assert_eq!(
        upstream_traceparent,
        format!("00-{TRACE}-{}-01", hs.span_id()),
        "the upstream's traceparent is the handshake span"
    );

    // Offer (in) to answer (out) on alice's session.
    let setup = one(
        &spans,
        |s| s.name() == "signaling.setup" && s.trace_id() == TRACE,
        "alice's setup span",
    );
    assert_eq!(setup.parent_span_id(), session.span_id());
    assert_eq!(s(setup.attr("sigmesh.offer.direction")), "in");
    assert_eq!(s(setup.attr("sigmesh.answer.direction")), "out");
    assert_eq!(setup.attr("sigmesh.setup.completed"), Some(Val::B(true)));
    assert!(setup.span.end_time_unix_nano >= setup.span.start_time_unix_nano);

    // One event per message, with type, direction and size.
    let events = session.events("ws.message");
    let ins: Vec<_> = events
        .iter()
        .filter(|e| e["sigmesh.message.direction"] == Val::S("in".into()))
        .collect();
    let types: Vec<_> = ins
        .iter()
        .map(|e| e["sigmesh.message.type"].s().to_owned())
        .collect();
    assert_eq!(types, ["join", "other", "offer"], "{events:#?}");
    assert_eq!(ins[2]["sigmesh.message.size"], Val::I(offer.len() as i64));
    assert_eq!(ins[2]["sigmesh.message.dropped"], Val::B(false));
    assert!(
        events
            .iter()
            .any(|e| e["sigmesh.message.type"] == Val::S("answer".into())
                && e["sigmesh.message.direction"] == Val::S("out".into()))
    );

    // Bob's session started its own trace (no traceparent), offer out, answer in.
    let bob_session = one(
        &spans,
        |s| s.name() == "ws.session" && s.trace_id() != TRACE,
        "bob's session span",
    );
    assert!(bob_session.span.parent_span_id.is_empty(), "a root span");
    let bob_setup = one(
        &spans,
        |s| s.name() == "signaling.setup" && s.trace_id() == bob_session.trace_id(),
        "bob's setup span",
    );
    assert_eq!(s(bob_setup.attr("sigmesh.offer.direction")), "out");
    assert_eq!(s(bob_setup.attr("sigmesh.answer.direction")), "in");
    assert_eq!(
        i(bob_session.attr("websocket.close.code")),
        1001,
        "closed by the drain"
    );
    assert_eq!(s(bob_session.attr("sigmesh.close.initiator")), "proxy");
}

/// OTLP/HTTP export; a plain HTTP request gets an `http.request` span whose context is the
/// upstream's traceparent; refused handshakes end their session span with the status.
#[tokio::test]
async fn http_export_request_spans_and_refusals() {
    let collector = Collector::start().await;
    let up = signaling("stable").await;
    let dead = otlp::dead_port().await;
    let down = format!(
        "  - name: down\n    match: {{ path_prefix: /down }}\n    websocket: {{ allowed_origins: [https://ok.example] }}\n    upstreams:\n      - {{ name: gone, url: \"ws://{dead}/ws\" }}\n"
    );
    let yaml = routes_and_tracing(
        &up.local_addr.to_string(),
        &down,
        &tracing_block(&collector.http_url(), "http", 1.0),
    );
    let p = proxy(&yaml, &[]).await;

    let (status, _, _) = http(
        p.listen,
        "GET",
        "/healthz",
        &[("traceparent", &format!("00-{TRACE}-{PARENT}-01"))],
        "",
    )
    .await;
    assert_eq!(status, 200);
    let (status, _) = refused_status(p.listen, "/down", &[("origin", "https://ok.example")]).await;
    assert_eq!(status, 502);
    let (status, _) =
        refused_status(p.listen, "/down", &[("origin", "https://evil.example")]).await;
    assert_eq!(status, 403);
    drain(p).await;

    let spans = collector.spans();
    assert!(!spans.is_empty());
    assert!(spans.iter().all(|s| s.transport == "http"));
    let req = one(
        &spans,
        |s| s.name() == "http.request",
        "the HTTP request span",
    );
    assert_eq!(req.trace_id(), TRACE);
    assert_eq!(req.parent_span_id(), PARENT);
    assert_eq!(s(req.attr("http.request.method")), "GET");
    assert_eq!(s(req.attr("url.path")), "/healthz");
    assert_eq!(i(req.attr("http.response.status_code")), 200);
    assert_eq!(s(req.attr("sigmesh.route")), "web");
    assert_eq!(s(req.attr("sigmesh.upstream")), "page");
    assert_eq!(s(req.resource_attr("service.name")), "sigmesh-test");

    let refused: Vec<_> = spans
        .iter()
        .filter(|s| {
            s.name() == "ws.session" && s.attr("sigmesh.route") == Some(Val::S("down".into()))
        })
        .collect();
    assert_eq!(refused.len(), 2, "{refused:#?}");
    let bad_gateway = refused
        .iter()
        .find(|s| s.attr("http.response.status_code") == Some(Val::I(502)))
        .expect("502 span");
    assert_eq!(
        bad_gateway.span.status.as_ref().map(|s| s.code),
        Some(2),
        "STATUS_CODE_ERROR"
    );
    let hs = one(
        &spans,
        |s| s.name() == "ws.upstream_handshake" && s.parent_span_id() == bad_gateway.span_id(),
        "the failed handshake",
    );
    assert_eq!(s(hs.attr("error.type")), "connect");
    assert_eq!(hs.span.status.as_ref().map(|s| s.code), Some(2));
    assert!(
        refused
            .iter()
            .any(|s| s.attr("http.response.status_code") == Some(Val::I(403)))
    );
}

/// An `https://` collector with a private CA (`tracing.tls.ca`): the spans arrive over TLS,
/// by OTLP/HTTP and by OTLP/gRPC.
#[tokio::test]
async fn export_to_an_https_collector() {
    let pki = common::pki::Pki::new();
    pki.issue("collector", &["localhost"]);
    let collector = Collector::start_https(common::pki::server_config(&pki, "collector")).await;
    let up = signaling("stable").await;
    for (protocol, url) in [
        ("http", collector.https_url()),
        ("grpc", collector.grpcs_url()),
    ] {
        let tracing = format!(
            "  otlp_endpoint: {url}\n  protocol: {protocol}\n  tls: {{ ca: {} }}\n",
            pki.path("ca.pem").display()
        );
        let yaml = routes_and_tracing(&up.local_addr.to_string(), "", &tracing);
        let p = proxy(&yaml, &[]).await;
        let (status, _, _) = http(p.listen, "GET", "/healthz", &[], "").await;
        assert_eq!(status, 200);
        drain(p).await;
        eventually(|| async { collector.spans().iter().any(|s| s.transport == protocol) }).await;
    }
}

/// `sample_ratio: 0.0` exports nothing for new traces, yet the upstream still gets a valid,
/// unsampled traceparent; a client's sampled traceparent is honoured (parent-based).
#[tokio::test]
async fn ratio_zero_samples_nothing_but_parents_win() {
    ratio_zero(true).await;
}

/// Issue 11: a client `traceparent` with the sampled flag forced sampling. With
/// `parent_sampling: ignore`, only `sample_ratio` decides.
#[tokio::test]
async fn with_parent_sampling_ignored_a_client_cannot_force_sampling() {
    ratio_zero(false).await;
}

async fn ratio_zero(follow: bool) {
    let collector = Collector::start().await;
    let up = signaling("stable").await;
    let mut block = tracing_block(&collector.grpc_url(), "grpc", 0.0);
    if !follow {
        block.push_str("  parent_sampling: ignore\n");
    }
    let p = proxy(&signaling_route(&up.local_addr.to_string(), &block), &[]).await;
    for _ in 0..5 {
        let mut c = ws(p.listen, "/ws?room=z").await;
        let seen = whoami(&mut c).await;
        let tp = seen["headers"]["traceparent"].as_str().unwrap().to_owned();
        let parts: Vec<_> = tp.split('-').collect();
        assert_eq!(parts.len(), 4, "{tp}");
        assert_eq!(parts[3], "00", "not sampled: {tp}");
        assert_ne!(parts[1], "0".repeat(32));
    }
    let (mut sampled, _) = connect(
        p.listen,
        "/ws?room=z",
        &[("traceparent", &format!("00-{TRACE}-{PARENT}-01"))],
    )
    .await
    .unwrap();
    let seen = whoami(&mut sampled).await;
    let tp = seen["headers"]["traceparent"].as_str().unwrap().to_owned();
    if !follow {
        // The trace goes on, unsampled, and nothing is exported.
        assert!(
            tp.starts_with(&format!("00-{TRACE}-")) && tp.ends_with("-00"),
            "{tp}"
        );
        drain(p).await;
        assert!(collector.spans().is_empty(), "{:#?}", collector.spans());
        return;
    }
    assert!(
        tp.starts_with(&format!("00-{TRACE}-")) && tp.ends_with("-01"),
        "{tp}"
    );
    drain(p).await;
    let spans = collector.spans();
    assert!(!spans.is_empty(), "the sampled parent's spans are exported");
    assert!(
        spans.iter().all(|s| s.trace_id() == TRACE),
        "only the sampled trace: {spans:#?}"
    );
    assert_eq!(spans.iter().filter(|s| s.name() == "ws.session").count(), 1);
}

/// `sample_ratio: 1.0` samples every session.
#[tokio::test]
async fn ratio_one_samples_everything() {
    let collector = Collector::start().await;
    let up = signaling("stable").await;
    let p = proxy(
        &signaling_route(
            &up.local_addr.to_string(),
            &tracing_block(&collector.grpc_url(), "grpc", 1.0),
        ),
        &[],
    )
    .await;
    for _ in 0..5 {
        let mut c = ws(p.listen, "/ws?room=o").await;
        let seen = whoami(&mut c).await;
        assert!(
            seen["headers"]["traceparent"]
                .as_str()
                .unwrap()
                .ends_with("-01")
        );
    }
    drain(p).await;
    assert_eq!(collector.named("ws.session").len(), 5);
    assert_eq!(collector.named("ws.upstream_handshake").len(), 5);
}

/// A chatty session: events stop at the cap (128) and the rest are counted; messages dropped
/// by the message bucket are events with `sigmesh.message.dropped`; a proxy close (1009) is
/// the span's close code.
#[tokio::test]
async fn event_cap_drops_and_proxy_close() {
    let collector = Collector::start().await;
    let (up, _seen) = scripted_upstream().await;
    let yaml = format!(
        r#"
routes:
  - name: chat
    match: {{ path_prefix: /ws }}
    websocket: {{ max_message_bytes: 1024 }}
    limits:
      messages: {{ rate: 1, per: 1h, burst: 100, on_exceed: drop }}
    upstreams:
      - {{ name: echo, url: "ws://{up}/ws" }}
tracing:
{}"#,
        tracing_block(&collector.grpc_url(), "grpc", 1.0)
    );
    let p = proxy(&yaml, &[]).await;
    let mut c = ws(p.listen, "/ws").await;
    for n in 0..100 {
        send(&mut c, &format!("m{n}")).await;
        assert_eq!(recv_text(&mut c).await, format!("m{n}"));
    }
    // Over the bucket: dropped, never echoed.
    for _ in 0..3 {
        send(&mut c, "over").await;
    }
    send(&mut c, &"x".repeat(2000)).await;
    assert_eq!(recv_close(&mut c).await.0, 1009);
    let shared = drain(p).await;

    let spans = collector.spans();
    let session = one(&spans, |s| s.name() == "ws.session", "the session");
    let events = session.events("ws.message");
    assert_eq!(events.len(), 128, "capped");
    // 100 in + 100 out relayed, 3 dropped: 203 message events, 128 kept.
    assert_eq!(i(session.attr("sigmesh.events.dropped")), 203 - 128);
    let text = shared.metrics().encode();
    assert_eq!(
        metric(&text, "sigmesh_trace_events_dropped_total"),
        Some(75.0),
        "{text}"
    );
    assert_eq!(i(session.attr("sigmesh.messages.dropped")), 3);
    assert_eq!(i(session.attr("websocket.close.code")), 1009);
    assert_eq!(s(session.attr("sigmesh.close.initiator")), "proxy");
    assert!(metric(&text, "sigmesh_trace_spans_exported_total").unwrap() >= 2.0);
}

/// Drop events under the cap carry the limit that dropped them.
#[tokio::test]
async fn dropped_message_events_name_the_limit() {
    let collector = Collector::start().await;
    let (up, _seen) = scripted_upstream().await;
    let yaml = format!(
        r#"
routes:
  - name: chat
    match: {{ path_prefix: /ws }}
    websocket: {{}}
    limits:
      messages: {{ rate: 1, per: 1h, burst: 1, on_exceed: drop }}
    upstreams:
      - {{ name: echo, url: "ws://{up}/ws" }}
tracing:
{}"#,
        tracing_block(&collector.grpc_url(), "grpc", 1.0)
    );
    let p = proxy(&yaml, &[]).await;
    let mut c = ws(p.listen, "/ws").await;
    send(&mut c, "one").await;
    assert_eq!(recv_text(&mut c).await, "one");
    send(&mut c, "two").await;
    send(&mut c, "three").await;
    eventually(|| async {
        sessions(&p)
            .await
            .first()
            .is_some_and(|s| s["dropped"] == 2)
    })
    .await;
    within(c.send(Message::Close(None))).await.unwrap();
    drain(p).await;
    let spans = collector.spans();
    let session = one(&spans, |s| s.name() == "ws.session", "the session");
    let dropped: Vec<_> = session
        .events("ws.message")
        .into_iter()
        .filter(|e| e["sigmesh.message.dropped"] == Val::B(true))
        .collect();
    assert_eq!(dropped.len(), 2, "{dropped:#?}");
    assert!(
        dropped
            .iter()
            .all(|e| e["sigmesh.limit"] == Val::S("messages".into()))
    );
}

/// A collector that refuses connections: the relay works, spans are dropped and counted.
/// One that accepts and never answers: the relay is not slowed, and the drain ends in bounded
/// time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_or_hanging_collector_costs_only_spans() {
    let up = signaling("stable").await;
    let dead = otlp::dead_port().await;
    let p = proxy(
        &signaling_route(
            &up.local_addr.to_string(),
            &tracing_block(&format!("http://{dead}"), "grpc", 1.0),
        ),
        &[],
    )
    .await;
    for _ in 0..10 {
        let mut c = ws(p.listen, "/ws?room=d").await;
        send(&mut c, r#"{"type":"echo","n":1}"#).await;
        assert_eq!(recv_json(&mut c).await["type"], "echo");
    }
    let shared = drain(p).await;
    let text = shared.metrics().encode();
    let dropped = metric(
        &text,
        r#"sigmesh_trace_spans_dropped_total{reason="export_failed"}"#,
    );
    assert!(
        dropped.unwrap_or(0.0) >= 20.0,
        "session and handshake spans counted: {text}"
    );
    assert_eq!(
        metric(&text, "sigmesh_trace_spans_exported_total"),
        Some(0.0)
    );

    let hole = otlp::black_hole().await;
    let p = proxy(
        &signaling_route(
            &up.local_addr.to_string(),
            &tracing_block(&format!("http://{hole}"), "http", 1.0),
        ),
        &[],
    )
    .await;
    let started = Instant::now();
    let mut c = ws(p.listen, "/ws?room=h").await;
    for n in 0..200 {
        send(&mut c, &format!(r#"{{"type":"echo","n":{n}}}"#)).await;
        assert_eq!(recv_json(&mut c).await["n"], n);
    }
    // Short sessions end spans while an export hangs.
    for _ in 0..20 {
        let mut s = ws(p.listen, "/ws?room=h2").await;
        send(&mut s, r#"{"type":"echo"}"#).await;
        recv_json(&mut s).await;
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "relay slowed: {:?}",
        started.elapsed()
    );
    let t = Instant::now();
    drain(p).await;
    assert!(t.elapsed() < WAIT, "drain bounded");
}
