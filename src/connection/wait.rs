//! `wait`: blocks until any of several connections, listeners or processes is ready (Python's
//! `multiprocessing.connection.wait`).

use super::{Connection, Listener};
use crate::process::Process;
use crate::sync::futex::Wait;
use crate::sys;
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::time::Duration;

/// Something [`wait`] can wait for: it is ready when its descriptor is readable.
///
/// A [`Connection`] is ready when a message (or end of file) has arrived, a [`Listener`] when a
/// client is waiting to be accepted (with a key, `accept` then still runs the client's handshake),
/// a [`Process`] when it has ended.
pub trait Waitable {
    /// The descriptor whose readability means "ready".
    fn ready_fd(&self) -> BorrowedFd<'_>;
}

impl Waitable for Connection {
    fn ready_fd(&self) -> BorrowedFd<'_> {
        self.as_fd()
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
    let ready = sys::poll_readable(&fds, deadline)?;
    Ok(ready
        .iter()
        .enumerate()
        .filter_map(|(i, &r)| r.then_some(i))
        .collect())
}
