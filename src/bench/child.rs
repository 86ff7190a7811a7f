//! Bench phases that run in a child process of their own: this binary
//! re-run with a hidden subcommand, which writes the phase's result as JSON
//! to a file the parent then reads.
//!
//! A fresh process is what a cache meets when its application starts, and
//! it leaves nothing behind for later phases. In the bench's own process,
//! phases measured after many caches had been opened and closed ran slower
//! than the same phase in a fresh one (foyer 0.22 never frees a closed
//! device; see `index` and `storm` for what was measured).

use std::path::Path;

use serde::de::DeserializeOwned;
use serde::Serialize;

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> spillway::Error + 'a {
    move |e| spillway::Error::io(op, path, e)
}

/// Runs this binary with `args` (a hidden subcommand and its flags, which
/// must make the child write its result to `out`) and reads that result.
/// `phase` names the phase in errors.
pub fn run<T: DeserializeOwned>(
    phase: &'static str,
    args: &[&std::ffi::OsStr],
    out: &Path,
) -> spillway::Result<T> {
    let exe = std::env::current_exe().map_err(io("find the spillway binary", Path::new("-")))?;
    let status = std::process::Command::new(&exe)
        .args(args)
        .stdout(std::process::Stdio::null())
        .status()
        .map_err(io("run a bench phase's child", &exe))?;
    let failed = |reason: String| spillway::Error::Config {
        field: format!("bench.{phase}"),
        value: out.display().to_string(),
        reason,
    };
    if !status.success() {
        return Err(failed(format!(
            "the {phase} phase's child failed: {status}"
        )));
    }
    let text = std::fs::read_to_string(out).map_err(io("read", out))?;
    serde_json::from_str(&text).map_err(|e| failed(e.to_string()))
}

/// The child's side: runs `phase` on a runtime of its own and writes its
/// result to `out` as JSON.
pub fn serve<T, F>(phase: &'static str, out: &Path, measure: F) -> spillway::Result<()>
where
    T: Serialize,
    F: std::future::Future<Output = spillway::Result<T>>,
{
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(io("start runtime", Path::new("-")))?;
    let result = runtime.block_on(measure)?;
    let text = serde_json::to_string(&result).map_err(|e| spillway::Error::Config {
        field: format!("bench.{phase}"),
        value: out.display().to_string(),
        reason: e.to_string(),
    })?;
    std::fs::write(out, text).map_err(io("write", out))
}
