//! The TURN credentials endpoint of the request phase.

use super::reply::{JSON, Refusal, Reply};
use super::{Bucket, BucketStore, CREDENTIALS_RATE, RequestFacts, connection_limit};
use crate::bucket::BucketVerdict as Taken;
use crate::compiled::Compiled;
use crate::config::Turn;
use crate::label::LimitKind;
use crate::route::Headers;
use crate::signal::query_param;

/// `GET {credentials_path}?user=ID`: a TURN REST credential ([`crate::credentials`]) with
/// `cache-control: no-store`.
pub(super) fn credentials<H: Headers + ?Sized>(
    c: &Compiled,
    turn: &Turn,
    req: &RequestFacts<'_, H>,
    route: Option<usize>,
    buckets: &dyn BucketStore,
) -> Reply {
    if req.method != "GET" && req.method != "HEAD" {
        return Reply::text(405, "method not allowed")
            .header("allow", "GET, HEAD")
            .refusing(Refusal::BadCredentialsRequest, route);
    }
    let lends_bucket = route
        .and_then(|i| c.routes.get(i))
        .is_some_and(|r| r.route.limits.connections.is_some());
    match route {
        Some(i) if lends_bucket => {
            if let Some(limited) = connection_limit(c, i, req, buckets) {
                return limited;
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
                return Reply::too_many_requests(&CREDENTIALS_RATE, retry_after)
                    .refusing(Refusal::Limited(LimitKind::Credentials), route);
            }
        }
    }
    let user = req
        .query
        .and_then(|q| query_param(q, "user"))
        .unwrap_or_default();
    let credential =
        crate::credentials::credential(&turn.secret, &user, req.unix_secs, turn.ttl, &turn.uris);
    let (status, body, refusal) = match credential {
        Ok(cred) => (200, serde_json::to_string(&cred).unwrap_or_default(), None),
        Err(e) => (
            400,
            serde_json::json!({ "error": format!("{e}: pass ?user=ID") }).to_string(),
            Some(Refusal::BadCredentialsRequest),
        ),
    };
    Reply {
        status,
        content_type: JSON,
        headers: vec![("cache-control", "no-store".into())],
        body,
        route,
        refusal,
        upgrade: false,
    }
}
