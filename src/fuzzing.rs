//! Entry points for the fuzz targets in `fuzz/` (feature `fuzzing`): the
//! places where spillway decodes bytes it did not just write itself. Not a
//! stable API.

use std::path::Path;

/// Checks `bytes` as a disk record, as a disk read does. Returns whether it
/// was accepted. Never panics.
///
/// ```
/// assert!(!spillway::fuzzing::open_record(b"not a record"));
/// ```
pub fn open_record(bytes: &[u8]) -> bool {
    crate::envelope::open(bytes).is_ok()
}

/// Replays `bytes` as the only journal file of a scratch directory under
/// `scratch`, as an open does. Returns how many live records it found, or
/// `None` if the replay found the journal damaged in the middle (an open
/// then resets the directory). Never panics.
///
/// ```
/// let dir = tempfile::tempdir().unwrap();
/// assert_eq!(spillway::fuzzing::replay_journal(dir.path(), b""), Some(0));
/// ```
pub fn replay_journal(scratch: &Path, bytes: &[u8]) -> Option<usize> {
    let dir = scratch.join("fuzz-journal");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).ok()?;
    std::fs::write(dir.join("journal.0"), bytes).ok()?;
    let replay = crate::journal::replay(&dir).ok()?;
    (!replay.corrupt).then_some(replay.live.len())
}

/// Parses `text` as a configuration file. Never panics.
///
/// ```
/// assert!(spillway::fuzzing::parse_config("[memory]\ncapacity = \"-5 MiB\"").is_err());
/// ```
pub fn parse_config(text: &str) -> crate::Result<crate::Config> {
    crate::Config::from_toml_str(text)
}
