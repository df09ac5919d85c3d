//! `wss://` and `https://` upstreams: certificates verified against the upstream's `tls.ca`
//! (or the built-in roots), the name from the URL or `tls.server_name`; failures are 502 and
//! counted as `kind="tls"`. The upstreams are real TLS servers made here (rustls, with a
//! tungstenite WebSocket echo and a hyper HTTP server).
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::sync::Arc;

use common::pki::*;
use common::*;
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;

/// A WebSocket server over TLS: answers `whoami` with `{"type":"whoami","server":"tls"}`.
async fn wss_upstream(config: Arc<rustls::ServerConfig>) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(s).await else {
                    return;
                };
                let Ok(mut ws) = tokio_tungstenite::accept_async(tls).await else {
                    return;
                };
                while let Some(Ok(m)) = ws.next().await {
                    if let Message::Text(t) = m
                        && t.contains("whoami")
                    {
                        let _ = ws
                            .send(Message::text(r#"{"type":"whoami","server":"tls"}"#))
                            .await;
                    }
                }
            });
        }
    });
    addr
}

/// An HTTP server over TLS: `200 over tls, host=<Host>`; counts the connections it accepts.
async fn https_upstream(
    config: Arc<rustls::ServerConfig>,
) -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(s).await else {
                    return;
                };
                let svc = hyper::service::service_fn(
                    |req: http::Request<hyper::body::Incoming>| async move {
                        let host = req
                            .headers()
                            .get("host")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("")
                            .to_owned();
                        Ok::<_, std::convert::Infallible>(http::Response::new(
                            http_body_util::Full::new(bytes::Bytes::from(format!(
                                "over tls, host={host}"
                            ))),
                        ))
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    (addr, accepted)
}

fn ws_route(url: &str, tls: &str) -> String {
    format!(
        "routes:\n  - name: sig\n    match: {{ path_prefix: /ws }}\n    websocket: {{}}\n    upstreams:\n      - {{ name: secure, url: \"{url}\"{tls} }}\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wss_and_https_upstreams_are_verified() {
    let pki = Pki::new();
    pki.issue("upstream", &["upstream.test"]);
    let config = server_config(&pki, "upstream");
    let wss = wss_upstream(config.clone()).await;
    let ca = pki.path("ca.pem");
    let trusted = format!(
        ", tls: {{ ca: {}, server_name: upstream.test }}",
        ca.display()
    );

    // Verified against the CA, by the name given: the session works end to end.
    let url = format!("wss://{wss}/ws");
    let p = proxy(&ws_route(&url, &trusted), &[]).await;
    let mut c = ws(p.listen, "/ws").await;
    let who = whoami(&mut c).await;
    assert_eq!(who["server"], "tls");
    assert_eq!(sessions(&p).await.len(), 1);
    p.drain().await;

    // The built-in roots do not know the test CA; a wrong name fails too. Both are 502,
    // counted as TLS failures.
    for tls in [
        String::new(),
        format!(", tls: {{ ca: {}, server_name: other.test }}", ca.display()),
    ] {
        let p = proxy(&ws_route(&url, &tls), &[]).await;
        let (status, _) = refused_status(p.listen, "/ws", &[]).await;
        assert_eq!(status, 502, "tls {tls:?}");
        let m = metrics(&p).await;
        assert_eq!(
            metric(
                &m,
                r#"sigmesh_upstream_errors_total{route="sig",upstream="secure",kind="tls"}"#
            ),
            Some(1.0),
            "{m}"
        );
        p.drain().await;
    }

    // https:// for plain requests, with the upstream's name as Host, on pooled connections.
    let (https, accepted) = https_upstream(config).await;
    let route = format!(
        "routes:\n  - name: web\n    match: {{ path_prefix: / }}\n    upstreams:\n      - {{ name: secure, url: \"https://{https}\"{trusted} }}\n"
    );
    let p = proxy(&route, &[]).await;
    for _ in 0..3 {
        let (status, _, body) = http(p.listen, "GET", "/hello", &[], "").await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body, format!("over tls, host={https}"));
    }
    assert_eq!(
        accepted.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "three requests, one TLS connection"
    );
    p.drain().await;
    // A wrong name: 502, counted as a TLS failure.
    let wrong = route.replace("server_name: upstream.test", "server_name: other.test");
    let p = proxy(&wrong, &[]).await;
    let (status, _, _) = http(p.listen, "GET", "/hello", &[], "").await;
    assert_eq!(status, 502);
    let m = metrics(&p).await;
    assert_eq!(
        metric(
            &m,
            r#"sigmesh_upstream_errors_total{route="web",upstream="secure",kind="tls"}"#
        ),
        Some(1.0),
        "{m}"
    );
    p.drain().await;
}

#[test]
fn an_unreadable_upstream_ca_is_a_config_error() {
    let text = format!(
        "listen: 127.0.0.1:0\n{}",
        ws_route("wss://127.0.0.1:1/ws", ", tls: { ca: /nonexistent/ca.pem }")
    );
    let config = sigmesh_core::config::load(&text).unwrap();
    let errors = sigmesh::app::check(&config).unwrap_err();
    let e = errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n");
    assert!(e.contains("routes[0].upstreams[0].tls.ca"), "{e}");
    assert!(e.contains("/nonexistent/ca.pem"), "{e}");
    // `tls` on a plain upstream is a mistake worth saying.
    let plain = format!(
        "listen: 127.0.0.1:0\n{}",
        ws_route("ws://127.0.0.1:1/ws", ", tls: { server_name: x.test }")
    );
    let e = sigmesh_core::config::load(&plain).unwrap_err().to_string();
    assert!(e.contains("this one is plain"), "{e}");
}
