//! The per-message limits of one connection: its message bucket, then its room's bucket.

use std::time::Duration;

use crate::bucket::{BucketVerdict, TokenBucket};
use crate::config::{MessageLimit, OnExceed, Rate, Route};
use crate::frame::{MessageAction, close_code};
use crate::label::LimitKind;

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
    pub fn kind(self) -> LimitKind {
        match self {
            Limit::Messages => LimitKind::Messages,
            Limit::Rooms => LimitKind::Rooms,
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
    pub fn action(self) -> MessageAction {
        match self {
            Decision::Forward => MessageAction::Forward,
            Decision::Drop(_) => MessageAction::Cut,
            Decision::Close(limit) => MessageAction::Close {
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
            rooms: route.limits.rooms.map(|r| r.rate),
        }
    }

    /// Whether the route limits anything per message.
    pub fn is_active(&self) -> bool {
        self.messages.is_some() || self.rooms.is_some()
    }

    /// Whether the route has a room bucket.
    pub fn limits_rooms(&self) -> bool {
        self.rooms.is_some()
    }

    /// The verdict on one client message in `room` (the message's, else the session's);
    /// `take_room` takes a token from that room's shared bucket.
    pub fn decide(
        &mut self,
        room: Option<&str>,
        now: Duration,
        take_room: &mut dyn FnMut(&str, &Rate) -> BucketVerdict,
    ) -> Decision {
        match self.message(now) {
            Decision::Forward => self.room(room, take_room),
            refused => refused,
        }
    }

    /// The connection's message bucket alone (the first step of [`Limiter::decide`]), so that a
    /// message it refuses need not be read.
    pub fn message(&mut self, now: Duration) -> Decision {
        if let Some((limit, bucket)) = self.messages.as_mut()
            && !bucket.try_take(&limit.rate, now).is_allowed()
        {
            return self.exceeded(Limit::Messages);
        }
        Decision::Forward
    }

    /// The room's bucket alone (the second step of [`Limiter::decide`]).
    pub fn room(
        &mut self,
        room: Option<&str>,
        take_room: &mut dyn FnMut(&str, &Rate) -> BucketVerdict,
    ) -> Decision {
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
