//! Small entries packed: records below `disk.pack_threshold` share one disk
//! page instead of each taking a page of their own.
//!
//! foyer pads every record to a whole 4 KiB page, so a 200-byte entry would
//! take 4 KiB of the disk budget. The spill worker therefore gathers small
//! sealed records into *packs*: one foyer record of at most [`PACK_BYTES`],
//! which foyer stores in exactly one page. A pack is a short header followed
//! by its members, each an ordinary sealed record (see `envelope`), so each
//! member carries its own key, sequence number and CRC.
//!
//! * **Addressing.** A member's slot holds a [`PackRef`]: the pack's id and
//!   the member's offset in it (its length is the slot's `record_len`). A
//!   disk hit reads the one page of its pack and opens only its member.
//! * **Identity.** Pack ids are drawn from the cache's sequence numbers,
//!   whose durable reservations make them unique across restarts, so a pack
//!   id is never reused while the journal may still name it.
//! * **Freshness.** A read serves a member only if the slot names that pack
//!   and offset and the member's envelope names the key and the slot's
//!   sequence number. A replaced, invalidated or expired member is never
//!   deleted from its pack (its neighbours live there); its slot goes, and
//!   the journal's kill facts keep it dead across restarts. The pack leaves
//!   the disk when foyer evicts its block.
//! * **Filling.** The worker keeps a few packs open and puts each record in
//!   the fullest one it fits (best fit), which fills pages to about 95%
//!   with entries between 100 B and 2 KiB. Open packs are sealed when full,
//!   when the oldest has waited [`PACK_HOLD`], when a writer waits for room
//!   in the spill queue, and whenever `flush` or `close` asks. Until
//!   sealed, their members stay in the spill queue, readable from RAM.

use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::disk::PAGE;

/// The largest pack: with foyer's per-entry overhead, a pack takes exactly
/// one page.
pub(crate) const PACK_BYTES: usize = PAGE - crate::disk::FOYER_ENTRY_OVERHEAD;
const MAGIC: &[u8; 4] = b"SWPK";
/// Bytes before the first member.
pub(crate) const PACK_HEADER: usize = MAGIC.len();
/// The largest record that can be packed at all.
pub(crate) const MAX_PACKED: usize = PACK_BYTES - PACK_HEADER;
/// How long an open pack waits for more members before it is written
/// partly filled. Bounds how long a small entry stays only in RAM.
pub(crate) const PACK_HOLD: Duration = Duration::from_millis(10);
/// Packs filled at the same time. More raise the fill and hold more
/// entries back: four filled pages to 92% on uniform 100 B–2 KiB values in
/// the spill path, eight to 95%.
const OPEN_PACKS: usize = 8;
/// A pack with less room than this left is sealed at once: hardly any
/// record is that small.
const FULL_ENOUGH: usize = 96;

/// Where a packed member lives: its pack and its offset in that pack.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct PackRef {
    pub id: u64,
    pub offset: u16,
}

impl PackRef {
    /// The foyer key of the pack's record. Key hashes and pack keys share
    /// foyer's 64-bit key space; pack ids are small sequence numbers, so they
    /// are spread over it (a bijection, so distinct packs never share a key).
    /// A collision with a key's hash is as unlikely as two keys' hashes
    /// colliding. It can never serve wrong bytes (every read checks the
    /// envelope), and a key's read that finds a pack treats it as another
    /// key's record (see [`is_pack`]); the key's own record written there
    /// would cost the pack's members, as a count of misses.
    pub(crate) fn record_key(self) -> u64 {
        pack_key(self.id)
    }
}

/// The foyer key of pack `id` (see [`PackRef::record_key`]).
pub(crate) fn pack_key(id: u64) -> u64 {
    // splitmix64's finalizer: a bijection on u64.
    let mut z = id ^ 0x5057_4B50_4143_4B53;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Whether a record read from disk is a pack.
pub(crate) fn is_pack(record: &[u8]) -> bool {
    record.starts_with(MAGIC)
}

/// The bytes of the member at `offset` with `len` bytes, if `pack` is a
/// pack and holds that many bytes there. The member's envelope checks the rest.
pub(crate) fn member(pack: &[u8], offset: u16, len: u32) -> Option<&[u8]> {
    if !pack.starts_with(MAGIC) {
        return None;
    }
    let start = usize::from(offset);
    if start < PACK_HEADER {
        return None;
    }
    pack.get(start..start.checked_add(len as usize)?)
}

/// Lays out a pack: its header, then each member in turn.
pub(crate) struct PackWriter {
    bytes: Vec<u8>,
}

impl PackWriter {
    pub(crate) fn new() -> Self {
        let mut bytes = Vec::with_capacity(PACK_BYTES);
        bytes.extend_from_slice(MAGIC);
        Self { bytes }
    }

    /// Where the next member will start.
    pub(crate) fn next_offset(&self) -> u16 {
        // A pack is shorter than a page.
        u16::try_from(self.bytes.len()).unwrap_or(u16::MAX)
    }

    pub(crate) fn push(&mut self, record: &[u8]) {
        self.bytes.extend_from_slice(record);
    }

    /// Whether any member was pushed.
    pub(crate) fn is_empty(&self) -> bool {
        self.bytes.len() == PACK_HEADER
    }

    pub(crate) fn finish(self) -> Bytes {
        Bytes::from(self.bytes)
    }
}

/// A pack being filled: its would-be members and the bytes they take.
pub(crate) struct OpenPack<T> {
    pub members: Vec<(T, Bytes)>,
    used: usize,
}

impl<T> OpenPack<T> {
    /// The length of the pack record its members make.
    pub(crate) fn len(&self) -> usize {
        self.used
    }

    fn room(&self) -> usize {
        PACK_BYTES - self.used
    }
}

/// The spill worker's open packs (see the module documentation).
pub(crate) struct Packer<T> {
    open: Vec<OpenPack<T>>,
    threshold: usize,
    /// When the oldest open pack got its first member.
    oldest: Option<Instant>,
}

impl<T> Packer<T> {
    /// `threshold`: records up to this length are packed (0: none are).
    pub(crate) fn new(threshold: usize) -> Self {
        Self {
            open: Vec::with_capacity(OPEN_PACKS),
            threshold: threshold.min(MAX_PACKED),
            oldest: None,
        }
    }

    /// Whether a record of `len` bytes is packed.
    pub(crate) fn takes(&self, len: usize) -> bool {
        len <= self.threshold
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.open.is_empty()
    }

    /// When the open packs are due to be written partly filled.
    pub(crate) fn due_at(&self) -> Option<Instant> {
        self.oldest.map(|t| t + PACK_HOLD)
    }

    /// Adds a record (one [`Self::takes`]); returns a pack that is ready to
    /// be written, if this filled one or had to make room.
    pub(crate) fn add(&mut self, item: T, record: Bytes) -> Option<OpenPack<T>> {
        let len = record.len();
        self.oldest.get_or_insert_with(Instant::now);
        // Best fit: the open pack this record leaves least room in.
        let best = (0..self.open.len())
            .filter(|i| self.open[*i].room() >= len)
            .min_by_key(|i| self.open[*i].room() - len);
        let mut sealed = None;
        let at = match best {
            Some(i) => i,
            None => {
                if self.open.len() == OPEN_PACKS {
                    // Make room: the fullest pack goes out as it is.
                    let fullest = (0..self.open.len())
                        .min_by_key(|i| self.open[*i].room())
                        .unwrap_or(0);
                    sealed = Some(self.open.swap_remove(fullest));
                }
                self.open.push(OpenPack {
                    members: Vec::new(),
                    used: PACK_HEADER,
                });
                self.open.len() - 1
            }
        };
        let pack = &mut self.open[at];
        pack.used += len;
        pack.members.push((item, record));
        if sealed.is_none() && pack.room() < FULL_ENOUGH {
            sealed = Some(self.open.swap_remove(at));
        }
        if self.open.is_empty() {
            self.oldest = None;
        }
        sealed
    }

    /// Every open pack, to be written now.
    pub(crate) fn take_all(&mut self) -> Vec<OpenPack<T>> {
        self.oldest = None;
        std::mem::take(&mut self.open)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(len: usize) -> Bytes {
        Bytes::from(vec![1u8; len])
    }

    #[test]
    fn pack_keys_are_distinct_and_spread() {
        let keys: std::collections::HashSet<u64> = (0..100_000).map(pack_key).collect();
        assert_eq!(keys.len(), 100_000);
        assert!(keys.iter().all(|k| *k > u64::from(u32::MAX)));
    }

    #[test]
    fn members_are_found_where_the_writer_put_them() {
        let mut w = PackWriter::new();
        let a = w.next_offset();
        w.push(b"first");
        let b = w.next_offset();
        w.push(b"second!");
        let pack = w.finish();
        assert_eq!(member(&pack, a, 5), Some(&b"first"[..]));
        assert_eq!(member(&pack, b, 7), Some(&b"second!"[..]));
        // Out of bounds, inside the header, or not a pack: nothing.
        assert_eq!(member(&pack, b, 8), None);
        assert_eq!(member(&pack, 0, 4), None);
        assert_eq!(member(&pack, u16::MAX, u32::MAX), None);
        assert_eq!(member(b"SPWYxxxxxxxx", 4, 2), None);
        // A key's own record is never taken for a pack.
        assert!(is_pack(&pack));
        assert!(!is_pack(b"SPWYxxxxxxxx"));
    }

    #[test]
    fn threshold_is_capped_by_what_fits_in_a_pack() {
        let p: Packer<()> = Packer::new(usize::MAX);
        assert!(p.takes(MAX_PACKED));
        assert!(!p.takes(MAX_PACKED + 1));
        let off: Packer<()> = Packer::new(0);
        assert!(!off.takes(1));
    }

    /// Uniform records of 100 B–2 KiB fill packs to over 90%, and no pack
    /// ever exceeds one page.
    #[test]
    fn best_fit_fills_pages() {
        let mut packer = Packer::new(2048);
        let mut sealed = Vec::new();
        let mut state = 12345u64;
        for i in 0..20_000u32 {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let len = 100 + (state >> 33) as usize % 1949;
            if let Some(p) = packer.add(i, record(len)) {
                sealed.push(p);
            }
        }
        sealed.extend(packer.take_all());
        let mut seen = 0;
        let mut bytes = 0;
        for p in &sealed {
            assert!(p.used <= PACK_BYTES);
            seen += p.members.len();
            bytes += p.used;
        }
        assert_eq!(seen, 20_000, "every record is in exactly one pack");
        let fill = bytes as f64 / (sealed.len() * PAGE) as f64;
        assert!(fill > 0.9, "fill {fill}");
    }

    #[test]
    fn open_packs_are_due_after_the_hold_and_only_while_open() {
        let mut packer = Packer::new(2048);
        assert_eq!(packer.due_at(), None);
        let before = Instant::now();
        assert!(packer.add(1, record(100)).is_none());
        assert!(packer.due_at().is_some_and(|d| d >= before + PACK_HOLD));
        let all = packer.take_all();
        assert_eq!(all.len(), 1);
        assert!(packer.is_empty());
        assert_eq!(packer.due_at(), None);
    }
}
