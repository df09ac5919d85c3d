//! # sigmesh-core — the sans-IO policy core of sigmesh
//!
//! Everything sigmesh *decides* lives here once, so the standalone proxy (`proxy/`) and the
//! Envoy/Istio Wasm filter (`filter-wasm/`) behave the same way.
//!
//! ## I/O contract
//! - No sockets, no files, no threads, no clocks, no randomness. Callers pass bytes in
//!   and get values or verdicts out.
//! - Time is always an argument: `now` is a [`core::time::Duration`] measured from any fixed,
//!   monotonic origin the caller chooses (the proxy uses process start).
//! - Randomness is injected: where a choice is random (a split without a sticky key), the caller
//!   passes the random number.
//! - Builds for `wasm32-wasip1` and imports nothing from the host.
//!
//! ## Modules
//! - [`config`]: the contract's schema, YAML/JSON loading, validation with key paths and lines.
//! - [`route`]: the first-match route table.
//! - [`bucket`]: token buckets and bounded keyed bucket sets.
//! - [`split`]: the stable sticky hash and weighted canary split.
//! - [`signal`]: reading signaling messages: kind, dialect, room, peer, ICE candidates, call setup.
//! - [`ice`]: the RFC 8839 ICE candidate parser and scanner.
//! - [`credentials`]: TURN REST API credentials (coturn `use-auth-secret`).
//! - [`frame`]: the streaming WebSocket frame reader (boundaries, unmasking, cut points).
//! - [`compiled`]: a config compiled once for a front end (route table, splitters, parsed
//!   upstream URLs, what the front end can serve).
//! - [`request`]: **the request phase** — request facts in, one verdict out.
//! - [`session`]: **the session phase** — one object per WebSocket, fed bytes and transport
//!   events, returning what to forward and what happened.
//! - [`label`]: the metric label values both front ends print.
//! - [`turn`]: STUN/TURN reading for the TURN relay, peer-address policy, allocation table.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod balance;
pub mod bucket;
pub mod compiled;
pub mod config;
pub mod credentials;
pub mod engine_io;
pub mod frame;
pub mod ice;
pub mod label;
pub mod request;
pub mod rollout;
pub mod route;
pub mod session;
pub mod signal;
pub mod split;
pub mod turn;
