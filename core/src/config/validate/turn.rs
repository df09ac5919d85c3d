//! The `turn` section (TURN REST credentials and the optional relay) and the `tracing`
//! section (OpenTelemetry export).

use std::time::Duration;

use super::super::tree::Node;
use super::super::{
    CredentialsAuth, OtlpProtocol, ParentSampling, RelayQuota, Tracing, Turn, TurnRelay,
};
use super::fields::{Fields, fields};
use super::scalars::{
    cidr_list, float, header_name, int_in, positive_duration, required_addr, required_string,
    string, string_list, url,
};
use super::{
    CREDENTIALS_AUTH, Mode, QUOTA, RELAY, TRACING, TURN_FILTER, TURN_PROXY, Validator, index,
};

// === turn ===

pub(super) fn turn(cx: &mut Validator, node: &Node, path: &str) -> Option<Turn> {
    let (allowed, extra): (&[&str], &[(&str, &str)]) = match cx.mode {
        Mode::Proxy => (TURN_PROXY, &[]),
        Mode::Filter => (
            TURN_FILTER,
            &[
                (
                    "relay",
                    "`turn.relay` is not available in the Wasm filter (it needs its own UDP/TCP listener); remove it",
                ),
                (
                    "credentials_auth",
                    "`turn.credentials_auth` is not available in the Wasm filter: put Envoy's ext_authz filter on the credentials path instead (see docs/security.md)",
                ),
            ],
        ),
    };
    let f = fields(cx, node, path, allowed, extra)?;
    let secret = required_string(
        cx,
        &f,
        "secret",
        "`secret` (the TURN REST API shared secret)",
    )
    .unwrap_or_default();
    let ttl = positive_duration(cx, &f, "ttl", Duration::from_secs(3600));
    let mut uris = Vec::new();
    if let Some(n) = f.get("uris") {
        let p = f.path("uris");
        for (i, (u, line)) in string_list(cx, n, &p).into_iter().enumerate() {
            let scheme = u.split_once(':').map(|(s, _)| s.to_ascii_lowercase());
            let rest_ok = u
                .split_once(':')
                .is_some_and(|(_, r)| !r.is_empty() && !r.starts_with('/'));
            if !matches!(scheme.as_deref(), Some("turn" | "turns" | "stun" | "stuns")) || !rest_ok {
                cx.err(
                    &index(&p, i),
                    line,
                    format!("`{u}` is not a TURN/STUN URI: expected `turn:HOST[:PORT][?transport=udp|tcp]`, `turns:...` or `stun:...` (no `//`)"),
                );
            } else {
                uris.push(u);
            }
        }
    }
    let mut credentials_path = "/turn-credentials".to_owned();
    if let Some(n) = f.value("credentials_path") {
        let p = f.path("credentials_path");
        if let Some(s) = string(cx, n, &p) {
            if !s.starts_with('/') || s.contains(['?', '#']) || s.chars().any(char::is_whitespace) {
                cx.err(
                    &p,
                    n.line,
                    format!("`{s}` must be a path starting with `/`, without a query"),
                );
            } else {
                credentials_path = s;
            }
        }
    }
    let mut relay = None;
    if cx.mode == Mode::Proxy
        && let Some(n) = f.get("relay")
    {
        let p = f.path("relay");
        if let Some(r) = fields(cx, n, &p, RELAY, &[]) {
            let listen = required_addr(cx, &r, "listen");
            let upstream = required_addr(cx, &r, "upstream");
            let deny_peers = r
                .value("deny_peers")
                .map(|n| cidr_list(cx, n, &r.path("deny_peers")));
            let allow_peers = r
                .value("allow_peers")
                .map(|n| cidr_list(cx, n, &r.path("allow_peers")))
                .unwrap_or_default();
            let quota = quota(cx, &r);
            if let (Some(listen), Some(upstream)) = (listen, upstream) {
                relay = Some(TurnRelay {
                    listen,
                    upstream,
                    deny_peers,
                    allow_peers,
                    quota,
                });
            }
        }
    }
    let credentials_auth = match (cx.mode, f.get("credentials_auth")) {
        (Mode::Proxy, Some(n)) => credentials_auth(cx, n, &f.path("credentials_auth")),
        _ => None,
    };
    Some(Turn {
        secret,
        ttl,
        uris,
        credentials_path,
        credentials_auth,
        relay,
    })
}

/// `turn.credentials_auth`: `request` (required), `user_header`, `timeout`.
fn credentials_auth(cx: &mut Validator, node: &Node, path: &str) -> Option<CredentialsAuth> {
    let f = fields(cx, node, path, CREDENTIALS_AUTH, &[])?;
    let request = match f.value("request") {
        None => {
            cx.err(
                &f.path("request"),
                f.key_line("request"),
                "missing `request`: the app's auth endpoint, such as `http://127.0.0.1:9100/auth`",
            );
            None
        }
        Some(n) => url(
            cx,
            n,
            &f.path("request"),
            &["http"],
            " (https:// auth endpoints arrive with TLS to upstreams)",
        ),
    };
    let mut user_header = "x-user".to_owned();
    if let Some(n) = f.value("user_header") {
        let p = f.path("user_header");
        if let Some(h) = string(cx, n, &p).and_then(|s| header_name(cx, &s, &p, n.line)) {
            user_header = h;
        }
    }
    let timeout = positive_duration(cx, &f, "timeout", Duration::from_secs(2));
    Some(CredentialsAuth {
        request: request?,
        user_header,
        timeout,
    })
}

/// `turn.relay.quota`: `allocations_per_user`, 1 to 100000.
fn quota(cx: &mut Validator, relay: &Fields<'_>) -> RelayQuota {
    let Some(n) = relay.get("quota") else {
        return RelayQuota::default();
    };
    let p = relay.path("quota");
    let Some(q) = fields(cx, n, &p, QUOTA, &[]) else {
        return RelayQuota::default();
    };
    let allocations_per_user = q.value("allocations_per_user").and_then(|n| {
        int_in(
            cx,
            n,
            &q.path("allocations_per_user"),
            1,
            100_000,
            "`allocations_per_user`",
        )
        .map(|v| v as u32)
    });
    RelayQuota {
        allocations_per_user,
    }
}

// === tracing ===

pub(super) fn tracing(cx: &mut Validator, node: &Node, path: &str) -> Option<Tracing> {
    let f = fields(cx, node, path, TRACING, &[])?;
    let otlp_endpoint = match f.value("otlp_endpoint") {
        None => {
            cx.err(
                &f.path("otlp_endpoint"),
                f.key_line("otlp_endpoint"),
                "missing `otlp_endpoint`, such as `http://127.0.0.1:4317`",
            );
            String::new()
        }
        Some(n) => url(cx, n, &f.path("otlp_endpoint"), &["http", "https"], "").unwrap_or_default(),
    };
    let mut protocol = OtlpProtocol::Grpc;
    if let Some(n) = f.value("protocol") {
        let p = f.path("protocol");
        if let Some(v) = string(cx, n, &p) {
            match v.trim() {
                "grpc" => {}
                "http" | "http/protobuf" => protocol = OtlpProtocol::Http,
                other => cx.err(&p, n.line, format!("`{other}`: expected `grpc` or `http`")),
            }
        }
    }
    let mut service_name = "sigmesh".to_owned();
    if let Some(n) = f.value("service_name") {
        let p = f.path("service_name");
        match string(cx, n, &p) {
            Some(s) if s.trim().is_empty() => {
                cx.err(&p, n.line, "`service_name` must not be empty")
            }
            Some(s) => service_name = s,
            None => {}
        }
    }
    let mut sample_ratio = 1.0;
    if let Some(n) = f.value("sample_ratio") {
        let p = f.path("sample_ratio");
        if let Some(r) = float(cx, n, &p) {
            if (0.0..=1.0).contains(&r) {
                sample_ratio = r;
            } else {
                cx.err(
                    &p,
                    n.line,
                    format!("`sample_ratio` is a fraction from 0.0 to 1.0, found {r}"),
                );
            }
        }
    }
    let mut parent_sampling = ParentSampling::Follow;
    if let Some(n) = f.value("parent_sampling") {
        let p = f.path("parent_sampling");
        if let Some(v) = string(cx, n, &p) {
            match v.trim() {
                "follow" => {}
                "ignore" => parent_sampling = ParentSampling::Ignore,
                other => cx.err(
                    &p,
                    n.line,
                    format!("`{other}`: expected `follow` or `ignore`"),
                ),
            }
        }
    }
    // `tls: { ca }`: the collector's CA, for an https:// endpoint with a private CA.
    let mut ca = None;
    if let Some(n) = f.get("tls")
        && let Some(t) = fields(cx, n, &f.path("tls"), &["ca"], &[])
        && let Some(n) = t.value("ca")
    {
        ca = string(cx, n, &t.path("ca")).filter(|s| !s.trim().is_empty());
        if ca.is_some() && !otlp_endpoint.starts_with("https:") {
            cx.err(
                &t.path("ca"),
                n.line,
                "`tls.ca` is for an https:// `otlp_endpoint`",
            );
        }
    }
    Some(Tracing {
        otlp_endpoint,
        protocol,
        service_name,
        sample_ratio,
        parent_sampling,
        ca,
    })
}
