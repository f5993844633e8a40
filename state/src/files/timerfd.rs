//! timerfd: its clock, the time left, the period and the expirations not
//! yet read.

use super::{FdLink, FileKind, OpenFd, Remote};
use tern_wire as wire;

pub(super) struct TimerFd;

/// `TFD_IOC_SET_TICKS` (CONFIG_CHECKPOINT_RESTORE).
const TFD_IOC_SET_TICKS: u64 = 0x4008_5400;

/// A `struct itimerspec` {interval, value}, each {seconds, nanoseconds}.
fn itimerspec(interval_ns: u64, value_ns: u64) -> Vec<u8> {
    let mut its = Vec::with_capacity(32);
    for ns in [interval_ns, value_ns] {
        its.extend_from_slice(&(ns / 1_000_000_000).to_le_bytes());
        its.extend_from_slice(&(ns % 1_000_000_000).to_le_bytes());
    }
    its
}

impl FileKind for TimerFd {
    fn takes(f: &FdLink<'_>) -> bool {
        f.link == "anon_inode:[timerfd]"
    }

    fn capture(f: &OpenFd<'_>) -> tern_sys::Result<wire::FdKind> {
        let (clockid, ticks, value_ns, interval_ns) = tern_sys::proc::parse_timerfd(f.fdinfo)
            .ok_or_else(|| f.refuse("unreadable timerfd fdinfo".into()))?;
        Ok(wire::FdKind::TimerFd {
            clockid,
            ticks,
            value_ns,
            interval_ns,
            flags: f.flags & libc::O_NONBLOCK,
        })
    }

    fn restore<R: Remote>(
        kind: &wire::FdKind,
        fd: i32,
        r: &mut R,
    ) -> Option<Result<u64, R::Error>> {
        let wire::FdKind::TimerFd {
            clockid,
            ticks,
            value_ns,
            interval_ns,
            flags,
        } = kind
        else {
            return None;
        };
        let mut tfd_flags = libc::TFD_CLOEXEC;
        if flags & libc::O_NONBLOCK != 0 {
            tfd_flags |= libc::TFD_NONBLOCK;
        }
        Some((|| {
            let new = r.syscall(
                libc::SYS_timerfd_create,
                &[*clockid as u64, tfd_flags as u64],
                &|| format!("timerfd_create for fd {fd}"),
            )?;
            // A periodic timerfd whose last expiry is still unread is not
            // re-armed until that read (fdinfo then shows no time left):
            // arm it for the next period, or it would never fire again.
            let value_ns = if *value_ns == 0 {
                *interval_ns
            } else {
                *value_ns
            };
            if value_ns != 0 {
                let at = r.stage(&itimerspec(*interval_ns, value_ns))?;
                // The time left, relative: an absolute timer's deadline is
                // what fdinfo showed as remaining.
                r.syscall(libc::SYS_timerfd_settime, &[new, 0, at, 0], &|| {
                    format!("timerfd_settime of fd {fd}")
                })?;
            }
            if *ticks != 0 {
                let at = r.stage(&ticks.to_le_bytes())?;
                r.syscall(libc::SYS_ioctl, &[new, TFD_IOC_SET_TICKS, at], &|| {
                    format!("ioctl(TFD_IOC_SET_TICKS) of fd {fd}")
                })?;
            }
            Ok(new)
        })())
    }

    fn describe(kind: &wire::FdKind) -> Option<String> {
        let wire::FdKind::TimerFd {
            clockid,
            ticks,
            value_ns,
            interval_ns,
            ..
        } = kind
        else {
            return None;
        };
        Some(format!(
            "timerfd (clock {clockid}, next in {value_ns} ns, every {interval_ns} ns, {ticks} unread)"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{open_fd, Recorder};
    use super::*;

    #[test]
    fn an_expired_periodic_timer_is_armed_for_its_next_period() {
        let info = "pos:\t0\nflags:\t02004002\nclockid: 1\nticks: 3\nsettime flags: 00\nit_value: (0, 0)\nit_interval: (1, 500)\n";
        let kind = TimerFd::capture(&open_fd("anon_inode:[timerfd]", info, 0)).expect("captured");
        let mut r = Recorder::default();
        assert_eq!(TimerFd::restore(&kind, 5, &mut r), Some(Ok(7)));
        let nrs: Vec<_> = r.calls.iter().map(|c| c.0).collect();
        assert_eq!(
            nrs,
            vec![
                libc::SYS_timerfd_create,
                libc::SYS_timerfd_settime,
                libc::SYS_ioctl
            ]
        );
        assert_eq!(r.staged[0], itimerspec(1_000_000_500, 1_000_000_500));
        assert_eq!(r.staged[1], 3u64.to_le_bytes().to_vec());
    }
}
