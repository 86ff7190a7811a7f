//! Threads of this process as the kernel reports them
//! (`/proc/self/task/*/stat`), for the tests of the disk threads'
//! scheduling policy.
#![cfg(target_os = "linux")]

/// `SCHED_OTHER` and `SCHED_BATCH` as the kernel numbers them (field 41 of
/// `/proc/<pid>/task/<tid>/stat`).
pub const SCHED_OTHER: i64 = 0;
pub const SCHED_BATCH: i64 = 3;

/// Field `n` (1-based, as proc(5) numbers them) of a task's stat line. The
/// name (field 2) is in parentheses and may hold spaces or parentheses of
/// its own: fields are counted from the last `)`, where field 3 begins.
fn stat_field(stat: &str, n: usize) -> Option<i64> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    after_name.split_whitespace().nth(n - 3)?.parse().ok()
}

/// Every thread of this process: its name and scheduling policy (field 41).
pub fn threads() -> Vec<(String, i64)> {
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

/// The calling thread's scheduling policy (field 41).
pub fn this_threads_policy() -> Option<i64> {
    stat_field(&std::fs::read_to_string("/proc/thread-self/stat").ok()?, 41)
}

/// The calling thread's nice value (field 19).
fn nice_of_this_thread() -> Option<i64> {
    stat_field(&std::fs::read_to_string("/proc/thread-self/stat").ok()?, 19)
}

/// Whether this environment runs threads at the defaults (`SCHED_OTHER`,
/// nice 0) and lets them take `SCHED_BATCH` (a niced test run, or a seccomp
/// filter, may not; spillway then leaves its threads alone): asked of the
/// kernel on a scratch thread, not through spillway.
pub fn batch_permitted() -> bool {
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
