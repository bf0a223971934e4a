//! `Barrier` across real processes, under every start method: the behaviours of CPython's
//! `_TestBarrier` (lockstep passes, arrival indices, abort, reset, abort-and-reset, timeouts, the
//! default timeout, a single party, a thousand passes, the action), then what a dead party means.
#![cfg(not(miri))]

mod common;

use common::{DEADLINE, eventually, join, start};
use multiprocess::{
    AtomicValue, Barrier, BarrierError, Connection, Lock, ProcessError, StartMethod, pipe,
    pipe_oneway,
};
use std::time::{Duration, Instant};

/// CPython's `_TestBarrier.N`: four children and the test itself.
const N: usize = 5;

type Counters = (AtomicValue<u64>, AtomicValue<u64>);

/// CPython's `multipass`: between two waits every party sees every other party's appends.
fn multipass(args: (Barrier, Counters, usize)) {
    let (barrier, (before, after), passes) = args;
    let m = barrier.parties() as u64;
    for i in 0..passes as u64 {
        before.fetch_add(1);
        assert_eq!(after.load(), i * m);
        barrier.wait().unwrap();
        after.fetch_add(1);
        assert_eq!(before.load(), (i + 1) * m);
        barrier.wait().unwrap();
    }
    assert_eq!(barrier.n_waiting(), 0);
    assert!(!barrier.is_broken());
}

/// Runs `f(arg)` in `N - 1` children and in the test, and returns the test's result and the
/// children's.
fn run_parties<A, R>(m: StartMethod, f: fn(A) -> R, arg: A) -> (R, Vec<R>)
where
    A: Clone + serde::Serialize + serde::de::DeserializeOwned,
    R: serde::Serialize + serde::de::DeserializeOwned,
{
    let kids: Vec<_> = (0..N - 1).map(|_| start(m, f, arg.clone())).collect();
    let mine = f(arg);
    let theirs = kids.into_iter().map(|k| join(k).unwrap()).collect();
    (mine, theirs)
}

fn counters() -> Counters {
    (AtomicValue::new(0).unwrap(), AtomicValue::new(0).unwrap())
}

#[test]
fn parties_pass_in_lockstep_for_ten_rounds() {
    for m in StartMethod::ALL {
        let barrier = Barrier::with_timeout(N, DEADLINE).unwrap();
        let c = counters();
        run_parties(m, multipass, (barrier.clone(), c.clone(), 10));
        assert_eq!(c.0.load(), 10 * N as u64, "{m}");
        assert_eq!(c.1.load(), 10 * N as u64, "{m}");
    }
}

fn wait_index(barrier: Barrier) -> usize {
    barrier.wait().unwrap()
}

#[test]
fn each_party_gets_a_distinct_arrival_index() {
    for m in StartMethod::ALL {
        let barrier = Barrier::with_timeout(N, DEADLINE).unwrap();
        let (mine, mut all) = run_parties(m, wait_index, barrier);
        all.push(mine);
        all.sort();
        assert_eq!(all, (0..N).collect::<Vec<_>>(), "{m}");
    }
}

/// CPython's `_test_abort_f`: the middle arrival aborts instead of waiting a second time.
fn abort_f(args: (Barrier, Counters)) {
    let (barrier, (passed, broken)) = args;
    match barrier.wait() {
        Ok(i) if i == N / 2 => barrier.abort(),
        Ok(_) => match barrier.wait() {
            Ok(_) => drop(passed.fetch_add(1)),
            Err(BarrierError::Broken) => drop(broken.fetch_add(1)),
            Err(e) => panic!("{e}"),
        },
        Err(e) => panic!("first wait: {e}"),
    }
}

#[test]
fn abort_breaks_the_barrier_for_every_waiter() {
    for m in StartMethod::ALL {
        let barrier = Barrier::with_timeout(N, DEADLINE).unwrap();
        let c = counters();
        run_parties(m, abort_f, (barrier.clone(), c.clone()));
        assert_eq!(c.0.load(), 0, "{m}");
        assert_eq!(c.1.load(), N as u64 - 1, "{m}");
        assert!(barrier.is_broken());
        assert_eq!(
            barrier.wait(),
            Err(BarrierError::Broken),
            "{m}: broken until reset"
        );
    }
}

/// CPython's `_test_reset_f`.
fn reset_f(args: (Barrier, Counters, AtomicValue<u64>)) {
    let (barrier, (passed, broken), again) = args;
    let i = barrier.wait().unwrap();
    if i == N / 2 {
        assert!(eventually(|| barrier.n_waiting() == N - 1));
        barrier.reset();
    } else {
        match barrier.wait() {
            Ok(_) => drop(passed.fetch_add(1)),
            Err(BarrierError::Broken) => drop(broken.fetch_add(1)),
            Err(e) => panic!("{e}"),
        }
    }
    // The reset barrier serves the next round.
    barrier.wait().unwrap();
    again.fetch_add(1);
}

#[test]
fn reset_frees_the_waiters_and_the_barrier_serves_again() {
    for m in StartMethod::ALL {
        let barrier = Barrier::with_timeout(N, DEADLINE).unwrap();
        let (c, again) = (counters(), AtomicValue::new(0).unwrap());
        run_parties(m, reset_f, (barrier, c.clone(), again.clone()));
        assert_eq!(c.0.load(), 0, "{m}");
        assert_eq!(c.1.load(), N as u64 - 1, "{m}");
        assert_eq!(again.load(), N as u64, "{m}");
    }
}

/// CPython's `_test_abort_and_reset_f`.
fn abort_and_reset_f(args: (Barrier, Barrier, Counters, AtomicValue<u64>)) {
    let (barrier, barrier2, (passed, broken), again) = args;
    match barrier.wait() {
        Ok(i) if i == N / 2 => barrier.abort(),
        Ok(_) => match barrier.wait() {
            Ok(_) => drop(passed.fetch_add(1)),
            Err(_) => drop(broken.fetch_add(1)),
        },
        Err(e) => panic!("first wait: {e}"),
    }
    // Everyone has left the broken barrier before the reset, and no one enters it before.
    if barrier2.wait().unwrap() == N / 2 {
        barrier.reset();
    }
    barrier2.wait().unwrap();
    barrier.wait().unwrap();
    again.fetch_add(1);
}

#[test]
fn a_broken_barrier_works_again_after_reset() {
    for m in StartMethod::ALL {
        let barrier = Barrier::with_timeout(N, DEADLINE).unwrap();
        let barrier2 = Barrier::with_timeout(N, DEADLINE).unwrap();
        let (c, again) = (counters(), AtomicValue::new(0).unwrap());
        run_parties(
            m,
            abort_and_reset_f,
            (barrier, barrier2, c.clone(), again.clone()),
        );
        assert_eq!(c.0.load(), 0, "{m}");
        assert_eq!(c.1.load(), N as u64 - 1, "{m}");
        assert_eq!(again.load(), N as u64, "{m}");
    }
}

/// CPython's `_test_timeout_f`: one party is late, the others' timeout breaks the barrier for all.
fn timeout_f(args: (Barrier, AtomicValue<u64>, bool)) -> Option<BarrierError> {
    let (barrier, failed, by_default) = args;
    let i = barrier.wait_timeout(DEADLINE).unwrap();
    if i == N / 2 {
        std::thread::sleep(Duration::from_millis(400));
    }
    let t = Instant::now();
    let r = if by_default {
        barrier.wait()
    } else {
        barrier.wait_timeout(Duration::from_millis(100))
    };
    if r == Err(BarrierError::Timeout) {
        assert!(t.elapsed() >= Duration::from_millis(100));
    }
    failed.fetch_add(r.is_err() as u64);
    r.err()
}

#[test]
fn a_timeout_breaks_the_barrier_for_every_party() {
    for m in StartMethod::ALL {
        for by_default in [false, true] {
            let barrier = if by_default {
                Barrier::with_timeout(N, Duration::from_millis(100)).unwrap()
            } else {
                Barrier::new(N).unwrap()
            };
            let failed = AtomicValue::new(0).unwrap();
            let (mine, theirs) =
                run_parties(m, timeout_f, (barrier.clone(), failed.clone(), by_default));
            assert_eq!(failed.load(), N as u64, "{m}: every party failed");
            let all: Vec<_> = theirs
                .into_iter()
                .chain([mine])
                .map(Option::unwrap)
                .collect();
            assert!(all.contains(&BarrierError::Timeout), "{m}: {all:?}");
            assert!(barrier.is_broken());
        }
    }
}

#[test]
fn a_single_party_passes_at_once() {
    let b = Barrier::new(1).unwrap();
    assert_eq!(b.wait(), Ok(0));
    assert_eq!(b.wait(), Ok(0));
    assert_eq!(b.n_waiting(), 0);
}

#[test]
fn zero_or_too_many_parties_are_refused() {
    for n in [0, multiprocess::MAX_PARTIES + 1] {
        let e = Barrier::new(n).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput);
        assert!(e.to_string().contains("parties"), "{e}");
    }
}

fn thousand_f(args: (Barrier, usize, Connection, Lock)) {
    let (barrier, passes, conn, lock) = args;
    for i in 0..passes {
        barrier.wait().unwrap();
        let _g = lock.lock().unwrap();
        conn.send(&i).unwrap();
    }
}

/// CPython's `test_thousand`: N children pass a barrier of N a thousand times, and every message of
/// round i arrives before any of round i + 1.
#[test]
fn a_thousand_passes_stay_in_rounds() {
    for (m, passes) in [
        (StartMethod::ForkServer, 1000),
        (StartMethod::Fork, 200),
        (StartMethod::Spawn, 200),
    ] {
        let barrier = Barrier::with_timeout(N, DEADLINE).unwrap();
        let lock = Lock::new().unwrap();
        let (rx, tx) = pipe_oneway().unwrap();
        let kids: Vec<_> = (0..N)
            .map(|_| {
                let arg = (
                    barrier.clone(),
                    passes,
                    tx.try_clone().unwrap(),
                    lock.clone(),
                );
                start(m, thousand_f, arg)
            })
            .collect();
        drop(tx);
        for i in 0..passes {
            for _ in 0..N {
                assert_eq!(rx.recv_timeout::<usize>(DEADLINE).unwrap(), i, "{m}");
            }
        }
        for k in kids {
            join(k).unwrap();
        }
    }
}

fn action_f(args: (Barrier, AtomicValue<u64>, usize)) {
    let (barrier, actions, rounds) = args;
    for round in 1..=rounds as u64 {
        barrier
            .wait_with(|| {
                actions.fetch_add(1);
            })
            .unwrap();
        // The action ran exactly once, before anyone was released.
        assert_eq!(actions.load(), round);
        barrier.wait().unwrap();
    }
}

#[test]
fn the_last_arrival_runs_the_action_before_anyone_leaves() {
    for m in StartMethod::ALL {
        let barrier = Barrier::with_timeout(N, DEADLINE).unwrap();
        let actions = AtomicValue::new(0).unwrap();
        run_parties(m, action_f, (barrier, actions.clone(), 5));
        assert_eq!(actions.load(), 5, "{m}");
    }
}

fn wait_expect_broken(barrier: Barrier) -> Result<usize, BarrierError> {
    barrier.wait_timeout(DEADLINE)
}

#[test]
fn a_panicking_action_breaks_the_barrier_and_panics_on() {
    for m in StartMethod::ALL {
        let barrier = Barrier::new(2).unwrap();
        let kid = start(m, wait_expect_broken, barrier.clone());
        assert!(eventually(|| barrier.n_waiting() == 1));
        let r = std::panic::catch_unwind(|| barrier.wait_with(|| panic!("action failed")));
        assert!(r.is_err(), "{m}: the panic goes on");
        assert_eq!(join(kid).unwrap(), Err(BarrierError::Broken), "{m}");
        assert!(barrier.is_broken());
    }
}

fn wait_forever(barrier: Barrier) {
    let _ = barrier.wait();
}

/// A party killed while it waits breaks the barrier for the others, who would otherwise wait for a
/// round that can no longer mean "everyone is here".
#[test]
fn a_party_killed_while_waiting_breaks_the_barrier() {
    for m in StartMethod::ALL {
        let barrier = Barrier::new(3).unwrap();
        let victim = start(m, wait_forever, barrier.clone());
        assert!(eventually(|| barrier.n_waiting() == 1));
        let other = start(m, wait_expect_broken, barrier.clone());
        assert!(eventually(|| barrier.n_waiting() == 2));
        victim.kill().unwrap();
        assert!(matches!(join(victim), Err(ProcessError::Signaled { .. })));
        assert_eq!(join(other).unwrap(), Err(BarrierError::Broken), "{m}");
        assert!(barrier.is_broken());
        barrier.reset();
        assert!(!barrier.is_broken());
    }
}

/// A party that dies before it arrives cannot be told from a slow one: the timeout breaks the
/// barrier for everyone.
#[test]
fn a_party_that_never_arrives_is_caught_by_the_timeout() {
    for m in StartMethod::ALL {
        let barrier = Barrier::new(3).unwrap();
        let other = start(m, wait_expect_broken, barrier.clone());
        assert!(eventually(|| barrier.n_waiting() == 1));
        let t = Instant::now();
        assert_eq!(
            barrier.wait_timeout(Duration::from_millis(50)),
            Err(BarrierError::Timeout)
        );
        assert!(t.elapsed() >= Duration::from_millis(50));
        assert_eq!(join(other).unwrap(), Err(BarrierError::Broken), "{m}");
    }
}

/// More threads than parties, in several processes, round after round: slots of finished rounds are
/// handed back and reused, and every round has exactly `parties` members. Each wait takes a ticket
/// first, and there are `3 × 100` tickets, so the waits always make whole rounds.
fn crowd(args: (Barrier, AtomicValue<u64>, AtomicValue<u64>)) {
    let (barrier, tickets, passed) = args;
    std::thread::scope(|s| {
        for _ in 0..3 {
            s.spawn(|| {
                while tickets.fetch_add(1) < 300 {
                    barrier.wait().unwrap();
                    passed.fetch_add(1);
                }
            });
        }
    });
}

#[test]
fn more_waiters_than_parties_pass_in_whole_rounds() {
    for m in StartMethod::ALL {
        let barrier = Barrier::with_timeout(3, DEADLINE).unwrap();
        let (tickets, passed) = counters();
        let args = (barrier.clone(), tickets, passed.clone());
        let kid = start(m, crowd, args.clone());
        crowd(args);
        join(kid).unwrap();
        assert_eq!(passed.load(), 300, "{m}");
        assert_eq!(barrier.n_waiting(), 0);
    }
}

#[test]
fn a_barrier_travels_through_a_connection() {
    let (a, b) = pipe().unwrap();
    let barrier = Barrier::with_timeout(2, DEADLINE).unwrap();
    a.send(&barrier).unwrap();
    let there: Barrier = b.recv().unwrap();
    assert_eq!(there.parties(), 2);
    assert_eq!(there.timeout(), Some(DEADLINE));
    std::thread::scope(|s| {
        let t = s.spawn(|| there.wait().unwrap());
        let mine = barrier.wait().unwrap();
        assert_eq!(mine + t.join().unwrap(), 1);
    });
}

#[test]
fn shared_memory_that_is_not_a_barrier_is_refused_on_receipt() {
    let (a, b) = pipe().unwrap();
    // Another kind of memory (its zeroed bytes would also say zero parties).
    a.send(&multiprocess::SharedMemory::new(4096).unwrap())
        .unwrap();
    let e = b.recv::<Barrier>().unwrap_err();
    assert!(e.to_string().contains("barrier"), "{e}");
    // Too small for the header.
    a.send(&multiprocess::SharedMemory::new(8).unwrap())
        .unwrap();
    let e = b.recv::<Barrier>().unwrap_err();
    assert!(e.to_string().contains("barrier"), "{e}");
}
