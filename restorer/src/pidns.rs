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
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tracing::warn;

/// The reaper's name in `ps` (at most 15 bytes).
const REAPER_NAME: &[u8] = b"tern-ns-init\0";
/// How long the reaper waits for the first process to appear.
const REAPER_FIRST_WAIT_TICKS: u32 = 600;
const REAPER_TICK_NS: i64 = 50_000_000;

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
pub struct PidNamespace {
    /// The reaper's pid as this (the host's) namespace sees it.
    pub reaper: i32,
    ns: File,
    kept: AtomicBool,
}

impl PidNamespace {
    pub fn create() -> io::Result<PidNamespace> {
        // SAFETY: the child runs `reaper_main`: raw syscalls only, and it
        // never returns.
        let r = unsafe { tern_engine::sys::clone3_fork(libc::CLONE_NEWPID as u64, None)? };
        if r == 0 {
            reaper_main();
        }
        let reaper = r;
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
        // SAFETY: setns on fds we own; CLONE_NEWPID changes only which pid
        // namespace this thread's future children are created in.
        if unsafe { libc::setns(self.ns.as_raw_fd(), libc::CLONE_NEWPID) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let out = f();
        // SAFETY: as above; going back to our own namespace is always allowed.
        if unsafe { libc::setns(ours.as_raw_fd(), libc::CLONE_NEWPID) } != 0 {
            let e = io::Error::last_os_error();
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
    // SAFETY: plain syscall on our own child.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    if !reap_within(&[pid], REAPER_EXIT_WAIT).is_empty() {
        warn!(
            pid,
            "a PID namespace's init did not exit within {REAPER_EXIT_WAIT:?} of SIGKILL \
             (a process of its namespace is not reaped); it stays a zombie of tern"
        );
    }
}

/// Reap our children `pids` as they exit, waiting at most `wait` in all
/// (polled with `WNOHANG`: a blocking wait could be forever). Returns those
/// still not reaped; one that is not (or no longer) our child counts as
/// done.
pub(crate) fn reap_within(pids: &[i32], wait: Duration) -> Vec<i32> {
    let t0 = Instant::now();
    let mut left: Vec<i32> = pids.to_vec();
    loop {
        left.retain(|&pid| {
            let mut st = 0;
            // SAFETY: waitpid with a valid status pointer; WNOHANG.
            let r = unsafe { libc::waitpid(pid, &mut st, libc::WNOHANG | libc::__WALL) };
            r == 0
        });
        if left.is_empty() || t0.elapsed() >= wait {
            return left;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// The host pid of the task whose innermost pid is `ns_tid`, among the
/// threads of `host_pid` (`NSpid:` in /proc/PID/task/TID/status).
pub fn host_tid(host_pid: i32, ns_tid: i32) -> io::Result<i32> {
    for tid in tern_engine::proc::list_tasks(host_pid)? {
        let Ok(status) = std::fs::read_to_string(format!("/proc/{host_pid}/task/{tid}/status"))
        else {
            continue;
        };
        let inner = status
            .lines()
            .find_map(|l| l.strip_prefix("NSpid:"))
            .and_then(|v| v.split_whitespace().last())
            .and_then(|v| v.parse::<i32>().ok());
        if inner == Some(ns_tid) {
            return Ok(tid);
        }
    }
    Err(io::Error::other(format!(
        "no thread of process {host_pid} has id {ns_tid} in its pid namespace"
    )))
}

/// pid 1 of the namespace. Raw syscalls only: this is a fork of a process
/// that may have had other threads.
fn reaper_main() -> ! {
    // SAFETY: raw syscalls with valid pointers to our own stack/static data.
    unsafe {
        libc::syscall(libc::SYS_setsid);
        libc::syscall(libc::SYS_close_range, 0u32, u32::MAX, 0u32);
        libc::syscall(libc::SYS_prctl, libc::PR_SET_NAME, REAPER_NAME.as_ptr());
        let tick = libc::timespec {
            tv_sec: 0,
            tv_nsec: REAPER_TICK_NS,
        };
        let mut seen_others = false;
        let mut ticks: u32 = 0;
        loop {
            while libc::syscall(
                libc::SYS_wait4,
                -1,
                std::ptr::null_mut::<i32>(),
                libc::WNOHANG | libc::__WALL,
                std::ptr::null_mut::<libc::rusage>(),
            ) > 0
            {}
            // kill(-1, 0) from pid 1 reaches every other process in the
            // namespace: ESRCH means we are alone.
            let others = libc::syscall(libc::SYS_kill, -1, 0) == 0;
            if others {
                seen_others = true;
            } else if seen_others || ticks >= REAPER_FIRST_WAIT_TICKS {
                libc::syscall(libc::SYS_exit_group, 0);
            }
            ticks = ticks.saturating_add(1);
            libc::syscall(
                libc::SYS_nanosleep,
                &tick as *const libc::timespec,
                std::ptr::null_mut::<libc::timespec>(),
            );
        }
    }
}
