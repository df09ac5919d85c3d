//! The request path of the standalone proxy, top to bottom.
//!
//! ```text
//! hyper request ─► RequestFacts ─► sigmesh_core::request::decide ─► Verdict
//!   NoRoute            ─► 404                                  (counted: outcome no_route)
//!   Respond(reply)     ─► the reply (403, 429, 503, credentials, …), counted in one place
//!   AskCredentialsAuth ─► credentials_auth: the app's auth endpoint, then core's reply
//!   Upgrade(u)         ─► ws::upgrade: upstream handshake first, 502 or 101, then the session
//!   AwaitFirstMessage  ─► ws::await_first: 101, the first message picks the upstream
//!   Forward(f)         ─► forward::Forwarder: plain HTTP to the picked upstream
//! ```
//!
//! The order of the checks, and every decision, are core's ([`sigmesh_core::request`]); this
//! module gathers what hyper knows, and turns the verdict into what tokio and hyper do.

use std::net::SocketAddr;
use std::sync::Arc;

use http::header::{HeaderName, HeaderValue};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use sigmesh_core::config::OnClusterError;
use sigmesh_core::label::Outcome;
use sigmesh_core::request::{self, Admission, Global, Reply, RequestFacts, SessionCounts, Verdict};

use crate::clock;
use crate::cluster::GlobalLease;
use crate::forward::Forwarder;
use crate::http_util::{self, Body, HeaderView};
use crate::state::{Runtime, Shared};
use crate::telemetry::{RequestInfo, SessionTrace};

/// Handles one request of a client connection.
pub async fn handle(
    shared: Arc<Shared>,
    forwarder: Arc<Forwarder>,
    req: Request<Incoming>,
    client: SocketAddr,
) -> Response<Body> {
    let runtime = shared.runtime();
    let verdict = decide(&shared, &runtime, &req, client);
    match verdict {
        Verdict::NoRoute => {
            shared.metrics().connection("", "", Outcome::NoRoute);
            response(Reply::no_route())
        }
        Verdict::Respond(reply) => refuse(&shared, &runtime, &req, client, reply),
        Verdict::AskCredentialsAuth(check) => {
            let reply = forwarder
                .auth
                .decide(&check, clock::unix_secs(), shared.metrics())
                .await;
            refuse(&shared, &runtime, &req, client, reply)
        }
        Verdict::Upgrade(upgrade) => {
            let global = match admit(&shared, &runtime, upgrade.route, &upgrade.global).await {
                Ok(global) => global,
                Err(reply) => {
                    release(&shared, &upgrade.leases);
                    return refuse(&shared, &runtime, &req, client, reply);
                }
            };
            let trace = ws_trace(&shared, &runtime, upgrade.route, &req, client);
            crate::ws::upgrade(shared, runtime, upgrade, global, req, client, trace).await
        }
        Verdict::AwaitFirstMessage(wait) => {
            let global = match admit(&shared, &runtime, wait.route, &wait.global).await {
                Ok(global) => global,
                Err(reply) => {
                    release(&shared, &wait.leases);
                    return refuse(&shared, &runtime, &req, client, reply);
                }
            };
            let trace = ws_trace(&shared, &runtime, wait.route, &req, client);
            crate::ws::await_first(shared, runtime, wait, global, req, client, trace)
        }
        Verdict::Forward(fwd) => {
            if let Err(reply) = admit(&shared, &runtime, fwd.route, &fwd.global).await {
                return refuse(&shared, &runtime, &req, client, reply);
            }
            forwarder.forward(&shared, &runtime, fwd, req, client).await
        }
    }
}

/// The `scope: global` part of a verdict, asked of `cluster.redis` (one script call) and
/// judged by core: the session's global place, or core's refusal (429, or 503 with
/// `on_error: deny`).
async fn admit(
    shared: &Shared,
    runtime: &Runtime,
    route: usize,
    global: &Global,
) -> Result<Option<GlobalLease>, Reply> {
    if global.is_empty() {
        return Ok(None);
    }
    let (answer, lease, on_error) = match shared.cluster() {
        Some(cluster) => {
            let (answer, lease) = cluster
                .admit(&runtime.route(route).route.name, global)
                .await;
            (answer, lease, cluster.on_error())
        }
        // Only while a reload drops `cluster:` under a request of the old generation.
        None => (
            Admission::Failed,
            None,
            runtime
                .config()
                .cluster
                .as_ref()
                .map_or(OnClusterError::Deny, |c| c.on_error),
        ),
    };
    match global.judge(route, answer, on_error) {
        None => Ok(lease),
        Some(reply) => Err(reply),
    }
}

/// Gives back the local places of a request refused before its session started.
fn release(shared: &Shared, leases: &[request::Lease]) {
    for l in leases {
        shared.counts().release(&l.cap, &l.key);
    }
}

/// What hyper knows about the request, decided by core.
fn decide(
    shared: &Shared,
    runtime: &Runtime,
    req: &Request<Incoming>,
    client: SocketAddr,
) -> Verdict {
    let headers = HeaderView(req.headers());
    let forwarded = req
        .headers()
        .get("x-forwarded-for")
        .and_then(|v| v.to_str().ok());
    let client_ip = request::client_address(
        client.ip(),
        forwarded,
        &runtime.config().trust_forwarded_from,
    )
    .to_string();
    let facts = RequestFacts {
        method: req.method().as_str(),
        // HTTP/2 extended CONNECT (RFC 8441): `:protocol`.
        protocol: req
            .extensions()
            .get::<hyper::ext::Protocol>()
            .map(hyper::ext::Protocol::as_str),
        host: req
            .headers()
            .get(http::header::HOST)
            .and_then(|v| v.to_str().ok())
            .or_else(|| req.uri().authority().map(|a| a.as_str())),
        path: req.uri().path(),
        query: req.uri().query(),
        headers: &headers,
        client_ip: &client_ip,
        now: clock::now(),
        unix_secs: clock::unix_secs(),
        random: rand::random(),
        draining: shared.is_draining(),
    };
    request::decide(
        runtime.compiled(),
        &facts,
        runtime,
        runtime,
        &**shared.counts(),
    )
}

/// A local answer: counted (the one place a refusal becomes metrics), traced as a refused
/// session when it answers an upgrade.
fn refuse(
    shared: &Shared,
    runtime: &Runtime,
    req: &Request<Incoming>,
    client: SocketAddr,
    reply: Reply,
) -> Response<Body> {
    let route = reply
        .route
        .map_or("", |i| runtime.route(i).route.name.as_str());
    if let Some(limit) = reply.limit() {
        shared.metrics().rate_limited(route, limit);
    }
    if let Some(outcome) = reply.outcome() {
        shared.metrics().connection(route, "", outcome);
    }
    if reply.upgrade
        && let Some(i) = reply.route
        && let Some(t) = ws_trace(shared, runtime, i, req, client)
    {
        t.refused(reply.status);
    }
    response(reply)
}

/// Core's reply as a hyper response.
pub fn response(reply: Reply) -> Response<Body> {
    let body = if reply.content_type.starts_with("text/") {
        format!("{}\n", reply.body)
    } else {
        reply.body
    };
    let mut r = Response::new(http_util::full(body));
    *r.status_mut() =
        StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let h = r.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static(reply.content_type),
    );
    for (name, value) in reply.headers {
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            h.insert(n, v);
        }
    }
    r
}

/// The `ws.session` span of an upgrade on route `route` (none with tracing off).
fn ws_trace(
    shared: &Shared,
    runtime: &Runtime,
    route: usize,
    req: &Request<Incoming>,
    client: SocketAddr,
) -> Option<Arc<SessionTrace>> {
    shared.telemetry().ws_session(&RequestInfo {
        route: &runtime.route(route).route.name,
        method: req.method().as_str(),
        path: req.uri().path(),
        headers: req.headers(),
        client,
    })
}
