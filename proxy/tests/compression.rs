//! `permessage-deflate` read through: a Python `websockets` client and server (both negotiate
//! deflate by default) through sigmesh. The session is compressed end to end, sigmesh reads the
//! compressed messages (types, rooms, candidates, the room bucket), and a decompression bomb
//! closes 1009 without reaching the upstream.
#![allow(clippy::unwrap_used)]

mod common;

use std::process::Stdio;

use common::*;
use tokio::io::{AsyncBufReadExt, BufReader};

/// `server`: echoes every message and prints `got <len>` for each; `client URL`: negotiates,
/// prints the agreed extensions, sends signaling messages and prints their echoes, then a bomb
/// (2 MiB of one byte, a few KiB compressed) and prints the close code.
const PEERS: &str = include_str!("common/deflate_peers.py");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compressed_session_is_read_through_and_a_bomb_closes_1009() {
    let mut server = tokio::process::Command::new(python())
        .args(["-c", PEERS, "server"])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(server.stdout.take().unwrap()).lines();
    let first = within(lines.next_line()).await.unwrap().unwrap();
    let port: u16 = first.strip_prefix("port ").unwrap().parse().unwrap();
    let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::<usize>::new()));
    let sink = got.clone();
    tokio::spawn(async move {
        while let Ok(Some(l)) = lines.next_line().await {
            if let Some(n) = l.strip_prefix("got ") {
                sink.lock().unwrap().push(n.parse().unwrap());
            }
        }
    });

    let yaml = format!(
        "routes:\n  - name: sig\n    match: {{ path_prefix: /ws }}\n    websocket:\n      max_message_bytes: 65536\n      signaling: {{ type: /type, room: /room, peer: /from }}\n    limits:\n      rooms: {{ rate: 100, per: 1s, burst: 100 }}\n    upstreams: [{{ name: py, url: \"ws://127.0.0.1:{port}/ws\" }}]\n"
    );
    let p = proxy(&yaml, &[]).await;
    let out = within(
        tokio::process::Command::new(python())
            .args(["-c", PEERS, "client", &format!("ws://{}/ws", p.listen)])
            .kill_on_drop(true)
            .output(),
    )
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    // Negotiated end to end, without a context either way.
    let ext = stdout.lines().next().unwrap();
    assert!(ext.contains("permessage-deflate"), "{stdout}");
    assert!(ext.contains("server_no_context_takeover"), "{ext}");
    assert!(ext.contains("client_no_context_takeover"), "{ext}");
    assert_eq!(
        stdout.lines().filter(|l| l.starts_with("echo ")).count(),
        5,
        "{stdout}"
    );
    // The bomb: 1009 from sigmesh once inflated (it was well under the limit compressed), and
    // the upstream never saw it (a room bucket holds messages until read).
    assert!(
        stdout.contains("closed 1009 message too big once inflated"),
        "{stdout}"
    );
    assert!(
        got.lock().unwrap().iter().all(|n| *n < 65536),
        "{:?}",
        got.lock().unwrap()
    );

    // sigmesh read the compressed messages: types, the room, the candidates.
    let m = metrics(&p).await;
    let count = |t: &str| {
        metric(
            &m,
            &format!(
                "sigmesh_messages_total{{route=\"sig\",upstream=\"py\",direction=\"in\",type=\"{t}\"}}"
            ),
        )
        .unwrap_or(0.0)
    };
    assert_eq!(count("candidate"), 2.0, "{m}");
    assert_eq!(count("offer"), 1.0, "{m}");
    assert_eq!(count("compressed"), 0.0, "{m}");
    assert!(
        metric(
            &m,
            r#"sigmesh_ice_candidates_total{route="sig",type="host",protocol="udp"}"#
        )
        .unwrap_or(0.0)
            >= 2.0,
        "{m}"
    );
    p.drain().await;
    let _ = server.kill().await;
}
