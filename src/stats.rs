//! Counters both tiers update, and the snapshot [`crate::TwoTierCacheBackend::stats`] returns.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};

use crossbeam_utils::CachePadded;
use serde::Serialize;

const STRIPES: usize = 16;

thread_local! {
    static STRIPE: Cell<usize> = const { Cell::new(usize::MAX) };
}
static NEXT_STRIPE: AtomicUsize = AtomicUsize::new(0);

fn stripe() -> usize {
    STRIPE.with(|s| {
        if s.get() == usize::MAX {
            s.set(NEXT_STRIPE.fetch_add(1, Relaxed) % STRIPES);
        }
        s.get()
    })
}

/// A counter bumped on every memory hit. One shared atomic would make all
/// cores fight over a cache line on the hottest path, so each thread bumps its
/// own padded stripe and readers add the stripes up.
#[derive(Default)]
pub(crate) struct HotCounter([CachePadded<AtomicU64>; STRIPES]);

impl HotCounter {
    pub(crate) fn incr(&self) {
        self.0[stripe()].fetch_add(1, Relaxed);
    }
    pub(crate) fn get(&self) -> u64 {
        self.0.iter().map(|c| c.load(Relaxed)).sum()
    }
}

/// A plain counter for the colder paths.
#[derive(Default)]
pub(crate) struct Counter(AtomicU64);

impl Counter {
    pub(crate) fn incr(&self) {
        self.add(1);
    }
    pub(crate) fn add(&self, n: u64) {
        self.0.fetch_add(n, Relaxed);
    }
    pub(crate) fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }
}

/// A level that goes up and down (queue depth, parked waiters).
#[derive(Default)]
pub(crate) struct Gauge(AtomicU64);

impl Gauge {
    pub(crate) fn add(&self, n: u64) {
        self.0.fetch_add(n, Relaxed);
    }
    pub(crate) fn sub(&self, n: u64) {
        self.0.fetch_sub(n, Relaxed);
    }
    pub(crate) fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }
}

/// Why a decoded disk record was refused (and counted as a miss).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum DecodeMiss {
    Corrupt,
    Incompatible,
    KeyMismatch,
    Codec,
    NoCodec,
}

/// Why an evicted entry that should have spilled was not written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum NotWrittenReason {
    EncodeFailed,
    Oversize,
    DiskDropped,
    DiskDisabled,
}

/// The live counters of one cache.
#[derive(Default)]
pub(crate) struct Stats {
    pub(crate) memory_hits: HotCounter,
    pub(crate) queue_hits: Counter,
    pub(crate) disk_hits: Counter,
    pub(crate) misses: Counter,
    pub(crate) inserts: Counter,
    pub(crate) evictions: Counter,
    pub(crate) evicted_memory_only: Counter,
    pub(crate) evicted_already_on_disk: Counter,
    pub(crate) promotions: Counter,
    pub(crate) spills_queued: Counter,
    pub(crate) spills_written: Counter,
    pub(crate) spill_bytes: Counter,
    pub(crate) spill_logical_bytes: Counter,
    pub(crate) spills_superseded: Counter,
    pub(crate) spills_expired: Counter,
    pub(crate) memory_expired: Counter,
    pub(crate) disk_expired: Counter,
    pub(crate) queue_entries: Gauge,
    pub(crate) persisted: Counter,
    pub(crate) persisted_bytes: Counter,
    pub(crate) packed_written: Counter,
    pub(crate) packs_written: Counter,
    pub(crate) promotions_deferred: Counter,
    pub(crate) not_written: [Counter; 4],
    pub(crate) decode_misses: [Counter; 5],
    pub(crate) disk_vanished: Counter,
    pub(crate) read_spins: Counter,
    pub(crate) read_spins_answered: Counter,
    pub(crate) read_spin_micros: Counter,
    pub(crate) disk_lost: Counter,
    pub(crate) loader_runs: Counter,
    pub(crate) loader_waiters: Gauge,
    pub(crate) journal_errors: Counter,
    pub(crate) warmed: Counter,
    pub(crate) warmed_in_bulk: Counter,
    pub(crate) warm_millis: Gauge,
    pub(crate) warm_micros: Gauge,
    pub(crate) warm_done: std::sync::atomic::AtomicBool,
    /// Woken when the warm-up ends, or when a close stops it.
    pub(crate) warm_ended: tokio::sync::Notify,
    pub(crate) recovery: parking_lot::Mutex<RecoveryStats>,
}

impl Stats {
    pub(crate) fn not_written(&self, reason: NotWrittenReason) {
        self.not_written[reason as usize].incr();
    }
    pub(crate) fn decode_miss(&self, reason: DecodeMiss) {
        self.decode_misses[reason as usize].incr();
    }
}

/// Spills that were due but not written, by reason. Every one is also a lost
/// entry: the next read of its key misses. The spill queue never drops for
/// lack of room (writers wait instead), so these are the only reasons.
///
/// ```
/// let stats = spillway::MokaCacheBackend::with_capacity(1 << 20).stats();
/// let not_written: &spillway::NotWritten = &stats.spill.not_written;
/// assert_eq!(not_written.total(), 0);
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct NotWritten {
    /// The codec failed to encode the value.
    pub encode_failed: u64,
    /// The encoded record is larger than one disk block.
    pub oversize: u64,
    /// Handed to foyer but not written: the device failed the write (an I/O
    /// error or a full disk).
    pub disk_dropped: u64,
    /// Evicted while spilling was paused by a failing or full disk (or after `close`).
    pub disk_disabled: u64,
}

impl NotWritten {
    /// All spills not written, whatever the reason.
    ///
    /// ```
    /// let n = spillway::NotWritten { disk_dropped: 2, oversize: 1, ..Default::default() };
    /// assert_eq!(n.total(), 3);
    /// ```
    pub fn total(&self) -> u64 {
        self.encode_failed + self.oversize + self.disk_dropped + self.disk_disabled
    }
}

/// Disk records refused on read, by reason. Each refusal is a miss.
///
/// ```
/// let stats = spillway::MokaCacheBackend::with_capacity(1 << 20).stats();
/// let refused: &spillway::DecodeMisses = &stats.decode_misses;
/// assert_eq!(refused.total(), 0);
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct DecodeMisses {
    /// Bad magic, bad length or checksum: the bytes are damaged.
    pub corrupt: u64,
    /// Unknown envelope format version or a type version the codec does not accept.
    pub incompatible: u64,
    /// The record belongs to another key or another version of this key.
    pub key_mismatch: u64,
    /// The codec failed to decode the payload.
    pub codec: u64,
    /// No codec is registered for the record's type name.
    pub no_codec: u64,
}

impl DecodeMisses {
    /// All refused records.
    ///
    /// ```
    /// let d = spillway::DecodeMisses { corrupt: 1, codec: 1, ..Default::default() };
    /// assert_eq!(d.total(), 2);
    /// ```
    pub fn total(&self) -> u64 {
        self.corrupt + self.incompatible + self.key_mismatch + self.codec + self.no_codec
    }
}

/// The memory tier's share of a [`StatsSnapshot`].
///
/// ```
/// let stats = spillway::MokaCacheBackend::with_capacity(1 << 20).stats();
/// let memory: &spillway::MemoryStats = &stats.memory;
/// assert_eq!(memory.hits, 0);
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct MemoryStats {
    /// Reads served from memory.
    pub hits: u64,
    /// Entries resident in memory.
    pub entries: u64,
    /// Bytes resident in memory (declared sizes plus keys), spill queue excluded.
    pub bytes: u64,
    /// Entries evicted for capacity.
    pub evictions: u64,
    /// Evicted entries that had no codec and were therefore dropped, not spilled.
    pub evicted_memory_only: u64,
    /// Disk hits admitted back into memory.
    pub promotions: u64,
    /// Disk hits served without promotion because the spill queue had no
    /// room: readers never wait for the disk writer.
    pub promotions_deferred: u64,
    /// Entries whose time to live ran out while resident: removed, never
    /// spilled (not counted in `evictions`, even when moka picked an
    /// expired entry to make room).
    pub expired: u64,
}

/// The disk tier's share of a [`StatsSnapshot`].
///
/// ```
/// let stats = spillway::MokaCacheBackend::with_capacity(1 << 20).stats();
/// let disk: &spillway::DiskStats = &stats.disk;
/// assert_eq!(disk.hits, 0);
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct DiskStats {
    /// Reads served by decoding a disk record.
    pub hits: u64,
    /// Reads served from the spill queue (evicted, not yet written).
    pub queue_hits: u64,
    /// Entries spillway believes are on disk.
    pub entries: u64,
    /// Bytes of those entries' records as stored (after compression, before
    /// foyer's padding to 4 KiB pages): over `capacity`, how well the disk
    /// budget is used. Packed small entries count their own bytes only.
    pub bytes: u64,
    /// Bytes the disk tier wrote to its device (4 KiB-aligned, so ≥ spilled bytes).
    pub bytes_written: u64,
    /// Reads whose record foyer had already evicted or lost.
    pub vanished: u64,
    /// Records a failing disk lost: written, but missing when the disk
    /// tier was reopened after the failure (records foyer evicted since the
    /// last sweep are counted here too).
    pub lost: u64,
    /// The disk budget in bytes.
    pub capacity: u64,
    /// Disk entries dropped because their time to live ran out (found by a
    /// read or by a sweep); their records are deleted.
    pub expired: u64,
    /// Disk reads whose caller waited for them awake (`disk.read_spin`:
    /// its runtime had an idle worker, and no other read of the disk tier
    /// was under way).
    pub read_spins: u64,
    /// Of those, the reads done within the spin (no wake-up needed).
    pub read_spins_answered: u64,
    /// Time callers spent spinning for disk reads, in all: the CPU the
    /// spin cost.
    pub read_spin_micros: u64,
}

/// The spill path's share of a [`StatsSnapshot`].
///
/// ```
/// let stats = spillway::MokaCacheBackend::with_capacity(1 << 20).stats();
/// let spill: &spillway::SpillStats = &stats.spill;
/// assert_eq!(spill.written, 0);
/// ```
///
/// Every capacity eviction is accounted for exactly once. Between `close`
/// calls (which also spill resident entries), at any quiet moment:
///
/// `memory.evictions = memory.evicted_memory_only + already_on_disk +
/// written + superseded + expired + not_written.total() + queue_entries`
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct SpillStats {
    /// Entries queued for the disk tier: evictions, and the resident
    /// entries `close` writes (which the balance above leaves out).
    pub queued: u64,
    /// Spills written and confirmed on disk.
    pub written: u64,
    /// Bytes of the records written (envelope included), as stored: after
    /// compression. What the disk budget counts.
    pub written_bytes: u64,
    /// What those records would take uncompressed (equal to
    /// `written_bytes` with `disk.compression = "none"`).
    pub written_logical_bytes: u64,
    /// Evicted entries not written because the key was replaced, promoted,
    /// invalidated or cleared first (before or while queued).
    pub superseded: u64,
    /// Evicted entries that needed no write: write-behind had already put
    /// this very version on disk.
    pub already_on_disk: u64,
    /// Evicted entries whose time to live ran out while they waited in the
    /// spill queue: not written.
    pub expired: u64,
    /// Spills due but not written, by reason.
    pub not_written: NotWritten,
    /// Entries waiting in the spill queue now.
    pub queue_entries: u64,
    /// Bytes waiting in the spill queue now (declared sizes plus keys).
    pub queue_bytes: u64,
    /// Resident entries written by write-behind (`disk.persist_after`), not
    /// counted in `written`.
    pub persisted: u64,
    /// Bytes of the records write-behind wrote.
    pub persisted_bytes: u64,
    /// Entries written inside packs (`disk.pack_threshold`), by spills and
    /// write-behind alike: already counted in `written` or `persisted`.
    pub packed: u64,
    /// Pack records written: each takes one 4 KiB page on disk.
    pub packs: u64,
    /// Whether spilling is paused now because the disk is failing or full.
    pub paused: bool,
    /// Writes that found the spill queue full and waited for the spill
    /// worker to make room (inserts, loaders' results, and the warm-up's
    /// reads into memory): what never dropping a spill costs writers. A
    /// disk hit's promotion never waits; it is deferred instead. A wait
    /// under way is counted, once however often the writer wakes.
    pub writer_stalls: u64,
    /// The time those waits took in all, in µs (waits that ended).
    pub writer_stall_micros: u64,
}

/// What opening the cache directory recovered, and the warm-up after it.
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
/// let recovery: spillway::RecoveryStats = cache.stats().recovery;
/// assert_eq!(recovery.entries, 0); // a new directory
/// # });
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct RecoveryStats {
    /// Disk entries the journal says are current, served without a loader.
    pub entries: u64,
    /// Bytes of those entries' disk records.
    pub bytes: u64,
    /// Time to lock the directory, replay the journal and open foyer.
    pub millis: u64,
    /// Journal files whose tail was torn by a crash (the tail is ignored).
    pub torn_journal_tails: u64,
    /// The directory's format file, or a journal file in the middle, was
    /// damaged, so the directory was reset and the cache started empty
    /// (logged). A torn journal tail, what a crash leaves, is not damage.
    pub dir_reset: bool,
    /// Entries loaded back into memory because they were resident at close.
    pub warmed: u64,
    /// Of those, entries whose records were read in bulk (several
    /// neighbouring records with one read) rather than one by one.
    pub warmed_in_bulk: u64,
    /// Time the warm-up took, in whole milliseconds (0 until it is done).
    pub warm_millis: u64,
    /// The same in microseconds: a warm-up of a few megabytes takes a few
    /// milliseconds, which whole milliseconds would round by up to a third.
    pub warm_micros: u64,
    /// True once the warm-up has finished (or there was none).
    pub warm_done: bool,
    /// Disk entries the journal named whose time to live had run out by
    /// the open: not recovered (their records are deleted).
    pub expired: u64,
}

/// A point-in-time copy of a cache's statistics, both tiers separately.
///
/// ```
/// let s = spillway::StatsSnapshot::default();
/// assert_eq!(s.hits(), 0);
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct StatsSnapshot {
    /// The memory tier.
    pub memory: MemoryStats,
    /// The disk tier.
    pub disk: DiskStats,
    /// The spill path between them.
    pub spill: SpillStats,
    /// Disk records refused on read.
    pub decode_misses: DecodeMisses,
    /// The shared remote tier (all zero without one).
    pub remote: crate::RemoteStats,
    /// Reads that found nothing (decode misses included).
    pub misses: u64,
    /// Calls to `insert` plus loader results inserted.
    pub inserts: u64,
    /// Loaders run by `get_or_insert`.
    pub loader_runs: u64,
    /// `get_or_insert` callers parked right now behind another caller's loader.
    pub loader_waiters: u64,
    /// Journal writes that failed (logged; durability of those changes is lost).
    pub journal_errors: u64,
    /// What the last open recovered.
    pub recovery: RecoveryStats,
}

impl StatsSnapshot {
    /// Hits from every tier.
    ///
    /// ```
    /// let mut s = spillway::StatsSnapshot::default();
    /// s.memory.hits = 2;
    /// s.disk.hits = 1;
    /// s.remote.hits = 1;
    /// assert_eq!(s.hits(), 4);
    /// ```
    pub fn hits(&self) -> u64 {
        self.memory.hits + self.disk.hits + self.disk.queue_hits + self.remote.hits
    }

    /// Hits divided by reads, 0 when there were no reads.
    ///
    /// ```
    /// let mut s = spillway::StatsSnapshot::default();
    /// s.memory.hits = 3;
    /// s.misses = 1;
    /// assert_eq!(s.hit_ratio(), 0.75);
    /// ```
    pub fn hit_ratio(&self) -> f64 {
        let reads = self.hits() + self.misses;
        if reads == 0 {
            0.0
        } else {
            self.hits() as f64 / reads as f64
        }
    }
}

impl Stats {
    /// A disk read whose caller spun for `spent`, `answered` if the read
    /// was done within the spin.
    pub(crate) fn record_read_spin(&self, answered: bool, spent: std::time::Duration) {
        self.read_spins.incr();
        if answered {
            self.read_spins_answered.incr();
        }
        self.read_spin_micros
            .add(u64::try_from(spent.as_micros()).unwrap_or(u64::MAX));
    }

    pub(crate) fn snapshot(&self) -> StatsSnapshot {
        let nw = |r: NotWrittenReason| self.not_written[r as usize].get();
        let dm = |r: DecodeMiss| self.decode_misses[r as usize].get();
        StatsSnapshot {
            memory: MemoryStats {
                hits: self.memory_hits.get(),
                evictions: self.evictions.get(),
                evicted_memory_only: self.evicted_memory_only.get(),
                promotions: self.promotions.get(),
                promotions_deferred: self.promotions_deferred.get(),
                expired: self.memory_expired.get(),
                ..Default::default()
            },
            disk: DiskStats {
                hits: self.disk_hits.get(),
                queue_hits: self.queue_hits.get(),
                vanished: self.disk_vanished.get(),
                lost: self.disk_lost.get(),
                expired: self.disk_expired.get(),
                read_spins: self.read_spins.get(),
                read_spins_answered: self.read_spins_answered.get(),
                read_spin_micros: self.read_spin_micros.get(),
                ..Default::default()
            },
            spill: SpillStats {
                queued: self.spills_queued.get(),
                written: self.spills_written.get(),
                written_bytes: self.spill_bytes.get(),
                written_logical_bytes: self.spill_logical_bytes.get(),
                superseded: self.spills_superseded.get(),
                already_on_disk: self.evicted_already_on_disk.get(),
                expired: self.spills_expired.get(),
                not_written: NotWritten {
                    encode_failed: nw(NotWrittenReason::EncodeFailed),
                    oversize: nw(NotWrittenReason::Oversize),
                    disk_dropped: nw(NotWrittenReason::DiskDropped),
                    disk_disabled: nw(NotWrittenReason::DiskDisabled),
                },
                queue_entries: self.queue_entries.get(),
                persisted: self.persisted.get(),
                persisted_bytes: self.persisted_bytes.get(),
                packed: self.packed_written.get(),
                packs: self.packs_written.get(),
                ..Default::default()
            },
            decode_misses: DecodeMisses {
                corrupt: dm(DecodeMiss::Corrupt),
                incompatible: dm(DecodeMiss::Incompatible),
                key_mismatch: dm(DecodeMiss::KeyMismatch),
                codec: dm(DecodeMiss::Codec),
                no_codec: dm(DecodeMiss::NoCodec),
            },
            misses: self.misses.get(),
            inserts: self.inserts.get(),
            loader_runs: self.loader_runs.get(),
            loader_waiters: self.loader_waiters.get(),
            journal_errors: self.journal_errors.get(),
            recovery: RecoveryStats {
                warmed: self.warmed.get(),
                warmed_in_bulk: self.warmed_in_bulk.get(),
                warm_millis: self.warm_millis.get(),
                warm_micros: self.warm_micros.get(),
                warm_done: self.warm_done.load(Relaxed),
                ..self.recovery.lock().clone()
            },
            remote: Default::default(),
        }
    }
}
