//! Root-run tests of the ids a restored program gets, three ways:
//! - original ids free: restored under them (every other test does this;
//!   here checked through what the program itself reports);
//! - original ids taken (the original still holds them, stopped): restored
//!   into a fresh PID namespace, where `getpid()`/`gettid()` report the
//!   original values and glibc's cached-tid paths (`raise`,
//!   `pthread_kill`, a priority-inheritance mutex) keep working;
//! - `--new-pid`: the program runs on under a new pid and says so.
//!
//! Workload: `tests/workloads/ids.c`.

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use common::*;

/// One progress line of ids.c.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Tick {
    n: u64,
    pid: u64,
    tid: u64,
    wtid: u64,
    hits: u64,
    whits: u64,
}

fn ticks(path: &Path) -> Vec<Tick> {
    let mut out = Vec::new();
    for line in complete_lines(path) {
        if line.starts_with("ERROR") {
            break;
        }
        let (Some(n), Some(pid), Some(tid), Some(wtid), Some(hits), Some(whits)) = (
            field_after(&line, "tick"),
            field_after(&line, "pid"),
            field_after(&line, "tid"),
            field_after(&line, "wtid"),
            field_after(&line, "hits"),
            field_after(&line, "whits"),
        ) else {
            panic!("unexpected line {line:?}");
        };
        out.push(Tick {
            n,
            pid,
            tid,
            wtid,
            hits,
            whits,
        });
    }
    out
}

fn wait_ticks(path: &Path, at_least: usize, what: &str) -> Vec<Tick> {
    wait_until(
        Duration::from_secs(10),
        &format!("{at_least} lines ({what})"),
        || {
            let t = ticks(path);
            (t.len() >= at_least).then_some(t)
        },
        || tail(path, 20),
    )
}

/// Dump the running program (left running), stop it so it keeps its ids
/// but prints nothing more, restore with `extra` arguments; returns the
/// original's last tick, the restored program's host pid and tern's stderr.
fn dump_stop_restore(
    dir: &TestDir,
    original: &mut ProcGuard,
    out: &Path,
    extra: &[&str],
) -> (Tick, ProcGuard, String) {
    let pid = original.pid();
    wait_ticks(out, 5, "before the dump");
    let images = dir.join("images");
    tern_dump(dir, pid, &images, true).assert_ok("tern dump --leave-running");
    assert!(kill_pid(pid, libc::SIGSTOP), "SIGSTOP the original");
    // Let a tick that was being printed finish.
    std::thread::sleep(Duration::from_millis(50));
    let before = *ticks(out).last().expect("ticks before the dump");
    let pidfile = dir.join("restored.pid");
    let mut a = args!["restore", "--images", &images, "--pidfile", &pidfile];
    a.extend(extra.iter().map(|s| (*s).into()));
    let r = run_tern(dir, &a, Stdio::null());
    r.assert_ok("tern restore");
    let new_pid: i32 = std::fs::read_to_string(&pidfile)
        .expect("pid file")
        .trim()
        .parse()
        .expect("pid in pid file");
    (before, ProcGuard::adopt(new_pid), r.stderr)
}

/// The restored program printed on from `before`: numbers consecutive,
/// signal counters still rising by one per tick.
fn assert_continues(out: &Path, before: Tick, count: usize) -> Vec<Tick> {
    let text = String::from_utf8_lossy(&read_bytes(out)).into_owned();
    assert!(
        !text.contains("ERROR"),
        "the program failed:\n{}",
        tail(out, 5)
    );
    let all = wait_ticks(out, before.n as usize + count, "after the restore");
    let after: Vec<Tick> = all.iter().copied().skip(before.n as usize).collect();
    let numbers: Vec<u64> = all.iter().map(|t| t.n).collect();
    check_consecutive(&numbers, 1).unwrap_or_else(|e| panic!("tick numbers: {e}"));
    for w in after.windows(2) {
        assert_eq!(w[1].hits, w[0].hits + 1, "raise() stopped working: {w:?}");
    }
    after
}

#[test]
fn ids_taken_restores_into_fresh_pid_namespace() {
    if !root_or_skip("ids_taken_restores_into_fresh_pid_namespace") {
        return;
    }
    let dir = TestDir::new("ids-taken");
    let exe = compile_c_with(&dir, "ids", &["-pthread"]);
    let out = dir.join("out.txt");
    let mut original = spawn_redirected(&Cmd::new(&exe), Stdio::null(), &out, &dir.join("err.txt"));
    let (before, mut restored, stderr) = dump_stop_restore(&dir, &mut original, &out, &[]);
    assert!(
        stderr.contains("fresh PID namespace"),
        "tern should say it used a PID namespace: {stderr}"
    );
    assert_ne!(restored.pid(), original.pid(), "host pid must differ");
    let nspid = status_field(restored.pid(), "NSpid").expect("NSpid");
    assert_eq!(
        nspid.split_whitespace().last(),
        Some(original.pid().to_string().as_str()),
        "inside its namespace the program must have its original pid (NSpid: {nspid})"
    );
    let after = assert_continues(&out, before, 15);
    assert_eq!(before.pid, original.pid() as u64);
    for t in &after {
        assert_eq!(
            (t.pid, t.tid, t.wtid),
            (before.pid, before.tid, before.wtid),
            "getpid/gettid inside must report the original ids"
        );
    }
    let (a, b) = (after[0], after[after.len() - 1]);
    assert!(
        b.whits > a.whits,
        "pthread_kill to the worker no longer delivers: {a:?} -> {b:?}"
    );
    restored.kill_and_wait();
    original.kill_and_wait();
}

#[test]
fn ids_free_are_kept_and_new_pid_is_opt_in() {
    if !root_or_skip("ids_free_are_kept_and_new_pid_is_opt_in") {
        return;
    }
    // --new-pid: a new pid, reported by the program itself; glibc's cached
    // tid is now stale, so pthread_kill() fails: the documented risk that
    // makes this opt-in.
    let dir = TestDir::new("ids-new-pid");
    let exe = compile_c_with(&dir, "ids", &["-pthread"]);
    let out = dir.join("out.txt");
    let mut original = spawn_redirected(&Cmd::new(&exe), Stdio::null(), &out, &dir.join("err.txt"));
    let (before, mut restored, _) = dump_stop_restore(&dir, &mut original, &out, &["--new-pid"]);
    // The original may have printed a tick or two between the dump and
    // the SIGSTOP, which the restored program (resuming at the dump's file
    // offset) overwrites: judge by the last line before its ERROR.
    let _ = before;
    wait_until(
        Duration::from_secs(5),
        "glibc's stale cached tid to break pthread_kill under --new-pid",
        || {
            String::from_utf8_lossy(&read_bytes(&out))
                .contains("ERROR pthread_kill: No such process")
                .then_some(())
        },
        || tail(&out, 5),
    );
    let all = ticks(&out);
    let numbers: Vec<u64> = all.iter().map(|t| t.n).collect();
    check_consecutive(&numbers, 1).unwrap_or_else(|e| panic!("tick numbers: {e}"));
    let last = all.last().expect("ticks");
    assert_eq!(
        last.pid,
        restored.pid() as u64,
        "with --new-pid the program must run under the pid tern reported"
    );
    assert_ne!(last.pid, original.pid() as u64);
    restored.kill_and_wait();
    original.kill_and_wait();

    // Free ids: the original is gone, the restored one is the same pid in
    // our namespace, no namespace made.
    let dir = TestDir::new("ids-free");
    let out = dir.join("out.txt");
    let mut original = spawn_redirected(&Cmd::new(&exe), Stdio::null(), &out, &dir.join("err.txt"));
    let pid = original.pid();
    wait_ticks(&out, 5, "start");
    let images = dir.join("images");
    tern_dump(&dir, pid, &images, false).assert_ok("tern dump");
    original
        .wait_exit(Duration::from_secs(5))
        .expect("original killed by the dump");
    let before = *ticks(&out).last().expect("ticks");
    let r = tern_restore(&dir, &images, None, Stdio::null());
    r.assert_ok("tern restore");
    assert!(
        !r.stderr.contains("namespace"),
        "no namespace needed: {}",
        r.stderr
    );
    let mut restored = ProcGuard::adopt(pid);
    let after = assert_continues(&out, before, 10);
    assert!(after
        .iter()
        .all(|t| t.pid == pid as u64 && t.tid == pid as u64));
    assert_eq!(
        status_field(pid, "NSpid").as_deref(),
        Some(pid.to_string().as_str())
    );
    restored.kill_and_wait();
}
