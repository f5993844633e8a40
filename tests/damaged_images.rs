//! Damaged images through the real commands: `tern restore` (the original
//! pid free, and in a fresh PID namespace while the original still runs; a
//! single process and a tree) and `tern serve` receiving a damaged round
//! (the warm standby's first round, and a whole image as the final round),
//! each damage at chosen places of every image file: its header, the
//! start, middle and end of its data, and cut short (by a byte, to half, to
//! nothing).
//!
//! Each must be refused within a deadline, naming the damaged file, with
//! no process left behind (no puppet, no PID namespace init: the test is a
//! child subreaper, so whatever tern leaves becomes its child and is seen),
//! the original still running where it was left running. Where the
//! original was ended, the undamaged image then restores, so the damage was
//! what was refused.
//!
//! The tests run one at a time (a lock): leftovers are counted among the
//! test process's own children.

mod common;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Mutex;
use std::time::Duration;

use common::*;
use tern_wire::net::{self, FileSummary, Message};

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// How long one refusal may take (the reproducer: 2 s).
const REFUSAL_DEADLINE: Duration = Duration::from_secs(2);
/// The same for the sampled cases, on a loaded 2-core machine.
const SAMPLE_DEADLINE: Duration = Duration::from_secs(10);

fn serial() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

/// Orphans of the tern commands we run become our children, not init's
/// (`on`); off again before a restore that must succeed (a restored
/// program must not end up our child).
fn subreaper(on: bool) {
    // SAFETY: prctl with integer arguments, on ourselves.
    let r = unsafe {
        libc::prctl(
            libc::PR_SET_CHILD_SUBREAPER,
            libc::c_ulong::from(on),
            0,
            0,
            0,
        )
    };
    assert_eq!(
        r,
        0,
        "PR_SET_CHILD_SUBREAPER: {}",
        std::io::Error::last_os_error()
    );
}

/// A test's start: as root (else skipped), one test at a time, as a
/// subreaper, with the C workload `prog` (built with `cflags`) running.
fn start(
    test: &str,
    prog: &str,
    cflags: &[&str],
) -> Option<(std::sync::MutexGuard<'static, ()>, Session)> {
    if !root_or_skip(test) {
        return None;
    }
    let one = serial();
    subreaper(true);
    let dir = TestDir::new(test);
    let exe = compile_c_with(&dir, prog, cflags);
    Some((one, Session::start(dir, Cmd::new(exe), Stdio::null())))
}

/// Our children other than `known`, described; each is killed and reaped.
fn leftovers(known: &[i32]) -> Vec<String> {
    let me = i32::try_from(std::process::id()).expect("pid fits in i32");
    let mut found = Vec::new();
    let mut pids = Vec::new();
    for pid in children_of(me) {
        if known.contains(&pid) {
            continue;
        }
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        let state = proc_stat(pid).map(|s| s.state).unwrap_or('?');
        found.push(format!("{pid} ({}, state {state})", comm.trim()));
        kill_pid(pid, libc::SIGKILL);
        pids.push(pid);
    }
    // Reaped in rounds, never blocking: a stuck namespace init (the bug
    // this file hunts) exits only once its other processes are reaped.
    let deadline = std::time::Instant::now() + WAIT;
    while !pids.is_empty() && std::time::Instant::now() < deadline {
        pids.retain(|&pid| {
            let mut st = 0;
            // SAFETY: waitpid on our own child with a valid status pointer.
            unsafe { libc::waitpid(pid, &mut st, libc::WNOHANG | libc::__WALL) == 0 }
        });
        std::thread::sleep(Duration::from_millis(2));
    }
    for pid in pids {
        found.push(format!("{pid} could not be reaped within {WAIT:?}"));
    }
    found
}

/// One way to damage one file.
#[derive(Clone)]
struct Damage {
    /// Relative to the image directory.
    file: PathBuf,
    what: String,
    /// Overwrite 8 bytes (xor 0xa5) at this offset, or cut the file here.
    at: u64,
    cut: bool,
}

impl Damage {
    fn apply(&self, image: &Path) {
        let path = image.join(&self.file);
        let mut bytes = read_bytes(&path);
        let at = usize::try_from(self.at).expect("offset fits");
        if self.cut {
            bytes.truncate(at);
        } else {
            let end = (at + 8).min(bytes.len());
            for b in &mut bytes[at..end] {
                *b ^= 0xa5;
            }
        }
        std::fs::write(&path, bytes).expect("write the damaged file");
    }

    /// A copy of `image` (in `dir/damaged`, replacing the last one) with
    /// this damage.
    fn copy_of(&self, dir: &TestDir, image: &Path) -> PathBuf {
        let case = dir.join("damaged");
        let _ = std::fs::remove_dir_all(&case);
        copy_tree(image, &case);
        self.apply(&case);
        case
    }

    fn describe(&self) -> String {
        format!("{} {}", self.file.display(), self.what)
    }

    /// The name a refusal must mention.
    fn file_name(&self) -> String {
        self.file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    }
}

/// Places to damage in every file of `image` (recursing into a tree's
/// per-process directories).
fn damage_plan(image: &Path) -> Vec<Damage> {
    let mut plan = Vec::new();
    for path in files_under(image) {
        let rel = path
            .strip_prefix(image)
            .expect("under the image")
            .to_path_buf();
        let len = std::fs::metadata(&path).expect("stat image file").len();
        let chunky = read_bytes(&path).starts_with(&tern_wire::chunks::CHUNK_FILE_MAGIC);
        let header = if chunky {
            tern_wire::chunks::FILE_HEADER_LEN
        } else {
            tern_wire::record::RECORD_HEADER_LEN
        } as u64;
        let mut at = vec![
            ("in its header", 0),
            ("at the start of its data", header),
            ("in the middle", len / 2),
            ("in its last bytes", len.saturating_sub(8)),
        ];
        if chunky {
            let chunk = tern_wire::chunks::CHUNK_HEADER_LEN as u64;
            at.push(("in the first chunk's header", header + 8));
            at.push(("in the first chunk's data", header + chunk + 64));
            // The last data chunk ends where the trailer (one header) starts.
            at.push(("at the end of the data", len.saturating_sub(chunk + 8)));
        }
        for (what, off) in at {
            if off < len {
                plan.push(Damage {
                    file: rel.clone(),
                    what: format!("{what} (offset {off})"),
                    at: off,
                    cut: false,
                });
            }
        }
        let mut cuts = vec![len.saturating_sub(1), len / 2, 0];
        cuts.dedup();
        for to in cuts.into_iter().filter(|&to| to < len) {
            plan.push(Damage {
                file: rel.clone(),
                what: format!("cut to {to} of {len} bytes"),
                at: to,
                cut: true,
            });
        }
    }
    plan
}

/// What the sampled refusals took.
#[derive(Default)]
struct Tally {
    cases: usize,
    slowest: Duration,
    slowest_case: String,
}

impl Tally {
    fn add(&mut self, case: &str, took: Duration) {
        self.cases += 1;
        if took > self.slowest {
            self.slowest = took;
            self.slowest_case = case.to_string();
        }
    }

    fn report(&self, test: &str) {
        println!(
            "{test}: {} damaged images refused, slowest {:.0} ms ({})",
            self.cases,
            self.slowest.as_secs_f64() * 1e3,
            self.slowest_case
        );
    }
}

/// `tern restore` of `image` with `damage` applied to a copy: refused
/// within `deadline`, naming the file, leaving no process but `known`.
fn restore_is_refused(
    dir: &TestDir,
    image: &Path,
    damage: &Damage,
    extra: &[&str],
    known: &[i32],
    deadline: Duration,
) -> TernOutput {
    let case = damage.copy_of(dir, image);
    let mut a = args!["restore", "--images", &case];
    a.extend(extra.iter().map(OsString::from));
    let out = run_tern_within(dir, None, &a, Stdio::null(), deadline);
    let left = leftovers(known);
    assert!(
        !out.success(),
        "image with {} was restored\n{}",
        damage.describe(),
        out.describe()
    );
    assert!(
        out.stderr.contains(&damage.file_name()),
        "the refusal of {} must name {}\n{}",
        damage.describe(),
        damage.file_name(),
        out.describe()
    );
    assert!(
        !out.stderr.contains("did not exit within"),
        "a PID namespace's init outlived the refusal of {}\n{}",
        damage.describe(),
        out.describe()
    );
    assert!(
        !out.stderr.contains("panicked"),
        "tern panicked on {}\n{}",
        damage.describe(),
        out.describe()
    );
    assert!(
        left.is_empty(),
        "restore of an image with {} left processes behind: {left:?}\n{}",
        damage.describe(),
        out.describe()
    );
    let _ = std::fs::remove_dir_all(&case);
    out
}

/// The original keeps printing ticks (it was left running, untouched).
fn still_ticking(s: &mut Session, context: &str) {
    assert!(
        s.original.alive(),
        "the original died ({context})\n{}",
        s.diag()
    );
    let last = s.last_seq().unwrap_or(0);
    s.wait_seq(last + 2);
}

/// The case: a 64 MiB counter dumped with `--leave-running`, 8
/// bytes of pages.img overwritten in the middle, restored (into a fresh PID
/// namespace, its pid being taken): refused within 2 s naming pages.img,
/// no puppet and no namespace init left, the original still running.
#[test]
fn damaged_page_file_is_refused_at_once() {
    let test = "damaged_page_file_is_refused_at_once";
    let Some((_one, mut s)) = start(test, "counter64", &[]) else {
        return;
    };
    s.wait_seq(3);
    let images = s.images.clone();
    tern_dump(&s.dir, s.pid, &images, true).assert_ok("tern dump --leave-running");
    let len = std::fs::metadata(images.join(tern_wire::PAGES_FILE))
        .expect("pages.img")
        .len();
    let damage = Damage {
        file: PathBuf::from(tern_wire::PAGES_FILE),
        what: "8 bytes overwritten in the middle".into(),
        at: len / 2,
        cut: false,
    };
    // --log info: the restore must say it went into a fresh PID namespace
    // (the damage is found while pages stream into the puppet there).
    let extra = ["--log", "info"];
    let out = restore_is_refused(&s.dir, &images, &damage, &extra, &[s.pid], REFUSAL_DEADLINE);
    assert!(
        out.stderr.contains("restoring into a fresh PID namespace"),
        "the restore did not go into a fresh PID namespace:\n{}",
        out.describe()
    );
    println!(
        "{test}: refused in {:.0} ms",
        out.elapsed.as_secs_f64() * 1e3
    );
    still_ticking(&mut s, "after the refused restore");
    s.original.kill_and_wait();
}

/// Every damage of the plan, through `tern restore` with the original pid
/// free (the program was dumped and killed): each refused, then the
/// undamaged image restores and the counter goes on.
#[test]
fn damaged_images_are_refused_with_the_pid_free() {
    let test = "damaged_images_are_refused_with_the_pid_free";
    let Some((_one, mut s)) = start(test, "counter64", &["-DBUF_MIB=4"]) else {
        return;
    };
    s.wait_seq(3);
    s.dump();
    assert!(wait_pid_free(s.pid, WAIT), "pid {} not freed", s.pid);
    // No fresh namespace: the pid is free, as a real restore finds it.
    refuse_damages(test, &s, |_| true, &["--pid-ns", "never"], &[]);
    assert!(!pid_exists(s.pid), "pid {} taken after the refusals", s.pid);
    subreaper(false);
    s.restore(Stdio::null());
    s.wait_seq(s.last_before + 5);
    s.finish();
}

/// Every damage of the plan, through `tern restore` while the original
/// still runs (so into a fresh PID namespace): each refused, the original
/// untouched; then the undamaged image restores there.
#[test]
fn damaged_images_are_refused_in_a_fresh_pid_namespace() {
    let test = "damaged_images_are_refused_in_a_fresh_pid_namespace";
    let Some((_one, mut s)) = start(test, "counter64", &["-DBUF_MIB=4"]) else {
        return;
    };
    s.wait_seq(3);
    let images = s.images.clone();
    tern_dump(&s.dir, s.pid, &images, true).assert_ok("tern dump --leave-running");
    refuse_damages(test, &s, |_| true, &[], &[s.pid]);
    still_ticking(&mut s, "after every refused restore");
    subreaper(false);
    let pidfile = s.dir.join("restored.pid");
    let out = tern_restore(&s.dir, &images, Some(&pidfile), Stdio::null());
    out.assert_ok("restore of the undamaged image");
    assert!(
        out.stderr.contains("fresh PID namespace"),
        "{}",
        out.describe()
    );
    let host_pid: i32 = std::fs::read_to_string(&pidfile)
        .expect("pid file")
        .trim()
        .parse()
        .expect("a pid");
    assert!(pid_alive(host_pid), "the restored copy is not running");
    kill_pid(host_pid, libc::SIGKILL);
    assert!(
        wait_gone(host_pid, WAIT),
        "restored copy {host_pid} outlived SIGKILL"
    );
    still_ticking(&mut s, "after the restored copy ended");
    s.original.kill_and_wait();
}

/// A tree (parent and two children over pipes and a shared page) dumped
/// with `--leave-running`: damage in tree.img and in every process's files
/// is refused (three places each), every process of the original tree
/// running on.
#[test]
fn damaged_tree_images_are_refused() {
    let test = "damaged_tree_images_are_refused";
    let Some((_one, mut s)) = start(test, "family", &[]) else {
        return;
    };
    s.wait_seq(5);
    let kids = children_of(s.pid);
    assert_eq!(kids.len(), 2, "the family has two children: {kids:?}");
    let images = s.images.clone();
    tern_dump(&s.dir, s.pid, &images, true).assert_ok("tern dump --leave-running (tree)");
    assert!(
        images.join(tern_wire::TREE_FILE).exists(),
        "not a tree image"
    );
    refuse_damages(test, &s, tree_sample, &[], &[s.pid]);
    // The parent checks both children's answers every tick (and ends one
    // child at tick 60): its ticks going on say the tree goes on.
    still_ticking(&mut s, "after every refused tree restore");
    for k in kids.iter().filter(|k| pid_alive(**k)) {
        let state = proc_stat(*k).map(|st| st.state);
        assert!(
            state != Some('T') && state != Some('t'),
            "child {k} left stopped"
        );
        assert_eq!(
            status_field(*k, "TracerPid").as_deref(),
            Some("0"),
            "child {k} left traced"
        );
    }
    s.original.kill_and_wait();
    // Its children, orphaned, are ours now (subreaper): end and reap them.
    for k in &kids {
        kill_pid(*k, libc::SIGKILL);
    }
    leftovers(&[]);
}

/// A tree copied by pre-copy (`tern dump --pre-copy --leave-running`):
/// damage in any file of its rounds (`round-K/`, `round-K/proc-PID/`),
/// which the final images build on, is refused, every process running on.
#[test]
fn damaged_rounds_of_a_tree_pre_copy_are_refused() {
    let test = "damaged_rounds_of_a_tree_pre_copy_are_refused";
    let Some((_one, mut s)) = start(test, "family", &[]) else {
        return;
    };
    s.wait_seq(5);
    let kids = children_of(s.pid);
    assert_eq!(kids.len(), 2, "the family has two children: {kids:?}");
    let dump = args![
        "dump",
        "--pid",
        s.pid.to_string(),
        "--images",
        &s.images,
        "--pre-copy",
        "--policy",
        "rounds:2",
        "--leave-running"
    ];
    run_tern(&s.dir, &dump, Stdio::null()).assert_ok("tern dump --pre-copy (tree)");
    let in_a_round = |d: &Damage| {
        d.file.starts_with("round-0") || d.file.starts_with("round-1") && tree_sample(d)
    };
    refuse_damages(test, &s, in_a_round, &[], &[s.pid]);
    still_ticking(&mut s, "after every refused restore of the chain");
    s.original.kill_and_wait();
    for k in &kids {
        kill_pid(*k, libc::SIGKILL);
    }
    leftovers(&[]);
}

/// Header, middle and cuts of every file of a tree image (it has many).
fn tree_sample(d: &Damage) -> bool {
    d.cut || d.what.starts_with("in its header") || d.what.starts_with("in the middle")
}

/// Each damage of the plan for `s.images` that `sample` takes, through
/// `tern restore` (`extra`: its arguments; `known`: our children that are
/// not leftovers): each refused.
fn refuse_damages(
    test: &str,
    s: &Session,
    sample: impl Fn(&Damage) -> bool,
    extra: &[&str],
    known: &[i32],
) {
    let mut tally = Tally::default();
    for damage in damage_plan(&s.images).iter().filter(|d| sample(d)) {
        let out = restore_is_refused(&s.dir, &s.images, damage, extra, known, SAMPLE_DEADLINE);
        tally.add(&damage.describe(), out.elapsed);
    }
    tally.report(test);
}

/// The same tree dumped (and so ended): damage refused with the original
/// pids free (`--pid-ns never`), none of them taken after a refusal; then
/// the undamaged image restores the parent with its two children.
#[test]
fn damaged_tree_images_are_refused_with_the_pids_free() {
    let test = "damaged_tree_images_are_refused_with_the_pids_free";
    let Some((_one, mut s)) = start(test, "family", &[]) else {
        return;
    };
    s.compare_maps = false;
    s.wait_seq(5);
    let kids = children_of(s.pid);
    assert_eq!(kids.len(), 2, "the family has two children: {kids:?}");
    s.dump();
    // The children, killed with the tree, were ours to reap (subreaper).
    leftovers(&[]);
    for p in kids.iter().chain([&s.pid]) {
        assert!(wait_pid_free(*p, WAIT), "pid {p} not freed after the dump");
    }
    refuse_damages(test, &s, tree_sample, &["--pid-ns", "never"], &[]);
    for p in kids.iter().chain([&s.pid]) {
        assert!(!pid_exists(*p), "pid {p} taken after the refusals");
    }
    subreaper(false);
    let never = args!["--pid-ns", "never"];
    s.restore_with(Stdio::null(), &never);
    let restored_kids = children_of(s.pid);
    assert_eq!(
        restored_kids, kids,
        "the restored parent has its two children back"
    );
    s.wait_seq(s.last_before + 5);
    s.finish();
}

// ---------------------------------------------------------------------------
// tern serve receiving a damaged round, from a source played by this test

/// What the destination answered to a round.
#[derive(Debug)]
enum Answer {
    Applied,
    Ready,
    Refused(String),
}

/// Send the image in `dir` to the `tern serve` at `addr` (inside network
/// namespace `netns`) as round 0 of a migration of `pid` (`final_round`: a
/// whole image, as `tern migrate --mode simple` sends it); return the
/// answer. A Ready is followed by an Abort and the end of the session.
fn send_round(
    netns: &Netns,
    addr: &str,
    key: &Path,
    dir: &Path,
    pid: i32,
    final_round: bool,
    deadline: Duration,
) -> Result<Answer, String> {
    let ns_path = format!("/run/netns/{}", netns.name);
    let (addr, key, dir) = (addr.to_string(), key.to_path_buf(), dir.to_path_buf());
    // A thread of its own enters the namespace (sockets belong to the
    // namespace they are made in).
    std::thread::spawn(move || -> Result<Answer, String> {
        let ns = std::fs::File::open(&ns_path).map_err(|e| format!("{ns_path}: {e}"))?;
        // SAFETY: setns on an fd we own; only this thread changes namespace.
        if unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&ns), libc::CLONE_NEWNET) } != 0 {
            return Err(format!("setns: {}", std::io::Error::last_os_error()));
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        rt.block_on(async {
            tokio::time::timeout(deadline, play_source(&addr, &key, &dir, pid, final_round))
                .await
                .map_err(|_| format!("no answer within {deadline:?}: the destination hangs"))?
        })
    })
    .join()
    .map_err(|_| "the source thread panicked".to_string())?
}

async fn play_source(
    addr: &str,
    key: &Path,
    dir: &Path,
    pid: i32,
    final_round: bool,
) -> Result<Answer, String> {
    let key = net::Key::load(key).map_err(|e| e.to_string())?;
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    let (mut tx, mut rx) = net::handshake(stream, &key, true)
        .await
        .map_err(|e| e.to_string())?;
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    tx.send(&Message::Hello {
        protocol: net::PROTOCOL_VERSION,
        tern_version: "test".into(),
        pid,
        comm: "counter64".into(),
        kernel_release: release.trim().to_string(),
        session: net::new_session_id().map_err(|e| e.to_string())?,
    })
    .await
    .map_err(|e| e.to_string())?;
    match rx.recv().await.map_err(|e| e.to_string())? {
        Message::Welcome { .. } => {}
        other => return Err(format!("expected Welcome, got {other:?}")),
    }
    let mut files = Vec::new();
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map_err(|e| e.to_string())?
        .flatten()
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .collect();
    names.sort();
    for name in names {
        let bytes = read_bytes(&dir.join(&name));
        let mut offset = 0usize;
        // At least one piece, even for an empty file.
        loop {
            let end = (offset + net::FILE_PIECE).min(bytes.len());
            tx.send(&Message::FileData {
                round: 0,
                name: name.clone(),
                offset: offset as u64,
                data: bytes[offset..end].to_vec(),
            })
            .await
            .map_err(|e| e.to_string())?;
            offset = end;
            if offset >= bytes.len() {
                break;
            }
        }
        files.push(FileSummary {
            name,
            size: bytes.len() as u64,
            xxh3: xxhash_rust::xxh3::xxh3_64(&bytes),
        });
    }
    tx.send(&Message::RoundDone {
        round: 0,
        final_round,
        files,
        pages_follow: false,
    })
    .await
    .map_err(|e| e.to_string())?;
    let answer = match rx.recv().await.map_err(|e| e.to_string())? {
        Message::RoundApplied { .. } => Answer::Applied,
        Message::Ready { .. } => Answer::Ready,
        Message::Refused { reason } => Answer::Refused(reason),
        other => return Err(format!("unexpected {other:?}")),
    };
    if !matches!(answer, Answer::Refused(_)) {
        tx.send(&Message::Abort {
            reason: "test: the round was only a probe".into(),
        })
        .await
        .map_err(|e| e.to_string())?;
        // The destination discards and hangs up (or says it refused).
        while let Ok(m) = rx.recv().await {
            if matches!(m, Message::Refused { .. }) {
                break;
            }
        }
    }
    Ok(answer)
}

/// `tern serve` given damaged rounds: a damaged first round of the warm
/// standby (a pre-dump) and a damaged whole image as the final round (the
/// program's pid taken here: a fresh PID namespace). Each is refused
/// naming the file, the daemon has no child left and serves the next
/// migration; the undamaged rounds are accepted.
#[test]
fn serve_refuses_damaged_rounds() {
    let test = "serve_refuses_damaged_rounds";
    let Some((_one, mut s)) = start(test, "counter64", &["-DBUF_MIB=4"]) else {
        return;
    };
    s.wait_seq(3);
    let (pre, whole) = (s.dir.join("pre"), s.dir.join("whole"));
    let pid = s.pid.to_string();
    let pre_dump = args!["pre-dump", "--pid", &pid, "--images", &pre];
    run_tern(&s.dir, &pre_dump, Stdio::null()).assert_ok("tern pre-dump");
    tern_dump(&s.dir, s.pid, &whole, true).assert_ok("tern dump --leave-running");

    let ns = Netns::new("dmg").expect("network namespace");
    let key = keygen(&s.dir, "key");
    let work = s.dir.join("work");
    std::fs::create_dir_all(&work).expect("work dir");
    let work_arg = work.to_string_lossy().into_owned();
    let mut serve = start_serve_in(&s.dir, &ns, "127.0.0.1:0", &key, &["--work-dir", &work_arg]);
    let ready = std::fs::read_dir(s.dir.path())
        .expect("test dir")
        .flatten()
        .find(|e| e.file_name().to_string_lossy().starts_with("serve-ready-"))
        .expect("ready file");
    let addr = std::fs::read_to_string(ready.path()).expect("ready file");
    let addr = addr.trim();

    let mut tally = Tally::default();
    for (image, final_round) in [(&pre, false), (&whole, true)] {
        let plan = damage_plan(image);
        let sample = plan.iter().filter(|d| {
            d.file_name() == tern_wire::PAGES_FILE || d.cut || d.what.starts_with("in the middle")
        });
        for damage in sample {
            let case = damage.copy_of(&s.dir, image);
            let t = std::time::Instant::now();
            let answer = send_round(&ns, addr, &key, &case, s.pid, final_round, SAMPLE_DEADLINE)
                .unwrap_or_else(|e| {
                    panic!(
                        "round with {}: {e}\n{}",
                        damage.describe(),
                        tail(&s.dir.join("serve.stderr"), 30)
                    )
                });
            tally.add(&damage.describe(), t.elapsed());
            match answer {
                Answer::Refused(reason) => assert!(
                    reason.contains(&damage.file_name()),
                    "the refusal of {} must name {}: {reason}",
                    damage.describe(),
                    damage.file_name()
                ),
                other => panic!("a round with {} was accepted: {other:?}", damage.describe()),
            }
            let stray = children_of(serve.pid());
            assert!(
                stray.is_empty(),
                "tern serve kept processes after refusing {}: {stray:?}",
                damage.describe()
            );
            assert!(serve.alive(), "tern serve died on {}", damage.describe());
        }
    }
    tally.report(test);
    // The undamaged rounds go through (then the source aborts).
    for (image, final_round) in [(&pre, false), (&whole, true)] {
        let answer = send_round(&ns, addr, &key, image, s.pid, final_round, SAMPLE_DEADLINE)
            .unwrap_or_else(|e| panic!("undamaged round: {e}"));
        assert!(
            matches!(answer, Answer::Applied | Answer::Ready),
            "the undamaged round (final: {final_round}) was refused: {answer:?}"
        );
    }
    wait_until(
        WAIT,
        "tern serve to discard the aborted migrations",
        || children_of(serve.pid()).is_empty().then_some(()),
        || tail(&s.dir.join("serve.stderr"), 30),
    );
    still_ticking(&mut s, "after every damaged round");
    serve.kill_and_wait();
    let left = leftovers(&[s.pid]);
    assert!(left.is_empty(), "processes left behind: {left:?}");
    s.original.kill_and_wait();
}
