//! The destination's record of migrations that reached `Ready`, so that a
//! source which lost the link after sending `Commit` can learn what became
//! of its program (`Ask`), even from a daemon restarted since.
//!
//! One small file per migration in `<work dir>/tern-sessions`, replaced
//! atomically (write + rename) at each step:
//! - `ready PID NS_PID START`: rebuilt, stopped, traced by the daemon with
//!   PTRACE_O_EXITKILL; written before `Ready` is sent;
//! - `running PID NS_PID`: resumed (written right after);
//! - `discarded`: killed before it ever ran.
//!
//! A `ready` entry of a migration no live session holds settles itself:
//! if its daemon died the kernel killed the program (EXITKILL) unless it
//! had already been let go, so the program alive (same pid, same start
//! time) means resumed, gone means discarded.

use std::collections::HashSet;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};
use tern_wire::net::SessionOutcome;
use tracing::warn;

/// Entries older than this are removed when a daemon starts.
const KEEP_FOR: Duration = Duration::from_secs(7 * 24 * 3600);

#[derive(Debug)]
pub struct Journal {
    dir: PathBuf,
    /// Sessions in progress in this daemon.
    live: Mutex<HashSet<u64>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Entry {
    Ready { pid: i32, ns_pid: i32, start: u64 },
    Running { pid: i32, ns_pid: i32 },
    Discarded,
}

impl Entry {
    fn parse(text: &str) -> Option<Entry> {
        let mut w = text.split_ascii_whitespace();
        let e = match w.next()? {
            "ready" => Entry::Ready {
                pid: w.next()?.parse().ok()?,
                ns_pid: w.next()?.parse().ok()?,
                start: w.next()?.parse().ok()?,
            },
            "running" => Entry::Running {
                pid: w.next()?.parse().ok()?,
                ns_pid: w.next()?.parse().ok()?,
            },
            "discarded" => Entry::Discarded,
            _ => return None,
        };
        w.next().is_none().then_some(e)
    }

    fn text(self) -> String {
        match self {
            Entry::Ready { pid, ns_pid, start } => format!("ready {pid} {ns_pid} {start}\n"),
            Entry::Running { pid, ns_pid } => format!("running {pid} {ns_pid}\n"),
            Entry::Discarded => "discarded\n".into(),
        }
    }
}

impl Journal {
    /// Open (create) the journal under `work_dir`, dropping old entries.
    pub fn open(work_dir: &Path) -> io::Result<Journal> {
        use std::os::unix::fs::DirBuilderExt;
        let dir = work_dir.join("tern-sessions");
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)?;
        // What it says decides whether a program is resumed or killed: a
        // directory someone else made (the default work dir, /dev/shm, is
        // writable by all) is refused.
        {
            use std::os::unix::fs::MetadataExt;
            let m = std::fs::symlink_metadata(&dir)?;
            let me = nix::unistd::geteuid().as_raw();
            if !m.is_dir() || m.uid() != me || m.mode() & 0o077 != 0 {
                return Err(io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    format!(
                        "{} must be a directory of uid {me} with mode 700 (it is uid {}, mode {:o}{}): remove it",
                        dir.display(),
                        m.uid(),
                        m.mode() & 0o7777,
                        if m.file_type().is_symlink() { ", a symlink" } else { "" }
                    ),
                ));
            }
        }
        let now = SystemTime::now();
        for e in std::fs::read_dir(&dir)?.flatten() {
            let old = e
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| now.duration_since(t).ok())
                .is_some_and(|age| age > KEEP_FOR);
            if old {
                let _ = std::fs::remove_file(e.path());
            }
        }
        Ok(Journal {
            dir,
            live: Mutex::new(HashSet::new()),
        })
    }

    fn path(&self, session: u64) -> PathBuf {
        self.dir.join(format!("{session:016x}"))
    }

    /// A session starts in this daemon; false if the id was seen before
    /// (a replayed or colliding `Hello`).
    pub fn begin(&self, session: u64) -> bool {
        let fresh = self.live.lock().is_ok_and(|mut l| l.insert(session));
        fresh && !self.path(session).exists()
    }

    /// The session ended (however).
    pub fn end(&self, session: u64) {
        if let Ok(mut l) = self.live.lock() {
            l.remove(&session);
        }
    }

    fn write(&self, session: u64, e: Entry) -> io::Result<()> {
        let path = self.path(session);
        let tmp = path.with_extension("new");
        std::fs::write(&tmp, e.text())?;
        std::fs::rename(&tmp, &path)
    }

    /// The program is rebuilt as `pid`, not yet resumed.
    pub fn ready(&self, session: u64, pid: i32, ns_pid: i32) -> io::Result<()> {
        let start = tern_sys::proc::start_time(pid)
            .ok_or_else(|| io::Error::other(format!("the rebuilt program (pid {pid}) is gone")))?;
        self.write(session, Entry::Ready { pid, ns_pid, start })
    }

    pub fn running(&self, session: u64, pid: i32, ns_pid: i32) {
        if let Err(e) = self.write(session, Entry::Running { pid, ns_pid }) {
            warn!(session, "recording that the program runs: {e}");
        }
    }

    /// Only for a session that wrote `ready` (others are never asked about).
    pub fn discarded(&self, session: u64) {
        if self.path(session).exists() {
            if let Err(e) = self.write(session, Entry::Discarded) {
                warn!(session, "recording the discarded program: {e}");
            }
        }
    }

    /// What became of `session`, as far as this machine knows.
    pub fn outcome(&self, session: u64) -> SessionOutcome {
        let Some(entry) = std::fs::read_to_string(self.path(session))
            .ok()
            .and_then(|t| Entry::parse(&t))
        else {
            return SessionOutcome::Unknown;
        };
        match entry {
            Entry::Running { pid, ns_pid } => SessionOutcome::Running { pid, ns_pid },
            Entry::Discarded => SessionOutcome::Discarded,
            Entry::Ready { .. } if self.live.lock().map_or(true, |l| l.contains(&session)) => {
                SessionOutcome::Undecided
            }
            Entry::Ready { pid, ns_pid, start } => {
                // Its daemon is gone: settle it for good.
                let settled = if tern_sys::proc::start_time(pid) == Some(start) {
                    Entry::Running { pid, ns_pid }
                } else {
                    Entry::Discarded
                };
                if let Err(e) = self.write(session, settled) {
                    warn!(session, "recording the outcome: {e}");
                }
                match settled {
                    Entry::Running { pid, ns_pid } => SessionOutcome::Running { pid, ns_pid },
                    _ => SessionOutcome::Discarded,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_roundtrip_and_garbage_is_not_an_entry() {
        for e in [
            Entry::Ready {
                pid: 7,
                ns_pid: 1,
                start: 99,
            },
            Entry::Running { pid: 7, ns_pid: 1 },
            Entry::Discarded,
        ] {
            assert_eq!(Entry::parse(&e.text()), Some(e));
        }
        for bad in ["", "ready 7 1", "running x 1", "discarded 3", "other"] {
            assert_eq!(Entry::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_ready_program_whose_daemon_is_gone_settles_by_whether_it_lives() {
        let dir = std::env::temp_dir().join(format!("tern-journal-test-{}", std::process::id()));
        let j = Journal::open(&dir).expect("open");
        let me = std::process::id() as i32;
        assert!(j.begin(1));
        j.ready(1, me, 1).expect("ready");
        assert_eq!(j.outcome(1), SessionOutcome::Undecided);
        j.end(1);
        // Alive with the same start time: it was let go, so it runs.
        assert_eq!(j.outcome(1), SessionOutcome::Running { pid: me, ns_pid: 1 });
        // A recorded start time that does not match: gone, so discarded.
        let stale = Entry::Ready {
            pid: me,
            ns_pid: me,
            start: 1,
        };
        j.write(2, stale).expect("write");
        assert_eq!(j.outcome(2), SessionOutcome::Discarded);
        assert_eq!(j.outcome(3), SessionOutcome::Unknown);
        assert!(!j.begin(2), "an id seen before is refused");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
