//! The `http.request` span of a plainly forwarded HTTP request.

use std::sync::Arc;

use http::HeaderMap;
use opentelemetry::trace::{SpanKind, Status, TraceContextExt};
use opentelemetry::{Context, KeyValue};

use super::{Pipeline, RequestInfo, propagation, request_attributes};

/// One forwarded request, from its head to the upstream's response head.
pub struct RequestTrace {
    cx: Context,
}

impl RequestTrace {
    pub(super) fn start(p: &Arc<Pipeline>, req: &RequestInfo<'_>) -> RequestTrace {
        let parent = propagation::extract(req.headers);
        let cx = p.span(
            "http.request",
            SpanKind::Server,
            &parent,
            request_attributes(req, "http"),
        );
        RequestTrace { cx }
    }

    /// The upstream the split picked.
    pub fn picked(&self, upstream: &str) {
        self.cx
            .span()
            .set_attribute(KeyValue::new("sigmesh.upstream", upstream.to_owned()));
    }

    /// Sets the upstream request's `traceparent` to this span.
    pub fn inject(&self, headers: &mut HeaderMap) {
        propagation::inject(&self.cx, headers);
    }

    /// The upstream did not answer: `kind` is `connect`, `reset`, `timeout` or `config`.
    pub fn error(&self, kind: &'static str) {
        self.cx
            .span()
            .set_attribute(KeyValue::new("error.type", kind));
    }

    /// Ends the span with the status sent to the client (a 5xx marks it as an error).
    pub fn finish(self, status: u16) {
        let span = self.cx.span();
        span.set_attribute(KeyValue::new(
            "http.response.status_code",
            i64::from(status),
        ));
        if status >= 500 {
            span.set_status(Status::error(format!("status {status}")));
        }
        span.end();
    }
}
