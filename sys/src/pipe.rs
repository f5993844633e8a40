//! Reading what sits in another process's pipe without consuming it.
//!
//! The pipe's read end is copied out of the target with `pidfd_getfd`, and
//! `tee(2)` duplicates its buffered bytes into a pipe of ours, from which
//! they are read; the target's pipe keeps its data.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

fn cvt(r: libc::c_long) -> io::Result<libc::c_long> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// Capacity of the pipe behind `fd` of `pid` (either end).
pub fn pipe_capacity(pid: i32, fd: i32) -> io::Result<u32> {
    let theirs = super::take_fd(pid, fd)?;
    // SAFETY: fcntl on an fd we own.
    let size = unsafe { libc::fcntl(theirs.as_raw_fd(), libc::F_GETPIPE_SZ) };
    Ok(cvt(size as libc::c_long)? as u32)
}

/// Capacity of the pipe behind `fd` of `pid`, and the bytes buffered in it.
pub fn peek_pipe(pid: i32, fd: i32) -> io::Result<(u32, Vec<u8>)> {
    let theirs = super::take_fd(pid, fd)?;
    // SAFETY: fcntl on an fd we own.
    let size = unsafe { libc::fcntl(theirs.as_raw_fd(), libc::F_GETPIPE_SZ) };
    let size = cvt(size as libc::c_long)? as u32;
    let mut p = [0i32; 2];
    // SAFETY: `p` is a valid array of two ints for pipe2 to fill.
    let r = unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) };
    cvt(r as libc::c_long)?;
    // SAFETY: pipe2 succeeded: both fds are new and ours.
    let (rd, wr) = unsafe { (OwnedFd::from_raw_fd(p[0]), OwnedFd::from_raw_fd(p[1])) };
    // SAFETY: fcntl on an fd we own; our pipe must hold all their data.
    let r = unsafe { libc::fcntl(wr.as_raw_fd(), libc::F_SETPIPE_SZ, size as libc::c_int) };
    cvt(r as libc::c_long)?;
    // SAFETY: tee between two pipe fds we own; it copies, never consumes.
    let n = unsafe {
        libc::tee(
            theirs.as_raw_fd(),
            wr.as_raw_fd(),
            size as usize,
            libc::SPLICE_F_NONBLOCK,
        )
    };
    if n < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EAGAIN) {
            return Ok((size, Vec::new())); // empty pipe
        }
        return Err(e);
    }
    let mut data = vec![0u8; n as usize];
    let mut got = 0usize;
    while got < data.len() {
        // SAFETY: reads into the unfilled part of `data`, which we own.
        let r = unsafe {
            libc::read(
                rd.as_raw_fd(),
                data[got..].as_mut_ptr().cast(),
                data.len() - got,
            )
        };
        if r <= 0 {
            return Err(io::Error::other(format!(
                "pipe copy ended after {got} of {} bytes",
                data.len()
            )));
        }
        got += r as usize;
    }
    Ok((size, data))
}

/// A new pipe of `size` bytes' capacity: (read end, write end), close-on-exec.
pub fn make(size: u32) -> io::Result<(OwnedFd, OwnedFd)> {
    let mut p = [0i32; 2];
    // SAFETY: `p` is a valid array of two ints for pipe2 to fill.
    cvt(unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC) } as libc::c_long)?;
    // SAFETY: pipe2 succeeded: both fds are new and ours.
    let (rd, wr) = unsafe { (OwnedFd::from_raw_fd(p[0]), OwnedFd::from_raw_fd(p[1])) };
    if size != 65536 {
        // SAFETY: fcntl on an fd we own.
        let r = unsafe { libc::fcntl(wr.as_raw_fd(), libc::F_SETPIPE_SZ, size as libc::c_int) };
        cvt(r as libc::c_long)?;
    }
    Ok((rd, wr))
}

/// Write all of `data` into the pipe behind `w` (it must fit: the caller
/// made the pipe as large as the data it held).
pub fn fill(w: &OwnedFd, mut data: &[u8]) -> io::Result<()> {
    set_nonblock(w)?;
    while !data.is_empty() {
        // SAFETY: writes from `data`, valid for its length.
        let n = unsafe { libc::write(w.as_raw_fd(), data.as_ptr().cast(), data.len()) };
        let n = cvt(n as libc::c_long)? as usize;
        data = &data[n..];
    }
    // Back to blocking; the caller sets O_NONBLOCK where the image had it.
    // SAFETY: fcntl on an fd we own.
    cvt(unsafe { libc::fcntl(w.as_raw_fd(), libc::F_SETFL, 0) } as libc::c_long)?;
    Ok(())
}

/// Set O_NONBLOCK on the open file description behind `fd`.
pub fn set_nonblock(fd: &OwnedFd) -> io::Result<()> {
    // SAFETY: fcntl on an fd we own.
    cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) } as libc::c_long)
        .map(drop)
}

/// Bytes waiting in the pipe or FIFO behind `f` (`FIONREAD`).
pub fn buffered(f: &impl AsRawFd) -> io::Result<usize> {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int to the pointer given.
    cvt(unsafe { libc::ioctl(f.as_raw_fd(), libc::FIONREAD, &mut n) } as libc::c_long)?;
    Ok(n as usize)
}

/// Make the pipe or FIFO behind `f` hold `size` bytes (if not already).
pub fn resize(f: &impl AsRawFd, size: u32) -> io::Result<()> {
    // SAFETY: fcntl on an fd the caller holds.
    let now = cvt(unsafe { libc::fcntl(f.as_raw_fd(), libc::F_GETPIPE_SZ) } as libc::c_long)?;
    if now as u32 != size {
        // SAFETY: fcntl on an fd the caller holds.
        let r = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_SETPIPE_SZ, size as libc::c_int) };
        cvt(r as libc::c_long)?;
    }
    Ok(())
}
