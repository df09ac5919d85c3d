//! The ICE candidate parser and scanner.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sigmesh_core::ice::{Candidate, MAX_CANDIDATES, candidates_in};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(c) = Candidate::parse(text) {
        let _ = c.ip();
        let _ = c.extensions().count();
    }
    assert!(candidates_in(text).count() <= MAX_CANDIDATES);
});
