//! Opening client WebSocket connections (`ws://`, or `wss://` trusting `--ca`), optionally from
//! one of several local source addresses.
//!
//! Every `wss://` connection makes a full TLS handshake: session resumption is off, so a storm
//! measures what a fleet of fresh clients costs (the worst case; browsers resume when they can).
//!
//! One loopback source address gives about 28,000 ephemeral ports (`ip_local_port_range`); tens of
//! thousands of sessions, or a storm of short-lived ones, need more. `--source-ips` spreads the
//! sessions over several `127.0.0.x` addresses (all of 127/8 is local on Linux), session `i` using
//! address `i % n`.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use anyhow::Context as _;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::rustls::pki_types::pem::PemObject as _;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::http::StatusCode;

pub type Ws = WebSocketStream<Stream>;

/// A client connection: plain TCP, or TLS over it.
#[derive(Debug)]
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

macro_rules! each {
    ($self:ident, $s:ident => $e:expr) => {
        match $self.get_mut() {
            Stream::Plain($s) => {
                let $s = Pin::new($s);
                $e
            }
            Stream::Tls($s) => {
                let $s = Pin::new($s.as_mut());
                $e
            }
        }
    };
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        each!(self, s => s.poll_read(cx, buf))
    }
}

impl AsyncWrite for Stream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        each!(self, s => s.poll_write(cx, b))
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        each!(self, s => s.poll_flush(cx))
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        each!(self, s => s.poll_shutdown(cx))
    }
}

static TLS: OnceLock<Arc<ClientConfig>> = OnceLock::new();

/// Trusts the CA certificates in the PEM file `ca` for `wss://` URLs (`--ca`); without it,
/// `wss://` trusts nothing and every handshake fails.
pub fn trust(ca: &Path) -> anyhow::Result<()> {
    let pem = std::fs::read(ca).with_context(|| format!("reading {}", ca.display()))?;
    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(&pem) {
        roots.add(c.with_context(|| format!("{}: bad PEM", ca.display()))?)?;
    }
    anyhow::ensure!(!roots.is_empty(), "{}: no certificate", ca.display());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.resumption = rustls::client::Resumption::disabled();
    let _ = TLS.set(Arc::new(cfg));
    Ok(())
}

fn tls_config() -> anyhow::Result<Arc<ClientConfig>> {
    TLS.get()
        .cloned()
        .context("a wss:// URL needs --ca (the CA that signed the server's certificate)")
}

/// Local addresses to connect from: `127.0.0.2-127.0.0.9` (an IPv4 range, last octet varying) or
/// `127.0.0.2,127.0.0.3` (a list). Empty: let the kernel choose.
#[derive(Clone, Debug, Default)]
pub struct SourceIps(Vec<IpAddr>);

impl SourceIps {
    /// The address for session `i`, if any were given.
    pub fn pick(&self, i: usize) -> Option<IpAddr> {
        (!self.0.is_empty()).then(|| self.0[i % self.0.len()])
    }
}

/// clap value parser for `--source-ips`.
pub fn parse_source_ips(s: &str) -> Result<SourceIps, String> {
    let mut ips = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        if let Some((a, b)) = part.split_once('-') {
            let a: std::net::Ipv4Addr = a.trim().parse().map_err(|e| format!("{a:?}: {e}"))?;
            let b: std::net::Ipv4Addr = b.trim().parse().map_err(|e| format!("{b:?}: {e}"))?;
            let (a, b) = (u32::from(a), u32::from(b));
            if b < a || b - a > 65_535 {
                return Err(format!("bad range {part:?}"));
            }
            ips.extend((a..=b).map(|n| IpAddr::V4(n.into())));
        } else {
            ips.push(part.parse().map_err(|e| format!("{part:?}: {e}"))?);
        }
    }
    if ips.is_empty() {
        return Err("no address given".to_owned());
    }
    Ok(SourceIps(ips))
}

/// How a WebSocket handshake ended.
#[derive(Debug)]
pub enum Handshake {
    Open(Box<Ws>),
    /// The server answered with a status other than 101 (e.g. 429 from a connection bucket).
    Refused(StatusCode),
}

/// The `host:port` of a `ws://` or `wss://` URL, resolved, and the host for TLS (`None` for
/// `ws://`).
pub(crate) async fn endpoint(url: &str) -> anyhow::Result<(SocketAddr, Option<String>)> {
    let req = url.into_client_request().context("bad URL")?;
    let uri = req.uri();
    let tls = uri.scheme_str() == Some("wss");
    let host = uri.host().context("URL without host")?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
    let addr = tokio::net::lookup_host((host, port))
        .await?
        .next()
        .with_context(|| format!("{host} does not resolve"))?;
    Ok((addr, tls.then(|| host.to_owned())))
}

/// The `host:port` of a `ws://` URL, resolved.
pub(crate) async fn target(url: &str) -> anyhow::Result<SocketAddr> {
    Ok(endpoint(url).await?.0)
}

async fn tcp(addr: SocketAddr, source: Option<IpAddr>) -> anyhow::Result<TcpStream> {
    let stream = match source {
        None => TcpStream::connect(addr).await?,
        Some(ip) => {
            let sock = if ip.is_ipv4() {
                TcpSocket::new_v4()?
            } else {
                TcpSocket::new_v6()?
            };
            sock.bind(SocketAddr::new(ip, 0))
                .with_context(|| format!("binding {ip}"))?;
            sock.connect(addr).await?
        }
    };
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Connects (TCP + WebSocket handshake) within `timeout`.
pub async fn handshake(
    url: &str,
    source: Option<IpAddr>,
    timeout: Duration,
) -> anyhow::Result<Handshake> {
    use tokio_tungstenite::tungstenite::Error;
    let attempt = async {
        let (addr, tls) = endpoint(url).await?;
        let tcp = tcp(addr, source).await?;
        let stream = match tls {
            None => Stream::Plain(tcp),
            Some(host) => {
                let name = ServerName::try_from(host).context("bad TLS server name")?;
                let tls = tokio_rustls::TlsConnector::from(tls_config()?)
                    .connect(name, tcp)
                    .await
                    .context("TLS handshake")?;
                Stream::Tls(Box::new(tls))
            }
        };
        match tokio_tungstenite::client_async_with_config(url, stream, None).await {
            Ok((ws, _resp)) => Ok(Handshake::Open(Box::new(ws))),
            Err(Error::Http(resp)) => Ok(Handshake::Refused(resp.status())),
            Err(e) => Err(anyhow::Error::new(e).context("handshake")),
        }
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .map_err(|_| anyhow::anyhow!("handshake timed out after {timeout:?}"))?
}

/// Connects and requires a 101.
pub async fn connect(url: &str, source: Option<IpAddr>, timeout: Duration) -> anyhow::Result<Ws> {
    match handshake(url, source, timeout).await? {
        Handshake::Open(ws) => Ok(*ws),
        Handshake::Refused(status) => anyhow::bail!("handshake refused: HTTP {status}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_ips_ranges_and_lists() {
        let s = parse_source_ips("127.0.0.2-127.0.0.4,127.0.0.9").expect("parses");
        assert_eq!(s.0.len(), 4);
        assert_eq!(s.pick(0), Some("127.0.0.2".parse().expect("ip")));
        assert_eq!(s.pick(3), Some("127.0.0.9".parse().expect("ip")));
        assert_eq!(s.pick(4), Some("127.0.0.2".parse().expect("ip")));
        assert!(parse_source_ips("127.0.0.4-127.0.0.2").is_err());
        assert!(parse_source_ips("").is_err());
        assert_eq!(SourceIps::default().pick(5), None);
    }
}
