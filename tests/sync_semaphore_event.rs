//! `Semaphore`, `BoundedSemaphore` and `Event` across real processes, under every start method.
#![cfg(not(miri))]

mod common;

use common::{join, read_u64, start, write_u64};
use multiprocess::{
    BoundedSemaphore, Connection, Event, Lock, ProcessError, ReleaseError, Semaphore, SharedMemory,
    StartMethod, Timeout, pipe,
};
use std::time::{Duration, Instant};

// The shared bookkeeping of the concurrency test, all under `lock`: processes inside now (at 0),
// the most ever inside at once (at 8), entries in all (at 16).
fn enter(lock: &Lock, shm: &SharedMemory) {
    let _g = lock.lock().unwrap();
    let inside = read_u64(shm, 0) + 1;
    write_u64(shm, 0, inside);
    write_u64(shm, 8, read_u64(shm, 8).max(inside));
    write_u64(shm, 16, read_u64(shm, 16) + 1);
}

fn leave(lock: &Lock, shm: &SharedMemory) {
    let _g = lock.lock().unwrap();
    write_u64(shm, 0, read_u64(shm, 0) - 1);
}

fn worker(args: (Semaphore, Lock, SharedMemory, Event, u32)) {
    let (sem, lock, shm, go, rounds) = args;
    go.wait();
    for _ in 0..rounds {
        let _slot = sem.acquire();
        enter(&lock, &shm);
        std::thread::sleep(Duration::from_millis(1));
        leave(&lock, &shm);
    }
}

#[test]
fn semaphore_of_two_lets_at_most_two_in_at_once() {
    for m in StartMethod::ALL {
        let sem = Semaphore::new(2).unwrap();
        let (lock, shm, go) = (
            Lock::new().unwrap(),
            SharedMemory::new(24).unwrap(),
            Event::new().unwrap(),
        );
        let kids: Vec<_> = (0..6)
            .map(|_| {
                let args = (sem.clone(), lock.clone(), shm.clone(), go.clone(), 20);
                start(m, worker, args)
            })
            .collect();
        go.set();
        for k in kids {
            join(k).unwrap();
        }
        assert_eq!(read_u64(&shm, 16), 6 * 20, "{m}: every round ran");
        assert_eq!(read_u64(&shm, 0), 0, "{m}");
        let most = read_u64(&shm, 8);
        assert!(most <= 2, "{m}: {most} processes were inside at once");
        assert_eq!(most, 2, "{m}: six eager processes never overlapped");
        assert_eq!(sem.get_value(), 2, "{m}");
    }
}

fn take(args: (Semaphore, u32)) {
    let (sem, n) = args;
    for _ in 0..n {
        sem.acquire().forget();
    }
}

#[test]
fn every_release_reaches_a_sleeping_acquirer() {
    // A semaphore used as a counting signal: no wake-up may be lost, or a child never finishes.
    for m in StartMethod::ALL {
        let sem = Semaphore::new(0).unwrap();
        let kids: Vec<_> = (0..3).map(|_| start(m, take, (sem.clone(), 300))).collect();
        for i in 0..900 {
            sem.release().unwrap();
            if i % 50 == 0 {
                // Let the children fall asleep now and then.
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        for k in kids {
            join(k).unwrap();
        }
        assert_eq!(sem.get_value(), 0, "{m}");
    }
}

fn release_once(sem: Semaphore) -> u32 {
    sem.release().unwrap();
    sem.get_value()
}

#[test]
fn get_value_is_shared() {
    for m in StartMethod::ALL {
        let sem = Semaphore::new(3).unwrap();
        assert_eq!(sem.get_value(), 3);
        sem.acquire().forget();
        let permit = sem.try_acquire().unwrap();
        assert_eq!(sem.get_value(), 1, "{m}");
        assert_eq!(join(start(m, release_once, sem.clone())).unwrap(), 2, "{m}");
        assert_eq!(sem.get_value(), 2, "{m}");
        let (a, b) = (sem.try_acquire().unwrap(), sem.try_acquire().unwrap());
        assert!(sem.try_acquire().is_none());
        assert_eq!(sem.get_value(), 0);
        assert!(format!("{sem:?}").contains("value: 0"));
        // Permits give their slots back when dropped.
        drop((a, b, permit));
        assert_eq!(sem.get_value(), 3, "{m}");
    }
}

fn bounded_release(sem: BoundedSemaphore) -> (bool, u32) {
    let over = sem.release();
    let rejected = over == Err(ReleaseError::AtBound { bound: 2 });
    (rejected, sem.get_value())
}

#[test]
fn bounded_semaphore_refuses_a_release_past_its_bound() {
    for m in StartMethod::ALL {
        let sem = BoundedSemaphore::new(2).unwrap();
        let err = sem.release().unwrap_err();
        assert_eq!(err, ReleaseError::AtBound { bound: 2 });
        assert!(err.to_string().contains("released too many times"), "{err}");
        assert_eq!(sem.get_value(), 2, "{m}: a refused release changes nothing");

        // The bound holds in another process too.
        assert_eq!(
            join(start(m, bounded_release, sem.clone())).unwrap(),
            (true, 2)
        );
        sem.acquire().forget();
        assert_eq!(
            join(start(m, bounded_release, sem.clone())).unwrap(),
            (false, 2)
        );
        assert!(sem.release().is_err());
        assert!(format!("{sem:?}").contains("bound: 2"));
        // A permit dropped while a stray release already gave its slot back changes nothing.
        let permit = sem.acquire();
        sem.release().unwrap();
        drop(permit);
        assert_eq!(sem.get_value(), 2, "{m}");
    }
    let zero = BoundedSemaphore::new(0).unwrap();
    assert!(zero.try_acquire().is_none());
    assert!(zero.release().is_err());
}

#[test]
fn plain_semaphore_refuses_to_pass_u32_max() {
    let sem = Semaphore::new(u32::MAX - 1).unwrap();
    sem.release().unwrap();
    assert_eq!(
        sem.release(),
        Err(ReleaseError::AtBound { bound: u32::MAX })
    );
    assert_eq!(sem.get_value(), u32::MAX);
}

#[test]
fn acquire_timeout_waits_at_least_its_timeout() {
    let sem = Semaphore::new(0).unwrap();
    let t = Instant::now();
    assert_eq!(
        sem.acquire_timeout(Duration::from_millis(70)).unwrap_err(),
        Timeout
    );
    assert!(t.elapsed() >= Duration::from_millis(70));
    assert!(sem.acquire_timeout(Duration::ZERO).is_err());

    let bounded = BoundedSemaphore::new(1).unwrap();
    let held = bounded.acquire_timeout(Duration::from_millis(70)).unwrap();
    let t = Instant::now();
    assert!(bounded.acquire_timeout(Duration::from_millis(70)).is_err());
    assert!(t.elapsed() >= Duration::from_millis(70));

    // A timeout that overflows a deadline means "as long as it takes".
    sem.release().unwrap();
    assert!(sem.acquire_timeout(Duration::MAX).is_ok());
    drop(held);
    assert!(bounded.acquire_timeout(Duration::MAX).is_ok());
}

fn release_later(sem: Semaphore) {
    std::thread::sleep(Duration::from_millis(50));
    sem.release().unwrap();
}

#[test]
fn a_timed_acquire_is_woken_by_another_process() {
    for m in StartMethod::ALL {
        let sem = Semaphore::new(0).unwrap();
        let kid = start(m, release_later, sem.clone());
        let t = Instant::now();
        let permit = sem.acquire_timeout(common::DEADLINE);
        assert!(permit.is_ok(), "{m}");
        // Woken by the release, not by the deadline.
        assert!(t.elapsed() < common::DEADLINE, "{m}");
        join(kid).unwrap();
        assert_eq!(sem.get_value(), 0);
    }
}

fn hold_a_slot(args: (Semaphore, Connection)) {
    let (sem, conn) = args;
    let _slot = sem.acquire();
    conn.send(&"holding").unwrap();
    std::thread::sleep(Duration::from_secs(60));
}

#[test]
fn a_dead_holders_slot_stays_lost_until_released_for_it() {
    for m in StartMethod::ALL {
        let sem = Semaphore::new(1).unwrap();
        let (here, there) = pipe().unwrap();
        let holder = start(m, hold_a_slot, (sem.clone(), there));
        assert_eq!(
            here.recv_timeout::<String>(common::DEADLINE).unwrap(),
            "holding"
        );
        holder.kill().unwrap();
        assert!(matches!(
            join(holder),
            Err(ProcessError::Signaled { signal: 9 })
        ));
        // As documented: a counter cannot know its holder died.
        assert_eq!(sem.get_value(), 0, "{m}");
        assert!(sem.acquire_timeout(Duration::from_millis(20)).is_err());
        // Whoever learns of the death releases on the dead process's behalf.
        sem.release().unwrap();
        assert!(sem.try_acquire().is_some(), "{m}");
    }
}

fn wait_for(args: (Event, Semaphore)) -> (bool, bool) {
    let (event, ready) = args;
    ready.release().unwrap();
    event.wait();
    (event.is_set(), event.wait_timeout(Duration::ZERO).is_ok())
}

#[test]
fn set_wakes_every_waiting_process() {
    for m in StartMethod::ALL {
        let (event, ready) = (Event::new().unwrap(), Semaphore::new(0).unwrap());
        let kids: Vec<_> = (0..4)
            .map(|_| start(m, wait_for, (event.clone(), ready.clone())))
            .collect();
        for _ in 0..4 {
            let taken = ready.acquire_timeout(common::DEADLINE).map(|p| p.forget());
            assert!(taken.is_ok(), "{m}");
        }
        // Give them time to fall asleep in wait().
        std::thread::sleep(Duration::from_millis(50));
        assert!(!event.is_set());
        event.set();
        for k in kids {
            assert_eq!(join(k).unwrap(), (true, true), "{m}");
        }
        assert!(event.is_set());
        event.set(); // setting a set event changes nothing
        assert!(event.is_set());
    }
}

#[test]
fn wait_timeout_waits_at_least_its_timeout_and_returns_the_flag() {
    let event = Event::new().unwrap();
    let t = Instant::now();
    assert_eq!(event.wait_timeout(Duration::from_millis(70)), Err(Timeout));
    assert!(t.elapsed() >= Duration::from_millis(70));
    assert_eq!(event.wait_timeout(Duration::ZERO), Err(Timeout));
    event.set();
    assert_eq!(event.wait_timeout(Duration::ZERO), Ok(()));
    assert_eq!(event.wait_timeout(Duration::MAX), Ok(()));
    event.wait();
}

fn is_set_there(event: Event) -> bool {
    event.is_set()
}

fn clear_there(event: Event) {
    event.clear();
}

#[test]
fn clear_is_seen_by_every_process() {
    for m in StartMethod::ALL {
        let event = Event::new().unwrap();
        assert!(!join(start(m, is_set_there, event.clone())).unwrap(), "{m}");
        event.set();
        assert!(join(start(m, is_set_there, event.clone())).unwrap(), "{m}");
        join(start(m, clear_there, event.clone())).unwrap();
        assert!(!event.is_set(), "{m}");
        assert!(event.wait_timeout(Duration::from_millis(20)).is_err());
        event.clear(); // clearing a clear event changes nothing
        assert!(!event.is_set());
        assert_eq!(format!("{event:?}"), "Event { is_set: false }");
    }
}

#[test]
fn set_then_clear_still_releases_those_already_waiting() {
    let event = Event::new().unwrap();
    let waiter = {
        let event = event.clone();
        std::thread::spawn(move || event.wait_timeout(common::DEADLINE))
    };
    // Let the waiter fall asleep, then pulse.
    std::thread::sleep(Duration::from_millis(100));
    event.set();
    event.clear();
    assert!(waiter.join().unwrap().is_ok(), "the pulse was missed");
    assert!(!event.is_set());
}

#[test]
fn primitives_travel_through_a_connection() {
    let (a, b) = pipe().unwrap();
    let (sem, bounded, event) = (
        Semaphore::new(1).unwrap(),
        BoundedSemaphore::new(1).unwrap(),
        Event::new().unwrap(),
    );
    a.send(&(sem.clone(), bounded.clone(), event.clone()))
        .unwrap();
    let (sem2, bounded2, event2): (Semaphore, BoundedSemaphore, Event) = b.recv().unwrap();
    sem2.try_acquire().unwrap().forget();
    assert_eq!(sem.get_value(), 0);
    bounded2.try_acquire().unwrap().forget();
    bounded.release().unwrap();
    assert!(bounded2.release().is_err(), "the bound travels with it");
    event2.set();
    assert!(event.is_set());
}

#[test]
fn primitives_serialize_only_through_multiprocess() {
    // Outside a Connection or a process argument there is nowhere to put the descriptor.
    let sem = Semaphore::new(1).unwrap();
    let err = bincode::serialize(&sem).unwrap_err();
    assert!(err.to_string().contains("Semaphore"), "{err}");
}
