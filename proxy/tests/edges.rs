//! Every row of the contract's "Behaviour at the edges", over loopback with real peers.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

const ECHO: &str = r#"
routes:
  - name: echo
    match: { path_prefix: /ws }
    websocket:
      max_message_bytes: 1024
      signaling: { type: /type, room: /room, peer: /from }
    upstreams:
      - { name: up, url: "ws://{A}/ws" }
"#;

#[tokio::test]
async fn connection_bucket_empty_gives_429_with_headers() {
    let up = signaling("stable").await;
    let p = proxy(
        r#"
routes:
  - name: sig
    match: { path_prefix: /ws }
    websocket: {}
    limits:
      connections: { rate: 1, per: 60s, burst: 2, key: client_ip }
    upstreams: [{ name: stable, url: "ws://{A}/ws" }]
"#,
        &[up.local_addr],
    )
    .await;
    let _a = ws(p.listen, "/ws").await;
    let _b = ws(p.listen, "/ws").await;
    let (status, h) = refused_status(p.listen, "/ws", &[]).await;
    assert_eq!(status, 429);
    let retry: u64 = h["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "retry-after {retry}");
    assert_eq!(h["x-ratelimit-limit"], "2");
    assert_eq!(h["x-ratelimit-remaining"], "0");
    assert!(h.contains_key("x-ratelimit-reset"));
    let m = metrics(&p).await;
    assert_eq!(
        metric(
            &m,
            r#"sigmesh_rate_limited_total{route="sig",limit="connections"}"#
        ),
        Some(1.0)
    );
}

#[tokio::test]
async fn origin_not_allowed_gives_403() {
    let up = signaling("stable").await;
    let p = proxy(
        r#"
routes:
  - name: sig
    match: { path_prefix: /ws }
    websocket: { allowed_origins: [ "https://app.example.com" ] }
    upstreams: [{ name: stable, url: "ws://{A}/ws" }]
"#,
        &[up.local_addr],
    )
    .await;
    assert_eq!(
        refused_status(p.listen, "/ws", &[("origin", "https://evil.example.com")])
            .await
            .0,
        403
    );
    assert_eq!(refused_status(p.listen, "/ws", &[]).await.0, 403);
    let (mut c, _) = connect(p.listen, "/ws", &[("origin", "https://app.example.com")])
        .await
        .unwrap();
    assert_eq!(whoami(&mut c).await["server"], "stable");
}

#[tokio::test]
async fn no_route_gives_404() {
    let up = signaling("stable").await;
    let p = proxy(ECHO, &[up.local_addr]).await;
    assert_eq!(refused_status(p.listen, "/nope", &[]).await.0, 404);
    assert_eq!(http(p.listen, "GET", "/nope", &[], "").await.0, 404);
}

#[tokio::test]
async fn plain_request_on_websocket_route_is_forwarded_with_the_same_split() {
    let stable = signaling("stable").await;
    let canary = signaling("canary").await;
    let p = proxy(
        r#"
routes:
  - name: sig
    match: { path_prefix: /ws }
    websocket: {}
    split: { sticky: query:room }
    upstreams:
      - { name: stable, url: "ws://{A}/ws", weight: 50 }
      - { name: canary, url: "ws://{B}/ws", weight: 50 }
"#,
        &[stable.local_addr, canary.local_addr],
    )
    .await;
    for i in 0..20 {
        let path = format!("/ws?room=room-{i}");
        let mut c = ws(p.listen, &path).await;
        let over_ws = whoami(&mut c).await["server"].as_str().unwrap().to_owned();
        let (status, h, _) = http(p.listen, "GET", &path, &[], "").await;
        // The signaling server answers plain HTTP on any path it does not serve with 404, and
        // says who it is either way.
        assert!(status == 200 || status == 404, "status {status}");
        assert_eq!(
            header(&h, "x-signaling-server"),
            Some(over_ws.as_str()),
            "room-{i}"
        );
    }
}

#[tokio::test]
async fn upstream_refusing_gives_502() {
    // A port with nothing listening.
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead = l.local_addr().unwrap();
    drop(l);
    let p = proxy(ECHO, &[dead]).await;
    assert_eq!(refused_status(p.listen, "/ws", &[]).await.0, 502);
    let m = metrics(&p).await;
    assert_eq!(
        metric(
            &m,
            r#"sigmesh_upstream_errors_total{route="echo",upstream="up",kind="connect"}"#
        ),
        Some(1.0)
    );
}

#[tokio::test]
async fn upstream_timing_out_in_handshake_gives_502() {
    // Accepts TCP but never answers the handshake.
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = l.accept().await {
            held.push(s);
        }
    });
    let p = proxy(ECHO, &[addr]).await;
    assert_eq!(refused_status(p.listen, "/ws", &[]).await.0, 502);
    let m = metrics(&p).await;
    assert_eq!(
        metric(
            &m,
            r#"sigmesh_upstream_errors_total{route="echo",upstream="up",kind="timeout"}"#
        ),
        Some(1.0)
    );
    hold.abort();
}

#[tokio::test]
async fn message_bucket_drop_and_close() {
    let (up, mut seen) = scripted_upstream().await;
    let p = proxy(
        r#"
routes:
  - name: drop
    match: { path: /drop }
    websocket: {}
    limits: { messages: { rate: 1, per: 60s, burst: 3, on_exceed: drop } }
    upstreams: [{ name: up, url: "ws://{A}/" }]
  - name: close
    match: { path: /close }
    websocket: {}
    limits: { messages: { rate: 1, per: 60s, burst: 2, on_exceed: close } }
    upstreams: [{ name: up, url: "ws://{A}/" }]
"#,
        &[up],
    )
    .await;
    let mut c = ws(p.listen, "/drop").await;
    for i in 0..10 {
        send(&mut c, &format!("m{i}")).await;
    }
    // Exactly the three first are echoed: the fourth echo would arrive before this marker... so
    // count echoes until the session shows all ten messages seen.
    for i in 0..3 {
        assert_eq!(recv_text(&mut c).await, format!("m{i}"));
    }
    eventually(|| async {
        sessions(&p)
            .await
            .first()
            .is_some_and(|s| s["dropped"] == 7)
    })
    .await;
    let s = &sessions(&p).await[0];
    assert_eq!(s["messages_in"], 3);
    assert_eq!(s["route"], "drop");
    let m = metrics(&p).await;
    assert_eq!(
        metric(
            &m,
            r#"sigmesh_rate_limited_total{route="drop",limit="messages"}"#
        ),
        Some(7.0)
    );
    for i in 0..3 {
        match within(seen.recv()).await {
            Some(Seen::Text(t)) => assert_eq!(t, format!("m{i}")),
            other => panic!("{other:?}"),
        }
    }

    let mut c = ws(p.listen, "/close").await;
    for i in 0..2 {
        send(&mut c, &format!("c{i}")).await;
        assert_eq!(recv_text(&mut c).await, format!("c{i}"));
    }
    send(&mut c, "c2").await;
    assert_eq!(recv_close(&mut c).await.0, 1008);
}

#[tokio::test]
async fn message_over_max_gives_1009() {
    let (up, mut seen) = scripted_upstream().await;
    let p = proxy(ECHO, &[up]).await;
    let mut c = ws(p.listen, "/ws").await;
    send(&mut c, "small").await;
    assert_eq!(recv_text(&mut c).await, "small");
    let _ = c.send(Message::text("x".repeat(2000))).await;
    assert_eq!(recv_close(&mut c).await.0, 1009);
    // The upstream gets the same close (as behind the Envoy filter); the big message never
    // reached it.
    loop {
        match within(seen.recv()).await {
            Some(Seen::Text(t)) => assert_eq!(t, "small"),
            Some(Seen::Close(f)) => {
                assert_eq!(f.map(|f| f.0), Some(1009));
                break;
            }
            other => panic!("{other:?}"),
        }
    }
}

#[tokio::test]
async fn close_codes_propagate_both_ways() {
    let (up, mut seen) = scripted_upstream().await;
    let p = proxy(ECHO, &[up]).await;
    // Upstream closes: the client gets the same code and reason.
    let mut c = ws(p.listen, "/ws").await;
    send(&mut c, "close:4000:bye now").await;
    assert_eq!(recv_close(&mut c).await, (4000, "bye now".to_owned()));
    // The client's answer goes out on its next read; it then sees the end of the connection.
    assert!(matches!(within(c.next()).await, None | Some(Err(_))));
    // The closing handshake completes end to end: the upstream gets the client's answer.
    assert_eq!(
        upstream_close(&mut seen).await,
        Some((4000, "bye now".to_owned()))
    );
    // Client closes: the upstream gets the same code and reason.
    let mut c = ws(p.listen, "/ws").await;
    send(&mut c, "hello").await;
    assert_eq!(recv_text(&mut c).await, "hello");
    within(
        c.close(Some(tokio_tungstenite::tungstenite::protocol::CloseFrame {
            code: 4001.into(),
            reason: "done".into(),
        })),
    )
    .await
    .unwrap();
    let mut got = None;
    while got.is_none() {
        if let Some(Seen::Close(f)) = within(seen.recv()).await {
            got = f;
        }
    }
    assert_eq!(got, Some((4001, "done".to_owned())));
    eventually(|| async { sessions(&p).await.is_empty() }).await;
}

#[tokio::test]
async fn upstream_failing_mid_session_gives_1011() {
    let (up, _seen) = scripted_upstream().await;
    let p = proxy(ECHO, &[up]).await;
    let mut c = ws(p.listen, "/ws").await;
    send(&mut c, "reset").await;
    // 1011 rather than 1014: tungstenite (and other stacks) reject 1014 as a protocol error.
    assert_eq!(recv_close(&mut c).await.0, 1011);
    let m = metrics(&p).await;
    assert!(
        metric(
            &m,
            r#"sigmesh_upstream_errors_total{route="echo",upstream="up",kind="reset"}"#
        )
        .is_some(),
        "{m}"
    );
}

#[tokio::test]
async fn pings_are_answered_and_idle_sessions_closed_with_1001() {
    let (up, mut seen) = scripted_upstream().await;
    let p = proxy(
        r#"
routes:
  - name: idle
    match: { path_prefix: / }
    websocket: { idle_timeout: 400ms }
    upstreams: [{ name: up, url: "ws://{A}/" }]
"#,
        &[up],
    )
    .await;
    let mut c = ws(p.listen, "/").await;
    within(c.send(Message::Ping(b"are you there".to_vec().into())))
        .await
        .unwrap();
    match within(c.next()).await {
        Some(Ok(Message::Pong(p))) => assert_eq!(&p[..], b"are you there"),
        other => panic!("expected pong, got {other:?}"),
    }
    let started = std::time::Instant::now();
    assert_eq!(recv_close(&mut c).await.0, 1001);
    assert!(started.elapsed() >= std::time::Duration::from_millis(300));
    assert_eq!(upstream_close(&mut seen).await.map(|f| f.0), Some(1001));
}

#[tokio::test]
async fn drain_turns_readyz_503_refuses_new_and_closes_sessions_1001() {
    let up = signaling("stable").await;
    let p = proxy(ECHO, &[up.local_addr]).await;
    let mut c = ws(p.listen, "/ws").await;
    assert_eq!(whoami(&mut c).await["server"], "stable");
    assert_eq!(admin_get(&p, "/readyz").await.0, 200);
    let shared = p.shared.clone();
    let listen = p.listen;
    let admin = p.admin.unwrap();
    let drained = tokio::spawn(p.drain());
    assert_eq!(recv_close(&mut c).await.0, 1001);
    assert!(shared.is_draining());
    // The admin listener may already be gone if the drain finished; when it answers, it says 503.
    if tokio::net::TcpStream::connect(admin).await.is_ok() {
        let (status, _, _) = http(admin, "GET", "/readyz", &[], "").await;
        assert!(status == 503 || status == 0, "readyz {status}");
    }
    within(drained).await.unwrap();
    assert!(
        tokio::net::TcpStream::connect(listen).await.is_err(),
        "listener still open"
    );
}

#[tokio::test]
async fn subprotocols_cookies_and_authorization_pass_and_forwarding_headers_are_set() {
    let up = signaling("stable").await;
    let p = proxy(ECHO, &[up.local_addr]).await;
    let (mut c, resp) = connect(
        p.listen,
        "/ws?room=r1",
        &[
            ("sec-websocket-protocol", "sig.v9, sig.v1"),
            ("cookie", "session=abc"),
            ("authorization", "Bearer t0k"),
            (
                "traceparent",
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            ),
        ],
    )
    .await
    .unwrap();
    // The upstream chose sig.v1 (the first offer it knows); the client sees that choice.
    assert_eq!(resp.headers()["sec-websocket-protocol"], "sig.v1");
    let w = whoami(&mut c).await;
    let h = &w["headers"];
    assert_eq!(h["cookie"], "session=abc");
    assert_eq!(h["authorization"], "Bearer t0k");
    assert_eq!(h["x-forwarded-for"], "127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(
        h["traceparent"],
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    );
    assert_eq!(w["path"], "/ws?room=r1");
    // Without a traceparent, sigmesh starts one.
    let mut c = ws(p.listen, "/ws").await;
    let tp = whoami(&mut c).await["headers"]["traceparent"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(tp.len(), 55, "{tp}");
}

#[tokio::test]
async fn slow_loris_does_not_hold_a_connection() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let up = signaling("stable").await;
    let p = proxy(ECHO, &[up.local_addr]).await;
    let mut s = tokio::net::TcpStream::connect(p.listen).await.unwrap();
    s.write_all(b"GET /ws HTTP/1.1\r\nhost: x\r\n")
        .await
        .unwrap();
    // The header read timeout (500 ms in tests) closes the connection.
    let mut buf = Vec::new();
    within(s.read_to_end(&mut buf)).await.unwrap();
    let text = String::from_utf8_lossy(&buf);
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 408"),
        "{text}"
    );
}

#[tokio::test]
async fn room_bucket_is_shared_by_every_session_of_the_room() {
    let (up, _seen) = scripted_upstream().await;
    let p = proxy(
        r#"
routes:
  - name: rooms
    match: { path_prefix: /ws }
    websocket: { signaling: { type: /type, room: /room } }
    limits: { rooms: { rate: 1, per: 60s, burst: 4 } }
    upstreams: [{ name: up, url: "ws://{A}/ws" }]
"#,
        &[up],
    )
    .await;
    let mut a = ws(p.listen, "/ws").await;
    let mut b = ws(p.listen, "/ws").await;
    let mut other = ws(p.listen, "/ws").await;
    let msg = |room: &str, i: usize| format!(r#"{{"type":"candidate","room":"{room}","seq":{i}}}"#);
    // Four tokens for room r1, whichever session spends them.
    for i in 0..2 {
        send(&mut a, &msg("r1", i)).await;
        assert_eq!(recv_text(&mut a).await, msg("r1", i));
        send(&mut b, &msg("r1", i)).await;
        assert_eq!(recv_text(&mut b).await, msg("r1", i));
    }
    send(&mut a, &msg("r1", 9)).await;
    send(&mut b, &msg("r1", 9)).await;
    // Another room has its own bucket; the marker's echo proves the r1 messages were dropped
    // rather than delayed (each session's messages stay in order).
    send(&mut other, &msg("r2", 0)).await;
    assert_eq!(recv_text(&mut other).await, msg("r2", 0));
    eventually(|| async {
        sessions(&p)
            .await
            .iter()
            .map(|s| s["dropped"].as_u64().unwrap())
            .sum::<u64>()
            == 2
    })
    .await;
    let m = metrics(&p).await;
    assert_eq!(
        metric(
            &m,
            r#"sigmesh_rate_limited_total{route="rooms",limit="rooms"}"#
        ),
        Some(2.0)
    );
    let all = sessions(&p).await;
    assert_eq!(all.iter().filter(|s| s["room"] == "r1").count(), 2);
}
