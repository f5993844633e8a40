//! The warm standby: the destination builds the program's address space
//! while the source still runs, one pre-copy round at a time, so that the
//! frozen moment only carries the last delta, registers and kernel state.
//!
//! Each round (a pre-dump image: `layout.img` + `pages.img`) reshapes the
//! stopped puppet to the round's memory map (only where it changed: what is
//! kept keeps its pages) and writes the round's pages, remembering the
//! xxh3 of every page it wrote. The final image then brings the last map
//! change and delta; pages the program no longer has are dropped, and the
//! result is checked page by page against the final image's table of
//! (address, xxh3) before the rest of the state is restored. Any
//! difference refuses the image: nothing half-right is ever resumed.

use crate::fill::MissingPages;
use crate::puppet::Puppet;
use crate::shape::{self, SCRATCH_LEN};
use crate::{Builder, Image, Prepared, RestoreError, RestoreOptions, Result, StepContext};
use std::collections::BTreeMap;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::Instant;
use tern_sys::mem;
use tern_wire as wire;
use tracing::{debug, info};

/// What applying one round did.
#[derive(Debug, Clone, Copy)]
pub struct RoundApplied {
    pub pages: u64,
    pub bytes: u64,
    pub mapped: u32,
    pub unmapped: u32,
    pub ms: f64,
}

#[derive(Debug)]
pub struct Standby {
    puppet: Puppet,
    ns_pid: Option<i32>,
    /// The program's pid in the images.
    image_pid: i32,
    scratch: u64,
    /// The mappings the puppet has now (the last round's map).
    layout: Vec<wire::Vma>,
    /// xxh3 of every private page written, by address.
    pages: BTreeMap<u64, u64>,
    /// The source's page table as of the last round (its `hashes.img`): what
    /// a final image's table delta applies to.
    table: Vec<(u64, u64)>,
    page_size: u64,
    kernel_release: String,
    opts: RestoreOptions,
    pages_bytes: u64,
    /// The puppet's fd holding tern's pidfd, when fds are to be inherited
    /// (`RestoreOptions::inherit_fds`): made before the image's fd numbers
    /// are known, moved above them at the end.
    tern_chan: Option<u64>,
    /// The cgroups the puppet was put into (round 0's).
    cgroups: Vec<wire::Cgroup>,
    /// Fds made here for the final image, until the puppet has taken them.
    held: Vec<std::os::fd::OwnedFd>,
}

/// Where a standby's puppet keeps tern's pidfd until the final image.
pub(crate) const STANDBY_CHAN: i32 = 3;

pub(crate) fn load_round(dir: &Path) -> Result<(wire::Inventory, wire::Layout)> {
    crate::check_image_trusted(dir)?;
    let inv: wire::Inventory =
        wire::read_record(&dir.join(wire::INVENTORY_FILE), wire::RecordKind::Inventory)?;
    if !inv.pre_dump {
        return Err(RestoreError::BadImage {
            dir: dir.to_path_buf(),
            what: "a standby round must be a pre-dump image".into(),
        });
    }
    let layout: wire::Layout =
        wire::read_record(&dir.join(wire::LAYOUT_FILE), wire::RecordKind::Layout)?;
    check_layout(dir, &layout.vmas, inv.page_size)?;
    Ok((inv, layout))
}

/// Mappings sorted, page-aligned, non-overlapping, in user space.
fn check_layout(dir: &Path, vmas: &[wire::Vma], page: u64) -> Result<()> {
    let bad = |what: String| RestoreError::BadImage {
        dir: dir.to_path_buf(),
        what,
    };
    if page == 0 || !page.is_power_of_two() {
        return Err(bad(format!("page size {page}")));
    }
    let mut prev_end = 0;
    for v in vmas {
        let user = v.end <= 0x7fff_ffff_f000 || v.kind == wire::VmaKind::Vsyscall;
        if v.start >= v.end
            || v.start % page != 0
            || v.end % page != 0
            || v.start < prev_end
            || !user
        {
            return Err(bad(format!(
                "mapping {:#x}-{:#x} is misaligned, empty, out of order or outside user space",
                v.start, v.end
            )));
        }
        prev_end = v.end;
    }
    Ok(())
}

/// Whether `a` (an old mapping) can stay as the backing of the part of `b`
/// (a new one) it overlaps: same kind of memory, same file at the same
/// offsets, same sharing.
fn same_backing(a: &wire::Vma, b: &wire::Vma) -> bool {
    if a.shared != b.shared || a.growsdown != b.growsdown {
        return false;
    }
    match (&a.kind, &b.kind) {
        (wire::VmaKind::Anon, wire::VmaKind::Anon) => true,
        (
            wire::VmaKind::File {
                file: fa,
                offset: oa,
            },
            wire::VmaKind::File {
                file: fb,
                offset: ob,
            },
        ) => fa == fb && oa.wrapping_sub(a.start) == ob.wrapping_sub(b.start),
        _ => false,
    }
}

fn is_special(v: &wire::Vma) -> bool {
    matches!(
        v.kind,
        wire::VmaKind::Vdso
            | wire::VmaKind::Vvar
            | wire::VmaKind::VvarVclock
            | wire::VmaKind::Vsyscall
    )
}

/// The parts of `[start, end)` not covered by `cover`, which is sorted.
fn uncovered(start: u64, end: u64, cover: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let mut at = start;
    for &(s, e) in cover {
        if e <= at || s >= end {
            continue;
        }
        if s > at {
            out.push((at, s));
        }
        at = at.max(e);
        if at >= end {
            break;
        }
    }
    if at < end {
        out.push((at, end));
    }
    out
}

impl Standby {
    /// Start from the first round (`round0`, a pre-dump image): create the
    /// puppet and build its address space.
    pub fn start(round0: &Path, opts: &RestoreOptions) -> Result<Standby> {
        let (inv, _) = load_round(round0)?;
        // Threads are only known at the end: the main pid decides. The
        // puppet holds tern's pidfd to take the fds the final image needs
        // from tern (inherited ones, accepted unix connections).
        let tern_pidfd = tern_sys::pidfd_open(std::process::id() as i32)
            .step(inv.pid, || "pidfd_open of tern itself".into())?;
        let keep = Some((tern_pidfd.as_raw_fd(), STANDBY_CHAN));
        let (puppet, want) = crate::spawn_puppet(
            inv.pid,
            &[inv.pid],
            opts,
            keep,
            &inv.namespaces,
            &inv.cgroups,
        )?;
        Standby::adopt(puppet, want, true, round0, opts)
    }

    /// Build the address space of the first round (`round0`) into a blank
    /// `puppet` made elsewhere (a process of a tree, forked by its
    /// parent's puppet). `ns_pid`: the pid the program will see itself as
    /// (`None`: the puppet's); `chan`: the puppet holds tern's pidfd at
    /// [`STANDBY_CHAN`].
    pub(crate) fn adopt(
        puppet: Puppet,
        ns_pid: Option<i32>,
        chan: bool,
        round0: &Path,
        opts: &RestoreOptions,
    ) -> Result<Standby> {
        let (inv, layout) = load_round(round0)?;
        let table = wire::hashes::read_page_hashes(&round0.join(wire::HASHES_FILE))?;
        let mut standby = Standby {
            puppet,
            ns_pid,
            image_pid: inv.pid,
            scratch: 0,
            layout: Vec::new(),
            pages: BTreeMap::new(),
            table,
            page_size: inv.page_size,
            kernel_release: inv.kernel_release.clone(),
            opts: opts.clone(),
            pages_bytes: 0,
            tern_chan: chan.then_some(STANDBY_CHAN as u64),
            cgroups: inv.cgroups.clone(),
            held: Vec::new(),
        };
        let t = Instant::now();
        let built = (|| {
            let p = &mut standby.puppet;
            shape::reset_inherited_state(p)?;
            shape::clear_address_space(p)?;
            shape::move_vdso(p, &layout.vmas, &inv.kernel_release)?;
            standby.scratch = shape::map_scratch(p, &layout.vmas, &[])?;
            let (mapped, unmapped) = standby.apply_layout(round0, &layout.vmas)?;
            // The first round fills empty memory (see `crate::fill`).
            let fresh = MissingPages::open(&mut standby.puppet, &layout.vmas, inv.pages_bytes);
            let (pages, _) = standby.absorb_pages(round0, fresh.as_ref())?;
            Ok((mapped, unmapped, pages))
        })();
        let (mapped, unmapped, pages) = built.map_err(|e| crate::explain(&standby.puppet, e))?;
        info!(
            pid = standby.puppet.pid,
            pages,
            ms = t.elapsed().as_secs_f64() * 1e3,
            mapped,
            unmapped,
            "standby started"
        );
        Ok(standby)
    }

    /// Pages written into the puppet so far (and still mapped).
    pub fn pages_held(&self) -> u64 {
        self.pages.len() as u64
    }

    /// The puppet's pid on this machine.
    pub fn pid(&self) -> i32 {
        self.puppet.pid
    }

    /// Apply a later round (a pre-dump image).
    pub fn apply_round(&mut self, dir: &Path) -> Result<RoundApplied> {
        self.apply_round_inner(dir)
            .map_err(|e| crate::explain(&self.puppet, e))
    }

    fn apply_round_inner(&mut self, dir: &Path) -> Result<RoundApplied> {
        let t = Instant::now();
        let (inv, layout) = load_round(dir)?;
        self.check_same_program(dir, &inv)?;
        let table = wire::hashes::read_page_hashes(&dir.join(wire::HASHES_FILE))?;
        let (mapped, unmapped) = self.apply_layout(dir, &layout.vmas)?;
        let (pages, bytes) = self.absorb_pages(dir, None)?;
        self.table = table;
        let applied = RoundApplied {
            pages,
            bytes,
            mapped,
            unmapped,
            ms: t.elapsed().as_secs_f64() * 1e3,
        };
        debug!(?applied, dir = %dir.display(), "standby round applied");
        Ok(applied)
    }

    /// The final image's threads get their ids: in our own namespace one
    /// may be taken by now.
    fn check_thread_ids_free(&self, image: &Image) -> Result<()> {
        for t in image.core.threads.iter().skip(1) {
            if self.puppet.namespace.is_none()
                && image.inventory.namespaces.pid.is_none()
                && !self.opts.new_pid
                && Path::new(&format!("/proc/{}", t.tid)).exists()
            {
                return Err(RestoreError::PidBusy {
                    pid: t.tid,
                    waited_ms: 0,
                });
            }
        }
        Ok(())
    }

    /// Drop the owed pages the standby holds from an earlier round (stale)
    /// and those present without it having written them (a transparent
    /// huge page filled around a neighbour, khugepaged, reads as zeros), so
    /// the program's first touch faults and fetches each. Returns how many.
    fn drop_stale_owed(&mut self, owed: &[u64]) -> Result<u64> {
        let pid = self.puppet.pid;
        let present = crate::postcopy::present_among(pid, owed, self.page_size)
            .step(pid, || "read the pagemap of the owed pages".into())?;
        let stale: Vec<u64> = owed
            .iter()
            .copied()
            .filter(|a| self.pages.contains_key(a) || present.binary_search(a).is_ok())
            .collect();
        self.drop_pages(&stale)
    }

    /// The program moved to other cgroups since round 0: the puppet too.
    fn follow_cgroups(&mut self, now: &[wire::Cgroup]) -> Result<()> {
        if self.opts.cgroups == crate::CgroupMode::Ignore || now == self.cgroups.as_slice() {
            return Ok(());
        }
        let made = self
            .puppet
            .cgroups_made
            .get_or_insert_with(Default::default);
        tern_state::cgroups::place(self.puppet.pid, now, made).map_err(crate::from_state)?;
        self.cgroups = now.to_vec();
        Ok(())
    }

    fn check_same_program(&self, dir: &Path, inv: &wire::Inventory) -> Result<()> {
        if inv.pid != self.image_pid || inv.page_size != self.page_size {
            return Err(RestoreError::BadImage {
                dir: dir.to_path_buf(),
                what: format!(
                    "is of process {} (page size {}), the standby holds process {} (page size {})",
                    inv.pid, inv.page_size, self.image_pid, self.page_size
                ),
            });
        }
        Ok(())
    }

    /// Reshape the puppet from `self.layout` to `vmas`: ranges whose
    /// backing changed or vanished are unmapped (forgetting their pages),
    /// new ones mapped, and protections adjusted; everything else keeps
    /// its pages. Returns (mappings made, ranges unmapped).
    fn apply_layout(&mut self, dir: &Path, vmas: &[wire::Vma]) -> Result<(u32, u32)> {
        let (old_special, new_special): (Vec<_>, Vec<_>) = (
            self.layout
                .iter()
                .filter(|v| is_special(v))
                .map(|v| (v.start, v.end))
                .collect(),
            vmas.iter()
                .filter(|v| is_special(v))
                .map(|v| (v.start, v.end))
                .collect(),
        );
        if !self.layout.is_empty() && old_special != new_special {
            return Err(RestoreError::Unsupported(format!(
                "{}: the program moved its vdso/vvar between rounds",
                dir.display()
            )));
        }
        let old: Vec<wire::Vma> = self
            .layout
            .iter()
            .filter(|v| !is_special(v))
            .cloned()
            .collect();
        let new: Vec<&wire::Vma> = vmas.iter().filter(|v| !is_special(v)).collect();
        let keep_cover = |o: &wire::Vma| -> Vec<(u64, u64)> {
            new.iter()
                .filter(|n| n.start < o.end && o.start < n.end && same_backing(o, n))
                .map(|n| (n.start.max(o.start), n.end.min(o.end)))
                .collect()
        };
        // 1. Unmap what no new mapping keeps.
        let mut unmapped = 0u32;
        for o in &old {
            for (s, e) in uncovered(o.start, o.end, &keep_cover(o)) {
                shape::sys(&mut self.puppet, libc::SYS_munmap, &[s, e - s], || {
                    format!("unmap {s:#x}-{e:#x} (gone since the last round)")
                })?;
                self.pages.retain(|&a, _| a < s || a >= e);
                unmapped += 1;
            }
        }
        // 2. Move the scratch area out of the way of the new map.
        let scratch = (self.scratch, self.scratch + SCRATCH_LEN);
        if vmas
            .iter()
            .any(|v| v.start < scratch.1 && scratch.0 < v.end)
        {
            let at = shape::map_scratch(&mut self.puppet, vmas, &[scratch])?;
            shape::sys(
                &mut self.puppet,
                libc::SYS_munmap,
                &[scratch.0, SCRATCH_LEN],
                || "unmap the old scratch area".into(),
            )?;
            self.scratch = at;
        }
        // 3. Map what is new, with the parts kept from old mappings left alone.
        let mut mapped = 0u32;
        for n in &new {
            let kept: Vec<(u64, u64)> = {
                let mut k: Vec<(u64, u64)> = old
                    .iter()
                    .filter(|o| o.start < n.end && n.start < o.end && same_backing(o, n))
                    .map(|o| (o.start.max(n.start), o.end.min(n.end)))
                    .collect();
                k.sort_unstable();
                k
            };
            let mut parts: Vec<wire::Vma> = Vec::new();
            for (s, e) in uncovered(n.start, n.end, &kept) {
                let mut part = (*n).clone();
                part.start = s;
                part.end = e;
                if let wire::VmaKind::File { offset, .. } = &mut part.kind {
                    *offset += s - n.start;
                }
                parts.push(part);
            }
            if !parts.is_empty() {
                mapped += parts.len() as u32;
                shape::map_vmas(&mut self.puppet, self.scratch, &parts)?;
            }
            // Kept parts whose protection changed.
            for o in old.iter().filter(|o| {
                o.start < n.end && n.start < o.end && same_backing(o, n) && o.prot != n.prot
            }) {
                let (s, e) = (o.start.max(n.start), o.end.min(n.end));
                shape::sys(
                    &mut self.puppet,
                    libc::SYS_mprotect,
                    &[s, e - s, n.prot as u64],
                    || format!("mprotect {s:#x}-{e:#x}"),
                )?;
            }
        }
        self.layout = vmas.to_vec();
        Ok((mapped, unmapped))
    }

    /// Write a round's pages into the puppet, remembering their hashes.
    /// Write the pages of the round in `dir` (through `fresh` where it
    /// covers them: memory with no page yet).
    fn absorb_pages(&mut self, dir: &Path, fresh: Option<&MissingPages>) -> Result<(u64, u64)> {
        let path = dir.join(wire::PAGES_FILE);
        let pid = self.puppet.pid;
        let page = self.page_size as usize;
        let private = shape::private_ranges(&self.layout);
        let hashes = &mut self.pages;
        let puppet = &mut self.puppet;
        let (mut pages, mut bytes) = (0u64, 0u64);
        // Small chunks (scattered dirty pages) are gathered and written with
        // one process_vm_writev per 1024 of them.
        let mut runs: Vec<(u64, usize)> = Vec::new();
        let mut gathered: Vec<u8> = Vec::new();
        let flush = |runs: &mut Vec<(u64, usize)>, gathered: &mut Vec<u8>| -> Result<()> {
            if !runs.is_empty() {
                mem::write_scattered(pid, runs, gathered)
                    .step(pid, || format!("write {} page runs", runs.len()))?;
            }
            runs.clear();
            gathered.clear();
            Ok(())
        };
        shape::stream_pages(pid, &path, |addr, buf| {
            shape::check_chunk(dir, &path, &private, addr, buf.len(), page)?;
            if let Some(f) = fresh.filter(|f| f.covers(addr, buf.len())) {
                f.fill(pid, addr, buf)?;
            } else if buf.len() >= 64 * page {
                flush(&mut runs, &mut gathered)?;
                shape::populate(puppet, addr, buf.len())?;
                mem::write_fully(pid, addr, buf)
                    .step(pid, || format!("write pages at {addr:#x}"))?;
            } else {
                runs.push((addr, buf.len()));
                gathered.extend_from_slice(buf);
                if runs.len() >= 1024 || gathered.len() >= 4 << 20 {
                    flush(&mut runs, &mut gathered)?;
                }
            }
            for (k, p) in buf.chunks(page).enumerate() {
                hashes.insert(addr + (k * page) as u64, xxhash_rust::xxh3::xxh3_64(p));
            }
            pages += (buf.len() / page) as u64;
            bytes += buf.len() as u64;
            Ok(())
        })?;
        flush(&mut runs, &mut gathered)?;
        self.pages_bytes += bytes;
        Ok((pages, bytes))
    }

    /// Whether the page at `a` holds what `h` says: written with these
    /// bytes, or never written and zero in anonymous memory (a zero page is
    /// in the table but never sent unless it had other bytes before).
    fn holds(&self, a: u64, h: u64, zero_hash: u64) -> bool {
        match self.pages.get(&a) {
            Some(&mine) => mine == h,
            None => {
                h == zero_hash
                    && self
                        .layout
                        .iter()
                        .any(|v| v.kind == wire::VmaKind::Anon && v.start <= a && a < v.end)
            }
        }
    }

    /// Every entry of a final table delta is what the puppet holds.
    fn verify(&self, dir: &Path, changed: &[(u64, u64)]) -> Result<()> {
        let zero_hash = xxhash_rust::xxh3::xxh3_64(&vec![0u8; self.page_size as usize]);
        let mut wrong = changed
            .iter()
            .filter(|&&(a, h)| !self.holds(a, h, zero_hash));
        if let Some(&(a, _)) = wrong.next() {
            return Err(RestoreError::BadImage {
                dir: dir.to_path_buf(),
                what: format!(
                    "the standby differs from the final page table on {} page(s), the first at {a:#x}",
                    1 + wrong.count()
                ),
            });
        }
        Ok(())
    }

    /// Drop pages the program no longer has (they read as zeros, or as the
    /// file's bytes in a private file mapping), then check every page
    /// against the final table.
    fn reconcile(&mut self, dir: &Path, table: &[(u64, u64)]) -> Result<u64> {
        // Both sorted by address: one merge walk finds what the program no
        // longer has and what differs.
        let mut stale: Vec<u64> = Vec::new();
        let mut wrong = 0usize;
        let mut first_wrong = None;
        // A zero page of anonymous memory is in the table but never sent
        // unless it had other bytes before: never written here, it is zero.
        let zero_hash = xxhash_rust::xxh3::xxh3_64(&vec![0u8; self.page_size as usize]);
        let anon: Vec<(u64, u64)> = self
            .layout
            .iter()
            .filter(|v| v.kind == wire::VmaKind::Anon)
            .map(|v| (v.start, v.end))
            .collect();
        let mut have = self.pages.iter().peekable();
        for &(a, h) in table {
            while let Some((&x, _)) = have.next_if(|(&x, _)| x < a) {
                stale.push(x);
            }
            match have.next_if(|(&x, _)| x == a) {
                Some((_, &mine)) if mine == h => {}
                None if h == zero_hash && anon.iter().any(|&(s, e)| s <= a && a < e) => {}
                _ => {
                    wrong += 1;
                    first_wrong.get_or_insert(a);
                }
            }
        }
        stale.extend(have.map(|(&x, _)| x));
        if let Some(a) = first_wrong {
            return Err(RestoreError::BadImage {
                dir: dir.to_path_buf(),
                what: format!(
                    "the standby differs from the final page table on {wrong} page(s), the first at {a:#x}: a round is missing"
                ),
            });
        }
        self.drop_pages(&stale)
    }

    /// Drop the pages at `stale` (sorted) from the puppet: they read as
    /// zeros (or as the file's bytes) again, and are no longer held.
    fn drop_pages(&mut self, stale: &[u64]) -> Result<u64> {
        let page = self.page_size;
        let pid = self.puppet.pid;
        let mut dropped = 0u64;
        // Runs of contiguous pages within one mapping: one call each.
        for run in stale.chunk_by(|x, y| *y == *x + page) {
            let mut at = 0;
            while at < run.len() {
                let a = run[at];
                let Some(v) = self.layout.iter().find(|v| v.start <= a && a < v.end) else {
                    at += 1;
                    continue;
                };
                let n = run[at..].iter().take_while(|&&x| x < v.end).count();
                let len = n as u64 * page;
                if v.shared {
                    // Shared anonymous memory: madvise would not clear the
                    // object, so write the zeros.
                    let zeros = vec![0u8; len as usize];
                    mem::write_fully(pid, a, &zeros).step(pid, || format!("zero {a:#x}+{len}"))?;
                } else {
                    shape::sys(
                        &mut self.puppet,
                        libc::SYS_madvise,
                        &[a, len, libc::MADV_DONTNEED as u64],
                        || format!("drop pages {a:#x}+{len}"),
                    )?;
                }
                for x in &run[at..at + n] {
                    self.pages.remove(x);
                }
                dropped += n as u64;
                at += n;
            }
        }
        Ok(dropped)
    }

    /// Apply the final image (`dir`, a complete dump whose pages are the
    /// delta since the last round) and restore everything else; the
    /// program is then complete and stopped.
    pub fn finish(self, dir: &Path) -> Result<Prepared> {
        self.finish_member(dir, true, None)
    }

    /// [`finish`](Self::finish) for one process of a tree (`root`: the
    /// tree's root), with what it shares with the others (`shared`: the
    /// fds and memory it gets from tern, besides tern's pidfd).
    pub(crate) fn finish_member(
        mut self,
        dir: &Path,
        root: bool,
        shared: Option<crate::tree::Imports>,
    ) -> Result<Prepared> {
        let t0 = Instant::now();
        let (parts, owed) = self
            .build_final(dir, t0, shared)
            .map_err(|e| crate::explain(&self.puppet, e))?;
        let ns_pid = self.ns_pid.unwrap_or(self.puppet.pid);
        // Freeing a page record of a GiB (262144 tree nodes) takes ~3 ms:
        // not while the program is frozen.
        let records = (
            std::mem::take(&mut self.pages),
            std::mem::take(&mut self.table),
        );
        std::thread::spawn(move || {
            tern_sys::set_idle_priority(0);
            drop(records)
        });
        let mut prepared = Prepared::new(self.puppet, root, ns_pid, parts, t0);
        prepared.owe(owed);
        Ok(prepared)
    }

    /// The final image into the puppet: memory, then everything else; and
    /// the pages it still owes (post-copy), registered for their faults.
    fn build_final(
        &mut self,
        dir: &Path,
        t0: Instant,
        shared: Option<crate::tree::Imports>,
    ) -> Result<(crate::Parts, Option<crate::postcopy::OwedPages>)> {
        let image = Image::load(dir)?;
        self.check_same_program(dir, &image.inventory)?;
        check_layout(dir, &image.mm.vmas, image.inventory.page_size)?;
        crate::check_outside_world(&image, &self.opts)?;
        // A migration's final image brings only how its page table differs
        // from the last round's (which we hold); a local chain the whole table.
        let delta_path = dir.join(wire::TABLE_DELTA_FILE);
        let delta: Option<wire::TableDelta> = if delta_path.exists() {
            let d: wire::TableDelta = wire::read_record(&delta_path, wire::RecordKind::TableDelta)?;
            if !d.fits(&self.table) {
                return Err(RestoreError::BadImage {
                    dir: dir.to_path_buf(),
                    what: "its page table delta does not fit the last round's table: a round is missing".into(),
                });
            }
            Some(d)
        } else {
            None
        };
        let full_table = match &delta {
            Some(_) => Vec::new(),
            None => wire::hashes::read_page_hashes(&dir.join(wire::HASHES_FILE))?,
        };
        self.check_thread_ids_free(&image)?;
        self.follow_cgroups(&image.inventory.cgroups)?;
        let owed = crate::postcopy::read_owed(dir, &image.mm.vmas, self.page_size)?;
        let is_owed = |a: u64| owed.as_ref().is_some_and(|o| o.binary_search(&a).is_ok());
        self.apply_layout(dir, &image.mm.vmas)?;
        let (pages, _) = self.absorb_pages(dir, None)?;
        let dropped = match &delta {
            Some(d) => {
                let held: Vec<(u64, u64)> = d
                    .changed
                    .iter()
                    .copied()
                    .filter(|e| !is_owed(e.0))
                    .collect();
                self.verify(dir, &held)?;
                0
            }
            None => self.reconcile(dir, &full_table)?,
        };
        // Owed pages it may hold wrong: dropped, to be fetched.
        let stale_dropped = match &owed {
            Some(owed) => self.drop_stale_owed(owed)?,
            None => 0,
        };
        // Made before the credentials and seccomp filter are restored.
        let uffd = match &owed {
            Some(_) => Some(crate::postcopy::open_uffd_in(&mut self.puppet)?),
            None => None,
        };
        debug!(
            pages,
            dropped,
            owed = owed.as_ref().map_or(0, Vec::len),
            stale_dropped,
            delta = delta.is_some(),
            ms = t0.elapsed().as_secs_f64() * 1e3,
            "standby memory final"
        );
        let table = full_table;
        let imports = self.imports_for(&image, shared)?;
        let no_ancestors: [PathBuf; 0] = [];
        let mut b = Builder {
            image: &image,
            ancestors: &no_ancestors,
            final_pages: &table,
            pid: self.puppet.pid,
            puppet: &mut self.puppet,
            scratch: self.scratch,
            pages_bytes: self.pages_bytes,
            extra: Vec::new(),
            cur: 0,
            keep_ids: !self.opts.new_pid,
            net: Default::default(),
            imports: imports.as_ref(),
        };
        // Shared memory of a tree: the object the first process that maps
        // it built (holding the pages every image agrees on) replaces the
        // copy this standby built.
        for v in image.mm.vmas.iter() {
            b.map_imported(v)?;
        }
        b.build_rest()?;
        let parts = b.into_parts();
        let owed = match (uffd, owed) {
            (Some(uffd), Some(pages)) => Some(crate::postcopy::register(
                self.puppet.pid,
                uffd,
                &image.mm.vmas,
                pages,
                self.page_size,
            )?),
            _ => None,
        };
        info!(
            pid = self.puppet.pid,
            ms = t0.elapsed().as_secs_f64() * 1e3,
            "standby complete, stopped"
        );
        Ok((parts, owed))
    }

    /// What the puppet takes from tern: the fds given for the image's
    /// external ones, through tern's pidfd, first moved above the image's
    /// fd numbers (so restoring them cannot overwrite it).
    fn imports_for(
        &mut self,
        image: &Image,
        shared: Option<crate::tree::Imports>,
    ) -> Result<Option<crate::tree::Imports>> {
        let Some(chan) = self.tern_chan.take() else {
            return Ok(None);
        };
        let base = crate::above_image_fds([image]);
        let p = &mut self.puppet;
        let pid = p.pid;
        let moved = p
            .syscall(
                libc::SYS_fcntl,
                &[chan, libc::F_DUPFD_CLOEXEC as u64, base as u64],
            )
            .step(pid, || "move tern's pidfd above the image's fds".into())?;
        p.syscall(libc::SYS_close, &[chan])
            .step(pid, || "close tern's pidfd's first copy".into())?;
        Ok(Some(match shared {
            Some(tree) => crate::tree::Imports {
                chan: moved,
                ..tree
            },
            None => {
                let mut fds = crate::inherited_fds(image, &self.opts)?;
                let pairs =
                    crate::tree::make_cross_pairs(std::slice::from_ref(image), &mut self.held)
                        .step(pid, || "make its accepted unix connections".into())?;
                fds.extend(crate::tree::pair_imports(image, &pairs));
                crate::tree::Imports {
                    chan: moved,
                    fds,
                    maps: BTreeMap::new(),
                }
            }
        }))
    }

    /// The kernel this standby's images were made on.
    pub fn kernel_release(&self) -> &str {
        &self.kernel_release
    }
}

#[cfg(test)]
mod tests {
    use super::uncovered;

    #[test]
    fn uncovered_ranges() {
        assert_eq!(uncovered(0, 100, &[]), vec![(0, 100)]);
        assert_eq!(uncovered(0, 100, &[(0, 100)]), vec![]);
        assert_eq!(
            uncovered(0, 100, &[(10, 20), (30, 40)]),
            vec![(0, 10), (20, 30), (40, 100)]
        );
        assert_eq!(uncovered(10, 20, &[(0, 15)]), vec![(15, 20)]);
        assert_eq!(uncovered(10, 20, &[(15, 30)]), vec![(10, 15)]);
    }
}
