//! Live migration, destination side (`tern serve`): accept authenticated
//! peers, stage the image files each round brings, and build the program
//! in a warm standby as rounds arrive; on the final round finish it, keep
//! it stopped until the source commits, then let it run.
//!
//! Each migration gets a thread of its own for the puppet (ptrace requests
//! must come from the thread that traces), fed by the connection's task
//! through a channel, so files of round k+1 are received while round k is
//! written into the puppet. That thread outlives the connection as long as
//! the program it restored runs, to reap it when it exits.
//!
//! Whatever goes wrong before the source's `Commit` (a bad file, the link
//! lost, an `Abort`, a timeout), the standby is killed with everything in
//! its PID namespace and the staged files are removed.

use crate::journal::Journal;
use crate::standby::Standby;
use crate::tree_standby::{finish_migrated_tree, TreeStandby};
use crate::{Prepared, RestoreOptions};
use std::collections::BTreeMap;
use std::io::Write;
use std::os::fd::AsFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tern_wire::net::{self, Key, Message};
use tern_wire::session::{Destination, DestinationInput, ProtocolError};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tracing::{debug, info, warn};

#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub listen: String,
    pub key: Key,
    /// Where incoming rounds are staged (a directory per migration).
    pub work_dir: PathBuf,
    pub restore: RestoreOptions,
    /// Migrations served at once; more are refused.
    pub max_sessions: usize,
    /// How long a peer may stay silent, and the source may take to commit.
    pub timeout: Duration,
    /// Exit after the first migration that ends (committed or not).
    pub once: bool,
    /// The daemon's own `oom_score_adj`: below the programs it rebuilds
    /// (those are at 1000 until they run), so that running out of memory
    /// costs one migration, not the daemon and every migration in it.
    pub oom_score_adj: i32,
}

/// Faults the tests inject (builds with the `test-faults` feature only,
/// which `cargo test` turns on and a release build does not): with
/// `TERN_TEST_FAULT=exit-on-final` the daemon exits the moment a final
/// round has arrived, as if it had crashed there; with `exit-on-ready` once
/// the program is rebuilt, before it says so; with `exit-after-resume`
/// right after it resumed the program, before it tells the source (which
/// then has to ask).
#[cfg(feature = "test-faults")]
fn test_fault(which: &str) -> bool {
    std::env::var("TERN_TEST_FAULT").is_ok_and(|v| v == which)
}

#[cfg(not(feature = "test-faults"))]
fn test_fault(_: &str) -> bool {
    false
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Serve until killed (or, with `once`, until one migration ended).
/// `on_listening` is told the bound address once the socket listens.
pub fn serve(
    opts: ServeOptions,
    on_listening: impl FnOnce(std::net::SocketAddr),
) -> Result<(), ServeError> {
    // Lowering it takes CAP_SYS_RESOURCE; without, the programs being
    // rebuilt (at 1000) are still the OOM killer's first choice.
    if let Err(e) = std::fs::write("/proc/self/oom_score_adj", opts.oom_score_adj.to_string()) {
        warn!(
            "cannot set this daemon's oom_score_adj to {} ({e}; needs CAP_SYS_RESOURCE)",
            opts.oom_score_adj
        );
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener = TcpListener::bind(&opts.listen)
            .await
            .map_err(|source| ServeError::Listen {
                addr: opts.listen.clone(),
                source,
            })?;
        let journal = Arc::new(Journal::open(&opts.work_dir).map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!(
                    "session journal in {}: {e}",
                    opts.work_dir.join("tern-sessions").display()
                ),
            )
        })?);
        let local = listener.local_addr()?;
        info!(%local, "tern serve listening");
        on_listening(local);
        let slots = Arc::new(Semaphore::new(opts.max_sessions));
        let opts = Arc::new(opts);
        let seq = Arc::new(AtomicU64::new(0));
        let (done_tx, mut done_rx) = mpsc::unbounded_channel::<()>();
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let (stream, peer) = match accepted {
                        Ok(a) => a,
                        Err(e) => {
                            warn!("accept failed: {e}");
                            continue;
                        }
                    };
                    let _ = stream.set_nodelay(true);
                    let (opts, slots, seq, done) = (opts.clone(), slots.clone(), seq.clone(), done_tx.clone());
                    let journal = journal.clone();
                    tokio::spawn(async move {
                        let n = seq.fetch_add(1, Ordering::Relaxed);
                        match session(stream, peer, n, &opts, &slots, &journal).await {
                            Ok(()) => {}
                            Err(e) => warn!(%peer, "migration not accepted: {e}"),
                        }
                        let _ = done.send(());
                    });
                }
                Some(()) = done_rx.recv(), if opts.once => break,
            }
        }
        Ok(())
    })
}

/// Commands the standby thread may have waiting (each at most a message,
/// e.g. a MiB of pages).
const CMD_QUEUE: usize = 256;

/// Why a session ends when its puppet thread is gone.
const STANDBY_GONE: &str = "the standby thread is gone";

/// The failure a puppet thread that ended reported (or is about to).
async fn standby_failure(events: &mut mpsc::UnboundedReceiver<Event>) -> Option<String> {
    match tokio::time::timeout(Duration::from_secs(1), events.recv()).await {
        Ok(Some(Event::Failed(reason))) => Some(reason),
        _ => None,
    }
}

/// Commands from a connection's task to its puppet thread.
enum Cmd {
    Apply {
        round: u32,
        dir: PathBuf,
        final_round: bool,
        /// The final image's owed pages follow as `Pages`, before `Ready`.
        pages_follow: bool,
    },
    /// A message of the pages a streamed stop-and-copy sends after its
    /// final image (`PagesOf`, `Pages`, `ZstdPages`, `ZeroPages`).
    Stream(DestinationInput),
    Resume,
}

/// What the puppet thread reports.
enum Event {
    Applied {
        round: u32,
        pages: u64,
        ms: f64,
    },
    Ready {
        pid: i32,
        ns_pid: i32,
        ms: f64,
    },
    Running {
        pid: i32,
        ns_pid: i32,
        ms: f64,
        /// Pages still owed by the source, to be filled as it runs.
        post_copy: Option<crate::postcopy::PostCopy>,
    },
    Failed(String),
}

/// A file of the round being received.
struct Incoming {
    file: std::fs::File,
    size: u64,
    hash: xxhash_rust::xxh3::Xxh3,
}

/// Most files one round may have (an image has a handful, plus saved
/// contents of deleted files).
const MAX_FILES_PER_ROUND: usize = 1024;

async fn session(
    stream: TcpStream,
    peer: std::net::SocketAddr,
    n: u64,
    opts: &ServeOptions,
    slots: &Arc<Semaphore>,
    journal: &Journal,
) -> Result<(), String> {
    let timeout = opts.timeout;
    let (mut tx, mut rx) = tokio::time::timeout(timeout, net::handshake(stream, &opts.key, false))
        .await
        .map_err(|_| "handshake timed out".to_string())?
        .map_err(|e| e.to_string())?;
    let hello = tokio::time::timeout(timeout, rx.recv())
        .await
        .map_err(|_| "no Hello".to_string())?
        .map_err(|e| e.to_string())?;
    let mut proto = Destination::new();
    let (pid, comm, id) = match proto.receive(hello) {
        Ok(DestinationInput::Ask { session }) => {
            let outcome = journal.outcome(session);
            info!(%peer, session, ?outcome, "asked about a migration");
            let _ = say(&mut tx, &mut proto, Message::Outcome { session, outcome }).await;
            let _ = tx.shutdown().await;
            return Ok(());
        }
        Ok(DestinationInput::Start {
            pid, comm, session, ..
        }) => (pid, comm, session),
        Ok(other) => return Err(format!("tern bug: {other:?} before Hello")),
        Err(e) => return Err(refuse(&mut tx, &mut proto, e.to_string()).await),
    };
    if !journal.begin(id) {
        let reason = format!("migration id {id:016x} was seen before (a replayed Hello?)");
        return Err(refuse(&mut tx, &mut proto, reason).await);
    }
    let _live = EndSession(journal, id);
    let Ok(_slot) = slots.clone().try_acquire_owned() else {
        let reason = format!(
            "busy: {} migrations in progress (the limit)",
            opts.max_sessions
        );
        return Err(refuse(&mut tx, &mut proto, reason).await);
    };
    info!(%peer, pid, comm, "migration starting");
    say(
        &mut tx,
        &mut proto,
        Message::Welcome {
            protocol: net::PROTOCOL_VERSION,
            tern_version: env!("CARGO_PKG_VERSION").to_string(),
        },
    )
    .await?;

    let stage = make_stage(&opts.work_dir, n)?;
    let _staged = tern_wire::image::Staging(stage.clone());
    // Bounded: pages the source streams while the standby thread is busy
    // wait on the connection (its sender waits too), not in memory here.
    let (cmd_tx, cmd_rx) = mpsc::channel::<Cmd>(CMD_QUEUE);
    let (ev_tx, mut ev_rx) = mpsc::unbounded_channel::<Event>();
    let restore_opts = opts.restore.clone();
    std::thread::Builder::new()
        .name(format!("standby-{pid}"))
        .spawn(move || puppet_thread(cmd_rx, ev_tx, restore_opts))
        .map_err(|e| format!("start the standby thread: {e}"))?;

    let (mut incoming, _stop_reader) = spawn_reader(rx);
    let mut live = Live {
        tx: &mut tx,
        proto: &mut proto,
        stage: &stage,
        files: BTreeMap::new(),
        cmd_tx: &cmd_tx,
        journal,
        id,
        peer,
        timeout,
    };
    let result: Result<(), String> = loop {
        let flow = tokio::select! {
            msg = tokio::time::timeout(timeout, incoming.recv()), if live.proto.expects_input() => {
                match msg {
                    Err(_) => Some(Err(format!("the source was silent for {timeout:?}"))),
                    Ok(None) => Some(Err("connection lost".into())),
                    Ok(Some(Err(e))) => Some(Err(format!("connection lost: {e}"))),
                    Ok(Some(Ok(m))) => live.on_message(m).await,
                }
            }
            ev = ev_rx.recv() => live.on_event(ev, &mut incoming).await,
        };
        match flow {
            // The puppet thread ended on a failure whose report is still
            // on its way: that is the reason to give the source.
            Some(Err(e)) if e == STANDBY_GONE => {
                let reason = standby_failure(&mut ev_rx).await.unwrap_or(e);
                break Err(refuse(&mut tx, &mut proto, reason).await);
            }
            Some(r) => break r,
            None => {}
        }
    };
    // Dropping the command channel makes the puppet thread discard an
    // unfinished standby (after a commit it is no longer there).
    drop(cmd_tx);
    if result.is_err() {
        wait_discarded(&mut ev_rx, peer).await;
        // Never resumed (Resume is only sent on Commit, and a failed
        // resume kills it).
        journal.discarded(id);
        hang_up_after_refusal(&mut tx, &mut incoming).await;
    }
    result
}

/// A task of its own reads the connection: a message spans many frames,
/// and a read abandoned half-way by `select!` would lose its place in the
/// stream (`Receiver::recv` is not cancel-safe). Returns its messages, and
/// what ends it when dropped.
fn spawn_reader<R: tokio::io::AsyncRead + Unpin + Send + 'static>(
    mut rx: net::Receiver<R>,
) -> (mpsc::Receiver<Result<Message, String>>, AbortOnDrop) {
    let (in_tx, incoming) = mpsc::channel::<Result<Message, String>>(4);
    let reader = tokio::spawn(async move {
        loop {
            let m = rx.recv().await.map_err(|e| e.to_string());
            let stop = m.is_err();
            if in_tx.send(m).await.is_err() || stop {
                break;
            }
        }
    });
    (incoming, AbortOnDrop(reader))
}

/// What the source still sends after a refusal (it may be streaming
/// pages) is read and dropped until it hangs up, having read the refusal
/// (2 s at most): a connection closed with unread data is reset, and the
/// reset can destroy the refusal before the source reads it.
async fn hang_up_after_refusal<W: tokio::io::AsyncWrite + Unpin>(
    tx: &mut net::Sender<W>,
    incoming: &mut mpsc::Receiver<Result<Message, String>>,
) {
    let _ = tx.shutdown().await;
    let drain = async { while let Some(Ok(_)) = incoming.recv().await {} };
    let _ = tokio::time::timeout(Duration::from_secs(2), drain).await;
}

/// Session `n`'s staging directory in `work_dir`, made empty.
fn make_stage(work_dir: &std::path::Path, n: u64) -> Result<PathBuf, String> {
    let stage = work_dir.join(format!("tern-standby-{}-{n}", std::process::id()));
    // One left by a daemon that died with this pid (killed, so it could not
    // clean up) would mix its files with this session's: no live daemon
    // can own it.
    let _ = std::fs::remove_dir_all(&stage);
    tern_wire::create_image_dir(&stage).map_err(|e| format!("create {}: {e}", stage.display()))?;
    Ok(stage)
}

/// Wait until the puppet thread has discarded an unfinished standby
/// (half-built program killed, network lock lifted): `--once` exits right
/// after the session.
async fn wait_discarded(ev_rx: &mut mpsc::UnboundedReceiver<Event>, peer: std::net::SocketAddr) {
    let discarded = async { while ev_rx.recv().await.is_some() {} };
    if tokio::time::timeout(Duration::from_secs(30), discarded)
        .await
        .is_err()
    {
        warn!(%peer, "the standby thread did not finish discarding within 30 s");
    }
}

/// One migration being received: what the loop over the source's messages
/// and the puppet thread's events works on.
struct Live<'a, W> {
    tx: &'a mut net::Sender<W>,
    proto: &'a mut Destination,
    stage: &'a Path,
    /// The files of the round arriving.
    files: BTreeMap<String, Incoming>,
    cmd_tx: &'a mpsc::Sender<Cmd>,
    journal: &'a Journal,
    id: u64,
    peer: std::net::SocketAddr,
    timeout: Duration,
}

/// What the loop does after a message or an event: go on (`None`), or
/// end the session with this result.
type Flow = Option<Result<(), String>>;

impl<W: tokio::io::AsyncWrite + Unpin> Live<'_, W> {
    /// Pass `cmd` on to the standby thread, waiting while its queue is
    /// full.
    async fn pass_on(&self, cmd: Cmd) -> Flow {
        self.cmd_tx
            .send(cmd)
            .await
            .is_err()
            .then(|| Err(STANDBY_GONE.into()))
    }

    /// A message from the source: a piece of a round, a round complete, the
    /// commit.
    async fn on_message(&mut self, msg: Message) -> Flow {
        match self.proto.receive(msg) {
            Ok(DestinationInput::Piece {
                round,
                name,
                offset,
                data,
            }) => {
                let r = receive_piece(self.stage, round, &mut self.files, &name, offset, &data);
                match r {
                    Ok(()) => None,
                    Err(e) => Some(Err(refuse(self.tx, self.proto, e).await)),
                }
            }
            Ok(DestinationInput::RoundDone {
                round,
                final_round,
                files: summary,
                pages_follow,
            }) => {
                let dir = round_dir(self.stage, round);
                if let Err(e) = check_round(&dir, round, &mut self.files, &summary) {
                    return Some(Err(refuse(self.tx, self.proto, e).await));
                }
                debug!(round, final_round, "round received");
                if final_round && test_fault("exit-on-final") {
                    warn!("test fault: exiting on the final round");
                    std::process::exit(70);
                }
                let apply = Cmd::Apply {
                    round,
                    dir,
                    final_round,
                    pages_follow,
                };
                self.pass_on(apply).await
            }
            Ok(
                input @ (DestinationInput::Pages { .. }
                | DestinationInput::ZstdPages { .. }
                | DestinationInput::PagesOf { .. }
                | DestinationInput::ZeroPages { .. }),
            ) => self.pass_on(Cmd::Stream(input)).await,
            Ok(DestinationInput::Commit) => {
                debug!("commit received");
                self.pass_on(Cmd::Resume).await
            }
            Ok(other) => Some(Err(format!("tern bug: {other:?} in a migration"))),
            Err(e @ ProtocolError::Aborted(_)) => Some(Err(e.to_string())),
            Err(e) => Some(Err(refuse(self.tx, self.proto, e.to_string()).await)),
        }
    }

    /// What the puppet thread reports: told to the source; the resume ends
    /// the session (after post-copy, if pages are owed).
    async fn on_event(
        &mut self,
        ev: Option<Event>,
        incoming: &mut mpsc::Receiver<Result<Message, String>>,
    ) -> Flow {
        let reply = match ev {
            None => return Some(Err(STANDBY_GONE.into())),
            Some(Event::Applied { round, pages, ms }) => Message::RoundApplied { round, pages, ms },
            Some(Event::Ready { pid, ns_pid, ms }) => {
                if test_fault("exit-on-ready") {
                    warn!("test fault: exiting with the program rebuilt, before saying so");
                    std::process::exit(70);
                }
                // Recorded first: a source that loses the link after its
                // Commit asks about it (`Ask`).
                if let Err(e) = self.journal.ready(self.id, pid, ns_pid) {
                    let e = format!("cannot record the migration in the session journal: {e}");
                    return Some(Err(refuse(self.tx, self.proto, e).await));
                }
                Message::Ready { pid, ms }
            }
            Some(Event::Running {
                pid,
                ns_pid,
                ms,
                post_copy,
            }) => return Some(self.running(pid, ns_pid, ms, post_copy, incoming).await),
            Some(Event::Failed(e)) => return Some(Err(refuse(self.tx, self.proto, e).await)),
        };
        say(self.tx, self.proto, reply).await.err().map(Err)
    }

    /// The program runs here: say so, then fill the pages it still owes.
    async fn running(
        &mut self,
        pid: i32,
        ns_pid: i32,
        ms: f64,
        post_copy: Option<crate::postcopy::PostCopy>,
        incoming: &mut mpsc::Receiver<Result<Message, String>>,
    ) -> Result<(), String> {
        self.journal.running(self.id, pid, ns_pid);
        if test_fault("exit-after-resume") {
            warn!("test fault: exiting after the resume");
            std::process::exit(70);
        }
        let peer = self.peer;
        info!(%peer, pid, ns_pid, "migrated program runs here");
        let running = Message::Running {
            pid,
            ns_pid,
            resume_ms: ms,
        };
        let Some(pc) = post_copy else {
            let _ = say(self.tx, self.proto, running).await;
            let _ = self.tx.shutdown().await;
            return Ok(());
        };
        info!(
            pid,
            pages = pc.owed.len(),
            "post-copy: filling the pages still at the source"
        );
        self.proto.owe_pages();
        if let Err(e) = say(self.tx, self.proto, running).await {
            let _ = tern_sys::signal(pid, libc::SIGKILL);
            return Err(format!(
                "{e}; post-copy could not start, so the program was killed"
            ));
        }
        let r = crate::postcopy::run(pc, pid, self.tx, incoming, self.proto, self.timeout).await;
        let _ = self.tx.shutdown().await;
        r
    }
}

/// Send `m` if the protocol allows it now (else it is a bug in tern: not
/// sent, an error).
pub(crate) async fn say<W: tokio::io::AsyncWrite + Unpin>(
    tx: &mut net::Sender<W>,
    proto: &mut Destination,
    m: Message,
) -> Result<(), String> {
    proto.send(&m).map_err(|e| e.to_string())?;
    tx.send(&m)
        .await
        .map_err(|e| format!("connection lost: {e}"))
}

/// Tell the source why this side gives up (best effort); returns `reason`.
async fn refuse<W: tokio::io::AsyncWrite + Unpin>(
    tx: &mut net::Sender<W>,
    proto: &mut Destination,
    reason: String,
) -> String {
    let _ = say(
        tx,
        proto,
        Message::Refused {
            reason: reason.clone(),
        },
    )
    .await;
    reason
}

/// Marks a session ended in the journal however it ends.
struct EndSession<'a>(&'a Journal, u64);

impl Drop for EndSession<'_> {
    fn drop(&mut self) {
        self.0.end(self.1);
    }
}

fn round_dir(stage: &Path, round: u32) -> PathBuf {
    stage.join(format!("round-{round}"))
}

fn receive_piece(
    stage: &Path,
    round: u32,
    files: &mut BTreeMap<String, Incoming>,
    name: &str,
    offset: u64,
    data: &[u8],
) -> Result<(), String> {
    if !net::valid_image_path(name) {
        return Err(format!("invalid file name {name:?}"));
    }
    if !files.contains_key(name) {
        if files.len() >= MAX_FILES_PER_ROUND {
            return Err(format!(
                "round {round} has more than {MAX_FILES_PER_ROUND} files"
            ));
        }
        let dir = round_dir(stage, round);
        tern_wire::create_image_dir(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
        let path = dir.join(name);
        // A process of a tree: its own directory (validated above: one
        // level, `proc-PID`).
        if let Some(sub) = path.parent().filter(|p| *p != dir) {
            tern_wire::create_image_dir(sub)
                .map_err(|e| format!("create {}: {e}", sub.display()))?;
        }
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| format!("create {}: {e}", path.display()))?;
        files.insert(
            name.to_string(),
            Incoming {
                file,
                size: 0,
                hash: xxhash_rust::xxh3::Xxh3::new(),
            },
        );
    }
    let Some(f) = files.get_mut(name) else {
        return Err(format!("file {name} vanished"));
    };
    if offset != f.size {
        return Err(format!(
            "{name}: piece at offset {offset}, expected {}",
            f.size
        ));
    }
    f.file
        .write_all(data)
        .map_err(|e| format!("write {name} of round {round}: {e}"))?;
    f.size += data.len() as u64;
    f.hash.update(data);
    Ok(())
}

/// The files received for a round are exactly those announced, whole.
fn check_round(
    dir: &Path,
    round: u32,
    files: &mut BTreeMap<String, Incoming>,
    summary: &[net::FileSummary],
) -> Result<(), String> {
    let got = std::mem::take(files);
    if got.len() != summary.len() {
        return Err(format!(
            "round {round}: {} files announced, {} received",
            summary.len(),
            got.len()
        ));
    }
    for s in summary {
        let Some(f) = got.get(&s.name) else {
            return Err(format!(
                "round {round}: {} announced but not received",
                s.name
            ));
        };
        if f.size != s.size || f.hash.digest() != s.xxh3 {
            return Err(format!(
                "round {round}: {} arrived damaged ({} bytes, announced {})",
                s.name, f.size, s.size
            ));
        }
    }
    if got.is_empty() {
        tern_wire::create_image_dir(dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    }
    Ok(())
}

/// Ends a task when the session ends, however it ends.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What a final round rebuilt, stopped until the commit: one process, or
/// a tree (a stop-and-copy migration of a process with children).
enum Rebuilt {
    One(Box<Prepared>),
    Tree(crate::tree::PreparedTree),
}

impl Rebuilt {
    fn pid(&self) -> i32 {
        match self {
            Rebuilt::One(p) => p.pid(),
            Rebuilt::Tree(t) => t.pid(),
        }
    }

    fn ns_pid(&self) -> i32 {
        match self {
            Rebuilt::One(p) => p.ns_pid(),
            Rebuilt::Tree(t) => t.ns_pid(),
        }
    }

    fn resume(self) -> crate::Result<crate::Restored> {
        match self {
            Rebuilt::One(p) => p.resume(),
            Rebuilt::Tree(t) => {
                let (root, processes) = t.resume()?;
                info!(processes, "migrated tree runs");
                Ok(root)
            }
        }
    }
}

/// The thread that owns (and traces) one migration's puppet.
fn puppet_thread(
    mut cmds: mpsc::Receiver<Cmd>,
    events: mpsc::UnboundedSender<Event>,
    opts: RestoreOptions,
) {
    let mut standby: Option<Standby> = None;
    // A tree's rounds: kept on disk, built into a tree standby.
    let mut tree_rounds = false;
    let mut tree_standby: Option<TreeStandby> = None;
    let mut prepared: Option<Rebuilt> = None;
    while let Some(cmd) = cmds.blocking_recv() {
        let t = Instant::now();
        let ms = || t.elapsed().as_secs_f64() * 1e3;
        let event = match cmd {
            Cmd::Apply {
                round,
                dir,
                final_round: false,
                ..
            } => {
                let tree_round = standby.is_none() && crate::tree::is_tree(&dir);
                let r = if tree_round {
                    let first = !tree_rounds;
                    tree_rounds = true;
                    apply_tree_round(&mut tree_standby, &dir, first, &opts)
                } else {
                    let r = match standby.as_mut() {
                        None => Standby::start(&dir, &opts).map(|s| {
                            let pages = s.pages_held();
                            standby = Some(s);
                            pages
                        }),
                        Some(s) => s.apply_round(&dir).map(|a| a.pages),
                    };
                    let _ = std::fs::remove_dir_all(&dir);
                    r
                };
                match r {
                    Ok(pages) => Event::Applied {
                        round,
                        pages,
                        ms: ms(),
                    },
                    Err(e) => Event::Failed(format!("round {round}: {}", crate::with_causes(&e))),
                }
            }
            Cmd::Apply {
                dir,
                final_round: true,
                pages_follow,
                ..
            } => {
                // A streamed image's pages are the next commands.
                let mut named: Option<i32> = None;
                let mut receive = |pid: i32, pages: &mut crate::streamed::StreamedPages| {
                    receive_streamed(&mut cmds, &mut named, pid, pages)
                };
                let r = build_final(
                    standby.take(),
                    tree_standby.take(),
                    &dir,
                    pages_follow.then_some(&mut receive as crate::PageStream),
                    &opts,
                );
                match r {
                    Ok(p) => {
                        let (pid, ns_pid) = (p.pid(), p.ns_pid());
                        prepared = Some(p);
                        Event::Ready {
                            pid,
                            ns_pid,
                            ms: ms(),
                        }
                    }
                    Err(e) => Event::Failed(format!("final round: {}", crate::with_causes(&e))),
                }
            }
            Cmd::Stream(DestinationInput::PagesOf { pid }) => Event::Failed(format!(
                "the source sent pages of process {pid}, which no image here owes"
            )),
            Cmd::Stream(_) => Event::Failed("the source sent pages that no image here owes".into()),
            Cmd::Resume => match prepared.take().map(resume_with_post_copy) {
                None => Event::Failed("commit before the program was ready".into()),
                Some(Err(e)) => Event::Failed(format!("resume: {e}")),
                Some(Ok((r, post_copy))) => {
                    let _ = events.send(Event::Running {
                        pid: r.pid,
                        ns_pid: r.ns_pid,
                        ms: ms(),
                        post_copy,
                    });
                    reap(r.pid, r.pid_ns_init);
                    return;
                }
            },
        };
        let failed = matches!(event, Event::Failed(_));
        if events.send(event).is_err() || failed {
            return;
        }
    }
    // The connection ended first: `standby` / `prepared` are dropped here,
    // which kills the half-built program.
}

/// Place process `pid`'s streamed pages as the connection's task passes
/// them on (`cmds`) until every one is in. The source names each process
/// (`named`: the last it named) before its pages.
fn receive_streamed(
    cmds: &mut mpsc::Receiver<Cmd>,
    named: &mut Option<i32>,
    pid: i32,
    pages: &mut crate::streamed::StreamedPages,
) -> Result<(), String> {
    use DestinationInput as In;
    while !pages.complete() {
        let input = match cmds.blocking_recv() {
            Some(Cmd::Stream(input)) => input,
            Some(_) => return Err(format!("{} page(s) never came", pages.left())),
            None => {
                return Err(format!(
                    "the connection ended with {} page(s) still to come",
                    pages.left()
                ))
            }
        };
        match input {
            In::PagesOf { pid: p } if p == pid => *named = Some(p),
            In::PagesOf { pid: p } => {
                return Err(format!(
                    "pages of process {p} came while process {pid} is rebuilt, {} of its page(s) still to come",
                    pages.left()
                ))
            }
            _ if *named != Some(pid) => {
                return Err(format!(
                    "pages came without naming process {pid}, the one being rebuilt"
                ))
            }
            In::Pages { start, data } => pages.place(start, &data)?,
            In::ZeroPages { start, pages: n } => pages.zeros(start, n)?,
            In::ZstdPages {
                start,
                pages: n,
                data,
            } => pages.place_compressed(start, n, &data)?,
            _ => return Err("tern bug: another message among streamed pages".into()),
        }
    }
    Ok(())
}

/// The final image in `dir` rebuilt, stopped: over the standby of the
/// rounds before it, as a tree, or alone; with `stream` (a streamed
/// stop-and-copy, never after rounds), with the pages the source sends
/// after it, process by process.
fn build_final(
    standby: Option<Standby>,
    tree_standby: Option<TreeStandby>,
    dir: &Path,
    stream: Option<crate::PageStream>,
    opts: &RestoreOptions,
) -> crate::Result<Rebuilt> {
    let one = |p: Prepared| Rebuilt::One(Box::new(p));
    Ok(match (standby, stream) {
        (Some(_), Some(_)) => {
            return Err(crate::RestoreError::Unsupported(
                "the source streams pages after pre-copy rounds: only a stop-and-copy streams them"
                    .into(),
            ))
        }
        (Some(s), None) => one(s.finish(dir)?),
        (None, stream) if crate::tree::is_tree(dir) => {
            Rebuilt::Tree(finish_migrated_tree(dir, tree_standby, opts, stream)?)
        }
        (None, Some(receive)) => one(crate::prepare_streamed(dir, opts, receive)?),
        (None, None) => one(crate::prepare(dir, opts)?),
    })
}

/// A round of a tree: kept on disk (the final image's chain) and built
/// into the tree standby, which the first round starts. A round whose
/// processes differ from the standby's drops it: the tree is then rebuilt
/// from the chain at the end. Returns the pages held.
fn apply_tree_round(
    standby: &mut Option<TreeStandby>,
    dir: &Path,
    first: bool,
    opts: &RestoreOptions,
) -> crate::Result<u64> {
    if first {
        let s = TreeStandby::start(dir, opts)?;
        let pages = s.pages_held();
        *standby = Some(s);
        return Ok(pages);
    }
    if let Some(s) = standby.as_mut() {
        if s.matches(dir)? {
            return s.apply_round(dir);
        }
        warn!("the tree changed between rounds: it will be rebuilt from the rounds at the end");
        *standby = None;
    }
    crate::tree::tree_round_pages(dir)
}

/// Resume a rebuilt program; if it still owes pages (post-copy), first
/// start the guard that kills it should this daemon die before they are
/// all in (its missing pages would otherwise read as zeros).
fn resume_with_post_copy(
    mut rebuilt: Rebuilt,
) -> std::result::Result<(crate::Restored, Option<crate::postcopy::PostCopy>), String> {
    let owed = match &mut rebuilt {
        Rebuilt::One(p) => p.take_owed(),
        Rebuilt::Tree(_) => None,
    };
    let post_copy = match owed {
        None => None,
        Some(owed) => {
            let pid = rebuilt.pid();
            let program = tern_sys::pidfd_open(pid)
                .map_err(|e| format!("pidfd of the rebuilt program {pid}: {e}"))?;
            let guard = tern_sys::child::PostCopyGuard::start(program.as_fd(), owed.uffd())
                .map_err(|e| format!("start the post-copy guard: {e}"))?;
            Some(crate::postcopy::PostCopy { owed, guard })
        }
    };
    let r = rebuilt.resume().map_err(|e| e.to_string())?;
    Ok((r, post_copy))
}

/// Wait for a restored program (our child) to exit, then for its PID
/// namespace's init, so neither lingers as a zombie of the daemon.
fn reap(pid: i32, ns_init: Option<i32>) {
    for p in std::iter::once(pid).chain(ns_init) {
        tern_sys::child::reap(p);
    }
    debug!(pid, "restored program exited");
}
