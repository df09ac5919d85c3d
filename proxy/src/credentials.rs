//! `GET {turn.credentials_path}?user=ID` on the main listener: a TURN REST credential
//! ([`sigmesh_core::credentials`]) as JSON, `{username, password, ttl, uris}`, with
//! `cache-control: no-store`.
//!
//! Answered before routing (a route is not needed), and rate-limited with the route machinery:
//! when a route matches the path and has `limits.connections`, its bucket applies (with its
//! key); otherwise a built-in bucket per client IP, [`DEFAULT_RATE`] (10 per second, burst 20),
//! at most [`state::MAX_KEYS`] client IPs. Over the limit: 429 with `retry-after` and the
//! `x-ratelimit-*` headers, counted as `sigmesh_rate_limited_total{limit="credentials"}`.
//!
//! Errors: 400 (JSON `{"error": …}`) for a missing, empty, over-long (256 bytes) or
//! control-character user; 405 for a method other than GET or HEAD.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::header::HeaderValue;
use http::{Method, Request, Response, StatusCode};
use sigmesh_core::bucket::{KeyedBuckets, Verdict};
use sigmesh_core::config::{Rate, Turn};

use crate::http_util::{self, Body};
use crate::state::{self, RouteRuntime, Shared, SharedBuckets};

/// The default credential request rate per client IP.
pub const DEFAULT_RATE: Rate = Rate {
    rate: 10,
    per: Duration::from_secs(1),
    burst: 20,
};

/// The endpoint's own state: the default per-IP bucket set (one per listener).
pub struct Endpoint {
    buckets: SharedBuckets,
}

impl Default for Endpoint {
    fn default() -> Self {
        Endpoint {
            buckets: Arc::new(Mutex::new(KeyedBuckets::new(DEFAULT_RATE, state::MAX_KEYS))),
        }
    }
}

impl Endpoint {
    /// Answers a credential request. `route` is the route the path matched, if any.
    pub fn handle<B>(
        &self,
        shared: &Shared,
        turn: &Turn,
        route: Option<&RouteRuntime>,
        req: &Request<B>,
        client: SocketAddr,
    ) -> Response<Body> {
        if req.method() != Method::GET && req.method() != Method::HEAD {
            let mut r = http_util::text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
            r.headers_mut()
                .insert(http::header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            return r;
        }
        if let Some(limited) = self.check_limit(shared, route, req, client) {
            return limited;
        }
        let user = req
            .uri()
            .query()
            .and_then(|q| sigmesh_core::signal::query_param(q, "user"))
            .unwrap_or_default();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut r = match sigmesh_core::credentials::credential(
            &turn.secret,
            &user,
            now,
            turn.ttl,
            &turn.uris,
        ) {
            Ok(c) => http_util::json(
                StatusCode::OK,
                serde_json::to_string(&c).unwrap_or_default(),
            ),
            Err(e) => http_util::json(
                StatusCode::BAD_REQUEST,
                serde_json::json!({ "error": format!("{e}: pass ?user=ID") }).to_string(),
            ),
        };
        r.headers_mut().insert(
            http::header::CACHE_CONTROL,
            HeaderValue::from_static("no-store"),
        );
        r
    }

    fn check_limit<B>(
        &self,
        shared: &Shared,
        route: Option<&RouteRuntime>,
        req: &Request<B>,
        client: SocketAddr,
    ) -> Option<Response<Body>> {
        if let Some(route) = route
            && route.connections.is_some()
        {
            return crate::server::check_connection_limit(shared, route, req.headers(), client);
        }
        match state::take(&self.buckets, &client.ip().to_string()) {
            Verdict::Allow { .. } => None,
            Verdict::Limited { retry_after } => {
                let name = route.map_or("", |r| r.route.name.as_str());
                shared.metrics.rate_limited(name, "credentials");
                Some(crate::server::too_many_requests(&DEFAULT_RATE, retry_after))
            }
        }
    }
}
