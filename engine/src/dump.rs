//! `tern dump`: stop a process, write its image, then kill it or let it go.
//!
//! Order of work, chosen so that a failure at any point leaves the target
//! running exactly as before: preflight checks on /proc (nothing touched) ->
//! seize + interrupt -> state read with ptrace and /proc -> a scratch page
//! mapped in the target for injected syscalls that return data -> scratch
//! unmapped -> memory copied -> records written and fsynced -> the target is
//! killed (default) or resumed with its own registers.

use crate::core_state::capture_core;
use crate::error::{Context, EngineError, Result};
use crate::files::{capture_files, Connections};
use crate::mm::{capture_mm, capture_vmas};
use crate::pages::{capture_delta, capture_pages, PageCapture};
use std::path::{Path, PathBuf};
use std::time::Instant;
use tern_sys::proc::{self, MapEntry};
use tern_sys::remote;
use tern_wire as wire;
use tracing::{debug, info};

use crate::seize::Seized;
use crate::track::DirtySet;

#[derive(Debug, Clone)]
pub struct DumpOptions {
    /// Resume the program after the dump instead of killing it.
    pub leave_running: bool,
    /// zstd level for page data; `None` stores pages raw.
    pub zstd_level: Option<i32>,
    /// Earlier image (a pre-dump or dump) of the same process: only pages
    /// that changed since are stored.
    pub parent: Option<PathBuf>,
    /// With a parent: write the page table as a delta to the parent's
    /// (`table-delta.img`) instead of whole (`hashes.img`). For migration,
    /// where the destination holds the parent's table already.
    pub delta_table: bool,
    /// Take established TCP connections (repair mode, packets locked);
    /// without it a program with one is refused.
    pub tcp_established: bool,
    /// Once the program is killed, leave its connections' packet lock in
    /// place (recorded in the image) for `tern restore` to lift: a dump.
    /// A migration lifts it itself once the copy elsewhere runs.
    pub keep_net_lock: bool,
    /// How a process tree is stopped.
    pub freezer: Freezer,
    /// Fds of the dumped process shared with processes outside the dump
    /// (a supervisor's pipe), by fd number, with the name the restore
    /// finds their replacement under (`--external fd[N]:NAME`).
    pub external: std::collections::BTreeMap<i32, String>,
    /// Leave every page of private anonymous memory out of the image
    /// (listed in `deferred.img`): a stop-and-copy migration streams them
    /// to the destination right after it, while the destination builds the
    /// rest. Whole dumps only (with no `parent`: not over a pre-copy
    /// round).
    pub defer_private_anon: bool,
}

impl Default for DumpOptions {
    fn default() -> Self {
        DumpOptions {
            leave_running: false,
            zstd_level: Some(1),
            parent: None,
            delta_table: false,
            tcp_established: false,
            keep_net_lock: true,
            freezer: Freezer::Ptrace,
            external: Default::default(),
            defer_private_anon: false,
        }
    }
}

/// How a dump stops the processes of a tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freezer {
    /// ptrace-seize each process in turn (a parent before its children).
    Ptrace,
    /// Freeze them all at once in a cgroup of tern's, then seize them
    /// (see `crate::freezer`).
    Cgroup,
}

impl std::str::FromStr for Freezer {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "ptrace" => Ok(Freezer::Ptrace),
            "cgroup" => Ok(Freezer::Cgroup),
            _ => Err(format!("{s:?}: expected ptrace or cgroup")),
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct DumpStats {
    pub pages_bytes: u64,
    pub stored_bytes: u64,
    pub vmas: usize,
    pub fds: usize,
    /// How long the program was stopped.
    pub frozen_ms: f64,
    pub memory_ms: f64,
    /// Pages this image stores (all, or those changed since the parent).
    pub pages_stored: u64,
    /// Pages the program had (present or swapped) at this moment.
    pub pages_seen: u64,
    pub round_hash: u64,
    /// Pages left out of the image for post-copy (`Tracking::defer`): their
    /// addresses, sorted; `deferred.img` lists them.
    pub deferred: Vec<u64>,
}

use tern_sys::page_size;

pub(crate) fn unsupported(pid: i32, reason: impl Into<String>) -> EngineError {
    EngineError::Unsupported {
        pid,
        reason: reason.into(),
    }
}

/// Checks that need nothing but /proc: refuse what this version cannot
/// dump before touching the process.
/// [`preflight`], and every fd checked to be one tern can restore: for a
/// pre-copy, which would otherwise learn of an unsupported fd only once the
/// rounds are over and the program is frozen.
pub(crate) fn preflight_all(pid: i32, opts: &DumpOptions) -> Result<()> {
    preflight(pid)?;
    let conns = if opts.tcp_established {
        Connections::Check
    } else {
        Connections::Refuse
    };
    capture_files(pid, None, conns, &CrossProcess::alone(opts)).map(|_| ())
}

/// What a process of a tree shares with the others (see `crate::tree`).
#[derive(Default)]
pub(crate) struct CrossProcess {
    /// Pipes whose ends other processes of the tree hold too: recorded by
    /// id, their data kept in the tree's image.
    pub pipes: std::collections::BTreeSet<u64>,
    /// Inodes of the sockets any process of the tree holds: a unix socket
    /// may be paired with one of them.
    pub sockets: std::collections::BTreeSet<u64>,
    /// This process's fds the user named as shared with the outside
    /// ([`DumpOptions::external`]): the root's only.
    pub external: std::collections::BTreeMap<i32, String>,
    /// The pids of the tree's processes (empty for a process alone): what
    /// a pidfd may refer to.
    pub members: std::collections::BTreeSet<i32>,
    /// The tree's mount table, when it lives in a mount namespace of its
    /// own: read once (with its tmpfs files) for all its processes, which
    /// share it.
    pub mounts: Option<wire::MountTable>,
}

impl CrossProcess {
    /// A process dumped alone: it shares nothing but what the user named.
    pub(crate) fn alone(opts: &DumpOptions) -> CrossProcess {
        CrossProcess {
            external: opts.external.clone(),
            ..CrossProcess::default()
        }
    }
}

pub(crate) fn preflight(pid: i32) -> Result<()> {
    preflight_root(pid)?;
    let children = proc::list_children(pid).ctx(pid, || "list children".into())?;
    if !children.is_empty() {
        return Err(unsupported(
            pid,
            format!("it has child processes {children:?}; `tern dump` takes a whole tree, pre-copy and migration one process for now"),
        ));
    }
    Ok(())
}

/// [`preflight_process`] for the process a dump starts from (the root of
/// its tree): in a PID namespace of its own it must be its init.
pub(crate) fn preflight_root(pid: i32) -> Result<()> {
    preflight_process(pid)?;
    Ok(tern_state::namespaces::refuse_pid_namespace_member(pid)?)
}

/// [`preflight`] without the children check (a process of a tree).
pub(crate) fn preflight_process(pid: i32) -> Result<()> {
    if u32::try_from(pid).ok() == Some(std::process::id()) {
        return Err(unsupported(pid, "tern cannot dump itself"));
    }
    let p = procfs::process::Process::new(pid).ctx(pid, || "open /proc entry".into())?;
    let stat = p.stat().ctx(pid, || "read stat".into())?;
    if stat.state == 'Z' || stat.state == 'X' {
        return Err(unsupported(pid, "it is a zombie (already exited)"));
    }
    if stat.flags & 0x0020_0000 != 0 {
        return Err(unsupported(pid, "it is a kernel thread"));
    }
    // Before any seize: io_uring's worker threads never stop for ptrace
    // (a seize would wait for them forever).
    let (rings, workers) = proc::io_uring_users(pid);
    if !rings.is_empty() || !workers.is_empty() {
        return Err(unsupported(
            pid,
            format!(
                "it uses io_uring (fds {rings:?}, worker threads {workers:?}): its rings and requests in flight cannot be moved, and its workers do not stop for ptrace (for Node.js and other libuv programs: run with UV_USE_IO_URING=0)"
            ),
        ));
    }
    let status = p.status().ctx(pid, || "read status".into())?;
    if status.tracerpid != 0 {
        return Err(unsupported(
            pid,
            format!("it is already traced by process {}", status.tracerpid),
        ));
    }
    if status.seccomp == Some(1) {
        return Err(unsupported(
            pid,
            "it runs in seccomp strict mode, which cannot be restored (only read, write, exit and sigreturn are left to it)",
        ));
    }
    tern_state::namespaces::refuse_unsupported(pid)?;
    Ok(())
}

/// Dump process `pid` into the image directory `dir` (a process with
/// children: see [`crate::tree::dump_tree`]).
pub fn dump(pid: i32, dir: &Path, opts: &DumpOptions) -> Result<DumpStats> {
    preflight(pid)?;
    prepare_dir(dir)?;
    let parent = load_parent(pid, dir, opts.parent.as_deref())?;
    let t0 = Instant::now();
    let seized = Seized::attach(pid)?;
    dump_seized(seized, t0, dir, opts, &parent)
}

pub(crate) fn prepare_dir(dir: &Path) -> Result<()> {
    wire::create_image_dir(dir).map_err(|e| wire::WireError::Io {
        path: dir.to_path_buf(),
        source: e,
    })?;
    // A stale inventory would make a half-written image look complete, and
    // stale saved file contents would be taken for this dump's.
    let _ = std::fs::remove_file(dir.join(wire::INVENTORY_FILE));
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let name = e.file_name();
            let name = name.to_string_lossy();
            if name.starts_with("file-") && name.ends_with(".img") {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    Ok(())
}

/// The rest of a dump once the target is stopped (since `t0`); then the
/// target is released or killed as `opts` says.
fn dump_seized(
    mut seized: Seized,
    t0: Instant,
    dir: &Path,
    opts: &DumpOptions,
    parent: &[(u64, u64)],
) -> Result<DumpStats> {
    let mut stats = dump_frozen(
        &mut seized,
        t0,
        dir,
        opts,
        parent,
        None,
        &CrossProcess::alone(opts),
    )?;
    if opts.leave_running {
        seized.release()?;
    } else {
        seized.kill()?;
        settle_net_lock(&mut seized, opts.keep_net_lock)?;
    }
    stats.frozen_ms = t0.elapsed().as_secs_f64() * 1e3;
    info!(pid = seized.pid, ?stats, "dump complete");
    Ok(stats)
}

/// After the kill: keep the connections' packet lock for `tern restore`,
/// or lift it (a migration: they live elsewhere now).
pub(crate) fn settle_net_lock(seized: &mut Seized, keep: bool) -> Result<()> {
    let Some(lock) = seized.net_lock_left.take() else {
        return Ok(());
    };
    if keep {
        let table = lock.keep();
        info!(
            pid = seized.pid,
            "its TCP connections stay locked until `tern restore` (nftables table inet {table})"
        );
        Ok(())
    } else {
        lock.remove()
            .ctx(seized.pid, || "lift the network lock".into())
    }
}

/// What a dirty-page tracker still registered in a stopped program knows.
pub(crate) struct Tracking<'a> {
    /// Pages written since the last round.
    pub dirty: &'a DirtySet,
    /// The program's smaps, read since it was stopped (reading it again
    /// costs a page-table walk, ~5 ms per GiB).
    pub maps: Vec<MapEntry>,
    /// The tracker reports every change (writes, zapped pages, new
    /// mappings), so pages outside `dirty` are as the parent has them.
    pub exact: bool,
    /// Post-copy: leave the changed pages of private anonymous memory out
    /// of the image (listed in `deferred.img`); the destination fetches
    /// them after the program resumes there. Needs an exact tracker.
    pub defer: bool,
    /// The cgroups the last round found it in (their settings are not
    /// read again while it is frozen if it is still in those).
    pub cgroups: &'a [wire::Cgroup],
}

/// The image of a stopped program; it stays stopped (the caller releases
/// or kills it). On error the caller still holds it, intact. With
/// `tracking`, the tracker is still registered (removing it costs ~13 ms
/// per GiB, so a migration leaves that for after the commit) and only the
/// pages it reports (and new ones) are read.
pub(crate) fn dump_frozen(
    seized: &mut Seized,
    t0: Instant,
    dir: &Path,
    opts: &DumpOptions,
    parent: &[(u64, u64)],
    tracking: Option<Tracking<'_>>,
    cross: &CrossProcess,
) -> Result<DumpStats> {
    let pid = seized.pid;
    let tracked = tracking.is_some();
    let (dirty, maps, exact, defer, prior_cgroups) = match tracking {
        Some(t) => (Some(t.dirty), t.maps, t.exact, t.defer, Some(t.cgroups)),
        None => (
            None,
            proc::read_smaps(pid).ctx(pid, || "read smaps".into())?,
            false,
            false,
            None,
        ),
    };
    let vdso = maps.iter().find(|m| m.name == "[vdso]").ok_or_else(|| {
        unsupported(
            pid,
            "it has no [vdso] mapping (tern runs its syscalls through it)",
        )
    })?;
    let gadget = remote::find_syscall_insn(pid, vdso.start, vdso.end)
        .ctx(pid, || "read the vdso".into())?
        .ok_or_else(|| unsupported(pid, "no syscall instruction found in its vdso"))?;
    seized.set_gadget(gadget);

    let t_core = Instant::now();
    let core = capture_core(seized, pid)?;
    let core_ms = t_core.elapsed().as_secs_f64() * 1e3;
    let mm = capture_mm(pid, &maps, seized, tracked)?;
    let mm_ms = t_core.elapsed().as_secs_f64() * 1e3;
    let conns = if opts.tcp_established {
        Connections::Take(&mut seized.net, opts.keep_net_lock)
    } else {
        Connections::Refuse
    };
    let files = capture_files(pid, Some(dir), conns, cross)?;
    debug!(
        pid,
        core_ms,
        mm_ms,
        files_ms = t_core.elapsed().as_secs_f64() * 1e3,
        since_freeze_ms = t0.elapsed().as_secs_f64() * 1e3,
        "state captured"
    );

    let t_mem = Instant::now();
    let capture = frozen_pages(
        pid,
        &maps,
        dir,
        opts,
        parent,
        dirty.map(|d| (d, exact, defer)),
    )?;
    let page_stats = capture.stats;
    let memory_ms = t_mem.elapsed().as_secs_f64() * 1e3;

    wire::write_record(&dir.join(wire::CORE_FILE), wire::RecordKind::Core, &core)?;
    wire::write_record(&dir.join(wire::MM_FILE), wire::RecordKind::Mm, &mm)?;
    wire::write_record(&dir.join(wire::FILES_FILE), wire::RecordKind::Files, &files)?;
    let comm = core
        .threads
        .first()
        .map(|t| t.comm.clone())
        .unwrap_or_default();
    let places = Places {
        namespaces: tern_state::namespaces::capture(pid, cross.mounts.as_ref())?,
        cgroups: match prior_cgroups {
            Some(prior) => tern_state::cgroups::capture_since(pid, prior)?,
            None => tern_state::cgroups::capture(pid)?,
        },
    };
    write_inventory(
        dir,
        pid,
        comm,
        &capture,
        opts.parent.as_deref(),
        places,
        false,
    )?;
    debug!(
        pid,
        memory_ms,
        since_freeze_ms = t0.elapsed().as_secs_f64() * 1e3,
        "image written"
    );

    let stats = DumpStats {
        pages_bytes: page_stats.raw_bytes,
        stored_bytes: page_stats.stored_bytes,
        vmas: mm.vmas.len(),
        fds: files.fds.len(),
        frozen_ms: t0.elapsed().as_secs_f64() * 1e3,
        memory_ms,
        pages_stored: capture.pages_stored,
        pages_seen: capture.table_len(),
        round_hash: capture.round_hash,
        deferred: capture.deferred.clone(),
    };
    Ok(stats)
}

/// The pages of a frozen program into `dir`: with `tracked` = (the
/// tracker's dirty set, whether it is exact, whether to defer pages for
/// post-copy), only what changed since `parent`; the pages left for
/// post-copy listed in `deferred.img`.
fn frozen_pages(
    pid: i32,
    maps: &[MapEntry],
    dir: &Path,
    opts: &DumpOptions,
    parent: &[(u64, u64)],
    tracked: Option<(&DirtySet, bool, bool)>,
) -> Result<PageCapture> {
    let codec = codec_for(opts.zstd_level);
    let everything = DirtySet::empty();
    // A whole image whose private anonymous pages are streamed after it:
    // a delta to nothing (every mapping is examined whole, being
    // unregistered with a tracker), deferring those pages.
    let delta = match tracked {
        // An exact tracker reports every change since the parent (writes,
        // zapped pages, new mappings): only those pages are looked at, so
        // this costs what changed, not what the program holds.
        Some((d, true, defer)) if !parent.is_empty() => Some((d, defer)),
        None if opts.defer_private_anon && parent.is_empty() => Some((&everything, true)),
        _ => None,
    };
    let mut capture = match delta {
        Some((d, defer)) => {
            let mut c = capture_delta(pid, maps, dir, codec, parent, d, defer)?;
            // A delta to nothing is the whole table.
            if !opts.delta_table || parent.is_empty() {
                if let Some(full) = c.delta.as_ref().and_then(|x| x.apply(parent)) {
                    c.hashes = full;
                    c.delta = None;
                } else {
                    return Err(EngineError::Internal(
                        "page table delta does not fit its parent".into(),
                    ));
                }
            }
            c
        }
        None => capture_pages(pid, maps, dir, codec, parent, tracked.map(|t| t.0), false)?,
    };
    if opts.delta_table && capture.delta.is_none() && opts.parent.is_some() {
        capture.delta = Some(wire::TableDelta::between(parent, &capture.hashes));
    }
    if !capture.deferred.is_empty() {
        let deferred = wire::Deferred {
            pages: std::mem::take(&mut capture.deferred),
        };
        wire::write_record(
            &dir.join(wire::DEFERRED_FILE),
            wire::RecordKind::Deferred,
            &deferred,
        )?;
        capture.deferred = deferred.pages;
    }
    Ok(capture)
}

/// Page hashes of the parent image, checked to belong to the same process.
fn load_parent(pid: i32, dir: &Path, parent: Option<&Path>) -> Result<Vec<(u64, u64)>> {
    let Some(parent) = parent else {
        return Ok(Vec::new());
    };
    let pdir = if parent.is_absolute() {
        parent.to_path_buf()
    } else {
        dir.join(parent)
    };
    let inv: wire::Inventory = wire::read_record(
        &pdir.join(wire::INVENTORY_FILE),
        wire::RecordKind::Inventory,
    )?;
    if inv.pid != pid {
        return Err(unsupported(
            pid,
            format!(
                "parent image {} is of process {}, not {pid}",
                pdir.display(),
                inv.pid
            ),
        ));
    }
    Ok(wire::hashes::read_page_hashes(
        &pdir.join(wire::HASHES_FILE),
    )?)
}

/// Where a process lived: its namespaces and cgroups.
struct Places {
    namespaces: wire::Namespaces,
    cgroups: Vec<wire::Cgroup>,
}

/// The page table goes whole (`hashes.img`), or as the capture's delta to
/// its parent's (`table-delta.img`) when it has one.
fn write_inventory(
    dir: &Path,
    pid: i32,
    comm: String,
    capture: &PageCapture,
    parent: Option<&Path>,
    places: Places,
    pre_dump: bool,
) -> Result<()> {
    match &capture.delta {
        Some(delta) => {
            let _ = std::fs::remove_file(dir.join(wire::HASHES_FILE));
            wire::write_record(
                &dir.join(wire::TABLE_DELTA_FILE),
                wire::RecordKind::TableDelta,
                delta,
            )?;
        }
        None => {
            let _ = std::fs::remove_file(dir.join(wire::TABLE_DELTA_FILE));
            wire::hashes::write_page_hashes(&dir.join(wire::HASHES_FILE), &capture.hashes)?;
        }
    }
    let inventory = wire::Inventory {
        tern_version: env!("CARGO_PKG_VERSION").to_string(),
        pid,
        comm,
        created_unix_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0),
        kernel_release: kernel_release(),
        page_size: page_size(),
        pages_bytes: capture.stats.raw_bytes,
        pages_stored_bytes: capture.stats.stored_bytes,
        parent: parent.map(|p| p.to_string_lossy().into_owned()),
        pre_dump,
        round_hash: capture.round_hash,
        namespaces: places.namespaces,
        cgroups: places.cgroups,
    };
    // Written last: its presence marks a complete image.
    wire::write_record(
        &dir.join(wire::INVENTORY_FILE),
        wire::RecordKind::Inventory,
        &inventory,
    )?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// `tern pre-dump`: save the memory of a running process (only what changed
/// since `parent`, if given) and leave it running. It is stopped only to
/// read its memory map; pages are read while it runs, and each page's hash
/// is of the bytes saved, so any later write shows up in the next increment.
pub fn pre_dump(
    pid: i32,
    dir: &Path,
    parent: Option<&Path>,
    zstd_level: Option<i32>,
) -> Result<DumpStats> {
    preflight(pid)?;
    prepare_dir(dir)?;
    let parent_hashes = load_parent(pid, dir, parent)?;
    pre_dump_round(pid, dir, parent, &parent_hashes, None, zstd_level).map(|r| r.stats)
}

/// What a pre-dump round leaves for the next one.
pub(crate) struct Round {
    pub stats: DumpStats,
    /// The page table the next round compares against.
    pub table: Vec<(u64, u64)>,
    /// The cgroups it was in.
    pub cgroups: Vec<wire::Cgroup>,
}

/// One memory-only round while the program runs.
pub(crate) fn pre_dump_round(
    pid: i32,
    dir: &Path,
    parent: Option<&Path>,
    parent_hashes: &[(u64, u64)],
    dirty: Option<&DirtySet>,
    zstd_level: Option<i32>,
) -> Result<Round> {
    prepare_dir(dir)?;
    let t0 = Instant::now();
    let mut seized = Seized::attach(pid)?;
    let maps = proc::read_smaps(pid).ctx(pid, || "read smaps".into());
    seized.release()?;
    let frozen_ms = t0.elapsed().as_secs_f64() * 1e3;
    let maps = maps?;
    // What a warm standby maps before it writes this round's pages.
    let layout = wire::Layout {
        vmas: capture_vmas(pid, &maps, true)?,
    };
    wire::write_record(
        &dir.join(wire::LAYOUT_FILE),
        wire::RecordKind::Layout,
        &layout,
    )?;
    let codec = codec_for(zstd_level);
    let t_mem = Instant::now();
    let capture = capture_pages(pid, &maps, dir, codec, parent_hashes, dirty, true)?;
    let memory_ms = t_mem.elapsed().as_secs_f64() * 1e3;
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|c| c.trim().to_string())
        .unwrap_or_default();
    let places = Places {
        namespaces: tern_state::namespaces::capture(pid, None)?,
        cgroups: tern_state::cgroups::capture(pid)?,
    };
    let cgroups = places.cgroups.clone();
    write_inventory(dir, pid, comm, &capture, parent, places, true)?;
    let stats = DumpStats {
        pages_bytes: capture.stats.raw_bytes,
        stored_bytes: capture.stats.stored_bytes,
        vmas: maps.len(),
        fds: 0,
        frozen_ms,
        memory_ms,
        pages_stored: capture.pages_stored,
        pages_seen: capture.hashes.len() as u64,
        round_hash: capture.round_hash,
        deferred: Vec::new(),
    };
    Ok(Round {
        stats,
        table: capture.hashes,
        cgroups,
    })
}

/// How page data is stored for a zstd level (`None`: raw).
fn codec_for(zstd_level: Option<i32>) -> wire::Codec {
    zstd_level.map_or(wire::Codec::Raw, wire::Codec::Zstd)
}

/// Whether `dir` (or the nearest existing parent) is on tmpfs or ramfs.
pub fn is_memory_fs(dir: &Path) -> bool {
    const TMPFS_MAGIC: i64 = 0x0102_1994;
    const RAMFS_MAGIC: i64 = 0x8584_58f6;
    // A relative path's last ancestor is "" (which does not exist): probe
    // from the working directory instead.
    let absolute;
    let mut probe = if dir.is_relative() {
        match std::env::current_dir() {
            Ok(cwd) => {
                absolute = cwd.join(dir);
                absolute.as_path()
            }
            Err(_) => return false,
        }
    } else {
        dir
    };
    while !probe.exists() {
        match probe.parent() {
            Some(p) => probe = p,
            None => return false,
        }
    }
    matches!(tern_sys::fs_magic(probe), Some(TMPFS_MAGIC | RAMFS_MAGIC))
}

pub fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}
