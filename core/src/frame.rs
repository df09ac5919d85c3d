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
//! With `permessage-deflate` negotiated (RFC 7692) every data message may be compressed with a
//! shared sliding window, so its text cannot be read frame by frame: compressed messages are
//! still counted, limited and cut as whole messages, but never read. [`strip_extension`]
//! removes an extension from a `Sec-WebSocket-Extensions` offer so it is never negotiated.

use std::fmt;

/// Most bytes held back beyond the message limit: control frames after a held message's start.
pub const HOLD_SLACK: usize = 4096;

/// Text collected per message when there is no size limit.
pub const DEFAULT_TEXT_LIMIT: usize = 1 << 20;

/// RFC 6455 close codes used by the reader and its callers.
pub mod close_code {
    /// 1001: going away (idle timeout, drain, the other side gone).
    pub const AWAY: u16 = 1001;
    /// 1002: protocol error.
    pub const PROTOCOL_ERROR: u16 = 1002;
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
            mask_key: [0; 4],
        }
    }

    fn text_limit(&self) -> usize {
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

// === impl FrameReader ===

/// The streaming reader of one direction of one WebSocket connection (see the module docs).
#[derive(Debug)]
pub struct FrameReader {
    cfg: ReaderConfig,
    /// The frame header being read.
    hdr: [u8; 14],
    hdr_len: usize,
    /// Where that header started in the current chunk (`None`: in an earlier chunk).
    hdr_start: Option<usize>,
    /// The frame whose payload is being read.
    frame: Option<Frame>,
    /// The data message in progress (from its first frame's header to its FIN frame's end).
    msg: Option<Msg>,
    /// Unmasked text of the message in progress (when read).
    text: Vec<u8>,
    /// Everything held back behind an undecided (deferred) message, in order.
    held: Vec<u8>,
    /// The control frames among `held` (forwarded alone when the message is cut).
    held_ctrl: Vec<u8>,
    /// A close was emitted: every later byte is dropped.
    closed: bool,
    /// The close emitted during the current push.
    closing: Option<Closed>,
    stats: Stats,
    /// The output of the last push when it differs from the chunk.
    out: Vec<u8>,
    /// Unmasked body of the close frame being read (allocated only for close frames).
    ctrl: Vec<u8>,
}

#[derive(Debug, Clone, Copy)]
struct Frame {
    remaining: u64,
    mask: Option<[u8; 4]>,
    /// Payload bytes of this frame read so far (the mask offset).
    pos: u64,
    fate: Fate,
    /// A data frame (its payload belongs to `msg`).
    data: bool,
    fin: bool,
    /// A close frame (its body is collected for [`Handler::close`]).
    close: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    Forward,
    Cut,
    /// Held back until the message is decided.
    Hold,
}

#[derive(Debug, Clone, Copy)]
struct Msg {
    info: MessageInfo,
    fate: Fate,
    /// Collecting text.
    collect: bool,
    /// The text outgrew the buffer (it is then not reported).
    overflow: bool,
}

/// A frame header, parsed.
#[derive(Debug, Clone, Copy)]
struct Header {
    fin: bool,
    rsv1: bool,
    rsv23: bool,
    opcode: u8,
    mask: Option<[u8; 4]>,
    len: u64,
}

/// The output of one push being built: while `identical`, it is `chunk[..upto]`.
struct Emit<'c> {
    chunk: &'c [u8],
    out: Vec<u8>,
    identical: bool,
    upto: usize,
}

impl Emit<'_> {
    /// Forward `chunk[a..b]`.
    #[inline]
    fn input(&mut self, a: usize, b: usize) {
        if self.identical && a == self.upto {
            self.upto = b;
        } else {
            self.diverge();
            self.out.extend_from_slice(&self.chunk[a..b]);
        }
    }

    /// Forward bytes that are not the next bytes of the chunk.
    fn extra(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        self.diverge();
        self.out.extend_from_slice(bytes);
    }

    fn diverge(&mut self) {
        if self.identical {
            self.identical = false;
            self.out.extend_from_slice(&self.chunk[..self.upto]);
        }
    }
}

impl FrameReader {
    /// A reader for one direction.
    pub fn new(cfg: ReaderConfig) -> Self {
        let mut cfg = cfg;
        cfg.read_text |= cfg.defer_text;
        FrameReader {
            cfg,
            hdr: [0; 14],
            hdr_len: 0,
            hdr_start: None,
            frame: None,
            msg: None,
            text: Vec::new(),
            held: Vec::new(),
            held_ctrl: Vec::new(),
            closed: false,
            closing: None,
            stats: Stats::default(),
            out: Vec::new(),
            ctrl: Vec::new(),
        }
    }

    /// The config.
    pub fn config(&self) -> &ReaderConfig {
        &self.cfg
    }

    /// Counters.
    pub fn stats(&self) -> Stats {
        Stats {
            held: self.held.len() + self.hdr_len,
            ..self.stats
        }
    }

    /// Whether the reader has closed the direction (every later byte is dropped).
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Reads the next chunk of the direction, asking `handler` for verdicts, and returns what
    /// to forward in its place. Never panics, whatever the bytes.
    pub fn push<H: Handler + ?Sized>(&mut self, chunk: &[u8], handler: &mut H) -> Pushed<'_> {
        let mut out = std::mem::take(&mut self.out);
        out.clear();
        let mut e = Emit {
            chunk,
            out,
            identical: true,
            upto: 0,
        };
        if self.closed {
            e.identical = false;
        }
        self.hdr_start = None;
        let mut i = 0;
        while i < chunk.len() && !self.closed {
            if let Some(f) = self.frame {
                i = self.payload(&mut e, i, f, handler);
                continue;
            }
            if self.hdr_len == 0 {
                self.hdr_start = Some(i);
            }
            let need = header_len(&self.hdr[..self.hdr_len]);
            let take = (need - self.hdr_len).min(chunk.len() - i);
            self.hdr[self.hdr_len..self.hdr_len + take].copy_from_slice(&chunk[i..i + take]);
            self.hdr_len += take;
            i += take;
            if self.hdr_len == header_len(&self.hdr[..self.hdr_len]) {
                self.header(&mut e, i, handler);
            }
        }
        let forward = if e.identical && e.upto == chunk.len() {
            self.out = e.out;
            Forward::All
        } else {
            e.diverge();
            self.out = e.out;
            Forward::Bytes(&self.out)
        };
        Pushed {
            forward,
            close: self.closing.take(),
        }
    }

    /// A whole header is in `hdr`, its last byte at `chunk[end - 1]`: decides the frame.
    fn header<H: Handler + ?Sized>(&mut self, e: &mut Emit<'_>, end: usize, handler: &mut H) {
        let raw = self.hdr;
        let raw_len = self.hdr_len;
        let from_chunk = self.hdr_start.map(|s| (s, end));
        self.hdr_len = 0;
        self.hdr_start = None;
        self.stats.frames += 1;
        let h = match parse_header(&raw[..raw_len]).and_then(|h| self.check(h)) {
            Ok(h) => h,
            Err(reason) => return self.close_now(e, close_code::PROTOCOL_ERROR, reason),
        };
        let bytes = (&raw[..raw_len], from_chunk);
        if h.opcode >= 8 {
            // A control frame: forwarded, or held behind a held message to keep the order.
            let fate = if self.holding() {
                Fate::Hold
            } else {
                Fate::Forward
            };
            if fate == Fate::Hold && self.over_hold_bound(raw_len, h.len) {
                return self.close_now(e, close_code::TOO_BIG, "message too big");
            }
            self.emit_frame_bytes(e, bytes, fate, true);
            self.start_frame(e, h, fate, false, handler);
            return;
        }
        let first = h.opcode != 0;
        if first {
            let text = h.opcode == 1;
            let compressed = h.rsv1;
            self.text.clear();
            self.msg = Some(Msg {
                info: MessageInfo {
                    text,
                    compressed,
                    len: 0,
                    frames: 0,
                },
                fate: Fate::Forward,
                collect: self.cfg.read_text && text && !compressed,
                overflow: false,
            });
        }
        let Some(mut m) = self.msg else {
            return self.close_now(
                e,
                close_code::PROTOCOL_ERROR,
                "continuation frame outside a message",
            );
        };
        m.info.frames = m.info.frames.saturating_add(1);
        if let Some(max) = self.cfg.max_message_bytes
            && m.info.len.saturating_add(h.len) > max as u64
        {
            return self.close_now(e, close_code::TOO_BIG, "message too big");
        }
        if first {
            m.fate = if self.cfg.defer_text && m.info.text && !m.info.compressed {
                Fate::Hold
            } else {
                match handler.decide(&m.info, None) {
                    MessageAction::Forward => Fate::Forward,
                    MessageAction::Cut => Fate::Cut,
                    MessageAction::Close { code, reason } => {
                        return self.close_now(e, code, reason);
                    }
                }
            };
        }
        self.msg = Some(m);
        if m.fate == Fate::Hold && self.over_hold_bound(raw_len, h.len) {
            return self.close_now(e, close_code::TOO_BIG, "message too big");
        }
        self.emit_frame_bytes(e, bytes, m.fate, false);
        self.start_frame(e, h, m.fate, true, handler);
    }

    /// Whether holding a frame of `hdr` + `len` bytes more would pass the bound.
    fn over_hold_bound(&self, hdr: usize, len: u64) -> bool {
        let len = usize::try_from(len).unwrap_or(usize::MAX);
        self.held.len().saturating_add(hdr).saturating_add(len)
            > self.cfg.text_limit().saturating_add(HOLD_SLACK)
    }

    /// Whether a deferred message is undecided.
    fn holding(&self) -> bool {
        self.msg.is_some_and(|m| m.fate == Fate::Hold)
    }

    /// Forwards, drops or holds the header bytes of a frame.
    fn emit_frame_bytes(
        &mut self,
        e: &mut Emit<'_>,
        (raw, from_chunk): (&[u8], Option<(usize, usize)>),
        fate: Fate,
        control: bool,
    ) {
        match fate {
            Fate::Forward => match from_chunk {
                Some((a, b)) => e.input(a, b),
                None => e.extra(raw),
            },
            Fate::Cut => {}
            Fate::Hold => {
                self.held.extend_from_slice(raw);
                if control {
                    self.held_ctrl.extend_from_slice(raw);
                }
            }
        }
    }

    /// Starts reading the payload of a frame whose header was just handled; a frame without
    /// payload ends at once.
    fn start_frame<H: Handler + ?Sized>(
        &mut self,
        e: &mut Emit<'_>,
        h: Header,
        fate: Fate,
        data: bool,
        handler: &mut H,
    ) {
        let f = Frame {
            remaining: h.len,
            mask: h.mask,
            pos: 0,
            fate,
            data,
            fin: h.fin,
            close: h.opcode == 8,
        };
        if f.close {
            self.ctrl.clear();
        }
        if h.len == 0 {
            self.end_frame(e, f, handler);
        } else {
            self.frame = Some(f);
        }
    }

    /// Reads payload bytes of frame `f` from `chunk[i..]`; returns the new position.
    fn payload<H: Handler + ?Sized>(
        &mut self,
        e: &mut Emit<'_>,
        i: usize,
        mut f: Frame,
        handler: &mut H,
    ) -> usize {
        let chunk = e.chunk;
        let n = usize::try_from(f.remaining).map_or(chunk.len() - i, |r| r.min(chunk.len() - i));
        let bytes = &chunk[i..i + n];
        match f.fate {
            Fate::Forward => e.input(i, i + n),
            Fate::Cut => {}
            Fate::Hold => {
                self.held.extend_from_slice(bytes);
                if !f.data {
                    self.held_ctrl.extend_from_slice(bytes);
                }
            }
        }
        if f.close {
            // At most 125 bytes (checked with the header).
            let start = self.ctrl.len();
            self.ctrl.extend_from_slice(bytes);
            if let Some(key) = f.mask {
                unmask(&mut self.ctrl[start..], key, f.pos);
            }
        }
        if f.data
            && let Some(m) = self.msg.as_mut()
        {
            m.info.len = m.info.len.saturating_add(n as u64);
            if m.collect && !m.overflow {
                if self.text.len() + n > self.cfg.text_limit() {
                    m.overflow = true;
                    self.text = Vec::new();
                } else {
                    let start = self.text.len();
                    self.text.extend_from_slice(bytes);
                    if let Some(key) = f.mask {
                        unmask(&mut self.text[start..], key, f.pos);
                    }
                }
            }
        }
        f.pos += n as u64;
        f.remaining -= n as u64;
        if f.remaining == 0 {
            self.frame = None;
            self.end_frame(e, f, handler);
        } else {
            self.frame = Some(f);
        }
        i + n
    }

    /// The end of a frame's payload: the end of a message after its FIN frame.
    fn end_frame<H: Handler + ?Sized>(&mut self, e: &mut Emit<'_>, f: Frame, handler: &mut H) {
        self.frame = None;
        if f.close {
            let body = std::mem::take(&mut self.ctrl);
            let code = body.get(..2).map(|c| u16::from_be_bytes([c[0], c[1]]));
            let reason = body
                .get(2..)
                .map(String::from_utf8_lossy)
                .unwrap_or_default();
            handler.close(code, &reason);
            return;
        }
        if !(f.data && f.fin) {
            return;
        }
        let Some(m) = self.msg.take() else {
            return;
        };
        let text = if m.collect && !m.overflow {
            std::str::from_utf8(&self.text).ok()
        } else {
            None
        };
        let forwarded = match m.fate {
            Fate::Forward => true,
            Fate::Cut => false,
            Fate::Hold => {
                let action = handler.decide(&m.info, text);
                match action {
                    MessageAction::Forward => {
                        e.extra(&self.held);
                        self.held.clear();
                        self.held_ctrl.clear();
                        true
                    }
                    MessageAction::Cut => {
                        e.extra(&self.held_ctrl);
                        self.held.clear();
                        self.held_ctrl.clear();
                        false
                    }
                    MessageAction::Close { code, reason } => {
                        self.close_now(e, code, reason);
                        return;
                    }
                }
            }
        };
        if forwarded {
            self.stats.forwarded += 1;
        } else {
            self.stats.cut += 1;
        }
        handler.done(&m.info, text, forwarded);
        self.text.clear();
    }

    /// Ends the direction from outside (an idle timeout, a drain, the other side gone): at a
    /// frame boundary, drops what is held and returns the close frame to send on (masked when
    /// the direction is); every later byte is dropped. `None` when the direction is already
    /// closed, or a frame is cut short (its header or payload is still to come): no close frame
    /// can be sent in the middle of it, so the caller just ends the connection.
    pub fn close(&mut self, code: u16, reason: &str) -> Option<Vec<u8>> {
        if self.closed || self.frame.is_some() || self.hdr_len != 0 {
            return None;
        }
        Some(self.end(code, reason))
    }

    /// Frees buffers that outgrew `keep` bytes while nothing is held in them, so a session that
    /// once carried a large message does not keep its buffers while idle.
    pub fn trim(&mut self, keep: usize) {
        if self.text.capacity() > keep && self.msg.is_none() {
            self.text = Vec::new();
        }
        if self.out.capacity() > keep {
            self.out = Vec::new();
        }
        if self.held.capacity() > keep && self.held.is_empty() {
            self.held = Vec::new();
            self.held_ctrl = Vec::new();
        }
    }

    /// Drops the current message and what is held, appends a close frame, and stops.
    fn close_now(&mut self, e: &mut Emit<'_>, code: u16, reason: &'static str) {
        e.extra(&self.end(code, reason));
        self.closing = Some(Closed { code, reason });
    }

    /// Drops the current frame, message and what is held, marks the direction closed, and
    /// returns the close frame to send on (masked when the direction is).
    fn end(&mut self, code: u16, reason: &str) -> Vec<u8> {
        self.msg = None;
        self.frame = None;
        self.held = Vec::new();
        self.held_ctrl = Vec::new();
        self.text = Vec::new();
        self.closed = true;
        let mask = match self.cfg.direction {
            Direction::ClientToServer => Some(self.cfg.mask_key),
            Direction::ServerToClient => None,
        };
        close_frame(code, reason, mask)
    }

    /// Checks a parsed header against the protocol and the state of the stream.
    fn check(&self, h: Header) -> Result<Header, &'static str> {
        if h.rsv23 {
            return Err("reserved bits set");
        }
        match h.opcode {
            0..=2 | 8..=10 => {}
            _ => return Err("reserved opcode"),
        }
        match (self.cfg.direction, h.mask.is_some()) {
            (Direction::ClientToServer, false) => return Err("unmasked client frame"),
            (Direction::ServerToClient, true) => return Err("masked server frame"),
            _ => {}
        }
        if h.opcode >= 8 {
            if !h.fin {
                return Err("fragmented control frame");
            }
            if h.len > 125 {
                return Err("control frame too long");
            }
            if h.rsv1 {
                return Err("reserved bits set");
            }
            return Ok(h);
        }
        if h.rsv1 && (!self.cfg.deflate || h.opcode == 0) {
            return Err("reserved bits set");
        }
        match (h.opcode, self.msg.is_some()) {
            (0, false) => Err("continuation frame outside a message"),
            (1 | 2, true) => Err("new message inside a fragmented one"),
            _ => Ok(h),
        }
    }
}

/// Bytes of a header given its first bytes: 2 until the second byte is known.
#[inline]
fn header_len(hdr: &[u8]) -> usize {
    let Some(&b1) = hdr.get(1) else {
        return 2;
    };
    let ext = match b1 & 0x7f {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    2 + ext + if b1 & 0x80 != 0 { 4 } else { 0 }
}

/// Parses a complete header.
fn parse_header(hdr: &[u8]) -> Result<Header, &'static str> {
    let (&b0, &b1) = match (hdr.first(), hdr.get(1)) {
        (Some(a), Some(b)) => (a, b),
        _ => return Err("short header"),
    };
    let mut at = 2;
    let len = match b1 & 0x7f {
        126 => {
            let b = hdr.get(2..4).ok_or("short header")?;
            at = 4;
            u64::from(u16::from_be_bytes([b[0], b[1]]))
        }
        127 => {
            let b = hdr.get(2..10).ok_or("short header")?;
            at = 10;
            let mut a = [0u8; 8];
            a.copy_from_slice(b);
            let l = u64::from_be_bytes(a);
            if l >> 63 != 0 {
                return Err("payload length out of range");
            }
            l
        }
        l => u64::from(l),
    };
    let mask = if b1 & 0x80 != 0 {
        let b = hdr.get(at..at + 4).ok_or("short header")?;
        Some([b[0], b[1], b[2], b[3]])
    } else {
        None
    };
    Ok(Header {
        fin: b0 & 0x80 != 0,
        rsv1: b0 & 0x40 != 0,
        rsv23: b0 & 0x30 != 0,
        opcode: b0 & 0x0f,
        mask,
        len,
    })
}

/// XORs `buf` with `key`, `buf[0]` being payload byte `pos` of its frame.
#[inline]
pub fn unmask(buf: &mut [u8], key: [u8; 4], pos: u64) {
    let off = (pos % 4) as usize;
    // The key as it lines up with buf[0], eight bytes at a time.
    let k: [u8; 8] = std::array::from_fn(|i| key[(off + i) % 4]);
    let word = u64::from_ne_bytes(k);
    let mut chunks = buf.chunks_exact_mut(8);
    for c in &mut chunks {
        let mut w = [0u8; 8];
        w.copy_from_slice(c);
        c.copy_from_slice(&(u64::from_ne_bytes(w) ^ word).to_ne_bytes());
    }
    for (b, k) in chunks.into_remainder().iter_mut().zip(k) {
        *b ^= k;
    }
}

/// A close frame with `code` and `reason` (cut to 123 bytes at a character boundary), masked
/// with `mask` when given.
pub fn close_frame(code: u16, reason: &str, mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let mut payload = Vec::with_capacity(2 + end);
    payload.extend_from_slice(&code.to_be_bytes());
    payload.extend_from_slice(&reason.as_bytes()[..end]);
    frame(0x8, true, &payload, mask)
}

/// One unfragmented frame with `opcode` and `payload` (FIN as given), masked with `mask` when
/// given; for tests, benches and front ends that write frames of their own.
pub fn frame(opcode: u8, fin: bool, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut f = Vec::with_capacity(payload.len() + 14);
    f.push(if fin { 0x80 } else { 0 } | (opcode & 0x0f));
    let m = if mask.is_some() { 0x80 } else { 0 };
    match payload.len() {
        n @ 0..=125 => f.push(m | n as u8),
        n @ 126..=0xffff => {
            f.push(m | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(m | 127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    let start = f.len() + if mask.is_some() { 4 } else { 0 };
    if let Some(key) = mask {
        f.extend_from_slice(&key);
    }
    f.extend_from_slice(payload);
    if let Some(key) = mask {
        unmask(&mut f[start..], key, 0);
    }
    f
}

/// A `Sec-WebSocket-Extensions` value without the offers of extension `name`
/// (case-insensitive); `None` when no offer is left (remove the header). Offers are separated
/// by commas, parameters by semicolons (RFC 6455 §9.1); quoted commas are not expected there.
pub fn strip_extension(value: &str, name: &str) -> Option<String> {
    let kept: Vec<&str> = value
        .split(',')
        .map(str::trim)
        .filter(|offer| {
            let token = offer.split(';').next().unwrap_or("").trim();
            !token.is_empty() && !token.eq_ignore_ascii_case(name)
        })
        .collect();
    (!kept.is_empty()).then(|| kept.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: [u8; 4] = [0x11, 0x22, 0x33, 0x44];

    #[derive(Default)]
    struct Log {
        decided: Vec<(MessageInfo, Option<String>)>,
        done: Vec<(MessageInfo, Option<String>, bool)>,
        cut_every: Option<usize>,
        closes: Vec<(Option<u16>, String)>,
    }

    impl Handler for Log {
        fn decide(&mut self, m: &MessageInfo, t: Option<&str>) -> MessageAction {
            self.decided.push((*m, t.map(str::to_owned)));
            match self.cut_every {
                Some(n) if self.decided.len().is_multiple_of(n) => MessageAction::Cut,
                _ => MessageAction::Forward,
            }
        }
        fn done(&mut self, m: &MessageInfo, t: Option<&str>, fwd: bool) {
            self.done.push((*m, t.map(str::to_owned), fwd));
        }
        fn close(&mut self, code: Option<u16>, reason: &str) {
            self.closes.push((code, reason.to_owned()));
        }
    }

    fn client() -> ReaderConfig {
        ReaderConfig {
            read_text: true,
            ..ReaderConfig::new(Direction::ClientToServer)
        }
    }

    fn run(r: &mut FrameReader, chunk: &[u8], h: &mut Log) -> Vec<u8> {
        r.push(chunk, h).forward.bytes(chunk).to_vec()
    }

    #[test]
    fn one_chunk_passes_untouched_and_is_read() {
        let mut r = FrameReader::new(client());
        let mut h = Log::default();
        let bytes = frame(1, true, br#"{"type":"offer"}"#, Some(KEY));
        let p = r.push(&bytes, &mut h);
        assert_eq!(p.forward, Forward::All);
        assert_eq!(h.done.len(), 1);
        assert_eq!(h.done[0].1.as_deref(), Some(r#"{"type":"offer"}"#));
        assert!(h.done[0].2);
    }

    #[test]
    fn cut_removes_whole_frames_only() {
        let mut r = FrameReader::new(client());
        let mut h = Log {
            cut_every: Some(2),
            ..Log::default()
        };
        let a = frame(1, true, b"a", Some(KEY));
        let b = frame(2, true, b"bb", Some(KEY));
        let c = frame(1, true, b"ccc", Some(KEY));
        let all = [a.clone(), b, c.clone()].concat();
        assert_eq!(run(&mut r, &all, &mut h), [a, c].concat());
    }

    #[test]
    fn oversize_closes_before_the_frame() {
        let mut r = FrameReader::new(ReaderConfig {
            max_message_bytes: Some(4),
            mask_key: [1, 2, 3, 4],
            ..client()
        });
        let mut h = Log::default();
        let a = frame(1, true, b"abcd", Some(KEY));
        let b = frame(1, true, b"abcde", Some(KEY));
        let all = [a.clone(), b, a.clone()].concat();
        let p = r.push(&all, &mut h);
        assert_eq!(
            p.close,
            Some(Closed {
                code: 1009,
                reason: "message too big"
            })
        );
        let expect = [a, close_frame(1009, "message too big", Some([1, 2, 3, 4]))].concat();
        assert_eq!(p.forward, Forward::Bytes(&expect));
        assert!(r.is_closed());
        assert_eq!(r.push(b"more", &mut h).forward, Forward::Bytes(&[]));
    }

    #[test]
    fn protocol_errors_close_1002() {
        for (cfg, bytes) in [
            (client(), frame(1, true, b"x", None)),
            (
                ReaderConfig::new(Direction::ServerToClient),
                frame(1, true, b"x", Some(KEY)),
            ),
            (client(), frame(0, true, b"x", Some(KEY))),
            (client(), frame(3, true, b"x", Some(KEY))),
            (client(), frame(9, false, b"x", Some(KEY))),
            (client(), frame(9, true, &[0; 126], Some(KEY))),
            (client(), {
                let mut f = frame(1, true, b"x", Some(KEY));
                f[0] |= 0x40;
                f
            }),
            (client(), {
                let mut f = frame(1, false, b"x", Some(KEY));
                f.extend(frame(2, true, b"y", Some(KEY)));
                f
            }),
            (client(), {
                let mut f = vec![0x81, 0xff];
                f.extend([0x80, 0, 0, 0, 0, 0, 0, 1]);
                f.extend(KEY);
                f
            }),
        ] {
            let mut r = FrameReader::new(cfg);
            let p = r.push(&bytes, &mut ForwardAll);
            assert_eq!(p.close.map(|c| c.code), Some(1002), "{bytes:?}");
        }
    }

    #[test]
    fn deflate_marks_compressed_and_reads_nothing() {
        let mut r = FrameReader::new(ReaderConfig {
            deflate: true,
            ..client()
        });
        let mut h = Log::default();
        let mut f = frame(1, true, b"\x01\x02", Some(KEY));
        f[0] |= 0x40;
        assert_eq!(r.push(&f, &mut h).forward, Forward::All);
        assert!(h.done[0].0.compressed);
        assert_eq!(h.done[0].1, None);
    }

    #[test]
    fn strip_extension_offers() {
        assert_eq!(
            strip_extension(
                "permessage-deflate; client_max_window_bits",
                "permessage-deflate"
            ),
            None
        );
        assert_eq!(
            strip_extension(
                "permessage-deflate; client_max_window_bits, x-foo, Permessage-Deflate",
                "permessage-deflate"
            ),
            Some("x-foo".into())
        );
        assert_eq!(strip_extension("", "permessage-deflate"), None);
    }

    #[test]
    fn close_frame_reason_is_cut_at_a_char_boundary() {
        let f = close_frame(1000, &"é".repeat(100), None);
        assert_eq!(f[1] as usize, f.len() - 2);
        assert!(f.len() - 2 <= 125);
    }

    #[test]
    fn close_frames_are_reported_at_any_split_and_passed_untouched() {
        let close = close_frame(4001, "bye now", Some(KEY));
        let empty = frame(8, true, b"", Some(KEY));
        let data = frame(1, false, b"part", Some(KEY));
        let tail = frame(0, true, b"end", Some(KEY));
        // A close frame between two fragments of a message, then an empty close.
        let all = [data, close, tail, empty].concat();
        for split in 0..=all.len() {
            let mut r = FrameReader::new(client());
            let mut h = Log::default();
            let mut out = run(&mut r, &all[..split], &mut h);
            out.extend(run(&mut r, &all[split..], &mut h));
            assert_eq!(out, all, "split at {split}");
            assert_eq!(
                h.closes,
                vec![(Some(4001), "bye now".to_owned()), (None, String::new())],
                "split at {split}"
            );
            assert_eq!(h.done.len(), 1);
            assert_eq!(h.done[0].1.as_deref(), Some("partend"));
        }
    }

    #[test]
    fn close_from_outside_only_at_a_frame_boundary() {
        let msg = frame(2, true, &[7; 300], None);
        let mut r = FrameReader::new(ReaderConfig::new(Direction::ServerToClient));
        let mut h = Log::default();
        run(&mut r, &msg[..100], &mut h);
        assert_eq!(r.close(1001, "idle"), None, "mid-frame");
        run(&mut r, &msg[100..], &mut h);
        let f = r.close(1001, "idle").expect("at a boundary");
        assert_eq!(f, close_frame(1001, "idle", None));
        assert!(r.is_closed());
        assert!(
            run(&mut r, &msg, &mut h).is_empty(),
            "later bytes are dropped"
        );
        assert_eq!(r.close(1001, "again"), None);
        // Masked the way the direction is.
        let mut c = FrameReader::new(ReaderConfig {
            mask_key: KEY,
            ..client()
        });
        assert_eq!(c.close(1000, ""), Some(close_frame(1000, "", Some(KEY))));
    }
}
