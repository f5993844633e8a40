//! TCP and UDP sockets over IPv4 and IPv6: read out of a stopped program
//! through tern's own duplicates (`pidfd_getfd`), established TCP
//! connections in repair mode (`TCP_REPAIR`, Linux 3.5+; `TCP_REPAIR_WINDOW`
//! 4.8+), and the network lock that keeps every kernel from resetting them
//! while they are between machines (nftables, `nft`).
//!
//! The restorer uses [`restore_socket`] on its own duplicate of a socket it
//! created inside the new process.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use tern_sys::netlock::NetLock;
use tern_sys::sock::{self, repair};
use tern_sys::sock_diag;
use tern_sys::{Context, Error as EngineError, Result};
use tern_wire as wire;
use tracing::{debug, warn};

/// Options kept across a restore, where they apply to the socket's family
/// and protocol (level, name, largest value in bytes).
const OPTIONS: &[(i32, i32, usize)] = &[
    (libc::SOL_SOCKET, libc::SO_REUSEADDR, 4),
    (libc::SOL_SOCKET, libc::SO_REUSEPORT, 4),
    (libc::SOL_SOCKET, libc::SO_KEEPALIVE, 4),
    (libc::SOL_SOCKET, libc::SO_BROADCAST, 4),
    (libc::SOL_SOCKET, libc::SO_OOBINLINE, 4),
    (libc::SOL_SOCKET, libc::SO_DONTROUTE, 4),
    (libc::SOL_SOCKET, libc::SO_PRIORITY, 4),
    (libc::SOL_SOCKET, libc::SO_MARK, 4),
    (libc::SOL_SOCKET, libc::SO_RCVLOWAT, 4),
    (libc::SOL_SOCKET, libc::SO_LINGER, 8),
    (libc::SOL_SOCKET, libc::SO_RCVTIMEO, 16),
    (libc::SOL_SOCKET, libc::SO_SNDTIMEO, 16),
];
const TCP_OPTIONS: &[(i32, i32, usize)] = &[
    (libc::IPPROTO_TCP, libc::TCP_NODELAY, 4),
    (libc::IPPROTO_TCP, libc::TCP_CORK, 4),
    (libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, 4),
    (libc::IPPROTO_TCP, libc::TCP_KEEPINTVL, 4),
    (libc::IPPROTO_TCP, libc::TCP_KEEPCNT, 4),
    (libc::IPPROTO_TCP, libc::TCP_USER_TIMEOUT, 4),
    (libc::IPPROTO_TCP, libc::TCP_DEFER_ACCEPT, 4),
    (libc::IPPROTO_TCP, libc::TCP_NOTSENT_LOWAT, 4),
    (libc::IPPROTO_TCP, libc::TCP_CONGESTION, 16),
];
const IPV4_OPTIONS: &[(i32, i32, usize)] = &[
    (libc::IPPROTO_IP, libc::IP_TOS, 4),
    (libc::IPPROTO_IP, libc::IP_TTL, 4),
    (libc::IPPROTO_IP, libc::IP_FREEBIND, 4),
    (libc::IPPROTO_IP, libc::IP_TRANSPARENT, 4),
];
const IPV6_OPTIONS: &[(i32, i32, usize)] = &[
    (libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, 4),
    (libc::IPPROTO_IPV6, libc::IPV6_TCLASS, 4),
    (libc::IPPROTO_IPV6, libc::IPV6_UNICAST_HOPS, 4),
    (libc::IPPROTO_IPV6, libc::IPV6_FREEBIND, 4),
    (libc::IPPROTO_IPV6, libc::IPV6_TRANSPARENT, 4),
];

/// TCP states (`include/net/tcp_states.h`) by name, for messages.
fn tcp_state_name(state: u8) -> &'static str {
    match state {
        1 => "ESTABLISHED",
        2 => "SYN_SENT",
        3 => "SYN_RECV",
        4 => "FIN_WAIT1",
        5 => "FIN_WAIT2",
        6 => "TIME_WAIT",
        7 => "CLOSE",
        8 => "CLOSE_WAIT",
        9 => "LAST_ACK",
        10 => "LISTEN",
        11 => "CLOSING",
        _ => "unknown",
    }
}

const TCP_ESTABLISHED: u8 = 1;
const TCP_CLOSE: u8 = 7;
const TCP_LISTEN: u8 = 10;
/// `struct tcp_info` up to `tcpi_sacked`, which is all tern reads.
const TCP_INFO_LEN: usize = 32;
const SIOCINQ: libc::c_ulong = 0x541B;
const SIOCOUTQ: libc::c_ulong = 0x5411;

/// One socket of a stopped program, as first looked at.
#[derive(Debug)]
pub struct Probe {
    pub fd: i32,
    /// tern's duplicate (same socket, same open file description).
    pub dup: OwnedFd,
    pub family: i32,
    pub kind: i32,
    pub protocol: i32,
    pub local: Option<SocketAddr>,
    pub peer: Option<SocketAddr>,
    /// TCP state for TCP sockets.
    pub tcp_state: Option<u8>,
    tcp_info: Vec<u8>,
}

impl Probe {
    pub fn is_established_tcp(&self) -> bool {
        self.tcp_state == Some(TCP_ESTABLISHED)
    }

    pub fn describe(&self) -> String {
        let show = |a: &Option<SocketAddr>| a.map_or("-".to_string(), |a| a.to_string());
        format!(
            "fd {} ({} {} -> {})",
            self.fd,
            if self.kind == libc::SOCK_STREAM {
                "TCP"
            } else {
                "UDP"
            },
            show(&self.local),
            show(&self.peer)
        )
    }
}

fn refuse(pid: i32, reason: String) -> EngineError {
    EngineError::Unsupported { pid, reason }
}

/// Look at socket `fd` of stopped process `pid`; refuses sockets other
/// than TCP/UDP over IPv4/IPv6, and TCP states other than listening,
/// closed and established.
pub fn probe(pid: i32, fd: i32) -> Result<Probe> {
    let dup = tern_sys::take_fd(pid, fd).ctx(pid, || format!("pidfd_getfd of socket fd {fd}"))?;
    let d = dup.as_fd();
    let int = |level, name, what: &str| {
        sock::get_int(d, level, name).ctx(pid, || format!("getsockopt({what}) on fd {fd}"))
    };
    let family = int(libc::SOL_SOCKET, libc::SO_DOMAIN, "SO_DOMAIN")?;
    let kind = int(libc::SOL_SOCKET, libc::SO_TYPE, "SO_TYPE")?;
    let protocol = int(libc::SOL_SOCKET, libc::SO_PROTOCOL, "SO_PROTOCOL")?;
    let family_name = match family {
        libc::AF_INET | libc::AF_INET6 => None,
        libc::AF_UNIX => Some("unix"),
        libc::AF_NETLINK => Some("netlink"),
        libc::AF_PACKET => Some("packet"),
        _ => Some("this family of"),
    };
    if let Some(name) = family_name {
        return Err(refuse(
            pid,
            format!(
                "fd {fd}: {name} sockets are not supported yet (only TCP and UDP over IPv4/IPv6)"
            ),
        ));
    }
    let tcp = kind == libc::SOCK_STREAM && protocol == libc::IPPROTO_TCP;
    let udp = kind == libc::SOCK_DGRAM && protocol == libc::IPPROTO_UDP;
    if !tcp && !udp {
        return Err(refuse(
            pid,
            format!("fd {fd}: an IP socket of type {kind} protocol {protocol}; only TCP and UDP are supported"),
        ));
    }
    let local = sock::local_addr(d).ctx(pid, || format!("getsockname on fd {fd}"))?;
    let peer = sock::peer_addr(d).ctx(pid, || format!("getpeername on fd {fd}"))?;
    let (tcp_state, tcp_info) = if tcp {
        let info = sock::get_bytes(d, libc::IPPROTO_TCP, libc::TCP_INFO, TCP_INFO_LEN)
            .ctx(pid, || format!("getsockopt(TCP_INFO) on fd {fd}"))?;
        if info.len() < TCP_INFO_LEN {
            return Err(refuse(pid, format!("fd {fd}: short TCP_INFO")));
        }
        (Some(info[0]), info)
    } else {
        (None, Vec::new())
    };
    let p = Probe {
        fd,
        dup,
        family,
        kind,
        protocol,
        local,
        peer,
        tcp_state,
        tcp_info,
    };
    if let Some(state) = p.tcp_state {
        if ![TCP_ESTABLISHED, TCP_CLOSE, TCP_LISTEN].contains(&state) {
            return Err(refuse(
                pid,
                format!(
                    "{}: TCP connection in state {}; only listening and established connections can be moved (half-closed and connecting ones cannot yet)",
                    p.describe(),
                    tcp_state_name(state)
                ),
            ));
        }
    }
    Ok(p)
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    let mut v = [0u8; 4];
    v.copy_from_slice(&b[off..off + 4]);
    u32::from_ne_bytes(v)
}

fn options_for(family: i32, tcp: bool) -> impl Iterator<Item = &'static (i32, i32, usize)> {
    let ip = if family == libc::AF_INET {
        IPV4_OPTIONS
    } else {
        IPV6_OPTIONS
    };
    OPTIONS
        .iter()
        .chain(ip.iter())
        .chain(if tcp { TCP_OPTIONS } else { &[] }.iter())
}

/// The image of a probed socket. Established TCP connections must already
/// be in repair mode (see [`Held::repair`]).
pub fn capture(pid: i32, p: &Probe, status_flags: i32) -> Result<wire::InetSocket> {
    let d = p.dup.as_fd();
    let fd = p.fd;
    let tcp = p.tcp_state.is_some();
    let mut options = Vec::new();
    for &(level, name, max) in options_for(p.family, tcp) {
        match sock::get_bytes(d, level, name, max) {
            Ok(value) => options.push(wire::SockOpt { level, name, value }),
            // Not known to this kernel or this kind of socket: nothing to keep.
            Err(e) if e.raw_os_error() == Some(libc::ENOPROTOOPT) => {}
            Err(e) => {
                return Err(e).ctx(pid, || format!("getsockopt({level}, {name}) on fd {fd}"));
            }
        }
    }
    let state = match p.tcp_state {
        Some(TCP_LISTEN) => {
            // For a listener TCP_INFO gives the accept queue's length in
            // tcpi_unacked and the backlog in tcpi_sacked.
            let queued = u32_at(&p.tcp_info, 24);
            if queued != 0 {
                return Err(refuse(
                    pid,
                    format!(
                        "{}: {queued} connection(s) wait in the accept queue (not yet accepted); they cannot be moved, try again",
                        p.describe()
                    ),
                ));
            }
            wire::InetState::Listening {
                backlog: u32_at(&p.tcp_info, 28),
            }
        }
        Some(TCP_ESTABLISHED) => wire::InetState::Established(Box::new(read_connection(pid, p)?)),
        Some(_) => wire::InetState::Open,
        None => {
            let pending = sock::ioctl_int(d, SIOCINQ).unwrap_or(0);
            if pending > 0 {
                warn!(
                    pid,
                    fd, "UDP socket: datagrams waiting to be read are dropped, as a network would"
                );
            }
            if p.peer.is_some() {
                wire::InetState::Connected
            } else {
                wire::InetState::Open
            }
        }
    };
    let local = if p.tcp_state == Some(TCP_CLOSE) {
        closed_socket_address(pid, p)?
    } else {
        p.local
    };
    Ok(wire::InetSocket {
        family: p.family,
        kind: p.kind,
        protocol: p.protocol,
        flags: status_flags & libc::O_NONBLOCK,
        local,
        peer: p.peer,
        state,
        options,
    })
}

/// The address a closed TCP socket holds. `getsockname` names one both for
/// a socket that was bound and for a connection that ended, but only the
/// first holds its port: the kernel released the other's (restoring that
/// one bound would take the port from a listener of the image). sock_diag
/// tells them apart where the kernel lists bound-only sockets (6.5+);
/// elsewhere the address is kept, as before.
fn closed_socket_address(pid: i32, p: &Probe) -> Result<Option<SocketAddr>> {
    let Some(local) = p.local.filter(|a| a.port() != 0) else {
        return Ok(p.local);
    };
    let fd = p.fd;
    let ino = std::fs::metadata(format!("/proc/self/fd/{}", p.dup.as_raw_fd()))
        .map(|m| m.ino())
        .ctx(pid, || format!("stat of socket fd {fd}"))?;
    let bound = sock_diag::tcp_bound_inactive(pid, p.family).ctx(pid, || {
        format!("sock_diag of bound TCP sockets (for fd {fd})")
    })?;
    Ok(match bound {
        Some(inodes) if !inodes.contains(&ino) => {
            debug!(pid, fd, %local, "closed TCP connection: its port was released, restored unbound");
            None
        }
        _ => Some(local),
    })
}

/// Read an established connection in repair mode (its packets locked out).
fn read_connection(pid: i32, p: &Probe) -> Result<wire::TcpConnection> {
    let d = p.dup.as_fd();
    let fd = p.fd;
    let what = |s: &str| format!("{s} on TCP fd {fd}");
    let set = |name, v, s: &str| sock::set_int(d, libc::IPPROTO_TCP, name, v).ctx(pid, || what(s));
    let get = |name, s: &str| sock::get_int(d, libc::IPPROTO_TCP, name).ctx(pid, || what(s));
    set(
        repair::TCP_REPAIR_QUEUE,
        repair::SEND_QUEUE,
        "TCP_REPAIR_QUEUE send",
    )?;
    let send_end = get(repair::TCP_QUEUE_SEQ, "TCP_QUEUE_SEQ send")? as u32;
    let outq = sock::ioctl_int(d, SIOCOUTQ)
        .ctx(pid, || what("SIOCOUTQ"))?
        .max(0) as usize;
    let unsent = sock::ioctl_int(d, repair::SIOCOUTQNSD)
        .ctx(pid, || what("SIOCOUTQNSD"))?
        .max(0) as u32;
    let send_queue = sock::peek(d, outq).ctx(pid, || what("read the send queue"))?;
    set(
        repair::TCP_REPAIR_QUEUE,
        repair::RECV_QUEUE,
        "TCP_REPAIR_QUEUE recv",
    )?;
    let recv_end = get(repair::TCP_QUEUE_SEQ, "TCP_QUEUE_SEQ recv")? as u32;
    let inq = sock::ioctl_int(d, SIOCINQ)
        .ctx(pid, || what("SIOCINQ"))?
        .max(0) as usize;
    let recv_queue = sock::peek(d, inq).ctx(pid, || what("read the receive queue"))?;
    if send_queue.len() != outq || recv_queue.len() != inq || unsent as usize > outq {
        return Err(refuse(
            pid,
            format!(
                "{}: its queues changed while read in repair mode (send {} of {outq}, receive {} of {inq})",
                p.describe(),
                send_queue.len(),
                recv_queue.len()
            ),
        ));
    }
    set(repair::TCP_REPAIR_QUEUE, 0, "TCP_REPAIR_QUEUE none")?;
    // In repair mode TCP_MAXSEG reads the MSS clamp the handshake agreed.
    let mss = get(libc::TCP_MAXSEG, "TCP_MAXSEG")? as u32;
    let timestamp = get(repair::TCP_TIMESTAMP, "TCP_TIMESTAMP")? as u32;
    let info = sock::get_bytes(d, libc::IPPROTO_TCP, libc::TCP_INFO, TCP_INFO_LEN)
        .ctx(pid, || what("TCP_INFO"))?;
    if info.len() < TCP_INFO_LEN {
        return Err(refuse(pid, format!("{}: short TCP_INFO", p.describe())));
    }
    let options = info[5];
    let window_raw = sock::get_bytes(d, libc::IPPROTO_TCP, repair::TCP_REPAIR_WINDOW, 20)
        .ctx(pid, || what("TCP_REPAIR_WINDOW (Linux 4.8+)"))?;
    if window_raw.len() != 20 {
        return Err(refuse(
            pid,
            format!("{}: short TCP_REPAIR_WINDOW", p.describe()),
        ));
    }
    let mut window = [0u32; 5];
    for (k, w) in window.iter_mut().enumerate() {
        *w = u32_at(&window_raw, 4 * k);
    }
    let c = wire::TcpConnection {
        send_seq: send_end.wrapping_sub(outq as u32),
        recv_seq: recv_end.wrapping_sub(inq as u32),
        send_queue,
        unsent,
        recv_queue,
        mss,
        // tcpi_snd_wscale:4 and tcpi_rcv_wscale:4 share one byte.
        wscale: (options & repair::TCPI_OPT_WSCALE != 0).then_some((info[6] & 0xf, info[6] >> 4)),
        sack: options & repair::TCPI_OPT_SACK != 0,
        timestamps: options & repair::TCPI_OPT_TIMESTAMPS != 0,
        timestamp,
        window,
    };
    debug!(
        pid,
        fd,
        send = c.send_queue.len(),
        unsent = c.unsent,
        recv = c.recv_queue.len(),
        mss = c.mss,
        "TCP connection read in repair mode"
    );
    Ok(c)
}

/// A program's established connections while it is frozen: in repair mode
/// through tern's duplicates, their packets dropped by a [`NetLock`].
/// Dropping it (or [`release`](Self::release)) puts them back as they were:
/// repair off, lock removed.
#[derive(Default, Debug)]
pub struct Held {
    repaired: Vec<(i32, OwnedFd)>,
    lock: Option<NetLock>,
    pid: i32,
}

impl Held {
    /// Lock the packets of `conns` (their network namespace is `pid`'s).
    pub fn lock(&mut self, pid: i32, conns: &[(SocketAddr, SocketAddr)]) -> Result<()> {
        self.pid = pid;
        if conns.is_empty() {
            return Ok(());
        }
        // Held open: the lock outlives the program when it is killed.
        let netns = std::fs::File::open(format!("/proc/{pid}/ns/net"))
            .ctx(pid, || "open its network namespace".into())?;
        self.lock = Some(
            NetLock::apply(Some(netns), &format!("tern_lock_{pid}"), conns)
                .map_err(|e| lock_error(pid, e))?,
        );
        Ok(())
    }

    /// Put the connection behind `dup` into repair mode; it stays so until
    /// released (or closed: a socket closed in repair mode vanishes without
    /// a FIN or RST).
    pub fn repair(&mut self, pid: i32, fd: i32, dup: BorrowedFd<'_>) -> Result<()> {
        let own = dup
            .try_clone_to_owned()
            .ctx(pid, || format!("dup socket fd {fd}"))?;
        sock::set_int(
            own.as_fd(),
            libc::IPPROTO_TCP,
            repair::TCP_REPAIR,
            repair::ON,
        )
        .ctx(pid, || {
            format!("setsockopt(TCP_REPAIR) on fd {fd} (needs CAP_NET_ADMIN)")
        })?;
        self.repaired.push((fd, own));
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        self.repaired.is_empty() && self.lock.is_none()
    }

    /// Fds (in the program) of the connections in repair mode.
    pub fn repaired_fds(&self) -> Vec<i32> {
        self.repaired.iter().map(|(fd, _)| *fd).collect()
    }

    /// The lock's table name.
    pub fn lock_name(&self) -> Option<&str> {
        self.lock.as_ref().map(|l| l.name())
    }

    /// The program carries on here: connections out of repair mode, lock
    /// removed.
    pub fn release(mut self) -> Result<()> {
        self.undo()
    }

    fn undo(&mut self) -> Result<()> {
        let mut first = None;
        for (fd, s) in self.repaired.drain(..) {
            if let Err(e) = sock::set_int(
                s.as_fd(),
                libc::IPPROTO_TCP,
                repair::TCP_REPAIR,
                repair::OFF,
            ) {
                warn!(pid = self.pid, fd, "TCP repair off: {e}");
                first.get_or_insert(e);
            }
        }
        if let Some(l) = self.lock.take() {
            l.remove().map_err(|e| lock_error(self.pid, e))?;
        }
        match first {
            Some(e) => Err(e).ctx(self.pid, || "TCP repair off".into()),
            None => Ok(()),
        }
    }

    /// The program is gone (killed): its connections vanish silently as
    /// tern closes the last references in repair mode. Returns the packet
    /// lock, still in place: a dump keeps it until `tern restore` lifts
    /// it, a migration removes it (the connections live elsewhere).
    pub fn after_kill(mut self) -> Option<NetLock> {
        self.repaired.clear();
        self.lock.take()
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Err(e) = self.undo() {
            warn!("releasing the TCP connections of process {}: {e}", self.pid);
        }
    }
}

/// Take socket `fd` of `pid` out of TCP repair mode (for a program left
/// stopped with its connections in repair, resumed later by
/// `tern resolve`).
pub fn leave_repair(pid: i32, fd: i32) -> Result<()> {
    let dup = tern_sys::take_fd(pid, fd).ctx(pid, || format!("take socket fd {fd}"))?;
    sock::set_int(
        dup.as_fd(),
        libc::IPPROTO_TCP,
        repair::TCP_REPAIR,
        repair::OFF,
    )
    .ctx(pid, || format!("TCP repair off on fd {fd}"))
}

/// Whether socket `fd` of `pid` is a unix socket.
fn is_unix(pid: i32, fd: i32) -> Result<bool> {
    let dup = tern_sys::take_fd(pid, fd).ctx(pid, || format!("pidfd_getfd of socket fd {fd}"))?;
    let family = sock::get_int(dup.as_fd(), libc::SOL_SOCKET, libc::SO_DOMAIN)
        .ctx(pid, || format!("getsockopt(SO_DOMAIN) on fd {fd}"))?;
    Ok(family == libc::AF_UNIX)
}

/// A connected unix socket `s` bound to `name`: taken if it is one end
/// of a connection a listener bound to a path accepted. Whether it is the
/// accepted end (named as its listener) rather than a client bound to a
/// name of its own; else why it is refused. With both ends named, the
/// accepted one is the one whose name a listener still has.
fn check_accepted(
    s: &sock_diag::UnixSocket,
    name: &[u8],
    all: &[sock_diag::UnixSocket],
) -> std::result::Result<bool, String> {
    let shown = show_unix_name(name);
    if name.first() == Some(&0) {
        return Err(format!(
            "bound to {shown} and connected (a connection at an abstract name)"
        ));
    }
    if name.first() != Some(&b'/') {
        return Err(format!(
            "bound to {shown} and connected (a connection at a relative path)"
        ));
    }
    if s.kind == libc::SOCK_DGRAM {
        return Err(format!(
            "bound to {shown} and connected (a named datagram socket)"
        ));
    }
    let peer = s.peer.and_then(|p| all.iter().find(|o| o.ino == p));
    let Some(peer_name) = peer.and_then(|p| p.name.as_deref()) else {
        return Ok(true);
    };
    let listens_at = |n: &[u8]| {
        all.iter()
            .any(|o| o.state == 10 && o.name.as_deref() == Some(n))
    };
    match (listens_at(name), listens_at(peer_name)) {
        (true, false) => Ok(true),
        (false, true) => Ok(false),
        _ => Err(format!(
            "bound to {shown} and connected to {}: which end was accepted cannot be told (no listener has just one of the names)",
            show_unix_name(peer_name)
        )),
    }
}

/// The program's unix sockets (stdio aside): each must be one end of a
/// connected pair whose other end the program (or its tree) holds too (`socketpair`),
/// not shut down; a stream end's waiting bytes are read (not consumed),
/// datagram ends must have none waiting. Returns fd -> its image record.
pub fn capture_unix_pairs(
    pid: i32,
    listed: &[(i32, String, tern_sys::proc::FdInfo)],
    in_tree: &std::collections::BTreeSet<u64>,
) -> Result<std::collections::BTreeMap<i32, wire::FdKind>> {
    let ino_of = |link: &str| {
        link.strip_prefix("socket:[")
            .and_then(|r| r.strip_suffix(']'))
            .and_then(|n| n.parse::<u64>().ok())
    };
    let mut ours: Vec<(i32, u64, i32)> = Vec::new();
    for (fd, link, info) in listed {
        if (0..=2).contains(fd) {
            continue;
        }
        if let Some(ino) = ino_of(link) {
            if is_unix(pid, *fd)? {
                ours.push((*fd, ino, info.flags));
            }
        }
    }
    let mut out = std::collections::BTreeMap::new();
    if ours.is_empty() {
        return Ok(out);
    }
    let all = sock_diag::unix_sockets(pid).ctx(pid, || {
        "list its unix sockets (sock_diag netlink, needs CONFIG_UNIX_DIAG)".into()
    })?;
    for &(fd, ino, flags) in &ours {
        let s = all.iter().find(|s| s.ino == ino).ok_or_else(|| {
            refuse(
                pid,
                format!("fd {fd}: unix socket {ino} is not listed by sock_diag"),
            )
        })?;
        let what = |why: String| {
            refuse(pid, format!("fd {fd}: a unix socket {why}; only socketpairs whose two ends the program holds are supported"))
        };
        let mut accepted = false;
        if let Some(name) = &s.name {
            if s.state != 1 {
                out.insert(fd, capture_bound(pid, fd, s, name, flags)?);
                continue;
            }
            accepted = check_accepted(s, name, &all).map_err(what)?;
        }
        if s.state != 1 {
            return Err(what(format!("not connected (state {})", s.state)));
        }
        // Peer 0: its other end was closed (a socketpair one end of which
        // was closed at once, as the JVM's pre-close socket).
        let peer = s.peer.unwrap_or(0);
        if peer != 0 && !ours.iter().any(|&(_, i, _)| i == peer) && !in_tree.contains(&peer) {
            return Err(refuse(
                pid,
                format!(
                    "fd {fd}: a unix socket connected to socket {peer}, held by {}: name it with --external fd[{fd}]:NAME and give the restore its replacement with --inherit-fd fd[N]:NAME",
                    tern_sys::proc::describe_holders(&format!("socket:[{peer}]"), &[pid])
                ),
            ));
        }
        if s.shutdown != 0 && peer != 0 {
            return Err(what("half shut down".into()));
        }
        let queued = if s.rqueue == 0 {
            Vec::new()
        } else if s.kind == libc::SOCK_STREAM {
            let dup =
                tern_sys::take_fd(pid, fd).ctx(pid, || format!("pidfd_getfd of socket fd {fd}"))?;
            let data = sock::peek_stream(dup.as_fd(), s.rqueue as usize).ctx(pid, || {
                format!("read the bytes waiting at unix socket fd {fd}")
            })?;
            if data.len() != s.rqueue as usize {
                return Err(what(format!(
                    "with {} bytes waiting of which {} could be read (file descriptors or credentials in flight?)",
                    s.rqueue,
                    data.len()
                )));
            }
            data
        } else {
            return Err(what("of datagrams with some waiting to be read".into()));
        };
        let record = if peer == 0 {
            wire::FdKind::UnixWidowed {
                kind: s.kind,
                flags: flags & libc::O_NONBLOCK,
                queued,
            }
        } else {
            wire::FdKind::UnixPair {
                pair: ino.min(peer),
                ino,
                kind: s.kind,
                flags: flags & libc::O_NONBLOCK,
                queued,
                name: s.name.clone(),
                accepted,
            }
        };
        out.insert(fd, record);
    }
    Ok(out)
}

/// A unix socket name for messages: a path, or `@name` for an abstract one.
pub fn show_unix_name(name: &[u8]) -> String {
    match name.split_first() {
        Some((0, rest)) => format!("@{}", String::from_utf8_lossy(rest)),
        _ => {
            let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
            format!("{:?}", String::from_utf8_lossy(&name[..end]))
        }
    }
}

/// A unix socket bound to `name` and not connected: a listener with no
/// connection waiting, or a datagram socket with nothing waiting; its
/// socket file's mode and owner if a path.
fn capture_bound(
    pid: i32,
    fd: i32,
    s: &tern_sys::sock_diag::UnixSocket,
    name: &[u8],
    flags: i32,
) -> Result<wire::FdKind> {
    let shown = show_unix_name(name);
    let refuse_it = |why: String| {
        refuse(
            pid,
            format!("fd {fd}: a unix socket bound to {shown} {why}"),
        )
    };
    let backlog = match s.state {
        10 if s.rqueue > 0 => {
            return Err(refuse_it(format!(
            "has {} connection(s) waiting to be accepted, which the kernel offers no way to move",
            s.rqueue
        )))
        }
        10 => Some(s.wqueue),
        7 if s.kind == libc::SOCK_DGRAM && s.rqueue > 0 => {
            return Err(refuse_it(format!(
                "has {} datagram(s) waiting to be read",
                s.rqueue
            )))
        }
        7 if s.kind == libc::SOCK_DGRAM => None,
        st => {
            return Err(refuse_it(format!(
                "is neither listening nor a datagram socket (state {st})"
            )))
        }
    };
    // A path as bound may carry its terminating NULs.
    let name: Vec<u8> = if name.first() == Some(&0) {
        name.to_vec()
    } else {
        let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
        name[..end].to_vec()
    };
    let file = if name.first() == Some(&0) {
        None
    } else {
        if name.first() != Some(&b'/') {
            return Err(refuse_it(
                "by a relative path, which names no one file".into(),
            ));
        }
        let path = format!("/proc/{pid}/root{}", String::from_utf8_lossy(&name));
        let meta = std::fs::symlink_metadata(&path)
            .ok()
            .filter(|m| m.file_type().is_socket())
            .ok_or_else(|| refuse_it("whose socket file is gone or replaced".into()))?;
        Some((meta.mode() & 0o7777, meta.uid(), meta.gid()))
    };
    Ok(wire::FdKind::UnixBound {
        name,
        kind: s.kind,
        flags: flags & libc::O_NONBLOCK,
        backlog,
        file,
    })
}

/// A restored unix socket that binds at a path only once the program is
/// about to run (see [`restore_bound`]).
#[derive(Debug)]
pub struct PathBind {
    dup: OwnedFd,
    path: std::path::PathBuf,
    backlog: Option<u32>,
    file: Option<(u32, u32, u32)>,
}

impl PathBind {
    /// Bind (and listen) now. A socket file found at the path (a stale one
    /// of the dumped program; migrating within one machine, its frozen
    /// source's, which ends with this commit) is replaced.
    pub fn bind(self) -> io::Result<()> {
        if path_holds_a_socket(&self.path)? {
            std::fs::remove_file(&self.path)?;
        }
        let d = self.dup.as_fd();
        sock::bind_unix(d, self.path.as_os_str().as_bytes())?;
        if let Some((mode, uid, gid)) = self.file {
            std::os::unix::fs::chown(&self.path, Some(uid), Some(gid))?;
            std::fs::set_permissions(&self.path, std::fs::Permissions::from_mode(mode))?;
        }
        listen_as_imaged(d, self.backlog)
    }

    pub fn path(&self) -> &std::path::Path {
        &self.path
    }
}

/// Whether `path` is a socket file (it may be replaced); absent: false;
/// anything else there is an error naming it.
fn path_holds_a_socket(path: &std::path::Path) -> io::Result<bool> {
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
        Ok(m) if m.file_type().is_socket() => Ok(true),
        Ok(_) => Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("{} exists and is not a socket", path.display()),
        )),
    }
}

fn listen_as_imaged(d: BorrowedFd<'_>, backlog: Option<u32>) -> io::Result<()> {
    match backlog {
        Some(b) => sock::listen(d, i32::try_from(b).unwrap_or(i32::MAX)),
        None => Ok(()),
    }
}

/// Bind (and make listen) a restored unix socket, configured through
/// `dup`, as the image says. An abstract name is bound at once (it lives
/// in the socket's network namespace). A path is only checked now (its
/// directory exists, nothing but a socket file is there) and bound by the
/// returned [`PathBind`] at the commit: until then the path stays the
/// source's, so a migration that fails before it leaves the source
/// reachable.
pub fn restore_bound(
    dup: OwnedFd,
    name: &[u8],
    flags: i32,
    backlog: Option<u32>,
    file: Option<(u32, u32, u32)>,
) -> io::Result<Option<PathBind>> {
    if flags & libc::O_NONBLOCK != 0 {
        sock::set_status_flags(dup.as_fd(), libc::O_NONBLOCK)?;
    }
    if name.first() == Some(&0) {
        sock::bind_unix(dup.as_fd(), name)?;
        listen_as_imaged(dup.as_fd(), backlog)?;
        return Ok(None);
    }
    let path = std::path::PathBuf::from(std::ffi::OsStr::from_bytes(name));
    if !path.parent().is_some_and(|d| d.is_dir()) {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("the directory of {} does not exist here", path.display()),
        ));
    }
    path_holds_a_socket(&path)?;
    Ok(Some(PathBind {
        dup,
        path,
        backlog,
        file,
    }))
}

fn lock_error(pid: i32, e: io::Error) -> EngineError {
    EngineError::Sys {
        pid,
        what: "lock the TCP connections' packets with nftables".into(),
        source: e,
    }
}

/// A socket rebuilt by the restorer, configured through `dup` (its
/// duplicate of the new process's socket). Returns the connection still in
/// repair mode, for [`Repaired::finish`] once the program may run.
pub fn restore_socket(dup: OwnedFd, s: &wire::InetSocket) -> io::Result<Option<Repaired>> {
    let d = dup.as_fd();
    let (ip_level, transparent) = if s.family == libc::AF_INET {
        (libc::IPPROTO_IP, libc::IP_TRANSPARENT)
    } else {
        (libc::IPPROTO_IPV6, libc::IPV6_TRANSPARENT)
    };
    let bind_time = |o: &wire::SockOpt| {
        (o.level == libc::SOL_SOCKET && o.name == libc::SO_REUSEADDR)
            || (o.level == ip_level && o.name == transparent)
    };
    // Options first (IPV6_V6ONLY must precede bind), those bind depends on
    // after it.
    for o in s.options.iter().filter(|o| !bind_time(o)) {
        set_if_different(d, o)?;
    }
    if s.flags & libc::O_NONBLOCK != 0 {
        sock::set_status_flags(d, libc::O_NONBLOCK)?;
    }
    let repair_mode = matches!(s.state, wire::InetState::Established(_));
    if repair_mode {
        // Also forces the local port to be shared (SK_FORCE_REUSE) with the
        // listener it was accepted from.
        sock::set_int(d, libc::IPPROTO_TCP, repair::TCP_REPAIR, repair::ON)?;
    }
    if let Some(local) = &s.local {
        // The address may not be this machine's yet (a handoff moves it
        // once the program is rebuilt): a transparent socket may bind and
        // route from it.
        sock::set_int(d, ip_level, transparent, 1)?;
        if !repair_mode {
            // Connections of the image may hold the port already.
            sock::set_int(d, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)?;
        }
        sock::bind(d, local)?;
    }
    let mut repaired = None;
    match &s.state {
        wire::InetState::Open => {}
        wire::InetState::Listening { backlog } => sock::listen(d, *backlog as i32)?,
        wire::InetState::Connected => {
            if let Some(peer) = &s.peer {
                sock::connect(d, peer)?;
            }
        }
        wire::InetState::Established(c) => {
            let peer = s.peer.ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    "established connection without a peer",
                )
            })?;
            rebuild_connection(d, &peer, c)?;
            let sent = c.send_queue.len() - c.unsent as usize;
            repaired = Some(c.send_queue[sent..].to_vec());
        }
    }
    // The two options bind needed, back to what the program had.
    for (level, name) in [
        (libc::SOL_SOCKET, libc::SO_REUSEADDR),
        (ip_level, transparent),
    ] {
        let value = s
            .options
            .iter()
            .find(|o| o.level == level && o.name == name)
            .map_or_else(|| 0i32.to_ne_bytes().to_vec(), |o| o.value.clone());
        set_if_different(d, &wire::SockOpt { level, name, value })?;
    }
    Ok(repaired.map(|unsent| Repaired { dup, unsent }))
}

fn set_if_different(d: BorrowedFd<'_>, o: &wire::SockOpt) -> io::Result<()> {
    let now = sock::get_bytes(d, o.level, o.name, o.value.len().max(4))?;
    if now != o.value {
        sock::set_bytes(d, o.level, o.name, &o.value).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("setsockopt({}, {}): {e}", o.level, o.name),
            )
        })?;
    }
    Ok(())
}

/// Write an established connection into a fresh socket in repair mode,
/// bound to its local address.
fn rebuild_connection(
    d: BorrowedFd<'_>,
    peer: &SocketAddr,
    c: &wire::TcpConnection,
) -> io::Result<()> {
    let set = |name, v| sock::set_int(d, libc::IPPROTO_TCP, name, v);
    if c.unsent as usize > c.send_queue.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "more unsent bytes than the send queue holds",
        ));
    }
    // Sequence numbers can be set only before the connection exists.
    set(repair::TCP_REPAIR_QUEUE, repair::SEND_QUEUE)?;
    set(repair::TCP_QUEUE_SEQ, c.send_seq as i32)?;
    set(repair::TCP_REPAIR_QUEUE, repair::RECV_QUEUE)?;
    set(repair::TCP_QUEUE_SEQ, c.recv_seq as i32)?;
    // In repair mode connect sends nothing: the socket is established.
    sock::connect(d, peer)?;
    let mut opts: Vec<u8> = Vec::with_capacity(32);
    let mut opt = |code: u32, val: u32| {
        opts.extend_from_slice(&code.to_ne_bytes());
        opts.extend_from_slice(&val.to_ne_bytes());
    };
    opt(repair::TCPOPT_MAXSEG, c.mss);
    if let Some((snd, rcv)) = c.wscale {
        opt(repair::TCPOPT_WINDOW, snd as u32 | (rcv as u32) << 16);
    }
    if c.sack {
        opt(repair::TCPOPT_SACK_PERM, 0);
    }
    if c.timestamps {
        opt(repair::TCPOPT_TIMESTAMP, 0);
    }
    sock::set_bytes(d, libc::IPPROTO_TCP, repair::TCP_REPAIR_OPTIONS, &opts)?;
    if c.timestamps {
        set(repair::TCP_TIMESTAMP, c.timestamp as i32)?;
    }
    // Queued data: what the program had not read, and what it wrote that
    // the peer has not acknowledged (sent again by TCP's own timers). The
    // never-sent tail goes out normally once repair mode is off.
    const PIECE: usize = 64 << 10;
    set(repair::TCP_REPAIR_QUEUE, repair::RECV_QUEUE)?;
    for piece in c.recv_queue.chunks(PIECE) {
        sock::send_all(d, piece)?;
    }
    set(repair::TCP_REPAIR_QUEUE, repair::SEND_QUEUE)?;
    let sent = c.send_queue.len() - c.unsent as usize;
    for piece in c.send_queue[..sent].chunks(PIECE) {
        sock::send_all(d, piece)?;
    }
    set(repair::TCP_REPAIR_QUEUE, 0)?;
    // Window last: the kernel checks it against the receive queue's end.
    let mut w = Vec::with_capacity(20);
    for v in c.window {
        w.extend_from_slice(&v.to_ne_bytes());
    }
    sock::set_bytes(d, libc::IPPROTO_TCP, repair::TCP_REPAIR_WINDOW, &w)?;
    Ok(())
}

/// An established connection rebuilt in repair mode, waiting for the
/// program to run.
#[derive(Debug)]
pub struct Repaired {
    dup: OwnedFd,
    unsent: Vec<u8>,
}

impl Repaired {
    /// Repair mode off (the kernel probes the peer's window), then the
    /// bytes the program wrote that were never sent.
    pub fn finish(self) -> io::Result<()> {
        let d = self.dup.as_fd();
        sock::set_int(d, libc::IPPROTO_TCP, repair::TCP_REPAIR, repair::OFF)?;
        sock::send_all(d, &self.unsent)
    }
}

/// The (local, peer) pairs of an image's established TCP connections.
pub fn established_pairs(files: &wire::Files) -> Vec<(SocketAddr, SocketAddr)> {
    let mut out = Vec::new();
    for f in &files.fds {
        if let wire::FdKind::Inet(s) = &f.kind {
            if let (wire::InetState::Established(_), Some(l), Some(p)) = (&s.state, s.local, s.peer)
            {
                if !out.contains(&(l, p)) {
                    out.push((l, p));
                }
            }
        }
    }
    out
}
