//! The bench's stdout is closed while it measures: foyer's single-file
//! device prints a line on every build (spillway's library filters it out
//! of its own opens; the bench builds foyer's caches directly), and the
//! report the bench prints at the end must not be preceded by noise.

use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};

/// While alive, fd 1 points at `/dev/null`; dropping it restores stdout.
pub struct QuietStdout {
    saved: Option<OwnedFd>,
}

impl QuietStdout {
    /// Closes stdout (to `/dev/null`); if that fails, stdout stays as it is.
    pub fn new() -> Self {
        let stdout = std::io::stdout();
        let _ = stdout.lock().flush();
        let saved = rustix::io::dup(stdout.as_fd()).ok().filter(|_| {
            std::fs::OpenOptions::new()
                .write(true)
                .open("/dev/null")
                .ok()
                .is_some_and(|null| rustix::stdio::dup2_stdout(null.as_fd()).is_ok())
        });
        Self { saved }
    }
}

impl Drop for QuietStdout {
    fn drop(&mut self) {
        let _ = std::io::stdout().lock().flush();
        if let Some(saved) = self.saved.take() {
            if let Err(e) = rustix::stdio::dup2_stdout(saved.as_fd()) {
                eprintln!("warning: could not restore stdout: {e}");
            }
        }
    }
}
