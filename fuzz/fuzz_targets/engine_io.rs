//! Engine.IO's sid readers (`affinity: engine_io`): a query string from a client and an open
//! packet from an upstream. Never a panic; a sid found is always a valid one.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sigmesh_core::engine_io::{MAX_SID, is_open, sid_in_open_packet, sid_of};

fuzz_target!(|data: &[u8]| {
    if let Some(sid) = sid_in_open_packet(data) {
        assert!(!sid.is_empty() && sid.len() <= MAX_SID);
    }
    if let Ok(query) = std::str::from_utf8(data) {
        let _ = is_open(Some(query));
        if let Some(sid) = sid_of(Some(query)) {
            assert!(!sid.is_empty() && sid.len() <= MAX_SID);
        }
    }
});
