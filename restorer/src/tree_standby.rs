//! The warm standby of a process tree: the destination of a live
//! migration builds every process of the tree while the source still
//! runs, as [`Standby`] does for one process.
//!
//! At the first round the tree's blank puppets are made as a tree restore
//! makes them (the root spawned, each other forked by its parent's puppet,
//! sessions and groups set; each keeps tern's pidfd at
//! [`STANDBY_CHAN`]), then each one's address space is built from its part
//! of the round and each later round applied to it. The final image brings
//! each process's last delta and the rest of its state, with what the
//! processes share (pipes, socketpairs, open descriptions, shared memory)
//! put into each as the tree restore does.
//!
//! The rounds also stay on disk: if the tree changed between rounds (a
//! process forked or exited), the standby is dropped and the final image
//! is rebuilt from the chain instead, in the frozen phase.

use crate::standby::{Standby, STANDBY_CHAN};
use crate::tree::{self, PreparedTree, Shared, Subreaper};
use crate::{RestoreOptions, Result};
use std::path::Path;
use std::time::{Duration, Instant};
use tern_wire as wire;
use tracing::{info, warn};

/// A tree being built at the destination, every process stopped.
#[derive(Debug)]
pub struct TreeStandby {
    /// The processes as the first round listed them, root first.
    procs: Vec<wire::TreeProcess>,
    /// Each one's standby, in the same order.
    members: Vec<Standby>,
    /// Every puppet forked by another (reaped if the standby is dropped).
    forked: Vec<i32>,
    _subreaper: Subreaper,
}

impl TreeStandby {
    /// Start from the first round of a tree (`round0`: its `tree.img`
    /// listing, the root's pre-dump image, one `proc-PID/` for each other).
    pub fn start(round0: &Path, opts: &RestoreOptions) -> Result<TreeStandby> {
        let t = Instant::now();
        let procs = tree::read_listing(round0)?.processes;
        let subreaper = Subreaper::on();
        let mut forked = Vec::new();
        let built = (|| {
            // Threads are only known at the end: the process ids decide
            // whether a fresh PID namespace is needed.
            let pids: Vec<i32> = procs.iter().map(|p| p.pid).collect();
            let inventories = procs
                .iter()
                .enumerate()
                .map(|(k, p)| Ok(crate::standby::load_round(&tree::member_dir(round0, k, p))?.0))
                .collect::<Result<Vec<_>>>()?;
            let root_inventory = &inventories[0];
            let cgroups: Vec<&[wire::Cgroup]> =
                inventories.iter().map(|i| &i.cgroups[..]).collect();
            let (puppets, want) = tree::fork_blank_tree(
                (&procs, &[]),
                &pids,
                opts,
                STANDBY_CHAN,
                &root_inventory.namespaces,
                &cgroups,
                &mut forked,
            )?;
            let mut members = Vec::with_capacity(procs.len());
            for (k, (p, puppet)) in procs.iter().zip(puppets).enumerate() {
                let ns_pid = tree::member_ns_pid(
                    k,
                    p,
                    want,
                    puppet.pid,
                    opts,
                    root_inventory.namespaces.pid.as_ref(),
                );
                let dir = tree::member_dir(round0, k, p);
                members.push(Standby::adopt(puppet, Some(ns_pid), true, &dir, opts)?);
            }
            Ok(members)
        })();
        let members = match built {
            Ok(m) => m,
            Err(e) => {
                reap_forked(&forked);
                return Err(e);
            }
        };
        info!(
            root = procs[0].pid,
            processes = procs.len(),
            ms = t.elapsed().as_secs_f64() * 1e3,
            "tree standby started"
        );
        Ok(TreeStandby {
            procs,
            members,
            forked,
            _subreaper: subreaper,
        })
    }

    /// Pages written into the puppets so far.
    pub fn pages_held(&self) -> u64 {
        self.members.iter().map(Standby::pages_held).sum()
    }

    /// Whether the tree image (or round) in `dir` lists the processes this
    /// standby holds, with the same parents, in the same order.
    pub fn matches(&self, dir: &Path) -> Result<bool> {
        let listing = tree::read_listing(dir)?;
        // Zombies are made by blank puppets: a tree that has some now is
        // rebuilt.
        Ok(listing.zombies.is_empty()
            && listing
                .processes
                .iter()
                .map(|p| (p.pid, p.ppid))
                .eq(self.procs.iter().map(|p| (p.pid, p.ppid))))
    }

    /// Apply a later round of the tree (its listing checked by the caller
    /// with [`matches`](Self::matches)).
    pub fn apply_round(&mut self, dir: &Path) -> Result<u64> {
        for (k, (p, member)) in self.procs.iter().zip(&mut self.members).enumerate() {
            member.apply_round(&tree::member_dir(dir, k, p))?;
        }
        Ok(self.pages_held())
    }

    /// Apply the final image of the tree in `dir` (which
    /// [`matches`](Self::matches) it) and restore everything else in every
    /// process, parents first; every process is then complete and stopped.
    pub fn finish(mut self, dir: &Path, opts: &RestoreOptions) -> Result<PreparedTree> {
        let t0 = Instant::now();
        let listing = tree::read_listing(dir)?;
        let images = listing
            .processes
            .iter()
            .enumerate()
            .map(|(k, p)| tree::load_member(dir, k, p, opts, false))
            .collect::<Result<Vec<_>>>()?;
        let mut shared = Shared::make(&listing, &images)?;
        let mut prepared = Vec::with_capacity(images.len());
        let members = std::mem::take(&mut self.members);
        for (k, (p, member)) in listing.processes.iter().zip(members).enumerate() {
            let imports = shared.imports(&listing, p.pid, &images[k], 0, opts)?;
            let puppet_pid = member.pid();
            let dir = tree::member_dir(dir, k, p);
            prepared.push(member.finish_member(&dir, k == 0, Some(imports))?);
            shared.export(&listing, p.pid, &images[k], puppet_pid)?;
        }
        // Built: nothing to reap (a failure above kills and reaps them).
        self.forked.clear();
        info!(
            root = listing.processes[0].pid,
            processes = prepared.len(),
            ms = t0.elapsed().as_secs_f64() * 1e3,
            "tree standby complete, stopped"
        );
        Ok(PreparedTree::new(prepared, shared.held))
    }
}

impl Drop for TreeStandby {
    fn drop(&mut self) {
        // Children first; each puppet is killed as its standby drops.
        while self.members.pop().is_some() {}
        reap_forked(&self.forked);
    }
}

/// Puppets forked by other puppets come back to tern (a subreaper) once
/// their parent is gone: reap them, so their pids are free again.
fn reap_forked(forked: &[i32]) {
    let left = crate::pidns::reap_within(forked, Duration::from_secs(1));
    if !left.is_empty() {
        warn!(?left, "puppets of a dropped tree standby not reaped");
    }
}

/// The final image of a tree received by a migration into
/// `stage/round-N`, beside its rounds: moved up into `stage`, where its
/// parent paths lead, then built into the tree `standby` when it holds the
/// same processes, else from the chain on disk.
pub fn finish_migrated_tree(
    final_dir: &Path,
    standby: Option<TreeStandby>,
    opts: &RestoreOptions,
    stream: Option<crate::PageStream>,
) -> Result<PreparedTree> {
    let stage = tree::move_up(final_dir)?;
    match standby {
        Some(_) if stream.is_some() => Err(crate::RestoreError::Unsupported(
            "the source streams pages after pre-copy rounds of a tree: only a stop-and-copy streams them".into(),
        )),
        Some(s) if s.matches(&stage)? => s.finish(&stage, opts),
        Some(s) => {
            warn!("the tree changed since the last round: rebuilding it from the rounds");
            drop(s);
            tree::prepare_tree(&stage, opts, None)
        }
        None => tree::prepare_tree(&stage, opts, stream),
    }
}
