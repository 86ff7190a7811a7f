//! Replay: what the journal files of a directory say is on disk.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::fact::{read_facts, Ending, Fact};
use super::live::{Gathered, Live};
use super::FILE_PREFIX;
use crate::key::KeyHashBuilder;
use crate::packing::PackRef;
use crate::{Error, InternalCacheKey, Result};

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
    pub(super) fn at(
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
    pub live: Live,
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

/// The journal files in `dir`, with their generation numbers.
pub(super) fn journal_files(dir: &Path) -> Result<Vec<(u64, PathBuf)>> {
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
    let mut residents = 0usize;
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
            // In the fold below, in order with `Persisted` facts.
            Fact::Resident { .. } => residents += 1,
            Fact::Written { seq, .. } | Fact::WrittenUntil { seq, .. } => {
                max_seq = max_seq.max(*seq);
                versions += 1;
            }
            // Pack ids are sequence numbers too.
            Fact::WrittenPacked(v) => {
                max_seq = max_seq.max(v.seq).max(v.pack);
                versions += 1;
            }
            Fact::Persisted(v) => {
                max_seq = max_seq.max(v.seq).max(v.pack);
                versions += 1;
                residents += 1;
            }
            Fact::Stored { seq, pack, .. } => {
                max_seq = max_seq.max(*seq).max(*pack);
                versions += 1;
            }
            Fact::Clock { at } => replay.clock = replay.clock.max(*at),
        }
    }
    // Sized once: grown step by step, a million versions were copied
    // about twenty times over.
    let mut gathered = Gathered::with_capacity(versions);
    // (hash, seq) of the versions recorded as resident, in order.
    let mut resident = Vec::with_capacity(residents);
    for fact in facts {
        if let Fact::Resident { hash, seq } = fact {
            resident.push((hash, seq));
            continue;
        }
        let persisted = matches!(fact, Fact::Persisted(_));
        let Some((hash, recovered)) = fact.into_written() else {
            continue;
        };
        if persisted {
            resident.push((hash, recovered.seq));
        }
        let seq = recovered.seq;
        let prefix = recovered.owner.prefix();
        let dead = seq <= cleared
            || tombstones.get(&hash).is_some_and(|t| seq < *t)
            || invalidated
                .iter()
                .any(|(p, s)| seq < *s && prefix.starts_with(p.as_str()));
        if !dead {
            gathered.push(hash, recovered);
        }
    }
    replay.live = gathered.fold();
    let mut seen: HashSet<u64, KeyHashBuilder> =
        HashSet::with_capacity_and_hasher(resident.len(), KeyHashBuilder);
    replay.resident.reserve(resident.len());
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
