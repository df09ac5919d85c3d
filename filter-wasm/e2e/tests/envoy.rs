//! The sigmesh Wasm filter in a real Envoy 1.40 (`scripts/install/envoy.sh`), two worker
//! threads, real signaling upstreams and real clients on 127.0.0.1. Each test starts its own
//! Envoy from a generated bootstrap and waits only on conditions, with deadlines.

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use sigmesh_core::frame::{Direction, FrameReader, Handler, MessageInfo, ReaderConfig, frame};
use sigmesh_core::split::Splitter;
use sigmesh_filter_e2e::{Envoy, EnvoyOpts, http_request, parse_stat, upstreams};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

const WAIT: Duration = Duration::from_secs(10);

fn route(extra: Value) -> Value {
    let mut r = json!({
        "name": "signaling",
        "match": {"path_prefix": "/ws"},
        "websocket": {"max_message_bytes": 4096, "signaling": {"type": "/type", "room": "/room"}},
        "split": {"sticky": "query:room"},
        "upstreams": [{"name": "stable", "weight": 50}, {"name": "canary", "weight": 50}]
    });
    if let (Value::Object(r), Value::Object(e)) = (&mut r, extra) {
        for (k, v) in e {
            r.insert(k, v);
        }
    }
    r
}

async fn start(config: Value) -> Result<(Envoy, Vec<sigmesh_filter_e2e::Upstream>)> {
    let ups = upstreams(&["stable", "canary"]).await?;
    let e = Envoy::start(&EnvoyOpts::new(config, &ups)).await?;
    Ok((e, ups))
}

/// A WebSocket client through Envoy; `Err((status, headers))` when the upgrade is refused.
async fn connect(
    e: &Envoy,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<std::result::Result<Ws, (u16, Vec<(String, String)>)>> {
    let mut req = e.ws_url(path).into_client_request()?;
    for (k, v) in headers {
        req.headers_mut().insert(
            http::HeaderName::from_bytes(k.as_bytes())?,
            http::HeaderValue::from_str(v)?,
        );
    }
    match tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(req)).await? {
        Ok((ws, _)) => Ok(Ok(ws)),
        Err(tungstenite::Error::Http(resp)) => Ok(Err((
            resp.status().as_u16(),
            resp.headers()
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or_default().to_owned()))
                .collect(),
        ))),
        Err(err) => Err(err.into()),
    }
}

async fn ws(e: &Envoy, path: &str) -> Result<Ws> {
    match connect(e, path, &[]).await? {
        Ok(ws) => Ok(ws),
        Err((status, _)) => bail!("upgrade refused with {status}"),
    }
}

/// The next text message, or `None` at the end; fails after [`WAIT`].
async fn next_text(ws: &mut Ws) -> Result<Option<Value>> {
    loop {
        match tokio::time::timeout(WAIT, ws.next())
            .await
            .context("no message in time")?
        {
            Some(Ok(Message::Text(t))) => return Ok(Some(serde_json::from_str(t.as_str())?)),
            Some(Ok(Message::Close(_))) | None => return Ok(None),
            Some(Ok(_)) => continue,
            Some(Err(e)) => bail!("read: {e}"),
        }
    }
}

async fn whoami(ws: &mut Ws) -> Result<Value> {
    ws.send(Message::text(r#"{"type":"whoami"}"#)).await?;
    loop {
        let v = next_text(ws).await?.context("closed")?;
        if v["type"] == "whoami" {
            return Ok(v);
        }
    }
}

/// Sends `{"type":"echo","seq":N,"room":ROOM}`.
async fn echo(ws: &mut Ws, seq: u64, room: &str) -> Result<()> {
    ws.send(Message::text(
        json!({"type": "echo", "seq": seq, "room": room}).to_string(),
    ))
    .await?;
    Ok(())
}

/// Reads echoes until `until` comes back; returns every seq seen (in order).
async fn echoes_until(ws: &mut Ws, until: u64) -> Result<Vec<u64>> {
    let mut seen = Vec::new();
    loop {
        let v = next_text(ws).await?.context("closed before the echo")?;
        if let Some(s) = v["seq"].as_u64() {
            seen.push(s);
            if s == until {
                return Ok(seen);
            }
        }
    }
}

fn expected_upstream(room: &str) -> String {
    let s = Splitter::new([("stable", 50), ("canary", 50)]).expect("weights");
    let i = s.pick(None, Some(room.as_bytes()), 0).index;
    s.name(i).unwrap_or_default().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_is_core_hash_sticky_per_room_with_override() -> Result<()> {
    let (e, _ups) = start(json!({"routes": [route(json!({}))]})).await?;
    // The documented worked example: room-42 at 50/50 is canary.
    assert_eq!(expected_upstream("room-42"), "canary");
    let mut both = std::collections::BTreeSet::new();
    for i in 0..10 {
        let room = format!("room-{i}");
        let want = expected_upstream(&room);
        for _ in 0..2 {
            let mut c = ws(&e, &format!("/ws?room={room}")).await?;
            let w = whoami(&mut c).await?;
            assert_eq!(w["server"], want.as_str(), "room {room}");
            assert_eq!(w["headers"]["x-sigmesh-upstream"], want.as_str());
            both.insert(want.clone());
        }
    }
    assert_eq!(both.len(), 2, "both upstreams are used");
    // The override header wins over the room's bucket.
    for target in ["stable", "canary"] {
        let mut c = connect(&e, "/ws?room=room-42", &[("x-sigmesh-upstream", target)])
            .await?
            .map_err(|(s, _)| anyhow::anyhow!("{s}"))?;
        assert_eq!(whoami(&mut c).await?["server"], target);
    }
    // A request on no sigmesh route is left alone (Envoy's default route: the first cluster).
    let mut c = ws(&e, "/other?room=room-42").await?;
    let w = whoami(&mut c).await?;
    assert_eq!(w["server"], "stable");
    assert!(w["headers"].get("x-sigmesh-upstream").is_none());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_bucket_is_shared_by_both_workers_and_answers_429() -> Result<()> {
    let burst = 4;
    let r = route(json!({"limits": {"connections": {"rate": 1, "per": "1h", "burst": burst}}}));
    let (e, _ups) = start(json!({"routes": [r]})).await?;
    let mut open = Vec::new();
    let mut refused = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    let worker = |n: u8| {
        format!(
            "listener.127.0.0.1_{}.worker_{n}.downstream_cx_total",
            e.port
        )
    };
    // New connections until both workers have taken some (the kernel spreads them).
    for attempt in 0.. {
        match connect(&e, "/ws?room=a", &[]).await? {
            Ok(ws) => open.push(ws),
            Err(r) => refused.push(r),
        }
        let stats = e.stats().await?;
        let (w0, w1) = (
            parse_stat(&stats, &worker(0)).unwrap_or(0),
            parse_stat(&stats, &worker(1)).unwrap_or(0),
        );
        if attempt >= 8 && w0 > 0 && w1 > 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "connections never reached both workers"
        );
    }
    assert_eq!(open.len(), burst, "exactly the burst across both workers");
    for (status, headers) in &refused {
        assert_eq!(*status, 429);
        let h = |n: &str| {
            headers
                .iter()
                .find(|(k, _)| k == n)
                .map(|(_, v)| v.clone())
                .unwrap_or_default()
        };
        let retry: u64 = h("retry-after").parse()?;
        assert!((1..=3600).contains(&retry), "retry-after {retry}");
        assert_eq!(h("x-ratelimit-limit"), burst.to_string());
        assert_eq!(h("x-ratelimit-remaining"), "0");
        assert_eq!(h("x-ratelimit-reset"), retry.to_string());
    }
    e.wait_stat(
        "wasmcustom.sigmesh.rate_limited_total.route.signaling.limit.connections",
        WAIT,
        |v| v == refused.len() as u64,
    )
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_bucket_cuts_whole_frames_and_the_stream_stays_valid() -> Result<()> {
    let r = route(json!({
        "websocket": {"max_message_bytes": 4096},
        "limits": {"messages": {"rate": 1, "per": "1s", "burst": 3, "on_exceed": "drop"}}
    }));
    let (e, _ups) = start(json!({"routes": [r]})).await?;
    let mut c = ws(&e, "/ws?room=m").await?;
    for seq in 0..6 {
        echo(&mut c, seq, "m").await?;
    }
    let seen = probe_until_through(&mut c, 100).await?;
    assert_eq!(&seen[..3], &[0, 1, 2], "the burst went through");
    assert!(
        seen[3..].iter().all(|&s| s >= 100),
        "messages 3..5 never reached the upstream: {seen:?}"
    );
    // The connection is still a valid WebSocket both ways: later messages get through.
    let again = probe_until_through(&mut c, 200).await?;
    assert!(again.iter().all(|&s| s >= 100), "{again:?}");
    e.wait_stat(
        "wasmcustom.sigmesh.rate_limited_total.route.signaling.limit.messages",
        WAIT,
        |v| v >= 3,
    )
    .await?;
    Ok(())
}

/// Sends a probe echo (`seq` from `first` on) every 300 ms until one comes back through the
/// message bucket; returns every seq seen meanwhile. Everything sent before the probe that
/// came back has arrived by then (one ordered stream).
async fn probe_until_through(c: &mut Ws, first: u64) -> Result<Vec<u64>> {
    let mut seen = Vec::new();
    let deadline = Instant::now() + WAIT;
    let mut probe = first;
    echo(c, probe, "m").await?;
    let mut next_probe = Instant::now() + Duration::from_millis(300);
    loop {
        if Instant::now() > deadline {
            bail!("no probe got through: {seen:?}");
        }
        match tokio::time::timeout_at(next_probe.into(), next_text(c)).await {
            Ok(v) => {
                let v = v?.context("closed")?;
                if let Some(s) = v["seq"].as_u64() {
                    seen.push(s);
                    if s >= first {
                        return Ok(seen);
                    }
                }
            }
            Err(_) => {
                probe += 1;
                echo(c, probe, "m").await?;
                next_probe = Instant::now() + Duration::from_millis(300);
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_bucket_with_close_ends_the_session_with_1008() -> Result<()> {
    let r = route(json!({
        "limits": {"messages": {"rate": 1, "per": "1h", "burst": 1, "on_exceed": "close"}}
    }));
    let (e, _ups) = start(json!({"routes": [r]})).await?;
    let mut c = ws(&e, "/ws?room=c").await?;
    echo(&mut c, 1, "c").await?;
    echo(&mut c, 2, "c").await?;
    assert_eq!(echoes_until(&mut c, 1).await?, vec![1]);
    let close = close_code(&mut c).await?;
    assert_eq!(close, Some(1008));
    Ok(())
}

/// Reads until a close frame; its code.
async fn close_code(c: &mut Ws) -> Result<Option<u16>> {
    loop {
        match tokio::time::timeout(WAIT, c.next())
            .await
            .context("no close in time")?
        {
            Some(Ok(Message::Close(f))) => return Ok(f.map(|f| u16::from(f.code))),
            Some(Ok(Message::Text(t))) => {
                let v: Value = serde_json::from_str(t.as_str())?;
                assert!(v["seq"] != 2, "the message over the limit arrived: {v}");
            }
            Some(Ok(_)) => {}
            Some(Err(tungstenite::Error::Protocol(_)))
            | Some(Err(tungstenite::Error::ConnectionClosed))
            | None => return Ok(None),
            Some(Err(e)) => bail!("read: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_message_closes_1009_and_never_arrives() -> Result<()> {
    let r = route(json!({"websocket": {"max_message_bytes": 1024}}));
    let (e, _ups) = start(json!({"routes": [r]})).await?;
    let mut c = ws(&e, "/ws?room=o").await?;
    echo(&mut c, 1, "o").await?;
    assert_eq!(echoes_until(&mut c, 1).await?, vec![1]);
    let big = json!({"type": "echo", "seq": 2, "pad": "x".repeat(2000)}).to_string();
    c.send(Message::text(big)).await?;
    assert_eq!(close_code(&mut c).await?, Some(u16::from(CloseCode::Size)));
    e.wait_stat(
        "wasmcustom.sigmesh.rate_limited_total.route.signaling.limit.message_size",
        WAIT,
        |v| v == 1,
    )
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn room_bucket_is_shared_by_the_connections_of_a_room() -> Result<()> {
    let r = route(json!({"limits": {"rooms": {"rate": 1, "per": "1h", "burst": 3}}}));
    let (e, _ups) = start(json!({"routes": [r]})).await?;
    let mut a = ws(&e, "/ws?room=x").await?;
    let mut b = ws(&e, "/ws?room=y").await?;
    // The room comes from the messages (deferred until each is complete).
    echo(&mut a, 1, "r1").await?;
    echo(&mut a, 2, "r1").await?;
    assert_eq!(echoes_until(&mut a, 2).await?, vec![1, 2]);
    echo(&mut b, 3, "r1").await?;
    echo(&mut b, 4, "r1").await?; // over the room's burst: dropped
    echo(&mut b, 5, "r2").await?; // another room
    assert_eq!(echoes_until(&mut b, 5).await?, vec![3, 5]);
    e.wait_stat(
        "wasmcustom.sigmesh.rate_limited_total.route.signaling.limit.rooms",
        WAIT,
        |v| v == 1,
    )
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origin_not_allowed_is_403() -> Result<()> {
    let r = route(json!({"websocket": {"allowed_origins": ["https://app.example.com"]}}));
    let (e, _ups) = start(json!({"routes": [r]})).await?;
    let bad = connect(&e, "/ws?room=a", &[("origin", "https://evil.example.com")]).await?;
    assert_eq!(bad.err().map(|(s, _)| s), Some(403));
    let none = connect(&e, "/ws?room=a", &[]).await?;
    assert_eq!(none.err().map(|(s, _)| s), Some(403));
    let good = connect(&e, "/ws?room=a", &[("origin", "https://app.example.com")]).await?;
    assert!(good.is_ok());
    e.wait_stat(
        "wasmcustom.sigmesh.connections_total.route.signaling.upstream.none.outcome.forbidden",
        WAIT,
        |v| v == 2,
    )
    .await?;
    Ok(())
}

/// Collects the text messages of an unmasked server stream read from a raw socket.
#[derive(Default)]
struct Texts(Vec<String>);

impl Handler for Texts {
    fn decide(&mut self, _: &MessageInfo, _: Option<&str>) -> sigmesh_core::frame::MessageAction {
        sigmesh_core::frame::MessageAction::Forward
    }
    fn done(&mut self, _: &MessageInfo, text: Option<&str>, _: bool) {
        self.0.extend(text.map(str::to_owned));
    }
}

/// A raw HTTP/1.1 upgrade on a TCP socket; returns the socket after the 101.
async fn raw_upgrade(port: u16, path: &str) -> Result<TcpStream> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await?;
    s.set_nodelay(true)?;
    s.write_all(
        format!(
            "GET {path} HTTP/1.1\r\nhost: 127.0.0.1\r\nupgrade: websocket\r\nconnection: upgrade\r\n\
             sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n\r\n"
        )
        .as_bytes(),
    )
    .await?;
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        tokio::time::timeout(WAIT, s.read_exact(&mut b)).await??;
        head.push(b[0]);
    }
    let head = String::from_utf8_lossy(&head);
    if !head.starts_with("HTTP/1.1 101") {
        bail!("no upgrade: {head}");
    }
    Ok(s)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_written_byte_by_byte_are_read_across_chunks() -> Result<()> {
    // Room bucket with rooms read from the messages: every text message is held until complete.
    let r = route(json!({"limits": {"rooms": {"rate": 1, "per": "1h", "burst": 2}}}));
    let (e, _ups) = start(json!({"routes": [r]})).await?;
    let mut s = raw_upgrade(e.port, "/ws?room=bytes").await?;
    let key = [7, 1, 2, 3];
    let msg = |seq: u64, room: &str| {
        frame(
            1,
            true,
            json!({"type": "echo", "seq": seq, "room": room})
                .to_string()
                .as_bytes(),
            Some(key),
        )
    };
    // A fragmented message with a ping between its fragments, then two whole ones; r1 has two
    // tokens, so seq 3 is cut; seq 4 is in another room.
    let text = json!({"type": "echo", "seq": 1, "room": "r1"}).to_string();
    let (p1, p2) = text.as_bytes().split_at(10);
    let mut bytes = frame(1, false, p1, Some(key));
    bytes.extend(frame(9, true, b"hi", Some(key)));
    bytes.extend(frame(0, true, p2, Some(key)));
    bytes.extend(msg(2, "r1"));
    bytes.extend(msg(3, "r1"));
    bytes.extend(msg(4, "r2"));
    for b in &bytes {
        s.write_all(std::slice::from_ref(b)).await?;
        s.flush().await?;
        // Pace the writes so that Envoy reads them one by one (not a wait for a condition).
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let mut reader = FrameReader::new(ReaderConfig {
        read_text: true,
        ..ReaderConfig::new(Direction::ServerToClient)
    });
    let mut texts = Texts::default();
    let mut buf = vec![0u8; 4096];
    let deadline = Instant::now() + WAIT;
    let seqs = loop {
        let n = tokio::time::timeout(WAIT, s.read(&mut buf)).await??;
        if n == 0 {
            bail!("closed; got {:?}", texts.0);
        }
        let p = reader.push(&buf[..n], &mut texts);
        assert!(p.close.is_none(), "the server stream is valid");
        let seqs: Vec<u64> = texts
            .0
            .iter()
            .filter_map(|t| serde_json::from_str::<Value>(t).ok())
            .filter_map(|v| v["seq"].as_u64())
            .collect();
        if seqs.contains(&4) {
            break seqs;
        }
        assert!(Instant::now() < deadline);
    };
    assert_eq!(seqs, vec![1, 2, 4]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_extended_connect_is_split_and_read() -> Result<()> {
    let (e, _ups) = start(json!({"routes": [route(json!({}))]})).await?;
    let tcp = TcpStream::connect(("127.0.0.1", e.port)).await?;
    let (client, conn) = h2::client::handshake(tcp).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut client = client.ready().await?;
    let deadline = Instant::now() + WAIT;
    while !client.is_extended_connect_protocol_enabled() {
        // SETTINGS_ENABLE_CONNECT_PROTOCOL arrives with Envoy's first SETTINGS frame.
        assert!(
            Instant::now() < deadline,
            "Envoy never enabled extended CONNECT"
        );
        client = client.ready().await?;
        tokio::task::yield_now().await;
    }
    let req = http::Request::builder()
        .method("CONNECT")
        .uri(format!("http://127.0.0.1:{}/ws?room=room-42", e.port))
        .header("sec-websocket-version", "13")
        // Envoy turns the extended CONNECT into an HTTP/1.1 upgrade for the upstream, which
        // wants a key (RFC 8441 clients send none; Envoy passes this one through).
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .extension(h2::ext::Protocol::from_static("websocket"))
        .body(())?;
    let (resp, mut send) = client.send_request(req, false)?;
    let resp = tokio::time::timeout(WAIT, resp).await??;
    assert_eq!(resp.status(), 200, "{:?}", resp.headers());
    send.send_data(
        bytes::Bytes::from(frame(1, true, br#"{"type":"whoami"}"#, Some([1, 2, 3, 4]))),
        false,
    )?;
    let mut body = resp.into_body();
    let mut reader = FrameReader::new(ReaderConfig {
        read_text: true,
        ..ReaderConfig::new(Direction::ServerToClient)
    });
    let mut texts = Texts::default();
    while texts.0.is_empty() {
        let chunk = tokio::time::timeout(WAIT, body.data())
            .await?
            .context("stream ended")??;
        let _ = body.flow_control().release_capacity(chunk.len());
        reader.push(&chunk, &mut texts);
    }
    let w: Value = serde_json::from_str(&texts.0[0])?;
    assert_eq!(w["server"], "canary", "room-42 at 50/50 is canary");
    assert_eq!(w["headers"]["x-sigmesh-upstream"], "canary");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permessage_deflate_is_stripped_by_default_and_kept_on_request() -> Result<()> {
    let offer = "permessage-deflate; client_max_window_bits";
    for (mode, kept) in [(None, false), (Some("keep"), true)] {
        let mut cfg = json!({"routes": [route(json!({}))]});
        if let Some(m) = mode {
            cfg["filter"] = json!({"permessage_deflate": m});
        }
        let (e, _ups) = start(cfg).await?;
        let mut c = connect(&e, "/ws?room=d", &[("sec-websocket-extensions", offer)])
            .await?
            .map_err(|(s, _)| anyhow::anyhow!("{s}"))?;
        let w = whoami(&mut c).await?;
        let seen = w["headers"]
            .get("sec-websocket-extensions")
            .and_then(Value::as_str);
        if kept {
            // On, rewritten so that neither side keeps a context (the server here agrees to
            // no compression, so the session is read as plain).
            assert_eq!(
                seen,
                Some(
                    "permessage-deflate; client_max_window_bits; client_no_context_takeover; server_no_context_takeover"
                )
            );
        } else {
            assert_eq!(seen, None, "the offer never reaches the upstream");
        }
    }
    Ok(())
}

/// A Python `websockets` client and server (both offer and accept deflate by default): the
/// same peers as the proxy's compression test.
const DEFLATE_PEERS: &str = include_str!("../../../proxy/tests/common/deflate_peers.py");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kept_compression_is_read_through_in_envoy() -> Result<()> {
    use std::io::BufRead as _;
    let mut server = sigmesh_filter_e2e::KillOnDrop(
        std::process::Command::new(sigmesh_filter_e2e::python())
            .args(["-c", DEFLATE_PEERS, "server"])
            .stdout(std::process::Stdio::piped())
            .spawn()?,
    );
    let stdout = server.0.stdout.take().context("server stdout")?;
    // The server prints its port, then `got <len>` per message; the lines are read to the
    // end (a closed pipe would fail the server).
    let (port_tx, port_rx) = tokio::sync::oneshot::channel();
    let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::<usize>::new()));
    let sink = got.clone();
    std::thread::spawn(move || {
        let mut lines = std::io::BufReader::new(stdout).lines();
        let port = lines.next().and_then(Result::ok);
        let _ = port_tx.send(port);
        for l in lines.map_while(Result::ok) {
            if let Some(n) = l.strip_prefix("got ").and_then(|n| n.parse().ok()) {
                sink.lock().unwrap_or_else(|e| e.into_inner()).push(n);
            }
        }
    });
    let port: u16 = tokio::time::timeout(WAIT, port_rx)
        .await??
        .and_then(|l| l.strip_prefix("port ")?.parse().ok())
        .context("the server's port")?;
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
    let mut r = route(json!({}));
    r["websocket"]["max_message_bytes"] = json!(65536);
    r["websocket"]["signaling"]["peer"] = json!("/from");
    r["limits"] = json!({"rooms": {"rate": 100, "per": "1s", "burst": 100}});
    let cfg = json!({"routes": [r], "filter": {"permessage_deflate": "keep"}});
    let opts = EnvoyOpts {
        clusters: vec![("stable".into(), addr), ("canary".into(), addr)],
        ..EnvoyOpts::new(cfg, &[])
    };
    let e = Envoy::start(&opts).await?;
    let url = e.ws_url("/ws?room=zroom");
    let out = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::task::spawn_blocking(move || {
            std::process::Command::new(sigmesh_filter_e2e::python())
                .args(["-c", DEFLATE_PEERS, "client", &url])
                .output()
        }),
    )
    .await???;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Negotiated end to end through Envoy, without a context either way.
    let ext = stdout.lines().next().unwrap_or_default();
    assert!(ext.contains("permessage-deflate"), "{stdout}");
    assert!(ext.contains("client_no_context_takeover"), "{ext}");
    assert!(ext.contains("server_no_context_takeover"), "{ext}");
    assert_eq!(stdout.lines().filter(|l| l.starts_with("echo ")).count(), 5);
    // The bomb (a few KiB compressed, 2 MiB inflated) closes 1009 in the filter.
    assert!(
        stdout.contains("closed 1009 message too big once inflated"),
        "{stdout}"
    );
    // ... and it never reached the upstream (the room bucket holds messages until read).
    let got = got.lock().unwrap_or_else(|e| e.into_inner()).clone();
    assert!(got.iter().all(|n| *n < 65536), "{got:?}");
    assert!(got.len() >= 5, "{got:?}");
    // The filter read the compressed messages: their types, not `compressed`.
    let sticky = expected_upstream("zroom");
    let p = format!("wasmcustom.sigmesh.messages_total.route.signaling.upstream.{sticky}");
    e.wait_stat(&format!("{p}.direction.in.type.candidate"), WAIT, |v| {
        v == 2
    })
    .await?;
    e.wait_stat(&format!("{p}.direction.in.type.offer"), WAIT, |v| v == 1)
        .await?;
    assert_eq!(
        e.stat(&format!("{p}.direction.in.type.compressed")).await?,
        None
    );
    Ok(())
}

/// An upstream that answers an upgrade with a compression context (it may not: the offer asked
/// for none, but a buggy or hostile one does) is refused with 502: its messages could not be
/// read, so every bucket would be blind to them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_keeping_a_compression_context_is_refused() -> Result<()> {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = l.local_addr()?;
    let upstream = tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut b = [0u8; 1024];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut b).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&b[..n]),
                    }
                }
                let text = String::from_utf8_lossy(&buf);
                let key = text
                    .lines()
                    .find_map(|l| {
                        l.split_once(':')
                            .filter(|(k, _)| k.eq_ignore_ascii_case("sec-websocket-key"))
                            .map(|(_, v)| v.trim().to_owned())
                    })
                    .unwrap_or_default();
                let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
                let answer = format!(
                    "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\nSec-WebSocket-Extensions: permessage-deflate\r\n\r\n"
                );
                let _ = s.write_all(answer.as_bytes()).await;
                let _ = s.read(&mut b).await;
            });
        }
    });
    let cfg = json!({"routes": [route(json!({}))], "filter": {"permessage_deflate": "keep"}});
    let opts = EnvoyOpts {
        clusters: vec![("stable".into(), addr), ("canary".into(), addr)],
        ..EnvoyOpts::new(cfg, &[])
    };
    let e = Envoy::start(&opts).await?;
    let got = connect(
        &e,
        "/ws?room=r",
        &[("sec-websocket-extensions", "permessage-deflate")],
    )
    .await?;
    let Err((status, _)) = got else {
        bail!("the upgrade went through");
    };
    assert_eq!(status, 502);
    let sticky = expected_upstream("r");
    e.wait_stat(
        &format!(
            "wasmcustom.sigmesh.connections_total.route.signaling.upstream.{sticky}.outcome.upstream_error"
        ),
        WAIT,
        |v| v == 1,
    )
    .await?;
    assert!(e.log().contains("refusing an upgrade"), "{}", e.log());
    upstream.abort();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn turn_credentials_are_answered_locally() -> Result<()> {
    let cfg = json!({
        "routes": [route(json!({}))],
        "turn": {"secret": "s3cret", "ttl": "1h", "uris": ["turn:turn.example.com:3478?transport=udp"]}
    });
    let (e, _ups) = start(cfg).await?;
    let (status, headers, body) =
        http_request(e.port, "GET", "/turn-credentials?user=alice", &[]).await?;
    assert_eq!(status, 200, "{body}");
    assert!(
        headers
            .iter()
            .any(|(k, v)| k == "cache-control" && v == "no-store")
    );
    let v: Value = serde_json::from_str(&body)?;
    let username = v["username"].as_str().context("username")?;
    let (expiry, user) = username.split_once(':').context("expiry:user")?;
    assert_eq!(user, "alice");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let expiry: u64 = expiry.parse()?;
    assert!(expiry.abs_diff(now + 3600) <= 5);
    assert_eq!(
        v["password"],
        sigmesh_core::credentials::password("s3cret", username)
    );
    assert_eq!(v["ttl"], 3600);
    assert_eq!(v["uris"][0], "turn:turn.example.com:3478?transport=udp");
    let (status, _, body) = http_request(e.port, "GET", "/turn-credentials", &[]).await?;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("error"));
    let (status, headers, _) =
        http_request(e.port, "POST", "/turn-credentials?user=a", &[]).await?;
    assert_eq!(status, 405);
    assert!(headers.iter().any(|(k, _)| k == "allow"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_envoy_stats_with_prometheus_labels() -> Result<()> {
    let (e, _ups) = start(json!({"routes": [route(json!({}))]})).await?;
    let mut a = ws(&e, "/ws?room=room-42").await?;
    let mut b = ws(&e, "/ws?room=room-42").await?;
    a.send(Message::text(
        r#"{"type":"join","room":"room-42","from":"a"}"#,
    ))
    .await?;
    assert_eq!(
        next_text(&mut a).await?.context("welcome")?["type"],
        "welcome"
    );
    b.send(Message::text(
        r#"{"type":"join","room":"room-42","from":"b"}"#,
    ))
    .await?;
    assert_eq!(
        next_text(&mut b).await?.context("welcome")?["type"],
        "welcome"
    );
    assert_eq!(
        next_text(&mut a).await?.context("joined")?["type"],
        "peer-joined"
    );
    a.send(Message::text(
        json!({"type": "offer", "room": "room-42", "sdp": "v=0"}).to_string(),
    ))
    .await?;
    b.send(Message::text(
        json!({"type": "answer", "room": "room-42", "sdp": "v=0"}).to_string(),
    ))
    .await?;
    a.send(Message::text(
        json!({"type": "candidate", "room": "room-42",
               "candidate": "candidate:1 1 udp 2122260223 192.0.2.10 54321 typ host"})
        .to_string(),
    ))
    .await?;
    let p = "wasmcustom.sigmesh";
    let r = "route.signaling.upstream.canary";
    e.wait_stat(
        &format!("{p}.connections_total.{r}.outcome.accepted"),
        WAIT,
        |v| v == 2,
    )
    .await?;
    e.wait_stat(&format!("{p}.connections_active.{r}"), WAIT, |v| v == 2)
        .await?;
    e.wait_stat(
        &format!("{p}.messages_total.{r}.direction.in.type.offer"),
        WAIT,
        |v| v == 1,
    )
    .await?;
    e.wait_stat(
        &format!("{p}.messages_total.{r}.direction.in.type.answer"),
        WAIT,
        |v| v == 1,
    )
    .await?;
    e.wait_stat(
        &format!("{p}.messages_total.{r}.direction.out.type.offer"),
        WAIT,
        |v| v == 1,
    )
    .await?;
    e.wait_stat(
        &format!("{p}.ice_candidates_total.route.signaling.type.host.protocol.udp"),
        WAIT,
        |v| v == 1,
    )
    .await?;
    e.wait_stat(
        &format!("{p}.config_reloads_total.result.success"),
        WAIT,
        |v| v >= 1,
    )
    .await?;
    drop(a);
    drop(b);
    e.wait_stat(&format!("{p}.connections_active.{r}"), WAIT, |v| v == 0)
        .await?;
    // Envoy's stats_tags turn the folded names into Prometheus labels.
    let (_, prom) = sigmesh_filter_e2e::http_get(e.admin, "/stats/prometheus", &[]).await?;
    let line = prom
        .lines()
        .find(|l| l.starts_with("sigmesh_connections_total{"))
        .with_context(|| format!("no sigmesh_connections_total in:\n{prom}"))?;
    for label in [
        r#"route="signaling""#,
        r#"upstream="canary""#,
        r#"outcome="accepted""#,
    ] {
        assert!(line.contains(label), "{line}");
    }
    assert!(
        prom.contains("sigmesh_call_setup_ms"),
        "call setup histogram"
    );
    // Ended sessions by close class: what Flagger and Argo judge a canary by (istio/flagger.yaml).
    let closes = prom
        .lines()
        .find(|l| {
            l.starts_with("sigmesh_session_closes_total{") && l.contains(r#"upstream="canary""#)
        })
        .with_context(|| format!("no sigmesh_session_closes_total in:\n{prom}"))?;
    assert!(closes.contains(r#"route="signaling""#), "{closes}");
    assert!(closes.contains("code_class=\""), "{closes}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_plugin_configuration_is_refused_with_a_reason() -> Result<()> {
    let ups = upstreams(&["stable", "canary"]).await?;
    let bad =
        json!({"routes": [{"name": "signaling", "upstreams": [{"name": "stable", "weight": 0}]}]});
    let opts = EnvoyOpts::new(bad, &ups);
    match Envoy::start(&opts).await {
        Err(err) => {
            // Envoy refuses a bootstrap whose Wasm filter fails to configure, and says why.
            let msg = format!("{err:#}");
            eprintln!("envoy refused the configuration:\n{msg}");
            assert!(msg.contains("sigmesh: bad plugin configuration"), "{msg}");
            assert!(msg.contains("routes[0]"), "{msg}");
        }
        Ok(e) => bail!(
            "Envoy started with a bad plugin configuration:\n{}",
            e.log()
        ),
    }
    Ok(())
}
