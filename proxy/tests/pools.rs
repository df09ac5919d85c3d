//! Upstream pools with real signaling servers: room affinity with fair shares over 1,000 rooms
//! and 3 endpoints and the shift when a 4th is added; active health checks ejecting a killed
//! endpoint while the others keep their sessions, 503 at once when none is left, recovery;
//! passive ejection without checks; a `dns:` upstream; `/upstreams` and the endpoint gauge.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use sigmesh::state::Runtime;

fn pool_route(endpoints: &[SocketAddr], extra: &str) -> String {
    let list: Vec<String> = endpoints.iter().map(|a| format!("ws://{a}/ws")).collect();
    format!(
        "routes:\n  - name: sig\n    match: {{ path_prefix: /ws }}\n    websocket: {{}}\n    split: {{ sticky: query:room }}\n    upstreams:\n      - name: v1\n        endpoints: [{}]\n{extra}",
        list.join(", ")
    )
}

async fn upstreams(p: &sigmesh::app::Proxy) -> serde_json::Value {
    let (status, body) = admin_get(p, "/upstreams").await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// `endpoint id → (healthy, sessions)` of the route's first upstream.
async fn endpoint_states(p: &sigmesh::app::Proxy) -> BTreeMap<String, (bool, u64)> {
    let v = upstreams(p).await;
    v[0]["upstreams"][0]["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["endpoint"].as_str().unwrap().to_owned(),
                (
                    e["healthy"].as_bool().unwrap(),
                    e["sessions"].as_u64().unwrap(),
                ),
            )
        })
        .collect()
}

async fn server_of(c: &mut Client) -> String {
    whoami(c).await["server"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_meet_on_one_endpoint_with_fair_shares_and_a_fourth_moves_only_its_share() {
    let servers = [
        signaling("s0").await,
        signaling("s1").await,
        signaling("s2").await,
        signaling("s3").await,
    ];
    let addrs: Vec<SocketAddr> = servers.iter().map(|s| s.local_addr).collect();
    let p = proxy(&pool_route(&addrs[..3], ""), &[]).await;

    // 1,000 rooms, one session each, all held open.
    let mut home = BTreeMap::new();
    let mut clients = Vec::new();
    for r in 0..1000 {
        let mut c = ws(p.listen, &format!("/ws?room=room-{r}")).await;
        home.insert(r, server_of(&mut c).await);
        clients.push(c);
    }
    let mut shares: BTreeMap<String, usize> = BTreeMap::new();
    for s in home.values() {
        *shares.entry(s.clone()).or_default() += 1;
    }
    assert_eq!(shares.len(), 3, "{shares:?}");
    // The bound: no endpoint above 1.25 × its fair share (+ the slack of 8, + 1 of rounding).
    for n in shares.values() {
        assert!(*n <= 1000 * 125 / 300 + 9, "{shares:?}");
    }
    // A room's second session meets its first.
    for r in (0..1000).step_by(10) {
        let mut c = ws(p.listen, &format!("/ws?room=room-{r}")).await;
        assert_eq!(server_of(&mut c).await, home[&r], "room-{r}");
        clients.push(c);
    }
    // `/upstreams` counts them.
    let states = endpoint_states(&p).await;
    assert_eq!(
        states.values().map(|(_, n)| n).sum::<u64>(),
        1100,
        "{states:?}"
    );
    assert!(states.values().all(|(h, _)| *h));
    drop(clients);
    eventually(|| async { endpoint_states(&p).await.values().all(|(_, n)| *n == 0) }).await;
    // Where each room goes at no load (one session at a time): the ring's own placement.
    for r in 0..1000 {
        let mut c = ws(p.listen, &format!("/ws?room=room-{r}")).await;
        home.insert(r, server_of(&mut c).await);
    }

    // A fourth endpoint (a reload): a room either stays or moves to it.
    let old = p.shared.runtime();
    let text = format!(
        "listen: 127.0.0.1:0\nadmin: 127.0.0.1:0\n{}",
        pool_route(&addrs, "")
    );
    let config = sigmesh_core::config::load(&text).unwrap();
    p.shared
        .replace_runtime(Runtime::new(config, Some(&old)).unwrap());
    let mut moved = 0;
    for r in 0..1000 {
        let mut c = ws(p.listen, &format!("/ws?room=room-{r}")).await;
        let now = server_of(&mut c).await;
        if now != home[&r] {
            assert_eq!(now, "s3", "room-{r} moved from {} to {now}", home[&r]);
            moved += 1;
        }
    }
    eprintln!("shares of 1,000 rooms on 3 endpoints: {shares:?}; a 4th endpoint took {moved}");
    assert!((150..=350).contains(&moved), "{moved} rooms moved");
    p.drain().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_endpoint_is_ejected_and_the_others_keep_their_sessions() {
    let s0 = signaling("s0").await;
    let s1 = signaling("s1").await;
    let s2 = signaling("s2").await;
    let addrs = [s0.local_addr, s1.local_addr, s2.local_addr];
    let check = "        balance: least_sessions\n        health_check: { interval: 200ms, timeout: 100ms, unhealthy: 2, healthy: 1 }\n";
    let p = proxy(&pool_route(&addrs, check), &[]).await;
    // Two sessions on each endpoint (least_sessions spreads them).
    let mut clients = Vec::new();
    for i in 0..6 {
        let mut c = ws(p.listen, &format!("/ws?room=r{i}")).await;
        let s = server_of(&mut c).await;
        clients.push((s, c));
    }
    let on = |name: &str, cs: &[(String, Client)]| cs.iter().filter(|(s, _)| s == name).count();
    assert_eq!(
        (on("s0", &clients), on("s1", &clients), on("s2", &clients)),
        (2, 2, 2)
    );
    let gauge = |m: &str, a: SocketAddr| {
        metric(
            m,
            &format!(
                "sigmesh_upstream_endpoint_healthy{{route=\"sig\",upstream=\"v1\",endpoint=\"ws://{a}/ws\"}}"
            ),
        )
    };
    eventually(|| async { gauge(&metrics(&p).await, addrs[1]) == Some(1.0) }).await;

    // s1 dies: its sessions end, and the checks eject it.
    let killed = Instant::now();
    s1.shutdown();
    let id1 = format!("ws://{}/ws", addrs[1]);
    eventually(|| async { !endpoint_states(&p).await[&id1].0 }).await;
    let ejected = killed.elapsed();
    eprintln!("ejected {ejected:?} after the kill (interval 200 ms, timeout 100 ms, unhealthy: 2)");
    assert!(ejected < Duration::from_secs(2), "{ejected:?}");
    let v = upstreams(&p).await;
    let e1 = v[0]["upstreams"][0]["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["endpoint"] == id1.as_str())
        .cloned()
        .unwrap();
    assert!(
        e1["last_error"].as_str().unwrap().contains("health check"),
        "{e1}"
    );
    eventually(|| async { gauge(&metrics(&p).await, addrs[1]) == Some(0.0) }).await;
    // The others' sessions go on.
    for (s, c) in clients.iter_mut().filter(|(s, _)| s != "s1") {
        assert_eq!(server_of(c).await, *s);
    }
    // New sessions avoid s1.
    for i in 0..6 {
        let mut c = ws(p.listen, &format!("/ws?room=n{i}")).await;
        assert_ne!(server_of(&mut c).await, "s1");
    }
    // None left: 503 at once, not after a timeout.
    s0.shutdown();
    s2.shutdown();
    eventually(|| async { endpoint_states(&p).await.values().all(|(h, _)| !h) }).await;
    let asked = Instant::now();
    let (status, _) = refused_status(p.listen, "/ws?room=x", &[]).await;
    assert_eq!(status, 503);
    eprintln!("503 with no healthy endpoint in {:?}", asked.elapsed());
    let m = metrics(&p).await;
    assert!(
        metric(
            &m,
            r#"sigmesh_upstream_errors_total{route="sig",upstream="v1",kind="unavailable"}"#
        )
        .unwrap_or(0.0)
            >= 1.0,
        "{m}"
    );
    // s1 comes back on its port: one passing check and it takes sessions again.
    let l = tokio::net::TcpListener::bind(addrs[1]).await.unwrap();
    let _back =
        sigmesh_signaling_server::serve(l, sigmesh_signaling_server::ServerOptions::named("s1"))
            .await
            .unwrap();
    eventually(|| async { endpoint_states(&p).await[&id1].0 }).await;
    let mut c = ws(p.listen, "/ws?room=y").await;
    assert_eq!(server_of(&mut c).await, "s1");
    p.drain().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_handshakes_eject_an_endpoint_without_health_checks() {
    let live = signaling("live").await;
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let p = proxy(
        &pool_route(&[dead, live.local_addr], "        balance: random\n"),
        &[],
    )
    .await;
    let mut failed = 0;
    for i in 0..30 {
        match connect(p.listen, &format!("/ws?room=r{i}"), &[]).await {
            Ok((mut c, _)) => assert_eq!(server_of(&mut c).await, "live"),
            Err(_) => failed += 1,
        }
    }
    // Three failures in a row eject it (passive); afterwards every session goes through.
    assert!(failed <= 3, "{failed} handshakes failed");
    let dead_id = format!("ws://{dead}/ws");
    let states = endpoint_states(&p).await;
    if failed == 3 {
        assert!(!states[&dead_id].0, "{states:?}");
    }
    p.drain().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dns_upstream_resolves_its_endpoints() {
    let s = signaling("dns").await;
    let port = s.local_addr.port();
    let yaml = format!(
        "routes:\n  - name: sig\n    match: {{ path_prefix: /ws }}\n    websocket: {{}}\n    upstreams:\n      - name: v1\n        dns: ws://localhost:{port}/ws\n"
    );
    let p = proxy(&yaml, &[]).await;
    let want = format!("127.0.0.1:{port}");
    eventually(|| async { endpoint_states(&p).await.contains_key(&want) }).await;
    // `localhost` may also resolve to ::1, where nothing listens: that endpoint is ejected by
    // its failed handshakes, and sessions reach the server.
    let mut reached = false;
    for i in 0..10 {
        if let Ok((mut c, _)) = connect(p.listen, &format!("/ws?room=r{i}"), &[]).await {
            assert_eq!(server_of(&mut c).await, "dns");
            reached = true;
            break;
        }
    }
    assert!(reached);
    let v = upstreams(&p).await;
    assert_eq!(
        v[0]["upstreams"][0]["dns"],
        format!("localhost:{port}").as_str()
    );
    p.drain().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_room_stays_together_across_a_reload() {
    let (s0, s1) = (signaling("s0").await, signaling("s1").await);
    let addrs = [s0.local_addr, s1.local_addr];
    let p = proxy(&pool_route(&addrs, ""), &[]).await;
    // 30 sessions of one room: all on its endpoint, which is now "full" for new rooms
    // (ceil(1.25 × 31 / 2) + 8 = 28).
    let mut clients = Vec::new();
    let mut home = None;
    for _ in 0..30 {
        let mut c = ws(p.listen, "/ws?room=busy").await;
        let s = server_of(&mut c).await;
        assert_eq!(*home.get_or_insert_with(|| s.clone()), s);
        clients.push(c);
    }
    // A reload of the same config: the room table comes along, so the 31st session still
    // meets the others instead of being placed anew by load.
    let old = p.shared.runtime();
    let text = format!(
        "listen: 127.0.0.1:0\nadmin: 127.0.0.1:0\n{}",
        pool_route(&addrs, "")
    );
    p.shared.replace_runtime(
        Runtime::new(sigmesh_core::config::load(&text).unwrap(), Some(&old)).unwrap(),
    );
    let mut c = ws(p.listen, "/ws?room=busy").await;
    assert_eq!(Some(server_of(&mut c).await), home);
    drop((clients, c));
    p.drain().await;
}
