//! Descriptors owned by this crate's objects, tracked for the fork path.
//!
//! A leaf module: connections, lifelines and the fork server's socket register their descriptors
//! here, and the fork path (in `process`) reads the set, without either knowing the other.

use std::collections::BTreeSet;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::{Mutex, MutexGuard};

/// Descriptors owned by this crate's objects (connection ends, lifeline write ends) in this process.
///
/// A child started with *fork* inherits every descriptor of its parent, including the ends of pipes
/// that belong to other children and other threads. A copy of a pipe end held by an unrelated process
/// keeps the pipe open, so its peer would never see end-of-file. The fork path therefore replaces, in
/// the child, every tracked descriptor that it was not handed with `/dev/null` (see `sys::neuter`).
static OWNED_FDS: Mutex<BTreeSet<RawFd>> = Mutex::new(BTreeSet::new());

/// Locks the set of tracked descriptors. Lock order: after the process state's lock
/// (`process::state::lock`), never the other way round.
pub(crate) fn owned_fds() -> MutexGuard<'static, BTreeSet<RawFd>> {
    OWNED_FDS.lock().unwrap_or_else(|p| p.into_inner())
}

/// A descriptor owned by a crate object, registered in the tracked set for its lifetime.
#[derive(Debug)]
pub(crate) struct TrackedFd(Option<OwnedFd>);

impl TrackedFd {
    pub(crate) fn new(fd: OwnedFd) -> TrackedFd {
        owned_fds().insert(fd.as_raw_fd());
        TrackedFd(Some(fd))
    }

    /// Stops tracking and hands the descriptor back.
    pub(crate) fn into_owned(mut self) -> OwnedFd {
        let fd = self.0.take().expect("present until dropped");
        owned_fds().remove(&fd.as_raw_fd());
        fd
    }
}

impl AsFd for TrackedFd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_ref().expect("present until dropped").as_fd()
    }
}

impl Drop for TrackedFd {
    fn drop(&mut self) {
        // Untrack before the number is closed (and possibly reused by a new tracked descriptor).
        if let Some(fd) = &self.0 {
            owned_fds().remove(&fd.as_raw_fd());
        }
    }
}
