//! The `spillway` command line.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use clap::{Parser, Subcommand};
use spillway::{
    CacheBackend, CacheEntry, CodecRegistry, Config, InternalCacheKey, TwoTierCacheBackend,
};

#[derive(Parser)]
#[command(
    name = "spillway",
    version,
    about = "A moka memory tier spilling to a foyer disk tier"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Fill a cache past its memory budget, read everything back, print the statistics.
    Bench {
        /// TOML configuration (default: the embedded config/default.toml).
        #[arg(long)]
        config: Option<PathBuf>,
        /// A smaller working set.
        #[arg(long)]
        quick: bool,
    },
    /// Print the embedded default configuration.
    DefaultConfig,
    /// Show a cache directory's format, budgets and what a reopen recovers.
    Inspect {
        /// The cache directory.
        dir: PathBuf,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::DefaultConfig => {
            print!("{}", spillway::DEFAULT_CONFIG_TOML);
            Ok(())
        }
        Command::Bench { config, quick } => run_demo(config, quick),
        Command::Inspect { dir, json } => inspect(&dir, json),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run_demo(config: Option<PathBuf>, quick: bool) -> spillway::Result<()> {
    let mut config = match config {
        Some(path) => Config::from_file(path)?,
        None => Config::from_toml_str(spillway::DEFAULT_CONFIG_TOML)?,
    };
    let scratch = tempfile::tempdir()
        .map_err(|e| spillway::Error::io("create temporary directory", "/tmp", e))?;
    if config.disk.dir.is_none() {
        config.disk.dir = Some(scratch.path().to_path_buf());
    }
    let runtime =
        tokio::runtime::Runtime::new().map_err(|e| spillway::Error::io("start runtime", "-", e))?;
    runtime.block_on(async {
        let codecs = CodecRegistry::new().register::<Vec<u8>>("Blob", 1)?;
        let cache = TwoTierCacheBackend::from_config(&config, codecs).await?;
        let value_size = 16 << 10;
        let working_set = if quick { 2 } else { 4 } * config.memory.capacity.0;
        let n = (working_set / value_size) as usize;
        println!(
            "inserting {n} values of {} KiB ({} MiB, memory budget {} MiB)",
            value_size >> 10,
            working_set >> 20,
            config.memory.capacity.0 >> 20
        );
        let started = Instant::now();
        for i in 0..n {
            let key = InternalCacheKey::new("demo", i.to_string(), "Blob");
            let value = vec![(i % 251) as u8; value_size as usize];
            cache
                .insert(&key, Arc::new(value) as CacheEntry, value_size as usize)
                .await;
        }
        cache.flush().await;
        let mut wrong = 0;
        for i in 0..n {
            let key = InternalCacheKey::new("demo", i.to_string(), "Blob");
            if let Some(entry) = cache.get(&key).await {
                let ok = entry
                    .downcast_ref::<Vec<u8>>()
                    .is_some_and(|v| v.iter().all(|b| *b == (i % 251) as u8));
                wrong += usize::from(!ok);
            }
        }
        let stats = cache.stats();
        println!("done in {:.2?}; wrong values: {wrong}", started.elapsed());
        println!(
            "memory hits {:>8}   disk hits {:>8}   queue hits {:>6}   misses {:>8}",
            stats.memory.hits, stats.disk.hits, stats.disk.queue_hits, stats.misses
        );
        println!(
            "spilled     {:>8}   bytes     {:>8}   not written {:>5}   promotions {:>5}",
            stats.spill.written,
            stats.spill.written_bytes,
            stats.spill.not_written.total(),
            stats.memory.promotions
        );
        println!("not written by reason: {:?}", stats.spill.not_written);
        cache.close().await
    })
}

fn inspect(dir: &std::path::Path, json: bool) -> spillway::Result<()> {
    let report = spillway::DirReport::read(dir)?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).unwrap_or_default()
        );
        return Ok(());
    }
    let mib = |b: u64| format!("{:.1} MiB", b as f64 / (1 << 20) as f64);
    let rows = [
        ("directory", dir.display().to_string()),
        ("format version", report.format.format_version.to_string()),
        ("disk budget", mib(report.format.disk_capacity)),
        ("block size", mib(report.format.block_size)),
        (
            "recoverable entries",
            report.recoverable_entries.to_string(),
        ),
        ("recoverable bytes", mib(report.recoverable_bytes)),
        (
            "resident at last close",
            report.resident_at_close.to_string(),
        ),
        ("journal facts", report.journal_facts.to_string()),
        ("torn journal tails", report.torn_journal_tails.to_string()),
        (
            "recovery (journal replay)",
            format!("{:.2} ms", report.replay_millis),
        ),
    ];
    for (name, value) in rows {
        println!("{name:<26} {value}");
    }
    Ok(())
}
