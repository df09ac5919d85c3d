//! # sigmesh-filter — sigmesh's policy inside Envoy and Istio
//!
//! A proxy-wasm HTTP filter (a `cdylib` for `wasm32-wasip1`) that applies the routes, limits and
//! canary split of a sigmesh config to the traffic of the Envoy it runs in, with
//! `sigmesh-core`'s own code: it has no policy of its own and only translates proxy-wasm
//! callbacks into core calls and core verdicts back into actions.
//!
//! - [`settings`]: the plugin configuration (the contract's `routes` and `turn` as JSON, plus a
//!   `filter` section);
//! - [`stream`]: one HTTP stream: request headers to a verdict (403, 429, credentials, the
//!   split header), body chunks through core's frame reader;
//! - [`shared`]: token buckets in proxy-wasm shared data, shared by all worker threads, updated
//!   by compare-and-swap;
//! - [`metrics`]: the contract's metrics as Envoy stats `sigmesh.*`;
//! - `host` (wasm32 only): the proxy-wasm `RootContext` / `HttpContext` glue.
//!
//! Build: `cargo build -p sigmesh-filter --target wasm32-wasip1 --profile wasm-release`, then
//! load `target/wasm32-wasip1/wasm-release/sigmesh_filter.wasm`. See `docs/istio.md`.

pub mod metrics;
pub mod settings;
pub mod shared;
pub mod stream;

#[cfg(target_arch = "wasm32")]
mod host;
