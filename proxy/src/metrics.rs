//! Prometheus metrics, named as in the contract.
//!
//! Counters are registered without their `_total` suffix: prometheus-client appends it.
//! Label values that come from the network (signaling message types) are folded into a fixed
//! set first, so a client cannot grow the label space.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

pub use crate::registry::Registered;
use sigmesh_core::label::{LimitKind, Outcome, UpstreamErrorKind};

/// `route, upstream, outcome`
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConnLabels {
    pub route: String,
    pub upstream: String,
    pub outcome: &'static str,
}

/// `route, upstream`
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteUpstream {
    pub route: String,
    pub upstream: String,
}

/// `route, upstream, direction, type`
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MessageLabels {
    pub route: String,
    pub upstream: String,
    pub direction: &'static str,
    #[prometheus(flatten)]
    pub kind: KindLabel,
}

/// The `type` label (a keyword in Rust, hence the wrapper).
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct KindLabel(pub &'static str);

impl EncodeLabelSet for KindLabel {
    fn encode(
        &self,
        encoder: &mut prometheus_client::encoding::LabelSetEncoder<'_>,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeLabel;
        ("type", self.0).encode(encoder.encode_label())
    }
}

/// `route, limit`
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LimitLabels {
    pub route: String,
    pub limit: &'static str,
}

/// `route, upstream, kind`
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamErrorLabels {
    pub route: String,
    pub upstream: String,
    pub kind: &'static str,
}

/// `route, upstream, endpoint`
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointLabels {
    pub route: String,
    pub upstream: String,
    pub endpoint: String,
}

/// `route, upstream, result`
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReconnectLabels {
    pub route: String,
    pub upstream: String,
    pub result: &'static str,
}

/// `route`
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabel {
    pub route: String,
}

/// `route, reason`
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AbortLabels {
    pub route: String,
    pub reason: &'static str,
}

/// `route, upstream, code_class`
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CloseLabels {
    pub route: String,
    pub upstream: String,
    pub code_class: &'static str,
}

/// `op`
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpLabel {
    pub op: &'static str,
}

/// `result`
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: &'static str,
}

/// Every metric sigmesh exports, and the registry that encodes them.
pub struct Metrics {
    registry: Registry,
    /// Every metric's name as registered (counters without `_total`).
    registered: Vec<&'static str>,
    pub connections: Family<ConnLabels, Counter>,
    pub connections_active: Family<RouteUpstream, Gauge>,
    pub messages: Family<MessageLabels, Counter>,
    pub rate_limited: Family<LimitLabels, Counter>,
    pub upstream_errors: Family<UpstreamErrorLabels, Counter>,
    pub config_reloads: Family<ResultLabel, Counter>,
    pub http_requests: Family<ConnLabels, Counter>,
    /// `sigmesh_tls_handshake_errors_total`: TLS handshakes on `listen` that failed or timed out.
    pub tls_handshake_errors: Counter,
    /// `sigmesh_credentials_auth_total{result}`: allowed, denied, error, timeout.
    pub credentials_auth: Family<ResultLabel, Counter>,
    /// `sigmesh_upstream_endpoint_healthy{route,upstream,endpoint}`: 1 or 0.
    pub endpoint_healthy: Family<EndpointLabels, Gauge>,
    /// `sigmesh_drain_pending_sessions`: sessions a drain will close and has not yet.
    pub drain_pending: Gauge,
    /// `sigmesh_session_reconnects_total{route,upstream,result}`: ok, failed.
    pub session_reconnects: Family<ReconnectLabels, Counter>,
    /// `sigmesh_reconnect_lost_messages_total{route,upstream}`: client messages that were
    /// waiting for an endpoint that died, dropped by a reconnect.
    pub reconnect_lost: Family<RouteUpstream, Counter>,
    /// `sigmesh_cluster_errors_total{op}`: decisions `cluster.on_error` made because Redis
    /// failed, timed out or was behind an open breaker (connections, sessions, rooms), and
    /// lease upkeep that failed (refresh, release).
    pub cluster_errors: Family<OpLabel, Counter>,
    /// `sigmesh_cluster_breaker_open`: 1 while the breaker in front of Redis is open.
    pub cluster_breaker_open: Gauge,
    /// `sigmesh_session_closes_total{route,upstream,code_class}`: ended sessions by the class
    /// of their first close.
    pub session_closes: Family<CloseLabels, Counter>,
    /// `sigmesh_rollout_step{route}`: the rollout's step (1-based; 0 before it starts and
    /// after an abort).
    pub rollout_step: Family<RouteLabel, Gauge>,
    /// `sigmesh_rollout_aborts_total{route,reason}`.
    pub rollout_aborts: Family<AbortLabels, Counter>,
    /// `sigmesh_trace_*`: spans exported and dropped, message events over the cap.
    pub trace: crate::telemetry::TraceMetrics,
    /// `sigmesh_turn_*`: TURN relay allocations, relayed bytes, messages.
    pub turn: TurnMetrics,
    /// `sigmesh_ice_candidates_total`, `sigmesh_call_setup_seconds`.
    pub signal: SignalMetrics,
}

impl Metrics {
    pub fn new() -> Arc<Self> {
        let mut registry = Registered::default();
        let connections = Family::default();
        registry.register(
            "sigmesh_connections",
            "WebSocket connections by route, upstream and outcome",
            connections.clone(),
        );
        let connections_active = Family::default();
        registry.register(
            "sigmesh_connections_active",
            "Live proxied WebSocket sessions",
            connections_active.clone(),
        );
        let messages = Family::default();
        registry.register(
            "sigmesh_messages",
            "WebSocket messages relayed or dropped (direction in: client to upstream, out: upstream to client)",
            messages.clone(),
        );
        let rate_limited = Family::default();
        registry.register(
            "sigmesh_rate_limited",
            "Decisions refused by a token bucket, by route and limit (connections, messages, rooms)",
            rate_limited.clone(),
        );
        let upstream_errors = Family::default();
        registry.register(
            "sigmesh_upstream_errors",
            "Upstream failures by kind (connect, handshake, timeout, reset, protocol)",
            upstream_errors.clone(),
        );
        let config_reloads = Family::default();
        registry.register(
            "sigmesh_config_reloads",
            "Config reload attempts by result (success, error)",
            config_reloads.clone(),
        );
        let http_requests = Family::default();
        registry.register(
            "sigmesh_http_requests",
            "Plain HTTP requests forwarded, by route, upstream and outcome (status class or error)",
            http_requests.clone(),
        );
        let tls_handshake_errors = Counter::default();
        registry.register(
            "sigmesh_tls_handshake_errors",
            "TLS handshakes on listen that failed or did not finish in time",
            tls_handshake_errors.clone(),
        );
        let credentials_auth = Family::default();
        registry.register(
            "sigmesh_credentials_auth",
            "TURN credential requests decided by turn.credentials_auth, by result (allowed, denied, error, timeout)",
            credentials_auth.clone(),
        );
        let endpoint_healthy = Family::default();
        registry.register(
            "sigmesh_upstream_endpoint_healthy",
            "Whether an upstream endpoint gets new sessions (1) or not (0: failed checks, ejected)",
            endpoint_healthy.clone(),
        );
        let drain_pending = Gauge::default();
        registry.register(
            "sigmesh_drain_pending_sessions",
            "Live sessions a drain (shutdown or upstream) will close and has not closed yet",
            drain_pending.clone(),
        );
        let session_reconnects = Family::default();
        registry.register(
            "sigmesh_session_reconnects",
            "Sessions moved to another endpoint when theirs failed (on_upstream_failure: reconnect), by result",
            session_reconnects.clone(),
        );
        let reconnect_lost = Family::default();
        registry.register(
            "sigmesh_reconnect_lost_messages",
            "Client messages waiting for a failed endpoint, dropped when the session moved",
            reconnect_lost.clone(),
        );
        let cluster_errors = Family::default();
        registry.register(
            "sigmesh_cluster_errors",
            "Decisions made by cluster.on_error because Redis failed, timed out or its breaker was open, by op",
            cluster_errors.clone(),
        );
        let cluster_breaker_open = Gauge::default();
        registry.register(
            "sigmesh_cluster_breaker_open",
            "1 while the circuit breaker in front of cluster.redis is open (no call is made)",
            cluster_breaker_open.clone(),
        );
        let session_closes = Family::default();
        registry.register(
            "sigmesh_session_closes",
            "Ended sessions by route, upstream and the class of their first close (normal, going_away, restart, policy, too_big, error, upstream_gone, no_close, other, app)",
            session_closes.clone(),
        );
        let rollout_step = Family::default();
        registry.register(
            "sigmesh_rollout_step",
            "The step a route's rollout is at (1-based; 0 before it starts and after an abort)",
            rollout_step.clone(),
        );
        let rollout_aborts = Family::default();
        registry.register(
            "sigmesh_rollout_aborts",
            "Rollouts aborted, by route and reason (abnormal_close_ratio, upstream_error_ratio, setup_p90_ratio, manual)",
            rollout_aborts.clone(),
        );
        let trace = crate::telemetry::TraceMetrics::register(&mut registry);
        let turn = TurnMetrics::register(&mut registry);
        let signal = SignalMetrics::register(&mut registry);
        Arc::new(Metrics {
            registry: registry.registry,
            registered: registry.names,
            connections,
            connections_active,
            messages,
            rate_limited,
            upstream_errors,
            config_reloads,
            http_requests,
            tls_handshake_errors,
            credentials_auth,
            endpoint_healthy,
            drain_pending,
            session_reconnects,
            reconnect_lost,
            cluster_errors,
            cluster_breaker_open,
            session_closes,
            rollout_step,
            rollout_aborts,
            trace,
            turn,
            signal,
        })
    }

    /// Prometheus text exposition.
    /// The name of every metric, as registered (counters without their `_total`).
    pub fn registered(&self) -> &[&'static str] {
        &self.registered
    }

    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(4096);
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }

    /// Counts a session in `sigmesh_drain_pending_sessions` until the guard is dropped.
    pub fn drain_pending_guard(&self) -> GaugeGuard {
        self.drain_pending.inc();
        GaugeGuard(self.drain_pending.clone())
    }

    /// An endpoint's health, as its gauge.
    pub fn endpoint_healthy(&self, route: &str, upstream: &str, endpoint: &str, healthy: bool) {
        self.endpoint_healthy
            .get_or_create(&EndpointLabels {
                route: route.to_owned(),
                upstream: upstream.to_owned(),
                endpoint: endpoint.to_owned(),
            })
            .set(i64::from(healthy));
    }

    /// An endpoint left its pool (DNS): its gauge goes, so churn does not grow the families.
    pub fn endpoint_gone(&self, route: &str, upstream: &str, endpoint: &str) {
        self.endpoint_healthy.remove(&EndpointLabels {
            route: route.to_owned(),
            upstream: upstream.to_owned(),
            endpoint: endpoint.to_owned(),
        });
    }

    pub fn connection(&self, route: &str, upstream: &str, outcome: Outcome) {
        self.connections
            .get_or_create(&ConnLabels {
                route: route.to_owned(),
                upstream: upstream.to_owned(),
                outcome: outcome.as_str(),
            })
            .inc();
    }

    pub fn rate_limited(&self, route: &str, limit: LimitKind) {
        self.rate_limited
            .get_or_create(&LimitLabels {
                route: route.to_owned(),
                limit: limit.as_str(),
            })
            .inc();
    }

    pub fn upstream_error(&self, route: &str, upstream: &str, kind: UpstreamErrorKind) {
        self.upstream_errors
            .get_or_create(&UpstreamErrorLabels {
                route: route.to_owned(),
                upstream: upstream.to_owned(),
                kind: kind.as_str(),
            })
            .inc();
    }

    pub fn reload(&self, ok: bool) {
        self.config_reloads
            .get_or_create(&ResultLabel {
                result: if ok { "success" } else { "error" },
            })
            .inc();
    }
}

// === signaling: ICE candidates and call setup ===

/// `route, type, protocol`: `type` is host, srflx, prflx, relay or other; `protocol` udp, tcp or
/// other (both folded by `sigmesh_core::ice`, never raw text from the network).
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct IceLabels {
    pub route: String,
    pub typ: &'static str,
    pub protocol: &'static str,
}

impl EncodeLabelSet for IceLabels {
    fn encode(
        &self,
        encoder: &mut prometheus_client::encoding::LabelSetEncoder<'_>,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeLabel;
        ("route", self.route.as_str()).encode(encoder.encode_label())?;
        ("type", self.typ).encode(encoder.encode_label())?;
        ("protocol", self.protocol).encode(encoder.encode_label())
    }
}

/// Call setup buckets, in seconds: LAN calls take tens of milliseconds, calls through TURN or a
/// person answering take seconds.
pub const CALL_SETUP_BUCKETS: [f64; 12] = [
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

fn call_setup_histogram() -> Histogram {
    Histogram::new(CALL_SETUP_BUCKETS)
}

/// Metrics of what sigmesh reads in signaling messages.
pub struct SignalMetrics {
    /// ICE candidates sent by clients (direction in: each candidate is counted once, where it
    /// enters sigmesh from the client that gathered it).
    pub ice_candidates: Family<IceLabels, Counter>,
    /// Offer to answer, per session (each offer/answer pair).
    pub call_setup: Family<RouteUpstream, Histogram, fn() -> Histogram>,
}

impl SignalMetrics {
    pub fn register(registry: &mut Registered) -> SignalMetrics {
        let ice_candidates = Family::default();
        registry.register(
            "sigmesh_ice_candidates",
            "ICE candidates clients sent through signaling, by candidate type and transport protocol",
            ice_candidates.clone(),
        );
        let call_setup = Family::new_with_constructor(call_setup_histogram as fn() -> Histogram);
        registry.register(
            "sigmesh_call_setup_seconds",
            "Call setup time: an SDP offer to its answer, either direction, per session",
            call_setup.clone(),
        );
        SignalMetrics {
            ice_candidates,
            call_setup,
        }
    }
}

// === the TURN relay ===

/// `direction`: `in` is client to peers (Send indications, ChannelData from the client), `out`
/// is peers to client (Data indications, ChannelData from the server).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DirectionLabel {
    pub direction: &'static str,
}

/// `type, action`
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TurnMessageLabels {
    #[prometheus(flatten)]
    pub kind: KindLabel,
    pub action: &'static str,
}

/// The TURN relay's metrics.
#[derive(Clone, Default)]
pub struct TurnMetrics {
    pub allocations_active: Gauge,
    pub relayed_bytes: Family<DirectionLabel, Counter>,
    pub messages: Family<TurnMessageLabels, Counter>,
}

impl TurnMetrics {
    pub fn register(registry: &mut Registered) -> TurnMetrics {
        let m = TurnMetrics::default();
        registry.register(
            "sigmesh_turn_allocations_active",
            "TURN allocations live on the relay",
            m.allocations_active.clone(),
        );
        registry.register(
            "sigmesh_turn_relayed_bytes",
            "Application bytes relayed through TURN allocations (direction in: client to peers, out: peers to client)",
            m.relayed_bytes.clone(),
        );
        registry.register(
            "sigmesh_turn_messages",
            "STUN/TURN messages seen by the relay, by type (unknown: not understood, passed through) and action (forwarded, refused, dropped)",
            m.messages.clone(),
        );
        m
    }
}

/// A gauge incremented while this lives.
pub struct GaugeGuard(Gauge);

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}
