//! The fleet phase: `processes` real processes (this binary, `spillway
//! bench-fleet-child`), each a spillway cache with a small memory and disk
//! budget, run the same Zipf workload of look-aside reads (loader on a
//! miss) twice: sharing one remote tier on a `redis-server` the bench
//! starts, and as independent caches. Reported: loader runs and hits per
//! tier for both, remote-hit against disk-hit latency, and how long an
//! invalidation in one process takes to reach another's memory.
//!
//! Runs only with the `redis` feature and a `redis-server` on the PATH;
//! otherwise the report says why it was skipped.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use spillway::{ByteSize, CacheTier, Config};

use super::report::Latency;
use super::systems::{entry, key, load, System};
use super::workload::{value_size, KeyPicker, Rng};
use super::BenchConfig;

/// Processes in the fleet.
const PROCESSES: usize = 4;
/// Each process's memory and disk budgets, as fractions of the working set.
const MEMORY_FRACTION: f64 = 0.05;
const DISK_FRACTION: f64 = 0.2;
/// Invalidations timed from one process to another.
const DELAY_ROUNDS: usize = 20;

/// What one process measured.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct WorkerResult {
    pub reads: u64,
    pub memory_hits: u64,
    pub disk_hits: u64,
    pub remote_hits: u64,
    pub loader_runs: u64,
    pub seconds: f64,
    pub disk_hit_us: Vec<f64>,
    pub remote_hit_us: Vec<f64>,
}

/// One way of running the fleet (shared remote tier, or independent).
#[derive(Clone, Debug, Default, Serialize)]
pub struct FleetRun {
    pub mode: String,
    pub processes: usize,
    pub reads: u64,
    pub memory_hits: u64,
    pub disk_hits: u64,
    pub remote_hits: u64,
    pub loader_runs: u64,
    pub hit_ratio: f64,
    pub disk_hit: Latency,
    pub remote_hit: Latency,
    /// The slowest process's wall time.
    pub seconds: f64,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct FleetReport {
    /// Why the phase did not run, if it did not.
    pub skipped: Option<String>,
    pub runs: Vec<FleetRun>,
    /// Invalidation propagation, microseconds: min, median, max.
    pub propagation_us: Option<[f64; 3]>,
}

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> spillway::Error + 'a {
    move |e| spillway::Error::io(op, path, e)
}

fn find_redis_server() -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join("redis-server"))
            .find(|p| p.is_file())
    })
}

/// A `redis-server` on a unix socket in `dir`, stopped when dropped.
struct Server(Child, PathBuf);

impl Server {
    fn start(binary: &Path, dir: &Path) -> spillway::Result<Self> {
        let socket = dir.join("redis.sock");
        let child = Command::new(binary)
            .args(["--port", "0", "--unixsocket"])
            .arg(&socket)
            .args([
                "--unixsocketperm",
                "700",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .args(["--maxmemory", "1gb", "--maxmemory-policy", "allkeys-lru"])
            .arg("--dir")
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(io("start", binary))?;
        let server = Self(child, socket);
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::os::unix::net::UnixStream::connect(&server.1).is_err() {
            if Instant::now() > deadline {
                return Err(spillway::Error::io(
                    "wait for",
                    &server.1,
                    std::io::Error::other("redis-server did not start"),
                ));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(server)
    }

    fn url(&self) -> String {
        format!("redis+unix://{}", self.1.display())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A child process, driven line by line.
struct Worker {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Worker {
    fn start(exe: &Path, config: &Path, dir: &Path, index: usize) -> spillway::Result<Self> {
        // The parent's loader calibration: see `loader::ROUNDS_ENV`.
        let loader_env = super::loader::for_child();
        let mut child = Command::new(exe)
            .env(loader_env.0, &loader_env.1)
            .arg("bench-fleet-child")
            .arg("--config")
            .arg(config)
            .arg("--dir")
            .arg(dir)
            .arg("--worker")
            .arg(index.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(io("start the fleet child", exe))?;
        let missing = || spillway::Error::io("talk to", exe, std::io::Error::other("no pipe"));
        let stdin = child.stdin.take().ok_or_else(missing)?;
        let stdout = BufReader::new(child.stdout.take().ok_or_else(missing)?);
        let mut worker = Self {
            child,
            stdin,
            stdout,
        };
        worker.reply()?;
        Ok(worker)
    }

    fn send(&mut self, line: &str) -> spillway::Result<()> {
        writeln!(self.stdin, "{line}")
            .and_then(|()| self.stdin.flush())
            .map_err(io("write to the fleet child", Path::new("-")))
    }

    fn reply(&mut self) -> spillway::Result<String> {
        let mut line = String::new();
        let n = self
            .stdout
            .read_line(&mut line)
            .map_err(io("read from the fleet child", Path::new("-")))?;
        if n == 0 {
            return Err(spillway::Error::io(
                "read from the fleet child",
                Path::new("-"),
                std::io::Error::other("it exited"),
            ));
        }
        Ok(line.trim_end().to_string())
    }

    fn ask(&mut self, line: &str) -> spillway::Result<String> {
        self.send(line)?;
        self.reply()
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = writeln!(self.stdin, "exit");
        let _ = self.child.wait();
    }
}

/// Runs the phase (or says why not).
pub fn measure(
    base: &Config,
    bench: &BenchConfig,
    working_set: u64,
    scratch: &Path,
    quick: bool,
) -> spillway::Result<FleetReport> {
    if !cfg!(feature = "redis") {
        return Ok(skipped(
            "this build has no remote tier (the `redis` feature is off)",
        ));
    }
    let Some(binary) = find_redis_server() else {
        return Ok(skipped("no redis-server on the PATH"));
    };
    let root = scratch.join("fleet");
    std::fs::create_dir_all(&root).map_err(io("create", &root))?;
    let server = Server::start(&binary, &root)?;
    let mut bench = bench.clone();
    bench.ops = if quick { bench.ops / 4 } else { bench.ops / 2 };
    let mut config = base.clone();
    config.memory.capacity = ByteSize(((working_set as f64 * MEMORY_FRACTION) as u64).max(1 << 20));
    config.memory.spill_queue = None;
    config.disk.capacity =
        ByteSize(((working_set as f64 * DISK_FRACTION) as u64).max(8 * config.disk.block_size.0));
    config.bench = Some(
        toml::Value::try_from(&bench)
            .ok()
            .and_then(|v| v.as_table().cloned())
            .unwrap_or_default(),
    );
    let mut report = FleetReport::default();
    for shared in [true, false] {
        let mut config = config.clone();
        if shared {
            let mut remote = spillway::RemoteConfig::new(server.url());
            remote.namespace = "bench-fleet".into();
            config.remote = Some(remote);
        }
        let mode = if shared {
            "shared remote tier"
        } else {
            "independent"
        };
        let dir = root.join(if shared { "shared" } else { "independent" });
        let (run, workers) = run_fleet(mode, &config, &dir)?;
        if shared {
            report.propagation_us = Some(propagation(workers)?);
        }
        report.runs.push(run);
    }
    Ok(report)
}

fn skipped(why: &str) -> FleetReport {
    FleetReport {
        skipped: Some(why.to_string()),
        ..FleetReport::default()
    }
}

fn run_fleet(mode: &str, config: &Config, dir: &Path) -> spillway::Result<(FleetRun, Vec<Worker>)> {
    std::fs::create_dir_all(dir).map_err(io("create", dir))?;
    let config_path = dir.join("config.toml");
    let text = toml::to_string(config).map_err(|e| spillway::Error::Config {
        field: "<fleet config>".into(),
        value: String::new(),
        reason: e.to_string(),
    })?;
    std::fs::write(&config_path, text).map_err(io("write", &config_path))?;
    let exe = std::env::current_exe().map_err(io("find the spillway binary", Path::new("-")))?;
    let mut workers = (0..PROCESSES)
        .map(|i| Worker::start(&exe, &config_path, &dir.join(format!("p{i}")), i))
        .collect::<spillway::Result<Vec<_>>>()?;
    // All at once: they share the machine, as a fleet shares its server.
    for w in &mut workers {
        w.send("run")?;
    }
    let mut run = FleetRun {
        mode: mode.to_string(),
        processes: PROCESSES,
        ..FleetRun::default()
    };
    let (mut disk_us, mut remote_us) = (Vec::new(), Vec::new());
    for w in &mut workers {
        let line = w.reply()?;
        let r: WorkerResult = serde_json::from_str(&line).map_err(|e| spillway::Error::Config {
            field: "<fleet child output>".into(),
            value: line.clone(),
            reason: e.to_string(),
        })?;
        run.reads += r.reads;
        run.memory_hits += r.memory_hits;
        run.disk_hits += r.disk_hits;
        run.remote_hits += r.remote_hits;
        run.loader_runs += r.loader_runs;
        run.seconds = run.seconds.max(r.seconds);
        disk_us.extend(r.disk_hit_us);
        remote_us.extend(r.remote_hit_us);
    }
    run.hit_ratio = (run.reads - run.loader_runs) as f64 / run.reads.max(1) as f64;
    run.disk_hit = Latency::of(&disk_us);
    run.remote_hit = Latency::of(&remote_us);
    Ok((run, workers))
}

/// Process 1 inserts a key into its own memory; process 0 invalidates the
/// key's prefix, and process 1 reports when its own read first misses.
/// Both clocks are this machine's.
fn propagation(mut workers: Vec<Worker>) -> spillway::Result<[f64; 3]> {
    let mut delays = Vec::new();
    let (first, rest) = workers.split_at_mut(1);
    let (writer, reader) = (&mut first[0], &mut rest[0]);
    for round in 0..DELAY_ROUNDS {
        let prefix = format!("delay/{round}");
        if reader.ask(&format!("watch {prefix}"))? != "watching" {
            continue;
        }
        let invalidated: f64 = writer.ask(&format!("inv {prefix}"))?.parse().unwrap_or(0.0);
        let missed: f64 = reader.ask("watched")?.parse().unwrap_or(0.0);
        if invalidated > 0.0 && missed > 0.0 {
            delays.push((missed - invalidated).max(0.0));
        }
    }
    delays.sort_by(f64::total_cmp);
    Ok(match delays.len() {
        0 => [0.0; 3],
        n => [delays[0], delays[n / 2], delays[n - 1]],
    })
}

fn unix_micros() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_micros() as f64)
}

/// The child: a cache on `dir` with `config`, driven by lines on stdin.
pub fn child(config: &Config, dir: PathBuf, worker: usize) -> spillway::Result<()> {
    let bench = super::bench_config(config)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(io("start runtime", Path::new("-")))?;
    let system = runtime.block_on(System::spillway(config, &dir))?;
    let System::Spillway(cache) = system else {
        return Ok(());
    };
    println!("ready");
    let mut watch: Option<tokio::task::JoinHandle<f64>> = None;
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        let words: Vec<&str> = line.split(' ').collect();
        let reply = match words.as_slice() {
            ["run"] => {
                let result = runtime.block_on(workload(&cache, &bench, worker));
                serde_json::to_string(&result).unwrap_or_default()
            }
            ["watch", prefix] => {
                // Its own copy, in its own memory: the other process's
                // invalidation reaches it only through the notice.
                let k = spillway::InternalCacheKey::new(*prefix, "k", super::systems::VALUE_TYPE);
                let present = runtime.block_on(async {
                    cache.insert(&k, entry(vec![1; 64]), 64).await;
                    matches!(
                        cache.get_with_tier(&k).await,
                        Some((_, CacheTier::Resident))
                    )
                });
                if present {
                    let cache = cache.clone();
                    watch = Some(runtime.spawn(async move {
                        // Polls its own memory until the notice has taken it out.
                        while cache.get_with_tier(&k).await.is_some() {
                            tokio::task::yield_now().await;
                        }
                        unix_micros()
                    }));
                    "watching".into()
                } else {
                    "absent".into()
                }
            }
            ["inv", prefix] => {
                runtime.block_on(cache.invalidate_prefix(prefix));
                format!("{}", unix_micros())
            }
            ["watched"] => match watch.take() {
                Some(task) => {
                    let bounded = runtime.block_on(async {
                        tokio::time::timeout(Duration::from_secs(10), task).await
                    });
                    match bounded {
                        Ok(Ok(at)) => format!("{at}"),
                        _ => "0".into(),
                    }
                }
                None => "0".into(),
            },
            ["exit"] => break,
            _ => "?".into(),
        };
        println!("{reply}");
    }
    let _ = runtime.block_on(cache.close());
    Ok(())
}

/// Look-aside reads: a miss runs the loader and inserts its result.
async fn workload(
    cache: &spillway::TwoTierCacheBackend,
    bench: &BenchConfig,
    worker: usize,
) -> WorkerResult {
    let picker = KeyPicker::new(bench.keys, bench.zipf_s);
    let mut rng = Rng::new(bench.seed.wrapping_mul(7919) + worker as u64);
    let cost = Duration::from_micros(bench.loader_cost_us);
    let mut r = WorkerResult::default();
    let started = Instant::now();
    for i in 0..bench.ops {
        let id = picker.pick(&mut rng);
        let len = value_size(id, bench.value_size.as_usize(), bench.value_sizes);
        let t0 = Instant::now();
        let tier = cache.get_with_tier(&key(id)).await.map(|(_, tier)| tier);
        let us = t0.elapsed().as_secs_f64() * 1e6;
        r.reads += 1;
        match tier {
            Some(CacheTier::Resident) => r.memory_hits += 1,
            Some(CacheTier::Local) => {
                r.disk_hits += 1;
                if i % 2 == 0 {
                    r.disk_hit_us.push(us);
                }
            }
            Some(CacheTier::Remote) => {
                r.remote_hits += 1;
                if i % 2 == 0 {
                    r.remote_hit_us.push(us);
                }
            }
            Some(CacheTier::Absent) | None => {
                // Look-aside through `get_or_insert`: a loader's result is
                // a fill, which other processes keep their copies beside.
                let loader = Box::pin(async move { Ok((entry(load(id, len, cost)), len)) });
                if let Ok((_, false)) = cache.get_or_insert(&key(id), loader).await {
                    r.loader_runs += 1;
                } else {
                    r.remote_hits += 1;
                }
            }
        }
    }
    r.seconds = started.elapsed().as_secs_f64();
    r
}

/// The report's section.
pub fn markdown(fleet: &FleetReport) -> String {
    let mut s = String::from("## Fleet: a shared remote tier\n\n");
    if let Some(why) = &fleet.skipped {
        s.push_str(&format!("Not run: {why}.\n"));
        return s;
    }
    s.push_str(&format!(
        "{PROCESSES} processes, each with {:.0}% of the working set in memory and {:.0}% on disk, run the same Zipf look-aside workload (a miss goes through `get_or_insert`, whose loader runs when no tier has the key), sharing one `redis-server` (unix socket, `allkeys-lru`) and as independent caches. Loader runs are what the fleet paid its backing store.\n\n| mode | reads | memory hits | disk hits | remote hits | loader runs | hit ratio | disk hit p50 / p99 µs | remote hit p50 / p99 µs | seconds (slowest process) |\n|---|---|---|---|---|---|---|---|---|---|\n",
        MEMORY_FRACTION * 100.0,
        DISK_FRACTION * 100.0
    ));
    let lat = |l: &Latency| match (l.p50(), l.p99()) {
        (Some(a), Some(b)) => format!("{a:.0} / {b:.0}"),
        _ => super::report::MISSING.to_string(),
    };
    for r in &fleet.runs {
        s.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {:.3} | {} | {} | {:.1} |\n",
            r.mode,
            r.reads,
            r.memory_hits,
            r.disk_hits,
            r.remote_hits,
            r.loader_runs,
            r.hit_ratio,
            lat(&r.disk_hit),
            lat(&r.remote_hit),
            r.seconds
        ));
    }
    if let Some([min, median, max]) = fleet.propagation_us {
        s.push_str(&format!(
            "\nInvalidation propagation ({DELAY_ROUNDS} rounds): from `invalidate_prefix` returning in one process to the other process's own memory no longer serving the key: min {:.0} µs, median {:.0} µs, max {:.0} µs (bound: `remote.sync_interval`).\n",
            min, median, max
        ));
    }
    s
}
