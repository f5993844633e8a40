//! Restoring a process tree (an image with `tree.img`).
//!
//! The root puppet is created as for one process, keeping a pidfd of tern
//! at an fd number above every number the images use. Each other process
//! is then forked by its parent's puppet (an injected `clone3` with
//! `set_tid`, traced with `PTRACE_O_TRACEFORK` so the child starts stopped
//! and traced by tern), so every process has its real parent, and keeps
//! that pidfd. Sessions and process groups are set while all are blank.
//! Then each process is built as a single one is, parents first, except
//! for what processes share:
//! - pipes between processes are made by tern itself and put into each
//!   process (`pidfd_getfd` run by the puppet on tern's pidfd);
//! - an open file description several processes share is opened by the
//!   first, taken by tern (`pidfd_getfd`) and put into the others;
//! - shared anonymous memory is made by the first process that maps it and
//!   mapped by the others from `/proc/PID/map_files/` of the first (the
//!   same shmem object).

use crate::puppet::Puppet;
use crate::{
    above_image_fds, build_all, check_outside_world, explain, inherited_fds, spawn_puppet, Image,
    Prepared, RestoreError, RestoreOptions, Restored, Result, StepContext,
};
use std::collections::BTreeMap;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::time::{Duration, Instant};
use tern_sys::ptrace;
use tern_wire as wire;
use tracing::{info, warn};

/// What one process of a tree gets from tern instead of making it.
pub(crate) struct Imports {
    /// The puppet's fd holding tern's pidfd.
    pub chan: u64,
    /// Image fd -> tern's fd to put there.
    pub fds: BTreeMap<i32, RawFd>,
    /// Mapping start -> (tern's fd of the shared object, offset in it).
    pub maps: BTreeMap<u64, (RawFd, u64)>,
}

/// A restored tree, every process stopped until [`resume`](Self::resume).
#[derive(Debug)]
pub struct PreparedTree {
    /// The root first.
    members: Vec<Prepared>,
    /// Held until every process has its copies.
    _held: Vec<OwnedFd>,
}

impl PreparedTree {
    pub(crate) fn new(members: Vec<Prepared>, held: Vec<OwnedFd>) -> PreparedTree {
        PreparedTree {
            members,
            _held: held,
        }
    }

    /// The root's pid as this machine sees it.
    pub fn pid(&self) -> i32 {
        self.members.first().map_or(0, Prepared::pid)
    }

    /// The pid the root will see itself as.
    pub fn ns_pid(&self) -> i32 {
        self.members.first().map_or(0, Prepared::ns_pid)
    }

    /// Let every process run (children first); returns the root's report
    /// and how many processes run.
    pub fn resume(mut self) -> Result<(Restored, usize)> {
        let n = self.members.len();
        let root = self.members.remove(0);
        for p in self.members.drain(..).rev() {
            p.resume()?;
        }
        Ok((root.resume()?, n))
    }
}

/// Whether `dir` holds a process tree.
pub fn is_tree(dir: &Path) -> bool {
    dir.join(wire::TREE_FILE).exists()
}

/// Restore the tree in `dir`; returns once every process runs.
///
/// tern is a child subreaper meanwhile: a puppet forked by another is
/// reaped by its tracer (us) only as far as the tracer goes, then waits as
/// a zombie for its parent puppet, which never reaps. When a failed
/// restore kills them all, those zombies come back to us and are reaped
/// here, rather than left to init (slow on some machines) holding the
/// image's pids.
pub fn restore_tree(dir: &Path, opts: &RestoreOptions) -> Result<(Restored, usize)> {
    let _subreaper = Subreaper::on();
    let mut forked = Vec::new();
    let restored = build_tree(dir, opts, &mut forked, None).and_then(PreparedTree::resume);
    if restored.is_err() {
        // Every puppet is killed and its parent gone by now.
        let left = crate::pidns::reap_within(&forked, Duration::from_secs(1));
        if !left.is_empty() {
            warn!(?left, "processes of a failed tree restore not reaped");
        }
    }
    restored
}

/// Restore the tree in `dir` up to the moment it would run: the migration
/// daemon's final round, resumed at the commit (see [`restore_tree`] for
/// why tern is a subreaper meanwhile). With `stream`, the pages its images
/// left out come from there, process by process.
pub fn prepare_tree(
    dir: &Path,
    opts: &RestoreOptions,
    stream: Option<crate::PageStream>,
) -> Result<PreparedTree> {
    let _subreaper = Subreaper::on();
    let mut forked = Vec::new();
    let built = build_tree(dir, opts, &mut forked, stream);
    if built.is_err() {
        let left = crate::pidns::reap_within(&forked, Duration::from_secs(1));
        if !left.is_empty() {
            warn!(?left, "processes of a failed tree restore not reaped");
        }
    }
    built
}

/// This process as a child subreaper until dropped.
#[derive(Debug)]
pub(crate) struct Subreaper;

impl Subreaper {
    pub(crate) fn on() -> Subreaper {
        if let Err(e) = tern_sys::child::set_child_subreaper(true) {
            warn!("cannot become a child subreaper ({e}): a failed tree restore may leave zombies to init");
        }
        Subreaper
    }
}

impl Drop for Subreaper {
    fn drop(&mut self) {
        let _ = tern_sys::child::set_child_subreaper(false);
    }
}

fn bad(dir: &Path, what: String) -> RestoreError {
    RestoreError::BadImage {
        dir: dir.to_path_buf(),
        what,
    }
}

/// Restore the tree in `dir` up to the moment it would run; the pid of
/// every puppet forked is added to `forked`; the pages its images owe come
/// from `stream`.
fn build_tree(
    dir: &Path,
    opts: &RestoreOptions,
    forked: &mut Vec<i32>,
    mut stream: Option<crate::PageStream>,
) -> Result<PreparedTree> {
    let t0 = Instant::now();
    let tree = read_listing(dir)?;
    let procs = &tree.processes;
    let mut images = Vec::with_capacity(procs.len());
    let mut chains = Vec::with_capacity(procs.len());
    let mut owed = Vec::with_capacity(procs.len());
    for (k, p) in procs.iter().enumerate() {
        let image = load_member(dir, k, p, opts, stream.is_some())?;
        // (Without a stream, an image that owes pages was refused.)
        owed.push(match stream {
            Some(_) => {
                crate::postcopy::read_owed(&image.dir, &image.mm.vmas, image.inventory.page_size)?
            }
            None => None,
        });
        chains.push(pre_copy_chain(dir, &image)?);
        images.push(image);
    }
    let tables = images
        .iter()
        .map(|i| wire::hashes::read_page_hashes(&i.dir.join(wire::HASHES_FILE)))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let all_tids: Vec<i32> = images
        .iter()
        .flat_map(|i| i.core.threads.iter().map(|t| t.tid))
        .chain(tree.zombies.iter().map(|z| z.pid))
        .collect();
    // tern's pidfd sits above every fd number any image uses.
    let chan = above_image_fds(&images);
    let namespaces = &images[0].inventory.namespaces;
    let cgroups: Vec<&[wire::Cgroup]> = images.iter().map(|i| &i.inventory.cgroups[..]).collect();
    let (puppets, want) = fork_blank_tree(
        (procs, &tree.zombies),
        &all_tids,
        opts,
        chan,
        namespaces,
        &cgroups,
        forked,
    )?;
    let mut shared = Shared::make(&tree, &images)?;
    let mut members = Vec::with_capacity(procs.len());
    for (k, (p, mut puppet)) in procs.iter().zip(puppets).enumerate() {
        let image = &images[k];
        let imports = shared.imports(&tree, p.pid, image, chan as u64, opts)?;
        let member_stream = stream
            .as_mut()
            .map(|receive| (owed[k].take().unwrap_or_default(), &mut **receive));
        let parts = build_all(
            image,
            &chains[k],
            &tables[k],
            &mut puppet,
            opts,
            Some(&imports),
            member_stream,
        )
        .map_err(|e| explain(&puppet, e))?;
        shared.export(&tree, p.pid, image, puppet.pid)?;
        let ns_pid = member_ns_pid(k, p, want, puppet.pid, opts, namespaces.pid.as_ref());
        members.push(Prepared::new(puppet, k == 0, ns_pid, parts, t0));
    }
    info!(
        root = procs[0].pid,
        processes = members.len(),
        ms = t0.elapsed().as_secs_f64() * 1e3,
        "tree rebuilt, stopped"
    );
    Ok(PreparedTree {
        members,
        _held: shared.held,
    })
}

/// A tree's `tree.img`, checked: a root, no process twice, every parent
/// before its children.
pub(crate) fn read_listing(dir: &Path) -> Result<wire::Tree> {
    crate::check_image_trusted(dir)?;
    let tree: wire::Tree = wire::read_record(&dir.join(wire::TREE_FILE), wire::RecordKind::Tree)?;
    let procs = &tree.processes;
    if procs.is_empty() {
        return Err(bad(dir, "its tree lists no process".into()));
    }
    for (k, p) in procs.iter().enumerate() {
        if procs[..k].iter().any(|q| q.pid == p.pid) {
            return Err(bad(dir, format!("process {} is listed twice", p.pid)));
        }
        if k > 0 && !procs[..k].iter().any(|q| q.pid == p.ppid) {
            return Err(bad(
                dir,
                format!("process {} comes before its parent {}", p.pid, p.ppid),
            ));
        }
    }
    Ok(tree)
}

/// Where the `k`th process `p` of the tree in `dir` keeps its image.
pub(crate) fn member_dir(dir: &Path, k: usize, p: &wire::TreeProcess) -> std::path::PathBuf {
    if k == 0 {
        dir.to_path_buf()
    } else {
        dir.join(wire::tree_process_dir(p.pid))
    }
}

/// The final image of the `k`th process `p` of the tree in `dir`; it may owe
/// pages only if they are `streamed`.
pub(crate) fn load_member(
    dir: &Path,
    k: usize,
    p: &wire::TreeProcess,
    opts: &RestoreOptions,
    streamed: bool,
) -> Result<Image> {
    let pdir = member_dir(dir, k, p);
    let image = Image::load(&pdir)?;
    if !streamed {
        image.refuse_owed_pages()?;
    }
    if image.inventory.pid != p.pid {
        return Err(bad(&pdir, format!("is not an image of process {}", p.pid)));
    }
    check_outside_world(&image, opts)?;
    Ok(image)
}

/// The pid the `k`th process `p` of a tree will see itself as (`ids`: the
/// image's ids in its own PID namespace, if it had one).
pub(crate) fn member_ns_pid(
    k: usize,
    p: &wire::TreeProcess,
    root_want: Option<i32>,
    puppet_pid: i32,
    opts: &RestoreOptions,
    ids: Option<&wire::PidIds>,
) -> i32 {
    if k == 0 {
        root_want.unwrap_or(puppet_pid)
    } else if opts.new_pid {
        puppet_pid
    } else {
        ids.map_or(p.pid, |ids| ids.inner(p.pid))
    }
}

/// The blank puppets of a tree, in the listing's order: the root spawned
/// (keeping a pidfd of tern at fd `chan`), every other forked by its
/// parent's puppet with its pid (unless `--new-pid`), sessions and groups
/// set, each in its cgroups (`cgroups[k]` for process k). Returns them and
/// the pid the root asked for.
pub(crate) fn fork_blank_tree(
    (procs, zombies): (&[wire::TreeProcess], &[wire::Zombie]),
    all_tids: &[i32],
    opts: &RestoreOptions,
    chan: i32,
    namespaces: &wire::Namespaces,
    cgroups: &[&[wire::Cgroup]],
    forked: &mut Vec<i32>,
) -> Result<(Vec<Puppet>, Option<i32>)> {
    let root_pid = procs[0].pid;
    let pidfd = tern_sys::pidfd_open(std::process::id() as i32)
        .step(root_pid, || "pidfd_open of tern itself".into())?;
    let keep = Some((pidfd.as_raw_fd(), chan));
    let (root, want) = spawn_puppet(root_pid, all_tids, opts, keep, namespaces, cgroups[0])?;
    let mut puppets: Vec<Puppet> = vec![root];
    ptrace::set_options(puppets[0].pid, crate::puppet::TRACE_OPTIONS)
        .step(root_pid, || "PTRACE_SETOPTIONS (TRACEFORK)".into())?;
    for p in &procs[1..] {
        let parent = procs
            .iter()
            .position(|q| q.pid == p.ppid)
            .unwrap_or_default();
        let inner = namespaces
            .pid
            .as_ref()
            .map_or(p.pid, |ids| ids.inner(p.pid));
        let want_child = if opts.new_pid { None } else { Some(inner) };
        let mut child = fork_puppet(&mut puppets[parent], want_child, forked)
            .map_err(|e| explain(&puppets[parent], e))?;
        // A session leader leads it before it forks its own children, who
        // are then born into it.
        if p.sid == p.pid {
            let pid = child.pid;
            child
                .syscall(libc::SYS_setsid, &[])
                .step(pid, || "setsid".into())?;
        }
        puppets.push(child);
    }
    set_groups(procs, &mut puppets, namespaces.pid.as_ref())?;
    let made = puppets[0].cgroups_made.clone();
    crate::place_in_cgroups(&mut puppets[1..], &cgroups[1..], made, opts)?;
    for z in zombies {
        let Some(parent) = procs.iter().position(|p| p.pid == z.ppid) else {
            return Err(RestoreError::Unsupported(format!(
                "zombie {} has no parent {} in the tree",
                z.pid, z.ppid
            )));
        };
        let inner = namespaces
            .pid
            .as_ref()
            .map_or(z.pid, |ids| ids.inner(z.pid));
        let want = if opts.new_pid { None } else { Some(inner) };
        make_zombie(&mut puppets[parent], z, want, forked)
            .map_err(|e| explain(&puppets[parent], e))?;
    }
    Ok((puppets, want))
}

/// Have traced process `pid` (in a ptrace stop) die of signal `sig`: sent,
/// seen at its delivery stop, passed on there (a signal given to
/// `PTRACE_CONT` from any other stop is ignored). Whether it died of it.
fn kill_with(pid: i32, sig: i32) -> std::io::Result<bool> {
    tern_sys::signal(pid, sig)?;
    ptrace::cont(pid, 0)?;
    for _ in 0..16 {
        match ptrace::wait(pid)? {
            ptrace::Stop::Signal(s) if s == sig => ptrace::cont(pid, sig)?,
            ptrace::Stop::Killed(s) => return Ok(s == sig),
            ptrace::Stop::Exited(_) => return Ok(false),
            _ => ptrace::cont(pid, 0)?,
        }
    }
    Ok(false)
}

/// Make zombie `z` again: forked by its parent's (blank) puppet with pid
/// `want`, leading its group or session as it did, then ended with its
/// status: `exit_group` with its code, or its signal (made undumpable
/// first, so no core file is written: the status then lacks the core
/// flag). tern, its tracer, waits for it; the kernel then hands it to its
/// parent, which finds it waiting to be reaped (and gets a SIGCHLD).
fn make_zombie(
    parent: &mut Puppet,
    z: &wire::Zombie,
    want: Option<i32>,
    forked: &mut Vec<i32>,
) -> Result<()> {
    let mut child = fork_puppet(parent, want, forked)?;
    let pid = child.pid;
    if z.sid == z.pid {
        child
            .syscall(libc::SYS_setsid, &[])
            .step(pid, || "setsid".into())?;
    } else if z.pgid == z.pid {
        child
            .syscall(libc::SYS_setpgid, &[0, 0])
            .step(pid, || "setpgid".into())?;
    }
    let ended = if libc::WIFEXITED(z.status) {
        let code = libc::WEXITSTATUS(z.status) as u64;
        // Never returns: the wait that follows the exit reports it.
        let _ = child.remote.syscall(libc::SYS_exit_group, &[code]);
        true
    } else if libc::WIFSIGNALED(z.status) {
        let sig = libc::WTERMSIG(z.status);
        child
            .syscall(libc::SYS_prctl, &[libc::PR_SET_DUMPABLE as u64, 0])
            .step(pid, || "prctl(PR_SET_DUMPABLE, 0)".into())?;
        kill_with(pid, sig).step(pid, || format!("deliver signal {sig}"))?
    } else {
        false
    };
    let state = tern_sys::proc::read_stat_state(pid).unwrap_or('?');
    if !ended || state != 'Z' {
        return Err(RestoreError::Step {
            pid,
            what: format!("make zombie {} with status {:#x}", z.pid, z.status),
            source: std::io::Error::other(format!("it is in state {state}")),
        });
    }
    child.forget();
    Ok(())
}

/// What the processes of a tree share, made or taken by tern and put into
/// each: pipes and socketpairs between processes (made before any process
/// is built), open file descriptions and shared memory (taken from the
/// first process that has them, once it is built).
pub(crate) struct Shared {
    /// Held until every process has its copies.
    pub held: Vec<OwnedFd>,
    pipe_ends: BTreeMap<u64, (RawFd, RawFd)>,
    pair_ends: BTreeMap<u64, RawFd>,
    /// Group of `tree.shared_fds` -> tern's copy.
    fds: BTreeMap<usize, RawFd>,
    /// Group of `tree.shared_memory` -> tern's fd of the object.
    maps: BTreeMap<usize, RawFd>,
}

impl Shared {
    pub fn make(tree: &wire::Tree, images: &[Image]) -> Result<Shared> {
        let root_pid = tree.processes.first().map_or(0, |p| p.pid);
        let mut held: Vec<OwnedFd> = Vec::new();
        let mut pipe_ends = BTreeMap::new();
        for p in &tree.pipes {
            let (r, w) = make_pipe(p, images).step(root_pid, || format!("make pipe {}", p.id))?;
            pipe_ends.insert(p.id, (r.as_raw_fd(), w.as_raw_fd()));
            held.push(r);
            held.push(w);
        }
        let pair_ends = make_cross_pairs(images, &mut held).step(root_pid, || {
            "make the unix socketpairs shared between processes".into()
        })?;
        Ok(Shared {
            held,
            pipe_ends,
            pair_ends,
            fds: BTreeMap::new(),
            maps: BTreeMap::new(),
        })
    }

    /// What process `pid` (its image `image`, tern's pidfd at `chan` in
    /// its puppet) gets from tern: the fds given for its external ones,
    /// its ends of the shared pipes and socketpairs, the descriptions and
    /// memory earlier processes made.
    pub fn imports(
        &self,
        tree: &wire::Tree,
        pid: i32,
        image: &Image,
        chan: u64,
        opts: &RestoreOptions,
    ) -> Result<Imports> {
        let mut imports = Imports {
            chan,
            fds: inherited_fds(image, opts)?,
            maps: BTreeMap::new(),
        };
        for f in &image.files.fds {
            if let wire::FdKind::Pipe { id, write_end, .. } = &f.kind {
                if let Some(&(r, w)) = self.pipe_ends.get(id) {
                    imports.fds.insert(f.fd, if *write_end { w } else { r });
                }
            }
        }
        imports.fds.extend(pair_imports(image, &self.pair_ends));
        for (g, group) in tree.shared_fds.iter().enumerate() {
            if let Some(&fd) = self.fds.get(&g) {
                for &(_, n) in group.iter().skip(1).filter(|m| m.0 == pid) {
                    imports.fds.insert(n, fd);
                }
            }
        }
        for (g, group) in tree.shared_memory.iter().enumerate() {
            if let Some(&fd) = self.maps.get(&g) {
                // The first process made the object from its own offset
                // (found checked to cover the others' ranges at dump).
                let base = group.first().map_or(0, |m| m.2);
                for &(_, start, offset) in group.iter().skip(1).filter(|m| m.0 == pid) {
                    imports
                        .maps
                        .insert(start, (fd, offset.saturating_sub(base)));
                }
            }
        }
        Ok(imports)
    }

    /// Take from process `pid`, built into puppet `puppet_pid`, what the
    /// later processes share with it.
    pub fn export(
        &mut self,
        tree: &wire::Tree,
        pid: i32,
        image: &Image,
        puppet_pid: i32,
    ) -> Result<()> {
        for (g, group) in tree.shared_fds.iter().enumerate() {
            if let Some(&(first, fd)) = group.first() {
                if first == pid {
                    let dup = tern_sys::take_fd(puppet_pid, fd)
                        .step(pid, || format!("take its fd {fd} for the other processes"))?;
                    self.fds.insert(g, dup.as_raw_fd());
                    self.held.push(dup);
                }
            }
        }
        for (g, group) in tree.shared_memory.iter().enumerate() {
            if let Some(&(first, start, _)) = group.first() {
                if first == pid {
                    let end = image
                        .mm
                        .vmas
                        .iter()
                        .find(|v| v.start == start)
                        .map(|v| v.end)
                        .ok_or_else(|| {
                            bad(&image.dir, format!("no mapping at {start:#x} to share"))
                        })?;
                    let path = format!("/proc/{puppet_pid}/map_files/{start:x}-{end:x}");
                    let f = std::fs::OpenOptions::new()
                        .read(true)
                        .write(true)
                        .open(&path)
                        .step(pid, || format!("open {path} (needs CAP_SYS_ADMIN)"))?;
                    let fd: OwnedFd = f.into();
                    self.maps.insert(g, fd.as_raw_fd());
                    self.held.push(fd);
                }
            }
        }
        Ok(())
    }
}

/// The pre-copy rounds a process's image of a tree builds on, oldest
/// first: they must lie inside the tree's image directory `top` (where
/// `tern dump --pre-copy` and a migration put them; `--parent` images of
/// trees are not made) and hold their pages.
fn pre_copy_chain(top: &Path, image: &Image) -> Result<Vec<std::path::PathBuf>> {
    let chain = image.ancestors()?;
    let top = top
        .canonicalize()
        .map_err(|e| bad(top, format!("cannot be resolved: {e}")))?;
    for round in &chain {
        if !round.starts_with(&top) {
            return Err(bad(
                &image.dir,
                format!(
                    "its parent image {} lies outside the tree's image directory",
                    round.display()
                ),
            ));
        }
        if !round.join(wire::PAGES_FILE).exists() {
            return Err(bad(round, format!("{} is missing", wire::PAGES_FILE)));
        }
    }
    Ok(chain)
}

/// What one pre-copy round of a tree (as a migration receives it: kept
/// whole for the final image's chain) holds: its pages in all. Each
/// process's part must be a pre-dump of that process.
pub fn tree_round_pages(dir: &Path) -> Result<u64> {
    crate::check_image_trusted(dir)?;
    let listing: wire::Tree =
        wire::read_record(&dir.join(wire::TREE_FILE), wire::RecordKind::Tree)?;
    let mut pages = 0;
    for (k, p) in listing.processes.iter().enumerate() {
        let pdir = if k == 0 {
            dir.to_path_buf()
        } else {
            dir.join(wire::tree_process_dir(p.pid))
        };
        let inv: wire::Inventory = wire::read_record(
            &pdir.join(wire::INVENTORY_FILE),
            wire::RecordKind::Inventory,
        )?;
        if !inv.pre_dump || inv.pid != p.pid || inv.page_size == 0 {
            return Err(bad(
                &pdir,
                format!("is not a pre-copy round of process {}", p.pid),
            ));
        }
        pages += inv.pages_bytes / inv.page_size;
    }
    Ok(pages)
}

/// A migration's final image of a tree, received into `stage/round-N`
/// beside its rounds (`stage/round-K`): moved up into `stage`, where its
/// parent paths lead (the layout `tern dump --pre-copy` writes). Returns
/// `stage`.
pub(crate) fn move_up(final_dir: &Path) -> Result<std::path::PathBuf> {
    let stage = final_dir
        .parent()
        .ok_or_else(|| bad(final_dir, "has no parent directory".into()))?;
    let moved = (|| {
        for e in std::fs::read_dir(final_dir)? {
            let e = e?;
            std::fs::rename(e.path(), stage.join(e.file_name()))?;
        }
        std::fs::remove_dir(final_dir)
    })();
    moved.map_err(|e| bad(final_dir, format!("cannot move the final image up: {e}")))?;
    Ok(stage.to_path_buf())
}

/// Have `parent` (a blank puppet, traced with `PTRACE_O_TRACEFORK`) fork a
/// child with pid `want` (in the parent's PID namespace); take it over.
fn fork_puppet(parent: &mut Puppet, want: Option<i32>, forked: &mut Vec<i32>) -> Result<Puppet> {
    let ppid = parent.pid;
    let before = tern_sys::proc::list_children(ppid).step(ppid, || "list children".into())?;
    // struct clone_args (v2, 88 bytes) and the one-entry set_tid array on
    // the blank puppet's stack, well below where it stopped.
    let regs = ptrace::get_regs(ppid).step(ppid, || "read registers".into())?;
    let at = (regs.rsp - 4096) & !15;
    let tid_at = at + 128;
    let mut args = [0u64; 11];
    args[4] = libc::SIGCHLD as u64; // exit_signal
    if let Some(pid) = want {
        args[8] = tid_at; // set_tid
        args[9] = 1; // set_tid_size
        tern_sys::mem::write_fully(ppid, tid_at, &pid.to_le_bytes())
            .step(ppid, || "write set_tid".into())?;
    }
    let bytes: Vec<u8> = args.iter().flat_map(|a| a.to_le_bytes()).collect();
    tern_sys::mem::write_fully(ppid, at, &bytes).step(ppid, || "write clone_args".into())?;
    let r = parent
        .remote
        .syscall(tern_sys::nr::CLONE3, &[at, 88])
        .step(ppid, || "clone3 in the parent".into())?;
    if r < 0 {
        let e = std::io::Error::from_raw_os_error(-r as i32);
        return Err(match (e.raw_os_error(), want) {
            (Some(libc::EEXIST), Some(pid)) => RestoreError::PidBusy { pid, waited_ms: 0 },
            _ => RestoreError::Step {
                pid: ppid,
                what: "fork a child (clone3)".into(),
                source: e,
            },
        });
    }
    let after = tern_sys::proc::list_children(ppid).step(ppid, || "list children".into())?;
    let Some(&child) = after.iter().find(|c| !before.contains(c)) else {
        return Err(RestoreError::Step {
            pid: ppid,
            what: "find the forked child".into(),
            source: std::io::Error::other("no new child listed"),
        });
    };
    forked.push(child);
    let mut puppet = Puppet::adopt_fork(child, parent.remote.gadget())
        .step(child, || "take over the forked child".into())?;
    puppet.namespace = parent.namespace.clone();
    Ok(puppet)
}

/// Process groups as the images had them, once every process exists
/// (sessions were set as each was forked): the root leads a session and
/// group of its own (as a single restored process does); a child that led
/// a group leads one; one in the group of another process of the tree
/// joins it; any other stays in the group it was born into.
fn set_groups(
    procs: &[wire::TreeProcess],
    puppets: &mut [Puppet],
    ids: Option<&wire::PidIds>,
) -> Result<()> {
    let in_tree = |pid: i32| procs.iter().any(|p| p.pid == pid);
    let mut order: Vec<usize> = (1..procs.len()).collect();
    // Group leaders before the members that join them.
    order.sort_by_key(|&k| procs[k].pgid != procs[k].pid);
    for k in order {
        let p = &procs[k];
        let puppet = &mut puppets[k];
        let pid = puppet.pid;
        if p.sid == p.pid {
            // setsid made it a group leader already.
        } else if p.pgid == p.pid {
            puppet
                .syscall(libc::SYS_setpgid, &[0, 0])
                .step(pid, || "setpgid (leader)".into())?;
        } else if in_tree(p.pgid) && p.pgid != procs[0].pid {
            let group = ids.map_or(p.pgid, |ids| ids.inner(p.pgid));
            puppet
                .syscall(libc::SYS_setpgid, &[0, group as u64])
                .step(pid, || format!("setpgid to group {}", p.pgid))?;
        }
    }
    Ok(())
}

/// The unix socket pairs of the images that tern makes (each end's
/// waiting bytes sent from the other end, O_NONBLOCK as recorded): those
/// whose two ends are held by different processes, and accepted
/// connections (one end named, made through a listener of tern's:
/// `tern_sys::sock::accepted_pair`). End inode -> tern's fd (kept in
/// `held`).
pub(crate) fn make_cross_pairs(
    images: &[Image],
    held: &mut Vec<OwnedFd>,
) -> std::io::Result<BTreeMap<u64, RawFd>> {
    struct End<'a> {
        process: usize,
        ino: u64,
        kind: i32,
        nonblock: bool,
        queued: &'a [u8],
        name: Option<&'a [u8]>,
        accepted: bool,
    }
    let mut pairs: BTreeMap<u64, Vec<End<'_>>> = BTreeMap::new();
    for (k, image) in images.iter().enumerate() {
        for f in &image.files.fds {
            if let wire::FdKind::UnixPair {
                pair,
                ino,
                kind,
                flags,
                queued,
                name,
                accepted,
            } = &f.kind
            {
                pairs.entry(*pair).or_default().push(End {
                    process: k,
                    ino: *ino,
                    kind: *kind,
                    nonblock: flags & libc::O_NONBLOCK != 0,
                    queued,
                    name: name.as_deref(),
                    accepted: *accepted,
                });
            }
        }
    }
    let mut out = BTreeMap::new();
    for (pair, ends) in pairs {
        // One process makes an unnamed pair of its own itself.
        if ends
            .iter()
            .all(|e| e.process == ends[0].process && e.name.is_none())
        {
            continue;
        }
        let a = &ends[0];
        let Some(b) = ends.iter().find(|e| e.ino != a.ino) else {
            return Err(std::io::Error::other(format!(
                "unix socket pair {pair} has one end in the images"
            )));
        };
        // An accepted connection: made through a listener of ours bound to
        // the accepted end's name, the client bound to its own if it had one.
        let accepted = |acc: &End<'_>, cli: &End<'_>| match acc.name {
            Some(name) => tern_sys::sock::accepted_pair(acc.kind, name, cli.name),
            None => Err(std::io::Error::other(format!(
                "unix socket pair {pair}: its accepted end has no name"
            ))),
        };
        let (fa, fb) = if a.accepted {
            accepted(a, b)?
        } else if b.accepted {
            let (fb, fa) = accepted(b, a)?;
            (fa, fb)
        } else if a.name.is_none() && b.name.is_none() {
            tern_sys::sock::socketpair(a.kind)?
        } else {
            return Err(std::io::Error::other(format!(
                "unix socket pair {pair} has a named end that no listener accepted"
            )));
        };
        use std::os::fd::AsFd;
        tern_sys::sock::send_all(fb.as_fd(), a.queued)?;
        tern_sys::sock::send_all(fa.as_fd(), b.queued)?;
        let nonblock = |ino: u64| ends.iter().any(|e| e.ino == ino && e.nonblock);
        if nonblock(a.ino) {
            tern_sys::sock::set_status_flags(fa.as_fd(), libc::O_NONBLOCK)?;
        }
        if nonblock(b.ino) {
            tern_sys::sock::set_status_flags(fb.as_fd(), libc::O_NONBLOCK)?;
        }
        out.insert(a.ino, fa.as_raw_fd());
        out.insert(b.ino, fb.as_raw_fd());
        held.push(fa);
        held.push(fb);
    }
    Ok(out)
}

/// Image fd -> tern's fd for the ends of `image`'s unix pairs among `ends`
/// (made by [`make_cross_pairs`]).
pub(crate) fn pair_imports(image: &Image, ends: &BTreeMap<u64, RawFd>) -> Vec<(i32, RawFd)> {
    image
        .files
        .fds
        .iter()
        .filter_map(|f| match &f.kind {
            wire::FdKind::UnixPair { ino, .. } => ends.get(ino).map(|&e| (f.fd, e)),
            _ => None,
        })
        .collect()
}

/// Make pipe `p` here with its capacity and data, each end with the
/// O_NONBLOCK the images give it.
fn make_pipe(p: &wire::Pipe, images: &[Image]) -> std::io::Result<(OwnedFd, OwnedFd)> {
    let (r, w) = tern_sys::pipe::make(p.size)?;
    if !p.data.is_empty() {
        tern_sys::pipe::fill(&w, &p.data)?;
    }
    let nonblock = |want_write: bool| {
        images.iter().any(|i| {
            i.files.fds.iter().any(|f| {
                matches!(&f.kind, wire::FdKind::Pipe { id, write_end, flags }
                    if *id == p.id && *write_end == want_write && flags & libc::O_NONBLOCK != 0)
            })
        })
    };
    if nonblock(false) {
        tern_sys::pipe::set_nonblock(&r)?;
    }
    if nonblock(true) {
        tern_sys::pipe::set_nonblock(&w)?;
    }
    Ok((r, w))
}
