//! The session phase: one object per upgraded WebSocket that both front ends feed with the
//! client's bytes, the upstream's bytes, transport events and timer ticks, and that says what to
//! forward, what to cut, what close to send, and what happened ([`Event`]s, for metrics,
//! `/sessions` and spans).
//!
//! ```text
//! client bytes   ─► FrameReader (client → upstream) ─► limiter: message bucket, room bucket
//!                                                   ─► reading: type, room, peer, candidates
//!                                                   ─► forward | cut | close 1008/1009/1002
//! upstream bytes ─► FrameReader (upstream → client) ─► reading: type, candidates, call setup
//! transport      ─► Session::on: a leg gone, a write failed, idle, drain ─► Ending (close frames)
//! ```
//!
//! The standalone proxy's relay task and the Envoy filter's stream callbacks are translators of
//! this object; neither reads a message or decides on one itself.
//!
//! ## Per client message, in order
//! 1. A **deferred** text message (the route has a room bucket and `signaling.room`) is read
//!    when complete, before its verdict: the room it names decides which room bucket it takes.
//! 2. The **message bucket** takes a token; then, if the route limits rooms, the bucket of the
//!    message's room (else the session's room: the sticky key, or the first room a message
//!    named). Empty: the message is cut (`drop`), or the session closes with 1008 (`close`).
//! 3. Once the message has ended, it is read (when it was not before) if it was forwarded (or,
//!    with [`SessionOptions::read_dropped`], for its trace event), and recorded: its type; its
//!    ICE candidates and the call setup only when it was forwarded.
//!
//! Frames pass as they came (see [`crate::frame`]); the only allocation per message is the text
//! buffer of a message that is read.

use std::time::Duration;

use crate::config::Route;
use crate::frame::{Closed, Direction, FrameReader, Pushed, ReaderConfig, close_code};
use crate::label::{
    CandidateKind, CandidateProtocol, LimitKind, MessageDirection, MessageType, Party,
    UpstreamErrorKind,
};
use crate::request::BucketStore;
use crate::signal::{CallSetup, SignalKind};

mod first;
mod limiter;
mod ways;

use ways::{ClientWay, UpstreamWay};

pub use first::{First, FirstMessage};
pub use limiter::{Decision, Limit, Limiter};

/// Something a session did or saw, to record (metrics, the session table, spans).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event<'a> {
    /// A data message has ended.
    Message {
        /// Which way it went.
        direction: MessageDirection,
        /// Its type.
        kind: MessageType,
        /// Payload bytes.
        len: u64,
        /// Whether it went on (else it was cut by `cut_by`, or closed the session).
        forwarded: bool,
        /// The limit that cut it.
        cut_by: Option<LimitKind>,
    },
    /// ICE candidates of one type and protocol in a forwarded message.
    Candidates {
        /// Which way the message went (`sigmesh_ice_candidates_total` counts `In` only: each
        /// candidate enters once, from the client that gathered it).
        direction: MessageDirection,
        /// `typ`.
        kind: CandidateKind,
        /// Transport.
        protocol: CandidateProtocol,
        /// How many.
        count: u32,
    },
    /// The session's room, from the first client message that names one.
    Room(&'a str),
    /// The session's peer, from the first client message that names one.
    Peer(&'a str),
    /// An offer was answered; `first` on the session's first call setup.
    CallSetup {
        /// Offer to answer.
        took: Duration,
        /// The session's first.
        first: bool,
    },
    /// A limit refused a message or closed the session (`messages`, `rooms`, `message_size`).
    Limited(LimitKind),
    /// The upstream failed mid-session.
    UpstreamError(UpstreamErrorKind),
    /// A close: a close frame that came through from a side, or one of sigmesh's own.
    Closed {
        /// Who closed.
        by: Party,
        /// Status code (`None`: an empty close body).
        code: Option<u16>,
        /// Reason.
        reason: &'a str,
    },
}

/// Where a session's events go.
pub trait Observer {
    /// Records one event.
    fn event(&mut self, event: Event<'_>);
}

/// An observer that records nothing.
impl Observer for () {
    fn event(&mut self, _: Event<'_>) {}
}

/// What a session is lent on each call: its route, the room buckets' store, the time.
#[derive(Clone, Copy)]
pub struct SessionEnv<'a> {
    /// The session's route (passed, not held: an idle session keeps no copy of its config).
    pub route: &'a Route,
    /// The route's index (room buckets are per route).
    pub route_index: usize,
    /// Where room buckets live.
    pub buckets: &'a dyn BucketStore,
    /// The buckets' clock.
    pub now: Duration,
}

/// How a session starts.
#[derive(Debug, Clone, Default)]
pub struct SessionOptions {
    /// The sticky key (`query:`, `header:`, `cookie:`): the session's room until a message
    /// names one.
    pub sticky_room: Option<String>,
    /// `permessage-deflate` was negotiated.
    pub deflate: bool,
    /// ... without a compression context either way: compressed text is inflated and read.
    pub inflate: bool,
    /// Masking key of sigmesh's own close frames toward the upstream.
    pub mask_key: [u8; 4],
    /// When the session opened.
    pub now: Duration,
    /// Read messages that were cut too (for their type in a trace event).
    pub read_dropped: bool,
}

/// A transport event of the front end that sees sockets (the standalone proxy).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Happened {
    /// The client's connection ended (end of stream or error).
    ClientEnded,
    /// The upstream's connection ended.
    UpstreamEnded,
    /// A write to the client failed: it is gone.
    ClientWriteFailed,
    /// A write to the upstream failed: it is gone.
    UpstreamWriteFailed,
    /// The client reader closed its way (a limit, broken framing) with this close, already
    /// sent on to the upstream.
    ClientReaderClosed(Closed),
    /// The upstream reader closed its way (broken framing), already sent on to the client.
    UpstreamReaderClosed(Closed),
    /// No message either way for `idle_timeout`.
    IdleTimeout,
    /// The front end is draining: close both legs with this code (1001 going away, or 1012
    /// service restart) and the reason.
    Drain(u16, &'static str),
}

/// What to do with one leg's write side.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum LegEnd {
    /// Nothing.
    #[default]
    Keep,
    /// Shut it once what is pending is written.
    Shut,
    /// Send this close frame (when a frame boundary allowed one), then shut it.
    Close(Option<Vec<u8>>),
}

/// What a transport event means for both legs.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Ending {
    /// The write side toward the client.
    pub to_client: LegEnd,
    /// The write side toward the upstream.
    pub to_upstream: LegEnd,
}

/// What the client reader read of a deferred message before its verdict.
#[derive(Debug, Clone, Copy)]
struct Read {
    kind: SignalKind,
    label: MessageType,
    candidates: Tally,
}

/// ICE candidates of one message by (type, protocol); no allocation.
#[derive(Debug, Clone, Copy, Default)]
struct Tally([[u32; 3]; 5]);

impl Tally {
    fn emit(&self, direction: MessageDirection, obs: &mut dyn Observer) {
        for (t, row) in self.0.iter().enumerate() {
            for (p, &count) in row.iter().enumerate() {
                if count > 0 {
                    obs.event(Event::Candidates {
                        direction,
                        kind: CandidateKind::ALL[t],
                        protocol: CandidateProtocol::ALL[p],
                        count,
                    });
                }
            }
        }
    }
}

/// The state that is not a reader: what both ways' handlers share.
#[derive(Debug)]
struct State {
    limiter: Limiter,
    /// The session's room, kept only when a room bucket needs it.
    room: Option<String>,
    room_seen: bool,
    peer_seen: bool,
    setup: CallSetup,
    read_dropped: bool,
    idle: Duration,
    last_activity: Duration,
    /// The client's / the upstream's close frame has come through.
    client_closed: bool,
    upstream_closed: bool,
    /// The upstream's failure has been counted and answered.
    upstream_failed: bool,
    /// sigmesh has ended the session itself (a limit, broken framing, idle, drain, a leg
    /// gone): the upstream ending after that is the end of the session, not a failure.
    proxy_closed: bool,
    /// What a deferred client message said, between its verdict and its end.
    deferred: Option<Read>,
    /// The limit that cut the client message now ending.
    cut_by: Option<Limit>,
}

/// One upgraded WebSocket (see the module docs).
#[derive(Debug)]
pub struct Session {
    client: FrameReader,
    upstream: FrameReader,
    state: State,
}

/// How a route's sessions read the client's frames.
pub fn client_reader_config(route: &Route, deflate: bool, mask_key: [u8; 4]) -> ReaderConfig {
    let ws = route.websocket.as_ref();
    ReaderConfig {
        direction: Direction::ClientToServer,
        max_message_bytes: ws.map(|w| w.max_message_bytes),
        read_text: true,
        defer_text: route.limits.rooms.is_some() && ws.is_some_and(|w| w.signaling.room.is_some()),
        deflate,
        inflate: false,
        mask_key,
    }
}

impl Session {
    /// A session on `route`.
    pub fn new(route: &Route, opts: SessionOptions) -> Session {
        let limiter = Limiter::new(route, opts.now);
        let room = opts
            .sticky_room
            .filter(|r| !r.is_empty())
            .map(|r| crate::request::bucket_key(&r).into_owned());
        Session {
            client: FrameReader::new(ReaderConfig {
                inflate: opts.inflate,
                ..client_reader_config(route, opts.deflate, opts.mask_key)
            }),
            upstream: FrameReader::new(ReaderConfig {
                read_text: true,
                deflate: opts.deflate,
                inflate: opts.inflate,
                ..ReaderConfig::new(Direction::ServerToClient)
            }),
            state: State {
                room: room.filter(|_| limiter.limits_rooms()),
                limiter,
                room_seen: false,
                peer_seen: false,
                setup: CallSetup::new(),
                read_dropped: opts.read_dropped,
                idle: route
                    .websocket
                    .as_ref()
                    .map_or(Duration::from_secs(120), |w| w.idle_timeout),
                last_activity: opts.now,
                client_closed: false,
                upstream_closed: false,
                upstream_failed: false,
                proxy_closed: false,
                deferred: None,
                cut_by: None,
            },
        }
    }

    // === input ===

    /// Whether the upstream leg may be replaced now (`on_upstream_failure: reconnect`): no
    /// side has closed or failed yet, and both ways are at a message boundary, so nothing of a
    /// message would be spliced onto another connection.
    pub fn can_fail_over(&self) -> bool {
        let s = &self.state;
        !(s.client_closed || s.upstream_closed || s.upstream_failed || s.proxy_closed)
            && self.client.at_boundary()
            && self.upstream.at_boundary()
    }

    /// The upstream leg was replaced: its bytes are read from a fresh start.
    pub fn upstream_replaced(&mut self) {
        self.upstream = FrameReader::new(self.upstream.config().clone());
    }

    /// What the upstream's answer agreed on compression, when it is learnt after the session
    /// was made (the filter): see [`FrameReader::negotiated`].
    pub fn negotiated(&mut self, deflate: bool, inflate: bool) {
        self.client.negotiated(deflate, inflate);
        self.upstream.negotiated(deflate, inflate);
    }

    /// A chunk of the client's bytes; returns what to send the upstream in its place.
    pub fn client_bytes<'s>(
        &'s mut self,
        chunk: &[u8],
        env: &SessionEnv<'_>,
        obs: &mut dyn Observer,
    ) -> Pushed<'s> {
        let mut h = ClientWay {
            state: &mut self.state,
            env,
            obs,
        };
        let pushed = self.client.push(chunk, &mut h);
        if let Some(c) = pushed.close
            && c.code == close_code::TOO_BIG
        {
            h.obs.event(Event::Limited(LimitKind::MessageSize));
        }
        pushed
    }

    /// A chunk of the upstream's bytes; returns what to send the client in its place.
    pub fn upstream_bytes<'s>(
        &'s mut self,
        chunk: &[u8],
        env: &SessionEnv<'_>,
        obs: &mut dyn Observer,
    ) -> Pushed<'s> {
        let mut h = UpstreamWay {
            state: &mut self.state,
            env,
            obs,
        };
        let pushed = self.upstream.push(chunk, &mut h);
        if pushed.close.is_some() {
            // The upstream broke RFC 6455: a failure of its own, answered by the reader's close.
            h.state.upstream_failed = true;
            h.obs
                .event(Event::UpstreamError(UpstreamErrorKind::Protocol));
        }
        pushed
    }

    /// A transport event: what to send each leg (see the table in the proxy's session driver).
    pub fn on(&mut self, what: Happened, obs: &mut dyn Observer) -> Ending {
        let mut end = Ending::default();
        match what {
            Happened::ClientEnded => {
                // After its close frame the client may end the connection; without one it is
                // gone: the upstream hears so, unless it is closing the session itself.
                if !self.state.upstream_closed {
                    end.to_upstream = self.client_gone(obs);
                }
            }
            Happened::ClientWriteFailed => {
                end.to_upstream = self.client_gone(obs);
                end.to_client = LegEnd::Shut;
            }
            Happened::UpstreamEnded => {
                let closing = self.state.upstream_closed
                    || self.state.client_closed
                    || self.state.proxy_closed;
                if !closing {
                    end.to_client = self.upstream_failed(obs);
                }
            }
            Happened::UpstreamWriteFailed => {
                end.to_client = self.upstream_failed(obs);
                end.to_upstream = LegEnd::Shut;
            }
            Happened::ClientReaderClosed(c) => {
                // The client broke a limit or the protocol: both sides get the reader's close.
                self.state.proxy_closed = true;
                obs.event(closed_by_proxy(c.code, c.reason));
                end.to_upstream = LegEnd::Shut;
                end.to_client = LegEnd::Close(self.upstream.close(c.code, c.reason));
            }
            Happened::UpstreamReaderClosed(c) => {
                self.state.proxy_closed = true;
                obs.event(closed_by_proxy(c.code, c.reason));
                end.to_client = LegEnd::Shut;
                end.to_upstream = LegEnd::Close(self.client.close(c.code, c.reason));
            }
            Happened::IdleTimeout => end = self.close_both(close_code::AWAY, "idle timeout", obs),
            Happened::Drain(code, reason) => end = self.close_both(code, reason, obs),
        }
        end
    }

    /// The idle check at `now`: `Ok` with the closes when nothing went either way for the
    /// route's `idle_timeout`, else `Err` with the time left.
    pub fn check_idle(
        &mut self,
        now: Duration,
        obs: &mut dyn Observer,
    ) -> Result<Ending, Duration> {
        let quiet = now.saturating_sub(self.state.last_activity);
        if quiet >= self.state.idle {
            Ok(self.on(Happened::IdleTimeout, obs))
        } else {
            Err(self.state.idle - quiet)
        }
    }

    /// Frees the client reader's buffers that outgrew `keep` bytes while idle (after a push of
    /// client bytes).
    pub fn trim_client(&mut self, keep: usize) {
        self.client.trim(keep);
    }

    /// The same for the upstream's reader.
    pub fn trim_upstream(&mut self, keep: usize) {
        self.upstream.trim(keep);
    }

    // === getters ===

    /// The route's `idle_timeout`.
    pub fn idle_timeout(&self) -> Duration {
        self.state.idle
    }

    /// Whether a close frame has come through from either side (the close grace runs).
    pub fn is_closing(&self) -> bool {
        self.state.client_closed || self.state.upstream_closed
    }

    /// The session's first call setup time.
    pub fn call_setup(&self) -> Option<Duration> {
        self.state.setup.first()
    }

    // === ending ===

    /// The client is gone without a close frame: the upstream gets 1001.
    fn client_gone(&mut self, obs: &mut dyn Observer) -> LegEnd {
        if self.state.client_closed {
            return LegEnd::Keep;
        }
        self.state.proxy_closed = true;
        obs.event(closed_by_proxy(close_code::AWAY, "client gone"));
        LegEnd::Close(self.client.close(close_code::AWAY, "client gone"))
    }

    /// The upstream is gone or failed mid-session: the client gets 1011 (1014 is refused as a
    /// protocol error by tungstenite and other stacks), counted once per failure.
    fn upstream_failed(&mut self, obs: &mut dyn Observer) -> LegEnd {
        if std::mem::replace(&mut self.state.upstream_failed, true) || self.state.proxy_closed {
            return LegEnd::Shut;
        }
        obs.event(Event::UpstreamError(UpstreamErrorKind::Reset));
        if self.state.upstream_closed {
            return LegEnd::Shut;
        }
        obs.event(closed_by_proxy(close_code::SERVER_ERROR, "upstream failed"));
        LegEnd::Close(
            self.upstream
                .close(close_code::SERVER_ERROR, "upstream closed the connection"),
        )
    }

    /// sigmesh ends the session: a close frame to each side whose peer has not sent one
    /// through (that side is answering the other's close already).
    fn close_both(&mut self, code: u16, reason: &str, obs: &mut dyn Observer) -> Ending {
        self.state.proxy_closed = true;
        obs.event(closed_by_proxy(code, reason));
        let to_upstream = if self.state.client_closed {
            LegEnd::Shut
        } else {
            LegEnd::Close(self.client.close(code, reason))
        };
        let to_client = if self.state.upstream_closed {
            LegEnd::Shut
        } else {
            LegEnd::Close(self.upstream.close(code, reason))
        };
        Ending {
            to_client,
            to_upstream,
        }
    }
}

fn closed_by_proxy(code: u16, reason: &str) -> Event<'_> {
    Event::Closed {
        by: Party::Proxy,
        code: Some(code),
        reason,
    }
}
