//! The restore of a program's open files: each description made (by path,
//! as a pipe, socket, memfd, epoll, inotify, or by a `tern_state::files`
//! kind, or taken from tern) at a temporary fd, then put at every fd
//! number that shares it.

use crate::shape::{SCRATCH_AUXV, SCRATCH_STRUCT};
use crate::{Builder, RestoreError, Result, StepContext};
use std::collections::BTreeMap;
use tern_wire as wire;
use tracing::warn;

/// What [`Builder::restore_files`] carries from one open file description
/// to the next.
#[derive(Default)]
pub(crate) struct FilesInProgress {
    /// Above every fd number of the image: where ends wait to be placed.
    base: i32,
    /// Pipe id -> (read end, write end) in the puppet.
    pipes: BTreeMap<u64, (u64, u64)>,
    pipe_ends_used: std::collections::BTreeSet<u64>,
    /// Unix socketpairs: both ends made when the first is met; the other
    /// waits above every image fd number for its own group.
    unix_ends: BTreeMap<u64, u64>,
    fifos_refilled: Vec<u64>,
    /// Filled once every fd they watch is in place.
    epolls: Vec<(i32, Vec<wire::EpollTarget>)>,
}

impl Builder<'_> {
    /// The program's open files: each open file description made once (at a
    /// temporary fd) and placed at every fd that shares it, then what needs
    /// them all in place (epoll registrations), then what no fd holds
    /// closed again.
    pub(crate) fn restore_files(&mut self) -> Result<()> {
        let fds = self.image.files.fds.clone();
        let wanted: Vec<i32> = fds.iter().map(|f| f.fd).collect();
        for n in 0..=2 {
            if !wanted.contains(&n) {
                self.sys(libc::SYS_close, &[n as u64], || format!("close fd {n}"))
                    .ok();
            }
        }
        let base = wanted.iter().copied().max().unwrap_or(2) + 1;
        let mut st = FilesInProgress {
            base,
            pipes: self.create_pipes(base)?,
            ..Default::default()
        };
        self.lock_connections()?;
        // Group fds by open file description.
        let mut groups: BTreeMap<u32, Vec<&wire::Fd>> = BTreeMap::new();
        for f in &fds {
            groups.entry(f.desc).or_default().push(f);
        }
        for members in groups.values() {
            if let Some((tmp, offset, regular)) = self.open_description(members, &mut st)? {
                self.place_description(members, tmp, offset, regular)?;
            }
        }
        // The end of a pipe no fd holds (its other end was closed at the
        // dump) is closed again: writes fail with EPIPE, reads end.
        for &(r, w) in st.pipes.values() {
            for end in [r, w]
                .into_iter()
                .filter(|e| !st.pipe_ends_used.contains(e))
            {
                self.sys(libc::SYS_close, &[end], || {
                    "close a pipe's unused end".into()
                })?;
            }
        }
        self.fill_epolls(std::mem::take(&mut st.epolls))?;
        if let Some(i) = self.imports {
            // tern's pidfd: not the program's.
            let chan = i.chan;
            self.sys(libc::SYS_close, &[chan], || "close tern's pidfd".into())?;
        }
        Ok(())
    }

    /// Connections' packets are dropped here until the program runs.
    pub(crate) fn lock_connections(&mut self) -> Result<()> {
        let pairs = tern_state::sockets::established_pairs(&self.image.files);
        if !pairs.is_empty() {
            let lock = tern_sys::netlock::NetLock::apply(None, "tern_restore", &pairs)
                .step(self.pid, || {
                    "lock the TCP connections' packets (nftables)".into()
                })?;
            self.net.lock = Some(lock);
        }
        self.net.dump_lock = self.image.files.net_lock.clone();
        Ok(())
    }

    /// Make the open file description the fds `members` share, at a
    /// temporary fd: (that fd, the offset to seek to, whether to seek).
    /// `None`: nothing to make (a stdio fd passed on from tern).
    pub(crate) fn open_description(
        &mut self,
        members: &[&wire::Fd],
        st: &mut FilesInProgress,
    ) -> Result<Option<(u64, u64, bool)>> {
        let first = members[0];
        let imported = self.imports.and_then(|i| i.fds.get(&first.fd).copied());
        let made_by_kind = match imported {
            Some(_) => None,
            None => tern_state::files::restore(&first.kind, first.fd, self).transpose()?,
        };
        let opened = match &first.kind {
            _ if made_by_kind.is_some() => (made_by_kind.unwrap_or(0), 0, false),
            _ if imported.is_some() => {
                let tern_fd = imported.unwrap_or(-1);
                let fd = self.install(tern_fd)?;
                if let wire::FdKind::External { flags, .. } = &first.kind {
                    self.keep_nonblock(fd, *flags, "an inherited fd")?;
                }
                (fd, 0, false)
            }
            wire::FdKind::External { name, what, .. } => {
                return Err(RestoreError::NotInherited {
                    pid: self.image.core.pid,
                    fd: first.fd,
                    name: name.clone(),
                    what: what.clone(),
                });
            }
            wire::FdKind::Inherited { what } => {
                for m in members {
                    let open = self.sys(
                        libc::SYS_fcntl,
                        &[m.fd as u64, libc::F_GETFD as u64],
                        || "fcntl".into(),
                    );
                    if open.is_err() {
                        warn!(fd = m.fd, what, "stdio fd was {what}; tern restore has no fd {} to pass on, left closed", m.fd);
                    }
                }
                return Ok(None);
            }
            wire::FdKind::Path {
                path,
                flags,
                offset,
                file,
            } => {
                let tmp = self.open(path, flags | libc::O_CLOEXEC)?;
                // Through the puppet's fd: the image's path may be the
                // program's (a mount namespace of its own), not ours.
                let regular = std::fs::metadata(format!("/proc/{}/fd/{tmp}", self.pid))
                    .map(|m| m.is_file())
                    .unwrap_or(false);
                if regular && file.size < *offset {
                    warn!(path, "file is shorter than the saved offset {offset}");
                }
                (tmp, *offset, regular)
            }
            wire::FdKind::Pipe {
                id,
                write_end,
                flags,
            } => {
                let Some(&(r, w)) = st.pipes.get(id) else {
                    return Err(self.image.bad(format!(
                        "fd {} names pipe {id}, which the image does not hold",
                        first.fd
                    )));
                };
                let end = if *write_end { w } else { r };
                st.pipe_ends_used.insert(end);
                self.keep_nonblock(end, *flags, "a pipe")?;
                (end, 0, false)
            }
            wire::FdKind::Epoll { targets } => {
                let fd = self.sys(
                    libc::SYS_epoll_create1,
                    &[libc::EPOLL_CLOEXEC as u64],
                    || format!("epoll_create1 for fd {}", first.fd),
                )?;
                // Filled once every fd it watches is in place.
                st.epolls.push((first.fd, targets.clone()));
                (fd, 0, false)
            }
            wire::FdKind::Inet(_)
            | wire::FdKind::UnixWidowed { .. }
            | wire::FdKind::UnixBound { .. }
            | wire::FdKind::UnixPair { .. } => (self.open_socket(first, st)?, 0, false),
            wire::FdKind::Deleted { .. }
            | wire::FdKind::Inotify { .. }
            | wire::FdKind::Fifo { .. }
            | wire::FdKind::Memfd { .. } => self.open_file(first, st)?,
            // A kind with a module of its own (tern_state::files) was
            // made above; any other is a kind this tern cannot restore.
            other => {
                return Err(self.image.bad(format!(
                    "fd {} is of a kind this tern cannot restore: {other:?}",
                    first.fd
                )));
            }
        };
        Ok(Some(opened))
    }

    /// A file of the image's other kinds at a temporary fd: (that fd, the
    /// offset to seek to, whether to seek).
    pub(crate) fn open_file(
        &mut self,
        first: &wire::Fd,
        st: &mut FilesInProgress,
    ) -> Result<(u64, u64, bool)> {
        Ok(match &first.kind {
            wire::FdKind::Deleted {
                path,
                flags,
                offset,
                mode,
                ..
            } => {
                let tmp = self.recreate_deleted(first.desc, path, *flags, *mode)?;
                (tmp, *offset, true)
            }
            wire::FdKind::Inotify { flags, watches } => {
                let fd = self.recreate_inotify(*flags, watches)?;
                (fd, 0, false)
            }
            wire::FdKind::Fifo {
                path,
                flags,
                ino,
                size,
                data,
            } => {
                let refill = !st.fifos_refilled.contains(ino);
                st.fifos_refilled.push(*ino);
                let fd = self.reopen_fifo(path, *flags, *size, if refill { data } else { &[] })?;
                (fd, 0, false)
            }
            wire::FdKind::Memfd {
                name,
                offset,
                size,
                seals,
                mode,
            } => {
                let fd = self.recreate_memfd(first.desc, name, *size, *seals, *mode)?;
                self.sys(
                    libc::SYS_lseek,
                    &[fd, *offset, libc::SEEK_SET as u64],
                    || format!("lseek memfd fd {} to {offset}", first.fd),
                )?;
                (fd, 0, false)
            }
            other => {
                return Err(self
                    .image
                    .bad(format!("fd {} is not a file: {other:?}", first.fd)))
            }
        })
    }

    /// A socket of the image at a temporary fd.
    pub(crate) fn open_socket(
        &mut self,
        first: &wire::Fd,
        st: &mut FilesInProgress,
    ) -> Result<u64> {
        Ok(match &first.kind {
            wire::FdKind::Inet(sock) => {
                let fd = self.sys(
                    libc::SYS_socket,
                    &[
                        sock.family as u64,
                        (sock.kind | libc::SOCK_CLOEXEC) as u64,
                        sock.protocol as u64,
                    ],
                    || format!("socket for fd {}", first.fd),
                )?;
                let pid = self.pid;
                let what = || format!("fd {}: {} socket", first.fd, sock.endpoints());
                let dup = tern_sys::take_fd(pid, fd as i32).step(pid, what)?;
                if let Some(r) = tern_state::sockets::restore_socket(dup, sock).step(pid, what)? {
                    self.net.repaired.push(r);
                }
                fd
            }
            wire::FdKind::UnixWidowed {
                kind,
                flags,
                queued,
            } => {
                let [end, other] =
                    self.unix_socketpair_above(*kind, st.base, || format!("fd {}", first.fd))?;
                // What waited at it was sent from the closed end.
                if !queued.is_empty() {
                    let dup = tern_sys::take_fd(self.pid, other as i32)
                        .step(self.pid, || format!("the other end of fd {}", first.fd))?;
                    tern_sys::sock::send_all(std::os::fd::AsFd::as_fd(&dup), queued)
                        .step(self.pid, || {
                            format!("put back what waited at fd {}", first.fd)
                        })?;
                }
                self.sys(libc::SYS_close, &[other], || "close the other end".into())?;
                self.keep_nonblock(end, *flags, "a unix socket")?;
                end
            }
            wire::FdKind::UnixBound {
                name,
                kind,
                flags,
                backlog,
                file,
            } => {
                let fd = self.sys(
                    libc::SYS_socket,
                    &[libc::AF_UNIX as u64, (kind | libc::SOCK_CLOEXEC) as u64, 0],
                    || format!("socket for fd {}", first.fd),
                )?;
                let pid = self.pid;
                let what = || {
                    format!(
                        "fd {}: unix socket bound to {}",
                        first.fd,
                        tern_state::sockets::show_unix_name(name)
                    )
                };
                let dup = tern_sys::take_fd(pid, fd as i32).step(pid, what)?;
                let deferred =
                    tern_state::sockets::restore_bound(dup, name, *flags, *backlog, *file)
                        .step(pid, what)?;
                self.net.binds.extend(deferred);
                fd
            }
            wire::FdKind::UnixPair {
                pair,
                ino,
                kind,
                flags,
                ..
            } => {
                if !st.unix_ends.contains_key(ino) {
                    let ends = self.create_unix_pair(*pair, *kind, st.base)?;
                    st.unix_ends.extend(ends);
                }
                let Some(end) = st.unix_ends.remove(ino) else {
                    return Err(self.image.bad(format!(
                        "fd {} is an end of unix socket pair {pair} made already",
                        first.fd
                    )));
                };
                self.keep_nonblock(end, *flags, "a unix socket")?;
                end
            }
            other => {
                return Err(self
                    .image
                    .bad(format!("fd {} is not a socket: {other:?}", first.fd)))
            }
        })
    }

    /// Put the description made at `tmp` at each of its fds (seeking to
    /// `offset` first if `regular`), with their close-on-exec flags.
    pub(crate) fn place_description(
        &mut self,
        members: &[&wire::Fd],
        tmp: u64,
        offset: u64,
        regular: bool,
    ) -> Result<()> {
        let first = members[0];
        if regular {
            self.sys(
                libc::SYS_lseek,
                &[tmp, offset, libc::SEEK_SET as u64],
                || format!("lseek fd {} to {offset}", first.fd),
            )?;
        }
        let mut tmp_used = false;
        for m in members {
            let cloexec = if m.cloexec { libc::O_CLOEXEC } else { 0 };
            if m.fd as u64 == tmp {
                tmp_used = true;
                let fl = if m.cloexec { libc::FD_CLOEXEC } else { 0 };
                self.sys(
                    libc::SYS_fcntl,
                    &[tmp, libc::F_SETFD as u64, fl as u64],
                    || "fcntl F_SETFD".into(),
                )?;
            } else {
                self.sys(libc::SYS_dup3, &[tmp, m.fd as u64, cloexec as u64], || {
                    format!("dup3 to fd {}", m.fd)
                })?;
            }
        }
        if !tmp_used {
            self.sys(libc::SYS_close, &[tmp], || "close temporary fd".into())?;
        }
        Ok(())
    }

    /// Register what each epoll watches, every fd being in place.
    pub(crate) fn fill_epolls(&mut self, epolls: Vec<(i32, Vec<wire::EpollTarget>)>) -> Result<()> {
        for (epfd, targets) in epolls {
            for t in targets {
                // struct epoll_event is packed on x86-64: u32 events, u64 data.
                let mut ev = [0u8; 12];
                ev[..4].copy_from_slice(&t.events.to_le_bytes());
                ev[4..].copy_from_slice(&t.data.to_le_bytes());
                self.poke(SCRATCH_STRUCT, &ev)?;
                let addr = self.scratch + SCRATCH_STRUCT;
                self.sys(
                    libc::SYS_epoll_ctl,
                    &[epfd as u64, libc::EPOLL_CTL_ADD as u64, t.fd as u64, addr],
                    || format!("epoll_ctl(ADD fd {}) on epoll fd {epfd}", t.fd),
                )?;
            }
        }
        Ok(())
    }

    /// A unix socketpair of `kind` made in the puppet, both ends above fd
    /// `base` (see [`fd_pair_above`](Self::fd_pair_above)); `what` names it.
    pub(crate) fn unix_socketpair_above(
        &mut self,
        kind: i32,
        base: i32,
        what: impl FnOnce() -> String,
    ) -> Result<[u64; 2]> {
        let arr = self.scratch + SCRATCH_STRUCT;
        self.sys(
            libc::SYS_socketpair,
            &[
                libc::AF_UNIX as u64,
                (kind | libc::SOCK_CLOEXEC) as u64,
                0,
                arr,
            ],
            || format!("socketpair for {}", what()),
        )?;
        self.fd_pair_above(base)
    }

    /// The two fds a `pipe2`/`socketpair` just wrote at `SCRATCH_STRUCT`,
    /// moved above fd `base` (so no later dup3 onto an image fd number
    /// lands on them).
    pub(crate) fn fd_pair_above(&mut self, base: i32) -> Result<[u64; 2]> {
        let raw = self.peek(SCRATCH_STRUCT, 8)?;
        let mut fds = [0u64; 2];
        for (k, e) in fds.iter_mut().enumerate() {
            let low = u64::from(u32::from_le_bytes([
                raw[4 * k],
                raw[4 * k + 1],
                raw[4 * k + 2],
                raw[4 * k + 3],
            ]));
            *e = self.sys(
                libc::SYS_fcntl,
                &[low, libc::F_DUPFD_CLOEXEC as u64, base as u64],
                || format!("move fd {low} above the image's fds"),
            )?;
            self.sys(libc::SYS_close, &[low], || "close".into())?;
        }
        Ok(fds)
    }

    /// O_NONBLOCK on the open file description behind the puppet's `fd`
    /// if the image's `flags` have it.
    pub(crate) fn keep_nonblock(&mut self, fd: u64, flags: i32, what: &str) -> Result<()> {
        if flags & libc::O_NONBLOCK != 0 {
            self.sys(
                libc::SYS_fcntl,
                &[fd, libc::F_SETFL as u64, libc::O_NONBLOCK as u64],
                || format!("fcntl(F_SETFL, O_NONBLOCK) on {what}"),
            )?;
        }
        Ok(())
    }

    /// Create the image's pipes above every fd number the image uses (so no
    /// later dup3 lands on them), refill their buffered data; returns
    /// pipe id -> (read end, write end). The group loop closes them once
    /// dup'ed to their numbers.
    pub(crate) fn create_pipes(&mut self, base: i32) -> Result<BTreeMap<u64, (u64, u64)>> {
        let pipes = self.image.files.pipes.clone();
        let mut out = BTreeMap::new();
        for p in &pipes {
            let arr = self.scratch + SCRATCH_STRUCT;
            self.sys(libc::SYS_pipe2, &[arr, libc::O_CLOEXEC as u64], || {
                "pipe2".into()
            })?;
            let [r, w] = self.fd_pair_above(base)?;
            if p.size != 65536 {
                self.sys(
                    libc::SYS_fcntl,
                    &[w, libc::F_SETPIPE_SZ as u64, p.size as u64],
                    || format!("F_SETPIPE_SZ {} on pipe {}", p.size, p.id),
                )?;
            }
            const STAGE: u64 = SCRATCH_AUXV;
            const STAGE_LEN: usize = 32 << 10;
            for piece in p.data.chunks(STAGE_LEN) {
                self.poke(STAGE, piece)?;
                let addr = self.scratch + STAGE;
                let n = self.sys(libc::SYS_write, &[w, addr, piece.len() as u64], || {
                    format!("refill pipe {}", p.id)
                })?;
                if n != piece.len() as u64 {
                    return Err(self.image.bad(format!(
                        "pipe {} holds {} bytes, more than its capacity {}",
                        p.id,
                        p.data.len(),
                        p.size
                    )));
                }
            }
            out.insert(p.id, (r, w));
        }
        Ok(out)
    }

    /// Make unix socket pair `pair` (both its ends in the image) above fd
    /// `base`, each end holding the bytes it had waiting; returns each
    /// end's image inode -> its fd in the puppet.
    pub(crate) fn create_unix_pair(
        &mut self,
        pair: u64,
        kind: i32,
        base: i32,
    ) -> Result<[(u64, u64); 2]> {
        let ends: Vec<(u64, Vec<u8>)> = {
            let mut seen: Vec<(u64, Vec<u8>)> = Vec::new();
            for f in &self.image.files.fds {
                if let wire::FdKind::UnixPair {
                    pair: p,
                    ino,
                    queued,
                    ..
                } = &f.kind
                {
                    if *p == pair && !seen.iter().any(|(i, _)| i == ino) {
                        seen.push((*ino, queued.clone()));
                    }
                }
            }
            seen
        };
        let [(ino_a, queued_a), (ino_b, queued_b)] = <[(u64, Vec<u8>); 2]>::try_from(ends)
            .map_err(|e| {
                self.image.bad(format!(
                    "unix socket pair {pair} has {} ends in the image, not 2",
                    e.len()
                ))
            })?;
        let fds = self.unix_socketpair_above(kind, base, || format!("unix pair {pair}"))?;
        // What waits at one end was sent from the other: send it again.
        let pid = self.pid;
        for (from, data) in [(fds[1], &queued_a), (fds[0], &queued_b)] {
            if data.is_empty() {
                continue;
            }
            let what = || format!("refill unix socket pair {pair}");
            let dup = tern_sys::take_fd(pid, from as i32).step(pid, what)?;
            tern_sys::sock::send_all(std::os::fd::AsFd::as_fd(&dup), data).step(pid, what)?;
        }
        Ok([(ino_a, fds[0]), (ino_b, fds[1])])
    }

    /// Recreate a deleted file's contents at its old path, open it in the
    /// puppet, and unlink it again.
    pub(crate) fn recreate_deleted(
        &mut self,
        desc: u32,
        path: &str,
        flags: i32,
        mode: u32,
    ) -> Result<u64> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let src = self.image.dir.join(wire::deleted_file_name(desc));
        let mut reader = wire::ChunkReader::open(&src)?;
        // Created private: tern runs as root, and the file holds the
        // program's bytes. Its mode is set on the open (unlinked) file below,
        // without setuid/setgid bits.
        let mut out = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| RestoreError::File {
                path: path.to_string(),
                what: format!("cannot recreate the deleted file here: {e}"),
            })?;
        let mut buf = Vec::new();
        let result = (|| -> Result<u64> {
            while let Some(_off) = reader.next_into(&mut buf)? {
                out.write_all(&buf).map_err(|e| RestoreError::File {
                    path: path.to_string(),
                    what: e.to_string(),
                })?;
            }
            self.open(path, flags | libc::O_CLOEXEC)
        })();
        let _ = std::fs::remove_file(path);
        let fd = result?;
        self.sys(libc::SYS_fchmod, &[fd, u64::from(mode & 0o777)], || {
            format!("fchmod of the recreated {path}")
        })?;
        Ok(fd)
    }

    /// An inotify instance with the image's watches under their own
    /// descriptor numbers: the kernel hands out numbers in turn, so a
    /// watch that gets one too small is removed and added again until it
    /// gets its own; the IN_IGNORED events that leaves are read away.
    pub(crate) fn recreate_inotify(
        &mut self,
        flags: i32,
        watches: &[wire::InotifyWatch],
    ) -> Result<u64> {
        let mut init_flags = libc::IN_CLOEXEC;
        if flags & libc::O_NONBLOCK != 0 {
            init_flags |= libc::IN_NONBLOCK;
        }
        let fd = self.sys(libc::SYS_inotify_init1, &[init_flags as u64], || {
            "inotify_init1".into()
        })?;
        for w in watches {
            let path = self.path_arg(&w.path)?;
            let mut tries = 0u32;
            loop {
                let got = self.sys(
                    libc::SYS_inotify_add_watch,
                    &[fd, path, u64::from(w.mask)],
                    || format!("inotify_add_watch({})", w.path),
                )? as i32;
                if got == w.wd {
                    break;
                }
                tries += 1;
                if got > w.wd || tries > 100_000 {
                    return Err(self.image.bad(format!(
                        "inotify watch {} on {} cannot get its number back (the kernel gave {got})",
                        w.wd, w.path
                    )));
                }
                self.sys(libc::SYS_inotify_rm_watch, &[fd, got as u64], || {
                    "inotify_rm_watch".into()
                })?;
            }
        }
        let pid = self.pid;
        let what = || "read away the IN_IGNORED events of the renumbering".to_string();
        let dup = tern_sys::take_fd(pid, fd as i32).step(pid, what)?;
        tern_sys::drain_nonblocking(&dup).step(pid, what)?;
        Ok(fd)
    }

    /// Open FIFO `path` in the puppet with `flags`, without blocking: a
    /// read-write open (which never waits for a peer) holds it open while
    /// the real one is made non-blocking, then gets the image's blocking
    /// mode. `data` goes back into its buffer unless it holds bytes
    /// already (someone else kept it open, buffer and all).
    pub(crate) fn reopen_fifo(
        &mut self,
        path: &str,
        flags: i32,
        size: u32,
        data: &[u8],
    ) -> Result<u64> {
        let holder = self.open(path, libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC)?;
        let fd = self.open(path, flags | libc::O_NONBLOCK | libc::O_CLOEXEC)?;
        self.sys(
            libc::SYS_fcntl,
            &[fd, libc::F_SETFL as u64, (flags & libc::O_NONBLOCK) as u64],
            || format!("fcntl(F_SETFL) on FIFO {path}"),
        )?;
        let pid = self.pid;
        let what = || format!("refill FIFO {path}");
        let dup = tern_sys::take_fd(pid, holder as i32).step(pid, what)?;
        let file = std::fs::File::from(dup);
        let waiting = tern_sys::pipe::buffered(&file).step(pid, what)?;
        if waiting == 0 && !data.is_empty() {
            tern_sys::pipe::resize(&file, size).step(pid, what)?;
            std::io::Write::write_all(&mut &file, data).step(pid, what)?;
        }
        self.sys(libc::SYS_close, &[holder], || "close".into())?;
        Ok(fd)
    }

    /// A memfd named `name` in the puppet, holding the saved contents
    /// (`size` bytes), then its seals.
    pub(crate) fn recreate_memfd(
        &mut self,
        desc: u32,
        name: &str,
        size: u64,
        seals: i32,
        mode: u32,
    ) -> Result<u64> {
        use std::os::unix::fs::FileExt;
        const MFD_CLOEXEC: u64 = 1;
        const MFD_ALLOW_SEALING: u64 = 2;
        const F_SEAL_SEAL: i32 = 1;
        // Exactly F_SEAL_SEAL is what a memfd made without
        // MFD_ALLOW_SEALING has; any other set is added to a sealable one.
        let sealable = seals != F_SEAL_SEAL;
        let name_addr = self.path_arg(name)?;
        let flags = MFD_CLOEXEC | if sealable { MFD_ALLOW_SEALING } else { 0 };
        let fd = self.sys(libc::SYS_memfd_create, &[name_addr, flags], || {
            format!("memfd_create({name:?})")
        })?;
        let pid = self.pid;
        let what = || format!("fill memfd {name:?}");
        let dup = tern_sys::take_fd(pid, fd as i32).step(pid, what)?;
        let file = std::fs::File::from(dup);
        let src = self.image.dir.join(wire::deleted_file_name(desc));
        let mut reader = wire::ChunkReader::open(&src)?;
        let mut buf = Vec::new();
        while let Some(off) = reader.next_into(&mut buf)? {
            file.write_all_at(&buf, off).step(pid, what)?;
        }
        file.set_len(size).step(pid, what)?;
        self.sys(libc::SYS_fchmod, &[fd, u64::from(mode & 0o777)], || {
            format!("fchmod of memfd {name:?}")
        })?;
        if sealable && seals != 0 {
            let own: std::os::fd::OwnedFd = file.into();
            tern_sys::memfd_add_seals(&own, seals)
                .step(pid, || format!("F_ADD_SEALS {seals:#x} on memfd {name:?}"))?;
        }
        Ok(fd)
    }
}
