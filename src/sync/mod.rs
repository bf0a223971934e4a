//! Process-shared synchronisation primitives on futexes in shared memory.

mod barrier;
mod condition;
mod event;
pub(crate) mod futex;
pub(crate) mod lock;
#[cfg(test)]
mod model;
mod rlock;
mod semaphore;

pub use barrier::{Barrier, BarrierError, MAX_PARTIES};
pub use condition::{Condition, WaitTimeoutError};
pub use event::Event;
pub use lock::{
    Lock, LockGuard, LockResult, LockTimeoutError, OwnerDied, TryLockError, TryLockResult,
};
pub use rlock::{RLock, RLockGuard};
pub use semaphore::{BoundedSemaphore, Semaphore, SemaphorePermit};
