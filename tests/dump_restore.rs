//! Root-run integration tests: real programs are started, dumped with
//! `tern dump`, killed, restored with `tern restore` under their original pid,
//! and checked to continue exactly where they stopped.
//!
//! Workloads live in `tests/workloads/` (C compiled at test time, a Rust
//! example of this workspace, a python3 script). Each prints a numbered line
//! per step; the tests check that the numbers run on across the dump with no
//! gap and no repeat, that output resumes at the right file offset, and that
//! the programs' own self-checks never report CORRUPT.

mod common;

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use common::*;

/// A session running `tests/workloads/<prog>.c` compiled for this test.
fn c_session(test: &str, prog: &str, args: &[&str]) -> Session {
    let dir = TestDir::new(test);
    let exe = compile_c(&dir, prog);
    let mut cmd = Cmd::new(exe);
    for a in args {
        cmd = cmd.arg(a);
    }
    Session::start(dir, cmd, Stdio::null())
}

/// The workload `prog` (a "tick N" printer checking itself) is dumped once
/// it printed `before`, restored, and must go on to `after` exactly.
fn dump_restore_goes_on(test: &str, prog: &str, before: u64, after: u64) {
    let mut s = c_session(test, prog, &[]);
    s.wait_seq(before);
    s.dump();
    s.restore(Stdio::null());
    s.wait_seq(after);
    s.finish();
}

fn canonical(path: &Path) -> String {
    fs::canonicalize(path)
        .unwrap_or_else(|e| panic!("canonicalize {}: {e}", path.display()))
        .display()
        .to_string()
}

/// Does any number or string in `v` equal `pid`?
fn json_mentions(v: &serde_json::Value, pid: i32) -> bool {
    use serde_json::Value;
    match v {
        Value::Number(n) => n.as_i64() == Some(i64::from(pid)),
        Value::String(s) => s.trim() == pid.to_string(),
        Value::Array(a) => a.iter().any(|x| json_mentions(x, pid)),
        Value::Object(o) => o.values().any(|x| json_mentions(x, pid)),
        _ => false,
    }
}

/// `tern inspect` succeeds on a fresh image and shows the dumped pid, both as
/// text and as JSON.
fn check_inspect(s: &Session) {
    let text = tern_inspect(&s.dir, &s.images, false);
    text.assert_ok("tern inspect");
    let pid = s.pid.to_string();
    assert!(
        text.stdout
            .split(|c: char| !c.is_ascii_digit())
            .any(|w| w == pid),
        "`tern inspect` does not show the dumped pid {pid}\n{}",
        text.describe()
    );
    let json = tern_inspect(&s.dir, &s.images, true);
    json.assert_ok("tern inspect --json");
    let value: serde_json::Value = serde_json::from_str(&json.stdout).unwrap_or_else(|e| {
        panic!(
            "`tern inspect --json` printed invalid JSON: {e}\n{}",
            json.describe()
        )
    });
    assert!(
        json_mentions(&value, s.pid),
        "`tern inspect --json` does not mention the dumped pid {pid}\n{}",
        json.describe()
    );
}

/// The 64 MiB counter in cgroups of its own (v1 memory two levels deep
/// with a limit at each, pids with a maximum, devices with an allow-list;
/// two levels of the cgroup2 hierarchy where it is mounted beside them)
/// is dumped, the cgroups are removed, and `tern restore` makes them again
/// with those settings and puts the program in them before its memory is
/// filled: its 64 MiB are charged to its memory cgroup (the original's were
/// charged where it started, v1 charges do not move). It counts on. A
/// second program restored with `--manage-cgroups ignore` stays in the
/// restoring tern's cgroups.
#[test]
fn cgroups_are_made_again_with_their_settings() {
    let test = "cgroups_are_made_again_with_their_settings";
    if !root_or_skip(test) {
        return;
    }
    let mut set = match CgroupSet::v1("cg", &["memory", "pids", "devices"]) {
        Ok(s) => s,
        Err(why) => {
            eprintln!("SKIP {test}: {why} (the test sets v1 limits)");
            return;
        }
    };
    set.make("memory", "app").expect("memory/app");
    // The cgroup2 hierarchy beside them, where mounted (no controllers
    // enabled on this kind of machine: the directories alone).
    let unified = Path::new("/sys/fs/cgroup/unified/cgroup.procs").exists();
    if unified {
        set.make("unified", "").expect("unified");
        set.make("unified", "app").expect("unified/app");
    }
    set.write(
        "memory",
        "",
        "memory.limit_in_bytes",
        &(512u64 << 20).to_string(),
    );
    set.write(
        "memory",
        "app",
        "memory.limit_in_bytes",
        &(256u64 << 20).to_string(),
    );
    set.write("pids", "", "pids.max", "32");
    set.write("devices", "", "devices.deny", "a");
    for rule in ["c 1:3 rwm", "c 1:5 rwm", "c 1:8 rwm", "c 1:9 rwm"] {
        set.write("devices", "", "devices.allow", rule);
    }
    let settings = |set: &CgroupSet| {
        [
            set.read("memory", "", "memory.limit_in_bytes"),
            set.read("memory", "app", "memory.limit_in_bytes"),
            set.read("pids", "", "pids.max"),
            set.read("devices", "", "devices.list"),
        ]
    };
    let before = settings(&set);
    let mut s = c_session("cgroups", "counter64", &[]);
    s.wait_seq(2);
    set.add("memory", "app", s.pid);
    set.add("pids", "", s.pid);
    set.add("devices", "", s.pid);
    if unified {
        set.add("unified", "app", s.pid);
    }
    let own = format!("/{}", set.name);
    let app = format!("{own}/app");
    let placed = |pid: i32| {
        [
            cgroup_of(pid, "memory"),
            cgroup_of(pid, "pids"),
            cgroup_of(pid, "devices"),
            cgroup_of(pid, "").filter(|_| unified),
        ]
    };
    let expected = [
        Some(app.clone()),
        Some(own.clone()),
        Some(own.clone()),
        unified.then(|| app.clone()),
    ];
    assert_eq!(placed(s.pid), expected);
    s.wait_seq(3);
    s.dump();
    assert!(
        set.remove_all(),
        "the cgroups could not be removed after the dump"
    );

    s.restore(Stdio::null());
    assert_eq!(placed(s.pid), expected, "{}", s.diag());
    assert_eq!(
        settings(&set),
        before,
        "the cgroups' settings were not made again"
    );
    let usage: u64 = set
        .read("memory", "app", "memory.usage_in_bytes")
        .parse()
        .expect("usage");
    assert!(
        usage >= 64 << 20,
        "the restored program's 64 MiB are not charged to its memory cgroup: {usage} bytes"
    );
    // Ticks after the restore (those before it do not count).
    s.wait_seq(s.last_before + 3);
    s.finish();

    let mut s = c_session("cgroups_ignored", "sleeper", &["rel"]);
    s.wait_seq(1);
    set.add("memory", "app", s.pid);
    s.dump();
    s.restore_with(Stdio::null(), &["--manage-cgroups".into(), "ignore".into()]);
    let mine = cgroup_of(std::process::id() as i32, "memory");
    assert_eq!(
        cgroup_of(s.pid, "memory"),
        mine,
        "--manage-cgroups ignore: still placed"
    );
    s.wait_seq(s.last_before + 3);
    s.finish();
}

/// The 64 MiB self-verifying counter: dumped, killed, restored; it must keep
/// counting from where it stopped, verify its whole buffer again after the
/// restore, and keep writing stdout at the offset it had reached.
#[test]
fn counter64_continues_exactly() {
    if !root_or_skip("counter64_continues_exactly") {
        return;
    }
    let mut s = c_session("counter64", "counter64", &[]);
    s.wait_seq(5);
    s.dump();
    let pass_before = s
        .last_seq_line()
        .and_then(|l| field_after(&l, "pass"))
        .expect("pass field in counter64 output");
    check_inspect(&s);

    s.restore(Stdio::null());
    let pid = s.pid;
    assert_eq!(
        fd_targets(pid).get(&1),
        Some(&canonical(&s.out)),
        "the restored stdout is not the original output file\n{}",
        s.diag()
    );
    let (pos, _) = fdinfo(pid, 1).expect("fdinfo of restored stdout");
    assert!(
        pos >= s.pre_dump.len() as u64,
        "restored stdout offset {pos} is before the {} bytes written before the dump",
        s.pre_dump.len()
    );
    // Two more passes: at least one whole pass of the 64 MiB buffer ran
    // entirely after the restore.
    s.wait_for_line("two more full verification passes", |l| {
        field_after(l, "pass").is_some_and(|p| p >= pass_before + 2)
    });
    s.wait_seq(s.last_before + 10);
    s.finish();
}

/// A program blocked in read(2) on a pipe at dump time. After restore its
/// stdin is the pipe given to `tern restore`: lines written there are read,
/// counting on from the pre-dump lines, and closing it delivers EOF.
#[test]
fn pipe_reader_blocked_in_read() {
    if !root_or_skip("pipe_reader_blocked_in_read") {
        return;
    }
    let dir = TestDir::new("pipe_reader");
    let exe = compile_c(&dir, "pipe_reader");
    let mut s = Session::start(dir, Cmd::new(exe), Stdio::piped());
    s.prefix = "got: line ";
    let pid = s.pid;
    let mut input = s
        .original
        .take_stdin()
        .expect("pipe to the original's stdin");
    for i in 1..=5 {
        writeln!(input, "line {i}").expect("write to pipe_reader");
    }
    s.wait_seq(5);
    wait_until(
        WAIT,
        "pipe_reader to block in read()",
        || (current_syscall(pid) == Some(libc::SYS_read)).then_some(()),
        || s.diag(),
    );
    s.dump();
    drop(input);

    let (read_end, mut write_end) = pipe();
    let ino = inode_of(&write_end);
    s.restore(Stdio::from(read_end));
    assert_eq!(
        fd_targets(pid).get(&0),
        Some(&format!("pipe:[{ino}]")),
        "the restored stdin is not the pipe given to `tern restore` as its stdin"
    );
    for i in 6..=10 {
        writeln!(write_end, "line {i}").expect("write to restored pipe_reader");
    }
    s.wait_seq(10);
    drop(write_end);
    wait_until(
        WAIT,
        "the restored pipe_reader to see EOF and exit",
        || {
            let eof = complete_lines(&s.seq_path)
                .last()
                .is_some_and(|l| l.starts_with("eof"));
            (eof && !pid_alive(pid)).then_some(())
        },
        || s.diag(),
    );
    if let Some(r) = &mut s.restored {
        r.disarm();
    }

    let lines = s.final_lines();
    let (last, got) = lines.split_last().expect("output lines");
    assert_eq!(last, "eof count 10", "\n{}", s.diag());
    let expected: Vec<String> = (1..=10)
        .map(|i| format!("got: line {i} count {i}"))
        .collect();
    assert_eq!(got, expected.as_slice(), "\n{}", s.diag());
    s.assert_stderr_empty();
}

/// A sleeper (`rel`: raw nanosleep(2); `abs`: clock_nanosleep with
/// TIMER_ABSTIME on CLOCK_MONOTONIC) dumped while asleep in `syscall_nr`.
/// It must tick on; an interrupted sleep may end in at most one EINTR.
fn sleeper_case(test: &str, mode: &str, syscall_nr: libc::c_long) {
    let mut s = c_session(test, "sleeper", &[mode]);
    s.wait_seq(3);
    let pid = s.pid;
    wait_until(
        WAIT,
        "the sleeper to be inside its sleep syscall",
        || (current_syscall(pid) == Some(syscall_nr)).then_some(()),
        || s.diag(),
    );
    s.dump();
    s.restore(Stdio::null());
    s.wait_seq(s.last_before + 5);
    let lines = s.finish();
    let eintr = lines
        .last()
        .and_then(|l| field_after(l, "eintr"))
        .expect("eintr field in sleeper output");
    assert!(
        eintr <= 1,
        "one restore made the sleep fail with EINTR {eintr} times (at most once is acceptable)"
    );
}

#[test]
fn sleeper_in_nanosleep() {
    if !root_or_skip("sleeper_in_nanosleep") {
        return;
    }
    sleeper_case("sleeper_rel", "rel", libc::SYS_nanosleep);
}

#[test]
fn sleeper_in_clock_nanosleep_abstime() {
    if !root_or_skip("sleeper_in_clock_nanosleep_abstime") {
        return;
    }
    sleeper_case("sleeper_abs", "abs", libc::SYS_clock_nanosleep);
}

/// Sends SIGUSR1 and waits until the handler count printed reaches `count`.
fn usr1_and_wait(s: &mut Session, count: u64) {
    assert!(kill_pid(s.pid, libc::SIGUSR1), "kill(SIGUSR1) failed");
    s.wait_for_line(&format!("SIGUSR1 handler count {count}"), |l| {
        field_after(l, "usr1") == Some(count)
    });
}

/// A SIGUSR1 handler (SA_RESTART) and a blocked SIGUSR2: after restore the
/// handler still runs and counts on from its pre-dump count, the mask still
/// blocks SIGUSR2 (which then stays pending instead of killing it).
#[test]
fn sighandler_and_mask_survive() {
    if !root_or_skip("sighandler_and_mask_survive") {
        return;
    }
    let mut s = c_session("sighandler", "sighandler", &[]);
    s.wait_seq(3);
    usr1_and_wait(&mut s, 1);
    usr1_and_wait(&mut s, 2);
    s.dump();
    s.restore(Stdio::null());
    let pid = s.pid;
    let before = s.last_before;
    let line = s.wait_for_line("a tick after restore", |l| {
        seq_number(l, "tick ").is_some_and(|n| n > before)
    });
    assert_eq!(
        field_after(&line, "usr1"),
        Some(2),
        "handler count changed across the restore: {line:?}"
    );
    usr1_and_wait(&mut s, 3);
    usr1_and_wait(&mut s, 4);

    assert!(kill_pid(pid, libc::SIGUSR2), "kill(SIGUSR2) failed");
    let now = s.last_seq().expect("tick");
    s.wait_seq(now + 3); // still alive: SIGUSR2 (default action: terminate) is blocked
    let pending =
        status_sigset(pid, "ShdPnd").unwrap_or(0) | status_sigset(pid, "SigPnd").unwrap_or(0);
    assert_ne!(
        pending & sig_bit(libc::SIGUSR2),
        0,
        "SIGUSR2 sent to the restored process is not pending (pending set {pending:x})"
    );

    let lines = s.finish();
    let mut last_usr1 = 0;
    for l in &lines {
        let usr1 = field_after(l, "usr1").unwrap_or_else(|| panic!("no usr1 in {l:?}"));
        assert!(
            usr1 >= last_usr1 && usr1 <= 4,
            "handler count went from {last_usr1} to {usr1} at {l:?}"
        );
        last_usr1 = usr1;
        assert_eq!(
            field_after(l, "usr2blocked"),
            Some(1),
            "SIGUSR2 not blocked at {l:?}"
        );
        assert_eq!(
            field_after(l, "usr1blocked"),
            Some(0),
            "SIGUSR1 blocked at {l:?}"
        );
        assert_eq!(
            field_after(l, "act"),
            Some(1),
            "SIGUSR1 disposition lost at {l:?}"
        );
    }
    assert_eq!(last_usr1, 4);
}

/// A tight loop reading CLOCK_MONOTONIC and gettimeofday through the vDSO:
/// time never goes backwards after restore, the vDSO/vvar stay where they
/// were, and the in-memory iteration counter keeps increasing.
#[test]
fn vdso_clock_keeps_working() {
    if !root_or_skip("vdso_clock_keeps_working") {
        return;
    }
    let mut s = c_session("vdso_clock", "vdso_clock", &[]);
    s.wait_seq(3);
    assert!(
        special_maps(s.pid).iter().any(|e| e.path == "[vdso]"),
        "no [vdso] mapping in the original"
    );
    s.dump();
    s.restore(Stdio::null());
    s.wait_seq(s.last_before + 3);
    let lines = s.finish();
    let iters: Vec<u64> = lines
        .iter()
        .map(|l| field_after(l, "iters").unwrap_or_else(|| panic!("no iters in {l:?}")))
        .collect();
    assert!(
        iters.windows(2).all(|w| w[1] > w[0]),
        "the iteration counter did not keep increasing: {iters:?}"
    );
}

/// A daemon: its own session, an O_APPEND log, a MAP_SHARED anonymous page
/// holding its counter. After restore it is still a session leader, the log
/// fd still has O_APPEND (so it writes after a line appended meanwhile by
/// someone else), the shared page is still shared and its count runs on.
#[test]
fn daemon_session_append_log_shared_page() {
    if !root_or_skip("daemon_session_append_log_shared_page") {
        return;
    }
    let dir = TestDir::new("daemon");
    let exe = compile_c(&dir, "daemon");
    let log = dir.join("daemon.log");
    let mut s = Session::start(dir, Cmd::new(exe).arg(&log), Stdio::null());
    s.seq_path = log.clone();
    s.prefix = "beat ";
    let pid = s.pid;
    s.wait_seq(5);

    let is_shared_anon = |pid: i32| {
        read_maps(pid)
            .iter()
            .any(|e| e.perms.ends_with('s') && e.path.starts_with("/dev/zero"))
    };
    let stat = proc_stat(pid).expect("stat");
    assert_eq!(
        (stat.session, stat.pgrp),
        (pid, pid),
        "the daemon did not setsid()"
    );
    assert!(
        is_shared_anon(pid),
        "no MAP_SHARED anonymous mapping in the original"
    );

    s.dump();
    // Someone else appends to the log while the daemon is down. A log
    // reopened with O_APPEND must continue after this line, not over it.
    OpenOptions::new()
        .append(true)
        .open(&log)
        .and_then(|mut f| f.write_all(b"EXTERNAL\n"))
        .expect("append to the daemon's log");
    s.pre_dump = fs::read(&log).expect("read log");

    s.restore(Stdio::null());
    let stat = proc_stat(pid).expect("stat of restored daemon");
    assert_eq!(
        (stat.session, stat.pgrp),
        (pid, pid),
        "the restored daemon is not the leader of its own session and group"
    );
    assert!(
        is_shared_anon(pid),
        "the restored daemon lost its MAP_SHARED anonymous mapping"
    );
    let log_path = canonical(&log);
    let (log_fd, _) = fd_targets(pid)
        .into_iter()
        .find(|(_, t)| *t == log_path)
        .unwrap_or_else(|| panic!("the restored daemon has no fd open on {log_path}"));
    let (_, flags) = fdinfo(pid, log_fd).expect("fdinfo of the log fd");
    assert_ne!(
        flags & libc::O_APPEND as u32,
        0,
        "the restored log fd {log_fd} lost O_APPEND (flags {flags:o})"
    );

    s.wait_seq(s.last_before + 5);
    s.ensure_healthy();
    s.kill_restored();
    let lines = s.final_lines();
    let ext: Vec<usize> = lines
        .iter()
        .enumerate()
        .filter(|(_, l)| *l == "EXTERNAL")
        .map(|(i, _)| i)
        .collect();
    assert_eq!(
        ext,
        vec![usize::try_from(s.last_before).expect("small")],
        "the externally appended line is not exactly once, right after the pre-dump beats\n{}",
        s.diag()
    );
    let beats: Vec<u64> = lines
        .iter()
        .filter(|l| *l != "EXTERNAL")
        .map(|l| seq_number(l, "beat ").unwrap_or_else(|| panic!("unexpected log line {l:?}")))
        .collect();
    if let Err(e) = check_consecutive(&beats, 1) {
        panic!("log: {e}\n{}", s.diag());
    }
    assert!(*beats.last().expect("beats") > s.last_before);
    let out = complete_lines(&s.out);
    assert_eq!(
        out.len(),
        1,
        "the daemon's stdout should hold only its start line (a restarted program would print it again): {out:?}"
    );
    assert_eq!(
        field_after(&out[0], "pid"),
        Some(u64::try_from(pid).expect("pid")),
        "{out:?}"
    );
    s.assert_stderr_empty();
}

/// The workspace's Rust example (HashMap, Vec, std's signal/altstack setup).
#[test]
fn rust_program_continues() {
    if !root_or_skip("rust_program_continues") {
        return;
    }
    let dir = TestDir::new("rust_counter");
    let exe = rust_counter_exe(&dir);
    let mut s = Session::start(dir, Cmd::new(exe), Stdio::null());
    s.compare_maps = false; // its heap may grow while it runs
    s.wait_seq(5);
    s.dump();
    s.restore(Stdio::null());
    // Past at least one full recomputation (every 16 ticks) after restore.
    s.wait_seq(s.last_before + 20);
    s.finish();
}

/// The system's python3 looping over a 200,000-entry dict.
#[test]
fn python_dict_loop_continues() {
    if !root_or_skip("python_dict_loop_continues") {
        return;
    }
    let mut s = python_session("python_dict", "dict_loop.py");
    s.wait_seq(5);
    s.dump();
    s.restore(Stdio::null());
    // Past at least one full recomputation (every 16 ticks) after restore.
    s.wait_seq(s.last_before + 20);
    s.finish();
}

/// Checks that a process a dump left running (on purpose or after a failure)
/// is untouched: running, not stopped, not traced, same memory map, same fds,
/// same signal state, and still making progress.
fn assert_untouched(
    s: &mut Session,
    identity: &ProcIdentity,
    fds: &std::collections::BTreeMap<i32, String>,
    context: &str,
) {
    s.ensure_healthy();
    let pid = s.pid;
    let state = proc_stat(pid).expect("stat").state;
    assert!(
        !matches!(state, 'T' | 't'),
        "{context}: the program is left stopped (state {state})"
    );
    assert_eq!(
        status_field(pid, "TracerPid").as_deref(),
        Some("0"),
        "{context}: the program is still traced"
    );
    identity.assert_same(context);
    assert_eq!(
        &fd_targets(pid),
        fds,
        "{context}: the program's fds changed"
    );
    let now = s.last_seq().expect("progress");
    s.wait_seq(now + 5);
}

/// `tern dump --leave-running --images img` of `pid`, run in `cwd`: the
/// codec byte of every chunk of the page file it wrote (0 raw, 1 zstd).
fn relative_dump_codecs(pid: i32, cwd: &Path) -> Vec<u8> {
    let out = Command::new(tern_bin())
        .args([
            "dump",
            "--leave-running",
            "--pid",
            &pid.to_string(),
            "--images",
            "img",
        ])
        .current_dir(cwd)
        .stdin(Stdio::null())
        .output()
        .expect("run tern dump");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "tern dump failed: {stderr}");
    let pages = fs::read(cwd.join("img").join(tern_wire::PAGES_FILE)).expect("pages.img");
    let (mut at, mut codecs) = (tern_wire::chunks::FILE_HEADER_LEN, Vec::new());
    while at + tern_wire::chunks::CHUNK_HEADER_LEN <= pages.len() {
        let h = &pages[at..at + tern_wire::chunks::CHUNK_HEADER_LEN];
        let stored = u32::from_le_bytes([h[20], h[21], h[22], h[23]]) as usize;
        codecs.push(h[4]);
        at += tern_wire::chunks::CHUNK_HEADER_LEN + stored;
    }
    assert!(codecs.len() > 1, "no data chunk in pages.img");
    codecs
}

/// `--compress auto` stores pages raw on tmpfs (compressing there only
/// slows the dump), also when the image directory is given relative to a
/// working directory on tmpfs (it was compressed: the probe walked up to ""
/// and gave up).
#[test]
fn relative_image_dir_on_tmpfs_is_not_compressed() {
    let test = "relative_image_dir_on_tmpfs_is_not_compressed";
    if !root_or_skip(test) {
        return;
    }
    let mut s = c_session("relative_tmpfs", "sleeper", &["rel"]);
    let mnt = match TmpfsMount::new(&s.dir.join("fs"), "128m") {
        Ok(m) => m,
        Err(e) => {
            skip_or_panic(test, &e);
            return;
        }
    };
    s.wait_seq(3);
    let on_tmpfs = relative_dump_codecs(s.pid, mnt.path());
    assert!(
        on_tmpfs.iter().all(|&c| c == 0),
        "pages must be stored uncompressed on tmpfs, chunk codecs {on_tmpfs:?}"
    );
    // Control: the same program's pages are compressed on a disk.
    let disk = s.dir.path().join("on-disk");
    fs::create_dir_all(&disk).expect("dir on disk");
    if tern_engine::dump::is_memory_fs(&disk) {
        eprintln!(
            "{test}: no disk here ({} is in memory): control skipped",
            disk.display()
        );
    } else {
        let on_disk = relative_dump_codecs(s.pid, &disk);
        assert!(
            on_disk.contains(&1),
            "control: pages dumped to a disk were not compressed, chunk codecs {on_disk:?}"
        );
    }
    s.original.kill_and_wait();
}

/// `--leave-running`: the image is written and the program runs on,
/// uninterrupted and untouched.
#[test]
fn dump_leave_running_keeps_program_untouched() {
    if !root_or_skip("dump_leave_running_keeps_program_untouched") {
        return;
    }
    let mut s = c_session("leave_running", "counter64", &[]);
    s.wait_seq(5);
    let pid = s.pid;
    let identity = ProcIdentity::capture(pid, true);
    let fds = fd_targets(pid);
    let out = tern_dump(&s.dir, pid, &s.images, true);
    s.last_tern = Some(out.describe());
    out.assert_ok("tern dump --leave-running");
    assert!(
        !files_under(&s.images).is_empty(),
        "tern dump --leave-running wrote no image file"
    );
    assert_untouched(&mut s, &identity, &fds, "after dump --leave-running");
    tern_inspect(&s.dir, &s.images, false).assert_ok("tern inspect");

    s.original.kill_and_wait();
    let lines = s.final_lines();
    let nums: Vec<u64> = lines
        .iter()
        .map(|l| seq_number(l, "tick ").unwrap_or_else(|| panic!("unexpected line {l:?}")))
        .collect();
    if let Err(e) = check_consecutive(&nums, 1) {
        panic!("{e}\n{}", s.diag());
    }
    s.assert_stderr_empty();
}

/// A dump that cannot even create its image directory fails and leaves the
/// program running, untouched.
#[test]
fn dump_failure_leaves_program_running() {
    if !root_or_skip("dump_failure_leaves_program_running") {
        return;
    }
    let mut s = c_session("dump_failure", "sleeper", &["abs"]);
    s.wait_seq(3);
    let pid = s.pid;
    let blocker = s.dir.join("not-a-directory");
    fs::write(&blocker, "x").expect("write blocker file");
    let images = blocker.join("images");
    let identity = ProcIdentity::capture(pid, true);
    let fds = fd_targets(pid);
    let out = tern_dump(&s.dir, pid, &images, false);
    s.last_tern = Some(out.describe());
    assert!(
        !out.success(),
        "dumping into {} (under a regular file) must fail\n{}",
        images.display(),
        out.describe()
    );
    assert!(
        !out.stderr.trim().is_empty(),
        "a failed dump must say why on stderr"
    );
    assert_untouched(&mut s, &identity, &fds, "after a failed dump");
    s.original.kill_and_wait();
    let nums: Vec<u64> = s
        .final_lines()
        .iter()
        .map(|l| seq_number(l, "tick ").unwrap_or_else(|| panic!("unexpected line {l:?}")))
        .collect();
    if let Err(e) = check_consecutive(&nums, 1) {
        panic!("{e}\n{}", s.diag());
    }
}

/// A dump that runs out of space half way (a 256 KiB tmpfs for a 64 MiB
/// program) fails after it has stopped the program: the program must be
/// resumed untouched (no leftover mapping, fd, stop or tracer).
#[test]
fn dump_failing_midway_leaves_program_running() {
    if !root_or_skip("dump_failing_midway_leaves_program_running") {
        return;
    }
    let mut s = c_session("dump_enospc", "counter64", &[]);
    let mnt = match TmpfsMount::new(&s.dir.join("small-fs"), "256k") {
        Ok(m) => m,
        Err(e) => {
            skip_or_panic("dump_failing_midway_leaves_program_running", &e);
            return;
        }
    };
    s.wait_seq(5);
    let pid = s.pid;
    let identity = ProcIdentity::capture(pid, true);
    let fds = fd_targets(pid);
    let images = mnt.path().join("images");
    let out = tern_dump(&s.dir, pid, &images, false);
    s.last_tern = Some(out.describe());
    assert!(
        !out.success(),
        "a dump of a 64 MiB program into a 256 KiB filesystem must fail\n{}",
        out.describe()
    );
    assert!(
        !out.stderr.trim().is_empty(),
        "a failed dump must say why on stderr"
    );
    assert_untouched(&mut s, &identity, &fds, "after a dump that failed midway");
    s.original.kill_and_wait();
    drop(mnt);
    let nums: Vec<u64> = s
        .final_lines()
        .iter()
        .map(|l| seq_number(l, "tick ").unwrap_or_else(|| panic!("unexpected line {l:?}")))
        .collect();
    if let Err(e) = check_consecutive(&nums, 1) {
        panic!("{e}\n{}", s.diag());
    }
}

/// Dumping a pid that does not exist fails.
#[test]
fn dump_of_missing_pid_fails() {
    if !root_or_skip("dump_of_missing_pid_fails") {
        return;
    }
    let dir = TestDir::new("dump_missing");
    let mut child = Command::new("true").spawn().expect("spawn true");
    let pid = i32::try_from(child.id()).expect("pid");
    child.wait().expect("wait true");
    if pid_exists(pid) {
        eprintln!("note: pid {pid} was reused at once; not testing with it");
        return;
    }
    let images = dir.join("images");
    let out = tern_dump(&dir, pid, &images, false);
    assert!(
        !out.success(),
        "dumping the missing pid {pid} succeeded\n{}",
        out.describe()
    );
    assert!(
        !out.stderr.trim().is_empty(),
        "no error message\n{}",
        out.describe()
    );
}

/// "N of M pages saved" from a dump or pre-dump summary line.
fn pages_saved(out: &TernOutput) -> u64 {
    let text = out.describe();
    text.split_whitespace()
        .collect::<Vec<_>>()
        .windows(3)
        .find(|w| w[1] == "of" && w[2].parse::<u64>().is_ok())
        .and_then(|w| w[0].parse().ok())
        .unwrap_or_else(|| panic!("no 'N of M pages saved' in tern's output:\n{text}"))
}

/// Pre-dump x3 while a 256 MiB counter runs, then a final dump holding only
/// the last delta; restore applies the chain and the program continues
/// exactly (every tick once, buffer verified over full passes).
#[test]
fn predump_chain_restores_exactly() {
    if !root_or_skip("predump_chain_restores_exactly") {
        return;
    }
    let dir = TestDir::new("predump_chain");
    let exe = compile_c_with(&dir, "counter64", &["-DBUF_MIB=256"]);
    let mut s = Session::start(dir, Cmd::new(exe), Stdio::null());
    s.wait_seq(5);
    let mut saved = Vec::new();
    for k in 1..=3 {
        let images = s.dir.join(format!("pre{k}"));
        let mut a: Vec<std::ffi::OsString> = vec![
            "pre-dump".into(),
            "--pid".into(),
            s.pid.to_string().into(),
            "--images".into(),
            images.into(),
        ];
        if k > 1 {
            a.push("--parent".into());
            a.push(format!("../pre{}", k - 1).into());
        }
        let out = run_tern(&s.dir, &a, Stdio::null());
        out.assert_ok("tern pre-dump");
        saved.push(pages_saved(&out));
        assert!(
            pid_alive(s.pid),
            "pre-dump must leave the program running\n{}",
            s.diag()
        );
    }
    let out = s.dump_with(&["--parent".into(), "../pre3".into()]);
    let last = pages_saved(&out);
    // The first increment holds the whole 256 MiB buffer; the final one only
    // what the counter rewrote since the third pre-dump.
    assert!(
        saved[0] >= (256 << 20) / 4096,
        "first pre-dump saved only {} pages",
        saved[0]
    );
    assert!(
        last * 20 < saved[0],
        "final increment ({last} pages) is not a small fraction of the first ({} pages)",
        saved[0]
    );
    let pass_before = s
        .last_seq_line()
        .and_then(|l| field_after(&l, "pass"))
        .expect("pass field in counter64 output");
    s.restore(Stdio::null());
    s.wait_for_line("two more full verification passes", |l| {
        field_after(l, "pass").is_some_and(|p| p >= pass_before + 2)
    });
    s.wait_seq(s.last_before + 10);
    s.finish();
}

/// A file mapped by the program changes after the dump: restore refuses,
/// naming the file, and leaves nothing running; put back, it restores.
#[test]
fn changed_mapped_file_is_refused() {
    if !root_or_skip("changed_mapped_file_is_refused") {
        return;
    }
    let dir = TestDir::new("changed_mapped_file");
    let data = dir.join("mapped.dat");
    fs::write(&data, vec![7u8; 3 * 4096 + 100]).expect("write mapped file");
    let exe = compile_c(&dir, "mapfile");
    let mut s = Session::start(dir, Cmd::new(exe).arg(&data), Stdio::null());
    s.wait_seq(3);
    s.dump();
    let pid = s.pid;
    let original = fs::read(&data).expect("read mapped file");
    let mtime = fs::metadata(&data)
        .and_then(|m| m.modified())
        .expect("mtime of the mapped file");
    let mut changed = original.clone();
    changed.push(1);
    fs::write(&data, &changed).expect("change mapped file");
    let mut guard = ProcGuard::adopt(pid);
    let out = tern_restore(&s.dir, &s.images, None, Stdio::null());
    let alive = pid_alive(pid);
    if alive {
        guard.kill_and_wait();
    } else {
        guard.disarm();
    }
    assert!(
        !out.success(),
        "restore with a changed mapped file succeeded\n{}",
        out.describe()
    );
    assert!(
        out.stderr.contains("mapped.dat") && out.stderr.contains("changed since the dump"),
        "the refusal does not name the changed file\n{}",
        out.describe()
    );
    assert!(!alive, "a refused restore left process {pid} running");
    // Same contents and mtime again: the restore goes through.
    fs::write(&data, &original).expect("put the mapped file back");
    fs::File::options()
        .write(true)
        .open(&data)
        .and_then(|f| f.set_modified(mtime))
        .expect("set the mapped file's mtime back");
    s.restore(Stdio::null());
    s.wait_seq(s.last_before + 5);
    s.finish();
}

/// `tern check` probes the machine: every probe has a reason, and what
/// dump/restore need is reported available when running as root.
#[test]
fn check_reports_features() {
    if !root_or_skip("check_reports_features") {
        return;
    }
    let out = Command::new(tern_bin())
        .args(["check", "--json"])
        .output()
        .expect("run tern check");
    assert!(out.status.success(), "tern check failed");
    let text = String::from_utf8_lossy(&out.stdout);
    for name in [
        "ptrace-seize",
        "process-vm-readv",
        "clone3-set-tid",
        "pr-set-mm-map",
        "soft-dirty",
        "uffd-wp-async",
    ] {
        assert!(
            text.contains(&format!("\"{name}\"")),
            "tern check lacks {name}:\n{text}"
        );
    }
    for needed in [
        "ptrace-seize",
        "process-vm-readv",
        "clone3-set-tid",
        "pr-set-mm-map",
        "tcp-repair",
        "nftables-lock",
        "seccomp-filters",
        "mount-namespace-build",
        "pid-namespace-init",
        "cgroup-placement",
    ] {
        let at = text.find(&format!("\"{needed}\"")).expect("probe present");
        // Each probe is one JSON object; look at this one only.
        let start = text[..at].rfind('{').unwrap_or(0);
        let end = at + text[at..].find('}').unwrap_or(text.len() - at);
        assert!(
            text[start..end].contains("\"available\": true"),
            "{needed} is not available as root:\n{}",
            &text[start..end]
        );
    }
}

/// `dump --pre-copy`: rounds while the counter runs (uffd-wp or hash
/// tracker), then one short stop for the last delta; the chain restores and
/// the counter continues exactly. Policy rounds:4 keeps the run short and
/// deterministic; `adaptive` is exercised as well.
#[test]
fn precopy_dump_restores_exactly() {
    if !root_or_skip("precopy_dump_restores_exactly") {
        return;
    }
    for policy in ["rounds:4", "adaptive"] {
        let mut s = c_session("precopy_dump", "counter64", &[]);
        s.wait_seq(5);
        let out = s.dump_with(&["--pre-copy".into(), "--policy".into(), policy.into()]);
        let text = out.describe();
        assert!(
            text.contains("round  dirty_pages") && text.contains("program stopped for"),
            "no round table in the pre-copy output\n{text}"
        );
        if policy == "rounds:4" {
            assert!(
                s.images.join("round-3").is_dir() && !s.images.join("round-4").exists(),
                "rounds:4 did not make exactly rounds 0-3\n{text}"
            );
        }
        let pass_before = s
            .last_seq_line()
            .and_then(|l| field_after(&l, "pass"))
            .expect("pass field in counter64 output");
        // rounds:4 rebuilt as a warm standby would, adaptive all at once.
        let standby: &[std::ffi::OsString] = if policy == "rounds:4" {
            &["--standby".into()]
        } else {
            &[]
        };
        s.restore_with(Stdio::null(), standby);
        s.wait_for_line("two more full verification passes", |l| {
            field_after(l, "pass").is_some_and(|p| p >= pass_before + 2)
        });
        s.wait_seq(s.last_before + 10);
        s.finish();
    }
}

/// An event loop on epoll (a level-triggered timerfd and an edge-triggered
/// eventfd, with their epoll data) blocked in epoll_wait keeps ticking at
/// its 10 ms period after restore, every eventfd edge seen exactly once.
#[test]
fn epoll_event_loop_survives() {
    if !root_or_skip("epoll_event_loop_survives") {
        return;
    }
    let mut s = c_session("eventloop", "eventloop", &[]);
    s.wait_seq(10);
    s.dump();
    let out = tern_inspect(&s.dir, &s.images, false);
    out.assert_ok("tern inspect");
    assert!(
        out.stdout.contains("epoll watching"),
        "inspect does not show the epoll\n{}",
        out.describe()
    );
    s.restore(Stdio::null());
    s.wait_seq(s.last_before + 60);
    // The period after the restore: 50 ticks take about 500 ms.
    let lines = s.lines();
    let ms: Vec<u64> = lines.iter().filter_map(|l| field_after(l, "ms")).collect();
    let tail = &ms[ms.len() - 51..];
    let span = tail[50] - tail[0];
    assert!(
        (400..=1500).contains(&span),
        "50 ticks took {span} ms after the restore (period 10 ms)"
    );
    let last = lines.last().expect("a line");
    let (n, ev) = (
        field_after(last, "tick").expect("tick"),
        field_after(last, "events").expect("events"),
    );
    assert!(ev + 1 >= n / 3, "eventfd events {ev} after {n} ticks");
    s.finish();
}

/// A timerfd driving the program keeps ticking, a signalfd still reads the
/// signals it is given, and an idle timerfd keeps its time left.
#[test]
fn timerfd_and_signalfd_survive() {
    if !root_or_skip("timerfd_and_signalfd_survive") {
        return;
    }
    let mut s = c_session("fdtimers", "fdtimers", &[]);
    s.wait_seq(10);
    s.dump();
    let out = tern_inspect(&s.dir, &s.images, false);
    out.assert_ok("tern inspect");
    let before = s.last_seq_line().expect("a line before the dump");
    let sigs_before = field_after(&before, "sigs").expect("sigs");
    let left_before = field_after(&before, "left_ms").expect("left_ms");
    s.restore(Stdio::null());
    let after = s.wait_for_line("4 more signals through the signalfd", |l| {
        field_after(l, "sigs").is_some_and(|n| n >= sigs_before + 4)
    });
    let left_after = field_after(&after, "left_ms").expect("left_ms");
    assert!(
        left_after < left_before && left_after + 10_000 > left_before,
        "the idle timerfd's time left went from {left_before} to {left_after} ms"
    );
    s.wait_seq(s.last_before + 30);
    s.finish();
}

/// Real-time signals queued with sigqueue() while blocked, pending at the
/// dump, are delivered after the restore once unblocked: each exactly once,
/// in order, with its value and si_code SI_QUEUE.
#[test]
fn queued_signals_keep_their_data() {
    if !root_or_skip("queued_signals_keep_their_data") {
        return;
    }
    let dir = TestDir::new("rtqueue");
    let unblock = dir.join("unblock-now");
    let exe = compile_c(&dir, "rtqueue");
    let mut s = Session::start(dir, Cmd::new(exe).arg(&unblock), Stdio::null());
    s.wait_seq(3);
    let rtmin = libc::SIGRTMIN();
    for v in [777, 778] {
        let val = libc::sigval {
            sival_ptr: v as usize as *mut libc::c_void,
        };
        // SAFETY: plain syscall wrapper on the workload's pid.
        let r = unsafe { libc::sigqueue(s.pid, rtmin, val) };
        assert_eq!(r, 0, "sigqueue failed");
    }
    s.wait_seq(s.last_seq().unwrap_or(0) + 2);
    s.dump();
    s.restore(Stdio::null());
    std::fs::write(&unblock, b"").expect("create the unblock file");
    let line = s.wait_for_line("both queued signals to be delivered", |l| {
        field_after(l, "got").is_some_and(|g| g >= 2)
    });
    assert!(
        line.contains("got 2 vals 777,778 code -1"),
        "expected exactly the two queued signals, in order, with their values and SI_QUEUE: {line}"
    );
    s.wait_seq(s.last_before + 20);
    s.finish();
}

/// POSIX timers come back under their own ids: the one that drives the
/// program keeps firing with its sigev_value and id, a SIGEV_NONE timer
/// keeps its time left.
#[test]
fn posix_timers_survive() {
    if !root_or_skip("posix_timers_survive") {
        return;
    }
    let mut s = c_session("posix_timer", "posix_timer", &[]);
    s.wait_seq(10);
    s.dump();
    let out = tern_inspect(&s.dir, &s.images, false);
    out.assert_ok("tern inspect");
    assert!(
        out.stdout.contains("posix timer"),
        "inspect does not show the POSIX timers\n{}",
        out.describe()
    );
    let before = s.last_seq_line().expect("a line before the dump");
    let fired_before = field_after(&before, "fired").expect("fired");
    let left_before = field_after(&before, "left_ms").expect("left_ms");
    let id_before = field_after(&before, "id").expect("id");
    s.restore(Stdio::null());
    let after = s.wait_for_line("the timer to fire 20 more times", |l| {
        field_after(l, "fired").is_some_and(|f| f >= fired_before + 20)
    });
    assert_eq!(
        field_after(&after, "id"),
        Some(id_before),
        "timer id changed"
    );
    let left_after = field_after(&after, "left_ms").expect("left_ms");
    assert!(
        left_after < left_before && left_after + 10_000 > left_before,
        "the idle timer's time left went from {left_before} to {left_after} ms"
    );
    s.finish();
}

/// A program driven only by setitimer(ITIMER_REAL) and keeping a count in an
/// eventfd: after restore the timer keeps firing and the eventfd still holds
/// its count (the program checks it every 5 ticks).
#[test]
fn itimer_and_eventfd_survive() {
    if !root_or_skip("itimer_and_eventfd_survive") {
        return;
    }
    let mut s = c_session("timers", "timers", &[]);
    s.wait_seq(7);
    s.dump();
    let out = tern_inspect(&s.dir, &s.images, false);
    out.assert_ok("tern inspect");
    assert!(
        out.stdout.contains("itimer real") && out.stdout.contains("eventfd (count"),
        "inspect does not show the timer and the eventfd\n{}",
        out.describe()
    );
    s.restore(Stdio::null());
    s.wait_seq(s.last_before + 30);
    s.finish();
}

/// A pipe the program holds both ends of, with data buffered in it at dump
/// time: the restored pipe holds exactly that data (the program checks every
/// record's number), and the write end is still non-blocking.
#[test]
fn internal_pipe_keeps_buffered_data() {
    if !root_or_skip("internal_pipe_keeps_buffered_data") {
        return;
    }
    let mut s = c_session("selfpipe", "selfpipe", &[]);
    s.wait_seq(20);
    s.dump();
    let out = tern_inspect(&s.dir, &s.images, false);
    out.assert_ok("tern inspect");
    assert!(
        out.stdout.contains("read end") && out.stdout.contains("bytes buffered"),
        "inspect does not show the pipe\n{}",
        out.describe()
    );
    s.restore(Stdio::null());
    let pid = s.pid;
    let nonblocking_writer = fd_targets(pid)
        .iter()
        .filter(|(_, t)| t.starts_with("pipe:"))
        .any(|(fd, _)| {
            fdinfo(pid, *fd)
                .is_some_and(|(_, flags)| flags & 0o3 == 1 && flags & libc::O_NONBLOCK as u32 != 0)
        });
    assert!(
        nonblocking_writer,
        "the restored pipe's write end is not O_NONBLOCK\n{}",
        s.diag()
    );
    s.wait_seq(s.last_before + 20);
    s.finish();
}

/// A region saved by a pre-dump is unmapped before the next pre-dump and
/// replaced by fresh, never-written memory at the same address before the
/// final dump: the chain restore must not write the oldest image's bytes
/// there (the program checks for zeros).
/// Both ways of rebuilding a chain: all at once, and round by round as a
/// warm standby (`--standby`), which must unmap and remap the region.
#[test]
fn chain_does_not_resurrect_replaced_memory() {
    if !root_or_skip("chain_does_not_resurrect_replaced_memory") {
        return;
    }
    chain_remap_case(&[]);
    chain_remap_case(&["--standby".into()]);
}

fn chain_remap_case(restore_args: &[std::ffi::OsString]) {
    let dir = TestDir::new("chain_remap");
    let (unmap, remap) = (dir.join("unmap-now"), dir.join("remap-now"));
    let exe = compile_c(&dir, "remap");
    let mut s = Session::start(dir, Cmd::new(exe).arg(&unmap).arg(&remap), Stdio::null());
    s.wait_seq(3);
    let pre_dump = |s: &Session, name: &str, parent: Option<&str>| {
        let mut a: Vec<std::ffi::OsString> = vec![
            "pre-dump".into(),
            "--pid".into(),
            s.pid.to_string().into(),
            "--images".into(),
            s.dir.join(name).into(),
        ];
        if let Some(p) = parent {
            a.push("--parent".into());
            a.push(p.into());
        }
        run_tern(&s.dir, &a, Stdio::null()).assert_ok("tern pre-dump");
    };
    pre_dump(&s, "pre1", None);
    fs::write(&unmap, b"").expect("create the unmap file");
    s.wait_for_line("the program to unmap its region", |l| {
        l.ends_with("phase 2")
    });
    pre_dump(&s, "pre2", Some("../pre1"));
    fs::write(&remap, b"").expect("create the remap file");
    s.wait_for_line("the program to map fresh memory", |l| {
        l.ends_with("phase 3")
    });
    s.dump_with(&["--parent".into(), "../pre2".into()]);
    s.restore_with(Stdio::null(), restore_args);
    s.wait_seq(s.last_before + 10);
    s.finish();
}

/// Two socketpairs of the program's own: a stream pair with a 3000-byte
/// backlog waiting unread at one end (and, if the dump catches it, a
/// message in flight), and a non-blocking datagram pair. After restore the
/// program reads the backlog byte for byte and both pairs still work.
#[test]
fn unix_socketpairs_keep_their_bytes() {
    if !root_or_skip("unix_socketpairs_keep_their_bytes") {
        return;
    }
    let mut s = c_session("unix_pair", "unix_pair", &[]);
    s.wait_seq(5);
    s.dump();
    let text = tern_inspect(&s.dir, &s.images, false);
    text.assert_ok("tern inspect");
    assert!(
        text.stdout.contains("unix stream socketpair")
            && text.stdout.contains("3000 bytes waiting"),
        "inspect must show the pair and its backlog:\n{}",
        text.stdout
    );
    s.restore(Stdio::null());
    s.wait_for_line("the backlog read back after the restore", |l| {
        l.contains("backlog ok dgram ok")
    });
    s.wait_seq(45);
    s.finish();
}

/// The system's python3 running an asyncio event loop: epoll plus the
/// loop's self-pipe (a non-blocking socketpair), woken from a thread with
/// call_soon_threadsafe every 10 ms. It keeps ticking and being woken.
#[test]
fn python_asyncio_loop_continues() {
    if !root_or_skip("python_asyncio_loop_continues") {
        return;
    }
    let mut s = python_session("python_asyncio", "asyncio_ticker.py");
    s.wait_seq(12);
    s.dump();
    let woken_before = s
        .lines()
        .iter()
        .filter_map(|l| field_after(l, "woken"))
        .max()
        .unwrap_or(0);
    s.restore(Stdio::null());
    let target = s.last_before + 25;
    let line = s.wait_for_line("a wake-up count after the restore", |l| {
        seq_number(l, "tick ").is_some_and(|n| n >= target) && l.contains("woken")
    });
    let woken_after = field_after(&line, "woken").unwrap_or(0);
    assert!(
        woken_after > woken_before,
        "no wake-ups after the restore ({woken_before} -> {woken_after})"
    );
    s.finish();
}

/// python3 listening on a unix socket at a path: dumped and restored, the
/// restored listener takes connections at that path (and the program runs
/// on).
#[test]
fn python_unix_listener_survives() {
    if !root_or_skip("python_unix_listener_survives") {
        return;
    }
    let dir = TestDir::new("unix_bound");
    let path = dir.join("listener.sock");
    let script = format!(
        "import socket, time\ns = socket.socket(socket.AF_UNIX)\ns.bind({:?})\ns.listen()\nn = 0\nwhile True:\n    n += 1\n    print('tick', n, flush=True)\n    time.sleep(0.02)\n",
        path.display().to_string()
    );
    let cmd = Cmd::new("/usr/bin/python3").arg("-I").arg("-c").arg(script);
    let mut s = Session::start(dir, cmd, Stdio::null());
    s.compare_maps = false;
    s.wait_seq(3);
    s.dump();
    s.restore(Stdio::null());
    std::os::unix::net::UnixStream::connect(&path)
        .unwrap_or_else(|e| panic!("connect to the restored listener: {e}"));
    s.wait_seq(s.last_before + 10);
    s.finish();
}

#[test]
fn process_tree_with_pipes_and_shared_memory() {
    if !root_or_skip("process_tree_with_pipes_and_shared_memory") {
        return;
    }
    let mut s = c_session("family", "family", &[]);
    s.compare_maps = false;
    s.wait_seq(5);
    let pid = s.pid;
    let kids = children_of(pid);
    assert_eq!(kids.len(), 2, "the family has two children: {kids:?}");
    s.dump();
    for k in &kids {
        assert!(wait_gone(*k, WAIT), "child {k} outlived the dump");
    }
    let inspect = tern_inspect(&s.dir, &s.images, false);
    inspect.assert_ok("tern inspect");
    for want in [
        "process tree",
        "shared pipe",
        "shared memory",
        "shared open file",
    ] {
        assert!(
            inspect.stdout.contains(want),
            "inspect must show {want:?}:\n{}",
            inspect.stdout
        );
    }
    // The children's ids free up once init has reaped them: wait for that
    // rather than take a fresh PID namespace.
    let never = args!["--pid-ns", "never"];
    s.restore_with(Stdio::null(), &never);
    let restored_kids = children_of(s.pid);
    assert_eq!(
        restored_kids.len(),
        2,
        "the restored parent has its two children back: {restored_kids:?}"
    );
    let line = s.wait_for_line("the parent reaping child 1 after the restore", |l| {
        l.contains("reaped")
    });
    assert!(
        line.contains(&kids[1].to_string()) || s.pid != pid,
        "it reaped its second child by its own pid: {line}"
    );
    s.wait_seq(70);
    s.finish();
}

/// The same family restored into a fresh PID namespace (`--pid-ns
/// always`): inside, the parent reaps its child under the child's original
/// pid.
#[test]
fn process_tree_in_a_fresh_pid_namespace() {
    let test = "process_tree_in_a_fresh_pid_namespace";
    if !root_or_skip(test) {
        return;
    }
    let dir = TestDir::new(test);
    let exe = compile_c(&dir, "family");
    let out = dir.join("out.txt");
    let mut original = spawn_redirected(&Cmd::new(&exe), Stdio::null(), &out, &dir.join("err.txt"));
    let pid = original.pid();
    wait_until(
        WAIT,
        "tick 5",
        || (fs::read_to_string(&out).ok()?.lines().count() >= 5).then_some(()),
        || tail(&out, 5),
    );
    let kids = children_of(pid);
    assert_eq!(kids.len(), 2, "{kids:?}");
    let images = dir.join("images");
    tern_dump(&dir, pid, &images, false).assert_ok("tern dump of the tree");
    assert!(
        original.wait_exit(WAIT).is_some(),
        "the original still runs"
    );
    let pidfile = dir.join("restored.pid");
    let restore_args = args![
        "restore",
        "--images",
        &images,
        "--pidfile",
        &pidfile,
        "--pid-ns",
        "always"
    ];
    run_tern(&dir, &restore_args, Stdio::null()).assert_ok("tern restore of the tree");
    let host: i32 = fs::read_to_string(&pidfile)
        .expect("pid file")
        .trim()
        .parse()
        .expect("pid");
    let mut restored = ProcGuard::adopt(host);
    assert_eq!(children_of(host).len(), 2, "its children are back");
    let reaped = wait_until(
        WAIT,
        "the parent reaping child 1",
        || {
            fs::read_to_string(&out)
                .ok()?
                .lines()
                .find(|l| l.contains("reaped"))
                .map(str::to_string)
        },
        || tail(&out, 5),
    );
    assert_eq!(
        reaped,
        format!("tick 60 reaped {}", kids[1]),
        "inside its namespace the parent sees its child's original pid"
    );
    let text = fs::read_to_string(&out).expect("output");
    assert!(!text.contains("CORRUPT"), "{text}");
    let nums: Vec<u64> = text
        .lines()
        .filter_map(|l| seq_number(l, "tick "))
        .collect();
    check_consecutive(&nums, 1).unwrap_or_else(|e| panic!("{e}"));
    restored.kill_and_wait();
}

/// A tree one of whose processes holds something tern cannot dump (a
/// unix listener with a connection waiting to be accepted) is refused,
/// naming it, and every process of it runs on, untraced.
#[test]
fn process_tree_refusal_leaves_every_process_running() {
    let test = "process_tree_refusal_leaves_every_process_running";
    if !root_or_skip(test) {
        return;
    }
    let dir = TestDir::new(test);
    let sock = dir.join("child.sock");
    let ready = dir.join("child.ready");
    let script = format!(
        "import os, socket, time\nif os.fork() == 0:\n    s = socket.socket(socket.AF_UNIX)\n    s.bind({0:?})\n    s.listen()\n    c = socket.socket(socket.AF_UNIX)\n    c.connect({0:?})\n    open({1:?}, 'w').close()\n    while True: time.sleep(0.02)\nn = 0\nwhile True:\n    n += 1\n    print('tick', n, flush=True)\n    time.sleep(0.02)\n",
        sock.display().to_string(),
        ready.display().to_string()
    );
    let out = dir.join("out.txt");
    let mut parent = spawn_redirected(
        &Cmd::new("/usr/bin/python3").arg("-I").arg("-c").arg(script),
        Stdio::null(),
        &out,
        &dir.join("err.txt"),
    );
    let pid = parent.pid();
    wait_until(
        WAIT,
        "the child's socket with a connection waiting",
        || ready.exists().then_some(()),
        || tail(&out, 5),
    );
    let kids = children_of(pid);
    assert_eq!(kids.len(), 1, "{kids:?}");
    let out_dump = tern_dump(&dir, pid, &dir.join("images"), false);
    assert!(
        !out_dump.success(),
        "dump succeeded: {}",
        out_dump.describe()
    );
    assert!(
        out_dump.stderr.contains("child.sock") && out_dump.stderr.contains(&kids[0].to_string()),
        "the refusal must name the process and its socket: {}",
        out_dump.stderr
    );
    for p in [pid, kids[0]] {
        let st = proc_stat(p).expect("still there");
        assert!(st.state != 'T' && st.state != 't', "{p} left stopped");
        assert_eq!(
            status_field(p, "TracerPid").as_deref(),
            Some("0"),
            "{p} left traced"
        );
    }
    let before = fs::read_to_string(&out).unwrap_or_default().lines().count();
    wait_until(
        WAIT,
        "the parent to go on",
        || (fs::read_to_string(&out).ok()?.lines().count() > before + 3).then_some(()),
        || tail(&out, 5),
    );
    kill_pid(kids[0], libc::SIGKILL);
    parent.kill_and_wait();
}

/// Children that exited and were never reaped (zombies: one with exit
/// code 7, one killed by SIGTERM) go with their parent's tree: the dump
/// lists them, the restore makes them again with their pids and statuses,
/// and the parent, told to reap them after the restore, gets both with the
/// right status (it checks), then ticks on.
#[test]
fn zombies_of_a_tree_are_made_again() {
    let test = "zombies_of_a_tree_are_made_again";
    if !root_or_skip(test) {
        return;
    }
    let marker = std::env::temp_dir().join(format!("tern-test-{}-reap", std::process::id()));
    let _ = fs::remove_file(&marker);
    let marker_arg = marker.to_string_lossy().into_owned();
    let mut s = c_session(test, "zombies", &[&marker_arg]);
    s.wait_seq(3);
    let zombies = wait_until(
        WAIT,
        "two zombie children",
        || {
            let z: Vec<i32> = children_of(s.pid)
                .into_iter()
                .filter(|k| proc_stat(*k).is_some_and(|st| st.state == 'Z'))
                .collect();
            (z.len() == 2).then_some(z)
        },
        || s.diag(),
    );
    s.dump();
    let inspect = tern_inspect(&s.dir, &s.images, false);
    for z in &zombies {
        assert!(
            inspect
                .stdout
                .contains(&format!("zombie {z} (child of {}", s.pid)),
            "inspect lists zombie {z}: {}",
            inspect.stdout
        );
    }
    let never = args!["--pid-ns", "never"];
    s.restore_with(Stdio::null(), &never);
    let mut again = children_of(s.pid);
    again.sort_unstable();
    let mut want = zombies.clone();
    want.sort_unstable();
    assert_eq!(again, want, "the zombies are back with their pids");
    for z in &zombies {
        assert_eq!(
            proc_stat(*z).map(|st| st.state),
            Some('Z'),
            "{z} is a zombie"
        );
    }
    fs::write(&marker, "reap").expect("marker");
    let reaped = s.wait_for_line("the parent reaping its zombies", |l| l.contains("reaped"));
    let _ = fs::remove_file(&marker);
    assert!(
        reaped.contains("exit 7")
            && reaped.contains("signal 15")
            && zombies.iter().all(|z| reaped.contains(&format!(" {z} "))),
        "{reaped}: both zombies {zombies:?} reaped with their statuses"
    );
    let n = s.wait_seq(1);
    s.wait_seq(n + 20);
    s.finish();
}

/// The family stopped by the cgroup freezer (all at once, then seized):
/// first with --leave-running (every process back in its own cgroup,
/// untraced, running on), then for real: restored, it goes on.
#[test]
fn process_tree_with_the_cgroup_freezer() {
    if !root_or_skip("process_tree_with_the_cgroup_freezer") {
        return;
    }
    let mut s = c_session("family_cgroup", "family", &[]);
    s.compare_maps = false;
    s.wait_seq(5);
    let pid = s.pid;
    let kids = children_of(pid);
    assert_eq!(kids.len(), 2, "{kids:?}");
    let cgroups = |p: i32| fs::read_to_string(format!("/proc/{p}/cgroup")).unwrap_or_default();
    let before: Vec<String> = std::iter::once(pid)
        .chain(kids.iter().copied())
        .map(cgroups)
        .collect();
    let peek = s.dir.join("peek");
    let peek_args = args![
        "dump",
        "--pid",
        pid.to_string(),
        "--images",
        &peek,
        "--freezer",
        "cgroup",
        "--leave-running"
    ];
    let out = run_tern(&s.dir, &peek_args, Stdio::null());
    out.assert_ok("tern dump --freezer cgroup --leave-running");
    let after: Vec<String> = std::iter::once(pid)
        .chain(kids.iter().copied())
        .map(cgroups)
        .collect();
    assert_eq!(after, before, "every process is back in its own cgroups");
    for p in std::iter::once(pid).chain(kids.iter().copied()) {
        assert_eq!(
            status_field(p, "TracerPid").as_deref(),
            Some("0"),
            "{p} left traced"
        );
    }
    let last = s.last_seq().unwrap_or(0);
    s.wait_seq(last + 5);
    let freeze = args!["--freezer", "cgroup"];
    s.dump_with(&freeze);
    restore_the_family_and_see_it_go_on(&mut s);
}

/// Restore the dumped family (`--pid-ns never`): the parent has its two
/// children again, reaps child 1 at tick 60 and ticks on to 70.
fn restore_the_family_and_see_it_go_on(s: &mut Session) {
    let never = args!["--pid-ns", "never"];
    s.restore_with(Stdio::null(), &never);
    assert_eq!(children_of(s.pid).len(), 2, "its children are back");
    s.wait_for_line("the parent reaping child 1", |l| l.contains("reaped"));
    s.wait_seq(70);
    s.finish();
}

/// The family copied live by pre-copy (issue 15): every process has its
/// pages in each round (`round-K/proc-PID`), the tree is frozen once (here
/// by the cgroup freezer) for the last deltas, and `tern restore` rebuilds
/// every process from its chain: the parent gets its children, pipes and
/// shared page back (it checks each answer and slot) and reaps child 1.
#[test]
fn pre_copy_of_a_process_tree() {
    if !root_or_skip("pre_copy_of_a_process_tree") {
        return;
    }
    let mut s = c_session("family_precopy", "family", &[]);
    s.compare_maps = false;
    s.wait_seq(5);
    let kids = children_of(s.pid);
    assert_eq!(kids.len(), 2, "{kids:?}");
    let pre_copy = args!["--pre-copy", "--freezer", "cgroup", "--policy", "rounds:3"];
    let out = s.dump_with(&pre_copy);
    for k in &kids {
        assert!(wait_gone(*k, WAIT), "child {k} outlived the dump");
        for round in 0..3 {
            let part = s.images.join(format!("round-{round}/proc-{k}/pages.img"));
            assert!(
                part.exists(),
                "{} is missing\n{}",
                part.display(),
                out.stderr
            );
        }
    }
    restore_the_family_and_see_it_go_on(&mut s);
}

/// A tree that forks a child and reaps one every tick
/// (`tests/workloads/forker.c`), each exited child left a zombie for 6 ms
/// of the 16: a stop that meets a zombie lets the tree go and tries again,
/// so `tern dump --leave-running` takes it every time (five in a row;
/// without the retries most runs fail), and so does the real dump;
/// restored, the parent reaps the children born before the dump with the
/// exit statuses it told them, and ticks on.
#[test]
fn dump_of_a_tree_that_forks_and_reaps_all_the_time() {
    if !root_or_skip("dump_of_a_tree_that_forks_and_reaps_all_the_time") {
        return;
    }
    let mut s = c_session("forker", "forker", &["6"]);
    s.compare_maps = false;
    s.wait_seq(10);
    for k in 0..5 {
        let peek = s.dir.join(format!("peek-{k}"));
        let a = args![
            "dump",
            "--pid",
            s.pid.to_string(),
            "--images",
            &peek,
            "--leave-running"
        ];
        run_tern(&s.dir, &a, Stdio::null()).assert_ok("tern dump --leave-running of forker");
    }
    let last = s.last_seq().unwrap_or(0);
    s.wait_seq(last + 5);
    s.dump();
    let never = args!["--pid-ns", "never"];
    s.restore_with(Stdio::null(), &never);
    s.wait_seq(s.last_before + 20);
    s.finish();
}

/// Pipes with one end closed (`tests/workloads/halfpipe.c`): one kept by
/// its writer alone (every write fails with EPIPE), one by its reader alone
/// with bytes still to read. Restored, writes still fail with EPIPE and the
/// reader gets the rest of its bytes, in order, then end of file.
#[test]
fn pipes_with_one_end_closed() {
    if !root_or_skip("pipes_with_one_end_closed") {
        return;
    }
    dump_restore_goes_on("halfpipe", "halfpipe", 4, 20);
}

/// Closed TCP sockets: a connection reset by its client (the kernel
/// released its port, though `getsockname` names the listener's) comes back
/// unbound beside its listener, which still accepts; a socket only bound
/// comes back holding its port. Restoring the first bound failed with
/// "Address already in use" (seen with Node.js in CI).
#[test]
fn closed_tcp_sockets_hold_their_port_only_if_they_did() {
    if !root_or_skip("closed_tcp_sockets_hold_their_port_only_if_they_did") {
        return;
    }
    dump_restore_goes_on(
        "closed_tcp_sockets_hold_their_port_only_if_they_did",
        "closed_conn",
        12,
        40,
    );
}

/// `uts_names` under `unshare --uts --ipc`, naming its UTS namespace
/// `names[0]` and `names[1]` (`names[2]`: "shm" or nothing).
fn in_own_uts_and_ipc(test: &str, names: &[&str]) -> Session {
    let dir = TestDir::new(test);
    let exe = compile_c(&dir, "uts_names");
    let mut cmd = Cmd::new("/usr/bin/unshare")
        .arg("--uts")
        .arg("--ipc")
        .arg(exe);
    cmd = cmd.arg(names[0]).arg(names[1]);
    for kind in ["uts", "ipc"] {
        cmd = cmd.arg(ns_of("self", kind));
    }
    for n in &names[2..] {
        cmd = cmd.arg(n);
    }
    Session::start(dir, cmd, Stdio::null())
}

/// `tern dump` of the session's program (once it ticks) must fail with
/// every one of `needles` in its message, and the program tick on.
fn dump_refused_saying(s: &mut Session, needles: &[&str]) {
    s.wait_seq(3);
    let a = args!["dump", "--pid", s.pid.to_string(), "--images", &s.images];
    let out = run_tern(&s.dir, &a, Stdio::null());
    assert!(
        !out.success() && needles.iter().all(|n| out.stderr.contains(n)),
        "the dump must be refused saying {needles:?}: {}",
        out.describe()
    );
    let seen = s.last_seq().unwrap_or(0);
    s.wait_seq(seen + 5);
}

fn ns_of(pid: impl std::fmt::Display, kind: &str) -> std::path::PathBuf {
    fs::read_link(format!("/proc/{pid}/ns/{kind}")).expect("read an ns link")
}

/// A program in UTS and IPC namespaces of its own is restored into new
/// ones, its UTS namespace named as its own was (the program checks its
/// names and its IPC namespace's emptiness every tick); this machine's name
/// is untouched. With a SysV segment in its IPC namespace the dump is
/// refused, naming it, and that program runs on.
#[test]
fn uts_and_ipc_namespaces_are_made_again() {
    let test = "uts_and_ipc_namespaces_are_made_again";
    if !root_or_skip(test) {
        return;
    }
    let host_name = fs::read_to_string("/proc/sys/kernel/hostname").expect("hostname");

    let mut refused = in_own_uts_and_ipc(
        &format!("{test}-shm"),
        &["tern-ns-shm", "shm.example", "shm"],
    );
    let pid = refused.pid.to_string();
    dump_refused_saying(&mut refused, &["SysV", &pid]);

    let mut s = in_own_uts_and_ipc(test, &["tern-edge-7", "nis.example"]);
    s.wait_seq(5);
    s.dump();
    let inspect = tern_inspect(&s.dir, &s.images, false);
    assert!(
        inspect
            .stdout
            .contains("uts (host name \"tern-edge-7\", domain name \"nis.example\"), ipc"),
        "inspect shows the namespaces: {}",
        inspect.stdout
    );
    s.restore(Stdio::null());
    for kind in ["uts", "ipc"] {
        assert_ne!(
            ns_of(s.pid, kind),
            ns_of("self", kind),
            "the restored program must have a {kind} namespace of its own"
        );
    }
    s.wait_seq(s.last_before + 30);
    s.finish();
    assert_eq!(
        fs::read_to_string("/proc/sys/kernel/hostname").expect("hostname"),
        host_name,
        "this machine's name changed"
    );
}

/// A unix listener with a connection it accepted, the client's end held
/// by a forked child ("tree") or by the process itself ("self"), unnamed or
/// bound to a name of its own before it connected ("-named"), a ping
/// every 10 ms and a reply always waiting at the client: dumped and
/// restored, the accepted end is named as the listener (getsockname), the
/// client's peer name is the listener's (getpeername), a named client keeps
/// its name (seen from both ends), and the exchange
/// goes on without a byte lost or repeated (the program checks each).
#[test]
fn accepted_unix_connections_keep_their_names() {
    let test = "accepted_unix_connections_keep_their_names";
    if !root_or_skip(test) {
        return;
    }
    for mode in ["tree", "self", "tree-named", "self-named"] {
        let path = format!("/tmp/tern-test-{}-{mode}.sock", std::process::id());
        let mut s = c_session(&format!("{test}-{mode}"), "named_conn", &[&path, mode]);
        s.wait_seq(5);
        s.dump();
        let inspect = tern_inspect(&s.dir, &s.images, false);
        assert!(
            inspect
                .stdout
                .contains(&format!("connection accepted at \"{path}\"")),
            "inspect shows the accepted connection: {}",
            inspect.stdout
        );
        // The child's pid may take a moment to be free.
        let never = args!["--pid-ns", "never"];
        s.restore_with(Stdio::null(), &never);
        s.wait_seq(s.last_before + 30);
        s.finish();
        let _ = fs::remove_file(&path);
        let _ = fs::remove_file(format!("{path}.c"));
    }
}

/// Removes a POSIX message queue when dropped (with the workload's own
/// `unlink` mode).
struct QueueGuard {
    exe: std::path::PathBuf,
    name: String,
}

impl Drop for QueueGuard {
    fn drop(&mut self) {
        let _ = Command::new(&self.exe)
            .args(["unlink", &self.name])
            .status();
    }
}

/// A program holding a POSIX message queue on an fd (three messages
/// always waiting; it receives them in order every tick and checks the
/// queue is still nonblocking) is dumped and restored: the queue is opened
/// again by name on the same fd, and the program receives on in order
/// (the messages are the machine's IPC namespace's, as a file's contents
/// are the file system's). In an IPC namespace of its own, a queue that no
/// fd holds would be lost: the dump is refused, naming it, and that
/// program runs on.
#[test]
fn posix_message_queues_are_reopened_by_name() {
    let test = "posix_message_queues_are_reopened_by_name";
    if !root_or_skip(test) {
        return;
    }
    let name = format!("/tern-test-{}-q", std::process::id());
    let mut s = c_session(test, "mqueue", &[&name]);
    let _queue = QueueGuard {
        exe: s.dir.join("mqueue"),
        name: name.clone(),
    };
    s.wait_seq(5);
    s.dump();
    let inspect = tern_inspect(&s.dir, &s.images, false);
    assert!(
        inspect.stdout.contains(&format!(
            "POSIX message queue {name} (read-write, nonblocking)"
        )),
        "inspect shows the queue: {}",
        inspect.stdout
    );
    s.restore(Stdio::null());
    s.wait_seq(s.last_before + 30);
    s.finish();

    let mut refused =
        in_own_uts_and_ipc(&format!("{test}-ns"), &["tern-ns-mq", "mq.example", "mq"]);
    dump_refused_saying(&mut refused, &["POSIX message queues (/tern-ns-q)"]);
}

/// A program started with `ip netns exec`, which gives it a mount
/// namespace of its own (a copy of the machine's, with a fresh /sys): the
/// restore makes one again with the same mounts, most of them the
/// machine's own bound again, and the program goes on.
#[test]
fn a_program_under_ip_netns_exec_keeps_its_mount_namespace() {
    let test = "a_program_under_ip_netns_exec_keeps_its_mount_namespace";
    if !root_or_skip(test) {
        return;
    }
    let ns = match Netns::new("ipexec") {
        Ok(ns) => ns,
        Err(e) => {
            skip_or_panic(test, &format!("cannot make a network namespace: {e}"));
            return;
        }
    };
    let dir = TestDir::new(test);
    let exe = compile_c(&dir, "halfpipe");
    let cmd = Cmd::new("ip")
        .arg("netns")
        .arg("exec")
        .arg(&ns.name)
        .arg(exe);
    let mut s = Session::start(dir, cmd, Stdio::null());
    s.wait_seq(5);
    let mounts = |pid: i32| {
        let mut m: Vec<String> = fs::read_to_string(format!("/proc/{pid}/mountinfo"))
            .expect("mountinfo")
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split(' ').collect();
                Some(format!("{} {}", f.get(4)?, f.get(5)?))
            })
            .collect();
        m.sort();
        m
    };
    let before = mounts(s.pid);
    assert_ne!(ns_of(s.pid, "mnt"), ns_of("self", "mnt"));
    s.dump();
    s.restore(Stdio::null());
    assert_ne!(ns_of(s.pid, "mnt"), ns_of("self", "mnt"));
    assert_eq!(mounts(s.pid), before, "its mounts");
    s.wait_seq(s.last_before + 20);
    s.finish();
}

/// A program restored into a fresh PID namespace (its ids taken here, or
/// `--pid-ns always`) lives under that namespace's reaper, as pid N there:
/// it can be dumped again and restored again, still as pid N, and goes on.
#[test]
fn a_program_restored_into_a_fresh_pid_namespace_moves_again() {
    let test = "a_program_restored_into_a_fresh_pid_namespace_moves_again";
    if !root_or_skip(test) {
        return;
    }
    let dir = TestDir::new(test);
    let exe = compile_c(&dir, "halfpipe");
    let out = dir.join("out");
    let mut original = spawn_redirected(&Cmd::new(exe), Stdio::null(), &out, &dir.join("err"));
    let pid = original.pid();
    let ticks = || {
        complete_lines(&out)
            .iter()
            .map(|l| seq_number(l, "tick ").unwrap_or_else(|| panic!("line {l:?}")))
            .collect::<Vec<u64>>()
    };
    let wait_ticks = |n: usize| {
        wait_until(
            std::time::Duration::from_secs(20),
            &format!("{n} ticks"),
            || (ticks().len() >= n).then_some(()),
            || tail(&out, 3),
        )
    };
    wait_ticks(5);
    let mut previous = pid;
    let mut restored_guard: Option<ProcGuard> = None;
    for round in 0..2 {
        let images = dir.join(format!("images-{round}"));
        let a = args!["dump", "--pid", previous.to_string(), "--images", &images];
        run_tern(&dir, &a, Stdio::null()).assert_ok("tern dump");
        // The dump killed it.
        match restored_guard.take() {
            Some(mut g) => g.disarm(),
            None => {
                original.wait_exit(std::time::Duration::from_secs(5));
                original.disarm();
            }
        }
        let pidfile = dir.join(format!("restored-{round}.pid"));
        let a = args![
            "restore",
            "--images",
            &images,
            "--pidfile",
            &pidfile,
            "--pid-ns",
            "always"
        ];
        run_tern(&dir, &a, Stdio::null()).assert_ok("tern restore");
        let restored: i32 = fs::read_to_string(&pidfile)
            .expect("pidfile")
            .trim()
            .parse()
            .expect("pid");
        restored_guard = Some(ProcGuard::adopt(restored));
        let inner = fs::read_to_string(format!("/proc/{restored}/status"))
            .expect("status")
            .lines()
            .find_map(|l| l.strip_prefix("NSpid:").map(str::to_string))
            .expect("NSpid");
        assert!(
            inner.trim().ends_with(&format!("\t{pid}"))
                || inner.trim().ends_with(&format!(" {pid}")),
            "round {round}: its pid in its namespace must still be {pid}: NSpid {inner}"
        );
        let seen = ticks().len();
        wait_ticks(seen + 20);
        previous = restored;
    }
    drop(restored_guard);
    check_consecutive(&ticks(), 1).unwrap_or_else(|e| panic!("{e}"));
}

/// Two memfds (one sealed against shrinking and growing, one unsealable
/// with its offset at 1234): after restore they hold the same bytes, the
/// same seals, name and offset.
#[test]
fn memfds_keep_bytes_seals_and_offset() {
    if !root_or_skip("memfds_keep_bytes_seals_and_offset") {
        return;
    }
    let mut s = c_session("memfd", "memfd", &[]);
    s.wait_seq(5);
    s.dump();
    s.restore(Stdio::null());
    s.wait_for_line("the memfd checks after the restore", |l| {
        l.contains("memfd ok")
    });
    s.wait_seq(45);
    s.finish();
}

/// Lines of a pty log without the terminal's carriage returns.
fn pty_lines(path: &Path) -> Vec<String> {
    fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| l.trim_end_matches('\r').to_string())
        .collect()
}

/// A program on a terminal under `tests/workloads/pty_harness.py`, which
/// takes orders on the returned child's stdin.
fn on_a_pty(log: &Path, cmd: &[&std::ffi::OsStr]) -> ProcGuard {
    let child = Command::new("/usr/bin/python3")
        .arg("-I")
        .arg(workloads_dir().join("pty_harness.py"))
        .arg(log)
        .arg("--")
        .args(cmd)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the pty harness");
    ProcGuard::child(child)
}

fn order(harness: &mut ProcGuard, what: &str) {
    let stdin = harness
        .child_mut()
        .and_then(|c| c.stdin.as_mut())
        .expect("harness stdin");
    writeln!(stdin, "{what}").expect("order the harness");
    stdin.flush().expect("flush");
}

/// A shell job: a program whose stdio is its controlling terminal is
/// dumped; `tern restore --shell-job` run on another terminal brings it
/// back there, in the foreground: it goes on counting on the new
/// terminal, answers a line typed there (seeing itself in the foreground
/// group), and ^C typed there reaches it; tern restore exits with its
/// status.
#[test]
fn shell_job_comes_back_on_the_restoring_terminal() {
    let test = "shell_job_comes_back_on_the_restoring_terminal";
    if !root_or_skip(test) {
        return;
    }
    let dir = TestDir::new(test);
    let exe = compile_c(&dir, "tty_echo");
    let log_a = dir.join("terminal-a.log");
    let mut a = on_a_pty(&log_a, &[exe.as_os_str()]);
    let pid: i32 = wait_until(
        WAIT,
        "the program ticking on terminal A",
        || {
            let lines = pty_lines(&log_a);
            let pid = lines.first()?.strip_prefix("PID ")?.parse().ok()?;
            lines.iter().any(|l| l == "tick 5").then_some(pid)
        },
        || tail(&log_a, 5),
    );
    let images = dir.join("images");
    tern_dump(&dir, pid, &images, false).assert_ok("tern dump of the shell job");
    wait_until(
        WAIT,
        "terminal A's program gone",
        || {
            pty_lines(&log_a)
                .iter()
                .any(|l| l.starts_with("EXIT"))
                .then_some(())
        },
        || tail(&log_a, 5),
    );
    let _ = a.wait_exit(WAIT);
    let log_b = dir.join("terminal-b.log");
    let tern = tern_bin();
    let mut b = on_a_pty(
        &log_b,
        &[
            tern.as_os_str(),
            "restore".as_ref(),
            "--images".as_ref(),
            images.as_os_str(),
            "--shell-job".as_ref(),
        ],
    );
    let last_a = pty_lines(&log_a)
        .iter()
        .filter_map(|l| seq_number(l, "tick "))
        .max()
        .unwrap_or(0);
    wait_until(
        WAIT,
        "ticks going on on terminal B",
        || {
            pty_lines(&log_b)
                .iter()
                .filter_map(|l| seq_number(l, "tick "))
                .any(|n| n > last_a + 5)
                .then_some(())
        },
        || tail(&log_b, 10),
    );
    order(&mut b, "send hello");
    wait_until(
        WAIT,
        "the program answering on terminal B",
        || {
            pty_lines(&log_b)
                .iter()
                .any(|l| l.starts_with("got hello"))
                .then_some(())
        },
        || tail(&log_b, 10),
    );
    assert!(
        pty_lines(&log_b).iter().any(|l| l == "got hello fg"),
        "it must be in terminal B's foreground group: {}",
        tail(&log_b, 10)
    );
    order(&mut b, "intr");
    let exit = wait_until(
        WAIT,
        "tern restore to end with the program",
        || {
            pty_lines(&log_b)
                .iter()
                .find_map(|l| l.strip_prefix("EXIT ").map(str::to_string))
        },
        || tail(&log_b, 10),
    );
    assert!(
        // The terminal echoes the ^C on the same line.
        pty_lines(&log_b).iter().any(|l| l.ends_with("interrupted")),
        "^C on terminal B must reach it: {}",
        tail(&log_b, 10)
    );
    assert_eq!(exit, "5", "tern restore exits with the program's status");
    let mut nums: Vec<u64> = pty_lines(&log_a)
        .iter()
        .chain(pty_lines(&log_b).iter())
        .filter_map(|l| seq_number(l, "tick "))
        .collect();
    nums.dedup();
    check_consecutive(&nums, 1).unwrap_or_else(|e| panic!("{e}"));
    let _ = b.wait_exit(WAIT);
}

/// A FIFO with 100 records buffered (and two fds on it, one read-only and
/// non-blocking): after restore it gives the records back in order.
#[test]
fn fifo_keeps_its_buffered_records() {
    if !root_or_skip("fifo_keeps_its_buffered_records") {
        return;
    }
    let dir = TestDir::new("fifo");
    let exe = compile_c(&dir, "fifo");
    let cmd = Cmd::new("/bin/sh").arg("-c").arg(format!(
        "cd {} && exec {}",
        dir.path().display(),
        exe.display()
    ));
    let mut s = Session::start(dir, cmd, Stdio::null());
    s.compare_maps = false;
    s.wait_seq(5);
    s.dump();
    let inspect = tern_inspect(&s.dir, &s.images, false);
    assert!(
        inspect.stdout.contains("FIFO") && inspect.stdout.contains("bytes buffered"),
        "{}",
        inspect.stdout
    );
    s.restore(Stdio::null());
    // Past the backlog, into the counters written after the restore.
    s.wait_seq(110);
    s.finish();
}

/// An inotify fd watching two directories under descriptors 1 and 3 (2
/// was removed): after restore, new files raise their events under the
/// same descriptors, and nothing stray is queued.
#[test]
fn inotify_watches_keep_their_numbers() {
    if !root_or_skip("inotify_watches_keep_their_numbers") {
        return;
    }
    let dir = TestDir::new("inotify");
    let exe = compile_c(&dir, "inotify");
    let cmd = Cmd::new("/bin/sh").arg("-c").arg(format!(
        "cd {} && exec {}",
        dir.path().display(),
        exe.display()
    ));
    let mut s = Session::start(dir, cmd, Stdio::null());
    s.wait_seq(5);
    s.dump();
    let inspect = tern_inspect(&s.dir, &s.images, false);
    assert!(
        inspect.stdout.contains("inotify watching") && inspect.stdout.contains("(wd 3"),
        "{}",
        inspect.stdout
    );
    s.restore(Stdio::null());
    s.wait_for_line("the events after the restore", |l| l.contains("inotify ok"));
    s.wait_seq(45);
    s.finish();
}

/// A parent and a child over two unix socketpairs (one end each, a
/// 500-byte backlog waiting at the parent's end of one) and an eventfd
/// both hold: the tree is dumped and restored, the backlog read back and
/// the request/answer/eventfd exchange goes on.
#[test]
fn process_tree_with_socketpairs_and_a_shared_eventfd() {
    if !root_or_skip("process_tree_with_socketpairs_and_a_shared_eventfd") {
        return;
    }
    let mut s = c_session("family_unix", "family_unix", &[]);
    s.compare_maps = false;
    s.wait_seq(5);
    assert_eq!(children_of(s.pid).len(), 1);
    s.dump();
    let never = args!["--pid-ns", "never"];
    s.restore_with(Stdio::null(), &never);
    s.wait_for_line("the backlog after the restore", |l| {
        l.contains("backlog ok")
    });
    s.wait_seq(50);
    s.finish();
}

/// A tree whose stdout is a pipe to a reader outside it (`family | cat`):
/// the pipe is not the tree's to remake; restored, every process writes
/// to the restorer's own stdout, and the parent goes on ticking there.
#[test]
fn process_tree_with_stdout_into_an_outside_pipe() {
    let test = "process_tree_with_stdout_into_an_outside_pipe";
    if !root_or_skip(test) {
        return;
    }
    let dir = TestDir::new(test);
    let exe = compile_c(&dir, "family");
    let mut command = Command::new(&exe);
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    only_stdio(&mut command);
    let mut child = command.spawn().expect("start family");
    let pid = i32::try_from(child.id()).expect("pid");
    let stdout = child.stdout.take().expect("stdout pipe");
    let mut guard = ProcGuard::child(child);
    let reader = std::thread::spawn(move || {
        use std::io::BufRead;
        std::io::BufReader::new(stdout)
            .lines()
            .map_while(|l| l.ok())
            .collect::<Vec<String>>()
    });
    wait_until(
        WAIT,
        "two children",
        || (children_of(pid).len() == 2).then_some(()),
        String::new,
    );
    std::thread::sleep(std::time::Duration::from_millis(150));
    let images = dir.join("images");
    tern_dump(&dir, pid, &images, false).assert_ok("tern dump of the tree");
    let _ = guard.wait_exit(WAIT);
    let before = reader.join().expect("reader");
    let last = before
        .iter()
        .filter_map(|l| seq_number(l, "tick "))
        .max()
        .expect("ticks before the dump");
    let out = dir.join("after.txt");
    let pidfile = dir.join("restored.pid");
    let restore = Command::new(tern_bin())
        .args(["restore", "--pid-ns", "always", "--images"])
        .arg(&images)
        .arg("--pidfile")
        .arg(&pidfile)
        .stdin(Stdio::null())
        .stdout(fs::File::create(&out).expect("output file"))
        .output()
        .expect("run tern restore");
    assert!(
        restore.status.success(),
        "{}",
        String::from_utf8_lossy(&restore.stderr)
    );
    let host: i32 = fs::read_to_string(&pidfile)
        .expect("pid file")
        .trim()
        .parse()
        .expect("pid");
    let mut restored = ProcGuard::adopt(host);
    wait_until(
        WAIT,
        "ticks going on into the restorer's stdout",
        || {
            fs::read_to_string(&out)
                .ok()?
                .lines()
                .filter_map(|l| seq_number(l, "tick "))
                .any(|n| n > last + 10)
                .then_some(())
        },
        || tail(&out, 5),
    );
    let text = fs::read_to_string(&out).expect("output");
    assert!(!text.contains("CORRUPT"), "{text}");
    let first = text
        .lines()
        .find_map(|l| seq_number(l, "tick "))
        .unwrap_or(0);
    assert_eq!(first, last + 1, "it goes on from where it was");
    restored.kill_and_wait();
}

/// A program under two stacked seccomp filters (no_new_privs, a worker
/// thread started after them): a pre-copy dump (every syscall tern injects
/// passing, the filters suspended for tern's ptrace) and a restore give it
/// back both filters, in both threads, in the same order: it checks them
/// every tick, and /proc shows filter mode with 2 filters.
#[test]
fn seccomp_filters_survive() {
    if !root_or_skip("seccomp_filters_survive") {
        return;
    }
    let mut s = c_session("seccomp", "sandboxed", &[]);
    s.wait_seq(10);
    let before = (
        status_field(s.pid, "Seccomp"),
        status_field(s.pid, "Seccomp_filters"),
        status_field(s.pid, "NoNewPrivs"),
    );
    assert_eq!(
        before,
        (Some("2".into()), Some("2".into()), Some("1".into())),
        "the workload must run under its two filters"
    );
    s.dump_with(&["--pre-copy".into()])
        .assert_ok("pre-copy dump");
    s.restore(Stdio::null());
    s.wait_seq(s.last_before + 30);
    let tasks = std::fs::read_dir(format!("/proc/{}/task", s.pid))
        .expect("tasks of the restored program")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .collect::<Vec<_>>();
    assert_eq!(tasks.len(), 2, "main and worker: {tasks:?}");
    for tid in tasks {
        let field = |name: &str| -> Option<String> {
            std::fs::read_to_string(format!("/proc/{}/task/{tid}/status", s.pid))
                .ok()?
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{name}:")))
                .map(|v| v.trim().to_string())
        };
        assert_eq!(
            (
                field("Seccomp"),
                field("Seccomp_filters"),
                field("NoNewPrivs")
            ),
            before,
            "thread {tid} of the restored program"
        );
    }
    s.finish();
}

/// A parent holding a pidfd of its child (`tests/workloads/pidfd_parent.c`):
/// the tree is dumped and restored, and the restored pidfd names the
/// restored child: the parent checks it every tick (waitid through it),
/// then ends the child through it and reaps it.
#[test]
fn pidfd_of_a_child_names_the_restored_child() {
    if !root_or_skip("pidfd_of_a_child_names_the_restored_child") {
        return;
    }
    let mut s = c_session("pidfd", "pidfd_parent", &[]);
    s.compare_maps = false;
    s.wait_seq(5);
    let kids = children_of(s.pid);
    assert_eq!(kids.len(), 1, "{kids:?}");
    s.dump();
    assert!(wait_gone(kids[0], WAIT), "the child outlived the dump");
    let inspect = tern_inspect(&s.dir, &s.images, false);
    inspect.assert_ok("tern inspect");
    assert!(
        inspect
            .stdout
            .contains(&format!("pidfd of process {}", kids[0])),
        "inspect must show the pidfd:\n{}",
        inspect.stdout
    );
    let never = args!["--pid-ns", "never"];
    s.restore_with(Stdio::null(), &never);
    assert_eq!(children_of(s.pid), kids, "the child is back under its pid");
    let line = s.wait_for_line("the child ended through the pidfd", |l| {
        l.contains("child ended")
    });
    assert_eq!(line, "tick 50 child ended by signal 15");
    s.wait_seq(60);
    s.finish();
}

/// A pidfd of a process outside the dump (here python3 holding one of its
/// parent, this test) is refused, naming it; the program runs on.
#[test]
fn pidfd_of_an_outside_process_is_refused() {
    if !root_or_skip("pidfd_of_an_outside_process_is_refused") {
        return;
    }
    let dir = TestDir::new("pidfd_outside");
    let script = "import os, time\nfd = os.pidfd_open(os.getppid())\nprint('ready', flush=True)\ntime.sleep(600)\n";
    let out = dir.join("out.txt");
    let mut p = spawn_redirected(
        &Cmd::new("/usr/bin/python3").arg("-I").arg("-c").arg(script),
        Stdio::null(),
        &out,
        &dir.join("err.txt"),
    );
    wait_until(
        WAIT,
        "python3 to hold the pidfd",
        || {
            fs::read_to_string(&out)
                .ok()?
                .contains("ready")
                .then_some(())
        },
        || tail(&dir.join("err.txt"), 5),
    );
    let refused = tern_dump(&dir, p.pid(), &dir.join("images"), false);
    assert!(!refused.success(), "dumped a pidfd of an outside process");
    let want = format!(
        "a pidfd of process {}, outside the dump",
        std::process::id()
    );
    assert!(
        refused.stderr.contains(&want),
        "the refusal must name the process ({want}): {}",
        refused.stderr
    );
    assert!(p.alive(), "the refused program died");
    p.kill_and_wait();
}
