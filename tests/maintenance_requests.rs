//! Memory hits hand moka's maintenance to the cache's maintenance task
//! (see `src/maintenance_requests.rs`).

mod common;

use std::time::Duration;

use common::*;

/// Two inserts leave their writes queued in moka (below the writers' own
/// threshold, a quarter of the spill queue's budget), and moka's entry
/// count moves only when its maintenance applies them. Nothing else runs
/// it here: the interval is an hour, and 32 reads are half of the 64 at
/// which moka would run it on the reader. So the count reaching 2 is the
/// maintenance task answering the 32nd memory hit's request.
#[tokio::test]
async fn thirty_two_memory_hits_have_the_maintenance_task_apply_queued_writes() {
    let dir = tempfile::tempdir().unwrap();
    let cache = small(dir.path())
        .maintenance_interval(Duration::from_secs(3600))
        .build()
        .await
        .unwrap();
    insert(&cache, &key("k", 0), blob(0, 1)).await;
    insert(&cache, &key("k", 1), blob(1, 1)).await;
    for i in 0..32 {
        let (_, tier) = cache.get_with_tier(&key("k", i % 2)).await.unwrap();
        assert_eq!(tier, spillway::CacheTier::Resident);
    }
    wait_for_stats(&cache, "moka to count both entries", |s| {
        s.memory.entries == 2
    })
    .await;
    // Served as before, from memory.
    let entry = cache.get(&key("k", 1)).await.unwrap();
    assert_eq!(as_blob(&entry), &blob(1, 1));
}
