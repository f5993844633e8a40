//! Registers: the image's x86-64 general registers and the kernel's
//! `user_regs_struct`, both ways.

use tern_sys::ptrace::{ERESTARTNOHAND, ERESTARTNOINTR, ERESTARTSYS, ERESTART_RESTARTBLOCK};
use tern_wire as wire;

/// The registers to store: a syscall the dump interrupted is rewound so the
/// restored thread issues it again. For `ERESTART_RESTARTBLOCK` (sleeps) the
/// original call is re-issued, since the kernel's restart block does not
/// travel: a relative sleep restarts in full, an absolute one is exact.
pub fn registers_for_image(r: &libc::user_regs_struct) -> (wire::Regs, wire::SyscallState) {
    let mut regs = regs_to_wire(r);
    let mut state = wire::SyscallState::None;
    if (r.orig_rax as i64) >= 0 {
        let code = -(r.rax as i64);
        if matches!(
            code,
            ERESTARTSYS | ERESTARTNOINTR | ERESTARTNOHAND | ERESTART_RESTARTBLOCK
        ) {
            regs.rax = r.orig_rax;
            regs.rip = r.rip - 2;
            state = wire::SyscallState::Restart {
                nr: r.orig_rax,
                code,
            };
        }
    }
    regs.orig_rax = u64::MAX;
    (regs, state)
}

pub fn regs_to_wire(r: &libc::user_regs_struct) -> wire::Regs {
    wire::Regs {
        r15: r.r15,
        r14: r.r14,
        r13: r.r13,
        r12: r.r12,
        rbp: r.rbp,
        rbx: r.rbx,
        r11: r.r11,
        r10: r.r10,
        r9: r.r9,
        r8: r.r8,
        rax: r.rax,
        rcx: r.rcx,
        rdx: r.rdx,
        rsi: r.rsi,
        rdi: r.rdi,
        orig_rax: r.orig_rax,
        rip: r.rip,
        cs: r.cs,
        eflags: r.eflags,
        rsp: r.rsp,
        ss: r.ss,
        fs_base: r.fs_base,
        gs_base: r.gs_base,
        ds: r.ds,
        es: r.es,
        fs: r.fs,
        gs: r.gs,
    }
}

pub fn regs_from_wire(w: &wire::Regs) -> libc::user_regs_struct {
    libc::user_regs_struct {
        r15: w.r15,
        r14: w.r14,
        r13: w.r13,
        r12: w.r12,
        rbp: w.rbp,
        rbx: w.rbx,
        r11: w.r11,
        r10: w.r10,
        r9: w.r9,
        r8: w.r8,
        rax: w.rax,
        rcx: w.rcx,
        rdx: w.rdx,
        rsi: w.rsi,
        rdi: w.rdi,
        orig_rax: w.orig_rax,
        rip: w.rip,
        cs: w.cs,
        eflags: w.eflags,
        rsp: w.rsp,
        ss: w.ss,
        fs_base: w.fs_base,
        gs_base: w.gs_base,
        ds: w.ds,
        es: w.es,
        fs: w.fs,
        gs: w.gs,
    }
}
