//! Keeps a dependency's stray `println!` off the application's stdout.
//!
//! foyer 0.22.6's single-file device prints `==========> <capacity>` to
//! stdout whenever one is built (`io/device/file.rs`, line 103), and foyer
//! offers no way to supply a device of our own (its `Partition` trait is not
//! exported). A library must not write to stdout, so while the device is
//! built, fd 1 is diverted into a pipe; once it is restored, everything that
//! came through is copied back to the real stdout, except foyer's line:
//!
//! * the process's stdout lock is held throughout, so another thread's
//!   `print!` waits (a few microseconds) instead of racing the switch;
//!   foyer's own `println!` on this thread re-enters the lock;
//! * raw writes to fd 1 (C code) and child processes started meanwhile
//!   write into the pipe and are forwarded, not lost (a raw write racing
//!   the switch back may land a line ahead of one still in the pipe); a
//!   writer still holding the pipe once fd 1 is restored (a child) gets a
//!   short-lived thread that forwards the rest until it closes it;
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
    let Some(diverted) = divert(&stdout) else {
        return f();
    };
    let out = f();
    let _ = lock.flush();
    diverted.restore();
    out
}

/// fd 1 pointed at a pipe, and what it takes to point it back.
struct Diverted {
    /// A copy of the real stdout, to restore fd 1 from.
    saved: OwnedFd,
    /// Another copy, to forward to.
    real: OwnedFd,
    /// The pipe's read end, non-blocking.
    read: OwnedFd,
}

/// Points fd 1 at a pipe. Nothing reads it meanwhile: a raw writer that
/// fills it (64 KiB) waits until stdout is restored, a build's length.
fn divert(stdout: &std::io::Stdout) -> Option<Diverted> {
    let saved = rustix::io::dup(stdout.as_fd()).ok()?;
    let real = rustix::io::dup(stdout.as_fd()).ok()?;
    let (read, write) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).ok()?;
    // The read end only: the write end stays blocking for whoever holds it.
    rustix::io::ioctl_fionbio(&read, true).ok()?;
    rustix::stdio::dup2_stdout(write.as_fd()).ok()?;
    // `write` closes here; fd 1 (and any child started meanwhile) keeps the
    // pipe open until stdout is restored.
    Some(Diverted { saved, real, read })
}

impl Diverted {
    /// Points fd 1 back at the real stdout and forwards what went through
    /// the pipe, but foyer's line. Usually every writer is gone once fd 1 is
    /// restored, and this thread forwards it all (no thread to start and
    /// wait for: on a busy machine, that wait was most of an open's device
    /// build). If one still holds the pipe (a child started meanwhile, a raw
    /// write in flight), a thread forwards the rest until it is closed, and
    /// this waits for that, bounded.
    fn restore(self) {
        if let Err(e) = rustix::stdio::dup2_stdout(self.saved.as_fd()) {
            tracing::error!(error = %e, "could not restore stdout after building the disk device");
        }
        let mut pending = Vec::new();
        if forward(&self.read, &self.real, &mut pending) == Forwarded::AllWritersGone {
            write_all(&self.real, &pending);
            return;
        }
        let (read, real) = (self.read, self.real);
        let (done, drained) = std::sync::mpsc::channel();
        let rest = std::thread::Builder::new()
            .name("spillway-stdout".into())
            .spawn(move || {
                if rustix::io::ioctl_fionbio(&read, false).is_ok() {
                    forward(&read, &real, &mut pending);
                }
                write_all(&real, &pending);
                let _ = done.send(());
            });
        if rest.is_ok() {
            // Let it reach stdout before this thread's next output.
            let _ = drained.recv_timeout(std::time::Duration::from_millis(100));
        }
    }
}

/// How [`forward`] stopped.
#[derive(PartialEq)]
enum Forwarded {
    AllWritersGone,
    /// A non-blocking read found the pipe empty with a writer left.
    WritersLeft,
}

/// Copies whole lines from `read` to `real`, dropping foyer's line, until
/// every writer is gone or (non-blocking) the pipe is empty for now; an
/// unfinished line stays in `pending`.
fn forward(read: &OwnedFd, real: &OwnedFd, pending: &mut Vec<u8>) -> Forwarded {
    let mut buf = [0u8; 8192];
    loop {
        let n = match rustix::io::read(read, &mut buf) {
            Ok(0) => return Forwarded::AllWritersGone,
            Ok(n) => n,
            Err(rustix::io::Errno::INTR) => continue,
            Err(rustix::io::Errno::AGAIN) => return Forwarded::WritersLeft,
            Err(_) => return Forwarded::AllWritersGone,
        };
        pending.extend_from_slice(&buf[..n]);
        let complete = pending
            .iter()
            .rposition(|b| *b == b'\n')
            .map_or(0, |i| i + 1);
        let lines: Vec<u8> = pending.drain(..complete).collect();
        write_all(real, &without_foyer_lines(&lines));
    }
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
