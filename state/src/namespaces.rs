//! The namespaces of its own a process lived in (beyond those of whoever
//! dumped it): captured as what recreates them, and the `clone3` flags that
//! make them again for the restored process (set up by the restorer before
//! the program's state goes in).
//!
//! Kept today:
//! - a UTS namespace (host and domain name set again in a fresh one);
//! - an IPC namespace (a fresh one: refused at dump time if it held SysV
//!   objects, which tern does not move);
//! - a mount namespace (its table rebuilt: [`crate::mounts`]);
//! - a PID namespace whose init is the dumped process (made again with it
//!   as pid 1, every process and thread given back its id there), or one
//!   a tern restore made for it under its reaper.
//!
//! Refused, naming the namespace: another user, cgroup or time namespace,
//! and any other PID namespace. A network namespace of its own is not
//! recreated: the program lands in the restorer's, as its sockets do (a
//! migration's destination namespace is the user's choice).

use tern_sys::ns::{self, Kind};
use tern_sys::{Context, Error as EngineError, Result};
use tern_wire as wire;

/// Namespaces not kept: a process living in another one of these is
/// refused, with why.
const REFUSED: &[(Kind, &str)] = &[
    (
        Kind::User,
        "its id mappings and capabilities there would have to be rebuilt",
    ),
    (Kind::Cgroup, "its cgroup root would have to be rebuilt"),
    (Kind::Time, "its clock offsets would have to be set again"),
];

/// Refuse process `pid` if it lives in a namespace tern cannot recreate.
pub fn refuse_unsupported(pid: i32) -> Result<()> {
    for &(kind, why) in REFUSED {
        if ns::differs(pid, kind).ctx(pid, || format!("read ns/{}", kind.name()))? {
            let id = ns::id(pid, kind).unwrap_or(0);
            return Err(EngineError::Unsupported {
                pid,
                reason: format!(
                    "it lives in another {} namespace ({}:[{id}]): not supported yet ({why})",
                    kind.name(),
                    kind.name()
                ),
            });
        }
    }
    Ok(())
}

/// Refuse process `pid`, the root of a dump, if it lives in a PID
/// namespace of its own without being its init: restored as the init of a
/// new one it would change its pid.
pub fn refuse_pid_namespace_member(pid: i32) -> Result<()> {
    if !ns::differs(pid, Kind::Pid).ctx(pid, || "read ns/pid".into())? {
        return Ok(());
    }
    let inner = ns::inner_pid(pid).ctx(pid, || "read NSpid".into())?;
    let reaped_by_tern =
        || ns::under_tern_reaper(pid).ctx(pid, || "look for its PID namespace's init".into());
    if inner != 1 && !reaped_by_tern()? {
        return Err(EngineError::Unsupported {
            pid,
            reason: format!(
                "it lives in another pid namespace as pid {inner}, not as its init (nor under the reaper of one a tern restore made): dump the namespace's init (pid 1 there), which takes its whole tree"
            ),
        });
    }
    let for_children =
        ns::id_of_file(pid, "pid_for_children").ctx(pid, || "read ns/pid_for_children".into())?;
    if Some(for_children) != ns::id(pid, Kind::Pid).ok() {
        return Err(EngineError::Unsupported {
            pid,
            reason: "its children would be made in another pid namespace than its own (setns): not supported".into(),
        });
    }
    Ok(())
}

/// The mount table of the tree under `root` if it lives in a mount
/// namespace of its own (every process of a tree shares the root's), read
/// once for all of them.
pub fn tree_mounts(root: i32) -> Result<Option<wire::MountTable>> {
    if ns::differs(root, Kind::Mnt).ctx(root, || "read ns/mnt".into())? {
        crate::mounts::capture(root).map(Some)
    } else {
        Ok(None)
    }
}

/// The namespaces of its own process `pid` lives in, for its image;
/// `mounts`: its mount table if already read (a tree's, [`tree_mounts`]).
pub fn capture(pid: i32, mounts: Option<&wire::MountTable>) -> Result<wire::Namespaces> {
    let differs =
        |kind: Kind| ns::differs(pid, kind).ctx(pid, || format!("read ns/{}", kind.name()));
    let uts = if differs(Kind::Uts)? {
        let (hostname, domainname) =
            ns::uts_names(pid).ctx(pid, || "uname in its UTS namespace".into())?;
        Some(wire::Uts {
            hostname,
            domainname,
        })
    } else {
        None
    };
    let ipc = differs(Kind::Ipc)?;
    if ipc {
        let held =
            ns::ipc_objects(pid).ctx(pid, || "list the objects of its IPC namespace".into())?;
        let [shm, sem, msg] = held.sysv;
        if shm + sem + msg > 0 {
            return Err(EngineError::Unsupported {
                pid,
                reason: format!(
                    "its IPC namespace holds SysV objects ({shm} shared memory segment(s), {sem} semaphore set(s), {msg} message queue(s)), which tern does not move"
                ),
            });
        }
        let queues = held.mqueues;
        if !queues.is_empty() {
            return Err(EngineError::Unsupported {
                pid,
                reason: format!(
                    "its IPC namespace holds POSIX message queues ({}), which tern does not move",
                    queues.join(", ")
                ),
            });
        }
    }
    let mnt = match (differs(Kind::Mnt)?, mounts) {
        (false, _) => None,
        (true, Some(table)) => Some(table.clone()),
        (true, None) => Some(crate::mounts::capture(pid)?),
    };
    let pid_ids = if differs(Kind::Pid)? {
        let ids = ns::inner_ids_of_tree(pid).ctx(pid, || "read NSpid of its tree".into())?;
        let init = ids.contains(&(pid, 1));
        Some(wire::PidIds { ids, init })
    } else {
        None
    };
    Ok(wire::Namespaces {
        uts,
        ipc,
        mnt,
        pid: pid_ids,
    })
}

/// Whether processes `a` and `b` share every namespace an image keeps (the
/// processes of one tree must: they are restored into one set).
pub fn same_as(a: i32, b: i32) -> Result<Option<&'static str>> {
    for kind in [Kind::Uts, Kind::Ipc, Kind::Mnt, Kind::Pid] {
        let ka = ns::id(a, kind).ctx(a, || format!("read ns/{}", kind.name()))?;
        let kb = ns::id(b, kind).ctx(b, || format!("read ns/{}", kind.name()))?;
        if ka != kb {
            return Ok(Some(kind.name()));
        }
    }
    Ok(None)
}

/// The `clone3` flags that make the image's namespaces for its process.
pub fn clone_flags(n: &wire::Namespaces) -> u64 {
    let mut flags = 0;
    if n.uts.is_some() {
        flags |= Kind::Uts.clone_flag();
    }
    if n.ipc {
        flags |= Kind::Ipc.clone_flag();
    }
    if n.mnt.is_some() {
        flags |= Kind::Mnt.clone_flag();
    }
    // Under a reaper the namespace is made by the reaper, not the puppet.
    if n.pid.as_ref().is_some_and(|p| p.init) {
        flags |= Kind::Pid.clone_flag();
    }
    flags
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clone_flags_follow_the_image() {
        let none = wire::Namespaces::default();
        assert_eq!(clone_flags(&none), 0);
        let both = wire::Namespaces {
            uts: Some(wire::Uts {
                hostname: "edge".into(),
                domainname: String::new(),
            }),
            ipc: true,
            mnt: None,
            pid: None,
        };
        assert_eq!(
            clone_flags(&both),
            (libc::CLONE_NEWUTS | libc::CLONE_NEWIPC) as u64
        );
    }
}
