use super::*;
use crate::packing::PackRef;
use crate::shared_prefix::SharedPrefix;
use crate::InternalCacheKey;

fn k(prefix: &str, key: &str) -> InternalCacheKey {
    InternalCacheKey::new(prefix, key, "T")
}

#[test]
fn a_frame_is_length_crc_then_postcard_payload_byte_for_byte() {
    // The on-disk format, pinned: journals written by earlier builds
    // must keep replaying.
    let mut out = Vec::new();
    let fact = Fact::Tombstone {
        hash: 0x0102_0304_0506_0708,
        seq: 300,
    };
    frame_into(&fact, &mut out);
    frame_into(&fact, &mut out);
    let one = [
        12, 0, 0, 0, 76, 102, 95, 14, 1, 136, 142, 152, 168, 192, 224, 128, 129, 1, 172, 2,
    ];
    assert_eq!(out, [one, one].concat());
}

fn written(key: &InternalCacheKey, seq: u64) -> Fact {
    Fact::written(key, seq, 10, 100, 0, None)
}

fn replay_of(facts: &[Fact]) -> Replay {
    let dir = tempfile::tempdir().unwrap();
    write_snapshot(dir.path(), 0, facts).unwrap();
    replay(dir.path()).unwrap()
}

#[test]
fn latest_written_version_wins_in_any_order() {
    let a = k("p", "a");
    for facts in [
        [written(&a, 3), written(&a, 7)],
        [written(&a, 7), written(&a, 3)],
    ] {
        assert_eq!(replay_of(&facts).live[&a.disk_hash()].seq, 7);
    }
}

#[test]
fn kill_facts_apply_by_sequence_not_position() {
    let a = k("ds/1", "a");
    let b = k("ds/2", "b");
    let tomb = Fact::Tombstone {
        hash: a.disk_hash(),
        seq: 5,
    };
    let r = replay_of(&[written(&a, 4), tomb.clone()]);
    assert!(r.live.is_empty());
    let r = replay_of(&[tomb, written(&a, 4), written(&b, 4)]);
    assert_eq!(
        r.live.len(),
        1,
        "a tombstone written first still kills older versions"
    );
    let r = replay_of(&[
        written(&a, 4),
        written(&b, 4),
        Fact::Invalidated {
            prefix: "ds/1".into(),
            seq: 6,
        },
        written(&a, 9),
    ]);
    assert_eq!(
        r.live[&a.disk_hash()].seq,
        9,
        "newer than the invalidation survives"
    );
    assert!(r.live.contains_key(&b.disk_hash()));
    let r = replay_of(&[written(&a, 4), Fact::Cleared { seq: 8 }, written(&b, 9)]);
    assert_eq!(r.live.keys().collect::<Vec<_>>(), vec![&b.disk_hash()]);
}

fn stored(key: &InternalCacheKey, seq: u64, pack: u64) -> Fact {
    Fact::Stored {
        hash: key.disk_hash(),
        prefix: SharedPrefix::new(key.prefix()),
        seq,
        len: 100,
        expires_at: 0,
        pack,
        offset: 8,
    }
}

#[test]
fn stored_facts_replay_by_hash_and_kill_facts_reach_them() {
    let a = k("ds/1", "a");
    let b = k("ds/2", "b");
    let r = replay_of(&[stored(&a, 4, 9), stored(&b, 5, 0)]);
    let ra = &r.live[&a.disk_hash()];
    assert_eq!((ra.seq, ra.pack), (4, Some(PackRef { id: 9, offset: 8 })));
    assert_eq!(ra.owner, Identity::Prefix("ds/1".into()));
    assert_eq!(r.live[&b.disk_hash()].pack, None);
    assert_eq!(r.next_seq, 10, "pack ids count as sequence numbers");
    let inv = Fact::Invalidated {
        prefix: "ds/1".into(),
        seq: 6,
    };
    let r = replay_of(&[stored(&a, 4, 0), inv.clone(), stored(&b, 5, 0)]);
    assert_eq!(r.live.keys().collect::<Vec<_>>(), vec![&b.disk_hash()]);
    let tomb = Fact::Tombstone {
        hash: b.disk_hash(),
        seq: 6,
    };
    assert!(replay_of(&[tomb, stored(&b, 5, 0)]).live.is_empty());
    assert!(replay_of(&[stored(&b, 5, 0), Fact::Cleared { seq: 5 }])
        .live
        .is_empty());
}

#[test]
fn a_persisted_fact_is_a_version_on_disk_and_a_resident_one_in_one() {
    let (a, b) = (k("p", "a"), k("p", "b"));
    let at = PackRef { id: 40, offset: 4 };
    let persisted = |key: &InternalCacheKey, seq, expires_at, pack| {
        let slot = crate::placement::Slot {
            seq,
            place: crate::placement::Place::Memory { on_disk: true },
            size: 10,
            record_len: 100,
            expires_at,
            pack,
        };
        Fact::persisted(key, &slot)
    };
    // Numbered after every older variant: journals written before it
    // still read.
    let wire = postcard::to_stdvec(&persisted(&a, 3, 0, None)).unwrap();
    assert_eq!(wire[0], 10);
    // `WrittenPacked`, now a variant holding the fields `Persisted` has
    // too, is the same bytes as when it held them itself.
    let packed = Fact::written(&a, 3, 10, 100, 7, Some(at));
    let fields = (8u8, "p", "a", "T", 3u64, 10u64, 100u32, 7u64, 40u64, 4u16);
    assert_eq!(
        postcard::to_stdvec(&packed).unwrap(),
        postcard::to_stdvec(&fields).unwrap()
    );
    let r = replay_of(&[persisted(&a, 3, 5_000, None), persisted(&b, 5, 0, Some(at))]);
    let ra = &r.live[&a.disk_hash()];
    assert_eq!(
        (ra.seq, ra.size, ra.len, ra.expires_at),
        (3, 10, 100, 5_000)
    );
    assert_eq!(
        (ra.pack, &ra.owner),
        (None, &Identity::Key(Box::new(a.clone())))
    );
    assert_eq!(r.live[&b.disk_hash()].pack, Some(at));
    assert_eq!(r.next_seq, 41, "pack ids count as sequence numbers");
    assert_eq!(r.resident, vec![b.clone(), a.clone()], "latest first");
    // Resident only while it is the live version: not once killed, nor
    // once a newer version is on disk.
    let tomb = Fact::Tombstone {
        hash: a.disk_hash(),
        seq: 4,
    };
    let r = replay_of(&[persisted(&a, 3, 0, None), tomb]);
    assert!(r.live.is_empty() && r.resident.is_empty());
    let r = replay_of(&[persisted(&a, 3, 0, None), written(&a, 4)]);
    assert_eq!(r.live[&a.disk_hash()].seq, 4);
    assert!(r.resident.is_empty());
    // And, as `Written` then `Resident` always did, resident again
    // when persisted again.
    let r = replay_of(&[written(&a, 3), persisted(&a, 3, 0, None)]);
    assert_eq!(r.resident, vec![a.clone()]);
}

#[test]
fn a_resident_version_keeps_its_key_whichever_fact_names_it_last() {
    let a = k("p", "a");
    let resident = Fact::Resident {
        hash: a.disk_hash(),
        seq: 3,
    };
    for facts in [
        [written(&a, 3), stored(&a, 3, 0), resident.clone()],
        [stored(&a, 3, 0), written(&a, 3), resident.clone()],
    ] {
        let r = replay_of(&facts);
        assert_eq!(r.resident, vec![a.clone()]);
        // A reopen keeps the files it replayed: the key is still there.
        let dir = tempfile::tempdir().unwrap();
        write_snapshot(dir.path(), 0, &facts).unwrap();
        drop(Journal::resume(dir.path(), &r, false).unwrap());
        assert_eq!(replay(dir.path()).unwrap().resident, vec![a.clone()]);
    }
}

#[test]
fn deadlines_and_the_clock_replay_and_older_facts_still_read() {
    let a = k("p", "a");
    let b = k("p", "b");
    let r = replay_of(&[
        Fact::written(&a, 3, 10, 100, 5_000, None),
        written(&b, 4),
        Fact::Clock { at: 7_000 },
        Fact::Clock { at: 6_000 },
    ]);
    assert_eq!(r.live[&a.disk_hash()].expires_at, 5_000);
    assert_eq!(r.live[&b.disk_hash()].expires_at, 0);
    assert_eq!(r.clock, 7_000, "the latest time recorded");
    // Variants keep their numbers: a `Written` fact framed before
    // expiry existed (variant 0) still decodes as one.
    let bytes = postcard::to_stdvec(&written(&b, 4)).unwrap();
    assert_eq!(bytes[0], 0);
    // A reopen records the clock it starts from in its new file.
    let dir = tempfile::tempdir().unwrap();
    let _j = Journal::resume(dir.path(), &r, false).unwrap();
    assert_eq!(replay(dir.path()).unwrap().clock, 7_000);
}

#[test]
fn packed_versions_replay_with_their_pack_and_die_like_the_others() {
    let a = k("p", "a");
    let b = k("p", "b");
    let at = PackRef { id: 40, offset: 4 };
    let r = replay_of(&[
        Fact::written(&a, 3, 10, 100, 0, Some(at)),
        Fact::written(
            &b,
            5,
            10,
            100,
            9_000,
            Some(PackRef {
                id: 40,
                offset: 104,
            }),
        ),
        Fact::Tombstone {
            hash: b.disk_hash(),
            seq: 6,
        },
    ]);
    assert_eq!(r.live[&a.disk_hash()].pack, Some(at));
    assert!(
        !r.live.contains_key(&b.disk_hash()),
        "a tombstone kills a packed version"
    );
    // A pack id is a sequence number: never handed out again.
    let r = replay_of(&[Fact::written(
        &a,
        3,
        10,
        100,
        0,
        Some(PackRef { id: 900, offset: 4 }),
    )]);
    assert_eq!(r.next_seq, 901);
}

/// A promoted version whose pack foyer evicted is written again, into
/// another pack, under the same sequence number: the later fact names
/// where it is now.
#[test]
fn the_latest_fact_of_one_version_says_where_it_is() {
    let a = k("p", "a");
    let first = PackRef { id: 10, offset: 4 };
    let again = PackRef {
        id: 20,
        offset: 104,
    };
    let r = replay_of(&[
        Fact::written(&a, 3, 10, 100, 0, Some(first)),
        Fact::written(&a, 3, 10, 100, 0, Some(again)),
    ]);
    assert_eq!(r.live[&a.disk_hash()].pack, Some(again));
    // A newer version still wins whatever the order.
    let r = replay_of(&[
        Fact::written(&a, 4, 10, 100, 0, None),
        Fact::written(&a, 3, 10, 100, 0, Some(again)),
    ]);
    assert_eq!(
        (r.live[&a.disk_hash()].seq, r.live[&a.disk_hash()].pack),
        (4, None)
    );
}

#[test]
fn sequence_numbers_continue_past_reservations() {
    let r = replay_of(&[Fact::Reserved { upto: 1000 }, written(&k("p", "a"), 5)]);
    assert_eq!(r.next_seq, 1001);
}

#[test]
fn a_torn_tail_ends_the_replay_of_its_file() {
    let dir = tempfile::tempdir().unwrap();
    let a = k("p", "a");
    write_snapshot(dir.path(), 0, &[written(&a, 1), written(&k("p", "b"), 2)]).unwrap();
    let path = dir.path().join("journal.0");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() - 3]).unwrap();
    let r = replay(dir.path()).unwrap();
    assert_eq!((r.live.len(), r.torn_tails), (1, 1));
    assert!(r.live.contains_key(&a.disk_hash()));
    assert!(!r.corrupt);
}

#[test]
fn a_bad_frame_followed_by_more_data_is_corruption_not_a_torn_tail() {
    let dir = tempfile::tempdir().unwrap();
    let a = k("p", "a");
    let tomb = Fact::Tombstone {
        hash: a.disk_hash(),
        seq: 5,
    };
    write_snapshot(dir.path(), 0, &[written(&a, 1), written(&a, 2), tomb]).unwrap();
    let path = dir.path().join("journal.0");
    let clean = std::fs::read(&path).unwrap();
    // Damage the second frame: the tombstone after it would be lost.
    let second = 8 + u32::from_le_bytes(clean[..4].try_into().unwrap()) as usize;
    for at in [second + 3, second + 5, second + 9] {
        let mut bytes = clean.clone();
        bytes[at] ^= 0xff;
        std::fs::write(&path, &bytes).unwrap();
        let r = replay(dir.path()).unwrap();
        assert!(r.corrupt, "damage at byte {at}");
        assert!(r.live.is_empty(), "nothing trusted from a damaged journal");
    }
    // Zeros after a bad frame are what a power loss leaves: a torn tail.
    let mut bytes = clean[..second + 3].to_vec();
    bytes.resize(clean.len() + 100, 0);
    std::fs::write(&path, &bytes).unwrap();
    let r = replay(dir.path()).unwrap();
    assert!(!r.corrupt && r.torn_tails == 1);
}

#[test]
fn a_reopen_keeps_the_replayed_files_and_reserves_past_them() {
    let dir = tempfile::tempdir().unwrap();
    let a = k("p", "a");
    let b = k("p", "b");
    let r = replay(dir.path()).unwrap();
    assert!(!r.needs_compaction(), "nothing to fold");
    let j = Journal::resume(dir.path(), &r, false).unwrap();
    j.append(&[written(&a, 3)], false).unwrap();
    drop(j);
    let r = replay(dir.path()).unwrap();
    assert_eq!(r.live[&a.disk_hash()].seq, 3);
    // The first open reserved a block: nothing below it is handed out again.
    assert_eq!(r.next_seq, 1 + RESERVE_BLOCK + 1);
    assert!(!r.needs_compaction(), "one file");
    let j = Journal::resume(dir.path(), &r, false).unwrap();
    j.append(&[written(&b, r.next_seq)], false).unwrap();
    assert_eq!(
        journal_files(dir.path()).unwrap().len(),
        2,
        "the replayed file stays, the new one is appended to"
    );
    let again = replay(dir.path()).unwrap();
    assert_eq!(again.live[&a.disk_hash()].seq, 3);
    assert_eq!(again.live[&b.disk_hash()].seq, r.next_seq);
    assert_eq!(again.next_seq, r.next_seq + RESERVE_BLOCK + 1);
    assert!(again.needs_compaction(), "two files with facts");
    assert_eq!(again.files_with_facts, 2);
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig {
        failure_persistence: None,
        ..proptest::prelude::ProptestConfig::default()
    })]

    /// Damage of any kind (bytes changed, the file cut, garbage appended)
    /// never panics the replay and never yields a version that was not
    /// written: frames are checksummed, and damage in the middle makes
    /// the whole journal untrusted.
    #[test]
    fn a_damaged_journal_never_fabricates_a_version(
        damage in proptest::collection::vec((0usize..1 << 16, 0u8..=255), 0..6),
        cut in proptest::option::of(0usize..1 << 16),
        tail in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64),
    ) {
        let keys: Vec<_> = (0..20).map(|i| k(&format!("p{}", i % 3), &i.to_string())).collect();
        // Kill facts first: a cut or torn tail that loses one loses every
        // `Written` fact after it too (a torn tail may lose kill facts
        // appended after a version, which `fsync` is for).
        let mut facts: Vec<Fact> = keys
            .iter()
            .enumerate()
            .filter(|(i, _)| i % 4 == 0)
            .map(|(i, key)| Fact::Tombstone { hash: key.disk_hash(), seq: i as u64 + 2 })
            .collect();
        for (i, key) in keys.iter().enumerate() {
            facts.push(written(key, i as u64 + 1));
        }
        let dir = tempfile::tempdir().unwrap();
        write_snapshot(dir.path(), 0, &facts).unwrap();
        let path = dir.path().join("journal.0");
        let mut bytes = std::fs::read(&path).unwrap();
        for (at, byte) in damage {
            let at = at % bytes.len();
            bytes[at] = byte;
        }
        if let Some(cut) = cut {
            bytes.truncate(cut % (bytes.len() + 1));
        }
        bytes.extend_from_slice(&tail);
        std::fs::write(&path, &bytes).unwrap();
        let r = replay(dir.path()).unwrap();
        for (key, rec) in &r.live {
            let i = keys.iter().position(|k| k.disk_hash() == *key);
            proptest::prop_assert!(i.is_some(), "fabricated key {:?}", key);
            let i = i.unwrap();
            proptest::prop_assert_eq!(rec.seq, i as u64 + 1);
            proptest::prop_assert!(i % 4 != 0, "a version killed by its tombstone came back");
        }
    }
}
