//! A gate that a `fork` closes: the crate's process-wide tables that a forked child must find
//! whole and unlocked (the manager's connections, for one) are changed only inside a *section*,
//! and the fork start method forks only with the gate held shut.
//!
//! # Why a gate and not each table's own lock
//! `fork` copies the calling thread alone, and with it every lock exactly as it stood: one that
//! another thread held at that moment stays held in the child, by a thread that does not exist
//! there, and the child's first use of that table hangs for good. The fork path already takes the
//! locks of its own layer (the process state, the tracked descriptors, stdout and stderr) before
//! forking; the tables of layers above it (a manager's connections) are not its to name. So they
//! take a shared section of this one gate around every change, briefly (never across I/O), and
//! the fork takes the gate exclusively: it waits for the sections in progress, and the child's
//! copy of each table is consistent and unlocked. The child then opens its copy of the gate again
//! (its only thread is the one that shut it).

use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

static GATE: RwLock<()> = RwLock::new(());

/// A section: while it lives, no fork of this process (by the fork start method) begins.
pub(crate) fn section() -> RwLockReadGuard<'static, ()> {
    GATE.read().unwrap_or_else(|p| p.into_inner())
}

/// The gate shut, for a fork: no section is in progress while it lives.
pub(crate) fn shut() -> RwLockWriteGuard<'static, ()> {
    GATE.write().unwrap_or_else(|p| p.into_inner())
}
