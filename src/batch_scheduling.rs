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
//! A thread whose nice value is not 0 (inherited from an application that
//! set its own) is left as it is: setting the policy also sets the nice
//! value, and spillway does not second-guess one the application chose.
//! A refusal (a seccomp filter, say) is logged at debug and changes nothing
//! else. Outside Linux this does nothing.

/// Puts the calling thread under `SCHED_BATCH`, keeping nice 0 (see the
/// module's notes). Returns whether it did.
pub(crate) fn current_thread() -> bool {
    #[cfg(target_os = "linux")]
    {
        use thread_priority::{
            set_thread_priority_and_policy, thread_native_id, NormalThreadSchedulePolicy,
            ThreadPriority, ThreadPriorityOsValue, ThreadSchedulePolicy,
        };
        if current_nice() != Some(0) {
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

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use thread_priority::{
        set_thread_priority_and_policy, thread_native_id, NormalThreadSchedulePolicy,
        ThreadPriority, ThreadPriorityValue, ThreadSchedulePolicy,
    };

    fn policy() -> ThreadSchedulePolicy {
        thread_priority::thread_schedule_policy().expect("read the thread's policy")
    }

    #[test]
    fn a_thread_at_nice_0_becomes_a_batch_thread_at_nice_0() {
        std::thread::spawn(|| {
            assert_eq!(current_nice(), Some(0), "the test process runs at nice 0");
            assert!(current_thread());
            assert_eq!(
                policy(),
                ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Batch)
            );
            assert_eq!(current_nice(), Some(0));
        })
        .join()
        .expect("the thread ran");
    }

    #[test]
    fn a_thread_whose_nice_was_chosen_keeps_it_and_its_policy() {
        std::thread::spawn(|| {
            // Raising one's own nice value needs no privilege. The crate
            // maps 35 of its 0-100 scale to nice 5.
            let nice_5 = ThreadPriority::Crossplatform(
                ThreadPriorityValue::try_from(35u8).expect("in range"),
            );
            set_thread_priority_and_policy(
                thread_native_id(),
                nice_5,
                ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Other),
            )
            .expect("raise the thread's nice value");
            assert_eq!(current_nice(), Some(5));
            assert!(!current_thread());
            assert_eq!(
                policy(),
                ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Other)
            );
            assert_eq!(current_nice(), Some(5));
        })
        .join()
        .expect("the thread ran");
    }
}
