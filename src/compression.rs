//! Compression of disk records (`disk.compression`).
//!
//! A record's payload (the codec's bytes) is compressed when it is at least
//! `disk.compression_min_size` long and the result is smaller; otherwise it
//! is stored raw. The envelope says which (see `envelope`), so any mixture of
//! compressed and raw records, and a change of the setting between runs,
//! reads back correctly. A compressed payload starts with its raw length;
//! decompression never produces more than that, and a raw length out of
//! proportion to the stored bytes is refused before anything is allocated,
//! so damaged or hostile bytes cannot become a decompression bomb.

use serde::{Deserialize, Serialize};

/// How the disk tier compresses records.
///
/// ```
/// let config = spillway::Config::from_toml_str("[disk]\ncompression = \"zstd\"").unwrap();
/// assert_eq!(config.disk.compression, spillway::Compression::Zstd);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Compression {
    /// Records are stored as the codec wrote them (the default).
    #[default]
    None,
    /// LZ4 (`lz4_flex`): fast, modest ratios.
    Lz4,
    /// Zstandard at `disk.compression_level`: slower, better ratios.
    Zstd,
}

/// The envelope's codec field: which algorithm a stored payload used.
pub(crate) const RAW: u16 = 0;
const LZ4: u16 = 1;
const ZSTD: u16 = 2;

/// Compressed payloads above this raw size are refused (no block holds more).
const MAX_RAW: usize = 1 << 30;
/// Neither algorithm expands data by more than this factor in practice;
/// a declared raw length beyond it means damage.
const MAX_RATIO: usize = 1024;

/// The compression settings of one cache.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Compressor {
    pub algorithm: Compression,
    pub level: i32,
    pub min_size: usize,
}

impl Default for Compressor {
    fn default() -> Self {
        Self {
            algorithm: Compression::None,
            level: 3,
            min_size: 256,
        }
    }
}

impl Compressor {
    /// The stored form of `raw` and its codec id, or `None` to store it raw
    /// (compression off, too small, or it did not shrink).
    pub(crate) fn compress(&self, raw: &[u8]) -> Option<(u16, Vec<u8>)> {
        if raw.len() < self.min_size || raw.len() > MAX_RAW {
            return None;
        }
        let (id, body) = match self.algorithm {
            Compression::None => return None,
            Compression::Lz4 => (LZ4, lz4_flex::block::compress(raw)),
            Compression::Zstd => (ZSTD, zstd::bulk::compress(raw, self.level).ok()?),
        };
        let mut stored = Vec::with_capacity(4 + body.len());
        stored.extend_from_slice(&u32::try_from(raw.len()).ok()?.to_le_bytes());
        stored.extend_from_slice(&body);
        (stored.len() < raw.len()).then_some((id, stored))
    }
}

/// The raw payload of a stored one with codec `id`, or `None` when the
/// bytes are not a valid payload of that codec (a counted miss).
pub(crate) fn decompress(id: u16, stored: &[u8]) -> Option<Vec<u8>> {
    let (len, body) = stored.split_first_chunk::<4>()?;
    let raw_len = u32::from_le_bytes(*len) as usize;
    if raw_len > MAX_RAW || raw_len > body.len().saturating_mul(MAX_RATIO).max(64) {
        return None;
    }
    let raw = match id {
        LZ4 => lz4_flex::block::decompress(body, raw_len).ok()?,
        ZSTD => zstd::bulk::decompress(body, raw_len).ok()?,
        _ => return None,
    };
    (raw.len() == raw_len).then_some(raw)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(n: usize) -> Vec<u8> {
        let pattern = b"{\"id\": 12, \"name\": \"spillway\"} ";
        (0..n).map(|i| pattern[i % pattern.len()]).collect()
    }

    #[test]
    fn both_algorithms_round_trip_and_shrink_text() {
        for algorithm in [Compression::Lz4, Compression::Zstd] {
            let c = Compressor {
                algorithm,
                ..Compressor::default()
            };
            let raw = text(10_000);
            let (id, stored) = c.compress(&raw).expect("text shrinks");
            assert!(stored.len() < raw.len() / 4, "{algorithm:?}");
            assert_eq!(decompress(id, &stored).as_deref(), Some(raw.as_slice()));
        }
    }

    #[test]
    fn small_or_incompressible_payloads_stay_raw() {
        let c = Compressor {
            algorithm: Compression::Zstd,
            ..Compressor::default()
        };
        assert!(c.compress(&text(100)).is_none(), "below min_size");
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let noise: Vec<u8> = (0..4096)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 24) as u8
            })
            .collect();
        assert!(c.compress(&noise).is_none(), "does not shrink");
    }

    #[test]
    fn a_lying_raw_length_is_refused_before_allocating() {
        let c = Compressor {
            algorithm: Compression::Lz4,
            ..Compressor::default()
        };
        let (id, mut stored) = c.compress(&text(10_000)).unwrap();
        stored[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(decompress(id, &stored).is_none());
        stored[..4].copy_from_slice(&20_000u32.to_le_bytes());
        assert!(decompress(id, &stored).is_none(), "longer than declared");
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig {
            failure_persistence: None,
            ..proptest::prelude::ProptestConfig::default()
        })]

        /// Arbitrary bytes under any codec id: a value only if it is exactly
        /// as long as declared, never a panic.
        #[test]
        fn arbitrary_bytes_never_panic(id in 0u16..4, bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512)) {
            if let Some(raw) = decompress(id, &bytes) {
                proptest::prop_assert_eq!(raw.len() as u32, u32::from_le_bytes(bytes[..4].try_into().unwrap()));
            }
        }
    }
}
