//! The export pipeline: sampler, resource, the SDK's batch processor and the OTLP exporter.
//!
//! ```text
//! span.end() ─► Counting (queue bound, drop count) ─► BatchSpanProcessor (its own thread)
//!                                                        └─► OnRuntime ─spawn─► OTLP exporter (tonic / hyper, on Tokio)
//! ```
//!
//! The SDK's batch processor exports from its own thread with a plain executor, but the tonic
//! and hyper clients need Tokio's reactor and timers: [`OnRuntime`] runs each export as a task
//! on the proxy's runtime and waits for it there. Ending a span never waits on any of this.
//!
//! Environment (standard OpenTelemetry variables, applied over the config file):
//! - `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, `OTEL_EXPORTER_OTLP_ENDPOINT`: replace
//!   `otlp_endpoint` (the HTTP exporter appends `/v1/traces` to the generic one);
//! - `OTEL_SERVICE_NAME`, or `service.name` in `OTEL_RESOURCE_ATTRIBUTES`: replace
//!   `service_name`; the other `OTEL_RESOURCE_ATTRIBUTES` are added to the resource;
//! - `OTEL_EXPORTER_OTLP_HEADERS`, `_TIMEOUT`, `_COMPRESSION` (and their `_TRACES_` forms),
//!   `OTEL_BSP_MAX_QUEUE_SIZE`, `OTEL_BSP_SCHEDULE_DELAY`, `OTEL_BSP_MAX_EXPORT_BATCH_SIZE`:
//!   as the OpenTelemetry SDK defines them;
//! - `OTEL_SPAN_EVENT_COUNT_LIMIT`: the per-session message event cap;
//! - `OTEL_SDK_DISABLED=true`: tracing off.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig, WithTonicConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracerProvider, Span, SpanData,
    SpanExporter, SpanProcessor,
};
use sigmesh_core::config::{OtlpProtocol, Tracing};

use super::{TelemetryError, TraceMetrics};

/// The longest one export may take before its spans count as lost.
const EXPORT_WAIT: Duration = Duration::from_secs(30);

/// Builds the tracer provider for `config`. Must run inside a Tokio runtime.
pub(super) fn provider(
    config: &Tracing,
    metrics: &TraceMetrics,
    max_events: u32,
) -> Result<SdkTracerProvider, TelemetryError> {
    let handle = tokio::runtime::Handle::try_current().map_err(|_| TelemetryError::NoRuntime)?;
    let exporter = exporter(config)?;
    let batch = BatchConfigBuilder::default().build();
    // The SDK's default queue (2048) unless OTEL_BSP_MAX_QUEUE_SIZE says otherwise.
    let capacity = env_usize("OTEL_BSP_MAX_QUEUE_SIZE").unwrap_or(2048).max(1);
    let pending = Arc::new(AtomicUsize::new(0));
    let exporter = OnRuntime {
        inner: Arc::new(exporter),
        handle,
        pending: pending.clone(),
        metrics: metrics.clone(),
    };
    let processor = Counting {
        inner: BatchSpanProcessor::builder(exporter)
            .with_batch_config(batch)
            .build(),
        pending,
        capacity,
        metrics: metrics.clone(),
    };
    Ok(SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_sampler(
            if config.parent_sampling == sigmesh_core::config::ParentSampling::Follow {
                Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(config.sample_ratio)))
            } else {
                Sampler::TraceIdRatioBased(config.sample_ratio)
            },
        )
        .with_resource(resource(config))
        // Room for the session's own events beyond the message events it caps itself.
        .with_max_events_per_span(max_events.saturating_add(16))
        .build())
}

fn env_usize(name: &str) -> Option<usize> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

fn env_set(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| !v.trim().is_empty())
}

/// `service.name` from the config unless the environment names the service; the SDK's
/// detectors add `OTEL_RESOURCE_ATTRIBUTES` and the `telemetry.sdk.*` attributes.
fn resource(config: &Tracing) -> Resource {
    let env_names_service = env_set("OTEL_SERVICE_NAME")
        || std::env::var("OTEL_RESOURCE_ATTRIBUTES").is_ok_and(|v| {
            v.split(',')
                .any(|kv| kv.split('=').next().map(str::trim) == Some("service.name"))
        });
    let mut b = Resource::builder();
    if !env_names_service {
        b = b.with_service_name(config.service_name.clone());
    }
    b.with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
        .build()
}

/// The OTLP exporter of `config.protocol`, to the config's endpoint unless the environment
/// names one.
fn exporter(config: &Tracing) -> Result<opentelemetry_otlp::SpanExporter, TelemetryError> {
    let from_env =
        env_set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") || env_set("OTEL_EXPORTER_OTLP_ENDPOINT");
    let built = match config.protocol {
        OtlpProtocol::Grpc => {
            let b = opentelemetry_otlp::SpanExporter::builder().with_tonic();
            let b = if from_env {
                b
            } else {
                b.with_endpoint(config.otlp_endpoint.clone())
            };
            // tonic's own TLS would be a second TLS stack: the channel dials through ours.
            let b = if config.otlp_endpoint.starts_with("https:") {
                let connector = super::https::GrpcConnector::new(config.ca.as_deref())
                    .map_err(TelemetryError::Exporter)?;
                let endpoint =
                    tonic::transport::Endpoint::from_shared(config.otlp_endpoint.clone())
                        .map_err(|e| TelemetryError::Exporter(e.to_string()))?
                        .timeout(Duration::from_secs(10));
                b.with_channel(endpoint.connect_with_connector_lazy(connector))
            } else {
                b
            };
            b.build()
        }
        OtlpProtocol::Http => {
            let b = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_protocol(Protocol::HttpBinary);
            let b = if from_env {
                b
            } else {
                b.with_endpoint(http_traces_url(&config.otlp_endpoint))
            };
            // The SDK's hyper client has no TLS: ours does, for an https:// collector.
            let b = if config.otlp_endpoint.starts_with("https:") {
                let client = super::https::HttpsClient::new(config.ca.as_deref())
                    .map_err(TelemetryError::Exporter)?;
                b.with_http_client(client)
            } else {
                b
            };
            b.build()
        }
    };
    built.map_err(|e| TelemetryError::Exporter(e.to_string()))
}

/// `http://host:4318` → `http://host:4318/v1/traces`; a URL with a path is kept as it is.
pub fn http_traces_url(endpoint: &str) -> String {
    let trimmed = endpoint.trim_end_matches('/');
    let has_path = trimmed
        .split_once("://")
        .is_some_and(|(_, rest)| rest.contains('/'));
    if has_path {
        endpoint.to_owned()
    } else {
        format!("{trimmed}/v1/traces")
    }
}

// === Counting ===

/// In front of the batch processor: bounds the spans in flight (queued or being exported) by
/// the processor's queue size, so a span that would not fit is dropped here, where it is
/// counted, instead of silently inside the SDK.
#[derive(Debug)]
struct Counting {
    inner: BatchSpanProcessor,
    pending: Arc<AtomicUsize>,
    capacity: usize,
    metrics: TraceMetrics,
}

impl SpanProcessor for Counting {
    fn on_start(&self, span: &mut Span, cx: &Context) {
        self.inner.on_start(span, cx);
    }

    fn on_end(&self, span: SpanData) {
        if self.pending.fetch_add(1, Ordering::AcqRel) >= self.capacity {
            self.pending.fetch_sub(1, Ordering::AcqRel);
            self.metrics.drop_spans("queue_full", 1);
            return;
        }
        self.inner.on_end(span);
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

// === OnRuntime ===

/// Runs the wrapped exporter's exports on the Tokio runtime and counts their outcome.
#[derive(Debug)]
struct OnRuntime<E> {
    inner: Arc<E>,
    handle: tokio::runtime::Handle,
    pending: Arc<AtomicUsize>,
    metrics: TraceMetrics,
}

impl<E: SpanExporter + 'static> SpanExporter for OnRuntime<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let n = batch.len();
        let inner = self.inner.clone();
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        // The batch processor's thread is not a runtime thread: the export runs as a task and
        // this thread waits for its answer (bounded; a runtime that is gone answers at once).
        self.handle.spawn(async move {
            let _ = tx.send(inner.export(batch).await);
        });
        let result = match rx.recv_timeout(EXPORT_WAIT) {
            Ok(r) => r,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                Err(OTelSdkError::Timeout(EXPORT_WAIT))
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => Err(
                OTelSdkError::InternalFailure("the runtime stopped before the export ended".into()),
            ),
        };
        self.pending.fetch_sub(n, Ordering::AcqRel);
        match &result {
            Ok(()) => {
                self.metrics.exported.inc_by(n as u64);
            }
            Err(e) => {
                tracing::debug!(error = %e, spans = n, "trace export failed");
                self.metrics.drop_spans("export_failed", n as u64);
            }
        }
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        // Called once, before the first export, while no export holds a clone.
        match Arc::get_mut(&mut self.inner) {
            Some(inner) => inner.set_resource(resource),
            None => tracing::warn!("trace exporter busy; resource not updated"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::http_traces_url;

    #[test]
    fn http_endpoint_gets_the_traces_path() {
        assert_eq!(
            http_traces_url("http://127.0.0.1:4318"),
            "http://127.0.0.1:4318/v1/traces"
        );
        assert_eq!(
            http_traces_url("http://127.0.0.1:4318/"),
            "http://127.0.0.1:4318/v1/traces"
        );
        assert_eq!(
            http_traces_url("http://c:4318/custom/traces"),
            "http://c:4318/custom/traces"
        );
    }
}
