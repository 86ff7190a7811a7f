//! The cache directory: private to its owner, never a planted symlink, and
//! its metadata damaged by a kill (or anything else) never blocks an open.

mod common;

use std::os::unix::fs::PermissionsExt;

use common::*;
use spillway::Error;

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_directory_and_its_files_are_private_to_the_owner() {
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("new/cache");
    let cache = small(&dir).build().await.unwrap();
    for i in 0..60 {
        insert(&cache, &key("a", i), blob(i, 1)).await;
    }
    cache.close().await.unwrap();
    assert_eq!(mode(&dir), 0o700);
    let mut files = 0;
    for entry in walk(&dir) {
        let m = mode(&entry);
        if entry.is_dir() {
            assert_eq!(m, 0o700, "{}", entry.display());
        } else {
            assert_eq!(m, 0o600, "{}", entry.display());
            files += 1;
        }
    }
    assert!(files >= 4, "lock, format file, journal, foyer's device");
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(walk(&path));
        }
        out.push(path);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_others_can_write_to_is_refused_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let err = small(dir.path()).build().await.unwrap_err();
    assert!(matches!(err, Error::UnsafeDir { .. }), "{err}");
    assert!(
        err.to_string().contains(&dir.path().display().to_string()),
        "{err}"
    );
    assert!(err.to_string().contains("write"), "{err}");
}

/// A FIFO planted as the lock file of a directory others can write to: the
/// open is refused as for any such directory, rather than blocked opening
/// the FIFO (the check for another process's release reads that file).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_planted_fifo_lock_file_does_not_hold_the_open_up() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("spillway.lock");
    let made = std::process::Command::new("mkfifo").arg(&fifo).status();
    if !made.is_ok_and(|s| s.success()) {
        eprintln!("skipped: no mkfifo here");
        return;
    }
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    // A hang is the failure this guards against: a bound, not a timing.
    // (An open blocked in the kernel holds the thread this timer runs on
    // too; the suite's own timeout in `.ci/run` then fails the run.)
    let opened = tokio::time::timeout(
        std::time::Duration::from_secs(60),
        small(dir.path()).build(),
    )
    .await
    .expect("the open blocked on the planted FIFO");
    let err = opened.unwrap_err();
    assert!(matches!(err, Error::UnsafeDir { .. }), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_of_another_user_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    // Only root can give a directory away; elsewhere there is nothing to test.
    if std::os::unix::fs::chown(dir.path(), Some(65534), None).is_err() {
        eprintln!("skipped: cannot chown here (not root)");
        return;
    }
    let err = small(dir.path()).build().await.unwrap_err();
    assert!(err.to_string().contains("owned by uid 65534"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_symlink_planted_in_place_of_a_cache_file_is_refused() {
    let outside = tempfile::tempdir().unwrap();
    let victim = outside.path().join("victim");
    std::fs::write(&victim, b"precious").unwrap();
    for name in ["spillway.lock", "spillway.toml", "foyer/blocks"] {
        // A cache directory in use before, then tampered with.
        let dir = tempfile::tempdir().unwrap();
        small(dir.path())
            .build()
            .await
            .unwrap()
            .close()
            .await
            .unwrap();
        let planted = dir.path().join(name);
        std::fs::remove_file(&planted).unwrap();
        std::os::unix::fs::symlink(&victim, &planted).unwrap();
        let err = small(dir.path()).build().await;
        let err = err
            .err()
            .unwrap_or_else(|| panic!("{name}: the planted symlink was accepted"));
        assert!(
            err.to_string().contains(dir.path().to_str().unwrap()),
            "{name}: {err}"
        );
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious", "{name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_format_file_resets_the_directory_instead_of_blocking_it() {
    for damage in ["", "format_version = ", "\u{0}\u{0}\u{0}garbage"] {
        let dir = tempfile::tempdir().unwrap();
        fill_and_close(small(dir.path()), "a", 60).await;
        // What a kill in the middle of an in-place rewrite used to leave.
        std::fs::write(dir.path().join("spillway.toml"), damage).unwrap();
        std::fs::write(dir.path().join("journal.99.tmp"), b"half a snapshot").unwrap();
        let cache = small(dir.path())
            .build()
            .await
            .unwrap_or_else(|e| panic!("{damage:?}: {e}"));
        let s = cache.stats();
        assert!(s.recovery.dir_reset, "{s:#?}");
        assert_eq!(
            s.recovery.entries, 0,
            "nothing of unknown provenance is served"
        );
        assert!(cache.get(&key("a", 0)).await.is_none());
        assert!(
            !dir.path().join("journal.99.tmp").exists(),
            "leftovers cleaned"
        );
        cache.close().await.unwrap();
        drop(cache);
        // And the next open is an ordinary one.
        let again = small(dir.path()).build().await.unwrap();
        assert!(!again.stats().recovery.dir_reset);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unchanged_format_file_is_not_rewritten() {
    let dir = tempfile::tempdir().unwrap();
    small(dir.path())
        .build()
        .await
        .unwrap()
        .close()
        .await
        .unwrap();
    let meta = dir.path().join("spillway.toml");
    let before = std::fs::metadata(&meta).unwrap().modified().unwrap();
    let inode = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&meta).unwrap());
    small(dir.path())
        .build()
        .await
        .unwrap()
        .close()
        .await
        .unwrap();
    let after = std::fs::metadata(&meta).unwrap();
    assert_eq!(after.modified().unwrap(), before);
    assert_eq!(std::os::unix::fs::MetadataExt::ino(&after), inode);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_journal_damaged_in_the_middle_resets_the_disk_tier_and_serves_nothing_stale() {
    let dir = tempfile::tempdir().unwrap();
    fill_and_close(small(dir.path()), "a", 60).await;
    let journal = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("journal.")
        })
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .unwrap();
    let mut bytes = std::fs::read(&journal).unwrap();
    assert!(bytes.len() > 200, "a snapshot of 60 entries");
    let middle = bytes.len() / 2;
    for b in &mut bytes[middle..middle + 23] {
        *b = 0;
    }
    std::fs::write(&journal, &bytes).unwrap();
    let cache = small(dir.path()).build().await.unwrap();
    let s = cache.stats();
    assert!(s.recovery.dir_reset, "{s:#?}");
    assert_eq!(s.recovery.entries, 0);
    for i in 0..60 {
        assert!(
            cache.get(&key("a", i)).await.is_none(),
            "a/{i} served from a damaged journal"
        );
    }
    // The reset directory works as a new one.
    for i in 0..60 {
        insert(&cache, &key("b", i), blob(i, 2)).await;
    }
    cache.close().await.unwrap();
    drop(cache);
    let cache = small(dir.path()).build().await.unwrap();
    assert_eq!(cache.stats().recovery.entries, 60);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_or_an_uncreatable_path_names_disk_dir_and_the_path() {
    let parent = tempfile::tempdir().unwrap();
    let file = parent.path().join("a-file");
    std::fs::write(&file, b"not a directory").unwrap();
    for path in [file.clone(), file.join("below")] {
        let err = small(&path).build().await.unwrap_err().to_string();
        assert!(err.contains("disk.dir"), "{err}");
        assert!(err.contains(&path.display().to_string()), "{err}");
    }
    assert_eq!(std::fs::read(&file).unwrap(), b"not a directory");
}

const ENV_RO_DIR: &str = "SPILLWAY_READ_ONLY_DIR";

/// An existing directory nothing can be written to (a read-only filesystem,
/// since permission bits do not stop root, and CI runs as root), and a path
/// below it that cannot be created: each error names `disk.dir` and the path.
#[test]
fn an_unwritable_directory_names_disk_dir_and_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let envs = [(ENV_RO_DIR, dir.path().as_os_str())];
    let Some(out) = run_child_on_tmpfs("unwritable_dir_child", dir.path(), "ro,mode=0700", &envs)
    else {
        return;
    };
    assert_child_passed(&out, "child done");
}

/// A full filesystem at open time: `build` fails naming `disk.dir` and the
/// path (spec, section 5), rather than failing later on a write.
#[test]
fn a_full_disk_at_open_names_disk_dir_and_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let envs = [
        (ENV_RO_DIR, dir.path().as_os_str()),
        (ENV_FILL, "1".as_ref()),
    ];
    let Some(out) = run_child_on_tmpfs(
        "unwritable_dir_child",
        dir.path(),
        "size=1m,mode=0700",
        &envs,
    ) else {
        return;
    };
    assert_child_passed(&out, "child done");
}

const ENV_FILL: &str = "SPILLWAY_FILL_FIRST";

/// The child's entry point; a no-op in a normal test run.
#[test]
fn unwritable_dir_child() {
    let Ok(dir) = std::env::var(ENV_RO_DIR) else {
        return;
    };
    let dir = std::path::PathBuf::from(dir);
    if std::env::var(ENV_FILL).is_ok() {
        // Fill the filesystem first; the cache directory is created below.
        let mut ballast = std::fs::File::create(dir.join("ballast")).unwrap();
        let chunk = vec![0xa5u8; 4096];
        while std::io::Write::write_all(&mut ballast, &chunk).is_ok() {}
    }
    let rt = two_thread_runtime();
    rt.block_on(async {
        let paths = if std::env::var(ENV_FILL).is_ok() {
            vec![dir.join("cache")]
        } else {
            vec![dir.clone(), dir.join("below")]
        };
        for path in paths {
            let err = small(&path).build().await.unwrap_err();
            let text = err.to_string();
            assert!(
                matches!(err, spillway::Error::Config { .. }),
                "{path:?}: {err:?}"
            );
            assert!(text.contains("disk.dir"), "{text}");
            assert!(text.contains(&path.display().to_string()), "{text}");
            eprintln!("{text}");
        }
    });
    eprintln!("child done");
}

#[test]
fn inspect_says_what_it_found_and_never_suggests_a_reset() {
    let missing = spillway::DirReport::read("/no/such/spillway/dir")
        .unwrap_err()
        .to_string();
    assert!(
        missing.contains("/no/such/spillway/dir") && missing.contains("no such directory"),
        "{missing}"
    );
    let empty = tempfile::tempdir().unwrap();
    let other = spillway::DirReport::read(empty.path())
        .unwrap_err()
        .to_string();
    assert!(other.contains("not a spillway cache directory"), "{other}");
    for err in [&missing, &other] {
        assert!(!err.contains("reset") && !err.contains("wipe"), "{err}");
    }
}

/// The lock file names its holder, and nothing else: it is written over in
/// place, not truncated, so a reopen must leave none of the last holder's
/// release mark behind (else another process would take the open cache
/// for one being released, and wait for it instead of being refused).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reopened_directory_s_lock_file_names_its_holder_alone() {
    let dir = tempfile::tempdir().unwrap();
    let lock_file = dir.path().join("spillway.lock");
    let text = || std::fs::read_to_string(&lock_file).unwrap();
    let me = std::process::id().to_string();
    for round in 0..3 {
        let cache = small(dir.path()).build().await.unwrap();
        assert_eq!(text().trim_end(), me, "round {round}: open");
        insert(&cache, &key("a", round), blob(round, 1)).await;
        cache.close().await.unwrap();
        drop(cache);
        assert_eq!(
            text().trim_end(),
            format!("{me} releasing"),
            "round {round}: dropped"
        );
    }
}

/// A lock file longer than spillway writes (damaged, or left by something
/// else) that ends in a release mark is cut at the open: it then names the
/// holder alone, not a cache being released (another process would wait a
/// minute for that instead of being refused at once). Found by an
/// adversarial review.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_damaged_lock_file_is_cut_to_name_its_holder_alone() {
    let dir = tempfile::tempdir().unwrap();
    let lock_file = dir.path().join("spillway.lock");
    fill_and_close(small(dir.path()), "a", 1).await;
    std::fs::write(&lock_file, "0000000000000000000000000000 releasing").unwrap();
    let cache = small(dir.path()).build().await.unwrap();
    let text = std::fs::read_to_string(&lock_file).unwrap();
    assert_eq!(text.trim_end(), std::process::id().to_string(), "{text:?}");
    cache.close().await.unwrap();
}
