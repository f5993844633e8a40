//! userfaultfd missing-page mode, for post-copy: a uffd registered over a
//! process's private anonymous memory reports the first touch of a page
//! that is not there yet, and tern fills it (`UFFDIO_COPY`) with the bytes
//! that came from the source, or with zeros (`UFFDIO_ZEROPAGE`) where the
//! page never had data. The uffd is made inside the program (injected
//! syscall) and used from tern through its own copy of the fd: every ioctl
//! acts on the uffd's mm, not on tern's. Linux 4.3+ for the missing mode,
//! 4.11+ for the fork/remap/remove/unmap events. See kernel-notes,
//! "Post-copy".

use std::io;
use std::mem::size_of;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use crate::uffd::{iowr, UffdioRange};

pub const UFFD_FEATURE_EVENT_FORK: u64 = 1 << 1;
pub const UFFD_FEATURE_EVENT_REMAP: u64 = 1 << 2;
pub const UFFD_FEATURE_EVENT_REMOVE: u64 = 1 << 3;
pub const UFFD_FEATURE_EVENT_UNMAP: u64 = 1 << 6;
/// Every event that changes which pages a program's address space still
/// waits for: with them tern follows a fork, an mremap, a madvise that
/// drops pages and an munmap made while pages are still arriving.
pub const POSTCOPY_FEATURES: u64 = UFFD_FEATURE_EVENT_FORK
    | UFFD_FEATURE_EVENT_REMAP
    | UFFD_FEATURE_EVENT_REMOVE
    | UFFD_FEATURE_EVENT_UNMAP;

const UFFDIO_REGISTER_MODE_MISSING: u64 = 1 << 0;
const UFFD_EVENT_PAGEFAULT: u8 = 0x12;
const UFFD_EVENT_FORK: u8 = 0x13;
const UFFD_EVENT_REMAP: u8 = 0x14;
const UFFD_EVENT_REMOVE: u8 = 0x15;
const UFFD_EVENT_UNMAP: u8 = 0x16;

#[repr(C)]
#[derive(Debug)]
struct UffdioCopy {
    dst: u64,
    src: u64,
    len: u64,
    mode: u64,
    copy: i64,
}

#[repr(C)]
#[derive(Debug)]
struct UffdioZeropage {
    range: UffdioRange,
    mode: u64,
    zeropage: i64,
}

/// `struct uffd_msg`: an event byte, padding, then a 24-byte union.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct UffdMsg {
    event: u8,
    reserved1: u8,
    reserved2: u16,
    reserved3: u32,
    arg: [u64; 3],
}

const _: () = assert!(size_of::<UffdioCopy>() == 40);
const _: () = assert!(size_of::<UffdioZeropage>() == 32);
const _: () = assert!(size_of::<UffdMsg>() == 32);

const UFFDIO_COPY: libc::Ioctl = iowr(0xaa, 0x03, size_of::<UffdioCopy>());
const UFFDIO_ZEROPAGE: libc::Ioctl = iowr(0xaa, 0x04, size_of::<UffdioZeropage>());
/// `_IOR(0xAA, 0x02, struct uffdio_range)`.
const UFFDIO_WAKE: libc::Ioctl = (2 << 30 | (16 << 16) | (0xaa << 8) | 0x02) as libc::Ioctl;

/// What a uffd reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UffdEvent {
    /// A thread touched `address` (not page-aligned), which is missing.
    PageFault { address: u64 },
    /// The program forked: the child's uffd, now an fd of tern's.
    Fork { uffd: i32 },
    /// `mremap` moved `[from, from + len)` to `to`.
    Remap { from: u64, to: u64, len: u64 },
    /// `madvise(MADV_DONTNEED/REMOVE)` dropped `[start, end)`: it reads as
    /// zeros now.
    Remove { start: u64, end: u64 },
    /// `munmap` (or a mapping replaced) removed `[start, end)`.
    Unmap { start: u64, end: u64 },
}

/// Register `[start, end)` (whole VMAs) of the uffd's process for
/// missing-page faults.
pub fn register_missing(uffd: BorrowedFd<'_>, start: u64, end: u64) -> io::Result<()> {
    crate::uffd::register(uffd, start, end, UFFDIO_REGISTER_MODE_MISSING)
}

/// Fill the missing pages at `dst` (in the uffd's process) with `data`, a
/// whole number of pages, and wake the threads waiting on them. A page
/// already there gives `EEXIST` (nothing is overwritten); a pending event
/// gives `EAGAIN` (read the events, then try again); a process gone gives
/// `ESRCH`. Returns the bytes placed: fewer than `data` when the kernel
/// stopped part-way (place the rest again; it then says why).
pub fn copy(uffd: BorrowedFd<'_>, dst: u64, data: &[u8]) -> io::Result<usize> {
    let mut c = UffdioCopy {
        dst,
        src: data.as_ptr() as u64,
        len: data.len() as u64,
        mode: 0,
        copy: 0,
    };
    // SAFETY: UFFDIO_COPY reads `len` bytes at `src`, which `data` holds
    // for the call, writes them into the uffd's process, and writes the
    // count back into `c`.
    if unsafe { libc::ioctl(uffd.as_raw_fd(), UFFDIO_COPY, std::ptr::addr_of_mut!(c)) } != 0 {
        let e = io::Error::last_os_error();
        // Stopped part-way (an event came): the count placed is in `copy`.
        if c.copy > 0 {
            return Ok(usize::try_from(c.copy).unwrap_or(0).min(data.len()));
        }
        return Err(e);
    }
    Ok(usize::try_from(c.copy).unwrap_or(0).min(data.len()))
}

/// Map the shared zero page at the missing pages `[start, start + len)`
/// and wake their waiters (errors as [`copy`]).
pub fn zero(uffd: BorrowedFd<'_>, start: u64, len: u64) -> io::Result<()> {
    let mut z = UffdioZeropage {
        range: UffdioRange { start, len },
        mode: 0,
        zeropage: 0,
    };
    // SAFETY: UFFDIO_ZEROPAGE reads and writes one `struct uffdio_zeropage`.
    if unsafe { libc::ioctl(uffd.as_raw_fd(), UFFDIO_ZEROPAGE, std::ptr::addr_of_mut!(z)) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Wake the threads waiting on `[start, start + len)` (a page another
/// path already filled).
pub fn wake(uffd: BorrowedFd<'_>, start: u64, len: u64) -> io::Result<()> {
    let mut r = UffdioRange { start, len };
    // SAFETY: UFFDIO_WAKE reads one `struct uffdio_range`.
    if unsafe { libc::ioctl(uffd.as_raw_fd(), UFFDIO_WAKE, std::ptr::addr_of_mut!(r)) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Every event waiting on a non-blocking uffd (none: an empty vector).
pub fn read_events(uffd: BorrowedFd<'_>) -> io::Result<Vec<UffdEvent>> {
    let mut msgs = [UffdMsg::default(); 64];
    // SAFETY: read writes at most `size_of_val(&msgs)` bytes into `msgs`, an
    // array of plain C structs any byte pattern is valid for.
    let n = unsafe {
        libc::read(
            uffd.as_raw_fd(),
            msgs.as_mut_ptr().cast(),
            std::mem::size_of_val(&msgs),
        )
    };
    if n < 0 {
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::EAGAIN) => Ok(Vec::new()),
            _ => Err(e),
        };
    }
    let count = usize::try_from(n).unwrap_or(0) / size_of::<UffdMsg>();
    let mut events = Vec::with_capacity(count);
    for m in &msgs[..count] {
        events.push(match m.event {
            UFFD_EVENT_PAGEFAULT => UffdEvent::PageFault { address: m.arg[1] },
            UFFD_EVENT_FORK => UffdEvent::Fork {
                uffd: (m.arg[0] & 0xffff_ffff) as u32 as i32,
            },
            UFFD_EVENT_REMAP => UffdEvent::Remap {
                from: m.arg[0],
                to: m.arg[1],
                len: m.arg[2],
            },
            UFFD_EVENT_REMOVE => UffdEvent::Remove {
                start: m.arg[0],
                end: m.arg[1],
            },
            UFFD_EVENT_UNMAP => UffdEvent::Unmap {
                start: m.arg[0],
                end: m.arg[1],
            },
            other => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("userfaultfd event {other:#x} that tern did not ask for"),
                ))
            }
        });
    }
    Ok(events)
}

/// Take ownership of the uffd a fork event installed in this process.
pub fn adopt_forked(fd: i32) -> io::Result<OwnedFd> {
    // The kernel just installed it for the reader (us) and told its number
    // only in the event; check that it is open before owning it.
    // SAFETY: F_GETFD on any number is harmless.
    if fd < 0 || unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("fork event names fd {fd}, which is not open"),
        ));
    }
    // SAFETY: the fd is open, was installed by the kernel for this read,
    // and nothing else in tern knows its number.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Wait up to `timeout_ms` for any of `fds` to be readable; whether one is.
pub fn wait_readable(fds: &[BorrowedFd<'_>], timeout_ms: i32) -> io::Result<bool> {
    let mut polls: Vec<libc::pollfd> = fds
        .iter()
        .map(|fd| libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    // SAFETY: poll reads and writes `polls.len()` pollfds, which `polls` holds.
    let n = unsafe { libc::poll(polls.as_mut_ptr(), polls.len() as libc::nfds_t, timeout_ms) };
    if n < 0 {
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::EINTR) => Ok(false),
            _ => Err(e),
        };
    }
    Ok(n > 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    /// A uffd on tern's own memory: a thread touching a registered page
    /// blocks until the page is copied in, and sees the copied bytes.
    #[test]
    fn missing_page_is_served_by_copy() {
        let Ok((uffd, _)) = crate::uffd::open_uffd() else {
            eprintln!("skipped: no userfaultfd here");
            return;
        };
        crate::uffd::api(uffd.as_fd(), 0).expect("UFFDIO_API");
        let page = crate::page_size() as usize;
        // SAFETY: a fresh private anonymous mapping, unmapped at the end.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                2 * page,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(ptr, libc::MAP_FAILED);
        let base = ptr as u64;
        register_missing(uffd.as_fd(), base, base + 2 * page as u64).expect("register");
        let addr = base as usize;
        let reader = std::thread::spawn(move || {
            // SAFETY: the mapping outlives the thread (joined below).
            unsafe { std::ptr::read_volatile((addr + 8) as *const u64) }
        });
        let mut got = None;
        for _ in 0..500 {
            if wait_readable(&[uffd.as_fd()], 10).expect("poll") {
                got = read_events(uffd.as_fd()).expect("read").into_iter().next();
                break;
            }
        }
        let Some(UffdEvent::PageFault { address }) = got else {
            panic!("no page fault reported: {got:?}");
        };
        assert_eq!(address & !(page as u64 - 1), base);
        let mut data = vec![0u8; page];
        data[8..16].copy_from_slice(&0x1234_5678u64.to_ne_bytes());
        assert_eq!(copy(uffd.as_fd(), base, &data).expect("copy"), page);
        assert_eq!(reader.join().expect("reader"), 0x1234_5678);
        // Already there: EEXIST, nothing overwritten.
        let e = copy(uffd.as_fd(), base, &vec![0u8; page]).expect_err("copy twice");
        assert_eq!(e.raw_os_error(), Some(libc::EEXIST));
        zero(uffd.as_fd(), base + page as u64, page as u64).expect("zero");
        // SAFETY: both pages are now present in the live mapping.
        let (second, first) = unsafe {
            (
                std::ptr::read_volatile((base as usize + page + 5) as *const u8),
                std::ptr::read_volatile((base as usize + 8) as *const u8),
            )
        };
        assert_eq!((second, first), (0, 0x78));
        drop(uffd);
        // SAFETY: the mapping made above; nothing refers to it any more.
        unsafe { libc::munmap(ptr, 2 * page) };
    }
}
