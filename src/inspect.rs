//! What a cache directory holds, read without opening it for use.

use std::path::Path;
use std::time::Instant;

use serde::Serialize;

use crate::cache_dir::{read_dir_meta, DirMeta};
use crate::{journal, Error, Result};

/// A summary of a cache directory: its format, budgets and what a reopen
/// would recover. Reading it takes no lock and changes nothing.
///
/// ```
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let dir = tempfile::tempdir().unwrap();
/// let cache = spillway::TwoTierCacheBackend::builder()
///     .disk_dir(dir.path()).disk_capacity(64 << 20).build().await.unwrap();
/// cache.close().await.unwrap();
/// let report = spillway::DirReport::read(dir.path()).unwrap();
/// assert_eq!(report.format.disk_capacity, 64 << 20);
/// assert_eq!(report.recoverable_entries, 0);
/// # });
/// ```
#[derive(Clone, Debug, Serialize)]
pub struct DirReport {
    /// The format file's contents.
    pub format: DirMeta,
    /// Entries the journal says are current on disk.
    pub recoverable_entries: u64,
    /// Bytes of their disk records.
    pub recoverable_bytes: u64,
    /// Entries resident in memory at the last graceful close.
    pub resident_at_close: u64,
    /// Facts read from the journal.
    pub journal_facts: u64,
    /// Journal files whose tail was torn by a crash.
    pub torn_journal_tails: u64,
    /// Time the journal replay took, in milliseconds.
    pub replay_millis: f64,
}

impl DirReport {
    /// Reads the directory at `dir`.
    ///
    /// ```
    /// let err = spillway::DirReport::read("/no/such/dir").unwrap_err();
    /// assert!(err.to_string().contains("/no/such/dir"));
    /// ```
    pub fn read(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        // Read-only: it reports what it finds and never suggests a reset.
        let not_ours = |reason: &str| Error::NotACacheDir {
            dir: dir.to_path_buf(),
            reason: reason.into(),
        };
        if !dir.is_dir() {
            return Err(not_ours("no such directory"));
        }
        let format = match read_dir_meta(dir) {
            Ok(Some(format)) => format,
            Ok(None) => return Err(not_ours("it has no spillway.toml format file")),
            Err(Error::IncompatibleDir { found, .. }) => return Err(not_ours(&found)),
            Err(e) => return Err(e),
        };
        let started = Instant::now();
        let replay = journal::replay(dir)?;
        Ok(Self {
            format,
            recoverable_entries: replay.live.len() as u64,
            recoverable_bytes: replay.live.values().map(|r| u64::from(r.len)).sum(),
            resident_at_close: replay.resident.len() as u64,
            journal_facts: replay.facts,
            torn_journal_tails: replay.torn_tails,
            replay_millis: started.elapsed().as_secs_f64() * 1e3,
        })
    }
}
