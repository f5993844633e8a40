//! The userfaultfd write-protect and `PAGEMAP_SCAN` ABI (kernel uapi values
//! the libc crate does not carry): used by the uffd-wp tracker and probed by
//! `tern check`. See kernel-notes, "Dirty-page tracking".

use std::io;
use std::mem::size_of;
use std::os::fd::{AsRawFd, OwnedFd};

use libc::c_long;

pub(crate) const UFFD_API: u64 = 0xaa;
pub(crate) const UFFD_USER_MODE_ONLY: c_long = 1;
pub(crate) const UFFD_FEATURE_WP_UNPOPULATED: u64 = 1 << 13;
pub(crate) const UFFD_FEATURE_WP_ASYNC: u64 = 1 << 15;
pub(crate) const UFFDIO_REGISTER_MODE_WP: u64 = 1 << 1;
pub(crate) const UFFDIO_WRITEPROTECT_MODE_WP: u64 = 1 << 0;
pub(crate) const PM_SCAN_WP_MATCHING: u64 = 1 << 0;
pub(crate) const PM_SCAN_CHECK_WPASYNC: u64 = 1 << 1;
pub(crate) const PAGE_IS_WRITTEN: u64 = 1 << 1;

/// `_IOWR(ty, nr, size)` from `include/uapi/asm-generic/ioctl.h`.
pub(crate) const fn iowr(ty: u8, nr: u8, size: usize) -> libc::Ioctl {
    ((3 << 30) | ((size as u32) << 16) | ((ty as u32) << 8) | nr as u32) as libc::Ioctl
}
pub(crate) const UFFDIO_API: libc::Ioctl = iowr(0xaa, 0x3f, size_of::<UffdioApi>());
pub(crate) const UFFDIO_REGISTER: libc::Ioctl = iowr(0xaa, 0x00, size_of::<UffdioRegister>());
pub(crate) const UFFDIO_WRITEPROTECT: libc::Ioctl =
    iowr(0xaa, 0x06, size_of::<UffdioWriteprotect>());
pub(crate) const PAGEMAP_SCAN: libc::Ioctl = iowr(b'f', 16, size_of::<PmScanArg>());

#[repr(C)]
pub(crate) struct UffdioApi {
    pub(crate) api: u64,
    pub(crate) features: u64,
    pub(crate) ioctls: u64,
}

#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct UffdioRange {
    pub(crate) start: u64,
    pub(crate) len: u64,
}

#[repr(C)]
pub(crate) struct UffdioRegister {
    pub(crate) range: UffdioRange,
    pub(crate) mode: u64,
    pub(crate) ioctls: u64,
}

#[repr(C)]
pub(crate) struct UffdioWriteprotect {
    pub(crate) range: UffdioRange,
    pub(crate) mode: u64,
}

/// `struct page_region`, one run of pages `PAGEMAP_SCAN` reports.
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub(crate) struct PageRegion {
    pub(crate) start: u64,
    pub(crate) end: u64,
    pub(crate) categories: u64,
}

/// `struct pm_scan_arg` (`include/uapi/linux/fs.h`).
#[repr(C)]
pub(crate) struct PmScanArg {
    pub(crate) size: u64,
    pub(crate) flags: u64,
    pub(crate) start: u64,
    pub(crate) end: u64,
    pub(crate) walk_end: u64,
    pub(crate) vec: u64,
    pub(crate) vec_len: u64,
    pub(crate) max_pages: u64,
    pub(crate) category_inverted: u64,
    pub(crate) category_mask: u64,
    pub(crate) category_anyof_mask: u64,
    pub(crate) return_mask: u64,
}

const _: () = assert!(size_of::<PmScanArg>() == 96);
const _: () = assert!(size_of::<PageRegion>() == 24);
const _: () = assert!(size_of::<UffdioApi>() == 24);
const _: () = assert!(size_of::<UffdioRegister>() == 32);
const _: () = assert!(size_of::<UffdioWriteprotect>() == 24);

/// `userfaultfd(O_CLOEXEC | O_NONBLOCK)`, falling back to user-mode-only
/// faults when `vm.unprivileged_userfaultfd = 0` refuses the full kind.
pub(crate) fn open_uffd() -> Result<(OwnedFd, &'static str), String> {
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
pub(crate) fn uffd_api(uffd: &OwnedFd, features: u64) -> Result<u64, String> {
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
