//! Listening and connecting sockets, Unix (a path or an abstract name) and TCP, for `Listener` and
//! `Client`. Every socket is close-on-exec; a listening socket is non-blocking (its owner polls it
//! together with the handshakes in progress), a connected one blocking (a `Connection` polls for its
//! timeouts).

use rustix::io::Errno;
use rustix::net::{AddressFamily, SocketAddrAny, SocketAddrUnix, SocketFlags, SocketType, sockopt};
use std::io;
use std::net::SocketAddr;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::path::Path;
use std::time::{Duration, Instant};

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

/// A new stream socket for connecting (close-on-exec, non-blocking until connected: see
/// [`connect`]).
pub(crate) fn client_socket(tcp: Option<SocketAddr>) -> io::Result<OwnedFd> {
    let family = match tcp {
        None => AddressFamily::UNIX,
        Some(SocketAddr::V4(_)) => AddressFamily::INET,
        Some(SocketAddr::V6(_)) => AddressFamily::INET6,
    };
    Ok(rustix::net::socket_with(
        family,
        SocketType::STREAM,
        SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
        None,
    )?)
}

/// Where [`connect`] connects.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Peer<'a> {
    Unix(UnixName<'a>),
    Tcp(SocketAddr),
}

/// Connects `fd` (from [`client_socket`]) to `peer` by `deadline` (`None`: as long as it takes),
/// then makes it blocking. A Unix listener whose backlog is full refuses with `EAGAIN`: retried
/// until the deadline; a TCP connect in progress is polled for.
pub(crate) fn connect(
    fd: BorrowedFd<'_>,
    peer: Peer<'_>,
    deadline: Option<Instant>,
) -> io::Result<()> {
    let timed_out = || io::Error::new(io::ErrorKind::TimedOut, "connecting timed out");
    match peer {
        Peer::Unix(name) => {
            let addr = unix_addr(name)?;
            let mut nap = Duration::from_micros(100);
            loop {
                match rustix::net::connect(fd, &addr) {
                    Ok(()) => break,
                    Err(Errno::INTR) => {}
                    Err(Errno::AGAIN) => {
                        if deadline.is_some_and(|d| Instant::now() >= d) {
                            return Err(timed_out());
                        }
                        std::thread::sleep(nap);
                        nap = (nap * 2).min(Duration::from_millis(20));
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        }
        Peer::Tcp(addr) => match rustix::net::connect(fd, &addr) {
            Ok(()) => {}
            Err(Errno::INPROGRESS | Errno::INTR) => {
                if !wait_writable(fd, deadline)? {
                    return Err(timed_out());
                }
                if let Err(e) = sockopt::socket_error(fd)? {
                    return Err(e.into());
                }
            }
            Err(e) => return Err(e.into()),
        },
    }
    let flags = rustix::fs::fcntl_getfl(fd)?;
    rustix::fs::fcntl_setfl(fd, flags - rustix::fs::OFlags::NONBLOCK)?;
    if let Peer::Tcp(_) = peer {
        sockopt::set_tcp_nodelay(fd, true)?;
    }
    Ok(())
}

/// Waits until `fd` is writable (or in error) or the deadline passes.
fn wait_writable(fd: BorrowedFd<'_>, deadline: Option<Instant>) -> io::Result<bool> {
    use rustix::event::{PollFd, PollFlags, Timespec};
    let mut pfd = [PollFd::from_borrowed_fd(fd, PollFlags::OUT)];
    loop {
        let left = deadline.map(|d| {
            Timespec::try_from(d.saturating_duration_since(Instant::now())).unwrap_or(Timespec {
                tv_sec: i64::MAX,
                tv_nsec: 0,
            })
        });
        match rustix::event::poll(&mut pfd, left.as_ref()) {
            Ok(0) if deadline.is_some_and(|d| Instant::now() < d) => continue,
            Ok(0) => return Ok(false),
            Ok(_) => return Ok(true),
            Err(Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Whether a listener is live at the socket file `path`: a non-blocking connect is taken or held
/// in its backlog (`EAGAIN`); refused means nobody listens.
pub(crate) fn unix_listener_is_live(path: &Path) -> io::Result<bool> {
    let fd = client_socket(None)?;
    match rustix::net::connect(&fd, &SocketAddrUnix::new(path)?) {
        Ok(()) | Err(Errno::AGAIN) => Ok(true),
        Err(Errno::CONNREFUSED) => Ok(false),
        Err(e) => Err(e.into()),
    }
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
