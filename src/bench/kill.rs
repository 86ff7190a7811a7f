//! The kill phase: a child process (this binary, `spillway bench-kill-child`)
//! runs the workload on a spillway cache, idles for twice `persist_after`
//! and is SIGKILLed; the parent reopens the directory and replays the
//! steady phase. Its hit ratio against the clean-close restart's says how
//! warm write-behind keeps a cache that never gets to call `close()`.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Instant;

use spillway::Config;

use super::systems::{Loading, System};
use super::workload::KeyPicker;
use super::{open, phase, BenchConfig};

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> spillway::Error + 'a {
    move |e| spillway::Error::io(op, path, e)
}

/// Runs the child, kills it after its idle period, and returns the reopened
/// cache's hit ratio on the steady phase.
pub fn measure(
    runtime: &tokio::runtime::Runtime,
    config: &Config,
    bench: &BenchConfig,
    scratch: &Path,
    fraction: f64,
) -> spillway::Result<f64> {
    // spillway creates it, private to the owner.
    let dir = scratch.join(format!("kill-{fraction}"));
    let mut config = config.clone();
    config.bench = Some(
        toml::Value::try_from(bench)
            .ok()
            .and_then(|v| v.as_table().cloned())
            .unwrap_or_default(),
    );
    let config_path = scratch.join("kill-config.toml");
    let text = toml::to_string(&config).map_err(|e| spillway::Error::Config {
        field: "<bench config>".into(),
        value: String::new(),
        reason: e.to_string(),
    })?;
    std::fs::write(&config_path, text).map_err(io("write", &config_path))?;
    let exe = std::env::current_exe().map_err(io("find the spillway binary", Path::new("-")))?;
    // The parent's loader calibration: see `loader::ROUNDS_ENV`.
    let loader_env = super::loader::for_child();
    let mut child = Command::new(&exe)
        .env(loader_env.0, &loader_env.1)
        .arg("bench-kill-child")
        .arg("--config")
        .arg(&config_path)
        .arg("--dir")
        .arg(&dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(io("start the kill-phase child", &exe))?;
    let stdout = child.stdout.take();
    let ready = stdout.is_some_and(|out| {
        BufReader::new(out)
            .lines()
            .map_while(Result::ok)
            .any(|line| line.trim() == "ready")
    });
    if !ready {
        let _ = child.kill();
        let _ = child.wait();
        return Err(spillway::Error::Disk {
            dir,
            op: "kill phase",
            message: "the child ended before its workload was done".into(),
        });
    }
    // The idle period is what the phase measures: a process that idled
    // this long, then died without `close()`.
    let idle = 2 * config.disk.persist_after.0;
    let until = Instant::now() + idle;
    while Instant::now() < until {
        std::thread::sleep(until - Instant::now());
    }
    child.kill().map_err(io("kill the child", &exe))?;
    let _ = child.wait();
    runtime.block_on(async {
        let system = Arc::new(open("spillway", &config, &dir).await?);
        if let System::Spillway(c) = system.as_ref() {
            // The warm-up is part of a restart: let it finish before replaying.
            // A signal, not a poll of `stats()`, which walks every entry and
            // would take the cores the warm-up runs on.
            c.warmed().await;
        }
        let picker = Arc::new(KeyPicker::new(bench.keys, bench.zipf_s));
        let loading = Arc::new(Loading::new(bench.keys));
        let replay = phase(&system, &picker, bench, bench.seed + 1, &loading, None).await;
        system.close().await;
        Ok(replay.hit_ratio())
    })
}

/// The child: the warm-up and steady phases, then `ready` on stdout, then
/// idle until killed.
pub fn child(config: &Config, dir: PathBuf) -> spillway::Result<()> {
    let bench = super::bench_config(config)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(io("start runtime", Path::new("-")))?;
    runtime.block_on(async {
        let system = Arc::new(open("spillway", config, &dir).await?);
        let picker = Arc::new(KeyPicker::new(bench.keys, bench.zipf_s));
        let loading = Arc::new(Loading::new(bench.keys));
        phase(&system, &picker, &bench, bench.seed, &loading, None).await;
        phase(&system, &picker, &bench, bench.seed + 1, &loading, None).await;
        println!("ready");
        std::future::pending::<()>().await;
        Ok(())
    })
}
