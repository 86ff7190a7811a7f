//! A reopen's placement table, rebuilt in two steps.
//!
//! First from the replayed journal alone, on the thread that replayed it,
//! while foyer rebuilds its own index from the block files (see `builder`):
//! the two read different files, so the table costs a reopen only what it
//! takes beyond foyer's recovery. Then, once foyer's index is there, cut
//! down to the records foyer still holds: the journal may name some that a
//! block reclaim evicted since.

use std::collections::HashMap;

use super::{Place, Placements, Slot};
use crate::disk::DiskTier;
use crate::expiry::ExpiryClock;
use crate::journal::{Identity, Live};
use crate::key::KeyHashBuilder;
use crate::packing::PackRef;

/// Shards of a cache's placement table.
const SHARDS: usize = 64;

/// The table as the journal alone says, before foyer's index is consulted.
pub(crate) struct FromJournal {
    placements: Placements,
    /// Versions past their deadline at the replay: kept out of the table,
    /// and their records deleted if foyer still holds them.
    expired: Vec<(u64, Option<PackRef>)>,
}

/// What a reopen recovered, for `stats().recovery`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Recovery {
    pub entries: u64,
    pub bytes: u64,
    /// Versions foyer still held that were past their deadline.
    pub expired: u64,
}

impl FromJournal {
    /// Builds the table from the replay's live versions (consumed: their
    /// keys move into the table or are dropped here, off the open's path).
    /// Every version is disk-only now; it is kept in the compact form
    /// (hash and prefix) where it fits, like any disk-only slot.
    pub(crate) fn build(live: Live, clock: &ExpiryClock) -> Self {
        let placements = Placements::new(SHARDS);
        let mut expired = Vec::new();
        let mut cold = placements.cold_loader(live.len());
        let mut full = Vec::new();
        for (hash, r) in live {
            if clock.expired(r.expires_at) {
                expired.push((hash, r.pack));
                continue;
            }
            let slot = Slot {
                seq: r.seq,
                place: Place::Disk,
                size: r.size,
                record_len: r.len,
                expires_at: r.expires_at,
                pack: r.pack,
            };
            match r.owner {
                Identity::Key(key) => {
                    if !cold.add(hash, key.shared_prefix(), &slot) {
                        full.push((*key, slot));
                    }
                }
                // Written by a snapshot from a compact slot: it fits again,
                // unless the prefixes ran out of ids.
                Identity::Prefix(prefix) => {
                    cold.add(hash, &prefix, &slot);
                }
            }
        }
        cold.finish();
        // Those that do not fit the compact form keep their key.
        for (key, slot) in full {
            let hash = key.disk_hash();
            placements.lock(hash).insert(key, slot);
        }
        Self {
            placements,
            expired,
        }
    }

    /// Keeps the slots of records foyer holds (asked once per pack, not
    /// per member) and deletes the records of expired versions; the table
    /// and what it recovered. Deadlines are checked again here: foyer's
    /// recovery may have taken long enough for some to pass since `build`.
    pub(crate) fn settle(self, disk: &DiskTier, clock: &ExpiryClock) -> (Placements, Recovery) {
        let mut packs_held: HashMap<u64, bool, KeyHashBuilder> = HashMap::default();
        let mut held = |record: u64, packed: bool| {
            if packed {
                *packs_held
                    .entry(record)
                    .or_insert_with(|| disk.contains(record))
            } else {
                disk.contains(record)
            }
        };
        let (mut entries, mut bytes, mut expired) = (0, 0, 0);
        // Dead by its deadline, if foyer holds it: the next snapshot leaves
        // it out (a packed one stays in its pack, never named again).
        let mut expire = |hash: u64, pack: Option<PackRef>| {
            if pack.is_none() {
                disk.delete(hash);
            }
            expired += 1;
        };
        for (hash, pack) in self.expired {
            if held(pack.map_or(hash, PackRef::record_key), pack.is_some()) {
                expire(hash, pack);
            }
        }
        self.placements.retain(|hash, _, slot| {
            if !held(slot.record_key(hash), slot.pack.is_some()) {
                return false;
            }
            if clock.expired(slot.expires_at) {
                expire(hash, slot.pack);
                return false;
            }
            entries += 1;
            bytes += u64::from(slot.record_len);
            true
        });
        let recovery = Recovery {
            entries,
            bytes,
            expired,
        };
        (self.placements, recovery)
    }
}
