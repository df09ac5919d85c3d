//! The bad input of `sigmesh-loadgen soak`: each [`Attack`] on its own connection, written by
//! hand (raw HTTP and frames), waiting (bounded) for the proxy to end it.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Kinds of bad input, one connection each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Attack {
    /// A frame with a reserved opcode (0x3): 1002.
    BadOpcode,
    /// A text message over `max_message_bytes`: 1009.
    Oversized,
    /// 60 KiB of `candidate:` in one message (it cost 0.4 s of CPU before the fix).
    CandidateBomb,
    /// An unmasked client frame: 1002.
    Unmasked,
    /// Bytes that are not HTTP: 400 or a closed connection.
    Garbage,
    /// An upgrade without `Sec-WebSocket-Key`: 400.
    NoKey,
    /// A request head that never ends: the header-read timeout.
    SlowHead,
    /// Asks for echoes of 16 KiB messages and never reads: the write timeout.
    NeverReads,
}

/// The quick ones: the proxy answers or closes at once.
pub const QUICK: [Attack; 6] = [
    Attack::BadOpcode,
    Attack::Oversized,
    Attack::CandidateBomb,
    Attack::Unmasked,
    Attack::Garbage,
    Attack::NoKey,
];
/// The slow ones: the proxy ends them after a timeout.
pub const SLOW: [Attack; 2] = [Attack::SlowHead, Attack::NeverReads];

impl Attack {
    pub fn name(self) -> &'static str {
        match self {
            Attack::BadOpcode => "bad_opcode",
            Attack::Oversized => "oversized",
            Attack::CandidateBomb => "candidate_bomb",
            Attack::Unmasked => "unmasked",
            Attack::Garbage => "garbage",
            Attack::NoKey => "no_key",
            Attack::SlowHead => "slow_head",
            Attack::NeverReads => "never_reads",
        }
    }
}

/// One attack on its own connection; how it ended: `ended` when the proxy closed it (or
/// answered with an error status) within its bound, else what happened.
pub async fn attack(
    a: Attack,
    addr: SocketAddr,
    source: Option<std::net::IpAddr>,
    path: &str,
) -> &'static str {
    let run = async {
        let sock = tokio::net::TcpSocket::new_v4().ok()?;
        if let Some(ip) = source {
            sock.bind(SocketAddr::new(ip, 0)).ok()?;
        }
        if a == Attack::NeverReads {
            // A small window, as a phone on a bad link has: the proxy's writes stall soon.
            sock.set_recv_buffer_size(4096).ok()?;
        }
        let mut s = sock.connect(addr).await.ok()?;
        let _ = s.set_nodelay(true);
        match a {
            Attack::Garbage => {
                s.write_all(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage\r\n\r\n")
                    .await
                    .ok()?;
                return Some(drain(&mut s).await);
            }
            Attack::SlowHead => {
                s.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\nx-slow: ").as_bytes())
                    .await
                    .ok()?;
                return Some(drain(&mut s).await);
            }
            Attack::NoKey => {
                let head = format!(
                    "GET {path} HTTP/1.1\r\nhost: x\r\nupgrade: websocket\r\nconnection: upgrade\r\nsec-websocket-version: 13\r\n\r\n"
                );
                s.write_all(head.as_bytes()).await.ok()?;
                return Some(drain(&mut s).await);
            }
            _ => {}
        }
        upgrade(&mut s, path).await?;
        match a {
            Attack::BadOpcode => s.write_all(&frame(0x3, b"x", true)).await.ok()?,
            Attack::Unmasked => s.write_all(&frame(0x1, b"{}", false)).await.ok()?,
            Attack::Oversized => s
                .write_all(&frame(0x1, &vec![b'a'; 70 << 10], true))
                .await
                .ok()?,
            Attack::CandidateBomb => {
                let text = "candidate:".repeat(6 << 10);
                s.write_all(&frame(0x1, text.as_bytes(), true)).await.ok()?;
                // The proxy reads it (capped) and relays it; then close.
                s.write_all(&frame(0x8, &[0x03, 0xe8], true)).await.ok()?;
            }
            Attack::NeverReads => {
                // Messages just under the limit, at about the message bucket's rate, until the
                // proxy stops taking them (every buffer on the way is full); never a read.
                let big = vec![b'n'; 60 << 10];
                let until = Instant::now() + Duration::from_secs(60);
                while Instant::now() < until {
                    let wrote = tokio::time::timeout(
                        Duration::from_secs(2),
                        s.write_all(&frame(0x1, &big, true)),
                    )
                    .await;
                    match wrote {
                        Ok(Ok(())) => tokio::time::sleep(Duration::from_millis(50)).await,
                        Ok(Err(_)) => return Some("ended"),
                        Err(_) => break, // blocked: the stall has begun
                    }
                }
                // Still never reading: a blocked write fails once the proxy lets go of us.
                let gone = tokio::time::timeout(Duration::from_secs(60), async {
                    while s.write_all(&frame(0x9, b"", true)).await.is_ok() {
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                })
                .await;
                return Some(if gone.is_ok() { "ended" } else { "held" });
            }
            _ => {}
        }
        Some(drain(&mut s).await)
    };
    match tokio::time::timeout(Duration::from_secs(150), run).await {
        Ok(Some(outcome)) => outcome,
        Ok(None) => "connect_failed",
        Err(_) => "held",
    }
}

/// Reads until the proxy ends the attack (bounded): `ended` on an HTTP error status, a close
/// frame, or the end of the connection; else `held`.
async fn drain(s: &mut TcpStream) -> &'static str {
    let mut got: Vec<u8> = Vec::new();
    let mut buf = [0u8; 16 << 10];
    let read = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
            if refused(&got) {
                return;
            }
            if got.len() > 1 << 20 {
                got.drain(..got.len() - 16);
            }
        }
    })
    .await;
    if read.is_ok() { "ended" } else { "held" }
}

/// An HTTP 4xx/5xx status line, or a close frame among the server's (unmasked) frames.
fn refused(got: &[u8]) -> bool {
    if got.starts_with(b"HTTP/1.") {
        return got.get(9).is_some_and(|c| matches!(c, b'4' | b'5'));
    }
    let mut at = 0;
    while at + 2 <= got.len() {
        if got[at] & 0x0f == 0x8 {
            return true;
        }
        let (len, head) = match got[at + 1] & 0x7f {
            126 if at + 4 <= got.len() => {
                (u64::from(u16::from_be_bytes([got[at + 2], got[at + 3]])), 4)
            }
            127 if at + 10 <= got.len() => {
                let mut b = [0u8; 8];
                b.copy_from_slice(&got[at + 2..at + 10]);
                (u64::from_be_bytes(b), 10)
            }
            126 | 127 => return false,
            n => (u64::from(n), 2),
        };
        at = at.saturating_add(head).saturating_add(len as usize);
    }
    false
}

/// A WebSocket handshake by hand (the attacks then write raw frames).
async fn upgrade(s: &mut TcpStream, path: &str) -> Option<()> {
    let head = format!(
        "GET {path} HTTP/1.1\r\nhost: x\r\nupgrade: websocket\r\nconnection: upgrade\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await.ok()?;
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
            .await
            .ok()?
            .ok()?;
        if n == 0 || got.len() > 8192 {
            return None;
        }
        got.extend_from_slice(&buf[..n]);
    }
    got.starts_with(b"HTTP/1.1 101").then_some(())
}

/// One frame, FIN set, masked with a fixed key when `masked` (core's encoder).
fn frame(opcode: u8, payload: &[u8], masked: bool) -> Vec<u8> {
    sigmesh_core::frame::frame(
        opcode,
        true,
        payload,
        masked.then_some([0x37, 0xfa, 0x21, 0x3d]),
    )
}
