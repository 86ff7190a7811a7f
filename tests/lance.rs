//! spillway behind Lance's own `LanceCache` (feature `lance`).
#![cfg(feature = "lance")]

mod common;

use std::borrow::Cow;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use lance_core::cache::{
    CacheCodec, CacheCodecImpl, CacheEntryReader, CacheEntryWriter, CacheKey, LanceCache,
};
use lance_core::deepsize::{Context, DeepSizeOf};
use spillway::lance::{register, LanceBackend};
use spillway::TwoTierCacheBackend;

/// A postings list; `V` is the body version its codec writes.
#[derive(Debug, PartialEq)]
struct Postings<const V: u32> {
    id: u32,
    body: Vec<u8>,
}

fn postings<const V: u32>(id: u32) -> Postings<V> {
    Postings {
        id,
        body: vec![(id % 251) as u8; 8 << 10],
    }
}

impl<const V: u32> DeepSizeOf for Postings<V> {
    fn deep_size_of_children(&self, _context: &mut Context) -> usize {
        self.body.len()
    }
}

impl<const V: u32> CacheCodecImpl for Postings<V> {
    const TYPE_ID: &'static str = "spillway.test.Postings";
    const CURRENT_VERSION: u32 = V;

    fn serialize(&self, writer: &mut CacheEntryWriter<'_>) -> lance_core::Result<()> {
        let mut raw = self.id.to_le_bytes().to_vec();
        raw.extend_from_slice(&self.body);
        writer.write_raw(&raw)
    }

    fn deserialize(reader: &mut CacheEntryReader<'_>) -> lance_core::Result<Self> {
        let raw = reader.read_raw()?;
        let id = raw
            .get(..4)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_le_bytes)
            .ok_or_else(|| lance_core::Error::io("short postings".to_string()))?;
        Ok(Self {
            id,
            body: raw[4..].to_vec(),
        })
    }
}

/// Keys of postings written by codec version `V`; `CODEC` false: no codec.
struct Key<const V: u32, const CODEC: bool>(u32);

impl<const V: u32, const CODEC: bool> CacheKey for Key<V, CODEC> {
    type ValueType = Postings<V>;
    fn key(&self) -> Cow<'_, str> {
        Cow::Owned(self.0.to_string())
    }
    fn type_name() -> &'static str {
        "Postings"
    }
    fn codec() -> Option<CacheCodec> {
        CODEC.then(CacheCodec::from_impl::<Postings<V>>)
    }
}

/// A key of version-1 postings with their codec.
#[allow(non_snake_case)]
fn V1(id: u32) -> Key<1, true> {
    Key(id)
}

async fn backend(dir: &std::path::Path) -> (LanceCache, TwoTierCacheBackend) {
    let cache = common::small(dir).build().await.unwrap();
    (
        LanceCache::with_backend(Arc::new(LanceBackend::new(cache.clone()))),
        cache,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_past_the_memory_budget_come_back_from_disk() {
    let dir = tempfile::tempdir().unwrap();
    let (lance, cache) = backend(dir.path()).await;
    for i in 0..100 {
        lance.insert_with_key(&V1(i), Arc::new(postings(i))).await;
    }
    cache.flush().await;
    assert!(cache.stats().spill.written > 50, "{:#?}", cache.stats());
    for i in 0..100 {
        let got = lance
            .get_with_key(&V1(i))
            .await
            .unwrap_or_else(|| panic!("postings {i} lost"));
        assert_eq!(*got, postings(i));
    }
    assert!(cache.stats().disk.hits > 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reopened_cache_serves_entries_without_the_loader() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (lance, cache) = backend(dir.path()).await;
        for i in 0..40 {
            lance.insert_with_key(&V1(i), Arc::new(postings(i))).await;
        }
        cache.close().await.unwrap();
    }
    let (lance, _cache) = backend(dir.path()).await;
    for i in 0..40 {
        let got = lance
            .get_or_insert_with_key(V1(i), || async move {
                panic!("the loader ran for {i} after a restart")
            })
            .await
            .unwrap();
        assert_eq!(*got, postings(i));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_without_a_codec_never_touch_the_disk() {
    let dir = tempfile::tempdir().unwrap();
    let (lance, cache) = backend(dir.path()).await;
    for i in 0..100 {
        lance
            .insert_with_key(&Key::<1, false>(i), Arc::new(postings(i)))
            .await;
    }
    cache.flush().await;
    let s = cache.stats();
    assert_eq!((s.spill.queued, s.disk.bytes_written), (0, 0), "{s:#?}");
    assert!(s.memory.evicted_memory_only > 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_newer_than_the_codec_is_a_miss_and_the_loader_runs() {
    let dir = tempfile::tempdir().unwrap();
    let (lance, cache) = backend(dir.path()).await;
    // Written by a newer build (body version 2) ...
    for i in 0..60 {
        lance
            .insert_with_key(&Key::<2, true>(i), Arc::new(postings(i)))
            .await;
    }
    cache.flush().await;
    // ... read by this one (version 1): a counted miss, then the loader.
    let loads = AtomicUsize::new(0);
    let got = lance
        .get_or_insert_with_key(V1(0), || async {
            loads.fetch_add(1, Ordering::SeqCst);
            Ok(postings(0))
        })
        .await
        .unwrap();
    assert_eq!(*got, postings(0));
    assert_eq!(loads.load(Ordering::SeqCst), 1);
    assert_eq!(
        cache.stats().decode_misses.incompatible,
        1,
        "{:#?}",
        cache.stats()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn get_or_insert_runs_one_loader_for_concurrent_callers() {
    let dir = tempfile::tempdir().unwrap();
    let (lance, cache) = backend(dir.path()).await;
    let loads = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (lance, cache, loads) = (lance.clone(), cache.clone(), loads.clone());
        tasks.push(tokio::spawn(async move {
            lance
                .get_or_insert_with_key(V1(7), || async move {
                    loads.fetch_add(1, Ordering::SeqCst);
                    // Finish only once the other seven callers are parked.
                    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
                    while cache.stats().loader_waiters < 7 {
                        assert!(std::time::Instant::now() < deadline, "callers never parked");
                        tokio::task::yield_now().await;
                    }
                    Ok(postings(7))
                })
                .await
                .unwrap()
        }));
    }
    for t in tasks {
        assert_eq!(*t.await.unwrap(), postings(7));
    }
    assert_eq!(loads.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn build_from_uri_builds_spillway_and_names_bad_options() {
    register().unwrap();
    register().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let uri = format!(
        "spillway://{}?memory=1MiB&disk=64MiB&block_size=1MiB",
        dir.path().display()
    );
    let backend = lance_core::cache::build_from_uri(&uri).unwrap();
    assert_eq!(backend.capacity_bytes(), Some(1 << 20));
    let lance = LanceCache::with_backend(backend);
    lance.insert_with_key(&V1(1), Arc::new(postings(1))).await;
    assert_eq!(*lance.get_with_key(&V1(1)).await.unwrap(), postings(1));

    let other = tempfile::tempdir().unwrap();
    let err = lance_core::cache::build_from_uri(&format!(
        "spillway://{}?memroy=1MiB",
        other.path().display()
    ))
    .unwrap_err();
    assert!(err.to_string().contains("memroy"), "{err}");
    let err = lance_core::cache::build_from_uri(&format!(
        "spillway://{}?disk=lots",
        other.path().display()
    ))
    .unwrap_err();
    assert!(
        err.to_string().contains("disk") && err.to_string().contains("lots"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peek_tier_and_get_without_promotion_through_lance_trait() {
    use lance_core::cache::{CacheBackend as _, CacheTier, InternalCacheKey};
    let dir = tempfile::tempdir().unwrap();
    let cache = common::small(dir.path()).build().await.unwrap();
    let backend = LanceBackend::new(cache.clone());
    let codec = Some(CacheCodec::from_impl::<Postings<1>>());
    let key = |i: u32| {
        let mut bytes = [0u8; 16];
        bytes[..4].copy_from_slice(&i.to_le_bytes());
        InternalCacheKey::from_bytes(bytes)
    };
    for i in 0..60 {
        let entry: lance_core::cache::CacheEntry = Arc::new(postings::<1>(i));
        backend.insert(&key(i), entry, 8 << 10, codec).await;
    }
    cache.flush().await;
    assert_eq!(backend.peek_tier(&key(0)).await, CacheTier::Local);
    assert!(!backend.peek_resident(&key(0)).await);
    let hit = backend
        .get_without_promotion(&key(0), codec)
        .await
        .expect("disk hit");
    assert_eq!(hit.downcast_ref::<Postings<1>>(), Some(&postings(0)));
    assert_eq!(
        backend.peek_tier(&key(0)).await,
        CacheTier::Local,
        "not promoted"
    );
    assert!(backend.get(&key(0), codec).await.is_some());
    assert_eq!(
        backend.peek_tier(&key(0)).await,
        CacheTier::Resident,
        "promoted"
    );
    assert!(backend.get_resident(&key(0)).await.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uri_budget_errors_name_the_uri_option_and_the_minimum() {
    register().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let err = lance_core::cache::build_from_uri(&format!(
        "spillway://{}?memory=0&disk=64MiB",
        dir.path().display()
    ))
    .unwrap_err()
    .to_string();
    assert!(err.contains("memory=") && err.contains("16384"), "{err}");
    let err = lance_core::cache::build_from_uri(&format!(
        "spillway://{}?disk=1MiB",
        dir.path().display()
    ))
    .unwrap_err()
    .to_string();
    assert!(err.contains("disk=") && err.contains("at least"), "{err}");
    let err = lance_core::cache::build_from_uri(&format!(
        "spillway://{}?persist_after=soon",
        dir.path().display()
    ))
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("persist_after") && err.contains("soon"),
        "{err}"
    );
    let err = lance_core::cache::build_from_uri(&format!(
        "spillway://{}?compression=gzip",
        dir.path().display()
    ))
    .unwrap_err()
    .to_string();
    assert!(err.contains("compression") && err.contains("gzip"), "{err}");
    // A valid choice builds.
    lance_core::cache::build_from_uri(&format!(
        "spillway://{}?memory=4MiB&disk=64MiB&compression=zstd",
        dir.path().display()
    ))
    .unwrap();
}

/// A `LanceCache` over `build_from_uri`'s backend: an `Arc<dyn CacheBackend>`
/// with no `close()`. After it idled for twice `persist_after` and was
/// dropped, a new one on the same directory serves everything without the
/// loader, large entries included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_uri_backend_dropped_without_close_comes_back_warm() {
    register().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let uri = format!(
        "spillway://{}?memory=4MiB&disk=64MiB&block_size=1MiB&persist_after=1s",
        dir.path().display()
    );
    let big = |id: u32| Postings::<1> {
        id,
        body: vec![(id % 251) as u8; 250_000],
    };
    {
        let lance = LanceCache::with_backend(lance_core::cache::build_from_uri(&uri).unwrap());
        // 40 entries of 250 KB through 4 MiB of memory: most spill.
        for i in 0..40 {
            lance.insert_with_key(&V1(i), Arc::new(big(i))).await;
        }
        // The rest stay resident; write-behind persists them while it idles.
        for i in 100..104 {
            lance.insert_with_key(&V1(i), Arc::new(postings(i))).await;
        }
        // The idle period is the scenario: no signal to wait for is
        // visible through Lance's trait, which is the point.
        tokio::time::sleep(std::time::Duration::from_secs(2)).await;
        // Dropped here without close().
    }
    let backend = lance_core::cache::build_from_uri(&uri).unwrap();
    let lance = LanceCache::with_backend(backend);
    let loads = Arc::new(AtomicUsize::new(0));
    for i in (0..40).chain(100..104) {
        let loads = loads.clone();
        let got = lance
            .get_or_insert_with_key(V1(i), || async move {
                loads.fetch_add(1, Ordering::Relaxed);
                Ok(postings(i))
            })
            .await
            .unwrap();
        assert_eq!(got.id, i);
        if i < 40 {
            assert_eq!(got.body.len(), 250_000, "entry {i} was reloaded");
        }
    }
    assert_eq!(
        loads.load(Ordering::Relaxed),
        0,
        "entries needed their loader"
    );
}

/// Two Lance caches on different directories share entries through a real
/// `redis-server` named in the URI (`remote=`, percent-encoded).
#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_uri_backends_share_entries_through_a_remote_option() {
    register().unwrap();
    let server = common::redis_server::RedisServer::start();
    let remote = server.url().replace('?', "%3F");
    let uri = |dir: &std::path::Path| {
        format!(
            "spillway://{}?memory=4MiB&disk=64MiB&block_size=1MiB&remote={remote}&remote_namespace=lance&remote_write_policy=on_insert&remote_required=true",
            dir.display()
        )
    };
    let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a =
        LanceCache::with_backend(lance_core::cache::build_from_uri(&uri(a_dir.path())).unwrap());
    let b =
        LanceCache::with_backend(lance_core::cache::build_from_uri(&uri(b_dir.path())).unwrap());
    a.insert_with_key(&V1(7), Arc::new(postings(7))).await;
    // a's write goes out in the background: b finds it once it is there.
    let start = std::time::Instant::now();
    let got = loop {
        if let Some(got) = b.get_with_key(&V1(7)).await {
            break got;
        }
        assert!(
            start.elapsed() < std::time::Duration::from_secs(30),
            "never shared"
        );
        tokio::task::yield_now().await;
    };
    assert_eq!(*got, postings(7));
    assert_eq!(server.keys("lance:*:r:*").len(), 1);

    // A bad remote option is named, and a password in it is not shown.
    let err = lance_core::cache::build_from_uri(&format!(
        "spillway://{}?remote=redis://u:hunter22@127.0.0.1:1&remote_required=true",
        tempfile::tempdir().unwrap().path().display()
    ))
    .unwrap_err();
    assert!(!err.to_string().contains("hunter22"), "{err}");
    let err = lance_core::cache::build_from_uri(&format!(
        "spillway://{}?remote_namespace=x",
        tempfile::tempdir().unwrap().path().display()
    ))
    .unwrap_err();
    assert!(err.to_string().contains("remote"), "{err}");
}
