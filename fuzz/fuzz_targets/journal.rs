//! Any bytes as a journal file: replayed or refused, never a panic.
#![no_main]

use std::sync::OnceLock;

static SCRATCH: OnceLock<tempfile::TempDir> = OnceLock::new();

libfuzzer_sys::fuzz_target!(|bytes: &[u8]| {
    let scratch = SCRATCH.get_or_init(|| tempfile::tempdir().expect("a scratch directory"));
    let _ = spillway::fuzzing::replay_journal(scratch.path(), bytes);
});
