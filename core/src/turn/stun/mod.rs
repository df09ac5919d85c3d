//! STUN (RFC 8489) and TURN (RFC 8656, RFC 6062) message reading and the few messages sigmesh
//! writes itself (error responses).
//!
//! The reader borrows the bytes it is given and never allocates; every length in a message is
//! checked against the bytes really there, so arbitrary input gives an [`Error`], never a panic.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use hmac::{KeyInit, Mac};

/// The STUN magic cookie.
pub const MAGIC_COOKIE: u32 = 0x2112_A442;
/// Length of a STUN header.
pub const HEADER_LEN: usize = 20;
/// Length of a ChannelData header.
pub const CHANNEL_HEADER_LEN: usize = 4;

/// STUN/TURN methods sigmesh reads.
pub mod method {
    /// Binding (RFC 8489).
    pub const BINDING: u16 = 0x001;
    /// Allocate (RFC 8656).
    pub const ALLOCATE: u16 = 0x003;
    /// Refresh.
    pub const REFRESH: u16 = 0x004;
    /// Send (indication).
    pub const SEND: u16 = 0x006;
    /// Data (indication).
    pub const DATA: u16 = 0x007;
    /// CreatePermission.
    pub const CREATE_PERMISSION: u16 = 0x008;
    /// ChannelBind.
    pub const CHANNEL_BIND: u16 = 0x009;
    /// Connect (RFC 6062, TCP relays).
    pub const CONNECT: u16 = 0x00A;
    /// ConnectionBind (RFC 6062).
    pub const CONNECTION_BIND: u16 = 0x00B;
    /// ConnectionAttempt (RFC 6062).
    pub const CONNECTION_ATTEMPT: u16 = 0x00C;
}

/// STUN/TURN attribute types sigmesh reads or writes.
pub mod attr {
    /// USERNAME
    pub const USERNAME: u16 = 0x0006;
    /// MESSAGE-INTEGRITY (HMAC-SHA1)
    pub const MESSAGE_INTEGRITY: u16 = 0x0008;
    /// ERROR-CODE
    pub const ERROR_CODE: u16 = 0x0009;
    /// CHANNEL-NUMBER
    pub const CHANNEL_NUMBER: u16 = 0x000C;
    /// LIFETIME
    pub const LIFETIME: u16 = 0x000D;
    /// XOR-PEER-ADDRESS
    pub const XOR_PEER_ADDRESS: u16 = 0x0012;
    /// DATA
    pub const DATA: u16 = 0x0013;
    /// REALM
    pub const REALM: u16 = 0x0014;
    /// NONCE
    pub const NONCE: u16 = 0x0015;
    /// XOR-RELAYED-ADDRESS
    pub const XOR_RELAYED_ADDRESS: u16 = 0x0016;
    /// REQUESTED-TRANSPORT
    pub const REQUESTED_TRANSPORT: u16 = 0x0019;
    /// XOR-MAPPED-ADDRESS
    pub const XOR_MAPPED_ADDRESS: u16 = 0x0020;
    /// CONNECTION-ID (RFC 6062)
    pub const CONNECTION_ID: u16 = 0x002A;
    /// SOFTWARE
    pub const SOFTWARE: u16 = 0x8022;
    /// FINGERPRINT
    pub const FINGERPRINT: u16 = 0x8028;
}

/// The class of a STUN message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Class {
    /// Request.
    Request,
    /// Indication.
    Indication,
    /// Success response.
    Success,
    /// Error response.
    Error,
}

impl Class {
    fn bits(self) -> u16 {
        match self {
            Class::Request => 0,
            Class::Indication => 1,
            Class::Success => 2,
            Class::Error => 3,
        }
    }
}

/// Why bytes are not a STUN message or a ChannelData message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// Fewer bytes than a header.
    #[error("shorter than a header")]
    Short,
    /// The first two bits are neither `00` (STUN) nor `01` (ChannelData).
    #[error("neither STUN nor ChannelData")]
    NotStun,
    /// The magic cookie is wrong (RFC 3489 or not STUN at all).
    #[error("no magic cookie")]
    NoCookie,
    /// The length field disagrees with the bytes.
    #[error("length field does not match")]
    Length,
    /// An attribute runs past the end of the message.
    #[error("attribute runs past the message")]
    Attribute,
    /// An address attribute is malformed.
    #[error("malformed address attribute")]
    Address,
}

/// What kind of frame the first byte announces (RFC 7983 demultiplexing of a TURN flow).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameKind {
    /// A STUN message (first two bits `00`).
    Stun,
    /// A ChannelData message (first two bits `01`).
    ChannelData,
    /// Anything else: not TURN.
    Other,
}

/// The kind of frame a buffer starts with.
pub fn frame_kind(first: u8) -> FrameKind {
    match first >> 6 {
        0 => FrameKind::Stun,
        1 => FrameKind::ChannelData,
        _ => FrameKind::Other,
    }
}

/// A STUN message borrowed from a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Message<'a> {
    /// Method (12 bits).
    pub method: u16,
    /// Class.
    pub class: Class,
    /// Transaction ID.
    pub txid: [u8; 12],
    /// The whole message (header and attributes).
    pub raw: &'a [u8],
}

/// One attribute: type and value (without padding).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attribute<'a> {
    /// Attribute type.
    pub kind: u16,
    /// Value bytes.
    pub value: &'a [u8],
    /// Offset of the attribute header inside the message.
    pub offset: usize,
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

fn be32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes([
        *b.get(at)?,
        *b.get(at + 1)?,
        *b.get(at + 2)?,
        *b.get(at + 3)?,
    ]))
}

/// Splits a message type into method and class.
pub fn split_type(t: u16) -> (u16, Class) {
    let method = (t & 0x000F) | ((t & 0x00E0) >> 1) | ((t & 0x3E00) >> 2);
    let class = match ((t >> 4) & 1) | ((t >> 7) & 2) {
        0 => Class::Request,
        1 => Class::Indication,
        2 => Class::Success,
        _ => Class::Error,
    };
    (method, class)
}

/// Joins a method and class into a message type.
pub fn join_type(method: u16, class: Class) -> u16 {
    let m = method & 0x0FFF;
    let c = class.bits();
    (m & 0x000F) | ((m & 0x0070) << 1) | ((m & 0x0F80) << 2) | ((c & 1) << 4) | ((c & 2) << 7)
}

/// Length of the STUN message at the start of `buf` as announced by its header (20 + length),
/// if the header is there and looks like STUN.
pub fn stun_len(buf: &[u8]) -> Result<usize, Error> {
    if buf.len() < HEADER_LEN {
        return Err(Error::Short);
    }
    if frame_kind(buf[0]) != FrameKind::Stun {
        return Err(Error::NotStun);
    }
    if be32(buf, 4) != Some(MAGIC_COOKIE) {
        return Err(Error::NoCookie);
    }
    let len = usize::from(be16(buf, 2).ok_or(Error::Short)?);
    if len % 4 != 0 {
        return Err(Error::Length);
    }
    Ok(HEADER_LEN + len)
}

impl<'a> Message<'a> {
    /// Reads one whole STUN message: `buf` must be exactly the message (a UDP datagram, or a
    /// frame cut by [`crate::turn::Framer`]). Every attribute is bounds-checked here, so the
    /// attribute iterator of the result cannot fail.
    pub fn parse(buf: &'a [u8]) -> Result<Message<'a>, Error> {
        let total = stun_len(buf)?;
        if total != buf.len() {
            return Err(Error::Length);
        }
        let mut at = HEADER_LEN;
        while at < total {
            let len = usize::from(be16(buf, at + 2).ok_or(Error::Attribute)?);
            let end = at + 4 + len;
            if end > total {
                return Err(Error::Attribute);
            }
            at = end + pad4(len);
            if at > total {
                return Err(Error::Attribute);
            }
        }
        let (method, class) = split_type(be16(buf, 0).ok_or(Error::Short)?);
        let mut txid = [0u8; 12];
        txid.copy_from_slice(&buf[8..20]);
        Ok(Message {
            method,
            class,
            txid,
            raw: buf,
        })
    }

    /// The attributes in order.
    pub fn attributes(&self) -> Attributes<'a> {
        Attributes {
            buf: self.raw,
            at: HEADER_LEN,
        }
    }

    /// The first attribute of this type.
    pub fn attribute(&self, kind: u16) -> Option<&'a [u8]> {
        self.attributes().find(|a| a.kind == kind).map(|a| a.value)
    }

    /// Every XOR-PEER-ADDRESS; an error if any is malformed.
    pub fn peer_addresses(&self) -> Result<Vec<SocketAddr>, Error> {
        self.attributes()
            .filter(|a| a.kind == attr::XOR_PEER_ADDRESS)
            .map(|a| xor_address(a.value, &self.txid))
            .collect()
    }

    /// A XOR-encoded address attribute (the first of `kind`).
    pub fn xor_address(&self, kind: u16) -> Option<Result<SocketAddr, Error>> {
        self.attribute(kind).map(|v| xor_address(v, &self.txid))
    }

    /// LIFETIME in seconds.
    pub fn lifetime(&self) -> Option<u32> {
        self.attribute(attr::LIFETIME).and_then(|v| be32(v, 0))
    }

    /// CHANNEL-NUMBER.
    pub fn channel_number(&self) -> Option<u16> {
        self.attribute(attr::CHANNEL_NUMBER)
            .and_then(|v| be16(v, 0))
    }

    /// USERNAME as text (lossy).
    pub fn username(&self) -> Option<String> {
        self.attribute(attr::USERNAME)
            .map(|v| String::from_utf8_lossy(v).into_owned())
    }

    /// REALM as text (lossy).
    pub fn realm(&self) -> Option<String> {
        self.attribute(attr::REALM)
            .map(|v| String::from_utf8_lossy(v).into_owned())
    }

    /// Length of the DATA attribute's value.
    pub fn data_len(&self) -> usize {
        self.attribute(attr::DATA).map_or(0, <[u8]>::len)
    }

    /// ERROR-CODE as a number (`403`).
    pub fn error_code(&self) -> Option<u16> {
        let v = self.attribute(attr::ERROR_CODE)?;
        let class = u16::from(*v.get(2)? & 0x07);
        let number = u16::from(*v.get(3)?);
        Some(class * 100 + number)
    }

    /// Checks MESSAGE-INTEGRITY (HMAC-SHA1) with `key`. `false` when absent or wrong.
    pub fn verify_integrity(&self, key: &[u8]) -> bool {
        let Some(mi) = self
            .attributes()
            .find(|a| a.kind == attr::MESSAGE_INTEGRITY)
        else {
            return false;
        };
        if mi.value.len() != 20 {
            return false;
        }
        let mut head = [0u8; HEADER_LEN];
        head.copy_from_slice(&self.raw[..HEADER_LEN]);
        // The length covers everything up to and including MESSAGE-INTEGRITY.
        let covered = mi.offset + 4 + 20 - HEADER_LEN;
        let Ok(covered) = u16::try_from(covered) else {
            return false;
        };
        head[2..4].copy_from_slice(&covered.to_be_bytes());
        let Ok(mut mac) = hmac::Hmac::<sha1::Sha1>::new_from_slice(key) else {
            return false;
        };
        mac.update(&head);
        mac.update(&self.raw[HEADER_LEN..mi.offset]);
        mac.verify_slice(mi.value).is_ok()
    }
}

fn pad4(len: usize) -> usize {
    (4 - len % 4) % 4
}

/// Iterator over the attributes of a parsed [`Message`].
#[derive(Debug, Clone)]
pub struct Attributes<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> Iterator for Attributes<'a> {
    type Item = Attribute<'a>;

    fn next(&mut self) -> Option<Attribute<'a>> {
        let kind = be16(self.buf, self.at)?;
        let len = usize::from(be16(self.buf, self.at + 2)?);
        let value = self.buf.get(self.at + 4..self.at + 4 + len)?;
        let offset = self.at;
        self.at += 4 + len + pad4(len);
        Some(Attribute {
            kind,
            value,
            offset,
        })
    }
}

/// Decodes a XOR-MAPPED/PEER/RELAYED-ADDRESS value.
pub fn xor_address(v: &[u8], txid: &[u8; 12]) -> Result<SocketAddr, Error> {
    let family = *v.get(1).ok_or(Error::Address)?;
    let port = be16(v, 2).ok_or(Error::Address)? ^ (MAGIC_COOKIE >> 16) as u16;
    match (family, v.len()) {
        (0x01, 8) => {
            let x = be32(v, 4).ok_or(Error::Address)? ^ MAGIC_COOKIE;
            Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::from(x)), port))
        }
        (0x02, 20) => {
            let mut key = [0u8; 16];
            key[..4].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
            key[4..].copy_from_slice(txid);
            let mut a = [0u8; 16];
            for (i, b) in a.iter_mut().enumerate() {
                *b = v[4 + i] ^ key[i];
            }
            Ok(SocketAddr::new(IpAddr::V6(Ipv6Addr::from(a)), port))
        }
        _ => Err(Error::Address),
    }
}

/// Encodes a XOR address value (the inverse of [`xor_address`]).
pub fn encode_xor_address(addr: SocketAddr, txid: &[u8; 12]) -> Vec<u8> {
    let port = addr.port() ^ (MAGIC_COOKIE >> 16) as u16;
    let mut out = vec![0u8];
    match addr.ip() {
        IpAddr::V4(ip) => {
            out.push(0x01);
            out.extend_from_slice(&port.to_be_bytes());
            out.extend_from_slice(&(u32::from(ip) ^ MAGIC_COOKIE).to_be_bytes());
        }
        IpAddr::V6(ip) => {
            out.push(0x02);
            out.extend_from_slice(&port.to_be_bytes());
            let mut key = [0u8; 16];
            key[..4].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
            key[4..].copy_from_slice(txid);
            for (b, k) in ip.octets().iter().zip(key) {
                out.push(b ^ k);
            }
        }
    }
    out
}

/// A ChannelData message borrowed from a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChannelData<'a> {
    /// Channel number (0x4000..=0x7FFF).
    pub channel: u16,
    /// Application data.
    pub data: &'a [u8],
}

impl<'a> ChannelData<'a> {
    /// Reads a ChannelData message. Trailing bytes after the data (padding) are allowed.
    pub fn parse(buf: &'a [u8]) -> Result<ChannelData<'a>, Error> {
        if buf.len() < CHANNEL_HEADER_LEN {
            return Err(Error::Short);
        }
        if frame_kind(buf[0]) != FrameKind::ChannelData {
            return Err(Error::NotStun);
        }
        let channel = be16(buf, 0).ok_or(Error::Short)?;
        let len = usize::from(be16(buf, 2).ok_or(Error::Short)?);
        let data = buf
            .get(CHANNEL_HEADER_LEN..CHANNEL_HEADER_LEN + len)
            .ok_or(Error::Length)?;
        Ok(ChannelData { channel, data })
    }
}

/// Builds STUN messages: header, attributes, then optional MESSAGE-INTEGRITY and FINGERPRINT.
#[derive(Debug, Clone)]
pub struct Builder {
    buf: Vec<u8>,
}

impl Builder {
    /// A message of `method` and `class` with transaction ID `txid`.
    pub fn new(method: u16, class: Class, txid: &[u8; 12]) -> Builder {
        let mut buf = Vec::with_capacity(128);
        buf.extend_from_slice(&join_type(method, class).to_be_bytes());
        buf.extend_from_slice(&[0, 0]);
        buf.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
        buf.extend_from_slice(txid);
        Builder { buf }
    }

    fn set_len(&mut self, extra: usize) {
        let len = (self.buf.len() - HEADER_LEN + extra) as u16;
        self.buf[2..4].copy_from_slice(&len.to_be_bytes());
    }

    /// Appends an attribute (values longer than 65,535 bytes are cut).
    pub fn attribute(mut self, kind: u16, value: &[u8]) -> Builder {
        let value = &value[..value.len().min(usize::from(u16::MAX) - 3)];
        self.buf.extend_from_slice(&kind.to_be_bytes());
        self.buf
            .extend_from_slice(&(value.len() as u16).to_be_bytes());
        self.buf.extend_from_slice(value);
        self.buf.resize(self.buf.len() + pad4(value.len()), 0);
        self.set_len(0);
        self
    }

    /// Appends ERROR-CODE.
    pub fn error_code(self, code: u16, reason: &str) -> Builder {
        let mut v = vec![0, 0, (code / 100) as u8 & 0x07, (code % 100) as u8];
        v.extend_from_slice(reason.as_bytes());
        self.attribute(attr::ERROR_CODE, &v)
    }

    /// Appends MESSAGE-INTEGRITY computed with `key`.
    pub fn integrity(mut self, key: &[u8]) -> Builder {
        self.set_len(24);
        let Ok(mut mac) = hmac::Hmac::<sha1::Sha1>::new_from_slice(key) else {
            return self;
        };
        mac.update(&self.buf);
        let tag = mac.finalize().into_bytes();
        self.buf
            .extend_from_slice(&attr::MESSAGE_INTEGRITY.to_be_bytes());
        self.buf.extend_from_slice(&20u16.to_be_bytes());
        self.buf.extend_from_slice(&tag);
        self
    }

    /// Appends FINGERPRINT and returns the bytes.
    pub fn fingerprint(mut self) -> Vec<u8> {
        self.set_len(8);
        let crc = crc32(&self.buf) ^ 0x5354_554E;
        self.buf.extend_from_slice(&attr::FINGERPRINT.to_be_bytes());
        self.buf.extend_from_slice(&4u16.to_be_bytes());
        self.buf.extend_from_slice(&crc.to_be_bytes());
        self.buf
    }

    /// The bytes, without FINGERPRINT.
    pub fn finish(self) -> Vec<u8> {
        self.buf
    }
}

/// CRC-32 (ISO-HDLC, as FINGERPRINT uses), bitwise: it runs once per refused message.
pub fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            let mask = (crc & 1).wrapping_neg();
            crc = (crc >> 1) ^ (0xEDB8_8320 & mask);
        }
    }
    !crc
}

/// The long-term credential key: MD5(username ":" realm ":" password) (RFC 8489 §9.2.2).
pub fn long_term_key(username: &str, realm: &str, password: &str) -> [u8; 16] {
    use md5::Digest;
    let mut h = md5::Md5::new();
    h.update(username.as_bytes());
    h.update(b":");
    h.update(realm.as_bytes());
    h.update(b":");
    h.update(password.as_bytes());
    h.finalize().into()
}

/// An error response to `request` (same method and transaction ID) with `code` and `reason`,
/// signed with `key` when given, and with FINGERPRINT.
pub fn error_response(
    request: &Message<'_>,
    code: u16,
    reason: &str,
    key: Option<&[u8]>,
) -> Vec<u8> {
    let mut b = Builder::new(request.method, Class::Error, &request.txid)
        .error_code(code, reason)
        .attribute(attr::SOFTWARE, b"sigmesh");
    if let Some(key) = key {
        b = b.integrity(key);
    }
    b.fingerprint()
}

#[cfg(test)]
mod tests;
