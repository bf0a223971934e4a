//! `Event`: a flag shared between processes that they can wait for.
//!
//! # The state word
//! One `u32` in shared memory:
//!
//! | bits | meaning |
//! |---|---|
//! | 0 (`SET`) | the flag |
//! | 1 (`WAITERS`) | some process may be asleep in `FUTEX_WAIT` on this word |
//! | 2..=31 (`GENERATION`) | how many times the flag went from clear to set, modulo 2^30 |
//!
//! *Wait* reads the word; if `SET` is there it returns at once. Otherwise it remembers the
//! generation, stays awake briefly (an adaptive spin, never past its deadline: see `futex::Spin`),
//! then sets `WAITERS` with a
//! compare-and-swap and sleeps in `FUTEX_WAIT`, telling the kernel the exact word it saw (a set
//! between our read and our sleep changes the word, and the wait returns at once). It returns when it
//! sees `SET` *or a new generation*, and that is the point of the generation: a `set` followed at once
//! by a `clear` still releases every process that was waiting when `set` ran, even one that did not
//! run before the `clear` (Python's `threading.Event` promises the same).
//!
//! *Set* swaps in `SET` with the next generation, clearing `WAITERS`, and if `WAITERS` was there wakes
//! every sleeper (`FUTEX_WAKE` of `i32::MAX`). Setting a set flag changes nothing and wakes nobody.
//! *Clear* removes `SET` and keeps the rest. While `SET` is there no process sleeps, so `WAITERS` is
//! only ever seen without it; setting an event nobody waits for makes no system call.
//!
//! # Dead participants
//! Nothing to recover: the state is a flag, and no process holds anything. A process that dies
//! while asleep in `wait` leaves `WAITERS` set, which costs the next `set` one spare `FUTEX_WAKE`.
//!
//! A waiter that stays asleep across exactly 2^30 set-and-clear cycles (the generation wrapped
//! around to the value it remembered) would miss them all and wait for the next `set`.

use super::futex::{FutexWord, Spin, Wait, spin_or_look};
use crate::codec;
use crate::error::Timeout;
use crate::sys::shm::Region;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::io;
use std::os::fd::AsFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

const SET: u32 = 1;
pub(crate) const WAITERS: u32 = 1 << 1;
const GENERATION: u32 = !(SET | WAITERS);
const ONE_GENERATION: u32 = 1 << 2;
const KIND: &str = "multiprocess-event";

/// How long a waiter stays awake before it sleeps (see [`Spin`]).
static SPIN: Spin = Spin::new(Duration::from_micros(20));

/// A flag shared between processes, like Python's `multiprocessing.Event`: processes
/// [`wait`](Self::wait) until some process [`set`](Self::set)s it.
///
/// Hand it to children in their argument (or send it through a [`Connection`](crate::Connection)):
/// every copy, and every clone, is the same event. A [`set`](Self::set) wakes every waiting process;
/// the flag stays set (and later waits return at once) until [`clear`](Self::clear). A `set` followed
/// at once by a `clear` still releases every process that was already waiting.
///
/// A process that dies while setting, clearing or waiting leaves nothing to repair: the state is a
/// flag.
///
/// # Examples
/// Children wait for the parent's signal to start:
/// ```
/// use multiprocess::{Event, Process};
///
/// fn runner(go: Event) -> bool {
///     go.wait();
///     go.is_set()
/// }
///
/// let go = Event::new()?;
/// let children: Vec<_> = (0..3)
///     .map(|_| Process::spawn(runner, go.clone()))
///     .collect::<Result<_, _>>()?;
/// go.set();
/// for c in children {
///     assert!(c.join()?);
/// }
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct Event {
    region: Arc<Region>,
}

impl Event {
    /// A new event, not set.
    ///
    /// # Errors
    /// The shared memory for it could not be created.
    ///
    /// # Examples
    /// ```
    /// let event = multiprocess::Event::new()?;
    /// assert!(!event.is_set());
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn new() -> io::Result<Event> {
        Ok(Event {
            region: Arc::new(Region::anonymous(KIND, 4)?),
        })
    }

    fn word(&self) -> &AtomicU32 {
        self.region.atomic_u32(0)
    }

    fn core(&self) -> EventWord<'_, AtomicU32> {
        EventWord {
            word: self.word(),
            spin: Some(&SPIN),
        }
    }

    /// Whether the flag is set right now.
    ///
    /// # Examples
    /// ```
    /// let event = multiprocess::Event::new()?;
    /// event.set();
    /// assert!(event.is_set());
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn is_set(&self) -> bool {
        self.core().is_set()
    }

    /// Sets the flag and wakes every process waiting for it. Setting a set flag does nothing.
    ///
    /// # Examples
    /// A child sets the event the parent waits for:
    /// ```
    /// use multiprocess::{Event, Process};
    ///
    /// fn ready(event: Event) {
    ///     event.set();
    /// }
    ///
    /// let event = Event::new()?;
    /// let child = Process::spawn(ready, event.clone())?;
    /// event.wait();
    /// child.join()?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn set(&self) {
        self.core().set();
    }

    /// Clears the flag: later waits wait for the next [`set`](Self::set).
    ///
    /// # Examples
    /// ```
    /// use std::time::Duration;
    /// let event = multiprocess::Event::new()?;
    /// event.set();
    /// event.clear();
    /// assert!(!event.is_set());
    /// assert!(event.wait_timeout(Duration::from_millis(10)).is_err());
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn clear(&self) {
        self.core().clear();
    }

    /// Waits until the flag is set, as long as it takes. Returns at once if it is set already.
    ///
    /// # Examples
    /// ```
    /// let event = multiprocess::Event::new()?;
    /// event.set();
    /// event.wait(); // set already: returns at once
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn wait(&self) {
        self.core().wait(Wait::Forever);
    }

    /// Waits at most `timeout` for the flag to be set: `Ok` when it was (also when it was set during
    /// the wait and cleared again before this process saw it), [`Timeout`] when it was not. A
    /// `timeout` too large to be a deadline (such as `Duration::MAX`) waits as long as it takes.
    ///
    /// # Examples
    /// ```
    /// use std::time::{Duration, Instant};
    /// let event = multiprocess::Event::new()?;
    /// let t = Instant::now();
    /// assert!(event.wait_timeout(Duration::from_millis(30)).is_err());
    /// assert!(t.elapsed() >= Duration::from_millis(30));
    /// event.set();
    /// assert!(event.wait_timeout(Duration::from_millis(30)).is_ok());
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn wait_timeout(&self, timeout: Duration) -> Result<(), Timeout> {
        if self.core().wait(Wait::timeout(timeout)) {
            Ok(())
        } else {
            Err(Timeout)
        }
    }
}

/// The event's state machine on one word (see the module notes), written over [`FutexWord`] so that
/// the model tests run this very code.
pub(crate) struct EventWord<'a, W> {
    pub(crate) word: &'a W,
    /// How long to stay awake before sleeping; `None`: look once (the model tests).
    pub(crate) spin: Option<&'a Spin>,
}

impl<W: FutexWord> EventWord<'_, W> {
    pub(crate) fn is_set(&self) -> bool {
        self.word.load(Ordering::Acquire) & SET != 0
    }

    pub(crate) fn set(&self) {
        let word = self.word;
        let mut v = word.load(Ordering::Relaxed);
        loop {
            if v & SET != 0 {
                return;
            }
            let next = ((v & GENERATION).wrapping_add(ONE_GENERATION) & GENERATION) | SET;
            match word.compare_exchange(v, next, Ordering::AcqRel, Ordering::Relaxed) {
                Ok(_) => break,
                Err(now) => v = now,
            }
        }
        if v & WAITERS != 0 {
            word.wake(i32::MAX as u32);
        }
    }

    pub(crate) fn clear(&self) {
        self.word.fetch_and(!SET, Ordering::AcqRel);
    }

    /// Waits until the flag is set or a new generation begins, or `wait` runs out; whether the flag
    /// was set.
    pub(crate) fn wait(&self, wait: Wait) -> bool {
        let word = self.word;
        let first = word.load(Ordering::Acquire);
        if first & SET != 0 {
            return true;
        }
        let released = |v: u32| v & SET != 0 || (v ^ first) & GENERATION != 0;
        let seen = || released(word.load(Ordering::Acquire)).then_some(());
        if spin_or_look(self.spin, wait, seen).is_some() {
            return true;
        }
        loop {
            let v = word.load(Ordering::Acquire);
            if released(v) {
                return true;
            }
            if v & WAITERS == 0
                && word
                    .compare_exchange(v, v | WAITERS, Ordering::Relaxed, Ordering::Relaxed)
                    .is_err()
            {
                continue;
            }
            if !wait.sleep(word, v | WAITERS, None) {
                return false;
            }
        }
    }
}

impl fmt::Debug for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Event")
            .field("is_set", &self.is_set())
            .finish()
    }
}

/// An event travels as the descriptor of its shared memory (beside the message).
impl Serialize for Event {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        codec::FdRef(self.region.as_fd(), "Event").serialize(s)
    }
}

impl<'de> Deserialize<'de> for Event {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Event {
            region: Arc::new(codec::deserialize_region(d, 4, KIND, "Event")?),
        })
    }
}
