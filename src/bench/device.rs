//! The physical limit: sequential write bandwidth of the cache directory's
//! filesystem, both with O_DIRECT and buffered (`write` then `fdatasync`,
//! as `dd conv=fdatasync` does), and its 4 KiB random-read latency with
//! O_DIRECT.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::time::Instant;

use serde::Serialize;

use super::workload::Rng;

#[derive(Clone, Debug, Default, Serialize)]
pub struct DeviceReport {
    /// Bytes each sequential write test wrote.
    pub bytes: u64,
    /// Sequential write, O_DIRECT (buffered when the filesystem refused
    /// O_DIRECT: see `direct`).
    pub seq_write_mib_s: f64,
    /// Sequential write through the page cache, `fdatasync` included.
    pub buffered_write_mib_s: f64,
    pub rand_read_4k_p50_us: f64,
    pub rand_read_4k_p99_us: f64,
    /// Sequential read of the file written, 1 MiB at a time: O_DIRECT, so
    /// the device's own pace (through the page cache when the filesystem
    /// refused O_DIRECT: see `direct`). The warm-up's yardstick.
    pub seq_read_mib_s: f64,
    /// False when the filesystem refused O_DIRECT and buffered I/O was measured.
    pub direct: bool,
}

impl DeviceReport {
    /// How the device figures were read and written: "O_DIRECT", or
    /// "buffered" where the filesystem refused it.
    pub fn mode(&self) -> &'static str {
        if self.direct {
            "O_DIRECT"
        } else {
            "buffered"
        }
    }

    /// The sequential write bandwidth in one mode; `None` for O_DIRECT on
    /// a filesystem that refused it.
    pub fn write_mib_s(&self, direct: bool) -> Option<f64> {
        match (direct, self.direct) {
            (false, _) => Some(self.buffered_write_mib_s),
            (true, true) => Some(self.seq_write_mib_s),
            (true, false) => None,
        }
    }
}

/// Waits until the dirty pages of `dir`'s filesystem are on the device
/// (`sync -f`, coreutils' `syncfs`). Every bandwidth test starts from here,
/// so none is charged with the writeback that the phases before it left in
/// the page cache: the device test and each storm start equally clean.
/// Where `sync -f` is missing, the tests run unsettled, with a note.
pub fn settle_writeback(dir: &Path) {
    let status = std::process::Command::new("sync")
        .arg("-f")
        .arg(dir)
        .status();
    if !status.as_ref().is_ok_and(|s| s.success()) {
        eprintln!(
            "note: `sync -f` failed ({status:?}); bandwidth tests start with writeback pending"
        );
    }
}

/// A 4 KiB-aligned window into a larger vector: O_DIRECT needs aligned
/// buffers, and this gets one without `unsafe`.
fn aligned(buf: &mut Vec<u8>, len: usize) -> &mut [u8] {
    buf.resize(len + 4096, 0);
    let offset = buf.as_ptr().align_offset(4096);
    &mut buf[offset..offset + len]
}

/// A sequential write test: `total` bytes 1 MiB at a time into a fresh
/// `device-probe` file in `dir`, then `fdatasync`, after the filesystem's
/// earlier writeback has settled. Returns the file (for reads) and MiB/s;
/// `None` when `direct` was asked for and the filesystem refused O_DIRECT.
fn write_test(
    dir: &Path,
    total: usize,
    direct: bool,
) -> std::io::Result<Option<(std::fs::File, f64)>> {
    let path = dir.join("device-probe");
    // A fresh file, so no test overwrites pages another left cached.
    let _ = std::fs::remove_file(&path);
    let mut o = OpenOptions::new();
    o.create(true).read(true).write(true).truncate(true);
    if direct {
        o.custom_flags(libc::O_DIRECT);
    }
    settle_writeback(dir);
    let mut file = match o.open(&path) {
        Ok(file) => file,
        Err(_) if direct => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut backing = Vec::new();
    let buf = aligned(&mut backing, CHUNK);
    buf.iter_mut().enumerate().for_each(|(i, b)| *b = i as u8);
    let started = Instant::now();
    for _ in 0..total / CHUNK {
        file.write_all(buf)?;
    }
    file.sync_data()?;
    let mib_s = (total / CHUNK) as f64 / started.elapsed().as_secs_f64();
    Ok(Some((file, mib_s)))
}

/// The sequential write bandwidth in one mode, measured now (the storms
/// measure it beside themselves); `None` for O_DIRECT where refused.
pub fn seq_write(dir: &Path, total: usize, direct: bool) -> std::io::Result<Option<f64>> {
    let written = write_test(dir, total, direct)?;
    let _ = std::fs::remove_file(dir.join("device-probe"));
    Ok(written.map(|(_, mib_s)| mib_s))
}

/// The 1 MiB unit of every sequential test.
const CHUNK: usize = 1 << 20;

pub fn measure(dir: &Path, total: usize) -> std::io::Result<DeviceReport> {
    let path = dir.join("device-probe");
    let buffered_write_mib_s = seq_write(dir, total, false)?.unwrap_or_default();
    // Written in either mode: the random reads below need its contents.
    let (file, direct, written) = match write_test(dir, total, true)? {
        Some((file, mib_s)) => (file, true, mib_s),
        None => {
            let (file, mib_s) = write_test(dir, total, false)?
                .ok_or_else(|| std::io::Error::other("a buffered write test cannot be refused"))?;
            (file, false, mib_s)
        }
    };
    let seq_write_mib_s = if direct {
        written
    } else {
        buffered_write_mib_s
    };
    let chunk = CHUNK;
    let mut backing = Vec::new();
    let buf = aligned(&mut backing, chunk);

    let mut rng = Rng::new(42);
    let mut backing = Vec::new();
    let page = aligned(&mut backing, 4096);
    let pages = (total / 4096) as u64;
    let mut lat = Vec::with_capacity(2000);
    for _ in 0..2000 {
        let at = (rng.next_u64() % pages) * 4096;
        let t = Instant::now();
        file.read_exact_at(page, at)?;
        lat.push(t.elapsed().as_secs_f64() * 1e6);
    }
    lat.sort_by(f64::total_cmp);
    let started = Instant::now();
    for i in 0..(total / chunk) as u64 {
        file.read_exact_at(buf, i * chunk as u64)?;
    }
    let seq_read_mib_s = (total / chunk) as f64 / started.elapsed().as_secs_f64();
    drop(file);
    let _ = std::fs::remove_file(&path);
    Ok(DeviceReport {
        bytes: total as u64,
        seq_write_mib_s,
        buffered_write_mib_s,
        rand_read_4k_p50_us: lat[lat.len() / 2],
        rand_read_4k_p99_us: lat[lat.len() * 99 / 100],
        seq_read_mib_s,
        direct,
    })
}
