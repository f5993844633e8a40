//! Live migration, source side (`tern migrate`): pre-copy rounds shipped to
//! a `tern serve` while the program runs, then the frozen final round and
//! the commit.
//!
//! This thread drives the program (ptrace calls must come from the thread
//! that attached); a tokio runtime carries the network: a sender task
//! ships each round's image files as soon as they are written, while this
//! thread already reads the next round (rounds are pipelined), and a
//! receiver task forwards what the destination says.
//!
//! Commit protocol, and what the program's fate is at each step:
//! 1. until the final image is sent and the destination answers `Ready`
//!    (program rebuilt there, stopped, recorded in its session journal):
//!    any failure thaws the program here, untouched, and the destination
//!    discards its copy;
//! 2. a pending record is written here (`crate::pending`), a SIGSTOP is
//!    queued on the program, and `Commit` is sent: from now on the
//!    destination may resume its copy, so this one is not thawed unless
//!    the destination says it discarded its copy;
//! 3. `Running` received: this copy is killed, the record removed. If the
//!    link fails between 2 and 3, tern asks the destination again (`Ask`,
//!    new connections) for up to `settle_timeout`: resumed there -> this
//!    copy is killed; discarded there -> this one resumes. If it cannot
//!    tell, the program is left stopped (SIGSTOP) with its record, for
//!    `tern resolve`. If this tern dies after 2, the same holds: the
//!    queued SIGSTOP keeps the program stopped and the record is there.
//!    Nothing ever runs twice; nothing is lost.

mod postcopy;
pub use postcopy::PostCopyReport;

use crate::error::{EngineError, Result};
use crate::pending;
use crate::precopy::{self, Frozen, Precopy, PrecopyOptions, RoundReport};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tern_wire::net::{self, FileSummary, Key, Message, SessionOutcome};
use tern_wire::session::{self, ProtocolError, Source, SourceInput};
use tokio::io::{ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Freeze, copy everything, restore (the paper's baseline).
    Simple,
    /// Pre-copy rounds while the program runs, then the last delta.
    Live,
}

/// Page compression on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    Off,
    /// zstd at this level for every round.
    Zstd(i32),
    /// None while the link keeps up with the copy; zstd level 1 from the
    /// round after one that went slower than zstd compresses (~300 MB/s),
    /// i.e. where compressing pays.
    Auto,
}

/// Below this many bytes per ms on the wire, compressing pays.
const ZSTD_PAYS_BELOW: f64 = 300_000.0;

#[derive(Debug, Clone)]
pub struct MigrateOptions {
    pub to: String,
    pub key: Key,
    pub mode: Mode,
    pub compress: Compression,
    pub precopy: PrecopyOptions,
    /// Where round images are staged before they are sent (removed after).
    pub work_dir: PathBuf,
    /// How long to wait to connect, and for each answer of the destination
    /// (and for the handoff command).
    pub timeout: Duration,
    /// Run with `sh -c` once the destination holds the program, ready, and
    /// before it is told to resume it (e.g. move the service address and
    /// the user's route): if it fails, the migration is called off and the
    /// program resumes here.
    pub handoff_cmd: Option<String>,
    /// If the link fails after `Commit` was sent: how long to keep asking
    /// the destination (`Ask`) what became of the program before leaving
    /// it stopped here for `tern resolve`.
    pub settle_timeout: Duration,
    /// Shared by migrations run at once (`tern evacuate`): each takes its
    /// turn before it freezes its program and gives it back once the
    /// program runs at the destination (or here again), so that no two
    /// frozen phases overlap.
    pub freeze_turns: Option<std::sync::Arc<FreezeTurns>>,
    /// Stop-and-copy: send each process's private anonymous memory as a
    /// stream of pages right after the rest of the image, read from the
    /// stopped program as they go and placed by the destination as they
    /// come, instead of inside the image (written, sent, then read). The
    /// program still resumes there only once every page is in.
    pub stream_pages: bool,
}

/// One program frozen at a time among migrations run at once: see
/// [`MigrateOptions::freeze_turns`].
#[derive(Debug, Default)]
pub struct FreezeTurns(std::sync::Mutex<()>);

impl FreezeTurns {
    /// Wait for the turn; returns it and whether the wait was long enough
    /// (20 ms) for the program to have written much meanwhile.
    fn take(&self) -> (std::sync::MutexGuard<'_, ()>, bool) {
        let t = Instant::now();
        // A migration that panicked holding it gave it back all the same.
        let turn = self.0.lock().unwrap_or_else(|p| p.into_inner());
        (turn, t.elapsed() > Duration::from_millis(20))
    }

    /// Wait while another program is frozen: its frozen phase gets the
    /// CPUs and the link rather than this one's next round.
    fn wait_quiet(&self) {
        drop(self.0.lock().unwrap_or_else(|p| p.into_inner()));
    }
}

/// One round as it went over the wire.
#[derive(Debug, Clone)]
pub struct WireRound {
    pub round: u32,
    /// Pages the tracker reported dirty (round 0: all with data).
    pub dirty_pages: u64,
    pub pages: u64,
    pub bytes: u64,
    pub hash: u64,
    /// Reading the round from the program.
    pub copy_ms: f64,
    /// Shipping it (overlaps the next round's copy).
    pub send_ms: f64,
    pub wire_bytes: u64,
}

#[derive(Debug, Clone)]
pub struct MigrationReport {
    pub pid: i32,
    pub restored_pid: i32,
    /// The pid the program sees itself as on the destination.
    pub restored_ns_pid: i32,
    pub mode: Mode,
    /// Whether pages went compressed (from some round on).
    pub compressed: bool,
    pub tracker: String,
    pub policy: String,
    pub stop_reason: String,
    pub rounds: Vec<WireRound>,
    /// Freeze here -> `Running` received from the destination (which sends
    /// it right after resuming the program): the program's downtime, as
    /// measured by tern's clock, including one network delay.
    pub downtime_ms: f64,
    /// Freeze -> final image written here.
    pub final_dump_ms: f64,
    /// Final image written -> the destination received all of it.
    pub transfer_ms: f64,
    /// When the program was frozen here, and when the destination said it
    /// runs: its frozen phase.
    pub frozen_at: Instant,
    pub running_at: Instant,
    /// Destination: final image received -> program rebuilt (`Ready`).
    pub restore_ms: f64,
    /// Post-copy, when the final image left pages at the source: what was
    /// sent after the program ran at the destination. The source copy
    /// ended only after the destination had every page.
    pub post_copy: Option<PostCopyReport>,
    /// `Ready` -> `Running` (commit round trip and resume), without the
    /// handoff command.
    pub commit_ms: f64,
    /// The handoff command (0 without one).
    pub handoff_ms: f64,
    pub final_pages: u64,
    pub final_bytes: u64,
    /// Pages streamed after the final image, before `Ready` (stop-and-copy
    /// with [`MigrateOptions::stream_pages`]); `final_pages` excludes them.
    pub streamed_pages: u64,
    /// Of those, pages of zeros: named, not sent.
    pub streamed_zero_pages: u64,
    pub bytes_on_wire: u64,
    pub total_ms: f64,
}

/// What the sender task is asked to ship.
enum Job {
    Round {
        round: u32,
        dir: PathBuf,
        final_round: bool,
        /// The final image's owed pages are streamed after it, before `Ready`.
        pages_follow: bool,
        /// Remove `dir` once sent (a round's directory; not the final one).
        remove: bool,
    },
    Message(Message),
}

/// What the sender task reports back.
enum Sent {
    Round {
        round: u32,
        ms: f64,
        wire_bytes: u64,
    },
    Message,
    Failed(String),
}

/// Files of an image directory, sorted: its own, and those of a process
/// tree's per-process directories (`proc-PID/NAME`).
fn image_files(dir: &Path) -> std::io::Result<Vec<String>> {
    let mut names = Vec::new();
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let Some(n) = e.file_name().to_str().map(str::to_string) else {
            continue;
        };
        let kind = e.file_type()?;
        if kind.is_file() && net::valid_file_name(&n) {
            names.push(n);
        } else if kind.is_dir() && net::valid_image_path(&format!("{n}/core.img")) {
            for f in std::fs::read_dir(e.path())? {
                let f = f?;
                if let Some(leaf) = f.file_name().to_str() {
                    let path = format!("{n}/{leaf}");
                    if f.file_type()?.is_file() && net::valid_image_path(&path) {
                        names.push(path);
                    }
                }
            }
        }
    }
    names.sort();
    Ok(names)
}

async fn send_round<W: tokio::io::AsyncWrite + Unpin>(
    tx: &mut net::Sender<W>,
    round: u32,
    dir: &Path,
    final_round: bool,
    pages_follow: bool,
) -> std::result::Result<(), String> {
    use std::io::Read;
    let names = image_files(dir).map_err(|e| format!("list {}: {e}", dir.display()))?;
    let mut files = Vec::with_capacity(names.len());
    let mut piece: Vec<u8> = Vec::new();
    for name in names {
        let path = dir.join(&name);
        // Plain reads: the staging directory is on tmpfs when there is one,
        // where a read is a memory copy.
        let mut f =
            std::fs::File::open(&path).map_err(|e| format!("open {}: {e}", path.display()))?;
        let mut hasher = xxhash_rust::xxh3::Xxh3::new();
        let mut offset = 0u64;
        loop {
            // One buffer for every piece: it travels in the message and
            // comes back after the send.
            let mut data = std::mem::take(&mut piece);
            data.resize(net::FILE_PIECE, 0);
            let mut filled = 0;
            while filled < data.len() {
                let n = f
                    .read(&mut data[filled..])
                    .map_err(|e| format!("read {}: {e}", path.display()))?;
                if n == 0 {
                    break;
                }
                filled += n;
            }
            data.truncate(filled);
            if data.is_empty() && offset > 0 {
                break;
            }
            hasher.update(&data);
            let len = data.len() as u64;
            let msg = Message::FileData {
                round,
                name: name.clone(),
                offset,
                data,
            };
            tx.send(&msg).await.map_err(|e| e.to_string())?;
            if let Message::FileData { data, .. } = msg {
                piece = data;
            }
            offset += len;
            if len < net::FILE_PIECE as u64 {
                break;
            }
        }
        debug!(round, name, bytes = offset, "file sent");
        files.push(FileSummary {
            name,
            size: offset,
            xxh3: hasher.digest(),
        });
    }
    tx.send(&Message::RoundDone {
        round,
        final_round,
        files,
        pages_follow,
    })
    .await
    .map_err(|e| e.to_string())
}

/// Connect to a `tern serve` and authenticate (both ends hold `key`).
async fn open_channel(
    to: &str,
    key: &Key,
    timeout: Duration,
) -> std::result::Result<Channel, String> {
    let stream = tokio::time::timeout(timeout, TcpStream::connect(to))
        .await
        .map_err(|_| format!("connecting to {to} timed out"))?
        .map_err(|e| format!("cannot connect to {to}: {e}"))?;
    let _ = stream.set_nodelay(true);
    // A second fd on the same socket, for socket options set later.
    let socket = {
        use std::os::fd::AsFd;
        stream.as_fd().try_clone_to_owned().ok()
    };
    let (tx, rx) = tokio::time::timeout(timeout, net::handshake(stream, key, true))
        .await
        .map_err(|_| format!("handshake with {to} timed out"))?
        .map_err(|e| format!("{to}: {e}"))?;
    Ok((tx, rx, socket))
}

/// An authenticated connection: its two halves, and the socket itself.
type Channel = (
    net::Sender<WriteHalf<TcpStream>>,
    net::Receiver<ReadHalf<TcpStream>>,
    Option<std::os::fd::OwnedFd>,
);

/// Ask the `tern serve` at `to` what became of migration `session`.
pub fn ask_outcome(
    to: &str,
    key: &Key,
    session: u64,
    timeout: Duration,
) -> std::result::Result<SessionOutcome, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("start the network runtime: {e}"))?;
    rt.block_on(async {
        let (mut tx, mut rx, _) = open_channel(to, key, timeout).await?;
        tx.send(&Message::Ask {
            protocol: net::PROTOCOL_VERSION,
            session,
        })
        .await
        .map_err(|e| format!("{to}: {e}"))?;
        match tokio::time::timeout(timeout, rx.recv()).await {
            Err(_) => Err(format!("{to} did not answer")),
            Ok(Err(e)) => Err(format!("{to}: {e}")),
            Ok(Ok(m)) => session::outcome_of(session, m).map_err(|e| match e {
                ProtocolError::Refused(reason) => format!("{to} refused: {reason}"),
                e => format!("{to}: {e}"),
            }),
        }
    })
}

/// The network side as seen from the driving thread.
struct Link {
    rt: tokio::runtime::Runtime,
    jobs: mpsc::Sender<Job>,
    sent: mpsc::UnboundedReceiver<Sent>,
    incoming: mpsc::UnboundedReceiver<std::result::Result<Message, String>>,
    wire_bytes: std::sync::Arc<std::sync::atomic::AtomicU64>,
    timeout: Duration,
    /// The protocol's rules for this side: every message sent and received
    /// goes through it.
    proto: Source,
    /// The connection's socket (options for post-copy).
    socket: Option<std::os::fd::OwnedFd>,
}

impl Link {
    fn connect(
        opts: &MigrateOptions,
        pid: i32,
        comm: &str,
        session: u64,
    ) -> std::result::Result<Link, String> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(|e| format!("start the network runtime: {e}"))?;
        let timeout = opts.timeout;
        let mut proto = Source::new();
        let hello = Message::Hello {
            protocol: net::PROTOCOL_VERSION,
            tern_version: env!("CARGO_PKG_VERSION").to_string(),
            pid,
            comm: comm.to_string(),
            kernel_release: crate::dump::kernel_release(),
            session,
        };
        proto.send(&hello).map_err(|e| e.to_string())?;
        let (tx, mut rx, socket) = rt.block_on(async {
            let (mut tx, mut rx, socket) = open_channel(&opts.to, &opts.key, timeout).await?;
            tx.send(&hello).await.map_err(|e| e.to_string())?;
            match tokio::time::timeout(timeout, rx.recv()).await {
                Err(_) => Err(format!("{} did not answer", opts.to)),
                Ok(Err(e)) => Err(format!("{}: {e}", opts.to)),
                Ok(Ok(m)) => match proto.receive(m) {
                    Ok(_) => Ok((tx, rx, socket)),
                    Err(ProtocolError::Refused(reason)) => {
                        Err(format!("{} refused: {reason}", opts.to))
                    }
                    Err(e) => Err(format!("{}: {e}", opts.to)),
                },
            }
        })?;
        let wire_bytes = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (jobs_tx, mut jobs_rx) = mpsc::channel::<Job>(1);
        let (sent_tx, sent_rx) = mpsc::unbounded_channel();
        let counter = wire_bytes.clone();
        rt.spawn(async move {
            let mut tx = tx;
            while let Some(job) = jobs_rx.recv().await {
                let t = Instant::now();
                let before = tx.bytes;
                let r = match job {
                    Job::Round {
                        round,
                        dir,
                        final_round,
                        pages_follow,
                        remove,
                    } => {
                        let r = send_round(&mut tx, round, &dir, final_round, pages_follow).await;
                        if remove {
                            let _ = std::fs::remove_dir_all(&dir);
                        }
                        r.map(|()| Sent::Round {
                            round,
                            ms: t.elapsed().as_secs_f64() * 1e3,
                            wire_bytes: tx.bytes - before,
                        })
                    }
                    Job::Message(m) => tx
                        .send(&m)
                        .await
                        .map(|()| Sent::Message)
                        .map_err(|e| e.to_string()),
                };
                counter.store(tx.bytes, std::sync::atomic::Ordering::Relaxed);
                match r {
                    Ok(s) => {
                        if sent_tx.send(s).is_err() {
                            break;
                        }
                    }
                    Err(e) => {
                        let _ = sent_tx.send(Sent::Failed(e));
                        break;
                    }
                }
            }
            let _ = tx.shutdown().await;
        });
        let (in_tx, in_rx) = mpsc::unbounded_channel();
        rt.spawn(async move {
            loop {
                let m = rx.recv().await.map_err(|e| e.to_string());
                let stop = m.is_err();
                if in_tx.send(m).is_err() || stop {
                    break;
                }
            }
        });
        Ok(Link {
            rt,
            jobs: jobs_tx,
            sent: sent_rx,
            incoming: in_rx,
            wire_bytes,
            timeout,
            proto,
            socket,
        })
    }

    /// The destination's next message, waited for up to the timeout.
    fn wait_message(&mut self, what: &str) -> std::result::Result<Message, String> {
        let timeout = self.timeout;
        match self
            .rt
            .block_on(async { tokio::time::timeout(timeout, self.incoming.recv()).await })
        {
            Err(_) => Err(format!("no {what} from the destination within {timeout:?}")),
            Ok(None) => Err("the connection to the destination is gone".into()),
            Ok(Some(m)) => m.map_err(|e| format!("connection to the destination: {e}")),
        }
    }

    /// Rounds the destination reported applied.
    fn applied(&self) -> u32 {
        self.proto.rounds_applied()
    }

    fn submit(&mut self, job: Job) -> std::result::Result<(), String> {
        match &job {
            Job::Round {
                round,
                final_round,
                pages_follow,
                ..
            } => self.proto.round_sent(*round, *final_round, *pages_follow),
            Job::Message(m) => self.proto.send(m),
        }
        .map_err(|e| e.to_string())?;
        let timeout = self.timeout;
        let jobs = self.jobs.clone();
        match self
            .rt
            .block_on(async { tokio::time::timeout(timeout, jobs.send(job)).await })
        {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err("the connection to the destination is gone".into()),
            Err(_) => Err(format!(
                "sending to the destination made no progress for {timeout:?}"
            )),
        }
    }

    /// Anything the destination said meanwhile that ends the migration.
    fn check_incoming(&mut self) -> std::result::Result<(), String> {
        while let Ok(m) = self.incoming.try_recv() {
            self.note(m)?;
        }
        Ok(())
    }

    /// Check what the destination said against the protocol: a round
    /// applied is counted, a refusal or a broken connection is the error
    /// it is.
    fn note(
        &mut self,
        m: std::result::Result<Message, String>,
    ) -> std::result::Result<SourceInput, String> {
        let m = m.map_err(|e| format!("connection to the destination: {e}"))?;
        let input = self.proto.receive(m).map_err(|e| e.to_string())?;
        if let SourceInput::Applied { round, pages, ms } = input {
            info!(round, ms, pages, "destination applied round");
        }
        Ok(input)
    }

    /// Wait for the next completion of the sender task.
    fn wait_sent(&mut self) -> std::result::Result<Sent, String> {
        let timeout = self.timeout;
        let r = self
            .rt
            .block_on(async { tokio::time::timeout(timeout, self.sent.recv()).await });
        match r {
            Err(_) => Err("sending to the destination timed out".into()),
            Ok(None) => Err("the connection to the destination is gone".into()),
            Ok(Some(Sent::Failed(e))) => Err(format!("sending to the destination: {e}")),
            Ok(Some(s)) => Ok(s),
        }
    }

    /// Wait for the destination's next answer other than progress notes
    /// (or, for `what` = "RoundApplied", the next progress note).
    fn wait_input(&mut self, what: &str) -> std::result::Result<SourceInput, String> {
        let timeout = self.timeout;
        loop {
            let r = self
                .rt
                .block_on(async { tokio::time::timeout(timeout, self.incoming.recv()).await });
            let input = match r {
                Err(_) => return Err(format!("no {what} from the destination within {timeout:?}")),
                Ok(None) => return Err("the connection to the destination is gone".into()),
                Ok(Some(m)) => self.note(m)?,
            };
            if !matches!(input, SourceInput::Applied { .. }) || what == "RoundApplied" {
                return Ok(input);
            }
        }
    }

    /// A refusal the destination sent before hanging up, if one arrives
    /// within a moment.
    fn refusal(&mut self) -> Option<String> {
        let incoming = &mut self.incoming;
        self.rt
            .block_on(async {
                tokio::time::timeout(Duration::from_millis(300), async {
                    loop {
                        match incoming.recv().await {
                            Some(Ok(Message::Refused { reason })) => return Some(reason),
                            Some(Ok(_)) => continue,
                            _ => return None,
                        }
                    }
                })
                .await
            })
            .ok()
            .flatten()
    }

    /// Best effort: tell the destination to discard everything.
    fn abort(&mut self, reason: &str) {
        let abort = Message::Abort {
            reason: reason.to_string(),
        };
        if self.proto.send(&abort).is_err() {
            return;
        }
        let _ = self.jobs.try_send(Job::Message(abort));
        let _ = self.rt.block_on(async {
            tokio::time::timeout(Duration::from_millis(500), self.sent.recv()).await
        });
    }
}

/// Migrate `pid` to the `tern serve` at `opts.to`. `on_round` is called as
/// each pre-copy round is read (before it is on the wire).
pub fn migrate(
    pid: i32,
    opts: &MigrateOptions,
    on_round: &mut dyn FnMut(&RoundReport),
) -> Result<MigrationReport> {
    let t_start = Instant::now();
    let fail = |what: String| EngineError::Migration { pid, what };
    // A tree goes whole (checked as its rounds or its image are taken).
    if !precopy::is_tree_for(pid, &opts.precopy.policy)? {
        crate::dump::preflight_all(pid, &opts.precopy.dump)?;
    }
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|c| c.trim().to_string())
        .unwrap_or_default();
    let stage_dir = opts
        .work_dir
        .join(format!("tern-migrate-{pid}-{}", std::process::id()));
    // Left by a tern that died with this pid (its files would be shipped).
    let _ = std::fs::remove_dir_all(&stage_dir);
    let _staging = tern_wire::image::Staging(stage_dir.clone());
    let session = net::new_session_id().map_err(|e| fail(format!("a migration id: {e}")))?;
    let mut link = Link::connect(opts, pid, &comm, session).map_err(fail)?;
    info!(pid, to = %opts.to, "connected, authenticated");

    // Rounds while the program runs; any failure leaves it running.
    let mut shipped = Shipped::default();
    let mut turn = None;
    let frozen = run_until_frozen(
        pid,
        opts,
        &stage_dir,
        &mut link,
        &mut shipped,
        &mut turn,
        on_round,
    )?;

    // Frozen from here: until the commit, any failure thaws the program.
    let final_dump_ms = frozen.stopped_ms();
    // Pages left out of the final image: streamed before `Ready` by a
    // stop-and-copy, sent after `Running` by post-copy.
    let streamed = !frozen.streams().is_empty();
    let owes_pages = !streamed && !frozen.deferred().is_empty();
    if owes_pages {
        info!(
            pages = frozen.deferred().len(),
            "final image leaves pages for post-copy"
        );
        link.proto.owe_pages();
    }
    let streamed_pages = frozen.streams().iter().map(|s| s.1.len() as u64).sum();
    let stream = streamed.then(|| frozen.streams());
    let ready =
        match final_round_until_ready(&mut link, &mut shipped, &stage_dir, opts, pid, stream) {
            Ok(r) => r,
            Err(what) => return Err(settle(frozen, &mut link, pid, what)),
        };
    let (frozen, (restored_pid, restored_ns_pid)) =
        commit(frozen, &mut link, opts, pid, session, owes_pages)?;
    let t_running = Instant::now();
    // The program runs there: another may freeze while this copy ends.
    drop(turn);
    let downtime_ms = t_running.duration_since(frozen.frozen_at()).as_secs_f64() * 1e3;
    let frozen_at = frozen.frozen_at();
    let post_copy = if owes_pages {
        let deferred = frozen.deferred().to_vec();
        match postcopy::send_owed_pages(&mut link, pid, &deferred) {
            Ok(r) => Some(r),
            Err(what) => return Err(lost_in_post_copy(frozen, pid, &what, deferred.len())),
        }
    } else {
        None
    };
    let report = frozen.kill()?;
    pending::Record::remove(pid);
    let bytes_on_wire = link.wire_bytes.load(std::sync::atomic::Ordering::Relaxed);
    drop(link);
    let out = MigrationReport {
        pid,
        restored_pid,
        restored_ns_pid,
        mode: opts.mode,
        compressed: shipped.compressing,
        tracker: report.tracker.to_string(),
        policy: report.policy.clone(),
        stop_reason: report.stop_reason.clone(),
        rounds: shipped.rounds,
        downtime_ms,
        final_dump_ms,
        transfer_ms: ready.transfer_ms,
        frozen_at,
        running_at: t_running,
        restore_ms: ready.restore_ms,
        post_copy,
        commit_ms: t_running.duration_since(ready.at).as_secs_f64() * 1e3 - ready.handoff_ms,
        handoff_ms: ready.handoff_ms,
        final_pages: report.final_stats.pages_stored,
        final_bytes: report.final_stats.stored_bytes,
        streamed_pages,
        streamed_zero_pages: ready.zero_pages,
        bytes_on_wire,
        total_ms: t_start.elapsed().as_secs_f64() * 1e3,
    };
    info!(?out, "migration complete");
    Ok(out)
}

/// The frozen phase up to the commit, as measured.
struct Readied {
    /// Final image written -> the destination received all of it.
    transfer_ms: f64,
    /// The destination's own time to rebuild the program.
    restore_ms: f64,
    /// When `Ready` came.
    at: Instant,
    handoff_ms: f64,
    /// Streamed pages that were zeros (only named on the wire).
    zero_pages: u64,
}

/// Frozen: ship the final image (after every round before it) and the
/// pages it left out to `stream` (if any), wait for the destination's
/// `Ready`, run the handoff command. An error means nothing was
/// committed: the caller thaws the program here.
fn final_round_until_ready(
    link: &mut Link,
    shipped: &mut Shipped,
    stage_dir: &Path,
    opts: &MigrateOptions,
    pid: i32,
    stream: Option<&[(i32, Vec<u64>)]>,
) -> std::result::Result<Readied, String> {
    let t = Instant::now();
    drain(link, &mut shipped.rounds, &mut shipped.pending)?;
    link.submit(Job::Round {
        round: shipped.rounds.len() as u32,
        dir: stage_dir.to_path_buf(),
        final_round: true,
        pages_follow: stream.is_some(),
        remove: false,
    })?;
    let mut streamed = postcopy::Streamed::default();
    let zstd = match opts.compress {
        Compression::Zstd(level) => Some(level),
        Compression::Off | Compression::Auto => None,
    };
    for (process, pages) in stream.unwrap_or_default() {
        streamed.add(postcopy::stream_pages(link, *process, pages, zstd)?);
    }
    if !matches!(link.wait_sent()?, Sent::Round { .. }) {
        return Err("sender out of step".into());
    }
    for _ in 0..streamed.messages {
        if !matches!(link.wait_sent()?, Sent::Message) {
            return Err("sender out of step".into());
        }
    }
    let transfer_ms = t.elapsed().as_secs_f64() * 1e3;
    debug!(transfer_ms, "final round sent");
    let restore_ms = match link.wait_input("Ready")? {
        SourceInput::Ready { ms, .. } => ms,
        other => return Err(format!("tern bug: {other:?} instead of Ready")),
    };
    debug!(restore_ms, "destination ready");
    let at = Instant::now();
    let mut handoff_ms = 0.0;
    if let Some(cmd) = &opts.handoff_cmd {
        run_handoff(cmd, pid, &opts.to, opts.timeout)?;
        handoff_ms = at.elapsed().as_secs_f64() * 1e3;
        debug!(handoff_ms, "handoff command done");
    }
    // A destination already gone never got the Commit: thaw safely.
    link.check_incoming()?;
    Ok(Readied {
        transfer_ms,
        restore_ms,
        at,
        handoff_ms,
        zero_pages: streamed.zero_pages,
    })
}

/// Before the commit: tell the destination why this side gives up (its
/// own refusal if it sent one) and thaw the program here, untouched.
fn settle(frozen: Frozen, link: &mut Link, pid: i32, what: String) -> EngineError {
    let what = match link.refusal() {
        Some(reason) if !what.contains(&reason) => format!("the destination refused: {reason}"),
        _ => what,
    };
    link.abort(&what);
    let what = match frozen.thaw() {
        Ok(_) => what,
        Err(e) => format!("{what}; and resuming it failed: {e}"),
    };
    EngineError::Migration { pid, what }
}

/// Commit: write the record `tern resolve` settles from (should this tern
/// not learn the outcome, or die, once the Commit has left), send
/// `Commit`, and learn that the program runs there: its pids there. If the
/// link fails meanwhile, ask the destination; a program it discarded
/// resumes here, an unknown outcome leaves it stopped (`leave_stopped`).
fn commit(
    frozen: Frozen,
    link: &mut Link,
    opts: &MigrateOptions,
    pid: i32,
    session: u64,
    owes_pages: bool,
) -> Result<(Frozen, (i32, i32))> {
    let (lock_table, repaired_fds) = frozen.held_connections();
    let record = pending::Record {
        pid,
        start: tern_sys::proc::start_time(pid).unwrap_or(0),
        to: opts.to.clone(),
        session,
        lock_table,
        repaired_fds,
        others: frozen.held_others(),
    };
    if let Err(e) = record.write() {
        let what = format!(
            "cannot write the pending-migration record {}: {e}",
            pending::Record::path_of(pid).display()
        );
        return Err(settle(frozen, link, pid, what));
    }
    // From here this copy never runs again. A SIGSTOP queued now is taken
    // the moment it is let go, so even if this tern dies (the kernel then
    // detaches the program) it cannot run twice.
    frozen.stop_when_released();
    let commit_sent = link
        .submit(Job::Message(Message::Commit))
        .and_then(|()| link.wait_sent().map(|_| ()));
    let running = match commit_sent {
        // The Commit may or may not have left: do not risk two copies.
        Err(what) => Err(what),
        Ok(()) => match link.wait_input("Running") {
            Ok(SourceInput::Running { pid, ns_pid, .. }) => Ok((pid, ns_pid)),
            Ok(other) => Err(format!("tern bug: {other:?} instead of Running")),
            Err(what) => Err(what),
        },
    };
    let what = match running {
        Ok(ids) => return Ok((frozen, ids)),
        Err(what) => what,
    };
    warn!(
        pid,
        "link lost after the commit ({what}); asking the destination"
    );
    match ask_until_settled(opts, session) {
        Some(SessionOutcome::Running { .. }) if owes_pages => {
            // It ran there, but without the link it cannot get the pages
            // it still lacks: the program cannot go on there.
            let owed = frozen.deferred().len();
            Err(lost_in_post_copy(frozen, pid, &what, owed))
        }
        Some(SessionOutcome::Running { pid: there, ns_pid }) => Ok((frozen, (there, ns_pid))),
        Some(_) => {
            // Discarded there: this copy is the only one.
            frozen.cancel_stop_when_released();
            pending::Record::remove(pid);
            let what = format!(
                "after the commit was sent: {what}; {} then said it had discarded its copy",
                opts.to
            );
            let what = match frozen.thaw() {
                Ok(_) => what,
                Err(e) => format!("{what}; and resuming it failed: {e}"),
            };
            Err(EngineError::Migration { pid, what })
        }
        None => Err(leave_stopped(frozen, pid, &opts.to, &what)),
    }
}

/// The rounds on their way to the destination.
#[derive(Default)]
struct Shipped {
    rounds: Vec<WireRound>,
    /// Handed to the sender task, not yet reported sent.
    pending: usize,
    /// Pages go compressed (from some round on).
    compressing: bool,
}

/// Everything before the freeze: the pre-copy rounds shipped as they are
/// taken (live), or nothing (simple); then the program frozen with its
/// final image. Any failure leaves it running and tells the destination.
/// `turn`: this migration's turn to be frozen, if evacuating.
fn run_until_frozen<'t>(
    pid: i32,
    opts: &'t MigrateOptions,
    stage_dir: &Path,
    link: &mut Link,
    shipped: &mut Shipped,
    turn: &mut Option<std::sync::MutexGuard<'t, ()>>,
    on_round: &mut dyn FnMut(&RoundReport),
) -> Result<Frozen> {
    let fail = |what: String| EngineError::Migration { pid, what };
    let mut precopy_opts = opts.precopy.clone();
    precopy_opts.dump.zstd_level = match opts.compress {
        Compression::Zstd(l) => Some(l),
        Compression::Off | Compression::Auto => None,
    };
    shipped.compressing = precopy_opts.dump.zstd_level.is_some();
    match opts.mode {
        Mode::Simple => {
            precopy_opts.dump.defer_private_anon = opts.stream_pages;
            *turn = opts.freeze_turns.as_ref().map(|t| t.take().0);
            precopy::freeze_whole(pid, stage_dir, &precopy_opts.dump)
        }
        Mode::Live => live_rounds(
            pid,
            opts,
            &precopy_opts,
            stage_dir,
            link,
            shipped,
            turn,
            on_round,
        ),
    }
    .map_err(|e| {
        // A send that failed because the destination refused and hung up:
        // its reason says more than "broken pipe".
        let e = match (&e, link.refusal()) {
            (EngineError::Migration { .. }, Some(reason)) => {
                fail(format!("the destination refused: {reason}"))
            }
            _ => e,
        };
        link.abort("the source failed before the final round");
        e
    })
}

/// Pre-copy: rounds read while the program runs and shipped as they are
/// written, until the policy stops; then the freeze (with the turn to
/// freeze, when migrations run at once). Any failure leaves the program
/// running.
#[allow(clippy::too_many_arguments)]
fn live_rounds<'t>(
    pid: i32,
    opts: &'t MigrateOptions,
    precopy_opts: &PrecopyOptions,
    stage_dir: &Path,
    link: &mut Link,
    shipped: &mut Shipped,
    turn: &mut Option<std::sync::MutexGuard<'t, ()>>,
    on_round: &mut dyn FnMut(&RoundReport),
) -> Result<Frozen> {
    let fail = |what: String| EngineError::Migration { pid, what };
    let mut pc = Precopy::start(pid, stage_dir, precopy_opts)?;
    let mut forced = 0;
    loop {
        link.check_incoming().map_err(fail)?;
        if let (None, Some(t)) = (&*turn, &opts.freeze_turns) {
            t.wait_quiet();
        }
        let r = match pc.next_round()? {
            Some(r) => r,
            None => {
                // The policy would freeze now; but rounds still on the wire
                // or not yet applied at the destination would land in the
                // frozen phase. Wait for them (the program runs), then take
                // what was written meanwhile in one more round. Likewise
                // for the turn to freeze, when migrations run at once.
                let mut waited = false;
                if let (None, Some(t)) = (&*turn, &opts.freeze_turns) {
                    let (taken, long) = t.take();
                    *turn = Some(taken);
                    waited = long;
                }
                let outstanding =
                    shipped.pending > 0 || link.applied() < shipped.rounds.len() as u32;
                if !outstanding && !waited {
                    break;
                }
                drain(link, &mut shipped.rounds, &mut shipped.pending).map_err(fail)?;
                // Post-copy sends what was written meanwhile after the
                // resume; another round would only race the writer again.
                if forced >= MAX_FORCED_ROUNDS || pc.post_copy_chosen() {
                    break;
                }
                forced += 1;
                pc.force_round()?
            }
        };
        on_round(&r);
        ship_round(link, shipped, &mut pc, &r).map_err(fail)?;
        if opts.compress == Compression::Auto && !shipped.compressing {
            // A round that took the link longer than zstd would have
            // taken: compress from now on.
            if let Some(r) = shipped.rounds.iter().find(|r| r.send_ms > 20.0) {
                let rate = r.wire_bytes as f64 / r.send_ms;
                if rate < ZSTD_PAYS_BELOW {
                    info!(
                        mb_per_s = rate / 1e3,
                        "slow link: compressing rounds with zstd 1"
                    );
                    pc.set_zstd_level(Some(1));
                    shipped.compressing = true;
                }
            }
        }
    }
    drain(link, &mut shipped.rounds, &mut shipped.pending).map_err(fail)?;
    if pc.post_copy_chosen() {
        pc.freeze_deferring()
    } else {
        pc.freeze()
    }
}

/// Hand round `r` to the sender task, and take note of what finished
/// sending meanwhile (the link's rate goes to the policy).
fn ship_round(
    link: &mut Link,
    shipped: &mut Shipped,
    pc: &mut Precopy,
    r: &RoundReport,
) -> std::result::Result<(), String> {
    shipped.rounds.push(WireRound {
        round: r.round,
        dirty_pages: r.dirty_pages,
        pages: r.stored_pages,
        bytes: r.stored_bytes,
        hash: r.hash,
        copy_ms: r.ms,
        send_ms: 0.0,
        wire_bytes: 0,
    });
    link.submit(Job::Round {
        round: r.round,
        dir: r.dir.clone(),
        final_round: false,
        pages_follow: false,
        remove: true,
    })?;
    shipped.pending += 1;
    while let Ok(s) = link.sent.try_recv() {
        shipped.pending -= 1;
        if let Some(rate) = link_rate(&s) {
            pc.observe_link(rate);
        }
        note_sent(&mut shipped.rounds, s)?;
    }
    Ok(())
}

/// After the link failed between `Commit` and `Running`: ask the
/// destination (a new connection each time) until it knows, for at most
/// `settle_timeout`. `None`: it could not tell (or not be reached).
fn ask_until_settled(opts: &MigrateOptions, session: u64) -> Option<SessionOutcome> {
    let deadline = Instant::now() + opts.settle_timeout;
    loop {
        let timeout = opts.timeout.min(Duration::from_secs(2));
        match ask_outcome(&opts.to, &opts.key, session, timeout) {
            Ok(o @ (SessionOutcome::Running { .. } | SessionOutcome::Discarded)) => {
                info!(?o, "the destination settled the migration");
                return Some(o);
            }
            Ok(SessionOutcome::Unknown) => {
                warn!("the destination does not know this migration");
                return None;
            }
            Ok(SessionOutcome::Undecided) => debug!("the destination has not decided yet"),
            Err(e) => debug!("asking the destination: {e}"),
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Run the handoff command; `Err` says why it failed. It sees TERN_PID
/// (the program here) and TERN_DESTINATION.
fn run_handoff(
    cmd: &str,
    pid: i32,
    to: &str,
    timeout: Duration,
) -> std::result::Result<(), String> {
    let mut child = std::process::Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .env("TERN_PID", pid.to_string())
        .env("TERN_DESTINATION", to)
        .stdin(std::process::Stdio::null())
        .spawn()
        .map_err(|e| format!("the handoff command could not start: {e}"))?;
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) if status.success() => return Ok(()),
            Ok(Some(status)) => return Err(format!("the handoff command failed ({status})")),
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "the handoff command did not finish within {} ms",
                    timeout.as_millis()
                ));
            }
            Ok(None) => std::thread::sleep(Duration::from_micros(500)),
            Err(e) => return Err(format!("waiting for the handoff command: {e}")),
        }
    }
}

/// Rounds after the policy's stop, to catch writes made while earlier
/// rounds were still in flight.
const MAX_FORCED_ROUNDS: u32 = 3;

/// Wait until every round handed to the sender is on the wire and applied
/// by the destination.
fn drain(
    link: &mut Link,
    rounds: &mut [WireRound],
    pending_sends: &mut usize,
) -> std::result::Result<(), String> {
    while *pending_sends > 0 {
        *pending_sends -= 1;
        note_sent(rounds, link.wait_sent()?)?;
    }
    let want = rounds.len() as u32;
    while link.applied() < want {
        link.wait_input("RoundApplied")?;
    }
    Ok(())
}

fn note_sent(rounds: &mut [WireRound], s: Sent) -> std::result::Result<(), String> {
    match s {
        Sent::Round {
            round,
            ms,
            wire_bytes,
        } => {
            if let Some(r) = rounds.iter_mut().find(|r| r.round == round) {
                r.send_ms = ms;
                r.wire_bytes = wire_bytes;
            }
            Ok(())
        }
        Sent::Message => Ok(()),
        Sent::Failed(e) => Err(format!("sending to the destination: {e}")),
    }
}

/// The rate a round went over the link at (bytes/ms), if it took long
/// enough to tell.
fn link_rate(s: &Sent) -> Option<f64> {
    match s {
        Sent::Round { ms, wire_bytes, .. } if *ms > 20.0 => Some(*wire_bytes as f64 / ms),
        _ => None,
    }
}

/// The link failed during post-copy: the destination's copy runs without
/// pages only this copy has, and this one is behind it. Neither can go on;
/// this one is ended (the destination ends its own).
fn lost_in_post_copy(frozen: Frozen, pid: i32, what: &str, owed: usize) -> EngineError {
    warn!(pid, "post-copy failed: {what}");
    let ended = match frozen.kill() {
        Ok(_) => "ended here too".to_string(),
        Err(e) => format!("could not be ended here ({e})"),
    };
    EngineError::PostCopyLost {
        pid,
        what: format!(
            "{what}; {owed} page(s) were owed to the destination when its copy resumed, so that copy cannot go on, and this one, which is behind it, was {ended}"
        ),
    }
}

fn leave_stopped(frozen: Frozen, pid: i32, to: &str, what: &str) -> EngineError {
    warn!(pid, "commit outcome unknown; leaving the program stopped");
    let kept = frozen.leave_stopped();
    let state = match kept {
        Ok(_) => "left stopped (SIGSTOP) here".to_string(),
        Err(e) => format!("could not be left stopped cleanly ({e})"),
    };
    EngineError::CommitUnknown {
        pid,
        what: format!(
            "after the commit was sent to {to}: {what}. {to} could not say whether it resumed the program, so it is {state}; `tern resolve --key KEY {pid}` asks {to} again and ends or resumes it (record: {})",
            pending::Record::path_of(pid).display()
        ),
    }
}
