//! A bench section run in a fresh child process of this binary: the
//! parent starts it and reads back the JSON it wrote; the child writes it.
//! The index phase and the head-to-head each run this way (see
//! `index::measure_in_child` and `versus_child` for why).

use std::path::Path;
use std::process::{Command, Stdio};

use serde::de::DeserializeOwned;
use serde::Serialize;

fn failed(section: &str, out: &Path, reason: String) -> spillway::Error {
    spillway::Error::Config {
        field: format!("bench.{section}"),
        value: out.display().to_string(),
        reason,
    }
}

/// Runs this binary with what `configure` adds (its subcommand, arguments
/// and environment; its stdout discarded), then reads the `T` it wrote to
/// `out`. A child that fails, or leaves no readable JSON, is an error
/// naming `section` and `out`.
pub fn run<T: DeserializeOwned>(
    section: &str,
    out: &Path,
    configure: impl FnOnce(&mut Command),
) -> spillway::Result<T> {
    let exe = std::env::current_exe()
        .map_err(|e| spillway::Error::io("find the spillway binary", Path::new("-"), e))?;
    let mut command = Command::new(&exe);
    configure(&mut command);
    let status = command
        .stdout(Stdio::null())
        .status()
        .map_err(|e| spillway::Error::io("run a bench child of", &exe, e))?;
    if !status.success() {
        return Err(failed(
            section,
            out,
            format!("the {section} child failed: {status}"),
        ));
    }
    let text = std::fs::read_to_string(out).map_err(|e| spillway::Error::io("read", out, e))?;
    serde_json::from_str(&text).map_err(|e| failed(section, out, e.to_string()))
}

/// The child's side of [`run`]: writes `value` to `out` as JSON.
pub fn write<T: Serialize + ?Sized>(section: &str, value: &T, out: &Path) -> spillway::Result<()> {
    let text = serde_json::to_string(value).map_err(|e| failed(section, out, e.to_string()))?;
    std::fs::write(out, text).map_err(|e| spillway::Error::io("write", out, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A child that exits non-zero is an error that names its section and
    /// its output file, not a parse of whatever the file held.
    #[test]
    fn a_failing_child_is_an_error_naming_its_section() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("runs.json");
        std::fs::write(&out, "[1]").unwrap();
        // The child is this test binary, which refuses an unknown option.
        let result: spillway::Result<Vec<u64>> = run("versus", &out, |c| {
            c.arg("--no-such-option");
        });
        match result {
            Err(spillway::Error::Config {
                field,
                value,
                reason,
            }) => {
                assert_eq!(field, "bench.versus");
                assert_eq!(value, out.display().to_string());
                assert!(reason.contains("child failed"), "{reason}");
            }
            other => panic!("expected the child's failure, got {other:?}"),
        }
    }

    /// What the child writes, the parent's parse reads back.
    #[test]
    fn what_the_child_writes_the_parent_reads() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("runs.json");
        write("index", &[1u64, 2, 3], &out).unwrap();
        let text = std::fs::read_to_string(&out).unwrap();
        let back: Vec<u64> = serde_json::from_str(&text).unwrap();
        assert_eq!(back, [1, 2, 3]);
    }
}
