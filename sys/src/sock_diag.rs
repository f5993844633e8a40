//! Sockets as the kernel's `sock_diag` netlink interface shows them
//! (`NETLINK_SOCK_DIAG`, `SOCK_DIAG_BY_FAMILY`). Queries run in the
//! target's network namespace (sockets are listed per namespace).
//!
//! - Unix sockets (Linux 3.3+): for each its inode, type, state, bound
//!   name, peer's inode, queue length and shutdown state. The only way to
//!   learn which socket a unix socket is connected to.
//! - TCP sockets bound but neither listening nor connected (the pseudo
//!   state `TCP_BOUND_INACTIVE`, Linux 6.5+): the only way to tell a socket
//!   that holds its port (`bind` and nothing else) from a closed connection
//!   whose port the kernel released, both `TCP_CLOSE` with the same
//!   `getsockname`.

use std::collections::HashSet;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

/// One unix socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnixSocket {
    pub ino: u64,
    /// `SOCK_STREAM`, `SOCK_DGRAM` or `SOCK_SEQPACKET`.
    pub kind: i32,
    /// 1 (`TCP_ESTABLISHED`): connected; 7: unconnected; 10: listening.
    pub state: u8,
    /// Bound name (a path, or `\0`-prefixed abstract name); `None` unbound.
    pub name: Option<Vec<u8>>,
    pub peer: Option<u64>,
    /// Bytes (stream) or datagrams waiting to be read; for a listener,
    /// connections waiting to be accepted.
    pub rqueue: u32,
    /// For a listener: its backlog (`listen`'s argument, capped).
    pub wqueue: u32,
    /// `SHUTDOWN_*` bits of `shutdown(2)` so far.
    pub shutdown: u8,
}

const NETLINK_SOCK_DIAG: i32 = 4;
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_DUMP: u16 = 0x300;
const UDIAG_SHOW_NAME: u32 = 1;
const UDIAG_SHOW_PEER: u32 = 4;
const UDIAG_SHOW_RQLEN: u32 = 0x10;
const UNIX_DIAG_NAME: u16 = 0;
const UNIX_DIAG_PEER: u16 = 2;
const UNIX_DIAG_RQLEN: u16 = 4;
const UNIX_DIAG_SHUTDOWN: u16 = 6;

/// Every unix socket in the network namespace of process `pid`.
pub fn unix_sockets(pid: i32) -> io::Result<Vec<UnixSocket>> {
    let mut body = Vec::with_capacity(24);
    body.push(libc::AF_UNIX as u8);
    body.push(0); // protocol
    body.extend_from_slice(&0u16.to_ne_bytes());
    body.extend_from_slice(&u32::MAX.to_ne_bytes()); // every state
    body.extend_from_slice(&0u32.to_ne_bytes()); // any inode
    body.extend_from_slice(&(UDIAG_SHOW_NAME | UDIAG_SHOW_PEER | UDIAG_SHOW_RQLEN).to_ne_bytes());
    body.extend_from_slice(&u32::MAX.to_ne_bytes());
    body.extend_from_slice(&u32::MAX.to_ne_bytes());
    query(pid, &body)?
        .iter()
        .map(|payload| parse_socket(payload))
        .collect()
}

/// The pseudo state in which `inet_diag` lists bound-only TCP sockets.
const TCP_BOUND_INACTIVE: u32 = 13;
/// `struct inet_diag_msg`: family, state, timer, retrans, the 48-byte
/// `inet_diag_sockid`, expires, rqueue, wqueue, uid, then the inode.
const INET_DIAG_MSG_INODE: usize = 4 + 48 + 16;

/// The inodes of the TCP sockets of `family` (`AF_INET`/`AF_INET6`) in the
/// network namespace of process `pid` that hold a local port without
/// listening or being connected. `None` where this kernel does not list
/// such sockets (before 6.5): the question cannot be answered.
pub fn tcp_bound_inactive(pid: i32, family: i32) -> io::Result<Option<HashSet<u64>>> {
    if !lists_bound_inactive() {
        return Ok(None);
    }
    bound_inactive(pid, family).map(Some)
}

fn bound_inactive(pid: i32, family: i32) -> io::Result<HashSet<u64>> {
    // struct inet_diag_req_v2: family, protocol, ext, pad, states, then an
    // all-zero inet_diag_sockid (no filter).
    let mut body = Vec::with_capacity(56);
    body.push(family as u8);
    body.push(libc::IPPROTO_TCP as u8);
    body.extend_from_slice(&[0, 0]);
    body.extend_from_slice(&(1u32 << TCP_BOUND_INACTIVE).to_ne_bytes());
    body.extend_from_slice(&[0u8; 48]);
    query(pid, &body)?
        .iter()
        .map(|p| {
            u32_at(p, INET_DIAG_MSG_INODE)
                .map(u64::from)
                .ok_or_else(|| bad("short inet_diag_msg"))
        })
        .collect()
}

/// Whether this kernel lists bound-only TCP sockets: asked once.
fn lists_bound_inactive() -> bool {
    static ANSWER: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ANSWER.get_or_init(|| probe_bound_inactive().is_ok())
}

/// `tern check`'s probe: a socket of our own bound to a loopback port must
/// be listed as bound-only.
pub(crate) fn probe_bound_inactive() -> Result<String, String> {
    use std::os::unix::fs::MetadataExt;
    let sock = bound_tcp_socket().map_err(|e| format!("bind a TCP socket: {e}"))?;
    let ino = std::fs::metadata(format!("/proc/self/fd/{}", sock.as_raw_fd()))
        .map_err(|e| format!("stat the socket: {e}"))?
        .ino();
    let listed = bound_inactive(std::process::id() as i32, libc::AF_INET)
        .map_err(|e| format!("inet_diag dump: {e}"))?;
    if listed.contains(&ino) {
        Ok(format!(
            "a bound-only socket is listed ({} in this namespace)",
            listed.len()
        ))
    } else {
        Err("a bound-only TCP socket is not listed (Linux 6.5+ lists them): a closed TCP socket's address is then always bound again on restore".into())
    }
}

/// An IPv4 TCP socket bound to a free loopback port, not listening.
fn bound_tcp_socket() -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2) call.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    let sock = super::own_fd(libc::c_long::from(fd))?;
    let loopback = std::net::SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, 0));
    crate::sock::bind(std::os::fd::AsFd::as_fd(&sock), &loopback)?;
    Ok(sock)
}

/// Send one `SOCK_DIAG_BY_FAMILY` dump request with `body` from a netlink
/// socket in the network namespace of `pid`; the payload of every answer.
fn query(pid: i32, body: &[u8]) -> io::Result<Vec<Vec<u8>>> {
    // A socket stays in the namespace it was made in.
    let sock = crate::ns::in_namespace_of(pid, crate::ns::Kind::Net, || {
        // SAFETY: plain socket(2) call.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                NETLINK_SOCK_DIAG,
            )
        };
        super::own_fd(libc::c_long::from(fd))
    })?;
    let mut req = Vec::with_capacity(16 + body.len());
    req.extend_from_slice(&(16 + body.len() as u32).to_ne_bytes());
    req.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    req.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    req.extend_from_slice(&1u32.to_ne_bytes()); // seq
    req.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel's
    req.extend_from_slice(body);
    // SAFETY: `req` is valid for its length.
    let n = unsafe { libc::send(sock.as_raw_fd(), req.as_ptr().cast(), req.len(), 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 << 10];
    loop {
        // SAFETY: `buf` is valid for its length.
        let n = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        if parse_messages(&buf[..n as usize], &mut out)? {
            return Ok(out);
        }
    }
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn bad(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("sock_diag: {what}"))
}

/// Collect the payloads of one datagram of netlink messages into `out`;
/// true at the end of the dump.
fn parse_messages(mut b: &[u8], out: &mut Vec<Vec<u8>>) -> io::Result<bool> {
    while b.len() >= 16 {
        let len = u32_at(b, 0).ok_or_else(|| bad("short header"))? as usize;
        let kind = u16_at(b, 4).ok_or_else(|| bad("short header"))?;
        if len < 16 || len > b.len() {
            return Err(bad("message length out of bounds"));
        }
        let payload = &b[16..len];
        match kind {
            NLMSG_DONE => return Ok(true),
            NLMSG_ERROR => {
                let errno = u32_at(payload, 0).ok_or_else(|| bad("short error"))? as i32;
                return Err(io::Error::from_raw_os_error(-errno));
            }
            SOCK_DIAG_BY_FAMILY => out.push(payload.to_vec()),
            _ => {}
        }
        b = b.get((len + 3) & !3..).unwrap_or(&[]);
    }
    Ok(false)
}

fn parse_socket(p: &[u8]) -> io::Result<UnixSocket> {
    if p.len() < 16 {
        return Err(bad("short unix_diag_msg"));
    }
    let mut s = UnixSocket {
        ino: u64::from(u32_at(p, 4).ok_or_else(|| bad("no inode"))?),
        kind: i32::from(p[1]),
        state: p[2],
        name: None,
        peer: None,
        rqueue: 0,
        wqueue: 0,
        shutdown: 0,
    };
    let mut a = &p[16..];
    while a.len() >= 4 {
        let len = u16_at(a, 0).ok_or_else(|| bad("short attribute"))? as usize;
        let kind = u16_at(a, 2).ok_or_else(|| bad("short attribute"))?;
        if len < 4 || len > a.len() {
            return Err(bad("attribute length out of bounds"));
        }
        let data = &a[4..len];
        match kind {
            UNIX_DIAG_NAME => s.name = Some(data.to_vec()),
            UNIX_DIAG_PEER => s.peer = u32_at(data, 0).map(u64::from),
            UNIX_DIAG_RQLEN => {
                s.rqueue = u32_at(data, 0).unwrap_or(0);
                s.wqueue = u32_at(data, 4).unwrap_or(0);
            }
            UNIX_DIAG_SHUTDOWN => s.shutdown = data.first().copied().unwrap_or(0),
            _ => {}
        }
        let step = (len + 3) & !3;
        a = a.get(step..).unwrap_or(&[]);
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bound_only_tcp_socket_is_listed_and_a_listener_is_not() {
        use std::os::unix::fs::MetadataExt;
        let ino = |fd: i32| {
            std::fs::metadata(format!("/proc/self/fd/{fd}"))
                .expect("stat")
                .ino()
        };
        let Some(listed) =
            tcp_bound_inactive(std::process::id() as i32, libc::AF_INET).expect("inet_diag")
        else {
            eprintln!("skipped: this kernel does not list bound-only TCP sockets (before 6.5)");
            return;
        };
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("listen");
        let bound = bound_tcp_socket().expect("bind");
        let now = tcp_bound_inactive(std::process::id() as i32, libc::AF_INET)
            .expect("inet_diag")
            .expect("listed before");
        assert!(now.contains(&ino(bound.as_raw_fd())));
        assert!(!now.contains(&ino(listener.as_raw_fd())));
        assert!(!listed.contains(&ino(bound.as_raw_fd())));
    }

    #[test]
    fn a_socketpair_is_seen_with_its_peer_and_queue() {
        use std::os::fd::FromRawFd;
        let mut fds = [0; 2];
        // SAFETY: socketpair writes two fds into the array.
        let made =
            unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_STREAM, 0, fds.as_mut_ptr()) };
        assert_eq!(made, 0);
        // SAFETY: the kernel just returned these descriptors.
        let (a, b) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // SAFETY: writes 5 bytes from a static buffer.
        let written = unsafe { libc::write(a.as_raw_fd(), b"hello".as_ptr().cast(), 5) };
        assert_eq!(written, 5);
        let ino = |fd: &OwnedFd| {
            use std::os::unix::fs::MetadataExt;
            std::fs::metadata(format!("/proc/self/fd/{}", fd.as_raw_fd()))
                .expect("stat")
                .ino()
        };
        let all = unix_sockets(std::process::id() as i32).expect("sock_diag");
        let sa = all.iter().find(|s| s.ino == ino(&a)).expect("a listed");
        let sb = all.iter().find(|s| s.ino == ino(&b)).expect("b listed");
        assert_eq!(sa.peer, Some(sb.ino));
        assert_eq!(sb.peer, Some(sa.ino));
        assert_eq!(sb.rqueue, 5);
        assert_eq!(sa.kind, libc::SOCK_STREAM);
        assert_eq!(sa.name, None);
        assert_eq!(sa.shutdown, 0);
    }
}
