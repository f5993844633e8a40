//! A process's memory map for its image: each mapping classified (and the
//! kinds tern cannot restore refused), and the mm fields.

use crate::dump::unsupported;
use crate::error::{Context, Result};
use crate::seize::Seized;
use std::os::unix::fs::MetadataExt;
use tern_sys::proc::{self, MapEntry};
use tern_wire as wire;
use tracing::warn;

pub(crate) fn file_identity(path: &str, meta: &std::fs::Metadata) -> wire::FileIdentity {
    wire::FileIdentity {
        path: path.to_string(),
        dev: meta.dev(),
        ino: meta.ino(),
        size: meta.size(),
        mtime_sec: meta.mtime(),
        mtime_nsec: meta.mtime_nsec(),
    }
}

/// Classify each mapping; refuse the kinds this version cannot restore.
/// `in_round`: a pre-copy round, where a userfaultfd registration is our
/// own tracker's (the program's own is refused by the final dump).
pub(crate) fn capture_vmas(pid: i32, maps: &[MapEntry], in_round: bool) -> Result<Vec<wire::Vma>> {
    let mut vmas = Vec::with_capacity(maps.len());
    for m in maps {
        let kind = vma_kind(pid, m, in_round)?;
        let mut advice = Vec::new();
        for (flag, adv) in [
            ("dc", libc::MADV_DONTFORK),
            ("wf", libc::MADV_WIPEONFORK),
            ("dd", libc::MADV_DONTDUMP),
            ("hg", libc::MADV_HUGEPAGE),
            ("nh", libc::MADV_NOHUGEPAGE),
            ("sr", libc::MADV_SEQUENTIAL),
            ("rr", libc::MADV_RANDOM),
        ] {
            if m.has_flag(flag) {
                advice.push(adv);
            }
        }
        if m.has_flag("lo") {
            warn!(
                pid,
                start = m.start,
                "mlock()ed mapping will be restored unlocked"
            );
        }
        vmas.push(wire::Vma {
            start: m.start,
            end: m.end,
            prot: (if m.read { wire::PROT_READ } else { 0 })
                | (if m.write { wire::PROT_WRITE } else { 0 })
                | (if m.exec { wire::PROT_EXEC } else { 0 }),
            shared: m.shared,
            growsdown: m.has_flag("gd"),
            kind,
            advice,
            name: m.name.clone(),
        });
    }
    Ok(vmas)
}

pub(crate) fn capture_mm(
    pid: i32,
    maps: &[MapEntry],
    seized: &mut Seized,
    tracked: bool,
) -> Result<wire::Mm> {
    let vmas = capture_vmas(pid, maps, tracked)?;
    let p = procfs::process::Process::new(pid).ctx(pid, || "open /proc entry".into())?;
    let stat = p.stat().ctx(pid, || "read stat".into())?;
    let brk = seized.inject(libc::SYS_brk, &[0], "brk(0)")?;
    let exe_path = std::fs::read_link(format!("/proc/{pid}/exe"))
        .ctx(pid, || "readlink exe".into())?
        .to_string_lossy()
        .into_owned();
    if exe_path.ends_with(" (deleted)") {
        return Err(unsupported(
            pid,
            format!("its executable {exe_path} was deleted"),
        ));
    }
    let exe_meta = std::fs::metadata(format!("/proc/{pid}/exe")).ctx(pid, || "stat exe".into())?;
    let need = |v: Option<u64>, what: &str| {
        v.ok_or_else(|| {
            unsupported(
                pid,
                format!("/proc/{pid}/stat lacks {what} (kernel too old)"),
            )
        })
    };
    Ok(wire::Mm {
        vmas,
        start_code: stat.startcode,
        end_code: stat.endcode,
        start_data: need(stat.start_data, "start_data")?,
        end_data: need(stat.end_data, "end_data")?,
        start_brk: need(stat.start_brk, "start_brk")?,
        brk,
        start_stack: stat.startstack,
        arg_start: need(stat.arg_start, "arg_start")?,
        arg_end: need(stat.arg_end, "arg_end")?,
        env_start: need(stat.env_start, "env_start")?,
        env_end: need(stat.env_end, "env_end")?,
        auxv: proc::read_auxv(pid).ctx(pid, || "read auxv".into())?,
        exe: file_identity(&exe_path, &exe_meta),
    })
}

fn vma_kind(pid: i32, m: &MapEntry, in_round: bool) -> Result<wire::VmaKind> {
    let at = || format!("mapping {:#x}-{:#x} ({})", m.start, m.end, m.name);
    match m.name.as_str() {
        "[vdso]" => return Ok(wire::VmaKind::Vdso),
        "[vvar]" => return Ok(wire::VmaKind::Vvar),
        "[vvar_vclock]" => return Ok(wire::VmaKind::VvarVclock),
        "[vsyscall]" => return Ok(wire::VmaKind::Vsyscall),
        _ => {}
    }
    if m.has_flag("io") || m.has_flag("pf") {
        return Err(unsupported(
            pid,
            format!("{}: device (I/O or PFN) mappings cannot be restored", at()),
        ));
    }
    if m.has_flag("ht") {
        return Err(unsupported(
            pid,
            format!("{}: hugetlbfs mappings are not supported yet", at()),
        ));
    }
    if !in_round && (m.has_flag("um") || m.has_flag("uw")) {
        return Err(unsupported(
            pid,
            format!("{}: registered with userfaultfd", at()),
        ));
    }
    if m.inode == 0 {
        return Ok(wire::VmaKind::Anon);
    }
    if m.is_shmem_anon() {
        // MAP_SHARED|MAP_ANONYMOUS shows as a deleted /dev/zero shmem file.
        return Ok(wire::VmaKind::Anon);
    }
    if !m.name.starts_with('/') || m.name.ends_with(" (deleted)") || m.name.starts_with("/memfd:") {
        return Err(unsupported(
            pid,
            format!(
                "{}: mappings of deleted files, memfd and SysV shm are not supported yet",
                at()
            ),
        ));
    }
    let link = format!("/proc/{pid}/map_files/{:x}-{:x}", m.start, m.end);
    let meta = std::fs::metadata(&link).ctx(pid, || format!("stat {link}"))?;
    if meta.ino() != m.inode {
        return Err(unsupported(
            pid,
            format!("{}: file changed identity during the dump", at()),
        ));
    }
    if !meta.is_file() {
        return Err(unsupported(
            pid,
            format!("{}: only regular files can be mapped", at()),
        ));
    }
    Ok(wire::VmaKind::File {
        file: file_identity(&m.name, &meta),
        offset: m.offset,
    })
}
