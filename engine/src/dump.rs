//! `tern dump`: stop a process, write its image, then kill it or let it go.
//!
//! Order of work, chosen so that a failure at any point leaves the target
//! running exactly as before: preflight checks on /proc (nothing touched) ->
//! seize + interrupt -> state read with ptrace and /proc -> a scratch page
//! mapped in the target for injected syscalls that return data -> scratch
//! unmapped -> memory copied -> records written and fsynced -> the target is
//! killed (default) or resumed with its own registers.

use crate::error::{Context, EngineError, Result};
use crate::pages::{capture_delta, capture_pages, PageCapture};
use std::collections::BTreeSet;
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Instant;
use tern_sys::proc::{self, MapEntry};
use tern_sys::{mem, ptrace, remote};
use tern_wire as wire;
use tracing::{debug, info, warn};

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

fn unsupported(pid: i32, reason: impl Into<String>) -> EngineError {
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
    let mut capture = match tracked {
        // An exact tracker reports every change since the parent (writes,
        // zapped pages, new mappings): only those pages are looked at, so
        // this costs what changed, not what the program holds.
        Some((d, true, defer)) if !parent.is_empty() => {
            let mut c = capture_delta(pid, maps, dir, codec, parent, d, defer)?;
            if !opts.delta_table {
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
        _ => capture_pages(pid, maps, dir, codec, parent, tracked.map(|t| t.0), false)?,
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

fn read_u64(pid: i32, addr: u64) -> Result<u64> {
    let mut b = [0u8; 8];
    mem::read_fully(pid, addr, &mut b).ctx(pid, || format!("read scratch at {addr:#x}"))?;
    Ok(u64::from_le_bytes(b))
}

fn capture_core(seized: &mut Seized, pid: i32) -> Result<wire::Core> {
    let p = procfs::process::Process::new(pid).ctx(pid, || "open /proc entry".into())?;
    let status = p.status().ctx(pid, || "read status".into())?;
    let stat = p.stat().ctx(pid, || "read stat".into())?;

    // Scratch page for syscalls that return data through memory.
    let page = page_size();
    let scratch = seized.inject(
        libc::SYS_mmap,
        &[
            0,
            page,
            (libc::PROT_READ | libc::PROT_WRITE) as u64,
            (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u64,
            u64::MAX,
            0,
        ],
        "mmap of a scratch page",
    )?;
    seized.scratch = Some((scratch, page));

    // Only signals with a handler or ignored (/proc/PID/status SigCgt,
    // SigIgn), and SIGCHLD (whose SA_NOCLD* flags act even at SIG_DFL),
    // can differ from the all-zero default: ask the kernel about those
    // only (each injected syscall costs tens of microseconds, frozen).
    let interesting = status.sigcgt | status.sigign | (1u64 << (libc::SIGCHLD - 1));
    let sigactions = capture_sigactions(seized, pid, scratch, interesting)?;
    // Per-thread state, read by running the getters in each thread.
    let threads = capture_threads(seized, pid, scratch)?;
    let tids: Vec<i32> = std::iter::once(pid)
        .chain(seized.threads.iter().map(|t| t.tid))
        .collect();
    let seccomp = tern_state::seccomp::capture(pid, &tids)?;
    seized.inject(
        libc::SYS_prctl,
        &[libc::PR_GET_PDEATHSIG as u64, scratch],
        "prctl(PR_GET_PDEATHSIG)",
    )?;
    let pdeath_signal = read_u64(pid, scratch)? as i32;
    let dumpable = seized.inject(
        libc::SYS_prctl,
        &[libc::PR_GET_DUMPABLE as u64],
        "prctl(PR_GET_DUMPABLE)",
    )? as i32;
    let securebits = seized.inject(
        libc::SYS_prctl,
        &[libc::PR_GET_SECUREBITS as u64],
        "prctl(PR_GET_SECUREBITS)",
    )? as u32;
    let personality = seized.inject(libc::SYS_personality, &[0xffff_ffff], "personality")? as u32;
    let oom_score_adj = std::fs::read_to_string(format!("/proc/{pid}/oom_score_adj"))
        .ctx(pid, || "read oom_score_adj".into())?
        .trim()
        .parse::<i32>()
        .map_err(|e| unsupported(pid, format!("/proc/{pid}/oom_score_adj: {e}")))?;
    let (itimers, posix_timers) = capture_timers(seized, pid, scratch)?;
    seized.inject(
        libc::SYS_munmap,
        &[scratch, page],
        "munmap of the scratch page",
    )?;
    seized.scratch = None;

    let (pending, pending_siginfo) = capture_pending(seized, pid, status.sigpnd | status.shdpnd)?;

    let creds = capture_creds(seized, pid)?;
    let limits = p.limits().ctx(pid, || "read limits".into())?;
    let rlimits = convert_limits(&limits);

    let link = |what: &str| -> Result<String> {
        std::fs::read_link(format!("/proc/{pid}/{what}"))
            .ctx(pid, || format!("readlink {what}"))
            .map(|p| p.to_string_lossy().into_owned())
    };
    let root = link("root")?;
    if root != "/" {
        return Err(unsupported(
            pid,
            format!("its root directory is {root}, not /; chroot is not supported yet"),
        ));
    }

    Ok(wire::Core {
        pid,
        threads,
        sigactions,
        pending_signals: pending,
        pending_siginfo,
        creds: tern_state::creds::to_image(&creds, securebits),
        umask: status.umask.unwrap_or(0o022),
        rlimits,
        cwd: link("cwd")?,
        root,
        was_session_leader: stat.session == pid,
        was_group_leader: stat.pgrp == pid,
        dumpable,
        pdeath_signal,
        personality,
        oom_score_adj,
        itimers,
        posix_timers,
        seccomp,
    })
}

/// The actions of the signals in `interesting` (a mask), read with an
/// injected `rt_sigaction` into `scratch`; the others are the default.
fn capture_sigactions(
    seized: &mut Seized,
    pid: i32,
    scratch: u64,
    interesting: u64,
) -> Result<Vec<wire::SigAction>> {
    let mut sigactions = Vec::with_capacity(64);
    for sig in 1..=64u64 {
        if sig == libc::SIGKILL as u64
            || sig == libc::SIGSTOP as u64
            || interesting & (1u64 << (sig - 1)) == 0
        {
            sigactions.push(wire::SigAction::default());
            continue;
        }
        seized.inject(
            libc::SYS_rt_sigaction,
            &[sig, 0, scratch, 8],
            "rt_sigaction",
        )?;
        let mut raw = [0u8; 32];
        mem::read_fully(pid, scratch, &mut raw).ctx(pid, || "read sigaction".into())?;
        let w = |i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&raw[i * 8..i * 8 + 8]);
            u64::from_le_bytes(b)
        };
        sigactions.push(wire::SigAction {
            handler: w(0),
            flags: w(1),
            restorer: w(2),
            mask: w(3),
        });
    }
    Ok(sigactions)
}

/// Per-thread state, read by running the getters in each thread.
fn capture_threads(seized: &mut Seized, pid: i32, scratch: u64) -> Result<Vec<wire::Thread>> {
    let mut threads = Vec::with_capacity(1 + seized.threads.len());
    let main_regs = seized.found_regs;
    threads.push(capture_thread(
        pid,
        pid,
        &main_regs,
        scratch,
        &mut |nr, a, w| seized.inject(nr, a, w),
    )?);
    for k in 0..seized.threads.len() {
        let tid = seized.threads[k].tid;
        let regs = seized.threads[k].found_regs;
        let t = &mut seized.threads[k];
        threads.push(capture_thread(
            pid,
            tid,
            &regs,
            scratch,
            &mut |nr, a, w| t.inject(nr, a, w),
        )?);
    }
    Ok(threads)
}

/// Interval timers that are armed, and every POSIX timer with its time
/// left.
fn capture_timers(
    seized: &mut Seized,
    pid: i32,
    scratch: u64,
) -> Result<(Vec<wire::Itimer>, Vec<wire::PosixTimer>)> {
    let mut itimers = Vec::new();
    for which in [libc::ITIMER_REAL, libc::ITIMER_VIRTUAL, libc::ITIMER_PROF] {
        seized.inject(libc::SYS_getitimer, &[which as u64, scratch], "getitimer")?;
        let w = |i: u64| read_u64(pid, scratch + 8 * i);
        let interval_us = w(0)? * 1_000_000 + w(1)?;
        let value_us = w(2)? * 1_000_000 + w(3)?;
        if value_us != 0 {
            itimers.push(wire::Itimer {
                which,
                interval_us,
                value_us,
            });
        }
    }
    let mut posix_timers = Vec::new();
    let timers_text = std::fs::read_to_string(format!("/proc/{pid}/timers"))
        .ctx(pid, || "read /proc/PID/timers".into())?;
    for t in proc::parse_posix_timers(&timers_text)
        .map_err(|e| unsupported(pid, format!("/proc/{pid}/timers: {e}")))?
    {
        seized.inject(
            libc::SYS_timer_gettime,
            &[t.id as u64, scratch],
            "timer_gettime",
        )?;
        let w = |i: u64| read_u64(pid, scratch + 8 * i);
        posix_timers.push(wire::PosixTimer {
            id: t.id,
            clock: t.clock,
            notify: t.notify,
            notify_tid: t.notify_tid,
            signo: t.signo,
            sigval: t.sigval,
            interval_ns: w(0)? * 1_000_000_000 + w(1)?,
            value_ns: w(2)? * 1_000_000_000 + w(3)?,
        });
    }
    Ok((itimers, posix_timers))
}

/// Pending signals (`pending_mask`: the process's and the main thread's,
/// from /proc) and every queued one with its siginfo.
fn capture_pending(
    seized: &Seized,
    pid: i32,
    pending_mask: u64,
) -> Result<(Vec<i32>, Vec<wire::QueuedSignal>)> {
    // The queues with their siginfo: the process's, then each thread's.
    let mut pending_siginfo = Vec::new();
    for (tid, shared) in std::iter::once((pid, true))
        .chain(std::iter::once((pid, false)))
        .chain(seized.threads.iter().map(|t| (t.tid, false)))
    {
        for info in ptrace::peek_siginfo(tid, shared)
            .ctx(pid, || format!("PTRACE_PEEKSIGINFO of thread {tid}"))?
        {
            pending_siginfo.push(wire::QueuedSignal {
                tid: if shared { 0 } else { tid },
                info: info.to_vec(),
            });
        }
    }
    let mut pending: BTreeSet<i32> = BTreeSet::new();
    for sig in 1..=64 {
        if pending_mask & (1u64 << (sig - 1)) != 0 {
            pending.insert(sig);
        }
    }
    // Held back while stopping: kept with their siginfo, for the thread
    // that was about to take each.
    for (tid, info) in seized.intercepted_with_info() {
        pending_siginfo.push(wire::QueuedSignal {
            tid,
            info: info.to_vec(),
        });
    }
    if seized.was_stopped {
        // Re-raised after restore: the program comes back stopped, as it was.
        pending.insert(libc::SIGSTOP);
    }

    Ok((pending.into_iter().collect(), pending_siginfo))
}

/// The process's credentials, the same in every thread.
fn capture_creds(seized: &Seized, pid: i32) -> Result<proc::ThreadCreds> {
    // One set of credentials per process in the image: threads that
    // changed their own (raw setresuid, capset) cannot be reproduced.
    let creds = proc::thread_creds(pid, pid).ctx(pid, || "read its credentials".into())?;
    for t in &seized.threads {
        let theirs = proc::thread_creds(pid, t.tid)
            .ctx(pid, || format!("read the credentials of thread {}", t.tid))?;
        let differ = creds.differences(&theirs);
        if !differ.is_empty() {
            return Err(unsupported(
                pid,
                format!(
                    "thread {} has other credentials than the main thread ({}); tern restores one set per process",
                    t.tid,
                    differ.join(", ")
                ),
            ));
        }
    }
    Ok(creds)
}

type Inject<'a> = dyn FnMut(libc::c_long, &[u64], &str) -> Result<u64> + 'a;

/// One thread's state: ptrace getters, plus getters run inside the thread
/// (`inject`) that return data through the scratch page.
fn capture_thread(
    pid: i32,
    tid: i32,
    found_regs: &libc::user_regs_struct,
    scratch: u64,
    inject: &mut Inject<'_>,
) -> Result<wire::Thread> {
    let xstate = ptrace::get_xstate(tid).ctx(pid, || {
        format!("PTRACE_GETREGSET NT_X86_XSTATE of thread {tid}")
    })?;
    let sigmask =
        ptrace::get_sigmask(tid).ctx(pid, || format!("PTRACE_GETSIGMASK of thread {tid}"))?;
    let rseq = ptrace::get_rseq(tid).ctx(pid, || {
        format!("PTRACE_GET_RSEQ_CONFIGURATION of thread {tid}")
    })?;
    let (robust_head, robust_len) =
        tern_sys::robust_list(tid).ctx(tid, || "get_robust_list".into())?;
    inject(libc::SYS_sigaltstack, &[0, scratch], "sigaltstack")?;
    let altstack = wire::AltStack {
        sp: read_u64(pid, scratch)?,
        flags: read_u64(pid, scratch + 8)? as i32,
        size: read_u64(pid, scratch + 16)?,
    };
    inject(
        libc::SYS_prctl,
        &[libc::PR_GET_TID_ADDRESS as u64, scratch],
        "prctl(PR_GET_TID_ADDRESS)",
    )?;
    let clear_child_tid = read_u64(pid, scratch)?;
    let comm = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/comm"))
        .ctx(pid, || format!("read comm of thread {tid}"))?
        .trim_end_matches('\n')
        .to_string();
    let (regs, syscall) = tern_state::regs::registers_for_image(found_regs);
    Ok(wire::Thread {
        tid,
        regs,
        xstate,
        syscall,
        sigmask,
        altstack,
        rseq: (rseq.rseq_abi_pointer != 0).then_some(wire::Rseq {
            addr: rseq.rseq_abi_pointer,
            len: rseq.rseq_abi_size,
            signature: rseq.signature,
        }),
        clear_child_tid,
        robust_list_head: robust_head,
        robust_list_len: robust_len,
        comm,
    })
}

fn convert_limits(l: &procfs::process::Limits) -> Vec<wire::Rlimit> {
    use procfs::process::LimitValue;
    let v = |x: &LimitValue| match x {
        LimitValue::Unlimited => u64::MAX,
        LimitValue::Value(n) => *n,
    };
    let pairs = [
        (libc::RLIMIT_CPU, &l.max_cpu_time),
        (libc::RLIMIT_FSIZE, &l.max_file_size),
        (libc::RLIMIT_DATA, &l.max_data_size),
        (libc::RLIMIT_STACK, &l.max_stack_size),
        (libc::RLIMIT_CORE, &l.max_core_file_size),
        (libc::RLIMIT_RSS, &l.max_resident_set),
        (libc::RLIMIT_NPROC, &l.max_processes),
        (libc::RLIMIT_NOFILE, &l.max_open_files),
        (libc::RLIMIT_MEMLOCK, &l.max_locked_memory),
        (libc::RLIMIT_AS, &l.max_address_space),
        (libc::RLIMIT_LOCKS, &l.max_file_locks),
        (libc::RLIMIT_SIGPENDING, &l.max_pending_signals),
        (libc::RLIMIT_MSGQUEUE, &l.max_msgqueue_size),
        (libc::RLIMIT_NICE, &l.max_nice_priority),
        (libc::RLIMIT_RTPRIO, &l.max_realtime_priority),
        (libc::RLIMIT_RTTIME, &l.max_realtime_timeout),
    ];
    pairs
        .iter()
        .map(|(res, lim)| wire::Rlimit {
            resource: *res,
            cur: v(&lim.soft_limit),
            max: v(&lim.hard_limit),
        })
        .collect()
}

pub fn file_identity(path: &str, meta: &std::fs::Metadata) -> wire::FileIdentity {
    wire::FileIdentity {
        path: path.to_string(),
        dev: meta.dev(),
        ino: meta.ino(),
        size: meta.size(),
        mtime_sec: meta.mtime(),
        mtime_nsec: meta.mtime_nsec(),
    }
}

/// Classify each mapping; refuse the kinds this version cannot restore.
/// `in_round`: a pre-copy round, where a userfaultfd registration is our
/// own tracker's (the program's own is refused by the final dump).
pub(crate) fn capture_vmas(pid: i32, maps: &[MapEntry], in_round: bool) -> Result<Vec<wire::Vma>> {
    let mut vmas = Vec::with_capacity(maps.len());
    for m in maps {
        let kind = vma_kind(pid, m, in_round)?;
        let mut advice = Vec::new();
        for (flag, adv) in [
            ("dc", libc::MADV_DONTFORK),
            ("wf", libc::MADV_WIPEONFORK),
            ("dd", libc::MADV_DONTDUMP),
            ("hg", libc::MADV_HUGEPAGE),
            ("nh", libc::MADV_NOHUGEPAGE),
            ("sr", libc::MADV_SEQUENTIAL),
            ("rr", libc::MADV_RANDOM),
        ] {
            if m.has_flag(flag) {
                advice.push(adv);
            }
        }
        if m.has_flag("lo") {
            warn!(
                pid,
                start = m.start,
                "mlock()ed mapping will be restored unlocked"
            );
        }
        vmas.push(wire::Vma {
            start: m.start,
            end: m.end,
            prot: (if m.read { wire::PROT_READ } else { 0 })
                | (if m.write { wire::PROT_WRITE } else { 0 })
                | (if m.exec { wire::PROT_EXEC } else { 0 }),
            shared: m.shared,
            growsdown: m.has_flag("gd"),
            kind,
            advice,
            name: m.name.clone(),
        });
    }
    Ok(vmas)
}

fn capture_mm(pid: i32, maps: &[MapEntry], seized: &mut Seized, tracked: bool) -> Result<wire::Mm> {
    let vmas = capture_vmas(pid, maps, tracked)?;
    let p = procfs::process::Process::new(pid).ctx(pid, || "open /proc entry".into())?;
    let stat = p.stat().ctx(pid, || "read stat".into())?;
    let brk = seized.inject(libc::SYS_brk, &[0], "brk(0)")?;
    let exe_path = std::fs::read_link(format!("/proc/{pid}/exe"))
        .ctx(pid, || "readlink exe".into())?
        .to_string_lossy()
        .into_owned();
    if exe_path.ends_with(" (deleted)") {
        return Err(unsupported(
            pid,
            format!("its executable {exe_path} was deleted"),
        ));
    }
    let exe_meta = std::fs::metadata(format!("/proc/{pid}/exe")).ctx(pid, || "stat exe".into())?;
    let need = |v: Option<u64>, what: &str| {
        v.ok_or_else(|| {
            unsupported(
                pid,
                format!("/proc/{pid}/stat lacks {what} (kernel too old)"),
            )
        })
    };
    Ok(wire::Mm {
        vmas,
        start_code: stat.startcode,
        end_code: stat.endcode,
        start_data: need(stat.start_data, "start_data")?,
        end_data: need(stat.end_data, "end_data")?,
        start_brk: need(stat.start_brk, "start_brk")?,
        brk,
        start_stack: stat.startstack,
        arg_start: need(stat.arg_start, "arg_start")?,
        arg_end: need(stat.arg_end, "arg_end")?,
        env_start: need(stat.env_start, "env_start")?,
        env_end: need(stat.env_end, "env_end")?,
        auxv: proc::read_auxv(pid).ctx(pid, || "read auxv".into())?,
        exe: file_identity(&exe_path, &exe_meta),
    })
}

fn vma_kind(pid: i32, m: &MapEntry, in_round: bool) -> Result<wire::VmaKind> {
    let at = || format!("mapping {:#x}-{:#x} ({})", m.start, m.end, m.name);
    match m.name.as_str() {
        "[vdso]" => return Ok(wire::VmaKind::Vdso),
        "[vvar]" => return Ok(wire::VmaKind::Vvar),
        "[vvar_vclock]" => return Ok(wire::VmaKind::VvarVclock),
        "[vsyscall]" => return Ok(wire::VmaKind::Vsyscall),
        _ => {}
    }
    if m.has_flag("io") || m.has_flag("pf") {
        return Err(unsupported(
            pid,
            format!("{}: device (I/O or PFN) mappings cannot be restored", at()),
        ));
    }
    if m.has_flag("ht") {
        return Err(unsupported(
            pid,
            format!("{}: hugetlbfs mappings are not supported yet", at()),
        ));
    }
    if !in_round && (m.has_flag("um") || m.has_flag("uw")) {
        return Err(unsupported(
            pid,
            format!("{}: registered with userfaultfd", at()),
        ));
    }
    if m.inode == 0 {
        return Ok(wire::VmaKind::Anon);
    }
    if m.is_shmem_anon() {
        // MAP_SHARED|MAP_ANONYMOUS shows as a deleted /dev/zero shmem file.
        return Ok(wire::VmaKind::Anon);
    }
    if !m.name.starts_with('/') || m.name.ends_with(" (deleted)") || m.name.starts_with("/memfd:") {
        return Err(unsupported(
            pid,
            format!(
                "{}: mappings of deleted files, memfd and SysV shm are not supported yet",
                at()
            ),
        ));
    }
    let link = format!("/proc/{pid}/map_files/{:x}-{:x}", m.start, m.end);
    let meta = std::fs::metadata(&link).ctx(pid, || format!("stat {link}"))?;
    if meta.ino() != m.inode {
        return Err(unsupported(
            pid,
            format!("{}: file changed identity during the dump", at()),
        ));
    }
    if !meta.is_file() {
        return Err(unsupported(
            pid,
            format!("{}: only regular files can be mapped", at()),
        ));
    }
    Ok(wire::VmaKind::File {
        file: file_identity(&m.name, &meta),
        offset: m.offset,
    })
}

/// What a dump does with established TCP connections.
pub(crate) enum Connections<'a> {
    /// Refuse the program (the default: moving them needs the lock).
    Refuse,
    /// Accept them without touching them (a check before pre-copy).
    Check,
    /// Lock their packets, put them into repair mode and read them; the
    /// bool: the image records the lock (the dump leaves it in place).
    Take(&'a mut tern_state::sockets::Held, bool),
}

/// The record of an fd shared with the outside world, named `name` by
/// `--external` (nothing of it is taken).
fn external_kind(name: &str, link: &str, flags: i32) -> wire::FdKind {
    let mode = match flags & libc::O_ACCMODE {
        libc::O_RDONLY => "read",
        libc::O_WRONLY => "write",
        _ => "read-write",
    };
    wire::FdKind::External {
        name: name.to_string(),
        what: format!("{link} ({mode})"),
        flags: flags & libc::O_NONBLOCK,
    }
}

/// Every open fd of process `pid`: (fd, what /proc/PID/fd names, fdinfo).
fn list_open_fds(pid: i32) -> Result<Vec<(i32, String, proc::FdInfo)>> {
    let fds = proc::list_fds(pid).ctx(pid, || "list fds".into())?;
    let mut listed = Vec::with_capacity(fds.len());
    for &fd in &fds {
        let link = std::fs::read_link(format!("/proc/{pid}/fd/{fd}"))
            .ctx(pid, || format!("readlink fd {fd}"))?
            .to_string_lossy()
            .into_owned();
        let info_text = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}"))
            .ctx(pid, || format!("read fdinfo {fd}"))?;
        let info = proc::parse_fdinfo(&info_text)
            .ok_or_else(|| unsupported(pid, format!("fd {fd}: unreadable fdinfo")))?;
        listed.push((fd, link, info));
    }
    Ok(listed)
}

/// The id of a pipe fd's pipe, from what /proc/PID/fd names.
fn pipe_id(link: &str) -> Option<u64> {
    link.strip_prefix("pipe:[")
        .and_then(|r| r.strip_suffix(']'))
        .and_then(|n| n.parse::<u64>().ok())
}

/// Pipes the process holds both ends of are its own: saved with their
/// data (`own`: its fds not shared with the outside; pipes of `cross` are
/// a tree's, saved with it).
fn own_pipes(
    pid: i32,
    own: &[(i32, String, proc::FdInfo)],
    cross: &CrossProcess,
) -> Result<Vec<wire::Pipe>> {
    // And pipes whose other end is closed (no process at all holds it: a
    // writer whose reader exited, a reader whose writer did): restored
    // with that end closed again, a reader's bytes still to read.
    let mut pipes: Vec<wire::Pipe> = Vec::new();
    for (fd, link, info) in own {
        let Some(id) = pipe_id(link) else { continue };
        if pipes.iter().any(|p| p.id == id) || cross.pipes.contains(&id) {
            continue;
        }
        let end_of = |i: &proc::FdInfo| i.flags & libc::O_ACCMODE;
        let is_reader = end_of(info) == libc::O_RDONLY;
        let holds = |end: i32| {
            own.iter()
                .any(|(_, l, i)| pipe_id(l) == Some(id) && end_of(i) == end)
        };
        let both_ends = holds(libc::O_RDONLY) && holds(libc::O_WRONLY);
        let half_closed = !both_ends && *fd > 2 && proc::holders_of(link, &[pid]).is_empty();
        if (both_ends || half_closed) && is_reader {
            let (size, data) = tern_sys::pipe::peek_pipe(pid, *fd)
                .ctx(pid, || format!("copy the data buffered in pipe fd {fd}"))?;
            pipes.push(wire::Pipe { id, size, data });
        } else if half_closed {
            // Its bytes can never be read: only the capacity matters.
            let size = tern_sys::pipe::pipe_capacity(pid, *fd)
                .ctx(pid, || format!("read the capacity of pipe fd {fd}"))?;
            pipes.push(wire::Pipe {
                id,
                size,
                data: Vec::new(),
            });
        }
    }
    Ok(pipes)
}

/// The program's fds. Shared open file descriptions are found with
/// kcmp(KCMP_FILE). `dir`: where to save the contents of deleted files
/// (`None`: only check that every fd can be dumped).
fn capture_files(
    pid: i32,
    dir: Option<&Path>,
    conns: Connections<'_>,
    cross: &CrossProcess,
) -> Result<wire::Files> {
    let listed = list_open_fds(pid)?;
    let fds: Vec<i32> = listed.iter().map(|l| l.0).collect();
    let mount_ids = own_mount_ids(pid)?;
    for fd in cross.external.keys() {
        if !fds.contains(fd) {
            return Err(unsupported(
                pid,
                format!("fd {fd}, named by --external, is not open"),
            ));
        }
    }
    // Named shared with the outside (and their duplicates): nothing of
    // them is taken.
    let outside = |fd: i32| {
        cross
            .external
            .keys()
            .any(|&e| e == fd || same_file(pid, e, fd))
    };
    let own: Vec<_> = listed.iter().filter(|l| !outside(l.0)).cloned().collect();
    let pipes = own_pipes(pid, &own, cross)?;
    let unix_pairs = tern_state::sockets::capture_unix_pairs(pid, &own, &cross.sockets)?;
    let sockets = take_sockets(pid, &own, &unix_pairs, conns)?;
    let mut out: Vec<wire::Fd> = Vec::with_capacity(fds.len());
    for (fd, link, info) in listed {
        let link = link.as_str();
        let shared = out.iter().find(|o| same_file(pid, o.fd, fd));
        if let Some(o) = shared {
            // Another fd of one open file description: same contents.
            let (desc, kind) = (o.desc, o.kind.clone());
            out.push(wire::Fd {
                fd,
                cloexec: info.flags & libc::O_CLOEXEC != 0,
                desc,
                kind,
            });
            continue;
        }
        let desc = fd as u32;
        if let Some(name) = cross.external.get(&fd) {
            out.push(wire::Fd {
                fd,
                cloexec: info.flags & libc::O_CLOEXEC != 0,
                desc,
                kind: external_kind(name, link, info.flags),
            });
            continue;
        }
        if let Some(id) =
            pipe_id(link).filter(|id| pipes.iter().any(|p| p.id == *id) || cross.pipes.contains(id))
        {
            out.push(wire::Fd {
                fd,
                cloexec: info.flags & libc::O_CLOEXEC != 0,
                desc,
                kind: wire::FdKind::Pipe {
                    id,
                    write_end: info.flags & libc::O_ACCMODE == libc::O_WRONLY,
                    flags: info.flags & libc::O_NONBLOCK,
                },
            });
            continue;
        }
        let cloexec = info.flags & libc::O_CLOEXEC != 0;
        let flags = info.flags
            & !(libc::O_CLOEXEC | libc::O_CREAT | libc::O_EXCL | libc::O_TRUNC | libc::O_NOCTTY);
        if let Some(kind) = unix_pairs.get(&fd) {
            out.push(wire::Fd {
                fd,
                cloexec: info.flags & libc::O_CLOEXEC != 0,
                desc,
                kind: kind.clone(),
            });
            continue;
        }
        let kind = match sockets.probes.iter().find(|p| p.fd == fd) {
            // Only taken by a dump: a check has seen enough.
            Some(p) if p.is_established_tcp() && !sockets.taken => wire::FdKind::Inherited {
                what: "established TCP connection (checked)".into(),
            },
            Some(p) => wire::FdKind::Inet(tern_state::sockets::capture(pid, p, info.flags)?),
            None => fd_kind(
                pid,
                fd,
                link,
                flags,
                info.pos,
                desc,
                dir,
                cross,
                mount_ids.as_deref(),
            )?,
        };
        out.push(wire::Fd {
            fd,
            cloexec,
            desc,
            kind,
        });
    }
    Ok(wire::Files {
        fds: out,
        pipes,
        net_lock: sockets.lock,
    })
}

struct TakenSockets {
    probes: Vec<tern_state::sockets::Probe>,
    /// Established connections are in repair mode and locked.
    taken: bool,
    lock: Option<String>,
}

/// Look at every TCP/UDP socket (but stdio) and deal with the established
/// connections as `conns` says.
fn take_sockets(
    pid: i32,
    listed: &[(i32, String, proc::FdInfo)],
    unix_pairs: &std::collections::BTreeMap<i32, wire::FdKind>,
    conns: Connections<'_>,
) -> Result<TakenSockets> {
    let mut probes = Vec::new();
    for (fd, link, _) in listed {
        if link.starts_with("socket:") && !(0..=2).contains(fd) && !unix_pairs.contains_key(fd) {
            probes.push(tern_state::sockets::probe(pid, *fd)?);
        }
    }
    let established: Vec<&tern_state::sockets::Probe> =
        probes.iter().filter(|p| p.is_established_tcp()).collect();
    let mut out = TakenSockets {
        probes: Vec::new(),
        taken: false,
        lock: None,
    };
    match conns {
        Connections::Refuse => {
            if let Some(p) = established.first() {
                return Err(unsupported(
                    pid,
                    format!(
                        "{}: an established TCP connection; take it with --tcp-established (its packets are held back while it moves)",
                        p.describe()
                    ),
                ));
            }
        }
        Connections::Check => {}
        Connections::Take(held, keep_lock) => {
            let mut pairs = Vec::new();
            for p in &established {
                if let (Some(l), Some(r)) = (p.local, p.peer) {
                    if !pairs.contains(&(l, r)) {
                        pairs.push((l, r));
                    }
                }
            }
            // Locked first: then nothing changes their state or queues.
            held.lock(pid, &pairs)?;
            for p in &established {
                held.repair(pid, p.fd, p.dup.as_fd())?;
            }
            out.taken = true;
            if keep_lock {
                out.lock = held.lock_name().map(str::to_string);
            }
        }
    }
    out.probes = probes;
    Ok(out)
}

fn same_file(pid: i32, fd1: i32, fd2: i32) -> bool {
    tern_sys::same_description(pid, fd1, pid, fd2)
}

#[allow(clippy::too_many_arguments)]
fn fd_kind(
    pid: i32,
    fd: i32,
    link: &str,
    flags: i32,
    offset: u64,
    desc: u32,
    dir: Option<&Path>,
    cross: &CrossProcess,
    mount_ids: Option<&[u32]>,
) -> Result<wire::FdKind> {
    let is_stdio = (0..=2).contains(&fd);
    let what = || format!("fd {fd} ({link})");
    if link.starts_with("pipe:") || link.starts_with("socket:") {
        // Sockets other than stdio were taken by `take_sockets`.
        if is_stdio {
            return Ok(wire::FdKind::Inherited {
                what: link.to_string(),
            });
        }
        return Err(unsupported(
            pid,
            format!(
                "{} is shared with {}: name it with --external fd[{fd}]:NAME and give the restore its replacement with --inherit-fd fd[N]:NAME",
                what(),
                proc::describe_holders(link, &[pid])
            ),
        ));
    }
    let fdinfo = || -> Result<String> {
        std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}"))
            .ctx(pid, || format!("read fdinfo {fd}"))
    };
    if tern_state::files::takes(&tern_state::files::FdLink { pid, fd, link }) {
        let text = fdinfo()?;
        let dumped = |p: i32| p == pid || cross.members.contains(&p);
        return Ok(tern_state::files::capture(&tern_state::files::OpenFd {
            pid,
            fd,
            link,
            flags,
            fdinfo: &text,
            dumped: &dumped,
        })?);
    }
    if link == "anon_inode:[eventpoll]" {
        return capture_epoll(pid, &what(), &fdinfo()?);
    }
    if link == "anon_inode:inotify" {
        return capture_inotify(pid, &what(), flags, &fdinfo()?);
    }
    if !link.starts_with('/') {
        return Err(unsupported(
            pid,
            format!("{}: this kind of file is not supported yet", what()),
        ));
    }
    if !link.starts_with("/memfd:") {
        if let Some(ids) = mount_ids {
            check_inside_mount_namespace(pid, fd, link, &fdinfo()?, ids)?;
        }
    }
    path_fd_kind(pid, fd, link, flags, offset, desc, dir)
}

/// The record of an fd opened by path: a memfd, a deleted file (its
/// contents saved once per open description `desc` into `dir`), a FIFO
/// (with its buffered bytes), a terminal (only as stdio), another
/// character device, a regular file or a directory.
fn path_fd_kind(
    pid: i32,
    fd: i32,
    link: &str,
    flags: i32,
    offset: u64,
    desc: u32,
    dir: Option<&Path>,
) -> Result<wire::FdKind> {
    let is_stdio = (0..=2).contains(&fd);
    let what = || format!("fd {fd} ({link})");
    let proc_path = format!("/proc/{pid}/fd/{fd}");
    let meta = std::fs::metadata(&proc_path).ctx(pid, || format!("stat {}", what()))?;
    let ft = meta.file_type();
    use std::os::unix::fs::FileTypeExt;
    if let Some(name) = link
        .strip_prefix("/memfd:")
        .and_then(|n| n.strip_suffix(" (deleted)"))
    {
        let saved = dir.map(|d| d.join(wire::deleted_file_name(desc)));
        return capture_memfd(pid, fd, name, flags, offset, saved.as_deref());
    }
    if let Some(path) = link.strip_suffix(" (deleted)") {
        if !ft.is_file() {
            return Err(unsupported(
                pid,
                format!("{}: deleted non-regular file", what()),
            ));
        }
        // Save the contents once per open file description.
        if let Some(dir) = dir {
            let target = dir.join(wire::deleted_file_name(desc));
            if !target.exists() {
                save_file_contents(pid, &proc_path, &target)?;
            }
        }
        return Ok(wire::FdKind::Deleted {
            path: path.to_string(),
            flags,
            offset,
            mode: meta.mode() & 0o7777,
            size: meta.size(),
        });
    }
    if ft.is_fifo() {
        let (size, data) = tern_sys::pipe::peek_pipe(pid, fd)
            .ctx(pid, || format!("copy the data buffered in FIFO fd {fd}"))?;
        return Ok(wire::FdKind::Fifo {
            path: link.to_string(),
            flags,
            ino: meta.ino(),
            size,
            data,
        });
    }
    if ft.is_char_device() {
        let major = (meta.rdev() >> 8) & 0xfff;
        // 4, 5 and 136-143 are terminals: they belong to the session, not the image.
        if major == 4 || major == 5 || (136..=143).contains(&major) {
            if is_stdio {
                return Ok(wire::FdKind::Inherited {
                    what: link.to_string(),
                });
            }
            return Err(unsupported(
                pid,
                format!(
                    "{}: terminals other than stdio are not supported yet",
                    what()
                ),
            ));
        }
    } else if !(ft.is_file() || ft.is_dir()) {
        return Err(unsupported(
            pid,
            format!(
                "{}: only regular files, directories and character devices are supported",
                what()
            ),
        ));
    }
    Ok(wire::FdKind::Path {
        path: link.to_string(),
        flags,
        offset,
        file: file_identity(link, &meta),
    })
}

/// The path of what an inotify watch watches: its file handle opened on
/// its file system's mount point, then named by /proc/self/fd.
fn inotify_watch_path(e: &proc::InotifyEntry) -> std::result::Result<String, String> {
    let mount = proc::mount_point_of(e.sdev)
        .ok_or_else(|| format!("its file system (dev {:#x}) is not mounted here", e.sdev))?;
    let mount_fd = std::fs::File::open(&mount).map_err(|err| format!("open {mount}: {err}"))?;
    let fd = tern_sys::open_by_handle(&mount_fd, e.handle_type, &e.handle).map_err(|err| {
        format!("open_by_handle_at on {mount}: {err} (needs CAP_DAC_READ_SEARCH)")
    })?;
    use std::os::fd::AsRawFd;
    let path = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
        .map_err(|err| format!("name the watched file: {err}"))?
        .to_string_lossy()
        .into_owned();
    if path.ends_with(" (deleted)") || !path.starts_with('/') {
        return Err(format!("it watches {path}, which has no path any more"));
    }
    Ok(path)
}

/// An epoll instance: what it watches, by fd (`what` names it).
fn capture_epoll(pid: i32, what: &str, fdinfo: &str) -> Result<wire::FdKind> {
    let targets = proc::parse_epoll_targets(fdinfo)
        .ok_or_else(|| unsupported(pid, format!("{}: unreadable epoll fdinfo", what)))?;
    let mut out = Vec::with_capacity(targets.len());
    for (tfd, events, data, ino) in targets {
        // The registration names the fd it was made with: it must still
        // be that file (else the watched file lives on under another fd,
        // or only inside the epoll, which cannot be rebuilt).
        let same = std::fs::metadata(format!("/proc/{pid}/fd/{tfd}")).is_ok_and(|m| m.ino() == ino);
        if !same {
            return Err(unsupported(
                pid,
                format!(
                    "{}: it watches fd {tfd}, which is no longer open as that file",
                    what
                ),
            ));
        }
        out.push(wire::EpollTarget {
            fd: tfd,
            events,
            data,
        });
    }
    Ok(wire::FdKind::Epoll { targets: out })
}

/// An inotify instance: its watches, each by path (`what` names it).
fn capture_inotify(pid: i32, what: &str, flags: i32, fdinfo: &str) -> Result<wire::FdKind> {
    let entries = proc::parse_inotify(fdinfo)
        .ok_or_else(|| unsupported(pid, format!("{}: unreadable inotify fdinfo", what)))?;
    let mut watches = Vec::with_capacity(entries.len());
    for e in entries {
        let path = inotify_watch_path(&e)
            .map_err(|why| unsupported(pid, format!("{}: watch {}: {why}", what, e.wd)))?;
        watches.push(wire::InotifyWatch {
            wd: e.wd,
            mask: e.mask,
            path,
        });
    }
    watches.sort_by_key(|w| w.wd);
    Ok(wire::FdKind::Inotify {
        flags: flags & libc::O_NONBLOCK,
        watches,
    })
}

/// A memfd (fd `fd` of `pid`, named `name`); its bytes saved to `saved`,
/// once per open file description.
fn capture_memfd(
    pid: i32,
    fd: i32,
    name: &str,
    flags: i32,
    offset: u64,
    saved: Option<&Path>,
) -> Result<wire::FdKind> {
    let what = format!("fd {fd} (/memfd:{name} (deleted))");
    let proc_path = format!("/proc/{pid}/fd/{fd}");
    let meta = std::fs::metadata(&proc_path).ctx(pid, || format!("stat {what}"))?;
    if flags & libc::O_ACCMODE != libc::O_RDWR {
        return Err(unsupported(
            pid,
            format!("{}: a memfd opened other than read-write", what),
        ));
    }
    let dup = tern_sys::take_fd(pid, fd).ctx(pid, || format!("take memfd fd {fd}"))?;
    let seals = tern_sys::memfd_seals(&dup).ctx(pid, || format!("F_GET_SEALS on fd {fd}"))?;
    if name.starts_with("hugetlb") || meta.blksize() > 4096 {
        return Err(unsupported(
            pid,
            format!("{}: hugetlb memfds are not supported yet", what),
        ));
    }
    if let Some(target) = saved {
        if !target.exists() {
            save_file_contents(pid, &proc_path, target)?;
        }
    }
    Ok(wire::FdKind::Memfd {
        name: name.to_string(),
        offset,
        size: meta.size(),
        seals,
        mode: meta.mode() & 0o7777,
    })
}

/// The ids of process `pid`'s mounts if it lives in a mount namespace of
/// its own (read once per process, for [`check_inside_mount_namespace`]).
fn own_mount_ids(pid: i32) -> Result<Option<Vec<u32>>> {
    if !tern_sys::ns::differs(pid, tern_sys::ns::Kind::Mnt).ctx(pid, || "read ns/mnt".into())? {
        return Ok(None);
    }
    let table = tern_sys::mounts::mountinfo(pid).ctx(pid, || "read mountinfo".into())?;
    Ok(Some(table.iter().map(|m| m.id).collect()))
}

/// In a mount namespace of its own a path names a file of that namespace;
/// a file opened on a mount outside it (before the program entered it)
/// would be looked for at the wrong place, unless the same path inside
/// names the same file (`ip netns exec` copies the machine's mounts) or
/// the same device (a runtime's `/dev/null`).
/// `mount_ids`: the ids of its mounts ([`own_mount_ids`]).
fn check_inside_mount_namespace(
    pid: i32,
    fd: i32,
    link: &str,
    fdinfo: &str,
    mount_ids: &[u32],
) -> Result<()> {
    use std::os::unix::fs::FileTypeExt;
    let mnt_id: Option<u32> = fdinfo
        .lines()
        .find_map(|l| l.strip_prefix("mnt_id:"))
        .and_then(|v| v.trim().parse().ok());
    if mnt_id.is_some_and(|id| mount_ids.contains(&id)) {
        return Ok(());
    }
    let outside = std::fs::metadata(format!("/proc/{pid}/fd/{fd}"));
    let inside = std::fs::metadata(format!("/proc/{pid}/root{link}"));
    if let (Ok(o), Ok(i)) = (&outside, &inside) {
        let same_file = (o.dev(), o.ino()) == (i.dev(), i.ino());
        let same_device = o.file_type().is_char_device()
            && i.file_type().is_char_device()
            && o.rdev() == i.rdev();
        if same_file || same_device {
            return Ok(());
        }
    }
    Err(unsupported(
        pid,
        format!(
            "fd {fd} ({link}) is a file of a mount outside its mount namespace (mount {}), opened before it entered it: its path names another file there",
            mnt_id.map_or("?".to_string(), |m| m.to_string())
        ),
    ))
}

fn save_file_contents(pid: i32, src: &str, target: &Path) -> Result<()> {
    use std::io::Read;
    let mut f = std::fs::File::open(src).ctx(pid, || format!("open {src}"))?;
    let mut w = wire::ChunkWriter::create(target, wire::Codec::Zstd(1))?;
    let mut buf = vec![0u8; 1 << 20];
    let mut off = 0u64;
    loop {
        let n = f.read(&mut buf).ctx(pid, || format!("read {src}"))?;
        if n == 0 {
            break;
        }
        w.write(off, &buf[..n])?;
        off += n as u64;
    }
    w.finish()?;
    Ok(())
}
