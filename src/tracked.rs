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

/// Makes a pair of descriptors with `make` (a `socketpair` or `pipe` call) and tracks them, while
/// forks wait: a fork in another thread between the call and the tracking would give its child
/// untracked copies, which would hide the pair's end-of-file until that child exits.
pub(crate) fn made(
    make: impl FnOnce() -> std::io::Result<(OwnedFd, OwnedFd)>,
) -> std::io::Result<(TrackedFd, TrackedFd)> {
    let mut set = owned_fds();
    let (a, b) = make()?;
    set.insert(a.as_raw_fd());
    set.insert(b.as_raw_fd());
    Ok((TrackedFd(Some(a)), TrackedFd(Some(b))))
}

impl TrackedFd {
    /// Tracks a descriptor made (or received) already. A fork in another thread since it was made
    /// copied it untracked: where the crate makes descriptors itself it uses [`made`].
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
        // Untracked and closed under the set's lock, which a fork holds across `fork()`: a child
        // forked by another thread gets the descriptor tracked (and neuters it) or not at all.
        if let Some(fd) = self.0.take() {
            let mut set = owned_fds();
            set.remove(&fd.as_raw_fd());
            drop(fd);
            drop(set);
        }
    }
}

/// [`made`] for one descriptor.
pub(crate) fn made_one(
    make: impl FnOnce() -> std::io::Result<OwnedFd>,
) -> std::io::Result<TrackedFd> {
    let mut set = owned_fds();
    let fd = make()?;
    set.insert(fd.as_raw_fd());
    Ok(TrackedFd(Some(fd)))
}
