//! eventfd: its counter and semaphore mode.

use super::{FdLink, FileKind, OpenFd, Remote};
use tern_wire as wire;

pub(super) struct EventFd;

impl FileKind for EventFd {
    fn takes(f: &FdLink<'_>) -> bool {
        f.link == "anon_inode:[eventfd]"
    }

    fn capture(f: &OpenFd<'_>) -> tern_sys::Result<wire::FdKind> {
        let count = f.hex_field("eventfd-count:")?;
        Ok(wire::FdKind::EventFd {
            count,
            semaphore: f.field("eventfd-semaphore:") == Some("1"),
            flags: f.flags & libc::O_NONBLOCK,
        })
    }

    fn restore<R: Remote>(
        kind: &wire::FdKind,
        fd: i32,
        r: &mut R,
    ) -> Option<Result<u64, R::Error>> {
        let wire::FdKind::EventFd {
            count,
            semaphore,
            flags,
        } = kind
        else {
            return None;
        };
        let mut efd_flags = libc::EFD_CLOEXEC;
        if *semaphore {
            efd_flags |= libc::EFD_SEMAPHORE;
        }
        if flags & libc::O_NONBLOCK != 0 {
            efd_flags |= libc::EFD_NONBLOCK;
        }
        Some((|| {
            let new = r.syscall(libc::SYS_eventfd2, &[0, efd_flags as u64], &|| {
                format!("eventfd2 for fd {fd}")
            })?;
            // eventfd2 takes a 32-bit initial value: write the count.
            if *count != 0 {
                let at = r.stage(&count.to_le_bytes())?;
                r.syscall(libc::SYS_write, &[new, at, 8], &|| {
                    format!("write the count of eventfd {fd}")
                })?;
            }
            Ok(new)
        })())
    }

    fn describe(kind: &wire::FdKind) -> Option<String> {
        let wire::FdKind::EventFd {
            count, semaphore, ..
        } = kind
        else {
            return None;
        };
        Some(format!(
            "eventfd (count {count}{})",
            if *semaphore { ", semaphore" } else { "" }
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{open_fd, Recorder};
    use super::*;

    #[test]
    fn count_and_mode_go_both_ways() {
        let info = "pos:\t0\nflags:\t02004002\neventfd-count:  1f\neventfd-semaphore: 1\n";
        let kind = EventFd::capture(&open_fd("anon_inode:[eventfd]", info, libc::O_NONBLOCK))
            .expect("captured");
        assert_eq!(
            kind,
            wire::FdKind::EventFd {
                count: 0x1f,
                semaphore: true,
                flags: libc::O_NONBLOCK
            }
        );
        let mut r = Recorder::default();
        assert_eq!(EventFd::restore(&kind, 5, &mut r), Some(Ok(7)));
        let want = (libc::EFD_CLOEXEC | libc::EFD_SEMAPHORE | libc::EFD_NONBLOCK) as u64;
        assert_eq!(r.calls[0], (libc::SYS_eventfd2, vec![0, want]));
        assert_eq!(r.calls[1], (libc::SYS_write, vec![7, 0x1000, 8]));
        assert_eq!(r.staged, vec![0x1fu64.to_le_bytes().to_vec()]);
        assert!(EventFd::capture(&open_fd("anon_inode:[eventfd]", "pos: 0\n", 0)).is_err());
    }
}
