//! The nats-server config format parser on arbitrary text: errors, never panics or hangs.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = tern::conf::parse_str(text, std::path::Path::new("/nonexistent/fuzz.conf"));
    }
});
