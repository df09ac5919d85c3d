//! Test harness: real sockets on 127.0.0.1, real WebSocket peers, bounded waits.
#![allow(dead_code, clippy::unwrap_used)]

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use sigmesh::app::Proxy;
use sigmesh::state::Tuning;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub mod pki;
pub mod turn;

/// The npm peers' `node_modules` (scripts/install/node-peers.sh), checked to hold `package`;
/// the test fails without it.
pub fn node_modules(package: &str) -> String {
    let dir = std::env::var("SIGMESH_NODE_PEERS").unwrap_or_else(|_| {
        format!(
            "{}/.local/share/sigmesh/node",
            std::env::var("HOME").unwrap_or_default()
        )
    });
    let modules = format!("{dir}/node_modules");
    assert!(
        std::path::Path::new(&format!("{modules}/{package}")).exists(),
        "{modules}/{package} is missing: run scripts/install/node-peers.sh"
    );
    modules
}

/// A Node server from `source` (run as `node -e SOURCE -- ARGS`, with the npm peers of
/// `package`) that prints `port N` first; killed on drop.
pub async fn node_server(
    source: &str,
    args: &[&str],
    package: &str,
) -> (tokio::process::Child, u16) {
    let mut child = tokio::process::Command::new("node")
        .args(["-e", source, "--"])
        .args(args)
        .env("NODE_PATH", node_modules(package))
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(out));
    let first = within(lines.next_line()).await.unwrap().unwrap();
    let port = first.strip_prefix("port ").unwrap().parse().unwrap();
    (child, port)
}

/// The Python with `websockets` (scripts/install/python-peers.sh); the test fails without it.
pub fn python() -> String {
    let default = format!(
        "{}/.local/share/sigmesh/py/bin/python",
        std::env::var("HOME").unwrap_or_default()
    );
    let py = std::env::var("SIGMESH_PYTHON").unwrap_or(default);
    assert!(
        std::path::Path::new(&py).exists(),
        "{py} is missing: run scripts/install/python-peers.sh (Python `websockets`)"
    );
    py
}

pub type Client = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Every network wait in the tests is bounded by this.
pub const WAIT: Duration = Duration::from_secs(10);

pub async fn within<F: Future>(f: F) -> F::Output {
    tokio::time::timeout(WAIT, f).await.expect("timed out")
}

/// Polls `check` every 20 ms until it is true, for at most [`WAIT`].
pub async fn eventually<F: FnMut() -> Fut, Fut: Future<Output = bool>>(mut check: F) {
    within(async {
        while !check().await {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
}

pub fn fast_tuning() -> Tuning {
    Tuning {
        header_read_timeout: Duration::from_millis(500),
        upstream_handshake_timeout: Duration::from_millis(500),
        first_message_timeout: Duration::from_secs(2),
        close_grace: Duration::from_millis(500),
        write_timeout: Duration::from_secs(1),
        tls_handshake_timeout: Duration::from_secs(2),
    }
}

/// A signaling-server upstream named `name`.
pub async fn signaling(name: &str) -> sigmesh_signaling_server::ServerHandle {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    sigmesh_signaling_server::serve(
        l,
        sigmesh_signaling_server::ServerOptions {
            name: name.into(),
            subprotocols: vec!["sig.v2".into(), "sig.v1".into()],
            ..Default::default()
        },
    )
    .await
    .unwrap()
}

/// Starts a proxy on ephemeral ports from a YAML config; `{A}`, `{B}`, ... in the text are
/// replaced by `addrs` in order.
pub async fn proxy(yaml: &str, addrs: &[SocketAddr]) -> Proxy {
    let mut text = yaml.to_owned();
    for (i, a) in addrs.iter().enumerate() {
        let key = format!("{{{}}}", (b'A' + i as u8) as char);
        text = text.replace(&key, &a.to_string());
    }
    let text = format!("listen: 127.0.0.1:0\nadmin: 127.0.0.1:0\n{text}");
    let config =
        sigmesh_core::config::load(&text).unwrap_or_else(|e| panic!("test config: {e}\n{text}"));
    Proxy::start_with(config, None, fast_tuning())
        .await
        .unwrap()
}

/// Opens a WebSocket through the proxy with extra headers.
pub async fn connect(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<(Client, http::Response<Option<Vec<u8>>>), tungstenite::Error> {
    let mut req = format!("ws://{addr}{path}").into_client_request().unwrap();
    for (k, v) in headers {
        req.headers_mut().append(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    within(tokio_tungstenite::connect_async(req)).await
}

pub async fn ws(addr: SocketAddr, path: &str) -> Client {
    connect(addr, path, &[])
        .await
        .expect("websocket handshake")
        .0
}

/// The HTTP status a refused handshake got.
pub async fn refused_status(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, http::HeaderMap) {
    match connect(addr, path, headers).await {
        Err(tungstenite::Error::Http(resp)) => (resp.status().as_u16(), resp.headers().clone()),
        Ok(_) => panic!("handshake succeeded"),
        Err(e) => panic!("unexpected error: {e}"),
    }
}

pub async fn send(c: &mut Client, text: &str) {
    within(c.send(Message::text(text))).await.unwrap();
}

/// The next text message, skipping pings/pongs.
pub async fn recv_text(c: &mut Client) -> String {
    loop {
        match within(c.next()).await {
            Some(Ok(Message::Text(t))) => return t.to_string(),
            Some(Ok(
                Message::Binary(_) | Message::Ping(_) | Message::Pong(_) | Message::Frame(_),
            )) => continue,
            other => panic!("expected text, got {other:?}"),
        }
    }
}

pub async fn recv_json(c: &mut Client) -> serde_json::Value {
    serde_json::from_str(&recv_text(c).await).unwrap()
}

/// Reads until the close frame; returns its code and reason.
pub async fn recv_close(c: &mut Client) -> (u16, String) {
    loop {
        match within(c.next()).await {
            Some(Ok(Message::Close(Some(f)))) => return (f.code.into(), f.reason.to_string()),
            Some(Ok(Message::Close(None))) => return (1005, String::new()),
            Some(Ok(_)) => continue,
            other => panic!("expected close, got {other:?}"),
        }
    }
}

/// Asks the signaling server who it is and what it saw.
pub async fn whoami(c: &mut Client) -> serde_json::Value {
    send(c, r#"{"type":"whoami"}"#).await;
    loop {
        let v = recv_json(c).await;
        if v["type"] == "whoami" {
            return v;
        }
    }
}

/// A minimal HTTP/1.1 request; returns status, headers (lower-case names) and body.
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, Vec<(String, String)>, String) {
    within(async {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let mut req = format!("{method} {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\ncontent-length: {}\r\n", body.len());
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        req.push_str(body);
        s.write_all(req.as_bytes()).await.unwrap();
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.unwrap();
        let text = String::from_utf8_lossy(&buf).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let mut lines = head.lines();
        let status = lines.next().and_then(|l| l.split_whitespace().nth(1)).and_then(|c| c.parse().ok()).unwrap_or(0);
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        let body = if head.to_ascii_lowercase().contains("transfer-encoding: chunked") { dechunk(body) } else { body.to_owned() };
        (status, headers, body)
    })
    .await
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

pub fn header<'a>(h: &'a [(String, String)], name: &str) -> Option<&'a str> {
    h.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

pub async fn admin_get(p: &Proxy, path: &str) -> (u16, String) {
    let (s, _, b) = http(p.admin.unwrap(), "GET", path, &[], "").await;
    (s, b)
}

pub async fn sessions(p: &Proxy) -> Vec<serde_json::Value> {
    let (_, body) = admin_get(p, "/sessions").await;
    serde_json::from_str(&body).unwrap()
}

pub async fn metrics(p: &Proxy) -> String {
    admin_get(p, "/metrics").await.1
}

/// The value of one metric line (`name{labels}`) in Prometheus text, if present.
pub fn metric(text: &str, name_and_labels: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(name_and_labels) && l[name_and_labels.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// A route's rollout as `GET /routes/ROUTE/rollout` shows it (200 asserted).
pub async fn rollout_state(p: &Proxy, route: &str) -> serde_json::Value {
    let (status, body) = admin_get(p, &format!("/routes/{route}/rollout")).await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// One session on `/ws?room=ROOM` (the example signaling server behind it): which upstream served
/// it. Closed by the client (1000), or, when it is the canary's and `canary_close` is set, by the
/// upstream with that code (asserted).
pub async fn churn(p: &Proxy, room: &str, canary_close: Option<u16>) -> String {
    let mut c = ws(p.listen, &format!("/ws?room={room}")).await;
    let who = whoami(&mut c).await;
    let server = who["server"].as_str().unwrap().to_owned();
    match canary_close {
        Some(code) if server == "canary" => {
            send(&mut c, &format!(r#"{{"type":"close","code":{code}}}"#)).await;
            let (got, _) = recv_close(&mut c).await;
            assert_eq!(got, code);
        }
        _ => {
            c.close(None).await.unwrap();
            let _ = recv_close(&mut c).await;
        }
    }
    server
}

/// A call set up on `/ws?room=ROOM`: peers `from.0` and `from.1` join, the first offers `sdp.0`
/// and the second answers `sdp.1` (each relayed, asserted). The two sessions stay open.
pub async fn call(
    listen: SocketAddr,
    room: &str,
    from: (&str, &str),
    sdp: (&str, &str),
) -> (Client, Client) {
    let path = format!("/ws?room={room}");
    let mut a = ws(listen, &path).await;
    let mut b = ws(listen, &path).await;
    let join = |who: &str| format!(r#"{{"type":"join","room":"{room}","from":"{who}"}}"#);
    send(&mut a, &join(from.0)).await;
    let _ = recv_json(&mut a).await;
    send(&mut b, &join(from.1)).await;
    let _ = recv_json(&mut b).await;
    let _ = recv_json(&mut a).await; // peer-joined
    send(
        &mut a,
        &format!(
            r#"{{"type":"offer","room":"{room}","from":"{}","sdp":"{}"}}"#,
            from.0, sdp.0
        ),
    )
    .await;
    assert_eq!(recv_json(&mut b).await["type"], "offer");
    send(
        &mut b,
        &format!(
            r#"{{"type":"answer","room":"{room}","from":"{}","sdp":"{}"}}"#,
            from.1, sdp.1
        ),
    )
    .await;
    assert_eq!(recv_json(&mut a).await["type"], "answer");
    (a, b)
}

/// What a scripted upstream saw.
#[derive(Debug)]
pub enum Seen {
    Text(String),
    Close(Option<(u16, String)>),
    Gone,
}

/// A scripted WebSocket upstream: echoes text; `close:CODE:REASON` closes with that frame;
/// `reset` drops the TCP connection without a close frame; `big:N` sends an N-byte message;
/// `flood` sends 16 KiB messages until a send fails. Reports what it receives.
pub async fn scripted_upstream() -> (SocketAddr, mpsc::UnboundedReceiver<Seen>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(s).await else {
                    return;
                };
                while let Some(m) = ws.next().await {
                    match m {
                        Ok(Message::Text(t)) => {
                            let t = t.to_string();
                            let _ = tx.send(Seen::Text(t.clone()));
                            if let Some(rest) = t.strip_prefix("close:") {
                                let (code, reason) = rest.split_once(':').unwrap_or((rest, ""));
                                let frame = CloseFrame {
                                    code: code.parse::<u16>().unwrap().into(),
                                    reason: reason.to_owned().into(),
                                };
                                let _ = ws.send(Message::Close(Some(frame))).await;
                            } else if t == "reset" {
                                return; // drop the socket: no close frame
                            } else if t == "flood" {
                                let chunk = "f".repeat(16 << 10);
                                while ws.send(Message::text(chunk.clone())).await.is_ok() {}
                                let _ = tx.send(Seen::Gone);
                                return;
                            } else if let Some(n) = t.strip_prefix("big:") {
                                let _ =
                                    ws.send(Message::text("x".repeat(n.parse().unwrap()))).await;
                            } else {
                                let _ = ws.send(Message::text(t)).await;
                            }
                        }
                        Ok(Message::Close(f)) => {
                            let _ = tx.send(Seen::Close(
                                f.map(|f| (f.code.into(), f.reason.to_string())),
                            ));
                        }
                        Ok(_) => {}
                        Err(_) => break,
                    }
                }
                let _ = tx.send(Seen::Gone);
            });
        }
    });
    (addr, rx)
}

/// The next close the scripted upstream saw.
pub async fn upstream_close(rx: &mut mpsc::UnboundedReceiver<Seen>) -> Option<(u16, String)> {
    loop {
        match within(rx.recv()).await {
            Some(Seen::Close(f)) => return f,
            Some(Seen::Gone) | None => panic!("upstream gone without a close frame"),
            Some(Seen::Text(_)) => continue,
        }
    }
}
