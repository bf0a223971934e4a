//! The children of this process: what `active_children()` lists and what happens at exit.
//!
//! Each child started by this process has an entry holding its pidfd (to wait and signal without ever
//! hitting a recycled pid) and the write end of its *lifeline* pipe. The entry outlives the `Process`
//! handle: dropping a handle does not kill or orphan the child, exactly as in Python; the child is
//! still joined (non-daemon) or terminated (daemon) when this process exits normally.

use super::state;
use crate::sys::{self, WaitStatus};
use crate::tracked::TrackedFd;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, Mutex, Once};

pub(crate) struct ChildEntry {
    pub(crate) pid: i32,
    pub(crate) name: String,
    pub(crate) daemon: bool,
    pub(crate) pidfd: OwnedFd,
    pub(crate) status: Mutex<Option<WaitStatus>>,
    /// Held while the status is being collected, so that exactly one thread collects it: a second
    /// `waitid` would fail with `ECHILD`.
    reaping: Mutex<()>,
    /// Write end of the lifeline pipe; closing it (with this process) sends the child SIGKILL.
    pub(crate) lifeline: Mutex<Option<TrackedFd>>,
}

impl ChildEntry {
    pub(crate) fn new(
        pid: i32,
        name: String,
        daemon: bool,
        pidfd: OwnedFd,
        lifeline: TrackedFd,
    ) -> Self {
        ChildEntry {
            pid,
            name,
            daemon,
            pidfd,
            status: Mutex::new(None),
            reaping: Mutex::new(()),
            lifeline: Mutex::new(Some(lifeline)),
        }
    }

    /// Whether the process has ended (it may not be reaped yet).
    pub(crate) fn has_exited(&self) -> bool {
        self.status().is_some()
            || sys::wait_readable(self.pidfd.as_fd(), Some(std::time::Duration::ZERO))
                .unwrap_or(true)
    }

    pub(crate) fn status(&self) -> Option<WaitStatus> {
        *self.status.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Collects the exit status, waiting for the process to end if `block`. Without `block`, returns
    /// `None` while the child runs or while another thread is collecting its status.
    pub(crate) fn reap(&self, block: bool) -> io::Result<Option<WaitStatus>> {
        if let Some(s) = self.status() {
            return Ok(Some(s));
        }
        if block {
            // Wait outside the lock, so that `reap(false)` elsewhere never waits behind us.
            sys::wait_readable(self.pidfd.as_fd(), None)?;
        } else if !self.has_exited() {
            return Ok(None);
        }
        let _guard = if block {
            self.reaping.lock().unwrap_or_else(|p| p.into_inner())
        } else {
            match self.reaping.try_lock() {
                Ok(g) => g,
                Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
                Err(std::sync::TryLockError::WouldBlock) => return Ok(self.status()),
            }
        };
        if let Some(s) = self.status() {
            return Ok(Some(s)); // collected by the thread we waited for
        }
        // Every child is ours, fork-server children included (they are forked with CLONE_PARENT).
        let st = sys::waitid_pidfd(self.pidfd.as_fd(), false)?;
        if let Some(s) = st {
            *self.status.lock().unwrap_or_else(|p| p.into_inner()) = Some(s);
            // The child is gone: its lifeline has nothing left to guard.
            self.lifeline
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take();
        }
        Ok(st)
    }

    pub(crate) fn signal(&self, sig: i32) -> io::Result<()> {
        if self.status().is_some() {
            return Ok(());
        }
        match sys::pidfd_send_signal(self.pidfd.as_fd(), sig) {
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => Ok(()),
            other => other,
        }
    }
}

static AT_EXIT: Once = Once::new();

/// Makes sure [`join_children_at_exit`] runs when this process exits normally: once it has a child
/// or a fork server.
pub(crate) fn install_exit_handler() {
    AT_EXIT.call_once(|| {
        // Best effort: without it children are still killed by their lifelines when we exit, and
        // the fork server still removes our names when it sees us gone (only not before we are).
        if let Err(e) = sys::at_exit(exit_handler) {
            crate::trace::event!(
                warn,
                "no exit handler (daemon children are left to their lifelines): {e}"
            );
        }
    });
}

/// Records a new child and makes sure the exit handler is installed.
///
/// Like Python's `_cleanup()`, this also reaps children that have ended and whose `Process` handles
/// are gone, so that dropping handles leaks neither descriptors nor zombies.
pub(crate) fn register(entry: Arc<ChildEntry>) {
    state::lock().claim();
    super::reap_dead_forkserver();
    install_exit_handler();
    let orphans: Vec<_> = state::lock()
        .children
        .iter()
        .filter(|c| Arc::strong_count(c) == 1 && c.status().is_none())
        .cloned()
        .collect();
    for c in orphans {
        if c.has_exited() {
            let _ = c.reap(false);
        }
    }
    let mut g = state::lock();
    g.children.retain(|c| c.status().is_none());
    g.children.push(entry);
}

/// The live children, reaping those that ended.
pub(crate) fn active() -> Vec<Arc<ChildEntry>> {
    state::lock().claim();
    super::reap_dead_forkserver();
    let list = state::lock().children.clone();
    let mut live = Vec::new();
    for c in list {
        if c.has_exited() {
            let _ = c.reap(false);
        } else {
            live.push(c);
        }
    }
    // Ended children need nothing at exit; their handles (if any) keep what they need.
    state::lock().children.retain(|c| c.status().is_none());
    live
}

extern "C" fn exit_handler() {
    // A panic cannot unwind out of an `extern "C"` function (it would abort the exiting process).
    let _ = std::panic::catch_unwind(join_children_at_exit);
}

/// What a normal exit does, as in Python: daemon children get SIGTERM, then every child is waited for;
/// then the fork server is shut down (it removes this process's remaining named regions) and reaped.
pub(crate) fn join_children_at_exit() {
    {
        let mut g = state::lock();
        if g.inherited() {
            // A copy of another process's state (forked by code other than ours): its children and
            // its fork server are not ours to signal, wait for or shut down.
            std::mem::forget(std::mem::take(&mut g.children));
            std::mem::forget(g.forkserver.take());
            return;
        }
    }
    let children = std::mem::take(&mut state::lock().children);
    for c in children.iter().filter(|c| c.daemon) {
        if let Err(e) = c.signal(sys::SIGTERM) {
            crate::trace::event!(debug, "at exit: terminating daemon child {}: {e}", c.pid);
        }
    }
    for c in &children {
        if let Err(e) = c.reap(true) {
            crate::trace::event!(debug, "at exit: joining child {}: {e}", c.pid);
        }
    }
    let server = state::lock().forkserver.take();
    drop(server);
}
