//! Routes: the `routes` list (with duplicate-name checks), each route, and its `match` and
//! `websocket` sections. A route's `limits`, `split` and `upstreams` are read by the `limits`
//! and `upstreams` modules.

use std::collections::BTreeMap;

use super::super::tree::{Node, NodeKind};
use super::super::{
    Affinity, Limits, Match, OnUpstreamFailure, Replay, Route, Signaling, Split, Sticky, WebSocket,
};
use super::fields::{fields, name_line};
use super::limits::limits;
use super::scalars::{
    check_name, header_name, int_in, json_pointer, parse_url, positive_duration, required_string,
    string, string_list,
};
use super::upstreams::{split, upstreams};
use super::{MATCH, Mode, RECONNECT, ROUTE, SIGNALING, Validator, WEBSOCKET, index, join};

// === routes ===

pub(super) fn routes(cx: &mut Validator, node: &Node, path: &str) -> Vec<Route> {
    let NodeKind::Seq(items) = &node.kind else {
        cx.err(
            path,
            node.line,
            format!(
                "`routes` must be a list (`- name: ...` entries), found {}",
                node.describe()
            ),
        );
        return Vec::new();
    };
    if items.is_empty() {
        cx.err(path, node.line, "no routes: at least one route is needed");
    }
    let mut out = Vec::new();
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for (i, item) in items.iter().enumerate() {
        let p = index(path, i);
        if let Some(r) = route(cx, item, &p) {
            if !r.name.is_empty() {
                if let Some(first) = seen.get(&r.name) {
                    let line = name_line(item);
                    cx.err(
                        &join(&p, "name"),
                        line,
                        format!(
                            "duplicate route name `{}` (also the name of routes[{first}])",
                            r.name
                        ),
                    );
                } else {
                    seen.insert(r.name.clone(), i);
                }
            }
            out.push(r);
        }
    }
    out
}

fn route(cx: &mut Validator, node: &Node, path: &str) -> Option<Route> {
    let f = fields(cx, node, path, ROUTE, &[])?;
    let name = required_string(cx, &f, "name", "route `name`").unwrap_or_default();
    if !name.is_empty() {
        check_name(cx, &name, &f.path("name"), name_line(node), "route name");
    }
    let matcher = match f.get("match") {
        Some(n) => matcher(cx, n, &f.path("match")),
        None => Match::default(),
    };
    let websocket = f
        .get("websocket")
        .map(|n| websocket(cx, n, &f.path("websocket")));
    let is_ws = websocket.is_some();
    let split = match f.get("split") {
        Some(n) => split(cx, n, &f.path("split"), is_ws),
        None => Split::default(),
    };
    let sticky_room = matches!(
        split.sticky,
        Sticky::Query(_) | Sticky::Header(_) | Sticky::Cookie(_)
    );
    let room_source = websocket
        .as_ref()
        .is_some_and(|w| w.signaling.room.is_some())
        || sticky_room;
    let limits = match f.get("limits") {
        Some(n) => limits(cx, n, &f.path("limits"), is_ws, room_source, sticky_room),
        None => Limits::default(),
    };
    let upstreams = match f.value("upstreams") {
        None => {
            cx.err(
                &f.path("upstreams"),
                f.key_line("upstreams"),
                "missing `upstreams`: a route needs at least one upstream",
            );
            Vec::new()
        }
        Some(n) => upstreams(cx, n, &f.path("upstreams"), is_ws),
    };
    let affinity = match f.value("affinity") {
        None => Affinity::None,
        Some(n) => match string(cx, n, &f.path("affinity")).as_deref().map(str::trim) {
            Some("none") => Affinity::None,
            Some("engine_io") if cx.mode == Mode::Filter => {
                cx.err(
                    &f.path("affinity"),
                    n.line,
                    "in Envoy, pin Engine.IO sessions with the cluster's hash policy on a cookie (Istio: DestinationRule `consistentHash: {httpCookie: ...}`), see docs/upstreams.md",
                );
                Affinity::None
            }
            Some("engine_io") => Affinity::EngineIo,
            Some(other) => {
                cx.err(
                    &f.path("affinity"),
                    n.line,
                    format!("`{other}`: expected `engine_io` or `none`"),
                );
                Affinity::None
            }
            None => Affinity::None,
        },
    };
    let rollout = f
        .get("rollout")
        .and_then(|n| super::rollout::rollout(cx, n, &f.path("rollout"), &upstreams));
    Some(Route {
        name,
        matcher,
        websocket,
        limits,
        split,
        affinity,
        upstreams,
        rollout,
    })
}

fn matcher(cx: &mut Validator, node: &Node, path: &str) -> Match {
    let mut m = Match::default();
    let Some(f) = fields(
        cx,
        node,
        path,
        MATCH,
        &[(
            "prefix",
            "unknown key `prefix`; did you mean `path_prefix`?",
        )],
    ) else {
        return m;
    };
    for key in ["path", "path_prefix"] {
        if let Some(n) = f.value(key) {
            let p = f.path(key);
            if let Some(s) = string(cx, n, &p) {
                if !s.starts_with('/') {
                    cx.err(&p, n.line, format!("`{s}` must start with `/`"));
                } else if s.contains(['?', '#']) {
                    cx.err(
                        &p,
                        n.line,
                        format!("`{s}`: paths are matched without the query string; remove `?...`"),
                    );
                } else if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
                    cx.err(&p, n.line, format!("`{s}`: a path holds no spaces"));
                } else if key == "path" {
                    m.path = Some(s);
                } else {
                    m.path_prefix = Some(s);
                }
            }
        }
    }
    if f.value("path").is_some() && f.value("path_prefix").is_some() {
        cx.err(
            path,
            f.key_line("path_prefix"),
            "give either `path` (exact) or `path_prefix`, not both",
        );
    }
    if let Some(n) = f.value("host") {
        let p = f.path("host");
        if let Some(h) = string(cx, n, &p) {
            let h = h.trim().to_ascii_lowercase();
            let bare = h.strip_prefix("*.").unwrap_or(&h);
            let ok_chars = bare.chars().all(|c| {
                c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_') || !c.is_ascii()
            }) || (bare.starts_with('[') && bare.ends_with(']'));
            if bare.contains('*') {
                cx.err(
                    &p,
                    n.line,
                    format!("`{h}`: the only wildcard is a leading `*.`, as in `*.example.com`"),
                );
            } else if bare.is_empty()
                || bare.starts_with('.')
                || bare.ends_with('.') && bare.len() == 1
            {
                cx.err(&p, n.line, format!("`{h}` is not a host name"));
            } else if bare.contains(':') && !bare.starts_with('[') {
                cx.err(
                    &p,
                    n.line,
                    format!("`{h}`: the host is matched without its port; remove `:PORT`"),
                );
            } else if !ok_chars {
                cx.err(&p, n.line, format!("`{h}` is not a host name"));
            } else {
                m.host = Some(h);
            }
        }
    }
    if let Some(n) = f.get("headers") {
        let hp = f.path("headers");
        match &n.kind {
            NodeKind::Null => {}
            NodeKind::Map(entries) => {
                for (k, v) in entries {
                    let p = join(&hp, &k.name);
                    let Some(name) = header_name(cx, &k.name, &p, k.line) else {
                        continue;
                    };
                    let value = match string(cx, v, &p) {
                        Some(v) => v,
                        None if v.kind == NodeKind::Null => {
                            cx.err(&p, v.line, "missing header value (an exact match needs one; quote \"\" for an empty value)");
                            continue;
                        }
                        None => continue,
                    };
                    match m.headers.entry(name) {
                        std::collections::btree_map::Entry::Occupied(e) => cx.err(
                            &p,
                            k.line,
                            format!(
                                "header `{}` is given twice (names are case-insensitive)",
                                e.key()
                            ),
                        ),
                        std::collections::btree_map::Entry::Vacant(e) => {
                            e.insert(value);
                        }
                    }
                }
            }
            _ => cx.err(
                &hp,
                n.line,
                format!(
                    "`headers` must be a mapping `name: value`, found {}",
                    n.describe()
                ),
            ),
        }
    }
    m
}

fn websocket(cx: &mut Validator, node: &Node, path: &str) -> WebSocket {
    let mut w = WebSocket::default();
    let Some(f) = fields(cx, node, path, WEBSOCKET, &[]) else {
        return w;
    };
    if let Some(n) = f.value("max_message_bytes")
        && let Some(v) = int_in(
            cx,
            n,
            &f.path("max_message_bytes"),
            1,
            super::super::MAX_MESSAGE_BYTES as i64,
            "`max_message_bytes`",
        )
    {
        w.max_message_bytes = usize::try_from(v).unwrap_or(w.max_message_bytes);
    }
    w.idle_timeout = positive_duration(cx, &f, "idle_timeout", w.idle_timeout);
    if let Some(n) = f.value("compression") {
        let p = f.path("compression");
        match string(cx, n, &p).as_deref() {
            Some("passthrough") => w.compression = super::super::Compression::Passthrough,
            Some("strip") => w.compression = super::super::Compression::Strip,
            Some(other) => cx.err(
                &p,
                n.line,
                format!("`{other}`: use `passthrough` or `strip`"),
            ),
            None => {}
        }
    }
    if let Some(n) = f.value("on_upstream_failure") {
        let p = f.path("on_upstream_failure");
        match string(cx, n, &p).as_deref() {
            Some("close") => w.on_upstream_failure = OnUpstreamFailure::Close,
            Some("reconnect") if cx.mode == Mode::Filter => cx.err(
                &p,
                n.line,
                "`reconnect` is done by the standalone proxy; in Envoy an upgraded stream that loses its upstream ends (use `close`)",
            ),
            Some("reconnect") => w.on_upstream_failure = OnUpstreamFailure::Reconnect,
            Some(other) => cx.err(
                &p,
                n.line,
                format!("`{other}`: use `close` or `reconnect`"),
            ),
            None => {}
        }
    }
    if let Some(n) = f.get("reconnect")
        && let Some(r) = fields(cx, n, &f.path("reconnect"), RECONNECT, &[])
    {
        if let Some(n) = r.value("replay") {
            let p = r.path("replay");
            match string(cx, n, &p).as_deref() {
                Some("first") => w.reconnect.replay = Replay::First,
                Some("none") => w.reconnect.replay = Replay::None,
                Some(other) => cx.err(&p, n.line, format!("`{other}`: use `first` or `none`")),
                None => {}
            }
        }
        if let Some(n) = r.value("attempts")
            && let Some(v) = int_in(cx, n, &r.path("attempts"), 1, 5, "`attempts`")
        {
            w.reconnect.attempts = v as u32;
        }
        if w.on_upstream_failure != OnUpstreamFailure::Reconnect {
            cx.err(
                &f.path("reconnect"),
                f.key_line("reconnect"),
                "`reconnect` is used with `on_upstream_failure: reconnect`",
            );
        }
    }
    if let Some(n) = f.get("allowed_origins") {
        let p = f.path("allowed_origins");
        for (i, (o, line)) in string_list(cx, n, &p).into_iter().enumerate() {
            let ip = index(&p, i);
            if o == "*" {
                cx.err(
                    &ip,
                    line,
                    "`*`: to allow any origin, leave `allowed_origins` out (or empty)",
                );
            } else if o == "null" {
                w.allowed_origins.push(o);
            } else {
                match parse_url(&o) {
                    Err(e) => cx.err(
                        &ip,
                        line,
                        format!("{e} (an origin is `scheme://host[:port]`)"),
                    ),
                    Ok(_)
                        if o.split_once("://")
                            .is_some_and(|(_, r)| r.contains(['/', '?'])) =>
                    {
                        cx.err(
                            &ip,
                            line,
                            format!(
                                "`{o}`: an origin has no path, not even `/`: write `{}`",
                                o.trim_end_matches('/')
                            ),
                        )
                    }
                    Ok(_) => w.allowed_origins.push(o),
                }
            }
        }
    }
    if let Some(n) = f.get("signaling")
        && let Some(s) = fields(cx, n, &f.path("signaling"), SIGNALING, &[])
    {
        let mut sig = Signaling::default();
        for key in SIGNALING {
            let p = s.path(key);
            if let Some(n) = s.value(key)
                && let Some(v) = string(cx, n, &p)
                && json_pointer(cx, &v, &p, n.line)
            {
                match *key {
                    "type" => sig.kind = Some(v),
                    "room" => sig.room = Some(v),
                    _ => sig.peer = Some(v),
                }
            }
        }
        w.signaling = sig;
    }
    w
}
