//! Helpers for tern's root-run integration tests: temporary directories,
//! workloads compiled at test time, running `tern`, watching processes by pid
//! and reading their state from /proc, and guards that kill whatever a test
//! started even when it panics.
//!
//! Processes are only ever signalled by pid, never looked up by name.

#![allow(dead_code)] // not every test crate uses every helper

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::fmt::Write as _;
use std::fs::{self, File};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The tern binary under test: this workspace's build, or the program named
/// by `TERN_BIN` (e.g. to run these tests against a release build).
pub fn tern_bin() -> PathBuf {
    std::env::var_os("TERN_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_tern")))
}

/// How long to wait for a workload to make progress.
pub const WAIT: Duration = Duration::from_secs(10);

/// How long a single `tern` command may take before the test gives up on it.
pub const TERN_TIMEOUT: Duration = Duration::from_secs(30);

/// Poll interval for all waits.
const POLL: Duration = Duration::from_millis(5);

// ---------------------------------------------------------------------------
// Preconditions

/// Returns true when the test can run (we are root). Otherwise prints
/// `SKIP: <reason>` and returns false, except when `CI` or
/// `TERN_REQUIRE_ROOT` is set: there a skipped test would hide a failure, so
/// it panics instead.
pub fn root_or_skip(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    if euid == 0 {
        return true;
    }
    let reason = format!(
        "{test}: needs root (euid is {euid}): tern ptraces its target and restores it under its original pid"
    );
    if std::env::var_os("CI").is_some() || std::env::var_os("TERN_REQUIRE_ROOT").is_some() {
        panic!("{reason}; CI/TERN_REQUIRE_ROOT is set, so this test may not be skipped");
    }
    eprintln!("SKIP: {reason}");
    false
}

/// Whether the test can run: as root, with the program `bin` on PATH (from
/// Debian's `package`); otherwise says why, as [`skip_or_panic`] does.
pub fn command_or_skip(test: &str, bin: &str, package: &str) -> bool {
    if !root_or_skip(test) {
        return false;
    }
    let found = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {bin}"))
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        skip_or_panic(
            test,
            &format!("{bin} is not installed (Debian package {package})"),
        );
    }
    found
}

/// For an optional environment feature a test needs: prints `SKIP: <reason>`
/// (or panics under `CI`/`TERN_REQUIRE_ROOT`, where everything must run).
pub fn skip_or_panic(test: &str, reason: &str) {
    if std::env::var_os("CI").is_some() || std::env::var_os("TERN_REQUIRE_ROOT").is_some() {
        panic!("{test}: {reason}; CI/TERN_REQUIRE_ROOT is set, so this test may not be skipped");
    }
    eprintln!("SKIP: {test}: {reason}");
}

// ---------------------------------------------------------------------------
// Temporary directories

/// A fresh directory under `std::env::temp_dir()`, unique per test and per
/// call. Removed on drop, except when the test is panicking (or
/// `TERN_KEEP_TEST_DIRS` is set): then it is kept and its path printed so the
/// images and outputs can be inspected.
pub struct TestDir {
    path: PathBuf,
}

impl TestDir {
    pub fn new(name: &str) -> TestDir {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let path = std::env::temp_dir().join(format!(
            "tern-it-{name}-{}-{}-{nanos}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir_all(&path)
            .unwrap_or_else(|e| panic!("cannot create test dir {}: {e}", path.display()));
        TestDir { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn join(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.path.join(rel)
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        if thread::panicking() || std::env::var_os("TERN_KEEP_TEST_DIRS").is_some() {
            eprintln!("test files kept in {}", self.path.display());
        } else {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

/// A small tmpfs mounted for one test (e.g. to make a dump run out of
/// space); unmounted (lazily) on drop.
pub struct TmpfsMount {
    path: PathBuf,
}

impl TmpfsMount {
    pub fn new(path: &Path, size: &str) -> Result<TmpfsMount, String> {
        fs::create_dir_all(path).map_err(|e| format!("mkdir {}: {e}", path.display()))?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o"])
            .arg(format!("size={size},mode=0755"))
            .arg("tmpfs")
            .arg(path)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "cannot mount a tmpfs on {}: {}",
                path.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(TmpfsMount {
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// A memory cgroup of the test's own with a hard limit (cgroup v2 if the
/// memory controller is there, else v1); removed on drop (its processes
/// must be gone by then: the test kills what it started).
pub struct MemCgroup {
    dir: PathBuf,
}

impl MemCgroup {
    pub fn new(tag: &str, limit_bytes: u64) -> Result<MemCgroup, String> {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let name = format!(
            "tern-test-{}-{}-{tag}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let v2 = Path::new("/sys/fs/cgroup");
        let v2_has_memory = fs::read_to_string(v2.join("cgroup.subtree_control"))
            .is_ok_and(|c| c.split_whitespace().any(|w| w == "memory"));
        let (dir, limit_file) = if v2_has_memory {
            (v2.join(&name), "memory.max")
        } else if Path::new("/sys/fs/cgroup/memory/memory.limit_in_bytes").exists() {
            (
                Path::new("/sys/fs/cgroup/memory").join(&name),
                "memory.limit_in_bytes",
            )
        } else {
            return Err(
                "no memory cgroup controller (neither cgroup v2 with memory enabled nor v1 /sys/fs/cgroup/memory)".into(),
            );
        };
        fs::create_dir(&dir).map_err(|e| format!("mkdir {}: {e}", dir.display()))?;
        let cg = MemCgroup { dir };
        fs::write(cg.dir.join(limit_file), limit_bytes.to_string())
            .map_err(|e| format!("set {limit_file}: {e}"))?;
        if v2_has_memory {
            let _ = fs::write(cg.dir.join("memory.swap.max"), "0");
        }
        Ok(cg)
    }

    /// Move process `pid` into it (its later children start there).
    pub fn add(&self, pid: i32) -> Result<(), String> {
        fs::write(self.dir.join("cgroup.procs"), pid.to_string())
            .map_err(|e| format!("move {pid} into {}: {e}", self.dir.display()))
    }
}

impl Drop for MemCgroup {
    fn drop(&mut self) {
        // rmdir succeeds once the last process has gone (reaping can lag).
        for _ in 0..100 {
            if fs::remove_dir(&self.dir).is_ok() {
                return;
            }
            thread::sleep(Duration::from_millis(50));
        }
        eprintln!("note: could not remove cgroup {}", self.dir.display());
    }
}

/// A cgroup of one name in several cgroup v1 hierarchies
/// (`/sys/fs/cgroup/<controller>/<name>`), with directories below it made
/// on demand; every directory left is removed when dropped.
pub struct CgroupSet {
    pub name: String,
    made: Vec<PathBuf>,
}

impl CgroupSet {
    /// The cgroup in each of `controllers`' v1 hierarchies; an error
    /// naming the first one this machine has not mounted.
    pub fn v1(tag: &str, controllers: &[&str]) -> Result<CgroupSet, String> {
        let name = format!("tern-test-{}-{tag}", std::process::id());
        let mut set = CgroupSet {
            name,
            made: Vec::new(),
        };
        for c in controllers {
            let root = Path::new("/sys/fs/cgroup").join(c);
            if !root.join("cgroup.procs").exists() {
                return Err(format!("no cgroup v1 {c} hierarchy at {}", root.display()));
            }
            set.make(c, "")?;
        }
        Ok(set)
    }

    /// The directory `sub` (relative, "" for the set's own) in hierarchy
    /// `controller`.
    pub fn dir(&self, controller: &str, sub: &str) -> PathBuf {
        let d = Path::new("/sys/fs/cgroup")
            .join(controller)
            .join(&self.name);
        if sub.is_empty() {
            d
        } else {
            d.join(sub)
        }
    }

    /// Make directory `sub` in hierarchy `controller`.
    pub fn make(&mut self, controller: &str, sub: &str) -> Result<(), String> {
        let d = self.dir(controller, sub);
        fs::create_dir(&d).map_err(|e| format!("mkdir {}: {e}", d.display()))?;
        self.made.push(d);
        Ok(())
    }

    pub fn write(&self, controller: &str, sub: &str, file: &str, value: &str) {
        let path = self.dir(controller, sub).join(file);
        fs::write(&path, value)
            .unwrap_or_else(|e| panic!("write {value} to {}: {e}", path.display()));
    }

    pub fn read(&self, controller: &str, sub: &str, file: &str) -> String {
        let path = self.dir(controller, sub).join(file);
        fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
            .trim()
            .to_string()
    }

    /// Move process `pid` into directory `sub` of hierarchy `controller`.
    pub fn add(&self, controller: &str, sub: &str, pid: i32) {
        self.write(controller, sub, "cgroup.procs", &pid.to_string());
    }

    /// Remove every directory (deepest first) now; false if one stays
    /// (a process still in it).
    pub fn remove_all(&self) -> bool {
        let mut all_gone = true;
        for d in self.made.iter().rev() {
            let mut gone = !d.exists();
            for _ in 0..100 {
                if gone {
                    break;
                }
                gone = fs::remove_dir(d).is_ok() || !d.exists();
                if !gone {
                    thread::sleep(Duration::from_millis(20));
                }
            }
            all_gone &= gone;
        }
        all_gone
    }
}

impl Drop for CgroupSet {
    fn drop(&mut self) {
        if !self.remove_all() {
            eprintln!("note: could not remove every cgroup named {}", self.name);
        }
    }
}

/// Process `pid`'s cgroup in the hierarchy whose controllers are
/// `controllers` (as `/proc/PID/cgroup` lists them).
pub fn cgroup_of(pid: i32, controllers: &str) -> Option<String> {
    fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .ok()?
        .lines()
        .find_map(|l| {
            let mut parts = l.splitn(3, ':');
            let (_, c, path) = (parts.next()?, parts.next()?, parts.next()?);
            (c == controllers).then(|| path.to_string())
        })
}

impl Drop for TmpfsMount {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(&self.path)
            .stdin(Stdio::null())
            .output();
    }
}

// ---------------------------------------------------------------------------
// Workloads

/// `tests/workloads` in this repository.
pub fn workloads_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("workloads")
}

/// Compiles `tests/workloads/<name>.c` into `<dir>/<name>` with
/// `cc -O1 -Wall` and returns the executable's path.
pub fn compile_c(dir: &TestDir, name: &str) -> PathBuf {
    compile_c_with(dir, name, &[])
}

/// Like [`compile_c`], with extra compiler arguments (e.g. `-DBUF_MIB=256`).
pub fn compile_c_with(dir: &TestDir, name: &str, cflags: &[&str]) -> PathBuf {
    let src = workloads_dir().join(format!("{name}.c"));
    let exe = dir.join(name);
    let output = Command::new("cc")
        .arg("-O1")
        .arg("-Wall")
        .args(cflags)
        .arg("-o")
        .arg(&exe)
        .arg(&src)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run cc for {}: {e}", src.display()));
    assert!(
        output.status.success(),
        "cc -O1 -Wall -o {} {} failed ({}):\n{}{}",
        exe.display(),
        src.display(),
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    exe
}

/// The `rust_counter` example of this workspace. `cargo test` builds it into
/// `target/<profile>/examples/` next to the `deps/` directory holding this
/// test binary. When it is missing (e.g. `cargo test --test dump_restore`
/// builds no examples) it is compiled here with `rustc` into `dir`.
pub fn rust_counter_exe(dir: &TestDir) -> PathBuf {
    let me = std::env::current_exe().expect("current_exe");
    let profile_dir = me
        .parent()
        .and_then(Path::parent)
        .expect("test binary lives in target/<profile>/deps");
    let built = profile_dir.join("examples").join("rust_counter");
    if built.is_file() {
        return built;
    }
    let src = workloads_dir().join("rust_counter.rs");
    let exe = dir.join("rust_counter");
    eprintln!(
        "note: {} not built (run plain `cargo test` to build examples); compiling {} with rustc",
        built.display(),
        src.display()
    );
    let output = Command::new("rustc")
        .args(["--edition", "2021", "-O", "-o"])
        .arg(&exe)
        .arg(&src)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run rustc: {e}"));
    assert!(
        output.status.success(),
        "rustc failed for {}:\n{}",
        src.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    exe
}

/// A program plus its arguments (argv[0] is the program path as given).
#[derive(Clone, Debug)]
pub struct Cmd {
    pub program: PathBuf,
    pub args: Vec<OsString>,
}

impl Cmd {
    pub fn new(program: impl Into<PathBuf>) -> Cmd {
        Cmd {
            program: program.into(),
            args: Vec::new(),
        }
    }

    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Cmd {
        self.args.push(arg.as_ref().to_owned());
        self
    }

    /// The NUL-separated argv as /proc/PID/cmdline shows it.
    pub fn cmdline(&self) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(self.program.as_os_str().as_bytes());
        v.push(0);
        for a in &self.args {
            v.extend_from_slice(a.as_bytes());
            v.push(0);
        }
        v
    }
}

/// Spawns `cmd` with stdin from `stdin` and stdout/stderr redirected to the
/// (truncated) files `out` and `err`. The process is killed on drop of the
/// returned guard.
pub fn spawn_redirected(cmd: &Cmd, stdin: Stdio, out: &Path, err: &Path) -> ProcGuard {
    let stdout = File::create(out).unwrap_or_else(|e| panic!("create {}: {e}", out.display()));
    let stderr = File::create(err).unwrap_or_else(|e| panic!("create {}: {e}", err.display()));
    let mut command = Command::new(&cmd.program);
    command
        .args(&cmd.args)
        .stdin(stdin)
        .stdout(stdout)
        .stderr(stderr);
    only_stdio(&mut command);
    let child = command
        .spawn()
        .unwrap_or_else(|e| panic!("cannot spawn {}: {e}", cmd.program.display()));
    ProcGuard::child(child)
}

/// The program `command` starts gets fds 0-2 only: whatever the test
/// runner inherited (a CI pipe, a job-control fd) is not part of the
/// program under test.
pub fn only_stdio(command: &mut Command) {
    // SAFETY: the closure runs between fork and exec and only makes the
    // async-signal-safe close_range syscall.
    unsafe {
        command.pre_exec(|| {
            libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
            Ok(())
        });
    }
}

/// Creates a pipe (both ends close-on-exec in this process). Returns
/// `(read end, write end)`.
pub fn pipe() -> (OwnedFd, File) {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: fds is a valid, writable array of two c_ints as pipe2 requires.
    let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    assert_eq!(rc, 0, "pipe2: {}", std::io::Error::last_os_error());
    // SAFETY: pipe2 succeeded, so both descriptors are open and owned by
    // nobody else; each is wrapped exactly once.
    let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) };
    (r, w)
}

/// The inode number of a pipe or file, as `/proc/PID/fd` links show it.
pub fn inode_of(file: &File) -> u64 {
    file.metadata().expect("fstat").ino()
}

// ---------------------------------------------------------------------------
// Process guards and pid helpers

/// Owns a process the test started, by pid. Dropping it kills the process
/// with SIGKILL (and reaps it when it is our child), unless it has been
/// disarmed because the test already knows it is gone.
pub struct ProcGuard {
    pid: i32,
    child: Option<Child>,
    armed: bool,
}

impl ProcGuard {
    /// Guards a child of this test.
    pub fn child(child: Child) -> ProcGuard {
        let pid = i32::try_from(child.id()).expect("pid fits in i32");
        ProcGuard {
            pid,
            child: Some(child),
            armed: true,
        }
    }

    /// Guards a process that is not our child (e.g. a restored one).
    pub fn adopt(pid: i32) -> ProcGuard {
        ProcGuard {
            pid,
            child: None,
            armed: true,
        }
    }

    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// The child, if this guards one of ours.
    pub fn child_mut(&mut self) -> Option<&mut Child> {
        self.child.as_mut()
    }

    pub fn is_child(&self) -> bool {
        self.child.is_some()
    }

    /// Takes the child's stdin pipe, if it was spawned with one.
    pub fn take_stdin(&mut self) -> Option<std::process::ChildStdin> {
        self.child.as_mut().and_then(|c| c.stdin.take())
    }

    /// For a child: its exit status if it has exited (reaping it).
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        let child = self.child.as_mut().expect("try_wait on a non-child");
        let status = child.try_wait().expect("try_wait")?;
        self.child = None;
        self.armed = false;
        Some(status)
    }

    /// For a child: waits up to `timeout` for it to exit and reaps it.
    /// Returns None on timeout (the guard still owns it then).
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(POLL);
        }
    }

    /// Is the process still running (not exited, not a zombie)?
    pub fn alive(&mut self) -> bool {
        if self.child.is_some() {
            return self.try_wait().is_none();
        }
        self.armed && pid_alive(self.pid)
    }

    /// Kills the process with SIGKILL and waits until it is gone (a zombie
    /// counts as gone for a non-child; a child is reaped).
    pub fn kill_and_wait(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        } else if self.armed {
            kill_pid(self.pid, libc::SIGKILL);
            assert!(
                wait_gone(self.pid, WAIT),
                "pid {} still alive {WAIT:?} after SIGKILL",
                self.pid
            );
        }
        self.armed = false;
    }

    /// The test knows the process is gone: do not signal the pid on drop.
    pub fn disarm(&mut self) {
        self.armed = false;
    }
}

impl Drop for ProcGuard {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        } else if self.armed && pid_alive(self.pid) {
            kill_pid(self.pid, libc::SIGKILL);
            let _ = wait_gone(self.pid, WAIT);
        }
    }
}

/// Sends `sig` to `pid`; returns whether kill(2) succeeded.
pub fn kill_pid(pid: i32, sig: libc::c_int) -> bool {
    assert!(pid > 0, "refusing to signal pid {pid}");
    // SAFETY: kill(2) only takes integers; pid > 0 targets exactly one process.
    unsafe { libc::kill(pid, sig) == 0 }
}

/// The parts of /proc/PID/stat the tests look at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcStat {
    pub state: char,
    pub ppid: i32,
    pub pgrp: i32,
    pub session: i32,
}

/// Parses /proc/PID/stat; None when the pid does not exist.
pub fn proc_stat(pid: i32) -> Option<ProcStat> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // comm may contain spaces and parentheses: fields start after the last ')'.
    let rest = &text[text.rfind(')')? + 1..];
    let mut f = rest.split_whitespace();
    let state = f.next()?.chars().next()?;
    let ppid = f.next()?.parse().ok()?;
    let pgrp = f.next()?.parse().ok()?;
    let session = f.next()?.parse().ok()?;
    Some(ProcStat {
        state,
        ppid,
        pgrp,
        session,
    })
}

/// True when a process runs under `pid` (a zombie or a dead entry does not count).
pub fn pid_alive(pid: i32) -> bool {
    matches!(proc_stat(pid), Some(s) if s.state != 'Z' && s.state != 'X')
}

/// True when anything, even a zombie, holds `pid`.
pub fn pid_exists(pid: i32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Waits until no live process runs under `pid`; false on timeout.
pub fn wait_gone(pid: i32, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while pid_alive(pid) {
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(POLL);
    }
    true
}

/// Waits until `pid` is entirely free (not even a zombie waiting for init
/// to reap it); false on timeout.
pub fn wait_pid_free(pid: i32, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while pid_exists(pid) {
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(POLL);
    }
    true
}

/// Live processes whose /proc/PID/exe is `exe`.
pub fn live_pids_with_exe(exe: &Path) -> Vec<i32> {
    let mut pids = Vec::new();
    let Ok(dir) = fs::read_dir("/proc") else {
        return pids;
    };
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        if fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|p| p == exe) && pid_alive(pid) {
            pids.push(pid);
        }
    }
    pids
}

/// Children of `pid` (of any of its threads), sorted.
pub fn children_of(pid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    if let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) {
        for t in tasks.flatten() {
            if let Ok(text) = fs::read_to_string(t.path().join("children")) {
                out.extend(
                    text.split_whitespace()
                        .filter_map(|x| x.parse::<i32>().ok()),
                );
            }
        }
    }
    out.sort();
    out
}

/// A field of /proc/PID/status, trimmed.
pub fn status_field(pid: i32, name: &str) -> Option<String> {
    let text = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k == name).then(|| v.trim().to_string())
    })
}

/// A hexadecimal signal-set field of /proc/PID/status (SigBlk, SigPnd, ...).
pub fn status_sigset(pid: i32, name: &str) -> Option<u64> {
    u64::from_str_radix(&status_field(pid, name)?, 16).ok()
}

/// The bit of signal `sig` in a /proc signal set.
pub fn sig_bit(sig: libc::c_int) -> u64 {
    1u64 << (sig - 1)
}

/// The syscall number a stopped/sleeping process is in, from
/// /proc/PID/syscall; None when it is running or unreadable.
pub fn current_syscall(pid: i32) -> Option<libc::c_long> {
    let text = fs::read_to_string(format!("/proc/{pid}/syscall")).ok()?;
    text.split_whitespace().next()?.parse().ok()
}

/// Every open fd of `pid` and what it points to.
pub fn fd_targets(pid: i32) -> BTreeMap<i32, String> {
    let mut map = BTreeMap::new();
    if let Ok(dir) = fs::read_dir(format!("/proc/{pid}/fd")) {
        for entry in dir.flatten() {
            if let Some(fd) = entry.file_name().to_str().and_then(|s| s.parse().ok()) {
                if let Ok(target) = fs::read_link(entry.path()) {
                    map.insert(fd, target.to_string_lossy().into_owned());
                }
            }
        }
    }
    map
}

/// `(pos, flags)` from /proc/PID/fdinfo/FD (flags are octal there).
pub fn fdinfo(pid: i32, fd: i32) -> Option<(u64, u32)> {
    let text = fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")).ok()?;
    let mut pos = None;
    let mut flags = None;
    for line in text.lines() {
        if let Some(v) = line.strip_prefix("pos:") {
            pos = v.trim().parse().ok();
        } else if let Some(v) = line.strip_prefix("flags:") {
            flags = u32::from_str_radix(v.trim(), 8).ok();
        }
    }
    Some((pos?, flags?))
}

// ---------------------------------------------------------------------------
// Memory maps

/// One /proc/PID/maps line without the device and inode columns (an inode of
/// a shared anonymous mapping changes across a restore) and with any
/// " (deleted)" suffix removed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapEntry {
    pub start: u64,
    pub end: u64,
    pub perms: String,
    pub offset: u64,
    pub path: String,
}

impl std::fmt::Display for MapEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:x}-{:x} {} {:08x} {}",
            self.start, self.end, self.perms, self.offset, self.path
        )
    }
}

fn parse_maps_line(line: &str) -> Option<MapEntry> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    if fields.len() < 5 {
        return None;
    }
    let (start, end) = fields[0].split_once('-')?;
    let path = fields[5..].join(" ");
    Some(MapEntry {
        start: u64::from_str_radix(start, 16).ok()?,
        end: u64::from_str_radix(end, 16).ok()?,
        perms: fields[1].to_string(),
        offset: u64::from_str_radix(fields[2], 16).ok()?,
        path: path.strip_suffix(" (deleted)").unwrap_or(&path).to_string(),
    })
}

/// /proc/PID/maps as listed.
pub fn read_maps(pid: i32) -> Vec<MapEntry> {
    fs::read_to_string(format!("/proc/{pid}/maps"))
        .unwrap_or_default()
        .lines()
        .filter_map(parse_maps_line)
        .collect()
}

/// /proc/PID/maps with adjacent entries merged when they describe one
/// contiguous mapping (same permissions and path, and for files contiguous
/// offsets): how the kernel happens to split or merge VMAs is not part of
/// the address space's meaning.
pub fn normalized_maps(pid: i32) -> Vec<MapEntry> {
    let mut out: Vec<MapEntry> = Vec::new();
    for e in read_maps(pid) {
        if let Some(prev) = out.last_mut() {
            let anon = e.path.is_empty() || e.path.starts_with('[');
            if prev.end == e.start
                && prev.perms == e.perms
                && prev.path == e.path
                && (anon || prev.offset + (prev.end - prev.start) == e.offset)
            {
                prev.end = e.end;
                continue;
            }
        }
        out.push(e);
    }
    out
}

/// The kernel-provided mappings whose addresses a restore must keep.
pub fn special_maps(pid: i32) -> Vec<MapEntry> {
    read_maps(pid)
        .into_iter()
        .filter(|e| {
            matches!(
                e.path.as_str(),
                "[vdso]" | "[vvar]" | "[vvar_vclock]" | "[vsyscall]"
            )
        })
        .collect()
}

/// A readable difference between two map lists (empty when equal).
pub fn maps_diff(before: &[MapEntry], after: &[MapEntry]) -> String {
    let mut s = String::new();
    for e in before.iter().filter(|e| !after.contains(e)) {
        let _ = writeln!(s, "  only before: {e}");
    }
    for e in after.iter().filter(|e| !before.contains(e)) {
        let _ = writeln!(s, "  only after:  {e}");
    }
    s
}

// ---------------------------------------------------------------------------
// Process identity: what a restore must reproduce

/// What a restored process must share with the original.
/// The credential lines of /proc/PID/status, as they read.
pub fn creds_lines(pid: i32) -> Vec<String> {
    const FIELDS: [&str; 10] = [
        "Uid:",
        "Gid:",
        "Groups:",
        "CapInh:",
        "CapPrm:",
        "CapEff:",
        "CapBnd:",
        "CapAmb:",
        "NoNewPrivs:",
        "Seccomp:",
    ];
    fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .filter(|l| FIELDS.iter().any(|f| l.starts_with(f)))
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect()
}

#[derive(Clone, Debug)]
pub struct ProcIdentity {
    pub pid: i32,
    pub exe: PathBuf,
    pub cmdline: Vec<u8>,
    pub comm: String,
    pub sig_blk: u64,
    pub sig_ign: u64,
    pub sig_cgt: u64,
    pub special_maps: Vec<MapEntry>,
    /// Credential lines of /proc/PID/status (ids, groups, capability sets,
    /// no_new_privs, seccomp).
    pub creds: Vec<String>,
    pub oom_score_adj: String,
    /// The whole (normalized) memory map, for programs whose map is stable.
    pub maps: Option<Vec<MapEntry>>,
}

impl ProcIdentity {
    pub fn capture(pid: i32, with_maps: bool) -> ProcIdentity {
        let read = |what: &str| {
            fs::read(format!("/proc/{pid}/{what}"))
                .unwrap_or_else(|e| panic!("read /proc/{pid}/{what}: {e}"))
        };
        let sig = |name: &str| {
            status_sigset(pid, name).unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status"))
        };
        ProcIdentity {
            pid,
            exe: fs::read_link(format!("/proc/{pid}/exe"))
                .unwrap_or_else(|e| panic!("readlink /proc/{pid}/exe: {e}")),
            cmdline: read("cmdline"),
            comm: String::from_utf8_lossy(&read("comm"))
                .trim_end()
                .to_string(),
            sig_blk: sig("SigBlk"),
            sig_ign: sig("SigIgn"),
            sig_cgt: sig("SigCgt"),
            special_maps: special_maps(pid),
            creds: creds_lines(pid),
            oom_score_adj: String::from_utf8_lossy(&read("oom_score_adj"))
                .trim()
                .to_string(),
            maps: with_maps.then(|| normalized_maps(pid)),
        }
    }

    /// Panics with every difference between `self` and the process now
    /// running under the same pid.
    pub fn assert_same(&self, context: &str) {
        let now = ProcIdentity::capture(self.pid, self.maps.is_some());
        let mut problems = String::new();
        if now.exe != self.exe {
            let _ = writeln!(problems, "exe: {:?} != {:?}", now.exe, self.exe);
        }
        if now.cmdline != self.cmdline {
            let _ = writeln!(
                problems,
                "cmdline: {:?} != {:?}",
                String::from_utf8_lossy(&now.cmdline),
                String::from_utf8_lossy(&self.cmdline)
            );
        }
        if now.comm != self.comm {
            let _ = writeln!(problems, "comm: {:?} != {:?}", now.comm, self.comm);
        }
        for (name, a, b) in [
            ("SigBlk", now.sig_blk, self.sig_blk),
            ("SigIgn", now.sig_ign, self.sig_ign),
            ("SigCgt", now.sig_cgt, self.sig_cgt),
        ] {
            if a != b {
                let _ = writeln!(problems, "{name}: {a:016x} != {b:016x}");
            }
        }
        if now.oom_score_adj != self.oom_score_adj {
            let _ = writeln!(
                problems,
                "oom_score_adj: {} != {}",
                now.oom_score_adj, self.oom_score_adj
            );
        }
        if now.creds != self.creds {
            let _ = writeln!(problems, "credentials: {:?} != {:?}", now.creds, self.creds);
        }
        if now.special_maps != self.special_maps {
            let _ = writeln!(
                problems,
                "vdso/vvar mappings moved:\n{}",
                maps_diff(&self.special_maps, &now.special_maps)
            );
        }
        if let (Some(before), Some(after)) = (&self.maps, &now.maps) {
            if before != after {
                let _ = writeln!(
                    problems,
                    "memory map differs:\n{}",
                    maps_diff(before, after)
                );
            }
        }
        assert!(
            problems.is_empty(),
            "{context}: pid {} differs from the original (now != before):\n{problems}",
            self.pid
        );
    }
}

// ---------------------------------------------------------------------------
// Files and waiting

/// The whole file, or nothing if it does not exist (yet).
pub fn read_bytes(path: &Path) -> Vec<u8> {
    fs::read(path).unwrap_or_default()
}

/// The last `n` lines of a file, for failure messages.
pub fn tail(path: &Path, n: usize) -> String {
    let bytes = read_bytes(path);
    let text = String::from_utf8_lossy(&bytes);
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(n);
    format!(
        "--- {} ({} bytes, last {} lines) ---\n{}\n---",
        path.display(),
        bytes.len(),
        lines.len() - start,
        lines[start..].join("\n")
    )
}

/// The complete (newline-terminated) lines of a file; a line being written
/// right now is left out.
pub fn complete_lines(path: &Path) -> Vec<String> {
    let bytes = read_bytes(path);
    let end = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    String::from_utf8_lossy(&bytes[..end])
        .lines()
        .map(str::to_string)
        .collect()
}

/// The number right after `prefix` in `line` ("tick 17 pass 0" -> 17).
pub fn seq_number(line: &str, prefix: &str) -> Option<u64> {
    line.strip_prefix(prefix)?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The value following the word `key` in a "k1 v1 k2 v2" style line.
pub fn field_after(line: &str, key: &str) -> Option<u64> {
    let mut words = line.split_whitespace();
    while let Some(w) = words.next() {
        if w == key {
            return words.next()?.parse().ok();
        }
    }
    None
}

/// Polls `probe` until it returns Some, for at most `timeout`; on timeout
/// panics saying what was awaited, with `diag()` appended.
pub fn wait_until<T>(
    timeout: Duration,
    what: &str,
    mut probe: impl FnMut() -> Option<T>,
    diag: impl FnOnce() -> String,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = probe() {
            return v;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}\n{}", diag());
        }
        thread::sleep(POLL);
    }
}

/// Checks that `values` count up by exactly one from `first`, no gap and no
/// repeat; the error names the first offending position.
pub fn check_consecutive(values: &[u64], first: u64) -> Result<(), String> {
    for (i, (&v, want)) in values.iter().zip(first..).enumerate() {
        if v != want {
            let lo = i.saturating_sub(3);
            let hi = (i + 4).min(values.len());
            return Err(format!(
                "sequence broken at entry {i}: expected {want}, found {v} (around: {:?})",
                &values[lo..hi]
            ));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Running tern

/// What a `tern` invocation did.
pub struct TernOutput {
    pub args: Vec<OsString>,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    /// From start to exit.
    pub elapsed: Duration,
}

impl TernOutput {
    pub fn success(&self) -> bool {
        self.status.success()
    }

    pub fn describe(&self) -> String {
        format!(
            "`tern {}` exited with {}\n--- tern stdout ---\n{}\n--- tern stderr ---\n{}\n---",
            self.args
                .iter()
                .map(|a| a.to_string_lossy())
                .collect::<Vec<_>>()
                .join(" "),
            self.status,
            self.stdout.trim_end(),
            self.stderr.trim_end()
        )
    }

    /// Panics with the full output unless tern exited 0.
    pub fn assert_ok(&self, context: &str) -> &Self {
        assert!(self.success(), "{context}: {}", self.describe());
        self
    }
}

/// Runs `tern ARGS` with the given stdin. Its stdout and stderr go to files
/// in `dir` (not pipes: a restored process that wrongly inherited them must
/// not make the test hang waiting for EOF). Kills tern and panics if it runs
/// longer than [`TERN_TIMEOUT`].
pub fn run_tern(dir: &TestDir, args: &[OsString], stdin: Stdio) -> TernOutput {
    run_tern_in(dir, None, args, stdin)
}

/// [`run_tern`] inside network namespace `netns` if given (via `nsenter
/// --net`, which changes only the network namespace: `ip netns exec` would
/// also give it a mount namespace of its own, which tern refuses).
pub fn run_tern_in(
    dir: &TestDir,
    netns: Option<&str>,
    args: &[OsString],
    stdin: Stdio,
) -> TernOutput {
    run_tern_within(dir, netns, args, stdin, TERN_TIMEOUT)
}

/// [`run_tern_in`] with a deadline of its own: a tern still running after
/// `deadline` is killed (by pid) and the test fails, calling it a hang.
pub fn run_tern_within(
    dir: &TestDir,
    netns: Option<&str>,
    args: &[OsString],
    stdin: Stdio,
    deadline: Duration,
) -> TernOutput {
    run_tern_via(dir, netns, &[], args, stdin, deadline)
}

/// [`run_tern_within`] with tern started by the command `via` (which must
/// exec it in place), e.g. a shell that opens an fd for it first.
pub fn run_tern_via(
    dir: &TestDir,
    netns: Option<&str>,
    via: &[String],
    args: &[OsString],
    stdin: Stdio,
    deadline: Duration,
) -> TernOutput {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let n = SEQ.fetch_add(1, Ordering::Relaxed);
    let sub = args
        .first()
        .map(|a| a.to_string_lossy().into_owned())
        .unwrap_or_default();
    let out_path = dir.join(format!("tern-{n}-{sub}.stdout"));
    let err_path = dir.join(format!("tern-{n}-{sub}.stderr"));
    let tern = tern_bin();
    let mut command = match netns {
        Some(ns) => {
            let mut c = Command::new("nsenter");
            c.arg(format!("--net=/run/netns/{ns}"));
            c.args(via).arg(&tern);
            c
        }
        None => match via.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(&tern);
                c
            }
            None => Command::new(&tern),
        },
    };
    let child = command
        .args(args)
        .stdin(stdin)
        .stdout(File::create(&out_path).expect("create tern stdout file"))
        .stderr(File::create(&err_path).expect("create tern stderr file"))
        .env("RUST_BACKTRACE", "1")
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", tern.display()));
    let started = Instant::now();
    let mut guard = ProcGuard::child(child);
    let status = guard.wait_exit(deadline).unwrap_or_else(|| {
        panic!(
            "`tern {args:?}` hangs: still running after {deadline:?} (killing it)\n{}\n{}",
            tail(&out_path, 50),
            tail(&err_path, 200)
        )
    });
    TernOutput {
        args: args.to_vec(),
        status,
        stdout: String::from_utf8_lossy(&read_bytes(&out_path)).into_owned(),
        stderr: String::from_utf8_lossy(&read_bytes(&err_path)).into_owned(),
        elapsed: started.elapsed(),
    }
}

/// Builds an argument vector from anything path- or string-like.
#[macro_export]
macro_rules! args {
    ($($a:expr),* $(,)?) => {
        vec![$(::std::ffi::OsString::from($a)),*]
    };
}

pub fn tern_dump(dir: &TestDir, pid: i32, images: &Path, leave_running: bool) -> TernOutput {
    let mut a = args!["dump", "--pid", pid.to_string(), "--images", images];
    if leave_running {
        a.push("--leave-running".into());
    }
    run_tern(dir, &a, Stdio::null())
}

pub fn tern_restore(
    dir: &TestDir,
    images: &Path,
    pidfile: Option<&Path>,
    stdin: Stdio,
) -> TernOutput {
    let mut a = args!["restore", "--images", images];
    if let Some(p) = pidfile {
        a.push("--pidfile".into());
        a.push(p.into());
    }
    run_tern(dir, &a, stdin)
}

pub fn tern_inspect(dir: &TestDir, images: &Path, json: bool) -> TernOutput {
    let mut a = args!["inspect", "--images", images];
    if json {
        a.push("--json".into());
    }
    run_tern(dir, &a, Stdio::null())
}

/// Every regular file under `dir`, recursively, sorted.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d).unwrap_or_else(|e| panic!("read_dir {}: {e}", d.display())) {
            let path = entry.expect("dir entry").path();
            let ft = fs::symlink_metadata(&path).expect("stat").file_type();
            if ft.is_dir() {
                stack.push(path);
            } else if ft.is_file() {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

/// Copies the directory tree `from` to `to` (regular files and directories).
pub fn copy_tree(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap_or_else(|e| panic!("mkdir {}: {e}", to.display()));
    for entry in fs::read_dir(from).unwrap_or_else(|e| panic!("read_dir {}: {e}", from.display())) {
        let entry = entry.expect("dir entry");
        let src = entry.path();
        let dst = to.join(entry.file_name());
        if entry.file_type().expect("file type").is_dir() {
            copy_tree(&src, &dst);
        } else {
            fs::copy(&src, &dst)
                .unwrap_or_else(|e| panic!("copy {} -> {}: {e}", src.display(), dst.display()));
        }
    }
}

// ---------------------------------------------------------------------------
// A dump/restore session around one workload

/// One workload's life across `tern dump` and `tern restore`: the original
/// child, the restored process, their outputs, and the image directory.
///
/// The workload's progress is read from `seq_path` (stdout by default): its
/// lines start with `prefix` followed by a number counting up from 1.
pub struct Session {
    // Guards come first: fields drop in declaration order, so the processes
    // are killed before the directory holding their files is removed.
    pub original: ProcGuard,
    pub restored: Option<ProcGuard>,
    pub pid: i32,
    pub cmd: Cmd,
    pub out: PathBuf,
    pub err: PathBuf,
    pub seq_path: PathBuf,
    pub prefix: &'static str,
    pub images: PathBuf,
    /// Compare the whole memory map after restore (only for programs that
    /// do not map or unmap anything while they run).
    pub compare_maps: bool,
    pub identity: Option<ProcIdentity>,
    /// `seq_path`'s content when the original died.
    pub pre_dump: Vec<u8>,
    /// The last number the original printed.
    pub last_before: u64,
    pub last_tern: Option<String>,
    pub dir: TestDir,
}

impl Session {
    /// Starts `cmd` with stdout/stderr redirected to files in `dir`.
    pub fn start(dir: TestDir, cmd: Cmd, stdin: Stdio) -> Session {
        let out = dir.join("stdout.txt");
        let err = dir.join("stderr.txt");
        let original = spawn_redirected(&cmd, stdin, &out, &err);
        let pid = original.pid();
        Session {
            original,
            restored: None,
            pid,
            cmd,
            seq_path: out.clone(),
            out,
            err,
            prefix: "tick ",
            images: dir.join("images"),
            compare_maps: true,
            identity: None,
            pre_dump: Vec::new(),
            last_before: 0,
            last_tern: None,
            dir,
        }
    }

    /// Everything useful when something went wrong.
    pub fn diag(&self) -> String {
        let mut s = format!(
            "workload {:?} pid {} (state {:?})\n",
            self.cmd.program,
            self.pid,
            proc_stat(self.pid).map(|s| s.state)
        );
        s.push_str(&tail(&self.seq_path, 15));
        s.push('\n');
        if self.out != self.seq_path {
            s.push_str(&tail(&self.out, 15));
            s.push('\n');
        }
        s.push_str(&tail(&self.err, 15));
        if let Some(t) = &self.last_tern {
            s.push_str("\nlast tern command:\n");
            s.push_str(t);
        }
        s
    }

    /// Panics (with diagnostics) if the workload died or reported corruption.
    pub fn ensure_healthy(&mut self) {
        let died = match &mut self.restored {
            Some(r) => (!r.alive()).then(|| "the restored process died".to_string()),
            None if self.original.is_child() => self
                .original
                .try_wait()
                .map(|st| format!("the original process exited ({st})")),
            None => None,
        };
        if let Some(why) = died {
            panic!("{why}\n{}", self.diag());
        }
        for path in [&self.out, &self.err, &self.seq_path] {
            let text = read_bytes(path);
            if text.windows(7).any(|w| w == b"CORRUPT") {
                panic!(
                    "workload reported corruption in {}\n{}",
                    path.display(),
                    self.diag()
                );
            }
        }
    }

    /// The complete lines of the progress file.
    pub fn lines(&self) -> Vec<String> {
        complete_lines(&self.seq_path)
    }

    /// The last complete line carrying a sequence number.
    pub fn last_seq_line(&self) -> Option<String> {
        self.lines()
            .into_iter()
            .rev()
            .find(|l| seq_number(l, self.prefix).is_some())
    }

    pub fn last_seq(&self) -> Option<u64> {
        self.last_seq_line()
            .and_then(|l| seq_number(&l, self.prefix))
    }

    /// Waits until the workload printed number `n` (or later) and returns
    /// the last number seen.
    pub fn wait_seq(&mut self, n: u64) -> u64 {
        let what = format!("number {n} in {}", self.seq_path.display());
        let prefix = self.prefix;
        let line = self.wait_for_line(&what, |l| seq_number(l, prefix).is_some_and(|v| v >= n));
        seq_number(&line, prefix).expect("matched above")
    }

    /// Waits until the last progress line satisfies `pred`; returns it.
    pub fn wait_for_line(&mut self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            self.ensure_healthy();
            if let Some(l) = self.last_seq_line().filter(|l| pred(l)) {
                return l;
            }
            if Instant::now() >= deadline {
                panic!(
                    "timed out after {WAIT:?} waiting for {what}\n{}",
                    self.diag()
                );
            }
            thread::sleep(POLL);
        }
    }

    /// Records the identity, runs `tern dump` (default mode), checks that it
    /// succeeded and killed the original with SIGKILL, and reaps it.
    pub fn dump(&mut self) -> TernOutput {
        self.dump_with(&[])
    }

    /// [`dump`](Self::dump) with extra `tern dump` arguments (e.g. `--parent`).
    pub fn dump_with(&mut self, extra: &[OsString]) -> TernOutput {
        self.ensure_healthy();
        self.identity = Some(ProcIdentity::capture(self.pid, self.compare_maps));
        let mut a = args![
            "dump",
            "--pid",
            self.pid.to_string(),
            "--images",
            &self.images
        ];
        a.extend(extra.iter().cloned());
        let out = run_tern(&self.dir, &a, Stdio::null());
        self.last_tern = Some(out.describe());
        if !out.success() {
            panic!("tern dump failed\n{}", self.diag());
        }
        let status = self.original.wait_exit(WAIT).unwrap_or_else(|| {
            panic!(
                "the original is still running {WAIT:?} after a successful `tern dump` (it must be killed)\n{}",
                self.diag()
            )
        });
        assert_eq!(
            status.signal(),
            Some(libc::SIGKILL),
            "after `tern dump` the original must die of SIGKILL, it ended with {status}\n{}",
            self.diag()
        );
        assert!(
            !pid_alive(self.pid),
            "pid {} still alive after the original was reaped",
            self.pid
        );
        assert!(
            !files_under(&self.images).is_empty(),
            "`tern dump` succeeded but wrote no file into {}",
            self.images.display()
        );
        self.pre_dump = read_bytes(&self.seq_path);
        self.last_before = self.last_seq().unwrap_or_else(|| {
            panic!(
                "the original printed no progress before the dump\n{}",
                self.diag()
            )
        });
        out
    }

    /// Runs `tern restore` with `stdin`, checks that it succeeded, that the
    /// pid file names the original pid, and that the process now running
    /// under that pid is the original one restored: same exe, argv, comm,
    /// signal state, vdso addresses (and memory map if `compare_maps`), not
    /// our child, in a session of its own.
    pub fn restore(&mut self, stdin: Stdio) -> TernOutput {
        self.restore_with(stdin, &[])
    }

    /// [`restore`](Self::restore) with extra `tern restore` arguments.
    pub fn restore_with(&mut self, stdin: Stdio, extra: &[OsString]) -> TernOutput {
        // Guard the pid before tern creates anything under it.
        self.restored = Some(ProcGuard::adopt(self.pid));
        let pidfile = self.dir.join("restored.pid");
        let mut a = args!["restore", "--images", &self.images, "--pidfile", &pidfile];
        a.extend(extra.iter().cloned());
        let out = run_tern(&self.dir, &a, stdin);
        self.last_tern = Some(out.describe());
        if !out.success() {
            panic!("tern restore failed\n{}", self.diag());
        }
        let written = fs::read_to_string(&pidfile).unwrap_or_else(|e| {
            panic!(
                "tern restore --pidfile {} wrote no pid file: {e}",
                pidfile.display()
            )
        });
        assert_eq!(
            written.trim().parse::<i32>().ok(),
            Some(self.pid),
            "pid file {} holds {written:?}, the original pid was {}",
            pidfile.display(),
            self.pid
        );
        assert!(
            pid_alive(self.pid),
            "`tern restore` succeeded but nothing runs under pid {}\n{}",
            self.pid,
            self.diag()
        );
        if let Some(id) = &self.identity {
            id.assert_same("restored process");
        }
        let stat = proc_stat(self.pid).expect("stat of restored process");
        let me = i32::try_from(std::process::id()).expect("pid fits in i32");
        assert_ne!(
            stat.ppid, me,
            "the restored process must not be a child of the test (it is detached)"
        );
        // SAFETY: getsid(0) only queries the calling process's session id.
        let my_sid = unsafe { libc::getsid(0) };
        assert_ne!(
            stat.session, my_sid,
            "the restored process must be detached in its own session, it is in the test's"
        );
        out
    }

    /// Kills the restored process and waits until it is gone.
    pub fn kill_restored(&mut self) {
        if let Some(r) = &mut self.restored {
            r.kill_and_wait();
        }
    }

    /// Strict checks of the final progress file: no NUL bytes (holes from a
    /// wrong offset), every line complete, and the pre-dump content still
    /// intact at its start. Returns its lines.
    pub fn final_lines(&self) -> Vec<String> {
        let bytes = read_bytes(&self.seq_path);
        if let Some(i) = bytes.iter().position(|&b| b == 0) {
            panic!(
                "{} has a NUL byte at offset {i} (output resumed at the wrong offset?)\n{}",
                self.seq_path.display(),
                self.diag()
            );
        }
        assert!(
            bytes.starts_with(&self.pre_dump),
            "{}: the first {} bytes written before the dump were changed after restore \
             (output resumed at the wrong offset?)\n{}",
            self.seq_path.display(),
            self.pre_dump.len(),
            self.diag()
        );
        assert!(
            bytes.ends_with(b"\n"),
            "{} ends with an incomplete line\n{}",
            self.seq_path.display(),
            self.diag()
        );
        String::from_utf8_lossy(&bytes)
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// Kills the restored process and checks the whole run's output: every
    /// line is "<prefix>N ...", N runs 1, 2, 3... with no gap or repeat
    /// across the dump point and past the last pre-dump value, no CORRUPT,
    /// nothing on stderr. Returns the lines.
    pub fn finish(&mut self) -> Vec<String> {
        self.ensure_healthy();
        self.kill_restored();
        let lines = self.final_lines();
        let nums: Vec<u64> = lines
            .iter()
            .map(|l| {
                seq_number(l, self.prefix).unwrap_or_else(|| {
                    panic!(
                        "unexpected line {l:?} in {}\n{}",
                        self.seq_path.display(),
                        self.diag()
                    )
                })
            })
            .collect();
        if let Err(e) = check_consecutive(&nums, 1) {
            panic!(
                "{}: {e} (last value before the dump: {})\n{}",
                self.seq_path.display(),
                self.last_before,
                self.diag()
            );
        }
        assert!(
            nums.last().copied().unwrap_or(0) > self.last_before,
            "no progress after restore\n{}",
            self.diag()
        );
        self.assert_stderr_empty();
        lines
    }

    pub fn assert_stderr_empty(&self) {
        let err = read_bytes(&self.err);
        assert!(
            err.is_empty(),
            "the workload wrote to stderr:\n{}\n{}",
            String::from_utf8_lossy(&err),
            self.diag()
        );
    }
}

/// A session running `script` (in tests/workloads) under the system's
/// python3, isolated (`-I`). The interpreter maps and unmaps memory as it
/// runs, so memory maps are not compared across the restore.
pub fn python_session(test: &str, script: &str) -> Session {
    let python = PathBuf::from("/usr/bin/python3");
    assert!(
        python.exists(),
        "{} is missing: these tests need the system's python3",
        python.display()
    );
    let cmd = Cmd::new(python).arg("-I").arg(workloads_dir().join(script));
    let mut s = Session::start(TestDir::new(test), cmd, Stdio::null());
    s.compare_maps = false;
    s
}

// ---------------------------------------------------------------------------
// Network namespaces as "edge servers"

/// A network namespace made for one test, deleted on drop. Processes
/// started in it must be ended first (declare their guards after it).
pub struct Netns {
    pub name: String,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run ip: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
}

impl Netns {
    pub fn new(tag: &str) -> Result<Netns, String> {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let name = format!(
            "tern-{}-{}-{tag}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        ip(&["netns", "add", &name])?;
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// `ip -n NAME ARGS`.
    pub fn ip(&self, args: &[&str]) -> Result<(), String> {
        let mut a = vec!["-n", self.name.as_str()];
        a.extend_from_slice(args);
        ip(&a)
    }

    /// The namespace's inode, as /proc/PID/ns/net names it.
    pub fn inode(&self) -> u64 {
        fs::metadata(format!("/run/netns/{}", self.name))
            .map(|m| m.ino())
            .unwrap_or(0)
    }

    /// A command run inside the namespace (network namespace only; see
    /// [`run_tern_in`]).
    pub fn cmd(&self, program: impl Into<PathBuf>) -> Cmd {
        Cmd::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.name))
            .arg(program.into())
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.name]);
    }
}

/// Create a veth pair: `a_dev` in namespace `a`, `b_dev` in `b` (names at
/// most 15 bytes, unique on the machine), both up.
pub fn veth(a: &Netns, a_dev: &str, b: &Netns, b_dev: &str) -> Result<(), String> {
    ip(&[
        "link", "add", a_dev, "netns", &a.name, "type", "veth", "peer", "name", b_dev, "netns",
        &b.name,
    ])?;
    a.ip(&["link", "set", a_dev, "up"])?;
    b.ip(&["link", "set", b_dev, "up"])
}

/// A veth device name unique on this machine, starting with `prefix`
/// (at most 4 bytes).
pub fn veth_name(prefix: &str) -> String {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let n = SEQ.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}{}x{n}", std::process::id() % 100_000)
}

/// `tern keygen` into `dir/name`.
pub fn keygen(dir: &TestDir, name: &str) -> PathBuf {
    let key = dir.join(name);
    let a = args!["keygen", "--out", &key];
    run_tern(dir, &a, Stdio::null()).assert_ok("tern keygen");
    key
}

/// Start `tern serve --listen ADDR` in namespace `ns` with `extra`
/// arguments; returns once it listens.
pub fn start_serve_in(
    dir: &TestDir,
    ns: &Netns,
    listen: &str,
    key: &Path,
    extra: &[&str],
) -> ProcGuard {
    start_serve_with_fault(dir, ns, listen, key, extra, None)
}

/// [`start_serve_in`] with `TERN_TEST_FAULT=fault` (the test build's
/// injected faults: `exit-on-final`, `exit-after-resume`).
pub fn start_serve_with_fault(
    dir: &TestDir,
    ns: &Netns,
    listen: &str,
    key: &Path,
    extra: &[&str],
    fault: Option<&str>,
) -> ProcGuard {
    let via = match fault {
        Some(f) => vec!["env".to_string(), format!("TERN_TEST_FAULT={f}")],
        None => Vec::new(),
    };
    start_serve_via(dir, ns, listen, key, extra, &via)
}

/// [`start_serve_in`] with tern started by the command `via` (which must
/// exec it in place: the pid guarded is the daemon's), e.g. a shell that
/// opens an fd for it first.
pub fn start_serve_via(
    dir: &TestDir,
    ns: &Netns,
    listen: &str,
    key: &Path,
    extra: &[&str],
    via: &[String],
) -> ProcGuard {
    let ready = dir.join(format!("serve-ready-{}", std::process::id()));
    let _ = std::fs::remove_file(&ready);
    let mut cmd = match via.split_first() {
        Some((first, rest)) => {
            let mut c = ns.cmd(first);
            for a in rest {
                c = c.arg(a);
            }
            c.arg(tern_bin())
        }
        None => ns.cmd(tern_bin()),
    }
    .arg("serve")
    .arg("--listen")
    .arg(listen)
    .arg("--key")
    .arg(key)
    .arg("--ready-file")
    .arg(&ready);
    for e in extra {
        cmd = cmd.arg(e);
    }
    let mut serve = spawn_redirected(
        &cmd,
        Stdio::null(),
        &dir.join("serve.stdout"),
        &dir.join("serve.stderr"),
    );
    wait_until(
        Duration::from_secs(10),
        "tern serve to listen",
        || {
            if !serve.alive() {
                panic!("tern serve exited: {}", tail(&dir.join("serve.stderr"), 20));
            }
            ready.exists().then_some(())
        },
        || tail(&dir.join("serve.stderr"), 20),
    );
    serve
}

/// The network namespace inode of process `pid`.
pub fn netns_of(pid: i32) -> Option<u64> {
    let link = fs::read_link(format!("/proc/{pid}/ns/net")).ok()?;
    let s = link.to_str()?;
    s.strip_prefix("net:[")?.strip_suffix(']')?.parse().ok()
}

/// Processes whose network namespace is the one with inode `ns`.
pub fn pids_in_netns(ns: u64) -> Vec<i32> {
    let mut pids: Vec<i32> = fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
                .filter(|&pid| netns_of(pid) == Some(ns))
                .collect()
        })
        .unwrap_or_default();
    pids.sort();
    pids
}

/// Two "edge servers": namespaces joined by a veth pair, A at
/// [`EDGE_A_ADDR`], B at [`EDGE_B_ADDR`].
pub struct EdgePair {
    pub a: Netns,
    pub b: Netns,
}

/// Run `f` on a thread of ours that first joins network namespace `ns`
/// (setns changes only the calling thread); its result, or why it could
/// not run there.
pub fn in_netns<T: Send>(
    ns: &Netns,
    f: impl FnOnce() -> Result<T, String> + Send,
) -> Result<T, String> {
    let file = fs::File::open(format!("/run/netns/{}", ns.name)).map_err(|e| e.to_string())?;
    thread::scope(|s| {
        s.spawn(|| {
            use std::os::fd::AsRawFd;
            // SAFETY: setns on this thread only, with a namespace fd held open.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            if rc != 0 {
                return Err(format!("setns: {}", std::io::Error::last_os_error()));
            }
            f()
        })
        .join()
        .map_err(|_| "the thread in the namespace panicked".to_string())?
    })
}

/// `GET path` from the server at `port` in `ns` (a thread of ours joins
/// the namespace): the body, trimmed; `Err` if it cannot be reached.
pub fn http_get(ns: &Netns, port: u16, path: &str) -> Result<String, String> {
    use std::io::{Read, Write};
    in_netns(ns, || {
        let mut conn = std::net::TcpStream::connect(("127.0.0.1", port))
            .map_err(|e| format!("connect: {e}"))?;
        conn.set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(|e| e.to_string())?;
        write!(conn, "GET {path} HTTP/1.0\r\nHost: edge\r\n\r\n")
            .map_err(|e| format!("send: {e}"))?;
        let mut answer = String::new();
        conn.read_to_string(&mut answer)
            .map_err(|e| format!("read: {e}"))?;
        let (head, body) = answer
            .split_once("\r\n\r\n")
            .ok_or_else(|| format!("no HTTP answer: {answer:?}"))?;
        if !(head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200")) {
            return Err(format!("answered {head:?}"));
        }
        Ok(body.trim().to_string())
    })
}

/// Start nginx (master and 2 workers, in the foreground) in `ns`, serving
/// `dir/html` on `port` (`/pid` answers with the worker's pid), with
/// `http_extra` in its `http` block; returns once it answers.
pub fn start_nginx(dir: &TestDir, ns: &Netns, port: u16, http_extra: &str) -> ProcGuard {
    let html = dir.join("html");
    std::fs::create_dir_all(&html).expect("html dir");
    std::fs::write(html.join("index.html"), "hello edge\n").expect("index.html");
    let conf = dir.join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "daemon off;\nmaster_process on;\nworker_processes 2;\nerror_log {err};\npid {pid};\n\
             events {{ worker_connections 64; }}\n\
             http {{ access_log off; {http_extra} server {{ listen 0.0.0.0:{port}; root {html};\n\
             location /pid {{ return 200 \"$pid\\n\"; }} }} }}\n",
            err = dir.join("error.log").display(),
            pid = dir.join("nginx.pid").display(),
            html = html.display(),
        ),
    )
    .expect("nginx.conf");
    let cmd = ns
        .cmd("nginx")
        .arg("-c")
        .arg(&conf)
        .arg("-p")
        .arg(dir.path());
    let nginx = spawn_redirected(
        &cmd,
        Stdio::null(),
        &dir.join("nginx.out"),
        &dir.join("nginx.err"),
    );
    wait_until(
        Duration::from_secs(10),
        "nginx to answer",
        || {
            http_get(ns, port, "/")
                .ok()
                .filter(|b| b == "hello edge")
                .map(drop)
        },
        || tail(&dir.join("error.log"), 10),
    );
    nginx
}

/// Build the Go server into `dir`, or say why not (SKIP, or a failure
/// under CI).
pub fn go_server_or_skip(test: &str, dir: &TestDir) -> Option<PathBuf> {
    if !command_or_skip(test, "go", "golang-go") {
        return None;
    }
    let exe = dir.join("go_server");
    let out = Command::new("go")
        .args(["build", "-o"])
        .arg(&exe)
        .arg(workloads_dir().join("go_server/main.go"))
        .env("CGO_ENABLED", "0")
        .env("HOME", dir.path())
        .env("GOCACHE", dir.join("gocache"))
        .env("GOPATH", dir.join("gopath"))
        .env("GO111MODULE", "off")
        .stdin(Stdio::null())
        .output()
        .expect("run go build");
    assert!(
        out.status.success(),
        "go build failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(exe)
}

/// Start the Go server (`exe`, from [`go_server_or_skip`]) in `ns` on
/// `port`; returns once it answers.
pub fn start_go_server(dir: &TestDir, ns: &Netns, exe: &Path, port: u16) -> ProcGuard {
    let cmd = ns.cmd(exe).arg(format!("0.0.0.0:{port}"));
    let server = spawn_redirected(
        &cmd,
        Stdio::null(),
        &dir.join("go.out"),
        &dir.join("go.err"),
    );
    wait_until(
        Duration::from_secs(10),
        "the Go server to answer",
        || http_get(ns, port, "/pid").ok().map(drop),
        || tail(&dir.join("go.err"), 10),
    );
    server
}

/// Send `request` to memcached on `port` in `ns` (a thread of ours joins
/// the namespace) and read until a line `until` ends the answer.
pub fn memcached_try(ns: &Netns, port: u16, request: &str, until: &str) -> Result<String, String> {
    use std::io::{Read, Write};
    in_netns(ns, || {
        let mut conn = std::net::TcpStream::connect(("127.0.0.1", port))
            .map_err(|e| format!("connect: {e}"))?;
        conn.set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(|e| e.to_string())?;
        conn.write_all(request.as_bytes())
            .map_err(|e| format!("send: {e}"))?;
        let mut answer = Vec::new();
        let mut buf = [0u8; 4096];
        while !String::from_utf8_lossy(&answer).ends_with(until) {
            let n = conn.read(&mut buf).map_err(|e| format!("read: {e}"))?;
            if n == 0 {
                return Err(format!("closed the connection after {answer:?}"));
            }
            answer.extend_from_slice(&buf[..n]);
        }
        Ok(String::from_utf8_lossy(&answer).into_owned())
    })
}

/// Start memcached in `ns` on `port` with 4 worker threads; returns once
/// it answers.
pub fn start_memcached(dir: &TestDir, ns: &Netns, port: u16) -> ProcGuard {
    let cmd = ns
        .cmd("memcached")
        .arg("-u")
        .arg("root")
        .arg("-l")
        .arg("0.0.0.0")
        .arg("-p")
        .arg(port.to_string())
        .arg("-U")
        .arg("0")
        .arg("-t")
        .arg("4");
    let m = spawn_redirected(
        &cmd,
        Stdio::null(),
        &dir.join("memcached.out"),
        &dir.join("memcached.err"),
    );
    wait_until(
        Duration::from_secs(10),
        "memcached to answer version",
        || {
            memcached_try(ns, port, "version\r\n", "\r\n")
                .ok()
                .filter(|v| v.starts_with("VERSION"))
                .map(drop)
        },
        || tail(&dir.join("memcached.err"), 10),
    );
    m
}

/// Start the Node.js server (`tests/workloads/node_server.js`) in `ns` on
/// `port`; returns once it answers.
pub fn start_node_server(dir: &TestDir, ns: &Netns, port: u16) -> ProcGuard {
    let cmd = ns
        .cmd("node")
        .arg(workloads_dir().join("node_server.js"))
        .arg(format!("0.0.0.0:{port}"));
    let server = spawn_redirected(
        &cmd,
        Stdio::null(),
        &dir.join("node.out"),
        &dir.join("node.err"),
    );
    wait_until(
        Duration::from_secs(20),
        "the Node.js server to answer",
        || http_get(ns, port, "/pid").ok().map(drop),
        || tail(&dir.join("node.err"), 10),
    );
    server
}

/// Start the Java server (`tests/workloads/Counter.java`, run from source
/// by Debian's JRE) in `ns` on `port`; returns once it answers.
pub fn start_java_server(dir: &TestDir, ns: &Netns, port: u16) -> ProcGuard {
    let cmd = ns
        .cmd("java")
        .arg(workloads_dir().join("Counter.java"))
        .arg(port.to_string());
    let server = spawn_redirected(
        &cmd,
        Stdio::null(),
        &dir.join("java.out"),
        &dir.join("java.err"),
    );
    wait_until(
        Duration::from_secs(60),
        "the Java server to answer",
        || http_get(ns, port, "/pid").ok().map(drop),
        || tail(&dir.join("java.err"), 10),
    );
    server
}

/// `tern dump` of `source` (our child, reaped here once killed), then
/// `tern restore` of it in network namespace `netns`: the restored copy.
pub fn dump_then_restore_in(dir: &TestDir, netns: &str, source: &mut ProcGuard) -> ProcGuard {
    let images = dir.join("images");
    let dump_args = args![
        "dump",
        "--pid",
        source.pid().to_string(),
        "--images",
        &images
    ];
    run_tern(dir, &dump_args, Stdio::null()).assert_ok("tern dump");
    assert!(
        source.wait_exit(Duration::from_secs(10)).is_some(),
        "process {} still runs after the dump",
        source.pid()
    );
    let pidfile = dir.join("restored.pid");
    let restore_args = args!["restore", "--images", &images, "--pidfile", &pidfile];
    run_tern_in(dir, Some(netns), &restore_args, Stdio::null()).assert_ok("tern restore");
    let host_pid: i32 = fs::read_to_string(&pidfile)
        .expect("pid file")
        .trim()
        .parse()
        .expect("pid");
    ProcGuard::adopt(host_pid)
}

/// The JSON report `tern migrate --report FILE` wrote.
pub fn migration_report(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&read_bytes(path)).expect("the migration report")
}

/// `tern migrate PID` (with `extra` arguments) from A to a `tern serve
/// --once` in B on port 7878: asserts it succeeds, that the program is gone
/// from A and runs in B's network namespace. Returns the report and a guard
/// of the copy in B.
pub fn migrate_a_to_b(
    dir: &TestDir,
    edges: &EdgePair,
    pid: i32,
    extra: &[&str],
) -> (serde_json::Value, ProcGuard) {
    let key = keygen(dir, "migrate.key");
    let listen = format!("{EDGE_B_ADDR}:7878");
    let mut serve = start_serve_in(dir, &edges.b, &listen, &key, &["--once"]);
    let report = dir.join("report.json");
    let mut a = args![
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
    a.extend(extra.iter().map(OsString::from));
    run_tern_in(dir, Some(&edges.a.name), &a, Stdio::null()).assert_ok("tern migrate");
    assert!(
        wait_gone(pid, Duration::from_secs(10)),
        "process {pid} still runs in A after the migration"
    );
    let rep = migration_report(&report);
    let moved = rep["restored_pid"].as_i64().expect("restored_pid") as i32;
    let guard = ProcGuard::adopt(moved);
    assert_eq!(netns_of(moved), Some(edges.b.inode()), "it must run in B");
    let _ = serve.wait_exit(Duration::from_secs(10));
    (rep, guard)
}

/// Two edge namespaces for `test`, or `None` (having said why: not root,
/// or no network namespaces here; under CI that panics instead).
pub fn edges_or_skip(test: &str) -> Option<EdgePair> {
    if !root_or_skip(test) {
        return None;
    }
    match EdgePair::new() {
        Ok(e) => Some(e),
        Err(e) => {
            skip_or_panic(test, &format!("cannot make network namespaces: {e}"));
            None
        }
    }
}

pub const EDGE_A_ADDR: &str = "10.77.0.1";
pub const EDGE_B_ADDR: &str = "10.77.0.2";

impl EdgePair {
    pub fn new() -> Result<EdgePair, String> {
        let a = Netns::new("a")?;
        let b = Netns::new("b")?;
        let (va, vb) = (veth_name("tva"), veth_name("tvb"));
        veth(&a, &va, &b, &vb)?;
        a.ip(&["addr", "add", &format!("{EDGE_A_ADDR}/24"), "dev", &va])?;
        b.ip(&["addr", "add", &format!("{EDGE_B_ADDR}/24"), "dev", &vb])?;
        Ok(EdgePair { a, b })
    }

    /// Take the link down (both ends), as if the cable were cut.
    /// 100% packet loss on the link, the link staying up: with `tc netem
    /// loss 100%` where the kernel has netem, else an nftables table in
    /// each namespace dropping everything on its veth (the same to TCP:
    /// every segment vanishes). Returns which was used.
    pub fn lose_everything(&self) -> Result<&'static str, String> {
        let devices = self.veths()?;
        let netem = devices.iter().all(|(ns, dev)| {
            Command::new("ip")
                .args(["netns", "exec", &ns.name, "tc", "qdisc", "add", "dev", dev])
                .args(["root", "netem", "loss", "100%"])
                .stdin(Stdio::null())
                .output()
                .is_ok_and(|o| o.status.success())
        });
        if netem {
            return Ok("tc netem loss 100%");
        }
        for (ns, dev) in &devices {
            let rules = format!(
                "table inet tern_test_loss {{\n chain i {{ type filter hook input priority -400; iifname \"{dev}\" drop; }}\n chain o {{ type filter hook output priority -400; oifname \"{dev}\" drop; }}\n}}\n"
            );
            let mut child = Command::new("nsenter")
                .arg(format!("--net=/run/netns/{}", ns.name))
                .args(["nft", "-f", "-"])
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .map_err(|e| format!("cannot run nft: {e}"))?;
            if let Some(mut stdin) = child.stdin.take() {
                use std::io::Write as _;
                stdin
                    .write_all(rules.as_bytes())
                    .map_err(|e| format!("nft stdin: {e}"))?;
            }
            let out = child.wait_with_output().map_err(|e| e.to_string())?;
            if !out.status.success() {
                return Err(format!(
                    "nft in {}: {}",
                    ns.name,
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
            }
        }
        Ok("nftables drop of every packet on the veths (this kernel has no netem)")
    }

    /// The veth device of each side.
    fn veths(&self) -> Result<Vec<(&Netns, String)>, String> {
        let mut found = Vec::new();
        for (ns, dev) in [(&self.a, "tva"), (&self.b, "tvb")] {
            let out = Command::new("ip")
                .args(["-n", &ns.name, "-o", "link", "show"])
                .output()
                .map_err(|e| e.to_string())?;
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            for line in text.lines() {
                let name = line.split(':').nth(1).map(str::trim).unwrap_or("");
                let name = name.split('@').next().unwrap_or("");
                if name.starts_with(dev) {
                    found.push((ns, name.to_string()));
                }
            }
        }
        Ok(found)
    }

    /// Shape both ends of the link to `mbit` Mbit/s with tbf (which this
    /// kernel has; netem it lacks).
    pub fn shape_mbit(&self, mbit: u32) -> Result<(), String> {
        for (ns, dev) in self.veths()? {
            let out = Command::new("ip")
                .args(["netns", "exec", &ns.name, "tc", "qdisc", "add", "dev", &dev])
                .args(["root", "tbf", "rate", &format!("{mbit}mbit")])
                .args(["burst", "64kb", "latency", "100ms"])
                .stdin(Stdio::null())
                .output()
                .map_err(|e| format!("tc: {e}"))?;
            if !out.status.success() {
                return Err(format!(
                    "tc qdisc add dev {dev} root tbf: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
            }
        }
        Ok(())
    }

    pub fn cut(&self) -> Result<(), String> {
        for (ns, dev) in self.veths()? {
            ns.ip(&["link", "set", &dev, "down"])?;
        }
        Ok(())
    }
}
