//! spillway: one cache, two tiers.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod backend;
mod builder;
mod codec;
mod config;
mod disk;
mod envelope;
mod error;
mod key;
mod memory;
mod placement;
mod single_flight;
mod spill;
mod stats;
mod two_tier;
mod typed;
mod weigher;

pub use backend::{CacheBackend, CacheTier, Loader};
pub use builder::TwoTierBuilder;
pub use codec::{Codec, CodecError, CodecRegistry, SerdeCodec};
pub use config::{ByteSize, Config, DiskConfig, EvictionPolicy, MemoryConfig, DEFAULT_CONFIG_TOML};
pub use disk::IoEngine;
pub use error::{Error, Result};
pub use key::{CacheEntry, InternalCacheKey};
pub use memory::MokaCacheBackend;
pub use stats::{DecodeMisses, DiskStats, MemoryStats, NotWritten, SpillStats, StatsSnapshot};
pub use two_tier::TwoTierCacheBackend;
pub use typed::{CacheKey, TypedCache, TypedStats};
