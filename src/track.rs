//! `tern track`: watch which pages a running program writes, round by round
//! (the research tool behind the pre-copy loop).

use anyhow::{Context, Result};
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};
use tern_engine::track::{self, DirtySet, DirtyTracker, TrackerKind};

/// Sleep `d`, waking early when asked to stop.
fn sleep_unless_stopped(d: Duration) {
    let until = Instant::now() + d;
    while !tern_sys::stop_asked() {
        let now = Instant::now();
        if now >= until {
            break;
        }
        std::thread::sleep((until - now).min(Duration::from_millis(20)));
    }
}

pub struct Options<'a> {
    pub pid: i32,
    pub tracker: TrackerKind,
    pub rounds: u32,
    pub interval: Duration,
    pub json: bool,
    pub csv: Option<&'a Path>,
}

pub fn run(o: &Options) -> Result<()> {
    tern_sys::catch_stop_signals();
    let pid = o.pid;
    let (mut tracker, notes) = track::open_tracker_with_notes(pid, o.tracker)
        .with_context(|| format!("cannot track process {pid} (it was left running, untouched)"))?;
    for n in &notes {
        eprintln!("tern track: {n}");
    }
    let started = Instant::now();
    let s = tracker.stats().clone();
    eprintln!(
        "tern track: process {pid} with {}: {} VMAs ({} MiB) armed in {:.1} ms, target stopped {:.2} ms{}",
        tracker.name(),
        s.tracked_vmas,
        (s.tracked_pages * track::page_size()) >> 20,
        ms(s.duration),
        ms(s.stopped),
        if s.untracked_vmas > 0 {
            format!(", {} VMAs not trackable (reported whole each round)", s.untracked_vmas)
        } else {
            String::new()
        }
    );
    let mut csv = match o.csv {
        Some(p) => {
            let mut f =
                std::fs::File::create(p).with_context(|| format!("create {}", p.display()))?;
            writeln!(
                f,
                "round,tracker,dirty_pages,dirty_bytes,hash,elapsed_ms,collect_ms,stopped_ms,new_vmas,vanished_vmas,vmas"
            )?;
            Some(f)
        }
        None => None,
    };
    if !o.json {
        println!(
            "{:>5} {:>10} {:>10} {:>16} {:>10} {:>10} {:>10}  per VMA",
            "round", "dirty_pg", "dirty_MiB", "hash", "elapsed_ms", "collect_ms", "stopped_ms"
        );
    }
    let result = rounds(o, tracker.as_mut(), started, csv.as_mut());
    // Always leave the target as it was, even after an error or a signal.
    let finished = tracker
        .finish()
        .with_context(|| format!("stop tracking process {pid}"));
    result?;
    finished?;
    Ok(())
}

fn rounds(
    o: &Options,
    tracker: &mut dyn DirtyTracker,
    started: Instant,
    mut csv: Option<&mut std::fs::File>,
) -> Result<()> {
    let pid = o.pid;
    for round in 1..=o.rounds {
        sleep_unless_stopped(o.interval);
        if tern_sys::stop_asked() {
            eprintln!("tern track: interrupted after {} rounds", round - 1);
            break;
        }
        let t0 = Instant::now();
        let set = tracker
            .collect()
            .with_context(|| format!("round {round} of tracking process {pid}"))?;
        let collect = t0.elapsed();
        let elapsed = started.elapsed();
        let stats = tracker.stats().clone();
        let (hash, unreadable) = track::content_hash(pid, &set)
            .with_context(|| format!("read the dirty pages of process {pid}"))?;
        let per_vma = set.per_vma(tracker.maps());
        print_round(
            o,
            round,
            tracker.name(),
            &set,
            hash,
            unreadable,
            elapsed,
            collect,
            &stats,
            &per_vma,
        )?;
        if let Some(f) = csv.as_deref_mut() {
            let vmas: Vec<String> = per_vma
                .iter()
                .map(|v| format!("{:x}-{:x} {}:{}", v.start, v.end, v.name, v.pages))
                .collect();
            writeln!(
                f,
                "{round},{},{},{},{hash:016x},{:.3},{:.3},{:.3},{},{},\"{}\"",
                tracker.name(),
                set.total_pages(),
                set.total_bytes(),
                ms(elapsed),
                ms(collect),
                ms(stats.stopped),
                stats.new_vmas,
                stats.vanished_vmas,
                vmas.join(";").replace('"', "\"\"")
            )?;
        }
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn print_round(
    o: &Options,
    round: u32,
    tracker: &str,
    set: &DirtySet,
    hash: u64,
    unreadable: u64,
    elapsed: Duration,
    collect: Duration,
    stats: &track::RoundStats,
    per_vma: &[track::VmaDirty],
) -> Result<()> {
    let mut out = std::io::stdout().lock();
    if o.json {
        let vmas: Vec<_> = per_vma
            .iter()
            .map(|v| {
                serde_json::json!({
                    "start": format!("{:#x}", v.start),
                    "end": format!("{:#x}", v.end),
                    "name": v.name,
                    "dirty_pages": v.pages,
                })
            })
            .collect();
        let rec = serde_json::json!({
            "round": round,
            "pid": o.pid,
            "tracker": tracker,
            "dirty_pages": set.total_pages(),
            "dirty_bytes": set.total_bytes(),
            "hash": format!("{hash:016x}"),
            "unreadable_pages": unreadable,
            "elapsed_ms": ms(elapsed),
            "collect_ms": ms(collect),
            "stopped_ms": ms(stats.stopped),
            "tracked_vmas": stats.tracked_vmas,
            "new_vmas": stats.new_vmas,
            "vanished_vmas": stats.vanished_vmas,
            "untracked_vmas": stats.untracked_vmas,
            "vmas": vmas,
        });
        writeln!(out, "{rec}")?;
    } else {
        writeln!(
            out,
            "{round:>5} {:>10} {:>10.2} {hash:>16x} {:>10.1} {:>10.2} {:>10.2}  {}",
            set.total_pages(),
            set.total_bytes() as f64 / (1 << 20) as f64,
            ms(elapsed),
            ms(collect),
            ms(stats.stopped),
            if stats.new_vmas + stats.vanished_vmas > 0 {
                format!("(+{} -{} VMAs)", stats.new_vmas, stats.vanished_vmas)
            } else {
                String::new()
            }
        )?;
        for v in per_vma {
            let name = if v.name.is_empty() { "[anon]" } else { &v.name };
            writeln!(
                out,
                "{:>16} pages in {:x}-{:x} {name}",
                v.pages, v.start, v.end
            )?;
        }
    }
    out.flush()?;
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}
