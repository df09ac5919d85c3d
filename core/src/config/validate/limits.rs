//! A route's `limits`: connection, message and room token buckets.

use std::time::Duration;

use super::super::tree::Node;
use super::super::{
    ConnectionLimit, LimitKey, Limits, MessageLimit, OnExceed, Rate, RoomLimit, SessionCap,
    SessionKey,
};
use super::cluster::scope;
use super::fields::{Fields, fields};
use super::scalars::{header_name, int_in, positive_duration, string};
use super::{CONNECTIONS, LIMITS, MESSAGES, ROOMS, SESSIONS, Validator};

// === limits ===

pub(super) fn limits(
    cx: &mut Validator,
    node: &Node,
    path: &str,
    is_ws: bool,
    room_source: bool,
    sticky_room: bool,
) -> Limits {
    let mut l = Limits::default();
    let Some(f) = fields(cx, node, path, LIMITS, &[]) else {
        return l;
    };
    if let Some(n) = f.get("connections") {
        let p = f.path("connections");
        if let Some(c) = fields(cx, n, &p, CONNECTIONS, &[]) {
            let rate = rate(cx, &c);
            let mut key = LimitKey::ClientIp;
            if let Some(n) = c.value("key") {
                let kp = c.path("key");
                if let Some(v) = string(cx, n, &kp) {
                    match v.trim() {
                        "client_ip" => {}
                        "route" => key = LimitKey::Route,
                        other => match other.strip_prefix("header:") {
                            Some(h) => {
                                if let Some(h) = header_name(cx, h.trim(), &kp, n.line) {
                                    key = LimitKey::Header(h);
                                }
                            }
                            None => cx.err(
                                &kp,
                                n.line,
                                format!(
                                    "`{other}`: expected `client_ip`, `route` or `header:NAME`"
                                ),
                            ),
                        },
                    }
                }
            }
            let scope = scope(cx, &c, "connection buckets");
            if let Some(rate) = &rate
                && scope.is_global()
            {
                global_rate(cx, &c, rate);
            }
            if let Some(rate) = rate {
                l.connections = Some(ConnectionLimit { rate, key, scope });
            }
        }
    }
    if let Some(n) = f.get("messages") {
        let p = f.path("messages");
        if !is_ws {
            cx.err(&p, f.key_line("messages"), "message limits need a WebSocket route: add a `websocket:` section to this route, or remove `messages`");
        } else if let Some(m) = fields(cx, n, &p, MESSAGES, &[]) {
            let rate = rate(cx, &m);
            let mut on_exceed = OnExceed::Drop;
            if let Some(n) = m.value("on_exceed") {
                let op = m.path("on_exceed");
                if let Some(v) = string(cx, n, &op) {
                    match v.trim() {
                        "drop" => {}
                        "close" => on_exceed = OnExceed::Close,
                        other => cx.err(
                            &op,
                            n.line,
                            format!("`{other}`: expected `drop` or `close`"),
                        ),
                    }
                }
            }
            if let Some(rate) = rate {
                l.messages = Some(MessageLimit { rate, on_exceed });
            }
        }
    }
    if let Some(n) = f.get("rooms") {
        let p = f.path("rooms");
        if !is_ws {
            cx.err(&p, f.key_line("rooms"), "room limits need a WebSocket route: add a `websocket:` section to this route, or remove `rooms`");
        } else if let Some(r) = fields(cx, n, &p, ROOMS, &[]) {
            if !room_source {
                cx.err(
                    &p,
                    f.key_line("rooms"),
                    "room limits need to know the room: set `websocket.signaling.room` (a JSON pointer such as `/room`), or `split.sticky` to `query:`, `header:` or `cookie:`",
                );
            }
            let scope = scope(cx, &r, "room buckets");
            let rate = rate(cx, &r);
            if let Some(rate) = &rate
                && scope.is_global()
            {
                global_rate(cx, &r, rate);
            }
            l.rooms = rate.map(|rate| RoomLimit { rate, scope });
        }
    }
    if let Some(n) = f.get("sessions") {
        let p = f.path("sessions");
        if !is_ws {
            cx.err(&p, f.key_line("sessions"), "session caps count WebSocket sessions: add a `websocket:` section to this route, or remove `sessions`");
        } else if let Some(sf) = fields(cx, n, &p, SESSIONS, &[]) {
            l.sessions = session_cap(cx, &sf, sticky_room);
        }
    }
    l
}

/// `limits.sessions: { max, key, scope }`.
fn session_cap(cx: &mut Validator, f: &Fields<'_>, sticky_room: bool) -> Option<SessionCap> {
    let max = match f.value("max") {
        None => {
            cx.err(
                &f.path("max"),
                f.key_line("max"),
                "missing `max` (live sessions per key)",
            );
            None
        }
        Some(n) => int_in(cx, n, &f.path("max"), 1, i64::from(u32::MAX), "`max`"),
    };
    let mut key = SessionKey::Room;
    if let Some(n) = f.value("key") {
        let kp = f.path("key");
        if let Some(v) = string(cx, n, &kp) {
            match v.trim() {
                "room" => {}
                "client_ip" => key = SessionKey::ClientIp,
                "peer" => cx.err(
                    &kp,
                    n.line,
                    "`peer` is not known when the session opens (it comes with the messages); \
                     use `room`, `client_ip` or `header:NAME`",
                ),
                other => match other.strip_prefix("header:") {
                    Some(h) => {
                        if let Some(h) = header_name(cx, h.trim(), &kp, n.line) {
                            key = SessionKey::Header(h);
                        }
                    }
                    None => cx.err(
                        &kp,
                        n.line,
                        format!("`{other}`: expected `room`, `client_ip` or `header:NAME`"),
                    ),
                },
            }
        }
    }
    if key == SessionKey::Room && !sticky_room {
        cx.err(
            &f.path("key"),
            f.key_line("key"),
            "counting sessions per room needs the room when the session opens: set \
             `split.sticky` to `query:`, `header:` or `cookie:`",
        );
    }
    let scope = scope(cx, f, "session counts");
    Some(SessionCap {
        max: u32::try_from(max?).ok()?,
        key,
        scope,
    })
}

/// `rate`, `per`, `burst` of a bucket.
fn rate(cx: &mut Validator, f: &Fields<'_>) -> Option<Rate> {
    let max = i64::from(u32::MAX);
    let rate = match f.value("rate") {
        None => {
            cx.err(
                &f.path("rate"),
                f.key_line("rate"),
                "missing `rate` (tokens added every `per`)",
            );
            None
        }
        Some(n) => int_in(cx, n, &f.path("rate"), 1, max, "`rate`"),
    };
    let per = positive_duration(cx, f, "per", Duration::from_secs(1));
    let burst = match f.value("burst") {
        None => rate,
        Some(n) => int_in(cx, n, &f.path("burst"), 1, max, "`burst`"),
    };
    let rate = u32::try_from(rate?).ok()?;
    let burst = u32::try_from(burst?).ok()?;
    Some(Rate { rate, per, burst })
}

/// A global bucket is computed by a Redis script in microseconds with Lua's numbers (exact
/// integers below 2^53): `burst × per` must stay below that (`crate::bucket::global`).
fn global_rate(cx: &mut Validator, f: &Fields<'_>, rate: &Rate) {
    if !crate::bucket::global::fits(rate) {
        cx.err(
            &f.path("burst"),
            f.key_line("burst"),
            "a `scope: global` bucket needs `burst × per` below 2^53 µs (about 285 years of \
             tokens): use a smaller `burst` or a shorter `per`",
        );
    }
}
