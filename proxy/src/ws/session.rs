//! A session: both ways (client → upstream, upstream → client) in one task, frame by frame
//! through core's readers ([`super::relay`]), with the idle timeout, the drain and the close
//! grace.
//!
//! Frames pass as they are, masks included: a close frame from one side reaches the other as
//! it was sent, and its answer comes back the same way; pings are answered end to end. The proxy
//! adds a close frame of its own only when it ends a session (idle, drain, a limit, a leg gone),
//! at a frame boundary, and then shuts that leg's write side:
//!
//! | event | client gets | upstream gets |
//! |---|---|---|
//! | message over `max_message_bytes` | 1009 | 1009 |
//! | message bucket empty, `on_exceed: close` | 1008 | 1008 |
//! | client's frames break RFC 6455 | 1002 | 1002 |
//! | client gone without a close frame | – | 1001 `client gone` |
//! | upstream gone without a close frame, or failed | 1011 | – |
//! | upstream's frames break RFC 6455 | 1002 | 1002 |
//! | idle timeout / drain | 1001 | 1001 |

use std::future::poll_fn;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use prometheus_client::metrics::counter::Counter;
use sigmesh_core::bucket::Verdict;
use sigmesh_core::config::{Route, Signaling};
use sigmesh_core::frame::policy::{Decision, Limit, Limiter};
use sigmesh_core::frame::{
    Action, Closed, Direction as FrameDir, FrameReader, Handler, MessageInfo, ReaderConfig,
    close_code,
};
use tokio::net::TcpStream;

use super::reading::MessageReader;
use super::relay::{Event, Way};
use crate::metrics::{KindLabel, MessageLabels, RouteUpstream};
use crate::sessions::SessionInfo;
use crate::state::{self, RouteRuntime, Shared};
use crate::telemetry::{Direction, SessionTrace};

/// 1011: the upstream failed (1014 is refused by tungstenite and other stacks as a protocol
/// error, so the contract's "1011 or 1014" is 1011).
const UPSTREAM_FAILED: u16 = close_code::SERVER_ERROR;
const AWAY: u16 = close_code::AWAY;

/// An upgraded connection: its socket, and what was read past the handshake.
pub(super) struct Leg {
    pub io: TcpStream,
    pub pre: Bytes,
}

/// How a route's sessions read the client's frames.
pub(super) fn client_reader(route: &Route, mask_key: [u8; 4]) -> ReaderConfig {
    let ws = route.websocket.as_ref();
    ReaderConfig {
        direction: FrameDir::ClientToServer,
        max_message_bytes: ws.map(|w| w.max_message_bytes),
        read_text: true,
        // A room bucket needs the room a message names before deciding on it.
        defer_text: route.limits.rooms.is_some() && ws.is_some_and(|w| w.signaling.room.is_some()),
        deflate: false,
        mask_key,
    }
}

fn upstream_reader() -> ReaderConfig {
    ReaderConfig {
        read_text: true,
        ..ReaderConfig::new(FrameDir::ServerToClient)
    }
}

/// Counters of one direction, resolved once per session and type.
struct DirCounters {
    direction: &'static str,
    by_kind: Vec<(&'static str, Counter)>,
}

impl DirCounters {
    fn new(direction: &'static str) -> DirCounters {
        DirCounters {
            direction,
            by_kind: Vec::new(),
        }
    }

    fn inc(&mut self, cx: &SessionCx<'_>, kind: &'static str) {
        if let Some((_, c)) = self.by_kind.iter().find(|(k, _)| *k == kind) {
            c.inc();
            return;
        }
        let c = cx
            .shared
            .metrics
            .messages
            .get_or_create_owned(&MessageLabels {
                route: cx.info.route.clone(),
                upstream: cx.info.upstream.clone(),
                direction: self.direction,
                kind: KindLabel(kind),
            });
        c.inc();
        self.by_kind.push((kind, c));
    }
}

/// What both ways' handlers read from the session (borrowed for one poll).
struct SessionCx<'a> {
    shared: &'a Shared,
    route: &'a RouteRuntime,
    signaling: &'a Signaling,
    info: &'a SessionInfo,
    trace: Option<&'a SessionTrace>,
}

impl SessionCx<'_> {
    /// Reads a text message with this session's signaling config into its counts and metrics.
    fn read<'t>(
        &self,
        reader: &mut MessageReader,
        text: &'t str,
        inbound: bool,
    ) -> sigmesh_core::signal::Reading<'t> {
        reader.read(
            text,
            self.signaling,
            self.info,
            &self.shared.metrics.signal,
            inbound,
        )
    }
}

/// The state of one way's handler, kept for the session.
struct Side {
    reader: MessageReader,
    counters: DirCounters,
    /// The peer's close frame has come through this way.
    closed: bool,
    /// (Upstream side) its failure has been counted and answered: later events of the same
    /// failure (a failed write, then a reset read) are not counted again.
    failed: bool,
    /// The signaling label of a deferred message read when it was decided.
    label: Option<&'static str>,
    /// The limit that cut the message now ending.
    cut_by: Option<Limit>,
}

impl Side {
    fn new(direction: &'static str) -> Side {
        Side {
            reader: MessageReader::default(),
            counters: DirCounters::new(direction),
            closed: false,
            failed: false,
            label: None,
            cut_by: None,
        }
    }
}

/// Client → upstream: message and room buckets, signaling, counters.
struct ClientSide<'a, 's> {
    cx: &'a SessionCx<'a>,
    side: &'s mut Side,
    limiter: &'s mut Limiter,
    last_activity: &'s mut Duration,
    /// [`state::now`] when the session was woken (one clock read per wake, not per message).
    now: Duration,
}

impl ClientSide<'_, '_> {
    /// Reads a text message: its label; the session's room and peer from the first that names
    /// them. Returns the message's own room.
    fn read(&mut self, text: &str) -> (&'static str, Option<String>) {
        let cx = self.cx;
        let r = cx.read(&mut self.side.reader, text, true);
        note_room_and_peer(cx.info, &r);
        (r.label, r.room.map(|c| c.into_owned()))
    }
}

fn note_room_and_peer(info: &SessionInfo, r: &sigmesh_core::signal::Reading<'_>) {
    if let Some(room) = &r.room
        && info.room.get().is_none()
    {
        let _ = info.room.set(room.to_string());
    }
    if let Some(peer) = &r.peer
        && info.peer.get().is_none()
    {
        let _ = info.peer.set(peer.to_string());
    }
}

impl Handler for ClientSide<'_, '_> {
    fn decide(&mut self, _: &MessageInfo, text: Option<&str>) -> Action {
        let mut own_room = None;
        if let Some(t) = text {
            let (label, room) = self.read(t);
            self.side.label = Some(label);
            own_room = room;
        }
        if !self.limiter.is_active() {
            return Action::Forward;
        }
        let cx = self.cx;
        let room = own_room
            .as_deref()
            .or(cx.info.room.get().map(String::as_str));
        let rooms = cx.route.rooms.as_ref();
        let decision = self
            .limiter
            .decide(room, self.now, &mut |room, _| match rooms {
                Some(b) => state::take(b, room),
                None => Verdict::Allow { remaining: 0 },
            });
        match decision {
            Decision::Forward => {}
            Decision::Drop(limit) | Decision::Close(limit) => {
                cx.shared
                    .metrics
                    .rate_limited(&cx.route.route.name, limit.label());
                self.side.cut_by = Some(limit);
            }
        }
        decision.action()
    }

    fn done(&mut self, msg: &MessageInfo, text: Option<&str>, forwarded: bool) {
        let cx = self.cx;
        let label = match (self.side.label.take(), text) {
            _ if !msg.text => "binary",
            (Some(l), _) => l,
            // A dropped message is read only for its trace event.
            (None, Some(t)) if forwarded || cx.trace.is_some() => self.read(t).0,
            (None, _) => "text",
        };
        let len = usize::try_from(msg.len).unwrap_or(usize::MAX);
        let cut_by = self.side.cut_by.take();
        if forwarded {
            *self.last_activity = self.now;
            if let Some(t) = cx.trace {
                t.message(Direction::In, label, len, None);
            }
            self.side.counters.inc(cx, label);
            cx.info.messages_in.fetch_add(1, Ordering::Relaxed);
            cx.info.bytes_in.fetch_add(msg.len, Ordering::Relaxed);
        } else {
            cx.info.dropped.fetch_add(1, Ordering::Relaxed);
            if let Some(t) = cx.trace {
                t.message(Direction::In, label, len, cut_by.map(Limit::label));
            }
        }
    }

    fn close(&mut self, code: Option<u16>, reason: &str) {
        self.side.closed = true;
        if let Some(t) = self.cx.trace {
            t.closed("client", code, reason);
        }
    }
}

/// Upstream → client: signaling (ICE counts, call setup), counters.
struct UpstreamSide<'a, 's> {
    cx: &'a SessionCx<'a>,
    side: &'s mut Side,
    last_activity: &'s mut Duration,
    now: Duration,
}

impl Handler for UpstreamSide<'_, '_> {
    fn decide(&mut self, _: &MessageInfo, _: Option<&str>) -> Action {
        Action::Forward
    }

    fn done(&mut self, msg: &MessageInfo, text: Option<&str>, _: bool) {
        let cx = self.cx;
        let label = match text {
            _ if !msg.text => "binary",
            Some(t) => cx.read(&mut self.side.reader, t, false).label,
            None => "text",
        };
        *self.last_activity = self.now;
        if let Some(t) = cx.trace {
            t.message(
                Direction::Out,
                label,
                usize::try_from(msg.len).unwrap_or(usize::MAX),
                None,
            );
        }
        self.side.counters.inc(cx, label);
        cx.info.messages_out.fetch_add(1, Ordering::Relaxed);
        cx.info.bytes_out.fetch_add(msg.len, Ordering::Relaxed);
    }

    fn close(&mut self, code: Option<u16>, reason: &str) {
        self.side.closed = true;
        if let Some(t) = self.cx.trace {
            t.closed("upstream", code, reason);
        }
    }
}

/// What woke the session.
enum Wake {
    In(Event),
    Out(Event),
    Drain,
    Timer,
    /// A close frame came through: the close grace starts.
    Closing,
    Done,
}

/// Runs a session between two upgraded legs until both are closed.
pub(super) async fn run_session(
    shared: Arc<Shared>,
    route: Arc<RouteRuntime>,
    info: Arc<SessionInfo>,
    client: Leg,
    upstream: Leg,
    trace: Option<Arc<SessionTrace>>,
) {
    let labels = RouteUpstream {
        route: info.route.clone(),
        upstream: info.upstream.clone(),
    };
    let active = shared
        .metrics
        .connections_active
        .get_or_create_owned(&labels);
    drop(labels);
    active.inc();
    shared
        .metrics
        .connection(&info.route, &info.upstream, "accepted");
    let _guard = shared.sessions.register(info.clone());
    tracing::debug!(session = info.id, route = %info.route, upstream = %info.upstream, client = %info.client, "session open");

    let no_signaling = Signaling::default();
    let ws = route.route.websocket.as_ref();
    let signaling = ws.map_or(&no_signaling, |w| &w.signaling);
    let idle = ws.map_or(Duration::from_secs(120), |w| w.idle_timeout);
    let recording = trace.as_deref().filter(|t| t.is_recording());
    let cx = SessionCx {
        shared: &shared,
        route: &route,
        signaling,
        info: &info,
        trace: recording,
    };
    let (mut c_io, mut u_io) = (client.io, upstream.io);
    let mut inbound = Way::new(
        FrameReader::new(client_reader(&route.route, rand::random())),
        client.pre,
    );
    let mut outbound = Way::new(FrameReader::new(upstream_reader()), upstream.pre);
    let mut c_side = Side::new("in");
    let mut u_side = Side::new("out");
    let mut limiter = Limiter::new(&route.route, state::now());
    let mut last_activity = state::now();

    let mut drain = std::pin::pin!(shared.drain.cancelled());
    let mut timer = std::pin::pin!(tokio::time::sleep(idle));
    // Set once the session is ending: the timer is then the close grace.
    let mut ending = false;
    loop {
        let wake = poll_fn(|task| {
            let now = state::now();
            let mut h = ClientSide {
                cx: &cx,
                side: &mut c_side,
                limiter: &mut limiter,
                last_activity: &mut last_activity,
                now,
            };
            if let Poll::Ready(ev) = inbound.poll(task, &mut c_io, &mut u_io, &mut h) {
                return Poll::Ready(Wake::In(ev));
            }
            let mut h = UpstreamSide {
                cx: &cx,
                side: &mut u_side,
                last_activity: &mut last_activity,
                now,
            };
            if let Poll::Ready(ev) = outbound.poll(task, &mut u_io, &mut c_io, &mut h) {
                return Poll::Ready(Wake::Out(ev));
            }
            if inbound.finished() && outbound.finished() {
                return Poll::Ready(Wake::Done);
            }
            if !ending && (c_side.closed || u_side.closed) {
                return Poll::Ready(Wake::Closing);
            }
            if !ending && drain.as_mut().poll(task).is_ready() {
                return Poll::Ready(Wake::Drain);
            }
            if timer.as_mut().poll(task).is_ready() {
                return Poll::Ready(Wake::Timer);
            }
            Poll::Pending
        })
        .await;
        let was_ending = ending;
        match wake {
            Wake::Done => break,
            Wake::Closing => ending = true,
            Wake::Timer if ending => {
                tracing::debug!(session = info.id, "close grace over");
                break;
            }
            Wake::Timer => {
                let quiet = state::now().saturating_sub(last_activity);
                if quiet >= idle {
                    tracing::debug!(session = info.id, "idle timeout");
                    let ways = (&mut inbound, &mut outbound);
                    proxy_close(&cx, ways, (&c_side, &u_side), (AWAY, "idle timeout"));
                    ending = true;
                } else {
                    timer
                        .as_mut()
                        .reset(tokio::time::Instant::now() + (idle - quiet));
                }
            }
            Wake::Drain => {
                let ways = (&mut inbound, &mut outbound);
                proxy_close(
                    &cx,
                    ways,
                    (&c_side, &u_side),
                    (AWAY, "server shutting down"),
                );
                ending = true;
            }
            Wake::In(ev) => {
                ending = true;
                client_event(&cx, ev, &c_side, &mut u_side, &mut inbound, &mut outbound);
            }
            Wake::Out(ev) => {
                ending = true;
                upstream_event(&cx, ev, &c_side, &mut u_side, &mut inbound, &mut outbound);
            }
        }
        if ending && !was_ending {
            timer
                .as_mut()
                .reset(tokio::time::Instant::now() + shared.tuning.close_grace);
        }
    }
    if let Some(t) = &trace {
        t.finish(Some(&info));
    }
    active.dec();
    tracing::debug!(session = info.id, "session closed");
}

/// The proxy ends the session: a close frame to each side whose peer has not sent one through
/// (that side is answering the other's close already).
fn proxy_close(
    cx: &SessionCx<'_>,
    (inbound, outbound): (&mut Way, &mut Way),
    (c_side, u_side): (&Side, &Side),
    (code, reason): (u16, &str),
) {
    if let Some(t) = cx.trace {
        t.closed("proxy", Some(code), reason);
    }
    if c_side.closed {
        inbound.shut_when_flushed();
    } else {
        inbound.close(code, reason);
    }
    if u_side.closed {
        outbound.shut_when_flushed();
    } else {
        outbound.close(code, reason);
    }
}

/// Something happened on the client → upstream way.
fn client_event(
    cx: &SessionCx<'_>,
    ev: Event,
    c_side: &Side,
    u_side: &mut Side,
    inbound: &mut Way,
    outbound: &mut Way,
) {
    match ev {
        Event::SrcEnded(e) => {
            // After its close frame the client may end the connection; without one it is gone:
            // the upstream hears so (unless it is closing the session itself).
            tracing::debug!(session = cx.info.id, error = ?e, "client ended");
            if !u_side.closed {
                client_gone(cx, c_side, inbound);
            }
        }
        Event::ReaderClosed(c) => {
            // The client broke a limit or the protocol: both sides get the reader's close.
            tracing::debug!(session = cx.info.id, close = %c, "client closed by the proxy");
            if c.code == close_code::TOO_BIG {
                cx.shared
                    .metrics
                    .rate_limited(&cx.route.route.name, "message_size");
            }
            reader_closed(cx, c, inbound, outbound);
        }
        Event::DstFailed(e) => {
            // Writing to the upstream failed: it is gone.
            tracing::debug!(session = cx.info.id, error = %e, "upstream write failed");
            upstream_failed(cx, "reset", u_side, outbound);
            inbound.shut_when_flushed();
        }
    }
}

/// Something happened on the upstream → client way.
fn upstream_event(
    cx: &SessionCx<'_>,
    ev: Event,
    c_side: &Side,
    u_side: &mut Side,
    inbound: &mut Way,
    outbound: &mut Way,
) {
    match ev {
        Event::SrcEnded(e) => {
            tracing::debug!(session = cx.info.id, error = ?e, "upstream ended");
            if !u_side.closed && !c_side.closed {
                upstream_failed(cx, "reset", u_side, outbound);
            }
        }
        Event::ReaderClosed(c) => {
            tracing::debug!(session = cx.info.id, close = %c, "upstream broke the protocol");
            u_side.failed = true;
            cx.shared
                .metrics
                .upstream_error(&cx.route.route.name, &cx.info.upstream, "protocol");
            reader_closed(cx, c, outbound, inbound);
        }
        Event::DstFailed(e) => {
            // Writing to the client failed: it is gone.
            tracing::debug!(session = cx.info.id, error = %e, "client write failed");
            client_gone(cx, c_side, inbound);
            outbound.shut_when_flushed();
        }
    }
}

/// The client is gone without a close frame: the upstream gets 1001.
fn client_gone(cx: &SessionCx<'_>, c_side: &Side, inbound: &mut Way) {
    if c_side.closed {
        return;
    }
    if let Some(t) = cx.trace {
        t.closed("proxy", Some(AWAY), "client gone");
    }
    inbound.close(AWAY, "client gone");
}

/// A reader closed its way with `c` (already appended there): the other way gets it too.
fn reader_closed(cx: &SessionCx<'_>, c: Closed, closed_way: &mut Way, other: &mut Way) {
    if let Some(t) = cx.trace {
        t.closed("proxy", Some(c.code), c.reason);
    }
    closed_way.shut_when_flushed();
    other.close(c.code, c.reason);
}

/// The upstream is gone or failed mid-session: the client gets 1011.
fn upstream_failed(cx: &SessionCx<'_>, kind: &'static str, u_side: &mut Side, outbound: &mut Way) {
    if std::mem::replace(&mut u_side.failed, true) {
        outbound.shut_when_flushed();
        return;
    }
    cx.shared
        .metrics
        .upstream_error(&cx.route.route.name, &cx.info.upstream, kind);
    if u_side.closed {
        outbound.shut_when_flushed();
        return;
    }
    if let Some(t) = cx.trace {
        t.closed("proxy", Some(UPSTREAM_FAILED), "upstream failed");
    }
    outbound.close(UPSTREAM_FAILED, "upstream closed the connection");
}
