//! A stock multi-threaded server from Debian's packages: redis-server (its
//! event loop plus background I/O threads; epoll, a self-pipe, a listening
//! socket, jemalloc). Checked only through its own client, `redis-cli`:
//! data written before the move reads back the same after it, a counter
//! goes on from where it was, and the server reports the same process id
//! (`INFO server`).
//!
//! 1. dumped, killed and restored in its network namespace;
//! 2. live-migrated from edge A to edge B (it listens on every address, so
//!    its clients in B reach it on B's loopback).
//!
//! Needs redis-server and redis-cli (Debian packages redis-server,
//! redis-tools; `.ci/run` installs them). Without them the tests say SKIP
//! (and fail under CI).
//!
//! And memcached (Debian package memcached): 4 worker threads, libevent on
//! epoll, notification pipes, a TCP listener; the same two moves, checked
//! through its text protocol (a value, a counter going on, `stats` pid).

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

const PORT: &str = "6379";

fn redis_or_skip(test: &str) -> bool {
    command_or_skip(test, "redis-server", "redis-server")
        && command_or_skip(test, "redis-cli", "redis-tools")
}

/// `redis-cli ARGS` in network namespace `ns`; its output, trimmed.
fn cli(ns: &Netns, args: &[&str]) -> String {
    let out = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", ns.name))
        .args(["redis-cli", "-h", "127.0.0.1", "-p", PORT])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run redis-cli");
    assert!(
        out.status.success(),
        "redis-cli {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A field of `INFO server`.
fn info_field(ns: &Netns, field: &str) -> Option<String> {
    cli(ns, &["info", "server"]).lines().find_map(|l| {
        l.strip_prefix(field)?
            .strip_prefix(':')
            .map(|v| v.trim().to_string())
    })
}

/// Start redis-server in `ns`, listening on every address; returns once it
/// answers PING.
fn start_redis(dir: &TestDir, ns: &Netns) -> ProcGuard {
    let cmd = ns
        .cmd("redis-server")
        .arg("--port")
        .arg(PORT)
        .arg("--bind")
        .arg("0.0.0.0")
        .arg("--protected-mode")
        .arg("no")
        // Nothing written to disk, so it never forks a saving child.
        .arg("--save")
        .arg("")
        .arg("--appendonly")
        .arg("no")
        .arg("--dir")
        .arg(dir.path())
        .arg("--daemonize")
        .arg("no");
    let redis = spawn_redirected(
        &cmd,
        Stdio::null(),
        &dir.join("redis.out"),
        &dir.join("redis.err"),
    );
    wait_until(
        Duration::from_secs(10),
        "redis-server to answer PING",
        || {
            let out = Command::new("nsenter")
                .arg(format!("--net=/run/netns/{}", ns.name))
                .args(["redis-cli", "-h", "127.0.0.1", "-p", PORT, "ping"])
                .stdin(Stdio::null())
                .output()
                .ok()?;
            (String::from_utf8_lossy(&out.stdout).trim() == "PONG").then_some(())
        },
        || tail(&dir.join("redis.out"), 20),
    );
    redis
}

/// Data through the client: a string, a counter at 5, a list, a hash.
fn fill(ns: &Netns) {
    assert_eq!(cli(ns, &["set", "greeting", "hello edge"]), "OK");
    for i in 1..=5 {
        assert_eq!(cli(ns, &["incr", "counter"]), i.to_string());
    }
    assert_eq!(cli(ns, &["rpush", "list", "a", "b", "c"]), "3");
    assert_eq!(cli(ns, &["hset", "h", "f1", "v1", "f2", "v2"]), "2");
}

/// The same data, and the counter goes on.
fn check(ns: &Netns, pid: i32) {
    assert_eq!(cli(ns, &["get", "greeting"]), "hello edge");
    assert_eq!(cli(ns, &["incr", "counter"]), "6");
    assert_eq!(cli(ns, &["lrange", "list", "0", "-1"]), "a\nb\nc");
    assert_eq!(cli(ns, &["hget", "h", "f2"]), "v2");
    assert_eq!(cli(ns, &["dbsize"]), "4");
    assert_eq!(
        info_field(ns, "process_id").as_deref(),
        Some(pid.to_string().as_str()),
        "redis must see its own pid"
    );
    // And it goes on working.
    assert_eq!(cli(ns, &["set", "after", "move"]), "OK");
    assert_eq!(cli(ns, &["get", "after"]), "move");
}

fn threads(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task")).map_or(0, |d| d.count())
}

/// Its clients have gone (redis handles their close at once; a socket
/// still closing would be a half-closed connection, which dump refuses).
fn settle() {
    std::thread::sleep(Duration::from_millis(300));
}

#[test]
fn redis_dump_restore_keeps_its_data() {
    let test = "redis_dump_restore_keeps_its_data";
    if !redis_or_skip(test) {
        return;
    }
    let dir = TestDir::new(test);
    let ns = Netns::new("redis").expect("network namespace");
    let mut redis = start_redis(&dir, &ns);
    let pid = redis.pid();
    fill(&ns);
    let before = threads(pid);
    assert!(
        before >= 4,
        "redis-server runs {before} threads, expected its I/O threads"
    );
    settle();

    let images = dir.join("images");
    let dump_args = args!["dump", "--pid", pid.to_string(), "--images", &images];
    let out = run_tern(&dir, &dump_args, Stdio::null());
    out.assert_ok("tern dump of redis-server");
    assert!(
        redis.wait_exit(Duration::from_secs(10)).is_some(),
        "redis-server still runs after the dump"
    );
    let pidfile = dir.join("restored.pid");
    let restore_args = args!["restore", "--images", &images, "--pidfile", &pidfile];
    let out = run_tern_in(&dir, Some(&ns.name), &restore_args, Stdio::null());
    out.assert_ok("tern restore of redis-server");
    let host_pid: i32 = std::fs::read_to_string(&pidfile)
        .expect("pid file")
        .trim()
        .parse()
        .expect("pid");
    let mut restored = ProcGuard::adopt(host_pid);
    assert_eq!(threads(host_pid), before, "its threads after the restore");
    check(&ns, pid);
    restored.kill_and_wait();
}

#[test]
fn redis_migrates_to_edge_b_with_its_data() {
    let test = "redis_migrates_to_edge_b_with_its_data";
    if !redis_or_skip(test) {
        return;
    }
    let edges = match EdgePair::new() {
        Ok(e) => e,
        Err(e) => {
            skip_or_panic(test, &format!("cannot make network namespaces: {e}"));
            return;
        }
    };
    let dir = TestDir::new(test);
    let key = keygen(&dir, "tern.key");
    let mut redis = start_redis(&dir, &edges.a);
    let pid = redis.pid();
    fill(&edges.a);
    settle();
    let listen = format!("{EDGE_B_ADDR}:7878");
    let mut serve = start_serve_in(&dir, &edges.b, &listen, &key, &["--once"]);
    let report = dir.join("report.json");
    let migrate_args = args![
        "migrate",
        "--pid",
        pid.to_string(),
        "--to",
        &listen,
        "--key",
        &key,
        "--report",
        &report
    ];
    let out = run_tern_in(&dir, Some(&edges.a.name), &migrate_args, Stdio::null());
    out.assert_ok("tern migrate of redis-server");
    assert!(
        redis.wait_exit(Duration::from_secs(10)).is_some(),
        "the copy in A still runs after the migration"
    );
    let rep: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).expect("report")).expect("json");
    let restored_pid = rep["restored_pid"].as_i64().expect("restored_pid") as i32;
    let mut restored = ProcGuard::adopt(restored_pid);
    assert_eq!(netns_of(restored_pid), Some(edges.b.inode()));
    check(&edges.b, pid);
    eprintln!(
        "{test}: redis-server migrated, downtime {:.1} ms",
        rep["downtime_ms"].as_f64().unwrap_or(-1.0)
    );
    restored.kill_and_wait();
    let _ = serve.wait_exit(Duration::from_secs(10));
}

// ---------------------------------------------------------------------------
// memcached: worker threads (4), a libevent loop on epoll, notification
// pipes between threads, a listening TCP socket. Checked only through its
// text protocol.

const MEMCACHED_PORT: u16 = 11211;

fn memcached_or_skip(test: &str) -> bool {
    command_or_skip(test, "memcached", "memcached")
}

/// Send `request` to memcached in `ns` and read until a line `until` ends
/// the answer.
fn memcached_says(ns: &Netns, request: &str, until: &str) -> String {
    memcached_try(ns, MEMCACHED_PORT, request, until).unwrap_or_else(|e| panic!("memcached: {e}"))
}

/// Start memcached in `ns` with 4 worker threads; returns once it answers.
fn start_memcached(dir: &TestDir, ns: &Netns) -> ProcGuard {
    common::start_memcached(dir, ns, MEMCACHED_PORT)
}

/// A value and a counter at 5.
fn memcached_fill(ns: &Netns) {
    assert_eq!(
        memcached_says(ns, "set greeting 0 0 10\r\nhello edge\r\n", "\r\n"),
        "STORED\r\n"
    );
    assert_eq!(
        memcached_says(ns, "set counter 0 0 1\r\n0\r\n", "\r\n"),
        "STORED\r\n"
    );
    for i in 1..=5 {
        assert_eq!(
            memcached_says(ns, "incr counter 1\r\n", "\r\n"),
            format!("{i}\r\n")
        );
    }
}

/// The same data, the counter goes on, and it reports the same pid.
fn memcached_check(ns: &Netns, pid: i32) {
    assert_eq!(
        memcached_says(ns, "get greeting\r\n", "END\r\n"),
        "VALUE greeting 0 10\r\nhello edge\r\nEND\r\n"
    );
    assert_eq!(memcached_says(ns, "incr counter 1\r\n", "\r\n"), "6\r\n");
    let stats = memcached_says(ns, "stats\r\n", "END\r\n");
    assert!(
        stats.contains(&format!("STAT pid {pid}\r\n")),
        "memcached must see its own pid: {stats}"
    );
    assert_eq!(
        memcached_says(ns, "set after 0 0 4\r\nmove\r\n", "\r\n"),
        "STORED\r\n"
    );
}

#[test]
fn memcached_dump_restore_keeps_its_data() {
    let test = "memcached_dump_restore_keeps_its_data";
    if !memcached_or_skip(test) {
        return;
    }
    let dir = TestDir::new(test);
    let ns = Netns::new("memcached").expect("network namespace");
    let mut m = start_memcached(&dir, &ns);
    let pid = m.pid();
    memcached_fill(&ns);
    let before = threads(pid);
    assert!(
        before >= 5,
        "memcached runs {before} threads, expected its workers"
    );
    settle();
    let mut restored = dump_then_restore_in(&dir, &ns.name, &mut m);
    let host_pid = restored.pid();
    assert_eq!(threads(host_pid), before, "its threads after the restore");
    memcached_check(&ns, pid);
    restored.kill_and_wait();
}

#[test]
fn memcached_migrates_to_edge_b_with_its_data() {
    let test = "memcached_migrates_to_edge_b_with_its_data";
    if !memcached_or_skip(test) {
        return;
    }
    let Some(edges) = edges_or_skip(test) else {
        return;
    };
    let dir = TestDir::new(test);
    let mut m = start_memcached(&dir, &edges.a);
    let pid = m.pid();
    memcached_fill(&edges.a);
    settle();
    let (rep, mut restored) = migrate_a_to_b(&dir, &edges, pid, &[]);
    assert!(m.wait_exit(Duration::from_secs(10)).is_some());
    memcached_check(&edges.b, pid);
    eprintln!(
        "{test}: memcached migrated, downtime {:.1} ms",
        rep["downtime_ms"].as_f64().unwrap_or(-1.0)
    );
    restored.kill_and_wait();
}

// ---------------------------------------------------------------------------
// nginx: a master and two workers (a process tree: the listening socket
// shared by all three, socketpairs between master and workers), moved
// whole by a stop-and-copy migration.

const NGINX_PORT: u16 = 18082;

fn nginx_or_skip(test: &str) -> bool {
    command_or_skip(test, "nginx", "nginx-light")
}

/// The worker pids nginx answers `/pid` with, over `n` requests.
fn nginx_worker_pids(ns: &Netns, n: usize) -> std::collections::BTreeSet<i32> {
    (0..n)
        .map(|_| {
            http_get(ns, NGINX_PORT, "/pid")
                .unwrap_or_else(|e| panic!("GET /pid: {e}"))
                .parse::<i32>()
                .expect("a pid")
        })
        .collect()
}

#[test]
fn nginx_master_and_workers_move_stop_and_copy() {
    let test = "nginx_master_and_workers_move_stop_and_copy";
    if !nginx_or_skip(test) {
        return;
    }
    let Some(edges) = edges_or_skip(test) else {
        return;
    };
    let dir = TestDir::new(test);
    let mut master = start_nginx(&dir, &edges.a, NGINX_PORT, "");
    let pid = master.pid();
    let workers: std::collections::BTreeSet<i32> = children_of(pid).into_iter().collect();
    assert_eq!(workers.len(), 2, "{workers:?}");
    assert!(nginx_worker_pids(&edges.a, 8).is_subset(&workers));

    let (rep, moved_guard) = migrate_a_to_b(&dir, &edges, pid, &["--mode", "simple"]);
    assert!(master.wait_exit(Duration::from_secs(10)).is_some());
    for w in &workers {
        assert!(
            wait_gone(*w, Duration::from_secs(5)),
            "worker {w} is still in A"
        );
    }
    let moved = moved_guard.pid();
    let mut guards = vec![moved_guard];
    let moved_workers = children_of(moved);
    guards.extend(moved_workers.iter().map(|&w| ProcGuard::adopt(w)));
    assert_eq!(moved_workers.len(), 2, "the master in B has its workers");
    assert_eq!(
        http_get(&edges.b, NGINX_PORT, "/").as_deref(),
        Ok("hello edge")
    );
    // The workers answer with the pids they had (in B's PID namespace).
    assert!(nginx_worker_pids(&edges.b, 8).is_subset(&workers));

    // The master still reaps its workers and starts a new one.
    let killed = moved_workers[0];
    kill_pid(killed, libc::SIGKILL);
    let respawned = wait_until(
        Duration::from_secs(10),
        "the master to replace the killed worker",
        || {
            let now = children_of(moved);
            (now.len() == 2 && !now.contains(&killed)).then_some(now)
        },
        || tail(&dir.join("error.log"), 5),
    );
    guards.extend(respawned.iter().map(|&w| ProcGuard::adopt(w)));
    assert!(
        std::fs::read_to_string(dir.join("error.log"))
            .unwrap_or_default()
            .contains("exited on signal 9"),
        "the master must have reaped the killed worker"
    );
    assert_eq!(
        http_get(&edges.b, NGINX_PORT, "/").as_deref(),
        Ok("hello edge")
    );
    eprintln!(
        "{test}: nginx (3 processes) moved, downtime {:.1} ms",
        rep["downtime_ms"].as_f64().unwrap_or(-1.0)
    );
    for mut g in guards {
        g.kill_and_wait();
    }
}
