//! `tern demo`: a sample stateful program dumped and restored on this
//! machine, showing that it continues where it stopped.

use anyhow::{bail, Context, Result};
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The sample program: a counter with 32 MiB of state it keeps verifying.
pub fn workload(out: &Path) -> Result<()> {
    let mut log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(out)
        .with_context(|| format!("open {}", out.display()))?;
    let mut state: Vec<u64> = (0..(32u64 << 20) / 8).map(|i| i * 2654435761).collect();
    let mut tick: u64 = 0;
    loop {
        tick += 1;
        let i = (tick as usize * 7919) % state.len();
        // Every word was written at start-up: a lost page shows here.
        if state[i] != (i as u64) * 2654435761 {
            writeln!(log, "CORRUPT at {i}")?;
            std::process::exit(3);
        }
        state[0] = tick;
        writeln!(log, "tick {tick}")?;
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn ticks(path: &Path) -> Vec<u64> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.strip_prefix("tick ")?.parse().ok())
        .collect()
}

fn wait_ticks(path: &Path, at_least: u64) -> Result<u64> {
    let t0 = Instant::now();
    loop {
        if let Some(&last) = ticks(path).last() {
            if last >= at_least {
                return Ok(last);
            }
        }
        if t0.elapsed() > Duration::from_secs(20) {
            bail!("the sample program made no progress in {}", path.display());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn run(dir: Option<PathBuf>) -> Result<()> {
    let dir = match dir {
        Some(d) => d,
        None => std::env::temp_dir().join(format!("tern-demo-{}", std::process::id())),
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    let log = dir.join("counter.log");
    let images = dir.join("image");
    let _ = std::fs::remove_file(&log);
    let exe = std::env::current_exe().context("find the tern executable")?;
    let tern = |args: &[&str]| -> Result<()> {
        let st = Command::new(&exe).args(args).status()?;
        if !st.success() {
            bail!("tern {} failed", args.join(" "));
        }
        Ok(())
    };

    println!(
        "1. starting the sample program (a counter with 32 MiB of state), log: {}",
        log.display()
    );
    let mut command = Command::new(&exe);
    command
        .arg("demo-workload")
        .arg(&log)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // Only fds 0-2: whatever this shell leaked (job-control pipes) would be
    // refused by the dump.
    // SAFETY: runs between fork and exec; only the async-signal-safe
    // close_range syscall.
    unsafe {
        command.pre_exec(|| {
            libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
            Ok(())
        });
    }
    let mut child = command.spawn().context("start the sample program")?;
    let pid = child.id() as i32;
    let before = wait_ticks(&log, 5)?;
    println!("   pid {pid} is counting: tick {before}");

    println!("2. tern dump --pid {pid} --images {}", images.display());
    let dumped = tern(&[
        "dump",
        "--pid",
        &pid.to_string(),
        "--images",
        &images.to_string_lossy(),
    ]);
    if dumped.is_err() {
        let _ = child.kill();
        let _ = child.wait();
    }
    dumped?;
    child.wait()?;
    let last = *ticks(&log).last().unwrap_or(&0);
    println!("   the program is gone; its last line was tick {last}");

    println!("3. tern restore --images {}", images.display());
    tern(&["restore", "--images", &images.to_string_lossy()])?;
    let after = wait_ticks(&log, last + 5)?;
    let all = ticks(&log);
    let continuous = all.windows(2).all(|w| w[1] == w[0] + 1);
    println!(
        "   pid {pid} runs again and counts on: tick {last} -> {after}; sequence {}",
        if continuous {
            "has no gap and no repeat"
        } else {
            "IS BROKEN"
        }
    );
    // SAFETY: plain syscall; the pid is the program this demo started.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    println!(
        "4. stopped the restored program (pid {pid}); files kept in {}",
        dir.display()
    );
    if !continuous {
        bail!("the restored program did not continue exactly");
    }
    Ok(())
}
