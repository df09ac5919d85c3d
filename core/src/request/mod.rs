//! The request phase: what a front end knows about a request in ([`RequestFacts`]), one
//! [`Verdict`] out. Both front ends call [`decide`] and only translate its verdict: the
//! standalone proxy into a hyper response, an upgrade or a forwarded request; the Envoy filter
//! into a local reply or header changes.
//!
//! ## The order of checks (each can answer on its own)
//! 1. **draining** (the proxy after SIGTERM) — 503 with `connection: close`;
//! 2. **TURN credentials path** (`turn.credentials_path`, routed or not) — 405 for a method
//!    other than GET/HEAD; then the matching route's connection bucket when it has one, else a
//!    bucket per client IP ([`CREDENTIALS_RATE`]) — 429; then, with `credentials_auth`,
//!    [`Verdict::AskCredentialsAuth`] (the app's auth endpoint names the user: 200, or 401/403
//!    passed on, 502/504 when it fails), else 200 with the credential for `?user=` as JSON, or
//!    400 for a bad user;
//! 3. **route** (first match) — [`Verdict::NoRoute`]: the proxy answers 404, the filter leaves
//!    the request to Envoy's own routes;
//! 4. on a `websocket:` route, a **WebSocket upgrade** (HTTP/1.1 `Upgrade: websocket` with
//!    `Connection: upgrade`, or HTTP/2 extended CONNECT with `:protocol: websocket`):
//!    the HTTP/1.1 handshake's form (GET 405, `Sec-WebSocket-Key` 400, version 13 426), then
//!    the **origin** — 403;
//! 5. the route's **connection bucket** (`limits.connections`, upgrades and plain requests
//!    alike) — 429 with `retry-after` and `x-ratelimit-*`;
//! 6. the **split**: the override header naming an upstream, else the sticky key's bucket,
//!    else a random bucket ([`crate::split`]);
//! 7. the verdict: [`Verdict::Upgrade`], [`Verdict::AwaitFirstMessage`] (`sticky: message:`: the
//!    upstream is picked from the first message, [`AwaitFirst::pick`]), or [`Verdict::Forward`]
//!    for a plain request, split the same way.
//!
//! Buckets are reached through [`BucketStore`] (the proxy: in memory; the filter: proxy-wasm
//! shared data), live weights through [`Weights`] (the proxy's `PUT /routes/NAME/weights`).

use std::time::Duration;

use crate::bucket::BucketVerdict as Taken;
use crate::compiled::{Compiled, DeflatePolicy};
use std::net::IpAddr;

use crate::config::{Compression, Rate, Route, SessionKey, Sticky, WebSocket};
use crate::frame::strip_extension;
use crate::label::LimitKind;
use crate::route::{Headers, RequestHead, normalize_path};
use crate::signal::{pointer_value, sticky_key};
use crate::split::{Pick, Reason, Splitter};

mod global;
mod reply;
mod turn_credentials;

pub use global::{Admission, Global, GlobalPlace, GlobalTake};

pub use reply::{
    HeaderEdits, MAX_KEY_BYTES, MAX_SHOWN_BYTES, RateLimited, Refusal, Reply, bucket_key,
    connection_key, shown,
};
pub use turn_credentials::{AUTH_FORWARDED, AuthAnswer, AuthCheck, MAX_AUTH_HEADER};
use turn_credentials::{Credentials, credentials};

/// The default bucket of the credentials endpoint per client IP, when no route lends one.
pub const CREDENTIALS_RATE: Rate = Rate {
    rate: 10,
    per: Duration::from_secs(1),
    burst: 20,
};

/// A bucket set the request and session phases take tokens from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Bucket {
    /// `limits.connections` of route `route` (an index into [`Compiled::routes`]).
    Connections {
        /// Route index.
        route: usize,
    },
    /// `limits.rooms` of route `route`.
    Rooms {
        /// Route index.
        route: usize,
    },
    /// The credentials endpoint's own per-IP buckets ([`CREDENTIALS_RATE`]).
    Credentials,
}

/// Where buckets live: the front end's store (in memory, shared data, later Redis).
pub trait BucketStore {
    /// Takes one token from `key`'s bucket in `bucket`, refilled at `rate`, at `now`.
    fn take(&self, bucket: Bucket, key: &str, rate: &Rate, now: Duration) -> Taken;
}

/// The weights in force per route (the config's, or live ones set through the admin API).
pub trait Weights {
    /// Calls `f` with the splitter of route `route`.
    fn with_splitter(&self, route: usize, f: &mut dyn FnMut(&Splitter));
}

impl Weights for Compiled {
    fn with_splitter(&self, route: usize, f: &mut dyn FnMut(&Splitter)) {
        if let Some(r) = self.routes.get(route) {
            f(&r.splitter);
        }
    }
}

/// A live-session count a WebSocket upgrade takes a place in.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Cap {
    /// `limits.max_sessions`: every session of the process.
    Process,
    /// `limits.max_sessions_per_ip`: the sessions of one client IP.
    ClientIp,
    /// `routes[].limits.sessions` of the route with this name (counts survive reloads).
    Route(String),
}

/// A place taken in a count; the front end gives it back when the session ends (or never
/// opens).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Lease {
    /// The count.
    pub cap: Cap,
    /// Its key (empty for [`Cap::Process`]).
    pub key: String,
}

/// Where live-session counts live (the proxy: in memory; the fleet issue adds Redis).
pub trait SessionCounts {
    /// Takes a place for `key` in `cap` if fewer than `max` are taken; whether it did.
    fn acquire(&self, cap: &Cap, key: &str, max: u32) -> bool;
    /// Gives a place back.
    fn release(&self, cap: &Cap, key: &str);
}

/// For a front end without session caps (the Envoy filter: refused at compile time).
#[derive(Debug, Clone, Copy, Default)]
pub struct Uncounted;

impl SessionCounts for Uncounted {
    fn acquire(&self, _: &Cap, _: &str, _: u32) -> bool {
        true
    }
    fn release(&self, _: &Cap, _: &str) {}
}

/// What a front end knows about a request.
pub struct RequestFacts<'a, H: Headers + ?Sized> {
    /// `GET`, `CONNECT`, ...
    pub method: &'a str,
    /// HTTP/2 extended CONNECT's `:protocol`.
    pub protocol: Option<&'a str>,
    /// `Host` or `:authority`.
    pub host: Option<&'a str>,
    /// The path, without the query.
    pub path: &'a str,
    /// The raw query, without `?`.
    pub query: Option<&'a str>,
    /// The request headers.
    pub headers: &'a H,
    /// The client's IP address, as text.
    pub client_ip: &'a str,
    /// The buckets' clock (any fixed origin, monotonic).
    pub now: Duration,
    /// Seconds since the Unix epoch (credential expiry).
    pub unix_secs: u64,
    /// A random number (a split without a key).
    pub random: u32,
    /// The front end is draining.
    pub draining: bool,
}

/// A WebSocket upgrade to relay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upgrade {
    /// Route index.
    pub route: usize,
    /// Upstream index in the route.
    pub upstream: usize,
    /// Why that upstream.
    pub reason: Reason,
    /// The sticky key (`query:`, `header:`, `cookie:`): the session's room until a message
    /// names one.
    pub room: Option<String>,
    /// What to change in the upstream request: the split header set to the upstream's name
    /// (Envoy routes on it), a compression offer taken out.
    pub edits: HeaderEdits,
    /// `permessage-deflate` may be negotiated end to end (the readers must know).
    pub deflate: bool,
    /// The places the session holds in the live-session counts, to give back when it ends.
    pub leases: Vec<Lease>,
    /// What the fleet's store must allow first (`scope: global`).
    pub global: Global,
}

/// A WebSocket upgrade whose upstream is picked from the client's first message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AwaitFirst {
    /// Route index.
    pub route: usize,
    /// The override header's value, if any (it still wins over the message's key).
    pub override_name: Option<String>,
    /// As [`Upgrade::edits`], but for the split header.
    pub edits: HeaderEdits,
    /// As [`Upgrade::deflate`].
    pub deflate: bool,
    /// As [`Upgrade::leases`] (moved to the upgrade by [`AwaitFirst::pick`]).
    pub leases: Vec<Lease>,
    /// As [`Upgrade::global`]: asked before the client's 101.
    pub global: Global,
}

/// A plain HTTP request to forward.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forward {
    /// Route index.
    pub route: usize,
    /// Upstream index in the route.
    pub upstream: usize,
    /// Why that upstream.
    pub reason: Reason,
    /// The split header set to the upstream's name.
    pub edits: HeaderEdits,
    /// The sticky key, if the request has one: what an endpoint is picked by.
    pub room: Option<String>,
    /// As [`Upgrade::global`] (a connection bucket only).
    pub global: Global,
}

/// The verdict on a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// No route matched.
    NoRoute,
    /// Answer locally.
    Respond(Reply),
    /// A TURN credentials request: ask `turn.credentials_auth` first, then answer
    /// [`AuthCheck::answer`].
    AskCredentialsAuth(AuthCheck),
    /// Upgrade, to this upstream.
    Upgrade(Upgrade),
    /// Upgrade the client, then pick from its first message.
    AwaitFirstMessage(AwaitFirst),
    /// Forward as plain HTTP.
    Forward(Forward),
}

/// Decides on a request (see the module docs for the order).
pub fn decide<H: Headers + ?Sized>(
    c: &Compiled,
    req: &RequestFacts<'_, H>,
    buckets: &dyn BucketStore,
    weights: &dyn Weights,
    sessions: &dyn SessionCounts,
) -> Verdict {
    if req.draining {
        return Verdict::Respond(
            Reply::text(503, "draining")
                .header("connection", "close")
                .refusing(Refusal::Draining, None),
        );
    }
    // Routes see the normalised path: `/ws/../admin` is not under `/ws`.
    let path = normalize_path(req.path);
    let head = RequestHead {
        host: req.host,
        path: &path,
        headers: req.headers,
    };
    let index = c.table.find(&head);
    if let Some(turn) = &c.config.turn
        && *path == *turn.credentials_path
    {
        return match credentials(c, turn, req, index, buckets) {
            Credentials::Reply(reply) => Verdict::Respond(reply),
            Credentials::Ask(check) => Verdict::AskCredentialsAuth(check),
        };
    }
    let Some((index, compiled)) = index.and_then(|i| Some((i, c.routes.get(i)?))) else {
        return Verdict::NoRoute;
    };
    let route = &compiled.route;
    let upgrade = route
        .websocket
        .as_ref()
        .filter(|_| is_websocket_upgrade(req));
    if let Some(ws) = upgrade
        && let Some(reply) = check_handshake(ws, req)
    {
        return Verdict::Respond(reply.route_of(index).of_upgrade(true));
    }
    let mut global = Global::default();
    match route.limits.connections.as_ref() {
        Some(l) if l.scope.is_global() => {
            global.bucket = Some(GlobalTake {
                key: connection_key(&l.key, req.client_ip, req.headers),
                rate: l.rate,
            });
        }
        _ => {
            if let Some(reply) = connection_limit(c, index, req, buckets) {
                return Verdict::Respond(reply.of_upgrade(upgrade.is_some()));
            }
        }
    }
    let leases = match upgrade {
        Some(_) => match take_places(c, index, req, sessions, &mut global) {
            Ok(leases) => leases,
            Err(reply) => return Verdict::Respond(reply.of_upgrade(true)),
        },
        None => Vec::new(),
    };
    let override_name = allowed_override(route, req);
    let mut edits = HeaderEdits::default();
    // With `sticky: message:` the client gets its 101 before the upstream is known, so no
    // extension can be agreed end to end: the offer is stripped.
    let policy = match (&route.split.sticky, upgrade.map(|w| w.compression)) {
        (Sticky::Message(_), _) | (_, Some(Compression::Strip)) => DeflatePolicy::Strip,
        _ => c.caps.deflate,
    };
    let deflate = upgrade.is_some() && extension_edits(policy, req.headers, &mut edits);
    if upgrade.is_some()
        && let Sticky::Message(_) = route.split.sticky
    {
        return Verdict::AwaitFirstMessage(AwaitFirst {
            route: index,
            override_name: override_name.map(str::to_owned),
            edits,
            deflate,
            leases,
            global,
        });
    }
    let room = sticky_key(&route.split.sticky, req.query, req.headers);
    let pick = pick(
        weights,
        index,
        override_name,
        room.as_deref().map(str::as_bytes),
        req.random,
    );
    split_header(c, route, pick.index, &mut edits);
    match upgrade {
        Some(_) => Verdict::Upgrade(Upgrade {
            route: index,
            upstream: pick.index,
            reason: pick.reason,
            room,
            edits,
            deflate,
            leases,
            global,
        }),
        None => Verdict::Forward(Forward {
            route: index,
            upstream: pick.index,
            reason: pick.reason,
            edits,
            room,
            global,
        }),
    }
}

impl AwaitFirst {
    /// Picks the upstream once the client's first message has come: `text` is its text (when
    /// it is a text message in UTF-8). The override header still wins; a message without the
    /// key is split at random.
    pub fn pick(
        &mut self,
        c: &Compiled,
        weights: &dyn Weights,
        text: Option<&str>,
        random: u32,
    ) -> Upgrade {
        let route = &c.routes[self.route].route;
        let key = match (&route.split.sticky, text) {
            (Sticky::Message(pointer), Some(t)) => {
                pointer_value(t, pointer).filter(|v| !v.is_empty())
            }
            _ => None,
        };
        let pick = pick(
            weights,
            self.route,
            self.override_name.as_deref(),
            key.as_deref().map(str::as_bytes),
            random,
        );
        let mut edits = self.edits.clone();
        split_header(c, route, pick.index, &mut edits);
        Upgrade {
            route: self.route,
            upstream: pick.index,
            reason: pick.reason,
            // The message's sticky value: the room an endpoint is picked by.
            room: key.map(|k| k.to_string()),
            edits,
            deflate: self.deflate,
            leases: std::mem::take(&mut self.leases),
            global: std::mem::take(&mut self.global),
        }
    }
}

/// The override header's value when this client may use it (`split.override_from`; absent:
/// anyone). Whether it names an upstream of weight above 0 is the splitter's call.
fn allowed_override<'r, H: Headers + ?Sized>(
    route: &Route,
    req: &RequestFacts<'r, H>,
) -> Option<&'r str> {
    let value = req.headers.get(route.override_header())?;
    match &route.split.override_from {
        None => Some(value),
        Some(from) => {
            let ip = req.client_ip.parse::<IpAddr>().ok()?;
            crate::config::Cidr::any_contains(from, ip).then_some(value)
        }
    }
}

/// The split header on the upstream request: the picked upstream's name where the host routes
/// on it (Envoy), else removed; never the client's own value.
fn split_header(c: &Compiled, route: &Route, upstream: usize, edits: &mut HeaderEdits) {
    let name = route.override_header().to_owned();
    if c.caps.routes_by_header {
        edits
            .set
            .push((name, route.upstreams[upstream].name.clone()));
    } else {
        edits.remove.push(name);
    }
}

fn pick(
    weights: &dyn Weights,
    route: usize,
    override_name: Option<&str>,
    key: Option<&[u8]>,
    random: u32,
) -> Pick {
    let mut picked = Pick {
        index: 0,
        reason: Reason::Random,
    };
    weights.with_splitter(route, &mut |s| picked = s.pick(override_name, key, random));
    picked
}

/// The live-session caps of an upgrade, in order: the process (503), the client IP (429), the
/// route's `limits.sessions` (429). A place is taken in each; when one is full, those taken
/// are given back. A `scope: global` route cap is left in `global` for the fleet's store.
fn take_places<H: Headers + ?Sized>(
    c: &Compiled,
    route: usize,
    req: &RequestFacts<'_, H>,
    sessions: &dyn SessionCounts,
    global: &mut Global,
) -> Result<Vec<Lease>, Reply> {
    let l = &c.config.limits;
    let r = &c.routes[route].route;
    let mut wanted: Vec<(Cap, String, u32, u16)> = Vec::new();
    if let Some(max) = l.max_sessions {
        wanted.push((Cap::Process, String::new(), max, 503));
    }
    if let Some(max) = l.max_sessions_per_ip {
        wanted.push((Cap::ClientIp, req.client_ip.to_owned(), max, 429));
    }
    if let Some(cap) = &r.limits.sessions {
        let key = match &cap.key {
            SessionKey::Room => sticky_key(&r.split.sticky, req.query, req.headers),
            SessionKey::ClientIp => Some(req.client_ip.to_owned()),
            SessionKey::Header(name) => req.headers.get(name).map(str::to_owned),
        };
        // Without the key (no room in the request) the cap has nothing to count.
        if let Some(key) = key.as_deref()
            && cap.scope.is_global()
        {
            global.place = Some(GlobalPlace {
                key: bucket_key(key).into_owned(),
                max: cap.max,
            });
        } else if let Some(key) = key {
            wanted.push((
                Cap::Route(r.name.clone()),
                bucket_key(&key).into_owned(),
                cap.max,
                429,
            ));
        }
    }
    let mut leases: Vec<Lease> = Vec::with_capacity(wanted.len());
    for (cap, key, max, status) in wanted {
        if !sessions.acquire(&cap, &key, max) {
            for l in &leases {
                sessions.release(&l.cap, &l.key);
            }
            return Err(Reply::text(status, "too many sessions")
                .header("retry-after", "1")
                .refusing(Refusal::Limited(LimitKind::Sessions), Some(route)));
        }
        leases.push(Lease { cap, key });
    }
    Ok(leases)
}

/// Who the client is, for limits and logs: the TCP peer, unless it is a proxy of
/// `trust_forwarded_from`; then the last `x-forwarded-for` address (right to left) that is not
/// one of those proxies. A header from anyone else is not believed (it is replaced upstream).
pub fn client_address(
    peer: IpAddr,
    forwarded_for: Option<&str>,
    trusted: &[crate::config::Cidr],
) -> IpAddr {
    let trusts = |ip: IpAddr| crate::config::Cidr::any_contains(trusted, ip);
    if !trusts(peer) {
        return peer;
    }
    let Some(xff) = forwarded_for else {
        return peer;
    };
    let mut client = peer;
    for hop in xff.rsplit(',').take(32) {
        match hop.trim().parse::<IpAddr>() {
            Ok(ip) if trusts(ip) => client = ip,
            Ok(ip) => return ip,
            Err(_) => return client,
        }
    }
    client
}

/// HTTP/1.1 `Upgrade: websocket` with `Connection: upgrade`, or HTTP/2 extended CONNECT with
/// `:protocol: websocket`.
pub fn is_websocket_upgrade<H: Headers + ?Sized>(req: &RequestFacts<'_, H>) -> bool {
    let h1 = has_token(req.headers, "upgrade", "websocket")
        && has_token(req.headers, "connection", "upgrade");
    let h2 = req.method.eq_ignore_ascii_case("CONNECT")
        && req
            .protocol
            .or_else(|| req.headers.get(":protocol"))
            .is_some_and(|p| p.eq_ignore_ascii_case("websocket"));
    h1 || h2
}

/// Whether a comma-separated header (any of its values) carries `token`, case-insensitively.
pub fn has_token<H: Headers + ?Sized>(headers: &H, name: &str, token: &str) -> bool {
    headers.any_value(name, &mut |v| {
        v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token))
    })
}

/// The form of an HTTP/1.1 handshake (RFC 6455 §4.2.1), then the origin.
fn check_handshake<H: Headers + ?Sized>(
    ws: &WebSocket,
    req: &RequestFacts<'_, H>,
) -> Option<Reply> {
    let extended_connect = req.method.eq_ignore_ascii_case("CONNECT");
    if !extended_connect {
        if req.headers.get("sec-websocket-key").is_none() {
            return Some(
                Reply::text(400, "missing sec-websocket-key").refusing(Refusal::Handshake, None),
            );
        }
        if req.headers.get("sec-websocket-version") != Some("13") {
            return Some(
                Reply::text(426, "unsupported websocket version")
                    .header("sec-websocket-version", "13")
                    .refusing(Refusal::Handshake, None),
            );
        }
        if req.method != "GET" {
            return Some(
                Reply::text(405, "websocket upgrade needs GET").refusing(Refusal::Handshake, None),
            );
        }
    }
    if !origin_allowed(ws, req.headers.get("origin")) {
        return Some(Reply::text(403, "origin not allowed").refusing(Refusal::Forbidden, None));
    }
    None
}

/// Whether a handshake's `Origin` passes `allowed_origins` (empty: any origin; else an exact,
/// case-insensitive match, and a request without an `Origin` fails).
pub fn origin_allowed(ws: &WebSocket, origin: Option<&str>) -> bool {
    ws.allowed_origins.is_empty()
        || origin.is_some_and(|o| ws.allowed_origins.iter().any(|a| a.eq_ignore_ascii_case(o)))
}

/// Applies `policy` to the client's `permessage-deflate` offer; returns whether it stays.
fn extension_edits<H: Headers + ?Sized>(
    policy: DeflatePolicy,
    headers: &H,
    edits: &mut HeaderEdits,
) -> bool {
    let Some(offer) = headers.get("sec-websocket-extensions") else {
        return false;
    };
    let rest = strip_extension(offer, "permessage-deflate");
    if rest.as_deref() == Some(offer) {
        return false; // not offered
    }
    match policy {
        DeflatePolicy::ReadThrough => match crate::frame::deflate::offer_without_context(offer) {
            Some(rewritten) => {
                edits
                    .set
                    .push(("sec-websocket-extensions".into(), rewritten));
                true
            }
            None => false,
        },
        DeflatePolicy::Strip => {
            match rest {
                Some(rest) => edits.set.push(("sec-websocket-extensions".into(), rest)),
                None => edits.remove.push("sec-websocket-extensions".into()),
            }
            false
        }
    }
}

/// The route's connection bucket; `Some(429)` when it is empty.
pub(super) fn connection_limit<H: Headers + ?Sized>(
    c: &Compiled,
    route: usize,
    req: &RequestFacts<'_, H>,
    buckets: &dyn BucketStore,
) -> Option<Reply> {
    let limit = c.routes.get(route)?.route.limits.connections.as_ref()?;
    let key = connection_key(&limit.key, req.client_ip, req.headers);
    match buckets.take(Bucket::Connections { route }, &key, &limit.rate, req.now) {
        Taken::Allow { .. } => None,
        Taken::Limited { retry_after } => Some(
            Reply::too_many_requests(&limit.rate, retry_after)
                .refusing(Refusal::Limited(LimitKind::Connections), Some(route)),
        ),
    }
}
