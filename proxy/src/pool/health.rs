//! Active health checks: `GET health_check.path` on every endpoint of a pool each `interval`,
//! within `timeout`; a 2xx passes. One connection per check (plain, or TLS as the upstream is
//! dialled), the answer's body never read.

use std::sync::Arc;

use bytes::Bytes;
use http::{Request, header};
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::{Endpoint, Pool};
use crate::io::Stream;
use crate::metrics::Metrics;
use crate::upstream_tls::UpstreamTls;

/// One round: every endpoint checked at once, each result applied.
pub async fn round(pool: Arc<Pool>, metrics: Arc<Metrics>) {
    let Some(check) = pool.check.clone() else {
        return;
    };
    let set = pool.endpoints();
    let mut checks = tokio::task::JoinSet::new();
    for (i, ep) in set.endpoints.iter().enumerate() {
        let (ep, tls, path) = (
            ep.clone(),
            set.tls.get(i).cloned().flatten(),
            check.path.clone(),
        );
        checks.spawn(async move {
            let result = tokio::time::timeout(check.timeout, probe(&ep, tls.as_ref(), &path))
                .await
                .unwrap_or_else(|_| {
                    Err(format!("health check timed out after {:?}", check.timeout))
                });
            (ep, result)
        });
    }
    while let Some(done) = checks.join_next().await {
        if let Ok((ep, result)) = done {
            pool.checked(&ep, result, &metrics);
        }
    }
}

async fn probe(ep: &Endpoint, tls: Option<&UpstreamTls>, path: &str) -> Result<(), String> {
    let tcp = match ep.dial {
        Some(addr) => TcpStream::connect(addr).await,
        None => TcpStream::connect(ep.target.authority.as_str()).await,
    }
    .map_err(|e| format!("health check connect: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let io = match (ep.target.tls, tls) {
        (true, Some(t)) => Stream::TlsClient(Box::new(
            tokio_rustls::TlsConnector::from(t.config.clone())
                .connect(t.server_name.clone(), tcp)
                .await
                .map_err(|e| format!("health check tls: {e}"))?,
        )),
        _ => Stream::Plain(tcp),
    };
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(io))
            .await
            .map_err(|e| format!("health check: {e}"))?;
    let conn = tokio::spawn(conn);
    let req = Request::get(path)
        .header(header::HOST, ep.target.authority.as_str())
        .header(header::USER_AGENT, "sigmesh-health-check")
        .body(Empty::new())
        .map_err(|e| format!("health check request: {e}"))?;
    let resp = sender.send_request(req).await;
    conn.abort();
    let resp = resp.map_err(|e| format!("health check: {e}"))?;
    if resp.status().is_success() {
        Ok(())
    } else {
        Err(format!("health check answered {}", resp.status().as_u16()))
    }
}
