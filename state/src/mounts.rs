//! A mount namespace of its own: the program's mount table, captured as
//! what makes each mount again, and built again for the restored program
//! (from a thread of the restorer that joined the puppet's new mount
//! namespace), ending with a `pivot_root` into the program's root.
//!
//! Each mount is one of three kinds:
//! - a directory of this machine's file systems, bound (a container's root
//!   file system, a volume, a cgroup directory, or any file system the
//!   dumping tern has mounted too): found by its device and root among the
//!   dumping tern's own mounts, and expected at the same path where it is
//!   restored (the container runtime's convention: the root file system is
//!   supplied there);
//! - a file system of its own that tern does not see, mounted anew: proc,
//!   sysfs, devpts, mqueue and tmpfs (a tmpfs with its files, read through
//!   `/proc/PID/root`);
//! - a part of another mount of the table, bound (runc's masked paths bind
//!   `/dev/null` over `/proc/kcore`, its read-only paths bind parts of proc
//!   over themselves).
//!
//! Anything else is refused, naming the mount. Propagation (shared, slave)
//! is not kept: every mount is private after a restore.

use std::collections::HashMap;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use tern_sys::mounts::{self, MountInfo};
use tern_sys::{Context, Error as EngineError, Result};
use tern_wire as wire;

/// File systems that are mounted anew rather than bound.
const FRESH: &[&str] = &["proc", "sysfs", "tmpfs", "devpts", "mqueue"];
/// File systems whose directories are made if missing (a cgroup).
const CREATED: &[&str] = &["cgroup", "cgroup2"];
/// The most bytes of tmpfs files one image carries.
pub const MAX_TMPFS_BYTES: u64 = 16 << 20;

fn refuse(pid: i32, reason: String) -> EngineError {
    EngineError::Unsupported { pid, reason }
}

/// The mount table of process `pid`, which lives in a mount namespace of
/// its own.
pub fn capture(pid: i32) -> Result<wire::MountTable> {
    let theirs = mounts::mountinfo(pid).ctx(pid, || "read mountinfo".into())?;
    let ours = mounts::mountinfo(0).ctx(pid, || "read tern's own mountinfo".into())?;
    let ordered = parents_first(pid, &theirs)?;
    let mut out: Vec<wire::Mount> = Vec::with_capacity(ordered.len());
    let mut tmpfs_bytes = 0u64;
    for (k, m) in ordered.iter().enumerate() {
        let source = source_of(pid, m, k == 0, &ordered[..k], &ours)?;
        let source = match source {
            wire::MountSource::Fresh { data, .. } if m.fstype == "tmpfs" => {
                let others = ordered.iter().map(|c| (c.id, c.mount_point.as_str()));
                let inner = mount_points_below(others, m.id, &m.mount_point);
                let contents = tmpfs_contents(pid, &m.mount_point, &inner, &mut tmpfs_bytes)?;
                wire::MountSource::Fresh { data, contents }
            }
            other => other,
        };
        let mut flags = mounts::mount_flags(&m.options);
        if m.super_options.split(',').any(|o| o == "ro") {
            flags |= libc::MS_RDONLY;
        }
        out.push(wire::Mount {
            id: m.id,
            parent: m.parent,
            mount_point: m.mount_point.clone(),
            flags,
            fstype: m.fstype.clone(),
            device: m.source.clone(),
            source,
        });
    }
    Ok(wire::MountTable { mounts: out })
}

/// The table from its root down, every parent before its children (in
/// mountinfo's order among siblings).
fn parents_first(pid: i32, all: &[MountInfo]) -> Result<Vec<MountInfo>> {
    let ids: std::collections::HashSet<u32> = all.iter().map(|m| m.id).collect();
    let roots: Vec<&MountInfo> = all.iter().filter(|m| !ids.contains(&m.parent)).collect();
    let [root] = roots[..] else {
        return Err(refuse(
            pid,
            format!("its mount table has {} roots, not one", roots.len()),
        ));
    };
    if root.mount_point != "/" {
        return Err(refuse(
            pid,
            format!("its mount table's root is at {}, not /", root.mount_point),
        ));
    }
    let mut out = vec![root.clone()];
    let mut next = 0;
    while next < out.len() {
        let parent = out[next].id;
        next += 1;
        out.extend(
            all.iter()
                .filter(|m| m.parent == parent && m.id != parent)
                .cloned(),
        );
    }
    Ok(out)
}

/// The mount points, among `all` (id, mount point), of the mounts other
/// than `id` at or below `mount_point`: what hides parts of that mount.
fn mount_points_below<'a>(
    all: impl Iterator<Item = (u32, &'a str)>,
    id: u32,
    mount_point: &str,
) -> Vec<&'a str> {
    all.filter(|&(other, point)| other != id && is_under(point, mount_point))
        .map(|(_, point)| point)
        .collect()
}

/// Whether `path` is `dir` or below it.
fn is_under(path: &str, dir: &str) -> bool {
    let dir = dir.trim_end_matches('/');
    path == dir || path.starts_with(&format!("{dir}/"))
}

/// `sub` relative to `root` when it lies below it ("" when equal).
fn below<'a>(sub: &'a str, root: &str) -> Option<&'a str> {
    if !is_under(sub, root) {
        return None;
    }
    Some(sub[root.trim_end_matches('/').len()..].trim_start_matches('/'))
}

fn join(base: &str, rel: &str) -> String {
    let rel = rel.trim_start_matches('/');
    match (base.trim_end_matches('/'), rel) {
        ("", "") => "/".into(),
        (b, "") => b.to_string(),
        (b, r) => format!("{b}/{r}"),
    }
}

/// Where mount `m` (the table's root if `is_root`) takes its files from:
/// a part of a file system this table mounts anew; else a directory of a
/// file system tern sees mounted too (shared with the machine: bound, not
/// copied, even a tmpfs such as `/run` under `ip netns exec`); else, for
/// the kinds tern can make, a file system of its own.
fn source_of(
    pid: i32,
    m: &MountInfo,
    is_root: bool,
    earlier: &[MountInfo],
    ours: &[MountInfo],
) -> Result<wire::MountSource> {
    if !is_root {
        if let Some(of) = earlier.iter().find(|e| {
            e.dev == m.dev
                && e.root == "/"
                && FRESH.contains(&e.fstype.as_str())
                && !ours.iter().any(|o| o.dev == e.dev)
        }) {
            return Ok(wire::MountSource::Within {
                of: of.id,
                subpath: m.root.clone(),
            });
        }
    }
    let host = ours
        .iter()
        .filter(|o| o.dev == m.dev)
        .filter_map(|o| below(&m.root, &o.root).map(|rest| (o, rest)))
        .max_by_key(|(o, _)| o.root.len())
        .map(|(o, rest)| join(&o.mount_point, rest));
    if let Some(path) = host {
        return Ok(wire::MountSource::Host {
            path,
            create: CREATED.contains(&m.fstype.as_str()),
        });
    }
    if !is_root && FRESH.contains(&m.fstype.as_str()) && m.root == "/" {
        let data: Vec<&str> = m
            .super_options
            .split(',')
            .filter(|o| !o.is_empty() && *o != "rw" && *o != "ro")
            .collect();
        return Ok(wire::MountSource::Fresh {
            data: data.join(","),
            contents: Vec::new(),
        });
    }
    Err(refuse(
        pid,
        format!(
            "its mount {} ({} {} {}) shows files of no file system mounted here, and tern cannot make it anew",
            m.mount_point, m.fstype, m.source, m.root
        ),
    ))
}

/// Every file of the tmpfs mounted at `mount_point` in process `pid`'s
/// namespace, but what mounts `inner` (below it) hide; `total` counts the
/// bytes of all tmpfs files of the image.
fn tmpfs_contents(
    pid: i32,
    mount_point: &str,
    inner: &[&str],
    total: &mut u64,
) -> Result<Vec<wire::TmpfsEntry>> {
    let top = join(&format!("/proc/{pid}/root"), mount_point);
    let mut out = Vec::new();
    let mut dirs = vec![String::new()];
    while let Some(rel) = dirs.pop() {
        let dir = join(&top, &rel);
        // In a live round the program goes on making and removing files
        // while they are listed: what is gone by the time it is read was
        // simply not there at this snapshot (the frozen dump's is exact).
        let entries = match std::fs::read_dir(&dir) {
            Err(e) if vanished(&e) && !rel.is_empty() => continue,
            r => r.ctx(pid, || format!("list {dir}"))?,
        };
        let mut names: Vec<String> = entries
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        for name in names {
            let rel_path = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            let full = join(&top, &rel_path);
            let meta = match std::fs::symlink_metadata(&full) {
                Err(e) if vanished(&e) => continue,
                r => r.ctx(pid, || format!("stat {full}"))?,
            };
            let in_ns = join(mount_point, &rel_path);
            let t = meta.file_type();
            let kind = if t.is_dir() {
                // A directory another mount covers is kept, not entered.
                if !inner.contains(&in_ns.as_str()) {
                    dirs.push(rel_path.clone());
                }
                wire::TmpfsKind::Dir
            } else if t.is_symlink() {
                let target = match std::fs::read_link(&full) {
                    Err(e) if vanished(&e) => continue,
                    r => r.ctx(pid, || format!("readlink {full}"))?,
                };
                wire::TmpfsKind::Symlink(target.to_string_lossy().into_owned())
            } else if t.is_file() {
                *total += meta.len();
                if *total > MAX_TMPFS_BYTES {
                    return Err(refuse(
                        pid,
                        format!(
                            "the tmpfs files of its mount namespace (at {mount_point} and others) hold more than {} MiB; tern carries at most that",
                            MAX_TMPFS_BYTES >> 20
                        ),
                    ));
                }
                if inner.contains(&in_ns.as_str()) {
                    // A file another mount is bound over: its own bytes
                    // are hidden; an empty file holds the place.
                    wire::TmpfsKind::File(Vec::new())
                } else {
                    match std::fs::read(&full) {
                        Err(e) if vanished(&e) => continue,
                        r => wire::TmpfsKind::File(r.ctx(pid, || format!("read {full}"))?),
                    }
                }
            } else if t.is_char_device() || t.is_block_device() || t.is_fifo() {
                wire::TmpfsKind::Node {
                    file_type: meta.mode() & libc::S_IFMT,
                    rdev: meta.rdev(),
                }
            } else {
                return Err(refuse(
                    pid,
                    format!("{in_ns}: a socket file on a tmpfs of its mount namespace"),
                ));
            };
            out.push(wire::TmpfsEntry {
                path: rel_path,
                mode: meta.mode() & 0o7777,
                uid: meta.uid(),
                gid: meta.gid(),
                kind,
            });
        }
    }
    Ok(out)
}

/// A file removed between its directory's listing and its reading.
fn vanished(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::NotFound
}

/// Where `path` of the program's namespace is on this machine before its
/// namespace is built: under a bound host directory, or `None` on a file
/// system the restore mounts anew (nothing to look at yet).
pub fn host_path(table: &wire::MountTable, path: &str) -> Option<String> {
    let m = table
        .mounts
        .iter()
        .filter(|m| is_under(path, &m.mount_point))
        .max_by_key(|m| m.mount_point.len())?;
    match &m.source {
        wire::MountSource::Host { path: host, .. } => {
            Some(join(host, below(path, &m.mount_point).unwrap_or("")))
        }
        _ => None,
    }
}

/// Build `table` in the current thread's mount namespace (a new one, a copy
/// of tern's, joined by the caller) and make its root the namespace's root.
/// `pid_ns_owner`: a process of the program's own PID namespace, for whose
/// namespace proc is mounted (`None`: the caller's).
/// `staging`: an empty directory where the root is built when it is the
/// machine's own `/` (which `pivot_root` cannot take as a new root where it
/// already is the root), as under `ip netns exec`.
pub fn build(
    table: &wire::MountTable,
    pid_ns_owner: Option<i32>,
    staging: Option<&str>,
) -> std::io::Result<()> {
    let root = table
        .mounts
        .first()
        .ok_or_else(|| std::io::Error::other("an empty mount table"))?;
    let wire::MountSource::Host { path: base, .. } = &root.source else {
        return Err(std::io::Error::other("the mount table's root is not bound"));
    };
    let new_root = match (base.as_str(), staging) {
        ("/", Some(dir)) => dir.to_string(),
        ("/", None) => {
            return Err(std::io::Error::other(
                "the root is / and no staging directory was given",
            ))
        }
        _ => base.clone(),
    };
    mounts::mount(None, "/", None, libc::MS_REC | libc::MS_PRIVATE, None)?;
    mounts::mount(Some(base), &new_root, None, libc::MS_BIND, None)?;
    let mut targets: HashMap<u32, String> = HashMap::new();
    targets.insert(root.id, new_root.clone());
    for m in &table.mounts[1..] {
        let target = join(&new_root, &m.mount_point);
        mount_one(m, &target, &targets, pid_ns_owner)?;
        targets.insert(m.id, target);
    }
    // Per-mount flags last, children first: a read-only root would refuse
    // the mount points and files made above.
    for m in table.mounts.iter().rev() {
        let target = &targets[&m.id];
        mounts::mount(
            None,
            target,
            None,
            libc::MS_BIND | libc::MS_REMOUNT | m.flags,
            None,
        )?;
    }
    mounts::pivot_into(&new_root)
}

/// Whether building `table` needs a staging directory (see [`build`]).
pub fn needs_staging(table: &wire::MountTable) -> bool {
    matches!(
        table.mounts.first().map(|m| &m.source),
        Some(wire::MountSource::Host { path, .. }) if path == "/"
    )
}

fn mount_one(
    m: &wire::Mount,
    target: &str,
    targets: &HashMap<u32, String>,
    pid_ns_owner: Option<i32>,
) -> std::io::Result<()> {
    let context = |e: std::io::Error| {
        std::io::Error::new(
            e.kind(),
            format!("mount {} ({}): {e}", m.mount_point, m.fstype),
        )
    };
    match &m.source {
        wire::MountSource::Host { path, create } => {
            if *create {
                std::fs::create_dir_all(path).map_err(context)?;
            }
            make_mount_point(target, std::path::Path::new(path).is_dir()).map_err(context)?;
            mounts::mount(Some(path), target, None, libc::MS_BIND, None)
        }
        wire::MountSource::Within { of, subpath } => {
            let from = targets
                .get(of)
                .map(|t| join(t, subpath))
                .ok_or_else(|| std::io::Error::other(format!("mount {of} is not in the table")))?;
            make_mount_point(target, std::path::Path::new(&from).is_dir()).map_err(context)?;
            mounts::mount(Some(&from), target, None, libc::MS_BIND, None)
        }
        wire::MountSource::Fresh { data, contents } => {
            make_mount_point(target, true).map_err(context)?;
            let flags = m.flags & !(libc::MS_RDONLY | libc::MS_REMOUNT | libc::MS_BIND);
            match pid_ns_owner {
                Some(owner) if m.fstype == "proc" => {
                    mounts::mount_proc_for(owner, target, flags, data)?
                }
                _ => mounts::mount(Some(&m.device), target, Some(&m.fstype), flags, Some(data))?,
            }
            write_contents(target, contents).map_err(context)
        }
    }
}

/// A mount point that existed in the dumped namespace may be missing here
/// (made by the runtime on a file system tern rebuilt): a directory or an
/// empty file, as what is mounted there is.
fn make_mount_point(target: &str, dir: bool) -> std::io::Result<()> {
    if std::fs::symlink_metadata(target).is_ok() {
        return Ok(());
    }
    if dir {
        std::fs::create_dir_all(target)
    } else {
        if let Some(parent) = std::path::Path::new(target).parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::File::create(target).map(drop)
    }
}

/// Write the tmpfs files of `table` again, in the current thread's mount
/// namespace (the program's, already built from `built`, a table of the
/// same mounts): those of the final image where they changed, over the
/// ones a standby was built with; files gone since are removed. The mount
/// points of other mounts are left alone (what is seen there now is the
/// other mount's root).
pub fn rewrite_tmpfs_files(
    table: &wire::MountTable,
    built: &wire::MountTable,
) -> std::io::Result<()> {
    for (m, was) in table.mounts.iter().zip(&built.mounts) {
        let wire::MountSource::Fresh { contents, .. } = &m.source else {
            continue;
        };
        if m.fstype != "tmpfs" || m.source == was.source {
            continue;
        }
        let others = table.mounts.iter().map(|c| (c.id, c.mount_point.as_str()));
        let inner = mount_points_below(others, m.id, &m.mount_point);
        remove_others(&m.mount_point, contents, &inner)?;
        let outside: Vec<wire::TmpfsEntry> = contents
            .iter()
            .filter(|e| !inner.contains(&join(&m.mount_point, &e.path).as_str()))
            .cloned()
            .collect();
        write_contents(&m.mount_point, &outside)?;
    }
    Ok(())
}

/// Remove what the tmpfs at `top` holds beyond `contents`, leaving alone
/// the mount points of other mounts (`inner`).
fn remove_others(top: &str, contents: &[wire::TmpfsEntry], inner: &[&str]) -> std::io::Result<()> {
    let wanted: std::collections::HashSet<&str> =
        contents.iter().map(|e| e.path.as_str()).collect();
    let mut dirs = vec![String::new()];
    while let Some(rel) = dirs.pop() {
        for entry in std::fs::read_dir(join(top, &rel))? {
            let name = entry?.file_name().to_string_lossy().into_owned();
            let rel_path = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            let full = join(top, &rel_path);
            if inner.contains(&full.as_str()) {
                continue;
            }
            let is_dir = std::fs::symlink_metadata(&full)?.is_dir();
            if !wanted.contains(rel_path.as_str()) {
                if is_dir {
                    std::fs::remove_dir_all(&full)?;
                } else {
                    std::fs::remove_file(&full)?;
                }
            } else if is_dir {
                dirs.push(rel_path);
            }
        }
    }
    Ok(())
}

/// Make a tmpfs's files again under `top` (its mount point), replacing
/// what is there: used at the first build and again, with the final
/// image's files, when a standby finishes.
pub fn write_contents(top: &str, contents: &[wire::TmpfsEntry]) -> std::io::Result<()> {
    for e in contents {
        let path = join(top, &e.path);
        let existing = std::fs::symlink_metadata(&path).ok();
        match &e.kind {
            wire::TmpfsKind::Dir => {
                if !existing.is_some_and(|m| m.is_dir()) {
                    std::fs::create_dir(&path)?;
                }
            }
            wire::TmpfsKind::File(bytes) => std::fs::write(&path, bytes)?,
            wire::TmpfsKind::Symlink(target) => {
                if existing.is_some() {
                    std::fs::remove_file(&path)?;
                }
                std::os::unix::fs::symlink(target, &path)?;
            }
            wire::TmpfsKind::Node { file_type, rdev } => {
                if existing.is_none() {
                    mounts::mknod(&path, file_type | e.mode, *rdev)?;
                }
            }
        }
        mounts::lchown(&path, e.uid, e.gid)?;
        if !matches!(e.kind, wire::TmpfsKind::Symlink(_)) {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(e.mode))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mount(id: u32, mp: &str, source: wire::MountSource) -> wire::Mount {
        wire::Mount {
            id,
            parent: 1,
            mount_point: mp.into(),
            flags: 0,
            fstype: "x".into(),
            device: "x".into(),
            source,
        }
    }

    #[test]
    fn paths_are_found_under_the_deepest_mount() {
        let table = wire::MountTable {
            mounts: vec![
                mount(
                    1,
                    "/",
                    wire::MountSource::Host {
                        path: "/srv/rootfs".into(),
                        create: false,
                    },
                ),
                mount(
                    2,
                    "/data",
                    wire::MountSource::Host {
                        path: "/var/vol".into(),
                        create: false,
                    },
                ),
                mount(
                    3,
                    "/dev",
                    wire::MountSource::Fresh {
                        data: String::new(),
                        contents: Vec::new(),
                    },
                ),
            ],
        };
        assert_eq!(
            host_path(&table, "/bin/sh").as_deref(),
            Some("/srv/rootfs/bin/sh")
        );
        assert_eq!(host_path(&table, "/data/x").as_deref(), Some("/var/vol/x"));
        assert_eq!(
            host_path(&table, "/database").as_deref(),
            Some("/srv/rootfs/database")
        );
        assert_eq!(host_path(&table, "/data").as_deref(), Some("/var/vol"));
        assert_eq!(host_path(&table, "/dev/null"), None);
    }

    #[test]
    fn below_and_join_keep_component_boundaries() {
        assert_eq!(below("/a/b", "/a"), Some("b"));
        assert_eq!(below("/ab", "/a"), None);
        assert_eq!(below("/a", "/"), Some("a"));
        assert_eq!(below("/", "/"), Some(""));
        assert_eq!(join("/", "x"), "/x");
        assert_eq!(join("/srv", ""), "/srv");
        assert_eq!(join("/srv/", "/y"), "/srv/y");
    }
}
