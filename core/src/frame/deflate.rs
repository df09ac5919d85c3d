//! `permessage-deflate` (RFC 7692) read through: the offer sigmesh makes for the client, what it
//! accepts back, and inflating one message to read it.
//!
//! sigmesh reads a compressed message only when neither side keeps a compression context
//! between messages (`client_no_context_takeover` and `server_no_context_takeover` both
//! negotiated): then every message inflates on its own, with a decompressor per worker thread
//! reset for each message, and an idle session holds no compression state at all. The frames
//! still pass as they came: nothing is re-compressed.

use std::cell::RefCell;

use flate2::{Decompress, FlushDecompress, Status};

const NAME: &str = "permessage-deflate";
const CLIENT_NCT: &str = "client_no_context_takeover";
const SERVER_NCT: &str = "server_no_context_takeover";

fn name_of(offer: &str) -> &str {
    offer.split(';').next().unwrap_or("").trim()
}

fn params(offer: &str) -> impl Iterator<Item = &str> {
    offer
        .split(';')
        .skip(1)
        .map(str::trim)
        .filter(|p| !p.is_empty())
}

fn param_name(p: &str) -> &str {
    p.split('=').next().unwrap_or("").trim()
}

/// The client's first `permessage-deflate` offer, rewritten for the upstream so that neither
/// side keeps a context: its own parameters plus `client_no_context_takeover` and
/// `server_no_context_takeover`. Every other extension is left out (sigmesh could not read
/// what it does to the frames). `None` when the client offered no `permessage-deflate`.
pub fn offer_without_context(value: &str) -> Option<String> {
    let offer = value
        .split(',')
        .map(str::trim)
        .find(|o| name_of(o).eq_ignore_ascii_case(NAME))?;
    let mut out = NAME.to_owned();
    for p in params(offer) {
        let n = param_name(p);
        if n.eq_ignore_ascii_case(CLIENT_NCT) || n.eq_ignore_ascii_case(SERVER_NCT) {
            continue;
        }
        out.push_str("; ");
        out.push_str(p);
    }
    out.push_str("; ");
    out.push_str(CLIENT_NCT);
    out.push_str("; ");
    out.push_str(SERVER_NCT);
    Some(out)
}

/// What the upstream's `Sec-WebSocket-Extensions` answer means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Accepted {
    /// No extension: messages are not compressed.
    None,
    /// `permessage-deflate` without a context either way: read through. The value to send the
    /// client (with `client_no_context_takeover`, which a server may add, RFC 7692 §7.1.1.2).
    ReadThrough(String),
    /// Something sigmesh did not offer, or a server that keeps its context: refuse it.
    Refused(String),
}

/// Reads the upstream's answer to [`offer_without_context`].
pub fn accepted(value: Option<&str>) -> Accepted {
    let Some(value) = value.map(str::trim).filter(|v| !v.is_empty()) else {
        return Accepted::None;
    };
    let exts: Vec<&str> = value.split(',').map(str::trim).collect();
    if exts.len() != 1 || !name_of(exts[0]).eq_ignore_ascii_case(NAME) {
        return Accepted::Refused(format!("upstream chose `{value}`, which was not offered"));
    }
    let has = |name: &str| params(exts[0]).any(|p| param_name(p).eq_ignore_ascii_case(name));
    if !has(SERVER_NCT) {
        return Accepted::Refused(format!(
            "upstream accepted permessage-deflate without {SERVER_NCT} (`{value}`)"
        ));
    }
    let mut to_client = exts[0].to_owned();
    if !has(CLIENT_NCT) {
        to_client.push_str("; ");
        to_client.push_str(CLIENT_NCT);
    }
    Accepted::ReadThrough(to_client)
}

/// Why a message did not inflate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InflateError {
    /// It inflates to more than the limit (a decompression bomb, or just too big): 1009.
    TooBig,
    /// It is not a valid raw deflate stream: 1007.
    Corrupt,
}

thread_local! {
    /// One decompressor and one output buffer per thread, reset for each message.
    static INFLATER: RefCell<(Decompress, Vec<u8>)> =
        RefCell::new((Decompress::new(false), Vec::new()));
}

/// Output buffers larger than this are freed after use.
const KEEP_OUTPUT: usize = 64 << 10;

/// Inflates one message (`compressed`: its payload, RFC 7692 §7.2.2: the sender removed the
/// trailing `00 00 ff ff`) to at most `limit` bytes, and calls `read` with the result.
pub fn with_inflated<R>(
    compressed: &[u8],
    limit: usize,
    read: impl FnOnce(Result<&[u8], InflateError>) -> R,
) -> R {
    INFLATER.with(|cell| {
        let mut guard = cell.borrow_mut();
        let (d, out) = &mut *guard;
        d.reset(false);
        out.clear();
        let result = inflate_into(d, out, compressed, limit);
        let r = read(result.map(|()| out.as_slice()));
        if out.capacity() > KEEP_OUTPUT {
            *out = Vec::new();
        }
        r
    })
}

fn inflate_into(
    d: &mut Decompress,
    out: &mut Vec<u8>,
    compressed: &[u8],
    limit: usize,
) -> Result<(), InflateError> {
    /// The output grows by this much at a time: it never holds more than `limit` + this.
    const STEP: usize = 16 << 10;
    const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];
    let corrupt = |_| InflateError::Corrupt;
    for input in [compressed, &TAIL[..]] {
        let mut at = 0;
        while at < input.len() {
            if out.len() == out.capacity() {
                out.reserve(STEP);
            }
            let (was_in, was_out) = (d.total_in(), d.total_out());
            let status = d
                .decompress_vec(&input[at..], out, FlushDecompress::None)
                .map_err(corrupt)?;
            at += (d.total_in() - was_in) as usize;
            if out.len() > limit {
                return Err(InflateError::TooBig);
            }
            if status == Status::StreamEnd {
                return Ok(());
            }
            if d.total_in() == was_in && d.total_out() == was_out && out.len() < out.capacity() {
                return Err(InflateError::Corrupt);
            }
        }
    }
    // What the decompressor still holds.
    loop {
        if out.len() == out.capacity() {
            out.reserve(STEP);
        }
        let was_out = d.total_out();
        d.decompress_vec(&[], out, FlushDecompress::Sync)
            .map_err(corrupt)?;
        if out.len() > limit {
            return Err(InflateError::TooBig);
        }
        if d.total_out() == was_out {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::{Compress, Compression, FlushCompress};

    /// What a sender with no context takeover puts in one message.
    fn compress(text: &[u8]) -> Vec<u8> {
        let mut c = Compress::new(Compression::default(), false);
        let mut out = Vec::with_capacity(text.len() + 64);
        c.compress_vec(text, &mut out, FlushCompress::Sync)
            .expect("compress");
        while out.len() == out.capacity() {
            out.reserve(1024);
            c.compress_vec(&[], &mut out, FlushCompress::Sync)
                .expect("compress");
        }
        assert!(out.ends_with(&[0, 0, 0xff, 0xff]));
        out.truncate(out.len() - 4);
        out
    }

    #[test]
    fn offers_and_answers() {
        assert_eq!(
            offer_without_context("permessage-deflate; client_max_window_bits, x-webkit-deflate-frame"),
            Some("permessage-deflate; client_max_window_bits; client_no_context_takeover; server_no_context_takeover".into())
        );
        assert_eq!(offer_without_context("x-other"), None);
        assert_eq!(accepted(None), Accepted::None);
        assert_eq!(
            accepted(Some("permessage-deflate; server_no_context_takeover")),
            Accepted::ReadThrough(
                "permessage-deflate; server_no_context_takeover; client_no_context_takeover".into()
            )
        );
        assert!(matches!(
            accepted(Some("permessage-deflate")),
            Accepted::Refused(_)
        ));
        assert!(matches!(accepted(Some("x-other")), Accepted::Refused(_)));
    }

    #[test]
    fn inflates_within_the_limit_and_refuses_bombs() {
        let text =
            br#"{"type":"candidate","candidate":"candidate:1 1 udp 2 10.0.0.1 5000 typ host"}"#;
        let z = compress(text);
        with_inflated(&z, 1024, |r| assert_eq!(r, Ok(&text[..])));
        // Twice in a row: the decompressor is reset between messages.
        with_inflated(&z, 1024, |r| assert_eq!(r, Ok(&text[..])));
        let bomb = compress(&vec![b'a'; 4 << 20]);
        assert!(bomb.len() < 8 << 10, "{}", bomb.len());
        with_inflated(&bomb, 64 << 10, |r| {
            assert_eq!(r, Err(InflateError::TooBig))
        });
        with_inflated(&[0xff, 0xff, 0xff], 1024, |r| {
            assert_eq!(r, Err(InflateError::Corrupt))
        });
        with_inflated(&z, text.len(), |r| assert_eq!(r, Ok(&text[..])));
        with_inflated(&z, text.len() - 1, |r| {
            assert_eq!(r, Err(InflateError::TooBig))
        });
    }
}
