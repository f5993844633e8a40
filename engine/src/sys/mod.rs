//! The kernel-facing layer both sides share: ptrace control, remote memory
//! access, and syscalls run inside a stopped process. Every `unsafe` block of
//! tern's source side lives under this module.

pub mod mem;
pub mod pipe;
pub mod ptrace;
pub mod remote;

pub use remote::RemoteThread;

/// Raw syscall numbers (x86-64) not all exposed by `libc` under stable names.
pub mod nr {
    pub const RSEQ: libc::c_long = 334;
    pub const CLONE3: libc::c_long = 435;
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
#[derive(Default)]
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

/// Put every thread of `pid` (0: the calling thread) in the SCHED_IDLE
/// class: it then runs only when nothing else wants the CPU. Best effort.
pub fn set_idle_priority(pid: i32) {
    let param = libc::sched_param { sched_priority: 0 };
    let tids: Vec<i32> = if pid == 0 {
        vec![0]
    } else {
        std::fs::read_dir(format!("/proc/{pid}/task"))
            .map(|d| {
                d.flatten()
                    .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse().ok()))
                    .collect()
            })
            .unwrap_or_default()
    };
    for tid in tids {
        // SAFETY: sched_setscheduler reads `param`, which outlives the call.
        unsafe { libc::sched_setscheduler(tid, libc::SCHED_IDLE, &param) };
    }
}
