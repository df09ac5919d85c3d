//! Semantic validation: the document tree of [`super::tree`] to the validated [`Config`].
//!
//! The walk never stops at the first problem: each builder records its errors (with key path
//! and line) and carries on with a placeholder, so that one run reports everything. The caller
//! returns the [`Config`] only when no error was recorded.
//!
//! This file holds the shared state (the [`Mode`], the error collector [`Validator`], key-path
//! helpers), the allowed key names of every mapping, and the top of the walk ([`config`]).
//! The rest is split by responsibility:
//!
//! - `fields`: reading a mapping, reporting unknown keys with a did-you-mean suggestion;
//! - `scalars`: strings, numbers, durations, socket addresses, header names, JSON pointers,
//!   names, URLs and CIDRs;
//! - `route`: `routes`, each route, its `match` and `websocket` sections;
//! - `limits`: a route's `limits` (connections, messages, rooms) and their token buckets;
//! - `upstreams`: a route's `split` (stickiness, override header) and `upstreams`;
//! - `turn`: the `turn` (with its relay) and `tracing` sections.

mod cluster;
mod fields;
mod limits;
mod pools;
mod rollout;
mod route;
mod scalars;
mod tls;
mod turn;
mod upstreams;

use std::net::SocketAddr;

use super::tree::Node;
use super::{AdminAuth, Config, ConfigError, Shutdown};
use fields::fields;
use route::routes;
use scalars::{duration, required_string, socket_addr, string_list};
use turn::{tracing, turn};

/// Which front end the config is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// The standalone proxy: everything, and upstreams need a `url`.
    Proxy,
    /// The Envoy/Istio Wasm filter: `routes` and `turn` (without `relay`); upstreams have no `url`.
    Filter,
}

/// The error collector.
pub(crate) struct Validator {
    pub mode: Mode,
    pub errors: Vec<ConfigError>,
    /// The document has a `cluster:` (read before the routes, whose `scope: global` needs it).
    pub cluster: bool,
}

impl Validator {
    fn err(&mut self, path: &str, line: usize, message: impl Into<String>) {
        self.errors.push(ConfigError {
            path: path.to_owned(),
            line: Some(line),
            message: message.into(),
        });
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

fn index(path: &str, i: usize) -> String {
    format!("{path}[{i}]")
}

// === key names ===

const TOP_PROXY: &[&str] = &[
    "listen",
    "admin",
    "admin_auth",
    "admin_hosts",
    "limits",
    "trust_forwarded_from",
    "shutdown",
    "routes",
    "turn",
    "tracing",
    "tls",
    "cluster",
];
const ADMIN_AUTH: &[&str] = &["token_file"];
const TOP_FILTER: &[&str] = &["routes", "turn"];
const SHUTDOWN: &[&str] = &["drain_timeout", "close_code", "spread"];
const ROUTE: &[&str] = &[
    "name",
    "match",
    "websocket",
    "limits",
    "split",
    "affinity",
    "upstreams",
    "rollout",
];
const MATCH: &[&str] = &["path", "path_prefix", "host", "headers"];
const WEBSOCKET: &[&str] = &[
    "max_message_bytes",
    "idle_timeout",
    "allowed_origins",
    "signaling",
    "compression",
    "on_upstream_failure",
    "reconnect",
];
const RECONNECT: &[&str] = &["replay", "attempts"];
const SIGNALING: &[&str] = &["type", "room", "peer"];
const LIMITS: &[&str] = &["connections", "messages", "rooms", "sessions"];
const SESSIONS: &[&str] = &["max", "key", "scope"];
const PROCESS_LIMITS: &[&str] = &["max_sessions", "max_sessions_per_ip"];
const CONNECTIONS: &[&str] = &["rate", "per", "burst", "key", "scope"];
const MESSAGES: &[&str] = &["rate", "per", "burst", "on_exceed"];
const ROOMS: &[&str] = &["rate", "per", "burst", "scope"];
const SPLIT: &[&str] = &["sticky", "override_header", "override_from"];
const UPSTREAM_PROXY: &[&str] = &[
    "name",
    "url",
    "endpoints",
    "dns",
    "balance",
    "health_check",
    "weight",
    "tls",
];
const HEALTH_CHECK: &[&str] = &["path", "interval", "timeout", "unhealthy", "healthy"];
const UPSTREAM_TLS: &[&str] = &["ca", "server_name"];
const UPSTREAM_FILTER: &[&str] = &["name", "weight"];
const TURN_PROXY: &[&str] = &[
    "secret",
    "ttl",
    "uris",
    "credentials_path",
    "credentials_auth",
    "relay",
];
const CREDENTIALS_AUTH: &[&str] = &["request", "user_header", "timeout"];
const TURN_FILTER: &[&str] = &["secret", "ttl", "uris", "credentials_path"];
const RELAY: &[&str] = &["listen", "upstream", "deny_peers", "allow_peers", "quota"];
const QUOTA: &[&str] = &["allocations_per_user"];
const TRACING: &[&str] = &[
    "otlp_endpoint",
    "protocol",
    "service_name",
    "sample_ratio",
    "parent_sampling",
    "tls",
];

// === the document ===

/// Builds the whole config; errors go to `cx`.
pub(crate) fn config(cx: &mut Validator, root: &Node) -> Config {
    let mode = cx.mode;
    let (allowed, extra): (&[&str], &[(&str, &str)]) = match mode {
        Mode::Proxy => (TOP_PROXY, &[]),
        Mode::Filter => (
            TOP_FILTER,
            &[
                (
                    "listen",
                    "not used by the Wasm filter: Envoy's listener decides where traffic arrives; remove it",
                ),
                (
                    "admin",
                    "not used by the Wasm filter: use Envoy's admin interface; remove it",
                ),
                (
                    "shutdown",
                    "not used by the Wasm filter: Envoy drains its listeners; remove it",
                ),
                (
                    "tracing",
                    "not used by the Wasm filter: configure tracing in Envoy; remove it",
                ),
                (
                    "admin_auth",
                    "not used by the Wasm filter: protect Envoy's admin interface in Envoy; remove it",
                ),
                (
                    "trust_forwarded_from",
                    "Envoy decides who the client is (`xff_num_trusted_hops`, `original_ip_detection_extensions`); remove it",
                ),
                (
                    "limits",
                    "process-wide session caps are the standalone proxy's; in Envoy use its \
                     overload manager and circuit breakers; remove it",
                ),
                (
                    "admin_hosts",
                    "not used by the Wasm filter: the filter has no admin listener; remove it",
                ),
                (
                    "tls",
                    "not used by the Wasm filter: Envoy terminates TLS (a DownstreamTlsContext on its listener); remove it",
                ),
                (
                    "cluster",
                    "not used by the Wasm filter: limits across the mesh are Envoy's global rate limit service (see istio/ratelimit.yaml); remove it",
                ),
            ],
        ),
    };
    let mut c = Config {
        listen: SocketAddr::from(([0, 0, 0, 0], 8080)),
        admin: None,
        shutdown: Shutdown::default(),
        routes: Vec::new(),
        turn: None,
        tracing: None,
        admin_auth: None,
        admin_hosts: Vec::new(),
        limits: super::ProcessLimits::default(),
        trust_forwarded_from: Vec::new(),
        tls: None,
        cluster: None,
    };
    let Some(f) = fields(cx, root, "", allowed, extra) else {
        return c;
    };
    if mode == Mode::Proxy {
        if let Some(n) = f.get("cluster") {
            // Even an invalid `cluster:` counts as present: its own errors say what is wrong,
            // and the routes' `scope: global` need not repeat it.
            cx.cluster = true;
            c.cluster = cluster::cluster(cx, n, "cluster");
        }
        if let Some(n) = f.value("listen")
            && let Some(a) = socket_addr(cx, n, "listen")
        {
            c.listen = a;
        }
        if let Some(n) = f.value("admin") {
            c.admin = socket_addr(cx, n, "admin");
        }
        if let Some(n) = f.get("shutdown")
            && let Some(s) = fields(cx, n, "shutdown", SHUTDOWN, &[])
        {
            if let Some(n) = s.value("drain_timeout")
                && let Some(d) = duration(cx, n, "shutdown.drain_timeout")
            {
                c.shutdown.drain_timeout = d;
            }
            if let Some(n) = s.value("close_code")
                && let Some(code) = drain_close_code(cx, n, "shutdown.close_code")
            {
                c.shutdown.close_code = code;
            }
            if let Some(n) = s.value("spread")
                && let Some(d) = duration(cx, n, "shutdown.spread")
            {
                if d > c.shutdown.drain_timeout {
                    cx.err(
                        "shutdown.spread",
                        n.line,
                        format!(
                            "`spread` ({d:?}) is longer than `drain_timeout` ({:?}): the sessions left at the timeout would be cut",
                            c.shutdown.drain_timeout
                        ),
                    );
                } else {
                    c.shutdown.spread = d;
                }
            }
        }
        if let Some(n) = f.get("tracing") {
            c.tracing = tracing(cx, n, "tracing");
        }
        if let Some(n) = f.get("admin_auth")
            && let Some(a) = fields(cx, n, "admin_auth", ADMIN_AUTH, &[])
            && let Some(token_file) = required_string(cx, &a, "token_file", "`token_file`")
        {
            c.admin_auth = Some(AdminAuth { token_file });
        }
        if let Some(n) = f.value("admin_hosts") {
            c.admin_hosts = admin_hosts(cx, n, "admin_hosts");
        }
        if let Some(n) = f.get("tls") {
            c.tls = tls::tls(cx, n, "tls");
        }
        if let Some(n) = f.value("trust_forwarded_from") {
            c.trust_forwarded_from = scalars::cidr_list(cx, n, "trust_forwarded_from");
        }
        if let Some(n) = f.get("limits")
            && let Some(l) = fields(cx, n, "limits", PROCESS_LIMITS, &[])
        {
            let cap = |cx: &mut Validator, key: &str| {
                let n = l.value(key)?;
                let v = scalars::int_in(
                    cx,
                    n,
                    &l.path(key),
                    1,
                    i64::from(u32::MAX),
                    &format!("`{key}`"),
                )?;
                u32::try_from(v).ok()
            };
            c.limits.max_sessions = cap(cx, "max_sessions");
            c.limits.max_sessions_per_ip = cap(cx, "max_sessions_per_ip");
        }
    }
    match f.value("routes") {
        None => cx.err(
            "routes",
            f.key_line("routes"),
            "missing `routes`: at least one route is needed",
        ),
        Some(n) => c.routes = routes(cx, n, "routes"),
    }
    if let Some(n) = f.get("turn") {
        c.turn = turn(cx, n, "turn");
    }
    c
}

/// `admin_hosts`: host names (no port, no scheme), lower-cased.
fn admin_hosts(cx: &mut Validator, node: &Node, path: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (i, (host, line)) in string_list(cx, node, path).into_iter().enumerate() {
        let ok = !host.is_empty()
            && host.len() <= 253
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
        if ok {
            out.push(host.to_ascii_lowercase());
        } else {
            cx.err(
                &index(path, i),
                line,
                format!("`{host}` is not a host name (letters, digits, `-` and `.`; no port)"),
            );
        }
    }
    out
}

/// A drain's close code: 1001 (going away) or 1012 (service restart).
pub(crate) fn drain_close_code(cx: &mut Validator, n: &Node, path: &str) -> Option<u16> {
    let v = scalars::int(cx, n, path)?;
    match v {
        1001 | 1012 => Some(v as u16),
        _ => {
            cx.err(
                path,
                n.line,
                format!("{v}: a drain closes with 1001 (going away) or 1012 (service restart)"),
            );
            None
        }
    }
}
