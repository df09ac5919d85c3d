//! WebSocket routes: the handshake (origin, connection bucket, split, upstream first), and the
//! session that relays frame by frame between the two legs.
//!
//! ```text
//! client ──upgrade──► check origin ─► connection bucket ─► split ─► upstream handshake ─► 101 to client
//!                                                                                        │
//!   session (one task): client → upstream  core FrameReader: limits, buckets, signaling  ◄┘
//!                       upstream → client  core FrameReader: signaling, counters
//!                       idle timer, drain, close grace
//! ```
//! With `sticky: message:/pointer` the client is upgraded first, its first message read, and
//! the upstream picked from that message before the upstream handshake.
//!
//! The proxy terminates each leg's TCP connection and HTTP handshake, and reads every frame
//! (sizes, limits, the text of signaling messages), but passes frames on as they are: no
//! re-framing, no re-masking, and no buffer per session beyond what a slow peer has not taken
//! yet ([`relay`]).

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::BytesMut;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use sigmesh_core::config::Sticky;
use sigmesh_core::frame::{Action, FrameReader, Handler, MessageInfo, close_code, close_frame};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tungstenite::handshake::derive_accept_key;

use crate::http_util::{self, Body};
use crate::sessions::SessionInfo;
use crate::state::{RouteRuntime, Shared};
use crate::telemetry::SessionTrace;

mod connect;
mod reading;
pub mod relay;
mod session;

pub use connect::UpstreamError;
use connect::{UpstreamConn, connect_upstream};
use session::{Leg, run_session};

/// Is this request a WebSocket upgrade?
pub fn is_upgrade(req: &Request<Incoming>) -> bool {
    upgrades_to_websocket(req.headers())
}

/// `Upgrade: websocket` with `Connection: upgrade` (a request asking, or a 101 answering).
fn upgrades_to_websocket(h: &HeaderMap) -> bool {
    http_util::has_token(h, header::UPGRADE, "websocket")
        && http_util::has_token(h, header::CONNECTION, "upgrade")
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
        if let Some(t) = &trace {
            t.accepted();
        }
        tokio::spawn(async move {
            let Some(client_leg) = upgraded_leg(on_upgrade).await else {
                return;
            };
            message_sticky_session(
                shared,
                route,
                client_leg,
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
        headers,
        &path_and_query,
        sticky_key,
        trace.as_ref(),
    )
    .await;
    let Ok((index, up)) = picked else {
        return http_util::text(StatusCode::BAD_GATEWAY, "upstream handshake failed");
    };
    let uname = route.route.upstreams[index].name.as_str();
    let protocol = up.headers.get(header::SEC_WEBSOCKET_PROTOCOL).cloned();
    let resp = switching_protocols(&key, protocol, &up.headers);
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
    let upstream_leg = Leg {
        io: up.io,
        pre: up.read_ahead,
    };
    tokio::spawn(async move {
        let Some(client_leg) = upgraded_leg(on_upgrade).await else {
            return;
        };
        run_session(shared, route, info, client_leg, upstream_leg, trace).await;
    });
    resp
}

/// The client's socket once hyper has written the 101, with what it read past the request.
async fn upgraded_leg(on_upgrade: hyper::upgrade::OnUpgrade) -> Option<Leg> {
    let upgraded = match on_upgrade.await {
        Ok(u) => u,
        Err(e) => {
            tracing::debug!(error = %e, "client upgrade did not complete");
            return None;
        }
    };
    match upgraded.downcast::<TokioIo<TcpStream>>() {
        Ok(parts) => Some(Leg {
            io: parts.io.into_inner(),
            pre: parts.read_buf,
        }),
        Err(_) => {
            tracing::error!("upgraded client connection of an unexpected type");
            None
        }
    }
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

/// `sticky: message:/pointer`: read the first message, pick, connect, relay (the first
/// message's frames, as read, are the first bytes the session relays).
#[allow(clippy::too_many_arguments)] // the parts of one upgrade request, moved into its task
async fn message_sticky_session(
    shared: Arc<Shared>,
    route: Arc<RouteRuntime>,
    mut client_leg: Leg,
    client: SocketAddr,
    headers: HeaderMap,
    path_and_query: String,
    pointer: String,
    trace: Option<Arc<SessionTrace>>,
) {
    let rname = route.route.name.clone();
    let first = tokio::select! {
        m = tokio::time::timeout(shared.tuning.first_message_timeout, first_message(&mut client_leg, &route)) => m,
        _ = shared.drain.cancelled() => Ok(First::Refused(close_code::AWAY, "server shutting down")),
    };
    let text = match first {
        Ok(First::Message(text)) => text,
        Ok(First::Refused(code, reason)) => {
            if code == close_code::TOO_BIG {
                shared.metrics.rate_limited(&rname, "message_size");
            }
            return refuse_first(&mut client_leg.io, code, reason).await;
        }
        Ok(First::Gone) => return,
        Err(_) => {
            return refuse_first(&mut client_leg.io, close_code::POLICY, "no first message").await;
        }
    };
    let key = text
        .as_deref()
        .and_then(|t| sigmesh_core::signal::pointer_value(t, &pointer));
    let picked = pick_and_connect(
        &shared,
        &route,
        headers,
        &path_and_query,
        key.as_deref().map(str::as_bytes),
        trace.as_ref(),
    )
    .await;
    match picked {
        Ok((index, up)) => {
            let uname = &route.route.upstreams[index].name;
            let info = Arc::new(SessionInfo::new(
                shared.sessions.next_id(),
                &rname,
                uname,
                client,
            ));
            let upstream_leg = Leg {
                io: up.io,
                pre: up.read_ahead,
            };
            run_session(shared, route, info, client_leg, upstream_leg, trace).await;
        }
        Err(()) => {
            if let Some(t) = &trace {
                t.closed("proxy", Some(1011), "upstream unavailable");
                t.finish(None);
            }
            refuse_first(
                &mut client_leg.io,
                close_code::SERVER_ERROR,
                "upstream unavailable",
            )
            .await;
        }
    }
}

/// How the wait for a client's first message ended.
enum First {
    /// Its first data message (`Some` text for a text message in UTF-8).
    Message(Option<String>),
    /// Close the client with this code.
    Refused(u16, &'static str),
    /// The client closed or vanished.
    Gone,
}

/// Reads the client's bytes until its first data message is complete. Everything read stays
/// in `leg.pre` for the session to relay (pings and all), so nothing is lost or re-framed.
async fn first_message(leg: &mut Leg, route: &RouteRuntime) -> First {
    struct Catch {
        text: Option<Option<String>>,
        closed: bool,
    }
    impl Handler for Catch {
        fn decide(&mut self, _: &MessageInfo, _: Option<&str>) -> Action {
            Action::Forward
        }
        fn done(&mut self, _: &MessageInfo, text: Option<&str>, _: bool) {
            if self.text.is_none() {
                self.text = Some(text.map(str::to_owned));
            }
        }
        fn close(&mut self, _: Option<u16>, _: &str) {
            self.closed = true;
        }
    }
    let mut reader = FrameReader::new(session::client_reader(&route.route, [0; 4]));
    let mut catch = Catch {
        text: None,
        closed: false,
    };
    let limit = route
        .route
        .websocket
        .as_ref()
        .map_or(sigmesh_core::frame::DEFAULT_TEXT_LIMIT, |w| {
            w.max_message_bytes
        })
        .saturating_add(sigmesh_core::frame::HOLD_SLACK);
    let mut acc = BytesMut::from(&leg.pre[..]);
    let mut seen = 0;
    loop {
        let p = reader.push(&acc[seen..], &mut catch);
        if let Some(c) = p.close {
            return First::Refused(c.code, c.reason);
        }
        seen = acc.len();
        if let Some(text) = catch.text.take() {
            leg.pre = acc.freeze();
            return First::Message(text);
        }
        if catch.closed {
            return First::Gone;
        }
        // Control frames before the first message count too: what is held stays bounded.
        if acc.len() > limit {
            return First::Refused(close_code::TOO_BIG, "message too big");
        }
        acc.reserve(4096);
        match leg.io.read_buf(&mut acc).await {
            Ok(0) | Err(_) => return First::Gone,
            Ok(_) => {}
        }
    }
}

/// Sends the client a close frame and ends its connection.
async fn refuse_first(io: &mut TcpStream, code: u16, reason: &str) {
    let frame = close_frame(code, reason, None);
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), async {
        let _ = io.write_all(&frame).await;
        let _ = io.shutdown().await;
    })
    .await;
}

/// Picks the upstream (override header, else the sticky key's bucket, else at random), then
/// connects to it and completes its handshake. Returns the upstream's index; a failure has been
/// traced, logged and counted when `Err` comes back.
async fn pick_and_connect(
    shared: &Shared,
    route: &RouteRuntime,
    mut headers: HeaderMap,
    path_and_query: &str,
    sticky_key: Option<&[u8]>,
    trace: Option<&Arc<SessionTrace>>,
) -> Result<(usize, UpstreamConn), ()> {
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
        shared.tuning.upstream_handshake_timeout,
    );
    match connect.await {
        Ok(conn) => {
            if let Some(h) = hs {
                h.done();
            }
            Ok((index, conn))
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
