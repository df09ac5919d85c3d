//! The shape walk behind [`super::read_message`]: one streaming serde_json pass that resolves
//! the configured pointers and classifies objects by their members (see the dialect table in
//! `reader.rs`).

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use super::KNOWN_TYPES;
use super::kind::{Dialect, SignalKind};
use super::pointer::{Key, Tokens, index};
use super::socketio;

/// Walks `body`; `None` if it is not well-formed JSON.
pub(super) fn walk<'t>(
    cx: &mut Wanted<'_, 't>,
    body: &'t str,
    frame: Option<socketio::Frame<'t>>,
    mask: u8,
) -> Option<Class> {
    let tokens = &cx.pointers.map(Tokens::of);
    let mut de = serde_json::Deserializer::from_str(body);
    let seen = match frame {
        Some(f) if f.is_event() || f.is_ack() => SioArgs {
            cx: &mut *cx,
            tokens,
            mask,
            event: f.is_event(),
        }
        .deserialize(&mut de)
        .ok()?,
        _ => {
            let s = Node {
                cx: &mut *cx,
                tokens,
                depth: 0,
                mask,
                role: Role::Plain,
            }
            .deserialize(&mut de)
            .ok()?;
            match s {
                Seen::Obj(c) => c,
                _ => Class::unknown(),
            }
        }
    };
    de.end().ok()?;
    Some(seen)
}

// === type words ===

/// A type word (`type`, `event`, `action`, a Socket.IO event name), classified.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Word {
    pub(super) kind: Option<SignalKind>,
    pub(super) label: Option<&'static str>,
    /// An upper-case PeerJS message type.
    peerjs: bool,
}

const ALIASES: &[(&str, SignalKind)] = &[
    ("offer", SignalKind::Offer),
    ("video-offer", SignalKind::Offer),
    ("sdp-offer", SignalKind::Offer),
    ("call-offer", SignalKind::Offer),
    ("answer", SignalKind::Answer),
    ("video-answer", SignalKind::Answer),
    ("sdp-answer", SignalKind::Answer),
    ("call-answer", SignalKind::Answer),
    ("candidate", SignalKind::Candidate),
    ("ice-candidate", SignalKind::Candidate),
    ("ice_candidate", SignalKind::Candidate),
    ("icecandidate", SignalKind::Candidate),
    ("new-ice-candidate", SignalKind::Candidate),
    ("ice", SignalKind::Candidate),
    ("join", SignalKind::Join),
    ("join-room", SignalKind::Join),
    ("join_room", SignalKind::Join),
    ("joinroom", SignalKind::Join),
    ("leave", SignalKind::Leave),
    ("leave-room", SignalKind::Leave),
    ("leave_room", SignalKind::Leave),
    ("bye", SignalKind::Leave),
    ("hangup", SignalKind::Leave),
    ("hang-up", SignalKind::Leave),
];

const PEERJS: &[&str] = &[
    "OFFER",
    "ANSWER",
    "CANDIDATE",
    "LEAVE",
    "EXPIRE",
    "OPEN",
    "HEARTBEAT",
    "ID-TAKEN",
    "ERROR",
];

impl Word {
    pub(super) fn classify(s: &str) -> Word {
        if s.len() > 32 {
            return Word::default();
        }
        // ASCII case folded once (non-ASCII bytes compare as they are, as with
        // `eq_ignore_ascii_case`); then each list is compared by length first.
        let mut buf = [0u8; 32];
        let lower = &mut buf[..s.len()];
        lower.copy_from_slice(s.as_bytes());
        lower.make_ascii_lowercase();
        let lower = &*lower;
        Word {
            kind: ALIASES
                .iter()
                .find(|(a, _)| a.as_bytes() == lower)
                .map(|(_, k)| *k),
            label: KNOWN_TYPES.iter().find(|k| k.as_bytes() == lower).copied(),
            peerjs: s.as_bytes().first().is_some_and(u8::is_ascii_uppercase) && PEERJS.contains(&s),
        }
    }
}

// === the walk ===

/// What an object (or array) is.
#[derive(Debug, Clone, Copy)]
pub(super) struct Class {
    pub(super) kind: SignalKind,
    pub(super) dialect: Dialect,
    pub(super) label: Option<&'static str>,
    pub(super) wrapped: bool,
}

impl Class {
    pub(super) fn unknown() -> Class {
        Class {
            kind: SignalKind::Other,
            dialect: Dialect::Unknown,
            label: None,
            wrapped: false,
        }
    }

    /// Says something worth passing up to an enclosing message.
    fn is_signal(&self) -> bool {
        self.kind != SignalKind::Other || self.dialect == Dialect::SimplePeer
    }
}

/// The pointers and what they found.
pub(super) struct Wanted<'p, 't> {
    /// `signaling.type`, `.room`, `.peer`; `""` when unset.
    pub(super) pointers: [&'p str; 3],
    pub(super) out: [Option<Cow<'t, str>>; 3],
}

/// What a member's key says about its value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Plain,
    Type,
    AltType,
    Sdp,
    Candidate,
    Payload,
    Renegotiate,
    TransceiverRequest,
}

impl Role {
    fn of(key: &str) -> Role {
        // By length first: most keys are none of these and cost one comparison.
        match (key.len(), key) {
            (4, "type") => Role::Type,
            (5, "event") | (6, "action") => Role::AltType,
            (3, "sdp") => Role::Sdp,
            (9, "candidate") | (10, "candidates") | (3, "ice") | (12, "iceCandidate") => {
                Role::Candidate
            }
            (7, "payload") => Role::Payload,
            (11, "renegotiate") => Role::Renegotiate,
            (18, "transceiverRequest") => Role::TransceiverRequest,
            _ => Role::Plain,
        }
    }
}

/// What a value was, for its parent.
#[derive(Debug, Clone, Copy)]
enum Seen {
    Nothing,
    Null,
    Word(Word),
    Obj(Class),
}

/// Visits one value: `mask` holds the pointers that matched the path so far (`depth` tokens).
struct Node<'c, 'p, 't> {
    cx: &'c mut Wanted<'p, 't>,
    tokens: &'c [Tokens<'p>; 3],
    depth: usize,
    mask: u8,
    role: Role,
}

impl<'t> Node<'_, '_, 't> {
    fn bits(&self) -> impl Iterator<Item = usize> + use<> {
        let mask = self.mask;
        (0..3).filter(move |i| mask & (1 << i) != 0)
    }

    /// Sets every pointer that ends here.
    fn leaf(&mut self, value: impl Fn() -> Cow<'t, str>) {
        for i in self.bits() {
            if self.tokens[i].ends_at(self.depth) {
                self.cx.out[i] = Some(value());
            }
        }
    }

    fn word(&self, s: &str) -> Seen {
        match self.role {
            Role::Type | Role::AltType => Seen::Word(Word::classify(s)),
            _ => Seen::Nothing,
        }
    }
}

impl<'t> DeserializeSeed<'t> for Node<'_, '_, 't> {
    type Value = Seen;

    fn deserialize<D: Deserializer<'t>>(self, d: D) -> Result<Seen, D::Error> {
        // A key seen again replaces what an earlier occurrence gave.
        for i in self.bits() {
            self.cx.out[i] = None;
        }
        d.deserialize_any(self)
    }
}

impl<'t> Visitor<'t> for Node<'_, '_, 't> {
    type Value = Seen;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E: de::Error>(mut self, v: bool) -> Result<Seen, E> {
        self.leaf(|| Cow::Borrowed(if v { "true" } else { "false" }));
        Ok(Seen::Nothing)
    }

    fn visit_i64<E: de::Error>(mut self, v: i64) -> Result<Seen, E> {
        self.leaf(|| Cow::Owned(v.to_string()));
        Ok(Seen::Nothing)
    }

    fn visit_u64<E: de::Error>(mut self, v: u64) -> Result<Seen, E> {
        self.leaf(|| Cow::Owned(v.to_string()));
        Ok(Seen::Nothing)
    }

    fn visit_f64<E: de::Error>(mut self, v: f64) -> Result<Seen, E> {
        // Exactly as a `Value` prints it.
        if let Some(n) = serde_json::Number::from_f64(v) {
            self.leaf(|| Cow::Owned(n.to_string()));
        }
        Ok(Seen::Nothing)
    }

    fn visit_borrowed_str<E: de::Error>(mut self, v: &'t str) -> Result<Seen, E> {
        self.leaf(|| Cow::Borrowed(v));
        Ok(self.word(v))
    }

    fn visit_str<E: de::Error>(mut self, v: &str) -> Result<Seen, E> {
        self.leaf(|| Cow::Owned(v.to_owned()));
        Ok(self.word(v))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Seen, E> {
        Ok(Seen::Null)
    }

    fn visit_map<A: MapAccess<'t>>(self, mut map: A) -> Result<Seen, A::Error> {
        let mut m = Members::default();
        while let Some(Key(key)) = map.next_key()? {
            let mask = self
                .bits()
                .filter(|&i| self.tokens[i].matches(self.depth, &key))
                .fold(0u8, |m, i| m | 1 << i);
            let role = Role::of(&key);
            if role == Role::Sdp && mask == 0 {
                // The SDP blob: checked for syntax, never unescaped (its candidates were
                // counted from the raw text).
                map.next_value::<IgnoredAny>()?;
                m.sdp = true;
                continue;
            }
            let seen = map.next_value_seed(Node {
                cx: &mut *self.cx,
                tokens: self.tokens,
                depth: self.depth + 1,
                mask,
                role,
            })?;
            m.add(role, seen);
        }
        Ok(Seen::Obj(m.class()))
    }

    fn visit_seq<A: SeqAccess<'t>>(self, mut seq: A) -> Result<Seen, A::Error> {
        let indices: [Option<usize>; 3] = std::array::from_fn(|i| {
            if self.mask & (1 << i) != 0 {
                self.tokens[i].unescaped(self.depth).and_then(|t| index(&t))
            } else {
                None
            }
        });
        let mut inner: Option<Class> = None;
        let mut n = 0usize;
        loop {
            let mask = (0..3)
                .filter(|&i| indices[i] == Some(n))
                .fold(0u8, |m, i| m | 1 << i);
            let seen = seq.next_element_seed(Node {
                cx: &mut *self.cx,
                tokens: self.tokens,
                depth: self.depth + 1,
                mask,
                role: Role::Plain,
            })?;
            match seen {
                None => break,
                Some(Seen::Obj(c)) if inner.is_none() && c.is_signal() => inner = Some(c),
                Some(_) => {}
            }
            n += 1;
        }
        // An array says what its first signalling element says.
        Ok(Seen::Obj(inner.map_or_else(Class::unknown, |c| Class {
            wrapped: true,
            ..c
        })))
    }
}

/// What the members of one object said.
#[derive(Default)]
struct Members {
    word: Option<Word>,
    alt_word: Option<Word>,
    sdp: bool,
    candidate: bool,
    payload: bool,
    simple_peer: bool,
    inner: Option<Class>,
}

impl Members {
    fn add(&mut self, role: Role, seen: Seen) {
        let present = !matches!(seen, Seen::Null);
        match (role, seen) {
            (Role::Type, Seen::Word(w)) => self.word = Some(w),
            (Role::AltType, Seen::Word(w)) => self.alt_word = Some(w),
            (Role::Sdp, _) => self.sdp |= present,
            (Role::Candidate, _) => self.candidate |= present,
            (Role::Payload, _) => self.payload |= present,
            (Role::Renegotiate | Role::TransceiverRequest, _) => self.simple_peer |= present,
            _ => {}
        }
        if let Seen::Obj(c) = seen
            && self.inner.is_none()
            && c.is_signal()
        {
            self.inner = Some(c);
        }
    }

    fn class(self) -> Class {
        let word = self.word.or(self.alt_word);
        let label = word.and_then(|w| w.label);
        if let Some(w) = word
            && let Some(kind) = w.kind
        {
            let dialect = if w.peerjs && self.payload {
                Dialect::PeerJs
            } else if self.sdp || self.candidate {
                Dialect::Plain
            } else {
                Dialect::Typed
            };
            return Class {
                kind,
                dialect,
                label,
                wrapped: false,
            };
        }
        if self.candidate {
            return Class {
                kind: SignalKind::Candidate,
                dialect: Dialect::Plain,
                label,
                wrapped: false,
            };
        }
        if self.simple_peer {
            return Class {
                kind: SignalKind::Other,
                dialect: Dialect::SimplePeer,
                label,
                wrapped: false,
            };
        }
        if let Some(c) = self.inner {
            return Class {
                label: label.or(c.label),
                wrapped: true,
                ..c
            };
        }
        Class {
            kind: SignalKind::Other,
            dialect: if word.is_some() {
                Dialect::Typed
            } else {
                Dialect::Unknown
            },
            label,
            wrapped: false,
        }
    }
}

/// The arguments of a Socket.IO EVENT (`["name", arg, …]`) or ACK (`[arg, …]`): the pointers
/// are resolved against the first argument.
struct SioArgs<'c, 'p, 't> {
    cx: &'c mut Wanted<'p, 't>,
    tokens: &'c [Tokens<'p>; 3],
    mask: u8,
    event: bool,
}

impl<'t> DeserializeSeed<'t> for SioArgs<'_, '_, 't> {
    type Value = Class;

    fn deserialize<D: Deserializer<'t>>(self, d: D) -> Result<Class, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'t> Visitor<'t> for SioArgs<'_, '_, 't> {
    type Value = Class;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a Socket.IO argument array")
    }

    fn visit_seq<A: SeqAccess<'t>>(self, mut seq: A) -> Result<Class, A::Error> {
        let mut name = None;
        if self.event {
            let seen = seq.next_element_seed(Node {
                cx: &mut *self.cx,
                tokens: self.tokens,
                depth: 0,
                mask: 0,
                role: Role::Type,
            })?;
            if let Some(Seen::Word(w)) = seen {
                name = Some(w);
            }
        }
        let first = seq.next_element_seed(Node {
            cx: &mut *self.cx,
            tokens: self.tokens,
            depth: 0,
            mask: self.mask,
            role: Role::Plain,
        })?;
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        let arg = match first {
            Some(Seen::Obj(c)) => c,
            _ => Class::unknown(),
        };
        Ok(match name {
            Some(Word {
                kind: Some(kind),
                label,
                ..
            }) => Class {
                kind,
                dialect: Dialect::SocketIo,
                label,
                wrapped: false,
            },
            _ if arg.is_signal() => Class {
                label: name.and_then(|w| w.label).or(arg.label),
                wrapped: true,
                ..arg
            },
            _ => Class {
                label: name.and_then(|w| w.label),
                ..Class::unknown()
            },
        })
    }
}
