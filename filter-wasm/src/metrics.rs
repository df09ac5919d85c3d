//! The contract's metrics as Envoy stats through the proxy-wasm metrics ABI.
//!
//! A metric `sigmesh_<name>{k1="v1",k2="v2"}` is the Envoy stat `sigmesh.<name>.k1.v1.k2.v2`:
//! the labels, in the contract's order, folded into the name as `key.value` pairs, the way
//! Envoy's own stats carry their tags (`cluster.<name>.upstream_rq_total`). Envoy lists them
//! in `/stats`; its `stats_tags` turn them back into Prometheus labels (the regexes are in
//! `istio/envoy.yaml` and [`TAG_REGEXES`]). Label values are cut to [`MAX_VALUE`] bytes and any
//! byte outside `[A-Za-z0-9_-]` becomes `_`, so a value cannot add a dot.

/// Longest label value kept.
pub const MAX_VALUE: usize = 64;

/// `(tag name, regex)` for Envoy's `stats_config.stats_tags`: the first capture group is cut
/// from the name, the second is the tag's value. Envoy puts Wasm stats under the `wasmcustom`
/// namespace (`wasmcustom.sigmesh.…` in `/stats`, `sigmesh_…` in Prometheus output).
pub const TAG_REGEXES: [(&str, &str); 10] = [
    (
        "route",
        r"^(?:wasmcustom\.)?sigmesh\.[a-z_]+(\.route\.([^.]*))",
    ),
    (
        "upstream",
        r"^(?:wasmcustom\.)?sigmesh\.[a-z_]+(?:\.[a-z]+\.[^.]*)*?(\.upstream\.([^.]*))",
    ),
    (
        "outcome",
        r"^(?:wasmcustom\.)?sigmesh\.[a-z_]+(?:\.[a-z]+\.[^.]*)*?(\.outcome\.([^.]*))",
    ),
    (
        "direction",
        r"^(?:wasmcustom\.)?sigmesh\.[a-z_]+(?:\.[a-z]+\.[^.]*)*?(\.direction\.([^.]*))",
    ),
    (
        "type",
        r"^(?:wasmcustom\.)?sigmesh\.[a-z_]+(?:\.[a-z]+\.[^.]*)*?(\.type\.([^.]*))",
    ),
    (
        "limit",
        r"^(?:wasmcustom\.)?sigmesh\.[a-z_]+(?:\.[a-z]+\.[^.]*)*?(\.limit\.([^.]*))",
    ),
    (
        "kind",
        r"^(?:wasmcustom\.)?sigmesh\.[a-z_]+(?:\.[a-z]+\.[^.]*)*?(\.kind\.([^.]*))",
    ),
    (
        "protocol",
        r"^(?:wasmcustom\.)?sigmesh\.[a-z_]+(?:\.[a-z]+\.[^.]*)*?(\.protocol\.([^.]*))",
    ),
    (
        "result",
        r"^(?:wasmcustom\.)?sigmesh\.[a-z_]+(?:\.[a-z]+\.[^.]*)*?(\.result\.([^.]*))",
    ),
    (
        "code_class",
        r"^(?:wasmcustom\.)?sigmesh\.[a-z_]+(?:\.[a-z_]+\.[^.]*)*?(\.code_class\.([^.]*))",
    ),
];

use sigmesh_core::label::{
    CandidateKind, CandidateProtocol, CloseClass, LimitKind, MessageDirection, MessageType,
    Outcome, UpstreamErrorKind,
};

/// Where metrics go (the host's metrics ABI, or a test's map).
pub trait Sink {
    /// Adds `delta` to the counter `name` (created on first use).
    fn counter(&mut self, name: &str, delta: u64);
    /// Adds `delta` to the gauge `name` (created on first use).
    fn gauge(&mut self, name: &str, delta: i64);
    /// Records `value` in the histogram `name` (created on first use).
    fn histogram(&mut self, name: &str, value: u64);
}

/// The stat name of metric `name` with `labels` (see the module docs).
pub fn stat_name(name: &str, labels: &[(&str, &str)]) -> String {
    let mut s = String::with_capacity(8 + name.len() + labels.len() * 16);
    s.push_str("sigmesh.");
    s.push_str(name);
    for (k, v) in labels {
        s.push('.');
        s.push_str(k);
        s.push('.');
        let v = if v.is_empty() { "none" } else { v };
        let mut end = v.len().min(MAX_VALUE);
        while !v.is_char_boundary(end) {
            end -= 1;
        }
        s.extend(v[..end].chars().map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        }));
    }
    s
}

/// The contract's metrics, by what happened.
pub struct Metrics<'a> {
    /// Where they go.
    pub sink: &'a mut dyn Sink,
}

impl Metrics<'_> {
    /// `sigmesh_connections_total{route, upstream, outcome}`.
    pub fn connection(&mut self, route: &str, upstream: &str, outcome: Outcome) {
        self.sink.counter(
            &stat_name(
                "connections_total",
                &[
                    ("route", route),
                    ("upstream", upstream),
                    ("outcome", outcome.as_str()),
                ],
            ),
            1,
        );
    }

    /// `sigmesh_connections_active{route, upstream}`.
    pub fn active(&mut self, route: &str, upstream: &str, delta: i64) {
        self.sink.gauge(
            &stat_name(
                "connections_active",
                &[("route", route), ("upstream", upstream)],
            ),
            delta,
        );
    }

    /// `sigmesh_messages_total{route, upstream, direction, type}`; direction `in` is client to
    /// upstream, `out` upstream to client.
    pub fn message(
        &mut self,
        route: &str,
        upstream: &str,
        direction: MessageDirection,
        kind: MessageType,
    ) {
        self.sink.counter(
            &stat_name(
                "messages_total",
                &[
                    ("route", route),
                    ("upstream", upstream),
                    ("direction", direction.as_str()),
                    ("type", kind.as_str()),
                ],
            ),
            1,
        );
    }

    /// `sigmesh_rate_limited_total{route, limit}`.
    pub fn rate_limited(&mut self, route: &str, limit: LimitKind) {
        self.sink.counter(
            &stat_name(
                "rate_limited_total",
                &[("route", route), ("limit", limit.as_str())],
            ),
            1,
        );
    }

    /// `sigmesh_upstream_errors_total{route, upstream, kind}`.
    pub fn upstream_error(&mut self, route: &str, upstream: &str, kind: UpstreamErrorKind) {
        self.sink.counter(
            &stat_name(
                "upstream_errors_total",
                &[
                    ("route", route),
                    ("upstream", upstream),
                    ("kind", kind.as_str()),
                ],
            ),
            1,
        );
    }

    /// `sigmesh_ice_candidates_total{route, type, protocol}`.
    pub fn ice(&mut self, route: &str, kind: CandidateKind, protocol: CandidateProtocol, n: u32) {
        if n > 0 {
            self.sink.counter(
                &stat_name(
                    "ice_candidates_total",
                    &[
                        ("route", route),
                        ("type", kind.as_str()),
                        ("protocol", protocol.as_str()),
                    ],
                ),
                u64::from(n),
            );
        }
    }

    /// `sigmesh_call_setup_seconds{route, upstream}`: Envoy histograms take integers, so the
    /// stat is `sigmesh.call_setup_ms…`, in milliseconds.
    pub fn call_setup(&mut self, route: &str, upstream: &str, ms: u64) {
        self.sink.histogram(
            &stat_name("call_setup_ms", &[("route", route), ("upstream", upstream)]),
            ms,
        );
    }

    /// `sigmesh_session_closes_total{route, upstream, code_class}`: an upgraded session ended.
    pub fn session_closed(&mut self, route: &str, upstream: &str, class: CloseClass) {
        self.closes(route, upstream, class, 1);
    }

    /// Every close class of a WebSocket route's upstream at 0, at configuration: Prometheus'
    /// `increase()` does not count a series that first appears at 1, so a canary's first
    /// abnormal close would go unseen by Flagger or Argo without it.
    pub fn closes_at_zero(&mut self, route: &str, upstream: &str) {
        for class in CloseClass::ALL {
            self.closes(route, upstream, class, 0);
        }
    }

    fn closes(&mut self, route: &str, upstream: &str, class: CloseClass, n: u64) {
        self.sink.counter(
            &stat_name(
                "session_closes_total",
                &[
                    ("route", route),
                    ("upstream", upstream),
                    ("code_class", class.as_str()),
                ],
            ),
            n,
        );
    }

    /// `sigmesh_config_reloads_total{result}`.
    pub fn config(&mut self, ok: bool) {
        let result = if ok { "success" } else { "error" };
        self.sink
            .counter(&stat_name("config_reloads_total", &[("result", result)]), 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fold_labels_and_cannot_be_forged() {
        assert_eq!(
            stat_name(
                "connections_total",
                &[
                    ("route", "signaling"),
                    ("upstream", "stable"),
                    ("outcome", "accepted")
                ]
            ),
            "sigmesh.connections_total.route.signaling.upstream.stable.outcome.accepted"
        );
        assert_eq!(
            stat_name("x", &[("route", "a.b c/é"), ("upstream", "")]),
            "sigmesh.x.route.a_b_c__.upstream.none"
        );
        let long = "x".repeat(200);
        assert_eq!(
            stat_name("x", &[("k", &long)]).len(),
            "sigmesh.x.k.".len() + MAX_VALUE
        );
    }
}
