//! WebSocket routes: the handshake (origin, connection bucket, split, upstream first), and the
//! session that relays message by message between the two legs.
//!
//! ```text
//! client ──upgrade──► check origin ─► connection bucket ─► split ─► upstream handshake ─► 101 to client
//!                                                                                        │
//!            session: pump client→upstream (buckets, size, signaling)  ◄─────────────────┘
//!                     pump upstream→client
//!                     coordinator: idle timer, drain, close grace
//! ```
//! With `sticky: message:/pointer` the client is upgraded first, its first message read, and
//! the upstream picked from that message before the upstream handshake.

use std::net::SocketAddr;
use std::sync::Arc;

use futures_util::StreamExt;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use sigmesh_core::config::{Sticky, WebSocket as WsConfig};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, Message};

use crate::http_util::{self, Body};
use crate::sessions::SessionInfo;
use crate::state::{RouteRuntime, Shared};
use crate::telemetry::SessionTrace;

mod connect;
mod reading;
mod session;

pub use connect::UpstreamError;
use connect::{UpstreamWs, connect_upstream};

type UpstreamResponse = tungstenite::handshake::client::Response;
use session::{read_error_close, run_session};

/// Read buffer of each leg (also the most one read syscall takes). tungstenite's default
/// (128 KiB, allocated and zero-filled eagerly) would make an idle session cost a quarter MiB.
/// Measured with benches/run.sh at 5,000 idle sessions: 4 KiB → 2 KiB saves 12% of idle RSS per
/// session (15.99 → 14.02 KiB) for ~9% more CPU on 16 KiB messages; 1 KiB cost 28% there.
pub const READ_BUFFER: usize = 2048;
/// Frames queued on a leg are written out once this many bytes are waiting, or when the relay
/// flushes because nothing else is ready; a burst of small messages becomes one write.
pub const WRITE_BUFFER: usize = 8192;

/// tungstenite settings for one leg of a session on `ws`.
pub fn ws_config(ws: &WsConfig) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        .max_write_buffer_size(
            ws.max_message_bytes
                .saturating_mul(2)
                .saturating_add(64 * 1024),
        )
        .max_message_size(Some(ws.max_message_bytes))
        .max_frame_size(Some(ws.max_message_bytes))
}

/// Is this request a WebSocket upgrade?
pub fn is_upgrade(req: &Request<Incoming>) -> bool {
    let has_token = |name: header::HeaderName, token: &str| {
        req.headers()
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    };
    has_token(header::UPGRADE, "websocket") && has_token(header::CONNECTION, "upgrade")
}

fn close_frame(code: CloseCode, reason: &'static str) -> CloseFrame {
    CloseFrame {
        code,
        reason: reason.into(),
    }
}

/// Handles an upgrade request on a `websocket:` route. With tracing on, the `ws.session`
/// span starts here and a refused handshake ends it with its status.
pub async fn handle(
    shared: Arc<Shared>,
    route: Arc<RouteRuntime>,
    req: Request<Incoming>,
    client: SocketAddr,
) -> Response<Body> {
    let trace = shared.telemetry.ws_session(&crate::telemetry::RequestInfo {
        route: &route.route.name,
        method: req.method().as_str(),
        path: req.uri().path(),
        headers: req.headers(),
        client,
    });
    let resp = handshake(shared, route, req, client, trace.clone()).await;
    if let Some(t) = trace
        && resp.status() != StatusCode::SWITCHING_PROTOCOLS
    {
        t.refused(resp.status().as_u16());
    }
    resp
}

async fn handshake(
    shared: Arc<Shared>,
    route: Arc<RouteRuntime>,
    mut req: Request<Incoming>,
    client: SocketAddr,
    trace: Option<Arc<SessionTrace>>,
) -> Response<Body> {
    let rname = route.route.name.as_str();
    let Some(ws) = route.route.websocket.as_ref() else {
        return http_util::text(StatusCode::INTERNAL_SERVER_ERROR, "not a websocket route");
    };
    // RFC 6455 §4.2.1: a GET with a key and version 13.
    let Some(key) = req.headers().get(header::SEC_WEBSOCKET_KEY).cloned() else {
        return http_util::text(StatusCode::BAD_REQUEST, "missing sec-websocket-key");
    };
    if req
        .headers()
        .get(header::SEC_WEBSOCKET_VERSION)
        .map(|v| v.as_bytes())
        != Some(b"13")
    {
        let mut r = http_util::text(
            StatusCode::UPGRADE_REQUIRED,
            "unsupported websocket version",
        );
        r.headers_mut().insert(
            header::SEC_WEBSOCKET_VERSION,
            HeaderValue::from_static("13"),
        );
        return r;
    }
    if req.method() != http::Method::GET {
        return http_util::text(
            StatusCode::METHOD_NOT_ALLOWED,
            "websocket upgrade needs GET",
        );
    }
    // Origin.
    let origin = req
        .headers()
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok());
    if !sigmesh_core::frame::policy::origin_allowed(ws, origin) {
        shared.metrics.connection(rname, "", "forbidden");
        return http_util::text(StatusCode::FORBIDDEN, "origin not allowed");
    }
    // Connection bucket.
    if let Some(resp) =
        crate::server::check_connection_limit(&shared, &route, req.headers(), client)
    {
        return resp;
    }
    let on_upgrade = hyper::upgrade::on(&mut req);
    let headers = upstream_headers(req.headers(), client);
    let path_and_query = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "/".into());
    let sticky_room = crate::server::sticky_room(&route, &req);

    if let Sticky::Message(pointer) = &route.route.split.sticky {
        // Upgrade the client first; the upstream is picked from its first message.
        let pointer = pointer.clone();
        let cfg = ws_config(ws);
        let shared2 = shared.clone();
        let route2 = route.clone();
        if let Some(t) = &trace {
            t.accepted();
        }
        tokio::spawn(async move {
            let Ok(upgraded) = on_upgrade.await else {
                return;
            };
            let client_ws = Box::new(
                WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(cfg))
                    .await,
            );
            message_sticky_session(
                shared2,
                route2,
                client_ws,
                client,
                headers,
                path_and_query,
                pointer,
                trace,
            )
            .await;
        });
        return switching_protocols(&key, None, &HeaderMap::new());
    }

    let sticky_key = sticky_room.as_deref().map(str::as_bytes);
    let picked = pick_and_connect(
        &shared,
        &route,
        ws,
        headers,
        &path_and_query,
        sticky_key,
        trace.as_ref(),
    )
    .await;
    let Ok((index, upstream_ws, up_resp)) = picked else {
        return http_util::text(StatusCode::BAD_GATEWAY, "upstream handshake failed");
    };
    let uname = route.route.upstreams[index].name.as_str();
    let protocol = up_resp
        .headers()
        .get(header::SEC_WEBSOCKET_PROTOCOL)
        .cloned();
    let resp = switching_protocols(&key, protocol, up_resp.headers());
    let cfg = ws_config(ws);
    let info = Arc::new(SessionInfo::new(
        shared.sessions.next_id(),
        rname,
        uname,
        client,
    ));
    if let Some(room) = sticky_room {
        let _ = info.room.set(room);
    }
    if let Some(t) = &trace {
        t.accepted();
    }
    // Boxed so the task (alive for the whole session) holds a pointer, not the stream itself.
    let upstream_ws = Box::new(upstream_ws);
    tokio::spawn(async move {
        let upgraded = match on_upgrade.await {
            Ok(u) => u,
            Err(e) => {
                tracing::debug!(error = %e, "client upgrade did not complete");
                return;
            }
        };
        let client_ws =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(cfg)).await;
        run_session(shared, route, info, client_ws, *upstream_ws, None, trace).await;
    });
    resp
}

/// The 101 answer to the client, with the upstream's subprotocol and end-to-end headers.
fn switching_protocols(
    key: &HeaderValue,
    protocol: Option<HeaderValue>,
    upstream: &HeaderMap,
) -> Response<Body> {
    let mut r = Response::new(http_util::full(bytes::Bytes::new()));
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    for (name, value) in upstream {
        if name == header::SET_COOKIE {
            h.append(name, value.clone());
        }
    }
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(v) = HeaderValue::from_str(&derive_accept_key(key.as_bytes())) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    if let Some(p) = protocol {
        h.insert(header::SEC_WEBSOCKET_PROTOCOL, p);
    }
    r
}

/// The client's handshake headers to send upstream: end-to-end headers (cookies,
/// authorization, subprotocols, origin, ...) without hop-by-hop and per-connection WebSocket
/// headers, plus `x-forwarded-*` and `traceparent`.
fn upstream_headers(client: &HeaderMap, addr: SocketAddr) -> HeaderMap {
    let mut h = client.clone();
    http_util::strip_hop_by_hop(&mut h);
    for n in [
        header::HOST,
        header::SEC_WEBSOCKET_KEY,
        header::SEC_WEBSOCKET_VERSION,
        header::SEC_WEBSOCKET_EXTENSIONS,
        header::SEC_WEBSOCKET_ACCEPT,
        header::CONTENT_LENGTH,
    ] {
        h.remove(n);
    }
    http_util::set_forwarded(&mut h, addr.ip(), "http");
    http_util::ensure_traceparent(&mut h);
    h
}

/// Why an upstream handshake failed.
/// `sticky: message:/pointer`: read the first message, pick, connect, forward it, relay.
#[allow(clippy::too_many_arguments)] // the parts of one upgrade request, moved into its task
async fn message_sticky_session<C>(
    shared: Arc<Shared>,
    route: Arc<RouteRuntime>,
    // Boxed: it is held across the first-message wait and the upstream handshake.
    mut client_ws: Box<WebSocketStream<C>>,
    client: SocketAddr,
    headers: HeaderMap,
    path_and_query: String,
    pointer: String,
    trace: Option<Arc<SessionTrace>>,
) where
    C: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let rname = route.route.name.clone();
    let Some(ws) = route.route.websocket.as_ref() else {
        return;
    };
    let first = tokio::select! {
        m = tokio::time::timeout(shared.tuning.first_message_timeout, next_data(&mut client_ws)) => m,
        _ = shared.drain.cancelled() => {
            let _ = client_ws.close(Some(close_frame(CloseCode::Away, "server shutting down"))).await;
            return;
        }
    };
    let first = match first {
        Ok(Some(Ok(m))) => m,
        Ok(Some(Err(e))) => {
            let frame = read_error_close(&e)
                .unwrap_or_else(|| close_frame(CloseCode::Protocol, "protocol error"));
            let _ = client_ws.close(Some(frame)).await;
            return;
        }
        Ok(None) => return,
        Err(_) => {
            let _ = client_ws
                .close(Some(close_frame(CloseCode::Policy, "no first message")))
                .await;
            return;
        }
    };
    let key = match &first {
        Message::Text(t) => sigmesh_core::signal::pointer_value(t.as_str(), &pointer),
        _ => None,
    };
    let picked = pick_and_connect(
        &shared,
        &route,
        ws,
        headers,
        &path_and_query,
        key.as_deref().map(str::as_bytes),
        trace.as_ref(),
    )
    .await;
    match picked {
        Ok((index, upstream_ws, _)) => {
            let uname = &route.route.upstreams[index].name;
            let info = Arc::new(SessionInfo::new(
                shared.sessions.next_id(),
                &rname,
                uname,
                client,
            ));
            run_session(
                shared,
                route,
                info,
                *client_ws,
                upstream_ws,
                Some(first),
                trace,
            )
            .await;
        }
        Err(()) => {
            if let Some(t) = &trace {
                t.closed("proxy", Some(1011), "upstream unavailable");
                t.finish(None);
            }
            let _ = client_ws
                .close(Some(close_frame(CloseCode::Error, "upstream unavailable")))
                .await;
        }
    }
}

/// Picks the upstream (override header, else the sticky key's bucket, else at random), then
/// connects to it and completes its handshake. Returns the upstream's index; a failure has been
/// traced, logged and counted when `Err` comes back.
async fn pick_and_connect(
    shared: &Shared,
    route: &RouteRuntime,
    ws: &WsConfig,
    mut headers: HeaderMap,
    path_and_query: &str,
    sticky_key: Option<&[u8]>,
    trace: Option<&Arc<SessionTrace>>,
) -> Result<(usize, UpstreamWs, UpstreamResponse), ()> {
    let override_name = headers
        .get(route.route.override_header())
        .and_then(|v| v.to_str().ok());
    let index = route
        .splitter
        .load()
        .pick(override_name, sticky_key, rand::random())
        .index;
    let up = &route.route.upstreams[index];
    let (rname, uname) = (route.route.name.as_str(), up.name.as_str());
    let url = up.url.as_deref().unwrap_or_default();
    let hs = trace.map(|t| {
        t.picked(uname, sticky_key.is_some());
        t.upstream_handshake(uname, url, &mut headers)
    });
    let connect = connect_upstream(
        url,
        route.route.matcher.path_prefix.as_deref(),
        path_and_query,
        headers,
        ws,
        shared.tuning.upstream_handshake_timeout,
    );
    match connect.await {
        Ok((upstream_ws, resp)) => {
            if let Some(h) = hs {
                h.done();
            }
            Ok((index, upstream_ws, resp))
        }
        Err(e) => {
            if let Some(h) = hs {
                h.failed(e.kind(), e.status(), &e.to_string());
            }
            tracing::warn!(route = rname, upstream = uname, error = %e, "upstream handshake failed");
            shared.metrics.upstream_error(rname, uname, e.kind());
            shared.metrics.connection(rname, uname, "upstream_error");
            Err(())
        }
    }
}

/// The next text or binary message (pings are answered by tungstenite while reading).
async fn next_data<S>(ws: &mut WebSocketStream<S>) -> Option<Result<Message, tungstenite::Error>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    loop {
        match ws.next().await? {
            Ok(m @ (Message::Text(_) | Message::Binary(_))) => return Some(Ok(m)),
            Ok(Message::Close(_)) => return None,
            Ok(_) => continue,
            Err(e) => return Some(Err(e)),
        }
    }
}
