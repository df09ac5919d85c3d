//! The `sigmesh` binary itself: `check`, `run` with SIGTERM drain and reloads (file change,
//! SIGHUP, bad file), exit codes, and `demo`.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::Write;
use std::net::SocketAddr;
use std::process::Stdio;

use common::*;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

const BIN: &str = env!("CARGO_BIN_EXE_sigmesh");

fn free_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

fn signal(child: &Child, sig: &str) {
    let pid = child.id().unwrap().to_string();
    let ok = std::process::Command::new("kill")
        .args([sig, &pid])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig} {pid}");
}

async fn wait_ready(admin: SocketAddr) {
    eventually(|| async move {
        match tokio::net::TcpStream::connect(admin).await {
            Ok(_) => http(admin, "GET", "/readyz", &[], "").await.0 == 200,
            Err(_) => false,
        }
    })
    .await;
}

fn write(path: &std::path::Path, text: &str) {
    // Write to a temporary file and rename, as editors and ConfigMap updates do.
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp).unwrap();
    f.write_all(text.as_bytes()).unwrap();
    f.sync_all().unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn config(
    listen: SocketAddr,
    admin: SocketAddr,
    stable: SocketAddr,
    canary: SocketAddr,
    weights: (u32, u32),
) -> String {
    format!(
        r#"listen: {listen}
admin: {admin}
shutdown: {{ drain_timeout: 3s }}
routes:
  - name: signaling
    match: {{ path_prefix: /ws }}
    websocket: {{}}
    upstreams:
      - {{ name: stable, url: "ws://{stable}/ws", weight: {} }}
      - {{ name: canary, url: "ws://{canary}/ws", weight: {} }}
"#,
        weights.0, weights.1
    )
}

#[tokio::test]
async fn check_accepts_good_and_reports_every_error_with_path_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.yaml");
    write(
        &good,
        &config(free_addr(), free_addr(), free_addr(), free_addr(), (90, 10)),
    );
    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(&good)
        .output()
        .await
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let bad = dir.path().join("bad.yaml");
    write(
        &bad,
        r#"listen: 127.0.0.1:8080
routes:
  - name: a
    match: { path_prefix: /ws }
    websocket: { idle_timeout: soon }
    upstreams:
      - { name: stable, url: "ws://127.0.0.1:1/ws", weight: 0 }
      - { name: canary, url: "ws://127.0.0.1:2/ws", weight: -3 }
  - name: a
    match: { path_prefix: / }
    bogus: 1
    upstreams:
      - { name: x, url: "not a url" }
"#,
    );
    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(&bad)
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    for needle in [
        "routes[1].upstreams[0].url",
        "routes[0].upstreams[1].weight",
        "routes[0].websocket.idle_timeout",
        "routes[1].name",
        "bogus",
        "line ",
    ] {
        assert!(err.contains(needle), "missing `{needle}` in:\n{err}");
    }
    // The shipped example config is valid.
    let example = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/configs/sigmesh.yaml"
    );
    let out = Command::new(BIN)
        .args(["check", "--config", example])
        .output()
        .await
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Valid, but not servable: a `wss://` upstream whose CA file is not there is a `check`
    // error with its key path, and `run` refuses it as a bad config (exit 1) instead of
    // answering 502 later.
    let tls = dir.path().join("tls.yaml");
    write(
        &tls,
        r#"listen: 127.0.0.1:0
routes:
  - name: a
    match: { path_prefix: /ws }
    websocket: {}
    upstreams: [{ name: s, url: "wss://127.0.0.1:1/ws", tls: { ca: /nonexistent/ca.pem } }]
"#,
    );
    for cmd in ["check", "run"] {
        let out = Command::new(BIN)
            .args([cmd, "--config"])
            .arg(&tls)
            .output()
            .await
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{cmd}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("routes[0].upstreams[0].tls.ca") && err.contains("/nonexistent/ca.pem"),
            "{cmd}: {err}"
        );
    }
    // Not a file at all: still exit 1 with a message, no panic.
    let out = Command::new(BIN)
        .args(["check", "--config", "/nonexistent/sigmesh.yaml"])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(!String::from_utf8_lossy(&out.stderr).contains("panicked"));
}

#[tokio::test]
async fn run_reloads_on_change_and_sighup_refuses_bad_files_and_drains_on_sigterm() {
    let stable = signaling("stable").await;
    let canary = signaling("canary").await;
    let (listen, admin) = (free_addr(), free_addr());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sigmesh.yaml");
    write(
        &path,
        &config(
            listen,
            admin,
            stable.local_addr,
            canary.local_addr,
            (100, 0),
        ),
    );
    let mut child = Command::new(BIN)
        .args(["run", "--log-format", "json"])
        .env("SIGMESH_CONFIG", &path)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let log = tokio::spawn(async move {
        let mut lines = BufReader::new(stderr).lines();
        let mut all = String::new();
        while let Ok(Some(l)) = lines.next_line().await {
            all.push_str(&l);
            all.push('\n');
        }
        all
    });
    wait_ready(admin).await;
    let mut live = ws(listen, "/ws").await;
    assert_eq!(whoami(&mut live).await["server"], "stable");

    // A file change applies to new sessions; the live one keeps its upstream.
    write(
        &path,
        &config(
            listen,
            admin,
            stable.local_addr,
            canary.local_addr,
            (0, 100),
        ),
    );
    let reloads = |result: &'static str| async move {
        let m = http(admin, "GET", "/metrics", &[], "").await.2;
        metric(
            &m,
            &format!(r#"sigmesh_config_reloads_total{{result="{result}"}}"#),
        )
        .unwrap_or(0.0)
    };
    eventually(|| async { reloads("success").await == 1.0 }).await;
    let mut c = ws(listen, "/ws").await;
    assert_eq!(whoami(&mut c).await["server"], "canary");
    assert_eq!(whoami(&mut live).await["server"], "stable");

    // A bad file is refused and counted; the config in force stays.
    write(&path, "routes: [ { name: broken, upstreams: [] } ]\n");
    eventually(|| async { reloads("error").await == 1.0 }).await;
    let mut c = ws(listen, "/ws").await;
    assert_eq!(whoami(&mut c).await["server"], "canary");

    // SIGHUP reloads even when the file did not change since the last look.
    write(
        &path,
        &config(
            listen,
            admin,
            stable.local_addr,
            canary.local_addr,
            (100, 0),
        ),
    );
    eventually(|| async { reloads("success").await == 2.0 }).await;
    signal(&child, "-HUP");
    eventually(|| async { reloads("success").await == 3.0 }).await;
    let mut c = ws(listen, "/ws").await;
    assert_eq!(whoami(&mut c).await["server"], "stable");

    // SIGTERM: sessions get 1001, the process exits 0.
    signal(&child, "-TERM");
    assert_eq!(recv_close(&mut live).await.0, 1001);
    assert_eq!(recv_close(&mut c).await.0, 1001);
    let status = within(child.wait()).await.unwrap();
    assert_eq!(status.code(), Some(0));
    let logs = log.await.unwrap();
    assert!(logs.contains("config refused"), "{logs}");
    assert!(
        logs.lines().all(|l| l.starts_with('{')),
        "json logs: {logs}"
    );
}

#[tokio::test]
async fn listener_that_cannot_bind_exits_2() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.yaml");
    write(
        &path,
        &config(addr, free_addr(), free_addr(), free_addr(), (1, 1)),
    );
    let out = within(
        Command::new(BIN)
            .args(["run", "--config"])
            .arg(&path)
            .output(),
    )
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot listen"));
}

#[tokio::test]
async fn demo_serves_page_signaling_and_admin() {
    let (listen, admin) = (free_addr(), free_addr());
    let mut child = Command::new(BIN)
        .args([
            "demo",
            "--listen",
            &listen.to_string(),
            "--admin",
            &admin.to_string(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut banner = String::new();
    while !banner.contains("admin API") {
        let line = within(out.next_line()).await.unwrap().expect("banner");
        banner.push_str(&line);
        banner.push('\n');
    }
    assert!(banner.contains(&format!("http://{listen}/")), "{banner}");
    assert!(banner.contains(&format!("ws://{listen}/ws")), "{banner}");
    wait_ready(admin).await;
    let (status, h, body) = http(listen, "GET", "/?room=demo", &[], "").await;
    assert_eq!(status, 200);
    assert!(header(&h, "content-type").unwrap().starts_with("text/html"));
    assert!(
        body.contains("RTCPeerConnection"),
        "the page makes a WebRTC call"
    );
    let mut a = ws(listen, "/ws?room=demo").await;
    let mut b = ws(listen, "/ws?room=demo").await;
    send(&mut a, r#"{"type":"join","room":"demo","from":"a"}"#).await;
    let wa = recv_json(&mut a).await;
    send(&mut b, r#"{"type":"join","room":"demo","from":"b"}"#).await;
    let wb = recv_json(&mut b).await;
    assert_eq!(wa["server"], wb["server"], "one room, one upstream");
    assert_eq!(recv_json(&mut a).await["type"], "peer-joined");
    signal(&child, "-TERM");
    assert_eq!(within(child.wait()).await.unwrap().code(), Some(0));
}
