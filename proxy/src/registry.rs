//! The Prometheus registry with the name of every metric registered in it (its own module:
//! both `metrics` and `telemetry` register into it).

use prometheus_client::registry::Registry;

/// The registry, and the name of every metric registered in it (Prometheus text leaves out a
/// family that has no series yet; [`Metrics::registered`](crate::metrics::Metrics::registered) lists them all).
#[derive(Default)]
pub struct Registered {
    pub(crate) registry: Registry,
    pub(crate) names: Vec<&'static str>,
}

impl Registered {
    /// `Registry::register`, remembering the name.
    pub fn register(
        &mut self,
        name: &'static str,
        help: &'static str,
        metric: impl prometheus_client::registry::Metric,
    ) {
        self.names.push(name);
        self.registry.register(name, help, metric);
    }
}
