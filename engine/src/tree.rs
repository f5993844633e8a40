//! Process trees: `tern dump` of a process with children takes the whole
//! tree under it (children, grandchildren, ...).
//!
//! Every process is stopped with ptrace before anything is read: a parent
//! is seized before its children are listed, so none can fork past the
//! freeze. Then what processes share is found:
//! - pipes whose ends several processes hold (the data is read once and
//!   kept in `tree.img`),
//! - open file descriptions several processes hold (`kcmp(KCMP_FILE)`:
//!   inherited fds, sharing one offset),
//! - shared anonymous memory mapped by several processes (the same shmem
//!   inode in their maps),
//!
//! and each process is dumped into an image of its own: the root's in the
//! image directory, the others in `proc-PID/` below it. `tree.img` is
//! written before the root's inventory, which marks the image complete.
//! On any failure every process is let go untouched.

use crate::dump::{self, CrossProcess, DumpOptions, DumpStats, Freezer};
use crate::error::{Context, EngineError, Result};
use crate::seize::{FrozenSeize, Seized};
use crate::track::DirtySet;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Instant;
use tern_sys::freezer::CgroupFreezer;
pub(crate) use tern_sys::proc::leaving;
use tern_sys::proc::{self, MapEntry};
use tern_wire as wire;
use tracing::info;

#[derive(Debug, Clone)]
pub struct TreeDumpStats {
    /// Each process (root first) with its dump's figures.
    pub processes: Vec<(i32, DumpStats)>,
    /// How long the tree was stopped.
    pub frozen_ms: f64,
}

fn refuse(pid: i32, reason: String) -> EngineError {
    EngineError::Unsupported { pid, reason }
}

/// pid, ppid, pgid, sid from /proc/PID/stat.
fn ids(pid: i32) -> Result<wire::TreeProcess> {
    let stat = procfs::process::Process::new(pid)
        .and_then(|p| p.stat())
        .ctx(pid, || "read stat".into())?;
    Ok(wire::TreeProcess {
        pid,
        ppid: stat.ppid,
        pgid: stat.pgrp,
        sid: stat.session,
    })
}

/// Child `child` of `parent`, if it is a zombie (exited, not reaped).
fn zombie(parent: i32, child: i32) -> Option<wire::Zombie> {
    let stat = procfs::process::Process::new(child)
        .and_then(|p| p.stat())
        .ok()?;
    (stat.state == 'Z').then(|| wire::Zombie {
        pid: child,
        ppid: parent,
        pgid: stat.pgrp,
        sid: stat.session,
        status: stat.exit_code.unwrap_or(0),
    })
}

/// Whether `pid` has children.
pub fn has_children(pid: i32) -> Result<bool> {
    Ok(!proc::list_children(pid)
        .ctx(pid, || "list children".into())?
        .is_empty())
}

/// Dump the tree under `root` into `dir`.
pub fn dump_tree(root: i32, dir: &Path, opts: &DumpOptions) -> Result<TreeDumpStats> {
    let StoppedTree {
        mut seized,
        stats,
        t0,
    } = dump_tree_stopped(root, dir, opts, &mut |_| Ok(None))?;
    for s in seized.iter_mut().rev() {
        if opts.leave_running {
            s.release()?;
        } else {
            s.kill()?;
        }
    }
    let frozen_ms = t0.elapsed().as_secs_f64() * 1e3;
    info!(root, processes = seized.len(), frozen_ms, "tree dumped");
    Ok(TreeDumpStats {
        processes: stats,
        frozen_ms,
    })
}

/// A tree whose image is written, every process still stopped.
pub(crate) struct StoppedTree {
    /// Root first; dropped, they are let go.
    pub seized: Vec<Seized>,
    /// Each process's figures, root first.
    pub stats: Vec<(i32, DumpStats)>,
    /// When the stop began.
    pub t0: Instant,
}

/// What a pre-copy already holds of one process of a tree: its final image
/// is a delta over its last round.
pub(crate) struct Prior {
    /// The last round's image of the process, relative to its final image.
    pub parent: PathBuf,
    /// That round's page table.
    pub table: Vec<(u64, u64)>,
    /// Pages written since (as its tracker reports them, stopped).
    pub dirty: DirtySet,
    pub maps: Vec<MapEntry>,
    /// The tracker reports every change (see [`dump::Tracking::exact`]).
    pub exact: bool,
    /// The cgroups the last round found it in.
    pub cgroups: Vec<wire::Cgroup>,
}

/// Stop the tree under `root` and write its image into `dir`, leaving
/// every process stopped. `prior(pid)`, asked once each process is
/// stopped, says what a pre-copy holds of it already (`None`: the whole
/// process goes into the image). On error the tree runs on.
pub(crate) fn dump_tree_stopped(
    root: i32,
    dir: &Path,
    opts: &DumpOptions,
    prior: &mut dyn FnMut(i32) -> Result<Option<Prior>>,
) -> Result<StoppedTree> {
    if opts.parent.is_some() {
        return Err(refuse(
            root,
            "incremental dumps (--parent) of process trees are not supported yet".into(),
        ));
    }
    dump::preflight_root(root)?;
    dump::prepare_dir(dir)?;
    let t0 = Instant::now();
    let (mut seized, procs, zombies) = seize_tree(root, opts.freezer)?;
    let (tree, sockets) = find_shared(&procs)?;
    let cross = CrossProcess {
        pipes: tree.pipes.iter().map(|p| p.id).collect(),
        sockets,
        external: Default::default(),
        members: procs.iter().map(|p| p.pid).collect(),
        mounts: tern_state::namespaces::tree_mounts(root)?,
    };
    // Children first; the root's inventory last marks the image complete.
    let mut stats = Vec::with_capacity(procs.len());
    for (k, s) in seized.iter_mut().enumerate().skip(1) {
        let pdir = dir.join(wire::tree_process_dir(procs[k].pid));
        dump::prepare_dir(&pdir)?;
        let st = dump_member(s, t0, &pdir, opts, prior(procs[k].pid)?, &cross)?;
        stats.push((procs[k].pid, st));
    }
    let mut tree = tree;
    tree.processes = procs.clone();
    tree.zombies = zombies;
    wire::write_record(&dir.join(wire::TREE_FILE), wire::RecordKind::Tree, &tree)?;
    let root_cross = CrossProcess {
        external: opts.external.clone(),
        ..cross
    };
    let st = dump_member(&mut seized[0], t0, dir, opts, prior(root)?, &root_cross)?;
    stats.insert(0, (root, st));
    Ok(StoppedTree { seized, stats, t0 })
}

/// One stopped process of a tree into `dir`: whole, or over its last
/// pre-copy round.
fn dump_member(
    seized: &mut Seized,
    t0: Instant,
    dir: &Path,
    opts: &DumpOptions,
    prior: Option<Prior>,
    cross: &CrossProcess,
) -> Result<DumpStats> {
    let Some(prior) = prior else {
        return dump::dump_frozen(seized, t0, dir, opts, &[], None, cross);
    };
    let opts = DumpOptions {
        parent: Some(prior.parent),
        // The destination restores a tree from the image chain on disk,
        // which needs each final image's whole page table.
        delta_table: false,
        ..opts.clone()
    };
    let tracking = dump::Tracking {
        dirty: &prior.dirty,
        maps: prior.maps,
        exact: prior.exact,
        defer: false,
        cgroups: &prior.cgroups,
    };
    dump::dump_frozen(seized, t0, dir, &opts, &prior.table, Some(tracking), cross)
}

/// The tree under `root` as it is now, root first and every parent before
/// its children, each process checked to be one tern can dump. The tree
/// runs on: a pre-copy lists it again each round.
pub(crate) fn list_tree(root: i32) -> Result<Vec<wire::TreeProcess>> {
    let mut procs = vec![ids(root)?];
    let mut next = 0;
    while next < procs.len() {
        let parent = procs[next].pid;
        next += 1;
        let children = match proc::list_children(parent) {
            Ok(c) => c,
            // A process that exited meanwhile is leaving the tree (its
            // round says so); its children, if any, leave with it.
            Err(_) if parent != root && leaving(parent) => continue,
            Err(e) => return Err(e).ctx(parent, || "list children".into()),
        };
        for child in children {
            // A child that has exited (or just did) is leaving the tree;
            // if it is still there at the freeze, the stop is tried again.
            if leaving(child) {
                continue;
            }
            let listed = check_descendant(root, parent, child).and_then(|()| ids(child));
            match listed {
                Ok(p) => procs.push(p),
                Err(_) if leaving(child) => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(procs)
}

/// A tree's figures in one: the root's, with the pages of every process.
pub(crate) fn tree_totals(stats: &[(i32, DumpStats)]) -> DumpStats {
    let mut all = stats.first().map(|(_, s)| s.clone()).unwrap_or_default();
    for (_, s) in stats.iter().skip(1) {
        all.pages_seen += s.pages_seen;
        all.pages_stored += s.pages_stored;
        all.pages_bytes += s.pages_bytes;
        all.stored_bytes += s.stored_bytes;
    }
    all
}

/// How often the stop of a tree is tried while children are exiting.
const STOP_TRIES: u32 = 50;

/// A stopped tree: its seized processes, their ids, and its zombies.
type StoppedProcesses = (Vec<Seized>, Vec<wire::TreeProcess>, Vec<wire::Zombie>);

/// Stop every process of the tree under `root`; children that have exited
/// and wait to be reaped are listed as zombies. A stop that meets a child
/// still exiting, or one gone between listing and seizing, lets the tree
/// go at once and tries again (50 times, 2 ms apart) before it refuses.
fn seize_tree(root: i32, freezer: Freezer) -> Result<StoppedProcesses> {
    let mut tries = 0;
    loop {
        let stopped = match freezer {
            Freezer::Ptrace => seize_in_turn(root),
            Freezer::Cgroup => seize_frozen(root),
        };
        match stopped {
            Err(e) if tries < STOP_TRIES && tree_changing(root, &e) => {
                tries += 1;
                tracing::debug!(tries, "the tree changed while it was being stopped: {e}");
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
            other => return other,
        }
    }
}

/// Whether the stop of the tree under `root` failed with `e` because the
/// tree was changing: a child exiting, or a process gone meanwhile.
fn tree_changing(root: i32, e: &EngineError) -> bool {
    !leaving(root)
        && matches!(
            e,
            EngineError::TreeChanging { .. } | EngineError::NoProcess { .. }
        )
}

fn check_descendant(root: i32, parent: i32, child: i32) -> Result<()> {
    if leaving(child) {
        return Err(EngineError::TreeChanging {
            pid: root,
            reason: format!("its descendant {child} (child of {parent}) is exiting"),
        });
    }
    dump::preflight_process(child).map_err(|e| {
        refuse(
            root,
            format!("its descendant {child} (child of {parent}) cannot be dumped: {e}"),
        )
    })?;
    // The tree is restored into one set of namespaces.
    match tern_state::namespaces::same_as(root, child)? {
        Some(kind) => Err(refuse(
            root,
            format!("its descendant {child} (child of {parent}) lives in another {kind} namespace than it; a tree is restored into one"),
        )),
        None => Ok(()),
    }
}

/// One pass down the tree under `procs[0]`: each child not in `procs`
/// yet is checked, handed to `take(parent, child)`, and added (and its own
/// children listed in turn). Whether any was found.
fn add_unlisted_children(
    procs: &mut Vec<wire::TreeProcess>,
    zombies: &mut Vec<wire::Zombie>,
    mut take: impl FnMut(i32, i32) -> Result<()>,
) -> Result<bool> {
    let root = procs[0].pid;
    let mut found = false;
    let mut next = 0;
    while next < procs.len() {
        let parent = procs[next].pid;
        for child in proc::list_children(parent).ctx(parent, || "list children".into())? {
            if procs.iter().any(|p| p.pid == child) || zombies.iter().any(|z| z.pid == child) {
                continue;
            }
            // Its parent is stopped: it stays a zombie until the restore.
            if let Some(z) = zombie(parent, child) {
                zombies.push(z);
                continue;
            }
            check_descendant(root, parent, child)?;
            take(parent, child)?;
            procs.push(ids(child)?);
            found = true;
        }
        next += 1;
    }
    Ok(found)
}

/// Seize a process, then list its children: stopped, it cannot fork.
fn seize_in_turn(root: i32) -> Result<StoppedProcesses> {
    let mut seized: Vec<Seized> = vec![Seized::attach(root)?];
    let mut procs = vec![ids(root)?];
    let mut zombies = Vec::new();
    add_unlisted_children(&mut procs, &mut zombies, |_, child| {
        seized.push(Seized::attach(child)?);
        Ok(())
    })?;
    Ok((seized, procs, zombies))
}

/// Freeze the tree in a cgroup of tern's, then seize every thread of it
/// while frozen; thawed, each traps into its ptrace stop. Back in their
/// own cgroups afterwards.
fn seize_frozen(root: i32) -> Result<StoppedProcesses> {
    let mut freezer = CgroupFreezer::create(root)?;
    let mut procs = vec![ids(root)?];
    let mut zombies = Vec::new();
    freezer.add(root, None)?;
    freezer.freeze()?;
    // Processes move in one by one while the others run (a child forked
    // before its parent moved stays outside; one forked after is inside
    // already): list again, while frozen, until nothing new appears.
    while add_unlisted_children(&mut procs, &mut zombies, |parent, child| {
        Ok(freezer.add(child, Some(parent))?)
    })? {
        freezer.freeze()?;
    }
    let mut pending = Vec::with_capacity(procs.len());
    let seized_all = (|| {
        for p in &procs {
            let (s, r) = FrozenSeize::new(p.pid);
            pending.push(s);
            r?;
        }
        Ok::<(), EngineError>(())
    })();
    // Thawed before anything waits for a stop (or lets go on error); if
    // thawing fails, moving every process back out of the cgroup (the
    // freezer's drop) thaws them.
    if let Err(e) = freezer.thaw() {
        drop(freezer);
        drop(pending);
        return Err(e.into());
    }
    seized_all?;
    let mut seized = Vec::with_capacity(procs.len());
    for p in pending {
        seized.push(p.finish()?);
    }
    info!(root, processes = procs.len(), cgroup = %freezer.dir().display(), "tree frozen and seized");
    drop(freezer);
    Ok((seized, procs, zombies))
}

/// What the stopped processes of a tree share, and the inodes of the
/// sockets they hold on fds other than stdio (a unix socket may be paired
/// with one of them; stdio is each restored process's own).
fn find_shared(procs: &[wire::TreeProcess]) -> Result<(wire::Tree, BTreeSet<u64>)> {
    // Every fd of every process with what it points at.
    let mut fds: Vec<(i32, i32, String)> = Vec::new();
    for p in procs {
        for fd in proc::list_fds(p.pid).ctx(p.pid, || "list fds".into())? {
            let link = std::fs::read_link(format!("/proc/{}/fd/{fd}", p.pid))
                .ctx(p.pid, || format!("readlink fd {fd}"))?
                .to_string_lossy()
                .into_owned();
            fds.push((p.pid, fd, link));
        }
    }
    let inode_of = |link: &str, kind: &str| {
        link.strip_prefix(kind)
            .and_then(|r| r.strip_prefix(":["))
            .and_then(|r| r.strip_suffix(']'))
            .and_then(|n| n.parse::<u64>().ok())
    };
    let pipe_id = |link: &str| inode_of(link, "pipe");
    let sockets: BTreeSet<u64> = fds
        .iter()
        .filter(|(_, fd, _)| *fd > 2)
        .filter_map(|(_, _, link)| inode_of(link, "socket"))
        .collect();
    // Pipes held in more than one process.
    let mut holders: BTreeMap<u64, BTreeSet<i32>> = BTreeMap::new();
    for (pid, _, link) in &fds {
        if let Some(id) = pipe_id(link) {
            holders.entry(id).or_default().insert(*pid);
        }
    }
    let mut pipes = Vec::new();
    let access = |pid: i32, fd: i32| {
        std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}"))
            .ok()
            .and_then(|t| proc::parse_fdinfo(&t))
            .map_or(-1, |i| i.flags & libc::O_ACCMODE)
    };
    for (id, who) in holders.iter().filter(|(_, w)| w.len() > 1) {
        let ends: Vec<(i32, i32, i32)> = fds
            .iter()
            .filter(|(pid, _, link)| who.contains(pid) && pipe_id(link) == Some(*id))
            .map(|(pid, fd, _)| (*pid, *fd, access(*pid, *fd)))
            .collect();
        // Only a pipe whose both ends the tree holds is the tree's; one to
        // a process outside it (a shared stdout into `| tee`) stays what
        // it is: stdio is each restored process's own, any other fd of it
        // is refused by that process's dump.
        let reader = ends.iter().find(|e| e.2 == libc::O_RDONLY);
        if reader.is_none() || !ends.iter().any(|e| e.2 == libc::O_WRONLY) {
            continue;
        }
        let (size, data) = match reader {
            Some(&(pid, fd, _)) => tern_sys::pipe::peek_pipe(pid, fd)
                .ctx(pid, || format!("copy the data buffered in pipe fd {fd}"))?,
            None => (65536, Vec::new()),
        };
        pipes.push(wire::Pipe {
            id: *id,
            size,
            data,
        });
    }
    let shared_fds = shared_descriptions(&fds);
    let shared_memory = shared_anon_memory(procs)?;
    Ok((
        wire::Tree {
            processes: Vec::new(),
            pipes,
            shared_fds,
            shared_memory,
            zombies: Vec::new(),
        },
        sockets,
    ))
}

/// Open file descriptions held by several processes of the tree, as
/// groups of (pid, fd); `fds`: every (pid, fd, link) of the tree.
fn shared_descriptions(fds: &[(i32, i32, String)]) -> Vec<Vec<(i32, i32)>> {
    let mut shared_fds: Vec<Vec<(i32, i32)>> = Vec::new();
    for (i, (pa, fa, la)) in fds.iter().enumerate() {
        // Pipes are the tree's pipes.
        if la.starts_with("pipe:") || shared_fds.iter().any(|g| g.contains(&(*pa, *fa))) {
            continue;
        }
        let mut group = vec![(*pa, *fa)];
        for (pb, fb, lb) in &fds[i + 1..] {
            if pb != pa && lb == la && tern_sys::same_description(*pa, *fa, *pb, *fb) {
                group.push((*pb, *fb));
            }
        }
        if group.len() > 1 {
            let what = la.as_str();
            // stdio a terminal, pipe or socket is each restored process's
            // own (the restorer's); anything else is made once, by the
            // first process, and handed to the others.
            let stdio = group.iter().all(|&(_, fd)| (0..=2).contains(&fd))
                && (what.starts_with("pipe:")
                    || what.starts_with("socket:")
                    || what.starts_with("/dev/pts/")
                    || what.starts_with("/dev/tty"));
            if !stdio {
                shared_fds.push(group);
            }
        }
    }
    shared_fds
}

/// Shared anonymous memory mapped in several processes of the tree: for
/// each object, (pid, start, offset) of every mapping of it.
fn shared_anon_memory(procs: &[wire::TreeProcess]) -> Result<Vec<Vec<(i32, u64, u64)>>> {
    // (device, inode) of the shmem object -> (pid, start, offset, length).
    type Mapping = (i32, u64, u64, u64);
    let mut objects: BTreeMap<(u32, u32, u64), Vec<Mapping>> = BTreeMap::new();
    for p in procs {
        for m in proc::read_smaps(p.pid).ctx(p.pid, || "read smaps".into())? {
            if m.is_shmem_anon() {
                objects
                    .entry((m.dev_major, m.dev_minor, m.inode))
                    .or_default()
                    .push((p.pid, m.start, m.offset, m.end - m.start));
            }
        }
    }
    let mut shared_memory = Vec::new();
    for members in objects.values() {
        let pids: BTreeSet<i32> = members.iter().map(|m| m.0).collect();
        if pids.len() < 2 {
            continue;
        }
        let (first_pid, first_start, first_off, first_len) = members[0];
        for &(pid, start, off, len) in &members[1..] {
            if off < first_off || off + len > first_off + first_len {
                return Err(refuse(
                    pid,
                    format!("its shared memory at {start:#x} maps a part of the object process {first_pid} maps at {first_start:#x} that process does not; not supported yet"),
                ));
            }
        }
        shared_memory.push(members.iter().map(|m| (m.0, m.1, m.2)).collect());
    }
    Ok(shared_memory)
}
