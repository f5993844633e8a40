//! `tern bench --storage DIR`: how fast `tern dump` and `tern restore` move
//! memory to and from a file system, next to `cp` of a file of the same size
//! on the same file system, measured in one run (these machines are noisy:
//! compare the ratios of one run, not figures across runs).
//!
//! Each run: the sample program (`tern demo-workload`, state of the given
//! size) is started, then timed as a user would time the commands:
//! `cp SRC DST` of a file of that size, `tern dump` of the program into
//! `DIR`, `tern restore` of that image (which must go on ticking, its state
//! checked by itself). Wall-clock times of the whole commands.

use crate::demo::{beats, wait_ticks};
use crate::edges::start_workload;
use anyhow::{bail, Context, Result};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

/// One run at one size, in ms.
#[derive(Clone, Copy, Debug)]
struct Times {
    cp: f64,
    dump: f64,
    restore: f64,
}

/// The median of each column over the runs of one size.
fn medians(runs: &[Times]) -> Times {
    let median = |f: fn(&Times) -> f64| {
        let mut v: Vec<f64> = runs.iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    Times {
        cp: median(|t| t.cp),
        dump: median(|t| t.dump),
        restore: median(|t| t.restore),
    }
}

/// A file of `mib` MiB of pseudo-random bytes (incompressible, as the
/// sample program's state is).
fn write_source(path: &Path, mib: u64) -> Result<()> {
    let file = std::fs::File::create(path).with_context(|| format!("create {}", path.display()))?;
    let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut block = vec![0u8; 1 << 20];
    for _ in 0..mib {
        for w in block.chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            w.copy_from_slice(&x.to_le_bytes());
        }
        out.write_all(&block)?;
    }
    out.flush()?;
    Ok(())
}

/// Run `cmd` to the end; its wall-clock time in ms and its stderr.
fn timed(cmd: &mut Command, what: &str) -> Result<(f64, String)> {
    let t0 = Instant::now();
    let out = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .output()
        .with_context(|| format!("run {what}"))?;
    let ms = t0.elapsed().as_secs_f64() * 1e3;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if !out.status.success() {
        bail!("{what} failed ({}): {}", out.status, stderr.trim());
    }
    Ok((ms, stderr))
}

/// The host pid in `tern restore`'s "restored process PID ..." line.
fn restored_pid(stderr: &str) -> Option<i32> {
    stderr
        .split("restored process ")
        .nth(1)?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn one_run(exe: &Path, storage: &Path, work: &Path, mib: u64, src: &Path) -> Result<Times> {
    let log = work.join(format!("storage-workload-{mib}.log"));
    let _ = std::fs::remove_file(&log);
    let images = storage.join(format!("tern-bench-image-{}", std::process::id()));
    let dst = storage.join(format!("tern-bench-copy-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&images);
    // Removed however the run ends.
    let _images = tern_wire::image::Staging(images.clone());
    let mut program = start_workload(Command::new(exe), mib, 0.0, &log)?;
    wait_ticks(&log, 3)?;
    let (cp, _) = timed(Command::new("cp").arg(src).arg(&dst), "cp")?;
    let _ = std::fs::remove_file(&dst);
    let pid = program.0.id().to_string();
    let (dump, _) = timed(
        Command::new(exe)
            .args(["dump", "--pid", &pid, "--images"])
            .arg(&images),
        "tern dump",
    )?;
    let _ = program.0.wait();
    let last = beats(&log).last().map_or(0, |b| b.0);
    let (restore, stderr) = timed(
        Command::new(exe).args(["restore", "--images"]).arg(&images),
        "tern restore",
    )?;
    let restored = restored_pid(&stderr);
    // The restored program goes on, checking its own state.
    let going_on = wait_ticks(&log, last + 3);
    if let Some(p) = restored {
        let _ = tern_sys::signal(p, libc::SIGKILL);
    }
    going_on.context("the restored sample program")?;
    Ok(Times { cp, dump, restore })
}

/// GB/s of `mib` MiB moved in `ms`.
fn rate(mib: u64, ms: f64) -> f64 {
    (mib << 20) as f64 / (ms / 1e3) / 1e9
}

pub fn run(
    storage: &Path,
    sizes: &[u64],
    repeat: usize,
    work: &Path,
    json: Option<&PathBuf>,
) -> Result<()> {
    let exe = std::env::current_exe().context("find the tern executable")?;
    std::fs::create_dir_all(work)?;
    let fs = if tern_engine::dump::is_memory_fs(storage) {
        "tmpfs/ramfs: images stored raw"
    } else {
        "not memory: images zstd-compressed (--compress auto)"
    };
    eprintln!(
        "tern bench --storage {} ({fs}): sizes {sizes:?} MiB, {repeat} run(s) each",
        storage.display()
    );
    let mut rows = Vec::new();
    for &mib in sizes {
        let src = storage.join(format!("tern-bench-source-{}", std::process::id()));
        write_source(&src, mib)?;
        let mut runs = Vec::new();
        for k in 0..repeat {
            let r = one_run(&exe, storage, work, mib, &src);
            if r.is_err() {
                let _ = std::fs::remove_file(&src);
            }
            let r = r?;
            eprintln!(
                "  {mib:>6} MiB run {}: cp {:.0} ms, dump {:.0} ms, restore {:.0} ms",
                k + 1,
                r.cp,
                r.dump,
                r.restore
            );
            runs.push(r);
        }
        let _ = std::fs::remove_file(&src);
        rows.push((mib, medians(&runs), runs));
    }
    println!(
        "\nDump and restore next to cp on {} (median of each, wall-clock of the whole command)\n",
        storage.display()
    );
    println!(
        "{:>8}  {:>16}  {:>16}  {:>16}  {:>8}  {:>8}",
        "MiB", "cp ms (GB/s)", "dump ms (GB/s)", "restore ms (GB/s)", "dump/cp", "rest/cp"
    );
    for (mib, m, _) in &rows {
        let cell = |ms: f64| format!("{ms:.0} ({:.2})", rate(*mib, ms));
        println!(
            "{:>8}  {:>16}  {:>16}  {:>16}  {:>8.2}  {:>8.2}",
            mib,
            cell(m.cp),
            cell(m.dump),
            cell(m.restore),
            m.dump / m.cp,
            m.restore / m.cp
        );
    }
    println!("\n(dump/cp and rest/cp: time over cp's time; below 1 is faster than cp)");
    if let Some(path) = json {
        let out: Vec<serde_json::Value> = rows
            .iter()
            .map(|(mib, m, runs)| {
                serde_json::json!({
                    "size_mib": mib,
                    "cp_ms": m.cp,
                    "dump_ms": m.dump,
                    "restore_ms": m.restore,
                    "dump_over_cp": m.dump / m.cp,
                    "restore_over_cp": m.restore / m.cp,
                    "runs": runs.iter().map(|r| serde_json::json!({"cp_ms": r.cp, "dump_ms": r.dump, "restore_ms": r.restore})).collect::<Vec<_>>(),
                })
            })
            .collect();
        std::fs::write(path, serde_json::to_string_pretty(&out)? + "\n")
            .with_context(|| format!("write {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}
