//! Construction: a cache assembled from what the builder opened (the
//! replayed journal, the disk tier, the budgets), its placement table
//! rebuilt, its background tasks started and its warm-up begun.

use super::*;

impl TwoTierCacheBackend {
    pub(crate) fn start(parts: Parts) -> Self {
        let weigher = ByteWeigher::for_capacity(parts.memory_capacity);
        let hot_capacity = parts
            .memory_capacity
            .saturating_sub(parts.spill_queue_capacity);
        // The table the journal gave, cut down to what foyer still holds.
        let (placements, recovered) = parts.placements.settle(&parts.disk, &parts.clock);
        let settings = SpillSettings {
            queue_capacity: parts.spill_queue_capacity,
            compressor: parts.compressor,
            pack_threshold: parts.pack_threshold,
            next_seq: parts.replay.next_seq,
            remote: parts.remote,
        };
        let spiller = Arc::new(Spiller::new(
            placements,
            parts.disk,
            parts.journal,
            settings,
            parts.clock.clone(),
        ));
        *spiller.stats.recovery.lock() = crate::RecoveryStats {
            entries: recovered.entries,
            bytes: recovered.bytes,
            millis: parts.recovery_time.as_millis() as u64,
            torn_journal_tails: parts.replay.torn_tails,
            dir_reset: parts.cache_dir.was_reset(),
            expired: recovered.expired,
            ..Default::default()
        };
        let (spill_tx, spill_rx) = mpsc::unbounded_channel();
        let (persist_tx, persist_rx) = mpsc::unbounded_channel();
        let listener_spiller = spiller.clone();
        let listener_tx = spill_tx.clone();
        let memory = Cache::builder()
            .max_capacity(weigher.units(hot_capacity))
            .eviction_policy(parts.eviction_policy)
            .weigher(move |k: &InternalCacheKey, r: &Arc<Resident>| {
                weigher.weigh(k.footprint().saturating_add(r.size))
            });
        // moka's own expiry (a timer wheel) removes expired entries
        // promptly, but costs every memory hit about a tenth: it is attached
        // only when a default time to live says expiry is the norm. Without
        // it, per-entry deadlines hold all the same (reads check them); an
        // expired entry leaves memory when it is next read or evicted.
        let memory = if parts.default_ttl.is_some() {
            memory.expire_after(ResidentExpiry(parts.clock))
        } else {
            memory
        };
        let memory = memory
            .eviction_listener(move |key, res, cause| match cause {
                // Only capacity evictions spill.
                moka::notification::RemovalCause::Size => {
                    listener_spiller.offer(&key, res, &listener_tx);
                    // For reads that found this version gone from moka
                    // before its slot moved (see `lower_tiers`); no other
                    // removal leaves a slot that waits (an expired one
                    // never waits), and each wake takes `Notify`'s lock.
                    listener_spiller.evicted.notify_waiters();
                }
                moka::notification::RemovalCause::Expired => listener_spiller.expire(&key, &res),
                _ => {}
            })
            .build_with_hasher(KeyHashBuilder);
        let inner = Arc::new(Inner {
            memory,
            weigher,
            memory_capacity: parts.memory_capacity,
            spiller: spiller.clone(),
            spill_tx,
            persist_tx,
            write_behind: Arc::new(WriteBehind::new(parts.persist_after)),
            codecs: parts.codecs,
            flights: SingleFlight::default(),
            key_locks: KeyLocks::default(),
            maintain_every: (parts.spill_queue_capacity / 4).max(1),
            default_ttl: parts.default_ttl,
            closed: AtomicBool::new(false),
            background: Mutex::new(Vec::new()),
            remote_changes: std::sync::atomic::AtomicU64::new(0),
            peer_fences: remote::PeerFences::default(),
        });
        let remote_tasks = spiller
            .remote
            .start(Box::new(remote::PeerEffects(Arc::downgrade(&inner))));
        inner.background.lock().extend(remote_tasks);
        // The worker holds the spiller, not the cache: it ends by itself
        // when the cache (and with it moka's listener, the last sender) drops,
        // and only then can the disk tier drop. It runs on the runtime of the
        // disk tier's foyer tasks, beside the flushers it feeds (see
        // `disk_runtime`): on separate runtimes every batch crossed between
        // them. On the shared disk runtime if the tier has no runtime, the
        // caller's if that did not start either.
        let runtime = spiller.disk.runtime_handle();
        let worker = spiller.run(spill_rx, persist_rx);
        match runtime {
            Some(runtime) => drop(runtime.spawn(worker)),
            None => crate::disk_runtime::spawn(worker),
        }
        // The open left the replayed journal files as they were (see
        // `Journal::resume`). They are folded into a snapshot once the
        // warm-up ends: a snapshot taken before would drop the `Resident`
        // facts of the keys not warmed yet, and a crash then would bring
        // the cache back colder. Only a journal that many crashed opens
        // left unfolded is compacted at once, so that it cannot grow without
        // bound.
        let compaction = if parts.replay.files_with_facts > MAX_UNFOLDED_JOURNAL_FILES {
            let spiller = inner.spiller.clone();
            crate::disk_runtime::spawn(async move { spiller.compact().await });
            Compaction::Done
        } else if parts.replay.needs_compaction() {
            Compaction::AfterWarmUp
        } else {
            Compaction::Done
        };
        if inner.write_behind.enabled() {
            let task = tokio::spawn(persist(Arc::downgrade(&inner), inner.write_behind.clone()));
            inner.background.lock().push(task);
        }
        let maintenance =
            tokio::spawn(maintain(Arc::downgrade(&inner), parts.maintenance_interval));
        inner.background.lock().push(maintenance);
        let warm_keys = if parts.warm_on_open {
            parts.replay.resident
        } else {
            Vec::new()
        };
        let warm_span = tracing::info_span!("spillway.warm_up", keys = warm_keys.len());
        let warmer = tokio::spawn(tracing::Instrument::instrument(
            warm(Arc::downgrade(&inner), warm_keys, hot_capacity, compaction),
            warm_span,
        ));
        inner.background.lock().push(warmer);
        let owner = Arc::new(Owner {
            inner: inner.clone(),
            dir: parking_lot::Mutex::new(Some(parts.cache_dir)),
            closed: AtomicBool::new(false),
        });
        Self {
            inner,
            owner: Some(owner),
        }
    }
}
