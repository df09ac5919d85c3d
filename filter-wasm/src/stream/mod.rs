//! One HTTP stream through the filter, host-independent: request headers in, a verdict out;
//! body chunks in, the bytes to forward out. Every decision is core's
//! ([`sigmesh_core::request::decide`], [`sigmesh_core::session::Session`]); this file
//! translates them into proxy-wasm terms and records what they say in Envoy stats.
//!
//! ```text
//! request headers ─► core request phase ─► NoRoute: untouched (Envoy's own routes)
//!                                       ─► Respond: local reply (403, 429, credentials, ...)
//!                                       ─► Upgrade / Forward: split header + route cache cleared
//! request body    ─► core session: client bytes   ─► keep | cut | close
//! response body   ─► core session: upstream bytes ─► counters
//! ```

use std::time::Duration;

use sigmesh_core::frame::Pushed;
use sigmesh_core::frame::deflate::{self, Accepted};
use sigmesh_core::label::{CloseClass, MessageDirection, Outcome, UpstreamErrorKind};
use sigmesh_core::request::{self, Reply, RequestFacts, Verdict};
use sigmesh_core::route::Headers;
use sigmesh_core::session::{self, Event, Observer, SessionEnv, SessionOptions};

use crate::metrics::{Metrics, Sink};
use crate::settings::Settings;
use crate::shared::{SharedBuckets, Store};

pub use sigmesh_core::request::CREDENTIALS_RATE;

/// Request headers as the host gives them (names lower-case, pseudo-headers included).
pub struct HeaderList<'a>(pub &'a [(String, String)]);

impl Headers for HeaderList<'_> {
    fn get(&self, name: &str) -> Option<&str> {
        Headers::get(self.0, name)
    }

    fn any_value(&self, name: &str, each: &mut dyn FnMut(&str) -> bool) -> bool {
        Headers::any_value(self.0, name, each)
    }
}

/// What the host tells the filter about a request, besides its headers.
#[derive(Debug, Clone, Copy)]
pub struct HostFacts<'a> {
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
        /// The session of a WebSocket upgrade.
        session: Option<Box<FilterSession>>,
    },
}

/// What to do with the upstream's answer to an upgrade.
#[derive(Debug, PartialEq, Eq)]
pub enum ResponseVerdict {
    /// Pass it on.
    Continue,
    /// Pass it on with this `Sec-WebSocket-Extensions` for the client.
    SetExtensions(String),
    /// Not an upgrade: counted as an upstream error; the answer goes on as it is.
    Failed,
    /// An upgrade sigmesh could not read, with why: answer 502 instead.
    Refuse(String),
}

/// Decides on request headers: core's request phase, translated.
pub fn on_request_headers(
    s: &Settings,
    store: &dyn Store,
    sink: &mut dyn Sink,
    headers: &[(String, String)],
    cx: HostFacts<'_>,
) -> HeadersVerdict {
    let h = HeaderList(headers);
    let full_path = h.get(":path").unwrap_or("/");
    let (path, query) = match full_path.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (full_path, None),
    };
    let facts = RequestFacts {
        method: h.get(":method").unwrap_or("GET"),
        protocol: h.get(":protocol"),
        host: h.get(":authority").or_else(|| h.get("host")),
        path,
        query,
        headers: &h,
        client_ip: cx.client_ip,
        now: cx.now,
        unix_secs: cx.now.as_secs(),
        random: cx.random,
        draining: false,
    };
    s.confirm_seed(store);
    let buckets = s.buckets(store);
    let c = &s.compiled;
    let mut m = Metrics { sink };
    match request::decide(c, &facts, &buckets, c, &request::Uncounted) {
        // Envoy's own routes take it.
        Verdict::NoRoute => HeadersVerdict::Pass,
        Verdict::Respond(reply) => respond(s, &mut m, reply),
        // Refused at configuration (ext_authz does it in Envoy); fail closed all the same.
        Verdict::AskCredentialsAuth(check) => respond(
            s,
            &mut m,
            check.answer(request::AuthAnswer::Unreachable, cx.now.as_secs()),
        ),
        // Refused at configuration (`Capabilities::filter`); never reached.
        Verdict::AwaitFirstMessage(_) => HeadersVerdict::Pass,
        Verdict::Forward(f) => HeadersVerdict::Proceed {
            set: f.edits.set,
            remove: f.edits.remove,
            reroute: true,
            session: None,
        },
        Verdict::Upgrade(u) => {
            let route = &c.routes[u.route].route;
            let session = FilterSession {
                route: u.route,
                route_name: route.name.clone(),
                upstream: route.upstreams[u.upstream].name.clone(),
                core: session::Session::new(
                    route,
                    SessionOptions {
                        sticky_room: u.room,
                        deflate: u.deflate,
                        // Known at the answer ([`FilterSession::on_response_headers`]).
                        inflate: false,
                        mask_key: cx.random.to_le_bytes(),
                        now: cx.now,
                        read_dropped: false,
                    },
                ),
                names: Names::default(),
                offered: u.deflate,
                open: false,
                counted: false,
                first_close: None,
            };
            HeadersVerdict::Proceed {
                set: u.edits.set,
                remove: u.edits.remove,
                reroute: true,
                session: Some(Box::new(session)),
            }
        }
    }
}

/// A local reply, counted (the one place the filter turns a refusal into metrics).
fn respond(s: &Settings, m: &mut Metrics<'_>, reply: Reply) -> HeadersVerdict {
    let route = reply
        .route
        .and_then(|i| s.compiled.routes.get(i))
        .map_or("", |r| r.route.name.as_str());
    if let Some(limit) = reply.limit() {
        m.rate_limited(route, limit);
    }
    if let Some(outcome) = reply.outcome() {
        m.connection(route, "", outcome);
    }
    let mut headers: Vec<(String, String)> = reply
        .headers
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
    headers.push(("content-type".into(), reply.content_type.into()));
    HeadersVerdict::Respond {
        status: u32::from(reply.status),
        headers,
        body: reply.body,
    }
}

// === impl FilterSession ===

/// One upgraded stream: core's session, and the stat names it has resolved.
#[derive(Debug)]
pub struct FilterSession {
    route: usize,
    route_name: String,
    upstream: String,
    core: session::Session,
    /// Stat names of this session's message counters, built once each.
    names: Names,
    /// `permessage-deflate` went on to the upstream (`filter.permessage_deflate: keep`,
    /// rewritten without a context either way).
    offered: bool,
    /// The upgrade succeeded (101, or 200 to an extended CONNECT).
    open: bool,
    /// Counted in `connections_active`.
    counted: bool,
    /// The session's first close (`Some(None)`: a close without a code), for
    /// `sigmesh_session_closes_total`.
    first_close: Option<Option<u16>>,
}

impl FilterSession {
    /// The upstream the split picked.
    pub fn upstream(&self) -> &str {
        &self.upstream
    }

    /// The route's name.
    pub fn route(&self) -> &str {
        &self.route_name
    }

    /// The response headers arrived with `status` and `Sec-WebSocket-Extensions`.
    ///
    /// With an offer kept, the answer decides how the session reads: no extension, nothing
    /// compressed; `permessage-deflate` without a context either way, compressed text is
    /// inflated to be read ([`sigmesh_core::frame::deflate::accepted`]); anything else (an
    /// upstream that keeps its context, an extension not offered) would leave compressed
    /// messages unread past every bucket, so the upgrade is refused (502): fail closed.
    pub fn on_response_headers(
        &mut self,
        status: Option<u32>,
        extensions: Option<&str>,
        sink: &mut dyn Sink,
    ) -> ResponseVerdict {
        let mut m = Metrics { sink };
        let (route, upstream) = (&self.route_name, &self.upstream);
        let upgraded = matches!(status, Some(101) | Some(200));
        let verdict = match (upgraded, self.offered) {
            (false, _) => ResponseVerdict::Failed,
            (true, false) => ResponseVerdict::Continue,
            (true, true) => match deflate::accepted(extensions) {
                Accepted::None => {
                    self.core.negotiated(false, false);
                    ResponseVerdict::Continue
                }
                Accepted::ReadThrough(to_client) => {
                    self.core.negotiated(true, true);
                    if extensions.map(str::trim) == Some(to_client.as_str()) {
                        ResponseVerdict::Continue
                    } else {
                        ResponseVerdict::SetExtensions(to_client)
                    }
                }
                Accepted::Refused(why) => ResponseVerdict::Refuse(why),
            },
        };
        if matches!(
            verdict,
            ResponseVerdict::Failed | ResponseVerdict::Refuse(_)
        ) {
            m.connection(route, upstream, Outcome::UpstreamError);
            m.upstream_error(route, upstream, UpstreamErrorKind::Handshake);
        } else {
            self.open = true;
            self.counted = true;
            m.connection(route, upstream, Outcome::Accepted);
            m.active(route, upstream, 1);
        }
        verdict
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
        self.push(Way::FromClient, (s, store, sink), chunk, now)
    }

    /// A chunk of upstream bytes; returns what to forward.
    pub fn on_response_body<'s>(
        &'s mut self,
        s: &Settings,
        store: &dyn Store,
        sink: &mut dyn Sink,
        chunk: &[u8],
        now: Duration,
    ) -> Pushed<'s> {
        self.push(Way::FromUpstream, (s, store, sink), chunk, now)
    }

    /// One chunk of either way through core's session, recording its events.
    fn push<'s>(
        &'s mut self,
        way: Way,
        (s, store, sink): (&Settings, &dyn Store, &mut dyn Sink),
        chunk: &[u8],
        now: Duration,
    ) -> Pushed<'s> {
        let buckets = s.buckets(store);
        let env = SessionEnv {
            route: &s.compiled.routes[self.route].route,
            route_index: self.route,
            buckets: &buckets,
            now,
        };
        let mut obs = Record {
            m: Metrics { sink },
            names: &mut self.names,
            route: &self.route_name,
            upstream: &self.upstream,
            first_close: &mut self.first_close,
        };
        match way {
            Way::FromClient => self.core.client_bytes(chunk, &env, &mut obs),
            Way::FromUpstream => self.core.upstream_bytes(chunk, &env, &mut obs),
        }
    }

    /// The stream is over.
    pub fn on_end(&mut self, sink: &mut dyn Sink) {
        if std::mem::take(&mut self.counted) {
            let mut m = Metrics { sink };
            m.active(&self.route_name, &self.upstream, -1);
            // A close without a code is what a browser's `ws.close()` sends: clean.
            let class = match self.first_close {
                None => CloseClass::NoClose,
                Some(code) => CloseClass::of(Some(code.unwrap_or(1005))),
            };
            m.session_closed(&self.route_name, &self.upstream, class);
        }
    }

    /// Whether the upgrade succeeded.
    pub fn is_open(&self) -> bool {
        self.open
    }
}

impl Settings {
    /// The bucket store over the host's shared data.
    pub fn buckets<'a>(&'a self, store: &'a dyn Store) -> SharedBuckets<'a> {
        SharedBuckets {
            store,
            compiled: &self.compiled,
            slots: self.filter.bucket_slots,
            seed: self.seed.get(),
        }
    }
}

/// Which way a body chunk goes.
#[derive(Debug, Clone, Copy)]
enum Way {
    FromClient,
    FromUpstream,
}

/// `sigmesh.messages_total` stat names by (direction, type), built on first use.
#[derive(Debug, Default)]
struct Names(Vec<(MessageDirection, &'static str, String)>);

impl Names {
    fn message(
        &mut self,
        route: &str,
        upstream: &str,
        dir: MessageDirection,
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
                        ("direction", dir.as_str()),
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

/// A session's events as Envoy stats (the one place the filter records them).
struct Record<'a> {
    m: Metrics<'a>,
    names: &'a mut Names,
    route: &'a str,
    upstream: &'a str,
    first_close: &'a mut Option<Option<u16>>,
}

impl Observer for Record<'_> {
    fn event(&mut self, e: Event<'_>) {
        let (route, upstream) = (self.route, self.upstream);
        match e {
            Event::Message {
                direction,
                kind,
                forwarded: true,
                ..
            } => {
                let name = self
                    .names
                    .message(route, upstream, direction, kind.as_str());
                self.m.sink.counter(name, 1);
            }
            Event::Candidates {
                direction: MessageDirection::In,
                kind,
                protocol,
                count,
            } => self.m.ice(route, kind, protocol, count),
            Event::CallSetup { took, .. } => self.m.call_setup(
                route,
                upstream,
                u64::try_from(took.as_millis()).unwrap_or(u64::MAX),
            ),
            Event::Limited(limit) => self.m.rate_limited(route, limit),
            Event::UpstreamError(kind) => self.m.upstream_error(route, upstream, kind),
            Event::Closed { code, .. } => {
                self.first_close.get_or_insert(code);
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests;
