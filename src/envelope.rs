//! The envelope around every spilled record.
//!
//! Layout (little endian):
//! `magic "SPWY" | format u16 | compression u16 | type_version u32 | seq u64 |
//!  size_bytes u64 | prefix_len u32 | key_len u32 | type_len u32 | payload_len u32 |
//!  prefix | key | type_name | payload | crc32 u32` — the CRC covers everything
//! before it. A reader trusts a record only if every check passes; the full key
//! and the write sequence inside let it reject records of another key (64-bit
//! hash collisions) and of older versions of the same key.
//!
//! Format 1 records are raw (compression 0). Format 2 records name their
//! compression (see `compression`); a raw record is still written as format
//! 1, so a reader that predates compression refuses only compressed ones.
//! Format 3 records are those of entries with a deadline: format 2's header
//! followed by `expires_at u64` (wall-clock milliseconds, see `expiry`),
//! raw or compressed; records without one keep formats 1 and 2.

use std::borrow::Cow;

use crate::compression::{self, Compressor};
use crate::stats::DecodeMiss;
use crate::InternalCacheKey;

const MAGIC: &[u8; 4] = b"SPWY";
/// Raw records.
pub(crate) const FORMAT_VERSION: u16 = 1;
/// Records that name their compression.
const FORMAT_COMPRESSED: u16 = 2;
/// Records with a deadline. Other versions are refused.
const FORMAT_EXPIRING: u16 = 3;
const HEADER_LEN: usize = 4 + 2 + 2 + 4 + 8 + 8 + 4 * 4;
/// Format 3's header: the deadline follows the lengths.
const EXPIRING_HEADER_LEN: usize = HEADER_LEN + 8;
const CRC_LEN: usize = 4;

/// A record that passed every structural check; the payload is not yet decoded.
#[derive(Debug)]
pub(crate) struct Record<'a> {
    pub type_version: u32,
    pub seq: u64,
    pub size_bytes: u64,
    /// Wall-clock deadline in milliseconds since the epoch; 0: none.
    pub expires_at: u64,
    pub prefix: &'a str,
    pub key: &'a str,
    pub type_name: &'a str,
    /// The codec's bytes, decompressed if the record was compressed.
    pub payload: Cow<'a, [u8]>,
}

impl Record<'_> {
    pub(crate) fn is_for(&self, key: &InternalCacheKey) -> bool {
        self.prefix == key.prefix() && self.key == key.key() && self.type_name == key.type_name()
    }
}

/// What a record says about its version besides the key and the payload.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Version {
    pub seq: u64,
    pub size_bytes: usize,
    pub type_version: u32,
    /// Wall-clock deadline (ms since the epoch); 0: none.
    pub expires_at: u64,
}

/// The most payload room a record's buffer starts with.
const PAYLOAD_HINT_CAP: usize = 1 << 20;

/// Writes an envelope; `payload` appends the encoded value to the buffer,
/// which `compressor` may then compress. Returns the record and the length
/// it would have had uncompressed.
pub(crate) fn seal<E>(
    key: &InternalCacheKey,
    version: Version,
    compressor: &Compressor,
    payload: impl FnOnce(&mut Vec<u8>) -> Result<(), E>,
) -> Result<(Vec<u8>, usize), E> {
    let strings = [
        key.prefix().as_bytes(),
        key.key().as_bytes(),
        key.type_name().as_bytes(),
    ];
    let expiring = version.expires_at != 0;
    // Room for the payload too, by the entry's stated size (capped: it is
    // the caller's estimate of RAM, not of the encoding): a 64 KiB value
    // otherwise regrew the buffer a dozen times, copying it about twice.
    let mut out = Vec::with_capacity(
        EXPIRING_HEADER_LEN
            + strings.iter().map(|s| s.len()).sum::<usize>()
            + version.size_bytes.min(PAYLOAD_HINT_CAP)
            + 64,
    );
    out.extend_from_slice(MAGIC);
    let format = if expiring {
        FORMAT_EXPIRING
    } else {
        FORMAT_VERSION
    };
    out.extend_from_slice(&format.to_le_bytes());
    out.extend_from_slice(&compression::RAW.to_le_bytes());
    out.extend_from_slice(&version.type_version.to_le_bytes());
    out.extend_from_slice(&version.seq.to_le_bytes());
    out.extend_from_slice(&(version.size_bytes as u64).to_le_bytes());
    for s in strings {
        out.extend_from_slice(&(s.len() as u32).to_le_bytes());
    }
    let payload_len_at = out.len();
    out.extend_from_slice(&0u32.to_le_bytes());
    if expiring {
        out.extend_from_slice(&version.expires_at.to_le_bytes());
    }
    for s in strings {
        out.extend_from_slice(s);
    }
    let payload_start = out.len();
    payload(&mut out)?;
    let logical_len = out.len() + CRC_LEN;
    if let Some((codec, stored)) = compressor.compress(&out[payload_start..]) {
        out.truncate(payload_start);
        out.extend_from_slice(&stored);
        if !expiring {
            out[4..6].copy_from_slice(&FORMAT_COMPRESSED.to_le_bytes());
        }
        out[6..8].copy_from_slice(&codec.to_le_bytes());
    }
    let payload_len = (out.len() - payload_start) as u32;
    out[payload_len_at..payload_len_at + 4].copy_from_slice(&payload_len.to_le_bytes());
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    // A stated size far above the encoding (or compression) left room the
    // record would otherwise keep for as long as it waits to be written.
    if out.capacity() > 2 * out.len() + 4096 {
        out.shrink_to_fit();
    }
    Ok((out, logical_len))
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(w)
}

/// Checks and splits a record. Never panics on any input.
pub(crate) fn open(bytes: &[u8]) -> Result<Record<'_>, DecodeMiss> {
    if bytes.len() < HEADER_LEN + CRC_LEN || &bytes[..4] != MAGIC {
        return Err(DecodeMiss::Corrupt);
    }
    let (codec, header_len) = match u16_at(bytes, 4) {
        FORMAT_VERSION => (compression::RAW, HEADER_LEN),
        FORMAT_COMPRESSED => (u16_at(bytes, 6), HEADER_LEN),
        FORMAT_EXPIRING => (u16_at(bytes, 6), EXPIRING_HEADER_LEN),
        _ => return Err(DecodeMiss::Incompatible),
    };
    if bytes.len() < header_len + CRC_LEN {
        return Err(DecodeMiss::Corrupt);
    }
    let lens = [28, 32, 36, 40].map(|at| u32_at(bytes, at) as usize);
    let body: usize = lens.iter().sum();
    if header_len
        .checked_add(body)
        .and_then(|n| n.checked_add(CRC_LEN))
        != Some(bytes.len())
    {
        return Err(DecodeMiss::Corrupt);
    }
    let crc_at = bytes.len() - CRC_LEN;
    if crc32fast::hash(&bytes[..crc_at]) != u32_at(bytes, crc_at) {
        return Err(DecodeMiss::Corrupt);
    }
    let expires_at = if header_len == EXPIRING_HEADER_LEN {
        u64_at(bytes, HEADER_LEN)
    } else {
        0
    };
    let mut at = header_len;
    let mut take = |len: usize| {
        let s = &bytes[at..at + len];
        at += len;
        s
    };
    let [prefix, key, type_name] =
        [lens[0], lens[1], lens[2]].map(|l| std::str::from_utf8(take(l)));
    let payload = take(lens[3]);
    let (Ok(prefix), Ok(key), Ok(type_name)) = (prefix, key, type_name) else {
        return Err(DecodeMiss::Corrupt);
    };
    let payload = if codec == compression::RAW {
        Cow::Borrowed(payload)
    } else {
        // Checksummed, yet not decodable: damage the CRC missed, or a
        // codec this build does not know.
        Cow::Owned(compression::decompress(codec, payload).ok_or(DecodeMiss::Corrupt)?)
    };
    Ok(Record {
        type_version: u32_at(bytes, 8),
        seq: u64_at(bytes, 12),
        size_bytes: u64_at(bytes, 20),
        expires_at,
        prefix,
        key,
        type_name,
        payload,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        sealed(&Compressor::default(), b"payload")
    }

    fn sealed(compressor: &Compressor, payload: &[u8]) -> Vec<u8> {
        sealed_until(compressor, payload, 0)
    }

    fn sealed_until(compressor: &Compressor, payload: &[u8], expires_at: u64) -> Vec<u8> {
        let key = InternalCacheKey::new("pre", "key", "T");
        let version = Version {
            seq: 42,
            size_bytes: 100,
            type_version: 3,
            expires_at,
        };
        seal::<()>(&key, version, compressor, |out| {
            out.extend_from_slice(payload);
            Ok(())
        })
        .unwrap()
        .0
    }

    /// A compressed record of a compressible payload.
    fn compressed(algorithm: crate::Compression) -> (Vec<u8>, Vec<u8>) {
        let payload: Vec<u8> = b"the quick brown fox ".repeat(100);
        let compressor = Compressor {
            algorithm,
            ..Compressor::default()
        };
        let bytes = sealed(&compressor, &payload);
        assert!(
            bytes.len() < payload.len() / 2,
            "{algorithm:?} compressed it"
        );
        (bytes, payload)
    }

    #[test]
    fn a_record_starts_with_room_for_its_stated_size_and_never_keeps_much_more() {
        let key = InternalCacheKey::new("pre", "key", "T");
        let seal_with = |size_bytes: usize, payload: &[u8]| {
            let version = Version {
                seq: 1,
                size_bytes,
                type_version: 1,
                expires_at: 0,
            };
            seal::<()>(&key, version, &Compressor::default(), |out| {
                // The codec finds its room already there when the stated
                // size is right: no regrowth while it writes.
                let room = out.capacity() - out.len();
                assert!(room >= payload.len().min(size_bytes.min(PAYLOAD_HINT_CAP)));
                out.extend_from_slice(payload);
                Ok(())
            })
            .unwrap()
            .0
        };
        let value = vec![7u8; 64 << 10];
        let exact = seal_with(value.len(), &value);
        assert_eq!(&*open(&exact).unwrap().payload, value.as_slice());
        // A stated size far above the encoding: the spare room is given back.
        let small = seal_with(usize::MAX, b"tiny");
        assert_eq!(&*open(&small).unwrap().payload, b"tiny");
        assert!(
            small.capacity() <= 2 * small.len() + 4096,
            "{}",
            small.capacity()
        );
    }

    #[test]
    fn compressed_records_read_back_and_name_their_codec() {
        for algorithm in [crate::Compression::Lz4, crate::Compression::Zstd] {
            let (bytes, payload) = compressed(algorithm);
            assert_eq!(u16_at(&bytes, 4), FORMAT_COMPRESSED);
            let r = open(&bytes).unwrap();
            assert_eq!(&*r.payload, payload.as_slice());
            // Every truncation and every bit flip is still refused.
            for len in 0..bytes.len() {
                assert!(open(&bytes[..len]).is_err());
            }
            for i in (0..bytes.len()).step_by(7) {
                let mut bad = bytes.clone();
                bad[i] ^= 0x10;
                assert!(open(&bad).is_err(), "flip in byte {i} accepted");
            }
        }
        // Raw records stay format 1, readable by readers without compression.
        assert_eq!(u16_at(&sample(), 4), FORMAT_VERSION);
    }

    #[test]
    fn a_deadline_travels_in_format_3_raw_or_compressed() {
        let text = b"the quick brown fox ".repeat(100);
        for algorithm in [crate::Compression::None, crate::Compression::Zstd] {
            let compressor = Compressor {
                algorithm,
                ..Compressor::default()
            };
            let bytes = sealed_until(&compressor, &text, 1_700_000_000_123);
            assert_eq!(u16_at(&bytes, 4), FORMAT_EXPIRING);
            let r = open(&bytes).unwrap();
            assert_eq!(r.expires_at, 1_700_000_000_123);
            assert_eq!((r.seq, r.key, &*r.payload), (42, "key", text.as_slice()));
            for i in 0..bytes.len() {
                let mut bad = bytes.clone();
                bad[i] ^= 0x01;
                assert!(open(&bad).is_err(), "flip in byte {i} accepted");
            }
            for len in 0..bytes.len() {
                assert!(open(&bytes[..len]).is_err());
            }
        }
        assert_eq!(open(&sample()).unwrap().expires_at, 0);
    }

    #[test]
    fn round_trip_keeps_every_field() {
        let bytes = sample();
        let r = open(&bytes).unwrap();
        assert_eq!((r.type_version, r.seq, r.size_bytes), (3, 42, 100));
        assert_eq!(
            (r.prefix, r.key, r.type_name, &*r.payload),
            ("pre", "key", "T", &b"payload"[..])
        );
        assert!(r.is_for(&InternalCacheKey::new("pre", "key", "T")));
        assert!(!r.is_for(&InternalCacheKey::new("pre", "key", "U")));
    }

    #[test]
    fn every_single_bit_flip_is_refused() {
        let bytes = sample();
        for i in 0..bytes.len() {
            for bit in 0..8 {
                let mut bad = bytes.clone();
                bad[i] ^= 1 << bit;
                assert!(
                    open(&bad).is_err(),
                    "flip of bit {bit} in byte {i} accepted"
                );
            }
        }
    }

    #[test]
    fn every_truncation_is_refused() {
        let bytes = sample();
        for len in 0..bytes.len() {
            assert!(open(&bytes[..len]).is_err(), "truncation to {len} accepted");
        }
    }

    #[test]
    fn other_format_versions_are_incompatible() {
        let mut bytes = sample();
        bytes[4] = 9;
        assert_eq!(open(&bytes).unwrap_err(), DecodeMiss::Incompatible);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig {
            failure_persistence: None,
            ..proptest::prelude::ProptestConfig::default()
        })]

        #[test]
        fn arbitrary_bytes_never_panic_and_never_decode(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512)) {
            proptest::prop_assert!(open(&bytes).is_err() || bytes == sample());
        }

        #[test]
        fn damaged_or_cut_records_are_refused(
            damage in proptest::collection::vec((0usize..4096, 1u8..=255), 1..8),
            cut in 0usize..4096,
        ) {
            let good = sample();
            let mut bad = good.clone();
            for (at, xor) in damage {
                let at = at % bad.len();
                bad[at] ^= xor;
            }
            proptest::prop_assert!(bad == good || open(&bad).is_err());
            let cut = cut % good.len();
            proptest::prop_assert!(open(&good[..cut]).is_err());
        }
    }
}
