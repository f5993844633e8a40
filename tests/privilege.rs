//! Root-run tests: a restore never gives a program more privilege than its
//! image had, and never runs it with credentials other than the image's.
//!
//! - A program started unprivileged by `setpriv` (uid/gid 1000, two
//!   groups, one capability in its inheritable, permitted, effective and
//!   ambient sets, a bounding set of two, no_new_privs) is dumped and
//!   restored: every credential line of /proc/PID/status reads the same as
//!   before (the session's identity check compares them), and it runs on.
//! - Before that, the same image is refused by a `tern restore` whose own
//!   bounding set lacks one of the image's capabilities (it could not
//!   reproduce it), and while the image directory or one of its files could
//!   have been written by someone other than root.
//! - A program whose threads hold different credentials is refused at dump,
//!   naming the thread, and runs on untouched.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};

use common::*;

/// `tern restore` of `s.images` that must fail saying `must_say`, leaving
/// no process under the image's pid.
fn assert_restore_refused(s: &Session, out: &std::process::Output, must_say: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "restore succeeded: {stderr}");
    assert!(
        stderr.contains(must_say),
        "the refusal must say {must_say:?}: {stderr}"
    );
    assert!(
        !pid_alive(s.pid),
        "a refused restore left a process under pid {}",
        s.pid
    );
}

fn restore_cmd(s: &Session, prefix: &[&str]) -> std::process::Output {
    let (program, pre) = match prefix.split_first() {
        Some((p, rest)) => (std::path::PathBuf::from(p), rest.to_vec()),
        None => (tern_bin(), Vec::new()),
    };
    let mut cmd = Command::new(program);
    cmd.args(pre);
    if !prefix.is_empty() {
        cmd.arg(tern_bin());
    }
    cmd.arg("restore")
        .arg("--images")
        .arg(&s.images)
        .stdin(Stdio::null())
        .output()
        .expect("run tern restore")
}

#[test]
fn unprivileged_program_keeps_exactly_its_credentials() {
    let test = "unprivileged_program_keeps_exactly_its_credentials";
    if !root_or_skip(test) {
        return;
    }
    let dir = TestDir::new(test);
    let exe = compile_c(&dir, "sleeper");
    let cmd = Cmd::new("setpriv")
        .arg("--reuid=1000")
        .arg("--regid=1000")
        .arg("--groups=1000,27")
        .arg("--inh-caps=-all,+net_bind_service")
        .arg("--ambient-caps=-all,+net_bind_service")
        .arg("--bounding-set=-all,+net_bind_service,+kill")
        .arg("--no-new-privs")
        .arg("--")
        .arg(&exe)
        .arg("rel");
    let mut s = Session::start(dir, cmd, Stdio::null());
    s.wait_seq(3);
    let before = creds_lines(s.pid);
    assert!(
        before.iter().any(|l| l == "Uid: 1000 1000 1000 1000")
            && before.iter().any(|l| l == "CapAmb: 0000000000000400"),
        "setpriv did not set up the credentials: {before:?}"
    );
    s.dump();

    // A tern that could not give it cap_net_bind_service refuses.
    let out = restore_cmd(&s, &["setpriv", "--bounding-set=-net_bind_service", "--"]);
    assert_restore_refused(&s, &out, "cap_net_bind_service");

    // An image others could have written is refused, naming the file.
    let mode = |p: &std::path::Path, m: u32| {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).expect("chmod")
    };
    mode(&s.images, 0o775);
    let out = restore_cmd(&s, &[]);
    assert_restore_refused(&s, &out, "writable by group or others");
    mode(&s.images, 0o700);
    let core = s.images.join("core.img");
    std::os::unix::fs::chown(&core, Some(1000), None).expect("chown");
    let out = restore_cmd(&s, &[]);
    assert_restore_refused(&s, &out, "owned by uid 1000");
    std::os::unix::fs::chown(&core, Some(0), None).expect("chown");

    // The real restore: same credentials (checked by the identity
    // comparison of the session, every line of before), and it runs on.
    s.restore(Stdio::null());
    assert_eq!(creds_lines(s.pid), before);
    s.wait_seq(s.last_before + 5);
    s.finish();
}

#[test]
fn threads_with_different_credentials_are_refused() {
    let test = "threads_with_different_credentials_are_refused";
    if !root_or_skip(test) {
        return;
    }
    let dir = TestDir::new(test);
    let exe = compile_c_with(&dir, "thread_creds", &["-pthread"]);
    let mut s = Session::start(dir, Cmd::new(exe), Stdio::null());
    s.wait_seq(3);
    // Wait until the second thread has dropped its uid.
    let pid = s.pid;
    wait_until(
        WAIT,
        "a thread with uid 65534",
        || {
            let tids = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
            tids.flatten()
                .filter_map(|t| t.file_name().to_str()?.parse::<i32>().ok())
                .find(|&tid| {
                    std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/status"))
                        .is_ok_and(|st| st.contains("Uid:\t65534"))
                })
        },
        String::new,
    );
    let images = s.dir.join("refused");
    let out = tern_dump(&s.dir, pid, &images, false);
    assert!(!out.success(), "dump succeeded: {}", out.describe());
    assert!(
        out.stderr
            .contains("other credentials than the main thread")
            && out.stderr.contains("uid"),
        "the refusal must name the thread and what differs: {}",
        out.stderr
    );
    let last = s.last_seq().unwrap_or(0);
    s.wait_seq(last + 5);
    assert_eq!(
        status_field(pid, "TracerPid").as_deref(),
        Some("0"),
        "left traced"
    );
}
