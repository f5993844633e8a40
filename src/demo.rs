//! `tern demo`: a sample stateful program live-migrated between two "edge
//! servers" on this machine (two network namespaces joined by a veth pair
//! when run as root, otherwise two ports on loopback), printing the rounds,
//! the downtime tern measured and the longest pause the program itself saw.

use crate::edges::{keygen, start_serve, start_workload, Edges};
use anyhow::{bail, Context, Result};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// The sample program: `mib` MiB of state it keeps verifying, a heartbeat
/// line every 10 ms: "tick N us T" (T: CLOCK_MONOTONIC in microseconds),
/// and, with `dirty_mbps`, that many MB/s of its state rewritten (spread
/// over it, a page at a time). Prints "ready" once all state is written.
/// `sequential`: the rewrites go through the state in address order (a
/// log or a stream buffer) and the checks look at the pages written last,
/// instead of both being spread over the whole state.
pub fn workload(out: &Path, mib: u64, dirty_mbps: f64, sequential: bool) -> Result<()> {
    let mut log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(out)
        .with_context(|| format!("open {}", out.display()))?;
    let words = (mib << 20) as usize / 8;
    let value = |i: usize, gen: u64| (i as u64).wrapping_mul(2654435761) ^ gen;
    let mut state: Vec<u64> = (0..words).map(|i| value(i, 0)).collect();
    // Generation of each page's content (rewrites bump it).
    const PAGE_WORDS: usize = 512;
    let mut gens: Vec<u64> = vec![0; words.div_ceil(PAGE_WORDS)];
    writeln!(log, "ready")?;
    let pages_per_tick = (dirty_mbps * 1e6 / 100.0 / 4096.0).round() as usize;
    let mut tick: u64 = 0;
    let mut next_page: usize = 0;
    loop {
        tick += 1;
        // Check 512 words spread over the state each tick: a lost or wrong
        // page shows up within seconds.
        // Sequential: within the last 64 pages written.
        let window = 64 * PAGE_WORDS;
        for k in 0..512usize {
            let i = if sequential {
                (next_page * PAGE_WORDS + words - (k * 7919) % window) % words
            } else {
                (tick as usize * 7919 + k * 104_729) % words
            };
            if state[i] != value(i, gens[i / PAGE_WORDS]) {
                writeln!(log, "CORRUPT at {i}")?;
                std::process::exit(3);
            }
        }
        for _ in 0..pages_per_tick {
            next_page = (next_page + if sequential { 1 } else { 7919 }) % gens.len();
            gens[next_page] += 1;
            let g = gens[next_page];
            let lo = next_page * PAGE_WORDS;
            for (j, w) in state[lo..(lo + PAGE_WORDS).min(words)]
                .iter_mut()
                .enumerate()
            {
                *w = value(lo + j, g);
            }
        }
        let ts = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)?;
        let us = ts.tv_sec() as u64 * 1_000_000 + ts.tv_nsec() as u64 / 1000;
        writeln!(log, "tick {tick} us {us}")?;
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// (tick, microseconds) of each heartbeat line.
pub fn beats(path: &Path) -> Vec<(u64, u64)> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            match (w.next(), w.next(), w.next(), w.next()) {
                (Some("tick"), Some(n), Some("us"), Some(us)) => {
                    Some((n.parse().ok()?, us.parse().ok()?))
                }
                _ => None,
            }
        })
        .collect()
}

pub fn wait_ticks(path: &Path, at_least: u64) -> Result<u64> {
    let t0 = Instant::now();
    loop {
        if let Some(&(last, _)) = beats(path).last() {
            if last >= at_least {
                return Ok(last);
            }
        }
        if std::fs::read_to_string(path)
            .unwrap_or_default()
            .contains("CORRUPT")
        {
            bail!("the sample program found its memory corrupt");
        }
        if t0.elapsed() > Duration::from_secs(30) {
            bail!("the sample program made no progress in {}", path.display());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn run(dir: Option<PathBuf>) -> Result<()> {
    let dir = match dir {
        Some(d) => d,
        None => std::env::temp_dir().join(format!("tern-demo-{}", std::process::id())),
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    let log = dir.join("counter.log");
    let key = dir.join("demo.key");
    let report = dir.join("report.json");
    for f in [&log, &key, &report] {
        let _ = std::fs::remove_file(f);
    }
    let exe = std::env::current_exe().context("find the tern executable")?;

    let root = nix::unistd::geteuid().is_root();
    let edges = if root {
        match Edges::create("demo") {
            Ok(e) => Some(e),
            Err(e) => {
                println!("(network namespaces unavailable: {e}; using loopback)");
                None
            }
        }
    } else {
        None
    };
    let on = |k: usize| -> Command {
        match &edges {
            Some(e) => e.command(k, &exe),
            None => Command::new(&exe),
        }
    };
    let (listen, where_a, where_b) = match &edges {
        Some(e) => (
            format!("{}:7878", e.addr[1]),
            format!("edge A (netns {}, {})", e.names[0], e.addr[0]),
            format!("edge B (netns {}, {})", e.names[1], e.addr[1]),
        ),
        None => (
            "127.0.0.1:0".to_string(),
            "this machine".to_string(),
            "loopback".to_string(),
        ),
    };

    println!("1. tern keygen --out {}", key.display());
    keygen(&exe, &key)?;

    println!("2. tern serve on {where_b}, listening on {listen}");
    let (_serve, addr) = start_serve(on(1), &key, &listen, &dir)?;

    println!(
        "3. the sample program on {where_a}: 64 MiB of state it keeps verifying, a heartbeat every 10 ms in {}",
        log.display()
    );
    let program = start_workload(on(0), 64, 0.0, &log)?;
    let pid = program.0.id() as i32;
    let before = wait_ticks(&log, 30)?;
    println!("   pid {pid} is counting: tick {before}");

    println!("4. tern migrate --pid {pid} --to {addr}");
    let st = on(0)
        .args(["migrate", "--pid", &pid.to_string(), "--to", &addr, "--key"])
        .arg(&key)
        .arg("--report")
        .arg(&report)
        .status()
        .context("run tern migrate")?;
    if !st.success() {
        bail!("tern migrate failed (the program keeps running on {where_a})");
    }
    let rep: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&report)?)?;
    let restored = rep["restored_pid"].as_i64().unwrap_or(0) as i32;
    let last = beats(&log).last().map(|b| b.0).unwrap_or(0);
    let after = wait_ticks(&log, last + 100)?;
    let all = beats(&log);
    let continuous = all.windows(2).all(|w| w[1].0 == w[0].0 + 1);
    let gap_ms = all
        .windows(2)
        .map(|w| w[1].1.saturating_sub(w[0].1) as f64 / 1e3)
        .fold(0.0, f64::max);
    println!(
        "5. the program now runs on {where_b} as pid {restored} (it still sees itself as pid {}) and counts on: tick {last} -> {after}; sequence {}",
        rep["restored_ns_pid"],
        if continuous { "has no gap and no repeat" } else { "IS BROKEN" }
    );
    println!(
        "   downtime: {:.1} ms by tern's clock; the longest pause between the program's heartbeats was {gap_ms:.1} ms (10 ms when nothing happens)",
        rep["downtime_ms"].as_f64().unwrap_or(f64::NAN)
    );
    drop(program); // the copy on A is already gone; this only reaps it
    if restored > 0 {
        let _ = tern_sys::signal(restored, libc::SIGKILL);
    }
    println!(
        "6. stopped the migrated program; report and logs kept in {}",
        dir.display()
    );
    if !continuous {
        bail!("the migrated program did not continue exactly");
    }
    Ok(())
}
