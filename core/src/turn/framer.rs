//! Cutting a TURN-over-TCP byte stream into messages (RFC 8656 §12.5 and RFC 6062).
//!
//! Over TCP, STUN messages and ChannelData messages follow one another; each is framed by its
//! own length field, and ChannelData is padded to a multiple of 4 bytes. The framer buffers at
//! most one frame (at most [`MAX_FRAME`] bytes); when the stream stops looking like TURN (first
//! two bits `10`/`11`, a STUN header without the magic cookie) it turns [`Framer::opaque`] and
//! hands the rest of the stream through untouched, since the boundaries can no longer be known.
//! After an RFC 6062 ConnectionBind succeeds the data connection carries raw peer bytes: the
//! caller calls [`Framer::set_opaque`].

use super::stun::{self, CHANNEL_HEADER_LEN, FrameKind, HEADER_LEN};

/// Largest frame: a STUN message or ChannelData is at most 4 + 65,535 (+ padding) bytes.
pub const MAX_FRAME: usize = HEADER_LEN + 0xFFFF + 3;

/// One piece of a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// One whole STUN message.
    Stun(Vec<u8>),
    /// One whole ChannelData message, padding included.
    ChannelData(Vec<u8>),
    /// Bytes that are not TURN framing; passed through untouched.
    Opaque(Vec<u8>),
}

impl Frame {
    /// The bytes to forward.
    pub fn bytes(&self) -> &[u8] {
        match self {
            Frame::Stun(b) | Frame::ChannelData(b) | Frame::Opaque(b) => b,
        }
    }
}

/// A streaming framer for one direction of one TCP connection.
#[derive(Debug, Default, Clone)]
pub struct Framer {
    buf: Vec<u8>,
    opaque: bool,
}

impl Framer {
    /// A framer at the start of a stream.
    pub fn new() -> Framer {
        Framer::default()
    }

    /// Whether framing has been given up (the rest of the stream passes as [`Frame::Opaque`]).
    pub fn opaque(&self) -> bool {
        self.opaque
    }

    /// Gives up framing from now on (after a ConnectionBind, the stream is peer data).
    pub fn set_opaque(&mut self) {
        self.opaque = true;
    }

    /// Bytes held waiting for the rest of a frame.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Adds bytes read from the stream.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next whole frame, if there is one. Call until `None` after each [`Framer::push`].
    pub fn next_frame(&mut self) -> Option<Frame> {
        if self.buf.is_empty() {
            return None;
        }
        if self.opaque {
            return Some(Frame::Opaque(std::mem::take(&mut self.buf)));
        }
        let len = match stun::frame_kind(self.buf[0]) {
            FrameKind::Stun => match stun::stun_len(&self.buf) {
                Ok(n) => n,
                Err(stun::Error::Short) => return None,
                Err(_) => return self.give_up(),
            },
            FrameKind::ChannelData => {
                if self.buf.len() < CHANNEL_HEADER_LEN {
                    return None;
                }
                let n = usize::from(u16::from_be_bytes([self.buf[2], self.buf[3]]));
                CHANNEL_HEADER_LEN + n + (4 - n % 4) % 4
            }
            FrameKind::Other => return self.give_up(),
        };
        if self.buf.len() < len {
            return None;
        }
        let rest = self.buf.split_off(len);
        let frame = std::mem::replace(&mut self.buf, rest);
        Some(match stun::frame_kind(frame[0]) {
            FrameKind::Stun => Frame::Stun(frame),
            _ => Frame::ChannelData(frame),
        })
    }

    fn give_up(&mut self) -> Option<Frame> {
        self.opaque = true;
        Some(Frame::Opaque(std::mem::take(&mut self.buf)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::turn::stun::{Builder, Class, method};

    #[test]
    fn cuts_mixed_stream_at_any_split() {
        let a = Builder::new(method::ALLOCATE, Class::Request, &[1; 12])
            .attribute(0x19, &[17, 0, 0, 0])
            .finish();
        let cd = vec![0x40, 0x00, 0x00, 0x03, 9, 9, 9, 0];
        let b = Builder::new(method::REFRESH, Class::Request, &[2; 12]).finish();
        let stream: Vec<u8> = [a.clone(), cd.clone(), b.clone()].concat();
        for cut in 0..=stream.len() {
            let mut f = Framer::new();
            let mut out = Vec::new();
            for part in [&stream[..cut], &stream[cut..]] {
                f.push(part);
                while let Some(x) = f.next_frame() {
                    out.push(x);
                }
            }
            assert_eq!(
                out,
                vec![
                    Frame::Stun(a.clone()),
                    Frame::ChannelData(cd.clone()),
                    Frame::Stun(b.clone())
                ],
                "cut at {cut}"
            );
            assert_eq!(f.buffered(), 0);
        }
    }

    #[test]
    fn garbage_turns_opaque_and_keeps_every_byte() {
        let mut f = Framer::new();
        f.push(b"\xffGET / HTTP/1.1\r\n");
        assert_eq!(
            f.next_frame(),
            Some(Frame::Opaque(b"\xffGET / HTTP/1.1\r\n".to_vec()))
        );
        f.push(b"more");
        assert_eq!(f.next_frame(), Some(Frame::Opaque(b"more".to_vec())));
        assert!(f.opaque());
    }
}
