//! The configuration schema of `../shared/design/contract.md`, validated.
//!
//! [`load`] takes the bytes of a YAML (or JSON) file and returns either a [`Config`] whose every
//! field has been checked, or *every* error found, each with its key path
//! (`routes[1].upstreams[0].weight`) and, where the parser can tell, its line.
//!
//! The types in this module are the validated form the front ends use: durations are
//! [`Duration`]s, addresses are parsed, sticky keys are an enum. They serialize back to the
//! contract's YAML/JSON shape (for the admin API's `/config`, with secrets redacted by
//! [`Config::redacted`]).

mod load;
mod tree;
mod validate;

pub use load::{ConfigError, ConfigErrors, load, load_filter};

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use serde::Serialize;

/// A whole, validated configuration file.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Config {
    /// Where HTTP and WebSocket traffic is accepted. Default `0.0.0.0:8080`.
    pub listen: SocketAddr,
    /// Where the admin API and `/metrics` are served. Absent: no admin listener.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin: Option<SocketAddr>,
    /// Graceful shutdown.
    pub shutdown: Shutdown,
    /// Routes, first match wins.
    pub routes: Vec<Route>,
    /// TURN REST credentials and the optional TURN relay.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub turn: Option<Turn>,
    /// OpenTelemetry export.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tracing: Option<Tracing>,
    /// `admin_auth:`: a bearer token that every admin path but `/healthz` and `/readyz` needs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin_auth: Option<AdminAuth>,
    /// Top-level `limits:`: process-wide session caps.
    #[serde(skip_serializing_if = "is_default")]
    pub limits: ProcessLimits,
    /// `trust_forwarded_from:`: the proxies in front whose `x-forwarded-for` is believed (the
    /// client is the last address they did not add); from anyone else it is replaced.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub trust_forwarded_from: Vec<Cidr>,
    /// `admin_hosts:`: `Host` names the admin listener answers, besides IP literals and
    /// `localhost` (DNS rebinding: a browser page cannot reach it through a name of its own).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub admin_hosts: Vec<String>,
    /// `tls:`: present, `listen` speaks TLS only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<Tls>,
    /// `cluster:`: state shared by every replica (`scope: global` limits).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<Cluster>,
}

/// `cluster:`: where replicas share `scope: global` buckets and session counts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Cluster {
    /// `redis://[user:pass@]host:port/db`, `rediss://…` (TLS) or `redis+unix:///path`.
    pub redis: String,
    /// The most any decision waits for Redis. Default `50ms`.
    #[serde(with = "duration_str")]
    pub timeout: Duration,
    /// What a decision is when Redis fails or is slower than `timeout`. Default `allow`.
    pub on_error: OnClusterError,
    /// How long a replica's place in a global session count lives without a refresh (a dead
    /// replica's places are gone after this). Default `15s`; refreshed every third of it.
    #[serde(with = "duration_str")]
    pub lease: Duration,
    /// Prefix of every key sigmesh writes (replicas of one fleet share it). Default `sigmesh:`.
    pub key_prefix: String,
}

/// `cluster.on_error`
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OnClusterError {
    /// Fail open: the request or message goes through (counted).
    #[default]
    Allow,
    /// Fail closed: refused (503 for a request; a message is dropped or closes the session
    /// as `on_exceed` says).
    Deny,
}

/// Where a limit's state lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// In this process (or this Envoy).
    #[default]
    Local,
    /// In `cluster.redis`, shared by every replica.
    Global,
}

impl Scope {
    /// `true` for [`Scope::Global`].
    pub fn is_global(self) -> bool {
        self == Scope::Global
    }
}

/// `tls:` on `listen`. Files are read by the front end (core does no I/O).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Tls {
    /// Certificate chains and keys (PEM), chosen by SNI; the first is the default.
    pub certificates: Vec<CertificatePair>,
    /// ALPN protocols offered, in order. Default `[h2, http/1.1]`.
    pub alpn: Vec<Alpn>,
    /// The oldest TLS version accepted. Default `1.2`.
    pub min_version: TlsVersion,
    /// CA certificates (PEM) that client certificates must chain to; present, a client
    /// certificate is required.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_ca: Option<String>,
}

/// `tls.certificates[]`
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CertificatePair {
    /// The certificate chain, leaf first (PEM).
    pub cert: String,
    /// Its private key (PEM: PKCS#8, PKCS#1 RSA or SEC1 EC).
    pub key: String,
}

/// An ALPN protocol sigmesh serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Alpn {
    /// HTTP/2 (with RFC 8441 WebSockets).
    #[serde(rename = "h2")]
    H2,
    /// HTTP/1.1.
    #[serde(rename = "http/1.1")]
    Http11,
}

impl Alpn {
    /// The protocol ID on the wire.
    pub fn id(self) -> &'static [u8] {
        match self {
            Alpn::H2 => b"h2",
            Alpn::Http11 => b"http/1.1",
        }
    }
}

/// `tls.min_version`
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub enum TlsVersion {
    /// TLS 1.2 and 1.3.
    #[default]
    #[serde(rename = "1.2")]
    V1_2,
    /// TLS 1.3 only.
    #[serde(rename = "1.3")]
    V1_3,
}

/// The largest `websocket.max_message_bytes` accepted: a message is held whole only when a
/// room bucket needs its room, and read whole; 16 MiB per client is the most either may cost.
pub const MAX_MESSAGE_BYTES: usize = 16 << 20;

/// `admin_auth:`
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AdminAuth {
    /// A file holding the token (surrounding whitespace ignored); re-read on reload.
    pub token_file: String,
}

/// `shutdown:`
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Shutdown {
    /// On SIGTERM: stop accepting, close sessions with 1001, wait at most this. Default `30s`.
    #[serde(with = "duration_str")]
    pub drain_timeout: Duration,
    /// The close code of a drain: 1001 (going away, the default) or 1012 (service restart).
    pub close_code: u16,
    /// Live sessions are closed evenly, with jitter, over this window (`0s`: all at once).
    #[serde(with = "duration_str")]
    pub spread: Duration,
}

impl Default for Shutdown {
    fn default() -> Self {
        Shutdown {
            drain_timeout: Duration::from_secs(30),
            close_code: 1001,
            spread: Duration::ZERO,
        }
    }
}

/// One entry of `routes:`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Route {
    /// Unique name; appears in metrics, traces and `/sessions`.
    pub name: String,
    /// What requests this route takes.
    #[serde(rename = "match")]
    pub matcher: Match,
    /// Present: terminate the WebSocket and relay message by message. Absent: plain HTTP.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub websocket: Option<WebSocket>,
    /// Token buckets.
    pub limits: Limits,
    /// How a new session picks its upstream.
    pub split: Split,
    /// `affinity`: what pins a client's later requests to an endpoint.
    #[serde(skip_serializing_if = "Affinity::is_none")]
    pub affinity: Affinity,
    /// The upstreams; at least one, names unique within the route.
    pub upstreams: Vec<Upstream>,
    /// `rollout:`: the canary's weight walked through steps, judged against the baseline.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rollout: Option<Rollout>,
}

/// `routes[].rollout`: a canary rollout that judges itself (`crate::rollout`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Rollout {
    /// The upstream the canary is compared with (its weight is `100 - step`).
    pub baseline: String,
    /// The upstream rolled out.
    pub canary: String,
    /// The canary's weight at each step, percent, increasing, each 1 to 100.
    pub steps: Vec<u32>,
    /// Time at each step before it is judged.
    #[serde(with = "duration_str")]
    pub interval: Duration,
    /// Canary sessions that must have ended in a step before it is judged (it waits longer
    /// until they have). Default 20.
    pub min_sessions: u32,
    /// When the canary is worse than the baseline over the same step.
    pub abort_if: AbortIf,
    /// What an abort does besides setting the canary's weight to 0.
    pub on_abort: OnAbort,
}

/// `rollout.abort_if`: canary / baseline ratios over one step; any one over its bound aborts.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct AbortIf {
    /// Closes other than 1000, 1001, 1012 per ended session. Default 2.0.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub abnormal_close_ratio: Option<f64>,
    /// Handshake failures and mid-session upstream failures per session. Default 2.0.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream_error_ratio: Option<f64>,
    /// Offer-to-answer time, 90th percentile. Default 1.5.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub setup_p90_ratio: Option<f64>,
}

/// `rollout.on_abort`
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct OnAbort {
    /// The canary's live sessions are closed with 1012, spread over this. Default `30s`.
    #[serde(with = "duration_str")]
    pub drain: Duration,
}

/// `routes[].match`
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct Match {
    /// Exact path (without the query).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Path prefix. When neither `path` nor `path_prefix` is given the route matches every path.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path_prefix: Option<String>,
    /// Exact host (case-insensitive, port ignored) or a leading wildcard `*.example.com`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Exact header matches; names are lower-case.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
}

/// `routes[].websocket`
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WebSocket {
    /// Largest message (after reassembly) in bytes; larger: close 1009. Default 65536.
    pub max_message_bytes: usize,
    /// No message either way for this long: close 1001. Default `120s`.
    #[serde(with = "duration_str")]
    pub idle_timeout: Duration,
    /// Allowed `Origin` values; empty: any origin.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub allowed_origins: Vec<String>,
    /// JSON pointers into text messages.
    pub signaling: Signaling,
    /// What happens to a client's `permessage-deflate` offer. Default `passthrough`.
    #[serde(skip_serializing_if = "is_default")]
    pub compression: Compression,
    /// When the upstream fails mid-session: `close` (1011, the default) or `reconnect`.
    #[serde(skip_serializing_if = "is_default")]
    pub on_upstream_failure: OnUpstreamFailure,
    /// How `reconnect` goes.
    #[serde(skip_serializing_if = "is_default")]
    pub reconnect: Reconnect,
}

impl Default for WebSocket {
    fn default() -> Self {
        WebSocket {
            max_message_bytes: 65536,
            idle_timeout: Duration::from_secs(120),
            allowed_origins: Vec::new(),
            signaling: Signaling::default(),
            compression: Compression::default(),
            on_upstream_failure: OnUpstreamFailure::default(),
            reconnect: Reconnect::default(),
        }
    }
}

/// `routes[].websocket.on_upstream_failure`
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OnUpstreamFailure {
    /// The client gets 1011.
    #[default]
    Close,
    /// The client's WebSocket stays; sigmesh opens the same handshake to another healthy
    /// endpoint of the upstream and goes on at a message boundary.
    Reconnect,
}

/// `routes[].websocket.reconnect`
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Reconnect {
    /// What is sent to the new endpoint first.
    pub replay: Replay,
    /// Reconnections one session may make; default 1.
    pub attempts: u32,
}

impl Default for Reconnect {
    fn default() -> Self {
        Reconnect {
            replay: Replay::First,
            attempts: 1,
        }
    }
}

/// `routes[].websocket.reconnect.replay`
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Replay {
    /// The session's first client text message (the join), again.
    #[default]
    First,
    /// Nothing.
    None,
}

/// `routes[].websocket.compression`
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// Negotiated end to end when the upstream accepts it, without a context either way, and
    /// read through (each compressed text message inflated to be read).
    #[default]
    Passthrough,
    /// Taken out of the offer: never negotiated.
    Strip,
}

/// `routes[].websocket.signaling`: JSON pointers (RFC 6901) into text messages.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct Signaling {
    /// Where the message type is (`offer`, `answer`, `candidate`, `join`, ...).
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Where the room is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub room: Option<String>,
    /// Where the sending peer's id is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
}

/// `routes[].limits`
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct Limits {
    /// New connections.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connections: Option<ConnectionLimit>,
    /// Messages per connection (client to upstream).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub messages: Option<MessageLimit>,
    /// Messages per room (needs `websocket.signaling.room` or a sticky room key).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rooms: Option<RoomLimit>,
    /// Live sessions per key (`limits.sessions`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sessions: Option<SessionCap>,
}

/// `limits.sessions`: at most `max` live sessions per `key`; over it, 429.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SessionCap {
    /// Most live sessions per key.
    pub max: u32,
    /// What is counted.
    pub key: SessionKey,
    /// Counted in this process, or across the fleet.
    #[serde(skip_serializing_if = "is_default")]
    pub scope: Scope,
}

/// `limits.rooms`
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct RoomLimit {
    /// The bucket of each room.
    #[serde(flatten)]
    pub rate: Rate,
    /// Kept in this process, or across the fleet.
    #[serde(skip_serializing_if = "is_default")]
    pub scope: Scope,
}

/// `limits.sessions.key`
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionKey {
    /// The room, from the sticky key (`query:`, `header:`, `cookie:`).
    Room,
    /// The client's IP address.
    ClientIp,
    /// A request header's value.
    Header(String),
}

/// Top-level `limits:`: process-wide session caps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct ProcessLimits {
    /// Most live sessions in the process; over it, 503 with `retry-after`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_sessions: Option<u32>,
    /// Most live sessions per client IP; over it, 429.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_sessions_per_ip: Option<u32>,
}

/// A token bucket's shape: `rate` tokens every `per`, holding at most `burst`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Rate {
    /// Tokens added every `per`. At least 1.
    pub rate: u32,
    /// The refill period. Default `1s`.
    #[serde(with = "duration_str")]
    pub per: Duration,
    /// Bucket size. Default: `rate`. At least 1.
    pub burst: u32,
}

/// `limits.connections`
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ConnectionLimit {
    /// The bucket.
    #[serde(flatten)]
    pub rate: Rate,
    /// What one bucket is kept for. Default `client_ip`.
    pub key: LimitKey,
    /// Kept in this process, or across the fleet.
    #[serde(skip_serializing_if = "is_default")]
    pub scope: Scope,
}

/// `limits.connections.key`
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LimitKey {
    /// One bucket per client IP address (`client_ip`).
    ClientIp,
    /// One bucket for the whole route (`route`).
    Route,
    /// One bucket per value of a request header (`header:NAME`); name lower-case.
    Header(String),
}

/// `limits.messages`
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MessageLimit {
    /// The bucket.
    #[serde(flatten)]
    pub rate: Rate,
    /// What happens to a message over the limit. Default `drop`.
    pub on_exceed: OnExceed,
}

/// `limits.messages.on_exceed`
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OnExceed {
    /// The message is not forwarded, and counted.
    Drop,
    /// The session is closed with 1008.
    Close,
}

/// `routes[].split`
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct Split {
    /// Where the sticky key comes from. Default `none`.
    pub sticky: Sticky,
    /// A request carrying this header, naming an upstream, goes there whatever the weights.
    /// Default `x-sigmesh-upstream`; lower-case.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub override_header: Option<String>,
    /// Who may use the override header (client addresses); `None`: anyone (a warning at start).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub override_from: Option<Vec<Cidr>>,
}

/// `split.sticky`
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Sticky {
    /// `query:NAME`: a query parameter of the request URI.
    Query(String),
    /// `header:NAME`: a request header (name lower-case).
    Header(String),
    /// `cookie:NAME`: a cookie.
    Cookie(String),
    /// `message:/json/pointer`: a field of the client's first text message.
    Message(String),
    /// `none`: no stickiness; each session is split at random.
    #[default]
    None,
}

/// `routes[].affinity`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Affinity {
    /// Every request and upgrade picks by the split and `balance`.
    #[default]
    None,
    /// Engine.IO / Socket.IO: the `sid` of the handshake answer pins every later request
    /// carrying it (polling and the WebSocket upgrade) to the upstream and endpoint that
    /// issued it.
    EngineIo,
}

impl Affinity {
    /// `none`.
    pub fn is_none(&self) -> bool {
        *self == Affinity::None
    }
}

/// `routes[].upstreams[]`
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Upstream {
    /// Unique within the route; the split's and the override header's name for it.
    pub name: String,
    /// `ws://`, `wss://`, `http://` or `https://` URL. Required by the standalone proxy;
    /// absent in the Wasm filter's config.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Relative weight; default 1. The weights of a route sum to more than 0.
    pub weight: u32,
    /// How a `wss://` or `https://` upstream's certificate is checked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<UpstreamTls>,
    /// Its endpoints, balancing and health (the standalone proxy's pools).
    #[serde(flatten)]
    pub pool: UpstreamPool,
}

/// `endpoints`, `dns`, `balance` and `health_check` of an upstream: where it runs beyond one
/// `url`, how an endpoint is picked, and how an endpoint is judged.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct UpstreamPool {
    /// Static endpoints, instead of `url` (same schemes; each its own host and port).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<String>,
    /// A name whose every A/AAAA record is an endpoint (a headless Service), re-resolved.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dns: Option<String>,
    /// How an endpoint is picked; `None`: `room` when the route's `split.sticky` names a room
    /// source, else `least_sessions`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub balance: Option<Balance>,
    /// Active HTTP checks of every endpoint.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheck>,
}

/// How an upstream picks among its endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    /// Consistent hashing of the room (or sticky key) with bounded loads.
    #[default]
    Room,
    /// The fewest live sessions.
    LeastSessions,
    /// Uniformly at random.
    Random,
}

impl Balance {
    /// The config name's value.
    pub fn parse(s: &str) -> Option<Balance> {
        match s {
            "room" => Some(Balance::Room),
            "least_sessions" => Some(Balance::LeastSessions),
            "random" => Some(Balance::Random),
            _ => None,
        }
    }

    /// The config name.
    pub fn as_str(self) -> &'static str {
        match self {
            Balance::Room => "room",
            Balance::LeastSessions => "least_sessions",
            Balance::Random => "random",
        }
    }
}

/// `health_check:` of an upstream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HealthCheck {
    /// Path of the `GET`; default `/healthz`. A 2xx passes.
    pub path: String,
    /// Between checks of one endpoint; default `5s`.
    #[serde(with = "duration_str")]
    pub interval: Duration,
    /// For one check's answer; default `1s`.
    #[serde(with = "duration_str")]
    pub timeout: Duration,
    /// Consecutive failures that make an endpoint unhealthy; default 2.
    pub unhealthy: u32,
    /// Consecutive passes that make it healthy again; default 2.
    pub healthy: u32,
}

impl Default for HealthCheck {
    fn default() -> Self {
        HealthCheck {
            path: "/healthz".into(),
            interval: Duration::from_secs(5),
            timeout: Duration::from_secs(1),
            unhealthy: 2,
            healthy: 2,
        }
    }
}

/// `routes[].upstreams[].tls`: the CA and name a `wss://`/`https://` upstream is verified with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UpstreamTls {
    /// PEM CA certificates to trust instead of the built-in roots (Mozilla's, webpki-roots).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca: Option<String>,
    /// The name sent as SNI and checked on the certificate; default: the URL's host.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
}

/// `turn:`
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Turn {
    /// TURN REST API shared secret (coturn `use-auth-secret`).
    pub secret: String,
    /// Credential lifetime. Default `1h`.
    #[serde(with = "duration_str")]
    pub ttl: Duration,
    /// TURN URIs handed to clients.
    pub uris: Vec<String>,
    /// Path served on `listen`. Default `/turn-credentials`.
    pub credentials_path: String,
    /// Who may mint credentials: the app's own auth endpoint. `None`: anyone (a warning).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credentials_auth: Option<CredentialsAuth>,
    /// Optional relay in front of a TURN server.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub relay: Option<TurnRelay>,
}

/// `turn.credentials_auth`: before minting a credential, sigmesh sends the client's `Cookie`
/// and `Authorization` to `request`; a 2xx allows, and names the user in `user_header`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CredentialsAuth {
    /// The auth endpoint, `http://HOST[:PORT]/PATH` (GET).
    pub request: String,
    /// Response header naming the user, lower-cased. Default `x-user`.
    pub user_header: String,
    /// The answer's head must arrive within this (connect included). Default `2s`.
    #[serde(with = "duration_str")]
    pub timeout: Duration,
}

/// `turn.relay.quota`
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct RelayQuota {
    /// Most allocations one user may hold at once (live, or asked for and not yet answered);
    /// past it an Allocate is answered 486. `None`: no quota.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allocations_per_user: Option<u32>,
}

/// `turn.relay`
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TurnRelay {
    /// UDP and TCP listen address.
    pub listen: SocketAddr,
    /// The TURN server.
    pub upstream: SocketAddr,
    /// Denied peer ranges, as CIDRs, added to the always-denied ones (loopback, link-local,
    /// unspecified, cloud metadata). `None`: every non-global range is denied.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deny_peers: Option<Vec<Cidr>>,
    /// Peer ranges reachable whatever the deny lists say (coturn's `allowed-peer-ip`): for a
    /// TURN server's own tests on loopback, say. A warning at start.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub allow_peers: Vec<Cidr>,
    /// Per-user quotas.
    #[serde(skip_serializing_if = "is_default")]
    pub quota: RelayQuota,
}

/// An IPv4 or IPv6 network, `10.0.0.0/8`. Host bits are cleared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    /// Network address.
    pub addr: std::net::IpAddr,
    /// Prefix length.
    pub prefix: u8,
}

/// `tracing:`
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Tracing {
    /// OTLP endpoint URL.
    pub otlp_endpoint: String,
    /// `grpc` or `http`.
    pub protocol: OtlpProtocol,
    /// `service.name`. Default `sigmesh`.
    pub service_name: String,
    /// Parent-based ratio sampler's ratio, 0.0 to 1.0. Default 1.0.
    pub sample_ratio: f64,
    /// Whether a request's `traceparent` sampled flag decides.
    pub parent_sampling: ParentSampling,
    /// `tls.ca`: PEM CA certificates for an `https://` collector (default: the built-in
    /// roots).
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "ca_as_tls")]
    #[serde(rename = "tls")]
    pub ca: Option<String>,
}

fn ca_as_tls<S: serde::Serializer>(ca: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap;
    let mut m = s.serialize_map(Some(1))?;
    m.serialize_entry("ca", ca)?;
    m.end()
}

/// `tracing.parent_sampling`
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ParentSampling {
    /// The parent's sampled flag decides (OpenTelemetry's parent-based sampler).
    #[default]
    Follow,
    /// Only `sample_ratio` decides: a client cannot force its sessions to be traced.
    Ignore,
}

/// `tracing.protocol`
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OtlpProtocol {
    /// OTLP/gRPC.
    Grpc,
    /// OTLP/HTTP with protobuf bodies.
    Http,
}

impl Config {
    /// A copy with every secret replaced by `"[redacted]"`, for `/config`.
    pub fn redacted(&self) -> Config {
        let mut c = self.clone();
        if let Some(t) = c.turn.as_mut() {
            t.secret = "[redacted]".to_owned();
            if let Some(a) = t.credentials_auth.as_mut() {
                a.request = redact_userinfo(&a.request);
            }
        }
        for u in c.routes.iter_mut().flat_map(|r| r.upstreams.iter_mut()) {
            if let Some(url) = u.url.as_mut() {
                *url = redact_userinfo(url);
            }
        }
        if let Some(t) = c.tracing.as_mut() {
            t.otlp_endpoint = redact_userinfo(&t.otlp_endpoint);
        }
        if let Some(cl) = c.cluster.as_mut() {
            cl.redis = redact_userinfo(&cl.redis);
        }
        c
    }

    /// The route named `name`.
    pub fn route(&self, name: &str) -> Option<&Route> {
        self.routes.iter().find(|r| r.name == name)
    }
}

fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

/// `scheme://user:pass@host/…` → `scheme://[redacted]@host/…`.
fn redact_userinfo(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..end].rfind('@') {
        Some(at) => format!("{scheme}://[redacted]{}", &rest[at..]),
        None => url.to_owned(),
    }
}

impl Cidr {
    /// Whether `ip`, read as IPv4 when it is an IPv4-mapped IPv6 address, is inside any of
    /// `list` (who may use the override header, whose `x-forwarded-for` is believed).
    pub fn any_contains(list: &[Cidr], ip: std::net::IpAddr) -> bool {
        let ip = ip.to_canonical();
        list.iter().any(|c| c.contains(ip))
    }

    /// Whether `ip` is inside this range (an IPv4 address never is inside an IPv6 range, nor the
    /// other way round; callers normalise mapped addresses first).
    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        use std::net::IpAddr;
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let p = u32::from(self.prefix.min(32));
                let mask = if p == 0 { 0 } else { u32::MAX << (32 - p) };
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let p = u32::from(self.prefix.min(128));
                let mask = if p == 0 { 0 } else { u128::MAX << (128 - p) };
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl Route {
    /// The override header in force: the configured one, or `x-sigmesh-upstream`.
    pub fn override_header(&self) -> &str {
        self.split
            .override_header
            .as_deref()
            .unwrap_or(DEFAULT_OVERRIDE_HEADER)
    }
}

/// The override header used when `split.override_header` is absent.
pub const DEFAULT_OVERRIDE_HEADER: &str = "x-sigmesh-upstream";

// === string forms ===

impl std::fmt::Display for SessionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SessionKey::Room => f.write_str("room"),
            SessionKey::ClientIp => f.write_str("client_ip"),
            SessionKey::Header(h) => write!(f, "header:{h}"),
        }
    }
}

impl std::fmt::Display for LimitKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LimitKey::ClientIp => f.write_str("client_ip"),
            LimitKey::Route => f.write_str("route"),
            LimitKey::Header(h) => write!(f, "header:{h}"),
        }
    }
}

impl std::fmt::Display for Sticky {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Sticky::Query(n) => write!(f, "query:{n}"),
            Sticky::Header(n) => write!(f, "header:{n}"),
            Sticky::Cookie(n) => write!(f, "cookie:{n}"),
            Sticky::Message(p) => write!(f, "message:{p}"),
            Sticky::None => f.write_str("none"),
        }
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

macro_rules! serialize_display {
    ($($t:ty),*) => {$(
        impl Serialize for $t {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
    )*};
}
serialize_display!(LimitKey, SessionKey, Sticky, Cidr);

/// Durations as the contract writes them: `250ms`, `30s`, `5m`, `1h`, `1h30m`.
pub mod duration_str {
    use std::time::Duration;

    /// Parses `250ms`, `30s`, `5m`, `1h`, `2d`, and sums such as `1h30m`. `0` alone is zero.
    pub fn parse(s: &str) -> Result<Duration, String> {
        let t = s.trim();
        if t == "0" {
            return Ok(Duration::ZERO);
        }
        if t.is_empty() {
            return Err("empty duration".into());
        }
        let mut total = Duration::ZERO;
        let mut rest = t;
        while !rest.is_empty() {
            let digits = rest
                .find(|c: char| !c.is_ascii_digit() && c != '.')
                .unwrap_or(rest.len());
            if digits == 0 {
                return Err(format!(
                    "bad duration `{s}`: expected a number, as in `250ms`, `30s`, `1h`"
                ));
            }
            let num = &rest[..digits];
            rest = &rest[digits..];
            let unit_len = rest
                .find(|c: char| c.is_ascii_digit() || c == '.')
                .unwrap_or(rest.len());
            let unit = &rest[..unit_len];
            rest = &rest[unit_len..];
            let unit_ns: u128 = match unit {
                "ns" => 1,
                "us" | "µs" => 1_000,
                "ms" => 1_000_000,
                "s" => 1_000_000_000,
                "m" => 60_000_000_000,
                "h" => 3_600_000_000_000,
                "d" => 86_400_000_000_000,
                "" => {
                    return Err(format!(
                        "bad duration `{s}`: a unit is needed (ms, s, m, h)"
                    ));
                }
                other => {
                    return Err(format!(
                        "bad duration `{s}`: unknown unit `{other}` (use ms, s, m, h)"
                    ));
                }
            };
            // Exact decimal arithmetic, so that `format` and `parse` round-trip.
            let (int_part, frac_part) = num.split_once('.').unwrap_or((num, ""));
            if frac_part.contains('.') || (int_part.is_empty() && frac_part.is_empty()) {
                return Err(format!("bad duration `{s}`: `{num}` is not a number"));
            }
            let out_of_range = || format!("bad duration `{s}`: out of range");
            let int: u128 = if int_part.is_empty() {
                0
            } else {
                int_part.parse().map_err(|_| out_of_range())?
            };
            let frac_digits = &frac_part[..frac_part.len().min(18)];
            let frac_ns = if frac_digits.is_empty() {
                0
            } else {
                let f: u128 = frac_digits.parse().map_err(|_| out_of_range())?;
                f * unit_ns / 10u128.pow(frac_digits.len() as u32)
            };
            let ns = int
                .checked_mul(unit_ns)
                .and_then(|n| n.checked_add(frac_ns))
                .ok_or_else(out_of_range)?;
            let secs = u64::try_from(ns / 1_000_000_000).map_err(|_| out_of_range())?;
            let d = Duration::new(secs, (ns % 1_000_000_000) as u32);
            total = total
                .checked_add(d)
                .ok_or_else(|| format!("bad duration `{s}`: out of range"))?;
        }
        Ok(total)
    }

    /// Formats a duration in the largest unit that is exact: `1h`, `90s`, `250ms`.
    pub fn format(d: Duration) -> String {
        let ns = d.as_nanos();
        for (unit, n) in [
            ("h", 3_600_000_000_000u128),
            ("m", 60_000_000_000),
            ("s", 1_000_000_000),
            ("ms", 1_000_000),
            ("us", 1_000),
        ] {
            if ns != 0 && ns.is_multiple_of(n) {
                return format!("{}{unit}", ns / n);
            }
        }
        if ns == 0 {
            "0s".into()
        } else {
            format!("{ns}ns")
        }
    }

    /// serde `serialize_with` helper.
    pub fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format(*d))
    }
}
