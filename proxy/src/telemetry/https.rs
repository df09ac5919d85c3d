//! OTLP/HTTP to an `https://` collector: the exporter's HTTP client, over rustls with the
//! built-in roots or `tracing.tls.ca` (the SDK's own hyper client speaks plain HTTP only).
//! One connection per export (a batch every few seconds), bounded in time and in the size of
//! the answer read.

use std::sync::Arc;
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
        let port = uri.port_u16().unwrap_or(443);
        let tcp = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
        let _ = tcp.set_nodelay(true);
        let name = ServerName::try_from(host.clone())?;
        let tls = tokio_rustls::TlsConnector::from(self.config.clone())
            .connect(name, tcp)
            .await?;
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
