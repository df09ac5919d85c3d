//! `on_upstream_failure: reconnect`: when the upstream endpoint of a live session dies, the
//! client's WebSocket stays. sigmesh opens the same handshake request to another healthy
//! endpoint of the same upstream, sends the session's first client message again
//! (`replay: first`, the join), and goes on. It does so only at a message boundary both ways
//! ([`sigmesh_core::session::Session::can_fail_over`]), so no part of a message is ever
//! spliced onto another connection; what was waiting for the dead endpoint is dropped and
//! counted (`sigmesh_reconnect_lost_messages_total`).

use std::sync::Arc;
use std::time::Duration;

use http::HeaderMap;
use sigmesh_core::config::{Replay, Route};
use sigmesh_core::frame::frame;
use sigmesh_core::session::{First, FirstMessage};

use super::connect::{UpstreamConn, connect_upstream};
use crate::pool::{Lease, Pool};

/// Longest first message kept for the replay (a join is small; a larger one is not kept).
const MAX_REPLAY: usize = 64 * 1024;

/// What a session keeps to reconnect.
pub(super) struct Failover {
    headers: HeaderMap,
    path_and_query: String,
    route_prefix: Option<String>,
    attempts: u32,
    /// Reads the client's bytes until its first text message is whole (`replay: first`).
    first: Option<FirstMessage>,
    /// That message's text, once read.
    replay: Option<String>,
    timeout: Duration,
}

impl Failover {
    /// For a session of `route` whose upstream handshake was `headers` to `path_and_query`;
    /// `None` unless the route reconnects.
    pub fn new(
        route: &Route,
        (headers, path_and_query): (&HeaderMap, &str),
        timeout: Duration,
    ) -> Option<Box<Failover>> {
        let ws = route.websocket.as_ref()?;
        if ws.on_upstream_failure != sigmesh_core::config::OnUpstreamFailure::Reconnect {
            return None;
        }
        // Boxed: sessions that do not reconnect (the default) carry a pointer, not this.
        Some(Box::new(Failover {
            headers: headers.clone(),
            path_and_query: path_and_query.to_owned(),
            route_prefix: route.matcher.path_prefix.clone(),
            attempts: ws.reconnect.attempts,
            first: (ws.reconnect.replay == Replay::First).then(|| FirstMessage::new(route)),
            replay: None,
            timeout,
        }))
    }

    /// Client bytes as they pass, until the first message is whole.
    pub fn client_bytes(&mut self, chunk: &[u8]) {
        let Some(first) = self.first.as_mut() else {
            return;
        };
        match first.push(chunk) {
            First::More => {}
            First::Message(Some(text)) if text.len() <= MAX_REPLAY => {
                self.replay = Some(text);
                self.first = None;
            }
            _ => self.first = None,
        }
    }

    /// Whether another attempt is left.
    pub fn can_try(&self) -> bool {
        self.attempts > 0
    }

    /// One attempt: another healthy endpoint of `pool` than `failed`, the same handshake.
    /// The new connection and its lease, and the replay frame to send it first.
    pub async fn reconnect(
        &mut self,
        pool: &Arc<Pool>,
        failed: &Lease,
    ) -> Option<(UpstreamConn, Lease, Option<Vec<u8>>)> {
        self.attempts = self.attempts.saturating_sub(1);
        let lease = pool.pick_other(failed, rand::random())?;
        let ep = lease.endpoint();
        let conn = connect_upstream(
            (&ep.target, ep.dial),
            self.route_prefix.as_deref(),
            &self.path_and_query,
            self.headers.clone(),
            self.timeout,
            lease.tls(),
        )
        .await;
        match conn {
            Ok(conn) => {
                lease.passed();
                let replay = self
                    .replay
                    .as_ref()
                    .map(|t| frame(1, true, t.as_bytes(), Some(rand::random())));
                Some((conn, lease, replay))
            }
            Err(e) => {
                if e.is_endpoint_failure() {
                    lease.failed(&e.to_string());
                }
                tracing::debug!(error = %e, "reconnect failed");
                None
            }
        }
    }
}
