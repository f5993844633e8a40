//! The hash tracker: xxh3 of every page with data in the trackable VMAs,
//! compared with the previous round. Works on any kernel and never stops the
//! target; costs a read of the whole resident set per round.
//!
//! What it reports is *content* change between two of its own reads: a page
//! written back to the value it had at the previous collect is not reported.
//! A pre-copy loop that copies a page between two collects can therefore
//! miss an A→B→A change made around its copy; it must copy the pages from
//! the same read the tracker hashed (or use an exact backend).
//!
//! Besides changed hashes, a page is dirty when it appeared (new VMA, first
//! write, swap-in of a page never seen) or when it lost its data while its
//! VMA stayed (`MADV_DONTNEED`: it now reads as zeros or the file's data).
//! Pages that cannot be read (unmapped meanwhile) are reported dirty and
//! hashed again next round.

use super::{
    for_each_pagemap_entry, in_ranges, page_has_data, page_size, read_maps, trackable_ranges,
    vma_changes, DirtySet, DirtyTracker, PageReader, RoundStats,
};
use crate::error::{Context, Result};
use std::time::{Duration, Instant};
use tern_sys::proc::{MapEntry, Pagemap};
use xxhash_rust::xxh3::xxh3_64;

/// Pages per read (4 MiB).
const BATCH: usize = 1024;

#[derive(Debug)]
pub struct HashTracker {
    pid: i32,
    pagemap: Pagemap,
    reader: PageReader,
    maps: Vec<MapEntry>,
    tracked: Vec<(u64, u64)>,
    /// (page address, xxh3) of every page with data, sorted by address.
    hashes: Vec<(u64, u64)>,
    stats: RoundStats,
    buf: Vec<u8>,
    ok: Vec<bool>,
}

impl HashTracker {
    /// Hash every page with data now; the target keeps running.
    pub fn open(pid: i32) -> Result<HashTracker> {
        let t0 = Instant::now();
        let pagemap = Pagemap::open(pid).ctx(pid, || "open /proc/PID/pagemap".into())?;
        let mut t = HashTracker {
            pid,
            pagemap,
            reader: PageReader::new(pid),
            maps: Vec::new(),
            tracked: Vec::new(),
            hashes: Vec::new(),
            stats: RoundStats::default(),
            buf: vec![0u8; BATCH * page_size() as usize],
            ok: Vec::new(),
        };
        let maps = read_maps(pid)?;
        let mut unreadable = Vec::new();
        t.hashes = t.hash_all(&maps, &mut unreadable)?;
        t.tracked = trackable_ranges(&maps);
        t.stats = RoundStats {
            duration: t0.elapsed(),
            stopped: Duration::ZERO,
            tracked_vmas: t.tracked.len(),
            tracked_pages: t.tracked.iter().map(|r| (r.1 - r.0) / page_size()).sum(),
            ..RoundStats::default()
        };
        t.maps = maps;
        Ok(t)
    }

    /// (address, hash) of every readable page with data in the trackable
    /// VMAs of `maps`; unreadable ones go to `unreadable`.
    fn hash_all(
        &mut self,
        maps: &[MapEntry],
        unreadable: &mut Vec<(u64, u64)>,
    ) -> Result<Vec<(u64, u64)>> {
        let pid = self.pid;
        let ps = page_size();
        let mut out = Vec::with_capacity(self.hashes.len() + 1024);
        for m in maps.iter().filter(|m| super::is_trackable(m)) {
            // Runs of pages with data, at most BATCH pages each.
            let mut runs: Vec<(u64, u64)> = Vec::new();
            for_each_pagemap_entry(pid, &self.pagemap, m.start, m.end, |addr, e| {
                if !page_has_data(m, e) {
                    return;
                }
                match runs.last_mut() {
                    Some(r) if r.1 == addr && (r.1 - r.0) / ps < BATCH as u64 => r.1 += ps,
                    _ => runs.push((addr, addr + ps)),
                }
            })?;
            for (s, e) in runs {
                let len = (e - s) as usize;
                let mut buf = std::mem::take(&mut self.buf);
                let mut ok = std::mem::take(&mut self.ok);
                let read = self.reader.read(s, &mut buf[..len], &mut ok);
                if read.is_ok() {
                    for (i, good) in ok.iter().enumerate() {
                        let addr = s + i as u64 * ps;
                        if *good {
                            let page = &buf[i * ps as usize..(i + 1) * ps as usize];
                            out.push((addr, xxh3_64(page)));
                        } else {
                            unreadable.push((addr, addr + ps));
                        }
                    }
                }
                self.buf = buf;
                self.ok = ok;
                read?;
            }
        }
        Ok(out)
    }
}

impl DirtyTracker for HashTracker {
    fn name(&self) -> &'static str {
        "hash"
    }

    fn pid(&self) -> i32 {
        self.pid
    }

    fn collect(&mut self) -> Result<DirtySet> {
        let t0 = Instant::now();
        let ps = page_size();
        let maps = read_maps(self.pid)?;
        let tracked = trackable_ranges(&maps);
        let mut dirty = Vec::new();
        let new = self.hash_all(&maps, &mut dirty)?;
        // Merge-walk the two sorted lists.
        let (old, mut i) = (&self.hashes, 0usize);
        for &(addr, h) in &new {
            while i < old.len() && old[i].0 < addr {
                // Had data, has none now: dirty if its VMA is still here.
                if in_ranges(&tracked, old[i].0) {
                    dirty.push((old[i].0, old[i].0 + ps));
                }
                i += 1;
            }
            if i < old.len() && old[i].0 == addr {
                if old[i].1 != h {
                    dirty.push((addr, addr + ps));
                }
                i += 1;
            } else {
                dirty.push((addr, addr + ps));
            }
        }
        for &(addr, _) in &old[i..] {
            if in_ranges(&tracked, addr) {
                dirty.push((addr, addr + ps));
            }
        }
        let (new_vmas, vanished) = vma_changes(&self.tracked, &tracked);
        self.stats = RoundStats {
            duration: t0.elapsed(),
            stopped: Duration::ZERO,
            tracked_vmas: tracked.len(),
            tracked_pages: tracked.iter().map(|r| (r.1 - r.0) / ps).sum(),
            new_vmas,
            vanished_vmas: vanished,
            untracked_vmas: 0,
        };
        self.hashes = new;
        self.tracked = tracked;
        self.maps = maps;
        Ok(DirtySet::from_byte_ranges(dirty))
    }

    fn stats(&self) -> &RoundStats {
        &self.stats
    }

    fn maps(&self) -> &[MapEntry] {
        &self.maps
    }

    fn finish(&mut self) -> Result<()> {
        // Nothing was put into the target.
        self.hashes = Vec::new();
        Ok(())
    }
}
