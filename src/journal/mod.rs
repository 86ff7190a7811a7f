//! The journal: spillway's durable record of which disk record is current for
//! each key, so that a restarted cache serves exactly the versions it may.
//!
//! It is a set of *facts*, each carrying sequence numbers, appended as they
//! happen and never rewritten in place:
//!
//! * `Written` — version `seq` of a key is on disk (appended once foyer has written it);
//! * `Tombstone` — versions of a key hash below `seq` are dead (appended before
//!   an insert that replaces a version that may be on disk returns);
//! * `Invalidated` / `Cleared` — versions below `seq` under a prefix / of every key are dead;
//! * `Reserved` — sequence numbers below `upto` may have been handed out;
//! * `Resident` — the key was in memory at the last graceful close (journals
//!   written before `Persisted` existed);
//! * `WrittenUntil` — `Written` for a version with a deadline (see `expiry`);
//! * `WrittenPacked` — `Written` for a version stored inside a pack (see `packing`);
//! * `Stored` — `Written` for a disk-only version, by its key's hash and
//!   prefix (snapshots write these: the key itself is in the record);
//! * `Clock` — the wall clock had reached `at`: expiry's clock never goes
//!   below it, so a clock set back while the cache was down cannot revive
//!   an entry that had expired.
//! * `Persisted` — `WrittenPacked` (pack 0: not packed) and `Resident` in
//!   one fact: a version on disk whose entry is in memory too (write-behind
//!   and snapshots write these, one frame per warm entry instead of two).
//!
//! The state a journal describes does not depend on the order of its facts: a
//! written version is alive if no kill fact with a higher sequence covers it.
//! So any union of journal files describes the right state, which makes
//! rotation and compaction crash-safe at every step (old files are deleted
//! only after the new snapshot is in place, and a leftover old file only
//! repeats true facts). Each fact is framed with its length and a CRC: a torn
//! tail after a crash ends the replay of that file, never corrupts it.

mod fact;
mod key_text;
mod live;
mod replay;

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

use crate::{Error, Result};

use fact::frame_into;
pub(crate) use fact::{interned, Fact};
pub(crate) use live::Live;
use replay::journal_files;
pub(crate) use replay::{replay, Identity, Replay};

/// Sequence numbers are reserved this many at a time, so that numbers used
/// before a crash are never handed out again.
const RESERVE_BLOCK: u64 = 1 << 20;
const FILE_PREFIX: &str = "journal.";
/// No fact is this long (the longest holds one key); a frame claiming more
/// has a damaged length.
const MAX_FRAME: usize = 1 << 20;

/// The file facts are appended to.
pub(crate) struct Journal {
    dir: PathBuf,
    current: Mutex<(u64, File)>,
    fsync: bool,
    /// Set when the cache is dropped: the directory may belong to another
    /// cache from then on, so nothing more is written to it. Checked under
    /// `current`'s lock by every write.
    detached: std::sync::atomic::AtomicBool,
    reserved: AtomicU64,
    appended: AtomicU64,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal").field("dir", &self.dir).finish()
    }
}

fn create(dir: &Path, generation: u64) -> Result<File> {
    let path = dir.join(format!("{FILE_PREFIX}{generation}"));
    crate::private_fs::options()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(|e| Error::io("open journal", &path, e))
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io("sync cache directory", dir, e))
}

impl Journal {
    /// Opens a fresh generation for appending after `replay` of the files
    /// in `dir`, and leaves those files as they are: the reopen does not
    /// wait for a snapshot (serializing every live version, then two
    /// fsyncs). They stay correct as they are, as after any crash; the
    /// cache compacts them in the background once its warm-up ends (see
    /// `Replay::needs_compaction`). The expiry clock and a sequence
    /// reservation go first into the new file.
    pub(crate) fn resume(dir: &Path, replay: &Replay, fsync: bool) -> Result<Self> {
        let old = journal_files(dir)?;
        let generation = old.last().map_or(0, |(g, _)| g + 1);
        if fsync {
            // What a crashed process appended without syncing (its spills'
            // `Written` facts, sweep tombstones) is durable from here on, as
            // when the reopen rewrote it as a synced snapshot.
            for (_, path) in &old {
                File::open(path)
                    .and_then(|f| f.sync_data())
                    .map_err(|e| Error::io("sync journal", path, e))?;
            }
        }
        let file = create(dir, generation)?;
        let upto = replay.next_seq + RESERVE_BLOCK;
        let journal = Self {
            dir: dir.to_path_buf(),
            current: Mutex::new((generation, file)),
            fsync,
            detached: std::sync::atomic::AtomicBool::new(false),
            reserved: AtomicU64::new(upto),
            appended: AtomicU64::new(0),
        };
        let facts = [Fact::Clock { at: replay.clock }, Fact::Reserved { upto }];
        journal.append(&facts, true)?;
        if fsync {
            // The new file's name must survive a power loss with its facts.
            sync_dir(dir)?;
        }
        Ok(journal)
    }

    /// Appends facts. With `durable` and the `fsync` setting, they also
    /// survive power loss; without, they survive a process crash (the kernel
    /// has them once `write` returns).
    pub(crate) fn append(&self, facts: &[Fact], durable: bool) -> Result<()> {
        let mut bytes = Vec::new();
        for f in facts {
            frame_into(f, &mut bytes);
        }
        let mut current = self.current.lock();
        if self.detached.load(Ordering::Acquire) {
            return Ok(());
        }
        let (generation, file) = &mut *current;
        let path = |g: u64| self.dir.join(format!("{FILE_PREFIX}{g}"));
        file.write_all(&bytes)
            .map_err(|e| Error::io("append to journal", path(*generation), e))?;
        if durable && self.fsync {
            file.sync_data()
                .map_err(|e| Error::io("sync journal", path(*generation), e))?;
        }
        self.appended
            .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    /// Makes sure `seq` is covered by a durable reservation before it is used.
    pub(crate) fn reserve(&self, seq: u64) -> Result<()> {
        if seq < self.reserved.load(Ordering::Acquire) {
            return Ok(());
        }
        let upto = seq + RESERVE_BLOCK;
        self.append(&[Fact::Reserved { upto }], true)?;
        self.reserved.fetch_max(upto, Ordering::AcqRel);
        Ok(())
    }

    /// Whether the cache was dropped (see `detach`).
    pub(crate) fn is_detached(&self) -> bool {
        self.detached.load(Ordering::Acquire)
    }

    /// Stops every further write to the directory (the cache was dropped).
    pub(crate) fn detach(&self) {
        let _current = self.current.lock();
        self.detached.store(true, Ordering::Release);
    }

    /// Bytes appended since the last snapshot.
    pub(crate) fn appended_bytes(&self) -> u64 {
        self.appended.load(Ordering::Relaxed)
    }

    /// Replaces every journal file by `snapshot` plus what is appended from
    /// now on. Appends go to a fresh file first; the snapshot (taken by the
    /// caller after this returns the rotation) then supersedes everything older.
    /// `None` once the cache was dropped: the directory may be another
    /// cache's, and there is nothing left to compact.
    pub(crate) fn rotate(&self) -> Result<Option<u64>> {
        let mut current = self.current.lock();
        if self.detached.load(Ordering::Acquire) {
            return Ok(None);
        }
        let next = current.0 + 2;
        let file = create(&self.dir, next)?;
        *current = (next, file);
        self.appended.store(0, Ordering::Relaxed);
        Ok(Some(next))
    }

    /// Second half of a compaction: writes the snapshot as generation
    /// `rotated - 1` and deletes every generation below it.
    pub(crate) fn install_snapshot(&self, rotated: u64, mut facts: Vec<Fact>) -> Result<()> {
        // Held throughout, so a detach cannot slip in between.
        let _current = self.current.lock();
        if self.detached.load(Ordering::Acquire) {
            return Ok(());
        }
        facts.push(Fact::Reserved {
            upto: self.reserved.load(Ordering::Acquire),
        });
        write_snapshot(&self.dir, rotated - 1, &facts)?;
        for (g, path) in journal_files(&self.dir)? {
            if g < rotated - 1 {
                std::fs::remove_file(&path)
                    .map_err(|e| Error::io("remove old journal", &path, e))?;
            }
        }
        Ok(())
    }
}

/// Writes a snapshot file atomically: a temporary file, synced, then renamed.
fn write_snapshot(dir: &Path, generation: u64, facts: &[Fact]) -> Result<()> {
    let tmp = dir.join(format!("{FILE_PREFIX}{generation}.tmp"));
    let path = dir.join(format!("{FILE_PREFIX}{generation}"));
    let mut bytes = Vec::new();
    for f in facts {
        frame_into(f, &mut bytes);
    }
    let mut file = crate::private_fs::create(&tmp)
        .map_err(|e| Error::io("create journal snapshot", &tmp, e))?;
    file.write_all(&bytes)
        .and_then(|_| file.sync_all())
        .map_err(|e| Error::io("write journal snapshot", &tmp, e))?;
    std::fs::rename(&tmp, &path).map_err(|e| Error::io("install journal snapshot", &path, e))?;
    sync_dir(dir)
}

#[cfg(test)]
mod tests;
