//! The admin API: health, readiness, metrics, sessions, config, live weights.
//!
//! Before any path is answered:
//! 1. **`Host`** must name the admin listener: an IP literal (any: a browser page cannot rebind
//!    one), `localhost`, or a name in `admin_hosts` — else 403. This stops DNS rebinding: a page
//!    on `evil.example` that resolves its own name to 127.0.0.1 still sends `Host: evil.example`.
//! 2. With **`admin_auth`**, every path but `/healthz` and `/readyz` needs
//!    `authorization: Bearer <token>` — else 401 with `www-authenticate: Bearer`. The token is
//!    compared in constant time.

mod rollout;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

use crate::http_util::{self, Body};
use crate::state::{ReweightError, Shared};

/// Largest admin request body.
const MAX_BODY: usize = 64 * 1024;

/// Serves the admin API until the task is dropped. It stays up while draining, so `/readyz`
/// can say 503.
pub async fn serve(shared: Arc<Shared>, listener: TcpListener) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, "admin accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let shared = shared.clone();
                async move {
                    Ok::<_, std::convert::Infallible>(
                        http_util::rescue(guarded(&shared, req)).await,
                    )
                }
            });
            let mut b = hyper::server::conn::http1::Builder::new();
            b.timer(TokioTimer::new())
                .header_read_timeout(crate::state::Tuning::default().header_read_timeout);
            let _ = b.serve_connection(TokioIo::new(stream), svc).await;
        });
    }
}

/// The `Host` and `admin_auth` checks, then [`handle`].
async fn guarded(shared: &Shared, req: Request<Incoming>) -> Response<Body> {
    let runtime = shared.runtime();
    let host = req
        .headers()
        .get(http::header::HOST)
        .and_then(|v| v.to_str().ok());
    if let Some(host) = host
        && !host_allowed(host, &runtime.config().admin_hosts)
    {
        tracing::debug!(host, "admin request for another host refused");
        return http_util::text(
            StatusCode::FORBIDDEN,
            "host not allowed: the admin API answers IP addresses, localhost and `admin_hosts`",
        );
    }
    // `/ui` is a static page with no data: it asks for the token itself (`/ui#token=…`).
    let open = matches!(req.uri().path(), "/healthz" | "/readyz" | "/ui");
    if let Some(token) = runtime.admin_token()
        && !open
        && !bearer_matches(req.headers(), token)
    {
        let mut r = http_util::text(StatusCode::UNAUTHORIZED, "admin token required");
        r.headers_mut().insert(
            http::header::WWW_AUTHENTICATE,
            http::HeaderValue::from_static("Bearer"),
        );
        return r;
    }
    drop(runtime);
    handle(shared, req).await
}

/// An IP literal, `localhost`, or one of `admin_hosts` (any port, any case).
fn host_allowed(host: &str, admin_hosts: &[String]) -> bool {
    let name = sigmesh_core::route::host_without_port(host);
    name.parse::<std::net::IpAddr>().is_ok()
        || name.eq_ignore_ascii_case("localhost")
        || admin_hosts.iter().any(|h| h.eq_ignore_ascii_case(name))
}

/// `authorization: Bearer <token>`, compared in constant time.
fn bearer_matches(headers: &http::HeaderMap, token: &str) -> bool {
    let Some(given) = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, rest) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
        })
    else {
        return false;
    };
    let (a, b) = (given.as_bytes(), token.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

pub async fn handle(shared: &Shared, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_owned();
    if let Some(r) = rollout::handle(shared, req.method(), &path) {
        return r;
    }
    match (req.method(), path.as_str()) {
        (&Method::GET, "/healthz") => http_util::text(StatusCode::OK, "ok"),
        (&Method::GET, "/readyz") => {
            if shared.is_draining() {
                let left = shared.sessions().len();
                let of = shared.shutdown_plan().map_or(0, |p| p.total());
                http_util::text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &format!("draining: {left} of {of} sessions left"),
                )
            } else {
                http_util::text(StatusCode::OK, "ready")
            }
        }
        (&Method::GET, "/metrics") => {
            let mut r = Response::new(http_util::full(shared.metrics().encode()));
            r.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
            );
            r
        }
        (&Method::GET, "/turn/allocations") => http_util::json(
            StatusCode::OK,
            serde_json::to_string(&shared.turn().view(shared.sessions()))
                .unwrap_or_else(|_| "[]".into()),
        ),
        (_, "/turn/allocations") => {
            http_util::text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
        }
        (&Method::GET, "/sessions") => {
            let all = shared.sessions().all();
            let views: Vec<_> = all.iter().map(|s| s.snapshot()).collect();
            http_util::json(
                StatusCode::OK,
                serde_json::to_string(&views).unwrap_or_else(|_| "[]".into()),
            )
        }
        (&Method::GET, "/upstreams") => http_util::json(
            StatusCode::OK,
            crate::pool::view(shared.runtime().pools()).to_string(),
        ),
        (&Method::GET, "/config") => {
            let cfg = shared.runtime().effective_config();
            match serde_json::to_string_pretty(&cfg) {
                Ok(s) => http_util::json(StatusCode::OK, s),
                Err(e) => http_util::text(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
            }
        }
        (&Method::PUT, p) if route_weights(p).is_some() => {
            let name = route_weights(p).unwrap_or_default().to_owned();
            let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
                Ok(b) => b.to_bytes(),
                Err(_) => return bad("body too large or unreadable"),
            };
            set_weights(shared, &name, &body)
        }
        (&Method::POST, p) if upstream_drain(p).is_some() => {
            let (route, upstream) = upstream_drain(p).unwrap_or_default();
            let (route, upstream) = (route.to_owned(), upstream.to_owned());
            let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
                Ok(b) => b.to_bytes(),
                Err(_) => return bad("body too large or unreadable"),
            };
            drain_upstream(shared, &route, &upstream, &body)
        }
        (_, "/healthz" | "/readyz" | "/metrics" | "/sessions" | "/config" | "/upstreams") => {
            http_util::text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
        }
        _ => http_util::text(StatusCode::NOT_FOUND, "not found"),
    }
}

/// `/routes/NAME/weights` → `NAME` (one non-empty path segment).
fn route_weights(path: &str) -> Option<&str> {
    let name = path.strip_prefix("/routes/")?.strip_suffix("/weights")?;
    (!name.is_empty() && !name.contains('/')).then_some(name)
}

/// `/routes/NAME/upstreams/UP/drain` → `(NAME, UP)`.
fn upstream_drain(path: &str) -> Option<(&str, &str)> {
    let rest = path.strip_prefix("/routes/")?.strip_suffix("/drain")?;
    let (route, upstream) = rest.split_once("/upstreams/")?;
    let ok = |s: &str| !s.is_empty() && !s.contains('/');
    (ok(route) && ok(upstream)).then_some((route, upstream))
}

/// The body of an upstream drain: both optional.
#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct DrainRequest {
    spread: Option<String>,
    close_code: Option<u16>,
}

/// `POST /routes/NAME/upstreams/UP/drain` with `{"spread": "30s", "close_code": 1012}`:
/// that upstream's live sessions are closed, paced over `spread` (default `shutdown.spread`),
/// with `close_code` (default 1012: service restart, so clients reconnect, to the weights in
/// force). Sessions opened afterwards are not drained by it.
fn drain_upstream(shared: &Shared, route: &str, upstream: &str, body: &[u8]) -> Response<Body> {
    let req: DrainRequest = if body.iter().all(u8::is_ascii_whitespace) {
        DrainRequest::default()
    } else {
        match serde_json::from_slice(body) {
            Ok(r) => r,
            Err(e) => {
                return bad(&format!(
                    "body must be {{\"spread\": \"30s\", \"close_code\": 1012}} (both optional): {e}"
                ));
            }
        }
    };
    let spread = match req
        .spread
        .as_deref()
        .map(sigmesh_core::config::duration_str::parse)
    {
        None => shared.runtime().config().shutdown.spread,
        Some(Ok(d)) if d <= Duration::from_secs(3600) => d,
        Some(Ok(_)) => return bad("`spread` is at most 1h"),
        Some(Err(e)) => return bad(&format!("`spread`: {e}")),
    };
    let code = req
        .close_code
        .unwrap_or(sigmesh_core::frame::close_code::RESTART);
    if !matches!(code, 1001 | 1012) {
        return bad("`close_code` is 1001 (going away) or 1012 (service restart)");
    }
    let sessions = match shared
        .runtime()
        .drain_upstream(route, upstream, spread, code)
    {
        Ok(n) => n,
        Err(e) => return not_found(&e),
    };
    http_util::json(
        StatusCode::OK,
        serde_json::json!({
            "route": route,
            "upstream": upstream,
            "sessions": sessions,
            "spread": sigmesh_core::config::duration_str::format(spread),
            "close_code": code,
        })
        .to_string(),
    )
}

fn not_found(reason: &str) -> Response<Body> {
    http_util::json(
        StatusCode::NOT_FOUND,
        serde_json::json!({ "error": reason }).to_string(),
    )
}

fn bad(reason: &str) -> Response<Body> {
    http_util::json(
        StatusCode::BAD_REQUEST,
        serde_json::json!({ "error": reason }).to_string(),
    )
}

/// `PUT /routes/NAME/weights` with `{"stable": 50, "canary": 50}`. Upstreams not named keep
/// their weight. New sessions use the new weights; live ones keep their upstream. A reload of
/// the config file resets the weights to the file's.
fn set_weights(shared: &Shared, route: &str, body: &[u8]) -> Response<Body> {
    let requested: BTreeMap<String, u32> = match serde_json::from_slice(body) {
        Ok(m) => m,
        Err(e) => {
            return bad(&format!(
                "body must be a JSON object of upstream name to a non-negative integer weight: {e}"
            ));
        }
    };
    match shared.runtime().reweight(route, &requested) {
        Ok(weights) => {
            // Weights set by hand hold the rollout where it is (`resume` goes on).
            if shared
                .rollouts()
                .pause(route, "weights set by hand")
                .is_ok()
            {
                tracing::info!(route, "rollout paused: weights set by hand");
            }
            let weights: BTreeMap<String, u32> = weights.into_iter().collect();
            tracing::info!(route, ?weights, "weights changed");
            http_util::json(
                StatusCode::OK,
                serde_json::to_string(&weights).unwrap_or_default(),
            )
        }
        Err(e @ ReweightError::NoRoute(_)) => http_util::json(
            StatusCode::NOT_FOUND,
            serde_json::json!({ "error": e.to_string() }).to_string(),
        ),
        Err(e) => bad(&format!("route `{route}`: {e}")),
    }
}
