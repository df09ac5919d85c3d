//! A streaming, sans-IO WebSocket frame reader (RFC 6455 §5) for a proxy that sees the raw
//! bytes of an upgraded connection in arbitrary chunks (Envoy hands a Wasm filter each TCP
//! read as a body chunk: a frame can be split across calls, several frames can share one).
//!
//! ## What it does
//! [`FrameReader::push`] takes the next chunk of one direction and returns what to forward
//! in its place ([`Forward`]):
//! - it tracks frame boundaries across chunks and checks the framing (opcodes, RSV bits,
//!   control frame rules, fragmentation order, masking by direction);
//! - bytes pass through **untouched**: the only changes are whole frames removed and, on a
//!   close, a close frame appended at a frame boundary, so the stream stays valid;
//! - once per data message it asks a [`Handler`] for an [`MessageAction`] (forward, cut, close), and
//!   tells it when the message has ended;
//! - it unmasks only what it has to read: the payload of uncompressed text messages, and only
//!   with [`ReaderConfig::read_text`], into a buffer bounded by the message size limit.
//!   Everything else is skipped by counting, without a copy.
//!
//! ## When the verdict is taken
//! By default at the **start** of a message, as soon as its first frame header is complete:
//! the whole message (every fragment, across any number of chunks) is then forwarded or cut.
//! The header bytes of a frame that a chunk cuts short are held back until the rest arrives
//! (at most 13 bytes).
//!
//! With [`ReaderConfig::defer_text`], an uncompressed **text** message is decided when it is
//! **complete**, with its text (a room read from the JSON needs the whole message). Its bytes,
//! and any control frame that comes after its first byte, are held back until then: never more
//! than the message size limit plus [`HOLD_SLACK`] bytes. The message reaches the other side
//! when its last byte has arrived, which the other side cannot tell from a slow sender; the
//! stream itself never waits.
//!
//! ## Closing
//! A message over [`ReaderConfig::max_message_bytes`] (counted from the frame headers, before
//! any of the offending frame is forwarded), broken framing, or an [`MessageAction::Close`] ends the
//! direction: the reader forwards what came before the offending frame, appends a close frame
//! with the code (masked with [`ReaderConfig::mask_key`] when the direction is masked), and drops
//! every byte after it. [`Pushed::close`] says so once, so the front end can count it.
//!
//! ## Extension negotiation
//! With `permessage-deflate` negotiated (RFC 7692) a data message may be compressed. With a
//! compression context kept between messages its text cannot be read on its own: such
//! messages are counted, limited and cut as whole messages, but not read. Without one
//! ([`ReaderConfig::inflate`], [`deflate`]) each compressed text message is inflated at its
//! end, bounded by the message limit, and read like any other. [`strip_extension`] removes an
//! extension from a `Sec-WebSocket-Extensions` offer so it is never negotiated.

use std::fmt;

pub mod deflate;
mod reader;
mod wire;

pub use reader::FrameReader;
pub use wire::{close_frame, frame, strip_extension, unmask};

/// Most bytes held back beyond the message limit: control frames after a held message's start.
pub const HOLD_SLACK: usize = 4096;

/// Text collected per message when there is no size limit.
pub const DEFAULT_TEXT_LIMIT: usize = 1 << 20;

/// RFC 6455 close codes used by the reader and its callers.
pub mod close_code {
    /// 1001: going away (idle timeout, drain, the other side gone).
    pub const AWAY: u16 = 1001;
    /// 1012: service restart (the client should reconnect).
    pub const RESTART: u16 = 1012;
    /// 1002: protocol error.
    pub const PROTOCOL_ERROR: u16 = 1002;
    /// 1007: invalid payload data (a compressed message that does not inflate).
    pub const INVALID_DATA: u16 = 1007;
    /// 1008: policy violation (rate limits with `on_exceed: close`).
    pub const POLICY: u16 = 1008;
    /// 1009: message too big.
    pub const TOO_BIG: u16 = 1009;
    /// 1011: the server failed (a proxy's upstream gone mid-session).
    pub const SERVER_ERROR: u16 = 1011;
}

/// Which way the bytes go; decides whether frames must be masked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Client to server: every frame is masked (RFC 6455 §5.3).
    ClientToServer,
    /// Server to client: no frame is masked.
    ServerToClient,
}

/// How a [`FrameReader`] reads one direction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReaderConfig {
    /// Which way the bytes go.
    pub direction: Direction,
    /// Largest data message (sum of its frames' payloads; the compressed size when RSV1 is
    /// set); larger closes with 1009. `None`: no limit.
    pub max_message_bytes: Option<usize>,
    /// Unmask and collect uncompressed text messages (up to the limit, else up to
    /// [`DEFAULT_TEXT_LIMIT`]) so the handler sees their text.
    pub read_text: bool,
    /// Decide uncompressed text messages when complete, with their text (implies `read_text`).
    pub defer_text: bool,
    /// `permessage-deflate` was negotiated: RSV1 on a first frame marks a compressed message.
    pub deflate: bool,
    /// Neither side keeps a compression context ([`deflate`]): compressed text messages are
    /// collected, deferred and read like uncompressed ones, inflated at their end to at most
    /// the message limit (more closes 1009, data that does not inflate 1007).
    pub inflate: bool,
    /// Masking key of the close frame the reader appends to a client-to-server stream.
    pub mask_key: [u8; 4],
}

impl ReaderConfig {
    /// A config that forwards everything and reads nothing, for `direction`.
    pub fn new(direction: Direction) -> Self {
        ReaderConfig {
            direction,
            max_message_bytes: None,
            read_text: false,
            defer_text: false,
            deflate: false,
            inflate: false,
            mask_key: [0; 4],
        }
    }

    pub(crate) fn text_limit(&self) -> usize {
        self.max_message_bytes.unwrap_or(DEFAULT_TEXT_LIMIT)
    }
}

/// A data message, as far as it has been read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MessageInfo {
    /// Text (opcode 1) rather than binary (opcode 2).
    pub text: bool,
    /// RSV1 was set on its first frame with `permessage-deflate` negotiated.
    pub compressed: bool,
    /// Payload bytes so far (all of them once complete).
    pub len: u64,
    /// Frames so far.
    pub frames: u32,
}

/// What to do with a data message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageAction {
    /// Pass it on.
    Forward,
    /// Remove every frame of it.
    Cut,
    /// Remove it, append a close frame with this code and reason, and drop everything after.
    Close {
        /// RFC 6455 close code.
        code: u16,
        /// Reason (cut to 123 bytes on the wire).
        reason: &'static str,
    },
}

/// The front end's side of the reader: verdicts, and the end of each message.
pub trait Handler {
    /// The verdict on a data message, asked once: at its start with `text: None`, or (deferred
    /// text messages) once complete with its text (`None` if it is not UTF-8).
    fn decide(&mut self, msg: &MessageInfo, text: Option<&str>) -> MessageAction;

    /// A data message has ended; `forwarded` says whether it went on. `text` is its text where
    /// it was read (`read_text`, uncompressed, within the limit, valid UTF-8).
    fn done(&mut self, msg: &MessageInfo, text: Option<&str>, forwarded: bool) {
        let _ = (msg, text, forwarded);
    }

    /// The verdict on a ping (opcode 9) or pong (10), at its header: forwarded by default.
    /// `Cut` removes the frame; `Close` ends the direction as for a message.
    fn control(&mut self, opcode: u8) -> MessageAction {
        let _ = opcode;
        MessageAction::Forward
    }

    /// A close frame has been read (and forwarded, or held in order behind a held message):
    /// its status code (`None` for an empty body) and reason (lossy UTF-8, at most 123 bytes).
    fn close(&mut self, code: Option<u16>, reason: &str) {
        let _ = (code, reason);
    }
}

/// A handler that forwards everything.
#[derive(Debug, Clone, Copy, Default)]
pub struct ForwardAll;

impl Handler for ForwardAll {
    fn decide(&mut self, _: &MessageInfo, _: Option<&str>) -> MessageAction {
        MessageAction::Forward
    }
}

/// What to send on in place of the chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forward<'a> {
    /// The chunk as it is (the common case: nothing copied, nothing to replace).
    All,
    /// These bytes instead (possibly none).
    Bytes(&'a [u8]),
}

impl<'a> Forward<'a> {
    /// The bytes to forward, given the chunk that was pushed.
    pub fn bytes<'c>(&self, chunk: &'c [u8]) -> &'c [u8]
    where
        'a: 'c,
    {
        match *self {
            Forward::All => chunk,
            Forward::Bytes(b) => b,
        }
    }
}

/// Why the reader closed a direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Closed {
    /// The close code sent on.
    pub code: u16,
    /// The reason sent on.
    pub reason: &'static str,
}

impl fmt::Display for Closed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.code, self.reason)
    }
}

/// The result of one [`FrameReader::push`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pushed<'a> {
    /// What to forward.
    pub forward: Forward<'a>,
    /// Set on the push that closed the direction (once).
    pub close: Option<Closed>,
}

/// Counters of one direction.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Frame headers read.
    pub frames: u64,
    /// Data messages forwarded.
    pub forwarded: u64,
    /// Data messages cut.
    pub cut: u64,
    /// Bytes held back right now (a header cut short, a deferred message).
    pub held: usize,
}

#[cfg(test)]
mod tests;

/// How many whole client data messages `bytes` holds, when they are whole frames from a message
/// boundary (else `None`): what was waiting for an upstream that died, counted as lost.
pub fn count_messages(bytes: &[u8]) -> Option<u64> {
    let mut r = FrameReader::new(ReaderConfig::new(Direction::ClientToServer));
    let _ = r.push(bytes, &mut ForwardAll);
    (r.at_boundary()).then(|| r.stats().forwarded)
}
