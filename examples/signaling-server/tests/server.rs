//! End-to-end tests: a real server on 127.0.0.1:0 and real tokio-tungstenite clients.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use sigmesh_signaling_server::{DEMO_PAGE, ServerHandle, ServerOptions, serve};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Bytes, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, connect_async};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

const WAIT: Duration = Duration::from_secs(5);

async fn start(opts: ServerOptions) -> ServerHandle {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    serve(listener, opts).await.unwrap()
}

async fn start_named(name: &str) -> ServerHandle {
    start(ServerOptions::named(name)).await
}

async fn connect(server: &ServerHandle, path: &str) -> Ws {
    let url = format!("ws://{}{}", server.local_addr, path);
    let (ws, _resp) = timeout(WAIT, connect_async(url))
        .await
        .expect("connect timed out")
        .unwrap();
    ws
}

async fn send_json(ws: &mut Ws, v: Value) {
    timeout(WAIT, ws.send(Message::text(v.to_string())))
        .await
        .expect("send timed out")
        .unwrap();
}

/// The next text message, parsed.
async fn recv_json(ws: &mut Ws) -> Value {
    loop {
        let msg = timeout(WAIT, ws.next())
            .await
            .expect("receive timed out")
            .expect("stream ended")
            .unwrap();
        match msg {
            Message::Text(t) => return serde_json::from_str(t.as_str()).unwrap(),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("expected a text message, got {other:?}"),
        }
    }
}

/// Sends an echo and waits for it: everything queued for `ws` before it has arrived by then.
async fn barrier(ws: &mut Ws) -> Vec<Value> {
    let token = format!("barrier-{}", rand_token());
    send_json(ws, json!({"type": "echo", "token": token})).await;
    let mut before = Vec::new();
    loop {
        let v = recv_json(ws).await;
        if v["type"] == "echo" && v["token"] == token.as_str() {
            return before;
        }
        before.push(v);
    }
}

fn rand_token() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

async fn join(ws: &mut Ws, room: &str, peer: &str) -> Value {
    send_json(ws, json!({"type": "join", "room": room, "from": peer})).await;
    let welcome = recv_json(ws).await;
    assert_eq!(welcome["type"], "welcome", "{welcome}");
    welcome
}

/// Reads until the close frame, then drives the stream to its end (which sends our close
/// reply); returns the code and reason.
async fn expect_close(ws: &mut Ws) -> (CloseCode, String) {
    let frame = loop {
        let msg = timeout(WAIT, ws.next()).await.expect("close timed out");
        match msg {
            Some(Ok(Message::Close(Some(frame)))) => break (frame.code, frame.reason.to_string()),
            Some(Ok(Message::Close(None))) => panic!("close without a code"),
            Some(Ok(_)) => continue,
            Some(Err(e)) => panic!("error before close: {e}"),
            None => panic!("stream ended without a close frame"),
        }
    };
    loop {
        match timeout(WAIT, ws.next())
            .await
            .expect("stream did not end after close")
        {
            None | Some(Err(_)) => return frame,
            Some(Ok(_)) => continue,
        }
    }
}

async fn http_get(server: &ServerHandle, path: &str) -> String {
    let mut tcp = timeout(WAIT, TcpStream::connect(server.local_addr))
        .await
        .unwrap()
        .unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nhost: test\r\n\r\n");
    tcp.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    timeout(WAIT, tcp.read_to_end(&mut out))
        .await
        .unwrap()
        .unwrap();
    String::from_utf8(out).unwrap()
}

#[tokio::test]
async fn join_welcome_and_peer_joined() {
    let server = start_named("stable").await;
    let mut alice = connect(&server, "/ws").await;
    let mut bob = connect(&server, "/ws").await;

    let w = join(&mut alice, "r1", "alice").await;
    assert_eq!(
        w,
        json!({"type": "welcome", "room": "r1", "peer": "alice", "server": "stable", "peers": []})
    );

    let w = join(&mut bob, "r1", "bob").await;
    assert_eq!(w["peers"], json!(["alice"]));
    assert_eq!(w["server"], "stable");

    let joined = recv_json(&mut alice).await;
    assert_eq!(
        joined,
        json!({"type": "peer-joined", "room": "r1", "peer": "bob", "server": "stable"})
    );

    // Leaving tells the others.
    send_json(&mut bob, json!({"type": "leave"})).await;
    let left = recv_json(&mut alice).await;
    assert_eq!(
        left,
        json!({"type": "peer-left", "room": "r1", "peer": "bob", "server": "stable"})
    );
    server.shutdown();
}

#[tokio::test]
async fn query_join_and_disconnect_sends_peer_left() {
    let server = start_named("canary").await;
    let mut alice = connect(&server, "/ws?room=q%20room&peer=alice").await;
    let w = recv_json(&mut alice).await;
    assert_eq!(w["type"], "welcome");
    assert_eq!(w["room"], "q room");
    assert_eq!(w["peer"], "alice");
    assert_eq!(w["server"], "canary");

    // A join message for the same room and peer only repeats the welcome.
    let again = join(&mut alice, "q room", "alice").await;
    assert_eq!(again["peers"], json!([]));

    let mut bob = connect(&server, "/ws?room=q%20room&peer=bob").await;
    let w = recv_json(&mut bob).await;
    assert_eq!(w["peers"], json!(["alice"]));
    assert_eq!(recv_json(&mut alice).await["type"], "peer-joined");

    drop(bob);
    let left = recv_json(&mut alice).await;
    assert_eq!(left["type"], "peer-left");
    assert_eq!(left["peer"], "bob");
    server.shutdown();
}

#[tokio::test]
async fn offer_is_relayed_to_the_other_peers_only() {
    let server = start_named("stable").await;
    let mut alice = connect(&server, "/ws").await;
    let mut bob = connect(&server, "/ws").await;
    let mut carol = connect(&server, "/ws").await;
    join(&mut alice, "r", "alice").await;
    join(&mut bob, "r", "bob").await;
    join(&mut carol, "other", "carol").await;
    assert_eq!(recv_json(&mut alice).await["type"], "peer-joined");

    let offer = json!({"type": "offer", "room": "r", "from": "alice", "sdp": "v=0\r\n..."});
    send_json(&mut alice, offer.clone()).await;
    assert_eq!(recv_json(&mut bob).await, offer, "relayed verbatim");

    // Nothing for the sender, nothing for the other room.
    assert!(barrier(&mut alice).await.is_empty());
    assert!(barrier(&mut carol).await.is_empty());

    // Without a room field, the joined room is used.
    let answer = json!({"type": "answer", "from": "bob", "sdp": "v=0"});
    send_json(&mut bob, answer.clone()).await;
    assert_eq!(recv_json(&mut alice).await, answer);
    server.shutdown();
}

#[tokio::test]
async fn to_targets_one_peer() {
    let server = start_named("stable").await;
    let mut a = connect(&server, "/ws").await;
    let mut b = connect(&server, "/ws").await;
    let mut c = connect(&server, "/ws").await;
    join(&mut a, "r", "a").await;
    join(&mut b, "r", "b").await;
    join(&mut c, "r", "c").await;
    barrier(&mut a).await;
    barrier(&mut b).await;

    let cand = json!({"type": "candidate", "room": "r", "from": "a", "to": "c",
                      "candidate": {"candidate": "candidate:1 1 udp 2122260223 127.0.0.1 50000 typ host", "sdpMid": "0"}});
    send_json(&mut a, cand.clone()).await;
    assert_eq!(recv_json(&mut c).await, cand);
    assert!(
        barrier(&mut b).await.is_empty(),
        "b must not get a message addressed to c"
    );

    // An unknown target is an error for the sender.
    send_json(
        &mut a,
        json!({"type": "offer", "room": "r", "to": "nobody"}),
    )
    .await;
    let err = recv_json(&mut a).await;
    assert_eq!(err["type"], "error");
    server.shutdown();
}

#[tokio::test]
async fn echo_text_and_binary() {
    let server = start_named("stable").await;
    let mut ws = connect(&server, "/").await;
    let text = r#"{"type":"echo","payload":"hello","n":1}"#;
    ws.send(Message::text(text)).await.unwrap();
    let got = timeout(WAIT, ws.next()).await.unwrap().unwrap().unwrap();
    assert_eq!(got, Message::text(text), "the same text, byte for byte");

    let bin = Bytes::from_static(&[0, 1, 2, 255]);
    ws.send(Message::Binary(bin.clone())).await.unwrap();
    let got = timeout(WAIT, ws.next()).await.unwrap().unwrap().unwrap();
    assert_eq!(got, Message::Binary(bin));

    // Pings are answered.
    ws.send(Message::Ping(Bytes::from_static(b"p")))
        .await
        .unwrap();
    let got = timeout(WAIT, ws.next()).await.unwrap().unwrap().unwrap();
    assert_eq!(got, Message::Pong(Bytes::from_static(b"p")));
    server.shutdown();
}

#[tokio::test]
async fn whoami_reports_headers_path_and_subprotocol() {
    let server = start(ServerOptions {
        name: "canary".into(),
        subprotocols: vec!["sigmesh.v2".into(), "sigmesh.v1".into()],
        ..Default::default()
    })
    .await;
    let mut req = format!("ws://{}/ws?room=x&peer=y", server.local_addr)
        .into_client_request()
        .unwrap();
    let h = req.headers_mut();
    h.insert("X-Custom-Thing", HeaderValue::from_static("42"));
    h.insert("cookie", HeaderValue::from_static("a=1; b=2"));
    h.insert("authorization", HeaderValue::from_static("Bearer t0k"));
    h.insert(
        "sec-websocket-protocol",
        HeaderValue::from_static("chat, sigmesh.v1, sigmesh.v2"),
    );
    let (mut ws, resp) = timeout(WAIT, connect_async(req)).await.unwrap().unwrap();
    assert_eq!(
        resp.headers()["sec-websocket-protocol"],
        "sigmesh.v1",
        "first offered that we support"
    );
    assert_eq!(resp.headers()["x-signaling-server"], "canary");
    assert_eq!(recv_json(&mut ws).await["type"], "welcome");

    send_json(&mut ws, json!({"type": "whoami"})).await;
    let who = recv_json(&mut ws).await;
    assert_eq!(who["type"], "whoami");
    assert_eq!(who["server"], "canary");
    assert_eq!(who["path"], "/ws?room=x&peer=y");
    assert_eq!(who["subprotocol"], "sigmesh.v1");
    assert_eq!(who["headers"]["x-custom-thing"], "42");
    assert_eq!(who["headers"]["cookie"], "a=1; b=2");
    assert_eq!(who["headers"]["authorization"], "Bearer t0k");
    assert_eq!(who["room"], "x");
    server.shutdown();
}

#[tokio::test]
async fn default_options_accept_the_first_offered_subprotocol() {
    let server = start(ServerOptions::default()).await;
    let mut req = format!("ws://{}/ws", server.local_addr)
        .into_client_request()
        .unwrap();
    req.headers_mut().insert(
        "sec-websocket-protocol",
        HeaderValue::from_static("chat, superchat"),
    );
    let (mut ws, resp) = timeout(WAIT, connect_async(req)).await.unwrap().unwrap();
    assert_eq!(resp.headers()["sec-websocket-protocol"], "chat");
    send_json(&mut ws, json!({"type": "whoami"})).await;
    let who = recv_json(&mut ws).await;
    assert_eq!(who["server"], "signaling");
    assert_eq!(who["subprotocol"], "chat");

    // No offer, no subprotocol.
    let mut plain = connect(&server, "/ws").await;
    send_json(&mut plain, json!({"type": "whoami"})).await;
    assert_eq!(recv_json(&mut plain).await["subprotocol"], Value::Null);
    server.shutdown();
}

#[tokio::test]
async fn close_message_closes_with_that_code_and_reason() {
    let server = start_named("stable").await;
    let mut ws = connect(&server, "/ws").await;
    send_json(
        &mut ws,
        json!({"type": "close", "code": 4000, "reason": "bye"}),
    )
    .await;
    let (code, reason) = expect_close(&mut ws).await;
    assert_eq!(u16::from(code), 4000);
    assert_eq!(reason, "bye");

    // A code that may not be sent is an error, not a close.
    let mut ws = connect(&server, "/ws").await;
    send_json(&mut ws, json!({"type": "close", "code": 1005})).await;
    assert_eq!(recv_json(&mut ws).await["type"], "error");
    server.shutdown();
}

#[tokio::test]
async fn malformed_json_gets_an_error_and_the_connection_stays_usable() {
    let server = start_named("stable").await;
    let mut ws = connect(&server, "/ws").await;
    for bad in [
        "{not json",
        "[1,2]",
        r#"{"no":"type"}"#,
        r#"{"type":"offer"}"#,
        "",
    ] {
        ws.send(Message::text(bad)).await.unwrap();
        let err = recv_json(&mut ws).await;
        assert_eq!(err["type"], "error", "for {bad:?}: {err}");
        assert!(err["reason"].as_str().is_some_and(|r| !r.is_empty()));
    }
    let w = join(&mut ws, "r", "me").await;
    assert_eq!(w["peer"], "me");
    assert!(barrier(&mut ws).await.is_empty());
    server.shutdown();
}

#[tokio::test]
async fn plain_http_serves_the_page_health_and_404() {
    let server = start_named("canary").await;

    let resp = http_get(&server, "/").await;
    assert!(resp.starts_with("HTTP/1.1 200 "), "{resp}");
    let lower = resp.to_ascii_lowercase();
    assert!(lower.contains("content-type: text/html"));
    assert!(lower.contains("x-signaling-server: canary"));
    assert!(resp.ends_with(DEMO_PAGE));
    assert!(DEMO_PAGE.contains("RTCPeerConnection"));

    let resp = http_get(&server, "/index.html?room=abc").await;
    assert!(resp.starts_with("HTTP/1.1 200 "), "{resp}");

    let resp = http_get(&server, "/healthz").await;
    assert!(resp.starts_with("HTTP/1.1 200 "), "{resp}");
    assert!(resp.ends_with("\r\n\r\nok"));

    let resp = http_get(&server, "/nope").await;
    assert!(resp.starts_with("HTTP/1.1 404 "), "{resp}");
    assert!(
        resp.to_ascii_lowercase()
            .contains("x-signaling-server: canary")
    );
    server.shutdown();
}

#[tokio::test]
async fn oversized_request_head_is_refused() {
    let server = start_named("stable").await;
    let mut tcp = TcpStream::connect(server.local_addr).await.unwrap();
    let big = format!("GET / HTTP/1.1\r\nx-big: {}\r\n\r\n", "a".repeat(10_000));
    // The server may answer and close before reading everything: ignore write errors.
    let _ = tcp.write_all(big.as_bytes()).await;
    let mut out = Vec::new();
    let _ = timeout(WAIT, tcp.read_to_end(&mut out)).await.unwrap();
    assert!(String::from_utf8_lossy(&out).starts_with("HTTP/1.1 431 "));
    server.shutdown();
}

#[tokio::test]
async fn shutdown_closes_clients_with_1001_and_stops_accepting() {
    let server = start_named("stable").await;
    let mut a = connect(&server, "/ws").await;
    let mut b = connect(&server, "/ws").await;
    join(&mut a, "r", "a").await;
    join(&mut b, "r", "b").await;

    server.shutdown();
    let (code, _) = expect_close(&mut a).await;
    assert_eq!(code, CloseCode::Away);
    let (code, _) = expect_close(&mut b).await;
    assert_eq!(code, CloseCode::Away);

    // Every task ends once the clients have answered the close.
    timeout(WAIT, server.closed())
        .await
        .expect("tasks did not end");

    // New connections are refused.
    let url = format!("ws://{}/ws", server.local_addr);
    let refused = timeout(WAIT, connect_async(url)).await.unwrap();
    assert!(refused.is_err());
}

#[tokio::test]
async fn shutdown_ends_even_with_a_silent_client() {
    let server = start_named("stable").await;
    // A TCP client that never sends its request head.
    let _idle = TcpStream::connect(server.local_addr).await.unwrap();
    // A WebSocket client that never reads, so never answers the close.
    let _deaf = connect(&server, "/ws").await;
    server.shutdown();
    timeout(Duration::from_secs(10), server.closed())
        .await
        .expect("tasks did not end");
}

#[tokio::test]
async fn full_queue_drops_and_counts() {
    let server = start_named("stable").await;
    let mut sender = connect(&server, "/ws").await;
    // A peer that never reads: its queue (256) and the socket buffers fill up.
    let mut deaf = connect(&server, "/ws").await;
    join(&mut deaf, "r", "deaf").await;
    join(&mut sender, "r", "sender").await;

    let payload = "x".repeat(16 * 1024);
    let mut sent = 0u64;
    // 4,000 × 16 KiB is far more than the queue and any socket buffer can hold.
    while sent < 4_000 && server.dropped_messages() == 0 {
        let msg = json!({"type": "offer", "room": "r", "sdp": payload});
        send_json(&mut sender, msg).await;
        sent += 1;
        if sent.is_multiple_of(64) {
            barrier(&mut sender).await;
        }
    }
    barrier(&mut sender).await;
    assert!(
        server.dropped_messages() > 0,
        "sent {sent}, nothing dropped"
    );
    server.shutdown();
    // The reading client gets its 1001 and answers it; the deaf one is cut off.
    assert_eq!(expect_close(&mut sender).await.0, CloseCode::Away);
    timeout(Duration::from_secs(10), server.closed())
        .await
        .expect("tasks did not end");
}
