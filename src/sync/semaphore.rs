//! `Semaphore` and `BoundedSemaphore`: counters of free slots shared between processes.
//!
//! # The state words
//! Three `u32`s in shared memory:
//!
//! | offset | word | meaning |
//! |---|---|---|
//! | 0 | `count` | the value: how many slots are free. The futex word. |
//! | 4 | `sleepers` | how many processes may be asleep in `FUTEX_WAIT` on `count` (or about to be) |
//! | 8 | `max` | the value a release may not pass: the initial value of a `BoundedSemaphore`, `u32::MAX` for a `Semaphore`. Written once, at creation. |
//!
//! *Acquire* is a compare-and-swap of `count` from `c > 0` to `c - 1`: no system call when a slot is
//! free. When none is, a waiter stays awake briefly (an adaptive spin, never past its deadline: see
//! `futex::Spin`), then increments `sleepers`, reads `count` again and, while it is still 0,
//! sleeps in `FUTEX_WAIT` on it, telling the kernel the 0 it saw (the kernel compares atomically, so
//! a release between our read and our sleep makes the wait return at once). On every wake-up it reads
//! `count` before it looks at its deadline, so a wake-up meant for it is never wasted while a slot is
//! free, and it decrements `sleepers` when it leaves.
//!
//! *Release* is a compare-and-swap of `count` from `c < max` to `c + 1`, then, if `sleepers` is not
//! 0, a `FUTEX_WAKE` of one sleeper: one slot, one wake-up. The release writes `count` then reads
//! `sleepers`; the waiter writes `sleepers` then reads `count`: at least one side must see the other
//! (the waiter sees the slot or the releaser sees the waiter), or a wake-up is lost. The release reads
//! `sleepers` with a read-modify-write (`fetch_add(0)`), so the two updates of `sleepers` are ordered:
//! if the waiter's comes second, it reads the release's and synchronizes with it, and then sees the
//! new `count`. This needs only acquire/release reasoning, which the model checker verifies (it does
//! not model the stronger `SeqCst` guarantee that two plain loads would lean on). No wake-up is lost. A woken waiter may find its slot taken by a process that arrived in the
//! meantime (there is no queue order, as with Python's and POSIX semaphores); it sleeps again, and
//! nothing was lost: a process holds that slot.
//!
//! Why a counter of sleepers rather than a flag bit in `count` as in [`Lock`](crate::Lock): a flag
//! that a release clears and a woken waiter sets again works for one slot, but with two releases in
//! a row the second finds the flag cleared by the first and wakes nobody, leaving a sleeper asleep
//! beside a free slot.
//!
//! # Dead participants
//! A counter does not know who holds its slots. A process that dies between acquire and release
//! takes its slot with it: the value stays one lower until some process calls `release` on its
//! behalf, which any process may do (as in Python). A parent that learns from
//! [`Process::join`](crate::Process::join) that a worker died can release the worker's slot. Where the
//! holder must be known, use a [`Lock`](crate::Lock), which records its holder and reports its death.
//! A process that dies while asleep in acquire leaves `sleepers` one too high: every later release
//! makes one spare `FUTEX_WAKE` system call; nothing blocks and nothing is lost.

use super::futex::{FutexWord, Spin, Wait, spin_or_look};
use crate::codec;
use crate::error::{ReleaseError, Timeout};
use crate::sys::shm::Region;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::io;
use std::os::fd::AsFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

const COUNT: usize = 0;
const SLEEPERS: usize = 4;
const MAX: usize = 8;
const LEN: usize = 12;
const SEMAPHORE: &str = "multiprocess-semaphore";
const BOUNDED: &str = "multiprocess-bounded-semaphore";

/// How long an acquirer stays awake before it sleeps (see [`Spin`]).
static SPIN: Spin = Spin::new(Duration::from_micros(20));

/// The counter's state machine on its two words (see the module notes), written over [`FutexWord`]
/// so that the model tests run this very code.
pub(crate) struct CounterWords<'a, W> {
    pub(crate) count: &'a W,
    pub(crate) sleepers: &'a W,
    pub(crate) max: u32,
    /// How long to stay awake before sleeping; `None`: look once (the model tests).
    pub(crate) spin: Option<&'a Spin>,
}

impl<W: FutexWord> CounterWords<'_, W> {
    pub(crate) fn try_acquire(&self) -> bool {
        let count = self.count;
        let mut c = count.load(Ordering::Relaxed);
        while c > 0 {
            match count.compare_exchange(c, c - 1, Ordering::Acquire, Ordering::Relaxed) {
                Ok(_) => return true,
                Err(now) => c = now,
            }
        }
        false
    }

    pub(crate) fn acquire(&self, wait: Wait) -> bool {
        let took = || self.try_acquire().then_some(());
        if spin_or_look(self.spin, wait, took).is_some() {
            return true;
        }
        let (count, sleepers) = (self.count, self.sleepers);
        sleepers.fetch_add(1, Ordering::SeqCst);
        let got = loop {
            let c = count.load(Ordering::SeqCst);
            if c > 0 {
                if count
                    .compare_exchange(c, c - 1, Ordering::SeqCst, Ordering::Relaxed)
                    .is_ok()
                {
                    break true;
                }
                continue;
            }
            if !wait.sleep(count, 0, None) {
                break false;
            }
        };
        sleepers.fetch_sub(1, Ordering::Relaxed);
        got
    }

    /// Adds one slot and wakes a sleeper; false (and nothing changed) if the count is at `max`.
    pub(crate) fn release(&self) -> bool {
        let count = self.count;
        let mut c = count.load(Ordering::Relaxed);
        loop {
            if c >= self.max {
                return false;
            }
            match count.compare_exchange(c, c + 1, Ordering::SeqCst, Ordering::Relaxed) {
                Ok(_) => break,
                Err(now) => c = now,
            }
        }
        // A read-modify-write, not a load: see the module notes.
        if self.sleepers.fetch_add(0, Ordering::AcqRel) != 0 {
            count.wake(1);
        }
        true
    }
}

/// The shared counter behind both semaphores.
#[derive(Clone)]
struct Counter {
    region: Arc<Region>,
}

impl Counter {
    fn new(name: &str, value: u32, max: u32) -> io::Result<Counter> {
        let region = Region::anonymous(name, LEN)?;
        region.atomic_u32(COUNT).store(value, Ordering::Relaxed);
        region.atomic_u32(MAX).store(max, Ordering::Relaxed);
        Ok(Counter {
            region: Arc::new(region),
        })
    }

    fn count(&self) -> &AtomicU32 {
        self.region.atomic_u32(COUNT)
    }

    fn sleepers(&self) -> &AtomicU32 {
        self.region.atomic_u32(SLEEPERS)
    }

    fn max(&self) -> u32 {
        self.region.atomic_u32(MAX).load(Ordering::Relaxed)
    }

    fn value(&self) -> u32 {
        self.count().load(Ordering::Relaxed)
    }

    fn core(&self) -> CounterWords<'_, AtomicU32> {
        CounterWords {
            count: self.count(),
            sleepers: self.sleepers(),
            max: self.max(),
            spin: Some(&SPIN),
        }
    }

    fn try_acquire(&self) -> Option<SemaphorePermit<'_>> {
        self.core().try_acquire().then(|| self.permit())
    }

    fn acquire(&self) -> SemaphorePermit<'_> {
        self.core().acquire(Wait::Forever);
        self.permit()
    }

    fn acquire_timeout(&self, timeout: Duration) -> Result<SemaphorePermit<'_>, Timeout> {
        match self.core().acquire(Wait::timeout(timeout)) {
            true => Ok(self.permit()),
            false => Err(Timeout),
        }
    }

    fn release(&self) -> Result<(), ReleaseError> {
        if self.core().release() {
            Ok(())
        } else {
            Err(ReleaseError::AtBound { bound: self.max() })
        }
    }

    fn permit(&self) -> SemaphorePermit<'_> {
        SemaphorePermit { counter: self }
    }

    fn serialize<S: Serializer>(&self, what: &'static str, s: S) -> Result<S::Ok, S::Error> {
        codec::FdRef(self.region.as_fd(), what).serialize(s)
    }

    fn deserialize<'de, D: Deserializer<'de>>(
        kind: &str,
        what: &str,
        d: D,
    ) -> Result<Counter, D::Error> {
        Ok(Counter {
            region: Arc::new(codec::deserialize_region(d, LEN, kind, what)?),
        })
    }
}

/// A slot of a [`Semaphore`] or [`BoundedSemaphore`], taken by `acquire`: dropping it gives the slot
/// back. [`forget`](Self::forget) keeps the slot taken, for a [`release`](Semaphore::release)
/// later, possibly by another process (Python's way).
///
/// A permit borrows its semaphore, so it cannot outlive the handle it came from:
/// ```compile_fail,E0597
/// let permit = {
///     let sem = multiprocess::Semaphore::new(1).unwrap();
///     sem.acquire()
/// };
/// ```
#[must_use = "dropping the permit releases the slot at once"]
pub struct SemaphorePermit<'a> {
    counter: &'a Counter,
}

impl SemaphorePermit<'_> {
    /// Keeps the slot taken after the permit is gone; some process gives it back with `release`.
    ///
    /// # Examples
    /// ```
    /// let sem = multiprocess::Semaphore::new(1)?;
    /// sem.acquire().forget();
    /// assert_eq!(sem.get_value(), 0);
    /// sem.release()?; // here, or in any process that has the semaphore
    /// assert_eq!(sem.get_value(), 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn forget(self) {
        std::mem::forget(self);
    }
}

impl Drop for SemaphorePermit<'_> {
    fn drop(&mut self) {
        // Fails only if other processes released slots nobody had taken until the value reached its
        // bound; the slot this permit held is then given back already.
        if let Err(e) = self.counter.release() {
            crate::trace::event!(debug, "a permit's slot was given back already: {e}");
        }
    }
}

impl fmt::Debug for SemaphorePermit<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SemaphorePermit")
    }
}

/// A counter of free slots shared between processes, like Python's `multiprocessing.Semaphore`.
///
/// [`acquire`](Self::acquire) takes a slot, waiting while there is none, and gives a
/// [`SemaphorePermit`] that gives it back when dropped; [`release`](Self::release) gives a slot back
/// without a permit (any process may release, not only one that acquired: Python's way, with
/// [`SemaphorePermit::forget`]). Hand it to children in their argument (or send it through a
/// [`Connection`](crate::Connection)): every copy, and every clone, is the same semaphore.
///
/// # Caveats
/// A process that dies holding a slot takes it with it: the value stays one lower until another
/// process calls [`release`](Self::release) on its behalf (a semaphore cannot tell who holds its
/// slots; a [`Lock`](crate::Lock) can). There is no queue order among waiters.
///
/// # Examples
/// At most two children work at a time:
/// ```
/// use multiprocess::{Process, Semaphore};
///
/// fn work(slots: Semaphore) -> u32 {
///     let _slot = slots.acquire();
///     slots.get_value() // 0 or 1: this child holds one of the two slots
/// }
///
/// let slots = Semaphore::new(2)?;
/// let children: Vec<_> = (0..4)
///     .map(|_| Process::spawn(work, slots.clone()))
///     .collect::<Result<_, _>>()?;
/// for c in children {
///     assert!(c.join()? <= 1);
/// }
/// assert_eq!(slots.get_value(), 2);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct Semaphore {
    counter: Counter,
}

impl Semaphore {
    /// A new semaphore with `value` free slots.
    ///
    /// # Errors
    /// The shared memory for it could not be created.
    ///
    /// # Examples
    /// ```
    /// let sem = multiprocess::Semaphore::new(3)?;
    /// assert_eq!(sem.get_value(), 3);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn new(value: u32) -> io::Result<Semaphore> {
        Ok(Semaphore {
            counter: Counter::new(SEMAPHORE, value, u32::MAX)?,
        })
    }

    /// Takes a slot, waiting as long as it takes for one to be free.
    ///
    /// # Examples
    /// A child releases the slot the parent waits for:
    /// ```
    /// use multiprocess::{Process, Semaphore};
    ///
    /// fn give(sem: Semaphore) {
    ///     sem.release().unwrap();
    /// }
    ///
    /// let sem = Semaphore::new(0)?;
    /// let child = Process::spawn(give, sem.clone())?;
    /// sem.acquire().forget(); // returns once the child released; keeps the slot
    /// child.join()?;
    /// assert_eq!(sem.get_value(), 0);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn acquire(&self) -> SemaphorePermit<'_> {
        self.counter.acquire()
    }

    /// Takes a slot if one is free right now.
    ///
    /// # Examples
    /// ```
    /// let sem = multiprocess::Semaphore::new(1)?;
    /// let permit = sem.try_acquire().unwrap();
    /// assert!(sem.try_acquire().is_none());
    /// drop(permit);
    /// assert!(sem.try_acquire().is_some());
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn try_acquire(&self) -> Option<SemaphorePermit<'_>> {
        self.counter.try_acquire()
    }

    /// Takes a slot, waiting at most `timeout` for one; [`Timeout`] if none came. A `timeout` too
    /// large to be a deadline (such as `Duration::MAX`) waits as long as it takes.
    ///
    /// # Examples
    /// ```
    /// use std::time::{Duration, Instant};
    /// let sem = multiprocess::Semaphore::new(0)?;
    /// let t = Instant::now();
    /// assert!(sem.acquire_timeout(Duration::from_millis(30)).is_err());
    /// assert!(t.elapsed() >= Duration::from_millis(30));
    /// sem.release()?;
    /// assert!(sem.acquire_timeout(Duration::MAX).is_ok());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn acquire_timeout(&self, timeout: Duration) -> Result<SemaphorePermit<'_>, Timeout> {
        self.counter.acquire_timeout(timeout)
    }

    /// Gives a slot back, waking one waiting process if there is one. Any process may release,
    /// including one that never acquired (for example on behalf of a process that died holding a
    /// slot).
    ///
    /// # Errors
    /// [`ReleaseError::AtBound`] if the value is already `u32::MAX`; it is left unchanged.
    ///
    /// # Examples
    /// ```
    /// let sem = multiprocess::Semaphore::new(0)?;
    /// sem.release()?;
    /// sem.release()?;
    /// assert_eq!(sem.get_value(), 2);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn release(&self) -> Result<(), ReleaseError> {
        self.counter.release()
    }

    /// How many slots are free right now (Python's `get_value`). Other processes may change it
    /// the moment after.
    ///
    /// # Examples
    /// ```
    /// let sem = multiprocess::Semaphore::new(2)?;
    /// let _permit = sem.acquire();
    /// assert_eq!(sem.get_value(), 1);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn get_value(&self) -> u32 {
        self.counter.value()
    }
}

/// A [`Semaphore`] whose value may never exceed its initial value, like Python's
/// `multiprocessing.BoundedSemaphore`: a [`release`](Self::release) without a matching acquire is
/// an error instead of a silent extra slot.
///
/// The bound lives in the shared memory with the count, so every copy in every process enforces it.
///
/// # Caveats
/// As with [`Semaphore`], a process that dies holding a slot takes it with it, until another
/// process releases it on its behalf.
///
/// # Examples
/// ```
/// use multiprocess::{BoundedSemaphore, Process};
///
/// fn borrow(sem: BoundedSemaphore) {
///     let _slot = sem.acquire(); // given back when dropped
/// }
///
/// let sem = BoundedSemaphore::new(1)?;
/// Process::spawn(borrow, sem.clone())?.join()?;
/// assert_eq!(sem.get_value(), 1);
/// assert!(sem.release().is_err()); // one release too many
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct BoundedSemaphore {
    counter: Counter,
}

impl BoundedSemaphore {
    /// A new bounded semaphore with `value` free slots, which is also its bound.
    ///
    /// # Errors
    /// The shared memory for it could not be created.
    ///
    /// # Examples
    /// ```
    /// let sem = multiprocess::BoundedSemaphore::new(2)?;
    /// assert_eq!(sem.get_value(), 2);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn new(value: u32) -> io::Result<BoundedSemaphore> {
        Ok(BoundedSemaphore {
            counter: Counter::new(BOUNDED, value, value)?,
        })
    }

    /// Takes a slot, waiting as long as it takes for one to be free.
    ///
    /// # Examples
    /// ```
    /// let sem = multiprocess::BoundedSemaphore::new(1)?;
    /// let _permit = sem.acquire();
    /// assert_eq!(sem.get_value(), 0);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn acquire(&self) -> SemaphorePermit<'_> {
        self.counter.acquire()
    }

    /// Takes a slot if one is free right now.
    ///
    /// # Examples
    /// ```
    /// let sem = multiprocess::BoundedSemaphore::new(1)?;
    /// let _permit = sem.try_acquire().unwrap();
    /// assert!(sem.try_acquire().is_none());
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn try_acquire(&self) -> Option<SemaphorePermit<'_>> {
        self.counter.try_acquire()
    }

    /// Takes a slot, waiting at most `timeout` for one; [`Timeout`] if none came. A `timeout` too
    /// large to be a deadline (such as `Duration::MAX`) waits as long as it takes.
    ///
    /// # Examples
    /// ```
    /// use std::time::Duration;
    /// let sem = multiprocess::BoundedSemaphore::new(1)?;
    /// let _permit = sem.acquire_timeout(Duration::from_millis(10)).unwrap();
    /// assert!(sem.acquire_timeout(Duration::from_millis(10)).is_err());
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn acquire_timeout(&self, timeout: Duration) -> Result<SemaphorePermit<'_>, Timeout> {
        self.counter.acquire_timeout(timeout)
    }

    /// Gives a slot back, waking one waiting process if there is one. Any process may release.
    ///
    /// # Errors
    /// [`ReleaseError::AtBound`] if the value is already the initial value (a release without a
    /// matching acquire); the value is left unchanged.
    ///
    /// # Examples
    /// ```
    /// use multiprocess::ReleaseError;
    /// let sem = multiprocess::BoundedSemaphore::new(1)?;
    /// sem.acquire().forget();
    /// sem.release()?;
    /// assert_eq!(sem.release(), Err(ReleaseError::AtBound { bound: 1 }));
    /// assert_eq!(sem.get_value(), 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn release(&self) -> Result<(), ReleaseError> {
        self.counter.release()
    }

    /// How many slots are free right now (Python's `get_value`). Other processes may change it
    /// the moment after.
    ///
    /// # Examples
    /// ```
    /// let sem = multiprocess::BoundedSemaphore::new(2)?;
    /// let _permit = sem.try_acquire();
    /// assert_eq!(sem.get_value(), 1);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn get_value(&self) -> u32 {
        self.counter.value()
    }
}

impl fmt::Debug for Semaphore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Semaphore")
            .field("value", &self.counter.value())
            .finish()
    }
}

impl fmt::Debug for BoundedSemaphore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BoundedSemaphore")
            .field("value", &self.counter.value())
            .field("bound", &self.counter.max())
            .finish()
    }
}

/// A semaphore travels as the descriptor of its shared memory (beside the message).
impl Serialize for Semaphore {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.counter.serialize("Semaphore", s)
    }
}

impl<'de> Deserialize<'de> for Semaphore {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Semaphore {
            counter: Counter::deserialize(SEMAPHORE, "Semaphore", d)?,
        })
    }
}

/// A bounded semaphore travels as the descriptor of its shared memory (beside the message).
impl Serialize for BoundedSemaphore {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.counter.serialize("BoundedSemaphore", s)
    }
}

impl<'de> Deserialize<'de> for BoundedSemaphore {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(BoundedSemaphore {
            counter: Counter::deserialize(BOUNDED, "BoundedSemaphore", d)?,
        })
    }
}
