//! The source's record of a migration whose commit was sent: written
//! before `Commit` leaves, removed once the outcome is known. If `tern
//! migrate` dies in between (or cannot learn the outcome), the program is
//! left stopped (SIGSTOP) and this record is what `tern resolve` settles
//! it from: it asks the destination (`Ask`) and then ends this copy (it
//! runs there) or resumes it (it was discarded there).
//!
//! One file per program, `/run/tern/pending/PID`, as `key value` lines.

use crate::error::{Context, EngineError, Result};
use std::io;
use std::path::{Path, PathBuf};
use tracing::{info, warn};

/// Where records live: under /run (tmpfs), which a reboot empties along
/// with the processes they are about.
pub const DIR: &str = "/run/tern/pending";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub pid: i32,
    /// Start time of `pid` (see [`tern_sys::proc::start_time`]).
    pub start: u64,
    /// The destination, HOST:PORT.
    pub to: String,
    pub session: u64,
    /// The nftables table that locks its TCP connections, if any.
    pub lock_table: Option<String>,
    /// Its sockets left in TCP repair mode.
    pub repaired_fds: Vec<i32>,
    /// The other processes of its tree, each held as it is.
    pub others: Vec<Held>,
}

/// One more process of a tree left stopped with the root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    pub pid: i32,
    pub start: u64,
    pub lock_table: Option<String>,
    pub repaired_fds: Vec<i32>,
}

impl Record {
    pub fn path_of(pid: i32) -> PathBuf {
        Path::new(DIR).join(pid.to_string())
    }

    fn text(&self) -> String {
        let mut t = format!(
            "pid {}\nstart {}\nto {}\nsession {:016x}\n",
            self.pid, self.start, self.to, self.session
        );
        if let Some(l) = &self.lock_table {
            t.push_str(&format!("lock_table {l}\n"));
        }
        for fd in &self.repaired_fds {
            t.push_str(&format!("repaired_fd {fd}\n"));
        }
        for h in &self.others {
            t.push_str(&format!("process {} {}\n", h.pid, h.start));
            if let Some(l) = &h.lock_table {
                t.push_str(&format!("process_lock_table {} {l}\n", h.pid));
            }
            for fd in &h.repaired_fds {
                t.push_str(&format!("process_repaired_fd {} {fd}\n", h.pid));
            }
        }
        t
    }

    fn parse(text: &str) -> std::result::Result<Record, String> {
        let (mut pid, mut start, mut to, mut session) = (None, None, None, None);
        let mut r = Record {
            pid: 0,
            start: 0,
            to: String::new(),
            session: 0,
            lock_table: None,
            repaired_fds: Vec::new(),
            others: Vec::new(),
        };
        for line in text.lines() {
            let (k, v) = line
                .split_once(' ')
                .ok_or_else(|| format!("malformed line {line:?}"))?;
            let bad = || format!("malformed {k} {v:?}");
            // "PID VALUE" of the lines about another process of the tree.
            let other = |r: &mut Record| -> std::result::Result<(usize, String), String> {
                let (p, rest) = v.split_once(' ').ok_or_else(bad)?;
                let p = p.parse::<i32>().map_err(|_| bad())?;
                let at = r
                    .others
                    .iter()
                    .position(|h| h.pid == p)
                    .ok_or_else(|| format!("{k} of process {p}, which is not listed before"))?;
                Ok((at, rest.to_string()))
            };
            match k {
                "pid" => pid = Some(v.parse::<i32>().map_err(|_| bad())?),
                "start" => start = Some(v.parse::<u64>().map_err(|_| bad())?),
                "to" => to = Some(v.to_string()),
                "session" => session = Some(u64::from_str_radix(v, 16).map_err(|_| bad())?),
                "lock_table" => r.lock_table = Some(v.to_string()),
                "repaired_fd" => r.repaired_fds.push(v.parse::<i32>().map_err(|_| bad())?),
                "process" => {
                    let (p, st) = v.split_once(' ').ok_or_else(bad)?;
                    r.others.push(Held {
                        pid: p.parse().map_err(|_| bad())?,
                        start: st.parse().map_err(|_| bad())?,
                        lock_table: None,
                        repaired_fds: Vec::new(),
                    });
                }
                "process_lock_table" => {
                    let (at, table) = other(&mut r)?;
                    r.others[at].lock_table = Some(table);
                }
                "process_repaired_fd" => {
                    let (at, fd) = other(&mut r)?;
                    r.others[at]
                        .repaired_fds
                        .push(fd.parse().map_err(|_| bad())?);
                }
                _ => return Err(format!("unknown key {k:?}")),
            }
        }
        let missing = |what: &str| format!("no {what}");
        r.pid = pid.ok_or_else(|| missing("pid"))?;
        r.start = start.ok_or_else(|| missing("start"))?;
        r.to = to.ok_or_else(|| missing("to"))?;
        r.session = session.ok_or_else(|| missing("session"))?;
        Ok(r)
    }

    /// Every process the record holds, the root first.
    pub fn held(&self) -> Vec<Held> {
        let root = Held {
            pid: self.pid,
            start: self.start,
            lock_table: self.lock_table.clone(),
            repaired_fds: self.repaired_fds.clone(),
        };
        std::iter::once(root)
            .chain(self.others.iter().cloned())
            .collect()
    }

    /// Write it (replacing an older one of the same pid).
    pub fn write(&self) -> io::Result<()> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(DIR)?;
        let path = Self::path_of(self.pid);
        let tmp = path.with_extension("new");
        std::fs::write(&tmp, self.text())?;
        std::fs::rename(&tmp, &path)
    }

    pub fn remove(pid: i32) {
        match std::fs::remove_file(Self::path_of(pid)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => warn!(pid, "removing the pending-migration record: {e}"),
        }
    }

    pub fn load(pid: i32) -> Result<Record> {
        let path = Self::path_of(pid);
        let text =
            std::fs::read_to_string(&path).ctx(pid, || format!("read {}", path.display()))?;
        let r = Record::parse(&text).map_err(|e| EngineError::BadRecord {
            pid,
            what: format!("{}: {e}", path.display()),
        })?;
        if r.pid != pid {
            return Err(EngineError::BadRecord {
                pid,
                what: format!("{} is about process {}", path.display(), r.pid),
            });
        }
        Ok(r)
    }

    /// Pids with a record, sorted.
    pub fn list() -> io::Result<Vec<i32>> {
        let mut pids = Vec::new();
        match std::fs::read_dir(DIR) {
            Ok(entries) => {
                for e in entries.flatten() {
                    if let Some(pid) = e.file_name().to_str().and_then(|n| n.parse().ok()) {
                        pids.push(pid);
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        pids.sort();
        Ok(pids)
    }
}

/// How a pending migration was settled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settled {
    /// It runs on the destination: this copy was ended.
    RunsThere { pid: i32, ns_pid: i32 },
    /// The destination discarded its copy: this one was resumed.
    ResumedHere,
    /// The program is no longer here (ended by someone else).
    Gone,
}

/// Settle a pending migration whose destination answered `outcome`:
/// every process of it (a tree's children before the root).
/// `Ok(None)`: the destination cannot tell yet (nothing was done).
pub fn settle(r: &Record, outcome: tern_wire::net::SessionOutcome) -> Result<Option<Settled>> {
    use tern_wire::net::SessionOutcome;
    let pid = r.pid;
    if tern_sys::proc::start_time(pid) != Some(r.start) {
        Record::remove(pid);
        return Ok(Some(Settled::Gone));
    }
    let settled = match outcome {
        SessionOutcome::Running { pid: there, ns_pid } => Settled::RunsThere { pid: there, ns_pid },
        SessionOutcome::Discarded => Settled::ResumedHere,
        SessionOutcome::Undecided | SessionOutcome::Unknown => return Ok(None),
    };
    for h in r.held().iter().rev() {
        settle_process(h, &settled)?;
    }
    Record::remove(pid);
    info!(
        pid,
        ?settled,
        processes = r.others.len() + 1,
        "pending migration settled"
    );
    Ok(Some(settled))
}

/// End one held process (its copy runs there) or resume it (discarded
/// there), lifting the lock on its connections either way. One that is no
/// longer there (a child ended by someone else) is left alone.
fn settle_process(h: &Held, settled: &Settled) -> Result<()> {
    let pid = h.pid;
    if tern_sys::proc::start_time(pid) != Some(h.start) {
        return Ok(());
    }
    // Held open: the namespace of its lock outlives it once killed.
    let netns = match &h.lock_table {
        Some(_) => Some(
            std::fs::File::open(format!("/proc/{pid}/ns/net"))
                .ctx(pid, || "open its network namespace".into())?,
        ),
        None => None,
    };
    let lift_lock = || -> Result<()> {
        if let (Some(table), Some(ns)) = (&h.lock_table, &netns) {
            use std::os::fd::AsRawFd;
            let path = PathBuf::from(format!("/proc/self/fd/{}", ns.as_raw_fd()));
            tern_sys::netlock::remove_table(Some(&path), table).ctx(pid, || {
                format!("remove the nftables table inet {table} locking its connections")
            })?;
        }
        Ok(())
    };
    match settled {
        Settled::RunsThere { .. } => {
            // Its sockets are still in repair mode: they vanish silently.
            tern_sys::signal(pid, libc::SIGKILL).ctx(pid, || "kill".into())?;
            lift_lock()
        }
        Settled::ResumedHere => {
            for &fd in &h.repaired_fds {
                tern_state::sockets::leave_repair(pid, fd)?;
            }
            lift_lock()?;
            tern_sys::signal(pid, libc::SIGCONT).ctx(pid, || "SIGCONT".into())
        }
        Settled::Gone => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_roundtrip_and_bad_ones_are_named() {
        let r = Record {
            pid: 42,
            start: 1234,
            to: "10.0.0.2:7070".into(),
            session: 0xdead_beef_0000_0001,
            lock_table: Some("tern_lock_42".into()),
            repaired_fds: vec![3, 7],
            others: vec![
                Held {
                    pid: 43,
                    start: 1235,
                    lock_table: Some("tern_lock_43".into()),
                    repaired_fds: vec![5],
                },
                Held {
                    pid: 44,
                    start: 1236,
                    lock_table: None,
                    repaired_fds: Vec::new(),
                },
            ],
        };
        assert_eq!(Record::parse(&r.text()), Ok(r));
        assert!(Record::parse("process_repaired_fd 9 3\n")
            .unwrap_err()
            .contains("not listed"));
        assert!(Record::parse("pid 1\n").unwrap_err().contains("no start"));
        assert!(Record::parse("pid x\n").unwrap_err().contains("pid"));
        assert!(Record::parse("what 1\n").unwrap_err().contains("what"));
    }
}
