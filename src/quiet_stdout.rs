//! Keeps a dependency's stray `println!` off the application's stdout.
//!
//! foyer 0.22.6's single-file device prints `==========> <capacity>` to
//! stdout whenever one is built (`io/device/file.rs`, line 103), and foyer
//! offers no way to supply a device of our own (its `Partition` trait is not
//! exported). A library must not write to stdout, so while the device is
//! built, fd 1 is diverted into a pipe, and a short-lived thread copies
//! everything that comes through back to the real stdout, except foyer's
//! line:
//!
//! * the process's stdout lock is held throughout, so another thread's
//!   `print!` waits (a few microseconds) instead of racing the switch;
//!   foyer's own `println!` on this thread re-enters the lock;
//! * raw writes to fd 1 (C code) and child processes started meanwhile
//!   write into the pipe and are forwarded, not lost (a raw write racing
//!   the switch back may land a line ahead of one still in the pipe); the
//!   thread ends when the last writer closes it;
//! * anything already buffered is flushed to the real stdout first.
//!
//! If any step fails, the closure runs with stdout untouched: a stray line
//! is better than a failed open. foyer's `println!` takes the stdout lock
//! itself, so an application that holds that lock while another of its
//! threads builds a cache waits for it either way.

use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};

/// The line foyer prints: `==========> ` then the capacity.
const FOYER_LINE: &[u8] = b"==========> ";

/// Runs `f` with foyer's stdout line filtered out of this process's stdout.
pub(crate) fn discarding_stdout<T>(f: impl FnOnce() -> T) -> T {
    let stdout = std::io::stdout();
    let mut lock = stdout.lock();
    let _ = lock.flush();
    let Some((saved, drained)) = divert(&stdout) else {
        return f();
    };
    let out = f();
    let _ = lock.flush();
    if let Err(e) = rustix::stdio::dup2_stdout(saved.as_fd()) {
        tracing::error!(error = %e, "could not restore stdout after building the disk device");
    }
    // Let what went through the pipe reach stdout before this thread's next
    // output (bounded: a child started meanwhile may hold the pipe open).
    let _ = drained.recv_timeout(std::time::Duration::from_millis(100));
    out
}

/// Points fd 1 at a pipe whose other end a thread forwards to the real
/// stdout; returns a copy of the real stdout, to restore it, and a signal
/// that the forwarding is over.
fn divert(stdout: &std::io::Stdout) -> Option<(OwnedFd, std::sync::mpsc::Receiver<()>)> {
    let saved = rustix::io::dup(stdout.as_fd()).ok()?;
    let real = rustix::io::dup(stdout.as_fd()).ok()?;
    let (read, write) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).ok()?;
    let (done, drained) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("spillway-stdout".into())
        .spawn(move || {
            forward(read, real);
            let _ = done.send(());
        })
        .ok()?;
    rustix::stdio::dup2_stdout(write.as_fd()).ok()?;
    // `write` closes here; fd 1 (and any child started meanwhile) keeps the
    // pipe open until stdout is restored.
    Some((saved, drained))
}

/// Copies whole lines from `read` to `real` until every writer is gone,
/// dropping foyer's line.
fn forward(read: OwnedFd, real: OwnedFd) {
    let mut pending = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        let n = match rustix::io::read(&read, &mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(rustix::io::Errno::INTR) => continue,
            Err(_) => break,
        };
        pending.extend_from_slice(&buf[..n]);
        let complete = pending
            .iter()
            .rposition(|b| *b == b'\n')
            .map_or(0, |i| i + 1);
        let lines: Vec<u8> = pending.drain(..complete).collect();
        write_all(&real, &without_foyer_lines(&lines));
    }
    write_all(&real, &pending);
}

fn without_foyer_lines(lines: &[u8]) -> Vec<u8> {
    lines
        .split_inclusive(|b| *b == b'\n')
        .filter(|line| !is_foyer_line(line))
        .flatten()
        .copied()
        .collect()
}

fn is_foyer_line(line: &[u8]) -> bool {
    line.strip_prefix(FOYER_LINE)
        .map(|rest| rest.strip_suffix(b"\n").unwrap_or(rest))
        .is_some_and(|digits| !digits.is_empty() && digits.iter().all(u8::is_ascii_digit))
}

fn write_all(fd: &OwnedFd, mut bytes: &[u8]) {
    while !bytes.is_empty() {
        match rustix::io::write(fd, bytes) {
            Ok(0) => return,
            Ok(n) => bytes = &bytes[n..],
            Err(rustix::io::Errno::INTR) => {}
            Err(_) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_foyers_line_is_dropped() {
        let text = b"before\n==========> 8388608\n==========> not a number\nafter\n";
        assert_eq!(
            without_foyer_lines(text),
            b"before\n==========> not a number\nafter\n".to_vec()
        );
    }
}
