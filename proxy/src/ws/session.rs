//! A session: two pumps (client → upstream, upstream → client), each in its own task, and a
//! coordinator that owns them (idle timeout, drain, close grace).
//!
//! Whoever ends a session first decides, once, which close frame each leg gets
//! ([`Closer::end`]); both pumps then send their leg's frame and stop. A close frame from one
//! side is passed to the other as it is, and the other side's answer comes back the same way.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures_util::{FutureExt, SinkExt, StreamExt};
use prometheus_client::metrics::counter::Counter;
use sigmesh_core::bucket::Verdict;
use sigmesh_core::config::Signaling;
use sigmesh_core::frame::policy::{Decision, Limiter};
use sigmesh_core::signal::Reading;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_util::sync::CancellationToken;

use super::close_frame;
use super::connect::UpstreamWs;
use crate::metrics::{KindLabel, MessageLabels, RouteUpstream};
use crate::sessions::SessionInfo;
use crate::state::{self, RouteRuntime, Shared};
use crate::telemetry::{Direction, SessionTrace};

pub(super) fn read_error_close(e: &tungstenite::Error) -> Option<CloseFrame> {
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
    /// The session's span when tracing is on and it is sampled.
    trace: Option<Arc<SessionTrace>>,
}

impl Closer {
    fn end(&self, to_client: Option<CloseFrame>, to_upstream: Option<CloseFrame>) {
        if let Some(t) = &self.trace
            && let Some(f) = to_client.as_ref().or(to_upstream.as_ref())
        {
            t.closed("proxy", Some(f.code.into()), f.reason.as_str());
        }
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
    fn new(shared: &Shared, info: &SessionInfo, direction: &'static str) -> DirCounters {
        DirCounters {
            route: info.route.clone(),
            upstream: info.upstream.clone(),
            direction,
            by_kind: Vec::new(),
            family: shared.metrics.messages.clone(),
        }
    }

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

/// The `type` label of a message: `binary`, or for text what the reader found (a fixed set, see
/// [`Reading::label`]: a known signaling type, or `other`).
fn kind_label(msg: &Message, signal: Option<&Reading<'_>>) -> &'static str {
    match (msg, signal) {
        (Message::Binary(_), _) => "binary",
        (_, Some(s)) => s.label,
        _ => "text",
    }
}

/// Runs a session between two upgraded legs until both are closed.
///
/// The legs are split before the session's future is built, so the future (which lives as
/// long as the session) holds only the halves' pointers, not a second copy of each stream.
pub(super) fn run_session<C>(
    shared: Arc<Shared>,
    route: Arc<RouteRuntime>,
    info: Arc<SessionInfo>,
    client_ws: WebSocketStream<C>,
    upstream_ws: UpstreamWs,
    first: Option<Message>,
    trace: Option<Arc<SessionTrace>>,
) -> impl Future<Output = ()> + Send
where
    C: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let client = client_ws.split();
    let upstream = upstream_ws.split();
    session(shared, route, info, client, upstream, first, trace)
}

async fn session<C>(
    shared: Arc<Shared>,
    route: Arc<RouteRuntime>,
    info: Arc<SessionInfo>,
    (c_tx, c_rx): (Sink<C>, Source<C>),
    (u_tx, u_rx): (Sink<TcpStream>, Source<TcpStream>),
    first: Option<Message>,
    trace: Option<Arc<SessionTrace>>,
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
        trace: trace.clone().filter(|t| t.is_recording()),
    });
    closer.touch();
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
    if let Some(t) = &trace {
        t.finish(Some(&info));
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

/// The next message of a leg. What is already readable is taken without waiting; before
/// waiting, the other leg's queued frames are flushed. So a burst of messages goes out in one
/// write, and nothing stays queued while the relay waits.
async fn next_message<S, R>(
    rx: &mut Source<R>,
    tx: &mut Sink<S>,
    first: &mut Option<Message>,
) -> Option<Result<Message, tungstenite::Error>>
where
    S: AsyncRead + AsyncWrite + Unpin,
    R: AsyncRead + AsyncWrite + Unpin,
{
    if let Some(m) = first.take() {
        return Some(Ok(m));
    }
    if let Some(ready) = rx.next().now_or_never() {
        return ready;
    }
    if let Err(e) = tx.flush().await {
        return Some(Err(e));
    }
    rx.next().await
}

/// A peer's close frame (`from` is `client` or `upstream`): recorded, passed to the other
/// leg as it is (that leg's answer comes back the other way), then the peer's leg is read until
/// its connection ends (or the session is cancelled), which makes tungstenite write its queued
/// close reply to the peer instead of dropping the socket under it.
async fn pass_close<S, R>(
    closer: &Closer,
    from: &'static str,
    frame: Option<CloseFrame>,
    tx: &mut Sink<S>,
    rx: &mut Source<R>,
) where
    S: AsyncRead + AsyncWrite + Unpin,
    R: AsyncRead + AsyncWrite + Unpin,
{
    if let Some(t) = &closer.trace {
        let f = frame.as_ref();
        t.closed(
            from,
            f.map(|f| f.code.into()),
            f.map_or("", |f| f.reason.as_str()),
        );
    }
    let _ = tx.send(Message::Close(frame)).await;
    loop {
        tokio::select! {
            m = rx.next() => if !matches!(m, Some(Ok(_))) { return },
            _ = closer.token.cancelled() => return,
        }
    }
}

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
    let no_signaling = Signaling::default();
    let signaling = r.websocket.as_ref().map_or(&no_signaling, |w| &w.signaling);
    let mut reader = super::reading::MessageReader::new(&shared, signaling, &info, true);
    // Message bucket (per connection, owned by this task: no lock) and room buckets (shared
    // by every session of the room), applied by core's policy.
    let mut limiter = Limiter::new(r, state::now());
    let mut counters = DirCounters::new(&shared, &info, "in");
    let mut first = first;
    loop {
        let next = tokio::select! {
            m = next_message(&mut rx, &mut tx, &mut first) => m,
            _ = closer.token.cancelled() => {
                send_assigned_close(&mut tx, closer.to_upstream.get(), shared.tuning.close_grace).await;
                return;
            }
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
                pass_close(&closer, "client", frame.clone(), &mut tx, &mut rx).await;
                return;
            }
            _ => continue, // pings are answered by tungstenite; pongs end here
        };
        closer.touch();
        // Read once: kind, room, peer, ICE candidates, call setup.
        let signal = match &msg {
            Message::Text(t) => Some(reader.read(t.as_str())),
            _ => None,
        };
        if let Some(s) = &signal {
            if let Some(room) = &s.room
                && info.room.get().is_none()
            {
                let _ = info.room.set(room.to_string());
            }
            if let Some(peer) = &s.peer
                && info.peer.get().is_none()
            {
                let _ = info.peer.set(peer.to_string());
            }
        }
        let decision = if limiter.is_active() {
            let room = signal
                .as_ref()
                .and_then(|s| s.room.as_deref())
                .or(info.room.get().map(String::as_str));
            let rooms = route.rooms.as_ref();
            limiter.decide(room, state::now(), &mut |room, _| match rooms {
                Some(b) => state::take(b, room),
                None => Verdict::Allow { remaining: 0 },
            })
        } else {
            Decision::Forward
        };
        match decision {
            Decision::Forward => {}
            Decision::Drop(limit) => {
                shared.metrics.rate_limited(&r.name, limit.label());
                info.dropped.fetch_add(1, Ordering::Relaxed);
                if let Some(t) = &closer.trace {
                    t.message(
                        Direction::In,
                        kind_label(&msg, signal.as_ref()),
                        len,
                        Some(limit.label()),
                    );
                }
                continue;
            }
            Decision::Close(limit) => {
                shared.metrics.rate_limited(&r.name, limit.label());
                closer.end(
                    Some(close_frame(CloseCode::Policy, limit.close_reason())),
                    Some(close_frame(CloseCode::Away, "client closed by policy")),
                );
                send_assigned_close(&mut tx, closer.to_upstream.get(), shared.tuning.close_grace)
                    .await;
                return;
            }
        }
        let label = kind_label(&msg, signal.as_ref());
        if let Some(t) = &closer.trace {
            t.message(Direction::In, label, len, None);
        }
        counters.inc(label);
        info.messages_in.fetch_add(1, Ordering::Relaxed);
        info.bytes_in.fetch_add(len as u64, Ordering::Relaxed);
        let sent = tokio::select! {
            s = tx.feed(msg) => s,
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
    let no_signaling = Signaling::default();
    let signaling = r.websocket.as_ref().map_or(&no_signaling, |w| &w.signaling);
    let mut reader = super::reading::MessageReader::new(&shared, signaling, &info, false);
    let mut counters = DirCounters::new(&shared, &info, "out");
    let mut first = None;
    loop {
        let next = tokio::select! {
            m = next_message(&mut rx, &mut tx, &mut first) => m,
            _ = closer.token.cancelled() => {
                send_assigned_close(&mut tx, closer.to_client.get(), shared.tuning.close_grace).await;
                return;
            }
        };
        let msg = match next {
            Some(Ok(m)) => m,
            Some(Err(e)) => {
                // The upstream failed mid-session: 1011 to the client (1014 is refused by
                // tungstenite and other stacks as a protocol error); if it broke
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
                pass_close(&closer, "upstream", frame.clone(), &mut tx, &mut rx).await;
                return;
            }
            _ => continue,
        };
        closer.touch();
        let signal = match &msg {
            Message::Text(t) => Some(reader.read(t.as_str())),
            _ => None,
        };
        let label = kind_label(&msg, signal.as_ref());
        if let Some(t) = &closer.trace {
            t.message(Direction::Out, label, len, None);
        }
        counters.inc(label);
        info.messages_out.fetch_add(1, Ordering::Relaxed);
        info.bytes_out.fetch_add(len as u64, Ordering::Relaxed);
        let sent = tokio::select! {
            s = tx.feed(msg) => s,
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
