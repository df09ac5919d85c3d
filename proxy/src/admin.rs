//! The admin API: health, readiness, metrics, sessions, config, live weights.

use std::collections::BTreeMap;
use std::sync::Arc;

use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

use crate::http_util::{self, Body};
use crate::state::{ReweightError, Shared};

/// Largest admin request body.
const MAX_BODY: usize = 64 * 1024;

/// Serves the admin API until the task is dropped. It stays up while draining, so `/readyz`
/// can say 503.
pub async fn serve(shared: Arc<Shared>, listener: TcpListener) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let shared = shared.clone();
                async move { Ok::<_, std::convert::Infallible>(handle(&shared, req).await) }
            });
            let mut b = hyper::server::conn::http1::Builder::new();
            b.timer(TokioTimer::new())
                .header_read_timeout(crate::state::Tuning::default().header_read_timeout);
            let _ = b.serve_connection(TokioIo::new(stream), svc).await;
        });
    }
}

pub async fn handle(shared: &Shared, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_owned();
    match (req.method(), path.as_str()) {
        (&Method::GET, "/healthz") => http_util::text(StatusCode::OK, "ok"),
        (&Method::GET, "/readyz") => {
            if shared.is_draining() {
                http_util::text(StatusCode::SERVICE_UNAVAILABLE, "draining")
            } else {
                http_util::text(StatusCode::OK, "ready")
            }
        }
        (&Method::GET, "/metrics") => {
            let mut r = Response::new(http_util::full(shared.metrics().encode()));
            r.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
            );
            r
        }
        (&Method::GET, "/turn/allocations") => http_util::json(
            StatusCode::OK,
            serde_json::to_string(&shared.turn().view(shared.sessions()))
                .unwrap_or_else(|_| "[]".into()),
        ),
        (_, "/turn/allocations") => {
            http_util::text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
        }
        (&Method::GET, "/sessions") => {
            let all = shared.sessions().all();
            let views: Vec<_> = all.iter().map(|s| s.snapshot()).collect();
            http_util::json(
                StatusCode::OK,
                serde_json::to_string(&views).unwrap_or_else(|_| "[]".into()),
            )
        }
        (&Method::GET, "/config") => {
            let cfg = shared.runtime().effective_config();
            match serde_json::to_string_pretty(&cfg) {
                Ok(s) => http_util::json(StatusCode::OK, s),
                Err(e) => http_util::text(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
            }
        }
        (&Method::PUT, p) if p.starts_with("/routes/") && p.ends_with("/weights") => {
            let name = &p["/routes/".len()..p.len() - "/weights".len()];
            let name = name.to_owned();
            let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
                Ok(b) => b.to_bytes(),
                Err(_) => return bad("body too large or unreadable"),
            };
            set_weights(shared, &name, &body)
        }
        (_, "/healthz" | "/readyz" | "/metrics" | "/sessions" | "/config") => {
            http_util::text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
        }
        _ => http_util::text(StatusCode::NOT_FOUND, "not found"),
    }
}

fn bad(reason: &str) -> Response<Body> {
    http_util::json(
        StatusCode::BAD_REQUEST,
        serde_json::json!({ "error": reason }).to_string(),
    )
}

/// `PUT /routes/NAME/weights` with `{"stable": 50, "canary": 50}`. Upstreams not named keep
/// their weight. New sessions use the new weights; live ones keep their upstream. A reload of
/// the config file resets the weights to the file's.
fn set_weights(shared: &Shared, route: &str, body: &[u8]) -> Response<Body> {
    let requested: BTreeMap<String, u32> = match serde_json::from_slice(body) {
        Ok(m) => m,
        Err(e) => {
            return bad(&format!(
                "body must be a JSON object of upstream name to a non-negative integer weight: {e}"
            ));
        }
    };
    match shared.runtime().reweight(route, &requested) {
        Ok(weights) => {
            let weights: BTreeMap<String, u32> = weights.into_iter().collect();
            tracing::info!(route, ?weights, "weights changed");
            http_util::json(
                StatusCode::OK,
                serde_json::to_string(&weights).unwrap_or_default(),
            )
        }
        Err(e @ ReweightError::NoRoute(_)) => http_util::json(
            StatusCode::NOT_FOUND,
            serde_json::json!({ "error": e.to_string() }).to_string(),
        ),
        Err(e) => bad(&format!("route `{route}`: {e}")),
    }
}
