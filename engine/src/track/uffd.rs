//! The uffd-wp tracker: a userfaultfd with `UFFD_FEATURE_WP_ASYNC` registered
//! in write-protect mode over the target's VMAs; `PAGEMAP_SCAN` with
//! `PM_SCAN_WP_MATCHING` reports the written pages and write-protects them
//! again in the same page-table walk, so a round needs no stop.
//!
//! A userfaultfd acts on the mm of the process that created it, so it is
//! created *inside* the target by an injected `userfaultfd()` (the only time
//! the target is stopped), taken with `pidfd_getfd`, and closed in the target
//! at once: the target keeps no fd. Everything else is ioctls from tern.
//!
//! Kernel behaviour this relies on (kernel-notes.md, "Dirty-page tracking"):
//! - `PAGEMAP_SCAN` with `PM_SCAN_CHECK_WPASYNC` refuses (EPERM) a VMA whose
//!   context lacks WP_ASYNC, and for anonymous memory also one without
//!   `UFFD_FEATURE_WP_UNPOPULATED` (the kernel requires markers): both are
//!   required.
//! - The category mask is exactly `PAGE_IS_WRITTEN` (the kernel's fast path,
//!   where any PTE without the uffd-wp bit or marker counts as written,
//!   including an anonymous page zapped by `MADV_DONTNEED`).
//! - `mremap` drops the registration of the moved VMA: it then shows no `uw`
//!   VmFlag and is handled as a new VMA.

use super::{
    data_ranges, for_each_pagemap_entry, is_special, is_trackable, page_has_data, page_size,
    push_merged, read_maps, trackable_ranges, vma_changes, DirtySet, DirtyTracker, RoundStats,
};
use crate::error::{Context, EngineError, Result};
use crate::seize::Seized;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};
use tern_sys::proc::{MapEntry, Pagemap};
use tern_sys::remote;
use tern_sys::uffd::{
    self, open_uffd, uffd_api, PageRegion, UFFD_FEATURE_WP_ASYNC, UFFD_FEATURE_WP_UNPOPULATED,
    UFFD_USER_MODE_ONLY,
};
use tracing::{debug, warn};

/// `page_region`s per `PAGEMAP_SCAN` call (96 KiB); longer answers continue
/// from `walk_end`.
const SCAN_VEC: usize = 4096;

const WANTED_FEATURES: u64 = UFFD_FEATURE_WP_ASYNC | UFFD_FEATURE_WP_UNPOPULATED;

#[derive(Debug)]
pub struct UffdWpTracker {
    pid: i32,
    /// tern's copy of the uffd created in the target; `None` once finished.
    uffd: Option<OwnedFd>,
    /// `/proc/PID/pagemap` for `PAGEMAP_SCAN`.
    scan_file: File,
    pagemap: Pagemap,
    maps: Vec<MapEntry>,
    /// Trackable VMAs of the last round.
    tracked: Vec<(u64, u64)>,
    /// Pages with data in private file mappings at the last round (sorted).
    file_data: Vec<u64>,
    stats: RoundStats,
    regions: Vec<PageRegion>,
    /// userfaultfd fds the target had before tern touched it.
    uffd_fds_before: usize,
    /// The uffd needed `UFFD_USER_MODE_ONLY` (target lacks CAP_SYS_PTRACE).
    pub user_mode_only: bool,
    /// Features UFFDIO_API enabled.
    pub features: u64,
}

fn unavailable(pid: i32, reason: impl Into<String>) -> EngineError {
    EngineError::TrackerUnavailable {
        pid,
        tracker: "uffd-wp",
        reason: reason.into(),
    }
}

/// Number of userfaultfd descriptors `pid` holds.
fn count_uffd_fds(pid: i32) -> Result<usize> {
    let dir =
        std::fs::read_dir(format!("/proc/{pid}/fd")).ctx(pid, || "list /proc/PID/fd".into())?;
    Ok(dir
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|t| t.as_os_str() == "anon_inode:[userfaultfd]")
        .count())
}

/// Create a userfaultfd inside the stopped target, take a copy, close the
/// target's. Returns (copy, user-mode-only, how long the target was stopped).
fn uffd_from_target(pid: i32, maps: &[MapEntry]) -> Result<(OwnedFd, bool, Duration)> {
    let vdso = maps.iter().find(|m| m.name == "[vdso]").ok_or_else(|| {
        unavailable(
            pid,
            "the program has no [vdso] (tern injects syscalls through it)",
        )
    })?;
    // The vdso's code never changes: look for the gadget before stopping it.
    let gadget = remote::find_syscall_insn(pid, vdso.start, vdso.end)
        .ctx(pid, || "read the vdso".into())?
        .ok_or_else(|| unavailable(pid, "no syscall instruction found in its vdso"))?;

    let t0 = Instant::now();
    let mut seized = Seized::attach(pid)?;
    seized.set_gadget(gadget);
    let flags = (libc::O_CLOEXEC | libc::O_NONBLOCK) as u64;
    let created = match seized.inject(libc::SYS_userfaultfd, &[flags], "userfaultfd") {
        Ok(fd) => Ok((fd, false)),
        // vm.unprivileged_userfaultfd = 0 and no CAP_SYS_PTRACE in the target:
        // a user-mode-only uffd is allowed, and WP_ASYNC tracks kernel-side
        // writes all the same (the kernel resolves them without a reader).
        Err(EngineError::Sys { ref source, .. }) if source.raw_os_error() == Some(libc::EPERM) => {
            seized
                .inject(
                    libc::SYS_userfaultfd,
                    &[flags | UFFD_USER_MODE_ONLY as u64],
                    "userfaultfd(UFFD_USER_MODE_ONLY)",
                )
                .map(|fd| (fd, true))
        }
        Err(e) => Err(e),
    };
    let (fd, user_mode_only) = match created {
        Ok(v) => v,
        Err(e) => {
            let _ = seized.release();
            return Err(e);
        }
    };
    let taken = tern_sys::take_fd(pid, fd as i32);
    // Whatever happened, the target must not keep the fd.
    let closed = seized.inject(libc::SYS_close, &[fd], "close of the userfaultfd");
    let released = seized.release();
    let stopped = t0.elapsed();
    let taken = taken.ctx(pid, || format!("pidfd_getfd of its userfaultfd (fd {fd})"))?;
    closed?;
    released?;
    Ok((taken, user_mode_only, stopped))
}

impl UffdWpTracker {
    /// Create the uffd in `pid`, register and write-protect every trackable
    /// VMA. The target is stopped only while the uffd is created.
    pub fn open(pid: i32) -> Result<UffdWpTracker> {
        let t0 = Instant::now();
        // UFFDIO_API may be called once per uffd: ask a throwaway one of our
        // own what this kernel supports before touching the target.
        let (probe, _) = open_uffd().map_err(|e| unavailable(pid, e))?;
        let supported = uffd_api(&probe, 0).map_err(|e| unavailable(pid, e))?;
        drop(probe);
        if supported & WANTED_FEATURES != WANTED_FEATURES {
            return Err(unavailable(
                pid,
                format!(
                    "the kernel lacks UFFD_FEATURE_WP_ASYNC and/or WP_UNPOPULATED (6.7+; it offers {supported:#x})"
                ),
            ));
        }
        let maps = read_maps(pid)?;
        if let Some(m) = maps
            .iter()
            .find(|m| m.has_flag("uw") || m.has_flag("um") || m.has_flag("ui"))
        {
            return Err(unavailable(
                pid,
                format!(
                    "the program uses userfaultfd itself (mapping {:#x}-{:#x} has VmFlags {})",
                    m.start,
                    m.end,
                    m.vm_flags.join(" ")
                ),
            ));
        }
        let uffd_fds_before = count_uffd_fds(pid)?;
        let scan_file = File::open(format!("/proc/{pid}/pagemap"))
            .ctx(pid, || "open /proc/PID/pagemap".into())?;
        let pagemap = Pagemap::open(pid).ctx(pid, || "open /proc/PID/pagemap".into())?;

        let (uffd, user_mode_only, stopped) = uffd_from_target(pid, &maps)?;
        let mut t = UffdWpTracker {
            pid,
            uffd: Some(uffd),
            scan_file,
            pagemap,
            maps: Vec::new(),
            tracked: Vec::new(),
            file_data: Vec::new(),
            stats: RoundStats::default(),
            regions: vec![PageRegion::default(); SCAN_VEC],
            uffd_fds_before,
            user_mode_only,
            features: 0,
        };
        // From here on, Drop cleans up (unregisters, closes) on error.
        if count_uffd_fds(pid)? != uffd_fds_before {
            return Err(EngineError::Sys {
                pid,
                what: "close the userfaultfd injected into the target".into(),
                source: io::Error::other("the fd is still open in the target"),
            });
        }
        let features = t
            .uffd()
            .and_then(|fd| uffd::api(fd, WANTED_FEATURES))
            .map_err(|e| unavailable(pid, format!("UFFDIO_API(WP_ASYNC|WP_UNPOPULATED): {e}")))?;
        if features & WANTED_FEATURES != WANTED_FEATURES {
            return Err(unavailable(
                pid,
                format!("UFFDIO_API did not enable WP_ASYNC|WP_UNPOPULATED (got {features:#x})"),
            ));
        }
        t.features = features;

        let mut untracked = 0;
        for m in maps.iter().filter(|m| is_trackable(m)) {
            if let Err(e) = t.arm(m.start, m.end) {
                warn!(
                    "process {pid}: cannot track {:#x}-{:#x} {} with uffd-wp ({e}); it is reported whole every round",
                    m.start, m.end, m.name
                );
                untracked += 1;
            }
        }
        t.file_data = t.private_file_data(&maps)?;
        t.tracked = trackable_ranges(&maps);
        t.stats = RoundStats {
            duration: t0.elapsed(),
            stopped,
            tracked_vmas: t.tracked.len(),
            tracked_pages: t.tracked.iter().map(|r| (r.1 - r.0) / page_size()).sum(),
            new_vmas: 0,
            vanished_vmas: 0,
            untracked_vmas: untracked,
        };
        t.maps = maps;
        Ok(t)
    }

    fn uffd(&self) -> io::Result<BorrowedFd<'_>> {
        self.uffd
            .as_ref()
            .map(|f| f.as_fd())
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EBADF))
    }

    /// Register `[start, end)` in write-protect mode and protect it.
    fn arm(&self, start: u64, end: u64) -> io::Result<()> {
        uffd::register_wp(self.uffd()?, start, end)
    }

    fn unregister(&self, start: u64, end: u64) -> io::Result<()> {
        uffd::unregister(self.uffd()?, start, end)
    }

    /// `PAGEMAP_SCAN` of `[start, end)`: append the written ranges to `out`
    /// and write-protect them again, continuing from `walk_end` when the
    /// answer does not fit in one call.
    fn scan(&mut self, start: u64, end: u64, out: &mut Vec<(u64, u64)>) -> io::Result<()> {
        let mut at = start;
        while at < end {
            let (n, walk_end) =
                uffd::scan_written_and_protect(self.scan_file.as_fd(), at, end, &mut self.regions)?;
            for r in &self.regions[..n] {
                push_merged(out, r.start, r.end);
            }
            if walk_end <= at && n == 0 {
                return Err(io::Error::other(format!(
                    "PAGEMAP_SCAN made no progress at {at:#x} (walk_end {walk_end:#x})"
                )));
            }
            at = walk_end.max(at);
            if n == 0 && walk_end < end {
                // Defensive: an empty answer that stopped early cannot happen
                // with max_pages = 0, but never loop on it.
                debug!("PAGEMAP_SCAN stopped at {walk_end:#x} without output");
            }
        }
        Ok(())
    }

    /// Addresses of the pages with data in registered private file mappings.
    fn private_file_data(&self, maps: &[MapEntry]) -> Result<Vec<u64>> {
        let mut out = Vec::new();
        for m in maps
            .iter()
            .filter(|m| m.is_file() && !m.shared && is_trackable(m))
        {
            for_each_pagemap_entry(self.pid, &self.pagemap, m.start, m.end, |addr, e| {
                if page_has_data(m, e) {
                    out.push(addr);
                }
            })?;
        }
        Ok(out)
    }
}

impl DirtyTracker for UffdWpTracker {
    fn name(&self) -> &'static str {
        "uffd-wp"
    }

    fn pid(&self) -> i32 {
        self.pid
    }

    fn collect(&mut self) -> Result<DirtySet> {
        self.collect_inner(false)
    }

    /// With the program stopped: the memory map is read from
    /// `/proc/PID/maps` with the VmFlags of the last collect (smaps walks
    /// every page table, ~7 ms per GiB, while the scan itself takes 0.5);
    /// only a map that changed shape is read from smaps again. Mappings new
    /// since the last collect are reported whole (not only their pages with
    /// data), so a final capture sees pages gone from a mapping replaced in
    /// place.
    fn collect_stopped(&mut self) -> Result<DirtySet> {
        self.collect_inner(true)
    }

    fn stats(&self) -> &RoundStats {
        &self.stats
    }

    fn maps(&self) -> &[MapEntry] {
        &self.maps
    }

    fn finish(&mut self) -> Result<()> {
        self.finish_inner()
    }
}

impl UffdWpTracker {
    fn collect_inner(&mut self, stopped: bool) -> Result<DirtySet> {
        let pid = self.pid;
        if self.uffd.is_none() {
            return Err(EngineError::Internal(
                "uffd-wp tracker used after finish".into(),
            ));
        }
        let t0 = Instant::now();
        let cheap = if stopped {
            tern_sys::proc::read_maps_with_flags(pid, &self.maps).map_err(|e| {
                if e.kind() == io::ErrorKind::NotFound {
                    EngineError::NoProcess { pid }
                } else {
                    EngineError::Sys {
                        pid,
                        what: "read maps".into(),
                        source: e,
                    }
                }
            })?
        } else {
            None
        };
        let mut maps = match cheap {
            Some(m) => m,
            None => read_maps(pid)?,
        };
        let maps_ms = t0.elapsed().as_secs_f64() * 1e3;
        let mut armed: Vec<usize> = Vec::new();
        let mut dirty: Vec<(u64, u64)> = Vec::new();
        let (mut new_vmas, mut untracked) = (0, 0);
        for (idx, m) in maps.iter().enumerate() {
            if is_special(m) {
                continue;
            }
            if m.has_flag("uw") {
                match self.scan(m.start, m.end, &mut dirty) {
                    Ok(()) => {}
                    Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {
                        return Err(EngineError::NoProcess { pid })
                    }
                    Err(e) => {
                        // The VMA changed since smaps was read (e.g. replaced
                        // by an unregistered mapping): report all it holds; a
                        // new VMA there is registered next round.
                        debug!(
                            "PAGEMAP_SCAN {:#x}-{:#x}: {e}; reporting it whole",
                            m.start, m.end
                        );
                        push_merged(&mut dirty, m.start, m.end);
                    }
                }
            } else if is_trackable(m) {
                // Appeared since the last round (mmap, mremap, PROT_NONE made
                // accessible), or could not be armed before: protect it, then
                // report everything it holds (a write after the protection is
                // reported next round, so nothing falls between).
                match self.arm(m.start, m.end) {
                    Ok(()) => {
                        new_vmas += 1;
                        armed.push(idx);
                    }
                    Err(e) => {
                        debug!("cannot arm {:#x}-{:#x} {}: {e}", m.start, m.end, m.name);
                        untracked += 1;
                    }
                }
                if stopped {
                    push_merged(&mut dirty, m.start, m.end);
                } else {
                    data_ranges(pid, &self.pagemap, m, &mut dirty)?;
                }
            }
        }
        let scan_ms = t0.elapsed().as_secs_f64() * 1e3;
        // A clean COW page of a private file mapping dropped with
        // MADV_DONTNEED keeps its uffd-wp marker (so the scan misses it) but
        // now reads the file's data: report pages that lost their data.
        let file_data = self.private_file_data(&maps)?;
        debug!(
            maps_ms,
            scan_ms,
            file_data_ms = t0.elapsed().as_secs_f64() * 1e3,
            "uffd-wp collect"
        );
        let tracked = trackable_ranges(&maps);
        let ps = page_size();
        let mut lost = Vec::new();
        for &addr in &self.file_data {
            if file_data.binary_search(&addr).is_err() && super::in_ranges(&tracked, addr) {
                lost.push((addr, addr + ps));
            }
        }
        dirty.extend(lost);
        let (_, vanished) = vma_changes(&self.tracked, &tracked);
        self.stats = RoundStats {
            duration: t0.elapsed(),
            stopped: Duration::ZERO,
            tracked_vmas: tracked.len(),
            tracked_pages: tracked.iter().map(|r| (r.1 - r.0) / ps).sum(),
            new_vmas,
            vanished_vmas: vanished,
            untracked_vmas: untracked,
        };
        self.file_data = file_data;
        self.tracked = tracked;
        // What a later cheap read copies: these are registered now.
        for idx in armed {
            maps[idx].vm_flags.push("uw".to_string());
        }
        self.maps = maps;
        Ok(DirtySet::from_byte_ranges(dirty))
    }

    fn finish_inner(&mut self) -> Result<()> {
        let pid = self.pid;
        if self.uffd.is_none() {
            return Ok(());
        }
        let mut failure: Option<EngineError> = None;
        match read_maps(pid) {
            Ok(maps) => {
                for m in maps.iter().filter(|m| m.has_flag("uw")) {
                    // Unregistering also removes the write protection and
                    // the markers of the range.
                    if let Err(e) = self.unregister(m.start, m.end) {
                        debug!("UFFDIO_UNREGISTER {:#x}-{:#x}: {e}", m.start, m.end);
                    }
                }
            }
            Err(EngineError::NoProcess { .. }) => {
                self.uffd = None;
                return Ok(());
            }
            Err(e) => failure = Some(e),
        }
        // Closing the last reference unregisters whatever is left.
        self.uffd = None;
        if let Some(e) = failure {
            return Err(e);
        }
        // Verify that nothing of tern remains in the target.
        let maps = match read_maps(pid) {
            Err(EngineError::NoProcess { .. }) => return Ok(()),
            other => other?,
        };
        if let Some(m) = maps.iter().find(|m| m.has_flag("uw") || m.has_flag("um")) {
            return Err(EngineError::Sys {
                pid,
                what: "remove the uffd-wp registration".into(),
                source: io::Error::other(format!(
                    "mapping {:#x}-{:#x} still has VmFlags {}",
                    m.start,
                    m.end,
                    m.vm_flags.join(" ")
                )),
            });
        }
        match count_uffd_fds(pid) {
            Ok(n) if n > self.uffd_fds_before => Err(EngineError::Sys {
                pid,
                what: "leave no userfaultfd in the target".into(),
                source: io::Error::other(format!(
                    "{n} userfaultfd fds open, {} before tracking",
                    self.uffd_fds_before
                )),
            }),
            Ok(_) | Err(EngineError::NoProcess { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

impl Drop for UffdWpTracker {
    fn drop(&mut self) {
        if let Err(e) = self.finish() {
            warn!("uffd-wp tracker of process {}: {e}", self.pid);
        }
    }
}
