//! Seccomp filters, both sides. Captured from every thread of the stopped
//! process with `PTRACE_SECCOMP_GET_FILTER` (all threads must share one
//! chain: it is restored into all at once with `SECCOMP_FILTER_FLAG_TSYNC`);
//! restored as `seccomp(SECCOMP_SET_MODE_FILTER)` calls, oldest first,
//! from a `struct sock_fprog` this module lays out. The puppet is then
//! traced with `PTRACE_O_SUSPEND_SECCOMP`, so that tern's later injected
//! syscalls pass; the filters act once it is released.

use tern_sys::{ptrace, Context, Error, Result};
use tern_wire as wire;

/// `SECCOMP_SET_MODE_FILTER`, for `seccomp(2)`.
pub const SET_MODE_FILTER: u64 = 1;
/// `SECCOMP_FILTER_FLAG_TSYNC`: every thread gets the filter.
pub const FLAG_TSYNC: u64 = 1;
/// `SECCOMP_FILTER_FLAG_LOG`, the only install flag the kernel reports.
const FLAG_LOG: u64 = 2;
/// `BPF_MAXINSNS`: the kernel's limit on one filter.
pub const MAX_INSNS: usize = 4096;

/// The chain of filters of thread `tid`, oldest first.
fn chain_of(tid: i32) -> Result<Vec<wire::SeccompFilter>> {
    let mut newest_first = Vec::new();
    for index in 0.. {
        let what = || {
            format!("PTRACE_SECCOMP_GET_FILTER {index} of thread {tid} (needs CONFIG_CHECKPOINT_RESTORE)")
        };
        let Some(insns) = ptrace::seccomp_filter(tid, index).ctx(tid, what)? else {
            break;
        };
        let flags = ptrace::seccomp_filter_flags(tid, index).ctx(tid, || {
            format!("PTRACE_GET_SECCOMP_METADATA {index} of thread {tid}")
        })? & FLAG_LOG;
        newest_first.push(wire::SeccompFilter { flags, insns });
    }
    newest_first.reverse();
    Ok(newest_first)
}

/// The filters of stopped process `pid` (threads `tids`, `pid` first):
/// empty if it runs without. Refuses strict mode and threads whose
/// chains differ, naming them.
pub fn capture(pid: i32, tids: &[i32]) -> Result<Vec<wire::SeccompFilter>> {
    let mut first: Option<(i32, Vec<wire::SeccompFilter>)> = None;
    for &tid in tids {
        let mode = tern_sys::proc::seccomp_mode(tid).unwrap_or(0);
        if mode == 1 {
            return Err(Error::Unsupported {
                pid,
                reason: format!("thread {tid} runs in seccomp strict mode, which cannot be restored (only read, write, exit and sigreturn are left to it)"),
            });
        }
        let chain = if mode == 2 {
            chain_of(tid)?
        } else {
            Vec::new()
        };
        match &first {
            None => first = Some((tid, chain)),
            Some((t0, c0)) if *c0 != chain => {
                return Err(Error::Unsupported {
                    pid,
                    reason: format!(
                        "its threads {t0} and {tid} run under different seccomp filters ({} and {}); only one chain shared by every thread is supported",
                        c0.len(),
                        chain.len()
                    ),
                });
            }
            Some(_) => {}
        }
    }
    Ok(first.map(|(_, c)| c).unwrap_or_default())
}

/// A `struct sock_fprog` for `filter` placed at `at` in the puppet, its
/// instructions right after it: the bytes to write at `at`. Refuses a
/// filter longer than the kernel allows (a damaged image).
pub fn fprog_at(filter: &wire::SeccompFilter, at: u64) -> std::result::Result<Vec<u8>, String> {
    let count = filter.insns.len() / 8;
    if !filter.insns.len().is_multiple_of(8) || count == 0 || count > MAX_INSNS {
        return Err(format!(
            "a seccomp filter of {} bytes (must be 1 to {MAX_INSNS} 8-byte instructions)",
            filter.insns.len()
        ));
    }
    let len = u16::try_from(count).map_err(|_| "too long a seccomp filter".to_string())?;
    // struct sock_fprog { unsigned short len; struct sock_filter *filter; }
    let mut out = Vec::with_capacity(16 + filter.insns.len());
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&[0u8; 6]);
    out.extend_from_slice(&(at + 16).to_le_bytes());
    out.extend_from_slice(&filter.insns);
    Ok(out)
}

/// The flags to install `filter` with into a process of `threads` threads.
pub fn install_flags(filter: &wire::SeccompFilter, threads: usize) -> u64 {
    let tsync = if threads > 1 { FLAG_TSYNC } else { 0 };
    (filter.flags & FLAG_LOG) | tsync
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fprog_points_at_its_instructions_and_bad_lengths_are_refused() {
        let f = wire::SeccompFilter {
            flags: FLAG_LOG,
            insns: vec![0x06, 0, 0, 0, 0, 0, 0xff, 0x7f],
        };
        let raw = fprog_at(&f, 0x1000).unwrap();
        assert_eq!(&raw[..2], &1u16.to_le_bytes());
        assert_eq!(&raw[8..16], &0x1010u64.to_le_bytes());
        assert_eq!(&raw[16..], &f.insns[..]);
        assert_eq!(install_flags(&f, 1), FLAG_LOG);
        assert_eq!(install_flags(&f, 3), FLAG_LOG | FLAG_TSYNC);
        for bad in [vec![], vec![0u8; 7], vec![0u8; 8 * (MAX_INSNS + 1)]] {
            let f = wire::SeccompFilter {
                flags: 0,
                insns: bad,
            };
            assert!(fprog_at(&f, 0).is_err());
        }
    }
}
