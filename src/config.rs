//! `Config`: the TOML form of every setting, with human-readable sizes.

use std::path::PathBuf;

use serde::{Deserialize, Deserializer, Serialize};

use crate::{Error, IoEngine, Result};

/// The configuration embedded in the `spillway` binary (`config/default.toml`).
///
/// ```
/// assert!(spillway::DEFAULT_CONFIG_TOML.contains("[memory]"));
/// ```
pub const DEFAULT_CONFIG_TOML: &str = include_str!("../config/default.toml");

/// A size in bytes, written in TOML as an integer or as a string with a unit:
/// `"256 MiB"`, `"8GiB"`, `"512 KB"`.
///
/// ```
/// let s: spillway::ByteSize = "1 KiB".parse().unwrap();
/// assert_eq!(s, spillway::ByteSize(1024));
/// assert!("lots".parse::<spillway::ByteSize>().is_err());
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct ByteSize(pub u64);

impl std::str::FromStr for ByteSize {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        if s.trim_start().starts_with('-') {
            return Err("a size cannot be negative; write e.g. \"256 MiB\"".into());
        }
        let size = s
            .trim()
            .parse::<bytesize::ByteSize>()
            .map_err(|e| format!("not a size ({e}); write e.g. \"256 MiB\""))?;
        // The parser saturates: u64::MAX means the text was out of range.
        if size.as_u64() == u64::MAX {
            return Err("too large: sizes must be below 16 EiB".into());
        }
        Ok(ByteSize(size.as_u64()))
    }
}

/// A TOML value written either as a plain non-negative integer (read by
/// `from_int`) or as a string with a unit (read by `FromStr`).
fn int_or_text<'de, D, T>(
    d: D,
    from_int: impl FnOnce(u64) -> T,
    negative: &'static str,
) -> std::result::Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: std::str::FromStr<Err = String>,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Int(i64),
        Float(f64),
        Text(String),
    }
    let raw = Raw::deserialize(d)
        .map_err(|_| serde::de::Error::custom("expected a whole number or a string with a unit"))?;
    match raw {
        Raw::Int(n) => u64::try_from(n)
            .map(from_int)
            .map_err(|_| serde::de::Error::custom(negative)),
        Raw::Float(f) if f < 0.0 => Err(serde::de::Error::custom(negative)),
        Raw::Float(_) => Err(serde::de::Error::custom(
            "must be a whole number (or a string with a unit, e.g. \"1.5 MiB\")",
        )),
        Raw::Text(s) => s.parse().map_err(serde::de::Error::custom),
    }
}

/// A plain count that cannot be negative, saying so when it is.
fn non_negative<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<u64, D::Error> {
    let n = i64::deserialize(d)?;
    u64::try_from(n).map_err(|_| serde::de::Error::custom("cannot be negative"))
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        int_or_text(d, ByteSize, "a size cannot be negative")
    }
}

impl ByteSize {
    /// The size as `usize`.
    ///
    /// ```
    /// assert_eq!(spillway::ByteSize(4096).as_usize(), 4096);
    /// ```
    pub fn as_usize(self) -> usize {
        usize::try_from(self.0).unwrap_or(usize::MAX)
    }
}

/// A duration, written in TOML as milliseconds or as a string with a unit:
/// `"2s"`, `"500ms"`, `"1m"`.
///
/// ```
/// let d: spillway::Millis = "2s".parse().unwrap();
/// assert_eq!(d.0, std::time::Duration::from_secs(2));
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Millis(pub std::time::Duration);

impl std::str::FromStr for Millis {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        if s.trim_start().starts_with('-') {
            return Err("a duration cannot be negative; write e.g. \"2s\"".into());
        }
        humantime::parse_duration(s.trim())
            .map(Millis)
            .map_err(|e| format!("not a duration ({e}); write e.g. \"2s\" or \"500ms\""))
    }
}

impl Serialize for Millis {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(self.0).to_string())
    }
}

impl<'de> Deserialize<'de> for Millis {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let from_ms = |ms| Millis(std::time::Duration::from_millis(ms));
        int_or_text(d, from_ms, "a duration cannot be negative")
    }
}

/// The smallest `memory.capacity` accepted: below it the memory tier could
/// not hold a typical entry next to its spill queue.
///
/// ```
/// let text = format!("[memory]\ncapacity = {}", spillway::MIN_MEMORY_CAPACITY - 1);
/// assert!(spillway::Config::from_toml_str(&text).is_err());
/// ```
pub const MIN_MEMORY_CAPACITY: u64 = 16 << 10;

/// How the memory tier chooses what to evict.
///
/// ```
/// let config = spillway::Config::from_toml_str("[memory]\neviction_policy = \"lru\"").unwrap();
/// assert_eq!(config.memory.eviction_policy, spillway::EvictionPolicy::Lru);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EvictionPolicy {
    /// moka's TinyLFU: frequency-based admission, resists scans (the default).
    /// A new key may be rejected at once; with a disk tier it then spills.
    #[default]
    TinyLfu,
    /// Least recently used.
    Lru,
}

/// The `[memory]` section.
///
/// ```
/// let config = spillway::Config::from_toml_str("[memory]\ncapacity = \"64 MiB\"").unwrap();
/// let memory: &spillway::MemoryConfig = &config.memory;
/// assert_eq!(memory.capacity.0, 64 << 20);
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MemoryConfig {
    /// RAM budget: the memory tier plus the spill queue.
    pub capacity: ByteSize,
    /// Part of `capacity` reserved for evicted entries waiting to be written;
    /// default: an eighth of `capacity`.
    pub spill_queue: Option<ByteSize>,
    /// `"tiny_lfu"` or `"lru"`.
    pub eviction_policy: EvictionPolicy,
    /// How often the backend runs moka's maintenance itself, in milliseconds.
    #[serde(deserialize_with = "non_negative")]
    pub maintenance_interval_ms: u64,
}

impl Default for MemoryConfig {
    fn default() -> Self {
        Self {
            capacity: ByteSize(256 << 20),
            spill_queue: None,
            eviction_policy: EvictionPolicy::TinyLfu,
            maintenance_interval_ms: 50,
        }
    }
}

/// The `[disk]` section.
///
/// ```
/// let config = spillway::Config::from_toml_str("[disk]\ncapacity = \"8 GiB\"").unwrap();
/// let disk: &spillway::DiskConfig = &config.disk;
/// assert_eq!(disk.capacity.0, 8 << 30);
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DiskConfig {
    /// The cache directory (the CLI uses a temporary one when unset).
    pub dir: Option<PathBuf>,
    /// Disk budget; foyer's files never exceed it.
    pub capacity: ByteSize,
    /// foyer block size: the unit of disk eviction, and the largest record.
    pub block_size: ByteSize,
    /// foyer flusher tasks writing in parallel.
    pub flushers: usize,
    /// foyer's flush buffers, shared by the flushers.
    pub buffer_pool: ByteSize,
    /// `"psync"` or `"io_uring"`.
    pub io_engine: IoEngine,
    /// Threads that run the psync engine's `pread`s and `pwrite`s, per
    /// disk tier. `0` picks: one per core (at least 2) for a buffered
    /// device, whose reads the page cache mostly serves as CPU work; 32
    /// per core (64 to 512) with `direct_io`, whose reads wait on the
    /// device (threads start only as reads need them). Raise it for a
    /// buffered disk tier much larger than RAM, or fast restarts with a
    /// cold page cache, where reads wait on the device too. No effect with `io_engine = "io_uring"`.
    pub io_threads: usize,
    /// Open the device with `O_DIRECT`, bypassing the page cache.
    pub direct_io: bool,
    /// How long a disk read's caller waits for it awake (yielding its
    /// thread) before it parks, when its tokio runtime has an idle worker
    /// and no other read of the disk tier is under way: a read done by
    /// then costs no wake-ups, and the waiting costs CPU.
    /// `0` turns it off (a caller then always parks); at most 10 ms; a bare
    /// number is milliseconds. Default 300 µs: most page-cache reads on 2
    /// cores are done by then, 64 KiB ones queued behind a block write too.
    pub read_spin: Millis,
    /// `fsync` the journal after invalidations, clears and replacements, so
    /// they survive power loss too (a process crash never loses them).
    pub fsync: bool,
    /// Wipe a directory of another format or block size instead of refusing it.
    pub reset_incompatible: bool,
    /// On open, load the entries resident at the last close back into memory
    /// (in the background, up to the memory budget).
    pub warm_on_open: bool,
    /// `"none"`, `"lz4"` or `"zstd"`: how disk records are compressed. The
    /// disk budget counts the stored (compressed) bytes.
    pub compression: crate::Compression,
    /// zstd's level (1 fast ... 22 small; negative: faster still).
    pub compression_level: i32,
    /// Payloads shorter than this are stored raw.
    pub compression_min_size: ByteSize,
    /// Records (key, envelope and value, after compression) up to this
    /// length share 4 KiB pages with others instead of taking a page each;
    /// `0` turns packing off. Default 3 KiB, so that values up to about
    /// 2.9 KiB are packed; at most 4028 bytes: a pack is one page.
    pub pack_threshold: ByteSize,
    /// Write-behind: an entry resident this long is written to disk as well,
    /// so that a dropped or killed cache comes back warm. `0` turns it off
    /// (then only `close()` persists what is resident).
    pub persist_after: Millis,
}

impl Default for DiskConfig {
    fn default() -> Self {
        Self {
            dir: None,
            capacity: ByteSize(1 << 30),
            block_size: ByteSize(4 << 20),
            flushers: 2,
            buffer_pool: ByteSize(16 << 20),
            io_engine: IoEngine::Psync,
            io_threads: 0,
            direct_io: false,
            read_spin: Millis(crate::read_spin::DEFAULT_READ_SPIN),
            fsync: false,
            reset_incompatible: false,
            warm_on_open: true,
            persist_after: Millis(std::time::Duration::from_secs(2)),
            compression: crate::Compression::None,
            compression_level: 3,
            compression_min_size: ByteSize(256),
            pack_threshold: ByteSize(3072),
        }
    }
}

/// The `[expiry]` section.
///
/// ```
/// let config = spillway::Config::from_toml_str("[expiry]\ntime_to_live = \"10m\"").unwrap();
/// let expiry: &spillway::ExpiryConfig = &config.expiry;
/// assert_eq!(expiry.time_to_live.0, std::time::Duration::from_secs(600));
/// ```
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExpiryConfig {
    /// Time to live of entries inserted without one, in both tiers and
    /// across restarts; `0` (the default): entries live until evicted.
    pub time_to_live: Millis,
}

/// Every setting of a [`crate::TwoTierCacheBackend`], loadable from TOML.
///
/// ```
/// let config = spillway::Config::from_toml_str(r#"
///     [memory]
///     capacity = "64 MiB"
///     [disk]
///     capacity = "2 GiB"
/// "#)?;
/// assert_eq!(config.memory.capacity.0, 64 << 20);
/// assert!(spillway::Config::from_toml_str("[memory]\ncapacty = 1").is_err());
/// # Ok::<(), spillway::Error>(())
/// ```
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The memory tier.
    pub memory: MemoryConfig,
    /// The disk tier.
    pub disk: DiskConfig,
    /// Expiry of entries.
    pub expiry: ExpiryConfig,
    /// The shared remote tier (`redis` feature); none by default.
    pub remote: Option<crate::RemoteConfig>,
    /// Settings of `spillway bench`, kept as written; the library ignores them.
    pub bench: Option<toml::Table>,
}

impl Config {
    /// Parses TOML. A malformed value or an unknown key is an
    /// [`Error::Config`] naming the field and the value.
    ///
    /// ```
    /// let err = spillway::Config::from_toml_str("[disk]\nflushers = \"two\"").unwrap_err();
    /// assert!(err.to_string().contains("disk.flushers"));
    /// assert!(err.to_string().contains("two"));
    /// ```
    pub fn from_toml_str(text: &str) -> Result<Self> {
        Self::parse(text, None)
    }

    fn parse(text: &str, file: Option<&std::path::Path>) -> Result<Self> {
        let raw: toml::Table = text.parse().map_err(|e: toml::de::Error| {
            let at = e.span().map_or(0, |span| span.start).min(text.len());
            let before = text.get(..at).unwrap_or(text);
            let line = before.matches('\n').count() + 1;
            let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            Error::ConfigSyntax {
                file: file.map(std::path::Path::to_path_buf),
                line,
                column,
                message: e.message().trim().to_string(),
            }
        })?;
        // serde would read an array as a struct's fields by position.
        for (section, value) in &raw {
            if !value.is_table() {
                return Err(Error::Config {
                    field: section.clone(),
                    value: value.to_string(),
                    reason: format!("must be a table: write [{section}] and its keys below"),
                });
            }
        }
        let config: Config = serde_path_to_error::deserialize(toml::Value::Table(raw.clone()))
            .map_err(|e| {
                let mut field = e.path().to_string();
                let reason = e.inner().to_string();
                // The path of an unknown key may stop at its table; name the key.
                if let Some(name) = reason
                    .strip_prefix("unknown field `")
                    .and_then(|r| r.split('`').next())
                {
                    if field == "." {
                        field = name.to_string();
                    } else if !field.ends_with(name) {
                        field = format!("{field}.{name}");
                    }
                }
                let value =
                    lookup(&raw, &field).map_or_else(|| "<missing>".to_string(), |v| v.to_string());
                // An address may carry a password: never quote it.
                let value = crate::remote::redact(&value);
                Error::Config {
                    field,
                    value,
                    reason,
                }
            })?;
        config.validate()?;
        Ok(config)
    }

    /// Reads and parses a TOML file.
    ///
    /// ```
    /// let err = spillway::Config::from_file("/no/such/file.toml").unwrap_err();
    /// assert!(err.to_string().contains("/no/such/file.toml"));
    /// ```
    pub fn from_file(path: impl AsRef<std::path::Path>) -> Result<Self> {
        let path = path.as_ref();
        let text =
            std::fs::read_to_string(path).map_err(|e| Error::io("read config file", path, e))?;
        Self::parse(&text, Some(path))
    }

    /// The configuration embedded in the binary (`config/default.toml`).
    ///
    /// ```
    /// let config = spillway::Config::embedded_default();
    /// assert!(config.memory.capacity.0 > 0);
    /// ```
    pub fn embedded_default() -> Self {
        // The embedded file is checked by a unit test; fall back to the
        // built-in defaults rather than panic should it ever be broken.
        Self::from_toml_str(DEFAULT_CONFIG_TOML).unwrap_or_default()
    }

    /// Checks values that parse but make no sense together.
    ///
    /// ```
    /// let mut config = spillway::Config::default();
    /// config.disk.flushers = 0;
    /// assert!(config.validate().unwrap_err().to_string().contains("disk.flushers"));
    /// ```
    pub fn validate(&self) -> Result<()> {
        let bad = |field: &str, value: String, reason: &str| {
            Err(Error::Config {
                field: field.into(),
                value,
                reason: reason.into(),
            })
        };
        let (m, d) = (&self.memory, &self.disk);
        if m.capacity.0 < MIN_MEMORY_CAPACITY {
            return bad(
                "memory.capacity",
                m.capacity.0.to_string(),
                "must be at least 16 KiB (16384 bytes) to hold anything",
            );
        }
        if let Some(q) = m.spill_queue {
            if q.0 == 0 || q.0 >= m.capacity.0 {
                return bad(
                    "memory.spill_queue",
                    q.0.to_string(),
                    "must be more than 0 and less than memory.capacity",
                );
            }
        }
        if m.maintenance_interval_ms == 0 {
            return bad(
                "memory.maintenance_interval_ms",
                "0".into(),
                "must be at least 1",
            );
        }
        if d.read_spin.0 > crate::read_spin::MAX_READ_SPIN {
            return bad(
                "disk.read_spin",
                humantime::format_duration(d.read_spin.0).to_string(),
                "must be at most 10ms",
            );
        }
        if d.block_size.0 < 64 << 10 || d.block_size.0 % 4096 != 0 {
            return bad(
                "disk.block_size",
                d.block_size.0.to_string(),
                "must be a multiple of 4 KiB, at least 64 KiB",
            );
        }
        if d.block_size.0 > 1 << 30 {
            return bad(
                "disk.block_size",
                d.block_size.0.to_string(),
                "must be at most 1 GiB",
            );
        }
        if d.capacity.0 < 8 * d.block_size.0 {
            let reason = format!(
                "must hold at least 8 blocks of disk.block_size: at least {} bytes with blocks of {}",
                8 * d.block_size.0,
                d.block_size.0
            );
            return bad("disk.capacity", d.capacity.0.to_string(), &reason);
        }
        if !(-7..=22).contains(&d.compression_level) {
            return bad(
                "disk.compression_level",
                d.compression_level.to_string(),
                "must be between -7 and 22 (zstd's levels)",
            );
        }
        if d.pack_threshold.0 > crate::packing::MAX_PACKED as u64 {
            let reason = format!(
                "must be at most {} bytes: a pack is one 4 KiB page",
                crate::packing::MAX_PACKED
            );
            return bad(
                "disk.pack_threshold",
                d.pack_threshold.0.to_string(),
                &reason,
            );
        }
        if d.flushers == 0 {
            return bad("disk.flushers", "0".into(), "must be at least 1");
        }
        if d.flushers > 1024 {
            return bad(
                "disk.flushers",
                d.flushers.to_string(),
                "must be at most 1024",
            );
        }
        if d.io_threads > 1024 {
            return bad(
                "disk.io_threads",
                d.io_threads.to_string(),
                "must be at most 1024 (0 picks by the cores)",
            );
        }
        if d.buffer_pool.0 < d.flushers as u64 * 2 * 4096 {
            return bad(
                "disk.buffer_pool",
                d.buffer_pool.0.to_string(),
                "must give each flusher at least 8 KiB",
            );
        }
        if let Some(remote) = &self.remote {
            remote.validate()?;
        }
        Ok(())
    }
}

fn lookup<'a>(table: &'a toml::Table, dotted: &str) -> Option<&'a toml::Value> {
    // A quoted key may hold a dot itself: `[memory]` then `"capa.city"`.
    if let Some((section, rest)) = dotted.split_once('.') {
        if let Some(value) = table.get(section).and_then(|s| s.get(rest)) {
            return Some(value);
        }
    }
    let mut parts = dotted.split('.');
    let mut value = table.get(parts.next()?)?;
    for part in parts {
        value = value.get(part)?;
    }
    Some(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_default_parses() {
        Config::from_toml_str(DEFAULT_CONFIG_TOML).expect("config/default.toml must parse");
    }
}
