//! Dirty-page trackers: which pages of a running process were written since
//! the previous round, for pre-copy migration and `tern track`.
//!
//! One trait, three backends (DESIGN.md, "Dirty-page trackers"):
//!
//! | backend | how | stops the target | exact? |
//! |---|---|---|---|
//! | `uffd-wp` | userfaultfd WP_ASYNC registered over the VMAs, `PAGEMAP_SCAN` reports written pages and re-protects them in one walk | only at setup (to create the uffd inside it) | yes, per page, atomic |
//! | `soft-dirty` | `clear_refs` = 4, pagemap bit 55 | each round (read + clear must be atomic) | yes, per page; needs `CONFIG_MEM_SOFT_DIRTY` |
//! | `hash` | xxh3 of every page with data, compared with the previous round | never | content changes only (see [`hash`]) |
//!
//! [`TrackerKind::Auto`] picks uffd-wp, then soft-dirty, then hash: uffd-wp
//! first because it is as exact as soft-dirty *and* atomic without stopping
//! the program each round (soft-dirty must freeze it between the pagemap
//! read and `clear_refs`, or writes in between are lost), and because
//! soft-dirty marks whole VMAs dirty whenever the kernel creates or merges
//! one (VM_SOFTDIRTY). Hash costs a read of the whole resident set per round.
//!
//! # Semantics
//!
//! Creating a tracker arms it: [`DirtyTracker::collect`] then returns the
//! pages written after arming, and re-arms atomically (each later call
//! returns the pages written since the previous one). The intended loop is
//! *create tracker → copy everything → collect → copy those → collect …*.
//!
//! Which pages count ("pages with data", [`page_has_data`]) follows the
//! dump: present or swapped pages of private anonymous and shared anonymous
//! memory, and of private file mappings only the pages copied on write.
//!
//! Which VMAs are tracked ([`is_trackable`]): private mappings (anonymous or
//! file) and shared anonymous memory (`/dev/zero (deleted)`), with any
//! protection but `PROT_NONE`. Left out: `[vdso]`, `[vvar]`, `[vvar_vclock]`,
//! `[vsyscall]`, `[uprobes]` (the kernel's, never copied); shared file
//! mappings (the file holds the data; the dump skips them too); device
//! mappings (`io`/`pf` VmFlags); `PROT_NONE` VMAs (nothing can write them;
//! registering them would make uffd-wp build page tables for possibly huge
//! reservations). A VMA that appears between rounds (mmap, mremap, or a
//! `PROT_NONE` area made accessible) is reported with all its pages with data
//! and tracked from then on; a VMA that vanished is dropped.

mod hash;
mod soft_dirty;
mod uffd;

pub use hash::HashTracker;
pub use soft_dirty::SoftDirtyTracker;
pub use uffd::UffdWpTracker;

use crate::error::{Context, EngineError, Result};
use std::fmt;
use std::str::FromStr;
use std::time::Duration;
use tern_sys::mem::ProcMem;
use tern_sys::proc::{self, MapEntry, Pagemap};
use tracing::info;

pub use tern_sys::page_size;

/// Which tracker to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TrackerKind {
    /// The most exact one that works here: uffd-wp, then soft-dirty, then hash.
    Auto,
    SoftDirty,
    UffdWp,
    Hash,
}

impl TrackerKind {
    pub fn name(self) -> &'static str {
        match self {
            TrackerKind::Auto => "auto",
            TrackerKind::SoftDirty => "soft-dirty",
            TrackerKind::UffdWp => "uffd-wp",
            TrackerKind::Hash => "hash",
        }
    }

    /// The order `Auto` tries the backends in.
    pub const AUTO_ORDER: [TrackerKind; 3] = [
        TrackerKind::UffdWp,
        TrackerKind::SoftDirty,
        TrackerKind::Hash,
    ];
}

impl fmt::Display for TrackerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for TrackerKind {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "auto" => Ok(TrackerKind::Auto),
            "soft-dirty" => Ok(TrackerKind::SoftDirty),
            "uffd-wp" => Ok(TrackerKind::UffdWp),
            "hash" => Ok(TrackerKind::Hash),
            _ => Err(format!(
                "unknown tracker {s:?} (auto, soft-dirty, uffd-wp, hash)"
            )),
        }
    }
}

/// A run of `pages` pages starting at address `start`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct PageRange {
    pub start: u64,
    pub pages: u64,
}

/// Pages written in one round: sorted, merged, non-overlapping ranges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirtySet {
    ranges: Vec<PageRange>,
    page_size: u64,
}

/// Dirty pages within one VMA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmaDirty {
    pub start: u64,
    pub end: u64,
    /// The VMA's name (path, `[heap]`, ...), empty for anonymous memory;
    /// `(unmapped)` for dirty pages no current VMA covers.
    pub name: String,
    pub pages: u64,
}

impl DirtySet {
    pub fn empty() -> DirtySet {
        DirtySet {
            ranges: Vec::new(),
            page_size: page_size(),
        }
    }

    /// Build from `[start, end)` byte ranges in any order (page-aligned
    /// outward), merging overlaps and neighbours.
    pub fn from_byte_ranges(mut v: Vec<(u64, u64)>) -> DirtySet {
        let page = page_size();
        v.retain(|&(s, e)| e > s);
        v.sort_unstable();
        let mut ranges: Vec<PageRange> = Vec::with_capacity(v.len());
        let mut cur: Option<(u64, u64)> = None;
        for (s, e) in v {
            let (s, e) = (s / page * page, e.div_ceil(page) * page);
            cur = match cur {
                Some((cs, ce)) if s <= ce => Some((cs, ce.max(e))),
                Some((cs, ce)) => {
                    ranges.push(PageRange {
                        start: cs,
                        pages: (ce - cs) / page,
                    });
                    Some((s, e))
                }
                None => Some((s, e)),
            };
        }
        if let Some((cs, ce)) = cur {
            ranges.push(PageRange {
                start: cs,
                pages: (ce - cs) / page,
            });
        }
        DirtySet {
            ranges,
            page_size: page,
        }
    }

    /// This set with the byte ranges `extra` added.
    pub fn with_ranges(&self, extra: impl IntoIterator<Item = (u64, u64)>) -> DirtySet {
        let ps = self.page_size;
        let mine = self
            .ranges
            .iter()
            .map(|r| (r.start, r.start + r.pages * ps));
        DirtySet::from_byte_ranges(mine.chain(extra).collect())
    }

    pub fn ranges(&self) -> &[PageRange] {
        &self.ranges
    }

    pub fn page_size(&self) -> u64 {
        self.page_size
    }

    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    pub fn total_pages(&self) -> u64 {
        self.ranges.iter().map(|r| r.pages).sum()
    }

    pub fn total_bytes(&self) -> u64 {
        self.total_pages() * self.page_size
    }

    /// Whether the page holding `addr` is in the set.
    pub fn contains(&self, addr: u64) -> bool {
        let page = addr / self.page_size * self.page_size;
        let i = self.ranges.partition_point(|r| r.start <= page);
        i > 0 && {
            let r = self.ranges[i - 1];
            page < r.start + r.pages * self.page_size
        }
    }

    /// Every dirty page's address, ascending.
    pub fn page_addrs(&self) -> impl Iterator<Item = u64> + '_ {
        let ps = self.page_size;
        self.ranges
            .iter()
            .flat_map(move |r| (0..r.pages).map(move |i| r.start + i * ps))
    }

    /// Number of dirty pages inside `[start, end)`.
    pub fn pages_in(&self, start: u64, end: u64) -> u64 {
        let ps = self.page_size;
        let first = self
            .ranges
            .partition_point(|r| r.start + r.pages * ps <= start);
        self.ranges[first..]
            .iter()
            .take_while(|r| r.start < end)
            .map(|r| {
                let s = r.start.max(start);
                let e = (r.start + r.pages * ps).min(end);
                e.saturating_sub(s) / ps
            })
            .sum()
    }

    /// Dirty pages per VMA of `maps` (sorted by address, as smaps lists
    /// them), only VMAs with at least one; pages outside every VMA are
    /// summed in a last `(unmapped)` entry.
    pub fn per_vma(&self, maps: &[MapEntry]) -> Vec<VmaDirty> {
        let mut out = Vec::new();
        let mut inside = 0;
        for m in maps {
            let pages = self.pages_in(m.start, m.end);
            if pages > 0 {
                inside += pages;
                out.push(VmaDirty {
                    start: m.start,
                    end: m.end,
                    name: m.name.clone(),
                    pages,
                });
            }
        }
        let outside = self.total_pages() - inside.min(self.total_pages());
        if outside > 0 {
            out.push(VmaDirty {
                start: 0,
                end: 0,
                name: "(unmapped)".into(),
                pages: outside,
            });
        }
        out
    }
}

/// What the last [`DirtyTracker::collect`] (or the setup, before the first
/// collect) cost and saw.
#[derive(Debug, Clone, Default)]
pub struct RoundStats {
    /// Wall time of the round (or of the setup).
    pub duration: Duration,
    /// How long the tracker kept the target stopped during it.
    pub stopped: Duration,
    /// VMAs tracked after the round, and their size in pages.
    pub tracked_vmas: usize,
    pub tracked_pages: u64,
    /// VMAs that appeared since the previous round (reported in full).
    pub new_vmas: usize,
    /// Tracked VMAs of the previous round that are gone.
    pub vanished_vmas: usize,
    /// VMAs the backend could not arm; reported in full every round.
    pub untracked_vmas: usize,
}

/// A dirty-page tracker attached to one process.
///
/// Dropping it calls [`finish`](DirtyTracker::finish) (errors are logged).
pub trait DirtyTracker: std::fmt::Debug {
    /// `"uffd-wp"`, `"soft-dirty"` or `"hash"`.
    fn name(&self) -> &'static str;
    fn pid(&self) -> i32;
    /// Pages written since the tracker was created or since the previous
    /// collect, re-arming atomically.
    fn collect(&mut self) -> Result<DirtySet>;
    /// [`collect`](Self::collect) while the program is stopped for good
    /// (the final round of a pre-copy): a backend may take shortcuts that
    /// are only exact when nothing changes meanwhile, and must report
    /// mappings new since its last collect whole.
    fn collect_stopped(&mut self) -> Result<DirtySet> {
        self.collect()
    }
    /// Cost and VMA changes of the last collect (or of the setup).
    fn stats(&self) -> &RoundStats;
    /// The memory map the last collect (or the setup) read.
    fn maps(&self) -> &[MapEntry];
    /// Stop tracking and leave the target exactly as it was before (no fd,
    /// no registration, no write protection). Idempotent.
    fn finish(&mut self) -> Result<()>;
}

/// Open a tracker of `kind` on `pid`; tracking starts now.
pub fn open_tracker(pid: i32, kind: TrackerKind) -> Result<Box<dyn DirtyTracker>> {
    open_tracker_with_notes(pid, kind).map(|(t, _)| t)
}

/// Like [`open_tracker`], also returning why `Auto` skipped backends.
pub fn open_tracker_with_notes(
    pid: i32,
    kind: TrackerKind,
) -> Result<(Box<dyn DirtyTracker>, Vec<String>)> {
    let open_one = |k: TrackerKind| -> Result<Box<dyn DirtyTracker>> {
        Ok(match k {
            TrackerKind::UffdWp => Box::new(UffdWpTracker::open(pid)?),
            TrackerKind::SoftDirty => Box::new(SoftDirtyTracker::open(pid)?),
            TrackerKind::Hash => Box::new(HashTracker::open(pid)?),
            TrackerKind::Auto => unreachable!("Auto is resolved by the caller"),
        })
    };
    if kind != TrackerKind::Auto {
        return open_one(kind).map(|t| (t, Vec::new()));
    }
    let mut notes = Vec::new();
    let mut last = None;
    for k in TrackerKind::AUTO_ORDER {
        match open_one(k) {
            Ok(t) => return Ok((t, notes)),
            Err(e @ EngineError::NoProcess { .. }) => return Err(e),
            Err(e) => {
                info!("auto tracker: {k} skipped: {e}");
                notes.push(format!("{k} skipped: {e}"));
                last = Some(e);
            }
        }
    }
    Err(last.unwrap_or(EngineError::NoProcess { pid }))
}

// ---------------------------------------------------------------------------
// Shared helpers for the backends.

/// The kernel's own mappings, which are never copied.
fn is_special(m: &MapEntry) -> bool {
    matches!(
        m.name.as_str(),
        "[vdso]" | "[vvar]" | "[vvar_vclock]" | "[vsyscall]" | "[uprobes]"
    )
}

/// `MAP_SHARED | MAP_ANONYMOUS` memory, shown as a deleted `/dev/zero`.
fn is_shared_anon(m: &MapEntry) -> bool {
    m.shared && (m.inode == 0 || m.name.starts_with("/dev/zero"))
}

/// Whether trackers watch this VMA (see the module documentation).
pub fn is_trackable(m: &MapEntry) -> bool {
    if is_special(m) || m.has_flag("io") || m.has_flag("pf") {
        return false;
    }
    if !(m.read || m.write || m.exec) {
        return false;
    }
    !m.shared || is_shared_anon(m)
}

/// Whether the page with pagemap `entry` holds data the dump would copy:
/// present or swapped, and in a private file mapping only if copied on write.
pub fn page_has_data(m: &MapEntry, entry: u64) -> bool {
    let swapped = proc::pm_swapped(entry);
    let present = entry & proc::PM_PRESENT != 0;
    if m.is_file() && !m.shared {
        return swapped || (present && entry & proc::PM_FILE_OR_SHARED_ANON == 0);
    }
    present || swapped
}

/// Pages of pagemap read per call (512 KiB of entries, 256 MiB of memory).
const PAGEMAP_CHUNK: u64 = 64 * 1024;

/// Call `f(addr, entry)` for every page of `[start, end)`, reading the
/// pagemap in large chunks.
fn for_each_pagemap_entry(
    pid: i32,
    pagemap: &Pagemap,
    start: u64,
    end: u64,
    mut f: impl FnMut(u64, u64),
) -> Result<()> {
    let ps = page_size();
    let mut at = start;
    while at < end {
        let stop = end.min(at + PAGEMAP_CHUNK * ps);
        let entries = pagemap
            .read(at, stop, ps)
            .ctx(pid, || format!("read pagemap {at:#x}-{stop:#x}"))?;
        for (i, e) in entries.into_iter().enumerate() {
            f(at + i as u64 * ps, e);
        }
        at = stop;
    }
    Ok(())
}

/// `[start, end)` byte ranges of the pages with data in `m`, merged.
fn data_ranges(pid: i32, pagemap: &Pagemap, m: &MapEntry, out: &mut Vec<(u64, u64)>) -> Result<()> {
    let ps = page_size();
    for_each_pagemap_entry(pid, pagemap, m.start, m.end, |addr, e| {
        if page_has_data(m, e) {
            push_merged(out, addr, addr + ps);
        }
    })
}

/// Append `[s, e)` to `out`, extending the last range when contiguous.
fn push_merged(out: &mut Vec<(u64, u64)>, s: u64, e: u64) {
    match out.last_mut() {
        Some(last) if last.1 == s => last.1 = e,
        _ => out.push((s, e)),
    }
}

/// Trackable VMAs of `maps` as `(start, end)`.
fn trackable_ranges(maps: &[MapEntry]) -> Vec<(u64, u64)> {
    maps.iter()
        .filter(|m| is_trackable(m))
        .map(|m| (m.start, m.end))
        .collect()
}

/// How many of `cur` are not in `prev` (new) and of `prev` not in `cur`
/// (vanished); both sorted.
fn vma_changes(prev: &[(u64, u64)], cur: &[(u64, u64)]) -> (usize, usize) {
    let new = cur
        .iter()
        .filter(|r| prev.binary_search(r).is_err())
        .count();
    let gone = prev
        .iter()
        .filter(|r| cur.binary_search(r).is_err())
        .count();
    (new, gone)
}

/// Whether `addr` lies inside one of the sorted, disjoint `ranges`.
fn in_ranges(ranges: &[(u64, u64)], addr: u64) -> bool {
    let i = ranges.partition_point(|r| r.0 <= addr);
    i > 0 && addr < ranges[i - 1].1
}

/// Read the smaps of `pid`, turning a vanished process into `NoProcess`.
fn read_maps(pid: i32) -> Result<Vec<MapEntry>> {
    proc::read_smaps(pid).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            EngineError::NoProcess { pid }
        } else {
            EngineError::Sys {
                pid,
                what: "read smaps".into(),
                source: e,
            }
        }
    })
}

/// Reads pages of the target in large batches: `process_vm_readv`, falling
/// back to `/proc/PID/mem` page by page where it faults.
#[derive(Debug)]
struct PageReader {
    pid: i32,
    mem: Option<ProcMem>,
}

impl PageReader {
    fn new(pid: i32) -> PageReader {
        PageReader { pid, mem: None }
    }

    /// Fill `buf` from `addr` (both page-multiples); `ok[i]` says whether
    /// page `i` could be read (unmapped meanwhile, or unreadable even with
    /// FOLL_FORCE, gives false).
    fn read(&mut self, addr: u64, buf: &mut [u8], ok: &mut Vec<bool>) -> Result<()> {
        let ps = page_size() as usize;
        let pages = buf.len() / ps;
        ok.clear();
        ok.resize(pages, false);
        let mut done = 0usize; // pages
        while done < pages {
            let at = addr + (done * ps) as u64;
            let n = match tern_sys::mem::vm_read(self.pid, at, &mut buf[done * ps..]) {
                Ok(n) => n / ps,
                Err(e) if e.raw_os_error() == Some(libc::EFAULT) => 0,
                Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {
                    return Err(EngineError::NoProcess { pid: self.pid })
                }
                Err(e) => return Err(e).ctx(self.pid, || format!("process_vm_readv at {at:#x}")),
            };
            for o in &mut ok[done..done + n] {
                *o = true;
            }
            done += n;
            if done == pages {
                break;
            }
            // The page at `done` faulted: try it through /proc/PID/mem.
            let at = addr + (done * ps) as u64;
            if self.mem.is_none() {
                self.mem = Some(
                    ProcMem::open(self.pid, false).ctx(self.pid, || "open /proc/PID/mem".into())?,
                );
            }
            if let Some(mem) = &self.mem {
                let page = &mut buf[done * ps..(done + 1) * ps];
                ok[done] = mem.read_exact_at(at, page).is_ok();
            }
            done += 1;
        }
        Ok(())
    }
}

/// xxh3 of the contents of every page of `set`, in address order, read now
/// from `pid` (what `tern track` prints as a round's hash). Pages that
/// cannot be read any more (unmapped since) are left out and counted.
pub fn content_hash(pid: i32, set: &DirtySet) -> Result<(u64, u64)> {
    const BATCH: u64 = 1024; // 4 MiB per read
    let ps = set.page_size();
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    let mut reader = PageReader::new(pid);
    let mut buf = Vec::new();
    let mut ok = Vec::new();
    let mut unreadable = 0u64;
    for r in set.ranges() {
        let mut i = 0;
        while i < r.pages {
            let n = (r.pages - i).min(BATCH);
            buf.resize((n * ps) as usize, 0);
            reader.read(r.start + i * ps, &mut buf, &mut ok)?;
            for (p, good) in ok.iter().enumerate() {
                if *good {
                    hasher.update(&buf[p * ps as usize..(p + 1) * ps as usize]);
                } else {
                    unreadable += 1;
                }
            }
            i += n;
        }
    }
    Ok((hasher.digest(), unreadable))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dirty_set_merges_and_counts() {
        let ps = page_size();
        let s = DirtySet::from_byte_ranges(vec![
            (10 * ps, 12 * ps),
            (2 * ps, 3 * ps),
            (12 * ps, 13 * ps),
            (11 * ps, 11 * ps + 1),
            (20 * ps + 5, 20 * ps + 6),
        ]);
        assert_eq!(
            s.ranges(),
            &[
                PageRange {
                    start: 2 * ps,
                    pages: 1
                },
                PageRange {
                    start: 10 * ps,
                    pages: 3
                },
                PageRange {
                    start: 20 * ps,
                    pages: 1
                },
            ]
        );
        assert_eq!(s.total_pages(), 5);
        assert_eq!(s.total_bytes(), 5 * ps);
        assert!(s.contains(12 * ps + 7) && !s.contains(13 * ps) && !s.contains(0));
        assert_eq!(s.pages_in(11 * ps, 21 * ps), 3);
        let addrs: Vec<u64> = s.page_addrs().collect();
        assert_eq!(addrs, [2, 10, 11, 12, 20].map(|p| p * ps));
    }

    #[test]
    fn per_vma_breakdown_includes_unmapped() {
        let ps = page_size();
        let s = DirtySet::from_byte_ranges(vec![(0, 4 * ps), (100 * ps, 101 * ps)]);
        let m = |start: u64, end: u64, name: &str| MapEntry {
            start,
            end,
            read: true,
            write: true,
            exec: false,
            shared: false,
            offset: 0,
            dev_major: 0,
            dev_minor: 0,
            inode: 0,
            name: name.into(),
            vm_flags: vec![],
            anonymous_kb: 0,
            swap_kb: 0,
        };
        let maps = [
            m(ps, 3 * ps, "a"),
            m(50 * ps, 60 * ps, "b"),
            m(100 * ps, 200 * ps, "c"),
        ];
        let v = s.per_vma(&maps);
        assert_eq!(v.len(), 3);
        assert_eq!((v[0].name.as_str(), v[0].pages), ("a", 2));
        assert_eq!((v[1].name.as_str(), v[1].pages), ("c", 1));
        assert_eq!((v[2].name.as_str(), v[2].pages), ("(unmapped)", 2));
    }

    #[test]
    fn trackable_filter() {
        let base = MapEntry {
            start: 0,
            end: 4096,
            read: true,
            write: true,
            exec: false,
            shared: false,
            offset: 0,
            dev_major: 0,
            dev_minor: 0,
            inode: 0,
            name: String::new(),
            vm_flags: vec![],
            anonymous_kb: 0,
            swap_kb: 0,
        };
        assert!(is_trackable(&base));
        let none = MapEntry {
            read: false,
            write: false,
            ..base.clone()
        };
        assert!(!is_trackable(&none));
        let vdso = MapEntry {
            name: "[vdso]".into(),
            ..base.clone()
        };
        assert!(!is_trackable(&vdso));
        let shared_file = MapEntry {
            shared: true,
            inode: 5,
            name: "/tmp/x".into(),
            ..base.clone()
        };
        assert!(!is_trackable(&shared_file));
        let shared_anon = MapEntry {
            shared: true,
            inode: 5,
            name: "/dev/zero (deleted)".into(),
            ..base.clone()
        };
        assert!(is_trackable(&shared_anon));
        let private_file_ro = MapEntry {
            write: false,
            inode: 5,
            name: "/usr/lib/libc.so.6".into(),
            ..base
        };
        assert!(is_trackable(&private_file_ro));
    }

    #[test]
    fn kind_parses() {
        for k in [
            TrackerKind::Auto,
            TrackerKind::SoftDirty,
            TrackerKind::UffdWp,
            TrackerKind::Hash,
        ] {
            assert_eq!(k.name().parse::<TrackerKind>(), Ok(k));
        }
        assert!("x".parse::<TrackerKind>().is_err());
    }
}
