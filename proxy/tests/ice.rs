//! Signaling reading end to end: real WebSocket peers through the proxy to the real signaling
//! server (and a scripted echo upstream for dialects), then what `/sessions` and `/metrics` say
//! about ICE candidates and call setup; the TURN REST credentials endpoint and CLI, checked
//! against an independent HMAC-SHA1 (Python's `hmac`).
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{SystemTime, UNIX_EPOCH};

use common::*;
use serde_json::{Value, json};

const HOST_MDNS: &str = "candidate:1467250027 1 udp 2122260223 9b36eaac-bb2e-49bb-bb78-21c41c499900.local 53622 typ host generation 0 ufrag Kx9d network-id 1";
const SRFLX_UDP: &str = "candidate:1853887674 1 udp 1845501695 203.0.113.7 43010 typ srflx raddr 0.0.0.0 rport 0 generation 0 ufrag Kx9d network-id 1";
const SRFLX_TCP: &str = "candidate:1 1 tcp 1342177279 203.0.113.7 50000 typ srflx raddr 192.168.1.5 rport 9 tcptype passive generation 0";
const HOST_TCP: &str = "candidate:2 1 TCP 2105524479 192.168.1.5 9 typ host tcptype active";
const RELAY_UDP: &str =
    "candidate:3 1 UDP 92217343 198.51.100.4 57843 typ relay raddr 198.51.100.4 rport 57843";

fn sdp(cands: &[&str]) -> String {
    let mut s = "v=0\r\no=- 4611731400430051336 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0\r\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\nc=IN IP4 0.0.0.0\r\na=ice-ufrag:Kx9d\r\na=mid:0\r\n".to_owned();
    for c in cands {
        s += &format!("a={c}\r\n");
    }
    s
}

/// The next message of `kind`, skipping others (peer-joined, ...).
async fn recv_type(c: &mut Client, kind: &str) -> Value {
    loop {
        let v = recv_json(c).await;
        if v["type"] == kind {
            return v;
        }
    }
}

fn session_of<'a>(all: &'a [Value], peer: &str) -> &'a Value {
    all.iter()
        .find(|s| s["peer"] == peer)
        .unwrap_or_else(|| panic!("no session of {peer}: {all:?}"))
}

const SIGNALING: &str = r#"
routes:
  - name: signaling
    match: { path_prefix: /ws }
    websocket:
      signaling: { type: /type, room: /room, peer: /from }
    upstreams:
      - { name: stable, url: "ws://{A}/ws" }
"#;

#[tokio::test]
async fn a_call_through_the_signaling_server() {
    let server = signaling("stable").await;
    let p = proxy(SIGNALING, &[server.local_addr]).await;
    let mut alice = ws(p.listen, "/ws").await;
    let mut bob = ws(p.listen, "/ws").await;
    send(&mut alice, r#"{"type":"join","room":"r1","from":"alice"}"#).await;
    recv_type(&mut alice, "welcome").await;
    send(&mut bob, r#"{"type":"join","room":"r1","from":"bob"}"#).await;
    recv_type(&mut bob, "welcome").await;

    // Bob (the newcomer) offers with two candidates in the SDP; Alice answers with one; then
    // each trickles one as the demo page does.
    let offer = json!({ "type": "offer", "room": "r1", "from": "bob", "to": "alice", "sdp": sdp(&[HOST_MDNS, SRFLX_UDP]) });
    send(&mut bob, &offer.to_string()).await;
    recv_type(&mut alice, "offer").await;
    let answer = json!({ "type": "answer", "room": "r1", "from": "alice", "to": "bob", "sdp": sdp(&[HOST_TCP]) });
    send(&mut alice, &answer.to_string()).await;
    recv_type(&mut bob, "answer").await;
    let trickle = |from: &str, to: &str, c: &str| {
        json!({ "type": "candidate", "room": "r1", "from": from, "to": to,
            "candidate": { "candidate": c, "sdpMid": "0", "sdpMLineIndex": 0 } })
        .to_string()
    };
    send(&mut alice, &trickle("alice", "bob", RELAY_UDP)).await;
    recv_type(&mut bob, "candidate").await;
    send(&mut bob, &trickle("bob", "alice", SRFLX_TCP)).await;
    recv_type(&mut alice, "candidate").await;

    // Both sessions saw all five candidates, one way or the other, and timed the call setup.
    let all = sessions(&p).await;
    for peer in ["alice", "bob"] {
        let s = session_of(&all, peer);
        assert_eq!(s["room"], "r1", "{s}");
        assert_eq!(
            s["ice"],
            json!({ "host": 2, "srflx": 2, "prflx": 0, "relay": 1, "udp": 3, "tcp": 2 }),
            "{peer}: {s}"
        );
        assert!(s["setup_ms"].is_u64(), "{peer}: no setup_ms: {s}");
        assert!(s["setup_ms"].as_u64().unwrap() < 10_000, "{s}");
    }

    // The metric counts each candidate once, where its client sent it.
    let m = metrics(&p).await;
    let ice = |t: &str, proto: &str| {
        metric(
            &m,
            &format!(
                r#"sigmesh_ice_candidates_total{{route="signaling",type="{t}",protocol="{proto}"}}"#
            ),
        )
    };
    assert_eq!(ice("host", "udp"), Some(1.0), "{m}");
    assert_eq!(ice("host", "tcp"), Some(1.0));
    assert_eq!(ice("srflx", "udp"), Some(1.0));
    assert_eq!(ice("srflx", "tcp"), Some(1.0));
    assert_eq!(ice("relay", "udp"), Some(1.0));
    assert_eq!(ice("prflx", "udp"), None);
    // One offer/answer pair per session.
    let setup = r#"sigmesh_call_setup_seconds_count{route="signaling",upstream="stable"}"#;
    assert_eq!(metric(&m, setup), Some(2.0), "{m}");
    assert!(
        m.contains("# TYPE sigmesh_call_setup_seconds histogram"),
        "{m}"
    );
    assert!(
        m.contains(
            r#"sigmesh_call_setup_seconds_bucket{le="0.01",route="signaling",upstream="stable"}"#
        ) || m.contains(
            r#"sigmesh_call_setup_seconds_bucket{route="signaling",upstream="stable",le="0.01"}"#
        ),
        "{m}"
    );
    for (dir, kind, n) in [
        ("in", "offer", 1.0),
        ("out", "offer", 1.0),
        ("in", "answer", 1.0),
        ("in", "candidate", 1.0),
        ("out", "candidate", 1.0),
    ] {
        let line = format!(
            r#"sigmesh_messages_total{{route="signaling",upstream="stable",direction="{dir}",type="{kind}"}}"#
        );
        assert!(metric(&m, &line).is_some_and(|v| v >= n), "{line}\n{m}");
    }
    server.shutdown();
}

const ECHO: &str = r#"
routes:
  - name: echo
    match: { path_prefix: /echo }
    websocket: {}
    upstreams:
      - { name: echo, url: "ws://{A}/" }
"#;

/// Without any `signaling:` pointers: PeerJS, Socket.IO and a wrapped simple-peer signal are read
/// by shape; an unknown message passes and is counted as `other`.
#[tokio::test]
async fn dialects_without_configuration() {
    let (up, _seen) = scripted_upstream().await;
    let p = proxy(ECHO, &[up]).await;
    let mut c = ws(p.listen, "/echo").await;
    let peerjs = json!({ "type": "OFFER", "dst": "peer-b",
        "payload": { "sdp": { "type": "offer", "sdp": sdp(&[HOST_MDNS]) }, "type": "data", "connectionId": "dc_1" } })
    .to_string();
    let sio = format!(r#"42/signal,7["answer",{}]"#, json!({ "sdp": sdp(&[]) }));
    let simple_peer = json!({ "type": "signal", "to": "b", "data": { "type": "candidate", "candidate": { "candidate": SRFLX_TCP, "sdpMid": "0", "sdpMLineIndex": 0 } } }).to_string();
    for m in [
        peerjs.as_str(),
        sio.as_str(),
        simple_peer.as_str(),
        "hello, not json",
    ] {
        send(&mut c, m).await;
        assert_eq!(recv_text(&mut c).await, m, "passed through untouched");
    }
    let all = sessions(&p).await;
    assert_eq!(all.len(), 1);
    let s = &all[0];
    // Echoed: each candidate went in and came back out.
    assert_eq!(
        s["ice"],
        json!({ "host": 2, "srflx": 2, "prflx": 0, "relay": 0, "udp": 2, "tcp": 2 }),
        "{s}"
    );
    assert!(s["setup_ms"].is_u64(), "{s}");
    let m = metrics(&p).await;
    for (kind, n) in [
        ("offer", 1.0),
        ("answer", 1.0),
        ("candidate", 1.0),
        ("other", 1.0),
    ] {
        for dir in ["in", "out"] {
            let line = format!(
                r#"sigmesh_messages_total{{route="echo",upstream="echo",direction="{dir}",type="{kind}"}}"#
            );
            assert_eq!(metric(&m, &line), Some(n), "{line}\n{m}");
        }
    }
    let ice = |t: &str, proto: &str| {
        metric(
            &m,
            &format!(
                r#"sigmesh_ice_candidates_total{{route="echo",type="{t}",protocol="{proto}"}}"#
            ),
        )
    };
    assert_eq!(
        (ice("host", "udp"), ice("srflx", "tcp")),
        (Some(1.0), Some(1.0)),
        "{m}"
    );
    assert_eq!(
        metric(
            &m,
            r#"sigmesh_call_setup_seconds_count{route="echo",upstream="echo"}"#
        ),
        Some(1.0),
        "{m}"
    );
}

// === TURN REST credentials ===

/// base64(HMAC-SHA1(secret, username)) computed by Python's standard library.
fn python_password(secret: &str, username: &str) -> String {
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            "import base64,hashlib,hmac,sys; print(base64.b64encode(hmac.new(sys.argv[1].encode(), sys.argv[2].encode(), hashlib.sha1).digest()).decode())",
            secret,
            username,
        ])
        .output()
        .expect("python3 is needed for the independent HMAC check (apt-get install -y python3)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A credential as coturn's `use-auth-secret` checks it: `expiry:user`, expiry about now + ttl,
/// and the password Python computes from the secret.
fn check_credential(c: &Value, secret: &str, user: &str, ttl: u64, uris: &[&str]) {
    let username = c["username"].as_str().unwrap();
    let (expiry, u) = username.split_once(':').unwrap();
    assert_eq!(u, user, "{c}");
    let expiry: u64 = expiry.parse().unwrap();
    let now = unix_now();
    assert!(
        expiry >= now + ttl - 5 && expiry <= now + ttl + 5,
        "expiry {expiry}, now {now}: {c}"
    );
    assert_eq!(
        c["password"].as_str().unwrap(),
        python_password(secret, username),
        "{c}"
    );
    assert_eq!(c["ttl"], ttl, "{c}");
    assert_eq!(c["uris"], json!(uris), "{c}");
    assert_eq!(
        c.as_object().unwrap().len(),
        4,
        "exactly username, password, ttl, uris: {c}"
    );
}

const TURN: &str = r#"
routes:
  - name: signaling
    match: { path_prefix: /ws }
    websocket: {}
    upstreams:
      - { name: stable, url: "ws://127.0.0.1:9/ws" }
turn:
  secret: "s3cret: with spaces & ünïcode"
  ttl: 1h
  uris: ["turn:127.0.0.1:3478?transport=udp", "turn:127.0.0.1:3478?transport=tcp"]
"#;

#[tokio::test]
async fn credentials_endpoint() {
    let p = proxy(TURN, &[]).await;
    let (status, headers, body) = http(
        p.listen,
        "GET",
        "/turn-credentials?user=alice%40example.com",
        &[],
        "",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(header(&headers, "cache-control"), Some("no-store"));
    assert!(header(&headers, "content-type").is_some_and(|t| t.starts_with("application/json")));
    let c: Value = serde_json::from_str(&body).unwrap();
    check_credential(
        &c,
        "s3cret: with spaces & ünïcode",
        "alice@example.com",
        3600,
        &[
            "turn:127.0.0.1:3478?transport=udp",
            "turn:127.0.0.1:3478?transport=tcp",
        ],
    );

    for bad in [
        "/turn-credentials",
        "/turn-credentials?user=",
        "/turn-credentials?other=x",
        "/turn-credentials?user=a%0Ab",
    ] {
        let (status, headers, body) = http(p.listen, "GET", bad, &[], "").await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert_eq!(header(&headers, "cache-control"), Some("no-store"));
        let v: Value = serde_json::from_str(&body).unwrap();
        assert!(
            v["error"].as_str().is_some_and(|e| e.contains("user")),
            "{body}"
        );
    }
    let (status, headers, _) = http(p.listen, "POST", "/turn-credentials?user=a", &[], "").await;
    assert_eq!(
        (status, header(&headers, "allow")),
        (405, Some("GET, HEAD"))
    );
    // Other paths still route as before.
    assert_eq!(http(p.listen, "GET", "/nothing-here", &[], "").await.0, 404);

    // The default per-IP bucket: 20 at once, then 429 (10 more per second). The five GETs
    // above took a token each (the POST and the unrouted path did not).
    let mut ok = 5;
    let mut limited = None;
    for i in 0..60 {
        let (status, headers, _) =
            http(p.listen, "GET", "/turn-credentials?user=bob", &[], "").await;
        if status == 429 {
            limited = Some((i, headers));
            break;
        }
        assert_eq!(status, 200);
        ok += 1;
    }
    let (i, headers) = limited.expect("the credentials endpoint is rate limited");
    assert!(ok >= 20, "limited after only {ok} requests (attempt {i})");
    assert!(header(&headers, "retry-after").is_some());
    assert_eq!(header(&headers, "x-ratelimit-limit"), Some("20"));
    assert_eq!(header(&headers, "x-ratelimit-remaining"), Some("0"));
    let m = metrics(&p).await;
    assert!(
        metric(
            &m,
            r#"sigmesh_rate_limited_total{route="",limit="credentials"}"#
        )
        .is_some_and(|v| v >= 1.0),
        "{m}"
    );
}

/// A route that matches the credentials path lends its connection bucket.
#[tokio::test]
async fn credentials_use_a_matching_routes_bucket() {
    let p = proxy(
        r#"
routes:
  - name: creds
    match: { path: /creds }
    limits:
      connections: { rate: 1, per: 1h, burst: 2, key: client_ip }
    upstreams:
      - { name: none, url: "http://127.0.0.1:9" }
turn:
  secret: s
  ttl: 10m
  uris: []
  credentials_path: /creds
"#,
        &[],
    )
    .await;
    for _ in 0..2 {
        let (status, _, body) = http(p.listen, "GET", "/creds?user=u", &[], "").await;
        assert_eq!(status, 200, "{body}");
        check_credential(&serde_json::from_str(&body).unwrap(), "s", "u", 600, &[]);
    }
    let (status, headers, _) = http(p.listen, "GET", "/creds?user=u", &[], "").await;
    assert_eq!(
        (status, header(&headers, "x-ratelimit-limit")),
        (429, Some("2"))
    );
    let m = metrics(&p).await;
    assert_eq!(
        metric(
            &m,
            r#"sigmesh_rate_limited_total{route="creds",limit="connections"}"#
        ),
        Some(1.0),
        "{m}"
    );
}

#[test]
fn credentials_cli() {
    let bin = env!("CARGO_BIN_EXE_sigmesh");
    let out = std::process::Command::new(bin)
        .args([
            "turn-credentials",
            "--secret",
            "cli-secret",
            "--user",
            "carol",
            "--ttl",
            "30m",
            "--uri",
            "turn:turn.example.com:3478",
            "--uri",
            "turns:turn.example.com:5349",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let c: Value = serde_json::from_slice(&out.stdout).unwrap();
    check_credential(
        &c,
        "cli-secret",
        "carol",
        1800,
        &["turn:turn.example.com:3478", "turns:turn.example.com:5349"],
    );
    // The secret may come from the environment; the TTL defaults to 1h.
    let out = std::process::Command::new(bin)
        .args(["turn-credentials", "--user", "dave"])
        .env("SIGMESH_TURN_SECRET", "env-secret")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    check_credential(
        &serde_json::from_slice(&out.stdout).unwrap(),
        "env-secret",
        "dave",
        3600,
        &[],
    );
    let out = std::process::Command::new(bin)
        .args(["turn-credentials", "--secret", "s", "--user", ""])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("empty user"));
}
