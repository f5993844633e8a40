//! Shaping the puppet's address space: clear it, move the vdso, map the
//! image's mappings, stream page contents in. Shared by a one-shot restore
//! ([`crate::restore`]) and the warm standby ([`crate::standby`]), which
//! does the same round after round while the source still runs.

use crate::puppet::Puppet;
use crate::{RestoreError, Result, StepContext};
use std::collections::BTreeMap;
use std::io;
use std::path::Path;
use tern_sys::{mem, nr, ptrace};
use tern_wire as wire;

pub(crate) const SCRATCH_LEN: u64 = 64 << 10;
/// Offsets inside the scratch mapping.
pub(crate) const SCRATCH_STRUCT: u64 = 0;
pub(crate) const SCRATCH_STAT: u64 = 1024;
pub(crate) const SCRATCH_PATH: u64 = 4096;
pub(crate) const SCRATCH_AUXV: u64 = 16384;

/// An injected syscall in the puppet's main thread.
pub(crate) fn sys(
    p: &mut Puppet,
    nr: libc::c_long,
    args: &[u64],
    what: impl FnOnce() -> String,
) -> Result<u64> {
    let pid = p.pid;
    p.syscall(nr, args).step(pid, what)
}

/// Have the puppet fault in `len` bytes at `addr` itself
/// (`MADV_POPULATE_WRITE`, Linux 5.14) before tern writes them: if memory
/// runs out, the task allocating is then the puppet, which the OOM killer
/// takes (oom_score_adj 1000) and whose memory is freed as it dies. Were
/// tern's `process_vm_writev` the one faulting pages in, the write would
/// go on charging a dead program's memory, held until it returns, and the
/// kernel would kill the daemon next. Best effort: a range the call
/// refuses (read-only, file-backed) is simply written as before.
pub(crate) fn populate(p: &mut Puppet, addr: u64, len: usize) -> Result<()> {
    const MADV_POPULATE_WRITE: u64 = 23;
    let pid = p.pid;
    let r = p
        .remote
        .syscall(libc::SYS_madvise, &[addr, len as u64, MADV_POPULATE_WRITE])
        .step(pid, || format!("madvise(MADV_POPULATE_WRITE) at {addr:#x}"))?;
    if r < 0 {
        tracing::trace!(pid, addr, errno = -r, "populate refused; writing anyway");
    }
    Ok(())
}

/// The puppet is a copy of tern: drop tern's rseq registration before its
/// memory goes away (or every resume would fault).
pub(crate) fn reset_inherited_state(p: &mut Puppet) -> Result<()> {
    let pid = p.pid;
    let rseq = ptrace::get_rseq(pid).step(pid, || "PTRACE_GET_RSEQ_CONFIGURATION".into())?;
    if rseq.rseq_abi_pointer != 0 {
        const RSEQ_FLAG_UNREGISTER: u64 = 1;
        sys(
            p,
            nr::RSEQ,
            &[
                rseq.rseq_abi_pointer,
                rseq.rseq_abi_size as u64,
                RSEQ_FLAG_UNREGISTER,
                rseq.signature as u64,
            ],
            || "unregister inherited rseq".into(),
        )?;
    }
    Ok(())
}

pub(crate) fn clear_address_space(p: &mut Puppet) -> Result<()> {
    let pid = p.pid;
    let maps = tern_sys::proc::read_smaps(pid).step(pid, || "read puppet maps".into())?;
    let special = |n: &str| matches!(n, "[vdso]" | "[vvar]" | "[vvar_vclock]" | "[vsyscall]");
    for m in maps.iter().filter(|m| !special(&m.name)) {
        sys(p, libc::SYS_munmap, &[m.start, m.end - m.start], || {
            format!("unmap puppet range {:#x}-{:#x}", m.start, m.end)
        })?;
    }
    Ok(())
}

/// Move vvar/vvar_vclock/vdso to where the image had them, keeping their
/// relative layout (the vdso finds vvar by offset).
pub(crate) fn move_vdso(p: &mut Puppet, vmas: &[wire::Vma], kernel_release: &str) -> Result<()> {
    let pid = p.pid;
    let maps = tern_sys::proc::read_smaps(pid).step(pid, || "read puppet maps".into())?;
    let names = ["[vvar]", "[vvar_vclock]", "[vdso]"];
    let mut moves: Vec<(u64, u64, u64)> = Vec::new(); // (from, len, to)
    for name in names {
        let ours = maps.iter().find(|m| m.name == name);
        let theirs = vmas.iter().find(|v| v.name == name);
        match (ours, theirs) {
            (Some(o), Some(t)) => {
                if o.end - o.start != t.end - t.start {
                    return Err(RestoreError::Unsupported(format!(
                        "{name} is {} bytes on this kernel but {} in the image (made on kernel {kernel_release})",
                        o.end - o.start,
                        t.end - t.start,
                    )));
                }
                moves.push((o.start, o.end - o.start, t.start));
            }
            (None, None) => {}
            (o, t) => {
                return Err(RestoreError::Unsupported(format!(
                    "{name} is {} here but {} in the image",
                    if o.is_some() { "present" } else { "absent" },
                    if t.is_some() { "present" } else { "absent" }
                )))
            }
        }
    }
    let Some(vdso) = moves.last().copied() else {
        return Err(RestoreError::Unsupported(
            "no [vdso] to run syscalls through".into(),
        ));
    };
    if moves.iter().all(|(from, _, to)| from == to) {
        return Ok(());
    }
    // Via a temporary place, so no destination overlaps a source.
    let lo = moves.iter().map(|m| m.0.min(m.2)).min().unwrap_or(0);
    let hi = moves
        .iter()
        .map(|m| (m.0 + m.1).max(m.2 + m.1))
        .max()
        .unwrap_or(0);
    let temp_base = find_gap(vmas, hi - lo + (1 << 20), &[(lo, hi)])?;
    let gadget_off = p.remote.gadget() - vdso.0;
    for stage in 0..2 {
        for &(from, len, to) in &moves {
            let (src, dst) = if stage == 0 {
                (from, temp_base + (from - lo))
            } else {
                (temp_base + (from - lo), to)
            };
            sys(
                p,
                libc::SYS_mremap,
                &[
                    src,
                    len,
                    len,
                    (libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED) as u64,
                    dst,
                ],
                || format!("move vdso/vvar {src:#x} -> {dst:#x}"),
            )?;
            if len == vdso.1 && from == vdso.0 {
                p.remote.set_gadget(dst + gadget_off);
            }
        }
    }
    Ok(())
}

/// A free, page-aligned range of `len` bytes, outside every mapping of
/// `vmas` and outside `avoid`.
pub(crate) fn find_gap(vmas: &[wire::Vma], len: u64, avoid: &[(u64, u64)]) -> Result<u64> {
    let mut taken: Vec<(u64, u64)> = vmas
        .iter()
        .filter(|v| v.kind != wire::VmaKind::Vsyscall)
        .map(|v| (v.start, v.end))
        .chain(avoid.iter().copied())
        .collect();
    taken.sort_unstable();
    // Start above the first 4 GiB, with a guard on both sides.
    let guard = 1 << 16;
    let mut candidate: u64 = 1 << 32;
    for (s, e) in taken {
        if e + guard <= candidate {
            continue;
        }
        if candidate + len + guard <= s {
            return Ok(candidate);
        }
        candidate = candidate.max(e + guard);
    }
    if candidate + len < 0x7fff_0000_0000 {
        return Ok(candidate);
    }
    Err(RestoreError::Unsupported(
        "no free address range for tern's scratch area".into(),
    ))
}

/// Map tern's scratch area outside `vmas` (and outside `avoid`).
pub(crate) fn map_scratch(p: &mut Puppet, vmas: &[wire::Vma], avoid: &[(u64, u64)]) -> Result<u64> {
    let at = find_gap(vmas, SCRATCH_LEN, avoid)?;
    sys(
        p,
        libc::SYS_mmap,
        &[
            at,
            SCRATCH_LEN,
            (libc::PROT_READ | libc::PROT_WRITE) as u64,
            (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE) as u64,
            u64::MAX,
            0,
        ],
        || "map the scratch area".into(),
    )
}

/// Put a NUL-terminated path in the scratch area; returns its address.
pub(crate) fn path_arg(p: &mut Puppet, scratch: u64, path: &str) -> Result<u64> {
    if path.len() >= (SCRATCH_AUXV - SCRATCH_PATH) as usize || path.contains('\0') {
        return Err(RestoreError::File {
            path: path.to_string(),
            what: "too long or contains NUL".into(),
        });
    }
    let mut bytes = path.as_bytes().to_vec();
    bytes.push(0);
    let pid = p.pid;
    let addr = scratch + SCRATCH_PATH;
    mem::write_fully(pid, addr, &bytes).step(pid, || format!("write scratch at {addr:#x}"))?;
    Ok(addr)
}

/// open() inside the puppet.
pub(crate) fn open_in(p: &mut Puppet, scratch: u64, path: &str, flags: i32) -> Result<u64> {
    let at = path_arg(p, scratch, path)?;
    let pid = p.pid;
    p.syscall(
        libc::SYS_openat,
        &[libc::AT_FDCWD as u64, at, flags as u64, 0],
    )
    .map_err(|e| RestoreError::File {
        path: path.to_string(),
        what: format!("cannot open in process {pid}: {e}"),
    })
}

/// fstat inside the puppet: the file it opened is the one checked.
pub(crate) fn check_open_file(
    p: &mut Puppet,
    scratch: u64,
    fd: u64,
    f: &wire::FileIdentity,
) -> Result<()> {
    let st = scratch + SCRATCH_STAT;
    sys(p, libc::SYS_fstat, &[fd, st], || {
        format!("fstat {}", f.path)
    })?;
    let pid = p.pid;
    let mut raw = vec![0u8; std::mem::size_of::<libc::stat>()];
    mem::read_fully(pid, st, &mut raw).step(pid, || "read scratch".into())?;
    let field = |off: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&raw[off..off + 8]);
        i64::from_le_bytes(b)
    };
    // x86-64 struct stat: st_size at 48, st_mtime at 88, st_mtime_nsec at 96.
    let (size, mtime, mtime_ns) = (field(48) as u64, field(88), field(96));
    if size != f.size || mtime != f.mtime_sec || mtime_ns != f.mtime_nsec {
        return Err(RestoreError::File {
            path: f.path.clone(),
            what: "changed while being restored".into(),
        });
    }
    Ok(())
}

/// Whether a mapping holds private pages tern writes (anonymous, or
/// private file pages copied on write).
pub(crate) fn holds_private_pages(v: &wire::Vma) -> bool {
    matches!(v.kind, wire::VmaKind::Anon | wire::VmaKind::File { .. })
        && !(v.shared && matches!(v.kind, wire::VmaKind::File { .. }))
}

/// The ranges of `vmas` that hold private pages, in order.
pub(crate) fn private_ranges(vmas: &[wire::Vma]) -> Vec<(u64, u64)> {
    vmas.iter()
        .filter(|v| holds_private_pages(v))
        .map(|v| (v.start, v.end))
        .collect()
}

/// A chunk of an image's page file (`path` in image `dir`) must cover
/// whole pages inside one private mapping.
pub(crate) fn check_chunk(
    dir: &Path,
    path: &Path,
    private: &[(u64, u64)],
    addr: u64,
    len: usize,
    page: usize,
) -> Result<()> {
    let end = addr.saturating_add(len as u64);
    if !addr.is_multiple_of(page as u64)
        || !len.is_multiple_of(page)
        || !private.iter().any(|&(s, e)| s <= addr && end <= e)
    {
        return Err(RestoreError::BadImage {
            dir: dir.to_path_buf(),
            what: format!(
                "{}: page data at {addr:#x}-{end:#x} lies outside every private mapping",
                path.display()
            ),
        });
    }
    Ok(())
}

/// mmap each of `vmas` at its address (MAP_FIXED), files opened inside the
/// puppet and checked to be the image's; vdso/vvar/vsyscall are skipped.
pub(crate) fn map_vmas<'v>(
    p: &mut Puppet,
    scratch: u64,
    vmas: impl IntoIterator<Item = &'v wire::Vma>,
) -> Result<()> {
    // One fd per file for all its mappings, closed afterwards.
    let mut fds: BTreeMap<(String, bool), u64> = BTreeMap::new();
    let mut result = Ok(());
    for v in vmas {
        result = map_one(p, scratch, v, &mut fds);
        if result.is_err() {
            break;
        }
    }
    for fd in fds.into_values() {
        sys(p, libc::SYS_close, &[fd], || "close mapping fd".into())?;
    }
    result
}

fn map_one(
    p: &mut Puppet,
    scratch: u64,
    v: &wire::Vma,
    fds: &mut BTreeMap<(String, bool), u64>,
) -> Result<()> {
    let share = if v.shared {
        libc::MAP_SHARED
    } else {
        libc::MAP_PRIVATE
    };
    let (flags, fd, offset) = match &v.kind {
        wire::VmaKind::Vdso
        | wire::VmaKind::Vvar
        | wire::VmaKind::VvarVclock
        | wire::VmaKind::Vsyscall => return Ok(()),
        wire::VmaKind::Anon => {
            let grows = if v.growsdown { libc::MAP_GROWSDOWN } else { 0 };
            (share | libc::MAP_ANONYMOUS | grows, u64::MAX, 0)
        }
        wire::VmaKind::File { file, offset } => {
            let writable = v.shared && v.prot & wire::PROT_WRITE != 0;
            let key = (file.path.clone(), writable);
            let fd = match fds.get(&key) {
                Some(fd) => *fd,
                None => {
                    let mode = if writable {
                        libc::O_RDWR
                    } else {
                        libc::O_RDONLY
                    };
                    let fd = open_in(p, scratch, &file.path, mode | libc::O_CLOEXEC)?;
                    fds.insert(key, fd);
                    check_open_file(p, scratch, fd, file)?;
                    fd
                }
            };
            (share, fd, *offset)
        }
    };
    sys(
        p,
        libc::SYS_mmap,
        &[
            v.start,
            v.len(),
            v.prot as u64,
            (flags | libc::MAP_FIXED) as u64,
            fd,
            offset,
        ],
        || format!("mmap {:#x}-{:#x} ({})", v.start, v.end, v.name),
    )?;
    Ok(())
}

/// Stream a page chunk file: a decoder thread verifies and decompresses
/// chunks into pooled buffers while this (the ptrace) thread hands each
/// `(address, bytes)` to `sink`. A corrupt or truncated file is reported in
/// preference to a sink error it may have caused.
pub(crate) fn stream_pages(
    pid: i32,
    path: &Path,
    mut sink: impl FnMut(u64, &[u8]) -> Result<()>,
) -> Result<()> {
    let reader = wire::ChunkReader::open(path)?;
    const POOL: usize = 4;
    let (full_tx, full_rx) = std::sync::mpsc::sync_channel::<(u64, Vec<u8>)>(POOL);
    let (free_tx, free_rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(POOL);
    for _ in 0..POOL {
        let _ = free_tx.send(Vec::new());
    }
    let decoder = std::thread::spawn(move || -> Result<()> {
        let mut reader = reader;
        while let Ok(mut buf) = free_rx.recv() {
            match reader.next_into(&mut buf)? {
                Some(addr) => {
                    if full_tx.send((addr, buf)).is_err() {
                        return Ok(());
                    }
                }
                None => return Ok(()),
            }
        }
        Ok(())
    });
    let mut result = Ok(());
    for (addr, buf) in full_rx.iter() {
        if let Err(e) = sink(addr, &buf) {
            result = Err(e);
            break;
        }
        let _ = free_tx.send(buf);
    }
    drop(full_rx);
    drop(free_tx);
    let decoded = decoder.join().map_err(|_| RestoreError::Step {
        pid,
        what: "page decoder thread".into(),
        source: io::Error::other("panicked"),
    })?;
    decoded?;
    result
}
