//! Seizing a running process and giving it back exactly as it was.

use crate::error::{Context, EngineError, Result};
use crate::sys::{ptrace, RemoteThread};
use tracing::warn;

pub const ERESTARTSYS: i64 = 512;
pub const ERESTARTNOINTR: i64 = 513;
pub const ERESTARTNOHAND: i64 = 514;
pub const ERESTART_RESTARTBLOCK: i64 = 516;

/// A seized, stopped target. Dropping it without [`Seized::kill`] puts the
/// registers back, removes the scratch mapping and detaches, so the program
/// continues as if nothing happened.
pub struct Seized {
    pub pid: i32,
    /// Registers exactly as found at the stop.
    pub found_regs: libc::user_regs_struct,
    pub remote: RemoteThread,
    /// A mapping tern added to the target (address, length): removed on release.
    pub scratch: Option<(u64, u64)>,
    injected: bool,
    done: bool,
    /// The program was in a job-control stop (state T) when seized: it is
    /// put back into it on release, and the image records it as SIGSTOP.
    pub was_stopped: bool,
}

impl Seized {
    pub fn attach(pid: i32) -> Result<Self> {
        let was_stopped = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|st| {
                st.rsplit_once(')')
                    .map(|(_, rest)| rest.trim_start().starts_with('T'))
            })
            .unwrap_or(false);
        // No PTRACE_O_EXITKILL: if tern dies, the program must live on.
        ptrace::seize(pid, libc::PTRACE_O_TRACESYSGOOD).ctx(pid, || "PTRACE_SEIZE".into())?;
        let mut s = Seized {
            pid,
            // SAFETY: plain integer struct; overwritten below before use.
            found_regs: zero_regs(),
            remote: RemoteThread::new(pid, 0, zero_regs()),
            scratch: None,
            injected: false,
            done: false,
            was_stopped,
        };
        ptrace::interrupt(pid).ctx(pid, || "PTRACE_INTERRUPT".into())?;
        let mut pending = Vec::new();
        loop {
            match ptrace::wait(pid).ctx(pid, || "wait for the stop".into())? {
                ptrace::Stop::EventStop(_) => break,
                ptrace::Stop::Signal(sig) => {
                    // Arrived before our stop: hold it back and re-deliver
                    // it when the program resumes (or record it as pending).
                    pending.push(sig);
                    ptrace::cont(pid, 0).ctx(pid, || "PTRACE_CONT".into())?;
                }
                ptrace::Stop::Syscall | ptrace::Stop::Event(_) => {
                    ptrace::cont(pid, 0).ctx(pid, || "PTRACE_CONT".into())?;
                }
                ptrace::Stop::Exited(_) | ptrace::Stop::Killed(_) => {
                    s.done = true;
                    return Err(EngineError::NoProcess { pid });
                }
            }
        }
        s.found_regs = ptrace::get_regs(pid).ctx(pid, || "PTRACE_GETREGSET NT_PRSTATUS".into())?;
        s.remote = RemoteThread::new(pid, 0, s.found_regs);
        s.remote.intercepted_signals = pending;
        Ok(s)
    }

    pub fn inject(&mut self, nr: libc::c_long, args: &[u64], what: &str) -> Result<u64> {
        self.injected = true;
        let pid = self.pid;
        self.remote
            .syscall_ok(nr, args)
            .ctx(pid, || format!("injected {what}"))
    }

    /// Registers with which the live program must continue: the kernel's own
    /// restart rewind applied, since resuming from a syscall-exit stop skips it.
    pub fn resume_regs(&self) -> libc::user_regs_struct {
        let mut r = self.found_regs;
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

    pub fn release(&mut self) -> Result<()> {
        if self.done {
            return Ok(());
        }
        self.done = true;
        let pid = self.pid;
        if let Some((addr, len)) = self.scratch.take() {
            self.remote
                .syscall_ok(libc::SYS_munmap, &[addr, len])
                .ctx(pid, || "remove the scratch mapping".into())?;
        }
        if self.injected {
            let regs = self.resume_regs();
            ptrace::set_regs(pid, &regs).ctx(pid, || "restore registers".into())?;
        }
        let signals = std::mem::take(&mut self.remote.intercepted_signals);
        ptrace::detach(pid, 0).ctx(pid, || "PTRACE_DETACH".into())?;
        if self.was_stopped {
            // SAFETY: plain syscall with integer arguments.
            unsafe { libc::kill(pid, libc::SIGSTOP) };
        }
        for sig in signals {
            // SAFETY: plain syscall with integer arguments.
            unsafe { libc::kill(pid, sig) };
        }
        Ok(())
    }

    pub fn kill(&mut self) -> Result<()> {
        let pid = self.pid;
        // SAFETY: plain syscall with integer arguments.
        if unsafe { libc::kill(pid, libc::SIGKILL) } != 0 {
            return Err(std::io::Error::last_os_error()).ctx(pid, || "kill".into());
        }
        self.done = true;
        // As tracer we are told of the death; the parent reaps it.
        loop {
            match ptrace::wait(pid) {
                Ok(ptrace::Stop::Exited(_)) | Ok(ptrace::Stop::Killed(_)) | Err(_) => break,
                Ok(_) => {}
            }
        }
        Ok(())
    }
}

fn zero_regs() -> libc::user_regs_struct {
    // SAFETY: user_regs_struct is plain integers; all-zero is valid.
    unsafe { std::mem::zeroed() }
}

impl Drop for Seized {
    fn drop(&mut self) {
        if let Err(e) = self.release() {
            warn!("could not resume process {} cleanly: {e}", self.pid);
        }
    }
}
