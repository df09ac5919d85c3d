//! The main listener: accept, read the request head (bounded in time), route, and hand the
//! request to the WebSocket side or the HTTP forwarder.
//!
//! Per request, in order (each step can answer on its own):
//! 1. draining? — 503 (the listener is closed too, so this only hits keep-alive connections);
//! 2. TURN credentials path (when configured) — answered locally, whether a route matches or
//!    not ([`crate::credentials`]);
//! 3. route — 404 when nothing matches;
//! 4. a `websocket:` route with an upgrade — [`crate::ws::handle`] (origin 403, bucket 429,
//!    upstream 502, then 101);
//! 5. anything else — connection bucket (429) and [`crate::forward`] to the split upstream.

use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use http::header::HeaderValue;
use http::{HeaderMap, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use sigmesh_core::bucket::Verdict;
use sigmesh_core::config::{Rate, Sticky};
use sigmesh_core::frame::policy;
use sigmesh_core::route::RequestHead;
use tokio::net::TcpListener;

use crate::forward::Forwarder;
use crate::http_util::{self, Body, HeaderView};
use crate::state::{self, RouteRuntime, Shared};

/// Accepts on `listener` until the drain starts, then closes it (new connections are refused)
/// and asks open HTTP connections to finish. Upgraded sessions are not tracked here: they
/// close themselves on the drain signal.
pub async fn serve(shared: Arc<Shared>, listener: TcpListener) {
    let forwarder = Arc::new(Forwarder::new());
    let credentials = Arc::new(crate::credentials::Endpoint::default());
    loop {
        let (stream, client) = tokio::select! {
            r = listener.accept() => match r {
                Ok(ok) => ok,
                Err(e) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shared.drain.cancelled() => break,
        };
        let _ = stream.set_nodelay(true);
        let drain = shared.drain.clone();
        let header_timeout = shared.tuning.header_read_timeout;
        let shared = shared.clone();
        let forwarder = forwarder.clone();
        let credentials = credentials.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let shared = shared.clone();
                let forwarder = forwarder.clone();
                let credentials = credentials.clone();
                async move {
                    Ok::<_, std::convert::Infallible>(
                        dispatch(shared, forwarder, credentials, req, client).await,
                    )
                }
            });
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout);
            let mut conn = pin!(
                builder
                    .serve_connection(TokioIo::new(stream), svc)
                    .with_upgrades()
            );
            tokio::select! {
                r = conn.as_mut() => { if let Err(e) = r { tracing::debug!(error = %e, "connection ended with an error") } }
                _ = drain.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(Duration::from_secs(5), conn.as_mut()).await;
                }
            }
        });
    }
    drop(listener);
}

async fn dispatch(
    shared: Arc<Shared>,
    forwarder: Arc<Forwarder>,
    credentials: Arc<crate::credentials::Endpoint>,
    req: Request<Incoming>,
    client: SocketAddr,
) -> Response<Body> {
    if shared.is_draining() {
        let mut r = http_util::text(StatusCode::SERVICE_UNAVAILABLE, "draining");
        r.headers_mut()
            .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
        return r;
    }
    let runtime = shared.runtime.load_full();
    let host = req
        .headers()
        .get(http::header::HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| req.uri().authority().map(|a| a.as_str()));
    let head = RequestHead {
        host,
        path: req.uri().path(),
        headers: &HeaderView(req.headers()),
    };
    // TURN credentials: answered here, routed or not (a matching route lends its bucket).
    if let Some(turn) = &runtime.config.turn
        && req.uri().path() == turn.credentials_path
    {
        let route = runtime
            .table
            .find(&head)
            .and_then(|i| runtime.routes.get(i));
        return credentials.handle(&shared, turn, route.map(|r| &**r), &req, client);
    }
    let Some(index) = runtime.table.find(&head) else {
        shared.metrics.connection("", "", "no_route");
        return http_util::text(StatusCode::NOT_FOUND, "no route");
    };
    let Some(route) = runtime.routes.get(index).cloned() else {
        return http_util::text(StatusCode::NOT_FOUND, "no route");
    };
    drop(runtime);
    if route.route.websocket.is_some() && crate::ws::is_upgrade(&req) {
        return crate::ws::handle(shared, route, req, client).await;
    }
    if let Some(resp) = check_connection_limit(&shared, &route, req.headers(), client) {
        return resp;
    }
    forwarder.forward(&shared, &route, req, client).await
}

/// Applies the route's connection bucket; `Some(429)` when it is empty.
pub fn check_connection_limit(
    shared: &Shared,
    route: &RouteRuntime,
    headers: &HeaderMap,
    client: SocketAddr,
) -> Option<Response<Body>> {
    let (buckets, key) = route.connections.as_ref()?;
    let client_ip = client.ip().to_string();
    let key = policy::connection_key(key, &client_ip, &HeaderView(headers));
    match state::take(buckets, &key) {
        Verdict::Allow { .. } => None,
        Verdict::Limited { retry_after } => {
            let rate = route.route.limits.connections.as_ref()?.rate;
            shared
                .metrics
                .rate_limited(&route.route.name, "connections");
            shared
                .metrics
                .connection(&route.route.name, "", "rate_limited");
            Some(too_many_requests(&rate, retry_after))
        }
    }
}

/// 429 with `retry-after` and the `x-ratelimit-*` headers, as core computes them.
pub fn too_many_requests(rate: &Rate, retry_after: Duration) -> Response<Body> {
    let mut r = http_util::text(StatusCode::TOO_MANY_REQUESTS, "rate limited");
    for (name, value) in policy::RateLimited::new(rate, retry_after).headers() {
        if let Ok(v) = HeaderValue::from_str(&value) {
            r.headers_mut().insert(name, v);
        }
    }
    r
}

/// The sticky key of a request (`query:`, `header:` or `cookie:`), which is also the
/// session's room when the messages name none.
pub fn sticky_room(route: &RouteRuntime, req: &Request<Incoming>) -> Option<String> {
    match &route.route.split.sticky {
        Sticky::None | Sticky::Message(_) => None,
        sticky => {
            sigmesh_core::signal::sticky_key(sticky, req.uri().query(), &HeaderView(req.headers()))
        }
    }
}
