//! Parsers for the /proc files tern reads about a process.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// One mapping from `/proc/PID/smaps`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapEntry {
    pub start: u64,
    pub end: u64,
    pub read: bool,
    pub write: bool,
    pub exec: bool,
    pub shared: bool,
    pub offset: u64,
    pub dev_major: u32,
    pub dev_minor: u32,
    pub inode: u64,
    /// Path or pseudo-name (`[heap]`, `[vdso]`, ...); empty for anonymous.
    pub name: String,
    /// Two-letter `VmFlags` codes (`rd`, `wr`, `gd`, `dc`, ...).
    pub vm_flags: Vec<String>,
    pub anonymous_kb: u64,
    pub swap_kb: u64,
}

impl MapEntry {
    pub fn has_flag(&self, flag: &str) -> bool {
        self.vm_flags.iter().any(|f| f == flag)
    }
    /// `MAP_SHARED|MAP_ANONYMOUS` memory, which shows as a deleted
    /// `/dev/zero` shmem file.
    pub fn is_shmem_anon(&self) -> bool {
        self.shared && self.name.starts_with("/dev/zero")
    }
    /// A page of it with no data of its own reads as zeros (anonymous
    /// memory, or a mapping of /dev/zero), not as a file's bytes.
    pub fn reads_zero_when_empty(&self) -> bool {
        !self.is_file() || self.name.starts_with("/dev/zero")
    }
    /// A mapping of a real file (not a pseudo-name, not anonymous).
    pub fn is_file(&self) -> bool {
        self.inode != 0 && self.name.starts_with('/')
    }
}

fn parse_header(line: &str) -> Option<MapEntry> {
    // start-end perms offset major:minor inode   name
    let mut it = line.splitn(6, ' ');
    let range = it.next()?;
    let perms = it.next()?.as_bytes();
    let offset = it.next()?;
    let dev = it.next()?;
    let inode = it.next()?;
    let name = it.next().unwrap_or("").trim_start().to_string();
    let (s, e) = range.split_once('-')?;
    let (maj, min) = dev.split_once(':')?;
    if perms.len() < 4 {
        return None;
    }
    Some(MapEntry {
        start: u64::from_str_radix(s, 16).ok()?,
        end: u64::from_str_radix(e, 16).ok()?,
        read: perms[0] == b'r',
        write: perms[1] == b'w',
        exec: perms[2] == b'x',
        shared: perms[3] == b's',
        offset: u64::from_str_radix(offset, 16).ok()?,
        dev_major: u32::from_str_radix(maj, 16).ok()?,
        dev_minor: u32::from_str_radix(min, 16).ok()?,
        inode: inode.parse().ok()?,
        name,
        vm_flags: Vec::new(),
        anonymous_kb: 0,
        swap_kb: 0,
    })
}

/// A signal mask line of `/proc/PID/status` (`SigCgt:`, `SigIgn:`, ...).
pub fn status_sigmask(pid: i32, field: &str) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
}

/// The `Seccomp:` line of `/proc/TID/status`: 0 none, 1 strict, 2 filter.
pub fn seccomp_mode(tid: i32) -> Option<u32> {
    std::fs::read_to_string(format!("/proc/{tid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("Seccomp:"))
        .and_then(|v| v.trim().parse().ok())
}

/// Parse the text of `/proc/PID/smaps`.
pub fn parse_smaps(text: &str) -> Result<Vec<MapEntry>, String> {
    let mut out: Vec<MapEntry> = Vec::new();
    for line in text.lines() {
        let first = line.split(' ').next().unwrap_or("");
        if first.contains('-') && !first.ends_with(':') {
            out.push(parse_header(line).ok_or_else(|| format!("bad smaps line: {line:?}"))?);
            continue;
        }
        let Some(cur) = out.last_mut() else {
            return Err(format!("smaps field before any mapping: {line:?}"));
        };
        if let Some(flags) = line.strip_prefix("VmFlags:") {
            cur.vm_flags = flags.split_whitespace().map(str::to_string).collect();
        } else if let Some(v) = line.strip_prefix("Anonymous:") {
            cur.anonymous_kb = parse_kb(v);
        } else if let Some(v) = line.strip_prefix("Swap:") {
            cur.swap_kb = parse_kb(v);
        }
    }
    Ok(out)
}

fn parse_kb(v: &str) -> u64 {
    v.split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

pub fn read_smaps(pid: i32) -> io::Result<Vec<MapEntry>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps"))?;
    parse_smaps(&text).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// `/proc/PID/maps` (no page-table walk, unlike smaps: ~7 ms per GiB
/// less), each mapping with the VmFlags of the one in `known` (an earlier
/// smaps read, sorted) with the same range, permissions, offset and file.
/// `None` when a mapping has no such match (the caller reads smaps). VmFlags
/// changed in place since `known` was read (madvise over a whole mapping)
/// are not seen.
pub fn read_maps_with_flags(pid: i32, known: &[MapEntry]) -> io::Result<Option<Vec<MapEntry>>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/maps"))?;
    let mut out = Vec::new();
    for line in text.lines() {
        let Some(mut m) = parse_header(line) else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("bad maps line: {line:?}"),
            ));
        };
        let same = known
            .binary_search_by_key(&m.start, |k| k.start)
            .ok()
            .map(|i| &known[i])
            .filter(|k| {
                k.end == m.end
                    && (k.read, k.write, k.exec, k.shared) == (m.read, m.write, m.exec, m.shared)
                    && k.offset == m.offset
                    && k.inode == m.inode
                    && (k.dev_major, k.dev_minor) == (m.dev_major, m.dev_minor)
                    && k.name == m.name
            });
        match same {
            Some(k) => {
                m.vm_flags = k.vm_flags.clone();
                out.push(m);
            }
            None => return Ok(None),
        }
    }
    Ok(Some(out))
}

/// pagemap entry bits (Documentation/admin-guide/mm/pagemap.rst).
pub const PM_PRESENT: u64 = 1 << 63;
pub const PM_SWAP: u64 = 1 << 62;
pub const PM_FILE_OR_SHARED_ANON: u64 = 1 << 61;
pub const PM_SOFT_DIRTY: u64 = 1 << 55;
pub const PM_UFFD_WP: u64 = 1 << 57;
/// Swap types from here up are the kernel's special entries (migration,
/// hwpoison, device, PTE markers), never a swap device: `MAX_SWAPFILES`
/// is 32 minus those, at least 23 whatever the config.
const FIRST_SPECIAL_SWAP_TYPE: u64 = 23;

/// Whether pagemap `entry` is a page swapped out (its data is in swap).
/// Not a uffd-wp PTE marker: with `UFFD_FEATURE_WP_UNPOPULATED` every
/// unpopulated PTE of a write-protected range holds one, and pagemap
/// reports it as a swap entry (bit 62, with bit 57 and swap type 31 here)
/// although nothing is there. Counting those as data made every pre-copy
/// read the never-touched pages of its programs' code and libraries
/// (their file's bytes) in round 0, and send them again in the final delta.
/// A marker is told by its swap type (one of the kernel's special ones)
/// and its offset, which holds only marker bits (uffd-wp 1, poisoned 2,
/// guard 4), where a page under migration has its pfn. The swap type is
/// shown only to `CAP_SYS_ADMIN` (else 0: counted as swapped, the safe
/// side).
pub fn pm_swapped(entry: u64) -> bool {
    let frame = entry & ((1 << 55) - 1);
    entry & PM_SWAP != 0 && !(frame & 0x1f >= FIRST_SPECIAL_SWAP_TYPE && frame >> 5 < 8)
}

/// `/proc/PID/pagemap`, read a whole range at a time.
#[derive(Debug)]
pub struct Pagemap {
    file: File,
}

impl Pagemap {
    pub fn open(pid: i32) -> io::Result<Self> {
        Ok(Pagemap {
            file: File::open(format!("/proc/{pid}/pagemap"))?,
        })
    }

    /// One 64-bit entry per page of `[start, end)`.
    pub fn read(&self, start: u64, end: u64, page_size: u64) -> io::Result<Vec<u64>> {
        let pages = ((end - start) / page_size) as usize;
        let mut raw = vec![0u8; pages * 8];
        self.file.read_exact_at(&mut raw, start / page_size * 8)?;
        Ok(raw
            .chunks_exact(8)
            .map(|c| {
                let mut b = [0u8; 8];
                b.copy_from_slice(c);
                u64::from_le_bytes(b)
            })
            .collect())
    }
}

/// `/proc/PID/auxv` as 64-bit words.
pub fn read_auxv(pid: i32) -> io::Result<Vec<u64>> {
    let raw = std::fs::read(format!("/proc/{pid}/auxv"))?;
    Ok(raw
        .chunks_exact(8)
        .map(|c| {
            let mut b = [0u8; 8];
            b.copy_from_slice(c);
            u64::from_le_bytes(b)
        })
        .collect())
}

/// The `pos:` and `flags:` lines of `/proc/PID/fdinfo/FD`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdInfo {
    pub pos: u64,
    /// Octal in the file; includes O_CLOEXEC for close-on-exec fds.
    pub flags: i32,
}

pub fn parse_fdinfo(text: &str) -> Option<FdInfo> {
    let mut pos = None;
    let mut flags = None;
    for line in text.lines() {
        if let Some(v) = line.strip_prefix("pos:") {
            pos = v.trim().parse().ok();
        } else if let Some(v) = line.strip_prefix("flags:") {
            flags = i32::from_str_radix(v.trim(), 8).ok();
        }
    }
    Some(FdInfo {
        pos: pos?,
        flags: flags?,
    })
}

/// The numeric entries of a /proc directory, sorted.
fn numeric_entries(dir: &str) -> io::Result<Vec<i32>> {
    let mut v: Vec<i32> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    v.sort_unstable();
    Ok(v)
}

/// Numbers of `/proc/PID/fd`, sorted.
pub fn list_fds(pid: i32) -> io::Result<Vec<i32>> {
    numeric_entries(&format!("/proc/{pid}/fd"))
}

/// Every (pid, fd) of this machine's processes, but `except`, whose fd
/// link reads `link` (e.g. `pipe:[1234]`): who else holds a pipe or
/// socket. Processes that vanish or cannot be read meanwhile are skipped.
pub fn holders_of(link: &str, except: &[i32]) -> Vec<(i32, i32)> {
    let mut out = Vec::new();
    for pid in numeric_entries("/proc").unwrap_or_default() {
        if except.contains(&pid) {
            continue;
        }
        for fd in list_fds(pid).unwrap_or_default() {
            let same = std::fs::read_link(format!("/proc/{pid}/fd/{fd}"))
                .is_ok_and(|l| l.as_os_str() == link);
            if same {
                out.push((pid, fd));
            }
        }
    }
    out
}

/// [`holders_of`] in words, for a refusal: "process 456 (its fd 5)", or
/// that none holds it.
pub fn describe_holders(link: &str, except: &[i32]) -> String {
    let holders = holders_of(link, except);
    if holders.is_empty() {
        return "no process outside the dump (its other end is closed)".to_string();
    }
    const SHOWN: usize = 5;
    let mut text = holders
        .iter()
        .take(SHOWN)
        .map(|(pid, fd)| format!("process {pid} (its fd {fd})"))
        .collect::<Vec<_>>()
        .join(", ");
    if holders.len() > SHOWN {
        text.push_str(&format!(" and {} more", holders.len() - SHOWN));
    }
    text
}

/// `pid`, its parent, and so on up to init (or as far as /proc tells).
pub fn ancestors(pid: i32) -> Vec<i32> {
    let mut out = vec![pid];
    let mut at = pid;
    while at > 1 && out.len() < 4096 {
        let ppid = procfs::process::Process::new(at)
            .and_then(|p| p.stat())
            .ok()
            .map(|st| st.ppid);
        match ppid {
            Some(p) if p > 0 => {
                out.push(p);
                at = p;
            }
            _ => break,
        }
    }
    out
}

/// User processes (not kernel threads) whose real uid is `uid`.
pub fn pids_of_user(uid: u32) -> Vec<i32> {
    numeric_entries("/proc")
        .unwrap_or_default()
        .into_iter()
        .filter(|pid| {
            let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
                return false;
            };
            let real_uid = status
                .lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<u32>().ok());
            // Kernel threads have no memory map of their own.
            let user_space = status.lines().any(|l| l.starts_with("VmSize:"));
            real_uid == Some(uid) && user_space
        })
        .collect()
}

/// What of process `pid` uses io_uring: its fds of io_uring instances and
/// its io_uring worker threads (`iou-sqp-*`, `iou-wrk-*`: `PF_IO_WORKER`
/// in their stat flags). Such threads never stop for ptrace.
pub fn io_uring_users(pid: i32) -> (Vec<i32>, Vec<i32>) {
    let fds = list_fds(pid)
        .unwrap_or_default()
        .into_iter()
        .filter(|fd| {
            std::fs::read_link(format!("/proc/{pid}/fd/{fd}"))
                .is_ok_and(|l| l.as_os_str() == "anon_inode:[io_uring]")
        })
        .collect();
    let workers = list_tasks(pid)
        .unwrap_or_default()
        .into_iter()
        .filter(|&tid| is_io_worker(pid, tid))
        .collect();
    (fds, workers)
}

/// Whether thread `tid` of `pid` is an io_uring worker (`PF_IO_WORKER`).
pub fn is_io_worker(pid: i32, tid: i32) -> bool {
    const PF_IO_WORKER: u32 = 0x10;
    procfs::process::Process::new(pid)
        .and_then(|p| p.task_from_tid(tid))
        .and_then(|t| t.stat())
        .ok()
        .map(|st| st.flags)
        .is_some_and(|flags| flags & PF_IO_WORKER != 0)
}

/// The fields of `/proc/PID/stat` text after the `(comm)` (which may hold
/// anything): index 0 is field 3, the state letter; then ppid, pgrp,
/// session, tty, tpgid, flags...
pub fn stat_fields(stat: &str) -> Vec<&str> {
    match stat.rfind(')') {
        Some(i) => stat[i + 1..].split_whitespace().collect(),
        None => Vec::new(),
    }
}

/// [`stat_fields`] of process `pid`, owned.
fn stat_fields_of(pid: i32) -> io::Result<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    Ok(stat_fields(&stat).into_iter().map(str::to_string).collect())
}

/// The state letter of process `pid` (`R`, `S`, `T`, `Z`...).
pub fn read_stat_state(pid: i32) -> io::Result<char> {
    stat_fields_of(pid)?
        .first()
        .and_then(|f| f.chars().next())
        .ok_or_else(|| io::Error::other(format!("/proc/{pid}/stat: no state")))
}

/// Whether process `pid` has exited or is exiting: gone, a zombie, or
/// `PF_EXITING` (its memory may already be gone while it still runs).
pub fn leaving(pid: i32) -> bool {
    const PF_EXITING: u32 = 0x4;
    let Ok(fields) = stat_fields_of(pid) else {
        return true;
    };
    let state = fields.first().and_then(|f| f.chars().next());
    let flags = fields.get(6).and_then(|f| f.parse::<u32>().ok());
    matches!(state, Some('Z' | 'X') | None) || flags.is_none_or(|f| f & PF_EXITING != 0)
}

/// Thread ids in `/proc/PID/task`.
pub fn list_tasks(pid: i32) -> io::Result<Vec<i32>> {
    numeric_entries(&format!("/proc/{pid}/task"))
}

/// Children listed in `/proc/PID/task/*/children`.
pub fn list_children(pid: i32) -> io::Result<Vec<i32>> {
    let mut out = Vec::new();
    for tid in list_tasks(pid)? {
        let text = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/children"))?;
        out.extend(
            text.split_whitespace()
                .filter_map(|s| s.parse::<i32>().ok()),
        );
    }
    Ok(out)
}

/// Every descendant of `pid` (children, theirs, ...), as far as they can
/// be listed now; parents before their children.
pub fn descendants(pid: i32) -> Vec<i32> {
    let mut all = Vec::new();
    let mut next = 0;
    let mut of = pid;
    loop {
        for c in list_children(of).unwrap_or_default() {
            if !all.contains(&c) {
                all.push(c);
            }
        }
        let Some(&p) = all.get(next) else {
            return all;
        };
        of = p;
        next += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_uffd_wp_marker_is_not_a_swapped_page() {
        // Read on this kernel: an unpopulated text page under uffd-wp
        // WP_UNPOPULATED (swap type 31, offset 1 = PTE_MARKER_UFFD_WP).
        assert!(!pm_swapped(0x4200_0000_0000_003f));
        // A page in swap device 0, slot 0x1234; and one also protected.
        assert!(pm_swapped(PM_SWAP | (0x1234 << 5)));
        assert!(pm_swapped(PM_SWAP | PM_UFFD_WP | (0x1234 << 5) | 1));
        // Frame hidden (no CAP_SYS_ADMIN): counted as swapped.
        assert!(pm_swapped(PM_SWAP | PM_UFFD_WP));
        // A page under migration (special type, its pfn as offset): data.
        assert!(pm_swapped(PM_SWAP | PM_UFFD_WP | (0x12345 << 5) | 25));
        assert!(!pm_swapped(PM_PRESENT));
    }

    #[test]
    fn smaps_parses_names_flags_and_sizes() {
        let text = "\
55d0a0000000-55d0a0021000 rw-p 00000000 00:00 0                          [heap]
Size:                132 kB
Anonymous:             8 kB
Swap:                  0 kB
VmFlags: rd wr mr mw me ac
7f00aa000000-7f00aa001000 r--p 00002000 fd:01 123456                     /usr/lib/x86_64-linux-gnu/libc.so.6
Anonymous:             4 kB
VmFlags: rd mr mw me ac
7ffd11000000-7ffd11021000 rw-p 00000000 00:00 0                          [stack]
VmFlags: rd wr mr mw me gd ac
7f00bb000000-7f00bb001000 rw-s 00000000 00:01 77                         /dev/zero (deleted)
VmFlags: rd wr sh mr mw me ms
";
        let m = parse_smaps(text).unwrap();
        assert_eq!(m.len(), 4);
        assert_eq!(m[0].name, "[heap]");
        assert_eq!(m[0].anonymous_kb, 8);
        assert!(m[1].is_file() && !m[1].write && m[1].offset == 0x2000);
        assert_eq!(m[1].dev_major, 0xfd);
        assert!(m[2].has_flag("gd"));
        assert!(m[3].shared && m[3].name == "/dev/zero (deleted)");
    }

    #[test]
    fn fdinfo_flags_are_octal() {
        let i = parse_fdinfo("pos:\t42\nflags:\t02102001\nmnt_id:\t25\n").unwrap();
        assert_eq!(i.pos, 42);
        assert_eq!(i.flags, 0o2102001);
    }
}

/// One POSIX timer as `/proc/PID/timers` shows it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PosixTimerInfo {
    pub id: i32,
    pub clock: i32,
    /// `sigev_notify`: SIGEV_SIGNAL, SIGEV_NONE or SIGEV_THREAD_ID.
    pub notify: i32,
    /// With SIGEV_THREAD_ID: the thread signalled.
    pub notify_tid: i32,
    pub signo: i32,
    pub sigval: u64,
}

/// Parse `/proc/PID/timers` (one block per POSIX timer: `ID:`, `signal:
/// SIGNO/SIGVAL`, `notify: signal/pid.N | thread/tid.N | none/...`,
/// `ClockID:`); the times are read with `timer_gettime` by the caller.
pub fn parse_posix_timers(text: &str) -> Result<Vec<PosixTimerInfo>, String> {
    let mut out: Vec<PosixTimerInfo> = Vec::new();
    for line in text.lines() {
        let (key, val) = line
            .split_once(':')
            .map(|(k, v)| (k.trim(), v.trim()))
            .ok_or_else(|| format!("bad line {line:?}"))?;
        if key == "ID" {
            out.push(PosixTimerInfo {
                id: val.parse().map_err(|_| format!("bad ID {val:?}"))?,
                ..PosixTimerInfo::default()
            });
            continue;
        }
        let Some(t) = out.last_mut() else {
            return Err(format!("{line:?} before any ID"));
        };
        match key {
            "signal" => {
                let (signo, sigval) = val
                    .split_once('/')
                    .ok_or_else(|| format!("bad signal {val:?}"))?;
                t.signo = signo.parse().map_err(|_| format!("bad signal {val:?}"))?;
                t.sigval =
                    u64::from_str_radix(sigval, 16).map_err(|_| format!("bad sigval {val:?}"))?;
            }
            "notify" => {
                let (kind, target) = val
                    .split_once('/')
                    .ok_or_else(|| format!("bad notify {val:?}"))?;
                let (how, id) = target.split_once('.').unwrap_or((target, "0"));
                let id: i32 = id.parse().map_err(|_| format!("bad notify {val:?}"))?;
                // The kernel prints the delivery kind, then "tid" for
                // SIGEV_THREAD_ID (glibc's SIGEV_THREAD timers use it too).
                t.notify = match (kind, how) {
                    ("signal", "tid") => {
                        t.notify_tid = id;
                        libc::SIGEV_THREAD_ID
                    }
                    ("signal", _) => libc::SIGEV_SIGNAL,
                    ("none", _) => libc::SIGEV_NONE,
                    _ => return Err(format!("unknown notify {val:?}")),
                };
            }
            "ClockID" => t.clock = val.parse().map_err(|_| format!("bad ClockID {val:?}"))?,
            _ => {}
        }
    }
    Ok(out)
}

#[cfg(test)]
mod timers_tests {
    #[test]
    fn parses_proc_timers() {
        let text = "ID: 0\nsignal: 10/000000000000002a\nnotify: signal/pid.4242\nClockID: 1\nID: 3\nsignal: 12/0000000000000000\nnotify: signal/tid.4250\nClockID: 0\n";
        let t = super::parse_posix_timers(text).expect("parse");
        assert_eq!(t.len(), 2);
        assert_eq!(
            (t[0].id, t[0].signo, t[0].sigval, t[0].clock),
            (0, 10, 42, 1)
        );
        assert_eq!(t[0].notify, libc::SIGEV_SIGNAL);
        assert_eq!(
            (t[1].id, t[1].notify, t[1].notify_tid),
            (3, libc::SIGEV_THREAD_ID, 4250)
        );
        assert!(super::parse_posix_timers("signal: 1/0\n").is_err());
    }
}

/// (clockid, ticks, time left ns, interval ns) from a timerfd's fdinfo:
/// `clockid: 1`, `ticks: 0`, `it_value: (S, NS)`, `it_interval: (S, NS)`.
pub fn parse_timerfd(text: &str) -> Option<(i32, u64, u64, u64)> {
    let field = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .map(str::trim)
    };
    let pair = |key: &str| -> Option<u64> {
        let v = field(key)?.trim_start_matches('(').trim_end_matches(')');
        let (s, ns) = v.split_once(',')?;
        Some(s.trim().parse::<u64>().ok()? * 1_000_000_000 + ns.trim().parse::<u64>().ok()?)
    };
    Some((
        field("clockid:")?.parse().ok()?,
        field("ticks:")?.parse().ok()?,
        pair("it_value:")?,
        pair("it_interval:")?,
    ))
}

#[cfg(test)]
mod timerfd_tests {
    #[test]
    fn parses_timerfd_fdinfo() {
        let text = "pos:\t0\nflags:\t02004002\nmnt_id:\t15\nino:\t1057\nclockid: 1\nticks: 3\nsettime flags: 00\nit_value: (0, 9871234)\nit_interval: (1, 500)\n";
        assert_eq!(
            super::parse_timerfd(text),
            Some((1, 3, 9_871_234, 1_000_000_500))
        );
        assert_eq!(super::parse_timerfd("clockid: 1\n"), None);
    }
}

/// The `tfd:` lines of an epoll fd's fdinfo: (fd, events, data, inode).
pub fn parse_epoll_targets(text: &str) -> Option<Vec<(i32, u32, u64, u64)>> {
    let mut out = Vec::new();
    for line in text.lines().filter(|l| l.starts_with("tfd:")) {
        let mut words = line.split_whitespace();
        let mut next_after = |key: &str| -> Option<String> {
            for w in words.by_ref() {
                if let Some(v) = w.strip_prefix(key) {
                    return Some(if v.is_empty() {
                        words.next()?.to_string()
                    } else {
                        v.to_string()
                    });
                }
            }
            None
        };
        let fd = next_after("tfd:")?.parse().ok()?;
        let events = u32::from_str_radix(&next_after("events:")?, 16).ok()?;
        let data = u64::from_str_radix(&next_after("data:")?, 16).ok()?;
        let ino = u64::from_str_radix(&next_after("ino:")?, 16).ok()?;
        out.push((fd, events, data, ino));
    }
    Some(out)
}

#[cfg(test)]
mod epoll_tests {
    #[test]
    fn parses_epoll_fdinfo() {
        let text = "pos:\t0\nflags:\t02\nmnt_id:\t15\nino:\t1057\ntfd:        5 events:       19 data:                5  pos:0 ino:61 sdev:9\ntfd:       12 events: 80000001 data: ffffffffffffffff  pos:0 ino:3f2 sdev:f\n";
        assert_eq!(
            super::parse_epoll_targets(text),
            Some(vec![(5, 0x19, 5, 0x61), (12, 0x8000_0001, u64::MAX, 0x3f2)])
        );
    }
}

/// When process `pid` started (clock ticks after boot), if it exists and
/// has not exited: with the pid, it names one process for good.
pub fn start_time(pid: i32) -> Option<u64> {
    let stat = procfs::process::Process::new(pid).ok()?.stat().ok()?;
    match stat.state {
        'Z' | 'X' | 'x' => None,
        _ => Some(stat.starttime),
    }
}

/// One thread's credentials as `/proc/PID/task/TID/status` shows them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ThreadCreds {
    /// real, effective, saved, filesystem
    pub uid: [u32; 4],
    pub gid: [u32; 4],
    pub groups: Vec<u32>,
    pub cap_inheritable: u64,
    pub cap_permitted: u64,
    pub cap_effective: u64,
    pub cap_bounding: u64,
    pub cap_ambient: u64,
    pub no_new_privs: bool,
    /// 0 none, 1 strict, 2 filter.
    pub seccomp: u32,
}

impl ThreadCreds {
    pub fn parse(status: &str) -> Result<ThreadCreds, String> {
        let field = |name: &str| -> Result<&str, String> {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
                .map(str::trim)
                .ok_or_else(|| format!("no {name} line"))
        };
        let ids = |name: &str| -> Result<[u32; 4], String> {
            let v: Vec<u32> = field(name)?
                .split_ascii_whitespace()
                .map(|x| x.parse().map_err(|_| format!("bad {name} line")))
                .collect::<Result<_, _>>()?;
            v.try_into().map_err(|_| format!("bad {name} line"))
        };
        let caps = |name: &str| -> Result<u64, String> {
            u64::from_str_radix(field(name)?, 16).map_err(|_| format!("bad {name} line"))
        };
        let mut groups: Vec<u32> = field("Groups")?
            .split_ascii_whitespace()
            .map(|x| x.parse().map_err(|_| "bad Groups line".to_string()))
            .collect::<Result<_, _>>()?;
        groups.sort_unstable();
        Ok(ThreadCreds {
            uid: ids("Uid")?,
            gid: ids("Gid")?,
            groups,
            cap_inheritable: caps("CapInh")?,
            cap_permitted: caps("CapPrm")?,
            cap_effective: caps("CapEff")?,
            cap_bounding: caps("CapBnd")?,
            cap_ambient: caps("CapAmb").unwrap_or(0),
            no_new_privs: field("NoNewPrivs").is_ok_and(|v| v == "1"),
            seccomp: field("Seccomp")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0),
        })
    }

    /// Fields that differ from `other`, each as "name: ours vs theirs".
    pub fn differences(&self, other: &ThreadCreds) -> Vec<String> {
        let mut d = Vec::new();
        let mut cmp = |name: &str, a: String, b: String| {
            if a != b {
                d.push(format!("{name} {a} vs {b}"));
            }
        };
        cmp("uid", format!("{:?}", self.uid), format!("{:?}", other.uid));
        cmp("gid", format!("{:?}", self.gid), format!("{:?}", other.gid));
        let sorted = |g: &[u32]| {
            let mut g = g.to_vec();
            g.sort_unstable();
            format!("{g:?}")
        };
        cmp("groups", sorted(&self.groups), sorted(&other.groups));
        for (name, a, b) in [
            ("CapInh", self.cap_inheritable, other.cap_inheritable),
            ("CapPrm", self.cap_permitted, other.cap_permitted),
            ("CapEff", self.cap_effective, other.cap_effective),
            ("CapBnd", self.cap_bounding, other.cap_bounding),
            ("CapAmb", self.cap_ambient, other.cap_ambient),
        ] {
            cmp(name, format!("{a:#x}"), format!("{b:#x}"));
        }
        cmp(
            "no_new_privs",
            self.no_new_privs.to_string(),
            other.no_new_privs.to_string(),
        );
        cmp(
            "seccomp",
            self.seccomp.to_string(),
            other.seccomp.to_string(),
        );
        d
    }
}

/// Credentials of thread `tid` of process `pid`.
pub fn thread_creds(pid: i32, tid: i32) -> io::Result<ThreadCreds> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/status"))?;
    ThreadCreds::parse(&text).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("/proc/{pid}/task/{tid}/status: {e}"),
        )
    })
}

/// Names of the capabilities set in `mask` ("cap_net_admin", ...).
pub fn cap_names(mask: u64) -> Vec<String> {
    const NAMES: [&str; 41] = [
        "chown",
        "dac_override",
        "dac_read_search",
        "fowner",
        "fsetid",
        "kill",
        "setgid",
        "setuid",
        "setpcap",
        "linux_immutable",
        "net_bind_service",
        "net_broadcast",
        "net_admin",
        "net_raw",
        "ipc_lock",
        "ipc_owner",
        "sys_module",
        "sys_rawio",
        "sys_chroot",
        "sys_ptrace",
        "sys_pacct",
        "sys_admin",
        "sys_boot",
        "sys_nice",
        "sys_resource",
        "sys_time",
        "sys_tty_config",
        "mknod",
        "lease",
        "audit_write",
        "audit_control",
        "setfcap",
        "mac_override",
        "mac_admin",
        "syslog",
        "wake_alarm",
        "block_suspend",
        "audit_read",
        "perfmon",
        "bpf",
        "checkpoint_restore",
    ];
    (0..64)
        .filter(|b| mask & (1u64 << b) != 0)
        .map(|b| match NAMES.get(b) {
            Some(n) => format!("cap_{n}"),
            None => format!("capability {b}"),
        })
        .collect()
}

#[cfg(test)]
mod creds_tests {
    use super::*;

    #[test]
    fn creds_parse_and_differences_name_the_field() {
        let text = "Name:\tx\nUid:\t1000\t1000\t1000\t1000\nGid:\t1000\t1000\t1000\t1000\nGroups:\t27 1000 \nCapInh:\t0000000000000400\nCapPrm:\t0000000000000400\nCapEff:\t0000000000000400\nCapBnd:\t0000000000000420\nCapAmb:\t0000000000000400\nNoNewPrivs:\t1\nSeccomp:\t0\n";
        let c = ThreadCreds::parse(text).expect("parse");
        assert_eq!(c.uid, [1000; 4]);
        assert_eq!(c.groups, vec![27, 1000]);
        assert_eq!(c.cap_bounding, 0x420);
        assert!(c.no_new_privs);
        let mut root = c.clone();
        root.uid = [0; 4];
        root.cap_effective = u64::MAX >> 23;
        let d = c.differences(&root);
        assert_eq!(d.len(), 2, "{d:?}");
        assert!(d[0].starts_with("uid"), "{d:?}");
        assert!(ThreadCreds::parse("Uid:\t1 2\n").is_err());
        assert_eq!(cap_names(0x420), vec!["cap_kill", "cap_net_bind_service"]);
    }
}

/// One watch of an inotify fd's fdinfo (`inotify wd:1 ino:e2 sdev:800001
/// mask:fce ignored_mask:0 fhandle-bytes:8 fhandle-type:1 f_handle:...`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InotifyEntry {
    pub wd: i32,
    pub ino: u64,
    /// The kernel's dev_t of the file system (major << 20 | minor).
    pub sdev: u64,
    pub mask: u32,
    pub handle_type: i32,
    pub handle: Vec<u8>,
}

pub fn parse_inotify(text: &str) -> Option<Vec<InotifyEntry>> {
    let mut out = Vec::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("inotify ") else {
            continue;
        };
        let field = |name: &str| {
            rest.split_whitespace()
                .find_map(|w| w.strip_prefix(name)?.strip_prefix(':'))
        };
        let hex = |name: &str| u64::from_str_radix(field(name)?, 16).ok();
        let handle_hex = field("f_handle")?;
        let handle = (0..handle_hex.len() / 2)
            .map(|i| u8::from_str_radix(&handle_hex[2 * i..2 * i + 2], 16).ok())
            .collect::<Option<Vec<u8>>>()?;
        out.push(InotifyEntry {
            wd: field("wd")?.parse().ok()?,
            ino: hex("ino")?,
            sdev: hex("sdev")?,
            mask: hex("mask")? as u32,
            handle_type: field("fhandle-type")?.parse().ok()?,
            handle,
        });
    }
    Some(out)
}

/// Where the file system with kernel dev_t `sdev` is mounted (from
/// /proc/self/mountinfo), if it is.
pub fn mount_point_of(sdev: u64) -> Option<String> {
    let (major, minor) = (sdev >> 20, sdev & 0xf_ffff);
    let text = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    text.lines().find_map(|l| {
        let f: Vec<&str> = l.split(' ').collect();
        let (ma, mi) = f.get(2)?.split_once(':')?;
        (ma.parse::<u64>().ok()? == major && mi.parse::<u64>().ok()? == minor)
            .then(|| f.get(4).map(|s| s.to_string()))
            .flatten()
    })
}

#[cfg(test)]
mod inotify_tests {
    use super::*;

    #[test]
    fn inotify_fdinfo_parses() {
        let text = "pos:\t0\nflags:\t02004000\nmnt_id:\t15\nino:\t1057\ninotify wd:3 ino:e2 sdev:800001 mask:fce ignored_mask:0 fhandle-bytes:8 fhandle-type:1 f_handle:e200000028fb9c7b\n";
        let e = parse_inotify(text).expect("parse");
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].wd, 3);
        assert_eq!(e[0].ino, 0xe2);
        assert_eq!(e[0].sdev, 0x800001);
        assert_eq!(e[0].mask, 0xfce);
        assert_eq!(e[0].handle_type, 1);
        assert_eq!(e[0].handle, vec![0xe2, 0, 0, 0, 0x28, 0xfb, 0x9c, 0x7b]);
    }
}

/// How much more memory process `pid` may be charged before the kernel is
/// likely to run out: the least of the machine's `MemAvailable` and, for
/// its memory cgroup and each one above it, the limit minus the usage
/// (cgroup v2 `memory.max` and `memory.current`, v1
/// `memory.limit_in_bytes` and `memory.usage_in_bytes`; "max" is no
/// limit). `None` if `/proc/meminfo` or `/proc/PID/cgroup` cannot be read.
pub fn memory_headroom(pid: i32) -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let avail_kb: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    let mut room = avail_kb.saturating_mul(1024);
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    for line in cgroups.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let places: &[(&str, &str, &str)] = if controllers.is_empty() {
            &[
                ("/sys/fs/cgroup", "memory.max", "memory.current"),
                ("/sys/fs/cgroup/unified", "memory.max", "memory.current"),
            ]
        } else if controllers.split(',').any(|c| c == "memory") {
            &[(
                "/sys/fs/cgroup/memory",
                "memory.limit_in_bytes",
                "memory.usage_in_bytes",
            )]
        } else {
            continue;
        };
        for &(base, limit, usage) in places {
            let mut dir = Path::new(base).join(path.trim_start_matches('/'));
            while dir.starts_with(base) {
                let value = |f: &str| {
                    std::fs::read_to_string(dir.join(f))
                        .ok()
                        .and_then(|t| t.trim().parse::<u64>().ok())
                };
                if let (Some(l), Some(u)) = (value(limit), value(usage)) {
                    room = room.min(l.saturating_sub(u));
                }
                if !dir.pop() {
                    break;
                }
            }
        }
    }
    Some(room)
}

#[cfg(test)]
mod headroom_tests {
    #[test]
    fn memory_headroom_of_this_process_is_at_most_what_the_machine_has() {
        let room = super::memory_headroom(std::process::id() as i32).expect("headroom");
        let meminfo = std::fs::read_to_string("/proc/meminfo").expect("meminfo");
        let total_kb: u64 = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("MemTotal");
        assert!(room > 0 && room <= total_kb * 1024, "{room}");
        assert_eq!(super::memory_headroom(-1), None, "no such process");
    }
}
