//! The index phase: RAM per disk-resident entry, measured on the heap (the
//! bench binary's counting allocator, see `heap`), for spillway and for
//! foyer's HybridCache, with the same string keys, values, memory budget,
//! device kind and I/O engine.
//!
//! Each system takes `entries` keys of 512-byte values on an 8 MiB memory
//! budget and a disk large enough for all of them. The heap is read after a
//! tenth of the keys (at least four memory budgets of them) and after all of them (each time once the disk writes
//! have settled); RAM per entry is the heap's growth over the growth of the
//! entries on disk between the two points. The memory tier is full at both
//! points, so its values cancel out, and what remains is what each entry on
//! disk costs: spillway's placement table and foyer's own index (spillway
//! runs a foyer disk tier too, so its figure includes foyer's index).
//! spillway runs twice, with short keys and with keys 200 bytes longer.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use foyer::HybridCache;
use serde::{Deserialize, Serialize};
use spillway::{ByteSize, CodecRegistry, Config, InternalCacheKey, TwoTierCacheBackend};

use super::compression::Spread;
use super::heap::live_bytes;
use super::report::Target;
use super::systems::{entry, foyer_hybrid, ByteBuf, VALUE_TYPE};
use super::workload::value;
use super::REOPENS;

const VALUE_LEN: usize = 512;
const MEMORY: u64 = 8 << 20;
/// What the long keys add to each key.
const LONG_KEY_EXTRA: usize = 200;
/// The goal: at most this many bytes per entry on disk, foyer's index included.
pub const GOAL_BYTES: f64 = 64.0;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct IndexRun {
    pub system: String,
    /// Bytes of the user's key text.
    pub key_len: usize,
    /// Keys inserted, each once.
    pub inserted: u64,
    /// Of those, on disk at the end: foyer's HybridCache drops writes its
    /// flush buffer cannot take, silently; spillway loses none while the
    /// disk has room.
    pub entries_on_disk: u64,
    /// Heap growth per entry on disk (see the module documentation).
    pub bytes_per_entry: f64,
    /// Reopening the closed directory, these entries on disk (`REOPENS`
    /// times; min / median / max ms). Not measured for the long keys.
    pub reopen_ms: Option<Spread>,
    /// The disk budget the reopen recovered.
    pub disk_bytes: u64,
}

impl IndexRun {
    /// Median reopen time per million entries on disk.
    fn reopen_ms_per_million(&self) -> Option<f64> {
        let spread = self.reopen_ms.as_ref()?;
        Some(spread.median / (self.entries_on_disk.max(1) as f64 / 1e6))
    }
}

fn key_text(id: usize, long: bool) -> String {
    if long {
        format!("{id:0>width$}", width = LONG_KEY_EXTRA + 7)
    } else {
        format!("{id:07}")
    }
}

/// The same key text for every system (foyer takes it as one string).
fn index_key(id: usize, long: bool) -> InternalCacheKey {
    InternalCacheKey::new("bench", key_text(id, long), VALUE_TYPE)
}

fn config(entries: usize, page_per_entry: bool) -> Config {
    let mut c = Config::default();
    c.memory.capacity = ByteSize(MEMORY);
    // Room for every entry (foyer stores each one in a 4 KiB page; spillway
    // packs several into one), plus foyer's reserved blocks.
    let per_entry = if page_per_entry { 4096 } else { 1024 };
    c.disk.capacity = ByteSize((entries * per_entry) as u64 * 5 / 4 + (64 << 20));
    c
}

enum Subject {
    Spillway(Arc<TwoTierCacheBackend>, bool),
    Foyer(HybridCache<String, Bytes>),
}

impl Subject {
    async fn insert(&self, id: usize) {
        let v = value(id, VALUE_LEN);
        match self {
            Subject::Spillway(c, long) => {
                c.insert(&index_key(id, *long), entry(v), VALUE_LEN).await;
            }
            Subject::Foyer(c) => {
                c.insert(index_key(id, false).to_string(), Bytes::from(v));
            }
        }
    }

    async fn close(self) {
        match self {
            Subject::Spillway(c, _) => {
                let _ = c.close().await;
            }
            Subject::Foyer(c) => {
                let _ = c.close().await;
            }
        }
    }

    /// Settles the disk writes, then counts the entries on disk.
    async fn on_disk(&self, inserted: usize) -> u64 {
        match self {
            Subject::Spillway(c, _) => {
                // Write-behind's schedule holds each insert of the last
                // `persist_after` (transient, bounded by the insert rate):
                // let it drain, so the heap shows what stays.
                tokio::time::sleep(Config::default().disk.persist_after.0 + Duration::from_secs(1))
                    .await;
                c.flush().await;
                c.stats().disk.entries
            }
            Subject::Foyer(c) => {
                c.storage().wait().await;
                (0..inserted)
                    .filter(|id| c.storage().may_contains(&index_key(*id, false).to_string()))
                    .count() as u64
            }
        }
    }
}

async fn open(name: &str, entries: usize, dir: &Path) -> spillway::Result<Subject> {
    let long = name.ends_with("long keys");
    if name.starts_with("spillway") {
        let mut c = config(entries, false);
        c.disk.dir = Some(dir.to_path_buf());
        let codecs = CodecRegistry::new().register::<ByteBuf>(VALUE_TYPE, 1)?;
        let cache = TwoTierCacheBackend::from_config(&c, codecs).await?;
        return Ok(Subject::Spillway(Arc::new(cache), long));
    }
    let mut c = config(entries, true);
    c.disk.dir = Some(dir.to_path_buf());
    let cache =
        foyer_hybrid(&c, MEMORY as usize, dir)
            .await
            .map_err(|e| spillway::Error::Config {
                field: "bench.index".into(),
                value: dir.display().to_string(),
                reason: e,
            })?;
    Ok(Subject::Foyer(cache))
}

async fn one(name: &str, entries: usize, dir: &Path) -> spillway::Result<IndexRun> {
    let subject = open(name, entries, dir).await?;
    // The first reading comes once the memory tier is full (four times
    // its budget in values), so its values cancel out.
    let first = (entries / 10).max(4 * MEMORY as usize / VALUE_LEN);
    for id in 0..first {
        subject.insert(id).await;
    }
    let d1 = subject.on_disk(first).await;
    let h1 = live_bytes();
    for id in first..entries {
        subject.insert(id).await;
    }
    let d2 = subject.on_disk(entries).await;
    let h2 = live_bytes();
    let long = name.ends_with("long keys");
    let mut run = IndexRun {
        system: name.into(),
        key_len: key_text(0, long).len(),
        inserted: entries as u64,
        entries_on_disk: d2,
        bytes_per_entry: (h2 - h1) as f64 / (d2.saturating_sub(d1)).max(1) as f64,
        reopen_ms: None,
        disk_bytes: config(entries, matches!(subject, Subject::Foyer(_)))
            .disk
            .capacity
            .0,
    };
    subject.close().await;
    if !long {
        // The same data for both: every entry each system holds on disk.
        let mut times = Vec::new();
        for _ in 0..REOPENS {
            let started = Instant::now();
            let reopened = open(name, entries, dir).await?;
            times.push(started.elapsed().as_secs_f64() * 1e3);
            reopened.close().await;
        }
        run.reopen_ms = Some(Spread::of(times));
    }
    Ok(run)
}

/// Runs the phase in a child process of its own (`bench-index-child`), so
/// that both systems' reopens start from a fresh process, as a cache
/// reopens when its application starts, whatever ran before, and what the
/// phase's million-entry caches leave behind (foyer 0.22 never frees a
/// closed device) does not weigh on the phases after it: run first in the
/// bench's own process, it left the main table's spillway runs up to 40%
/// slower. (spillway's reopens here still spread, 369 / 440 / 763 ms in a
/// fresh child: the spread is the reopen's own, not the earlier phases'.)
pub fn measure_in_child(scratch: &Path, quick: bool) -> spillway::Result<Vec<IndexRun>> {
    let out = scratch.join("index-runs.json");
    super::json_child::run("index", &out, |command| {
        command
            .arg("bench-index-child")
            .arg("--scratch")
            .arg(scratch)
            .arg("--out")
            .arg(&out);
        if quick {
            command.arg("--quick");
        }
    })
}

/// The child's side of [`measure_in_child`]: runs the phase and writes its
/// runs to `out` as JSON.
pub fn child(scratch: &Path, quick: bool, out: &Path) -> spillway::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| spillway::Error::io("start runtime", Path::new("-"), e))?;
    let runs = runtime.block_on(measure(scratch, quick))?;
    super::json_child::write("index", &runs, out)
}

/// Runs the phase: a million entries, or a tenth of that with `quick`.
pub async fn measure(scratch: &Path, quick: bool) -> spillway::Result<Vec<IndexRun>> {
    let entries = if quick { 100_000 } else { 1_000_000 };
    let mut runs = Vec::new();
    for name in ["spillway", "spillway, long keys", "foyer-hybrid"] {
        let dir = scratch.join(format!("index-{}", runs.len()));
        runs.push(one(name, entries, &dir).await?);
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(runs)
}

/// The phase's targets: the goal, and independence of key length.
pub fn targets(runs: &[IndexRun]) -> Vec<Target> {
    let find = |n: &str| runs.iter().find(|r| r.system == n);
    let mut t = Vec::new();
    if let (Some(s), Some(f)) = (find("spillway"), find("foyer-hybrid")) {
        t.push(Target {
            name: "RAM per disk-resident entry (heap, foyer's index included)".into(),
            measured: format!(
                "{:.0} B (foyer HybridCache {:.0} B), {} entries on disk",
                s.bytes_per_entry, f.bytes_per_entry, s.entries_on_disk
            ),
            ratio: s.bytes_per_entry / GOAL_BYTES,
            goal: format!("≤ {GOAL_BYTES:.0} B"),
            meets: s.bytes_per_entry <= GOAL_BYTES,
        });
    }
    if let (Some(s), Some(f)) = (find("spillway"), find("foyer-hybrid")) {
        if let (Some(ours), Some(theirs)) = (s.reopen_ms_per_million(), f.reopen_ms_per_million()) {
            let ratio = ours / theirs.max(1e-3);
            let per_gib = |r: &IndexRun| {
                r.reopen_ms.as_ref().map_or(0.0, |t| t.median)
                    / (r.disk_bytes as f64 / (1u64 << 30) as f64)
            };
            t.push(Target {
                name: "reopen on the same data vs foyer HybridCache (per million entries on disk)".into(),
                measured: format!(
                    "{ours:.0} vs {theirs:.0} ms per million entries ({} vs {} entries on disk; {:.0} vs {:.0} ms per GiB of disk budget; medians of {REOPENS} reopens)",
                    s.entries_on_disk,
                    f.entries_on_disk,
                    per_gib(s),
                    per_gib(f),
                ),
                ratio,
                goal: "≤ 2×".into(),
                meets: ratio <= 2.0,
            });
        }
    }
    if let (Some(s), Some(l)) = (find("spillway"), find("spillway, long keys")) {
        let extra = l.bytes_per_entry - s.bytes_per_entry;
        t.push(Target {
            name: "RAM per disk-resident entry, independent of key length".into(),
            measured: format!(
                "{:.0} B with {}-byte keys vs {:.0} B with {}-byte keys",
                l.bytes_per_entry, l.key_len, s.bytes_per_entry, s.key_len
            ),
            ratio: l.bytes_per_entry / s.bytes_per_entry.max(1.0),
            goal: format!("≤ {} B more for {LONG_KEY_EXTRA} more bytes of key", 8),
            meets: extra <= 8.0,
        });
    }
    t
}

/// The phase as a Markdown section.
pub fn markdown(runs: &[IndexRun]) -> String {
    let mut s = String::from(
        "## Index: RAM per disk-resident entry\n\n512-byte values on an 8 MiB memory budget, every key on a disk large enough for all of them, the same string keys for every system. Heap growth (a counting allocator) between a tenth of the keys and all of them, over the growth of the entries on disk: the memory tier is full at both points, so what remains is what an entry on disk costs. spillway's figure includes its foyer disk tier's own index. \"On disk at the end\" counts what each system still holds of the keys it was given: foyer's HybridCache drops, silently, the writes its flush buffer cannot take. Reopen: the closed directory opened again (until `build()` or foyer's open returns), 3 times; min / median / max.\n\n| system | key bytes | inserted | on disk at the end | bytes per entry on disk | reopen ms |\n|---|---|---|---|---|---|\n",
    );
    for r in runs {
        let reopen = r.reopen_ms.as_ref().map_or("-".to_string(), |t| {
            format!("{:.0} / {:.0} / {:.0}", t.min, t.median, t.max)
        });
        s.push_str(&format!(
            "| {} | {} | {} | {} | {:.0} | {reopen} |\n",
            r.system, r.key_len, r.inserted, r.entries_on_disk, r.bytes_per_entry
        ));
    }
    s
}
