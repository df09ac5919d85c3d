//! Cutting a TURN-over-TCP byte stream into messages (RFC 8656 §12.5 and RFC 6062).
//!
//! Over TCP, STUN messages and ChannelData messages follow one another; each is framed by its
//! own length field, and ChannelData is padded to a multiple of 4 bytes. The framer buffers at
//! most one frame (at most [`MAX_FRAME`] bytes). It fails closed: when the stream stops looking
//! like TURN (first two bits `10`/`11`, a STUN header without the magic cookie), or a frame
//! would be longer than 65,535 bytes in all (which TURN servers parse differently: request
//! smuggling past the deny list), it yields [`Frame::Invalid`] once and nothing after; the
//! caller ends the connection. After an RFC 6062 ConnectionBind succeeds the data connection
//! carries raw peer bytes: the caller calls [`Framer::set_opaque`], and the rest of the stream
//! passes as [`Frame::Opaque`].

use super::stun::{self, CHANNEL_HEADER_LEN, FrameKind};

/// Largest frame accepted, in all (header, body, padding): longer ones end the stream.
pub const MAX_FRAME: usize = 0xFFFF;

/// One piece of a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// One whole STUN message.
    Stun(Vec<u8>),
    /// One whole ChannelData message, padding included.
    ChannelData(Vec<u8>),
    /// Peer data after a ConnectionBind ([`Framer::set_opaque`]); passed through untouched.
    Opaque(Vec<u8>),
    /// Not TURN framing, or a frame over [`MAX_FRAME`]: never forwarded; the stream is over.
    Invalid,
}

impl Frame {
    /// The bytes to forward.
    pub fn bytes(&self) -> &[u8] {
        match self {
            Frame::Stun(b) | Frame::ChannelData(b) | Frame::Opaque(b) => b,
            Frame::Invalid => &[],
        }
    }
}

/// A streaming framer for one direction of one TCP connection.
#[derive(Debug, Default, Clone)]
pub struct Framer {
    buf: Vec<u8>,
    opaque: bool,
    /// The stream was refused: nothing more is framed.
    invalid: bool,
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

    /// Adds bytes read from the stream (none once it was refused).
    pub fn push(&mut self, bytes: &[u8]) {
        if !self.invalid {
            self.buf.extend_from_slice(bytes);
        }
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
        if len > MAX_FRAME {
            return self.give_up();
        }
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
        if self.invalid {
            return None;
        }
        self.invalid = true;
        self.buf = Vec::new();
        Some(Frame::Invalid)
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
    fn garbage_is_refused_once_and_nothing_after_it_passes() {
        for garbage in [
            &b"\xffGET / HTTP/1.1\r\n"[..],
            // A TLS ClientHello: 0x16 0x03 0x01 reads as a STUN header without the cookie.
            &[
                0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03, 0, 0, 0, 0, 0, 0,
                0, 0, 0,
            ][..],
        ] {
            let mut f = Framer::new();
            f.push(garbage);
            assert_eq!(f.next_frame(), Some(Frame::Invalid));
            f.push(b"more");
            assert_eq!(f.next_frame(), None);
            assert_eq!(f.buffered(), 0);
        }
    }

    #[test]
    fn frames_over_65535_bytes_in_all_are_refused() {
        // ChannelData of 0xFFFF bytes: 4 + 65,535 + 1 padding.
        let mut f = Framer::new();
        f.push(&[0x40, 0x00, 0xff, 0xff]);
        assert_eq!(f.next_frame(), Some(Frame::Invalid));
        // STUN announcing 0xFFEC body bytes: 20 + 65,516 = 65,536.
        let mut f = Framer::new();
        let mut h = Builder::new(method::SEND, Class::Indication, &[3; 12]).finish();
        h[2] = 0xff;
        h[3] = 0xec;
        f.push(&h);
        assert_eq!(f.next_frame(), Some(Frame::Invalid));
        // The largest accepted ChannelData: 4 + 65,528 = 65,532 bytes, padded already.
        let mut f = Framer::new();
        let mut cd = vec![0x40, 0x00, 0xff, 0xf8];
        cd.resize(4 + 0xfff8, 7);
        f.push(&cd);
        assert_eq!(f.next_frame(), Some(Frame::ChannelData(cd)));
    }

    #[test]
    fn after_a_connection_bind_the_stream_is_opaque() {
        let mut f = Framer::new();
        f.set_opaque();
        f.push(b"\xffraw peer bytes");
        assert_eq!(
            f.next_frame(),
            Some(Frame::Opaque(b"\xffraw peer bytes".to_vec()))
        );
    }
}
