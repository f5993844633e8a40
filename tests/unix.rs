//! Root-run tests of unix sockets with names (issue 15, item 2), with
//! `tests/workloads/unix_service.c`: a stream listener at a path (socket
//! file mode 0666), a non-blocking stream listener at an abstract name and
//! a datagram socket at a path. Clients are this test, through the names
//! only: each connection is answered "served K", K counting every
//! connection the program ever served.
//!
//! - dump and restore: the same names answer, K goes on, datagrams still
//!   arrive, the socket file keeps its mode, O_NONBLOCK stays where it was;
//! - a listener with a connection waiting to be accepted is refused, naming
//!   it, and the program serves on;
//! - live migration A -> B: to a destination that dies with the program
//!   rebuilt, it fails and both names still answer from A; then the path
//!   and the abstract name (in B's network namespace now) answer from B, K
//!   going on; the program is gone from A.

mod common;

use std::io::{Read, Write};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{SocketAddr, UnixDatagram, UnixStream};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use common::*;

const PORT: u16 = 7880;

/// The names one service is started with.
struct Names {
    path: PathBuf,
    abstract_name: String,
    dgram: PathBuf,
    lazy: PathBuf,
}

impl Names {
    fn in_dir(dir: &TestDir, tag: &str) -> Names {
        Names {
            path: dir.join("service.sock"),
            abstract_name: format!("tern-test-{}-{tag}", std::process::id()),
            dgram: dir.join("dgram.sock"),
            lazy: dir.join("lazy.sock"),
        }
    }

    fn command(&self, cmd: Cmd, lazy: bool) -> Cmd {
        let cmd = cmd
            .arg(&self.path)
            .arg(&self.abstract_name)
            .arg(&self.dgram);
        if lazy {
            cmd.arg(&self.lazy)
        } else {
            cmd
        }
    }
}

/// One request on a fresh connection: the number it was served as.
fn ask(mut conn: UnixStream) -> u64 {
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("read timeout");
    conn.write_all(b"hello\n").expect("send the request");
    let mut reply = String::new();
    conn.read_to_string(&mut reply).expect("read the answer");
    seq_number(reply.trim(), "served ").unwrap_or_else(|| panic!("unexpected answer {reply:?}"))
}

fn ask_path(path: &Path) -> u64 {
    ask(UnixStream::connect(path).unwrap_or_else(|e| panic!("connect to {}: {e}", path.display())))
}

/// Abstract names live in a network namespace: this thread's (the test's).
fn ask_abstract(name: &str) -> u64 {
    let addr = SocketAddr::from_abstract_name(name.as_bytes()).expect("abstract address");
    ask(UnixStream::connect_addr(&addr).unwrap_or_else(|e| panic!("connect to @{name}: {e}")))
}

/// [`ask_abstract`] from inside network namespace `ns`.
fn ask_abstract_in(ns: &Netns, name: &str) -> u64 {
    in_netns(ns, || Ok(ask_abstract(name)))
        .unwrap_or_else(|e| panic!("@{name} in {}: {e}", ns.name))
}

fn send_datagram(path: &Path) {
    let d = UnixDatagram::unbound().expect("datagram socket");
    d.send_to(b"x", path)
        .unwrap_or_else(|e| panic!("send to {}: {e}", path.display()));
}

/// The datagram count of the program's last line.
fn datagrams_seen(lines: &[String]) -> u64 {
    lines
        .iter()
        .rev()
        .find_map(|l| field_after(l, "datagrams"))
        .unwrap_or(0)
}

fn file_mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o7777
}

#[test]
fn unix_listeners_and_named_datagram_socket_survive() {
    const TEST: &str = "unix_listeners_and_named_datagram_socket_survive";
    if !root_or_skip(TEST) {
        return;
    }
    let dir = TestDir::new(TEST);
    let exe = compile_c(&dir, "unix_service");
    let names = Names::in_dir(&dir, "dump");
    let cmd = names.command(Cmd::new(&exe), false);
    let mut s = Session::start(dir, cmd, Stdio::null());
    s.wait_seq(5);
    assert_eq!(ask_path(&names.path), 1);
    assert_eq!(ask_abstract(&names.abstract_name), 2);
    send_datagram(&names.dgram);
    s.wait_for_line("one datagram", |l| field_after(l, "datagrams") == Some(1));
    assert_eq!(file_mode(&names.path), 0o666);

    s.dump();
    let out = tern_inspect(&s.dir, &s.images, false);
    out.assert_ok("tern inspect");
    assert!(
        out.stdout.contains("listening, backlog 16")
            && out.stdout.contains(&format!("@{}", names.abstract_name)),
        "inspect must show the listeners\n{}",
        out.stdout
    );
    s.restore(Stdio::null());
    assert_eq!(
        ask_path(&names.path),
        3,
        "the path listener goes on counting"
    );
    assert_eq!(ask_abstract(&names.abstract_name), 4);
    send_datagram(&names.dgram);
    s.wait_for_line("a second datagram", |l| {
        field_after(l, "datagrams") == Some(2)
    });
    assert_eq!(datagrams_seen(&s.lines()), 2);
    assert_eq!(file_mode(&names.path), 0o666, "the socket file's mode");
    let nonblock = |fd| fdinfo(s.pid, fd).map(|(_, f)| f & libc::O_NONBLOCK as u32 != 0);
    assert_eq!(
        (nonblock(3), nonblock(4), nonblock(5)),
        (Some(false), Some(true), Some(false)),
        "O_NONBLOCK on the abstract listener only"
    );
    s.wait_seq(s.last_before + 20);
    s.finish();
}

#[test]
fn unix_listener_with_a_connection_waiting_is_refused() {
    const TEST: &str = "unix_listener_with_a_connection_waiting_is_refused";
    if !root_or_skip(TEST) {
        return;
    }
    let dir = TestDir::new(TEST);
    let exe = compile_c(&dir, "unix_service");
    let names = Names::in_dir(&dir, "lazy");
    let cmd = names.command(Cmd::new(&exe), true);
    let mut s = Session::start(dir, cmd, Stdio::null());
    s.wait_seq(5);
    let waiting = UnixStream::connect(&names.lazy).expect("connect to the lazy listener");
    let images = s.images.clone();
    let dump = args!["dump", "-t", s.pid.to_string(), "-D", &images];
    let out = run_tern(&s.dir, &dump, Stdio::null());
    assert!(!out.success(), "dumped with a connection waiting");
    assert!(
        out.stderr.contains("lazy.sock") && out.stderr.contains("waiting to be accepted"),
        "the refusal must name the listener and why: {}",
        out.stderr
    );
    assert_eq!(status_field(s.pid, "TracerPid").as_deref(), Some("0"));
    let n = s.wait_seq(1);
    s.wait_seq(n + 20);
    assert_eq!(ask_path(&names.path), 1, "it serves on");
    drop(waiting);
}

#[test]
fn unix_listeners_migrate_live() {
    const TEST: &str = "unix_listeners_migrate_live";
    let Some(edges) = edges_or_skip(TEST) else {
        return;
    };
    let dir = TestDir::new(TEST);
    let exe = compile_c(&dir, "unix_service");
    let names = Names::in_dir(&dir, "migrate");
    let out = dir.join("program.out");
    let mut program = spawn_redirected(
        &names.command(edges.a.cmd(&exe), false),
        Stdio::null(),
        &out,
        &dir.join("program.err"),
    );
    let key = keygen(&dir, "tern.key");
    wait_until(
        Duration::from_secs(20),
        "the service to tick",
        || complete_lines(&out).len().checked_sub(5),
        || tail(&out, 5),
    );
    assert_eq!(ask_path(&names.path), 1);
    assert_eq!(ask_abstract_in(&edges.a, &names.abstract_name), 2);
    let report = dir.join("report.json");
    let migrate_args = args![
        "migrate",
        "--pid",
        program.pid().to_string(),
        "--to",
        format!("{EDGE_B_ADDR}:{PORT}"),
        "--key",
        &key,
        "--report",
        &report
    ];
    let migrate = || run_tern_in(&dir, Some(&edges.a.name), &migrate_args, Stdio::null());

    // A destination that dies with the program rebuilt (its sockets
    // made): the paths are still the source's, which serves on.
    let mut dying = start_serve_with_fault(
        &dir,
        &edges.b,
        &format!("{EDGE_B_ADDR}:{PORT}"),
        &key,
        &["--once"],
        Some("exit-on-ready"),
    );
    assert!(!migrate().success(), "migrated to a dying destination");
    dying.wait_exit(Duration::from_secs(10));
    drop(dying);
    assert_eq!(ask_path(&names.path), 3, "the source still serves its path");
    assert_eq!(ask_abstract_in(&edges.a, &names.abstract_name), 4);

    let mut serve = start_serve_in(
        &dir,
        &edges.b,
        &format!("{EDGE_B_ADDR}:{PORT}"),
        &key,
        &["--once"],
    );
    migrate().assert_ok("tern migrate");
    let rep: serde_json::Value =
        serde_json::from_slice(&read_bytes(&report)).expect("the migration report");
    let moved = rep["restored_pid"].as_i64().expect("restored_pid") as i32;
    let mut moved_guard = ProcGuard::adopt(moved);
    assert!(
        program.wait_exit(Duration::from_secs(10)).is_some(),
        "the copy in A must end"
    );
    assert_eq!(netns_of(moved), Some(edges.b.inode()));
    assert_eq!(ask_path(&names.path), 5, "the path answers from B");
    assert_eq!(ask_abstract_in(&edges.b, &names.abstract_name), 6);
    send_datagram(&names.dgram);
    wait_until(
        Duration::from_secs(10),
        "the datagram counted in B",
        || (datagrams_seen(&complete_lines(&out)) == 1).then_some(()),
        || tail(&out, 3),
    );
    let ticks: Vec<u64> = complete_lines(&out)
        .iter()
        .filter_map(|l| seq_number(l, "tick "))
        .collect();
    check_consecutive(&ticks, 1).unwrap_or_else(|e| panic!("output: {e}"));
    assert_eq!(file_mode(&names.path), 0o666);
    serve.wait_exit(Duration::from_secs(10));
    moved_guard.kill_and_wait();
}
