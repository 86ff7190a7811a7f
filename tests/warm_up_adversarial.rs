//! Adversarial tests of the background warm-up on reopen: budget (no
//! eviction, no overshoot) with entries of varied sizes, `warmed()` never
//! hanging (many waiters, racing closes, nothing to warm, nothing that
//! fits), and freshness of mutations made while warm-up reads are in flight.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use common::*;
use spillway::{
    CacheBackend, CacheEntry, CacheTier, Codec, CodecError, CodecRegistry, InternalCacheKey,
    SerdeCodec, TwoTierBuilder, TwoTierCacheBackend,
};

const LIMIT: Duration = Duration::from_secs(60);

/// A value that says which key and version it is: `[id: u64 LE][tag][version...]`.
fn val(tag: u8, id: usize, version: u8, len: usize) -> Vec<u8> {
    assert!(len > 9);
    let mut v = vec![version; len];
    v[..8].copy_from_slice(&(id as u64).to_le_bytes());
    v[8] = tag;
    v
}

fn describe(v: &[u8]) -> (u8, usize, u8) {
    (
        v[8],
        u64::from_le_bytes(v[..8].try_into().unwrap()) as usize,
        v[v.len() - 1],
    )
}

fn prefix_of(tag: u8) -> String {
    format!("p{tag}")
}

fn tkey(tag: u8, id: usize) -> InternalCacheKey {
    key(&prefix_of(tag), id)
}

/// Inserts `value` declaring exactly what it costs (its length).
async fn put(cache: &TwoTierCacheBackend, k: &InternalCacheKey, value: Vec<u8>) {
    let len = value.len();
    cache.insert(k, Arc::new(value) as CacheEntry, len).await;
}

/// Roomy disk so that nothing is lost for want of disk space.
fn roomy(dir: &std::path::Path) -> TwoTierBuilder {
    small(dir).disk_capacity(32 << 20)
}

/// The first `slots` decodes block until the gate opens (recording which
/// value each was decoding); every later decode passes.
#[derive(Debug, Default)]
struct DecodeGate {
    state: Mutex<GateState>,
    changed: Condvar,
}

#[derive(Debug, Default)]
struct GateState {
    open: bool,
    slots: usize,
    held: Vec<(u8, usize, u8)>,
}

impl DecodeGate {
    fn pass(&self, what: (u8, usize, u8)) {
        let mut s = self.state.lock().unwrap();
        if s.open || s.slots == 0 {
            return;
        }
        s.slots -= 1;
        s.held.push(what);
        self.changed.notify_all();
        while !s.open {
            s = self.changed.wait(s).unwrap();
        }
    }

    fn open(&self) {
        self.state.lock().unwrap().open = true;
        self.changed.notify_all();
    }

    /// Waits (on a blocking thread) until `n` decodes are held; returns them.
    async fn held(self: &Arc<Self>, n: usize) -> Vec<(u8, usize, u8)> {
        let gate = self.clone();
        tokio::task::spawn_blocking(move || {
            let deadline = Instant::now() + Duration::from_secs(30);
            let mut s = gate.state.lock().unwrap();
            while s.held.len() < n {
                if Instant::now() >= deadline {
                    s.open = true;
                    gate.changed.notify_all();
                }
                assert!(
                    Instant::now() < deadline,
                    "only {} of {n} warm-up decodes reached the gate",
                    s.held.len()
                );
                s = gate
                    .changed
                    .wait_timeout(s, Duration::from_millis(200))
                    .unwrap()
                    .0;
            }
            s.held.clone()
        })
        .await
        .unwrap()
    }
}

/// Opens the gate when dropped, so that a failing test does not leave a
/// runtime worker blocked (which would hang the runtime's shutdown).
struct OpenOnDrop(Arc<DecodeGate>);

impl Drop for OpenOnDrop {
    fn drop(&mut self) {
        self.0.open();
    }
}

#[derive(Debug)]
struct GatedDecode {
    gate: Arc<DecodeGate>,
    inner: SerdeCodec<Vec<u8>>,
}

impl Codec for GatedDecode {
    fn type_version(&self) -> u32 {
        1
    }
    fn encode(&self, entry: &CacheEntry, out: &mut Vec<u8>) -> Result<(), CodecError> {
        self.inner.encode(entry, out)
    }
    fn decode(&self, version: u32, payload: &[u8]) -> Result<CacheEntry, CodecError> {
        let entry = self.inner.decode(version, payload)?;
        if let Some(v) = entry.downcast_ref::<Vec<u8>>() {
            self.gate.pass(describe(v));
        }
        Ok(entry)
    }
}

fn gated(slots: usize) -> (CodecRegistry, Arc<DecodeGate>) {
    let gate = Arc::new(DecodeGate::default());
    gate.state.lock().unwrap().slots = slots;
    let codec = GatedDecode {
        gate: gate.clone(),
        inner: SerdeCodec::new(1),
    };
    (
        CodecRegistry::new()
            .register_codec(BLOB, Arc::new(codec))
            .unwrap(),
        gate,
    )
}

/// Expected state: (tag, id) -> Some((version, len)) or None (gone).
type Model = BTreeMap<(u8, usize), Option<(u8, usize)>>;

async fn assert_model(cache: &TwoTierCacheBackend, model: &Model, when: &str) {
    for (&(tag, id), want) in model {
        let got = cache.get(&tkey(tag, id)).await;
        match (want, got) {
            (None, None) => {}
            (None, Some(e)) => panic!(
                "{when}: {}/{id} is gone but read back as {:?}",
                prefix_of(tag),
                describe(as_blob(&e))
            ),
            (Some(_), None) => panic!("{when}: {}/{id} was lost", prefix_of(tag)),
            (Some((version, len)), Some(e)) => assert_eq!(
                as_blob(&e),
                &val(tag, id, *version, *len),
                "{when}: {}/{id} must read as its latest value",
                prefix_of(tag)
            ),
        }
    }
}

/// (a) Entries of varied sizes, closed resident in a big memory, reopened
/// into a much smaller one: the 32 reads in flight must together fit, so the
/// memory tier never evicts and never exceeds the hot budget, at any sampled
/// moment; yet the warm-up fills it to within one entry. A second reopen
/// with room to spare still finds every entry intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn warm_up_of_varied_sizes_into_a_small_budget_never_evicts_or_overshoots() {
    let dir = tempfile::tempdir().unwrap();
    let n = 120;
    let mut rng = Rng(0x5eed_0001);
    let sizes: Vec<usize> = (0..n).map(|_| 512 + rng.below(40 << 10) as usize).collect();
    let max_len = *sizes.iter().max().unwrap();
    {
        let cache = roomy(dir.path())
            .memory_capacity(4 << 20)
            .build()
            .await
            .unwrap();
        for (i, &len) in sizes.iter().enumerate() {
            put(&cache, &tkey(1, i), val(1, i, 1, len)).await;
        }
        cache.flush().await;
        assert_eq!(cache.stats().memory.evictions, 0, "set-up evicted");
        cache.close().await.unwrap();
    }
    // Hot budget 200 KiB: room for a handful of the entries, far fewer
    // than 32 reads in flight.
    let (capacity, queue) = (296u64 << 10, 96u64 << 10);
    let hot = capacity - queue;
    let cache = roomy(dir.path())
        .memory_capacity(capacity)
        .spill_queue_capacity(queue)
        .build()
        .await
        .unwrap();
    assert_eq!(cache.stats().recovery.entries, n as u64);
    // Sample while the warm-up runs (sampling only; the end is the signal).
    let sampler = {
        let cache = cache.clone();
        tokio::spawn(async move {
            let mut worst = (0u64, 0u64);
            loop {
                let s = cache.stats();
                worst.0 = worst.0.max(s.memory.bytes);
                worst.1 = worst.1.max(s.memory.evictions);
                if s.recovery.warm_done {
                    return worst;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
    };
    tokio::time::timeout(LIMIT, cache.warmed())
        .await
        .expect("warmed() hung");
    let (max_bytes, max_evictions) = tokio::time::timeout(LIMIT, sampler)
        .await
        .expect("sampler hung")
        .unwrap();
    cache.flush().await;
    let s = cache.stats();
    assert!(s.recovery.warm_done, "{s:#?}");
    assert_eq!(max_evictions, 0, "the memory tier evicted during warm-up");
    assert_eq!(s.memory.evictions, 0, "the warm-up overshot: {s:#?}");
    assert!(
        max_bytes <= hot,
        "memory.bytes reached {max_bytes} > hot budget {hot} during warm-up"
    );
    assert!(s.memory.bytes <= hot, "{s:#?}");
    // Within one (largest) entry of the budget: the warm-up did not stop
    // early because reads in flight reserved room they never used.
    let max_cost = (max_len + 256) as u64;
    assert!(
        s.memory.bytes + max_cost > hot,
        "room for more was left ({} of {hot} used): {s:#?}",
        s.memory.bytes
    );
    assert!(s.recovery.warmed > 0);
    assert_eq!(s.recovery.warmed, s.memory.entries, "{s:#?}");
    // What was warmed is exactly what was written.
    let mut resident = 0;
    for (i, &len) in sizes.iter().enumerate() {
        if cache.peek_tier(&tkey(1, i)).await == CacheTier::Resident {
            resident += 1;
            let e = cache.get_resident(&tkey(1, i)).await.unwrap();
            assert_eq!(as_blob(&e), &val(1, i, 1, len), "p1/{i}");
        }
    }
    assert_eq!(resident, s.recovery.warmed);
    cache.close().await.unwrap();
    drop(cache);

    // Reopen with room for everything: nothing was lost by the small run.
    let cache = roomy(dir.path())
        .memory_capacity(4 << 20)
        .build()
        .await
        .unwrap();
    assert_eq!(cache.stats().recovery.entries, n as u64);
    tokio::time::timeout(LIMIT, cache.warmed())
        .await
        .expect("warmed() hung");
    let mut model = Model::new();
    for (i, &len) in sizes.iter().enumerate() {
        model.insert((1, i), Some((1, len)));
    }
    assert_model(&cache, &model, "after a second reopen").await;
    assert_eq!(cache.stats().memory.evictions, 0);
    cache.close().await.unwrap();
}

/// (b) Many concurrent `warmed()` waiters and readers, and a close racing
/// the warm-up at varying points: every waiter returns, any value read is
/// the right one, and a close that stopped a warm-up loses nothing on disk.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_waiters_and_a_close_racing_the_warm_up_all_return() {
    let dir = tempfile::tempdir().unwrap();
    let n = 300;
    fill_and_close(roomy(dir.path()).memory_capacity(4 << 20), "a", n).await;
    for round in 0..4usize {
        let cache = roomy(dir.path())
            .memory_capacity(4 << 20)
            .build()
            .await
            .unwrap();
        assert_eq!(
            cache.stats().recovery.entries,
            n as u64,
            "round {round}: entries lost by an earlier close"
        );
        let mut tasks = Vec::new();
        for _ in 0..48 {
            let cache = cache.clone();
            tasks.push(tokio::spawn(async move {
                cache.warmed().await;
            }));
        }
        for r in 0..4usize {
            let cache = cache.clone();
            tasks.push(tokio::spawn(async move {
                for i in (r..n).step_by(4) {
                    if let Some(e) = cache.get(&key("a", i)).await {
                        assert_eq!(as_blob(&e), &blob(i, 1), "a/{i}");
                    }
                }
            }));
        }
        // Close at a different point each round: at once, or after a few
        // scheduler turns.
        for _ in 0..round * 3 {
            tokio::task::yield_now().await;
        }
        tokio::time::timeout(LIMIT, cache.close())
            .await
            .expect("close hung while warming")
            .unwrap();
        for (t, task) in tasks.into_iter().enumerate() {
            tokio::time::timeout(LIMIT, task)
                .await
                .unwrap_or_else(|_| panic!("round {round}: task {t} hung after close"))
                .unwrap();
        }
        // Waiting after the close returns at once, from any clone.
        let late = cache.clone();
        tokio::time::timeout(LIMIT, late.warmed())
            .await
            .expect("warmed() after close hung");
    }
    // Nothing stopped warm-up lost a value.
    let cache = roomy(dir.path())
        .memory_capacity(4 << 20)
        .build()
        .await
        .unwrap();
    tokio::time::timeout(LIMIT, cache.warmed())
        .await
        .expect("warmed() hung");
    assert!(cache.stats().recovery.warm_done);
    for i in 0..n {
        let e = cache
            .get(&key("a", i))
            .await
            .unwrap_or_else(|| panic!("a/{i} lost"));
        assert_eq!(as_blob(&e), &blob(i, 1));
    }
    cache.close().await.unwrap();
}

/// Opens `dir` with warm-up decodes held at a gate (the first `slots`
/// decodes, which are the warm-up's since nothing else reads yet), and
/// returns the cache, the gate and what the held decodes were reading.
async fn open_with_held_warm_up(
    dir: &std::path::Path,
    slots: usize,
) -> (TwoTierCacheBackend, Arc<DecodeGate>, Vec<(u8, usize, u8)>) {
    let (codecs, gate) = gated(slots);
    let cache = roomy(dir)
        .memory_capacity(4 << 20)
        .codecs(codecs)
        .build()
        .await
        .unwrap();
    let held = gate.held(slots).await;
    assert!(
        !cache.stats().recovery.warm_done,
        "the warm-up ended with reads held"
    );
    (cache, gate, held)
}

/// (c) Removes, replacements, invalidate_prefix and clear issued while the
/// warm-up has read (and is decoding) exactly those keys: once the warm-up
/// ends, and again after a restart, every key reads as a miss or its latest
/// value; nothing removed, replaced or cleared comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mutations_during_warm_up_reads_are_never_undone() {
    tokio::time::timeout(Duration::from_secs(240), async {
        let dir = tempfile::tempdir().unwrap();
        let per = 40;
        let len = |tag: u8, id: usize| 1000 + 97 * id + 13 * tag as usize;
        let mut model = Model::new();
        {
            let cache = roomy(dir.path())
                .memory_capacity(4 << 20)
                .build()
                .await
                .unwrap();
            for tag in 1..=3u8 {
                for id in 0..per {
                    put(&cache, &tkey(tag, id), val(tag, id, 1, len(tag, id))).await;
                    model.insert((tag, id), Some((1, len(tag, id))));
                }
            }
            cache.close().await.unwrap();
        }

        // Phase 1: remove the key the warm-up is reading (its decode is
        // held at the gate; the warm-up's other reads go on meanwhile).
        {
            let (cache, gate, held) = open_with_held_warm_up(dir.path(), 1).await;
            let _open = OpenOnDrop(gate.clone());
            let (rt, rid, _) = held[0];
            cache.remove(&tkey(rt, rid)).await;
            model.insert((rt, rid), None);
            assert!(
                cache.get(&tkey(rt, rid)).await.is_none(),
                "removed key read back during warm-up"
            );
            gate.open();
            cache.warmed().await;
            assert!(cache.stats().recovery.warm_done);
            assert_model(&cache, &model, "phase 1, after warm-up").await;
            cache.close().await.unwrap();
        }

        // Phase 1b: replace the key the warm-up is reading.
        {
            let (cache, gate, held) = open_with_held_warm_up(dir.path(), 1).await;
            let _open = OpenOnDrop(gate.clone());
            let (pt, pid, _) = held[0];
            let new_len = len(pt, pid) + 7;
            put(&cache, &tkey(pt, pid), val(pt, pid, 2, new_len)).await;
            model.insert((pt, pid), Some((2, new_len)));
            let e = cache.get(&tkey(pt, pid)).await.expect("replaced key lost");
            assert_eq!(as_blob(&e), &val(pt, pid, 2, new_len));
            gate.open();
            cache.warmed().await;
            assert_model(&cache, &model, "phase 1b, after warm-up").await;
            cache.close().await.unwrap();
        }

        // Phase 2: invalidate the prefix of a key being read, then write a
        // fresh value under that prefix; replace a key of another prefix.
        {
            let (cache, gate, held) = open_with_held_warm_up(dir.path(), 1).await;
            let _open = OpenOnDrop(gate.clone());
            let (it, iid, _) = held[0];
            cache.invalidate_prefix(&prefix_of(it)).await;
            for ((tag, _), want) in model.iter_mut() {
                if *tag == it {
                    *want = None;
                }
            }
            let fresh = (iid + 1) % per;
            put(&cache, &tkey(it, fresh), val(it, fresh, 3, 2048)).await;
            model.insert((it, fresh), Some((3, 2048)));
            assert!(
                cache.get(&tkey(it, iid)).await.is_none(),
                "invalidated key read back during warm-up"
            );
            let other = if it == 1 { 2 } else { 1 };
            put(&cache, &tkey(other, 5), val(other, 5, 4, 3000)).await;
            model.insert((other, 5), Some((4, 3000)));
            gate.open();
            cache.warmed().await;
            assert_model(&cache, &model, "phase 2, after warm-up").await;
            cache.close().await.unwrap();
        }

        // Phase 3: clear while the warm-up is reading, then insert one key.
        {
            let (cache, gate, held) = open_with_held_warm_up(dir.path(), 1).await;
            let _open = OpenOnDrop(gate.clone());
            let (ct, cid, _) = held[0];
            cache.clear().await;
            for want in model.values_mut() {
                *want = None;
            }
            assert!(
                cache.get(&tkey(ct, cid)).await.is_none(),
                "cleared key read back during warm-up"
            );
            put(&cache, &tkey(3, 0), val(3, 0, 5, 1500)).await;
            model.insert((3, 0), Some((5, 1500)));
            gate.open();
            cache.warmed().await;
            assert_model(&cache, &model, "phase 3, after warm-up").await;
            cache.flush().await;
            let s = cache.stats();
            assert!(s.memory.entries <= 1, "cleared entries warmed back: {s:#?}");
            cache.close().await.unwrap();
        }

        // And a restart agrees.
        let cache = roomy(dir.path())
            .memory_capacity(4 << 20)
            .build()
            .await
            .unwrap();
        cache.warmed().await;
        assert_model(&cache, &model, "after the final restart").await;
        cache.close().await.unwrap();
    })
    .await
    .expect("the scenario hung (a gate held, or warmed() never returned)");
}

/// (d) Nothing to warm: a new directory, a directory emptied before its
/// close, and `warm_on_open(false)` over real entries. `warmed()` returns
/// at once for every waiter, `warm_done` holds, and nothing is warmed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn warmed_returns_when_there_is_nothing_to_warm() {
    let dir = tempfile::tempdir().unwrap();
    async fn check(cache: &TwoTierCacheBackend, what: &str) {
        let waiters: Vec<_> = (0..8)
            .map(|_| {
                let cache = cache.clone();
                tokio::spawn(async move { cache.warmed().await })
            })
            .collect();
        tokio::time::timeout(LIMIT, cache.warmed())
            .await
            .unwrap_or_else(|_| panic!("{what}: warmed() hung"));
        for w in waiters {
            tokio::time::timeout(LIMIT, w)
                .await
                .unwrap_or_else(|_| panic!("{what}: a waiter hung"))
                .unwrap();
        }
        let s = cache.stats();
        assert!(s.recovery.warm_done, "{what}: {s:#?}");
        assert_eq!(s.recovery.warmed, 0, "{what}: {s:#?}");
    }

    // A new directory.
    let cache = roomy(dir.path()).build().await.unwrap();
    check(&cache, "new directory").await;
    for i in 0..20 {
        insert(&cache, &key("a", i), blob(i, 1)).await;
    }
    cache.close().await.unwrap();
    drop(cache);

    // Warm-up switched off over 20 recoverable entries.
    let cache = roomy(dir.path()).warm_on_open(false).build().await.unwrap();
    assert_eq!(cache.stats().recovery.entries, 20);
    check(&cache, "warm_on_open(false)").await;
    assert_eq!(cache.stats().memory.entries, 0);
    assert_eq!(cache.peek_tier(&key("a", 3)).await, CacheTier::Local);
    cache.clear().await;
    cache.close().await.unwrap();
    drop(cache);

    // Emptied before its close.
    let cache = roomy(dir.path()).build().await.unwrap();
    assert_eq!(cache.stats().recovery.entries, 0);
    check(&cache, "cleared before close").await;
    // And after its own close, still at once.
    cache.close().await.unwrap();
    tokio::time::timeout(LIMIT, cache.warmed())
        .await
        .expect("warmed() after close hung");
}

/// (e) Entries resident at close, reopened with a hot budget smaller than
/// any one of them: no read can ever fit, so the warm-up must end (not wait
/// for room forever), warm nothing and evict nothing; the entries stay on
/// disk.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn warm_up_ends_when_no_entry_fits_the_budget() {
    let dir = tempfile::tempdir().unwrap();
    fill_and_close(roomy(dir.path()).memory_capacity(2 << 20), "a", 40).await;
    // Hot budget of exactly one value's bytes: a value plus its key does not fit.
    let cache = roomy(dir.path())
        .memory_capacity((40 << 10) + VALUE as u64)
        .spill_queue_capacity(40 << 10)
        .build()
        .await
        .unwrap();
    assert_eq!(cache.stats().recovery.entries, 40);
    tokio::time::timeout(LIMIT, cache.warmed())
        .await
        .expect("warmed() hung with nothing that fits");
    cache.flush().await;
    let s = cache.stats();
    assert!(s.recovery.warm_done, "{s:#?}");
    assert_eq!(s.recovery.warmed, 0, "{s:#?}");
    assert_eq!(s.memory.evictions, 0, "{s:#?}");
    assert_eq!(s.memory.entries, 0, "{s:#?}");
    assert!(s.memory.bytes <= VALUE as u64, "{s:#?}");
    assert_eq!(cache.peek_tier(&key("a", 7)).await, CacheTier::Local);
    cache.close().await.unwrap();
}

/// Each warm-up read decodes in a task of its own: one decode that takes
/// long (held here at a gate) holds up neither the other reads nor the
/// cores they could use. The warm-up ends only once that one is in too.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_slow_decode_does_not_hold_up_the_rest_of_the_warm_up() {
    tokio::time::timeout(LIMIT, async {
        let dir = tempfile::tempdir().unwrap();
        let n = 40;
        {
            let cache = roomy(dir.path())
                .memory_capacity(4 << 20)
                .build()
                .await
                .unwrap();
            for id in 0..n {
                put(&cache, &tkey(1, id), val(1, id, 1, 2000)).await;
            }
            cache.close().await.unwrap();
        }
        let (cache, gate, held) = open_with_held_warm_up(dir.path(), 1).await;
        let _open = OpenOnDrop(gate.clone());
        wait_for_stats(&cache, "every other entry warmed", |s| {
            s.recovery.warmed == n as u64 - 1
        })
        .await;
        assert!(!cache.stats().recovery.warm_done, "ended with a read held");
        let (_, held_id, _) = held[0];
        assert_eq!(
            cache.peek_tier(&tkey(1, held_id)).await,
            CacheTier::Local,
            "the held read is not in memory yet"
        );
        gate.open();
        cache.warmed().await;
        let s = cache.stats();
        assert_eq!(s.recovery.warmed, n as u64, "{s:#?}");
        for id in 0..n {
            assert_eq!(cache.peek_tier(&tkey(1, id)).await, CacheTier::Resident);
        }
        cache.close().await.unwrap();
    })
    .await
    .expect("the warm-up test hung");
}
