//! Small HTTP helpers shared by the listener, the WebSocket handshake and the forwarder.

use std::convert::Infallible;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};

/// Every response body sigmesh sends.
pub type Body = BoxBody<Bytes, hyper::Error>;

/// A body from bytes.
pub fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into())
        .map_err(|never: Infallible| match never {})
        .boxed()
}

/// A short local answer: `status` with a text body ending in a newline.
pub fn text(status: StatusCode, msg: &str) -> Response<Body> {
    let mut r = Response::new(full(format!("{msg}\n")));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// A JSON answer.
pub fn json(status: StatusCode, body: String) -> Response<Body> {
    let mut r = Response::new(full(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// Runs a request's handler; a panic in it (a bug: no input should reach one) becomes a 500
/// and an error log instead of a reset connection. The one rescue point of both listeners.
pub async fn rescue(handler: impl std::future::Future<Output = Response<Body>>) -> Response<Body> {
    use futures_util::FutureExt;
    match std::panic::AssertUnwindSafe(handler).catch_unwind().await {
        Ok(r) => r,
        Err(_) => {
            tracing::error!("request handler panicked; answered 500");
            text(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
        }
    }
}

/// Hop-by-hop headers (RFC 9110 §7.6.1), never forwarded.
pub const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Whether a comma-separated header (`Connection`, `Upgrade`, ...) lists `token`, in any case.
pub fn has_token(headers: &HeaderMap, name: HeaderName, token: &str) -> bool {
    sigmesh_core::request::has_token(&HeaderView(headers), name.as_str(), token)
}

/// Removes hop-by-hop headers, including those named by `Connection`.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for n in named.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(n);
    }
    headers.remove("proxy-connection");
}

/// Sets `x-forwarded-for` and `x-forwarded-proto`: the peer is appended to what a trusted proxy
/// (`trust_forwarded_from`) sent; from anyone else the header is replaced by the peer, so a
/// client cannot make up the hops before it.
/// Marks a request that came over TLS on `listen` (a request extension set by the listener).
#[derive(Debug, Clone, Copy)]
pub struct Secure;

/// `https` for a request that came over TLS, else `http` (for `x-forwarded-proto`).
pub fn scheme_of<B>(req: &http::Request<B>) -> &'static str {
    if req.extensions().get::<Secure>().is_some() {
        "https"
    } else {
        "http"
    }
}

pub fn set_forwarded(
    headers: &mut HeaderMap,
    peer: std::net::IpAddr,
    proto: &'static str,
    trusted_peer: bool,
) {
    let prev = headers
        .get("x-forwarded-for")
        .and_then(|v| v.to_str().ok())
        .filter(|p| trusted_peer && !p.trim().is_empty());
    let xff = match prev {
        Some(prev) => format!("{prev}, {peer}"),
        None => peer.to_string(),
    };
    if let Ok(v) = HeaderValue::from_str(&xff) {
        headers.insert("x-forwarded-for", v);
    }
    headers.insert("x-forwarded-proto", HeaderValue::from_static(proto));
}

/// Keeps a valid incoming W3C `traceparent`, or starts a new trace with a fresh one.
pub fn ensure_traceparent(headers: &mut HeaderMap) {
    let valid = headers
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.len() == 55
                && v.as_bytes()[2] == b'-'
                && v.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-')
        });
    if !valid {
        let trace: u128 = rand::random::<u128>() | 1;
        let span: u64 = rand::random::<u64>() | 1;
        if let Ok(v) = HeaderValue::from_str(&format!("00-{trace:032x}-{span:016x}-01")) {
            headers.insert("traceparent", v);
        }
    }
}

/// `HeaderMap` as core's header lookup.
pub struct HeaderView<'a>(pub &'a HeaderMap);

impl sigmesh_core::route::Headers for HeaderView<'_> {
    fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).and_then(|v| v.to_str().ok())
    }

    fn any_value(&self, name: &str, each: &mut dyn FnMut(&str) -> bool) -> bool {
        self.0
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(each)
    }
}

/// Applies core's header changes to a request going upstream.
pub fn apply_edits(headers: &mut HeaderMap, edits: &sigmesh_core::request::HeaderEdits) {
    for name in &edits.remove {
        headers.remove(name.as_str());
    }
    for (name, value) in &edits.set {
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            headers.insert(n, v);
        }
    }
}

/// The path and query a request goes upstream with: the path as routes saw it (normalised by
/// core: `/ws/../admin` is `/admin`), the query as sent.
pub fn upstream_path_and_query(uri: &http::Uri) -> String {
    let path = sigmesh_core::route::normalize_path(uri.path());
    match uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path.into_owned(),
    }
}
