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
#[derive(Debug)]
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

/// Most iovecs one `process_vm_*` call takes (`IOV_MAX`).
const IOV_MAX: usize = 1024;

/// Remote ranges `runs` (address, length), in order, to or from one local
/// buffer laid out back to back: one `process_vm_readv`/`writev` per 1024
/// ranges instead of one per range (scattered single pages cost a syscall
/// each otherwise). A call that stops short (a range the kernel refuses:
/// read-only, PROT_NONE) is finished range by range through
/// [`read_fully`]/[`write_fully`].
fn vm_scattered(
    pid: i32,
    runs: &[(u64, usize)],
    buf: *mut u8,
    buf_len: usize,
    write: bool,
) -> io::Result<()> {
    let total: usize = runs.iter().map(|r| r.1).sum();
    if total > buf_len {
        return Err(io::Error::other(
            "scattered transfer larger than its buffer",
        ));
    }
    let mut off = 0usize;
    for group in runs.chunks(IOV_MAX) {
        let len: usize = group.iter().map(|r| r.1).sum();
        let remote: Vec<libc::iovec> = group
            .iter()
            .map(|&(a, l)| libc::iovec {
                iov_base: a as usize as *mut libc::c_void,
                iov_len: l,
            })
            .collect();
        let local = libc::iovec {
            // SAFETY: `off + len <= total <= buf_len`: inside the buffer.
            iov_base: unsafe { buf.add(off) }.cast(),
            iov_len: len,
        };
        // SAFETY: `local` covers `len` bytes of the caller's buffer (valid
        // for reads and writes as the caller's slice guarantees); the
        // remote iovecs are only interpreted in the target's address space.
        let n = unsafe {
            if write {
                libc::process_vm_writev(pid, &local, 1, remote.as_ptr(), remote.len() as u64, 0)
            } else {
                libc::process_vm_readv(pid, &local, 1, remote.as_ptr(), remote.len() as u64, 0)
            }
        };
        if n < 0 && io::Error::last_os_error().raw_os_error() != Some(libc::EFAULT) {
            return Err(io::Error::last_os_error());
        }
        if (n.max(0) as usize) < len {
            // Finish this group range by range (the slow, sure path).
            let mut at = off;
            for &(a, l) in group {
                if write {
                    // SAFETY: `at + l <= off + len <= buf_len`; read only.
                    let part = unsafe { std::slice::from_raw_parts(buf.add(at), l) };
                    write_fully(pid, a, part)?;
                } else {
                    // SAFETY: `at + l <= off + len <= buf_len`; a read is
                    // given the caller's mutable buffer.
                    let part = unsafe { std::slice::from_raw_parts_mut(buf.add(at), l) };
                    read_fully(pid, a, part)?;
                }
                at += l;
            }
        }
        off += len;
    }
    Ok(())
}

/// Read remote ranges `runs` into `buf`, back to back.
pub fn read_scattered(pid: i32, runs: &[(u64, usize)], buf: &mut [u8]) -> io::Result<()> {
    vm_scattered(pid, runs, buf.as_mut_ptr(), buf.len(), false)
}

/// Write `buf`, back to back, to remote ranges `runs`.
pub fn write_scattered(pid: i32, runs: &[(u64, usize)], buf: &[u8]) -> io::Result<()> {
    // The kernel only reads the local buffer for a write.
    vm_scattered(pid, runs, buf.as_ptr() as *mut u8, buf.len(), true)
}
