//! The bench's loader: a fixed amount of CPU work per miss, calibrated once
//! per process to take the configured cost on an otherwise idle core.
//!
//! Work, not wall time. A loader that spun until its cost had passed on the
//! clock would do less work whenever its thread was preempted: the thread
//! that ran instead (a disk reader, a flusher, a fetch task) would have its
//! time hidden inside the loader's, and a system with more threads of its
//! own would look cheaper than it is. A real loader (decompressing,
//! parsing) does the same work however often it is interrupted; so does
//! this one, for every system alike.

use std::hint::black_box;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Rounds timed per calibration try, and tries (the fastest counts: the
/// one least disturbed by the rest of the machine).
const CALIBRATION_ROUNDS: u64 = 200_000;
const CALIBRATION_TRIES: usize = 9;

static ROUNDS_PER_MICRO: OnceLock<f64> = OnceLock::new();

/// Rounds of [`work`] per microsecond on this machine. Measured on first
/// use; the bench calls it before any system runs, so that no phase pays
/// for (or disturbs) the measurement.
pub fn rounds_per_micro() -> f64 {
    *ROUNDS_PER_MICRO.get_or_init(|| {
        let fastest = (0..CALIBRATION_TRIES)
            .map(|_| {
                let started = Instant::now();
                black_box(work(CALIBRATION_ROUNDS));
                started.elapsed()
            })
            .min()
            .unwrap_or(Duration::from_micros(1));
        CALIBRATION_ROUNDS as f64 / (fastest.as_secs_f64() * 1e6).max(1e-3)
    })
}

/// `cost` worth of CPU work, as measured by [`rounds_per_micro`].
pub fn burn(cost: Duration) {
    if cost.is_zero() {
        return;
    }
    let rounds = (cost.as_secs_f64() * 1e6 * rounds_per_micro()).ceil() as u64;
    black_box(work(rounds));
}

/// `rounds` rounds of a multiply-rotate mix, each depending on the last, so
/// that neither the compiler nor the CPU can skip or overlap them.
fn work(rounds: u64) -> u64 {
    let mut x = black_box(0x9E37_79B9_7F4A_7C15u64);
    for i in 0..rounds {
        x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9).rotate_left(29) ^ i;
    }
    x
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_work_is_a_function_of_its_rounds() {
        // The same rounds give the same result, other rounds another: the
        // loop cannot be folded away into a constant.
        assert_eq!(work(1_000), work(1_000));
        assert_ne!(work(1_000), work(1_001));
        assert!(rounds_per_micro() > 0.0);
    }
}
