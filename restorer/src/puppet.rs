//! The puppet: a stopped child process driven entirely from outside with
//! ptrace, which tern turns into the restored program.
//!
//! It is created with `clone3` (with `set_tid` to get the original pid) from
//! the single-threaded `tern restore`, makes itself a session leader, closes
//! every fd but 0-2, asks to be traced and stops. Everything after that is
//! done by injecting syscalls through a `syscall` instruction in its vdso.

use crate::pidns::PidNamespace;
use std::io;
use std::sync::Arc;
use tern_sys::proc;
use tern_sys::{ptrace, remote, RemoteThread};

/// A child stopped under our ptrace; killed on drop unless released.
#[derive(Debug)]
pub struct Puppet {
    pub pid: i32,
    pub remote: RemoteThread,
    /// Threads created in it (traced too): reaped before the main one.
    pub threads: Vec<i32>,
    released: bool,
    /// The fresh PID namespace it lives in, if any: dropped (its init
    /// killed, if nobody kept it) only after this puppet is reaped.
    pub(crate) namespace: Option<Arc<PidNamespace>>,
    /// The mount table built in its mount namespace of its own, if any
    /// (a standby's final image may bring newer tmpfs files for it).
    pub(crate) mounts: Option<tern_wire::MountTable>,
    /// Pid 1 of a PID namespace made for it (the image's was its own).
    pub(crate) pid_namespace_init: bool,
    /// The cgroup directories made for it (and the rest of its tree):
    /// removed if it never runs. Last, so dropped after it is reaped.
    pub(crate) cgroups_made: Option<Arc<tern_state::cgroups::Made>>,
}

/// How puppets are traced (the root of a tree from its start, others
/// once they need an option more): killed with tern, syscall stops
/// marked, threads and forked children traced too.
pub(crate) const TRACE_OPTIONS: libc::c_int = libc::PTRACE_O_EXITKILL
    | libc::PTRACE_O_TRACESYSGOOD
    | libc::PTRACE_O_TRACECLONE
    | libc::PTRACE_O_TRACEFORK;

impl Puppet {
    /// Create the puppet, with pid `want_pid` if given.
    pub fn spawn(want_pid: Option<i32>) -> io::Result<Puppet> {
        Self::spawn_keeping(want_pid, None, true, 0)
    }

    /// [`spawn`](Self::spawn), the puppet keeping tern's fd `keep.0` as its
    /// fd `keep.1` (`keep.1` >= 3; every other fd but 0-2 is closed), in a
    /// session of its own if `own_session` (else in tern's session and
    /// process group), in new namespaces of the kinds `ns_flags` names
    /// (`CLONE_NEWUTS`, `CLONE_NEWIPC`).
    pub fn spawn_keeping(
        want_pid: Option<i32>,
        keep: Option<(i32, i32)>,
        own_session: bool,
        ns_flags: u64,
    ) -> io::Result<Puppet> {
        let pid = tern_sys::child::fork_traced_stopped(want_pid, keep, own_session, ns_flags)?;
        let mut puppet = Puppet {
            pid,
            remote: RemoteThread::new(pid, 0, ptrace::zeroed_regs()),
            threads: Vec::new(),
            released: false,
            namespace: None,
            mounts: None,
            pid_namespace_init: false,
            cgroups_made: None,
        };
        match ptrace::wait(pid)? {
            ptrace::Stop::Signal(libc::SIGSTOP) => {}
            other => {
                return Err(io::Error::other(format!(
                    "puppet {pid} did not stop as expected: {other:?}"
                )))
            }
        }
        ptrace::set_options(pid, TRACE_OPTIONS & !libc::PTRACE_O_TRACEFORK)?;
        // If memory runs out while it is rebuilt, the kernel's OOM killer
        // should take it (the restore then fails cleanly) rather than the
        // daemon or other programs; its own value is set at resume.
        std::fs::write(format!("/proc/{pid}/oom_score_adj"), "1000")?;
        let regs = ptrace::get_regs(pid)?;
        let maps = proc::read_smaps(pid)?;
        let vdso = maps
            .iter()
            .find(|m| m.name == "[vdso]")
            .ok_or_else(|| io::Error::other("tern itself has no [vdso] mapping"))?;
        let gadget = remote::find_syscall_insn(pid, vdso.start, vdso.end)?
            .ok_or_else(|| io::Error::other("no syscall instruction in the vdso"))?;
        puppet.remote = RemoteThread::new(pid, gadget, regs);
        Ok(puppet)
    }

    /// Take over `pid`, a child a puppet forked while traced with
    /// `PTRACE_O_TRACEFORK` (so it starts stopped and traced by us, with
    /// the same options), a copy of that puppet.
    pub fn adopt_fork(pid: i32, gadget: u64) -> io::Result<Puppet> {
        let mut puppet = Puppet {
            pid,
            remote: RemoteThread::new(pid, gadget, ptrace::zeroed_regs()),
            threads: Vec::new(),
            released: false,
            namespace: None,
            mounts: None,
            pid_namespace_init: false,
            cgroups_made: None,
        };
        match ptrace::wait(pid)? {
            ptrace::Stop::Signal(libc::SIGSTOP) | ptrace::Stop::EventStop(_) => {}
            other => {
                return Err(io::Error::other(format!(
                    "forked puppet {pid} did not stop as expected: {other:?}"
                )))
            }
        }
        let regs = ptrace::get_regs(pid)?;
        puppet.remote = RemoteThread::new(pid, gadget, regs);
        Ok(puppet)
    }

    /// The signal that killed it, if it died.
    pub fn killed_by(&self) -> Option<i32> {
        if let Some(sig) = self.remote.killed_by {
            return Some(sig);
        }
        // Not seen by an injected syscall: still a zombie, not reaped.
        tern_sys::child::killed_by(self.pid)
    }

    pub fn syscall(&mut self, nr: libc::c_long, args: &[u64]) -> io::Result<u64> {
        self.remote.syscall_ok(nr, args)
    }

    /// It ended as it was made to (a zombie made on purpose): nothing is
    /// left to kill or reap.
    pub(crate) fn forget(mut self) {
        self.released = true;
    }

    /// Let the restored program run: it is no longer ours to kill.
    pub fn release(&mut self) -> io::Result<()> {
        ptrace::detach(self.pid, 0)?;
        self.released = true;
        if let Some(made) = &self.cgroups_made {
            made.keep();
        }
        Ok(())
    }
}

impl Drop for Puppet {
    fn drop(&mut self) {
        if !self.released {
            // A traced group leader's death is reported only after every
            // other traced thread has been waited for: those first.
            let _ = tern_sys::signal(self.pid, libc::SIGKILL);
            for &tid in &self.threads {
                tern_sys::child::reap(tid);
            }
            if self.pid_namespace_init {
                // A dying init waits in the kernel until every process of
                // its namespace is reaped, and the puppets forked inside
                // are reaped only by us, their tracer, maybe after this
                // one: it is reaped on a thread of its own, which ends
                // once they are.
                let pid = self.pid;
                std::thread::spawn(move || tern_sys::child::reap(pid));
                return;
            }
            tern_sys::child::reap(self.pid);
        }
    }
}
