//! `wait`: blocks until any of several connections, listeners or processes is ready (Python's
//! `multiprocessing.connection.wait`).

use super::{Connection, Listener};
use crate::process::Process;
use crate::sync::futex::Wait;
use crate::sys;
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::time::{Duration, Instant};

/// Something [`wait`] can wait for: it is ready when its descriptor is readable (and, for a TLS
/// connection, when its decrypted input says so: see the two provided methods).
///
/// A [`Connection`] is ready when a message (or end of file) has arrived, a [`Listener`] when a
/// client is waiting to be accepted (with a key, `accept` then still runs the client's handshake),
/// a [`Process`] when it has ended. A type of yours that wraps one of these should forward all
/// three methods to it, not only `ready_fd`.
pub trait Waitable {
    /// The descriptor whose readability means "ready".
    fn ready_fd(&self) -> BorrowedFd<'_>;

    /// Ready without the descriptor being readable (a TLS connection with decrypted input in
    /// memory). The default: never.
    fn ready_now(&self) -> bool {
        false
    }

    /// After the descriptor polled readable: whether that is readiness (a TLS connection whose
    /// readable bytes carried no message is not ready). The default: always.
    fn confirm_ready(&self) -> bool {
        true
    }
}

impl Waitable for Connection {
    fn ready_fd(&self) -> BorrowedFd<'_> {
        self.as_fd()
    }

    fn ready_now(&self) -> bool {
        self.input_buffered()
    }

    fn confirm_ready(&self) -> bool {
        self.confirm_readable()
    }
}

impl Waitable for Listener {
    fn ready_fd(&self) -> BorrowedFd<'_> {
        self.as_fd()
    }
}

impl<R> Waitable for Process<R> {
    fn ready_fd(&self) -> BorrowedFd<'_> {
        self.pidfd()
    }
}

impl<T: Waitable + ?Sized> Waitable for &T {
    fn ready_fd(&self) -> BorrowedFd<'_> {
        (**self).ready_fd()
    }

    fn ready_now(&self) -> bool {
        (**self).ready_now()
    }

    fn confirm_ready(&self) -> bool {
        (**self).confirm_ready()
    }
}

/// Waits until at least one of `objects` is ready, or `timeout` passes (`None`: as long as it
/// takes), and returns the indices of the ready ones, in order (empty on timeout). A zero timeout
/// looks once.
///
/// # Examples
/// ```
/// use multiprocess::{pipe, wait, Process};
/// use std::time::Duration;
///
/// fn nap(ms: u64) {
///     std::thread::sleep(Duration::from_millis(ms));
/// }
///
/// let (a, b) = pipe()?;
/// let (_c, d) = pipe()?;
/// a.send_bytes(b"x")?;
/// assert_eq!(wait(&[&b, &d], Some(Duration::ZERO))?, [0]);
/// let child = Process::spawn(nap, 10)?;
/// assert_eq!(wait(&[&d as &dyn multiprocess::Waitable, &child], None)?, [1]); // it ended
/// child.join()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// # Errors
/// The system's `poll` failed (too many objects for this process's limits, for example).
pub fn wait<W: Waitable + ?Sized>(
    objects: &[&W],
    timeout: Option<Duration>,
) -> io::Result<Vec<usize>> {
    // None, or too far to be an instant: as long as it takes.
    let deadline = timeout.and_then(|t| Wait::timeout(t).deadline());
    let fds: Vec<BorrowedFd<'_>> = objects.iter().map(|o| o.ready_fd()).collect();
    // Input already in memory: look at the others without waiting.
    let now = objects.iter().any(|o| o.ready_now());
    loop {
        let polled = sys::poll_readable(&fds, if now { Some(Instant::now()) } else { deadline })?;
        let ready: Vec<usize> = objects
            .iter()
            .zip(polled)
            .enumerate()
            .filter(|(_, (o, polled))| o.ready_now() || (*polled && o.confirm_ready()))
            .map(|(i, _)| i)
            .collect();
        // Readiness that was not (a TLS record without a message) waits again, to the deadline.
        if !ready.is_empty() || now || deadline.is_some_and(|d| Instant::now() >= d) {
            return Ok(ready);
        }
    }
}
