//! The probes behind `tern check` (the counterpart of `criu check`).
//!
//! Every probe exercises the kernel feature it names on this machine, right
//! now: it forks a small child and attaches to it, registers a real
//! userfaultfd range, creates and removes a real cgroup, and so on. Nothing
//! is inferred from the kernel version. A probe that cannot run (not root, a
//! feature compiled out, a file system not mounted) reports `available: false`
//! with the reason; no probe panics, and each one removes what it created
//! (children killed and reaped by pid, cgroups removed, fds closed, mappings
//! unmapped) before it returns.
//!
//! Children are created with `fork()` from a process that may have other
//! threads, so a child only ever runs async-signal-safe code (raw syscalls, no
//! allocation, no locks) and ends with `_exit`.

use std::ffi::c_void;
use std::fs;
use std::io;
use std::mem::size_of;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::ptr;
use std::time::{Duration, Instant};

use libc::{c_int, c_long, c_uint, c_ulong, pid_t};

/// One kernel feature tern may use, probed on this machine.
#[derive(Debug, Clone)]
pub struct Probe {
    /// Short id, e.g. `"ptrace-seize"`.
    pub name: &'static str,
    /// Whether the feature worked when exercised just now.
    pub available: bool,
    /// What was found: `"ok: ..."` with a measured value, or why it failed.
    pub detail: String,
    /// Which part of tern needs it, e.g. `"dump"` or `"tracker uffd-wp"`.
    pub needed_for: &'static str,
}

/// What a probe found: `Ok(what worked)` or `Err(why not)`.
pub(crate) type Outcome = Result<String, String>;

/// One probe: exercises a feature and says what happened.
type ProbeFn = fn() -> Outcome;

/// Every probe, in the order `tern check` prints them: name, consumer, probe.
const PROBES: &[(&str, &str, ProbeFn)] = &[
    (
        "checkpoint-restore-cap",
        "restore (clone3 set_tid, map_files)",
        probe_checkpoint_restore_cap,
    ),
    ("ptrace-seize", "dump, restore", probe_ptrace_seize),
    (
        "mount-namespace-build",
        "restore of a mount namespace (containers)",
        probe_mount_namespace_build,
    ),
    (
        "pid-namespace-init",
        "restore of a PID namespace's init (containers)",
        probe_pid_namespace_init,
    ),
    (
        "sock-diag-bound-inactive",
        "dump (does a closed TCP socket hold its port)",
        crate::sock_diag::probe_bound_inactive,
    ),
    (
        "xstate-regset",
        "dump, restore (FPU/AVX registers)",
        probe_xstate_regset,
    ),
    (
        "rseq-config",
        "dump, restore (rseq registration)",
        probe_rseq_config,
    ),
    (
        "process-vm-readv",
        "dump, restore (bulk memory)",
        probe_process_vm_readv,
    ),
    (
        "proc-pid-mem",
        "dump, restore (unreadable pages)",
        probe_proc_pid_mem,
    ),
    (
        "pidfd-getfd",
        "dump (files), tracker uffd-wp",
        probe_pidfd_getfd,
    ),
    ("kcmp", "dump (shared files)", probe_kcmp),
    (
        "get-robust-list",
        "dump (robust futex list)",
        probe_get_robust_list,
    ),
    (
        "pr-get-tid-address",
        "dump (clear_child_tid)",
        probe_pr_get_tid_address,
    ),
    (
        "clone3-set-tid",
        "restore (same pid/tids)",
        probe_clone3_set_tid,
    ),
    (
        "pid-namespace",
        "restore where the ids are taken (fresh PID namespace)",
        probe_pid_namespace,
    ),
    (
        "posix-timer-ids",
        "restore (POSIX timers under their ids)",
        probe_posix_timer_ids,
    ),
    (
        "timerfd-set-ticks",
        "restore (timerfd unread expirations)",
        probe_timerfd_set_ticks,
    ),
    (
        "seccomp-filters",
        "dump, restore (programs under seccomp filters)",
        probe_seccomp_filters,
    ),
    (
        "tcp-repair",
        "--tcp-established (TCP repair mode, repair window)",
        probe_tcp_repair,
    ),
    (
        "nftables-lock",
        "--tcp-established (packets of moving connections dropped)",
        probe_nftables_lock,
    ),
    (
        "pr-set-mm-map",
        "restore (mm fields, exe link, auxv)",
        probe_pr_set_mm_map,
    ),
    (
        "vdso-mremap",
        "restore (vdso/vvar placement)",
        probe_vdso_mremap,
    ),
    (
        "map-files",
        "dump (deleted or memfd-backed mappings)",
        probe_map_files,
    ),
    ("soft-dirty", "tracker soft-dirty", probe_soft_dirty),
    ("uffd-wp-async", "tracker uffd-wp", probe_uffd_wp_async),
    ("pagemap-scan", "tracker uffd-wp", probe_pagemap_scan),
    (
        "uffd-missing-events",
        "--policy hybrid|postcopy (post-copy); fills fresh memory on restore and places the pages a stop-and-copy streams (both write the pages instead without it)",
        probe_uffd_missing_events,
    ),
    (
        "cgroup-freezer-v1",
        "freezer cgroup",
        probe_cgroup_freezer_v1,
    ),
    (
        "cgroup-freezer-v2",
        "freezer cgroup",
        probe_cgroup_freezer_v2,
    ),
    (
        "cgroup-placement",
        "restore into the image's cgroups (--manage-cgroups soft)",
        probe_cgroup_placement,
    ),
];

/// Run every probe and return one [`Probe`] per kernel feature.
pub fn run_all() -> Vec<Probe> {
    PROBES
        .iter()
        .map(|&(name, needed_for, probe)| {
            // A panic would be a bug in a probe, not a property of the kernel;
            // report it as such instead of taking `tern check` down.
            let outcome =
                catch_unwind(probe).unwrap_or_else(|_| Err("probe panicked (bug in tern)".into()));
            let (available, detail) = match outcome {
                Ok(what) => (true, format!("ok: {what}")),
                Err(why) => (false, why),
            };
            Probe {
                name,
                available,
                detail,
                needed_for,
            }
        })
        .collect()
}

// ---------------------------------------------------------------------------
// Kernel constants and structs that the libc crate does not carry (values from
// the kernel's uapi headers).

const NT_X86_XSTATE: usize = 0x202;
const PTRACE_GET_RSEQ_CONFIGURATION: c_uint = 0x420f;
const KCMP_FILE: c_int = 0;
const CAP_SYS_PTRACE: u32 = 19;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_SYS_RESOURCE: u32 = 24;
const CAP_CHECKPOINT_RESTORE: u32 = 40;

/// `struct ptrace_rseq_configuration` (`include/uapi/linux/ptrace.h`).
#[repr(C)]
#[derive(Default)]
struct RseqConfiguration {
    rseq_abi_pointer: u64,
    rseq_abi_size: u32,
    signature: u32,
    flags: u32,
    pad: u32,
}

use crate::proc::{PM_PRESENT, PM_SOFT_DIRTY};
use crate::uffd::*;
use crate::CloneArgs;

/// `struct prctl_mm_map` (`include/uapi/linux/prctl.h`).
#[repr(C)]
struct PrctlMmMap {
    start_code: u64,
    end_code: u64,
    start_data: u64,
    end_data: u64,
    start_brk: u64,
    brk: u64,
    start_stack: u64,
    arg_start: u64,
    arg_end: u64,
    env_start: u64,
    env_end: u64,
    auxv: *const u64,
    auxv_size: u32,
    exe_fd: u32,
}

const _: () = assert!(size_of::<RseqConfiguration>() == 24);
#[cfg(target_pointer_width = "64")]
const _: () = assert!(size_of::<PrctlMmMap>() == 104);

// ---------------------------------------------------------------------------
// Small shared helpers: errno text, owned fds, mappings, children.

/// The calling thread's errno (async-signal-safe: reads a thread-local).
fn last_errno() -> c_int {
    io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// Symbolic name of the errnos these probes can meet.
fn errno_name(e: c_int) -> &'static str {
    match e {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::ESRCH => "ESRCH",
        libc::EINTR => "EINTR",
        libc::EIO => "EIO",
        libc::EBADF => "EBADF",
        libc::ECHILD => "ECHILD",
        libc::EAGAIN => "EAGAIN",
        libc::ENOMEM => "ENOMEM",
        libc::EACCES => "EACCES",
        libc::EFAULT => "EFAULT",
        libc::EBUSY => "EBUSY",
        libc::EEXIST => "EEXIST",
        libc::ENODEV => "ENODEV",
        libc::EINVAL => "EINVAL",
        libc::ENOTTY => "ENOTTY",
        libc::EROFS => "EROFS",
        libc::ENOSYS => "ENOSYS",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        _ => "errno",
    }
}

/// `"EPERM: Operation not permitted (os error 1)"`.
fn errno_text(e: c_int) -> String {
    format!("{}: {}", errno_name(e), io::Error::from_raw_os_error(e))
}

/// `"<what> failed: <errno>"` for the errno the last call left.
fn sys_err(what: &str) -> String {
    format!("{what} failed: {}", errno_text(last_errno()))
}

/// `"<what>: <io error>"`, naming the errno when there is one.
fn io_err(what: &str, e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(code) => format!("{what}: {}", errno_text(code)),
        None => format!("{what}: {e}"),
    }
}

/// Take ownership of a descriptor a syscall just returned (negative = failed).
fn own_fd(ret: c_long, what: &str) -> Result<OwnedFd, String> {
    match c_int::try_from(ret) {
        Ok(fd) if fd >= 0 => {
            // SAFETY: `fd` was just returned by the kernel as a new descriptor
            // that nothing else in this process owns or will close.
            Ok(unsafe { OwnedFd::from_raw_fd(fd) })
        }
        _ => Err(sys_err(what)),
    }
}

/// A pipe (read end, write end), both close-on-exec.
fn pipe() -> Result<(OwnedFd, OwnedFd), String> {
    let mut fds = [-1 as c_int; 2];
    // SAFETY: `fds` is a writable array of two ints, as pipe2 requires.
    let ret = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    if ret != 0 {
        return Err(sys_err("pipe2"));
    }
    Ok((
        own_fd(fds[0].into(), "pipe2")?,
        own_fd(fds[1].into(), "pipe2")?,
    ))
}

fn page_size() -> usize {
    crate::page_size() as usize
}

fn getpid() -> pid_t {
    // SAFETY: getpid has no preconditions and cannot fail.
    unsafe { libc::getpid() }
}

/// An anonymous mapping, unmapped on drop.
struct Mapping {
    addr: *mut u8,
    len: usize,
}

impl Mapping {
    /// `mmap(NULL, len, prot, MAP_ANONYMOUS | (shared ? MAP_SHARED : MAP_PRIVATE))`.
    fn anon(len: usize, prot: c_int, shared: bool) -> Result<Mapping, String> {
        let kind = if shared {
            libc::MAP_SHARED
        } else {
            libc::MAP_PRIVATE
        };
        // SAFETY: a fresh anonymous mapping at an address the kernel picks
        // cannot alias any existing Rust object.
        let addr = unsafe {
            libc::mmap(
                ptr::null_mut(),
                len,
                prot,
                kind | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(sys_err("mmap"));
        }
        Ok(Mapping {
            addr: addr.cast(),
            len,
        })
    }

    fn start(&self) -> u64 {
        self.addr as u64
    }

    /// Volatile write of one byte at `offset` (so the compiler keeps every
    /// write the kernel is meant to see).
    fn poke(&self, offset: usize, value: u8) {
        assert!(offset < self.len, "offset inside the mapping");
        // SAFETY: `offset < len`, and the mapping is readable and writable
        // whenever this is called (callers only poke read-write mappings).
        unsafe { self.addr.add(offset).write_volatile(value) }
    }

    /// Volatile read of the 8-byte word at word index `index`.
    fn word(&self, index: usize) -> i64 {
        assert!((index + 1) * 8 <= self.len, "word inside the mapping");
        // SAFETY: in bounds (checked above), page-aligned base so aligned, and
        // only called on readable mappings.
        unsafe { self.addr.cast::<i64>().add(index).read_volatile() }
    }

    /// Volatile write of the 8-byte word at word index `index`.
    fn set_word(&self, index: usize, value: i64) {
        assert!((index + 1) * 8 <= self.len, "word inside the mapping");
        // SAFETY: as in `word`, and the mapping is writable.
        unsafe { self.addr.cast::<i64>().add(index).write_volatile(value) }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: exactly the range our own mmap returned; no reference into
        // it outlives `self`.
        unsafe { libc::munmap(self.addr.cast(), self.len) };
    }
}

/// How a child ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Exit {
    Code(c_int),
    Signal(c_int),
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Exit::Code(c) => write!(f, "exit code {c}"),
            Exit::Signal(s) => write!(f, "killed by signal {s}"),
        }
    }
}

/// A child process of ours, killed (SIGKILL) and reaped by pid on drop.
struct Child {
    pid: pid_t,
    reaped: bool,
}

impl Child {
    /// Fork a child that runs `body` and `_exit`s with its result.
    ///
    /// `body` runs in a copy of this possibly multi-threaded process in which
    /// only the forking thread exists: it must do only async-signal-safe
    /// work (raw syscalls, plain loads and stores), and must not allocate,
    /// free, lock, or drop anything that owns memory.
    fn spawn<F: FnOnce() -> c_int>(body: F) -> Result<Child, String> {
        // SAFETY: fork has no memory-safety preconditions. In the child only
        // `body` runs (under the contract above) and then `_exit`, so no
        // state copied from other threads (locks, allocator) is touched and
        // no destructor or atexit handler of the parent's objects runs.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(sys_err("fork"));
        }
        if pid == 0 {
            // Never unwind back into the parent's frames from the child.
            let code = catch_unwind(AssertUnwindSafe(body)).unwrap_or(127);
            // SAFETY: `_exit` ends this child immediately; nothing after it runs.
            unsafe { libc::_exit(code) }
        }
        Ok(Child { pid, reaped: false })
    }

    /// A child that sleeps in `pause()` until killed; returns once the child
    /// is asleep (so a stop catches it inside the syscall).
    fn paused() -> Result<Child, String> {
        let child = Child::spawn(|| loop {
            // SAFETY: pause has no preconditions.
            unsafe { libc::pause() };
        })?;
        child.wait_until_sleeping(Duration::from_secs(2));
        Ok(child)
    }

    /// Poll `/proc/PID/stat` until the child is in state S (best effort).
    fn wait_until_sleeping(&self, timeout: Duration) {
        let path = format!("/proc/{}/stat", self.pid);
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(stat) = fs::read_to_string(&path) {
                if crate::proc::stat_fields(&stat).first() == Some(&"S") {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// `waitpid(pid, __WALL | extra)`, retrying on EINTR. `Ok(None)` when
    /// WNOHANG found nothing to report.
    fn waitpid(&self, extra: c_int) -> Result<Option<c_int>, String> {
        loop {
            let mut status: c_int = 0;
            // SAFETY: `status` is a valid out-pointer; the pid is our child.
            let ret = unsafe { libc::waitpid(self.pid, &mut status, libc::__WALL | extra) };
            if ret == self.pid {
                return Ok(Some(status));
            }
            if ret == 0 {
                return Ok(None);
            }
            if last_errno() != libc::EINTR {
                return Err(sys_err(&format!("waitpid({})", self.pid)));
            }
        }
    }

    /// Wait for the next ptrace stop of a traced child and return its status.
    fn wait_stop(&self) -> Result<c_int, String> {
        match self.waitpid(0)? {
            Some(st) if libc::WIFSTOPPED(st) => Ok(st),
            Some(st) => Err(format!(
                "child {} ended instead of stopping: {}",
                self.pid,
                decode_exit(st)
            )),
            None => Err("waitpid returned nothing".into()),
        }
    }

    /// Wait (polling) for a child that is expected to exit on its own; kill
    /// it after `timeout`.
    fn wait_exit(&mut self, timeout: Duration) -> Result<Exit, String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.waitpid(libc::WNOHANG)? {
                if libc::WIFEXITED(st) || libc::WIFSIGNALED(st) {
                    self.reaped = true;
                    return Ok(decode_exit(st));
                }
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "child {} did not exit within {timeout:?}",
                    self.pid
                ));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if self.reaped {
            return;
        }
        // SAFETY: kill has no memory-safety preconditions; the pid is our own
        // unreaped child, so it cannot have been recycled for another process.
        unsafe { libc::kill(self.pid, libc::SIGKILL) };
        // SIGKILL also ends a ptrace-stopped child; a few stop reports may
        // still come first. Bounded so a surprise can never hang us.
        for _ in 0..64 {
            match self.waitpid(0) {
                Ok(Some(st)) if libc::WIFEXITED(st) || libc::WIFSIGNALED(st) => break,
                Ok(_) => continue,
                Err(_) => break,
            }
        }
        self.reaped = true;
    }
}

fn decode_exit(status: c_int) -> Exit {
    if libc::WIFSIGNALED(status) {
        Exit::Signal(libc::WTERMSIG(status))
    } else {
        Exit::Code(libc::WEXITSTATUS(status))
    }
}

/// `ptrace(req, pid, addr, data)`; `Err(errno)` on -1.
fn ptrace(req: c_uint, pid: pid_t, addr: usize, data: usize) -> Result<c_long, c_int> {
    // SAFETY: every caller passes, for requests that write through `data`, a
    // pointer to a live buffer of the size the request implies; the others
    // pass plain integers.
    let ret = unsafe { libc::ptrace(req, pid, addr as *mut c_void, data as *mut c_void) };
    if ret == -1 {
        Err(last_errno())
    } else {
        Ok(ret)
    }
}

/// A paused child, seized with `PTRACE_O_EXITKILL | PTRACE_O_TRACESYSGOOD`
/// and brought to a group-stop with `PTRACE_INTERRUPT`.
fn seized_child() -> Result<Child, String> {
    let child = Child::paused()?;
    let opts = (libc::PTRACE_O_EXITKILL | libc::PTRACE_O_TRACESYSGOOD) as usize;
    ptrace(libc::PTRACE_SEIZE, child.pid, 0, opts)
        .map_err(|e| format!("PTRACE_SEIZE: {}", errno_text(e)))?;
    ptrace(libc::PTRACE_INTERRUPT, child.pid, 0, 0)
        .map_err(|e| format!("PTRACE_INTERRUPT: {}", errno_text(e)))?;
    let status = child.wait_stop()?;
    if status >> 16 != libc::PTRACE_EVENT_STOP {
        return Err(format!(
            "expected PTRACE_EVENT_STOP after PTRACE_INTERRUPT, got wait status {status:#x}"
        ));
    }
    Ok(child)
}

/// `PTRACE_GETREGSET` of note type `nt` into `buf`; returns the bytes filled.
fn getregset(pid: pid_t, nt: usize, buf: &mut [u8]) -> Result<usize, c_int> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    ptrace(
        libc::PTRACE_GETREGSET,
        pid,
        nt,
        ptr::addr_of_mut!(iov) as usize,
    )?;
    Ok(iov.iov_len)
}

/// Kernel-internal restart codes a thread stopped in a syscall shows in rax.
fn restart_code_name(rax: i64) -> Option<&'static str> {
    match rax {
        -512 => Some("ERESTARTSYS"),
        -513 => Some("ERESTARTNOINTR"),
        -514 => Some("ERESTARTNOHAND"),
        -516 => Some("ERESTART_RESTARTBLOCK"),
        _ => None,
    }
}

/// Effective capability mask of this process, from `/proc/self/status`.
fn effective_caps() -> Result<u64, String> {
    let status = fs::read_to_string("/proc/self/status")
        .map_err(|e| io_err("read /proc/self/status", &e))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .ok_or_else(|| "no CapEff line in /proc/self/status".to_string())
}

fn has_cap(caps: u64, bit: u32) -> bool {
    (caps >> bit) & 1 == 1
}

/// One `/proc/PID/maps` line: start, end, path (may be empty).
fn parse_maps_line(line: &str) -> Option<(u64, u64, u64, &str)> {
    let mut parts = line.splitn(6, char::is_whitespace);
    let range = parts.next()?;
    let (start, end) = range.split_once('-')?;
    let _perms = parts.next()?;
    let _offset = parts.next()?;
    let _dev = parts.next()?;
    let inode = parts.next()?.parse().ok()?;
    let path = parts.next().unwrap_or("").trim();
    Some((
        u64::from_str_radix(start, 16).ok()?,
        u64::from_str_radix(end, 16).ok()?,
        inode,
        path,
    ))
}

// ---------------------------------------------------------------------------
// The probes.

fn probe_checkpoint_restore_cap() -> Outcome {
    let caps = effective_caps()?;
    let yes_no = |bit| if has_cap(caps, bit) { "yes" } else { "no" };
    let summary = format!(
        "CapEff {caps:#x}: CAP_CHECKPOINT_RESTORE {}, CAP_SYS_ADMIN {}, CAP_SYS_PTRACE {}, CAP_SYS_RESOURCE {}{}",
        yes_no(CAP_CHECKPOINT_RESTORE),
        yes_no(CAP_SYS_ADMIN),
        yes_no(CAP_SYS_PTRACE),
        yes_no(CAP_SYS_RESOURCE),
        if has_cap(caps, CAP_SYS_RESOURCE) {
            ""
        } else {
            " (so prlimit() on other users' processes fails: read /proc/PID/limits)"
        }
    );
    if has_cap(caps, CAP_CHECKPOINT_RESTORE) || has_cap(caps, CAP_SYS_ADMIN) {
        Ok(summary)
    } else {
        Err(format!(
            "{summary}; clone3 set_tid and map_files need CAP_CHECKPOINT_RESTORE or CAP_SYS_ADMIN"
        ))
    }
}

fn probe_ptrace_seize() -> Outcome {
    let child = seized_child()?;
    let mut regs = [0u8; 1024];
    let len = getregset(child.pid, libc::NT_PRSTATUS as usize, &mut regs)
        .map_err(|e| format!("PTRACE_GETREGSET NT_PRSTATUS: {}", errno_text(e)))?;
    let mut mask: u64 = 0;
    ptrace(
        libc::PTRACE_GETSIGMASK,
        child.pid,
        size_of::<u64>(),
        ptr::addr_of_mut!(mask) as usize,
    )
    .map_err(|e| format!("PTRACE_GETSIGMASK: {}", errno_text(e)))?;
    let mut what = format!(
        "seized pid {} (EXITKILL|TRACESYSGOOD), PTRACE_INTERRUPT -> PTRACE_EVENT_STOP, NT_PRSTATUS {len} bytes, sigmask {mask:#x}",
        child.pid
    );
    if cfg!(target_arch = "x86_64") && len >= 17 * 8 {
        // user_regs_struct: rax is word 10, orig_rax word 15.
        let word = |i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&regs[i * 8..i * 8 + 8]);
            i64::from_ne_bytes(b)
        };
        let (rax, orig_rax) = (word(10), word(15));
        let code = restart_code_name(rax)
            .map(|n| format!(" = -{n}"))
            .unwrap_or_default();
        what.push_str(&format!(
            "; stopped in syscall {orig_rax} (pause) with rax {rax}{code}"
        ));
    }
    Ok(what)
}

fn probe_xstate_regset() -> Outcome {
    let child = seized_child()?;
    let mut buf = vec![0u8; 64 * 1024];
    let len = getregset(child.pid, NT_X86_XSTATE, &mut buf)
        .map_err(|e| format!("PTRACE_GETREGSET NT_X86_XSTATE (0x202): {}", errno_text(e)))?;
    // Bytes 464..512 of the FXSAVE area are the kernel's software-reserved
    // block; XCR0 (the enabled xfeatures) is stored at offset 464.
    let xcr0 = buf.get(464..472).map(|b| {
        let mut w = [0u8; 8];
        w.copy_from_slice(b);
        u64::from_ne_bytes(w)
    });
    match xcr0 {
        Some(x) if len >= 512 => Ok(format!("{len}-byte xstate, XCR0 {x:#x}")),
        _ => Ok(format!("{len}-byte xstate")),
    }
}

fn probe_rseq_config() -> Outcome {
    let child = seized_child()?;
    let mut conf = RseqConfiguration::default();
    let got = ptrace(
        PTRACE_GET_RSEQ_CONFIGURATION,
        child.pid,
        size_of::<RseqConfiguration>(),
        ptr::addr_of_mut!(conf) as usize,
    )
    .map_err(|e| {
        format!(
            "PTRACE_GET_RSEQ_CONFIGURATION (0x420f): {} (needs 5.13+)",
            errno_text(e)
        )
    })?;
    if conf.rseq_abi_pointer == 0 {
        Ok(format!("{got}-byte answer; the child has no rseq registered (libc without rseq, or glibc.pthread.rseq=0)"))
    } else {
        Ok(format!(
            "{got}-byte answer: rseq area {:#x}, size {}, signature {:#x}, flags {}",
            conf.rseq_abi_pointer, conf.rseq_abi_size, conf.signature, conf.flags
        ))
    }
}

fn probe_process_vm_readv() -> Outcome {
    // A buffer the child inherits at the same address: read it back, then
    // overwrite the child's copy and read again.
    let len = 64 * 1024;
    let original: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
    let child = Child::paused()?;
    let remote = libc::iovec {
        iov_base: original.as_ptr() as *mut c_void,
        iov_len: len,
    };

    let mut back = vec![0u8; len];
    vm_readv(child.pid, &mut back, &remote)?;
    if back != original {
        return Err("process_vm_readv returned different bytes than the child holds".into());
    }

    let changed: Vec<u8> = original.iter().map(|b| !b).collect();
    let local = libc::iovec {
        iov_base: changed.as_ptr() as *mut c_void,
        iov_len: len,
    };
    // SAFETY: `local` describes `changed`, alive and `len` bytes long; the
    // remote range is the child's copy of `original` (same address, len).
    let wrote = unsafe { libc::process_vm_writev(child.pid, &local, 1, &remote, 1, 0) };
    if wrote != len as isize {
        return Err(sys_err("process_vm_writev"));
    }
    vm_readv(child.pid, &mut back, &remote)?;
    if back != changed {
        return Err("process_vm_writev did not change the child's memory".into());
    }
    Ok(format!(
        "read and wrote {len} bytes of pid {} (process_vm_readv/writev)",
        child.pid
    ))
}

/// `process_vm_readv` of exactly `remote.iov_len` bytes into `buf`.
fn vm_readv(pid: pid_t, buf: &mut [u8], remote: &libc::iovec) -> Result<(), String> {
    let local = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len().min(remote.iov_len),
    };
    // SAFETY: `local` describes the writable `buf`; the remote side is only
    // read by the kernel, which validates it against the target's mm.
    let got = unsafe { libc::process_vm_readv(pid, &local, 1, remote, 1, 0) };
    if got < 0 {
        return Err(sys_err("process_vm_readv"));
    }
    if got as usize != local.iov_len {
        return Err(format!(
            "process_vm_readv read {got} of {} bytes",
            local.iov_len
        ));
    }
    Ok(())
}

fn probe_proc_pid_mem() -> Outcome {
    // A PROT_NONE page in the child: process_vm_readv cannot read it,
    // /proc/PID/mem (FOLL_FORCE) can read and write it.
    let page = page_size();
    let map = Mapping::anon(page, libc::PROT_READ | libc::PROT_WRITE, false)?;
    map.set_word(0, 0x7465_726e_2d6d_656d);
    // SAFETY: changes the protection of our own mapping only; nothing in
    // Rust holds a reference into it.
    if unsafe { libc::mprotect(map.addr.cast(), page, libc::PROT_NONE) } != 0 {
        return Err(sys_err("mprotect"));
    }
    let child = Child::paused()?;

    let mut buf = [0u8; 8];
    let remote = libc::iovec {
        iov_base: map.addr.cast(),
        iov_len: 8,
    };
    let vm_note = match vm_readv(child.pid, &mut buf, &remote) {
        Ok(()) => "process_vm_readv also read it".to_string(),
        Err(e) => format!("process_vm_readv refused it as expected ({e})"),
    };

    let path = format!("/proc/{}/mem", child.pid);
    let mem = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .map_err(|e| io_err(&format!("open {path}"), &e))?;
    mem.read_exact_at(&mut buf, map.start())
        .map_err(|e| io_err("pread /proc/PID/mem", &e))?;
    if u64::from_ne_bytes(buf) != 0x7465_726e_2d6d_656d {
        return Err("/proc/PID/mem returned different bytes than the child holds".into());
    }
    let write_note = match mem.write_all_at(&[0x42], map.start()) {
        Ok(()) => "pwrite into it worked (FOLL_FORCE)".to_string(),
        Err(e) => io_err("pwrite into it failed (proc_mem.force_override?)", &e),
    };
    Ok(format!(
        "pread of a PROT_NONE page of pid {} worked; {write_note}; {vm_note}",
        child.pid
    ))
}

fn probe_pidfd_getfd() -> Outcome {
    let (read_end, _write_end) = pipe()?;
    let child = Child::paused()?;
    // SAFETY: pidfd_open takes a pid and flags, no pointers.
    let pidfd = own_fd(
        unsafe { libc::syscall(libc::SYS_pidfd_open, child.pid, 0 as c_uint) },
        "pidfd_open (5.3+)",
    )?;
    // SAFETY: pidfd_getfd takes two descriptors and flags, no pointers.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_pidfd_getfd,
            pidfd.as_raw_fd(),
            read_end.as_raw_fd(),
            0 as c_uint,
        )
    };
    let taken = own_fd(ret, "pidfd_getfd (5.6+)")?;
    let ours = fs::File::from(read_end.try_clone().map_err(|e| io_err("dup", &e))?).metadata();
    let theirs = fs::File::from(taken).metadata();
    match (ours, theirs) {
        (Ok(a), Ok(b)) if a.dev() == b.dev() && a.ino() == b.ino() => Ok(format!(
            "took fd {} out of pid {} via pidfd; same pipe inode {}",
            read_end.as_raw_fd(),
            child.pid,
            a.ino()
        )),
        (Ok(_), Ok(_)) => Err("pidfd_getfd returned a different file than the child holds".into()),
        (Err(e), _) | (_, Err(e)) => Err(io_err("fstat", &e)),
    }
}

fn kcmp_file(pid1: pid_t, pid2: pid_t, fd1: c_int, fd2: c_int) -> Result<c_long, String> {
    // SAFETY: kcmp takes only integers; it reads no user memory for KCMP_FILE.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_kcmp,
            pid1,
            pid2,
            KCMP_FILE,
            fd1 as c_ulong,
            fd2 as c_ulong,
        )
    };
    if ret < 0 {
        Err(sys_err("kcmp(KCMP_FILE)"))
    } else {
        Ok(ret)
    }
}

fn probe_kcmp() -> Outcome {
    let (read_end, write_end) = pipe()?;
    let child = Child::paused()?;
    let (r, w) = (read_end.as_raw_fd(), write_end.as_raw_fd());
    let same = kcmp_file(getpid(), child.pid, r, r)?;
    let differ = kcmp_file(getpid(), child.pid, r, w)?;
    if same != 0 || differ == 0 {
        return Err(format!(
            "kcmp answered {same} for a shared file and {differ} for two different files"
        ));
    }
    Ok(format!(
        "our fd {r} vs child's fd {r}: 0 (same open file); vs child's fd {w}: {differ} (different)"
    ))
}

fn probe_get_robust_list() -> Outcome {
    let child = Child::paused()?;
    let mut head: usize = 0;
    let mut len: usize = 0;
    // SAFETY: both out-pointers point at live usize locals (the kernel
    // writes a pointer and a size_t).
    let ret = unsafe {
        libc::syscall(
            libc::SYS_get_robust_list,
            child.pid,
            ptr::addr_of_mut!(head),
            ptr::addr_of_mut!(len),
        )
    };
    if ret != 0 {
        return Err(sys_err("get_robust_list"));
    }
    Ok(format!(
        "pid {}: robust list head {head:#x}, len {len}",
        child.pid
    ))
}

fn probe_pr_get_tid_address() -> Outcome {
    let mut addr: usize = 0;
    // SAFETY: PR_GET_TID_ADDRESS writes one pointer to the address given,
    // which is a live usize local.
    let ret = unsafe {
        libc::prctl(
            libc::PR_GET_TID_ADDRESS,
            ptr::addr_of_mut!(addr) as c_ulong,
            0 as c_ulong,
            0 as c_ulong,
            0 as c_ulong,
        )
    };
    if ret != 0 {
        return Err(sys_err(
            "prctl(PR_GET_TID_ADDRESS) (needs CONFIG_CHECKPOINT_RESTORE)",
        ));
    }
    Ok(format!(
        "this thread's clear_child_tid is {addr:#x} (read inside the target by injection)"
    ))
}

/// A pid that looks free now (no `/proc/PID`), different per attempt.
fn free_pid_candidate(attempt: u32) -> Option<pid_t> {
    let read_num = |p: &str| {
        fs::read_to_string(p)
            .ok()
            .and_then(|s| s.trim().parse::<i64>().ok())
    };
    let pid_max = read_num("/proc/sys/kernel/pid_max")
        .unwrap_or(32768)
        .max(1000);
    let last = read_num("/proc/sys/kernel/ns_last_pid").unwrap_or_else(|| getpid().into());
    let mut candidate = last + 1000 + i64::from(attempt) * 7919;
    if candidate >= pid_max {
        candidate = 300 + candidate % (pid_max - 300);
    }
    let pid = pid_t::try_from(candidate).ok()?;
    (!Path::new(&format!("/proc/{pid}")).exists()).then_some(pid)
}

/// What the restore of a mount namespace does, on a scratch one: a thread
/// that gives itself its own fs_struct and mount namespace, makes it
/// private, mounts a tmpfs and `pivot_root`s into it (only that thread's
/// namespace sees any of it; it goes with the thread).
fn probe_mount_namespace_build() -> Outcome {
    let dir = std::env::temp_dir().join(format!("tern-check-mnt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| io_err("make a scratch directory", &e))?;
    let target = dir.to_string_lossy().into_owned();
    let outcome = std::thread::scope(|s| {
        s.spawn(|| -> Outcome {
            // SAFETY: unshare changes this scoped thread only.
            if unsafe { libc::unshare(libc::CLONE_FS | libc::CLONE_NEWNS) } != 0 {
                return Err(sys_err("unshare(CLONE_FS | CLONE_NEWNS)"));
            }
            crate::mounts::mount(None, "/", None, libc::MS_REC | libc::MS_PRIVATE, None)
                .map_err(|e| e.to_string())?;
            crate::mounts::mount(Some("tmpfs"), &target, Some("tmpfs"), 0, Some("size=64k"))
                .map_err(|e| e.to_string())?;
            crate::mounts::pivot_into(&target).map_err(|e| e.to_string())?;
            Ok("a private mount namespace, a tmpfs mounted, pivot_root into it".into())
        })
        .join()
        .unwrap_or_else(|_| Err("the probe thread panicked".into()))
    });
    let _ = std::fs::remove_dir(&dir);
    outcome
}

/// The restored init of a PID namespace: a child cloned with
/// CLONE_NEWPID that makes itself traced and stops itself (an init is
/// spared signals it has no handler for, unless traced).
fn probe_pid_namespace_init() -> Outcome {
    let pid = crate::child::fork_traced_stopped(None, None, true, libc::CLONE_NEWPID as u64)
        .map_err(|e| io_err("clone3(CLONE_NEWPID)", &e))?;
    let child = Child { pid, reaped: false };
    let sig = libc::WSTOPSIG(child.wait_stop()?);
    if sig != libc::SIGSTOP {
        return Err(format!("it stopped with signal {sig}, not SIGSTOP"));
    }
    let inner = crate::ns::inner_pid(pid).map_err(|e| io_err("read its NSpid", &e))?;
    if inner != 1 {
        return Err(format!("it is pid {inner} in its namespace, not 1"));
    }
    Ok("pid 1 of a new PID namespace, traced, stopped on its own SIGSTOP".into())
}

fn probe_clone3_set_tid() -> Outcome {
    for attempt in 0..16 {
        let Some(want) = free_pid_candidate(attempt) else {
            continue;
        };
        let tids: [pid_t; 1] = [want];
        let args = CloneArgs {
            exit_signal: libc::SIGCHLD as u64,
            set_tid: tids.as_ptr() as u64,
            set_tid_size: 1,
            ..CloneArgs::default()
        };
        // SAFETY: `args` and `tids` are live and correctly sized for the
        // call. Without CLONE_VM the child gets a copy of this address space
        // and only calls `_exit` (async-signal-safe) on its copied stack.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_clone3,
                ptr::addr_of!(args),
                size_of::<CloneArgs>(),
            )
        };
        if ret == 0 {
            // SAFETY: in the child: end it at once, touching nothing.
            unsafe { libc::_exit(0) }
        }
        if ret < 0 {
            let e = last_errno();
            if e == libc::EEXIST {
                continue; // taken meanwhile: try another
            }
            let hint = if e == libc::EPERM {
                " (set_tid needs CAP_CHECKPOINT_RESTORE or CAP_SYS_ADMIN over the pid namespace)"
            } else if e == libc::ENOSYS {
                " (clone3 needs 5.3+, set_tid 5.5+)"
            } else {
                ""
            };
            return Err(format!(
                "clone3 with set_tid={want} failed: {}{hint}",
                errno_text(e)
            ));
        }
        let mut child = Child {
            pid: ret as pid_t,
            reaped: false,
        };
        let exit = child.wait_exit(Duration::from_secs(5))?;
        if child.pid != want {
            return Err(format!("asked for pid {want}, kernel gave {}", child.pid));
        }
        return Ok(format!(
            "child created with chosen pid {want}, {exit}, reaped"
        ));
    }
    Err("found no free pid to ask for in 16 tries".into())
}

fn probe_pr_set_mm_map() -> Outcome {
    let mut size: c_uint = 0;
    // SAFETY: PR_SET_MM_MAP_SIZE writes one unsigned int to the address
    // given, a live c_uint local; it changes nothing.
    let ret = unsafe {
        libc::prctl(
            libc::PR_SET_MM,
            libc::PR_SET_MM_MAP_SIZE as c_ulong,
            ptr::addr_of_mut!(size) as c_ulong,
            0 as c_ulong,
            0 as c_ulong,
        )
    };
    if ret != 0 {
        return Err(sys_err(
            "prctl(PR_SET_MM, PR_SET_MM_MAP_SIZE) (needs CONFIG_CHECKPOINT_RESTORE)",
        ));
    }
    if size as usize != size_of::<PrctlMmMap>() {
        return Err(format!(
            "kernel's struct prctl_mm_map is {size} bytes, tern's is {}",
            size_of::<PrctlMmMap>()
        ));
    }
    // Now really apply PR_SET_MM_MAP, in a forked child, with the values
    // this process already has (the child's mm is a copy of ours), so the
    // call is exercised without changing anything that matters.
    let map_values = current_mm_map()?;
    let auxv = map_values.1;
    let map = PrctlMmMap {
        auxv: auxv.as_ptr(),
        auxv_size: (auxv.len() * 8) as u32,
        ..map_values.0
    };
    let mut child = Child::spawn(|| {
        // SAFETY: `map` and the auxv it points at are valid (copied into the
        // child's address space by fork); the size matches the struct.
        let r = unsafe {
            libc::prctl(
                libc::PR_SET_MM,
                libc::PR_SET_MM_MAP as c_ulong,
                ptr::addr_of!(map) as c_ulong,
                size as c_ulong,
                0 as c_ulong,
            )
        };
        if r == 0 {
            0
        } else {
            last_errno()
        }
    })?;
    match child.wait_exit(Duration::from_secs(5))? {
        Exit::Code(0) => Ok(format!(
            "PR_SET_MM_MAP_SIZE = {size}; PR_SET_MM_MAP applied in a child (own values, {}-byte auxv, exe_fd -1)",
            auxv.len() * 8
        )),
        Exit::Code(e) => Err(format!("PR_SET_MM_MAP in a child failed: {}", errno_text(e))),
        other => Err(format!("PR_SET_MM_MAP child: {other}")),
    }
}

/// This process's mm fields (from `/proc/self/stat` and `brk(0)`) and auxv.
fn current_mm_map() -> Result<(PrctlMmMap, Vec<u64>), String> {
    let stat =
        fs::read_to_string("/proc/self/stat").map_err(|e| io_err("read /proc/self/stat", &e))?;
    let fields = crate::proc::stat_fields(&stat);
    // Field n of proc_pid_stat(5) is index n - 3 here.
    let field = |n: usize| -> Result<u64, String> {
        fields
            .get(n - 3)
            .and_then(|f| f.parse().ok())
            .ok_or_else(|| format!("/proc/self/stat has no numeric field {n}"))
    };
    // SAFETY: brk(0) only reports the current break; it changes nothing.
    let brk = unsafe { libc::syscall(libc::SYS_brk, 0 as c_ulong) } as u64;
    let raw = fs::read("/proc/self/auxv").map_err(|e| io_err("read /proc/self/auxv", &e))?;
    let auxv: Vec<u64> = raw
        .chunks_exact(8)
        .map(|c| {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            u64::from_ne_bytes(w)
        })
        .collect();
    let map = PrctlMmMap {
        start_code: field(26)?,
        end_code: field(27)?,
        start_data: field(45)?,
        end_data: field(46)?,
        start_brk: field(47)?,
        brk,
        start_stack: field(28)?,
        arg_start: field(48)?,
        arg_end: field(49)?,
        env_start: field(50)?,
        env_end: field(51)?,
        auxv: ptr::null(),
        auxv_size: 0,
        exe_fd: u32::MAX, // -1: leave the exe link alone
    };
    Ok((map, auxv))
}

fn probe_vdso_mremap() -> Outcome {
    // Collect [vvar], [vvar_vclock], [vdso]; move all of them (keeping their
    // relative offsets) into a reserved range, in a child.
    let maps =
        fs::read_to_string("/proc/self/maps").map_err(|e| io_err("read /proc/self/maps", &e))?;
    let mut ranges = [(0u64, 0u64); 3];
    let mut names = Vec::new();
    let mut vdso_index = None;
    for (start, end, _, name) in maps.lines().filter_map(parse_maps_line) {
        if matches!(name, "[vvar]" | "[vvar_vclock]" | "[vdso]") && names.len() < ranges.len() {
            if name == "[vdso]" {
                vdso_index = Some(names.len());
            }
            ranges[names.len()] = (start, end);
            names.push(name);
        }
    }
    let vdso_index = vdso_index.ok_or("no [vdso] in /proc/self/maps")?;
    let count = names.len();
    let lo = ranges[..count].iter().map(|r| r.0).min().unwrap_or(0);
    let hi = ranges[..count].iter().map(|r| r.1).max().unwrap_or(0);
    let span = (hi - lo) as usize;
    let report = Mapping::anon(page_size(), libc::PROT_READ | libc::PROT_WRITE, true)?;

    let mut child = Child::spawn(|| {
        // SAFETY: a fresh PROT_NONE reservation in the child's own address
        // space; nothing refers to it.
        let base = unsafe {
            libc::mmap(
                ptr::null_mut(),
                span,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            report.set_word(1, last_errno().into());
            return 10;
        }
        for (i, &(start, end)) in ranges[..count].iter().enumerate() {
            let len = (end - start) as usize;
            let to = base as u64 + (start - lo);
            // SAFETY: moves a kernel special mapping of this child onto part
            // of its own reservation; the child never calls into the vdso
            // again (it only `_exit`s), so no code depends on the old address.
            let moved = unsafe {
                libc::mremap(
                    start as *mut c_void,
                    len,
                    len,
                    libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED,
                    to as *mut c_void,
                )
            };
            if moved == libc::MAP_FAILED {
                report.set_word(0, i as i64);
                report.set_word(1, last_errno().into());
                return 11;
            }
        }
        let new_vdso = base as u64 + (ranges[vdso_index].0 - lo);
        // SAFETY: the vdso is now mapped readable at `new_vdso`; read 4 bytes.
        let magic = unsafe { (new_vdso as *const [u8; 4]).read_volatile() };
        report.set_word(2, new_vdso as i64);
        if magic == *b"\x7fELF" {
            0
        } else {
            12
        }
    })?;
    let exit = child.wait_exit(Duration::from_secs(5))?;
    let what = names.join(" ");
    match exit {
        Exit::Code(0) => Ok(format!(
            "moved {what} ({span} bytes) in a child; vdso ELF header readable at {:#x}",
            report.word(2)
        )),
        Exit::Code(10) => Err(format!(
            "mmap of a {span}-byte reservation failed: {}",
            errno_text(report.word(1) as c_int)
        )),
        Exit::Code(11) => {
            let i = report.word(0) as usize;
            Err(format!(
                "mremap of {} failed: {}",
                names.get(i).copied().unwrap_or("?"),
                errno_text(report.word(1) as c_int)
            ))
        }
        Exit::Code(12) => Err("after mremap the vdso does not start with an ELF header".into()),
        other => Err(format!("vdso-mremap child: {other}")),
    }
}

fn probe_map_files() -> Outcome {
    let maps =
        fs::read_to_string("/proc/self/maps").map_err(|e| io_err("read /proc/self/maps", &e))?;
    let (start, end, inode, path) = maps
        .lines()
        .filter_map(parse_maps_line)
        .find(|&(_, _, inode, path)| inode != 0 && path.starts_with('/'))
        .ok_or("no file-backed mapping in /proc/self/maps")?;
    let link = format!("/proc/self/map_files/{start:x}-{end:x}");
    let file = fs::File::open(&link).map_err(|e| {
        io_err(
            &format!("open {link} (needs CAP_CHECKPOINT_RESTORE or CAP_SYS_ADMIN)"),
            &e,
        )
    })?;
    let meta = file.metadata().map_err(|e| io_err("fstat", &e))?;
    if meta.ino() != inode {
        return Err(format!(
            "{link} opened inode {}, maps says {inode}",
            meta.ino()
        ));
    }
    Ok(format!("opened {link} -> {path} (inode {inode})"))
}

pub fn probe_soft_dirty() -> Outcome {
    let page = page_size();
    let map = Mapping::anon(page, libc::PROT_READ | libc::PROT_WRITE, false)?;
    // Kernels with soft-dirty mark every new VMA VM_SOFTDIRTY, shown as "sd".
    let sd_flag = vm_flags_of(map.start())?
        .split_whitespace()
        .any(|f| f == "sd");
    map.poke(0, 1);
    fs::write("/proc/self/clear_refs", "4")
        .map_err(|e| io_err("write 4 to /proc/self/clear_refs", &e))?;
    map.poke(0, 2);
    let pagemap =
        fs::File::open("/proc/self/pagemap").map_err(|e| io_err("open /proc/self/pagemap", &e))?;
    let mut entry = [0u8; 8];
    pagemap
        .read_exact_at(&mut entry, map.start() / page as u64 * 8)
        .map_err(|e| io_err("pread /proc/self/pagemap", &e))?;
    let entry = u64::from_ne_bytes(entry);
    if entry & PM_PRESENT == 0 {
        return Err(format!(
            "written page not present in pagemap (entry {entry:#x})"
        ));
    }
    if entry & PM_SOFT_DIRTY != 0 {
        return Ok(format!(
            "pagemap bit 55 set after clear_refs=4 and a write (entry {entry:#x})"
        ));
    }
    let release = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let boot_config = format!("/boot/config-{}", release.trim());
    let config_hint = if Path::new("/proc/config.gz").exists() {
        "confirm with `zcat /proc/config.gz | grep MEM_SOFT_DIRTY`".to_string()
    } else if Path::new(&boot_config).exists() {
        format!("confirm with `grep MEM_SOFT_DIRTY {boot_config}`")
    } else {
        "the kernel config is not readable here (no /boot/config-*, no /proc/config.gz)".to_string()
    };
    Err(format!(
        "CONFIG_MEM_SOFT_DIRTY not set: /proc/PID/pagemap bit 55 never set after write \
         (clear_refs accepted 4, page present, entry {entry:#x}; new VMA {} the \"sd\" VmFlag); {config_hint}; \
         use the uffd-wp tracker",
        if sd_flag { "has" } else { "lacks" }
    ))
}

/// The `VmFlags:` line of the smaps block of the mapping starting at `start`.
fn vm_flags_of(start: u64) -> Result<String, String> {
    let smaps =
        fs::read_to_string("/proc/self/smaps").map_err(|e| io_err("read /proc/self/smaps", &e))?;
    let header = format!("{start:x}-");
    let mut inside = false;
    for line in smaps.lines() {
        if parse_maps_line(line).is_some() {
            inside = line.starts_with(&header);
        } else if inside {
            if let Some(flags) = line.strip_prefix("VmFlags:") {
                return Ok(flags.trim().to_string());
            }
        }
    }
    Ok(String::new())
}

/// An anonymous range registered in a userfaultfd (WP_ASYNC) in write-protect
/// mode, every page populated and then write-protected.
struct UffdWpRange {
    // Field order is drop order: close the uffd (unregisters), then unmap.
    _uffd: OwnedFd,
    map: Mapping,
    pages: usize,
    page: usize,
    features: u64,
    note: &'static str,
}

fn setup_uffd_wp(pages: usize) -> Result<UffdWpRange, String> {
    // UFFDIO_API may be called once per uffd: ask a throwaway one what the
    // kernel supports, then open the real one with the features we want.
    let supported = uffd_api(&open_uffd()?.0, 0)?;
    if supported & UFFD_FEATURE_WP_ASYNC == 0 {
        return Err(format!(
            "kernel lacks UFFD_FEATURE_WP_ASYNC (6.7+; features {supported:#x}): writes would block on a reader"
        ));
    }
    let want = UFFD_FEATURE_WP_ASYNC | (supported & UFFD_FEATURE_WP_UNPOPULATED);
    let (uffd, note) = open_uffd()?;
    let features = uffd_api(&uffd, want)?;
    if features & UFFD_FEATURE_WP_ASYNC == 0 {
        return Err(format!(
            "UFFDIO_API accepted but did not enable WP_ASYNC (features {features:#x})"
        ));
    }

    let page = page_size();
    let map = Mapping::anon(pages * page, libc::PROT_READ | libc::PROT_WRITE, false)?;
    for i in 0..pages {
        map.poke(i * page, 1); // populate: the scan below looks at present pages
    }
    let range = UffdioRange {
        start: map.start(),
        len: (pages * page) as u64,
    };
    let mut reg = UffdioRegister {
        range,
        mode: UFFDIO_REGISTER_MODE_WP,
        ioctls: 0,
    };
    // SAFETY: UFFDIO_REGISTER reads and writes one `struct uffdio_register`
    // (`reg`); the range is our own private anonymous mapping.
    if unsafe { libc::ioctl(uffd.as_raw_fd(), UFFDIO_REGISTER, ptr::addr_of_mut!(reg)) } != 0 {
        return Err(sys_err("UFFDIO_REGISTER(MODE_WP)"));
    }
    let mut wp = UffdioWriteprotect {
        range,
        mode: UFFDIO_WRITEPROTECT_MODE_WP,
    };
    // SAFETY: UFFDIO_WRITEPROTECT reads one `struct uffdio_writeprotect` (`wp`).
    if unsafe { libc::ioctl(uffd.as_raw_fd(), UFFDIO_WRITEPROTECT, ptr::addr_of_mut!(wp)) } != 0 {
        return Err(sys_err("UFFDIO_WRITEPROTECT"));
    }
    Ok(UffdWpRange {
        _uffd: uffd,
        map,
        pages,
        page,
        features,
        note,
    })
}

/// `PAGEMAP_SCAN` over `[start, end)` for written pages, re-protecting them
/// (the tracker's own call).
fn scan_written(
    pagemap: &fs::File,
    start: u64,
    end: u64,
    out: &mut [PageRegion],
) -> Result<usize, String> {
    crate::uffd::scan_written_and_protect(pagemap.as_fd(), start, end, out)
        .map(|(n, _walk_end)| n)
        .map_err(|e| format!("ioctl(PAGEMAP_SCAN) (6.7+): {e}"))
}

fn probe_uffd_wp_async() -> Outcome {
    let range = setup_uffd_wp(4)?;
    // With WP_ASYNC the kernel resolves this fault itself; without it this
    // write would wait for a reader (setup refused that case above).
    range.map.poke(range.page, 3);
    Ok(format!(
        "UFFDIO_API features {:#x} (WP_ASYNC{}), registered and write-protected {} pages, write did not block{}",
        range.features,
        if range.features & UFFD_FEATURE_WP_UNPOPULATED != 0 { ", WP_UNPOPULATED" } else { "" },
        range.pages,
        range.note
    ))
}

fn probe_pagemap_scan() -> Outcome {
    let range = setup_uffd_wp(4).map_err(|e| format!("needs uffd-wp-async: {e}"))?;
    let pagemap =
        fs::File::open("/proc/self/pagemap").map_err(|e| io_err("open /proc/self/pagemap", &e))?;
    let (start, page) = (range.map.start(), range.page as u64);
    let end = start + range.pages as u64 * page;
    let mut out = [PageRegion::default(); 8];

    range.map.poke(2 * range.page, 7);
    let n = scan_written(&pagemap, start, end, &mut out)?;
    let expected = (start + 2 * page, start + 3 * page);
    let found: Vec<(u64, u64)> = out[..n.min(out.len())]
        .iter()
        .map(|r| (r.start, r.end))
        .collect();
    if found != [expected] {
        return Err(format!(
            "wrote page 2 of 4, PAGEMAP_SCAN reported {} region(s) {:x?} instead of exactly {:x?}",
            n, found, expected
        ));
    }
    let again = scan_written(&pagemap, start, end, &mut out)?;
    if again != 0 {
        return Err(format!("second scan still reported {again} written region(s): PM_SCAN_WP_MATCHING did not re-protect"));
    }
    Ok(format!(
        "wrote 1 of 4 write-protected pages, PAGEMAP_SCAN (ioctl {PAGEMAP_SCAN:#x}) reported exactly it and re-protected it (second scan empty)"
    ))
}

/// What post-copy needs: a uffd in missing mode with the fork, remap,
/// remove and unmap events, a thread's first touch of a registered page
/// reported, and `UFFDIO_COPY` placing the page and waking the thread.
fn probe_uffd_missing_events() -> Outcome {
    use crate::uffd_missing as m;
    let page = page_size();
    // Mapped before the uffd is opened, so it is unmapped after the uffd
    // closes: with the unmap event on, an munmap of a registered range
    // waits until a reader takes the event, and the reader is this thread.
    let map = Mapping::anon(page, libc::PROT_READ | libc::PROT_WRITE, false)?;
    let start = map.start();
    let (uffd, note) = open_uffd()?;
    let features = uffd_api(&uffd, m::POSTCOPY_FEATURES)?;
    if features & m::POSTCOPY_FEATURES != m::POSTCOPY_FEATURES {
        return Err(format!(
            "UFFDIO_API did not enable the fork/remap/remove/unmap events (4.11+; features {features:#x})"
        ));
    }
    m::register_missing(uffd.as_fd(), start, start + page as u64)
        .map_err(|e| io_err("UFFDIO_REGISTER (missing mode)", &e))?;
    let addr = start as usize;
    let toucher = std::thread::spawn(move || {
        // SAFETY: the mapping outlives the thread (joined below, or the
        // probe waits for it before unmapping).
        unsafe { std::ptr::read_volatile((addr + 8) as *const u8) }
    });
    let mut fault = None;
    for _ in 0..200 {
        if m::wait_readable(&[uffd.as_fd()], 10).map_err(|e| io_err("poll", &e))? {
            fault = m::read_events(uffd.as_fd())
                .map_err(|e| io_err("read the uffd", &e))?
                .into_iter()
                .next();
            break;
        }
    }
    let mut data = vec![0u8; page];
    data[8] = 42;
    // Placed whatever was reported, so the thread never stays blocked.
    let placed = m::copy(uffd.as_fd(), start, &data);
    let seen = toucher
        .join()
        .map_err(|_| "the touching thread panicked".to_string())?;
    match fault {
        Some(m::UffdEvent::PageFault { address }) if address & !(page as u64 - 1) == start => {}
        other => return Err(format!("first touch reported as {other:?}")),
    }
    placed.map_err(|e| io_err("UFFDIO_COPY", &e))?;
    if seen != 42 {
        return Err(format!(
            "the thread read {seen} after UFFDIO_COPY placed 42"
        ));
    }
    Ok(format!(
        "UFFDIO_API features {features:#x} (missing mode, fork/remap/remove/unmap events), first touch reported, UFFDIO_COPY woke the thread{note}"
    ))
}

/// Freeze and thaw a paused child of ours in a freezer cgroup of that
/// `version` (the one `--freezer cgroup` uses), timing both.
fn probe_freezer(version: crate::freezer::Version) -> Outcome {
    let mut cg = crate::freezer::CgroupFreezer::create_version(getpid(), version)
        .map_err(|e| e.to_string())?;
    let child = Child::paused()?;
    cg.add(child.pid, None).map_err(|e| e.to_string())?;
    let t = Instant::now();
    cg.freeze().map_err(|e| e.to_string())?;
    let froze = t.elapsed();
    let t = Instant::now();
    cg.thaw().map_err(|e| e.to_string())?;
    cg.wait_thawed().map_err(|e| e.to_string())?;
    let thawed = t.elapsed();
    let dir = cg.dir().display().to_string();
    let pid = child.pid;
    // The cgroup goes (its child moved back) before the child is killed.
    drop(cg);
    drop(child);
    Ok(format!(
        "froze pid {pid} in {dir} in {froze:?}, thawed in {thawed:?}, cgroup removed"
    ))
}

fn probe_cgroup_freezer_v1() -> Outcome {
    probe_freezer(crate::freezer::Version::V1)
}

fn probe_cgroup_freezer_v2() -> Outcome {
    probe_freezer(crate::freezer::Version::V2)
}

/// What a restore does in every hierarchy: make a cgroup and move a
/// process into it (then back, and remove it).
fn probe_cgroup_placement() -> Outcome {
    let all = crate::cgroup::hierarchies().map_err(|e| io_err("read mountinfo", &e))?;
    if all.is_empty() {
        return Err("no cgroup hierarchy is mounted".into());
    }
    let child = Child::paused()?;
    let mut names = Vec::new();
    for h in &all {
        let name = if h.controllers.is_empty() {
            "cgroup2"
        } else {
            &h.controllers
        };
        move_in_and_back(h, child.pid).map_err(|e| format!("hierarchy {name}: {e}"))?;
        names.push(name.to_string());
    }
    Ok(format!(
        "pid {} moved into a new cgroup and back in {} hierarchies ({})",
        child.pid,
        names.len(),
        names.join(" ")
    ))
}

fn move_in_and_back(h: &crate::cgroup::Hierarchy, pid: pid_t) -> Result<(), String> {
    let home = crate::cgroup::memberships(pid)
        .map_err(|e| io_err("read /proc/PID/cgroup", &e))?
        .into_iter()
        .find(|m| m.controllers == h.controllers)
        .and_then(|m| h.dir_of(&m.path))
        .ok_or("the probe's process is in none of its cgroups tern can reach")?;
    let dir = h.mount_point.join(format!("tern-check-{}", getpid()));
    std::fs::create_dir(&dir).map_err(|e| io_err(&format!("mkdir {}", dir.display()), &e))?;
    let moved = (|| {
        // v1 cpuset: a new cgroup has no CPUs or memory nodes until given.
        for file in ["cpuset.cpus", "cpuset.mems"] {
            if let Ok(v) = std::fs::read_to_string(h.mount_point.join(file)) {
                std::fs::write(dir.join(file), v.trim()).map_err(|e| io_err(file, &e))?;
            }
        }
        crate::cgroup::join(&dir, pid).map_err(|e| io_err("move into it", &e))?;
        crate::cgroup::join(&home, pid).map_err(|e| io_err("move back", &e))
    })();
    let removed = std::fs::remove_dir(&dir).map_err(|e| io_err("remove it", &e));
    moved.and(removed)
}

fn probe_pid_namespace() -> Outcome {
    // SAFETY: the child only makes raw syscalls and exits.
    let child = unsafe { crate::clone3_fork(libc::CLONE_NEWPID as u64, None) }
        .map_err(|e| format!("clone3(CLONE_NEWPID): {e}"))?;
    if child == 0 {
        // SAFETY: raw syscalls in the child; pid 1 means a new namespace.
        unsafe {
            let me = libc::syscall(libc::SYS_getpid);
            libc::syscall(libc::SYS_exit_group, if me == 1 { 0 } else { 1 });
        }
    }
    let mut status = 0;
    // SAFETY: waitpid on our own child with a valid status pointer.
    unsafe { libc::waitpid(child, &mut status, 0) };
    if libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0 {
        Ok("a child made with CLONE_NEWPID is pid 1 of its namespace".into())
    } else {
        Err(format!(
            "the CLONE_NEWPID child did not see itself as pid 1 (status {status:#x})"
        ))
    }
}

fn probe_posix_timer_ids() -> Outcome {
    const PR_TIMER_CREATE_RESTORE_IDS: c_int = 77;
    const GET: c_ulong = 2;
    // SAFETY: a query prctl with integer arguments.
    let r = unsafe { libc::prctl(PR_TIMER_CREATE_RESTORE_IDS, GET, 0, 0, 0) };
    if r < 0 {
        return Err(format!(
            "prctl(PR_TIMER_CREATE_RESTORE_IDS): {} (Linux 6.15+ needed to restore POSIX timers)",
            io::Error::last_os_error()
        ));
    }
    Ok(format!(
        "prctl(PR_TIMER_CREATE_RESTORE_IDS) answers (mode {r})"
    ))
}

fn probe_timerfd_set_ticks() -> Outcome {
    const TFD_IOC_SET_TICKS: c_ulong = 0x4008_5400;
    // SAFETY: plain syscall; the fd is owned below.
    let fd = unsafe {
        libc::timerfd_create(
            libc::CLOCK_MONOTONIC,
            libc::TFD_CLOEXEC | libc::TFD_NONBLOCK,
        )
    };
    if fd < 0 {
        return Err(format!("timerfd_create: {}", io::Error::last_os_error()));
    }
    // SAFETY: `fd` was just returned to us and is closed once, by OwnedFd.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let ticks: u64 = 3;
    // SAFETY: the ioctl reads one u64 from `ticks`.
    if unsafe { libc::ioctl(fd.as_raw_fd(), TFD_IOC_SET_TICKS, &ticks) } != 0 {
        return Err(format!(
            "ioctl(TFD_IOC_SET_TICKS): {} (needs CONFIG_CHECKPOINT_RESTORE)",
            io::Error::last_os_error()
        ));
    }
    let mut got: u64 = 0;
    // SAFETY: reads 8 bytes into `got`.
    let n = unsafe { libc::read(fd.as_raw_fd(), &mut got as *mut u64 as *mut c_void, 8) };
    if n != 8 || got != 3 {
        return Err(format!("read back {got} expirations after setting 3"));
    }
    Ok("unread expirations set and read back".into())
}

/// A child under an allow-all seccomp filter (with no_new_privs), seized
/// with `PTRACE_O_SUSPEND_SECCOMP`: its filter must read back, with its
/// metadata, and nothing past it.
fn probe_seccomp_filters() -> Outcome {
    // BPF_RET | BPF_K, SECCOMP_RET_ALLOW: struct sock_filter {u16, u8, u8, u32}.
    const ALLOW: [u8; 8] = [0x06, 0, 0, 0, 0, 0, 0xff, 0x7f];
    let child = Child::spawn(|| {
        let insn = ALLOW;
        // struct sock_fprog { unsigned short len; struct sock_filter *filter; }
        let prog: (u16, *const u8) = (1, insn.as_ptr());
        // SAFETY: raw prctl and seccomp calls with integer arguments and a
        // pointer to `prog` (laid out as sock_fprog: u16 then a pointer),
        // which outlives them; then pause until killed.
        unsafe {
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
                || libc::syscall(libc::SYS_seccomp, 1, 0, ptr::addr_of!(prog)) != 0
            {
                return 3;
            }
            loop {
                libc::pause();
            }
        }
    })?;
    child.wait_until_sleeping(Duration::from_secs(2));
    let opts = (libc::PTRACE_O_EXITKILL | crate::ptrace::O_SUSPEND_SECCOMP) as usize;
    ptrace(libc::PTRACE_SEIZE, child.pid, 0, opts).map_err(|e| {
        format!(
            "PTRACE_SEIZE with PTRACE_O_SUSPEND_SECCOMP: {} (needs CONFIG_CHECKPOINT_RESTORE and CAP_SYS_ADMIN)",
            errno_text(e)
        )
    })?;
    ptrace(libc::PTRACE_INTERRUPT, child.pid, 0, 0)
        .map_err(|e| format!("PTRACE_INTERRUPT: {}", errno_text(e)))?;
    child.wait_stop()?;
    let first = crate::ptrace::seccomp_filter(child.pid, 0)
        .map_err(|e| format!("PTRACE_SECCOMP_GET_FILTER (needs CONFIG_SECCOMP_FILTER and CONFIG_CHECKPOINT_RESTORE): {e}"))?;
    if first.as_deref() != Some(&ALLOW[..]) {
        return Err(format!(
            "the child's filter read back as {first:?}, not the one instruction it installed (or it could not install one)"
        ));
    }
    if let Some(extra) = crate::ptrace::seccomp_filter(child.pid, 1)
        .map_err(|e| format!("PTRACE_SECCOMP_GET_FILTER 1: {e}"))?
    {
        return Err(format!("a second filter of {} bytes appeared", extra.len()));
    }
    let flags = crate::ptrace::seccomp_filter_flags(child.pid, 0)
        .map_err(|e| format!("PTRACE_GET_SECCOMP_METADATA (4.16): {e}"))?;
    Ok(format!(
        "seized a filtered child with PTRACE_O_SUSPEND_SECCOMP, read its 1-instruction filter back (flags {flags:#x})"
    ))
}

fn probe_tcp_repair() -> Outcome {
    use crate::sock::{self, repair};
    use std::os::fd::AsFd;
    // SAFETY: plain syscall; the fd is owned below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(format!("socket: {}", io::Error::last_os_error()));
    }
    // SAFETY: `fd` was just returned to us and is closed once, by OwnedFd.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let d = fd.as_fd();
    sock::set_int(d, libc::IPPROTO_TCP, repair::TCP_REPAIR, repair::ON)
        .map_err(|e| format!("setsockopt(TCP_REPAIR): {e} (needs CAP_NET_ADMIN; Linux 3.5+)"))?;
    let window = sock::get_bytes(d, libc::IPPROTO_TCP, repair::TCP_REPAIR_WINDOW, 20)
        .map_err(|e| format!("getsockopt(TCP_REPAIR_WINDOW): {e} (Linux 4.8+)"))?;
    if window.len() != 20 {
        return Err(format!(
            "TCP_REPAIR_WINDOW gave {} bytes, not 20",
            window.len()
        ));
    }
    sock::set_int(
        d,
        libc::IPPROTO_TCP,
        repair::TCP_REPAIR_QUEUE,
        repair::SEND_QUEUE,
    )
    .and_then(|()| sock::set_int(d, libc::IPPROTO_TCP, repair::TCP_QUEUE_SEQ, 1))
    .map_err(|e| format!("TCP_REPAIR_QUEUE / TCP_QUEUE_SEQ: {e}"))?;
    Ok("repair mode, queue sequence and repair window work".into())
}

fn probe_nftables_lock() -> Outcome {
    // An empty lock table in this network namespace, removed again.
    let lock = crate::netlock::NetLock::apply(None, "tern_check", &[])
        .map_err(|e| format!("{e} (needs nft and CONFIG_NF_TABLES)"))?;
    let name = lock.name().to_string();
    lock.remove()
        .map_err(|e| format!("removing table {name}: {e}"))?;
    Ok("nft creates and deletes a lock table (inet, hooks input/output at priority raw)".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_run_all_reports_every_probe() {
        let probes = run_all();
        assert_eq!(probes.len(), PROBES.len());
        for p in &probes {
            println!(
                "{:<24} {:<5} [{}] {}",
                p.name, p.available, p.needed_for, p.detail
            );
            assert!(!p.detail.is_empty(), "{} has an empty detail", p.name);
        }
        // SAFETY: geteuid has no preconditions and cannot fail.
        if unsafe { libc::geteuid() } == 0 {
            for name in ["ptrace-seize", "process-vm-readv"] {
                let p = probes
                    .iter()
                    .find(|p| p.name == name)
                    .expect("probe exists");
                assert!(p.available, "{name} should work as root: {}", p.detail);
            }
        }
    }

    #[test]
    fn check_ioctl_numbers_match_uapi() {
        assert_eq!(PAGEMAP_SCAN, 0xc060_6610);
        assert_eq!(UFFDIO_API, 0xc018_aa3f);
        assert_eq!(UFFDIO_REGISTER, 0xc020_aa00);
        assert_eq!(UFFDIO_WRITEPROTECT, 0xc018_aa06);
    }
}
