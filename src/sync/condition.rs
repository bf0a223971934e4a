//! `Condition`: a condition variable shared between processes.
//!
//! # The words
//! | offset | word |
//! |---|---|
//! | 0 | the [`Lock`] |
//! | 4 | *sequence*: bumped by every notification; the futex word waiters sleep on |
//! | 8 | *sleepers*: waiters registered and not yet picked by a notification |
//! | 12 | *permits*: notifications handed out and not yet taken by a waiter |
//!
//! `wait` (holding the lock) registers in *sleepers*, remembers the sequence, releases the lock and
//! sleeps on the sequence. `notify_n(n)` (holding the lock, as in Python) moves up to `n`
//! registrations from *sleepers* to *permits*, bumps the sequence and wakes that many sleepers. A
//! waiter returns, notified, only by taking a permit, and only once the sequence has moved past the
//! value it remembered: so `notify_n(n)` releases at most `n` waiters, and never one that began to wait
//! after the notification (registration and notification both happen under the lock). A notification
//! that lands between the unlock and the futex call changes the sequence, so the futex call returns at
//! once: no wake-up is lost. Every waiter inside `wait` is counted exactly once, in *sleepers* or in
//! *permits*; a waiter whose deadline passes leaves by taking its registration back from *sleepers*,
//! or, if every registration was already turned into a permit, by taking a permit (it was notified).
//! Permits are not addressed to one waiter: any eligible waiter may take one, as with the semaphores
//! of Python's implementation.
//!
//! # Dead participants
//! One that dies holding the lock is reported to the next acquirer as [`OwnerDied`], by the lock. A
//! waiter that dies while registered stays counted: a later `notify_all` hands it a permit that a
//! later waiter may take (a spurious wake-up, which callers of any condition variable handle). A
//! notifier that dies inside `notify` (holding the lock) may lose that notification.

use super::futex::{FutexWord, Wait};
use super::lock::{Acquired, Lock, LockGuard, LockResult, LockWord, OwnerDied};
use crate::sys::{self, shm::Region};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

const SEQ: usize = 4;
const SLEEPERS: usize = 8;
const PERMITS: usize = 12;
const LEN: usize = 16;
const KIND: &str = "multiprocess-condition";

/// A condition variable shared between processes, like Python's `multiprocessing.Condition`: a lock,
/// and a way to sleep until another process says something changed.
///
/// # Examples
/// ```
/// use multiprocess::{AtomicValue, Condition, Process};
///
/// fn producer(args: (Condition, AtomicValue<u32>)) {
///     let (cond, ready) = args;
///     let _guard = cond.lock().unwrap();
///     ready.store(1);
///     cond.notify_all();
/// }
///
/// let (cond, ready) = (Condition::new()?, AtomicValue::new(0u32)?);
/// let child = Process::spawn(producer, (cond.clone(), ready.clone()))?;
/// let guard = cond.lock().unwrap();
/// let _guard = cond.wait_while(guard, || ready.load() == 0).unwrap();
/// assert_eq!(ready.load(), 1);
/// drop(_guard);
/// child.join()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct Condition {
    lock: Lock,
}

impl Condition {
    /// A new condition variable with its own lock.
    ///
    /// # Errors
    /// The shared memory for it could not be created.
    pub fn new() -> io::Result<Condition> {
        let region = Region::anonymous(KIND, LEN)?;
        Ok(Condition {
            lock: Lock::in_region(Arc::new(region)),
        })
    }

    fn seq(&self) -> &AtomicU32 {
        self.lock.region().atomic_u32(SEQ)
    }

    fn core(&self) -> CondWords<'_, AtomicU32> {
        let region = self.lock.region();
        CondWords {
            lock: self.lock.core(),
            seq: self.seq(),
            sleepers: region.atomic_u32(SLEEPERS),
            permits: region.atomic_u32(PERMITS),
        }
    }

    /// The condition's lock (hold it while changing the state the condition is about).
    pub fn get_lock(&self) -> &Lock {
        &self.lock
    }

    /// Acquires the condition's lock.
    pub fn lock(&self) -> LockResult<LockGuard<'_>> {
        self.lock.lock()
    }

    /// Releases the lock, sleeps until notified (or spuriously woken), and re-acquires the lock.
    ///
    /// # Panics
    /// If `guard` belongs to another lock.
    pub fn wait<'a>(&'a self, guard: LockGuard<'a>) -> LockResult<LockGuard<'a>> {
        self.wait_for(guard, Wait::Forever).0
    }

    /// Like [`wait`](Self::wait), for at most `timeout`: [`WaitTimeoutError::Timeout`] (with the
    /// guard: the lock is held again) if no notification came in time.
    ///
    /// # Examples
    /// ```
    /// use std::time::{Duration, Instant};
    /// use multiprocess::WaitTimeoutError;
    /// let cond = multiprocess::Condition::new()?;
    /// let guard = cond.lock().unwrap();
    /// let t = Instant::now();
    /// let guard = match cond.wait_timeout(guard, Duration::from_millis(30)) {
    ///     Err(WaitTimeoutError::Timeout(guard)) => guard,
    ///     other => panic!("{other:?}"),
    /// };
    /// assert!(t.elapsed() >= Duration::from_millis(30));
    /// # drop(guard);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn wait_timeout<'a>(
        &'a self,
        guard: LockGuard<'a>,
        timeout: Duration,
    ) -> Result<LockGuard<'a>, WaitTimeoutError<LockGuard<'a>>> {
        timed_wait(self.wait_for(guard, Wait::timeout(timeout)))
    }

    /// Waits while `condition()` is true (Python's `wait_for(lambda: not condition())`), checking it
    /// with the lock held.
    pub fn wait_while<'a>(
        &'a self,
        guard: LockGuard<'a>,
        condition: impl FnMut() -> bool,
    ) -> LockResult<LockGuard<'a>> {
        self.wait_while_for(guard, Wait::Forever, condition).0
    }

    /// Like [`wait_while`](Self::wait_while), for at most `timeout`: [`WaitTimeoutError::Timeout`]
    /// (with the guard) if it gave up with the condition still true.
    pub fn wait_while_timeout<'a>(
        &'a self,
        guard: LockGuard<'a>,
        timeout: Duration,
        condition: impl FnMut() -> bool,
    ) -> Result<LockGuard<'a>, WaitTimeoutError<LockGuard<'a>>> {
        timed_wait(self.wait_while_for(guard, Wait::timeout(timeout), condition))
    }

    /// Waits while `condition()` holds, within `wait`. Reports `OwnerDied` if the lock's holder died
    /// during any of the waits.
    fn wait_while_for<'a>(
        &'a self,
        mut guard: LockGuard<'a>,
        wait: Wait,
        mut condition: impl FnMut() -> bool,
    ) -> (LockResult<LockGuard<'a>>, bool) {
        let mut died = false;
        let mut gave_up = false;
        while condition() {
            if wait.is_over() {
                gave_up = true;
                break;
            }
            match self.wait_for(guard, wait).0 {
                Ok(g) => guard = g,
                Err(d) => {
                    died = true;
                    guard = d.into_inner();
                }
            }
        }
        let guard = if died {
            Err(OwnerDied::new(guard))
        } else {
            Ok(guard)
        };
        (guard, gave_up)
    }

    fn wait_for<'a>(
        &'a self,
        guard: LockGuard<'a>,
        wait: Wait,
    ) -> (LockResult<LockGuard<'a>>, bool) {
        // A guard of a clone, or of another reception of this condition, is a guard of this lock.
        assert!(
            guard.lock.region().same_memory(self.lock.region()),
            "Condition::wait with a guard of another lock"
        );
        guard.leak();
        let (how, timed_out) = self.core().wait(sys::getpid() as u32, wait);
        (self.lock.guard(how), timed_out)
    }

    /// Wakes one waiting process (or thread). Call it holding the lock, as in Python.
    pub fn notify(&self) {
        self.notify_n(1);
    }

    /// Wakes up to `n` waiters: at most `n` of those waiting now return from their wait (notified),
    /// and none that begins to wait later. Call it holding the lock, as in Python.
    ///
    /// # Examples
    /// ```
    /// let cond = multiprocess::Condition::new()?;
    /// let _guard = cond.lock().unwrap();
    /// cond.notify_n(2); // nobody waits: nothing happens, and no later wait is released by it
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn notify_n(&self, n: u32) {
        self.core().notify(n);
    }

    /// Wakes every waiter. Call it holding the lock, as in Python.
    pub fn notify_all(&self) {
        self.notify_n(u32::MAX);
    }
}

/// Why a timed wait on a [`Condition`] returned without a notification. Either way the lock is held
/// again and the guard is inside.
pub enum WaitTimeoutError<G> {
    /// The time ran out.
    Timeout(G),
    /// The lock's holder died holding it during the wait (and the time may have run out too): what
    /// the lock protects may be half-updated.
    OwnerDied(OwnerDied<G>),
}

impl<G> WaitTimeoutError<G> {
    /// The guard.
    pub fn into_inner(self) -> G {
        match self {
            WaitTimeoutError::Timeout(g) => g,
            WaitTimeoutError::OwnerDied(d) => d.into_inner(),
        }
    }
}

impl<G> fmt::Debug for WaitTimeoutError<G> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WaitTimeoutError::Timeout(_) => f.write_str("Timeout(..)"),
            WaitTimeoutError::OwnerDied(d) => f.debug_tuple("OwnerDied").field(d).finish(),
        }
    }
}

impl<G> fmt::Display for WaitTimeoutError<G> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WaitTimeoutError::Timeout(_) => f.write_str("timed out waiting for a notification"),
            WaitTimeoutError::OwnerDied(d) => d.fmt(f),
        }
    }
}

impl<G> std::error::Error for WaitTimeoutError<G> {}

fn timed_wait<G>((r, timed_out): (LockResult<G>, bool)) -> Result<G, WaitTimeoutError<G>> {
    match r {
        Ok(g) if timed_out => Err(WaitTimeoutError::Timeout(g)),
        Ok(g) => Ok(g),
        Err(died) => Err(WaitTimeoutError::OwnerDied(died)),
    }
}

/// The condition's state machine: a lock's word and three words (see the module notes), written over
/// [`FutexWord`] so that the model tests run this very code.
pub(crate) struct CondWords<'a, W> {
    pub(crate) lock: LockWord<'a, W>,
    pub(crate) seq: &'a W,
    pub(crate) sleepers: &'a W,
    pub(crate) permits: &'a W,
}

/// Decrements `w` if it is above 0; whether it did.
fn take_one<W: FutexWord>(w: &W) -> bool {
    let mut v = w.load(Ordering::SeqCst);
    while v > 0 {
        match w.compare_exchange(v, v - 1, Ordering::SeqCst, Ordering::SeqCst) {
            Ok(_) => return true,
            Err(now) => v = now,
        }
    }
    false
}

impl<W: FutexWord> CondWords<'_, W> {
    /// Hands up to `n` registered waiters a permit and wakes them (holding the lock).
    pub(crate) fn notify(&self, n: u32) {
        let mut s = self.sleepers.load(Ordering::SeqCst);
        let picked = loop {
            let k = s.min(n);
            if k == 0 {
                return;
            }
            match self
                .sleepers
                .compare_exchange(s, s - k, Ordering::SeqCst, Ordering::SeqCst)
            {
                Ok(_) => break k,
                Err(now) => s = now,
            }
        };
        self.permits.fetch_add(picked, Ordering::SeqCst);
        self.seq.fetch_add(1, Ordering::SeqCst);
        self.seq.wake(picked);
    }

    /// Called holding the lock as `me`: releases it, sleeps until notified (or until `wait` runs
    /// out), and acquires the lock again. Returns how it was re-acquired and whether it timed out.
    pub(crate) fn wait(&self, me: u32, wait: Wait) -> (Acquired, bool) {
        let seq = self.seq;
        self.sleepers.fetch_add(1, Ordering::SeqCst);
        let seen = seq.load(Ordering::SeqCst);
        self.lock.release();
        let timed_out = loop {
            let now_seq = seq.load(Ordering::SeqCst);
            if now_seq != seen && take_one(self.permits) {
                break false; // notified
            }
            if !wait.sleep(seq, now_seq, None) {
                if take_one(self.sleepers) {
                    break true;
                }
                // Our registration became a permit: it is ours to take, and is on its way (the
                // notifier adds it right after taking the registration).
                if take_one(self.permits) {
                    break false;
                }
                std::thread::yield_now();
            }
        };
        let how = self
            .lock
            .acquire(me, Wait::Forever)
            .unwrap_or(Acquired::Free);
        (how, timed_out)
    }
}

impl fmt::Debug for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Condition")
            .field("lock", &self.lock)
            .finish()
    }
}

/// Travels as the descriptor of its shared memory (beside the message).
impl Serialize for Condition {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.lock.serialize(s)
    }
}

impl<'de> Deserialize<'de> for Condition {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Condition {
            lock: Lock::deserialize_sized(d, LEN, KIND, "Condition")?,
        })
    }
}
