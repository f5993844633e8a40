//! Socket calls on tern's own duplicates of a program's sockets (taken with
//! `pidfd_getfd`, so they share the program's open file description and
//! socket): options, addresses, queue sizes and TCP repair mode.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd};

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// `getsockopt` into a buffer of `max` bytes; returns what the kernel wrote.
pub fn get_bytes(fd: BorrowedFd<'_>, level: i32, name: i32, max: usize) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; max];
    let mut len = max as libc::socklen_t;
    // SAFETY: `buf` is valid for `len` bytes and `len` is a valid socklen_t
    // the kernel updates with the length it wrote.
    cvt(unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            level,
            name,
            buf.as_mut_ptr().cast(),
            &mut len,
        )
    })?;
    buf.truncate((len as usize).min(max));
    Ok(buf)
}

pub fn get_int(fd: BorrowedFd<'_>, level: i32, name: i32) -> io::Result<i32> {
    let b = get_bytes(fd, level, name, 4)?;
    let mut v = [0u8; 4];
    v[..b.len().min(4)].copy_from_slice(&b[..b.len().min(4)]);
    Ok(i32::from_ne_bytes(v))
}

pub fn set_bytes(fd: BorrowedFd<'_>, level: i32, name: i32, value: &[u8]) -> io::Result<()> {
    // SAFETY: `value` is valid for its length, which is what we pass.
    cvt(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            value.as_ptr().cast(),
            value.len() as libc::socklen_t,
        )
    })
    .map(drop)
}

pub fn set_int(fd: BorrowedFd<'_>, level: i32, name: i32, value: i32) -> io::Result<()> {
    set_bytes(fd, level, name, &value.to_ne_bytes())
}

/// An `ioctl` that writes one int (`SIOCINQ`, `SIOCOUTQ`, `SIOCOUTQNSD`).
pub fn ioctl_int(fd: BorrowedFd<'_>, request: libc::c_ulong) -> io::Result<i32> {
    let mut v: libc::c_int = 0;
    // SAFETY: these requests write one int to the pointer given.
    cvt(unsafe { libc::ioctl(fd.as_raw_fd(), request, &mut v) })?;
    Ok(v)
}

/// Up to `len` bytes of the socket's (repair-selected) queue, not consumed.
pub fn peek(fd: BorrowedFd<'_>, len: usize) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    if len == 0 {
        return Ok(buf);
    }
    // SAFETY: `buf` is valid for `len` bytes.
    let n = unsafe {
        libc::recv(
            fd.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            len,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    buf.truncate(n as usize);
    Ok(buf)
}

/// Every byte waiting at a stream socket, `len` of them, not consumed:
/// peeks from successive offsets (`SO_PEEK_OFF`, put back afterwards), and
/// stops at bytes that carry file descriptors (`SCM_RIGHTS`), which cannot
/// be copied (the caller sees fewer bytes than asked).
pub fn peek_stream(fd: BorrowedFd<'_>, len: usize) -> io::Result<Vec<u8>> {
    let old = get_int(fd, libc::SOL_SOCKET, libc::SO_PEEK_OFF)?;
    set_int(fd, libc::SOL_SOCKET, libc::SO_PEEK_OFF, 0)?;
    let r = peek_from_offsets(fd, len);
    set_int(fd, libc::SOL_SOCKET, libc::SO_PEEK_OFF, old)?;
    r
}

fn peek_from_offsets(fd: BorrowedFd<'_>, len: usize) -> io::Result<Vec<u8>> {
    let mut out = vec![0u8; len];
    let mut got = 0usize;
    // Room for one SCM_RIGHTS header and a few fds.
    let mut control = [0u64; 16];
    while got < len {
        let mut iov = libc::iovec {
            iov_base: out[got..].as_mut_ptr().cast(),
            iov_len: len - got,
        };
        // SAFETY: msghdr is plain data; all-zero is a valid empty header.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = std::mem::size_of_val(&control);
        // SAFETY: `msg` points at live buffers of the lengths given.
        let n = unsafe {
            libc::recvmsg(
                fd.as_raw_fd(),
                &mut msg,
                libc::MSG_PEEK | libc::MSG_DONTWAIT | libc::MSG_CMSG_CLOEXEC,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut rights = false;
        // SAFETY: the kernel filled `control` with cmsg headers (none if
        // msg_controllen is 0: then this is null).
        let mut c = unsafe { libc::CMSG_FIRSTHDR(&msg) };
        while !c.is_null() {
            // SAFETY: `c` is non-null and points at a header in `control`.
            let (level, kind, len) = unsafe { ((*c).cmsg_level, (*c).cmsg_type, (*c).cmsg_len) };
            if level == libc::SOL_SOCKET && kind == libc::SCM_RIGHTS {
                rights = true;
                // The peeked fds were installed in tern: close them.
                // SAFETY: CMSG_DATA of an SCM_RIGHTS header holds ints.
                let data = unsafe { libc::CMSG_DATA(c) }.cast::<libc::c_int>();
                // SAFETY: CMSG_LEN(0) is the header's size.
                let header = unsafe { libc::CMSG_LEN(0) } as usize;
                let count = len.saturating_sub(header) / std::mem::size_of::<libc::c_int>();
                for k in 0..count {
                    // SAFETY: within the fds the kernel wrote.
                    unsafe { libc::close(*data.add(k)) };
                }
            }
            // SAFETY: `c` is a header of `msg`'s control buffer.
            c = unsafe { libc::CMSG_NXTHDR(&msg, c) };
        }
        if rights {
            break;
        }
        if n == 0 {
            break;
        }
        got += n as usize;
    }
    out.truncate(got);
    Ok(out)
}

/// Send all of `data` (in repair mode: into the selected queue).
pub fn send_all(fd: BorrowedFd<'_>, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        // SAFETY: `data` is valid for its length.
        let n = unsafe {
            libc::send(
                fd.as_raw_fd(),
                data.as_ptr().cast(),
                data.len(),
                libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        if n == 0 {
            return Err(io::Error::from(io::ErrorKind::WriteZero));
        }
        data = &data[n as usize..];
    }
    Ok(())
}

fn to_addr(ss: &libc::sockaddr_storage, len: libc::socklen_t) -> Option<SocketAddr> {
    match ss.ss_family as i32 {
        libc::AF_INET if len as usize >= std::mem::size_of::<libc::sockaddr_in>() => {
            // SAFETY: the family says the storage holds a sockaddr_in, and
            // sockaddr_storage is large and aligned enough for it.
            let sin =
                unsafe { &*(ss as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            let ip = Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
            Some(SocketAddr::V4(SocketAddrV4::new(
                ip,
                u16::from_be(sin.sin_port),
            )))
        }
        libc::AF_INET6 if len as usize >= std::mem::size_of::<libc::sockaddr_in6>() => {
            // SAFETY: as above, for sockaddr_in6.
            let sin6 =
                unsafe { &*(ss as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(sin6.sin6_addr.s6_addr),
                u16::from_be(sin6.sin6_port),
                sin6.sin6_flowinfo,
                sin6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

fn name_of(
    fd: BorrowedFd<'_>,
    call: unsafe extern "C" fn(
        libc::c_int,
        *mut libc::sockaddr,
        *mut libc::socklen_t,
    ) -> libc::c_int,
) -> io::Result<Option<SocketAddr>> {
    // SAFETY: an all-zero sockaddr_storage is a valid value.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: `ss` is valid for `len` bytes; the kernel updates `len`.
    let r = unsafe {
        call(
            fd.as_raw_fd(),
            (&mut ss as *mut libc::sockaddr_storage).cast(),
            &mut len,
        )
    };
    match cvt(r) {
        Ok(_) => Ok(to_addr(&ss, len)),
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The socket's own address; `None` for an unbound socket (port 0).
pub fn local_addr(fd: BorrowedFd<'_>) -> io::Result<Option<SocketAddr>> {
    Ok(name_of(fd, libc::getsockname)?.filter(|a| a.port() != 0 || !a.ip().is_unspecified()))
}

/// The connected peer's address; `None` when not connected.
pub fn peer_addr(fd: BorrowedFd<'_>) -> io::Result<Option<SocketAddr>> {
    name_of(fd, libc::getpeername)
}

fn from_addr(addr: &SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: an all-zero sockaddr_storage is a valid value.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    match addr {
        SocketAddr::V4(a) => {
            // SAFETY: sockaddr_storage is large and aligned enough for a
            // sockaddr_in, which we fill completely.
            let sin = unsafe {
                &mut *(&mut ss as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in>()
            };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_port = a.port().to_be();
            sin.sin_addr.s_addr = u32::from(*a.ip()).to_be();
            (
                ss,
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        }
        SocketAddr::V6(a) => {
            // SAFETY: as above, for sockaddr_in6.
            let sin6 = unsafe {
                &mut *(&mut ss as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in6>()
            };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_port = a.port().to_be();
            sin6.sin6_addr.s6_addr = a.ip().octets();
            sin6.sin6_flowinfo = a.flowinfo();
            sin6.sin6_scope_id = a.scope_id();
            (
                ss,
                std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t,
            )
        }
    }
}

pub fn bind(fd: BorrowedFd<'_>, addr: &SocketAddr) -> io::Result<()> {
    let (ss, len) = from_addr(addr);
    // SAFETY: `ss` holds a valid sockaddr of length `len`.
    cvt(unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&ss as *const libc::sockaddr_storage).cast(),
            len,
        )
    })
    .map(drop)
}

/// `connect`; in TCP repair mode this only records the peer (no SYN).
pub fn connect(fd: BorrowedFd<'_>, addr: &SocketAddr) -> io::Result<()> {
    let (ss, len) = from_addr(addr);
    // SAFETY: `ss` holds a valid sockaddr of length `len`.
    cvt(unsafe {
        libc::connect(
            fd.as_raw_fd(),
            (&ss as *const libc::sockaddr_storage).cast(),
            len,
        )
    })
    .map(drop)
}

/// The `sockaddr_un` of unix socket name `name` (a path, or `\0` and an
/// abstract name), with its length.
fn unix_addr(name: &[u8]) -> io::Result<(libc::sockaddr_un, libc::socklen_t)> {
    // SAFETY: sockaddr_un is plain old data; all zeroes is valid.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    if name.is_empty() || name.len() >= addr.sun_path.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("a unix socket name of {} bytes", name.len()),
        ));
    }
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (d, &b) in addr.sun_path.iter_mut().zip(name) {
        *d = b as libc::c_char;
    }
    // An abstract name is exactly its bytes; a path ends at its NUL.
    let extra = usize::from(name[0] != 0);
    let len = std::mem::size_of::<libc::sa_family_t>() + name.len() + extra;
    let len = libc::socklen_t::try_from(len).map_err(|_| io::Error::other("address length"))?;
    Ok((addr, len))
}

/// Bind a unix socket to `name`: a path, or `\0` and an abstract name
/// (looked up in the socket's own network namespace).
pub fn bind_unix(fd: BorrowedFd<'_>, name: &[u8]) -> io::Result<()> {
    let (addr, len) = unix_addr(name)?;
    // SAFETY: `addr` is a valid sockaddr_un of at least `len` bytes.
    cvt(unsafe {
        libc::bind(
            fd.as_raw_fd(),
            std::ptr::addr_of!(addr).cast::<libc::sockaddr>(),
            len,
        )
    })
    .map(drop)
}

/// Connect a unix socket to `name`.
fn connect_unix(fd: BorrowedFd<'_>, name: &[u8]) -> io::Result<()> {
    let (addr, len) = unix_addr(name)?;
    // SAFETY: `addr` is a valid sockaddr_un of at least `len` bytes.
    cvt(unsafe {
        libc::connect(
            fd.as_raw_fd(),
            std::ptr::addr_of!(addr).cast::<libc::sockaddr>(),
            len,
        )
    })
    .map(drop)
}

/// A new unix socket of type `kind`, close-on-exec.
fn unix_socket(kind: i32) -> io::Result<std::os::fd::OwnedFd> {
    // SAFETY: plain call with integer arguments.
    let fd = cvt(unsafe { libc::socket(libc::AF_UNIX, kind | libc::SOCK_CLOEXEC, 0) })?;
    // SAFETY: the kernel just returned this descriptor.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
}

/// `name` (a unix socket path as sock_diag shows it, with its terminating
/// NUL) without the NULs, if it is an absolute path.
fn absolute_path(name: &[u8]) -> io::Result<&[u8]> {
    let end = name.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
    let name = &name[..end];
    if name.first() != Some(&b'/') || name.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "a unix socket name that is not an absolute path",
        ));
    }
    Ok(name)
}

/// A connected pair of unix sockets of type `kind` (stream or seqpacket)
/// whose first end is named `path` (an absolute path) and whose second
/// has `path` as its peer's name: what a connection accepted by a listener
/// bound to `path` is, on both sides. `client`: the name the second end
/// was bound to before it connected, if any. Made through a listener bound to
/// the same path string by a thread of ours whose root is a directory of
/// its own (`chroot` after `unshare(CLONE_FS)`), so nothing is bound at
/// `path` itself, which a listener of the program may hold. The name is
/// the string; the accepted end keeps that scratch socket file (removed)
/// as its inode.
pub fn accepted_pair(
    kind: i32,
    path: &[u8],
    client: Option<&[u8]>,
) -> io::Result<(std::os::fd::OwnedFd, std::os::fd::OwnedFd)> {
    use std::os::unix::ffi::OsStrExt;
    let path = absolute_path(path)?;
    let client = client.map(absolute_path).transpose()?;
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let scratch = std::env::temp_dir().join(format!(
        "tern-unix-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    for p in std::iter::once(path).chain(client) {
        let p = std::path::Path::new(std::ffi::OsStr::from_bytes(p));
        let parent = p.parent().unwrap_or(std::path::Path::new("/"));
        std::fs::create_dir_all(scratch.join(parent.strip_prefix("/").unwrap_or(parent)))?;
    }
    let root = std::ffi::CString::new(scratch.as_os_str().as_bytes())?;
    let made = std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: unshare and chroot change this (scoped, soon ended)
            // thread only; `root` is NUL-terminated.
            unsafe {
                cvt(libc::unshare(libc::CLONE_FS))?;
                cvt(libc::chroot(root.as_ptr()))?;
                cvt(libc::chdir(c"/".as_ptr()))?;
            }
            let listener = unix_socket(kind)?;
            bind_unix(listener.as_fd(), path)?;
            listen(listener.as_fd(), 1)?;
            let sock = unix_socket(kind)?;
            if let Some(name) = client {
                bind_unix(sock.as_fd(), name)?;
            }
            connect_unix(sock.as_fd(), path)?;
            // SAFETY: accept4 with no address buffers on a listening socket.
            let accepted = cvt(unsafe {
                libc::accept4(
                    listener.as_raw_fd(),
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                    libc::SOCK_CLOEXEC,
                )
            })?;
            // SAFETY: the kernel just returned this descriptor.
            let accepted = unsafe { std::os::fd::OwnedFd::from_raw_fd(accepted) };
            Ok((accepted, sock))
        })
        .join()
        .map_err(|_| io::Error::other("the socket thread panicked"))?
    });
    let _ = std::fs::remove_dir_all(&scratch);
    made
}

pub fn listen(fd: BorrowedFd<'_>, backlog: i32) -> io::Result<()> {
    // SAFETY: plain call with integer arguments.
    cvt(unsafe { libc::listen(fd.as_raw_fd(), backlog) }).map(drop)
}

/// Set the open file description's status flags (`O_NONBLOCK`).
pub fn set_status_flags(fd: BorrowedFd<'_>, flags: i32) -> io::Result<()> {
    // SAFETY: plain fcntl with integer arguments on a valid fd.
    cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags) }).map(drop)
}

/// TCP repair mode constants (`include/uapi/linux/tcp.h`).
pub mod repair {
    pub const TCP_REPAIR: i32 = 19;
    pub const TCP_REPAIR_QUEUE: i32 = 20;
    pub const TCP_QUEUE_SEQ: i32 = 21;
    pub const TCP_REPAIR_OPTIONS: i32 = 22;
    pub const TCP_TIMESTAMP: i32 = 24;
    pub const TCP_REPAIR_WINDOW: i32 = 29;
    pub const ON: i32 = 1;
    pub const OFF: i32 = 0;
    pub const RECV_QUEUE: i32 = 1;
    pub const SEND_QUEUE: i32 = 2;
    pub const TCPOPT_MAXSEG: u32 = 2;
    pub const TCPOPT_WINDOW: u32 = 3;
    pub const TCPOPT_SACK_PERM: u32 = 4;
    pub const TCPOPT_TIMESTAMP: u32 = 8;
    /// `struct tcp_info` bits of `tcpi_options`.
    pub const TCPI_OPT_TIMESTAMPS: u8 = 1;
    pub const TCPI_OPT_SACK: u8 = 2;
    pub const TCPI_OPT_WSCALE: u8 = 4;
    /// Bytes unsent in the send queue (`SIOCOUTQNSD`).
    pub const SIOCOUTQNSD: libc::c_ulong = 0x894B;
}

/// A connected pair of unix sockets of type `kind`, close-on-exec.
pub fn socketpair(kind: i32) -> io::Result<(std::os::fd::OwnedFd, std::os::fd::OwnedFd)> {
    use std::os::fd::FromRawFd;
    let mut fds = [0i32; 2];
    // SAFETY: socketpair writes two fds into the array.
    cvt(unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            kind | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    })?;
    // SAFETY: the kernel just returned these descriptors.
    Ok(unsafe {
        (
            std::os::fd::OwnedFd::from_raw_fd(fds[0]),
            std::os::fd::OwnedFd::from_raw_fd(fds[1]),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    /// The unix name `get` (getsockname or getpeername) gives `fd`.
    fn unix_name(
        fd: BorrowedFd<'_>,
        get: unsafe extern "C" fn(
            libc::c_int,
            *mut libc::sockaddr,
            *mut libc::socklen_t,
        ) -> libc::c_int,
    ) -> String {
        // SAFETY: sockaddr_un is plain old data; all zeroes is valid.
        let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
        // SAFETY: `addr` and `len` are valid out-pointers for the call.
        let r = unsafe {
            get(
                fd.as_raw_fd(),
                std::ptr::addr_of_mut!(addr).cast::<libc::sockaddr>(),
                &mut len,
            )
        };
        assert_eq!(r, 0, "{}", io::Error::last_os_error());
        let bytes: Vec<u8> = addr
            .sun_path
            .iter()
            .take_while(|&&c| c != 0)
            .map(|&c| c as u8)
            .collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    #[test]
    fn an_accepted_pair_has_the_names_of_one() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("SKIP an_accepted_pair_has_the_names_of_one: chroot needs root");
            return;
        }
        // Paths that need not exist: the pair is made under a scratch root.
        let listener = b"/run/tern-no-such-dir/app.sock\0";
        let client = b"/var/tern-no-such-dir/client.sock";
        let (acc, cli) = accepted_pair(libc::SOCK_STREAM, listener, Some(client)).expect("pair");
        assert_eq!(
            unix_name(acc.as_fd(), libc::getsockname),
            "/run/tern-no-such-dir/app.sock"
        );
        assert_eq!(
            unix_name(cli.as_fd(), libc::getpeername),
            "/run/tern-no-such-dir/app.sock"
        );
        assert_eq!(
            unix_name(cli.as_fd(), libc::getsockname),
            "/var/tern-no-such-dir/client.sock"
        );
        assert_eq!(
            unix_name(acc.as_fd(), libc::getpeername),
            "/var/tern-no-such-dir/client.sock"
        );
        assert!(!std::path::Path::new("/run/tern-no-such-dir").exists());
        let (mut a, mut c) = (std::fs::File::from(acc), std::fs::File::from(cli));
        a.write_all(b"hi").expect("send");
        let mut got = [0u8; 2];
        c.read_exact(&mut got).expect("receive");
        assert_eq!(&got, b"hi");
        let (acc, cli) = accepted_pair(libc::SOCK_SEQPACKET, listener, None).expect("unnamed");
        assert_eq!(unix_name(cli.as_fd(), libc::getsockname), "");
        assert_eq!(unix_name(acc.as_fd(), libc::getpeername), "");
        assert!(accepted_pair(libc::SOCK_STREAM, b"relative.sock", None).is_err());
    }
}
