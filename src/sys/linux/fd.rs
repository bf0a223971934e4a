//! Descriptors: socket pairs, pipes, `poll`, and framed `sendmsg`/`recvmsg` with `SCM_RIGHTS`.
//!
//! # Safety
//! The system calls are rustix's, which take descriptors as `BorrowedFd` and buffers as slices and
//! return new descriptors as `OwnedFd`, so ownership is never duplicated; what is left here is
//! turning raw numbers (inherited, or collected by the codec) into borrowed descriptors, and telling a
//! vector how many bytes the kernel wrote into its spare capacity. Every descriptor is created
//! close-on-exec: a child inherits only what it is handed explicitly.

#![allow(unsafe_code)]

use rustix::io::{Errno, retry_on_intr};
use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags,
    SendAncillaryBuffer, SendAncillaryMessage, SendFlags, SocketFlags, SocketType,
};
use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

/// Most descriptors the kernel accepts in one `SCM_RIGHTS` message (`SCM_MAX_FD`).
pub(crate) const MAX_FDS_PER_MESSAGE: usize = 253;

/// The error of a call that makes a descriptor. Running out of descriptors (`EMFILE`: this process
/// is at its `RLIMIT_NOFILE`; `ENFILE`: the system is) gets a kind of its own,
/// [`QuotaExceeded`](io::ErrorKind::QuotaExceeded), and a message that says what to do, instead of
/// the uncategorized error the standard library makes of it; the OS error is its source.
pub(crate) fn creating(e: impl Into<io::Error>) -> io::Error {
    let e = e.into();
    let what = match e.raw_os_error() {
        Some(libc::EMFILE) => {
            "this process has as many descriptors open as its limit allows (RLIMIT_NOFILE: close \
             some, or raise it with `ulimit -n`)"
        }
        Some(libc::ENFILE) => "the system has as many files open as it allows (fs.file-max)",
        _ => return e,
    };
    io::Error::new(io::ErrorKind::QuotaExceeded, Exhausted { what, source: e })
}

/// The error of a descriptor that did not arrive because this process is out of them.
pub(crate) fn out_of_descriptors() -> io::Error {
    creating(io::Error::from_raw_os_error(libc::EMFILE))
}

/// Descriptor exhaustion, as [`creating`] reports it.
#[derive(Debug)]
struct Exhausted {
    what: &'static str,
    source: io::Error,
}

impl std::fmt::Display for Exhausted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "out of file descriptors: {}", self.what)
    }
}

impl std::error::Error for Exhausted {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

/// `socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC)`.
pub(crate) fn socketpair() -> io::Result<(OwnedFd, OwnedFd)> {
    rustix::net::socketpair(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::CLOEXEC,
        None,
    )
    .map_err(creating)
}

/// `socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC)`: a pair that keeps message boundaries (a
/// queue's side channel for descriptors).
pub(crate) fn seqpacket_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    rustix::net::socketpair(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )
    .map_err(creating)
}

/// Whether `fd` is a `SOCK_SEQPACKET` socket.
pub(crate) fn is_seqpacket(fd: BorrowedFd<'_>) -> bool {
    rustix::net::sockopt::socket_type(fd).is_ok_and(|t| t == SocketType::SEQPACKET)
}

/// `pipe2(O_CLOEXEC)`: (read end, write end).
pub(crate) fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).map_err(creating)
}

/// `dup` with close-on-exec, at the lowest free number `>= min`.
pub(crate) fn dup_cloexec(fd: BorrowedFd<'_>, min: RawFd) -> io::Result<OwnedFd> {
    rustix::io::fcntl_dupfd_cloexec(fd, min).map_err(creating)
}

/// Sets `SO_SNDBUF` and `SO_RCVBUF` (the kernel caps them at `wmem_max`/`rmem_max`).
pub(crate) fn set_socket_buffers(fd: BorrowedFd<'_>, bytes: usize) -> io::Result<()> {
    use rustix::net::sockopt;
    sockopt::set_socket_send_buffer_size(fd, bytes)?;
    sockopt::set_socket_recv_buffer_size(fd, bytes)?;
    Ok(())
}

/// Which direction `shutdown` closes.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Shutdown {
    Read,
    Write,
    Both,
}

/// `shutdown(2)` on a socket.
pub(crate) fn shutdown(fd: BorrowedFd<'_>, how: Shutdown) -> io::Result<()> {
    let how = match how {
        Shutdown::Read => rustix::net::Shutdown::Read,
        Shutdown::Write => rustix::net::Shutdown::Write,
        Shutdown::Both => rustix::net::Shutdown::Both,
    };
    Ok(rustix::net::shutdown(fd, how)?)
}

/// Whether `fd` is a socket (as opposed to a pipe or file).
pub(crate) fn is_socket(fd: BorrowedFd<'_>) -> bool {
    stream_kind(fd) == Some(Stream::Socket)
}

/// What kind of byte stream a descriptor is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Stream {
    Socket,
    Pipe,
}

/// Whether `fd` is a socket or a pipe (`None`: anything else, or `fstat` failed).
pub(crate) fn stream_kind(fd: BorrowedFd<'_>) -> Option<Stream> {
    use rustix::fs::FileType;
    let st = rustix::fs::fstat(fd).ok()?;
    match FileType::from_raw_mode(st.st_mode) {
        FileType::Socket => Some(Stream::Socket),
        FileType::Fifo => Some(Stream::Pipe),
        _ => None,
    }
}

/// Waits until any descriptor is readable (or at end-of-file / hung up / in error) or the deadline
/// passes. Returns, for each descriptor, whether it is ready. A signal only costs another look, with
/// the time left.
pub(crate) fn poll_readable(
    fds: &[BorrowedFd<'_>],
    deadline: Option<Instant>,
) -> io::Result<Vec<bool>> {
    use rustix::event::{PollFd, PollFlags, Timespec};
    let mut pfds: Vec<PollFd<'_>> = fds
        .iter()
        .map(|fd| PollFd::from_borrowed_fd(*fd, PollFlags::IN))
        .collect();
    loop {
        let left = deadline.map(|d| {
            let left = d.saturating_duration_since(Instant::now());
            // A deadline years away is as good as none, and the same wait.
            Timespec::try_from(left).unwrap_or(Timespec {
                tv_sec: i64::MAX,
                tv_nsec: 0,
            })
        });
        match rustix::event::poll(&mut pfds, left.as_ref()) {
            // Never report a timeout before the deadline, however the kernel rounded.
            Ok(0) if deadline.is_some_and(|d| Instant::now() < d) => continue,
            Ok(_) => return Ok(pfds.iter().map(|p| !p.revents().is_empty()).collect()),
            Err(Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Reads the start of the next message of a message socket into `buf` without taking it, and
/// without taking its descriptors (`MSG_PEEK`, no control buffer); `WouldBlock` if there is none.
///
/// Returns the message's whole length (`MSG_TRUNC`), which may be more than `buf` holds.
pub(crate) fn peek_message(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    let flags = RecvFlags::PEEK | RecvFlags::DONTWAIT | RecvFlags::TRUNC;
    Ok(retry_on_intr(|| rustix::net::recv(fd, &mut *buf, flags))?.1)
}

/// Waits for one descriptor; `Ok(true)` when readable (or hung up), `Ok(false)` on timeout.
pub(crate) fn wait_readable(fd: BorrowedFd<'_>, timeout: Option<Duration>) -> io::Result<bool> {
    let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
    Ok(poll_readable(&[fd], deadline)?[0])
}

/// `sendmsg` of the gathered slices with `MSG_NOSIGNAL`, attaching `fds` with `SCM_RIGHTS` when given.
/// Returns how many bytes the kernel took (possibly fewer than offered).
///
/// `fds` are the numbers of descriptors that objects alive for the whole call own (the codec collects
/// them, borrowed, from the value being sent).
pub(crate) fn send_vectored(
    fd: BorrowedFd<'_>,
    bufs: &[IoSlice<'_>],
    fds: &[RawFd],
) -> io::Result<usize> {
    send_with(fd, bufs, fds, false)
}

/// [`send_vectored`] with `MSG_DONTWAIT` when `nonblocking` (then `WouldBlock` while the socket's
/// buffer is full).
pub(crate) fn send_with(
    fd: BorrowedFd<'_>,
    bufs: &[IoSlice<'_>],
    fds: &[RawFd],
    nonblocking: bool,
) -> io::Result<usize> {
    if fds.len() > MAX_FDS_PER_MESSAGE {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "a message can carry at most {MAX_FDS_PER_MESSAGE} descriptors, not {}",
                fds.len()
            ),
        ));
    }
    let borrowed: Vec<BorrowedFd<'_>> = fds
        .iter()
        // SAFETY: each number is a descriptor owned by an object that outlives this call (see
        // above), so it stays open while borrowed here.
        .map(|&raw| unsafe { BorrowedFd::borrow_raw(raw) })
        .collect();
    let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(fds.len()))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !borrowed.is_empty() && !control.push(SendAncillaryMessage::ScmRights(&borrowed)) {
        return Err(io::Error::other(
            "no room for the descriptors in the control buffer",
        ));
    }
    let mut flags = SendFlags::NOSIGNAL;
    if nonblocking {
        flags |= SendFlags::DONTWAIT;
    }
    Ok(retry_on_intr(|| {
        rustix::net::sendmsg(fd, bufs, &mut control, flags)
    })?)
}

/// `write` of `buf` to a descriptor that may be a pipe (no `MSG_NOSIGNAL` there; the library relies
/// on SIGPIPE being ignored, as Rust's runtime arranges, or reports `EPIPE`).
pub(crate) fn write(fd: BorrowedFd<'_>, buf: &[u8]) -> io::Result<usize> {
    Ok(retry_on_intr(|| rustix::io::write(fd, buf))?)
}

/// Descriptors received with a message, and whether the kernel had to drop some (`MSG_CTRUNC`).
#[derive(Debug, Default)]
pub(crate) struct Inbox {
    pub(crate) fds: Vec<OwnedFd>,
    pub(crate) truncated: bool,
}

/// Receives up to `max` bytes appended to `buf` (into capacity it reserves beforehand, without
/// zeroing it first). `nonblocking` adds `MSG_DONTWAIT`. Returns the number of bytes read; 0 means
/// end-of-file.
///
/// This reads the rest of a message whose start (where descriptors travel, see
/// [`recv_into_slice`]) was read already, so it takes no descriptors: any that a peer attached
/// further in are closed by the kernel.
pub(crate) fn recv_into_spare(
    fd: BorrowedFd<'_>,
    buf: &mut Vec<u8>,
    max: usize,
    socket: bool,
    nonblocking: bool,
) -> io::Result<usize> {
    let spare = buf.spare_capacity_mut();
    let len = max.min(spare.len());
    let spare = &mut spare[..len];
    let got = retry_on_intr(|| {
        if socket {
            let flags = if nonblocking {
                RecvFlags::DONTWAIT
            } else {
                RecvFlags::empty()
            };
            rustix::net::recv(fd, &mut *spare, flags).map(|((init, _), _)| init.len())
        } else {
            rustix::io::read(fd, &mut *spare).map(|(init, _)| init.len())
        }
    });
    let n = match got {
        Ok(n) => n,
        // The peer closed (or died) with data we had sent it still unread: for us that is plain
        // end-of-file.
        Err(Errno::CONNRESET) => 0,
        Err(e) => return Err(e.into()),
    };
    // SAFETY: the kernel initialised the first `n <= len` bytes of the spare capacity (rustix handed
    // them back as an initialised slice).
    unsafe { buf.set_len(buf.len() + n) };
    Ok(n)
}

/// Receives into `buf` (a message's first bytes), collecting the descriptors attached with
/// `SCM_RIGHTS` into `inbox` (on sockets; pipes carry none).
pub(crate) fn recv_into_slice(
    fd: BorrowedFd<'_>,
    buf: &mut [u8],
    inbox: &mut Inbox,
    socket: bool,
    nonblocking: bool,
) -> io::Result<usize> {
    if !socket {
        return Ok(retry_on_intr(|| rustix::io::read(fd, &mut *buf))?);
    }
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS_PER_MESSAGE))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let flags = RecvFlags::CMSG_CLOEXEC
        | if nonblocking {
            RecvFlags::DONTWAIT
        } else {
            RecvFlags::empty()
        };
    let mut iov = [IoSliceMut::new(buf)];
    let msg = match retry_on_intr(|| rustix::net::recvmsg(fd, &mut iov, &mut control, flags)) {
        Ok(msg) => msg,
        // See `recv_into_spare`.
        Err(Errno::CONNRESET) => return Ok(0),
        Err(e) => return Err(e.into()),
    };
    // Take ownership of every descriptor the kernel installed (those left in `control` are closed
    // when it drops), so that none leaks.
    for m in control.drain() {
        if let RecvAncillaryMessage::ScmRights(fds) = m {
            inbox.fds.extend(fds);
        }
    }
    if msg.flags.contains(ReturnFlags::CTRUNC) {
        // Some descriptors were dropped by the kernel (our descriptor table is full). The bytes were
        // received all the same: report them, and let the caller fail the message they belong to.
        inbox.truncated = true;
    }
    Ok(msg.bytes)
}

/// Atomically replaces each descriptor in `fds` with `/dev/null` (close-on-exec). Used in a forked child
/// on descriptors it inherited but was not given: the object behind each number is released (so its
/// peer can see end-of-file), while the number stays occupied, so a stale owner that closes it later
/// cannot close someone else's descriptor.
///
/// `null` is [`dev_null`], opened by the parent before the fork: the child does no more than the
/// `dup3`s (every page a forked child writes is a page the kernel copies).
pub(crate) fn neuter(fds: &[RawFd], null: BorrowedFd<'_>) -> io::Result<()> {
    let mut result = Ok(());
    for &fd in fds {
        // SAFETY: dup3 onto `fd` closes whatever `fd` named and installs /dev/null there; the caller
        // abandons the old object behind `fd` (see above), and `null` is open.
        if unsafe { libc::dup3(null.as_raw_fd(), fd, libc::O_CLOEXEC) } == -1 {
            result = Err(io::Error::last_os_error());
        }
    }
    result
}

/// This process's descriptor of `/dev/null` (close-on-exec), opened once.
pub(crate) fn dev_null() -> io::Result<BorrowedFd<'static>> {
    use rustix::fs::{Mode, OFlags};
    static NULL: std::sync::OnceLock<OwnedFd> = std::sync::OnceLock::new();
    if let Some(fd) = NULL.get() {
        return Ok(fd.as_fd());
    }
    let fd = rustix::fs::open("/dev/null", OFlags::RDWR | OFlags::CLOEXEC, Mode::empty())
        .map_err(creating)?;
    Ok(NULL.get_or_init(|| fd).as_fd())
}

/// Takes ownership of a descriptor number inherited from the parent (named by an environment variable).
/// Returns `None` unless `raw` is open.
pub(crate) fn adopt_inherited(raw: RawFd) -> Option<OwnedFd> {
    use rustix::io::{FdFlags, fcntl_setfd};
    // SAFETY: F_GETFD only asks whether `raw` is open. The parent placed that descriptor here for
    // us (documented bootstrap protocol) and no other code in this freshly started process knows
    // its number, so we are its only owner.
    let fd = unsafe {
        if raw < 0 || libc::fcntl(raw, libc::F_GETFD) == -1 {
            return None;
        }
        OwnedFd::from_raw_fd(raw)
    };
    // Inherited descriptors come without close-on-exec; a program this child executes must not get it.
    let _ = fcntl_setfd(&fd, FdFlags::CLOEXEC);
    Some(fd)
}

/// Fills `buf` with random bytes from the kernel (for authentication challenges).
pub(crate) fn random_bytes(buf: &mut [u8]) -> io::Result<()> {
    let mut at = 0;
    while at < buf.len() {
        match rustix::rand::getrandom(&mut buf[at..], rustix::rand::GetRandomFlags::empty()) {
            Ok(n) => at += n,
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}
