//! The per-connection WebSocket policy of a `websocket:` route for a front end that sees frames
//! rather than messages (the Envoy/Istio Wasm filter), with the rules of the standalone proxy:
//!
//! - **handshake**: the origin check ([`origin_allowed`]) and the 429 header values
//!   ([`RateLimited`]);
//! - **each client message**, in order: it is read with [`read_message_with`] (kind, room, ICE
//!   candidates; a deferred text message before its verdict, any other once it has ended); the
//!   connection's message bucket takes a token; then, when the route limits rooms, the bucket of
//!   the message's room (the room the message names, else the session's room: the sticky key, or
//!   the first room a message named). An empty bucket drops the message, or with
//!   `on_exceed: close` closes the connection with 1008. A message over `max_message_bytes`
//!   closes with 1009 (the [`FrameReader`](super::FrameReader) sees to that).
//!
//! Room buckets are shared by every connection of a room, so where they live is the front
//! end's business: [`MessagePolicy::decide`] takes them through a callback.

use std::time::Duration;

use super::{Action, Direction, MessageInfo, ReaderConfig, close_code};
use crate::bucket::{TokenBucket, Verdict};
use crate::config::{LimitKey, MessageLimit, OnExceed, Rate, Route, Signaling, WebSocket};
use crate::route::Headers;
use crate::signal::{CallSetup, Kind, read_message_with};

type Candidates = Vec<(&'static str, &'static str)>;

/// Whether a handshake's `Origin` passes `allowed_origins` (empty: any origin; else an exact,
/// case-insensitive match, and a request without an `Origin` fails).
pub fn origin_allowed(ws: &WebSocket, origin: Option<&str>) -> bool {
    ws.allowed_origins.is_empty()
        || origin.is_some_and(|o| ws.allowed_origins.iter().any(|a| a.eq_ignore_ascii_case(o)))
}

/// The values of a 429 answer: `retry-after`, `x-ratelimit-limit`, `x-ratelimit-remaining`,
/// `x-ratelimit-reset`, as the standalone proxy sends them (whole seconds, rounded up, at least 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimited {
    /// `retry-after` and `x-ratelimit-reset`, in seconds.
    pub retry_after_secs: u64,
    /// `x-ratelimit-limit`: the bucket's burst.
    pub limit: u32,
    /// `x-ratelimit-remaining`: 0.
    pub remaining: u32,
}

impl RateLimited {
    /// From the bucket's rate and its verdict's `retry_after`.
    pub fn new(rate: &Rate, retry_after: Duration) -> Self {
        let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
        RateLimited {
            retry_after_secs: secs.max(1),
            limit: rate.burst,
            remaining: 0,
        }
    }

    /// The four headers, names lower-case.
    pub fn headers(&self) -> [(&'static str, String); 4] {
        [
            ("retry-after", self.retry_after_secs.to_string()),
            ("x-ratelimit-limit", self.limit.to_string()),
            ("x-ratelimit-remaining", self.remaining.to_string()),
            ("x-ratelimit-reset", self.retry_after_secs.to_string()),
        ]
    }
}

/// Which bucket refused a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// The connection's message bucket.
    Messages,
    /// The room's bucket.
    Rooms,
}

impl Limit {
    /// The reason of the 1008 close frame when this limit closes a connection.
    pub fn close_reason(self) -> &'static str {
        match self {
            Limit::Messages => "message rate limit",
            Limit::Rooms => "room rate limit",
        }
    }

    /// The `limit` label of `sigmesh_rate_limited_total`.
    pub fn label(self) -> &'static str {
        match self {
            Limit::Messages => "messages",
            Limit::Rooms => "rooms",
        }
    }
}

/// The verdict on one client message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Forward it.
    Forward,
    /// Drop it (counted).
    Drop(Limit),
    /// Close the connection with 1008.
    Close(Limit),
}

impl Decision {
    /// What the frame reader does for it.
    pub fn action(self) -> Action {
        match self {
            Decision::Forward => Action::Forward,
            Decision::Drop(_) => Action::Cut,
            Decision::Close(limit) => Action::Close {
                code: close_code::POLICY,
                reason: limit.close_reason(),
            },
        }
    }
}

/// The message and room buckets of one connection, in the order both front ends apply them:
/// the connection's message bucket first, then (if it let the message through) the room's.
/// Over a limit, `on_exceed` of `limits.messages` decides for both (default `drop`).
#[derive(Debug, Clone)]
pub struct Limiter {
    messages: Option<(MessageLimit, TokenBucket)>,
    rooms: Option<Rate>,
    on_exceed: OnExceed,
}

impl Limiter {
    /// The buckets of a connection on `route` opened at `now`.
    pub fn new(route: &Route, now: Duration) -> Self {
        let messages = route.limits.messages.clone().map(|l| {
            let b = TokenBucket::new(&l.rate, now);
            (l, b)
        });
        Limiter {
            on_exceed: messages
                .as_ref()
                .map_or(OnExceed::Drop, |(l, _)| l.on_exceed),
            messages,
            rooms: route.limits.rooms,
        }
    }

    /// Whether the route limits anything per message.
    pub fn is_active(&self) -> bool {
        self.messages.is_some() || self.rooms.is_some()
    }

    /// The verdict on one client message in `room` (the message's, else the session's);
    /// `take_room` takes a token from that room's shared bucket.
    pub fn decide(
        &mut self,
        room: Option<&str>,
        now: Duration,
        take_room: &mut dyn FnMut(&str, &Rate) -> Verdict,
    ) -> Decision {
        if let Some((limit, bucket)) = self.messages.as_mut()
            && !bucket.try_take(&limit.rate, now).is_allowed()
        {
            return self.exceeded(Limit::Messages);
        }
        if let Some(rate) = self.rooms
            && let Some(room) = room
            && !take_room(room, &rate).is_allowed()
        {
            return self.exceeded(Limit::Rooms);
        }
        Decision::Forward
    }

    fn exceeded(&self, limit: Limit) -> Decision {
        match self.on_exceed {
            OnExceed::Drop => Decision::Drop(limit),
            OnExceed::Close => Decision::Close(limit),
        }
    }
}

/// What a message that has ended said, for the counters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    /// The `type` label of `sigmesh_messages_total`: `binary`, `compressed` (a
    /// `permessage-deflate` message, not read), the signaling type of a text message read by
    /// [`read_message`] (`offer`, …, `other`), or `text` when it could not be read.
    pub label: &'static str,
    /// The ICE candidates it carried, as `(type, protocol)` metric labels (`host`/`srflx`/
    /// `prflx`/`relay`/`other`, `udp`/`tcp`/`other`).
    pub candidates: Vec<(&'static str, &'static str)>,
    /// Offer → answer time, on the answer that completes a call setup.
    pub setup: Option<Duration>,
}

/// The message policy of one connection on one route (see the module docs).
#[derive(Debug, Clone)]
pub struct MessagePolicy {
    signaling: Signaling,
    max_message_bytes: usize,
    limiter: Limiter,
    room: Option<String>,
    setup: CallSetup,
    /// What `decide` read of the message now ending (deferred messages).
    last: Option<(Kind, &'static str, Candidates)>,
}

impl MessagePolicy {
    /// For a connection on `route` whose sticky key (`query:`, `header:`, `cookie:`) was
    /// `sticky_room`, opened at `now`.
    pub fn new(route: &Route, sticky_room: Option<String>, now: Duration) -> Self {
        let ws = route.websocket.clone().unwrap_or_default();
        MessagePolicy {
            max_message_bytes: ws.max_message_bytes,
            limiter: Limiter::new(route, now),
            room: sticky_room.filter(|r| !r.is_empty()),
            signaling: ws.signaling,
            setup: CallSetup::new(),
            last: None,
        }
    }

    /// How to read the client's frames: the size limit; text read (for types, rooms and ICE
    /// candidates); text messages decided once complete when a room bucket needs their room.
    pub fn client_reader(&self, deflate: bool, mask_key: [u8; 4]) -> ReaderConfig {
        ReaderConfig {
            direction: Direction::ClientToServer,
            max_message_bytes: Some(self.max_message_bytes),
            read_text: true,
            defer_text: self.limiter.rooms.is_some() && self.signaling.room.is_some(),
            deflate,
            mask_key,
        }
    }

    /// How to read the upstream's frames: text read for the counters, no limit.
    pub fn upstream_reader(&self, deflate: bool) -> ReaderConfig {
        ReaderConfig {
            direction: Direction::ServerToClient,
            max_message_bytes: None,
            read_text: true,
            defer_text: false,
            deflate,
            mask_key: [0; 4],
        }
    }

    /// The session's room so far.
    pub fn room(&self) -> Option<&str> {
        self.room.as_deref()
    }

    /// The verdict on a client message: `text` is its text when the reader deferred it (else
    /// `None`); `take_room` takes a token from a room's bucket (called at most once, and only
    /// when the message bucket let the message through).
    pub fn decide(
        &mut self,
        text: Option<&str>,
        now: Duration,
        take_room: &mut dyn FnMut(&str, &Rate) -> Verdict,
    ) -> Decision {
        self.last = None;
        let mut msg_room = None;
        if let Some(t) = text {
            let mut candidates = Vec::new();
            let r = read_message_with(t, &self.signaling, |c| {
                candidates.push((c.typ.label(), c.transport.label()));
            });
            self.last = Some((r.kind, r.label, candidates));
            msg_room = r.room.map(|c| c.into_owned());
            if self.room.is_none() {
                self.room.clone_from(&msg_room);
            }
        }
        let room = msg_room.as_deref().or(self.room.as_deref());
        self.limiter.decide(room, now, take_room)
    }

    /// A client message has ended (as the reader reports it: `text` when read): what it said.
    /// The session's room is set from the first room a message names.
    pub fn client_message(&mut self, msg: &MessageInfo, text: Option<&str>, now: Duration) -> Seen {
        if let Some((kind, label, candidates)) = self.last.take() {
            return self.seen(kind, label, candidates, now);
        }
        self.observe(msg, text, now, true)
    }

    /// An upstream message has ended: what it said.
    pub fn upstream_message(
        &mut self,
        msg: &MessageInfo,
        text: Option<&str>,
        now: Duration,
    ) -> Seen {
        self.observe(msg, text, now, false)
    }

    fn observe(
        &mut self,
        msg: &MessageInfo,
        text: Option<&str>,
        now: Duration,
        client: bool,
    ) -> Seen {
        let label = match (msg.text, msg.compressed, text) {
            (_, true, _) => "compressed",
            (false, _, _) => "binary",
            (true, _, None) => "text",
            (true, _, Some(t)) => {
                let mut candidates = Vec::new();
                let r = read_message_with(t, &self.signaling, |c| {
                    candidates.push((c.typ.label(), c.transport.label()));
                });
                if client && self.room.is_none() {
                    self.room = r.room.map(|c| c.into_owned());
                }
                return self.seen(r.kind, r.label, candidates, now);
            }
        };
        Seen {
            label,
            candidates: Vec::new(),
            setup: None,
        }
    }

    fn seen(
        &mut self,
        kind: Kind,
        label: &'static str,
        candidates: Candidates,
        now: Duration,
    ) -> Seen {
        Seen {
            label,
            candidates,
            setup: self.setup.observe(kind, now),
        }
    }
}

/// The key of a connection bucket (`limits.connections.key`): the client's IP, one key for the
/// route, or a header's value (a request without the header shares the empty key with the
/// others that lack it), as the standalone proxy keys it.
pub fn connection_key<H: Headers + ?Sized>(key: &LimitKey, client_ip: &str, headers: &H) -> String {
    match key {
        LimitKey::ClientIp => client_ip.to_owned(),
        LimitKey::Route => String::new(),
        LimitKey::Header(name) => headers.get(name).unwrap_or_default().to_owned(),
    }
}
