//! The frame reader itself: frame boundaries, verdicts, holding, closing.

use super::*;

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

    /// Whether the stream read so far ends at a message boundary: no frame or message half
    /// through, nothing held back, not closed. Only there may another stream take over.
    pub fn at_boundary(&self) -> bool {
        self.hdr_len == 0
            && self.frame.is_none()
            && self.msg.is_none()
            && self.held.is_empty()
            && !self.closed
            && self.closing.is_none()
    }

    /// What the handshake agreed, learnt after the reader was made (a filter sees the answer
    /// after the request): `deflate` lets RSV1 through, `inflate` reads compressed text. Only
    /// before the first byte; later it changes nothing, so a stream is read by one rule.
    pub fn negotiated(&mut self, deflate: bool, inflate: bool) {
        if self.stats == Stats::default() && self.hdr_len == 0 && self.frame.is_none() {
            self.cfg.deflate = deflate;
            self.cfg.inflate = inflate && deflate;
        }
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
            // A ping or pong may be refused (the message bucket counts them too).
            if h.opcode == 9 || h.opcode == 10 {
                match handler.control(h.opcode) {
                    MessageAction::Forward => {}
                    MessageAction::Cut => {
                        self.emit_frame_bytes(e, bytes, Fate::Cut, true);
                        self.start_frame(e, h, Fate::Cut, false, handler);
                        return;
                    }
                    MessageAction::Close { code, reason } => {
                        return self.close_now(e, code, reason);
                    }
                }
            }
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
                collect: self.cfg.read_text && text && (!compressed || self.cfg.inflate),
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
            m.fate =
                if self.cfg.defer_text && m.info.text && (!m.info.compressed || self.cfg.inflate) {
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
        if m.info.compressed && m.collect && !m.overflow {
            // Inflated into the thread's buffer, read from there: the session keeps nothing.
            let compressed = std::mem::take(&mut self.text);
            let limit = self.cfg.text_limit();
            let result = super::deflate::with_inflated(&compressed, limit, |r| {
                r.map(|bytes| self.finish(e, m, std::str::from_utf8(bytes).ok(), handler))
            });
            self.text = compressed;
            self.text.clear();
            if let Err(err) = result {
                let (code, reason) = match err {
                    super::deflate::InflateError::TooBig => {
                        (close_code::TOO_BIG, "message too big once inflated")
                    }
                    super::deflate::InflateError::Corrupt => (
                        close_code::INVALID_DATA,
                        "compressed data that does not inflate",
                    ),
                };
                self.close_now(e, code, reason);
            }
            return;
        }
        // Taken out for the call (no copy), given back empty.
        let buf = std::mem::take(&mut self.text);
        let text = if m.collect && !m.overflow {
            std::str::from_utf8(&buf).ok()
        } else {
            None
        };
        self.finish(e, m, text, handler);
        self.text = buf;
        self.text.clear();
    }

    /// A complete data message with its text (where read): decided if it was held, counted,
    /// and handed to the handler.
    fn finish<H: Handler + ?Sized>(
        &mut self,
        e: &mut Emit<'_>,
        m: Msg,
        text: Option<&str>,
        handler: &mut H,
    ) {
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
