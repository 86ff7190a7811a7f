//! The threads a cache starts for its disk tier run as `SCHED_BATCH`
//! threads, and the application's own threads are left as they were: read
//! from the kernel (`/proc/self/task/*/stat`) for a real cache that has
//! spilled and read back, so that a disk runtime built without the policy
//! (or the policy applied to the wrong threads) fails here.
#![cfg(target_os = "linux")]

mod common;

use common::*;
use spillway::CacheBackend;

/// `SCHED_OTHER` and `SCHED_BATCH` as the kernel numbers them (field 41 of
/// `/proc/<pid>/task/<tid>/stat`).
const SCHED_OTHER: i64 = 0;
const SCHED_BATCH: i64 = 3;

/// Field `n` (1-based, as proc(5) numbers them) of a task's stat line. The
/// name (field 2) is in parentheses and may hold spaces or parentheses of
/// its own: fields are counted from the last `)`, where field 3 begins.
fn stat_field(stat: &str, n: usize) -> Option<i64> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    after_name.split_whitespace().nth(n - 3)?.parse().ok()
}

/// Every thread of this process: its name and scheduling policy (field 41).
fn threads() -> Vec<(String, i64)> {
    let mut out = Vec::new();
    for task in std::fs::read_dir("/proc/self/task").expect("list /proc/self/task") {
        let path = task.expect("a task").path();
        // A thread that ended between the listing and the read is skipped.
        let (Ok(comm), Ok(stat)) = (
            std::fs::read_to_string(path.join("comm")),
            std::fs::read_to_string(path.join("stat")),
        ) else {
            continue;
        };
        let policy = stat_field(&stat, 41).expect("field 41, the policy");
        out.push((comm.trim().to_string(), policy));
    }
    out
}

/// The calling thread's nice value (field 19).
fn nice_of_this_thread() -> Option<i64> {
    stat_field(&std::fs::read_to_string("/proc/thread-self/stat").ok()?, 19)
}

/// Whether this environment runs threads at the defaults (`SCHED_OTHER`,
/// nice 0) and lets them take `SCHED_BATCH` (a niced test run, or a seccomp
/// filter, may not; spillway then leaves its threads alone): asked of the
/// kernel on a scratch thread, not through spillway.
fn batch_permitted() -> bool {
    use thread_priority::{
        set_thread_priority_and_policy, thread_native_id, NormalThreadSchedulePolicy,
        ThreadPriority, ThreadPriorityOsValue, ThreadSchedulePolicy,
    };
    std::thread::spawn(|| {
        let other = ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Other);
        thread_priority::thread_schedule_policy().ok() == Some(other)
            && nice_of_this_thread() == Some(0)
            && set_thread_priority_and_policy(
                thread_native_id(),
                ThreadPriority::Os(ThreadPriorityOsValue::default()),
                ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Batch),
            )
            .is_ok()
    })
    .join()
    .unwrap_or(false)
}

#[test]
fn a_caches_disk_threads_are_batch_threads_and_the_applications_are_not() {
    let permitted = batch_permitted();
    let runtime = two_thread_runtime();
    runtime.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let cache = small(dir.path()).build().await.unwrap();
        // Far more than the 256 KiB of memory: most spill, and reading
        // them back runs `pread`s on the disk threads.
        for id in 0..100 {
            insert(&cache, &key("p", id), blob(id, 1)).await;
        }
        cache.flush().await;
        let mut read_back = 0;
        for id in 0..100 {
            if let Some(entry) = cache.get_without_promotion(&key("p", id)).await {
                assert_eq!(as_blob(&entry), &blob(id, 1));
                read_back += 1;
            }
        }
        assert_eq!(read_back, 100, "nothing lost while there is room");
        assert!(cache.stats().disk.hits > 0, "some reads came from the disk");

        let all = threads();
        // The disk tier's own runtime (its flushers, the spill worker, the
        // `pread`/`pwrite` threads) and the shared one (compactions).
        let disk: Vec<_> = all
            .iter()
            .filter(|(name, _)| {
                name.starts_with("spillway-foyer") || name.starts_with("spillway-disk")
            })
            .collect();
        assert!(
            !disk.is_empty(),
            "the disk tier's runtime has threads: {all:?}"
        );
        let expected = if permitted { SCHED_BATCH } else { SCHED_OTHER };
        for (name, policy) in &disk {
            assert_eq!(*policy, expected, "{name}: {all:?}");
        }
        // This test's own threads (the runtime's workers, this one) are
        // the application's: untouched. (spillway's other threads, the
        // stdout forwarder and the reaper, are plain threads of its own.)
        let app: Vec<_> = all
            .iter()
            .filter(|(name, _)| !name.starts_with("spillway"))
            .collect();
        assert!(!app.is_empty());
        for (name, policy) in &app {
            assert_eq!(*policy, SCHED_OTHER, "{name}: {all:?}");
        }
        cache.close().await.unwrap();
    });
}
