//! A disk-only version in 16 bytes, so that the index of a large disk tier
//! stays small (RAM per disk-resident entry, independent of key length).
//!
//! A key whose latest version is only on disk needs neither its text nor its
//! value in RAM: its record's envelope names the key, and every disk read
//! checks it. What a read, a sweep and a snapshot need is the version's
//! sequence number, where its record is (its own foyer key, or a pack and an
//! offset), the record's length, the key's prefix (so that
//! `invalidate_prefix` stays exact) and whether it has a deadline. The
//! placement table keeps that, keyed by the key's 64-bit hash, as:
//!
//! ```text
//! a: seq (48 bits) | pack offset (12) | packed (1) | has deadline (1)
//! b: prefix id (20 bits) | unpacked: record length (32)
//!                        | packed:   record length (12) | pack id - seq (32, signed)
//! ```
//!
//! A version that does not fit (a sequence number past 2^48, more than 2^20
//! distinct prefixes, a pack id far from the member's sequence number) stays
//! in the full table with its key: more RAM, the same behaviour. Deadlines,
//! rare, live in a side table.

use crate::packing::PackRef;
use crate::placement::{Place, Slot};

const SEQ_BITS: u32 = 48;
const OFFSET_SHIFT: u32 = 48;
const PACKED: u64 = 1 << 60;
const HAS_DEADLINE: u64 = 1 << 61;
const PREFIX_BITS: u32 = 20;
/// The most distinct prefixes the compact form can name.
pub(crate) const MAX_PREFIXES: u32 = 1 << PREFIX_BITS;
const SMALL: u64 = 1 << 12;

/// See the module documentation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ColdSlot {
    a: u64,
    b: u64,
}

impl ColdSlot {
    /// The compact form of a disk-only slot, or `None` if it does not fit.
    pub(crate) fn encode(slot: &Slot, prefix: u32) -> Option<Self> {
        if !matches!(slot.place, Place::Disk) || slot.seq >> SEQ_BITS != 0 || prefix >= MAX_PREFIXES
        {
            return None;
        }
        let mut a = slot.seq;
        if slot.expires_at != 0 {
            a |= HAS_DEADLINE;
        }
        let mut b = u64::from(prefix);
        match slot.pack {
            None => b |= u64::from(slot.record_len) << PREFIX_BITS,
            Some(pack) => {
                let (offset, len) = (u64::from(pack.offset), u64::from(slot.record_len));
                let delta = i32::try_from(i128::from(pack.id) - i128::from(slot.seq)).ok()?;
                if offset >= SMALL || len >= SMALL {
                    return None;
                }
                a |= PACKED | offset << OFFSET_SHIFT;
                b |= len << PREFIX_BITS | u64::from(delta as u32) << 32;
            }
        }
        Some(Self { a, b })
    }

    /// The slot back, with its deadline (0: none). The declared size is
    /// not kept: the record's length stands in for it until a read decodes
    /// the envelope, which carries the exact one.
    pub(crate) fn decode(self, expires_at: u64) -> Slot {
        let seq = self.seq();
        let (record_len, pack) = if self.a & PACKED == 0 {
            ((self.b >> PREFIX_BITS) as u32, None)
        } else {
            let len = ((self.b >> PREFIX_BITS) & (SMALL - 1)) as u32;
            let delta = i64::from((self.b >> 32) as u32 as i32);
            let id = seq.wrapping_add_signed(delta);
            let offset = ((self.a >> OFFSET_SHIFT) & (SMALL - 1)) as u16;
            (len, Some(PackRef { id, offset }))
        };
        Slot {
            seq,
            place: Place::Disk,
            size: u64::from(record_len),
            record_len,
            expires_at,
            pack,
        }
    }

    pub(crate) fn seq(self) -> u64 {
        self.a & ((1 << SEQ_BITS) - 1)
    }

    pub(crate) fn prefix(self) -> u32 {
        (self.b & u64::from(MAX_PREFIXES - 1)) as u32
    }

    pub(crate) fn has_deadline(self) -> bool {
        self.a & HAS_DEADLINE != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disk(seq: u64, len: u32, expires_at: u64, pack: Option<PackRef>) -> Slot {
        Slot {
            seq,
            place: Place::Disk,
            size: u64::from(len),
            record_len: len,
            expires_at,
            pack,
        }
    }

    fn same(a: &Slot, b: &Slot) -> bool {
        (a.seq, a.record_len, a.expires_at, a.pack) == (b.seq, b.record_len, b.expires_at, b.pack)
    }

    #[test]
    fn sixteen_bytes() {
        assert_eq!(std::mem::size_of::<ColdSlot>(), 16);
    }

    #[test]
    fn what_fits_comes_back_exactly() {
        let packs = [
            None,
            Some(PackRef { id: 7, offset: 0 }),
            Some(PackRef {
                id: 1 << 40,
                offset: 4031,
            }),
            Some(PackRef {
                id: (1 << 40) - 5,
                offset: 12,
            }),
        ];
        for seq in [1, 1 << 40, (1 << 48) - 1] {
            for pack in packs {
                let pack = pack.map(|p| PackRef {
                    id: if p.id == 7 {
                        seq + 7
                    } else {
                        seq.saturating_sub(3)
                    },
                    ..p
                });
                for (len, deadline) in [(0, 0), (4031, 9), (u32::MAX, 0)] {
                    let slot = disk(seq, len, deadline, pack);
                    let Some(c) = ColdSlot::encode(&slot, MAX_PREFIXES - 1) else {
                        assert!(pack.is_some() && len >= 4096, "{seq} {len} {pack:?}");
                        continue;
                    };
                    assert_eq!(c.prefix(), MAX_PREFIXES - 1);
                    assert_eq!(c.has_deadline(), deadline != 0);
                    assert!(same(&c.decode(deadline), &slot), "{seq} {len} {pack:?}");
                }
            }
        }
    }

    #[test]
    fn what_does_not_fit_is_refused() {
        assert!(ColdSlot::encode(&disk(1 << 48, 1, 0, None), 0).is_none());
        assert!(ColdSlot::encode(&disk(1, 1, 0, None), MAX_PREFIXES).is_none());
        let far = PackRef {
            id: 10 + (1 << 31),
            offset: 0,
        };
        assert!(ColdSlot::encode(&disk(10, 1, 0, Some(far)), 0).is_none());
        let wide = PackRef {
            id: 10,
            offset: 4096,
        };
        assert!(ColdSlot::encode(&disk(10, 1, 0, Some(wide)), 0).is_none());
        let mut queued = disk(1, 1, 0, None);
        queued.place = Place::Memory { on_disk: true };
        assert!(ColdSlot::encode(&queued, 0).is_none());
    }
}
