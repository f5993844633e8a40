//! The destination's half of post-copy: a final image that left pages at
//! the source (`deferred.img`) is resumed without them. A userfaultfd
//! registered over the private anonymous mappings holding those pages
//! reports each first touch; [`Filler`] asks the source for the page (and
//! its neighbours), fills it with `UFFDIO_COPY` once it arrives, and fills
//! the pages the source
//! pushes in the background, until none is owed. Pages that never had data
//! get the zero page. The program's forks, mremaps, madvise(DONTNEED)s and
//! munmaps during that time are followed through the uffd's events. See
//! kernel-notes, "Post-copy".

use std::collections::{BTreeMap, HashSet};
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use tern_sys::uffd_missing::{self as uffd, UffdEvent};
use tern_wire as wire;
use tracing::debug;

use crate::puppet::Puppet;
use crate::{RestoreError, Result, StepContext};

/// Pages a final image owes, and the uffd that will report their touches.
#[derive(Debug)]
pub struct OwedPages {
    uffd: OwnedFd,
    /// Addresses, sorted.
    pages: Vec<u64>,
    page_size: u64,
}

impl OwedPages {
    pub fn len(&self) -> usize {
        self.pages.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pages.is_empty()
    }

    /// The uffd (for a guard process to hold a copy).
    pub fn uffd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.uffd.as_fd()
    }
}

/// The owed pages of the final image in `dir`, checked against its
/// layout: each in a private anonymous mapping. `None` when it owes none.
pub(crate) fn read_owed(
    dir: &Path,
    vmas: &[wire::Vma],
    page_size: u64,
) -> Result<Option<Vec<u64>>> {
    let path = dir.join(wire::DEFERRED_FILE);
    if !path.exists() {
        return Ok(None);
    }
    let owed: wire::Deferred = wire::read_record(&path, wire::RecordKind::Deferred)?;
    let bad = |what: String| RestoreError::BadImage {
        dir: dir.to_path_buf(),
        what: format!("{}: {what}", wire::DEFERRED_FILE),
    };
    if !owed.well_formed(page_size) {
        return Err(bad("pages not sorted, repeated or not page-aligned".into()));
    }
    for &a in &owed.pages {
        if !vmas
            .iter()
            .any(|v| v.kind == wire::VmaKind::Anon && !v.shared && v.start <= a && a < v.end)
        {
            return Err(bad(format!(
                "page {a:#x} is not in private anonymous memory"
            )));
        }
    }
    Ok(Some(owed.pages))
}

/// The pages of `owed` (sorted) present in process `pid` now.
pub(crate) fn present_among(pid: i32, owed: &[u64], page_size: u64) -> std::io::Result<Vec<u64>> {
    let pagemap = tern_sys::proc::Pagemap::open(pid)?;
    let mut present = Vec::new();
    // Owed pages close together: one pagemap read over their span.
    for group in owed.chunk_by(|a, b| b - a <= 64 * page_size) {
        let (Some(&first), Some(&last)) = (group.first(), group.last()) else {
            continue;
        };
        let entries = pagemap.read(first, last + page_size, page_size)?;
        present.extend(group.iter().copied().filter(|a| {
            entries
                .get(((a - first) / page_size) as usize)
                .is_some_and(|e| e & tern_sys::proc::PM_PRESENT != 0)
        }));
    }
    Ok(present)
}

/// Make the uffd inside the stopped puppet (before its credentials and
/// seccomp filter are restored, which could forbid it), take tern's copy
/// and close the puppet's.
pub(crate) fn open_uffd_in(p: &mut Puppet) -> Result<OwnedFd> {
    let (taken, features) = uffd_of(p, uffd::POSTCOPY_FEATURES, "post-copy")?;
    if features & uffd::POSTCOPY_FEATURES != uffd::POSTCOPY_FEATURES {
        return Err(RestoreError::Unsupported(format!(
            "post-copy needs the userfaultfd fork, remap, remove and unmap events (Linux 4.11+); this kernel offers features {features:#x}"
        )));
    }
    Ok(taken)
}

/// A userfaultfd of the puppet's memory, held by tern only (made in the
/// puppet, taken with `pidfd_getfd`, closed there), with `features` asked
/// (`for_what` names the use in errors); returns it and the features the
/// kernel granted.
pub(crate) fn uffd_of(p: &mut Puppet, features: u64, for_what: &str) -> Result<(OwnedFd, u64)> {
    let pid = p.pid;
    let flags = (libc::O_CLOEXEC | libc::O_NONBLOCK) as u64;
    let fd = p
        .syscall(libc::SYS_userfaultfd, &[flags])
        .step(pid, || format!("userfaultfd for {for_what}"))?;
    let taken = tern_sys::take_fd(pid, fd as i32);
    p.syscall(libc::SYS_close, &[fd])
        .step(pid, || "close the puppet's userfaultfd".into())?;
    let taken = taken.step(pid, || "take the puppet's userfaultfd".into())?;
    let granted = tern_sys::uffd::api(taken.as_fd(), features)
        .step(pid, || format!("UFFDIO_API for {for_what}"))?;
    Ok((taken, granted))
}

/// Register every mapping holding an owed page for missing-page faults:
/// the last step before the program resumes (nothing of tern's may touch
/// those pages after it).
pub(crate) fn register(
    pid: i32,
    uffd: OwnedFd,
    vmas: &[wire::Vma],
    pages: Vec<u64>,
    page_size: u64,
) -> Result<OwedPages> {
    let mappings = register_mappings_of(pid, uffd.as_fd(), vmas, &pages)?;
    debug!(pid, mappings, pages = pages.len(), "post-copy registered");
    Ok(OwedPages {
        uffd,
        pages,
        page_size,
    })
}

/// Register each mapping of `vmas` holding one of `pages` (sorted) with
/// `uffd` for missing-page faults, whole; returns how many.
pub(crate) fn register_mappings_of(
    pid: i32,
    uffd: std::os::fd::BorrowedFd<'_>,
    vmas: &[wire::Vma],
    pages: &[u64],
) -> Result<usize> {
    let mut done: Option<(u64, u64)> = None;
    let mut mappings = 0;
    for &a in pages {
        if done.is_some_and(|(s, e)| s <= a && a < e) {
            continue;
        }
        let Some(v) = vmas.iter().find(|v| v.start <= a && a < v.end) else {
            continue;
        };
        uffd::register_missing(uffd, v.start, v.end).step(pid, || {
            format!(
                "register {:#x}-{:#x} for missing-page faults",
                v.start, v.end
            )
        })?;
        done = Some((v.start, v.end));
        mappings += 1;
    }
    Ok(mappings)
}

/// One address space waiting for pages: the program's, or a child's it
/// forked during post-copy (which is owed what its parent was then).
#[derive(Debug)]
struct Space {
    uffd: OwnedFd,
    /// Owed pages by their address here -> by the source's address, and
    /// back (they differ after an mremap).
    by_here: BTreeMap<u64, u64>,
    by_source: BTreeMap<u64, u64>,
}

impl Space {
    fn forget(&mut self, start: u64, end: u64) {
        let gone: Vec<u64> = self.by_here.range(start..end).map(|(&a, _)| a).collect();
        for a in gone {
            if let Some(src) = self.by_here.remove(&a) {
                self.by_source.remove(&src);
            }
        }
    }

    fn moved(&mut self, from: u64, to: u64, len: u64) {
        let moving: Vec<(u64, u64)> = self
            .by_here
            .range(from..from + len)
            .map(|(&a, &s)| (a, s))
            .collect();
        for (a, _) in &moving {
            self.by_here.remove(a);
        }
        for (a, src) in moving {
            let here = to + (a - from);
            self.by_here.insert(here, src);
            self.by_source.insert(src, here);
        }
    }
}

/// Fills owed pages as they arrive and answers the program's touches.
#[derive(Debug)]
pub struct Filler {
    spaces: Vec<Space>,
    /// Every page owed, by source address, sorted (the image's list).
    owed: Vec<u64>,
    /// Source addresses already asked for.
    asked: HashSet<u64>,
    page: u64,
    /// Pages placed (in any space), what the program did meanwhile.
    pub tally: wire::net::PostCopyTally,
    /// Touches of never-owed pages whose zero page could not be placed yet
    /// (`EAGAIN`: an event was pending): (space, page). Their threads wait
    /// until these are placed; they are tried again after the events.
    zero_later: Vec<(usize, u64)>,
    /// The program (its space is the first).
    pid: i32,
    /// Copies into the running program retried after `ESRCH`.
    copy_retries: u32,
}

/// How many `ESRCH`s from a program that still runs post-copy rides out.
const MAX_COPY_RETRIES: u32 = 2000;

/// Whether process `pid` has exited (gone, or a zombie: no start time).
fn program_ended(pid: i32) -> bool {
    tern_sys::proc::start_time(pid).is_none()
}

impl Filler {
    pub fn new(owed: OwedPages, pid: i32) -> Filler {
        let by_here: BTreeMap<u64, u64> = owed.pages.iter().map(|&a| (a, a)).collect();
        let space = Space {
            uffd: owed.uffd,
            by_source: by_here.clone(),
            by_here,
        };
        Filler {
            spaces: vec![space],
            owed: owed.pages,
            asked: HashSet::new(),
            page: owed.page_size,
            tally: Default::default(),
            zero_later: Vec::new(),
            pid,
            copy_retries: 0,
        }
    }

    /// Pages still owed to some space.
    pub fn owed(&self) -> usize {
        self.spaces.iter().map(|s| s.by_here.len()).sum()
    }

    /// Copies of every space's uffd, to wait on elsewhere (a blocking
    /// `poll` off the async runtime) while this filler keeps the originals.
    pub fn watch_fds(&self) -> std::io::Result<Vec<OwnedFd>> {
        self.spaces
            .iter()
            .map(|s| s.uffd.as_fd().try_clone_to_owned())
            .collect()
    }

    /// Read and act on every waiting event of every space; returns the
    /// source addresses to ask for (touched, owed, not yet asked).
    pub fn take_events(&mut self) -> std::result::Result<Vec<u64>, String> {
        let mut want = Vec::new();
        let mut i = 0;
        while i < self.spaces.len() {
            loop {
                let events = uffd::read_events(self.spaces[i].uffd.as_fd())
                    .map_err(|e| format!("read the userfaultfd: {e}"))?;
                if events.is_empty() {
                    break;
                }
                for ev in events {
                    self.on_event(i, ev, &mut want)?;
                }
            }
            i += 1;
        }
        // The events are taken: the zero pages refused meanwhile now go in
        // (or wait for the next call, if another event came).
        for (i, a) in std::mem::take(&mut self.zero_later) {
            if i < self.spaces.len() {
                self.zero_fill(i, a)?;
            }
        }
        Ok(want)
    }

    /// Give the never-owed page `a` of space `i` the zero page and wake its
    /// waiters.
    fn zero_fill(&mut self, i: usize, a: u64) -> std::result::Result<(), String> {
        let fd = self.spaces[i].uffd.as_fd();
        match uffd::zero(fd, a, self.page) {
            Ok(()) => self.tally.zero_filled += 1,
            // Filled meanwhile: wake whoever waits, to be sure.
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                let _ = uffd::wake(fd, a, self.page);
            }
            // An event is pending: the fault is not reported again, so it
            // is kept and placed once the events are read.
            Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => self.zero_later.push((i, a)),
            // No longer mapped (woken, it faults as it would here) or the
            // process has ended.
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ESRCH)) => {
                let _ = uffd::wake(fd, a, self.page);
            }
            Err(e) => return Err(format!("zero page at {a:#x}: {e}")),
        }
        Ok(())
    }

    fn on_event(
        &mut self,
        i: usize,
        ev: UffdEvent,
        want: &mut Vec<u64>,
    ) -> std::result::Result<(), String> {
        let page = self.page;
        match ev {
            UffdEvent::PageFault { address } => {
                let a = address & !(page - 1);
                let s = &self.spaces[i];
                if let Some(&src) = s.by_here.get(&a) {
                    self.tally.faults_waited += 1;
                    if self.asked.insert(src) {
                        want.push(src);
                    }
                    return Ok(());
                }
                // Never had data: zeros.
                self.zero_fill(i, a)?;
            }
            // A thread that touched a page of the range before the event
            // waits for a page no longer owed there: woken, it faults
            // again (a zero page now, or no mapping, as it would here).
            UffdEvent::Remove { start, end } => {
                self.tally.removes += 1;
                self.spaces[i].forget(start, end);
                let _ = uffd::wake(self.spaces[i].uffd.as_fd(), start, end - start);
            }
            UffdEvent::Unmap { start, end } => {
                self.tally.unmaps += 1;
                self.spaces[i].forget(start, end);
                let _ = uffd::wake(self.spaces[i].uffd.as_fd(), start, end - start);
            }
            UffdEvent::Remap { from, to, len } => {
                self.tally.remaps += 1;
                self.spaces[i].moved(from, to, len);
                let _ = uffd::wake(self.spaces[i].uffd.as_fd(), from, len);
            }
            UffdEvent::Fork { uffd: fd } => {
                self.tally.forks += 1;
                let child = uffd::adopt_forked(fd).map_err(|e| e.to_string())?;
                let parent = &self.spaces[i];
                let space = Space {
                    uffd: child,
                    by_here: parent.by_here.clone(),
                    by_source: parent.by_source.clone(),
                };
                debug!(
                    owed = space.by_here.len(),
                    "program forked during post-copy"
                );
                self.spaces.push(space);
            }
        }
        Ok(())
    }

    /// Fill pages that arrived: `data` from the source's address `start`
    /// on, each one owed, copied into every space that still waits for it.
    /// Returns pages to ask for that touches revealed meanwhile.
    pub fn fill(&mut self, start: u64, data: &[u8]) -> std::result::Result<Vec<u64>, String> {
        let page = self.page as usize;
        if data.is_empty() || !data.len().is_multiple_of(page) {
            return Err(format!(
                "{} bytes of pages at {start:#x} are not whole pages",
                data.len()
            ));
        }
        for k in 0..data.len() / page {
            let src = start + (k * page) as u64;
            if self.owed.binary_search(&src).is_err() {
                return Err(format!("the source sent page {src:#x}, which was not owed"));
            }
        }
        let mut want = Vec::new();
        let pages = data.len() / page;
        let mut i = 0;
        while i < self.spaces.len() {
            let mut k = 0;
            while k < pages {
                let src = start + (k * page) as u64;
                let Some(&here) = self.spaces[i].by_source.get(&src) else {
                    k += 1;
                    continue;
                };
                // A run of pages contiguous both there and here: one copy.
                let mut n = 1;
                while k + n < pages
                    && self.spaces[i].by_source.get(&(src + (n * page) as u64))
                        == Some(&(here + (n * page) as u64))
                {
                    n += 1;
                }
                match self.copy_run(i, here, &data[k * page..(k + n) * page])? {
                    Placed::Yes => {}
                    Placed::EventFirst => {
                        // An event is pending (fork, mremap, madvise,
                        // munmap): take it, then place these pages again.
                        want.extend(self.take_events()?);
                        continue;
                    }
                    // The program itself still runs: not gone (seen under
                    // load, as it forked). Read the events, try again; a
                    // failure that lasts ends post-copy (never a silent
                    // "done" with pages unplaced: they would read as zeros).
                    Placed::SpaceGone if i == 0 && !program_ended(self.pid) => {
                        self.copy_retries += 1;
                        if self.copy_retries > MAX_COPY_RETRIES {
                            return Err(format!(
                                "placing pages into program {} keeps failing (ESRCH) though it runs",
                                self.pid
                            ));
                        }
                        std::thread::sleep(std::time::Duration::from_millis(1));
                        want.extend(self.take_events()?);
                        continue;
                    }
                    Placed::SpaceGone => {
                        let s = &mut self.spaces[i];
                        s.by_here.clear();
                        s.by_source.clear();
                        break;
                    }
                }
                let s = &mut self.spaces[i];
                for j in 0..n {
                    if let Some(h) = s.by_source.remove(&(src + (j * page) as u64)) {
                        s.by_here.remove(&h);
                    }
                }
                self.tally.pages += n as u64;
                k += n;
            }
            i += 1;
        }
        self.drop_finished_spaces();
        Ok(want)
    }

    /// Spaces owing nothing more (a forked child filled, or ended) are
    /// dropped, their uffd with them; the program's own is kept until the
    /// end. Zero pages waiting for a later space follow its index.
    fn drop_finished_spaces(&mut self) {
        let keep: Vec<bool> = (0..self.spaces.len())
            .map(|k| k == 0 || !self.spaces[k].by_here.is_empty())
            .collect();
        let index_after: Vec<usize> = keep
            .iter()
            .scan(0, |n, &k| {
                let at = *n;
                *n += usize::from(k);
                Some(at)
            })
            .collect();
        self.zero_later.retain(|&(i, _)| keep[i]);
        for z in &mut self.zero_later {
            z.0 = index_after[z.0];
        }
        let mut kept = keep.iter();
        self.spaces.retain(|_| kept.next().copied().unwrap_or(true));
    }

    /// `UFFDIO_COPY` of a run into space `i` at `here`, all of it: a part
    /// the kernel left is placed again, a page already there (filled
    /// meanwhile) is skipped.
    fn copy_run(&self, i: usize, here: u64, bytes: &[u8]) -> std::result::Result<Placed, String> {
        let fd = self.spaces[i].uffd.as_fd();
        let page = self.page as usize;
        let mut off = 0;
        let mut one_by_one = false;
        while off < bytes.len() {
            let len = if one_by_one { page } else { bytes.len() - off };
            let at = here + off as u64;
            match uffd::copy(fd, at, &bytes[off..off + len]) {
                Ok(n) if n > 0 => off += n,
                Ok(_) => return Err(format!("fill page {at:#x}: the kernel placed nothing")),
                Err(e) => match e.raw_os_error() {
                    Some(libc::EAGAIN) => return Ok(Placed::EventFirst),
                    Some(libc::ESRCH) => return Ok(Placed::SpaceGone),
                    // Already there (filled meanwhile), or no longer a
                    // registered mapping (unmapped, the event taken).
                    Some(libc::EEXIST | libc::ENOENT) if one_by_one => off += page,
                    Some(libc::EEXIST | libc::ENOENT) => one_by_one = true,
                    _ => return Err(format!("fill page {at:#x}: {e}")),
                },
            }
        }
        Ok(Placed::Yes)
    }
}

/// What a copy into a space came to.
enum Placed {
    Yes,
    /// A uffd event must be read first (`EAGAIN`).
    EventFirst,
    /// The process has ended (`ESRCH`).
    SpaceGone,
}

/// A running program's post-copy, as `tern serve` holds it: the pages
/// owed, and the guard that kills the program should this daemon die first.
#[derive(Debug)]
pub(crate) struct PostCopy {
    pub owed: OwedPages,
    pub guard: tern_sys::child::PostCopyGuard,
}

/// How long a blocking wait on the uffds lasts before it is renewed.
const WATCH_MS: i32 = 200;

/// Drive post-copy for program `pid` (it runs): ask for the pages it
/// touches, fill what arrives, until nothing is owed; then tell the source
/// (`PostCopyDone`). On failure the program is killed: it cannot go on
/// without its pages (the error says how many were missing).
pub(crate) async fn run<W: tokio::io::AsyncWrite + Unpin>(
    pc: PostCopy,
    pid: i32,
    tx: &mut tern_wire::net::Sender<W>,
    incoming: &mut tokio::sync::mpsc::Receiver<std::result::Result<wire::net::Message, String>>,
    proto: &mut wire::session::Destination,
    timeout: std::time::Duration,
) -> std::result::Result<(), String> {
    let t0 = std::time::Instant::now();
    let PostCopy { owed, guard } = pc;
    let total = owed.len();
    let mut filler = Filler::new(owed, pid);
    match fill_all(&mut filler, tx, incoming, proto, timeout).await {
        Ok(()) => {
            let tally = filler.tally;
            // The uffd closes here, the guard lets go of its copy: the
            // mappings are unregistered, the program runs on its own (no
            // touch of a never-owed page waits on the message below).
            drop(filler);
            guard.release();
            let said =
                crate::serve::say(tx, proto, wire::net::Message::PostCopyDone { tally }).await;
            tracing::info!(
                pid,
                owed = total,
                ?tally,
                ms = t0.elapsed().as_secs_f64() * 1e3,
                "post-copy complete"
            );
            said
        }
        Err(e) => {
            let left = filler.owed();
            // The program and any child it forked meanwhile: a child's
            // uffd closes with the filler, and its missing pages would
            // read as zeros.
            for p in tern_sys::proc::descendants(pid) {
                let _ = tern_sys::signal(p, libc::SIGKILL);
            }
            let _ = tern_sys::signal(pid, libc::SIGKILL);
            drop(filler);
            drop(guard);
            let what = format!(
                "post-copy failed: {e}; {left} of {total} owed page(s) had not arrived, so the program (pid {pid}) was killed: it cannot go on without them"
            );
            tracing::error!("{what}");
            let refused = wire::net::Message::Refused {
                reason: what.clone(),
            };
            let _ = crate::serve::say(tx, proto, refused).await;
            Err(what)
        }
    }
}

async fn fill_all<W: tokio::io::AsyncWrite + Unpin>(
    filler: &mut Filler,
    tx: &mut tern_wire::net::Sender<W>,
    incoming: &mut tokio::sync::mpsc::Receiver<std::result::Result<wire::net::Message, String>>,
    proto: &mut wire::session::Destination,
    timeout: std::time::Duration,
) -> std::result::Result<(), String> {
    use wire::net::Message;
    let mut watch: Option<tokio::task::JoinHandle<()>> = None;
    let mut want = Vec::new();
    // The source must say something within `timeout` of the last time it
    // did (the uffd watch wakes this loop every 200 ms meanwhile).
    let mut deadline = tokio::time::Instant::now() + timeout;
    loop {
        want.extend(filler.take_events()?);
        if !want.is_empty() {
            let addrs = std::mem::take(&mut want);
            crate::serve::say(tx, proto, Message::PageWant { addrs }).await?;
        }
        if filler.owed() == 0 {
            return Ok(());
        }
        let watching = match watch.as_mut() {
            Some(w) => w,
            None => {
                let fds = filler
                    .watch_fds()
                    .map_err(|e| format!("watch the userfaultfd: {e}"))?;
                watch.insert(tokio::task::spawn_blocking(move || {
                    let fds: Vec<_> = fds.iter().map(|f| f.as_fd()).collect();
                    let _ = uffd::wait_readable(&fds, WATCH_MS);
                }))
            }
        };
        tokio::select! {
            _ = watching => watch = None,
            msg = tokio::time::timeout_at(deadline, incoming.recv()) => {
                deadline = tokio::time::Instant::now() + timeout;
                let m = match msg {
                    Err(_) => return Err(format!("the source sent nothing for {timeout:?}")),
                    Ok(None) => return Err("the connection to the source was lost".into()),
                    Ok(Some(Err(e))) => return Err(format!("the connection to the source was lost: {e}")),
                    Ok(Some(Ok(m))) => m,
                };
                match proto.receive(m) {
                    Ok(wire::session::DestinationInput::Pages { start, data }) => {
                        want.extend(filler.fill(start, &data)?);
                    }
                    Ok(other) => return Err(format!("tern bug: {other:?} during post-copy")),
                    Err(e) => return Err(e.to_string()),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn space(pages: &[u64]) -> Space {
        let uffd = std::fs::File::open("/dev/null").expect("an fd").into();
        let by_here: BTreeMap<u64, u64> = pages.iter().map(|&a| (a, a)).collect();
        Space {
            uffd,
            by_source: by_here.clone(),
            by_here,
        }
    }

    #[test]
    fn zero_pages_waiting_follow_their_space_when_finished_ones_go() {
        let mut f = Filler {
            spaces: vec![space(&[0x1000]), space(&[]), space(&[0x3000])],
            owed: vec![0x1000, 0x3000],
            asked: HashSet::new(),
            page: 4096,
            tally: Default::default(),
            zero_later: vec![(1, 0x7000), (2, 0x8000), (0, 0x9000)],
            pid: 0,
            copy_retries: 0,
        };
        f.drop_finished_spaces();
        assert_eq!(f.spaces.len(), 2);
        assert_eq!(
            f.spaces[1].by_here.keys().copied().collect::<Vec<_>>(),
            [0x3000]
        );
        // The finished child's waiter goes with it; the third space is
        // now the second.
        assert_eq!(f.zero_later, [(1, 0x8000), (0, 0x9000)]);
    }

    #[test]
    fn dropped_and_unmapped_pages_are_no_longer_owed() {
        let mut s = space(&[0x1000, 0x2000, 0x3000, 0x4000]);
        s.forget(0x2000, 0x4000);
        assert_eq!(
            s.by_here.keys().copied().collect::<Vec<_>>(),
            [0x1000, 0x4000]
        );
        assert_eq!(
            s.by_source.keys().copied().collect::<Vec<_>>(),
            [0x1000, 0x4000]
        );
    }

    #[test]
    fn moved_pages_are_owed_at_their_new_address_from_the_same_source_page() {
        let mut s = space(&[0x1000, 0x2000, 0x9000]);
        s.moved(0x1000, 0x50000, 0x2000);
        assert_eq!(
            s.by_here.iter().map(|(&a, &b)| (a, b)).collect::<Vec<_>>(),
            [(0x9000, 0x9000), (0x50000, 0x1000), (0x51000, 0x2000)]
        );
        assert_eq!(s.by_source.get(&0x2000), Some(&0x51000));
    }
}
