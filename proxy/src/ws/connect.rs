//! The upstream leg: TCP connect and WebSocket handshake (hyper's HTTP/1.1 client with an
//! upgrade), bounded in time. What comes back is the bare socket plus any bytes the upstream
//! sent after its 101 in the same read: the relay reads frames itself from there.

use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Request, StatusCode};
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tungstenite::handshake::{client::generate_key, derive_accept_key};

use sigmesh_core::compiled::Target;
use sigmesh_core::frame::deflate::Accepted;

use crate::io::Stream;
use crate::upstream_tls::UpstreamTls;
use sigmesh_core::label::UpstreamErrorKind;

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("bad upstream url: {0}")]
    Url(String),
    #[error("connect: {0}")]
    Connect(std::io::Error),
    #[error("handshake timed out after {0:?}")]
    Timeout(Duration),
    #[error("handshake refused with status {0}")]
    Refused(StatusCode),
    #[error("handshake: {0}")]
    Handshake(String),
    #[error("tls: {0}")]
    Tls(String),
    #[error("no healthy endpoint")]
    Unavailable,
}

impl UpstreamError {
    /// The upstream's HTTP status when it answered the handshake with something else than 101.
    pub fn status(&self) -> Option<u16> {
        match self {
            UpstreamError::Refused(s) => Some(s.as_u16()),
            _ => None,
        }
    }

    /// The `kind` label of `sigmesh_upstream_errors_total`.
    pub fn kind(&self) -> UpstreamErrorKind {
        match self {
            UpstreamError::Url(_) => UpstreamErrorKind::Config,
            UpstreamError::Connect(_) => UpstreamErrorKind::Connect,
            UpstreamError::Timeout(_) => UpstreamErrorKind::Timeout,
            UpstreamError::Refused(_) => UpstreamErrorKind::Refused,
            UpstreamError::Handshake(_) => UpstreamErrorKind::Handshake,
            UpstreamError::Tls(_) => UpstreamErrorKind::Tls,
            UpstreamError::Unavailable => UpstreamErrorKind::Unavailable,
        }
    }

    /// Whether it counts against the endpoint's health (passive ejection): it could not be
    /// reached, broke the handshake, or answered 5xx; a 4xx is the request's own fault.
    pub fn is_endpoint_failure(&self) -> bool {
        match self {
            UpstreamError::Connect(_)
            | UpstreamError::Timeout(_)
            | UpstreamError::Handshake(_)
            | UpstreamError::Tls(_) => true,
            UpstreamError::Refused(s) => s.is_server_error(),
            UpstreamError::Url(_) | UpstreamError::Unavailable => false,
        }
    }
}

/// An upstream WebSocket connection, handshake done.
pub(super) struct UpstreamConn {
    pub io: Stream,
    /// Bytes the upstream sent after its 101 that were read with it (its first frames).
    pub read_ahead: Bytes,
    /// The 101's headers (subprotocol, cookies).
    pub headers: HeaderMap,
    /// `permessage-deflate` agreed without a context either way: the value for the client.
    pub extensions: Option<String>,
    /// The session's place on the endpoint (set by the caller that picked it).
    pub lease: Option<crate::pool::Lease>,
}

impl UpstreamConn {
    /// The socket and what was read past the 101, for the session; the 101's headers (which
    /// share hyper's read buffer) are dropped here.
    pub(super) fn into_leg(self) -> crate::io::Leg {
        crate::io::Leg {
            io: self.io,
            pre: self.read_ahead,
        }
    }
}

fn handshake_error(e: impl std::fmt::Display) -> UpstreamError {
    UpstreamError::Handshake(e.to_string())
}

/// Connects to the upstream and completes its WebSocket handshake, within
/// `timeout` ([`crate::state::Tuning::upstream_handshake_timeout`]). `headers` are the
/// end-to-end headers to send (the WebSocket ones are set here).
pub(super) async fn connect_upstream(
    (target, dial): (&Target, Option<std::net::SocketAddr>),
    route_prefix: Option<&str>,
    client_path: &str,
    headers: HeaderMap,
    timeout: Duration,
    tls: Option<&UpstreamTls>,
) -> Result<UpstreamConn, UpstreamError> {
    let url = &target.authority;
    let uri = target.request_uri("http", route_prefix, client_path);
    // Origin-form on the wire: hyper's connection-level client sends the target as given.
    let uri: http::Uri = uri
        .parse()
        .map_err(|e| UpstreamError::Url(format!("{url}: {e}")))?;
    let origin_form = uri.path_and_query().map_or("/", |p| p.as_str());
    let key = generate_key();
    let mut request = Request::get(origin_form)
        .body(Empty::<Bytes>::new())
        .map_err(|e| UpstreamError::Url(format!("{url}: {e}")))?;
    let offered = headers.contains_key(header::SEC_WEBSOCKET_EXTENSIONS);
    let h = request.headers_mut();
    *h = headers;
    let host = HeaderValue::from_str(&target.authority)
        .map_err(|e| UpstreamError::Url(format!("{url}: {e}")))?;
    h.insert(header::HOST, host);
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(
        header::SEC_WEBSOCKET_VERSION,
        HeaderValue::from_static("13"),
    );
    h.insert(
        header::SEC_WEBSOCKET_KEY,
        HeaderValue::from_str(&key).map_err(handshake_error)?,
    );
    let work = async {
        let tcp = match dial {
            Some(addr) => TcpStream::connect(addr).await,
            None => TcpStream::connect(target.authority.as_str()).await,
        }
        .map_err(UpstreamError::Connect)?;
        let _ = tcp.set_nodelay(true);
        let io = match (target.tls, tls) {
            (false, _) => Stream::Plain(tcp),
            (true, Some(tls)) => {
                let connector = tokio_rustls::TlsConnector::from(tls.config.clone());
                let s = connector
                    .connect(tls.server_name.clone(), tcp)
                    .await
                    .map_err(|e| UpstreamError::Tls(e.to_string()))?;
                Stream::TlsClient(Box::new(s))
            }
            (true, None) => {
                return Err(UpstreamError::Tls("no TLS setup for this upstream".into()));
            }
        };
        let (mut sender, conn) = hyper::client::conn::http1::Builder::new()
            .handshake::<_, Empty<Bytes>>(TokioIo::new(io))
            .await
            .map_err(handshake_error)?;
        // The connection future hands the socket over once the 101 is read; until then it is
        // driven here, alongside the request.
        let mut conn = std::pin::pin!(conn.with_upgrades());
        let mut exchange = std::pin::pin!(async {
            let mut resp = sender
                .send_request(request)
                .await
                .map_err(handshake_error)?;
            if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
                return Err(UpstreamError::Refused(resp.status()));
            }
            let extensions = check_accept(resp.headers(), &key, offered)?;
            let upgraded = hyper::upgrade::on(&mut resp)
                .await
                .map_err(handshake_error)?;
            Ok((upgraded, resp.into_parts().0.headers, extensions))
        });
        let mut conn_done = false;
        let (upgraded, headers, extensions) = loop {
            tokio::select! {
                r = &mut exchange => break r?,
                c = &mut conn, if !conn_done => {
                    conn_done = true;
                    c.map_err(handshake_error)?;
                }
            }
        };
        let parts = upgraded
            .downcast::<TokioIo<Stream>>()
            .map_err(|_| handshake_error("upgraded connection of an unexpected type"))?;
        Ok(UpstreamConn {
            io: parts.io.into_inner(),
            read_ahead: parts.read_buf,
            headers,
            extensions,
            lease: None,
        })
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| UpstreamError::Timeout(timeout))?
}

/// RFC 6455 §4.1: the 101 must upgrade to websocket with the accept value of our key, and
/// name no extension but the `permessage-deflate` offered, without a context
/// ([`sigmesh_core::frame::deflate::accepted`]); the value for the client when one is agreed.
fn check_accept(h: &HeaderMap, key: &str, offered: bool) -> Result<Option<String>, UpstreamError> {
    if !super::upgrades_to_websocket(h) {
        return Err(handshake_error("101 without Upgrade: websocket"));
    }
    let accept = h
        .get(header::SEC_WEBSOCKET_ACCEPT)
        .map(HeaderValue::as_bytes);
    if accept != Some(derive_accept_key(key.as_bytes()).as_bytes()) {
        return Err(handshake_error("bad Sec-WebSocket-Accept"));
    }
    let value = h
        .get(header::SEC_WEBSOCKET_EXTENSIONS)
        .map(|v| v.to_str().unwrap_or("\u{fffd}"));
    if value.is_some() && !offered {
        return Err(handshake_error(
            "upstream chose an extension that was not offered",
        ));
    }
    match sigmesh_core::frame::deflate::accepted(value) {
        Accepted::None => Ok(None),
        Accepted::ReadThrough(to_client) => Ok(Some(to_client)),
        Accepted::Refused(why) => Err(handshake_error(why)),
    }
}
