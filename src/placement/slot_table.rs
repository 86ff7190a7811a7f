//! A shard's full slots, keyed by the whole key, in a table that also
//! answers "which key holds version `seq`" from the key's hash alone.
//!
//! Write-behind schedules a version by (hash, sequence number) only: no key
//! clone, no reference to the value, nothing to free when the version dies
//! before it falls due (see `write_behind`). A std `HashMap` can only be
//! searched by key, so the slots live in a `hashbrown::HashTable` with the
//! key's precomputed hash: a lookup by key compares keys exactly (a hash
//! collision never serves another key's slot), and a lookup by version
//! compares the sequence number, which is unique across keys.

use hashbrown::hash_table::Entry;
use hashbrown::HashTable;

use super::{Place, Slot};
use crate::InternalCacheKey;

#[derive(Default)]
pub(crate) struct SlotTable {
    slots: HashTable<(InternalCacheKey, Slot)>,
}

fn hash_of(entry: &(InternalCacheKey, Slot)) -> u64 {
    entry.0.disk_hash()
}

impl SlotTable {
    pub(crate) fn len(&self) -> usize {
        self.slots.len()
    }

    pub(crate) fn contains_key(&self, key: &InternalCacheKey) -> bool {
        self.get(key).is_some()
    }

    pub(crate) fn get(&self, key: &InternalCacheKey) -> Option<&Slot> {
        self.slots
            .find(key.disk_hash(), |(k, _)| k == key)
            .map(|(_, s)| s)
    }

    pub(crate) fn get_mut(&mut self, key: &InternalCacheKey) -> Option<&mut Slot> {
        self.slots
            .find_mut(key.disk_hash(), |(k, _)| k == key)
            .map(|(_, s)| s)
    }

    /// The key whose slot holds version `seq`, among the keys with `hash`.
    pub(crate) fn find_version(&self, hash: u64, seq: u64) -> Option<(&InternalCacheKey, &Slot)> {
        self.slots
            .find(hash, |(k, s)| s.seq == seq && k.disk_hash() == hash)
            .map(|(k, s)| (k, s))
    }

    /// Inserts or replaces `key`'s slot; returns the one replaced.
    pub(crate) fn insert(&mut self, key: InternalCacheKey, slot: Slot) -> Option<Slot> {
        match self
            .slots
            .entry(key.disk_hash(), |(k, _)| *k == key, hash_of)
        {
            Entry::Occupied(mut held) => Some(std::mem::replace(&mut held.get_mut().1, slot)),
            Entry::Vacant(room) => {
                room.insert((key, slot));
                None
            }
        }
    }

    /// Takes out a disk-only slot among the keys with `hash` that `fits`
    /// accepts, if any.
    pub(crate) fn remove_disk_only(
        &mut self,
        hash: u64,
        fits: impl Fn(&InternalCacheKey, &Slot) -> bool,
    ) -> Option<(InternalCacheKey, Slot)> {
        let held = self
            .slots
            .find_entry(hash, |(k, s)| {
                matches!(s.place, Place::Disk) && k.disk_hash() == hash && fits(k, s)
            })
            .ok()?;
        Some(held.remove().0)
    }

    pub(crate) fn remove(&mut self, key: &InternalCacheKey) -> Option<Slot> {
        let held = self
            .slots
            .find_entry(key.disk_hash(), |(k, _)| k == key)
            .ok()?;
        Some(held.remove().0 .1)
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (&InternalCacheKey, &Slot)> {
        self.slots.iter().map(|(k, s)| (k, s))
    }

    pub(crate) fn keys(&self) -> impl Iterator<Item = &InternalCacheKey> {
        self.slots.iter().map(|(k, _)| k)
    }

    pub(crate) fn retain(&mut self, mut keep: impl FnMut(&InternalCacheKey, &mut Slot) -> bool) {
        self.slots.retain(|(k, s)| keep(k, s));
    }

    pub(crate) fn drain(&mut self) -> impl Iterator<Item = (InternalCacheKey, Slot)> + '_ {
        self.slots.drain()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(seq: u64) -> Slot {
        Slot {
            seq,
            place: Place::Memory { on_disk: false },
            size: 1,
            record_len: 0,
            expires_at: 0,
            pack: None,
        }
    }

    #[test]
    fn keys_with_one_hash_stay_apart_by_key_and_by_version() {
        let a = InternalCacheKey::new("p", "a", "T").with_hash(7);
        let b = InternalCacheKey::new("p", "b", "T").with_hash(7);
        let mut table = SlotTable::default();
        assert!(table.insert(a.clone(), slot(1)).is_none());
        assert!(table.insert(b.clone(), slot(2)).is_none());
        assert_eq!(table.get(&a).map(|s| s.seq), Some(1));
        assert_eq!(table.get(&b).map(|s| s.seq), Some(2));
        assert_eq!(table.find_version(7, 2).map(|(k, _)| k.key()), Some("b"));
        assert_eq!(table.find_version(7, 1).map(|(k, _)| k.key()), Some("a"));
        assert!(table.find_version(7, 3).is_none(), "no such version");
        assert!(table.find_version(8, 1).is_none(), "another hash");

        assert_eq!(table.insert(a.clone(), slot(3)).map(|s| s.seq), Some(1));
        assert!(table.find_version(7, 1).is_none(), "replaced version");
        assert_eq!(table.remove(&b).map(|s| s.seq), Some(2));
        assert!(!table.contains_key(&b));
        assert_eq!(table.len(), 1);
        assert_eq!(table.keys().map(|k| k.key()).collect::<Vec<_>>(), ["a"]);
    }
}
