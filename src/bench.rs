//! `tern bench`: the seed paper's downtime table (Kaur & Kaur 2020, Table
//! II: stop-and-copy vs live migration at 32-256 MB) measured on this
//! machine, with the columns the paper lacks, as a table, JSON and SVG.
//!
//! Each run: two network namespaces joined by veth (shaped with netem when
//! asked), `tern serve` in B, the workload (`tern demo-workload`: state of
//! the given size, a 10 ms heartbeat, optionally a steady writer) in A, then
//! `tern migrate` in A with the run's mode and policy. Downtime is read from
//! tern's report; the gap the program felt is the largest interval between
//! its heartbeats around the migration.

use crate::demo::{beats, wait_ticks};
use crate::edges::{keygen, start_serve, start_workload_writing, Edges};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

#[derive(clap::Args)]
pub struct BenchArgs {
    /// Process sizes in MiB.
    #[arg(long, value_delimiter = ',', default_value = "32,64,128,256")]
    pub sizes: Vec<u64>,
    /// simple (freeze, copy all, restore: a single process's memory
    /// streamed after its image), simple-image (the same with the whole
    /// image written, sent, then restored: `--no-page-stream`) and/or live
    /// (pre-copy).
    #[arg(long, value_delimiter = ',', default_value = "simple,live")]
    pub modes: Vec<String>,
    /// Stop policies for live runs.
    #[arg(
        long = "policy",
        value_delimiter = ',',
        default_value = "paper,adaptive"
    )]
    pub policies: Vec<String>,
    /// MB/s the workload rewrites (0: idle-ish, as in the paper).
    #[arg(long = "dirty-rate", default_value_t = 0.0)]
    pub dirty_mbps: f64,
    /// How the workload rewrites: spread (pages all over its state, checks
    /// too) or sequential (in address order, like a log, checking what it
    /// wrote last).
    #[arg(long = "dirty-pattern", default_value = "spread", value_parser = ["spread", "sequential"])]
    pub dirty_pattern: String,
    /// Shape the link to this rate (tc netem, or tbf without netem).
    #[arg(long)]
    pub link_mbit: Option<u64>,
    /// Shape the link to this round-trip time (tc netem).
    #[arg(long)]
    pub rtt_ms: Option<f64>,
    /// Runs per configuration (median, min and max reported).
    #[arg(long, default_value_t = 3)]
    pub repeat: usize,
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write downtime.svg and breakdown.svg here.
    #[arg(long)]
    pub svg: Option<PathBuf>,
    /// Where to keep logs (default: a new temporary directory).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Instead of migrations: `tern dump` and `tern restore` into this
    /// directory next to `cp` of a file of the same size on it (e.g. a
    /// tmpfs such as /dev/shm), for each of --sizes.
    #[arg(long)]
    pub storage: Option<PathBuf>,
    /// Instead of migrations: `tern evacuate` of this many sample programs
    /// of the first of --sizes MiB each, once per --evacuate-parallel.
    #[arg(long)]
    pub evacuate: Option<usize>,
    /// Migrations in flight at once, for --evacuate.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4")]
    pub evacuate_parallel: Vec<usize>,
}

/// One measured migration.
#[derive(Clone, Debug)]
struct Run {
    downtime_ms: f64,
    dump_ms: f64,
    transfer_ms: f64,
    restore_ms: f64,
    gap_ms: f64,
    rounds: u64,
    bytes: u64,
    total_ms: f64,
    stop_reason: String,
}

/// The median run of a configuration, with min and max of the downtime.
#[derive(Clone, Debug)]
struct Row {
    size_mib: u64,
    mode: String,
    policy: String,
    median: Run,
    downtime_min: f64,
    downtime_max: f64,
    gap_min: f64,
    gap_max: f64,
    runs: usize,
}

fn median_run(mut runs: Vec<Run>) -> (Run, f64, f64, f64, f64) {
    runs.sort_by(|a, b| a.downtime_ms.total_cmp(&b.downtime_ms));
    let lo = runs[0].downtime_ms;
    let hi = runs[runs.len() - 1].downtime_ms;
    let gmin = runs.iter().map(|r| r.gap_ms).fold(f64::INFINITY, f64::min);
    let gmax = runs.iter().map(|r| r.gap_ms).fold(0.0, f64::max);
    (runs[runs.len() / 2].clone(), lo, hi, gmin, gmax)
}

/// Why there is no CRIU column, or `None` if `criu check` passes.
fn criu_unavailable() -> Option<String> {
    match Command::new("criu").arg("check").output() {
        Err(_) => Some("criu is not installed (not on PATH)".into()),
        Ok(o) if !o.status.success() => {
            let text = String::from_utf8_lossy(&o.stderr).into_owned()
                + &String::from_utf8_lossy(&o.stdout);
            let first = text
                .lines()
                .find(|l| l.contains("Error") || l.contains("error"))
                .unwrap_or("it fails")
                .trim()
                .to_string();
            Some(format!("`criu check` fails on this kernel: {first}"))
        }
        Ok(_) => None,
    }
}

fn one_run(
    exe: &Path,
    dir: &Path,
    args: &BenchArgs,
    size: u64,
    mode: &str,
    policy: &str,
    link: &mut String,
) -> Result<Run> {
    let edges = Edges::create("bench")?;
    *link = edges.shape(args.link_mbit, args.rtt_ms)?;
    let key = dir.join("bench.key");
    keygen(exe, &key)?;
    let log = dir.join(format!("workload-{size}-{mode}-{policy}.log"));
    let report = dir.join("report.json");
    for f in [&log, &report] {
        let _ = std::fs::remove_file(f);
    }
    let (_serve, _) = start_serve(
        edges.command(1, exe),
        &key,
        &format!("{}:7878", edges.addr[1]),
        dir,
    )?;
    let program = start_workload_writing(
        edges.command(0, exe),
        size,
        args.dirty_mbps,
        args.dirty_pattern == "sequential",
        &log,
    )?;
    // Its state written, then a second of steady state.
    wait_ticks(&log, 100)?;
    let pid = program.0.id();
    let mig_log = std::fs::File::create(dir.join("migrate.log"))?;
    let mut migrate = edges.command(0, exe);
    migrate
        .args(["migrate", "--pid", &pid.to_string(), "--to"])
        .arg(format!("{}:7878", edges.addr[1]))
        .arg("--key")
        .arg(&key)
        .arg("--mode")
        .arg(if stop_and_copy(mode) { "simple" } else { mode })
        .arg("--report")
        .arg(&report)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(mig_log);
    if mode == SIMPLE_WHOLE_IMAGE {
        migrate.arg("--no-page-stream");
    }
    if mode == "live" {
        migrate.args(["--policy", policy]);
        if policy == "paper" {
            migrate.args(["--max-rounds", "10"]);
        }
    }
    let st = migrate.status().context("run tern migrate")?;
    if !st.success() {
        bail!(
            "tern migrate failed ({} MiB, {mode}, {policy}); see {}",
            size,
            dir.join("migrate.log").display()
        );
    }
    let rep: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&report)?)?;
    let restored = rep["restored_pid"].as_i64().unwrap_or(0) as i32;
    let last = beats(&log).last().map(|b| b.0).unwrap_or(0);
    let run = (|| -> Result<Run> {
        wait_ticks(&log, last + 30)?;
        let all = beats(&log);
        if !all.windows(2).all(|w| w[1].0 == w[0].0 + 1) {
            bail!("the migrated workload's heartbeats have a gap or repeat");
        }
        let gap_ms = all
            .windows(2)
            .map(|w| w[1].1.saturating_sub(w[0].1) as f64 / 1e3)
            .fold(0.0, f64::max);
        let f = |k: &str| rep["breakdown_ms"][k].as_f64().unwrap_or(f64::NAN);
        Ok(Run {
            downtime_ms: rep["downtime_ms"].as_f64().unwrap_or(f64::NAN),
            dump_ms: f("final_dump"),
            transfer_ms: f("transfer"),
            restore_ms: f("restore") + f("commit"),
            gap_ms,
            rounds: rep["rounds"].as_array().map_or(0, |r| r.len() as u64),
            bytes: rep["bytes_on_wire"].as_u64().unwrap_or(0),
            total_ms: rep["total_ms"].as_f64().unwrap_or(f64::NAN),
            stop_reason: rep["stop_reason"].as_str().unwrap_or("").to_string(),
        })
    })();
    if restored > 0 {
        let _ = tern_sys::signal(restored, libc::SIGKILL);
    }
    drop(program);
    run
}

pub fn run(args: BenchArgs) -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!(
            "tern bench needs root: it makes two network namespaces (edge servers) joined by veth"
        );
    }
    let dir = args
        .dir
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join(format!("tern-bench-{}", std::process::id())));
    if let Some(storage) = &args.storage {
        if args.repeat == 0 || args.sizes.is_empty() {
            bail!("nothing to measure: give --sizes and --repeat of at least 1");
        }
        return crate::bench_storage::run(
            storage,
            &args.sizes,
            args.repeat,
            &dir,
            args.json.as_ref(),
        );
    }
    if let Some(programs) = args.evacuate {
        let exe = std::env::current_exe().context("find the tern executable")?;
        std::fs::create_dir_all(&dir)?;
        let mib = args.sizes.first().copied().unwrap_or(64);
        return crate::bench_evacuate::run(
            &exe,
            programs,
            mib,
            &args.evacuate_parallel,
            &dir,
            args.json.as_ref(),
        );
    }
    if args.repeat == 0 || args.sizes.is_empty() || args.modes.is_empty() {
        bail!("nothing to measure: give --sizes, --modes and --repeat of at least 1");
    }
    for m in &args.modes {
        if !stop_and_copy(m) && m != "live" {
            bail!("--modes: {m:?} is not simple, {SIMPLE_WHOLE_IMAGE} or live");
        }
    }
    let exe = std::env::current_exe().context("find the tern executable")?;
    std::fs::create_dir_all(&dir)?;
    let criu = criu_unavailable();
    let mut link = String::from("unshaped veth");
    eprintln!(
        "tern bench: sizes {:?} MiB, modes {:?}, policies {:?}, dirty rate {} MB/s, link {:?} Mbit/s, RTT {:?} ms, {} run(s) each",
        args.sizes, args.modes, args.policies, args.dirty_mbps, args.link_mbit, args.rtt_ms, args.repeat
    );
    let mut rows: Vec<Row> = Vec::new();
    for &size in &args.sizes {
        for mode in &args.modes {
            let policies: Vec<String> = if stop_and_copy(mode) {
                vec!["-".to_string()]
            } else {
                args.policies.clone()
            };
            for policy in &policies {
                let mut runs = Vec::new();
                for k in 0..args.repeat {
                    let r = one_run(&exe, &dir, &args, size, mode, policy, &mut link)?;
                    eprintln!(
                        "  {size:>5} MiB  {mode:<6} {policy:<8} run {}: downtime {:.1} ms, gap {:.1} ms, {} rounds",
                        k + 1,
                        r.downtime_ms,
                        r.gap_ms,
                        r.rounds
                    );
                    runs.push(r);
                }
                let n = runs.len();
                let (median, lo, hi, gmin, gmax) = median_run(runs);
                rows.push(Row {
                    size_mib: size,
                    mode: mode.clone(),
                    policy: policy.clone(),
                    median,
                    downtime_min: lo,
                    downtime_max: hi,
                    gap_min: gmin,
                    gap_max: gmax,
                    runs: n,
                });
            }
        }
    }
    print_table(&rows, &link, criu.as_deref());
    if let Some(path) = &args.json {
        let json: Vec<serde_json::Value> = rows.iter().map(row_json).collect();
        std::fs::write(path, serde_json::to_string_pretty(&json)? + "\n")
            .with_context(|| format!("write {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    if let Some(d) = &args.svg {
        std::fs::create_dir_all(d)?;
        crate::bench_svg::downtime_chart(&rows_for_svg(&rows), &d.join("downtime.svg"))?;
        crate::bench_svg::breakdown_chart(&rows_for_svg(&rows), &d.join("breakdown.svg"))?;
        eprintln!(
            "wrote {} and {}",
            d.join("downtime.svg").display(),
            d.join("breakdown.svg").display()
        );
    }
    Ok(())
}

fn rows_for_svg(rows: &[Row]) -> Vec<crate::bench_svg::Point> {
    rows.iter()
        .map(|r| crate::bench_svg::Point {
            size_mib: r.size_mib,
            series: if r.mode == "simple" {
                "simple (stop and copy)".to_string()
            } else if r.mode == SIMPLE_WHOLE_IMAGE {
                "simple, whole image first".to_string()
            } else {
                format!("live, {}", r.policy)
            },
            downtime_ms: r.median.downtime_ms,
            dump_ms: r.median.dump_ms,
            transfer_ms: r.median.transfer_ms,
            restore_ms: r.median.restore_ms,
        })
        .collect()
}

fn row_json(r: &Row) -> serde_json::Value {
    serde_json::json!({
        "size_mib": r.size_mib,
        "mode": r.mode,
        "policy": r.policy,
        "downtime_ms": r.median.downtime_ms,
        "downtime_min_ms": r.downtime_min,
        "downtime_max_ms": r.downtime_max,
        "dump_ms": r.median.dump_ms,
        "transfer_ms": r.median.transfer_ms,
        "restore_ms": r.median.restore_ms,
        "observed_gap_ms": r.median.gap_ms,
        "observed_gap_min_ms": r.gap_min,
        "observed_gap_max_ms": r.gap_max,
        "rounds": r.median.rounds,
        "bytes_on_wire": r.median.bytes,
        "total_ms": r.median.total_ms,
        "stop_reason": r.median.stop_reason,
        "runs": r.runs,
    })
}

/// The paper's Table II figures (seconds), for the sizes it measured.
fn paper(size_mib: u64) -> Option<(f64, f64)> {
    match size_mib {
        32 => Some((0.7, 0.2)),
        64 => Some((1.5, 0.2)),
        128 => Some((3.4, 0.2)),
        256 => Some((7.1, 0.2)),
        _ => None,
    }
}

/// The bench mode that runs `tern migrate --mode simple --no-page-stream`:
/// the stop-and-copy that writes, sends, then restores the whole image.
const SIMPLE_WHOLE_IMAGE: &str = "simple-image";

/// Whether bench mode `mode` is a stop-and-copy (no policy, no rounds).
fn stop_and_copy(mode: &str) -> bool {
    mode == "simple" || mode == SIMPLE_WHOLE_IMAGE
}

fn print_table(rows: &[Row], link: &str, criu: Option<&str>) {
    println!();
    println!("Downtime by process size ({link}; median of runs, [min-max]):");
    println!(
        "{:>8}  {:<16} {:>22} {:>9} {:>9} {:>9} {:>11} {:>6} {:>9}  {:>14}",
        "size MiB",
        "mode",
        "downtime ms",
        "dump",
        "transfer",
        "restore",
        "gap felt",
        "rounds",
        "MiB sent",
        "paper (s)"
    );
    for r in rows {
        let label = if stop_and_copy(&r.mode) {
            r.mode.clone()
        } else {
            format!("live/{}", r.policy)
        };
        let paper_col = match paper(r.size_mib) {
            Some((simple, live)) => {
                format!("{:.1}", if stop_and_copy(&r.mode) { simple } else { live })
            }
            None => "-".into(),
        };
        println!(
            "{:>8}  {:<16} {:>9.1} [{:>5.1}-{:>6.1}] {:>9.1} {:>9.1} {:>9.1} {:>11.1} {:>6} {:>9.1}  {:>14}",
            r.size_mib,
            label,
            r.median.downtime_ms,
            r.downtime_min,
            r.downtime_max,
            r.median.dump_ms,
            r.median.transfer_ms,
            r.median.restore_ms,
            r.median.gap_ms,
            r.median.rounds,
            r.median.bytes as f64 / (1 << 20) as f64,
            paper_col
        );
    }
    // Simple vs live at each size, as the paper reports it.
    let mut sizes: Vec<u64> = rows.iter().map(|r| r.size_mib).collect();
    sizes.dedup();
    for s in sizes {
        let simple = rows.iter().find(|r| r.size_mib == s && r.mode == "simple");
        for live in rows.iter().filter(|r| r.size_mib == s && r.mode == "live") {
            if let Some(simple) = simple {
                let paper_ratio = paper(s)
                    .map(|(a, b)| format!(" (paper: {:.1}x)", a / b))
                    .unwrap_or_default();
                println!(
                    "  {s} MiB: live/{} downtime is {:.1}x below simple{paper_ratio}",
                    live.policy,
                    simple.median.downtime_ms / live.median.downtime_ms
                );
            }
        }
    }
    match criu {
        Some(why) => println!("  CRIU column missing: {why}."),
        None => println!("  (criu check passes here; tern bench does not drive CRIU yet)"),
    }
    println!(
        "  downtime: tern's clock, freeze -> destination resumed (one network delay included); gap felt: longest interval between the program's 10 ms heartbeats (includes one tick, and the tick's sleep restarts after the move)."
    );
}
