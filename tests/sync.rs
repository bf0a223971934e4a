//! Shared memory and process-shared locks across real processes, under every start method.
#![cfg(not(miri))]

mod common;

use common::{join, read_u64, start, write_u64};
use multiprocess::{
    Connection, Lock, LockTimeoutError, ProcessError, ReleaseError, SharedMemory, StartMethod,
    TryLockError, WaitTimeoutError, pipe,
};
use std::time::{Duration, Instant};

fn increment(args: (Lock, SharedMemory, u32)) {
    let (lock, shm, n) = args;
    for _ in 0..n {
        let _g = lock.lock().unwrap();
        // A deliberately non-atomic read-modify-write: only the lock keeps it correct.
        let v = read_u64(&shm, 0);
        std::hint::spin_loop();
        write_u64(&shm, 0, v + 1);
    }
}

#[test]
fn lock_gives_mutual_exclusion_across_processes() {
    for m in StartMethod::ALL {
        let (lock, shm) = (Lock::new().unwrap(), SharedMemory::new(8).unwrap());
        let kids: Vec<_> = (0..4)
            .map(|_| start(m, increment, (lock.clone(), shm.clone(), 2000)))
            .collect();
        increment((lock.clone(), shm.clone(), 2000));
        for k in kids {
            join(k).unwrap();
        }
        assert_eq!(read_u64(&shm, 0), 10_000, "{m}");
        assert!(!lock.is_locked());
    }
}

fn hold_forever(args: (Lock, Connection)) {
    let (lock, conn) = args;
    let _g = lock.lock().unwrap();
    conn.send(&"locked").unwrap();
    std::thread::sleep(Duration::from_secs(60));
}

fn wait_for_lock(args: (Lock, Connection)) -> bool {
    let (lock, conn) = args;
    conn.send(&"waiting").unwrap();
    // The guard (inside either variant) is dropped right here, releasing the lock.
    lock.lock().is_err()
}

#[test]
fn holder_killed_the_next_acquirer_learns_and_gets_the_lock() {
    for m in StartMethod::ALL {
        let lock = Lock::new().unwrap();
        let (here, there) = pipe().unwrap();
        let holder = start(m, hold_forever, (lock.clone(), there));
        assert_eq!(
            here.recv_timeout::<String>(common::DEADLINE).unwrap(),
            "locked"
        );
        // A second process already blocked in lock() when the holder dies learns it too.
        let (here2, there2) = pipe().unwrap();
        let waiter = start(m, wait_for_lock, (lock.clone(), there2));
        assert_eq!(
            here2.recv_timeout::<String>(common::DEADLINE).unwrap(),
            "waiting"
        );
        std::thread::sleep(Duration::from_millis(50));
        holder.kill().unwrap();
        assert!(matches!(
            join(holder),
            Err(ProcessError::Signaled { signal: 9 })
        ));
        assert!(
            join(waiter).unwrap(),
            "{m}: the blocked waiter must be told the holder died"
        );
        // The waiter released it (its guard was dropped): the lock is an ordinary lock again.
        assert!(lock.lock().is_ok(), "{m}");

        // With nobody waiting, the next acquirer learns it (here through lock_timeout).
        let (here, there) = pipe().unwrap();
        let holder = start(m, hold_forever, (lock.clone(), there));
        assert_eq!(
            here.recv_timeout::<String>(common::DEADLINE).unwrap(),
            "locked"
        );
        holder.kill().unwrap();
        // Not joined yet: the dead holder is a zombie, which must count as dead.
        let g = lock.lock_timeout(common::DEADLINE);
        let _ = join(holder);
        assert!(
            matches!(g, Err(LockTimeoutError::OwnerDied(_))),
            "{m}: OwnerDied expected"
        );
        drop(g);
        assert!(lock.lock().is_ok());
    }
}

fn release_it(lock: Lock) {
    lock.release().unwrap();
}

#[test]
fn another_process_may_release_a_leaked_guard() {
    for m in StartMethod::ALL {
        let lock = Lock::new().unwrap();
        lock.lock().unwrap().leak();
        assert!(lock.is_locked());
        join(start(m, release_it, lock.clone())).unwrap();
        assert!(lock.try_lock().is_ok(), "{m}");
        assert_eq!(Lock::new().unwrap().release(), Err(ReleaseError::NotLocked));
    }
}

#[test]
fn lock_timeout_waits_at_least_its_timeout() {
    let lock = Lock::new().unwrap();
    let _g = lock.lock().unwrap();
    let t = Instant::now();
    assert!(matches!(
        lock.lock_timeout(Duration::from_millis(70)),
        Err(LockTimeoutError::Timeout)
    ));
    assert!(t.elapsed() >= Duration::from_millis(70));
    assert!(matches!(lock.try_lock(), Err(TryLockError::WouldBlock)));
}

fn reverse_in_place(shm: SharedMemory) -> usize {
    let mut buf = vec![0u8; shm.len()];
    shm.read(0, &mut buf).unwrap();
    buf.reverse();
    shm.write(0, &buf).unwrap();
    shm.len()
}

#[test]
fn shared_memory_is_shared_under_every_method() {
    for m in StartMethod::ALL {
        let shm = SharedMemory::new(1 << 20).unwrap();
        let data: Vec<u8> = (0..1 << 20).map(|i: u32| (i % 251) as u8).collect();
        shm.write(0, &data).unwrap();
        assert_eq!(
            join(start(m, reverse_in_place, shm.clone())).unwrap(),
            1 << 20
        );
        let mut back = vec![0u8; 1 << 20];
        shm.read(0, &mut back).unwrap();
        back.reverse();
        assert!(back == data, "{m}");
    }
}

#[test]
fn shared_memory_travels_through_a_connection() {
    let (a, b) = pipe().unwrap();
    let shm = SharedMemory::new(16).unwrap();
    a.send(&(shm.clone(), Lock::new().unwrap())).unwrap();
    let (got, lock): (SharedMemory, Lock) = b.recv().unwrap();
    got.write(3, b"xyz").unwrap();
    let mut buf = [0u8; 3];
    shm.read(3, &mut buf).unwrap();
    assert_eq!(&buf, b"xyz");
    assert!(lock.try_lock().is_ok());
    assert!(shm.read(14, &mut [0u8; 3]).is_err());
    assert!(shm.write(usize::MAX, b"x").is_err());
}

fn open_and_write(name: String) {
    SharedMemory::open(&name)
        .unwrap()
        .write(0, b"from the child")
        .unwrap();
}

#[test]
fn named_shared_memory_is_removed_by_its_owner() {
    for m in StartMethod::ALL {
        let name = format!("mp-test-{}-{m}", std::process::id());
        let shm = SharedMemory::create(&name, 32).unwrap();
        assert!(
            matches!(SharedMemory::create(&name, 32), Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists)
        );
        join(start(m, open_and_write, name.clone())).unwrap();
        let mut buf = [0u8; 14];
        shm.read(0, &mut buf).unwrap();
        assert_eq!(&buf, b"from the child");
        assert!(std::path::Path::new(&format!("/dev/shm/{name}")).exists());
        drop(shm);
        assert!(
            !std::path::Path::new(&format!("/dev/shm/{name}")).exists(),
            "{m}: name leaked"
        );
        assert!(SharedMemory::open(&name).is_err());
    }
    assert!(SharedMemory::create("bad/name", 1).is_err());
    assert!(SharedMemory::create("", 1).is_err());
}

// ---- RLock ------------------------------------------------------------------------------------

use multiprocess::RLock;

fn nested_increment(args: (RLock, SharedMemory, u32)) {
    let (lock, shm, n) = args;
    for _ in 0..n {
        let _outer = lock.lock().unwrap();
        let _inner = lock.lock().unwrap();
        let v = read_u64(&shm, 0);
        write_u64(&shm, 0, v + 1);
    }
}

#[test]
fn rlock_is_reentrant_and_exclusive_across_processes() {
    for m in StartMethod::ALL {
        let (lock, shm) = (RLock::new().unwrap(), SharedMemory::new(8).unwrap());
        let kids: Vec<_> = (0..3)
            .map(|_| start(m, nested_increment, (lock.clone(), shm.clone(), 1000)))
            .collect();
        nested_increment((lock.clone(), shm.clone(), 1000));
        for k in kids {
            join(k).unwrap();
        }
        assert_eq!(read_u64(&shm, 0), 4000, "{m}");
        assert!(!lock.is_locked());
    }
}

#[test]
fn rlock_belongs_to_one_thread() {
    let lock = RLock::new().unwrap();
    let g1 = lock.lock().unwrap();
    let g2 = lock.try_lock().expect("reentrant");
    let other = {
        let lock = lock.clone();
        std::thread::spawn(move || lock.lock_timeout(Duration::from_millis(30)).is_ok())
    };
    assert!(!other.join().unwrap(), "another thread must not get it");
    drop(g2);
    assert!(lock.is_locked(), "still held once");
    drop(g1);
    assert!(!lock.is_locked());
}

#[test]
fn rlock_holder_thread_that_exits_is_detected() {
    let lock = RLock::new().unwrap();
    let l2 = lock.clone();
    std::thread::spawn(move || l2.lock().unwrap().leak_for_test())
        .join()
        .unwrap();
    assert!(lock.is_locked());
    let g = lock.lock_timeout(common::DEADLINE);
    assert!(
        matches!(g, Err(LockTimeoutError::OwnerDied(_))),
        "OwnerDied expected"
    );
}

trait LeakForTest {
    fn leak_for_test(self);
}

impl LeakForTest for multiprocess::RLockGuard<'_> {
    fn leak_for_test(self) {
        std::mem::forget(self); // the thread ends holding the lock
    }
}

// ---- Condition --------------------------------------------------------------------------------

use multiprocess::{AtomicValue, Condition};

fn wait_for_go(args: (Condition, AtomicValue<u32>, AtomicValue<u32>)) -> u32 {
    let (cond, go, waiting) = args;
    let guard = cond.lock().unwrap();
    waiting.fetch_add(1);
    let _g = cond.wait_while(guard, || go.load() == 0).unwrap();
    go.load()
}

#[test]
fn notify_all_wakes_every_waiting_process() {
    for m in StartMethod::ALL {
        let (cond, go, waiting) = (
            Condition::new().unwrap(),
            AtomicValue::new(0u32).unwrap(),
            AtomicValue::new(0u32).unwrap(),
        );
        let kids: Vec<_> = (0..4)
            .map(|_| start(m, wait_for_go, (cond.clone(), go.clone(), waiting.clone())))
            .collect();
        assert!(common::eventually(|| waiting.load() == 4));
        {
            let _g = cond.lock().unwrap();
            go.store(7);
            cond.notify_all();
        }
        for k in kids {
            assert_eq!(join(k).unwrap(), 7, "{m}");
        }
    }
}

fn ping_pong(args: (Condition, AtomicValue<u32>, u32)) {
    // Takes turns with the parent: waits for an odd counter, makes it even.
    let (cond, turn, rounds) = args;
    for _ in 0..rounds {
        let g = cond.lock().unwrap();
        let _g = cond.wait_while(g, || turn.load() % 2 == 0).unwrap();
        turn.fetch_add(1);
        cond.notify();
    }
}

#[test]
fn notify_hands_turns_back_and_forth() {
    for m in StartMethod::ALL {
        let (cond, turn) = (Condition::new().unwrap(), AtomicValue::new(0u32).unwrap());
        let kid = start(m, ping_pong, (cond.clone(), turn.clone(), 200));
        for _ in 0..200 {
            let g = cond.lock().unwrap();
            let _g = cond.wait_while(g, || turn.load() % 2 == 1).unwrap();
            turn.fetch_add(1);
            cond.notify();
        }
        join(kid).unwrap();
        assert_eq!(turn.load(), 400, "{m}");
    }
}

#[test]
fn condition_timeouts_wait_at_least_their_duration() {
    let cond = Condition::new().unwrap();
    let g = cond.lock().unwrap();
    let t = Instant::now();
    let g = match cond.wait_timeout(g, Duration::from_millis(150)) {
        Err(WaitTimeoutError::Timeout(g)) => g,
        other => panic!("{other:?}"),
    };
    assert!(t.elapsed() >= Duration::from_millis(150));
    let t = Instant::now();
    let g = match cond.wait_while_timeout(g, Duration::from_millis(50), || true) {
        Err(WaitTimeoutError::Timeout(g)) => g,
        other => panic!("{other:?}"),
    };
    assert!(t.elapsed() >= Duration::from_millis(50));
    drop(g);
    assert!(!cond.get_lock().is_locked());
}

#[test]
#[should_panic(expected = "another lock")]
fn waiting_with_another_locks_guard_panics() {
    let (cond, other) = (Condition::new().unwrap(), Lock::new().unwrap());
    let g = other.lock().unwrap();
    let _ = cond.wait(g);
}

fn wait_once(args: (Condition, AtomicValue<u32>, AtomicValue<u32>)) {
    let (cond, waiting, woken) = args;
    let guard = cond.lock().unwrap();
    waiting.fetch_add(1);
    let _g = cond.wait(guard).unwrap();
    woken.fetch_add(1);
}

/// CPython's `test_notify_n`: `notify(n)` releases n of the waiters, no more; then the rest.
#[test]
fn notify_n_releases_exactly_n() {
    for m in StartMethod::ALL {
        let (cond, waiting, woken) = (
            Condition::new().unwrap(),
            AtomicValue::new(0u32).unwrap(),
            AtomicValue::new(0u32).unwrap(),
        );
        let kids: Vec<_> = (0..3)
            .map(|_| start(m, wait_once, (cond.clone(), waiting.clone(), woken.clone())))
            .collect();
        // Each registers holding the lock: once the lock is ours with all three counted, all wait.
        assert!(common::eventually(|| {
            let _g = cond.lock().unwrap();
            waiting.load() == 3
        }));
        {
            let _g = cond.lock().unwrap();
            cond.notify_n(2);
        }
        assert!(common::eventually(|| woken.load() == 2), "{m}");
        std::thread::sleep(std::time::Duration::from_millis(100));
        assert_eq!(woken.load(), 2, "{m}: notify_n(2) released more than 2");
        {
            let _g = cond.lock().unwrap();
            cond.notify_all();
        }
        for k in kids {
            join(k).unwrap();
        }
        assert_eq!(woken.load(), 3, "{m}");
    }
}
