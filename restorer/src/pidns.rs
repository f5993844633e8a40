//! A fresh PID namespace to restore into when the image's ids are taken on
//! this machine (always the case when both ends of a migration are one
//! machine): inside it the program gets back the pid and tids it had, which
//! glibc has cached in its TLS.
//!
//! Its pid 1 is a tiny reaper forked from tern: it adopts the program once
//! tern lets go of it, reaps whatever exits in the namespace, and exits
//! itself when it is the last process there (a pid namespace dies with its
//! pid 1, so it must outlive the program). The puppet is created inside by
//! switching this thread's `pid_for_children` with `setns` around `clone3`.

use std::fs::File;
use std::io;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
pub(crate) use tern_sys::child::reap_within;
use tern_sys::child::{fork_pid_namespace_init, set_pid_ns_for_children, NamespaceInit};
use tracing::warn;

/// The reaper: named in `ps`, looks around every 50 ms, and gives up if no
/// process has appeared within 30 s.
const REAPER: NamespaceInit = NamespaceInit {
    name: b"tern-ns-init\0", // tern_sys::ns::TERN_NS_INIT
    tick: Duration::from_millis(50),
    first_wait_ticks: 600,
};

/// How long dropping a namespace waits for its init to be gone.
const REAPER_EXIT_WAIT: Duration = Duration::from_secs(5);

/// A PID namespace whose init is our reaper; killed with everything in it on
/// drop unless [`PidNamespace::keep`] was called.
///
/// Shared (`Arc`) by every puppet made inside it, each holding it until it
/// has killed and reaped itself. That order is needed, not tidy: a dying
/// init waits in the kernel (`zap_pid_ns_processes`) until every process of
/// its namespace has been reaped, and our puppets are reaped only by us,
/// their tracer: waiting for the init first would wait forever.
#[derive(Debug)]
pub struct PidNamespace {
    /// The reaper's pid as this (the host's) namespace sees it.
    pub reaper: i32,
    ns: File,
    kept: AtomicBool,
}

impl PidNamespace {
    pub fn create() -> io::Result<PidNamespace> {
        let reaper = fork_pid_namespace_init(&REAPER)?;
        let ns = match File::open(format!("/proc/{reaper}/ns/pid")) {
            Ok(f) => f,
            Err(e) => {
                kill_and_reap(reaper);
                return Err(e);
            }
        };
        Ok(PidNamespace {
            reaper,
            ns,
            kept: AtomicBool::new(false),
        })
    }

    /// Run `f` with this thread's new children created inside the namespace.
    pub fn enter_for<T>(&self, f: impl FnOnce() -> io::Result<T>) -> io::Result<T> {
        let ours = File::open("/proc/thread-self/ns/pid_for_children")?;
        set_pid_ns_for_children(self.ns.as_fd())?;
        let out = f();
        // Going back to our own namespace is always allowed.
        if let Err(e) = set_pid_ns_for_children(ours.as_fd()) {
            // Children we create later would land in the namespace: that is
            // a bug in tern, not something to carry on with.
            panic!("cannot switch pid_for_children back to our own namespace: {e}");
        }
        out
    }

    /// The program runs: the namespace lives on with it.
    pub fn keep(&self) -> i32 {
        self.kept.store(true, Ordering::Relaxed);
        self.reaper
    }
}

impl Drop for PidNamespace {
    fn drop(&mut self) {
        if !self.kept.load(Ordering::Relaxed) {
            // Killing pid 1 kills everything in the namespace.
            kill_and_reap(self.reaper);
        }
    }
}

/// Kill our child `pid` (a namespace's init) and reap it, waiting at most
/// [`REAPER_EXIT_WAIT`]: an init whose namespace still holds a process
/// nobody reaps never finishes exiting, and tern must not hang on it.
fn kill_and_reap(pid: i32) {
    let _ = tern_sys::signal(pid, libc::SIGKILL);
    if !reap_within(&[pid], REAPER_EXIT_WAIT).is_empty() {
        warn!(
            pid,
            "a PID namespace's init did not exit within {REAPER_EXIT_WAIT:?} of SIGKILL \
             (a process of its namespace is not reaped); it stays a zombie of tern"
        );
    }
}

/// The host pid of the task whose innermost pid is `ns_tid`, among the
/// threads of `host_pid` (`NSpid:` in /proc/PID/task/TID/status).
pub fn host_tid(host_pid: i32, ns_tid: i32) -> io::Result<i32> {
    for tid in tern_sys::proc::list_tasks(host_pid)? {
        if tern_sys::ns::inner_tid(host_pid, tid).ok() == Some(ns_tid) {
            return Ok(tid);
        }
    }
    Err(io::Error::other(format!(
        "no thread of process {host_pid} has id {ns_tid} in its pid namespace"
    )))
}
