//! Process-global state, kept under one lock that the fork path holds across `fork()`.
//!
//! After `fork()` only the forking thread exists in the child. Any lock another thread held at that
//! instant stays locked forever in the child. So everything the child side of a fork must touch (the
//! list of children, this process's identity, the fork-server handle) lives under this one mutex, which
//! the forking thread itself holds while it forks and which the child releases before running user code.

use super::forkserver::ForkServer;
use super::registry::ChildEntry;
use crate::sys::shm::Region;
use std::sync::{Arc, Mutex, MutexGuard, Weak};

/// Who this process is, as Python's `current_process()` and `parent_process()` report it.
#[derive(Clone, Debug)]
pub(crate) struct Identity {
    pub(crate) name: String,
    pub(crate) daemon: bool,
    pub(crate) parent: Option<(i32, String)>,
    /// Children started so far, for default names ("Process-3").
    pub(crate) counter: u64,
}

pub(crate) struct Global {
    /// The process this state belongs to (0 until it has a child or a fork server): a copy of it in
    /// a process forked by other code (a daemonizing library's `fork`) must leave it alone at exit.
    pub(crate) owner: i32,
    pub(crate) identity: Identity,
    pub(crate) children: Vec<Arc<ChildEntry>>,
    pub(crate) forkserver: Option<Arc<ForkServer>>,
    /// Named regions this process created and registered with its fork server (see `forkserver`),
    /// to register again with a server that replaces a dead one.
    pub(crate) tracked: Vec<Tracked>,
}

/// A named region this process created, as its fork server tracks it.
pub(crate) struct Tracked {
    pub(crate) name: String,
    pub(crate) id: (u64, u64),
    /// Alive while some handle of this process holds the region.
    pub(crate) region: Weak<Region>,
}

static STATE: Mutex<Global> = Mutex::new(Global {
    owner: 0,
    identity: Identity {
        name: String::new(),
        daemon: false,
        parent: None,
        counter: 0,
    },
    children: Vec::new(),
    forkserver: None,
    tracked: Vec::new(),
});

/// Locks the global state. Poisoning is ignored: every field stays consistent between statements.
///
/// While the guard lives, this thread's `tracing` events wait (see [`crate::trace`]): a subscriber
/// that writes to stdout or stderr must not be entered under this lock, since a fork takes stdout
/// and stderr *before* it (see `fork_child`), and the two orders would deadlock.
pub(crate) fn lock() -> StateGuard {
    let guard = STATE.lock().unwrap_or_else(|p| p.into_inner());
    crate::trace::hold();
    StateGuard(Some(guard))
}

/// The locked global state (see [`lock`]).
pub(crate) struct StateGuard(Option<MutexGuard<'static, Global>>);

impl std::ops::Deref for StateGuard {
    type Target = Global;
    fn deref(&self) -> &Global {
        self.0.as_ref().expect("held until drop")
    }
}

impl std::ops::DerefMut for StateGuard {
    fn deref_mut(&mut self) -> &mut Global {
        self.0.as_mut().expect("held until drop")
    }
}

impl Drop for StateGuard {
    fn drop(&mut self) {
        drop(self.0.take());
        crate::trace::release();
    }
}

impl Global {
    /// Makes this process a fresh child: no children of its own, no fork server, a new identity.
    pub(crate) fn become_child(&mut self, name: String, daemon: bool, parent: (i32, String)) {
        self.owner = crate::sys::getpid();
        // The parent's children are the parent's. Dropped, not forgotten: an entry no handle
        // shares holds a pidfd and a lifeline copy that would stay open here (and in every child
        // of this one) for nothing.
        self.children.clear();
        // The parent's server (a copy of its handle, under *fork*) is not ours to shut down or reap.
        std::mem::forget(self.forkserver.take());
        self.tracked.clear();
        self.identity = Identity {
            name,
            daemon,
            parent: Some(parent),
            counter: 0,
        };
    }

    /// Marks this state as this process's (see `owner`). A copy inherited through another
    /// library's `fork` starts over: the parent's children and fork server are the parent's.
    pub(crate) fn claim(&mut self) {
        let me = crate::sys::getpid();
        if self.owner != me {
            if self.owner != 0 {
                std::mem::forget(std::mem::take(&mut self.children));
                std::mem::forget(self.forkserver.take());
                self.tracked.clear();
            }
            self.owner = me;
        }
    }

    /// Whether this state is a copy inherited by a process forked by other code.
    pub(crate) fn inherited(&self) -> bool {
        self.owner != 0 && self.owner != crate::sys::getpid()
    }

    pub(crate) fn name(&self) -> String {
        if self.identity.name.is_empty() {
            "MainProcess".to_string()
        } else {
            self.identity.name.clone()
        }
    }
}
