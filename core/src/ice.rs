//! ICE candidates (RFC 8839 §5.1): a borrowing parser, a formatter, and a scanner that finds
//! candidates anywhere in a text (SDP `a=candidate:` lines, trickled candidate strings, JSON).
//!
//! ```text
//! candidate:<foundation> <component> <transport> <priority> <address> <port> typ <type>
//!           [raddr <address>] [rport <port>] *(<extension-name> <extension-value>)
//! ```
//!
//! [`Candidate::parse`] accepts the line with or without `candidate:` / `a=candidate:`, a trailing
//! `\r\n`, and runs of spaces or tabs between fields. It never allocates: every field borrows from
//! the input. What it checks, field by field:
//!
//! | field | accepted |
//! |---|---|
//! | foundation | 1 to 32 `ice-char`s (`ALPHA / DIGIT / "+" / "/"`) |
//! | component | 1 to 256 |
//! | transport | `udp` or `tcp` in any case; another token is [`Transport::Other`] |
//! | priority | a decimal `u32` |
//! | address | IPv4, IPv6 (no brackets, an optional `%zone`), an mDNS name (`….local`) or another host name |
//! | port, rport | 0 to 65535 |
//! | typ | `host`, `srflx`, `prflx`, `relay`; another token is [`CandidateType::Other`] |
//! | raddr, rport, tcptype | anywhere after `typ` (browsers put `tcptype` before or after them); `tcptype` is `active`, `passive` or `so` |
//! | extensions | name/value pairs after `typ` (`generation 0`, `ufrag …`, `network-id 1`); a name without a value is an error |
//!
//! [`candidates_in`] finds every `candidate:` in a text and parses what follows up to the end of
//! the line, a `"` or a `\` (so it works on raw SDP and on SDP inside a JSON string, where the
//! line break is the two characters `\r\n`).

use std::fmt;
use std::net::IpAddr;

/// A parsed ICE candidate, borrowing from the text it was parsed from. Two candidates are equal
/// when their fields and extensions are (whatever the spacing or attribute order of their text).
#[derive(Debug, Clone, Copy)]
pub struct Candidate<'a> {
    /// Foundation (`1*32ice-char`).
    pub foundation: &'a str,
    /// Component ID: 1 for RTP (or everything, with rtcp-mux), 2 for RTCP.
    pub component: u16,
    /// Transport protocol.
    pub transport: Transport<'a>,
    /// Priority.
    pub priority: u32,
    /// Connection address as written: an IP address or a host name (mDNS `….local`).
    pub address: &'a str,
    /// What kind of address [`Candidate::address`] is.
    pub address_kind: AddressKind,
    /// Port.
    pub port: u16,
    /// Candidate type.
    pub typ: CandidateType<'a>,
    /// Related address (`raddr`).
    pub raddr: Option<&'a str>,
    /// Related port (`rport`).
    pub rport: Option<u16>,
    /// RFC 6544 TCP candidate type (`tcptype`).
    pub tcptype: Option<TcpType>,
    /// The text after the candidate type: extensions (and raddr/rport/tcptype, which
    /// [`Candidate::extensions`] skips).
    tail: &'a str,
}

/// The transport of a candidate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport<'a> {
    /// UDP (`UDP` / `udp`).
    Udp,
    /// TCP (RFC 6544).
    Tcp,
    /// Another transport token, as written.
    Other(&'a str),
}

/// The candidate type (`typ`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CandidateType<'a> {
    /// A local interface address.
    Host,
    /// Server reflexive: the address a STUN server saw.
    Srflx,
    /// Peer reflexive: learned from a connectivity check.
    Prflx,
    /// A TURN relay address.
    Relay,
    /// Another type token, as written.
    Other(&'a str),
}

/// RFC 6544 TCP candidate type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TcpType {
    /// Opens outgoing connections only.
    Active,
    /// Accepts incoming connections only.
    Passive,
    /// Simultaneous open.
    So,
}

/// What kind of connection address a candidate has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressKind {
    /// An IPv4 address.
    Ipv4,
    /// An IPv6 address.
    Ipv6,
    /// An mDNS host name (`<uuid>.local`), as browsers use to hide host addresses.
    Mdns,
    /// Another host name.
    Fqdn,
}

/// Why a line is not a candidate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// A required field is missing (the line ends early).
    #[error("missing {0}")]
    Missing(&'static str),
    /// The foundation is empty, longer than 32 or has a character outside `ALPHA / DIGIT / + /`.
    #[error("bad foundation")]
    Foundation,
    /// The component is not a number from 1 to 256.
    #[error("bad component id")]
    Component,
    /// The priority is not a decimal 32-bit number.
    #[error("bad priority")]
    Priority,
    /// The address is neither an IP address nor a host name.
    #[error("bad connection address")]
    Address,
    /// A port is not a number from 0 to 65535.
    #[error("bad port")]
    Port,
    /// The seventh field is not `typ`.
    #[error("expected `typ`")]
    Typ,
    /// `tcptype` is not `active`, `passive` or `so`.
    #[error("bad tcptype")]
    TcpType,
    /// An extension or `raddr`/`rport`/`tcptype` has no value.
    #[error("attribute without a value")]
    MissingValue,
    /// `raddr`, `rport` or `tcptype` appears twice.
    #[error("repeated attribute")]
    Repeated,
}

impl<'a> Candidate<'a> {
    /// Parses a candidate line (with or without `candidate:` / `a=candidate:`).
    pub fn parse(line: &'a str) -> Result<Candidate<'a>, ParseError> {
        let line = line.trim_matches([' ', '\t', '\r', '\n']);
        let line = line.strip_prefix("a=").unwrap_or(line);
        let line = line.strip_prefix("candidate:").unwrap_or(line);
        let mut f = Fields(line);
        let mut next = |what| f.next().ok_or(ParseError::Missing(what));

        let foundation = next("foundation")?;
        if foundation.len() > 32 || !foundation.bytes().all(is_ice_char) {
            return Err(ParseError::Foundation);
        }
        let component = digits(next("component")?, 3)
            .filter(|c| (1..=256).contains(c))
            .ok_or(ParseError::Component)? as u16;
        let transport = Transport::from_token(next("transport")?);
        let priority = digits(next("priority")?, 10)
            .and_then(|p| u32::try_from(p).ok())
            .ok_or(ParseError::Priority)?;
        let address = next("address")?;
        let kind = address_kind(address).ok_or(ParseError::Address)?;
        let port_no = port(next("port")?)?;
        if next("typ")? != "typ" {
            return Err(ParseError::Typ);
        }
        let typ_token = next("candidate type")?;
        let typ = CandidateType::from_token(typ_token);
        // The rest, borrowed as one slice for `extensions()`.
        let tail_start = offset_after(line, typ_token);
        let tail = line.get(tail_start..).unwrap_or("");

        let mut c = Candidate {
            foundation,
            component,
            transport,
            priority,
            address,
            address_kind: kind,
            port: port_no,
            typ,
            raddr: None,
            rport: None,
            tcptype: None,
            tail,
        };
        let mut rest = Fields(tail);
        while let Some(name) = rest.next() {
            let value = rest.next().ok_or(ParseError::MissingValue)?;
            match name {
                "raddr" => {
                    address_kind(value).ok_or(ParseError::Address)?;
                    set_once(&mut c.raddr, value)?;
                }
                "rport" => set_once(&mut c.rport, port(value)?)?,
                "tcptype" => set_once(&mut c.tcptype, TcpType::from_token(value)?)?,
                _ => {}
            }
        }
        Ok(c)
    }

    /// The extension attributes (name, value), in order, without `raddr`, `rport` and `tcptype`.
    pub fn extensions(&self) -> impl Iterator<Item = (&'a str, &'a str)> + 'a {
        let mut f = Fields(self.tail);
        std::iter::from_fn(move || Some((f.next()?, f.next()?)))
            .filter(|(n, _)| !matches!(*n, "raddr" | "rport" | "tcptype"))
    }

    /// The value of extension `name` (the first one).
    pub fn extension(&self, name: &str) -> Option<&'a str> {
        self.extensions().find(|(n, _)| *n == name).map(|(_, v)| v)
    }

    /// The connection address as an IP address (`None` for host names).
    pub fn ip(&self) -> Option<IpAddr> {
        parse_ip(self.address)
    }
}

impl PartialEq for Candidate<'_> {
    fn eq(&self, o: &Self) -> bool {
        (
            self.foundation,
            self.component,
            self.transport,
            self.priority,
            self.address,
            self.address_kind,
            self.port,
            self.typ,
            self.raddr,
            self.rport,
            self.tcptype,
        ) == (
            o.foundation,
            o.component,
            o.transport,
            o.priority,
            o.address,
            o.address_kind,
            o.port,
            o.typ,
            o.raddr,
            o.rport,
            o.tcptype,
        ) && self.extensions().eq(o.extensions())
    }
}

impl Eq for Candidate<'_> {}

impl fmt::Display for Candidate<'_> {
    /// `candidate:…` with `raddr`, `rport`, `tcptype`, then the extensions in their order.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "candidate:{} {} {} {} {} {} typ {}",
            self.foundation,
            self.component,
            self.transport,
            self.priority,
            self.address,
            self.port,
            self.typ
        )?;
        if let Some(a) = self.raddr {
            write!(f, " raddr {a}")?;
        }
        if let Some(p) = self.rport {
            write!(f, " rport {p}")?;
        }
        if let Some(t) = self.tcptype {
            write!(f, " tcptype {t}")?;
        }
        for (n, v) in self.extensions() {
            write!(f, " {n} {v}")?;
        }
        Ok(())
    }
}

impl<'a> Transport<'a> {
    fn from_token(t: &'a str) -> Self {
        if t.eq_ignore_ascii_case("udp") {
            Transport::Udp
        } else if t.eq_ignore_ascii_case("tcp") {
            Transport::Tcp
        } else {
            Transport::Other(t)
        }
    }

    /// `udp`, `tcp` or `other`: a fixed set for metric labels.
    pub fn label(&self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
            Transport::Other(_) => "other",
        }
    }
}

impl fmt::Display for Transport<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Transport::Other(t) => f.write_str(t),
            t => f.write_str(t.label()),
        }
    }
}

impl<'a> CandidateType<'a> {
    fn from_token(t: &'a str) -> Self {
        match t {
            "host" => CandidateType::Host,
            "srflx" => CandidateType::Srflx,
            "prflx" => CandidateType::Prflx,
            "relay" => CandidateType::Relay,
            other => CandidateType::Other(other),
        }
    }

    /// `host`, `srflx`, `prflx`, `relay` or `other`: a fixed set for metric labels.
    pub fn label(&self) -> &'static str {
        match self {
            CandidateType::Host => "host",
            CandidateType::Srflx => "srflx",
            CandidateType::Prflx => "prflx",
            CandidateType::Relay => "relay",
            CandidateType::Other(_) => "other",
        }
    }
}

impl fmt::Display for CandidateType<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CandidateType::Other(t) => f.write_str(t),
            t => f.write_str(t.label()),
        }
    }
}

impl TcpType {
    fn from_token(t: &str) -> Result<Self, ParseError> {
        match t {
            "active" => Ok(TcpType::Active),
            "passive" => Ok(TcpType::Passive),
            "so" => Ok(TcpType::So),
            _ => Err(ParseError::TcpType),
        }
    }

    /// `active`, `passive` or `so`.
    pub fn as_str(&self) -> &'static str {
        match self {
            TcpType::Active => "active",
            TcpType::Passive => "passive",
            TcpType::So => "so",
        }
    }
}

impl fmt::Display for TcpType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

// === scanning ===

/// Most candidates read from one message; the rest are neither parsed nor counted. A real offer
/// carries a few dozen at most.
pub const MAX_CANDIDATES: usize = 128;

/// The longest candidate text parsed (RFC 8839 lines are well under 256 bytes); a longer one
/// is parsed as cut there.
pub const MAX_CANDIDATE_LEN: usize = 512;

/// Every `candidate:` in `text`, parsed up to the end of its line, a `"` or a `\`, at most
/// [`MAX_CANDIDATE_LEN`] bytes, and at most [`MAX_CANDIDATES`] of them. Yields the parse result
/// of each (a `candidate:` followed by something else is an `Err`).
///
/// Linear in `text` whatever it holds: the search goes on after the end of each candidate (a
/// `candidate:` inside another one's text is not a candidate of its own), and each candidate's
/// end is looked for in a bounded window. (It used to look for the end of the line at every
/// `candidate:`, which made a 64 KiB line of `candidate:` cost 0.4 s.)
pub fn candidates_in(text: &str) -> impl Iterator<Item = Result<Candidate<'_>, ParseError>> {
    Scan {
        text,
        at: 0,
        left: MAX_CANDIDATES,
    }
}

struct Scan<'t> {
    text: &'t str,
    /// Where the search goes on.
    at: usize,
    /// Candidates still to read.
    left: usize,
}

impl<'t> Iterator for Scan<'t> {
    type Item = Result<Candidate<'t>, ParseError>;

    fn next(&mut self) -> Option<Self::Item> {
        const NEEDLE: &str = "candidate:";
        static FINDER: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
            std::sync::LazyLock::new(|| memchr::memmem::Finder::new(NEEDLE));
        if self.left == 0 {
            return None;
        }
        let text = self.text;
        let start = self.at + FINDER.find(text.as_bytes().get(self.at..)?)? + NEEDLE.len();
        let mut window_end = (start + MAX_CANDIDATE_LEN).min(text.len());
        while !text.is_char_boundary(window_end) {
            window_end -= 1;
        }
        // The candidate ends at a quote (a JSON string), a backslash (an escaped `\r\n`) or
        // a line end, whichever comes first.
        let w = &text.as_bytes()[start..window_end];
        let first = memchr::memchr3(b'"', b'\\', b'\r', w);
        let end = memchr::memchr(b'\n', &w[..first.unwrap_or(w.len())])
            .or(first)
            .map_or(window_end, |e| start + e);
        self.at = end;
        self.left -= 1;
        Some(Candidate::parse(&text[start..end]))
    }
}

// === helpers ===

/// The fields of a candidate line: runs of bytes other than space and tab (what
/// `split([' ', '\t']).filter(non-empty)` gives, in one byte loop).
struct Fields<'a>(&'a str);

impl<'a> Iterator for Fields<'a> {
    type Item = &'a str;

    #[inline]
    fn next(&mut self) -> Option<&'a str> {
        let b = self.0.as_bytes();
        let mut start = 0;
        while start < b.len() && matches!(b[start], b' ' | b'\t') {
            start += 1;
        }
        if start == b.len() {
            return None;
        }
        let mut end = start + 1;
        while end < b.len() && !matches!(b[end], b' ' | b'\t') {
            end += 1;
        }
        // Space and tab are ASCII: both ends are char boundaries.
        let field = &self.0[start..end];
        self.0 = &self.0[end..];
        Some(field)
    }
}

fn is_ice_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'+' || b == b'/'
}

/// A decimal number of at most `max` digits (no sign; `max` at most 19, so it cannot overflow).
fn digits(s: &str, max: usize) -> Option<u64> {
    if s.is_empty() || s.len() > max.min(19) {
        return None;
    }
    s.bytes().try_fold(0u64, |n, b| {
        b.is_ascii_digit().then(|| n * 10 + u64::from(b - b'0'))
    })
}

fn port(s: &str) -> Result<u16, ParseError> {
    digits(s, 5)
        .and_then(|p| u16::try_from(p).ok())
        .ok_or(ParseError::Port)
}

fn set_once<T>(slot: &mut Option<T>, v: T) -> Result<(), ParseError> {
    if slot.is_some() {
        return Err(ParseError::Repeated);
    }
    *slot = Some(v);
    Ok(())
}

/// Byte offset in `line` just past `part`, a subslice of it.
fn offset_after(line: &str, part: &str) -> usize {
    (part.as_ptr() as usize).saturating_sub(line.as_ptr() as usize) + part.len()
}

fn parse_ip(s: &str) -> Option<IpAddr> {
    if !s.as_bytes().contains(&b':') {
        return s.parse::<std::net::Ipv4Addr>().ok().map(IpAddr::V4);
    }
    // An IPv6 zone (`fe80::1%eth0`) is allowed and ignored.
    let s = match s.split_once('%') {
        Some((ip, zone)) if !zone.is_empty() => ip,
        _ => s,
    };
    s.parse::<std::net::Ipv6Addr>().ok().map(IpAddr::V6)
}

/// The kind of a connection address, or `None` if it is not one.
fn address_kind(s: &str) -> Option<AddressKind> {
    if let Some(ip) = parse_ip(s) {
        return Some(match ip {
            IpAddr::V4(_) => AddressKind::Ipv4,
            IpAddr::V6(_) => AddressKind::Ipv6,
        });
    }
    // A host name: dot-separated labels of letters, digits, `-` and `_`, at most 253 bytes.
    let name = s.strip_suffix('.').unwrap_or(s);
    let ok = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    if !ok {
        return None;
    }
    let lower_local =
        name.len() > 6 && name.as_bytes()[name.len() - 6..].eq_ignore_ascii_case(b".local");
    Some(if lower_local {
        AddressKind::Mdns
    } else {
        AddressKind::Fqdn
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chrome_host_udp() {
        let c = Candidate::parse(
            "candidate:842163049 1 udp 1677729535 192.168.1.5 53622 typ host generation 0 ufrag Kx9d network-id 1 network-cost 10",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.foundation, "842163049");
        assert_eq!(c.component, 1);
        assert_eq!(c.transport, Transport::Udp);
        assert_eq!(c.priority, 1677729535);
        assert_eq!(c.address, "192.168.1.5");
        assert_eq!(c.address_kind, AddressKind::Ipv4);
        assert_eq!(c.port, 53622);
        assert_eq!(c.typ, CandidateType::Host);
        assert_eq!(c.extension("ufrag"), Some("Kx9d"));
        assert_eq!(c.extensions().count(), 4);
    }

    #[test]
    fn errors() {
        let bad = [
            ("", ParseError::Missing("foundation")),
            (
                "candidate:1 1 udp 1 1.2.3.4 5 typ",
                ParseError::Missing("candidate type"),
            ),
            (
                "candidate:1 0 udp 1 1.2.3.4 5 typ host",
                ParseError::Component,
            ),
            (
                "candidate:1 257 udp 1 1.2.3.4 5 typ host",
                ParseError::Component,
            ),
            (
                "candidate:1 1 udp 4294967296 1.2.3.4 5 typ host",
                ParseError::Priority,
            ),
            (
                "candidate:1 1 udp -1 1.2.3.4 5 typ host",
                ParseError::Priority,
            ),
            (
                "candidate:1 1 udp 1 1.2.3.4 65536 typ host",
                ParseError::Port,
            ),
            ("candidate:1 1 udp 1 1.2.3.4 5 type host", ParseError::Typ),
            (
                "candidate:1 1 udp 1 bad..name 5 typ host",
                ParseError::Address,
            ),
            (
                "candidate:a=b 1 udp 1 1.2.3.4 5 typ host",
                ParseError::Foundation,
            ),
            (
                "candidate:1 1 tcp 1 1.2.3.4 5 typ host tcptype x",
                ParseError::TcpType,
            ),
            (
                "candidate:1 1 udp 1 1.2.3.4 5 typ host generation",
                ParseError::MissingValue,
            ),
            (
                "candidate:1 1 udp 1 1.2.3.4 5 typ srflx rport 1 rport 2",
                ParseError::Repeated,
            ),
        ];
        for (line, want) in bad {
            assert_eq!(Candidate::parse(line), Err(want), "{line}");
        }
    }

    #[test]
    fn scan_json_escaped_sdp() {
        let t = r#"{"sdp":"v=0\r\na=candidate:1 1 UDP 2122 10.0.0.1 5000 typ host\r\na=candidate:2 1 TCP 1 10.0.0.1 9 typ host tcptype active\r\na=end-of-candidates\r\n"}"#;
        let all: Vec<_> = candidates_in(t).collect();
        assert_eq!(all.len(), 2);
        let c = all[1].unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            (c.transport, c.tcptype),
            (Transport::Tcp, Some(TcpType::Active))
        );
    }
}
