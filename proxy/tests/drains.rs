//! Paced drains with real signaling servers: `POST /routes/NAME/upstreams/UP/drain` closes
//! that upstream's live sessions spread over the window with its close code, and nothing else;
//! `shutdown.spread` and `shutdown.close_code` pace the shutdown, `/readyz` counts what is left.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::*;

const ROUTE: &str = "routes:\n  - name: sig\n    match: { path_prefix: /ws }\n    websocket: {}\n    split: { sticky: query:room, override_header: x-up }\n    upstreams:\n      - { name: a, url: \"ws://{A}/ws\" }\n      - { name: b, url: \"ws://{B}/ws\" }\n";

async fn on(p: &sigmesh::app::Proxy, up: &str, room: &str) -> Client {
    connect(p.listen, &format!("/ws?room={room}"), &[("x-up", up)])
        .await
        .unwrap()
        .0
}

/// When each client got its close (after `t0`), and the codes.
async fn closes(clients: Vec<Client>, t0: Instant) -> Vec<(Duration, u16)> {
    let waits = clients.into_iter().map(|mut c| async move {
        let (code, _) = recv_close(&mut c).await;
        (t0.elapsed(), code)
    });
    let mut out = futures_util::future::join_all(waits).await;
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_drain_closes_its_sessions_paced_and_nothing_else() {
    let (a, b) = (signaling("a").await, signaling("b").await);
    let p = proxy(ROUTE, &[a.local_addr, b.local_addr]).await;
    let mut on_a = Vec::new();
    for i in 0..10 {
        let mut c = on(&p, "a", &format!("r{i}")).await;
        assert_eq!(whoami(&mut c).await["server"], "a");
        on_a.push(c);
    }
    let mut on_b = on(&p, "b", "rb").await;
    assert_eq!(whoami(&mut on_b).await["server"], "b");

    let t0 = Instant::now();
    let (status, _, body) = http(
        p.admin.unwrap(),
        "POST",
        "/routes/sig/upstreams/a/drain",
        &[("content-type", "application/json")],
        r#"{"spread": "1s", "close_code": 1012}"#,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["sessions"], 10);
    assert_eq!(v["close_code"], 1012);
    // A session opened after the drain started is not drained by it.
    let mut late = on(&p, "a", "late").await;

    let got = closes(on_a, t0).await;
    eprintln!(
        "closes over a 1 s spread: {:?}",
        got.iter().map(|(t, _)| t.as_millis()).collect::<Vec<_>>()
    );
    assert!(got.iter().all(|(_, code)| *code == 1012), "{got:?}");
    // Spread over the window, not all at once.
    let (first, last) = (got[0].0, got[9].0);
    assert!(first < Duration::from_millis(400), "{got:?}");
    assert!(last > Duration::from_millis(600), "{got:?}");
    assert!(last < Duration::from_millis(2000), "{got:?}");
    // b and the late session go on.
    assert_eq!(whoami(&mut on_b).await["server"], "b");
    assert_eq!(whoami(&mut late).await["server"], "a");
    eventually(|| async {
        metric(&metrics(&p).await, "sigmesh_drain_pending_sessions") == Some(0.0)
    })
    .await;
    // Mistakes get their reasons.
    for (path, body, want) in [
        ("/routes/nope/upstreams/a/drain", "", 404),
        ("/routes/sig/upstreams/nope/drain", "", 404),
        (
            "/routes/sig/upstreams/a/drain",
            r#"{"close_code": 1000}"#,
            400,
        ),
        (
            "/routes/sig/upstreams/a/drain",
            r#"{"spread": "soon"}"#,
            400,
        ),
    ] {
        let (status, _, b) = http(p.admin.unwrap(), "POST", path, &[], body).await;
        assert_eq!(status, want, "{path} {body}: {b}");
    }
    p.drain().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shutdown_spreads_its_closes_and_readyz_counts_them() {
    let (a, b) = (signaling("a").await, signaling("b").await);
    let yaml = format!("shutdown: {{ drain_timeout: 5s, spread: 1s, close_code: 1012 }}\n{ROUTE}");
    let p = proxy(&yaml, &[a.local_addr, b.local_addr]).await;
    let admin = p.admin.unwrap();
    let mut clients = Vec::new();
    for i in 0..10 {
        let mut c = on(&p, if i % 2 == 0 { "a" } else { "b" }, &format!("r{i}")).await;
        whoami(&mut c).await;
        clients.push(c);
    }
    let t0 = Instant::now();
    let drained = tokio::spawn(p.drain());
    // `/readyz` is 503 with the count left.
    let seen = std::sync::Mutex::new(Vec::new());
    eventually(|| async {
        let (status, _, body) = http(admin, "GET", "/readyz", &[], "").await;
        let ok = status == 503 && body.contains("of 10 sessions left");
        seen.lock().unwrap().push(body);
        ok
    })
    .await;
    let got = closes(clients, t0).await;
    eprintln!(
        "shutdown closes over a 1 s spread: {:?}",
        got.iter().map(|(t, _)| t.as_millis()).collect::<Vec<_>>()
    );
    assert!(got.iter().all(|(_, code)| *code == 1012), "{got:?}");
    assert!(got[0].0 < Duration::from_millis(400), "{got:?}");
    assert!(got[9].0 > Duration::from_millis(600), "{got:?}");
    within(drained).await.unwrap();
    let seen = seen.into_inner().unwrap();
    assert!(seen.iter().any(|b| b.starts_with("draining: ")), "{seen:?}");
}
