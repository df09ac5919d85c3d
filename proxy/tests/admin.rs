//! The admin API under hostile requests: no path panics (a panic reset the connection), the
//! `Host` check stops DNS rebinding, and `admin_auth` guards everything but the probes.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const ROUTES: &str = r#"
routes:
  - name: sig
    match: { path_prefix: /ws }
    websocket: {}
    upstreams: [{ name: stable, url: "ws://{A}/ws" }]
"#;

/// One raw request with exactly these header lines; the status (0 when the connection ended
/// without an answer) and the body.
async fn raw(addr: SocketAddr, method: &str, path: &str, headers: &[&str]) -> (u16, String) {
    within(async {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let mut req =
            format!("{method} {path} HTTP/1.1\r\nconnection: close\r\ncontent-length: 2\r\n");
        for h in headers {
            req.push_str(h);
            req.push_str("\r\n");
        }
        req.push_str("\r\n{}");
        s.write_all(req.as_bytes()).await.unwrap();
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf).await;
        let text = String::from_utf8_lossy(&buf).into_owned();
        let status = text
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let body = text
            .split_once("\r\n\r\n")
            .map_or("", |(_, b)| b)
            .to_owned();
        (status, body)
    })
    .await
}

#[tokio::test]
async fn no_admin_path_panics_and_the_api_stays_up() {
    let up = signaling("stable").await;
    let p = proxy(ROUTES, &[up.local_addr]).await;
    let admin = p.admin.unwrap();
    let host = format!("host: {admin}");
    for (method, path) in [
        // This one panicked (slice out of range) and reset the connection.
        ("PUT", "/routes/weights"),
        ("PUT", "/routes//weights"),
        ("PUT", "/routes/sig/x/weights"),
        ("PUT", "/routes/%ff%00/weights"),
        ("PUT", "/routes/nope/weights"),
        ("GET", "/routes/sig/weights"),
        ("DELETE", "/metrics"),
        ("GET", "/../../etc/passwd"),
    ] {
        let (status, _) = raw(admin, method, path, &[&host]).await;
        assert!(
            matches!(status, 400 | 404 | 405),
            "{method} {path}: {status}"
        );
    }
    // A real change (`{}`: no weight changed) still works, and the control request is answered.
    let (status, body) = raw(admin, "PUT", "/routes/sig/weights", &[&host]).await;
    assert_eq!((status, body.trim()), (200, r#"{"stable":1}"#));
    assert_eq!(admin_get(&p, "/healthz").await.0, 200);
    p.drain().await;
}

#[tokio::test]
async fn the_host_check_stops_dns_rebinding_and_admin_auth_guards_all_but_the_probes() {
    let up = signaling("stable").await;
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "s3cret-token-0123456789abcdef\n").unwrap();
    let config = format!(
        "admin_auth: {{ token_file: {} }}\nadmin_hosts: [sigmesh-admin.internal]\n{ROUTES}",
        token_file.display()
    );
    let p = proxy(&config, &[up.local_addr]).await;
    let admin = p.admin.unwrap();
    let ok_host = format!("host: {admin}");
    let bearer = "authorization: Bearer s3cret-token-0123456789abcdef";

    // A page on evil.example that resolved its name to 127.0.0.1: refused, whatever the path.
    for path in ["/sessions", "/healthz", "/config"] {
        let (status, _) = raw(admin, "GET", path, &["host: evil.example:9901", bearer]).await;
        assert_eq!(status, 403, "{path}");
    }
    // IP literals, localhost and admin_hosts are answered.
    for host in [
        ok_host.as_str(),
        "host: localhost:9901",
        "host: [::1]:9901",
        "host: SIGMESH-ADMIN.internal",
    ] {
        let (status, _) = raw(admin, "GET", "/sessions", &[host, bearer]).await;
        assert_eq!(status, 200, "{host}");
    }
    // Without the token: 401 but for the probes.
    for path in ["/sessions", "/metrics", "/config", "/turn/allocations"] {
        let (status, _) = raw(admin, "GET", path, &[&ok_host]).await;
        assert_eq!(status, 401, "{path}");
        let (status, _) = raw(
            admin,
            "GET",
            path,
            &[
                &ok_host,
                "authorization: Bearer s3cret-token-0123456789abcdeX",
            ],
        )
        .await;
        assert_eq!(status, 401, "{path}: a wrong token");
    }
    let (status, _) = raw(admin, "PUT", "/routes/sig/weights", &[&ok_host]).await;
    assert_eq!(status, 401);
    for path in ["/healthz", "/readyz"] {
        assert_eq!(raw(admin, "GET", path, &[&ok_host]).await.0, 200, "{path}");
    }
    p.drain().await;
}

#[tokio::test]
async fn a_short_or_missing_token_file_is_a_config_error() {
    let dir = tempfile::tempdir().unwrap();
    let short = dir.path().join("short");
    std::fs::write(&short, "abc").unwrap();
    for file in [short.display().to_string(), "/nonexistent/token".to_owned()] {
        let text = format!(
            "listen: 127.0.0.1:0\nadmin_auth: {{ token_file: {file} }}\n{}",
            ROUTES.replace("{A}", "127.0.0.1:1")
        );
        let config = sigmesh_core::config::load(&text).unwrap();
        let errors = sigmesh::app::check(&config).unwrap_err();
        assert_eq!(errors[0].path, "admin_auth.token_file", "{errors:?}");
    }
}
