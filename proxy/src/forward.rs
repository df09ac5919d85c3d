//! Plain HTTP forwarding: routes without `websocket:`, and requests without an upgrade on
//! WebSocket routes (Socket.IO/Engine.IO long-polling shares the route and the split).
//! Bodies stream both ways; hop-by-hop headers are removed.

use std::net::SocketAddr;
use std::time::Duration;

use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode, Uri};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use sigmesh_core::compiled::Target;
use sigmesh_core::label::UpstreamErrorKind;
use sigmesh_core::request::Forward;

use crate::http_util::{self, Body};
use crate::state::{Runtime, Shared};

/// Upstream TCP connect must finish within this.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The upstream's response head must arrive within this.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(60);

pub struct Forwarder {
    client: Client<HttpConnector, Incoming>,
    /// The client of `turn.credentials_auth`.
    pub auth: crate::credentials_auth::AuthClient,
    /// Pooled TLS connections to `https://` upstreams.
    https: crate::https_pool::Pools,
}

impl Default for Forwarder {
    fn default() -> Self {
        Self::new()
    }
}

impl Forwarder {
    pub fn new() -> Forwarder {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(64)
            .build(connector);
        Forwarder {
            client,
            auth: Default::default(),
            https: Default::default(),
        }
    }

    /// Forwards `req`; with tracing on, inside an `http.request` span whose context is the
    /// upstream request's `traceparent`.
    pub async fn forward(
        &self,
        shared: &Shared,
        runtime: &Runtime,
        fwd: Forward,
        req: Request<Incoming>,
        client: SocketAddr,
    ) -> Response<Body> {
        let trace = shared
            .telemetry()
            .http_request(&crate::telemetry::RequestInfo {
                route: &runtime.route(fwd.route).route.name,
                method: req.method().as_str(),
                path: req.uri().path(),
                headers: req.headers(),
                client,
            });
        let resp = self
            .forward_traced(shared, runtime, &fwd, req, client, trace.as_ref())
            .await;
        if let Some(t) = trace {
            t.finish(resp.status().as_u16());
        }
        resp
    }

    async fn forward_traced(
        &self,
        shared: &Shared,
        runtime: &Runtime,
        fwd: &Forward,
        mut req: Request<Incoming>,
        client: SocketAddr,
        trace: Option<&crate::telemetry::RequestTrace>,
    ) -> Response<Body> {
        let compiled = runtime.route(fwd.route);
        let route = &compiled.route;
        let rname = route.name.as_str();
        // `affinity: engine_io`: a request carrying a known sid goes where it was issued; one
        // that opens a session has its answer read for the sid. Routes without it skip both.
        let (pinned, opens_engine_io) = match runtime.pools().sids(fwd.route) {
            None => (None, false),
            Some(_) => {
                let query = req.uri().query();
                let pinned = crate::pool::engine_io::sid_of(query)
                    .and_then(|sid| runtime.pools().pinned(fwd.route, sid));
                (pinned, crate::pool::engine_io::is_open(query))
            }
        };
        let upstream = pinned.as_ref().map_or(fwd.upstream, |(u, _)| *u);
        let uname = route.upstreams[upstream].name.as_str();
        let metrics = shared.metrics();
        if let Some(t) = trace {
            t.picked(uname);
        }
        let failed = |kind: UpstreamErrorKind| {
            if let Some(t) = trace {
                t.error(kind.as_str());
            }
            metrics.upstream_error(rname, uname, kind);
        };
        // An endpoint of the upstream, held for the request.
        let lease = match pinned {
            Some((_, lease)) => Some(lease),
            None => runtime
                .pools()
                .get(fwd.route, upstream)
                .and_then(|p| p.pick(fwd.room.as_deref(), rand::random())),
        };
        let Some(lease) = lease else {
            failed(UpstreamErrorKind::Unavailable);
            return http_util::text(
                StatusCode::SERVICE_UNAVAILABLE,
                "no healthy upstream endpoint",
            );
        };
        let ep = lease.endpoint();
        // A DNS endpoint is dialled by its address; the Host stays the name.
        let dialled;
        let target = match ep.dial {
            Some(addr) => {
                dialled = Target {
                    authority: addr.to_string(),
                    ..ep.target.clone()
                };
                &dialled
            }
            None => &ep.target,
        };
        let pq = http_util::upstream_path_and_query(req.uri());
        let uri = target.request_uri("http", route.matcher.path_prefix.as_deref(), &pq);
        let Ok(uri) = uri.parse::<Uri>() else {
            return http_util::text(StatusCode::BAD_REQUEST, "bad request path");
        };
        let proto = http_util::scheme_of(&req);
        // An HTTP/2 request (TLS with h2) goes upstream as HTTP/1.1; its `:authority` is the
        // Host.
        let original_host = req.headers().get(header::HOST).cloned().or_else(|| {
            req.uri()
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        });
        *req.version_mut() = http::Version::HTTP_11;
        *req.uri_mut() = uri;
        let h = req.headers_mut();
        http_util::strip_hop_by_hop(h);
        http_util::apply_edits(h, &fwd.edits);
        h.remove(header::HOST);
        if let Some(host) = original_host {
            h.insert("x-forwarded-host", host);
        }
        http_util::set_forwarded(h, client.ip(), proto, runtime.trusts(client.ip()));
        match trace {
            Some(t) => t.inject(h),
            None => http_util::ensure_traceparent(h),
        }
        if ep.dial.is_some()
            && let Ok(host) = HeaderValue::from_str(&ep.target.authority)
        {
            h.insert(header::HOST, host);
        }
        let sent = match lease.tls() {
            Some(tls) if target.tls => self.https.client(tls, CONNECT_TIMEOUT).request(req),
            _ => self.client.request(req),
        };
        match tokio::time::timeout(RESPONSE_TIMEOUT, sent).await {
            Ok(Ok(mut resp)) => {
                if resp.status().is_server_error() {
                    lease.failed(&format!("answered {}", resp.status().as_u16()));
                } else {
                    lease.passed();
                }
                http_util::strip_hop_by_hop(resp.headers_mut());
                let class = match resp.status().as_u16() {
                    100..=199 => "1xx",
                    200..=299 => "2xx",
                    300..=399 => "3xx",
                    400..=499 => "4xx",
                    _ => "5xx",
                };
                metrics
                    .http_requests
                    .get_or_create(&crate::metrics::ConnLabels {
                        route: rname.to_owned(),
                        upstream: uname.to_owned(),
                        outcome: class,
                    })
                    .inc();
                if opens_engine_io && resp.status().is_success() {
                    return remember_sid(runtime, fwd.route, upstream, &lease, resp).await;
                }
                resp.map(|b| b.boxed())
            }
            Ok(Err(e)) => {
                tracing::warn!(route = rname, upstream = uname, error = %e, "upstream request failed");
                let kind = failure_kind(&e);
                failed(kind);
                lease.failed(&e.to_string());
                let mut r = http_util::text(StatusCode::BAD_GATEWAY, "upstream request failed");
                r.headers_mut().insert(
                    "x-sigmesh-upstream-error",
                    HeaderValue::from_static(kind.as_str()),
                );
                r
            }
            Err(_) => {
                failed(UpstreamErrorKind::Timeout);
                lease.failed("response timed out");
                http_util::text(StatusCode::GATEWAY_TIMEOUT, "upstream timed out")
            }
        }
    }
}

/// An Engine.IO open answer: read (bounded) to take its sid, remembered for the endpoint that
/// issued it, then passed on whole.
async fn remember_sid(
    runtime: &Runtime,
    route: usize,
    upstream: usize,
    lease: &crate::pool::Lease,
    resp: Response<Incoming>,
) -> Response<Body> {
    use crate::pool::engine_io::{MAX_OPEN_PACKET, sid_in_open_packet};
    let (parts, body) = resp.into_parts();
    let body = match http_body_util::Limited::new(body, MAX_OPEN_PACKET)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            tracing::warn!(error = %e, "engine.io open answer unreadable or over {MAX_OPEN_PACKET} bytes");
            return http_util::text(StatusCode::BAD_GATEWAY, "upstream answer too large");
        }
    };
    match (sid_in_open_packet(&body), runtime.pools().sids(route)) {
        (Some(sid), Some(sids)) => sids.insert(&sid, upstream, lease.endpoint_arc().clone()),
        _ => tracing::debug!("engine.io open answer without a sid"),
    }
    let mut parts = parts;
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.remove(header::TRANSFER_ENCODING);
    Response::from_parts(parts, http_util::full(body))
}

/// The `kind` of a forwarded request's failure.
fn failure_kind(e: &hyper_util::client::legacy::Error) -> UpstreamErrorKind {
    if crate::https_pool::is_tls(e) {
        UpstreamErrorKind::Tls
    } else if e.is_connect() {
        UpstreamErrorKind::Connect
    } else {
        UpstreamErrorKind::Reset
    }
}
