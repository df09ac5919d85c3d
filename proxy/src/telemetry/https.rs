//! OTLP to an `https://` collector, over rustls with the built-in roots or `tracing.tls.ca`
//! (the SDK's own clients speak plain HTTP/2 and HTTP only):
//!
//! - OTLP/HTTP: the exporter's HTTP client, one connection per export (a batch every few
//!   seconds), bounded in time and in the size of the answer read;
//! - OTLP/gRPC: the connector under tonic's channel ([`GrpcConnector`]), ALPN `h2`; the channel
//!   keeps its connection and reconnects through it.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, Uri, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use opentelemetry_http::{HttpClient, HttpError};
use rustls::ClientConfig;
use rustls::pki_types::ServerName;

/// Connect, handshake, request and answer must finish within this.
const TIMEOUT: Duration = Duration::from_secs(10);
/// The collector's answer is read up to this.
const MAX_ANSWER: usize = 4 << 20;

/// The HTTP client of an `https://` OTLP endpoint.
#[derive(Debug)]
pub struct HttpsClient {
    config: Arc<ClientConfig>,
}

impl HttpsClient {
    /// Trusting the built-in roots, or the CAs in `ca`.
    pub fn new(ca: Option<&str>) -> Result<HttpsClient, String> {
        Ok(HttpsClient {
            config: crate::upstream_tls::client_config(ca)?,
        })
    }

    async fn send(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let uri = request.uri().clone();
        let host = uri.host().ok_or("OTLP endpoint without a host")?.to_owned();
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let tls = connect(&self.config, &host, uri.port_u16()).await?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let (mut parts, body) = request.into_parts();
        parts.uri = uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .parse::<Uri>()?;
        let authority = uri.authority().map_or(host.clone(), |a| a.to_string());
        parts
            .headers
            .insert(header::HOST, HeaderValue::from_str(&authority)?);
        let resp = sender
            .send_request(Request::from_parts(parts, Full::new(body)))
            .await?;
        let (parts, body) = resp.into_parts();
        let body = Limited::new(body, MAX_ANSWER).collect().await?.to_bytes();
        Ok(Response::from_parts(parts, body))
    }
}

#[async_trait::async_trait]
impl HttpClient for HttpsClient {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        tokio::time::timeout(TIMEOUT, self.send(request))
            .await
            .map_err(|_| "OTLP export over https timed out")?
    }
}

/// TCP and a TLS handshake to `host:port` (443 by default).
async fn connect(
    config: &Arc<ClientConfig>,
    host: &str,
    port: Option<u16>,
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let tcp = tokio::net::TcpStream::connect((host, port.unwrap_or(443))).await?;
    let _ = tcp.set_nodelay(true);
    let name = ServerName::try_from(host.to_owned())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    tokio_rustls::TlsConnector::from(config.clone())
        .connect(name, tcp)
        .await
}

/// tonic's connector for an `https://` OTLP/gRPC collector: TCP, then TLS with ALPN `h2`.
#[derive(Debug, Clone)]
pub struct GrpcConnector {
    config: Arc<ClientConfig>,
}

impl GrpcConnector {
    /// Trusting the built-in roots, or the CAs in `ca`.
    pub fn new(ca: Option<&str>) -> Result<GrpcConnector, String> {
        let mut config = (*crate::upstream_tls::client_config(ca)?).clone();
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(GrpcConnector {
            config: Arc::new(config),
        })
    }
}

type Connecting = Pin<
    Box<
        dyn Future<
                Output = std::io::Result<
                    TokioIo<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>,
                >,
            > + Send,
    >,
>;

impl tower_service::Service<Uri> for GrpcConnector {
    type Response = TokioIo<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;
    type Error = std::io::Error;
    type Future = Connecting;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let config = self.config.clone();
        Box::pin(async move {
            let host = uri
                .host()
                .ok_or_else(|| std::io::Error::other("OTLP endpoint without a host"))?
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned();
            let connecting = connect(&config, &host, uri.port_u16());
            let tls = tokio::time::timeout(TIMEOUT, connecting)
                .await
                .map_err(|_| std::io::Error::other("OTLP/gRPC connect over TLS timed out"))??;
            Ok(TokioIo::new(tls))
        })
    }
}
