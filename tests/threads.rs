//! Root-run integration tests for multi-threaded programs: each program is
//! started, dumped with `tern dump`, killed, restored with `tern restore` and
//! checked to continue exactly: every thread back under its own tid with its
//! own name and signal mask, every thread making progress (or still blocked
//! where it was, and waking exactly once when told), the main thread's
//! numbered lines running on with no gap or repeat, and `pthread_join`
//! working on a thread that exits after the restore.
//!
//! Workloads: `tests/workloads/threads_workers.c`, `threads_blocked.c`
//! (compiled at test time with `-pthread`) and `two_threads.py` (the system's
//! python3).

mod common;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use common::*;

// ---------------------------------------------------------------------------
// Per-thread state from /proc/PID/task

/// What a restore must keep for each thread (keyed by tid).
#[derive(Clone, Debug, PartialEq, Eq)]
struct TaskInfo {
    comm: String,
    sig_blk: u64,
}

/// A field of /proc/PID/task/TID/status, trimmed.
fn task_status_field(pid: i32, tid: i32, name: &str) -> Option<String> {
    let text = fs::read_to_string(format!("/proc/{pid}/task/{tid}/status")).ok()?;
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k == name).then(|| v.trim().to_string())
    })
}

/// The tids listed under /proc/PID/task, sorted.
fn task_tids(pid: i32) -> Vec<i32> {
    let mut tids: Vec<i32> = fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse().ok()))
                .collect()
        })
        .unwrap_or_default();
    tids.sort_unstable();
    tids
}

/// Every thread of `pid` with its name and blocked-signal mask. A thread
/// that vanishes while being read is left out.
fn tasks(pid: i32) -> BTreeMap<i32, TaskInfo> {
    let mut map = BTreeMap::new();
    for tid in task_tids(pid) {
        let Ok(comm) = fs::read_to_string(format!("/proc/{pid}/task/{tid}/comm")) else {
            continue;
        };
        let Some(sig_blk) =
            task_status_field(pid, tid, "SigBlk").and_then(|v| u64::from_str_radix(&v, 16).ok())
        else {
            continue;
        };
        map.insert(
            tid,
            TaskInfo {
                comm: comm.trim_end().to_string(),
                sig_blk,
            },
        );
    }
    map
}

/// The syscall thread `tid` of `pid` is blocked in; None when running.
fn task_syscall(pid: i32, tid: i32) -> Option<libc::c_long> {
    let text = fs::read_to_string(format!("/proc/{pid}/task/{tid}/syscall")).ok()?;
    text.split_whitespace().next()?.parse().ok()
}

/// The tid of the thread named `comm`; panics unless exactly one has it.
fn tid_named(map: &BTreeMap<i32, TaskInfo>, comm: &str) -> i32 {
    let found: Vec<i32> = map
        .iter()
        .filter(|(_, t)| t.comm == comm)
        .map(|(&tid, _)| tid)
        .collect();
    assert_eq!(
        found.len(),
        1,
        "expected exactly one thread named {comm:?}, found tids {found:?} in {map:?}"
    );
    found[0]
}

/// One line per thread: tid, name, state, syscall, blocked mask.
fn describe_tasks(pid: i32) -> String {
    let mut s = format!("threads of {pid} (/proc/{pid}/task):\n");
    for tid in task_tids(pid) {
        let comm = fs::read_to_string(format!("/proc/{pid}/task/{tid}/comm")).unwrap_or_default();
        let state = task_status_field(pid, tid, "State").unwrap_or_default();
        let sigblk = task_status_field(pid, tid, "SigBlk").unwrap_or_default();
        let syscall =
            fs::read_to_string(format!("/proc/{pid}/task/{tid}/syscall")).unwrap_or_default();
        let syscall = syscall.split_whitespace().next().unwrap_or("?");
        let _ = writeln!(
            s,
            "  {tid} {:<16} state {state:<14} syscall {syscall:<8} SigBlk {sigblk}",
            comm.trim_end()
        );
    }
    s
}

/// The session's diagnostics plus the thread list.
fn tdiag(s: &Session) -> String {
    format!("{}\n{}", s.diag(), describe_tasks(s.pid))
}

/// A readable difference between two thread maps (empty when equal).
fn tasks_diff(before: &BTreeMap<i32, TaskInfo>, after: &BTreeMap<i32, TaskInfo>) -> String {
    let mut s = String::new();
    for (tid, b) in before {
        match after.get(tid) {
            None => {
                let _ = writeln!(s, "  tid {tid} ({:?}) is missing", b.comm);
            }
            Some(a) if a != b => {
                let _ = writeln!(
                    s,
                    "  tid {tid}: comm {:?} SigBlk {:016x} became comm {:?} SigBlk {:016x}",
                    b.comm, b.sig_blk, a.comm, a.sig_blk
                );
            }
            Some(_) => {}
        }
    }
    for (tid, a) in after.iter().filter(|(t, _)| !before.contains_key(t)) {
        let _ = writeln!(s, "  tid {tid} ({:?}) is new", a.comm);
    }
    s
}

/// Panics unless the threads of the process now running under `s.pid` are
/// exactly `expected` (same tids, names and blocked masks).
fn assert_tasks(s: &Session, expected: &BTreeMap<i32, TaskInfo>, context: &str) {
    let now = tasks(s.pid);
    if &now != expected {
        panic!(
            "{context}: the threads differ (expected -> now):\n{}\n{}",
            tasks_diff(expected, &now),
            tdiag(s)
        );
    }
}

/// Waits until the threads of `s.pid` are exactly `expected` (a thread that
/// has just been joined may linger in /proc for a moment).
fn wait_tasks(s: &Session, expected: &BTreeMap<i32, TaskInfo>, what: &str) {
    wait_until(
        WAIT,
        what,
        || (tasks(s.pid) == *expected).then_some(()),
        || {
            format!(
                "expected -> now:\n{}\n{}",
                tasks_diff(expected, &tasks(s.pid)),
                tdiag(s)
            )
        },
    );
}

/// Waits until thread `tid` of `s.pid` is blocked in syscall `nr`.
fn wait_in_syscall(s: &Session, tid: i32, name: &str, nr: libc::c_long, when: &str) {
    wait_until(
        WAIT,
        &format!("thread {tid} ({name}) to be blocked in syscall {nr} {when}"),
        || (task_syscall(s.pid, tid) == Some(nr)).then_some(()),
        || tdiag(s),
    );
}

// ---------------------------------------------------------------------------
// Line parsing

/// `key` as a number in `line`, or a panic naming the line.
fn num(line: &str, key: &str, s: &Session) -> u64 {
    field_after(line, key)
        .unwrap_or_else(|| panic!("no number after {key:?} in {line:?}\n{}", tdiag(s)))
}

/// The four worker counters of a threads_workers line.
fn workers(line: &str) -> Option<[u64; 4]> {
    Some([
        field_after(line, "w0")?,
        field_after(line, "w1")?,
        field_after(line, "w2")?,
        field_after(line, "w3")?,
    ])
}

/// The control directory a workload polls for trigger files.
fn control_dir(dir: &TestDir) -> PathBuf {
    let ctl = dir.join("ctl");
    fs::create_dir_all(&ctl).unwrap_or_else(|e| panic!("mkdir {}: {e}", ctl.display()));
    ctl
}

fn touch(path: &Path) {
    fs::write(path, b"").unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
}

/// A session running `tests/workloads/<prog>.c` (built with `-pthread`)
/// with a control directory as its only argument.
fn threaded_c_session(test: &str, prog: &str) -> (Session, PathBuf) {
    let dir = TestDir::new(test);
    let exe = compile_c_with(&dir, prog, &["-pthread"]);
    let ctl = control_dir(&dir);
    let s = Session::start(dir, Cmd::new(exe).arg(&ctl), Stdio::null());
    (s, ctl)
}

// ---------------------------------------------------------------------------
// Tests

/// Four workers passing a turn round-robin under one mutex and condition
/// variable, each with a `__thread` counter, alternate stack and its own
/// blocked signal: after restore every thread is back under its tid with its
/// name and mask, every worker keeps advancing (their own checks of TLS,
/// tid, alt stack and mask pass), the ticks run on, and worker 3, told to
/// exit after the restore, is `pthread_join`ed by the main thread.
#[test]
fn threads_workers_mutex_condvar() {
    if !root_or_skip("threads_workers_mutex_condvar") {
        return;
    }
    let (mut s, ctl) = threaded_c_session("threads_workers", "threads_workers");
    let pid = s.pid;
    s.wait_seq(5);
    s.wait_for_line("every worker to take 10 turns", |l| {
        workers(l).is_some_and(|w| w.iter().all(|&v| v >= 10))
    });

    let before = tasks(pid);
    let names: Vec<&str> = before.values().map(|t| t.comm.as_str()).collect();
    assert_eq!(
        before.len(),
        5,
        "expected the main thread and 4 workers, found {names:?}\n{}",
        tdiag(&s)
    );
    assert!(
        before.contains_key(&pid),
        "the main thread's tid is not the pid\n{}",
        tdiag(&s)
    );
    let mut worker_tids = Vec::new();
    for i in 0..4 {
        let tid = tid_named(&before, &format!("worker-{i}"));
        assert_ne!(tid, pid, "worker-{i} is the main thread");
        assert_eq!(
            before[&tid].sig_blk,
            sig_bit(libc::SIGRTMIN() + i),
            "worker-{i} (tid {tid}) should block exactly SIGRTMIN+{i}\n{}",
            tdiag(&s)
        );
        worker_tids.push(tid);
    }
    assert_eq!(before[&pid].sig_blk, 0, "the main thread blocks nothing");

    s.dump();
    let last_line = s.last_seq_line().expect("a tick before the dump");
    let w_before = workers(&last_line)
        .unwrap_or_else(|| panic!("no worker counters in {last_line:?}\n{}", tdiag(&s)));
    let lines_before = complete_lines(&s.seq_path).len();

    s.restore(Stdio::null());
    assert_tasks(&s, &before, "right after restore");

    let before_tick = s.last_before;
    s.wait_for_line("every worker past its pre-dump count", |l| {
        seq_number(l, "tick ").is_some_and(|n| n > before_tick)
            && workers(l).is_some_and(|w| w.iter().zip(&w_before).all(|(a, b)| a > b))
    });
    s.wait_seq(s.last_before + 10);
    assert_tasks(&s, &before, "10 ticks after restore");

    // Worker 3 exits; the main thread joins it.
    touch(&ctl.join("stop3"));
    let joined_line = s.wait_for_line("the main thread to print `joined 3`", |l| {
        field_after(l, "joined") == Some(3)
    });
    let w_joined = workers(&joined_line).expect("worker counters");
    let mut without3 = before.clone();
    without3.remove(&worker_tids[3]);
    wait_tasks(&s, &without3, "worker-3's thread to be gone after the join");
    s.wait_for_line("workers 0-2 to keep advancing after the join", |l| {
        workers(l).is_some_and(|w| (0..3).all(|i| w[i] >= w_joined[i] + 10))
    });
    assert_tasks(&s, &without3, "after the join");

    let lines = s.finish();
    let mut prev = [0u64; 4];
    let mut joined_at = None;
    for (i, l) in lines.iter().enumerate() {
        let w = workers(l).unwrap_or_else(|| panic!("no worker counters in {l:?}"));
        for k in 0..4 {
            assert!(
                w[k] >= prev[k],
                "w{k} went back from {} to {} at line {i}: {l:?}\n{}",
                prev[k],
                w[k],
                tdiag(&s)
            );
        }
        let joined = l.contains(" joined 3");
        if joined && joined_at.is_none() {
            joined_at = Some(i);
        }
        assert!(
            joined || l.ends_with(" joined none"),
            "bad joined field in {l:?}"
        );
        if joined_at.is_some() {
            assert!(joined, "`joined 3` went away at line {i}: {l:?}");
            assert_eq!(
                w[3], w_joined[3],
                "w3 changed after worker 3 was joined (line {i}: {l:?})"
            );
        }
        let live = num(l, "live", &s);
        assert_eq!(
            live,
            if joined { 3 } else { 4 },
            "live workers wrong at line {i}: {l:?}"
        );
        let turns = num(l, "turns", &s);
        assert_eq!(
            turns,
            w.iter().sum::<u64>(),
            "turns != sum of worker counters at line {i}: {l:?}"
        );
        prev = w;
    }
    let joined_at = joined_at.expect("`joined 3` in the output");
    assert!(
        joined_at >= lines_before,
        "`joined 3` printed at line {joined_at}, before the dump (which ended at line {lines_before})"
    );
}

/// Three threads blocked in futex (pthread_cond_wait), clock_nanosleep and
/// sigwaitinfo at dump time: after restore each is blocked in the same
/// syscall with the same mask, nothing woke during the restore, and each
/// wakes exactly once when told (SIGUSR1 for the sigwait thread, with our
/// pid as sender; a process-directed SIGUSR2 that only the sleeper may take;
/// a file that makes the main thread signal the condition variable), in
/// that order, without waking the others; the main thread joins each.
#[test]
fn threads_blocked_in_syscalls() {
    if !root_or_skip("threads_blocked_in_syscalls") {
        return;
    }
    let (mut s, ctl) = threaded_c_session("threads_blocked", "threads_blocked");
    let pid = s.pid;
    s.wait_for_line("the sleeper thread to report its tid", |l| {
        field_after(l, "sleeptid").is_some_and(|t| t > 0)
    });
    s.wait_seq(5);
    wait_until(
        WAIT,
        "4 threads",
        || (tasks(pid).len() == 4).then_some(()),
        || tdiag(&s),
    );
    let names = tasks(pid);
    let t_cond = tid_named(&names, "t-cond");
    let t_sleep = tid_named(&names, "t-sleep");
    let t_sigwait = tid_named(&names, "t-sigwait");
    let blocked = [
        (t_cond, "t-cond", libc::SYS_futex),
        (t_sleep, "t-sleep", libc::SYS_clock_nanosleep),
        (t_sigwait, "t-sigwait", libc::SYS_rt_sigtimedwait),
    ];
    for &(tid, name, nr) in &blocked {
        wait_in_syscall(&s, tid, name, nr, "before the dump");
    }
    let before = tasks(pid);
    let usr12 = sig_bit(libc::SIGUSR1) | sig_bit(libc::SIGUSR2);
    for (tid, want) in [
        (pid, usr12),
        (t_cond, usr12),
        (t_sleep, sig_bit(libc::SIGUSR1)),
    ] {
        assert_eq!(
            before[&tid].sig_blk,
            want,
            "unexpected SigBlk of thread {tid} before the dump\n{}",
            tdiag(&s)
        );
    }
    let sleeptid = field_after(&s.last_seq_line().expect("tick"), "sleeptid");
    assert_eq!(
        sleeptid,
        Some(t_sleep as u64),
        "the program's idea of t-sleep's tid differs from /proc"
    );

    s.dump();
    let lines_before = complete_lines(&s.seq_path).len();
    s.restore(Stdio::null());
    for &(tid, name, nr) in &blocked {
        wait_in_syscall(&s, tid, name, nr, "after restore");
    }
    assert_tasks(
        &s,
        &before,
        "after restore, all threads back in their syscalls",
    );
    s.wait_seq(s.last_before + 10);
    for &(tid, name, nr) in &blocked {
        assert_eq!(
            task_syscall(pid, tid),
            Some(nr),
            "{name} (tid {tid}) left its syscall without being told, 10 ticks after restore\n{}",
            tdiag(&s)
        );
    }
    let quiet = s.last_seq_line().expect("tick");
    for key in ["condwoke", "sleepwoke", "sigwoke", "joined"] {
        assert_eq!(
            num(&quiet, key, &s),
            0,
            "{key} is not 0 before anything was triggered after restore: {quiet:?}\n{}",
            tdiag(&s)
        );
    }

    let mut remaining = before.clone();

    // 1. sigwaitinfo: a process-directed SIGUSR1 (blocked everywhere).
    assert!(kill_pid(pid, libc::SIGUSR1), "kill(SIGUSR1) failed");
    let l = s.wait_for_line("t-sigwait to wake and be joined", |l| {
        field_after(l, "sigwoke") == Some(1) && field_after(l, "joined") == Some(1)
    });
    let me = u64::from(std::process::id());
    assert_eq!(
        num(&l, "sigpid", &s),
        me,
        "sigwaitinfo's si_pid is not the sender (this test, pid {me}): {l:?}"
    );
    assert_eq!(
        num(&l, "sigcode", &s),
        0,
        "sigwaitinfo's si_code is not SI_USER: {l:?}"
    );
    assert_eq!(num(&l, "condwoke", &s), 0, "SIGUSR1 woke t-cond: {l:?}");
    assert_eq!(num(&l, "sleepwoke", &s), 0, "SIGUSR1 woke t-sleep: {l:?}");
    remaining.remove(&t_sigwait);
    wait_tasks(&s, &remaining, "t-sigwait to be gone after its join");
    for &(tid, name, nr) in &blocked[..2] {
        assert_eq!(
            task_syscall(pid, tid),
            Some(nr),
            "{name} left its syscall when t-sigwait was woken\n{}",
            tdiag(&s)
        );
    }

    // 2. clock_nanosleep: a process-directed SIGUSR2, unblocked only there.
    assert!(kill_pid(pid, libc::SIGUSR2), "kill(SIGUSR2) failed");
    let l = s.wait_for_line("t-sleep to wake and be joined", |l| {
        field_after(l, "sleepwoke") == Some(1) && field_after(l, "joined") == Some(2)
    });
    assert_eq!(
        num(&l, "usr2tid", &s),
        t_sleep as u64,
        "the SIGUSR2 handler ran on another thread than t-sleep ({t_sleep}): {l:?}"
    );
    assert_eq!(num(&l, "condwoke", &s), 0, "SIGUSR2 woke t-cond: {l:?}");
    remaining.remove(&t_sleep);
    wait_tasks(&s, &remaining, "t-sleep to be gone after its join");
    assert_eq!(
        task_syscall(pid, t_cond),
        Some(libc::SYS_futex),
        "t-cond left its futex wait when t-sleep was woken\n{}",
        tdiag(&s)
    );

    // 3. futex: the main thread signals the condition variable.
    touch(&ctl.join("go-cond"));
    s.wait_for_line("t-cond to wake and be joined", |l| {
        field_after(l, "condwoke") == Some(1) && field_after(l, "joined") == Some(3)
    });
    remaining.remove(&t_cond);
    wait_tasks(&s, &remaining, "only the main thread left");
    s.wait_seq(s.last_seq().expect("tick") + 5);

    let lines = s.finish();
    let keys = [
        "condwoke",
        "condspurious",
        "sleepwoke",
        "sleepeintr",
        "sigwoke",
        "joined",
    ];
    let mut prev = [0u64; 6];
    for (i, l) in lines.iter().enumerate() {
        let mut cur = [0u64; 6];
        for (k, key) in keys.iter().enumerate() {
            cur[k] = num(l, key, &s);
            assert!(
                cur[k] >= prev[k],
                "{key} went back from {} at line {i}: {l:?}",
                prev[k]
            );
        }
        if i < lines_before {
            assert!(
                cur[0] == 0 && cur[2] == 0 && cur[4] == 0 && cur[5] == 0,
                "a thread woke before the dump (line {i}): {l:?}"
            );
        }
        prev = cur;
    }
    let last = lines.last().expect("lines");
    for key in ["condwoke", "sleepwoke", "sigwoke"] {
        assert_eq!(
            num(last, key, &s),
            1,
            "{key}: the thread did not wake exactly once: {last:?}"
        );
    }
    assert_eq!(
        num(last, "joined", &s),
        3,
        "not all threads joined: {last:?}"
    );
    // As for single-threaded sleepers: an interrupted wait may end at most
    // once with EINTR / a spurious return because of one restore.
    assert!(
        num(last, "sleepeintr", &s) <= 1,
        "one restore made t-sleep's clock_nanosleep fail with EINTR more than once: {last:?}"
    );
    assert!(
        num(last, "condspurious", &s) <= 1,
        "one restore made t-cond's pthread_cond_wait return spuriously more than once: {last:?}"
    );
}

/// The system's python3 with two counting threads: after restore all three
/// threads are back under their tids, both counters keep increasing, every
/// line's checksum matches its counters, and the ticks run on.
#[test]
fn python_two_threads() {
    if !root_or_skip("python_two_threads") {
        return;
    }
    let mut s = python_session("python_threads", "two_threads.py");
    let pid = s.pid;
    s.wait_seq(5);
    s.wait_for_line("both counters past 20", |l| {
        field_after(l, "a").is_some_and(|a| a >= 20) && field_after(l, "b").is_some_and(|b| b >= 20)
    });
    wait_until(
        WAIT,
        "3 threads",
        || (tasks(pid).len() == 3).then_some(()),
        || tdiag(&s),
    );
    let before = tasks(pid);

    s.dump();
    let last = s.last_seq_line().expect("tick");
    let (a0, b0) = (num(&last, "a", &s), num(&last, "b", &s));

    s.restore(Stdio::null());
    assert_tasks(&s, &before, "right after restore");
    let before_tick = s.last_before;
    s.wait_for_line("both counters 50 past their pre-dump values", |l| {
        seq_number(l, "tick ").is_some_and(|n| n > before_tick)
            && field_after(l, "a").is_some_and(|a| a >= a0 + 50)
            && field_after(l, "b").is_some_and(|b| b >= b0 + 50)
    });
    s.wait_seq(s.last_before + 20);
    assert_tasks(&s, &before, "20 ticks after restore");

    let lines = s.finish();
    let (mut pa, mut pb) = (0u64, 0u64);
    for (i, l) in lines.iter().enumerate() {
        let (a, b, sum) = (num(l, "a", &s), num(l, "b", &s), num(l, "checksum", &s));
        assert!(
            a >= pa && b >= pb,
            "a counter went back at line {i}: {l:?} (previous a {pa} b {pb})"
        );
        let tri = |n: u64| u128::from(n) * (u128::from(n) + 1) / 2;
        let want = ((tri(a) * 3 + tri(b)) & 0xFFFF_FFFF) as u64;
        assert_eq!(
            sum, want,
            "checksum does not match the counters at line {i}: {l:?}"
        );
        (pa, pb) = (a, b);
    }
}
