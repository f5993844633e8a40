//! The tests that need another kernel: `tests/vm/run` boots Debian's stock
//! kernel (which has `CONFIG_MEM_SOFT_DIRTY`, unlike our machines') in qemu
//! under TCG with a busybox initramfs holding this build's `tern`, and runs
//! the soft-dirty tracker tests inside (`tests/vm/guest.sh`).
//!
//! The script prints `SKIP: <why>` and succeeds where qemu, the kernel or
//! busybox is missing, except under `CI` (where `.ci/run` installs them), and
//! fails on any failed test or timeout. Its output (the guest's console and
//! one PASS/FAIL line per VM test) is printed here; see it with
//! `cargo test --test vm -- --nocapture`.

use std::path::Path;
use std::process::Command;

#[test]
fn soft_dirty_tracker_in_a_vm_with_debians_kernel() {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vm/run");
    let output = Command::new("bash")
        .arg(&script)
        .env("TERN_BIN", env!("CARGO_BIN_EXE_tern"))
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}");
    if !stderr.is_empty() {
        eprintln!("{stderr}");
    }
    if let Some(skip) = stdout.lines().find(|l| l.starts_with("SKIP:")) {
        eprintln!("soft_dirty_tracker_in_a_vm_with_debians_kernel: {skip}");
    }
    assert!(
        output.status.success(),
        "{} failed ({}); its output is above",
        script.display(),
        output.status
    );
}
