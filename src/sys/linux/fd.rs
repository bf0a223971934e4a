//! Descriptors: socket pairs, pipes, `poll`, and framed `sendmsg`/`recvmsg` with `SCM_RIGHTS`.
//!
//! # Safety
//! Every function here takes descriptors as `BorrowedFd` (valid for the call) and returns new ones as
//! `OwnedFd` constructed only from a descriptor the kernel has just returned to us, so ownership is never
//! duplicated. Buffers handed to the kernel are Rust slices whose pointer and length describe memory we
//! may write (or read) for the length given. Every descriptor is created close-on-exec: a child inherits
//! only what it is handed explicitly.

#![allow(unsafe_code)]

use std::io::{self, IoSlice};
use std::mem;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

/// Most descriptors the kernel accepts in one `SCM_RIGHTS` message (`SCM_MAX_FD`).
pub(crate) const MAX_FDS_PER_MESSAGE: usize = 253;

pub(super) fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn cvt_size(ret: libc::ssize_t) -> io::Result<usize> {
    if ret == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret as usize)
    }
}

/// `socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC)`.
pub(crate) fn socketpair() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: `fds` is a writable array of two ints, as socketpair(2) requires.
    cvt(unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    })?;
    // SAFETY: the kernel just returned these two descriptors to us; nothing else owns them.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// `pipe2(O_CLOEXEC)`: (read end, write end).
pub(crate) fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: `fds` is a writable array of two ints, as pipe2(2) requires.
    cvt(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
    // SAFETY: the kernel just returned these two descriptors to us; nothing else owns them.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// `dup` with close-on-exec, at the lowest free number `>= min`.
pub(crate) fn dup_cloexec(fd: BorrowedFd<'_>, min: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: F_DUPFD_CLOEXEC on a valid descriptor; the result is a fresh descriptor we own.
    let new = cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, min) })?;
    // SAFETY: `new` was just returned by the kernel and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(new) })
}

/// Sets `SO_SNDBUF` and `SO_RCVBUF` (the kernel caps them at `wmem_max`/`rmem_max`).
pub(crate) fn set_socket_buffers(fd: BorrowedFd<'_>, bytes: usize) -> io::Result<()> {
    let val: libc::c_int = bytes.min(i32::MAX as usize) as libc::c_int;
    for opt in [libc::SO_SNDBUF, libc::SO_RCVBUF] {
        // SAFETY: `val` is a c_int living for the call and its size is passed alongside.
        cvt(unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                (&val as *const libc::c_int).cast(),
                mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        })?;
    }
    Ok(())
}

/// Which direction `shutdown` closes.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Shutdown {
    Read,
    Write,
}

/// `shutdown(2)` on a socket.
pub(crate) fn shutdown(fd: BorrowedFd<'_>, how: Shutdown) -> io::Result<()> {
    let how = match how {
        Shutdown::Read => libc::SHUT_RD,
        Shutdown::Write => libc::SHUT_WR,
    };
    // SAFETY: plain syscall on a valid descriptor.
    cvt(unsafe { libc::shutdown(fd.as_raw_fd(), how) }).map(drop)
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

/// Converts an optional timeout into poll's milliseconds, rounding up so we never wake early.
fn poll_millis(deadline: Option<Instant>) -> libc::c_int {
    match deadline {
        None => -1,
        Some(d) => {
            let left = d.saturating_duration_since(Instant::now());
            let ms = left.as_nanos().div_ceil(1_000_000);
            ms.min(i32::MAX as u128) as libc::c_int
        }
    }
}

/// Waits until any descriptor is readable (or at end-of-file / hung up / in error) or the deadline
/// passes. Returns, for each descriptor, whether it is ready. `EINTR` is retried with the time left.
pub(crate) fn poll_readable(
    fds: &[BorrowedFd<'_>],
    deadline: Option<Instant>,
) -> io::Result<Vec<bool>> {
    let mut pfds: Vec<libc::pollfd> = fds
        .iter()
        .map(|fd| libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    loop {
        let timeout = poll_millis(deadline);
        // SAFETY: `pfds` is a valid array of `pfds.len()` pollfd structures.
        let r = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, timeout) };
        if r >= 0 {
            if r == 0 && deadline.is_some_and(|d| Instant::now() < d) {
                continue; // woke a hair early: poll rounds; never return before the deadline
            }
            return Ok(pfds.iter().map(|p| p.revents != 0).collect());
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// Waits for one descriptor; `Ok(true)` when readable (or hung up), `Ok(false)` on timeout.
pub(crate) fn wait_readable(fd: BorrowedFd<'_>, timeout: Option<Duration>) -> io::Result<bool> {
    let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
    if timeout.is_some() && deadline.is_none() {
        return wait_readable(fd, None);
    }
    Ok(poll_readable(&[fd], deadline)?[0])
}

/// Bytes of control buffer needed for `n` descriptors.
fn cmsg_space(n: usize) -> usize {
    // SAFETY: CMSG_SPACE is a pure arithmetic macro.
    unsafe { libc::CMSG_SPACE((n * mem::size_of::<RawFd>()) as u32) as usize }
}

/// `sendmsg` of the gathered slices with `MSG_NOSIGNAL`, attaching `fds` with `SCM_RIGHTS` when given.
/// Returns how many bytes the kernel took (possibly fewer than offered).
pub(crate) fn send_vectored(
    fd: BorrowedFd<'_>,
    bufs: &[IoSlice<'_>],
    fds: &[RawFd],
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
    // u64 storage keeps the control buffer aligned for `cmsghdr`.
    let mut control = vec![0u64; cmsg_space(fds.len()).div_ceil(8)];
    // SAFETY: msghdr is plain old data; all-zero is a valid empty value.
    let mut msg: libc::msghdr = unsafe { mem::zeroed() };
    // IoSlice is guaranteed ABI-compatible with iovec on Unix.
    msg.msg_iov = bufs.as_ptr() as *mut libc::iovec;
    msg.msg_iovlen = bufs.len();
    if !fds.is_empty() {
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = cmsg_space(fds.len());
        // SAFETY: msg_control points at a zeroed, aligned buffer of msg_controllen bytes, large enough
        // for one cmsghdr followed by `fds.len()` descriptors (cmsg_space computed exactly that).
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(mem::size_of_val(fds) as u32) as usize;
            std::ptr::copy_nonoverlapping(
                fds.as_ptr(),
                libc::CMSG_DATA(cmsg).cast::<RawFd>(),
                fds.len(),
            );
        }
    }
    loop {
        // SAFETY: `msg` describes live buffers (bufs, control) for the duration of the call.
        let r = unsafe { libc::sendmsg(fd.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
        match cvt_size(r) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

/// `write` of all of `buf` to a descriptor that may be a pipe (no `MSG_NOSIGNAL` there; the library
/// relies on SIGPIPE being ignored, as Rust's runtime arranges, or reports `EPIPE`).
pub(crate) fn write(fd: BorrowedFd<'_>, buf: &[u8]) -> io::Result<usize> {
    loop {
        // SAFETY: `buf` is a readable slice of `buf.len()` bytes.
        let r = unsafe { libc::write(fd.as_raw_fd(), buf.as_ptr().cast(), buf.len()) };
        match cvt_size(r) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

/// Descriptors received with a message, and whether the kernel had to drop some (`MSG_CTRUNC`).
#[derive(Debug, Default)]
pub(crate) struct Inbox {
    pub(crate) fds: Vec<OwnedFd>,
    pub(crate) truncated: bool,
}

/// Receives up to `max` bytes appended into the spare capacity of `buf` (which must already have that
/// much capacity reserved), collecting any descriptors attached with `SCM_RIGHTS` into `fds`.
/// `nonblocking` adds `MSG_DONTWAIT`. Returns the number of bytes read; 0 means end-of-file.
///
/// Works on sockets with `recvmsg` and falls back to `read` on other descriptors (pipes).
pub(crate) fn recv_into_spare(
    fd: BorrowedFd<'_>,
    buf: &mut Vec<u8>,
    max: usize,
    fds: &mut Inbox,
    socket: bool,
    nonblocking: bool,
) -> io::Result<usize> {
    let spare = buf.spare_capacity_mut();
    let len = max.min(spare.len());
    let ptr = spare.as_mut_ptr().cast::<u8>();
    let n = if socket {
        recvmsg_raw(fd, ptr, len, fds, nonblocking)?
    } else {
        loop {
            // SAFETY: `ptr..ptr+len` lies inside the vector's spare capacity, which we may write.
            let r = unsafe { libc::read(fd.as_raw_fd(), ptr.cast(), len) };
            match cvt_size(r) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => break other?,
            }
        }
    };
    // SAFETY: the kernel initialised exactly `n <= len` bytes at the start of the spare capacity.
    unsafe { buf.set_len(buf.len() + n) };
    Ok(n)
}

/// Receives into a fully initialised slice (used for fixed-size headers).
pub(crate) fn recv_into_slice(
    fd: BorrowedFd<'_>,
    buf: &mut [u8],
    fds: &mut Inbox,
    socket: bool,
    nonblocking: bool,
) -> io::Result<usize> {
    if socket {
        recvmsg_raw(fd, buf.as_mut_ptr(), buf.len(), fds, nonblocking)
    } else {
        loop {
            // SAFETY: `buf` is a writable slice of `buf.len()` bytes.
            let r = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            match cvt_size(r) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => return other,
            }
        }
    }
}

fn recvmsg_raw(
    fd: BorrowedFd<'_>,
    ptr: *mut u8,
    len: usize,
    inbox: &mut Inbox,
    nonblocking: bool,
) -> io::Result<usize> {
    let mut control = [0u64; 130]; // 1040 bytes >= CMSG_SPACE(253 * 4): room for SCM_MAX_FD descriptors
    let mut iov = libc::iovec {
        iov_base: ptr.cast(),
        iov_len: len,
    };
    // SAFETY: msghdr is plain old data; all-zero is a valid empty value.
    let mut msg: libc::msghdr = unsafe { mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = mem::size_of_val(&control);
    let flags = libc::MSG_CMSG_CLOEXEC | if nonblocking { libc::MSG_DONTWAIT } else { 0 };
    let n = loop {
        // SAFETY: `msg` points at `iov` (caller guarantees ptr..ptr+len is writable) and `control`,
        // both alive for the call.
        let r = unsafe { libc::recvmsg(fd.as_raw_fd(), &mut msg, flags) };
        match cvt_size(r) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            // The peer closed (or died) with data we had sent it still unread: for us that is plain
            // end-of-file.
            Err(e) if e.raw_os_error() == Some(libc::ECONNRESET) => break 0,
            other => break other?,
        }
    };
    // Take ownership of every descriptor the kernel installed, even if we then report an error, so that
    // none leaks.
    // SAFETY: the kernel filled `msg_controllen` bytes of `control` with well-formed cmsghdrs; we walk
    // them with the CMSG_* macros, which stay inside that length.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(cmsg).cast::<RawFd>();
                let count =
                    ((*cmsg).cmsg_len - libc::CMSG_LEN(0) as usize) / mem::size_of::<RawFd>();
                for i in 0..count {
                    let raw = std::ptr::read_unaligned(data.add(i));
                    // SAFETY (inner): the kernel installed `raw` in our table for us alone.
                    inbox.fds.push(OwnedFd::from_raw_fd(raw));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    if msg.msg_flags & libc::MSG_CTRUNC != 0 {
        // Some descriptors were dropped by the kernel (our descriptor table is full). The bytes were
        // received all the same: report them, and let the caller fail the message they belong to.
        inbox.truncated = true;
    }
    Ok(n)
}

/// Atomically replaces each descriptor in `fds` with `/dev/null` (close-on-exec). Used in a forked child
/// on descriptors it inherited but was not given: the object behind each number is released (so its
/// peer can see end-of-file), while the number stays occupied, so a stale owner that closes it later
/// cannot close someone else's descriptor.
pub(crate) fn neuter(fds: &[RawFd]) -> io::Result<()> {
    if fds.is_empty() {
        return Ok(());
    }
    // SAFETY: the path is a NUL-terminated literal.
    let null = cvt(unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) })?;
    let mut result = Ok(());
    for &fd in fds {
        // SAFETY: dup3 onto `fd` closes whatever `fd` named and installs /dev/null there; the caller
        // abandons the old object behind `fd` (see above).
        if let Err(e) = cvt(unsafe { libc::dup3(null, fd, libc::O_CLOEXEC) }) {
            result = Err(e);
        }
    }
    // SAFETY: `null` is the descriptor opened above and owned by nobody else.
    unsafe { libc::close(null) };
    result
}

/// Takes ownership of a descriptor number inherited from the parent (named by an environment variable).
/// Returns `None` unless `raw` is open.
pub(crate) fn adopt_inherited(raw: RawFd) -> Option<OwnedFd> {
    // SAFETY: F_GETFD only queries; it fails with EBADF if `raw` is not open.
    if raw < 0 || unsafe { libc::fcntl(raw, libc::F_GETFD) } == -1 {
        return None;
    }
    // Inherited descriptors come without close-on-exec; a program this child executes must not get it.
    // SAFETY: plain fcntl on the descriptor just checked to be open.
    unsafe { libc::fcntl(raw, libc::F_SETFD, libc::FD_CLOEXEC) };
    // SAFETY: the parent placed this descriptor here for us (documented bootstrap protocol) and no other
    // code in this freshly started process knows its number, so we are its only owner.
    Some(unsafe { OwnedFd::from_raw_fd(raw) })
}
