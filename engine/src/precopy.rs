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
use crate::tree::leaving;
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
///
/// A process with children is taken with its whole tree: every process
/// has a tracker of its own and its pages in each round (the root's in
/// `round-K`, the others' in `round-K/proc-PID`, which a `tree.img`
/// listing them marks as a tree's round); processes that appear between
/// rounds join (their first round whole), those that exit leave. The
/// freeze stops the whole tree and writes each process's last delta.
#[derive(Debug)]
pub struct Precopy {
    pid: i32,
    /// Whether the program is a tree (it had children at the start).
    tree: bool,
    dir: PathBuf,
    opts: PrecopyOptions,
    /// The root first.
    members: Vec<Member>,
    stop_policy: Box<dyn policy::StopPolicy>,
    start: Instant,
    round_start: Instant,
    rounds: Vec<RoundReport>,
    infos: Vec<RoundInfo>,
    stop_reason: Option<String>,
    /// The policy's reason when rounds were forced after it said stop.
    stop_reason_before_forced: Option<String>,
    /// The policy stopped for a reason that sends the delta by post-copy.
    post_copy: bool,
}

/// One process under pre-copy.
#[derive(Debug)]
struct Member {
    pid: i32,
    tracker: Box<dyn track::DirtyTracker>,
    /// Its page table as of its last round.
    table: Vec<(u64, u64)>,
    /// Rounds that hold its pages; its next round is whole while 0.
    rounds: u32,
    /// The cgroups its last round found it in.
    cgroups: Vec<tern_wire::Cgroup>,
}

impl Member {
    fn open(pid: i32, kind: TrackerKind) -> Result<Member> {
        Ok(Member {
            pid,
            tracker: track::open_tracker(pid, kind)?,
            table: Vec::new(),
            rounds: 0,
            cgroups: Vec::new(),
        })
    }

    /// The tracker reports every change since the last round (writes,
    /// zapped pages, new mappings): uffd-wp reports zapped pages as
    /// written (kernel-notes.md), the hash tracker compares contents;
    /// soft-dirty loses the bit of a zapped page.
    fn exact(&self) -> bool {
        matches!(self.tracker.name(), "uffd-wp" | "hash")
    }
}

/// Whether `pid` has children (then pre-copy takes its tree); refused if
/// `policy` may end in post-copy, which takes one process for now.
pub(crate) fn is_tree_for(pid: i32, policy: &PolicySpec) -> Result<bool> {
    let tree = crate::tree::has_children(pid)?;
    if tree && policy.may_post_copy() {
        return Err(crate::error::EngineError::Unsupported {
            pid,
            reason: format!(
                "it has child processes: post-copy (--policy {policy}) takes one process for now; --policy adaptive moves the tree live"
            ),
        });
    }
    Ok(tree)
}

/// One process's part of round `k` into `dir`: (its figures, the pages
/// its tracker reported, or all it has in its first round).
fn member_round(
    m: &mut Member,
    k: u32,
    root: i32,
    dir: &Path,
    opts: &PrecopyOptions,
) -> Result<(DumpStats, u64)> {
    // A process's first round needs no dirty set: all is copied.
    let set = if m.rounds == 0 {
        None
    } else {
        Some(m.tracker.collect()?)
    };
    let parent = (m.rounds > 0).then(|| round_of(k - 1, root, m.pid, 1));
    let round = dump::pre_dump_round(
        m.pid,
        dir,
        parent.as_deref(),
        &m.table,
        set.as_ref(),
        opts.dump.zstd_level,
    )?;
    let stats = round.stats;
    m.table = round.table;
    m.cgroups = round.cgroups;
    m.rounds += 1;
    let dirty = set.as_ref().map_or(stats.pages_seen, |s| s.total_pages());
    Ok((stats, dirty))
}

/// Where process `pid` of a program rooted at `root` keeps its image
/// inside the image directory `top`.
fn process_dir(top: &Path, root: i32, pid: i32) -> PathBuf {
    if pid == root {
        top.to_path_buf()
    } else {
        top.join(tern_wire::tree_process_dir(pid))
    }
}

/// Round `k`'s image of `pid`, as a path relative to an image of `pid` at
/// `depth` levels below the top directory (0: the final image's level).
fn round_of(k: u32, root: i32, pid: i32, depth: usize) -> PathBuf {
    let mut p = PathBuf::new();
    let own = usize::from(pid != root);
    for _ in 0..depth + own {
        p.push("..");
    }
    process_dir(&p.join(format!("round-{k}")), root, pid)
}

impl Precopy {
    /// Check the program can be dumped and start tracking its writes.
    pub fn start(pid: i32, dir: &Path, opts: &PrecopyOptions) -> Result<Precopy> {
        let tree = is_tree_for(pid, &opts.policy)?;
        if tree {
            dump::preflight_root(pid)?;
        } else {
            dump::preflight_all(pid, &opts.dump)?;
        }
        dump::prepare_dir(dir)?;
        let stop_policy = policy::build(&opts.policy, &opts.limits);
        let now = Instant::now();
        let mut pc = Precopy {
            pid,
            tree,
            dir: dir.to_path_buf(),
            opts: opts.clone(),
            members: vec![Member::open(pid, opts.tracker)?],
            stop_policy,
            start: now,
            round_start: now,
            rounds: Vec::new(),
            infos: Vec::new(),
            stop_reason: None,
            stop_reason_before_forced: None,
            post_copy: false,
        };
        pc.list_members()?;
        Ok(pc)
    }

    /// A tree's processes as they are now: those that exited leave, new
    /// ones join with a tracker of their own. Returns the listing.
    fn list_members(&mut self) -> Result<Vec<tern_wire::TreeProcess>> {
        if !self.tree {
            return Ok(Vec::new());
        }
        let mut procs = crate::tree::list_tree(self.pid)?;
        self.members
            .retain(|m| procs.iter().any(|p| p.pid == m.pid));
        let mut gone = Vec::new();
        for p in &procs {
            if !self.members.iter().any(|m| m.pid == p.pid) {
                debug!(pid = p.pid, parent = p.ppid, "a process joins the pre-copy");
                match Member::open(p.pid, self.opts.tracker) {
                    Ok(m) => self.members.push(m),
                    // Exited as it joined.
                    Err(_) if leaving(p.pid) => gone.push(p.pid),
                    Err(e) => return Err(e),
                }
            }
        }
        procs.retain(|p| !gone.contains(&p.pid));
        Ok(procs)
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
        let mut procs = self.list_members()?;
        let rdir = self.dir.join(format!("round-{k}"));
        let mut each = Vec::with_capacity(self.members.len());
        let mut dirty_pages = 0;
        let mut tree_hash = xxhash_rust::xxh3::Xxh3::new();
        let mut left = Vec::new();
        for m in &mut self.members {
            let pdir = process_dir(&rdir, self.pid, m.pid);
            let (stats, dirty) = match member_round(m, k, self.pid, &pdir, &self.opts) {
                Ok(r) => r,
                // A process of the tree that exits during the round leaves
                // it (the root cannot: its tree is the program).
                Err(e) if m.pid != self.pid && leaving(m.pid) => {
                    debug!(
                        pid = m.pid,
                        "a process left the pre-copy during a round: {e}"
                    );
                    let _ = std::fs::remove_dir_all(&pdir);
                    left.push(m.pid);
                    continue;
                }
                Err(e) => return Err(e),
            };
            dirty_pages += dirty;
            tree_hash.update(&m.pid.to_le_bytes());
            tree_hash.update(&stats.round_hash.to_le_bytes());
            each.push((m.pid, stats));
        }
        self.members.retain(|m| !left.contains(&m.pid));
        let mut all = crate::tree::tree_totals(&each);
        if self.tree {
            // Marks the round as a tree's (the destination keeps it whole
            // for the final image's chain) and says who is in it: a process
            // whose parent left the round leaves it too.
            while let Some(orphan) = procs
                .iter()
                .skip(1)
                .position(|p| left.contains(&p.pid) || !procs.iter().any(|q| q.pid == p.ppid))
            {
                let gone = procs.remove(orphan + 1);
                if !left.contains(&gone.pid) {
                    let _ = std::fs::remove_dir_all(process_dir(&rdir, self.pid, gone.pid));
                    self.members.retain(|m| m.pid != gone.pid);
                }
            }
            let listing = tern_wire::Tree {
                processes: procs,
                ..Default::default()
            };
            tern_wire::write_record(
                &rdir.join(tern_wire::TREE_FILE),
                tern_wire::RecordKind::Tree,
                &listing,
            )?;
            all.round_hash = tree_hash.digest();
        }
        let ms = t.elapsed().as_secs_f64() * 1e3;
        info!(
            round = k,
            processes = self.members.len(),
            dirty_pages,
            stored = all.pages_stored,
            ms,
            "pre-copy round"
        );
        self.infos.push(RoundInfo {
            round: k,
            dirty_pages: all.pages_stored,
            dirty_bytes: all.pages_bytes,
            hash: all.round_hash,
            copy_ms: ms,
            interval_ms: if k == 0 { ms } else { interval_ms },
        });
        self.rounds.push(RoundReport {
            round: k,
            dir: rdir,
            dirty_pages,
            stored_pages: all.pages_stored,
            stored_bytes: all.stored_bytes,
            hash: all.round_hash,
            ms,
        });
        Ok(self.rounds[self.rounds.len() - 1].clone())
    }

    /// Stop the program, take what was written since the last round while
    /// it cannot write more, remove the tracker and write the final image
    /// into the top directory. The program stays stopped: the caller kills
    /// or thaws it. On error it is released, running and untouched.
    pub fn freeze(self) -> Result<Frozen> {
        if self.tree {
            return self.freeze_tree();
        }
        self.freeze_with(false)
    }

    /// [`freeze`](Self::freeze) for post-copy: the pages of private
    /// anonymous memory written since the last round stay out of the image
    /// (listed in `deferred.img` and in the report's `final_stats.deferred`)
    /// and are sent once the program runs at the destination. Only an exact
    /// tracker (uffd-wp, hash) knows which those are; with soft-dirty every
    /// page goes in the image as usual. (A tree never gets here: `start`
    /// refuses post-copy for one.)
    pub fn freeze_deferring(self) -> Result<Frozen> {
        self.freeze_with(true)
    }

    fn freeze_with(mut self, defer: bool) -> Result<Frozen> {
        let t0 = Instant::now();
        let mut seized = Seized::attach(self.pid)?;
        let seize_ms = t0.elapsed().as_secs_f64() * 1e3;
        let mut m = self.members.remove(0);
        let set = m.tracker.collect_stopped()?;
        debug!(
            seize_ms,
            collect_ms = t0.elapsed().as_secs_f64() * 1e3,
            "frozen: last dirty set collected"
        );
        let mut final_opts = self.opts.dump.clone();
        final_opts.parent = self
            .rounds
            .last()
            .map(|r| round_of(r.round, self.pid, self.pid, 0));
        // The tracker stays registered while frozen: removing it is only
        // needed if the program resumes here (see `Frozen`).
        let final_stats = dump::dump_frozen(
            &mut seized,
            t0,
            &self.dir,
            &final_opts,
            &m.table,
            Some(dump::Tracking {
                dirty: &set,
                maps: m.tracker.maps().to_vec(),
                exact: m.exact(),
                defer,
                cgroups: &m.cgroups,
            }),
            &dump::CrossProcess::alone(&final_opts),
        )?;
        let report = self.report(final_stats, set.total_pages(), m.tracker.name());
        Ok(Frozen {
            streams: Vec::new(),
            keep_net_lock: final_opts.keep_net_lock,
            seized: vec![seized],
            t0,
            report,
            trackers: vec![m.tracker],
        })
    }

    /// [`freeze`](Self::freeze) for a tree: every process stopped (as
    /// `tern dump` stops a tree), each one's image written over its last
    /// round (a process that joined since is taken whole). Shared
    /// anonymous memory is read whole: another process's writes to it do
    /// not show in this one's tracker.
    fn freeze_tree(mut self) -> Result<Frozen> {
        let root = self.pid;
        let last = self.rounds.last().map(|r| r.round);
        let mut final_dirty = 0u64;
        let members = &mut self.members;
        let stopped =
            crate::tree::dump_tree_stopped(root, &self.dir, &self.opts.dump, &mut |pid| {
                let (Some(k), Some(m)) = (last, members.iter_mut().find(|m| m.pid == pid)) else {
                    return Ok(None);
                };
                if m.rounds == 0 {
                    return Ok(None);
                }
                let set = m.tracker.collect_stopped()?;
                final_dirty += set.total_pages();
                let maps = m.tracker.maps().to_vec();
                let shared = maps
                    .iter()
                    .filter(|e| e.is_shmem_anon())
                    .map(|e| (e.start, e.end));
                Ok(Some(crate::tree::Prior {
                    parent: round_of(k, root, pid, 0),
                    table: std::mem::take(&mut m.table),
                    dirty: set.with_ranges(shared),
                    exact: m.exact(),
                    maps,
                    cgroups: std::mem::take(&mut m.cgroups),
                }))
            })?;
        let name = self.members.first().map_or("none", |m| m.tracker.name());
        let final_stats = crate::tree::tree_totals(&stopped.stats);
        let report = self.report(final_stats, final_dirty, name);
        info!(
            root,
            processes = stopped.seized.len(),
            "tree frozen, last deltas written"
        );
        Ok(Frozen {
            streams: Vec::new(),
            keep_net_lock: self.opts.dump.keep_net_lock,
            seized: stopped.seized,
            t0: stopped.t0,
            report,
            trackers: self.members.drain(..).map(|m| m.tracker).collect(),
        })
    }

    fn report(
        &mut self,
        final_stats: DumpStats,
        final_dirty_pages: u64,
        tracker: &'static str,
    ) -> PrecopyReport {
        let stop_reason = match (
            self.stop_reason.take(),
            self.stop_reason_before_forced.take(),
        ) {
            (Some(r), _) => r,
            (None, Some(r)) => {
                format!("{r} (then rounds in flight were awaited and one more round taken)")
            }
            (None, None) => "no round was run".to_string(),
        };
        PrecopyReport {
            tracker,
            policy: self.stop_policy.name(),
            rounds: std::mem::take(&mut self.rounds),
            stop_reason,
            final_stats,
            final_dirty_pages,
        }
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
    /// Each process's tracker, still registered in it.
    trackers: Vec<Box<dyn track::DirtyTracker>>,
    /// See [`DumpOptions::keep_net_lock`].
    keep_net_lock: bool,
    /// The program: one process, or a tree's (root first).
    seized: Vec<Seized>,
    t0: Instant,
    pub report: PrecopyReport,
    /// Each process's pages left out of its image for a stream after it
    /// (stop-and-copy: [`DumpOptions::defer_private_anon`]), in the tree's
    /// order, only processes that have some.
    streams: Vec<(i32, Vec<u64>)>,
}

impl Frozen {
    /// The pages to stream after the image, process by process.
    pub fn streams(&self) -> &[(i32, Vec<u64>)] {
        &self.streams
    }

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

    /// Remove the trackers (the program is still stopped).
    fn untrack(&mut self) -> Result<()> {
        let mut first_error = Ok(());
        for mut t in self.trackers.drain(..) {
            if let Err(e) = t.finish() {
                if first_error.is_ok() {
                    first_error = Err(e);
                }
            }
        }
        first_error
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

    /// The other processes of a tree, as a pending-migration record holds
    /// them: start time, connection lock, sockets in repair.
    pub fn held_others(&self) -> Vec<crate::pending::Held> {
        self.seized
            .iter()
            .skip(1)
            .map(|s| crate::pending::Held {
                pid: s.pid,
                start: tern_sys::proc::start_time(s.pid).unwrap_or(0),
                lock_table: s
                    .net
                    .lock_name()
                    .or(s.net_lock_left.as_ref().map(|l| l.name()))
                    .map(str::to_string),
                repaired_fds: s.net.repaired_fds(),
            })
            .collect()
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
        // Gone with the processes: dropping a tracker only closes our fd.
        self.trackers.clear();
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
/// takes it), every process stopped. With `defer_private_anon`, each
/// process's private anonymous pages are left out of its image, to be
/// streamed after it ([`Frozen::streams`]).
pub fn freeze_whole(pid: i32, dir: &Path, opts: &DumpOptions) -> Result<Frozen> {
    let (seized, final_stats, t0, streams) = if crate::tree::has_children(pid)? {
        let crate::tree::StoppedTree { seized, stats, t0 } =
            crate::tree::dump_tree_stopped(pid, dir, opts, &mut |_| Ok(None))?;
        let streams = stats
            .iter()
            .filter(|(_, s)| !s.deferred.is_empty())
            .map(|(p, s)| (*p, s.deferred.clone()))
            .collect();
        (seized, crate::tree::tree_totals(&stats), t0, streams)
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
        let streams = if stats.deferred.is_empty() {
            Vec::new()
        } else {
            vec![(pid, stats.deferred.clone())]
        };
        (vec![seized], stats, t0, streams)
    };
    Ok(Frozen {
        streams,
        keep_net_lock: opts.keep_net_lock,
        trackers: Vec::new(),
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
