//! The streaming WebSocket frame reader (`sigmesh_core::frame`) per MiB of client bytes, against a
//! naive baseline in the same group: buffer the chunks, parse whole frames out of the buffer,
//! unmask every payload into a fresh `Vec`, and rebuild the output from the kept frames (what a
//! filter that does not stream would do).
//!
//! `cargo bench -p sigmesh-benches --bench frame` (about half a minute).

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use sigmesh_core::frame::{
    Direction, ForwardAll, FrameReader, Handler, MessageAction, MessageInfo, ReaderConfig, frame,
};

const MIB: usize = 1 << 20;
/// Envoy hands the filter one TCP read at a time; 16 KiB is a typical read.
const CHUNK: usize = 16 * 1024;

/// 1 MiB of masked client text frames of `size` bytes each, as a signaling client sends them.
fn stream(size: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(MIB + 64);
    let mut i = 0u32;
    while out.len() < MIB {
        let mut text = format!(r#"{{"type":"candidate","room":"r{}","candidate":""#, i % 50);
        while text.len() < size - 2 {
            text.push('x');
        }
        text.push_str("\"}");
        out.extend(frame(1, true, text.as_bytes(), Some(i.to_le_bytes())));
        i += 1;
    }
    out
}

/// Cuts every 10th message (a message bucket at work).
struct CutTenth(u64);

impl Handler for CutTenth {
    fn decide(&mut self, _: &MessageInfo, _: Option<&str>) -> MessageAction {
        self.0 += 1;
        if self.0.is_multiple_of(10) {
            MessageAction::Cut
        } else {
            MessageAction::Forward
        }
    }
}

fn run_core(bytes: &[u8], cfg: &ReaderConfig, h: &mut dyn Handler) -> usize {
    let mut r = FrameReader::new(cfg.clone());
    let mut n = 0;
    for chunk in bytes.chunks(CHUNK) {
        n += r.push(chunk, h).forward.bytes(chunk).len();
    }
    n
}

/// The naive reader: buffer, parse whole frames, unmask each payload into a new Vec, rebuild.
fn run_naive(bytes: &[u8], cut_tenth: bool) -> usize {
    let mut buf: Vec<u8> = Vec::new();
    let mut n = 0;
    let mut msgs = 0u64;
    for chunk in bytes.chunks(CHUNK) {
        buf.extend_from_slice(chunk);
        let mut out = Vec::new();
        let mut at = 0;
        loop {
            let rest = &buf[at..];
            if rest.len() < 2 {
                break;
            }
            let (len, mut hl) = match rest[1] & 0x7f {
                126 if rest.len() >= 4 => (usize::from(u16::from_be_bytes([rest[2], rest[3]])), 4),
                127 if rest.len() >= 10 => {
                    let mut a = [0u8; 8];
                    a.copy_from_slice(&rest[2..10]);
                    (
                        usize::try_from(u64::from_be_bytes(a)).unwrap_or(usize::MAX),
                        10,
                    )
                }
                126 | 127 => break,
                l => (usize::from(l), 2),
            };
            let masked = rest[1] & 0x80 != 0;
            if masked {
                hl += 4;
            }
            if rest.len() < hl + len {
                break;
            }
            let mut payload = rest[hl..hl + len].to_vec();
            if masked {
                let key = [rest[hl - 4], rest[hl - 3], rest[hl - 2], rest[hl - 1]];
                for (j, b) in payload.iter_mut().enumerate() {
                    *b ^= key[j % 4];
                }
            }
            black_box(std::str::from_utf8(&payload).is_ok());
            msgs += 1;
            if !(cut_tenth && msgs.is_multiple_of(10)) {
                out.extend_from_slice(&rest[..hl + len]);
            }
            at += hl + len;
        }
        buf.drain(..at);
        n += out.len();
    }
    n
}

fn frames(c: &mut Criterion) {
    for size in [200usize, 4096] {
        let bytes = stream(size);
        let forward = ReaderConfig::new(Direction::ClientToServer);
        let read = ReaderConfig {
            read_text: true,
            ..forward.clone()
        };
        let defer = ReaderConfig {
            defer_text: true,
            max_message_bytes: Some(65536),
            ..read.clone()
        };
        let mut g = c.benchmark_group(format!("frame_reader_1MiB_{size}b_messages"));
        g.throughput(Throughput::Bytes(bytes.len() as u64));
        g.bench_function("core_boundaries_only", |b| {
            b.iter(|| black_box(run_core(black_box(&bytes), &forward, &mut ForwardAll)))
        });
        g.bench_function("core_read_text", |b| {
            b.iter(|| black_box(run_core(black_box(&bytes), &read, &mut ForwardAll)))
        });
        g.bench_function("core_read_text_cut_tenth", |b| {
            b.iter(|| black_box(run_core(black_box(&bytes), &read, &mut CutTenth(0))))
        });
        g.bench_function("core_deferred_cut_tenth", |b| {
            b.iter(|| black_box(run_core(black_box(&bytes), &defer, &mut CutTenth(0))))
        });
        g.bench_function("naive_buffer_unmask_rebuild", |b| {
            b.iter(|| black_box(run_naive(black_box(&bytes), false)))
        });
        g.bench_function("naive_buffer_unmask_rebuild_cut_tenth", |b| {
            b.iter(|| black_box(run_naive(black_box(&bytes), true)))
        });
        g.finish();
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(500))
        .sample_size(20);
    targets = frames
}
criterion_main!(benches);
