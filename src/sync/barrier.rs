//! `Barrier`: a rendezvous of a fixed number of parties, shared between processes.
//!
//! # Why it keeps one slot per waiter
//! A waiter sleeps until its *generation* ends, and must then learn how it ended: tripped (every
//! party arrived) or broken (aborted, reset, a timeout, a dead party). A single state word cannot
//! tell it reliably: by the time a woken waiter reads the word, the barrier may have tripped again,
//! or been broken and reset, and "the generation moved on" no longer says what happened to *its*
//! generation. Python's `threading.Barrier` solves this with a *draining* state that holds new
//! arrivals back until every woken waiter has left; across processes that state would wedge the
//! barrier forever if a waiter died between waking and leaving.
//!
//! So each waiter owns a *slot* in the shared memory while it waits: its thread id, its generation,
//! and an outcome that starts out *pending*. Whoever ends the generation (the last arrival, `abort`,
//! `reset`, a timed-out waiter, a waiter that finds a dead party) writes the outcome into every
//! pending slot of that generation, then changes the *sequence* word and wakes the sleepers with one
//! `FUTEX_WAKE`. A waiter reads the outcome from its own slot, which nobody else reuses until it frees
//! it, so the answer is exact however late it wakes. There are `2 × parties + 2` slots; a slot whose
//! owner died is taken back.
//!
//! # The shared memory
//! | offset | word |
//! |---|---|
//! | 0 | a [`Lock`] that guards every change below |
//! | 4 | sequence: generation `<< 1` \| `BROKEN` (the futex word the waiters sleep on) |
//! | 8 | parties |
//! | 12 | parties arrived in this generation |
//! | 16 | number of slots |
//! | 24 | the default timeout in nanoseconds plus one, as a `u64` (0: none) |
//! | 32 + 16·i | slot i: thread id (0 when free), generation, outcome |
//!
//! # Dead participants
//! - A party that dies *while waiting* breaks the barrier: sleepers wake at least every
//!   [`LIVENESS_PERIOD`] and look at the thread ids of the pending slots of their generation. Without
//!   this, the others would wait for a trip that can no longer mean "everyone is here".
//! - A party that dies *before arriving* cannot be told from a slow one: the others wait until their
//!   timeout, which then breaks the barrier for everyone (as in Python). Use
//!   [`wait_timeout`](Barrier::wait_timeout) when parties may die.
//! - A process that dies holding the internal lock breaks the barrier: the next process to take the
//!   lock is told by [`Lock`] (`OwnerDied`), cannot trust the counts, and breaks it.
//!
//! In every case the broken barrier stays broken until [`reset`](Barrier::reset).

use super::futex::{Spin, Wait};
use super::lock::Lock;
use crate::sys::{self, shm::Region};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::io;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

const SEQ: usize = 4;
const PARTIES: usize = 8;
const ARRIVED: usize = 12;
const NSLOTS: usize = 16;
const DEFAULT_TIMEOUT: usize = 24;
const HEADER: usize = 32;
const SLOT: usize = 16;

const BROKEN: u32 = 1;
const KIND: &str = "multiprocess-barrier";

const PENDING: u32 = 0;
const TRIPPED: u32 = 1;
const BROKE: u32 = 2;

/// A sleeping waiter looks for dead parties at least this often.
const LIVENESS_PERIOD: Duration = Duration::from_millis(20);

/// How long a waiter stays awake before it sleeps (see [`Spin`]).
static SPIN: Spin = Spin::new(Duration::from_micros(20));

/// The most parties a barrier can have.
pub const MAX_PARTIES: usize = 1 << 16;

/// Why a [`Barrier::wait`] did not pass. It is serde-serializable, so a child can return it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum BarrierError {
    /// The barrier is broken: it was aborted or reset while this party waited, another party timed
    /// out, a party died while waiting, or it was broken already when this party arrived. It stays
    /// broken until [`Barrier::reset`].
    #[error(
        "the barrier is broken (aborted, reset, timed out elsewhere, or a waiting party died); \
         reset it to use it again"
    )]
    Broken,
    /// This party's timeout passed before every party arrived. As in Python, that breaks the barrier
    /// for every party.
    #[error("timed out waiting at the barrier, which is now broken for every party")]
    Timeout,
}

/// A barrier shared between processes, like Python's `multiprocessing.Barrier`: each of `parties`
/// processes (or threads) calls [`wait`](Self::wait), and all of them are released together when the
/// last one arrives. The barrier then serves the next round.
///
/// Each `wait` returns an arrival index in `0..parties`, different for each party of a round; the last
/// to arrive gets `parties - 1`, so exactly one party can do a round's single-party work (what
/// Python's `action` does). A timeout, [`abort`](Self::abort), [`reset`](Self::reset), or a party dying
/// while it waits *breaks* the barrier: every waiter gets [`BarrierError`], and so does every later
/// `wait` until `reset`. A party that dies before arriving is noticed only by a timeout; see the
/// module notes in the source for the details of each case.
///
/// Hand it to children in their argument (or send it through a [`Connection`](crate::Connection)):
/// every copy is the same barrier.
///
/// # Examples
/// ```
/// use multiprocess::{Barrier, Process};
///
/// fn party(barrier: Barrier) -> usize {
///     barrier.wait().unwrap()
/// }
///
/// let barrier = Barrier::new(3)?;
/// let kids: Vec<_> = (0..2)
///     .map(|_| Process::spawn(party, barrier.clone()))
///     .collect::<Result<_, _>>()?;
/// let mut indices = vec![barrier.wait()?];
/// for k in kids {
///     indices.push(k.join()?);
/// }
/// indices.sort();
/// assert_eq!(indices, [0, 1, 2]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct Barrier {
    lock: Lock,
    parties: u32,
    slots: usize,
}

impl Barrier {
    /// A barrier for `parties` parties.
    ///
    /// # Errors
    /// `InvalidInput` if `parties` is 0 or above [`MAX_PARTIES`]; otherwise the shared memory could not
    /// be created.
    pub fn new(parties: usize) -> io::Result<Barrier> {
        Barrier::create(parties, None)
    }

    /// A barrier for `parties` parties whose [`wait`](Self::wait) gives up after `timeout` (Python's
    /// `Barrier(parties, timeout=...)`), breaking the barrier as any timeout does.
    ///
    /// # Errors
    /// As [`new`](Self::new).
    ///
    /// # Examples
    /// ```
    /// use multiprocess::{Barrier, BarrierError};
    /// use std::time::Duration;
    ///
    /// let barrier = Barrier::with_timeout(2, Duration::from_millis(10))?;
    /// assert_eq!(barrier.timeout(), Some(Duration::from_millis(10)));
    /// assert_eq!(barrier.wait(), Err(BarrierError::Timeout));
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn with_timeout(parties: usize, timeout: Duration) -> io::Result<Barrier> {
        Barrier::create(parties, Some(timeout))
    }

    fn create(parties: usize, timeout: Option<Duration>) -> io::Result<Barrier> {
        if parties == 0 || parties > MAX_PARTIES {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("a Barrier needs 1 to {MAX_PARTIES} parties, not {parties}"),
            ));
        }
        let slots = 2 * parties + 2;
        let region = Region::anonymous(KIND, HEADER + SLOT * slots)?;
        region
            .atomic_u32(PARTIES)
            .store(parties as u32, Ordering::Relaxed);
        region
            .atomic_u32(NSLOTS)
            .store(slots as u32, Ordering::Relaxed);
        if let Some(t) = timeout {
            let nanos = u64::try_from(t.as_nanos()).unwrap_or(u64::MAX - 1);
            region
                .atomic::<AtomicU64>(DEFAULT_TIMEOUT)
                .store(nanos.min(u64::MAX - 1) + 1, Ordering::Relaxed);
        }
        Ok(Barrier {
            lock: Lock::in_region(Arc::new(region)),
            parties: parties as u32,
            slots,
        })
    }

    fn word(&self, offset: usize) -> &AtomicU32 {
        self.lock.region().atomic_u32(offset)
    }

    fn seq(&self) -> &AtomicU32 {
        self.word(SEQ)
    }

    /// Slot `i`'s thread id, generation and outcome.
    fn slot(&self, i: usize) -> [&AtomicU32; 3] {
        let at = HEADER + SLOT * i;
        [self.word(at), self.word(at + 4), self.word(at + 8)]
    }

    /// The default timeout of [`wait`](Self::wait), if it has one.
    pub fn timeout(&self) -> Option<Duration> {
        let v = self
            .lock
            .region()
            .atomic::<AtomicU64>(DEFAULT_TIMEOUT)
            .load(Ordering::Relaxed);
        v.checked_sub(1).map(Duration::from_nanos)
    }

    fn default_wait(&self) -> Wait {
        self.timeout().map_or(Wait::Forever, Wait::timeout)
    }

    /// The number of parties it waits for.
    pub fn parties(&self) -> usize {
        self.parties as usize
    }

    /// How many parties wait at the barrier right now (0 while it is broken).
    ///
    /// # Examples
    /// ```
    /// let barrier = multiprocess::Barrier::new(2)?;
    /// assert_eq!(barrier.n_waiting(), 0);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn n_waiting(&self) -> usize {
        if self.is_broken() {
            return 0;
        }
        (self.word(ARRIVED).load(Ordering::Relaxed) as usize).min(self.parties() - 1)
    }

    /// Whether the barrier is broken (until [`reset`](Self::reset)).
    ///
    /// # Examples
    /// ```
    /// let barrier = multiprocess::Barrier::new(2)?;
    /// barrier.abort();
    /// assert!(barrier.is_broken());
    /// barrier.reset();
    /// assert!(!barrier.is_broken());
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn is_broken(&self) -> bool {
        self.seq().load(Ordering::Acquire) & BROKEN != 0
    }

    /// Waits until every party has arrived; returns this party's arrival index in `0..parties`
    /// (the last to arrive gets `parties - 1`). Waits at most the barrier's default
    /// [`timeout`](Self::timeout), if it has one.
    ///
    /// # Errors
    /// [`BarrierError::Broken`] if the barrier is or becomes broken while waiting;
    /// [`BarrierError::Timeout`] if the default timeout passed.
    pub fn wait(&self) -> Result<usize, BarrierError> {
        self.wait_for(self.default_wait(), None)
    }

    /// Like [`wait`](Self::wait), and the party that arrives last runs `action` before any party is
    /// released (Python's `Barrier(parties, action=...)`; pass the same action in every party). If
    /// `action` panics, the barrier breaks for every party and the panic goes on in this one.
    ///
    /// # Errors
    /// As [`wait`](Self::wait).
    ///
    /// # Examples
    /// ```
    /// use multiprocess::{AtomicValue, Barrier, Process};
    ///
    /// fn party(args: (Barrier, AtomicValue<u32>)) -> u32 {
    ///     let (barrier, rounds) = args;
    ///     barrier.wait_with(|| { rounds.fetch_add(1); }).unwrap();
    ///     rounds.load() // every party sees the action's effect
    /// }
    ///
    /// let (barrier, rounds) = (Barrier::new(2)?, AtomicValue::new(0u32)?);
    /// let kid = Process::spawn(party, (barrier.clone(), rounds.clone()))?;
    /// assert_eq!(party((barrier, rounds)), 1);
    /// assert_eq!(kid.join()?, 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn wait_with(&self, action: impl FnOnce()) -> Result<usize, BarrierError> {
        let mut action = Some(action);
        let mut run = || {
            if let Some(a) = action.take() {
                a();
            }
        };
        self.wait_for(self.default_wait(), Some(&mut run))
    }

    /// Like [`wait`](Self::wait), for at most `timeout`. If the timeout passes first, the barrier
    /// breaks for every party, as in Python. A `timeout` too large to be a deadline waits as long as
    /// it takes.
    ///
    /// # Errors
    /// [`BarrierError::Timeout`] when this party's timeout broke the barrier;
    /// [`BarrierError::Broken`] when it is or becomes broken otherwise.
    ///
    /// # Examples
    /// ```
    /// use multiprocess::{Barrier, BarrierError};
    /// use std::time::{Duration, Instant};
    ///
    /// let barrier = Barrier::new(2)?;
    /// let t = Instant::now();
    /// assert_eq!(barrier.wait_timeout(Duration::from_millis(30)), Err(BarrierError::Timeout));
    /// assert!(t.elapsed() >= Duration::from_millis(30));
    /// assert_eq!(barrier.wait(), Err(BarrierError::Broken)); // broken until reset
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn wait_timeout(&self, timeout: Duration) -> Result<usize, BarrierError> {
        self.wait_for(Wait::timeout(timeout), None)
    }

    /// Breaks the barrier: every waiter gets [`BarrierError::Broken`], and so does every `wait` until
    /// [`reset`](Self::reset).
    pub fn abort(&self) {
        let _held = self.locked();
        self.break_locked();
    }

    /// Returns the barrier to its empty, unbroken state. Parties waiting now get
    /// [`BarrierError::Broken`].
    pub fn reset(&self) {
        let _held = self.locked();
        let seq = self.seq().load(Ordering::Relaxed);
        self.end_generation(BROKE, ((seq >> 1).wrapping_add(1)) << 1);
    }

    /// Takes the internal lock; if its holder died, the counts cannot be trusted, and the barrier
    /// breaks.
    fn locked(&self) -> super::lock::LockGuard<'_> {
        match self.lock.lock() {
            Ok(g) => g,
            Err(died) => {
                let g = died.into_inner();
                self.break_locked();
                g
            }
        }
    }

    /// Ends the current generation (with the lock held): empties the count, stores the next sequence
    /// `seq`, writes `outcome` into every pending slot of the generation, and wakes the sleepers. The
    /// order matters: a waiter that sees its outcome sees the new count and sequence too, and one that
    /// sees the new sequence before its outcome sleeps on the new value until the wake-up that follows.
    fn end_generation(&self, outcome: u32, seq: u32) {
        let generation = self.seq().load(Ordering::Relaxed) >> 1;
        self.word(ARRIVED).store(0, Ordering::Relaxed);
        self.seq().store(seq, Ordering::Release);
        let mut any = false;
        for i in 0..self.slots {
            let [tid, g, out] = self.slot(i);
            if tid.load(Ordering::Acquire) != 0
                && g.load(Ordering::Relaxed) == generation
                && out.load(Ordering::Relaxed) == PENDING
            {
                out.store(outcome, Ordering::Release);
                any = true;
            }
        }
        if any {
            sys::shm::futex_wake(self.seq(), u32::MAX);
        }
    }

    /// Breaks the barrier (with the lock held).
    fn break_locked(&self) {
        let seq = self.seq().load(Ordering::Relaxed);
        self.end_generation(BROKE, seq | BROKEN);
    }

    /// Claims a free slot for thread `me` in generation `generation` (with the lock held), taking back slots
    /// whose owner died.
    fn claim_slot(&self, me: u32, generation: u32) -> Option<usize> {
        let free = (0..self.slots)
            .find(|&i| self.slot(i)[0].load(Ordering::Acquire) == 0)
            .or_else(|| {
                (0..self.slots).find(|&i| {
                    let tid = self.slot(i)[0].load(Ordering::Acquire);
                    !sys::shm::process_alive(tid as i32)
                })
            })?;
        let [tid, g, out] = self.slot(free);
        g.store(generation, Ordering::Relaxed);
        out.store(PENDING, Ordering::Relaxed);
        tid.store(me, Ordering::Release);
        Some(free)
    }

    /// Whether a pending party of generation `generation` has died.
    fn dead_party(&self, generation: u32) -> bool {
        (0..self.slots).any(|i| {
            let [tid, g, out] = self.slot(i);
            let t = tid.load(Ordering::Acquire);
            t != 0
                && g.load(Ordering::Relaxed) == generation
                && out.load(Ordering::Acquire) == PENDING
                && !sys::shm::process_alive(t as i32)
        })
    }

    fn wait_for(
        &self,
        wait: Wait,
        action: Option<&mut dyn FnMut()>,
    ) -> Result<usize, BarrierError> {
        let me = sys::gettid() as u32;
        // Arrive: count ourselves in and claim a slot, or trip the barrier.
        let (slot, index, seen) = loop {
            let held = self.locked();
            let seq = self.seq().load(Ordering::Relaxed);
            if seq & BROKEN != 0 {
                return Err(BarrierError::Broken);
            }
            let index = self.word(ARRIVED).load(Ordering::Relaxed);
            if index.saturating_add(1) >= self.parties {
                if let Some(action) = action
                    && let Err(panic) = catch_unwind(AssertUnwindSafe(action))
                {
                    self.break_locked();
                    drop(held);
                    resume_unwind(panic);
                }
                self.end_generation(TRIPPED, ((seq >> 1).wrapping_add(1)) << 1);
                return Ok(self.parties as usize - 1);
            }
            if let Some(slot) = self.claim_slot(me, seq >> 1) {
                self.word(ARRIVED).store(index + 1, Ordering::Relaxed);
                break (slot, index as usize, seq);
            }
            // Every slot belongs to a live waiter that has not yet left an earlier generation:
            // give them a moment.
            if wait.is_over() {
                self.break_locked();
                return Err(BarrierError::Timeout);
            }
            drop(held);
            std::thread::sleep(Duration::from_millis(1));
        };
        let outcome = self.slot(slot)[2];
        let leave = |o: u32| {
            self.slot(slot)[0].store(0, Ordering::Release);
            if o == TRIPPED {
                Ok(index)
            } else {
                Err(BarrierError::Broken)
            }
        };
        let ended = || Some(outcome.load(Ordering::Acquire)).filter(|&o| o != PENDING);
        if let Some(o) = SPIN.until(wait, ended) {
            return leave(o);
        }
        loop {
            let o = outcome.load(Ordering::Acquire);
            if o != PENDING {
                return leave(o);
            }
            if wait.is_over() {
                let _held = self.locked();
                if outcome.load(Ordering::Acquire) == PENDING {
                    self.break_locked();
                    self.slot(slot)[0].store(0, Ordering::Release);
                    return Err(BarrierError::Timeout);
                }
                continue;
            }
            // Time is left (just checked); at most a liveness period of it.
            let Some(Some(nap)) = wait.left(Some(LIVENESS_PERIOD)) else {
                continue;
            };
            let now = Instant::now();
            // Sleep on the sequence as it is now: it may have moved on just before our outcome was
            // written, and the wake-up comes after that write.
            let now_seq = self.seq().load(Ordering::Acquire);
            if outcome.load(Ordering::Acquire) != PENDING {
                continue;
            }
            sys::shm::futex_wait(self.seq(), now_seq, Some(nap));
            if outcome.load(Ordering::Acquire) == PENDING
                && now.elapsed() >= nap
                && self.dead_party(seen >> 1)
            {
                let _held = self.locked();
                if self.dead_party(seen >> 1) {
                    crate::trace::event!(
                        warn,
                        "a barrier's waiting party died: the barrier breaks"
                    );
                    self.break_locked();
                }
            }
        }
    }
}

impl fmt::Debug for Barrier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Barrier")
            .field("parties", &self.parties)
            .field("n_waiting", &self.n_waiting())
            .field("broken", &self.is_broken())
            .finish()
    }
}

/// Travels as the descriptor of its shared memory (beside the message).
impl Serialize for Barrier {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.lock.serialize(s)
    }
}

impl<'de> Deserialize<'de> for Barrier {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let lock = Lock::deserialize_sized(d, HEADER, KIND, "Barrier")?;
        let region = lock.region();
        let parties = region.atomic_u32(PARTIES).load(Ordering::Relaxed);
        let slots = region.atomic_u32(NSLOTS).load(Ordering::Relaxed) as usize;
        if parties == 0
            || parties as usize > MAX_PARTIES
            || slots < parties as usize
            || region.len() < HEADER + SLOT * slots
        {
            return Err(D::Error::custom("a Barrier's shared memory is malformed"));
        }
        Ok(Barrier {
            lock,
            parties,
            slots,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The pid of a process that has exited and been reaped.
    fn dead_pid() -> u32 {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        pid
    }

    #[test]
    fn a_holder_that_died_inside_the_barrier_breaks_it() {
        let barrier = Barrier::new(2).unwrap();
        // A process took the internal lock, perhaps half-way through counting itself in, and died.
        match barrier.lock.try_lock_as(dead_pid()) {
            Some(Ok(guard)) => guard.leak(),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            barrier.wait_timeout(Duration::from_secs(30)),
            Err(BarrierError::Broken)
        );
        assert!(barrier.is_broken());
        barrier.reset();
        assert!(!barrier.is_broken() && !barrier.lock.is_locked());
    }

    #[test]
    fn a_slot_of_a_dead_thread_is_taken_back() {
        let barrier = Barrier::new(1).unwrap();
        let dead = dead_pid();
        for i in 0..barrier.slots {
            barrier.slot(i)[0].store(dead, Ordering::Relaxed);
        }
        let me = sys::gettid() as u32;
        assert!(barrier.claim_slot(me, 0).is_some());
    }
}
