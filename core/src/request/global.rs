//! What a request needs from the fleet's shared store (`cluster:`) before it goes through:
//! the route's `scope: global` connection bucket and session count. Core decides everything
//! it can locally ([`super::decide`]) and leaves these in the verdict ([`Global`]); the
//! standalone proxy asks Redis once (one script for both) and hands the answer back to
//! [`Global::judge`], which answers exactly as a local limit would (429 with the same headers),
//! or as `cluster.on_error` says when Redis could not answer.

use std::time::Duration;

use crate::config::{OnClusterError, Rate};
use crate::label::LimitKind;

use super::{Refusal, Reply};

/// The global checks of one request, in the order the store applies them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Global {
    /// A token from the route's connection bucket.
    pub bucket: Option<GlobalTake>,
    /// A place in the route's session count (WebSocket upgrades only).
    pub place: Option<GlobalPlace>,
}

/// A token from a global bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GlobalTake {
    /// The key (client IP, header value through [`super::bucket_key`], or empty for the route).
    pub key: String,
    /// The bucket.
    pub rate: Rate,
}

/// A place in a global session count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GlobalPlace {
    /// The key (room, client IP or header value, through [`super::bucket_key`]).
    pub key: String,
    /// Most live sessions per key, across the fleet.
    pub max: u32,
}

/// The store's answer to a [`Global`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Every token and place was taken.
    Admitted,
    /// The bucket was empty (no place was taken).
    Limited {
        /// Until the next token.
        retry_after: Duration,
    },
    /// The session count was full (the token stays taken, as with a local count).
    Full,
    /// The store did not answer in time, or failed.
    Failed,
}

impl Global {
    /// Nothing to ask.
    pub fn is_empty(&self) -> bool {
        self.bucket.is_none() && self.place.is_none()
    }

    /// The answer for the client once the store answered: `None` lets the request through.
    /// `route` is the route's index (for the metrics), `on_error` is `cluster.on_error`.
    pub fn judge(
        &self,
        route: usize,
        answer: Admission,
        on_error: OnClusterError,
    ) -> Option<Reply> {
        match answer {
            Admission::Admitted => None,
            Admission::Limited { retry_after } => {
                let rate = self.bucket.as_ref().map(|b| b.rate)?;
                Some(
                    Reply::too_many_requests(&rate, retry_after)
                        .refusing(Refusal::Limited(LimitKind::Connections), Some(route)),
                )
            }
            Admission::Full => Some(
                Reply::text(429, "too many sessions")
                    .header("retry-after", "1")
                    .refusing(Refusal::Limited(LimitKind::Sessions), Some(route)),
            ),
            Admission::Failed => match on_error {
                OnClusterError::Allow => None,
                OnClusterError::Deny => Some(
                    Reply::text(503, "limit store unavailable")
                        .header("retry-after", "1")
                        .refusing(Refusal::ClusterDown, Some(route)),
                ),
            },
        }
    }
}
