//! What an image holds: the records of one process, as plain data.

use serde::{Deserialize, Serialize};

pub const INVENTORY_FILE: &str = "inventory.img";
pub const CORE_FILE: &str = "core.img";
pub const MM_FILE: &str = "mm.img";
pub const FILES_FILE: &str = "files.img";
pub const PAGES_FILE: &str = "pages.img";
/// Chunk file of (address, xxh3) pairs for every page the program had at
/// this image's moment: what the next increment is compared against.
pub const HASHES_FILE: &str = "hashes.img";
/// A pre-dump round's memory map (a final image has it in `mm.img`): what
/// a warm standby maps before writing the round's pages.
pub const LAYOUT_FILE: &str = "layout.img";

/// Name of the chunk file holding the saved contents of a deleted file.
pub fn deleted_file_name(desc: u32) -> String {
    format!("file-{desc}.img")
}

/// The image's table of contents.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Inventory {
    pub tern_version: String,
    pub pid: i32,
    pub comm: String,
    pub created_unix_ms: u64,
    pub kernel_release: String,
    pub page_size: u64,
    /// Summary of the page file, so `inspect` needs no scan.
    pub pages_bytes: u64,
    pub pages_stored_bytes: u64,
    /// The image this one is an increment of: its pages file holds only
    /// pages that changed since. Relative paths are relative to this image.
    pub parent: Option<String>,
    /// A memory-only increment taken while the program ran (`pre-dump`):
    /// it has no core, files or registers and cannot be restored alone.
    pub pre_dump: bool,
    /// xxh3 over the address and content hash of every page this image
    /// stores: equal hashes in consecutive rounds mean nothing changed.
    pub round_hash: u64,
    /// The namespaces of its own it lived in, recreated on restore.
    pub namespaces: Namespaces,
    /// The cgroup it was in in each hierarchy of the dumping machine,
    /// made (with its settings) if missing and joined on restore.
    pub cgroups: Vec<Cgroup>,
}

/// The cgroup a process was in, in one hierarchy.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct Cgroup {
    /// The hierarchy's controllers as `/proc/PID/cgroup` names them
    /// (`cpu,cpuacct`, `name=systemd`); empty: the unified (v2) hierarchy.
    pub controllers: String,
    /// The cgroup's path in the hierarchy (`/` for its root).
    pub path: String,
    /// Every directory from below the hierarchy's root down to the cgroup,
    /// with the settings a restore writes to the ones it has to make.
    pub dirs: Vec<CgroupDir>,
}

/// One directory of a cgroup's path, and its settings: (file, value) in
/// the order they are written back (`memory.limit_in_bytes`, `pids.max`,
/// `devices.list`, v2's `cgroup.subtree_control`...).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct CgroupDir {
    pub path: String,
    pub settings: Vec<(String, String)>,
}

/// Namespaces a process lived in that were not its dumper's, as far as
/// tern keeps them (the others are refused at dump time, or the same as
/// the dumper's: those are the restorer's on the other side).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct Namespaces {
    /// A UTS namespace of its own, with its names.
    pub uts: Option<Uts>,
    /// An IPC namespace of its own (it held no SysV objects at the dump).
    pub ipc: bool,
    /// A mount namespace of its own: its mount table.
    pub mnt: Option<MountTable>,
    /// A PID namespace of its own, of which the dumped process (the root
    /// of its tree) was the init: the ids there of it, its threads and its
    /// descendants, by the ids the rest of the image uses.
    pub pid: Option<PidIds>,
}

/// (id in the dumping machine's PID namespace, id in the program's own)
/// for processes and threads.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct PidIds {
    pub ids: Vec<(i32, i32)>,
    /// The dumped process was the namespace's init (pid 1); else it lived
    /// under the reaper of a namespace a tern restore made for it.
    pub init: bool,
}

impl PidIds {
    /// The id the program knows `host` by (`host` itself if unknown).
    pub fn inner(&self, host: i32) -> i32 {
        self.ids
            .iter()
            .find(|(h, _)| *h == host)
            .map_or(host, |(_, n)| *n)
    }
}

/// The mounts of a mount namespace, parents before their children; the
/// first is its root.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct MountTable {
    pub mounts: Vec<Mount>,
}

impl MountTable {
    /// The table without the tmpfs contents: what must not change while a
    /// standby is built (the contents are written again at the end).
    pub fn shape(&self) -> Vec<(u32, String, String, MountSourceKind)> {
        self.mounts
            .iter()
            .map(|m| {
                (
                    m.id,
                    m.mount_point.clone(),
                    m.fstype.clone(),
                    match &m.source {
                        MountSource::Host { .. } => MountSourceKind::Host,
                        MountSource::Fresh { .. } => MountSourceKind::Fresh,
                        MountSource::Within { .. } => MountSourceKind::Within,
                    },
                )
            })
            .collect()
    }
}

/// One mount of a mount namespace.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// Its id in the dumped namespace (the table's own references).
    pub id: u32,
    /// Its parent's id (its own for the root).
    pub parent: u32,
    /// Where it is mounted, in the program's namespace.
    pub mount_point: String,
    /// Per-mount `MS_*` flags (`MS_RDONLY`, `MS_NOSUID`, ...).
    pub flags: u64,
    pub fstype: String,
    /// The source field of mountinfo (informative; `Fresh` mounts use it).
    pub device: String,
    pub source: MountSource,
}

/// Where a mount's files come from.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum MountSource {
    /// A directory of the machine's own file systems, bound: a container's
    /// root file system, a volume, a cgroup directory. It must be at the
    /// same path on the restoring machine (`create`: made if missing, as a
    /// cgroup directory is).
    Host { path: String, create: bool },
    /// A file system of its own (proc, sysfs, devpts, mqueue, tmpfs),
    /// mounted anew with these options; a tmpfs with its files.
    Fresh {
        data: String,
        contents: Vec<TmpfsEntry>,
    },
    /// A part of another mount of this table (id `of`), bound.
    Within { of: u32, subpath: String },
}

/// The kind of a [`MountSource`], for comparisons.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum MountSourceKind {
    Host,
    Fresh,
    Within,
}

/// One file of a tmpfs, by its path inside the mount.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct TmpfsEntry {
    /// Relative to the mount's root, without a leading `/`.
    pub path: String,
    /// Permission bits (with setuid/setgid/sticky).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub kind: TmpfsKind,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum TmpfsKind {
    Dir,
    File(#[serde(with = "serde_bytes")] Vec<u8>),
    Symlink(String),
    /// A device node or FIFO: its type bits (`S_IFCHR`, ...) and device.
    Node {
        file_type: u32,
        rdev: u64,
    },
}

impl Namespaces {
    /// "uts (host name NAME), ipc", or "none".
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(u) = &self.uts {
            parts.push(format!(
                "uts (host name {:?}, domain name {:?})",
                u.hostname, u.domainname
            ));
        }
        if self.ipc {
            parts.push("ipc".to_string());
        }
        match &self.pid {
            Some(p) if p.init => parts.push("pid (it was its init)".to_string()),
            Some(_) => parts.push("pid (under a tern restore's reaper)".to_string()),
            None => {}
        }
        if let Some(t) = &self.mnt {
            let root = match t.mounts.first().map(|m| &m.source) {
                Some(MountSource::Host { path, .. }) => path.as_str(),
                _ => "?",
            };
            parts.push(format!("mnt ({} mounts, root {root})", t.mounts.len()));
        }
        if parts.is_empty() {
            "none".into()
        } else {
            parts.join(", ")
        }
    }
}

/// The names of a UTS namespace.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct Uts {
    pub hostname: String,
    pub domainname: String,
}

/// x86-64 general registers, in `struct user_regs_struct` order.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Regs {
    pub r15: u64,
    pub r14: u64,
    pub r13: u64,
    pub r12: u64,
    pub rbp: u64,
    pub rbx: u64,
    pub r11: u64,
    pub r10: u64,
    pub r9: u64,
    pub r8: u64,
    pub rax: u64,
    pub rcx: u64,
    pub rdx: u64,
    pub rsi: u64,
    pub rdi: u64,
    pub orig_rax: u64,
    pub rip: u64,
    pub cs: u64,
    pub eflags: u64,
    pub rsp: u64,
    pub ss: u64,
    pub fs_base: u64,
    pub gs_base: u64,
    pub ds: u64,
    pub es: u64,
    pub fs: u64,
    pub gs: u64,
}

/// What the thread was doing in the kernel when it was stopped.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyscallState {
    /// Running user code, or a syscall that had completed.
    None,
    /// Interrupted inside syscall `nr`; the saved registers re-issue it.
    Restart { nr: u64, code: i64 },
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SigAction {
    pub handler: u64,
    pub flags: u64,
    pub restorer: u64,
    pub mask: u64,
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AltStack {
    pub sp: u64,
    pub flags: i32,
    pub size: u64,
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rseq {
    pub addr: u64,
    pub len: u32,
    pub signature: u32,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct Creds {
    /// real, effective, saved, filesystem
    pub uid: [u32; 4],
    pub gid: [u32; 4],
    pub groups: Vec<u32>,
    pub cap_inheritable: u64,
    pub cap_permitted: u64,
    pub cap_effective: u64,
    pub cap_bounding: u64,
    pub cap_ambient: u64,
    pub securebits: u32,
    pub no_new_privs: bool,
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rlimit {
    pub resource: u32,
    pub cur: u64,
    pub max: u64,
}

/// Per-thread state. (One thread for now.)
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Thread {
    pub tid: i32,
    /// Registers as they must be on resume (a syscall interrupted by the
    /// dump is already rewound to be re-issued).
    pub regs: Regs,
    /// `NT_X86_XSTATE` regset (FPU, SSE, AVX...), as the kernel gave it.
    pub xstate: Vec<u8>,
    pub syscall: SyscallState,
    pub sigmask: u64,
    pub altstack: AltStack,
    pub rseq: Option<Rseq>,
    pub clear_child_tid: u64,
    pub robust_list_head: u64,
    pub robust_list_len: u64,
    pub comm: String,
}

/// Process-wide state other than memory and files.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Core {
    pub pid: i32,
    pub threads: Vec<Thread>,
    /// Index = signal number - 1, for signals 1..=64.
    pub sigactions: Vec<SigAction>,
    /// Signals pending at dump time (re-raised after restore).
    pub pending_signals: Vec<i32>,
    /// The queued signals' `siginfo_t`s, in queue order: replayed with
    /// their sender's data (a POSIX timer's id and value, a sigqueue value)
    /// where the kernel lets a process queue them.
    pub pending_siginfo: Vec<QueuedSignal>,
    pub creds: Creds,
    pub umask: u32,
    pub rlimits: Vec<Rlimit>,
    pub cwd: String,
    pub root: String,
    pub was_session_leader: bool,
    pub was_group_leader: bool,
    pub dumpable: i32,
    pub pdeath_signal: i32,
    pub personality: u32,
    /// `/proc/PID/oom_score_adj` (-1000..=1000).
    pub oom_score_adj: i32,
    /// Interval timers that were armed (`setitimer`).
    pub itimers: Vec<Itimer>,
    /// POSIX timers (`timer_create`), armed or not.
    pub posix_timers: Vec<PosixTimer>,
    /// Seccomp filters, oldest first (every thread has this same chain);
    /// empty: none.
    pub seccomp: Vec<SeccompFilter>,
}

/// One seccomp filter (`SECCOMP_SET_MODE_FILTER`).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct SeccompFilter {
    /// Install flags the kernel keeps (`SECCOMP_FILTER_FLAG_LOG`).
    pub flags: u64,
    /// The BPF program: raw `struct sock_filter`s, 8 bytes each.
    #[serde(with = "serde_bytes")]
    pub insns: Vec<u8>,
}

/// One queued signal.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct QueuedSignal {
    /// The thread it is queued for; 0: the whole process.
    pub tid: i32,
    /// The raw 128-byte `siginfo_t`.
    #[serde(with = "serde_bytes")]
    pub info: Vec<u8>,
}

/// A POSIX timer (`timer_create`), from /proc/PID/timers and an injected
/// `timer_gettime`; times in nanoseconds.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct PosixTimer {
    /// The timer id the program holds (restored as is).
    pub id: i32,
    pub clock: i32,
    /// `sigev_notify`: SIGEV_SIGNAL (0), SIGEV_NONE (1), SIGEV_THREAD_ID (4).
    pub notify: i32,
    /// With SIGEV_THREAD_ID: the thread signalled.
    pub notify_tid: i32,
    pub signo: i32,
    /// `sigev_value`, as the kernel shows it.
    pub sigval: u64,
    pub interval_ns: u64,
    /// Time left until it fires; 0: disarmed.
    pub value_ns: u64,
}

/// An armed `setitimer` timer; times in microseconds.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct Itimer {
    /// ITIMER_REAL (0), ITIMER_VIRTUAL (1) or ITIMER_PROF (2).
    pub which: i32,
    pub interval_us: u64,
    pub value_us: u64,
}

/// Identity of a file as seen at dump time; a restore checks it before use.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct FileIdentity {
    pub path: String,
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    pub mtime_sec: i64,
    pub mtime_nsec: i64,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum VmaKind {
    /// Private or shared anonymous memory (incl. heap and stack).
    Anon,
    /// A file mapping; private COW'd pages are in the page file.
    File {
        file: FileIdentity,
        offset: u64,
    },
    Vdso,
    Vvar,
    VvarVclock,
    Vsyscall,
}

pub const PROT_READ: u32 = 1;
pub const PROT_WRITE: u32 = 2;
pub const PROT_EXEC: u32 = 4;

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Vma {
    pub start: u64,
    pub end: u64,
    pub prot: u32,
    pub shared: bool,
    pub growsdown: bool,
    pub kind: VmaKind,
    /// `madvise` advice values to re-apply (MADV_DONTFORK, ...).
    pub advice: Vec<i32>,
    /// The name `/proc/PID/maps` shows (for humans).
    pub name: String,
}

impl Vma {
    pub fn len(&self) -> u64 {
        self.end - self.start
    }
    pub fn is_empty(&self) -> bool {
        self.end <= self.start
    }
}

/// A final image made for a migration carries, instead of the full page
/// table (`hashes.img`, 16 bytes per page: 4 MiB per GiB to write, send and
/// read while the program is frozen), only how it differs from its parent's.
pub const TABLE_DELTA_FILE: &str = "table-delta.img";

/// A final image made for a post-copy migration leaves some pages at the
/// source: the pages dirtied last in private anonymous memory. This file
/// lists them; the destination resumes the program without them and fills
/// each one when the program first touches it or when it arrives in the
/// background (read then from the stopped source, over the authenticated
/// channel). Their page-table entries are not part of the image.
pub const DEFERRED_FILE: &str = "deferred.img";

/// The pages a post-copy final image does not hold.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct Deferred {
    /// Address of every page still at the source, sorted.
    pub pages: Vec<u64>,
}

impl Deferred {
    /// Whether the list is sorted without repeats (what a reader must check
    /// before it searches it).
    pub fn well_formed(&self, page_size: u64) -> bool {
        self.pages.windows(2).all(|w| w[0] < w[1])
            && self.pages.iter().all(|p| p.is_multiple_of(page_size))
    }
}

/// The page table of an image as a change to its parent's.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct TableDelta {
    /// Entries of the full table.
    pub count: u64,
    /// (address, xxh3) entries new or changed since the parent, sorted.
    pub changed: Vec<(u64, u64)>,
    /// Addresses the parent had and this table has not, sorted.
    pub removed: Vec<u64>,
}

impl TableDelta {
    /// The delta from `old` to `new` (both sorted by address).
    pub fn between(old: &[(u64, u64)], new: &[(u64, u64)]) -> TableDelta {
        let (mut changed, mut removed) = (Vec::new(), Vec::new());
        let (mut i, mut j) = (0, 0);
        while i < old.len() || j < new.len() {
            match (old.get(i), new.get(j)) {
                (Some(o), Some(n)) if o.0 == n.0 => {
                    if o.1 != n.1 {
                        changed.push(*n);
                    }
                    i += 1;
                    j += 1;
                }
                (Some(o), Some(n)) if o.0 < n.0 => {
                    removed.push(o.0);
                    i += 1;
                }
                (Some(o), None) => {
                    removed.push(o.0);
                    i += 1;
                }
                (_, Some(n)) => {
                    changed.push(*n);
                    j += 1;
                }
                (None, None) => break,
            }
        }
        TableDelta {
            count: new.len() as u64,
            changed,
            removed,
        }
    }

    /// Whether this delta applies to `old` (what [`apply`](Self::apply)
    /// checks), in O(delta × log old) instead of building the new table.
    pub fn fits(&self, old: &[(u64, u64)]) -> bool {
        let has = |a: u64| old.binary_search_by_key(&a, |e| e.0).is_ok();
        let sorted = self.changed.windows(2).all(|w| w[0].0 < w[1].0)
            && self.removed.windows(2).all(|w| w[0] < w[1]);
        let mut c = 0;
        for &r in &self.removed {
            while c < self.changed.len() && self.changed[c].0 < r {
                c += 1;
            }
            if !has(r) || self.changed.get(c).is_some_and(|e| e.0 == r) {
                return false;
            }
        }
        let added = self.changed.iter().filter(|e| !has(e.0)).count() as u64;
        sorted
            && (old.len() as u64 + added).checked_sub(self.removed.len() as u64) == Some(self.count)
    }

    /// `old` with this delta applied; `None` if the delta does not fit it
    /// (removes an address `old` lacks, unsorted, or a wrong count).
    pub fn apply(&self, old: &[(u64, u64)]) -> Option<Vec<(u64, u64)>> {
        let mut out = Vec::with_capacity(self.count.min(1 << 28) as usize);
        let (mut i, mut c, mut r) = (0, 0, 0);
        loop {
            let next_old = old.get(i).map(|e| e.0);
            let next_changed = self.changed.get(c).map(|e| e.0);
            let next_removed = self.removed.get(r).copied();
            let Some(a) = [next_old, next_changed, next_removed]
                .into_iter()
                .flatten()
                .min()
            else {
                break;
            };
            if next_removed == Some(a) {
                if next_old != Some(a) || next_changed == Some(a) {
                    return None;
                }
                i += 1;
                r += 1;
                continue;
            }
            if next_changed == Some(a) {
                out.push(self.changed[c]);
                c += 1;
                if next_old == Some(a) {
                    i += 1;
                }
                continue;
            }
            out.push(old[i]);
            i += 1;
        }
        let sorted = self.changed.windows(2).all(|w| w[0].0 < w[1].0)
            && self.removed.windows(2).all(|w| w[0] < w[1]);
        (sorted && out.len() as u64 == self.count).then_some(out)
    }
}

/// The memory map of a pre-dump round.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    pub vmas: Vec<Vma>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Mm {
    pub vmas: Vec<Vma>,
    pub start_code: u64,
    pub end_code: u64,
    pub start_data: u64,
    pub end_data: u64,
    pub start_brk: u64,
    pub brk: u64,
    pub start_stack: u64,
    pub arg_start: u64,
    pub arg_end: u64,
    pub env_start: u64,
    pub env_end: u64,
    /// Raw auxiliary vector words (pairs, ending with AT_NULL).
    pub auxv: Vec<u64>,
    pub exe: FileIdentity,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum FdKind {
    /// A file reopened by path (regular files, /dev/null and friends).
    Path {
        path: String,
        flags: i32,
        offset: u64,
        file: FileIdentity,
    },
    /// A deleted-but-open regular file: contents saved in
    /// [`deleted_file_name`]`(desc)`; recreated at `path` and unlinked again.
    Deleted {
        path: String,
        flags: i32,
        offset: u64,
        mode: u32,
        size: u64,
    },
    /// stdio (fd 0-2) connected to a pipe, tty or socket: restored as the
    /// restorer's own fd of the same number.
    Inherited { what: String },
    /// One end of a pipe listed in [`Files::pipes`]; `flags` keeps O_NONBLOCK.
    Pipe {
        id: u64,
        write_end: bool,
        flags: i32,
    },
    /// An eventfd with its counter.
    EventFd {
        count: u64,
        semaphore: bool,
        flags: i32,
    },
    /// A timerfd: clock, expirations not yet read, time left and period.
    TimerFd {
        clockid: i32,
        ticks: u64,
        value_ns: u64,
        interval_ns: u64,
        flags: i32,
    },
    /// A signalfd and the signals it reads.
    SignalFd { mask: u64, flags: i32 },
    /// An epoll instance and what it watches (fds of this process).
    Epoll { targets: Vec<EpollTarget> },
    /// A TCP or UDP socket over IPv4 or IPv6.
    Inet(InetSocket),
    /// An inotify instance and its watches (events queued but not yet
    /// read are not kept).
    Inotify {
        flags: i32,
        watches: Vec<InotifyWatch>,
    },
    /// A FIFO (named pipe) reopened by path, with what was buffered in it
    /// (put back unless the FIFO still holds data: then someone else kept
    /// it open, and its buffer with it).
    Fifo {
        path: String,
        flags: i32,
        /// The FIFO's inode: fds of one FIFO share one buffer.
        ino: u64,
        /// Capacity (`F_GETPIPE_SZ`).
        size: u32,
        data: Vec<u8>,
    },
    /// A memfd (`memfd_create`): contents saved like a deleted file's, in
    /// [`deleted_file_name`]`(desc)`.
    Memfd {
        /// The name given to memfd_create (without `memfd:`).
        name: String,
        offset: u64,
        size: u64,
        /// `F_GET_SEALS` (exactly `F_SEAL_SEAL`: made without
        /// `MFD_ALLOW_SEALING`, or sealed with nothing else: the same).
        seals: i32,
        mode: u32,
    },
    /// One end of a connected pair of unix sockets both held by the
    /// program (or its tree): a `socketpair`, or a connection accepted by
    /// a listener bound to a path and its client; with the bytes waiting
    /// to be read at it.
    UnixPair {
        /// The pair: the smaller of the two ends' inodes.
        pair: u64,
        /// This end's inode (on the source; names the end in the pair).
        ino: u64,
        /// `SOCK_STREAM`, `SOCK_DGRAM` or `SOCK_SEQPACKET`.
        kind: i32,
        /// `O_NONBLOCK` of the open file description.
        flags: i32,
        queued: Vec<u8>,
        /// This end's name: the path of the listener that accepted it
        /// (`accepted`), or the path a client bound before it connected.
        /// `None`: unnamed.
        name: Option<Vec<u8>>,
        /// This end was accepted by a listener bound to `name`.
        accepted: bool,
    },
    /// (Appended last: postcard numbers variants.)
    /// An fd shared with a process outside the dump (a supervisor's pipe, a
    /// socket to a peer elsewhere), named by the user at dump time
    /// (`--external`): nothing of it is saved; the restore is given a
    /// replacement under `name` (`--inherit-fd fd[N]:NAME`) or refuses.
    External {
        name: String,
        /// What it was on the source (`pipe:[INO]`, `socket:[INO]`, with
        /// its access mode), for messages and `tern inspect`.
        what: String,
        /// `O_NONBLOCK` of the open file description.
        flags: i32,
    },
    /// A unix socket bound to a name and not connected: a listener (with
    /// no connection waiting to be accepted) or a datagram socket (with no
    /// datagram waiting). Rebound to the same name on restore.
    UnixBound {
        /// `sun_path` as bound: an absolute path, or `\0` and an
        /// abstract name (per network namespace).
        #[serde(with = "serde_bytes")]
        name: Vec<u8>,
        /// `SOCK_STREAM`, `SOCK_DGRAM` or `SOCK_SEQPACKET`.
        kind: i32,
        /// `O_NONBLOCK` of the open file description.
        flags: i32,
        /// Listening, with this backlog.
        backlog: Option<u32>,
        /// A path name's socket file: its mode, owner and group.
        file: Option<(u32, u32, u32)>,
    },
    /// A pidfd (`pidfd_open`, `CLONE_PIDFD`) of a process of the image's
    /// tree (or of the process itself): reopened on the restored one,
    /// which keeps its pid.
    Pidfd {
        /// The process it refers to, by the image's pid.
        pid: i32,
        /// `O_NONBLOCK` (`PIDFD_NONBLOCK`).
        flags: i32,
    },
    /// A POSIX message queue (`mq_open`), by name: opened again by name
    /// in the restored program's IPC namespace, where it must exist (its
    /// messages are the machine's, as a file's contents are).
    Mqueue {
        /// Its name, with the leading `/`.
        name: String,
        /// Access mode and `O_NONBLOCK`.
        flags: i32,
    },
    /// One end of a connected pair of unix sockets whose other end was
    /// closed (the JVM keeps one as its "pre-close" fd): reading gives
    /// what waits, then end of file; writing fails with EPIPE.
    UnixWidowed {
        /// `SOCK_STREAM`, `SOCK_DGRAM` or `SOCK_SEQPACKET`.
        kind: i32,
        /// `O_NONBLOCK` of the open file description.
        flags: i32,
        queued: Vec<u8>,
    },
}

/// An IPv4/IPv6 TCP or UDP socket.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct InetSocket {
    /// `AF_INET` or `AF_INET6`.
    pub family: i32,
    /// `SOCK_STREAM` or `SOCK_DGRAM`.
    pub kind: i32,
    pub protocol: i32,
    /// `O_NONBLOCK` of the open file description.
    pub flags: i32,
    /// `getsockname`; `None` if never bound.
    pub local: Option<std::net::SocketAddr>,
    /// `getpeername`; `None` if not connected.
    pub peer: Option<std::net::SocketAddr>,
    pub state: InetState,
    /// Options that differ from a fresh socket's are set again on restore.
    pub options: Vec<SockOpt>,
}

impl InetSocket {
    /// "TCP local -> peer" (`*` for an address it does not have).
    pub fn endpoints(&self) -> String {
        let show = |a: &Option<std::net::SocketAddr>| a.map_or("*".to_string(), |a| a.to_string());
        // SOCK_STREAM on Linux (wire does not depend on libc).
        let proto = if self.kind == 1 { "TCP" } else { "UDP" };
        format!("{proto} {} -> {}", show(&self.local), show(&self.peer))
    }
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum InetState {
    /// Created, maybe bound, neither listening nor connected (or UDP).
    Open,
    /// A TCP socket listening with this backlog (its accept queue was empty).
    Listening { backlog: u32 },
    /// A connected UDP socket (pending datagrams are not kept).
    Connected,
    /// An established TCP connection, taken in repair mode.
    Established(Box<TcpConnection>),
}

/// What TCP repair mode (`TCP_REPAIR`) reads out of an established
/// connection and writes back into a new socket.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct TcpConnection {
    /// Sequence number of the first byte of `send_queue`
    /// (`TCP_QUEUE_SEQ` of the send queue minus its length).
    pub send_seq: u32,
    /// Sequence number of the first byte of `recv_queue`.
    pub recv_seq: u32,
    /// Bytes written by the program not yet acknowledged by the peer, the
    /// last `unsent` of them not yet sent at all.
    pub send_queue: Vec<u8>,
    pub unsent: u32,
    /// Bytes received and acknowledged, not yet read by the program.
    pub recv_queue: Vec<u8>,
    /// `TCP_MAXSEG` in repair mode: the MSS clamp.
    pub mss: u32,
    /// Window scale options agreed at the handshake (`None`: not used).
    pub wscale: Option<(u8, u8)>,
    pub sack: bool,
    pub timestamps: bool,
    /// `TCP_TIMESTAMP`: the connection's timestamp clock, so the peer sees
    /// it carry on.
    pub timestamp: u32,
    /// `TCP_REPAIR_WINDOW`: snd_wl1, snd_wnd, max_window, rcv_wnd, rcv_wup.
    pub window: [u32; 5],
}

/// A socket option as `getsockopt` returned it.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct SockOpt {
    pub level: i32,
    pub name: i32,
    pub value: Vec<u8>,
}

/// One file an epoll instance watches.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct EpollTarget {
    /// The watched fd, by its number in the process.
    pub fd: i32,
    /// `EPOLLIN | EPOLLET | ...`.
    pub events: u32,
    pub data: u64,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Fd {
    pub fd: i32,
    pub cloexec: bool,
    /// Open file description id: fds with the same id share one
    /// description (offset, flags) and are restored as dups.
    pub desc: u32,
    pub kind: FdKind,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct Files {
    pub fds: Vec<Fd>,
    /// Pipes whose both ends the process holds, with their buffered data.
    pub pipes: Vec<Pipe>,
    /// nftables table (family inet) that drops the packets of the image's
    /// established TCP connections in the dumped program's network
    /// namespace, left in place by the dump so no kernel resets them;
    /// `tern restore` removes it once they live again.
    pub net_lock: Option<String>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Pipe {
    /// The pipe's inode number at dump time (what [`FdKind::Pipe`] names).
    pub id: u64,
    /// Capacity (`F_GETPIPE_SZ`).
    pub size: u32,
    /// Bytes buffered in it, in order.
    pub data: Vec<u8>,
}

/// A process tree's image: `tree.img` beside the root process's own image
/// (which is complete only once its inventory is written, after this);
/// every other process's image is in a sub-directory of its own.
pub const TREE_FILE: &str = "tree.img";

/// Sub-directory of a tree image holding process `pid`'s image.
pub fn tree_process_dir(pid: i32) -> String {
    format!("proc-{pid}")
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct Tree {
    /// The root first; every parent before its children.
    pub processes: Vec<TreeProcess>,
    /// Pipes whose ends more than one process holds, with their data.
    pub pipes: Vec<Pipe>,
    /// Open file descriptions held by more than one process (each group:
    /// (pid, fd) members; the first member's process opens it).
    pub shared_fds: Vec<Vec<(i32, i32)>>,
    /// Shared anonymous memory objects mapped by more than one process
    /// (each group: (pid, mapping start, offset into the object) members;
    /// the first member's process makes it).
    pub shared_memory: Vec<Vec<(i32, u64, u64)>>,
    /// Children that had exited and were not reaped yet by their parent
    /// (a process of the tree): made again as zombies with their status.
    pub zombies: Vec<Zombie>,
}

/// A child that has exited, waiting for its parent to reap it.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Zombie {
    pub pid: i32,
    pub ppid: i32,
    pub pgid: i32,
    pub sid: i32,
    /// Its exit status, as `waitpid` reports it.
    pub status: i32,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct TreeProcess {
    pub pid: i32,
    pub ppid: i32,
    pub pgid: i32,
    pub sid: i32,
}

/// One inotify watch: its descriptor number, event mask and the path of
/// what it watches (resolved from the kernel's file handle at dump time).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct InotifyWatch {
    pub wd: i32,
    pub mask: u32,
    pub path: String,
}

/// A migration's staging directory, removed however the migration ends
/// (used by both ends).
#[derive(Debug)]
pub struct Staging(pub std::path::PathBuf);

impl Drop for Staging {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
