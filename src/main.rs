//! The `spillway` command line.

mod bench;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use spillway::Config;

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
    /// Measure spillway against moka alone and foyer's HybridCache; write a report and charts.
    ///
    /// The configuration's [bench] sets the workload; [memory] and [disk]
    /// apply as written, except that each run's memory budget is a fraction
    /// of the working set, capped at memory.capacity.
    Bench {
        #[command(flatten)]
        config: ConfigArg,
        /// A quarter of the work, two memory budgets.
        #[arg(long)]
        quick: bool,
        /// Where report.json, report.md and the SVG charts go.
        #[arg(long, default_value = "bench-out")]
        out: PathBuf,
        /// Also write metrics.prom: each spillway run's statistics as
        /// Prometheus metrics (needs the `metrics` feature).
        #[arg(long)]
        metrics: bool,
    },
    /// The head-to-head workloads at 1, 2, 4, 8 and 16 tasks, spillway against
    /// foyer's HybridCache; writes scaling.md and scaling.json. For a machine
    /// with the cores to show it.
    ///
    /// The configuration's [memory] and [disk] apply, as in `bench`.
    BenchScaling {
        #[command(flatten)]
        config: ConfigArg,
        /// 4 KiB entries at 1 and 2 tasks only, a quarter of the operations.
        #[arg(long)]
        quick: bool,
        /// Where scaling.md and scaling.json go.
        #[arg(long, default_value = "bench-out")]
        out: PathBuf,
        /// Only these task counts (comma-separated; of 1, 2, 4, 8, 16).
        #[arg(long, value_delimiter = ',')]
        tasks: Vec<usize>,
        /// Only these entry sizes in KiB (4, 64).
        #[arg(long, value_delimiter = ',')]
        value_kib: Vec<usize>,
        /// Only these loader costs in µs (0, 50).
        #[arg(long, value_delimiter = ',')]
        loader_us: Vec<u64>,
        /// Repetitions of each cell, both systems alternating.
        #[arg(long, default_value_t = bench::HEAD_TO_HEAD_REPETITIONS as u16, value_parser = clap::value_parser!(u16).range(1..))]
        repetitions: u16,
    },
    /// Print the embedded default configuration, [bench] section included.
    DefaultConfig,
    /// The bench's kill-phase child: runs the workload, prints `ready`, idles until killed.
    #[command(hide = true)]
    BenchKillChild {
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        dir: PathBuf,
    },
    /// The bench's index-phase child: runs that phase in a fresh process, writes its runs to `out`.
    #[command(hide = true)]
    BenchIndexChild {
        #[arg(long)]
        scratch: PathBuf,
        #[arg(long)]
        out: PathBuf,
        #[arg(long)]
        quick: bool,
    },
    /// The bench's head-to-head child: runs that section in a fresh process, writes its cells to `out`.
    #[command(hide = true)]
    BenchVersusChild {
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        scratch: PathBuf,
        #[arg(long)]
        out: PathBuf,
        #[arg(long)]
        quick: bool,
        #[arg(long)]
        seed: u64,
        #[arg(long)]
        ops_scale: f64,
    },
    /// The bench's fleet-phase child: a cache driven by lines on stdin.
    #[command(hide = true)]
    BenchFleetChild {
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        worker: usize,
    },
    /// Show a cache directory's format, budgets and what a reopen recovers.
    Inspect {
        /// The cache directory.
        dir: PathBuf,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

/// `--config`, shared by the bench commands.
#[derive(clap::Args)]
struct ConfigArg {
    /// TOML configuration (default: the embedded config/default.toml, see
    /// `spillway default-config`).
    #[arg(long)]
    config: Option<PathBuf>,
}

impl ConfigArg {
    /// The configuration named, or the embedded default.
    fn load(self) -> spillway::Result<Config> {
        self.config.map_or_else(
            || Config::from_toml_str(spillway::DEFAULT_CONFIG_TOML),
            Config::from_file,
        )
    }
}

fn main() -> ExitCode {
    // Warnings (a paused disk tier, a damaged directory) go to stderr;
    // RUST_LOG=spillway=debug shows more. stdout stays for reports.
    // foyer warns on every open that a file device is not a raw block
    // device: advice, not a problem here, so its device module logs errors only.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("warn,foyer_storage::io::device=error")
    });
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::DefaultConfig => {
            print!("{}", spillway::DEFAULT_CONFIG_TOML);
            Ok(())
        }
        Command::Bench {
            config,
            quick,
            out,
            metrics,
        } => {
            if quick {
                eprintln!("warning: --quick runs a quarter of the work on two budgets; its figures are not representative");
            }
            config.load().and_then(|config| {
                bench::run(bench::Options {
                    config,
                    quick,
                    out,
                    metrics,
                })
            })
        }
        Command::BenchScaling {
            config,
            quick,
            out,
            tasks,
            value_kib,
            loader_us,
            repetitions,
        } => {
            let only = bench::ScalingSelection {
                tasks,
                value_kib,
                loader_us,
                repetitions: repetitions.into(),
            };
            if quick {
                eprintln!(
                    "warning: --quick runs two small cells; its figures are not representative"
                );
            }
            config
                .load()
                .and_then(|config| bench::scaling(&config, quick, &only, &out))
                .map(|scaling| print!("{}", bench::scaling_markdown(&scaling)))
        }
        Command::Inspect { dir, json } => inspect(&dir, json),
        Command::BenchKillChild { config, dir } => {
            Config::from_file(&config).and_then(|config| bench::kill_child(&config, dir))
        }
        Command::BenchIndexChild {
            scratch,
            out,
            quick,
        } => bench::index_child(&scratch, quick, &out),
        Command::BenchVersusChild {
            config,
            scratch,
            out,
            quick,
            seed,
            ops_scale,
        } => Config::from_file(&config).and_then(|config| {
            bench::versus_child(&config, &scratch, quick, seed, ops_scale, &out)
        }),
        Command::BenchFleetChild {
            config,
            dir,
            worker,
        } => Config::from_file(&config).and_then(|config| bench::fleet_child(&config, dir, worker)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
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
