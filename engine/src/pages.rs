//! Which pages of a process an image stores, read from the process and
//! handed to the page writer: the whole capture (every page with data,
//! or those changed since a parent image) and the final delta of a
//! pre-copy with an exact tracker (only the pages it reported).

use crate::error::{Context, Result};
use crate::pagewriter::{PageFilter, PageWriter, BATCH_BYTES};
use crate::track::DirtySet;
use std::path::Path;
use std::time::Instant;
use tern_sys::mem;
use tern_sys::page_size;
use tern_sys::proc::{self, MapEntry, Pagemap};
use tern_wire as wire;
use tracing::debug;

/// Lookups of non-decreasing addresses in a sorted (address, hash) table.
pub(crate) struct TableCursor<'a> {
    table: &'a [(u64, u64)],
    pos: usize,
}

impl<'a> TableCursor<'a> {
    fn new(table: &'a [(u64, u64)]) -> Self {
        TableCursor { table, pos: 0 }
    }

    fn get(&mut self, addr: u64) -> Option<u64> {
        let t = self.table;
        if self.pos < t.len() && t[self.pos].0 < addr {
            // Usually the very next entry; else skip ahead by bisection.
            self.pos += 1;
            if self.pos < t.len() && t[self.pos].0 < addr {
                self.pos += t[self.pos..].partition_point(|e| e.0 < addr);
            }
        }
        match t.get(self.pos) {
            Some(&(a, h)) if a == addr => Some(h),
            _ => None,
        }
    }
}

/// Whether a mapping's page `entry` must be saved.
pub(crate) fn page_needed(m: &MapEntry, entry: u64) -> bool {
    let swapped = proc::pm_swapped(entry);
    let present = entry & proc::PM_PRESENT != 0;
    if m.is_file() && !m.is_shmem_anon() {
        if m.shared {
            return false; // the file itself holds the data
        }
        // Private file mapping: only pages copied on write are ours.
        return swapped || (present && entry & proc::PM_FILE_OR_SHARED_ANON == 0);
    }
    if m.shared {
        // Shared anonymous memory (shmem) keeps data that no page table of
        // ours maps (after MADV_DONTNEED, or swapped): read every page; the
        // all-zero ones are then left out.
        return true;
    }
    present || swapped
}

/// What one capture stored, and the hash of every page it saw.
#[derive(Debug)]
pub struct PageCapture {
    pub stats: wire::chunks::ChunkStats,
    /// (address, xxh3) of every page the program had, sorted (empty when
    /// only `delta` was worked out).
    pub hashes: Vec<(u64, u64)>,
    /// The table as a change to the parent's ([`capture_delta`]).
    pub delta: Option<wire::TableDelta>,
    pub pages_stored: u64,
    pub round_hash: u64,
    /// Addresses of the pages left for post-copy, sorted.
    pub deferred: Vec<u64>,
}

impl PageCapture {
    /// Entries of the full table.
    pub fn table_len(&self) -> u64 {
        self.delta
            .as_ref()
            .map_or(self.hashes.len() as u64, |d| d.count)
    }
}

/// The final capture of a pre-copy with an exact tracker: only the pages
/// in `dirty` (and mappings new since its last collect) are examined
/// (read, hashed, compared with `parent`; stored if
/// changed; if no longer there, stored as what the page reads as now,
/// zeros or the file's bytes, and dropped from the table), and the parent's
/// entries in ranges no longer mapped are dropped. Produces the table as a
/// delta to `parent`; its cost follows what changed, not the program's size.
/// With `defer`, the dirty pages of private anonymous memory are neither
/// read nor stored: they are listed in `deferred`, for post-copy (read
/// from the stopped program when they are sent, so the frozen phase costs
/// what the rest of the state costs). Their entries in the table stay as
/// the parent had them; the destination fetches those pages whatever its
/// table says.
pub(crate) fn capture_delta(
    pid: i32,
    maps: &[MapEntry],
    dir: &Path,
    codec: wire::Codec,
    parent: &[(u64, u64)],
    dirty: &DirtySet,
    defer: bool,
) -> Result<PageCapture> {
    let page = page_size();
    let pagemap = Pagemap::open(pid).ctx(pid, || "open pagemap".into())?;
    let mut out = PageWriter::create(&dir.join(wire::PAGES_FILE), codec, page as usize)?;
    let capturable: Vec<&MapEntry> = maps.iter().filter(|m| captures_pages(m)).collect();
    let examine = ranges_to_examine(dirty, &capturable, page);
    let mut plan = DeltaPlan::default();
    for m in &capturable {
        plan.add_mapping(pid, &pagemap, m, &examine, parent, defer, page)?;
    }
    let mut stored = DeltaStored::new(parent);
    let result = stored
        .store_read(pid, &mut out, &plan)
        .and_then(|go_on| match go_on {
            true => stored.store_gone(pid, &mut out, &plan),
            false => Ok(false),
        });
    let stats = out.finish();
    result?;
    stored.removed.extend(unmapped_entries(&capturable, parent));
    Ok(stored.into_capture(stats?, plan.deferred))
}

/// The parent's hash of the page at `a`, if it had one.
fn parent_hash(parent: &[(u64, u64)], a: u64) -> Option<u64> {
    parent
        .binary_search_by_key(&a, |e| e.0)
        .ok()
        .map(|i| parent[i].1)
}

/// What a final delta looks at, merged and sorted: the dirty pages, and
/// whole every mapping the tracker had not registered at its last collect
/// (new since the last round, e.g. unmapped and mapped again: it reports
/// only the pages with data there, but the parent may have had others).
fn ranges_to_examine(dirty: &DirtySet, capturable: &[&MapEntry], page: u64) -> Vec<(u64, u64)> {
    let mut examine: Vec<(u64, u64)> = dirty
        .ranges()
        .iter()
        .map(|r| (r.start, r.start + r.pages * page))
        .chain(
            capturable
                .iter()
                .filter(|m| !m.has_flag("uw"))
                .map(|m| (m.start, m.end)),
        )
        .collect();
    examine.sort_unstable();
    let mut merged: Vec<(u64, u64)> = Vec::with_capacity(examine.len());
    for (s, e) in examine {
        match merged.last_mut() {
            Some(last) if s <= last.1 => last.1 = last.1.max(e),
            _ => merged.push((s, e)),
        }
    }
    merged
}

/// What each examined page is now: to read (it has data), or gone since
/// the parent (it now reads as zeros or as the file's bytes). One list per
/// mapping: a chunk of the page file never spans two.
#[derive(Default)]
struct DeltaPlan {
    to_read: Vec<Vec<u64>>,
    /// (address, anonymous)
    gone: Vec<Vec<(u64, bool)>>,
    /// The anonymous mappings' ranges.
    anon: Vec<(u64, u64)>,
    /// Left for post-copy.
    deferred: Vec<u64>,
}

impl DeltaPlan {
    /// Sort the examined pages of mapping `m` (the parts of `examine` in it).
    #[allow(clippy::too_many_arguments)]
    fn add_mapping(
        &mut self,
        pid: i32,
        pagemap: &Pagemap,
        m: &MapEntry,
        examine: &[(u64, u64)],
        parent: &[(u64, u64)],
        defer: bool,
        page: u64,
    ) -> Result<()> {
        let lo = examine.partition_point(|r| r.1 <= m.start);
        let segs: Vec<(u64, u64)> = examine[lo..]
            .iter()
            .take_while(|r| r.0 < m.end)
            .map(|r| (r.0.max(m.start), r.1.min(m.end)))
            .collect();
        let (Some(first), Some(last)) = (segs.first(), segs.last()) else {
            return Ok(());
        };
        let anon = m.reads_zero_when_empty();
        if anon {
            self.anon.push((m.start, m.end));
        }
        let deferrable = defer && anon && !m.shared;
        let (mut reads, mut gones) = (Vec::new(), Vec::new());
        // Many scattered ranges: one pagemap read over their span.
        let span = (first.0, last.1);
        let span_entries = if segs.len() > 64 {
            Some(pagemap.read(span.0, span.1, page).ctx(pid, || {
                format!("read pagemap for {:#x}-{:#x}", span.0, span.1)
            })?)
        } else {
            None
        };
        for &(s0, e0) in &segs {
            let own;
            let (entries, base) = match &span_entries {
                Some(e) => (e, span.0),
                None => {
                    own = pagemap
                        .read(s0, e0, page)
                        .ctx(pid, || format!("read pagemap for {s0:#x}-{e0:#x}"))?;
                    (&own, s0)
                }
            };
            let mut a = s0;
            while a < e0 {
                let e = entries[((a - base) / page) as usize];
                if page_needed(m, e) && deferrable {
                    self.deferred.push(a);
                } else if page_needed(m, e) {
                    reads.push(a);
                } else if parent_hash(parent, a).is_some() {
                    gones.push((a, anon));
                }
                a += page;
            }
        }
        debug!(
            pid,
            start = m.start,
            name = %m.name,
            with_data = reads.len(),
            deferred = self.deferred.len(),
            gone = gones.len(),
            deferrable,
            "final delta of a mapping"
        );
        self.to_read.push(reads);
        self.gone.push(gones);
        Ok(())
    }

    fn is_anon(&self, a: u64) -> bool {
        self.anon.iter().any(|&(s, e)| s <= a && a < e)
    }
}

/// Back-to-back (address, length) runs of ascending page addresses.
fn runs_of(addrs: &[u64], pg: usize) -> Vec<(u64, usize)> {
    let mut runs: Vec<(u64, usize)> = Vec::new();
    for &a in addrs {
        match runs.last_mut() {
            Some(r) if r.0 + r.1 as u64 == a => r.1 += pg,
            _ => runs.push((a, pg)),
        }
    }
    runs
}

/// What a final delta stored, as it goes.
struct DeltaStored<'a> {
    parent: &'a [(u64, u64)],
    /// New or changed table entries.
    changed: Vec<(u64, u64)>,
    /// Entries the table loses.
    removed: Vec<u64>,
    round: xxhash_rust::xxh3::Xxh3,
    pages_stored: u64,
}

impl<'a> DeltaStored<'a> {
    fn new(parent: &'a [(u64, u64)]) -> Self {
        DeltaStored {
            parent,
            changed: Vec::new(),
            removed: Vec::new(),
            round: xxhash_rust::xxh3::Xxh3::new(),
            pages_stored: 0,
        }
    }

    /// Read, hash and store the pages with data that changed. False: the
    /// writer stopped (its error comes from `finish`).
    fn store_read(&mut self, pid: i32, out: &mut PageWriter, plan: &DeltaPlan) -> Result<bool> {
        let pg = page_size() as usize;
        for batch in plan.to_read.iter().flat_map(|r| r.chunks(BATCH_BYTES / pg)) {
            let len = batch.len() * pg;
            let Some(mut buf) = out.buffer(len) else {
                return Ok(false);
            };
            mem::read_scattered(pid, &runs_of(batch, pg), &mut buf[..len])
                .ctx(pid, || format!("read {} dirty pages", batch.len()))?;
            let mut keep = Vec::with_capacity(batch.len());
            for (&pa, p) in batch.iter().zip(buf[..len].chunks(pg)) {
                let h = xxhash_rust::xxh3::xxh3_64(p);
                let old = parent_hash(self.parent, pa);
                let is_new = match old {
                    Some(ph) => ph != h,
                    None => !(plan.is_anon(pa) && crate::pagewriter::is_zero(p)),
                };
                if is_new || old.is_none() {
                    self.changed.push((pa, h));
                }
                if is_new {
                    self.round.update(&pa.to_le_bytes());
                    self.round.update(&h.to_le_bytes());
                    self.pages_stored += 1;
                }
                keep.push(is_new);
            }
            if !out.submit_scattered(batch.to_vec(), buf, PageFilter::Only(keep)) {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Store the pages gone since the parent as what they read as now.
    fn store_gone(&mut self, pid: i32, out: &mut PageWriter, plan: &DeltaPlan) -> Result<bool> {
        let pg = page_size() as usize;
        for batch in plan.gone.iter().flat_map(|g| g.chunks(BATCH_BYTES / pg)) {
            let len = batch.len() * pg;
            let Some(mut buf) = out.buffer(len) else {
                return Ok(false);
            };
            buf[..len].fill(0);
            for (k, &(pa, anon)) in batch.iter().enumerate() {
                if !anon {
                    // The file's bytes show through again: read them.
                    mem::read_fully(pid, pa, &mut buf[k * pg..(k + 1) * pg])
                        .ctx(pid, || format!("read file-backed page at {pa:#x}"))?;
                }
                self.removed.push(pa);
                self.round.update(&pa.to_le_bytes());
                self.round.update(&0u64.to_le_bytes());
                self.pages_stored += 1;
            }
            let addrs: Vec<u64> = batch.iter().map(|g| g.0).collect();
            if !out.submit_scattered(addrs, buf, PageFilter::All) {
                return Ok(false);
            }
        }
        Ok(true)
    }

    fn into_capture(mut self, stats: wire::chunks::ChunkStats, deferred: Vec<u64>) -> PageCapture {
        self.changed.sort_unstable_by_key(|e| e.0);
        self.changed.dedup_by_key(|e| e.0);
        self.removed.sort_unstable();
        self.removed.dedup();
        let parent = self.parent;
        let added = self
            .changed
            .iter()
            .filter(|e| parent_hash(parent, e.0).is_none())
            .count() as u64;
        let count = (parent.len() as u64 + added).saturating_sub(self.removed.len() as u64);
        PageCapture {
            stats,
            hashes: Vec::new(),
            delta: Some(wire::TableDelta {
                count,
                changed: self.changed,
                removed: self.removed,
            }),
            pages_stored: self.pages_stored,
            round_hash: self.round.digest(),
            deferred,
        }
    }
}

/// The parent's entries that no captured mapping covers any more: they
/// were unmapped.
fn unmapped_entries(capturable: &[&MapEntry], parent: &[(u64, u64)]) -> Vec<u64> {
    let mut bounds: Vec<(u64, u64)> = capturable.iter().map(|m| (m.start, m.end)).collect();
    bounds.sort_unstable();
    let mut out = Vec::new();
    let mut at = 0u64;
    for &(s, e) in bounds.iter().chain(std::iter::once(&(u64::MAX, u64::MAX))) {
        if s > at {
            let lo = parent.partition_point(|x| x.0 < at);
            let hi = parent.partition_point(|x| x.0 < s);
            out.extend(parent[lo..hi].iter().map(|x| x.0));
        }
        at = at.max(e);
    }
    out
}

/// Copy every page that must move into the page file: all of them, or,
/// given the parent's page hashes, those whose content changed since, plus
/// pages the parent had that are gone now (zeros for anonymous memory, the
/// file's bytes for file mappings), so a chain restores exactly.
/// `running`: the target is not stopped, so vanishing ranges are skipped
/// (the next increment sees them) instead of failing the capture.
pub(crate) fn capture_pages(
    pid: i32,
    maps: &[MapEntry],
    dir: &Path,
    codec: wire::Codec,
    parent: &[(u64, u64)],
    dirty: Option<&DirtySet>,
    running: bool,
) -> Result<PageCapture> {
    let t_setup = Instant::now();
    let pagemap = Pagemap::open(pid).ctx(pid, || "open pagemap".into())?;
    let out = PageWriter::create(&dir.join(wire::PAGES_FILE), codec, page_size() as usize)?;
    let setup_ms = t_setup.elapsed().as_secs_f64() * 1e3;
    let mut c = WholeCapture {
        pid,
        page: page_size(),
        running,
        dirty,
        parent,
        ahead: TableCursor::new(parent),
        behind: TableCursor::new(parent),
        out,
        hashes: Vec::new(),
        round: xxhash_rust::xxh3::Xxh3::new(),
        pages_stored: 0,
        read_ns: 0,
        pagemap_ns: 0,
    };
    let read_result = (|| -> Result<()> {
        for m in maps.iter().filter(|m| captures_pages(m)) {
            if !c.mapping(&pagemap, m)? {
                return Ok(());
            }
        }
        c.store_gone(maps).map(drop)
    })();
    let tf = Instant::now();
    let stats = c.out.finish();
    debug!(
        setup_ms,
        walk_ms = tf.duration_since(t_setup).as_secs_f64() * 1e3,
        read_ms = c.read_ns as f64 / 1e6,
        pagemap_ms = c.pagemap_ns as f64 / 1e6,
        drain_ms = tf.elapsed().as_secs_f64() * 1e3,
        "page capture timing"
    );
    read_result?;
    Ok(PageCapture {
        stats: stats?,
        hashes: c.hashes,
        delta: None,
        pages_stored: c.pages_stored,
        round_hash: c.round.digest(),
        deferred: Vec::new(),
    })
}

/// A whole capture as it goes ([`capture_pages`]).
struct WholeCapture<'a> {
    pid: i32,
    page: u64,
    running: bool,
    /// With a tracker's dirty set, only pages it reports (or that no older
    /// image has) are read; the others keep their old hash.
    dirty: Option<&'a DirtySet>,
    parent: &'a [(u64, u64)],
    /// Two forward cursors over the parent table: one looks ahead for the
    /// extent of a batch, one follows the pages as they are processed (a
    /// binary search per page cost ~20 ms per GiB, frozen).
    ahead: TableCursor<'a>,
    behind: TableCursor<'a>,
    out: PageWriter,
    hashes: Vec<(u64, u64)>,
    round: xxhash_rust::xxh3::Xxh3,
    pages_stored: u64,
    read_ns: u128,
    pagemap_ns: u128,
}

impl WholeCapture<'_> {
    /// Capture the pages of mapping `m`. False: the writer stopped (its
    /// error comes from `finish`).
    fn mapping(&mut self, pagemap: &Pagemap, m: &MapEntry) -> Result<bool> {
        let page = self.page;
        let batch_pages = BATCH_BYTES / page as usize;
        // Anonymous memory starts zero-filled on restore: zero pages
        // need not be stored unless an older image had data there.
        let anon = m.reads_zero_when_empty();
        let hashes_before = self.hashes.len();
        let t_pm = Instant::now();
        let entries = pagemap.read(m.start, m.end, page);
        self.pagemap_ns += t_pm.elapsed().as_nanos();
        let entries = match entries {
            Ok(e) => e,
            Err(_) if self.running => return Ok(true),
            Err(e) => {
                return Err(e).ctx(self.pid, || {
                    format!("read pagemap for {:#x}-{:#x}", m.start, m.end)
                })
            }
        };
        let addr_of = |k: usize| m.start + k as u64 * page;
        let dirty = self.dirty;
        let candidate = |k: usize, cur: &mut TableCursor| {
            page_needed(m, entries[k])
                && match dirty {
                    None => true,
                    Some(set) => set.contains(addr_of(k)) || cur.get(addr_of(k)).is_none(),
                }
        };
        let mut i = 0usize;
        while i < entries.len() {
            if !candidate(i, &mut self.ahead) {
                if page_needed(m, entries[i]) {
                    if let Some(h) = self.behind.get(addr_of(i)) {
                        self.hashes.push((addr_of(i), h));
                    }
                }
                i += 1;
                continue;
            }
            let mut j = i;
            while j < entries.len() && (j - i) < batch_pages && candidate(j, &mut self.ahead) {
                j += 1;
            }
            let (addr, len) = (addr_of(i), (j - i) * page as usize);
            i = j;
            if !self.read_batch(addr, len, anon)? {
                return Ok(false);
            }
        }
        debug!(
            pid = self.pid,
            start = m.start,
            name = %m.name,
            pages_with_data = self.hashes.len() - hashes_before,
            "captured mapping"
        );
        Ok(true)
    }

    /// Read the `len` bytes at `addr` (of a mapping whose empty pages read
    /// as zeros if `anon`), hash every page and store those that changed.
    /// False: the writer stopped.
    fn read_batch(&mut self, addr: u64, len: usize, anon: bool) -> Result<bool> {
        let pg = self.page as usize;
        let Some(mut buf) = self.out.buffer(len) else {
            return Ok(false);
        };
        let tr = Instant::now();
        match mem::read_fully(self.pid, addr, &mut buf[..len]) {
            Ok(()) => {}
            Err(_) if self.running => {
                // Unmapped meanwhile: give the buffer back, move on.
                self.out.submit(addr, buf, 0, PageFilter::All);
                return Ok(true);
            }
            Err(e) => {
                return Err(e).ctx(self.pid, || {
                    format!("read memory at {addr:#x} (+{len} bytes)")
                })
            }
        }
        self.read_ns += tr.elapsed().as_nanos();
        let mut keep = Vec::with_capacity(len / pg);
        for (k, p) in buf[..len].chunks(pg).enumerate() {
            let a = addr + (k * pg) as u64;
            let h = xxhash_rust::xxh3::xxh3_64(p);
            self.hashes.push((a, h));
            let changed = match self.behind.get(a) {
                Some(ph) => ph != h,
                None => !(anon && crate::pagewriter::is_zero(p)),
            };
            if changed {
                self.round.update(&a.to_le_bytes());
                self.round.update(&h.to_le_bytes());
                self.pages_stored += 1;
            }
            keep.push(changed);
        }
        Ok(self.out.submit(addr, buf, len, PageFilter::Only(keep)))
    }

    /// Store the pages an older image holds that are no longer present, as
    /// they read now. False: the writer stopped.
    fn store_gone(&mut self, maps: &[MapEntry]) -> Result<bool> {
        let pg = self.page as usize;
        let mut gone: Vec<u64> = Vec::new();
        let mut cur = self.hashes.iter().map(|(a, _)| *a).peekable();
        for &(a, _) in self.parent {
            while cur.next_if(|c| *c < a).is_some() {}
            if cur.peek() != Some(&a) {
                gone.push(a);
            }
        }
        for run in gone.chunk_by(|x, y| *y == *x + self.page) {
            for piece in run.chunks(BATCH_BYTES / pg) {
                let addr = piece[0];
                let Some(m) = maps
                    .iter()
                    .find(|m| m.start <= addr && addr < m.end && captures_pages(m))
                else {
                    continue; // unmapped: the restore skips older pages there
                };
                let end = (addr + (piece.len() * pg) as u64).min(m.end);
                let len = (end - addr) as usize;
                let Some(mut buf) = self.out.buffer(len) else {
                    return Ok(false);
                };
                if !m.reads_zero_when_empty() {
                    // The file's bytes show through again: read them.
                    if let Err(e) = mem::read_fully(self.pid, addr, &mut buf[..len]) {
                        if self.running {
                            self.out.submit(addr, buf, 0, PageFilter::All);
                            continue;
                        }
                        return Err(e)
                            .ctx(self.pid, || format!("read file-backed page at {addr:#x}"));
                    }
                } else {
                    buf[..len].fill(0);
                }
                for k in 0..len / pg {
                    self.round.update(&(addr + (k * pg) as u64).to_le_bytes());
                    self.round.update(&0u64.to_le_bytes());
                }
                self.pages_stored += (len / pg) as u64;
                if !self.out.submit(addr, buf, len, PageFilter::All) {
                    return Ok(false);
                }
            }
        }
        Ok(true)
    }
}

/// Mappings whose pages an image may hold.
pub(crate) fn captures_pages(m: &MapEntry) -> bool {
    if matches!(
        m.name.as_str(),
        "[vdso]" | "[vvar]" | "[vvar_vclock]" | "[vsyscall]"
    ) {
        return false;
    }
    !(m.is_file() && m.shared) || m.is_shmem_anon()
}

#[cfg(test)]
mod table_cursor_tests {
    use super::TableCursor;

    #[test]
    fn finds_exactly_what_bisection_finds() {
        let table: Vec<(u64, u64)> = (0..500u64)
            .filter(|i| i % 3 != 0)
            .map(|i| (i * 4096, i * 7))
            .collect();
        let mut cur = TableCursor::new(&table);
        for i in 0..520u64 {
            let a = i * 4096;
            let want = table
                .binary_search_by_key(&a, |e| e.0)
                .ok()
                .map(|k| table[k].1);
            assert_eq!(cur.get(a), want, "address {a:#x}");
            // Asking again (a batch re-reads its first page) is allowed.
            assert_eq!(cur.get(a), want, "address {a:#x} again");
        }
        // Jumps ahead.
        let mut cur = TableCursor::new(&table);
        assert_eq!(cur.get(400 * 4096), Some(400 * 7));
        assert_eq!(cur.get(401 * 4096), Some(401 * 7));
        assert_eq!(cur.get(402 * 4096), None);
    }
}
