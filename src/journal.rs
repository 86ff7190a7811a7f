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
//! * `Resident` — the key was in memory at the last graceful close;
//! * `WrittenUntil` — `Written` for a version with a deadline (see `expiry`);
//! * `WrittenPacked` — `Written` for a version stored inside a pack (see `packing`);
//! * `Stored` — `Written` for a disk-only version, by its key's hash and
//!   prefix (snapshots write these: the key itself is in the record);
//! * `Clock` — the wall clock had reached `at`: expiry's clock never goes
//!   below it, so a clock set back while the cache was down cannot revive
//!   an entry that had expired.
//!
//! The state a journal describes does not depend on the order of its facts: a
//! written version is alive if no kill fact with a higher sequence covers it.
//! So any union of journal files describes the right state, which makes
//! rotation and compaction crash-safe at every step (old files are deleted
//! only after the new snapshot is in place, and a leftover old file only
//! repeats true facts). Each fact is framed with its length and a CRC: a torn
//! tail after a crash ends the replay of that file, never corrupts it.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::key::KeyHashBuilder;
use crate::packing::PackRef;
use crate::shared_prefix::SharedPrefix;
use crate::{Error, InternalCacheKey, Result};

/// Sequence numbers are reserved this many at a time, so that numbers used
/// before a crash are never handed out again.
const RESERVE_BLOCK: u64 = 1 << 20;
const FILE_PREFIX: &str = "journal.";
/// No fact is this long (the longest holds one key); a frame claiming more
/// has a damaged length.
const MAX_FRAME: usize = 1 << 20;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) enum Fact {
    Written {
        prefix: String,
        key: String,
        type_name: String,
        seq: u64,
        size: u64,
        len: u32,
    },
    Tombstone {
        hash: u64,
        seq: u64,
    },
    Invalidated {
        prefix: String,
        seq: u64,
    },
    Cleared {
        seq: u64,
    },
    Reserved {
        upto: u64,
    },
    Resident {
        hash: u64,
        seq: u64,
    },
    // New variants go last: postcard numbers them by position, and older
    // journals must still read.
    WrittenUntil {
        prefix: String,
        key: String,
        type_name: String,
        seq: u64,
        size: u64,
        len: u32,
        expires_at: u64,
    },
    Clock {
        at: u64,
    },
    /// `Written` for a version stored inside a pack (see `packing`);
    /// `expires_at` 0: no deadline.
    WrittenPacked {
        prefix: String,
        key: String,
        type_name: String,
        seq: u64,
        size: u64,
        len: u32,
        expires_at: u64,
        pack: u64,
        offset: u16,
    },
    /// A disk-only version named by its key's hash and prefix (see
    /// `cold_slot`); `pack` 0: not packed (pack ids start at 1).
    Stored {
        hash: u64,
        prefix: SharedPrefix,
        seq: u64,
        len: u32,
        expires_at: u64,
        pack: u64,
        offset: u16,
    },
}

impl Fact {
    /// `Written`, `WrittenUntil` for a version with a deadline, or
    /// `WrittenPacked` for one inside a pack.
    pub(crate) fn written(
        key: &InternalCacheKey,
        seq: u64,
        size: u64,
        len: u32,
        expires_at: u64,
        pack: Option<PackRef>,
    ) -> Self {
        let (prefix, key, type_name) = (
            key.prefix().to_string(),
            key.key().to_string(),
            key.type_name().to_string(),
        );
        if let Some(pack) = pack {
            Fact::WrittenPacked {
                prefix,
                key,
                type_name,
                seq,
                size,
                len,
                expires_at,
                pack: pack.id,
                offset: pack.offset,
            }
        } else if expires_at == 0 {
            Fact::Written {
                prefix,
                key,
                type_name,
                seq,
                size,
                len,
            }
        } else {
            Fact::WrittenUntil {
                prefix,
                key,
                type_name,
                seq,
                size,
                len,
                expires_at,
            }
        }
    }
}

impl Fact {
    /// `Stored` for a disk-only slot.
    pub(crate) fn stored(hash: u64, prefix: &str, slot: &crate::placement::Slot) -> Self {
        let pack = slot.pack.unwrap_or(PackRef { id: 0, offset: 0 });
        Fact::Stored {
            hash,
            prefix: SharedPrefix::new(prefix),
            seq: slot.seq,
            len: slot.record_len,
            expires_at: slot.expires_at,
            pack: pack.id,
            offset: pack.offset,
        }
    }

    /// The version a `Written`, `WrittenUntil`, `WrittenPacked` or `Stored`
    /// fact records, by key hash (the reverse of [`Fact::written`] and
    /// [`Fact::stored`]); `None` for other facts.
    fn into_written(self) -> Option<(u64, Recovered)> {
        // (seq, size, len, expires_at, pack) of a keyed fact.
        let (prefix, key, type_name, (seq, size, len, expires_at, pack)) = match self {
            Fact::Written {
                prefix,
                key,
                type_name,
                seq,
                size,
                len,
            } => (prefix, key, type_name, (seq, size, len, 0, None)),
            Fact::WrittenUntil {
                prefix,
                key,
                type_name,
                seq,
                size,
                len,
                expires_at,
            } => (prefix, key, type_name, (seq, size, len, expires_at, None)),
            Fact::WrittenPacked {
                prefix,
                key,
                type_name,
                seq,
                size,
                len,
                expires_at,
                pack,
                offset,
            } => {
                let at = Some(PackRef { id: pack, offset });
                (prefix, key, type_name, (seq, size, len, expires_at, at))
            }
            Fact::Stored {
                hash,
                prefix,
                seq,
                len,
                expires_at,
                pack,
                offset,
            } => {
                let at = (pack != 0).then_some(PackRef { id: pack, offset });
                let owner = Identity::Prefix(prefix.into_arc());
                let size = u64::from(len);
                return Some((hash, Recovered::at(seq, size, len, expires_at, at, owner)));
            }
            _ => return None,
        };
        let key = InternalCacheKey::new(prefix, key, intern(&type_name));
        let hash = key.disk_hash();
        let owner = Identity::Key(Box::new(key));
        Some((hash, Recovered::at(seq, size, len, expires_at, pack, owner)))
    }
}

/// A version the journal says is on disk.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Recovered {
    pub seq: u64,
    pub size: u64,
    pub len: u32,
    /// Wall-clock deadline (ms since the epoch); 0: none.
    pub expires_at: u64,
    /// The pack holding it, if it was packed.
    pub pack: Option<PackRef>,
    pub owner: Identity,
}

/// Whose version a recovered record is: the key itself, or (from a
/// snapshot's `Stored` fact) its hash and prefix only.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Identity {
    /// Boxed: keyed facts are the few, and the replay's map holds a
    /// million of these on a large disk.
    Key(Box<InternalCacheKey>),
    Prefix(Arc<str>),
}

impl Identity {
    pub(crate) fn prefix(&self) -> &str {
        match self {
            Identity::Key(k) => k.prefix(),
            Identity::Prefix(p) => p,
        }
    }
}

impl Replay {
    /// Whether the replayed files hold more than one snapshot's worth of
    /// history: several files with facts (a crash, or appends since the
    /// last snapshot), or a torn tail. A cleanly closed cache leaves one
    /// snapshot and an empty file, which compacting would only rewrite.
    pub(crate) fn needs_compaction(&self) -> bool {
        self.files_with_facts > 1 || self.torn_tails > 0
    }
}

impl Recovered {
    fn at(
        seq: u64,
        size: u64,
        len: u32,
        expires_at: u64,
        pack: Option<PackRef>,
        owner: Identity,
    ) -> Self {
        Self {
            seq,
            size,
            len,
            expires_at,
            pack,
            owner,
        }
    }
}

/// What a replay found.
#[derive(Debug, Default)]
pub(crate) struct Replay {
    /// By key hash: one live version per hash (foyer keeps one record per
    /// hash too). Key hashes are already mixed: no second hash over them.
    pub live: HashMap<u64, Recovered, KeyHashBuilder>,
    /// Keys recorded as resident (at a close, or by write-behind), most
    /// recently recorded first.
    pub resident: Vec<InternalCacheKey>,
    pub next_seq: u64,
    pub facts: u64,
    /// Journal files that held at least one fact: more than one (or a torn
    /// tail) means the next compaction has something to fold.
    pub files_with_facts: usize,
    pub torn_tails: u64,
    /// A journal file is damaged in the middle: its state cannot be trusted.
    pub corrupt: bool,
    /// The latest wall-clock time recorded (ms since the epoch).
    pub clock: u64,
}

/// Type names are `&'static str` in keys; names read back from disk are
/// interned once each (there are few of them) to get one.
fn intern(name: &str) -> &'static str {
    interned(name, usize::MAX).unwrap_or("")
}

/// `name` as a `&'static str`, interned; `None` once `cap` names are, for
/// names from sources that are not trusted to be few (other processes).
pub(crate) fn interned(name: &str, cap: usize) -> Option<&'static str> {
    static NAMES: Mutex<Vec<&'static str>> = Mutex::new(Vec::new());
    let mut names = NAMES.lock();
    if let Some(n) = names.iter().find(|n| **n == name) {
        return Some(n);
    }
    if names.len() >= cap {
        return None;
    }
    let leaked: &'static str = Box::leak(name.to_string().into_boxed_str());
    names.push(leaked);
    Some(leaked)
}

/// Appends `fact`'s frame (length, CRC, payload) to `out`, serialized in
/// place: a snapshot frames every live version, so no buffer per fact.
fn frame_into(fact: &Fact, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0; 8]);
    // Serializing a plain enum of strings and integers into memory cannot
    // fail. Were it to, the frame is left empty, which replay refuses (a
    // torn tail, or a damaged journal that resets the disk tier): never a
    // kill fact silently left out, which could bring a version back.
    if postcard::to_io(fact, &mut *out).is_err() {
        out.truncate(start + 8);
        tracing::error!(?fact, "journal fact could not be serialized");
    }
    let payload = &out[start + 8..];
    let (len, crc) = (payload.len() as u32, crc32fast::hash(payload));
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// How a journal file ended.
#[derive(Debug, PartialEq, Eq)]
enum Ending {
    Clean,
    /// The last frame is incomplete, or followed only by zeros: what a crash
    /// or power loss in the middle of an append leaves.
    TornTail,
    /// A bad frame followed by more data: damage, not a crash. Facts after
    /// it (kill facts among them) are lost, so nothing in the journal can be
    /// trusted.
    Corrupt,
    /// The file was gone by the time it was read.
    Vanished,
}

/// Reads the facts of one file up to the first damaged frame.
fn read_facts(path: &Path, facts: &mut Vec<Fact>) -> Result<Ending> {
    let mut bytes = Vec::new();
    match File::open(path).and_then(|mut f| f.read_to_end(&mut bytes)) {
        Ok(_) => {}
        // Listed, then removed: a compaction of the cache that owns the
        // directory replaced it meanwhile (see `replay`).
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Ending::Vanished),
        Err(e) => return Err(Error::io("read journal", path, e)),
    }
    let mut at = 0;
    while at < bytes.len() {
        let Some(header) = bytes.get(at..at + 8) else {
            return Ok(Ending::TornTail);
        };
        let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        let Some(payload) = bytes.get(at + 8..at + 8 + len) else {
            // Cut short: a torn append, unless the length itself is beyond
            // any fact spillway writes (a damaged length field).
            return Ok(if len > MAX_FRAME {
                Ending::Corrupt
            } else {
                Ending::TornTail
            });
        };
        let fact = (crc32fast::hash(payload) == crc)
            .then(|| postcard::from_bytes::<Fact>(payload).ok())
            .flatten();
        match fact {
            Some(fact) => facts.push(fact),
            None => {
                let rest = &bytes[(at + 8 + len).min(bytes.len())..];
                return Ok(if rest.iter().all(|b| *b == 0) {
                    Ending::TornTail
                } else {
                    Ending::Corrupt
                });
            }
        }
        at += 8 + len;
    }
    Ok(Ending::Clean)
}

/// The journal files in `dir`, with their generation numbers.
fn journal_files(dir: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let mut files = Vec::new();
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io("list cache directory", dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| Error::io("list cache directory", dir, e))?;
        let name = entry.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(FILE_PREFIX)) else {
            continue;
        };
        let generation = rest.split('.').next().and_then(|g| g.parse::<u64>().ok());
        if let (Some(g), false) = (generation, rest.ends_with(".tmp")) {
            files.push((g, entry.path()));
        }
    }
    files.sort();
    Ok(files)
}

/// What the journal files of a directory hold, read in order.
struct JournalFiles {
    facts: Vec<Fact>,
    torn: u64,
    /// A file is damaged in the middle.
    corrupt: bool,
    files_with_facts: usize,
}

/// Reads every journal file in `dir`; `None` if a file vanished before it
/// was read.
fn read_journal_files(dir: &Path) -> Result<Option<JournalFiles>> {
    let mut facts = Vec::new();
    let mut torn = 0;
    let mut corrupt = false;
    let mut files_with_facts = 0;
    for (_, path) in journal_files(dir)? {
        let before = facts.len();
        let ending = read_facts(&path, &mut facts)?;
        if facts.len() > before {
            files_with_facts += 1;
        }
        match ending {
            Ending::Clean => {}
            Ending::TornTail => torn += 1,
            Ending::Corrupt => {
                tracing::error!(file = %path.display(), "journal damaged in the middle; the disk tier is reset");
                corrupt = true;
            }
            Ending::Vanished => return Ok(None),
        }
    }
    Ok(Some(JournalFiles {
        facts,
        torn,
        corrupt,
        files_with_facts,
    }))
}

/// Replays every journal file in `dir`.
pub(crate) fn replay(dir: &Path) -> Result<Replay> {
    // Read beside an open cache (`DirReport`), a file listed may be removed
    // by a compaction before it is read: its facts are then in a snapshot
    // the listing may have missed, so the whole directory is read again.
    // The owner of the directory's lock never sees this.
    let mut attempts = 0;
    let JournalFiles {
        facts,
        torn,
        corrupt,
        files_with_facts,
    } = loop {
        match read_journal_files(dir)? {
            Some(read) => break read,
            None if attempts < 100 => attempts += 1,
            None => {
                return Err(Error::Disk {
                    dir: dir.to_path_buf(),
                    op: "read journal",
                    message: "journal files kept vanishing while being read".into(),
                })
            }
        }
    };
    if corrupt {
        return Ok(Replay {
            corrupt: true,
            next_seq: 1,
            ..Replay::default()
        });
    }
    let mut replay = Replay {
        facts: facts.len() as u64,
        files_with_facts,
        torn_tails: torn,
        next_seq: 1,
        ..Replay::default()
    };
    let mut tombstones: HashMap<u64, u64, KeyHashBuilder> = HashMap::default();
    let mut invalidated: HashMap<String, u64> = HashMap::new();
    let mut cleared = 0u64;
    let mut resident = Vec::new();
    let mut max_seq = 0u64;
    let mut versions = 0usize;
    for fact in &facts {
        match fact {
            Fact::Tombstone { hash, seq } => {
                let t = tombstones.entry(*hash).or_default();
                *t = (*t).max(*seq);
            }
            Fact::Invalidated { prefix, seq } => {
                let t = invalidated.entry(prefix.clone()).or_default();
                *t = (*t).max(*seq);
            }
            Fact::Cleared { seq } => cleared = cleared.max(*seq),
            Fact::Reserved { upto } => max_seq = max_seq.max(*upto),
            Fact::Resident { hash, seq } => resident.push((*hash, *seq)),
            Fact::Written { seq, .. } | Fact::WrittenUntil { seq, .. } => {
                max_seq = max_seq.max(*seq);
                versions += 1;
            }
            // Pack ids are sequence numbers too.
            Fact::WrittenPacked { seq, pack, .. } | Fact::Stored { seq, pack, .. } => {
                max_seq = max_seq.max(*seq).max(*pack);
                versions += 1;
            }
            Fact::Clock { at } => replay.clock = replay.clock.max(*at),
        }
    }
    // Sized once: grown step by step, a million versions were rehashed
    // about twenty times over.
    replay.live.reserve(versions);
    for fact in facts {
        let Some((hash, mut recovered)) = fact.into_written() else {
            continue;
        };
        let seq = recovered.seq;
        let prefix = recovered.owner.prefix();
        let dead = seq <= cleared
            || tombstones.get(&hash).is_some_and(|t| seq < *t)
            || invalidated
                .iter()
                .any(|(p, s)| seq < *s && prefix.starts_with(p.as_str()));
        // For the same version, the later fact wins: a version whose copy
        // foyer evicted can be written again, into another pack. (Keys
        // whose hashes collide: the later version wins.)
        let earlier = replay.live.get(&hash);
        if dead || earlier.is_some_and(|r| r.seq > seq) {
            continue;
        }
        if let Some(Recovered {
            seq: same,
            owner: owner @ Identity::Key(_),
            ..
        }) = earlier
        {
            // A snapshot's `Stored` names the same version without its key.
            if *same == seq && matches!(recovered.owner, Identity::Prefix(_)) {
                recovered.owner = owner.clone();
            }
        }
        replay.live.insert(hash, recovered);
    }
    let mut seen = std::collections::HashSet::new();
    for (hash, seq) in resident.into_iter().rev() {
        if let Some(Recovered {
            seq: live,
            owner: Identity::Key(k),
            ..
        }) = replay.live.get(&hash)
        {
            if *live == seq && seen.insert(hash) {
                replay.resident.push(InternalCacheKey::clone(k));
            }
        }
    }
    replay.next_seq = max_seq + 1;
    Ok(replay)
}

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
mod tests {
    use super::*;

    fn k(prefix: &str, key: &str) -> InternalCacheKey {
        InternalCacheKey::new(prefix, key, "T")
    }

    #[test]
    fn a_frame_is_length_crc_then_postcard_payload_byte_for_byte() {
        // The on-disk format, pinned: journals written by earlier builds
        // must keep replaying.
        let mut out = Vec::new();
        let fact = Fact::Tombstone {
            hash: 0x0102_0304_0506_0708,
            seq: 300,
        };
        frame_into(&fact, &mut out);
        frame_into(&fact, &mut out);
        let one = [
            12, 0, 0, 0, 76, 102, 95, 14, 1, 136, 142, 152, 168, 192, 224, 128, 129, 1, 172, 2,
        ];
        assert_eq!(out, [one, one].concat());
    }

    fn written(key: &InternalCacheKey, seq: u64) -> Fact {
        Fact::written(key, seq, 10, 100, 0, None)
    }

    fn replay_of(facts: &[Fact]) -> Replay {
        let dir = tempfile::tempdir().unwrap();
        write_snapshot(dir.path(), 0, facts).unwrap();
        replay(dir.path()).unwrap()
    }

    #[test]
    fn latest_written_version_wins_in_any_order() {
        let a = k("p", "a");
        for facts in [
            [written(&a, 3), written(&a, 7)],
            [written(&a, 7), written(&a, 3)],
        ] {
            assert_eq!(replay_of(&facts).live[&a.disk_hash()].seq, 7);
        }
    }

    #[test]
    fn kill_facts_apply_by_sequence_not_position() {
        let a = k("ds/1", "a");
        let b = k("ds/2", "b");
        let tomb = Fact::Tombstone {
            hash: a.disk_hash(),
            seq: 5,
        };
        let r = replay_of(&[written(&a, 4), tomb.clone()]);
        assert!(r.live.is_empty());
        let r = replay_of(&[tomb, written(&a, 4), written(&b, 4)]);
        assert_eq!(
            r.live.len(),
            1,
            "a tombstone written first still kills older versions"
        );
        let r = replay_of(&[
            written(&a, 4),
            written(&b, 4),
            Fact::Invalidated {
                prefix: "ds/1".into(),
                seq: 6,
            },
            written(&a, 9),
        ]);
        assert_eq!(
            r.live[&a.disk_hash()].seq,
            9,
            "newer than the invalidation survives"
        );
        assert!(r.live.contains_key(&b.disk_hash()));
        let r = replay_of(&[written(&a, 4), Fact::Cleared { seq: 8 }, written(&b, 9)]);
        assert_eq!(r.live.keys().collect::<Vec<_>>(), vec![&b.disk_hash()]);
    }

    fn stored(key: &InternalCacheKey, seq: u64, pack: u64) -> Fact {
        Fact::Stored {
            hash: key.disk_hash(),
            prefix: SharedPrefix::new(key.prefix()),
            seq,
            len: 100,
            expires_at: 0,
            pack,
            offset: 8,
        }
    }

    #[test]
    fn stored_facts_replay_by_hash_and_kill_facts_reach_them() {
        let a = k("ds/1", "a");
        let b = k("ds/2", "b");
        let r = replay_of(&[stored(&a, 4, 9), stored(&b, 5, 0)]);
        let ra = &r.live[&a.disk_hash()];
        assert_eq!((ra.seq, ra.pack), (4, Some(PackRef { id: 9, offset: 8 })));
        assert_eq!(ra.owner, Identity::Prefix("ds/1".into()));
        assert_eq!(r.live[&b.disk_hash()].pack, None);
        assert_eq!(r.next_seq, 10, "pack ids count as sequence numbers");
        let inv = Fact::Invalidated {
            prefix: "ds/1".into(),
            seq: 6,
        };
        let r = replay_of(&[stored(&a, 4, 0), inv.clone(), stored(&b, 5, 0)]);
        assert_eq!(r.live.keys().collect::<Vec<_>>(), vec![&b.disk_hash()]);
        let tomb = Fact::Tombstone {
            hash: b.disk_hash(),
            seq: 6,
        };
        assert!(replay_of(&[tomb, stored(&b, 5, 0)]).live.is_empty());
        assert!(replay_of(&[stored(&b, 5, 0), Fact::Cleared { seq: 5 }])
            .live
            .is_empty());
    }

    #[test]
    fn a_resident_version_keeps_its_key_whichever_fact_names_it_last() {
        let a = k("p", "a");
        let resident = Fact::Resident {
            hash: a.disk_hash(),
            seq: 3,
        };
        for facts in [
            [written(&a, 3), stored(&a, 3, 0), resident.clone()],
            [stored(&a, 3, 0), written(&a, 3), resident.clone()],
        ] {
            let r = replay_of(&facts);
            assert_eq!(r.resident, vec![a.clone()]);
            // A reopen keeps the files it replayed: the key is still there.
            let dir = tempfile::tempdir().unwrap();
            write_snapshot(dir.path(), 0, &facts).unwrap();
            drop(Journal::resume(dir.path(), &r, false).unwrap());
            assert_eq!(replay(dir.path()).unwrap().resident, vec![a.clone()]);
        }
    }

    #[test]
    fn deadlines_and_the_clock_replay_and_older_facts_still_read() {
        let a = k("p", "a");
        let b = k("p", "b");
        let r = replay_of(&[
            Fact::written(&a, 3, 10, 100, 5_000, None),
            written(&b, 4),
            Fact::Clock { at: 7_000 },
            Fact::Clock { at: 6_000 },
        ]);
        assert_eq!(r.live[&a.disk_hash()].expires_at, 5_000);
        assert_eq!(r.live[&b.disk_hash()].expires_at, 0);
        assert_eq!(r.clock, 7_000, "the latest time recorded");
        // Variants keep their numbers: a `Written` fact framed before
        // expiry existed (variant 0) still decodes as one.
        let bytes = postcard::to_stdvec(&written(&b, 4)).unwrap();
        assert_eq!(bytes[0], 0);
        // A reopen records the clock it starts from in its new file.
        let dir = tempfile::tempdir().unwrap();
        let _j = Journal::resume(dir.path(), &r, false).unwrap();
        assert_eq!(replay(dir.path()).unwrap().clock, 7_000);
    }

    #[test]
    fn packed_versions_replay_with_their_pack_and_die_like_the_others() {
        let a = k("p", "a");
        let b = k("p", "b");
        let at = PackRef { id: 40, offset: 4 };
        let r = replay_of(&[
            Fact::written(&a, 3, 10, 100, 0, Some(at)),
            Fact::written(
                &b,
                5,
                10,
                100,
                9_000,
                Some(PackRef {
                    id: 40,
                    offset: 104,
                }),
            ),
            Fact::Tombstone {
                hash: b.disk_hash(),
                seq: 6,
            },
        ]);
        assert_eq!(r.live[&a.disk_hash()].pack, Some(at));
        assert!(
            !r.live.contains_key(&b.disk_hash()),
            "a tombstone kills a packed version"
        );
        // A pack id is a sequence number: never handed out again.
        let r = replay_of(&[Fact::written(
            &a,
            3,
            10,
            100,
            0,
            Some(PackRef { id: 900, offset: 4 }),
        )]);
        assert_eq!(r.next_seq, 901);
    }

    /// A promoted version whose pack foyer evicted is written again, into
    /// another pack, under the same sequence number: the later fact names
    /// where it is now.
    #[test]
    fn the_latest_fact_of_one_version_says_where_it_is() {
        let a = k("p", "a");
        let first = PackRef { id: 10, offset: 4 };
        let again = PackRef {
            id: 20,
            offset: 104,
        };
        let r = replay_of(&[
            Fact::written(&a, 3, 10, 100, 0, Some(first)),
            Fact::written(&a, 3, 10, 100, 0, Some(again)),
        ]);
        assert_eq!(r.live[&a.disk_hash()].pack, Some(again));
        // A newer version still wins whatever the order.
        let r = replay_of(&[
            Fact::written(&a, 4, 10, 100, 0, None),
            Fact::written(&a, 3, 10, 100, 0, Some(again)),
        ]);
        assert_eq!(
            (r.live[&a.disk_hash()].seq, r.live[&a.disk_hash()].pack),
            (4, None)
        );
    }

    #[test]
    fn sequence_numbers_continue_past_reservations() {
        let r = replay_of(&[Fact::Reserved { upto: 1000 }, written(&k("p", "a"), 5)]);
        assert_eq!(r.next_seq, 1001);
    }

    #[test]
    fn a_torn_tail_ends_the_replay_of_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let a = k("p", "a");
        write_snapshot(dir.path(), 0, &[written(&a, 1), written(&k("p", "b"), 2)]).unwrap();
        let path = dir.path().join("journal.0");
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 3]).unwrap();
        let r = replay(dir.path()).unwrap();
        assert_eq!((r.live.len(), r.torn_tails), (1, 1));
        assert!(r.live.contains_key(&a.disk_hash()));
        assert!(!r.corrupt);
    }

    #[test]
    fn a_bad_frame_followed_by_more_data_is_corruption_not_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let a = k("p", "a");
        let tomb = Fact::Tombstone {
            hash: a.disk_hash(),
            seq: 5,
        };
        write_snapshot(dir.path(), 0, &[written(&a, 1), written(&a, 2), tomb]).unwrap();
        let path = dir.path().join("journal.0");
        let clean = std::fs::read(&path).unwrap();
        // Damage the second frame: the tombstone after it would be lost.
        let second = 8 + u32::from_le_bytes(clean[..4].try_into().unwrap()) as usize;
        for at in [second + 3, second + 5, second + 9] {
            let mut bytes = clean.clone();
            bytes[at] ^= 0xff;
            std::fs::write(&path, &bytes).unwrap();
            let r = replay(dir.path()).unwrap();
            assert!(r.corrupt, "damage at byte {at}");
            assert!(r.live.is_empty(), "nothing trusted from a damaged journal");
        }
        // Zeros after a bad frame are what a power loss leaves: a torn tail.
        let mut bytes = clean[..second + 3].to_vec();
        bytes.resize(clean.len() + 100, 0);
        std::fs::write(&path, &bytes).unwrap();
        let r = replay(dir.path()).unwrap();
        assert!(!r.corrupt && r.torn_tails == 1);
    }

    #[test]
    fn a_reopen_keeps_the_replayed_files_and_reserves_past_them() {
        let dir = tempfile::tempdir().unwrap();
        let a = k("p", "a");
        let b = k("p", "b");
        let r = replay(dir.path()).unwrap();
        assert!(!r.needs_compaction(), "nothing to fold");
        let j = Journal::resume(dir.path(), &r, false).unwrap();
        j.append(&[written(&a, 3)], false).unwrap();
        drop(j);
        let r = replay(dir.path()).unwrap();
        assert_eq!(r.live[&a.disk_hash()].seq, 3);
        // The first open reserved a block: nothing below it is handed out again.
        assert_eq!(r.next_seq, 1 + RESERVE_BLOCK + 1);
        assert!(!r.needs_compaction(), "one file");
        let j = Journal::resume(dir.path(), &r, false).unwrap();
        j.append(&[written(&b, r.next_seq)], false).unwrap();
        assert_eq!(
            journal_files(dir.path()).unwrap().len(),
            2,
            "the replayed file stays, the new one is appended to"
        );
        let again = replay(dir.path()).unwrap();
        assert_eq!(again.live[&a.disk_hash()].seq, 3);
        assert_eq!(again.live[&b.disk_hash()].seq, r.next_seq);
        assert_eq!(again.next_seq, r.next_seq + RESERVE_BLOCK + 1);
        assert!(again.needs_compaction(), "two files with facts");
        assert_eq!(again.files_with_facts, 2);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig {
            failure_persistence: None,
            ..proptest::prelude::ProptestConfig::default()
        })]

        /// Damage of any kind (bytes changed, the file cut, garbage appended)
        /// never panics the replay and never yields a version that was not
        /// written: frames are checksummed, and damage in the middle makes
        /// the whole journal untrusted.
        #[test]
        fn a_damaged_journal_never_fabricates_a_version(
            damage in proptest::collection::vec((0usize..1 << 16, 0u8..=255), 0..6),
            cut in proptest::option::of(0usize..1 << 16),
            tail in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64),
        ) {
            let keys: Vec<_> = (0..20).map(|i| k(&format!("p{}", i % 3), &i.to_string())).collect();
            // Kill facts first: a cut or torn tail that loses one loses every
            // `Written` fact after it too (a torn tail may lose kill facts
            // appended after a version, which `fsync` is for).
            let mut facts: Vec<Fact> = keys
                .iter()
                .enumerate()
                .filter(|(i, _)| i % 4 == 0)
                .map(|(i, key)| Fact::Tombstone { hash: key.disk_hash(), seq: i as u64 + 2 })
                .collect();
            for (i, key) in keys.iter().enumerate() {
                facts.push(written(key, i as u64 + 1));
            }
            let dir = tempfile::tempdir().unwrap();
            write_snapshot(dir.path(), 0, &facts).unwrap();
            let path = dir.path().join("journal.0");
            let mut bytes = std::fs::read(&path).unwrap();
            for (at, byte) in damage {
                let at = at % bytes.len();
                bytes[at] = byte;
            }
            if let Some(cut) = cut {
                bytes.truncate(cut % (bytes.len() + 1));
            }
            bytes.extend_from_slice(&tail);
            std::fs::write(&path, &bytes).unwrap();
            let r = replay(dir.path()).unwrap();
            for (key, rec) in &r.live {
                let i = keys.iter().position(|k| k.disk_hash() == *key);
                proptest::prop_assert!(i.is_some(), "fabricated key {:?}", key);
                let i = i.unwrap();
                proptest::prop_assert_eq!(rec.seq, i as u64 + 1);
                proptest::prop_assert!(i % 4 != 0, "a version killed by its tombstone came back");
            }
        }
    }
}
