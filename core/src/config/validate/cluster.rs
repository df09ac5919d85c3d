//! `cluster:` (Redis shared by the replicas) and the `scope` of a limit.

use std::time::Duration;

use super::super::tree::Node;
use super::super::{Cluster, OnClusterError, Scope};
use super::fields::{Fields, fields};
use super::scalars::{duration, string, url};
use super::{Mode, Validator};

const CLUSTER: &[&str] = &["redis", "timeout", "on_error", "lease", "key_prefix"];

/// The longest `cluster.timeout`: a decision that waits longer than this for Redis is not a
/// fast path any more (Envoy's ratelimit users report what a 10 s wait does, #978).
const MAX_TIMEOUT: Duration = Duration::from_secs(5);

/// `cluster: { redis, timeout, on_error, lease, key_prefix }`.
pub(super) fn cluster(cx: &mut Validator, node: &Node, path: &str) -> Option<Cluster> {
    let f = fields(cx, node, path, CLUSTER, &[])?;
    let redis = match f.value("redis") {
        None => {
            cx.err(
                &f.path("redis"),
                f.key_line("redis"),
                "missing `redis` (such as `redis://127.0.0.1:6379/0`)",
            );
            None
        }
        Some(n) => redis_url(cx, n, &f.path("redis")),
    };
    let timeout = bounded(cx, &f, "timeout", Duration::from_millis(50), MAX_TIMEOUT);
    let lease = bounded(
        cx,
        &f,
        "lease",
        Duration::from_secs(15),
        Duration::from_secs(3600),
    );
    if lease < Duration::from_secs(1) {
        cx.err(
            &f.path("lease"),
            f.key_line("lease"),
            "`lease` must be at least 1s (it is refreshed every third of it)",
        );
    }
    let mut on_error = OnClusterError::Allow;
    if let Some(n) = f.value("on_error")
        && let Some(v) = string(cx, n, &f.path("on_error"))
    {
        match v.trim() {
            "allow" => {}
            "deny" => on_error = OnClusterError::Deny,
            other => cx.err(
                &f.path("on_error"),
                n.line,
                format!("`{other}`: expected `allow` (fail open) or `deny` (fail closed)"),
            ),
        }
    }
    let mut key_prefix = "sigmesh:".to_owned();
    if let Some(n) = f.value("key_prefix")
        && let Some(v) = string(cx, n, &f.path("key_prefix"))
    {
        if v.len() > 64
            || v.bytes()
                .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
        {
            cx.err(
                &f.path("key_prefix"),
                n.line,
                "`key_prefix`: at most 64 bytes, no spaces or control characters",
            );
        } else {
            key_prefix = v;
        }
    }
    Some(Cluster {
        redis: redis?,
        timeout,
        on_error,
        lease,
        key_prefix,
    })
}

/// A duration above zero and at most `max`; `default` when absent.
fn bounded(
    cx: &mut Validator,
    f: &Fields<'_>,
    key: &str,
    default: Duration,
    max: Duration,
) -> Duration {
    let Some(n) = f.value(key) else {
        return default;
    };
    match duration(cx, n, &f.path(key)) {
        Some(d) if d.is_zero() => {
            cx.err(&f.path(key), n.line, format!("`{key}` must be more than 0"));
            default
        }
        Some(d) if d > max => {
            cx.err(&f.path(key), n.line, format!("`{key}` is at most {max:?}"));
            default
        }
        Some(d) => d,
        None => default,
    }
}

/// `redis://`, `rediss://` (TLS), or `redis+unix:///absolute/path` (a Unix socket).
fn redis_url(cx: &mut Validator, n: &Node, path: &str) -> Option<String> {
    if let Some(s) = string(cx, n, path)
        && let Some(rest) = s
            .strip_prefix("redis+unix://")
            .or_else(|| s.strip_prefix("unix://"))
    {
        if !rest.starts_with('/') {
            cx.err(
                path,
                n.line,
                format!("`{s}`: a Unix socket URL names an absolute path: `redis+unix:///run/redis.sock`"),
            );
            return None;
        }
        return Some(s);
    }
    url(
        cx,
        n,
        path,
        &["redis", "rediss"],
        " (`rediss://` for TLS, `redis+unix:///path` for a Unix socket)",
    )
}

/// A limit's `scope`: `local` (default) or `global`, which needs `cluster:` (the standalone
/// proxy) and maps to Envoy's global rate limit service in Istio mode (the filter).
pub(super) fn scope(cx: &mut Validator, f: &Fields<'_>, what: &str) -> Scope {
    let Some(n) = f.value("scope") else {
        return Scope::Local;
    };
    let path = f.path("scope");
    let Some(v) = string(cx, n, &path) else {
        return Scope::Local;
    };
    match v.trim() {
        "local" => Scope::Local,
        "global" => match cx.mode {
            Mode::Filter => {
                cx.err(
                    &path,
                    n.line,
                    format!(
                        "the Wasm filter keeps {what} in Envoy's shared data (per Envoy); for a \
                         limit across the mesh use Envoy's global rate limit service (a \
                         `ratelimit` descriptor: see istio/ratelimit.yaml) and remove `scope`"
                    ),
                );
                Scope::Local
            }
            Mode::Proxy if !cx.cluster => {
                cx.err(
                    &path,
                    n.line,
                    "`global` needs `cluster.redis` (the store the replicas share): add a \
                     top-level `cluster: { redis: redis://HOST:6379/0 }`, or use `scope: local`",
                );
                Scope::Local
            }
            Mode::Proxy => Scope::Global,
        },
        other => {
            cx.err(
                &path,
                n.line,
                format!("`{other}`: expected `local` or `global`"),
            );
            Scope::Local
        }
    }
}
