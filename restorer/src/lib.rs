//! tern's destination side: rebuild a process from an image.
//!
//! All records are read and verified, and every file the image refers to is
//! checked, before any process is created. The puppet (see [`puppet`]) is
//! then reshaped step by step; if any step fails it is killed, so a bad
//! image never leaves a half-restored program behind.

#![deny(unsafe_code)]

mod files;
mod fill;
mod image;
pub mod journal;
pub mod pidns;
pub mod postcopy;
pub mod puppet;
pub mod serve;
mod shape;
mod spawn;
pub mod standby;
pub mod streamed;
pub mod tree;
pub mod tree_standby;

pub use image::Image;
use image::*;
use puppet::Puppet;
use shape::{SCRATCH_AUXV, SCRATCH_LEN, SCRATCH_PATH, SCRATCH_STRUCT};
use spawn::*;
use std::collections::BTreeMap;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tern_state::regs::regs_from_wire;
use tern_sys::{mem, nr, ptrace, RemoteThread};
use tern_wire as wire;
use tracing::{debug, info, warn};

#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error(transparent)]
    Wire(#[from] wire::WireError),
    #[error("image {dir}: {what}")]
    BadImage { dir: PathBuf, what: String },
    #[error("{path}: {what}")]
    File { path: String, what: String },
    #[error(
        "pid {pid} is in use by another process (waited {waited_ms} ms); free it or use --new-pid"
    )]
    PidBusy { pid: i32, waited_ms: u64 },
    #[error("restoring process {pid}: {what}")]
    Step {
        pid: i32,
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot restore here: {0}")]
    Unsupported(String),
    /// The pages a streamed stop-and-copy sends after its image did not
    /// all come, or not as owed.
    #[error("streamed pages: {0}")]
    Stream(String),
    /// An fd the image shares with a process outside it has no
    /// replacement among the options.
    #[error("process {pid}'s fd {fd} ({what}) was shared with a process outside the image, named {name:?}: give its replacement with --inherit-fd fd[N]:{name}")]
    NotInherited {
        pid: i32,
        fd: i32,
        name: String,
        what: String,
    },
    /// The restored program would not have exactly the image's
    /// credentials (it is never run with others).
    #[error("cannot give the program exactly the image's credentials: {0}")]
    Creds(String),
    /// The program being rebuilt died under tern (the OOM killer picks it
    /// first: see `Puppet::spawn`).
    #[error("the program being rebuilt (pid {pid}) was killed by signal {signal}{}, while: {during}", if *signal == libc::SIGKILL { " (out of memory on this machine? tern makes a program being rebuilt the first the OOM killer picks; the kernel log says)" } else { "" })]
    Killed {
        pid: i32,
        signal: i32,
        during: String,
    },
}

pub type Result<T> = std::result::Result<T, RestoreError>;

trait StepContext<T> {
    fn step(self, pid: i32, what: impl FnOnce() -> String) -> Result<T>;
}

impl<T> StepContext<T> for io::Result<T> {
    fn step(self, pid: i32, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|source| RestoreError::Step {
            pid,
            what: what(),
            source,
        })
    }
}

#[derive(Debug, Clone)]
pub struct RestoreOptions {
    /// Give the program a new pid instead of its own (risky: glibc caches
    /// the tid, so thread-directed signals and robust futexes may misbehave).
    pub new_pid: bool,
    /// How long to wait for the original pid to become free
    /// (with [`PidNsMode::Never`]).
    pub pid_wait: Duration,
    /// Whether to restore into a fresh PID namespace.
    pub pid_ns: PidNsMode,
    /// A shell job: the program joins the restoring tern's session and
    /// process group (so its terminal's job control reaches it) instead of
    /// a session of its own.
    pub shell_job: bool,
    /// Replacements for the image's fds that were shared with processes
    /// outside it (`FdKind::External`): name -> this process's fd, put in
    /// their place (`--inherit-fd fd[N]:NAME`). Left open here.
    pub inherit_fds: BTreeMap<String, RawFd>,
    /// Whether the program goes back into its cgroups.
    pub cgroups: CgroupMode,
}

/// What a restore does with the image's cgroups (`--manage-cgroups`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupMode {
    /// Join them, making the missing ones with the image's settings
    /// (existing ones are used as they are).
    Soft,
    /// Leave the program in the restoring tern's cgroups.
    Ignore,
}

impl std::str::FromStr for CgroupMode {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "soft" => Ok(CgroupMode::Soft),
            "ignore" => Ok(CgroupMode::Ignore),
            other => Err(format!("{other:?}: expected soft or ignore")),
        }
    }
}

/// When to restore into a fresh PID namespace (where the image's ids are
/// free even if this machine's are taken).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PidNsMode {
    /// Only if one of the image's ids is taken here.
    Auto,
    Always,
    /// Never: wait for the ids to become free, or fail.
    Never,
}

impl std::str::FromStr for PidNsMode {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "auto" => Ok(PidNsMode::Auto),
            "always" => Ok(PidNsMode::Always),
            "never" => Ok(PidNsMode::Never),
            other => Err(format!("{other:?}: expected auto, always or never")),
        }
    }
}

impl Default for RestoreOptions {
    fn default() -> Self {
        RestoreOptions {
            new_pid: false,
            pid_wait: Duration::from_secs(5),
            shell_job: false,
            pid_ns: PidNsMode::Auto,
            inherit_fds: BTreeMap::new(),
            cgroups: CgroupMode::Soft,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Restored {
    /// The program's pid as this machine sees it.
    pub pid: i32,
    /// The pid it sees itself (differs inside a fresh PID namespace).
    pub ns_pid: i32,
    /// The fresh PID namespace's init (our reaper), if one was made.
    pub pid_ns_init: Option<i32>,
    pub restore_ms: f64,
    pub pages_bytes: u64,
}

/// A restored program, complete and stopped just before it runs: killed
/// (with its PID namespace) if dropped, or let go with [`Prepared::resume`].
/// What a finished build hands over to [`Prepared`].
pub(crate) struct Parts {
    threads: Vec<i32>,
    pending: Vec<i32>,
    queued: Vec<(i32, Vec<u8>)>,
    pages_bytes: u64,
    oom_score_adj: i32,
    net: Network,
}

/// The restored program's TCP connections until it runs: rebuilt in
/// repair mode, their packets dropped by a lock in this network namespace.
/// Dropped unused (restore failed), the connections vanish silently and
/// the lock is lifted.
#[derive(Default, Debug)]
struct Network {
    repaired: Vec<tern_state::sockets::Repaired>,
    lock: Option<tern_sys::netlock::NetLock>,
    /// Our lock being lifted.
    lifting: Option<std::thread::JoinHandle<std::io::Result<()>>>,
    /// The dump's lock being lifted.
    lifting_dump: Option<std::thread::JoinHandle<std::io::Result<()>>>,
    /// The lock `tern dump` left on them (same machine), lifted with ours.
    dump_lock: Option<String>,
    /// Its unix sockets bound at paths: bound as it is let go, the paths
    /// staying the source's until then.
    binds: Vec<tern_state::sockets::PathBind>,
}

impl Network {
    /// The program is rebuilt: start lifting our lock. It kept packets
    /// from sockets not yet there; the connections now exist, in repair
    /// mode, and packets reach this machine only once the handoff moved
    /// them (after this). Overlaps the ~15 ms it costs with the handoff
    /// and the commit.
    fn ready(&mut self, pid: i32) -> Result<()> {
        if let Some(l) = self.lock.take() {
            self.lifting = Some(
                l.remove_in_background()
                    .step(pid, || "lift the network lock (nft)".into())?,
            );
        }
        if let Some(name) = self.dump_lock.take() {
            self.lifting_dump = Some(
                tern_sys::netlock::start_removing_table(None, &name)
                    .step(pid, || "lift the network lock of the dump (nft)".into())?,
            );
        }
        Ok(())
    }

    /// Connections live: repair off, unsent bytes sent, locks lifted.
    fn go_live(&mut self, pid: i32) -> Result<()> {
        self.ready(pid)?;
        if let Some(h) = self.lifting.take() {
            // The program's first answer must not meet the lock.
            match h.join() {
                Ok(r) => r.step(pid, || "lift the network lock (nft)".into())?,
                Err(_) => warn!(pid, "the thread lifting the network lock panicked"),
            }
        }
        for b in self.binds.drain(..) {
            let path = b.path().display().to_string();
            b.bind()
                .step(pid, || format!("bind the unix socket at {path}"))?;
        }
        let t = Instant::now();
        for r in self.repaired.drain(..) {
            r.finish().step(pid, || "TCP repair off".into())?;
        }
        debug!(ms = t.elapsed().as_secs_f64() * 1e3, "TCP repair off");
        if let Some(h) = self.lifting_dump.take() {
            match h.join() {
                Ok(Ok(())) => info!(pid, "lifted the network lock tern dump left"),
                // Absent when the image was made on another machine.
                Ok(Err(e)) => debug!(pid, "no network lock of the dump here: {e}"),
                Err(_) => warn!(pid, "the thread lifting the dump's lock panicked"),
            }
        }
        Ok(())
    }
}

#[derive(Debug)]
pub struct Prepared {
    puppet: Puppet,
    /// Whether this program (a single one, a tree's root) keeps its fresh
    /// PID namespace alive when it runs (the puppet holds the namespace).
    keeps_namespace: bool,
    threads: Vec<i32>,
    /// Signals to deliver once it runs.
    pending: Vec<i32>,
    /// Queued signals with their siginfo, (host tid or 0 for the process,
    /// raw siginfo), in queue order.
    queued: Vec<(i32, Vec<u8>)>,
    ns_pid: i32,
    pages_bytes: u64,
    /// The image's, set as it is let go (until then it is the first the
    /// OOM killer takes).
    oom_score_adj: i32,
    t0: Instant,
    /// After the puppet: its connections vanish with it if it never runs.
    net: Network,
    /// Pages the final image left at the source (post-copy): taken by
    /// whoever will fill them before [`resume`](Self::resume).
    owed: Option<postcopy::OwedPages>,
}

impl Prepared {
    /// A rebuilt program (stopped `puppet`, the pid it sees itself as,
    /// what its build left to do at resume), built since `t0`.
    pub(crate) fn new(
        puppet: Puppet,
        keeps_namespace: bool,
        ns_pid: i32,
        parts: Parts,
        t0: Instant,
    ) -> Prepared {
        Prepared {
            puppet,
            keeps_namespace,
            threads: parts.threads,
            pending: parts.pending,
            queued: parts.queued,
            ns_pid,
            pages_bytes: parts.pages_bytes,
            oom_score_adj: parts.oom_score_adj,
            t0,
            net: parts.net,
            owed: None,
        }
    }

    /// Its pid as this machine sees it.
    /// The pid the program will see itself as.
    pub fn ns_pid(&self) -> i32 {
        self.ns_pid
    }

    pub fn pid(&self) -> i32 {
        self.puppet.pid
    }

    pub(crate) fn owe(&mut self, owed: Option<postcopy::OwedPages>) {
        self.owed = owed;
    }

    /// The pages it still owes (post-copy), for the caller to fill once it
    /// runs. Must be taken before [`resume`](Self::resume) when there are
    /// any.
    pub fn take_owed(&mut self) -> Option<postcopy::OwedPages> {
        self.owed.take()
    }

    /// Let the program run.
    pub fn resume(mut self) -> Result<Restored> {
        let pid = self.puppet.pid;
        if let Some(owed) = &self.owed {
            // Nobody would fill them: the program would read zeros there.
            return Err(RestoreError::Unsupported(format!(
                "{} page(s) of this program are still at the source and nothing here would fetch them (post-copy images are resumed by `tern serve` only)",
                owed.len()
            )));
        }
        // First what can still fail without harm (its connections are
        // still in repair mode, and vanish with it if it dies).
        std::fs::write(
            format!("/proc/{pid}/oom_score_adj"),
            self.oom_score_adj.to_string(),
        )
        .step(pid, || format!("set oom_score_adj {}", self.oom_score_adj))?;
        // Before it runs: a socket still in repair mode refuses its writes.
        let t = Instant::now();
        self.net.go_live(pid)?;
        debug!(ms = t.elapsed().as_secs_f64() * 1e3, "connections live");
        for &tid in &self.threads {
            ptrace::detach(tid, 0).step(pid, || format!("PTRACE_DETACH of thread {tid}"))?;
        }
        // Held back while it was driven: after the image's queued ones.
        let held = &self.puppet.remote.intercepted_info;
        self.queued.extend(held.iter().map(|i| (0, i.to_vec())));
        self.puppet.release().step(pid, || "PTRACE_DETACH".into())?;
        for (tid, info) in &self.queued {
            ptrace::replay_signal(pid, *tid, info);
        }
        for &sig in &self.pending {
            let _ = tern_sys::signal(pid, sig);
        }
        let restored = Restored {
            pid,
            ns_pid: self.ns_pid,
            pid_ns_init: match &self.puppet.namespace {
                Some(ns) if self.keeps_namespace => Some(ns.keep()),
                _ => None,
            },
            restore_ms: self.t0.elapsed().as_secs_f64() * 1e3,
            pages_bytes: self.pages_bytes,
        };
        info!(?restored, "restored program runs");
        Ok(restored)
    }
}

/// Restore the image in `dir`; returns once the program runs.
pub fn restore(dir: &Path, opts: &RestoreOptions) -> Result<Restored> {
    prepare(dir, opts)?.resume()
}

/// Restore the image in `dir` up to the moment it would run.
pub fn prepare(dir: &Path, opts: &RestoreOptions) -> Result<Prepared> {
    let t0 = Instant::now();
    let image = Image::load(dir)?;
    image.refuse_owed_pages()?;
    prepare_image(image, opts, None, t0)
}

/// Where a streamed stop-and-copy's pages come from: fills the pages it is
/// given, process `pid`'s (its pid at the source), until every one is in
/// (placing each as it arrives), or says why it cannot.
pub type PageStream<'a> = &'a mut PageStreamFn<'a>;

/// What a [`PageStream`] points to.
pub type PageStreamFn<'a> =
    dyn FnMut(i32, &mut streamed::StreamedPages) -> std::result::Result<(), String> + 'a;

/// [`prepare`] for the final image of a streamed stop-and-copy, which
/// leaves the pages of its private anonymous memory out (`deferred.img`):
/// once its mappings and its other pages are made, `receive` places them
/// as the source sends them; the rest is rebuilt once all are in.
pub fn prepare_streamed(
    dir: &Path,
    opts: &RestoreOptions,
    receive: PageStream,
) -> Result<Prepared> {
    let t0 = Instant::now();
    let image = Image::load(dir)?;
    let owed =
        postcopy::read_owed(dir, &image.mm.vmas, image.inventory.page_size)?.unwrap_or_default();
    prepare_image(image, opts, Some((owed, receive)), t0)
}

/// Rebuild `image` (loaded since `t0`) up to the moment it would run;
/// with `stream`, the pages it owes come from there.
fn prepare_image(
    image: Image,
    opts: &RestoreOptions,
    stream: Option<(Vec<u64>, PageStream)>,
    t0: Instant,
) -> Result<Prepared> {
    let dir = image.dir.clone();
    let dir = dir.as_path();
    check_outside_world(&image, opts)?;
    // Not needed to rebuild the process, but part of the image: a damaged
    // table means a damaged image, and a later `--parent` would trust it.
    let final_pages = wire::hashes::read_page_hashes(&dir.join(wire::HASHES_FILE))?;
    let ancestors = image.ancestors()?;
    for a in &ancestors {
        let pages = a.join(wire::PAGES_FILE);
        if !pages.exists() {
            return Err(image.bad(format!("{} is missing", pages.display())));
        }
    }
    let tids: Vec<i32> = image.core.threads.iter().map(|t| t.tid).collect();
    // Fds given for the image's external ones: the puppet takes them from
    // tern through tern's pidfd, kept above the image's fd numbers.
    let mut inherited = inherited_fds(&image, opts)?;
    // Accepted unix connections are made by tern (through a listener of
    // its own) and taken the same way.
    let mut held = Vec::new();
    let pairs = tree::make_cross_pairs(std::slice::from_ref(&image), &mut held)
        .step(image.core.pid, || {
            "make its accepted unix connections".into()
        })?;
    inherited.extend(tree::pair_imports(&image, &pairs));
    let (tern_pidfd, imports) = if inherited.is_empty() {
        (None, None)
    } else {
        let pidfd = tern_sys::pidfd_open(std::process::id() as i32)
            .step(image.core.pid, || "pidfd_open of tern itself".into())?;
        let chan = above_image_fds([&image]);
        let imports = tree::Imports {
            chan: chan as u64,
            fds: inherited,
            maps: BTreeMap::new(),
        };
        (Some((pidfd, chan)), Some(imports))
    };
    let keep = tern_pidfd.as_ref().map(|(p, chan)| (p.as_raw_fd(), *chan));
    let (mut puppet, want) = spawn_puppet(
        image.core.pid,
        &tids,
        opts,
        keep,
        &image.inventory.namespaces,
        &image.inventory.cgroups,
    )?;
    let parts = build_all(
        &image,
        &ancestors,
        &final_pages,
        &mut puppet,
        opts,
        imports.as_ref(),
        stream,
    )
    .map_err(|e| explain(&puppet, e))?;
    let ns_pid = want.unwrap_or(puppet.pid);
    Ok(Prepared::new(puppet, true, ns_pid, parts, t0))
}

/// An error with what caused it (an errno under a restore step), as one
/// line (for the source of a migration to print).
pub(crate) fn with_causes(e: &dyn std::error::Error) -> String {
    let mut line = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        line.push_str(&format!(": {c}"));
        cause = c.source();
    }
    line
}

/// An error met while building `puppet`: if the puppet itself was killed
/// meanwhile (by the kernel's OOM killer, most likely), that is the news.
pub(crate) fn explain(puppet: &Puppet, e: RestoreError) -> RestoreError {
    match puppet.killed_by() {
        Some(signal) => RestoreError::Killed {
            pid: puppet.pid,
            signal,
            during: e.to_string(),
        },
        None => e,
    }
}

/// Build the whole program into `puppet`: the image (over its older
/// `ancestors`, if a chain), with what a process of a tree gets from tern
/// (`imports`); with `stream`, the pages it owes placed from there
/// before the rest is built.
pub(crate) fn build_all(
    image: &Image,
    ancestors: &[PathBuf],
    final_pages: &[(u64, u64)],
    puppet: &mut Puppet,
    opts: &RestoreOptions,
    imports: Option<&tree::Imports>,
    stream: Option<(Vec<u64>, &mut PageStreamFn<'_>)>,
) -> Result<Parts> {
    let mut b = Builder {
        image,
        ancestors,
        final_pages,
        pid: puppet.pid,
        puppet,
        scratch: 0,
        pages_bytes: 0,
        extra: Vec::new(),
        cur: 0,
        keep_ids: !opts.new_pid,
        net: Network::default(),
        imports,
    };
    b.build_memory()?;
    if let Some((owed, receive)) = stream {
        let page_size = image.inventory.page_size;
        let mut pages = streamed::StreamedPages::new(b.puppet, owed, page_size, &image.mm.vmas)?;
        let t = Instant::now();
        receive(image.core.pid, &mut pages).map_err(RestoreError::Stream)?;
        debug!(ms = t.elapsed().as_secs_f64() * 1e3, "streamed pages in");
    }
    b.build_rest()?;
    Ok(b.into_parts())
}

struct Builder<'a> {
    image: &'a Image,
    /// Older images of a pre-dump chain, oldest first.
    ancestors: &'a [PathBuf],
    /// (address, xxh3) of every page the program had at the final moment:
    /// an older image's page is written only where it still matches.
    final_pages: &'a [(u64, u64)],
    puppet: &'a mut Puppet,
    pid: i32,
    scratch: u64,
    pages_bytes: u64,
    /// Threads after the main one, once created (image order).
    extra: Vec<RemoteThread>,
    /// Which thread `sys` runs in: 0 = main, k = `extra[k - 1]`.
    cur: usize,
    /// Threads get their original tids (clone3 `set_tid`).
    keep_ids: bool,
    net: Network,
    /// A process of a tree: what it gets from tern instead of making it.
    imports: Option<&'a tree::Imports>,
}

/// What `tern_state::files`' kinds need of the process being rebuilt.
impl tern_state::files::Remote for Builder<'_> {
    type Error = RestoreError;

    fn syscall(
        &mut self,
        nr: libc::c_long,
        args: &[u64],
        what: &dyn Fn() -> String,
    ) -> Result<u64> {
        self.sys(nr, args, what)
    }

    fn stage(&mut self, data: &[u8]) -> Result<u64> {
        if data.len() as u64 > SCRATCH_PATH - SCRATCH_STRUCT {
            return Err(self
                .image
                .bad(format!("{} bytes to stage for a file", data.len())));
        }
        self.poke(SCRATCH_STRUCT, data)?;
        Ok(self.scratch + SCRATCH_STRUCT)
    }

    fn keeps_pids(&self) -> bool {
        self.keep_ids
    }

    fn refuse(&self, why: String) -> RestoreError {
        RestoreError::Unsupported(why)
    }
}

impl Builder<'_> {
    /// The id the program knows image id `id` by: itself, or its id in the
    /// program's own PID namespace.
    fn inner_id(&self, id: i32) -> i32 {
        match &self.image.inventory.namespaces.pid {
            Some(ids) => ids.inner(id),
            None => id,
        }
    }

    fn sys(
        &mut self,
        nr: libc::c_long,
        args: &[u64],
        what: impl FnOnce() -> String,
    ) -> Result<u64> {
        let pid = self.pid;
        let r = match self.cur {
            0 => self.puppet.syscall(nr, args),
            k => self.extra[k - 1].syscall_ok(nr, args),
        };
        r.step(pid, what)
    }

    fn poke(&mut self, off: u64, data: &[u8]) -> Result<()> {
        let pid = self.pid;
        let addr = self.scratch + off;
        mem::write_fully(pid, addr, data).step(pid, || format!("write scratch at {addr:#x}"))
    }

    fn peek(&mut self, off: u64, len: usize) -> Result<Vec<u8>> {
        let pid = self.pid;
        let mut buf = vec![0u8; len];
        mem::read_fully(pid, self.scratch + off, &mut buf).step(pid, || "read scratch".into())?;
        Ok(buf)
    }

    /// Put a NUL-terminated path in the scratch area; returns its address.
    fn path_arg(&mut self, path: &str) -> Result<u64> {
        shape::path_arg(self.puppet, self.scratch, path)
    }

    fn open(&mut self, path: &str, flags: i32) -> Result<u64> {
        shape::open_in(self.puppet, self.scratch, path, flags)
    }

    fn check_open_file(&mut self, fd: u64, f: &wire::FileIdentity) -> Result<()> {
        shape::check_open_file(self.puppet, self.scratch, fd, f)
    }

    /// Threads created, signals to deliver once running, bytes written.
    fn into_parts(mut self) -> Parts {
        let core = &self.image.core;
        // Signals with a queued siginfo are replayed from it, not re-raised.
        let with_info: Vec<i32> = core
            .pending_siginfo
            .iter()
            .filter_map(|q| {
                q.info
                    .get(..4)
                    .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            })
            .collect();
        let pending: Vec<i32> = core
            .pending_signals
            .iter()
            .copied()
            .filter(|s| !with_info.contains(s))
            .collect();
        let threads: Vec<i32> = self.extra.iter().map(|t| t.tid).collect();
        // Queued signals go to the threads by their ids on this machine.
        let host_tid = |image_tid: i32| -> i32 {
            match core.threads.iter().position(|t| t.tid == image_tid) {
                Some(0) => self.pid,
                Some(k) => threads.get(k - 1).copied().unwrap_or(self.pid),
                None => self.pid,
            }
        };
        let mut queued = core
            .pending_siginfo
            .iter()
            .filter(|q| q.info.len() == 128)
            .map(|q| (if q.tid == 0 { 0 } else { host_tid(q.tid) }, q.info.clone()))
            .collect::<Vec<_>>();
        // Signals that arrived while the puppet was driven (e.g. from a
        // timer re-created before the end) were held back: delivered at
        // resume with their siginfo (a timer's value and id; sent with
        // kill() they would arrive as SI_USER, without them), to the
        // process: the thread that happened to take one may block it.
        for t in &self.extra {
            queued.extend(t.intercepted_info.iter().map(|i| (0, i.to_vec())));
        }
        let mut net = std::mem::take(&mut self.net);
        if let Err(e) = net.ready(self.pid) {
            // Lifted (or reported) again when it goes live.
            warn!(pid = self.pid, "{e}");
        }
        Parts {
            threads,
            pending,
            queued,
            pages_bytes: self.pages_bytes,
            oom_score_adj: core.oom_score_adj,
            net,
        }
    }

    /// Address space: mappings and page contents.
    fn build_memory(&mut self) -> Result<()> {
        let t = Instant::now();
        let vmas = &self.image.mm.vmas;
        shape::reset_inherited_state(self.puppet)?;
        shape::clear_address_space(self.puppet)?;
        shape::move_vdso(self.puppet, vmas, &self.image.inventory.kernel_release)?;
        self.scratch = shape::map_scratch(self.puppet, vmas, &[])?;
        let imported = |v: &&wire::Vma| self.imports.is_some_and(|i| i.maps.contains_key(&v.start));
        shape::map_vmas(
            self.puppet,
            self.scratch,
            vmas.iter().filter(|v| !imported(v)),
        )?;
        let shared: Vec<wire::Vma> = vmas.iter().filter(|v| imported(v)).cloned().collect();
        for v in &shared {
            self.map_imported(v)?;
        }
        debug!(ms = t.elapsed().as_secs_f64() * 1e3, "mappings created");
        for dir in self.ancestors {
            self.write_pages(&dir.join(wire::PAGES_FILE), false)?;
        }
        let pages = self.image.dir.join(wire::PAGES_FILE);
        self.write_pages(&pages, true)?;
        debug!(
            ms = t.elapsed().as_secs_f64() * 1e3,
            bytes = self.pages_bytes,
            "pages written"
        );
        Ok(())
    }

    /// Put tern's fd `tern_fd` into the puppet (`pidfd_getfd` run there on
    /// tern's pidfd, which the tree's puppets hold): returns its number.
    fn install(&mut self, tern_fd: i32) -> Result<u64> {
        let chan = self.imports.map_or(u64::MAX, |i| i.chan);
        self.sys(libc::SYS_pidfd_getfd, &[chan, tern_fd as u64, 0], || {
            format!("pidfd_getfd of tern's fd {tern_fd}")
        })
    }

    /// A shared memory mapping of another process of the tree: the same
    /// object, from the fd tern holds for it.
    pub(crate) fn map_imported(&mut self, v: &wire::Vma) -> Result<()> {
        let Some(&(tern_fd, offset)) = self.imports.and_then(|i| i.maps.get(&v.start)) else {
            return Ok(());
        };
        let fd = self.install(tern_fd)?;
        self.sys(
            libc::SYS_mmap,
            &[
                v.start,
                v.len(),
                v.prot as u64,
                (libc::MAP_SHARED | libc::MAP_FIXED) as u64,
                fd,
                offset,
            ],
            || format!("map shared memory at {:#x}", v.start),
        )?;
        self.sys(libc::SYS_close, &[fd], || "close".into())?;
        Ok(())
    }

    /// Everything after the address space: files, process and thread
    /// state, credentials, registers.
    fn build_rest(&mut self) -> Result<()> {
        let t = Instant::now();
        self.apply_advice()?;
        self.restore_files()?;
        self.restore_process_state()?;
        self.restore_mm_fields()?;
        self.restore_thread_state(0)?;
        self.create_threads()?;
        // Before the credentials drop: choosing a timer's id takes
        // CAP_CHECKPOINT_RESTORE. They are armed last, in `finish`.
        self.create_posix_timers()?;
        // While still root: naming a UTS namespace takes CAP_SYS_ADMIN.
        self.restore_namespaces()?;
        // While still root (a filter needs no_new_privs or CAP_SYS_ADMIN).
        self.restore_seccomp()?;
        // Credentials are per thread in the kernel: set them in each.
        for k in 0..self.image.core.threads.len() {
            self.cur = k;
            self.restore_creds()?;
        }
        self.cur = 0;
        self.verify_creds()?;
        self.finish()?;
        debug!(ms = t.elapsed().as_secs_f64() * 1e3, "puppet ready");
        Ok(())
    }

    /// Stream the page file into the puppet.
    /// `strict`: every chunk must lie inside a private mapping (the image's
    /// own pages); otherwise (an older image of a chain) the parts outside
    /// today's mappings are skipped, since those ranges were unmapped since.
    fn write_pages(&mut self, path: &Path, strict: bool) -> Result<()> {
        let pid = self.pid;
        let image = self.image;
        let final_pages = self.final_pages;
        let private = shape::private_ranges(&image.mm.vmas);
        let page = image.inventory.page_size as usize;
        let mut written = 0u64;
        // Fresh private anonymous memory is filled by UFFDIO_COPY (see
        // `page_filler`); not over older images of a chain, whose pages
        // are there already.
        let filler = if strict && self.ancestors.is_empty() {
            fill::MissingPages::open(self.puppet, &image.mm.vmas, image.inventory.pages_bytes)
        } else {
            None
        };
        let puppet = &mut *self.puppet;
        shape::stream_pages(pid, path, |addr, buf| {
            if !strict {
                // Only pages the program still had, with these very bytes:
                // anything since unmapped, zeroed or rewritten is not ours.
                for (k, p) in buf.chunks(page).enumerate() {
                    let a = addr + (k * page) as u64;
                    let wanted = final_pages
                        .binary_search_by_key(&a, |(x, _)| *x)
                        .is_ok_and(|i| final_pages[i].1 == xxhash_rust::xxh3::xxh3_64(p));
                    if !wanted || !private.iter().any(|&(s, e)| s <= a && a < e) {
                        continue;
                    }
                    mem::write_fully(pid, a, p).step(pid, || format!("write pages at {a:#x}"))?;
                    written += p.len() as u64;
                }
                return Ok(());
            }
            shape::check_chunk(&image.dir, path, &private, addr, buf.len(), page)?;
            if let Some(f) = filler.as_ref().filter(|f| f.covers(addr, buf.len())) {
                f.fill(pid, addr, buf)?;
                written += buf.len() as u64;
                return Ok(());
            }
            if buf.len() >= 64 * page {
                shape::populate(puppet, addr, buf.len())?;
            }
            mem::write_fully(pid, addr, buf).step(pid, || format!("write pages at {addr:#x}"))?;
            written += buf.len() as u64;
            Ok(())
        })?;
        // Unregistered before anything else touches the memory.
        drop(filler);
        self.pages_bytes += written;
        Ok(())
    }

    fn apply_advice(&mut self) -> Result<()> {
        let vmas = self.image.mm.vmas.clone();
        for v in &vmas {
            for &adv in &v.advice {
                self.sys(libc::SYS_madvise, &[v.start, v.len(), adv as u64], || {
                    format!("madvise({adv}) on {:#x}-{:#x}", v.start, v.end)
                })?;
            }
        }
        Ok(())
    }

    fn restore_process_state(&mut self) -> Result<()> {
        let core = self.image.core.clone();
        let cwd = self.path_arg(&core.cwd)?;
        self.sys(libc::SYS_chdir, &[cwd], || format!("chdir {}", core.cwd))?;
        self.sys(libc::SYS_umask, &[core.umask as u64], || "umask".into())?;
        for l in &core.rlimits {
            // Only what differs from the puppet's (inherited from tern):
            // each injected syscall costs 30-150 us, frozen.
            if tern_sys::rlimit_of(self.pid, l.resource).ok() == Some((l.cur, l.max)) {
                continue;
            }
            let mut raw = [0u8; 16];
            raw[..8].copy_from_slice(&l.cur.to_le_bytes());
            raw[8..].copy_from_slice(&l.max.to_le_bytes());
            self.poke(SCRATCH_STRUCT, &raw)?;
            let addr = self.scratch + SCRATCH_STRUCT;
            if let Err(e) = self.sys(
                libc::SYS_prlimit64,
                &[0, l.resource as u64, addr, 0],
                || "prlimit64".into(),
            ) {
                warn!("resource limit {} not restored: {e}", l.resource);
            }
        }
        // Signals whose disposition is not the default, in the puppet (as
        // inherited from tern) or in the image: only those are set.
        // Unreadable: all ones, so every signal is then set explicitly.
        let mask = |f: &str| tern_sys::proc::status_sigmask(self.pid, f).unwrap_or(u64::MAX);
        let puppet_custom = mask("SigCgt:") | mask("SigIgn:");
        for (i, act) in core.sigactions.iter().enumerate() {
            let sig = i as u64 + 1;
            if sig == libc::SIGKILL as u64 || sig == libc::SIGSTOP as u64 {
                continue;
            }
            let image_default = *act == wire::SigAction::default();
            if image_default && puppet_custom & (1u64 << (sig - 1)) == 0 {
                continue;
            }
            let mut raw = [0u8; 32];
            for (k, w) in [act.handler, act.flags, act.restorer, act.mask]
                .iter()
                .enumerate()
            {
                raw[k * 8..k * 8 + 8].copy_from_slice(&w.to_le_bytes());
            }
            self.poke(SCRATCH_STRUCT, &raw)?;
            let addr = self.scratch + SCRATCH_STRUCT;
            self.sys(libc::SYS_rt_sigaction, &[sig, addr, 0, 8], || {
                format!("rt_sigaction({sig})")
            })?;
        }
        if core.personality != 0 {
            self.sys(libc::SYS_personality, &[core.personality as u64], || {
                "personality".into()
            })?;
        }
        if core.pdeath_signal != 0 {
            warn!(
                "parent-death signal {} not restored: the new parent is tern, which exits",
                core.pdeath_signal
            );
        }
        Ok(())
    }

    fn restore_mm_fields(&mut self) -> Result<()> {
        let mm = &self.image.mm;
        let auxv: Vec<u8> = mm.auxv.iter().flat_map(|w| w.to_le_bytes()).collect();
        if auxv.len() > (SCRATCH_LEN - SCRATCH_AUXV) as usize {
            return Err(self
                .image
                .bad(format!("auxv of {} bytes is too large", auxv.len())));
        }
        let exe = mm.exe.clone();
        // The kernel refuses (EBUSY) to switch exe_file while the old one is
        // still mapped. The puppet's old exe is tern's own: when the image's
        // program is that same file, it is already right and is not changed.
        let same_exe = std::fs::metadata("/proc/self/exe")
            .map(|m| m.dev() == exe.dev && m.ino() == exe.ino)
            .unwrap_or(false);
        let exe_fd = if same_exe {
            None
        } else {
            let fd = self.open(&exe.path, libc::O_RDONLY | libc::O_CLOEXEC)?;
            self.check_open_file(fd, &exe)?;
            Some(fd)
        };
        let mm = &self.image.mm;
        // struct prctl_mm_map
        let mut raw = Vec::with_capacity(104);
        for w in [
            mm.start_code,
            mm.end_code,
            mm.start_data,
            mm.end_data,
            mm.start_brk,
            mm.brk,
            mm.start_stack,
            mm.arg_start,
            mm.arg_end,
            mm.env_start,
            mm.env_end,
            self.scratch + SCRATCH_AUXV,
        ] {
            raw.extend_from_slice(&w.to_le_bytes());
        }
        raw.extend_from_slice(&(auxv.len() as u32).to_le_bytes());
        raw.extend_from_slice(&exe_fd.map_or(u32::MAX, |fd| fd as u32).to_le_bytes());
        self.poke(SCRATCH_AUXV, &auxv)?;
        self.poke(SCRATCH_STRUCT, &raw)?;
        const PR_SET_MM_MAP: u64 = 14;
        let addr = self.scratch + SCRATCH_STRUCT;
        self.sys(
            libc::SYS_prctl,
            &[
                libc::PR_SET_MM as u64,
                PR_SET_MM_MAP,
                addr,
                raw.len() as u64,
                0,
            ],
            || "prctl(PR_SET_MM, PR_SET_MM_MAP)".into(),
        )?;
        if let Some(fd) = exe_fd {
            self.sys(libc::SYS_close, &[fd], || "close exe fd".into())?;
        }
        Ok(())
    }

    /// Per-thread kernel state of thread `k`, set from inside it.
    fn restore_thread_state(&mut self, k: usize) -> Result<()> {
        self.cur = k;
        let th = self.image.core.threads[k].clone();
        self.sys(libc::SYS_set_tid_address, &[th.clear_child_tid], || {
            "set_tid_address".into()
        })?;
        if th.robust_list_head != 0 {
            self.sys(
                libc::SYS_set_robust_list,
                &[th.robust_list_head, th.robust_list_len],
                || "set_robust_list".into(),
            )?;
        }
        if let Some(r) = th.rseq {
            self.sys(
                nr::RSEQ,
                &[r.addr, r.len as u64, 0, r.signature as u64],
                || "rseq register".into(),
            )?;
        }
        const SS_ONSTACK: i32 = 1;
        let mut raw = [0u8; 24];
        raw[..8].copy_from_slice(&th.altstack.sp.to_le_bytes());
        raw[8..12].copy_from_slice(&(th.altstack.flags & !SS_ONSTACK).to_le_bytes());
        raw[16..].copy_from_slice(&th.altstack.size.to_le_bytes());
        self.poke(SCRATCH_STRUCT, &raw)?;
        let addr = self.scratch + SCRATCH_STRUCT;
        self.sys(libc::SYS_sigaltstack, &[addr, 0], || "sigaltstack".into())?;
        let mut name = th.comm.as_bytes().to_vec();
        name.truncate(15);
        name.push(0);
        self.poke(SCRATCH_PATH, &name)?;
        let addr = self.scratch + SCRATCH_PATH;
        self.sys(libc::SYS_prctl, &[libc::PR_SET_NAME as u64, addr], || {
            "prctl(PR_SET_NAME)".into()
        })?;
        Ok(())
    }

    /// Re-create the other threads with their original tids: clone3 run in
    /// the main thread (CLONE_THREAD and friends, `set_tid`); with
    /// PTRACE_O_TRACECLONE each new thread is traced and stops before it
    /// runs any user code, then gets its own state injected.
    fn create_threads(&mut self) -> Result<()> {
        let pid = self.pid;
        for k in 1..self.image.core.threads.len() {
            let tid = self.inner_id(self.image.core.threads[k].tid);
            self.cur = 0;
            let flags = libc::CLONE_VM
                | libc::CLONE_FS
                | libc::CLONE_FILES
                | libc::CLONE_SIGHAND
                | libc::CLONE_THREAD
                | libc::CLONE_SYSVSEM;
            let tid_addr = self.scratch + SCRATCH_STRUCT + 512;
            self.poke(SCRATCH_STRUCT + 512, &tid.to_le_bytes())?;
            let mut args = Vec::with_capacity(88);
            for w in [
                flags as u64,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                if self.keep_ids { tid_addr } else { 0 },
                u64::from(self.keep_ids),
                0,
            ] {
                args.extend_from_slice(&w.to_le_bytes());
            }
            self.poke(SCRATCH_STRUCT, &args)?;
            let addr = self.scratch + SCRATCH_STRUCT;
            let new_tid = self.sys(nr::CLONE3, &[addr, args.len() as u64], || {
                format!("clone3 of thread {tid}")
            })? as i32;
            // clone3 returned the id inside the program's pid namespace.
            let new_tid = pidns::host_tid(pid, new_tid)
                .step(pid, || format!("find thread {new_tid} in /proc"))?;
            match ptrace::wait(new_tid).step(pid, || format!("wait for new thread {new_tid}"))? {
                ptrace::Stop::Signal(libc::SIGSTOP) | ptrace::Stop::EventStop(_) => {}
                other => {
                    return Err(RestoreError::Step {
                        pid,
                        what: format!("new thread {new_tid} did not stop as expected: {other:?}"),
                        source: io::Error::other("unexpected ptrace stop"),
                    })
                }
            }
            self.puppet.threads.push(new_tid);
            let regs = ptrace::get_regs(new_tid).step(pid, || "PTRACE_GETREGSET".into())?;
            self.extra.push(RemoteThread::new(
                new_tid,
                self.puppet.remote.gadget(),
                regs,
            ));
            self.restore_thread_state(k)?;
        }
        self.cur = 0;
        Ok(())
    }

    /// Every thread now has exactly the image's credentials, as the kernel
    /// reports them; otherwise the program is not run.
    fn verify_creds(&self) -> Result<()> {
        let core = &self.image.core;
        let want = tern_state::creds::from_image(&core.creds, !core.seccomp.is_empty());
        let tids = tern_sys::proc::list_tasks(self.pid).step(self.pid, || "list threads".into())?;
        for tid in tids {
            let got = tern_sys::proc::thread_creds(self.pid, tid)
                .step(self.pid, || format!("read the credentials of thread {tid}"))?;
            let differ = want.differences(&got);
            if !differ.is_empty() {
                return Err(RestoreError::Creds(format!(
                    "thread {tid} has {} (image vs restored)",
                    differ.join(", ")
                )));
            }
        }
        Ok(())
    }

    /// Become exactly the image's credentials; never more.
    fn restore_creds(&mut self) -> Result<()> {
        let c = self.image.core.creds.clone();
        let last_cap = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .unwrap_or(40);
        for cap in 0..=last_cap {
            if c.cap_bounding & (1 << cap) == 0 {
                self.sys(
                    libc::SYS_prctl,
                    &[libc::PR_CAPBSET_DROP as u64, cap],
                    || format!("drop capability {cap} from the bounding set"),
                )?;
            }
        }
        let groups: Vec<u8> = c.groups.iter().flat_map(|g| g.to_le_bytes()).collect();
        if groups.len() > 4096 {
            return Err(self.image.bad("too many supplementary groups".into()));
        }
        self.poke(SCRATCH_PATH, &groups)?;
        let addr = self.scratch + SCRATCH_PATH;
        self.sys(libc::SYS_setgroups, &[c.groups.len() as u64, addr], || {
            "setgroups".into()
        })?;
        self.sys(
            libc::SYS_setresgid,
            &[c.gid[0] as u64, c.gid[1] as u64, c.gid[2] as u64],
            || "setresgid".into(),
        )?;
        self.sys(libc::SYS_setfsgid, &[c.gid[3] as u64], || "setfsgid".into())?;
        const SECBIT_KEEP_CAPS: u32 = 1 << 4;
        let other_bits = c.securebits & !SECBIT_KEEP_CAPS;
        if other_bits != 0 {
            self.sys(
                libc::SYS_prctl,
                &[libc::PR_SET_SECUREBITS as u64, other_bits as u64],
                || "prctl(PR_SET_SECUREBITS)".into(),
            )?;
        }
        self.sys(libc::SYS_prctl, &[libc::PR_SET_KEEPCAPS as u64, 1], || {
            "prctl(PR_SET_KEEPCAPS)".into()
        })?;
        self.sys(
            libc::SYS_setresuid,
            &[c.uid[0] as u64, c.uid[1] as u64, c.uid[2] as u64],
            || "setresuid".into(),
        )?;
        self.sys(libc::SYS_setfsuid, &[c.uid[3] as u64], || "setfsuid".into())?;
        // capset v3: header {version, pid}, then two {effective, permitted, inheritable}.
        let mut raw = Vec::with_capacity(32);
        raw.extend_from_slice(&0x2008_0522u32.to_le_bytes());
        raw.extend_from_slice(&0u32.to_le_bytes());
        for half in 0..2 {
            for set in [c.cap_effective, c.cap_permitted, c.cap_inheritable] {
                raw.extend_from_slice(&((set >> (32 * half)) as u32).to_le_bytes());
            }
        }
        self.poke(SCRATCH_STRUCT, &raw)?;
        let hdr = self.scratch + SCRATCH_STRUCT;
        self.sys(libc::SYS_capset, &[hdr, hdr + 8], || "capset".into())?;
        for cap in 0..=last_cap {
            if c.cap_ambient & (1 << cap) != 0 {
                self.sys(
                    libc::SYS_prctl,
                    &[
                        libc::PR_CAP_AMBIENT as u64,
                        libc::PR_CAP_AMBIENT_RAISE as u64,
                        cap,
                        0,
                        0,
                    ],
                    || format!("raise ambient capability {cap}"),
                )?;
            }
        }
        let keep = u64::from(c.securebits & SECBIT_KEEP_CAPS != 0);
        self.sys(
            libc::SYS_prctl,
            &[libc::PR_SET_KEEPCAPS as u64, keep],
            || "prctl(PR_SET_KEEPCAPS)".into(),
        )?;
        if c.no_new_privs {
            self.sys(
                libc::SYS_prctl,
                &[libc::PR_SET_NO_NEW_PRIVS as u64, 1, 0, 0, 0],
                || "prctl(PR_SET_NO_NEW_PRIVS)".into(),
            )?;
        }
        // Credential changes reset the dumpable flag; put the image's back.
        let dumpable = self.image.core.dumpable as u64;
        self.sys(
            libc::SYS_prctl,
            &[libc::PR_SET_DUMPABLE as u64, dumpable],
            || "prctl(PR_SET_DUMPABLE)".into(),
        )?;
        Ok(())
    }

    /// Re-create the POSIX timers under their ids (disarmed; `finish` arms
    /// them): `PR_TIMER_CREATE_RESTORE_IDS` (Linux 6.15+) makes
    /// `timer_create` take the id it is given.
    fn create_posix_timers(&mut self) -> Result<()> {
        const PR_TIMER_CREATE_RESTORE_IDS: u64 = 77;
        let timers = self.image.core.posix_timers.clone();
        if timers.is_empty() {
            return Ok(());
        }
        self.cur = 0;
        self.sys(
            libc::SYS_prctl,
            &[PR_TIMER_CREATE_RESTORE_IDS, 1, 0, 0, 0],
            || {
                "prctl(PR_TIMER_CREATE_RESTORE_IDS, ON): restoring POSIX timers needs Linux 6.15+"
                    .into()
            },
        )?;
        for t in &timers {
            let tid = if self.keep_ids || t.notify_tid == 0 {
                self.inner_id(t.notify_tid)
            } else {
                // --new-pid: the thread's new id.
                match self
                    .image
                    .core
                    .threads
                    .iter()
                    .position(|x| x.tid == t.notify_tid)
                {
                    Some(0) => self.pid,
                    Some(k) => self.extra[k - 1].tid,
                    None => t.notify_tid,
                }
            };
            // struct sigevent: sigev_value, sigev_signo, sigev_notify, _tid.
            let mut sev = [0u8; 64];
            sev[0..8].copy_from_slice(&t.sigval.to_le_bytes());
            sev[8..12].copy_from_slice(&t.signo.to_le_bytes());
            sev[12..16].copy_from_slice(&t.notify.to_le_bytes());
            sev[16..20].copy_from_slice(&tid.to_le_bytes());
            self.poke(SCRATCH_STRUCT, &sev)?;
            self.poke(SCRATCH_STRUCT + 64, &t.id.to_le_bytes())?;
            let (sev_addr, id_addr) = (
                self.scratch + SCRATCH_STRUCT,
                self.scratch + SCRATCH_STRUCT + 64,
            );
            self.sys(
                libc::SYS_timer_create,
                &[t.clock as u64, sev_addr, id_addr],
                || format!("timer_create of POSIX timer {}", t.id),
            )?;
            let got = self.peek(SCRATCH_STRUCT + 64, 4)?;
            let got = i32::from_le_bytes([got[0], got[1], got[2], got[3]]);
            if got != t.id {
                return Err(RestoreError::Unsupported(format!(
                    "POSIX timer {} came back as {got}",
                    t.id
                )));
            }
        }
        self.sys(
            libc::SYS_prctl,
            &[PR_TIMER_CREATE_RESTORE_IDS, 0, 0, 0, 0],
            || "prctl(PR_TIMER_CREATE_RESTORE_IDS, OFF)".into(),
        )?;
        Ok(())
    }

    /// The image's namespaces were made with the puppet (`clone3` flags);
    /// here they are checked to be its own (never tern's: naming tern's UTS
    /// namespace would rename this machine) and given the image's names.
    fn restore_namespaces(&mut self) -> Result<()> {
        use tern_sys::ns::{self, Kind};
        let want = self.image.inventory.namespaces.clone();
        let pid = self.pid;
        let kinds = [
            (Kind::Uts, want.uts.is_some()),
            (Kind::Ipc, want.ipc),
            (Kind::Mnt, want.mnt.is_some()),
        ];
        for (kind, wanted) in kinds {
            let own = ns::differs(pid, kind).step(pid, || format!("read ns/{}", kind.name()))?;
            if own != wanted {
                return Err(self.image.bad(format!(
                    "the image says the program {} a {} namespace of its own, but its process was made {} (did it change namespaces during pre-copy?)",
                    if wanted { "had" } else { "had not" },
                    kind.name(),
                    if own { "with one" } else { "without" },
                )));
            }
        }
        self.refresh_mounts(want.mnt.as_ref(), want.ipc)?;
        let Some(uts) = want.uts else {
            return Ok(());
        };
        for (nr, name, what) in [
            (libc::SYS_sethostname, &uts.hostname, "sethostname"),
            (libc::SYS_setdomainname, &uts.domainname, "setdomainname"),
        ] {
            // The kernel takes at most 64 bytes (__NEW_UTS_LEN).
            if name.len() > 64 {
                return Err(self
                    .image
                    .bad(format!("{what}: a name of {} bytes", name.len())));
            }
            let at = tern_state::files::Remote::stage(self, name.as_bytes())?;
            self.sys(nr, &[at, name.len() as u64], || {
                format!("{what}({name:?}) in its UTS namespace")
            })?;
        }
        Ok(())
    }

    /// A standby's mounts were built from its first round: the final image
    /// must have the same mounts, and its tmpfs files are written again.
    fn refresh_mounts(&mut self, want: Option<&wire::MountTable>, ipc: bool) -> Result<()> {
        let (Some(want), Some(built)) = (want, self.puppet.mounts.as_ref()) else {
            return Ok(());
        };
        if want == built {
            return Ok(());
        }
        if want.shape() != built.shape() {
            return Err(self.image.bad(
                "the program's mounts changed while it was copied (pre-copy): its mount namespace cannot follow".into(),
            ));
        }
        let pid = self.pid;
        tern_sys::mounts::in_mount_namespace_of(pid, ipc, || {
            tern_state::mounts::rewrite_tmpfs_files(want, built)
        })
        .step(pid, || "write its tmpfs files again".into())?;
        self.puppet.mounts = Some(want.clone());
        Ok(())
    }

    /// The image's seccomp filters, oldest first, into every thread at
    /// once (TSYNC). Each thread is first traced with
    /// `PTRACE_O_SUSPEND_SECCOMP`, so that the syscalls tern still injects
    /// pass: the filters act from the release on.
    fn restore_seccomp(&mut self) -> Result<()> {
        let filters = self.image.core.seccomp.clone();
        if filters.is_empty() {
            return Ok(());
        }
        let pid = self.pid;
        let tids: Vec<i32> = std::iter::once(pid)
            .chain(self.extra.iter().map(|t| t.tid))
            .collect();
        for &tid in &tids {
            ptrace::set_options(tid, puppet::TRACE_OPTIONS | ptrace::O_SUSPEND_SECCOMP).step(
                pid,
                || format!("PTRACE_O_SUSPEND_SECCOMP on thread {tid} (needs CONFIG_CHECKPOINT_RESTORE)"),
            )?;
        }
        self.cur = 0;
        let addr = self.scratch + SCRATCH_STRUCT;
        for (k, f) in filters.iter().enumerate() {
            let raw = tern_state::seccomp::fprog_at(f, addr).map_err(|e| self.image.bad(e))?;
            self.poke(SCRATCH_STRUCT, &raw)?;
            let flags = tern_state::seccomp::install_flags(f, tids.len());
            let left = self.sys(
                libc::SYS_seccomp,
                &[tern_state::seccomp::SET_MODE_FILTER, flags, addr],
                || {
                    format!(
                        "seccomp(SET_MODE_FILTER) of filter {} of {}",
                        k + 1,
                        filters.len()
                    )
                },
            )?;
            if left != 0 {
                return Err(RestoreError::Unsupported(format!(
                    "seccomp filter {} could not be synchronized to thread {left}",
                    k + 1
                )));
            }
        }
        Ok(())
    }

    fn finish(&mut self) -> Result<()> {
        let pid = self.pid;
        let scratch = self.scratch;
        self.cur = 0;
        // Armed last, so they barely run before the program does; a signal
        // they raise meanwhile is re-sent after the release.
        let itimers = self.image.core.itimers.clone();
        for t in &itimers {
            let mut raw = Vec::with_capacity(32);
            for us in [t.interval_us, t.value_us] {
                raw.extend_from_slice(&(us / 1_000_000).to_le_bytes());
                raw.extend_from_slice(&(us % 1_000_000).to_le_bytes());
            }
            self.poke(SCRATCH_STRUCT, &raw)?;
            let addr = self.scratch + SCRATCH_STRUCT;
            self.sys(libc::SYS_setitimer, &[t.which as u64, addr, 0], || {
                format!("setitimer({})", t.which)
            })?;
        }
        let timers = self.image.core.posix_timers.clone();
        for t in timers.iter().filter(|t| t.value_ns != 0) {
            let mut its = Vec::with_capacity(32);
            for ns in [t.interval_ns, t.value_ns] {
                its.extend_from_slice(&(ns / 1_000_000_000).to_le_bytes());
                its.extend_from_slice(&(ns % 1_000_000_000).to_le_bytes());
            }
            self.poke(SCRATCH_STRUCT, &its)?;
            let addr = self.scratch + SCRATCH_STRUCT;
            self.sys(libc::SYS_timer_settime, &[t.id as u64, 0, addr, 0], || {
                format!("timer_settime of POSIX timer {}", t.id)
            })?;
        }
        self.sys(libc::SYS_munmap, &[scratch, SCRATCH_LEN], || {
            "unmap the scratch area".into()
        })?;
        for (k, th) in self.image.core.threads.iter().enumerate() {
            let tid = if k == 0 { pid } else { self.extra[k - 1].tid };
            let mut regs = regs_from_wire(&th.regs);
            regs.orig_rax = u64::MAX;
            ptrace::set_xstate(tid, &th.xstate).step(pid, || {
                format!(
                    "PTRACE_SETREGSET NT_X86_XSTATE of thread {tid} ({} bytes; a different CPU?)",
                    th.xstate.len()
                )
            })?;
            ptrace::set_regs(tid, &regs).step(pid, || "PTRACE_SETREGSET NT_PRSTATUS".into())?;
            ptrace::set_sigmask(tid, th.sigmask).step(pid, || "PTRACE_SETSIGMASK".into())?;
        }
        Ok(())
    }
}

/// Restore a pre-copy chain the way the migration daemon does: start a warm
/// standby from the oldest round, apply each later round to it, then the
/// final image (see [`standby`]).
pub fn restore_via_standby(dir: &Path, opts: &RestoreOptions) -> Result<Restored> {
    let image = Image::load(dir)?;
    let ancestors = image.ancestors()?;
    let Some((first, rest)) = ancestors.split_first() else {
        return Err(
            image.bad("has no parent rounds: a standby restore needs a pre-copy chain".into())
        );
    };
    let mut standby = standby::Standby::start(first, opts)?;
    for round in rest {
        standby.apply_round(round)?;
    }
    standby.finish(dir)?.resume()
}
