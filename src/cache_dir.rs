//! The cache directory: who owns it, what format it holds, where things live.
//!
//! ```text
//! DIR/spillway.lock    exclusive lock of the owning process (holds its pid)
//! DIR/spillway.toml    on-disk format version and the settings it depends on
//! DIR/journal.N        the journal (see `journal`)
//! DIR/foyer/           foyer's block files
//! ```

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::{private_fs, Error, Result};

/// Bumped when the directory layout, the journal or the record envelope
/// changes incompatibly.
///
/// ```
/// assert!(spillway::DISK_FORMAT_VERSION >= 1);
/// ```
pub const DISK_FORMAT_VERSION: u32 = 1;

const LOCK_FILE: &str = "spillway.lock";
/// What the lock file says after its pid while the cache that holds it is
/// being released (see [`CacheDir::mark_releasing`]).
const RELEASING: &str = " releasing";
/// The lock file's text is padded with spaces to this width ("PID
/// releasing" with the longest pid), so that each write covers the last.
const LOCK_TEXT_WIDTH: usize = 10 + RELEASING.len();
/// foyer's block files, under the cache directory.
const FOYER_DIR: &str = "foyer";
const META_FILE: &str = "spillway.toml";

/// What `spillway.toml` records: settings that must not change under existing data.
///
/// ```
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let dir = tempfile::tempdir().unwrap();
/// let cache = spillway::TwoTierCacheBackend::builder()
///     .disk_dir(dir.path())
///     .disk_capacity(64 << 20)
///     .build()
///     .await
///     .unwrap();
/// cache.close().await.unwrap();
/// drop(cache);
/// let report = spillway::DirReport::read(dir.path()).unwrap();
/// let meta: &spillway::DirMeta = &report.format;
/// assert_eq!(meta.format_version, spillway::DISK_FORMAT_VERSION);
/// # });
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirMeta {
    /// The on-disk format version.
    pub format_version: u32,
    /// foyer's block size in bytes.
    pub block_size: u64,
    /// The disk budget in bytes (foyer's device size).
    pub disk_capacity: u64,
}

/// An opened, locked cache directory. The lock is released when this drops.
#[derive(Debug)]
pub(crate) struct CacheDir {
    root: PathBuf,
    _lock: File,
    held: PathBuf,
    /// The format file was damaged and the directory reset on open.
    damaged: bool,
}

/// Directories held by caches of this process. `flock` belongs to an open
/// file description, which a child process shares between its `fork` and its
/// `exec`: the lock can outlive the cache that took it by that moment. This
/// registry tells such a leftover from a cache that really is still open.
static HELD: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());

/// Woken whenever a directory leaves [`HELD`].
static LEFT: tokio::sync::Notify = tokio::sync::Notify::const_new();

impl Drop for CacheDir {
    fn drop(&mut self) {
        if let Ok(mut held) = HELD.lock() {
            held.retain(|p| *p != self.held);
        }
        LEFT.notify_waiters();
    }
}

impl CacheDir {
    /// Creates (if needed) and locks `root`, then checks its format against
    /// `expected`: an incompatible directory is an error, or is emptied and
    /// reused when `reset` is set.
    pub(crate) fn open(root: &Path, expected: &DirMeta, reset: bool) -> Result<Self> {
        private_fs::create_dir(root)?;
        let held = root
            .canonicalize()
            .map_err(|e| Error::io("resolve cache directory", root, e))?;
        let lock = {
            let mut registry = HELD.lock().unwrap_or_else(|p| p.into_inner());
            if registry.contains(&held) {
                return Err(Error::Locked {
                    dir: root.to_path_buf(),
                    holder: Some(std::process::id()),
                });
            }
            let lock = lock(root)?;
            registry.push(held.clone());
            lock
        };
        let mut dir = Self {
            root: root.to_path_buf(),
            _lock: lock,
            held,
            damaged: false,
        };
        // Temporary files a kill left behind (a snapshot or format file
        // being written): never part of the state.
        dir.remove_leftovers()?;
        let meta_path = root.join(META_FILE);
        private_fs::refuse_symlink(&meta_path)?;
        let mut write_meta = true;
        match read_meta(&meta_path) {
            Ok(Some(found)) if found == *expected => write_meta = false,
            Ok(Some(found)) if reset => {
                tracing::warn!(dir = %root.display(), ?found, ?expected, "incompatible cache directory reset");
                dir.wipe()?;
            }
            Ok(Some(found)) => {
                return Err(Error::IncompatibleDir {
                    dir: root.to_path_buf(),
                    found: format!("{found:?}"),
                    expected: format!("{expected:?}"),
                });
            }
            Ok(None) => dir.wipe()?,
            // Written atomically, so only damage (or an older spillway that
            // wrote it in place, killed mid-write) leaves it unreadable: the
            // cache starts empty rather than refusing to open.
            Err(Error::IncompatibleDir { found, .. }) => {
                tracing::warn!(dir = %root.display(), %found, "damaged format file; the cache directory is reset and starts empty");
                dir.damaged = true;
                dir.wipe()?;
            }
            Err(e) => return Err(e),
        }
        if write_meta {
            let text = toml::to_string(expected).unwrap_or_default();
            write_atomically(root, &meta_path, text.as_bytes())?;
        }
        private_fs::create_dir(&dir.foyer_dir())?;
        Ok(dir)
    }

    /// Empties the directory (a damaged journal), keeping the lock and the
    /// format file.
    pub(crate) fn reset(&mut self) -> Result<()> {
        self.damaged = true;
        self.remove_entries(|name| name == FOYER_DIR || name.starts_with("journal."))?;
        private_fs::create_dir(&self.foyer_dir())
    }

    /// Whether the directory's state was damaged and reset on open.
    pub(crate) fn was_reset(&self) -> bool {
        self.damaged
    }

    fn remove_leftovers(&self) -> Result<()> {
        self.remove_entries(|name| {
            (name.starts_with("journal.") || name.starts_with(META_FILE)) && name.ends_with(".tmp")
        })
    }

    pub(crate) fn root(&self) -> &Path {
        &self.root
    }

    /// The directory, canonical: how this process's registries name it.
    pub(crate) fn canonical(&self) -> &Path {
        &self.held
    }

    /// Another handle on the lock file: its `flock` stays held while any
    /// handle on it is open.
    pub(crate) fn lock_handle(&self) -> Result<File> {
        let path = self.root.join(LOCK_FILE);
        self._lock
            .try_clone()
            .map_err(|e| Error::io("duplicate lock file handle", &path, e))
    }

    /// Marks the lock file as being released: this cache's last handle is
    /// gone, and its `flock` goes once its foyer instance has closed (see
    /// `device_claim`). An open in another process meanwhile waits for that
    /// rather than fail (see [`CacheDir::released_elsewhere`]). Best effort:
    /// the lock file is only ever read for what it tells a waiting opener.
    pub(crate) fn mark_releasing(&self) {
        use std::os::unix::fs::FileExt;
        // Over the pid written at the open, which it extends: a reader never
        // sees the file empty in between.
        let text = format!("{}{RELEASING}", std::process::id());
        let text = format!("{text:<LOCK_TEXT_WIDTH$}");
        let _ = self._lock.write_all_at(text.as_bytes(), 0);
    }

    /// Waits (at most `wait`) while another process holds `root`'s lock
    /// only until its released cache's foyer instance has closed (see
    /// [`CacheDir::mark_releasing`]). Returns at once when the lock is free,
    /// held by this process, or held by an open cache of another process
    /// (whose open then fails, naming it).
    pub(crate) async fn released_elsewhere(root: &Path, wait: std::time::Duration) {
        use std::os::unix::fs::{FileExt, OpenOptionsExt};
        // A directory `CacheDir::open` would refuse is refused there, at
        // once: nothing here waits on it. Non-blocking, and regular files
        // only, so a planted FIFO cannot hold the open up either.
        if private_fs::check_dir(root).is_err() {
            return;
        }
        let path = root.join(LOCK_FILE);
        let Ok(file) = private_fs::options()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(&path)
        else {
            return;
        };
        if !file.metadata().is_ok_and(|m| m.is_file()) {
            return;
        }
        let deadline = tokio::time::Instant::now() + wait;
        let me = std::process::id().to_string();
        loop {
            // Free (and released again when `file` drops).
            if file.try_lock().is_ok() {
                return;
            }
            let mut text = [0u8; 64];
            let n = file.read_at(&mut text, 0).unwrap_or(0);
            let text = String::from_utf8_lossy(&text[..n]);
            let releasing = released_by_another(&text, &me);
            if !releasing || tokio::time::Instant::now() >= deadline {
                return;
            }
            // Another process's lock: no signal reaches this one when it goes.
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
    }

    /// Waits (at most `wait`) until no cache of this process holds `root`
    /// (canonical); `false` if one still does.
    pub(crate) async fn released_here(root: &Path, wait: std::time::Duration) -> bool {
        crate::notified_wait::wait_until(&LEFT, || !Self::held_here(root), wait).await
    }

    /// Whether an open cache of this process holds `root` (canonical): an
    /// open of it fails at once (`Error::Locked`).
    pub(crate) fn held_here(root: &Path) -> bool {
        let registry = HELD.lock().unwrap_or_else(|p| p.into_inner());
        registry.iter().any(|held| held == root)
    }

    /// Where foyer's files go under `root`.
    pub(crate) fn foyer_dir_of(root: &Path) -> PathBuf {
        root.join(FOYER_DIR)
    }

    pub(crate) fn foyer_dir(&self) -> PathBuf {
        Self::foyer_dir_of(&self.root)
    }

    /// Removes everything spillway keeps in the directory except the lock.
    fn wipe(&self) -> Result<()> {
        self.remove_entries(|name| {
            name == FOYER_DIR || name == META_FILE || name.starts_with("journal.")
        })
    }

    /// Removes the entries of the directory whose names `which` accepts
    /// (a directory with everything in it).
    fn remove_entries(&self, which: impl Fn(&str) -> bool) -> Result<()> {
        let entries = std::fs::read_dir(&self.root)
            .map_err(|e| Error::io("list cache directory", &self.root, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| Error::io("list cache directory", &self.root, e))?;
            if !which(&entry.file_name().to_string_lossy()) {
                continue;
            }
            let path = entry.path();
            // Not `is_dir`: a symlink planted in our place is removed, never followed.
            let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
            let removed = if is_dir {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_file(&path)
            };
            removed.map_err(|e| Error::io("remove", &path, e))?;
        }
        Ok(())
    }
}

/// Reads the format file of a directory, if it has one.
pub(crate) fn read_meta(path: &Path) -> Result<Option<DirMeta>> {
    match std::fs::read_to_string(path) {
        Ok(text) => toml::from_str(&text)
            .map(Some)
            .map_err(|e| Error::IncompatibleDir {
                dir: path.to_path_buf(),
                found: format!("unreadable format file ({})", e.message()),
                expected: format!("format version {DISK_FORMAT_VERSION}"),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io("read", path, e)),
    }
}

/// Reads the format file of the directory `root`.
pub(crate) fn read_dir_meta(root: &Path) -> Result<Option<DirMeta>> {
    read_meta(&root.join(META_FILE))
}

/// Replaces `path` by `bytes` so that a kill at any moment leaves either
/// the old file or the new one: a temporary file, synced, renamed, and the
/// directory synced.
pub(crate) fn write_atomically(dir: &Path, path: &Path, bytes: &[u8]) -> Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut file = private_fs::create(&tmp).map_err(|e| Error::io("create", &tmp, e))?;
    file.write_all(bytes)
        .and_then(|_| file.sync_all())
        .map_err(|e| Error::io("write", &tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io("install", path, e))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io("sync cache directory", dir, e))
}

/// Whether a lock file's `text` says a cache of another process than `me`
/// (a pid) is being released (see [`CacheDir::mark_releasing`]).
fn released_by_another(text: &str, me: &str) -> bool {
    text.trim_end()
        .strip_suffix(RELEASING)
        .is_some_and(|pid| pid != me)
}

fn lock(root: &Path) -> Result<File> {
    use std::os::unix::fs::FileExt;
    let path = root.join(LOCK_FILE);
    let mut file = private_fs::options()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)
        .map_err(|e| Error::io("open lock file", &path, e))?;
    // No cache of this process holds the directory (the caller checked), so
    // a lock naming this process is a child's inherited copy, gone at its
    // `exec`: wait that out, briefly.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    while file.try_lock().is_err() {
        let mut holder = String::new();
        let _ = file.rewind().and_then(|_| file.read_to_string(&mut holder));
        // "PID", or "PID releasing" (see `CacheDir::mark_releasing`).
        let holder: Option<u32> = holder
            .split_whitespace()
            .next()
            .and_then(|p| p.parse().ok());
        if holder != Some(std::process::id()) || std::time::Instant::now() > deadline {
            return Err(Error::Locked {
                dir: root.to_path_buf(),
                holder,
            });
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    // Written over what is there, padded to the longest text the file ever
    // holds ("PID releasing"), rather than truncated first: truncating a
    // file written moments before (the last close's mark) makes ext4 wait
    // for its writeback, up to a millisecond of every reopen. A longer
    // file (damaged, or written by something else) is cut to the width,
    // or what is left after the pid could read as a release mark; a file
    // spillway wrote is never longer, so never cut.
    let width = LOCK_TEXT_WIDTH as u64;
    let pid = format!("{:<LOCK_TEXT_WIDTH$}", std::process::id());
    file.write_all_at(pid.as_bytes(), 0)
        .and_then(|_| file.metadata())
        .and_then(|meta| {
            if meta.len() > width {
                file.set_len(width)
            } else {
                Ok(())
            }
        })
        .map_err(|e| Error::io("write lock file", &path, e))?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_release_mark_is_read_through_the_padding_and_only_for_another_pid() {
        let padded = |text: &str| format!("{text:<LOCK_TEXT_WIDTH$}");
        assert!(released_by_another(&padded("41 releasing"), "7"));
        assert!(released_by_another("41 releasing", "7"));
        assert!(!released_by_another(&padded("41 releasing"), "41"));
        assert!(!released_by_another(&padded("41"), "7"));
        // The longest pid's mark fits the width: a later write covers it.
        let longest = format!("{}{RELEASING}", u32::MAX);
        assert_eq!(longest.len(), LOCK_TEXT_WIDTH);
    }
}
