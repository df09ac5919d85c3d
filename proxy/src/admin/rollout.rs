//! The rollout part of the admin API, and `GET /ui`:
//!
//! | path | answer |
//! |---|---|
//! | `GET /rollouts` | every route's rollout (core's [`View`](sigmesh_core::rollout::View)) |
//! | `GET /routes/NAME/rollout` | that route's, or 404 |
//! | `POST /routes/NAME/rollout/pause\|resume\|abort\|promote` | the rollout after it; 409 when the verb does not apply (an aborted rollout cannot resume) |
//! | `GET /ui` | the live page (`ui.html`: rooms, endpoints, rollouts; it polls the paths above) |

use http::{Method, StatusCode};

use crate::http_util::{self, Body};
use crate::rollout::RolloutError;
use crate::state::Shared;

/// The page served at `/ui`.
const UI: &str = include_str!("ui.html");

/// The answer when `method path` is one of this module's, else `None`.
pub(super) fn handle(shared: &Shared, method: &Method, path: &str) -> Option<http::Response<Body>> {
    if path == "/ui" {
        return Some(if method == Method::GET {
            ui()
        } else {
            http_util::text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
        });
    }
    if path == "/rollouts" {
        return Some(if method == Method::GET {
            json(StatusCode::OK, &shared.rollouts().views())
        } else {
            http_util::text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
        });
    }
    let rest = path.strip_prefix("/routes/")?;
    let (route, tail) = rest.split_once("/rollout")?;
    if route.is_empty() || route.contains('/') {
        return None;
    }
    let rollouts = shared.rollouts();
    let answer = match (method, tail) {
        (&Method::GET, "") => match rollouts.view(route) {
            Some(v) => json(StatusCode::OK, &v),
            None => error(StatusCode::NOT_FOUND, &RolloutError::None(route.to_owned())),
        },
        (&Method::POST, "/pause") => done(shared, route, rollouts.pause(route, "paused by hand")),
        (&Method::POST, verb @ ("/resume" | "/abort" | "/promote")) => done(
            shared,
            route,
            crate::rollout_run::act(shared, route, &verb[1..]),
        ),
        (_, "" | "/pause" | "/resume" | "/abort" | "/promote") => {
            http_util::text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
        }
        _ => return None,
    };
    Some(answer)
}

fn done(shared: &Shared, route: &str, r: Result<(), RolloutError>) -> http::Response<Body> {
    match r {
        Ok(()) => match shared.rollouts().view(route) {
            Some(v) => json(StatusCode::OK, &v),
            None => error(StatusCode::NOT_FOUND, &RolloutError::None(route.to_owned())),
        },
        Err(e @ RolloutError::None(_)) => error(StatusCode::NOT_FOUND, &e),
        Err(e @ RolloutError::State(..)) => error(StatusCode::CONFLICT, &e),
    }
}

fn json<T: serde::Serialize>(status: StatusCode, v: &T) -> http::Response<Body> {
    http_util::json(status, serde_json::to_string(v).unwrap_or_default())
}

fn error(status: StatusCode, e: &RolloutError) -> http::Response<Body> {
    http_util::json(
        status,
        serde_json::json!({ "error": e.to_string() }).to_string(),
    )
}

fn ui() -> http::Response<Body> {
    let mut r = http::Response::new(http_util::full(UI));
    let h = r.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(
        http::header::CONTENT_SECURITY_POLICY,
        http::HeaderValue::from_static(
            "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src data:",
        ),
    );
    h.insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-store"),
    );
    r
}
