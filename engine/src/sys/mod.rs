//! The kernel-facing layer both sides share: ptrace control, remote memory
//! access, and syscalls run inside a stopped process. Every `unsafe` block of
//! tern's source side lives under this module.

pub mod mem;
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
