//! `tern bench --evacuate N`: `tern evacuate` of N sample programs
//! (`tern demo-workload`, each of the first --sizes MiB) from one edge
//! namespace to the other, once per --evacuate-parallel value: the wall
//! time, the rate it moved memory at, and every program's downtime.

use crate::demo::{beats, wait_ticks};
use crate::edges::{keygen, start_serve_with, start_workload, Child, Edges};
use anyhow::{bail, Context, Result};
use std::path::Path;
use std::process::Stdio;

/// One evacuation measured.
struct Evacuation {
    parallel: usize,
    wall_ms: f64,
    bytes: u64,
    /// Every program's downtime, sorted.
    downtimes: Vec<f64>,
}

pub fn run(
    exe: &Path,
    programs: usize,
    mib: u64,
    parallels: &[usize],
    dir: &Path,
    json: Option<&std::path::PathBuf>,
) -> Result<()> {
    if programs == 0 || parallels.is_empty() {
        bail!("nothing to measure: give --evacuate of at least 1 and --evacuate-parallel");
    }
    eprintln!(
        "tern bench --evacuate: {programs} programs of {mib} MiB, in flight at once: {parallels:?}"
    );
    let mut done = Vec::new();
    for &p in parallels {
        let e = one(exe, dir, programs, mib, p.max(1))?;
        eprintln!(
            "  parallel {}: {:.2} s, downtimes {:.1}..{:.1} ms",
            e.parallel,
            e.wall_ms / 1e3,
            e.downtimes.first().copied().unwrap_or(f64::NAN),
            e.downtimes.last().copied().unwrap_or(f64::NAN)
        );
        done.push(e);
    }
    println!();
    println!(
        "Evacuating {programs} programs of {mib} MiB ({} MiB in all) over the veth:",
        programs as u64 * mib
    );
    println!(
        "{:>8} {:>8} {:>9} {:>10} {:>10} {:>10}",
        "parallel", "wall s", "MB/s", "downtime", "median", "max ms"
    );
    for e in &done {
        let median = e
            .downtimes
            .get(e.downtimes.len() / 2)
            .copied()
            .unwrap_or(f64::NAN);
        println!(
            "{:>8} {:>8.2} {:>9.0} {:>10.1} {:>10.1} {:>10.1}",
            e.parallel,
            e.wall_ms / 1e3,
            e.bytes as f64 / e.wall_ms / 1e3,
            e.downtimes.first().copied().unwrap_or(f64::NAN),
            median,
            e.downtimes.last().copied().unwrap_or(f64::NAN)
        );
    }
    if let Some(path) = json {
        let v = serde_json::json!({
            "programs": programs,
            "mib_each": mib,
            "runs": done.iter().map(|e| serde_json::json!({
                "parallel": e.parallel,
                "wall_ms": e.wall_ms,
                "bytes_on_wire": e.bytes,
                "downtimes_ms": e.downtimes,
            })).collect::<Vec<_>>(),
        });
        std::fs::write(path, serde_json::to_string_pretty(&v)? + "\n")?;
    }
    Ok(())
}

fn one(exe: &Path, dir: &Path, programs: usize, mib: u64, parallel: usize) -> Result<Evacuation> {
    let edges = Edges::create("evac")?;
    let key = dir.join("evacuate.key");
    keygen(exe, &key)?;
    let sessions = programs.max(parallel).to_string();
    let (_serve, addr) = start_serve_with(
        edges.command(1, exe),
        &key,
        &format!("{}:7878", edges.addr[1]),
        dir,
        &["--max-sessions", &sessions],
    )?;
    let mut running: Vec<(Child, std::path::PathBuf)> = Vec::with_capacity(programs);
    for k in 0..programs {
        let log = dir.join(format!("evacuate-{parallel}-{k}.log"));
        let _ = std::fs::remove_file(&log);
        running.push((start_workload(edges.command(0, exe), mib, 0.0, &log)?, log));
    }
    for (_, log) in &running {
        wait_ticks(log, 20)?;
    }
    let report = dir.join(format!("evacuate-{parallel}.json"));
    let pids: Vec<String> = running.iter().map(|(c, _)| c.0.id().to_string()).collect();
    let out = std::fs::File::create(dir.join(format!("evacuate-{parallel}.log")))?;
    let st = edges
        .command(0, exe)
        .args([
            "evacuate",
            "--pids",
            &pids.join(","),
            "--to",
            &addr,
            "--key",
        ])
        .arg(&key)
        .args(["--parallel", &parallel.to_string(), "--report"])
        .arg(&report)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(out)
        .status()
        .context("run tern evacuate")?;
    let rep: serde_json::Value = std::fs::read_to_string(&report)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default();
    let moved: Vec<i32> = rep["programs"]
        .as_array()
        .map(|ps| {
            ps.iter()
                .filter_map(|p| p["restored_pid"].as_i64().map(|x| x as i32))
                .collect()
        })
        .unwrap_or_default();
    // Every program must run on where it went (no gap, no repeat).
    let checked = (|| -> Result<()> {
        if !st.success() {
            bail!(
                "tern evacuate failed; see {}",
                dir.join(format!("evacuate-{parallel}.log")).display()
            );
        }
        for (_, log) in &running {
            let last = beats(log).last().map(|b| b.0).unwrap_or(0);
            wait_ticks(log, last + 10)?;
            if !beats(log).windows(2).all(|w| w[1].0 == w[0].0 + 1) {
                bail!("{}: the heartbeats have a gap or repeat", log.display());
            }
        }
        Ok(())
    })();
    for pid in &moved {
        let _ = tern_sys::signal(*pid, libc::SIGKILL);
    }
    drop(running);
    checked?;
    let mut downtimes: Vec<f64> = rep["programs"]
        .as_array()
        .map(|ps| {
            ps.iter()
                .filter_map(|p| p["downtime_ms"].as_f64())
                .collect()
        })
        .unwrap_or_default();
    downtimes.sort_by(f64::total_cmp);
    Ok(Evacuation {
        parallel,
        wall_ms: rep["wall_ms"].as_f64().unwrap_or(f64::NAN),
        bytes: rep["bytes_on_wire"].as_u64().unwrap_or(0),
        downtimes,
    })
}
