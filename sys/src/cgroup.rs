//! cgroup membership: which cgroup of each hierarchy a process or thread
//! is in (`/proc/PID/cgroup`), and where this machine has each hierarchy
//! mounted (tern's own `/proc/self/mountinfo`). Both cgroup v1 (one
//! hierarchy per controller or group of controllers, `name=` hierarchies)
//! and v2 (the unified hierarchy, shown with no controllers).

use std::io;
use std::path::{Path, PathBuf};

/// One line of `/proc/PID/cgroup`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Membership {
    /// The hierarchy's controllers as the kernel lists them
    /// (`cpu,cpuacct`, `name=systemd`); empty for the unified (v2) one.
    pub controllers: String,
    /// The cgroup, from the hierarchy's root as the reader's cgroup
    /// namespace sees it (`/` for the root).
    pub path: String,
}

/// Parse `/proc/PID/cgroup` text (`ID:CONTROLLERS:PATH` lines).
pub fn parse_memberships(text: &str) -> Vec<Membership> {
    text.lines()
        .filter_map(|line| {
            let mut parts = line.splitn(3, ':');
            let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
            Some(Membership {
                controllers: controllers.to_string(),
                path: path.to_string(),
            })
        })
        .collect()
}

/// The cgroups process `pid` is in (its thread group leader's).
pub fn memberships(pid: i32) -> io::Result<Vec<Membership>> {
    Ok(parse_memberships(&std::fs::read_to_string(format!(
        "/proc/{pid}/cgroup"
    ))?))
}

/// The cgroups thread `tid` of process `pid` is in (v1 lets threads of
/// one process be in different cgroups).
pub fn thread_memberships(pid: i32, tid: i32) -> io::Result<Vec<Membership>> {
    Ok(parse_memberships(&std::fs::read_to_string(format!(
        "/proc/{pid}/task/{tid}/cgroup"
    ))?))
}

/// A cgroup hierarchy mounted on this machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hierarchy {
    /// As in [`Membership::controllers`].
    pub controllers: String,
    /// Where it is mounted.
    pub mount_point: PathBuf,
    /// The cgroup at that mount point (`/` unless only part of the
    /// hierarchy is mounted there, as in a container).
    pub root: String,
}

impl Hierarchy {
    /// The directory of cgroup `path` of this hierarchy, if it lies under
    /// the part mounted here.
    pub fn dir_of(&self, path: &str) -> Option<PathBuf> {
        let rest = if self.root == "/" {
            path
        } else {
            let r = path.strip_prefix(self.root.as_str())?;
            if !(r.is_empty() || r.starts_with('/')) {
                return None;
            }
            r
        };
        Some(self.mount_point.join(rest.trim_start_matches('/')))
    }
}

/// The cgroup hierarchies mounted in tern's mount namespace, the first
/// mount of each.
pub fn hierarchies() -> io::Result<Vec<Hierarchy>> {
    let mut found: Vec<Hierarchy> = Vec::new();
    let mut known: Option<Vec<String>> = None;
    for m in crate::mounts::mountinfo(0)? {
        let controllers = match m.fstype.as_str() {
            "cgroup2" => String::new(),
            "cgroup" => v1_controllers(
                &m.super_options,
                known.get_or_insert_with(known_controllers),
            ),
            _ => continue,
        };
        if found.iter().any(|h| h.controllers == controllers) {
            continue;
        }
        found.push(Hierarchy {
            controllers,
            mount_point: PathBuf::from(&m.mount_point),
            root: m.root.clone(),
        });
    }
    Ok(found)
}

/// The controllers this kernel has (`/proc/cgroups`).
fn known_controllers() -> Vec<String> {
    std::fs::read_to_string("/proc/cgroups")
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect()
}

/// A v1 mount's controllers from its super options, in the order and
/// form `/proc/PID/cgroup` uses (`cpu,cpuacct`, `name=systemd`): the
/// controllers the kernel knows (`known`), then the name.
fn v1_controllers(super_options: &str, known: &[String]) -> String {
    let options: Vec<&str> = super_options.split(',').collect();
    let mut out: Vec<&str> = known
        .iter()
        .map(String::as_str)
        .filter(|c| options.contains(c))
        .collect();
    out.extend(options.iter().filter(|o| o.starts_with("name=")));
    out.join(",")
}

/// The hierarchy named `controllers` among `all`: the same controllers,
/// whatever their order.
pub fn find<'a>(all: &'a [Hierarchy], controllers: &str) -> Option<&'a Hierarchy> {
    let sorted = |s: &str| {
        let mut v: Vec<String> = s.split(',').map(str::to_string).collect();
        v.sort();
        v
    };
    let want = sorted(controllers);
    all.iter().find(|h| sorted(&h.controllers) == want)
}

/// Move process `pid` (every thread of it) into cgroup directory `dir`.
pub fn join(dir: &Path, pid: i32) -> io::Result<()> {
    std::fs::write(dir.join("cgroup.procs"), pid.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memberships_of_v1_and_v2() {
        let m = parse_memberships("9:name=systemd:/\n2:cpu,cpuacct:/a/b\n0::/c:d\n");
        assert_eq!(m.len(), 3);
        assert_eq!(m[1].controllers, "cpu,cpuacct");
        assert_eq!(m[1].path, "/a/b");
        // A path may hold a colon.
        assert_eq!(m[2].controllers, "");
        assert_eq!(m[2].path, "/c:d");
    }

    #[test]
    fn dir_of_a_partly_mounted_hierarchy() {
        let h = Hierarchy {
            controllers: "memory".into(),
            mount_point: "/sys/fs/cgroup/memory".into(),
            root: "/box".into(),
        };
        assert_eq!(
            h.dir_of("/box/app"),
            Some(PathBuf::from("/sys/fs/cgroup/memory/app"))
        );
        assert_eq!(
            h.dir_of("/box"),
            Some(PathBuf::from("/sys/fs/cgroup/memory"))
        );
        assert_eq!(h.dir_of("/boxer"), None);
        assert_eq!(h.dir_of("/other"), None);
        let whole = Hierarchy {
            root: "/".into(),
            ..h
        };
        assert_eq!(
            whole.dir_of("/"),
            Some(PathBuf::from("/sys/fs/cgroup/memory/"))
        );
    }

    #[test]
    fn hierarchies_match_in_any_order() {
        let all = vec![Hierarchy {
            controllers: "cpu,cpuacct".into(),
            mount_point: "/x".into(),
            root: "/".into(),
        }];
        assert!(find(&all, "cpuacct,cpu").is_some());
        assert!(find(&all, "cpu").is_none());
    }
}
