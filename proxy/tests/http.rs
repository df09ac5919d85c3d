//! Plain HTTP routes: forwarding with streamed bodies, hop-by-hop headers removed,
//! forwarding headers set, split and errors.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;

use common::*;
use http_body_util::BodyExt;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

/// An HTTP upstream that answers with what it received, as JSON, plus a hop-by-hop header
/// that must not reach the client.
async fn reflecting_upstream(name: &'static str) -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(async move {
                let svc = service_fn(
                    move |req: http::Request<hyper::body::Incoming>| async move {
                        let (parts, body) = req.into_parts();
                        let body = body
                            .collect()
                            .await
                            .map(|b| b.to_bytes())
                            .unwrap_or_default();
                        let headers: serde_json::Map<String, serde_json::Value> = parts
                            .headers
                            .iter()
                            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").into()))
                            .collect();
                        let sum: u64 = body.iter().map(|b| u64::from(*b)).sum();
                        let out = serde_json::json!({
                            "server": name, "method": parts.method.as_str(), "uri": parts.uri.to_string(),
                            "headers": headers, "len": body.len(), "sum": sum,
                        });
                        let mut resp = http::Response::new(http_body_util::Full::new(
                            bytes::Bytes::from(out.to_string()),
                        ));
                        resp.headers_mut()
                            .insert("keep-alive", "timeout=5".parse().unwrap());
                        resp.headers_mut()
                            .insert("x-upstream", name.parse().unwrap());
                        Ok::<_, std::convert::Infallible>(resp)
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    addr
}

const LEGACY: &str = r#"
routes:
  - name: legacy-http
    match: { path_prefix: /api }
    split: { sticky: header:x-user }
    upstreams:
      - { name: legacy, url: "http://{A}/v1", weight: 1 }
      - { name: next, url: "http://{B}/v1", weight: 1 }
"#;

#[tokio::test]
async fn forwards_streamed_bodies_without_hop_by_hop_headers() {
    let a = reflecting_upstream("legacy").await;
    let b = reflecting_upstream("next").await;
    let p = proxy(LEGACY, &[a, b]).await;
    let body: String = (0..200_000)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    let expected_sum: u64 = body.bytes().map(u64::from).sum();
    let (status, h, resp) = http(
        p.listen,
        "POST",
        "/api/items?x=1",
        &[
            ("x-user", "u1"),
            ("keep-alive", "timeout=9"),
            ("x-drop-me", "1"),
            ("connection", "x-drop-me"),
            ("te", "trailers"),
        ],
        &body,
    )
    .await;
    assert_eq!(status, 200, "{resp}");
    assert!(
        header(&h, "keep-alive").is_none(),
        "hop-by-hop header reached the client"
    );
    let v: serde_json::Value = serde_json::from_str(&resp).unwrap();
    assert_eq!(v["method"], "POST");
    assert_eq!(
        v["uri"], "/v1/items?x=1",
        "prefix /api replaced by the upstream path /v1"
    );
    assert_eq!(v["len"], 200_000);
    assert_eq!(v["sum"], expected_sum);
    let uh = &v["headers"];
    for gone in ["keep-alive", "x-drop-me", "te"] {
        assert!(uh.get(gone).is_none(), "{gone} reached the upstream: {uh}");
    }
    assert_eq!(uh["x-forwarded-for"], "127.0.0.1");
    assert_eq!(uh["x-forwarded-proto"], "http");
    assert_eq!(uh["x-forwarded-host"], p.listen.to_string());
    assert_eq!(uh["traceparent"].as_str().unwrap().len(), 55);
    assert_eq!(header(&h, "x-upstream"), v["server"].as_str());
}

#[tokio::test]
async fn http_split_is_sticky_and_overridable() {
    let a = reflecting_upstream("legacy").await;
    let b = reflecting_upstream("next").await;
    let p = proxy(LEGACY, &[a, b]).await;
    let mut seen = std::collections::BTreeSet::new();
    for i in 0..40 {
        let user = format!("user-{i}");
        let first = header(
            &http(p.listen, "GET", "/api/x", &[("x-user", &user)], "")
                .await
                .1,
            "x-upstream",
        )
        .unwrap()
        .to_owned();
        for _ in 0..2 {
            let again = http(p.listen, "GET", "/api/x", &[("x-user", &user)], "")
                .await
                .1;
            assert_eq!(header(&again, "x-upstream"), Some(first.as_str()));
        }
        seen.insert(first);
        let forced = http(
            p.listen,
            "GET",
            "/api/x",
            &[("x-user", &user), ("x-sigmesh-upstream", "next")],
            "",
        )
        .await
        .1;
        assert_eq!(header(&forced, "x-upstream"), Some("next"));
    }
    assert_eq!(seen.len(), 2);
}

#[tokio::test]
async fn dead_http_upstream_gives_502() {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead = l.local_addr().unwrap();
    drop(l);
    let p = proxy(
        r#"
routes:
  - name: legacy
    match: { path_prefix: / }
    upstreams: [{ name: legacy, url: "http://{A}" }]
"#,
        &[dead],
    )
    .await;
    assert_eq!(http(p.listen, "GET", "/", &[], "").await.0, 502);
    let m = metrics(&p).await;
    assert_eq!(
        metric(
            &m,
            r#"sigmesh_upstream_errors_total{route="legacy",upstream="legacy",kind="connect"}"#
        ),
        Some(1.0)
    );
}
