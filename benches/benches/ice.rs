//! The ICE candidate parser and the message reader, each against a naive baseline in the same
//! group.
//!
//! - `ice_parse`: [`Candidate::parse`] (borrowing, no allocation) vs a split-based parser that
//!   collects the fields into a `Vec` and owned `String`s, the way most signaling code (and
//!   webrtc-ice's `unmarshal_candidate`) does it;
//! - `read_message`: [`read_message`] (one streaming pass, candidates tallied from the raw text)
//!   vs parsing into a `serde_json::Value`, reading `type`/`room`/`from`, and splitting the SDP
//!   into lines to parse its candidates naively.
//!
//! - `read_message_64KiB`: [`read_message`] on 64 KiB texts a client chooses (issue 11, item 1)
//!   against an ordinary 64 KiB message in the same group: `candidate:` repeated on one line
//!   (the scan used to look for the end of the line at each one: 0.4 s a message), valid
//!   candidates on one endless line, and 1,500 candidate lines (the reader stops at its cap).
//!
//! `cargo bench -p sigmesh-benches --bench ice` (about half a minute).

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use serde_json::{Value, json};
use sigmesh_core::config::Signaling;
use sigmesh_core::ice::Candidate;
use sigmesh_core::signal::read_message;

const LINES: &[&str] = &[
    "candidate:842163049 1 udp 2122260223 192.168.1.5 53622 typ host generation 0 ufrag Kx9d network-id 1 network-cost 10",
    "candidate:1467250027 1 udp 2122260223 9b36eaac-bb2e-49bb-bb78-21c41c499900.local 53622 typ host generation 0 ufrag Kx9d network-id 1",
    "candidate:1853887674 1 udp 1845501695 203.0.113.7 43010 typ srflx raddr 192.168.1.5 rport 53622 generation 0 ufrag Kx9d network-id 1 network-cost 10",
    "candidate:2157334355 1 udp 33562367 198.51.100.4 61665 typ relay raddr 203.0.113.7 rport 43010 generation 0 ufrag Kx9d network-id 1 network-cost 10",
    "candidate:2999745851 1 tcp 1518280447 192.168.1.5 9 typ host tcptype active generation 0 ufrag Kx9d network-id 1",
    "candidate:3828297285 1 udp 2122194687 2001:db8::1 50712 typ host generation 0 ufrag Kx9d network-id 2",
    "candidate:0 1 UDP 2122252543 192.168.1.5 54589 typ host",
    "candidate:1 1 UDP 1686052863 203.0.113.7 54589 typ srflx raddr 192.168.1.5 rport 54589",
];

/// The naive baseline: split, collect, own.
mod naive {
    #[allow(dead_code)]
    pub struct Cand {
        pub foundation: String,
        pub component: u16,
        pub transport: String,
        pub priority: u32,
        pub address: String,
        pub port: u16,
        pub typ: String,
        pub raddr: Option<String>,
        pub rport: Option<u16>,
        pub tcptype: Option<String>,
        pub ext: Vec<(String, String)>,
    }

    pub fn parse(line: &str) -> Option<Cand> {
        let line = line
            .trim()
            .trim_start_matches("a=")
            .trim_start_matches("candidate:");
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 8 || f[6] != "typ" {
            return None;
        }
        let mut c = Cand {
            foundation: f[0].to_owned(),
            component: f[1].parse().ok()?,
            transport: f[2].to_lowercase(),
            priority: f[3].parse().ok()?,
            address: f[4].to_owned(),
            port: f[5].parse().ok()?,
            typ: f[7].to_owned(),
            raddr: None,
            rport: None,
            tcptype: None,
            ext: Vec::new(),
        };
        for kv in f[8..].chunks(2) {
            let [k, v] = kv else { return None };
            match *k {
                "raddr" => c.raddr = Some(v.to_string()),
                "rport" => c.rport = Some(v.parse().ok()?),
                "tcptype" => c.tcptype = Some(v.to_string()),
                _ => c.ext.push((k.to_string(), v.to_string())),
            }
        }
        Some(c)
    }
}

fn ice_parse(c: &mut Criterion) {
    let mut g = c.benchmark_group("ice_parse");
    g.throughput(Throughput::Elements(LINES.len() as u64));
    g.bench_function("core", |b| {
        b.iter(|| {
            for l in LINES {
                let _ = black_box(Candidate::parse(black_box(l)));
            }
        })
    });
    g.bench_function("naive_split", |b| {
        b.iter(|| {
            for l in LINES {
                black_box(naive::parse(black_box(l)));
            }
        })
    });
    g.finish();
}

fn sdp() -> String {
    let mut s = "v=0\r\no=- 4611731400430051336 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0 1\r\n\
                 m=audio 9 UDP/TLS/RTP/SAVPF 111 63 9 0 8 13 110 126\r\nc=IN IP4 0.0.0.0\r\na=rtcp:9 IN IP4 0.0.0.0\r\n\
                 a=ice-ufrag:Kx9d\r\na=ice-pwd:4Zlb0Dm7CCcYxCq1TjYb8H2A\r\na=ice-options:trickle\r\n\
                 a=fingerprint:sha-256 2B:57:1E:8F:0C:5E:6F:21:9A:6D:C7:2A:49:23:44:27:87:C0:40:0A:64:6E:5E:9C:6C:3E:47:9F:43:18:8C:BD\r\n\
                 a=setup:actpass\r\na=mid:0\r\na=sendrecv\r\na=rtcp-mux\r\na=rtpmap:111 opus/48000/2\r\na=fmtp:111 minptime=10;useinbandfec=1\r\n"
        .to_owned();
    for l in LINES {
        s += &format!("a={l}\r\n");
    }
    s += "m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\nc=IN IP4 0.0.0.0\r\na=mid:1\r\na=sctp-port:5000\r\n";
    s
}

fn naive_read(text: &str) -> (Option<String>, Option<String>, Option<String>, usize) {
    let Ok(v) = serde_json::from_str::<Value>(text) else {
        return (None, None, None, 0);
    };
    let s = |p: &str| v.pointer(p).and_then(Value::as_str).map(str::to_owned);
    let mut n = 0;
    if let Some(sdp) = v.get("sdp").and_then(Value::as_str) {
        n += sdp
            .lines()
            .filter_map(|l| l.strip_prefix("a="))
            .filter(|l| l.starts_with("candidate:"))
            .filter_map(naive::parse)
            .count();
    }
    if let Some(c) = v.pointer("/candidate/candidate").and_then(Value::as_str) {
        n += usize::from(naive::parse(c).is_some());
    }
    (s("/type"), s("/room"), s("/from"), n)
}

fn reader(c: &mut Criterion) {
    let cfg = Signaling {
        kind: Some("/type".into()),
        room: Some("/room".into()),
        peer: Some("/from".into()),
    };
    let offer =
        json!({ "type": "offer", "room": "r1", "from": "alice", "to": "bob", "sdp": sdp() })
            .to_string();
    let trickle = json!({ "type": "candidate", "room": "r1", "from": "alice", "to": "bob",
        "candidate": { "candidate": LINES[2], "sdpMid": "0", "sdpMLineIndex": 0 } })
    .to_string();
    for (name, text) in [("offer_8_candidates", &offer), ("trickle", &trickle)] {
        let mut g = c.benchmark_group(format!("read_message/{name}"));
        g.throughput(Throughput::Bytes(text.len() as u64));
        g.bench_function("core", |b| {
            b.iter(|| {
                let r = read_message(black_box(text), &cfg);
                black_box((r.kind, r.room.is_some(), r.ice.total()))
            })
        });
        g.bench_function("naive_value", |b| {
            b.iter(|| black_box(naive_read(black_box(text))))
        });
        g.finish();
    }
}

/// 64 KiB texts: an ordinary message and three a hostile client would send.
fn hostile_texts() -> Vec<(&'static str, String)> {
    let fill = |unit: &str| unit.repeat(65_536 / unit.len());
    let ordinary = json!({ "type": "offer", "room": "r1", "from": "alice",
        "sdp": "v=0 ".repeat(16_000) })
    .to_string();
    vec![
        ("ordinary", ordinary),
        ("candidate_colon_flood", fill("candidate:")),
        (
            "one_endless_line",
            fill("candidate:1 1 udp 2122260223 10.0.0.1 9 typ host "),
        ),
        (
            "candidate_lines",
            fill("a=candidate:1 1 udp 2122260223 10.0.0.1 9 typ host\r\n"),
        ),
    ]
}

fn hostile(c: &mut Criterion) {
    let cfg = Signaling {
        kind: Some("/type".into()),
        room: Some("/room".into()),
        peer: Some("/from".into()),
    };
    let mut g = c.benchmark_group("read_message_64KiB");
    for (name, text) in hostile_texts() {
        g.throughput(Throughput::Bytes(text.len() as u64));
        g.bench_function(name, |b| {
            b.iter(|| {
                let r = read_message(black_box(&text), &cfg);
                black_box((r.kind, r.ice.total(), r.ice.invalid))
            })
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(500))
        .sample_size(30);
    targets = ice_parse, reader, hostile
}
criterion_main!(benches);
