//! The puppet that becomes the restored program: made with the image's
//! namespaces (a fresh PID namespace where its ids are taken here), put in
//! its cgroups, its mount table built.

use crate::image::wait_pid_free;
use crate::pidns::PidNamespace;
use crate::puppet::Puppet;
use crate::{CgroupMode, PidNsMode};
use crate::{RestoreError, RestoreOptions, Result, StepContext};
use std::io;
use std::path::Path;
use std::sync::Arc;
use tern_wire as wire;
use tracing::{info, warn};

/// A new puppet for the program `pid` (threads `tids`), in a fresh PID
/// namespace where the options and the ids taken here call for one, in
/// its `cgroups` (before its mount table is built: that would make a
/// cgroup directory it binds without the cgroup's settings). Returns it
/// with its namespace and the pid it will see itself as.
pub(crate) fn spawn_puppet(
    pid: i32,
    tids: &[i32],
    opts: &RestoreOptions,
    keep: Option<(i32, i32)>,
    namespaces: &wire::Namespaces,
    cgroups: &[wire::Cgroup],
) -> Result<(Puppet, Option<i32>)> {
    let ns_flags = tern_state::namespaces::clone_flags(namespaces);
    let (pid, tids, own_ns): (i32, Vec<i32>, bool) = match &namespaces.pid {
        Some(ids) if ids.init => {
            return spawn_pid_namespace_init(pid, opts, keep, namespaces, cgroups, ns_flags);
        }
        // It lived under a reaper of a tern restore: a fresh namespace
        // again, with its ids there.
        Some(ids) => (
            ids.inner(pid),
            tids.iter().map(|&t| ids.inner(t)).collect(),
            true,
        ),
        None => (pid, tids.to_vec(), false),
    };
    let ids_free = || {
        tids.iter()
            .all(|t| !Path::new(&format!("/proc/{t}")).exists())
    };
    let use_ns = !opts.new_pid
        && (own_ns
            || match opts.pid_ns {
                PidNsMode::Always => true,
                PidNsMode::Never => false,
                PidNsMode::Auto => !ids_free(),
            });
    let want = if opts.new_pid {
        None
    } else {
        if !use_ns {
            for &t in &tids {
                wait_pid_free(t, opts.pid_wait)?;
            }
        }
        Some(pid)
    };
    let spawn_err = |e: io::Error| {
        if e.raw_os_error() == Some(libc::EEXIST) {
            RestoreError::PidBusy { pid, waited_ms: 0 }
        } else {
            RestoreError::Step {
                pid,
                what: "create the process (clone3)".into(),
                source: e,
            }
        }
    };
    let namespace = if use_ns {
        Some(Arc::new(PidNamespace::create().map_err(|e| {
            RestoreError::Step {
                pid,
                what: "create a PID namespace (clone3 CLONE_NEWPID)".into(),
                source: e,
            }
        })?))
    } else {
        None
    };
    let mut puppet = match &namespace {
        Some(ns) => ns.enter_for(|| Puppet::spawn_keeping(want, keep, !opts.shell_job, ns_flags)),
        None => Puppet::spawn_keeping(want, keep, !opts.shell_job, ns_flags),
    }
    .map_err(spawn_err)?;
    if let Some(ns) = &namespace {
        info!(
            reaper = ns.reaper,
            host_pid = puppet.pid,
            pid,
            "restoring into a fresh PID namespace (the image's ids are taken here)"
        );
    }
    puppet.namespace = namespace;
    place_in_cgroups(std::slice::from_mut(&mut puppet), &[cgroups], None, opts)?;
    build_mounts(&mut puppet, namespaces)?;
    Ok((puppet, want))
}

/// The puppet of a program that was the init of a PID namespace of its
/// own: pid 1 of a new one (its ids there are free by construction).
pub(crate) fn spawn_pid_namespace_init(
    pid: i32,
    opts: &RestoreOptions,
    keep: Option<(i32, i32)>,
    namespaces: &wire::Namespaces,
    cgroups: &[wire::Cgroup],
    ns_flags: u64,
) -> Result<(Puppet, Option<i32>)> {
    let mut puppet = Puppet::spawn_keeping(None, keep, !opts.shell_job, ns_flags).map_err(|e| {
        RestoreError::Step {
            pid,
            what: "create the process as the init of a new PID namespace (clone3 CLONE_NEWPID)"
                .into(),
            source: e,
        }
    })?;
    puppet.pid_namespace_init = true;
    info!(
        host_pid = puppet.pid,
        pid, "restoring as the init of a new PID namespace, as it was"
    );
    place_in_cgroups(std::slice::from_mut(&mut puppet), &[cgroups], None, opts)?;
    build_mounts(&mut puppet, namespaces)?;
    Ok((puppet, Some(1)))
}

/// Put each of `puppets` (blank, before any memory is filled) into its
/// image's cgroups (`cgroups[k]` for puppet k), making those missing
/// here; the puppets share what was made (with what `made` holds: the
/// rest of their tree's), removed if they die unrun.
pub(crate) fn place_in_cgroups(
    puppets: &mut [Puppet],
    cgroups: &[&[wire::Cgroup]],
    made: Option<Arc<tern_state::cgroups::Made>>,
    opts: &RestoreOptions,
) -> Result<()> {
    if opts.cgroups == CgroupMode::Ignore {
        return Ok(());
    }
    let made = made.unwrap_or_default();
    let mut placed = Ok(());
    for (puppet, c) in puppets.iter_mut().zip(cgroups) {
        puppet.cgroups_made = Some(made.clone());
        if placed.is_ok() {
            placed = tern_state::cgroups::place(puppet.pid, c, &made);
        }
    }
    placed.map_err(from_state)
}

/// A `tern_state` error met while restoring.
pub(crate) fn from_state(e: tern_sys::Error) -> RestoreError {
    match e {
        tern_sys::Error::Sys { pid, what, source } => RestoreError::Step { pid, what, source },
        tern_sys::Error::Unsupported { pid, reason } => {
            RestoreError::Unsupported(format!("process {pid}: {reason}"))
        }
        other => RestoreError::Step {
            pid: 0,
            what: other.to_string(),
            source: io::Error::other("tern-state"),
        },
    }
}

/// The image's mount table, if it had one of its own, built in the
/// puppet's new mount namespace by a thread of ours that joins it; the
/// puppet's root becomes the table's, and the puppet remembers the table.
pub(crate) fn build_mounts(puppet: &mut Puppet, namespaces: &wire::Namespaces) -> Result<()> {
    let Some(table) = &namespaces.mnt else {
        return Ok(());
    };
    let pid = puppet.pid;
    // proc for the program's own PID namespace, if it has one.
    let proc_for = namespaces.pid.is_some().then_some(pid);
    // Made on the machine's file system, seen by the puppet's namespace
    // (a copy of ours), removed once the namespace has pivoted away.
    let staging = tern_state::mounts::needs_staging(table)
        .then(|| std::env::temp_dir().join(format!("tern-root-{pid}")));
    if let Some(dir) = &staging {
        std::fs::create_dir_all(dir).step(pid, || format!("make {}", dir.display()))?;
    }
    let staging_path = staging.as_ref().map(|d| d.to_string_lossy().into_owned());
    let built = tern_sys::mounts::in_mount_namespace_of(pid, namespaces.ipc, || {
        tern_state::mounts::build(table, proc_for, staging_path.as_deref())
    })
    .step(pid, || "build its mount namespace".into());
    if let Some(dir) = &staging {
        if let Err(e) = std::fs::remove_dir(dir) {
            warn!(pid, dir = %dir.display(), "cannot remove the staging directory: {e}");
        }
    }
    built?;
    puppet.mounts = Some(table.clone());
    Ok(())
}
