//! `routes[].rollout` in the config: the contract's example, defaults, what each key refuses,
//! and what the Wasm filter says instead.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{errors, has, one_error};
use sigmesh_core::compiled::{Capabilities, Compiled};
use sigmesh_core::config::{ConfigErrors, load, load_filter};

fn route(rollout: &str) -> String {
    format!(
        "routes:\n  - name: sig\n    websocket: {{}}\n    split: {{ sticky: query:room }}\n    upstreams:\n      - {{ name: stable, url: ws://127.0.0.1:9001/ws, weight: 100 }}\n      - {{ name: canary, url: ws://127.0.0.1:9002/ws, weight: 0 }}\n    rollout:\n{rollout}"
    )
}

#[test]
fn the_contracts_rollout_loads() {
    let c = load(&route(
        "      baseline: stable\n      canary: canary\n      steps: [5, 25, 50, 100]\n      interval: 5m\n      min_sessions: 50\n      abort_if:\n        abnormal_close_ratio: 2.0\n        upstream_error_ratio: 2.0\n        setup_p90_ratio: 1.5\n      on_abort: { drain: 30s }\n",
    ))
    .unwrap();
    let r = c.routes[0].rollout.as_ref().unwrap();
    assert_eq!(r.steps, [5, 25, 50, 100]);
    assert_eq!(r.interval, Duration::from_secs(300));
    assert_eq!(r.min_sessions, 50);
    assert_eq!(r.abort_if.setup_p90_ratio, Some(1.5));
    assert_eq!(r.on_abort.drain, Duration::from_secs(30));
    // Defaults; `null` turns a criterion off.
    let c = load(&route(
        "      { baseline: stable, canary: canary, steps: [50, 100], interval: 1m, abort_if: { setup_p90_ratio: null } }\n",
    ))
    .unwrap();
    let r = c.routes[0].rollout.as_ref().unwrap();
    assert_eq!(r.min_sessions, 20);
    assert_eq!(r.abort_if.abnormal_close_ratio, Some(2.0));
    assert_eq!(r.abort_if.setup_p90_ratio, None);
    assert_eq!(r.on_abort.drain, Duration::from_secs(30));
    assert!(
        Compiled::new(c, Capabilities::PROXY)
            .unwrap()
            .warnings()
            .iter()
            .all(|w| !w.contains("rollout"))
    );
}

#[test]
fn rollout_keys_are_checked() {
    let base = "{ baseline: stable, canary: canary, steps: [10, 100], interval: 1m }";
    let with = |r: &str| route(&format!("      {r}\n"));
    one_error(
        &with(&base.replace("canary: canary", "canary: cnary")),
        "routes[0].rollout.canary",
        9,
        "not an upstream",
    );
    one_error(
        &with(&base.replace("canary: canary", "canary: stable")),
        "routes[0].rollout.canary",
        9,
        "same upstream",
    );
    one_error(
        &with(&base.replace("[10, 100]", "[50, 20]")),
        "routes[0].rollout.steps[1]",
        9,
        "increase",
    );
    one_error(
        &with(&base.replace("[10, 100]", "[10, 120]")),
        "routes[0].rollout.steps[1]",
        9,
        "100",
    );
    one_error(
        &with(&base.replace("[10, 100]", "[]")),
        "routes[0].rollout.steps",
        9,
        "steps",
    );
    one_error(
        &with(&base.replace("interval: 1m", "interval: 100ms")),
        "routes[0].rollout.interval",
        9,
        "at least 1s",
    );
    one_error(
        &with(&base.replace(", interval: 1m", "")),
        "routes[0].rollout.interval",
        9,
        "missing `interval`",
    );
    one_error(
        &with(&base.replace(
            "interval: 1m",
            "interval: 1m, abort_if: { abnormal_close_ratio: 0.5 }",
        )),
        "routes[0].rollout.abort_if.abnormal_close_ratio",
        9,
        "from 1.0",
    );
    one_error(
        &with(&base.replace(
            "interval: 1m",
            "interval: 1m, abort_if: { setup_p99_ratio: 2 }",
        )),
        "routes[0].rollout.abort_if.setup_p99_ratio",
        9,
        "setup_p90_ratio",
    );
    // Two upstreams, no more.
    let three = with(base).replace(
        "    rollout:",
        "      - { name: third, url: ws://127.0.0.1:9003/ws, weight: 0 }\n    rollout:",
    );
    let errs = errors(&three);
    has(&errs, "routes[0].rollout", 10, "two upstreams");
    // A rollout without a sticky split: `sigmesh check` says why that splits calls.
    let c = load(&with(base).replace("    split: { sticky: query:room }\n", "")).unwrap();
    let w = Compiled::new(c, Capabilities::PROXY).unwrap().warnings();
    assert!(
        w.iter()
            .any(|w| w.contains("rollout") && w.contains("sticky")),
        "{w:?}"
    );
}

#[test]
fn the_wasm_filter_points_at_flagger_and_argo() {
    let text = "routes:\n  - name: sig\n    upstreams:\n      - { name: stable, weight: 100 }\n      - { name: canary, weight: 0 }\n    rollout: { baseline: stable, canary: canary, steps: [10, 100], interval: 1m }\n";
    let Err(ConfigErrors(errs)) = load_filter(text) else {
        panic!("loaded")
    };
    has(&errs, "routes[0].rollout", 6, "Flagger or Argo Rollouts");
}
