//! Any bytes read back from the disk tier: checked, never a panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|bytes: &[u8]| {
    let _ = spillway::fuzzing::open_record(bytes);
});
