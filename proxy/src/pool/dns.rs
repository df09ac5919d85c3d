//! `dns:` upstreams: the URL's host resolved every [`super::DNS_REFRESH`], every A/AAAA record
//! an endpoint (a Kubernetes headless Service), sorted so every replica sees one order. A
//! failed or empty answer keeps the endpoints there are (a DNS hiccup drops no pod).

use std::sync::Arc;

use super::Pool;
use crate::metrics::Metrics;

/// Most addresses taken from one answer.
const MAX_ADDRS: usize = sigmesh_core::balance::MAX_ENDPOINTS;

/// Resolves `pool`'s name once and applies the answer.
pub async fn refresh(pool: Arc<Pool>, metrics: Arc<Metrics>) {
    let Some(t) = pool.dns.clone() else {
        return;
    };
    let port = t
        .authority
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse::<u16>().ok())
        .unwrap_or(if t.tls { 443 } else { 80 });
    let host = t.host().to_owned();
    let answer = tokio::time::timeout(
        super::DNS_REFRESH,
        tokio::net::lookup_host((host.as_str(), port)),
    )
    .await;
    let mut addrs: Vec<std::net::SocketAddr> = match answer {
        Ok(Ok(a)) => a.take(MAX_ADDRS).collect(),
        Ok(Err(e)) => {
            tracing::warn!(route = %pool.route, upstream = %pool.upstream, name = %host, error = %e, "dns: no answer; keeping the endpoints there are");
            return;
        }
        Err(_) => {
            tracing::warn!(route = %pool.route, upstream = %pool.upstream, name = %host, "dns: timed out; keeping the endpoints there are");
            return;
        }
    };
    if addrs.is_empty() {
        tracing::warn!(route = %pool.route, upstream = %pool.upstream, name = %host, "dns: an empty answer; keeping the endpoints there are");
        return;
    }
    addrs.sort_unstable();
    addrs.dedup();
    let before: Vec<String> = pool
        .endpoints()
        .endpoints
        .iter()
        .map(|e| e.id.clone())
        .collect();
    if pool.resolved(&addrs) {
        let now = pool.endpoints();
        for gone in before
            .iter()
            .filter(|id| !now.endpoints.iter().any(|e| e.id == **id))
        {
            metrics.endpoint_gone(&pool.route, &pool.upstream, gone);
        }
        tracing::info!(route = %pool.route, upstream = %pool.upstream, name = %host, endpoints = addrs.len(), "dns: endpoints changed");
        for ep in &pool.endpoints().endpoints {
            super::record(&metrics, &pool, ep);
        }
    }
}
