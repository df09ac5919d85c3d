//! sigmesh, the standalone proxy: a tokio shell around `sigmesh-core`. Core decides; these
//! modules translate sockets and hyper into core calls, and core's verdicts back into actions.
//!
//! The request path, top to bottom: [`listener`] → [`request`] (core's request phase) →
//! [`ws`] (upgrades and the session task, over core's session phase) or [`forward`].
//!
//! - [`app`]: starting, draining and stopping the proxy; `sigmesh check`'s build check;
//! - [`listener`]: the main listener (accept, HTTP/1.1 connections, the drain);
//! - [`request`]: one request: facts to core, core's verdict to a response, upgrade or forward;
//! - [`ws`]: WebSocket upgrades both ways, the session task and its relay;
//! - [`forward`]: plain HTTP forwarding;
//! - [`state`]: the config generation in force (core's compiled config, live weights, buckets)
//!   and the process-wide state;
//! - [`admin`]: health, readiness, metrics, sessions, config, weights;
//! - [`reload`]: SIGHUP and file-change reloads;
//! - [`metrics`]: the Prometheus registry and the contract's metric families;
//! - [`sessions`]: the live session table behind `/sessions`;
//! - [`telemetry`]: OpenTelemetry spans and their OTLP export;
//! - [`turn_relay`]: the TURN relay (UDP and TCP) over core's TURN tracker;
//! - [`http_util`]: small HTTP helpers (bodies, hop-by-hop headers, forwarding headers);
//! - [`clock`]: the monotonic and wall clocks core calls are given;
//! - [`demo`]: `sigmesh demo`.
#![forbid(unsafe_code)]

pub mod admin;
pub mod app;
pub mod clock;
pub mod cluster;
pub mod credentials_auth;
pub mod demo;
pub mod drain;
pub mod forward;
pub mod http_util;
pub mod https_pool;
pub mod io;
pub mod listener;
pub mod metrics;
pub mod pool;
pub mod registry;
pub mod reload;
pub mod request;
pub mod rollout;
pub mod rollout_run;
pub mod sessions;
pub mod state;
pub mod telemetry;
pub mod tls;
pub mod turn_relay;
pub mod upstream_tls;
pub mod ws;
