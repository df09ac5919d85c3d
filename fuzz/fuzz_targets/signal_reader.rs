//! The signaling reader on any text (every dialect: JSON shapes, PeerJS, Socket.IO frames).
#![no_main]

use libfuzzer_sys::fuzz_target;
use sigmesh_core::config::Signaling;
use sigmesh_core::signal::{pointer_value, read_message};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let cfg = Signaling {
        kind: Some("/type".into()),
        room: Some("/data/room".into()),
        peer: Some("/from".into()),
    };
    let r = read_message(text, &cfg);
    assert!(r.ice.total() as usize <= sigmesh_core::ice::MAX_CANDIDATES);
    let _ = pointer_value(text, "/a/0/~1b");
});
