//! The cgroup freezer (`--freezer cgroup`): every process of a tree is
//! stopped at once, by the kernel, before tern seizes them one by one.
//!
//! tern makes a cgroup of its own (cgroup v2 `cgroup.freeze` where a
//! cgroup2 hierarchy is mounted, Linux 5.2+; else the v1 freezer
//! controller's `freezer.state`), moves the processes into it, freezes it,
//! seizes every thread (PTRACE_SEIZE + PTRACE_INTERRUPT work on frozen
//! tasks), thaws it (each thread then traps into its ptrace stop before it
//! runs any instruction of its own), and on drop puts every process back
//! into the cgroup it came from and removes its own.

use crate::cgroup::Hierarchy;
use crate::error::{Context, Error, Result};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tracing::warn;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// `cgroup.freeze` / `cgroup.events` (cgroup2).
    V2,
    /// `freezer.state` (the v1 freezer controller).
    V1,
}

#[derive(Debug)]
pub struct CgroupFreezer {
    version: Version,
    /// The hierarchy, as tern's mount table shows it.
    hierarchy: Hierarchy,
    /// Our cgroup in it.
    dir: PathBuf,
    /// (pid, the cgroup directory it came from), to go back on drop.
    moved: Vec<(i32, PathBuf)>,
}

fn err(pid: i32, what: String, e: std::io::Error) -> Error {
    Error::Sys {
        pid,
        what,
        source: e,
    }
}

/// The hierarchy a freezer of `version` works in, wherever tern's mount
/// table has it (hybrid systems: cgroup2 at /sys/fs/cgroup/unified): the
/// cgroup2 one, or the v1 one with the freezer controller.
fn hierarchy(version: Version) -> Option<Hierarchy> {
    crate::cgroup::hierarchies()
        .ok()?
        .into_iter()
        .find(|h| match version {
            Version::V2 => h.controllers.is_empty(),
            Version::V1 => h.controllers.split(',').any(|c| c == "freezer"),
        })
}

impl CgroupFreezer {
    /// A new, thawed freezer cgroup (for process `pid`'s tree: named
    /// after it and this tern).
    pub fn create(pid: i32) -> Result<CgroupFreezer> {
        let version = if hierarchy(Version::V2).is_some() {
            Version::V2
        } else {
            Version::V1
        };
        Self::create_version(pid, version)
    }

    /// A new, thawed freezer cgroup of that `version` (`tern check` tries
    /// each).
    pub fn create_version(pid: i32, version: Version) -> Result<CgroupFreezer> {
        let name = format!("tern-freeze-{pid}-{}", std::process::id());
        let hierarchy = hierarchy(version).ok_or_else(|| Error::Unsupported {
            pid,
            reason: match version {
                Version::V2 => "no cgroup2 file system is mounted (/proc/self/mountinfo)",
                Version::V1 => {
                    "no cgroup v1 hierarchy with the freezer controller is mounted (/proc/self/mountinfo)"
                }
            }
            .into(),
        })?;
        let dir = hierarchy.mount_point.join(name);
        std::fs::create_dir(&dir).map_err(|e| err(pid, format!("mkdir {}", dir.display()), e))?;
        let f = CgroupFreezer {
            version,
            hierarchy,
            dir,
            moved: Vec::new(),
        };
        if version == Version::V2 && !f.dir.join("cgroup.freeze").exists() {
            return Err(Error::Unsupported {
                pid,
                reason: format!(
                    "--freezer cgroup: {} has no cgroup.freeze (Linux 5.2+)",
                    f.dir.display()
                ),
            });
        }
        Ok(f)
    }

    /// The cgroup `pid` is in, in this hierarchy.
    fn cgroup_of(&self, pid: i32) -> Result<PathBuf> {
        let all = crate::cgroup::memberships(pid).ctx(pid, || "read /proc/PID/cgroup".into())?;
        let ours = all.iter().find(|m| match self.version {
            Version::V2 => m.controllers.is_empty(),
            Version::V1 => m.controllers.split(',').any(|c| c == "freezer"),
        });
        match ours {
            Some(m) => self
                .hierarchy
                .dir_of(&m.path)
                .ok_or_else(|| Error::Unsupported {
                    pid,
                    reason: format!(
                        "its cgroup {} lies outside the part of the hierarchy mounted at {}",
                        m.path,
                        self.hierarchy.mount_point.display()
                    ),
                }),
            None => Err(Error::Unsupported {
                pid,
                reason: format!(
                    "it is in no cgroup of {} (/proc/{pid}/cgroup)",
                    self.hierarchy.mount_point.display()
                ),
            }),
        }
    }

    /// Move process `pid` (all its threads) into the freezer cgroup. A
    /// child forked inside it already goes back where its `parent` came
    /// from.
    pub fn add(&mut self, pid: i32, parent: Option<i32>) -> Result<()> {
        if self.moved.iter().any(|(p, _)| *p == pid) {
            return Ok(());
        }
        let from = self.cgroup_of(pid)?;
        if from == self.dir {
            let origin = parent
                .and_then(|pp| self.moved.iter().find(|(p, _)| *p == pp))
                .map(|(_, o)| o.clone());
            if let Some(origin) = origin {
                self.moved.push((pid, origin));
            }
            return Ok(());
        }
        std::fs::write(self.dir.join("cgroup.procs"), pid.to_string())
            .map_err(|e| err(pid, format!("move it into {}", self.dir.display()), e))?;
        self.moved.push((pid, from));
        Ok(())
    }

    fn write(&self, file: &str, value: &str) -> Result<()> {
        std::fs::write(self.dir.join(file), value).map_err(|e| {
            err(
                0,
                format!("write {value} to {}", self.dir.join(file).display()),
                e,
            )
        })
    }

    fn wait_for(&self, file: &str, needle: &str) -> Result<()> {
        let path = self.dir.join(file);
        let t = Instant::now();
        loop {
            let text = std::fs::read_to_string(&path)
                .map_err(|e| err(0, format!("read {}", path.display()), e))?;
            if text.lines().any(|l| l.trim() == needle) {
                return Ok(());
            }
            if t.elapsed() > Duration::from_secs(5) {
                return Err(Error::Internal(format!(
                    "{} never showed {needle:?} (last {:?})",
                    path.display(),
                    text.trim()
                )));
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }

    /// Freeze everything in it; returns once the kernel says it is frozen.
    pub fn freeze(&self) -> Result<()> {
        match self.version {
            Version::V2 => {
                self.write("cgroup.freeze", "1")?;
                self.wait_for("cgroup.events", "frozen 1")
            }
            Version::V1 => {
                self.write("freezer.state", "FROZEN")?;
                self.wait_for("freezer.state", "FROZEN")
            }
        }
    }

    pub fn thaw(&self) -> Result<()> {
        match self.version {
            Version::V2 => self.write("cgroup.freeze", "0"),
            Version::V1 => self.write("freezer.state", "THAWED"),
        }
    }

    /// Once thawed: returns when the kernel says so.
    pub fn wait_thawed(&self) -> Result<()> {
        match self.version {
            Version::V2 => self.wait_for("cgroup.events", "frozen 0"),
            Version::V1 => self.wait_for("freezer.state", "THAWED"),
        }
    }

    /// The cgroup tern made.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for CgroupFreezer {
    fn drop(&mut self) {
        if let Err(e) = self.thaw() {
            warn!("thawing {}: {e}", self.dir.display());
        }
        for (pid, from) in &self.moved {
            // Gone (killed after the dump) is fine.
            if let Err(e) = std::fs::write(from.join("cgroup.procs"), pid.to_string()) {
                if e.raw_os_error() != Some(libc::ESRCH) {
                    warn!(pid, "moving it back to {}: {e}", from.display());
                }
            }
        }
        for _ in 0..200 {
            match std::fs::remove_dir(&self.dir) {
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                    std::thread::sleep(Duration::from_millis(5))
                }
                Err(e) => {
                    warn!("removing {}: {e}", self.dir.display());
                    break;
                }
                Ok(()) => break,
            }
        }
    }
}
