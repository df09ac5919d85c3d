//! [`read_message`]: what a signaling message is (offer, answer, candidate, join, leave, other),
//! which dialect it speaks, its room and peer, and the ICE candidates it carries — in one pass.
//!
//! ## How a message is read
//! 1. **Candidates**: every `candidate:` in the raw text is parsed with [`crate::ice`], wherever
//!    it is: an SDP `a=candidate:` line (JSON-escaped or not), a trickled candidate string, a
//!    Socket.IO frame, plain text. Failed parses are counted as `invalid`.
//! 2. **Shape**: the text (or the JSON part of a Socket.IO frame) is walked once, streaming, with
//!    serde_json (no `Value` is built; the `sdp` member is skipped unread). The route's
//!    `signaling` pointers are resolved in the same walk.
//!
//! ## Dialects recognised without configuration
//! | dialect | shape | kind from |
//! |---|---|---|
//! | [`Dialect::Plain`] | `{type:"offer"\|"answer", sdp}`, `{candidate:{candidate, sdpMid, sdpMLineIndex}}`, `{type:"candidate", candidate}` (also simple-peer's offer/answer/candidate) | `type`, else a `candidate` member |
//! | [`Dialect::Typed`] | an app message `{type:"join", room, from}` | `type` (else `event`, `action`) |
//! | [`Dialect::PeerJs`] | `{type:"OFFER"\|"ANSWER"\|"CANDIDATE"\|"LEAVE", payload:{…}, dst}` | `type` |
//! | [`Dialect::SimplePeer`] | `{renegotiate:true}`, `{transceiverRequest:{kind, init}}` | (other) |
//! | [`Dialect::SocketIo`] | `42["event",{…}]`, `42/ns,["event",{…}]`, `4217[…]`, acks, binary events | the event name, else the first argument |
//! | wrapped | any of these inside an app message, at any depth: `{type:"signal", to, data:{type:"offer", sdp}}`, `{description:{…}}` | the inner message ([`Reading::wrapped`]) |
//!
//! Type words are matched without case and with common aliases: `video-offer`, `sdp-offer` →
//! offer; `video-answer` → answer; `ice-candidate`, `icecandidate`, `new-ice-candidate`, `ice`
//! → candidate; `join-room` → join; `leave-room`, `bye`, `hangup` → leave.
//!
//! The route's `signaling.type` pointer, when set and present, comes first ([`Dialect::Configured`]);
//! the shape is the fallback. For a Socket.IO frame the pointers are resolved against the event's
//! first argument (`/room` in `42["join",{"room":"r1"}]` is `r1`).
//!
//! Nothing here fails: malformed JSON, unknown shapes and non-JSON text read as
//! [`SignalKind::Other`] (candidates in them are still counted).
//!
//! ## Cost
//! No allocation for the common case: room and peer borrow from the text unless they have JSON
//! escapes (or are numbers); candidates are handed to a callback as borrowed [`Candidate`]s and
//! tallied in fixed counters ([`IceTally`]).

use std::borrow::Cow;

use super::kind::{Dialect, SignalKind};
use super::pointer::looks_like_json;
use super::shape::{Class, Wanted, Word, walk};
use super::socketio;
use crate::config::Signaling;
use crate::ice::{self, Candidate, CandidateType, Transport};

/// ICE candidates found in one message, by type and transport.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IceTally {
    /// `typ host`.
    pub host: u32,
    /// `typ srflx`.
    pub srflx: u32,
    /// `typ prflx`.
    pub prflx: u32,
    /// `typ relay`.
    pub relay: u32,
    /// Another type token.
    pub other_type: u32,
    /// UDP candidates.
    pub udp: u32,
    /// TCP candidates.
    pub tcp: u32,
    /// Another transport.
    pub other_transport: u32,
    /// `candidate:` followed by something that does not parse.
    pub invalid: u32,
}

impl IceTally {
    /// Counts one candidate.
    pub fn add(&mut self, c: &Candidate<'_>) {
        let t = match c.typ {
            CandidateType::Host => &mut self.host,
            CandidateType::Srflx => &mut self.srflx,
            CandidateType::Prflx => &mut self.prflx,
            CandidateType::Relay => &mut self.relay,
            CandidateType::Other(_) => &mut self.other_type,
        };
        *t = t.saturating_add(1);
        let p = match c.transport {
            Transport::Udp => &mut self.udp,
            Transport::Tcp => &mut self.tcp,
            Transport::Other(_) => &mut self.other_transport,
        };
        *p = p.saturating_add(1);
    }

    /// Candidates that parsed.
    pub fn total(&self) -> u32 {
        self.udp + self.tcp + self.other_transport
    }
}

/// What [`read_message`] found in one text message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reading<'t> {
    /// Offer, answer, candidate, join, leave or other.
    pub kind: SignalKind,
    /// A metric label from a fixed set: a [`KNOWN_TYPES`](super::KNOWN_TYPES) entry the type word matched, else the
    /// kind's label (`other` for unknown messages).
    pub label: &'static str,
    /// How the kind was recognised.
    pub dialect: Dialect,
    /// The signal was inside an app message (`{type:"signal", data:{type:"offer", …}}`).
    pub wrapped: bool,
    /// Room, from `signaling.room` (non-empty).
    pub room: Option<Cow<'t, str>>,
    /// Sending peer, from `signaling.peer` (non-empty).
    pub peer: Option<Cow<'t, str>>,
    /// The candidates in the message.
    pub ice: IceTally,
}

/// Reads one text message (see the module docs). Never fails.
pub fn read_message<'t>(text: &'t str, cfg: &Signaling) -> Reading<'t> {
    read_message_with(text, cfg, |_| {})
}

/// [`read_message`], handing each candidate found to `on_candidate` as well.
pub fn read_message_with<'t>(
    text: &'t str,
    cfg: &Signaling,
    mut on_candidate: impl FnMut(&Candidate<'t>),
) -> Reading<'t> {
    let mut ice = IceTally::default();
    for c in ice::candidates_in(text) {
        match c {
            Ok(c) => {
                ice.add(&c);
                on_candidate(&c);
            }
            Err(_) => ice.invalid = ice.invalid.saturating_add(1),
        }
    }

    fn p(p: &Option<String>) -> &str {
        p.as_deref().filter(|p| p.starts_with('/')).unwrap_or("")
    }
    let mut cx = Wanted {
        pointers: [p(&cfg.kind), p(&cfg.room), p(&cfg.peer)],
        out: [None, None, None],
    };
    let mask = (0..3)
        .filter(|&i| !cx.pointers[i].is_empty())
        .fold(0u8, |m, i| m | 1 << i);
    let frame = socketio::frame(text);
    let body = frame.map_or(text, |f| f.body);
    let class = if looks_like_json(body) {
        walk(&mut cx, body, frame, mask)
    } else {
        None
    };
    let class = class.unwrap_or_else(|| {
        cx.out = [None, None, None];
        Class::unknown()
    });
    let mut class = match frame {
        Some(_) => Class {
            dialect: Dialect::SocketIo,
            ..class
        },
        None => class,
    };
    let [kind_value, room, peer] = cx.out;
    // The configured type pointer comes first.
    if let Some(w) = kind_value.as_deref().map(Word::classify) {
        if let Some(k) = w.kind {
            class = Class {
                kind: k,
                dialect: Dialect::Configured,
                label: w.label,
                wrapped: false,
            };
        } else if w.label.is_some() {
            class.label = w.label;
        }
    }
    let non_empty = |v: Option<Cow<'t, str>>| v.filter(|s| !s.is_empty());
    Reading {
        kind: class.kind,
        label: class.label.unwrap_or(class.kind.label()),
        dialect: class.dialect,
        wrapped: class.wrapped,
        room: non_empty(room),
        peer: non_empty(peer),
        ice,
    }
}
