//! spillway: one cache, two tiers.
//!
//! A hot in-memory [moka](https://docs.rs/moka) tier whose capacity evictions
//! spill into a [foyer](https://docs.rs/foyer) disk tier; disk hits are
//! promoted back into memory. You set a memory budget and a disk budget and
//! get a cache far larger than RAM that stays warm across restarts.
//!
//! Most applications use the typed front door, [`TypedCache`]: a key type
//! names its value type, and reads return that type, no downcasting.
//!
//! ```
//! use std::{borrow::Cow, sync::Arc};
//! use spillway::{CacheKey, CodecRegistry, TwoTierCacheBackend, TypedCache, Weigh};
//!
//! /// Pages of an index, by page number.
//! struct PageKey(u32);
//!
//! impl CacheKey for PageKey {
//!     type ValueType = Vec<u8>;
//!     fn key(&self) -> Cow<'_, str> {
//!         self.0.to_string().into()
//!     }
//!     fn type_name() -> &'static str {
//!         "Page" // also the name its codec is registered under
//!     }
//! }
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let dir = tempfile::tempdir().unwrap();
//! // Only types with a codec spill to disk; others live in memory only.
//! let codecs = CodecRegistry::new().register::<Vec<u8>>("Page", 1)?;
//! let backend = TwoTierCacheBackend::builder()
//!     .memory_capacity(1 << 20) // 1 MiB of RAM ...
//!     .disk_capacity(64 << 20) // ... in front of 64 MiB of disk
//!     .disk_dir(dir.path())
//!     .codecs(codecs)
//!     .build()
//!     .await?;
//! let pages = TypedCache::new(Arc::new(backend.clone())).with_key_prefix("index/7");
//!
//! // Write 4 MiB: far more than fits in memory; the rest spills.
//! for i in 0..256 {
//!     let page = vec![i as u8; 16 << 10];
//!     let size = page.weigh(); // what the memory budget counts
//!     pages.insert(&PageKey(i), Arc::new(page), size).await;
//! }
//! backend.flush().await; // wait for the background spills
//!
//! let first: Arc<Vec<u8>> = pages.get(&PageKey(0)).await.expect("served from disk");
//! assert_eq!(first[0], 0);
//! // A miss runs the loader, once among concurrent callers.
//! let page = pages.get_or_insert(&PageKey(999), || async { Ok((vec![9u8; 64], 64)) }).await?;
//! assert_eq!(page[0], 9);
//! pages.remove(&PageKey(999)).await;
//!
//! assert!(backend.stats().spill.written > 0);
//! backend.close().await?; // spills what is resident, for a warm restart
//! # Ok::<(), spillway::Error>(())
//! # }).unwrap();
//! ```
//!
//! Underneath, both tiers sit behind one object-safe async [`CacheBackend`]
//! trait (the shape of Lance's pluggable index cache), so an application
//! can hold an `Arc<dyn CacheBackend>` and swap the memory-only
//! [`MokaCacheBackend`] for the two-tier [`TwoTierCacheBackend`]. At that
//! level keys are [`InternalCacheKey`]s and values are type-erased
//! [`CacheEntry`]s:
//!
//! ```
//! use std::sync::Arc;
//! use spillway::{CacheEntry, InternalCacheKey, MokaCacheBackend};
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let cache = MokaCacheBackend::with_capacity(1 << 20);
//! let key = InternalCacheKey::new("index/7", "page:0", "Page");
//! spillway::CacheBackend::insert(&cache, &key, Arc::new(vec![1u8; 10]) as CacheEntry, 10).await;
//! let hit = spillway::CacheBackend::get(&cache, &key).await.unwrap();
//! assert_eq!(hit.downcast_ref::<Vec<u8>>().unwrap()[0], 1);
//! # });
//! ```
#![cfg_attr(docsrs, feature(doc_cfg))]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod backend;
mod batch_scheduling;
mod bookkeeping;
mod builder;
mod cache_dir;
mod codec;
mod cold_slot;
mod compression;
mod config;
mod device_claim;
mod disk;
mod disk_runtime;
mod envelope;
mod error;
mod expiry;
mod flow;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
mod handover;
mod health;
mod inspect;
mod journal;
mod key;
mod key_locks;
#[cfg(feature = "lance")]
#[cfg_attr(docsrs, doc(cfg(feature = "lance")))]
pub mod lance;
mod memory;
#[cfg(feature = "metrics")]
#[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
pub mod metrics;
mod miss_yield;
mod notified_wait;
mod packing;
mod placement;
mod prefixes;
mod private_fs;
mod quiet_stdout;
mod read_spin;
mod record_scan;
mod remote;
mod runtime_load;
mod shared_prefix;
mod single_flight;
mod spill;
mod staggered_shards;
mod stats;
mod two_tier;
mod typed;
mod weigh;
mod weigher;
mod write_behind;

pub use backend::{CacheBackend, CacheTier, Loader};
pub use builder::TwoTierBuilder;
pub use cache_dir::{DirMeta, DISK_FORMAT_VERSION};
pub use codec::{Codec, CodecError, CodecRegistry, SerdeCodec};
pub use compression::Compression;
pub use config::{
    ByteSize, Config, DiskConfig, EvictionPolicy, ExpiryConfig, MemoryConfig, Millis,
    DEFAULT_CONFIG_TOML, MIN_MEMORY_CAPACITY,
};
pub use disk::{IoEngine, RECOVER_CONCURRENCY};
pub use error::{Error, Result};
pub use expiry::WallClock;
pub use inspect::DirReport;
pub use key::{CacheEntry, InternalCacheKey};
pub use memory::MokaCacheBackend;
pub use read_spin::{DEFAULT_READ_SPIN, MAX_READ_SPIN};
pub use remote::{RemoteConfig, RemoteNotSent, RemoteStats, RemoteUrl, WritePolicy};
pub use stats::{
    DecodeMisses, DiskStats, MemoryStats, NotWritten, RecoveryStats, SpillStats, StatsSnapshot,
};
pub use two_tier::TwoTierCacheBackend;
pub use typed::{CacheKey, TypedCache, TypedStats};
pub use weigh::Weigh;

/// The README's code blocks, compiled as doctests (its Lance block needs
/// the `lance` feature, which CI turns on).
#[cfg(all(doctest, feature = "lance"))]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
