//! Write-behind names a scheduled version by its key's hash and sequence
//! number only (see `write_behind`), and finds the key again in the
//! placement table when it falls due: keys that share a hash must each be
//! found, by version, not the first key with that hash.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::TwoTierCacheBackend;
use crate::{CacheBackend, CacheEntry, CodecRegistry, InternalCacheKey};

const VALUE: usize = 4 << 10;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_sharing_a_hash_are_each_persisted() {
    let dir = tempfile::tempdir().unwrap();
    let cache = TwoTierCacheBackend::builder()
        .memory_capacity(4 << 20)
        .disk_dir(dir.path())
        .disk_capacity(8 << 20)
        .block_size(64 << 10)
        .persist_after(Duration::from_millis(20))
        .codecs(CodecRegistry::new().register::<Vec<u8>>("Blob", 1).unwrap())
        .build()
        .await
        .unwrap();
    let keys = ["a", "b", "c"].map(|k| InternalCacheKey::new("k", k, "Blob").with_hash(42));
    for (i, key) in keys.iter().enumerate() {
        let value: CacheEntry = Arc::new(vec![i as u8; VALUE]);
        CacheBackend::insert(&cache, key, value, VALUE).await;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while cache.stats().spill.persisted < keys.len() as u64 {
        assert!(Instant::now() < deadline, "{:#?}", cache.stats());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let s = cache.stats();
    assert_eq!(
        s.spill.persisted,
        keys.len() as u64,
        "each version once: {s:#?}"
    );
    cache.close().await.unwrap();
}
