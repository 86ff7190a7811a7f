//! Adversarial tests of "a cache never prints to stdout" (foyer's device
//! prints a line when built; spillway suppresses it), while the application
//! keeps printing: every line the application wrote must arrive intact.
//!
//! Each scenario runs in a child process (this same test binary) whose
//! stdout the parent reads back.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use common::*;

const ENV_DIR: &str = "SPILLWAY_ADV_STDOUT_DIR";
const ENV_SCENARIO: &str = "SPILLWAY_ADV_STDOUT_SCENARIO";

fn payload(n: usize) -> String {
    // Long enough that a line takes more than one small write, with
    // multi-byte characters.
    format!("{n:08}-{}-ünïcødé✓-{}", "x".repeat(n % 97 + 150), n % 13)
}

fn app_line(n: usize) -> String {
    format!("APPLINE {n} {}", payload(n))
}

/// Builds, uses, closes, reopens, drops and reopens caches in `threads`
/// threads at once (each with its own runtime and directory), `rounds`
/// times each.
fn churn_caches(base: &Path, threads: usize, rounds: usize) {
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let dir = base.join(format!("w{t}"));
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(1)
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async {
                    for r in 0..rounds {
                        let cache = small(&dir).build().await.unwrap();
                        for i in 0..40 {
                            insert(&cache, &key("s", i), blob(i, r as u8)).await;
                        }
                        cache.flush().await;
                        cache.close().await.unwrap();
                        drop(cache);
                        let cache = small(&dir).build().await.unwrap();
                        let _ = cache.stats();
                        drop(cache); // without close
                        let cache = small(&dir).build().await.unwrap();
                        cache.close().await.unwrap();
                    }
                });
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
}

fn run_scenario(scenario: &str, dir: &Path) -> std::process::Output {
    run_child_test(
        "stdout_child",
        "exec \"$0\" \"$@\"",
        &[
            (ENV_DIR, dir.as_os_str()),
            (ENV_SCENARIO, std::ffi::OsStr::new(scenario)),
        ],
    )
}

/// The lines of the form `TAG n ...`: each intact (`expect(n)`), each
/// exactly once, none missing. Order is not asserted: a raw write racing
/// the switch back from the diversion may land ahead of one still in the
/// pipe (documented in `src/quiet_stdout.rs`).
fn check_lines(stdout: &str, tag: &str, count: usize, expect: impl Fn(usize) -> String) {
    let mut seen = vec![false; count];
    for line in stdout.lines().filter(|l| l.contains(tag)) {
        let n: usize = line
            .split(' ')
            .nth(1)
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{tag}: a damaged line: {line:?}"));
        assert!(n < count, "{tag}: line number {n} out of range");
        assert_eq!(line, expect(n), "line {n} of {tag} damaged");
        assert!(!seen[n], "line {n} of {tag} arrived twice");
        seen[n] = true;
    }
    let missing: Vec<usize> = (0..count).filter(|n| !seen[*n]).collect();
    assert!(missing.is_empty(), "{tag}: lines {missing:?} never arrived");
}

fn printed_count(stderr: &str, tag: &str) -> usize {
    let marker = format!("{tag} printed ");
    stderr
        .lines()
        .find_map(|l| l.strip_prefix(&marker))
        .unwrap_or_else(|| panic!("the child did not report {tag}: {stderr}"))
        .trim()
        .parse()
        .unwrap()
}

/// `println!` from the main thread (and `print!` of partial lines) while
/// four threads build, use, close and reopen caches.
#[test]
fn concurrent_caches_never_print_and_never_eat_println_lines() {
    let dir = tempfile::tempdir().unwrap();
    let out = run_scenario("println", dir.path());
    assert_child_passed(&out, "stdout child done");
    let stdout = String::from_utf8(out.stdout.clone()).expect("stdout is valid UTF-8");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stdout.contains("==========>"), "a cache printed to stdout");
    check_lines(
        &stdout,
        "APPLINE",
        printed_count(&stderr, "APPLINE"),
        app_line,
    );
    check_lines(
        &stdout,
        "PARTLINE",
        printed_count(&stderr, "PARTLINE"),
        |n| format!("PARTLINE {n} a-b-c"),
    );
}

/// A partial line in stdout's buffer when a cache is built on the same
/// thread is neither lost nor split.
#[test]
fn a_partial_line_survives_a_build_on_the_same_thread() {
    let dir = tempfile::tempdir().unwrap();
    let out = run_scenario("partial", dir.path());
    assert_child_passed(&out, "stdout child done");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!stdout.contains("==========>"), "{stdout}");
    for n in 0..3 {
        assert!(
            stdout.contains(&format!("before-{n}|after-{n}\n")),
            "partial line {n} lost or split:\n{stdout}"
        );
    }
}

/// Lines written straight to file descriptor 1 (as a C library or a
/// logger with its own handle does), one `write(2)` per line, while caches
/// are built in other threads.
#[test]
fn raw_writes_to_stdout_are_not_lost_while_caches_are_built() {
    let dir = tempfile::tempdir().unwrap();
    let out = run_scenario("raw", dir.path());
    assert_child_passed(&out, "stdout child done");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stdout.contains("==========>"));
    check_lines(&stdout, "RAWLINE", printed_count(&stderr, "RAWLINE"), |n| {
        format!("RAWLINE {n} {}", payload(n))
    });
}

/// Subprocesses the application starts (inheriting its stdout) while
/// caches are built in other threads: their output arrives.
#[test]
fn subprocess_output_is_not_lost_while_caches_are_built() {
    let dir = tempfile::tempdir().unwrap();
    let out = run_scenario("spawn", dir.path());
    assert_child_passed(&out, "stdout child done");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    check_lines(&stdout, "SUBLINE", printed_count(&stderr, "SUBLINE"), |n| {
        format!("SUBLINE {n}")
    });
}

/// The child's entry point; a no-op in a normal test run.
#[test]
fn stdout_child() {
    let (Ok(dir), Ok(scenario)) = (std::env::var(ENV_DIR), std::env::var(ENV_SCENARIO)) else {
        return;
    };
    let dir = PathBuf::from(dir);
    // End whatever line the test harness started.
    println!();
    match scenario.as_str() {
        "println" => {
            let done = Arc::new(AtomicBool::new(false));
            let churn = {
                let done = done.clone();
                let dir = dir.clone();
                std::thread::spawn(move || {
                    churn_caches(&dir, 4, 6);
                    done.store(true, SeqCst);
                })
            };
            let (mut n, mut parts) = (0, 0);
            while !done.load(SeqCst) {
                println!("{}", app_line(n));
                n += 1;
                if n % 5 == 0 {
                    // A line written in pieces, with pauses between them.
                    print!("PARTLINE {parts} a");
                    std::thread::yield_now();
                    print!("-b");
                    std::thread::sleep(Duration::from_micros(50));
                    println!("-c");
                    parts += 1;
                }
                std::thread::sleep(Duration::from_micros(20));
            }
            churn.join().unwrap();
            std::io::stdout().flush().unwrap();
            eprintln!("APPLINE printed {n}");
            eprintln!("PARTLINE printed {parts}");
        }
        "partial" => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            for n in 0..3 {
                print!("before-{n}|");
                rt.block_on(async {
                    let cache = small(&dir).build().await.unwrap();
                    insert(&cache, &key("p", n), blob(n, 1)).await;
                    cache.close().await.unwrap();
                });
                println!("after-{n}");
            }
        }
        "raw" => {
            let done = Arc::new(AtomicBool::new(false));
            let churn = {
                let done = done.clone();
                let dir = dir.clone();
                std::thread::spawn(move || {
                    churn_caches(&dir, 3, 4);
                    done.store(true, SeqCst);
                })
            };
            let stdout = std::io::stdout();
            let mut n = 0;
            while !done.load(SeqCst) {
                let line = format!("RAWLINE {n} {}\n", payload(n));
                let written = rustix::io::write(std::os::fd::AsFd::as_fd(&stdout), line.as_bytes())
                    .expect("write to fd 1");
                assert_eq!(written, line.len());
                n += 1;
                std::thread::sleep(Duration::from_micros(20));
            }
            churn.join().unwrap();
            eprintln!("RAWLINE printed {n}");
        }
        "spawn" => {
            let done = Arc::new(AtomicBool::new(false));
            let churn = {
                let done = done.clone();
                let dir = dir.clone();
                std::thread::spawn(move || {
                    churn_caches(&dir, 3, 4);
                    done.store(true, SeqCst);
                })
            };
            std::io::stdout().flush().unwrap();
            let mut n = 0;
            while !done.load(SeqCst) {
                let status = std::process::Command::new("echo")
                    .arg("SUBLINE")
                    .arg(n.to_string())
                    .status()
                    .unwrap();
                assert!(status.success());
                n += 1;
            }
            churn.join().unwrap();
            eprintln!("SUBLINE printed {n}");
        }
        "locked" => {
            let stdout = std::io::stdout();
            let mut out = stdout.lock();
            writeln!(out, "LOCKED 0").unwrap();
            let (tx, rx) = std::sync::mpsc::channel();
            let built = Arc::new(AtomicUsize::new(0));
            {
                let dir = dir.clone();
                let built = built.clone();
                std::thread::spawn(move || {
                    let rt = tokio::runtime::Builder::new_multi_thread()
                        .worker_threads(1)
                        .enable_all()
                        .build()
                        .unwrap();
                    rt.block_on(async {
                        let cache = small(&dir).build().await.unwrap();
                        built.fetch_add(1, SeqCst);
                        cache.close().await.unwrap();
                    });
                    tx.send(()).unwrap();
                });
            }
            // A generous deadline turns a hang into a failure.
            if rx.recv_timeout(Duration::from_secs(30)).is_err() {
                eprintln!(
                    "DEADLOCK: the cache build did not finish in 30 s (built: {})",
                    built.load(SeqCst)
                );
                std::process::exit(3);
            }
            writeln!(out, "LOCKED 1").unwrap();
            out.flush().unwrap();
        }
        other => panic!("unknown scenario {other}"),
    }
    eprintln!("stdout child done");
}

const ENV_BIG_WRITES_DIR: &str = "SPILLWAY_ADV_STDOUT_BIG_WRITES_DIR";

/// Another thread writes 128 KiB at a time straight to fd 1 while caches
/// are built, and stdout is `/dev/null` (a daemon's), so each write is
/// instant: the pipe fd 1 points into during a build fills at once, and
/// foyer's own line, printed inside the build, must not wait on it forever.
/// (A build that drained the pipe only after the device was built hung
/// here in its first build; found by an adversarial review.) A build that
/// never ends is reported after a minute rather than hanging the run.
#[test]
fn builds_end_while_another_thread_floods_stdout_with_big_writes() {
    let dir = tempfile::tempdir().unwrap();
    let out = run_child_test(
        "big_writes_child",
        "exec \"$0\" \"$@\" >/dev/null",
        &[(ENV_BIG_WRITES_DIR, dir.path().as_os_str())],
    );
    assert_child_passed(&out, "big writes child built 20 caches");
}

/// The child's entry point; a no-op in a normal test run.
#[test]
fn big_writes_child() {
    let Ok(dir) = std::env::var(ENV_BIG_WRITES_DIR) else {
        return;
    };
    let dir = PathBuf::from(dir);
    let built = Arc::new(AtomicUsize::new(0));
    {
        let built = built.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_secs(60));
            eprintln!("a build never ended: {} built", built.load(SeqCst));
            std::process::exit(3);
        });
    }
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let chunk = format!("{:>127}\n", "RAW").repeat(1024);
            let stdout = std::io::stdout();
            while !stop.load(SeqCst) {
                let _ = rustix::io::write(std::os::fd::AsFd::as_fd(&stdout), chunk.as_bytes());
            }
        })
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        for _ in 0..20 {
            let cache = small(&dir).build().await.unwrap();
            built.fetch_add(1, SeqCst);
            cache.close().await.unwrap();
        }
    });
    stop.store(true, SeqCst);
    writer.join().unwrap();
    eprintln!("big writes child built {} caches", built.load(SeqCst));
}
