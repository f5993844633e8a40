//! The cgroups a process lives in: captured as a path per hierarchy with
//! the settings of every directory on it; on restore each directory
//! missing here is made with its settings (limits, cpuset, the device
//! allow-list), and the puppet joins the cgroup before its memory is
//! filled, so that its pages are charged where the program's were.
//!
//! Directories that exist are joined as they are (their settings are the
//! owner's: a container runtime's, or the source's on one machine), like
//! CRIU's default `--manage-cgroups=soft`. Threads of one process in
//! different cgroups are refused, naming the thread.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use tern_sys::cgroup::{self, Hierarchy, Membership};
use tern_sys::{Context, Error, Result};
use tern_wire as wire;
use tracing::{debug, info};

/// The settings kept, per controller, in the order they are written back
/// (v1 then v2 names; only the files a directory has are read). The
/// period before the quota, the memory limit before memory+swap's.
const SETTINGS: &[(&str, &[&str])] = &[
    (
        "memory",
        &[
            "memory.limit_in_bytes",
            "memory.memsw.limit_in_bytes",
            "memory.soft_limit_in_bytes",
            "memory.swappiness",
            "memory.min",
            "memory.low",
            "memory.high",
            "memory.max",
            "memory.swap.max",
        ],
    ),
    (
        "cpu",
        &[
            "cpu.shares",
            "cpu.cfs_period_us",
            "cpu.cfs_quota_us",
            "cpu.weight",
            "cpu.max",
        ],
    ),
    ("cpuset", &["cpuset.cpus", "cpuset.mems"]),
    ("pids", &["pids.max"]),
    ("blkio", &["blkio.weight"]),
    ("io", &["io.weight"]),
    ("devices", &["devices.list"]),
];

/// v2: which controllers a directory hands to its children.
const SUBTREE_CONTROL: &str = "cgroup.subtree_control";
/// v1 devices: everything allowed.
const ALLOW_ALL: &str = "a *:* rwm";

/// The cgroups of process `pid`, with the settings of every directory on
/// their paths.
pub fn capture(pid: i32) -> Result<Vec<wire::Cgroup>> {
    capture_of(pid, &memberships(pid)?)
}

/// The cgroups `own` (process `pid`'s memberships) with their settings.
fn capture_of(pid: i32, own: &[Membership]) -> Result<Vec<wire::Cgroup>> {
    let hierarchies = cgroup::hierarchies().ctx(pid, || "list cgroup mounts".into())?;
    own.iter()
        .map(|m| capture_one(pid, m, &hierarchies))
        .collect()
}

/// [`capture`] for a frozen program that was in `prior` (captured while
/// it ran, moments ago): if it is in the same cgroups still, those, with
/// their settings as read then (reading them all again costs ~0.3 ms of
/// the frozen time).
pub fn capture_since(pid: i32, prior: &[wire::Cgroup]) -> Result<Vec<wire::Cgroup>> {
    let own = memberships(pid)?;
    let same = own.len() == prior.len()
        && own
            .iter()
            .zip(prior)
            .all(|(m, c)| m.controllers == c.controllers && m.path == c.path);
    if same {
        return Ok(prior.to_vec());
    }
    capture_of(pid, &own)
}

/// The cgroups of process `pid`; refused if one of its threads is in
/// another.
fn memberships(pid: i32) -> Result<Vec<Membership>> {
    let own = cgroup::memberships(pid).ctx(pid, || "read /proc/PID/cgroup".into())?;
    let tids = tern_sys::proc::list_tasks(pid).ctx(pid, || "list its threads".into())?;
    for &tid in tids.iter().filter(|&&t| t != pid) {
        let theirs = match cgroup::thread_memberships(pid, tid) {
            Ok(m) => m,
            // Gone since listed: nothing to compare.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => continue,
            Err(e) => return Err(e).ctx(pid, || format!("read the cgroups of thread {tid}")),
        };
        if let Some(m) = theirs.iter().find(|m| !own.contains(m)) {
            return Err(Error::Unsupported {
                pid,
                reason: format!(
                    "its thread {tid} is in cgroup {} of hierarchy {:?}, not in its process's",
                    m.path, m.controllers
                ),
            });
        }
    }
    Ok(own)
}

fn capture_one(pid: i32, m: &Membership, hierarchies: &[Hierarchy]) -> Result<wire::Cgroup> {
    if m.path.starts_with("/..") {
        return Err(Error::Unsupported {
            pid,
            reason: format!(
                "its cgroup {} in hierarchy {:?} is outside tern's cgroup namespace",
                m.path, m.controllers
            ),
        });
    }
    let mut out = wire::Cgroup {
        controllers: m.controllers.clone(),
        path: m.path.clone(),
        dirs: Vec::new(),
    };
    // A hierarchy tern has not mounted: the path alone (a restore where
    // it is mounted joins it; its settings could not be read here).
    let Some(h) = cgroup::find(hierarchies, &m.controllers) else {
        return Ok(out);
    };
    for path in ancestors(&m.path) {
        let Some(dir) = h.dir_of(&path) else {
            continue;
        };
        let settings = read_settings(&dir, &m.controllers).ctx(pid, || {
            format!("read the settings of cgroup {}", dir.display())
        })?;
        out.dirs.push(wire::CgroupDir { path, settings });
    }
    Ok(out)
}

/// `/a`, `/a/b`, `/a/b/c` for `/a/b/c`; nothing for `/`.
fn ancestors(path: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut at = String::new();
    for part in path.split('/').filter(|p| !p.is_empty()) {
        at.push('/');
        at.push_str(part);
        out.push(at.clone());
    }
    out
}

/// The controllers whose settings a directory of hierarchy `controllers`
/// has: v1's from the hierarchy's name, v2's from `cgroup.controllers`.
fn controllers_of(dir: &Path, controllers: &str) -> std::io::Result<Vec<String>> {
    if !controllers.is_empty() {
        return Ok(controllers.split(',').map(str::to_string).collect());
    }
    Ok(std::fs::read_to_string(dir.join("cgroup.controllers"))?
        .split_whitespace()
        .map(str::to_string)
        .collect())
}

fn read_settings(dir: &Path, controllers: &str) -> std::io::Result<Vec<(String, String)>> {
    let enabled = controllers_of(dir, controllers)?;
    let mut out = Vec::new();
    for (controller, files) in SETTINGS {
        if !enabled.iter().any(|c| c == controller) {
            continue;
        }
        for file in *files {
            match std::fs::read_to_string(dir.join(file)) {
                Ok(v) if !v.trim().is_empty() => out.push((file.to_string(), v.trim().to_string())),
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
                Err(e) => return Err(e),
            }
        }
    }
    if controllers.is_empty() {
        let v = std::fs::read_to_string(dir.join(SUBTREE_CONTROL))?;
        if !v.trim().is_empty() {
            out.push((SUBTREE_CONTROL.to_string(), v.trim().to_string()));
        }
    }
    Ok(out)
}

/// Directories a restore made for a program's cgroups, in the order
/// made: removed (deepest first) when dropped, once the processes put in
/// them are gone, unless [`kept`](Self::keep). Shared by the puppets of
/// a tree (a child may be in a directory its parent's placement made).
#[derive(Debug, Default)]
pub struct Made {
    dirs: Mutex<Vec<PathBuf>>,
    keep: AtomicBool,
}

impl Made {
    /// The program runs in them now: they stay.
    pub fn keep(&self) {
        self.keep.store(true, Ordering::Relaxed);
    }

    fn push(&self, dir: PathBuf) {
        if let Ok(mut dirs) = self.dirs.lock() {
            dirs.push(dir);
        }
    }
}

impl Drop for Made {
    fn drop(&mut self) {
        if self.keep.load(Ordering::Relaxed) {
            return;
        }
        let dirs = std::mem::take(self.dirs.get_mut().unwrap_or_else(|e| e.into_inner()));
        for dir in dirs.iter().rev() {
            // A killed process leaves its cgroup as it exits, which may
            // not have happened yet (an init is reaped on a thread).
            let mut tries = 0;
            while let Err(e) = std::fs::remove_dir(dir) {
                tries += 1;
                if e.raw_os_error() != Some(libc::EBUSY) || tries == 50 {
                    debug!(dir = %dir.display(), "cannot remove a cgroup made for a restore: {e}");
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
        }
    }
}

/// Put process `pid` (a puppet, before its memory is filled) into
/// `cgroups`, making the directories missing here with their settings
/// (recorded in `made`). A hierarchy this machine has not mounted is
/// refused, naming it.
pub fn place(pid: i32, cgroups: &[wire::Cgroup], made: &Made) -> Result<()> {
    check_record(cgroups).map_err(|why| Error::Unsupported {
        pid,
        reason: format!("its image's cgroup record is damaged: {why}"),
    })?;
    let hierarchies = cgroup::hierarchies().ctx(pid, || "list cgroup mounts".into())?;
    for c in cgroups {
        let Some(h) = cgroup::find(&hierarchies, &c.controllers) else {
            // The root of a hierarchy not mounted here limits nothing.
            if c.path == "/" {
                continue;
            }
            return Err(Error::Unsupported {
            pid,
            reason: format!(
                "its cgroup {} is in hierarchy {}, which this machine has not mounted (or restore with --manage-cgroups ignore)",
                c.path,
                hierarchy_name(&c.controllers)
            ),
            });
        };
        let leaf = h.dir_of(&c.path).ok_or_else(|| Error::Unsupported {
            pid,
            reason: format!(
                "its cgroup {} of hierarchy {} is outside the part mounted at {}",
                c.path,
                hierarchy_name(&c.controllers),
                h.mount_point.display()
            ),
        })?;
        for d in &c.dirs {
            let Some(dir) = h.dir_of(&d.path) else {
                continue;
            };
            if dir.exists() {
                continue;
            }
            std::fs::create_dir(&dir).ctx(pid, || format!("make cgroup {}", dir.display()))?;
            made.push(dir.clone());
            write_settings(&dir, &d.settings).ctx(pid, || {
                format!("set up cgroup {} as the image had it", dir.display())
            })?;
            info!(pid, cgroup = %dir.display(), settings = d.settings.len(), "cgroup made");
        }
        cgroup::join(&leaf, pid).ctx(pid, || format!("move it into cgroup {}", leaf.display()))?;
    }
    Ok(())
}

/// An image comes from elsewhere: its cgroup paths must stay inside their
/// hierarchy (absolute, no `..`), each directory must be on its cgroup's
/// path, and only the settings tern records may be written.
fn check_record(cgroups: &[wire::Cgroup]) -> std::result::Result<(), String> {
    let plain = |path: &str| {
        path.starts_with('/')
            && !path.contains('\0')
            && path
                .split('/')
                .skip(1)
                .all(|part| !matches!(part, "" | "." | "..") || path == "/")
    };
    let known = |file: &str| {
        file == SUBTREE_CONTROL || SETTINGS.iter().any(|(_, files)| files.contains(&file))
    };
    for c in cgroups {
        if !plain(&c.path) {
            return Err(format!("cgroup path {:?}", c.path));
        }
        for d in &c.dirs {
            let inside = c.path == d.path || c.path.starts_with(&format!("{}/", d.path));
            if !plain(&d.path) || d.path == "/" || !inside {
                return Err(format!("directory {:?} of cgroup {:?}", d.path, c.path));
            }
            if let Some((file, _)) = d.settings.iter().find(|(f, _)| !known(f)) {
                return Err(format!("setting {file:?} of cgroup {:?}", d.path));
            }
        }
    }
    Ok(())
}

fn hierarchy_name(controllers: &str) -> &str {
    if controllers.is_empty() {
        "cgroup2 (unified)"
    } else {
        controllers
    }
}

/// Write `settings` into the new directory `dir` (errors name the file
/// and value).
fn write_settings(dir: &Path, settings: &[(String, String)]) -> std::io::Result<()> {
    let put = |file: &str, value: &str| {
        std::fs::write(dir.join(file), value)
            .map_err(|e| std::io::Error::new(e.kind(), format!("write {value:?} to {file}: {e}")))
    };
    for (file, value) in settings {
        match file.as_str() {
            // v1 devices: the image's allow-list exactly, never more than
            // it had (a new directory starts with its parent's).
            "devices.list" if value == ALLOW_ALL => put("devices.allow", "a")?,
            "devices.list" => {
                put("devices.deny", "a")?;
                for rule in value.lines() {
                    put("devices.allow", rule)?;
                }
            }
            SUBTREE_CONTROL => {
                let enable: Vec<String> =
                    value.split_whitespace().map(|c| format!("+{c}")).collect();
                put(SUBTREE_CONTROL, &enable.join(" "))?;
            }
            _ => put(file, value)?,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_leaving_its_hierarchy_is_refused() {
        let cg = |path: &str, dir: &str, file: &str| wire::Cgroup {
            controllers: "pids".into(),
            path: path.into(),
            dirs: vec![wire::CgroupDir {
                path: dir.into(),
                settings: vec![(file.into(), "1".into())],
            }],
        };
        assert!(check_record(&[cg("/a/b", "/a", "pids.max")]).is_ok());
        assert!(check_record(&[cg("/a/b", "/a/b", "devices.list")]).is_ok());
        assert!(check_record(&[cg("/a/../../etc", "/a", "pids.max")]).is_err());
        assert!(check_record(&[cg("/a/b", "/c", "pids.max")]).is_err());
        assert!(check_record(&[cg("/a/b", "/ab", "pids.max")]).is_err());
        assert!(check_record(&[cg("/a/b", "/a", "../../passwd")]).is_err());
        assert!(check_record(&[cg("a/b", "a", "pids.max")]).is_err());
        let root = wire::Cgroup {
            controllers: String::new(),
            path: "/".into(),
            dirs: Vec::new(),
        };
        assert!(check_record(&[root]).is_ok());
    }

    #[test]
    fn ancestors_of_a_path() {
        assert_eq!(ancestors("/a/b/c"), vec!["/a", "/a/b", "/a/b/c"]);
        assert!(ancestors("/").is_empty());
    }

    #[test]
    fn settings_are_written_back_in_order() {
        let dir = std::env::temp_dir().join(format!("tern-cg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let settings = vec![
            ("pids.max".to_string(), "12".to_string()),
            (
                "devices.list".to_string(),
                "c 1:3 rwm\nc 1:5 rwm".to_string(),
            ),
            (SUBTREE_CONTROL.to_string(), "memory pids".to_string()),
        ];
        write_settings(&dir, &settings).unwrap();
        let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap();
        assert_eq!(read("pids.max"), "12");
        // A plain directory keeps the last rule written.
        assert_eq!(read("devices.deny"), "a");
        assert_eq!(read("devices.allow"), "c 1:5 rwm");
        assert_eq!(read(SUBTREE_CONTROL), "+memory +pids");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
