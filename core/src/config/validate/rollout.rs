//! A route's `rollout:`: the canary walked through weight steps, judged against the baseline.

use std::time::Duration;

use super::super::tree::{Node, NodeKind};
use super::super::{AbortIf, OnAbort, Rollout, Upstream};
use super::fields::fields;
use super::scalars::{duration, float, int_in, required_string};
use super::{Mode, Validator, index};

const ROLLOUT: &[&str] = &[
    "baseline",
    "canary",
    "steps",
    "interval",
    "min_sessions",
    "abort_if",
    "on_abort",
];
const ABORT_IF: &[&str] = &[
    "abnormal_close_ratio",
    "upstream_error_ratio",
    "setup_p90_ratio",
];
const ON_ABORT: &[&str] = &["drain"];

/// Most steps a rollout has.
pub const MAX_STEPS: usize = 100;

/// `routes[].rollout`, checked against the route's `upstreams`.
pub(super) fn rollout(
    cx: &mut Validator,
    node: &Node,
    path: &str,
    upstreams: &[Upstream],
) -> Option<Rollout> {
    if cx.mode == Mode::Filter {
        cx.err(
            path,
            node.line,
            "in Istio mode a canary is rolled out by Flagger or Argo Rollouts, judged by the \
             filter's metrics (istio/flagger.yaml, istio/argo-rollouts.yaml); remove `rollout`",
        );
        return None;
    }
    let f = fields(cx, node, path, ROLLOUT, &[])?;
    let names: Vec<&str> = upstreams.iter().map(|u| u.name.as_str()).collect();
    let side = |cx: &mut Validator, key: &str| -> Option<String> {
        let v = required_string(cx, &f, key, &format!("`{key}` (an upstream's name)"))?;
        if !names.contains(&v.as_str()) {
            cx.err(
                &f.path(key),
                f.key_line(key),
                format!(
                    "`{v}` is not an upstream of this route (upstreams: {})",
                    names.join(", ")
                ),
            );
            return None;
        }
        Some(v)
    };
    let baseline = side(cx, "baseline");
    let canary = side(cx, "canary");
    if let (Some(b), Some(c)) = (&baseline, &canary)
        && b == c
    {
        cx.err(
            &f.path("canary"),
            f.key_line("canary"),
            "`canary` and `baseline` name the same upstream",
        );
    }
    if upstreams.len() != 2 {
        cx.err(
            path,
            node.line,
            format!(
                "a rollout moves weight between two upstreams; this route has {}",
                upstreams.len()
            ),
        );
    }
    let steps = steps(cx, f.value("steps"), &f.path("steps"), f.key_line("steps"));
    let interval = match f.value("interval") {
        None => {
            cx.err(
                &f.path("interval"),
                f.key_line("interval"),
                "missing `interval` (time at each step, such as `5m`)",
            );
            None
        }
        Some(n) => match duration(cx, n, &f.path("interval")) {
            Some(d) if d < Duration::from_secs(1) => {
                cx.err(
                    &f.path("interval"),
                    n.line,
                    "`interval` must be at least 1s",
                );
                None
            }
            d => d,
        },
    };
    let min_sessions = match f.value("min_sessions") {
        None => Some(20),
        Some(n) => int_in(
            cx,
            n,
            &f.path("min_sessions"),
            1,
            1_000_000,
            "`min_sessions`",
        )
        .and_then(|v| u32::try_from(v).ok()),
    };
    let mut abort_if = AbortIf {
        abnormal_close_ratio: Some(2.0),
        upstream_error_ratio: Some(2.0),
        setup_p90_ratio: Some(1.5),
    };
    if let Some(n) = f.get("abort_if")
        && let Some(a) = fields(cx, n, &f.path("abort_if"), ABORT_IF, &[])
    {
        for (key, slot) in [
            ("abnormal_close_ratio", &mut abort_if.abnormal_close_ratio),
            ("upstream_error_ratio", &mut abort_if.upstream_error_ratio),
            ("setup_p90_ratio", &mut abort_if.setup_p90_ratio),
        ] {
            let Some(n) = a.get(key) else { continue };
            if matches!(n.kind, NodeKind::Null) {
                // `key: null` (or `~`): that criterion is not judged.
                *slot = None;
                continue;
            }
            match float(cx, n, &a.path(key)) {
                Some(v) if v.is_finite() && (1.0..=1000.0).contains(&v) => *slot = Some(v),
                Some(v) => cx.err(
                    &a.path(key),
                    n.line,
                    format!(
                        "{v}: a ratio of canary to baseline, from 1.0 to 1000 (or null: not judged)"
                    ),
                ),
                None => {}
            }
        }
    }
    let mut on_abort = OnAbort {
        drain: Duration::from_secs(30),
    };
    if let Some(n) = f.get("on_abort")
        && let Some(o) = fields(cx, n, &f.path("on_abort"), ON_ABORT, &[])
        && let Some(n) = o.value("drain")
        && let Some(d) = duration(cx, n, &o.path("drain"))
    {
        on_abort.drain = d;
    }
    Some(Rollout {
        baseline: baseline?,
        canary: canary?,
        steps: steps?,
        interval: interval?,
        min_sessions: min_sessions?,
        abort_if,
        on_abort,
    })
}

/// `steps: [5, 25, 50, 100]`: whole percents, increasing, each 1 to 100.
fn steps(cx: &mut Validator, node: Option<&Node>, path: &str, line: usize) -> Option<Vec<u32>> {
    let Some(node) = node else {
        cx.err(
            path,
            line,
            "missing `steps` (the canary's weight at each step, such as `[5, 25, 50, 100]`)",
        );
        return None;
    };
    let NodeKind::Seq(items) = &node.kind else {
        cx.err(
            path,
            node.line,
            format!("expected a list of percents, found {}", node.describe()),
        );
        return None;
    };
    if items.is_empty() || items.len() > MAX_STEPS {
        cx.err(path, node.line, format!("from 1 to {MAX_STEPS} steps"));
        return None;
    }
    let mut out: Vec<u32> = Vec::with_capacity(items.len());
    let mut ok = true;
    for (i, n) in items.iter().enumerate() {
        let p = index(path, i);
        match int_in(cx, n, &p, 1, 100, "a step") {
            Some(v) => {
                let v = v as u32;
                if out.last().is_some_and(|&last| v <= last) {
                    cx.err(&p, n.line, format!("{v}: steps must increase"));
                    ok = false;
                }
                out.push(v);
            }
            None => ok = false,
        }
    }
    ok.then_some(out)
}
