//! Children tern forks on the destination, and reaping them.
//!
//! tern is multi-threaded (tokio, scoped threads), so a fork of it may only
//! make raw syscalls until it execs or exits: no allocation, no locks, no
//! glibc wrapper that trusts cached state (glibc's cached tid is the
//! parent's). Each child body here is written that way and never returns
//! into Rust code.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::time::{Duration, Instant};

use crate::clone3_fork;

/// Fork a child that becomes tern's tracee and stops itself (`PTRACE_TRACEME`
/// and SIGSTOP): the restorer's puppet. It has pid `set_tid` (in its innermost
/// PID namespace) if given, a session of its own if `own_session`, and no
/// open fd but `keep` (`(from, to)`: tern's fd `from` becomes its fd `to`).
/// `ns_flags`: `CLONE_NEW*` flags of namespaces made for it (with
/// `CLONE_NEWPID` it is pid 1 of a new PID namespace: it stops itself all
/// the same, as a traced init is not spared the signal). Returns the
/// child's pid.
pub fn fork_traced_stopped(
    set_tid: Option<i32>,
    keep: Option<(i32, i32)>,
    own_session: bool,
    ns_flags: u64,
) -> io::Result<i32> {
    if ns_flags & libc::CLONE_NEWPID as u64 != 0 && set_tid.is_some() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "a puppet that makes its PID namespace is pid 1 there: no set_tid",
        ));
    }
    // SAFETY: the child runs the raw syscalls below only and never returns
    // into Rust code (clone3_fork's contract).
    let pid = unsafe { clone3_fork(ns_flags, set_tid)? };
    if pid != 0 {
        return Ok(pid);
    }
    // SAFETY: in the child: raw syscalls with integer arguments only.
    unsafe {
        if own_session {
            libc::syscall(libc::SYS_setsid);
        }
        match keep {
            Some((from, to)) if to >= 3 => {
                libc::syscall(libc::SYS_dup3, from, to, 0);
                if to > 3 {
                    libc::syscall(libc::SYS_close_range, 3u32, (to - 1) as u32, 0u32);
                }
                libc::syscall(libc::SYS_close_range, (to + 1) as u32, u32::MAX, 0u32);
            }
            _ => {
                libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
            }
        }
        libc::syscall(libc::SYS_ptrace, libc::PTRACE_TRACEME, 0, 0, 0);
        let me = libc::syscall(libc::SYS_getpid);
        libc::syscall(libc::SYS_kill, me, libc::SIGSTOP);
        libc::syscall(libc::SYS_exit_group, 127);
    }
    unreachable!("exit_group returned")
}

/// How the init of a fresh PID namespace behaves ([`fork_pid_namespace_init`]).
#[derive(Debug)]
pub struct NamespaceInit {
    /// Its name in `ps`: NUL-terminated, at most 16 bytes with the NUL.
    pub name: &'static [u8],
    /// How often it reaps and looks around.
    pub tick: Duration,
    /// How many ticks it waits for the first other process to appear.
    pub first_wait_ticks: u32,
}

/// Fork the init (pid 1) of a new PID namespace: it reaps whatever exits
/// there and exits itself once it is the last process of its namespace (or
/// when none came within `first_wait_ticks`). Returns its pid as tern sees
/// it.
pub fn fork_pid_namespace_init(init: &NamespaceInit) -> io::Result<i32> {
    if init.name.last() != Some(&0) || init.name.len() > 16 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "a namespace init's name must be NUL-terminated and at most 16 bytes",
        ));
    }
    let tick = libc::timespec {
        tv_sec: init.tick.as_secs() as libc::time_t,
        tv_nsec: init.tick.subsec_nanos() as libc::c_long,
    };
    let (name, first_wait) = (init.name.as_ptr(), init.first_wait_ticks);
    // SAFETY: the child runs the raw syscalls below only and never returns
    // into Rust code (clone3_fork's contract).
    let pid = unsafe { clone3_fork(libc::CLONE_NEWPID as u64, None)? };
    if pid != 0 {
        return Ok(pid);
    }
    // SAFETY: in the child: raw syscalls with integers and pointers to our
    // own stack or static data.
    unsafe {
        libc::syscall(libc::SYS_setsid);
        libc::syscall(libc::SYS_close_range, 0u32, u32::MAX, 0u32);
        libc::syscall(libc::SYS_prctl, libc::PR_SET_NAME, name);
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
            } else if seen_others || ticks >= first_wait {
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

/// Make the calling thread's future children in the PID namespace `ns` (an
/// open `/proc/PID/ns/pid` or `pid_for_children`; `setns` with
/// `CLONE_NEWPID`).
pub fn set_pid_ns_for_children(ns: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: setns on a descriptor we hold; CLONE_NEWPID changes only which
    // pid namespace this thread's future children are created in.
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWPID) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Reap our child (or traced thread) `pid` if it has exited, without
/// waiting (`WNOHANG | __WALL`). True when it is gone: reaped now, or not
/// (or no longer) ours to wait for.
pub fn try_reap(pid: i32) -> bool {
    let mut status = 0;
    // SAFETY: waitpid with a valid status pointer; WNOHANG.
    unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG | libc::__WALL) != 0 }
}

/// Reap our children `pids` as they exit, waiting at most `wait` in all
/// (polled: a blocking wait could be forever). Returns those still not
/// reaped.
pub fn reap_within(pids: &[i32], wait: Duration) -> Vec<i32> {
    let t0 = Instant::now();
    let mut left: Vec<i32> = pids.to_vec();
    loop {
        left.retain(|&pid| !try_reap(pid));
        if left.is_empty() || t0.elapsed() >= wait {
            return left;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Wait for our child (or traced thread) `pid` to exit and reap it
/// (`__WALL`); its exit status, or None if it was not ours to wait for.
/// Blocks: only for a process that has been sent SIGKILL.
pub fn reap(pid: i32) -> Option<i32> {
    let mut status = 0;
    // SAFETY: waitpid with a valid status pointer.
    let r = unsafe { libc::waitpid(pid, &mut status, libc::__WALL) };
    (r == pid).then_some(status)
}

/// The signal that killed our child `pid`, if it is a zombie killed by one;
/// it is left to be reaped (`waitid` with `WNOWAIT | WNOHANG`).
pub fn killed_by(pid: i32) -> Option<i32> {
    // SAFETY: siginfo_t is plain data; all-zero is a valid value.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: waitid on our own child with a valid siginfo pointer; WNOWAIT
    // leaves it to be reaped.
    let r = unsafe {
        libc::waitid(
            libc::P_PID,
            pid as libc::id_t,
            &mut info,
            libc::WEXITED | libc::WNOHANG | libc::WNOWAIT | libc::__WALL,
        )
    };
    // SAFETY: waitid filled a SIGCHLD siginfo (si_pid 0: nothing yet).
    let (child, code, status) = unsafe { (info.si_pid(), info.si_code, info.si_status()) };
    (r == 0 && child == pid && (code == libc::CLD_KILLED || code == libc::CLD_DUMPED))
        .then_some(status)
}

/// Make tern a child subreaper (or stop being one): orphans of its
/// descendants become its children (`PR_SET_CHILD_SUBREAPER`).
pub fn set_child_subreaper(on: bool) -> io::Result<()> {
    // SAFETY: prctl with integer arguments.
    if unsafe {
        libc::prctl(
            libc::PR_SET_CHILD_SUBREAPER,
            libc::c_ulong::from(on),
            0,
            0,
            0,
        )
    } != 0
    {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Make `c` start with fds 0-2 only (`close_range` between fork and exec),
/// whatever the calling shell leaked.
pub fn only_stdio(c: &mut std::process::Command) -> &mut std::process::Command {
    use std::os::unix::process::CommandExt;
    // SAFETY: runs between fork and exec; only the async-signal-safe
    // close_range syscall.
    unsafe {
        c.pre_exec(|| {
            libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
            Ok(())
        });
    }
    c
}

/// A child that keeps a post-copy program safe should tern die: it holds a
/// copy of the program's userfaultfd (so the kernel never drops the
/// registration, which would make every page not yet arrived read as
/// zeros) and kills the program the moment tern's end of its pipe closes
/// without [`PostCopyGuard::release`] (tern died, or gave up).
#[derive(Debug)]
pub struct PostCopyGuard {
    pid: i32,
    pipe: Option<std::os::fd::OwnedFd>,
}

impl PostCopyGuard {
    /// Fork the guard of program `program` (a pidfd of it) and its uffd.
    pub fn start(program: BorrowedFd<'_>, uffd: BorrowedFd<'_>) -> io::Result<PostCopyGuard> {
        let mut fds = [0i32; 2];
        // SAFETY: pipe2 writes two fds into `fds`.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let (r, w) = (crate::own_fd(fds[0].into())?, crate::own_fd(fds[1].into())?);
        let keep = {
            let mut k = [r.as_raw_fd(), program.as_raw_fd(), uffd.as_raw_fd()];
            k.sort_unstable();
            k
        };
        let (rfd, pidfd) = (r.as_raw_fd(), program.as_raw_fd());
        // SAFETY: the child runs the raw syscalls below only and never
        // returns into Rust code (clone3_fork's contract).
        let pid = unsafe { clone3_fork(0, None)? };
        if pid != 0 {
            drop(r);
            return Ok(PostCopyGuard { pid, pipe: Some(w) });
        }
        // SAFETY: in the child: raw syscalls with integers and pointers to
        // its own stack.
        unsafe {
            // Only the three fds it needs: a copy of another program's uffd
            // held here would keep that one registered after its end.
            let mut from = 0u32;
            for k in keep {
                if k as u32 > from {
                    libc::syscall(libc::SYS_close_range, from, k as u32 - 1, 0u32);
                }
                from = k as u32 + 1;
            }
            libc::syscall(libc::SYS_close_range, from, u32::MAX, 0u32);
            libc::syscall(
                libc::SYS_prctl,
                libc::PR_SET_NAME,
                c"tern-pc-guard".as_ptr(),
            );
            // Not ended with the daemon's process group or terminal (a ^C,
            // a SIGTERM to the group): only the pipe ends it.
            libc::syscall(libc::SYS_setsid);
            let all: u64 = !0;
            libc::syscall(
                libc::SYS_rt_sigprocmask,
                libc::SIG_BLOCK,
                &all as *const u64,
                std::ptr::null_mut::<u64>(),
                8usize,
            );
            let mut byte = 0u8;
            loop {
                let n = libc::syscall(libc::SYS_read, rfd, &mut byte as *mut u8, 1usize);
                if n == 1 && byte == b'd' {
                    libc::syscall(libc::SYS_exit_group, 0);
                }
                if n < 0 && *libc::__errno_location() == libc::EINTR {
                    continue;
                }
                libc::syscall(
                    libc::SYS_pidfd_send_signal,
                    pidfd,
                    libc::SIGKILL,
                    0usize,
                    0u32,
                );
                libc::syscall(libc::SYS_exit_group, 1);
            }
        }
    }

    /// Post-copy is over: the guard lets go of the uffd and exits.
    pub fn release(mut self) {
        if let Some(w) = self.pipe.take() {
            // SAFETY: write of one byte from a local.
            unsafe { libc::write(w.as_raw_fd(), b"d".as_ptr().cast(), 1) };
        }
        reap(self.pid);
    }
}

impl Drop for PostCopyGuard {
    /// Not released: closing the pipe makes the guard kill the program.
    fn drop(&mut self) {
        if self.pipe.take().is_some() {
            reap(self.pid);
        }
    }
}
