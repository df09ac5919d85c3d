//! W3C trace context in and out: `traceparent`/`tracestate` (and `baggage`) read from a
//! client's request, and written onto the upstream request from the span that makes it.

use http::HeaderMap;
use opentelemetry::Context;
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry_http::{HeaderExtractor, HeaderInjector};
use opentelemetry_sdk::propagation::{BaggagePropagator, TraceContextPropagator};

/// The parent context a client's request carries: its `traceparent`/`tracestate` (a remote
/// span context) and its `baggage`. An absent or invalid `traceparent` gives a root context.
pub(crate) fn extract(headers: &HeaderMap) -> Context {
    let cx = TraceContextPropagator::new().extract(&HeaderExtractor(headers));
    BaggagePropagator::new().extract_with_context(&cx, &HeaderExtractor(headers))
}

/// Writes `cx`'s span as the request's `traceparent` (and its `tracestate`), replacing
/// whatever the client sent. The client's `baggage` header is forwarded as it came.
pub fn inject(cx: &Context, headers: &mut HeaderMap) {
    headers.remove("tracestate");
    TraceContextPropagator::new().inject_context(cx, &mut HeaderInjector(headers));
}
