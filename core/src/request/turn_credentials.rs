//! The TURN credentials endpoint of the request phase.

use super::reply::{JSON, Refusal, Reply};
use super::{Bucket, BucketStore, CREDENTIALS_RATE, RequestFacts, connection_limit};
use crate::bucket::BucketVerdict as Taken;
use crate::compiled::Compiled;
use crate::config::{CredentialsAuth, Turn};
use crate::label::LimitKind;
use crate::route::Headers;
use crate::signal::query_param;

/// Request headers of the client that go to the auth endpoint.
pub const AUTH_FORWARDED: [&str; 2] = ["cookie", "authorization"];
/// Longest value of one forwarded header, in bytes (longer is refused 431 before asking).
pub const MAX_AUTH_HEADER: usize = 16 << 10;

/// `turn.credentials_auth` must decide before a credential is minted: the front end sends
/// `GET {request}` with [`AuthCheck::headers`] and hands the answer to
/// [`AuthCheck::answer`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthCheck {
    /// The route the credentials path matched, if any (for the metrics).
    pub route: Option<usize>,
    /// The auth endpoint's URL.
    pub request: String,
    /// The answer's head must arrive within this.
    pub timeout: std::time::Duration,
    /// Headers to send: the client's `cookie` and `authorization` (those present), and
    /// `x-forwarded-for` (the client address as sigmesh reads it) and `x-original-uri`.
    pub headers: Vec<(&'static str, String)>,
    user_header: String,
    secret: String,
    ttl: std::time::Duration,
    uris: Vec<String>,
}

/// What the auth endpoint said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthAnswer<'a> {
    /// It answered with `status`; `user` is the value of the user header, if present.
    Status {
        /// HTTP status.
        status: u16,
        /// The user header's value.
        user: Option<&'a str>,
        /// Its `www-authenticate`, passed on with a 401.
        www_authenticate: Option<&'a str>,
    },
    /// It could not be reached, or broke the connection.
    Unreachable,
    /// Its answer did not come within [`AuthCheck::timeout`].
    TimedOut,
}

impl AuthCheck {
    /// The name of the response header that names the user.
    pub fn user_header(&self) -> &str {
        &self.user_header
    }

    /// The reply, once the auth endpoint answered (`unix_secs` is the time the credential
    /// starts from). Fails closed: only a 2xx naming a valid user mints a credential; 401 and
    /// 403 are passed on; any other status, no answer, or a 2xx without a user is 502 (504 on
    /// a timeout): the app's auth is broken, and nobody gets a credential meanwhile.
    pub fn answer(&self, answer: AuthAnswer<'_>, unix_secs: u64) -> Reply {
        let refused = |status: u16, body: &str| {
            Reply::text(status, body)
                .header("cache-control", "no-store")
                .refusing(Refusal::CredentialsAuth, self.route)
        };
        let user = match answer {
            AuthAnswer::Status {
                status: 401,
                www_authenticate,
                ..
            } => {
                let r = refused(401, "unauthorized");
                return match www_authenticate {
                    Some(w) => r.header("www-authenticate", w),
                    None => r,
                };
            }
            AuthAnswer::Status { status: 403, .. } => return refused(403, "forbidden"),
            AuthAnswer::Status { status, user, .. } if (200..300).contains(&status) => match user {
                Some(u) => u,
                None => return refused(502, "credentials auth named no user"),
            },
            AuthAnswer::Status { .. } | AuthAnswer::Unreachable => {
                return refused(502, "credentials auth failed");
            }
            AuthAnswer::TimedOut => return refused(504, "credentials auth timed out"),
        };
        let credential =
            crate::credentials::credential(&self.secret, user, unix_secs, self.ttl, &self.uris);
        match credential {
            Ok(cred) => minted(&cred, self.route),
            Err(_) => refused(502, "credentials auth named a bad user"),
        }
    }
}

/// Either a reply now, or the auth endpoint decides first.
pub(super) enum Credentials {
    Reply(Reply),
    Ask(AuthCheck),
}

/// `GET {credentials_path}?user=ID`: a TURN REST credential ([`crate::credentials`]) with
/// `cache-control: no-store`. With `credentials_auth`, the user comes from the app's auth
/// endpoint instead, and `?user=` is ignored.
pub(super) fn credentials<H: Headers + ?Sized>(
    c: &Compiled,
    turn: &Turn,
    req: &RequestFacts<'_, H>,
    route: Option<usize>,
    buckets: &dyn BucketStore,
) -> Credentials {
    match limited(c, req, route, buckets) {
        Some(reply) => Credentials::Reply(reply),
        None => match &turn.credentials_auth {
            Some(auth) => ask(turn, auth, req, route),
            None => Credentials::Reply(unauthenticated(turn, req, route)),
        },
    }
}

/// The method, then the bucket the request takes a token from.
fn limited<H: Headers + ?Sized>(
    c: &Compiled,
    req: &RequestFacts<'_, H>,
    route: Option<usize>,
    buckets: &dyn BucketStore,
) -> Option<Reply> {
    if req.method != "GET" && req.method != "HEAD" {
        return Some(
            Reply::text(405, "method not allowed")
                .header("allow", "GET, HEAD")
                .refusing(Refusal::BadCredentialsRequest, route),
        );
    }
    let lends_bucket = route
        .and_then(|i| c.routes.get(i))
        .is_some_and(|r| r.route.limits.connections.is_some());
    match route {
        Some(i) if lends_bucket => {
            if let Some(limited) = connection_limit(c, i, req, buckets) {
                return Some(limited);
            }
        }
        _ => {
            let taken = buckets.take(
                Bucket::Credentials,
                req.client_ip,
                &CREDENTIALS_RATE,
                req.now,
            );
            if let Taken::Limited { retry_after } = taken {
                return Some(
                    Reply::too_many_requests(&CREDENTIALS_RATE, retry_after)
                        .refusing(Refusal::Limited(LimitKind::Credentials), route),
                );
            }
        }
    }
    None
}

/// The auth endpoint's request, or 431 for a forwarded header past [`MAX_AUTH_HEADER`].
fn ask<H: Headers + ?Sized>(
    turn: &Turn,
    auth: &CredentialsAuth,
    req: &RequestFacts<'_, H>,
    route: Option<usize>,
) -> Credentials {
    let mut headers = Vec::with_capacity(4);
    for name in AUTH_FORWARDED {
        if let Some(v) = req.headers.get(name) {
            if v.len() > MAX_AUTH_HEADER {
                return Credentials::Reply(
                    Reply::text(431, "request header too large")
                        .refusing(Refusal::BadCredentialsRequest, route),
                );
            }
            headers.push((name, v.to_owned()));
        }
    }
    headers.push(("x-forwarded-for", req.client_ip.to_owned()));
    let uri = match req.query {
        Some(q) => format!("{}?{q}", req.path),
        None => req.path.to_owned(),
    };
    if uri.len() <= MAX_AUTH_HEADER {
        headers.push(("x-original-uri", uri));
    }
    Credentials::Ask(AuthCheck {
        route,
        request: auth.request.clone(),
        timeout: auth.timeout,
        headers,
        user_header: auth.user_header.clone(),
        secret: turn.secret.clone(),
        ttl: turn.ttl,
        uris: turn.uris.clone(),
    })
}

/// No `credentials_auth`: the user is whatever `?user=` says.
fn unauthenticated<H: Headers + ?Sized>(
    turn: &Turn,
    req: &RequestFacts<'_, H>,
    route: Option<usize>,
) -> Reply {
    let user = req
        .query
        .and_then(|q| query_param(q, "user"))
        .unwrap_or_default();
    let credential =
        crate::credentials::credential(&turn.secret, &user, req.unix_secs, turn.ttl, &turn.uris);
    match credential {
        Ok(cred) => minted(&cred, route),
        Err(e) => Reply {
            status: 400,
            content_type: JSON,
            headers: vec![("cache-control", "no-store".into())],
            body: serde_json::json!({ "error": format!("{e}: pass ?user=ID") }).to_string(),
            route,
            refusal: Some(Refusal::BadCredentialsRequest),
            upgrade: false,
        },
    }
}

/// 200 with the credential as JSON, never cached.
fn minted(cred: &crate::credentials::TurnCredential, route: Option<usize>) -> Reply {
    Reply {
        status: 200,
        content_type: JSON,
        headers: vec![("cache-control", "no-store".into())],
        body: serde_json::to_string(cred).unwrap_or_default(),
        route,
        refusal: None,
        upgrade: false,
    }
}
