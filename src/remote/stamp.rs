//! Stamps: the order of writes of one key across processes.
//!
//! A stamp is the time of the insert in microseconds, read from the local
//! wall clock corrected by its offset from the server's clock (measured
//! with `TIME` on every connection), followed by the writer's id. Stamps
//! from one writer strictly increase (a hybrid logical clock: never behind
//! the last stamp made or seen), and two writers never make the same one.
//! "Newer" across processes therefore means "inserted later on the
//! server's clock", up to the error of the offset (half a round trip).
//!
//! A stamp is written as 24 lowercase hex digits, so that the server's
//! scripts order them by plain string comparison.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// How far ahead of this clock a stamp may be and still be taken as real
/// (clocks are corrected by their offset from the server's, so a minute is
/// generous).
const MAX_SKEW_MICROS: u64 = 60_000_000;

/// Length of a stamp's text.
pub(crate) const STAMP_LEN: usize = 24;

/// One write's place in the order of writes of its key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct Stamp {
    /// Microseconds since the Unix epoch, on the server's clock.
    pub micros: u64,
    /// The writing process's id (random, per cache instance).
    pub writer: u32,
}

impl Stamp {
    /// The 24-digit text the server compares.
    pub(crate) fn text(self) -> String {
        format!("{:016x}{:08x}", self.micros, self.writer)
    }

    /// Reads the text form; `None` if it is not one.
    pub(crate) fn parse(text: &[u8]) -> Option<Self> {
        if text.len() != STAMP_LEN || !text.iter().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let text = std::str::from_utf8(text).ok()?;
        Some(Self {
            micros: u64::from_str_radix(&text[..16], 16).ok()?,
            writer: u32::from_str_radix(&text[16..], 16).ok()?,
        })
    }
}

/// Makes this writer's stamps.
#[derive(Debug)]
pub(crate) struct Stamps {
    writer: u32,
    /// Server clock minus local clock, in microseconds.
    offset: AtomicI64,
    /// The last stamp's microseconds, made or seen.
    last: AtomicU64,
}

fn local_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

impl Stamps {
    pub(crate) fn new(writer: u32) -> Self {
        Self {
            writer,
            offset: AtomicI64::new(0),
            last: AtomicU64::new(0),
        }
    }

    pub(crate) fn writer(&self) -> u32 {
        self.writer
    }

    /// Records the server's clock (`TIME`), read between `sent` and
    /// `received` (local microseconds): the offset assumes the server read
    /// it half-way.
    pub(crate) fn calibrate(&self, server_micros: u64, sent: i64, received: i64) {
        let local = sent + (received - sent) / 2;
        self.offset
            .store(server_micros as i64 - local, Ordering::Relaxed);
        self.observe(Stamp {
            micros: server_micros,
            writer: 0,
        });
    }

    /// The local clock now, in microseconds (for `calibrate`).
    pub(crate) fn local_now() -> i64 {
        local_micros()
    }

    /// A stamp after every stamp made or seen so far.
    pub(crate) fn next(&self) -> Stamp {
        let now = (local_micros() + self.offset.load(Ordering::Relaxed)).max(0) as u64;
        let mut last = self.last.load(Ordering::Relaxed);
        loop {
            let micros = now.max(last.saturating_add(1));
            match self
                .last
                .compare_exchange_weak(last, micros, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => {
                    return Stamp {
                        micros,
                        writer: self.writer,
                    }
                }
                Err(seen) => last = seen,
            }
        }
    }

    /// Whether `stamp` could have been made by now on the server's clock
    /// (give or take `MAX_SKEW`): a stamp further ahead is garbage, or a
    /// broken clock, and must not move this clock.
    pub(crate) fn plausible(&self, stamp: Stamp) -> bool {
        let now = (local_micros() + self.offset.load(Ordering::Relaxed)).max(0) as u64;
        stamp.micros <= now.saturating_add(MAX_SKEW_MICROS)
    }

    /// Moves the clock past a stamp read from the server or another
    /// process, so that a write caused by it is ordered after it.
    pub(crate) fn observe(&self, stamp: Stamp) {
        self.last.fetch_max(stamp.micros, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_increase_and_order_as_text() {
        let stamps = Stamps::new(7);
        let mut prev = stamps.next();
        for _ in 0..10_000 {
            let s = stamps.next();
            assert!(s > prev);
            assert!(s.text() > prev.text());
            assert_eq!(Stamp::parse(s.text().as_bytes()), Some(s));
            prev = s;
        }
    }

    #[test]
    fn a_stamp_seen_from_a_clock_ahead_is_never_undercut() {
        let stamps = Stamps::new(1);
        let ahead = Stamp {
            micros: u64::from(u32::MAX) << 24,
            writer: 9,
        };
        stamps.observe(ahead);
        assert!(stamps.next().micros > ahead.micros);
    }

    #[test]
    fn calibration_moves_stamps_to_the_server_clock() {
        let stamps = Stamps::new(1);
        let now = Stamps::local_now();
        stamps.calibrate((now + 3_600_000_000) as u64, now, now);
        let s = stamps.next();
        assert!(s.micros >= (now + 3_600_000_000) as u64);
    }

    #[test]
    fn stamps_far_ahead_are_implausible_and_the_clock_never_overflows() {
        let stamps = Stamps::new(1);
        let now = stamps.next();
        assert!(stamps.plausible(now));
        let far = Stamp {
            micros: now.micros + 10 * 365 * 86_400_000_000,
            writer: 2,
        };
        assert!(!stamps.plausible(far));
        stamps.observe(Stamp {
            micros: u64::MAX,
            writer: 2,
        });
        assert_eq!(stamps.next().micros, u64::MAX);
    }

    #[test]
    fn malformed_stamps_are_refused() {
        for bad in [
            &b""[..],
            b"xyz",
            b"0000000000000000000000000",
            b"000000000000000000000g00",
        ] {
            assert_eq!(Stamp::parse(bad), None);
        }
    }
}
