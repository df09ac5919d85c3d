//! The upstream leg: TCP connect and WebSocket handshake, bounded in time.

use std::time::Duration;

use http::StatusCode;
use http::header::HeaderMap;
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::{self, client::IntoClientRequest};

use super::ws_config;
use crate::upstream;
use sigmesh_core::config::WebSocket as WsConfig;

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
    Handshake(tungstenite::Error),
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
    pub fn kind(&self) -> &'static str {
        match self {
            UpstreamError::Url(_) => "config",
            UpstreamError::Connect(_) => "connect",
            UpstreamError::Timeout(_) => "timeout",
            UpstreamError::Refused(_) => "refused",
            UpstreamError::Handshake(_) => "handshake",
        }
    }
}

pub(super) type UpstreamWs = WebSocketStream<TcpStream>;

/// Connects to the upstream and completes its WebSocket handshake, within
/// `timeout` ([`crate::state::Tuning::upstream_handshake_timeout`]).
pub(super) async fn connect_upstream(
    url: &str,
    route_prefix: Option<&str>,
    client_path: &str,
    headers: HeaderMap,
    ws: &WsConfig,
    timeout: Duration,
) -> Result<(UpstreamWs, tungstenite::handshake::client::Response), UpstreamError> {
    let target = upstream::Target::parse(url).map_err(UpstreamError::Url)?;
    if target.tls {
        return Err(UpstreamError::Url(format!(
            "{url}: wss:// upstreams are not supported in this build"
        )));
    }
    let uri = target.request_uri("ws", route_prefix, client_path);
    let mut request = uri
        .as_str()
        .into_client_request()
        .map_err(UpstreamError::Handshake)?;
    for (name, value) in &headers {
        request.headers_mut().append(name, value.clone());
    }
    let cfg = ws_config(ws);
    let work = async {
        let tcp = TcpStream::connect(target.authority.as_str())
            .await
            .map_err(UpstreamError::Connect)?;
        let _ = tcp.set_nodelay(true);
        tokio_tungstenite::client_async_with_config(request, tcp, Some(cfg))
            .await
            .map_err(|e| match e {
                tungstenite::Error::Http(resp) => UpstreamError::Refused(resp.status()),
                other => UpstreamError::Handshake(other),
            })
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| UpstreamError::Timeout(timeout))?
}
