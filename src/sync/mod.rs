//! Process-shared synchronisation primitives on futexes in shared memory.

mod lock;

pub use lock::{Lock, LockGuard, LockResult, OwnerDied};
