//! Model tests: `loom` runs the state machines of `Lock`, `Event`, `Semaphore`, `Condition` and the
//! queue's hand-off between producers and consumers, the
//! same code the library runs, through every interleaving of their atomic steps (up to a preemption
//! bound), on a modelled futex. See `futex.rs` for what the model covers and what it leaves to the
//! tests across processes. A lost wake-up shows up as a deadlock, which `loom` reports.

use super::condition::CondWords;
use super::event::EventWord;
use super::futex::FutexWord;
use super::futex::{Signal, Wait};
use super::lock::{Acquired, LockWord};
use super::semaphore::CounterWords;
use loom::sync::atomic::AtomicU32;
use loom::sync::{Arc, Condvar, Mutex};
use loom::thread;
use std::sync::atomic::Ordering::{self, Relaxed, SeqCst};
use std::time::Duration;

/// A word with futex semantics: `wait` compares and goes to sleep atomically with respect to `wake`
/// (both hold `m`), as the kernel's hash-bucket lock makes them. Timeouts are ignored: a sleeper sleeps
/// until woken.
struct ModelWord {
    v: AtomicU32,
    m: Mutex<()>,
    cv: Condvar,
}

impl ModelWord {
    fn new(v: u32) -> ModelWord {
        ModelWord {
            v: AtomicU32::new(v),
            m: Mutex::new(()),
            cv: Condvar::new(),
        }
    }
}

impl FutexWord for ModelWord {
    fn load(&self, order: Ordering) -> u32 {
        self.v.load(order)
    }
    fn swap(&self, v: u32, order: Ordering) -> u32 {
        self.v.swap(v, order)
    }
    fn compare_exchange(
        &self,
        current: u32,
        new: u32,
        success: Ordering,
        failure: Ordering,
    ) -> Result<u32, u32> {
        self.v.compare_exchange(current, new, success, failure)
    }
    fn fetch_add(&self, v: u32, order: Ordering) -> u32 {
        self.v.fetch_add(v, order)
    }
    fn fetch_sub(&self, v: u32, order: Ordering) -> u32 {
        self.v.fetch_sub(v, order)
    }
    fn fetch_and(&self, v: u32, order: Ordering) -> u32 {
        self.v.fetch_and(v, order)
    }
    fn wait(&self, expected: u32, _timeout: Option<Duration>) {
        let g = self.m.lock().unwrap();
        if self.v.load(SeqCst) == expected {
            drop(self.cv.wait(g).unwrap());
        }
    }
    fn wake(&self, n: u32) {
        let _g = self.m.lock().unwrap();
        if n == 1 {
            self.cv.notify_one();
        } else {
            self.cv.notify_all();
        }
    }
}

fn model(f: impl Fn() + Sync + Send + 'static) {
    model_bounded(3, f);
}

fn model_bounded(preemptions: usize, f: impl Fn() + Sync + Send + 'static) {
    let mut b = loom::model::Builder::new();
    b.preemption_bound = Some(preemptions);
    b.check(f);
}

fn everyone_alive(_: u32) -> bool {
    true
}

fn lock_word(w: &ModelWord) -> LockWord<'_, ModelWord> {
    LockWord {
        word: w,
        spin: None,
        alive: &everyone_alive,
    }
}

/// Adds 1 to `data` with a plain load and store under the lock, checking that nobody else is inside.
fn locked_increment(lock: &LockWord<'_, ModelWord>, me: u32, inside: &AtomicU32, data: &AtomicU32) {
    assert_eq!(lock.acquire(me, Wait::Forever), Some(Acquired::Free));
    assert_eq!(inside.fetch_add(1, Relaxed), 0, "two holders at once");
    let v = data.load(Relaxed);
    data.store(v + 1, Relaxed);
    inside.fetch_sub(1, Relaxed);
    assert!(lock.release());
}

#[test]
fn lock_excludes_and_loses_no_wakeup() {
    model(|| {
        let state = Arc::new((ModelWord::new(0), AtomicU32::new(0), AtomicU32::new(0)));
        let other = {
            let state = state.clone();
            thread::spawn(move || {
                let (w, inside, data) = &*state;
                locked_increment(&lock_word(w), 2, inside, data);
            })
        };
        let (w, inside, data) = &*state;
        locked_increment(&lock_word(w), 1, inside, data);
        other.join().unwrap();
        // Relaxed data: only the lock's acquire/release ordering makes both increments visible.
        assert_eq!(data.load(Relaxed), 2);
        assert_eq!(w.load(Relaxed), 0);
    });
}

/// Three parties: two may sleep at once, a release wakes one, and the woken one must keep `WAITERS`
/// set for the other.
#[test]
fn lock_with_two_sleepers_wakes_both_in_turn() {
    model(|| {
        let state = Arc::new((ModelWord::new(0), AtomicU32::new(0), AtomicU32::new(0)));
        let others: Vec<_> = (2..4)
            .map(|me| {
                let state = state.clone();
                thread::spawn(move || {
                    let (w, inside, data) = &*state;
                    locked_increment(&lock_word(w), me, inside, data);
                })
            })
            .collect();
        let (w, inside, data) = &*state;
        locked_increment(&lock_word(w), 1, inside, data);
        for t in others {
            t.join().unwrap();
        }
        assert_eq!(data.load(Relaxed), 3);
    });
}

#[test]
fn lock_of_a_dead_holder_is_taken_over_exactly_once() {
    const DEAD: u32 = 7;
    fn alive(id: u32) -> bool {
        id != DEAD
    }
    model(|| {
        let state = Arc::new((ModelWord::new(DEAD), AtomicU32::new(0)));
        let take = |state: &(ModelWord, AtomicU32), me: u32| {
            let (w, from_dead) = state;
            let lock = LockWord {
                word: w,
                spin: None,
                alive: &alive,
            };
            if lock.acquire(me, Wait::Forever) == Some(Acquired::FromDead) {
                from_dead.fetch_add(1, Relaxed);
            }
            assert!(lock.release());
        };
        let other = {
            let state = state.clone();
            thread::spawn(move || take(&state, 2))
        };
        take(&state, 1);
        other.join().unwrap();
        assert_eq!(state.1.load(Relaxed), 1, "exactly one acquirer is told");
    });
}

#[test]
fn event_set_wakes_every_waiter() {
    model(|| {
        let w = Arc::new(ModelWord::new(0));
        let waiters: Vec<_> = (0..2)
            .map(|_| {
                let w = w.clone();
                thread::spawn(move || {
                    let ev = EventWord {
                        word: &*w,
                        spin: None,
                    };
                    assert!(ev.wait(Wait::Forever));
                })
            })
            .collect();
        let ev = EventWord {
            word: &*w,
            spin: None,
        };
        ev.set();
        for t in waiters {
            t.join().unwrap();
        }
        assert!(ev.is_set());
    });
}

/// Python's promise, kept by the generation: a `set` at once followed by a `clear` still releases a
/// process that was asleep in `wait`, even if it runs only after the `clear`.
#[test]
fn event_set_then_clear_releases_a_sleeping_waiter() {
    model(|| {
        let w = Arc::new(ModelWord::new(0));
        let waiter = {
            let w = w.clone();
            thread::spawn(move || {
                assert!(
                    EventWord {
                        word: &*w,
                        spin: None
                    }
                    .wait(Wait::Forever)
                );
            })
        };
        // Wait until the waiter has announced that it goes to sleep.
        while w.load(SeqCst) & super::event::WAITERS == 0 {
            thread::yield_now();
        }
        let ev = EventWord {
            word: &*w,
            spin: None,
        };
        ev.set();
        ev.clear();
        waiter.join().unwrap();
        assert!(!ev.is_set());
    });
}

fn counter<'a>(
    count: &'a ModelWord,
    sleepers: &'a ModelWord,
    max: u32,
) -> CounterWords<'a, ModelWord> {
    CounterWords {
        count,
        sleepers,
        max,
        spin: None,
    }
}

/// The case the sleeper counter exists for: two releases in a row, two sleepers.
#[test]
fn semaphore_two_releases_wake_two_sleepers() {
    model(|| {
        let words = Arc::new((ModelWord::new(0), ModelWord::new(0)));
        let acquirers: Vec<_> = (0..2)
            .map(|_| {
                let words = words.clone();
                thread::spawn(move || {
                    assert!(counter(&words.0, &words.1, u32::MAX).acquire(Wait::Forever));
                })
            })
            .collect();
        let sem = counter(&words.0, &words.1, u32::MAX);
        assert!(sem.release());
        assert!(sem.release());
        for t in acquirers {
            t.join().unwrap();
        }
        assert_eq!(words.0.load(Relaxed), 0);
        assert_eq!(words.1.load(Relaxed), 0);
    });
}

#[test]
fn bounded_semaphore_excludes_and_refuses_over_release() {
    model(|| {
        let words = Arc::new((ModelWord::new(1), ModelWord::new(0), AtomicU32::new(0)));
        let use_slot = |words: &(ModelWord, ModelWord, AtomicU32)| {
            let sem = counter(&words.0, &words.1, 1);
            assert!(sem.acquire(Wait::Forever));
            assert_eq!(
                words.2.fetch_add(1, Relaxed),
                0,
                "two inside a 1-slot semaphore"
            );
            words.2.fetch_sub(1, Relaxed);
            assert!(sem.release());
        };
        let other = {
            let words = words.clone();
            thread::spawn(move || use_slot(&words))
        };
        use_slot(&words);
        other.join().unwrap();
        assert!(!counter(&words.0, &words.1, 1).release(), "over-release");
        assert_eq!(words.0.load(Relaxed), 1);
    });
}

fn cond<'a>(words: &'a [ModelWord; 4]) -> CondWords<'a, ModelWord> {
    CondWords {
        lock: lock_word(&words[0]),
        seq: &words[1],
        sleepers: &words[2],
        permits: &words[3],
    }
}

fn words4() -> [ModelWord; 4] {
    [0, 0, 0, 0].map(ModelWord::new)
}

#[test]
fn condition_notify_is_not_lost() {
    model(|| {
        // The condition's words, and the flag the waiter waits for (changed under the lock).
        let state = Arc::new((words4(), AtomicU32::new(0)));
        let waiter = {
            let state = state.clone();
            thread::spawn(move || {
                let (words, flag) = &*state;
                let cond = cond(words);
                assert_eq!(cond.lock.acquire(1, Wait::Forever), Some(Acquired::Free));
                while flag.load(Relaxed) == 0 {
                    let (how, timed_out) = cond.wait(1, Wait::Forever);
                    assert_eq!(how, Acquired::Free);
                    assert!(!timed_out);
                }
                assert!(cond.lock.release());
            })
        };
        let (words, flag) = &*state;
        let cond = cond(words);
        assert_eq!(cond.lock.acquire(2, Wait::Forever), Some(Acquired::Free));
        flag.store(1, Relaxed);
        cond.notify(1);
        assert!(cond.lock.release());
        waiter.join().unwrap();
    });
}

/// `notify(1)` with two waiters releases exactly one; the next `notify(1)` the other.
#[test]
fn condition_notify_one_releases_exactly_one() {
    // Four threads: a preemption bound of 2 keeps it to seconds.
    model_bounded(2, || {
        let state = Arc::new((words4(), AtomicU32::new(0)));
        let waiters: Vec<_> = (1..3)
            .map(|me| {
                let state = state.clone();
                thread::spawn(move || {
                    let (words, returned) = &*state;
                    let cond = cond(words);
                    assert_eq!(cond.lock.acquire(me, Wait::Forever), Some(Acquired::Free));
                    let (_, timed_out) = cond.wait(me, Wait::Forever);
                    assert!(!timed_out);
                    returned.fetch_add(1, SeqCst);
                    assert!(cond.lock.release());
                })
            })
            .collect();
        let (words, returned) = &*state;
        let cond = cond(words);
        // Both registered (they register holding the lock, before they sleep).
        while words[2].load(SeqCst) < 2 {
            thread::yield_now();
        }
        for round in 1..=2 {
            assert_eq!(cond.lock.acquire(9, Wait::Forever), Some(Acquired::Free));
            cond.notify(1);
            assert!(cond.lock.release());
            while returned.load(SeqCst) < round {
                thread::yield_now();
            }
            assert_eq!(returned.load(SeqCst), round, "notify(1) released two");
        }
        for t in waiters {
            t.join().unwrap();
        }
        assert_eq!((words[2].load(SeqCst), words[3].load(SeqCst)), (0, 0));
    });
}

fn signal<'a>(word: &'a ModelWord, sleepers: &'a ModelWord) -> Signal<'a, ModelWord> {
    Signal {
        word,
        sleepers,
        spin: None,
    }
}

/// The queue's hand-off: a producer writes an item and commits it (a read-modify-write of the count),
/// then notifies; a consumer waiting for the count to move must wake, and must see the item. Two
/// items, so that the second commit can race the consumer's re-registration after the first.
#[test]
fn queue_commit_wakes_the_waiting_consumer_and_publishes_the_item() {
    model(|| {
        let words = Arc::new((ModelWord::new(0), ModelWord::new(0), AtomicU32::new(0)));
        let producer = {
            let words = words.clone();
            thread::spawn(move || {
                for item in [7, 8] {
                    words.2.store(item, Relaxed);
                    words.0.fetch_add(1, Ordering::AcqRel);
                    signal(&words.0, &words.1).notify(1);
                }
            })
        };
        let s = signal(&words.0, &words.1);
        assert!(s.wait_change(0, Wait::Forever));
        let first = words.2.load(Relaxed);
        assert!(first == 7 || first == 8, "the committed item is visible");
        if words.0.load(Ordering::Acquire) == 1 {
            assert!(s.wait_change(1, Wait::Forever));
        }
        assert_eq!(words.2.load(Relaxed), 8);
        producer.join().unwrap();
        assert_eq!(words.1.load(Relaxed), 0, "no sleeper left registered");
    });
}
