//! Unit tests of the frame reader.
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

/// A permessage-deflate payload without context takeover (the trailing `00 00 ff ff` removed).
fn deflated(text: &[u8]) -> Vec<u8> {
    use flate2::{Compress, Compression, FlushCompress};
    let mut c = Compress::new(Compression::default(), false);
    let mut out = Vec::with_capacity(text.len() * 2 + 64);
    let r = c.compress_vec(text, &mut out, FlushCompress::Sync);
    assert!(r.is_ok() && c.total_in() as usize == text.len());
    assert!(out.ends_with(&[0, 0, 0xff, 0xff]));
    out.truncate(out.len() - 4);
    out
}

fn compressed_frame(opcode: u8, fin: bool, payload: &[u8]) -> Vec<u8> {
    let mut f = frame(opcode, fin, payload, Some(KEY));
    if opcode != 0 {
        f[0] |= 0x40;
    }
    f
}

#[test]
fn inflate_reads_compressed_text_across_chunks_and_fragments() {
    let text = br#"{"type":"candidate","room":"r1","candidate":"candidate:1 1 udp 1 10.0.0.1 9 typ host"}"#;
    let z = deflated(text);
    let (a, b) = z.split_at(z.len() / 2);
    // Two fragments (RSV1 on the first only), pushed one byte at a time.
    let mut bytes = compressed_frame(1, false, a);
    bytes.extend(compressed_frame(0, true, b));
    for defer in [false, true] {
        let mut r = FrameReader::new(ReaderConfig {
            deflate: true,
            inflate: true,
            defer_text: defer,
            max_message_bytes: Some(1024),
            ..client()
        });
        let mut h = Log::default();
        let mut out = Vec::new();
        for byte in bytes.chunks(1) {
            out.extend(run(&mut r, byte, &mut h));
        }
        assert_eq!(out, bytes, "defer {defer}: forwarded as it came");
        assert_eq!(h.done.len(), 1);
        assert!(h.done[0].0.compressed);
        assert_eq!(h.done[0].1.as_deref(), std::str::from_utf8(text).ok());
        if defer {
            assert_eq!(h.decided[0].1.as_deref(), std::str::from_utf8(text).ok());
        }
    }
}

#[test]
fn a_bomb_closes_1009_and_a_held_one_is_never_forwarded() {
    let bomb = deflated(&vec![b'a'; 1 << 20]);
    assert!(bomb.len() < 4096, "{}", bomb.len());
    let f = compressed_frame(1, true, &bomb);
    let mut r = FrameReader::new(ReaderConfig {
        deflate: true,
        inflate: true,
        defer_text: true,
        max_message_bytes: Some(65536),
        ..client()
    });
    let mut h = Log::default();
    let p = r.push(&f, &mut h);
    let close = p.close.expect("closed");
    assert_eq!(close.code, close_code::TOO_BIG);
    let out = p.forward.bytes(&f).to_vec();
    // Only sigmesh's close frame goes on: the bomb itself was held and dropped.
    assert!(out.len() < 130, "{}", out.len());
    // Data that does not inflate: 1007.
    let mut r = FrameReader::new(ReaderConfig {
        deflate: true,
        inflate: true,
        ..client()
    });
    let junk = compressed_frame(1, true, &[0xff; 32]);
    let p = r.push(&junk, &mut h);
    assert_eq!(p.close.expect("closed").code, close_code::INVALID_DATA);
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
