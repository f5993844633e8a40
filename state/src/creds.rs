//! Credentials: what `/proc/PID/status` shows of a thread, and what an
//! image records, both ways.

use tern_sys::proc::ThreadCreds;
use tern_wire as wire;

/// As an image records them (with the securebits, which /proc does not
/// show).
pub fn to_image(c: &ThreadCreds, securebits: u32) -> wire::Creds {
    wire::Creds {
        uid: c.uid,
        gid: c.gid,
        groups: c.groups.clone(),
        cap_inheritable: c.cap_inheritable,
        cap_permitted: c.cap_permitted,
        cap_effective: c.cap_effective,
        cap_bounding: c.cap_bounding,
        cap_ambient: c.cap_ambient,
        securebits,
        no_new_privs: c.no_new_privs,
    }
}

/// What /proc must show for a thread with an image's credentials, under
/// seccomp filters (mode 2) if `filtered`.
pub fn from_image(c: &wire::Creds, filtered: bool) -> ThreadCreds {
    ThreadCreds {
        uid: c.uid,
        gid: c.gid,
        groups: c.groups.clone(),
        cap_inheritable: c.cap_inheritable,
        cap_permitted: c.cap_permitted,
        cap_effective: c.cap_effective,
        cap_bounding: c.cap_bounding,
        cap_ambient: c.cap_ambient,
        no_new_privs: c.no_new_privs,
        seccomp: if filtered { 2 } else { 0 },
    }
}
