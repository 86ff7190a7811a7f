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
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct InternalCacheKey {
    prefix: Arc<str>,
    key: Arc<str>,
    type_name: &'static str,
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
        Self {
            prefix: prefix.into(),
            key: key.into(),
            type_name,
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

    /// A stable 64-bit identity for the disk tier. xxh3 is specified and
    /// seed-free, so the same key maps to the same disk slot in every process
    /// and Rust version (std's `DefaultHasher` promises neither). Length
    /// prefixes keep `("ab","c")` and `("a","bc")` apart.
    pub(crate) fn disk_hash(&self) -> u64 {
        let mut hasher = xxhash_rust::xxh3::Xxh3::new();
        for part in [
            self.prefix.as_bytes(),
            self.key.as_bytes(),
            self.type_name.as_bytes(),
        ] {
            hasher.update(&(part.len() as u64).to_le_bytes());
            hasher.update(part);
        }
        hasher.digest()
    }
}

impl std::fmt::Display for InternalCacheKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}<{}>", self.prefix, self.key, self.type_name)
    }
}
