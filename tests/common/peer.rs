//! Another process with a cache: this test binary run again as a child
//! that executes one named test (the child's command loop), which reads
//! commands on stdin and answers each with a line `@@>reply` on stdout
//! (`reply` below), among the lines the test harness prints itself.

use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

/// Marks a reply among the harness's own output.
const MARK: &str = "@@>";

/// Writes one reply of the child's command loop.
pub fn reply(out: &mut impl Write, reply: &str) {
    writeln!(out, "\n{MARK}{reply}").unwrap();
    out.flush().unwrap();
}

pub struct Peer {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Peer {
    /// Runs the test named `child_test` in a new process, with `env`.
    pub fn spawn<K: AsRef<OsStr>, V: AsRef<OsStr>>(child_test: &str, env: &[(K, V)]) -> Self {
        let mut command = Command::new(std::env::current_exe().unwrap());
        command.args([child_test, "--exact", "--nocapture", "--test-threads", "1"]);
        for (k, v) in env {
            command.env(k, v);
        }
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        Self {
            child,
            stdin,
            stdout,
        }
    }

    pub fn send(&mut self, command: &str) {
        writeln!(self.stdin, "{command}").unwrap();
        self.stdin.flush().unwrap();
    }

    pub fn recv(&mut self) -> String {
        loop {
            let mut line = String::new();
            let n = self.stdout.read_line(&mut line).unwrap();
            assert!(n > 0, "the peer exited (panicked?)");
            if let Some((_, reply)) = line.trim_end().split_once(MARK) {
                return reply.to_string();
            }
        }
    }

    pub fn ask(&mut self, command: &str) -> String {
        self.send(command);
        self.recv()
    }

    /// Its remote tier's statistics (the child answers `stats` with them).
    pub fn stats(&mut self) -> serde_json::Value {
        serde_json::from_str(&self.ask("stats")).unwrap()
    }

    /// SIGKILL: nothing queued is sent, nothing is closed.
    pub fn kill9(mut self) {
        self.child.kill().unwrap();
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = writeln!(self.stdin, "exit");
        let _ = self.child.wait();
    }
}
