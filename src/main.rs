//! The `tern` command: parses arguments and calls the engine, restorer and
//! wire crates.

#![deny(unsafe_code)]

mod bench;
mod bench_evacuate;
mod bench_storage;
mod bench_svg;
mod demo;
mod edges;
mod evacuate;
mod fdspec;
mod inspect;
mod migrate;
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
    Dump {
        #[arg(long, short = 't')]
        pid: i32,
        /// Image directory (created if missing).
        #[arg(long, short = 'D')]
        images: PathBuf,
        /// Let the process continue after the dump.
        #[arg(long, short = 'R')]
        leave_running: bool,
        /// Take established TCP connections (TCP repair mode; needs nft):
        /// their packets are dropped by an nftables lock from the dump
        /// until `tern restore` lifts it. Without it a program with an
        /// established connection is refused.
        #[arg(long)]
        tcp_established: bool,
        /// Page compression: a zstd level (1..19, or -1..-7 for zstd's fast
        /// modes), 0 for none, or "auto": none when the image goes to memory
        /// (tmpfs, where compressing only slows the dump), zstd 1 otherwise.
        #[arg(long, default_value = "auto", allow_negative_numbers = true)]
        compress: String,
        /// An earlier image (pre-dump or dump) of this process: store only
        /// pages changed since; `restore` then applies the whole chain.
        /// A relative path is taken relative to --images, as in CRIU.
        #[arg(long)]
        parent: Option<PathBuf>,
        /// Live checkpoint: copy memory in rounds while the program runs and
        /// stop it only for the last delta (writes round-N/ increments in
        /// --images; restore applies the chain).
        #[arg(long, conflicts_with = "parent")]
        pre_copy: bool,
        /// How to stop the process (and its tree): ptrace (seize each in
        /// turn) or cgroup (freeze all at once in a cgroup of tern's, then
        /// seize; cgroup2 `cgroup.freeze` or the v1 freezer).
        #[arg(long, default_value = "ptrace")]
        freezer: tern_engine::dump::Freezer,
        /// An fd shared with a process outside the dump (e.g. a pipe from a
        /// supervisor): not saved, but named NAME (default: what it is,
        /// e.g. pipe:[1234]) for the restore to replace with
        /// --inherit-fd fd[M]:NAME. Repeatable.
        #[arg(long, value_name = "fd[N][:NAME]")]
        external: Vec<fdspec::ExternalFd>,
        #[command(flatten)]
        rounds: RoundArgs,
    },
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
    Restore {
        #[arg(long, short = 'D')]
        images: PathBuf,
        /// Write the restored process's pid here.
        #[arg(long)]
        pidfile: Option<PathBuf>,
        /// Give it a new pid instead of its original one. Risky: glibc caches
        /// the thread id, so raise(), pthread_kill() and robust futexes may
        /// act on the wrong id.
        #[arg(long)]
        new_pid: bool,
        /// How long to wait for the original pid to be free, in ms (with
        /// `--pid-ns never`).
        #[arg(long, default_value_t = 5000)]
        pid_wait_ms: u64,
        /// Restore into a fresh PID namespace: `auto` when the image's ids
        /// are taken here, `always`, or `never` (wait for them to be free).
        #[arg(long, default_value = "auto")]
        pid_ns: tern_restorer::PidNsMode,
        /// Rebuild a pre-copy chain round by round as `tern serve` does (a
        /// warm standby), instead of all at once.
        #[arg(long)]
        standby: bool,
        /// Restore a shell job into this terminal: the program joins this
        /// tern's session and process group (its fds 0-2 that were a
        /// terminal become this tern's), and tern stays in the foreground
        /// until it exits, then exits with its status (128+N if killed by
        /// signal N), as if the shell had started it.
        #[arg(long)]
        shell_job: bool,
        /// Put this tern's fd N in place of the image's fd that was named
        /// NAME at dump (`--external`). Repeatable.
        #[arg(long, value_name = "fd[N]:NAME")]
        inherit_fd: Vec<fdspec::InheritFd>,
    },
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
        Cmd::Dump {
            pid,
            images,
            leave_running,
            tcp_established,
            compress,
            parent,
            pre_copy,
            freezer,
            external,
            rounds,
        } => {
            let opts = tern_engine::DumpOptions {
                leave_running,
                zstd_level: zstd_level(&compress, &images)?,
                parent,
                delta_table: false,
                tcp_established,
                keep_net_lock: true,
                freezer,
                external: fdspec::external_fds(pid, &external)?,
            };
            if pre_copy
                && freezer == tern_engine::dump::Freezer::Cgroup
                && !tern_engine::tree::has_children(pid).unwrap_or(false)
            {
                // Refused rather than ignored: the pre-copy of one process
                // freezes it with ptrace (a tree's takes the freezer).
                anyhow::bail!("--freezer cgroup is for a plain dump or the pre-copy of a process tree; process {pid} has no children");
            }
            if pre_copy && rounds.policy.may_post_copy() {
                anyhow::bail!(
                    "--policy {} ends in post-copy, which needs a destination running the program: use `tern migrate`",
                    rounds.policy
                );
            }
            if pre_copy {
                let popts = rounds.precopy_options(opts);
                let r = tern_engine::precopy::precopy_dump(pid, &images, &popts).with_context(
                    || format!("pre-copy dump of process {pid} failed; it was left running"),
                )?;
                eprintln!(
                    "pre-copy of process {pid} (tracker {}, policy {}):",
                    r.tracker, r.policy
                );
                eprintln!("  round  dirty_pages  stored_pages  stored_KiB       ms  hash");
                for x in &r.rounds {
                    eprintln!(
                        "  {:>5}  {:>11}  {:>12}  {:>10}  {:>7.1}  {:016x}",
                        x.round,
                        x.dirty_pages,
                        x.stored_pages,
                        x.stored_bytes >> 10,
                        x.ms,
                        x.hash
                    );
                }
                let f = &r.final_stats;
                eprintln!(
                    "  stopped: {}; final delta {} dirty pages, {} stored; program stopped for {:.1} ms{}",
                    r.stop_reason,
                    r.final_dirty_pages,
                    f.pages_stored,
                    f.frozen_ms,
                    if leave_running { ", left running" } else { ", then killed" }
                );
                return Ok(());
            }
            let cgroup = freezer == tern_engine::dump::Freezer::Cgroup;
            if cgroup || tern_engine::tree::has_children(pid).unwrap_or(false) {
                let t = tern_engine::tree::dump_tree(pid, &images, &opts).with_context(|| {
                    format!("dump of the process tree under {pid} failed; it was left running")
                })?;
                let pages: u64 = t.processes.iter().map(|(_, s)| s.pages_stored).sum();
                let bytes: u64 = t.processes.iter().map(|(_, s)| s.pages_bytes).sum();
                eprintln!(
                    "dumped the tree of {} processes under {pid} ({}) to {}: {pages} pages saved ({} MiB); stopped for {:.1} ms{}",
                    t.processes.len(),
                    t.processes
                        .iter()
                        .map(|(p, _)| p.to_string())
                        .collect::<Vec<_>>()
                        .join(", "),
                    images.display(),
                    bytes >> 20,
                    t.frozen_ms,
                    if leave_running { ", left running" } else { ", then killed" }
                );
                return Ok(());
            }
            let stats = tern_engine::dump(pid, &images, &opts)
                .with_context(|| format!("dump of process {pid} failed; it was left running"))?;
            eprintln!(
                "dumped process {pid} to {}: {} of {} pages saved ({} MiB, {} MiB stored), {} mappings, {} fds; stopped for {:.1} ms{}",
                images.display(),
                stats.pages_stored,
                stats.pages_seen,
                stats.pages_bytes >> 20,
                stats.stored_bytes >> 20,
                stats.vmas,
                stats.fds,
                stats.frozen_ms,
                if leave_running { ", left running" } else { ", then killed" }
            );
            Ok(())
        }
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
        Cmd::Restore {
            images,
            pidfile,
            new_pid,
            pid_wait_ms,
            pid_ns,
            standby,
            shell_job,
            inherit_fd,
        } => {
            let opts = tern_restorer::RestoreOptions {
                new_pid,
                pid_wait: Duration::from_millis(pid_wait_ms),
                pid_ns,
                shell_job,
                inherit_fds: fdspec::inherit_fds(&inherit_fd)?,
            };
            let mut processes = 1;
            let r = if standby {
                tern_restorer::restore_via_standby(&images, &opts)
            } else if tern_restorer::tree::is_tree(&images) {
                tern_restorer::tree::restore_tree(&images, &opts).map(|(r, n)| {
                    processes = n;
                    r
                })
            } else {
                tern_restorer::restore(&images, &opts)
            }
            .with_context(|| format!("restore from {} failed", images.display()))?;
            if let Some(p) = pidfile {
                std::fs::write(&p, format!("{}\n", r.pid))
                    .with_context(|| format!("write pidfile {}", p.display()))?;
            }
            let ns = match r.pid_ns_init {
                Some(init) => format!(
                    " in a fresh PID namespace (it sees itself as pid {}; namespace init {init})",
                    r.ns_pid
                ),
                None => String::new(),
            };
            let tree = if processes > 1 {
                format!(" with its {} descendants", processes - 1)
            } else {
                String::new()
            };
            eprintln!(
                "restored process {}{tree}{ns} from {} in {:.1} ms ({} MiB of memory)",
                r.pid,
                images.display(),
                r.restore_ms,
                r.pages_bytes >> 20
            );
            if shell_job {
                let code = wait_shell_job(r.pid)?;
                std::process::exit(code);
            }
            Ok(())
        }
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
fn zstd_level(compress: &str, images: &std::path::Path) -> Result<Option<i32>> {
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
fn wait_shell_job(pid: i32) -> Result<i32> {
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
