//! A disk that fails, then recovers. The failure is real: the child process
//! runs with `RLIMIT_FSIZE` at 0, so the kernel fails every file write with
//! `EFBIG` (SIGXFSZ is ignored, inherited from the shell that starts it),
//! foyer's included. Then the limit is lifted again.
//!
//! Spilling must pause on the failure (counted, the memory tier serving on),
//! never lose an entry without counting it, and resume once the disk takes
//! writes again.

mod common;

use std::process::Command;

use common::*;
use rlimit::Resource;
use spillway::{CacheBackend, CacheTier};

const ENV_DIR: &str = "SPILLWAY_DISK_FAILURE_DIR";

#[test]
fn a_disk_that_fails_then_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let out = Command::new("sh")
        .arg("-c")
        .arg("trap '' XFSZ; exec \"$0\" \"$@\"")
        .arg(exe)
        .args([
            "disk_failure_child",
            "--exact",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env(ENV_DIR, dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the child failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("child done"),
        "the child did not run its scenario"
    );
}

fn set_file_size_limit(soft: u64) {
    let (_, hard) = rlimit::getrlimit(Resource::FSIZE).unwrap();
    rlimit::setrlimit(Resource::FSIZE, soft.min(hard), hard).unwrap();
}

/// The child's entry point; a no-op in a normal test run.
#[test]
fn disk_failure_child() {
    let Ok(dir) = std::env::var(ENV_DIR) else {
        return;
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let cache = small(std::path::Path::new(&dir))
            .persist_after(std::time::Duration::ZERO)
            .build()
            .await
            .unwrap();
        // Healthy: 60 entries of 8 KiB through 256 KiB of memory spill.
        for i in 0..60 {
            insert(&cache, &key("healthy", i), blob(i, 1)).await;
        }
        cache.flush().await;
        let before = cache.stats();
        assert!(before.spill.written > 0, "{before:#?}");
        assert_eq!(before.spill.not_written.total(), 0, "{before:#?}");

        eprintln!("phase: failing");
        // Failing: every write of this process now fails.
        set_file_size_limit(0);
        let mut failing = 0;
        while !cache.stats().spill.paused {
            assert!(
                failing < 5000,
                "spilling never paused: {:#?}",
                cache.stats()
            );
            insert(&cache, &key("failing", failing), blob(failing, 1)).await;
            failing += 1;
            if failing % 16 == 0 {
                cache.flush().await;
            }
        }
        for i in failing..failing + 40 {
            insert(&cache, &key("failing", i), blob(i, 1)).await;
        }
        failing += 40;
        cache.flush().await;
        let paused = cache.stats();
        assert!(paused.spill.paused, "{paused:#?}");
        // Nothing lost uncounted: each missing entry is a counted disk failure.
        let mut missing = 0;
        for i in 0..failing {
            match cache.get_without_promotion(&key("failing", i)).await {
                Some(entry) => assert_eq!(as_blob(&entry), &blob(i, 1)),
                None => missing += 1,
            }
        }
        let lost = paused.spill.not_written.disk_dropped + paused.spill.not_written.disk_disabled;
        assert!(
            missing > 0 && missing <= lost,
            "{missing} missing, {lost} counted: {paused:#?}"
        );
        // The memory tier keeps serving.
        assert_eq!(
            cache.peek_tier(&key("failing", failing - 1)).await,
            CacheTier::Resident
        );

        eprintln!("phase: recovering");
        // Recovered: the disk takes writes again, and spilling resumes.
        set_file_size_limit(u64::MAX);
        wait_for_stats(&cache, "spilling to resume", |s| !s.spill.paused).await;
        let resumed = cache.stats();
        for i in 0..60 {
            insert(&cache, &key("recovered", i), blob(i, 1)).await;
        }
        cache.flush().await;
        let after = cache.stats();
        assert!(after.spill.written > resumed.spill.written, "{after:#?}");
        assert_eq!(
            after.spill.not_written.total(),
            resumed.spill.not_written.total(),
            "nothing lost once the disk works: {after:#?}"
        );
        assert!(!after.spill.paused);
        for i in 0..60 {
            let entry = cache
                .get_without_promotion(&key("recovered", i))
                .await
                .unwrap_or_else(|| panic!("recovered/{i} lost: {:#?}", cache.stats()));
            assert_eq!(as_blob(&entry), &blob(i, 1));
        }
        assert_eq!(
            cache.peek_tier(&key("recovered", 0)).await,
            CacheTier::Local,
            "spilled to disk after the recovery"
        );
        // Records written before the failure survive it.
        let healthy_on_disk = before.disk.entries as usize;
        let mut healthy = 0;
        for i in 0..60 {
            if let Some(entry) = cache.get_without_promotion(&key("healthy", i)).await {
                assert_eq!(as_blob(&entry), &blob(i, 1));
                healthy += 1;
            }
        }
        assert!(
            healthy >= healthy_on_disk,
            "{healthy} of the {healthy_on_disk} records written before the failure: {:#?}",
            cache.stats()
        );
        eprintln!("child done");
    });
}
