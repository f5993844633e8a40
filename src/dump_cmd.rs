//! `tern dump`: stop a process (and its tree), write its image, then kill it
//! or let it go on; `--pre-copy` copies its memory in rounds first.

use crate::fdspec;
use anyhow::{Context, Result};
use std::path::PathBuf;

#[derive(clap::Args)]
pub(crate) struct DumpArgs {
    #[arg(long, short = 't')]
    pub pid: i32,
    /// Image directory (created if missing).
    #[arg(long, short = 'D')]
    pub images: PathBuf,
    /// Let the process continue after the dump.
    #[arg(long, short = 'R')]
    pub leave_running: bool,
    /// Take established TCP connections (TCP repair mode; needs nft):
    /// their packets are dropped by an nftables lock from the dump
    /// until `tern restore` lifts it. Without it a program with an
    /// established connection is refused.
    #[arg(long)]
    pub tcp_established: bool,
    /// Page compression: a zstd level (1..19, or -1..-7 for zstd's fast
    /// modes), 0 for none, or "auto": none when the image goes to memory
    /// (tmpfs, where compressing only slows the dump), zstd 1 otherwise.
    #[arg(long, default_value = "auto", allow_negative_numbers = true)]
    pub compress: String,
    /// An earlier image (pre-dump or dump) of this process: store only
    /// pages changed since; `restore` then applies the whole chain.
    /// A relative path is taken relative to --images, as in CRIU.
    #[arg(long)]
    pub parent: Option<PathBuf>,
    /// Live checkpoint: copy memory in rounds while the program runs and
    /// stop it only for the last delta (writes round-N/ increments in
    /// --images; restore applies the chain).
    #[arg(long, conflicts_with = "parent")]
    pub pre_copy: bool,
    /// How to stop the process (and its tree): ptrace (seize each in
    /// turn) or cgroup (freeze all at once in a cgroup of tern's, then
    /// seize; cgroup2 `cgroup.freeze` or the v1 freezer).
    #[arg(long, default_value = "ptrace")]
    pub freezer: tern_engine::dump::Freezer,
    /// An fd shared with a process outside the dump (e.g. a pipe from a
    /// supervisor): not saved, but named NAME (default: what it is,
    /// e.g. pipe:[1234]) for the restore to replace with
    /// --inherit-fd fd[M]:NAME. Repeatable.
    #[arg(long, value_name = "fd[N][:NAME]")]
    pub external: Vec<fdspec::ExternalFd>,
    #[command(flatten)]
    pub rounds: crate::RoundArgs,
}

pub(crate) fn run(a: DumpArgs) -> Result<()> {
    let DumpArgs {
        pid,
        images,
        leave_running,
        tcp_established,
        compress,
        parent,
        pre_copy,
        freezer,
        external,
        rounds,
    } = a;
    let opts = tern_engine::DumpOptions {
        leave_running,
        zstd_level: crate::zstd_level(&compress, &images)?,
        parent,
        delta_table: false,
        tcp_established,
        keep_net_lock: true,
        freezer,
        external: fdspec::external_fds(pid, &external)?,
        defer_private_anon: false,
    };
    if pre_copy
        && freezer == tern_engine::dump::Freezer::Cgroup
        && !tern_engine::tree::has_children(pid).unwrap_or(false)
    {
        // Refused rather than ignored: the pre-copy of one process
        // freezes it with ptrace (a tree's takes the freezer).
        anyhow::bail!("--freezer cgroup is for a plain dump or the pre-copy of a process tree; process {pid} has no children");
    }
    if pre_copy && rounds.policy.may_post_copy() {
        anyhow::bail!(
            "--policy {} ends in post-copy, which needs a destination running the program: use `tern migrate`",
            rounds.policy
        );
    }
    if pre_copy {
        let popts = rounds.precopy_options(opts);
        let r = tern_engine::precopy::precopy_dump(pid, &images, &popts).with_context(|| {
            format!("pre-copy dump of process {pid} failed; it was left running")
        })?;
        eprintln!(
            "pre-copy of process {pid} (tracker {}, policy {}):",
            r.tracker, r.policy
        );
        eprintln!("  round  dirty_pages  stored_pages  stored_KiB       ms  hash");
        for x in &r.rounds {
            eprintln!(
                "  {:>5}  {:>11}  {:>12}  {:>10}  {:>7.1}  {:016x}",
                x.round,
                x.dirty_pages,
                x.stored_pages,
                x.stored_bytes >> 10,
                x.ms,
                x.hash
            );
        }
        let f = &r.final_stats;
        eprintln!(
            "  stopped: {}; final delta {} dirty pages, {} stored; program stopped for {:.1} ms{}",
            r.stop_reason,
            r.final_dirty_pages,
            f.pages_stored,
            f.frozen_ms,
            if leave_running {
                ", left running"
            } else {
                ", then killed"
            }
        );
        return Ok(());
    }
    let cgroup = freezer == tern_engine::dump::Freezer::Cgroup;
    if cgroup || tern_engine::tree::has_children(pid).unwrap_or(false) {
        let t = tern_engine::tree::dump_tree(pid, &images, &opts).with_context(|| {
            format!("dump of the process tree under {pid} failed; it was left running")
        })?;
        let pages: u64 = t.processes.iter().map(|(_, s)| s.pages_stored).sum();
        let bytes: u64 = t.processes.iter().map(|(_, s)| s.pages_bytes).sum();
        eprintln!(
            "dumped the tree of {} processes under {pid} ({}) to {}: {pages} pages saved ({} MiB); stopped for {:.1} ms{}",
            t.processes.len(),
            t.processes
                .iter()
                .map(|(p, _)| p.to_string())
                .collect::<Vec<_>>()
                .join(", "),
            images.display(),
            bytes >> 20,
            t.frozen_ms,
            if leave_running { ", left running" } else { ", then killed" }
        );
        return Ok(());
    }
    let stats = tern_engine::dump(pid, &images, &opts)
        .with_context(|| format!("dump of process {pid} failed; it was left running"))?;
    eprintln!(
        "dumped process {pid} to {}: {} of {} pages saved ({} MiB, {} MiB stored), {} mappings, {} fds; stopped for {:.1} ms{}",
        images.display(),
        stats.pages_stored,
        stats.pages_seen,
        stats.pages_bytes >> 20,
        stats.stored_bytes >> 20,
        stats.vmas,
        stats.fds,
        stats.frozen_ms,
        if leave_running { ", left running" } else { ", then killed" }
    );
    Ok(())
}
