//! pidfd (`pidfd_open`, `CLONE_PIDFD`) of the process itself or of a
//! process of its tree: reopened on the restored process, which keeps its
//! pid.

use super::{FdLink, FileKind, OpenFd, Remote};
use tern_wire as wire;

pub(super) struct Pidfd;

impl FileKind for Pidfd {
    fn takes(f: &FdLink<'_>) -> bool {
        // `pidfd:[INO]` on kernels whose pidfds live in pidfs.
        f.link == "anon_inode:[pidfd]" || f.link.starts_with("pidfd:")
    }

    fn capture(f: &OpenFd<'_>) -> tern_sys::Result<wire::FdKind> {
        // In the pid namespace of /proc, which is the target's (a dump
        // refuses others): the image's pid.
        let target = f
            .field("Pid:")
            .and_then(|v| v.parse::<i32>().ok())
            .ok_or_else(|| f.refuse("no Pid in its fdinfo".into()))?;
        if !(f.dumped)(target) {
            let whose = if target <= 0 {
                "a process that has ended".to_string()
            } else {
                format!("process {target}, outside the dump")
            };
            return Err(f.refuse(format!(
                "a pidfd of {whose} (only pidfds of the dumped process or tree are kept)"
            )));
        }
        Ok(wire::FdKind::Pidfd {
            pid: target,
            flags: f.flags & libc::O_NONBLOCK,
        })
    }

    fn restore<R: Remote>(
        kind: &wire::FdKind,
        fd: i32,
        r: &mut R,
    ) -> Option<Result<u64, R::Error>> {
        let wire::FdKind::Pidfd { pid, flags } = kind else {
            return None;
        };
        if !r.keeps_pids() {
            return Some(Err(r.refuse(format!(
                "fd {fd}: a pidfd of process {pid}, which would name another process under --new-pid"
            ))));
        }
        // The process keeps its pid in the namespace the puppet sees; a
        // tree's processes are all forked before any is built.
        let nonblock = (flags & libc::O_NONBLOCK) as u64;
        Some(
            r.syscall(libc::SYS_pidfd_open, &[*pid as u64, nonblock], &|| {
                format!("pidfd_open({pid}) for fd {fd}")
            }),
        )
    }

    fn describe(kind: &wire::FdKind) -> Option<String> {
        let wire::FdKind::Pidfd { pid, .. } = kind else {
            return None;
        };
        Some(format!("pidfd of process {pid}"))
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{open_fd, Recorder};
    use super::*;

    #[test]
    fn only_pidfds_of_dumped_processes_are_kept() {
        let of = |pid: &str| format!("pos:\t0\nflags:\t02000002\nPid:\t{pid}\nNSpid:\t{pid}\n");
        let mine = of("101");
        let kind = Pidfd::capture(&open_fd("anon_inode:[pidfd]", &mine, 0)).expect("captured");
        assert_eq!(kind, wire::FdKind::Pidfd { pid: 101, flags: 0 });
        for outside in [of("4242"), of("-1")] {
            assert!(Pidfd::capture(&open_fd("anon_inode:[pidfd]", &outside, 0)).is_err());
        }
        let mut r = Recorder::default();
        assert_eq!(Pidfd::restore(&kind, 5, &mut r), Some(Ok(7)));
        assert_eq!(r.calls[0], (libc::SYS_pidfd_open, vec![101, 0]));
        let mut moved = Recorder {
            new_pids: true,
            ..Recorder::default()
        };
        assert!(matches!(Pidfd::restore(&kind, 5, &mut moved), Some(Err(_))));
        assert!(moved.calls.is_empty());
    }
}
