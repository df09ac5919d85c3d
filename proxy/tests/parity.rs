//! Parity: the same scripted sessions through the standalone proxy (real sockets on 127.0.0.1,
//! real WebSocket client and upstreams) and through the Envoy filter's stream logic
//! (`sigmesh_filter::stream`, the code the `.wasm` runs, fed the same bytes), with the same
//! config. Both must reach the same verdicts (status, upstream, each message forwarded or cut,
//! the close code) and the same counters (the contract's metrics, by name and labels).
//!
//! This is the guard that keeps the two front ends one product: a decision made in one shell
//! and not the other shows up here.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use sigmesh_core::frame::{close_frame, frame};
use sigmesh_filter::metrics::Sink;
use sigmesh_filter::shared::MemStore;
use sigmesh_filter::stream::{HeadersVerdict, HostFacts, on_request_headers};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;

/// The routes, for either front end: the proxy's upstreams have URLs, the filter's only names.
fn routes(urls: Option<(SocketAddr, SocketAddr)>) -> String {
    let url = |which: usize, path: &str| match urls {
        Some((a, b)) => format!(", url: \"ws://{}{path}\"", if which == 0 { a } else { b }),
        None => String::new(),
    };
    format!(
        r#"routes:
  - name: sig
    match: {{ path_prefix: /ws }}
    websocket:
      max_message_bytes: 1024
      allowed_origins: [https://ok.example]
      signaling: {{ type: /type, room: /room, peer: /from }}
    limits:
      messages: {{ rate: 1, per: 1h, burst: 6, on_exceed: drop }}
      rooms: {{ rate: 1, per: 1h, burst: 8 }}
    split: {{ sticky: "query:room", override_header: x-sigmesh-upstream }}
    upstreams:
      - {{ name: stable, weight: 50{} }}
      - {{ name: canary, weight: 50{} }}
  - name: strict
    match: {{ path_prefix: /strict }}
    websocket: {{ max_message_bytes: 1024 }}
    limits:
      messages: {{ rate: 1, per: 1h, burst: 2, on_exceed: close }}
    upstreams:
      - {{ name: stable, weight: 1{} }}
  - name: limited
    match: {{ path_prefix: /limited }}
    websocket: {{ max_message_bytes: 1024 }}
    limits:
      connections: {{ rate: 1, per: 1h, burst: 2, key: client_ip }}
    upstreams:
      - {{ name: stable, weight: 1{} }}
"#,
        url(0, "/ws"),
        url(1, "/ws"),
        url(0, "/strict"),
        url(0, "/limited"),
    )
}

/// One client message of a script.
#[derive(Debug, Clone)]
enum Msg {
    Text(String),
    Binary(Vec<u8>),
}

/// One scripted session: the upgrade request and what the client sends.
struct Script {
    path: &'static str,
    headers: Vec<(&'static str, &'static str)>,
    messages: Vec<Msg>,
}

/// What a front end did with a script.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Run {
    status: u16,
    upstream: Option<String>,
    /// Per message: `Some(true)` forwarded, `Some(false)` cut, `None` not observable (binary:
    /// the upstream does not echo it).
    fates: Vec<Option<bool>>,
    /// The close code the client got from sigmesh, if it ended the session.
    close: Option<u16>,
}

const OK: (&str, &str) = ("origin", "https://ok.example");

fn text(s: &str) -> Msg {
    Msg::Text(s.to_owned())
}

fn scripts() -> Vec<Script> {
    // The connection bucket: burst 2, then 429.
    let limited = (0..3).map(|_| Script {
        path: "/limited",
        headers: vec![],
        messages: vec![],
    });
    let mut all = vec![
        // Origin refused.
        Script {
            path: "/ws?room=r0",
            headers: vec![("origin", "https://evil.example")],
            messages: vec![],
        },
        // A call: offer, candidates in three dialects (browser JSON, PeerJS, Socket.IO), answer
        // (offer → answer timing), then the message bucket (burst 6) drops the 7th.
        Script {
            path: "/ws?room=r1",
            headers: vec![OK],
            messages: vec![
                text(
                    r#"{"type":"offer","room":"r1","from":"alice","sdp":"v=0\r\na=candidate:1 1 udp 2122260223 10.0.0.1 5000 typ host\r\n"}"#,
                ),
                text(
                    r#"{"candidate":"candidate:2 1 udp 1686052607 203.0.113.5 6000 typ srflx raddr 10.0.0.1 rport 5000","sdpMid":"0","sdpMLineIndex":0}"#,
                ),
                text(
                    r#"{"type":"CANDIDATE","payload":{"candidate":{"candidate":"candidate:3 1 tcp 1518280447 198.51.100.7 443 typ relay tcptype passive","sdpMid":"0"},"type":"media","connectionId":"mc_1"},"dst":"bob"}"#,
                ),
                text(
                    r#"42["signal",{"room":"r1","candidate":"candidate:4 1 udp 2122194687 192.168.1.9 7000 typ host"}]"#,
                ),
                text(r#"{"type":"answer","room":"r1","sdp":"v=0"}"#),
                text(r#"{"type":"join","room":"r1"}"#),
                text(r#"{"type":"leave","room":"r1"}"#),
            ],
        },
        // The same room from a second connection: the room bucket (burst 8) is shared, so the
        // third message here is its 9th and is dropped.
        Script {
            path: "/ws?room=r1",
            headers: vec![OK],
            messages: vec![
                text(r#"{"type":"join","room":"r1","from":"bob"}"#),
                text(r#"{"type":"ping","room":"r1"}"#),
                text(r#"{"type":"ping","room":"r1"}"#),
            ],
        },
        // The override header wins over the sticky key; a binary message.
        Script {
            path: "/ws?room=r2",
            headers: vec![OK, ("x-sigmesh-upstream", "canary")],
            messages: vec![
                text(r#"{"type":"join","room":"r2"}"#),
                Msg::Binary(vec![1, 2, 3]),
            ],
        },
        Script {
            path: "/ws?room=r2",
            headers: vec![OK, ("x-sigmesh-upstream", "stable")],
            messages: vec![text(r#"{"type":"join","room":"r2"}"#)],
        },
        // Over max_message_bytes: 1009.
        Script {
            path: "/ws?room=r3",
            headers: vec![OK],
            messages: vec![text(&format!(
                r#"{{"type":"x","pad":"{}"}}"#,
                "y".repeat(2000)
            ))],
        },
        // on_exceed: close: the third message closes with 1008.
        Script {
            path: "/strict",
            headers: vec![],
            messages: vec![text("a"), text("b"), text("c")],
        },
    ];
    all.splice(1..1, limited);
    all
}

// === the standalone proxy, over sockets ===

async fn run_proxy(p: &sigmesh::app::Proxy, s: &Script) -> Run {
    let mut run = Run {
        status: 0,
        upstream: None,
        fates: Vec::new(),
        close: None,
    };
    let mut c = match connect(p.listen, s.path, &s.headers).await {
        Ok((c, _)) => c,
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            run.status = resp.status().as_u16();
            return run;
        }
        Err(e) => panic!("{}: {e}", s.path),
    };
    run.status = 101;
    eventually(|| async { sessions(p).await.len() == 1 }).await;
    run.upstream = sessions(p).await[0]["upstream"].as_str().map(str::to_owned);
    for (i, m) in s.messages.iter().enumerate() {
        let sent = match m {
            Msg::Text(t) => Message::text(t.clone()),
            Msg::Binary(b) => Message::binary(b.clone()),
        };
        within(c.send(sent)).await.unwrap();
        // Until the proxy has counted the message (forwarded or cut: `/sessions`), and its echo
        // is in when it was a forwarded text; or until sigmesh closes the session. (Not pings:
        // the message bucket counts them too.)
        let mut echoed = false;
        let counted = within(async {
            loop {
                if let Ok(next) = tokio::time::timeout(Duration::from_millis(20), c.next()).await {
                    match next {
                        Some(Ok(Message::Text(_))) => echoed = true,
                        Some(Ok(Message::Close(f))) => {
                            run.close = f.map(|f| u16::from(f.code));
                            return None;
                        }
                        Some(Ok(_)) => {}
                        Some(Err(_)) | None => return None,
                    }
                }
                let all = sessions(p).await;
                let Some(s) = all.first() else { continue };
                let (forwarded, dropped) = (
                    s["messages_in"].as_u64().unwrap_or(0),
                    s["dropped"].as_u64().unwrap_or(0),
                );
                if forwarded + dropped == i as u64 + 1 {
                    let was_forwarded = forwarded > fates_forwarded(&run.fates);
                    let text = matches!(m, Msg::Text(_));
                    if !was_forwarded || !text || echoed {
                        return Some(was_forwarded);
                    }
                }
            }
        })
        .await;
        run.fates.push(match (m, counted) {
            (Msg::Text(_), Some(forwarded)) => Some(forwarded),
            (Msg::Text(_), None) => Some(false),
            (Msg::Binary(_), _) => None,
        });
        if run.close.is_some() {
            break;
        }
    }
    if run.close.is_none() {
        let _ = within(c.send(Message::Close(Some(CloseFrame {
            code: 1000.into(),
            reason: "bye".into(),
        }))))
        .await;
    }
    // Until the client's side ends; then until the proxy's session task has ended.
    while let Some(Ok(_)) = within(c.next()).await {}
    eventually(|| async { sessions(p).await.is_empty() }).await;
    run
}

/// Messages forwarded so far by the fates recorded (binary ones count as forwarded: the scripts'
/// binary messages always are).
fn fates_forwarded(fates: &[Option<bool>]) -> u64 {
    fates.iter().filter(|f| f.unwrap_or(true)).count() as u64
}

// === the filter's stream logic, in process ===

/// The filter's metrics sink: counters and gauges by stat name, histograms by observation count.
#[derive(Default)]
struct Stats(BTreeMap<String, i64>);

impl Sink for Stats {
    fn counter(&mut self, name: &str, delta: u64) {
        *self.0.entry(name.to_owned()).or_default() += delta as i64;
    }
    fn gauge(&mut self, name: &str, delta: i64) {
        *self.0.entry(name.to_owned()).or_default() += delta;
    }
    fn histogram(&mut self, name: &str, _: u64) {
        *self.0.entry(name.to_owned()).or_default() += 1;
    }
}

fn run_filter(
    s: &sigmesh_filter::settings::Settings,
    store: &MemStore,
    stats: &mut Stats,
    script: &Script,
    clock: &mut Duration,
) -> Run {
    let mut run = Run {
        status: 0,
        upstream: None,
        fates: Vec::new(),
        close: None,
    };
    let headers: Vec<(String, String)> = [
        (":method", "GET"),
        (":path", script.path),
        (":authority", "sigmesh.test"),
        ("upgrade", "websocket"),
        ("connection", "Upgrade"),
        ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ("sec-websocket-version", "13"),
    ]
    .iter()
    .chain(&script.headers)
    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
    .collect();
    let mut tick = || {
        *clock += Duration::from_millis(1);
        *clock
    };
    let facts = HostFacts {
        client_ip: "127.0.0.1",
        now: tick(),
        random: 7,
    };
    let mut session = match on_request_headers(s, store, stats, &headers, facts) {
        HeadersVerdict::Respond { status, .. } => {
            run.status = status as u16;
            return run;
        }
        HeadersVerdict::Proceed {
            session: Some(session),
            ..
        } => session,
        other => panic!("{}: {other:?}", script.path),
    };
    run.status = 101;
    run.upstream = Some(session.upstream().to_owned());
    session.on_response_headers(Some(101), None, stats);
    let mask = [9, 8, 7, 6];
    for m in &script.messages {
        let (opcode, payload) = match m {
            Msg::Text(t) => (1, t.as_bytes().to_vec()),
            Msg::Binary(b) => (2, b.clone()),
        };
        let bytes = frame(opcode, true, &payload, Some(mask));
        let now = tick();
        let p = session.on_request_body(s, store, stats, &bytes, now);
        // Forwarded: the message's bytes go on as they came (held ones come out as a copy).
        let forwarded = p.forward.bytes(&bytes) == &bytes[..];
        let close = p.close.map(|c| c.code);
        // The upstream echoes forwarded text, like the proxy's scripted upstream.
        if forwarded && opcode == 1 {
            let echo = frame(1, true, &payload, None);
            let now = tick();
            let _ = session.on_response_body(s, store, stats, &echo, now);
        }
        run.fates.push(match (m, close) {
            (Msg::Text(_), None) => Some(forwarded),
            (Msg::Text(_), Some(_)) => Some(false),
            (Msg::Binary(_), _) => None,
        });
        if close.is_some() {
            run.close = close;
            break;
        }
    }
    if run.close.is_none() {
        let now = tick();
        let bye = close_frame(1000, "bye", Some(mask));
        let _ = session.on_request_body(s, store, stats, &bye, now);
        let _ = session.on_response_body(s, store, stats, &close_frame(1000, "bye", None), now);
    }
    session.on_end(stats);
    run
}

// === counters, as one form ===

/// `(metric, labels)` → value, for the families both front ends export.
type Counters = BTreeMap<(String, Vec<(String, String)>), i64>;

const COMPARED: [&str; 7] = [
    "connections_total",
    "connections_active",
    "messages_total",
    "rate_limited_total",
    "ice_candidates_total",
    "upstream_errors_total",
    "call_setup_count",
];

/// Prometheus text (`sigmesh_x_total{a="b"} 3`) in that form.
fn from_prometheus(text: &str) -> Counters {
    let mut out = Counters::new();
    for line in text.lines().filter(|l| l.starts_with("sigmesh_")) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let (name, labels) = match series.split_once('{') {
            Some((n, l)) => (n, l.trim_end_matches('}')),
            None => (series, ""),
        };
        let name = name.trim_start_matches("sigmesh_");
        let name = match name {
            "call_setup_seconds_count" => "call_setup_count",
            n => n,
        };
        if !COMPARED.contains(&name) {
            continue;
        }
        let mut l: Vec<(String, String)> = labels
            .split(',')
            .filter(|kv| !kv.is_empty())
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.trim_matches('"').to_owned()))
            .collect();
        l.sort();
        let v: f64 = value.parse().unwrap();
        if v != 0.0 {
            out.insert((name.to_owned(), l), v as i64);
        }
    }
    out
}

/// Envoy stat names (`sigmesh.x_total.a.b`) in that form.
fn from_stats(stats: &Stats) -> Counters {
    let mut out = Counters::new();
    for (stat, &v) in &stats.0 {
        let mut parts = stat.split('.').skip(1);
        let Some(name) = parts.next() else { continue };
        let name = match name {
            "call_setup_ms" => "call_setup_count",
            n => n,
        };
        if !COMPARED.contains(&name) || v == 0 {
            continue;
        }
        let rest: Vec<&str> = parts.collect();
        let mut l: Vec<(String, String)> = rest
            .chunks(2)
            .map(|kv| {
                let value = if kv[1] == "none" { "" } else { kv[1] };
                (kv[0].to_owned(), value.to_owned())
            })
            .collect();
        l.sort();
        out.insert((name.to_owned(), l), v);
    }
    out
}

fn get(c: &Counters, name: &str, labels: &[(&str, &str)]) -> i64 {
    let mut l: Vec<(String, String)> = labels
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    l.sort();
    c.get(&(name.to_owned(), l)).copied().unwrap_or(0)
}

#[tokio::test]
async fn proxy_and_filter_reach_the_same_verdicts_and_counters() {
    let (stable, _stable_seen) = scripted_upstream().await;
    let (canary, _canary_seen) = scripted_upstream().await;
    let p = proxy(&routes(Some((stable, canary))), &[]).await;
    let settings = sigmesh_filter::settings::parse(routes(None).as_bytes()).unwrap();
    let store = MemStore::default();
    let mut stats = Stats::default();
    let mut clock = Duration::from_secs(1_700_000_000);

    for script in scripts() {
        let by_proxy = run_proxy(&p, &script).await;
        let by_filter = run_filter(&settings, &store, &mut stats, &script, &mut clock);
        assert_eq!(by_proxy, by_filter, "{} {:?}", script.path, script.headers);
    }

    let proxy_counters = from_prometheus(&metrics(&p).await);
    let filter_counters = from_stats(&stats);
    assert_eq!(proxy_counters, filter_counters);

    // And both are right, not merely equal.
    let c = &proxy_counters;
    let limited = |route: &str, limit: &str| {
        get(
            c,
            "rate_limited_total",
            &[("route", route), ("limit", limit)],
        )
    };
    assert_eq!(limited("sig", "messages"), 1);
    assert_eq!(limited("sig", "rooms"), 1);
    assert_eq!(limited("sig", "message_size"), 1);
    assert_eq!(limited("strict", "messages"), 1);
    assert_eq!(limited("limited", "connections"), 1);
    let conn = |route: &str, upstream: &str, outcome: &str| {
        get(
            c,
            "connections_total",
            &[
                ("route", route),
                ("upstream", upstream),
                ("outcome", outcome),
            ],
        )
    };
    assert_eq!(conn("sig", "", "forbidden"), 1);
    assert_eq!(conn("limited", "", "rate_limited"), 1);
    assert_eq!(conn("limited", "stable", "accepted"), 2);
    let ice = |typ: &str, protocol: &str| {
        get(
            c,
            "ice_candidates_total",
            &[("route", "sig"), ("type", typ), ("protocol", protocol)],
        )
    };
    assert_eq!(ice("host", "udp"), 2);
    assert_eq!(ice("srflx", "udp"), 1);
    assert_eq!(ice("relay", "tcp"), 1);
    let setups: i64 = c
        .iter()
        .filter(|((n, _), _)| n == "call_setup_count")
        .map(|(_, v)| v)
        .sum();
    assert_eq!(setups, 1, "one offer → answer");
    assert!(
        !c.keys().any(|(n, _)| n == "connections_active"),
        "sessions left open: {c:?}"
    );
    p.drain().await;
}
