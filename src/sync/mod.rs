//! Process-shared synchronisation primitives on futexes in shared memory.

mod lock;
mod rlock;

pub use lock::{Lock, LockGuard, LockResult, OwnerDied};
pub use rlock::{RLock, RLockGuard};
