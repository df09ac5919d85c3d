//! STUN/TURN reading: the message parser, ChannelData, the TCP framer and the tracker (both
//! directions), on arbitrary bytes.
#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use sigmesh_core::turn::{FiveTuple, Framer, Limits, PeerPolicy, Tracker, Transport, stun};

fuzz_target!(|data: &[u8]| {
    let _ = stun::Message::parse(data);
    let _ = stun::ChannelData::parse(data);
    let ft = FiveTuple {
        transport: Transport::Tcp,
        client: "127.0.0.1:5".parse().unwrap_or_else(|_| unreachable!()),
        server: "127.0.0.1:3478".parse().unwrap_or_else(|_| unreachable!()),
    };
    let mut tr = Tracker::new(PeerPolicy::new(None), Some("s".into()), Limits::default());
    let mut f = Framer::new();
    let step = usize::from(data.first().copied().unwrap_or(1)).max(1);
    for (i, chunk) in data.chunks(step).enumerate() {
        f.push(chunk);
        while let Some(frame) = f.next_frame() {
            let now = Duration::from_millis(i as u64);
            let _ = tr.from_client(ft, frame.bytes(), now);
            let _ = tr.from_server(ft, frame.bytes(), now);
        }
        assert!(f.buffered() <= data.len());
    }
    let _ = tr.expire(Duration::from_secs(3600));
});
