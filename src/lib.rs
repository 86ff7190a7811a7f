//! spillway: one cache, two tiers.
//!
//! A hot in-memory [moka](https://docs.rs/moka) tier whose capacity evictions
//! spill into a [foyer](https://docs.rs/foyer) disk tier; disk hits are
//! promoted back into memory. Both tiers sit behind one object-safe async
//! [`CacheBackend`] trait, so an application holds an `Arc<dyn CacheBackend>`
//! and can swap the memory-only [`MokaCacheBackend`] for the two-tier
//! [`TwoTierCacheBackend`] without other changes.
//!
//! ```
//! use std::sync::Arc;
//! use spillway::{CacheBackend, CacheEntry, CacheTier, CodecRegistry, EvictionPolicy, InternalCacheKey, TwoTierCacheBackend};
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let dir = tempfile::tempdir().unwrap();
//! // Only types with a codec spill; others live in memory only.
//! let codecs = CodecRegistry::new().register::<Vec<u8>>("Page", 1)?;
//! let cache = TwoTierCacheBackend::builder()
//!     .memory_capacity(1 << 20) // 1 MiB of RAM ...
//!     .disk_capacity(64 << 20) // ... in front of 64 MiB of disk
//!     .disk_dir(dir.path())
//!     .eviction_policy(EvictionPolicy::Lru) // predictable for this example
//!     .codecs(codecs)
//!     .build()
//!     .await?;
//!
//! // Write 4 MiB: far more than fits in memory.
//! for i in 0..256 {
//!     let key = InternalCacheKey::new("pages", i.to_string(), "Page");
//!     cache.insert(&key, Arc::new(vec![i as u8; 16 << 10]) as CacheEntry, 16 << 10).await;
//! }
//! cache.flush().await; // wait for the background spills
//!
//! let first = InternalCacheKey::new("pages", "0", "Page");
//! assert_eq!(cache.peek_tier(&first).await, CacheTier::Local); // spilled to disk
//! let page = cache.get(&first).await.expect("served from disk");
//! assert_eq!(page.downcast_ref::<Vec<u8>>().unwrap()[0], 0);
//! assert_eq!(cache.peek_tier(&first).await, CacheTier::Resident); // promoted
//!
//! let stats = cache.stats();
//! assert!(stats.spill.written > 0 && stats.disk.hits == 1);
//! cache.close().await?;
//! # Ok::<(), spillway::Error>(())
//! # }).unwrap();
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod backend;
mod bookkeeping;
mod builder;
mod cache_dir;
mod codec;
mod config;
mod disk;
mod disk_runtime;
mod envelope;
mod error;
mod flow;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
mod health;
mod inspect;
mod journal;
mod key;
#[cfg(feature = "lance")]
pub mod lance;
mod memory;
mod placement;
mod private_fs;
mod quiet_stdout;
mod single_flight;
mod spill;
mod stats;
mod two_tier;
mod typed;
mod weigher;
mod write_behind;

pub use backend::{CacheBackend, CacheTier, Loader};
pub use builder::TwoTierBuilder;
pub use cache_dir::{DirMeta, DISK_FORMAT_VERSION};
pub use codec::{Codec, CodecError, CodecRegistry, SerdeCodec};
pub use config::{
    ByteSize, Config, DiskConfig, EvictionPolicy, MemoryConfig, Millis, DEFAULT_CONFIG_TOML,
    MIN_MEMORY_CAPACITY,
};
pub use disk::IoEngine;
pub use error::{Error, Result};
pub use inspect::DirReport;
pub use key::{CacheEntry, InternalCacheKey};
pub use memory::MokaCacheBackend;
pub use stats::{
    DecodeMisses, DiskStats, MemoryStats, NotWritten, RecoveryStats, SpillStats, StatsSnapshot,
};
pub use two_tier::TwoTierCacheBackend;
pub use typed::{CacheKey, TypedCache, TypedStats};
