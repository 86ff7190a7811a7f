//! Model-based property test: random sequences of operations (inserts of
//! large entries and of small ones that the disk tier packs several to a
//! page, loads, single-key removes, invalidations, clears, flushes, reopens) on a two-tier
//! cache with tiny budgets (so entries spill, get promoted, are persisted by
//! write-behind and evicted from disk all the time), checked against a
//! reference model of what each key's latest value is.
//!
//! Properties, after every step:
//! * every read is a miss or the model's current value of the key (never an
//!   older version, never an invalidated or cleared one, never other bytes);
//! * `get_or_insert` reports `was_cached` only for a key the model holds, and
//!   then returns that value;
//! * across `close()` + reopen and drop + reopen, the same holds;
//! * after `flush()` the spill queue's accounting is back to zero, no spill
//!   went unwritten (the disk always has room here), and the statistics
//!   balance: every capacity eviction is counted once, as memory-only,
//!   already on disk, written, superseded or not written.
//!
//! CI runs 24 cases; `cargo test --test model -- --ignored` runs 400 cases
//! of sequences twice as long. Shrinking prints the smallest failing
//! sequence of operations.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use proptest::prelude::*;
use spillway::{CacheBackend, CacheEntry, TwoTierBuilder, TwoTierCacheBackend};

const PREFIXES: usize = 2;
const KEYS: usize = 8;
const LEN: usize = 3000;
/// Small values: well under `disk.pack_threshold`, so they spill in packs.
fn small_len(k: usize, version: u32) -> usize {
    100 + (k * 37 + version as usize * 53) % 700
}

#[derive(Clone, Debug)]
enum Op {
    Insert(usize),
    InsertSmall(usize),
    Get(usize),
    GetOrInsert(usize),
    Invalidate(usize),
    Remove(usize),
    Clear,
    Flush,
    CloseReopen,
    DropReopen,
}

fn op() -> impl Strategy<Value = Op> {
    let k = 0..PREFIXES * KEYS;
    prop_oneof![
        5 => k.clone().prop_map(Op::Insert),
        5 => k.clone().prop_map(Op::InsertSmall),
        6 => k.clone().prop_map(Op::Get),
        4 => k.prop_map(Op::GetOrInsert),
        1 => (0..PREFIXES).prop_map(Op::Invalidate),
        2 => (0..PREFIXES * KEYS).prop_map(Op::Remove),
        1 => Just(Op::Clear),
        2 => Just(Op::Flush),
        1 => Just(Op::CloseReopen),
        1 => Just(Op::DropReopen),
    ]
}

fn model_key(k: usize) -> spillway::InternalCacheKey {
    spillway::InternalCacheKey::new(format!("p{}", k / KEYS), (k % KEYS).to_string(), BLOB)
}

/// A value that says which key and version it is, and is checkable.
fn value(k: usize, version: u32, len: usize) -> Vec<u8> {
    let mut v: Vec<u8> = (0..len)
        .map(|i| (k as u32 * 31 + version * 7 + i as u32) as u8)
        .collect();
    v[..4].copy_from_slice(&(k as u32).to_le_bytes());
    v[4..8].copy_from_slice(&version.to_le_bytes());
    v
}

fn version_of(k: usize, bytes: &[u8]) -> u32 {
    let version = u32::from_le_bytes(bytes[4..8].try_into().unwrap());
    assert_eq!(
        bytes,
        value(k, version, bytes.len()).as_slice(),
        "damaged bytes for key {k}"
    );
    version
}

fn builder(dir: &std::path::Path) -> TwoTierBuilder {
    small(dir)
        .memory_capacity(32 << 10)
        .spill_queue_capacity(8 << 10)
        .disk_capacity(512 << 10)
        .persist_after(Duration::from_millis(20))
}

/// A read of key `k` must be a miss or the model's current version.
fn check(
    model: &HashMap<usize, u32>,
    step: usize,
    op: &Op,
    k: usize,
    got: Option<&CacheEntry>,
) -> Result<(), TestCaseError> {
    if let Some(entry) = got {
        let version = version_of(k, as_blob(entry));
        prop_assert_eq!(
            Some(version),
            model.get(&k).copied(),
            "step {}: after {:?}, key {} read version {}",
            step,
            op,
            k,
            version
        );
    }
    Ok(())
}

/// Runs `ops` against the model; returns how many entries the disk tier
/// wrote inside packs along the way.
async fn run(ops: Vec<Op>) -> Result<u64, TestCaseError> {
    let mut packed = 0;
    let dir = tempfile::tempdir().unwrap();
    let mut cache: Option<TwoTierCacheBackend> = Some(builder(dir.path()).build().await.unwrap());
    let mut model: HashMap<usize, u32> = HashMap::new();
    let mut next = 1u32;
    for (step, op) in ops.iter().enumerate() {
        let c = cache.as_ref().unwrap();
        match *op {
            Op::Insert(k) => {
                let v = next;
                next += 1;
                c.insert(&model_key(k), Arc::new(value(k, v, LEN)) as CacheEntry, LEN)
                    .await;
                model.insert(k, v);
            }
            Op::InsertSmall(k) => {
                let v = next;
                next += 1;
                let len = small_len(k, v);
                c.insert(&model_key(k), Arc::new(value(k, v, len)) as CacheEntry, len)
                    .await;
                model.insert(k, v);
            }
            Op::Get(k) => {
                let got = c.get(&model_key(k)).await;
                check(&model, step, op, k, got.as_ref())?;
            }
            Op::GetOrInsert(k) => {
                let v = next;
                next += 1;
                let loader =
                    Box::pin(async move { Ok((Arc::new(value(k, v, LEN)) as CacheEntry, LEN)) });
                let (entry, cached) = c.get_or_insert(&model_key(k), loader).await.unwrap();
                if cached {
                    prop_assert!(
                        model.contains_key(&k),
                        "step {step}: was_cached for absent key {k}"
                    );
                    check(&model, step, op, k, Some(&entry))?;
                } else {
                    prop_assert_eq!(version_of(k, as_blob(&entry)), v);
                    model.insert(k, v);
                }
            }
            Op::Invalidate(p) => {
                c.invalidate_prefix(&format!("p{p}")).await;
                model.retain(|k, _| k / KEYS != p);
            }
            Op::Remove(k) => {
                c.remove(&model_key(k)).await;
                model.remove(&k);
            }
            Op::Clear => {
                c.clear().await;
                model.clear();
            }
            Op::Flush => {
                c.flush().await;
                // Every byte held for the spill queue was given back.
                let s = c.stats();
                prop_assert_eq!(
                    (s.spill.queue_entries, s.spill.queue_bytes),
                    (0, 0),
                    "step {}: spill queue accounting after flush: {:#?}",
                    step,
                    s
                );
                prop_assert_eq!(s.spill.not_written.total(), 0, "step {}: {:#?}", step, s);
                // Every capacity eviction is accounted for exactly once.
                let sp = &s.spill;
                prop_assert_eq!(
                    s.memory.evictions,
                    s.memory.evicted_memory_only
                        + sp.already_on_disk
                        + sp.written
                        + sp.superseded
                        + sp.expired
                        + sp.not_written.total(),
                    "step {}: evictions do not balance: {:#?}",
                    step,
                    s
                );
            }
            Op::CloseReopen => {
                c.close().await.unwrap();
                packed += c.stats().spill.packed;
                drop(cache.take()); // releases the directory before the reopen
                cache = Some(builder(dir.path()).build().await.unwrap());
            }
            Op::DropReopen => {
                packed += c.stats().spill.packed;
                drop(cache.take()); // releases the directory before the reopen
                cache = Some(builder(dir.path()).build().await.unwrap());
            }
        }
        // A miss is always allowed; a value must be the latest one.
        let c = cache.as_ref().unwrap();
        for k in 0..PREFIXES * KEYS {
            let got = c.get_without_promotion(&model_key(k)).await;
            check(&model, step, op, k, got.as_ref())?;
        }
    }
    if let Some(c) = cache {
        c.close().await.unwrap();
        packed += c.stats().spill.packed;
    }
    Ok(packed)
}

fn run_on_runtime(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let rt = two_thread_runtime();
    rt.block_on(run(ops)).map(drop)
}

/// The model's small inserts really go through packs (else the property
/// tests above would say nothing about packed entries): small entries
/// evicted by large ones, flushed, read back, replaced, reopened.
#[test]
fn the_model_covers_packed_entries() {
    let mut ops: Vec<Op> = (0..KEYS).map(Op::InsertSmall).collect();
    // Large entries read often enough that moka keeps them over the
    // small ones (TinyLFU), until memory overflows.
    for k in KEYS..2 * KEYS {
        ops.extend([Op::Insert(k), Op::Get(k), Op::Get(k), Op::Get(k)]);
    }
    ops.push(Op::Flush);
    ops.extend((0..KEYS).map(Op::Get));
    ops.extend([
        Op::InsertSmall(0),
        Op::Remove(1),
        Op::Invalidate(1),
        Op::Flush,
    ]);
    ops.extend([
        Op::DropReopen,
        Op::Get(0),
        Op::Get(2),
        Op::CloseReopen,
        Op::Get(3),
    ]);
    let packed = two_thread_runtime().block_on(run(ops)).unwrap();
    assert!(packed > 0, "no entry was written in a pack");
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 400,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    #[ignore = "long: cargo test --test model -- --ignored"]
    fn every_read_is_a_miss_or_the_latest_value_long(ops in proptest::collection::vec(op(), 1..120)) {
        run_on_runtime(ops)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 24,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn every_read_is_a_miss_or_the_latest_value(ops in proptest::collection::vec(op(), 1..60)) {
        run_on_runtime(ops)?;
    }
}
