//! Seizing a running process and giving it back exactly as it was.

use crate::error::{Context, EngineError, Result};
use tern_sys::{ptrace, RemoteThread};
use tracing::warn;

use tern_sys::ptrace::{ERESTARTNOHAND, ERESTARTNOINTR, ERESTARTSYS, ERESTART_RESTARTBLOCK};

/// Whether `pid` is in a job-control stop (state T): put back into it on
/// release, recorded as SIGSTOP in an image.
fn in_job_stop(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|st| {
            st.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().starts_with('T'))
        })
        .unwrap_or(false)
}

/// Signals held back while stopping a thread, with their siginfo.
type Intercepted = Vec<(i32, [u8; 128])>;

/// A thread of the target other than the main one, stopped.
#[derive(Debug)]
pub struct SeizedThread {
    pub tid: i32,
    /// Registers exactly as found at the stop.
    pub found_regs: libc::user_regs_struct,
    pub remote: RemoteThread,
    injected: bool,
}

impl SeizedThread {
    pub fn inject(&mut self, nr: libc::c_long, args: &[u64], what: &str) -> Result<u64> {
        self.injected = true;
        let tid = self.tid;
        self.remote
            .syscall_ok(nr, args)
            .ctx(tid, || format!("injected {what} in thread {tid}"))
    }
}

/// A seized, stopped target (every thread). Dropping it without
/// [`Seized::kill`] puts the registers back, removes the scratch mapping and
/// detaches, so the program continues as if nothing happened.
#[derive(Debug)]
pub struct Seized {
    pub pid: i32,
    /// Registers of the main thread exactly as found at the stop.
    pub found_regs: libc::user_regs_struct,
    /// Syscall injection in the main thread.
    pub remote: RemoteThread,
    /// The other threads, by ascending tid.
    pub threads: Vec<SeizedThread>,
    /// A mapping tern added to the target (address, length): removed on release.
    pub scratch: Option<(u64, u64)>,
    injected: bool,
    done: bool,
    /// The program was in a job-control stop (state T) when seized: it is
    /// put back into it on release, and the image records it as SIGSTOP.
    pub was_stopped: bool,
    /// Its established TCP connections, in repair mode and locked, when the
    /// dump took them: released with it, silenced when it is killed.
    pub net: tern_state::sockets::Held,
    /// After [`kill`](Self::kill): the packet lock of its connections,
    /// still in place (dropping it lifts it).
    pub net_lock_left: Option<tern_sys::netlock::NetLock>,
}

/// io_uring's worker threads never stop for ptrace (a wait for one would
/// never end): refuse the program before seizing one (one created since
/// the preflight looked).
fn refuse_io_worker(pid: i32, tid: i32) -> Result<()> {
    if tern_sys::proc::is_io_worker(pid, tid) {
        return Err(EngineError::Unsupported {
            pid,
            reason: format!(
                "its thread {tid} is an io_uring worker, which does not stop for ptrace: programs using io_uring cannot be moved"
            ),
        });
    }
    Ok(())
}

/// Seize and stop one thread; returns its registers and the signals that
/// arrived before the stop (held back). `None` if the thread is gone.
fn stop_thread(tid: i32) -> Result<Option<(libc::user_regs_struct, Intercepted)>> {
    // No PTRACE_O_EXITKILL: if tern dies, the program must live on.
    match ptrace::seize(tid, libc::PTRACE_O_TRACESYSGOOD) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::ESRCH) => return Ok(None),
        Err(e) => return Err(e).ctx(tid, || format!("PTRACE_SEIZE of thread {tid}")),
    }
    let stopped = wait_interrupted(tid).and_then(|s| {
        if s.is_some() {
            ptrace::suspend_seccomp(tid, libc::PTRACE_O_TRACESYSGOOD)
                .ctx(tid, || "PTRACE_O_SUSPEND_SECCOMP".into())?;
        }
        Ok(s)
    });
    if stopped.is_err() {
        // Never leave a thread traced behind a failed seize.
        let _ = ptrace::detach(tid, 0);
    }
    stopped
}

fn wait_interrupted(tid: i32) -> Result<Option<(libc::user_regs_struct, Intercepted)>> {
    ptrace::interrupt(tid).ctx(tid, || "PTRACE_INTERRUPT".into())?;
    wait_stop(tid)
}

/// Wait for the interrupt stop asked of `tid`.
fn wait_stop(tid: i32) -> Result<Option<(libc::user_regs_struct, Intercepted)>> {
    let mut pending = Vec::new();
    loop {
        match ptrace::wait(tid).ctx(tid, || "wait for the stop".into())? {
            ptrace::Stop::EventStop(_) => break,
            ptrace::Stop::Signal(sig) => {
                // Arrived before our stop: hold it back and re-deliver it,
                // with its siginfo, when the program resumes (or record it
                // as pending).
                let mut info = ptrace::get_siginfo(tid).unwrap_or([0u8; 128]);
                info[..4].copy_from_slice(&sig.to_le_bytes());
                pending.push((sig, info));
                ptrace::cont(tid, 0).ctx(tid, || "PTRACE_CONT".into())?;
            }
            ptrace::Stop::Syscall | ptrace::Stop::Event(_) => {
                ptrace::cont(tid, 0).ctx(tid, || "PTRACE_CONT".into())?;
            }
            ptrace::Stop::Exited(_) | ptrace::Stop::Killed(_) => return Ok(None),
        }
    }
    let regs = ptrace::get_regs(tid).ctx(tid, || "PTRACE_GETREGSET NT_PRSTATUS".into())?;
    Ok(Some((regs, pending)))
}

/// Registers with which a live thread must continue: the kernel's own
/// restart rewind applied, since resuming from a syscall-exit stop skips it.
pub fn resume_regs(found: &libc::user_regs_struct) -> libc::user_regs_struct {
    let mut r = *found;
    if (r.orig_rax as i64) >= 0 {
        match -(r.rax as i64) {
            ERESTARTSYS | ERESTARTNOINTR | ERESTARTNOHAND => {
                r.rax = r.orig_rax;
                r.rip -= 2;
            }
            ERESTART_RESTARTBLOCK => {
                r.rax = libc::SYS_restart_syscall as u64;
                r.rip -= 2;
            }
            _ => {}
        }
    }
    r
}

/// A process frozen by a cgroup freezer whose threads are seized and asked
/// to stop: they stop once thawed ([`finish`](Self::finish)). Dropped
/// unfinished, its threads are let go.
#[derive(Debug)]
pub struct FrozenSeize {
    pid: i32,
    tids: Vec<i32>,
    was_stopped: bool,
}

impl FrozenSeize {
    /// Seize and interrupt every thread of frozen process `pid`: frozen,
    /// it cannot make more. On error the threads seized so far are in the
    /// returned value too: drop it only once the cgroup is thawed (it
    /// waits for their stops to let them go).
    pub fn new(pid: i32) -> (FrozenSeize, Result<()>) {
        let mut s = FrozenSeize {
            pid,
            tids: Vec::new(),
            was_stopped: false,
        };
        let r = s.seize_all();
        (s, r)
    }

    fn seize_all(&mut self) -> Result<()> {
        let pid = self.pid;
        self.was_stopped = in_job_stop(pid);
        for tid in tern_sys::proc::list_tasks(pid).ctx(pid, || "list threads".into())? {
            refuse_io_worker(pid, tid)?;
            ptrace::seize(tid, libc::PTRACE_O_TRACESYSGOOD)
                .ctx(tid, || format!("PTRACE_SEIZE of frozen thread {tid}"))?;
            self.tids.push(tid);
            ptrace::interrupt(tid).ctx(tid, || "PTRACE_INTERRUPT".into())?;
        }
        if !self.tids.contains(&pid) {
            return Err(EngineError::NoProcess { pid });
        }
        Ok(())
    }

    /// Once thawed: wait for every thread's stop, then seize any thread
    /// that appeared meanwhile.
    pub fn finish(mut self) -> Result<Seized> {
        let pid = self.pid;
        let tids = std::mem::take(&mut self.tids);
        let mut stops = Vec::with_capacity(tids.len());
        let mut result = Ok(());
        for &tid in &tids {
            let stop = wait_stop(tid).and_then(|s| {
                if s.is_some() {
                    ptrace::suspend_seccomp(tid, libc::PTRACE_O_TRACESYSGOOD)
                        .ctx(tid, || "PTRACE_O_SUSPEND_SECCOMP".into())?;
                }
                Ok(s)
            });
            match stop {
                Ok(stop) => stops.push((tid, stop)),
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        if let Err(e) = result {
            for &tid in &tids {
                let _ = ptrace::detach(tid, 0);
            }
            return Err(e);
        }
        let Some((regs, pending)) = stops
            .iter()
            .find(|(t, _)| *t == pid)
            .and_then(|(_, s)| s.clone())
        else {
            for &tid in &tids {
                let _ = ptrace::detach(tid, 0);
            }
            return Err(EngineError::NoProcess { pid });
        };
        let mut s = Seized::stopped(pid, regs, pending, self.was_stopped);
        for (tid, stop) in stops {
            if tid == pid {
                continue;
            }
            if let Some((regs, pending)) = stop {
                s.add_thread(tid, regs, pending);
            }
        }
        s.seize_new_threads()?;
        Ok(s)
    }
}

impl Drop for FrozenSeize {
    /// (Once thawed.) A thread not yet in its stop cannot be detached:
    /// wait for the stop it was asked for, then let it go.
    fn drop(&mut self) {
        for &tid in &self.tids {
            if ptrace::detach(tid, 0).is_err() {
                let _ = wait_stop(tid);
                let _ = ptrace::detach(tid, 0);
            }
        }
    }
}

impl Seized {
    /// Seize every thread of `pid`. Threads may appear while seizing:
    /// `/proc/PID/task` is rescanned until every listed thread is stopped
    /// (a stopped thread cannot create more).
    pub fn attach(pid: i32) -> Result<Self> {
        let was_stopped = in_job_stop(pid);
        let Some((regs, pending)) = stop_thread(pid)? else {
            return Err(EngineError::NoProcess { pid });
        };
        let mut s = Seized::stopped(pid, regs, pending, was_stopped);
        s.seize_new_threads()?;
        Ok(s)
    }

    /// The process whose main thread is stopped with `regs` (other
    /// threads added with [`add_thread`](Self::add_thread)).
    fn stopped(
        pid: i32,
        regs: libc::user_regs_struct,
        pending: Intercepted,
        was_stopped: bool,
    ) -> Self {
        let mut remote = RemoteThread::new(pid, 0, regs);
        remote.set_intercepted(pending);
        Seized {
            pid,
            found_regs: regs,
            remote,
            threads: Vec::new(),
            scratch: None,
            injected: false,
            done: false,
            net: Default::default(),
            net_lock_left: None,
            was_stopped,
        }
    }

    fn add_thread(&mut self, tid: i32, regs: libc::user_regs_struct, pending: Intercepted) {
        let mut remote = RemoteThread::new(tid, 0, regs);
        remote.set_intercepted(pending);
        self.threads.push(SeizedThread {
            tid,
            found_regs: regs,
            remote,
            injected: false,
        });
    }

    /// Seize threads of the program not seized yet, rescanning until every
    /// listed thread is stopped (a stopped thread cannot create more).
    fn seize_new_threads(&mut self) -> Result<()> {
        let pid = self.pid;
        loop {
            let tids = tern_sys::proc::list_tasks(pid).ctx(pid, || "list threads".into())?;
            let mut added = false;
            for tid in tids {
                if tid == pid || self.threads.iter().any(|t| t.tid == tid) {
                    continue;
                }
                refuse_io_worker(pid, tid)?;
                if let Some((regs, pending)) = stop_thread(tid)? {
                    self.add_thread(tid, regs, pending);
                    added = true;
                }
            }
            if !added {
                break;
            }
        }
        self.threads.sort_by_key(|t| t.tid);
        Ok(())
    }

    /// Use `gadget` (a `syscall` instruction in the target) in every thread.
    pub fn set_gadget(&mut self, gadget: u64) {
        self.remote.set_gadget(gadget);
        for t in &mut self.threads {
            t.remote.set_gadget(gadget);
        }
    }

    /// Signals held back while stopping, with their siginfo, by thread.
    pub fn intercepted_with_info(&self) -> Vec<(i32, [u8; 128])> {
        let mut v: Vec<(i32, [u8; 128])> = self
            .remote
            .intercepted_info
            .iter()
            .map(|i| (self.pid, *i))
            .collect();
        for t in &self.threads {
            v.extend(t.remote.intercepted_info.iter().map(|i| (t.tid, *i)));
        }
        v
    }

    pub fn inject(&mut self, nr: libc::c_long, args: &[u64], what: &str) -> Result<u64> {
        self.injected = true;
        let pid = self.pid;
        self.remote
            .syscall_ok(nr, args)
            .ctx(pid, || format!("injected {what}"))
    }

    pub fn release(&mut self) -> Result<()> {
        if self.done {
            return Ok(());
        }
        self.done = true;
        let pid = self.pid;
        let mut first_err = None;
        // Connections back to normal before the program can touch them.
        if let Err(e) = std::mem::take(&mut self.net).release() {
            first_err.get_or_insert(e.into());
        }
        if let Some((addr, len)) = self.scratch.take() {
            if let Err(e) = self
                .remote
                .syscall_ok(libc::SYS_munmap, &[addr, len])
                .ctx(pid, || "remove the scratch mapping".into())
            {
                first_err.get_or_insert(e);
            }
        }
        let signals = self.intercepted_with_info();
        // Every thread is let go even if one fails, so none stays stopped.
        for t in &self.threads {
            let r = (|| {
                if t.injected {
                    ptrace::set_regs(t.tid, &resume_regs(&t.found_regs))
                        .ctx(t.tid, || "restore registers".into())?;
                }
                ptrace::detach(t.tid, 0).ctx(t.tid, || "PTRACE_DETACH".into())
            })();
            if let Err(e) = r {
                first_err.get_or_insert(e);
            }
        }
        if self.injected {
            if let Err(e) = ptrace::set_regs(pid, &resume_regs(&self.found_regs))
                .ctx(pid, || "restore registers".into())
            {
                first_err.get_or_insert(e);
            }
        }
        if let Err(e) = ptrace::detach(pid, 0).ctx(pid, || "PTRACE_DETACH".into()) {
            first_err.get_or_insert(e);
        }
        // Sent again with their siginfo (a timer's value and id), to the
        // thread that was about to take each; before the SIGSTOP below, so
        // a SIGCONT among them cannot undo it.
        for (tid, info) in signals {
            ptrace::replay_signal(pid, tid, &info);
        }
        if self.was_stopped {
            let _ = tern_sys::signal(pid, libc::SIGSTOP);
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Let go of the program but leave it stopped: a SIGSTOP queued while
    /// it is still traced is taken before it runs a single instruction.
    /// Its TCP connections stay in repair mode and locked (their copy
    /// elsewhere may be the live one): the lock's table is logged.
    pub fn release_stopped(&mut self) -> Result<()> {
        if let Some(lock) = std::mem::take(&mut self.net).after_kill() {
            let table = lock.keep();
            warn!(
                pid = self.pid,
                "its TCP connections stay locked: nftables table inet {table} in its network namespace"
            );
        }
        let _ = tern_sys::signal(self.pid, libc::SIGSTOP);
        self.was_stopped = true;
        self.release()
    }

    pub fn kill(&mut self) -> Result<()> {
        let pid = self.pid;
        tern_sys::signal(pid, libc::SIGKILL).ctx(pid, || "kill".into())?;
        self.done = true;
        // As tracer we are told of each thread's death; the parent reaps.
        // Other threads first: a traced group leader's death is reported
        // only once every other thread of the group has been waited for.
        for tid in self
            .threads
            .iter()
            .map(|t| t.tid)
            .chain(std::iter::once(pid))
        {
            loop {
                match ptrace::wait(tid) {
                    Ok(ptrace::Stop::Exited(_)) | Ok(ptrace::Stop::Killed(_)) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        }
        self.net_lock_left = std::mem::take(&mut self.net).after_kill();
        Ok(())
    }
}

impl Drop for Seized {
    fn drop(&mut self) {
        if let Err(e) = self.release() {
            warn!("could not resume process {} cleanly: {e}", self.pid);
        }
    }
}
