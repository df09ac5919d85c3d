//! Local answers ([`Reply`]) and their parts: why a request was refused, the 429 headers, the
//! header edits of a request that goes on, and the connection bucket's key.

use std::time::Duration;

use crate::config::{LimitKey, Rate};
use crate::label::{LimitKind, Outcome};
use crate::route::Headers;

/// Why a request was answered locally, for the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Draining (503).
    Draining,
    /// A malformed WebSocket handshake (400, 405, 426).
    Handshake,
    /// `allowed_origins` (403).
    Forbidden,
    /// A bucket was empty (429).
    Limited(LimitKind),
    /// A bad credentials request (400, 405).
    BadCredentialsRequest,
    /// `turn.credentials_auth` did not allow it (401, 403), or could not answer (502, 504).
    CredentialsAuth,
    /// `cluster.on_error: deny` and the shared store did not answer (503).
    ClusterDown,
}

/// A local answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// HTTP status.
    pub status: u16,
    /// `content-type` of the body.
    pub content_type: &'static str,
    /// Other headers, names lower-case.
    pub headers: Vec<(&'static str, String)>,
    /// The body.
    pub body: String,
    /// The route it was answered on, if one matched (for the metrics' `route` label).
    pub route: Option<usize>,
    /// Why, when it refuses.
    pub refusal: Option<Refusal>,
    /// It answers a WebSocket upgrade on a `websocket:` route (the proxy traces it as a
    /// refused session).
    pub upgrade: bool,
}

pub(super) const TEXT: &str = "text/plain; charset=utf-8";
pub(super) const JSON: &str = "application/json";

impl Reply {
    pub(super) fn text(status: u16, body: &str) -> Reply {
        Reply {
            status,
            content_type: TEXT,
            headers: Vec::new(),
            body: body.to_owned(),
            route: None,
            refusal: None,
            upgrade: false,
        }
    }

    pub(super) fn refusing(mut self, refusal: Refusal, route: Option<usize>) -> Reply {
        self.refusal = Some(refusal);
        self.route = route;
        self
    }

    pub(super) fn header(mut self, name: &'static str, value: impl Into<String>) -> Reply {
        self.headers.push((name, value.into()));
        self
    }

    /// The proxy's answer when no route matches: 404.
    pub fn no_route() -> Reply {
        Reply::text(404, "no route")
    }

    /// 429 with `retry-after` and the `x-ratelimit-*` headers.
    pub fn too_many_requests(rate: &Rate, retry_after: Duration) -> Reply {
        let mut r = Reply::text(429, "rate limited");
        r.headers
            .extend(RateLimited::new(rate, retry_after).headers());
        r
    }

    /// The `outcome` to count in `sigmesh_connections_total` for this answer, if any.
    pub fn outcome(&self) -> Option<Outcome> {
        match self.refusal? {
            Refusal::Forbidden => Some(Outcome::Forbidden),
            Refusal::Limited(LimitKind::Connections) => Some(Outcome::RateLimited),
            _ => None,
        }
    }

    /// The `limit` to count in `sigmesh_rate_limited_total` for this answer, if any.
    pub fn limit(&self) -> Option<LimitKind> {
        match self.refusal? {
            Refusal::Limited(l) => Some(l),
            _ => None,
        }
    }
}

/// Header changes for the request that goes upstream.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeaderEdits {
    /// Set (replacing any value).
    pub set: Vec<(String, String)>,
    /// Remove.
    pub remove: Vec<String>,
}

impl Reply {
    pub(super) fn route_of(mut self, route: usize) -> Reply {
        self.route = Some(route);
        self
    }

    pub(super) fn of_upgrade(mut self, upgrade: bool) -> Reply {
        self.upgrade = upgrade;
        self
    }
}

/// The values of a 429 answer: `retry-after`, `x-ratelimit-limit`, `x-ratelimit-remaining`,
/// `x-ratelimit-reset` (whole seconds, rounded up, at least 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimited {
    /// `retry-after` and `x-ratelimit-reset`, in seconds.
    pub retry_after_secs: u64,
    /// `x-ratelimit-limit`: the bucket's burst.
    pub limit: u32,
    /// `x-ratelimit-remaining`: 0.
    pub remaining: u32,
}

impl RateLimited {
    /// From the bucket's rate and its verdict's `retry_after`.
    pub fn new(rate: &Rate, retry_after: Duration) -> Self {
        let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
        RateLimited {
            retry_after_secs: secs.max(1),
            limit: rate.burst,
            remaining: 0,
        }
    }

    /// The four headers, names lower-case.
    pub fn headers(&self) -> [(&'static str, String); 4] {
        [
            ("retry-after", self.retry_after_secs.to_string()),
            ("x-ratelimit-limit", self.limit.to_string()),
            ("x-ratelimit-remaining", self.remaining.to_string()),
            ("x-ratelimit-reset", self.retry_after_secs.to_string()),
        ]
    }
}

/// The key of a connection bucket (`limits.connections.key`): the client's IP, one key for the
/// route, or a header's value (requests without the header share the empty key), through
/// [`bucket_key`].
pub fn connection_key<H: Headers + ?Sized>(key: &LimitKey, client_ip: &str, headers: &H) -> String {
    match key {
        LimitKey::ClientIp => client_ip.to_owned(),
        LimitKey::Route => String::new(),
        LimitKey::Header(name) => bucket_key(headers.get(name).unwrap_or_default()).into_owned(),
    }
}

/// Longest client-chosen bucket key kept as it is (a room name, a header value); a longer one is
/// replaced by its digest, so a bucket set's memory is bounded in bytes, not only in count.
pub const MAX_KEY_BYTES: usize = 64;

/// Longest room or peer name shown (`/sessions`, spans); longer ones are cut at a character.
pub const MAX_SHOWN_BYTES: usize = 256;

/// A bucket key: `key` itself up to [`MAX_KEY_BYTES`], else `sha1:` and its SHA-1 in hex (a
/// digest nobody can aim at another room's bucket).
pub fn bucket_key(key: &str) -> std::borrow::Cow<'_, str> {
    use sha1::Digest;
    if key.len() <= MAX_KEY_BYTES {
        return std::borrow::Cow::Borrowed(key);
    }
    let digest = sha1::Sha1::digest(key.as_bytes());
    let mut out = String::with_capacity(5 + 40);
    out.push_str("sha1:");
    for b in digest {
        out.push_str(&format!("{b:02x}"));
    }
    std::borrow::Cow::Owned(out)
}

/// `name` cut to [`MAX_SHOWN_BYTES`] at a character boundary.
pub fn shown(name: &str) -> &str {
    let mut end = name.len().min(MAX_SHOWN_BYTES);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    &name[..end]
}
