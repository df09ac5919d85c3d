//! The main listener: accept, the TLS handshake when `tls:` is set (bounded in time), read each
//! request head (bounded in time), and hand the request to [`crate::request::handle`]. HTTP/1.1
//! with upgrades, or HTTP/2 when ALPN picked `h2`. Upgraded sessions are not tracked here:
//! they close themselves on the drain signal.

use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

use crate::forward::Forwarder;
use crate::io::Stream;
use crate::state::Shared;

/// After the drain starts, open HTTP connections get this long to finish their request.
const GRACEFUL: Duration = Duration::from_secs(5);

/// Accepts on `listener` until the drain starts, then closes it (new connections are refused)
/// and asks open HTTP connections to finish.
pub async fn serve(shared: Arc<Shared>, listener: TcpListener) {
    let forwarder = Arc::new(Forwarder::new());
    loop {
        let (stream, client) = tokio::select! {
            r = listener.accept() => match r {
                Ok(ok) => ok,
                Err(e) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shared.drained() => break,
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(connection(
            shared.clone(),
            forwarder.clone(),
            stream,
            client,
        ));
    }
    drop(listener);
}

/// One client connection: the TLS handshake if any, then HTTP/1.1 with upgrades (or HTTP/2),
/// until it ends or the drain asks it to.
async fn connection(
    shared: Arc<Shared>,
    forwarder: Arc<Forwarder>,
    stream: tokio::net::TcpStream,
    client: SocketAddr,
) {
    let stream = match shared.tls() {
        None => Stream::Plain(stream),
        Some(tls) => {
            let acceptor = tls.acceptor();
            let timeout = shared.tuning().tls_handshake_timeout;
            match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
                Ok(Ok(s)) => Stream::TlsServer(Box::new(s)),
                Ok(Err(e)) => return tls.handshake_failed(client, &e),
                Err(_) => return tls.handshake_failed(client, &"no handshake within the timeout"),
            }
        }
    };
    let h2 = stream.alpn() == Some(b"h2");
    let secure = matches!(stream, Stream::TlsServer(_));
    let drain = shared.drain_token();
    let header_timeout = shared.tuning().header_read_timeout;
    let svc = service_fn(move |mut req: http::Request<hyper::body::Incoming>| {
        if secure {
            req.extensions_mut().insert(crate::http_util::Secure);
        }
        let shared = shared.clone();
        let forwarder = forwarder.clone();
        async move {
            Ok::<_, std::convert::Infallible>(
                crate::http_util::rescue(crate::request::handle(shared, forwarder, req, client))
                    .await,
            )
        }
    });
    if h2 {
        let mut builder =
            hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new());
        // RFC 8441: WebSockets as extended CONNECT streams, each its own session.
        builder.timer(TokioTimer::new()).enable_connect_protocol();
        let mut conn = pin!(builder.serve_connection(TokioIo::new(stream), svc));
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "HTTP/2 connection ended with an error");
                }
            }
            _ = drain.cancelled() => {
                conn.as_mut().graceful_shutdown();
                let _ = tokio::time::timeout(GRACEFUL, conn.as_mut()).await;
            }
        }
        return;
    }
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout);
    let mut conn = pin!(
        builder
            .serve_connection(TokioIo::new(stream), svc)
            .with_upgrades()
    );
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        }
        _ = drain.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(GRACEFUL, conn.as_mut()).await;
        }
    }
}
