//! Who may hold TURN credentials and relay allocations: `turn.credentials_auth` (the app's own
//! auth endpoint, a real HTTP server here, decides and names the user) and
//! `turn.relay.quota.allocations_per_user` against a real coturn.
#![allow(clippy::unwrap_used)]

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::turn::*;
use common::*;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use stun::message::*;
use tokio::net::TcpListener;

/// What the auth endpoint saw of each request: its headers, lower-cased names.
type Seen = Arc<Mutex<Vec<Vec<(String, String)>>>>;

/// The app's auth endpoint, as an app would write one: the session cookie or the bearer token
/// names the user; `slow` answers after 3 s; anything else is 401.
async fn auth_server() -> (SocketAddr, Seen, tokio::task::JoinHandle<()>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let seen: Seen = Arc::default();
    let log = seen.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else { return };
            let log = log.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                    let log = log.clone();
                    async move {
                        let headers: Vec<(String, String)> = req
                            .headers()
                            .iter()
                            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_owned()))
                            .collect();
                        log.lock().unwrap().push(headers);
                        let cookie = req
                            .headers()
                            .get("cookie")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("");
                        let bearer = req
                            .headers()
                            .get("authorization")
                            .and_then(|v| v.to_str().ok())
                            .and_then(|v| v.strip_prefix("Bearer "));
                        let resp = Response::builder();
                        let resp = match (cookie, bearer) {
                            ("session=alice-token", _) => {
                                resp.status(204).header("x-user", "alice")
                            }
                            (_, Some("bob-token")) => resp.status(200).header("x-user", "bob"),
                            ("session=nobody", _) => resp.status(200),
                            ("session=banned", _) => resp.status(403),
                            ("session=broken", _) => resp.status(500),
                            ("session=slow", _) => {
                                tokio::time::sleep(Duration::from_secs(3)).await;
                                resp.status(200).header("x-user", "slow")
                            }
                            _ => resp
                                .status(401)
                                .header("www-authenticate", "Bearer realm=\"app\""),
                        };
                        Ok::<_, Infallible>(
                            resp.body(Full::new(Bytes::from_static(b"ignored")))
                                .unwrap(),
                        )
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    (addr, seen, task)
}

fn auth_yaml(auth: SocketAddr, extra_turn: &str) -> String {
    format!(
        "routes:\n  - name: signaling\n    match: {{ path_prefix: /ws }}\n    websocket: {{}}\n    upstreams:\n      - {{ name: stable, url: ws://{{A}}/ws }}\n\
         turn:\n  secret: {SECRET}\n  ttl: 1h\n  uris: [turn:127.0.0.1:3478?transport=udp]\n  \
         credentials_auth:\n    request: http://{auth}/auth\n    user_header: x-user\n    timeout: 500ms\n{extra_turn}"
    )
}

async fn credential(p: &sigmesh::app::Proxy, headers: &[(&str, &str)]) -> (u16, serde_json::Value) {
    let (status, _, body) = http(
        p.listen,
        "GET",
        "/turn-credentials?user=mallory",
        headers,
        "",
    )
    .await;
    (
        status,
        serde_json::from_str(&body).unwrap_or(serde_json::Value::Null),
    )
}

#[tokio::test]
async fn credentials_auth_decides_who_gets_a_credential_and_names_the_user() {
    let (auth, seen, _task) = auth_server().await;
    let p = proxy(&auth_yaml(auth, ""), &["127.0.0.1:1".parse().unwrap()]).await;

    // No cookie, no token: the endpoint's 401 (and its challenge) is passed on, nothing minted.
    let (status, headers, body) =
        http(p.listen, "GET", "/turn-credentials?user=mallory", &[], "").await;
    assert_eq!(status, 401, "{body}");
    assert!(
        headers
            .iter()
            .any(|(k, v)| k == "www-authenticate" && v == "Bearer realm=\"app\""),
        "{headers:?}"
    );
    assert!(!body.contains("password"), "{body}");

    // The user is the one the auth endpoint names, whatever `?user=` says.
    let (status, cred) = credential(&p, &[("cookie", "session=alice-token")]).await;
    assert_eq!(status, 200, "{cred}");
    let username = cred["username"].as_str().unwrap();
    assert!(username.ends_with(":alice"), "{username}");
    assert_eq!(
        cred["password"].as_str().unwrap(),
        sigmesh_core::turn::tracker::rest_password(SECRET, username)
    );
    let (status, cred) = credential(&p, &[("authorization", "Bearer bob-token")]).await;
    assert_eq!(status, 200);
    assert!(
        cred["username"].as_str().unwrap().ends_with(":bob"),
        "{cred}"
    );

    // What the endpoint was sent: the cookie, the client address and the original URI.
    let alice = seen.lock().unwrap()[1].clone();
    let has = |k: &str, v: &str| alice.iter().any(|(hk, hv)| hk == k && hv == v);
    assert!(has("cookie", "session=alice-token"), "{alice:?}");
    assert!(has("x-forwarded-for", "127.0.0.1"), "{alice:?}");
    assert!(
        has("x-original-uri", "/turn-credentials?user=mallory"),
        "{alice:?}"
    );

    // Fails closed: refused (403), broken (500), a 2xx naming no user, no answer in time.
    for (cookie, want) in [
        ("session=banned", 403),
        ("session=broken", 502),
        ("session=nobody", 502),
        ("session=slow", 504),
    ] {
        let (status, cred) = credential(&p, &[("cookie", cookie)]).await;
        assert_eq!(status, want, "{cookie}: {cred}");
    }
    // A cookie past 16 KiB is refused before asking.
    let asked = seen.lock().unwrap().len();
    let huge = format!("session={}", "x".repeat(17 << 10));
    let (status, _) = credential(&p, &[("cookie", &huge)]).await;
    assert_eq!(status, 431);
    assert_eq!(seen.lock().unwrap().len(), asked);

    let m = metrics(&p).await;
    let count = |result: &str| {
        metric(
            &m,
            &format!("sigmesh_credentials_auth_total{{result=\"{result}\"}}"),
        )
        .unwrap_or(0.0)
    };
    assert_eq!(count("allowed"), 2.0, "{m}");
    assert_eq!(count("denied"), 2.0, "{m}");
    assert_eq!(count("error"), 2.0, "{m}");
    assert_eq!(count("timeout"), 1.0, "{m}");
    p.drain().await;
}

#[tokio::test]
async fn an_unreachable_auth_endpoint_mints_nothing() {
    // A port nothing listens on.
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = closed.local_addr().unwrap();
    drop(closed);
    let p = proxy(&auth_yaml(addr, ""), &["127.0.0.1:1".parse().unwrap()]).await;
    let (status, cred) = credential(&p, &[("cookie", "session=alice-token")]).await;
    assert_eq!(status, 502, "{cred}");
    assert_eq!(cred, serde_json::Value::Null);
    p.drain().await;
}

/// One user's allocations are capped: the 11th live allocation of alice is answered 486 by
/// sigmesh (coturn never sees it), bob is not affected, and a released allocation frees a place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_refuses_an_allocation_past_the_users_quota_with_486() {
    let coturn = Coturn::start().await;
    let (auth, _seen, _task) = auth_server().await;
    let relay_yaml = format!(
        "  relay:\n    listen: 127.0.0.1:0\n    upstream: {}\n    deny_peers: [10.0.0.0/8]\n    allow_peers: [127.0.0.1]\n    quota: {{ allocations_per_user: 10 }}\n",
        coturn.addr
    );
    let p = proxy(
        &auth_yaml(auth, &relay_yaml),
        &["127.0.0.1:1".parse().unwrap()],
    )
    .await;
    let relay = *p.shared.turn().addr.get().expect("relay bound");
    let as_user = |headers: &'static [(&'static str, &'static str)]| {
        let p = &p;
        async move {
            let (status, cred) = credential(p, headers).await;
            assert_eq!(status, 200, "{cred}");
            TurnClient::udp_as(
                relay,
                cred["username"].as_str().unwrap().to_owned(),
                cred["password"].as_str().unwrap().to_owned(),
            )
            .await
        }
    };
    const ALICE: &[(&str, &str)] = &[("cookie", "session=alice-token")];
    const BOB: &[(&str, &str)] = &[("authorization", "Bearer bob-token")];
    let mut alice = Vec::new();
    for _ in 0..10 {
        let mut c = as_user(ALICE).await;
        c.allocate().await;
        alice.push(c);
    }
    // coturn logs each Allocate it granted.
    eventually(|| async { coturn.processed("ALLOCATE") == 10 }).await;
    let mut eleventh = as_user(ALICE).await;
    let m = eleventh.try_allocate().await;
    assert_eq!(m.typ.class, CLASS_ERROR_RESPONSE);
    assert_eq!(code(&m), Some(486), "{m}");
    assert_eq!(software(&m), "sigmesh", "answered by sigmesh, not coturn");
    let mut signed = m.clone();
    eleventh
        .integrity()
        .check(&mut signed)
        .expect("486 signed with the client's key");
    let mut bob = as_user(BOB).await;
    bob.allocate().await;
    // The eleventh never reached coturn; bob's did.
    eventually(|| async { coturn.processed("ALLOCATE") >= 11 }).await;
    assert_eq!(coturn.processed("ALLOCATE"), 11, "{}", coturn.log());

    let released = alice[0].release().await;
    assert_eq!(released.typ.class, CLASS_SUCCESS_RESPONSE, "{released}");
    let held = |user: &'static str| p.shared.turn().with(|tr| tr.held(user)).unwrap();
    assert_eq!(held("alice"), 9);
    assert_eq!(held("bob"), 1);
    eleventh.allocate().await;
    assert_eq!(held("alice"), 10);
    p.drain().await;
}
