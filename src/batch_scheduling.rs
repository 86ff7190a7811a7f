//! spillway's disk threads yield to the application's at wake-up.
//!
//! Every thread of spillway's disk runtimes (foyer's flushers and
//! reclaimers, the spill workers, the `pread`/`pwrite` threads) runs under
//! Linux's `SCHED_BATCH` policy. It keeps the thread's fair share of CPU
//! (same weight, same nice value) and changes one thing: when the thread
//! wakes, it does not preempt the thread running on that core; it waits
//! for that thread's slice to end or for it to sleep.
//!
//! Why: these threads wake thousands of times a second (a spill batch, a
//! block write, a read done) and each wake could preempt one of the
//! application's runtime workers in the middle of its tasks, which then
//! waited for the background burst to end. foyer's HybridCache, whose
//! flushers are tasks on the application's runtime, never does that. On
//! 2 cores, in the head-to-head bench's 4 KiB cell with 16 tasks, the p99
//! of foyer's record load inside spillway's disk hits was 4.3-5.5 ms (with
//! 2, 4 or 64 disk threads alike, so not a queue for threads) against
//! foyer's whole disk hit at 1.4-1.6; as batch threads, 2.7-3.4 ms. That
//! cell's read p99 went from 1.5-1.7x foyer's to 1.2x and its throughput
//! up about 5% (`bench-scaling` A/B, alternating runs); the O_DIRECT spill
//! storm, whose writer is the application, from 0.49x the device to 0.55x.
//!
//! Not with `direct_io`: a disk tier on an `O_DIRECT` device keeps its
//! threads at the application's policy. Its `pread` threads do not copy
//! from the page cache; they sleep on the device, and their wake-up is a
//! read ending, which its caller is waiting for: as a batch thread it
//! waited for the running thread's slice first. In the head-to-head cells
//! run with `direct_io` on 2 cores (16 tasks, old and new builds
//! alternating, two runs of 3 repetitions each, together with the 64 disk
//! threads `disk_runtime::io_threads` now gives a direct device), the
//! 4 KiB 50 µs-loader cell went from 0.72-0.79x foyer's throughput to
//! 0.89-0.91x and its read p99 from 4.1-4.9 ms (foyer 2.2-2.5) to 1.6-1.8;
//! the 64 KiB cells from 0.63-0.92x to 0.97-1.10x. (Without the batch
//! policy alone, at 64 threads, the 4 KiB 50 µs-loader cell's disk hits
//! took 0.29-0.37 ms at the median against 1.1-1.2 ms.)
//!
//! Only a thread under the default policy (`SCHED_OTHER`) at nice 0 is
//! changed. A thread inherits its creator's policy and nice value, and
//! spillway does not second-guess an application that chose its own: one
//! run under a real-time or idle policy, or niced, keeps that for
//! spillway's threads too (setting the policy also sets the nice value).
//! A refusal (a seccomp filter, say) is logged at debug and changes nothing
//! else. Outside Linux this does nothing. A thread started *from* a disk
//! thread (by code a codec or the remote tier runs there) inherits its
//! batch policy, as it would any other; tokio's own threads are set here.

/// Puts the calling thread under `SCHED_BATCH` if it is under `SCHED_OTHER`
/// at nice 0, keeping nice 0 (see the module's notes). Returns whether it
/// did.
pub(crate) fn current_thread() -> bool {
    #[cfg(target_os = "linux")]
    {
        use thread_priority::{
            set_thread_priority_and_policy, thread_native_id, NormalThreadSchedulePolicy,
            ThreadPriority, ThreadPriorityOsValue, ThreadSchedulePolicy,
        };
        if !at_default_priority() {
            return false;
        }
        // `Os(0)` is nice 0 for the normal policies: unchanged.
        let set = set_thread_priority_and_policy(
            thread_native_id(),
            ThreadPriority::Os(ThreadPriorityOsValue::default()),
            ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Batch),
        );
        match set {
            Ok(()) => true,
            Err(e) => {
                tracing::debug!(error = ?e, "could not make a disk thread a batch thread");
                false
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        false
    }
}

/// Whether the calling thread runs under `SCHED_OTHER` at nice 0, the
/// defaults an application that chose nothing gets.
#[cfg(target_os = "linux")]
fn at_default_priority() -> bool {
    use thread_priority::{NormalThreadSchedulePolicy, ThreadSchedulePolicy};
    let other = ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Other);
    current_nice() == Some(0) && thread_priority::thread_schedule_policy().ok() == Some(other)
}

/// The calling thread's nice value, from `/proc/thread-self/stat` (field 19).
#[cfg(target_os = "linux")]
fn current_nice() -> Option<i32> {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").ok()?;
    // The command name (field 2) is in parentheses and may hold spaces or
    // parentheses of its own: count fields from the last `)`, where field
    // 3 begins.
    let after_name = &stat[stat.rfind(')')? + 1..];
    after_name.split_whitespace().nth(19 - 3)?.parse().ok()
}

/// Whether a thread started now would be made a batch thread: the
/// environment runs threads at the defaults and lets them take
/// `SCHED_BATCH` (a seccomp filter may not). Asked of the kernel through
/// the crate directly, on a scratch thread, not through `current_thread`,
/// so that a test using it still fails if `current_thread` breaks.
#[cfg(all(test, target_os = "linux"))]
pub(crate) fn batch_permitted() -> bool {
    use thread_priority::{
        set_thread_priority_and_policy, thread_native_id, NormalThreadSchedulePolicy,
        ThreadPriority, ThreadPriorityOsValue, ThreadSchedulePolicy,
    };
    std::thread::spawn(|| {
        at_default_priority()
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

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use thread_priority::{
        set_thread_priority_and_policy, thread_native_id, NormalThreadSchedulePolicy,
        ThreadPriority, ThreadPriorityOsValue, ThreadPriorityValue, ThreadSchedulePolicy,
    };

    const OTHER: ThreadSchedulePolicy =
        ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Other);
    const BATCH: ThreadSchedulePolicy =
        ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Batch);

    fn policy() -> ThreadSchedulePolicy {
        thread_priority::thread_schedule_policy().expect("read the thread's policy")
    }

    /// Runs `f` on a fresh thread (what a thread of its own does to its
    /// policy stays there).
    fn on_a_thread(f: impl FnOnce() + Send + 'static) {
        std::thread::spawn(f).join().expect("the thread ran");
    }

    #[test]
    fn a_thread_at_the_defaults_becomes_a_batch_thread_at_nice_0() {
        let permitted = batch_permitted();
        on_a_thread(move || {
            let nice = current_nice();
            if permitted {
                assert!(current_thread());
                assert_eq!((policy(), current_nice()), (BATCH, Some(0)));
            } else {
                // The tests run under a chosen priority (`nice cargo test`)
                // or may not change it (a seccomp filter): nothing changes.
                let before = policy();
                assert!(!current_thread());
                assert_eq!((policy(), current_nice()), (before, nice));
            }
        });
    }

    #[test]
    fn a_thread_whose_nice_was_chosen_keeps_it_and_its_policy() {
        on_a_thread(|| {
            // Raising one's own nice value needs no privilege (lowering it
            // does). The crate maps 35 of its 0-100 scale to nice 5.
            if current_nice().is_some_and(|nice| nice <= 5) {
                let nice_5 = ThreadPriority::Crossplatform(
                    ThreadPriorityValue::try_from(35u8).expect("in range"),
                );
                set_thread_priority_and_policy(thread_native_id(), nice_5, OTHER)
                    .expect("raise the thread's nice value");
            }
            let nice = current_nice();
            assert_ne!(nice, Some(0));
            assert!(!current_thread());
            assert_eq!((policy(), current_nice()), (OTHER, nice));
        });
    }

    #[test]
    fn a_thread_under_another_policy_keeps_it() {
        on_a_thread(|| {
            // SCHED_IDLE needs no privilege to enter. The crate sets nice 0
            // with it, which a niced test run could not go back to.
            let idle = ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Idle);
            let nice = current_nice();
            if nice != Some(0) {
                assert!(!current_thread());
                return;
            }
            set_thread_priority_and_policy(
                thread_native_id(),
                ThreadPriority::Os(ThreadPriorityOsValue::default()),
                idle,
            )
            .expect("enter SCHED_IDLE");
            assert!(!current_thread());
            assert_eq!(policy(), idle);
            assert_eq!(current_nice(), nice);
        });
    }
}
