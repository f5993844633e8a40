//! Thin, checked wrappers over ptrace(2) requests tern uses.
//!
//! All ptrace calls for one tracee must come from the OS thread that
//! attached it; callers keep all work for a tracee on one thread.

use std::io;

/// `PTRACE_GET_RSEQ_CONFIGURATION` (Linux 5.13).
const PTRACE_GET_RSEQ_CONFIGURATION: libc::c_uint = 0x420f;
/// `NT_X86_XSTATE` regset: FPU/SSE/AVX state in XSAVE layout.
const NT_X86_XSTATE: libc::c_int = 0x202;
/// Bigger than any XSAVE area the kernel reports today (AMX is ~11 KiB).
const XSTATE_BUF: usize = 16 << 10;

/// The kernel's internal "restart this syscall" codes (`-rax` of a thread
/// stopped in an interrupted syscall; `include/linux/errno.h`).
pub const ERESTARTSYS: i64 = 512;
pub const ERESTARTNOINTR: i64 = 513;
pub const ERESTARTNOHAND: i64 = 514;
pub const ERESTART_RESTARTBLOCK: i64 = 516;

/// What a traced thread reported through `waitpid`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// `PTRACE_EVENT_STOP`: interrupt stop or group-stop (with its signal).
    EventStop(i32),
    /// Another ptrace event (`PTRACE_EVENT_*`), with the stop signal.
    Event(i32),
    /// Syscall entry or exit (needs `PTRACE_O_TRACESYSGOOD`).
    Syscall,
    /// About to deliver this signal.
    Signal(i32),
    Exited(i32),
    Killed(i32),
}

/// `struct ptrace_rseq_configuration` from `<linux/ptrace.h>`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct RseqConfig {
    pub rseq_abi_pointer: u64,
    pub rseq_abi_size: u32,
    pub signature: u32,
    pub flags: u32,
    pub pad: u32,
}

fn check(ret: libc::c_long) -> io::Result<libc::c_long> {
    if ret == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Issue a ptrace request whose result is only success or failure.
fn request(req: libc::c_uint, tid: i32, addr: usize, data: usize) -> io::Result<()> {
    // SAFETY: every caller passes either integer arguments or pointers to
    // live, correctly sized buffers owned by the caller for the call's span.
    let ret = unsafe {
        libc::ptrace(
            req,
            tid,
            addr as *mut libc::c_void,
            data as *mut libc::c_void,
        )
    };
    check(ret).map(|_| ())
}

pub fn seize(tid: i32, options: libc::c_int) -> io::Result<()> {
    request(libc::PTRACE_SEIZE, tid, 0, options as usize)
}

/// `PTRACE_O_SUSPEND_SECCOMP` (4.3, CONFIG_CHECKPOINT_RESTORE; the tracer
/// needs CAP_SYS_ADMIN): the tracee's seccomp filters do not apply while
/// it is traced with it, so that syscalls tern injects are neither refused
/// nor fatal.
pub const O_SUSPEND_SECCOMP: libc::c_int = 0x0020_0000;

/// For a thread already in a ptrace stop: its tracing `options` (those it
/// was seized with), plus [`O_SUSPEND_SECCOMP`] where it runs under
/// seccomp. Only once it is stopped: a thread seized with the option but
/// still running makes its syscalls with its filters suspended (a
/// sandboxed program's worker thread was seen to get past its filter in
/// that window).
pub fn suspend_seccomp(tid: i32, options: libc::c_int) -> io::Result<()> {
    if crate::proc::seccomp_mode(tid).unwrap_or(0) == 0 {
        return Ok(());
    }
    set_options(tid, options | O_SUSPEND_SECCOMP)
}

/// The `index`th seccomp filter of stopped thread `tid` (0: the one
/// installed last), as raw `struct sock_filter`s (8 bytes each); `None`
/// past the oldest. `PTRACE_SECCOMP_GET_FILTER` (4.4, CONFIG_SECCOMP_FILTER
/// and CONFIG_CHECKPOINT_RESTORE; CAP_SYS_ADMIN).
pub fn seccomp_filter(tid: i32, index: u64) -> io::Result<Option<Vec<u8>>> {
    const PTRACE_SECCOMP_GET_FILTER: libc::c_uint = 0x420c;
    // SAFETY: with a null buffer the kernel only returns the filter's
    // length in instructions.
    let count = unsafe {
        libc::ptrace(
            PTRACE_SECCOMP_GET_FILTER,
            tid,
            index as *mut libc::c_void,
            std::ptr::null_mut::<libc::c_void>(),
        )
    };
    let count = match check(count) {
        Ok(n) => n,
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(None),
        Err(e) => return Err(e),
    };
    let len = usize::try_from(count).map_err(|_| io::Error::other("negative filter length"))?;
    let mut raw = vec![0u8; len * 8];
    // SAFETY: `raw` holds `count` 8-byte `struct sock_filter`s, what the
    // kernel writes for this filter (filters cannot change once installed).
    let wrote = unsafe {
        libc::ptrace(
            PTRACE_SECCOMP_GET_FILTER,
            tid,
            index as *mut libc::c_void,
            raw.as_mut_ptr().cast::<libc::c_void>(),
        )
    };
    if check(wrote)? != count {
        return Err(io::Error::other(
            "the filter's length changed between two reads",
        ));
    }
    Ok(Some(raw))
}

/// The flags seccomp filter `index` of `tid` was installed with (only
/// `SECCOMP_FILTER_FLAG_LOG` is kept by the kernel):
/// `PTRACE_GET_SECCOMP_METADATA` (4.16).
pub fn seccomp_filter_flags(tid: i32, index: u64) -> io::Result<u64> {
    const PTRACE_GET_SECCOMP_METADATA: libc::c_uint = 0x420d;
    // struct seccomp_metadata { __u64 filter_off; __u64 flags; }
    let mut meta = [index, 0u64];
    // SAFETY: `meta` is a 16-byte `struct seccomp_metadata`, its size
    // passed as `addr`; the kernel reads filter_off and writes flags.
    let ret = unsafe {
        libc::ptrace(
            PTRACE_GET_SECCOMP_METADATA,
            tid,
            std::mem::size_of_val(&meta) as *mut libc::c_void,
            meta.as_mut_ptr().cast::<libc::c_void>(),
        )
    };
    check(ret)?;
    Ok(meta[1])
}

pub fn interrupt(tid: i32) -> io::Result<()> {
    request(libc::PTRACE_INTERRUPT, tid, 0, 0)
}

pub fn set_options(tid: i32, options: libc::c_int) -> io::Result<()> {
    request(libc::PTRACE_SETOPTIONS, tid, 0, options as usize)
}

pub fn cont(tid: i32, sig: i32) -> io::Result<()> {
    request(libc::PTRACE_CONT, tid, 0, sig as usize)
}

pub fn syscall(tid: i32, sig: i32) -> io::Result<()> {
    request(libc::PTRACE_SYSCALL, tid, 0, sig as usize)
}

pub fn detach(tid: i32, sig: i32) -> io::Result<()> {
    request(libc::PTRACE_DETACH, tid, 0, sig as usize)
}

/// Wait for the next state change of `tid` (a thread we trace).
pub fn wait(tid: i32) -> io::Result<Stop> {
    let mut status = 0;
    loop {
        // SAFETY: `status` is a valid out-pointer for the call.
        let r = unsafe { libc::waitpid(tid, &mut status, libc::__WALL) };
        if r == -1 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        break;
    }
    Ok(decode_status(status))
}

fn decode_status(status: i32) -> Stop {
    if libc::WIFEXITED(status) {
        return Stop::Exited(libc::WEXITSTATUS(status));
    }
    if libc::WIFSIGNALED(status) {
        return Stop::Killed(libc::WTERMSIG(status));
    }
    let sig = libc::WSTOPSIG(status);
    let event = status >> 16;
    if event == libc::PTRACE_EVENT_STOP {
        Stop::EventStop(sig)
    } else if event != 0 {
        Stop::Event(event)
    } else if sig == libc::SIGTRAP | 0x80 {
        Stop::Syscall
    } else {
        Stop::Signal(sig)
    }
}

/// The siginfo of the signal `tid` is stopped to deliver
/// (PTRACE_GETSIGINFO), as its 128 raw bytes.
pub fn get_siginfo(tid: i32) -> io::Result<[u8; 128]> {
    let mut info = [0u8; 128];
    request(libc::PTRACE_GETSIGINFO, tid, 0, info.as_mut_ptr() as usize)?;
    Ok(info)
}

/// Send signal `sig` to thread `tid` of `pid` again with its siginfo
/// `info` where the kernel lets a sender set it (rt_tgsigqueueinfo takes
/// any negative si_code but SI_TKILL: timers, sigqueue, AIO), else with
/// tgkill (then it arrives as SI_TKILL, without its data); `tid` 0: to the
/// process (rt_sigqueueinfo / kill).
pub fn replay_signal(pid: i32, tid: i32, info: &[u8]) {
    if info.len() < 12 {
        return;
    }
    let word = |o: usize| i32::from_le_bytes([info[o], info[o + 1], info[o + 2], info[o + 3]]);
    let (sig, code) = (word(0), word(8));
    const SI_TKILL: i32 = -6;
    let mut full = [0u8; 128];
    full[..info.len().min(128)].copy_from_slice(&info[..info.len().min(128)]);
    // SAFETY: plain syscalls; `full` is a 128-byte siginfo_t the kernel
    // only reads.
    unsafe {
        let queued = code < 0 && code != SI_TKILL && {
            let r = if tid == 0 {
                libc::syscall(libc::SYS_rt_sigqueueinfo, pid, sig, full.as_ptr())
            } else {
                libc::syscall(libc::SYS_rt_tgsigqueueinfo, pid, tid, sig, full.as_ptr())
            };
            r == 0
        };
        if !queued {
            if tid == 0 {
                libc::kill(pid, sig);
            } else {
                libc::syscall(libc::SYS_tgkill, pid, tid, sig);
            }
        }
    }
}

pub fn get_regs(tid: i32) -> io::Result<libc::user_regs_struct> {
    // SAFETY: user_regs_struct is plain integers; all-zero is valid.
    let mut regs: libc::user_regs_struct = unsafe { std::mem::zeroed() };
    let mut iov = libc::iovec {
        iov_base: (&mut regs as *mut libc::user_regs_struct).cast(),
        iov_len: std::mem::size_of::<libc::user_regs_struct>(),
    };
    request(
        libc::PTRACE_GETREGSET,
        tid,
        libc::NT_PRSTATUS as usize,
        &mut iov as *mut libc::iovec as usize,
    )?;
    Ok(regs)
}

pub fn set_regs(tid: i32, regs: &libc::user_regs_struct) -> io::Result<()> {
    let mut copy = *regs;
    let mut iov = libc::iovec {
        iov_base: (&mut copy as *mut libc::user_regs_struct).cast(),
        iov_len: std::mem::size_of::<libc::user_regs_struct>(),
    };
    request(
        libc::PTRACE_SETREGSET,
        tid,
        libc::NT_PRSTATUS as usize,
        &mut iov as *mut libc::iovec as usize,
    )
}

/// The thread's XSAVE area (x87, SSE, AVX, ...), as long as the kernel says.
pub fn get_xstate(tid: i32) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; XSTATE_BUF];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    request(
        libc::PTRACE_GETREGSET,
        tid,
        NT_X86_XSTATE as usize,
        &mut iov as *mut libc::iovec as usize,
    )?;
    buf.truncate(iov.iov_len);
    Ok(buf)
}

pub fn set_xstate(tid: i32, xstate: &[u8]) -> io::Result<()> {
    let mut buf = xstate.to_vec();
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    request(
        libc::PTRACE_SETREGSET,
        tid,
        NT_X86_XSTATE as usize,
        &mut iov as *mut libc::iovec as usize,
    )
}

pub fn get_sigmask(tid: i32) -> io::Result<u64> {
    let mut mask = 0u64;
    request(
        libc::PTRACE_GETSIGMASK,
        tid,
        8,
        &mut mask as *mut u64 as usize,
    )?;
    Ok(mask)
}

pub fn set_sigmask(tid: i32, mask: u64) -> io::Result<()> {
    let mut m = mask;
    request(libc::PTRACE_SETSIGMASK, tid, 8, &mut m as *mut u64 as usize)
}

/// rseq registration of the thread; `rseq_abi_pointer == 0` if none.
pub fn get_rseq(tid: i32) -> io::Result<RseqConfig> {
    let mut conf = RseqConfig::default();
    request(
        PTRACE_GET_RSEQ_CONFIGURATION,
        tid,
        std::mem::size_of::<RseqConfig>(),
        &mut conf as *mut RseqConfig as usize,
    )?;
    Ok(conf)
}

/// The signals queued for thread `tid` (or, with `shared`, for its whole
/// process), each as its 128-byte `siginfo_t`, without dequeuing them
/// (PTRACE_PEEKSIGINFO, Linux 3.10).
pub fn peek_siginfo(tid: i32, shared: bool) -> io::Result<Vec<[u8; 128]>> {
    #[repr(C)]
    struct PeekArgs {
        off: u64,
        flags: u32,
        nr: i32,
    }
    const PEEKSIGINFO_SHARED: u32 = 1;
    const BATCH: usize = 32;
    let mut out = Vec::new();
    loop {
        let mut args = PeekArgs {
            off: out.len() as u64,
            flags: if shared { PEEKSIGINFO_SHARED } else { 0 },
            nr: BATCH as i32,
        };
        let mut buf = [[0u8; 128]; BATCH];
        // SAFETY: PTRACE_PEEKSIGINFO reads `args` and writes at most `nr`
        // 128-byte siginfo records into `buf`, which holds that many.
        let n = unsafe {
            libc::ptrace(
                0x4209, // PTRACE_PEEKSIGINFO
                tid,
                &mut args as *mut PeekArgs,
                buf.as_mut_ptr(),
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let n = n as usize;
        out.extend_from_slice(&buf[..n.min(BATCH)]);
        if n < BATCH || out.len() > 4096 {
            return Ok(out);
        }
    }
}

/// A register set of all zeroes (to fill in).
pub fn zeroed_regs() -> libc::user_regs_struct {
    // SAFETY: user_regs_struct is plain integers; all-zero is valid.
    unsafe { std::mem::zeroed() }
}
