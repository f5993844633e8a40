//! A stopped process's core state for its image: threads and their
//! registers, signal handlers, pending signals, timers, credentials,
//! rlimits (read with ptrace, injected syscalls and /proc).

use crate::dump::unsupported;
use crate::error::{Context, Result};
use crate::seize::Seized;
use std::collections::BTreeSet;
use tern_sys::page_size;
use tern_sys::proc;
use tern_sys::{mem, ptrace};
use tern_wire as wire;

fn read_u64(pid: i32, addr: u64) -> Result<u64> {
    let mut b = [0u8; 8];
    mem::read_fully(pid, addr, &mut b).ctx(pid, || format!("read scratch at {addr:#x}"))?;
    Ok(u64::from_le_bytes(b))
}

pub(crate) fn capture_core(seized: &mut Seized, pid: i32) -> Result<wire::Core> {
    let p = procfs::process::Process::new(pid).ctx(pid, || "open /proc entry".into())?;
    let status = p.status().ctx(pid, || "read status".into())?;
    let stat = p.stat().ctx(pid, || "read stat".into())?;

    // Scratch page for syscalls that return data through memory.
    let page = page_size();
    let scratch = seized.inject(
        libc::SYS_mmap,
        &[
            0,
            page,
            (libc::PROT_READ | libc::PROT_WRITE) as u64,
            (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u64,
            u64::MAX,
            0,
        ],
        "mmap of a scratch page",
    )?;
    seized.scratch = Some((scratch, page));

    // Only signals with a handler or ignored (/proc/PID/status SigCgt,
    // SigIgn), and SIGCHLD (whose SA_NOCLD* flags act even at SIG_DFL),
    // can differ from the all-zero default: ask the kernel about those
    // only (each injected syscall costs tens of microseconds, frozen).
    let interesting = status.sigcgt | status.sigign | (1u64 << (libc::SIGCHLD - 1));
    let sigactions = capture_sigactions(seized, pid, scratch, interesting)?;
    // Per-thread state, read by running the getters in each thread.
    let threads = capture_threads(seized, pid, scratch)?;
    let tids: Vec<i32> = std::iter::once(pid)
        .chain(seized.threads.iter().map(|t| t.tid))
        .collect();
    let seccomp = tern_state::seccomp::capture(pid, &tids)?;
    seized.inject(
        libc::SYS_prctl,
        &[libc::PR_GET_PDEATHSIG as u64, scratch],
        "prctl(PR_GET_PDEATHSIG)",
    )?;
    let pdeath_signal = read_u64(pid, scratch)? as i32;
    let dumpable = seized.inject(
        libc::SYS_prctl,
        &[libc::PR_GET_DUMPABLE as u64],
        "prctl(PR_GET_DUMPABLE)",
    )? as i32;
    let securebits = seized.inject(
        libc::SYS_prctl,
        &[libc::PR_GET_SECUREBITS as u64],
        "prctl(PR_GET_SECUREBITS)",
    )? as u32;
    let personality = seized.inject(libc::SYS_personality, &[0xffff_ffff], "personality")? as u32;
    let oom_score_adj = std::fs::read_to_string(format!("/proc/{pid}/oom_score_adj"))
        .ctx(pid, || "read oom_score_adj".into())?
        .trim()
        .parse::<i32>()
        .map_err(|e| unsupported(pid, format!("/proc/{pid}/oom_score_adj: {e}")))?;
    let (itimers, posix_timers) = capture_timers(seized, pid, scratch)?;
    seized.inject(
        libc::SYS_munmap,
        &[scratch, page],
        "munmap of the scratch page",
    )?;
    seized.scratch = None;

    let (pending, pending_siginfo) = capture_pending(seized, pid, status.sigpnd | status.shdpnd)?;

    let creds = capture_creds(seized, pid)?;
    let limits = p.limits().ctx(pid, || "read limits".into())?;
    let rlimits = convert_limits(&limits);

    let link = |what: &str| -> Result<String> {
        std::fs::read_link(format!("/proc/{pid}/{what}"))
            .ctx(pid, || format!("readlink {what}"))
            .map(|p| p.to_string_lossy().into_owned())
    };
    let root = link("root")?;
    if root != "/" {
        return Err(unsupported(
            pid,
            format!("its root directory is {root}, not /; chroot is not supported yet"),
        ));
    }

    Ok(wire::Core {
        pid,
        threads,
        sigactions,
        pending_signals: pending,
        pending_siginfo,
        creds: tern_state::creds::to_image(&creds, securebits),
        umask: status.umask.unwrap_or(0o022),
        rlimits,
        cwd: link("cwd")?,
        root,
        was_session_leader: stat.session == pid,
        was_group_leader: stat.pgrp == pid,
        dumpable,
        pdeath_signal,
        personality,
        oom_score_adj,
        itimers,
        posix_timers,
        seccomp,
    })
}

/// The actions of the signals in `interesting` (a mask), read with an
/// injected `rt_sigaction` into `scratch`; the others are the default.
fn capture_sigactions(
    seized: &mut Seized,
    pid: i32,
    scratch: u64,
    interesting: u64,
) -> Result<Vec<wire::SigAction>> {
    let mut sigactions = Vec::with_capacity(64);
    for sig in 1..=64u64 {
        if sig == libc::SIGKILL as u64
            || sig == libc::SIGSTOP as u64
            || interesting & (1u64 << (sig - 1)) == 0
        {
            sigactions.push(wire::SigAction::default());
            continue;
        }
        seized.inject(
            libc::SYS_rt_sigaction,
            &[sig, 0, scratch, 8],
            "rt_sigaction",
        )?;
        let mut raw = [0u8; 32];
        mem::read_fully(pid, scratch, &mut raw).ctx(pid, || "read sigaction".into())?;
        let w = |i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&raw[i * 8..i * 8 + 8]);
            u64::from_le_bytes(b)
        };
        sigactions.push(wire::SigAction {
            handler: w(0),
            flags: w(1),
            restorer: w(2),
            mask: w(3),
        });
    }
    Ok(sigactions)
}

/// Per-thread state, read by running the getters in each thread.
fn capture_threads(seized: &mut Seized, pid: i32, scratch: u64) -> Result<Vec<wire::Thread>> {
    let mut threads = Vec::with_capacity(1 + seized.threads.len());
    let main_regs = seized.found_regs;
    threads.push(capture_thread(
        pid,
        pid,
        &main_regs,
        scratch,
        &mut |nr, a, w| seized.inject(nr, a, w),
    )?);
    for k in 0..seized.threads.len() {
        let tid = seized.threads[k].tid;
        let regs = seized.threads[k].found_regs;
        let t = &mut seized.threads[k];
        threads.push(capture_thread(
            pid,
            tid,
            &regs,
            scratch,
            &mut |nr, a, w| t.inject(nr, a, w),
        )?);
    }
    Ok(threads)
}

/// Interval timers that are armed, and every POSIX timer with its time
/// left.
fn capture_timers(
    seized: &mut Seized,
    pid: i32,
    scratch: u64,
) -> Result<(Vec<wire::Itimer>, Vec<wire::PosixTimer>)> {
    let mut itimers = Vec::new();
    for which in [libc::ITIMER_REAL, libc::ITIMER_VIRTUAL, libc::ITIMER_PROF] {
        seized.inject(libc::SYS_getitimer, &[which as u64, scratch], "getitimer")?;
        let w = |i: u64| read_u64(pid, scratch + 8 * i);
        let interval_us = w(0)? * 1_000_000 + w(1)?;
        let value_us = w(2)? * 1_000_000 + w(3)?;
        if value_us != 0 {
            itimers.push(wire::Itimer {
                which,
                interval_us,
                value_us,
            });
        }
    }
    let mut posix_timers = Vec::new();
    let timers_text = std::fs::read_to_string(format!("/proc/{pid}/timers"))
        .ctx(pid, || "read /proc/PID/timers".into())?;
    for t in proc::parse_posix_timers(&timers_text)
        .map_err(|e| unsupported(pid, format!("/proc/{pid}/timers: {e}")))?
    {
        seized.inject(
            libc::SYS_timer_gettime,
            &[t.id as u64, scratch],
            "timer_gettime",
        )?;
        let w = |i: u64| read_u64(pid, scratch + 8 * i);
        posix_timers.push(wire::PosixTimer {
            id: t.id,
            clock: t.clock,
            notify: t.notify,
            notify_tid: t.notify_tid,
            signo: t.signo,
            sigval: t.sigval,
            interval_ns: w(0)? * 1_000_000_000 + w(1)?,
            value_ns: w(2)? * 1_000_000_000 + w(3)?,
        });
    }
    Ok((itimers, posix_timers))
}

/// Pending signals (`pending_mask`: the process's and the main thread's,
/// from /proc) and every queued one with its siginfo.
fn capture_pending(
    seized: &Seized,
    pid: i32,
    pending_mask: u64,
) -> Result<(Vec<i32>, Vec<wire::QueuedSignal>)> {
    // The queues with their siginfo: the process's, then each thread's.
    let mut pending_siginfo = Vec::new();
    for (tid, shared) in std::iter::once((pid, true))
        .chain(std::iter::once((pid, false)))
        .chain(seized.threads.iter().map(|t| (t.tid, false)))
    {
        for info in ptrace::peek_siginfo(tid, shared)
            .ctx(pid, || format!("PTRACE_PEEKSIGINFO of thread {tid}"))?
        {
            pending_siginfo.push(wire::QueuedSignal {
                tid: if shared { 0 } else { tid },
                info: info.to_vec(),
            });
        }
    }
    let mut pending: BTreeSet<i32> = BTreeSet::new();
    for sig in 1..=64 {
        if pending_mask & (1u64 << (sig - 1)) != 0 {
            pending.insert(sig);
        }
    }
    // Held back while stopping: kept with their siginfo, for the thread
    // that was about to take each.
    for (tid, info) in seized.intercepted_with_info() {
        pending_siginfo.push(wire::QueuedSignal {
            tid,
            info: info.to_vec(),
        });
    }
    if seized.was_stopped {
        // Re-raised after restore: the program comes back stopped, as it was.
        pending.insert(libc::SIGSTOP);
    }

    Ok((pending.into_iter().collect(), pending_siginfo))
}

/// The process's credentials, the same in every thread.
fn capture_creds(seized: &Seized, pid: i32) -> Result<proc::ThreadCreds> {
    // One set of credentials per process in the image: threads that
    // changed their own (raw setresuid, capset) cannot be reproduced.
    let creds = proc::thread_creds(pid, pid).ctx(pid, || "read its credentials".into())?;
    for t in &seized.threads {
        let theirs = proc::thread_creds(pid, t.tid)
            .ctx(pid, || format!("read the credentials of thread {}", t.tid))?;
        let differ = creds.differences(&theirs);
        if !differ.is_empty() {
            return Err(unsupported(
                pid,
                format!(
                    "thread {} has other credentials than the main thread ({}); tern restores one set per process",
                    t.tid,
                    differ.join(", ")
                ),
            ));
        }
    }
    Ok(creds)
}

type Inject<'a> = dyn FnMut(libc::c_long, &[u64], &str) -> Result<u64> + 'a;

/// One thread's state: ptrace getters, plus getters run inside the thread
/// (`inject`) that return data through the scratch page.
fn capture_thread(
    pid: i32,
    tid: i32,
    found_regs: &libc::user_regs_struct,
    scratch: u64,
    inject: &mut Inject<'_>,
) -> Result<wire::Thread> {
    let xstate = ptrace::get_xstate(tid).ctx(pid, || {
        format!("PTRACE_GETREGSET NT_X86_XSTATE of thread {tid}")
    })?;
    let sigmask =
        ptrace::get_sigmask(tid).ctx(pid, || format!("PTRACE_GETSIGMASK of thread {tid}"))?;
    let rseq = ptrace::get_rseq(tid).ctx(pid, || {
        format!("PTRACE_GET_RSEQ_CONFIGURATION of thread {tid}")
    })?;
    let (robust_head, robust_len) =
        tern_sys::robust_list(tid).ctx(tid, || "get_robust_list".into())?;
    inject(libc::SYS_sigaltstack, &[0, scratch], "sigaltstack")?;
    let altstack = wire::AltStack {
        sp: read_u64(pid, scratch)?,
        flags: read_u64(pid, scratch + 8)? as i32,
        size: read_u64(pid, scratch + 16)?,
    };
    inject(
        libc::SYS_prctl,
        &[libc::PR_GET_TID_ADDRESS as u64, scratch],
        "prctl(PR_GET_TID_ADDRESS)",
    )?;
    let clear_child_tid = read_u64(pid, scratch)?;
    let comm = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/comm"))
        .ctx(pid, || format!("read comm of thread {tid}"))?
        .trim_end_matches('\n')
        .to_string();
    let (regs, syscall) = tern_state::regs::registers_for_image(found_regs);
    Ok(wire::Thread {
        tid,
        regs,
        xstate,
        syscall,
        sigmask,
        altstack,
        rseq: (rseq.rseq_abi_pointer != 0).then_some(wire::Rseq {
            addr: rseq.rseq_abi_pointer,
            len: rseq.rseq_abi_size,
            signature: rseq.signature,
        }),
        clear_child_tid,
        robust_list_head: robust_head,
        robust_list_len: robust_len,
        comm,
    })
}

fn convert_limits(l: &procfs::process::Limits) -> Vec<wire::Rlimit> {
    use procfs::process::LimitValue;
    let v = |x: &LimitValue| match x {
        LimitValue::Unlimited => u64::MAX,
        LimitValue::Value(n) => *n,
    };
    let pairs = [
        (libc::RLIMIT_CPU, &l.max_cpu_time),
        (libc::RLIMIT_FSIZE, &l.max_file_size),
        (libc::RLIMIT_DATA, &l.max_data_size),
        (libc::RLIMIT_STACK, &l.max_stack_size),
        (libc::RLIMIT_CORE, &l.max_core_file_size),
        (libc::RLIMIT_RSS, &l.max_resident_set),
        (libc::RLIMIT_NPROC, &l.max_processes),
        (libc::RLIMIT_NOFILE, &l.max_open_files),
        (libc::RLIMIT_MEMLOCK, &l.max_locked_memory),
        (libc::RLIMIT_AS, &l.max_address_space),
        (libc::RLIMIT_LOCKS, &l.max_file_locks),
        (libc::RLIMIT_SIGPENDING, &l.max_pending_signals),
        (libc::RLIMIT_MSGQUEUE, &l.max_msgqueue_size),
        (libc::RLIMIT_NICE, &l.max_nice_priority),
        (libc::RLIMIT_RTPRIO, &l.max_realtime_priority),
        (libc::RLIMIT_RTTIME, &l.max_realtime_timeout),
    ];
    pairs
        .iter()
        .map(|(res, lim)| wire::Rlimit {
            resource: *res,
            cur: v(&lim.soft_limit),
            max: v(&lim.hard_limit),
        })
        .collect()
}
