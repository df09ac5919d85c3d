//! WebSocket upgrades that core's request phase let through: the upstream handshake first
//! (502 if it fails, else 101 to the client), then the session that relays frame by frame
//! between the two legs.
//!
//! ```text
//! Verdict::Upgrade ─► upstream handshake ─► 502 | 101 to the client ─► session (one task):
//!                                                 client → upstream   core Session: limits, reading
//!                                                 upstream → client   core Session: reading, counters
//!                                                 idle timer, drain, close grace
//! Verdict::AwaitFirstMessage ─► 101 ─► core FirstMessage ─► pick ─► upstream handshake ─► session
//! ```
//!
//! The proxy terminates each leg's TCP connection and HTTP handshake; core reads every frame
//! (sizes, limits, the text of signaling messages), and frames pass as they are: no re-framing,
//! no re-masking, and no buffer per session beyond what a slow peer has not taken yet
//! ([`relay`]).

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderValue};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use sigmesh_core::frame::{close_code, close_frame};
use sigmesh_core::label::{LimitKind, Outcome, Party};
use sigmesh_core::request::{AwaitFirst, HeaderEdits, Upgrade};
use sigmesh_core::session::{First, FirstMessage, SessionOptions};
use sigmesh_core::split::Reason;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tungstenite::handshake::derive_accept_key;

use crate::http_util::{self, Body};
use crate::sessions::SessionInfo;
use crate::state::{Places, Runtime, Shared};
use crate::telemetry::SessionTrace;

mod connect;
mod failover;
mod record;
pub mod relay;
mod session;

use crate::io::Leg;
pub use connect::UpstreamError;
use connect::{UpstreamConn, connect_upstream};

/// `Upgrade: websocket` with `Connection: upgrade` (the upstream's 101).
fn upgrades_to_websocket(h: &HeaderMap) -> bool {
    http_util::has_token(h, header::UPGRADE, "websocket")
        && http_util::has_token(h, header::CONNECTION, "upgrade")
}

/// The client's side of an upgrade, taken from its request.
struct ClientHandshake {
    /// `Sec-WebSocket-Key` of an HTTP/1.1 upgrade; `None` for an HTTP/2 extended CONNECT
    /// (RFC 8441: no key, and 200 instead of 101).
    key: Option<HeaderValue>,
    on_upgrade: hyper::upgrade::OnUpgrade,
    /// The headers for the upstream request (core's edits applied).
    headers: HeaderMap,
    path_and_query: String,
}

impl ClientHandshake {
    /// `offer`: the request carries core's `permessage-deflate` offer for the upstream (else
    /// every extension offer is left out).
    fn take(
        req: &mut Request<Incoming>,
        client: SocketAddr,
        edits: &HeaderEdits,
        trusted_peer: bool,
        offer: bool,
    ) -> Option<ClientHandshake> {
        // Core checked the handshake's form: an HTTP/1.1 request without a key never gets here.
        let key = match req.method() == http::Method::CONNECT {
            true => None,
            false => Some(req.headers().get(header::SEC_WEBSOCKET_KEY).cloned()?),
        };
        Some(ClientHandshake {
            key,
            on_upgrade: hyper::upgrade::on(&mut *req),
            headers: upstream_headers(
                req.headers(),
                (client, http_util::scheme_of(req)),
                edits,
                trusted_peer,
                offer,
            ),
            path_and_query: http_util::upstream_path_and_query(req.uri()),
        })
    }
}

fn missing_key() -> Response<Body> {
    http_util::text(StatusCode::BAD_REQUEST, "missing sec-websocket-key")
}

/// What a session is started with, whichever way its upstream was picked.
struct Start {
    shared: Arc<Shared>,
    runtime: Arc<Runtime>,
    route: usize,
    client: SocketAddr,
    trace: Option<Arc<SessionTrace>>,
    /// The session's places in the live-session counts: given back when the session ends, or
    /// when it never starts (this is dropped).
    places: Places,
    /// What it needs to move to another endpoint (`on_upstream_failure: reconnect`).
    failover: Option<Box<failover::Failover>>,
}

/// An upgrade to the upstream core picked: its handshake first, then 101 and the session.
pub async fn upgrade(
    shared: Arc<Shared>,
    runtime: Arc<Runtime>,
    mut up: Upgrade,
    global: Option<crate::cluster::GlobalLease>,
    mut req: Request<Incoming>,
    client: SocketAddr,
    trace: Option<Arc<SessionTrace>>,
) -> Response<Body> {
    let trusted = runtime.trusts(client.ip());
    // `affinity: engine_io`: the upgrade of a known sid goes where the sid was issued.
    let pinned = runtime
        .pools()
        .sids(up.route)
        .and_then(|_| crate::pool::engine_io::sid_of(req.uri().query()))
        .and_then(|sid| runtime.pools().pinned(up.route, sid));
    if let Some((upstream, _)) = &pinned {
        up.upstream = *upstream;
    }
    let Some(hs) = ClientHandshake::take(&mut req, client, &up.edits, trusted, up.deflate) else {
        return missing_key();
    };
    let mut places = Places::new(shared.counts().clone(), std::mem::take(&mut up.leases));
    places.global = global;
    let failover = failover::Failover::new(
        &runtime.route(up.route).route,
        (&hs.headers, &hs.path_and_query),
        shared.tuning().upstream_handshake_timeout,
    );
    let start = Start {
        shared,
        runtime,
        route: up.route,
        client,
        trace,
        places,
        failover,
    };
    let conn = start
        .connect(
            up.upstream,
            hs.headers,
            hs.path_and_query,
            (up.room.is_some(), up.room.as_deref()),
            pinned.map(|(_, lease)| lease),
        )
        .await;
    let mut conn = match conn {
        Ok(conn) => conn,
        Err(e) => {
            let status = match e {
                UpstreamError::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
                _ => StatusCode::BAD_GATEWAY,
            };
            if let Some(t) = &start.trace {
                t.refused(status.as_u16());
            }
            return match e {
                UpstreamError::Unavailable => {
                    http_util::text(status, "no healthy upstream endpoint")
                }
                _ => http_util::text(status, "upstream handshake failed"),
            };
        }
    };
    let mut start = start;
    start.places.endpoint = conn.lease.take();
    let protocol = conn.headers.get(header::SEC_WEBSOCKET_PROTOCOL).cloned();
    let mut resp = switching_protocols(hs.key.as_ref(), protocol, &conn.headers);
    let compressed = conn.extensions.is_some();
    if let Some(ext) = conn
        .extensions
        .as_deref()
        .and_then(|e| HeaderValue::from_str(e).ok())
    {
        resp.headers_mut()
            .insert(header::SEC_WEBSOCKET_EXTENSIONS, ext);
    }
    if let Some(t) = &start.trace {
        t.accepted();
    }
    let (upstream, room) = (up.upstream, up.room);
    // Only the socket and its read-ahead go on: the 101's headers share hyper's whole read
    // buffer (8 KiB), which an idle session must not keep.
    let upstream_leg = conn.into_leg();
    // The session's future is the task itself: it completes the client's upgrade first.
    tokio::spawn(start.run(
        upstream,
        room,
        (session::ClientLeg::Upgrade(hs.on_upgrade), upstream_leg),
        compressed,
    ));
    resp
}

/// `sticky: message:/pointer`: 101 to the client at once; its first message picks the
/// upstream (the first message's frames, as read, are the first bytes the session relays).
pub fn await_first(
    shared: Arc<Shared>,
    runtime: Arc<Runtime>,
    mut wait: AwaitFirst,
    global: Option<crate::cluster::GlobalLease>,
    mut req: Request<Incoming>,
    client: SocketAddr,
    trace: Option<Arc<SessionTrace>>,
) -> Response<Body> {
    let Some(hs) = ClientHandshake::take(
        &mut req,
        client,
        &wait.edits,
        runtime.trusts(client.ip()),
        false,
    ) else {
        return missing_key();
    };
    if let Some(t) = &trace {
        t.accepted();
    }
    let mut places = Places::new(shared.counts().clone(), std::mem::take(&mut wait.leases));
    places.global = global;
    let start = Start {
        shared,
        runtime,
        route: wait.route,
        client,
        trace,
        places,
        failover: None,
    };
    let (on_upgrade, headers, pq) = (hs.on_upgrade, hs.headers, hs.path_and_query);
    // This task ends when the session starts: the session is a task of its own, which keeps
    // nothing of the wait.
    tokio::spawn(async move {
        let Some(client_leg) = upgraded_leg(on_upgrade).await else {
            return;
        };
        start.first_message(wait, client_leg, headers, pq).await;
    });
    switching_protocols(hs.key.as_ref(), None, &HeaderMap::new())
}

impl Start {
    /// Connects to an endpoint of upstream `index` of the route (picked by `key`, the room)
    /// and completes its handshake; a failure is traced, logged and counted here (the one
    /// place), told to the endpoint's health, then returned. On success the session's place
    /// on the endpoint is in the connection ([`UpstreamConn::lease`]).
    async fn connect(
        &self,
        index: usize,
        mut headers: HeaderMap,
        path_and_query: String,
        (sticky, key): (bool, Option<&str>),
        pinned: Option<crate::pool::Lease>,
    ) -> Result<UpstreamConn, UpstreamError> {
        let compiled = self.runtime.route(self.route);
        let route = &compiled.route;
        let uname = route.upstreams[index].name.as_str();
        let lease = pinned.or_else(|| {
            self.runtime
                .pools()
                .get(self.route, index)
                .and_then(|p| p.pick(key, rand::random()))
        });
        let url = lease.as_ref().map_or("", |l| l.endpoint().id.as_str());
        let hs = self.trace.as_ref().map(|t| {
            t.picked(uname, sticky);
            t.upstream_handshake(uname, url, &mut headers)
        });
        let result = match &lease {
            Some(lease) => {
                let ep = lease.endpoint();
                connect_upstream(
                    (&ep.target, ep.dial),
                    route.matcher.path_prefix.as_deref(),
                    &path_and_query,
                    headers,
                    self.shared.tuning().upstream_handshake_timeout,
                    lease.tls(),
                )
                .await
            }
            None => Err(UpstreamError::Unavailable),
        };
        let result = match (result, lease) {
            (Ok(mut conn), Some(lease)) => {
                lease.passed();
                conn.lease = Some(lease);
                Ok(conn)
            }
            (Err(e), Some(lease)) => {
                if e.is_endpoint_failure() {
                    lease.failed(&e.to_string());
                }
                Err(e)
            }
            (r, None) => r,
        };
        match (&result, hs) {
            (Ok(_), Some(h)) => h.done(),
            (Err(e), Some(h)) => h.failed(e.kind(), e.status(), &e.to_string()),
            _ => {}
        }
        if let Err(e) = &result {
            tracing::warn!(route = %route.name, upstream = uname, error = %e, "upstream handshake failed");
            let m = self.shared.metrics();
            m.upstream_error(&route.name, uname, e.kind());
            m.connection(&route.name, uname, Outcome::UpstreamError);
            self.shared.rollouts().handshake_failed(&route.name, uname);
        }
        result
    }

    /// Runs the session between the two upgraded legs.
    ///
    /// Not an `async fn`: the session's future is built here and returned, so the task holds
    /// it without another layer of state around it (an idle session's memory is mostly this
    /// future).
    fn run(
        self,
        upstream: usize,
        room: Option<String>,
        (client, upstream_leg): (session::ClientLeg, Leg),
        compressed: bool,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        let route = &self.runtime.route(self.route).route;
        let info = Arc::new(SessionInfo::new(
            self.shared.sessions().next_id(),
            &route.name,
            &route.upstreams[upstream].name,
            self.client,
        ));
        if let Some(room) = &room {
            let _ = info.room.set(sigmesh_core::request::shown(room).to_owned());
        }
        let opts = SessionOptions {
            sticky_room: room,
            // Negotiated only without a context either way: read through.
            deflate: compressed,
            inflate: compressed,
            mask_key: rand::random(),
            now: crate::clock::now(),
            read_dropped: self.trace.as_ref().is_some_and(|t| t.is_recording()),
        };
        session::run(session::Parts {
            shared: self.shared,
            runtime: self.runtime,
            route: self.route,
            info,
            client,
            upstream: upstream_leg,
            trace: self.trace,
            opts: Some(opts),
            places: self.places,
            failover: self.failover,
        })
    }

    /// Waits for the client's first message (bounded in time and size), picks, connects, and
    /// spawns the session (a task of its own: the wait's state is not kept beside it).
    async fn first_message(
        mut self,
        mut wait: AwaitFirst,
        mut client_leg: Leg,
        headers: HeaderMap,
        pq: String,
    ) {
        let route = &self.runtime.route(self.route).route;
        let timeout = self.shared.tuning().first_message_timeout;
        let reading = read_first(&mut client_leg, FirstMessage::new(route));
        let first = tokio::select! {
            m = tokio::time::timeout(timeout, reading) => {
                m.unwrap_or(First::Refused(close_code::POLICY, "no first message"))
            }
            _ = self.shared.drained() => First::Refused(close_code::AWAY, "server shutting down"),
        };
        let text = match first {
            First::Message(text) => text,
            First::Refused(code, reason) => {
                if code == close_code::TOO_BIG {
                    self.shared
                        .metrics()
                        .rate_limited(&route.name, LimitKind::MessageSize);
                }
                return refuse_first(&mut client_leg.io, code, reason).await;
            }
            First::Gone | First::More => return,
        };
        let up = wait.pick(
            self.runtime.compiled(),
            &*self.runtime,
            text.as_deref(),
            rand::random(),
        );
        let mut headers = headers;
        http_util::apply_edits(&mut headers, &up.edits);
        let sticky = up.reason == Reason::Sticky;
        self.failover = failover::Failover::new(
            route,
            (&headers, &pq),
            self.shared.tuning().upstream_handshake_timeout,
        );
        match self
            .connect(up.upstream, headers, pq, (sticky, up.room.as_deref()), None)
            .await
        {
            Ok(mut conn) => {
                let mut this = self;
                this.places.endpoint = conn.lease.take();
                let upstream_leg = conn.into_leg();
                tokio::spawn(this.run(
                    up.upstream,
                    None,
                    (session::ClientLeg::Ready(client_leg), upstream_leg),
                    false,
                ));
            }
            Err(_) => {
                if let Some(t) = &self.trace {
                    t.closed(
                        Party::Proxy,
                        Some(close_code::SERVER_ERROR),
                        "upstream unavailable",
                    );
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
}

/// Reads the client's bytes until core says its first data message is complete. Everything
/// read stays in `leg.pre` for the session to relay (pings and all), so nothing is lost.
async fn read_first(leg: &mut Leg, mut first: FirstMessage) -> First {
    let mut acc = BytesMut::from(&leg.pre[..]);
    let mut seen = 0;
    loop {
        let progress = first.push(&acc[seen..]);
        seen = acc.len();
        match progress {
            First::More => {}
            First::Message(text) => {
                leg.pre = acc.freeze();
                return First::Message(text);
            }
            done => return done,
        }
        acc.reserve(4096);
        match leg.io.read_buf(&mut acc).await {
            Ok(0) | Err(_) => return First::Gone,
            Ok(_) => {}
        }
    }
}

/// Sends the client a close frame and ends its connection.
async fn refuse_first(io: &mut crate::io::Stream, code: u16, reason: &str) {
    let frame = close_frame(code, reason, None);
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), async {
        let _ = io.write_all(&frame).await;
        let _ = io.shutdown().await;
    })
    .await;
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
    match upgraded.downcast::<TokioIo<crate::io::Stream>>() {
        Ok(parts) => Some(Leg {
            io: parts.io.into_inner(),
            pre: parts.read_buf,
        }),
        // An HTTP/2 stream (extended CONNECT): hyper's own type, with its flow control.
        Err(stream) => Some(Leg {
            io: crate::io::Stream::H2(Box::new(TokioIo::new(stream))),
            pre: Bytes::new(),
        }),
    }
}

/// The 101 answer to the client, with the upstream's subprotocol and end-to-end headers.
/// With `key` (HTTP/1.1): 101 with `Sec-WebSocket-Accept`; without (an HTTP/2 extended
/// CONNECT, RFC 8441 §5): 200, the stream then carries the frames.
fn switching_protocols(
    key: Option<&HeaderValue>,
    protocol: Option<HeaderValue>,
    upstream: &HeaderMap,
) -> Response<Body> {
    let mut r = Response::new(http_util::full(Bytes::new()));
    if key.is_some() {
        *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    }
    let h = r.headers_mut();
    for (name, value) in upstream {
        if name == header::SET_COOKIE {
            h.append(name, value.clone());
        }
    }
    if let Some(key) = key {
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        if let Ok(v) = HeaderValue::from_str(&derive_accept_key(key.as_bytes())) {
            h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
        }
    }
    if let Some(p) = protocol {
        h.insert(header::SEC_WEBSOCKET_PROTOCOL, p);
    }
    r
}

/// The client's handshake headers to send upstream: end-to-end headers (cookies,
/// authorization, subprotocols, origin, ...) with core's edits (the split header), without
/// hop-by-hop and per-connection WebSocket headers (this build negotiates no extension), plus
/// `x-forwarded-*` and `traceparent`.
fn upstream_headers(
    client: &HeaderMap,
    (addr, proto): (SocketAddr, &'static str),
    edits: &HeaderEdits,
    trusted_peer: bool,
    offer: bool,
) -> HeaderMap {
    let mut h = client.clone();
    http_util::strip_hop_by_hop(&mut h);
    if !offer {
        h.remove(header::SEC_WEBSOCKET_EXTENSIONS);
    }
    // Core's edits set the rewritten offer (no context takeover), when there is one.
    http_util::apply_edits(&mut h, edits);
    for n in [
        header::HOST,
        header::SEC_WEBSOCKET_KEY,
        header::SEC_WEBSOCKET_VERSION,
        header::SEC_WEBSOCKET_ACCEPT,
        header::CONTENT_LENGTH,
    ] {
        h.remove(n);
    }
    if !offer {
        h.remove(header::SEC_WEBSOCKET_EXTENSIONS);
    }
    http_util::set_forwarded(&mut h, addr.ip(), proto, trusted_peer);
    http_util::ensure_traceparent(&mut h);
    h
}
