//! Cache keys and the type-erased cache entry.

use std::any::Any;
use std::sync::Arc;

/// A cached value, type-erased. Typed access goes through [`crate::TypedCache`].
///
/// ```
/// use std::sync::Arc;
/// let entry: spillway::CacheEntry = Arc::new(String::from("hello"));
/// assert_eq!(entry.downcast_ref::<String>().unwrap(), "hello");
/// ```
pub type CacheEntry = Arc<dyn Any + Send + Sync>;

/// The key every backend sees: a namespace prefix, the user's key, and a type
/// tag that keeps values of different types under the same key apart.
///
/// The type tag is an explicit `&'static str` chosen by the application (for
/// example `"IndexMetadata"`), never a compiler-derived identity: it is written
/// to disk and must mean the same thing in the next process.
///
/// ```
/// use spillway::InternalCacheKey;
/// let key = InternalCacheKey::new("dataset/v3", "index-7", "IndexMetadata");
/// assert_eq!(key.prefix(), "dataset/v3");
/// assert_eq!(key.key(), "index-7");
/// assert_eq!(key.type_name(), "IndexMetadata");
/// assert!(key.starts_with("dataset/"));
/// ```
#[derive(Clone, Debug)]
pub struct InternalCacheKey {
    prefix: Arc<str>,
    key: Arc<str>,
    type_name: &'static str,
    /// xxh3 of the three parts, computed once: moka's map, its key locks,
    /// the placement table and the disk tier all use it instead of
    /// hashing the strings again (see [`KeyHashBuilder`]).
    hash: u64,
}

/// Equality stays exact: two keys whose hashes collide are still told apart.
/// Clones of one key share their strings, and most comparisons are between
/// such clones (moka's key, the placement table's, the spill queue's), so
/// the same allocation answers first: no call into `memcmp`, and no read
/// of the other copy's (often cold) text.
impl PartialEq for InternalCacheKey {
    fn eq(&self, other: &Self) -> bool {
        fn same(a: &Arc<str>, b: &Arc<str>) -> bool {
            Arc::ptr_eq(a, b) || a == b
        }
        self.hash == other.hash
            && (std::ptr::eq(self.type_name, other.type_name) || self.type_name == other.type_name)
            && same(&self.key, &other.key)
            && same(&self.prefix, &other.prefix)
    }
}

impl Eq for InternalCacheKey {}

impl std::hash::Hash for InternalCacheKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash);
    }
}

/// A `BuildHasher` for maps keyed by [`InternalCacheKey`]: it passes the
/// key's precomputed hash through instead of hashing again. Other values
/// written to it are mixed (FxHash-style), so it stays a sound hasher.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct KeyHashBuilder;

impl std::hash::BuildHasher for KeyHashBuilder {
    type Hasher = KeyHasher;
    fn build_hasher(&self) -> KeyHasher {
        KeyHasher(0)
    }
}

/// See [`KeyHashBuilder`].
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct KeyHasher(u64);

impl std::hash::Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(5) ^ u64::from(b)).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
        }
    }
    fn write_u64(&mut self, n: u64) {
        // The first u64 is an InternalCacheKey's own hash: already mixed.
        self.0 = if self.0 == 0 {
            n
        } else {
            (self.0.rotate_left(5) ^ n).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95)
        };
    }
}

impl InternalCacheKey {
    /// Builds a key from its three parts.
    ///
    /// ```
    /// let key = spillway::InternalCacheKey::new("p", "k", "T");
    /// assert_eq!(key.to_string(), "p/k<T>");
    /// ```
    pub fn new(
        prefix: impl Into<Arc<str>>,
        key: impl Into<Arc<str>>,
        type_name: &'static str,
    ) -> Self {
        let (prefix, key) = (prefix.into(), key.into());
        let hash = hash_parts(&prefix, &key, type_name);
        Self {
            prefix,
            key,
            type_name,
            hash,
        }
    }

    /// The namespace prefix.
    ///
    /// ```
    /// assert_eq!(spillway::InternalCacheKey::new("p", "k", "T").prefix(), "p");
    /// ```
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The user's key within the prefix.
    ///
    /// ```
    /// assert_eq!(spillway::InternalCacheKey::new("p", "k", "T").key(), "k");
    /// ```
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The type tag of the value stored under this key.
    ///
    /// ```
    /// assert_eq!(spillway::InternalCacheKey::new("p", "k", "T").type_name(), "T");
    /// ```
    pub fn type_name(&self) -> &'static str {
        self.type_name
    }

    /// True when this key's prefix starts with `prefix` (the rule
    /// [`crate::CacheBackend::invalidate_prefix`] uses).
    ///
    /// ```
    /// let key = spillway::InternalCacheKey::new("a/b", "k", "T");
    /// assert!(key.starts_with("a/"));
    /// assert!(!key.starts_with("b"));
    /// ```
    pub fn starts_with(&self, prefix: &str) -> bool {
        self.prefix.starts_with(prefix)
    }

    /// Bytes this key costs in memory, charged against the memory budget.
    pub(crate) fn footprint(&self) -> usize {
        std::mem::size_of::<Self>() + self.prefix.len() + self.key.len()
    }

    /// The prefix as stored, to share rather than copy.
    pub(crate) fn shared_prefix(&self) -> &Arc<str> {
        &self.prefix
    }

    /// The key text as stored, to share rather than copy.
    pub(crate) fn shared_key(&self) -> &Arc<str> {
        &self.key
    }

    /// A stable 64-bit identity for the disk tier. xxh3 is specified and
    /// seed-free, so the same key maps to the same disk slot in every process
    /// and Rust version (std's `DefaultHasher` promises neither). Length
    /// prefixes keep `("ab","c")` and `("a","bc")` apart.
    /// The key's 64-bit hash (xxh3 of its parts): stable across processes,
    /// so it also addresses the key's record on disk.
    pub(crate) fn disk_hash(&self) -> u64 {
        self.hash
    }

    /// This key with another hash: a forced collision, for tests.
    #[cfg(test)]
    pub(crate) fn with_hash(mut self, hash: u64) -> Self {
        self.hash = hash;
        self
    }
}

/// xxh3 over the three parts, each preceded by its length so that no two
/// different splits of the same bytes hash alike.
fn hash_parts(prefix: &str, key: &str, type_name: &str) -> u64 {
    let parts = [prefix.as_bytes(), key.as_bytes(), type_name.as_bytes()];
    // Each part after its length, so that moving bytes between parts
    // changes the hash. XXH3 over the parts in turn equals XXH3 over them
    // laid end to end, so a key that fits a stack buffer takes the one-shot
    // function: the same hash (so the same foyer keys on disk) in 12 ns
    // instead of 25 for a 7-byte key, the streaming state's set-up saved.
    let total: usize = parts.iter().map(|p| 8 + p.len()).sum();
    if total <= ONE_SHOT {
        let mut buf = [0u8; ONE_SHOT];
        let mut at = 0;
        for part in parts {
            buf[at..at + 8].copy_from_slice(&(part.len() as u64).to_le_bytes());
            buf[at + 8..at + 8 + part.len()].copy_from_slice(part);
            at += 8 + part.len();
        }
        return xxhash_rust::xxh3::xxh3_64(&buf[..at]);
    }
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    for part in parts {
        hasher.update(&(part.len() as u64).to_le_bytes());
        hasher.update(part);
    }
    hasher.digest()
}

/// The longest key (its three parts and their lengths) hashed in one shot.
const ONE_SHOT: usize = 256;

impl std::fmt::Display for InternalCacheKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}<{}>", self.prefix, self.key, self.type_name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::BuildHasher;

    #[test]
    fn keys_hash_once_and_the_maps_reuse_it() {
        let k = InternalCacheKey::new("p", "k", "T");
        assert_eq!(KeyHashBuilder.hash_one(&k), k.disk_hash());
        assert_eq!(k.disk_hash(), hash_parts("p", "k", "T"));
        // Parts are length-delimited: moving bytes between them changes the hash.
        assert_ne!(hash_parts("pk", "", "T"), hash_parts("p", "k", "T"));
    }

    /// Key hashes are foyer's keys and the journal's: a change would make
    /// every cache directory written before serve nothing (never another
    /// key's value: a read checks the record's key). Pinned, for keys
    /// hashed in one shot and by the streaming state alike.
    #[test]
    fn key_hashes_stay_what_directories_were_written_with() {
        let streaming = |parts: [&str; 3]| {
            let mut hasher = xxhash_rust::xxh3::Xxh3::new();
            for part in parts {
                hasher.update(&(part.len() as u64).to_le_bytes());
                hasher.update(part.as_bytes());
            }
            hasher.digest()
        };
        assert_eq!(streaming(["p", "k", "T"]), 0x0eef_d54a_ebff_30fd);
        assert_eq!(hash_parts("p", "k", "T"), 0x0eef_d54a_ebff_30fd);
        for len in [0, 1, 100, 231, 232, 233, 1000] {
            let long = "x".repeat(len);
            for parts in [[&*long, "k", "T"], ["ds", &*long, "Blob"], ["", "", &*long]] {
                assert_eq!(
                    hash_parts(parts[0], parts[1], parts[2]),
                    streaming(parts),
                    "{len}"
                );
            }
        }
    }

    #[test]
    fn equal_hashes_never_make_different_keys_equal() {
        let a = InternalCacheKey::new("p", "a", "T");
        let mut b = InternalCacheKey::new("p", "b", "T");
        b.hash = a.hash; // a forced collision
        assert_ne!(a, b);
        let mut map = std::collections::HashMap::with_hasher(KeyHashBuilder);
        map.insert(a.clone(), 1);
        map.insert(b.clone(), 2);
        assert_eq!((map[&a], map[&b]), (1, 2));
    }

    #[test]
    fn keys_are_equal_by_text_whether_or_not_they_share_it() {
        let a = InternalCacheKey::new("p", "k", "T");
        // Built apart: equal text in other allocations.
        let b = InternalCacheKey::new(String::from("p"), String::from("k"), "T");
        assert!(!Arc::ptr_eq(&a.key, &b.key));
        assert_eq!(a, b);
        assert_eq!(a, a.clone());
        // Shared prefix text, another key; and a type tag with equal hash.
        let c = InternalCacheKey::new(a.prefix.clone(), "j", "T").with_hash(a.hash);
        assert_ne!(a, c);
        let d = InternalCacheKey::new(a.prefix.clone(), a.key.clone(), "U").with_hash(a.hash);
        assert_ne!(a, d);
        let e = InternalCacheKey::new("q", a.key.clone(), "T").with_hash(a.hash);
        assert_ne!(a, e);
    }
}
