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

/// The bench's child processes (the kill and fleet phases) take the
/// parent's calibration from this variable: measured again in a child,
/// beside its busy siblings, it would come out low and make their loaders
/// cheaper than the parent's.
pub const ROUNDS_ENV: &str = "SPILLWAY_BENCH_LOADER_ROUNDS_PER_MICRO";

/// Rounds of [`work`] per microsecond on this machine. Measured on first
/// use (or taken from [`ROUNDS_ENV`]); the bench calls it before any
/// system runs, so that no phase pays for (or disturbs) the measurement.
pub fn rounds_per_micro() -> f64 {
    *ROUNDS_PER_MICRO.get_or_init(|| {
        if let Some(given) = inherited(std::env::var(ROUNDS_ENV).ok().as_deref()) {
            return given;
        }
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

/// The variable and value that pass this process's calibration to a child.
pub fn for_child() -> (&'static str, String) {
    (ROUNDS_ENV, rounds_per_micro().to_string())
}

/// A calibration passed down by a parent, if `value` is a usable one.
fn inherited(value: Option<&str>) -> Option<f64> {
    value
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|r| r.is_finite() && *r > 0.0)
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

    #[test]
    fn a_child_takes_a_usable_calibration_from_its_parent_and_nothing_else() {
        let (name, value) = for_child();
        assert_eq!(name, ROUNDS_ENV);
        assert_eq!(inherited(Some(&value)), Some(rounds_per_micro()));
        for bad in [
            None,
            Some(""),
            Some("fast"),
            Some("0"),
            Some("-3"),
            Some("NaN"),
            Some("inf"),
        ] {
            assert_eq!(inherited(bad), None, "{bad:?}");
        }
    }
}
