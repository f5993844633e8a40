//! Reading and writing another process's memory in bulk.
//!
//! `process_vm_readv`/`writev` copy once and are the fast path; they obey
//! page protections, so unreadable or read-only ranges go through
//! `/proc/PID/mem`, which the kernel lets a ptracer use with FOLL_FORCE.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

/// Largest single transfer; the kernel caps one call at MAX_RW_COUNT anyway.
const MAX_XFER: usize = 1 << 30;

/// Read `buf.len()` bytes at `addr` of `pid` with `process_vm_readv`.
/// Returns how many bytes were read before the first fault.
pub fn vm_read(pid: i32, addr: u64, buf: &mut [u8]) -> io::Result<usize> {
    let mut done = 0usize;
    while done < buf.len() {
        let len = (buf.len() - done).min(MAX_XFER);
        let local = libc::iovec {
            iov_base: buf[done..].as_mut_ptr().cast(),
            iov_len: len,
        };
        let remote = libc::iovec {
            iov_base: (addr as usize + done) as *mut libc::c_void,
            iov_len: len,
        };
        // SAFETY: `local` points into `buf`, valid for `len` writable bytes;
        // the remote iovec is only interpreted in the target's address space.
        let n = unsafe { libc::process_vm_readv(pid, &local, 1, &remote, 1, 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if done > 0 && e.raw_os_error() == Some(libc::EFAULT) {
                break;
            }
            return Err(e);
        }
        if n == 0 {
            break;
        }
        done += n as usize;
    }
    Ok(done)
}

/// Write `buf` at `addr` of `pid` with `process_vm_writev`; returns bytes
/// written before the first fault.
pub fn vm_write(pid: i32, addr: u64, buf: &[u8]) -> io::Result<usize> {
    let mut done = 0usize;
    while done < buf.len() {
        let len = (buf.len() - done).min(MAX_XFER);
        let local = libc::iovec {
            iov_base: buf[done..].as_ptr() as *mut libc::c_void,
            iov_len: len,
        };
        let remote = libc::iovec {
            iov_base: (addr as usize + done) as *mut libc::c_void,
            iov_len: len,
        };
        // SAFETY: `local` points into `buf`, valid for `len` readable bytes;
        // the kernel only reads through it.
        let n = unsafe { libc::process_vm_writev(pid, &local, 1, &remote, 1, 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if done > 0 && e.raw_os_error() == Some(libc::EFAULT) {
                break;
            }
            return Err(e);
        }
        if n == 0 {
            break;
        }
        done += n as usize;
    }
    Ok(done)
}

/// `/proc/PID/mem`, for ranges `process_vm_*` refuses (PROT_NONE, read-only).
pub struct ProcMem {
    file: File,
}

impl ProcMem {
    pub fn open(pid: i32, write: bool) -> io::Result<Self> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(write)
            .open(format!("/proc/{pid}/mem"))?;
        Ok(ProcMem { file })
    }

    pub fn read_exact_at(&self, addr: u64, buf: &mut [u8]) -> io::Result<()> {
        self.file.read_exact_at(buf, addr)
    }

    pub fn write_all_at(&self, addr: u64, buf: &[u8]) -> io::Result<()> {
        self.file.write_all_at(buf, addr)
    }
}

/// Read all of `buf` from `addr`, falling back to `/proc/PID/mem` for what
/// `process_vm_readv` cannot reach.
pub fn read_fully(pid: i32, addr: u64, buf: &mut [u8]) -> io::Result<()> {
    let n = match vm_read(pid, addr, buf) {
        Ok(n) => n,
        Err(e) if e.raw_os_error() == Some(libc::EFAULT) => 0,
        Err(e) => return Err(e),
    };
    if n < buf.len() {
        ProcMem::open(pid, false)?.read_exact_at(addr + n as u64, &mut buf[n..])?;
    }
    Ok(())
}

/// Write all of `buf` at `addr`, falling back to `/proc/PID/mem` for
/// read-only ranges.
pub fn write_fully(pid: i32, addr: u64, buf: &[u8]) -> io::Result<()> {
    let n = match vm_write(pid, addr, buf) {
        Ok(n) => n,
        Err(e) if e.raw_os_error() == Some(libc::EFAULT) => 0,
        Err(e) => return Err(e),
    };
    if n < buf.len() {
        ProcMem::open(pid, true)?.write_all_at(addr + n as u64, &buf[n..])?;
    }
    Ok(())
}
