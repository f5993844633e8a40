//! Live checkpoint by pre-copy: copy memory in rounds while the program runs
//! (round 0 everything, then what a dirty-page tracker reports), let a stop
//! policy decide when the remainder is small enough, then stop the program
//! once for the last delta and the rest of its state. The result is an
//! image chain (`round-0`, `round-1`, ... and the final image in the target
//! directory) that `tern restore` applies oldest-first.

use crate::dump::{self, DumpOptions, DumpStats};
use crate::error::Result;
use crate::policy::{self, Decision, Limits, PolicySpec, RoundInfo};
use crate::seize::Seized;
use crate::track::{self, TrackerKind};
use std::path::{Path, PathBuf};
use std::time::Instant;
use tracing::info;

#[derive(Debug, Clone)]
pub struct PrecopyOptions {
    pub tracker: TrackerKind,
    pub policy: PolicySpec,
    pub limits: Limits,
    /// Options of the final dump (leave running, compression).
    pub dump: DumpOptions,
}

/// One pre-copy round as it happened.
#[derive(Debug, Clone)]
pub struct RoundReport {
    pub round: u32,
    pub dir: PathBuf,
    /// Pages the tracker reported (round 0: every page with data).
    pub dirty_pages: u64,
    /// Pages whose content changed and were stored.
    pub stored_pages: u64,
    pub stored_bytes: u64,
    pub hash: u64,
    pub ms: f64,
}

#[derive(Debug, Clone)]
pub struct PrecopyReport {
    pub tracker: &'static str,
    pub policy: String,
    pub rounds: Vec<RoundReport>,
    pub stop_reason: String,
    /// The final, stopped phase: its `frozen_ms` is the program's downtime.
    pub final_stats: DumpStats,
    pub final_dirty_pages: u64,
}

/// Pre-copy `pid` into `dir`; see the module docs. On any error before the
/// final dump completes, the program keeps running and nothing of tern stays
/// in it (the tracker is torn down on drop).
pub fn precopy_dump(pid: i32, dir: &Path, opts: &PrecopyOptions) -> Result<PrecopyReport> {
    dump::preflight(pid)?;
    dump::prepare_dir(dir)?;
    let level = opts.dump.zstd_level;
    let mut tracker = track::open_tracker(pid, opts.tracker)?;
    let mut stop_policy = policy::build(&opts.policy, &opts.limits);
    let start = Instant::now();

    let mut rounds: Vec<RoundReport> = Vec::new();
    let mut infos: Vec<RoundInfo> = Vec::new();
    let mut table: Vec<(u64, u64)> = Vec::new();
    let mut round_start = start;
    let stop_reason = loop {
        let k = rounds.len() as u32;
        if k > 0 {
            if let Decision::Stop(reason) =
                stop_policy.decide(&infos, start.elapsed().as_secs_f64() * 1e3)
            {
                break reason.to_string();
            }
        }
        let t = Instant::now();
        let interval_ms = t.duration_since(round_start).as_secs_f64() * 1e3;
        round_start = t;
        // Round 0 needs no dirty set: everything is copied.
        let set = if k == 0 {
            None
        } else {
            Some(tracker.collect()?)
        };
        let rdir = dir.join(format!("round-{k}"));
        let parent = (k > 0).then(|| PathBuf::from(format!("../round-{}", k - 1)));
        let (stats, next) =
            dump::pre_dump_round(pid, &rdir, parent.as_deref(), &table, set.as_ref(), level)?;
        table = next;
        let ms = t.elapsed().as_secs_f64() * 1e3;
        let dirty_pages = set.as_ref().map_or(stats.pages_seen, |s| s.total_pages());
        info!(
            round = k,
            dirty_pages,
            stored = stats.pages_stored,
            ms,
            "pre-copy round"
        );
        infos.push(RoundInfo {
            round: k,
            dirty_pages: stats.pages_stored,
            dirty_bytes: stats.pages_bytes,
            hash: stats.round_hash,
            copy_ms: ms,
            interval_ms: if k == 0 { ms } else { interval_ms },
        });
        rounds.push(RoundReport {
            round: k,
            dir: rdir,
            dirty_pages,
            stored_pages: stats.pages_stored,
            stored_bytes: stats.stored_bytes,
            hash: stats.round_hash,
            ms,
        });
    };

    // Final phase: stop, take what was written since the last round while
    // the program cannot write more, remove the tracker, dump the rest.
    let t0 = Instant::now();
    let seized = Seized::attach(pid)?;
    let set = tracker.collect()?;
    tracker.finish()?;
    let mut final_opts = opts.dump.clone();
    final_opts.parent = Some(PathBuf::from(format!("round-{}", rounds.len() - 1)));
    let final_stats = dump::dump_seized(seized, t0, dir, &final_opts, &table, Some(&set))?;
    Ok(PrecopyReport {
        tracker: tracker.name(),
        policy: stop_policy.name(),
        rounds,
        stop_reason,
        final_stats,
        final_dirty_pages: set.total_pages(),
    })
}
