//! `affinity: engine_io` with three real Socket.IO servers (npm `socket.io`) in one upstream,
//! balanced at random, and real `socket.io-client`s using polling and then the WebSocket
//! upgrade: with the affinity every client reaches one server and upgrades; without it the
//! later requests land on servers that never issued the sid, and clients fail.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;

const PEERS: &str = include_str!("common/engine_io_peers.js");

async fn server(name: &str) -> (tokio::process::Child, u16) {
    node_server(PEERS, &["server", name], "socket.io").await
}

/// Runs one client through sigmesh: its JSON line.
async fn client(url: &str) -> serde_json::Value {
    let out = within(
        tokio::process::Command::new("node")
            .args(["-e", PEERS, "--", "client", url])
            .env("NODE_PATH", node_modules("socket.io"))
            .kill_on_drop(true)
            .output(),
    )
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(stdout.lines().last().unwrap_or("{}"))
        .unwrap_or_else(|_| serde_json::json!({"error": format!("{stdout} {}", String::from_utf8_lossy(&out.stderr))}))
}

fn config(ports: &[u16], affinity: &str) -> String {
    let eps: Vec<String> = ports
        .iter()
        .map(|p| format!("ws://127.0.0.1:{p}"))
        .collect();
    format!(
        "routes:\n  - name: sio\n    match: {{ path_prefix: /socket.io/ }}\n    websocket: {{}}\n{affinity}    upstreams:\n      - name: v1\n        endpoints: [{}]\n        balance: random\n",
        eps.join(", ")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_io_sessions_stay_on_the_server_that_issued_them() {
    let mut servers = Vec::new();
    for n in ["a", "b", "c"] {
        servers.push(server(n).await);
    }
    let ports: Vec<u16> = servers.iter().map(|(_, p)| *p).collect();

    // With the affinity: every client polls, upgrades and is answered over the WebSocket.
    let p = proxy(&config(&ports, "    affinity: engine_io\n"), &[]).await;
    let url = format!("http://{}", p.listen);
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..6 {
        let r = client(&url).await;
        assert!(r.get("error").is_none(), "{r}");
        assert_eq!(r["transport"], "websocket", "{r}");
        assert_eq!(r["client_transport"], "websocket", "{r}");
        seen.insert(r["server"].as_str().unwrap().to_owned());
    }
    assert!(
        seen.len() > 1,
        "random balancing spread the sessions: {seen:?}"
    );
    p.drain().await;

    // Without it, the same clients fail: their sid is unknown where the next request lands.
    let p = proxy(&config(&ports, ""), &[]).await;
    let url = format!("http://{}", p.listen);
    let mut failed = 0;
    for _ in 0..6 {
        if client(&url).await.get("error").is_some() {
            failed += 1;
        }
    }
    eprintln!("without affinity, {failed} of 6 Socket.IO clients failed");
    assert!(failed >= 3, "{failed} of 6 failed without affinity");
    p.drain().await;
}
