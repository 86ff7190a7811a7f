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
/// cheaper than the parent's. Only children read it ([`rounds_per_micro`]):
/// the parent always measures ([`calibrate`]), so a value left in the
/// environment cannot stand in for a measurement.
pub const ROUNDS_ENV: &str = "SPILLWAY_BENCH_LOADER_ROUNDS_PER_MICRO";

/// The plausible range of a calibration, in rounds per microsecond (a
/// round is a few cycles: about 10 to 10,000 from a 100 MHz core to a
/// 10 GHz one with room to spare). A value outside it is not a machine's.
const PLAUSIBLE: std::ops::RangeInclusive<f64> = 1.0..=100_000.0;

/// Measures this machine's rounds per microsecond, unless this process
/// already has a calibration. The bench's parent process calls it before
/// any system runs, so that no phase pays for (or disturbs) it.
pub fn calibrate() -> f64 {
    *ROUNDS_PER_MICRO.get_or_init(measure)
}

/// Rounds of [`work`] per microsecond: this process's calibration; in a
/// child that has none yet, the parent's from [`ROUNDS_ENV`], else measured.
pub fn rounds_per_micro() -> f64 {
    *ROUNDS_PER_MICRO.get_or_init(|| {
        inherited(std::env::var(ROUNDS_ENV).ok().as_deref()).unwrap_or_else(measure)
    })
}

fn measure() -> f64 {
    let fastest = (0..CALIBRATION_TRIES)
        .map(|_| {
            let started = Instant::now();
            black_box(work(CALIBRATION_ROUNDS));
            started.elapsed()
        })
        .min()
        .unwrap_or(Duration::from_micros(1));
    let measured = CALIBRATION_ROUNDS as f64 / (fastest.as_secs_f64() * 1e6).max(1e-3);
    measured.clamp(*PLAUSIBLE.start(), *PLAUSIBLE.end())
}

/// The variable and value that pass this process's calibration to a child.
pub fn for_child() -> (&'static str, String) {
    (ROUNDS_ENV, rounds_per_micro().to_string())
}

/// A calibration passed down by a parent, if `value` is a plausible one.
fn inherited(value: Option<&str>) -> Option<f64> {
    value
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|r| PLAUSIBLE.contains(r))
}

/// Rounds of [`work`] worth `cost` at `rate` rounds per microsecond.
fn rounds_for(cost: Duration, rate: f64) -> u64 {
    (cost.as_secs_f64() * 1e6 * rate).ceil() as u64
}

/// `cost` worth of CPU work, as measured by [`rounds_per_micro`].
pub fn burn(cost: Duration) {
    if cost.is_zero() {
        return;
    }
    black_box(work(rounds_for(cost, rounds_per_micro())));
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
    fn the_work_depends_on_every_round_and_its_cost_on_the_rate() {
        // Each round changes the result, so none can be skipped (folding
        // is kept off by `black_box`, which no value test can see).
        assert_ne!(work(1_000), work(1_001));
        assert_ne!(work(0), work(1));
        assert_eq!(rounds_for(Duration::from_micros(50), 600.0), 30_000);
        assert_eq!(rounds_for(Duration::from_nanos(1), 600.0), 1);
        assert_eq!(rounds_for(Duration::ZERO, 600.0), 0);
        assert!(PLAUSIBLE.contains(&calibrate()));
        assert_eq!(rounds_per_micro(), calibrate());
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
            Some("1e-300"),
            Some("1e30"),
        ] {
            assert_eq!(inherited(bad), None, "{bad:?}");
        }
    }
}
