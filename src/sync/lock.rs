//! `Lock`: a mutual-exclusion lock shared between processes that survives the death of its holder.
//!
//! # The state word
//! One `u32` in shared memory:
//!
//! | bits | meaning |
//! |---|---|
//! | 0 | unlocked |
//! | 0..=30 | the pid of the holding process (pids are below 2^22 on Linux) |
//! | 31 (`WAITERS`) | some process may be asleep in `FUTEX_WAIT` on this word |
//!
//! *Acquire* is a compare-and-swap from 0 to our pid: no system call when uncontended. When contended,
//! a waiter stays awake briefly (an adaptive spin bounded by time and by its deadline, which gives up
//! when it notices the CPUs are oversubscribed: see `futex::Spin`), then asks the kernel whether the holder is still alive (`kill(pid, 0)`, and not a zombie in
//! `/proc/<pid>/stat`), sets `WAITERS` and sleeps on
//! the futex, at most [`LIVENESS_PERIOD`] at a time, asking again each time it wakes to the same holder.
//! If not, it takes the lock over with a compare-and-swap from the dead holder's word, and reports
//! [`OwnerDied`] so the caller can repair what the dead holder was changing.
//! *Release* swaps 0 in and wakes one sleeper if `WAITERS` was set. A woken waiter acquires with
//! `WAITERS` set again, because other sleepers may remain: at worst one spare wake-up.
//!
//! Why not glibc's robust mutexes: the kernel's robust list is registered per thread by glibc, a
//! second registration would replace it, and a robust pthread mutex must be unlocked by its owner
//! thread, which Python's `Lock.release()` from another process does not respect. The pid in the word
//! gives death detection and cross-process release at once.
//!
//! Limits: a holder that is a *thread* which exited while its process lives is not detected (as with
//! any pid-based scheme), and a dead holder's pid reused by a new process looks alive until that
//! process ends too.

use super::futex::{FutexWord, Spin, Wait, spin_or_look};
use crate::codec;
use crate::error::ReleaseError;
use crate::sys::{self, shm::Region};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::io;
use std::os::fd::AsFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

const WAITERS: u32 = 1 << 31;
const OWNER: u32 = !WAITERS;

/// A sleeping waiter checks that the holder still exists at least this often.
const LIVENESS_PERIOD: Duration = Duration::from_millis(20);

/// How long a contended acquirer stays awake before it sleeps (see [`Spin`]).
static SPIN: Spin = Spin::new(Duration::from_micros(20));

/// A lock shared between processes, like Python's `multiprocessing.Lock`, that survives the death of
/// its holder.
///
/// Hand it to children in their argument (or send it through a [`Connection`](crate::Connection)):
/// every copy is the same lock. [`lock`](Self::lock) returns a guard that releases on drop. If the
/// process holding the lock dies, the next process to acquire it gets it with
/// [`OwnerDied`] (like a poisoned `std::sync::Mutex`), so it can repair the protected state.
///
/// # Examples
/// ```
/// use multiprocess::{Lock, Process, SharedMemory};
///
/// fn add(args: (Lock, SharedMemory)) {
///     let (lock, counter) = args;
///     for _ in 0..100 {
///         let _guard = lock.lock().unwrap();
///         let mut n = [0u8; 8];
///         counter.read(0, &mut n).unwrap();
///         counter.write(0, &(u64::from_le_bytes(n) + 1).to_le_bytes()).unwrap();
///     }
/// }
///
/// let (lock, counter) = (Lock::new()?, SharedMemory::new(8)?);
/// let children: Vec<_> = (0..4)
///     .map(|_| Process::spawn(add, (lock.clone(), counter.clone())))
///     .collect::<Result<_, _>>()?;
/// for c in children {
///     c.join()?;
/// }
/// let mut n = [0u8; 8];
/// counter.read(0, &mut n)?;
/// assert_eq!(u64::from_le_bytes(n), 400);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct Lock {
    region: Arc<Region>,
}

/// Holds a [`Lock`]; releases it when dropped.
#[must_use = "if unused the Lock will immediately unlock"]
pub struct LockGuard<'a> {
    pub(crate) lock: &'a Lock,
}

/// The lock was acquired, but its previous holder died while holding it: what it protected may be
/// half-updated. The guard is inside.
pub struct OwnerDied<G> {
    guard: G,
}

impl<G> OwnerDied<G> {
    pub(crate) fn new(guard: G) -> OwnerDied<G> {
        OwnerDied { guard }
    }

    /// The guard: the lock is held.
    pub fn into_inner(self) -> G {
        self.guard
    }
}

impl<G> fmt::Debug for OwnerDied<G> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("OwnerDied(..)")
    }
}

impl<G> fmt::Display for OwnerDied<G> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the lock's previous holder died while holding it")
    }
}

impl<G> std::error::Error for OwnerDied<G> {}

/// `Ok(guard)`, or `Err(OwnerDied(guard))` when the previous holder died holding the lock.
pub type LockResult<G> = Result<G, OwnerDied<G>>;

/// Why a `try_lock` (of a [`Lock`], an [`RLock`](crate::RLock), a [`Value`](crate::Value) or an
/// [`Array`](crate::Array)) did not give a plain guard, as std's `TryLockError`.
pub enum TryLockError<G> {
    /// Someone else holds the lock right now.
    WouldBlock,
    /// The lock was acquired, but its previous holder died holding it (the guard is inside).
    OwnerDied(OwnerDied<G>),
}

/// `Ok(guard)`, or why there is no plain guard (see [`TryLockError`]).
pub type TryLockResult<G> = Result<G, TryLockError<G>>;

/// Why a `lock_timeout` did not give a plain guard.
pub enum LockTimeoutError<G> {
    /// The lock stayed held by someone else for the whole timeout.
    Timeout,
    /// The lock was acquired, but its previous holder died holding it (the guard is inside).
    OwnerDied(OwnerDied<G>),
}

impl<G> From<OwnerDied<G>> for TryLockError<G> {
    fn from(died: OwnerDied<G>) -> Self {
        TryLockError::OwnerDied(died)
    }
}

impl<G> From<OwnerDied<G>> for LockTimeoutError<G> {
    fn from(died: OwnerDied<G>) -> Self {
        LockTimeoutError::OwnerDied(died)
    }
}

impl<G> fmt::Debug for TryLockError<G> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TryLockError::WouldBlock => f.write_str("WouldBlock"),
            TryLockError::OwnerDied(d) => f.debug_tuple("OwnerDied").field(d).finish(),
        }
    }
}

impl<G> fmt::Display for TryLockError<G> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TryLockError::WouldBlock => f.write_str("the lock is held by someone else"),
            TryLockError::OwnerDied(d) => d.fmt(f),
        }
    }
}

impl<G> std::error::Error for TryLockError<G> {}

impl<G> fmt::Debug for LockTimeoutError<G> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LockTimeoutError::Timeout => f.write_str("Timeout"),
            LockTimeoutError::OwnerDied(d) => f.debug_tuple("OwnerDied").field(d).finish(),
        }
    }
}

impl<G> fmt::Display for LockTimeoutError<G> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LockTimeoutError::Timeout => f.write_str("timed out waiting for the lock"),
            LockTimeoutError::OwnerDied(d) => d.fmt(f),
        }
    }
}

impl<G> std::error::Error for LockTimeoutError<G> {}

/// The shape of a non-blocking acquisition, from "maybe acquired".
pub(crate) fn tried<G>(r: Option<LockResult<G>>) -> TryLockResult<G> {
    match r {
        Some(Ok(g)) => Ok(g),
        Some(Err(died)) => Err(TryLockError::OwnerDied(died)),
        None => Err(TryLockError::WouldBlock),
    }
}

/// The shape of a timed acquisition, from "maybe acquired".
pub(crate) fn timed<G>(r: Option<LockResult<G>>) -> Result<G, LockTimeoutError<G>> {
    match r {
        Some(Ok(g)) => Ok(g),
        Some(Err(died)) => Err(LockTimeoutError::OwnerDied(died)),
        None => Err(LockTimeoutError::Timeout),
    }
}

/// Maps the guard inside any outcome of an acquisition.
pub(crate) fn map_guard<G, H>(
    r: Option<LockResult<G>>,
    f: impl FnOnce(G) -> H,
) -> Option<LockResult<H>> {
    r.map(|r| match r {
        Ok(g) => Ok(f(g)),
        Err(died) => Err(OwnerDied::new(f(died.into_inner()))),
    })
}

impl Lock {
    /// A new, unlocked lock.
    ///
    /// # Errors
    /// The shared memory for it could not be created.
    pub fn new() -> io::Result<Lock> {
        Ok(Lock {
            region: Arc::new(Region::anonymous("multiprocess-lock", 4)?),
        })
    }

    /// A lock whose word is the first 4 bytes of `region` (for primitives built on it).
    pub(crate) fn in_region(region: Arc<Region>) -> Lock {
        Lock { region }
    }

    pub(crate) fn region(&self) -> &Arc<Region> {
        &self.region
    }

    /// The id of the holder in the word (0 when free).
    pub(crate) fn holder(&self) -> u32 {
        self.word().load(Ordering::Relaxed) & OWNER
    }

    fn word(&self) -> &AtomicU32 {
        self.region.atomic_u32(0)
    }

    /// Acquires the lock, waiting as long as it takes.
    pub fn lock(&self) -> LockResult<LockGuard<'_>> {
        self.acquire(sys::getpid() as u32, Wait::Forever)
            .expect("no deadline")
    }

    /// Acquires the lock if it is free right now (or its holder is dead: then
    /// [`TryLockError::OwnerDied`] with the guard inside).
    ///
    /// # Examples
    /// ```
    /// use multiprocess::{Lock, TryLockError};
    /// let lock = Lock::new()?;
    /// let held = lock.try_lock().unwrap();
    /// assert!(matches!(lock.try_lock(), Err(TryLockError::WouldBlock)));
    /// drop(held);
    /// assert!(lock.try_lock().is_ok());
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn try_lock(&self) -> TryLockResult<LockGuard<'_>> {
        tried(self.try_lock_as(sys::getpid() as u32))
    }

    /// [`try_lock`](Self::try_lock) on behalf of holder id `me` (a pid or a thread id).
    pub(crate) fn try_lock_as(&self, me: u32) -> Option<LockResult<LockGuard<'_>>> {
        self.core().try_lock_as(me).map(|a| self.guard(a))
    }

    /// The state machine, on this lock's word.
    pub(crate) fn core(&self) -> LockWord<'_, AtomicU32> {
        LockWord::on(self.word())
    }

    pub(crate) fn guard(&self, how: Acquired) -> LockResult<LockGuard<'_>> {
        let guard = LockGuard { lock: self };
        match how {
            Acquired::Free => Ok(guard),
            Acquired::FromDead => Err(OwnerDied { guard }),
        }
    }

    /// Acquires the lock, waiting at most `timeout`; [`LockTimeoutError::Timeout`] if it stayed
    /// held. A `timeout` too large to be a deadline (such as `Duration::MAX`) waits as long as it
    /// takes.
    ///
    /// # Examples
    /// ```
    /// use std::time::{Duration, Instant};
    /// use multiprocess::LockTimeoutError;
    /// let lock = multiprocess::Lock::new()?;
    /// let held = lock.lock().unwrap();
    /// let t = Instant::now();
    /// let r = lock.lock_timeout(Duration::from_millis(30));
    /// assert!(matches!(r, Err(LockTimeoutError::Timeout)));
    /// assert!(t.elapsed() >= Duration::from_millis(30));
    /// drop(held);
    /// assert!(lock.lock_timeout(Duration::from_millis(30)).is_ok());
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn lock_timeout(
        &self,
        timeout: Duration,
    ) -> Result<LockGuard<'_>, LockTimeoutError<LockGuard<'_>>> {
        timed(self.acquire(sys::getpid() as u32, Wait::timeout(timeout)))
    }

    /// Whether some process holds the lock right now.
    pub fn is_locked(&self) -> bool {
        self.word().load(Ordering::Relaxed) & OWNER != 0
    }

    /// Releases the lock without a guard, from any thread or process, as Python's `Lock.release()`
    /// allows (for example a lock acquired by one process and released by another). A guard of the
    /// same lock still alive elsewhere will release it again when dropped: use this only with
    /// [`LockGuard::leak`].
    ///
    /// # Errors
    /// [`ReleaseError::NotLocked`] if the lock is not held; nothing changes.
    ///
    /// # Examples
    /// ```
    /// use multiprocess::{Lock, ReleaseError};
    /// let lock = Lock::new()?;
    /// lock.lock().unwrap().leak();
    /// assert!(lock.is_locked());
    /// lock.release().unwrap();
    /// assert_eq!(lock.release(), Err(ReleaseError::NotLocked));
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn release(&self) -> Result<(), ReleaseError> {
        if self.core().release() {
            Ok(())
        } else {
            Err(ReleaseError::NotLocked)
        }
    }

    /// Acquires on behalf of holder id `me`: a pid (`Lock`) or a thread id (`RLock`). Either is a
    /// process-table entry whose liveness `process_alive` can check.
    pub(crate) fn acquire(&self, me: u32, wait: Wait) -> Option<LockResult<LockGuard<'_>>> {
        self.core().acquire(me, wait).map(|a| self.guard(a))
    }
}

fn alive(id: u32) -> bool {
    sys::shm::process_alive(id as i32)
}

/// How a lock was acquired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Acquired {
    /// It was free.
    Free,
    /// Taken over from a holder that died holding it.
    FromDead,
}

/// The lock's state machine on one word (see the module notes), written over [`FutexWord`] so that
/// the model tests run this very code.
pub(crate) struct LockWord<'a, W> {
    pub(crate) word: &'a W,
    /// How long to stay awake before sleeping; `None`: look once (the model tests).
    pub(crate) spin: Option<&'a Spin>,
    /// Whether holder id `id` is alive.
    pub(crate) alive: &'a dyn Fn(u32) -> bool,
}

impl LockWord<'_, AtomicU32> {
    /// The lock's state machine on a word in shared memory, with the lock's spin count and liveness
    /// check (also for locks embedded in other primitives' regions).
    pub(crate) fn on(word: &AtomicU32) -> LockWord<'_, AtomicU32> {
        LockWord {
            word,
            spin: Some(&SPIN),
            alive: &alive,
        }
    }
}

impl<W: FutexWord> LockWord<'_, W> {
    pub(crate) fn try_lock_as(&self, me: u32) -> Option<Acquired> {
        if self
            .word
            .compare_exchange(0, me, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
        {
            return Some(Acquired::Free);
        }
        let v = self.word.load(Ordering::Relaxed);
        if v & OWNER != 0 && !(self.alive)(v & OWNER) && self.take_over(v, me) {
            return Some(Acquired::FromDead);
        }
        None
    }

    /// Releases; false if the lock was not held.
    #[inline]
    pub(crate) fn release(&self) -> bool {
        let v = self.word.swap(0, Ordering::Release);
        if v & WAITERS != 0 {
            self.word.wake(1);
        }
        v & OWNER != 0
    }

    fn take_over(&self, seen: u32, me: u32) -> bool {
        // Keep WAITERS: others may sleep on the word.
        let new = me | (seen & WAITERS);
        let taken = self
            .word
            .compare_exchange(seen, new, Ordering::Acquire, Ordering::Relaxed)
            .is_ok();
        if taken {
            crate::trace::event!(
                warn,
                "a lock's holder {} died holding it: {me} takes it over",
                seen & OWNER
            );
        }
        taken
    }

    #[inline]
    pub(crate) fn acquire(&self, me: u32, wait: Wait) -> Option<Acquired> {
        // The uncontended case, inlined into the caller: one compare-and-swap.
        if self
            .word
            .compare_exchange(0, me, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
        {
            return Some(Acquired::Free);
        }
        self.acquire_contended(me, wait)
    }

    #[inline(never)]
    fn acquire_contended(&self, me: u32, wait: Wait) -> Option<Acquired> {
        let word = self.word;
        let take_free = || {
            let v = word.load(Ordering::Relaxed);
            let free = v & OWNER == 0
                && word
                    .compare_exchange(v, me | (v & WAITERS), Ordering::Acquire, Ordering::Relaxed)
                    .is_ok();
            free.then_some(())
        };
        if spin_or_look(self.spin, wait, take_free).is_some() {
            return Some(Acquired::Free);
        }
        let mut waited_on: Option<(u32, Instant)> = None;
        loop {
            let v = word.load(Ordering::Relaxed);
            if v & OWNER == 0 {
                // Free: take it, keeping WAITERS since others may be asleep.
                if word
                    .compare_exchange(v, me | WAITERS, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
                {
                    return Some(Acquired::Free);
                }
                continue;
            }
            let owner = v & OWNER;
            let now = Instant::now();
            // A new holder: look at once (it may be dead already), then every LIVENESS_PERIOD.
            let look = match waited_on {
                Some((o, since)) if o == owner => now.duration_since(since) >= LIVENESS_PERIOD,
                _ => true,
            };
            if look {
                if !(self.alive)(owner) {
                    if self.take_over(v, me) {
                        return Some(Acquired::FromDead);
                    }
                    continue;
                }
                waited_on = Some((owner, now));
            }
            if wait.is_over() {
                return None;
            }
            if v & WAITERS == 0
                && word
                    .compare_exchange(v, v | WAITERS, Ordering::Relaxed, Ordering::Relaxed)
                    .is_err()
            {
                continue;
            }
            if !wait.sleep(word, v | WAITERS, Some(LIVENESS_PERIOD)) {
                return None;
            }
        }
    }
}

impl LockGuard<'_> {
    /// Keeps the lock held after the guard is gone, for a later [`Lock::release`] (possibly in another
    /// process).
    pub fn leak(self) {
        std::mem::forget(self);
    }
}

impl Drop for LockGuard<'_> {
    fn drop(&mut self) {
        let _ = self.lock.release();
    }
}

impl fmt::Debug for Lock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v = self.word().load(Ordering::Relaxed);
        f.debug_struct("Lock")
            .field("holder", &(v & OWNER != 0).then_some(v & OWNER))
            .finish()
    }
}

impl fmt::Debug for LockGuard<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("LockGuard")
    }
}

/// A lock travels as the descriptor of its shared memory (beside the message).
impl Serialize for Lock {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        codec::FdRef(self.region.as_fd(), "Lock").serialize(s)
    }
}

impl<'de> Deserialize<'de> for Lock {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Lock::deserialize_sized(d, 4, "multiprocess-lock", "Lock")
    }
}

impl Lock {
    /// Deserializes a lock whose shared memory must hold at least `min_len` bytes (primitives built on
    /// a lock keep more words after it).
    pub(crate) fn deserialize_sized<'de, D: Deserializer<'de>>(
        d: D,
        min_len: usize,
        kind: &str,
        what: &str,
    ) -> Result<Lock, D::Error> {
        Ok(Lock {
            region: Arc::new(codec::deserialize_region(d, min_len, kind, what)?),
        })
    }
}
