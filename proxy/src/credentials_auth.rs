//! `turn.credentials_auth`: before a TURN credential is minted, the app's own auth endpoint
//! decides, and names the user (nginx's `auth_request`, for one endpoint).
//!
//! Core says what to send ([`AuthCheck`]) and what each answer means
//! ([`AuthCheck::answer`]); this module only makes the request: `GET` with the client's
//! `Cookie` and `Authorization`, connect and answer head within the check's timeout, and the
//! body never read (the answer is the status and the user header).

use std::time::Duration;

use bytes::Bytes;
use http::{Request, Uri};
use http_body_util::Empty;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use sigmesh_core::request::{AuthAnswer, AuthCheck, Reply};

use crate::metrics::{Metrics, ResultLabel};

/// Longest value of the user header read (the user must also pass core's check).
const MAX_USER_HEADER: usize = 1024;

/// The HTTP client of the auth endpoint (connections are pooled).
pub struct AuthClient {
    client: Client<HttpConnector, Empty<Bytes>>,
}

impl Default for AuthClient {
    fn default() -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(16)
            .build(connector);
        AuthClient { client }
    }
}

impl AuthClient {
    /// Asks the auth endpoint; the reply to give the client, counted in
    /// `sigmesh_credentials_auth_total`.
    pub async fn decide(&self, check: &AuthCheck, unix_secs: u64, metrics: &Metrics) -> Reply {
        let (answer, result) = self.ask(check).await;
        let reply = match &answer {
            Ok(resp) => {
                let h = resp.headers();
                let value = |name: &str| {
                    h.get(name)
                        .and_then(|v| v.to_str().ok())
                        .filter(|v| v.len() <= MAX_USER_HEADER)
                };
                check.answer(
                    AuthAnswer::Status {
                        status: resp.status().as_u16(),
                        user: value(check.user_header()).map(str::trim),
                        www_authenticate: value("www-authenticate"),
                    },
                    unix_secs,
                )
            }
            Err(a) => check.answer(*a, unix_secs),
        };
        let result = match (result, reply.status) {
            (Some(r), _) => r,
            (None, 200) => "allowed",
            (None, 401 | 403) => "denied",
            (None, _) => "error",
        };
        metrics
            .credentials_auth
            .get_or_create(&ResultLabel { result })
            .inc();
        reply
    }

    /// The answer's head, or why there is none (with its result label).
    async fn ask(
        &self,
        check: &AuthCheck,
    ) -> (
        Result<http::Response<hyper::body::Incoming>, AuthAnswer<'static>>,
        Option<&'static str>,
    ) {
        let Ok(uri) = check.request.parse::<Uri>() else {
            return (Err(AuthAnswer::Unreachable), Some("error"));
        };
        let mut req = Request::get(uri);
        for (name, value) in &check.headers {
            req = req.header(*name, value.as_str());
        }
        let Ok(req) = req.body(Empty::new()) else {
            return (Err(AuthAnswer::Unreachable), Some("error"));
        };
        match tokio::time::timeout(check.timeout, self.client.request(req)).await {
            Ok(Ok(resp)) => (Ok(resp), None),
            Ok(Err(e)) => {
                tracing::warn!(url = %check.request, error = %e, "turn.credentials_auth: request failed");
                (Err(AuthAnswer::Unreachable), Some("error"))
            }
            Err(_) => {
                tracing::warn!(url = %check.request, timeout = ?check.timeout, "turn.credentials_auth: no answer in time");
                (Err(AuthAnswer::TimedOut), Some("timeout"))
            }
        }
    }
}
