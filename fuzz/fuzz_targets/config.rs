//! Any text as a configuration file: parsed or a typed error, never a panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|bytes: &[u8]| {
    if let Ok(text) = std::str::from_utf8(bytes) {
        let _ = spillway::fuzzing::parse_config(text);
    }
});
