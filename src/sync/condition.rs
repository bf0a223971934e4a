//! `Condition`: a condition variable shared between processes.
//!
//! It is a [`Lock`] (the word at offset 0 of its shared memory) and a *sequence* word at offset 4.
//! `wait` reads the sequence while holding the lock, releases the lock, and sleeps on the futex only
//! while the sequence still has that value; `notify` bumps the sequence and wakes one sleeper,
//! `notify_all` bumps it and wakes them all. A notification that lands between the unlock and the
//! futex call changes the sequence, so the futex call returns at once: no wake-up is lost. A waiter
//! returns once the sequence has moved past the value it read (or its deadline passed). It sleeps at
//! most [`NAP`] at a time and then looks again, so `notify` (which wakes one sleeper) can also release
//! a waiter whose nap ended meanwhile: wake-ups may be spurious, and callers wait in a loop, or use
//! [`Condition::wait_while`], as with any condition variable.
//! A dead participant costs nothing here: a process that dies while waiting simply never wakes, and
//! one that dies while holding the lock is reported to the next acquirer as [`OwnerDied`], by the lock.

use super::futex::FutexWord;
use super::lock::{Acquired, Lock, LockGuard, LockResult, LockWord, OwnerDied};
use crate::sys::{self, shm::Region};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// Longest single futex sleep of a waiter.
const NAP: Duration = Duration::from_millis(100);

/// A condition variable shared between processes, like Python's `multiprocessing.Condition`: a lock,
/// and a way to sleep until another process says something changed.
///
/// # Examples
/// ```
/// use multiprocess::{Condition, Process, Value};
///
/// fn producer(args: (Condition, Value<u32>)) {
///     let (cond, ready) = args;
///     let _guard = cond.lock().unwrap();
///     ready.store(1);
///     cond.notify_all();
/// }
///
/// let (cond, ready) = (Condition::new()?, Value::new_raw(0u32)?);
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
        let region = Region::anonymous("multiprocess-condition", 8)?;
        Ok(Condition {
            lock: Lock::in_region(Arc::new(region)),
        })
    }

    fn seq(&self) -> &AtomicU32 {
        self.lock.region().atomic_u32(4)
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
        self.wait_until(guard, None).0
    }

    /// Like [`wait`](Self::wait), for at most `timeout`; the flag says whether it timed out.
    ///
    /// # Examples
    /// ```
    /// use std::time::{Duration, Instant};
    /// let cond = multiprocess::Condition::new()?;
    /// let guard = cond.lock().unwrap();
    /// let t = Instant::now();
    /// let (guard, timed_out) = cond.wait_timeout(guard, Duration::from_millis(30));
    /// assert!(timed_out && t.elapsed() >= Duration::from_millis(30));
    /// # drop(guard);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn wait_timeout<'a>(
        &'a self,
        guard: LockGuard<'a>,
        timeout: Duration,
    ) -> (LockResult<LockGuard<'a>>, bool) {
        match Instant::now().checked_add(timeout) {
            Some(d) => self.wait_until(guard, Some(d)),
            None => (self.wait(guard), false),
        }
    }

    /// Waits while `condition()` is true (Python's `wait_for(lambda: not condition())`), checking it
    /// with the lock held.
    pub fn wait_while<'a>(
        &'a self,
        guard: LockGuard<'a>,
        condition: impl FnMut() -> bool,
    ) -> LockResult<LockGuard<'a>> {
        self.wait_while_until(guard, None, condition).0
    }

    /// Like [`wait_while`](Self::wait_while), for at most `timeout`; the flag says whether it gave up
    /// with the condition still true.
    pub fn wait_while_timeout<'a>(
        &'a self,
        guard: LockGuard<'a>,
        timeout: Duration,
        condition: impl FnMut() -> bool,
    ) -> (LockResult<LockGuard<'a>>, bool) {
        self.wait_while_until(guard, Instant::now().checked_add(timeout), condition)
    }

    /// Waits while `condition()` holds, until `deadline` (never, for `None`). Reports `OwnerDied` if the
    /// lock's holder died during any of the waits.
    fn wait_while_until<'a>(
        &'a self,
        mut guard: LockGuard<'a>,
        deadline: Option<Instant>,
        mut condition: impl FnMut() -> bool,
    ) -> (LockResult<LockGuard<'a>>, bool) {
        let mut died = false;
        let mut gave_up = false;
        while condition() {
            if deadline.is_some_and(|d| Instant::now() >= d) {
                gave_up = true;
                break;
            }
            match self.wait_until(guard, deadline).0 {
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

    fn wait_until<'a>(
        &'a self,
        guard: LockGuard<'a>,
        deadline: Option<Instant>,
    ) -> (LockResult<LockGuard<'a>>, bool) {
        assert!(
            std::ptr::eq(guard.lock, &self.lock),
            "Condition::wait with a guard of another lock"
        );
        guard.leak();
        let core = CondWords {
            lock: self.lock.core(),
            seq: self.seq(),
        };
        let (how, timed_out) = core.wait(sys::getpid() as u32, deadline);
        (self.lock.guard(how), timed_out)
    }

    /// Wakes one waiting process (or thread). Call it holding the lock, as in Python.
    pub fn notify(&self) {
        self.notify_n(1);
    }

    /// Wakes up to `n` sleeping waiters.
    ///
    /// Unlike Python's `notify(n)`, it may release more than `n`: a waiter that was between releasing
    /// the lock and falling asleep when the notification came returns too, and so does one whose
    /// periodic look (every 100 ms, which keeps waiters from sleeping forever if a notifier dies
    /// between its two steps) finds that a notification happened. These are spurious wake-ups as far
    /// as the caller can tell: wait in a loop, or use [`wait_while`](Self::wait_while).
    pub fn notify_n(&self, n: u32) {
        notify(self.seq(), n);
    }

    /// Wakes every waiter.
    pub fn notify_all(&self) {
        self.notify_n(u32::MAX);
    }
}

/// Bumps the sequence and wakes `n` sleepers.
pub(crate) fn notify<W: FutexWord>(seq: &W, n: u32) {
    seq.fetch_add(1, Ordering::SeqCst);
    seq.wake(n);
}

/// The condition's state machine: a lock's word and the sequence word (see the module notes), written
/// over [`FutexWord`] so that the model tests run this very code.
pub(crate) struct CondWords<'a, W> {
    pub(crate) lock: LockWord<'a, W>,
    pub(crate) seq: &'a W,
}

impl<W: FutexWord> CondWords<'_, W> {
    /// Called holding the lock as `me`: releases it, sleeps until the sequence moves (or `deadline`),
    /// and acquires the lock again. Returns how it was re-acquired and whether the deadline passed.
    pub(crate) fn wait(&self, me: u32, deadline: Option<Instant>) -> (Acquired, bool) {
        let seq = self.seq;
        let seen = seq.load(Ordering::SeqCst);
        self.lock.release();
        let timed_out = loop {
            if seq.load(Ordering::SeqCst) != seen {
                break false; // notified
            }
            let nap = match deadline {
                None => NAP,
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        break true;
                    }
                    left.min(NAP)
                }
            };
            seq.wait(seen, Some(nap));
        };
        let how = self.lock.acquire(me, None).unwrap_or(Acquired::Free);
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
            lock: Lock::deserialize_sized(d, 8, "Condition")?,
        })
    }
}
