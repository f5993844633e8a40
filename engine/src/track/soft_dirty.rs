//! The soft-dirty tracker: writing `4` to `/proc/PID/clear_refs` clears the
//! soft-dirty bits (and write-protects the PTEs), the first write to a page
//! sets pagemap bit 55 again.
//!
//! Reading the bits and clearing them are two steps, so each round stops the
//! target for both (a write in between would be lost otherwise); `stopped`
//! in the round's stats says how long. Needs `CONFIG_MEM_SOFT_DIRTY`: a kernel
//! without it accepts the `4` silently and never sets bit 55, so availability
//! is decided by exercising it (the `soft-dirty` probe of `tern check`), not
//! by the write's result.
//!
//! New VMAs carry VM_SOFTDIRTY (every page reads as soft-dirty), so they are
//! reported whole without special handling; pages that lost their data while
//! their VMA stayed (`MADV_DONTNEED` drops the PTE and its bit) are found by
//! comparing with the previous round's pages with data.

use super::{
    for_each_pagemap_entry, in_ranges, is_trackable, page_has_data, page_size, read_maps,
    trackable_ranges, vma_changes, DirtySet, DirtyTracker, RoundStats,
};
use crate::error::{Context, EngineError, Result};
use crate::seize::Seized;
use std::time::{Duration, Instant};
use tern_sys::proc::{MapEntry, Pagemap, PM_SOFT_DIRTY};

#[derive(Debug)]
pub struct SoftDirtyTracker {
    pid: i32,
    pagemap: Pagemap,
    maps: Vec<MapEntry>,
    tracked: Vec<(u64, u64)>,
    /// Pages with data at the last round, sorted.
    data: Vec<u64>,
    stats: RoundStats,
}

impl SoftDirtyTracker {
    /// Refuses, naming `CONFIG_MEM_SOFT_DIRTY`, when the kernel lacks it.
    pub fn open(pid: i32) -> Result<SoftDirtyTracker> {
        let t0 = Instant::now();
        tern_sys::probe::probe_soft_dirty().map_err(|reason| EngineError::TrackerUnavailable {
            pid,
            tracker: "soft-dirty",
            reason,
        })?;
        let pagemap = Pagemap::open(pid).ctx(pid, || "open /proc/PID/pagemap".into())?;
        let mut t = SoftDirtyTracker {
            pid,
            pagemap,
            maps: Vec::new(),
            tracked: Vec::new(),
            data: Vec::new(),
            stats: RoundStats::default(),
        };
        let (_, maps, data, stopped) = t.stopped_round(false)?;
        t.tracked = trackable_ranges(&maps);
        t.data = data;
        t.stats = RoundStats {
            duration: t0.elapsed(),
            stopped,
            tracked_vmas: t.tracked.len(),
            tracked_pages: t.tracked.iter().map(|r| (r.1 - r.0) / page_size()).sum(),
            ..RoundStats::default()
        };
        t.maps = maps;
        Ok(t)
    }

    /// With the target stopped: read smaps and the pagemap (soft-dirty pages
    /// with data when `collect`, and all pages with data), then clear the
    /// bits. Returns (soft-dirty ranges, maps, pages with data, time stopped).
    #[allow(clippy::type_complexity)]
    fn stopped_round(
        &mut self,
        collect: bool,
    ) -> Result<(Vec<(u64, u64)>, Vec<MapEntry>, Vec<u64>, Duration)> {
        let pid = self.pid;
        let ps = page_size();
        let t0 = Instant::now();
        let mut seized = Seized::attach(pid)?;
        let result = (|| -> Result<_> {
            let maps = read_maps(pid)?;
            let mut dirty: Vec<(u64, u64)> = Vec::new();
            let mut data = Vec::new();
            for m in maps.iter().filter(|m| is_trackable(m)) {
                for_each_pagemap_entry(pid, &self.pagemap, m.start, m.end, |addr, e| {
                    if page_has_data(m, e) {
                        data.push(addr);
                        if collect && e & PM_SOFT_DIRTY != 0 {
                            super::push_merged(&mut dirty, addr, addr + ps);
                        }
                    }
                })?;
            }
            std::fs::write(format!("/proc/{pid}/clear_refs"), "4")
                .ctx(pid, || "write 4 to /proc/PID/clear_refs".into())?;
            Ok((dirty, maps, data))
        })();
        let released = seized.release();
        let stopped = t0.elapsed();
        let (dirty, maps, data) = result?;
        released?;
        Ok((dirty, maps, data, stopped))
    }
}

impl DirtyTracker for SoftDirtyTracker {
    fn name(&self) -> &'static str {
        "soft-dirty"
    }

    fn pid(&self) -> i32 {
        self.pid
    }

    fn collect(&mut self) -> Result<DirtySet> {
        let t0 = Instant::now();
        let ps = page_size();
        let (mut dirty, maps, data, stopped) = self.stopped_round(true)?;
        let tracked = trackable_ranges(&maps);
        for &addr in &self.data {
            if data.binary_search(&addr).is_err() && in_ranges(&tracked, addr) {
                dirty.push((addr, addr + ps));
            }
        }
        let (new_vmas, vanished) = vma_changes(&self.tracked, &tracked);
        self.stats = RoundStats {
            duration: t0.elapsed(),
            stopped,
            tracked_vmas: tracked.len(),
            tracked_pages: tracked.iter().map(|r| (r.1 - r.0) / ps).sum(),
            new_vmas,
            vanished_vmas: vanished,
            untracked_vmas: 0,
        };
        self.tracked = tracked;
        self.data = data;
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
        // clear_refs left nothing behind the kernel would not do on its own.
        Ok(())
    }
}
