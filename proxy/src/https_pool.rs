//! Pooled HTTP/1.1 connections to `https://` upstreams of plain routes: hyper's legacy client
//! over a connector that dials TCP and does TLS as [`crate::upstream_tls`] says (CA, SNI), so
//! Engine.IO polling and other plain requests reuse their TLS connections instead of paying a
//! handshake each.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use hyper::body::Incoming;
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::{TokioExecutor, TokioIo};

use crate::io::Stream;
use crate::upstream_tls::UpstreamTls;

/// Most clients kept (one per distinct TLS setup); past it a new one replaces them all.
const MAX_CLIENTS: usize = 256;

/// A TLS connection the pool can hold.
pub struct TlsConn(TokioIo<Stream>);

impl Connection for TlsConn {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

impl Read for TlsConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl Write for TlsConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// A failed TLS handshake, told apart from a failed connect (`kind="tls"`).
#[derive(Debug, thiserror::Error)]
#[error("tls: {0}")]
pub struct TlsHandshake(io::Error);

/// Whether `e` (or what caused it) is a failed TLS handshake.
pub fn is_tls(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        // An io::Error's `source()` skips what it wraps: look inside it.
        let wrapped = err
            .downcast_ref::<io::Error>()
            .and_then(io::Error::get_ref)
            .is_some_and(|inner| inner.is::<TlsHandshake>());
        if wrapped || err.is::<TlsHandshake>() {
            return true;
        }
        cur = err.source();
    }
    false
}

/// Dials `authority` of the request URI and does TLS with the upstream's setup.
#[derive(Clone)]
pub struct TlsConnector {
    tls: UpstreamTls,
    timeout: Duration,
}

impl tower_service::Service<Uri> for TlsConnector {
    type Response = TlsConn;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<TlsConn>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let tls = self.tls.clone();
        let timeout = self.timeout;
        Box::pin(async move {
            let authority = uri
                .authority()
                .map(|a| a.as_str().to_owned())
                .ok_or_else(|| io::Error::other("upstream URI without authority"))?;
            let tcp = tokio::time::timeout(timeout, tokio::net::TcpStream::connect(authority))
                .await
                .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))??;
            let _ = tcp.set_nodelay(true);
            let s = tokio_rustls::TlsConnector::from(tls.config.clone())
                .connect(tls.server_name.clone(), tcp)
                .await
                .map_err(|e| io::Error::other(TlsHandshake(e)))?;
            Ok(TlsConn(TokioIo::new(Stream::TlsClient(Box::new(s)))))
        })
    }
}

/// One pooled client per TLS setup (CA and name).
#[derive(Default)]
pub struct Pools {
    clients: Mutex<HashMap<(usize, String), Client<TlsConnector, Incoming>>>,
}

impl Pools {
    /// The client for `tls` (made on first use).
    pub fn client(&self, tls: &UpstreamTls, timeout: Duration) -> Client<TlsConnector, Incoming> {
        let key = (
            Arc::as_ptr(&tls.config) as usize,
            format!("{:?}", tls.server_name),
        );
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = clients.get(&key) {
            return c.clone();
        }
        if clients.len() >= MAX_CLIENTS {
            clients.clear();
        }
        let c = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(64)
            .build(TlsConnector {
                tls: tls.clone(),
                timeout,
            });
        clients.insert(key, c.clone());
        c
    }
}
