//! The two readers' handlers (client → upstream, upstream → client) and the reading they
//! share: the only place a session reads a message.

use std::time::Duration;

use super::{Decision, Event, Limit, Observer, Read, SessionEnv, State, Tally};
use crate::config::{Route, Signaling};
use crate::frame::{Handler, MessageAction, MessageInfo};
use crate::label::{CandidateKind, CandidateProtocol, MessageDirection, MessageType, Party};
use crate::request::{Bucket, bucket_key, shown};
use crate::signal::read_message_with;

impl State {
    /// Reads a text message; notes the session's room and peer from the first client message
    /// that names them. Returns what it said and the room it names (when a bucket needs it).
    fn read(
        &mut self,
        text: &str,
        signaling: &Signaling,
        client: bool,
        obs: &mut dyn Observer,
    ) -> (Read, Option<String>) {
        let mut candidates = Tally::default();
        let r = read_message_with(text, signaling, |c| {
            let t = CandidateKind::from(&c.typ) as usize;
            let p = CandidateProtocol::from(&c.transport) as usize;
            candidates.0[t][p] = candidates.0[t][p].saturating_add(1);
        });
        let mut own_room = None;
        if client {
            if let Some(room) = &r.room {
                if !self.room_seen {
                    self.room_seen = true;
                    obs.event(Event::Room(shown(room)));
                }
                if self.limiter.limits_rooms() {
                    let key = bucket_key(room).into_owned();
                    if self.room.is_none() {
                        self.room = Some(key.clone());
                    }
                    own_room = Some(key);
                }
            }
            if let Some(peer) = &r.peer
                && !self.peer_seen
            {
                self.peer_seen = true;
                obs.event(Event::Peer(shown(peer)));
            }
        }
        let read = Read {
            kind: r.kind,
            label: MessageType::from_label(r.label),
            candidates,
        };
        (read, own_room)
    }

    /// A message has ended and went on: it counts as activity; its candidates and call setup
    /// are recorded.
    fn forwarded(
        &mut self,
        read: Option<&Read>,
        direction: MessageDirection,
        now: Duration,
        obs: &mut dyn Observer,
    ) {
        self.last_activity = now;
        let Some(read) = read else { return };
        read.candidates.emit(direction, obs);
        let first = self.setup.first().is_none();
        if let Some(took) = self.setup.observe(read.kind, now) {
            obs.event(Event::CallSetup { took, first });
        }
    }
}

fn signaling(route: &Route) -> &Signaling {
    static NONE: Signaling = Signaling {
        kind: None,
        room: None,
        peer: None,
    };
    route.websocket.as_ref().map_or(&NONE, |w| &w.signaling)
}

fn unread_type(msg: &MessageInfo) -> MessageType {
    match (msg.text, msg.compressed) {
        (_, true) => MessageType::Compressed,
        (false, _) => MessageType::Binary,
        (true, _) => MessageType::Text,
    }
}

// === the readers' handlers ===

/// Client → upstream: limits, reading, events.
pub(super) struct ClientWay<'a, 'e> {
    pub(super) state: &'a mut State,
    pub(super) env: &'a SessionEnv<'e>,
    pub(super) obs: &'a mut dyn Observer,
}

impl Handler for ClientWay<'_, '_> {
    fn decide(&mut self, _: &MessageInfo, text: Option<&str>) -> MessageAction {
        let env = self.env;
        // The message bucket first: a message it refuses is never read.
        let mut decision = self.state.limiter.message(env.now);
        if decision == Decision::Forward {
            let mut own_room = None;
            if let Some(t) = text {
                let (read, room) = self.state.read(t, signaling(env.route), true, self.obs);
                self.state.deferred = Some(read);
                own_room = room;
            }
            let state = &mut *self.state;
            let room = own_room.as_deref().or(state.room.as_deref());
            let bucket = Bucket::Rooms {
                route: env.route_index,
            };
            decision = state.limiter.room(room, &mut |room, rate| {
                env.buckets.take(bucket, room, rate, env.now)
            });
        }
        if let Decision::Drop(limit) | Decision::Close(limit) = decision {
            self.obs.event(Event::Limited(limit.kind()));
            self.state.cut_by = Some(limit);
        }
        decision.action()
    }

    fn control(&mut self, _opcode: u8) -> MessageAction {
        // Pings and pongs take from the message bucket like messages: a ping flood is limited.
        let decision = self.state.limiter.message(self.env.now);
        if let Decision::Drop(limit) | Decision::Close(limit) = decision {
            self.obs.event(Event::Limited(limit.kind()));
        }
        decision.action()
    }

    fn done(&mut self, msg: &MessageInfo, text: Option<&str>, forwarded: bool) {
        let mut read = self.state.deferred.take();
        if read.is_none()
            && let Some(t) = text
            && (forwarded || self.state.read_dropped)
        {
            read = Some(
                self.state
                    .read(t, signaling(self.env.route), true, self.obs)
                    .0,
            );
        }
        let cut_by = self.state.cut_by.take();
        self.obs.event(Event::Message {
            direction: MessageDirection::In,
            kind: read.as_ref().map_or(unread_type(msg), |r| r.label),
            len: msg.len,
            forwarded,
            cut_by: cut_by.map(Limit::kind),
        });
        if forwarded {
            self.state
                .forwarded(read.as_ref(), MessageDirection::In, self.env.now, self.obs);
        }
    }

    fn close(&mut self, code: Option<u16>, reason: &str) {
        self.state.client_closed = true;
        self.obs.event(Event::Closed {
            by: Party::Client,
            code,
            reason,
        });
    }
}

/// Upstream → client: reading, events.
pub(super) struct UpstreamWay<'a, 'e> {
    pub(super) state: &'a mut State,
    pub(super) env: &'a SessionEnv<'e>,
    pub(super) obs: &'a mut dyn Observer,
}

impl Handler for UpstreamWay<'_, '_> {
    fn decide(&mut self, _: &MessageInfo, _: Option<&str>) -> MessageAction {
        MessageAction::Forward
    }

    fn done(&mut self, msg: &MessageInfo, text: Option<&str>, _: bool) {
        let read = text.map(|t| {
            self.state
                .read(t, signaling(self.env.route), false, self.obs)
                .0
        });
        self.obs.event(Event::Message {
            direction: MessageDirection::Out,
            kind: read.as_ref().map_or(unread_type(msg), |r| r.label),
            len: msg.len,
            forwarded: true,
            cut_by: None,
        });
        self.state
            .forwarded(read.as_ref(), MessageDirection::Out, self.env.now, self.obs);
    }

    fn close(&mut self, code: Option<u16>, reason: &str) {
        self.state.upstream_closed = true;
        self.obs.event(Event::Closed {
            by: Party::Upstream,
            code,
            reason,
        });
    }
}
