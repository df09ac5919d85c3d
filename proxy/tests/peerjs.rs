//! Room affinity with three real PeerJS servers (npm `peer`) in one upstream: every peer of one
//! PeerJS key (its namespace, `peerjs` by default) must reach the same server, or an OFFER to a
//! peer on another server never arrives. `balance: room` on the sticky key (`query:key`) does
//! it; `random` does not.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;
use futures_util::StreamExt;
use tokio_tungstenite::tungstenite::Message;

const SERVER: &str = r#"
const { PeerServer } = require("peer");
PeerServer({ port: 0, host: "127.0.0.1", path: "/" }, (s) => console.log("port " + s.address().port));
"#;

async fn peer_server() -> (tokio::process::Child, u16) {
    node_server(SERVER, &[], "peer").await
}

/// A PeerJS client: connected, its `OPEN` read.
async fn peer(p: &sigmesh::app::Proxy, key: &str, id: &str) -> Client {
    let mut c = ws(p.listen, &format!("/peerjs?key={key}&id={id}&token=t-{id}")).await;
    let open = recv_json(&mut c).await;
    assert_eq!(open["type"], "OPEN", "{open}");
    c
}

/// Whether `bob` (peer id `to`) gets the OFFER `alice` sends him within a second.
async fn offer_arrives(alice: &mut Client, bob: &mut Client, to: &str) -> bool {
    let offer = serde_json::json!({"type": "OFFER", "dst": to, "payload": {"sdp": {"type": "offer", "sdp": "v=0"}, "type": "media", "connectionId": "mc_1"}});
    send(alice, &offer.to_string()).await;
    let got = tokio::time::timeout(Duration::from_secs(1), async {
        while let Some(Ok(m)) = bob.next().await {
            if let Message::Text(t) = m
                && t.contains("\"OFFER\"")
            {
                return true;
            }
        }
        false
    })
    .await;
    got.unwrap_or(false)
}

fn config(ports: &[u16], balance: &str) -> String {
    let eps: Vec<String> = ports
        .iter()
        .map(|p| format!("ws://127.0.0.1:{p}"))
        .collect();
    format!(
        "routes:\n  - name: pj\n    match: {{ path_prefix: /peerjs }}\n    websocket: {{}}\n    split: {{ sticky: query:key }}\n    upstreams:\n      - name: v1\n        endpoints: [{}]\n        balance: {balance}\n",
        eps.join(", ")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peerjs_peers_of_one_key_meet_on_one_server() {
    let mut servers = Vec::new();
    for _ in 0..3 {
        servers.push(peer_server().await);
    }
    let ports: Vec<u16> = servers.iter().map(|(_, port)| *port).collect();
    let p = proxy(&config(&ports, "room"), &[]).await;
    let mut peers = Vec::new();
    for k in 0..8 {
        let (a, b) = (format!("alice{k}"), format!("bob{k}"));
        let mut alice = peer(&p, "peerjs", &a).await;
        let mut bob = peer(&p, "peerjs", &b).await;
        assert!(offer_arrives(&mut alice, &mut bob, &b).await, "pair {k}");
        peers.push((alice, bob));
    }
    // All 16 on one endpoint: the key's.
    let (_, body) = admin_get(&p, "/upstreams").await;
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let mut counts: Vec<u64> = v[0]["upstreams"][0]["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["sessions"].as_u64().unwrap())
        .collect();
    counts.sort_unstable();
    assert_eq!(counts, [0, 0, 16], "{body}");
    drop(peers);
    p.drain().await;

    // At random over 3 servers, a pair meets with a chance of 1/3: 8 pairs all meeting would
    // happen once in 6,561 runs.
    let p = proxy(&config(&ports, "random"), &[]).await;
    let mut lost = 0;
    for k in 0..8 {
        let (a, b) = (format!("alice{k}"), format!("bob{k}"));
        let mut alice = peer(&p, "peerjs", &a).await;
        let mut bob = peer(&p, "peerjs", &b).await;
        if !offer_arrives(&mut alice, &mut bob, &b).await {
            lost += 1;
        }
    }
    eprintln!("with random balancing, {lost} of 8 offers never arrived");
    assert!(lost >= 1, "random balancing split no pair");
    p.drain().await;
}
