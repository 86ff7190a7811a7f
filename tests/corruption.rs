//! Damaged files: every file of a cache directory (foyer's device file, the
//! journal, the format file, the lock file) gets its bytes flipped, a range
//! zeroed, cut in half or emptied, once while the cache is open and once
//! between `close` and the next open. Whatever was damaged, the directory
//! opens again, nothing panics, and every read is a miss or the latest value
//! of its key: never a replaced version, never an invalidated entry, never
//! other bytes.

mod common;

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use common::*;
use spillway::{CacheBackend, TwoTierCacheBackend};

#[derive(Clone, Copy, Debug)]
enum Damage {
    /// One byte flipped in every 1/64th of the bytes in use.
    Flip,
    /// An eighth of the bytes in use zeroed, a third of the way in.
    Zero,
    /// The second half of the bytes in use cut off.
    Half,
    /// Emptied.
    Empty,
}

const DAMAGES: [Damage; 4] = [Damage::Flip, Damage::Zero, Damage::Half, Damage::Empty];

/// Damages `path` in place (same inode, so an open cache sees it too).
fn damage(path: &Path, how: Damage) {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    // foyer's device file is mostly unwritten: aim at the bytes in use.
    let len = used_len(path);
    match how {
        Damage::Flip => {
            let step = (len / 64).max(1);
            for at in (0..len).step_by(step as usize) {
                let at = at + (step / 2).min(len - 1 - at);
                let mut byte = [0u8];
                file.read_exact_at(&mut byte, at).unwrap();
                file.write_all_at(&[byte[0] ^ 0x5a], at).unwrap();
            }
        }
        Damage::Zero => {
            let start = len / 3;
            let n = (len / 8).max(23).min(len - start);
            file.write_all_at(&vec![0; n as usize], start).unwrap();
        }
        Damage::Half => file.set_len(len / 2).unwrap(),
        Damage::Empty => file.set_len(0).unwrap(),
    }
}

/// Every regular file under `dir`.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(files(&path));
        } else {
            out.push(path);
        }
    }
    out.sort();
    out
}

/// The file names the test damages, by the role they play.
fn name_of(dir: &Path, path: &Path) -> String {
    path.strip_prefix(dir).unwrap().display().to_string()
}

const N: usize = 60;
const REPLACED: usize = 20;

/// The latest version of each key the set-up wrote: `a/i` is version 2 for
/// `i < REPLACED`, 1 after; `b/*` was invalidated; `c/i` is version 3.
fn latest(prefix: &str, i: usize) -> Option<u8> {
    match prefix {
        "a" if i < REPLACED => Some(2),
        "a" => Some(1),
        "c" => Some(3),
        _ => None,
    }
}

/// Writes versions that a damaged directory must never bring back: `a/*` at
/// version 1 spilled and then partly replaced, `b/*` spilled and then
/// invalidated.
async fn set_up(cache: &TwoTierCacheBackend) {
    for i in 0..N {
        insert(cache, &key("a", i), blob(i, 1)).await;
        insert(cache, &key("b", i), blob(i, 1)).await;
    }
    cache.flush().await;
    for i in 0..REPLACED {
        insert(cache, &key("a", i), blob(i, 2)).await;
    }
    cache.invalidate_prefix("b").await;
    cache.flush().await;
}

/// Which versions a read may return.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Rule {
    /// A miss or the latest version.
    Latest,
    /// A miss or any version the set-up wrote: a journal cut short is what
    /// a power loss leaves, and with `fsync = false` (the default) the
    /// README says a replacement or invalidation in the lost tail can be
    /// undone. Bytes must still be exact.
    AnyWritten,
}

/// Reads every key without promotion: each must be a miss or a version
/// `rule` allows, with exact bytes.
async fn check(cache: &TwoTierCacheBackend, context: &str, with_c: bool) -> usize {
    check_with(cache, context, with_c, Rule::Latest).await
}

async fn check_with(cache: &TwoTierCacheBackend, context: &str, with_c: bool, rule: Rule) -> usize {
    let mut present = 0;
    let prefixes: &[&str] = if with_c {
        &["a", "b", "c"]
    } else {
        &["a", "b"]
    };
    for prefix in prefixes {
        for i in 0..N {
            let Some(entry) = cache.get_without_promotion(&key(prefix, i)).await else {
                continue;
            };
            let bytes = as_blob(&entry);
            let version = bytes[8];
            let allowed = match (rule, *prefix) {
                (Rule::AnyWritten, "a" | "b") => version == 1 || latest(prefix, i) == Some(version),
                _ => latest(prefix, i) == Some(version),
            };
            assert!(allowed, "{context}: {prefix}/{i} read version {version}");
            assert_eq!(bytes, &blob(i, version), "{context}: {prefix}/{i} damaged");
            present += 1;
        }
    }
    present
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_file_damaged_between_close_and_open_never_serves_stale_or_wrong_bytes() {
    damaged_at_rest(true).await;
}

/// An abandoned cache's journal still holds every fact since its last
/// compaction (old versions' `Written` facts, then what killed them): a
/// damage that drops the later facts must not revive the earlier ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_file_of_an_abandoned_cache_damaged_never_serves_stale_or_wrong_bytes() {
    damaged_at_rest(false).await;
}

async fn damaged_at_rest(closed: bool) {
    let template = tempfile::tempdir().unwrap();
    let cache = small(template.path()).build().await.unwrap();
    set_up(&cache).await;
    if closed {
        cache.close().await.unwrap();
    }
    drop(cache);
    let targets: Vec<String> = files(template.path())
        .iter()
        .map(|p| name_of(template.path(), p))
        .collect();
    assert!(
        targets.iter().any(|n| n.starts_with("journal.")),
        "{targets:?}"
    );
    assert!(targets.len() >= 4, "{targets:?}");
    for target in &targets {
        for how in DAMAGES {
            let context = format!("{target} {how:?} at rest (closed: {closed})");
            let dir = tempfile::tempdir().unwrap();
            copy_dir(template.path(), dir.path());
            damage(&dir.path().join(target), how);
            let cache = small(dir.path())
                .build()
                .await
                .unwrap_or_else(|e| panic!("{context}: the directory did not open: {e}"));
            // Only an abandoned journal still holds the facts a cut can drop
            // (a closed one is a compacted snapshot of live records).
            let cut = matches!(how, Damage::Half | Damage::Empty);
            let rule = if !closed && cut && target.starts_with("journal.") {
                Rule::AnyWritten
            } else {
                Rule::Latest
            };
            let present = check_with(&cache, &context, false, rule).await;
            eprintln!("{context}: {present} keys served");
            // It keeps working, and a graceful restart keeps it right.
            for i in 0..N {
                insert(&cache, &key("c", i), blob(i, 3)).await;
            }
            cache.close().await.unwrap();
            drop(cache);
            let cache = small(dir.path()).build().await.unwrap();
            check_with(&cache, &format!("{context}, reopened"), true, rule).await;
            cache.close().await.unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_file_damaged_while_open_never_serves_stale_or_wrong_bytes() {
    let mut targets = Vec::new();
    for round in 0.. {
        let dir = tempfile::tempdir().unwrap();
        let cache = small(dir.path()).build().await.unwrap();
        set_up(&cache).await;
        if round == 0 {
            targets = files(dir.path())
                .iter()
                .map(|p| name_of(dir.path(), p))
                .collect();
            assert!(targets.len() >= 4, "{targets:?}");
        }
        let Some(target) = targets.get(round / DAMAGES.len()) else {
            cache.close().await.unwrap();
            break;
        };
        let how = DAMAGES[round % DAMAGES.len()];
        let context = format!("{target} {how:?} while open");
        let path = dir.path().join(target);
        if !path.exists() {
            // A journal generation this run rotated away already.
            cache.close().await.unwrap();
            continue;
        }
        damage(&path, how);
        let present = check(&cache, &context, false).await;
        eprintln!("{context}: {present} keys served");
        for i in 0..N {
            insert(&cache, &key("c", i), blob(i, 3)).await;
        }
        cache.flush().await;
        check(&cache, &format!("{context}, after more writes"), true).await;
        // `close` may report the damage; the next open must work regardless.
        if let Err(e) = cache.close().await {
            eprintln!("{context}: close reported {e}");
        }
        drop(cache);
        let cache = small(dir.path())
            .build()
            .await
            .unwrap_or_else(|e| panic!("{context}: the directory did not open: {e}"));
        check(&cache, &format!("{context}, reopened"), true).await;
        cache.close().await.unwrap();
    }
}

fn copy_dir(from: &Path, to: &Path) {
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            std::fs::create_dir_all(&target).unwrap();
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}
