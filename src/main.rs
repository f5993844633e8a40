//! The `tern` command: parses arguments and calls the engine, restorer and
//! wire crates.

#![deny(unsafe_code)]

mod bench;
mod bench_evacuate;
mod bench_storage;
mod bench_svg;
mod demo;
mod dump_cmd;
mod edges;
mod evacuate;
mod fdspec;
mod inspect;
mod migrate;
mod restore_cmd;
mod track;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "tern",
    version,
    about = "Checkpoint, restore and live-migrate running Linux processes"
)]
struct Cli {
    /// Log level filter (error, warn, info, debug, trace); RUST_LOG also works.
    #[arg(long, global = true, default_value = "warn")]
    log: String,
    #[command(subcommand)]
    cmd: Cmd,
}

/// How pre-copy rounds run and stop (`dump --pre-copy`, `migrate`).
#[derive(clap::Args, Clone)]
pub(crate) struct RoundArgs {
    /// Dirty-page tracker: auto, uffd-wp, soft-dirty, hash.
    #[arg(long, default_value = "auto")]
    tracker: tern_engine::track::TrackerKind,
    /// Stop policy: paper (two equal round hashes), adaptive (predicted
    /// downtime fits --target-downtime-ms, or rounds stop shrinking),
    /// rounds:N; for `migrate` also hybrid (adaptive, but when pre-copy
    /// cannot converge the program resumes at the destination at once and
    /// its last-written pages follow by post-copy) or postcopy (post-copy
    /// after round 0).
    #[arg(long, default_value = "adaptive")]
    policy: tern_engine::policy::PolicySpec,
    #[arg(long, default_value_t = 30)]
    max_rounds: u32,
    #[arg(long, default_value_t = 10.0)]
    target_downtime_ms: f64,
    /// Longest pre-copy phase before the final stop, in ms.
    #[arg(long, default_value_t = 30_000.0)]
    time_limit_ms: f64,
}

impl RoundArgs {
    pub(crate) fn precopy_options(
        &self,
        dump: tern_engine::DumpOptions,
    ) -> tern_engine::precopy::PrecopyOptions {
        tern_engine::precopy::PrecopyOptions {
            tracker: self.tracker,
            policy: self.policy,
            limits: tern_engine::policy::Limits {
                max_rounds: self.max_rounds,
                time_limit_ms: self.time_limit_ms,
                target_downtime_ms: self.target_downtime_ms,
                link_bytes_per_ms: None,
            },
            dump,
        }
    }
}

#[derive(Subcommand)]
enum Cmd {
    /// Stop a process and write its image; the process is killed afterwards
    /// unless --leave-running.
    Dump(dump_cmd::DumpArgs),
    /// Save the memory of a running process (only pages changed since
    /// --parent, if given) and leave it running; the final `dump --parent`
    /// then stops it only for the last delta.
    PreDump {
        #[arg(long, short = 't')]
        pid: i32,
        #[arg(long, short = 'D')]
        images: PathBuf,
        #[arg(long)]
        parent: Option<PathBuf>,
        /// Page compression, as for dump.
        #[arg(long, default_value = "auto", allow_negative_numbers = true)]
        compress: String,
    },
    /// Recreate a process from an image; returns once it runs.
    Restore(restore_cmd::RestoreArgs),
    /// Show what an image holds.
    Inspect {
        #[arg(long, short = 'D')]
        images: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Probe which kernel features this machine offers.
    Check {
        #[arg(long)]
        json: bool,
    },
    /// Start a sample program, dump it, and restore it on this machine.
    Demo {
        /// Where to keep the demo's files (default: a new temporary directory).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Report, round by round, which pages a running program writes (the
    /// program keeps running; nothing of tern is left in it afterwards).
    /// Each round: dirty_pages, dirty_bytes, hash (xxh3 of the dirty pages'
    /// contents in address order), elapsed_ms (since tracking started),
    /// collect_ms, stopped_ms (how long tern stopped the program that round)
    /// and the dirty pages per VMA.
    Track {
        #[arg(long, short = 't')]
        pid: i32,
        /// auto, soft-dirty, uffd-wp or hash (auto: the most exact one that
        /// works here: uffd-wp, then soft-dirty, then hash).
        #[arg(long, default_value = "auto")]
        tracker: tern_engine::track::TrackerKind,
        #[arg(long, default_value_t = 10)]
        rounds: u32,
        /// Time between rounds, in ms.
        #[arg(long, default_value_t = 1000)]
        interval_ms: u64,
        /// One JSON object per round and line on stdout.
        #[arg(long)]
        json: bool,
        /// Also write one CSV row per round to FILE.
        #[arg(long)]
        csv: Option<PathBuf>,
    },
    /// Make a credential (a pre-shared key) for `serve` and `migrate`; copy
    /// it to both machines, readable by root only.
    Keygen {
        #[arg(long)]
        out: PathBuf,
    },
    /// The destination daemon: receive migrating programs and run them here.
    Serve(migrate::ServeArgs),
    /// Live-migrate a running process to a `tern serve`.
    Migrate {
        #[arg(long, short = 't')]
        pid: i32,
        /// The destination's `tern serve` address, HOST:PORT.
        #[arg(long)]
        to: String,
        #[arg(long)]
        key: PathBuf,
        /// live (pre-copy rounds, then the last delta) or simple (stop,
        /// copy everything, restore). A process with children moves with
        /// its whole tree, in simple mode only for now.
        #[arg(long, default_value = "live")]
        mode: MigrateMode,
        #[command(flatten)]
        rounds: RoundArgs,
        /// Page compression: a zstd level, 0 for none, or auto: none while
        /// the link keeps up (zstd runs ~300 MB/s per core), zstd 1 once a
        /// round went slower than that.
        #[arg(long, default_value = "auto", allow_negative_numbers = true)]
        compress: String,
        /// Where rounds are staged before sending: default /dev/shm.
        #[arg(long)]
        work_dir: Option<PathBuf>,
        /// How long to wait for each answer of the destination, in ms.
        #[arg(long, default_value_t = 30_000)]
        timeout_ms: u64,
        /// Write the migration report (JSON) here.
        #[arg(long)]
        report: Option<PathBuf>,
        /// Move established TCP connections too (TCP repair mode; needs
        /// nft on both machines): their packets are dropped on both sides
        /// while they move. Without it such a program is refused.
        #[arg(long)]
        tcp_established: bool,
        /// Shell command run here once the destination holds the program,
        /// ready, and before it resumes it (e.g. move the service address
        /// and the user's route to the destination). It sees TERN_PID and
        /// TERN_DESTINATION. If it fails, the program resumes here.
        #[arg(long)]
        handoff_cmd: Option<String>,
        /// An fd shared with a process outside the dump (e.g. a pipe from a
        /// supervisor): not saved, but named NAME (default: what it is,
        /// e.g. pipe:[1234]) for the restore to replace with
        /// --inherit-fd fd[M]:NAME. Repeatable.
        #[arg(long, value_name = "fd[N][:NAME]")]
        external: Vec<fdspec::ExternalFd>,
        /// If the link fails after the destination was told to resume the
        /// program: how long to keep asking it what happened, in ms, before
        /// leaving the program stopped here for `tern resolve`.
        #[arg(long, default_value_t = 60_000)]
        settle_timeout_ms: u64,
        /// Simple mode: send every page inside the image, written whole
        /// before it is sent and received whole before the destination
        /// rebuilds (slower; for comparison). By default the private
        /// memory of each process streams right after the rest of its
        /// image, read and placed as it goes, while the destination
        /// rebuilds the rest (with --compress N, compressed run by run).
        #[arg(long)]
        no_page_stream: bool,
    },
    /// Move many programs to one destination at once (e.g. to empty this
    /// server): each migrates on its own session, their rounds side by
    /// side, their frozen phases one after another.
    Evacuate(evacuate::EvacuateArgs),
    /// Settle migrations left pending here (link or tern lost after the
    /// commit; the program was left stopped): ask each destination, then
    /// end the copy here or resume it.
    Resolve {
        /// The credential file shared with the destinations.
        #[arg(long)]
        key: PathBuf,
        /// Only these processes (default: every record in /run/tern/pending).
        pids: Vec<i32>,
        /// How long to wait for each destination, in ms.
        #[arg(long, default_value_t = 10_000)]
        timeout_ms: u64,
    },
    /// Reproduce the seed paper's downtime table (stop-and-copy vs live
    /// migration by process size) on this machine, between two network
    /// namespaces (root): prints the table, writes JSON and SVG charts.
    Bench(bench::BenchArgs),
    /// The demo's sample program (internal).
    #[command(hide = true)]
    DemoWorkload {
        out: PathBuf,
        #[arg(long, default_value_t = 64)]
        mib: u64,
        #[arg(long, default_value_t = 0.0)]
        dirty_mbps: f64,
        /// Rewrite in address order and check the pages written last.
        #[arg(long)]
        sequential: bool,
    },
}

#[derive(clap::ValueEnum, Clone, Copy)]
pub(crate) enum MigrateMode {
    Live,
    Simple,
}

impl MigrateMode {
    pub(crate) fn mode(self) -> tern_engine::migrate::Mode {
        match self {
            MigrateMode::Live => tern_engine::migrate::Mode::Live,
            MigrateMode::Simple => tern_engine::migrate::Mode::Simple,
        }
    }
}

/// How a migration's source dumps (`migrate`, `evacuate`).
pub(crate) fn migration_dump_options(
    tcp_established: bool,
    external: std::collections::BTreeMap<i32, String>,
) -> tern_engine::DumpOptions {
    tern_engine::DumpOptions {
        leave_running: false,
        zstd_level: None,
        parent: None,
        delta_table: true,
        tcp_established,
        // The source lifts it once the destination runs the program.
        keep_net_lock: false,
        freezer: tern_engine::dump::Freezer::Ptrace,
        external,
        // Set by a stop-and-copy that streams its pages.
        defer_private_anon: false,
    }
}

fn main() {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&cli.log));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    if let Err(e) = run(cli.cmd) {
        eprintln!("tern: error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cmd: Cmd) -> Result<()> {
    match cmd {
        Cmd::Dump(a) => dump_cmd::run(a),
        Cmd::PreDump {
            pid,
            images,
            parent,
            compress,
        } => {
            let level = zstd_level(&compress, &images)?;
            let stats = tern_engine::pre_dump(pid, &images, parent.as_deref(), level)
                .with_context(|| {
                    format!("pre-dump of process {pid} failed; it was left running")
                })?;
            eprintln!(
                "pre-dumped process {pid} to {}: {} of {} pages saved ({} MiB stored), round hash {:016x}; stopped for {:.2} ms, memory read in {:.1} ms while running",
                images.display(),
                stats.pages_stored,
                stats.pages_seen,
                stats.stored_bytes >> 20,
                stats.round_hash,
                stats.frozen_ms,
                stats.memory_ms
            );
            Ok(())
        }
        Cmd::Restore(a) => restore_cmd::run(a),
        Cmd::Inspect { images, json } => inspect::run(&images, json),
        Cmd::Keygen { out } => migrate::keygen(&out),
        Cmd::Serve(a) => migrate::serve(a),
        Cmd::Migrate {
            pid,
            to,
            key,
            mode,
            rounds,
            compress,
            work_dir,
            timeout_ms,
            report,
            tcp_established,
            handoff_cmd,
            external,
            settle_timeout_ms,
            no_page_stream,
        } => {
            let compress = match compress.as_str() {
                "auto" => tern_engine::migrate::Compression::Auto,
                "0" => tern_engine::migrate::Compression::Off,
                n => tern_engine::migrate::Compression::Zstd(
                    n.parse::<i32>()
                        .with_context(|| format!("--compress {n}: not a zstd level"))?,
                ),
            };
            let opts =
                migration_dump_options(tcp_established, fdspec::external_fds(pid, &external)?);
            migrate::migrate(migrate::MigrateArgs {
                pid,
                to,
                key,
                mode: mode.mode(),
                precopy: rounds.precopy_options(opts),
                compress,
                work_dir,
                timeout: Duration::from_millis(timeout_ms),
                report,
                handoff_cmd,
                settle_timeout: Duration::from_millis(settle_timeout_ms),
                stream_pages: !no_page_stream,
            })
        }
        Cmd::Evacuate(a) => evacuate::evacuate(a),
        Cmd::Resolve {
            key,
            pids,
            timeout_ms,
        } => migrate::resolve(&key, &pids, Duration::from_millis(timeout_ms)),
        Cmd::Check { json } => check(json),
        Cmd::Demo { dir } => demo::run(dir),
        Cmd::Bench(a) => bench::run(a),
        Cmd::DemoWorkload {
            out,
            mib,
            dirty_mbps,
            sequential,
        } => demo::workload(&out, mib, dirty_mbps, sequential),
        Cmd::Track {
            pid,
            tracker,
            rounds,
            interval_ms,
            json,
            csv,
        } => track::run(&track::Options {
            pid,
            tracker,
            rounds,
            interval: Duration::from_millis(interval_ms),
            json,
            csv: csv.as_deref(),
        }),
    }
}

/// The zstd level for `--compress` (None: store raw).
pub(crate) fn zstd_level(compress: &str, images: &std::path::Path) -> Result<Option<i32>> {
    let level = match compress {
        "auto" => {
            if tern_engine::dump::is_memory_fs(images) {
                0
            } else {
                1
            }
        }
        n => n
            .parse::<i32>()
            .with_context(|| format!("--compress {n}: expected auto or a zstd level"))?,
    };
    Ok((level != 0).then_some(level))
}

fn check(json: bool) -> Result<()> {
    let probes = tern_sys::probe::run_all();
    if json {
        let rows: Vec<_> = probes
            .iter()
            .map(|p| {
                serde_json::json!({
                    "name": p.name,
                    "available": p.available,
                    "detail": p.detail,
                    "needed_for": p.needed_for,
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    let width = probes.iter().map(|p| p.name.len()).max().unwrap_or(10);
    for p in &probes {
        println!(
            "{:width$}  {:3}  {} (needed for {})",
            p.name,
            if p.available { "yes" } else { "no" },
            p.detail,
            p.needed_for
        );
    }
    Ok(())
}

/// Stay in the foreground while the restored shell job (our child) runs;
/// its exit status as a shell reports it. The terminal's ^C and ^\ reach
/// the whole foreground group: tern ignores them, the program decides.
pub(crate) fn wait_shell_job(pid: i32) -> Result<i32> {
    tern_sys::ignore_signal(libc::SIGINT);
    tern_sys::ignore_signal(libc::SIGQUIT);
    use nix::sys::wait::{waitpid, WaitStatus};
    loop {
        match waitpid(nix::unistd::Pid::from_raw(pid), None) {
            Ok(WaitStatus::Exited(_, code)) => return Ok(code),
            Ok(WaitStatus::Signaled(_, sig, _)) => return Ok(128 + sig as i32),
            Ok(_) | Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => {
                return Err(anyhow::anyhow!(
                    "waiting for the restored process {pid}: {e}"
                ))
            }
        }
    }
}
