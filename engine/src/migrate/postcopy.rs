//! The source's half of post-copy: once the program runs at the
//! destination, send it the pages the final image left out (`deferred.img`),
//! those its program touched first (`PageWant`), the rest in address order
//! in the background, until the destination says every one is in
//! (`PostCopyDone`). The frozen copy here is what the pages are read from,
//! so it lives until then.

use std::collections::{BTreeSet, VecDeque};
use std::time::Instant;

use tern_sys::mem;
use tern_wire::net::{Message, PostCopyTally};
use tern_wire::session::SourceInput;
use tracing::{debug, info};

use super::{Job, Link, Sent};

/// Pages sent for one `PageWant`: the page touched and those after it
/// still owed, as a program that touches a page tends to touch the next.
const WANT_RUN_PAGES: u64 = 32;
/// Pages per background message.
const PUSH_RUN_PAGES: u64 = 16;
/// Unsent bytes the socket may hold during post-copy: a page wanted now
/// waits behind at most this much background data (~10 ms at 100 Mbit/s).
const NOTSENT_LOWAT: i32 = 128 << 10;
/// Send buffer during post-copy (the kernel doubles it): bounds the pages
/// in flight ahead of a wanted one.
const SNDBUF: i32 = 128 << 10;

/// What post-copy sent.
#[derive(Debug, Clone, Default)]
pub struct PostCopyReport {
    /// Pages owed (left out of the final image).
    pub pages: u64,
    /// Pages sent (each owed page once, unless the destination no longer
    /// needed it).
    pub pages_sent: u64,
    /// `PageWant` messages (the program touched a page not yet there).
    pub wants: u64,
    /// Pages sent first because they were wanted.
    pub wanted_pages: u64,
    /// From the program running there to the destination's `PostCopyDone`.
    pub ms: f64,
    /// What the destination said it placed, and saw the program do.
    pub arrived: PostCopyTally,
}

/// The pages still owed, and the order to send them in.
struct Owed {
    left: BTreeSet<u64>,
    urgent: VecDeque<u64>,
    page: u64,
    /// Where the background push goes on from: right after the last page
    /// the program wanted (it tends to want what follows next), wrapping
    /// around to the lowest owed page.
    cursor: u64,
}

impl Owed {
    /// The next run to send: (start, pages, wanted). A wanted page first
    /// (with the owed pages right after it), else the owed pages from the
    /// cursor on.
    fn next_run(&mut self) -> Option<(u64, u64, bool)> {
        while let Some(a) = self.urgent.pop_front() {
            if self.left.contains(&a) {
                let n = self.take_from(a, WANT_RUN_PAGES);
                self.cursor = a + n * self.page;
                return Some((a, n, true));
            }
        }
        let first = match self.left.range(self.cursor..).next() {
            Some(&a) => a,
            None => *self.left.first()?,
        };
        let n = self.take_from(first, PUSH_RUN_PAGES);
        self.cursor = first + n * self.page;
        Some((first, n, false))
    }

    /// Remove up to `max` owed pages contiguous from `a` (owed itself).
    fn take_from(&mut self, a: u64, max: u64) -> u64 {
        let mut n = 0;
        while n < max && self.left.remove(&(a + n * self.page)) {
            n += 1;
        }
        n
    }
}

/// Send the owed pages `deferred` (addresses in process `pid`, stopped)
/// until the destination has them all. An error means the program cannot
/// go on: the destination's copy lacks pages only this one has.
pub(super) fn send_owed_pages(
    link: &mut Link,
    pid: i32,
    deferred: &[u64],
) -> std::result::Result<PostCopyReport, String> {
    let t0 = Instant::now();
    let page = tern_sys::page_size();
    if let Some(fd) = &link.socket {
        use std::os::fd::AsFd;
        if let Err(e) = tern_sys::sock::set_int(
            fd.as_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_NOTSENT_LOWAT,
            NOTSENT_LOWAT,
        ) {
            debug!("TCP_NOTSENT_LOWAT: {e} (wanted pages may wait longer)");
        }
        // Sent but not yet acknowledged counts too: a full bottleneck
        // queue ahead of a wanted page is as slow as unsent data.
        if let Err(e) =
            tern_sys::sock::set_int(fd.as_fd(), libc::SOL_SOCKET, libc::SO_SNDBUF, SNDBUF)
        {
            debug!("SO_SNDBUF: {e} (wanted pages may wait longer)");
        }
    }
    let mut owed = Owed {
        left: deferred.iter().copied().collect(),
        urgent: VecDeque::new(),
        page,
        cursor: 0,
    };
    let mut report = PostCopyReport {
        pages: deferred.len() as u64,
        ..Default::default()
    };
    let mut buf = vec![0u8; (WANT_RUN_PAGES * page) as usize];
    let sent_so_far = |r: &PostCopyReport, e: String| {
        format!(
            "{e} (post-copy had sent {} of {} owed page(s), {} of them wanted by the program)",
            r.pages_sent, r.pages, r.wanted_pages
        )
    };
    let tally = match pump(link, pid, &mut owed, &mut report, &mut buf) {
        Ok(tally) => tally,
        // The destination may have had every page it needed (some were
        // unmapped there) and said so before hanging up while pages were
        // still on their way: its word decides.
        Err(e) => done_said(link).ok_or_else(|| sent_so_far(&report, e))?,
    };
    report.arrived = tally;
    report.ms = t0.elapsed().as_secs_f64() * 1e3;
    info!(?report, "post-copy complete");
    Ok(report)
}

/// A `PostCopyDone` the destination sent before the link failed, if one
/// arrives within a moment.
fn done_said(link: &mut Link) -> Option<PostCopyTally> {
    let deadline = Instant::now() + std::time::Duration::from_millis(500);
    loop {
        match link.incoming.try_recv() {
            Ok(Ok(m)) => {
                if let Ok(SourceInput::PostCopyDone { tally }) = link.proto.receive(m) {
                    return Some(tally);
                }
            }
            Ok(Err(_)) | Err(tokio::sync::mpsc::error::TryRecvError::Disconnected) => return None,
            Err(tokio::sync::mpsc::error::TryRecvError::Empty) => {
                if Instant::now() >= deadline {
                    return None;
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        }
    }
}

/// [`send_owed_pages`]'s loop: what the destination tallied at the end.
fn pump(
    link: &mut Link,
    pid: i32,
    owed: &mut Owed,
    report: &mut PostCopyReport,
    buf: &mut [u8],
) -> std::result::Result<PostCopyTally, String> {
    let page = owed.page;
    loop {
        while let Ok(m) = link.incoming.try_recv() {
            if let Some(done) = heard(link, m, owed, report)? {
                return Ok(done);
            }
        }
        while let Ok(s) = link.sent.try_recv() {
            if let Sent::Failed(e) = s {
                return Err(format!("sending pages to the destination: {e}"));
            }
        }
        match owed.next_run() {
            Some((start, n, wanted)) => {
                let len = (n * page) as usize;
                mem::read_fully(pid, start, &mut buf[..len]).map_err(|e| {
                    format!("read {n} owed page(s) at {start:#x} of process {pid}: {e}")
                })?;
                link.submit(Job::Message(Message::Pages {
                    start,
                    data: buf[..len].to_vec(),
                }))?;
                report.pages_sent += n;
                if wanted {
                    report.wanted_pages += n;
                }
            }
            None => {
                // All sent: wait for the destination's word.
                let m = link.wait_message("PostCopyDone")?;
                if let Some(done) = heard(link, Ok(m), owed, report)? {
                    return Ok(done);
                }
            }
        }
    }
}

/// Pages per message of a streamed stop-and-copy (1 MiB): large enough
/// that per-message costs vanish, small enough that reading the next run
/// overlaps sending this one.
const STREAM_RUN_PAGES: u64 = 256;

/// What a streamed stop-and-copy sent after its image.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Streamed {
    /// Messages handed to the sender (each reports `Sent`).
    pub messages: u64,
    /// Pages that held only zeros (announced, not sent).
    pub zero_pages: u64,
}

impl Streamed {
    pub fn add(&mut self, other: Streamed) {
        self.messages += other.messages;
        self.zero_pages += other.zero_pages;
    }
}

/// Stop-and-copy, streamed: send the pages `deferred` (sorted addresses in
/// process `pid`, stopped) right after the final image, before `Ready`,
/// after a `PagesOf` naming the process, in runs of contiguous pages, each
/// read from the program as it goes; runs of zeros are only named, and
/// with `zstd` (a level) the others go compressed where that saves bytes.
/// The sender's queue holds one message, so reading waits for the link.
pub(super) fn stream_pages(
    link: &mut Link,
    pid: i32,
    deferred: &[u64],
    zstd: Option<i32>,
) -> std::result::Result<Streamed, String> {
    let t0 = Instant::now();
    let page = tern_sys::page_size();
    let mut out = Streamed::default();
    link.submit(Job::Message(Message::PagesOf { pid }))?;
    out.messages += 1;
    for (start, n) in contiguous_runs(deferred, page, STREAM_RUN_PAGES) {
        // A refusal (e.g. the destination ran out of memory) ends it early.
        link.check_incoming()?;
        let mut data = vec![0u8; (n * page) as usize];
        mem::read_fully(pid, start, &mut data)
            .map_err(|e| format!("read {n} page(s) at {start:#x} of process {pid}: {e}"))?;
        for (at, pages, zeros) in zero_split(&data, page as usize) {
            let first = start + (at * page as usize) as u64;
            let msg = if zeros {
                out.zero_pages += pages as u64;
                Message::ZeroPages {
                    start: first,
                    pages: pages as u64,
                }
            } else if pages as u64 == n {
                Message::Pages {
                    start: first,
                    data: std::mem::take(&mut data),
                }
            } else {
                let bytes = &data[at * page as usize..(at + pages) * page as usize];
                Message::Pages {
                    start: first,
                    data: bytes.to_vec(),
                }
            };
            link.submit(Job::Message(compressed(msg, zstd)?))?;
            out.messages += 1;
        }
    }
    debug!(
        pages = deferred.len(),
        zero_pages = out.zero_pages,
        messages = out.messages,
        ms = t0.elapsed().as_secs_f64() * 1e3,
        "pages streamed to the sender"
    );
    Ok(out)
}

/// `Pages` as `ZstdPages` at zstd level `zstd`, if given and smaller.
fn compressed(msg: Message, zstd: Option<i32>) -> std::result::Result<Message, String> {
    let (Some(level), Message::Pages { start, data }) = (zstd, &msg) else {
        return Ok(msg);
    };
    let packed = tern_wire::net::compress_pages(data, level).map_err(|e| e.to_string())?;
    if packed.len() >= data.len() {
        return Ok(msg);
    }
    let pages = (data.len() as u64) / tern_sys::page_size();
    Ok(Message::ZstdPages {
        start: *start,
        pages,
        data: packed,
    })
}

/// `data`, whole pages of `page` bytes, as runs (first page, pages,
/// whether all zeros) alternating between pages of zeros and the others.
fn zero_split(data: &[u8], page: usize) -> Vec<(usize, usize, bool)> {
    let mut runs: Vec<(usize, usize, bool)> = Vec::new();
    for (i, p) in data.chunks(page).enumerate() {
        let zeros = crate::pagewriter::is_zero(p);
        match runs.last_mut() {
            Some(last) if last.2 == zeros => last.1 += 1,
            _ => runs.push((i, 1, zeros)),
        }
    }
    runs
}

/// Runs (start, pages) of at most `max` pages contiguous in `pages`
/// (sorted addresses).
fn contiguous_runs(pages: &[u64], page: u64, max: u64) -> impl Iterator<Item = (u64, u64)> + '_ {
    pages
        .chunk_by(move |a, b| b - a == page)
        .flat_map(move |run| run.chunks(max as usize))
        .map(|run| (run[0], run.len() as u64))
}

/// Take one message of the destination's: wanted pages are queued; the
/// end gives `Some(what the destination tallied)`.
fn heard(
    link: &mut Link,
    m: std::result::Result<Message, String>,
    owed: &mut Owed,
    report: &mut PostCopyReport,
) -> std::result::Result<Option<PostCopyTally>, String> {
    match link.note(m)? {
        SourceInput::Want { addrs } => {
            report.wants += 1;
            debug!(?addrs, "destination wants pages");
            owed.urgent.extend(addrs);
            Ok(None)
        }
        SourceInput::PostCopyDone { tally } => Ok(Some(tally)),
        other => Err(format!("tern bug: {other:?} during post-copy")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_pages_are_split_from_the_others() {
        let page = 16;
        let mut data = vec![0u8; 6 * page];
        data[page * 2 + 3] = 1; // page 2
        data[page * 3] = 7; // page 3
        data[page * 6 - 1] = 9; // page 5
        assert_eq!(
            zero_split(&data, page),
            vec![(0, 2, true), (2, 2, false), (4, 1, true), (5, 1, false)]
        );
        assert_eq!(zero_split(&[0u8; 32], page), vec![(0, 2, true)]);
        assert!(zero_split(&[], page).is_empty());
    }

    #[test]
    fn streamed_runs_are_contiguous_and_bounded() {
        let p = 4096;
        let pages: Vec<u64> = [0, 1, 2, 3, 4, 9, 10, 20]
            .iter()
            .map(|i| 0x1000_0000 + i * p)
            .collect();
        let runs: Vec<(u64, u64)> = contiguous_runs(&pages, p, 3).collect();
        assert_eq!(
            runs,
            vec![
                (0x1000_0000, 3),
                (0x1000_0000 + 3 * p, 2),
                (0x1000_0000 + 9 * p, 2),
                (0x1000_0000 + 20 * p, 1)
            ]
        );
        assert_eq!(contiguous_runs(&[], p, 3).count(), 0);
    }

    #[test]
    fn wanted_pages_go_first_and_the_push_follows_them() {
        let page = 4096;
        let mut owed = Owed {
            left: (0..100u64).map(|i| 0x10000 + i * page).collect(),
            urgent: VecDeque::new(),
            page,
            cursor: 0,
        };
        assert_eq!(owed.next_run(), Some((0x10000, PUSH_RUN_PAGES, false)));
        // Wanted: page 50, then the 31 pages after it.
        owed.urgent.push_back(0x10000 + 50 * page);
        // Wanted but already sent: skipped.
        owed.urgent.push_back(0x10000);
        assert_eq!(
            owed.next_run(),
            Some((0x10000 + 50 * page, WANT_RUN_PAGES, true))
        );
        // The push goes on after what was wanted (page 82 on, 18 left),
        // then wraps around to the lowest owed page.
        assert_eq!(owed.next_run(), Some((0x10000 + 82 * page, 16, false)));
        assert_eq!(owed.next_run(), Some((0x10000 + 98 * page, 2, false)));
        assert_eq!(
            owed.next_run(),
            Some((0x10000 + PUSH_RUN_PAGES * page, PUSH_RUN_PAGES, false))
        );
        let mut sent = 2 * PUSH_RUN_PAGES + WANT_RUN_PAGES + 18;
        while let Some((_, n, _)) = owed.next_run() {
            sent += n;
        }
        assert_eq!(sent, 100);
    }
}
