//! Opening client WebSocket connections, optionally from one of several local source addresses.
//!
//! One loopback source address gives about 28,000 ephemeral ports (`ip_local_port_range`); tens of
//! thousands of sessions, or a storm of short-lived ones, need more. `--source-ips` spreads the
//! sessions over several `127.0.0.x` addresses (all of 127/8 is local on Linux), session `i` using
//! address `i % n`.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::http::StatusCode;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

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

/// The `host:port` of a `ws://` URL, resolved.
pub(crate) async fn target(url: &str) -> anyhow::Result<SocketAddr> {
    let req = url.into_client_request().context("bad URL")?;
    let uri = req.uri();
    let host = uri.host().context("URL without host")?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port = uri.port_u16().unwrap_or(80);
    tokio::net::lookup_host((host, port))
        .await?
        .next()
        .with_context(|| format!("{host} does not resolve"))
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
        let addr = target(url).await?;
        let stream = tcp(addr, source).await?;
        match tokio_tungstenite::client_async_with_config(url, MaybeTlsStream::Plain(stream), None)
            .await
        {
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
