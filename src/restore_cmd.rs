//! `tern restore`: recreate a process (or a tree, or a pre-copy chain as a
//! warm standby) from an image; returns once it runs.

use crate::fdspec;
use anyhow::{Context, Result};
use std::path::PathBuf;
use std::time::Duration;

#[derive(clap::Args, Debug)]
pub(crate) struct RestoreArgs {
    #[arg(long, short = 'D')]
    pub images: PathBuf,
    /// Write the restored process's pid here.
    #[arg(long)]
    pub pidfile: Option<PathBuf>,
    /// Give it a new pid instead of its original one. Risky: glibc caches
    /// the thread id, so raise(), pthread_kill() and robust futexes may
    /// act on the wrong id.
    #[arg(long)]
    pub new_pid: bool,
    /// How long to wait for the original pid to be free, in ms (with
    /// `--pid-ns never`).
    #[arg(long, default_value_t = 5000)]
    pub pid_wait_ms: u64,
    /// Restore into a fresh PID namespace: `auto` when the image's ids
    /// are taken here, `always`, or `never` (wait for them to be free).
    #[arg(long, default_value = "auto")]
    pub pid_ns: tern_restorer::PidNsMode,
    /// Rebuild a pre-copy chain round by round as `tern serve` does (a
    /// warm standby), instead of all at once.
    #[arg(long)]
    pub standby: bool,
    /// Restore a shell job into this terminal: the program joins this
    /// tern's session and process group (its fds 0-2 that were a
    /// terminal become this tern's), and tern stays in the foreground
    /// until it exits, then exits with its status (128+N if killed by
    /// signal N), as if the shell had started it.
    #[arg(long)]
    pub shell_job: bool,
    /// Put this tern's fd N in place of the image's fd that was named
    /// NAME at dump (`--external`). Repeatable.
    #[arg(long, value_name = "fd[N]:NAME")]
    pub inherit_fd: Vec<fdspec::InheritFd>,
    /// The image's cgroups: `soft` joins them, making the ones missing
    /// here with the image's settings (limits, cpuset, device list);
    /// `ignore` leaves the program in this tern's cgroups.
    #[arg(long, default_value = "soft", value_name = "MODE")]
    pub manage_cgroups: tern_restorer::CgroupMode,
}

pub(crate) fn run(a: RestoreArgs) -> Result<()> {
    let RestoreArgs {
        images,
        pidfile,
        new_pid,
        pid_wait_ms,
        pid_ns,
        standby,
        shell_job,
        inherit_fd,
        manage_cgroups,
    } = a;
    let opts = tern_restorer::RestoreOptions {
        new_pid,
        pid_wait: Duration::from_millis(pid_wait_ms),
        pid_ns,
        shell_job,
        inherit_fds: fdspec::inherit_fds(&inherit_fd)?,
        cgroups: manage_cgroups,
    };
    let mut processes = 1;
    let r = if standby {
        tern_restorer::restore_via_standby(&images, &opts)
    } else if tern_restorer::tree::is_tree(&images) {
        tern_restorer::tree::restore_tree(&images, &opts).map(|(r, n)| {
            processes = n;
            r
        })
    } else {
        tern_restorer::restore(&images, &opts)
    }
    .with_context(|| format!("restore from {} failed", images.display()))?;
    if let Some(p) = pidfile {
        std::fs::write(&p, format!("{}\n", r.pid))
            .with_context(|| format!("write pidfile {}", p.display()))?;
    }
    let ns = match r.pid_ns_init {
        Some(init) => format!(
            " in a fresh PID namespace (it sees itself as pid {}; namespace init {init})",
            r.ns_pid
        ),
        // The init of a PID namespace of its own, as it was.
        None if r.ns_pid != r.pid => {
            format!(" as pid {} of a new PID namespace, as it was", r.ns_pid)
        }
        None => String::new(),
    };
    let tree = if processes > 1 {
        format!(" with its {} descendants", processes - 1)
    } else {
        String::new()
    };
    eprintln!(
        "restored process {}{tree}{ns} from {} in {:.1} ms ({} MiB of memory)",
        r.pid,
        images.display(),
        r.restore_ms,
        r.pages_bytes >> 20
    );
    if shell_job {
        let code = crate::wait_shell_job(r.pid)?;
        std::process::exit(code);
    }
    Ok(())
}
