//! signalfd: the signals it reads.

use super::{FdLink, FileKind, OpenFd, Remote};
use tern_wire as wire;

pub(super) struct SignalFd;

impl FileKind for SignalFd {
    fn takes(f: &FdLink<'_>) -> bool {
        f.link == "anon_inode:[signalfd]"
    }

    fn capture(f: &OpenFd<'_>) -> tern_sys::Result<wire::FdKind> {
        let mask = f.hex_field("sigmask:")?;
        Ok(wire::FdKind::SignalFd {
            mask,
            flags: f.flags & libc::O_NONBLOCK,
        })
    }

    fn restore<R: Remote>(
        kind: &wire::FdKind,
        fd: i32,
        r: &mut R,
    ) -> Option<Result<u64, R::Error>> {
        let wire::FdKind::SignalFd { mask, flags } = kind else {
            return None;
        };
        let mut sfd_flags = libc::SFD_CLOEXEC;
        if flags & libc::O_NONBLOCK != 0 {
            sfd_flags |= libc::SFD_NONBLOCK;
        }
        Some((|| {
            let at = r.stage(&mask.to_le_bytes())?;
            r.syscall(
                libc::SYS_signalfd4,
                &[u64::MAX, at, 8, sfd_flags as u64],
                &|| format!("signalfd4 for fd {fd}"),
            )
        })())
    }

    fn describe(kind: &wire::FdKind) -> Option<String> {
        let wire::FdKind::SignalFd { mask, .. } = kind else {
            return None;
        };
        Some(format!("signalfd (signals {mask:#x})"))
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{open_fd, Recorder};
    use super::*;

    #[test]
    fn the_mask_goes_both_ways() {
        let info = "pos:\t0\nflags:\t02000002\nsigmask:\t0000000000004002\n";
        let kind = SignalFd::capture(&open_fd("anon_inode:[signalfd]", info, 0)).expect("captured");
        assert_eq!(
            kind,
            wire::FdKind::SignalFd {
                mask: 0x4002,
                flags: 0
            }
        );
        let mut r = Recorder::default();
        assert_eq!(SignalFd::restore(&kind, 5, &mut r), Some(Ok(7)));
        assert_eq!(
            r.calls[0],
            (
                libc::SYS_signalfd4,
                vec![u64::MAX, 0x1000, 8, libc::SFD_CLOEXEC as u64]
            )
        );
        assert_eq!(r.staged[0], 0x4002u64.to_le_bytes().to_vec());
    }
}
