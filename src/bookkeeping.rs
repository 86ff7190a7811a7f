//! Bookkeeping bounded by what the disk holds: sweeps drop the slots of
//! records foyer has evicted, and compaction rewrites the journal as a
//! snapshot of the live state, so RAM and journal size follow the disk tier,
//! not every key that ever passed through it.

use std::sync::atomic::Ordering;

use crate::journal::Fact;
use crate::placement::{Named, Place};
use crate::spill::Spiller;
use crate::InternalCacheKey;

/// The journal is compacted once this much has been appended since the last
/// snapshot (and the appended part outweighs the live state): journal size
/// stays proportional to what the disk holds, not to what passed through it.
const COMPACT_AFTER_BYTES: u64 = 64 << 10;

impl Spiller {
    /// Appends facts; a failure is logged and counted, never fatal.
    pub(crate) fn journal_append(&self, facts: &[Fact], durable: bool) {
        if facts.is_empty() {
            return;
        }
        // The clock rides along at most once a second, so that a restart
        // knows how far time had got (see `expiry`).
        let with_clock;
        let facts = match self.clock_fact(false) {
            Some(clock) => {
                with_clock = [facts, &[clock]].concat();
                &with_clock[..]
            }
            None => facts,
        };
        if let Err(e) = self.journal.append(facts, durable) {
            tracing::error!(error = %e, "journal append failed; this change may not survive a restart");
            self.stats.journal_errors.incr();
        }
    }

    /// A `Clock` fact for now, if one is due: at most once a second, or,
    /// with `observed_expiry`, whenever time has moved since the last one
    /// (an entry was just found expired: after a restart with the clock
    /// set back, it must still be).
    fn clock_fact(&self, observed_expiry: bool) -> Option<Fact> {
        let now = self.clock.now_ms();
        let last = self.clock_recorded.load(Ordering::Relaxed);
        let due = if observed_expiry {
            now > last
        } else {
            now >= last.saturating_add(1000)
        };
        (due && self
            .clock_recorded
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok())
        .then_some(Fact::Clock { at: now })
    }

    /// Journals the clock (see `clock_fact`). The maintenance task calls
    /// this every tick, so an idle cache still records time passing.
    pub(crate) fn record_clock(&self, observed_expiry: bool) {
        if let Some(fact) = self.clock_fact(observed_expiry) {
            // `journal_append` adds no second one: the clock was just noted.
            self.journal_append(&[fact], false);
        }
    }

    /// Drops the slots of records foyer has evicted (or lost), and marks
    /// resident entries whose disk copy is gone as not on disk. Keeps the
    /// placements, and with them the journal's snapshots, bounded by what
    /// the disk holds. Runs once the disk has taken about a quarter of its
    /// capacity in new records since the last sweep, so its O(entries) cost
    /// is spread over at least that many writes.
    pub(crate) fn sweep_if_due(&self) {
        let due = (self.disk.capacity() as u64 / 4).max(1);
        // Taken in one step: the spill worker and the maintenance tick both
        // call this, and only one of them should sweep for the same writes.
        if self.written_since_sweep.load(Ordering::Relaxed) >= due
            && self.written_since_sweep.swap(0, Ordering::Relaxed) >= due
        {
            self.sweep();
        }
    }

    /// `sweep_if_due`, now. Each dropped version gets a tombstone: its
    /// `Written` fact stays in the journal until the next compaction, and
    /// foyer's recovery may find the record on the device again, so without
    /// one a restart could bring that version back after a newer one was
    /// inserted.
    ///
    /// Returns how many records it found gone (resident entries excluded).
    pub(crate) fn sweep(&self) -> u64 {
        let mut tombstones = Vec::new();
        let mut lost_copies = Vec::new();
        let disk = &self.disk;
        let mut expired = 0;
        self.placements.retain(|hash, key, slot| {
            if matches!(slot.place, Place::Disk) && self.clock.expired(slot.expires_at) {
                // Its `Written` fact carries the deadline: no tombstone needed.
                self.delete_record(hash, slot.pack);
                expired += 1;
                return false;
            }
            let readable = slot.place.readable_on_disk();
            if !readable || disk.contains(slot.record_key(hash)) {
                return true;
            }
            match slot.place {
                Place::Memory { .. } => {
                    // Resident: its eviction, write-behind or `close` writes
                    // this same version again, so no tombstone may cover
                    // it. `record_len` stays set: a replacing insert then
                    // journals the tombstone that keeps this version dead.
                    slot.place = Place::Memory { on_disk: false };
                    // A resident slot always has its key.
                    lost_copies.extend(key.cloned());
                    true
                }
                _ => {
                    tombstones.push(Fact::Tombstone {
                        hash,
                        seq: slot.seq + 1,
                    });
                    false
                }
            }
        });
        self.journal_append(&tombstones, false);
        self.stats.disk_expired.add(expired);
        if expired > 0 {
            self.record_clock(true);
        }
        self.lost_copies.lock().extend(lost_copies);
        tombstones.len() as u64
    }

    /// The resident keys whose disk copy was lost since the last call.
    pub(crate) fn take_lost_copies(&self) -> Vec<InternalCacheKey> {
        std::mem::take(&mut *self.lost_copies.lock())
    }

    /// The facts describing the current state: every version on disk, and
    /// which of them are resident in memory too.
    pub(crate) fn snapshot_facts(&self) -> Vec<Fact> {
        let mut facts = vec![Fact::Clock {
            at: self.clock.now_ms(),
        }];
        self.placements.for_each_named(|hash, named, slot| {
            let key = match named {
                Named::Key(key) => key,
                // Disk-only, kept without its key: the key is in the
                // record's envelope; replay needs the hash, the prefix (for
                // later invalidations) and where the record is.
                Named::Prefix(prefix) => {
                    facts.push(Fact::stored(hash, prefix, slot));
                    return;
                }
            };
            match slot.place {
                // On disk and resident: one fact says both.
                Place::Memory { on_disk: true } => facts.push(Fact::persisted(key, slot)),
                _ if slot.place.readable_on_disk() => facts.push(Fact::written(
                    key,
                    slot.seq,
                    slot.size,
                    slot.record_len,
                    slot.expires_at,
                    slot.pack,
                )),
                _ => {}
            }
        });
        facts
    }

    /// Rewrites the journal as a snapshot of the current state. Appends go
    /// to a fresh file from the rotation on, so nothing is lost meanwhile.
    pub(crate) async fn compact(&self) {
        // A dropped cache's directory may be another cache's already: its
        // sweep must not touch the device either.
        if self.journal.is_detached() {
            return;
        }
        self.sweep();
        let _admin = self.admin.lock().await;
        let _gate = self.facts_gate.write();
        let rotated = match self.journal.rotate() {
            Ok(Some(r)) => r,
            // The cache was dropped: nothing to compact.
            Ok(None) => return,
            Err(e) => {
                tracing::error!(error = %e, "journal rotation failed");
                self.stats.journal_errors.incr();
                return;
            }
        };
        let facts = self.snapshot_facts();
        if let Err(e) = self.journal.install_snapshot(rotated, facts) {
            tracing::error!(error = %e, "journal snapshot failed; the older files stay and remain correct");
            self.stats.journal_errors.incr();
        }
    }

    /// Compacts once the appended part outweighs the live state.
    pub(crate) async fn compact_if_due(&self) {
        if self.journal.appended_bytes()
            > COMPACT_AFTER_BYTES.max(self.placements.len() as u64 * 128)
        {
            self.compact().await;
        }
    }
}
