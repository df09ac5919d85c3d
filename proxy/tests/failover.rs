//! `on_upstream_failure: reconnect` with real signaling servers: the endpoint under a live
//! session dies (its connections reset, its port closed: a killed pod), and the client's
//! WebSocket stays. sigmesh opens the same handshake to the other endpoint and replays the
//! join, and the new server's `welcome` proves it; the session goes on. Without `reconnect`
//! the client gets 1011, as before.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// A TCP hop in front of `target` that can die: [`Hop::kill`] resets every connection through
/// it and closes its port.
struct Hop {
    addr: SocketAddr,
    kill: CancellationToken,
}

impl Hop {
    async fn start(target: SocketAddr) -> Hop {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let kill = CancellationToken::new();
        let k = kill.clone();
        tokio::spawn(async move {
            loop {
                let (mut client, _) = tokio::select! {
                    a = l.accept() => a.unwrap(),
                    _ = k.cancelled() => return,
                };
                let k = k.clone();
                tokio::spawn(async move {
                    let mut server = TcpStream::connect(target).await.unwrap();
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = k.cancelled() => {
                            // A reset, not a close: the pod is gone.
                            #[allow(deprecated)]
                            let _ = client.set_linger(Some(Duration::ZERO));
                        }
                    }
                });
            }
        });
        Hop { addr, kill }
    }

    fn kill(&self) {
        self.kill.cancel();
    }
}

fn config(endpoints: &[SocketAddr], reconnect: bool) -> String {
    let list: Vec<String> = endpoints.iter().map(|a| format!("ws://{a}/ws")).collect();
    let on_failure = if reconnect {
        "      on_upstream_failure: reconnect\n      reconnect: { replay: first, attempts: 1 }\n"
    } else {
        ""
    };
    format!(
        "routes:\n  - name: sig\n    match: {{ path_prefix: /ws }}\n    websocket:\n      signaling: {{ type: /type, room: /room, peer: /from }}\n{on_failure}    upstreams:\n      - name: v1\n        endpoints: [{}]\n        balance: least_sessions\n",
        list.join(", ")
    )
}

/// A client on the hop's server (`s0`) and one on `s1`, each joined to room `r` by its first
/// message (the one a reconnect replays).
async fn two_clients(p: &sigmesh::app::Proxy) -> (Client, Client) {
    let (mut on0, mut on1) = (None, None);
    for i in 0..20 {
        let mut c = ws(p.listen, &format!("/ws?c={i}")).await;
        send(
            &mut c,
            &format!(r#"{{"type":"join","room":"r","from":"p{i}"}}"#),
        )
        .await;
        let w = recv_json(&mut c).await;
        assert_eq!(w["type"], "welcome", "{w}");
        match w["server"].as_str().unwrap() {
            "s0" if on0.is_none() => on0 = Some(c),
            "s1" if on1.is_none() => on1 = Some(c),
            _ => {}
        }
        if on0.is_some() && on1.is_some() {
            break;
        }
    }
    (on0.unwrap(), on1.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_endpoint_moves_the_session_and_the_join_is_replayed() {
    let (s0, s1) = (signaling("s0").await, signaling("s1").await);
    let hop = Hop::start(s0.local_addr).await;
    let p = proxy(&config(&[hop.addr, s1.local_addr], true), &[]).await;
    let (mut alice, mut other) = two_clients(&p).await;

    let killed = Instant::now();
    hop.kill();
    // The replayed join reaches s1: its welcome comes down the same client WebSocket.
    let w = loop {
        let v = recv_json(&mut alice).await;
        if v["type"] == "welcome" {
            break v;
        }
    };
    let moved = killed.elapsed();
    eprintln!("session moved to the other endpoint {moved:?} after the kill");
    assert_eq!(w["server"], "s1", "{w}");
    assert_eq!(w["room"], "r", "{w}");
    // The session goes on there; the other client never noticed.
    assert_eq!(whoami(&mut alice).await["server"], "s1");
    let on: Vec<String> = sessions(&p)
        .await
        .iter()
        .map(|s| s["endpoint"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        on,
        vec![format!("ws://{}/ws", s1.local_addr); 2],
        "/sessions"
    );
    assert_eq!(whoami(&mut other).await["server"], "s1");
    let m = metrics(&p).await;
    assert_eq!(
        metric(
            &m,
            r#"sigmesh_session_reconnects_total{route="sig",upstream="v1",result="ok"}"#
        ),
        Some(1.0),
        "{m}"
    );
    // The dead endpoint was told: it takes no new session.
    let (_, body) = admin_get(&p, "/upstreams").await;
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let dead = format!("ws://{}/ws", hop.addr);
    let e = v[0]["upstreams"][0]["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["endpoint"] == dead.as_str())
        .cloned()
        .unwrap();
    assert!(
        e["last_error"].as_str().unwrap().contains("mid-session"),
        "{e}"
    );
    p.drain().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_reconnect_the_client_gets_1011() {
    let (s0, s1) = (signaling("s0").await, signaling("s1").await);
    let hop = Hop::start(s0.local_addr).await;
    let p = proxy(&config(&[hop.addr, s1.local_addr], false), &[]).await;
    let (mut alice, _other) = two_clients(&p).await;
    hop.kill();
    let (code, _) = recv_close(&mut alice).await;
    assert_eq!(code, 1011);
    p.drain().await;
}
