//! A real browser end to end: two headless Chromium instances open the demo page served through
//! sigmesh in the same room, and make a WebRTC call (ICE connected, a data-channel chat message and
//! remote video) whose offer/answer/candidates flowed through the proxy; then the same over
//! `https://` and `wss://`, where Chromium speaks WebSocket over HTTP/2 (RFC 8441) to sigmesh.
//!
//! Needs Debian's `chromium` and `chromium-driver`; the test fails (it does not skip) when they are
//! missing. Install them with `scripts/install/chromium.sh`, i.e.
//! `apt-get update && apt-get install -y chromium chromium-driver`.
//! `SIGMESH_CHROMIUM` / `SIGMESH_CHROMEDRIVER` override the binaries' paths.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use fantoccini::{Client, ClientBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{Value, json};
use sigmesh::demo::Demo;

mod common;
use common::pki as common_pki;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const INSTALL: &str = "apt-get update && apt-get install -y chromium chromium-driver   (or scripts/install/chromium.sh)";

/// Deadline for the call to come up (both tabs connected, chat open, remote video playing).
const CALL_DEADLINE: Duration = Duration::from_secs(30);
/// Deadline for one-off steps: chromedriver start, a browser session, a chat message, shutdown.
const STEP: Duration = Duration::from_secs(15);
/// Upper bound for the whole test.
const TOTAL: Duration = Duration::from_secs(90);

const CHROME_ARGS: &[&str] = &[
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--use-fake-ui-for-media-stream",
    "--use-fake-device-for-media-stream",
    "--window-size=1100,900",
    // The https test's certificate comes from a CA made by the test.
    "--ignore-certificate-errors",
];

fn binary(env: &str, default: &str) -> PathBuf {
    let path = std::env::var_os(env)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(default));
    assert!(
        path.is_file(),
        "{} not found (set {env} to override). The browser test needs Chromium and its WebDriver; install them with:\n    {INSTALL}",
        path.display()
    );
    path
}

fn free_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    l.local_addr().expect("local addr")
}

/// chromedriver in its own process group; dropping it SIGKILLs the whole group (chromedriver and
/// any browser it left behind).
struct Driver {
    child: tokio::process::Child,
    url: String,
}

impl Driver {
    async fn start(path: &PathBuf) -> anyhow::Result<Driver> {
        let port = free_addr().port();
        let child = tokio::process::Command::new(path)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("spawn {}", path.display()))?;
        let driver = Driver {
            child,
            url: format!("http://127.0.0.1:{port}"),
        };
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let ready = poll(STEP, Duration::from_millis(50), || async {
            let (status, body) = http_get(addr, "/status").await.ok()?;
            (status == 200 && body.contains("\"ready\":true")).then_some(())
        })
        .await;
        ready.context("chromedriver did not become ready")?;
        Ok(driver)
    }

    async fn browser(&self, profile: &tempfile::TempDir) -> anyhow::Result<Client> {
        let mut args: Vec<String> = CHROME_ARGS.iter().map(|s| s.to_string()).collect();
        args.push(format!("--user-data-dir={}", profile.path().display()));
        let chromium = binary("SIGMESH_CHROMIUM", "/usr/bin/chromium");
        let mut caps = serde_json::Map::new();
        caps.insert("browserName".into(), json!("chrome"));
        caps.insert(
            "goog:chromeOptions".into(),
            json!({ "binary": chromium, "args": args }),
        );
        let connect = ClientBuilder::new(HttpConnector::new())
            .capabilities(caps)
            .connect(&self.url)
            .await;
        connect.context("start a Chromium WebDriver session")
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", "--", &format!("-{pid}")])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        let _ = self.child.start_kill();
    }
}

/// Calls `check` every `every` until it returns `Some`, for at most `deadline`.
async fn poll<T, F, Fut>(deadline: Duration, every: Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let end = Instant::now() + deadline;
    loop {
        let left = end.saturating_duration_since(Instant::now());
        if let Ok(Some(v)) = tokio::time::timeout(left, check()).await {
            return Some(v);
        }
        if Instant::now() + every >= end {
            return None;
        }
        tokio::time::sleep(every).await;
    }
}

/// A one-shot HTTP/1.1 GET; returns the status and body. Reads until `Content-Length` bytes of
/// body, the end of a chunked body, or EOF (chromedriver keeps the connection open).
async fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    let io = async {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await?;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 8192];
        loop {
            let n = s.read(&mut chunk).await?;
            buf.extend_from_slice(&chunk[..n]);
            if n == 0 || complete(&buf) {
                return anyhow::Ok(buf);
            }
        }
    };
    let buf = tokio::time::timeout(Duration::from_secs(5), io)
        .await
        .context("http timeout")??;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text.split_once("\r\n\r\n").context("no header end")?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("no status")?;
    let body = if is_chunked(head) {
        dechunk(body)
    } else {
        body.to_owned()
    };
    Ok((status, body))
}

fn is_chunked(head: &str) -> bool {
    head.to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
}

/// Whether `buf` holds a whole response.
fn complete(buf: &[u8]) -> bool {
    let text = String::from_utf8_lossy(buf);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return false;
    };
    if is_chunked(head) {
        return body.ends_with("0\r\n\r\n");
    }
    let length = head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case("content-length")
            .then(|| v.trim().parse::<usize>().ok())
            .flatten()
    });
    length.is_some_and(|n| body.len() >= n)
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// `window.sigmeshDemo` of a tab, as JSON (`null` before the page has loaded).
async fn demo_state(c: &Client) -> anyhow::Result<Value> {
    let v = c
        .execute("return JSON.stringify(window.sigmeshDemo || null);", vec![])
        .await?;
    Ok(serde_json::from_str(
        v.as_str().context("state is not a string")?,
    )?)
}

/// The one remote peer of a tab, if the call with it is up: connected, chat open, video playing.
fn call_up(state: &Value) -> Option<(String, Value)> {
    if state["wsState"] != "open" || !state["server"].is_string() {
        return None;
    }
    let peers = state["peers"].as_object()?;
    if peers.len() != 1 {
        return None;
    }
    let (id, p) = peers.iter().next()?;
    let connected = p["connectionState"] == "connected"
        || matches!(
            p["iceConnectionState"].as_str(),
            Some("connected" | "completed")
        );
    (connected && p["dataChannel"] == "open" && p["remoteVideo"] == true)
        .then(|| (id.clone(), p.clone()))
}

fn summary(state: &Value) -> String {
    let log = state["log"]
        .as_array()
        .map(|l| {
            l.iter()
                .filter_map(|x| x.as_str())
                .collect::<Vec<_>>()
                .join("\n    ")
        })
        .unwrap_or_default();
    format!(
        "id={} server={} room={} wsState={} peers={} chat={}\n  log:\n    {log}",
        state["id"],
        state["server"],
        state["room"],
        state["wsState"],
        state["peers"],
        state["chat"]
    )
}

struct Tabs {
    a: Client,
    b: Client,
}

/// How the page and its WebSocket reach the proxy: `http`/`ws`, or `https`/`wss` (then the
/// sessions are WebSockets over HTTP/2, RFC 8441).
async fn scenario(
    tabs: &Tabs,
    listen: SocketAddr,
    admin: SocketAddr,
    room: &str,
    scheme: &str,
) -> anyhow::Result<()> {
    let host = match scheme {
        "https" => format!("localhost:{}", listen.port()),
        _ => listen.to_string(),
    };
    let url = format!("{scheme}://{host}/?room={room}&autojoin=1&media=canvas");
    // A first, so that B is the newcomer that makes the offer; either order works.
    tabs.a.goto(&url).await.context("open the page in tab A")?;
    tabs.b.goto(&url).await.context("open the page in tab B")?;

    let started = Instant::now();
    let up = poll(CALL_DEADLINE, Duration::from_millis(200), || async {
        let (sa, sb) = (
            demo_state(&tabs.a).await.ok()?,
            demo_state(&tabs.b).await.ok()?,
        );
        Some((call_up(&sa)?, call_up(&sb)?, sa, sb))
    })
    .await;
    let Some(((peer_of_a, pa), (peer_of_b, pb), sa, sb)) = up else {
        let sa = demo_state(&tabs.a).await.unwrap_or(Value::Null);
        let sb = demo_state(&tabs.b).await.unwrap_or(Value::Null);
        bail!(
            "no WebRTC call within {CALL_DEADLINE:?}\ntab A: {}\ntab B: {}",
            summary(&sa),
            summary(&sb)
        );
    };
    eprintln!(
        "call up after {:?}: A sees {pa}, B sees {pb}",
        started.elapsed()
    );

    let (id_a, id_b) = (
        sa["id"].as_str().context("tab A id")?,
        sb["id"].as_str().context("tab B id")?,
    );
    ensure!(
        peer_of_a == id_b && peer_of_b == id_a,
        "tabs see the wrong peers: A={sa}\nB={sb}"
    );
    ensure!(
        sa["room"] == room && sb["room"] == room,
        "tabs in the wrong room: {} {}",
        sa["room"],
        sb["room"]
    );
    ensure!(
        sa["server"] == sb["server"],
        "tabs on different upstreams: {} vs {}",
        sa["server"],
        sb["server"]
    );
    let server = sa["server"].as_str().context("server")?.to_owned();
    ensure!(
        server == "stable" || server == "canary",
        "unknown upstream {server}"
    );

    // Chat from A to B over the data channel, through the page's own form.
    let text = format!("hello from {id_a} via sigmesh");
    let sent = tabs
        .a
        .execute(
            "const [t] = arguments; const i = document.getElementById('chatInput'); \
             const b = document.getElementById('chatSend'); i.value = t; \
             if (b.disabled) return false; b.click(); return true;",
            vec![json!(text)],
        )
        .await?;
    ensure!(
        sent == true,
        "chat send button disabled in tab A although its data channel is open"
    );
    let got = poll(STEP, Duration::from_millis(100), || async {
        let sb = demo_state(&tabs.b).await.ok()?;
        let chat = sb["chat"].as_array()?;
        chat.iter()
            .any(|m| m["from"] == id_a && m["text"] == text.as_str())
            .then_some(())
    })
    .await;
    if got.is_none() {
        let sb = demo_state(&tabs.b).await.unwrap_or(Value::Null);
        bail!(
            "chat message from A never reached B\ntab B: {}",
            summary(&sb)
        );
    }
    let sa = demo_state(&tabs.a).await?;
    ensure!(
        sa["chat"].as_array().is_some_and(|c| c
            .iter()
            .any(|m| m["from"] == "me" && m["text"] == text.as_str())),
        "tab A did not record its own chat message: {}",
        sa["chat"]
    );

    // The proxy saw both signaling sessions, on the same upstream and room, with traffic.
    let (status, body) = http_get(admin, "/sessions").await?;
    ensure!(status == 200, "GET /sessions: {status} {body}");
    let sessions: Vec<Value> =
        serde_json::from_str(&body).with_context(|| format!("sessions JSON: {body}"))?;
    let ours: Vec<&Value> = sessions.iter().filter(|s| s["room"] == room).collect();
    ensure!(
        ours.len() == 2,
        "expected 2 sessions in room {room}, got {}: {body}",
        ours.len()
    );
    let mut peers: Vec<&str> = ours.iter().filter_map(|s| s["peer"].as_str()).collect();
    peers.sort_unstable();
    let mut want = vec![id_a, id_b];
    want.sort_unstable();
    ensure!(
        peers == want,
        "sessions' peers {peers:?}, want {want:?}: {body}"
    );
    for s in &ours {
        ensure!(
            s["route"] == "signaling",
            "session on route {}: {s}",
            s["route"]
        );
        ensure!(
            s["upstream"] == server.as_str(),
            "session on upstream {}, the page says {server}: {s}",
            s["upstream"]
        );
        ensure!(
            s["messages_in"].as_u64().is_some_and(|n| n > 0),
            "no client messages through the proxy: {s}"
        );
        ensure!(
            s["messages_out"].as_u64().is_some_and(|n| n > 0),
            "no upstream messages through the proxy: {s}"
        );
        // Over https, Chromium opens its WebSockets on the page's HTTP/2 connection (RFC 8441),
        // because sigmesh offers extended CONNECT.
        let want = if scheme == "https" { "h2" } else { "http/1.1" };
        ensure!(
            s["transport"] == want,
            "session transport {} over {scheme}: {s}",
            s["transport"]
        );
    }
    eprintln!(
        "sessions through sigmesh: {}",
        serde_json::to_string(&ours)?
    );

    // Each page shows what sigmesh saw of its call: candidate types and the setup time, read
    // through the demo's /sigmesh/sessions.
    let candidates = |s: &Value| {
        ["host", "srflx", "prflx", "relay"]
            .iter()
            .map(|k| s["sigmesh"]["ice"][k].as_u64().unwrap_or(0))
            .sum::<u64>()
    };
    let shown = poll(STEP, Duration::from_millis(200), || async {
        let sa = demo_state(&tabs.a).await.ok()?;
        let sb = demo_state(&tabs.b).await.ok()?;
        let ok = |s: &Value| candidates(s) > 0 && s["sigmesh"]["setup_ms"].is_u64();
        (ok(&sa) && ok(&sb)).then_some((sa, sb))
    })
    .await;
    let Some((sa, sb)) = shown else {
        let sa = demo_state(&tabs.a).await.unwrap_or(Value::Null);
        let sb = demo_state(&tabs.b).await.unwrap_or(Value::Null);
        bail!(
            "the pages show no candidate summary from sigmesh\ntab A: {}\ntab B: {}",
            sa["sigmesh"],
            sb["sigmesh"]
        );
    };
    for (tab, state) in [(&tabs.a, &sa), (&tabs.b, &sb)] {
        let text = tab
            .execute(
                "return document.getElementById('iceSummary').textContent + ' | ' + \
                 document.getElementById('setupMs').textContent;",
                vec![],
            )
            .await?;
        let text = text.as_str().unwrap_or_default().to_owned();
        ensure!(
            !text.starts_with("no candidates") && text.contains(" ms"),
            "candidate summary on the page: {text:?} (state {})",
            state["sigmesh"]
        );
        eprintln!("page {} shows: {text}", state["id"]);
    }
    for s in &ours {
        let total: u64 = ["host", "srflx", "prflx", "relay"]
            .iter()
            .map(|k| s["ice"][k].as_u64().unwrap_or(0))
            .sum();
        ensure!(total > 0, "no ICE candidates counted: {s}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_tabs_make_a_webrtc_call_through_the_proxy() {
    call(None).await;
}

/// The same call with the page on `https://` and its signaling on `wss://` (a certificate for
/// `localhost` from a CA made here; Chromium is told to accept it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_tabs_make_a_call_over_https_and_wss() {
    let pki = common_pki::Pki::new();
    pki.issue("localhost", &["localhost"]);
    let tls = sigmesh_core::config::Tls {
        certificates: vec![sigmesh_core::config::CertificatePair {
            cert: pki.path("localhost.pem").display().to_string(),
            key: pki.path("localhost.key").display().to_string(),
        }],
        alpn: vec![
            sigmesh_core::config::Alpn::H2,
            sigmesh_core::config::Alpn::Http11,
        ],
        min_version: sigmesh_core::config::TlsVersion::V1_2,
        client_ca: None,
    };
    call(Some(tls)).await;
}

async fn call(tls: Option<sigmesh_core::config::Tls>) {
    let scheme = if tls.is_some() { "https" } else { "http" };
    let chromedriver = binary("SIGMESH_CHROMEDRIVER", "/usr/bin/chromedriver");
    binary("SIGMESH_CHROMIUM", "/usr/bin/chromium");
    let started = Instant::now();

    let (listen, admin) = (free_addr(), free_addr());
    let demo = Demo::start_with(listen, admin, tls)
        .await
        .expect("start the demo");
    let admin = demo.proxy.admin.expect("demo has an admin listener");
    let listen = demo.proxy.listen;

    let driver = Driver::start(&chromedriver)
        .await
        .expect("start chromedriver");
    let (profile_a, profile_b) = (
        tempfile::tempdir().expect("tempdir"),
        tempfile::tempdir().expect("tempdir"),
    );
    let tabs = async {
        let a = tokio::time::timeout(STEP, driver.browser(&profile_a))
            .await
            .context("browser A timeout")??;
        let b = match tokio::time::timeout(STEP, driver.browser(&profile_b)).await {
            Ok(Ok(b)) => b,
            Ok(Err(e)) => {
                let _ = a.close().await;
                return Err(e);
            }
            Err(e) => {
                let _ = a.close().await;
                return Err(e).context("browser B timeout");
            }
        };
        anyhow::Ok(Tabs { a, b })
    }
    .await
    .expect("start two Chromium sessions");

    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let room = format!("e2e-{}-{nanos}", std::process::id());
    let result = tokio::time::timeout(TOTAL, scenario(&tabs, listen, admin, &room, scheme)).await;

    // Cleanup whatever happened: browsers, then the demo, then chromedriver (dropped).
    let _ = tokio::time::timeout(STEP, async {
        let _ = tabs.a.close().await;
        let _ = tabs.b.close().await;
    })
    .await;
    let _ = tokio::time::timeout(STEP, demo.stop()).await;
    drop(driver);

    match result {
        Ok(Ok(())) => eprintln!("browser e2e passed in {:?}", started.elapsed()),
        Ok(Err(e)) => panic!("{e:#}"),
        Err(_) => panic!("browser test exceeded {TOTAL:?}"),
    }
}

/// `GET /ui` in a real headless Chromium during a call (two peers, an offer with candidates,
/// an answer, sessions kept open): the room with both sessions, their upstream, peers,
/// candidate types and setup time; the upstreams' endpoints; the rollout and its step. With
/// `admin_auth`, the page sends the token from its fragment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_ui_shows_the_live_call_its_endpoints_and_the_rollout() {
    let chromedriver = binary("SIGMESH_CHROMEDRIVER", "/usr/bin/chromedriver");
    binary("SIGMESH_CHROMIUM", "/usr/bin/chromium");
    let stable = common::signaling("stable").await;
    let canary = common::signaling("canary").await;
    let dir = tempfile::tempdir().unwrap();
    let token = "ui-test-token-0123456789";
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, token).unwrap();
    let yaml = format!(
        "listen: 127.0.0.1:0\nadmin: 127.0.0.1:0\nadmin_auth: {{ token_file: \"{}\" }}\nroutes:\n  - name: sig\n    match: {{ path_prefix: /ws }}\n    websocket: {{ signaling: {{ type: /type, room: /room, peer: /from }} }}\n    split: {{ sticky: query:room }}\n    upstreams:\n      - {{ name: stable, endpoints: [\"ws://{}/ws\"], weight: 100 }}\n      - {{ name: canary, url: \"ws://{}/ws\", weight: 0 }}\n    rollout: {{ baseline: stable, canary: canary, steps: [50, 100], interval: 1h }}\n",
        token_file.display(),
        stable.local_addr,
        canary.local_addr
    );
    let config = sigmesh_core::config::load(&yaml).unwrap();
    let p = sigmesh::app::Proxy::start_with(config, None, common::fast_tuning())
        .await
        .unwrap();
    // The call: a offers with a host candidate, b answers with a srflx one.
    let offer = r#"v=0\r\na=candidate:1 1 udp 2122260223 192.168.1.2 54321 typ host\r\n"#;
    let answer = r#"v=0\r\na=candidate:2 1 udp 1686052607 203.0.113.7 40000 typ srflx raddr 10.0.0.2 rport 40000\r\n"#;
    let room = "ui-room";
    let (a, b) = common::call(p.listen, room, ("alice", "bob"), (offer, answer)).await;

    let driver = Driver::start(&chromedriver)
        .await
        .expect("start chromedriver");
    let profile = tempfile::tempdir().unwrap();
    let c = tokio::time::timeout(STEP, driver.browser(&profile))
        .await
        .expect("browser timeout")
        .expect("a Chromium session");
    let admin = p.admin.unwrap();
    c.goto(&format!("http://{admin}/ui#token={token}"))
        .await
        .unwrap();
    let js = |script: &'static str| {
        let c = c.clone();
        async move { c.execute(script, vec![]).await.ok() }
    };
    // The page polls every second: wait for an update that shows the call.
    let shown = poll(STEP, Duration::from_millis(200), || async {
        let v = js(r#"const r = document.querySelector('[data-room="ui-room"]');
            return r && r.querySelectorAll('[data-session]').length === 2 && r.innerText.includes('ms') ? r.innerText : null"#)
        .await?;
        v.as_str().map(str::to_owned)
    })
    .await;
    let Some(room_text) = shown else {
        let body = js("return document.body.innerText").await;
        panic!("the room never showed: {body:?}");
    };
    eprintln!("/ui room:\n{room_text}");
    for needle in ["alice", "bob", "stable", "host 1", "srflx 1"] {
        assert!(
            room_text.contains(needle),
            "`{needle}` not in:\n{room_text}"
        );
    }
    let endpoints = js(r#"return [...document.querySelectorAll('[data-endpoint]')].map(e => e.dataset.endpoint + '=' + e.dataset.healthy)"#)
        .await
        .unwrap();
    let endpoints: Vec<&str> = endpoints
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(endpoints.len(), 2, "{endpoints:?}");
    assert!(
        endpoints.iter().all(|e| e.ends_with("=true")),
        "{endpoints:?}"
    );
    let rollout = js(r#"const r = document.querySelector('[data-rollout="sig"]');
        return r ? [r.dataset.state, r.innerText, r.querySelector('[data-side="canary"]')?.innerText ?? ''] : null"#)
    .await
    .unwrap();
    assert_eq!(rollout[0], "running", "{rollout}");
    assert!(
        rollout[1].as_str().unwrap().contains("step 1 of 2"),
        "{rollout}"
    );
    assert!(rollout[2].as_str().unwrap().contains("canary"), "{rollout}");
    let updated = js("return Number(document.body.dataset.updated)")
        .await
        .unwrap();
    assert!(updated.as_f64().unwrap() >= 1.0);
    let _ = c.close().await;
    drop(a);
    drop(b);
}
