//! `RLock`: a reentrant lock shared between processes, owned by one thread at a time.
//!
//! It is a [`Lock`] whose word holds the owning *thread's* id instead of its process's id, plus a
//! recursion count in the next word of the same shared memory, touched only by the owner. Thread ids
//! are unique system-wide while the thread lives, so a waiter can check the holder's liveness exactly
//! as `Lock` does, and here that also catches a holder thread that exited while its process lives on.

use super::futex::Wait;
use super::lock::{Lock, LockResult, LockTimeoutError, OwnerDied, TryLockResult, timed, tried};
use crate::sys::{self, shm::Region};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::io;
use std::marker::PhantomData;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

const KIND: &str = "multiprocess-rlock";

/// A reentrant lock shared between processes, like Python's `multiprocessing.RLock`: the thread that
/// holds it may lock it again, and it is released when every guard is gone.
///
/// If the holding thread dies (or its process does), the next acquirer gets
/// [`OwnerDied`](crate::OwnerDied), as with [`Lock`].
///
/// # Examples
/// ```
/// use multiprocess::{Process, RLock};
///
/// fn nested(lock: RLock) -> u32 {
///     let _outer = lock.lock().unwrap();
///     let _inner = lock.lock().unwrap(); // same thread: no deadlock
///     2
/// }
///
/// let lock = RLock::new()?;
/// assert_eq!(Process::spawn(nested, lock.clone())?.join()?, 2);
/// let _g = lock.lock().unwrap();
/// assert!(lock.try_lock().is_ok()); // reentrant here too
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct RLock {
    lock: Lock,
}

/// Holds an [`RLock`] once; the lock is released when its last guard is dropped. Not `Send`: the
/// lock belongs to the thread that took it.
#[must_use = "if unused the RLock will immediately unlock"]
pub struct RLockGuard<'a> {
    rlock: &'a RLock,
    _thread_bound: PhantomData<*const ()>,
}

impl RLock {
    /// A new, unlocked reentrant lock.
    ///
    /// # Errors
    /// The shared memory for it could not be created.
    pub fn new() -> io::Result<RLock> {
        let region = Region::anonymous(KIND, 8)?;
        Ok(RLock {
            lock: Lock::in_region(Arc::new(region)),
        })
    }

    fn count(&self) -> &AtomicU32 {
        self.lock.region().atomic_u32(4)
    }

    fn guard(&self) -> RLockGuard<'_> {
        RLockGuard {
            rlock: self,
            _thread_bound: PhantomData,
        }
    }

    /// Acquires the lock (again, if this thread holds it), waiting as long as it takes.
    pub fn lock(&self) -> LockResult<RLockGuard<'_>> {
        self.acquire(Wait::Forever).expect("no deadline")
    }

    /// Acquires the lock if it is free or held by this thread.
    pub fn try_lock(&self) -> TryLockResult<RLockGuard<'_>> {
        tried(self.acquire(Wait::Never))
    }

    /// Acquires the lock, waiting at most `timeout`; [`LockTimeoutError::Timeout`] if another
    /// thread kept it.
    pub fn lock_timeout(
        &self,
        timeout: Duration,
    ) -> Result<RLockGuard<'_>, LockTimeoutError<RLockGuard<'_>>> {
        timed(self.acquire(Wait::timeout(timeout)))
    }

    /// Whether some thread holds the lock.
    pub fn is_locked(&self) -> bool {
        self.lock.is_locked()
    }

    fn acquire(&self, wait: Wait) -> Option<LockResult<RLockGuard<'_>>> {
        let me = sys::gettid() as u32;
        if self.lock.holder() == me {
            // Only the holder writes the count, and only the holder can see its own id here.
            self.count().fetch_add(1, Ordering::Relaxed);
            return Some(Ok(self.guard()));
        }
        self.lock.acquire(me, wait).map(|r| self.adopt(r))
    }

    /// Turns a freshly acquired inner guard into the first level of ownership.
    fn adopt(&self, r: LockResult<crate::LockGuard<'_>>) -> LockResult<RLockGuard<'_>> {
        self.count().store(1, Ordering::Relaxed);
        match r {
            Ok(g) => {
                g.leak(); // released by the last RLockGuard
                Ok(self.guard())
            }
            Err(died) => {
                died.into_inner().leak();
                Err(OwnerDied::new(self.guard()))
            }
        }
    }
}

impl Drop for RLockGuard<'_> {
    fn drop(&mut self) {
        if self.rlock.count().fetch_sub(1, Ordering::Relaxed) == 1 {
            let _ = self.rlock.lock.release();
        }
    }
}

impl fmt::Debug for RLock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let holder = self.lock.holder();
        f.debug_struct("RLock")
            .field("holder_thread", &(holder != 0).then_some(holder))
            .field("count", &self.count().load(Ordering::Relaxed))
            .finish()
    }
}

impl fmt::Debug for RLockGuard<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RLockGuard")
    }
}

/// Travels as the descriptor of its shared memory (beside the message).
impl Serialize for RLock {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.lock.serialize(s)
    }
}

impl<'de> Deserialize<'de> for RLock {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(RLock {
            lock: Lock::deserialize_sized(d, 8, KIND, "RLock")?,
        })
    }
}
