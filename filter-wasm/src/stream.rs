//! One HTTP stream through the filter, host-independent: request headers in, a verdict out;
//! body chunks in, the bytes to forward out. Every decision is core's; this file translates.
//!
//! ```text
//! request headers ─► credentials path? ─► local 200/400/405/429
//!                 ─► route (core RouteTable)? no ─► untouched
//!                 ─► upgrade: origin (core) ─► 403
//!                 ─► connection bucket (core TokenBucket in shared data, CAS) ─► 429 + headers
//!                 ─► split (core Splitter, same hash as the proxy) ─► split header + route cache cleared
//!                 ─► upgrade: strip permessage-deflate, start the frame readers
//! request body   ─► core FrameReader (client → upstream) + core MessagePolicy ─► keep | cut | close
//! response body  ─► core FrameReader (upstream → client) ─► counters
//! ```

use std::time::Duration;

use sigmesh_core::bucket::Verdict;
use sigmesh_core::config::{Rate, Route};
use sigmesh_core::frame::policy::{
    Decision, MessagePolicy, RateLimited, Seen, connection_key, origin_allowed,
};
use sigmesh_core::frame::{
    Action, FrameReader, Handler, MessageInfo, Pushed, close_code, strip_extension,
};
use sigmesh_core::route::{Headers, RequestHead};
use sigmesh_core::signal::{query_param, sticky_key};

use crate::metrics::{Metrics, Sink};
use crate::settings::{Deflate, Settings};
use crate::shared::{Family, Store, take};

/// The default bucket of the credentials endpoint per client IP when no route lends one
/// (the standalone proxy's default: 10 per second, burst 20).
pub const CREDENTIALS_RATE: Rate = Rate {
    rate: 10,
    per: Duration::from_secs(1),
    burst: 20,
};

/// Request headers as the host gives them (names lower-case, pseudo-headers included).
pub struct HeaderList<'a>(pub &'a [(String, String)]);

impl Headers for HeaderList<'_> {
    fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// What the host tells the filter about a request, besides its headers.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    /// The client's address without the port (`source.address`).
    pub client_ip: &'a str,
    /// Time since the Unix epoch (the same clock in every VM).
    pub now: Duration,
    /// A random number (a split without a sticky key; masking keys).
    pub random: u32,
}

/// The verdict on request headers.
#[derive(Debug)]
pub enum HeadersVerdict {
    /// Not sigmesh's request: leave it alone.
    Pass,
    /// Answer locally.
    Respond {
        /// HTTP status.
        status: u32,
        /// Response headers.
        headers: Vec<(String, String)>,
        /// Response body.
        body: String,
    },
    /// Go on with these header changes; `session` reads the frames of an upgrade.
    Proceed {
        /// Headers to set (replacing any value).
        set: Vec<(String, String)>,
        /// Headers to remove.
        remove: Vec<String>,
        /// Whether a header that routing may look at changed (clear the route cache).
        reroute: bool,
        /// The frame readers of a WebSocket upgrade.
        session: Option<Box<Session>>,
    },
}

/// Decides on request headers (see the module docs).
pub fn on_request_headers(
    s: &Settings,
    store: &dyn Store,
    sink: &mut dyn Sink,
    headers: &[(String, String)],
    cx: Context<'_>,
) -> HeadersVerdict {
    let h = HeaderList(headers);
    let full_path = h.get(":path").unwrap_or("/");
    let (path, query) = match full_path.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (full_path, None),
    };
    let host = h.get(":authority").or_else(|| h.get("host"));
    let head = RequestHead {
        host,
        path,
        headers: &h,
    };
    let mut m = Metrics { sink };
    let index = s.table.find(&head);
    if let Some(turn) = &s.config.turn
        && path == turn.credentials_path
    {
        return credentials(s, store, &mut m, &h, query, index, cx);
    }
    let Some(index) = index else {
        return HeadersVerdict::Pass;
    };
    let (Some(route), Some(splitter)) = (s.config.routes.get(index), s.splitters.get(index)) else {
        return HeadersVerdict::Pass;
    };
    let upgrade = route.websocket.is_some() && is_websocket_upgrade(&h);
    if upgrade
        && let Some(ws) = &route.websocket
        && !origin_allowed(ws, h.get("origin"))
    {
        m.connection(&route.name, "", "forbidden");
        return text(403, "origin not allowed");
    }
    if let Some(limited) = connection_limit(s, store, &mut m, route, &h, cx) {
        return limited;
    }
    let sticky = sticky_key(&route.split.sticky, query, &h);
    let split_header = route.override_header();
    let pick = splitter.pick(
        h.get(split_header),
        sticky.as_deref().map(str::as_bytes),
        cx.random,
    );
    let upstream = splitter.name(pick.index).unwrap_or_default().to_owned();
    let mut set = vec![(split_header.to_owned(), upstream.clone())];
    let mut remove = Vec::new();
    let mut session = None;
    if upgrade {
        let offered = h
            .get("sec-websocket-extensions")
            .is_some_and(|v| strip_extension(v, "permessage-deflate").as_deref() != Some(v));
        let deflate = match s.filter.permessage_deflate {
            Deflate::Keep => offered,
            Deflate::Strip => {
                if offered && let Some(v) = h.get("sec-websocket-extensions") {
                    match strip_extension(v, "permessage-deflate") {
                        Some(rest) => set.push(("sec-websocket-extensions".into(), rest)),
                        None => remove.push("sec-websocket-extensions".into()),
                    }
                }
                false
            }
        };
        session = Some(Box::new(Session::new(route, upstream, sticky, deflate, cx)));
    }
    HeadersVerdict::Proceed {
        set,
        remove,
        reroute: true,
        session,
    }
}

/// HTTP/1.1 `Upgrade: websocket`, or HTTP/2 extended CONNECT with `:protocol: websocket`.
pub fn is_websocket_upgrade<H: Headers + ?Sized>(h: &H) -> bool {
    let h1 = h.get("upgrade").is_some_and(|u| {
        u.split(',')
            .any(|t| t.trim().eq_ignore_ascii_case("websocket"))
    });
    let h2 = h.get(":method") == Some("CONNECT")
        && h.get(":protocol")
            .is_some_and(|p| p.eq_ignore_ascii_case("websocket"));
    h1 || h2
}

fn text(status: u32, body: &str) -> HeadersVerdict {
    HeadersVerdict::Respond {
        status,
        headers: vec![("content-type".into(), "text/plain; charset=utf-8".into())],
        body: body.to_owned(),
    }
}

fn too_many(rate: &Rate, retry_after: Duration) -> HeadersVerdict {
    let mut headers: Vec<(String, String)> = RateLimited::new(rate, retry_after)
        .headers()
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
    headers.push(("content-type".into(), "text/plain; charset=utf-8".into()));
    HeadersVerdict::Respond {
        status: 429,
        headers,
        body: "rate limited".into(),
    }
}

/// The route's connection bucket; `Some(429)` when it is empty.
fn connection_limit(
    s: &Settings,
    store: &dyn Store,
    m: &mut Metrics<'_>,
    route: &Route,
    h: &HeaderList<'_>,
    cx: Context<'_>,
) -> Option<HeadersVerdict> {
    let limit = route.limits.connections.as_ref()?;
    let key = connection_key(&limit.key, cx.client_ip, h);
    let family = Family::new("conn", &route.name, s.filter.bucket_slots, s.seed);
    match take(store, &family, &key, &limit.rate, cx.now).verdict {
        Verdict::Allow { .. } => None,
        Verdict::Limited { retry_after } => {
            m.rate_limited(&route.name, "connections");
            m.connection(&route.name, "", "rate_limited");
            Some(too_many(&limit.rate, retry_after))
        }
    }
}

/// `GET {credentials_path}?user=ID`: a TURN REST credential (core), as the standalone proxy
/// answers it, rate-limited by the matching route's connection bucket or the default one.
fn credentials(
    s: &Settings,
    store: &dyn Store,
    m: &mut Metrics<'_>,
    h: &HeaderList<'_>,
    query: Option<&str>,
    index: Option<usize>,
    cx: Context<'_>,
) -> HeadersVerdict {
    let Some(turn) = &s.config.turn else {
        return HeadersVerdict::Pass;
    };
    let method = h.get(":method").unwrap_or("GET");
    if method != "GET" && method != "HEAD" {
        let mut r = text(405, "method not allowed");
        if let HeadersVerdict::Respond { headers, .. } = &mut r {
            headers.push(("allow".into(), "GET, HEAD".into()));
        }
        return r;
    }
    let route = index.and_then(|i| s.config.routes.get(i));
    if let Some(route) = route
        && route.limits.connections.is_some()
    {
        if let Some(limited) = connection_limit(s, store, m, route, h, cx) {
            return limited;
        }
    } else {
        let family = Family::new("cred", "", s.filter.bucket_slots, s.seed);
        if let Verdict::Limited { retry_after } =
            take(store, &family, cx.client_ip, &CREDENTIALS_RATE, cx.now).verdict
        {
            m.rate_limited(route.map_or("", |r| r.name.as_str()), "credentials");
            return too_many(&CREDENTIALS_RATE, retry_after);
        }
    }
    let user = query
        .and_then(|q| query_param(q, "user"))
        .unwrap_or_default();
    let (status, body) = match sigmesh_core::credentials::credential(
        &turn.secret,
        &user,
        cx.now.as_secs(),
        turn.ttl,
        &turn.uris,
    ) {
        Ok(c) => (200, serde_json::to_string(&c).unwrap_or_default()),
        Err(e) => (
            400,
            serde_json::json!({ "error": format!("{e}: pass ?user=ID") }).to_string(),
        ),
    };
    HeadersVerdict::Respond {
        status,
        headers: vec![
            ("content-type".into(), "application/json".into()),
            ("cache-control".into(), "no-store".into()),
        ],
        body,
    }
}

// === impl Session ===

/// The frame readers and message policy of one upgraded stream.
#[derive(Debug)]
pub struct Session {
    route: String,
    upstream: String,
    policy: MessagePolicy,
    client: FrameReader,
    server: FrameReader,
    /// Stat names of this session's message counters, built once each.
    names: Names,
    /// The upgrade succeeded (101, or 200 to an extended CONNECT).
    open: bool,
    /// Counted in `connections_active`.
    counted: bool,
}

impl Session {
    fn new(
        route: &Route,
        upstream: String,
        sticky: Option<String>,
        deflate: bool,
        cx: Context<'_>,
    ) -> Self {
        let policy = MessagePolicy::new(route, sticky, cx.now);
        let client = FrameReader::new(policy.client_reader(deflate, cx.random.to_le_bytes()));
        let server = FrameReader::new(policy.upstream_reader(deflate));
        Session {
            route: route.name.clone(),
            upstream,
            policy,
            client,
            server,
            names: Names::default(),
            open: false,
            counted: false,
        }
    }

    /// The upstream the split picked.
    pub fn upstream(&self) -> &str {
        &self.upstream
    }

    /// The route's name.
    pub fn route(&self) -> &str {
        &self.route
    }

    /// The response headers arrived with `status`.
    pub fn on_response_headers(&mut self, status: Option<u32>, sink: &mut dyn Sink) {
        let mut m = Metrics { sink };
        if matches!(status, Some(101) | Some(200)) {
            self.open = true;
            self.counted = true;
            m.connection(&self.route, &self.upstream, "accepted");
            m.active(&self.route, &self.upstream, 1);
        } else {
            m.connection(&self.route, &self.upstream, "upstream_error");
            m.upstream_error(&self.route, &self.upstream, "handshake");
        }
    }

    /// A chunk of client bytes; returns what to forward. Room buckets are taken in `store`.
    pub fn on_request_body<'s>(
        &'s mut self,
        s: &Settings,
        store: &dyn Store,
        sink: &mut dyn Sink,
        chunk: &[u8],
        now: Duration,
    ) -> Pushed<'s> {
        let mut h = ClientSide {
            settings: s,
            route: &self.route,
            upstream: &self.upstream,
            policy: &mut self.policy,
            names: &mut self.names,
            store,
            m: Metrics { sink },
            now,
        };
        let p = self.client.push(chunk, &mut h);
        if let Some(c) = p.close
            && c.code == close_code::TOO_BIG
        {
            h.m.rate_limited(&self.route, "message_size");
        }
        p
    }

    /// A chunk of upstream bytes; returns what to forward.
    pub fn on_response_body<'s>(
        &'s mut self,
        sink: &mut dyn Sink,
        chunk: &[u8],
        now: Duration,
    ) -> Pushed<'s> {
        let mut h = ServerSide {
            route: &self.route,
            upstream: &self.upstream,
            policy: &mut self.policy,
            names: &mut self.names,
            m: Metrics { sink },
            now,
        };
        let p = self.server.push(chunk, &mut h);
        if p.close.is_some() {
            h.m.upstream_error(&self.route, &self.upstream, "protocol");
        }
        p
    }

    /// The stream is over.
    pub fn on_end(&mut self, sink: &mut dyn Sink) {
        if std::mem::take(&mut self.counted) {
            Metrics { sink }.active(&self.route, &self.upstream, -1);
        }
    }

    /// Whether the upgrade succeeded.
    pub fn is_open(&self) -> bool {
        self.open
    }
}

/// Counts a message; its ICE candidates only on the way in (each candidate leaves one client
/// once; the signaling server relays it back out to the other peers).
/// `sigmesh.messages_total` stat names by (direction, type), built on first use.
#[derive(Debug, Default)]
struct Names(Vec<(&'static str, &'static str, String)>);

impl Names {
    fn message(
        &mut self,
        route: &str,
        upstream: &str,
        dir: &'static str,
        label: &'static str,
    ) -> &str {
        let i = match self.0.iter().position(|(d, l, _)| *d == dir && *l == label) {
            Some(i) => i,
            None => {
                let name = crate::metrics::stat_name(
                    "messages_total",
                    &[
                        ("route", route),
                        ("upstream", upstream),
                        ("direction", dir),
                        ("type", label),
                    ],
                );
                self.0.push((dir, label, name));
                self.0.len() - 1
            }
        };
        &self.0[i].2
    }
}

fn count_seen(
    m: &mut Metrics<'_>,
    names: &mut Names,
    (route, upstream): (&str, &str),
    dir: &'static str,
    seen: Seen,
) {
    m.sink
        .counter(names.message(route, upstream, dir, seen.label), 1);
    if dir == "in" {
        for (kind, protocol) in seen.candidates {
            m.ice(route, kind, protocol, 1);
        }
    }
    if let Some(d) = seen.setup {
        m.call_setup(
            route,
            upstream,
            u64::try_from(d.as_millis()).unwrap_or(u64::MAX),
        );
    }
}

struct ClientSide<'a> {
    settings: &'a Settings,
    route: &'a str,
    upstream: &'a str,
    policy: &'a mut MessagePolicy,
    names: &'a mut Names,
    store: &'a dyn Store,
    m: Metrics<'a>,
    now: Duration,
}

impl Handler for ClientSide<'_> {
    fn decide(&mut self, _: &MessageInfo, text: Option<&str>) -> Action {
        let (settings, store, now, route) = (self.settings, self.store, self.now, self.route);
        let mut take_room = |room: &str, rate: &Rate| {
            let family = Family::new("room", route, settings.filter.bucket_slots, settings.seed);
            take(store, &family, room, rate, now).verdict
        };
        let d = self.policy.decide(text, now, &mut take_room);
        match d {
            Decision::Forward => {}
            Decision::Drop(l) | Decision::Close(l) => self.m.rate_limited(self.route, l.label()),
        }
        d.action()
    }

    fn done(&mut self, msg: &MessageInfo, text: Option<&str>, forwarded: bool) {
        let seen = self.policy.client_message(msg, text, self.now);
        if forwarded {
            count_seen(
                &mut self.m,
                self.names,
                (self.route, self.upstream),
                "in",
                seen,
            );
        }
    }
}

struct ServerSide<'a> {
    route: &'a str,
    upstream: &'a str,
    policy: &'a mut MessagePolicy,
    names: &'a mut Names,
    m: Metrics<'a>,
    now: Duration,
}

impl Handler for ServerSide<'_> {
    fn decide(&mut self, _: &MessageInfo, _: Option<&str>) -> Action {
        Action::Forward
    }

    fn done(&mut self, msg: &MessageInfo, text: Option<&str>, _: bool) {
        let seen = self.policy.upstream_message(msg, text, self.now);
        count_seen(
            &mut self.m,
            self.names,
            (self.route, self.upstream),
            "out",
            seen,
        );
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use sigmesh_core::frame::{Forward, frame};

    use super::*;
    use crate::settings::parse;
    use crate::shared::MemStore;

    #[derive(Default)]
    struct Counters(BTreeMap<String, i64>);

    impl Sink for Counters {
        fn counter(&mut self, name: &str, delta: u64) {
            *self.0.entry(name.to_owned()).or_default() += delta as i64;
        }
        fn gauge(&mut self, name: &str, delta: i64) {
            *self.0.entry(name.to_owned()).or_default() += delta;
        }
        fn histogram(&mut self, name: &str, _: u64) {
            *self.0.entry(name.to_owned()).or_default() += 1;
        }
    }

    fn settings(extra_route: &str, extra: &str) -> Settings {
        let text = format!(
            r#"{{"routes": [{{"name": "sig", "match": {{"path_prefix": "/ws"}},
                "websocket": {{"max_message_bytes": 64, "allowed_origins": ["https://ok"]}},
                "split": {{"sticky": "query:room"}} {extra_route},
                "upstreams": [{{"name": "stable", "weight": 50}}, {{"name": "canary", "weight": 50}}]}}]
                {extra}}}"#
        );
        parse(text.as_bytes()).expect("valid settings")
    }

    fn headers(path: &str, upgrade: bool, more: &[(&str, &str)]) -> Vec<(String, String)> {
        let mut h = vec![
            (":method".to_owned(), "GET".to_owned()),
            (":path".to_owned(), path.to_owned()),
            (":authority".to_owned(), "example.com".to_owned()),
            ("origin".to_owned(), "https://ok".to_owned()),
        ];
        if upgrade {
            h.push(("upgrade".into(), "websocket".into()));
            h.push(("connection".into(), "upgrade".into()));
        }
        h.extend(more.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
        h
    }

    fn cx() -> Context<'static> {
        Context {
            client_ip: "192.0.2.1",
            now: Duration::from_secs(1_700_000_000),
            random: 7,
        }
    }

    #[test]
    fn unrouted_requests_pass_untouched() {
        let s = settings("", "");
        let v = on_request_headers(
            &s,
            &MemStore::default(),
            &mut Counters::default(),
            &headers("/other", true, &[]),
            cx(),
        );
        assert!(matches!(v, HeadersVerdict::Pass));
    }

    #[test]
    fn upgrade_gets_the_split_header_and_loses_deflate() {
        let s = settings("", "");
        let h = headers(
            "/ws?room=room-42",
            true,
            &[(
                "sec-websocket-extensions",
                "permessage-deflate; client_max_window_bits",
            )],
        );
        let mut m = Counters::default();
        let v = on_request_headers(&s, &MemStore::default(), &mut m, &h, cx());
        let HeadersVerdict::Proceed {
            set,
            remove,
            reroute,
            session,
        } = v
        else {
            panic!("{v:?}");
        };
        assert!(reroute);
        assert_eq!(
            set,
            vec![("x-sigmesh-upstream".to_owned(), "canary".to_owned())]
        );
        assert_eq!(remove, vec!["sec-websocket-extensions".to_owned()]);
        assert_eq!(
            session.map(|s| s.upstream().to_owned()).as_deref(),
            Some("canary")
        );
        // HTTP/2 extended CONNECT is an upgrade too; a plain request is split but not read.
        let h2 = vec![
            (":method".to_owned(), "CONNECT".to_owned()),
            (":protocol".to_owned(), "websocket".to_owned()),
            (":path".to_owned(), "/ws?room=room-42".to_owned()),
            ("origin".to_owned(), "https://ok".to_owned()),
        ];
        let v = on_request_headers(&s, &MemStore::default(), &mut m, &h2, cx());
        assert!(matches!(
            v,
            HeadersVerdict::Proceed {
                session: Some(_),
                ..
            }
        ));
        let plain = headers("/ws?room=room-42", false, &[]);
        let v = on_request_headers(&s, &MemStore::default(), &mut m, &plain, cx());
        assert!(matches!(v, HeadersVerdict::Proceed { session: None, .. }));
    }

    #[test]
    fn origin_and_connection_bucket_answer_locally() {
        let s = settings(
            r#", "limits": {"connections": {"rate": 1, "per": "1h", "burst": 2}}"#,
            "",
        );
        let store = MemStore::default();
        let mut m = Counters::default();
        let bad = headers("/ws", true, &[("origin", "https://evil")]);
        // The last `origin` wins in this list; put the bad one first.
        let bad: Vec<_> = bad.into_iter().rev().collect();
        let v = on_request_headers(&s, &store, &mut m, &bad, cx());
        assert!(
            matches!(v, HeadersVerdict::Respond { status: 403, .. }),
            "{v:?}"
        );
        let ok = headers("/ws", true, &[]);
        for _ in 0..2 {
            let v = on_request_headers(&s, &store, &mut m, &ok, cx());
            assert!(matches!(v, HeadersVerdict::Proceed { .. }));
        }
        let v = on_request_headers(&s, &store, &mut m, &ok, cx());
        let HeadersVerdict::Respond {
            status: 429,
            headers,
            ..
        } = v
        else {
            panic!("{v:?}");
        };
        let get = |n: &str| {
            headers
                .iter()
                .find(|(k, _)| k == n)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(get("retry-after"), Some("3600"));
        assert_eq!(get("x-ratelimit-limit"), Some("2"));
        assert_eq!(get("x-ratelimit-remaining"), Some("0"));
        assert_eq!(get("x-ratelimit-reset"), Some("3600"));
        assert_eq!(
            m.0.get("sigmesh.rate_limited_total.route.sig.limit.connections"),
            Some(&1)
        );
    }

    #[test]
    fn credentials_endpoint() {
        let s = settings("", r#", "turn": {"secret": "s", "uris": ["turn:t"]}"#);
        let store = MemStore::default();
        let mut m = Counters::default();
        let v = on_request_headers(
            &s,
            &store,
            &mut m,
            &headers("/turn-credentials?user=al", false, &[]),
            cx(),
        );
        let HeadersVerdict::Respond {
            status: 200, body, ..
        } = v
        else {
            panic!("{v:?}");
        };
        let j: serde_json::Value = serde_json::from_str(&body).expect("json");
        assert_eq!(j["username"], "1700003600:al");
        assert_eq!(
            j["password"],
            sigmesh_core::credentials::password("s", "1700003600:al")
        );
        let v = on_request_headers(
            &s,
            &store,
            &mut m,
            &headers("/turn-credentials", false, &[]),
            cx(),
        );
        assert!(matches!(v, HeadersVerdict::Respond { status: 400, .. }));
        let mut post = headers("/turn-credentials?user=a", false, &[]);
        post[0].1 = "POST".into();
        let v = on_request_headers(&s, &store, &mut m, &post, cx());
        assert!(matches!(v, HeadersVerdict::Respond { status: 405, .. }));
    }

    #[test]
    fn body_chunks_cut_over_the_message_bucket_and_close_oversize() {
        let s = settings(
            r#", "limits": {"messages": {"rate": 1, "per": "1h", "burst": 1}}"#,
            "",
        );
        let store = MemStore::default();
        let mut m = Counters::default();
        let v = on_request_headers(&s, &store, &mut m, &headers("/ws?room=r", true, &[]), cx());
        let HeadersVerdict::Proceed {
            session: Some(mut session),
            ..
        } = v
        else {
            panic!("{v:?}");
        };
        session.on_response_headers(Some(101), &mut m);
        let a = frame(1, true, br#"{"type":"offer"}"#, Some([1, 2, 3, 4]));
        let b = frame(1, true, br#"{"type":"answer"}"#, Some([1, 2, 3, 4]));
        let chunk = [a.clone(), b].concat();
        let p = session.on_request_body(&s, &store, &mut m, &chunk, cx().now);
        assert_eq!(p.forward, Forward::Bytes(&a));
        let big = frame(2, true, &[0; 65], Some([1, 2, 3, 4]));
        let p = session.on_request_body(&s, &store, &mut m, &big, cx().now);
        assert_eq!(p.close.map(|c| c.code), Some(1009));
        session.on_end(&mut m);
        let c = |n: &str| m.0.get(n).copied();
        let r = format!("route.sig.upstream.{}", session.upstream());
        assert_eq!(
            c(&format!(
                "sigmesh.messages_total.{r}.direction.in.type.offer"
            )),
            Some(1)
        );
        assert_eq!(
            c("sigmesh.rate_limited_total.route.sig.limit.messages"),
            Some(1)
        );
        assert_eq!(
            c("sigmesh.rate_limited_total.route.sig.limit.message_size"),
            Some(1)
        );
        assert_eq!(c(&format!("sigmesh.connections_active.{r}")), Some(0));
        assert_eq!(
            c(&format!("sigmesh.connections_total.{r}.outcome.accepted")),
            Some(1)
        );
    }
}
