//! One direction of the standalone proxy's relay (client → upstream), in memory, per MiB of
//! client bytes: what the relay does to each message, without the sockets.
//!
//! - `core`: the relay as it is now. 16 KiB reads of the client's stream pushed through a
//!   [`FrameReader`] configured as the proxy configures the client side (masked, 64 KiB message
//!   limit, `read_text`); the handler reads each text message with [`read_message`] (the route's
//!   `signaling: { type: /type, room: /room, peer: /from }`) once it is complete, and the
//!   forwarded bytes are appended to an output buffer, as the write to the upstream takes them.
//!   Frames pass untouched: only the text is unmasked, into the reader's buffer.
//! - `tungstenite`: the relay as it was (tokio-tungstenite on both legs), per message: a
//!   server-role `WebSocket` reads a `Message` (payload unmasked into a new buffer, UTF-8
//!   validated), the text is read with the same [`read_message`], and the message is written to
//!   a client-role `WebSocket` (re-framed, masked with a fresh key). Both legs have the old
//!   proxy's settings (2 KiB read buffer, so at most 2 KiB per read; 8 KiB write buffer; 64 KiB
//!   message and frame limit). The client's stream arrives in the same 16 KiB reads: once one
//!   is consumed the next read would block, and the upstream leg is flushed, as the old relay
//!   flushed before waiting.
//! - `core_no_reading`: `core` with `read_text: false` (frame boundaries only): the floor.
//! - `session`: what the proxy's relay runs now: the same reads through core's session object
//!   ([`Session::client_bytes`]) on a route like the suite's (`signaling:` pointers, a message
//!   bucket that never runs dry), with an observer that tallies its events as the proxy's
//!   recorder does (without Prometheus). Its distance from `core` is the cost of the session
//!   layer: the limiter, the events, the room and peer notes.
//!
//! Every contender copies each 16 KiB read into a read buffer (the read's copy) and every
//! forwarded byte into an output `Vec` (the write's copy), so the figures compare the work
//! between the two syscalls, not the syscalls. Before measuring, the outputs are checked: `core`
//! forwards the input byte for byte; `tungstenite` sends as many masked client frames, of the
//! same length, carrying the same texts.
//!
//! `cargo bench -p sigmesh-benches --bench relay` (about half a minute).

use std::hint::black_box;
use std::io::{self, Read, Write};
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use sigmesh_benches::fixtures;
use sigmesh_core::config::Route;
use sigmesh_core::config::Signaling;
use sigmesh_core::frame::{
    Direction, FrameReader, Handler, MessageAction, MessageInfo, ReaderConfig, frame,
};
use sigmesh_core::session::{Event, Observer, Session, SessionEnv, SessionOptions};
use sigmesh_core::signal::{SignalKind, read_message};
use tungstenite::protocol::{Message, Role, WebSocket, WebSocketConfig};

const MIB: usize = 1 << 20;
/// One read of the client's socket (the same chunks for every contender).
const CHUNK: usize = 16 * 1024;
/// The route's `websocket.max_message_bytes` (the default).
const MAX_MESSAGE: usize = 65536;
/// The old proxy's tungstenite buffers (`READ_BUFFER`, `WRITE_BUFFER` in its `ws` module).
const OLD_READ_BUFFER: usize = 2048;
const OLD_WRITE_BUFFER: usize = 8192;

/// About 1 MiB of masked client text frames with `size`-byte signaling messages.
struct Input {
    bytes: Vec<u8>,
    messages: u64,
}

fn stream(size: usize) -> Input {
    let mut bytes = Vec::with_capacity(MIB + size + 64);
    let mut i = 0u32;
    while bytes.len() < MIB {
        let mut text = format!(
            r#"{{"type":"candidate","room":"r{}","from":"p{}","candidate":""#,
            i % 50,
            i % 100
        );
        while text.len() < size - 2 {
            text.push('x');
        }
        text.push_str("\"}");
        bytes.extend(frame(1, true, text.as_bytes(), Some(i.to_le_bytes())));
        i += 1;
    }
    Input {
        bytes,
        messages: u64::from(i),
    }
}

fn signaling() -> Signaling {
    Signaling {
        kind: Some("/type".into()),
        room: Some("/room".into()),
        peer: Some("/from".into()),
    }
}

/// The proxy's client-side reader for a route with `websocket:` and no room bucket
/// (`client_reader` in proxy/src/ws/session.rs).
fn client_reader(read_text: bool) -> ReaderConfig {
    ReaderConfig {
        max_message_bytes: Some(MAX_MESSAGE),
        read_text,
        ..ReaderConfig::new(Direction::ClientToServer)
    }
}

/// Messages seen, and text messages read with the signaling pointers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Counts {
    messages: u64,
    read: u64,
}

/// Forwards everything and reads each complete text message, as the proxy's client side does.
struct Relay<'s> {
    signaling: &'s Signaling,
    counts: Counts,
}

impl Handler for Relay<'_> {
    fn decide(&mut self, _: &MessageInfo, _: Option<&str>) -> MessageAction {
        MessageAction::Forward
    }

    fn done(&mut self, _: &MessageInfo, text: Option<&str>, _: bool) {
        self.counts.messages += 1;
        if let Some(t) = text {
            black_box(read_message(t, self.signaling));
            self.counts.read += 1;
        }
    }
}

/// `core`: 16 KiB reads through the frame reader; the forwarded bytes go to `out`.
fn run_core(
    bytes: &[u8],
    cfg: &ReaderConfig,
    signaling: &Signaling,
    rbuf: &mut [u8],
    out: &mut Vec<u8>,
) -> Counts {
    out.clear();
    let mut reader = FrameReader::new(cfg.clone());
    let mut h = Relay {
        signaling,
        counts: Counts {
            messages: 0,
            read: 0,
        },
    };
    for chunk in bytes.chunks(CHUNK) {
        rbuf[..chunk.len()].copy_from_slice(chunk);
        let read = &rbuf[..chunk.len()];
        let pushed = reader.push(read, &mut h);
        out.extend_from_slice(pushed.forward.bytes(read));
    }
    h.counts
}

/// Tallies events as the proxy's recorder does (a counter per message, bytes, candidates).
#[derive(Default)]
struct Tally {
    counts: Counts,
    bytes: u64,
    candidates: u64,
}

impl Observer for Tally {
    fn event(&mut self, e: Event<'_>) {
        match e {
            Event::Message { len, forwarded, .. } => {
                self.counts.messages += 1;
                if forwarded {
                    self.bytes += len;
                }
            }
            Event::Candidates { count, .. } => self.candidates += u64::from(count),
            _ => {}
        }
    }
}

/// `session`: 16 KiB reads through core's session object; the forwarded bytes go to `out`.
fn run_session(bytes: &[u8], route: &Route, rbuf: &mut [u8], out: &mut Vec<u8>) -> Counts {
    out.clear();
    let mut session = Session::new(route, SessionOptions::default());
    let mut tally = Tally::default();
    let mut now = Duration::ZERO;
    for chunk in bytes.chunks(CHUNK) {
        rbuf[..chunk.len()].copy_from_slice(chunk);
        let read = &rbuf[..chunk.len()];
        now += Duration::from_micros(10);
        let env = SessionEnv {
            route,
            route_index: 0,
            buckets: &fixtures::NoBuckets,
            now,
        };
        let pushed = session.client_bytes(read, &env, &mut tally);
        out.extend_from_slice(pushed.forward.bytes(read));
    }
    black_box(tally.candidates);
    tally.counts
}

/// The old relay's tungstenite settings for a leg (`ws_config` before the frame-by-frame relay).
fn old_leg_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(OLD_READ_BUFFER)
        .write_buffer_size(OLD_WRITE_BUFFER)
        .max_write_buffer_size(MAX_MESSAGE * 2 + 64 * 1024)
        .max_message_size(Some(MAX_MESSAGE))
        .max_frame_size(Some(MAX_MESSAGE))
}

/// The client's socket: the stream arrives in `CHUNK`-byte reads; once one is consumed, reads
/// would block until [`ClientSocket::arrive`]. Writes (pongs) are discarded.
struct ClientSocket<'a> {
    stream: &'a [u8],
    pos: usize,
    end: usize,
}

impl ClientSocket<'_> {
    /// The next read arrives; `false` at the end of the stream.
    fn arrive(&mut self) -> bool {
        if self.end == self.stream.len() {
            return false;
        }
        self.end = (self.end + CHUNK).min(self.stream.len());
        true
    }
}

impl Read for ClientSocket<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.pos == self.end {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = buf.len().min(self.end - self.pos);
        buf[..n].copy_from_slice(&self.stream[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

impl Write for ClientSocket<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The upstream's socket: writes are appended to `out`; nothing to read.
struct UpstreamSocket {
    out: Vec<u8>,
}

impl Read for UpstreamSocket {
    fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
        Err(io::ErrorKind::WouldBlock.into())
    }
}

impl Write for UpstreamSocket {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.out.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// `tungstenite`: read a message from the client leg, read its text, write it to the upstream
/// leg; flush the upstream leg whenever the client leg would block. The output goes to `out`.
fn run_tungstenite(bytes: &[u8], signaling: &Signaling, out: &mut Vec<u8>) -> Counts {
    let client = ClientSocket {
        stream: bytes,
        pos: 0,
        end: 0,
    };
    let mut rx = WebSocket::from_raw_socket(client, Role::Server, Some(old_leg_config()));
    let mut upstream = UpstreamSocket {
        out: std::mem::take(out),
    };
    upstream.out.clear();
    let mut tx = WebSocket::from_raw_socket(upstream, Role::Client, Some(old_leg_config()));
    let mut counts = Counts {
        messages: 0,
        read: 0,
    };
    loop {
        match rx.read() {
            Ok(Message::Text(t)) => {
                counts.messages += 1;
                black_box(read_message(t.as_str(), signaling));
                counts.read += 1;
                tx.write(Message::Text(t)).expect("upstream write");
            }
            Ok(m @ Message::Binary(_)) => {
                counts.messages += 1;
                tx.write(m).expect("upstream write");
            }
            // Pings are answered by tungstenite, pongs end here (there are none in the stream).
            Ok(_) => {}
            Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                tx.flush().expect("upstream flush");
                if !rx.get_mut().arrive() {
                    break;
                }
            }
            Err(e) => panic!("client leg: {e}"),
        }
    }
    *out = tx.into_inner().out;
    counts
}

/// Collects the texts of a client stream, one line each.
struct Collect {
    messages: u64,
    texts: String,
}

impl Handler for Collect {
    fn decide(&mut self, _: &MessageInfo, _: Option<&str>) -> MessageAction {
        MessageAction::Forward
    }

    fn done(&mut self, _: &MessageInfo, text: Option<&str>, _: bool) {
        self.messages += 1;
        if let Some(t) = text {
            self.texts.push_str(t);
        }
        self.texts.push('\n');
    }
}

/// Reads a stream of masked client frames: its messages and their texts (the reader closes,
/// and this panics, on an unmasked or malformed frame).
fn decode(bytes: &[u8]) -> Collect {
    let mut reader = FrameReader::new(client_reader(true));
    let mut c = Collect {
        messages: 0,
        texts: String::new(),
    };
    for chunk in bytes.chunks(CHUNK) {
        let pushed = reader.push(chunk, &mut c);
        assert_eq!(pushed.close, None, "malformed client stream");
    }
    assert_eq!(reader.stats().held, 0, "the stream ends mid-frame");
    c
}

/// Checks every contender's output once, outside the timed loops.
fn verify(input: &Input, signaling: &Signaling) {
    let bytes = &input.bytes;
    let mut rbuf = vec![0u8; CHUNK];
    let mut out = Vec::new();
    let all_read = Counts {
        messages: input.messages,
        read: input.messages,
    };

    let expected = decode(bytes);
    assert_eq!(expected.messages, input.messages);
    let first = expected.texts.lines().next().expect("a message");
    let r = read_message(first, signaling);
    assert_eq!(r.kind, SignalKind::Candidate);
    assert_eq!(r.room.as_deref(), Some("r0"));
    assert_eq!(r.peer.as_deref(), Some("p0"));

    let counts = run_core(bytes, &client_reader(true), signaling, &mut rbuf, &mut out);
    assert_eq!(counts, all_read);
    assert!(out == *bytes, "core: the output differs from the input");

    let counts = run_session(bytes, &fixtures::suite_route(), &mut rbuf, &mut out);
    assert_eq!(counts.messages, input.messages);
    assert!(out == *bytes, "session: the output differs from the input");

    let counts = run_core(bytes, &client_reader(false), signaling, &mut rbuf, &mut out);
    assert_eq!(
        counts,
        Counts {
            messages: input.messages,
            read: 0
        }
    );
    assert!(
        out == *bytes,
        "core_no_reading: the output differs from the input"
    );

    let counts = run_tungstenite(bytes, signaling, &mut out);
    assert_eq!(counts, all_read);
    // Same payload lengths, masked both times: the same frame header sizes.
    assert_eq!(out.len(), bytes.len());
    let sent = decode(&out);
    assert_eq!(sent.messages, input.messages);
    assert_eq!(sent.texts.len(), expected.texts.len());
    assert!(
        sent.texts == expected.texts,
        "tungstenite: the texts differ"
    );
}

fn relay(c: &mut Criterion) {
    let signaling = signaling();
    let read = client_reader(true);
    let floor = client_reader(false);
    let route = fixtures::suite_route();
    for size in [200usize, 16 * 1024] {
        let input = stream(size);
        verify(&input, &signaling);
        let bytes = &input.bytes;
        let mut rbuf = vec![0u8; CHUNK];
        let mut out = Vec::with_capacity(bytes.len());
        let mut g = c.benchmark_group(format!("relay_c2s_1MiB_{size}b_messages"));
        g.throughput(Throughput::Bytes(bytes.len() as u64));
        g.bench_function("core", |b| {
            b.iter(|| {
                black_box(run_core(
                    black_box(bytes),
                    &read,
                    &signaling,
                    &mut rbuf,
                    &mut out,
                ));
                black_box(out.len())
            })
        });
        g.bench_function("tungstenite", |b| {
            b.iter(|| {
                black_box(run_tungstenite(black_box(bytes), &signaling, &mut out));
                black_box(out.len())
            })
        });
        g.bench_function("session", |b| {
            b.iter(|| {
                black_box(run_session(black_box(bytes), &route, &mut rbuf, &mut out));
                black_box(out.len())
            })
        });
        g.bench_function("core_no_reading", |b| {
            b.iter(|| {
                black_box(run_core(
                    black_box(bytes),
                    &floor,
                    &signaling,
                    &mut rbuf,
                    &mut out,
                ));
                black_box(out.len())
            })
        });
        g.finish();
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1))
        .sample_size(20);
    targets = relay
}
criterion_main!(benches);
