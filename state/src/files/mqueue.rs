//! POSIX message queues (`mq_open`): reopened by name, as a file is by
//! its path. The queue and its messages belong to the IPC namespace (the
//! machine's, unless the program has its own), so they are not moved: the
//! queue must exist where the program is restored. A notification the
//! program registered (`mq_notify`) is refused: its `sigev_value` cannot
//! be read back.

use super::{FdLink, FileKind, OpenFd, Remote};
use tern_wire as wire;

/// `MQUEUE_MAGIC` (`include/uapi/linux/magic.h`).
const MQUEUE_MAGIC: i64 = 0x1980_0202;

pub(super) struct Mqueue;

/// `NOTIFY_PID` in the text a queue's file reads as
/// (`QSIZE:5 NOTIFY:0 SIGNO:0 NOTIFY_PID:0`).
fn notify_pid(status: &str) -> Option<i32> {
    status
        .split_whitespace()
        .find_map(|w| w.strip_prefix("NOTIFY_PID:"))
        .and_then(|v| v.parse().ok())
}

impl FileKind for Mqueue {
    fn takes(f: &FdLink<'_>) -> bool {
        f.link.starts_with('/') && f.fs_magic() == Some(MQUEUE_MAGIC)
    }

    fn capture(f: &OpenFd<'_>) -> tern_sys::Result<wire::FdKind> {
        // Reading the queue's file (opened again through /proc) gives its
        // status, and takes no message.
        let status = std::fs::read_to_string(format!("/proc/{}/fd/{}", f.pid, f.fd))
            .map_err(|e| f.refuse(format!("cannot read the queue's status: {e}")))?;
        match notify_pid(&status) {
            Some(0) | None => {}
            Some(p) if (f.dumped)(p) => {
                return Err(f.refuse(format!(
                    "process {p} registered for its notification (mq_notify), which is not kept"
                )))
            }
            Some(_) => {}
        }
        Ok(wire::FdKind::Mqueue {
            name: f.link.to_string(),
            flags: f.flags & (libc::O_ACCMODE | libc::O_NONBLOCK),
        })
    }

    fn restore<R: Remote>(
        kind: &wire::FdKind,
        fd: i32,
        r: &mut R,
    ) -> Option<Result<u64, R::Error>> {
        let wire::FdKind::Mqueue { name, flags } = kind else {
            return None;
        };
        Some((|| {
            // The syscall takes the name without its `/` (glibc strips it);
            // its fds are always close-on-exec.
            let mut bytes = name.trim_start_matches('/').as_bytes().to_vec();
            bytes.push(0);
            let at = r.stage(&bytes)?;
            let oflag = (flags & (libc::O_ACCMODE | libc::O_NONBLOCK)) as u64;
            r.syscall(libc::SYS_mq_open, &[at, oflag, 0, 0], &|| {
                format!("reopen POSIX message queue {name} for fd {fd} (it must exist here, as a file must)")
            })
        })())
    }

    fn describe(kind: &wire::FdKind) -> Option<String> {
        let wire::FdKind::Mqueue { name, flags } = kind else {
            return None;
        };
        let mode = match flags & libc::O_ACCMODE {
            libc::O_RDONLY => "read",
            libc::O_WRONLY => "write",
            _ => "read-write",
        };
        let nonblock = if flags & libc::O_NONBLOCK != 0 {
            ", nonblocking"
        } else {
            ""
        };
        Some(format!("POSIX message queue {name} ({mode}{nonblock})"))
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::Recorder;
    use super::*;

    #[test]
    fn a_queue_is_reopened_by_name() {
        let kind = wire::FdKind::Mqueue {
            name: "/jobs".into(),
            flags: libc::O_RDWR | libc::O_NONBLOCK,
        };
        let mut r = Recorder::default();
        assert_eq!(Mqueue::restore(&kind, 3, &mut r), Some(Ok(7)));
        assert_eq!(r.staged, vec![b"jobs\0".to_vec()]);
        let oflag = (libc::O_RDWR | libc::O_NONBLOCK) as u64;
        assert_eq!(r.calls[0], (libc::SYS_mq_open, vec![0x1000, oflag, 0, 0]));
        assert_eq!(
            Mqueue::describe(&kind).as_deref(),
            Some("POSIX message queue /jobs (read-write, nonblocking)")
        );
        assert_eq!(
            notify_pid("QSIZE:5 NOTIFY:0 SIGNO:0 NOTIFY_PID:42 "),
            Some(42)
        );
    }
}
