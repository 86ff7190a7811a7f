//! The versions a replay found live, by key hash, in shards.
//!
//! A snapshot of a large disk names a million versions. Folded one by one
//! into a single table (170 MB of buckets for a million), nearly every
//! insert missed the cache and many touched a fresh page: the fold took
//! 250-290 ms of a 330-380 ms replay. Gathered per shard first (appends,
//! in order), then folded shard by shard into tables small enough to stay
//! in cache, the same facts give the same versions in 120 ms.

use std::collections::hash_map::Entry;
use std::collections::HashMap;

use super::replay::{Identity, Recovered};
use crate::key::KeyHashBuilder;

/// Shards of [`Live`].
const SHARDS: usize = 64;

/// One shard's table.
type Shard = HashMap<u64, Recovered, KeyHashBuilder>;

/// The live versions by key hash: one per hash (foyer keeps one record per
/// hash too).
#[derive(Debug, Default)]
pub(crate) struct Live {
    shards: Vec<Shard>,
}

/// Which shard a key hash belongs to. Key hashes are used as they are by
/// each shard's table (see `KeyHashBuilder`), which takes its bucket from
/// the low bits and its tag from the top seven: the shard is picked from
/// bits in between, so that neither is the same across a shard.
fn shard_of(hash: u64) -> usize {
    (hash >> 32) as usize % SHARDS
}

/// Versions gathered for [`Live`], in the order their facts were read.
pub(super) struct Gathered {
    shards: Vec<Vec<(u64, Recovered)>>,
}

impl Gathered {
    /// Room for about `versions` in all.
    pub(super) fn with_capacity(versions: usize) -> Self {
        // A little over an even share: key hashes spread evenly.
        let each = versions / SHARDS + versions / (SHARDS * 8) + 16;
        Self {
            shards: (0..SHARDS).map(|_| Vec::with_capacity(each)).collect(),
        }
    }

    pub(super) fn push(&mut self, hash: u64, version: Recovered) {
        if let Some(shard) = self.shards.get_mut(shard_of(hash)) {
            shard.push((hash, version));
        }
    }

    /// Folds each shard's versions, in order: for a hash, the version
    /// with the highest sequence number, the later fact winning a tie.
    pub(super) fn fold(self) -> Live {
        let shards = self.shards.into_iter().map(fold_shard).collect();
        Live { shards }
    }
}

fn fold_shard(versions: Vec<(u64, Recovered)>) -> Shard {
    let mut table = Shard::with_capacity_and_hasher(versions.len(), KeyHashBuilder);
    for (hash, mut recovered) in versions {
        match table.entry(hash) {
            Entry::Vacant(slot) => {
                slot.insert(recovered);
            }
            Entry::Occupied(mut slot) => {
                // For the same version, the later fact wins: a version whose
                // copy foyer evicted can be written again, into another pack.
                // (Keys whose hashes collide: the later version wins.)
                let earlier = slot.get_mut();
                if earlier.seq > recovered.seq {
                    continue;
                }
                // A snapshot's `Stored` names the same version without its
                // key: the key stays.
                if earlier.seq == recovered.seq
                    && matches!(earlier.owner, Identity::Key(_))
                    && matches!(recovered.owner, Identity::Prefix(_))
                {
                    std::mem::swap(&mut recovered.owner, &mut earlier.owner);
                }
                *earlier = recovered;
            }
        }
    }
    table
}

impl Live {
    /// The live version of the key whose hash is `hash`.
    pub(crate) fn get(&self, hash: &u64) -> Option<&Recovered> {
        self.shards.get(shard_of(*hash))?.get(hash)
    }

    #[cfg(test)]
    pub(crate) fn contains_key(&self, hash: &u64) -> bool {
        self.get(hash).is_some()
    }

    pub(crate) fn len(&self) -> usize {
        self.shards.iter().map(HashMap::len).sum()
    }

    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.shards.iter().all(HashMap::is_empty)
    }

    /// Every live version with its key hash, shard by shard.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&u64, &Recovered)> {
        self.shards.iter().flatten()
    }

    #[cfg(test)]
    pub(crate) fn keys(&self) -> impl Iterator<Item = &u64> {
        self.iter().map(|(hash, _)| hash)
    }

    pub(crate) fn values(&self) -> impl Iterator<Item = &Recovered> {
        self.iter().map(|(_, version)| version)
    }
}

#[cfg(test)]
impl std::ops::Index<&u64> for Live {
    type Output = Recovered;

    /// Panics if `hash` has no live version (tests).
    fn index(&self, hash: &u64) -> &Recovered {
        self.get(hash)
            .unwrap_or_else(|| panic!("no live version for hash {hash:#x}"))
    }
}

impl IntoIterator for Live {
    type Item = (u64, Recovered);
    type IntoIter = std::iter::Flatten<std::vec::IntoIter<Shard>>;

    fn into_iter(self) -> Self::IntoIter {
        self.shards.into_iter().flatten()
    }
}

impl<'a> IntoIterator for &'a Live {
    type Item = (&'a u64, &'a Recovered);
    type IntoIter = std::iter::Flatten<std::slice::Iter<'a, Shard>>;

    fn into_iter(self) -> Self::IntoIter {
        self.shards.iter().flatten()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::InternalCacheKey;

    /// The fold a single table does, for comparison.
    fn folded_in_one_table(versions: &[(u64, Recovered)]) -> HashMap<u64, Recovered> {
        let mut table: HashMap<u64, Recovered> = HashMap::new();
        for (hash, version) in versions {
            let mut version = version.clone();
            if let Some(earlier) = table.get(hash) {
                if earlier.seq > version.seq {
                    continue;
                }
                if earlier.seq == version.seq
                    && matches!(earlier.owner, Identity::Key(_))
                    && matches!(version.owner, Identity::Prefix(_))
                {
                    version.owner = earlier.owner.clone();
                }
            }
            table.insert(*hash, version);
        }
        table
    }

    #[test]
    fn sharded_folding_gives_what_one_table_gives() {
        // Few distinct hashes, spread over every shard (bits 32 and up
        // vary), so that most are named several times, in any order of
        // sequence numbers, by keyed and unkeyed facts alike.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        // The high bits of a 64-bit LCG: its low bits cycle quickly.
        let mut next = || {
            x = x
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            x >> 33
        };
        let mut versions = Vec::new();
        for _ in 0..20_000 {
            let r = next();
            let hash = (r % 3_000).wrapping_mul(0x0100_0001_0001_0001);
            let owner = if r >> 20 & 1 == 0 {
                Identity::Key(Box::new(InternalCacheKey::new("p", format!("{hash}"), "T")))
            } else {
                Identity::Prefix(Arc::from("p"))
            };
            let seq = next() % 8;
            let len = (next() % 1000) as u32;
            versions.push((hash, Recovered::at(seq, 10, len, 0, None, owner)));
        }
        let mut gathered = Gathered::with_capacity(versions.len());
        for (hash, version) in versions.iter().cloned() {
            gathered.push(hash, version);
        }
        let live = gathered.fold();
        let expected = folded_in_one_table(&versions);
        assert_eq!(live.len(), expected.len());
        for (hash, version) in &expected {
            assert_eq!(live.get(hash), Some(version), "hash {hash:#x}");
        }
        let shards_used = live.shards.iter().filter(|s| !s.is_empty()).count();
        assert_eq!(shards_used, SHARDS, "every shard holds some");
    }
}
