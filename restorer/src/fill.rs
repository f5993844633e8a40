//! Filling fresh memory through a userfaultfd.
//!
//! A restore writes most of a program's pages into private anonymous
//! memory that has none yet. With `MADV_POPULATE_WRITE` and
//! `process_vm_writev` the kernel first zeroes every page, then pins it
//! for the copy (measured on 1 GiB: 318 + 171 ms). Registered for missing
//! pages on a userfaultfd, the same ranges are filled with `UFFDIO_COPY`,
//! which allocates each page and copies into it without zeroing it first
//! (`tern bench --storage`, 1 GiB: restore 670 -> 351-382 ms). Used for a
//! restored image's pages and a warm standby's first round (a live
//! migration of 1 GiB: 3.5 -> 2.7 s in all).
//!
//! Only where memory is plentiful: tern is then the task that allocates
//! the pages (charged to the puppet's memory cgroup), and a restore that
//! runs out of memory under a cgroup limit has the OOM killer take the
//! puppet and then, as tern's copy goes on charging pages to the dying
//! program, tern itself (seen with a 96 MiB cgroup; kernel-notes, "Running
//! out of memory on the destination"). So the fill is used only when the
//! puppet's memory headroom (the machine's and every memory cgroup's above
//! it) exceeds the pages by a margin; otherwise the puppet faults its pages
//! in itself as before, and is the one the OOM killer takes.
//!
//! Anything else touching a registered page that is still missing would
//! wait for a handler that never comes, so the fill covers only what
//! nothing else writes, and is dropped (unregistering) before any other
//! step.

use crate::puppet::Puppet;
use crate::{RestoreError, Result, StepContext};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use tern_sys::uffd_missing;
use tern_wire as wire;
use tracing::debug;

/// Memory kept free beyond the pages themselves for the fill to be used.
const MARGIN: u64 = 64 << 20;

/// The private anonymous mappings of a puppet, registered for missing
/// pages on a userfaultfd only tern holds; dropped, they are unregistered.
#[derive(Debug)]
pub(crate) struct MissingPages {
    uffd: OwnedFd,
    /// Registered ranges, by address.
    ranges: Vec<(u64, u64)>,
}

impl MissingPages {
    /// Register the private anonymous mappings among `vmas` (made, still
    /// empty) of `puppet`, which is to receive `bytes` of pages. `None`
    /// where memory is short (see the module docs) or the kernel has no
    /// userfaultfd: the caller writes the pages as before.
    pub fn open(puppet: &mut Puppet, vmas: &[wire::Vma], bytes: u64) -> Option<MissingPages> {
        if !has_room(puppet.pid, bytes) {
            return None;
        }
        let uffd = match crate::postcopy::uffd_of(puppet, 0, "filling memory") {
            Ok((fd, _)) => fd,
            Err(e) => {
                debug!("no userfaultfd ({e}): tern writes the pages itself");
                return None;
            }
        };
        let mut ranges = Vec::new();
        let anon = vmas
            .iter()
            .filter(|v| v.kind == wire::VmaKind::Anon && !v.shared);
        for v in anon {
            match uffd_missing::register_missing(uffd.as_fd(), v.start, v.end) {
                Ok(()) => ranges.push((v.start, v.end)),
                Err(e) => debug!(start = v.start, "not filled through userfaultfd: {e}"),
            }
        }
        Some(MissingPages { uffd, ranges })
    }

    /// Whether `[addr, addr + len)` lies in one registered range.
    pub fn covers(&self, addr: u64, len: usize) -> bool {
        let end = addr + len as u64;
        self.ranges.iter().any(|&(s, e)| s <= addr && end <= e)
    }

    /// Place `data` (whole pages, missing so far) at `addr` of process
    /// `pid`; a copy may stop part-way and goes on from there.
    pub fn fill(&self, pid: i32, addr: u64, data: &[u8]) -> Result<()> {
        copy_pages(self.uffd.as_fd(), pid, addr, data)
    }
}

/// Whether process `pid`'s memory (cgroups and machine) has room for
/// `bytes` more, with a margin, for tern to allocate them on its behalf.
pub(crate) fn has_room(pid: i32, bytes: u64) -> bool {
    let headroom = tern_sys::proc::memory_headroom(pid).unwrap_or(0);
    let room = headroom >= bytes.saturating_add(bytes / 4).saturating_add(MARGIN);
    if !room {
        debug!(
            headroom,
            bytes, "memory is short: the puppet faults its pages in itself"
        );
    }
    room
}

/// `UFFDIO_COPY` of `data` (whole pages, missing so far) to `addr` of
/// process `pid` through `uffd`; a copy may stop part-way and goes on from
/// there.
pub(crate) fn copy_pages(uffd: BorrowedFd<'_>, pid: i32, addr: u64, data: &[u8]) -> Result<()> {
    let mut done = 0;
    while done < data.len() {
        let at = addr + done as u64;
        let n = uffd_missing::copy(uffd, at, &data[done..])
            .step(pid, || format!("UFFDIO_COPY of pages at {at:#x}"))?;
        if n == 0 {
            return Err(RestoreError::Step {
                pid,
                what: format!("UFFDIO_COPY of pages at {at:#x}"),
                source: std::io::Error::other("no page placed"),
            });
        }
        done += n;
    }
    Ok(())
}
