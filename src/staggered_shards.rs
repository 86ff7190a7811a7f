//! Which shard of the placement table a key's hash goes to, with shards of
//! staggered sizes so that the table's RAM grows smoothly.
//!
//! Each shard is a hash table that doubles when it is 7/8 full, so its
//! buckets per entry swing between about 1.14 and 2.29. With shards of
//! equal share, every shard doubles at the same moment: the whole index
//! costs twice as much just after the point where every shard's table is
//! 7/8 full as just before it, and RAM per disk-resident entry depends on
//! where the entry count happens to fall. Here shard `i` of `n` takes a
//! share of the hash space proportional to `2^(i/n)`: the shares span one
//! octave, so the shards reach their doubling points one after another,
//! spread evenly over every doubling of the table, and the whole table
//! keeps about 1.65 buckets per entry at every size (the mean of the
//! swing, without the swing).
//!
//! The cost: the largest shard takes twice the traffic of the smallest,
//! 2.2% of all lookups with 64 shards instead of 1.6%.

/// The lowest of the 32 hash bits a shard is picked from (see `pick`).
const SHARD_BITS_FROM: u32 = 25;

/// Maps a key's hash to one of `n` shards of staggered shares.
pub(crate) struct StaggeredShards {
    /// `bounds[i]`: the first value of the hash's window (see `pick`) that
    /// goes to shard `i + 1`.
    bounds: Box<[u32]>,
}

impl StaggeredShards {
    /// `n` shards (at least one).
    pub(crate) fn new(n: usize) -> Self {
        let n = n.max(1);
        // Shard i takes [2^(i/n) - 1, 2^((i+1)/n) - 1) of [0, 1).
        let bounds = (1..n)
            .map(|i| ((2f64.powf(i as f64 / n as f64) - 1.0) * 2f64.powi(32)) as u32)
            .collect();
        Self { bounds }
    }

    /// The shard of `hash`, from bits 25 to 56. The tables inside a shard
    /// hash with the same value (see `KeyHashBuilder`) and use the rest:
    /// the low bits pick a bucket (up to 2^25 buckets per shard), and the
    /// top 7 are each bucket's tag, which a probe compares before the key.
    /// A shard's share is a contiguous range of these bits, so taking it
    /// from the top would leave each shard's keys 2 to 4 tags of 128, and
    /// nearly every probe would compare keys.
    pub(crate) fn pick(&self, hash: u64) -> usize {
        let window = (hash >> SHARD_BITS_FROM) as u32;
        self.bounds.partition_point(|&b| b <= window)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_hash_has_a_shard_and_shares_span_one_octave() {
        let shards = StaggeredShards::new(64);
        let mut counts = [0u64; 64];
        // Evenly spread windows.
        let samples = 1u64 << 20;
        for i in 0..samples {
            let hash = (i << (SHARD_BITS_FROM + 12)) | 0xFFFF;
            counts[shards.pick(hash)] += 1;
        }
        assert_eq!(shards.pick(u64::MAX), 63);
        assert_eq!(shards.pick(0), 0);
        let (first, last) = (counts[0] as f64, counts[63] as f64);
        assert!(counts.iter().all(|&c| c > 0));
        assert!(counts.windows(2).all(|w| w[0] <= w[1] + 1), "{counts:?}");
        let ratio = last / first;
        assert!((1.9..2.0).contains(&ratio), "{ratio}: {counts:?}");
    }

    #[test]
    fn each_shard_keeps_the_tags_its_tables_probe_with() {
        // hashbrown tags each bucket with the hash's top 7 bits and compares
        // a probe's tag before its key: every shard must see all 128.
        let shards = StaggeredShards::new(64);
        let mut tags = vec![std::collections::HashSet::new(); 64];
        for i in 0..200_000u64 {
            let mut h = i.wrapping_mul(0x9E37_79B9_7F4A_7C15);
            h = (h ^ (h >> 31)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            h ^= h >> 29;
            tags[shards.pick(h)].insert(h >> 57);
        }
        for (shard, seen) in tags.iter().enumerate() {
            assert_eq!(seen.len(), 128, "shard {shard}");
        }
    }

    #[test]
    fn one_shard_takes_everything() {
        let shards = StaggeredShards::new(1);
        assert_eq!((shards.pick(0), shards.pick(u64::MAX)), (0, 0));
        let none = StaggeredShards::new(0);
        assert_eq!(none.pick(12345), 0);
    }
}
