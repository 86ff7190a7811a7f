//! The shared third tier: a Redis-protocol server below the local disk,
//! so that the processes of a fleet load each entry once (`redis` feature).
//!
//! The read path is memory → local disk → remote → loader. A remote hit is
//! verified (the same sealed envelope as a disk record: checksum, key,
//! codec) and promoted into the local tiers.
//!
//! # Consistency model
//!
//! - **Order of writes.** Every version gets a *stamp* when it is inserted:
//!   the server's clock (this process's clock corrected by its measured
//!   offset) in microseconds, then a writer id. The server keeps, per key,
//!   the write with the highest stamp; a script refuses older ones. So the
//!   remote tier never replaces a newer value with an older one, whatever
//!   order the writes arrive in.
//! - **Replacements.** `insert` (and `insert_with_ttl`, `remove`) sends a
//!   *fence* for its key at once (the record itself follows on spill; with
//!   `write_policy = "on_insert"` the record is the fence). Once the fence
//!   is stored, no process reads an older version of the key from the
//!   server. This process never reads a version older than its own
//!   undelivered writes.
//! - **Loader results.** A value loaded by `get_or_insert` is a *fill*: it
//!   is stamped when its load began and shared (on spill, or at once with
//!   `on_insert`) but not announced, so the other processes keep their own
//!   copies of the key, loaded from the same source. A replacement
//!   announced while a load was running is newer than the loaded value and
//!   wins over it on every tier.
//! - **Invalidations.** `invalidate_prefix` and `clear` write the prefix's
//!   stamp into the server's invalidation table before they return (within
//!   `remote.timeout`; else they are retried in the background and this
//!   process reads nothing they cover from the server meanwhile). Every
//!   remote read checks the record against that table in the same script:
//!   an invalidated record is never served by any process once the call
//!   has returned.
//! - **Other processes' local tiers.** Each delivered batch of replacements and
//!   invalidations is published as a numbered *notice* (pub/sub) and kept
//!   in a capped log on the server. Other processes drop the versions it
//!   names from their memory and disk, typically within a round trip; a
//!   lost message is found by polling the log every `remote.sync_interval`,
//!   which bounds the delay.
//! - **Lost connection.** A process that loses its connection stops reading
//!   from the server (its local tiers keep serving) until it has
//!   reconnected and replayed every notice it missed from the log. If the
//!   log no longer reaches back that far, or the server restarted empty,
//!   it clears its local tiers instead (`remote.resync_clears`). The point
//!   it caught up to is kept in the cache directory, so a restarted process
//!   replays what it missed while it was down.
//! - **Server restarts empty.** Every hash-tag bucket gets a *floor* (the
//!   server time of its first write); writes stamped before it, which
//!   could predate an invalidation the server forgot, are refused, and
//!   the writer drops its own refused version too, so that no process
//!   serves a value the others will never see. A process that catches up
//!   with a new data set moves its clock past the floors first, so that
//!   its later writes are not refused for a clock lagging the server's.
//! - **Limits.** A process killed before its queue drained never tells the
//!   others about its last replacements: they keep the older version until
//!   its time to live (`remote.ttl`) ends. Two keys whose 64-bit hashes
//!   collide share one server key: the later write wins, the other key
//!   misses (never the wrong value: the envelope names the key).
//!
//! # Server settings
//!
//! Give the server a memory bound and let it evict any key:
//! `maxmemory <bytes>` and `maxmemory-policy allkeys-lru`. Every key
//! spillway writes has a time to live, so `volatile-lru` works too. An
//! evicted record is a miss; an evicted fence or invalidation table can
//! only make an older record readable if its record survived it, which
//! LRU makes unlikely but does not rule out: give the server room.

mod config;
#[cfg(feature = "redis")]
mod connection;
mod counters;
#[cfg(feature = "redis")]
mod listener;
#[cfg(feature = "redis")]
mod names;
#[cfg(feature = "redis")]
mod notice;
#[cfg(feature = "redis")]
mod outbox;
#[cfg(feature = "redis")]
mod scripts;
#[cfg(feature = "redis")]
mod sender;
#[cfg(feature = "redis")]
mod stamp;
#[cfg(feature = "redis")]
mod tier;

use std::sync::Arc;

use bytes::Bytes;

pub(crate) use config::redact;
pub use config::{RemoteConfig, RemoteUrl, WritePolicy};
pub use counters::{RemoteNotSent, RemoteStats};

use crate::placement::Resident;
use crate::InternalCacheKey;

/// What other processes' notices do to this process's tiers, and how a
/// version is sealed for the server.
#[async_trait::async_trait]
#[cfg_attr(not(feature = "redis"), allow(dead_code))]
pub(crate) trait LocalTiers: Send + Sync {
    /// Drops the local version of `key` unless it is as new as `stamp`:
    /// another process replaced the key with the version stamped so.
    async fn drop_key(&self, key: InternalCacheKey, stamp: u64);
    /// Drops every local entry under `prefix` (all of them for `""`).
    async fn drop_prefix(&self, prefix: String);
    /// The sealed record of a version (write-through), `None` if its codec
    /// fails.
    fn seal(&self, key: &InternalCacheKey, res: &Resident) -> Option<Bytes>;
}

/// The handle the rest of the crate holds: a remote tier, or none.
#[derive(Clone, Debug, Default)]
pub(crate) struct Remote {
    #[cfg(feature = "redis")]
    tier: Option<Arc<tier::RemoteTier>>,
}

impl Remote {
    /// Connects to the configured server, if any. `sync_file` keeps how far
    /// this cache has caught up with other processes' notices.
    #[cfg_attr(not(feature = "redis"), allow(unused_variables))]
    pub(crate) async fn open(
        config: Option<&RemoteConfig>,
        sync_file: std::path::PathBuf,
    ) -> crate::Result<Self> {
        let Some(config) = config else {
            return Ok(Self::default());
        };
        config.validate()?;
        #[cfg(feature = "redis")]
        {
            let tier = tier::RemoteTier::open(config, sync_file).await?;
            Ok(Self { tier: Some(tier) })
        }
        #[cfg(not(feature = "redis"))]
        Ok(Self::default())
    }

    /// Starts the background tasks; `local` receives other processes' notices.
    #[cfg_attr(not(feature = "redis"), allow(unused_variables))]
    pub(crate) fn start(&self, local: Box<dyn LocalTiers>) -> Vec<tokio::task::JoinHandle<()>> {
        #[cfg(feature = "redis")]
        if let Some(tier) = &self.tier {
            return tier.start(local);
        }
        Vec::new()
    }

    /// Waits a bounded time for the first catch-up with the server, so
    /// that a cache fresh from `build` reads from it at once.
    pub(crate) async fn wait_ready(&self) {
        #[cfg(feature = "redis")]
        if let Some(tier) = &self.tier {
            // Unreachable at start: the build does not wait for it again.
            let unreachable = tier.counters.unreachable_at_start.get() > 0;
            if !unreachable && !tier.wait_ready(tier.probe_time()).await {
                tracing::warn!(
                    "the remote tier is not caught up yet; remote reads start once it is"
                );
            }
        }
    }

    pub(crate) fn is_on(&self) -> bool {
        #[cfg(feature = "redis")]
        return self.tier.is_some();
        #[cfg(not(feature = "redis"))]
        false
    }

    /// The stamp of a new local version (0 without a remote tier).
    pub(crate) fn next_stamp(&self) -> u64 {
        #[cfg(feature = "redis")]
        if let Some(tier) = &self.tier {
            return tier.next_stamp();
        }
        0
    }

    /// A new local version: a `replacement` (`insert`) is announced to
    /// other processes; a loader's result is not.
    #[cfg_attr(not(feature = "redis"), allow(unused_variables))]
    pub(crate) fn inserted(&self, key: &InternalCacheKey, res: &Arc<Resident>, replacement: bool) {
        #[cfg(feature = "redis")]
        if let Some(tier) = &self.tier {
            tier.inserted(key, res, replacement);
        }
    }

    #[cfg_attr(not(feature = "redis"), allow(unused_variables))]
    pub(crate) fn removed(&self, key: &InternalCacheKey) {
        #[cfg(feature = "redis")]
        if let Some(tier) = &self.tier {
            tier.removed(key);
        }
    }

    #[cfg_attr(not(feature = "redis"), allow(unused_variables))]
    pub(crate) fn spilled(&self, key: &InternalCacheKey, stamp: u64, record: &Bytes) {
        #[cfg(feature = "redis")]
        if let Some(tier) = &self.tier {
            tier.spilled(key, stamp, record.clone());
        }
    }

    #[cfg_attr(not(feature = "redis"), allow(unused_variables))]
    pub(crate) async fn invalidate(&self, prefix: &str) {
        #[cfg(feature = "redis")]
        if let Some(tier) = &self.tier {
            tier.invalidate(prefix).await;
        }
    }

    /// `key`'s record on the server: its stamp and sealed bytes.
    #[cfg_attr(not(feature = "redis"), allow(unused_variables))]
    pub(crate) async fn read(&self, key: &InternalCacheKey) -> Option<(u64, Bytes)> {
        #[cfg(feature = "redis")]
        if let Some(tier) = &self.tier {
            return tier
                .read(key)
                .await
                .map(|(stamp, bytes)| (stamp.micros, bytes));
        }
        None
    }

    /// Sends what is queued (see `TwoTierCacheBackend::sync_remote`).
    pub(crate) async fn flush(&self) {
        #[cfg(feature = "redis")]
        if let Some(tier) = &self.tier {
            tier.flush().await;
        }
    }

    /// A value read from the server that did not verify.
    pub(crate) fn refused(&self) {
        #[cfg(feature = "redis")]
        if let Some(tier) = &self.tier {
            tier.refused();
        }
    }

    /// A value read from the server verified (stamp `stamp`).
    #[cfg_attr(not(feature = "redis"), allow(unused_variables))]
    pub(crate) fn hit(&self, stamp: u64) {
        #[cfg(feature = "redis")]
        if let Some(tier) = &self.tier {
            tier.hit(stamp);
        }
    }

    pub(crate) fn stats(&self) -> RemoteStats {
        #[cfg(feature = "redis")]
        if let Some(tier) = &self.tier {
            let (widened, superseded) = tier.outbox_counts();
            let mut stats = tier.counters.snapshot(true, tier.is_ready(), widened);
            stats.not_sent.superseded += superseded;
            return stats;
        }
        RemoteStats::default()
    }
}
