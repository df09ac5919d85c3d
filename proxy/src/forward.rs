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
        let uname = route.upstreams[fwd.upstream].name.as_str();
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
        // `Compiled` parsed every URL.
        let Some(target) = compiled.targets[fwd.upstream].as_ref() else {
            failed(UpstreamErrorKind::Config);
            return http_util::text(StatusCode::BAD_GATEWAY, "bad upstream url");
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
        let sent = match runtime.upstream_tls(fwd.route, fwd.upstream) {
            Some(tls) if target.tls => {
                let authority = target.authority.clone();
                let tls = tls.clone();
                futures_util::future::Either::Left(
                    async move { send_tls(req, &authority, &tls).await },
                )
            }
            _ => futures_util::future::Either::Right(async {
                self.client.request(req).await.map_err(Failure::from)
            }),
        };
        match tokio::time::timeout(RESPONSE_TIMEOUT, sent).await {
            Ok(Ok(mut resp)) => {
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
                resp.map(|b| b.boxed())
            }
            Ok(Err(e)) => {
                tracing::warn!(route = rname, upstream = uname, error = %e, "upstream request failed");
                let kind = e.kind();
                failed(kind);
                let mut r = http_util::text(StatusCode::BAD_GATEWAY, "upstream request failed");
                r.headers_mut().insert(
                    "x-sigmesh-upstream-error",
                    HeaderValue::from_static(kind.as_str()),
                );
                r
            }
            Err(_) => {
                failed(UpstreamErrorKind::Timeout);
                http_util::text(StatusCode::GATEWAY_TIMEOUT, "upstream timed out")
            }
        }
    }
}

/// Why a forwarded request got no response.
#[derive(Debug, thiserror::Error)]
enum Failure {
    #[error("{0}")]
    Http(#[from] hyper_util::client::legacy::Error),
    #[error("connect: {0}")]
    Connect(std::io::Error),
    #[error("tls: {0}")]
    Tls(std::io::Error),
    #[error("{0}")]
    Exchange(#[from] hyper::Error),
}

impl Failure {
    fn kind(&self) -> UpstreamErrorKind {
        match self {
            Failure::Http(e) if e.is_connect() => UpstreamErrorKind::Connect,
            Failure::Connect(_) => UpstreamErrorKind::Connect,
            Failure::Tls(_) => UpstreamErrorKind::Tls,
            Failure::Http(_) | Failure::Exchange(_) => UpstreamErrorKind::Reset,
        }
    }
}

/// One request to an `https://` upstream on a connection of its own (TLS verified as
/// [`crate::upstream_tls`] says). Not pooled yet: each request pays a TLS handshake.
async fn send_tls(
    mut req: Request<Incoming>,
    authority: &str,
    tls: &crate::upstream_tls::UpstreamTls,
) -> Result<Response<Incoming>, Failure> {
    let tcp = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(authority))
        .await
        .map_err(|_| Failure::Connect(std::io::ErrorKind::TimedOut.into()))?
        .map_err(Failure::Connect)?;
    let _ = tcp.set_nodelay(true);
    let stream = tokio_rustls::TlsConnector::from(tls.config.clone())
        .connect(tls.server_name.clone(), tcp)
        .await
        .map_err(Failure::Tls)?;
    let io = hyper_util::rt::TokioIo::new(crate::io::Stream::TlsClient(Box::new(stream)));
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await?;
    // The connection ends once the response body is read and the sender is gone.
    tokio::spawn(async move {
        let _ = conn.await;
    });
    // Origin form on a connection of its own, with the upstream's Host.
    let pq = req
        .uri()
        .path_and_query()
        .map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned());
    if let Ok(uri) = pq.parse::<Uri>() {
        *req.uri_mut() = uri;
    }
    if let Ok(host) = HeaderValue::from_str(authority) {
        req.headers_mut().insert(header::HOST, host);
    }
    Ok(sender.send_request(req).await?)
}
