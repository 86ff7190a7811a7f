//! What the terminal shows after a run: the results table that fits
//! [`TERMINAL_WIDTH`] columns, a legend of its abbreviations, and the
//! targets, wrapped. report.md and report.json keep every column.

use std::fmt::Write as _;

use super::report::{disk_hit_ratio, mib, micros, opt, si, verdict, Report, MISSING};

/// The widest line [`Report::summary`] prints.
pub const TERMINAL_WIDTH: usize = 100;

impl Report {
    /// The results as the terminal shows them: the columns that fit
    /// [`TERMINAL_WIDTH`], then a legend of the abbreviations. report.md and
    /// report.json keep every column.
    fn terminal_table(&self) -> String {
        let ratio = |v: f64| format!("{v:.3}");
        let mut columns = [
            Column::new("memory", false),
            Column::new("system", true),
            Column::new("ops/s", false),
            Column::new("all", false),
            Column::new("mem", false),
            Column::new("disk", false),
            Column::new("mem", false),
            Column::new("disk", false),
            Column::new("miss", false),
            Column::new("w.amp", false),
            Column::new("restart", false),
            Column::new("kill", false),
        ];
        for r in &self.runs {
            let cells = [
                format!("{:.0}%", r.memory_fraction * 100.0),
                r.system.chars().take(16).collect(),
                si(r.ops_per_sec),
                ratio(r.hit_ratio),
                ratio(r.memory_hit_ratio),
                opt(disk_hit_ratio(r), ratio),
                opt(r.latency_memory.p99(), micros),
                opt(r.latency_disk.p99(), micros),
                opt(r.latency_miss.p99(), micros),
                opt(r.spill.as_ref().and_then(|s| s.write_amplification), |w| {
                    format!("{w:.2}")
                }),
                opt(r.restart_hit_ratio, ratio),
                opt(r.kill_hit_ratio, ratio),
            ];
            for (column, cell) in columns.iter_mut().zip(cells) {
                column.cells.push(cell);
            }
        }
        let mut s = render(&columns, &[("hit ratio", 3..6), ("p99 latency, µs", 6..9)]);
        s.push('\n');
        for (key, text) in [
            ("memory", "memory budget, % of the working set"),
            ("ops/s", "operations per second in the steady phase"),
            (
                "hit ratio",
                "share of reads served from cache: all = either tier, mem = memory, disk = disk",
            ),
            (
                "p99 latency",
                "99th percentile of a memory hit, a disk hit, a miss (the loader runs), in µs",
            ),
            (
                "w.amp",
                "write amplification: bytes written to the device / bytes of records spilled",
            ),
            (
                "restart",
                "hit ratio replaying the steady phase after close() and a reopen",
            ),
            (
                "kill",
                "hit ratio replaying it after a SIGKILL, no close() (middle budget only)",
            ),
            (
                MISSING,
                "no figure: not measured or not applicable (moka has no disk tier; no disk hits)",
            ),
        ] {
            s.push_str(&wrap(&format!("{key:<12} {text}"), TERMINAL_WIDTH, 13));
        }
        s.push_str(&wrap(
            "Every column (loader runs, spills, persisted, not written, ...): report.md and report.json.",
            TERMINAL_WIDTH,
            0,
        ));
        s
    }

    /// The targets as wrapped lines: verdict, ratio, what was measured.
    fn terminal_targets(&self) -> String {
        let mut s = String::from("Targets (ratio: measured against its baseline in this run)\n");
        for t in &self.targets {
            let line = format!(
                "  {:<11} {:>6.2}  {}: {} (goal {})",
                verdict(t),
                t.ratio,
                t.name,
                t.measured,
                t.goal
            );
            s.push_str(&wrap(&line, TERMINAL_WIDTH, 22));
        }
        s
    }

    /// What the terminal shows after a run: every line fits [`TERMINAL_WIDTH`].
    pub fn summary(&self) -> String {
        let header = format!(
            "{}machine: {}; working set {:.0} MiB; device {:.0} MiB/s sequential write, 4 KiB read p50 {:.0} µs ({})",
            if self.quick {
                "--quick (not representative: do not quote these figures); "
            } else {
                ""
            },
            self.machine,
            mib(self.working_set_bytes),
            self.device.seq_write_mib_s,
            self.device.rand_read_4k_p50_us,
            self.device.mode(),
        );
        let mut compression = String::new();
        for r in &self.compression {
            let line = format!(
                "compression {}: ratio {:.2}, effective capacity {:.2}× the disk, spill {} MiB/s, {} disk hits/s (medians)",
                r.algorithm,
                r.ratio,
                r.effective_capacity,
                si(r.spill_mib_s.median),
                si(r.disk_hits_per_s.median),
            );
            compression.push_str(&wrap(&line, TERMINAL_WIDTH, 2));
        }
        for r in &self.packing {
            let line = format!(
                "small entries, {}: hit ratio {:.3}, {} entries on disk, {:.0}% utilisation{} (medians)",
                r.system,
                r.hit_ratio.median,
                r.entries_on_disk,
                r.utilisation * 100.0,
                r.write_amplification
                    .map_or(String::new(), |w| format!(", write amp {w:.2}")),
            );
            compression.push_str(&wrap(&line, TERMINAL_WIDTH, 2));
        }
        format!(
            "\n{}\n{}\n{}\n{}",
            wrap(&header, TERMINAL_WIDTH, 2),
            self.terminal_table(),
            self.terminal_targets(),
            compression
        )
    }
}

/// A terminal table column.
struct Column {
    head: &'static str,
    left: bool,
    cells: Vec<String>,
}

impl Column {
    fn new(head: &'static str, left: bool) -> Self {
        Self {
            head,
            left,
            cells: Vec::new(),
        }
    }

    fn width(&self) -> usize {
        self.cells
            .iter()
            .map(|c| c.chars().count())
            .chain([self.head.chars().count()])
            .max()
            .unwrap_or(0)
    }
}

/// Columns two spaces apart, with group labels (over a range of columns)
/// on a line above the column heads.
fn render(columns: &[Column], groups: &[(&str, std::ops::Range<usize>)]) -> String {
    const GAP: usize = 2;
    let widths: Vec<usize> = columns.iter().map(Column::width).collect();
    let starts: Vec<usize> = widths
        .iter()
        .scan(0, |at, w| {
            let start = *at;
            *at += w + GAP;
            Some(start)
        })
        .collect();
    let mut s = String::new();
    let mut line = String::new();
    for (label, range) in groups {
        let (from, to) = (
            starts[range.start],
            starts[range.end - 1] + widths[range.end - 1],
        );
        let span = to - from;
        let label_len = label.chars().count();
        let pad = span.saturating_sub(label_len) / 2;
        while line.chars().count() < from + pad {
            line.push(' ');
        }
        line.push_str(label);
    }
    let _ = writeln!(s, "{}", line.trim_end());
    let row = |cells: &mut dyn Iterator<Item = &str>| {
        let mut line = String::new();
        for ((cell, column), width) in cells.zip(columns).zip(&widths) {
            if !line.is_empty() {
                line.push_str(&" ".repeat(GAP));
            }
            if column.left {
                let _ = write!(line, "{cell:<width$}");
            } else {
                let _ = write!(line, "{cell:>width$}");
            }
        }
        line.trim_end().to_string()
    };
    let _ = writeln!(s, "{}", row(&mut columns.iter().map(|c| c.head)));
    let rows = columns.first().map_or(0, |c| c.cells.len());
    for i in 0..rows {
        let _ = writeln!(
            s,
            "{}",
            row(&mut columns.iter().map(|c| c.cells[i].as_str()))
        );
    }
    s
}

/// `text` word-wrapped at `width` characters; continuation lines start
/// with `indent` spaces. Runs of spaces inside a line are kept; a word
/// longer than a line stays whole. Ends with a newline.
pub(super) fn wrap(text: &str, width: usize, indent: usize) -> String {
    let mut out = String::new();
    let mut line = String::new();
    for (i, word) in text.split(' ').enumerate() {
        if i > 0 {
            let len = line.chars().count() + 1 + word.chars().count();
            if !word.is_empty() && len > width && !line.trim().is_empty() {
                out.push_str(line.trim_end());
                out.push('\n');
                line = " ".repeat(indent);
                line.push_str(word);
                continue;
            }
            line.push(' ');
        }
        line.push_str(word);
    }
    out.push_str(line.trim_end());
    out.push('\n');
    out
}
