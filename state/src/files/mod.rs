//! Open files whose whole state lives in the kernel object behind the fd,
//! one module per kind, each with its capture (from the fd's
//! `/proc/PID/fdinfo`) and its restore (syscalls run inside the process
//! being rebuilt) side by side, behind [`FileKind`].
//!
//! Adding a kind: its `wire::FdKind` variant, a module here implementing
//! [`FileKind`], and its name in the `kinds!` line below. The dump, the
//! restore and `tern inspect` find it through [`takes`], [`capture`],
//! [`restore`] and [`describe`].
//!
//! Kinds still elsewhere (regular and deleted files, pipes, FIFOs, memfds,
//! epoll, inotify, sockets): `engine::files::fd_kind` and
//! `restorer::Builder::restore_files` (issue 14 moves them here too).

mod eventfd;
mod mqueue;
mod pidfd;
mod signalfd;
mod timerfd;

use tern_wire as wire;

/// An fd of a stopped process, before its fdinfo is read.
#[derive(Debug, Clone, Copy)]
pub struct FdLink<'a> {
    pub pid: i32,
    pub fd: i32,
    /// Its `/proc/PID/fd/N` link (`anon_inode:[eventfd]`, `/queue`, ...).
    pub link: &'a str,
}

impl FdLink<'_> {
    /// The type of the file system its file is on (`statfs` through
    /// `/proc/PID/fd/N`), if it can be read.
    fn fs_magic(&self) -> Option<i64> {
        tern_sys::fs_magic(std::path::Path::new(&format!(
            "/proc/{}/fd/{}",
            self.pid, self.fd
        )))
    }
}

/// An open fd of a stopped process, as `/proc` shows it.
pub struct OpenFd<'a> {
    pub pid: i32,
    pub fd: i32,
    /// Its `/proc/PID/fd/N` link (`anon_inode:[eventfd]`, ...).
    pub link: &'a str,
    /// The open file description's status flags.
    pub flags: i32,
    /// Its `/proc/PID/fdinfo/N`.
    pub fdinfo: &'a str,
    /// The pids of the processes dumped with it (its tree, itself
    /// included).
    pub dumped: &'a dyn Fn(i32) -> bool,
}

impl std::fmt::Debug for OpenFd<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenFd")
            .field("pid", &self.pid)
            .field("fd", &self.fd)
            .field("link", &self.link)
            .field("flags", &self.flags)
            .finish_non_exhaustive()
    }
}

impl<'a> OpenFd<'a> {
    fn link(&self) -> FdLink<'a> {
        FdLink {
            pid: self.pid,
            fd: self.fd,
            link: self.link,
        }
    }

    /// "fd N (LINK)", for messages.
    fn what(&self) -> String {
        format!("fd {} ({})", self.fd, self.link)
    }

    fn refuse(&self, why: String) -> tern_sys::Error {
        tern_sys::Error::Unsupported {
            pid: self.pid,
            reason: format!("{}: {why}", self.what()),
        }
    }

    /// The value of `key` (e.g. `"eventfd-count:"`) in the fdinfo.
    fn field(&self, key: &str) -> Option<&str> {
        self.fdinfo
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .map(str::trim)
    }

    /// The hexadecimal value of `key` in the fdinfo, or a refusal saying
    /// it is not there.
    fn hex_field(&self, key: &str) -> tern_sys::Result<u64> {
        self.field(key)
            .and_then(|v| u64::from_str_radix(v, 16).ok())
            .ok_or_else(|| {
                let name = key.trim_end_matches(':');
                self.refuse(format!("no {name} in its fdinfo"))
            })
    }
}

/// The process being rebuilt, as a kind's restore needs it.
pub trait Remote {
    type Error;
    /// Run syscall `nr` inside it and return its result; `what` names it
    /// in an error.
    fn syscall(
        &mut self,
        nr: libc::c_long,
        args: &[u64],
        what: &dyn Fn() -> String,
    ) -> Result<u64, Self::Error>;
    /// Copy `data` into its scratch memory (overwriting what was staged
    /// before); returns the address it is at there.
    fn stage(&mut self, data: &[u8]) -> Result<u64, Self::Error>;
    /// Whether its processes keep the image's pids (not `--new-pid`).
    fn keeps_pids(&self) -> bool;
    /// An error saying the image cannot be restored here, and why.
    fn refuse(&self, why: String) -> Self::Error;
}

/// One kind of file: its capture and its restore.
trait FileKind {
    /// Whether fd `f` is of this kind.
    fn takes(f: &FdLink<'_>) -> bool;
    /// Its image record.
    fn capture(f: &OpenFd<'_>) -> tern_sys::Result<wire::FdKind>;
    /// Make it anew inside `r` (image fd `fd`) if `kind` is of this kind:
    /// the new fd, close-on-exec.
    fn restore<R: Remote>(kind: &wire::FdKind, fd: i32, r: &mut R)
        -> Option<Result<u64, R::Error>>;
    /// One line for `tern inspect`, if `kind` is of this kind.
    fn describe(kind: &wire::FdKind) -> Option<String>;
}

macro_rules! kinds {
    ($($kind:path),+ $(,)?) => {
        /// Whether one of these kinds takes fd `f`.
        pub fn takes(f: &FdLink<'_>) -> bool {
            false $(|| <$kind as FileKind>::takes(f))+
        }

        /// The image record of `f`, by the kind that takes it.
        pub fn capture(f: &OpenFd<'_>) -> tern_sys::Result<wire::FdKind> {
            let link = f.link();
            $(if <$kind as FileKind>::takes(&link) {
                return <$kind as FileKind>::capture(f);
            })+
            Err(f.refuse("no kind of file takes it".into()))
        }

        /// Make `kind` anew inside `r`, if it is one of these kinds.
        pub fn restore<R: Remote>(
            kind: &wire::FdKind,
            fd: i32,
            r: &mut R,
        ) -> Option<Result<u64, R::Error>> {
            None $(.or_else(|| <$kind as FileKind>::restore(kind, fd, r)))+
        }

        /// `tern inspect`'s line for `kind`, if it is one of these kinds.
        pub fn describe(kind: &wire::FdKind) -> Option<String> {
            None $(.or_else(|| <$kind as FileKind>::describe(kind)))+
        }
    };
}

kinds!(
    eventfd::EventFd,
    timerfd::TimerFd,
    signalfd::SignalFd,
    pidfd::Pidfd,
    mqueue::Mqueue,
);

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake process being rebuilt: records the syscalls and what was
    /// staged, answers each syscall with `next_fd`.
    #[derive(Default)]
    pub(super) struct Recorder {
        pub calls: Vec<(libc::c_long, Vec<u64>)>,
        pub staged: Vec<Vec<u8>>,
        pub new_pids: bool,
    }

    impl Remote for Recorder {
        type Error = String;
        fn syscall(
            &mut self,
            nr: libc::c_long,
            args: &[u64],
            _what: &dyn Fn() -> String,
        ) -> Result<u64, String> {
            self.calls.push((nr, args.to_vec()));
            Ok(7)
        }
        fn stage(&mut self, data: &[u8]) -> Result<u64, String> {
            self.staged.push(data.to_vec());
            Ok(0x1000)
        }
        fn keeps_pids(&self) -> bool {
            !self.new_pids
        }
        fn refuse(&self, why: String) -> String {
            why
        }
    }

    /// An fd of this test process (fd 0) that reads `link`.
    pub(super) fn fd_link(link: &str) -> FdLink<'_> {
        FdLink {
            pid: std::process::id() as i32,
            fd: 0,
            link,
        }
    }

    pub(super) fn open_fd<'a>(link: &'a str, fdinfo: &'a str, flags: i32) -> OpenFd<'a> {
        OpenFd {
            pid: 100,
            fd: 5,
            link,
            flags,
            fdinfo,
            dumped: &|p| p == 100 || p == 101,
        }
    }

    #[test]
    fn each_kind_takes_its_link_and_describes_its_records() {
        for link in [
            "anon_inode:[eventfd]",
            "anon_inode:[timerfd]",
            "anon_inode:[signalfd]",
            "anon_inode:[pidfd]",
            "pidfd:[1234]",
        ] {
            assert!(takes(&fd_link(link)), "{link}");
        }
        // /etc/hosts: a path, but not on an mqueue file system.
        for link in ["/etc/hosts", "pipe:[5]", "anon_inode:[eventpoll]"] {
            assert!(!takes(&fd_link(link)), "{link}");
        }
        let pipe = wire::FdKind::Pipe {
            id: 1,
            write_end: false,
            flags: 0,
        };
        assert!(describe(&pipe).is_none());
        let mut r = Recorder::default();
        assert!(restore(&pipe, 3, &mut r).is_none());
        assert!(r.calls.is_empty());
    }
}
