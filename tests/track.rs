//! Root-run tests of the dirty-page trackers (`tern_engine::track`) and of
//! `tern track`.
//!
//! The workload `tests/workloads/dirty_pages.c` writes exactly the pages it
//! is told to through a pipe and answers when done, so each round's ground
//! truth is known: the tests call the tracker API directly between commands
//! (deterministic, no timing), and run the `tern track` command against a
//! workload that writes on its own to check what it leaves behind.

mod common;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::process::{ChildStdin, Command, Stdio};
use std::sync::mpsc;

use common::*;
use tern_engine::track::{self, DirtySet, DirtyTracker, TrackerKind};

const BUF_PAGES: u64 = 4096; // 16 MiB

/// Pages of the workload's own bookkeeping a round may dirty besides the ones
/// it was told to write: stack, its static line buffers, libc data.
const NOISE_PAGES: u64 = 24;

fn page() -> u64 {
    track::page_size()
}

/// `dirty_pages` driven through a pipe.
struct Workload {
    // Field order is drop order: the guard kills the process first.
    guard: ProcGuard,
    stdin: ChildStdin,
    lines: mpsc::Receiver<String>,
    buf: u64,
    _dir: TestDir,
}

impl Workload {
    fn start(test: &str, args: &[&str]) -> Workload {
        let dir = TestDir::new(test);
        let exe = compile_c(&dir, "dirty_pages");
        let mut command = Command::new(&exe);
        command
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        // SAFETY: the closure runs between fork and exec and only makes the
        // async-signal-safe close_range syscall (fds 0-2 only, as in common).
        unsafe {
            command.pre_exec(|| {
                libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
                Ok(())
            });
        }
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", exe.display()));
        let stdin = child.stdin.take().expect("stdin pipe");
        let stdout = child.stdout.take().expect("stdout pipe");
        let guard = ProcGuard::child(child);
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut w = Workload {
            guard,
            stdin,
            lines,
            buf: 0,
            _dir: dir,
        };
        let first = w.line();
        let addr = first
            .strip_prefix("buf ")
            .and_then(|r| r.split_whitespace().next())
            .unwrap_or_else(|| panic!("unexpected first line {first:?}"));
        w.buf = parse_hex(addr);
        assert_eq!(w.line(), "ready");
        w
    }

    fn pid(&self) -> i32 {
        self.guard.pid()
    }

    fn line(&self) -> String {
        self.lines
            .recv_timeout(WAIT)
            .unwrap_or_else(|e| panic!("workload {} said nothing for {WAIT:?}: {e}", self.pid()))
    }

    /// Send one command; return its answer.
    fn cmd(&mut self, c: &str) -> String {
        writeln!(self.stdin, "{c}").expect("write to workload");
        self.stdin.flush().expect("flush workload stdin");
        let answer = self.line();
        assert!(
            !answer.starts_with("error"),
            "workload answered {answer:?} to {c:?}"
        );
        answer
    }

    /// Write buffer pages `idx`; waits until they are written.
    fn write_pages(&mut self, idx: &[u64]) {
        let mut c = String::from("w");
        for i in idx {
            c.push_str(&format!(" {i}"));
        }
        assert_eq!(self.cmd(&c), format!("ok {}", idx.len()));
    }
}

fn parse_hex(s: &str) -> u64 {
    u64::from_str_radix(s.trim_start_matches("0x"), 16)
        .unwrap_or_else(|e| panic!("bad address {s:?}: {e}"))
}

/// Page indices of `set` within `[start, start + pages * page)`.
fn indices_in(set: &DirtySet, start: u64, pages: u64) -> BTreeSet<u64> {
    let end = start + pages * page();
    set.page_addrs()
        .filter(|&a| a >= start && a < end)
        .map(|a| (a - start) / page())
        .collect()
}

/// Deterministic pseudo-random distinct indices below `n`.
fn scattered(count: usize, n: u64, seed: u64) -> Vec<u64> {
    let mut x = seed;
    let mut out = BTreeSet::new();
    while out.len() < count {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        out.insert((x >> 33) % n);
    }
    out.into_iter().collect()
}

fn describe(t: &dyn DirtyTracker, set: &DirtySet) -> String {
    let mut s = format!("{} reported {} pages:\n", t.name(), set.total_pages());
    for v in set.per_vma(t.maps()) {
        s.push_str(&format!(
            "  {:x}-{:x} {:?}: {}\n",
            v.start, v.end, v.name, v.pages
        ));
    }
    s
}

/// Does the kernel config say soft-dirty is compiled out?
fn soft_dirty_compiled_out() -> Option<bool> {
    let out = Command::new("zcat").arg("/proc/config.gz").output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    if text.contains("# CONFIG_MEM_SOFT_DIRTY is not set") {
        Some(true)
    } else if text.contains("CONFIG_MEM_SOFT_DIRTY=y") {
        Some(false)
    } else {
        None
    }
}

/// Open `kind`, or for soft-dirty on a kernel without it check the refusal
/// and return None.
fn open_or_refused(pid: i32, kind: TrackerKind) -> Option<Box<dyn DirtyTracker>> {
    match track::open_tracker(pid, kind) {
        Ok(t) => {
            if kind == TrackerKind::SoftDirty {
                assert_ne!(
                    soft_dirty_compiled_out(),
                    Some(true),
                    "soft-dirty tracker opened although the kernel config lacks it"
                );
            }
            Some(t)
        }
        Err(e) if kind == TrackerKind::SoftDirty => {
            let msg = e.to_string();
            assert!(
                msg.contains("CONFIG_MEM_SOFT_DIRTY not set"),
                "soft-dirty refusal must name CONFIG_MEM_SOFT_DIRTY: {msg}"
            );
            assert_ne!(
                soft_dirty_compiled_out(),
                Some(false),
                "soft-dirty refused although the kernel has it: {msg}"
            );
            eprintln!("soft-dirty refused as expected here: {msg}");
            None
        }
        Err(e) => panic!("open {kind} tracker on {pid}: {e}"),
    }
}

fn assert_running_untraced(pid: i32) {
    let state = proc_stat(pid).map(|s| s.state);
    assert!(
        matches!(state, Some('R') | Some('S')),
        "process {pid} should run or sleep, state {state:?}"
    );
    assert_eq!(status_field(pid, "TracerPid").as_deref(), Some("0"));
}

/// Every round writes a known set of buffer pages; the tracker must report
/// exactly that set within the buffer and at most NOISE_PAGES elsewhere.
fn accuracy(test: &str, kind: TrackerKind, args: &[&str]) {
    if !root_or_skip(test) {
        return;
    }
    let mut w = Workload::start(test, args);
    let pid = w.pid();
    let Some(mut t) = open_or_refused(pid, kind) else {
        assert_running_untraced(pid);
        return;
    };
    assert_running_untraced(pid);
    let schedule: Vec<(&str, Vec<u64>)> = vec![
        ("idle", vec![]),
        ("first page", vec![0]),
        ("edges", vec![1, 2, 3, 100, 511, 512, BUF_PAGES - 1]),
        ("scattered", scattered(300, BUF_PAGES, 7)),
        ("contiguous", (1000..1600).collect()),
        ("idle again", vec![]),
        ("every 7th", (0..BUF_PAGES).step_by(7).collect()),
        ("same page", vec![42]),
        ("same page again", vec![42]),
        ("all", (0..BUF_PAGES).collect()),
    ];
    for (round, (what, idx)) in schedule.iter().enumerate() {
        // "all" is too long for one line: send it in parts.
        for part in idx.chunks(1000) {
            w.write_pages(part);
        }
        let set = t
            .collect()
            .unwrap_or_else(|e| panic!("{kind} round {round} ({what}): {e}"));
        let got = indices_in(&set, w.buf, BUF_PAGES);
        let want: BTreeSet<u64> = idx.iter().copied().collect();
        if got != want {
            let missing: Vec<_> = want.difference(&got).take(20).collect();
            let extra: Vec<_> = got.difference(&want).take(20).collect();
            panic!(
                "{kind} round {round} ({what}): buffer pages differ: {} wanted, {} reported; missing {missing:?}, extra {extra:?}\n{}",
                want.len(),
                got.len(),
                describe(t.as_ref(), &set)
            );
        }
        let other = set.total_pages() - got.len() as u64;
        assert!(
            other <= NOISE_PAGES,
            "{kind} round {round} ({what}): {other} pages outside the buffer\n{}",
            describe(t.as_ref(), &set)
        );
        assert_running_untraced(pid);
    }
    t.finish().expect("finish");
    drop(t);
    assert_clean(pid);
    w.cmd("w 1"); // still alive and answering
}

/// Nothing of tern in `pid`: no userfaultfd fd, no uffd VmFlags, no page
/// still write-protected (pagemap bit 57), not traced.
fn assert_clean(pid: i32) {
    let fds = fd_targets(pid);
    assert!(
        !fds.values().any(|t| t.contains("userfaultfd")),
        "userfaultfd left in {pid}: {fds:?}"
    );
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).expect("read smaps");
    for l in smaps.lines().filter(|l| l.starts_with("VmFlags:")) {
        let flags: Vec<&str> = l.split_whitespace().collect();
        assert!(
            !flags.iter().any(|f| matches!(*f, "uw" | "um" | "ui")),
            "uffd VmFlags left in {pid}: {l}"
        );
    }
    let pagemap = std::fs::File::open(format!("/proc/{pid}/pagemap")).expect("open pagemap");
    for m in read_maps(pid) {
        if m.path == "[vsyscall]" {
            continue;
        }
        let pages = ((m.end - m.start) / page()) as usize;
        let mut raw = vec![0u8; pages * 8];
        use std::os::unix::fs::FileExt;
        pagemap
            .read_exact_at(&mut raw, m.start / page() * 8)
            .expect("read pagemap");
        let protected = raw
            .chunks_exact(8)
            .filter(|c| u64::from_le_bytes((*c).try_into().unwrap()) & (1 << 57) != 0)
            .count();
        assert_eq!(
            protected, 0,
            "{protected} pages still uffd-wp protected in {m}"
        );
    }
    assert_running_untraced(pid);
}

#[test]
fn uffd_wp_reports_exactly_the_written_pages() {
    accuracy("track-acc-uffd", TrackerKind::UffdWp, &["4096"]);
}

#[test]
fn uffd_wp_is_exact_within_transparent_huge_pages() {
    accuracy("track-acc-uffd-thp", TrackerKind::UffdWp, &["4096", "thp"]);
}

#[test]
fn hash_is_exact_within_transparent_huge_pages() {
    accuracy("track-acc-hash-thp", TrackerKind::Hash, &["4096", "thp"]);
}

#[test]
fn hash_reports_exactly_the_written_pages() {
    accuracy("track-acc-hash", TrackerKind::Hash, &["4096"]);
}

#[test]
fn soft_dirty_reports_exactly_the_written_pages_or_refuses() {
    accuracy("track-acc-sd", TrackerKind::SoftDirty, &["4096"]);
}

#[test]
fn auto_picks_a_working_tracker() {
    accuracy("track-acc-auto", TrackerKind::Auto, &["4096"]);
}

/// Regions mapped, written, moved, protected and unmapped between rounds.
fn map_changes(test: &str, kind: TrackerKind) {
    if !root_or_skip(test) {
        return;
    }
    let mut w = Workload::start(test, &["256"]);
    let pid = w.pid();
    let Some(mut t) = open_or_refused(pid, kind) else {
        return;
    };
    let exact = kind != TrackerKind::Hash;
    let collect = |t: &mut Box<dyn DirtyTracker>, what: &str| -> DirtySet {
        t.collect()
            .unwrap_or_else(|e| panic!("{kind} after {what}: {e}"))
    };
    let region =
        |answer: &str| -> u64 { parse_hex(answer.split_whitespace().nth(2).expect("address")) };

    collect(&mut t, "start");
    // A new region: all its pages are reported.
    let r0 = region(&w.cmd("m 64"));
    let set = collect(&mut t, "mmap");
    assert_eq!(
        indices_in(&set, r0, 64),
        (0..64).collect(),
        "new region\n{}",
        describe(t.as_ref(), &set)
    );
    assert!(t.stats().new_vmas >= 1, "{:?}", t.stats());
    // Then it is tracked like the rest.
    assert_eq!(w.cmd("W 0 5 6"), "ok 2");
    let set = collect(&mut t, "write to new region");
    assert_eq!(
        indices_in(&set, r0, 64),
        [5, 6].into(),
        "{}",
        describe(t.as_ref(), &set)
    );
    // One region appears, one vanishes.
    let r1 = region(&w.cmd("m 32"));
    w.cmd("u 0");
    let set = collect(&mut t, "mmap + munmap");
    assert_eq!(indices_in(&set, r1, 32), (0..32).collect());
    assert!(
        indices_in(&set, r0, 64).is_empty(),
        "unmapped region reported\n{}",
        describe(t.as_ref(), &set)
    );
    assert!(t.stats().vanished_vmas >= 1, "{:?}", t.stats());
    // A region that appears and vanishes within one round: no error, nothing reported.
    let r2 = region(&w.cmd("m 16"));
    w.cmd("u 0");
    let set = collect(&mut t, "short-lived region");
    assert!(
        indices_in(&set, r2, 16).is_empty(),
        "{}",
        describe(t.as_ref(), &set)
    );
    // mremap moves a region (and drops its uffd registration): reported whole
    // at its new address, then tracked again.
    let moved = w.cmd("r 1");
    let r1m = parse_hex(moved.split_whitespace().nth(2).expect("address"));
    assert_ne!(r1m, r1);
    let set = collect(&mut t, "mremap");
    assert_eq!(
        indices_in(&set, r1m, 32),
        (0..32).collect(),
        "moved region\n{}",
        describe(t.as_ref(), &set)
    );
    assert!(indices_in(&set, r1, 32).is_empty());
    assert_eq!(w.cmd("W 1 3"), "ok 1");
    let set = collect(&mut t, "write to moved region");
    assert_eq!(
        indices_in(&set, r1m, 32),
        [3].into(),
        "{}",
        describe(t.as_ref(), &set)
    );
    // PROT_NONE and back, then one write.
    w.cmd("p 1 0");
    let set = collect(&mut t, "mprotect none");
    assert!(
        indices_in(&set, r1m, 32).is_empty(),
        "{}",
        describe(t.as_ref(), &set)
    );
    w.cmd("p 1 3");
    assert_eq!(w.cmd("W 1 7"), "ok 1");
    let set = collect(&mut t, "mprotect rw + write");
    let got = indices_in(&set, r1m, 32);
    if exact {
        assert_eq!(got, [7].into(), "{}", describe(t.as_ref(), &set));
    } else {
        // hash forgets a PROT_NONE VMA and sees it again as new: all of it.
        assert!(got.contains(&7), "{}", describe(t.as_ref(), &set));
    }
    // The buffer itself was never written.
    let set = collect(&mut t, "idle");
    assert!(indices_in(&set, w.buf, 256).is_empty());
    assert!(
        set.total_pages() <= NOISE_PAGES,
        "{}",
        describe(t.as_ref(), &set)
    );
    t.finish().expect("finish");
    drop(t);
    assert_clean(pid);
}

#[test]
fn uffd_wp_follows_mappings_that_come_and_go() {
    map_changes("track-maps-uffd", TrackerKind::UffdWp);
}

#[test]
fn hash_follows_mappings_that_come_and_go() {
    map_changes("track-maps-hash", TrackerKind::Hash);
}

/// The maps and VmFlags of `pid`, for before/after comparison.
fn smaps_flags(pid: i32) -> Vec<String> {
    std::fs::read_to_string(format!("/proc/{pid}/smaps"))
        .expect("read smaps")
        .lines()
        .filter(|l| l.starts_with("VmFlags:"))
        .map(str::to_string)
        .collect()
}

fn track_cli_leaves_nothing(test: &str, tracker: &str) {
    if !root_or_skip(test) {
        return;
    }
    let dir = TestDir::new(test);
    let exe = compile_c(&dir, "dirty_pages");
    let out = dir.join("workload.out");
    let mut w = spawn_redirected(
        &Cmd::new(exe).arg("1024").arg("auto"),
        Stdio::null(),
        &out,
        &dir.join("workload.err"),
    );
    let pid = w.pid();
    wait_until(
        WAIT,
        "workload ready",
        || read_bytes(&out).ends_with(b"ready\n").then_some(()),
        || tail(&out, 5),
    );
    let fds_before = fd_targets(pid);
    let maps_before = normalized_maps(pid);
    let flags_before = smaps_flags(pid);
    let csv = dir.join("rounds.csv");
    let a = args![
        "track",
        "--pid",
        pid.to_string(),
        "--tracker",
        tracker,
        "--rounds",
        "3",
        "--interval-ms",
        "100",
        "--json",
        "--csv",
        &csv
    ];
    let r = run_tern(&dir, &a, Stdio::null());
    r.assert_ok("tern track");
    let records: Vec<serde_json::Value> = r
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON line {l:?}: {e}")))
        .collect();
    assert_eq!(records.len(), 3, "{}", r.describe());
    for (i, rec) in records.iter().enumerate() {
        assert_eq!(rec["round"], i as u64 + 1);
        assert_eq!(rec["tracker"], tracker);
        let pages = rec["dirty_pages"].as_u64().expect("dirty_pages");
        assert_eq!(rec["dirty_bytes"].as_u64(), Some(pages * page()));
        // The workload writes one page per ms.
        assert!(
            pages >= 20,
            "round {i}: only {pages} dirty pages\n{}",
            r.describe()
        );
        assert_eq!(rec["hash"].as_str().map(str::len), Some(16));
        for f in ["elapsed_ms", "stopped_ms", "collect_ms"] {
            assert!(rec[f].as_f64().is_some(), "{f} missing: {rec}");
        }
        if tracker == "uffd-wp" || tracker == "hash" {
            assert_eq!(rec["stopped_ms"].as_f64(), Some(0.0));
        }
        let vma_sum: u64 = rec["vmas"]
            .as_array()
            .expect("vmas")
            .iter()
            .map(|v| v["dirty_pages"].as_u64().unwrap_or(0))
            .sum();
        assert_eq!(vma_sum, pages, "per-VMA breakdown does not add up: {rec}");
    }
    let csv_text = std::fs::read_to_string(&csv).expect("csv written");
    assert_eq!(csv_text.lines().count(), 4, "{csv_text}");
    assert!(csv_text.starts_with("round,tracker,dirty_pages,dirty_bytes,hash,elapsed_ms"));

    assert!(w.alive(), "workload died");
    assert_eq!(fd_targets(pid), fds_before, "fds changed");
    let maps_after = normalized_maps(pid);
    assert_eq!(
        maps_after,
        maps_before,
        "maps changed:\n{}",
        maps_diff(&maps_before, &maps_after)
    );
    assert_eq!(smaps_flags(pid), flags_before, "VmFlags changed");
    assert_clean(pid);
}

#[test]
fn track_uffd_wp_cli_leaves_nothing_behind() {
    track_cli_leaves_nothing("track-cli-uffd", "uffd-wp");
}

#[test]
fn track_hash_cli_leaves_nothing_behind() {
    track_cli_leaves_nothing("track-cli-hash", "hash");
}

#[test]
fn track_soft_dirty_cli_refuses_clearly_here() {
    let test = "track-cli-sd";
    if !root_or_skip(test) {
        return;
    }
    if soft_dirty_compiled_out() != Some(true) {
        skip_or_panic(
            test,
            "this kernel has soft-dirty; the refusal is not testable here",
        );
        return;
    }
    let dir = TestDir::new(test);
    let exe = compile_c(&dir, "dirty_pages");
    let out = dir.join("workload.out");
    let mut w = spawn_redirected(
        &Cmd::new(exe).arg("64").arg("auto"),
        Stdio::null(),
        &out,
        &dir.join("err"),
    );
    let pid = w.pid();
    wait_until(
        WAIT,
        "workload ready",
        || read_bytes(&out).ends_with(b"ready\n").then_some(()),
        || tail(&out, 5),
    );
    let a = args![
        "track",
        "--pid",
        pid.to_string(),
        "--tracker",
        "soft-dirty",
        "--rounds",
        "1",
        "--interval-ms",
        "10"
    ];
    let r = run_tern(&dir, &a, Stdio::null());
    assert!(
        !r.success(),
        "soft-dirty must refuse here: {}",
        r.describe()
    );
    assert!(
        r.stderr.contains("CONFIG_MEM_SOFT_DIRTY not set"),
        "{}",
        r.describe()
    );
    assert!(r.stdout.trim().is_empty(), "{}", r.describe());
    assert!(w.alive());
    assert_clean(pid);
}

#[test]
fn tracker_reports_a_vanished_process() {
    let test = "track-exit";
    if !root_or_skip(test) {
        return;
    }
    let mut w = Workload::start(test, &["64"]);
    let pid = w.pid();
    let mut t = track::open_tracker(pid, TrackerKind::UffdWp).expect("open");
    writeln!(w.stdin, "q").expect("quit");
    w.stdin.flush().expect("flush");
    assert!(w.guard.wait_exit(WAIT).is_some(), "workload did not exit");
    match t.collect() {
        Err(tern_engine::EngineError::NoProcess { pid: p }) => assert_eq!(p, pid),
        other => panic!("expected NoProcess, got {other:?}"),
    }
    t.finish().expect("finish after exit");
}
