//! The destination's half of a streamed stop-and-copy: the final image
//! leaves the program's private anonymous pages out (`deferred.img`, as a
//! post-copy image does) and the source sends them right after it, before
//! `Ready`. The program's mappings and the image's other pages are made
//! meanwhile; each streamed page is placed as it comes; only once every
//! one is in is the rest rebuilt (threads, files, credentials...), so the
//! build sees the memory complete as in any restore (the kernel writes to
//! it then: e.g. a thread's rseq area, which glibc keeps at the top of its
//! stack, when rseq is registered), and the program never runs without a
//! page (unlike post-copy).
//!
//! Placing: `UFFDIO_COPY` through a userfaultfd registered for missing
//! pages over the mappings that hold owed pages (allocates and fills a
//! page in one step, no zeroing), as the restore's fill does, when the
//! puppet's memory cgroup has room (see `fill`: tern allocates, so tern is
//! whom an OOM killer would blame); otherwise the puppet faults the pages
//! in itself first (`MADV_POPULATE_WRITE`) and tern writes them with
//! `process_vm_writev`.

use std::os::fd::{AsFd, OwnedFd};

use tern_wire as wire;
use tracing::debug;

use crate::puppet::Puppet;
use crate::Result;

/// The most bytes one compressed run of streamed pages may decompress to.
pub const MAX_COMPRESSED_RUN: usize = 16 << 20;

/// Pages owed by a final image whose source streams them before `Ready`.
#[derive(Debug)]
pub struct StreamedPages {
    pid: i32,
    /// Every owed page, sorted, and whether it is in yet.
    owed: Vec<u64>,
    placed: Vec<bool>,
    left: usize,
    page_size: u64,
    /// Registered for missing pages over the mappings holding owed pages;
    /// closing it (drop) ends the registration.
    uffd: Option<OwnedFd>,
    /// The private anonymous mappings (start, end), sorted: one
    /// `UFFDIO_COPY` never spans two (the kernel refuses it, `ENOENT`).
    mappings: Vec<(u64, u64)>,
}

impl StreamedPages {
    /// The pages `owed` (sorted, checked against the layout) of the
    /// stopped `puppet`, whose mappings are made: with room for tern to
    /// allocate them, its mappings holding them are registered for missing
    /// pages until every one is in.
    pub(crate) fn new(
        puppet: &mut Puppet,
        owed: Vec<u64>,
        page_size: u64,
        vmas: &[wire::Vma],
    ) -> Result<StreamedPages> {
        let pid = puppet.pid;
        let uffd = open_uffd(puppet, owed.len() as u64 * page_size).and_then(|fd| {
            // A mapping the kernel will not register: none is (closing the
            // uffd ends what was), and every page is written instead.
            match crate::postcopy::register_mappings_of(pid, fd.as_fd(), vmas, &owed) {
                Ok(_) => Some(fd),
                Err(e) => {
                    debug!("streamed pages are written, not placed: {e}");
                    None
                }
            }
        });
        if uffd.is_none() {
            // The puppet faults them in itself, now: if memory runs out,
            // the OOM killer takes it, not the daemon that writes into it.
            for run in owed.chunk_by(|a, b| b - a == page_size) {
                if let Some(&first) = run.first() {
                    crate::shape::populate(puppet, first, run.len() * page_size as usize)?;
                }
            }
        }
        debug!(
            pid,
            pages = owed.len(),
            uffd = uffd.is_some(),
            "waiting for streamed pages"
        );
        let mut mappings: Vec<(u64, u64)> = vmas
            .iter()
            .filter(|v| v.kind == wire::VmaKind::Anon && !v.shared)
            .map(|v| (v.start, v.end))
            .collect();
        mappings.sort_unstable();
        Ok(StreamedPages {
            pid,
            placed: vec![false; owed.len()],
            left: owed.len(),
            owed,
            page_size,
            uffd,
            mappings,
        })
    }

    /// Whether every owed page is in.
    pub fn complete(&self) -> bool {
        self.left == 0
    }

    /// Pages still to come.
    pub fn left(&self) -> usize {
        self.left
    }

    /// Place `data`, whole pages from `start` on, each owed and not yet
    /// placed (anything else is a broken or hostile source: refused).
    pub fn place(&mut self, start: u64, data: &[u8]) -> std::result::Result<(), String> {
        let (first, n) = self.claim(start, data.len())?;
        self.put(first, n, start, data)
    }

    /// Put `data`, the `n` claimed pages from index `first` (address
    /// `start`) on, into the program.
    fn put(
        &mut self,
        first: usize,
        n: usize,
        start: u64,
        data: &[u8],
    ) -> std::result::Result<(), String> {
        match &self.uffd {
            Some(fd) => {
                // A run of contiguous pages may cross from one mapping
                // into the next (e.g. where protections change).
                let mut at = 0;
                while at < data.len() {
                    let here = start + at as u64;
                    let mapping_end = self.mapping_end(here)?;
                    let end = data.len().min(at + (mapping_end - here) as usize);
                    crate::fill::copy_pages(fd.as_fd(), self.pid, here, &data[at..end])
                        .map_err(|e| crate::with_causes(&e))?;
                    at = end;
                }
            }
            None => tern_sys::mem::write_fully(self.pid, start, data).map_err(|e| {
                format!(
                    "write {n} streamed page(s) at {start:#x} into process {}: {e}",
                    self.pid
                )
            })?,
        }
        self.mark_placed(first, n);
        Ok(())
    }

    /// Where the private anonymous mapping holding `addr` ends.
    fn mapping_end(&self, addr: u64) -> std::result::Result<u64, String> {
        let i = self.mappings.partition_point(|m| m.1 <= addr);
        match self.mappings.get(i) {
            Some(&(s, e)) if s <= addr => Ok(e),
            _ => Err(format!(
                "page {addr:#x} is in no private anonymous mapping of the image"
            )),
        }
    }

    /// Place `n` pages from `start` on whose bytes `data` holds compressed
    /// (zstd): checked as owed before anything is decompressed, and never
    /// more than [`MAX_COMPRESSED_RUN`] bytes made.
    pub fn place_compressed(
        &mut self,
        start: u64,
        n: u64,
        data: &[u8],
    ) -> std::result::Result<(), String> {
        let len = usize::try_from(n.saturating_mul(self.page_size))
            .ok()
            .filter(|&l| l <= MAX_COMPRESSED_RUN)
            .ok_or_else(|| format!("{n} compressed pages at {start:#x}: more than a run holds"))?;
        let (first, pages) = self.claim(start, len)?;
        let raw = wire::net::decompress_pages(data, len)
            .map_err(|e| format!("pages at {start:#x}: {e}"))?;
        self.put(first, pages, start, &raw)
    }

    /// Take `n` owed pages from `start` on as zeros: nothing is placed
    /// (private anonymous memory reads as zeros where nothing was put, and
    /// without the userfaultfd the puppet has faulted them in as zeros).
    pub fn zeros(&mut self, start: u64, n: u64) -> std::result::Result<(), String> {
        let len = usize::try_from(n.saturating_mul(self.page_size))
            .map_err(|_| format!("{n} zero pages at {start:#x}: too many"))?;
        let (first, n) = self.claim(start, len)?;
        self.mark_placed(first, n);
        Ok(())
    }

    fn mark_placed(&mut self, first: usize, n: usize) {
        self.placed[first..first + n].fill(true);
        self.left -= n;
        if self.left == 0 {
            // Unregistered: the program may run from now on.
            self.uffd = None;
        }
    }

    /// Where `len` bytes of pages from `start` go among the owed pages
    /// (index of the first, count), if they are whole pages, all owed, none
    /// placed yet.
    fn claim(&self, start: u64, len: usize) -> std::result::Result<(usize, usize), String> {
        let page = self.page_size;
        if len == 0 || !(len as u64).is_multiple_of(page) {
            return Err(format!(
                "{len} bytes of pages at {start:#x} are not whole pages"
            ));
        }
        let n = (len as u64 / page) as usize;
        let first = self
            .owed
            .binary_search(&start)
            .map_err(|_| format!("the source sent page {start:#x}, which was not owed"))?;
        for k in 0..n {
            let a = start + k as u64 * page;
            if self.owed.get(first + k) != Some(&a) {
                return Err(format!("the source sent page {a:#x}, which was not owed"));
            }
            if self.placed[first + k] {
                return Err(format!("the source sent page {a:#x} twice"));
            }
        }
        Ok((first, n))
    }
}

/// The userfaultfd to place streamed pages with, made inside `puppet`:
/// `None` where memory is short or the kernel has none.
fn open_uffd(puppet: &mut Puppet, owed_bytes: u64) -> Option<OwnedFd> {
    if !crate::fill::has_room(puppet.pid, owed_bytes) {
        return None;
    }
    match crate::postcopy::uffd_of(puppet, 0, "streamed pages") {
        Ok((fd, _)) => Some(fd),
        Err(e) => {
            debug!("no userfaultfd ({e}): streamed pages are written instead");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owed(pages: &[u64]) -> StreamedPages {
        StreamedPages {
            pid: 0,
            placed: vec![false; pages.len()],
            left: pages.len(),
            owed: pages.iter().map(|p| 0x10_0000 + p * 4096).collect(),
            page_size: 4096,
            uffd: None,
            mappings: vec![(0x10_0000, 0x10_3000), (0x10_3000, 0x10_8000)],
        }
    }

    #[test]
    fn only_whole_owed_pages_not_yet_placed_are_taken() {
        let mut s = owed(&[0, 1, 2, 5]);
        assert_eq!(s.claim(0x10_0000 + 4096, 2 * 4096), Ok((1, 2)));
        assert!(s
            .claim(0x10_0000, 100)
            .unwrap_err()
            .contains("not whole pages"));
        assert!(s.claim(0x10_0000, 0).is_err());
        // Page 3 is not owed: a run over it is refused, naming it.
        let e = s.claim(0x10_0000 + 2 * 4096, 2 * 4096).unwrap_err();
        assert!(e.contains("0x103000") && e.contains("not owed"), "{e}");
        assert!(s.claim(0x20_0000, 4096).unwrap_err().contains("not owed"));
        s.placed[1] = true;
        let e = s.claim(0x10_0000, 2 * 4096).unwrap_err();
        assert!(e.contains("0x101000") && e.contains("twice"), "{e}");
        assert_eq!(s.claim(0x10_0000 + 5 * 4096, 4096), Ok((3, 1)));
        // Zero pages are claimed the same way.
        s.zeros(0x10_0000 + 5 * 4096, 1).expect("page 5 as zeros");
        assert!(s
            .zeros(0x10_0000 + 5 * 4096, 1)
            .unwrap_err()
            .contains("twice"));
        assert!(s.zeros(0x10_0000, 3).unwrap_err().contains("twice"));
        assert!(s.zeros(0x10_0000, u64::MAX).is_err());
        // Compressed: claimed before decompressing, and bounded.
        let e = s.place_compressed(0x20_0000, 1, b"x").unwrap_err();
        assert!(e.contains("not owed"), "{e}");
        let e = s.place_compressed(0x10_0000, 1 << 40, b"x").unwrap_err();
        assert!(e.contains("more than a run"), "{e}");
        assert_eq!(s.left(), 3);
        // A run is cut where its mapping ends.
        assert_eq!(s.mapping_end(0x10_2000), Ok(0x10_3000));
        assert_eq!(s.mapping_end(0x10_3000), Ok(0x10_8000));
        assert!(s.mapping_end(0x10_8000).is_err());
    }
}
