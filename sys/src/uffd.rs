//! The userfaultfd write-protect and `PAGEMAP_SCAN` ABI (kernel uapi values
//! the libc crate does not carry): used by the uffd-wp tracker and probed by
//! `tern check`. See kernel-notes, "Dirty-page tracking".

use std::io;
use std::mem::size_of;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};

use libc::c_long;

pub const UFFD_API: u64 = 0xaa;
pub const UFFD_USER_MODE_ONLY: c_long = 1;
pub const UFFD_FEATURE_WP_UNPOPULATED: u64 = 1 << 13;
pub const UFFD_FEATURE_WP_ASYNC: u64 = 1 << 15;
pub const UFFDIO_REGISTER_MODE_WP: u64 = 1 << 1;
pub const UFFDIO_WRITEPROTECT_MODE_WP: u64 = 1 << 0;
pub const PM_SCAN_WP_MATCHING: u64 = 1 << 0;
pub const PM_SCAN_CHECK_WPASYNC: u64 = 1 << 1;
pub const PAGE_IS_WRITTEN: u64 = 1 << 1;

/// `_IOWR(ty, nr, size)` from `include/uapi/asm-generic/ioctl.h`.
pub const fn iowr(ty: u8, nr: u8, size: usize) -> libc::Ioctl {
    ((3 << 30) | ((size as u32) << 16) | ((ty as u32) << 8) | nr as u32) as libc::Ioctl
}
pub const UFFDIO_API: libc::Ioctl = iowr(0xaa, 0x3f, size_of::<UffdioApi>());
pub const UFFDIO_REGISTER: libc::Ioctl = iowr(0xaa, 0x00, size_of::<UffdioRegister>());
pub const UFFDIO_WRITEPROTECT: libc::Ioctl = iowr(0xaa, 0x06, size_of::<UffdioWriteprotect>());
pub const PAGEMAP_SCAN: libc::Ioctl = iowr(b'f', 16, size_of::<PmScanArg>());

/// `_IOR(ty, nr, size)` from `include/uapi/asm-generic/ioctl.h`.
const fn ior(ty: u8, nr: u8, size: usize) -> libc::Ioctl {
    ((2 << 30) | ((size as u32) << 16) | ((ty as u32) << 8) | nr as u32) as libc::Ioctl
}
pub const UFFDIO_UNREGISTER: libc::Ioctl = ior(0xaa, 0x01, size_of::<UffdioRange>());
#[allow(clippy::unnecessary_cast)] // libc::Ioctl is not u64 everywhere
const _: () = assert!(UFFDIO_UNREGISTER as u64 == 0x8010_aa01);

#[repr(C)]
#[derive(Debug)]
pub struct UffdioApi {
    pub api: u64,
    pub features: u64,
    pub ioctls: u64,
}

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct UffdioRange {
    pub start: u64,
    pub len: u64,
}

#[repr(C)]
#[derive(Debug)]
pub struct UffdioRegister {
    pub range: UffdioRange,
    pub mode: u64,
    pub ioctls: u64,
}

#[repr(C)]
#[derive(Debug)]
pub struct UffdioWriteprotect {
    pub range: UffdioRange,
    pub mode: u64,
}

/// `struct page_region`, one run of pages `PAGEMAP_SCAN` reports.
#[repr(C)]
#[derive(Clone, Copy, Default, Debug)]
pub struct PageRegion {
    pub start: u64,
    pub end: u64,
    pub categories: u64,
}

/// `struct pm_scan_arg` (`include/uapi/linux/fs.h`).
#[repr(C)]
#[derive(Debug)]
pub struct PmScanArg {
    pub size: u64,
    pub flags: u64,
    pub start: u64,
    pub end: u64,
    pub walk_end: u64,
    pub vec: u64,
    pub vec_len: u64,
    pub max_pages: u64,
    pub category_inverted: u64,
    pub category_mask: u64,
    pub category_anyof_mask: u64,
    pub return_mask: u64,
}

const _: () = assert!(size_of::<PmScanArg>() == 96);
const _: () = assert!(size_of::<PageRegion>() == 24);
const _: () = assert!(size_of::<UffdioApi>() == 24);
const _: () = assert!(size_of::<UffdioRegister>() == 32);
const _: () = assert!(size_of::<UffdioWriteprotect>() == 24);

/// `userfaultfd(O_CLOEXEC | O_NONBLOCK)`, falling back to user-mode-only
/// faults when `vm.unprivileged_userfaultfd = 0` refuses the full kind.
pub fn open_uffd() -> Result<(OwnedFd, &'static str), String> {
    let flags = c_long::from(libc::O_CLOEXEC | libc::O_NONBLOCK);
    // SAFETY: userfaultfd takes flags only.
    let ret = unsafe { libc::syscall(libc::SYS_userfaultfd, flags) };
    if ret >= 0 {
        return Ok((own_fd(ret, "userfaultfd")?, ""));
    }
    if io::Error::last_os_error().raw_os_error() != Some(libc::EPERM) {
        return Err(sys_err("userfaultfd"));
    }
    // SAFETY: as above.
    let ret = unsafe { libc::syscall(libc::SYS_userfaultfd, flags | UFFD_USER_MODE_ONLY) };
    Ok((
        own_fd(ret, "userfaultfd (also with UFFD_USER_MODE_ONLY)")?,
        ", user-mode-only uffd",
    ))
}

/// `UFFDIO_API` asking for `features`; returns what the kernel reports.
pub fn uffd_api(uffd: &OwnedFd, features: u64) -> Result<u64, String> {
    let mut api = UffdioApi {
        api: UFFD_API,
        features,
        ioctls: 0,
    };
    // SAFETY: UFFDIO_API reads and writes one `struct uffdio_api`, which
    // `api` is (size asserted at compile time).
    if unsafe { libc::ioctl(uffd.as_raw_fd(), UFFDIO_API, std::ptr::addr_of_mut!(api)) } != 0 {
        return Err(sys_err(&format!("UFFDIO_API(features {features:#x})")));
    }
    Ok(api.features)
}

fn sys_err(what: &str) -> String {
    format!("{what}: {}", io::Error::last_os_error())
}

/// The fd a raw syscall returned, owned; or its error, saying `what`.
fn own_fd(ret: c_long, what: &str) -> Result<OwnedFd, String> {
    super::own_fd(ret).map_err(|e| format!("{what}: {e}"))
}

/// `UFFDIO_API` asking for `features` on a fresh uffd: the features the
/// kernel enabled, or its errno.
pub fn api(uffd: BorrowedFd<'_>, features: u64) -> io::Result<u64> {
    let mut api = UffdioApi {
        api: UFFD_API,
        features,
        ioctls: 0,
    };
    // SAFETY: UFFDIO_API reads and writes one `struct uffdio_api`, which
    // `api` is (size asserted at compile time).
    if unsafe { libc::ioctl(uffd.as_raw_fd(), UFFDIO_API, std::ptr::addr_of_mut!(api)) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(api.features)
}

/// Register `[start, end)` of the uffd's process for write-protect faults
/// and write-protect it (`UFFDIO_REGISTER` + `UFFDIO_WRITEPROTECT`); if the
/// second fails the range is unregistered again.
pub fn register_wp(uffd: BorrowedFd<'_>, start: u64, end: u64) -> io::Result<()> {
    let range = UffdioRange {
        start,
        len: end - start,
    };
    register(uffd, start, end, UFFDIO_REGISTER_MODE_WP)?;
    let mut wp = UffdioWriteprotect {
        range,
        mode: UFFDIO_WRITEPROTECT_MODE_WP,
    };
    // SAFETY: UFFDIO_WRITEPROTECT reads one `struct uffdio_writeprotect`.
    if unsafe {
        libc::ioctl(
            uffd.as_raw_fd(),
            UFFDIO_WRITEPROTECT,
            std::ptr::addr_of_mut!(wp),
        )
    } != 0
    {
        let e = io::Error::last_os_error();
        let _ = unregister(uffd, start, end);
        return Err(e);
    }
    Ok(())
}

/// `UFFDIO_REGISTER` of `[start, end)` of the uffd's process in `mode`.
pub fn register(uffd: BorrowedFd<'_>, start: u64, end: u64, mode: u64) -> io::Result<()> {
    let mut reg = UffdioRegister {
        range: UffdioRange {
            start,
            len: end - start,
        },
        mode,
        ioctls: 0,
    };
    // SAFETY: UFFDIO_REGISTER reads and writes one `struct uffdio_register`
    // (`reg`); it acts on the uffd's mm, not on tern's memory.
    if unsafe {
        libc::ioctl(
            uffd.as_raw_fd(),
            UFFDIO_REGISTER,
            std::ptr::addr_of_mut!(reg),
        )
    } != 0
    {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `UFFDIO_UNREGISTER` of `[start, end)`.
pub fn unregister(uffd: BorrowedFd<'_>, start: u64, end: u64) -> io::Result<()> {
    let mut range = UffdioRange {
        start,
        len: end - start,
    };
    // SAFETY: UFFDIO_UNREGISTER reads one `struct uffdio_range`.
    if unsafe {
        libc::ioctl(
            uffd.as_raw_fd(),
            UFFDIO_UNREGISTER,
            std::ptr::addr_of_mut!(range),
        )
    } != 0
    {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// One `PAGEMAP_SCAN` call on `pagemap` (a process's `/proc/PID/pagemap`)
/// over `[start, end)`: the written pages (exactly `PAGE_IS_WRITTEN`, the
/// kernel's fast path), write-protected again as they are reported. Fills
/// `regions` from the front; returns how many it filled and where the walk
/// stopped (`walk_end`: continue from there when `regions` was too short).
pub fn scan_written_and_protect(
    pagemap: BorrowedFd<'_>,
    start: u64,
    end: u64,
    regions: &mut [PageRegion],
) -> io::Result<(usize, u64)> {
    let mut arg = PmScanArg {
        size: size_of::<PmScanArg>() as u64,
        flags: PM_SCAN_WP_MATCHING | PM_SCAN_CHECK_WPASYNC,
        start,
        end,
        walk_end: 0,
        vec: regions.as_mut_ptr() as u64,
        vec_len: regions.len() as u64,
        max_pages: 0,
        category_inverted: 0,
        category_mask: PAGE_IS_WRITTEN,
        category_anyof_mask: 0,
        return_mask: PAGE_IS_WRITTEN,
    };
    // SAFETY: PAGEMAP_SCAN reads and writes one `struct pm_scan_arg` (`arg`,
    // 96 bytes, asserted) and writes at most `vec_len` `page_region`s into
    // `regions`, which holds that many.
    let n = unsafe {
        libc::ioctl(
            pagemap.as_raw_fd(),
            PAGEMAP_SCAN,
            std::ptr::addr_of_mut!(arg),
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((
        usize::try_from(n).unwrap_or(0).min(regions.len()),
        arg.walk_end,
    ))
}
