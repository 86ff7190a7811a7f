//! Keeps a dependency's stray `println!` off the application's stdout.
//!
//! foyer 0.22.6's single-file device prints `==========> <capacity>` to
//! stdout whenever one is built (`io/device/file.rs`, line 103), and foyer
//! offers no way to supply a device of our own (its `Partition` trait is
//! not exported). A library must not write to stdout, so the build runs
//! with stdout pointed at `/dev/null`:
//!
//! * the process's stdout lock is held throughout, so another thread's
//!   `print!` waits (a few microseconds) instead of being lost; foyer's own
//!   `println!` on this thread re-enters the lock;
//! * anything already buffered is flushed to the real stdout first, and
//!   the real stdout is restored before the lock is released.
//!
//! If any step fails, the closure runs with stdout untouched: a stray line
//! is better than a failed open.

use std::io::Write;
use std::os::fd::AsFd;

/// Runs `f` with this process's stdout discarded.
pub(crate) fn discarding_stdout<T>(f: impl FnOnce() -> T) -> T {
    let stdout = std::io::stdout();
    let mut lock = stdout.lock();
    let _ = lock.flush();
    let Some(saved) = redirect_to_null(&stdout) else {
        return f();
    };
    let out = f();
    let _ = lock.flush();
    if let Err(e) = rustix::stdio::dup2_stdout(saved.as_fd()) {
        tracing::error!(error = %e, "could not restore stdout after building the disk device");
    }
    out
}

/// Points fd 1 at `/dev/null`; returns a copy of what it was.
fn redirect_to_null(stdout: &std::io::Stdout) -> Option<std::os::fd::OwnedFd> {
    let null = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/null")
        .ok()?;
    let saved = rustix::io::dup(stdout.as_fd()).ok()?;
    rustix::stdio::dup2_stdout(null.as_fd()).ok()?;
    Some(saved)
}
