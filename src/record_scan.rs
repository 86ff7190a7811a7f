//! Finding disk records by their foyer keys and reading many at once, for
//! the warm-up.
//!
//! Read one by one, each record is a foyer `load`: a hand-off to a disk
//! thread and back, a fresh aligned buffer and a checksum, about 11 µs of
//! wall time per 8 KiB record on 2 cores, CPU-bound even from the page
//! cache (a warm-up of 55 MiB took about twice the device's sequential
//! read of the same bytes). Here the warm-up reads foyer's blob indexes
//! (the small table at the head of each batch foyer writes, which its own
//! recovery reads too) to learn where each wanted record lies, sorts them
//! by position, and reads neighbouring records with one `pread` per run.
//!
//! This reads foyer 0.22's on-disk layout, which foyer does not publish:
//! a block is a chain of blobs, each a 4 KiB index (`checksum u64 | count
//! u32 | count × (hash u64, sequence u64, offset u32, length u32)`,
//! big-endian, offsets from the blob's start) followed by its entries; an
//! entry is a 36-byte header (`key length u32 | value length u32 | hash
//! u64 | sequence u64 | checksum u64 | magic and compression u32`), the
//! value (a `Bytes`: its length as a little-endian u64, then the bytes),
//! then the key (spillway's u64 record key, little-endian). The hashes in
//! indexes and headers are foyer's hash of that key (see
//! `DiskTier::foyer_hash`). Nothing read here is trusted: an index
//! that does not parse ends its block's chain, an entry whose header or
//! checksum does not match is skipped, and what it yields is a candidate
//! record that the
//! caller opens like any disk read (its envelope's CRC, key and sequence
//! number must match the slot), so a stale copy, a half-rewritten block or
//! a change of foyer's layout costs a fallback to the one-by-one read,
//! never a wrong value. `tests::a_scan_finds_what_foyer_wrote` pins the
//! layout against the foyer in `Cargo.lock`.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, Ordering};

use bytes::Bytes;

/// The size of foyer's blob index (its default, which spillway keeps).
const BLOB_INDEX: u64 = 4096;
/// foyer pads every entry to whole pages.
const PAGE: u64 = 4096;
const INDEX_HEADER: usize = 12;
const INDEX_ENTRY: usize = 24;
/// foyer's entry header.
const ENTRY_HEADER: usize = 36;
const ENTRY_MAGIC: u32 = 0x9703_2700;
const ENTRY_MAGIC_MASK: u32 = 0xFFFF_FF00;
/// A serialized u64 (foyer's key, and the value's length prefix).
const U64: usize = 8;

/// Threads that read blob indexes at once: on a cold page cache each
/// block's chain is a series of dependent 4 KiB reads, so blocks are
/// walked in parallel (foyer's own recovery reads 64 blocks at once).
const SCAN_THREADS: usize = 8;

/// Neighbouring records closer than this are read with one `pread`, gap
/// included: a page-cache copy of a few pages costs less than a system
/// call, and a device reads them in one request.
const MAX_GAP: u64 = 16 << 10;
/// The longest run read at once (its buffer is held until every record in
/// it is promoted). Small enough for the allocator to reuse freed buffers:
/// with 4 MiB runs every buffer was fresh memory, and its page faults and
/// unmapping were a tenth of the warm-up's samples.
pub(crate) const MAX_RUN: u64 = 256 << 10;

/// Where the disk tier's records lie: foyer's device file, cut into blocks.
#[derive(Clone, Debug)]
pub(crate) struct Layout {
    pub path: PathBuf,
    pub capacity: u64,
    pub block_size: u64,
}

/// A candidate record: an entry foyer's blob index lists under
/// `foyer_hash`, the hash of the record key `key`, at `at` in the device
/// file, `len` bytes long (before padding).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Located {
    pub key: u64,
    pub foyer_hash: u64,
    /// foyer's sequence number of the write: the latest copy of a record
    /// key has the highest.
    pub sequence: u64,
    pub at: u64,
    pub len: u32,
}

/// Records read together with one `pread`.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Run {
    pub start: u64,
    pub len: u64,
    pub members: Vec<Located>,
}

fn u32_be(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn u64_be(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_be_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

fn u64_le(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// An entry of a blob index: foyer's hash, foyer's sequence number of the
/// write, offset from the blob, length.
type IndexEntry = (u64, u64, u64, u32);

/// The entries of one blob index and the offset of the next blob from
/// this one; `None` if `index` is not a blob index (then the block's chain
/// ends here, as in foyer's scanner).
fn parse_index(index: &[u8], room: u64) -> Option<(Vec<IndexEntry>, u64)> {
    let count = u32_be(index, 8)? as usize;
    if count > (index.len() - INDEX_HEADER) / INDEX_ENTRY {
        return None;
    }
    let mut entries = Vec::with_capacity(count);
    let mut next = 0;
    for i in 0..count {
        let at = INDEX_HEADER + i * INDEX_ENTRY;
        let (hash, sequence, offset, len) = (
            u64_be(index, at)?,
            u64_be(index, at + 8)?,
            u64::from(u32_be(index, at + 16)?),
            u32_be(index, at + 20)?,
        );
        let end = offset + u64::from(len).div_ceil(PAGE) * PAGE;
        if offset < BLOB_INDEX || end > room {
            return None;
        }
        next = end;
        entries.push((hash, sequence, offset, len));
    }
    // An empty index ends the chain; foyer writes none.
    (next > 0).then_some((entries, next))
}

/// Walks the blob chain of the block at `start` and adds the entries whose
/// hash is wanted, while `reads_left` (shared by the scan's threads) lasts;
/// `false` once it is spent.
fn scan_block(
    file: &File,
    start: u64,
    block_size: u64,
    wanted: &HashMap<u64, u64>,
    reads_left: &AtomicI64,
    found: &mut Vec<Located>,
) -> std::io::Result<bool> {
    let mut index = vec![0u8; BLOB_INDEX as usize];
    let mut blob = 0;
    while blob + BLOB_INDEX <= block_size {
        if reads_left.fetch_sub(1, Ordering::Relaxed) <= 0 {
            return Ok(false);
        }
        match file.read_at(&mut index, start + blob) {
            Ok(n) if n == index.len() => {}
            // Past the end of a file not yet grown to its capacity.
            Ok(_) => return Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
        let Some((entries, next)) = parse_index(&index, block_size - blob) else {
            return Ok(true);
        };
        found.extend(
            entries
                .into_iter()
                .filter_map(|(hash, sequence, offset, len)| {
                    Some(Located {
                        key: *wanted.get(&hash)?,
                        foyer_hash: hash,
                        sequence,
                        at: start + blob + offset,
                        len,
                    })
                }),
        );
        blob += next;
    }
    Ok(true)
}

/// Where foyer's blob indexes say the latest copy of each `wanted` record
/// lies (`wanted` maps foyer's hash of a record key to that key; older
/// copies stay on disk until their block is reused), sorted by position. At most `max_reads` blob indexes are read: the scan walks every
/// block's chain, a cost of the disk's size, while the records it saves
/// reading one by one are as many as `wanted`; once the reads are spent,
/// what was found is returned and the rest is read the usual way.
pub(crate) fn locate(
    layout: &Layout,
    wanted: &HashMap<u64, u64>,
    max_reads: usize,
) -> std::io::Result<Vec<Located>> {
    let file = File::open(&layout.path)?;
    let blocks = layout.capacity / layout.block_size.max(1);
    let threads = SCAN_THREADS.min(blocks as usize).max(1);
    let reads_left = AtomicI64::new(i64::try_from(max_reads).unwrap_or(i64::MAX));
    let parts: Vec<std::io::Result<Vec<Located>>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads as u64)
            .map(|first| {
                let (file, reads_left) = (&file, &reads_left);
                scope.spawn(move || {
                    let mut found = Vec::new();
                    for block in (first..blocks).step_by(threads) {
                        let start = block * layout.block_size;
                        let size = layout.block_size;
                        if !scan_block(file, start, size, wanted, reads_left, &mut found)? {
                            break;
                        }
                    }
                    Ok(found)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(std::io::Error::other("a blob-index scan panicked")))
            })
            .collect()
    });
    // The latest copy of each record key, as foyer's own index keeps it:
    // a key's newer versions are always written after its older ones, so
    // the others are older versions (a hot key's can be many).
    let mut latest: HashMap<u64, Located> = HashMap::new();
    for part in parts {
        for l in part? {
            let kept = latest.entry(l.key).or_insert(l);
            if l.sequence > kept.sequence {
                *kept = l;
            }
        }
    }
    let mut found: Vec<Located> = latest.into_values().collect();
    found.sort_unstable_by_key(|l| l.at);
    Ok(found)
}

/// Groups records sorted by position into runs of at most [`MAX_RUN`]
/// bytes whose records lie within [`MAX_GAP`] of each other.
pub(crate) fn runs(located: Vec<Located>) -> Vec<Run> {
    let mut runs: Vec<Run> = Vec::new();
    for l in located {
        let end = l.at + u64::from(l.len);
        match runs.last_mut() {
            Some(run)
                if l.at >= run.start
                    && l.at <= run.start + run.len + MAX_GAP
                    && end.max(run.start + run.len) - run.start <= MAX_RUN =>
            {
                run.len = run.len.max(end - run.start);
                run.members.push(l);
            }
            _ => runs.push(Run {
                start: l.at,
                len: u64::from(l.len),
                members: vec![l],
            }),
        }
    }
    runs
}

/// The value of the foyer entry `entry` (the record as spillway wrote it),
/// if it parses as an uncompressed entry of the record key `key`, whose
/// hash is `foyer_hash`.
pub(crate) fn entry_value(entry: &Bytes, foyer_hash: u64, key: u64) -> Option<Bytes> {
    let key_len = u32_be(entry, 0)? as usize;
    let value_len = u32_be(entry, 4)? as usize;
    let magic = u32_be(entry, 32)?;
    // Compression 0 (none): spillway compresses inside its envelope.
    let uncompressed = magic & !ENTRY_MAGIC_MASK == 0;
    if u64_be(entry, 8)? != foyer_hash
        || magic & ENTRY_MAGIC_MASK != ENTRY_MAGIC
        || !uncompressed
        || key_len != U64
        || value_len < U64
    {
        return None;
    }
    let len = usize::try_from(u64_le(entry, ENTRY_HEADER)?).ok()?;
    if len != value_len - U64 || u64_le(entry, ENTRY_HEADER + value_len)? != key {
        return None;
    }
    // foyer's own checksum (xxHash64 of the value and the key), as its
    // `load` checks it.
    let checked = entry.get(ENTRY_HEADER..ENTRY_HEADER + value_len + key_len)?;
    if twox_hash::XxHash64::oneshot(0, checked) != u64_be(entry, 24)? {
        return None;
    }
    let start = ENTRY_HEADER + U64;
    Some(entry.slice(start..start + len))
}

/// Reads `run` with one `pread`; each member's record, by its record key,
/// if it parses (see [`entry_value`]).
pub(crate) fn read_run(file: &File, run: &Run) -> std::io::Result<Vec<(u64, Bytes)>> {
    use std::io::{Read, Seek};
    let len = usize::try_from(run.len).map_err(std::io::Error::other)?;
    // Read into spare capacity: `read_to_end` does not zero it first.
    let mut buf = Vec::with_capacity(len);
    let mut reader = file;
    reader.seek(std::io::SeekFrom::Start(run.start))?;
    reader.take(run.len).read_to_end(&mut buf)?;
    if buf.len() != len {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    let buf = Bytes::from(buf);
    Ok(run
        .members
        .iter()
        .filter_map(|m| {
            let from = usize::try_from(m.at.checked_sub(run.start)?).ok()?;
            let to = from.checked_add(m.len as usize)?;
            if to > buf.len() {
                return None;
            }
            let entry = buf.slice(from..to);
            Some((m.key, entry_value(&entry, m.foyer_hash, m.key)?))
        })
        .collect())
}

#[cfg(test)]
mod tests;
