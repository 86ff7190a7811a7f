//! Byte budgets on top of moka's `u32` weights.

/// Converts byte sizes to moka weights. moka weighs each entry with a `u32`,
/// so a budget above 4 GiB is counted in units of `2^shift` bytes, the
/// smallest power of two that lets the whole budget fit in `u32` units. Sizes
/// round up, so the budget is never exceeded; below 4 GiB a unit is one byte
/// and accounting is exact.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ByteWeigher {
    shift: u32,
}

impl ByteWeigher {
    pub(crate) fn for_capacity(capacity_bytes: u64) -> Self {
        let mut shift = 0;
        while (capacity_bytes >> shift) > u64::from(u32::MAX) {
            shift += 1;
        }
        Self { shift }
    }

    /// The moka `max_capacity` (in units) for a budget in bytes.
    pub(crate) fn units(&self, bytes: u64) -> u64 {
        bytes >> self.shift
    }

    /// The weight of an entry of `bytes` bytes, rounded up to whole units.
    pub(crate) fn weigh(&self, bytes: usize) -> u32 {
        let unit = 1u64 << self.shift;
        let units = (bytes as u64).div_ceil(unit);
        u32::try_from(units).unwrap_or(u32::MAX)
    }

    /// Bytes represented by a moka weighted size.
    pub(crate) fn bytes(&self, units: u64) -> u64 {
        units << self.shift
    }
}

#[cfg(test)]
mod tests {
    use super::ByteWeigher;

    #[test]
    fn small_budgets_weigh_exact_bytes() {
        let w = ByteWeigher::for_capacity(1 << 30);
        assert_eq!(w.weigh(1), 1);
        assert_eq!(w.weigh(4097), 4097);
        assert_eq!(w.units(1 << 30), 1 << 30);
    }

    #[test]
    fn large_budgets_fit_u32_and_round_up() {
        let cap = 64u64 << 30;
        let w = ByteWeigher::for_capacity(cap);
        assert!(w.units(cap) <= u64::from(u32::MAX));
        // a 5 GiB entry is not clamped to 4 GiB: it weighs 5/64 of the budget
        let five = 5usize << 30;
        assert_eq!(u64::from(w.weigh(five)) * 64, w.units(cap) * 5);
        // one byte still costs something
        assert_eq!(w.weigh(1), 1);
    }
}
