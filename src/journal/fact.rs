//! The facts a journal holds, and their framing on disk (length, CRC,
//! payload).

use std::fs::File;
use std::io::Read;
use std::path::Path;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use super::key_text::{KeyText, TypeName};
use super::replay::{Identity, Recovered};
use super::MAX_FRAME;
use crate::packing::PackRef;
use crate::shared_prefix::SharedPrefix;
use crate::{Error, InternalCacheKey, Result};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) enum Fact {
    Written {
        prefix: SharedPrefix,
        key: KeyText,
        type_name: TypeName,
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
        prefix: SharedPrefix,
        key: KeyText,
        type_name: TypeName,
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
    WrittenPacked(KeyedVersion),
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
    /// A keyed version on disk whose entry is resident in memory too:
    /// `WrittenPacked` and `Resident` in one fact (`pack` 0: not packed;
    /// `expires_at` 0: no deadline). A snapshot names every resident entry
    /// this way, and write-behind each entry it persists: one frame to
    /// read back instead of two, on every reopen of a warm cache. (A
    /// spillway from before this variant cannot read it: its replay finds
    /// the journal damaged and starts the disk tier empty, never stale.)
    Persisted(KeyedVersion),
}

/// A version with its key, where it is and until when, as `WrittenPacked`
/// and `Persisted` carry it. On the wire a variant holding this struct is
/// the same bytes as a variant with these fields: `WrittenPacked` was one,
/// and journals written then read the same.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct KeyedVersion {
    pub(super) prefix: SharedPrefix,
    pub(super) key: KeyText,
    pub(super) type_name: TypeName,
    pub(super) seq: u64,
    pub(super) size: u64,
    pub(super) len: u32,
    pub(super) expires_at: u64,
    /// Pack ids start at 1: 0 is "not packed" (`Persisted` only).
    pub(super) pack: u64,
    pub(super) offset: u16,
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
        // The key's own text, shared rather than copied.
        let (prefix, key, type_name) = (
            SharedPrefix::from_arc(key.shared_prefix().clone()),
            KeyText(key.shared_key().clone()),
            TypeName(key.type_name()),
        );
        if let Some(pack) = pack {
            Fact::WrittenPacked(KeyedVersion {
                prefix,
                key,
                type_name,
                seq,
                size,
                len,
                expires_at,
                pack: pack.id,
                offset: pack.offset,
            })
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
    /// `Persisted`: `key`'s version in `slot`, on disk and resident in
    /// memory too.
    pub(crate) fn persisted(key: &InternalCacheKey, slot: &crate::placement::Slot) -> Self {
        let pack = slot.pack.unwrap_or(PackRef { id: 0, offset: 0 });
        Fact::Persisted(KeyedVersion {
            prefix: SharedPrefix::from_arc(key.shared_prefix().clone()),
            key: KeyText(key.shared_key().clone()),
            type_name: TypeName(key.type_name()),
            seq: slot.seq,
            size: slot.size,
            len: slot.record_len,
            expires_at: slot.expires_at,
            pack: pack.id,
            offset: pack.offset,
        })
    }

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

    /// The version a `Written`, `WrittenUntil`, `WrittenPacked`,
    /// `Persisted` or `Stored` fact records, by key hash (the reverse of
    /// [`Fact::written`], [`Fact::persisted`] and [`Fact::stored`]); `None`
    /// for other facts.
    pub(super) fn into_written(self) -> Option<(u64, Recovered)> {
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
            Fact::WrittenPacked(v) | Fact::Persisted(v) => {
                let at = (v.pack != 0).then_some(PackRef {
                    id: v.pack,
                    offset: v.offset,
                });
                let place = (v.seq, v.size, v.len, v.expires_at, at);
                (v.prefix, v.key, v.type_name, place)
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
        let key = InternalCacheKey::new(prefix.into_arc(), key.0, type_name.0);
        let hash = key.disk_hash();
        let owner = Identity::Key(Box::new(key));
        Some((hash, Recovered::at(seq, size, len, expires_at, pack, owner)))
    }
}

/// Type names are `&'static str` in keys; names read back from disk are
/// interned once each (there are few of them) to get one.
pub(super) fn intern(name: &str) -> &'static str {
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
pub(super) fn frame_into(fact: &Fact, out: &mut Vec<u8>) {
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
pub(super) enum Ending {
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
pub(super) fn read_facts(path: &Path, facts: &mut Vec<Fact>) -> Result<Ending> {
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
