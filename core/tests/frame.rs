//! The streaming frame reader, chunked every way: every split point (two and three chunks) of a
//! multi-frame stream, byte by byte, and random streams and chunkings (proptest). Each run is
//! checked against a model: the stream with the cut messages' frames removed, the verdicts and
//! the texts read.

use proptest::prelude::*;
use sigmesh_core::frame::{
    Closed, Direction, FrameReader, Handler, MessageAction, MessageInfo, ReaderConfig, close_frame,
    frame,
};

const KEY: [u8; 4] = [0xa1, 0x5e, 0x07, 0xff];

/// One thing on the wire: a data message as its frames, or a control frame.
#[derive(Debug, Clone)]
enum Item {
    /// A data message: text?, payload, the payload lengths of its fragments, controls
    /// interleaved after fragment `i`.
    Msg {
        text: bool,
        payload: Vec<u8>,
        cuts: Vec<usize>,
        ping_after: Option<usize>,
    },
    Ping(Vec<u8>),
}

/// A stream's frames, each tagged with the index of its data message (`None`: control).
fn wire(items: &[Item], masked: bool) -> Vec<(Option<usize>, Vec<u8>)> {
    let mask = |i: usize| masked.then(|| [KEY[0], KEY[1], (i % 251) as u8, KEY[3]]);
    let mut out = Vec::new();
    let mut msg = 0;
    for (n, item) in items.iter().enumerate() {
        match item {
            Item::Ping(p) => out.push((None, frame(9, true, p, mask(n)))),
            Item::Msg {
                text,
                payload,
                cuts,
                ping_after,
            } => {
                let mut bounds: Vec<usize> = cuts.iter().map(|&c| c.min(payload.len())).collect();
                bounds.sort_unstable();
                bounds.dedup();
                bounds.retain(|&b| b > 0 && b < payload.len());
                let mut start = 0;
                let mut parts = Vec::new();
                for b in bounds.into_iter().chain([payload.len()]) {
                    parts.push(&payload[start..b]);
                    start = b;
                }
                let last = parts.len() - 1;
                for (k, part) in parts.into_iter().enumerate() {
                    let op = if k > 0 {
                        0
                    } else if *text {
                        1
                    } else {
                        2
                    };
                    out.push((Some(msg), frame(op, k == last, part, mask(n * 7 + k))));
                    if *ping_after == Some(k) && k != last {
                        out.push((None, frame(10, true, b"mid", mask(n + 3))));
                    }
                }
                msg += 1;
            }
        }
    }
    out
}

/// Records everything; cuts the messages whose index is in `cut`.
#[derive(Default)]
struct Rec {
    cut: Vec<usize>,
    decided: usize,
    done: Vec<(MessageInfo, Option<String>, bool)>,
    texts_at_decide: Vec<Option<String>>,
}

impl Handler for Rec {
    fn decide(&mut self, _: &MessageInfo, text: Option<&str>) -> MessageAction {
        let i = self.decided;
        self.decided += 1;
        self.texts_at_decide.push(text.map(str::to_owned));
        if self.cut.contains(&i) {
            MessageAction::Cut
        } else {
            MessageAction::Forward
        }
    }
    fn done(&mut self, m: &MessageInfo, t: Option<&str>, fwd: bool) {
        self.done.push((*m, t.map(str::to_owned), fwd));
    }
}

fn cfg(defer: bool) -> ReaderConfig {
    ReaderConfig {
        read_text: true,
        defer_text: defer,
        ..ReaderConfig::new(Direction::ClientToServer)
    }
}

/// Feeds `bytes` split at `splits`; returns the concatenated output, the handler and closes.
fn feed(
    cfg: ReaderConfig,
    bytes: &[u8],
    splits: &[usize],
    cut: &[usize],
) -> (Vec<u8>, Rec, Vec<Closed>) {
    let mut r = FrameReader::new(cfg);
    let mut h = Rec {
        cut: cut.to_vec(),
        ..Rec::default()
    };
    let mut out = Vec::new();
    let mut closes = Vec::new();
    let mut start = 0;
    for &s in splits.iter().chain([&bytes.len()]) {
        let chunk = &bytes[start..s];
        let p = r.push(chunk, &mut h);
        out.extend_from_slice(p.forward.bytes(chunk));
        closes.extend(p.close);
        start = s;
    }
    assert_eq!(
        r.stats().held,
        0,
        "nothing is left held at the end of a whole stream"
    );
    (out, h, closes)
}

fn sample() -> Vec<Item> {
    vec![
        Item::Msg {
            text: true,
            payload: br#"{"type":"join","room":"r1"}"#.to_vec(),
            cuts: vec![],
            ping_after: None,
        },
        Item::Ping(b"p".to_vec()),
        Item::Msg {
            text: true,
            payload: br#"{"type":"offer","sdp":"v=0 fragmented"}"#.to_vec(),
            cuts: vec![5, 17],
            ping_after: Some(0),
        },
        Item::Msg {
            text: false,
            payload: vec![0u8; 0],
            cuts: vec![],
            ping_after: None,
        },
        Item::Msg {
            text: false,
            payload: (0..=255u8).cycle().take(300).collect(), // 16-bit length
            cuts: vec![],
            ping_after: None,
        },
        Item::Msg {
            text: true,
            payload: "héllo wörld".as_bytes().to_vec(),
            cuts: vec![2], // splits inside a UTF-8 character
            ping_after: None,
        },
        Item::Ping(vec![]),
    ]
}

fn expected(frames: &[(Option<usize>, Vec<u8>)], cut: &[usize]) -> Vec<u8> {
    frames
        .iter()
        .filter(|(m, _)| m.is_none_or(|m| !cut.contains(&m)))
        .flat_map(|(_, f)| f.clone())
        .collect()
}

fn texts(items: &[Item]) -> Vec<Option<String>> {
    items
        .iter()
        .filter_map(|i| match i {
            Item::Msg { text, payload, .. } => {
                Some(text.then(|| String::from_utf8(payload.clone()).expect("utf8")))
            }
            Item::Ping(_) => None,
        })
        .collect()
}

#[test]
fn every_split_point_in_two_and_three_chunks() {
    let items = sample();
    let frames = wire(&items, true);
    let bytes: Vec<u8> = frames.iter().flat_map(|(_, f)| f.clone()).collect();
    let want_texts = texts(&items);
    for defer in [false, true] {
        for cut in [vec![], vec![1], vec![0, 2, 4]] {
            let want = expected(&frames, &cut);
            let check = |splits: &[usize]| {
                let (out, h, closes) = feed(cfg(defer), &bytes, splits, &cut);
                assert!(closes.is_empty());
                assert_eq!(out, want, "defer {defer} cut {cut:?} splits {splits:?}");
                let got: Vec<_> = h.done.iter().map(|d| d.1.clone()).collect();
                assert_eq!(got, want_texts, "splits {splits:?}");
                let fwd: Vec<bool> = h.done.iter().map(|d| d.2).collect();
                let want_fwd: Vec<bool> =
                    (0..want_texts.len()).map(|i| !cut.contains(&i)).collect();
                assert_eq!(fwd, want_fwd);
                if defer {
                    // Text messages are decided with their text, binary ones at their start.
                    let decided: Vec<_> = h.texts_at_decide.clone();
                    assert_eq!(decided, want_texts);
                }
            };
            for i in 0..=bytes.len() {
                check(&[i]);
            }
            // Three chunks: every pair of split points.
            for i in 0..=bytes.len() {
                for j in i..=bytes.len() {
                    check(&[i, j]);
                }
            }
        }
    }
}

#[test]
fn byte_by_byte() {
    let items = sample();
    let frames = wire(&items, true);
    let bytes: Vec<u8> = frames.iter().flat_map(|(_, f)| f.clone()).collect();
    let splits: Vec<usize> = (1..bytes.len()).collect();
    for defer in [false, true] {
        let (out, h, _) = feed(cfg(defer), &bytes, &splits, &[2]);
        assert_eq!(out, expected(&frames, &[2]));
        assert_eq!(h.done.len(), 5);
    }
}

#[test]
fn unmasked_server_stream() {
    let items = sample();
    let frames = wire(&items, false);
    let bytes: Vec<u8> = frames.iter().flat_map(|(_, f)| f.clone()).collect();
    let c = ReaderConfig {
        read_text: true,
        ..ReaderConfig::new(Direction::ServerToClient)
    };
    for i in 0..=bytes.len() {
        let (out, h, _) = feed(c.clone(), &bytes, &[i], &[]);
        assert_eq!(out, bytes);
        let got: Vec<_> = h.done.iter().map(|d| d.1.clone()).collect();
        assert_eq!(got, texts(&items));
    }
}

#[test]
fn oversize_closes_at_the_same_place_whatever_the_split() {
    let small = frame(1, true, b"0123456789", Some(KEY));
    let big_first = frame(1, false, b"0123456789", Some(KEY));
    let big_rest = frame(0, true, b"abc", Some(KEY)); // 13 > 12 in total
    let bytes = [small.clone(), big_first.clone(), big_rest, small.clone()].concat();
    let c = ReaderConfig {
        max_message_bytes: Some(12),
        mask_key: [9, 9, 9, 9],
        ..cfg(false)
    };
    // The first fragment is forwarded (the total is not known yet); the close comes before
    // the fragment that passes the limit.
    let want = [
        small,
        big_first,
        close_frame(1009, "message too big", Some([9, 9, 9, 9])),
    ]
    .concat();
    for i in 0..=bytes.len() {
        let (out, _, closes) = feed(c.clone(), &bytes, &[i], &[]);
        assert_eq!(out, want, "split {i}");
        assert_eq!(closes.len(), 1);
        assert_eq!(closes[0].code, 1009);
    }
}

#[test]
fn deferred_message_over_the_limit_is_never_forwarded() {
    let c = ReaderConfig {
        max_message_bytes: Some(8),
        ..cfg(true)
    };
    let first = frame(1, false, b"12345", Some(KEY));
    let rest = frame(0, true, b"6789", Some(KEY));
    let bytes = [first, rest].concat();
    for i in 0..=bytes.len() {
        let (out, _, closes) = feed(c.clone(), &bytes, &[i], &[]);
        assert_eq!(out, close_frame(1009, "message too big", Some([0; 4])));
        assert_eq!(closes.len(), 1);
    }
}

#[test]
fn close_verdict_appends_a_close_frame_and_drops_the_rest() {
    struct CloseSecond(usize);
    impl Handler for CloseSecond {
        fn decide(&mut self, _: &MessageInfo, _: Option<&str>) -> MessageAction {
            self.0 += 1;
            if self.0 == 2 {
                MessageAction::Close {
                    code: 1008,
                    reason: "message rate limit",
                }
            } else {
                MessageAction::Forward
            }
        }
    }
    let a = frame(1, true, b"a", Some(KEY));
    let bytes = [a.clone(), a.clone(), a.clone()].concat();
    for defer in [false, true] {
        for i in 0..=bytes.len() {
            let mut r = FrameReader::new(cfg(defer));
            let mut h = CloseSecond(0);
            let mut out = Vec::new();
            let mut closes = Vec::new();
            for chunk in [&bytes[..i], &bytes[i..]] {
                let p = r.push(chunk, &mut h);
                out.extend_from_slice(p.forward.bytes(chunk));
                closes.extend(p.close);
            }
            assert_eq!(
                out,
                [
                    a.clone(),
                    close_frame(1008, "message rate limit", Some([0; 4]))
                ]
                .concat()
            );
            assert_eq!(closes.len(), 1);
            assert!(r.is_closed());
        }
    }
}

#[test]
fn sixty_four_bit_length_across_chunks() {
    let payload = vec![b'x'; 70_000];
    let f = frame(2, true, &payload, Some(KEY));
    assert_eq!(f[1] & 0x7f, 127);
    for i in [1, 2, 5, 9, 10, 13, 14, 15, 40_000, f.len() - 1] {
        let (out, h, _) = feed(cfg(false), &f, &[i], &[]);
        assert_eq!(out, f);
        assert_eq!(h.done[0].0.len, 70_000);
    }
}

#[test]
fn untouched_chunks_are_not_copied() {
    let a = frame(1, true, b"hello", Some(KEY));
    let mut r = FrameReader::new(cfg(false));
    let mut h = Rec::default();
    assert_eq!(
        r.push(&a, &mut h).forward,
        sigmesh_core::frame::Forward::All
    );
    let both = [a.clone(), a].concat();
    assert_eq!(
        r.push(&both, &mut h).forward,
        sigmesh_core::frame::Forward::All
    );
}

// === properties ===

fn item() -> impl Strategy<Value = Item> {
    prop_oneof![
        4 => (
            any::<bool>(),
            prop::collection::vec(any::<u8>(), 0..300),
            prop::collection::vec(0usize..300, 0..4),
            prop::option::of(0usize..3),
        )
            .prop_map(|(text, payload, cuts, ping_after)| {
                let payload = if text {
                    String::from_utf8_lossy(&payload).into_owned().into_bytes()
                } else {
                    payload
                };
                Item::Msg {
                    text,
                    payload,
                    cuts,
                    ping_after,
                }
            }),
        1 => prop::collection::vec(any::<u8>(), 0..125).prop_map(Item::Ping),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Any stream, any chunking, any verdicts: the output is the stream minus the cut messages,
    /// and every text is read whole.
    #[test]
    fn random_streams_and_chunkings(
        items in prop::collection::vec(item(), 1..12),
        splits in prop::collection::vec(any::<prop::sample::Index>(), 0..20),
        cut_mask in any::<u16>(),
        defer in any::<bool>(),
    ) {
        let frames = wire(&items, true);
        let bytes: Vec<u8> = frames.iter().flat_map(|(_, f)| f.clone()).collect();
        let mut s: Vec<usize> = splits.iter().map(|i| i.index(bytes.len() + 1)).collect();
        s.sort_unstable();
        let n = items.iter().filter(|i| matches!(i, Item::Msg { .. })).count();
        let cut: Vec<usize> = (0..n).filter(|i| cut_mask >> (i % 16) & 1 == 1).collect();
        let (out, h, closes) = feed(cfg(defer), &bytes, &s, &cut);
        prop_assert!(closes.is_empty());
        prop_assert_eq!(out, expected(&frames, &cut));
        let got: Vec<_> = h.done.iter().map(|d| d.1.clone()).collect();
        prop_assert_eq!(got, texts(&items));
    }

    /// Garbage never panics; once closed, a reader forwards nothing more.
    #[test]
    fn garbage_never_panics(
        bytes in prop::collection::vec(any::<u8>(), 0..600),
        splits in prop::collection::vec(any::<prop::sample::Index>(), 0..8),
        dir in any::<bool>(),
        max in prop::option::of(0usize..200),
        defer in any::<bool>(),
    ) {
        let c = ReaderConfig {
            max_message_bytes: max,
            read_text: true,
            defer_text: defer,
            deflate: dir,
            ..ReaderConfig::new(if dir { Direction::ClientToServer } else { Direction::ServerToClient })
        };
        let mut s: Vec<usize> = splits.iter().map(|i| i.index(bytes.len() + 1)).collect();
        s.sort_unstable();
        let mut r = FrameReader::new(c);
        let mut h = Rec::default();
        let mut start = 0;
        let mut closes = 0;
        for &e in s.iter().chain([&bytes.len()]) {
            let was_closed = r.is_closed();
            let chunk = &bytes[start..e];
            let p = r.push(chunk, &mut h);
            if was_closed {
                prop_assert_eq!(p.forward.bytes(chunk).len(), 0);
            }
            closes += usize::from(p.close.is_some());
            start = e;
        }
        prop_assert!(closes <= 1);
        prop_assert!(r.stats().held <= 200 + 4096 + 14 + sigmesh_core::frame::DEFAULT_TEXT_LIMIT);
    }
}

proptest! {
    /// The word-wise unmasking equals the byte-wise definition at any offset.
    #[test]
    fn unmask_matches_the_definition(
        bytes in prop::collection::vec(any::<u8>(), 0..64),
        key in any::<[u8; 4]>(),
        pos in any::<u64>(),
    ) {
        let mut fast = bytes.clone();
        sigmesh_core::frame::unmask(&mut fast, key, pos);
        let slow: Vec<u8> = bytes
            .iter()
            .enumerate()
            .map(|(j, b)| b ^ key[((pos % 4) as usize + j) % 4])
            .collect();
        prop_assert_eq!(fast, slow);
    }
}
