//! Traces: OpenTelemetry spans for WebSocket sessions and HTTP requests, exported over OTLP.
//!
//! ```text
//! client handshake (traceparent?) ──► ws.session (server) ─┬─ ws.upstream_handshake (client) ──traceparent──► upstream
//!                                                          ├─ signaling.setup (offer → answer)
//!                                                          └─ events: ws.message × N (capped)
//! plain HTTP request ──► http.request (server) ──traceparent──► upstream
//! ```
//!
//! - [`Telemetry`] is built once from the `tracing:` block (plus the standard `OTEL_*`
//!   environment variables, see [`export`]); without that block it is off and every hook below
//!   is a `None` check, so the relay path pays nothing.
//! - The sampler is `ParentBased(TraceIdRatio(sample_ratio))`: a client's sampled flag wins.
//!   A span that is not sampled still has a context, which is what the upstream receives.
//! - Export goes through the SDK's batch processor: ending a span is a non-blocking queue push;
//!   a full queue or a failed export drops spans and counts them
//!   (`sigmesh_trace_spans_dropped_total{reason}`); [`Telemetry::shutdown`] flushes.
//! - A session's message events stop at [`max_events`] (`OTEL_SPAN_EVENT_COUNT_LIMIT`, default
//!   128); the rest are counted in `sigmesh_trace_events_dropped_total` (added when the
//!   session ends) and in the span's `sigmesh.events.dropped` attribute.

use std::sync::Arc;
use std::time::Duration;

use http::HeaderMap;
use opentelemetry::trace::{SpanKind, TraceContextExt, Tracer};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use sigmesh_core::config::Tracing;

pub mod export;
mod https;
mod propagation;
mod request;
mod session;

pub use propagation::inject;
pub use request::RequestTrace;
pub use session::{HandshakeTrace, SessionTrace};

/// The instrumentation scope name of every span.
pub const SCOPE: &str = "sigmesh";

/// Default cap of message events per session span.
pub const DEFAULT_MAX_EVENTS: u32 = 128;

/// The per-session cap of message events: `OTEL_SPAN_EVENT_COUNT_LIMIT`, else 128.
pub fn max_events() -> u32 {
    std::env::var("OTEL_SPAN_EVENT_COUNT_LIMIT")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(DEFAULT_MAX_EVENTS)
}

// === metrics ===

/// `reason`
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

/// The Prometheus side of tracing: what was exported, what was lost and why.
#[derive(Clone, Debug, Default)]
pub struct TraceMetrics {
    /// `sigmesh_trace_spans_exported_total`
    pub exported: Counter,
    /// `sigmesh_trace_spans_dropped_total{reason="queue_full"|"export_failed"}`
    pub dropped: Family<ReasonLabel, Counter>,
    /// `sigmesh_trace_events_dropped_total`: message events over the per-session cap.
    pub events_dropped: Counter,
}

impl TraceMetrics {
    /// Creates the counters and registers them in `registry`.
    pub fn register(registry: &mut crate::registry::Registered) -> TraceMetrics {
        let m = TraceMetrics::default();
        registry.register(
            "sigmesh_trace_spans_exported",
            "Spans the OTLP exporter delivered to the collector",
            m.exported.clone(),
        );
        registry.register(
            "sigmesh_trace_spans_dropped",
            "Spans lost before reaching the collector, by reason (queue_full, export_failed)",
            m.dropped.clone(),
        );
        registry.register(
            "sigmesh_trace_events_dropped",
            "Message events not recorded because a session span reached its event cap",
            m.events_dropped.clone(),
        );
        m
    }

    pub(crate) fn drop_spans(&self, reason: &'static str, n: u64) {
        self.dropped
            .get_or_create(&ReasonLabel { reason })
            .inc_by(n);
    }
}

// === Telemetry ===

/// Why tracing could not start.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("tracing needs a Tokio runtime")]
    NoRuntime,
    #[error("OTLP exporter: {0}")]
    Exporter(String),
}

/// The tracing side of the proxy: off, or a tracer with its export pipeline.
#[derive(Clone, Default)]
pub struct Telemetry {
    inner: Option<Arc<Pipeline>>,
}

pub(crate) struct Pipeline {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
    metrics: TraceMetrics,
    max_events: u32,
}

impl Telemetry {
    /// Tracing off: every hook is a no-op.
    pub fn off() -> Telemetry {
        Telemetry { inner: None }
    }

    /// Starts tracing when `config` is present (and `OTEL_SDK_DISABLED` is not `true`). A
    /// pipeline that cannot be built is logged and tracing stays off: the proxy still runs.
    pub fn start(config: Option<&Tracing>, metrics: &TraceMetrics) -> Telemetry {
        let Some(config) = config else {
            return Telemetry::off();
        };
        if std::env::var("OTEL_SDK_DISABLED").is_ok_and(|v| v.trim().eq_ignore_ascii_case("true")) {
            tracing::info!("OTEL_SDK_DISABLED=true: tracing off");
            return Telemetry::off();
        }
        match Telemetry::try_start(config, metrics) {
            Ok(t) => t,
            Err(e) => {
                tracing::error!(error = %e, "tracing could not start; running without it");
                Telemetry::off()
            }
        }
    }

    /// Builds the export pipeline for `config`; needs to run inside a Tokio runtime.
    pub fn try_start(
        config: &Tracing,
        metrics: &TraceMetrics,
    ) -> Result<Telemetry, TelemetryError> {
        let max_events = max_events();
        let provider = export::provider(config, metrics, max_events)?;
        let tracer = opentelemetry::trace::TracerProvider::tracer_with_scope(
            &provider,
            opentelemetry::InstrumentationScope::builder(SCOPE)
                .with_version(env!("CARGO_PKG_VERSION"))
                .build(),
        );
        tracing::info!(
            endpoint = %config.otlp_endpoint,
            protocol = ?config.protocol,
            sample_ratio = config.sample_ratio,
            "tracing on"
        );
        Ok(Telemetry {
            inner: Some(Arc::new(Pipeline {
                provider,
                tracer,
                metrics: metrics.clone(),
                max_events,
            })),
        })
    }

    pub fn is_on(&self) -> bool {
        self.inner.is_some()
    }

    /// Starts the `ws.session` span of an upgrade request (`None` when tracing is off).
    pub fn ws_session(&self, req: &RequestInfo<'_>) -> Option<Arc<SessionTrace>> {
        let p = self.inner.as_ref()?;
        Some(Arc::new(SessionTrace::start(p.clone(), req)))
    }

    /// Starts the `http.request` span of a forwarded request (`None` when tracing is off).
    pub fn http_request(&self, req: &RequestInfo<'_>) -> Option<RequestTrace> {
        let p = self.inner.as_ref()?;
        Some(RequestTrace::start(p, req))
    }

    /// Exports what is queued and stops the pipeline, within a few seconds at most. Runs the
    /// blocking SDK call off the runtime threads, so the export it waits for can run.
    pub async fn shutdown(&self) {
        let Some(p) = self.inner.as_ref() else {
            return;
        };
        let provider = p.provider.clone();
        let flush = tokio::task::spawn_blocking(move || {
            provider.shutdown_with_timeout(Duration::from_secs(5))
        });
        match tokio::time::timeout(Duration::from_secs(6), flush).await {
            Ok(Ok(Ok(()))) => tracing::debug!("traces flushed"),
            Ok(Ok(Err(e))) => tracing::warn!(error = %e, "trace flush incomplete"),
            Ok(Err(_)) | Err(_) => tracing::warn!("trace flush timed out"),
        }
    }
}

/// What a span needs from the request head.
pub struct RequestInfo<'a> {
    pub route: &'a str,
    pub method: &'a str,
    pub path: &'a str,
    pub headers: &'a HeaderMap,
    pub client: std::net::SocketAddr,
}

impl Pipeline {
    /// A span started under `parent`.
    fn span(
        &self,
        name: &'static str,
        kind: SpanKind,
        parent: &Context,
        attributes: Vec<KeyValue>,
    ) -> Context {
        let span = self
            .tracer
            .span_builder(name)
            .with_kind(kind)
            .with_attributes(attributes)
            .start_with_context(&self.tracer, parent);
        parent.with_span(span)
    }
}

/// Attributes of the request head shared by the session and HTTP spans (semantic conventions).
fn request_attributes(req: &RequestInfo<'_>, protocol: &'static str) -> Vec<KeyValue> {
    let mut a = Vec::with_capacity(12);
    let host = req
        .headers
        .get(http::header::HOST)
        .and_then(|v| v.to_str().ok());
    if let Some(authority) = host.and_then(|h| h.parse::<http::uri::Authority>().ok()) {
        a.push(KeyValue::new("server.address", authority.host().to_owned()));
        if let Some(port) = authority.port_u16() {
            a.push(KeyValue::new("server.port", i64::from(port)));
        }
    }
    a.push(KeyValue::new("client.address", req.client.ip().to_string()));
    a.push(KeyValue::new("client.port", i64::from(req.client.port())));
    a.push(KeyValue::new("url.path", req.path.to_owned()));
    a.push(KeyValue::new("http.request.method", req.method.to_owned()));
    a.push(KeyValue::new("network.protocol.name", protocol));
    if let Some(ua) = req
        .headers
        .get(http::header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
    {
        a.push(KeyValue::new("user_agent.original", ua.to_owned()));
    }
    a.push(KeyValue::new("sigmesh.route", req.route.to_owned()));
    a
}
