//! TLS on `listen`: real clients (Python `websockets` over `wss://`, rustls) against certificates
//! made here with rcgen, chosen by SNI, rotated under a live session, a bad pair refused,
//! client certificates, HTTP/2 by ALPN, and a hostile handshake.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;

use common::pki::*;
use common::*;
use rcgen::KeyPair;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A Python `websockets` client: connects to `wss://127.0.0.1:PORT/ws` with SNI `sni`,
/// trusting `ca`; sends `{"type":"whoami"}` and prints the answer and the certificate's names.
/// With `hold`, keeps the session and sends again each time a line arrives on stdin.
const CLIENT: &str = r#"
import asyncio, json, ssl, sys
import websockets

async def main(port, sni, ca, hold):
    ctx = ssl.create_default_context(cafile=ca)
    async with websockets.connect(f"wss://127.0.0.1:{port}/ws", ssl=ctx, server_hostname=sni,
                                  open_timeout=5) as ws:
        cert = ws.transport.get_extra_info("ssl_object").getpeercert()
        names = sorted(v for k, v in cert.get("subjectAltName", ()) if k == "DNS")
        print(json.dumps({"names": names}), flush=True)
        while True:
            await ws.send(json.dumps({"type": "whoami"}))
            while True:
                m = json.loads(await asyncio.wait_for(ws.recv(), 5))
                if m.get("type") == "whoami":
                    print(json.dumps(m), flush=True)
                    break
            if not hold:
                return
            line = await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
            if not line:
                return

asyncio.run(main(int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4] == "hold"))
"#;

/// Runs [`CLIENT`] once; its output lines.
async fn wss_once(port: u16, sni: &str, ca: &Path) -> Result<Vec<String>, String> {
    let out = within(
        tokio::process::Command::new(python())
            .args([
                "-c",
                CLIENT,
                &port.to_string(),
                sni,
                ca.to_str().unwrap(),
                "once",
            ])
            .kill_on_drop(true)
            .output(),
    )
    .await
    .unwrap();
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_owned)
            .collect())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn tls_yaml(pki: &Pki, extra: &str) -> String {
    format!(
        "tls:\n  certificates:\n    - {{ cert: {a}.pem, key: {a}.key }}\n    - {{ cert: {b}.pem, key: {b}.key }}\n{extra}\
         routes:\n  - name: sig\n    match: {{ path_prefix: /ws }}\n    websocket: {{}}\n    upstreams: [{{ name: stable, url: \"ws://{{A}}/ws\" }}]\n",
        a = pki.path("signal").display(),
        b = pki.path("other").display(),
    )
}

fn names(line: &str) -> Vec<String> {
    let v: serde_json::Value = serde_json::from_str(line).unwrap();
    v["names"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wss_with_sni_and_a_certificate_rotated_under_a_live_session() {
    let pki = Pki::new();
    pki.issue("signal", &["signal.test"]);
    pki.issue("other", &["other.test"]);
    let up = signaling("stable").await;
    let p = proxy(&tls_yaml(&pki, ""), &[up.local_addr]).await;
    let port = p.listen.port();
    let ca = pki.path("ca.pem");

    // SNI picks the certificate; an unknown name gets the first.
    let lines = wss_once(port, "other.test", &ca).await.unwrap();
    assert_eq!(names(&lines[0]), ["other.test"]);
    let who: serde_json::Value = serde_json::from_str(&lines[1]).unwrap();
    assert_eq!(who["server"], "stable", "{who}");
    let lines = wss_once(port, "signal.test", &ca).await.unwrap();
    assert_eq!(names(&lines[0]), ["signal.test"]);
    let err = wss_once(port, "nobody.test", &ca).await.unwrap_err();
    assert!(
        err.contains("signal.test") || err.contains("CERTIFICATE_VERIFY_FAILED"),
        "{err}"
    );

    // A live session across a rotation.
    let mut live = tokio::process::Command::new(python())
        .args([
            "-c",
            CLIENT,
            &port.to_string(),
            "signal.test",
            ca.to_str().unwrap(),
            "hold",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut out = tokio::io::BufReader::new(live.stdout.take().unwrap());
    let mut line = String::new();
    use tokio::io::AsyncBufReadExt;
    within(out.read_line(&mut line)).await.unwrap();
    let before = names(&line);
    line.clear();
    within(out.read_line(&mut line)).await.unwrap();
    assert!(line.contains("whoami"), "{line}");

    // cert-manager renews: a new certificate for more names, renamed over the old files.
    pki.issue("signal", &["signal.test", "v2.signal.test"]);
    eventually(|| async {
        wss_once(port, "signal.test", &ca)
            .await
            .is_ok_and(|l| names(&l[0]) == ["signal.test", "v2.signal.test"])
    })
    .await;
    assert_ne!(before, ["signal.test", "v2.signal.test"]);
    // The live session is untouched.
    let mut stdin = live.stdin.take().unwrap();
    stdin.write_all(b"again\n").await.unwrap();
    line.clear();
    within(out.read_line(&mut line)).await.unwrap();
    assert!(line.contains("whoami"), "the live session broke: {line}");

    // A bad pair (a key that is not the certificate's) is refused and counted; the good one
    // stays in force.
    let reloads = |m: &str, r: &str| {
        metric(
            m,
            &format!("sigmesh_config_reloads_total{{result=\"{r}\"}}"),
        )
        .unwrap_or(0.0)
    };
    let errors_before = reloads(&metrics(&p).await, "error");
    let stray = KeyPair::generate().unwrap();
    write_atomically(&pki.path("signal.key"), &stray.serialize_pem());
    eventually(|| async { reloads(&metrics(&p).await, "error") > errors_before }).await;
    let lines = wss_once(port, "signal.test", &ca).await.unwrap();
    assert_eq!(names(&lines[0]), ["signal.test", "v2.signal.test"]);
    // Counted once, not every second it stays bad.
    let errors = reloads(&metrics(&p).await, "error");
    let _ = wss_once(port, "other.test", &ca).await.unwrap();
    let _ = wss_once(port, "other.test", &ca).await.unwrap();
    assert_eq!(reloads(&metrics(&p).await, "error"), errors);
    drop(stdin);
    let _ = live.wait().await;
    p.drain().await;
}

/// A GET over the stream; the status line and everything until the server closes.
async fn get(s: &mut tokio_rustls::client::TlsStream<TcpStream>, path: &str) -> String {
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nhost: signal.test\r\nconnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut out = Vec::new();
    let _ = within(s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificates_alpn_and_bad_handshakes() {
    let pki = Pki::new();
    pki.issue("signal", &["signal.test"]);
    pki.issue("other", &["other.test"]);
    pki.issue("client", &["client.test"]);
    let up = signaling("stable").await;
    let extra = format!("  client_ca: {}\n", pki.path("ca.pem").display());
    let p = proxy(&tls_yaml(&pki, &extra), &[up.local_addr]).await;

    // Without a client certificate: refused (rustls reports it when reading).
    let no_cert = client_config(&pki, &[b"http/1.1"], None);
    let refused = match tls_connect(p.listen, no_cert, "signal.test").await {
        Err(_) => true,
        Ok(mut s) => !get(&mut s, "/nowhere").await.starts_with("HTTP/1.1"),
    };
    assert!(refused, "a client without a certificate got an answer");
    // With one from the CA: served (404: no route there); ALPN says http/1.1.
    let with_cert = client_config(&pki, &[b"http/1.1"], Some(("client.pem", "client.key")));
    let mut s = tls_connect(p.listen, with_cert, "signal.test")
        .await
        .unwrap();
    assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    assert!(get(&mut s, "/nowhere").await.starts_with("HTTP/1.1 404"));

    // h2 by ALPN: a plain HTTP/2 request is served (hyper's client, prior knowledge over TLS).
    let h2 = client_config(
        &pki,
        &[b"h2", b"http/1.1"],
        Some(("client.pem", "client.key")),
    );
    let s = tls_connect(p.listen, h2, "signal.test").await.unwrap();
    assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(s),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let req = http::Request::get("https://signal.test/turn-nothing")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let resp = within(send.send_request(req)).await.unwrap();
    assert_eq!(resp.status(), 404);
    assert_eq!(resp.version(), http::Version::HTTP_2);

    // Hostile handshakes: garbage, and a connection that says nothing. Both end, are counted,
    // and the proxy goes on serving.
    let mut junk = TcpStream::connect(p.listen).await.unwrap();
    junk.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let _ = within(junk.read_to_end(&mut buf)).await;
    let mut silent = TcpStream::connect(p.listen).await.unwrap();
    let mut one = [0u8; 1];
    // Closed after the handshake timeout (2 s in the tests).
    let n = within(silent.read(&mut one)).await.unwrap_or(0);
    assert_eq!(n, 0);
    eventually(|| async {
        metric(&metrics(&p).await, "sigmesh_tls_handshake_errors_total").unwrap_or(0.0) >= 3.0
    })
    .await;
    let with_cert = client_config(&pki, &[b"http/1.1"], Some(("client.pem", "client.key")));
    let mut s = tls_connect(p.listen, with_cert, "signal.test")
        .await
        .unwrap();
    assert!(get(&mut s, "/nowhere").await.starts_with("HTTP/1.1 404"));
    p.drain().await;
}

#[tokio::test]
async fn sigmesh_check_and_start_refuse_a_bad_pair() {
    let pki = Pki::new();
    pki.issue("signal", &["signal.test"]);
    pki.issue("other", &["other.test"]);
    // The other certificate's key with this certificate.
    std::fs::copy(pki.path("other.key"), pki.path("signal.key")).unwrap();
    let text = format!(
        "listen: 127.0.0.1:0\n{}",
        tls_yaml(&pki, "").replace("{A}", "127.0.0.1:1")
    );
    let config = sigmesh_core::config::load(&text).unwrap();
    let e = sigmesh::app::check_tls(&config).unwrap_err().to_string();
    assert!(
        e.contains("signal.key") && e.contains("does not go with"),
        "{e}"
    );
    let Err(e) = sigmesh::app::Proxy::start(config, None).await else {
        panic!("started with a bad pair")
    };
    assert_eq!(e.exit_code(), 1);
    std::fs::write(pki.path("signal.key"), "not a key").unwrap();
    let config = sigmesh_core::config::load(&text).unwrap();
    let e = sigmesh::app::check_tls(&config).unwrap_err().to_string();
    assert!(e.contains("no private key"), "{e}");
}
