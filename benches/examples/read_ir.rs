//! Instruction counts of the signaling reader, for `valgrind --tool=callgrind` (repeatable,
//! unlike wall time on a shared machine): reads the load generator's trickle message (the
//! relay rows' message), a trickled candidate object and an 8-candidate offer, 20,000 times
//! each.
//!
//! ```text
//! cargo build --release -p sigmesh-benches --example read_ir
//! valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.out target/release/examples/read_ir
//! callgrind_annotate /tmp/cg.out | head
//! target/release/examples/read_ir load   # one of the three messages alone
//! ```

use sigmesh_core::config::Signaling;
use sigmesh_core::signal::read_message;

fn main() {
    let cfg = Signaling {
        kind: Some("/type".into()),
        room: Some("/room".into()),
        peer: Some("/from".into()),
    };
    let load = r#"{"type":"candidate","room":"r3","from":"p7","seq":42,"ts":1234567,"candidate":"candidate:842163049 1 udp 1677729535 203.0.113.7 46154 typ srflx raddr 10.0.0.2 rport 46154 generation 0 ufrag EsAw network-cost 999","pad":"xxxxxxxxxxxxxxxxxxxxxxxx"}"#;
    let trickle = r#"{"type":"candidate","room":"r1","from":"alice","to":"bob","candidate":{"candidate":"candidate:1 1 udp 2122260223 192.168.1.2 54321 typ host generation 0","sdpMid":"0","sdpMLineIndex":0}}"#;
    let mut sdp = String::from(
        "v=0\r\no=- 4611731400430051336 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0 1\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\n",
    );
    for i in 0..8 {
        sdp.push_str(&format!(
            "a=candidate:{i} 1 udp 2122260223 192.168.1.{i} 5432{i} typ host generation 0 network-id 1\r\n"
        ));
    }
    let offer =
        serde_json::json!({"type": "offer", "room": "r1", "from": "alice", "sdp": sdp}).to_string();
    // `read_ir load` (or `trickle`, `offer`) reads that message alone.
    let only = std::env::args().nth(1);
    let mut n = 0u64;
    for (name, text) in [
        ("load", load),
        ("trickle", trickle),
        ("offer", offer.as_str()),
    ] {
        if only.as_deref().is_some_and(|o| o != name) {
            continue;
        }
        for _ in 0..20_000 {
            let r = read_message(std::hint::black_box(text), &cfg);
            n += u64::from(r.ice.host + r.ice.srflx) + u64::from(r.room.is_some());
        }
    }
    println!("{n}");
}
