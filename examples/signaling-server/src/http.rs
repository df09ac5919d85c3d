//! Reading a request head and answering plain HTTP requests.

use std::io;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Largest request head accepted.
pub(crate) const MAX_HEAD: usize = 8 * 1024;
/// How long a client may take to send its request head.
pub(crate) const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_HEADERS: usize = 64;

/// A parsed request head.
#[derive(Debug)]
pub(crate) struct Head {
    pub method: String,
    /// The request target as sent (`/ws?room=r`).
    pub target: String,
    /// Header names in lower case, in the order received.
    pub headers: Vec<(String, String)>,
    /// Bytes read after the head (the start of the first WebSocket frame, if any).
    pub rest: Vec<u8>,
}

pub(crate) enum ReadHead {
    Head(Head),
    TooLarge,
    Bad,
    /// The client went away (or was too slow) before sending a whole head.
    Closed,
}

impl Head {
    /// The first value of header `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Every comma-separated token of every `name` header, trimmed.
    pub fn tokens<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.headers
            .iter()
            .filter(move |(n, _)| n == name)
            .flat_map(|(_, v)| v.split(','))
            .map(str::trim)
            .filter(|t| !t.is_empty())
    }

    pub fn is_websocket_upgrade(&self) -> bool {
        self.tokens("upgrade")
            .any(|t| t.eq_ignore_ascii_case("websocket"))
    }

    /// The path without the query.
    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("")
    }

    /// The decoded value of query parameter `key`.
    pub fn query(&self, key: &str) -> Option<String> {
        let (_, query) = self.target.split_once('?')?;
        query.split('&').find_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k) == key).then(|| percent_decode(v))
        })
    }
}

/// Reads one request head, bounded by [`MAX_HEAD`] and [`HEAD_TIMEOUT`].
pub(crate) async fn read_head(tcp: &mut TcpStream) -> io::Result<ReadHead> {
    match tokio::time::timeout(HEAD_TIMEOUT, read_head_inner(tcp)).await {
        Ok(r) => r,
        Err(_elapsed) => Ok(ReadHead::Closed),
    }
}

async fn read_head_inner(tcp: &mut TcpStream) -> io::Result<ReadHead> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    loop {
        let n = tcp.read(&mut chunk).await?;
        if n == 0 {
            return Ok(ReadHead::Closed);
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&buf) {
            Ok(httparse::Status::Complete(len)) => {
                let head = Head {
                    method: req.method.unwrap_or("").to_owned(),
                    target: req.path.unwrap_or("/").to_owned(),
                    headers: req
                        .headers
                        .iter()
                        .map(|h| {
                            (
                                h.name.to_ascii_lowercase(),
                                String::from_utf8_lossy(h.value).into_owned(),
                            )
                        })
                        .collect(),
                    rest: buf.get(len..).unwrap_or_default().to_vec(),
                };
                return Ok(ReadHead::Head(head));
            }
            Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD => {
                return Ok(ReadHead::TooLarge);
            }
            Ok(httparse::Status::Partial) => {}
            Err(httparse::Error::TooManyHeaders) => return Ok(ReadHead::TooLarge),
            Err(_) => return Ok(ReadHead::Bad),
        }
    }
}

/// Answers a request that is not a WebSocket upgrade.
pub(crate) async fn serve_plain(tcp: &mut TcpStream, head: &Head, name: &str) -> io::Result<()> {
    let head_only = head.method == "HEAD";
    if head.method != "GET" && !head_only {
        return respond(
            tcp,
            name,
            405,
            "text/plain",
            b"method not allowed\n",
            &[("allow", "GET, HEAD")],
            head_only,
        )
        .await;
    }
    match head.path() {
        "/" | "/index.html" => {
            respond(
                tcp,
                name,
                200,
                "text/html; charset=utf-8",
                crate::DEMO_PAGE.as_bytes(),
                &[("cache-control", "no-cache")],
                head_only,
            )
            .await
        }
        "/healthz" => respond(tcp, name, 200, "text/plain", b"ok", &[], head_only).await,
        _ => respond(tcp, name, 404, "text/plain", b"not found\n", &[], head_only).await,
    }
}

/// Writes a minimal HTTP/1.1 response and closes the write side.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn respond(
    tcp: &mut TcpStream,
    name: &str,
    status: u16,
    content_type: &str,
    body: &[u8],
    extra: &[(&str, &str)],
    head_only: bool,
) -> io::Result<()> {
    let mut out = format!(
        "HTTP/1.1 {status} {}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nx-signaling-server: {name}\r\nconnection: close\r\n",
        reason(status),
        body.len(),
    );
    for (k, v) in extra {
        out.push_str(k);
        out.push_str(": ");
        out.push_str(v);
        out.push_str("\r\n");
    }
    out.push_str("\r\n");
    let mut bytes = out.into_bytes();
    if !head_only {
        bytes.extend_from_slice(body);
    }
    tcp.write_all(&bytes).await?;
    tcp.flush().await?;
    tcp.shutdown().await
}

fn reason(status: u16) -> &'static str {
    match status {
        101 => "Switching Protocols",
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        426 => "Upgrade Required",
        431 => "Request Header Fields Too Large",
        _ => "Unknown",
    }
}

/// Decodes `%XX` escapes and `+` (as a space); invalid escapes are kept as they are.
pub(crate) fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                    }
                    None => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_query_values() {
        assert_eq!(percent_decode("a%20b+c"), "a b c");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz"), "%zz");
        assert_eq!(percent_decode("%C3%A9"), "é");
    }

    #[test]
    fn reads_query_parameters() {
        let head = Head {
            method: "GET".into(),
            target: "/ws?room=my%20room&peer=alice&flag".into(),
            headers: vec![],
            rest: vec![],
        };
        assert_eq!(head.path(), "/ws");
        assert_eq!(head.query("room").as_deref(), Some("my room"));
        assert_eq!(head.query("peer").as_deref(), Some("alice"));
        assert_eq!(head.query("flag").as_deref(), Some(""));
        assert_eq!(head.query("nope"), None);
    }
}
