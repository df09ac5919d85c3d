//! sigmesh, the standalone proxy: a tokio shell around `sigmesh-core`.
//!
//! - [`server`]: the main listener (routing, 404/429/403, dispatch);
//! - [`ws`]: WebSocket handshake both ways and the message relay;
//! - [`forward`]: plain HTTP forwarding;
//! - [`admin`]: health, readiness, metrics, sessions, config, weights;
//! - [`reload`]: SIGHUP and file-change reloads;
//! - [`app`]: wiring it together, signals and the drain;
//! - [`demo`]: `sigmesh demo`;
//! - [`credentials`]: the TURN REST credentials endpoint;
//! - [`telemetry`]: OpenTelemetry spans and their OTLP export.
#![forbid(unsafe_code)]

pub mod admin;
pub mod app;
pub mod credentials;
pub mod demo;
pub mod forward;
pub mod http_util;
pub mod metrics;
pub mod reload;
pub mod server;
pub mod sessions;
pub mod state;
pub mod telemetry;
pub mod turn_relay;
pub mod upstream;
pub mod ws;
