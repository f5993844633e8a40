//! tern's kernel layer, shared by the source (`tern-engine`) and the
//! destination (`tern-restorer`): ptrace control, remote memory access and
//! syscalls run inside a stopped process, pidfds, the userfaultfd-wp and
//! PAGEMAP_SCAN ABI, sockets (TCP repair, sock_diag), pipes, `/proc`
//! parsers, the cgroup freezer, nftables packet locks, and the probes of
//! `tern check`. Every `unsafe` block of tern lives in this crate; the
//! others deny unsafe code. x86-64 only for now (syscall numbers, register
//! layout).

#[cfg(not(target_arch = "x86_64"))]
compile_error!("tern-sys supports x86-64 Linux only: add an arch module for this target");

pub mod cgroup;
pub mod child;
pub mod error;
pub mod freezer;
pub mod mem;
pub mod mounts;
pub mod netlock;
pub mod ns;
pub mod pipe;
pub mod probe;
pub mod proc;
pub mod ptrace;
pub mod remote;
pub mod sock;
pub mod sock_diag;
pub mod uffd;
pub mod uffd_missing;

pub use error::{Context, Error, Result};
pub use remote::RemoteThread;

/// Raw syscall numbers (x86-64) not all exposed by `libc` under stable names.
pub mod nr {
    pub const RSEQ: libc::c_long = 334;
    pub const CLONE3: libc::c_long = 435;
}

/// Page size of this machine (the target's too: tern runs beside it).
pub fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(size).ok().filter(|&s| s > 0).unwrap_or(4096)
}

/// The magic number of the file system holding `path` (`statfs` `f_type`),
/// or None if it cannot be asked.
pub fn fs_magic(path: &std::path::Path) -> Option<i64> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).ok()?;
    // SAFETY: an all-zero statfs is a valid value of this plain C struct.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is NUL-terminated and `st` a writable statfs.
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    Some(st.f_type as i64)
}

/// The new fd a raw syscall returned (`ret`), owned; or the syscall's
/// error (errno) if it returned none.
pub fn own_fd(ret: libc::c_long) -> std::io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    match libc::c_int::try_from(ret) {
        // SAFETY: the kernel just returned this new descriptor; nothing
        // else in this process owns it.
        Ok(fd) if fd >= 0 => Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) }),
        _ => Err(std::io::Error::last_os_error()),
    }
}

/// A pidfd of process `pid` (`pidfd_open`, Linux 5.3).
pub fn pidfd_open(pid: i32) -> std::io::Result<std::os::fd::OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags only.
    own_fd(unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) })
}

/// A duplicate, in this process, of fd `fd` of process `pid`
/// (`pidfd_open` + `pidfd_getfd`, Linux 5.6+): it shares the program's open
/// file description.
pub fn take_fd(pid: i32, fd: i32) -> std::io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::AsRawFd;
    let pidfd = pidfd_open(pid)?;
    // SAFETY: pidfd_getfd takes a pidfd, a target fd number and flags.
    own_fd(unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0) })
}

/// Open the file a kernel file handle names (`open_by_handle_at`, Linux
/// 2.6.39, `CONFIG_FHANDLE`, needs `CAP_DAC_READ_SEARCH`) as an `O_PATH`
/// fd; `mount` is any fd on its file system.
pub fn open_by_handle(
    mount: &std::fs::File,
    handle_type: i32,
    handle: &[u8],
) -> std::io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::AsRawFd;
    // struct file_handle: u32 handle_bytes, i32 handle_type, then the bytes.
    let mut buf = Vec::with_capacity(8 + handle.len());
    buf.extend_from_slice(&(handle.len() as u32).to_ne_bytes());
    buf.extend_from_slice(&handle_type.to_ne_bytes());
    buf.extend_from_slice(handle);
    // SAFETY: `buf` holds a complete struct file_handle for the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_open_by_handle_at,
            mount.as_raw_fd(),
            buf.as_ptr(),
            libc::O_PATH | libc::O_CLOEXEC,
        )
    };
    own_fd(r)
}

/// Read and discard whatever `fd` has to read, without blocking (the open
/// file description's own blocking mode is left as it was).
pub fn drain_nonblocking(fd: &std::os::fd::OwnedFd) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let mut buf = [0u8; 4096];
    loop {
        let mut p = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, no wait.
        let n = unsafe { libc::poll(&mut p, 1, 0) };
        if n <= 0 || p.revents & libc::POLLIN == 0 {
            return Ok(());
        }
        // SAFETY: reads into `buf`, valid for its length.
        let r = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if r <= 0 {
            return Ok(());
        }
    }
}

/// The seals of the memfd behind `fd` (`F_GET_SEALS`).
pub fn memfd_seals(fd: &std::os::fd::OwnedFd) -> std::io::Result<i32> {
    use std::os::fd::AsRawFd;
    // SAFETY: fcntl on an fd we own.
    let r = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GET_SEALS) };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// Add `seals` to the memfd behind `fd` (`F_ADD_SEALS`).
pub fn memfd_add_seals(fd: &std::os::fd::OwnedFd, seals: i32) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: fcntl on an fd we own.
    if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, seals) } < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Whether fd `fa` of process `pa` and fd `fb` of `pb` are one open file
/// description (`kcmp(KCMP_FILE)`, Linux 3.5, `CONFIG_KCMP`).
pub fn same_description(pa: i32, fa: i32, pb: i32, fb: i32) -> bool {
    const KCMP_FILE: libc::c_long = 0;
    // SAFETY: kcmp takes integers only.
    let r = unsafe {
        libc::syscall(
            libc::SYS_kcmp,
            pa as libc::c_long,
            pb as libc::c_long,
            KCMP_FILE,
            fa as libc::c_long,
            fb as libc::c_long,
        )
    };
    r == 0
}

/// Convert a kernel `-errno` result into an `io::Error`.
pub fn errno_result(r: i64) -> std::io::Result<u64> {
    if (-4095..0).contains(&r) {
        Err(std::io::Error::from_raw_os_error(-r as i32))
    } else {
        Ok(r as u64)
    }
}

/// `struct clone_args` up to `cgroup` (`CLONE_ARGS_SIZE_VER2`, Linux 5.7+),
/// for `clone3`.
#[repr(C)]
#[derive(Default, Debug)]
pub struct CloneArgs {
    pub flags: u64,
    pub pidfd: u64,
    pub child_tid: u64,
    pub parent_tid: u64,
    pub exit_signal: u64,
    pub stack: u64,
    pub stack_size: u64,
    pub tls: u64,
    pub set_tid: u64,
    pub set_tid_size: u64,
    pub cgroup: u64,
}

const _: () = assert!(std::mem::size_of::<CloneArgs>() == 88);

/// A fork-like `clone3` (no `CLONE_VM`) with `flags`, SIGCHLD to the
/// parent on exit, and pid `set_tid` in the child's innermost pid namespace
/// if given. Returns the child's pid in the parent, 0 in the child.
///
/// # Safety
/// The child is a copy of a process that may have other threads: it must
/// only make raw syscalls (no allocation, no locks, no glibc wrappers that
/// trust cached state) and must never return into the caller's Rust code.
pub unsafe fn clone3_fork(flags: u64, set_tid: Option<i32>) -> std::io::Result<i32> {
    let tids = [set_tid.unwrap_or(0)];
    let mut args = CloneArgs {
        flags,
        exit_signal: libc::SIGCHLD as u64,
        ..Default::default()
    };
    if set_tid.is_some() {
        args.set_tid = tids.as_ptr() as u64;
        args.set_tid_size = 1;
    }
    // SAFETY: `args` and `tids` outlive the call; what the child may do is
    // this function's contract.
    let r = unsafe {
        libc::syscall(
            nr::CLONE3,
            &args as *const CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(r as i32)
}

/// Put every thread of `pid` (0: the calling thread) in the SCHED_IDLE
/// class: it then runs only when nothing else wants the CPU. Best effort.
pub fn set_idle_priority(pid: i32) {
    let param = libc::sched_param { sched_priority: 0 };
    let tids: Vec<i32> = if pid == 0 {
        vec![0]
    } else {
        crate::proc::list_tasks(pid).unwrap_or_default()
    };
    for tid in tids {
        // SAFETY: sched_setscheduler reads `param`, which outlives the call.
        unsafe { libc::sched_setscheduler(tid, libc::SCHED_IDLE, &param) };
    }
}

/// Send signal `sig` to process `pid` (`kill`).
pub fn signal(pid: i32, sig: i32) -> std::io::Result<()> {
    // SAFETY: kill takes integers only.
    if unsafe { libc::kill(pid, sig) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The robust futex list of thread `tid` (`get_robust_list`): its head's
/// address and its length.
pub fn robust_list(tid: i32) -> std::io::Result<(u64, u64)> {
    let mut head: u64 = 0;
    let mut len: usize = 0;
    // SAFETY: both out-pointers are valid for the call; get_robust_list
    // only writes a pointer-sized value to each.
    let r = unsafe {
        libc::syscall(
            libc::SYS_get_robust_list,
            tid,
            &mut head as *mut u64,
            &mut len as *mut usize,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok((head, len as u64))
}

/// Resource limit `resource` (`RLIMIT_*`) of process `pid`: (soft, hard)
/// (`prlimit64`, reading only).
pub fn rlimit_of(pid: i32, resource: u32) -> std::io::Result<(u64, u64)> {
    let mut now = libc::rlimit64 {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: prlimit64 only reads the limit of `pid` into `now`, which we
    // own; the new-limit pointer is null.
    let r = unsafe { libc::prlimit64(pid, resource as _, std::ptr::null(), &mut now) };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok((now.rlim_cur, now.rlim_max))
}

/// Set once SIGINT, SIGTERM or SIGHUP arrived (after [`catch_stop_signals`]).
static STOP_ASKED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

extern "C" fn on_stop_signal(_: libc::c_int) {
    STOP_ASKED.store(true, std::sync::atomic::Ordering::SeqCst);
}

/// From now on SIGINT, SIGTERM and SIGHUP only raise a flag, read with
/// [`stop_asked`] (for a long-running command that ends cleanly between
/// two steps).
pub fn catch_stop_signals() {
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: the handler only stores to an atomic, which is
        // async-signal-safe; it lives for the whole program.
        unsafe { libc::signal(sig, on_stop_signal as *const () as libc::sighandler_t) };
    }
}

/// Whether a stop signal arrived since [`catch_stop_signals`].
pub fn stop_asked() -> bool {
    STOP_ASKED.load(std::sync::atomic::Ordering::SeqCst)
}

/// Ignore signal `sig` in this process from now on (`SIG_IGN`).
pub fn ignore_signal(sig: i32) {
    // SAFETY: setting a disposition of this process to SIG_IGN.
    unsafe { libc::signal(sig, libc::SIG_IGN) };
}
