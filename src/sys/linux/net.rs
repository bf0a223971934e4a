//! Listening and connecting sockets, Unix (a path or an abstract name) and TCP, for `Listener` and
//! `Client`. Every socket is close-on-exec; a listening socket is non-blocking (its owner polls it
//! together with the handshakes in progress), a connected one blocking (a `Connection` polls for its
//! timeouts).

use rustix::net::{AddressFamily, SocketAddrAny, SocketAddrUnix, SocketFlags, SocketType, sockopt};
use std::io;
use std::net::SocketAddr;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::path::Path;
use std::time::Duration;

/// Where a Unix socket lives.
#[derive(Clone, Copy, Debug)]
pub(crate) enum UnixName<'a> {
    Path(&'a Path),
    Abstract(&'a [u8]),
}

fn unix_addr(name: UnixName<'_>) -> io::Result<SocketAddrUnix> {
    Ok(match name {
        UnixName::Path(p) => SocketAddrUnix::new(p)?,
        UnixName::Abstract(n) => SocketAddrUnix::new_abstract_name(n)?,
    })
}

/// A Unix stream socket bound to `name` and listening.
pub(crate) fn listen_unix(name: UnixName<'_>, backlog: i32) -> io::Result<OwnedFd> {
    let addr = unix_addr(name)?;
    let fd = rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
        None,
    )?;
    rustix::net::bind(&fd, &addr)?;
    rustix::net::listen(&fd, backlog)?;
    Ok(fd)
}

/// A TCP socket bound to `addr` (with `SO_REUSEADDR`, as Python's listener) and listening.
pub(crate) fn listen_tcp(addr: SocketAddr, backlog: i32) -> io::Result<OwnedFd> {
    let family = match addr {
        SocketAddr::V4(_) => AddressFamily::INET,
        SocketAddr::V6(_) => AddressFamily::INET6,
    };
    let fd = rustix::net::socket_with(
        family,
        SocketType::STREAM,
        SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
        None,
    )?;
    sockopt::set_socket_reuseaddr(&fd, true)?;
    rustix::net::bind(&fd, &addr)?;
    rustix::net::listen(&fd, backlog)?;
    Ok(fd)
}

/// The next connection waiting on a listening socket (blocking, close-on-exec), or `WouldBlock`.
pub(crate) fn accept(listener: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    let fd =
        rustix::io::retry_on_intr(|| rustix::net::accept_with(listener, SocketFlags::CLOEXEC))?;
    Ok(fd)
}

/// A Unix stream socket connected to `name`.
pub(crate) fn connect_unix(name: UnixName<'_>) -> io::Result<OwnedFd> {
    let addr = unix_addr(name)?;
    let fd = rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::CLOEXEC,
        None,
    )?;
    rustix::io::retry_on_intr(|| rustix::net::connect(&fd, &addr))?;
    Ok(fd)
}

/// A TCP socket connected to `addr` within `timeout` (`None`: the kernel's own limit), with
/// `TCP_NODELAY` (a message's header and payload go in one write; small replies should not wait).
pub(crate) fn connect_tcp(addr: SocketAddr, timeout: Option<Duration>) -> io::Result<OwnedFd> {
    let stream = match timeout {
        Some(t) => std::net::TcpStream::connect_timeout(&addr, t.max(Duration::from_millis(1)))?,
        None => std::net::TcpStream::connect(addr)?,
    };
    stream.set_nodelay(true)?;
    Ok(stream.into())
}

/// Turns on `TCP_NODELAY` on an accepted TCP connection.
pub(crate) fn set_nodelay(fd: BorrowedFd<'_>) -> io::Result<()> {
    Ok(sockopt::set_tcp_nodelay(fd, true)?)
}

/// The address a TCP socket is bound to (the port the kernel chose for port 0).
pub(crate) fn tcp_local_addr(fd: BorrowedFd<'_>) -> io::Result<SocketAddr> {
    let any: SocketAddrAny = rustix::net::getsockname(fd)?;
    SocketAddr::try_from(any).map_err(|_| io::Error::other("not an IP socket"))
}

/// The address of a TCP socket's peer.
pub(crate) fn tcp_peer_addr(fd: BorrowedFd<'_>) -> io::Result<SocketAddr> {
    let any: SocketAddrAny =
        rustix::net::getpeername(fd)?.ok_or_else(|| io::Error::other("no peer"))?;
    SocketAddr::try_from(any).map_err(|_| io::Error::other("not an IP socket"))
}
