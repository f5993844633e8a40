//! `tern inspect`: what an image holds.

use anyhow::{Context, Result};
use std::path::Path;
use tern_wire as wire;

pub fn run(dir: &Path, json: bool) -> Result<()> {
    if dir.join(wire::TREE_FILE).exists() {
        return run_tree(dir, json);
    }
    run_one(dir, json)
}

/// A process tree: who is whose parent and what they share, then each
/// process's image.
fn run_tree(dir: &Path, json: bool) -> Result<()> {
    let tree: wire::Tree = wire::read_record(&dir.join(wire::TREE_FILE), wire::RecordKind::Tree)
        .with_context(|| format!("cannot read image {}", dir.display()))?;
    let dir_of = |k: usize, pid: i32| {
        if k == 0 {
            dir.to_path_buf()
        } else {
            dir.join(wire::tree_process_dir(pid))
        }
    };
    if json {
        let mut processes = Vec::new();
        for (k, p) in tree.processes.iter().enumerate() {
            let image = tern_restorer::Image::load(&dir_of(k, p.pid))
                .with_context(|| format!("cannot read the image of process {}", p.pid))?;
            processes.push(serde_json::json!({
                "process": p,
                "inventory": image.inventory,
                "core": image.core,
                "mm": image.mm,
                "files": image.files,
            }));
        }
        let v = serde_json::json!({
            "tree": {
                "pipes": tree.pipes.iter().map(|p| serde_json::json!({"id": p.id, "size": p.size, "buffered": p.data.len()})).collect::<Vec<_>>(),
                "shared_fds": tree.shared_fds,
                "shared_memory": tree.shared_memory,
            },
            "processes": processes,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!(
        "process tree {}: {} processes",
        dir.display(),
        tree.processes.len()
    );
    for p in &tree.processes {
        let depth = {
            let mut d = 0;
            let mut cur = p.ppid;
            while let Some(q) = tree.processes.iter().find(|q| q.pid == cur) {
                d += 1;
                cur = q.ppid;
                if d > tree.processes.len() {
                    break;
                }
            }
            d
        };
        println!(
            "  {}{} (parent {}, group {}, session {})",
            "  ".repeat(depth),
            p.pid,
            p.ppid,
            p.pgid,
            p.sid
        );
    }
    for z in &tree.zombies {
        let how = if libc::WIFSIGNALED(z.status) {
            format!("killed by signal {}", libc::WTERMSIG(z.status))
        } else {
            format!("exited with status {}", libc::WEXITSTATUS(z.status))
        };
        println!(
            "zombie {} (child of {}, {how}, not reaped yet)",
            z.pid, z.ppid
        );
    }
    for p in &tree.pipes {
        println!(
            "shared pipe {} ({} bytes buffered, capacity {})",
            p.id,
            p.data.len(),
            p.size
        );
    }
    for g in &tree.shared_fds {
        let who: Vec<String> = g.iter().map(|(p, f)| format!("{p}:fd {f}")).collect();
        println!("shared open file: {}", who.join(", "));
    }
    for g in &tree.shared_memory {
        let who: Vec<String> = g.iter().map(|(p, s, _)| format!("{p}@{s:#x}")).collect();
        println!("shared memory: {}", who.join(", "));
    }
    for (k, p) in tree.processes.iter().enumerate() {
        println!();
        run_one(&dir_of(k, p.pid), false)?;
    }
    Ok(())
}

fn run_one(dir: &Path, json: bool) -> Result<()> {
    let inv: wire::Inventory =
        wire::read_record(&dir.join(wire::INVENTORY_FILE), wire::RecordKind::Inventory)
            .with_context(|| format!("cannot read image {}", dir.display()))?;
    if inv.pre_dump {
        if json {
            println!(
                "{}",
                serde_json::to_string_pretty(&serde_json::json!({ "inventory": inv }))?
            );
        } else {
            println!(
                "pre-dump {} of process {} ({}): {} KiB of changed pages ({} KiB stored), round hash {:016x}, parent {}",
                dir.display(),
                inv.pid,
                inv.comm,
                inv.pages_bytes >> 10,
                inv.pages_stored_bytes >> 10,
                inv.round_hash,
                inv.parent.as_deref().unwrap_or("none")
            );
        }
        return Ok(());
    }
    let image = tern_restorer::Image::load(dir)
        .with_context(|| format!("cannot read image {}", dir.display()))?;
    if json {
        let v = serde_json::json!({
            "inventory": image.inventory,
            "core": image.core,
            "mm": image.mm,
            "files": image.files,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let inv = &image.inventory;
    println!(
        "image {}: process {} ({}), tern {}, kernel {}",
        dir.display(),
        inv.pid,
        inv.comm,
        inv.tern_version,
        inv.kernel_release
    );
    println!(
        "memory: {} KiB of pages ({} KiB stored), round hash {:016x}{}",
        inv.pages_bytes >> 10,
        inv.pages_stored_bytes >> 10,
        inv.round_hash,
        match &inv.parent {
            Some(p) => format!(", increment of {p}"),
            None => String::new(),
        }
    );
    println!("namespaces of its own: {}", inv.namespaces.describe());
    print_cgroups(&inv.cgroups);
    let c = &image.core;
    println!(
        "creds: uid {:?} gid {:?} groups {:?}; cwd {}; umask {:03o}",
        c.creds.uid, c.creds.gid, c.creds.groups, c.cwd, c.umask
    );
    print_process_state(c);
    print_mappings(&image.mm.vmas);
    println!("files:");
    for f in &image.files.fds {
        let what = describe_fd(&image, f);
        println!(
            "  fd {}{}: {what}{}",
            f.fd,
            if f.cloexec { " cloexec" } else { "" },
            if f.desc as i32 != f.fd {
                format!(" [shares fd {}]", f.desc)
            } else {
                String::new()
            }
        );
    }
    Ok(())
}

/// Threads, signal handlers, timers and pending signals of an image.
fn print_process_state(c: &wire::Core) {
    for t in &c.threads {
        let state = match t.syscall {
            wire::SyscallState::None => "running user code".to_string(),
            wire::SyscallState::Restart { nr, code } => {
                format!("in syscall {nr} (restart code {code}), will re-issue it")
            }
        };
        println!(
            "thread {} ({}): rip {:#x} rsp {:#x}, {state}; blocked signals {:#x}",
            t.tid, t.comm, t.regs.rip, t.regs.rsp, t.sigmask
        );
    }
    let handled: Vec<String> = c
        .sigactions
        .iter()
        .enumerate()
        .filter(|(_, a)| a.handler > 1)
        .map(|(i, _)| (i + 1).to_string())
        .collect();
    println!("signal handlers for: {}", handled.join(" "));
    for t in &c.posix_timers {
        println!(
            "posix timer {}: clock {}, signal {} (notify {}{}), next in {} ns, every {} ns",
            t.id,
            t.clock,
            t.signo,
            t.notify,
            if t.notify_tid != 0 {
                format!(" thread {}", t.notify_tid)
            } else {
                String::new()
            },
            t.value_ns,
            t.interval_ns
        );
    }
    for t in &c.itimers {
        println!(
            "itimer {}: next in {} us, every {} us",
            ["real", "virtual", "prof"]
                .get(t.which as usize)
                .unwrap_or(&"?"),
            t.value_us,
            t.interval_us
        );
    }
    if !c.pending_signals.is_empty() {
        println!("pending signals: {:?}", c.pending_signals);
    }
}

/// The memory map of an image, as /proc/PID/maps shows one.
fn print_mappings(vmas: &[wire::Vma]) {
    println!("mappings:");
    for v in vmas {
        let prot = format!(
            "{}{}{}{}",
            if v.prot & wire::PROT_READ != 0 {
                'r'
            } else {
                '-'
            },
            if v.prot & wire::PROT_WRITE != 0 {
                'w'
            } else {
                '-'
            },
            if v.prot & wire::PROT_EXEC != 0 {
                'x'
            } else {
                '-'
            },
            if v.shared { 's' } else { 'p' }
        );
        println!("  {:#014x}-{:#014x} {prot} {}", v.start, v.end, v.name);
    }
}

/// One line about what an fd of the image is.
fn describe_fd(image: &tern_restorer::Image, f: &wire::Fd) -> String {
    // Kinds with a module of their own describe themselves.
    let own = tern_state::files::describe(&f.kind);
    match &f.kind {
        _ if own.is_some() => own.unwrap_or_default(),
        wire::FdKind::Path {
            path,
            offset,
            flags,
            ..
        } => {
            format!("{path} (offset {offset}, flags {flags:#o})")
        }
        wire::FdKind::Deleted { path, size, .. } => {
            format!("{path} (deleted, {size} bytes saved)")
        }
        wire::FdKind::Inherited { what } => {
            format!("{what} (taken from the restorer's own fd)")
        }
        wire::FdKind::UnixWidowed { queued, .. } => format!(
            "unix socket whose other end is closed ({} bytes waiting)",
            queued.len()
        ),
        wire::FdKind::UnixBound {
            name,
            backlog,
            file,
            ..
        } => {
            let name = tern_state::sockets::show_unix_name(name);
            let role = match backlog {
                Some(b) => format!("listening, backlog {b}"),
                None => "datagram".to_string(),
            };
            match file {
                Some((mode, uid, gid)) => {
                    format!("unix socket {name} ({role}; file mode {mode:o}, owner {uid}:{gid})")
                }
                None => format!("unix socket {name} ({role})"),
            }
        }
        wire::FdKind::External { name, what, .. } => {
            format!("{what}, shared with the outside: replaced by --inherit-fd fd[N]:{name}")
        }
        wire::FdKind::Pipe { id, write_end, .. } => {
            let held = image
                .files
                .pipes
                .iter()
                .find(|p| p.id == *id)
                .map_or(0, |p| p.data.len());
            format!(
                "pipe {id} ({} end, {held} bytes buffered)",
                if *write_end { "write" } else { "read" }
            )
        }
        wire::FdKind::Inet(sock) => inet_line(sock),
        wire::FdKind::Inotify { watches, .. } => format!(
            "inotify watching {}",
            watches
                .iter()
                .map(|w| format!("{} (wd {}, mask {:#x})", w.path, w.wd, w.mask))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        wire::FdKind::Fifo { path, data, .. } => {
            format!("FIFO {path} ({} bytes buffered)", data.len())
        }
        wire::FdKind::Memfd {
            name, size, seals, ..
        } => format!("memfd {name:?} ({size} bytes saved, seals {seals:#x})"),
        wire::FdKind::UnixPair {
            pair,
            kind,
            queued,
            name,
            accepted,
            ..
        } => format!(
            "unix {} {} {pair} ({} bytes waiting)",
            match *kind {
                libc::SOCK_STREAM => "stream",
                libc::SOCK_DGRAM => "datagram",
                _ => "seqpacket",
            },
            match (name, accepted) {
                (Some(n), true) => format!(
                    "connection accepted at {}, pair",
                    tern_state::sockets::show_unix_name(n)
                ),
                (Some(n), false) => format!(
                    "client bound to {}, pair",
                    tern_state::sockets::show_unix_name(n)
                ),
                (None, _) => "socketpair".to_string(),
            },
            queued.len()
        ),
        wire::FdKind::Epoll { targets } => format!(
            "epoll watching fds {}",
            targets
                .iter()
                .map(|t| format!("{} ({:#x})", t.fd, t.events))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        other => format!("{other:?}"),
    }
}

fn inet_line(s: &wire::InetSocket) -> String {
    let state = match &s.state {
        wire::InetState::Open => "open".to_string(),
        wire::InetState::Listening { backlog } => format!("listening, backlog {backlog}"),
        wire::InetState::Connected => "connected".to_string(),
        wire::InetState::Established(c) => format!(
            "established: {} bytes unacknowledged ({} unsent), {} unread, mss {}{}{}{}",
            c.send_queue.len(),
            c.unsent,
            c.recv_queue.len(),
            c.mss,
            c.wscale
                .map_or(String::new(), |(s, r)| format!(", wscale {s}/{r}")),
            if c.sack { ", sack" } else { "" },
            if c.timestamps { ", timestamps" } else { "" }
        ),
    };
    format!("{} ({state})", s.endpoints())
}

/// The cgroups the image was in, with the settings a restore that makes
/// them writes back.
fn print_cgroups(cgroups: &[wire::Cgroup]) {
    let placed: Vec<&wire::Cgroup> = cgroups.iter().filter(|c| c.path != "/").collect();
    if placed.is_empty() {
        println!("cgroups: the root of every hierarchy");
        return;
    }
    println!("cgroups:");
    for c in placed {
        let name = if c.controllers.is_empty() {
            "cgroup2"
        } else {
            &c.controllers
        };
        let settings: Vec<String> = c
            .dirs
            .last()
            .map(|d| {
                d.settings
                    .iter()
                    .map(|(f, v)| format!("{f}={}", v.replace('\n', ";")))
                    .collect()
            })
            .unwrap_or_default();
        println!("  {name}: {}  {}", c.path, settings.join(" "));
    }
}
