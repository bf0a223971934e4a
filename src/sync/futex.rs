//! The word every state machine of this module runs on, written once for two worlds.
//!
//! The lock-free parts of `Lock`, `Event`, `Semaphore` and `Condition` are small state machines over
//! 32-bit words: compare-and-swaps, a few read-modify-writes, and a futex to sleep on a word until it
//! changes. Their bugs hide in interleavings that a test across real processes meets once in a million
//! runs: a wake-up lost between a waiter's last look and its sleep, a release that sees no sleeper
//! although one is about to sleep. So the state machines are written against [`FutexWord`], not
//! against `AtomicU32` directly:
//!
//! - in the library, `FutexWord` is `AtomicU32` in shared memory, and `wait`/`wake` are the
//!   `FUTEX_WAIT`/`FUTEX_WAKE` system calls;
//! - in the model tests (`model.rs`, built only for `cargo test`), it is a `loom` atomic beside a
//!   `loom` mutex and condition variable that behave as a futex does (the comparison with the
//!   expected value and the enqueueing happen atomically with respect to a wake), and `loom` runs the
//!   *same* code through every interleaving of its atomic steps, up to a preemption bound. A lost
//!   wake-up there is a deadlock, which `loom` reports with the schedule that caused it.
//!
//! The model ignores timeouts: a sleeper sleeps until woken. Real timeouts only add wake-ups, so any
//! protocol that needs a timeout to make progress among live participants fails the model. What the
//! model cannot cover, because it needs time or dead processes, is covered by the tests across
//! processes: a holder that dies while others sleep, deadlines.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A 32-bit atomic word that a thread can sleep on until it changes.
pub(crate) trait FutexWord {
    fn load(&self, order: Ordering) -> u32;
    fn swap(&self, v: u32, order: Ordering) -> u32;
    fn compare_exchange(
        &self,
        current: u32,
        new: u32,
        success: Ordering,
        failure: Ordering,
    ) -> Result<u32, u32>;
    fn fetch_add(&self, v: u32, order: Ordering) -> u32;
    fn fetch_sub(&self, v: u32, order: Ordering) -> u32;
    fn fetch_and(&self, v: u32, order: Ordering) -> u32;
    /// Sleeps while the word holds `expected`, at most `timeout`; may return early (spuriously).
    fn wait(&self, expected: u32, timeout: Option<Duration>);
    /// Wakes at most `n` sleepers.
    fn wake(&self, n: u32);
}

impl FutexWord for AtomicU32 {
    fn load(&self, order: Ordering) -> u32 {
        AtomicU32::load(self, order)
    }
    fn swap(&self, v: u32, order: Ordering) -> u32 {
        AtomicU32::swap(self, v, order)
    }
    fn compare_exchange(
        &self,
        current: u32,
        new: u32,
        success: Ordering,
        failure: Ordering,
    ) -> Result<u32, u32> {
        AtomicU32::compare_exchange(self, current, new, success, failure)
    }
    fn fetch_add(&self, v: u32, order: Ordering) -> u32 {
        AtomicU32::fetch_add(self, v, order)
    }
    fn fetch_sub(&self, v: u32, order: Ordering) -> u32 {
        AtomicU32::fetch_sub(self, v, order)
    }
    fn fetch_and(&self, v: u32, order: Ordering) -> u32 {
        AtomicU32::fetch_and(self, v, order)
    }
    fn wait(&self, expected: u32, timeout: Option<Duration>) {
        crate::sys::shm::futex_wait(self, expected, timeout)
    }
    fn wake(&self, n: u32) {
        crate::sys::shm::futex_wake(self, n)
    }
}

/// How long an operation may wait: the deadline of every timed wait in the crate, in one place.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Wait {
    /// Not at all: look once.
    Never,
    /// Until this instant.
    Until(Instant),
    /// As long as it takes.
    Forever,
}

impl Wait {
    /// `timeout` from now. A timeout too large to be an instant (such as `Duration::MAX`) waits as
    /// long as it takes.
    pub(crate) fn timeout(timeout: Duration) -> Wait {
        Instant::now()
            .checked_add(timeout)
            .map_or(Wait::Forever, Wait::Until)
    }

    /// The deadline as the system layer takes it (`None`: none; a `Never` deadline is now).
    pub(crate) fn deadline(self) -> Option<Instant> {
        match self {
            Wait::Never => Some(Instant::now()),
            Wait::Until(d) => Some(d),
            Wait::Forever => None,
        }
    }

    /// Whether the time is up.
    pub(crate) fn is_over(self) -> bool {
        match self {
            Wait::Never => true,
            Wait::Until(d) => Instant::now() >= d,
            Wait::Forever => false,
        }
    }

    /// What is left of it, at most `cap` (`None`: no limit at all); `None` at the outer level when the
    /// time is up. (`Some(None)` sleeps until woken.)
    pub(crate) fn left(self, cap: Option<Duration>) -> Option<Option<Duration>> {
        let left = match self {
            Wait::Never => return None,
            Wait::Forever => None,
            Wait::Until(d) => {
                let left = d.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return None;
                }
                Some(left)
            }
        };
        Some(match (left, cap) {
            (Some(l), Some(c)) => Some(l.min(c)),
            (l, c) => l.or(c),
        })
    }

    /// Sleeps on `word` while it holds `expected`, never past the deadline and at most `cap` at a
    /// time (it may return early, spuriously); false, at once, if the time is up.
    pub(crate) fn sleep<W: FutexWord>(
        self,
        word: &W,
        expected: u32,
        cap: Option<Duration>,
    ) -> bool {
        match self.left(cap) {
            Some(nap) => {
                word.wait(expected, nap);
                true
            }
            None => false,
        }
    }
}

/// Waits for a word to change, and wakes those waiting: the hand-off between the two sides of a
/// queue and a joiner's wait (see `queue/ring.rs`), written over [`FutexWord`] so that the model
/// tests run this very code.
pub(crate) struct Signal<'a, W> {
    /// The count whose change is awaited; changed only by read-modify-writes.
    pub(crate) word: &'a W,
    /// How many processes sleep (or are about to) on `word`.
    pub(crate) sleepers: &'a W,
    /// How long to stay awake before sleeping; `None`: look once (the model tests).
    pub(crate) spin: Option<&'a Spin>,
}

/// A sleeper on a [`Signal`] looks again at least this often, whatever it was told.
const SIGNAL_NAP: Duration = Duration::from_millis(500);

impl<W: FutexWord> Signal<'_, W> {
    /// Waits until `word` is no longer `seen`; false if `wait` ran out first.
    pub(crate) fn wait_change(&self, seen: u32, wait: Wait) -> bool {
        let (word, sleepers) = (self.word, self.sleepers);
        let changed = || (word.load(Ordering::Acquire) != seen).then_some(());
        if spin_or_look(self.spin, wait, changed).is_some() {
            return true;
        }
        loop {
            sleepers.fetch_add(1, Ordering::AcqRel);
            if word.load(Ordering::Acquire) != seen {
                sleepers.fetch_sub(1, Ordering::Release);
                return true;
            }
            let slept = wait.sleep(word, seen, Some(SIGNAL_NAP));
            sleepers.fetch_sub(1, Ordering::Release);
            if !slept {
                return false;
            }
        }
    }

    /// Wakes up to `n` sleepers, after the caller changed `word` with a read-modify-write. A
    /// read-modify-write here too, not a load: a sleeper announces itself in `sleepers` and then
    /// reads `word`, the notifier changes `word` and then reads `sleepers`; reading `sleepers` with a
    /// read-modify-write orders the two updates of it, so that at least one side sees the other (the
    /// model tests check it with acquire/release reasoning alone).
    pub(crate) fn notify(&self, n: u32) {
        if self.sleepers.fetch_add(0, Ordering::AcqRel) != 0 {
            self.word.wake(n);
        }
    }
}

/// `spin.until(wait, poll)`, or one look when there is no spin (the model tests).
pub(crate) fn spin_or_look<T>(
    spin: Option<&Spin>,
    wait: Wait,
    mut poll: impl FnMut() -> Option<T>,
) -> Option<T> {
    match spin {
        Some(spin) => spin.until(wait, poll),
        None => poll(),
    }
}

/// How long a waiter stays awake, watching for what it waits for, before it sleeps in the kernel.
///
/// # Why adaptive, bounded by time, and yielding only while yielding is cheap
/// A process that sleeps in the kernel takes about 25 µs to wake on another CPU, so a hand-off that
/// comes within a few microseconds is far cheaper to wait for awake. But staying awake only pays
/// while whoever we wait for gets to run:
/// - When every CPU is busy with other programs, the peer may not run for a whole time slice. A
///   waiter that spins only delays it, and one that yields (`sched_yield`) hands its CPU to a busy
///   neighbour for that neighbour's whole slice, a millisecond or more: such waits used to take
///   milliseconds (40 yields: 48 ms for a 1 ms timeout) where a plain blocking wait takes tens of
///   microseconds.
/// - When our own processes outnumber the CPUs (two producers and two consumers on two CPUs), the
///   peer is often waiting for *our* CPU: spinning then cannot help, and a yield that lets it run
///   at once is the cheapest hand-off there is.
///
/// So a wait first spins, backing off exponentially between looks, for an adaptive budget bounded
/// by time (never by a count of tries, whose duration depends on the machine), never past the
/// caller's deadline (a zero timeout looks once), and not after it notices that it was itself
/// descheduled (the clock jumped between two looks). The budget doubles when the awaited thing came
/// while spinning and halves when it did not, so where spinning does not pay it falls to
/// [`Spin::MIN`] within a few waits. Then it yields a few times, but only while yields come back
/// quickly: a yield that kept us off the CPU for long means a busy neighbour ran, and this process
/// stops yielding in waits of that kind for a while. Waits with a deadline close enough that a yield could
/// overshoot it do not yield at all.
#[derive(Debug)]
pub(crate) struct Spin {
    /// The current budget in nanoseconds.
    ns: AtomicU32,
    /// When a wait of this kind last met a costly yield, as nanoseconds since [`epoch`] (0: never).
    costly_yield_at: AtomicU64,
}

/// A gap this long between two looks at the clock means this thread was not running in between.
const DESCHEDULED: Duration = Duration::from_micros(50);

/// The most CPU pauses between two looks (a pause is tens of nanoseconds).
const MAX_PAUSES: u32 = 64;

/// Yields after the spin, at most.
const YIELDS: u32 = 32;

/// A yield that kept us off the CPU longer than this gave it to a busy neighbour.
const CHEAP_YIELD: Duration = Duration::from_micros(400);

/// After such a yield, no wait of this process yields for this long.
const NO_YIELDS_FOR: Duration = Duration::from_millis(100);

/// A wait whose deadline is closer than this does not yield (a costly yield would overshoot it).
const YIELD_MARGIN: Duration = Duration::from_millis(10);

fn epoch() -> Instant {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn since_epoch(t: Instant) -> u64 {
    t.saturating_duration_since(epoch()).as_nanos() as u64 | 1
}

impl Spin {
    /// The smallest budget: a few looks, about what a failed look and a system call cost anyway.
    pub(crate) const MIN: Duration = Duration::from_micros(1);
    /// The largest: about two cross-CPU wake-ups.
    pub(crate) const MAX: Duration = Duration::from_micros(50);

    /// A budget starting at `start` (clamped to [`MIN`](Self::MIN)..=[`MAX`](Self::MAX)).
    pub(crate) const fn new(start: Duration) -> Spin {
        let ns = start.as_nanos() as u64;
        let (lo, hi) = (Self::MIN.as_nanos() as u64, Self::MAX.as_nanos() as u64);
        let ns = if ns < lo {
            lo
        } else if ns > hi {
            hi
        } else {
            ns
        };
        Spin {
            ns: AtomicU32::new(ns as u32),
            costly_yield_at: AtomicU64::new(0),
        }
    }

    /// Calls `poll` until it gives a value, for at most the budget, never past `deadline`, and not
    /// after noticing that this thread was descheduled; `None` if nothing came (the caller then
    /// sleeps in the kernel, or gives up at its deadline). `poll` is called at least once.
    pub(crate) fn until<T>(&self, wait: Wait, mut poll: impl FnMut() -> Option<T>) -> Option<T> {
        if let Some(v) = poll() {
            return Some(v);
        }
        let start = Instant::now();
        let budget = Duration::from_nanos(u64::from(self.ns.load(Ordering::Relaxed)));
        let deadline = match wait {
            Wait::Never => return None, // no time to spend: a zero timeout looks once
            Wait::Until(d) if d <= start => return None,
            Wait::Until(d) => Some(d),
            Wait::Forever => None,
        };
        let end = deadline.map_or(start + budget, |d| d.min(start + budget));
        let mut last = start;
        let mut pauses = 1u32;
        loop {
            // Backing off exponentially keeps a waiter from pulling the awaited cache line away from
            // whoever works on it at every look.
            for _ in 0..pauses {
                std::hint::spin_loop();
            }
            pauses = (pauses * 2).min(MAX_PAUSES);
            if let Some(v) = poll() {
                self.adapt(true);
                return Some(v);
            }
            let now = Instant::now();
            if now.duration_since(last) >= DESCHEDULED {
                // Not running ourselves: the CPUs are oversubscribed; sleep.
                self.adapt(false);
                return None;
            }
            if now >= end {
                self.adapt(false);
                return self.yielding(now, deadline, poll);
            }
            last = now;
        }
    }

    /// The yields after a spin that found nothing (see the type's notes).
    fn yielding<T>(
        &self,
        mut now: Instant,
        deadline: Option<Instant>,
        mut poll: impl FnMut() -> Option<T>,
    ) -> Option<T> {
        for _ in 0..YIELDS {
            if !self.yields_allowed(now, deadline) {
                return None;
            }
            std::thread::yield_now();
            let before = now;
            now = Instant::now();
            if let Some(v) = poll() {
                return Some(v);
            }
            if now.duration_since(before) >= CHEAP_YIELD {
                self.costly_yield_at
                    .store(since_epoch(now), Ordering::Relaxed);
                return None;
            }
        }
        None
    }

    /// Whether a wait of this kind with `deadline` may yield at `now`.
    fn yields_allowed(&self, now: Instant, deadline: Option<Instant>) -> bool {
        if deadline.is_some_and(|d| d.saturating_duration_since(now) < YIELD_MARGIN) {
            return false;
        }
        let costly = self.costly_yield_at.load(Ordering::Relaxed);
        costly == 0 || since_epoch(now).saturating_sub(costly) >= NO_YIELDS_FOR.as_nanos() as u64
    }

    fn adapt(&self, paid: bool) {
        let ns = self.ns.load(Ordering::Relaxed);
        let next = if paid {
            ns.saturating_mul(2).min(Self::MAX.as_nanos() as u32)
        } else {
            (ns / 2).max(Self::MIN.as_nanos() as u32)
        };
        if next != ns {
            self.ns.store(next, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_zero_deadline_looks_once() {
        let spin = Spin::new(Spin::MAX);
        let mut looks = 0;
        let got: Option<()> = spin.until(Wait::Until(Instant::now()), || {
            looks += 1;
            None
        });
        assert_eq!((got, looks), (None, 1));
    }

    #[test]
    fn the_budget_bounds_the_spin_and_adapts() {
        let spin = Spin::new(Spin::MAX);
        let t = Instant::now();
        assert_eq!(spin.until(Wait::Forever, || None::<()>), None);
        assert!(
            t.elapsed() >= Spin::MAX / 2,
            "it spun for {:?}",
            t.elapsed()
        );
        for _ in 0..10 {
            let _ = spin.until(Wait::Forever, || None::<()>);
        }
        assert_eq!(spin.ns.load(Ordering::Relaxed), Spin::MIN.as_nanos() as u32);
        // A value that arrives during the spin (at the first look after the initial one: no clock
        // is read before it, so a loaded machine cannot turn this into a timeout) grows the budget.
        let mut n = 0;
        let got = spin.until(Wait::Forever, || {
            n += 1;
            (n >= 2).then_some(7)
        });
        assert_eq!(got, Some(7));
        assert_eq!(
            spin.ns.load(Ordering::Relaxed),
            2 * Spin::MIN.as_nanos() as u32
        );
    }
}
