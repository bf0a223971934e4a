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

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

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

/// Spins `i` of a brief wait: a CPU pause for the first few, then a yield of the CPU, so a holder
/// that shares our CPU can run.
pub(crate) fn spin(i: u32) {
    if i < 4 {
        std::hint::spin_loop();
    } else {
        std::thread::yield_now();
    }
}
