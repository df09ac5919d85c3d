//! The Grafana dashboard (`examples/observability/grafana/sigmesh.json`): every query names
//! metrics that a running sigmesh exports, and the provisioning files point at it.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;
use std::path::Path;

use common::*;
use serde_json::Value;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap()
}

/// Every PromQL string in the dashboard: panel targets and template variable queries.
fn queries(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                match (k.as_str(), v) {
                    ("expr" | "definition", Value::String(s)) => out.push(s.clone()),
                    ("query", Value::String(s)) => out.push(s.clone()),
                    ("query", Value::Object(q)) => {
                        if let Some(Value::String(s)) = q.get("query") {
                            out.push(s.clone());
                        }
                    }
                    _ => queries(v, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|v| queries(v, out)),
        _ => {}
    }
}

fn names(q: &str) -> Vec<String> {
    let mut out = Vec::new();
    let b = q.as_bytes();
    let mut i = 0;
    while let Some(at) = q[i..].find("sigmesh_") {
        let start = i + at;
        let mut end = start;
        while end < b.len() && (b[end].is_ascii_alphanumeric() || b[end] == b'_') {
            end += 1;
        }
        // Not part of a longer identifier (a label name, say).
        if start == 0 || !(b[start - 1].is_ascii_alphanumeric() || b[start - 1] == b'_') {
            out.push(q[start..end].to_owned());
        }
        i = end;
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_query_names_an_exported_metric() {
    let path = root().join("examples/observability/grafana/sigmesh.json");
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let mut qs = Vec::new();
    queries(&dashboard, &mut qs);
    assert!(qs.len() >= 20, "{} queries", qs.len());
    let used: BTreeSet<String> = qs.iter().flat_map(|q| names(q)).collect();
    let up = signaling("v1").await;
    let p = proxy(
        "routes:\n  - name: sig\n    websocket: {}\n    upstreams:\n      - { name: v1, url: \"ws://{A}/ws\" }\n",
        &[up.local_addr],
    )
    .await;
    // Every family the proxy registers (Prometheus text leaves out those with no series yet);
    // those with series must be in the text under that name too.
    let exported: BTreeSet<&str> = p.shared.metrics().registered().iter().copied().collect();
    let text = metrics(&p).await;
    for l in text.lines().filter_map(|l| l.strip_prefix("# TYPE ")) {
        let name = l.split_whitespace().next().unwrap();
        assert!(exported.contains(name), "{name} is exported but not listed");
    }
    let mut missing = Vec::new();
    for name in &used {
        let base = ["_bucket", "_sum", "_count", "_total"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(name);
        if !exported.contains(name.as_str()) && !exported.contains(base) {
            missing.push(name.clone());
        }
    }
    assert!(
        missing.is_empty(),
        "not exported: {missing:?}\nexported: {exported:?}"
    );
    // The contract's new series are on the dashboard.
    for m in [
        "sigmesh_session_closes_total",
        "sigmesh_rollout_step",
        "sigmesh_rollout_aborts_total",
        "sigmesh_call_setup_seconds_bucket",
        "sigmesh_ice_candidates_total",
        "sigmesh_turn_allocations_active",
        "sigmesh_rate_limited_total",
    ] {
        assert!(used.contains(m), "{m} is on no panel: {used:?}");
    }
    // Provisioned by the docker-compose example.
    let compose =
        std::fs::read_to_string(root().join("examples/observability/docker-compose.yaml")).unwrap();
    assert!(compose.contains("grafana/provisioning"), "{compose}");
    let ds = std::fs::read_to_string(
        root().join("examples/observability/grafana/provisioning/datasources/prometheus.yaml"),
    )
    .unwrap();
    assert!(ds.contains("uid: prometheus"), "{ds}");
}
