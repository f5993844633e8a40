//! Mount tables: `/proc/PID/mountinfo` parsed, and the calls that build a
//! mount namespace for a restored program from a thread of tern that has
//! joined it (`unshare(CLONE_FS)` then `setns(CLONE_NEWNS)`: a thread
//! sharing its `fs_struct` with others may not change mount namespace).

use std::ffi::CString;
use std::io;

/// One line of `/proc/PID/mountinfo` (`proc_pid_mountinfo(5)`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountInfo {
    pub id: u32,
    pub parent: u32,
    /// `st_dev` of the file system: (major, minor).
    pub dev: (u32, u32),
    /// The directory of the file system at the root of this mount.
    pub root: String,
    /// Where it is mounted, relative to the reader's root.
    pub mount_point: String,
    /// Per-mount options (`ro`, `nosuid`, `relatime`, ...).
    pub options: String,
    /// Optional fields (`shared:N`, `master:N`, ...).
    pub propagation: String,
    pub fstype: String,
    pub source: String,
    /// Per-superblock options.
    pub super_options: String,
}

/// Undo mountinfo's octal escapes (`\040` for a space, and so on).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b
            .get(i + 1..i + 4)
            .filter(|_| b[i] == b'\\')
            .and_then(|d| std::str::from_utf8(d).ok())
            .and_then(|d| u8::from_str_radix(d, 8).ok());
        match octal {
            Some(v) => {
                out.push(v);
                i += 4;
            }
            None => {
                out.push(b[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parse a whole mountinfo text; a line that does not parse is an error
/// naming it.
pub fn parse_mountinfo(text: &str) -> io::Result<Vec<MountInfo>> {
    text.lines()
        .filter(|l| !l.is_empty())
        .map(|l| {
            parse_line(l).ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidData, format!("mountinfo line {l:?}"))
            })
        })
        .collect()
}

fn parse_line(l: &str) -> Option<MountInfo> {
    let (head, tail) = l.split_once(" - ")?;
    let f: Vec<&str> = head.split(' ').collect();
    let t: Vec<&str> = tail.splitn(3, ' ').collect();
    let (major, minor) = f.get(2)?.split_once(':')?;
    Some(MountInfo {
        id: f.first()?.parse().ok()?,
        parent: f.get(1)?.parse().ok()?,
        dev: (major.parse().ok()?, minor.parse().ok()?),
        root: unescape(f.get(3)?),
        mount_point: unescape(f.get(4)?),
        options: f.get(5)?.to_string(),
        propagation: f.get(6..).map(|o| o.join(" ")).unwrap_or_default(),
        fstype: t.first()?.to_string(),
        source: unescape(t.get(1)?),
        super_options: t.get(2).map(|s| s.to_string()).unwrap_or_default(),
    })
}

/// The mount table of process `pid` (0: tern's own).
pub fn mountinfo(pid: i32) -> io::Result<Vec<MountInfo>> {
    let path = if pid == 0 {
        "/proc/self/mountinfo".to_string()
    } else {
        format!("/proc/{pid}/mountinfo")
    };
    parse_mountinfo(&std::fs::read_to_string(path)?)
}

/// The `MS_*` flags that a mount's per-mount options stand for. Neither
/// `relatime` nor `noatime` shown means strict atime (a new mount would
/// otherwise be `relatime`).
pub fn mount_flags(options: &str) -> u64 {
    let mut flags = 0;
    for o in options.split(',') {
        flags |= match o {
            "ro" => libc::MS_RDONLY,
            "nosuid" => libc::MS_NOSUID,
            "nodev" => libc::MS_NODEV,
            "noexec" => libc::MS_NOEXEC,
            "noatime" => libc::MS_NOATIME,
            "nodiratime" => libc::MS_NODIRATIME,
            "relatime" => libc::MS_RELATIME,
            _ => 0,
        };
    }
    if flags & (libc::MS_RELATIME | libc::MS_NOATIME) == 0 {
        flags |= libc::MS_STRICTATIME;
    }
    flags
}

fn cstr(s: &str) -> io::Result<CString> {
    CString::new(s).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, format!("{s:?}: NUL")))
}

fn check(r: libc::c_int, what: impl FnOnce() -> String) -> io::Result<()> {
    if r == 0 {
        Ok(())
    } else {
        let e = io::Error::last_os_error();
        Err(io::Error::new(e.kind(), format!("{}: {e}", what())))
    }
}

/// `mount(2)`; `None` arguments are passed as NULL.
pub fn mount(
    source: Option<&str>,
    target: &str,
    fstype: Option<&str>,
    flags: u64,
    data: Option<&str>,
) -> io::Result<()> {
    let (s, t, f, d) = (
        source.map(cstr).transpose()?,
        cstr(target)?,
        fstype.map(cstr).transpose()?,
        data.map(cstr).transpose()?,
    );
    let ptr = |c: &Option<CString>| c.as_ref().map_or(std::ptr::null(), |c| c.as_ptr());
    // SAFETY: every pointer is NULL or a NUL-terminated string alive for
    // the call.
    let r = unsafe {
        libc::mount(
            ptr(&s),
            t.as_ptr(),
            ptr(&f),
            flags as libc::c_ulong,
            ptr(&d).cast(),
        )
    };
    check(r, || {
        format!(
            "mount {} on {target} ({}, flags {flags:#x}, {:?})",
            source.unwrap_or("-"),
            fstype.unwrap_or("bind/remount"),
            data.unwrap_or("")
        )
    })
}

/// `mount(2)` of a proc file system for PID namespace of process
/// `ns_owner`: a proc instance shows the PID namespace of whoever mounts it,
/// so a child forked into that namespace (this thread's
/// `pid_for_children` switched there first) mounts it, in this thread's
/// mount namespace, and exits with the errno.
pub fn mount_proc_for(ns_owner: i32, target: &str, flags: u64, data: &str) -> io::Result<()> {
    let ns = std::fs::File::open(format!("/proc/{ns_owner}/ns/pid"))?;
    crate::child::set_pid_ns_for_children(std::os::fd::AsFd::as_fd(&ns))?;
    let (proc_, t, d) = (cstr("proc")?, cstr(target)?, cstr(data)?);
    // SAFETY: the child runs raw syscalls with pointers prepared before the
    // fork only, and never returns into Rust code (clone3_fork's contract).
    let child = unsafe { crate::clone3_fork(0, None)? };
    if child == 0 {
        // SAFETY: in the child: mount with NUL-terminated strings, then exit.
        unsafe {
            let r = libc::syscall(
                libc::SYS_mount,
                proc_.as_ptr(),
                t.as_ptr(),
                proc_.as_ptr(),
                flags as libc::c_ulong,
                d.as_ptr(),
            );
            let code = if r == 0 { 0 } else { *libc::__errno_location() };
            libc::syscall(libc::SYS_exit_group, code);
        }
        unreachable!("exit_group returned");
    }
    match crate::child::reap(child) {
        Some(status) if libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0 => Ok(()),
        Some(status) if libc::WIFEXITED(status) => {
            let e = io::Error::from_raw_os_error(libc::WEXITSTATUS(status));
            Err(io::Error::new(
                e.kind(),
                format!("mount proc on {target}: {e}"),
            ))
        }
        other => Err(io::Error::other(format!(
            "the child mounting proc on {target} ended with {other:?}"
        ))),
    }
}

/// `mknod(2)` of a device node or FIFO with `mode` (type bits included).
pub fn mknod(path: &str, mode: u32, rdev: u64) -> io::Result<()> {
    let p = cstr(path)?;
    // SAFETY: a NUL-terminated path alive for the call.
    let r = unsafe { libc::mknod(p.as_ptr(), mode as libc::mode_t, rdev as libc::dev_t) };
    check(r, || {
        format!("mknod {path} (mode {mode:o}, rdev {rdev:#x})")
    })
}

/// `lchown(2)`.
pub fn lchown(path: &str, uid: u32, gid: u32) -> io::Result<()> {
    let p = cstr(path)?;
    // SAFETY: a NUL-terminated path alive for the call.
    let r = unsafe { libc::lchown(p.as_ptr(), uid, gid) };
    check(r, || format!("lchown {path}"))
}

/// Make `new_root` (a mount point) the root of this mount namespace and
/// drop the old root (`pivot_root(".", ".")` then a lazy unmount of what
/// is stacked under it). Every process of the namespace whose root or
/// working directory was the old root gets the new one.
pub fn pivot_into(new_root: &str) -> io::Result<()> {
    let dir = cstr(new_root)?;
    let dot = cstr(".")?;
    // SAFETY: NUL-terminated paths alive for each call; pivot_root has no
    // libc wrapper.
    unsafe {
        check(libc::chdir(dir.as_ptr()), || format!("chdir {new_root}"))?;
        check(
            libc::syscall(libc::SYS_pivot_root, dot.as_ptr(), dot.as_ptr()) as libc::c_int,
            || format!("pivot_root into {new_root}"),
        )?;
        check(libc::umount2(dot.as_ptr(), libc::MNT_DETACH), || {
            "unmount the old root".into()
        })?;
        check(libc::chdir(c"/".as_ptr()), || "chdir /".into())
    }
}

/// Run `f` in a thread of ours that has joined process `pid`'s mount
/// namespace (and its IPC namespace if `with_ipc`: an mqueue file system
/// belongs to the IPC namespace of whoever mounts it).
pub fn in_mount_namespace_of<T: Send>(
    pid: i32,
    with_ipc: bool,
    f: impl FnOnce() -> io::Result<T> + Send,
) -> io::Result<T> {
    use crate::ns::Kind;
    let kinds: &[Kind] = if with_ipc {
        &[Kind::Mnt, Kind::Ipc]
    } else {
        &[Kind::Mnt]
    };
    crate::ns::in_namespaces_of(pid, kinds, f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_lines_parse_with_their_escapes_and_optional_fields() {
        let text = "74 49 254:0 /tmp/ctr/rootfs / ro,relatime - ext4 /dev/vda rw,discard\n\
                    55 75 0:42 /null /proc/keys rw,nosuid shared:3 master:1 - tmpfs tmpfs rw,size=65536k,mode=755\n\
                    60 74 0:50 / /mnt/with\\040space rw - tmpfs none rw\n";
        let m = parse_mountinfo(text).expect("parse");
        assert_eq!(m.len(), 3);
        assert_eq!(m[0].id, 74);
        assert_eq!(m[0].parent, 49);
        assert_eq!(m[0].dev, (254, 0));
        assert_eq!(m[0].root, "/tmp/ctr/rootfs");
        assert_eq!(m[0].mount_point, "/");
        assert_eq!(
            mount_flags(&m[0].options),
            (libc::MS_RDONLY | libc::MS_RELATIME)
        );
        assert_eq!(m[0].fstype, "ext4");
        assert_eq!(m[0].super_options, "rw,discard");
        assert_eq!(m[1].propagation, "shared:3 master:1");
        assert_eq!(m[1].root, "/null");
        assert_eq!(m[2].mount_point, "/mnt/with space");
        assert_eq!(
            mount_flags("rw,nosuid"),
            libc::MS_NOSUID | libc::MS_STRICTATIME
        );
        assert!(parse_mountinfo("garbage\n").is_err());
    }

    #[test]
    fn our_own_mount_table_reads() {
        let m = mountinfo(0).expect("mountinfo");
        assert!(m.iter().any(|x| x.mount_point == "/"));
    }
}
