//! The shared tier in the two-tier composition: remote reads promoted into
//! the local tiers, and other processes' notices applied to them.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};

use bytes::Bytes;

use super::{Inner, TwoTierCacheBackend};
use crate::envelope;
use crate::placement::{Place, Resident, Slot};
use crate::remote::LocalTiers;
use crate::spill::queue_weight;
use crate::{CacheEntry, Codec, CodecError, InternalCacheKey};

impl TwoTierCacheBackend {
    /// Marks the start of a change that could make a remote read in
    /// flight stale (a removal, an invalidation, a clear, a notice): such a
    /// read is then served but not kept (see `read_remote`).
    pub(super) fn remote_changes_begin(&self) {
        self.inner.remote_changes.fetch_add(1, Ordering::SeqCst);
    }

    /// The shared tier's version of `key`, verified and decoded, kept in
    /// the local tiers unless something changed while it was read.
    pub(super) async fn read_remote(
        &self,
        key: &InternalCacheKey,
        codec: Option<Arc<dyn Codec>>,
    ) -> Option<CacheEntry> {
        let remote = &self.inner.spiller.remote;
        if !remote.is_on() {
            return None;
        }
        let codec = self.codec_for(key, codec)?;
        let changes = self.inner.remote_changes.load(Ordering::SeqCst);
        // A local version that the lower tiers could not serve just now
        // (moka is evicting it) is at least as new as the server's.
        if self
            .inner
            .spiller
            .placements
            .lock(key.disk_hash())
            .get(key)
            .is_some()
        {
            return None;
        }
        let (stamp, record) = remote.read(key).await?;
        let Some(res) = decode(key, &record, codec, stamp) else {
            remote.refused();
            return None;
        };
        if self.inner.spiller.clock.expired(res.expires_at) {
            return None;
        }
        remote.hit(stamp);
        let entry = res.entry.clone();
        self.admit_remote(key, res, changes).await;
        Some(entry)
    }

    /// Keeps a remote hit in memory as a new local version, unless the key
    /// has a local version by now or a change began since the read did.
    /// Like a promotion it does not wait for room in the spill queue.
    async fn admit_remote(&self, key: &InternalCacheKey, mut res: Resident, changes: u64) {
        let Some(room) = self.try_reserve(queue_weight(key, res.size)).await else {
            self.stats_ref().promotions_deferred.incr();
            return;
        };
        let inner = &self.inner;
        let hash = key.disk_hash();
        let admitted_seq = {
            let _key = inner.key_locks.lock(hash).await;
            let admitted = !inner.memory.contains_key(key) && {
                let mut shard = inner.spiller.placements.lock(hash);
                // Checked under the shard lock: an invalidation that began
                // after this check scans this shard after the slot below is
                // in, and removes it.
                if shard.get(key).is_some()
                    || inner.remote_changes.load(Ordering::SeqCst) != changes
                    || inner.peer_fences.newer_than(hash, res.stamp)
                {
                    false
                } else {
                    res.seq = self.next_seq();
                    shard.insert(
                        key.clone(),
                        Slot {
                            seq: res.seq,
                            place: Place::Memory { on_disk: false },
                            size: res.size as u64,
                            record_len: 0,
                            expires_at: res.expires_at,
                            pack: None,
                        },
                    );
                    self.stats_ref().promotions.incr();
                    true
                }
            };
            let (seq, spillable) = (res.seq, res.codec.is_some());
            if admitted {
                inner.memory.insert(key.clone(), Arc::new(res));
                // A new local version in memory only, like an insert's: written
                // behind too, so a crash or a drop does not come back without it.
                if spillable {
                    inner.write_behind.schedule(hash, seq);
                }
            }
            admitted.then_some(seq)
        };
        // As for a promotion: a clear may have drained the slot before the
        // insert landed (see `promote`).
        if let Some(seq) = admitted_seq {
            self.drop_if_orphan(key, seq).await;
        }
        drop(room);
        self.maintain_if_due().await;
    }

    /// Lets the remote tier catch up with the server once (bounded) before
    /// `build` returns.
    pub(crate) async fn wait_remote_ready(&self) {
        self.inner.spiller.remote.wait_ready().await;
    }

    /// Returns once every write and invalidation queued for the shared
    /// tier so far has been sent (stored, refused by the server, or failed
    /// within `remote.timeout`), and other processes have been notified.
    /// Without a remote tier, returns at once.
    ///
    /// ```
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let cache = spillway::TwoTierCacheBackend::builder().disk_dir(dir.path()).disk_capacity(64 << 20).build().await.unwrap();
    /// cache.sync_remote().await;
    /// assert!(!cache.stats().remote.enabled);
    /// # });
    /// ```
    pub async fn sync_remote(&self) {
        self.inner.spiller.remote.flush().await;
    }
}

/// Opens a sealed record from the shared tier: the same checks as a disk
/// record (checksum, key, codec); the stamp replaces the sequence number.
fn decode(
    key: &InternalCacheKey,
    record: &Bytes,
    codec: Arc<dyn Codec>,
    stamp: u64,
) -> Option<Resident> {
    let record = envelope::open(record).ok()?;
    if !record.is_for(key) {
        return None;
    }
    let decoded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        codec.decode(record.type_version, &record.payload)
    }))
    .unwrap_or_else(|_| Err(CodecError::Failed("the codec panicked".into())));
    let entry = decoded.ok()?;
    Some(Resident {
        entry,
        size: record.size_bytes as usize,
        seq: 0,
        codec: Some(codec),
        expires_at: record.expires_at,
        stamp,
        // Not a new version: never sent back to the server.
        fetched: true,
    })
}

/// Other processes' replacements seen lately, by key hash: a remote read
/// in flight when one arrives must not keep the version it replaced. A
/// read is bounded by `remote.timeout`, so entries older than `KEEP` are
/// forgotten (pruned as the table grows). Keys whose hashes collide share
/// an entry: a read is then refused too, a miss.
#[derive(Default)]
pub(super) struct PeerFences(
    parking_lot::Mutex<std::collections::HashMap<u64, (u64, std::time::Instant)>>,
);

impl PeerFences {
    /// Far longer than any remote read may take.
    const KEEP: std::time::Duration = std::time::Duration::from_secs(30);
    /// Entries kept before pruning.
    const PRUNE_AT: usize = 4096;

    fn record(&self, hash: u64, stamp: u64) {
        let mut fences = self.0.lock();
        let now = std::time::Instant::now();
        if fences.len() >= Self::PRUNE_AT {
            fences.retain(|_, (_, at)| now.duration_since(*at) < Self::KEEP);
        }
        let entry = fences.entry(hash).or_insert((stamp, now));
        *entry = (entry.0.max(stamp), now);
    }

    /// Whether a replacement newer than `stamp` was seen for `hash`.
    fn newer_than(&self, hash: u64, stamp: u64) -> bool {
        self.0
            .lock()
            .get(&hash)
            .is_some_and(|(seen, _)| *seen > stamp)
    }
}

/// Where other processes' notices take effect: this cache, while it lives.
#[cfg_attr(not(feature = "redis"), allow(dead_code))]
pub(super) struct PeerEffects(pub(super) Weak<Inner>);

#[async_trait::async_trait]
impl LocalTiers for PeerEffects {
    async fn drop_key(&self, key: InternalCacheKey, stamp: u64) {
        if let Some(inner) = self.0.upgrade() {
            // First, for a remote read of this key in flight: it may have
            // found the version this notice replaces.
            inner.peer_fences.record(key.disk_hash(), stamp);
            // A version in memory knows its stamp: one as new as the
            // notice's (this very version, read from the server after it
            // was stored, or a later insert here) stays.
            let cache = TwoTierCacheBackend::internal(inner);
            cache.remove_unless_stamped(&key, true, Some(stamp)).await;
        }
    }

    async fn drop_prefix(&self, prefix: String) {
        if let Some(inner) = self.0.upgrade() {
            let cache = TwoTierCacheBackend::internal(inner);
            if prefix.is_empty() {
                cache.clear_locally().await;
            } else {
                cache.invalidate_locally(&prefix).await;
            }
        }
    }

    fn seal(&self, key: &InternalCacheKey, res: &Resident) -> Option<Bytes> {
        let inner = self.0.upgrade()?;
        let codec = res.codec.as_ref()?;
        // The record's sequence number is this process's: readers elsewhere
        // go by the stamp.
        inner
            .spiller
            .seal(key, res.seq, res, codec)
            .ok()
            .map(|(bytes, _)| bytes)
    }
}
