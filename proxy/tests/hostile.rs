//! Attacks on a running sigmesh (issue 11), each with the defence it must meet: a clear status or
//! close code, no panic, nothing past a stated bound, and a control session unaffected.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;

/// A room whose hash goes to `stable` at 50/50 (bucket < 5,000), and one that goes to `canary`.
fn rooms() -> (String, String) {
    let at = |want_low: bool| {
        (0..)
            .map(|i| format!("room-{i}"))
            .find(|r| (sigmesh_core::split::bucket_of(r.as_bytes()) < 5_000) == want_low)
            .unwrap()
    };
    (at(true), at(false))
}

fn split_config(override_from: &str, canary_weight: u32) -> String {
    format!(
        r#"
routes:
  - name: sig
    match: {{ path_prefix: /ws }}
    websocket: {{}}
    split: {{ sticky: "query:room"{override_from} }}
    upstreams:
      - {{ name: stable, url: "ws://{{A}}/ws", weight: 50 }}
      - {{ name: canary, url: "ws://{{B}}/ws", weight: {canary_weight} }}
"#
    )
}

/// The upstream a session landed on, and whether the split header reached it.
async fn landed(p: &sigmesh::app::Proxy, room: &str, force: &str) -> (String, bool) {
    let (mut c, _) = connect(
        p.listen,
        &format!("/ws?room={room}"),
        &[("x-sigmesh-upstream", force)],
    )
    .await
    .unwrap();
    let me = whoami(&mut c).await;
    let _ = c.close(None).await;
    let leaked = me["headers"]
        .as_object()
        .unwrap()
        .keys()
        .any(|k| k.eq_ignore_ascii_case("x-sigmesh-upstream"));
    (me["server"].as_str().unwrap().to_owned(), leaked)
}

/// Item 7: any client could force any upstream, a canary switched off (weight 0) included, and
/// the header reached the upstream.
#[tokio::test]
async fn the_override_header_is_for_allowed_networks_and_live_upstreams_only() {
    let stable = signaling("stable").await;
    let canary = signaling("canary").await;
    let addrs = [stable.local_addr, canary.local_addr];
    let (to_stable, to_canary) = rooms();

    // From outside `override_from`: ignored, the room's hash decides.
    let p = proxy(&split_config(", override_from: [10.0.0.0/8]", 50), &addrs).await;
    assert_eq!(
        landed(&p, &to_stable, "canary").await,
        ("stable".into(), false)
    );
    assert_eq!(
        landed(&p, &to_canary, "stable").await,
        ("canary".into(), false)
    );
    p.drain().await;

    // From inside it: honoured, and still never passed on.
    let p = proxy(&split_config(", override_from: [127.0.0.0/8]", 50), &addrs).await;
    assert_eq!(
        landed(&p, &to_stable, "canary").await,
        ("canary".into(), false)
    );
    p.drain().await;

    // A canary switched off cannot be forced, whoever asks.
    let p = proxy(&split_config("", 0), &addrs).await;
    assert_eq!(
        landed(&p, &to_canary, "canary").await,
        ("stable".into(), false)
    );
    p.drain().await;
}

/// Item 1: the candidate scan was quadratic (a 64 KiB line of `candidate:` cost 0.4 s of CPU),
/// unbounded in candidates, and ran on messages the buckets then dropped.
#[tokio::test]
async fn candidate_reading_is_capped_and_skips_what_the_bucket_drops() {
    let up = scripted_upstream().await.0;
    let config = r#"
routes:
  - name: sig
    match: { path_prefix: /ws }
    websocket:
      max_message_bytes: 262144
      signaling: { room: /room }
    limits:
      messages: { rate: 1, per: 1h, burst: 3 }
      rooms: { rate: 1, per: 1h, burst: 100 }
    upstreams: [{ name: echo, url: "ws://{A}/ws" }]
"#;
    let p = proxy(config, &[up]).await;
    let mut c = ws(p.listen, "/ws?room=r").await;
    // 1,500 candidate lines in one message: relayed whole, 128 of them read.
    let many = "a=candidate:1 1 udp 2122260223 10.0.0.1 9 typ host\r\n".repeat(1_500);
    send(&mut c, &many).await;
    assert_eq!(recv_text(&mut c).await.len(), many.len());
    // 64 KiB of `candidate:` on one line: relayed, and the session answers at once after it.
    send(&mut c, &"candidate:".repeat(6_553)).await;
    assert_eq!(recv_text(&mut c).await.len(), 65_530);
    // `/sessions` counts both ways (the upstream echoes): 128 each.
    let ice = |s: &serde_json::Value| s["ice"]["host"].as_u64().unwrap();
    assert_eq!(ice(&sessions(&p).await[0]), 2 * 128);
    // The bucket's burst (3) is spent by the next message; the one after it is dropped unread:
    // its candidate counts nowhere.
    let one = r#"{"room":"r","candidate":"candidate:2 1 udp 1 10.0.0.2 9 typ host"}"#;
    send(&mut c, one).await;
    assert_eq!(recv_text(&mut c).await, one);
    send(&mut c, one).await;
    send(&mut c, "after").await;
    eventually(|| async { sessions(&p).await[0]["dropped"].as_u64() == Some(2) }).await;
    assert_eq!(ice(&sessions(&p).await[0]), 2 * 129);
    let m = metrics(&p).await;
    assert_eq!(
        metric(
            &m,
            r#"sigmesh_ice_candidates_total{route="sig",type="host",protocol="udp"}"#
        ),
        Some(129.0)
    );
    p.drain().await;
}

/// Item 11: `/ws/../admin` matched the `/ws` route (and went upstream as written); routes now
/// see the normalised path, and so does the upstream.
#[tokio::test]
async fn dot_segments_do_not_climb_out_of_a_route() {
    let http_up = signaling("web").await;
    let config = r#"
routes:
  - name: ws
    match: { path_prefix: /ws }
    upstreams: [{ name: web, url: "http://{A}" }]
  - name: health
    match: { path_prefix: /health }
    upstreams: [{ name: web, url: "http://{A}" }]
"#;
    let p = proxy(config, &[http_up.local_addr]).await;
    for path in [
        "/ws/../admin",
        "/ws/%2e%2e/admin",
        "//admin",
        "/ws/./../admin",
    ] {
        let (status, _, _) = http(p.listen, "GET", path, &[], "").await;
        assert_eq!(status, 404, "{path}");
    }
    // Inside a route, the upstream gets the normalised path (`/healthz`, which it serves).
    let (status, _, body) = http(p.listen, "GET", "/health/x/../../healthz", &[], "").await;
    assert_eq!((status, body.trim()), (200, "ok"));
    p.drain().await;
}

/// Item 8: room names and header values were bounded in count but not in length (unique 60 KB
/// room names grew memory without bound). A long key is stored as its digest, and shown cut.
#[tokio::test]
async fn long_room_names_are_digested_and_shown_cut() {
    let up = scripted_upstream().await.0;
    let config = r#"
routes:
  - name: sig
    match: { path_prefix: /ws }
    websocket:
      max_message_bytes: 262144
      signaling: { room: /room }
    limits:
      rooms: { rate: 1, per: 1h, burst: 1 }
    upstreams: [{ name: echo, url: "ws://{A}/ws" }]
"#;
    let p = proxy(config, &[up]).await;
    let mut c = ws(p.listen, "/ws").await;
    let long = |tail: char| format!("{}{tail}", "r".repeat(60_000));
    let msg = |room: &str| format!(r#"{{"room":"{room}"}}"#);
    // The first message of a 60 KB room passes; the second of the same room is over its bucket.
    send(&mut c, &msg(&long('a'))).await;
    assert_eq!(recv_text(&mut c).await.len(), 60_012);
    send(&mut c, &msg(&long('a'))).await;
    // A room that differs only in its last byte has a bucket of its own.
    send(&mut c, &msg(&long('b'))).await;
    assert!(recv_text(&mut c).await.ends_with("b\"}"));
    let s = &sessions(&p).await[0];
    assert_eq!(s["dropped"], 1);
    assert_eq!(s["room"].as_str().unwrap().len(), 256);
    p.drain().await;
}

/// Item 9: no cap on live sessions, in total, per IP or per room. Over `max_sessions` 503, over
/// `max_sessions_per_ip` or `limits.sessions` 429; a closed session gives its place back, and so
/// does a handshake that fails upstream.
#[tokio::test]
async fn live_sessions_are_capped_and_places_come_back() {
    let up = signaling("stable").await;
    let route = r#"
routes:
  - name: sig
    match: { path_prefix: /ws }
    websocket: {}
    split: { sticky: "query:room" }
    limits:
      sessions: { max: 2, key: room }
    upstreams: [{ name: stable, url: "ws://{A}/ws" }]
"#;
    let p = proxy(route, &[up.local_addr]).await;
    let mut a1 = ws(p.listen, "/ws?room=a").await;
    let _a2 = ws(p.listen, "/ws?room=a").await;
    let (status, _) = refused_status(p.listen, "/ws?room=a", &[]).await;
    assert_eq!(status, 429);
    let _b = ws(p.listen, "/ws?room=b").await;
    let _ = a1.close(None).await;
    while let Some(Ok(_)) = within(futures_util::StreamExt::next(&mut a1)).await {}
    eventually(|| async { connect(p.listen, "/ws?room=a", &[]).await.is_ok() }).await;
    let m = metrics(&p).await;
    assert!(
        metric(
            &m,
            r#"sigmesh_rate_limited_total{route="sig",limit="sessions"}"#
        ) >= Some(1.0),
        "{m}"
    );
    p.drain().await;

    let process = format!("limits: {{ max_sessions: 2, max_sessions_per_ip: 5 }}\n{route}");
    let p = proxy(&process, &[up.local_addr]).await;
    let _s1 = ws(p.listen, "/ws?room=x").await;
    let _s2 = ws(p.listen, "/ws?room=y").await;
    let (status, headers) = refused_status(p.listen, "/ws?room=z", &[]).await;
    assert_eq!(status, 503);
    assert_eq!(headers["retry-after"], "1");
    p.drain().await;

    let per_ip = format!("limits: {{ max_sessions_per_ip: 1 }}\n{route}");
    let p = proxy(&per_ip, &[up.local_addr]).await;
    let _s1 = ws(p.listen, "/ws?room=x").await;
    assert_eq!(refused_status(p.listen, "/ws?room=y", &[]).await.0, 429);
    p.drain().await;

    // A failed upstream handshake (502) gives its place back.
    let dead = route.replace("ws://{A}/ws", "ws://127.0.0.1:1/ws");
    let p = proxy(&format!("limits: {{ max_sessions: 1 }}\n{dead}"), &[]).await;
    for _ in 0..3 {
        assert_eq!(refused_status(p.listen, "/ws?room=x", &[]).await.0, 502);
    }
    p.drain().await;
}

/// Item 11: a client's `x-forwarded-for` was appended to (the upstream believed its made-up
/// hops) and could not be trusted for limits either. Now it is replaced unless the peer is in
/// `trust_forwarded_from`, and then the client is the last address those proxies did not add.
#[tokio::test]
async fn forwarded_for_is_believed_only_from_trusted_proxies() {
    let up = signaling("stable").await;
    let route = r#"
routes:
  - name: sig
    match: { path_prefix: /ws }
    websocket: {}
    limits:
      connections: { rate: 1, per: 1h, burst: 1, key: client_ip }
    upstreams: [{ name: stable, url: "ws://{A}/ws" }]
"#;
    let xff_seen =
        |me: &serde_json::Value| me["headers"]["x-forwarded-for"].as_str().map(str::to_owned);
    let p = proxy(route, &[up.local_addr]).await;
    let (mut c, _) = connect(p.listen, "/ws", &[("x-forwarded-for", "6.6.6.6")])
        .await
        .unwrap();
    assert_eq!(
        xff_seen(&whoami(&mut c).await).as_deref(),
        Some("127.0.0.1")
    );
    // A made-up address does not buy a fresh connection bucket.
    let (status, _) = refused_status(p.listen, "/ws", &[("x-forwarded-for", "7.7.7.7")]).await;
    assert_eq!(status, 429);
    p.drain().await;

    let trusted = format!("trust_forwarded_from: [127.0.0.0/8]\n{route}");
    let p = proxy(&trusted, &[up.local_addr]).await;
    let (mut c, _) = connect(p.listen, "/ws", &[("x-forwarded-for", "203.0.113.9")])
        .await
        .unwrap();
    assert_eq!(
        xff_seen(&whoami(&mut c).await).as_deref(),
        Some("203.0.113.9, 127.0.0.1")
    );
    // Each forwarded client has its own bucket; the same one again is over it.
    assert!(
        connect(p.listen, "/ws", &[("x-forwarded-for", "203.0.113.10")])
            .await
            .is_ok()
    );
    let (status, _) = refused_status(p.listen, "/ws", &[("x-forwarded-for", "203.0.113.9")]).await;
    assert_eq!(status, 429);
    p.drain().await;
}

/// Item 11: pings did not take from the message bucket, so a ping flood went through any limit.
#[tokio::test]
async fn pings_take_from_the_message_bucket() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let up = scripted_upstream().await.0;
    let config = r#"
routes:
  - name: sig
    match: { path_prefix: /ws }
    websocket: {}
    limits:
      messages: { rate: 1, per: 1h, burst: 2 }
    upstreams: [{ name: echo, url: "ws://{A}/ws" }]
"#;
    let p = proxy(config, &[up]).await;
    let mut c = ws(p.listen, "/ws").await;
    for i in 0..5u8 {
        within(c.send(Message::Ping(vec![i].into()))).await.unwrap();
    }
    within(c.send(Message::Close(None))).await.unwrap();
    let mut pongs = Vec::new();
    while let Some(Ok(m)) = within(c.next()).await {
        if let Message::Pong(p) = m {
            pongs.push(p.to_vec());
        }
    }
    assert_eq!(
        pongs,
        vec![vec![0], vec![1]],
        "only the bucket's burst got through"
    );
    let m = metrics(&p).await;
    assert_eq!(
        metric(
            &m,
            r#"sigmesh_rate_limited_total{route="sig",limit="messages"}"#
        ),
        Some(3.0)
    );
    p.drain().await;
}

/// Item 9: a client that stops reading while the upstream sends held its session (and the
/// upstream's sends) until the idle timeout, which the upstream's traffic kept deferring. Now a
/// leg that takes nothing for the write timeout (1 s in the tests, 30 s by default) has
/// failed: the session ends, the upstream is let go, and a control session carries on.
#[tokio::test]
async fn a_client_that_stops_reading_is_let_go_after_the_write_timeout() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let (up, mut seen) = scripted_upstream().await;
    let route = "routes:\n  - name: sig\n    match: { path_prefix: /ws }\n    websocket: { idle_timeout: 1h }\n    upstreams: [{ name: stable, url: \"ws://{A}/ws\" }]\n";
    let p = proxy(route, &[up]).await;
    let mut control = ws(p.listen, "/ws").await;

    // A client with a small receive window, which asks for a flood and then never reads.
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let stream = within(sock.connect(p.listen)).await.unwrap();
    let (mut stuck, _) = within(tokio_tungstenite::client_async(
        format!("ws://{}/ws", p.listen),
        stream,
    ))
    .await
    .unwrap();
    stuck.send(Message::text("flood")).await.unwrap();
    eventually(|| async { sessions(&p).await.len() == 2 }).await;
    // The session ends by itself, and the upstream's flood ends with it.
    eventually(|| async { sessions(&p).await.len() == 1 }).await;
    loop {
        match within(seen.recv()).await {
            Some(Seen::Gone) => break,
            Some(_) => continue,
            None => panic!("upstream reports ended"),
        }
    }
    // The control session is unaffected.
    control.send(Message::text("still here")).await.unwrap();
    loop {
        match within(control.next()).await {
            Some(Ok(Message::Text(t))) if t == "still here" => break,
            Some(Ok(_)) => continue,
            other => panic!("control session: {other:?}"),
        }
    }
    drop(stuck);
    p.drain().await;
}
