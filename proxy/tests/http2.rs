//! WebSocket over HTTP/2 (RFC 8441): several extended CONNECTs on one TLS connection, each its
//! own session (route, split, reading, counts), closing one leaves the others; the upstream leg
//! stays HTTP/1.1.
#![allow(clippy::unwrap_used)]

mod common;

use bytes::Bytes;
use common::pki::*;
use common::*;
use http_body_util::Empty;
use hyper::upgrade::Upgraded;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

type Stream = TokioIo<Upgraded>;

/// A masked client text frame.
fn text_frame(payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0x81];
    assert!(payload.len() < 126);
    f.push(0x80 | payload.len() as u8);
    let key = [1u8, 2, 3, 4];
    f.extend_from_slice(&key);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    f
}

/// The next text message from the server (unmasked frames; control frames skipped).
async fn next_text(s: &mut Stream, buf: &mut Vec<u8>) -> Option<String> {
    loop {
        if buf.len() >= 2 {
            let op = buf[0] & 0x0f;
            let (len, head) = match buf[1] & 0x7f {
                126 if buf.len() >= 4 => (u16::from_be_bytes([buf[2], buf[3]]) as usize, 4),
                126 | 127 => (usize::MAX, 0),
                n => (n as usize, 2),
            };
            if head > 0 && buf.len() >= head + len {
                let payload = buf[head..head + len].to_vec();
                buf.drain(..head + len);
                match op {
                    0x1 => return Some(String::from_utf8(payload).unwrap()),
                    0x8 => return None,
                    _ => continue,
                }
            }
        }
        let mut chunk = [0u8; 4096];
        let n = within(s.read(&mut chunk)).await.unwrap();
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

async fn who(s: &mut Stream, buf: &mut Vec<u8>) -> serde_json::Value {
    s.write_all(&text_frame(br#"{"type":"whoami"}"#))
        .await
        .unwrap();
    loop {
        let t = next_text(s, buf).await.expect("stream closed");
        let v: serde_json::Value = serde_json::from_str(&t).unwrap();
        if v["type"] == "whoami" {
            return v;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_websockets_on_one_http2_connection() {
    let pki = Pki::new();
    pki.issue("signal", &["signal.test"]);
    let (stable, canary) = (signaling("stable").await, signaling("canary").await);
    let yaml = format!(
        "tls:\n  certificates: [{{ cert: {c}, key: {k} }}]\n\
         routes:\n  - name: sig\n    match: {{ path_prefix: /ws }}\n    websocket:\n      signaling: {{ type: /type, room: /room, peer: /from }}\n    split: {{ sticky: \"query:room\" }}\n    upstreams:\n      - {{ name: stable, url: \"ws://{{A}}/ws\", weight: 50 }}\n      - {{ name: canary, url: \"ws://{{B}}/ws\", weight: 50 }}\n",
        c = pki.path("signal.pem").display(),
        k = pki.path("signal.key").display(),
    );
    // A plain HTTP upstream for the forwarded requests.
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let web = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    |req: http::Request<hyper::body::Incoming>| async move {
                        let proto = req
                            .headers()
                            .get("x-forwarded-proto")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("")
                            .to_owned();
                        let body = format!("{:?} {} {proto}", req.version(), req.uri());
                        Ok::<_, std::convert::Infallible>(http::Response::new(
                            http_body_util::Full::new(Bytes::from(body)),
                        ))
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    let yaml = format!(
        "{yaml}  - name: web\n    match: {{ path_prefix: /plain }}\n    upstreams: [{{ name: w, url: \"http://{web}\" }}]\n"
    );
    let p = proxy(&yaml, &[stable.local_addr, canary.local_addr]).await;
    let config = client_config(&pki, &[b"h2"], None);
    let tls = tls_connect(p.listen, config, "signal.test").await.unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);

    // Three sessions on the one connection (Envoy's #38645: only the first worked there).
    let mut streams = Vec::new();
    for room in ["r1", "r2", "r3"] {
        let mut req = http::Request::connect(format!("https://signal.test/ws?room={room}"))
            .header("sec-websocket-version", "13")
            .body(Empty::<Bytes>::new())
            .unwrap();
        req.extensions_mut()
            .insert(hyper::ext::Protocol::from_static("websocket"));
        let resp = within(send.send_request(req)).await.unwrap();
        assert_eq!(resp.status(), 200, "extended CONNECT for {room}");
        let upgraded = within(hyper::upgrade::on(resp)).await.unwrap();
        streams.push((room, TokioIo::new(upgraded), Vec::new()));
    }
    // Each is a session of its own, split by its room exactly as an HTTP/1.1 upgrade is (a
    // plain proxy with the same routes says where each room goes).
    let plain = proxy(
        &yaml[yaml.find("routes:").unwrap()..],
        &[stable.local_addr, canary.local_addr],
    )
    .await;
    for (room, s, buf) in &mut streams {
        let who = who(s, buf).await;
        let mut c = ws(plain.listen, &format!("/ws?room={room}")).await;
        let h1 = common::whoami(&mut c).await;
        assert_eq!(who["server"], h1["server"], "{room}");
    }
    let live = sessions(&p).await;
    assert_eq!(live.len(), 3, "{live:?}");
    assert!(live.iter().all(|s| s["route"] == "sig"), "{live:?}");
    assert!(live.iter().all(|s| s["transport"] == "h2"), "{live:?}");
    // A plain HTTP/2 request on the same connection is forwarded as HTTP/1.1.
    let req = http::Request::get("https://signal.test/plain/x?y=1")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = within(send.send_request(req)).await.unwrap();
    assert_eq!(resp.status(), 200);
    let body = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .unwrap()
        .to_bytes();
    assert_eq!(&body[..], b"HTTP/1.1 /plain/x?y=1 https");
    // Closing one closes one.
    let (_, s, _) = &mut streams[0];
    s.write_all(&[0x88, 0x82, 0, 0, 0, 0, 0x03, 0xe8])
        .await
        .unwrap();
    eventually(|| async { sessions(&p).await.len() == 2 }).await;
    for (room, s, buf) in streams.iter_mut().skip(1) {
        let who = who(s, buf).await;
        assert_eq!(who["type"], "whoami", "{room}");
    }
    plain.drain().await;
    p.drain().await;
}
