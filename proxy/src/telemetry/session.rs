//! The `ws.session` span and its children: the upstream handshake, the offer→answer setup, and
//! one event per signaling message up to the cap.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use http::HeaderMap;
use opentelemetry::trace::{SpanKind, Status, TraceContextExt};
use opentelemetry::{Context, KeyValue};

use sigmesh_core::label::{LimitKind, MessageDirection, MessageType, Party, UpstreamErrorKind};

use super::{Pipeline, RequestInfo, propagation, request_attributes};
use crate::sessions::SessionInfo;

/// The first close of a session: who closed, with which code and reason.
struct Close {
    by: &'static str,
    code: Option<u16>,
    reason: String,
}

/// The offer→answer window.
enum Setup {
    Idle,
    Open {
        cx: Context,
        at: Instant,
    },
    /// Offer to answer, in milliseconds.
    Done(i64),
}

/// One WebSocket session, from the client's handshake to the last close.
pub struct SessionTrace {
    pipeline: Arc<Pipeline>,
    cx: Context,
    recording: bool,
    events: AtomicU32,
    events_dropped: AtomicU64,
    setup: Mutex<Setup>,
    close: OnceLock<Close>,
}

impl SessionTrace {
    pub(super) fn start(pipeline: Arc<Pipeline>, req: &RequestInfo<'_>) -> SessionTrace {
        let parent = propagation::extract(req.headers);
        let cx = pipeline.span(
            "ws.session",
            SpanKind::Server,
            &parent,
            request_attributes(req, "websocket"),
        );
        let recording = cx.span().is_recording();
        SessionTrace {
            pipeline,
            cx,
            recording,
            events: AtomicU32::new(0),
            events_dropped: AtomicU64::new(0),
            setup: Mutex::new(Setup::Idle),
            close: OnceLock::new(),
        }
    }

    /// Whether the span is sampled: per-message hooks are skipped otherwise.
    pub fn is_recording(&self) -> bool {
        self.recording
    }

    /// The session span's context (its trace and span ids).
    pub fn context(&self) -> &Context {
        &self.cx
    }

    /// The upstream the split picked, and whether a sticky key took part.
    pub fn picked(&self, upstream: &str, sticky_key_present: bool) {
        self.cx.span().set_attributes([
            KeyValue::new("sigmesh.upstream", upstream.to_owned()),
            KeyValue::new("sigmesh.split.sticky_key_present", sticky_key_present),
        ]);
    }

    /// Starts the `ws.upstream_handshake` span and writes its context into `headers` as the
    /// upstream's `traceparent`.
    pub fn upstream_handshake(
        &self,
        upstream: &str,
        url: &str,
        headers: &mut HeaderMap,
    ) -> HandshakeTrace {
        let mut attrs = vec![
            KeyValue::new("sigmesh.upstream", upstream.to_owned()),
            KeyValue::new("url.full", url.to_owned()),
            KeyValue::new("network.protocol.name", "websocket"),
        ];
        if let Some(authority) = url
            .parse::<http::Uri>()
            .ok()
            .and_then(|u| u.authority().cloned())
        {
            attrs.push(KeyValue::new("server.address", authority.host().to_owned()));
            if let Some(port) = authority.port_u16() {
                attrs.push(KeyValue::new("server.port", i64::from(port)));
            }
        }
        let cx = self
            .pipeline
            .span("ws.upstream_handshake", SpanKind::Client, &self.cx, attrs);
        propagation::inject(&cx, headers);
        HandshakeTrace { cx }
    }

    /// The client got `status` instead of a session (403, 429, 502, ...): the span ends here.
    pub fn refused(&self, status: u16) {
        let span = self.cx.span();
        span.set_attribute(KeyValue::new(
            "http.response.status_code",
            i64::from(status),
        ));
        if status >= 500 {
            span.set_attribute(KeyValue::new("error.type", status.to_string()));
            span.set_status(Status::error("handshake refused"));
        }
        span.end();
    }

    /// The client got its 101.
    pub fn accepted(&self) {
        self.cx
            .span()
            .set_attribute(KeyValue::new("http.response.status_code", 101));
    }

    /// One message through the session, or one dropped by the limit `dropped_by`
    /// (`messages`, `rooms`). Opens the setup span on the first relayed offer and closes it on
    /// the next relayed answer; adds a `ws.message` event while under the cap.
    pub fn message(
        &self,
        dir: MessageDirection,
        kind: MessageType,
        size: usize,
        dropped_by: Option<LimitKind>,
    ) {
        if !self.recording {
            return;
        }
        if dropped_by.is_none() && matches!(kind, MessageType::Offer | MessageType::Answer) {
            self.setup_step(dir, kind);
        }
        if self.events.fetch_add(1, Ordering::Relaxed) >= self.pipeline.max_events {
            // Per session, uncontended; the shared counter gets the sum when the session ends.
            self.events_dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let mut attrs = Vec::with_capacity(5);
        attrs.push(KeyValue::new("sigmesh.message.direction", dir.as_str()));
        attrs.push(KeyValue::new("sigmesh.message.type", kind.as_str()));
        attrs.push(KeyValue::new("sigmesh.message.size", size as i64));
        attrs.push(KeyValue::new(
            "sigmesh.message.dropped",
            dropped_by.is_some(),
        ));
        if let Some(limit) = dropped_by {
            attrs.push(KeyValue::new("sigmesh.limit", limit.as_str()));
        }
        self.cx.span().add_event("ws.message", attrs);
    }

    fn setup_step(&self, dir: MessageDirection, kind: MessageType) {
        let mut setup = self.setup.lock().unwrap_or_else(|p| p.into_inner());
        match (&*setup, kind) {
            (Setup::Idle, MessageType::Offer) => {
                let cx = self.pipeline.span(
                    "signaling.setup",
                    SpanKind::Internal,
                    &self.cx,
                    vec![KeyValue::new("sigmesh.offer.direction", dir.as_str())],
                );
                *setup = Setup::Open {
                    cx,
                    at: Instant::now(),
                };
            }
            (Setup::Open { cx, at }, MessageType::Answer) => {
                let ms = at.elapsed().as_millis() as i64;
                let span = cx.span();
                span.set_attributes([
                    KeyValue::new("sigmesh.answer.direction", dir.as_str()),
                    KeyValue::new("sigmesh.setup.completed", true),
                ]);
                span.end();
                *setup = Setup::Done(ms);
            }
            _ => {}
        }
    }

    /// Records the session's first close: `by` is `client`, `upstream` or `proxy`; `code` is
    /// `None` when that side sent a close frame without a code. Later closes are ignored.
    pub fn closed(&self, by: Party, code: Option<u16>, reason: &str) {
        if !self.recording || self.close.get().is_some() {
            return;
        }
        let _ = self.close.set(Close {
            by: by.as_str(),
            code,
            reason: reason.to_owned(),
        });
    }

    /// Ends the session span with what the session did: counts, room, peer, candidates (from
    /// `info`, absent when no session started), close. A setup still open ends unanswered.
    pub fn finish(&self, info: Option<&SessionInfo>) {
        if !self.recording {
            self.cx.span().end();
            return;
        }
        let measured = match &*self.setup.lock().unwrap_or_else(|p| p.into_inner()) {
            Setup::Open { cx, .. } => {
                let span = cx.span();
                span.set_attribute(KeyValue::new("sigmesh.setup.completed", false));
                span.end();
                None
            }
            Setup::Done(ms) => Some(*ms),
            Setup::Idle => None,
        };
        let mut a = match info {
            Some(info) => Self::session_attributes(info),
            None => Vec::with_capacity(4),
        };
        // The session table's figure where the signaling reader measured one, else ours.
        let known = info
            .map(|i| i.setup_ms.load(Ordering::Relaxed))
            .filter(|&ms| ms != u64::MAX)
            .map(|ms| ms as i64);
        if let Some(ms) = known.or(measured) {
            a.push(KeyValue::new("sigmesh.setup_ms", ms));
        }
        let events_dropped = self.events_dropped.load(Ordering::Relaxed);
        self.pipeline.metrics.events_dropped.inc_by(events_dropped);
        a.push(KeyValue::new(
            "sigmesh.events.dropped",
            events_dropped as i64,
        ));
        match self.close.get() {
            Some(c) => {
                a.push(KeyValue::new("sigmesh.close.initiator", c.by));
                // 1005: no status code in the frame; 1006: no close frame at all (RFC 6455 §7.1.5).
                a.push(KeyValue::new(
                    "websocket.close.code",
                    i64::from(c.code.unwrap_or(1005)),
                ));
                a.push(KeyValue::new("websocket.close.reason", c.reason.clone()));
            }
            None => a.push(KeyValue::new("websocket.close.code", 1006)),
        }
        let span = self.cx.span();
        span.set_attributes(a);
        span.end();
    }

    fn session_attributes(info: &SessionInfo) -> Vec<KeyValue> {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed) as i64;
        let mut a = vec![
            KeyValue::new("sigmesh.session.id", info.id as i64),
            KeyValue::new("sigmesh.messages.in", l(&info.messages_in)),
            KeyValue::new("sigmesh.messages.out", l(&info.messages_out)),
            KeyValue::new("sigmesh.bytes.in", l(&info.bytes_in)),
            KeyValue::new("sigmesh.bytes.out", l(&info.bytes_out)),
            KeyValue::new("sigmesh.messages.dropped", l(&info.dropped)),
            KeyValue::new("sigmesh.ice.host", l(&info.ice.host)),
            KeyValue::new("sigmesh.ice.srflx", l(&info.ice.srflx)),
            KeyValue::new("sigmesh.ice.prflx", l(&info.ice.prflx)),
            KeyValue::new("sigmesh.ice.relay", l(&info.ice.relay)),
            KeyValue::new("sigmesh.ice.udp", l(&info.ice.udp)),
            KeyValue::new("sigmesh.ice.tcp", l(&info.ice.tcp)),
        ];
        if let Some(room) = info.room.get() {
            a.push(KeyValue::new("sigmesh.room", room.clone()));
        }
        if let Some(peer) = info.peer.get() {
            a.push(KeyValue::new("sigmesh.peer", peer.clone()));
        }
        a
    }
}

/// The upstream handshake, ended by its outcome.
pub struct HandshakeTrace {
    cx: Context,
}

impl HandshakeTrace {
    /// The upstream answered 101.
    pub fn done(self) {
        let span = self.cx.span();
        span.set_attribute(KeyValue::new("http.response.status_code", 101));
        span.end();
    }

    /// The handshake failed: `kind` as in `sigmesh_upstream_errors_total`, `status` when the
    /// upstream answered with something other than 101.
    pub fn failed(self, kind: UpstreamErrorKind, status: Option<u16>, message: &str) {
        let span = self.cx.span();
        if let Some(s) = status {
            span.set_attribute(KeyValue::new("http.response.status_code", i64::from(s)));
        }
        span.set_attribute(KeyValue::new("error.type", kind.as_str()));
        span.set_status(Status::error(message.to_owned()));
        span.end();
    }
}
