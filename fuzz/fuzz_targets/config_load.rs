//! The config loader (YAML/JSON, validation) for both front ends, and compiling the result.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sigmesh_core::compiled::{Capabilities, Compiled};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(c) = sigmesh_core::config::load(text) {
        let _ = Compiled::new(c, Capabilities::PROXY);
    }
    let _ = sigmesh_core::config::load_filter(text);
});
