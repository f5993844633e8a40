//! A stopped process's open files, captured for its image: every fd with
//! what it is (files by path, pipes, sockets, memfds, epoll, inotify, the
//! kinds of `tern_state::files`), shared descriptions, fds named by
//! `--external`, and the checks that refuse what cannot be restored.

use crate::dump::{unsupported, CrossProcess};
use crate::error::{Context, Result};
use crate::mm::file_identity;
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use tern_sys::proc;
use tern_wire as wire;

/// What a dump does with established TCP connections.
pub(crate) enum Connections<'a> {
    /// Refuse the program (the default: moving them needs the lock).
    Refuse,
    /// Accept them without touching them (a check before pre-copy).
    Check,
    /// Lock their packets, put them into repair mode and read them; the
    /// bool: the image records the lock (the dump leaves it in place).
    Take(&'a mut tern_state::sockets::Held, bool),
}

/// Fds 0-2 that are a pipe, socket or terminal: the restoring tern's own
/// are given to the program (`Inherited`); `None` for any other fd.
fn stdio_kind(fd: i32, link: &str) -> Option<wire::FdKind> {
    (0..=2).contains(&fd).then(|| wire::FdKind::Inherited {
        what: link.to_string(),
    })
}

/// The record of an fd shared with the outside world, named `name` by
/// `--external` (nothing of it is taken).
fn external_kind(name: &str, link: &str, flags: i32) -> wire::FdKind {
    let mode = match flags & libc::O_ACCMODE {
        libc::O_RDONLY => "read",
        libc::O_WRONLY => "write",
        _ => "read-write",
    };
    wire::FdKind::External {
        name: name.to_string(),
        what: format!("{link} ({mode})"),
        flags: flags & libc::O_NONBLOCK,
    }
}

/// Every open fd of process `pid`: (fd, what /proc/PID/fd names, fdinfo).
fn list_open_fds(pid: i32) -> Result<Vec<(i32, String, proc::FdInfo)>> {
    let fds = proc::list_fds(pid).ctx(pid, || "list fds".into())?;
    let mut listed = Vec::with_capacity(fds.len());
    for &fd in &fds {
        let link = std::fs::read_link(format!("/proc/{pid}/fd/{fd}"))
            .ctx(pid, || format!("readlink fd {fd}"))?
            .to_string_lossy()
            .into_owned();
        let info_text = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}"))
            .ctx(pid, || format!("read fdinfo {fd}"))?;
        let info = proc::parse_fdinfo(&info_text)
            .ok_or_else(|| unsupported(pid, format!("fd {fd}: unreadable fdinfo")))?;
        listed.push((fd, link, info));
    }
    Ok(listed)
}

/// The id of a pipe fd's pipe, from what /proc/PID/fd names.
fn pipe_id(link: &str) -> Option<u64> {
    link.strip_prefix("pipe:[")
        .and_then(|r| r.strip_suffix(']'))
        .and_then(|n| n.parse::<u64>().ok())
}

/// Pipes the process holds both ends of are its own: saved with their
/// data (`own`: its fds not shared with the outside; pipes of `cross` are
/// a tree's, saved with it).
fn own_pipes(
    pid: i32,
    own: &[(i32, String, proc::FdInfo)],
    cross: &CrossProcess,
) -> Result<Vec<wire::Pipe>> {
    // And pipes whose other end is closed (no process at all holds it: a
    // writer whose reader exited, a reader whose writer did): restored
    // with that end closed again, a reader's bytes still to read.
    let mut pipes: Vec<wire::Pipe> = Vec::new();
    for (fd, link, info) in own {
        let Some(id) = pipe_id(link) else { continue };
        if pipes.iter().any(|p| p.id == id) || cross.pipes.contains(&id) {
            continue;
        }
        let end_of = |i: &proc::FdInfo| i.flags & libc::O_ACCMODE;
        let is_reader = end_of(info) == libc::O_RDONLY;
        let holds = |end: i32| {
            own.iter()
                .any(|(_, l, i)| pipe_id(l) == Some(id) && end_of(i) == end)
        };
        let both_ends = holds(libc::O_RDONLY) && holds(libc::O_WRONLY);
        let half_closed = !both_ends && *fd > 2 && proc::holders_of(link, &[pid]).is_empty();
        if (both_ends || half_closed) && is_reader {
            let (size, data) = tern_sys::pipe::peek_pipe(pid, *fd)
                .ctx(pid, || format!("copy the data buffered in pipe fd {fd}"))?;
            pipes.push(wire::Pipe { id, size, data });
        } else if half_closed {
            // Its bytes can never be read: only the capacity matters.
            let size = tern_sys::pipe::pipe_capacity(pid, *fd)
                .ctx(pid, || format!("read the capacity of pipe fd {fd}"))?;
            pipes.push(wire::Pipe {
                id,
                size,
                data: Vec::new(),
            });
        }
    }
    Ok(pipes)
}

/// The program's fds. Shared open file descriptions are found with
/// kcmp(KCMP_FILE). `dir`: where to save the contents of deleted files
/// (`None`: only check that every fd can be dumped).
pub(crate) fn capture_files(
    pid: i32,
    dir: Option<&Path>,
    conns: Connections<'_>,
    cross: &CrossProcess,
) -> Result<wire::Files> {
    let listed = list_open_fds(pid)?;
    let fds: Vec<i32> = listed.iter().map(|l| l.0).collect();
    let mount_ids = own_mount_ids(pid)?;
    for fd in cross.external.keys() {
        if !fds.contains(fd) {
            return Err(unsupported(
                pid,
                format!("fd {fd}, named by --external, is not open"),
            ));
        }
    }
    // Named shared with the outside (and their duplicates): nothing of
    // them is taken.
    let outside = |fd: i32| {
        cross
            .external
            .keys()
            .any(|&e| e == fd || same_file(pid, e, fd))
    };
    let own: Vec<_> = listed.iter().filter(|l| !outside(l.0)).cloned().collect();
    let pipes = own_pipes(pid, &own, cross)?;
    let unix_pairs = tern_state::sockets::capture_unix_pairs(pid, &own, &cross.sockets)?;
    let sockets = take_sockets(pid, &own, &unix_pairs, conns)?;
    let mut out: Vec<wire::Fd> = Vec::with_capacity(fds.len());
    for (fd, link, info) in listed {
        let link = link.as_str();
        let shared = out.iter().find(|o| same_file(pid, o.fd, fd));
        if let Some(o) = shared {
            // Another fd of one open file description: same contents.
            let (desc, kind) = (o.desc, o.kind.clone());
            out.push(wire::Fd {
                fd,
                cloexec: info.flags & libc::O_CLOEXEC != 0,
                desc,
                kind,
            });
            continue;
        }
        let desc = fd as u32;
        if let Some(name) = cross.external.get(&fd) {
            out.push(wire::Fd {
                fd,
                cloexec: info.flags & libc::O_CLOEXEC != 0,
                desc,
                kind: external_kind(name, link, info.flags),
            });
            continue;
        }
        if let Some(id) =
            pipe_id(link).filter(|id| pipes.iter().any(|p| p.id == *id) || cross.pipes.contains(id))
        {
            out.push(wire::Fd {
                fd,
                cloexec: info.flags & libc::O_CLOEXEC != 0,
                desc,
                kind: wire::FdKind::Pipe {
                    id,
                    write_end: info.flags & libc::O_ACCMODE == libc::O_WRONLY,
                    flags: info.flags & libc::O_NONBLOCK,
                },
            });
            continue;
        }
        let cloexec = info.flags & libc::O_CLOEXEC != 0;
        let flags = info.flags
            & !(libc::O_CLOEXEC | libc::O_CREAT | libc::O_EXCL | libc::O_TRUNC | libc::O_NOCTTY);
        if let Some(kind) = unix_pairs.get(&fd) {
            out.push(wire::Fd {
                fd,
                cloexec: info.flags & libc::O_CLOEXEC != 0,
                desc,
                kind: kind.clone(),
            });
            continue;
        }
        let kind = match sockets.probes.iter().find(|p| p.fd == fd) {
            // Only taken by a dump: a check has seen enough.
            Some(p) if p.is_established_tcp() && !sockets.taken => wire::FdKind::Inherited {
                what: "established TCP connection (checked)".into(),
            },
            Some(p) => wire::FdKind::Inet(tern_state::sockets::capture(pid, p, info.flags)?),
            None => fd_kind(
                pid,
                fd,
                link,
                flags,
                info.pos,
                desc,
                dir,
                cross,
                mount_ids.as_deref(),
            )?,
        };
        out.push(wire::Fd {
            fd,
            cloexec,
            desc,
            kind,
        });
    }
    Ok(wire::Files {
        fds: out,
        pipes,
        net_lock: sockets.lock,
    })
}

struct TakenSockets {
    probes: Vec<tern_state::sockets::Probe>,
    /// Established connections are in repair mode and locked.
    taken: bool,
    lock: Option<String>,
}

/// Look at every TCP/UDP socket (but stdio) and deal with the established
/// connections as `conns` says.
fn take_sockets(
    pid: i32,
    listed: &[(i32, String, proc::FdInfo)],
    unix_pairs: &std::collections::BTreeMap<i32, wire::FdKind>,
    conns: Connections<'_>,
) -> Result<TakenSockets> {
    let mut probes = Vec::new();
    for (fd, link, _) in listed {
        if link.starts_with("socket:") && !(0..=2).contains(fd) && !unix_pairs.contains_key(fd) {
            probes.push(tern_state::sockets::probe(pid, *fd)?);
        }
    }
    let established: Vec<&tern_state::sockets::Probe> =
        probes.iter().filter(|p| p.is_established_tcp()).collect();
    let mut out = TakenSockets {
        probes: Vec::new(),
        taken: false,
        lock: None,
    };
    match conns {
        Connections::Refuse => {
            if let Some(p) = established.first() {
                return Err(unsupported(
                    pid,
                    format!(
                        "{}: an established TCP connection; take it with --tcp-established (its packets are held back while it moves)",
                        p.describe()
                    ),
                ));
            }
        }
        Connections::Check => {}
        Connections::Take(held, keep_lock) => {
            let mut pairs = Vec::new();
            for p in &established {
                if let (Some(l), Some(r)) = (p.local, p.peer) {
                    if !pairs.contains(&(l, r)) {
                        pairs.push((l, r));
                    }
                }
            }
            // Locked first: then nothing changes their state or queues.
            held.lock(pid, &pairs)?;
            for p in &established {
                held.repair(pid, p.fd, p.dup.as_fd())?;
            }
            out.taken = true;
            if keep_lock {
                out.lock = held.lock_name().map(str::to_string);
            }
        }
    }
    out.probes = probes;
    Ok(out)
}

fn same_file(pid: i32, fd1: i32, fd2: i32) -> bool {
    tern_sys::same_description(pid, fd1, pid, fd2)
}

#[allow(clippy::too_many_arguments)]
fn fd_kind(
    pid: i32,
    fd: i32,
    link: &str,
    flags: i32,
    offset: u64,
    desc: u32,
    dir: Option<&Path>,
    cross: &CrossProcess,
    mount_ids: Option<&[u32]>,
) -> Result<wire::FdKind> {
    let what = || format!("fd {fd} ({link})");
    if link.starts_with("pipe:") || link.starts_with("socket:") {
        // Sockets other than stdio were taken by `take_sockets`.
        if let Some(kind) = stdio_kind(fd, link) {
            return Ok(kind);
        }
        return Err(unsupported(
            pid,
            format!(
                "{} is shared with {}: name it with --external fd[{fd}]:NAME and give the restore its replacement with --inherit-fd fd[N]:NAME",
                what(),
                proc::describe_holders(link, &[pid])
            ),
        ));
    }
    let fdinfo = || -> Result<String> {
        std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}"))
            .ctx(pid, || format!("read fdinfo {fd}"))
    };
    if tern_state::files::takes(&tern_state::files::FdLink { pid, fd, link }) {
        let text = fdinfo()?;
        let dumped = |p: i32| p == pid || cross.members.contains(&p);
        return Ok(tern_state::files::capture(&tern_state::files::OpenFd {
            pid,
            fd,
            link,
            flags,
            fdinfo: &text,
            dumped: &dumped,
        })?);
    }
    if link == "anon_inode:[eventpoll]" {
        return capture_epoll(pid, &what(), &fdinfo()?);
    }
    if link == "anon_inode:inotify" {
        return capture_inotify(pid, &what(), flags, &fdinfo()?);
    }
    if !link.starts_with('/') {
        return Err(unsupported(
            pid,
            format!("{}: this kind of file is not supported yet", what()),
        ));
    }
    if !link.starts_with("/memfd:") {
        if let Some(ids) = mount_ids {
            check_inside_mount_namespace(pid, fd, link, &fdinfo()?, ids)?;
        }
    }
    path_fd_kind(pid, fd, link, flags, offset, desc, dir)
}

/// The record of an fd opened by path: a memfd, a deleted file (its
/// contents saved once per open description `desc` into `dir`), a FIFO
/// (with its buffered bytes), a terminal (only as stdio), another
/// character device, a regular file or a directory.
fn path_fd_kind(
    pid: i32,
    fd: i32,
    link: &str,
    flags: i32,
    offset: u64,
    desc: u32,
    dir: Option<&Path>,
) -> Result<wire::FdKind> {
    let what = || format!("fd {fd} ({link})");
    let proc_path = format!("/proc/{pid}/fd/{fd}");
    let meta = std::fs::metadata(&proc_path).ctx(pid, || format!("stat {}", what()))?;
    let ft = meta.file_type();
    use std::os::unix::fs::FileTypeExt;
    if let Some(name) = link
        .strip_prefix("/memfd:")
        .and_then(|n| n.strip_suffix(" (deleted)"))
    {
        let saved = dir.map(|d| d.join(wire::deleted_file_name(desc)));
        return capture_memfd(pid, fd, name, flags, offset, saved.as_deref());
    }
    if let Some(path) = link.strip_suffix(" (deleted)") {
        if !ft.is_file() {
            return Err(unsupported(
                pid,
                format!("{}: deleted non-regular file", what()),
            ));
        }
        // Save the contents once per open file description.
        if let Some(dir) = dir {
            let target = dir.join(wire::deleted_file_name(desc));
            if !target.exists() {
                save_file_contents(pid, &proc_path, &target)?;
            }
        }
        return Ok(wire::FdKind::Deleted {
            path: path.to_string(),
            flags,
            offset,
            mode: meta.mode() & 0o7777,
            size: meta.size(),
        });
    }
    if ft.is_fifo() {
        let (size, data) = tern_sys::pipe::peek_pipe(pid, fd)
            .ctx(pid, || format!("copy the data buffered in FIFO fd {fd}"))?;
        return Ok(wire::FdKind::Fifo {
            path: link.to_string(),
            flags,
            ino: meta.ino(),
            size,
            data,
        });
    }
    if ft.is_char_device() {
        let major = (meta.rdev() >> 8) & 0xfff;
        // 4, 5 and 136-143 are terminals: they belong to the session, not the image.
        if major == 4 || major == 5 || (136..=143).contains(&major) {
            if let Some(kind) = stdio_kind(fd, link) {
                return Ok(kind);
            }
            return Err(unsupported(
                pid,
                format!(
                    "{}: terminals other than stdio are not supported yet",
                    what()
                ),
            ));
        }
    } else if !(ft.is_file() || ft.is_dir()) {
        return Err(unsupported(
            pid,
            format!(
                "{}: only regular files, directories and character devices are supported",
                what()
            ),
        ));
    }
    Ok(wire::FdKind::Path {
        path: link.to_string(),
        flags,
        offset,
        file: file_identity(link, &meta),
    })
}

/// The path of what an inotify watch watches: its file handle opened on
/// its file system's mount point, then named by /proc/self/fd.
fn inotify_watch_path(e: &proc::InotifyEntry) -> std::result::Result<String, String> {
    let mount = proc::mount_point_of(e.sdev)
        .ok_or_else(|| format!("its file system (dev {:#x}) is not mounted here", e.sdev))?;
    let mount_fd = std::fs::File::open(&mount).map_err(|err| format!("open {mount}: {err}"))?;
    let fd = tern_sys::open_by_handle(&mount_fd, e.handle_type, &e.handle).map_err(|err| {
        format!("open_by_handle_at on {mount}: {err} (needs CAP_DAC_READ_SEARCH)")
    })?;
    use std::os::fd::AsRawFd;
    let path = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
        .map_err(|err| format!("name the watched file: {err}"))?
        .to_string_lossy()
        .into_owned();
    if path.ends_with(" (deleted)") || !path.starts_with('/') {
        return Err(format!("it watches {path}, which has no path any more"));
    }
    Ok(path)
}

/// An epoll instance: what it watches, by fd (`what` names it).
fn capture_epoll(pid: i32, what: &str, fdinfo: &str) -> Result<wire::FdKind> {
    let targets = proc::parse_epoll_targets(fdinfo)
        .ok_or_else(|| unsupported(pid, format!("{}: unreadable epoll fdinfo", what)))?;
    let mut out = Vec::with_capacity(targets.len());
    for (tfd, events, data, ino) in targets {
        // The registration names the fd it was made with: it must still
        // be that file (else the watched file lives on under another fd,
        // or only inside the epoll, which cannot be rebuilt).
        let same = std::fs::metadata(format!("/proc/{pid}/fd/{tfd}")).is_ok_and(|m| m.ino() == ino);
        if !same {
            return Err(unsupported(
                pid,
                format!(
                    "{}: it watches fd {tfd}, which is no longer open as that file",
                    what
                ),
            ));
        }
        out.push(wire::EpollTarget {
            fd: tfd,
            events,
            data,
        });
    }
    Ok(wire::FdKind::Epoll { targets: out })
}

/// An inotify instance: its watches, each by path (`what` names it).
fn capture_inotify(pid: i32, what: &str, flags: i32, fdinfo: &str) -> Result<wire::FdKind> {
    let entries = proc::parse_inotify(fdinfo)
        .ok_or_else(|| unsupported(pid, format!("{}: unreadable inotify fdinfo", what)))?;
    let mut watches = Vec::with_capacity(entries.len());
    for e in entries {
        let path = inotify_watch_path(&e)
            .map_err(|why| unsupported(pid, format!("{}: watch {}: {why}", what, e.wd)))?;
        watches.push(wire::InotifyWatch {
            wd: e.wd,
            mask: e.mask,
            path,
        });
    }
    watches.sort_by_key(|w| w.wd);
    Ok(wire::FdKind::Inotify {
        flags: flags & libc::O_NONBLOCK,
        watches,
    })
}

/// A memfd (fd `fd` of `pid`, named `name`); its bytes saved to `saved`,
/// once per open file description.
fn capture_memfd(
    pid: i32,
    fd: i32,
    name: &str,
    flags: i32,
    offset: u64,
    saved: Option<&Path>,
) -> Result<wire::FdKind> {
    let what = format!("fd {fd} (/memfd:{name} (deleted))");
    let proc_path = format!("/proc/{pid}/fd/{fd}");
    let meta = std::fs::metadata(&proc_path).ctx(pid, || format!("stat {what}"))?;
    if flags & libc::O_ACCMODE != libc::O_RDWR {
        return Err(unsupported(
            pid,
            format!("{}: a memfd opened other than read-write", what),
        ));
    }
    let dup = tern_sys::take_fd(pid, fd).ctx(pid, || format!("take memfd fd {fd}"))?;
    let seals = tern_sys::memfd_seals(&dup).ctx(pid, || format!("F_GET_SEALS on fd {fd}"))?;
    if name.starts_with("hugetlb") || meta.blksize() > 4096 {
        return Err(unsupported(
            pid,
            format!("{}: hugetlb memfds are not supported yet", what),
        ));
    }
    if let Some(target) = saved {
        if !target.exists() {
            save_file_contents(pid, &proc_path, target)?;
        }
    }
    Ok(wire::FdKind::Memfd {
        name: name.to_string(),
        offset,
        size: meta.size(),
        seals,
        mode: meta.mode() & 0o7777,
    })
}

/// The ids of process `pid`'s mounts if it lives in a mount namespace of
/// its own (read once per process, for [`check_inside_mount_namespace`]).
fn own_mount_ids(pid: i32) -> Result<Option<Vec<u32>>> {
    if !tern_sys::ns::differs(pid, tern_sys::ns::Kind::Mnt).ctx(pid, || "read ns/mnt".into())? {
        return Ok(None);
    }
    let table = tern_sys::mounts::mountinfo(pid).ctx(pid, || "read mountinfo".into())?;
    Ok(Some(table.iter().map(|m| m.id).collect()))
}

/// In a mount namespace of its own a path names a file of that namespace;
/// a file opened on a mount outside it (before the program entered it)
/// would be looked for at the wrong place, unless the same path inside
/// names the same file (`ip netns exec` copies the machine's mounts) or
/// the same device (a runtime's `/dev/null`).
/// `mount_ids`: the ids of its mounts ([`own_mount_ids`]).
fn check_inside_mount_namespace(
    pid: i32,
    fd: i32,
    link: &str,
    fdinfo: &str,
    mount_ids: &[u32],
) -> Result<()> {
    use std::os::unix::fs::FileTypeExt;
    let mnt_id: Option<u32> = fdinfo
        .lines()
        .find_map(|l| l.strip_prefix("mnt_id:"))
        .and_then(|v| v.trim().parse().ok());
    if mnt_id.is_some_and(|id| mount_ids.contains(&id)) {
        return Ok(());
    }
    let outside = std::fs::metadata(format!("/proc/{pid}/fd/{fd}"));
    let inside = std::fs::metadata(format!("/proc/{pid}/root{link}"));
    if let (Ok(o), Ok(i)) = (&outside, &inside) {
        let same_file = (o.dev(), o.ino()) == (i.dev(), i.ino());
        let same_device = o.file_type().is_char_device()
            && i.file_type().is_char_device()
            && o.rdev() == i.rdev();
        if same_file || same_device {
            return Ok(());
        }
    }
    Err(unsupported(
        pid,
        format!(
            "fd {fd} ({link}) is a file of a mount outside its mount namespace (mount {}), opened before it entered it: its path names another file there",
            mnt_id.map_or("?".to_string(), |m| m.to_string())
        ),
    ))
}

fn save_file_contents(pid: i32, src: &str, target: &Path) -> Result<()> {
    use std::io::Read;
    let mut f = std::fs::File::open(src).ctx(pid, || format!("open {src}"))?;
    let mut w = wire::ChunkWriter::create(target, wire::Codec::Zstd(1))?;
    let mut buf = vec![0u8; 1 << 20];
    let mut off = 0u64;
    loop {
        let n = f.read(&mut buf).ctx(pid, || format!("read {src}"))?;
        if n == 0 {
            break;
        }
        w.write(off, &buf[..n])?;
        off += n as u64;
    }
    w.finish()?;
    Ok(())
}
