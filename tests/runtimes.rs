//! Stock language runtimes (issue 15, item 6), each checked only through its
//! own protocol.
//!
//! Go: an HTTP server (`tests/workloads/go_server/main.go`) built at test
//! time with Debian's Go (`golang-go`; `.ci/run` installs it): the Go
//! scheduler's threads, its netpoller on epoll with a wake-up pipe, signal
//! handlers on alternate stacks, and four goroutines spinning so that the
//! runtime preempts them with SIGURG. Dumped and restored, then
//! live-migrated A -> B; `GET /incr` goes on counting and `GET /pid`
//! answers the same pid.
//!
//! Node.js (the machine's `node`; libuv: epoll, eventfds, a thread pool):
//! an HTTP server dumped/restored and live-migrated, checked over HTTP.
//!
//! Java (Debian's default-jre-headless): `tests/workloads/Counter.java`, an
//! HTTP server run from its source file (about 20 JVM threads, NIO on
//! epoll, the JVM's pre-close socket whose other end is closed, the perf
//! data file mapped shared): dumped/restored and live-migrated, checked
//! over HTTP.
//!
//! io_uring: its worker threads never stop for ptrace and its rings cannot
//! be moved. A program with a ring and a submission-polling thread
//! (`tests/workloads/uring.c`) is refused before any seize, naming it, and
//! runs on untouched.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::*;

const GO_PORT: u16 = 18080;

fn get(ns: &Netns, port: u16, path: &str) -> String {
    http_get(ns, port, path).unwrap_or_else(|e| panic!("GET {path}: {e}"))
}

/// Count to 3 before the move.
fn count_to_three(ns: &Netns, port: u16) {
    for i in 1..=3 {
        assert_eq!(get(ns, port, "/incr"), i.to_string());
    }
}

/// After the move: the count goes on, the pid is its own, and its
/// spinning goroutines still run (it uses CPU).
fn check_go_server(ns: &Netns, pid: i32, host_pid: i32) {
    assert_eq!(get(ns, GO_PORT, "/incr"), "4", "the counter goes on");
    assert_eq!(
        get(ns, GO_PORT, "/pid"),
        pid.to_string(),
        "it sees its own pid"
    );
    let ticks = |p: i32| -> u64 {
        let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
        let rest = stat.rsplit_once(')').map_or("", |r| r.1);
        let f: Vec<&str> = rest.split_whitespace().collect();
        // utime and stime: fields 14 and 15, the 12th and 13th after ')'.
        f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
            + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
    };
    let before = ticks(host_pid);
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        ticks(host_pid) > before + 10,
        "its spinning goroutines do not run (CPU ticks {before} -> {})",
        ticks(host_pid)
    );
    assert_eq!(get(ns, GO_PORT, "/incr"), "5");
}

#[test]
fn go_http_server_dump_restore() {
    let test = "go_http_server_dump_restore";
    let dir = TestDir::new(test);
    let Some(exe) = go_server_or_skip(test, &dir) else {
        return;
    };
    let ns = Netns::new("go").expect("network namespace");
    let mut server = start_go_server(&dir, &ns, &exe, GO_PORT);
    let pid = server.pid();
    count_to_three(&ns, GO_PORT);
    let mut restored = dump_then_restore_in(&dir, &ns.name, &mut server);
    let host_pid = restored.pid();
    check_go_server(&ns, pid, host_pid);
    restored.kill_and_wait();
}

#[test]
fn go_http_server_migrates_live() {
    let test = "go_http_server_migrates_live";
    let dir = TestDir::new(test);
    let Some(exe) = go_server_or_skip(test, &dir) else {
        return;
    };
    let Some(edges) = edges_or_skip(test) else {
        return;
    };
    let mut server = start_go_server(&dir, &edges.a, &exe, GO_PORT);
    let pid = server.pid();
    count_to_three(&edges.a, GO_PORT);
    let (rep, mut restored) = migrate_a_to_b(&dir, &edges, pid, &[]);
    assert!(server.wait_exit(Duration::from_secs(10)).is_some());
    let host_pid = restored.pid();
    check_go_server(&edges.b, pid, host_pid);
    eprintln!(
        "{test}: downtime {:.1} ms ({} rounds)",
        rep["downtime_ms"].as_f64().unwrap_or(-1.0),
        rep["rounds"].as_array().map_or(0, Vec::len)
    );
    restored.kill_and_wait();
}

const NODE_PORT: u16 = 18081;

fn node_or_skip(test: &str) -> bool {
    command_or_skip(test, "node", "nodejs")
}

#[test]
fn node_http_server_dump_restore_and_live_migration() {
    let test = "node_http_server_dump_restore_and_live_migration";
    if !node_or_skip(test) {
        return;
    }
    let Some(edges) = edges_or_skip(test) else {
        return;
    };
    let dir = TestDir::new(test);
    let server = start_node_server(&dir, &edges.a, NODE_PORT);
    count_to_three(&edges.a, NODE_PORT);
    dump_restore_then_migrate(test, &dir, &edges, server, NODE_PORT);
}

#[test]
fn io_uring_user_is_refused_and_runs_on() {
    let test = "io_uring_user_is_refused_and_runs_on";
    if !root_or_skip(test) {
        return;
    }
    let dir = TestDir::new(test);
    let exe = compile_c(&dir, "uring");
    let out = dir.join("uring.out");
    let mut program =
        spawn_redirected(&Cmd::new(&exe), Stdio::null(), &out, &dir.join("uring.err"));
    let pid = program.pid();
    let ticks = |n: usize| {
        wait_until(
            Duration::from_secs(20),
            &format!("{n} ticks"),
            || (complete_lines(&out).len() >= n).then_some(()),
            || tail(&dir.join("uring.err"), 5),
        )
    };
    ticks(3);
    let dump_args = args![
        "dump",
        "--pid",
        pid.to_string(),
        "--images",
        dir.join("images")
    ];
    let refused = run_tern_within(
        &dir,
        None,
        &dump_args,
        Stdio::null(),
        Duration::from_secs(30),
    );
    assert!(!refused.success(), "a program using io_uring was dumped");
    assert!(
        refused.stderr.contains("io_uring") && refused.stderr.contains("worker threads"),
        "the refusal must say io_uring and its workers: {}",
        refused.stderr
    );
    assert_eq!(status_field(pid, "TracerPid").as_deref(), Some("0"));
    let n = complete_lines(&out).len();
    ticks(n + 10);
    program.kill_and_wait();
}

const JAVA_PORT: u16 = 18083;

fn java_or_skip(test: &str) -> bool {
    command_or_skip(test, "java", "default-jre-headless")
}

#[test]
fn java_http_server_dump_restore_and_live_migration() {
    let test = "java_http_server_dump_restore_and_live_migration";
    if !java_or_skip(test) {
        return;
    }
    let Some(edges) = edges_or_skip(test) else {
        return;
    };
    let dir = TestDir::new(test);
    let server = start_java_server(&dir, &edges.a, JAVA_PORT);
    let pid = server.pid();
    count_to_three(&edges.a, JAVA_PORT);
    let threads = std::fs::read_dir(format!("/proc/{pid}/task")).map_or(0, |d| d.count());
    assert!(threads >= 10, "the JVM runs {threads} threads");
    dump_restore_then_migrate(test, &dir, &edges, server, JAVA_PORT);
}

/// For an HTTP server in A that counted to 3 (`server`, listening on
/// `port`): dumped and restored in A, then live-migrated from A to B; after
/// each move `/incr` goes on counting and `/pid` answers the pid it had.
fn dump_restore_then_migrate(
    test: &str,
    dir: &TestDir,
    edges: &EdgePair,
    mut server: ProcGuard,
    port: u16,
) {
    let pid = server.pid();
    let mut restored = dump_then_restore_in(dir, &edges.a.name, &mut server);
    let host_pid = restored.pid();
    assert_eq!(get(&edges.a, port, "/incr"), "4", "the counter goes on");
    assert_eq!(get(&edges.a, port, "/pid"), pid.to_string());

    let (rep, mut moved_guard) = migrate_a_to_b(dir, edges, host_pid, &[]);
    restored.disarm();
    assert_eq!(
        get(&edges.b, port, "/incr"),
        "5",
        "the counter goes on in B"
    );
    assert_eq!(get(&edges.b, port, "/pid"), pid.to_string());
    eprintln!(
        "{test}: migrated, downtime {:.1} ms",
        rep["downtime_ms"].as_f64().unwrap_or(-1.0)
    );
    moved_guard.kill_and_wait();
}
