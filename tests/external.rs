//! Root-run tests of fds shared with a process outside the dump: a daemon
//! (`tests/workloads/logger.c`) whose log pipe on fd 3 its supervisor
//! (`tests/workloads/supervisor.py`) reads, as a service manager's would.
//!
//! - Without `--external`, `tern dump` and `tern migrate` refuse it, naming
//!   fd 3 and the supervisor's pid, and the daemon logs on untouched.
//! - Dumped with `--external fd[3]:log`, the image is refused by a restore
//!   that is not given a replacement (nothing is started), and restored
//!   with `--inherit-fd fd[5]:log` (fd 5: the supervisor's second pipe) it
//!   logs on into that pipe: the numbers the supervisor read from both
//!   pipes run on with no gap and no repeat.
//! - Live-migrated A -> B: to a `tern serve` not given the replacement the
//!   migration fails saying so and the daemon logs on in A; with `tern serve
//!   --inherit-fd` it logs on from B into the supervisor's second pipe.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use common::*;

const PORT: u16 = 7879;

/// The supervisor, its daemon, and where its output goes.
struct Supervised {
    // Field order is drop order: the daemon's copies before the supervisor.
    restored: Option<ProcGuard>,
    supervisor: ProcGuard,
    daemon: i32,
    /// The supervisor's fd of its second pipe's write end.
    second_fd: u64,
    out: PathBuf,
    exe: PathBuf,
    dir: TestDir,
}

impl Supervised {
    /// Start the supervisor (in `ns` if given); returns once the daemon
    /// has logged 5 lines.
    fn start(test: &str, ns: Option<&Netns>) -> Supervised {
        let dir = TestDir::new(test);
        let exe = compile_c(&dir, "logger");
        let script = workloads_dir().join("supervisor.py");
        let cmd = match ns {
            Some(n) => n.cmd("/usr/bin/python3"),
            None => Cmd::new("/usr/bin/python3"),
        }
        .arg("-I")
        .arg(&script)
        .arg(&exe);
        let out = dir.join("supervisor.out");
        let err = dir.join("supervisor.err");
        let supervisor = spawn_redirected(&cmd, Stdio::null(), &out, &err);
        let ready = wait_until(
            Duration::from_secs(20),
            "the supervisor to start its daemon",
            || {
                complete_lines(&out)
                    .into_iter()
                    .find(|l| l.starts_with("ready"))
            },
            || tail(&err, 20),
        );
        let (Some(daemon), Some(second_fd)) = (
            field_after(&ready, "daemon"),
            field_after(&ready, "second-fd"),
        ) else {
            panic!("unexpected first line {ready:?}");
        };
        let s = Supervised {
            restored: None,
            supervisor,
            daemon: daemon as i32,
            second_fd,
            out,
            exe,
            dir,
        };
        s.wait_logged(5);
        s
    }

    /// The numbers logged, as the supervisor read them: first pipe, then second.
    fn logged(&self) -> (Vec<u64>, Vec<u64>) {
        let lines = complete_lines(&self.out);
        let numbers = |pipe: &str| -> Vec<u64> {
            let prefix = format!("{pipe}: log ");
            lines
                .iter()
                .filter_map(|l| l.strip_prefix(&prefix)?.parse().ok())
                .collect()
        };
        (numbers("first"), numbers("second"))
    }

    /// Waits until `n` lines were logged in all, checking they run on.
    fn wait_logged(&self, n: usize) -> Vec<u64> {
        let all = wait_until(
            Duration::from_secs(30),
            &format!("{n} lines logged"),
            || {
                let (first, second) = self.logged();
                let all: Vec<u64> = first.into_iter().chain(second).collect();
                (all.len() >= n).then_some(all)
            },
            || tail(&self.out, 10),
        );
        check_consecutive(&all, 1).unwrap_or_else(|e| panic!("the log does not run on: {e}"));
        all
    }

    fn saw(&self, line: &str) -> bool {
        complete_lines(&self.out).iter().any(|l| l == line)
    }

    /// The daemon's fd 3 must be the supervisor's second pipe.
    fn assert_logs_to_second_pipe(&self, pid: i32) {
        let supervisor = self.supervisor.pid();
        let second = std::fs::read_link(format!("/proc/{supervisor}/fd/{}", self.second_fd))
            .expect("the supervisor's second pipe");
        let fds = fd_targets(pid);
        assert_eq!(
            fds.get(&3).map(String::as_str),
            second.to_str(),
            "the restored daemon's fd 3 is not the supervisor's second pipe: {fds:?}"
        );
        assert_eq!(
            fds.keys().copied().collect::<Vec<_>>(),
            vec![0, 1, 2, 3],
            "the restored daemon must hold exactly its own fds (none of tern's): {fds:?}"
        );
    }

    /// Lines logged so far, then that many more must follow, in the second
    /// pipe, with the whole log running on from 1.
    fn assert_goes_on_in_second_pipe(&self) {
        let before = self.wait_logged(1).len();
        self.wait_logged(before + 40);
        let (first, second) = self.logged();
        assert!(
            !second.is_empty() && self.saw("first: EOF"),
            "the log must have moved to the second pipe: {} lines in the first, {} in the second",
            first.len(),
            second.len()
        );
    }

    /// A tern run through a shell that first opens the supervisor's second
    /// pipe as fd 5.
    fn with_second_pipe_on_fd5(&self) -> Vec<String> {
        vec![
            "bash".to_string(),
            "-c".to_string(),
            format!(
                "exec \"$0\" \"$@\" 5>/proc/{}/fd/{}",
                self.supervisor.pid(),
                self.second_fd
            ),
        ]
    }

    /// The refusal of a program holding the supervisor's pipe, then the
    /// daemon must be untouched and log on.
    fn assert_refused_naming_the_supervisor(&self, out: &TernOutput) {
        assert!(!out.success(), "must be refused: {}", out.describe());
        let holder = format!("process {} (its fd", self.supervisor.pid());
        assert!(
            out.stderr.contains("fd 3 (pipe:[") && out.stderr.contains(&holder),
            "the refusal must name fd 3 and the supervisor ({holder}): {}",
            out.stderr
        );
        assert!(pid_alive(self.daemon), "the refused daemon died");
        assert_eq!(
            status_field(self.daemon, "TracerPid").as_deref(),
            Some("0"),
            "the refused daemon is left traced"
        );
        let n = self.wait_logged(1).len();
        self.wait_logged(n + 20);
    }
}

#[test]
fn dump_refuses_a_pipe_to_the_supervisor_then_restores_it_with_inherit_fd() {
    const TEST: &str = "dump_refuses_a_pipe_to_the_supervisor_then_restores_it_with_inherit_fd";
    if !root_or_skip(TEST) {
        return;
    }
    let mut s = Supervised::start(TEST, None);
    let images = s.dir.join("images");
    let pid = s.daemon.to_string();

    let dump = |extra: &[&str]| {
        let mut a = args!["dump", "-t", &pid, "-D", &images];
        a.extend(extra.iter().map(|e| (*e).into()));
        run_tern(&s.dir, &a, Stdio::null())
    };
    let refused = dump(&[]);
    s.assert_refused_naming_the_supervisor(&refused);

    dump(&["--external", "fd[3]:log"]).assert_ok("dump with --external fd[3]:log");
    wait_until(
        Duration::from_secs(10),
        "the supervisor to see its daemon end",
        || (s.saw("first: EOF") && s.saw("first: exited -9")).then_some(()),
        || tail(&s.out, 10),
    );
    let inspect = tern_inspect(&s.dir, &images, false);
    inspect.assert_ok("inspect");
    assert!(
        inspect.stdout.contains("--inherit-fd fd[N]:log"),
        "inspect must show fd 3 as external: {}",
        inspect.stdout
    );

    let pidfile = s.dir.join("restored.pid");
    let restore = |via: &[String], extra: &[&str]| {
        let mut a = args!["restore", "-D", &images, "--pidfile", &pidfile];
        a.extend(extra.iter().map(|e| (*e).into()));
        run_tern_via(
            &s.dir,
            None,
            via,
            &a,
            Stdio::null(),
            Duration::from_secs(60),
        )
    };
    assert_asks_for_the_replacement(&restore(&[], &[]), "restore");
    assert_eq!(
        live_pids_with_exe(&s.exe),
        Vec::<i32>::new(),
        "a refused restore left a daemon"
    );

    restore(&s.with_second_pipe_on_fd5(), &["--inherit-fd", "fd[5]:log"])
        .assert_ok("restore with --inherit-fd fd[5]:log");
    let restored = read_pid(&pidfile);
    s.restored = Some(ProcGuard::adopt(restored));
    s.assert_logs_to_second_pipe(restored);
    s.assert_goes_on_in_second_pipe();
}

#[test]
fn migrate_refuses_a_pipe_to_the_supervisor_then_moves_it_with_inherit_fd() {
    const TEST: &str = "migrate_refuses_a_pipe_to_the_supervisor_then_moves_it_with_inherit_fd";
    let Some(edges) = edges_or_skip(TEST) else {
        return;
    };
    let mut s = Supervised::start(TEST, Some(&edges.a));
    let key = keygen(&s.dir, "tern.key");
    let migrate = |extra: &[&str]| {
        let mut a = args![
            "migrate",
            "--pid",
            s.daemon.to_string(),
            "--to",
            format!("{EDGE_B_ADDR}:{PORT}"),
            "--key",
            &key,
        ];
        a.extend(extra.iter().map(|e| (*e).into()));
        run_tern_in(&s.dir, Some(&edges.a.name), &a, Stdio::null())
    };
    // Refused before connecting: no destination is needed to learn it.
    s.assert_refused_naming_the_supervisor(&migrate(&[]));

    // A destination not given the replacement refuses at the end; the
    // program runs on here, logging into its first pipe.
    let mut bare = start_serve_via(
        &s.dir,
        &edges.b,
        &format!("{EDGE_B_ADDR}:{PORT}"),
        &key,
        &["--once"],
        &[],
    );
    assert_asks_for_the_replacement(&migrate(&["--external", "fd[3]:log"]), "migration");
    bare.wait_exit(Duration::from_secs(10));
    drop(bare);
    assert!(pid_alive(s.daemon), "a failed migration ended the daemon");
    let n = s.wait_logged(1).len();
    s.wait_logged(n + 20);
    assert!(s.logged().1.is_empty() && !s.saw("first: EOF"));

    let mut serve = start_serve_via(
        &s.dir,
        &edges.b,
        &format!("{EDGE_B_ADDR}:{PORT}"),
        &key,
        &["--once", "--inherit-fd", "fd[5]:log"],
        &s.with_second_pipe_on_fd5(),
    );
    migrate(&["--external", "fd[3]:log"]).assert_ok("migrate with --external fd[3]:log");
    let moved = wait_until(
        Duration::from_secs(10),
        "exactly one daemon, in B",
        || match live_pids_with_exe(&s.exe).as_slice() {
            [p] if *p != s.daemon => Some(*p),
            _ => None,
        },
        || format!("{:?}", live_pids_with_exe(&s.exe)),
    );
    s.restored = Some(ProcGuard::adopt(moved));
    assert_eq!(
        netns_of(moved),
        Some(edges.b.inode()),
        "the daemon must run in B's network namespace"
    );
    s.assert_logs_to_second_pipe(moved);
    s.assert_goes_on_in_second_pipe();
    assert!(
        s.saw("first: exited -9"),
        "the supervisor must have reaped the source copy"
    );
    serve.wait_exit(Duration::from_secs(10));
}

/// `what` (a restore, a migration) of an image with fd 3 named "log" but
/// no replacement for it must fail saying so.
fn assert_asks_for_the_replacement(out: &TernOutput, what: &str) {
    assert!(
        !out.success(),
        "the {what} succeeded without a replacement for fd 3"
    );
    assert!(
        out.stderr.contains("fd 3") && out.stderr.contains("--inherit-fd fd[N]:log"),
        "the {what}'s refusal must name fd 3 and how to replace it: {}",
        out.stderr
    );
}

fn read_pid(path: &Path) -> i32 {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or_else(|| panic!("no pid in {}", path.display()))
}
