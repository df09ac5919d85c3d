//! Reading signaling messages, and sticky keys out of requests.
//!
//! - [`read_message`] (in `reader.rs`): kind, dialect, room, peer and ICE candidates of a text
//!   message in one pass — what the proxy calls on every message;
//! - [`CallSetup`]: offer → answer timing;
//! - [`Signal::read`], [`pointer_value`], [`pointer_values`]: the configured pointers alone;
//! - [`sticky_key`], [`message_sticky_key`], [`query_param`], [`cookie`]: sticky keys.
//!
//! ## JSON pointers
//! [`pointer_value`] has the semantics of serde_json's `Value::pointer` (RFC 6901: `~1` is `/`,
//! `~0` is `~`; array indices are decimal without sign or leading zero; for a key repeated in
//! one object the last one counts), then turns the value into a string: strings as they are,
//! numbers and booleans formatted as serde_json prints them (`42`, `-1.5`, `true`); objects,
//! arrays and `null` give `None`. Malformed JSON gives `None` and never panics.
//!
//! It does not build a `serde_json::Value`: one streaming pass over the text descends only into
//! the members on the pointers' paths and skips the rest without allocating (an SDP blob in
//! `sdp` costs a scan, not a copy). The whole text is still checked to be well-formed JSON. Text
//! that does not start with `{` or `[` (after whitespace) is not parsed at all.
//! [`pointer_values`] reads several pointers in that one pass; [`Signal::read`] uses it.
//!
//! One difference from parsing into a `Value`: parts of the text that are skipped are only
//! checked for syntax, so a message with an out-of-range number (`1e999`) or a lone UTF-16
//! surrogate escape in a member that is *not* read still yields the members that are.
//!
//! ## Sticky keys
//! [`sticky_key`] reads `query:NAME` (from the raw query: split on `&`, `+` is a space,
//! percent-decoded), `header:NAME` and `cookie:NAME` (the `Cookie` header, `a=b; c=d`, first
//! match; a double-quoted value loses its quotes). Empty values count as absent.

mod kind;
mod pointer;
mod reader;
mod setup;
mod shape;
pub mod socketio;

use std::borrow::Cow;

use crate::config::{Signaling, Sticky};
use crate::route::{Headers, hex};

pub use kind::{Dialect, SignalKind};
pub use pointer::{pointer_value, pointer_values};
pub use reader::{IceTally, Reading, read_message, read_message_with};
pub use setup::CallSetup;

/// What a text message says about itself.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Signal {
    /// Message type (`offer`, `answer`, ...), from `signaling.type`; `None` if absent.
    pub kind: Option<String>,
    /// Room, from `signaling.room`.
    pub room: Option<String>,
    /// Sending peer, from `signaling.peer`.
    pub peer: Option<String>,
}

impl Signal {
    /// Reads the configured pointers from `text`. Never fails: what cannot be read is `None`.
    /// One pass over the text for all three pointers; an empty string counts as absent.
    pub fn read(text: &str, cfg: &Signaling) -> Signal {
        if cfg.kind.is_none() && cfg.room.is_none() && cfg.peer.is_none() {
            return Signal::default();
        }
        fn p(p: &Option<String>) -> &str {
            p.as_deref().unwrap_or("")
        }
        let [kind, room, peer] = pointer_values(text, [p(&cfg.kind), p(&cfg.room), p(&cfg.peer)]);
        let non_empty = |v: Option<String>| v.filter(|s| !s.is_empty());
        Signal {
            kind: non_empty(kind),
            room: non_empty(room),
            peer: non_empty(peer),
        }
    }

    /// The message type as a metric label: a known signaling type (lower-case), or `other`
    /// for an absent or unknown one. A fixed set, so clients cannot grow a label space.
    pub fn type_label(&self) -> &'static str {
        let Some(kind) = self.kind.as_deref() else {
            return "other";
        };
        KNOWN_TYPES
            .iter()
            .find(|known| known.eq_ignore_ascii_case(kind))
            .copied()
            .unwrap_or("other")
    }
}

/// Message types counted under their own name; the rest count as `other`.
pub const KNOWN_TYPES: [&str; 12] = [
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

/// The sticky key of a request for `query:`, `header:` and `cookie:` stickiness
/// (`message:` and `none` give `None`). `query` is the raw query string without `?`.
pub fn sticky_key<H: Headers + ?Sized>(
    sticky: &Sticky,
    query: Option<&str>,
    headers: &H,
) -> Option<String> {
    match sticky {
        Sticky::Query(name) => query.and_then(|q| query_param(q, name)),
        Sticky::Header(name) => headers
            .get(name)
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(str::to_owned),
        Sticky::Cookie(name) => headers
            .get("cookie")
            .and_then(|c| cookie(c, name))
            .map(str::to_owned),
        Sticky::Message(_) | Sticky::None => None,
    }
}

/// The sticky key for `message:/pointer` stickiness, from the client's first text message
/// (`None` for other kinds, a missing or empty value).
pub fn message_sticky_key(sticky: &Sticky, text: &str) -> Option<String> {
    match sticky {
        Sticky::Message(pointer) => pointer_value(text, pointer).filter(|v| !v.is_empty()),
        _ => None,
    }
}

/// The first non-empty value of query parameter `name` in a raw query string (a leading `?` is
/// ignored): pairs split on `&`, names and values percent-decoded with `+` as a space.
pub fn query_param(query: &str, name: &str) -> Option<String> {
    let query = query.strip_prefix('?').unwrap_or(query);
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if form_decode(k) != name {
            return None;
        }
        let v = form_decode(v);
        (!v.is_empty()).then(|| v.into_owned())
    })
}

/// The first non-empty value of cookie `name` in a `Cookie` header (`a=b; c=d`), without
/// surrounding double quotes.
pub fn cookie<'h>(header: &'h str, name: &str) -> Option<&'h str> {
    header.split(';').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        if k.trim() != name {
            return None;
        }
        let v = v.trim();
        let v = v
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .unwrap_or(v);
        (!v.is_empty()).then_some(v)
    })
}

/// `application/x-www-form-urlencoded` decoding: `+` is a space, `%XX` a byte; a `%` not
/// followed by two hex digits stays as it is; invalid UTF-8 is replaced.
fn form_decode(s: &str) -> Cow<'_, str> {
    if !s.bytes().any(|b| b == b'%' || b == b'+') {
        return Cow::Borrowed(s);
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => match (
                bytes.get(i + 1).and_then(|&b| hex(b)),
                bytes.get(i + 2).and_then(|&b| hex(b)),
            ) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

#[cfg(test)]
mod tests {
    use super::Signal as TypedSignal;

    #[test]
    fn type_labels_are_a_fixed_set() {
        let s = |k: Option<&str>| TypedSignal {
            kind: k.map(str::to_owned),
            ..TypedSignal::default()
        };
        assert_eq!(s(Some("offer")).type_label(), "offer");
        assert_eq!(s(Some("OFFER")).type_label(), "offer");
        assert_eq!(s(Some("peer-joined")).type_label(), "peer-joined");
        assert_eq!(s(Some("x".repeat(100).as_str())).type_label(), "other");
        assert_eq!(s(None).type_label(), "other");
    }

    use super::*;

    /// The reference semantics: a full parse and `Value::pointer`.
    fn reference(text: &str, pointer: &str) -> Option<String> {
        let v: serde_json::Value = serde_json::from_str(text).ok()?;
        match v.pointer(pointer)? {
            serde_json::Value::String(s) => Some(s.clone()),
            serde_json::Value::Number(n) => Some(n.to_string()),
            serde_json::Value::Bool(b) => Some(b.to_string()),
            _ => None,
        }
    }

    const OFFER: &str = r#"{"type":"offer","room":"r1","from":"alice","n":42,"x":-1.5,"ok":true,"nil":null,
        "sdp":"v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\n","a":[{"b":1},["c"]],"a/b":"slash","m~n":"tilde","":"empty"}"#;

    #[test]
    fn values_like_value_pointer() {
        for p in [
            "/type", "/room", "/n", "/x", "/ok", "/nil", "/sdp", "/a", "/a/0", "/a/0/b", "/a/1/0",
            "/a/01", "/a/-", "/a/2", "/a~1b", "/m~0n", "/", "", "type", "/missing", "/type/x",
            "/a/0/b/c",
        ] {
            assert_eq!(pointer_value(OFFER, p), reference(OFFER, p), "{p}");
        }
        assert_eq!(pointer_value(OFFER, "/n").as_deref(), Some("42"));
        assert_eq!(pointer_value(OFFER, "/x").as_deref(), Some("-1.5"));
        assert_eq!(pointer_value(OFFER, "/ok").as_deref(), Some("true"));
        assert_eq!(pointer_value(OFFER, "/a~1b").as_deref(), Some("slash"));
        assert_eq!(pointer_value(OFFER, "/a/1/0").as_deref(), Some("c"));
    }

    #[test]
    fn escaped_keys_and_duplicates() {
        let t = r#"{"ro\u006fm":"a","k":{"x":1},"k":{"y":2},"d":1,"d":"last"}"#;
        assert_eq!(pointer_value(t, "/room").as_deref(), Some("a"));
        assert_eq!(pointer_value(t, "/k/x"), None);
        assert_eq!(pointer_value(t, "/k/y").as_deref(), Some("2"));
        assert_eq!(pointer_value(t, "/d").as_deref(), Some("last"));
        for p in ["/room", "/k/x", "/k/y", "/d"] {
            assert_eq!(pointer_value(t, p), reference(t, p), "{p}");
        }
    }

    #[test]
    fn malformed_and_non_json() {
        for t in [
            "",
            "hello",
            "  {",
            r#"{"type":"offer""#,
            r#"{"type":"offer"} x"#,
            r#"{"type":}"#,
            "[1,]",
            "\"offer\"",
            "42",
        ] {
            assert_eq!(pointer_value(t, "/type"), None, "{t}");
        }
        assert_eq!(pointer_value(" \n[\"a\"]", "/0").as_deref(), Some("a"));
        let deep = "[".repeat(10_000);
        assert_eq!(pointer_value(&deep, "/0"), None);
    }

    #[test]
    fn signal_reads_three_pointers() {
        let cfg = Signaling {
            kind: Some("/type".into()),
            room: Some("/room".into()),
            peer: Some("/from".into()),
        };
        assert_eq!(
            Signal::read(OFFER, &cfg),
            Signal {
                kind: Some("offer".into()),
                room: Some("r1".into()),
                peer: Some("alice".into())
            }
        );
        assert_eq!(Signal::read("not json", &cfg), Signal::default());
        assert_eq!(
            Signal::read(r#"{"type":"join","room":""}"#, &cfg),
            Signal {
                kind: Some("join".into()),
                ..Signal::default()
            }
        );
        let same = Signaling {
            kind: Some("/type".into()),
            room: Some("/type".into()),
            peer: None,
        };
        assert_eq!(
            Signal::read(OFFER, &same),
            Signal {
                kind: Some("offer".into()),
                room: Some("offer".into()),
                peer: None
            }
        );
        assert_eq!(
            Signal::read(OFFER, &Signaling::default()),
            Signal::default()
        );
    }

    #[test]
    fn nested_pointers_share_a_pass() {
        let t = r#"{"a":{"b":{"c":"x"},"d":5}}"#;
        assert_eq!(
            pointer_values(t, ["/a", "/a/b/c", "/a/d", "/a/b"]),
            [None, Some("x".into()), Some("5".into()), None]
        );
    }

    #[test]
    fn sticky_keys() {
        let headers = [
            ("X-Room", " blue "),
            ("Cookie", "a=1; room=\"green\"; room=red; empty="),
        ];
        let q = Some("x=1&room=abc%20d+e&room=zzz");
        assert_eq!(
            sticky_key(&Sticky::Query("room".into()), q, &headers).as_deref(),
            Some("abc d e")
        );
        assert_eq!(
            sticky_key(
                &Sticky::Query("room".into()),
                Some("room=&room=b"),
                &headers
            )
            .as_deref(),
            Some("b")
        );
        assert_eq!(
            sticky_key(&Sticky::Query("room".into()), Some("room"), &headers),
            None
        );
        assert_eq!(
            sticky_key(&Sticky::Query("r m".into()), Some("r%20m=1"), &headers).as_deref(),
            Some("1")
        );
        assert_eq!(
            sticky_key(&Sticky::Query("room".into()), Some("room=%zz%4"), &headers).as_deref(),
            Some("%zz%4")
        );
        assert_eq!(
            sticky_key(&Sticky::Query("room".into()), None, &headers),
            None
        );
        assert_eq!(
            sticky_key(&Sticky::Header("x-room".into()), None, &headers).as_deref(),
            Some("blue")
        );
        assert_eq!(
            sticky_key(&Sticky::Header("x-none".into()), None, &headers),
            None
        );
        assert_eq!(
            sticky_key(&Sticky::Cookie("room".into()), None, &headers).as_deref(),
            Some("green")
        );
        assert_eq!(
            sticky_key(&Sticky::Cookie("a".into()), None, &headers).as_deref(),
            Some("1")
        );
        assert_eq!(
            sticky_key(&Sticky::Cookie("empty".into()), None, &headers),
            None
        );
        assert_eq!(
            sticky_key(&Sticky::Cookie("x".into()), None, &[("a", "b")]),
            None
        );
        assert_eq!(
            sticky_key(&Sticky::Message("/room".into()), q, &headers),
            None
        );
        assert_eq!(sticky_key(&Sticky::None, q, &headers), None);
    }

    #[test]
    fn message_sticky() {
        let m = Sticky::Message("/room".into());
        assert_eq!(message_sticky_key(&m, OFFER).as_deref(), Some("r1"));
        assert_eq!(message_sticky_key(&m, r#"{"room":""}"#), None);
        assert_eq!(message_sticky_key(&Sticky::None, OFFER), None);
    }
}
