//! What a batch of written records changes once foyer has them: the
//! placement table (queued versions become disk versions), the journal's
//! facts, the queue's accounting, and the stats.

use super::*;

impl Spiller {
    /// Settles a batch the worker handed to foyer and waited for. A record
    /// foyer holds makes its version a disk version (or, written behind, a
    /// resident one also on disk) and is journaled; one foyer dropped is
    /// counted lost and its slot removed (or, written behind, left to
    /// spill again). The batch's outcome feeds the disk's health.
    pub(super) fn confirm(&self, batch: Vec<(SpillItem, usize)>) {
        let span = tracing::debug_span!("spillway.spill_batch", records = batch.len());
        let _entered = span.enter();
        let gate = self.facts_gate.read();
        let (mut written_n, mut lost_n) = (0, 0);
        let n = batch.len() as u64;
        let mut facts = Vec::with_capacity(batch.len());
        let mut last_pack = None;
        for (item, len) in batch {
            let written = self
                .disk
                .contains(item.pack.map_or(item.hash, PackRef::record_key));
            if written && item.pack.is_some() && item.pack.map(|p| p.id) != last_pack {
                // A pack's members are contiguous in its batch.
                last_pack = item.pack.map(|p| p.id);
                self.stats.packs_written.incr();
            }
            let mut shard = self.placements.lock(item.hash);
            // Gone or changed: superseded, counted when its slot left the queue.
            let Some(slot) = shard.current(&item.key, item.seq) else {
                continue;
            };
            let persisted = matches!(slot.place, Place::Persisting);
            match &slot.place {
                Place::Writing(_) | Place::Persisting => {
                    let end = if written {
                        SpillEnd::Written
                    } else {
                        SpillEnd::Lost(NotWrittenReason::DiskDropped)
                    };
                    self.release_queued(&item.key, &slot.place, end);
                    if written {
                        written_n += 1;
                        slot.record_len = u32::try_from(len).unwrap_or(u32::MAX);
                        // A version only on disk needs no key in the
                        // journal (its record names it); one also resident
                        // does, for the warm-up after a restart.
                        facts.push(if persisted {
                            Fact::persisted(&item.key, slot)
                        } else {
                            Fact::stored(item.hash, item.key.prefix(), slot)
                        });
                        if slot.pack.is_some() {
                            self.stats.packed_written.incr();
                        }
                        slot.place = if persisted {
                            Place::Memory { on_disk: true }
                        } else {
                            Place::Disk
                        };
                        if persisted {
                            self.stats.persisted.incr();
                            self.stats.persisted_bytes.add(len as u64);
                        } else {
                            self.stats.spills_written.incr();
                            self.stats.spill_bytes.add(len as u64);
                            self.stats.spill_logical_bytes.add(item.logical_len as u64);
                        }
                        // A packed member takes its own bytes of a shared page.
                        let took = if slot.pack.is_some() {
                            len
                        } else {
                            DiskTier::footprint(len)
                        };
                        self.written_since_sweep
                            .fetch_add(took as u64, Ordering::Relaxed);
                    } else {
                        lost_n += 1;
                        slot.pack = None;
                        if persisted {
                            // Still in memory: its eviction spills it again.
                            slot.place = Place::Memory { on_disk: false };
                        } else {
                            shard.remove(&item.key);
                        }
                    }
                }
                // Promoted back while being written: counted when it left the queue.
                _ => {}
            }
        }
        // Appended after the slot locks are released: the journal's facts are
        // order-independent, so a replace or invalidation that slipped in
        // between (and journaled its kill fact first) still wins on replay.
        self.journal_append(&facts, false);
        drop(gate);
        // Here as well as on the maintenance tick: a burst can write the
        // whole disk between two ticks, and the slots of what it evicted
        // would stay counted (`approx_num_entries`, snapshots) until the
        // next one. Before `finished`, so a `flush` sees it done.
        self.sweep_if_due();
        self.finished(n);
        tracing::debug!(written = written_n, lost = lost_n, "spill batch confirmed");
        self.health.batch(written_n, lost_n);
    }
}
