//! `tern keygen`, `tern serve`, `tern migrate`: argument handling and what
//! is printed; the work is in `tern_engine::migrate` (source) and
//! `tern_restorer::serve` (destination).

use anyhow::{Context, Result};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tern_engine::migrate::{MigrationReport, Mode};
use tern_wire::net::Key;

pub fn keygen(out: &Path) -> Result<()> {
    let key = Key::generate()?;
    key.write_new(out)?;
    eprintln!(
        "wrote a new credential to {} (mode 600): copy it to the source and the destination",
        out.display()
    );
    Ok(())
}

/// Staging directory: memory when there is a /dev/shm.
pub(crate) fn default_work_dir(given: Option<PathBuf>) -> PathBuf {
    given.unwrap_or_else(|| {
        let shm = PathBuf::from("/dev/shm");
        if shm.is_dir() {
            shm
        } else {
            std::env::temp_dir()
        }
    })
}

#[derive(clap::Args)]
pub struct ServeArgs {
    /// Address to listen on, e.g. 10.0.0.2:7878 (only this address).
    #[arg(long)]
    pub listen: String,
    /// Credential file from `tern keygen` (must not be readable by others).
    #[arg(long)]
    pub key: PathBuf,
    /// Where incoming rounds are staged: default /dev/shm when present.
    #[arg(long)]
    pub work_dir: Option<PathBuf>,
    /// Migrations received at once; more are refused.
    #[arg(long, default_value_t = 8)]
    pub max_sessions: usize,
    /// How long a peer may stay silent, in ms.
    #[arg(long, default_value_t = 30_000)]
    pub timeout_ms: u64,
    /// Exit after the first migration ends.
    #[arg(long)]
    pub once: bool,
    /// The daemon's own oom_score_adj (-1000..1000): below that of the
    /// programs it is rebuilding (1000 until they run), so that running
    /// out of memory costs one migration rather than the daemon.
    #[arg(long, default_value_t = -500, allow_negative_numbers = true)]
    pub oom_score_adj: i32,
    /// Restore into a fresh PID namespace: auto (when the program's ids
    /// are taken here), always, or never.
    #[arg(long, default_value = "auto")]
    pub pid_ns: tern_restorer::PidNsMode,
    /// Write "HOST:PORT" here once listening.
    #[arg(long)]
    pub ready_file: Option<PathBuf>,
    /// Put this daemon's fd N in place of a migrated program's fd that
    /// was named NAME at the source (`tern migrate --external`): e.g. a
    /// pipe to this machine's supervisor. Repeatable.
    #[arg(long, value_name = "fd[N]:NAME")]
    pub inherit_fd: Vec<crate::fdspec::InheritFd>,
    /// The migrated programs' cgroups: `soft` joins them, making the ones
    /// missing here with the source's settings; `ignore` leaves them in
    /// this daemon's cgroups.
    #[arg(long, default_value = "soft", value_name = "MODE")]
    pub manage_cgroups: tern_restorer::CgroupMode,
}

pub fn serve(a: ServeArgs) -> Result<()> {
    let key = Key::load(&a.key)?;
    let opts = tern_restorer::serve::ServeOptions {
        listen: a.listen,
        key,
        work_dir: default_work_dir(a.work_dir),
        restore: tern_restorer::RestoreOptions {
            pid_ns: a.pid_ns,
            inherit_fds: crate::fdspec::inherit_fds(&a.inherit_fd)?,
            cgroups: a.manage_cgroups,
            ..Default::default()
        },
        max_sessions: a.max_sessions,
        timeout: Duration::from_millis(a.timeout_ms),
        once: a.once,
        oom_score_adj: a.oom_score_adj,
    };
    let ready = a.ready_file;
    tern_restorer::serve::serve(opts, |addr| {
        eprintln!("tern serve: listening on {addr}");
        if let Some(p) = &ready {
            // Written whole then renamed, so a reader never sees half of it.
            let tmp = p.with_extension("tmp");
            if std::fs::write(&tmp, format!("{addr}\n")).is_ok() {
                let _ = std::fs::rename(&tmp, p);
            }
        }
    })?;
    Ok(())
}

pub struct MigrateArgs {
    pub pid: i32,
    pub to: String,
    pub key: PathBuf,
    pub mode: Mode,
    pub compress: tern_engine::migrate::Compression,
    pub precopy: tern_engine::precopy::PrecopyOptions,
    pub work_dir: Option<PathBuf>,
    pub timeout: Duration,
    pub report: Option<PathBuf>,
    pub handoff_cmd: Option<String>,
    pub settle_timeout: Duration,
    pub stream_pages: bool,
}

pub fn migrate(a: MigrateArgs) -> Result<()> {
    if a.mode == Mode::Simple && a.precopy.policy.may_post_copy() {
        anyhow::bail!(
            "--policy {} needs --mode live: post-copy follows pre-copy rounds",
            a.precopy.policy
        );
    }
    let key = Key::load(&a.key)?;
    let opts = tern_engine::migrate::MigrateOptions {
        to: a.to.clone(),
        key,
        mode: a.mode,
        compress: a.compress,
        precopy: a.precopy,
        work_dir: default_work_dir(a.work_dir),
        timeout: a.timeout,
        handoff_cmd: a.handoff_cmd,
        settle_timeout: a.settle_timeout,
        freeze_turns: None,
        stream_pages: a.stream_pages,
    };
    eprintln!("migrating process {} to {}", a.pid, a.to);
    let mut on_round = |r: &tern_engine::precopy::RoundReport| {
        if r.round == 0 {
            eprintln!("  round  dirty_pages  sent_pages   sent_KiB    copy_ms  hash");
        }
        eprintln!(
            "  {:>5}  {:>11}  {:>10}  {:>9}  {:>9.1}  {:016x}",
            r.round,
            r.dirty_pages,
            r.stored_pages,
            r.stored_bytes >> 10,
            r.ms,
            r.hash
        );
    };
    let report = tern_engine::migrate::migrate(a.pid, &opts, &mut on_round)?;
    print_summary(&report);
    if let Some(path) = &a.report {
        let json = serde_json::to_string_pretty(&report_json(&report))?;
        std::fs::write(path, json + "\n")
            .with_context(|| format!("write report {}", path.display()))?;
    }
    Ok(())
}

fn print_summary(r: &MigrationReport) {
    eprintln!(
        "  stopped: {}; final delta {} pages ({} KiB)",
        r.stop_reason,
        r.final_pages,
        r.final_bytes >> 10
    );
    eprintln!(
        "migrated process {} -> pid {} on the destination (it sees itself as {}): downtime {:.1} ms \
         (final dump {:.1}, transfer {:.1}, restore {:.1}, handoff {:.1}, commit {:.1}); {} rounds, {} MiB on the wire, {:.0} ms in all",
        r.pid,
        r.restored_pid,
        r.restored_ns_pid,
        r.downtime_ms,
        r.final_dump_ms,
        r.transfer_ms,
        r.restore_ms,
        r.handoff_ms,
        r.commit_ms,
        r.rounds.len(),
        r.bytes_on_wire >> 20,
        r.total_ms
    );
    if r.streamed_pages > 0 {
        eprintln!(
            "  streamed {} pages ({} MiB, {} of them zeros, not sent) after the image, placed as they came, before the destination was ready",
            r.streamed_pages,
            (r.streamed_pages * tern_sys::page_size()) >> 20,
            r.streamed_zero_pages
        );
    }
    if let Some(pc) = &r.post_copy {
        eprintln!(
            "  post-copy: {} pages owed, {} sent ({} wanted first, in {} requests), {} placed; {:.0} ms from resume to the last page, then the source copy ended",
            pc.pages, pc.pages_sent, pc.wanted_pages, pc.wants, pc.arrived.pages, pc.ms
        );
        let t = &pc.arrived;
        eprintln!(
            "  meanwhile the program waited on {} touches, got {} zero pages, forked {}, moved {}, dropped {} and unmapped {} mappings",
            t.faults_waited, t.zero_filled, t.forks, t.remaps, t.removes, t.unmaps
        );
    }
}

pub fn report_json(r: &MigrationReport) -> serde_json::Value {
    serde_json::json!({
        "pid": r.pid,
        "restored_pid": r.restored_pid,
        "restored_ns_pid": r.restored_ns_pid,
        "mode": match r.mode { Mode::Live => "live", Mode::Simple => "simple" },
        "compressed": r.compressed,
        "tracker": r.tracker,
        "policy": r.policy,
        "stop_reason": r.stop_reason,
        "downtime_ms": r.downtime_ms,
        "downtime_measured_as": "source clock: freeze of the program -> the destination's Running message (sent right after it resumed the program), so it includes one network delay",
        "breakdown_ms": {
            "final_dump": r.final_dump_ms,
            "transfer": r.transfer_ms,
            "restore": r.restore_ms,
            "handoff": r.handoff_ms,
            "commit": r.commit_ms,
        },
        "rounds": r.rounds.iter().map(|x| serde_json::json!({
            "round": x.round,
            "dirty_pages": x.dirty_pages,
            "pages": x.pages,
            "bytes": x.bytes,
            "ms": x.copy_ms,
            "send_ms": x.send_ms,
            "wire_bytes": x.wire_bytes,
            "hash": format!("{:016x}", x.hash),
        })).collect::<Vec<_>>(),
        "final_pages": r.final_pages,
        "final_bytes": r.final_bytes,
        "streamed_pages": r.streamed_pages,
        "streamed_zero_pages": r.streamed_zero_pages,
        "post_copy": r.post_copy.as_ref().map(|pc| serde_json::json!({
            "pages": pc.pages,
            "pages_sent": pc.pages_sent,
            "wants": pc.wants,
            "wanted_pages": pc.wanted_pages,
            "pages_placed": pc.arrived.pages,
            "faults_waited": pc.arrived.faults_waited,
            "zero_filled": pc.arrived.zero_filled,
            "forks": pc.arrived.forks,
            "remaps": pc.arrived.remaps,
            "removes": pc.arrived.removes,
            "unmaps": pc.arrived.unmaps,
            "ms": pc.ms,
        })),
        "bytes_on_wire": r.bytes_on_wire,
        "total_ms": r.total_ms,
    })
}

/// `tern resolve`: settle migrations left pending (the link or tern failed
/// after the commit was sent; the program is stopped here): ask each
/// destination what became of the program, then end this copy (it runs
/// there) or resume it (discarded there).
pub fn resolve(key: &Path, pids: &[i32], timeout: Duration) -> Result<()> {
    use tern_engine::pending::{self, Record, Settled};
    let key = Key::load(key)?;
    let pids = if pids.is_empty() {
        Record::list().with_context(|| format!("list {}", pending::DIR))?
    } else {
        pids.to_vec()
    };
    if pids.is_empty() {
        eprintln!("no pending migrations ({} is empty)", pending::DIR);
        return Ok(());
    }
    let mut unsettled = Vec::new();
    for pid in pids {
        let record = Record::load(pid)?;
        let outcome = tern_engine::migrate::ask_outcome(&record.to, &key, record.session, timeout);
        let settled = match outcome {
            Ok(o) => tern_engine::pending::settle(&record, o)?,
            Err(e) => {
                eprintln!("process {pid}: cannot ask {}: {e}", record.to);
                None
            }
        };
        match settled {
            Some(Settled::RunsThere { pid: there, ns_pid }) => println!(
                "process {pid}: runs on {} as pid {there} (it sees itself as {ns_pid}); the copy here was ended",
                record.to
            ),
            Some(Settled::ResumedHere) => println!(
                "process {pid}: {} discarded its copy; resumed here",
                record.to
            ),
            Some(Settled::Gone) => {
                println!("process {pid}: no longer here; record removed")
            }
            None => {
                eprintln!(
                    "process {pid}: {} cannot tell yet; left stopped (try again)",
                    record.to
                );
                unsettled.push(pid);
            }
        }
    }
    if unsettled.is_empty() {
        Ok(())
    } else {
        anyhow::bail!(
            "{} migration(s) still pending: {unsettled:?}",
            unsettled.len()
        )
    }
}
