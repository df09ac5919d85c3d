//! One stream type for every leg of a session: plain TCP, or TLS over it (the client's side of
//! `listen` with `tls:`), or one stream of an HTTP/2 connection. The relay reads and writes legs through it without knowing which.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// A leg's connection.
pub enum Stream {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS accepted on `listen` (boxed: rustls's state is large, and only TLS legs carry it).
    TlsServer(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    /// TLS to a `wss://` upstream.
    TlsClient(Box<tokio_rustls::client::TlsStream<TcpStream>>),
    /// One stream of an HTTP/2 connection (a WebSocket by extended CONNECT, RFC 8441).
    H2(Box<hyper_util::rt::TokioIo<hyper::upgrade::Upgraded>>),
}

impl Stream {
    /// How a client leg came, as `/sessions` shows it.
    pub fn transport(&self) -> &'static str {
        match self {
            Stream::Plain(_) => "http/1.1",
            Stream::TlsServer(_) | Stream::TlsClient(_) => "http/1.1+tls",
            Stream::H2(_) => "h2",
        }
    }

    /// The negotiated ALPN protocol, if any.
    pub fn alpn(&self) -> Option<&[u8]> {
        match self {
            Stream::Plain(_) => None,
            Stream::TlsServer(s) => s.get_ref().1.alpn_protocol(),
            Stream::TlsClient(s) => s.get_ref().1.alpn_protocol(),
            Stream::H2(_) => None,
        }
    }
}

macro_rules! each {
    ($self:ident, $s:ident => $e:expr) => {
        match $self.get_mut() {
            Stream::Plain($s) => {
                let $s = Pin::new($s);
                $e
            }
            Stream::TlsServer($s) => {
                let $s = Pin::new(&mut **$s);
                $e
            }
            Stream::TlsClient($s) => {
                let $s = Pin::new(&mut **$s);
                $e
            }
            Stream::H2($s) => {
                let $s = Pin::new(&mut **$s);
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
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        each!(self, s => s.poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        each!(self, s => s.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::TlsServer(s) => s.is_write_vectored(),
            Stream::TlsClient(s) => s.is_write_vectored(),
            Stream::H2(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        each!(self, s => s.poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        each!(self, s => s.poll_shutdown(cx))
    }
}

/// An upgraded connection: its socket, and what was read past the handshake.
pub struct Leg {
    pub io: Stream,
    pub pre: bytes::Bytes,
}
