//! Lance 14 integration (feature `lance`): spillway's two tiers behind
//! `lance_core::cache::CacheBackend`, so a Lance session's index cache can
//! spill to disk and survive restarts.
//!
//! ```
//! # tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap().block_on(async {
//! let dir = tempfile::tempdir().unwrap();
//! spillway::lance::register()?;
//! let uri = format!("spillway://{}?memory=64MiB&disk=256MiB", dir.path().display());
//! let backend = lance_core::cache::build_from_uri(&uri)?;
//! let index_cache = lance_core::cache::LanceCache::with_backend(backend);
//! # drop(index_cache);
//! # Ok::<(), lance_core::Error>(())
//! # }).unwrap();
//! ```

use std::sync::{Arc, OnceLock};

use async_trait::async_trait;
use bytes::Bytes;
use lance_core::cache::{
    self as lc, BackendConfig, CacheCodec, CacheDecode, CacheMissReason, CACHE_KEY_FORMAT,
};

use crate::{
    ByteSize, CacheBackend, CacheEntry, CacheTier, Codec, CodecError, CodecRegistry, Config,
    InternalCacheKey, TwoTierCacheBackend,
};

/// The backend kind under which [`register`] makes spillway available to
/// `lance_core::cache::build_from_uri`.
///
/// ```
/// assert_eq!(spillway::lance::BACKEND_KIND, "spillway");
/// ```
pub const BACKEND_KIND: &str = "spillway";

/// Lance keys carry no type tag of their own (the type is hashed into them).
const TYPE_TAG: &str = "lance";

/// The namespace of every Lance key on disk. It names Lance's key format, so
/// keys of a future format are cold misses, never aliases of today's.
fn prefix() -> Arc<str> {
    static PREFIX: OnceLock<Arc<str>> = OnceLock::new();
    PREFIX
        .get_or_init(|| Arc::from(format!("lance/{CACHE_KEY_FORMAT}")))
        .clone()
}

fn key_of(key: &lc::InternalCacheKey) -> InternalCacheKey {
    let hex: String = key.as_bytes().iter().map(|b| format!("{b:02x}")).collect();
    InternalCacheKey::new(prefix(), hex, TYPE_TAG)
}

/// A Lance codec as a spillway [`Codec`]. Lance's own envelope (type id and
/// body version) travels inside spillway's payload; its `Miss` is a miss.
#[derive(Debug)]
struct LanceCodec(CacheCodec);

fn codec_of(codec: Option<CacheCodec>) -> Option<Arc<dyn Codec>> {
    codec.map(|c| Arc::new(LanceCodec(c)) as Arc<dyn Codec>)
}

impl Codec for LanceCodec {
    fn type_version(&self) -> u32 {
        // Lance versions the body in its own envelope.
        1
    }

    fn encode(&self, entry: &CacheEntry, out: &mut Vec<u8>) -> Result<(), CodecError> {
        self.0
            .serialize(entry, out)
            .map_err(|e| CodecError::Failed(e.to_string()))
    }

    fn decode(&self, _type_version: u32, payload: &[u8]) -> Result<CacheEntry, CodecError> {
        match self.0.deserialize(&Bytes::copy_from_slice(payload)) {
            CacheDecode::Hit(entry) => Ok(entry),
            CacheDecode::Miss(
                reason @ (CacheMissReason::VersionTooNew | CacheMissReason::TypeMismatch),
            ) => Err(CodecError::Incompatible(format!("{reason:?}"))),
            CacheDecode::Miss(reason) => Err(CodecError::Failed(format!("{reason:?}"))),
        }
    }
}

/// spillway's [`TwoTierCacheBackend`] as a Lance cache backend.
///
/// ```
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let dir = tempfile::tempdir().unwrap();
/// let cache = spillway::TwoTierCacheBackend::builder()
///     .disk_dir(dir.path())
///     .disk_capacity(64 << 20)
///     .build()
///     .await
///     .unwrap();
/// let backend = spillway::lance::LanceBackend::new(cache);
/// let index_cache = lance_core::cache::LanceCache::with_backend(std::sync::Arc::new(backend));
/// # drop(index_cache);
/// # });
/// ```
#[derive(Debug, Clone)]
pub struct LanceBackend {
    cache: TwoTierCacheBackend,
}

impl LanceBackend {
    /// Wraps a two-tier cache. Entries Lance hands over with a codec spill
    /// through it; entries without one stay in memory.
    ///
    /// ```
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// # let dir = tempfile::tempdir().unwrap();
    /// let cache = spillway::TwoTierCacheBackend::builder()
    ///     .disk_dir(dir.path())
    ///     .disk_capacity(64 << 20)
    ///     .build()
    ///     .await
    ///     .unwrap();
    /// let backend = spillway::lance::LanceBackend::new(cache);
    /// # drop(backend);
    /// # });
    /// ```
    pub fn new(cache: TwoTierCacheBackend) -> Self {
        Self { cache }
    }

    /// The two-tier cache underneath (statistics, `flush`, `close`).
    ///
    /// ```
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let cache = spillway::TwoTierCacheBackend::builder().disk_dir(dir.path()).disk_capacity(64 << 20).build().await.unwrap();
    /// let backend = spillway::lance::LanceBackend::new(cache);
    /// assert_eq!(backend.cache().stats().inserts, 0);
    /// backend.cache().close().await.unwrap();
    /// # });
    /// ```
    pub fn cache(&self) -> &TwoTierCacheBackend {
        &self.cache
    }
}

/// Registers the `spillway` backend kind with Lance's backend registry.
/// Registering twice is harmless.
///
/// ```
/// spillway::lance::register().unwrap();
/// spillway::lance::register().unwrap();
/// ```
pub fn register() -> lance_core::Result<()> {
    match lc::register_backend(BACKEND_KIND, build) {
        Ok(()) => Ok(()),
        Err(e) if e.to_string().contains("already registered") => Ok(()),
        Err(e) => Err(e),
    }
}

/// `%XX` escapes decoded (a malformed one is kept as written).
fn percent_decoded(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Builds from `spillway:///DIR?memory=SIZE&disk=SIZE[&block_size=SIZE][&persist_after=DURATION][&compression=none|lz4|zstd][&ttl=DURATION][&remote=URL[&remote_namespace=NAME][&remote_write_policy=on_spill|on_insert][&remote_ttl=DURATION][&remote_timeout=DURATION][&remote_required=true|false]]`.
/// `remote` (the `redis` feature) adds the shared tier (see
/// [`crate::RemoteConfig`]); percent-encode a URL that has its own `?`,
/// `&` or `=` (`%3F`, `%26`, `%3D`). Its password never appears in errors.
/// `ttl` (default `0`, none) is every entry's time to live (`expiry.time_to_live`).
/// `persist_after` (default 2s, `0` off) is write-behind: a backend that is
/// dropped without `close()`, as an `Arc<dyn CacheBackend>` is, still comes
/// back warm. A bad value is an error naming the URI option.
/// Lance's constructors are synchronous, so this blocks on spillway's async
/// build; it needs a multi-threaded tokio runtime (the cache's background
/// tasks run there).
fn build(config: &BackendConfig) -> lance_core::Result<Arc<dyn lc::CacheBackend>> {
    let bad = |option: &str, value: &str, why: &str| {
        lance_core::Error::invalid_input(format!("spillway cache option {option}={value:?}: {why}"))
    };
    let mut c = Config::default();
    let mut remote: Option<crate::RemoteConfig> = None;
    for (option, value) in &config.options {
        if let Some(setting) = option.strip_prefix("remote") {
            let r = remote.get_or_insert_with(crate::RemoteConfig::default);
            let shown = crate::remote::redact(value);
            let duration = || {
                value
                    .parse::<crate::Millis>()
                    .map_err(|e| bad(option, &shown, &e))
            };
            match setting {
                "" => r.url = crate::RemoteUrl::new(percent_decoded(value)),
                "_namespace" => r.namespace = value.clone(),
                "_ttl" => r.ttl = duration()?,
                "_timeout" => r.timeout = duration()?,
                "_write_policy" => {
                    r.write_policy = match value.as_str() {
                        "on_spill" => crate::WritePolicy::OnSpill,
                        "on_insert" => crate::WritePolicy::OnInsert,
                        _ => return Err(bad(option, value, "must be on_spill or on_insert")),
                    }
                }
                "_required" => {
                    r.required = value
                        .parse()
                        .map_err(|_| bad(option, value, "must be true or false"))?
                }
                _ => return Err(bad(option, &shown, "unknown remote option (known: remote, remote_namespace, remote_write_policy, remote_ttl, remote_timeout, remote_required)")),
            }
            continue;
        }
        let size = || {
            value
                .parse::<ByteSize>()
                .map_err(|e| bad(option, value, &e))
        };
        match option.as_str() {
            "path" => c.disk.dir = Some(value.into()),
            "memory" => c.memory.capacity = size()?,
            "disk" => c.disk.capacity = size()?,
            "block_size" => c.disk.block_size = size()?,
            "persist_after" => {
                c.disk.persist_after = value
                    .parse::<crate::Millis>()
                    .map_err(|e| bad(option, value, &e))?
            }
            "ttl" => {
                c.expiry.time_to_live = value
                    .parse::<crate::Millis>()
                    .map_err(|e| bad(option, value, &e))?
            }
            "compression" => {
                c.disk.compression = match value.as_str() {
                    "none" => crate::Compression::None,
                    "lz4" => crate::Compression::Lz4,
                    "zstd" => crate::Compression::Zstd,
                    _ => return Err(bad(option, value, "must be none, lz4 or zstd")),
                }
            }
            _ => {
                return Err(bad(
                    option,
                    value,
                    "unknown option (known: path, memory, disk, block_size, persist_after, compression, ttl, remote, remote_*)",
                ))
            }
        }
    }
    if let Some(r) = remote {
        if r.url.is_empty() {
            return Err(bad("remote", "", "remote_* options need remote=URL"));
        }
        c.remote = Some(r);
    }
    if c.disk.dir.is_none() {
        return Err(bad(
            "path",
            "",
            "a cache directory is required: spillway:///DIR",
        ));
    }
    c.validate().map_err(|e| match e {
        // Name the URI option the user wrote, not the config field.
        crate::Error::Config {
            field,
            value,
            reason,
        } => {
            let option = match field.as_str() {
                "memory.capacity" => "memory",
                "disk.capacity" => "disk",
                "disk.block_size" => "block_size",
                "disk.persist_after" => "persist_after",
                "remote.url" => "remote",
                "remote.namespace" => "remote_namespace",
                "remote.ttl" => "remote_ttl",
                "remote.timeout" => "remote_timeout",
                other => other,
            };
            bad(option, &value, &reason.replace(&field, option))
        }
        other => lance_core::Error::invalid_input(other.to_string()),
    })?;
    let handle = tokio::runtime::Handle::try_current()
        .ok()
        .filter(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread)
        .ok_or_else(|| {
            lance_core::Error::invalid_input(
                "spillway cache: build it inside a multi-threaded tokio runtime",
            )
        })?;
    let cache = tokio::task::block_in_place(|| {
        handle.block_on(TwoTierCacheBackend::from_config(&c, CodecRegistry::new()))
    })
    .map_err(|e| lance_core::Error::io(e.to_string()))?;
    Ok(Arc::new(LanceBackend::new(cache)))
}

fn tier(t: CacheTier) -> lc::CacheTier {
    match t {
        CacheTier::Resident => lc::CacheTier::Resident,
        // lance-core has no remote tier: a read costs I/O, as from disk.
        CacheTier::Local | CacheTier::Remote => lc::CacheTier::Local,
        CacheTier::Absent => lc::CacheTier::Absent,
    }
}

#[async_trait]
impl lc::CacheBackend for LanceBackend {
    async fn get_resident(&self, key: &lc::InternalCacheKey) -> Option<CacheEntry> {
        self.cache.get_resident(&key_of(key)).await
    }

    async fn peek_resident(&self, key: &lc::InternalCacheKey) -> bool {
        CacheBackend::peek_tier(&self.cache, &key_of(key)).await == CacheTier::Resident
    }

    async fn peek_tier(&self, key: &lc::InternalCacheKey) -> lc::CacheTier {
        tier(CacheBackend::peek_tier(&self.cache, &key_of(key)).await)
    }

    async fn get_without_promotion(
        &self,
        key: &lc::InternalCacheKey,
        codec: Option<CacheCodec>,
    ) -> Option<CacheEntry> {
        self.cache
            .get_with_codec(&key_of(key), codec_of(codec), false)
            .await
    }

    async fn get(
        &self,
        key: &lc::InternalCacheKey,
        codec: Option<CacheCodec>,
    ) -> Option<CacheEntry> {
        let key = key_of(key);
        // The codec is only wrapped when a lower tier needs it.
        if let Some(hit) = self.cache.get_resident(&key).await {
            return Some(hit);
        }
        self.cache.get_with_codec(&key, codec_of(codec), true).await
    }

    async fn insert(
        &self,
        key: &lc::InternalCacheKey,
        entry: CacheEntry,
        size_bytes: usize,
        codec: Option<CacheCodec>,
    ) {
        self.cache
            .insert_with_codec(&key_of(key), entry, size_bytes, codec_of(codec))
            .await;
    }

    async fn get_or_insert<'a>(
        &self,
        key: &lc::InternalCacheKey,
        loader: std::pin::Pin<
            Box<
                dyn std::future::Future<Output = lance_core::Result<(CacheEntry, usize)>>
                    + Send
                    + 'a,
            >,
        >,
        codec: Option<CacheCodec>,
    ) -> lance_core::Result<(CacheEntry, bool)> {
        let loader = Box::pin(async move { loader.await.map_err(crate::Error::external) });
        self.cache
            .get_or_insert_with_codec(&key_of(key), loader, codec_of(codec))
            .await
            .map_err(|e| lance_core::Error::io(e.to_string()))
    }

    async fn clear(&self) {
        CacheBackend::clear(&self.cache).await;
    }

    async fn num_entries(&self) -> usize {
        CacheBackend::num_entries(&self.cache).await
    }

    async fn size_bytes(&self) -> usize {
        CacheBackend::size_bytes(&self.cache).await
    }

    fn approx_num_entries(&self) -> usize {
        CacheBackend::approx_num_entries(&self.cache)
    }

    fn approx_size_bytes(&self) -> usize {
        CacheBackend::approx_size_bytes(&self.cache)
    }

    fn capacity_bytes(&self) -> Option<usize> {
        usize::try_from(self.cache.memory_capacity()).ok()
    }
}
