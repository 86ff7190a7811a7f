use super::*;

fn disk(seq: u64, expires_at: u64, pack: Option<PackRef>) -> Slot {
    Slot {
        seq,
        place: Place::Disk,
        size: 100,
        record_len: 100,
        expires_at,
        pack,
    }
}

fn key(prefix: &str, k: &str) -> InternalCacheKey {
    InternalCacheKey::new(prefix, k, "T")
}

fn forms(p: &Placements, hash: u64) -> (usize, usize) {
    let shard = p.lock(hash);
    (shard.shard.full.len(), shard.shard.cold.len())
}

#[test]
fn a_disk_only_slot_is_kept_without_its_key_and_comes_back_whole() {
    let p = Placements::new(4);
    let k = key("ds/1", "a");
    let h = k.disk_hash();
    let pack = Some(PackRef { id: 12, offset: 40 });
    p.lock(h).insert(k.clone(), disk(9, 77_000, pack));
    assert_eq!(forms(&p, h), (0, 1), "disk-only: compact");
    let mut g = p.lock(h);
    let s = g.get(&k).unwrap();
    assert_eq!(
        (s.seq, s.record_len, s.expires_at, s.pack),
        (9, 100, 77_000, pack)
    );
    // Promoted: it needs its key again, and stays full.
    g.current(&k, 9).unwrap().place = Place::Memory { on_disk: true };
    drop(g);
    assert_eq!(forms(&p, h), (1, 0));
    // Evicted unchanged: compact again.
    p.lock(h).current(&k, 9).unwrap().place = Place::Disk;
    assert_eq!(forms(&p, h), (0, 1));
    assert_eq!(p.len(), 1);
    assert_eq!(p.lock(h).remove(&k).map(|s| s.seq), Some(9));
    assert_eq!((forms(&p, h), p.len()), ((0, 0), 0));
}

#[test]
fn a_key_with_another_keys_hash_takes_its_compact_slot_never_its_version() {
    let p = Placements::new(1);
    let a = key("p", "a");
    let b = key("p", "b").with_hash(a.disk_hash());
    let h = a.disk_hash();
    p.lock(h).insert(a.clone(), disk(3, 0, None));
    // b's insert takes over the hash: what it replaces is a's version,
    // which the caller then kills (tombstone, record deleted).
    let prev = p.lock(h).insert(b.clone(), disk(5, 0, None));
    assert_eq!(prev.map(|s| s.seq), Some(3));
    assert_eq!((forms(&p, h), p.len()), ((0, 1), 1));
    // A read of `a` finds b's version 5: the record's envelope names b,
    // so the read path refuses it (a miss, never b's value).
    assert_eq!(p.lock(h).get(&a).map(|s| s.seq), Some(5));
    assert_eq!(forms(&p, h), (0, 1), "and it stays b's, compact");
}

#[test]
fn a_bulk_load_keeps_each_slot_its_prefix_and_deadline_and_counts_once() {
    let p = Placements::new(8);
    // Prefixes alternating, as separate allocations of the same text
    // and as one shared allocation: each slot must keep its own.
    let a: Arc<str> = "ds/a".into();
    let a_again: Arc<str> = "ds/a".into();
    let b: Arc<str> = "ds/b".into();
    let keys: Vec<InternalCacheKey> = (0..300)
        .map(|i| key(if i % 3 == 1 { "ds/b" } else { "ds/a" }, &i.to_string()))
        .collect();
    let mut loader = p.cold_loader(keys.len());
    for (i, k) in keys.iter().enumerate() {
        let prefix = [&a, &b, &a_again][i % 3];
        let deadline = if i % 7 == 0 { 1_000 + i as u64 } else { 0 };
        assert!(loader.add(k.disk_hash(), prefix, &disk(i as u64 + 1, deadline, None)));
    }
    // The same hash again (a later snapshot's fact): replaced, not
    // counted twice, and its deadline goes with the old version.
    let again = keys[0].disk_hash();
    assert!(loader.add(again, &a, &disk(500, 0, None)));
    // Nothing is visible before `finish`.
    assert_eq!(p.len(), 0);
    loader.finish();
    assert_eq!(p.len(), keys.len());
    for (i, k) in keys.iter().enumerate() {
        let got = p.lock(k.disk_hash()).get(k).map(|s| (s.seq, s.expires_at));
        let want = match i {
            0 => (500, 0),
            _ if i % 7 == 0 => (i as u64 + 1, 1_000 + i as u64),
            _ => (i as u64 + 1, 0),
        };
        assert_eq!(got, Some(want), "key {i}");
    }
    let mut removed = Vec::new();
    p.under_prefix("ds/b", |hash, _| removed.push(hash));
    let mut under_b: Vec<u64> = keys
        .iter()
        .enumerate()
        .filter(|(i, _)| i % 3 == 1)
        .map(|(_, k)| k.disk_hash())
        .collect();
    removed.sort_unstable();
    under_b.sort_unstable();
    assert_eq!(removed, under_b);
    assert_eq!(p.len(), keys.len() - under_b.len());
}

#[test]
fn invalidation_takes_compact_slots_by_prefix_and_full_ones_by_key() {
    let p = Placements::new(8);
    let keys = [
        key("a/1", "x"),
        key("a/2", "y"),
        key("b", "z"),
        key("a/3", "w"),
    ];
    for (i, k) in keys.iter().enumerate().take(3) {
        p.lock(k.disk_hash())
            .insert(k.clone(), disk(i as u64 + 1, 0, None));
    }
    let resident = Slot {
        place: Place::Memory { on_disk: false },
        ..disk(4, 0, None)
    };
    p.lock(keys[3].disk_hash())
        .insert(keys[3].clone(), resident);
    let mut removed = Vec::new();
    let full = p.under_prefix("a/", |hash, slot| removed.push((hash, slot.seq)));
    removed.sort_by_key(|r| r.1);
    assert_eq!(
        removed,
        vec![(keys[0].disk_hash(), 1), (keys[1].disk_hash(), 2)]
    );
    assert_eq!(full, vec![keys[3].clone()]);
    assert_eq!(
        p.len(),
        2,
        "the compact ones are gone; the caller removes the rest"
    );
    assert!(p.lock(keys[2].disk_hash()).get(&keys[2]).is_some());
}

#[test]
fn a_prefix_first_seen_during_an_invalidation_is_still_matched() {
    let p = Prefixes::default();
    let old = p.id("new/0").unwrap();
    // Taken when the scan starts; "new/1" appears during it.
    let doomed = p.starting_with("new");
    let fresh = p.id("new/1").unwrap();
    let other = p.id("old").unwrap();
    assert!(is_under(&doomed, &p, old, "new"));
    assert!(
        is_under(&doomed, &p, fresh, "new"),
        "missed: it would survive"
    );
    assert!(!is_under(&doomed, &p, other, "new"));
}

/// Buckets the compact tables hold, over the entries in them.
fn buckets_per_entry(p: &Placements) -> f64 {
    let (mut capacity, mut len) = (0, 0);
    for shard in p.shards.iter() {
        let shard = shard.lock();
        capacity += shard.cold.capacity();
        len += shard.cold.len();
    }
    // hashbrown fills its buckets to 7/8 before it doubles.
    capacity as f64 * 8.0 / 7.0 / len as f64
}

#[test]
fn the_index_does_not_double_its_ram_when_every_shard_fills_at_once() {
    // 64 shards of equal share would each hold about 1,900 entries
    // here, just past a table's 1,792 (7/8 of 2,048): every one would
    // just have doubled to 4,096 buckets, 2.2 per entry.
    for entries in [120_000u64, 60_000, 200_000] {
        let p = Placements::new(64);
        for i in 0..entries {
            // splitmix64: well-spread hashes, as keys have.
            let mut h = i.wrapping_add(0x9E37_79B9_7F4A_7C15);
            h = (h ^ (h >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            h = (h ^ (h >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            h ^= h >> 31;
            let k = key("p", &i.to_string()).with_hash(h);
            p.lock(h).insert(k, disk(i + 1, 0, None));
        }
        assert_eq!(p.len() as u64, entries);
        let ratio = buckets_per_entry(&p);
        // Staggered shares keep it near 1.65 at every size.
        assert!((1.3..1.9).contains(&ratio), "{entries}: {ratio}");
    }
}

#[test]
fn slots_that_do_not_fit_stay_full_and_work_the_same() {
    let p = Placements::new(1);
    let k = key("p", "huge-seq");
    let h = k.disk_hash();
    p.lock(h).insert(k.clone(), disk(1 << 50, 0, None));
    assert_eq!(forms(&p, h), (1, 0));
    let mut seen = Vec::new();
    p.for_each_named(|hash, named, slot| {
        let key = match named {
            Named::Key(k) => Some(k.clone()),
            Named::Prefix(_) => None,
        };
        seen.push((hash, key, slot.seq))
    });
    assert_eq!(seen, vec![(h, Some(k), 1 << 50)]);
    let mut picked = Vec::new();
    p.for_each_unlocked(|hash, slot| Some((hash, slot.seq)), |x| picked.push(x));
    assert_eq!(picked, vec![(h, 1 << 50)]);
}

#[test]
fn snapshots_name_compact_slots_by_prefix_once_each() {
    let p = Placements::new(2);
    let a = key("ds", "a");
    let b = key("ds", "b");
    p.lock(a.disk_hash()).insert(a.clone(), disk(1, 0, None));
    let resident = Slot {
        place: Place::Memory { on_disk: true },
        ..disk(2, 0, None)
    };
    p.lock(b.disk_hash()).insert(b.clone(), resident);
    let mut named = Vec::new();
    p.for_each_named(|hash, n, _| {
        named.push(match n {
            Named::Key(k) => format!("{hash}:key {}", k.key()),
            Named::Prefix(prefix) => format!("{hash}:prefix {prefix}"),
        })
    });
    named.sort();
    let mut want = vec![
        format!("{}:prefix ds", a.disk_hash()),
        format!("{}:key b", b.disk_hash()),
    ];
    want.sort();
    assert_eq!(named, want);
}

/// Keys `a`, `b` and `c` share one hash; `c`'s disk-only slot is too big
/// for the compact form (its sequence number needs more than 48 bits), so
/// it stays in the full table. A guard that touched the hash for `a` or
/// `b` must put back the slot it touched, not stop at `c`'s.
#[test]
fn an_oversized_slot_under_a_hash_never_stands_in_for_the_touched_one() {
    let p = Placements::new(1);
    let b = key("p", "b");
    let h = b.disk_hash();
    let a = key("p", "a").with_hash(h);
    let c = key("p", "c").with_hash(h);
    p.lock(h).insert(c.clone(), disk(1 << 50, 0, None));
    assert_eq!(forms(&p, h), (1, 0), "c does not fit the compact form");
    p.lock(h).insert(b.clone(), disk(7, 0, None));
    assert_eq!((forms(&p, h), p.len()), ((1, 1), 2), "b compact beside c");
    // A look-up of a key with no slot of its own claims b's compact slot
    // for the guard's life (the read path then refuses b's record): it
    // must go back to the compact form, where b finds it.
    assert_eq!(p.lock(h).get(&a).map(|s| s.seq), Some(7));
    assert_eq!((forms(&p, h), p.len()), ((1, 1), 2));
    assert_eq!(p.lock(h).get(&b).map(|s| s.seq), Some(7));
    assert_eq!(p.lock(h).get(&c).map(|s| s.seq), Some(1 << 50));
    // b promoted, then evicted unchanged: compact again, c untouched.
    p.lock(h).current(&b, 7).unwrap().place = Place::Memory { on_disk: true };
    assert_eq!(forms(&p, h), (2, 0));
    p.lock(h).current(&b, 7).unwrap().place = Place::Disk;
    assert_eq!((forms(&p, h), p.len()), ((1, 1), 2));
    assert_eq!(p.lock(h).get(&b).map(|s| s.seq), Some(7));
}
