//! Canary rollouts against real example signaling servers: a healthy canary walks to 100 %;
//! a canary that closes sessions with 1011, or relays offers and answers 3× slower, is aborted
//! at its first judged step and its live sessions drained with 1012; pause, resume, promote,
//! weights set by hand; a reload that keeps the rollout keeps its state.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;
use sigmesh::state::Runtime;

async fn server(name: &str, relay_delay: Duration) -> sigmesh_signaling_server::ServerHandle {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    sigmesh_signaling_server::serve(
        l,
        sigmesh_signaling_server::ServerOptions {
            name: name.into(),
            relay_delay,
            ..Default::default()
        },
    )
    .await
    .unwrap()
}

fn config(stable: SocketAddr, canary: SocketAddr, rollout: &str) -> String {
    format!(
        "routes:\n  - name: sig\n    match: {{ path_prefix: /ws }}\n    websocket: {{ signaling: {{ type: /type, room: /room, peer: /from }} }}\n    split: {{ sticky: query:room }}\n    upstreams:\n      - {{ name: stable, url: \"ws://{stable}/ws\", weight: 100 }}\n      - {{ name: canary, url: \"ws://{canary}/ws\", weight: 0 }}\n    rollout:\n{rollout}"
    )
}

/// The stable and canary servers (each relaying after its delay) and a proxy rolling out from
/// one to the other with `rollout` (the YAML of `routes[0].rollout`).
async fn start(
    (stable_delay, canary_delay): (Duration, Duration),
    rollout: &str,
) -> (
    sigmesh_signaling_server::ServerHandle,
    sigmesh_signaling_server::ServerHandle,
    sigmesh::app::Proxy,
) {
    let stable = server("stable", stable_delay).await;
    let canary = server("canary", canary_delay).await;
    let p = proxy(&config(stable.local_addr, canary.local_addr, rollout), &[]).await;
    (stable, canary, p)
}

async fn rollout(p: &sigmesh::app::Proxy) -> Value {
    rollout_state(p, "sig").await
}

async fn post(p: &sigmesh::app::Proxy, verb: &str) -> (u16, Value) {
    let (s, _, b) = http(
        p.admin.unwrap(),
        "POST",
        &format!("/routes/sig/rollout/{verb}"),
        &[],
        "",
    )
    .await;
    (s, serde_json::from_str(&b).unwrap_or(Value::Null))
}

/// A call in a fresh room: peer a offers, peer b answers (the setup sigmesh measures); which
/// upstream served it.
async fn call(p: &sigmesh::app::Proxy, room: &str) -> String {
    let (mut a, b) = common::call(p.listen, room, ("a", "b"), ("v=0", "v=0")).await;
    let who = whoami(&mut a).await;
    for mut c in [a, b] {
        futures_util::SinkExt::close(&mut c).await.unwrap();
        let _ = recv_close(&mut c).await;
    }
    who["server"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_canary_reaches_100_percent() {
    let (_stable, _canary, p) = start(
        (Duration::ZERO, Duration::ZERO),
        "      { baseline: stable, canary: canary, steps: [30, 60, 100], interval: 1s, min_sessions: 3 }\n",
    )
    .await;
    let mut i = 0;
    let mut on_canary = 0;
    within(async {
        while rollout(&p).await["state"] != "done" {
            if churn(&p, &format!("h{i}"), None).await == "canary" {
                on_canary += 1;
            }
            i += 1;
        }
    })
    .await;
    let r = rollout(&p).await;
    assert_eq!(r["weights"]["canary"], 100);
    assert_eq!(r["step"], 3);
    let events: Vec<&str> = r["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(events.first(), Some(&"start"));
    assert_eq!(events.last(), Some(&"done"));
    assert!(on_canary >= 6, "{on_canary} canary sessions of {i}");
    // New rooms all go to the canary now.
    for j in 0..5 {
        assert_eq!(churn(&p, &format!("after{j}"), None).await, "canary");
    }
    let m = metrics(&p).await;
    assert_eq!(
        metric(&m, "sigmesh_rollout_step{route=\"sig\"}"),
        Some(3.0),
        "{m}"
    );
    assert!(
        metric(
            &m,
            "sigmesh_session_closes_total{route=\"sig\",upstream=\"canary\",code_class=\"normal\"}"
        )
        .unwrap()
            >= 6.0,
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_closing_with_1011_is_aborted_and_drained() {
    let (_stable, _canary, p) = start(
        (Duration::ZERO, Duration::ZERO),
        "      { baseline: stable, canary: canary, steps: [50, 100], interval: 1s, min_sessions: 3, on_abort: { drain: 1s } }\n",
    )
    .await;
    let start = Instant::now();
    // Live sessions held on the canary (rooms split at 50 %).
    let mut held = Vec::new();
    let mut k = 0;
    while held.len() < 3 {
        let mut c = ws(p.listen, &format!("/ws?room=held{k}")).await;
        k += 1;
        if whoami(&mut c).await["server"] == "canary" {
            held.push(c);
        } else {
            futures_util::SinkExt::close(&mut c).await.unwrap();
            let _ = recv_close(&mut c).await;
        }
    }
    let mut i = 0;
    within(async {
        while rollout(&p).await["state"] == "running" {
            churn(&p, &format!("bad{i}"), Some(1011)).await;
            i += 1;
        }
    })
    .await;
    let aborted_after = start.elapsed();
    let r = rollout(&p).await;
    assert_eq!(r["state"], "aborted", "{r}");
    assert_eq!(r["step"], 1, "aborted at its first judged step: {r}");
    assert!(
        r["reason"]
            .as_str()
            .unwrap()
            .starts_with("abnormal_close_ratio"),
        "{r}"
    );
    assert_eq!(r["weights"]["canary"], 0);
    // Its live sessions are closed with 1012 within the drain (1 s).
    for c in &mut held {
        let (code, _) = recv_close(c).await;
        assert_eq!(code, 1012);
    }
    let drained_after = start.elapsed();
    eprintln!(
        "1011 canary: aborted {aborted_after:?} after start ({i} sessions), its live sessions closed by {drained_after:?}"
    );
    for j in 0..5 {
        assert_eq!(churn(&p, &format!("after{j}"), None).await, "stable");
    }
    let m = metrics(&p).await;
    assert_eq!(
        metric(
            &m,
            "sigmesh_rollout_aborts_total{route=\"sig\",reason=\"abnormal_close_ratio\"}"
        ),
        Some(1.0),
        "{m}"
    );
    assert_eq!(metric(&m, "sigmesh_rollout_step{route=\"sig\"}"), Some(0.0));
    assert!(
        metric(
            &m,
            "sigmesh_session_closes_total{route=\"sig\",upstream=\"canary\",code_class=\"error\"}"
        )
        .unwrap()
            >= 3.0
    );
    assert_eq!(post(&p, "resume").await.0, 409, "an abort is final");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_3x_slower_to_answer_is_aborted() {
    let (_stable, _canary, p) = start(
        (Duration::from_millis(15), Duration::from_millis(45)),
        "      { baseline: stable, canary: canary, steps: [50, 100], interval: 1s, min_sessions: 5, abort_if: { abnormal_close_ratio: 2.0, setup_p90_ratio: 1.5 } }\n",
    )
    .await;
    let start = Instant::now();
    let mut i = 0;
    within(async {
        while rollout(&p).await["state"] == "running" {
            call(&p, &format!("call{i}")).await;
            i += 1;
        }
    })
    .await;
    let r = rollout(&p).await;
    assert_eq!(r["state"], "aborted", "{r}");
    assert_eq!(r["step"], 1, "{r}");
    assert!(
        r["reason"].as_str().unwrap().starts_with("setup_p90_ratio"),
        "{r}"
    );
    let (b, c) = (
        r["baseline"]["setup_p90_ms"].as_u64().unwrap(),
        r["canary"]["setup_p90_ms"].as_u64().unwrap(),
    );
    assert!(c > b * 2, "canary p90 {c} ms, baseline {b} ms");
    eprintln!(
        "slow canary: aborted {:?} after start ({i} calls; p90 canary {c} ms, baseline {b} ms)",
        start.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_resume_promote_and_weights_by_hand() {
    let (stable, canary, p) = start(
        (Duration::ZERO, Duration::ZERO),
        "      { baseline: stable, canary: canary, steps: [10, 50, 100], interval: 1s, min_sessions: 1000 }\n",
    )
    .await;
    eventually(|| async { rollout(&p).await["step"] == 1 }).await;
    assert_eq!(rollout(&p).await["weights"]["canary"], 10);
    let (s, r) = post(&p, "pause").await;
    assert_eq!((s, r["state"].as_str()), (200, Some("paused")));
    assert_eq!(post(&p, "pause").await.0, 409);
    let (s, r) = post(&p, "resume").await;
    assert_eq!((s, r["state"].as_str()), (200, Some("running")));
    // Weights set by hand pause it, and stay.
    let (s, _, _) = http(
        p.admin.unwrap(),
        "PUT",
        "/routes/sig/weights",
        &[],
        r#"{"stable": 70, "canary": 30}"#,
    )
    .await;
    assert_eq!(s, 200);
    let r = rollout(&p).await;
    assert_eq!(r["state"], "paused");
    assert_eq!(r["reason"], "weights set by hand");
    let cfg: Value = serde_json::from_str(&admin_get(&p, "/config").await.1).unwrap();
    assert_eq!(cfg["routes"][0]["upstreams"][1]["weight"], 30);
    // A reload that keeps the rollout keeps where it is.
    let yaml = format!(
        "listen: 127.0.0.1:0\nadmin: 127.0.0.1:0\n{}",
        config(
            stable.local_addr,
            canary.local_addr,
            "      { baseline: stable, canary: canary, steps: [10, 50, 100], interval: 1s, min_sessions: 1000 }\n",
        )
    );
    let old = p.shared.runtime();
    p.shared.replace_runtime(
        Runtime::new(sigmesh_core::config::load(&yaml).unwrap(), Some(&old)).unwrap(),
    );
    let r = rollout(&p).await;
    assert_eq!(
        (r["state"].as_str(), r["step"].as_u64()),
        (Some("paused"), Some(1)),
        "{r}"
    );
    let cfg: Value = serde_json::from_str(&admin_get(&p, "/config").await.1).unwrap();
    assert_eq!(
        cfg["routes"][0]["upstreams"][1]["weight"], 10,
        "the rollout's weights on the new generation"
    );
    // Promote: 100 % now.
    let (s, r) = post(&p, "promote").await;
    assert_eq!((s, r["state"].as_str()), (200, Some("done")));
    assert_eq!(r["weights"]["canary"], 100);
    assert_eq!(churn(&p, "promoted", None).await, "canary");
    assert_eq!(post(&p, "abort").await.0, 409);
    // A reload that changes the rollout starts it over.
    let changed = yaml.replace("steps: [10, 50, 100]", "steps: [20, 100]");
    let old = p.shared.runtime();
    p.shared.replace_runtime(
        Runtime::new(sigmesh_core::config::load(&changed).unwrap(), Some(&old)).unwrap(),
    );
    eventually(|| async { rollout(&p).await["weights"]["canary"] == 20 }).await;
    let (s, list, _) = http(p.admin.unwrap(), "GET", "/rollouts", &[], "").await;
    assert_eq!(s, 200);
    let _ = list;
    assert_eq!(admin_get(&p, "/routes/nope/rollout").await.0, 404);
}
