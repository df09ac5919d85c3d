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
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use http::header::{self, HeaderMap, HeaderValue};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use prometheus_client::metrics::counter::Counter;
use sigmesh_core::bucket::{TokenBucket, Verdict};
use sigmesh_core::config::{OnExceed, Sticky, WebSocket as WsConfig};
use sigmesh_core::signal::Signal;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_util::sync::CancellationToken;

use crate::http_util::{self, Body};
use crate::metrics::{KindLabel, MessageLabels, RouteUpstream};
use crate::sessions::SessionInfo;
use crate::state::{self, RouteRuntime, Shared};
use crate::upstream;

/// Read buffer of each leg; tungstenite's default (128 KiB, allocated eagerly) would make an
/// idle session cost a quarter MiB.
pub const READ_BUFFER: usize = 4096;

/// tungstenite settings for one leg of a session on `ws`.
pub fn ws_config(ws: &WsConfig) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(0)
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

/// Handles an upgrade request on a `websocket:` route.
pub async fn handle(
    shared: Arc<Shared>,
    route: Arc<RouteRuntime>,
    mut req: Request<Incoming>,
    client: SocketAddr,
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
    if !ws.allowed_origins.is_empty() {
        let origin = req
            .headers()
            .get(header::ORIGIN)
            .and_then(|v| v.to_str().ok());
        if !origin.is_some_and(|o| ws.allowed_origins.iter().any(|a| a.eq_ignore_ascii_case(o))) {
            shared.metrics.connection(rname, "", "forbidden");
            return http_util::text(StatusCode::FORBIDDEN, "origin not allowed");
        }
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
        tokio::spawn(async move {
            let Ok(upgraded) = on_upgrade.await else {
                return;
            };
            let client_ws =
                WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(cfg))
                    .await;
            message_sticky_session(
                shared2,
                route2,
                client_ws,
                client,
                headers,
                path_and_query,
                pointer,
            )
            .await;
        });
        return switching_protocols(&key, None, &HeaderMap::new());
    }

    let override_name = req
        .headers()
        .get(route.route.override_header())
        .and_then(|v| v.to_str().ok());
    let sticky_key = sticky_room.as_deref().map(str::as_bytes);
    let pick = route
        .splitter
        .load()
        .pick(override_name, sticky_key, rand::random());
    let up = &route.route.upstreams[pick.index];
    let uname = up.name.as_str();
    let connect = connect_upstream(
        up.url.as_deref().unwrap_or_default(),
        route.route.matcher.path_prefix.as_deref(),
        &path_and_query,
        headers,
        ws,
        shared.tuning.upstream_handshake_timeout,
    );
    let (upstream_ws, up_resp) = match connect.await {
        Ok(ok) => ok,
        Err(e) => {
            tracing::warn!(route = rname, upstream = uname, error = %e, "upstream handshake failed");
            shared.metrics.upstream_error(rname, uname, e.kind());
            shared.metrics.connection(rname, uname, "upstream_error");
            return http_util::text(StatusCode::BAD_GATEWAY, "upstream handshake failed");
        }
    };
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
        run_session(shared, route, info, client_ws, upstream_ws, None).await;
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

type UpstreamWs = WebSocketStream<TcpStream>;

/// Connects to the upstream and completes its WebSocket handshake, within
/// `timeout` ([`crate::state::Tuning::upstream_handshake_timeout`]).
async fn connect_upstream(
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

/// `sticky: message:/pointer`: read the first message, pick, connect, forward it, relay.
async fn message_sticky_session<C>(
    shared: Arc<Shared>,
    route: Arc<RouteRuntime>,
    mut client_ws: WebSocketStream<C>,
    client: SocketAddr,
    headers: HeaderMap,
    path_and_query: String,
    pointer: String,
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
    let override_name = headers
        .get(route.route.override_header())
        .and_then(|v| v.to_str().ok());
    let pick = route.splitter.load().pick(
        override_name,
        key.as_deref().map(str::as_bytes),
        rand::random(),
    );
    let up = &route.route.upstreams[pick.index];
    let uname = up.name.clone();
    let connect = connect_upstream(
        up.url.as_deref().unwrap_or_default(),
        route.route.matcher.path_prefix.as_deref(),
        &path_and_query,
        headers,
        ws,
        shared.tuning.upstream_handshake_timeout,
    );
    match connect.await {
        Ok((upstream_ws, _)) => {
            let info = Arc::new(SessionInfo::new(
                shared.sessions.next_id(),
                &rname,
                &uname,
                client,
            ));
            run_session(shared, route, info, client_ws, upstream_ws, Some(first)).await;
        }
        Err(e) => {
            tracing::warn!(route = %rname, upstream = %uname, error = %e, "upstream handshake failed");
            shared.metrics.upstream_error(&rname, &uname, e.kind());
            shared.metrics.connection(&rname, &uname, "upstream_error");
            let _ = client_ws
                .close(Some(close_frame(CloseCode::Error, "upstream unavailable")))
                .await;
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

/// The close frame a read error earns the side that caused it, if it is a policy matter.
fn read_error_close(e: &tungstenite::Error) -> Option<CloseFrame> {
    match e {
        tungstenite::Error::Capacity(_) => Some(close_frame(CloseCode::Size, "message too big")),
        // The peer just vanished: nobody to send a close frame to.
        tungstenite::Error::Protocol(
            tungstenite::error::ProtocolError::ResetWithoutClosingHandshake,
        ) => None,
        tungstenite::Error::Protocol(_) => Some(close_frame(CloseCode::Protocol, "protocol error")),
        tungstenite::Error::Utf8(_) => Some(close_frame(CloseCode::Invalid, "invalid utf-8")),
        _ => None,
    }
}

// === the session ===

/// How a session ends: which close frame each leg gets, set once by whoever ends it first.
struct Closer {
    token: CancellationToken,
    /// `Some(None)`: send that leg nothing (it is gone or already closed).
    to_client: OnceLock<Option<CloseFrame>>,
    to_upstream: OnceLock<Option<CloseFrame>>,
    /// Milliseconds of [`state::now`] at the last message either way.
    last_activity: AtomicU64,
}

impl Closer {
    fn end(&self, to_client: Option<CloseFrame>, to_upstream: Option<CloseFrame>) {
        let _ = self.to_client.set(to_client);
        let _ = self.to_upstream.set(to_upstream);
        self.token.cancel();
    }

    fn touch(&self) {
        self.last_activity
            .store(state::now().as_millis() as u64, Ordering::Relaxed);
    }
}

/// Counters of one direction, resolved once per session and type.
struct DirCounters {
    route: String,
    upstream: String,
    direction: &'static str,
    by_kind: Vec<(&'static str, Counter)>,
    family: prometheus_client::metrics::family::Family<MessageLabels, Counter>,
}

impl DirCounters {
    fn inc(&mut self, kind: &'static str) {
        if let Some((_, c)) = self.by_kind.iter().find(|(k, _)| *k == kind) {
            c.inc();
            return;
        }
        let c = self.family.get_or_create_owned(&MessageLabels {
            route: self.route.clone(),
            upstream: self.upstream.clone(),
            direction: self.direction,
            kind: KindLabel(kind),
        });
        c.inc();
        self.by_kind.push((kind, c));
    }
}

/// The `type` label of a message: a known signaling type, `other`, or `text`/`binary` where
/// the route reads no type. A fixed set, so clients cannot grow the label space.
pub fn kind_label(msg: &Message, signal: Option<&Signal>) -> &'static str {
    const KNOWN: [&str; 12] = [
        "offer",
        "answer",
        "candidate",
        "join",
        "leave",
        "bye",
        "welcome",
        "peer-joined",
        "peer-left",
        "ping",
        "pong",
        "error",
    ];
    match (msg, signal) {
        (Message::Binary(_), _) => "binary",
        (_, Some(Signal { kind: Some(k), .. })) => KNOWN
            .iter()
            .find(|known| known.eq_ignore_ascii_case(k))
            .copied()
            .unwrap_or("other"),
        (_, Some(_)) => "other",
        _ => "text",
    }
}

/// Runs a session between two upgraded legs until both are closed.
async fn run_session<C>(
    shared: Arc<Shared>,
    route: Arc<RouteRuntime>,
    info: Arc<SessionInfo>,
    client_ws: WebSocketStream<C>,
    upstream_ws: UpstreamWs,
    first: Option<Message>,
) where
    C: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let rname = route.route.name.clone();
    let uname = info.upstream.clone();
    let labels = RouteUpstream {
        route: rname.clone(),
        upstream: uname.clone(),
    };
    let active = shared
        .metrics
        .connections_active
        .get_or_create_owned(&labels);
    active.inc();
    shared.metrics.connection(&rname, &uname, "accepted");
    let _guard = shared.sessions.register(info.clone());
    tracing::debug!(session = info.id, route = %rname, upstream = %uname, client = %info.client, "session open");

    let closer = Arc::new(Closer {
        token: CancellationToken::new(),
        to_client: OnceLock::new(),
        to_upstream: OnceLock::new(),
        last_activity: AtomicU64::new(0),
    });
    closer.touch();
    let (c_tx, c_rx) = client_ws.split();
    let (u_tx, u_rx) = upstream_ws.split();
    let idle = route
        .route
        .websocket
        .as_ref()
        .map_or(Duration::from_secs(120), |w| w.idle_timeout);

    let inbound = tokio::spawn(pump_in(
        shared.clone(),
        route.clone(),
        info.clone(),
        closer.clone(),
        c_rx,
        u_tx,
        first,
    ));
    let outbound = tokio::spawn(pump_out(
        shared.clone(),
        route.clone(),
        info.clone(),
        closer.clone(),
        u_rx,
        c_tx,
    ));
    let mut inbound = AbortOnDrop(inbound);
    let mut outbound = AbortOnDrop(outbound);

    // Coordinator: idle timeout, drain, and the grace period once one direction has ended.
    let mut ended_one = false;
    loop {
        let last = Duration::from_millis(closer.last_activity.load(Ordering::Relaxed));
        let idle_deadline =
            tokio::time::Instant::now() + (last + idle).saturating_sub(state::now());
        tokio::select! {
            r = &mut inbound.0, if !inbound.finished() => { inbound.done(r); if ended_one { break } ended_one = true; }
            r = &mut outbound.0, if !outbound.finished() => { outbound.done(r); if ended_one { break } ended_one = true; }
            _ = tokio::time::sleep_until(idle_deadline), if !closer.token.is_cancelled() => {
                let last = Duration::from_millis(closer.last_activity.load(Ordering::Relaxed));
                if state::now().saturating_sub(last) >= idle {
                    tracing::debug!(session = info.id, "idle timeout");
                    closer.end(Some(close_frame(CloseCode::Away, "idle timeout")), Some(close_frame(CloseCode::Away, "idle timeout")));
                }
            }
            _ = shared.drain.cancelled(), if !closer.token.is_cancelled() => {
                closer.end(Some(close_frame(CloseCode::Away, "server shutting down")), Some(close_frame(CloseCode::Away, "server shutting down")));
            }
        }
        if ended_one {
            // One leg is done: give the other the close grace to finish its handshake.
            let rest = async {
                if !inbound.finished() {
                    let r = (&mut inbound.0).await;
                    inbound.done(r);
                }
                if !outbound.finished() {
                    let r = (&mut outbound.0).await;
                    outbound.done(r);
                }
            };
            if tokio::time::timeout(shared.tuning.close_grace, rest)
                .await
                .is_err()
            {
                closer.end(None, None);
                let _ = tokio::time::timeout(Duration::from_millis(200), async {
                    if !inbound.finished() {
                        let _ = (&mut inbound.0).await;
                    }
                    if !outbound.finished() {
                        let _ = (&mut outbound.0).await;
                    }
                })
                .await;
            }
            break;
        }
    }
    active.dec();
    tracing::debug!(session = info.id, "session closed");
}

/// A task handle that aborts the task when dropped, so a session owns its pumps.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl AbortOnDrop {
    fn finished(&self) -> bool {
        self.0.is_finished()
    }
    fn done(&mut self, r: Result<(), tokio::task::JoinError>) {
        if let Err(e) = r
            && e.is_panic()
        {
            tracing::error!("relay task panicked");
        }
    }
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

type Sink<S> = futures_util::stream::SplitSink<WebSocketStream<S>, Message>;
type Source<S> = futures_util::stream::SplitStream<WebSocketStream<S>>;

/// Sends the close frame this leg was assigned by [`Closer::end`], if any.
async fn send_assigned_close<S>(
    tx: &mut Sink<S>,
    frame: Option<&Option<CloseFrame>>,
    grace: Duration,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    if let Some(Some(f)) = frame {
        let _ = tokio::time::timeout(grace, tx.send(Message::Close(Some(f.clone())))).await;
    }
}

/// Client → upstream: size (by tungstenite's limits), message and room buckets, signaling.
async fn pump_in<C>(
    shared: Arc<Shared>,
    route: Arc<RouteRuntime>,
    info: Arc<SessionInfo>,
    closer: Arc<Closer>,
    mut rx: Source<C>,
    mut tx: Sink<TcpStream>,
    first: Option<Message>,
) where
    C: AsyncRead + AsyncWrite + Unpin,
{
    let r = &route.route;
    let ws = r.websocket.clone().unwrap_or_default();
    let read_signal =
        ws.signaling.kind.is_some() || ws.signaling.room.is_some() || ws.signaling.peer.is_some();
    let msg_limit = r.limits.messages.clone();
    let mut msg_bucket = msg_limit
        .as_ref()
        .map(|l| TokenBucket::new(&l.rate, state::now()));
    let on_exceed_rooms = msg_limit.as_ref().map_or(OnExceed::Drop, |l| l.on_exceed);
    let mut counters = DirCounters {
        route: r.name.clone(),
        upstream: info.upstream.clone(),
        direction: "in",
        by_kind: Vec::new(),
        family: shared.metrics.messages.clone(),
    };
    let mut pending = first;
    loop {
        let next = match pending.take() {
            Some(m) => Some(Ok(m)),
            None => tokio::select! {
                m = rx.next() => m,
                _ = closer.token.cancelled() => {
                    send_assigned_close(&mut tx, closer.to_upstream.get(), shared.tuning.close_grace).await;
                    return;
                }
            },
        };
        let msg = match next {
            Some(Ok(m)) => m,
            Some(Err(e)) => {
                // The client broke the protocol or the connection: the client gets a close frame
                // saying why where that still makes sense, the upstream a 1001.
                tracing::debug!(session = info.id, error = %e, "client read failed");
                if matches!(e, tungstenite::Error::Capacity(_)) {
                    shared
                        .metrics
                        .rate_limited
                        .get_or_create(&crate::metrics::LimitLabels {
                            route: r.name.clone(),
                            limit: "message_size",
                        })
                        .inc();
                }
                closer.end(
                    read_error_close(&e),
                    Some(close_frame(CloseCode::Away, "client gone")),
                );
                send_assigned_close(&mut tx, closer.to_upstream.get(), shared.tuning.close_grace)
                    .await;
                return;
            }
            None => {
                closer.end(None, Some(close_frame(CloseCode::Away, "client gone")));
                send_assigned_close(&mut tx, closer.to_upstream.get(), shared.tuning.close_grace)
                    .await;
                return;
            }
        };
        let len = match &msg {
            Message::Text(t) => t.len(),
            Message::Binary(b) => b.len(),
            Message::Close(frame) => {
                // Forward the client's close as it is; the upstream's answer comes back the
                // other way.
                let _ = tx.send(Message::Close(frame.clone())).await;
                return;
            }
            _ => continue, // pings are answered by tungstenite; pongs end here
        };
        closer.touch();
        let signal = match (&msg, read_signal) {
            (Message::Text(t), true) => Some(Signal::read(t.as_str(), &ws.signaling)),
            _ => None,
        };
        if let Some(s) = &signal {
            if let Some(room) = &s.room {
                let _ = info.room.set(room.clone());
            }
            if let Some(peer) = &s.peer {
                let _ = info.peer.set(peer.clone());
            }
        }
        // Message bucket (per connection, owned by this task: no lock).
        if let (Some(bucket), Some(limit)) = (msg_bucket.as_mut(), msg_limit.as_ref())
            && let Verdict::Limited { .. } = bucket.try_take(&limit.rate, state::now())
        {
            shared.metrics.rate_limited(&r.name, "messages");
            if limit.on_exceed == OnExceed::Close {
                closer.end(
                    Some(close_frame(CloseCode::Policy, "message rate limit")),
                    Some(close_frame(CloseCode::Away, "client closed by policy")),
                );
                send_assigned_close(&mut tx, closer.to_upstream.get(), shared.tuning.close_grace)
                    .await;
                return;
            }
            info.dropped.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        // Room bucket (shared by every session of the room).
        if let Some(rooms) = &route.rooms
            && let Some(room) = signal
                .as_ref()
                .and_then(|s| s.room.as_deref())
                .or(info.room.get().map(String::as_str))
            && let Verdict::Limited { .. } = state::take(rooms, room)
        {
            shared.metrics.rate_limited(&r.name, "rooms");
            if on_exceed_rooms == OnExceed::Close {
                closer.end(
                    Some(close_frame(CloseCode::Policy, "room rate limit")),
                    Some(close_frame(CloseCode::Away, "client closed by policy")),
                );
                send_assigned_close(&mut tx, closer.to_upstream.get(), shared.tuning.close_grace)
                    .await;
                return;
            }
            info.dropped.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        counters.inc(kind_label(&msg, signal.as_ref()));
        info.messages_in.fetch_add(1, Ordering::Relaxed);
        info.bytes_in.fetch_add(len as u64, Ordering::Relaxed);
        let sent = tokio::select! {
            s = tx.send(msg) => s,
            _ = closer.token.cancelled() => {
                send_assigned_close(&mut tx, closer.to_upstream.get(), shared.tuning.close_grace).await;
                return;
            }
        };
        if let Err(e) = sent {
            tracing::debug!(session = info.id, error = %e, "upstream write failed");
            shared
                .metrics
                .upstream_error(&r.name, &info.upstream, "reset");
            closer.end(Some(close_frame(CloseCode::Error, "upstream failed")), None);
            return;
        }
    }
}

/// Upstream → client.
async fn pump_out<C>(
    shared: Arc<Shared>,
    route: Arc<RouteRuntime>,
    info: Arc<SessionInfo>,
    closer: Arc<Closer>,
    mut rx: Source<TcpStream>,
    mut tx: Sink<C>,
) where
    C: AsyncRead + AsyncWrite + Unpin,
{
    let r = &route.route;
    let ws = r.websocket.clone().unwrap_or_default();
    let read_type = ws.signaling.kind.is_some();
    let mut counters = DirCounters {
        route: r.name.clone(),
        upstream: info.upstream.clone(),
        direction: "out",
        by_kind: Vec::new(),
        family: shared.metrics.messages.clone(),
    };
    loop {
        let next = tokio::select! {
            m = rx.next() => m,
            _ = closer.token.cancelled() => {
                send_assigned_close(&mut tx, closer.to_client.get(), shared.tuning.close_grace).await;
                return;
            }
        };
        let msg = match next {
            Some(Ok(m)) => m,
            Some(Err(e)) => {
                // The upstream failed mid-session: 1014 (bad gateway) to the client; if it broke
                // the protocol (or sent an oversized message) it gets a close frame saying so.
                tracing::debug!(session = info.id, error = %e, "upstream read failed");
                let kind = if read_error_close(&e).is_some() {
                    "protocol"
                } else {
                    "reset"
                };
                shared.metrics.upstream_error(&r.name, &info.upstream, kind);
                closer.end(
                    Some(close_frame(CloseCode::Error, "upstream failed")),
                    read_error_close(&e),
                );
                send_assigned_close(&mut tx, closer.to_client.get(), shared.tuning.close_grace)
                    .await;
                return;
            }
            None => {
                shared
                    .metrics
                    .upstream_error(&r.name, &info.upstream, "reset");
                closer.end(
                    Some(close_frame(
                        CloseCode::Error,
                        "upstream closed the connection",
                    )),
                    None,
                );
                send_assigned_close(&mut tx, closer.to_client.get(), shared.tuning.close_grace)
                    .await;
                return;
            }
        };
        let len = match &msg {
            Message::Text(t) => t.len(),
            Message::Binary(b) => b.len(),
            Message::Close(frame) => {
                let _ = tx.send(Message::Close(frame.clone())).await;
                return;
            }
            _ => continue,
        };
        closer.touch();
        let signal = match (&msg, read_type) {
            (Message::Text(t), true) => Some(Signal::read(t.as_str(), &ws.signaling)),
            _ => None,
        };
        counters.inc(kind_label(&msg, signal.as_ref()));
        info.messages_out.fetch_add(1, Ordering::Relaxed);
        info.bytes_out.fetch_add(len as u64, Ordering::Relaxed);
        let sent = tokio::select! {
            s = tx.send(msg) => s,
            _ = closer.token.cancelled() => {
                send_assigned_close(&mut tx, closer.to_client.get(), shared.tuning.close_grace).await;
                return;
            }
        };
        if let Err(e) = sent {
            tracing::debug!(session = info.id, error = %e, "client write failed");
            closer.end(None, Some(close_frame(CloseCode::Away, "client gone")));
            return;
        }
    }
}
