//! Where everything lives on the server.
//!
//! Keys are spread over `BUCKETS` hash tags, so that on a Redis Cluster
//! they spread over the masters while each record sits in the same slot as
//! the two keys its scripts check it against: its bucket's invalidation
//! table and its bucket's floor (see `scripts`). An invalidation is written
//! to every bucket's table, which is what lets a read check it atomically.
//! The notice counter and log share one more tag.

use crate::InternalCacheKey;

/// Hash tags records are spread over.
pub(crate) const BUCKETS: u64 = 256;
/// Notices kept in the log for processes that missed them.
pub(crate) const LOG_CAP: usize = 10_000;

#[derive(Clone, Debug)]
pub(crate) struct Names {
    namespace: String,
}

impl Names {
    pub(crate) fn new(namespace: &str) -> Self {
        Self {
            namespace: namespace.to_string(),
        }
    }

    fn tag(&self, bucket: u64) -> String {
        format!("{}:{{{}/{:02x}}}", self.namespace, self.namespace, bucket)
    }

    pub(crate) fn bucket_of(key: &InternalCacheKey) -> u64 {
        key.disk_hash() % BUCKETS
    }

    /// The key's record (or fence): its 64-bit hash names it; the record's
    /// envelope names the key, and a read checks it.
    pub(crate) fn record(&self, key: &InternalCacheKey) -> String {
        format!(
            "{}:r:{:016x}",
            self.tag(Self::bucket_of(key)),
            key.disk_hash()
        )
    }

    /// Prefix → stamp of the latest invalidation, one copy per bucket.
    pub(crate) fn invalidations(&self, bucket: u64) -> String {
        format!("{}:inv", self.tag(bucket))
    }

    /// The oldest stamp a bucket accepts: set by the first write after the
    /// server started empty.
    pub(crate) fn floor(&self, bucket: u64) -> String {
        format!("{}:floor", self.tag(bucket))
    }

    fn meta(&self) -> String {
        format!("{}:{{{}/meta}}", self.namespace, self.namespace)
    }

    /// Number of the last notice.
    pub(crate) fn generation(&self) -> String {
        format!("{}:gen", self.meta())
    }

    /// Identity of the server's data set: set once, gone when it restarts empty.
    pub(crate) fn boot(&self) -> String {
        format!("{}:boot", self.meta())
    }

    /// The last `LOG_CAP` notices.
    pub(crate) fn log(&self) -> String {
        format!("{}:log", self.meta())
    }

    /// The pub/sub channel notices are published on.
    pub(crate) fn channel(&self) -> String {
        format!("{}:notices", self.namespace)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_shares_its_hash_tag_with_what_it_is_checked_against() {
        let names = Names::new("app");
        let key = InternalCacheKey::new("p", "k", "T");
        let tag = |s: &str| s[s.find('{').unwrap()..=s.find('}').unwrap()].to_string();
        let bucket = Names::bucket_of(&key);
        assert_eq!(tag(&names.record(&key)), tag(&names.invalidations(bucket)));
        assert_eq!(tag(&names.record(&key)), tag(&names.floor(bucket)));
        assert_eq!(tag(&names.generation()), tag(&names.log()));
        assert_eq!(tag(&names.generation()), tag(&names.boot()));
        assert!(names.record(&key).starts_with("app:"));
    }
}
