//! Namespaces of another process, looked at from inside: `setns` changes
//! only the calling thread, so a short-lived thread of our own joins the
//! target's namespace, asks there, and ends (tern's other threads never
//! leave their own). Used for the UTS names (`uname` in the target's UTS
//! namespace), the SysV IPC objects of an IPC namespace (`/proc/sysvipc/*`
//! shows the reader's), and sockets made in a network namespace
//! (`sock_diag`).

use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;

/// The namespace kinds `/proc/PID/ns/` names, with their `CLONE_NEW*` flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Uts,
    Ipc,
    Net,
    Mnt,
    Pid,
    User,
    Cgroup,
    Time,
}

impl Kind {
    /// The file name under `/proc/PID/ns/`.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Uts => "uts",
            Kind::Ipc => "ipc",
            Kind::Net => "net",
            Kind::Mnt => "mnt",
            Kind::Pid => "pid",
            Kind::User => "user",
            Kind::Cgroup => "cgroup",
            Kind::Time => "time",
        }
    }

    /// Its `CLONE_NEW*` flag (for `clone3`, `unshare` and `setns`).
    pub fn clone_flag(self) -> u64 {
        let flag = match self {
            Kind::Uts => libc::CLONE_NEWUTS,
            Kind::Ipc => libc::CLONE_NEWIPC,
            Kind::Net => libc::CLONE_NEWNET,
            Kind::Mnt => libc::CLONE_NEWNS,
            Kind::Pid => libc::CLONE_NEWPID,
            Kind::User => libc::CLONE_NEWUSER,
            Kind::Cgroup => libc::CLONE_NEWCGROUP,
            // CLONE_NEWTIME (5.6) is not in every libc crate version.
            Kind::Time => 0x80,
        };
        flag as u64
    }
}

/// The namespace of `kind` process `pid` lives in, as an inode number
/// (`/proc/PID/ns/KIND`); `pid` 0 means tern itself.
pub fn id(pid: i32, kind: Kind) -> io::Result<u64> {
    id_of_file(pid, kind.name())
}

/// The name (`comm`) of the init of a PID namespace a tern restore makes
/// when a program's ids are taken.
pub const TERN_NS_INIT: &str = "tern-ns-init";

/// Whether the init (pid 1) of process `pid`'s PID namespace is the reaper
/// of a tern restore ([`TERN_NS_INIT`]).
pub fn under_tern_reaper(pid: i32) -> io::Result<bool> {
    let ns = id(pid, Kind::Pid)?;
    for entry in std::fs::read_dir("/proc")? {
        let Some(other) = entry?
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        if id(other, Kind::Pid).ok() != Some(ns) || inner_pid(other).ok() != Some(1) {
            continue;
        }
        let comm = std::fs::read_to_string(format!("/proc/{other}/comm")).unwrap_or_default();
        return Ok(comm.trim_end() == TERN_NS_INIT);
    }
    Ok(false)
}

/// The namespace `/proc/PID/ns/NAME` names (e.g. `pid_for_children`);
/// `pid` 0 means tern itself.
pub fn id_of_file(pid: i32, name: &str) -> io::Result<u64> {
    let path = if pid == 0 {
        format!("/proc/self/ns/{name}")
    } else {
        format!("/proc/{pid}/ns/{name}")
    };
    Ok(std::fs::metadata(path)?.ino())
}

/// Task `tid`'s id in its innermost PID namespace (the last `NSpid:`).
fn inner_of(path: &str) -> io::Result<i32> {
    let status = std::fs::read_to_string(path)?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("NSpid:"))
        .and_then(|v| v.split_whitespace().last())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, format!("{path}: no NSpid")))
}

/// Process `pid`'s id in its innermost PID namespace.
pub fn inner_pid(pid: i32) -> io::Result<i32> {
    inner_of(&format!("/proc/{pid}/status"))
}

/// Thread `tid` of process `pid`: its id in its innermost PID namespace.
pub fn inner_tid(pid: i32, tid: i32) -> io::Result<i32> {
    inner_of(&format!("/proc/{pid}/task/{tid}/status"))
}

/// (id here, id in its innermost PID namespace) of process `pid`, each of
/// its threads, and every descendant's. Stopped, the tree holds still; a
/// running one (a pre-copy round) may lose a thread or a descendant while
/// it is read: those are left out (the frozen image's list is the one
/// that counts).
pub fn inner_ids_of_tree(pid: i32) -> io::Result<Vec<(i32, i32)>> {
    let mut out = Vec::new();
    let mut todo = vec![pid];
    while let Some(p) = todo.pop() {
        let tasks = match crate::proc::list_tasks(p) {
            Ok(t) => t,
            Err(_) if p != pid => continue,
            Err(e) => return Err(e),
        };
        for tid in tasks {
            match inner_tid(p, tid) {
                Ok(inner) => out.push((tid, inner)),
                Err(_) if tid != pid => {}
                Err(e) => return Err(e),
            }
        }
        todo.extend(crate::proc::list_children(p).unwrap_or_default());
    }
    Ok(out)
}

/// Whether process `pid` lives in another namespace of `kind` than tern.
pub fn differs(pid: i32, kind: Kind) -> io::Result<bool> {
    Ok(id(pid, kind)? != id(0, kind)?)
}

/// Run `f` in a thread of ours that has first joined process `pid`'s
/// namespace of `kind`.
pub fn in_namespace_of<T: Send>(
    pid: i32,
    kind: Kind,
    f: impl FnOnce() -> io::Result<T> + Send,
) -> io::Result<T> {
    in_namespaces_of(pid, &[kind], f)
}

/// Run `f` in a thread of ours that has first joined process `pid`'s
/// namespaces of `kinds`, in that order. For a mount namespace the thread
/// first takes a root and working directory of its own
/// (`unshare(CLONE_FS)`): a thread sharing its `fs_struct` may not change
/// mount namespace.
pub fn in_namespaces_of<T: Send>(
    pid: i32,
    kinds: &[Kind],
    f: impl FnOnce() -> io::Result<T> + Send,
) -> io::Result<T> {
    let files = kinds
        .iter()
        .map(|&k| {
            Ok((
                k,
                std::fs::File::open(format!("/proc/{pid}/ns/{}", k.name()))?,
            ))
        })
        .collect::<io::Result<Vec<_>>>()?;
    std::thread::scope(|s| {
        s.spawn(|| {
            for (kind, ns) in &files {
                if *kind == Kind::Mnt {
                    // SAFETY: unshare changes this (scoped, soon ended)
                    // thread only.
                    if unsafe { libc::unshare(libc::CLONE_FS) } != 0 {
                        return Err(os_error("unshare(CLONE_FS)"));
                    }
                }
                // SAFETY: setns with a namespace fd we hold open; it
                // changes the namespaces of this (scoped, soon ended)
                // thread only.
                if unsafe { libc::setns(ns.as_raw_fd(), kind.clone_flag() as libc::c_int) } != 0 {
                    return Err(os_error(&format!(
                        "setns into the {} namespace of {pid}",
                        kind.name()
                    )));
                }
            }
            f()
        })
        .join()
        .map_err(|_| io::Error::other("the namespace thread panicked"))?
    })
}

/// The last OS error, saying what failed.
fn os_error(what: &str) -> io::Error {
    let e = io::Error::last_os_error();
    io::Error::new(e.kind(), format!("{what}: {e}"))
}

/// Host name and NIS domain name in process `pid`'s UTS namespace.
pub fn uts_names(pid: i32) -> io::Result<(String, String)> {
    in_namespace_of(pid, Kind::Uts, || {
        // SAFETY: utsname is plain data; all-zero is a valid value.
        let mut u: libc::utsname = unsafe { std::mem::zeroed() };
        // SAFETY: uname fills the struct we pass.
        if unsafe { libc::uname(&mut u) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let text = |field: &[libc::c_char]| {
            let bytes: Vec<u8> = field
                .iter()
                .take_while(|&&c| c != 0)
                .map(|&c| c as u8)
                .collect();
            String::from_utf8_lossy(&bytes).into_owned()
        };
        Ok((text(&u.nodename), text(&u.domainname)))
    })
}

/// What an IPC namespace holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpcObjects {
    /// SysV shared memory segments, semaphore sets and message queues.
    pub sysv: [usize; 3],
    /// The names of its POSIX message queues, sorted.
    pub mqueues: Vec<String>,
}

/// What process `pid`'s IPC namespace holds, read by one thread of ours
/// that joins it. SysV objects are counted in `/proc/sysvipc/*` (which
/// shows the reader's namespace). POSIX queues show only in an mqueue
/// file system mounted from inside the namespace: the thread mounts one in
/// a mount namespace of its own (gone with the thread), over the temporary
/// directory.
pub fn ipc_objects(pid: i32) -> io::Result<IpcObjects> {
    in_namespace_of(pid, Kind::Ipc, || {
        let mut sysv = [0; 3];
        for (k, what) in ["shm", "sem", "msg"].iter().enumerate() {
            // One header line, then one line per object.
            let text = std::fs::read_to_string(format!("/proc/sysvipc/{what}"))?;
            sysv[k] = text.lines().count().saturating_sub(1);
        }
        // SAFETY: unshare changes this (scoped, soon ended) thread only
        // (CLONE_NEWNS implies CLONE_FS).
        if unsafe { libc::unshare(libc::CLONE_NEWNS) } != 0 {
            return Err(os_error("unshare(CLONE_NEWNS)"));
        }
        crate::mounts::mount(None, "/", None, libc::MS_REC | libc::MS_PRIVATE, None)?;
        let at = std::env::temp_dir();
        let at = at.to_string_lossy();
        crate::mounts::mount(Some("mqueue"), &at, Some("mqueue"), 0, None)?;
        let mut mqueues = Vec::new();
        for entry in std::fs::read_dir(&*at)? {
            mqueues.push(format!("/{}", entry?.file_name().to_string_lossy()));
        }
        mqueues.sort();
        Ok(IpcObjects { sysv, mqueues })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn our_own_namespaces_do_not_differ_and_our_names_are_unames() {
        let me = std::process::id() as i32;
        for kind in [Kind::Uts, Kind::Ipc, Kind::Net, Kind::Mnt] {
            assert!(!differs(me, kind).expect("ns link"), "{}", kind.name());
        }
        let (host, _) = uts_names(me).expect("uname in our own namespace");
        let expected = std::fs::read_to_string("/proc/sys/kernel/hostname").expect("hostname");
        assert_eq!(host, expected.trim());
    }
}
