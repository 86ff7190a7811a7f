//! Workload generation: key popularity, value sizes, the read/write mix.

use serde::{Deserialize, Serialize};

/// splitmix64: fast, seeded, and the same sequence on every machine.
#[derive(Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// How value sizes are drawn.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SizeDistribution {
    /// Every value has `value_size` bytes.
    Fixed,
    /// Uniform between half and one and a half `value_size`.
    Uniform,
    /// Log-normal with median `value_size` and sigma 0.5, capped at 8×.
    LogNormal,
}

/// Draws key ids: Zipf with exponent `s` over `n` keys (`s = 0`: uniform),
/// by binary search in the precomputed cumulative distribution.
pub struct KeyPicker {
    cdf: Vec<f64>,
}

impl KeyPicker {
    pub fn new(n: usize, s: f64) -> Self {
        let mut cdf = Vec::with_capacity(n);
        let mut total = 0.0;
        for rank in 1..=n {
            total += 1.0 / (rank as f64).powf(s);
            cdf.push(total);
        }
        for c in &mut cdf {
            *c /= total;
        }
        Self { cdf }
    }

    /// A key id; id 0 is the most popular. Ids are scattered by a fixed
    /// permutation so that popularity is not correlated with insertion order.
    pub fn pick(&self, rng: &mut Rng) -> usize {
        let u = rng.unit();
        let rank = self.cdf.partition_point(|c| *c < u).min(self.cdf.len() - 1);
        (rank.wrapping_mul(2_654_435_761)) % self.cdf.len()
    }
}

/// The size of key `id`'s value: fixed per key, so every system sees the same bytes.
pub fn value_size(id: usize, median: usize, dist: SizeDistribution) -> usize {
    let mut rng = Rng::new(id as u64 ^ 0x5eed);
    match dist {
        SizeDistribution::Fixed => median,
        SizeDistribution::Uniform => median / 2 + (rng.next_u64() as usize % median.max(1)),
        SizeDistribution::LogNormal => {
            // Box-Muller for a standard normal.
            let (u1, u2) = (rng.unit().max(1e-12), rng.unit());
            let z = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
            ((median as f64) * (0.5 * z).exp()).clamp(64.0, 8.0 * median as f64) as usize
        }
    }
}

/// The value of key `id`: its id, then a pattern derived from it.
pub fn value(id: usize, len: usize) -> Vec<u8> {
    let mut v: Vec<u8> = (0..len)
        .map(|i| (id.wrapping_mul(131).wrapping_add(i)) as u8)
        .collect();
    if len >= 8 {
        v[..8].copy_from_slice(&(id as u64).to_le_bytes());
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zipf_favours_a_few_keys_and_uniform_does_not() {
        let mut rng = Rng::new(1);
        let skewed = KeyPicker::new(1000, 1.0);
        let mut hot = 0;
        for _ in 0..10_000 {
            hot += usize::from(skewed.pick(&mut rng) == 0);
        }
        assert!(hot > 1000, "the top key got {hot} of 10000 picks");
        let flat = KeyPicker::new(1000, 0.0);
        let mut top = 0;
        for _ in 0..10_000 {
            top += usize::from(flat.pick(&mut rng) == 0);
        }
        assert!(top < 50, "uniform top key got {top}");
    }

    #[test]
    fn value_sizes_follow_their_distribution() {
        assert_eq!(value_size(3, 1000, SizeDistribution::Fixed), 1000);
        let sizes: Vec<_> = (0..1000)
            .map(|i| value_size(i, 1000, SizeDistribution::LogNormal))
            .collect();
        let mut sorted = sizes.clone();
        sorted.sort_unstable();
        let median = sorted[500];
        assert!((700..1400).contains(&median), "median {median}");
        assert!(sizes.iter().all(|s| *s <= 8000));
    }
}
