//! `tern evacuate`: move many programs off this machine at once, each one
//! a migration of its own (its own session to the destination's `tern
//! serve`, so TCP shares the link between them). Their pre-copy rounds run
//! side by side; their frozen phases take turns (`FreezeTurns`), so that
//! no two programs are stopped at the same time.

use anyhow::{bail, Context, Result};
use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tern_engine::migrate::{FreezeTurns, MigrationReport};

#[derive(clap::Args)]
pub struct EvacuateArgs {
    /// The destination's `tern serve`, HOST:PORT.
    #[arg(long)]
    pub to: String,
    /// Credential file from `tern keygen`.
    #[arg(long)]
    pub key: PathBuf,
    /// Programs to move, by pid (comma-separated, or the option repeated).
    #[arg(long, value_delimiter = ',')]
    pub pids: Vec<i32>,
    /// Every process of this user (a name or a uid), except tern and the
    /// processes it runs under.
    #[arg(long)]
    pub all_of_user: Option<String>,
    /// Every process of this cgroup (v2: a directory with `cgroup.procs`,
    /// absolute or under /sys/fs/cgroup).
    #[arg(long)]
    pub cgroup: Option<PathBuf>,
    /// live (pre-copy) or simple (stop and copy; takes trees whole).
    #[arg(long, default_value = "live")]
    pub mode: crate::MigrateMode,
    #[command(flatten)]
    pub rounds: crate::RoundArgs,
    /// Migrations in flight at once (the destination's --max-sessions
    /// caps what it takes). On a 2-core machine moving 16 busy programs,
    /// 2 gave the shortest evacuation, 1 the shortest downtimes.
    #[arg(long, default_value_t = 2)]
    pub parallel: usize,
    /// Where rounds are staged before sending: default /dev/shm.
    #[arg(long)]
    pub work_dir: Option<PathBuf>,
    /// How long to wait for each answer of the destination, in ms.
    #[arg(long, default_value_t = 30_000)]
    pub timeout_ms: u64,
    /// Write the evacuation's report (JSON) here.
    #[arg(long)]
    pub report: Option<PathBuf>,
}

pub fn evacuate(a: EvacuateArgs) -> Result<()> {
    let pids = select(&a)?;
    if pids.is_empty() {
        bail!("no process to evacuate: give --pids, --all-of-user or --cgroup");
    }
    let key = tern_wire::net::Key::load(&a.key)?;
    let turns = Arc::new(FreezeTurns::default());
    let opts = tern_engine::migrate::MigrateOptions {
        to: a.to.clone(),
        key,
        mode: a.mode.mode(),
        compress: tern_engine::migrate::Compression::Auto,
        precopy: a
            .rounds
            .precopy_options(crate::migration_dump_options(false, Default::default())),
        work_dir: crate::migrate::default_work_dir(a.work_dir.clone()),
        timeout: Duration::from_millis(a.timeout_ms),
        handoff_cmd: None,
        settle_timeout: Duration::from_secs(60),
        freeze_turns: Some(turns),
        stream_pages: true,
    };
    eprintln!(
        "evacuating {} program(s) to {}, {} at a time: {pids:?}",
        pids.len(),
        a.to,
        a.parallel.max(1)
    );
    let t0 = Instant::now();
    let results = run_all(&pids, &opts, a.parallel.max(1));
    let wall_ms = t0.elapsed().as_secs_f64() * 1e3;
    let moved = results.iter().filter(|(_, r)| r.is_ok()).count();
    for (pid, r) in &results {
        match r {
            Ok(m) => eprintln!(
                "  {pid}: moved (pid {} there), downtime {:.1} ms, frozen {:.1}..{:.1} ms, {} rounds, {} MiB",
                m.restored_pid,
                m.downtime_ms,
                since(t0, m.frozen_at),
                since(t0, m.running_at),
                m.rounds.len(),
                m.bytes_on_wire >> 20
            ),
            Err(e) => eprintln!("  {pid}: NOT moved, it runs on here: {e}"),
        }
    }
    let bytes: u64 = results
        .iter()
        .filter_map(|(_, r)| r.as_ref().ok())
        .map(|m| m.bytes_on_wire)
        .sum();
    eprintln!(
        "evacuated {moved} of {} program(s) in {wall_ms:.0} ms ({} MiB on the wire)",
        results.len(),
        bytes >> 20
    );
    if let Some(path) = &a.report {
        let json = serde_json::json!({
            "to": a.to,
            "wall_ms": wall_ms,
            "moved": moved,
            "bytes_on_wire": bytes,
            "programs": results.iter().map(|(pid, r)| match r {
                Ok(m) => {
                    let mut j = crate::migrate::report_json(m);
                    j["frozen_from_ms"] = since(t0, m.frozen_at).into();
                    j["frozen_to_ms"] = since(t0, m.running_at).into();
                    j
                }
                Err(e) => serde_json::json!({ "pid": pid, "error": e }),
            }).collect::<Vec<_>>(),
        });
        std::fs::write(path, serde_json::to_string_pretty(&json)? + "\n")
            .with_context(|| format!("write report {}", path.display()))?;
    }
    if moved < results.len() {
        bail!(
            "{} of {} program(s) could not be moved",
            results.len() - moved,
            results.len()
        );
    }
    Ok(())
}

fn since(t0: Instant, t: Instant) -> f64 {
    t.saturating_duration_since(t0).as_secs_f64() * 1e3
}

/// Migrate every pid, `parallel` at a time; results in `pids`' order.
fn run_all(
    pids: &[i32],
    opts: &tern_engine::migrate::MigrateOptions,
    parallel: usize,
) -> Vec<(i32, std::result::Result<MigrationReport, String>)> {
    let queue = Mutex::new(pids.iter().copied().collect::<VecDeque<i32>>());
    let done = Mutex::new(Vec::with_capacity(pids.len()));
    std::thread::scope(|s| {
        for _ in 0..parallel.min(pids.len()) {
            s.spawn(|| loop {
                let next = queue.lock().unwrap_or_else(|p| p.into_inner()).pop_front();
                let Some(pid) = next else { break };
                let r = tern_engine::migrate::migrate(pid, opts, &mut |_| {})
                    .map_err(|e| e.to_string());
                done.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push((pid, r));
            });
        }
    });
    let mut done = done.into_inner().unwrap_or_else(|p| p.into_inner());
    done.sort_by_key(|(pid, _)| pids.iter().position(|p| p == pid));
    done
}

/// The pids asked for, without tern itself and what it runs under, and
/// without processes whose ancestor is also asked for (they move with it).
fn select(a: &EvacuateArgs) -> Result<Vec<i32>> {
    let mut pids = a.pids.clone();
    if let Some(user) = &a.all_of_user {
        let uid = match user.parse::<u32>() {
            Ok(u) => u,
            Err(_) => nix::unistd::User::from_name(user)?
                .with_context(|| format!("--all-of-user {user}: no such user"))?
                .uid
                .as_raw(),
        };
        pids.extend(tern_sys::proc::pids_of_user(uid));
    }
    if let Some(cg) = &a.cgroup {
        let dir = if cg.is_absolute() {
            cg.clone()
        } else {
            PathBuf::from("/sys/fs/cgroup").join(cg)
        };
        let procs = dir.join("cgroup.procs");
        let text = std::fs::read_to_string(&procs)
            .with_context(|| format!("--cgroup: read {}", procs.display()))?;
        pids.extend(
            text.split_whitespace()
                .filter_map(|p| p.parse::<i32>().ok()),
        );
    }
    let ours = tern_sys::proc::ancestors(std::process::id() as i32);
    pids.retain(|p| !ours.contains(p));
    pids.sort_unstable();
    pids.dedup();
    let asked = pids.clone();
    pids.retain(|&p| {
        !tern_sys::proc::ancestors(p)
            .iter()
            .skip(1)
            .any(|a| asked.contains(a))
    });
    Ok(pids)
}
