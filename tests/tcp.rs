//! Root-run tests of TCP connections that must survive a move: a user in
//! one network namespace talks to a service over ONE connection, sending a
//! numbered request every 2 ms and checking every answer (the service
//! counts each connection's requests, so a lost or repeated byte shows).
//! The service is dumped and restored, or migrated from edge A to edge B
//! with a handoff that moves its address and the user's route; the user
//! must see no error and no gap, and the service's listening socket must
//! take new connections afterwards.
//!
//! Workloads: `tests/workloads/tcp_service.c`, `tests/workloads/tcp_client.c`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use common::*;

const SERVICE_PORT: &str = "7000";
const TERN_PORT: u16 = 7878;
/// The service's address: on A's loopback, moved to B's by the handoff.
const SERVICE_ADDR: &str = "10.78.9.1";
const USER_TO_A: (&str, &str) = ("10.78.1.1", "10.78.1.2");
const USER_TO_B: (&str, &str) = ("10.78.2.1", "10.78.2.2");
/// Request interval of the client, in microseconds.
const INTERVAL_US: &str = "2000";

/// The user U and edges A and B: U-A and U-B links for the user's
/// traffic, A-B (the [`EdgePair`]) for tern's.
struct World {
    edges: EdgePair,
    user: Netns,
}

impl World {
    fn new() -> Result<World, String> {
        let edges = EdgePair::new()?;
        let user = Netns::new("u")?;
        let (ua, au) = (veth_name("tua"), veth_name("tau"));
        let (ub, bu) = (veth_name("tub"), veth_name("tbu"));
        veth(&user, &ua, &edges.a, &au)?;
        veth(&user, &ub, &edges.b, &bu)?;
        user.ip(&["addr", "add", &format!("{}/24", USER_TO_A.0), "dev", &ua])?;
        edges
            .a
            .ip(&["addr", "add", &format!("{}/24", USER_TO_A.1), "dev", &au])?;
        user.ip(&["addr", "add", &format!("{}/24", USER_TO_B.0), "dev", &ub])?;
        edges
            .b
            .ip(&["addr", "add", &format!("{}/24", USER_TO_B.1), "dev", &bu])?;
        // The service lives on A; B can reach the user's A-side address
        // (the connection's peer) through the user's B link.
        edges
            .a
            .ip(&["addr", "add", &format!("{SERVICE_ADDR}/32"), "dev", "lo"])?;
        user.ip(&[
            "route",
            "add",
            &format!("{SERVICE_ADDR}/32"),
            "via",
            USER_TO_A.1,
        ])?;
        edges
            .b
            .ip(&["route", "add", "10.78.1.0/24", "via", USER_TO_B.0])?;
        Ok(World { edges, user })
    }

    /// Move the service address from A to B and the user's route with it.
    /// Undo the handoff: the service address back on A, the user's route
    /// to it through A.
    fn hand_back(&self) {
        self.edges
            .b
            .ip(&["addr", "del", &format!("{SERVICE_ADDR}/32"), "dev", "lo"])
            .expect("remove the service address from B");
        self.edges
            .a
            .ip(&["addr", "add", &format!("{SERVICE_ADDR}/32"), "dev", "lo"])
            .expect("put the service address back on A");
        self.user
            .ip(&[
                "route",
                "replace",
                &format!("{SERVICE_ADDR}/32"),
                "via",
                USER_TO_A.1,
            ])
            .expect("route the user to A again");
    }

    /// `tern migrate` of `pid` from A to a `tern serve --once` started in
    /// B, with `--tcp-established`, the handoff and `extra`, its report in
    /// `dir`; it must succeed. Returns the daemon's guard.
    fn migrate_to_b(&self, dir: &TestDir, pid: i32, extra: &[&str]) -> ProcGuard {
        let key = keygen(dir, "tern.key");
        let to = format!("{EDGE_B_ADDR}:{TERN_PORT}");
        let serve = start_serve_in(dir, &self.edges.b, &to, &key, &["--once"]);
        let mut args = args![
            "migrate",
            "--pid",
            pid.to_string(),
            "--to",
            &to,
            "--key",
            &key,
            "--tcp-established",
            "--handoff-cmd",
            self.handoff_cmd(),
            "--report",
            dir.join("report.json"),
        ];
        args.extend(extra.iter().map(|x| (*x).into()));
        run_tern_in(dir, Some(&self.edges.a.name), &args, Stdio::null()).assert_ok(&format!(
            "migrate --tcp-established with the handoff {}",
            extra.join(" ")
        ));
        serve
    }

    fn handoff_cmd(&self) -> String {
        format!(
            "ip -n {a} addr del {SERVICE_ADDR}/32 dev lo && ip -n {b} addr add {SERVICE_ADDR}/32 dev lo && ip -n {u} route replace {SERVICE_ADDR}/32 via {via}",
            a = self.edges.a.name,
            b = self.edges.b.name,
            u = self.user.name,
            via = USER_TO_B.1
        )
    }
}

fn world_or_skip(test: &str) -> Option<World> {
    if !root_or_skip(test) {
        return None;
    }
    if std::process::Command::new("nft")
        .arg("--version")
        .output()
        .is_err()
    {
        skip_or_panic(test, "nft (Debian package nftables) is not installed");
        return None;
    }
    match World::new() {
        Ok(w) => Some(w),
        Err(e) => {
            skip_or_panic(test, &format!("cannot make network namespaces: {e}"));
            None
        }
    }
}

/// "progress N maxwait_us W" / "done N maxwait_us W" lines of the client;
/// panics on an ERROR line.
fn client_progress(out: &Path) -> Option<(u64, u64)> {
    let lines = complete_lines(out);
    if let Some(e) = lines.iter().find(|l| l.starts_with("ERROR")) {
        panic!("the user's client failed: {e}");
    }
    lines.iter().rev().find_map(|l| {
        let n = field_after(l, "progress").or_else(|| field_after(l, "done"))?;
        Some((n, field_after(l, "maxwait_us")?))
    })
}

/// The longest wait for an answer among requests after `from`, in
/// microseconds (from the per-100 "recent_us" figures).
fn longest_wait_after(out: &Path, from: u64) -> u64 {
    complete_lines(out)
        .iter()
        .filter(|l| field_after(l, "progress").is_some_and(|n| n > from))
        .filter_map(|l| field_after(l, "recent_us"))
        .max()
        .unwrap_or(0)
}

fn wait_requests(out: &Path, n: u64) -> (u64, u64) {
    wait_until(
        Duration::from_secs(30),
        &format!("{n} answered requests"),
        || client_progress(out).filter(|p| p.0 >= n),
        || tail(out, 5),
    )
}

/// Wait until namespace `ns` has no lock of tern's left (lifting one runs
/// in the background once the program runs).
fn wait_no_tables(ns: &Netns) {
    wait_until(
        Duration::from_secs(5),
        "the network lock to be lifted",
        || tern_tables(ns).is_empty().then_some(()),
        || format!("{:?}", tern_tables(ns)),
    );
}

/// nftables tables of tern's in namespace `ns`.
fn tern_tables(ns: &Netns) -> Vec<String> {
    let out = std::process::Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", ns.name))
        .args(["nft", "list", "tables"])
        .output()
        .expect("nft list tables");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("tern_"))
        .map(str::to_string)
        .collect()
}

struct Service {
    // Field order is drop order: processes before the namespaces.
    client: ProcGuard,
    service: ProcGuard,
    client_out: PathBuf,
    service_out: PathBuf,
    client_exe: PathBuf,
    dir: TestDir,
}

/// The service in `service_ns` on `addr`, and one client in `user_ns`
/// talking to it (100 requests answered before this returns).
fn start_service(test: &str, service_ns: &Netns, user_ns: &Netns, addr: &str) -> Service {
    let dir = TestDir::new(test);
    let service_exe = compile_c(&dir, "tcp_service");
    let client_exe = compile_c(&dir, "tcp_client");
    let service_out = dir.join("service.out");
    let service = spawn_redirected(
        &service_ns.cmd(&service_exe).arg(addr).arg(SERVICE_PORT),
        Stdio::null(),
        &service_out,
        &dir.join("service.err"),
    );
    wait_until(
        Duration::from_secs(10),
        "the service to listen",
        || {
            complete_lines(&service_out)
                .iter()
                .any(|l| l == "listening")
                .then_some(())
        },
        || tail(&dir.join("service.err"), 5),
    );
    let client_out = dir.join("client.out");
    let client = spawn_redirected(
        &user_ns
            .cmd(&client_exe)
            .arg(addr)
            .arg(SERVICE_PORT)
            .arg(INTERVAL_US)
            .arg("0"),
        Stdio::null(),
        &client_out,
        &dir.join("client.err"),
    );
    wait_requests(&client_out, 100);
    Service {
        client,
        service,
        client_out,
        service_out,
        client_exe,
        dir,
    }
}

impl Service {
    /// After a successful migration: the service is gone from here and
    /// runs in `to`'s namespace. Its report, and a guard of the copy there.
    fn moved_to(&mut self, to: &Netns) -> (serde_json::Value, ProcGuard) {
        let pid = self.service.pid();
        assert!(
            wait_gone(pid, Duration::from_secs(5)),
            "the service still runs in A"
        );
        self.service.disarm();
        let report = migration_report(&self.dir.join("report.json"));
        let restored = report["restored_pid"].as_i64().expect("restored_pid") as i32;
        let guard = ProcGuard::adopt(restored);
        assert_eq!(
            netns_of(restored),
            Some(to.inode()),
            "the service must run in B"
        );
        (report, guard)
    }
    /// A second, short-lived connection from `ns` must be accepted and
    /// answered (the listening socket works).
    fn new_connection_works(&self, ns: &Netns, addr: &str) {
        let out = self.dir.join("client2.out");
        let mut second = spawn_redirected(
            &ns.cmd(&self.client_exe)
                .arg(addr)
                .arg(SERVICE_PORT)
                .arg("1000")
                .arg("20"),
            Stdio::null(),
            &out,
            &self.dir.join("client2.err"),
        );
        let status = second.wait_exit(Duration::from_secs(20));
        assert!(
            status.is_some_and(|s| s.success()),
            "a new connection to the restored service failed ({status:?}): {}",
            tail(&out, 5)
        );
        assert_eq!(client_progress(&out).map(|p| p.0), Some(20));
        assert!(
            complete_lines(&self.service_out)
                .iter()
                .any(|l| l == "accepted 2"),
            "the service did not report the second connection"
        );
    }

    /// Stop the client; it must end cleanly. Returns (requests, longest
    /// wait for an answer in microseconds).
    fn finish_client(&mut self) -> (u64, u64) {
        assert!(kill_pid(self.client.pid(), libc::SIGTERM));
        let status = self.client.wait_exit(Duration::from_secs(10));
        assert!(
            status.is_some_and(|s| s.success()),
            "the client ended badly ({status:?}): {}",
            tail(&self.client_out, 5)
        );
        let last = complete_lines(&self.client_out)
            .last()
            .cloned()
            .unwrap_or_default();
        assert!(last.starts_with("done"), "client's last line: {last:?}");
        client_progress(&self.client_out).expect("client totals")
    }
}

/// One UDP request to the service's UDP socket from namespace `ns`; its
/// answer.
fn udp_request(ns: &Netns, addr: &str, n: u32) -> String {
    let family = if addr.contains(':') {
        "AF_INET6"
    } else {
        "AF_INET"
    };
    let script = format!(
        "import socket\ns = socket.socket(socket.{family}, socket.SOCK_DGRAM)\ns.settimeout(5)\ns.sendto(b'{n}', ('{addr}', {SERVICE_PORT}))\nprint(s.recv(64).decode().strip())\n"
    );
    let out = std::process::Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", ns.name))
        .args(["python3", "-c", &script])
        .output()
        .expect("run python3");
    assert!(
        out.status.success(),
        "UDP request {n} to {addr} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The total count in a UDP answer "N udp T".
fn udp_total(answer: &str, n: u32) -> u64 {
    let mut parts = answer.split_whitespace();
    assert_eq!(
        parts.next(),
        Some(n.to_string().as_str()),
        "answer {answer:?}"
    );
    assert_eq!(parts.next(), Some("udp"), "answer {answer:?}");
    parts.next().and_then(|t| t.parse().ok()).expect("total")
}

#[test]
fn dump_restore_keeps_a_tcp_connection() {
    dump_restore_case("dump_restore_keeps_a_tcp_connection", USER_TO_A.1);
}

#[test]
fn dump_restore_keeps_an_ipv6_tcp_connection() {
    dump_restore_case("dump_restore_keeps_an_ipv6_tcp_connection", "::1");
}

/// Service and user both in A, over `addr`: dump refused without the
/// option, then dumped and restored with it; the connection, the listener
/// and the UDP socket all carry on.
fn dump_restore_case(test: &str, addr: &str) {
    let Some(w) = world_or_skip(test) else {
        return;
    };
    let ns = &w.edges.a;
    let mut s = start_service(test, ns, ns, addr);
    let udp_before = udp_total(&udp_request(ns, addr, 1), 1);
    let pid = s.service.pid();
    let images = s.dir.join("images");

    // Refused without --tcp-established, and nothing happens to it.
    let a = args!["dump", "--pid", pid.to_string(), "--images", &images];
    let out = run_tern_in(&s.dir, Some(&ns.name), &a, Stdio::null());
    assert!(!out.success(), "dump must refuse: {}", out.describe());
    assert!(
        out.stderr.contains("--tcp-established") && out.stderr.contains("established TCP"),
        "the refusal must name the connection and the option: {}",
        out.stderr
    );
    let before = client_progress(&s.client_out).expect("progress").0;
    wait_requests(&s.client_out, before + 100);
    assert!(tern_tables(ns).is_empty(), "a refused dump left a lock");

    let before = client_progress(&s.client_out).expect("progress").0;
    let mut a = a.clone();
    a.push("--tcp-established".into());
    run_tern_in(&s.dir, Some(&ns.name), &a, Stdio::null()).assert_ok("dump --tcp-established");
    assert!(
        wait_gone(pid, Duration::from_secs(5)),
        "the dumped service still runs"
    );
    s.service.disarm();
    // Between dump and restore the connection is locked, not reset.
    assert_eq!(tern_tables(ns).len(), 1, "the dump must leave its lock");
    let inspect = tern_inspect(&s.dir, &images, false);
    assert!(
        inspect.stdout.contains("listening") && inspect.stdout.contains("established"),
        "inspect shows the sockets: {}",
        inspect.stdout
    );
    std::thread::sleep(Duration::from_millis(300));

    let pidfile = s.dir.join("restored.pid");
    let a = args!["restore", "--images", &images, "--pidfile", &pidfile];
    run_tern_in(&s.dir, Some(&ns.name), &a, Stdio::null()).assert_ok("restore");
    let restored: i32 = std::fs::read_to_string(&pidfile)
        .expect("pidfile")
        .trim()
        .parse()
        .expect("pid");
    let _restored = ProcGuard::adopt(restored);
    wait_no_tables(ns);
    let after = client_progress(&s.client_out).expect("progress").0;
    wait_requests(&s.client_out, after + 300);
    s.new_connection_works(ns, addr);
    // The UDP socket is bound again, and the service's count went on.
    let udp_after = udp_total(&udp_request(ns, addr, 2), 2);
    assert!(
        udp_after > udp_before + 300,
        "UDP total {udp_after} after {udp_before}"
    );
    let (n, _) = s.finish_client();
    eprintln!(
        "dump/restore: {n} requests over one connection, longest wait {:.1} ms (includes the 300 ms between dump and restore)",
        longest_wait_after(&s.client_out, before) as f64 / 1e3
    );
}

#[test]
fn migrate_moves_the_users_tcp_connection_to_edge_b() {
    let Some(w) = world_or_skip("migrate_moves_the_users_tcp_connection_to_edge_b") else {
        return;
    };
    let mut s = start_service(
        "migrate_moves_the_users_tcp_connection_to_edge_b",
        &w.edges.a,
        &w.user,
        SERVICE_ADDR,
    );
    let pid = s.service.pid();
    let key = keygen(&s.dir, "tern.key");
    let to = format!("{EDGE_B_ADDR}:{TERN_PORT}");
    let migrate = |extra: &[&str]| {
        let mut a = args![
            "migrate",
            "--pid",
            pid.to_string(),
            "--to",
            &to,
            "--key",
            &key,
            "--report",
            s.dir.join("report.json"),
        ];
        a.extend(extra.iter().map(|x| (*x).into()));
        run_tern_in(&s.dir, Some(&w.edges.a.name), &a, Stdio::null())
    };

    // Without --tcp-established: refused before anything is sent.
    let out = migrate(&[]);
    assert!(
        !out.success() && out.stderr.contains("--tcp-established"),
        "{}",
        out.describe()
    );

    // A handoff that fails: the migration is called off, the service
    // resumes in A with its connection, B keeps nothing.
    let mut serve = start_serve_in(&s.dir, &w.edges.b, &to, &key, &["--once"]);
    let out = migrate(&["--tcp-established", "--handoff-cmd", "exit 3"]);
    assert!(!out.success(), "a failed handoff must fail the migration");
    assert!(
        out.stderr.contains("handoff command failed"),
        "{}",
        out.stderr
    );
    assert!(s.service.alive(), "the service must resume in A");
    let before = client_progress(&s.client_out).expect("progress").0;
    wait_requests(&s.client_out, before + 200);
    wait_no_tables(&w.edges.a);
    assert!(
        serve.wait_exit(Duration::from_secs(10)).is_some(),
        "serve --once must end"
    );
    wait_no_tables(&w.edges.b);

    // The real move.
    let _serve = start_serve_in(&s.dir, &w.edges.b, &to, &key, &["--once", "--log", "debug"]);
    let before = client_progress(&s.client_out).expect("progress").0;
    let out = migrate(&["--tcp-established", "--handoff-cmd", &w.handoff_cmd()]);
    out.assert_ok("migrate --tcp-established");
    let (report, _restored) = s.moved_to(&w.edges.b);
    let after = wait_requests(&s.client_out, before + 500);
    s.new_connection_works(&w.user, SERVICE_ADDR);
    wait_no_tables(&w.edges.a);
    wait_no_tables(&w.edges.b);
    let (n, _) = s.finish_client();
    assert!(n >= after.0);
    let maxwait = longest_wait_after(&s.client_out, before);
    let ms = |k: &str| report["breakdown_ms"][k].as_f64().unwrap_or(f64::NAN);
    eprintln!(
        "TCP migration: {n} requests over one connection; the user's longest wait {:.1} ms; tern's downtime {:.1} ms (final dump {:.1}, transfer {:.1}, restore {:.1}, handoff {:.1}, commit {:.1})",
        maxwait as f64 / 1e3,
        report["downtime_ms"].as_f64().unwrap_or(f64::NAN),
        ms("final_dump"),
        ms("transfer"),
        ms("restore"),
        ms("handoff"),
        ms("commit"),
    );
}

/// A half-closed connection (this end shut its writing side: FIN_WAIT2,
/// the other end CLOSE_WAIT) cannot be moved yet: the dump refuses it,
/// naming the state, and the program runs on untouched.
#[test]
fn half_closed_connection_is_refused() {
    let Some(w) = world_or_skip("half_closed_connection_is_refused") else {
        return;
    };
    let dir = TestDir::new("half_closed_connection_is_refused");
    let ns = &w.edges.a;
    let script = "import socket, sys, time\n\
        l = socket.socket(); l.bind(('127.0.0.1', 0)); l.listen(1)\n\
        c = socket.create_connection(l.getsockname()); a, _ = l.accept()\n\
        c.shutdown(socket.SHUT_WR)\n\
        print('ready', flush=True)\n\
        n = 0\n\
        while True:\n    n += 1; print('tick', n, flush=True); time.sleep(0.01)\n";
    let out = dir.join("py.out");
    let mut py = spawn_redirected(
        &ns.cmd("python3").arg("-c").arg(script),
        Stdio::null(),
        &out,
        &dir.join("py.err"),
    );
    wait_until(
        Duration::from_secs(10),
        "python to half-close its connection",
        || {
            complete_lines(&out)
                .iter()
                .any(|l| l.starts_with("tick 5"))
                .then_some(())
        },
        || tail(&dir.join("py.err"), 5),
    );
    let a = args![
        "dump",
        "--pid",
        py.pid().to_string(),
        "--images",
        dir.join("images"),
        "--tcp-established",
    ];
    let r = run_tern_in(&dir, Some(&ns.name), &a, Stdio::null());
    assert!(!r.success(), "a half-closed connection must be refused");
    assert!(
        r.stderr.contains("FIN_WAIT2") || r.stderr.contains("CLOSE_WAIT"),
        "the refusal must name the TCP state: {}",
        r.stderr
    );
    assert!(py.alive(), "the program must keep running");
    assert!(tern_tables(ns).is_empty(), "a refused dump left a lock");
    let ticks = complete_lines(&out).len();
    wait_until(
        Duration::from_secs(10),
        "more ticks",
        || (complete_lines(&out).len() > ticks + 10).then_some(()),
        || tail(&out, 3),
    );
}

/// nginx (a master and two workers) moves from A to B with a keep-alive
/// client in the user's namespace asking every 5 ms over one connection,
/// accepted by one worker (issue 15). Every process is copied live in
/// pre-copy rounds, the tree is frozen once for the last deltas, the
/// worker's connection moves with it (`--tcp-established`) and the
/// handoff moves the service address. The
/// client sees no failed request and never opens another connection; the
/// same worker answers, with its pid from before; the master in B still
/// has its two workers.
#[test]
fn nginx_with_a_keep_alive_client_moves_to_edge_b() {
    let test = "nginx_with_a_keep_alive_client_moves_to_edge_b";
    if !command_or_skip(test, "nginx", "nginx-light") {
        return;
    }
    let Some(w) = world_or_skip(test) else {
        return;
    };
    const PORT: u16 = 18090;
    let dir = TestDir::new(test);
    let mut master = start_nginx(
        &dir,
        &w.edges.a,
        PORT,
        "keepalive_requests 1000000; keepalive_timeout 300s;",
    );
    let pid = master.pid();
    let workers: std::collections::BTreeSet<i32> = children_of(pid).into_iter().collect();
    assert_eq!(workers.len(), 2, "{workers:?}");
    let (worker, report, longest_ms) =
        keep_alive_client_through_a_migration(&w, &dir, (pid, PORT, false), &[]);
    let worker: i32 = worker.parse().expect("a pid");
    assert!(master.wait_exit(Duration::from_secs(10)).is_some());
    let moved = report["restored_pid"].as_i64().expect("restored_pid") as i32;
    let mut guards = vec![ProcGuard::adopt(moved)];
    let moved_workers = children_of(moved);
    guards.extend(moved_workers.iter().map(|&p| ProcGuard::adopt(p)));
    assert_eq!(
        netns_of(moved),
        Some(w.edges.b.inode()),
        "nginx must run in B"
    );
    assert_eq!(moved_workers.len(), 2, "the master in B has its workers");
    assert!(
        workers.contains(&worker),
        "{worker} is not one of {workers:?}"
    );
    let rounds = report["rounds"].as_array().map_or(0, Vec::len);
    assert!(rounds >= 1, "no pre-copy round: {report}");
    eprintln!(
        "{test}: one connection to worker {worker}; the client's longest wait {longest_ms:.1} ms; tern's downtime {:.1} ms (3 processes, {rounds} rounds; {})",
        report["downtime_ms"].as_f64().unwrap_or(f64::NAN),
        report["breakdown_ms"]
    );
    wait_no_tables(&w.edges.a);
    wait_no_tables(&w.edges.b);
    for mut g in guards {
        g.kill_and_wait();
    }
}

/// Post-copy with a connection: the service moves to B with
/// `--policy postcopy`, so it runs there (its connection live again, the
/// user's route moved) while the pages it wrote last still arrive. The
/// user's client, checking every answer over one connection, sees no
/// error and no gap.
#[test]
fn post_copy_migration_keeps_the_users_tcp_connection() {
    let test = "post_copy_migration_keeps_the_users_tcp_connection";
    let Some(w) = world_or_skip(test) else {
        return;
    };
    let mut s = start_service(test, &w.edges.a, &w.user, SERVICE_ADDR);
    let pid = s.service.pid();
    let before = client_progress(&s.client_out).expect("progress").0;
    let _serve = w.migrate_to_b(&s.dir, pid, &["--policy", "postcopy"]);
    let (report, _restored) = s.moved_to(&w.edges.b);
    let pc = &report["post_copy"];
    let owed = pc["pages"].as_u64().unwrap_or(0);
    assert!(owed > 0, "nothing went by post-copy: {report}");
    assert_eq!(pc["pages_placed"].as_u64(), Some(owed), "{pc}");
    let after = wait_requests(&s.client_out, before + 500);
    s.new_connection_works(&w.user, SERVICE_ADDR);
    wait_no_tables(&w.edges.a);
    wait_no_tables(&w.edges.b);
    let (n, _) = s.finish_client();
    assert!(n >= after.0);
    eprintln!(
        "TCP + post-copy: {n} requests over one connection; the user's longest wait {:.1} ms; downtime {:.1} ms; {owed} pages owed, placed in {:.0} ms",
        longest_wait_after(&s.client_out, before) as f64 / 1e3,
        report["downtime_ms"].as_f64().unwrap_or(f64::NAN),
        pc["ms"].as_f64().unwrap_or(f64::NAN),
    );
}

/// A keep-alive client in the user's namespace asking `/pid` every 5 ms
/// over ONE connection to `SERVICE_ADDR:port` (served from A by `pid`),
/// through a migration A -> B with `--tcp-established` and the handoff
/// (`extra`: more `tern migrate` options); `memcached`: it counts with
/// memcached's `incr` instead. Checks that no request failed and that one
/// connection and one answering process were used throughout, once 400
/// more requests were answered from B. Returns the answer's body (the
/// answering pid over HTTP), the migration's report and the client's
/// longest wait in ms.
fn keep_alive_client_through_a_migration(
    w: &World,
    dir: &TestDir,
    (pid, port, memcached): (i32, u16, bool),
    extra: &[&str],
) -> (String, serde_json::Value, f64) {
    let out = dir.join("client.out");
    let mut client_cmd = w
        .user
        .cmd("python3")
        .arg(workloads_dir().join("keepalive_client.py"))
        .arg(SERVICE_ADDR)
        .arg(port.to_string())
        .arg(&out);
    if memcached {
        client_cmd = client_cmd.arg("5").arg("memcached");
    }
    let mut client = spawn_redirected(
        &client_cmd,
        Stdio::null(),
        &dir.join("client.stdout"),
        &dir.join("client.err"),
    );
    let requests = |n: usize| {
        wait_until(
            Duration::from_secs(30),
            &format!("{n} keep-alive requests answered"),
            || {
                let lines = complete_lines(&out);
                if let Some(f) = lines.iter().find(|l| l.starts_with("FAIL")) {
                    panic!("the client failed: {f}");
                }
                (lines.len() >= n).then_some(lines)
            },
            || format!("{}\n{}", tail(&out, 3), tail(&dir.join("client.err"), 5)),
        )
    };
    let before = requests(200);
    let _serve = w.migrate_to_b(dir, pid, extra);
    let report = migration_report(&dir.join("report.json"));
    let all = requests(before.len() + 400);
    client.kill_and_wait();
    let fields: Vec<Vec<&str>> = all.iter().map(|l| l.split(' ').collect()).collect();
    let ports: std::collections::BTreeSet<&str> = fields.iter().map(|f| f[3]).collect();
    let answered_by: std::collections::BTreeSet<&str> = fields.iter().map(|f| f[2]).collect();
    assert_eq!(
        ports.len(),
        1,
        "the client used more than one connection: {ports:?}"
    );
    assert_eq!(answered_by.len(), 1, "answered by {answered_by:?}");
    let numbers: Vec<u64> = fields.iter().map(|f| f[1].parse().expect("n")).collect();
    check_consecutive(&numbers, 1).unwrap_or_else(|e| panic!("requests: {e}"));
    let longest_us = fields
        .iter()
        .map(|f| f[4].parse::<u64>().unwrap_or(0))
        .max()
        .unwrap_or(0);
    let answered = answered_by.iter().next().expect("an answer").to_string();
    (answered, report, longest_us as f64 / 1e3)
}

/// The stock runtimes and servers of issue 15 (a Go, a Node.js and a Java
/// HTTP server; memcached, counting with `incr` over one connection: no
/// increment lost or repeated), live-migrated with a keep-alive client
/// that follows them: the downtime as the client saw it, next to tern's.
#[test]
fn runtimes_keep_a_keep_alive_client_through_live_migration() {
    let test = "runtimes_keep_a_keep_alive_client_through_live_migration";
    let Some(w) = world_or_skip(test) else {
        return;
    };
    const PORT: u16 = 18091;
    let mut seen = Vec::new();
    for runtime in ["go", "node", "java", "memcached"] {
        let dir = TestDir::new(&format!("{test}-{runtime}"));
        let mut server = match runtime {
            "memcached" if command_or_skip(test, "memcached", "memcached") => {
                start_memcached(&dir, &w.edges.a, PORT)
            }
            "go" => match go_server_or_skip(test, &dir) {
                Some(exe) => start_go_server(&dir, &w.edges.a, &exe, PORT),
                None => continue,
            },
            "node" if command_or_skip(test, "node", "nodejs") => {
                start_node_server(&dir, &w.edges.a, PORT)
            }
            "java" if command_or_skip(test, "java", "default-jre-headless") => {
                start_java_server(&dir, &w.edges.a, PORT)
            }
            _ => continue,
        };
        let pid = server.pid();
        let memcached = runtime == "memcached";
        let (answered, report, longest_ms) =
            keep_alive_client_through_a_migration(&w, &dir, (pid, PORT, memcached), &[]);
        assert!(
            wait_gone(pid, Duration::from_secs(5)),
            "{runtime} still runs in A"
        );
        server.disarm();
        let restored = report["restored_pid"].as_i64().expect("restored_pid") as i32;
        let mut moved = ProcGuard::adopt(restored);
        if !memcached {
            assert_eq!(
                answered,
                pid.to_string(),
                "{runtime}: /pid is the pid it had"
            );
        }
        let downtime = report["downtime_ms"].as_f64().unwrap_or(f64::NAN);
        eprintln!(
            "{test}: {runtime}: the client's longest wait {longest_ms:.1} ms; tern's downtime {downtime:.1} ms"
        );
        seen.push(format!("{runtime} {longest_ms:.1}/{downtime:.1}"));
        moved.kill_and_wait();
        wait_no_tables(&w.edges.a);
        wait_no_tables(&w.edges.b);
        w.hand_back();
    }
    eprintln!(
        "{test}: the client's longest wait / tern's downtime (ms): {}",
        seen.join(", ")
    );
}
