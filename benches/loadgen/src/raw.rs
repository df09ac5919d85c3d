//! Raw WebSocket peers for compressed sessions (tungstenite speaks no `permessage-deflate`):
//!
//! * `raw-echo`: an echo upstream that accepts a `permessage-deflate` offer (without a context
//!   either way) and sends every frame back as it came, RSV1 included, unmasked;
//! * `raw-run`: N sessions, closed loop, each sending offer-like JSON text messages of a given
//!   size, compressed (one raw deflate stream per message, as `client_no_context_takeover`
//!   allows, done once before the run) or not, and counting the echoes by frame header without
//!   inflating them. Reports round trips per second: the client's cost per message is the same
//!   either way, so the proxy's CPU per round trip compares the two.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use flate2::{Compress, Compression, FlushCompress};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

const ACCEPT_DEFLATE: &str =
    "permessage-deflate; server_no_context_takeover; client_no_context_takeover";
/// Frames larger than this are refused (the runs send a few KiB).
const MAX_FRAME: u64 = 1 << 20;

#[derive(clap::Args)]
pub struct RawRunArgs {
    /// `ws://host:port/path`.
    #[arg(long)]
    url: String,
    #[arg(long, default_value_t = 100)]
    sessions: usize,
    /// Messages in flight per session.
    #[arg(long, default_value_t = 4)]
    window: usize,
    /// Message size in bytes (before compression).
    #[arg(long, default_value_t = 2048)]
    size: usize,
    /// Offer `permessage-deflate` and send compressed messages.
    #[arg(long)]
    deflate: bool,
    #[arg(long, value_parser = crate::parse_duration, default_value = "5s")]
    duration: Duration,
    #[arg(long, value_parser = crate::parse_duration, default_value = "1s")]
    warmup: Duration,
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
}

/// Reads one frame: (first header byte, payload unmasked). `None` at the end of the stream.
async fn read_frame<R: tokio::io::AsyncBufRead + Unpin>(
    r: &mut R,
    payload: &mut Vec<u8>,
) -> anyhow::Result<Option<u8>> {
    let mut h = [0u8; 2];
    match r.read_exact(&mut h).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let len = match h[1] & 0x7f {
        126 => u64::from(r.read_u16().await?),
        127 => r.read_u64().await?,
        n => u64::from(n),
    };
    ensure!(len <= MAX_FRAME, "a frame of {len} bytes");
    let mask = if h[1] & 0x80 != 0 {
        let mut m = [0u8; 4];
        r.read_exact(&mut m).await?;
        Some(m)
    } else {
        None
    };
    payload.resize(len as usize, 0);
    r.read_exact(payload).await?;
    if let Some(m) = mask {
        for (i, b) in payload.iter_mut().enumerate() {
            *b ^= m[i % 4];
        }
    }
    Ok(Some(h[0]))
}

/// A frame with first byte `b0` (FIN, RSV bits, opcode as given), masked with `mask` when
/// given: core's encoder, with the RSV bits (RSV1: compressed) set on top.
fn frame(b0: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut f = sigmesh_core::frame::frame(b0 & 0x0f, b0 & 0x80 != 0, payload, mask);
    f[0] |= b0 & 0x70;
    f
}

/// Reads an HTTP head (to the empty line); its lines.
async fn read_head<R: tokio::io::AsyncBufRead + Unpin>(r: &mut R) -> anyhow::Result<Vec<String>> {
    let mut lines = Vec::new();
    loop {
        let mut l = String::new();
        ensure!(
            r.read_line(&mut l).await? > 0,
            "the connection closed in the head"
        );
        let l = l.trim_end().to_owned();
        if l.is_empty() {
            return Ok(lines);
        }
        ensure!(lines.len() < 100 && l.len() < 8192, "an oversized head");
        lines.push(l);
    }
}

fn header<'a>(lines: &'a [String], name: &str) -> Option<&'a str> {
    lines.iter().skip(1).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

pub async fn echo(listen: SocketAddr) -> anyhow::Result<()> {
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    println!(
        "sigmesh-loadgen raw-echo listening on ws://{}/",
        listener.local_addr()?
    );
    loop {
        let (s, _) = listener.accept().await?;
        tokio::spawn(async move {
            let _ = echo_session(s).await;
        });
    }
}

async fn echo_session(s: TcpStream) -> anyhow::Result<()> {
    s.set_nodelay(true)?;
    let (r, mut w) = s.into_split();
    let mut r = BufReader::with_capacity(32 * 1024, r);
    let head = read_head(&mut r).await?;
    let key = header(&head, "sec-websocket-key").context("no key")?;
    let offered =
        header(&head, "sec-websocket-extensions").is_some_and(|e| e.contains("permessage-deflate"));
    let mut answer = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n",
        derive_accept_key(key.as_bytes())
    );
    if offered {
        answer.push_str(&format!("Sec-WebSocket-Extensions: {ACCEPT_DEFLATE}\r\n"));
    }
    answer.push_str("\r\n");
    w.write_all(answer.as_bytes()).await?;
    let mut payload = Vec::new();
    while let Some(b0) = read_frame(&mut r, &mut payload).await? {
        w.write_all(&frame(b0, &payload, None)).await?;
        if b0 & 0x0f == 8 {
            break; // a close, answered
        }
    }
    Ok(())
}

/// An offer-like signaling message of about `size` bytes: SDP lines with varying numbers, so
/// it compresses about as real SDP does (~3×), not like a run of one byte.
fn message(i: usize, size: usize) -> String {
    let mut seed = (i as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let mut next = |m: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % m
    };
    let mut sdp = String::new();
    while sdp.len() + 80 < size {
        let line = match next(4) {
            0 => format!("a=rtpmap:{} opus/48000/2", 96 + next(31)),
            1 => format!("a=fmtp:{} minptime=10;useinbandfec=1", 96 + next(31)),
            2 => format!(
                "a=candidate:{} 1 udp {} 192.0.2.{} {} typ host generation 0",
                next(1 << 31),
                next(1 << 31),
                next(255),
                1024 + next(64_000)
            ),
            _ => format!("a=ssrc:{} cname:{:x}", next(1 << 32), next(1 << 48)),
        };
        sdp.push_str(&line);
        sdp.push_str("\\r\\n");
    }
    format!(
        r#"{{"type":"offer","room":"room-{}","from":"peer-{i}","sdp":"{sdp}"}}"#,
        i % 50
    )
}

fn deflate(text: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut c = Compress::new(Compression::default(), false);
    let mut out = Vec::with_capacity(text.len() + 64);
    c.compress_vec(text, &mut out, FlushCompress::Sync)?;
    ensure!(out.ends_with(&[0, 0, 0xff, 0xff]), "no sync flush tail");
    out.truncate(out.len() - 4);
    Ok(out)
}

pub async fn run(args: RawRunArgs) -> anyhow::Result<()> {
    let addr = crate::conn::target(&args.url).await?;
    let uri: tokio_tungstenite::tungstenite::http::Uri = args.url.parse()?;
    let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_owned();
    let mut frames = Vec::new();
    let (mut raw, mut sent) = (0usize, 0usize);
    for i in 0..16 {
        let text = message(i, args.size);
        raw += text.len();
        let f = if args.deflate {
            frame(
                0x80 | 0x40 | 1,
                &deflate(text.as_bytes())?,
                Some([1, 2, 3, 4]),
            )
        } else {
            frame(0x80 | 1, text.as_bytes(), Some([1, 2, 3, 4]))
        };
        sent += f.len();
        frames.push(f);
    }
    let frames = std::sync::Arc::new(frames);
    let start = Instant::now() + args.warmup;
    let end = start + args.duration;
    let mut tasks = Vec::new();
    for id in 0..args.sessions {
        let (frames, path, deflate, window) =
            (frames.clone(), path.clone(), args.deflate, args.window);
        tasks.push(tokio::spawn(async move {
            session(addr, &path, deflate, window, &frames, id, start, end).await
        }));
    }
    let mut total = 0u64;
    let mut errors = 0;
    for t in tasks {
        match t.await? {
            Ok(n) => total += n,
            Err(e) => {
                errors += 1;
                eprintln!("session: {e:#}");
            }
        }
    }
    let secs = args.duration.as_secs_f64();
    println!(
        "{{\"round_trips\": {total}, \"round_trips_per_sec\": {:.1}, \"errors\": {errors}, \"message_bytes\": {}, \"frame_bytes\": {}, \"deflate\": {}}}",
        total as f64 / secs,
        raw / 16,
        sent / 16,
        args.deflate
    );
    if errors > 0 {
        bail!("{errors} session(s) failed");
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn session(
    addr: SocketAddr,
    path: &str,
    deflate: bool,
    window: usize,
    frames: &[Vec<u8>],
    id: usize,
    start: Instant,
    end: Instant,
) -> anyhow::Result<u64> {
    let s = TcpStream::connect(addr).await?;
    s.set_nodelay(true)?;
    let (r, mut w) = s.into_split();
    let mut r = BufReader::with_capacity(64 * 1024, r);
    let offer = if deflate {
        "Sec-WebSocket-Extensions: permessage-deflate; client_no_context_takeover; server_no_context_takeover\r\n"
    } else {
        ""
    };
    w.write_all(format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{offer}\r\n").as_bytes()).await?;
    let head = read_head(&mut r).await?;
    ensure!(
        head.first().is_some_and(|l| l.contains(" 101 ")),
        "answered {:?}",
        head.first()
    );
    let agreed = header(&head, "sec-websocket-extensions").is_some();
    ensure!(
        agreed == deflate,
        "deflate offered {deflate}, agreed {agreed}"
    );
    let mut next = id;
    for _ in 0..window {
        w.write_all(&frames[next % frames.len()]).await?;
        next += 1;
    }
    let mut counted = 0u64;
    let mut payload = Vec::new();
    loop {
        let Some(_) = read_frame(&mut r, &mut payload).await? else {
            bail!("the connection closed");
        };
        let now = Instant::now();
        if now >= end {
            break;
        }
        if now >= start {
            counted += 1;
        }
        w.write_all(&frames[next % frames.len()]).await?;
        next += 1;
    }
    let _ = w
        .write_all(&frame(0x88, &1000u16.to_be_bytes(), Some([1, 2, 3, 4])))
        .await;
    Ok(counted)
}
