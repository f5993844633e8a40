//! Running syscalls inside a stopped tracee.
//!
//! The tracee's registers are pointed at a `syscall` instruction (found in
//! its vdso, so nothing is written into its memory), with `orig_rax = -1` so
//! the kernel does not apply syscall-restart logic to an interrupted call,
//! and it is stepped with `PTRACE_SYSCALL` to the syscall-entry and then the
//! syscall-exit stop, where the result is read from `rax`. The caller puts
//! the real registers back when done.

use super::{mem, ptrace};
use std::io;

/// A thread stopped under ptrace that can execute injected syscalls.
#[derive(Debug)]
pub struct RemoteThread {
    pub tid: i32,
    gadget: u64,
    template: libc::user_regs_struct,
    /// Signals that arrived while injecting, suppressed for the caller to
    /// deliver again with their data: each one's siginfo (128 bytes, the
    /// signal number in its first 4).
    pub intercepted_info: Vec<[u8; 128]>,
    /// The signal that killed it during an injected syscall (its exit was
    /// reaped by that wait).
    pub killed_by: Option<i32>,
}

impl RemoteThread {
    /// `template` supplies segment registers, flags and fs_base for the
    /// injected calls (usually the thread's own registers).
    pub fn new(tid: i32, gadget: u64, template: libc::user_regs_struct) -> Self {
        RemoteThread {
            tid,
            gadget,
            template,
            intercepted_info: Vec::new(),
            killed_by: None,
        }
    }

    /// Signals held back while this thread was being stopped.
    pub fn set_intercepted(&mut self, signals: Vec<(i32, [u8; 128])>) {
        for (sig, mut info) in signals {
            info[..4].copy_from_slice(&sig.to_le_bytes());
            self.intercepted_info.push(info);
        }
    }

    pub fn gadget(&self) -> u64 {
        self.gadget
    }

    /// Use another `syscall` instruction (after the vdso moved).
    pub fn set_gadget(&mut self, gadget: u64) {
        self.gadget = gadget;
    }

    /// Run syscall `nr` with up to six arguments; returns the raw result
    /// (a negative errno on failure).
    pub fn syscall(&mut self, nr: libc::c_long, args: &[u64]) -> io::Result<i64> {
        let mut regs = self.template;
        regs.rip = self.gadget;
        regs.rax = nr as u64;
        regs.orig_rax = u64::MAX;
        let a = |i: usize| args.get(i).copied().unwrap_or(0);
        regs.rdi = a(0);
        regs.rsi = a(1);
        regs.rdx = a(2);
        regs.r10 = a(3);
        regs.r8 = a(4);
        regs.r9 = a(5);
        ptrace::set_regs(self.tid, &regs)?;
        ptrace::syscall(self.tid, 0)?;
        self.wait_syscall_stop()?;
        ptrace::syscall(self.tid, 0)?;
        self.wait_syscall_stop()?;
        Ok(ptrace::get_regs(self.tid)?.rax as i64)
    }

    /// Like [`syscall`](Self::syscall) but a negative result becomes an error.
    pub fn syscall_ok(&mut self, nr: libc::c_long, args: &[u64]) -> io::Result<u64> {
        super::errno_result(self.syscall(nr, args)?)
    }

    fn wait_syscall_stop(&mut self) -> io::Result<()> {
        loop {
            match ptrace::wait(self.tid)? {
                ptrace::Stop::Syscall => return Ok(()),
                ptrace::Stop::Signal(sig) => {
                    let mut info = ptrace::get_siginfo(self.tid).unwrap_or([0u8; 128]);
                    info[..4].copy_from_slice(&sig.to_le_bytes());
                    self.intercepted_info.push(info);
                    ptrace::syscall(self.tid, 0)?;
                }
                ptrace::Stop::EventStop(_) | ptrace::Stop::Event(_) => {
                    ptrace::syscall(self.tid, 0)?;
                }
                ptrace::Stop::Exited(code) => {
                    return Err(io::Error::other(format!(
                        "thread {} exited with status {code} during an injected syscall",
                        self.tid
                    )))
                }
                ptrace::Stop::Killed(sig) => {
                    self.killed_by = Some(sig);
                    return Err(io::Error::other(format!(
                        "thread {} was killed by signal {sig} during an injected syscall",
                        self.tid
                    )));
                }
            }
        }
    }
}

/// Address of a `syscall` instruction (0f 05) inside `[start, end)` of `pid`.
pub fn find_syscall_insn(pid: i32, start: u64, end: u64) -> io::Result<Option<u64>> {
    let mut buf = vec![0u8; (end - start) as usize];
    mem::read_fully(pid, start, &mut buf)?;
    Ok(buf
        .windows(2)
        .position(|w| w == [0x0f, 0x05])
        .map(|off| start + off as u64))
}
