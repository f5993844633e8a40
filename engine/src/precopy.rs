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
use tracing::{debug, info};

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
    let mut pc = Precopy::start(pid, dir, opts)?;
    while pc.next_round()?.is_some() {}
    let frozen = pc.freeze()?;
    if opts.dump.leave_running {
        frozen.thaw()
    } else {
        frozen.kill()
    }
}

/// A pre-copy in progress, driven round by round (by `precopy_dump`, or by
/// a migration that ships each round as soon as it is written).
#[derive(Debug)]
pub struct Precopy {
    pid: i32,
    dir: PathBuf,
    opts: PrecopyOptions,
    tracker: Box<dyn track::DirtyTracker>,
    stop_policy: Box<dyn policy::StopPolicy>,
    start: Instant,
    round_start: Instant,
    rounds: Vec<RoundReport>,
    infos: Vec<RoundInfo>,
    table: Vec<(u64, u64)>,
    stop_reason: Option<String>,
    /// The policy's reason when rounds were forced after it said stop.
    stop_reason_before_forced: Option<String>,
    /// The policy stopped for a reason that sends the delta by post-copy.
    post_copy: bool,
}

impl Precopy {
    /// Check the program can be dumped and start tracking its writes.
    pub fn start(pid: i32, dir: &Path, opts: &PrecopyOptions) -> Result<Precopy> {
        dump::preflight_all(pid, &opts.dump)?;
        dump::prepare_dir(dir)?;
        let tracker = track::open_tracker(pid, opts.tracker)?;
        let stop_policy = policy::build(&opts.policy, &opts.limits);
        let now = Instant::now();
        Ok(Precopy {
            pid,
            dir: dir.to_path_buf(),
            opts: opts.clone(),
            tracker,
            stop_policy,
            start: now,
            round_start: now,
            rounds: Vec::new(),
            infos: Vec::new(),
            table: Vec::new(),
            stop_reason: None,
            stop_reason_before_forced: None,
            post_copy: false,
        })
    }

    /// Run the next round unless the stop policy says the rest is small
    /// enough (then `None`). Round 0 always runs.
    pub fn next_round(&mut self) -> Result<Option<RoundReport>> {
        let k = self.rounds.len() as u32;
        if self.stop_reason.is_some() {
            return Ok(None);
        }
        if k > 0 {
            if let Decision::Stop(reason) = self
                .stop_policy
                .decide(&self.infos, self.start.elapsed().as_secs_f64() * 1e3)
            {
                self.post_copy = self.stop_policy.post_copy(&reason);
                self.stop_reason = Some(reason.to_string());
                return Ok(None);
            }
        }
        self.run_round().map(Some)
    }

    /// Run one more round whatever the policy says (e.g. after waiting for
    /// earlier rounds to reach the destination, which let writes pile up).
    pub fn force_round(&mut self) -> Result<RoundReport> {
        if let Some(reason) = self.stop_reason.take() {
            debug!(reason, "one more round after the policy's stop");
            self.stop_reason_before_forced = Some(reason);
        }
        let r = self.run_round()?;
        Ok(r)
    }

    fn run_round(&mut self) -> Result<RoundReport> {
        let k = self.rounds.len() as u32;
        let t = Instant::now();
        let interval_ms = t.duration_since(self.round_start).as_secs_f64() * 1e3;
        self.round_start = t;
        // Round 0 needs no dirty set: everything is copied.
        let set = if k == 0 {
            None
        } else {
            Some(self.tracker.collect()?)
        };
        let rdir = self.dir.join(format!("round-{k}"));
        let parent = (k > 0).then(|| PathBuf::from(format!("../round-{}", k - 1)));
        let (stats, next) = dump::pre_dump_round(
            self.pid,
            &rdir,
            parent.as_deref(),
            &self.table,
            set.as_ref(),
            self.opts.dump.zstd_level,
        )?;
        self.table = next;
        let ms = t.elapsed().as_secs_f64() * 1e3;
        let dirty_pages = set.as_ref().map_or(stats.pages_seen, |s| s.total_pages());
        info!(
            round = k,
            dirty_pages,
            stored = stats.pages_stored,
            ms,
            "pre-copy round"
        );
        self.infos.push(RoundInfo {
            round: k,
            dirty_pages: stats.pages_stored,
            dirty_bytes: stats.pages_bytes,
            hash: stats.round_hash,
            copy_ms: ms,
            interval_ms: if k == 0 { ms } else { interval_ms },
        });
        self.rounds.push(RoundReport {
            round: k,
            dir: rdir,
            dirty_pages,
            stored_pages: stats.pages_stored,
            stored_bytes: stats.stored_bytes,
            hash: stats.round_hash,
            ms,
        });
        Ok(self.rounds[self.rounds.len() - 1].clone())
    }

    /// Stop the program, take what was written since the last round while
    /// it cannot write more, remove the tracker and write the final image
    /// into the top directory. The program stays stopped: the caller kills
    /// or thaws it. On error it is released, running and untouched.
    pub fn freeze(self) -> Result<Frozen> {
        self.freeze_with(false)
    }

    /// [`freeze`](Self::freeze) for post-copy: the pages of private
    /// anonymous memory written since the last round stay out of the image
    /// (listed in `deferred.img` and in the report's `final_stats.deferred`)
    /// and are sent once the program runs at the destination. Only an exact
    /// tracker (uffd-wp, hash) knows which those are; with soft-dirty every
    /// page goes in the image as usual.
    pub fn freeze_deferring(self) -> Result<Frozen> {
        self.freeze_with(true)
    }

    fn freeze_with(mut self, defer: bool) -> Result<Frozen> {
        let t0 = Instant::now();
        let mut seized = Seized::attach(self.pid)?;
        let seize_ms = t0.elapsed().as_secs_f64() * 1e3;
        let set = self.tracker.collect_stopped()?;
        debug!(
            seize_ms,
            collect_ms = t0.elapsed().as_secs_f64() * 1e3,
            "frozen: last dirty set collected"
        );
        let mut final_opts = self.opts.dump.clone();
        final_opts.parent = self
            .rounds
            .last()
            .map(|r| PathBuf::from(format!("round-{}", r.round)));
        // The tracker stays registered while frozen: removing it is only
        // needed if the program resumes here (see `Frozen`).
        let final_stats = dump::dump_frozen(
            &mut seized,
            t0,
            &self.dir,
            &final_opts,
            &self.table,
            Some(dump::Tracking {
                dirty: &set,
                maps: self.tracker.maps().to_vec(),
                // uffd-wp reports zapped pages as written (kernel-notes.md);
                // the hash tracker compares contents. Soft-dirty loses the
                // bit of a zapped page.
                exact: matches!(self.tracker.name(), "uffd-wp" | "hash"),
                defer,
            }),
            &dump::CrossProcess::alone(&final_opts),
        )?;
        let stop_reason = match (self.stop_reason, self.stop_reason_before_forced) {
            (Some(r), _) => r,
            (None, Some(r)) => {
                format!("{r} (then rounds in flight were awaited and one more round taken)")
            }
            (None, None) => "no round was run".to_string(),
        };
        Ok(Frozen {
            keep_net_lock: final_opts.keep_net_lock,
            seized: vec![seized],
            t0,
            report: PrecopyReport {
                tracker: self.tracker.name(),
                policy: self.stop_policy.name(),
                rounds: self.rounds,
                stop_reason,
                final_stats,
                final_dirty_pages: set.total_pages(),
            },
            tracker: Some(self.tracker),
        })
    }

    /// Page compression for the following rounds and the final image.
    pub fn set_zstd_level(&mut self, level: Option<i32>) {
        self.opts.dump.zstd_level = level;
    }

    /// Whether the policy chose post-copy for the final delta (then
    /// freeze with [`freeze_deferring`](Self::freeze_deferring)).
    pub fn post_copy_chosen(&self) -> bool {
        self.post_copy
    }

    /// Tell the policy how fast the link carried a round (bytes/ms).
    pub fn observe_link(&mut self, bytes_per_ms: f64) {
        self.stop_policy.observe_link(bytes_per_ms);
    }

    pub fn rounds(&self) -> &[RoundReport] {
        &self.rounds
    }
}

/// A program stopped for good by a pre-copy, its final image written: it
/// must be killed (the copy elsewhere runs) or thawed (it carries on).
/// Dropping it thaws it. A dirty-page tracker still registered in it is
/// removed before it runs again (and not at all if it is killed).
#[derive(Debug)]
pub struct Frozen {
    tracker: Option<Box<dyn track::DirtyTracker>>,
    /// See [`DumpOptions::keep_net_lock`].
    keep_net_lock: bool,
    /// The program: one process, or a tree's (root first).
    seized: Vec<Seized>,
    t0: Instant,
    pub report: PrecopyReport,
}

impl Frozen {
    pub fn pid(&self) -> i32 {
        self.seized.first().map_or(0, |s| s.pid)
    }

    /// When the program was stopped.
    pub fn frozen_at(&self) -> Instant {
        self.t0
    }

    /// How long the program has been stopped.
    pub fn stopped_ms(&self) -> f64 {
        self.t0.elapsed().as_secs_f64() * 1e3
    }

    /// Remove the tracker (the program is still stopped).
    fn untrack(&mut self) -> Result<()> {
        match self.tracker.take() {
            Some(mut t) => t.finish(),
            None => Ok(()),
        }
    }

    /// From now on, if the program is let go without [`kill`](Self::kill)
    /// (even by the kernel, should tern die), it stays stopped: a SIGSTOP
    /// is queued while it is still traced.
    pub fn stop_when_released(&self) {
        for s in &self.seized {
            let _ = tern_sys::signal(s.pid, libc::SIGSTOP);
        }
    }

    /// Undo [`stop_when_released`](Self::stop_when_released): a SIGCONT
    /// removes the queued SIGSTOP (the kernel drops pending stop signals
    /// when SIGCONT is sent; a handler of SIGCONT, if any, runs once).
    pub fn cancel_stop_when_released(&self) {
        for s in &self.seized {
            let _ = tern_sys::signal(s.pid, libc::SIGCONT);
        }
    }

    /// The nftables table locking its TCP connections, and the fds of the
    /// connections in repair mode.
    pub fn held_connections(&self) -> (Option<String>, Vec<i32>) {
        match self.seized.first() {
            Some(s) => (
                s.net
                    .lock_name()
                    .or(s.net_lock_left.as_ref().map(|l| l.name()))
                    .map(str::to_string),
                s.net.repaired_fds(),
            ),
            None => (None, Vec::new()),
        }
    }

    /// Pages left out of the final image for post-copy (sorted addresses).
    pub fn deferred(&self) -> &[u64] {
        &self.report.final_stats.deferred
    }

    /// Let the program carry on as if nothing happened.
    pub fn thaw(mut self) -> Result<PrecopyReport> {
        let untracked = self.untrack();
        // Children first, as a tree dump lets go of them.
        for mut s in self.seized.drain(..).rev() {
            s.release()?;
        }
        untracked?;
        self.report.final_stats.frozen_ms = self.stopped_ms();
        Ok(self.report.clone())
    }

    /// Let go of the program but keep it stopped (SIGSTOP): for when it is
    /// not known whether its copy elsewhere runs.
    pub fn leave_stopped(mut self) -> Result<PrecopyReport> {
        let untracked = self.untrack();
        for mut s in self.seized.drain(..).rev() {
            s.release_stopped()?;
        }
        untracked?;
        Ok(self.report.clone())
    }

    /// End the program (its image lives on elsewhere).
    pub fn kill(mut self) -> Result<PrecopyReport> {
        for mut s in self.seized.drain(..).rev() {
            // Tearing down its memory (a second per few GiB of kernel work)
            // must not take CPU from the copy that now runs elsewhere, which
            // on one machine is this one's neighbour.
            tern_sys::set_idle_priority(s.pid);
            s.kill()?;
            dump::settle_net_lock(&mut s, self.keep_net_lock)?;
        }
        // Gone with the process: dropping the tracker only closes our fd.
        self.tracker = None;
        self.report.final_stats.frozen_ms = self.stopped_ms();
        Ok(self.report.clone())
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        if !self.seized.is_empty() {
            if let Err(e) = self.untrack() {
                tracing::warn!("removing the tracker from process {}: {e}", self.pid());
            }
            // Seized's own drop releases each process (children first).
            while self.seized.pop().is_some() {}
        }
    }
}

/// Stop-and-copy: stop the program and write its whole image into `dir`
/// (no rounds); the program stays stopped like after [`Precopy::freeze`].
/// A process with children is taken with its whole tree (as `tern dump`
/// takes it), every process stopped.
pub fn freeze_whole(pid: i32, dir: &Path, opts: &DumpOptions) -> Result<Frozen> {
    let (seized, final_stats, t0) = if crate::tree::has_children(pid)? {
        let crate::tree::StoppedTree { seized, stats, t0 } =
            crate::tree::dump_tree_stopped(pid, dir, opts)?;
        // The root's figures; the tree's pages in all for the delta.
        let mut root = stats.first().map(|(_, s)| s.clone()).unwrap_or_default();
        root.pages_seen = stats.iter().map(|(_, s)| s.pages_seen).sum();
        (seized, root, t0)
    } else {
        dump::preflight(pid)?;
        dump::prepare_dir(dir)?;
        let t0 = Instant::now();
        let mut seized = Seized::attach(pid)?;
        let stats = dump::dump_frozen(
            &mut seized,
            t0,
            dir,
            opts,
            &[],
            None,
            &dump::CrossProcess::alone(opts),
        )?;
        (vec![seized], stats, t0)
    };
    Ok(Frozen {
        keep_net_lock: opts.keep_net_lock,
        tracker: None,
        seized,
        t0,
        report: PrecopyReport {
            tracker: "none",
            policy: "simple (stop and copy)".into(),
            rounds: Vec::new(),
            stop_reason: "no pre-copy".into(),
            final_dirty_pages: final_stats.pages_seen,
            final_stats,
        },
    })
}
